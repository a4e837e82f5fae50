"""Values no one should give, as fuzzing found them: each is refused in one line that names the option or file,
never a traceback, and never taken as a value that trains nonsense."""

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_config
from PIL import Image

from lowvram.cli import main
from lowvram.configure import read_config
from lowvram.errors import LowvramError
from lowvram.lora_header import read_header

HUGE = "9" * 400  # an integer no float holds


def one_line(capsys, argv: list[str]) -> str:
    """The error a command ends with, asserted to be one line and no traceback."""
    code = main(argv)  # (returned, never raised: argparse's errors too)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "ds" / "10_x"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "a.png")
    (folder / "a.txt").write_text("a red square")
    return tmp_path / "ds"


@pytest.mark.parametrize(("given", "side"), [("0,512", "0"), ("-512,768", "-512"), ("512,0", "0"), ("8,4096", "8"),
                                            ("9999999999999999999999,512", "9999999999999999999999")])
def test_a_width_height_with_a_side_out_of_range_is_refused(given, side):
    with pytest.raises(LowvramError, match=rf"^--resolution: '{given}' has a side of {side} px; give sides from 64 "
                                           r"to 4096 px$"):
        run_config(resolution=given)


@pytest.mark.parametrize(("argv", "message", "code"), [
    (["--min-bucket-side", "512"], ("--min-bucket-side 512: above the resolution, 64 px, which leaves the square "
                                   "bucket alone (every image cropped square; kohya refuses it): give at most 64"), 0),
    (["--max-bucket-side", "48"], ("--max-bucket-side 48: below the resolution, 64 px, so every image would train "
                                   "smaller than it (kohya refuses it too): give --max-bucket-side 64 or more"), 2),
])
def test_bucket_sides_the_resolution_lies_outside_are_said(images, capsys, argv, message, code):
    """kohya refuses min_bucket_reso above the resolution; a kohya_ss GUI config keeps its 256 px at any resolution:
    said, not refused. A largest side below it trained every image smaller than the metadata's resolution:
    refused."""
    assert main(["check-data", str(images), "--model", "tiny", "--resolution", "64", *argv]) == code
    assert message in capsys.readouterr().err
    # no --resolution: the model's own, the tiny model's 64 px (neither was said: a run at 48 px, its metadata 64's)
    assert main(["check-data", str(images), "--model", "tiny", *argv]) == code
    assert message in capsys.readouterr().err
    assert main(["check-data", str(images), "--model", "tiny", "--resolution", "64", "--no-bucket", *argv]) == 0
    assert "no effect with --no-bucket" in capsys.readouterr().err  # (that note instead)
    if code == 0:  # a config's, named as such: the flag named was one the user never typed
        config = images.parent / "lowvram.toml"
        config.write_text("[data]\nmin_bucket_side = 512\n")
        assert main(["check-data", str(images), "--model", "tiny", "--resolution", "64", "--config", str(config)]) == 0
        assert ("a file's smallest bucket side (kohya's min_bucket_reso) 512: above the resolution, 64 px, which "
                "leaves the square bucket alone (every image cropped square; kohya refuses it): give --min-bucket-side "
                "32, or another at most 64") in " ".join(capsys.readouterr().err.split())


def test_a_cache_dir_that_is_a_file_is_refused_before_anything_is_cached(images, tmp_path, capsys):
    (tmp_path / "cache").write_text("")
    for given in (tmp_path / "cache", tmp_path / "cache" / "inside"):
        assert one_line(capsys, ["train", "--data", str(images), "--model", "tiny", "--cache-dir", str(given)]) == (
            f"lowvram train: error: --cache-dir: {tmp_path / 'cache'} is a file, not a folder; give a folder, or "
            "leave --cache-dir out for lowvram's own")


def test_a_resolution_past_any_card_is_refused(images, capsys):
    with pytest.raises(LowvramError, match=r"^--resolution: \[inf, 512\] is not a width and height in pixels$"):
        run_config(resolution=[float("inf"), 512])  # (a TOML's inf)
    with pytest.raises(LowvramError, match=r"^--resolution: 1000000000 must be a multiple of 8 from 64 to 4096$"):
        run_config(resolution=1_000_000_000)  # (the planner took minutes over it)
    for several in ("512,768,1024", [1024, 512, 768]):  # ai-toolkit's and SimpleTuner's lists ("a whole number")
        with pytest.raises(LowvramError, match=r"several resolutions; give the largest as --resolution 1024 and the "
                                               r"others as --extra-resolutions 512,768$"):
            run_config(resolution=several)
    other = images.parent / "other" / "1_y"  # a kohya dataset of other images at its own resolution
    other.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(other / "b.png")
    (images.parent / "two.toml").write_text('[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = '
                                            '"ds/10_x"\n[[datasets]]\nresolution = 99992\n[[datasets.subsets]]\n'
                                            'image_dir = "other/1_y"\n')
    assert "99992" in one_line(capsys, ["check-data", "two.toml"])  # (it built a 99968 px bucket, then hung)


def test_a_dataset_files_resolution_with_a_zero_side_is_refused(images, capsys):
    (images.parent / "dataset.toml").write_text('[general]\nresolution = [0, 512]\n[[datasets]]\n'
                                                '[[datasets.subsets]]\nimage_dir = "ds/10_x"\n')
    assert "--resolution: [0, 512] has a side of 0 px" in one_line(capsys, ["check-data", "dataset.toml"])


def test_numbers_no_float_holds_and_non_finite_ones_are_refused(images, tmp_path, capsys):
    (tmp_path / "big.toml").write_text(f"[optim]\nlr = {HUGE}\n")
    line = one_line(capsys, ["plan", "--vram", "6GB", "--data", str(images), "--config", "big.toml"])
    assert line.endswith("big.toml: --lr: 999999999999999999999999999999…99999999999999999999 is invalid: a number "
                         "too large")  # the number's middle left out; the file named, as the value is its
    assert "is over 1024 GB" in one_line(capsys, ["plan", "--data", str(images), "--vram", HUGE])
    (tmp_path / "kohya.toml").write_text(f'network_module = "networks.lora"\nmax_train_steps = {HUGE}\n')
    assert "max_train_steps: 999999999999999999999999999999…99999999999999999999 is not a whole number" in one_line(
        capsys, ["plan", "--vram", "6GB", "--data", str(images), "--config", "kohya.toml"])
    for option, value in (("lr", float("nan")), ("noise_offset", float("inf")), ("alpha", float("-inf"))):
        with pytest.raises(LowvramError, match="is invalid: expected a finite number"):
            run_config(**{option: value})
    assert "--lr: 'nan' is invalid: expected a finite number" in one_line(
        capsys, ["train", "--model", "tiny", "--data", str(images), "--lr", "nan"])


def test_a_list_where_one_folder_goes_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.toml").write_text('[data]\ndata = ["ds", "ds2"]\n')
    assert "list.toml: --data: ['ds', 'ds2'] is invalid: expected a string" in one_line(
        capsys, ["plan", "--vram", "6GB", "--config", "list.toml"])


def test_a_config_files_wrong_value_names_the_file(images, tmp_path, capsys):
    (tmp_path / "run.toml").write_text('[optim]\nlr = "fast"\n[training]\nmax_steps = 2.5\n')
    assert main(["plan", "--vram", "6GB", "--data", str(images), "--config", str(tmp_path / "run.toml")]) == 2
    lines = capsys.readouterr().err.splitlines()
    file = tmp_path / "run.toml"
    assert lines == [f"lowvram plan: error: {file}: --lr: 'fast' is invalid: expected a number",
                     f"lowvram plan: error: {file}: --max-steps: 2.5 is invalid: expected a whole number"]
    (tmp_path / "run.toml").write_text('[optim]\nlr = "fast"\n')  # the flag replaces it: not the file's error
    assert main(["plan", "--vram", "6GB", "--data", str(images), "--config", str(tmp_path / "run.toml"), "--lr",
                 "1e-4"]) == 0


@pytest.mark.parametrize(("setting", "named"), [
    ('"clip_grad_norm": "1,0"', "clip_grad_norm: '1,0' is not a number"),
    ('"learning_rate_warmup_steps": "200 steps"', "learning_rate_warmup_steps: '200 steps' is not a number"),
    ('"sample_after": "ten"', "sample_after: 'ten' is not a number"),
    ('"save_after": "ten", "save_after_unit": "STEP"', "save_every: 'ten' is not a number"),  # (its older name)
    ('"mse_strength": "x"', "mse_strength: 'x' is not a number"),
    ('"text_encoder_2_layer_skip": [false]', "text_encoder_2_layer_skip: [False] is not a number"),
    ('"timestep_shift": 1e999', "timestep_shift: inf is not a number"),
    ('"unet": {"learning_rate": "fast"}', "unet.learning_rate: 'fast' is not a number"),
    ('"vae": "my.vae.safetensors"', "vae: 'my.vae.safetensors' is not a section"),
])
def test_a_hand_edited_onetrainer_setting_of_the_wrong_type_is_named(images, tmp_path, capsys, setting, named):
    (tmp_path / "ot.json").write_text(f'{{"model_type": "STABLE_DIFFUSION_15", "training_method": "LORA", '
                                      f'{setting}}}')
    assert f"ot.json: {named}" in one_line(capsys, ["plan", "--vram", "6GB", "--data", str(images),
                                                    "--config", "ot.json"])


def test_a_onetrainer_number_written_as_text_is_read_as_the_number(images, tmp_path, capsys):
    (tmp_path / "ot.json").write_text('{"model_type": "STABLE_DIFFUSION_15", "training_method": "LORA", '
                                      '"save_every": "3.0", "save_every_unit": "STEP", '
                                      '"clip_grad_norm": "0.5"}')
    values = read_config(tmp_path / "ot.json")
    assert (values["save_every"], values["max_grad_norm"]) == ("3", 0.5)


def write_header(path, header, data: bytes = b"") -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(("header", "data", "why"), [
    ({"lora_unet_a.lora_down.weight": {"data_offsets": [0, 0]}}, b"", "lora_unet_a.lora_down.weight: no dtype"),
    ({"__metadata__": ["x"], "w": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]}}, b"\0" * 128,
     "its metadata is not text by name"),
    ({"w": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
      "lora_unet_a.alpha": {"dtype": "F32", "shape": [], "data_offsets": [128, 128]}}, b"\0" * 128,
     "lora_unet_a.alpha: its data's length is not its shape's"),
    ({"w": {"dtype": "F32", "shape": [4, "8"], "data_offsets": [0, 128]}}, b"\0" * 128,
     "w: its shape is not a list of sizes"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16,
     "w: its data offsets are not a start and an end"),
    (b"[" * 100_000 + b"]" * 100_000, b"", "its header nests without end"),
])
def test_a_malformed_safetensors_header_is_a_broken_file_everywhere(images, tmp_path, capsys, header, data, why):
    path = tmp_path / "bad.safetensors"
    write_header(path, header, data)
    with pytest.raises(ValueError, match=f"^{why}$"):
        read_header(path)
    assert f"is not a readable .safetensors file ({why})" in one_line(capsys, ["info", str(path)])
    assert f"--network-weights: {path} is not a readable .safetensors file ({why})" in one_line(
        capsys, ["plan", "--vram", "6GB", "--data", str(images), "--network-weights", str(path)])
    assert why in one_line(capsys, ["check-data", str(images), "--base-weights", str(path)])


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:4fa1\nsize 2132856622\n"
CIVITAI_PAGE = b"\n<!DOCTYPE html><html><head><title>Sign in | Civitai</title></head></html>\n"


@pytest.mark.parametrize(("contents", "said"), [
    (LFS_POINTER, ("is a Git LFS pointer, not the file itself (the clone skipped its large files), not a .safetensors "
                  "file; fetch them in that clone: git lfs pull")),
    (CIVITAI_PAGE, "is a web page, not a model (the download saved a sign-in or error page), not a .safetensors file;"),
    (b"GGUF\x03\x00\x00\x00" + b"\x01" * 40, "is a GGUF file (for ComfyUI-GGUF or stable-diffusion.cpp)"),
    (b"\0" * 4096, "holds only zero bytes (a download or copy that never wrote it: a full disk?)"),
])
def test_a_file_named_safetensors_that_holds_something_else_is_named_for_what_it_holds(images, tmp_path, capsys,
                                                                                     contents, said):
    path = tmp_path / "model.safetensors"
    path.write_bytes(contents)
    assert f"lowvram info: error: {path} {said}" in one_line(capsys, ["info", str(path)])
    assert f"--model: {path} {said}" in one_line(capsys, ["plan", "--model", str(path), "--vram", "6GB"])
    assert f"--network-weights: {path} {said}" in one_line(
        capsys, ["plan", "--vram", "6GB", "--data", str(images), "--network-weights", str(path)])
    assert f"--lora: {path} {said}" in one_line(capsys, ["generate", "--model", "tiny", "--lora", str(path),
                                                         "--prompt", "x"])


@pytest.mark.parametrize(("zipped", "stem"), [(True, "lora"), (False, "lora"), (True, "x" * 120)])
def test_a_renamed_pickle_is_refused_with_the_command_that_converts_it(tmp_path, capsys, zipped, stem):
    path = tmp_path / f"{stem}.safetensors"  # (a long name: torch.save's zip names its data.pkl past 128 bytes)
    weights = {"lora_unet_a.lora_down.weight": torch.ones(2, 3)}
    torch.save({"state_dict": weights}, path, _use_new_zipfile_serialization=zipped)
    said = one_line(capsys, ["info", str(path)])
    assert f"{path} is a pickle file named .safetensors, which can run arbitrary code" in said
    assert f"; rename it {stem}.ckpt, then convert it once to safetensors: " in said
    path.rename(tmp_path / f"{stem}.ckpt")
    command = said.split("convert it once to safetensors: ", 1)[1]
    venv = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # (its python: lowvram's)
    assert subprocess.run(command, shell=True, check=False, env=os.environ | venv).returncode == 0
    from safetensors.torch import load_file

    converted = load_file(path)
    assert torch.equal(converted["lora_unet_a.lora_down.weight"], weights["lora_unet_a.lora_down.weight"])


@pytest.mark.parametrize("header_length", [640, 0x3C20])  # b"\x80\x02" (a pickle's start), b" <" (a web page's)
def test_a_real_safetensors_cut_off_is_never_taken_for_something_else(tmp_path, capsys, header_length):
    path = tmp_path / "lora.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    write_header(path, header.ljust(header_length), b"\0" * 16)
    path.write_bytes(path.read_bytes()[:200])  # a download cut off inside its header
    said = one_line(capsys, ["info", str(path)])
    assert f"{path} is not a readable .safetensors file (" in said and "pickle" not in said and "web page" not in said


def test_a_zip_named_safetensors_says_to_unpack_it(tmp_path, capsys):
    import zipfile

    path = tmp_path / "lora.safetensors"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("my_lora/my_lora.safetensors", b"x" * 100)
    assert f"{path} is a zip archive, not a .safetensors file; unpack it" in one_line(capsys, ["info", str(path)])


def test_a_well_formed_header_reads(tmp_path):
    path = tmp_path / "good.safetensors"
    write_header(path, {"__metadata__": {"ss_network_dim": "4"}, "w": {"dtype": "BF16", "shape": [2, 3],
                                                                         "data_offsets": [0, 12]}}, b"\0" * 12)
    metadata, tensors, start = read_header(path)
    assert metadata == {"ss_network_dim": "4"} and list(tensors) == ["w"] and start == path.stat().st_size - 12
    # every dtype the safetensors library writes (the fnuz fp8 ones too), and one newer than this list (sub-byte)
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 2).to(torch.float8_e4m3fnuz),
               "lora_unet_x.lora_up.weight": torch.zeros(2, 4).to(torch.float8_e5m2fnuz)}, str(path))
    assert set(read_header(path)[1]) == {"lora_unet_x.lora_down.weight", "lora_unet_x.lora_up.weight"}
    write_header(path, {"w": {"dtype": "F4", "shape": [4, 4], "data_offsets": [0, 8]}}, b"\0" * 8)
    assert list(read_header(path)[1]) == ["w"]


def test_a_toml_date_in_a_kohya_dataset_file_is_named(images, capsys):
    (images.parent / "dated.toml").write_text('[[datasets]]\nresolution = 2020-01-01\n[[datasets.subsets]]\n'
                                              'image_dir = "ds/10_x"\n')
    assert "--resolution: datetime.date(2020, 1, 1) is invalid" in one_line(capsys, ["check-data", "dated.toml"])


@pytest.mark.parametrize(("optimizer", "setting", "why"), [
    ("adamw", "betas=1.5,0.9", "Invalid beta parameter at index 0: 1.5"),
    ("adamw", "eps=nan", "Invalid epsilon value: nan"),
    ("adamw8bit", "betas=1.5,0.9", "Invalid beta parameter at index 0: 1.5"),
])
def test_an_optimizer_setting_it_refuses_is_said_before_anything_loads(images, tmp_path, capsys, optimizer, setting,
                                                                        why):
    argv = ["train", "--model", "tiny", "--data", str(images), "--max-steps", "1", "--output", str(tmp_path / "out"),
            "--optimizer", optimizer, "--optimizer-arg", setting]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2 and "caching" not in captured.out + captured.err  # before the caches
    assert captured.err.strip().splitlines()[-1] == (f"lowvram train: error: --optimizer-arg: {optimizer} refused "
                                                     f"its settings ({why}); check each value and its type (e.g. "
                                                     "momentum=0.9)")


@pytest.mark.parametrize(("argv", "message"), [
    (["plan", "ds", "--vram", "6GB"], ("lowvram plan: error: unexpected argument 'ds': each value goes right after "
                                       "its option's flag (one is missing, or an option got two)")),
    (["check-data", "ds", "extra"], ("lowvram check-data: error: unexpected argument 'extra': lowvram check-data "
                                     "takes one DIR")),
    (["info", "a.safetensors", "b.safetensors"], ("lowvram info: error: unexpected argument 'b.safetensors': "
                                                  "lowvram info takes one FILE")),
    (["merge", "a.safetensors", "--output", "o.safetensors", "b.safetensors"], (
        "lowvram merge: error: unexpected argument 'b.safetensors': give lowvram merge's FILE[:WEIGHT] together, all "
        "before or all after the options")),
    (["train", "--lr", "1e-4", "5"], ("lowvram train: error: unexpected argument '5': each value goes right after "
                                      "its option's flag")),
])
def test_a_word_without_its_flag_is_named(capsys, argv, message):
    assert one_line(capsys, argv).startswith(message)


def test_a_name_longer_than_any_file_system_holds_is_one_line(tmp_path, capsys):
    long = tmp_path / ("x" * 300)
    for argv in (["info", str(long / "a.safetensors")], ["check-data", str(long)]):
        assert one_line(capsys, argv).endswith(f"{long.name[:20]}" + long.name[20:] + (
            "/a.safetensors" if argv[0] == "info" else "") + ": a name in this path is over 255 bytes, which no "
                                                          "file or folder can have; check the path")


def test_a_long_number_in_a_onetrainer_config_is_shortened(images, tmp_path, capsys):
    (tmp_path / "ot.json").write_text(f'{{"model_type": "STABLE_DIFFUSION_15", "training_method": "LORA", '
                                      f'"clip_grad_norm": "{HUGE}x"}}')
    line = one_line(capsys, ["plan", "--vram", "6GB", "--data", str(images), "--config", "ot.json"])
    assert "clip_grad_norm: '99999999999999999999999999999…999999999999999999x' is not a number" in line


def test_a_full_disk_says_the_fix_wherever_it_stops_a_command(tmp_path):
    from lowvram.files import DiskFull

    assert str(DiskFull(tmp_path, 2048, 1024, "the resized LoRA")) == (
        f"no room for the resized LoRA in {tmp_path}: it needs 2.00 KiB, 1.00 KiB is free; free space there, or "
        "write elsewhere")
    # shown alike, the two said what would fit: how much is short says it does not
    assert "it needs 1.55 MiB with the 1.00 MiB kept free, 1.55 MiB is free (1.00 KiB short)" in str(
        DiskFull(tmp_path, int(1.55 * 2**20), int(1.55 * 2**20) - 1024, "checkpoint step-000002", kept_free=2**20))
    assert str(DiskFull(tmp_path, 2048, 1024, "the resized LoRA", size_limit=True)).endswith(
        "; raise the limit (ulimit -f unlimited) or write elsewhere")


def test_a_resume_folder_that_is_not_a_checkpoint_is_said_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (an ./output of checkpoints in the current folder is named in the message)
    folder_without_state = "not a lowvram checkpoint folder (no state.json)"
    (tmp_path / "mine.safetensors").write_bytes(b"")
    with pytest.raises(LowvramError, match=r"or --resume auto for the output folder's newest \(to train a LoRA "
                                           r"file further, pass it as --network-weights\)$"):
        run_config(resume=str(tmp_path / "mine.safetensors"))
    backup = tmp_path / "backup" / "2026-12-01_10-00-00-backup-200-2-0"  # OneTrainer's: its LoRA named
    (backup / "lora").mkdir(parents=True)
    (backup / "lora" / "lora.safetensors").write_bytes(b"")
    with pytest.raises(LowvramError, match=rf"auto for the output folder's newest \(a OneTrainer backup: train on from "
                                           rf"its LoRA with --network-weights {re.escape(str(backup))}/lora/lora"):
        run_config(resume=str(backup))
    for given, found in ((tmp_path / "nope", "not found"), (tmp_path, folder_without_state)):
        with pytest.raises(LowvramError, match=rf"^--resume: {given}: {re.escape(found)}; pass a checkpoint folder "
                                               r"\(<output>/checkpoints/step-N\), or --resume auto"):
            run_config(resume=str(given))


def test_a_checkpoint_named_as_lowvram_prints_it_is_the_output_folders(tmp_path, monkeypatch):
    """`--resume step-000002` (as the run printed it) from any folder is that checkpoint of --output, not a folder
    of that name here; one it lacks names the ones it has."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    for step in (2, 4):
        (out / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
        (out / "checkpoints" / f"step-{step:06d}" / "state.json").write_text("{}")
    (out / "checkpoints" / "step-000006").mkdir()  # a write cut short: no state
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for given in ("step-000002", "2", "step-2/"):
        assert run_config(output=str(out), resume=given).training.resume == str(out / "checkpoints" / "step-000002")
    with pytest.raises(LowvramError, match=r"^--resume: ²: not found"):  # (a digit to str.isdigit, none to int)
        run_config(output=str(out), resume="²")
    from lowvram.configure import read_toml

    config = elsewhere / "run.toml"  # its values checked alone (beside a wrong one) find the checkpoint too
    config.write_text(f'[network]\nrank = "x"\n[training]\nresume = "2"\n[output]\noutput = "{out}"\n')
    with pytest.raises(LowvramError) as error:
        read_toml(config)
    assert "--rank" in str(error.value) and "--resume" not in str(error.value)  # (it was "not found" and found)
    config.write_text('[network]\nrank = "x"\n[training]\nresume = "2"\n')  # (the folder given on the command line)
    with pytest.raises(LowvramError) as error:
        read_toml(config, given=("output",))
    assert "--rank" in str(error.value) and "--resume" not in str(error.value)
    with pytest.raises(LowvramError, match=rf"^--resume: step-000006: not found; pass a checkpoint folder "
                                           rf"\(<output>/checkpoints/step-N; {re.escape(str(out / 'checkpoints'))} "
                                           r"holds 2, newest first: step-000004, step-000002\), or --resume auto"):
        run_config(output=str(out), resume="step-000006")


def test_plain_mistakes_get_plain_words(images, tmp_path, capsys):
    with pytest.raises(LowvramError, match=r"^--max-steps: 'abc' is invalid: expected a whole number$"):
        run_config(max_steps="abc")
    assert run_config(max_steps="1e3").training.max_steps == 1000
    with pytest.raises(LowvramError, match=r"^--lr: 'fast' is invalid: expected a number$"):
        run_config(lr="fast")
    with pytest.raises(LowvramError, match=rf"^--sample-prompt-file: {tmp_path} is a folder; give the prompt file in "
                                           r"it$"):
        run_config(sample_prompt_file=str(tmp_path))
    assert one_line(capsys, ["resize", str(tmp_path), "--rank", "2"]).endswith(
        f"{tmp_path}: a folder; give a LoRA .safetensors file")
    (tmp_path / "run.toml").write_text("[model]\n")
    assert "give a model checkpoint (.safetensors) or a diffusers folder" in one_line(
        capsys, ["plan", "--vram", "6GB", "--data", str(images), "--model", str(tmp_path / "run.toml")])
    assert "--profile: no profile '../profiles/colab-t4'" in one_line(
        capsys, ["plan", "--data", str(images), "--profile", "../profiles/colab-t4"])  # a name, not a path
    assert one_line(capsys, ["plan", "--data", str(images), "--vram", "2000GB"]).endswith(
        "--vram: '2000GB' is over 1024 GB; give the card's memory, e.g. 24GB")
    inside = images / "cache"
    assert one_line(capsys, ["check-data", str(images), "--cache-dir", str(inside)]).endswith(
        f"--cache-dir: the cache ({inside}) is inside the dataset folder {images.resolve()}, which lowvram never "
        "writes to; choose a cache folder outside it")


def test_a_lora_given_as_the_vae_is_named_as_one(images, tmp_path, capsys):
    from safetensors.torch import save_file

    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)}, str(lora))
    older = tmp_path / "diffusers-0.20.safetensors"  # diffusers' older attention-processor LoRA naming
    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight":
               torch.zeros(4, 32)}, str(older))
    for path in (lora, older):
        assert f"--vae: {path} is a LoRA, not a VAE; give a VAE file" in one_line(
            capsys, ["train", "--model", "tiny", "--data", str(images), "--vae", str(path), "--max-steps", "1",
                     "--output", str(tmp_path / "out")])


def test_check_data_writes_its_report_over_an_earlier_report_only(images, tmp_path, capsys):
    lora = tmp_path / "done.safetensors"
    lora.write_bytes(b"a finished LoRA")
    assert one_line(capsys, ["check-data", str(images), "--report", str(lora)]).endswith(
        f"--report: {lora} exists and is not an earlier check-data report; name a new file")
    assert lora.read_bytes() == b"a finished LoRA"
    report = tmp_path / "report.json"
    report.touch()  # an empty file (mktemp's) holds nothing to keep
    for _ in range(2):  # written, then written again over itself
        assert main(["check-data", str(images), "--report", str(report)]) == 0
        assert json.loads(report.read_text())["summary"]["images"] == 1
    report.write_bytes(report.read_bytes().replace(b"\n", b"\r\n"))  # as Windows writes it
    assert main(["check-data", str(images), "--report", str(report)]) == 0
    fifo, link = tmp_path / "fifo", tmp_path / "link.json"  # a pipe was read to see whose it was, and waited for
    os.mkfifo(fifo)                                              # ever (--report /dev/stdout | jq); a link, replaced
    link.symlink_to(report)
    for path in (fifo, link, tmp_path):
        assert one_line(capsys, ["check-data", str(images), "--report", str(path)]).endswith(
            f"--report: {path} is not a file lowvram can write the report to (a folder, a pipe, a device or a link); "
            "name a file, e.g. report.json, or - for stdout")
    assert link.is_symlink()
    # - : the JSON alone on stdout (a script's), the tables on stderr
    assert main(["check-data", str(images), "--report", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["summary"]["images"] == 1 and "samples per epoch" in err
    assert main(["check-data", str(images), "--json"]) == 0  # as plan's, info's and doctor's (it was refused)
    assert capsys.readouterr()[0] == out
    assert one_line(capsys, ["check-data", str(images), "--json", "--report", str(tmp_path / "r2.json")]).endswith(
        f"--json writes the report to stdout, --report to {tmp_path / 'r2.json'}: give one")
    assert one_line(capsys, ["check-data", str(images), "--report", str(lora / "r.json")]).endswith(
        f"--report: {lora} is a file, not a folder; name the report in a folder, e.g. report.json")


def test_a_file_removed_while_a_command_reads_it_is_one_line(monkeypatch, tmp_path, capsys):
    """Another run's --keep-saves may remove a LoRA between two looks at it (a concurrency QA saw info's traceback
    once in some 2000 tries): what escapes as FileNotFoundError is said in one line."""
    import errno

    import lowvram.info

    def gone(*args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory",
                                str(tmp_path / "run-step00000051.safetensors"))

    monkeypatch.setattr(lowvram.info, "print_info", gone)
    assert one_line(capsys, ["info", str(tmp_path / "run-step00000051.safetensors")]).endswith(
        "run-step00000051.safetensors: not found (it was there a moment before: removed while lowvram read it?)")

    def broken_install(*args):  # one of lowvram's own files missing: not the user's doing, so not said as theirs
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(Path(lowvram.__file__).parent / "x"))

    monkeypatch.setattr(lowvram.info, "print_info", broken_install)
    with pytest.raises(FileNotFoundError):
        main(["info", str(tmp_path / "run-step00000051.safetensors")])


def test_a_model_the_hub_cannot_give_is_one_line_without_the_hubs_advice(tmp_path):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "lowvram", "generate", "--model", "nobody/no-such-model",
                           "--model-family", "sd15", "--prompt", "x", "--output", str(tmp_path / "x.png")],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    said = ("lowvram generate: error: --model: could not download 'nobody/no-such-model' from the Hugging Face hub "
            f"(HF_HUB_OFFLINE is set, and the model is not in Hugging Face's cache, {tmp_path / 'hf' / 'hub'} "
            "(HF_HOME moves it)); pass a local .safetensors file or diffusers folder")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [said]


def test_a_kohya_command_missing_lowvrams_required_flags_is_answered_in_kohyas_names(capsys):
    """argparse stops at the required flags first: kohya's names for them were answered only once those were given."""
    assert one_line(capsys, ["resize", "x.safetensors", "--new_rank", "4", "--save_to", "y.safetensors"]) == (
        "lowvram resize: error: the following arguments are required: --rank; --new_rank is from kohya's "
        "resize_lora.py; lowvram resize's is --rank; --save_to is from kohya's resize_lora.py; lowvram resize's is "
        "--output (see lowvram resize --help)")
    # a typo beside them too (it came on the next run), and gen_img.py's sizes as generate's own flags
    assert one_line(capsys, ["resize", "x.safetensors", "--new_rank", "4", "--save_precision", "fp16"]).endswith(
        "lowvram resize's is --rank; --save_precision is from kohya's resize_lora.py; lowvram resize's is "
        "--save-precision (see lowvram resize --help)")  # (it was "did you mean": kohya's own name now)
    # lowvram's own flags beside them are no kohya names (--dynamic-param "is from kohya's ...; lowvram's is
    # --dynamic-param")
    assert one_line(capsys, ["resize", "x.safetensors", "--dynamic", "sv_fro", "--dynamic-param", "0.9"]) == (
        "lowvram resize: error: the following arguments are required: --rank (see lowvram resize --help)")
    assert one_line(capsys, ["generate", "--model", "tiny", "--W", "64"]).endswith(
        "--W is from kohya's gen_img.py; lowvram generate's is --width (or \"--w W\" inside --prompt) (see lowvram "
        "generate --help)")


def test_an_alpha_past_fp16_is_refused_before_training_where_the_lora_is_saved_in_fp16():
    """It trained the whole run, then was refused as infinite at the save (fp16's largest number is 65504)."""
    with pytest.raises(LowvramError, match=r"^--alpha: 70000 is past 65504, fp16's largest number"):
        run_config(alpha=70000)
    with pytest.raises(LowvramError, match=r"^--alpha \(by default the rank\): 100000 is past 65504"):
        run_config(rank=100000)
    run_config(alpha=70000, save_precision="bf16")
    run_config(rank=100000, network="lokr")  # (a full-rank LoKr's alpha no reader scales by)


def test_an_empty_path_is_refused_not_read_as_the_current_folder():
    """--output= trained into the current folder (without --overwrite); --model= read it as a model folder."""
    for name, flag in (("output", "--output"), ("model", "--model")):
        with pytest.raises(LowvramError, match=rf"^{flag}: empty; give a "):
            run_config(**{name: ""})
    assert run_config(copy_to="").output.copy_to is None  # (an option off by default: off)


def test_a_run_of_years_is_refused_not_listed_for_hours():
    for name, value, says in (("max_steps", 10**12, "--max-steps: 1000000000000 is past 10,000,000"),
                              ("epochs", 10**9, "--epochs: 1000000000 is past 1,000,000")):
        with pytest.raises(LowvramError, match=f"^{says}, more than any LoRA trains"):
            run_config(**{name: value})


def test_a_file_url_given_as_a_path_names_the_path_it_is(images, capsys):
    """A file manager's 'copy location' pasted (into the UI's form): 'folder not found: /work/file:/srv/my%20data'."""
    address = f"file://{images.parent.as_posix()}/my%20data"
    assert one_line(capsys, ["check-data", address]).endswith(
        f"(a file:// address: give the path alone, {images.parent.as_posix()}/my data)")
    from lowvram.files import not_found_hint

    assert not_found_hint("/data/profile:old/model.safetensors") == ""  # (a colon in a folder's name is no address)
    assert not_found_hint("file://server/share/x").endswith("give the path alone, //server/share/x)")


def test_a_web_address_given_as_a_model_says_it_is_not_downloaded(capsys, tmp_path):
    """Notebook users paste a model's download link: it was "file not found: https://...", as if mistyped."""
    hub = "https://huggingface.co/someone/model/resolve/main/v1-5-pruned-emaonly.safetensors"
    assert one_line(capsys, ["train", "--model", hub, "--data", "sample", "--output", str(tmp_path)]).endswith(
        "; lowvram downloads no web address: download it first (wget, or huggingface-cli download) and give its path, "
        "or give its hub id someone/model")
    assert one_line(capsys, ["train", "--model", "https://civitai.com/api/download/models/12345", "--data", "sample",
                             "--output", str(tmp_path)]).endswith("huggingface-cli download) and give its path")
    # a folder option's (made a path of first), a page's link, a docs page (no hub id)
    assert "lowvram downloads no web address" in one_line(capsys, ["check-data", "https://huggingface.co/datasets/x/y"])
    assert one_line(capsys, ["train", "--model", hub.replace("/resolve/", "/blob/"), "--data", "sample", "--output",
                             str(tmp_path)]).endswith("a /blob/ link is the file's web page, /resolve/ in its place "
                                                      "the file) and give its path, or give its hub id someone/model")
    assert one_line(capsys, ["train", "--model", "https://huggingface.co/docs/diffusers/index", "--data", "sample",
                             "--output", str(tmp_path)]).endswith("and give its path")


def test_a_folder_not_found_names_a_close_one_beside_it(tmp_path, capsys, monkeypatch):
    """kohya folders have spaces (10_ohwx woman): one typed with an underscore was said only not to be found."""
    (tmp_path / "img" / "10_ohwx woman").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert main(["check-data", "img/10_ohwx_woman", "--model", "tiny"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"folder not found: {tmp_path / 'img' / '10_ohwx_woman'} (did you "
                                                    f"mean {tmp_path / 'img' / '10_ohwx woman'}?)")


def test_the_models_own_resolution_is_looked_up_without_the_hub(images, monkeypatch, capsys):
    """The bucket sides checked against the model's own resolution looked a hub id up in every train, plan and
    check-data (23 s offline each, the dry run's own lookup being the run's, once)."""
    from lowvram.models import detect

    asked = []
    monkeypatch.setattr(detect, "_hub_family", lambda model: asked.append(model) or detect.FAMILIES["sd15"])
    assert main(["train", "--model", "someone/custom-sd15", "--data", str(images), "--max-bucket-side", "256",
                 "--dry-run"]) == 0
    assert asked == []
