"""The command line: every option documented, bad options get one line naming them, pickles are refused."""

import json
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowvram.cli import build_parser, main, train_values
from lowvram.config import fields_by_name
from lowvram.data.sample import write_sample_dataset


def help_text(*argv):
    return subprocess.run([sys.executable, "-m", "lowvram", *argv, "--help"], capture_output=True, text=True,
                          check=True).stdout


def test_top_level_help_lists_the_subcommands():
    text = help_text()
    assert "train" in text and "generate" in text


def test_train_help_describes_every_option():
    text = help_text("train")
    for name, (_, field, _) in fields_by_name().items():
        flag = field.metadata.get("flag") or "--" + name.replace("_", "-")
        assert flag in text, flag
        first_words = " ".join(field.metadata["help"].split()[:3])
        assert first_words in " ".join(text.split()), f"help of {flag} missing"


def test_generate_help_describes_every_option():
    parser = build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    for action in generate._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"
    assert "--lora" in help_text("generate")


def test_unknown_option_is_one_line_naming_it():
    result = subprocess.run([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample", "--lerning-rate", "1"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--lerning-rate" in lines[0]


def test_a_device_flag_is_answered_with_how_lowvram_picks_its_device(capsys):
    """A Mac user's --device mps (and the diffusers examples' --device) was 'unknown option --device' alone."""
    for argv in (["train", "--model", "tiny", "--data", "sample", "--device", "mps"], ["plan", "--device=cuda:1"],
                 ["generate", "--device", "mps"]):  # (generate: beside its missing --prompt)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("lowvram trains on a CUDA GPU where there is one, else on the CPU; "
                                               "CUDA_VISIBLE_DEVICES=1 picks another GPU; Apple's GPUs (mps) are not "
                                               "supported: a Mac trains on its CPU") in err, err


def test_num_repeats_is_named_as_a_kohya_dataset_files_word(capsys):
    """The kohya Colab notebooks' num_repeats (a kohya dataset file's key) was said to be ai-toolkit's name."""
    assert main(["train", "--model", "tiny", "--data", "sample", "--num_repeats", "10"]) == 2
    assert "--num_repeats is a kohya dataset file's and ai-toolkit's name; lowvram has none (a folder named N_name " \
           "trains its images N times" in capsys.readouterr().err


def test_a_profile_named_by_its_card_alone_is_pointed_at(capsys):
    """A kohya Colab notebook's 't4' got the list of all 21 profiles, without 'did you mean colab-t4'."""
    for typed, meant in (("t4", "colab-t4"), ("3060", "rtx-3060-12gb or rtx-3060-laptop-6gb"), ("rtx4090",
                                                                                               "rtx-4090-24gb")):
        assert main(["plan", "--model", "sd15", "--profile", typed]) == 2
        assert f"--profile: no profile '{typed}' (did you mean {meant}?); profiles are " in capsys.readouterr().err


def test_plan_says_where_the_default_length_is_a_short_run_for_a_real_model(tmp_path, capsys):
    """A folder of photos without repeats planned 10 epochs of 6 steps for SD1.5, unsaid: kohya's default is 1600."""
    from PIL import Image

    (tmp_path / "photos").mkdir()
    for n in range(6):
        Image.new("RGB", (64, 64), (40 * n, 30, 30)).save(tmp_path / "photos" / f"{n}.png")
    note = ("note: 60 steps is a short run for a real model (kohya's default is 1600): more repeats (an N_name "
            "folder's N: 10_ohwx trains its images 10 times an epoch), or --epochs or --max-steps, lengthen it")
    for argv, said in ((["--model", "sd15"], True), (["--model", "sd15", "--epochs", "10"], False),
                       (["--model", "tiny"], False)):
        assert main(["plan", *argv, "--data", str(tmp_path / "photos"), "--vram", "8GB"]) == 0
        assert (note in " ".join(capsys.readouterr().out.split())) is said


def test_a_dry_run_refuses_block_lists_the_models_blocks_do_not_match(tmp_path, capsys):
    """--dry-run printed the config of three values for SD1.5's 25 blocks and exited 0; the run refused it."""
    argv = ["train", "--model", "sd15", "--data", "sample", "--output", str(tmp_path / "out"), "--dry-run"]
    assert main([*argv, "--block-ranks", "4,4,4"]) == 2
    assert capsys.readouterr().err.strip() == ("lowvram train: error: --block-ranks: 3 values given; Stable Diffusion "
                                               "1.5 has 25 blocks (IN00, IN01, IN02, ..., OUT11): give one value for "
                                               "each")
    assert main([*argv, "--block-ranks", ",".join(["4"] * 25)]) == 0


def test_under_accelerate_launch_the_main_process_alone_tells_an_option_error_and_a_note(monkeypatch, capsys):
    """Every process of `accelerate launch` reads the same options: one copy of each line, not one per process."""
    argv = ["train", "--model", "tiny", "--data", "sample", "--preset", "style", "--rank", "4", "--lr", "-1"]
    for rank, world, heard in (("0", "2", True), ("1", "2", False), ("1", "1", True)):  # (RANK alone: no launch)
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert ("lowvram train: error: --lr: must be > 0" in err) is heard, err
        assert ("the preset's alpha follows it" in err) is heard, err


def test_misspelled_option_suggests_the_right_one(capsys):
    # (returned, not raised as argparse's SystemExit: the README's promise to a notebook, whose diffusers flag by
    # habit ended its cell)
    assert main(["train", "--model", "tiny", "--data", "sample", "--batch-siz", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean --batch-size?" in err
    assert (main(["--version"]), main([])) == (0, 2)


@pytest.mark.parametrize("typed, meant", [("--lerning-rate", "--lr"), ("--network-dimm", "--rank"),
                                          ("--max_step", "--max-steps"), ("--sampel-prompt", "--sample-prompt")])
def test_a_typo_of_a_flag_or_of_its_kohya_name_suggests_lowvrams_flag(capsys, typed, meant):
    assert main(["train", "--model", "tiny", "--data", "sample", typed, "1"]) == 2
    assert f"unknown option {typed} (did you mean {meant}?)" in capsys.readouterr().err


@pytest.mark.parametrize("typed", ["--quiet", "-q", "--log-file", "--json"])
def test_a_flag_to_quiet_or_log_a_run_says_how_a_run_is_logged(capsys, typed):
    """A notebook user's --quiet got nothing, --log-file 'did you mean --config?'."""
    assert main(["train", "--model", "tiny", "--data", "sample", typed]) == 2
    err = capsys.readouterr().err
    assert f"unknown option {typed} (train prints plain lines, no live bar, where its output is no terminal" in err
    assert "<output>/metrics.jsonl" in err and "did you mean" not in err


@pytest.mark.parametrize("command, typed, meant", [
    ("plan", "--host-ram", "--ram"), ("plan", "--ram-limit", "--ram"), ("plan", "--vram-limit", "--vram"),
    ("plan", "--max-vram", "--vram"), ("plan", "--lr-warmup", "--warmup-steps"), ("plan", "--min-lr", "--min-lr-ratio"),
    ("plan", "--data-validation", "--validation-data"), ("generate", "--prompt-negative", "--negative-prompt"),
    ("plan", "--data-dir", "--data"), ("plan", "--model-path", "--model"), ("plan", "--output-folder", "--output"),
    ("plan", "--te-lr", "--text-encoder-lr"), ("generate", "--out", "--output"), ("plan", "--cop", "--crop"),
    ("plan", "--sample-prompt-file-dir", "--sample-prompt-file"), ("plan", "--no-ma", "--no-ema")])
def test_a_flag_named_with_a_word_of_its_own_suggests_that_flag(capsys, command, typed, meant):
    """plan calls it host RAM: --host-ram got no suggestion, and --ram-limit got --flip; a flag whose words name
    another (--lr-warmup) keeps the closer spelling; words reordered are the flag. A flag with a word of a place
    added (--data-dir got --reg-data), abbreviated (--te-lr got --lr) or begun (generate's --out got --count)."""
    assert main([command, "--model", "sd15", "--prompt", "x", typed, "8GB"] if command == "generate" else
                [command, "--model", "sd15", typed, "8GB"]) == 2
    assert f"unknown option {typed} (did you mean {meant}?)" in capsys.readouterr().err


def test_no_sample_says_how_samples_are_left_out(capsys):
    """--no-sample got 'did you mean --no-compile?'."""
    assert main(["train", "--model", "tiny", "--data", "sample", "--no-sample"]) == 2
    assert "--no-sample (samples are drawn only of --sample-prompt or --sample-prompt-file's" in capsys.readouterr().err


def test_the_taggers_kohya_flags_name_what_caption_does_instead(capsys):
    """--caption_separator was answered 'did you mean --caption-extension?'."""
    for flag, says in (("--caption_separator", "tags are written joined by ', '"),
                       ("--tag_replacement", "replace a tag in the written captions yourself")):
        assert main(["caption", "data", flag, "x"]) == 2
        err = capsys.readouterr().err
        assert f"{flag} is from kohya's tag_images_by_wd14_tagger.py" in err and says in err, err


def test_a_negative_number_is_read_as_the_value_it_is(capsys):
    assert main(["train", "--model", "tiny", "--data", "sample", "--lr", "-1e-4"]) == 2
    assert capsys.readouterr().err.strip() == "lowvram train: error: --lr: must be > 0, got -0.0001"
    assert main(["plan", "--vram", "-4GB"]) == 2  # a size too (argparse took it for a flag: "expected one argument")
    assert capsys.readouterr().err.strip() == ("lowvram plan: error: --vram: '-4GB' is not a size; write e.g. 6GB or "
                                               "512MB")


def test_bucket_options_that_no_bucket_leaves_idle_are_named(capsys):
    args = build_parser().parse_args(["train", "--model", "tiny", "--data", "sample", "--no-bucket",
                                      "--bucket-step", "32", "--max-bucket-side", "256"])
    train_values(args)
    assert capsys.readouterr().err.strip() == ("--bucket-step, --max-bucket-side: no effect with --no-bucket, which "
                                               "crops every image square")
    train_values(build_parser().parse_args(["train", "--model", "tiny", "--data", "sample", "--bucket-step", "32"]))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("shown", [["--vram", "6GB", "--json"], ["--vram", "6GB"], ["--model", "sd15", "--profile",
                                                                                   "colab-t4"]])
def test_output_piped_into_a_reader_that_stops_early_ends_without_a_traceback(shown):
    """rich's tables exited 1 there (its own pipe handling): plan's "nothing fits" for a plan that fits."""
    process = subprocess.Popen([sys.executable, "-m", "lowvram", "plan", *shown],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # `| head -1` gone before the plan is written
    assert process.wait(timeout=120) == 141 and process.stderr.read() == b""  # (1 is plan's "nothing fits")
    process.stderr.close()


def test_bad_value_is_one_line_naming_the_option(capsys):
    assert main(["train", "--model", "tiny", "--data", "sample", "--rank", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lowvram train: error: --rank: must be > 0, got 0"]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_checkpoint_is_refused_unopened(tmp_path, capsys, sample_data):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(pickle.dumps({"state_dict": _Exploit(str(marker))}))
    assert main(["train", "--model", str(checkpoint), "--data", str(sample_data)]) == 2
    err = capsys.readouterr().err
    assert "model.ckpt is a pickle file" in err and "convert it once to safetensors" in err
    assert not marker.exists()

    from lowvram.errors import LowvramError
    from lowvram.models import load_model

    with pytest.raises(LowvramError, match="pickle"):
        load_model(str(checkpoint))
    assert not marker.exists()


def test_check_data_reports_and_writes_json(tmp_path, capsys):
    import json

    from messy_dataset import write_messy_dataset

    write_messy_dataset(tmp_path / "data")
    report_path = tmp_path / "report.json"
    assert main(["check-data", str(tmp_path / "data"), "--model", "tiny", "--report", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "truncated.jpg" in out and "usable" in out
    report = json.loads(report_path.read_text())
    records = {Path(r["path"]).name: r for r in report["records"]}
    assert not records["truncated.jpg"]["usable"] and "truncated" in records["truncated.jpg"]["reason"]
    assert report["summary"]["skipped"] == sum(not r["usable"] for r in records.values()) > 0
    assert report["summary"]["usable"] == sum(r["usable"] for r in records.values()) > 0
    assert report["summary"]["skipped_by_reason"].get("truncated", 0) >= 1


def test_check_data_checks_the_built_in_sample_dataset_train_takes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no folder named sample here: the built-in one
    assert main(["check-data", "sample", "--model", "tiny", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "6 of 6 images usable" in " ".join(capsys.readouterr().out.split())


def test_check_data_on_a_folder_with_nothing_usable_fails_naming_it(tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["check-data", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert f"no usable images in {tmp_path}" in captured.err
    assert "notes.png" in captured.out  # the per-file table still says why
    assert "1 skipped (listed above)" in captured.err  # not "see `lowvram check-data ...`", the command just run


def test_train_with_nothing_usable_names_the_check_data_command_that_scans_as_it_does(tmp_path, capsys):
    """The hint carries the run's dataset options: without --small-images skip, check-data finds the image usable."""
    import shlex

    from PIL import Image

    Image.new("RGB", (96, 96), "red").save(tmp_path / "small.png")
    assert main(["train", "--model", "tiny", "--model-family", "tiny", "--data", str(tmp_path), "--resolution", "128",
                 "--small-images", "skip", "--caption-prefix=-x", "--output", str(tmp_path.parent / "out"),
                 "--max-steps", "1"]) == 2  # (a value starting with - as argparse takes it: --flag=value)
    command = re.search(r"1 skipped \(see `(.+)`\)", capsys.readouterr().err)[1]
    assert shlex.split(command)[:2] == ["lowvram", "check-data"]
    assert main(shlex.split(command)[1:]) == 2
    assert "small.png" in capsys.readouterr().out
    assert main(["check-data", str(tmp_path), "--model", "tiny", "--resolution", "128"]) == 0  # the flags matter


def test_the_steps_time_at_the_end_leaves_out_the_final_samples(tmp_path, capsys, monkeypatch):
    """At a slow card's 20 steps a sample, the final samples took longer than a short run's steps: "trained to step
    4 in 0:01:45" where the steps took 17 s."""
    from lowvram.train import loop

    drawn = loop.render_samples

    def slow_samples(*args, **kwargs):  # (as a slow card draws them)
        time.sleep(6)
        return drawn(*args, **kwargs)

    monkeypatch.setattr(loop, "render_samples", slow_samples)
    assert main(["train", "--model", "tiny", "--data", "sample", "--max-steps", "1", "--sample-prompt", "lvshape",
                 "--sample-steps", "1", "--output", str(tmp_path / "out")]) == 0
    took = re.search(r"trained to step 1 in (\d+):(\d\d):(\d\d) \((\d+):(\d\d):(\d\d) in all, with loading, caching "
                     r"and the final samples\)", capsys.readouterr().out)
    steps, in_all = (int(took[at]) * 3600 + int(took[at + 1]) * 60 + int(took[at + 2]) for at in (1, 4))
    assert steps < 6 <= in_all, took[0]


def test_train_auto_without_a_gpu_says_so_and_trains(tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU message")
    assert main(["train", "--auto", "--model", "tiny", "--data", "sample", "--max-steps", "1", "--output", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "no CUDA GPU, so nothing to plan; training on the CPU in fp32" in out and "slower" not in out
    assert (tmp_path / f"{tmp_path.name}.safetensors").is_file()
    # a full-size model (sd15, known offline by its name; its download refused here): a CPU runtime by mistake is
    # warned of first, with --auto or without (only --auto said it)
    from lowvram.cli import auto_strategy
    from lowvram.configure import build_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for auto in ([], ["--auto"]):
        assert main(["train", *auto, "--model", "sd15", "--data", "sample", "--output", str(tmp_path / "sd")]) == 2
        said = " ".join("".join(capsys.readouterr()).split())
        assert said.count("a full-size model trains many times slower on the CPU than on a GPU (a Colab notebook "
                          "needs a GPU runtime") == 1, said
        from lowvram.hardware import no_gpu_reason

        assert f"warning: no CUDA GPU ({no_gpu_reason()}): a full-size" in said  # (its cause: a CPU-only PyTorch)
        assert said.index("no CUDA GPU (") < said.index("could not download")
    # the precision asked for is the one said (a T4's fp16 on a CPU runtime: only its refusal, not "in fp32" first)
    auto_strategy(build_config({"model": "tiny", "data": "sample", "mixed_precision": "bf16"}), {}, None)
    assert "training on the CPU in bf16" in capsys.readouterr().out
    auto_strategy(build_config({"model": "tiny", "data": "sample", "mixed_precision": "fp16"}), {}, None)
    assert "no CUDA GPU" not in capsys.readouterr().out
    # a card's budget, on a CPU: the plan of this command's model, data and host RAM (it said plan --vram alone)
    assert main(["train", "--auto", "--model", "tiny-sdxl", "--data", "sample", "--max-steps", "1", "--vram", "6GB",
                 "--ram", "8GB", "--output", str(tmp_path / "capped")]) == 0
    assert (f"(`lowvram plan --model tiny-sdxl --data sample --max-steps 1 --vram 6GB --ram 8GB --output "
            f"{tmp_path / 'capped'}` shows what it picks on such a card)") in capsys.readouterr().out
    # plan's --profile given to train: said whose it is and what answers it
    assert main(["train", "--auto", "--profile", "colab-t4", "--model", "tiny", "--data", "sample"]) == 2
    assert ("unknown option --profile (--profile is plan's: train --auto plans for the GPU present, --vram SIZE caps "
            "it; lowvram plan --profile NAME shows what it picks on that card)") in capsys.readouterr().err
    # the end says how long the steps took and where their figures are
    metrics = re.escape(str(tmp_path / "metrics.jsonl"))
    assert re.search(rf"trained to step 1 in 0:00:\d\d \(0:00:\d\d in all, with loading, caching\); each step's "
                     rf"figures are in {metrics}", out)  # (no sample prompts: none drawn)
    # and the host RAM it took, measured (a machine of little RAM has no other word of it)
    peak = float(re.search(r"peak host RAM (\d+\.\d\d) GiB \(resident, this process\)", out)[1])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["host_peak_bytes"] for r in records if "host_peak_bytes" in r]
    assert logged == [pytest.approx(peak * 2**30, abs=0.006 * 2**30)]


def test_plan_without_a_gpu_or_budget_plans_for_each_profile(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU plan")
    assert main(["plan", "--model", "sd15"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA GPU here, so the plan on each card lowvram has a profile of" in out and "colab-t4" in out


def test_check_data_reads_a_training_config_and_a_preset(tmp_path, sample_data):
    import json

    config = tmp_path / "run.toml"
    config.write_text('[model]\nmodel = "tiny"\n[data]\ncaption_template = "{trigger} shape"\nresolution = 96\n'
                      '[training]\nmax_steps = 7\n[optim]\nlr = 1e-3\n')
    report = tmp_path / "report.json"
    assert main(["check-data", str(sample_data), "--config", str(config), "--preset", "style",
                 "--report", str(report)]) == 0
    records = json.loads(report.read_text())["records"]
    areas = [r["bucket"][0] * r["bucket"][1] for r in records]
    assert records and all(0.8 * 96 * 96 <= a <= 1.2 * 96 * 96 for a in areas)  # the config's 96 px, not tiny's 64
    with_data = tmp_path / "with-data.toml"  # its dataset too: "the dataset is required" it said
    with_data.write_text(config.read_text().replace("[data]\n", f"[data]\ndata = '{sample_data}'\n"))
    assert main(["check-data", "--config", str(with_data), "--report", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["records"] == json.loads(report.read_text())["records"]
    assert main(["check-data", "--config", str(config)]) == 2


def test_a_value_error_names_the_flag_the_user_types(tmp_path):
    """--sample-prompt is the flag of the field sample_prompts: errors name the flag, not the field."""
    from lowvram.configure import build_config
    from lowvram.errors import LowvramError

    with pytest.raises(LowvramError) as err:
        build_config({"model": "tiny", "data": "sample", "sample_prompts": 5})
    assert str(err.value).startswith("--sample-prompt: 5 is invalid")


def test_generate_with_a_corrupt_lora_says_so_in_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    code = main(["generate", "--model", "tiny", "--prompt", "x", "--steps", "1", "--lora", str(bad),
                 "--output", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--lora:" in err[0] and "not a readable .safetensors file" in err[0]


def test_option_errors_come_before_any_heavy_import():
    """Every option error of `train` is reported before torch, diffusers or peft are imported (they take seconds
    to tens of seconds on a busy machine); tools/bench_cli_latency.py measures the time."""
    code = ("import sys; from lowvram.cli import main; "
            "code = main(['train', '--model', 'tiny', '--data', 'sample', '--rank', '0', '--background', 'purple']); "
            "heavy = [m for m in ('torch', 'diffusers', 'peft', 'transformers') if m in sys.modules]; "
            "print(code, heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
    assert "--rank: must be > 0" in done.stderr and "--background: 'purple' is not a colour" in done.stderr


def test_a_dry_run_makes_the_checks_of_the_models_family_the_run_makes(capsys):
    """--text-encoder-2-lr on an SD1.5 model: plan and the run refused it, --dry-run printed the options."""
    argv = ["train", "--model", "tiny", "--data", "sample", "--train-text-encoder", "--text-encoder-2-lr", "1e-5",
            "--dry-run"]
    assert main(argv) == 2
    assert "--text-encoder-2-lr: tiny SD (random weights) has one text encoder" in capsys.readouterr().err
    # (not the machine's: fp16 on a machine without a GPU, and a hub id offline, are the run's to check)
    argv = ["train", "--model", "tiny", "--data", "sample", "--mixed-precision", "fp16", "--dry-run"]
    assert main(argv) == 0 and 'mixed_precision = "fp16"' in capsys.readouterr().out


def test_a_vram_budget_that_is_no_size_is_refused_on_a_machine_without_a_gpu_too(tmp_path, capsys):
    """--auto plans nothing without a GPU, so the budget was never read and the run went on."""
    argv = ["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "run"), "--auto",
            "--vram", "lots", "--max-steps", "1"]
    assert main(argv) == 2
    assert "--vram: 'lots' is not a size; write e.g. 6GB or 512MB" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_main_called_from_python_takes_numbers_and_paths_as_words(tmp_path, capsys):
    """A notebook's `main(["plan", ..., "--rank", 8])` or a Path reads as the shell's words would (argparse took
    only strings: a TypeError deep in it)."""
    assert main(["plan", "--model", "sd15", "--vram", 6.5, "--rank", 8, "--resolution", 512, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rank"] == 8
    assert main(["check-data", Path(write_sample_dataset(tmp_path / "data")), "--model", "tiny"]) == 0


def test_a_command_leaves_the_libraries_logging_as_it_found_them(tmp_path):
    """In a notebook, the user's own diffusers pipelines keep their progress bars and warnings after a lowvram
    command (which quiets diffusers and transformers while it runs)."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_warning()
    diffusers_logging.enable_progress_bar()
    transformers_logging.set_verbosity_info()
    filters = list(warnings.filters)
    try:
        (tmp_path / "images").mkdir()
        assert main(["caption", str(tmp_path / "images")]) == 2  # (quiet from its start: a model to load)
        assert diffusers_logging.get_verbosity() == diffusers_logging.WARNING
        assert diffusers_logging.is_progress_bar_enabled()
        assert transformers_logging.get_verbosity() == transformers_logging.INFO
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("default")
            warnings.warn("the user's own", FutureWarning, stacklevel=1)
        assert [str(w.message) for w in shown] == ["the user's own"]
        assert warnings.filters == filters
    finally:
        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()


HOST_RAM_RUNS_OUT = """
import resource, sys
import torch
import lowvram.generate, lowvram.models  # loaded before the limit: what runs out is the command's own memory
from lowvram.cli import main

size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize"))
limit = size + 800 * 2**20  # a 4096 px decode on the tiny model takes 1 GiB tensors
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(["generate", "--model", "tiny", "--prompt", "a cat --w 4096 --h 4096", "--steps", "1",
               "--output", sys.argv[1]]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the address-space limit and /proc are Linux's")
def test_host_ram_running_out_is_said_in_a_line_with_what_to_do(tmp_path):
    """PyTorch's "DefaultCPUAllocator: can't allocate memory" (Windows: "not enough memory") was a traceback."""
    from lowvram.errors import host_memory_ran_out

    done = subprocess.run([sys.executable, "-c", HOST_RAM_RUNS_OUT, str(tmp_path / "big.png")], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert re.fullmatch(r"lowvram generate: error: host RAM ran out \(can't allocate memory: you tried to allocate "
                        r"\d+ bytes.*\): close other programs or add swap\n", done.stderr), done.stderr[-2000:]
    assert not (tmp_path / "big.png").exists()
    with pytest.raises(MemoryError) as caught:
        bytearray(2**62)
    assert host_memory_ran_out(caught.value).startswith("host RAM ran out (MemoryError): ")
    assert "lowvram plan` shows the host RAM each phase needs" in host_memory_ran_out(caught.value, "train")
    assert host_memory_ran_out(RuntimeError("shapes do not match")) is None


def test_a_run_whose_output_reader_goes_away_trains_to_its_end(tmp_path):
    """`lowvram train ... | head -2`: the first print after the reader left raised BrokenPipeError, and the run
    ended at once with exit 1, no word, no checkpoint and no LoRA."""
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample",
                            "--output", str(out), "--max-steps", "6", "--cache-dir", str(tmp_path / "cache")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.stdout.readline()
    run.stdout.close()  # the reader goes away, as head's does
    err = run.stderr.read()
    assert run.wait(timeout=600) == 0, err[-2000:]
    assert "the output's reader has gone; training goes on without printing" in err
    assert (out / "out.safetensors").is_file()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="Linux's always-full device")
def test_a_run_whose_log_files_disk_is_full_trains_to_its_end(tmp_path):
    """`nohup lowvram train ... > ~/run.log` over a lab's quota: the first print raised ENOSPC, a traceback, exit 1,
    mid-run; and `plan --json > file` on a full disk was a traceback too."""
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample",
                               "--output", str(out), "--max-steps", "2", "--cache-dir", str(tmp_path / "cache")],
                              stdout=full, stderr=subprocess.PIPE, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stderr.startswith("lowvram train: the output cannot be written (No space left on device: free "
                                      "space on the disk of the file it goes to); training goes on without printing "
                                      "(each step's figures")
        assert (out / "out.safetensors").is_file()
        assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["end"] == "finished"
        done = subprocess.run([sys.executable, "-m", "lowvram", "plan", "--json", "--vram", "12GB"], stdout=full,
                              stderr=subprocess.PIPE, text=True, check=False)
        assert (done.returncode, done.stderr) == (2, ("lowvram plan: error: its output cannot be written (No space "
                                                     "left on device): free space on the disk of the file it goes "
                                                     "to\n"))
        # the error output's file full (`2> err.log`), from the run's first note (a kohya config's): it trains, said on
        # stdout (it ended with exit 2 and no word anywhere)
        (tmp_path / "kohya.toml").write_text('pretrained_model_name_or_path = "tiny"\nmax_train_steps = 2\n')
        done = subprocess.run([sys.executable, "-m", "lowvram", "train", "--config", str(tmp_path / "kohya.toml"),
                               "--data", "sample", "--output", str(tmp_path / "k"), "--cache-dir",
                               str(tmp_path / "cache")], stdout=subprocess.PIPE, stderr=full, text=True, check=False)
        assert done.returncode == 0 and (tmp_path / "k" / "k.safetensors").is_file(), done.stdout[-2000:]
        assert done.stdout.startswith("lowvram train: the error output cannot be written (No space left on device: "
                                      "free space on the disk of the file it goes to); lowvram goes on without it")
        # a refusal there is said on stdout (it was lost, and the notice said "training goes on"); a dry run's
        # options that cannot be written are a failure (exit 0 read as the options written)
        done = subprocess.run([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample",
                               "--output", str(tmp_path / "v"), "--vram", "8GB"], stdout=subprocess.PIPE, stderr=full,
                              text=True, check=False)
        assert done.returncode == 2 and "lowvram train: error: --vram: only used with --auto" in done.stdout
        done = subprocess.run([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample",
                               "--output", str(tmp_path / "d"), "--dry-run"], stdout=full, stderr=subprocess.PIPE,
                              text=True, check=False, env={**os.environ, "PYTHONUNBUFFERED": ""})
    assert (done.returncode, done.stderr) == (2, ("lowvram train: error: its output cannot be written (No space "
                                                 "left on device): free space on the disk of the file it goes to\n"))
    import resource  # a file-size limit is no full disk: freeing space would not lift it

    with open(tmp_path / "plan.json", "w") as limited:
        done = subprocess.run([sys.executable, "-m", "lowvram", "plan", "--json", "--vram", "12GB"], stdout=limited,
                              stderr=subprocess.PIPE, text=True, check=False,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)))
    assert (done.returncode, done.stderr) == (2, ("lowvram plan: error: its output cannot be written (File too "
                                                 "large): raise the file-size limit (ulimit -f unlimited) or write it "
                                                 "elsewhere\n"))


def test_a_run_whose_one_pipe_for_both_outputs_loses_its_reader_trains_to_its_end(tmp_path):
    """`2>&1 | head`: the notice that the reader left went to the same broken pipe, which ended the run all the same;
    and a process without a stdout at all (pythonw) trains too."""
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample",
                            "--output", str(out), "--max-steps", "4", "--cache-dir", str(tmp_path / "cache")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run.stdout.readline()
    run.stdout.close()
    assert run.wait(timeout=600) == 0
    assert (out / "out.safetensors").is_file()
    argv = ["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "w"), "--max-steps", "1",
            "--cache-dir", str(tmp_path / "cache")]
    windowless = f"import sys; sys.stdout = None; from lowvram.cli import main; sys.exit(main({argv!r}))"
    done = subprocess.run([sys.executable, "-c", windowless], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "w" / "w.safetensors").is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux keeps a parent's ru_maxrss across exec")
def test_the_peak_host_ram_a_run_reports_is_its_own_not_its_parents(tmp_path):
    """A run the web UI or accelerate started reported the parent's peak as its own (ru_maxrss survives exec)."""
    held = b"\1" * (1536 * 2**20)  # the parent's 1.5 GiB, resident
    probe = "from lowvram.memory import host_peak_bytes; print(host_peak_bytes())"
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert len(held) and int(child.stdout) < 1024 * 2**20


def test_a_runs_last_line_is_written_whole_through_a_sigterm_and_the_signals_come_back(monkeypatch, capsys):
    """accelerate launch's SIGTERM to a process already ending (another process lost) broke its last line off:
    "lowvram: interrupted" alone. A signal while it is written is held; the handlers are the caller's again after."""
    import signal

    from lowvram import cli

    def kept(config, started):  # the line's slow part (a checkpoint folder read under load), a SIGTERM meanwhile
        os.kill(os.getpid(), signal.SIGTERM)
        return "; kept: checkpoint step-000001"

    monkeypatch.setattr(cli, "_kept_on_interrupt", kept)
    monkeypatch.setattr(cli, "build_config", lambda values: (_ for _ in ()).throw(KeyboardInterrupt))
    before = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        try:
            code = main(["train", "--model", "tiny", "--data", "sample"])
        except KeyboardInterrupt:  # (a failure of this test, not an end of the test run)
            pytest.fail("the SIGTERM broke the last line off")
        assert code == 130
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)
    assert "lowvram train: interrupted; kept: checkpoint step-000001" in capsys.readouterr().err


def test_main_from_python_takes_paths_and_numbers_and_returns_the_exit_code(tmp_path, capsys):
    """The README's notebook use: main([...]) with a pathlib.Path and ints, as a cell writes them; an error is
    its return value and one printed line, never an exception."""
    from pathlib import Path

    from lowvram.data.sample import write_sample_dataset

    data = write_sample_dataset(tmp_path / "data")
    assert main(["train", "--model", "tiny", "--data", Path(data), "--output", tmp_path / "out", "--max-steps", 1,
                 "--rank", 4]) == 0
    assert (tmp_path / "out" / "out.safetensors").is_file()
    assert main(["train", "--model", "tiny", "--data", tmp_path / "missing", "--max-steps", 1]) == 2
    assert "--data: folder not found" in capsys.readouterr().err


def test_train_dry_run_prints_the_options_it_would_train_with_and_trains_nothing(tmp_path, capsys):
    """A kohya_ss user comparing what lowvram will do with what kohya would, before an hour of GPU: the resolved
    options (a kohya config's read as lowvram reads it) were only in <output>/<name>.toml once training began."""
    import tomllib

    config = tmp_path / "kohya.toml"
    config.write_text('pretrained_model_name_or_path = "tiny"\ntrain_data_dir = "sample"\nnetwork_dim = 12\n'
                      f'output_dir = "{tmp_path / "out"}"\nmax_train_steps = 3\n')
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# lowvram train --dry-run: the options this run trains with; nothing trained")
    options = tomllib.loads(out.split("\n", 1)[1])
    assert (options["network"]["rank"], options["training"]["max_steps"], options["model"]["model"]) == (12, 3, "tiny")
    assert options["output"]["output"] == str(tmp_path / "out")  # (the .toml's ".", its own folder, said nothing)
    assert not (tmp_path / "out").exists()


def test_train_dry_run_shows_what_the_dataset_file_sets(tmp_path, capsys):
    """A OneTrainer user's concepts flip, crop and shuffle their tags; the run's .toml leaves those to the file,
    and --dry-run, which prints it, showed none of them: as if they were not carried over."""
    import tomllib
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "a.png")
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps([{"name": "c", "path": str(images), "repeats": 2,
                                     "image": {"enable_random_flip": True},
                                     "text": {"enable_tag_shuffling": True, "keep_tags_count": 2}}]))
    assert main(["train", "--model", "tiny", "--data", str(concepts), "--output", str(tmp_path / "out"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    run_options, from_file = out.split(f"\n# and what {concepts} sets, read from it at each start")
    assert "flip" not in tomllib.loads(run_options.split("\n", 1)[1])["data"]
    from_file = from_file.split("\n", 1)[1]
    settled = tomllib.loads("\n".join(line[2:] for line in from_file.splitlines() if line.startswith("# [")
                                      or " = " in line.split(":")[0]))
    assert {key: settled["data"][key] for key in ("flip", "shuffle_tags", "keep_tokens")} == {
        "flip": True, "shuffle_tags": True, "keep_tokens": 2}
    assert from_file.rstrip().endswith(f"# {images}: 2 repeats")
    # a kohya file of two datasets: what the second trains otherwise is shown, one left at lowvram's default too (a
    # setting of None: it raised, TOML has no null)
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (64, 64)).save(other / "b.png")
    kohya = tmp_path / "dataset.toml"
    kohya.write_text(f'[[datasets]]\nresolution = 64\nbatch_size = 1\n[[datasets.subsets]]\nimage_dir = "{images}"\n'
                     'caption_dropout_every_n_epochs = 3\n[[datasets]]\nresolution = 128\nbatch_size = 2\n'
                     f'[[datasets.subsets]]\nimage_dir = "{other}"\nnum_repeats = 3\ncaption_prefix = "photo, "\n'
                     'class_tokens = "ohwx woman"\ncaption_dropout_every_n_epochs = 0\n')  # (kohya's 0: none)
    assert main(["train", "--model", "tiny", "--data", str(kohya), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        f'# {other}: 3 repeats, resolution 128, batch 2, caption_prefix "photo, ", images without a caption file '
        "captioned \"ohwx woman\", caption_dropout_every = lowvram's default")


def test_a_config_naming_folders_that_moved_says_to_give_them_beside_it(tmp_path, capsys):
    """A rented machine's volume mounted elsewhere: the run's .toml names the old paths, and `--config run.toml
    --resume auto` said only "folder not found", though --data beside --config resumes it (taken as moved)."""
    config = tmp_path / "run.toml"
    config.write_text(f'[model]\nmodel = "tiny"\n[data]\ndata = "{(tmp_path / "old" / "ds").as_posix()}"\n')
    assert main(["train", "--config", str(config), "--resume", "auto"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"({config} names it: where the run's folders moved, give --data beside --config)")
    assert main(["train", "--config", str(config), "--data", str(tmp_path / "typed")]) == 2
    err = capsys.readouterr().err.strip()  # (one typed: its own mistake)
    assert err.startswith(f"lowvram train: error: --data: folder not found: {tmp_path / 'typed'}") and "beside" not in err
