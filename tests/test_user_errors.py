"""What a user coming from kohya or OneTrainer types wrong, or keeps where lowvram writes: each is one line naming
the option and the fix, or is kept as it is. Nothing of theirs is overwritten or moved."""

import filecmp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import run_config
from PIL import Image
from safetensors.torch import load_file

from lowvram.cli import main
from lowvram.configure import build_config, read_config
from lowvram.errors import LowvramError
from lowvram.files import name_length
from lowvram.hardware import parse_size
from lowvram.lora_metadata import addnet_hash
from lowvram.run_files import options_path
from lowvram.train.loop import train
from lowvram.train.outdir import ARCHIVE, OPTIONS_HEADER, RECORD


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_seed_outside_what_numpy_and_torch_take_is_one_line(capsys):
    for seed, words in ((-1, "-1 is not a seed from 0 to 4294967295 (-1, random elsewhere"),
                        (2**32, "4294967296 is not a seed from 0 to 4294967295")):
        with pytest.raises(LowvramError, match=re.escape(f"--seed: {words}")):
            build_config({"model": "tiny", "data": "sample", "seed": seed})
    assert build_config({"model": "tiny", "data": "sample", "seed": 2**32 - 1}).training.seed == 2**32 - 1


def test_config_files_as_windows_writes_them_are_read_and_the_unreadable_said_in_one_line(tmp_path, capsys):
    text = '[training]\nmax_steps = 7\n'
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())  # Notepad's UTF-8
    (tmp_path / "wide.toml").write_bytes(text.encode("utf-16"))  # PowerShell 5's `>`
    assert read_config(tmp_path / "bom.toml")["max_steps"] == read_config(tmp_path / "wide.toml")["max_steps"] == 7
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"LoRA_type": "Standard"}).encode())
    assert isinstance(read_config(tmp_path / "bom.json"), dict)  # a kohya_ss GUI config, its BOM no matter
    capsys.readouterr()
    (tmp_path / "latin.toml").write_bytes(b'[output]\nname = "caf\xe9"\n')
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "flat.toml").write_text('model = "tiny"\n')
    for name, words in (("latin.toml", "is not UTF-8 text (byte 20); save it as UTF-8"),
                        ("folder.toml", "is a folder; give the config file in it"),
                        ("flat.toml", "model belongs in a table: write it under [model]")):
        with pytest.raises(LowvramError, match=re.escape(words)):
            read_config(tmp_path / name)
    assert main(["plan", "--preset", str(tmp_path / "latin.toml"), "--vram", "6GB"]) == 2
    assert one_error(capsys).startswith("lowvram plan: error: --preset:")


def test_sizes_and_ports_that_name_no_machine_are_refused(capsys):
    assert parse_size("6", "--vram") == parse_size("6GB", "--vram") == 6 * 2**30
    for text, words in (("0", "'0' is under 256 MB"), ("6MiB", "'6MiB' is under 256 MB"),
                        ("8192", "'8192' is over 1024 GB; a number alone is in GB (write 8192MB for megabytes)")):
        with pytest.raises(LowvramError, match=re.escape(f"--vram: {words}")):
            parse_size(text, "--vram")
    with pytest.raises(LowvramError, match=re.escape("--vram: '2000GB' is over 1024 GB; give the card's memory, e.g. "
                                                     "24GB") + "$"):  # a unit: not the megabytes hint
        parse_size("2000GB", "--vram")
    assert parse_size("2048", "--ram") == 2048 * 2**30  # a server's RAM may be
    for port in ("0", "-1", "99999"):
        assert main(["ui", "--port", port]) == 2
        assert f"argument --port: '{port}' is not a port from 1 to 65535" in one_error(capsys)


def test_an_output_or_name_written_as_a_file_says_how_lowvram_names_them(tmp_path):
    with pytest.raises(LowvramError) as error:
        build_config({"model": "tiny", "data": "sample", "output": str(tmp_path / "out" / "my.safetensors"),
                      "name": "mylora.safetensors"})
    assert str(error.value).splitlines() == [
        (f"--output: {tmp_path / 'out' / 'my.safetensors'} names a file; --output is the run's folder and --name its "
         f"LoRA's name: --output {tmp_path / 'out'} --name my"),
        "--name: mylora.safetensors: give it without the extension (the LoRA is <name>.safetensors): --name mylora"]
    # in AUTOMATIC1111's LoRA folder: --copy-to, not a run there whose checkpoints the UI lists (the README's advice)
    loras = tmp_path / "webui" / "models" / "Lora"
    with pytest.raises(LowvramError) as error:
        build_config({"model": "tiny", "data": "sample", "output": str(loras / "mychar.safetensors")})
    assert str(error.value) == (f"--output: {loras / 'mychar.safetensors'} names a file; --output is the run's folder "
                                "and --name its LoRA's name: train into a folder elsewhere with --output "
                                f"{tmp_path / 'webui' / 'lowvram-runs' / 'mychar'} --copy-to "
                                f"{loras / 'mychar.safetensors'}, which writes the LoRA there (the run's checkpoints "
                                f"would show in {loras}'s list)")  # (its folder named as the LoRA: the run's name)
    # each fix as it is pasted: a name with a space quoted (--name my lora was two words)
    with pytest.raises(LowvramError) as error:
        build_config({"model": "tiny", "data": "sample", "output": str(tmp_path / "My LoRAs" / "my lora.safetensors"),
                      "name": "my lora.safetensors"})
    assert str(error.value).splitlines() == [
        (f"--output: {tmp_path / 'My LoRAs' / 'my lora.safetensors'} names a file; --output is the run's folder and "
         f"--name its LoRA's name: --output '{tmp_path / 'My LoRAs'}' --name 'my lora'"),
        "--name: my lora.safetensors: give it without the extension (the LoRA is <name>.safetensors): --name 'my lora'"]


def test_info_refuses_a_truncated_lora_and_a_folder(tmp_path, capsys):
    config = run_config(output=str(tmp_path / "run"), max_steps=1)
    lora = train(config).lora_path
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(lora.read_bytes()[: lora.stat().st_size // 2])
    assert main(["info", str(cut)]) == 2
    assert f"lowvram info: error: {cut} is not a readable .safetensors file (truncated: its tensors need" in \
        one_error(capsys)
    assert main(["info", str(tmp_path / "run")]) == 2
    assert one_error(capsys) == (f"lowvram info: error: {tmp_path / 'run'} is a folder; give a LoRA .safetensors file "
                                 "in it (run.safetensors)")
    (tmp_path / "empty").mkdir()
    assert main(["info", str(tmp_path / "empty")]) == 2
    assert one_error(capsys) == (f"lowvram info: error: {tmp_path / 'empty'} is a folder; give a LoRA .safetensors "
                                 "file")
    # generate --lora too: it said "file not found" of a folder that is there
    assert main(["generate", "--model", "tiny", "--lora", str(tmp_path / "run"), "--prompt", "a cat"]) == 2
    assert one_error(capsys) == (f"lowvram generate: error: --lora: {tmp_path / 'run'} is a folder; give a LoRA "
                                 ".safetensors file in it (run.safetensors)")
    assert main(["info", str(lora)]) == 0


def test_a_file_where_a_folder_or_a_safetensors_name_belongs_is_named(tmp_path, sample_data, capsys):
    image = next(sample_data.rglob("*.png"))
    assert main(["check-data", "--model", "tiny", str(image)]) == 2
    assert f"--data: {image} is a file; give the folder of images" in one_error(capsys)
    captions = tmp_path / "hf style" / "metadata.jsonl"  # (the kohya words sent an imagefolder's user astray)
    captions.parent.mkdir()
    captions.write_text('{"file_name": "a.png", "text": "a cat"}\n')
    assert main(["check-data", "--model", "tiny", str(captions)]) == 2
    assert one_error(capsys) == (f"lowvram check-data: error: --data: {captions} is the captions file of a Hugging "
                                 f"Face imagefolder; give its folder: --data '{captions.parent}'")
    # a dataset uploaded as an archive (a Colab user's zip on Drive): how to unpack it, then the --data that follows
    # (its contents at the top, or the folder itself inside it, as Windows' "Compressed folder" and macOS make it)
    # (one N_name folder zipped: unpacked into a folder of the zip's name, not among the zip's neighbours)
    for archive, inside in ((tmp_path / "my dataset.zip", None), (tmp_path / "zipped" / "sample.zip", sample_data.name),
                            (tmp_path / "drive" / "char set.zip", "5_lvshape")):
        archive.parent.mkdir(exist_ok=True)
        shutil.make_archive(str(archive.with_suffix("")), "zip", sample_data if inside == "5_lvshape" else
                            sample_data.parent if inside else sample_data, inside)
        if inside:  # as macOS' Compress makes it: its __MACOSX/ beside the folder
            with zipfile.ZipFile(archive, "a") as zipped:
                zipped.writestr(f"__MACOSX/{inside}/._a.png", b"\0\5\26\7")
        assert main(["check-data", "--model", "tiny", str(archive)]) == 2
        unpack = one_error(capsys).split("unpack it first: ")[1]
        command, data = unpack.split(", then --data ")
        subprocess.run([sys.executable, *shlex.split(command)[1:]], check=True)
        assert main(["check-data", "--model", "tiny", *shlex.split(data)]) == 0, unpack
        capsys.readouterr()
    assert sorted(path.name for path in (tmp_path / "drive").iterdir()) == ["char set", "char set.zip"]
    lora = train(run_config(output=str(tmp_path / "run"), max_steps=1)).lora_path
    capsys.readouterr()
    # extract too (it wrote one, which lowvram then refused as a pickle); a UI's loras/ folder is named as one (it
    # was told to add --overwrite, which failed after the work)
    loras = tmp_path / "loras"
    loras.mkdir()
    for command in (["resize", str(lora), "--rank", "2"], ["merge", str(lora), "--rank", "2"],
                    ["extract", "--base", "tiny", "--tuned", str(lora.parent / "missing.safetensors"), "--rank", "2"]):
        assert main([*command, "--output", str(tmp_path / "small.ckpt")]) == 2
        assert f"a LoRA is written as .safetensors; name it {tmp_path / 'small.safetensors'}" in one_error(capsys)
        assert main([*command, "--output", str(loras), "--overwrite"]) == 2
        assert (f"--output: {loras} is a folder; name the LoRA file in it, e.g. {loras / 'NAME.safetensors'}"
                in one_error(capsys))
        assert main([*command, "--output", str(tmp_path / "mychar_v1.5")]) == 2  # (its .5 kept; review)
        assert f"name it {tmp_path / 'mychar_v1.5.safetensors'}" in one_error(capsys)
    assert not (tmp_path / "small.ckpt").exists()


def test_check_data_never_writes_its_report_into_the_dataset(sample_data, capsys):
    caption = next(sample_data.rglob("*.txt"))
    before = caption.read_bytes()
    assert main(["check-data", "--model", "tiny", str(sample_data), "--report", str(caption)]) == 2
    assert f"--report: {caption} is inside the dataset folder {sample_data}, which lowvram never writes to" in \
        one_error(capsys)
    assert caption.read_bytes() == before


def test_check_data_runs_from_inside_the_image_folder(sample_data, monkeypatch, capsys):
    """check-data writes no run: its (unused) default output, ./output, inside the dataset is no refusal there (it
    named --output, which check-data does not take); train still refuses it."""
    folder = next(path for path in sample_data.iterdir() if path.is_dir())
    monkeypatch.chdir(folder)
    assert main(["check-data", "--model", "tiny", "."]) == 0
    assert main(["train", "--model", "tiny", "--data", ".", "--max-steps", "1"]) == 2
    assert "--output: " in one_error(capsys) and not (folder / "output").exists()


def test_a_windows_cache_folder_in_the_environment_is_refused_as_the_flags_is(tmp_path, monkeypatch, capsys):
    """LOWVRAM_CACHE_DIR=D:\\lowvram\\cache made a folder of that whole name here, unsaid (--cache-dir's is refused),
    for train and check-data alike."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", "D:\\lowvram\\cache")
    for command in (["check-data", "sample", "--model", "tiny"], ["cache"],
                    ["train", "--data", "sample", "--max-steps", "1", "--model", "tiny"]):
        assert main(command) == 2
        assert one_error(capsys).split(": error: ")[1].startswith("LOWVRAM_CACHE_DIR: D:\\lowvram\\cache would be "
                                                                  "written as one file or folder of that whole name")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("LOWVRAM_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["check-data", "sample", "--model", "tiny", "--cache-dir", "C:\\x"]) == 2
    assert ": error: --cache-dir: C:\\x would be written" in one_error(capsys)


def test_the_users_config_in_the_output_folder_under_the_runs_name_is_kept(tmp_path, capsys):
    """The user's own <name>.toml (written by hand, saved from the web UI, or an older lowvram's, from before the
    header) is never rewritten or archived: the run's options go beside it, as <name>.run.toml, which the run's
    'continue with' line names."""
    folder = tmp_path / "dog"
    folder.mkdir()
    mine = folder / "dog.toml"
    text = '# my carefully commented config\n[model]\nmodel = "tiny"\n[training]\nmax_steps = 1\n[output]\noutput = "."\n'
    mine.write_text(text)
    assert main(["train", "--config", str(mine), "--data", "sample", "--rank", "4"]) == 0
    assert mine.read_text() == text and (folder / "dog.safetensors").is_file()
    out = " ".join(capsys.readouterr().out.split())
    assert f"kept {mine} as it is: lowvram's header is not on its first line" in out
    assert f"this run's options go to {folder / 'dog.run.toml'}" in out
    assert read_config(folder / "dog.run.toml")["rank"] == 4 and options_path(folder, "dog") == folder / "dog.run.toml"
    assert main(["train", "--config", str(mine), "--data", "sample", "--rank", "4", "--overwrite"]) == 0
    assert mine.read_text() == text  # --overwrite moves the earlier run's files, not the user's
    assert not list((folder / ARCHIVE).rglob("dog.toml")) and list((folder / ARCHIVE).rglob("dog.run.toml"))
    whole = folder / "whole.toml"  # every option, as the web UI's Save .toml or an older lowvram writes them
    whole.write_text((folder / "dog.run.toml").read_text().removeprefix(OPTIONS_HEADER))
    whole.replace(mine)
    assert main(["train", "--config", str(mine), "--max-steps", "2", "--overwrite"]) == 0
    assert read_config(mine)["max_steps"] == 1 and read_config(folder / "dog.run.toml")["max_steps"] == 2
    assert not list((folder / ARCHIVE).rglob("dog.toml"))
    # the user's file, of other options, resumed: the refusal names the file of the run's own
    mine.write_text(re.sub(r"(?m)^seed = \d+$", "seed = 7", mine.read_text()))
    assert main(["train", "--config", str(mine), "--max-steps", "3", "--resume", "auto"]) == 2
    assert (f"pass the options it was trained with (--config {folder / 'dog.run.toml'} gives them)"
            in " ".join(capsys.readouterr().err.split()))


def test_a_run_that_failed_before_its_first_save_does_not_hold_the_folder(tmp_path, capsys, sample_data):
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--data", str(tmp_path / "typo"), "--output", str(out)]) == 2
    capsys.readouterr()
    out.mkdir()  # a failure after the folder was claimed: its record, nothing to resume or keep
    (out / RECORD).write_text(json.dumps({"identity": "another", "recipe": {"rank": 8}, "name": "run"}))
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(out), "--max-steps", "1"]) == 0
    assert "starting over: the earlier run in" in " ".join(capsys.readouterr().out.split())
    # refused once the folder is held (its scan: an empty --reg-data), in a folder it made: none left behind, so no
    # "earlier run" to start over from; one that was there stays, with what it held
    (tmp_path / "reg").mkdir()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    for folder in (tmp_path / "new", tmp_path / "kept"):
        assert main(["train", "--model", "tiny", "--data", str(sample_data), "--reg-data", str(tmp_path / "reg"),
                     "--output", str(folder), "--max-steps", "1"]) == 2
        assert "--reg-data: no images" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and (tmp_path / "kept" / "notes.txt").read_text() == "mine"


def test_training_on_from_the_lora_overwrite_would_move_is_refused_and_other_files_stay(tmp_path, capsys):
    out = tmp_path / "run"
    first = train(run_config(output=str(out), max_steps=1)).lora_path
    resized = out / "run-r16.safetensors"  # `lowvram resize` beside it: not the run's
    shutil.copy(first, resized)
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(out), "--max-steps", "1",
                 "--overwrite", "--network-weights", str(first)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"lowvram train: error: --network-weights: {first} is the earlier run's LoRA, which "
                            "--overwrite moves"), error
    assert first.is_file()
    # a dataset of no usable image (phone photos in HEIC) is refused before the earlier run moves to the archive
    (tmp_path / "phone").mkdir()
    (tmp_path / "phone" / "IMG_0001.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    assert main(["train", "--model", "tiny", "--data", str(tmp_path / "phone"), "--output", str(out), "--max-steps",
                 "1", "--overwrite"]) == 2
    assert "--data: no usable images" in capsys.readouterr().err
    assert first.is_file() and not (out / ARCHIVE).exists()
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(out), "--max-steps", "1",
                 "--rank", "4", "--overwrite"]) == 0
    assert resized.is_file() and load_file(str(resized))
    assert list((out / ARCHIVE).rglob("run.safetensors"))


def test_lora_files_no_run_recorded_are_never_written_over(tmp_path, capsys):
    """A ComfyUI loras folder holding mychar-e0001.safetensors (a copy, an earlier tool's) was written over by the
    first epoch's save without a word, and under --overwrite a mychar.safetensors of no recorded run was replaced,
    though the refusal said the earlier files move to archive/ (and blamed a kill while saving)."""
    out = tmp_path / "ComfyUI" / "models" / "loras"
    out.mkdir(parents=True)
    other = train(run_config(output=str(tmp_path / "other"), max_steps=1)).lora_path
    shutil.copy(other, out / "mychar-e0001.safetensors")
    argv = ["train", "--model", "tiny", "--data", "sample", "--output", str(out), "--name", "mychar",
            "--max-steps", "2", "--save-every", "1"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"lowvram train: error: --output: {out} holds mychar-e0001.safetensors of no lowvram run there, "
                     "under a name this run saves to; start over by moving them out of this LoRA folder first, or "
                     "choose another --output or --name"), error  # (--overwrite is refused in a LoRA list)
    assert not (out / RECORD).exists()
    shutil.copy(other, out / "mychar.safetensors")
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "mychar.safetensors exists; no lowvram run is recorded there: train on from it" in error, error
    (out / "mychar-diffusers").mkdir()  # another's diffusers copy: written over under --format diffusers
    shutil.copy(other, out / "mychar-diffusers" / "pytorch_lora_weights.safetensors")
    (out / "samples").mkdir()  # another's, which --overwrite leaves alone
    (out / "samples" / "theirs.png").write_bytes(b"png")
    # --overwrite would archive them below models/loras, where AUTOMATIC1111 then loaded the archived mychar for
    # <lora:mychar>: refused, with the way that keeps the run's files out of the LoRA lists
    assert main([*argv, "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"the earlier mychar-e0001.safetensors would move to {out / ARCHIVE}/ and be listed under the same name as the "
        f"new one; move the earlier files out first, or train into a folder elsewhere with --copy-to {out}")
    elsewhere = [*argv[:6], str(tmp_path / "mychar"), *argv[7:], "--copy-to", str(out)]
    assert main(elsewhere) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"--copy-to: {out / 'mychar.safetensors'} exists, and is not this run's LoRA; name another file (or --name), "
        f"or pass --overwrite to replace it (it moves to {tmp_path / 'mychar' / ARCHIVE}/)")
    # its AUTOMATIC1111 card, the user's own words: kept for the new LoRA of that name, a copy with the earlier
    (out / "mychar.json").write_text('{"activation text": "the other one"}')
    assert main([*elsewhere, "--overwrite"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert json.loads((out / "mychar.json").read_text()) == {"activation text": "the other one"}
    assert [path.read_text() for path in (tmp_path / "mychar" / ARCHIVE).rglob("mychar.json")] == [
        '{"activation text": "the other one"}']
    assert f"copied to {out / 'mychar.safetensors'}" in said and "LoRA folder" not in said, said
    assert {path.name for path in out.rglob("*.safetensors")} == {  # (none of the run's checkpoints)
        "mychar.safetensors", "mychar-e0001.safetensors", "pytorch_lora_weights.safetensors"}
    assert filecmp.cmp(out / "mychar.safetensors", tmp_path / "mychar" / "mychar.safetensors", shallow=False)
    [kept] = (tmp_path / "mychar" / ARCHIVE).rglob("*.safetensors")  # the file it replaced
    assert all(torch.equal(tensor, load_file(str(other))[key]) for key, tensor in load_file(str(kept)).items())
    assert (out / "samples" / "theirs.png").is_file()


def test_a_run_into_a_lora_folder_says_its_checkpoints_show_in_the_lists(tmp_path, capsys):
    """ComfyUI lists every .safetensors below models/loras: the run's checkpoints showed there without a word."""
    out = tmp_path / "ComfyUI" / "models" / "loras"
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(out / "mychar"), "--max-steps",
                 "1"]) == 0
    assert (f"{out / 'mychar'} is in {out}, a LoRA folder whose every .safetensors ComfyUI and AUTOMATIC1111 list: "
            f"this run's checkpoints/ show in their lists too; train into a folder elsewhere with --copy-to {out} to "
            "keep them out") in " ".join(capsys.readouterr().out.split())
    # into the LoRA folder itself, unnamed: the LoRA is named after it (loras.safetensors in ComfyUI's list)
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(out), "--max-steps", "1"]) == 0
    assert ("keep them out; its LoRA takes the folder's name, loras.safetensors (--name gives it another)" in
            " ".join(capsys.readouterr().out.split()))
    # its card beside it, as --copy-to writes one (AUTOMATIC1111 showed it without its trigger words nor a preview)
    assert json.loads((out / "loras.json").read_text()) == {"sd version": "SD1", "activation text": "lvshape"}
    webui = tmp_path / "webui" / "models" / "Lora"
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", str(webui), "--max-steps", "1",
                 "--name", "drawn", "--sample-prompt", "lvshape"]) == 0
    assert (webui / "drawn.preview.png").is_file() and (webui / "drawn.json").is_file()
    assert (out / "mychar" / "mychar.json").is_file()  # (a folder inside the list: listed too)


def test_tensorboard_missing_is_said_before_anything_loads(monkeypatch):
    """A replayed OneTrainer or kohya config carries tensorboard = true: on a machine without TensorBoard that was
    said only after the scan, the model load and the caching."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as where it is not installed
    with pytest.raises(LowvramError, match=r"--tensorboard: TensorBoard is not installed; pip install "
                                           r"'lowvram\[tensorboard\]', or train without it \(--no-tensorboard\)"):
        run_config(tensorboard=True)
    run_config(tensorboard=False)


def test_an_output_name_too_long_to_write_is_refused_before_any_work(tmp_path, capsys):
    """A file name holds 255 bytes, and lowvram writes through a temporary name 14 bytes longer: a 252-byte name
    rendered, then failed to write; a 270-byte one ended resize in a traceback."""
    long_png, longer = tmp_path / ("長" * 83 + ".png"), tmp_path / ("長" * 90 + ".safetensors")
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--steps", "1", "--output", str(long_png)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lowvram generate: error: --output: 長長長") and "is 253 bytes long" in err
    assert "so it can be at most 241; shorten it" in err and len(err.splitlines()) == 1
    numbered = tmp_path / ("a" * 237 + ".png")  # 241 bytes, but --count numbers it: the numbered name is shown
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--steps", "1", "--count", "2", "--output",
                 str(numbered)]) == 2
    assert "aaaaaaaaaaaaaaaa...aaaaa-00.png is 244 bytes long" in capsys.readouterr().err
    assert main(["resize", str(tmp_path / "missing.safetensors"), "--rank", "2", "--output", str(longer)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert any("is 282 bytes long" in line for line in lines) and not any("Traceback" in line for line in lines)
    # Windows (NTFS) counts UTF-16 units: 長 is one there (three bytes here), an emoji two (four bytes here)
    assert [name_length("長" * 90 + ".png", windows) for windows in (True, False)] == [94, 274]
    assert [name_length("🐕" * 10, windows) for windows in (True, False)] == [20, 40]
    inside = tmp_path / ("長" * 90) / "out.safetensors"  # a folder's name too long: what the system says, one line
    assert main(["resize", str(tmp_path / "missing.safetensors"), "--rank", "2", "--output", str(inside)]) == 2
    assert "File name too long; name another" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_copy_to_names_a_safetensors_file_or_a_folder_outside_the_runs_own_lora(tmp_path, capsys):
    argv = ["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "run"), "--name", "me"]
    for copy, said in ((tmp_path / "me.ckpt", f"--copy-to: {tmp_path / 'me.ckpt'} is no .safetensors file; name one,"),
                       (tmp_path / "run" / "me.safetensors", "is the run's own LoRA; name a file or folder outside"),
                       (tmp_path / "run", "is the run's own LoRA"),  # (a folder: the LoRA's name in it)
                       (tmp_path / "file" / "x", "--copy-to: can't write in"),
                       # a typo beside AUTOMATIC1111's LoRA folder: it was made, the LoRA never in its list
                       (tmp_path / "models" / "lora", (f"--copy-to: {tmp_path / 'models' / 'lora'} does not exist, "
                        f"but {tmp_path / 'models' / 'Lora'} does; give that folder, or make")),
                       # AUTOMATIC1111's name where ComfyUI's folder is: a Lora/ beside loras/ listed by neither
                       (tmp_path / "models" / "loras", (f"--copy-to: {tmp_path / 'models' / 'loras'} does not "
                        f"exist, but {tmp_path / 'models' / 'Lora'} does"))):
        (tmp_path / "file").write_bytes(b"")
        (tmp_path / "models" / "Lora").mkdir(parents=True, exist_ok=True)
        assert main([*argv, "--copy-to", str(copy)]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
    (tmp_path / "loras" / "project1").mkdir(parents=True)  # a new folder beside one of a close name: made
    assert run_config(copy_to=str(tmp_path / "loras" / "project2") + "/").output.copy_to


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="links need privileges on Windows")
def test_a_link_to_what_is_gone_is_named_as_one(tmp_path, capsys):
    """Stability Matrix links each UI's models folder to a shared one: with that drive unmounted, a model was 'not
    found (did you mean <itself>?)' and the output folder 'File exists'."""
    (tmp_path / "model.safetensors").symlink_to(tmp_path / "gone" / "model.safetensors")
    (tmp_path / "Lora").symlink_to(tmp_path / "unmounted")
    model = (f"{tmp_path / 'model.safetensors'} is a link to {tmp_path / 'gone' / 'model.safetensors'}, which is "
             "gone (a drive not mounted, or a folder moved)")
    folder = f"{tmp_path / 'Lora'} is a link to {tmp_path / 'unmounted'}, which is gone"
    for argv, said in ((["train", "--model", str(tmp_path / "model.safetensors"), "--data", "sample", "--output",
                         str(tmp_path / "out")], model),
                       (["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "Lora" / "run")],
                        folder),
                       (["generate", "--model", "tiny", "--lora", str(tmp_path / "Lora" / "me.safetensors"),
                         "--prompt", "a cat", "--output", str(tmp_path / "cat.png")], folder),
                       (["info", str(tmp_path / "model.safetensors")], model)):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert said in err and "did you mean" not in err and len(err.strip().splitlines()) == 1, err


def test_an_output_folder_among_the_images_is_refused_as_a_cache_there_is(tmp_path, capsys):
    """A student's --output "~/mydata/10_ohwx mug" wrote the LoRA, checkpoints and samples among her images."""
    images = tmp_path / "mydata" / "10_ohwx mug"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(images / "a.png")
    inside = (f"--output: {images / 'run'} is inside the dataset's image folder {images}, which lowvram never writes "
              "to (the run's LoRA, samples and checkpoints would lie among the images); choose an --output outside it")
    for output, said in ((images, f"--output: {images} is the dataset's image folder, which lowvram never"),
                         (images / "run", inside)):
        assert main(["train", "--model", "tiny", "--data", str(tmp_path / "mydata"), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["10_ohwx mug", "a.png", "mydata"]
    # --data naming the N_name folder itself, and a kohya dataset file naming it
    (tmp_path / "ds.toml").write_text(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{images}'\n")
    for data in (images, tmp_path / "ds.toml"):
        assert main(["train", "--model", "tiny", "--data", str(data), "--output", str(images / "run")]) == 2
        assert inside in capsys.readouterr().err
    # a folder of the project beside the image folders is no image folder: its runs stay
    assert main(["plan", "--model", "tiny", "--data", str(tmp_path / "mydata"), "--output",
                 str(tmp_path / "mydata" / "output"), "--vram", "6GB"]) == 0


def test_a_path_split_at_its_space_says_to_quote_it(tmp_path, capsys):
    """kohya's folder names hold spaces (10_ohwx mug): typed unquoted, the error spoke of a missing flag."""
    folder = tmp_path / "10_ohwx big mug"
    folder.mkdir()
    for argv in (["train", "--model", "tiny", "--data", *str(folder).split(" ")],
                 ["check-data", *str(folder).split(" "), "--model", "tiny"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"unexpected argument 'big': a path with spaces is one argument only in quotes: \"{folder}\"" in err, err


def test_copy_to_a_lora_folder_writes_automatic1111s_card_files_and_keeps_the_users(tmp_path, capsys):
    """AUTOMATIC1111 files a LoRA by <name>.json (its base model, the activation text its card adds to the prompt)
    and shows <name>.preview.png; a user's own card files are theirs."""
    loras = tmp_path / "models" / "Lora"
    argv = ["train", "--model", "tiny-sdxl", "--data", "sample", "--max-steps", "1", "--trigger-word", "lvshape",
            "--copy-to", str(loras), "--metadata-description", "a test", "--sample-prompt", "lvshape, a circle"]
    assert main([*argv, "--output", str(tmp_path / "mychar")]) == 0
    assert json.loads((loras / "mychar.json").read_text()) == {"sd version": "SDXL", "activation text": "lvshape",
                                                               "description": "a test"}
    assert (Image.open(loras / "mychar.preview.png").tobytes()
            == Image.open(tmp_path / "mychar" / "samples" / "mychar-00.png").tobytes())
    (loras / "other.json").write_text('{"activation text": "mine"}')  # a card the user wrote for a LoRA to come
    assert main([*argv, "--output", str(tmp_path / "other")]) == 0
    assert json.loads((loras / "other.json").read_text()) == {"activation text": "mine"}
    assert (loras / "other.preview.png").is_file()
    # a copy under another name: the samples name the LoRA as AUTOMATIC1111 lists it, by the copy's name
    assert main([*argv[:-6], "--copy-to", str(loras / "mine v2.safetensors"), "--sample-prompt", "lvshape",
                 "--output", str(tmp_path / "v2")]) == 0
    said = Image.open(loras / "mine v2.preview.png").text["parameters"]
    end = json.loads((tmp_path / "v2" / "metrics.jsonl").read_text().splitlines()[-1])  # (a script collecting LoRAs)
    assert end["copied_to"] == str(loras / "mine v2.safetensors") and "missing" not in end
    assert "<lora:mine v2:1>" in said and 'Lora hashes: "mine v2: ' in said and "Model: tiny-sdxl" in said, said
    # the finished run continued: its copy is replaced, and the preview of the earlier file with it
    earlier = addnet_hash(loras / "mine v2.safetensors")[:12]
    assert main(["train", "--config", str(tmp_path / "v2" / "v2.toml"), "--max-steps", "2", "--resume", "auto"]) == 0
    said = Image.open(loras / "mine v2.preview.png").text["parameters"]
    assert f'Lora hashes: "mine v2: {addnet_hash(loras / "mine v2.safetensors")[:12]}"' in said and earlier not in said
    Image.new("RGB", (8, 8), "red").save(loras / "mine v2.preview.png")  # one the user chose: kept
    assert main(["train", "--config", str(tmp_path / "v2" / "v2.toml"), "--max-steps", "3", "--resume", "auto"]) == 0
    assert Image.open(loras / "mine v2.preview.png").size == (8, 8)
    capsys.readouterr()


def test_a_kohya_concepts_folder_name_is_its_cards_activation_text(tmp_path, capsys):
    """kohya_ss's GUI has no trigger word field: a 20_mystyle style folder's LoRA had an empty card and no trigger
    words. Captions of their own without the words offer none; several concepts offer each one's words whose
    captions hold them (a two-concept dataset's card was empty)."""
    from lowvram.data.sample import write_sample_dataset

    images = sorted((write_sample_dataset(tmp_path / "source") / "5_lvshape").glob("*.png"))[:3]
    folder = tmp_path / "img" / "20_mystyle style"
    folder.mkdir(parents=True)
    for image, caption in zip(images, ("mystyle style, a tree", None, "a house")):
        shutil.copy(image, folder)
        if caption:
            (folder / image.name).with_suffix(".txt").write_text(caption)
    loras = tmp_path / "models" / "Lora"
    argv = ["train", "--model", "tiny", "--data", str(tmp_path / "img"), "--max-steps", "1", "--copy-to", str(loras)]
    assert main([*argv, "--output", str(tmp_path / "v1")]) == 0
    assert json.loads((loras / "v1.json").read_text()) == {"sd version": "SD1", "activation text": "mystyle style"}
    from safetensors import safe_open

    meta = safe_open(str(loras / "v1.safetensors"), framework="pt").metadata()
    assert (meta["modelspec.trigger_phrase"], meta["lowvram.trigger_word"], meta["ss_training_comment"]) == (
        "mystyle style", "", "")  # (no trigger given: the folder's name is no comment)
    # shared without its captions and folder names: the folder's name goes with them (a given trigger stays)
    assert main(["info", str(loras / "v1.safetensors"), "--strip-captions"]) == 0
    meta = safe_open(str(loras / "v1.safetensors"), framework="pt").metadata()
    assert "modelspec.trigger_phrase" not in meta and "mystyle" not in meta["ss_tag_frequency"]
    (folder / images[1].name).with_suffix(".txt").write_text("a cloud")  # most captions without the words: none
    assert main([*argv, "--output", str(tmp_path / "v2")]) == 0
    assert json.loads((loras / "v2.json").read_text()) == {"sd version": "SD1"}
    other = tmp_path / "img" / "10_ohwx cat"
    other.mkdir()
    for image in images[:2]:
        shutil.copy(image, other)  # uncaptioned: its folder's name is their caption
    assert main([*argv, "--output", str(tmp_path / "v3")]) == 0
    assert json.loads((loras / "v3.json").read_text()) == {"sd version": "SD1", "activation text": "ohwx cat"}
    (folder / images[1].name).with_suffix(".txt").unlink()
    assert main([*argv, "--output", str(tmp_path / "v4")]) == 0
    assert json.loads((loras / "v4.json").read_text()) == {"sd version": "SD1",
                                                           "activation text": "ohwx cat, mystyle style"}
    capsys.readouterr()


def test_overwrite_of_another_runs_copy_keeps_the_card_the_user_edited(tmp_path, capsys):
    """--overwrite moved the earlier copy's card to the archive with it: the activation text and preferred weight
    AUTOMATIC1111's card editor saved were gone from its list. A card as lowvram wrote it tells of that LoRA: moved."""
    loras = tmp_path / "models" / "Lora"
    argv = ["train", "--model", "tiny", "--data", "sample", "--max-steps", "1", "--copy-to", str(loras), "--name",
            "mystyle", "--sample-prompt", "lvshape", "--overwrite"]
    assert main([*argv, "--trigger-word", "lvshape", "--output", str(tmp_path / "v1")]) == 0
    assert main([*argv, "--trigger-word", "lvshape2", "--output", str(tmp_path / "v2")]) == 0
    assert json.loads((loras / "mystyle.json").read_text())["activation text"] == "lvshape2"  # (lowvram's: moved)
    # an older lowvram's card (fewer settings), saved again by AUTOMATIC1111 unedited (its empty ones): lowvram's
    (loras / "mystyle.json").write_text(json.dumps({"sd version": "SD1", "notes": "", "preferred weight": 0}))
    assert main([*argv, "--trigger-word", "lvshape2b", "--output", str(tmp_path / "v2b")]) == 0
    assert json.loads((loras / "mystyle.json").read_text())["activation text"] == "lvshape2b"
    edited = {"sd version": "SD1", "activation text": "lvshape style", "preferred weight": 0.8}
    (loras / "mystyle.json").write_text(json.dumps(edited))
    capsys.readouterr()
    assert main([*argv, "--trigger-word", "lvshape3", "--output", str(tmp_path / "v3")]) == 0
    said = capsys.readouterr().out
    assert json.loads((loras / "mystyle.json").read_text()) == edited
    archived = next((tmp_path / "v3" / "archive").iterdir())
    assert sorted(path.name for path in archived.iterdir()) == ["mystyle.json", "mystyle.preview.png",
                                                                "mystyle.safetensors"]
    assert f"moved the earlier mystyle.safetensors to {archived}; kept your mystyle.json for this one" in said
    # the new LoRA's sample is its preview (the earlier one's went with it)
    assert Image.open(loras / "mystyle.preview.png").text["parameters"] != Image.open(
        archived / "mystyle.preview.png").text["parameters"]
    # kept for an SDXL LoRA of that name: its base model follows (AUTOMATIC1111's list filtered it out as SD1)
    sdxl = [word if word != "tiny" else "tiny-sdxl" for word in argv]
    assert main([*sdxl, "--trigger-word", "lvshape4", "--output", str(tmp_path / "v4")]) == 0
    assert json.loads((loras / "mystyle.json").read_text()) == edited | {"sd version": "SDXL"}


def test_an_empty_path_on_the_command_line_turns_a_configs_option_off(tmp_path, capsys):
    """`--copy-to ""` copied into the current folder, and the run's recipe then kept that folder."""
    config = tmp_path / "run.toml"
    config.write_text(f'[model]\nmodel = "tiny"\n[data]\ndata = "sample"\n[training]\nmax_steps = 1\n'
                      f'[output]\noutput = "{tmp_path / "out"}"\ncopy_to = "{tmp_path / "loras"}"\n')
    assert main(["train", "--config", str(config), "--copy-to", "", "--sample-prompt-file", ""]) == 0
    assert not (tmp_path / "loras").exists() and "copied" not in capsys.readouterr().out
    assert "copy_to" not in (tmp_path / "out" / "out.toml").read_text()


def test_a_log_keeps_a_long_file_name_whole(tmp_path, capsys):
    """check-data's output in a file (a batch job's log) cut a broken image's name at 80 columns: '10_a_really_…'."""
    folder = tmp_path / "10_a_really_long_character_name_for_a_folder_of_images"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "fine.png")
    (folder / "a_broken_image_with_a_long_name_too.png").write_bytes(b"not an image")
    assert main(["check-data", str(tmp_path), "--model", "tiny"]) == 0
    skipped = capsys.readouterr().out.split("1 skipped")[1].split("└")[0]  # (wrapped in its cell, whole)
    name = "".join(line.split("│")[1].strip() for line in skipped.splitlines() if line.startswith("│"))
    assert name == f"{folder.name}/a_broken_image_with_a_long_name_too.png", skipped


def test_copy_to_a_dotted_folder_and_over_the_runs_earlier_copy(tmp_path, capsys):
    """`--copy-to loras.v2/` was refused as no .safetensors file (the slash lost); a run trained further without
    --copy-to, then with it again, called its own earlier copy another run's."""
    argv = ["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "run"), "--resume", "auto"]
    assert main([*argv, "--max-steps", "1", "--copy-to", f"{tmp_path / 'loras.v2'}/"]) == 0
    assert (tmp_path / "loras.v2" / "run.safetensors").is_file()
    assert main([*argv, "--max-steps", "2"]) == 0  # (its step-1 LoRA kept as run-step00000001)
    assert main([*argv, "--max-steps", "3", "--copy-to", f"{tmp_path / 'loras.v2'}/"]) == 0
    assert filecmp.cmp(tmp_path / "loras.v2" / "run.safetensors", tmp_path / "run" / "run.safetensors", shallow=False)
    capsys.readouterr()
    # another path's slash is no part of it: `--data dataset/` (a shell's completion) resumes `--data dataset`'s run
    from lowvram.configure import build_config

    assert build_config({"model": "tiny", "data": f"{tmp_path}/", "output": f"{tmp_path / 'run'}/"}).data.data == (
        str(tmp_path))


def test_a_copy_another_run_wrote_since_the_start_is_not_written_over(tmp_path):
    """Two runs of one --name copying to ComfyUI's loras/ at once: both passed the check at their start, and the
    later copy replaced the earlier without --overwrite (the card told of the one replaced)."""
    import signal

    loras = tmp_path / "loras"
    loras.mkdir()
    run = subprocess.Popen([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample",
                            "--output", str(tmp_path / "a"), "--name", "twin", "--max-steps", "2", "--copy-to",
                            str(loras)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    printed = []
    for line in run.stdout:
        printed.append(line)
        if "| batch " in line:  # its summary, before its first step: the other run's copy lands now
            run.send_signal(signal.SIGSTOP)
            (loras / "twin.safetensors").write_bytes(b"the other run's")
            run.send_signal(signal.SIGCONT)
    assert run.wait(timeout=300) == 0, "".join(printed)
    said = " ".join("".join(printed).split())
    assert (loras / "twin.safetensors").read_bytes() == b"the other run's"
    assert f"warning: not copied to {loras / 'twin.safetensors'}: a LoRA not this run's was written there since " \
           "the run started" in said, said
    assert (tmp_path / "a" / "twin.safetensors").is_file() and not (loras / "twin.json").exists()
    # exit 0 (the LoRA it trained is whole), its end line saying what is missing to a script collecting LoRAs
    end = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["end"] == "finished" and end["missing"] == ["copy_to"] and "copied_to" not in end


def test_overwrite_moves_files_of_no_recorded_run_to_the_archive(tmp_path, capsys):
    """(Outside a LoRA folder, where --overwrite may archive: the earlier files of no run, under this run's names.)"""
    out = tmp_path / "loras"
    out.mkdir()
    (out / "mychar-e0001.safetensors").write_bytes(b"an earlier tool's")
    argv = ["train", "--model", "tiny", "--data", "sample", "--output", str(out), "--name", "mychar", "--max-steps",
            "1"]
    assert main(argv) == 2 and "of no lowvram run there" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert f"moved 1 file(s) of no recorded run to {out / ARCHIVE}/" in " ".join(capsys.readouterr().out.split())
    assert [path.read_bytes() for path in (out / ARCHIVE).rglob("*.safetensors")] == [b"an earlier tool's"]


def test_a_checkpoint_folder_given_for_a_lora_is_named_as_one(tmp_path, capsys):
    """info, generate and --network-weights offered the checkpoint's own files (ema.safetensors,
    optimizer.safetensors, ...) as the LoRA files to give."""
    train(run_config(output=str(tmp_path / "run"), max_steps=1))
    step = tmp_path / "run" / "checkpoints" / "step-000001"
    assert main(["info", str(step)]) == 2
    said = capsys.readouterr().err.strip()
    assert said.endswith(f"{step} is a folder; it is a checkpoint of the run in {tmp_path / 'run'} (train --resume "
                         "continues it); give a LoRA .safetensors file of the run"), said
    assert "optimizer.safetensors" not in said
