"""Sampling during training (grids at fixed seeds), metrics.jsonl and TensorBoard, and the presets."""

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_config
from PIL import Image
from safetensors.torch import load_file

from lowvram.cli import build_parser, main, train_values
from lowvram.configure import build_config, list_presets, preset_path, read_toml
from lowvram.errors import LowvramError, TrainingInterrupted
from lowvram.train.loop import train
from lowvram.train.runlog import RunLog


def offline_wandb(monkeypatch, folder: Path) -> None:
    """W&B as a run without its servers sees it: the run kept in files, for `wandb sync` (and these tests)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(folder / "wandb-config"))


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled")
    config = run_config(output=str(out), max_steps=4, sample_every="2", sample_prompts=[
                        "lvshape, a (red:1.3) circle BREAK [on blue] BREAK a BREAK b BREAK c BREAK d",  # 6 chunks
                        "lvshape, a blue square --n circle --w 96 --h 48 --s 3 --l 5 --d 9"], sample_steps=2,
                        tensorboard=True, validation_split=0.34, validate_every=2, sample_at_first=True,
                        wandb_project="lowvram-tests")
    with pytest.MonkeyPatch.context() as monkeypatch:
        offline_wandb(monkeypatch, tmp_path_factory.mktemp("wandb"))
        return config, train(config)


def test_sample_grids_are_written_every_n_steps_at_the_expected_size(sampled):
    config, result = sampled
    grids = sorted((config.output_dir / "samples").glob(f"{config.output_name}-step*.png"))
    # step 0: --sample-at-first, the base model alone
    assert [g.name for g in grids] == [f"{config.output_name}-step{step:08d}.png" for step in (0, 2, 4)]
    for grid in grids:  # side by side: 64 px (the tiny model's resolution) and the second prompt's 96 x 48
        assert Image.open(grid).size == (64 + 96, 64)
    assert [Image.open(path).size for path in result.samples] == [(64, 64), (96, 48)]  # one file per prompt
    # the last grid is the final LoRA's: each prompt's sample in its place, the rest of the shorter one black
    last = np.asarray(Image.open(grids[-1]).convert("RGB"))
    first, second = (np.asarray(Image.open(path).convert("RGB")) for path in result.samples)
    assert np.array_equal(last[:, :64], first) and np.array_equal(last[:48, 64:], second)
    assert not last[48:, 64:].any()


@pytest.mark.parametrize("ema", [False, True])
def test_the_last_steps_grid_is_put_together_from_the_final_samples_not_drawn_twice(tmp_path, monkeypatch, ema):
    """Its images are the final samples' (same weights, under EMA the same average, prompts, seeds): drawing both
    doubled the end's sampling (minutes at SDXL 1024). A disk that fills as the grid is written keeps the samples."""
    from lowvram.train import sampling

    drawn, real = [], sampling.render
    monkeypatch.setattr(sampling, "render", lambda *args, **kwargs: drawn.append(1) or real(*args, **kwargs))
    options = {"max_steps": 2, "sample_every": "1", "sample_prompts": ["lvshape"], "sample_steps": 2, "ema": ema}
    config = run_config(output=str(tmp_path), **options)
    result = train(config)
    assert len(drawn) == 2  # step 1's grid and the final sample
    grid = tmp_path / "samples" / f"{config.output_name}-step00000002.png"
    assert np.array_equal(np.asarray(Image.open(grid).convert("RGB")),
                          np.asarray(Image.open(result.samples[0]).convert("RGB")))
    if ema:
        return
    from lowvram.files import DiskFull
    from lowvram.train import loop

    def full(images, path):
        raise DiskFull(path.parent, 2**20, 0, path.name)

    monkeypatch.setattr(loop, "save_grid", full)
    again = train(run_config(output=str(tmp_path / "again"), **options))
    assert again.samples and again.samples[0].is_file()  # (they were dropped: "free space, then draw it again")
    assert not (tmp_path / "again" / "samples" / "again-step00000002.png").exists()


def test_each_sample_prompt_is_drawn_at_the_seed_plus_its_place(sampled):
    """As `generate --count` seeds its images: a prompt without its own --d draws at --seed plus its index."""
    import contextlib
    from types import SimpleNamespace

    import torch

    from lowvram.prompts import parse_prompt
    from lowvram.train.sampling import render_images

    _, result = sampled
    cpu = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)
    prompts = (parse_prompt("lvshape, a circle"), parse_prompt("lvshape, a square"))
    second = np.asarray(render_images(result.model, prompts, 64, 2, 11, cpu)[1])
    assert np.array_equal(second, np.asarray(render_images(result.model, prompts[1:], 64, 2, 12, cpu)[0]))
    assert not np.array_equal(second, np.asarray(render_images(result.model, prompts[1:], 64, 2, 11, cpu)[0]))


@pytest.mark.parametrize("flag", ["sample_every", "sample_at_first"])
def test_sampling_without_a_prompt_is_refused(flag):
    with pytest.raises(LowvramError, match=f"--{flag.replace('_', '-')}: no prompt to render; add --sample-prompt"):
        run_config(**{flag: "2" if flag == "sample_every" else True})


def test_a_onetrainer_samples_dashes_stay_words_of_its_prompt():
    """OneTrainer's prompts have no inline options: '--ar 16:9' in one, or '--w 12' in its negative, are words. They
    are carried over escaped (\\--), and read back as written."""
    from lowvram.prompts import SamplePrompt, onetrainer_sample, parse_prompt

    line = onetrainer_sample({"prompt": "--x start, a red circle --ar 16:9 photo --d 5 man",
                              "negative_prompt": "bad --w 12", "width": 512.0, "seed": 3, "random_seed": False})
    assert parse_prompt(line) == SamplePrompt("--x start, a red circle --ar 16:9 photo --d 5 man",
                                              negative="bad --w 12", width=512, seed=3, sampler="ddim")
    assert parse_prompt("a cat \\--ar 3:2 --w 64").text == "a cat --ar 3:2"  # a prompt file's own escape
    assert parse_prompt(onetrainer_sample({"prompt": "a \\--b"})).text == "a \\--b"  # an escape in it, read exact


def test_a_kohya_prompt_tables_fields_are_read_as_they_are(tmp_path):
    """kohya reads a .toml or .json prompt file's fields whole: '--ar 16:9' in a prompt is words, as in
    OneTrainer's; only a text file's lines take inline options."""
    from lowvram.prompts import parse_prompt, read_prompt_file

    (tmp_path / "prompts.toml").write_text('[[prompt.subset]]\nprompt = "a cat --ar 16:9"\n'
                                           'negative_prompt = "blurry --w 12"\nwidth = 64\n')
    [line], _ = read_prompt_file(tmp_path / "prompts.toml")
    prompt = parse_prompt(line)
    assert (prompt.text, prompt.negative, prompt.width) == ("a cat --ar 16:9", "blurry --w 12", 64)


def test_sample_prompts_take_kohyas_inline_options():
    from lowvram.prompts import SamplePrompt, parse_prompt

    assert parse_prompt("a cat, sitting --n blurry, lowres --W 512 --h 768 --s 28 --l 6.5 --d 7") == SamplePrompt(
        "a cat, sitting", negative="blurry, lowres", width=512, height=768, steps=28, guidance=6.5, seed=7)
    assert parse_prompt("a photo -- of a dog") == SamplePrompt("a photo -- of a dog")  # '--' alone is text
    # an option of ours left without its value at the end (a hand-edited file) is none, as kohya drops it: it was
    # the prompt's text; a word of another's stays text
    assert parse_prompt("ohwx_char, 1girl --n") == SamplePrompt("ohwx_char, 1girl")
    assert parse_prompt("a cat --w 512 --s") == SamplePrompt("a cat", width=512)
    assert parse_prompt("a cat --N") == SamplePrompt("a cat")  # (kohya reads its options in any case)
    assert parse_prompt("a photo --hdr") == SamplePrompt("a photo --hdr")
    assert parse_prompt("a cat --w 70 --h 519") == SamplePrompt("a cat", width=64, height=512)  # kohya rounds down
    for bad, named in (("a cat --x 3", "unknown option --x"), ("a cat --w 31", "--w (width) must be a whole number"),
                       ("a cat --s none", "--s (steps) must be a whole number from 1 to 1000"),
                       # a shared prompt file cannot ask for a sample no card holds, or for ever to draw it
                       ("a cat --w 16384", ("--w (width) must be a whole number from 32 to 4096 (rounded down to a "
                                            "multiple of 8)")),
                       ("a cat --s 100000000", "--s (steps) must be a whole number from 1 to 1000"),
                       # as generate refuses them, before any step rather than at the first sample
                       ("a cat --d 99999999999999999999999", "--d (seed) must be a whole number from 0 to 4294967295"),
                       ("a cat --l nan", "--l (guidance scale) must be a finite number"),
                       ("a cat --d -1", "--d -1 in 'a cat --d -1': a training sample keeps its seed"),
                       ("--n blurry", "no prompt")):
        with pytest.raises(LowvramError, match="--sample-prompt: ") as error:
            run_config(sample_prompts=[bad])
        assert named in str(error.value) and len(str(error.value).splitlines()) == 1


def test_generate_gives_the_final_samples_again_emphasis_and_break_read_alike(sampled, tmp_path):
    """Samples read prompts as generate does (AUTOMATIC1111's emphasis and BREAK, as kohya's samples read emphasis),
    each prompt encoded on its own, so that one of two chunks leaves the other prompt's one alone."""
    config, result = sampled
    for i, (prompt, sample) in enumerate(zip(config.output.sample_prompts, result.samples)):
        again = tmp_path / f"again-{i}.png"
        assert main(["generate", "--model", "tiny", "--lora", str(result.lora_path), "--prompt", prompt, "--steps",
                     "2", "--seed", str(config.training.seed + i), "--output", str(again)]) == 0
        difference = np.abs(np.asarray(Image.open(sample), dtype=np.int16) - np.asarray(Image.open(again),
                                                                                         dtype=np.int16))
        assert difference.max() <= 2, (prompt, difference.max())  # 8-bit rounding of the same image
        # and each says what made it as generate's image does: AUTOMATIC1111's parameters, which model sites read
        # (the LoRA's tag and addnet hash among them) and its "Send to txt2img" takes back
        assert Image.open(sample).text["parameters"] == Image.open(again).text["parameters"]
        assert f"<lora:{result.lora_path.stem}:1>" in Image.open(sample).text["parameters"]


def test_metrics_and_tensorboard_hold_every_step(sampled):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, result = sampled
    rows = [json.loads(line) for line in (config.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert rows[-1] == {"step": 4, "end": "finished", "lora": str(result.lora_path)}  # a script following it: over
    assert all({"lr", "grad_norm", "seconds", "loss_smoothed"} <= r.keys() for r in steps)
    events = EventAccumulator(str(config.output_dir / "logs"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("validation/loss")] == [2, 4]
    assert [e.step for e in events.Images("samples")] == [0, 2, 4]
    # the final LoRA's samples, drawn after the steps' log closed, beside the grids
    assert [(e.step, e.width, e.height) for tag in ("final_samples/00", "final_samples/01")
            for e in events.Images(tag)] == [(4, 64, 64), (4, 96, 48)]


def test_weights_and_biases_gets_every_step_the_validations_and_the_samples(sampled):
    config, _ = sampled
    records = [json.loads(line) for line in (config.output_dir / "metrics.jsonl").read_text().splitlines()]
    run_id = next(record["wandb_run_id"] for record in records if "wandb_run_id" in record)
    [path] = (config.output_dir / "logs" / "wandb").glob(f"offline-run-*/run-{run_id}.wandb")
    log, run = path.read_bytes(), path.parent  # what `wandb sync` sends
    for logged in (b"train/loss", b"train/lr", b"train/grad_norm", b"validation/loss", b"lowvram-tests",
                   config.output_name.encode(), b"rank"):  # the run's name and its recipe too
        assert logged in log, logged
    samples = sorted((run / "files" / "media" / "images").glob("samples_*.png"))
    assert [int(path.name.split("_")[1]) for path in samples] == [0, 2, 4]
    final = sorted((run / "files" / "media" / "images" / "final_samples").glob("*.png"))  # the LoRA's, at step 4
    assert [path.name.split("_")[:2] for path in final] == [["00", "4"], ["01", "4"]]


def test_each_epochs_mean_loss_is_logged_at_its_end_and_a_resumed_run_goes_on_with_its_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = run_config(output=str(tmp_path / "out"), tensorboard=True)
    config.output_dir.mkdir()
    with RunLog(config.output_dir, 0, config) as log:
        for step, loss, epoch, ends in ((1, 0.4, 0, False), (2, float("nan"), 0, False), (3, 0.2, 0, True),
                                        (4, 0.5, 1, False), (5, float("nan"), 1, False), (6, 0.9, 1, False)):
            log.step(step, {"loss": loss, "epoch": epoch}, ends_epoch=ends)
    with RunLog(config.output_dir, 5, config, open_epoch=1) as log:  # resumed from step 5's checkpoint, in epoch 1
        log.step(6, {"loss": 0.3, "epoch": 1}, ends_epoch=True)
    records = [json.loads(line) for line in (config.output_dir / "metrics.jsonl").read_text().splitlines()]
    # a skipped (nan) step leaves the mean alone; the resumed epoch's mean holds the steps logged before the stop
    assert [(r["step"], r["epoch"], r["epoch_loss"]) for r in records if "epoch_loss" in r] == [
        (3, 0, pytest.approx(0.3)), (6, 1, pytest.approx(0.4))]
    events = EventAccumulator(str(config.output_dir / "logs")).Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("epoch/loss")] == [(3, 0.3), (6, 0.4)]
    with RunLog(config.output_dir, 6, config) as log:  # resumed at an epoch's start (a log without epoch_loss lines,
        log.step(7, {"loss": 0.8, "epoch": 2}, ends_epoch=True)  # as an older run's): the new epoch's own steps
    records = [json.loads(line) for line in (config.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch_loss"]) for r in records if "epoch_loss" in r][-1] == (7, pytest.approx(0.8))


def test_a_path_with_brackets_is_said_whole_at_the_end(tmp_path, capsys):
    """rich read "[v2]" in a folder's name as markup and dropped it from the saved lines (and from the command to
    paste in the end's warnings)."""
    out = tmp_path / "run [v2]"
    result = train(run_config(output=str(out), max_steps=1, sample_every="1", sample_prompts=["lvshape"],
                              sample_steps=2))
    said = " ".join(capsys.readouterr().out.split())
    assert f"saved {result.lora_path}" in said and f"sample {result.samples[0]}" in said
    # the final samples' drawing said as it goes (minutes on a slow card, where a log showed the last step)
    assert said.index("drawing sample 1 of 1") < said.index(f"saved {result.lora_path}")
    assert f"side by side: {out / 'samples' / 'run [v2]-step00000001.png'}" in said


def test_the_final_samples_are_written_out_where_they_are_logged(tmp_path):
    """TensorBoard's writer thread says a full disk only when its events are written out: the final samples are
    written at once, where the run says a failure in one line, not at the log's close after it (a traceback)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = run_config(output=str(tmp_path / "out"), tensorboard=True)
    config.output_dir.mkdir()
    sample = tmp_path / "sample.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(sample)
    with RunLog(config.output_dir, 0, config) as log:
        log.final_samples(3, [sample])
        events = EventAccumulator(str(config.output_dir / "logs"), size_guidance={"images": 0}).Reload()
        assert [event.step for event in events.Images("final_samples/00")] == [3]


def test_a_resumed_run_logs_on_to_the_wandb_run_it_started_and_a_new_run_to_its_own(tmp_path, monkeypatch):
    offline_wandb(monkeypatch, tmp_path)
    config = run_config(output=str(tmp_path / "out"), wandb_project="lowvram-tests")
    config.output_dir.mkdir()

    def logged(resumed_step: int) -> None:
        with RunLog(config.output_dir, resumed_step, config) as log:
            log.step(resumed_step + 1, {"loss": 0.1, "epoch": 1})

    def run_ids() -> list[str]:
        logs = (config.output_dir / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
        return [log.stem.removeprefix("run-") for log in logs]

    logged(0)
    logged(1)  # --resume
    assert len(run_ids()) == 2 and len(set(run_ids())) == 1
    logged(0)  # --overwrite: a run of its own
    assert len(set(run_ids())) == 2


def test_a_run_stopped_by_ctrl_c_is_no_failed_wandb_run_and_a_file_where_the_logs_go_is_one_line(tmp_path,
                                                                                                    monkeypatch):
    offline_wandb(monkeypatch, tmp_path)
    config = run_config(output=str(tmp_path / "out"), wandb_project="lowvram-tests")
    config.output_dir.mkdir()
    with pytest.raises(TrainingInterrupted), RunLog(config.output_dir, 0, config) as log:
        log.step(1, {"loss": 0.1, "epoch": 1})
        raise TrainingInterrupted("interrupted at step 1: a checkpoint to resume from is saved")
    [debug] = (config.output_dir / "logs" / "wandb").glob("offline-run-*/logs/debug.log")
    assert "got exitcode: 0" in debug.read_text()  # W&B's "finished", not "failed"
    other = run_config(output=str(tmp_path / "other"), wandb_project="lowvram-tests")
    other.output_dir.mkdir()
    (other.output_dir / "logs").write_text("a file of the user's")
    with pytest.raises(LowvramError) as error, RunLog(other.output_dir, 0, other):
        pass
    assert str(error.value).startswith("--output: can't write in ") and (
        f"{other.output_dir / 'logs'} is a file, not a folder (the run's logs go there)" in str(error.value))
    assert str(error.value).count("\n") == 0


@pytest.mark.parametrize(("values", "expected"), [
    ({"wandb_run_name": "first"}, ("--wandb-run-name: names a run of a W&B project; add --wandb-project NAME, or drop "
                                  "it")),
    ({"wandb_project": "loras/sdxl"}, ("--wandb-project: 'loras/sdxl' is not a W&B project name (/ cannot be in one); "
                                      "pass another")),
    ({"wandb_project": " "}, "--wandb-project: ' ' is not a W&B project name (1 to 128 characters); pass another"),
])
def test_a_wandb_setting_it_would_refuse_is_one_line_before_the_model_loads(values, expected):
    with pytest.raises(LowvramError) as error:
        run_config(**values)
    assert str(error.value) == expected


def test_a_wandb_run_that_cannot_start_is_one_line_saying_how_to_log_in(tmp_path):
    """Not logged in, on a machine where W&B cannot ask (its first settings hold for the process: a fresh one)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env |= {"HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    a_run = ("from conftest import run_config\nfrom lowvram.train.runlog import RunLog\n"
             f"config = run_config(output={str(tmp_path / 'out')!r}, wandb_project='lowvram-tests')\n"
             "config.output_dir.mkdir()\nwith RunLog(config.output_dir, 0, config):\n    pass")
    done = subprocess.run([sys.executable, "-c", a_run], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parent, stdin=subprocess.DEVNULL, check=False)
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("lowvram.errors.LowvramError: --wandb-project: W&B did not start the run: No API key "
                            "configured. Use `wandb login` to log in. To log on this machine only, set "
                            "WANDB_MODE=offline"), done.stderr


def test_every_preset_is_a_valid_config():
    assert set(list_presets()) >= {"character", "style", "object"}
    for name in list_presets():
        values = read_toml(preset_path(name)) | {"model": "tiny", "data": "sample"}
        config = build_config(values)
        assert 8 <= config.network.rank <= 32 and config.optim.scheduler == "cosine"


def test_flags_and_config_files_override_a_preset(tmp_path):
    from lowvram.cli import build_parser

    config_file = tmp_path / "mine.toml"
    config_file.write_text('[model]\nmodel = "tiny"\n[network]\nrank = 12\n[data]\ndata = "sample"\n')
    args = build_parser().parse_args(["train", "--preset", "style", "--config", str(config_file), "--lr", "3e-4"])
    config = build_config(train_values(args))
    assert config.network.rank == 12  # config file over preset
    assert config.lr == 3e-4  # flag over preset
    assert config.network.alpha == 6 and config.data.flip  # the rest from the preset; its alpha/rank kept (16/32)
    assert config.optim.warmup_steps == 0.05  # a share of the run: a short one warms up too


def test_a_rank_of_your_own_keeps_the_presets_alpha_ratio_and_an_alpha_of_your_own_stays(capsys):
    from lowvram.cli import build_parser

    def network(*flags):
        args = build_parser().parse_args(["train", "--model", "tiny", "--data", "sample", "--preset", "style", *flags])
        return build_config(train_values(args)).network

    assert (network("--rank", "4").rank, network("--rank", "4").alpha) == (4, 2.0)
    assert "--rank 4: the preset's alpha follows it, alpha 2 (its 16 of rank 32)" in capsys.readouterr().err
    assert network("--rank", "4", "--alpha", "4").alpha == 4.0
    assert network().alpha == 16.0 and not capsys.readouterr().err


def test_a_presets_rate_yields_to_an_optimizer_that_finds_its_own_step_size(tmp_path, capsys):
    """--preset character --optimizer prodigy was refused "--lr: 0.0001 with prodigy ... (or leave it out)", a --lr
    never given; Adafactor's relative_step was told to drop the preset's --lr, --scheduler and --warmup-steps."""
    from lowvram.cli import build_parser

    def optim(*flags):
        args = build_parser().parse_args(["train", "--model", "tiny", "--data", "sample", "--preset", "character",
                                          *flags])
        return build_config(train_values(args)).optim

    assert optim("--optimizer", "prodigy").lr is None  # the optimizer's own 1.0
    assert "the preset's lr 0.0001 left out: prodigy finds its step size itself" in capsys.readouterr().err
    relative = optim("--optimizer", "adafactor", "--optimizer-arg", "relative_step=True")
    assert (relative.lr, relative.scheduler, relative.warmup_steps) == (None, "constant", 0.0)
    assert ("the preset's lr 0.0001, warmup_steps 0.05, scheduler cosine left out: adafactor with relative_step=True "
            "sets its own step sizes") in capsys.readouterr().err
    assert optim("--optimizer", "prodigy", "--lr", "0.5").lr == 0.5  # one given stays
    assert optim("--optimizer", "adamw8bit").lr == 1e-4 and "left out" not in capsys.readouterr().err
    # a preset of one's own with the text encoder's rate: Prodigy takes one rate for all (it said drop the flag)
    own = tmp_path / "mine.toml"
    own.write_text("[network]\ntrain_text_encoder = true\n[optim]\nlr = 1e-4\ntext_encoder_lr = 5e-5\n")
    args = build_parser().parse_args(["train", "--model", "tiny", "--data", "sample", "--preset", str(own),
                                      "--optimizer", "prodigy"])
    assert build_config(train_values(args)).optim.text_encoder_lr is None


def test_max_steps_given_replaces_a_presets_epochs():
    from lowvram.cli import build_parser

    args = build_parser().parse_args(["train", "--model", "tiny", "--preset", "character", "--data", "sample", "--max-steps", "7"])
    config = build_config(train_values(args))
    assert (config.training.max_steps, config.training.epochs) == (7, None)
    with pytest.raises(LowvramError, match="can't use both"):  # both on one layer is still a contradiction
        build_config(train_values(build_parser().parse_args(["train", "--data", "sample", "--max-steps", "7",
                                                             "--epochs", "2"])))


def test_an_unknown_preset_names_the_ones_there_are():
    with pytest.raises(LowvramError, match="presets are character, object, style"):
        preset_path("charcter")
    # OneTrainer's (its whole training config, which --config reads) and a JSON file's
    with pytest.raises(LowvramError, match=r"^--preset: '#sdxl 1.0 LoRA' is a OneTrainer preset: its file "
                                           r"\(OneTrainer's training_presets/#sdxl 1.0 LoRA.json\) goes to --config"):
        preset_path("#sdxl 1.0 LoRA")
    with pytest.raises(LowvramError, match=r"^--preset: 'mine.json' is a JSON config: it goes to --config"):
        preset_path("mine.json")
    # an empty one (an unset shell variable's) trained with no preset, unsaid
    with pytest.raises(LowvramError, match="--preset: no preset ''; presets are"):
        train_values(build_parser().parse_args(["train", "--preset", "", "--data", "sample"]))


def test_a_prompt_file_adds_its_prompts_and_its_problems_name_it(tmp_path):
    (tmp_path / "prompts.txt").write_text("# kohya's prompt file\nlvshape, a blue square --w 96 --ss euler_a\n\n")
    (tmp_path / "prompts.toml").write_text('[prompt]\nwidth = 64\n[[prompt.subset]]\nprompt = "a circle"\nseed = 3\n')
    config = run_config(output=str(tmp_path / "out"), max_steps=1, sample_prompts=["lvshape, a red circle"],
                        sample_prompt_file=str(tmp_path / "prompts.txt"), sample_steps=2)
    assert [(p.text, p.width, p.sampler) for p in config.samples] == [("lvshape, a red circle", None, None),
                                                                     ("lvshape, a blue square", 96, "euler_a")]
    result = train(config)
    assert [Image.open(path).size for path in result.samples] == [(64, 64), (96, 64)]
    only_file = run_config(sample_prompt_file=str(tmp_path / "prompts.toml"), sample_every="2")
    assert [(p.text, p.width, p.seed) for p in only_file.samples] == [("a circle", 64, 3)]
    # SimpleTuner's user prompt library: names and prompts ("not a JSON list of prompts")
    (tmp_path / "library.json").write_text('{"portrait": "ohwx, a portrait", "beach": "ohwx --at the beach"}')
    library = run_config(sample_prompt_file=str(tmp_path / "library.json"), sample_every="2")
    assert [p.text for p in library.samples] == ["ohwx, a portrait", "ohwx --at the beach"]
    # AUTOMATIC1111's generation data pasted in (PNG Info's lines): one prompt with its negative prompt and settings
    # (it was three prompts, its "Negative prompt:" and "Steps:" lines drawn as prompts), and a --sample-prompt of a
    # prompt and its negative prompt (drawn as one prompt's words)
    (tmp_path / "a1111.txt").write_text("ohwx, (red hair:1.2)\nNegative prompt: lowres, (worst quality:1.4)\n"
                                        "Steps: 4, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x96, Clip skip: "
                                        "2, Hires upscale: 2\n"
                                        "a blue square\nNegative prompt: blurry\n# Steps: 9, a comment\nSteps: 3, "
                                        "Seed: 2\na castle\nSteps: 3, a spiral staircase\n"  # (a prompt, not settings)
                                        # Civitai's: a JSON value, and fields past where a backtracking regex hung
                                        "ohwx, a dog\nSteps: 30, Sampler: Euler, Seed: 9, "
                                        + ", ".join(f'ADetailer k{i}: "a: 1, b: 2"' for i in range(40))
                                        + ', Hashes: {"vae": "x", "lora:y": "z"}, Version: v1.10.1\n'
                                        "a tower\nSteps: 20\nSteps: 2, style: watercolor\n")  # (no settings: prompts)
    pasted = run_config(sample_prompt_file=str(tmp_path / "a1111.txt"), sample_every="2",
                        sample_prompts=["ohwx, a cat\nNegative prompt: blurry, lowres"])
    assert [(p.text, p.negative, p.steps, p.seed, p.width, p.height, p.guidance, p.sampler) for p in pasted.samples] \
        == [("ohwx, a cat", "blurry, lowres", None, None, None, None, None, None),
            ("ohwx, (red hair:1.2)", "lowres, (worst quality:1.4)", 4, 5, 64, 96, 7.0, "euler_a"),
            ("a blue square", "blurry", 3, 2, None, None, None, None),
            ("a castle", "", None, None, None, None, None, None),
            ("Steps: 3, a spiral staircase", "", None, None, None, None, None, None),
            ("ohwx, a dog", "", 30, 9, None, None, None, "euler"),
            ("a tower", "", None, None, None, None, None, None), ("Steps: 20", "", None, None, None, None, None, None),
            ("Steps: 2, style: watercolor", "", None, None, None, None, None, None)]
    # what a training sample does not take is said (the run's --clip-skip draws it)
    from lowvram.config_checks import sample_prompt_notes

    ignored = ", ".join(["Hires upscale", *(f"ADetailer k{i}" for i in range(40)), "Hashes"])  # (clip skip: the run's)
    assert sample_prompt_notes(pasted) == [(f"--sample-prompt-file: a1111.txt's {ignored} left out: lowvram's samples "
                                           "do not take them, and are drawn without")]
    with pytest.raises(LowvramError) as alone:  # (drawn as a prompt of those words)
        run_config(sample_prompts=["Negative prompt: blurry, lowres"], sample_every="2")
    assert str(alone.value) == ("--sample-prompt: 'Negative prompt: blurry, lowres' is a negative prompt alone; give it "
                                "after its prompt: 'PROMPT --n NEGATIVE'")
    given = run_config(sample_prompts=["a cat\nNegative prompt: x\nSteps: 2, Seed: 1, Denoising strength: 0.5"],
                       sample_every="2")
    assert sample_prompt_notes(given) == [("--sample-prompt: AUTOMATIC1111's Denoising strength left out: no sample "
                                          "here uses them")]
    (tmp_path / "bad.txt").write_text("a cat --w 16\n")
    (tmp_path / "orphan.txt").write_text("a cat\nSteps: 2, Seed: 1\n\nNegative prompt: blurry\n")
    (tmp_path / "top.txt").write_text("# from PNG Info\nNegative prompt: blurry\na cat\n")
    (tmp_path / "twice.txt").write_text("a cat\nNegative prompt: blurry\nNegative prompt: dark\n")
    (tmp_path / "comments.txt").write_text("# prompts to come\n")
    (tmp_path / "off.json").write_text('[{"prompt": "a cat", "enabled": false}]')  # OneTrainer's samples.json
    for path, says in (("none.txt", "--sample-prompt-file: {} not found"),
                       ("bad.txt", "--sample-prompt-file: --w (width) must be a whole number from 32"),
                       ("orphan.txt", ("--sample-prompt-file: {}: line 4, 'Negative prompt: blurry', follows no prompt "
                                       "of its own; it goes between its prompt and that prompt's Steps: line")),
                       ("top.txt", ("--sample-prompt-file: {}: line 2, 'Negative prompt: blurry', follows no prompt "
                                    "of its own; put its prompt on the line above")),
                       ("twice.txt", ("--sample-prompt-file: {}: line 3, 'Negative prompt: dark', follows no prompt of "
                                      "its own; a prompt takes one")),
                       ("comments.txt", "--sample-prompt-file: {} holds no prompt"),
                       ("off.json", "--sample-prompt-file: {} holds no prompt")):
        with pytest.raises(LowvramError) as error:
            run_config(sample_prompt_file=str(tmp_path / path))
        assert str(error.value).startswith(says.format(tmp_path / path)) and len(str(error.value).splitlines()) == 1


def test_ctrl_c_while_the_ends_samples_render_says_the_lora_is_saved(tmp_path, monkeypatch):
    from lowvram.errors import TrainingInterrupted
    from lowvram.train import loop

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C lands in the sampler's loop

    base = train(run_config(output=str(tmp_path / "base"), max_steps=1)).lora_path
    monkeypatch.setattr(loop, "render_samples", pressed)
    said = "interrupted after the last step: .*run.safetensors is saved"
    with pytest.raises(TrainingInterrupted, match=said) as stop:
        train(run_config(output=str(tmp_path), name="run", max_steps=2, sample_prompts=["lvshape"],
                         model_family="tiny", base_weights=(f"{base}:0.5",)))
    assert load_file(str(tmp_path / "run.safetensors"))
    # the command that draws them as the run would: its model, family and base weights beside the LoRA, the prompt
    # (a bare --lora lacked the required --prompt, and drew on the tiny model without the base weights)
    assert (f"lowvram generate --model tiny --model-family tiny --lora {base}:0.5 --lora "
            f"{tmp_path / 'run.safetensors'} --prompt lvshape") in str(stop.value), stop.value


@pytest.mark.parametrize("when", ["in the last step", "while the LoRA is written"])
def test_ctrl_c_as_the_run_ends_lets_the_lora_and_checkpoint_be_written(tmp_path, monkeypatch, when):
    """The first Ctrl-C in the last step or during the final save (when one is most likely pressed) finishes the
    save, then stops: the run is never lost to it."""
    import os
    import signal

    from lowvram.errors import TrainingInterrupted
    from lowvram.train import checkpoint_folders, saving, step

    def ctrl_c_then(real):
        def call(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)
        return call

    if when == "in the last step":
        real_loss, calls = step.diffusion_loss, {"n": 0}

        def loss(*args, **kwargs):
            calls["n"] += 1
            return (ctrl_c_then(real_loss) if calls["n"] == 2 else real_loss)(*args, **kwargs)
        monkeypatch.setattr(step, "diffusion_loss", loss)
    else:
        monkeypatch.setattr(saving.lora_files, "save_kohya", ctrl_c_then(saving.lora_files.save_kohya))
    with pytest.raises(TrainingInterrupted, match="interrupted after the last step: .*run.safetensors is saved"):
        train(run_config(output=str(tmp_path), name="run", max_steps=2, sample_prompts=["lvshape"]))
    assert load_file(str(tmp_path / "run.safetensors"))
    assert checkpoint_folders.latest(tmp_path / "checkpoints").name == "step-000002"
    assert not (tmp_path / "samples").exists()


def test_a_presets_network_yields_to_the_network_weights_file(tmp_path, capsys):
    """--network-weights takes the file's network (kohya's dim_from_weights): a preset's rank, alpha and layers do
    not stand in its way, nor does the preset's alpha follow a --rank the user repeats from the file."""
    from lowvram.cli import build_parser
    from lowvram.train.loop import train

    lora = train(run_config(output=str(tmp_path / "first"), max_steps=1, rank=8, alpha=8.0, lora_layers="full",
                            conv_rank=2, conv_alpha=1.0)).lora_path

    def network(*flags):
        args = build_parser().parse_args(["train", "--model", "tiny", "--data", "sample", "--preset", "character",
                                          "--network-weights", str(lora), *flags])
        return build_config(train_values(args)).network

    taken = network()
    assert (taken.rank, taken.alpha, taken.lora_layers, taken.conv_rank) == (8, 8.0, "full", 2)
    assert network("--rank", "8").alpha == 8.0
    assert "the preset's alpha follows it" not in capsys.readouterr().err


def test_a_onetrainer_samples_file_is_read_with_onetrainers_keys(tmp_path):
    """Its steps, guidance, scheduler and seed as OneTrainer gives them, a disabled sample left out, a random seed
    left to the run's (the keys kohya's prompt files have none of)."""
    (tmp_path / "samples.json").write_text(json.dumps([
        {"enabled": True, "prompt": "lvshape, a red\ncircle", "negative_prompt": "blurry", "width": 64.0, "height": 96,
         "seed": 7.0, "random_seed": False, "diffusion_steps": 5, "cfg_scale": 3.5, "noise_scheduler": "EULER_A"},
        {"enabled": True, "prompt": "a square", "seed": 3, "random_seed": True, "diffusion_steps": 4},
        {"enabled": False, "prompt": "a triangle"}]))
    config = run_config(sample_prompt_file=str(tmp_path / "samples.json"))
    read = [(p.text, p.negative, p.width, p.height, p.steps, p.guidance, p.seed, p.sampler) for p in config.samples]
    assert read == [("lvshape, a red circle", "blurry", 64, 96, 5, 3.5, 7, "euler_a"),
                    ("a square", "", None, None, 4, None, None, "ddim")]  # DDIM: OneTrainer's default


def test_a_resumed_run_hides_the_steps_the_stopped_run_logged_past_its_checkpoint(tmp_path):
    """Steps 4 and 5, logged by a run killed after its step-3 checkpoint, are trained again on resume: TensorBoard
    shows each step once (it drew both, the curve jumping back from 5 to 4), as metrics.jsonl keeps it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = run_config(output=str(tmp_path / "out"), tensorboard=True)
    config.output_dir.mkdir()
    for resumed_step, steps in ((0, range(1, 6)), (3, range(4, 7))):
        # a resumed run starts seconds later: TensorBoard orders event files by their names, the start's second
        # first, then a count within the process (which sorts "10" before "9": a flake when both began in one
        # second of a test worker that had opened ten logs before)
        time.sleep(1.02 - time.time() % 1)
        with RunLog(config.output_dir, resumed_step, config) as log:
            for step in steps:
                log.step(step, {"loss": float(resumed_step + step), "epoch": 1})
    events = EventAccumulator(str(config.output_dir / "logs")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 7.0), (5, 8.0), (6, 9.0)]


def test_a_skipped_non_finite_step_leaves_the_average_loss_alone():
    """One NaN step, skipped, made the shown and logged average nan for the rest of the run (and its checkpoint)."""
    from rich.console import Console

    from lowvram.train.progress import TrainingProgress

    progress = TrainingProgress(Console(file=io.StringIO()), 10)
    losses = [progress.update(step, loss, 1e-4) for step, loss in enumerate((1.0, float("nan"), 0.5), 1)]
    assert losses == [1.0, 1.0, pytest.approx(0.95)]


def test_a_piped_progress_line_says_the_epoch_the_time_left_and_slow_steps_in_seconds(monkeypatch):
    """What a Colab or nohup log shows every ten seconds: kohya's epoch k/N, the time gone and left (the live bar's
    own column), and s/it where a step takes over a second, as tqdm switches."""
    from rich.console import Console

    from lowvram.train import progress as progress_module
    from lowvram.train.progress import TrainingProgress

    out, now = io.StringIO(), [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    progress = TrainingProgress(Console(file=out, width=200), 4, epochs=3)
    now[0] = 250.0
    progress.update(2, 1.0, 1e-4, epoch=1)
    now[0] = 500.0
    progress.update(4, 1.0, 1e-4, epoch=2)
    assert out.getvalue().splitlines() == [
        "step 2/4  epoch 2/3  loss 1.0000  lr 1.00e-04  125.00 s/it  0:04:10 elapsed",  # the pace timed from here
        "step 4/4  epoch 3/3  loss 1.0000  lr 1.00e-04  125.00 s/it  0:08:20 elapsed, 0:00:00 left"]
    out.truncate(0)
    out.seek(0)
    now[0] = 0.0
    sampled_first = TrainingProgress(Console(file=out, width=200), 4)  # --sample-at-first's grid: 200 s
    now[0] = 210.0
    sampled_first.update(1, 1.0, 1e-4, seconds=10.0)
    assert "  10.00 s/it  0:03:30 elapsed" in out.getvalue()  # the step's pace, not the grid's
    out.truncate(0)
    out.seek(0)
    now[0] = 0.0
    resumed = TrainingProgress(Console(file=out, width=200), 10, start_step=5)
    for step, at in ((6, 100.0), (7, 110.0), (8, 120.0)):  # the first step took 100 s (warm-up), the next 10 s each
        now[0] = at
        resumed.update(step, 1.0, 1e-4)
    assert [line.split("  ")[-1] for line in out.getvalue().splitlines()] == [
        "0:01:40 elapsed", "0:01:50 elapsed, 0:00:30 left", "0:02:00 elapsed, 0:00:20 left"]


def test_the_live_bar_keeps_the_step_count_and_time_left_at_any_width(monkeypatch):
    """At 80 columns on a GPU (the VRAM figures added), rich cut the step count and the time left to '…': the
    figures least needed are left out instead, and the bar takes what is left."""
    from rich.console import Console

    from lowvram.train import progress as progress_module
    from lowvram.train.progress import TrainingProgress

    monkeypatch.setattr(progress_module.torch.cuda, "is_available", lambda: True)  # (the VRAM figures, as on a GPU)
    monkeypatch.setattr(progress_module.torch.cuda, "memory_allocated", lambda: 3 * 2**30)
    monkeypatch.setattr(progress_module.torch.cuda, "max_memory_reserved", lambda: 4 * 2**30)
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    shown = {}
    for width in (40, 50, 80, 100, 120):
        now[0] = 0.0
        console = Console(file=io.StringIO(), width=width, color_system=None)
        progress = TrainingProgress(console, 4000, epochs=2)
        progress.live = True  # (as in a terminal: a StringIO is none)
        now[0] = 1234.0
        progress.update(1234, 1.1545, 1e-4, epoch=1)
        with console.capture() as drawn:  # the bar's line as its live display draws it
            console.print(progress.progress.make_tasks_table(progress.progress.tasks))
        line = drawn.get().rstrip("\n")
        assert line.startswith("step 1234/4000 ") and line.endswith(":--") and len(line) <= width, (width, line)
        shown[width] = line
    assert "loss 1.1545" in shown[50] and "VRAM" not in shown[50]
    assert "VRAM 3.00 GiB (peak 4.00)" in shown[100] and "lr 1.00e-04" not in shown[100]
    assert "epoch 2/2  loss 1.1545  lr 1.00e-04  1.00 it/s  VRAM 3.00 GiB (peak 4.00)" in shown[120]


def test_a_samples_decode_that_runs_out_of_memory_whole_is_done_in_tiles(monkeypatch):
    """SDXL's 1024 px decode in fp32 takes 3 GiB: where whole it runs out of memory, the sample is decoded in tiles
    (the plan counts them there) rather than skipped, and the VAE is left as it was, untiled, for the latents."""
    import torch

    from lowvram.models import load_model
    from lowvram.train.sampling import decode

    vae = load_model("tiny").vae
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = vae.decode(latents).sample
    real = type(vae).decode
    tiled_calls = []

    def short_of_memory(self, z, *args, **kwargs):  # as a card too small for the whole decode answers
        if not self.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory")
        tiled_calls.append(z.shape)
        return real(self, z, *args, **kwargs)

    monkeypatch.setattr(type(vae), "decode", short_of_memory)
    assert torch.allclose(decode(vae, latents, torch.device("cpu")), whole, atol=1e-5)
    assert tiled_calls == [latents.shape] and not vae.use_tiling


def test_kohyas_options_for_other_models_leave_the_sample_drawn_and_are_said(tmp_path, capsys):
    """kohya's prompt lists hold options for Flux, Lumina or a ControlNet (--g --rcfg --cn --am): kohya skips what
    it does not use, and so do the samples here, saying so, where an option nobody knows still stops the run; a
    prompt file's keys no sample uses are said, not dropped unsaid."""
    from lowvram.config_checks import sample_prompt_notes
    from lowvram.prompts import SamplePrompt, parse_prompt

    assert parse_prompt("a cat --g 3.5 --cn pose.png --l 5 --am 0.5,1") == SamplePrompt("a cat", guidance=5.0)
    (tmp_path / "prompts.txt").write_text("a dog --rcfg 1 --l 6\n")
    config = run_config(sample_prompts=["a cat --cn pose.png"], sample_prompt_file=str(tmp_path / "prompts.txt"))
    assert [(p.text, p.guidance) for p in config.samples] == [("a cat", None), ("a dog", 6.0)]
    assert sample_prompt_notes(config) == [
        ("sample prompts: kohya's --cn (ControlNet image), --rcfg (Lumina's CFG renormalisation) left out (for other "
        "models or tools, of no use to an SD1.5 or SDXL sample); the samples are drawn without them")]
    (tmp_path / "prompts.json").write_text('[{"prompt": "a dog", "guidance_scale": 3.5, "scale": 6}]')
    assert sample_prompt_notes(run_config(sample_prompt_file=str(tmp_path / "prompts.json"))) == [
        ("--sample-prompt-file: prompts.json's guidance_scale left out: lowvram's samples do not take them, and are "
        "drawn without")]
    # OneTrainer's samples.json: what it sets said (an inpainting sample's was called of no use), not every key at
    # its default (its file's version, a layer skip of 0)
    (tmp_path / "samples.json").write_text('[{"__version": 0, "enabled": true, "prompt": "a dog", "seed": 1, '
                                           '"text_encoder_1_layer_skip": 0, "sample_inpainting": true, '
                                           '"base_image_path": "", "diffusion_steps": 20}]')
    assert sample_prompt_notes(run_config(sample_prompt_file=str(tmp_path / "samples.json"))) == [
        ("--sample-prompt-file: samples.json's sample_inpainting left out: lowvram's samples do not take them, and are "
        "drawn without")]
    assert sample_prompt_notes(run_config(sample_prompts=["a cat --l 5"])) == []
    # said before the first heavy import: here, where a folder no run can write to stops it
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", "/proc/lowvram-out",
                 "--sample-prompt", "a cat --g 3.5"]) == 2
    assert "sample prompts: kohya's --g (Flux's guidance) left out" in capsys.readouterr().err


def test_ctrl_c_while_a_sample_grid_is_drawn_stops_after_that_step(tmp_path, monkeypatch):
    """A OneTrainer user's Ctrl-C during step 12's samples said 'stopping after this step', then trained step 13."""
    import os
    import signal

    from lowvram.errors import TrainingInterrupted
    from lowvram.train import saving

    real = saving.sample_grid

    def pressed_while_drawing(session, trainee, prepared, log, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(session, trainee, prepared, log, step)

    monkeypatch.setattr(saving, "sample_grid", pressed_while_drawing)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 2"):
        train(run_config(output=str(tmp_path), name="run", max_steps=4, sample_every="2", sample_prompts=["lvshape"],
                         sample_steps=1))
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2


def test_a_finished_run_resumed_keeps_its_samples_rather_than_drawing_them_again(tmp_path, capsys):
    """A script's `--resume auto` rerun of a finished config trained nothing, but drew every sample again (minutes
    of an SDXL GPU); a new prompt is drawn. A sample kept is said as kept (its line read as drawn anew)."""
    config = run_config(output=str(tmp_path), name="run", max_steps=2, sample_prompts=["lvshape"], resume="auto")
    first = train(config).samples[0]
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    again = train(config)
    assert again.samples == [first] and first.stat().st_mtime_ns == stamp
    said = " ".join(capsys.readouterr().out.split())
    assert f"sample {first} (drawn already, of this LoRA: kept)" in said and "drawing sample" not in said
    other = train(dataclasses.replace(config, output=dataclasses.replace(config.output, sample_prompts=("a circle",))))
    assert other.samples == [first] and first.stat().st_mtime_ns != stamp


def test_ctrl_c_at_a_save_point_does_not_write_its_lora_and_checkpoint_again(tmp_path, monkeypatch):
    """A Ctrl-C during step 2's save point (its LoRA, checkpoint and grid) wrote the step's LoRA and checkpoint a
    second time (a minute more of SDXL after the key was pressed)."""
    import os
    import signal

    from lowvram.errors import TrainingInterrupted
    from lowvram.train import saving

    real_grid, real_checkpoint, written = saving.sample_grid, saving.save_checkpoint, []

    def pressed_while_drawing(session, trainee, prepared, log, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_grid(session, trainee, prepared, log, step)

    def counted(session, trainee, dataset, position):
        written.append(position.step)
        return real_checkpoint(session, trainee, dataset, position)

    monkeypatch.setattr(saving, "sample_grid", pressed_while_drawing)
    monkeypatch.setattr(saving, "save_checkpoint", counted)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 2") as stopped:
        train(run_config(output=str(tmp_path), name="run", max_steps=4, sample_every="2", save_every="2",
                         checkpoint_every=2, sample_prompts=["lvshape"], sample_steps=1))
    assert written == [2] and "saved " + str(tmp_path / "run-step00000002.safetensors") in str(stopped.value)


def test_a_run_without_sample_prompts_makes_no_samples_folder(tmp_path):
    """(A script's collected runs each held an empty samples/.)"""
    train(run_config(output=str(tmp_path), max_steps=1))
    assert not (tmp_path / "samples").exists()
