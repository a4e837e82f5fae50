"""Reliability: an interrupted and resumed run ends with exactly the LoRA of an uninterrupted one; a kill
mid-save, a NaN or a full disk never costs what was already saved."""

import json
import math
import os
import re
import shlex
import shutil
import signal
import sys
import time

import pytest
import tomli_w
import torch
from conftest import run_config
from preloaded import Run, run
from safetensors.torch import load_file, save_file

from lowvram.cli import main
from lowvram.errors import LowvramError, TrainingDiverged
from lowvram.lora_header import read_header
from lowvram.lora_metadata import RECIPE_KEY
from lowvram.train import checkpoint, checkpoint_folders
from lowvram.train.loop import train
from lowvram.train.step import MAX_BAD_STEPS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STEPS = 16


def cli(out, *extra):
    return [sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample", "--output", str(out), "--max-steps",
            str(STEPS), "--rank", "4", "--lr", "1e-3", "--flip", *extra]


def assert_same_lora(a, b):
    first, second = load_file(str(a)), load_file(str(b))
    assert set(first) == set(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.slow
def test_sigint_then_resume_gives_the_uninterrupted_lora(tmp_path):
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "cache")}
    whole = tmp_path / "whole"
    assert run(cli(whole, "--batch-size", "4"), env).returncode == 0

    cut = tmp_path / "my drive" / "cut"  # a space, as in Colab's /content/drive/MyDrive/...: the line quotes it
    proc = Run(cli(cut, "--batch-size", "4"), env)
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.startswith("lowvram train: interrupted at step") and "--resume auto" in err  # asked for: no error
    assert len(err.strip().splitlines()) == 1  # one clear line
    stopped_at = sum('"loss"' in line for line in metrics.read_text().splitlines())
    assert stopped_at < STEPS
    # the end line names what the stop saved, as its message does (a script read no LoRA there)
    assert json.loads(metrics.read_text().splitlines()[-1]) == {
        "step": stopped_at, "end": "interrupted", "lora": str(cut / f"cut-step{stopped_at:08d}.safetensors"),
        "checkpoint": str(cut / "checkpoints" / f"step-{stopped_at:06d}"),
        "continue": err.strip().split("continue with: ")[1]}
    assert checkpoint_folders.latest(cut / "checkpoints").name == f"step-{stopped_at:06d}"
    assert (cut / f"cut-step{stopped_at:08d}.safetensors").is_file()  # a usable LoRA right away

    command = shlex.split(err.split("continue with: ", 1)[1])  # pasted as printed
    assert command == ["lowvram", "train", "--config", str(cut / "cut.toml"), "--resume", "auto"], err
    resumed = run([sys.executable, "-m", "lowvram", *command[1:]], env)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_lora(whole / "whole.safetensors", cut / "cut.safetensors")

    def logged(folder, key):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(record["step"], record[key]) for record in records if key in record]

    assert [step for step, _ in logged(cut, "loss")] == list(range(1, STEPS + 1))
    assert [record for _, record in logged(cut, "end")] == ["finished"]  # (the stop's line went with the resume)
    # the running mean goes on where it was, as the weights do; and the epoch it resumed inside ends with the mean
    # of all its steps, those before the stop too (8 batches of 4 an epoch: steps 8 and 16 end one)
    assert logged(cut, "loss_smoothed") == logged(whole, "loss_smoothed")
    assert [step for step, _ in logged(cut, "epoch_loss")] == [8, 16]
    assert logged(cut, "epoch_loss") == logged(whole, "epoch_loss")


@pytest.mark.slow
def test_a_timed_checkpoint_keeps_a_run_killed_without_warning(tmp_path):
    """`!lowvram train` stopped in a notebook (IPython kills the command half a second after its Ctrl-C), a lost
    connection: without --checkpoint-every the only checkpoint came at the end, and the whole run was lost. One
    every --checkpoint-minutes keeps it (here a fraction of a second; 30 minutes by default, so none here)."""
    env = {**os.environ, "LOWVRAM_CACHE_DIR": str(tmp_path / "cache")}
    whole = tmp_path / "whole"
    assert run(cli(whole), env).returncode == 0
    assert [folder.name for folder in (whole / "checkpoints").iterdir()] == [f"step-{STEPS:06d}"]
    cut = tmp_path / "cut"
    proc = Run(cli(cut, "--checkpoint-minutes", "0.001", "--keep-checkpoints", "1"), env)
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint_folders.latest(cut / "checkpoints"):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    kept = checkpoint_folders.latest(cut / "checkpoints")
    assert kept is not None and int(kept.name.split("-")[1]) < STEPS and not (cut / "cut.safetensors").exists()
    resumed = run(cli(cut, "--checkpoint-minutes", "0.001", "--resume", "auto"), env)
    assert resumed.returncode == 0 and f"resumed from {kept}" in " ".join(resumed.stdout.split()), resumed.stderr
    assert_same_lora(whole / "whole.safetensors", cut / "cut.safetensors")


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    result = train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=2))
    root = tmp_path / "checkpoints"
    assert checkpoint_folders.latest(root).name == "step-000004"
    (root / ".step-zzz").mkdir()  # what a kill -9 mid-write leaves: a temporary folder, half written
    (root / ".step-zzz" / "adapters.safetensors").write_bytes(b"\x00" * 10)
    assert checkpoint_folders.latest(root).name == "step-000004"

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies in the middle of writing the next checkpoint

    monkeypatch.setattr("safetensors.torch.save_file", die)
    with pytest.raises(KeyboardInterrupt):
        train(run_config(output=str(tmp_path), max_steps=6, checkpoint_every=2, resume="auto"))
    monkeypatch.undo()
    assert checkpoint_folders.latest(root).name == "step-000004"
    resumed = train(run_config(output=str(tmp_path), max_steps=6, resume="auto"))
    assert resumed.lora_path.is_file() and checkpoint_folders.latest(root).name == "step-000006"
    assert result.lora_path.exists()


def test_an_output_folder_gone_read_only_mid_run_is_one_line(tmp_path, monkeypatch, capsys):
    """A Drive unmounted or a share remounted read-only under the run: the checkpoint's temporary folder could not
    be made, outside the writes that are caught, and the run ended in a traceback."""
    import errno
    import tempfile

    from lowvram.cli import main

    made = tempfile.mkdtemp

    def read_only(*args, **kwargs):
        if kwargs.get("prefix") == ".step-" and os.path.isdir(os.path.join(kwargs["dir"], "step-000001")):
            raise OSError(errno.EROFS, "Read-only file system")
        return made(*args, **kwargs)

    monkeypatch.setattr("lowvram.train.checkpoint.tempfile.mkdtemp", read_only)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", "run", "--max-steps", "3",
                 "--checkpoint-every", "1"]) == 2
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "Read-only file system" in err and "Traceback" not in err, err
    assert "(the previous checkpoint is intact)" in err
    assert checkpoint_folders.latest(tmp_path / "run" / "checkpoints").name == "step-000001"


def test_a_run_stopped_while_it_caches_continues_with_its_own_config(tmp_path, monkeypatch):
    """Its <name>.toml was written after the caching: the README's `--config <name>.toml --resume auto` after a
    disconnect there found no file."""
    from lowvram.cli import main
    from lowvram.train import loop

    def disconnected(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loop, "fill_caches_and_place", disconnected)
    assert main(["train", "--model", "tiny", "--data", "sample", "--output", "run", "--max-steps", "2"]) == 130
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "run/run.toml", "--resume", "auto"]) == 0
    assert (tmp_path / "run" / "run.safetensors").is_file()


def test_nan_losses_are_skipped_and_never_saved(tmp_path, monkeypatch, capsys):
    from lowvram.train import step as loop

    real = loop.diffusion_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in (2, 3) else loss

    monkeypatch.setattr(loop, "diffusion_loss", sometimes_nan)
    result = train(run_config(output=str(tmp_path), max_steps=6))
    # (each problem line of a run starts "warning:", for a log read with grep)
    assert re.search(r"\bwarning: step \d: non-finite loss or gradient, step skipped", capsys.readouterr().out)
    assert all(torch.isfinite(t).all() for t in load_file(str(result.lora_path)).values())
    assert math.isfinite(result.final_loss)  # the skipped steps' nan stays out of the average

    def refused(constant):  # as JavaScript's JSON.parse and jq 1.7 do: JSON has no NaN
        raise ValueError(f"{constant} in metrics.jsonl")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refused) for line in lines]
    assert [record["loss"] for record in records if record.get("step") in (2, 3) and "loss" in record] == [None, None]
    from lowvram.ui.runs import progress_line

    assert progress_line([record for record in records if record.get("step") == 2], running=False).startswith(
        "step 2 of 6, loss nan")  # (the web UI's line)

    monkeypatch.setattr(loop, "diffusion_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite loss or gradient.*--lr.*no checkpoint was saved to go "
                                               "back to"):
        train(run_config(output=str(tmp_path / "diverged"), max_steps=8))
    assert not (tmp_path / "diverged" / "diverged.safetensors").exists()
    logged = [json.loads(line) for line in (tmp_path / "diverged" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in logged[:-1]] == [(step, None) for step in range(1, MAX_BAD_STEPS + 1)]
    assert logged[-1]["end"] == "failed" and "non-finite loss" in logged[-1]["error"], logged[-1]
    calls["n"] = 0
    monkeypatch.setattr(loop, "diffusion_loss", lambda *a, **k: sometimes_nan(*a, **k) * (
        float("nan") if calls["n"] > 2 else 1.0))
    with pytest.raises(TrainingDiverged, match=r"the last checkpoint, .*step-000004, holds the last good weights"):
        train(run_config(output=str(tmp_path / "late"), max_steps=12, checkpoint_every=2))
    # a checkpoint an older lowvram saved with the average at nan: resumed, the average starts afresh
    monkeypatch.setattr(loop, "diffusion_loss", real)
    state = tmp_path / "late" / "checkpoints" / "step-000004" / "state.json"
    state.write_text(json.dumps(json.loads(state.read_text()) | {"smoothed_loss": float("nan")}))
    resumed = train(run_config(output=str(tmp_path / "late"), max_steps=6, checkpoint_every=2, resume="auto"))
    assert math.isfinite(resumed.final_loss)


def test_a_checkpoint_of_another_process_count_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A checkpoint two processes wrote, resumed by one: said before the model loads, with the launch that resumes
    it and the way to start anew from its LoRA (it was said after the model loaded and the caches filled); an older
    lowvram's checkpoint is said as that, not as another count."""
    from lowvram.train import loop

    def loaded(*_):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(loop, "load_frozen_model", loaded)
    folder = tmp_path / "checkpoints" / "step-000002"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"format": 2}')
    for part in ("adapters", "optimizer"):
        save_file({"unet/x": torch.zeros(1)}, folder / f"{part}.safetensors")
    save_file({f"rank{rank}/torch": torch.zeros(1, dtype=torch.uint8) for rank in (0, 1)}, folder / "rng.safetensors")
    argv = ["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path), "--resume", "auto"]
    assert main(argv) == 2
    said = capsys.readouterr().err
    assert said.startswith(f"lowvram train: error: --resume: {folder} was saved by a run of 2 process(es), this one "
                           "has 1; resume it with as many (accelerate launch --multi_gpu --num_processes 2 -m lowvram "
                           "train), or start anew from a LoRA the run saved (--network-weights FILE and another "
                           "--output; its optimizer state starts over)"), said
    save_file({"torch": torch.zeros(1, dtype=torch.uint8), "cuda0": torch.zeros(1)}, folder / "rng.safetensors")
    (folder / "state.json").write_text('{"format": 1}')  # (its states were "2 processes"; said after the model)
    assert main([*argv[:-2], "--resume", str(folder)]) == 2
    assert capsys.readouterr().err.startswith(f"lowvram train: error: --resume: {folder} was written by another "
                                              "lowvram version (format 1, this one reads 2)")


def test_resume_auto_without_a_checkpoint_starts_the_run_and_says_so(tmp_path, capsys):
    """One command for a notebook cell's first start and its rerun after a disconnect, as the diffusers scripts'
    `--resume_from_checkpoint latest`: with nothing to continue it trains from step 0, naming the folder (a typo in
    --output shows in the first line); run again, it continues (here: finds the run finished)."""
    out = tmp_path / "my run"
    first = train(run_config(output=str(out), max_steps=2, resume="auto"))
    assert capsys.readouterr().out.startswith(f"--resume auto: no checkpoint in {out} yet, so the run starts from "
                                              "the beginning")
    assert first.lora_path.is_file() and checkpoint_folders.latest(out / "checkpoints").name == "step-000002"
    train(run_config(output=str(out), max_steps=2, resume="latest"))  # the diffusers scripts' word
    assert "resumed from" in capsys.readouterr().out
    (out / "checkpoints").rename(tmp_path / "gone")  # the LoRA without its checkpoints: nothing to continue from
    with pytest.raises(LowvramError) as error:
        train(run_config(output=str(out), max_steps=2, resume="auto"))
    assert str(error.value) == (
        f"--resume auto: {out} holds my run.safetensors but no checkpoint to continue from (a full disk, or a kill "
        f"before one was written): train on from it with --network-weights '{out / 'my run.safetensors'}' and "
        f"another --output, or start over with --overwrite (its files move to {out / 'archive'}/)")
    (out / "my run.safetensors").rename(out / "my run-step00000001.safetensors")  # a step's save alone: the same
    with pytest.raises(LowvramError, match="holds my run-step00000001.safetensors but no checkpoint to continue from"):
        train(run_config(output=str(out), max_steps=2, resume="auto"))


def test_injected_out_of_memory_makes_the_run_leaner_and_it_finishes_every_step(tmp_path, monkeypatch, capsys):
    import json

    from lowvram.train import step as loop

    real = loop.diffusion_loss
    calls = {"n": 0}

    def oom_twice(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (3, 4):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "diffusion_loss", oom_twice)
    result = train(run_config(output=str(tmp_path), max_steps=6, batch_size=2))
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "out of memory at step 3: turned on gradient checkpointing" in out
    assert "running each batch in 2 parts (same effective batch)" in out
    assert result.model.unet.is_gradient_checkpointing
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]  # (the step lines: the run's end adds its peak host RAM)
    assert steps == list(range(1, 7))  # no step lost
    assert all(torch.isfinite(t).all() for t in load_file(str(result.lora_path)).values())


def test_out_of_memory_drawing_samples_skips_them_and_the_run_keeps_its_work(tmp_path, monkeypatch, capsys):
    """A sample grid mid-run (the VAE's decode beside the training state, the likeliest out-of-memory on a small
    card) and the samples after the last step are skipped with a warning; the steps, the checkpoint due at the
    same step and the LoRA are kept."""
    import json

    from lowvram.train import loop, saving

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(saving, "render_grid", out_of_memory)
    monkeypatch.setattr(loop, "render_samples", out_of_memory)
    result = train(run_config(output=str(tmp_path), max_steps=4, sample_every="2", checkpoint_every=2,
                              sample_prompts=["lvshape"]))
    out = " ".join(capsys.readouterr().out.split())
    assert "step 2: out of memory drawing the sample grid; skipped, training goes on" in out
    assert f"out of memory drawing the samples after the last step; {result.lora_path} is saved" in out
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4] and result.lora_path.is_file()
    assert [step for step, _ in checkpoint_folders.complete(checkpoint_folders.checkpoint_root(tmp_path))][-1] == 4


def test_batch_split_keeps_every_sample(tmp_path):
    import random

    result = train(run_config(output=str(tmp_path), max_steps=1, batch_size=3))
    batch = result.data.load([0, 1, 2], random.Random(0))
    parts = batch.split(2)
    assert [len(p) for p in parts] == [2, 1]
    assert torch.equal(torch.cat([p.latents for p in parts]), batch.latents)
    assert [c for p in parts for c in p.captions] == batch.captions


@pytest.mark.parametrize("optimizer", ["adamw8bit", "adafactor", "lion", "prodigy", "schedulefree_adamw"])
def test_optimizer_state_round_trips_through_a_checkpoint(tmp_path, optimizer):
    from lowvram.optim import build_optimizer
    from lowvram.train.checkpoint import _join, _split

    params = [torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(7))]
    opt = build_optimizer(optimizer, [{"params": params, "lr": 1e-3}], weight_decay=0.0)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    tensors, rest = _split(opt.state_dict())
    import json

    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "optimizer.safetensors"))  # as a checkpoint does: through the disk
    restored = _join(load_file(str(tmp_path / "optimizer.safetensors")), json.loads(json.dumps(rest)))
    fresh = build_optimizer(optimizer, [{"params": params, "lr": 1e-3}], weight_decay=0.0)
    fresh.load_state_dict(restored)
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    opt.step()
    after_original = [p.detach().clone() for p in params]
    for p, b in zip(params, before):
        p.data.copy_(b)
        p.grad = torch.ones_like(p)  # schedule-free normalizes the gradient in place
    fresh.step()
    for p, a in zip(params, after_original):
        assert torch.equal(p.detach(), a)


def test_fp16_scaler_overflows_are_routine_until_the_scale_falls_below_one():
    """Under fp16 the grad scaler skips an update whose gradients overflow and lowers its scale, often several
    steps in a row at first: that is no bad step. A non-finite loss is, and so are gradients that still
    overflow at a scale under 1. (The whole fp16 path runs in tests/test_gpu.py, on CUDA.)"""
    from lowvram.train.step import step_verdict

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    assert step_verdict(0.1, torch.tensor(3.0), scaler) == "ok"
    assert step_verdict(0.1, torch.tensor(float("inf")), scaler) == "scaler overflow"
    assert step_verdict(float("nan"), torch.tensor(3.0), scaler) == "bad"
    assert step_verdict(0.1, torch.tensor(float("nan")), None) == "bad"  # bf16/fp32: no scaler to absorb it
    low = torch.amp.GradScaler("cpu", init_scale=0.25)
    assert step_verdict(0.1, torch.tensor(float("inf")), low) == "bad"


@pytest.mark.parametrize("fused", [None, True])
def test_an_update_the_grad_scaler_skips_is_seen_as_skipped_with_fused_adamw_too(fused):
    """Fused AdamW (lowvram's on CUDA) skips an overflowing update inside its kernel, where accelerate's
    step_was_skipped cannot see it: the schedule, EMA and norm limits would run ahead on every overflow."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from lowvram.train.step import optimizer_stepped

    Accelerator(cpu=True)
    weight = torch.nn.Parameter(torch.ones(4))
    adamw = torch.optim.AdamW([weight], lr=0.1, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    optimizer = AcceleratedOptimizer(adamw, scaler=scaler)
    scaler.scale(torch.zeros(()))  # the scale is made lazily, as accelerator.backward does
    for gradient, applied in ((float("inf"), False), (1.0, True)):
        weight.grad = torch.full((4,), gradient)
        scaler.unscale_(adamw)  # as accelerator.clip_grad_norm_ does first
        assert optimizer_stepped(optimizer, scaler, gradients_finite=applied) is applied
        assert torch.equal(weight.detach(), torch.ones(4)) is not applied
        optimizer.zero_grad()


def test_the_text_encoders_stop_training_where_asked_and_stay_stopped_on_resume(tmp_path, capsys):
    """--text-encoder-until 2: the text encoders' adapters train for two steps and keep those weights; the
    U-Net's train on. A run resumed past that point keeps them frozen; one resumed before it trains them to it."""
    values = {"output": str(tmp_path), "train_text_encoder": True, "text_encoder_until": "2", "lr": 1e-2,
              "save_every": "1", "checkpoint_every": 1}
    result = train(run_config(max_steps=4, **values))
    assert "frozen from step 3 on (--text-encoder-until 2)" in " ".join(capsys.readouterr().out.split())
    saved = {step: load_file(str(tmp_path / f"{tmp_path.name}-step{step:08d}.safetensors")) for step in (1, 2, 3)}
    final = load_file(str(result.lora_path))

    def part(state, prefix):
        return {key: value for key, value in state.items() if key.startswith(prefix) and "alpha" not in key}

    for key, value in part(final, "lora_te_").items():
        assert torch.equal(saved[2][key], value), key  # unchanged after step 2
    assert any(not torch.equal(saved[1][key], saved[2][key]) for key in part(final, "lora_te_"))  # trained to it
    assert any(not torch.equal(saved[3][key], value) for key, value in part(final, "lora_unet_").items())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [("lr_text_encoder" in row) for row in logged] == [True, True, False, False]  # its rate, while it trains
    resumed = train(run_config(max_steps=5, resume="auto", overwrite=True, **values))  # from step 4's checkpoint
    out = " ".join(capsys.readouterr().out.split())
    assert "frozen from step 5 on" in out and "trained steps 5 to 5 in 0:00:" in out  # this process's steps
    for key, value in part(load_file(str(resumed.lora_path)), "lora_te_").items():
        assert torch.equal(saved[2][key], value), key


def test_text_encoder_until_needs_the_text_encoders_trained():
    with pytest.raises(LowvramError, match=r"--text-encoder-until: the text encoders are not trained; add "
                                           r"--train-text-encoder"):
        run_config(text_encoder_until="2e")
    with pytest.raises(LowvramError, match=r"--text-encoder-until: 'soon' is not a positive number of steps"):
        run_config(text_encoder_until="soon", train_text_encoder=True)


def test_an_8bit_optimizers_state_survives_a_checkpoint(tmp_path):
    """bitsandbytes keeps one quantization map for all its 8-bit states (layers from 4,096 weights, as every real
    one is): the checkpoint writes it once, and the resumed run ends where the uninterrupted one does."""
    values = {"optimizer": "adamw8bit", "lora_layers": "attn-mlp", "lr": 1e-3, "model": "tiny-sdxl", "rank": 16}
    straight = train(run_config(output=str(tmp_path / "straight"), max_steps=4, **values))
    train(run_config(output=str(tmp_path / "resumed"), max_steps=2, checkpoint_every=2, **values))
    state = load_file(str(checkpoint_folders.latest(tmp_path / "resumed" / "checkpoints") / "optimizer.safetensors"))
    assert any("qmap" in key for key in state)  # 8-bit states were written
    resumed = train(run_config(output=str(tmp_path / "resumed"), max_steps=4, resume="auto", **values))
    ours, theirs = load_file(str(straight.lora_path)), load_file(str(resumed.lora_path))
    for key, value in ours.items():
        torch.testing.assert_close(theirs[key], value, msg=key)


def test_a_new_lr_on_resume_is_the_one_trained_with_from_the_restored_step(tmp_path, capsys):
    train(run_config(output=str(tmp_path), max_steps=3, lr=1e-4, checkpoint_every=3, scheduler="cosine"))
    capsys.readouterr()
    train(run_config(output=str(tmp_path), max_steps=6, lr=1e-3, resume="auto", name="longer", scheduler="cosine"))
    assert ("note: --lr 0.001 (was 0.0001): the steps from 4 train with it; the LoRA's metadata and the run's .toml "
            "record the new value for the whole run" in " ".join(capsys.readouterr().out.split()))  # (no text encoder)
    import json
    import math

    rates = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
             if "lr" in r}
    assert rates[4] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))  # the new rate, the new length


def test_new_optimizer_settings_on_resume_are_the_ones_trained_with(tmp_path, capsys):
    """The restored optimizer state held the earlier run's settings: Adafactor's own step sizes went on after
    relative_step was dropped for --lr, and new betas or weight decay were said to train, and did not."""
    import json

    train(run_config(output=str(tmp_path), max_steps=2, checkpoint_every=2, optimizer="adafactor",
                     optimizer_args=("relative_step=True",)))
    train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=2, resume="auto", name="on",
                     optimizer="adafactor", lr=1e-3, weight_decay=0.05, optimizer_args=("clip_threshold=0.5",)))
    group = json.loads((tmp_path / "checkpoints" / "step-000004" / "state.json").read_text())["optimizer"][
        "param_groups"][0]
    assert (group["relative_step"], group["weight_decay"], group["clip_threshold"]) == (False, 0.05, 0.5)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [("lr_effective" in row, row["lr"]) for row in rows[-2:]] == [(False, 1e-3), (False, 1e-3)]
    # but not those its state was made with: Prodigy's slice of each weight (a shape error in the next step)
    train(run_config(output=str(tmp_path / "p"), max_steps=2, checkpoint_every=2, optimizer="prodigy",
                     optimizer_args=("slice_p=1",)))
    assert train(run_config(output=str(tmp_path / "p"), max_steps=3, resume="auto", optimizer="prodigy",
                            optimizer_args=("slice_p=11",))).steps == 3


def test_a_new_prior_loss_weight_on_resume_is_said_as_a_new_lr_is(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "reg" / "1_shape").mkdir(parents=True)
    Image.new("RGB", (64, 64), (90, 20, 30)).save(tmp_path / "reg" / "1_shape" / "r.png")
    values = {"output": str(tmp_path / "out"), "reg_data": str(tmp_path / "reg"), "checkpoint_every": 2}
    train(run_config(max_steps=2, **values))
    capsys.readouterr()
    train(run_config(max_steps=3, resume="auto", prior_loss_weight=0.5, **values))
    assert ("note: --prior-loss-weight 0.5 (was 1): the steps from 3 train with it" in
            " ".join(capsys.readouterr().out.split()))


def test_caption_noise_and_repeat_changes_on_resume_are_said_as_a_new_lr_is(tmp_path, capsys, monkeypatch):
    """A resume with --shuffle-tags or a --noise-offset added, or a dataset file's num_repeats raised, trained on
    without a word (the LoRA's record then claimed them for the whole run)."""
    import tomli_w
    from conftest import image_folders

    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    dataset = {"datasets": [{"resolution": 64, "subsets": [{"image_dir": "imgs/alpha", "num_repeats": 1}]}]}
    (tmp_path / "d.toml").write_text(tomli_w.dumps(dataset))
    values = {"output": str(tmp_path / "out"), "data": str(tmp_path / "d.toml"), "checkpoint_every": 2}
    train(run_config(max_steps=2, **values))
    capsys.readouterr()
    dataset["datasets"][0]["subsets"][0]["num_repeats"] = 2
    (tmp_path / "d.toml").write_text(tomli_w.dumps(dataset))
    train(run_config(max_steps=3, resume="auto", shuffle_tags=True, noise_offset=0.05, **values))
    said = " ".join(capsys.readouterr().out.split())
    assert ("note: --shuffle-tags on (was off), --noise-offset 0.05 (was 0), samples per epoch 6 (was 3): the "
            "steps from 3 train with them" in said), said


def test_training_a_finished_run_further_keeps_its_final_lora_as_the_save_point_of_its_step(tmp_path, capsys):
    samples = {"sample_prompts": ("lvshape, a red circle",), "sample_steps": 1}
    first = train(run_config(output=str(tmp_path), max_steps=3, checkpoint_every=3, **samples)).lora_path
    before, sampled = first.read_bytes(), (tmp_path / "samples" / f"{first.stem}-00.png").read_bytes()
    train(run_config(output=str(tmp_path), max_steps=5, resume="auto", **samples))  # no --overwrite: nothing is lost
    assert (tmp_path / f"{first.stem}-step00000003.safetensors").read_bytes() == before
    assert (tmp_path / "samples" / f"{first.stem}-step00000003-00.png").read_bytes() == sampled  # its sample with it
    assert (f"kept the run's earlier final LoRA as {tmp_path / first.stem}-step00000003.safetensors with its samples"
            in " ".join(capsys.readouterr().out.split()))
    assert load_file(str(first)) and (tmp_path / "samples" / f"{first.stem}-00.png").is_file()  # the continued run's


def test_training_further_past_a_final_lora_cut_short_sets_it_aside_and_keeps_the_steps(tmp_path, capsys):
    """A power cut's half-written final LoRA: the resumed run trained its steps, then stopped at a traceback before
    writing its LoRA or checkpoint, losing them."""
    first = train(run_config(output=str(tmp_path), max_steps=3, checkpoint_every=3)).lora_path
    first.write_bytes(first.read_bytes()[:5000])
    result = train(run_config(output=str(tmp_path), max_steps=5, resume="auto"))
    printed = " ".join(capsys.readouterr().out.split())
    assert "moved the run's earlier final LoRA, unreadable (" in printed
    assert result.steps == 5 and load_file(str(first))
    assert [path.stat().st_size for path in (tmp_path / "archive").glob(f"*/{first.name}")] == [5000]


def test_a_run_record_cut_short_names_itself_and_overwrite_resumes_keeping_the_lora(tmp_path):
    """It said 'pass --overwrite to replace it', which reads as starting over, beside whole checkpoints."""
    first = train(run_config(output=str(tmp_path), max_steps=3, checkpoint_every=3)).lora_path
    (tmp_path / "lowvram-run.json").write_text("{")
    with pytest.raises(LowvramError, match=r"the run record lowvram-run\.json is unreadable, so it is of no run known "
                                           r"there; pass --overwrite to resume from .*checkpoints anyway"):
        train(run_config(output=str(tmp_path), max_steps=5, resume="auto", overwrite=False))
    before = first.read_bytes()
    assert train(run_config(output=str(tmp_path), max_steps=5, resume="auto", overwrite=True)).steps == 5
    assert (tmp_path / f"{first.stem}-step00000003.safetensors").read_bytes() == before


def test_keep_saves_prunes_a_kept_final_lora_with_its_samples(tmp_path):
    samples = {"sample_prompts": ("lvshape, a red circle",), "sample_steps": 1, "checkpoint_every": 2}
    name = train(run_config(output=str(tmp_path), max_steps=2, **samples)).lora_path.stem
    train(run_config(output=str(tmp_path), max_steps=4, resume="auto", **samples))  # step 2's kept as a save
    assert (tmp_path / "samples" / f"{name}-step00000002-00.png").is_file()
    train(run_config(output=str(tmp_path), max_steps=6, resume="auto", save_every="1", keep_saves=1, **samples))
    assert not (tmp_path / f"{name}-step00000002.safetensors").exists()
    assert not (tmp_path / "samples" / f"{name}-step00000002-00.png").exists()  # its samples went with it


def test_a_branch_from_an_earlier_checkpoint_sets_aside_all_the_left_branch_made_after_it(tmp_path, capsys):
    """Resumed from step 2 with another --lr to the same last step: a LoRA of the same step, but of other weights.
    The saves, final LoRA and samples the branch left made after step 2 go to archive/ with its checkpoints, so
    that the new branch's replace none of them and none is taken for one of the new branch's."""
    saves = {"save_every": "1", "sample_every": "1", "sample_prompts": ("lvshape, a red circle",), "sample_steps": 1}
    first = train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=2, lr=1e-3, **saves)).lora_path
    left = {path.name: path.read_bytes()
            for path in [*tmp_path.glob(f"{first.stem}-step0000000[34].safetensors"),
                         *(tmp_path / "samples").glob(f"{first.stem}-step0000000[34].png")]}
    before, final_sample = first.read_bytes(), (tmp_path / "samples" / f"{first.stem}-00.png").read_bytes()
    capsys.readouterr()
    train(run_config(output=str(tmp_path), max_steps=4, lr=2e-3, resume=str(tmp_path / "checkpoints" / "step-000002"),
                     **saves))
    printed = " ".join(capsys.readouterr().out.split())
    assert sorted(left) == [f"{first.stem}-step00000003.{kind}" for kind in ("png", "safetensors")] + [
        f"{first.stem}-step00000004.png"]  # (step 4's LoRA is the final one)
    left |= {first.name: before, f"{first.stem}-00.png": final_sample}
    assert "moved 1 checkpoint(s) after step-000002 and 5 save(s) and sample(s), of the branch this run" in printed
    archived = {path.name: path.read_bytes() for path in (tmp_path / "archive").glob("*/*") if path.is_file()}
    assert all(archived[name] == data for name, data in left.items())
    assert all((tmp_path / name).is_file() or (tmp_path / "samples" / name).is_file() for name in left)  # the new ones
    assert "kept the run's earlier final LoRA" not in printed and first.read_bytes() != before
    assert not (tmp_path / f"{first.stem}-step00000004.safetensors").exists()  # no step-4 LoRA of the left branch
    # the left branch's loss curve and options, to compare the branches by (its steps 3 and 4 left the run's log)
    kept = [json.loads(line) for line in next((tmp_path / "archive").glob("*/metrics.jsonl")).read_text().splitlines()]
    assert [record["step"] for record in kept if "loss" in record] == [1, 2, 3, 4]
    assert 'lr = 0.001' in next((tmp_path / "archive").glob(f"*/{first.stem}.toml")).read_text()
    # going back to the branch left, from its archived checkpoint: refused here, where it overwrote the new branch's
    # final LoRA unarchived (the folder then held both branches' files); into a folder of its own it trains on
    archived_step = next((tmp_path / "archive").glob("*/step-000004"))
    now = first.read_bytes()
    with pytest.raises(LowvramError, match=f"--resume: {re.escape(str(archived_step))} is in {re.escape(str(tmp_path))}"
                                           "'s archive/, of a branch this run left"):
        train(run_config(output=str(tmp_path), max_steps=4, lr=1e-3, resume=str(archived_step), **saves))
    assert first.read_bytes() == now
    branch = train(run_config(output=str(tmp_path / "left"), max_steps=4, lr=1e-3, resume=str(archived_step)))
    assert branch.lora_path.is_file()


def test_resume_auto_sets_aside_what_a_killed_run_saved_past_its_last_checkpoint(tmp_path, capsys):
    """A run killed after its step-3 save and before its step-4 checkpoint, resumed from step 2 with another --lr: its
    step-3 LoRA (a -best, in the walkthrough) stayed, passing for the new branch's though no step of it made it."""
    import shutil

    first = train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=2, save_every="1", lr=1e-3))
    step3 = (tmp_path / f"{first.lora_path.stem}-step00000003.safetensors").read_bytes()
    shutil.rmtree(tmp_path / "checkpoints" / "step-000004")  # as the kill left it: a checkpoint is written whole or not
    capsys.readouterr()
    train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=2, save_every="1", lr=2e-3, resume="auto"))
    printed = " ".join(capsys.readouterr().out.split())
    assert "moved 2 save(s) and sample(s) after step-000002, of the branch this run leaves" in printed
    archived = {path.name: path.read_bytes() for path in (tmp_path / "archive").glob("*/*.safetensors")}
    assert archived[f"{first.lora_path.stem}-step00000003.safetensors"] == step3
    assert (tmp_path / f"{first.lora_path.stem}-step00000003.safetensors").read_bytes() != step3  # the new branch's


def test_resume_auto_past_a_lost_end_checkpoint_refuses_before_moving_anything_and_trains_on_when_raised(tmp_path):
    """The refusal came after the run's step-3 save had been moved as of a branch left; raising --max-steps then
    trained steps 3 and 4 again and moved the end's LoRA apart from the branch's other files."""
    import shutil

    first = train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=2, save_every="1")).lora_path
    shutil.rmtree(tmp_path / "checkpoints" / "step-000004")  # lost to a full disk
    before = sorted(path.name for path in tmp_path.iterdir())
    with pytest.raises(LowvramError, match=r"is the run's end, step 4, written after its newest checkpoint, step 2 .*"
                                           r"nothing is left to train"):
        train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=2, save_every="1", resume="auto"))
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # nothing moved
    assert train(run_config(output=str(tmp_path), max_steps=6, checkpoint_every=2, save_every="1",
                            resume="auto")).steps == 6
    [branch] = (tmp_path / "archive").iterdir()  # the branch left, in one place
    assert {first.name, f"{first.stem}-step00000003.safetensors"} <= {path.name for path in branch.iterdir()}


def test_a_batch_size_changed_mid_epoch_says_what_the_epoch_passes_over(tmp_path, capsys):
    """The epoch's place is a count of batches: at twice the batch size, as many images as had trained were passed
    over, with only the batch size's own note."""
    train(run_config(output=str(tmp_path), max_steps=3, checkpoint_every=3))
    capsys.readouterr()
    train(run_config(output=str(tmp_path), max_steps=5, batch_size=2, resume="auto"))
    assert ("epoch 1 goes on after its first 3 batches, drawn anew at 2 images each: 6 of its images are passed "
            "over, not the 3 that trained, some of which train again this epoch") in " ".join(
        capsys.readouterr().out.split())


def test_a_new_gradient_accumulation_on_resume_counts_the_epochs_from_the_checkpoints_place(tmp_path, capsys):
    """The epochs a resumed run reaches are its checkpoint's batches and its own: 4 steps of 1 batch, 16 of 2 and 4 of
    3 are 48 batches, 1.6 epochs of 30 (counted from step 0 at each new count, they were said as 2.4 epochs of 10,
    and the progress line's and the LoRA's epoch count as 3)."""
    train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=4))
    result = train(run_config(output=str(tmp_path), max_steps=20, gradient_accumulation=2, resume="auto"))
    assert "20 steps = 1.2 epochs of 15" in capsys.readouterr().out and result.epochs == 2
    result = train(run_config(output=str(tmp_path), max_steps=24, gradient_accumulation=3, resume="auto"))
    said = capsys.readouterr().out
    assert "24 steps = 1.6 epochs of 10" in said and "epoch 2/2" in said and result.epochs == 2, said
    assert read_header(result.lora_path)[0]["ss_num_epochs"] == "2"


def test_every_checkpoint_unreadable_names_the_broken_part_and_the_way_out(tmp_path):
    train(run_config(output=str(tmp_path), max_steps=2, checkpoint_every=1))
    for part in (tmp_path / "checkpoints").glob("step-*/adapters.safetensors"):
        part.write_bytes(part.read_bytes()[:100])  # a disk that filled, a copy cut short
    with pytest.raises(LowvramError) as error:
        train(run_config(output=str(tmp_path), max_steps=4, resume="auto"))
    assert "is unreadable (adapters.safetensors: " in str(error.value) and "start over with --overwrite" in str(
        error.value)
    train(run_config(output=str(tmp_path), max_steps=2, overwrite=True))  # the way out it names


def test_resuming_past_a_shorter_end_says_which_step_the_lora_is_of(tmp_path, capsys):
    train(run_config(output=str(tmp_path), max_steps=4, checkpoint_every=4))
    capsys.readouterr()
    result = train(run_config(output=str(tmp_path), max_steps=2, resume="auto", name="short"))
    out = " ".join(capsys.readouterr().out.split())
    per_epoch = re.search(r" epochs of (\d+)\)", out).group(1)  # ("2 steps = 0.133 epochs": the checkpoint's 4/30)
    assert f"| 2 steps (the checkpoint is past them: step 4 = {4 / int(per_epoch):.3g} epochs of {per_epoch}) |" in out
    assert ("nothing left to train: the run ends at step 2, before the checkpoint's 4 (raise --max-steps or --epochs "
            "to train further); writing the LoRA of step 4 from the checkpoint") in out
    assert "trained no further steps (the LoRA is step 4's, from its checkpoint) in 0:00:" in out
    assert result.steps == 4


def test_cuda_random_states_go_back_to_their_own_devices_by_number():
    saved = {f"cuda{i}": torch.tensor([i]) for i in range(12)} | {"torch": torch.tensor([-1])}
    restored = checkpoint.cuda_rng_states(saved, device_count=12)
    assert [index for index, _ in restored] == list(range(12))  # cuda10 after cuda9, not after cuda1
    assert all(int(state) == index for index, state in restored)
    assert [index for index, _ in checkpoint.cuda_rng_states(saved, device_count=2)] == [0, 1]


def test_a_dataset_changed_since_the_checkpoint_is_said_on_resume(tmp_path, sample_data, capsys):
    """The checkpoint's data position continues another order over other images: the resumed run says what changed
    (and trains on, a caption fixed mid-run being worth training on); an unchanged dataset says nothing."""
    values = {"data": str(sample_data), "output": str(tmp_path / "out"), "checkpoint_every": 2}
    train(run_config(**values, max_steps=2))
    train(run_config(**values, max_steps=3, resume="auto"))
    assert "dataset changed" not in capsys.readouterr().out
    folder = sample_data / "5_lvshape"
    images = sorted(folder.glob("*.png"))
    images[0].unlink()
    images[1].with_suffix(".txt").write_text("lvshape, a caption fixed mid-run")
    shutil.copy(images[2], folder / "99_new.png")
    train(run_config(**values, max_steps=4, resume="auto"))
    printed = " ".join(capsys.readouterr().out.split())
    assert ("the dataset changed since this checkpoint (1 image added, 1 image removed, 1 caption changed): "
            "training goes on with it as it is now, in another order than the interrupted run's") in printed
    images[1].with_suffix(".txt").write_text("lvshape, the caption fixed again")  # the images keep their order
    train(run_config(**values, max_steps=6, resume="auto"))
    printed = " ".join(capsys.readouterr().out.split())
    assert ("the dataset changed since this checkpoint (1 caption changed): training goes on with it as it is now, "
            "so the LoRA will not be") in printed


def test_a_grid_a_kill_left_undrawn_after_its_checkpoint_is_drawn_on_resume(tmp_path, capsys):
    """The checkpoint of a sample step is written before its grid: a kill between them left that grid missing for
    good. The resumed run draws it first, and trains on to the LoRA an uninterrupted run gives."""
    samples = {"sample_every": "2", "sample_prompts": ["lvshape"], "sample_steps": 2, "checkpoint_every": 2}
    straight = train(run_config(output=str(tmp_path / "straight"), max_steps=4, **samples))
    out = tmp_path / "cut"
    train(run_config(output=str(out), max_steps=2, **samples))
    grid = out / "samples" / "cut-step00000002.png"
    grid.unlink()  # as a kill after the checkpoint of step 2, before its grid
    capsys.readouterr()
    resumed = train(run_config(output=str(out), max_steps=4, resume="auto", **samples))
    assert f"step 2: samples {grid}" in capsys.readouterr().out and grid.is_file()
    ours, theirs = load_file(str(straight.lora_path)), load_file(str(resumed.lora_path))
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_a_checkpoint_of_caption_variants_drawn_otherwise_resumes_with_a_note(tmp_path, capsys):
    """An upgrade that draws --shuffle-tags' variants otherwise resumed an old checkpoint without a word into a LoRA
    neither version gives."""
    for shuffled in (True, False):
        out = tmp_path / str(shuffled)
        train(run_config(output=str(out), max_steps=2, checkpoint_every=2, shuffle_tags=shuffled))
        state = out / "checkpoints" / "step-000002" / "state.json"
        saved = json.loads(state.read_text())
        assert saved["settings"]["caption variants"] == 3
        del saved["settings"]["caption variants"]  # as an earlier lowvram kept it
        state.write_text(json.dumps(saved))
        capsys.readouterr()
        train(run_config(output=str(out), max_steps=3, checkpoint_every=2, shuffle_tags=shuffled, resume="auto"))
        said = " ".join(capsys.readouterr().out.split())
        assert ("this checkpoint's run drew its caption variants (--shuffle-tags, --tag-dropout) as an earlier "
                "lowvram did (before 2026-12-05; under --tag-dropout, 2026-12-06), or keeps no record of how: where "
                "they were drawn otherwise, the steps from 3 train on today's" in said) is shuffled, said
    # a run of --tag-dropout's variants, as lowvram drew them before 2026-12-06 (each distinct draw alike)
    out = tmp_path / "dropped"
    train(run_config(output=str(out), max_steps=2, checkpoint_every=2, tag_dropout=0.2))
    state = out / "checkpoints" / "step-000002" / "state.json"
    saved = json.loads(state.read_text())
    assert saved["settings"]["caption variants"] == 4
    state.write_text(json.dumps(saved | {"settings": saved["settings"] | {"caption variants": 3}}))
    capsys.readouterr()
    train(run_config(output=str(out), max_steps=3, checkpoint_every=2, tag_dropout=0.2, resume="auto"))
    assert "this checkpoint's run drew its caption variants" in " ".join(capsys.readouterr().out.split())
    # --tag-dropout turned on at a resume: said as that alone (today's drawing of the checkpoint's own options)
    out = tmp_path / "turned on"
    train(run_config(output=str(out), max_steps=2, checkpoint_every=2, shuffle_tags=True))
    capsys.readouterr()
    train(run_config(output=str(out), max_steps=3, shuffle_tags=True, tag_dropout=0.1, resume="auto"))
    said = " ".join(capsys.readouterr().out.split())
    assert "--tag-dropout 0.1 (was 0)" in said and "drew its caption variants" not in said, said


def test_a_run_stopped_before_its_first_step_ends_its_metrics_saying_so(tmp_path, sample_data):
    """A resume that failed while scanning left metrics.jsonl ending with the earlier session's "finished"."""
    data, out = tmp_path / "copied", tmp_path / "run"
    shutil.copytree(sample_data, data)
    train(run_config(output=str(out), data=str(data), max_steps=2, checkpoint_every=2))
    config = run_config(output=str(out), data=str(data), max_steps=3, checkpoint_every=2, resume="auto")
    for image in data.rglob("*.png"):
        image.unlink()
    with pytest.raises(LowvramError) as error:
        train(config)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"step": 2, "end": "failed", "error": str(error.value).splitlines()[0]}, last


def test_a_stop_after_the_log_closed_adds_no_second_end_line(tmp_path, monkeypatch):
    """A Ctrl-C after the log said the run finished (the processes waiting for each other at the end) added an
    "interrupted" line after it."""
    from lowvram.train import loop

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "TrainResult", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(run_config(output=str(tmp_path), max_steps=1))
    ends = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"end"' in line]
    assert [end["end"] for end in ends] == ["finished"]
    # a line cut short (a kill mid-write) before a run that stops early: the end line on a line of its own
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 2, "lo')
    from lowvram.train.runlog import log_early_end

    log_early_end(tmp_path, KeyboardInterrupt())
    assert json.loads(metrics.read_text().splitlines()[-1]) == {"step": 1, "end": "interrupted"}


def test_a_checkpoint_of_no_options_recorded_resumes_saying_so(tmp_path, capsys):
    """An earlier lowvram's checkpoint kept no options: a --preset whose defaults changed since (warm-up 100 steps,
    now a share) resumed into a learning rate that jumped, without a word."""
    out = tmp_path / "run"
    train(run_config(output=str(out), max_steps=2, checkpoint_every=2))
    state = out / "checkpoints" / "step-000002" / "state.json"
    saved = json.loads(state.read_text())
    del saved["settings"]  # as an earlier lowvram kept it
    state.write_text(json.dumps(saved))
    capsys.readouterr()
    train(run_config(output=str(out), max_steps=3, checkpoint_every=2, resume="auto"))
    said = " ".join(capsys.readouterr().out.split())
    assert ("this checkpoint (an earlier lowvram's, before 2026-12-04) keeps no record of the options it trained "
            "with: the steps from 3 train with these, a --preset's as they are today; where one differs from the "
            "run's, give it") in said, said
    train(run_config(output=str(out), max_steps=4, checkpoint_every=2, resume="auto"))
    assert "keeps no record" not in capsys.readouterr().out  # (the next checkpoint keeps them)


def test_a_finished_run_resumed_keeps_its_lora_byte_for_byte_unless_what_it_holds_changed(tmp_path, capsys):
    """A notebook cell run again after its run finished: its LoRA written again changed its file hash (AutoV2, which
    model sites key on) and its times for nothing. --format diffusers adds its copy; another title rewrites it."""
    first = train(run_config(output=str(tmp_path), max_steps=2, checkpoint_every=2))
    before = first.lora_path.read_bytes()
    capsys.readouterr()
    train(run_config(output=str(tmp_path), max_steps=2, checkpoint_every=2, resume="auto", format="diffusers"))
    assert first.lora_path.read_bytes() == before
    printed = " ".join(capsys.readouterr().out.split())
    assert f"{first.lora_path} holds step 2's LoRA of these options already: not written again" in printed
    assert f"saved {first.lora_path}" not in printed  # (it was said saved, after "not written again")
    assert (tmp_path / f"{first.lora_path.stem}-diffusers" / "pytorch_lora_weights.safetensors").is_file()
    train(run_config(output=str(tmp_path), max_steps=2, checkpoint_every=2, resume="auto", metadata_title="Shapes"))
    assert "not written again" not in capsys.readouterr().out
    assert read_header(first.lora_path)[0]["modelspec.title"] == "Shapes"
    # other tensors under the same metadata (a file edited since): written again
    metadata, weights = read_header(first.lora_path)[0], load_file(str(first.lora_path))
    save_file({key: tensor * 2 for key, tensor in weights.items()}, str(first.lora_path), metadata)
    train(run_config(output=str(tmp_path), max_steps=2, checkpoint_every=2, resume="auto", metadata_title="Shapes"))
    assert "not written again" not in capsys.readouterr().out
    assert all(torch.equal(tensor, load_file(str(first.lora_path))[key]) for key, tensor in weights.items())
    # an earlier lowvram's file, whose recipe lacks the options added since: its file stays as it is
    older = tmp_path / "older"
    lora = train(run_config(output=str(older), max_steps=2, checkpoint_every=2)).lora_path
    metadata, weights = read_header(lora)[0], load_file(str(lora))
    recipe = tomllib.loads(metadata[RECIPE_KEY])
    recipe["optim"] = {key: value for key, value in recipe["optim"].items() if not key.startswith("ema")}
    save_file(weights, str(lora), metadata | {RECIPE_KEY: tomli_w.dumps(recipe)})
    before = lora.read_bytes()
    train(run_config(output=str(older), max_steps=2, checkpoint_every=2, resume="auto"))
    assert lora.read_bytes() == before and "not written again" in capsys.readouterr().out
    # --no-metadata: no step in the file to tell it by, but the same file all the same
    quiet = tmp_path / "quiet"
    train(run_config(output=str(quiet), max_steps=2, checkpoint_every=2, no_metadata=True))
    lora = next(quiet.glob("*.safetensors"))
    before = lora.read_bytes()
    train(run_config(output=str(quiet), max_steps=2, checkpoint_every=2, no_metadata=True, resume="auto"))
    assert lora.read_bytes() == before and not (quiet / "archive").exists()


def test_a_run_folder_copied_elsewhere_with_its_dataset_moved_resumes_where_it_now_is(tmp_path, sample_data, capsys):
    """The .toml beside a LoRA names the folder it lies in as the output, and the run's name: a copied run folder
    resumes into the copy (the original untouched); a dataset moved since (its old path gone) is the same run, as
    kohya's and OneTrainer's resumes check no paths, where another dataset at the old path would not be."""
    from lowvram.cli import main

    first = tmp_path / "runs" / "a"
    assert main(["train", "--model", "tiny", "--data", str(sample_data), "--output", str(first), "--max-steps", "2",
                 "--checkpoint-every", "2", "--rank", "2"]) == 0
    original = {path: path.read_bytes() for path in first.rglob("*") if path.is_file()}
    copy, moved = tmp_path / "runs" / "a-v2", tmp_path / "elsewhere" / sample_data.name
    shutil.copytree(first, copy)
    saved = (copy / "a.toml").read_text()  # as an older lowvram saved it (its folder's path), with Windows' CRLF:
    assert 'output = "."' in saved
    older = saved.replace('output = "."', f"output = {json.dumps(str(first))}").replace("\n", "\r\n")
    (copy / "a.toml").write_bytes(older.encode())
    moved.parent.mkdir()
    sample_data.rename(moved)
    capsys.readouterr()
    assert main(["train", "--config", str(copy / "a.toml"), "--data", str(moved), "--resume", "auto", "--max-steps",
                 "3"]) == 0
    out, err = capsys.readouterr()
    assert f"resumed from {copy / 'checkpoints' / 'step-000002'} at step 2" in " ".join(out.split())
    assert f"the run folder it lies in is the output, {copy} (the file names {first})" in " ".join(err.split())
    assert (copy / "a.safetensors").is_file() and (copy / "a-step00000002.safetensors").is_file()
    assert not list(copy.glob("a-v2*"))  # the run keeps its name in a folder of another
    assert {path: path.read_bytes() for path in first.rglob("*") if path.is_file()} == original
    sample_data.mkdir()  # another dataset where the run's was: another run
    shutil.copy(next(moved.rglob("*.png")), sample_data)
    assert main(["train", "--config", str(copy / "a.toml"), "--data", str(sample_data), "--resume", "auto",
                 "--max-steps", "4"]) == 2
    assert "holds another run (--data" in " ".join(capsys.readouterr().err.split())
    # the saved options as a template: a run of its own, named after its folder, or said where it would train
    (tmp_path / "templates").mkdir()
    template = shutil.copy(copy / "a.toml", tmp_path / "templates" / "portrait.toml")
    assert main(["train", "--config", str(template), "--data", str(moved), "--output", str(tmp_path / "new"),
                 "--max-steps", "1"]) == 0
    assert (tmp_path / "new" / "a.safetensors").is_file()  # the run's name, which its renamed folder made explicit
    assert main(["train", "--config", str(template), "--data", str(moved), "--max-steps", "1", "--rank", "0"]) == 2
    assert (f"--config {template}: a run's saved options, away from its run folder: this run trains in "
            f"{tmp_path / 'templates'} as a; give --output DIR" in " ".join(capsys.readouterr().err.split()))


def test_a_run_folder_an_older_lowvram_wrote_and_moved_since_resumes_where_it_now_is(tmp_path, sample_data, capsys):
    """An older lowvram's .toml (no header) names the run folder's absolute path: a folder moved since (a Drive
    mounted elsewhere) started the run over at the old path with --resume auto."""
    from lowvram.cli import main

    first = tmp_path / "runs" / "a"
    assert main(["train", "--model", "tiny", "--data", str(sample_data), "--output", str(first), "--max-steps", "2",
                 "--checkpoint-every", "2", "--rank", "2"]) == 0
    saved = (first / "a.toml").read_text()
    (first / "a.toml").write_text(saved.split("\n", 1)[1].replace('output = "."', f"output = {json.dumps(str(first))}"))
    moved = tmp_path / "drive" / "a"
    moved.parent.mkdir()
    first.rename(moved)
    capsys.readouterr()
    assert main(["train", "--config", str(moved / "a.toml"), "--resume", "auto", "--max-steps", "3"]) == 0
    out, err = capsys.readouterr()
    assert f"resumed from {moved / 'checkpoints' / 'step-000002'} at step 2" in " ".join(out.split())
    assert (f"the folder the file names ({first}) none: the folder was moved since; the run resumes in {moved}"
            in " ".join(err.split())), err
    assert not first.exists() and (moved / "a-step00000002.safetensors").is_file()
    # the user's own config there, for a run into a new folder: trained there, as it says
    text = (moved / "a.toml").read_text()
    (moved / "a.toml").write_text(re.sub(r'(?m)^output = .*$', f"output = {json.dumps(str(tmp_path / 'a_v2'))}", text))
    assert main(["train", "--config", str(moved / "a.toml"), "--resume", "auto", "--max-steps", "1"]) == 0
    assert "was moved since" not in capsys.readouterr().err and list((tmp_path / "a_v2").glob("*.safetensors"))


def test_a_run_started_from_a_lora_resumes_without_it(tmp_path, sample_data, capsys):
    """The checkpoint holds the adapters: the LoRA a run started from (--network-weights, kept in its .toml) may be
    gone when it resumes, and is said not to be read; a new start under --resume auto still needs it."""
    from lowvram.cli import main

    common = ["--model", "tiny", "--data", str(sample_data), "--rank", "2", "--max-steps", "2"]
    assert main(["train", *common, "--output", str(tmp_path / "parent")]) == 0
    start = tmp_path / "start.safetensors"
    shutil.move(tmp_path / "parent" / "parent.safetensors", start)
    assert main(["train", *common, "--output", str(tmp_path / "child"), "--network-weights", str(start),
                 "--checkpoint-every", "2"]) == 0
    bare = ["--model", "tiny", "--data", str(sample_data), "--output", str(tmp_path / "bare"), "--network-weights",
            str(start), "--checkpoint-every", "1"]  # its rank the file's
    assert main(["train", *bare, "--max-steps", "1"]) == 0
    start.unlink()
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "child" / "child.toml"), "--resume", "auto", "--max-steps",
                 "3"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"--network-weights {start} is not read: the run resumes from its checkpoint" in said
    # another LoRA given to the resume: not read, yet the run's .toml and its LoRA's recipe named it
    other = tmp_path / "other.safetensors"
    assert main(["train", "--config", str(tmp_path / "child" / "child.toml"), "--resume", "auto", "--max-steps", "4",
                 "--network-weights", str(other)]) == 2
    assert (f"--network-weights {other}: the run resumes from its checkpoint, which holds its adapters (it started "
            f"from {start}), so it would not be read; drop it, or start a new run from it in another --output"
            in " ".join(capsys.readouterr().err.split()))
    assert main(["train", *bare, "--max-steps", "2", "--resume", "auto"]) == 2  # the file's rank unread: the default's
    assert (f"holds another run (--rank 2 there, 16 here; --alpha 2.0 there, 16.0 here) (--network-weights {start} is "
            f"gone, so the options it gave are not read: --config {tmp_path / 'bare' / 'bare.toml'} gives them)"
            in " ".join(capsys.readouterr().err.split()))
    assert main(["train", *common, "--output", str(tmp_path / "new"), "--network-weights", str(start), "--resume",
                 "auto"]) == 2
    assert (f"--network-weights: file not found: {start} (--resume auto finds no checkpoint in {tmp_path / 'new'}"
            in " ".join(capsys.readouterr().err.split()))


def test_a_lora_of_another_family_to_start_from_is_refused_before_any_caching(tmp_path, sample_data, capsys):
    """An SD1.5 LoRA given to an SDXL run was refused only once the caches were filled, and by its layers (as a
    --lora-layers mismatch), not by the family its metadata names."""
    from lowvram.cli import main

    common = ["--data", str(sample_data), "--rank", "2", "--max-steps", "1"]
    assert main(["train", "--model", "tiny", *common, "--output", str(tmp_path / "sd")]) == 0
    capsys.readouterr()
    lora = tmp_path / "sd" / "sd.safetensors"
    assert main(["train", "--model", "tiny-sdxl", *common, "--output", str(tmp_path / "xl"), "--network-weights",
                 str(lora)]) == 2
    out, err = capsys.readouterr()
    assert (f"--network-weights: {lora} is a LoRA for lowvram's built-in tiny demo model (its metadata says), not "
            "for tiny SDXL" in " ".join(err.split()))
    assert "caching" not in out and "cache " not in out


def test_a_resume_that_trains_nothing_leaves_the_lora_and_a_longer_schedule_is_said(tmp_path, capsys):
    """A finished run resumed with another --lr, or an end before its step, took no step yet rewrote its LoRA and
    .toml with options none of its steps trained with; a cosine laid over more steps raised the rate unsaid."""
    out = tmp_path / "out"
    first = train(run_config(output=str(out), max_steps=4, scheduler="cosine", lr=1e-3))
    before = {path: path.read_bytes() for path in (first.lora_path, out / "out.toml", out / "metrics.jsonl")}
    for options in ({"lr": 5e-3, "max_steps": 4}, {"max_steps": 2}):
        capsys.readouterr()
        with pytest.raises(LowvramError, match=r"--resume: nothing left to train, and .* would change no step of it: "
                                               r".*out.safetensors stands as step 4's LoRA"):
            train(run_config(output=str(out), scheduler="cosine", resume="auto", **({"lr": 1e-3} | options)))
        assert "the steps from 5 train with" not in capsys.readouterr().out  # (said, then refused)
    assert {path: path.read_bytes() for path in before} == before  # metrics.jsonl too: its end line, "finished",
    # stays the run's (a refusal that changed nothing wrote "failed" over it, for a dashboard reading it)
    # a LoRA of another step than the checkpoint's (a kill between a later checkpoint and its LoRA): written anew
    # from the checkpoint, whatever the options, as before
    train(run_config(output=str(out), max_steps=6, scheduler="cosine", lr=1e-3, resume="auto"))
    shutil.copy(out / "out-step00000004.safetensors", first.lora_path)
    train(run_config(output=str(out), max_steps=6, scheduler="cosine", lr=5e-3, resume="auto"))
    assert read_header(first.lora_path)[0]["ss_steps"] == "6"
    capsys.readouterr()
    train(run_config(output=str(out), max_steps=12, scheduler="cosine", lr=1e-3, resume="auto"))
    said = " ".join(capsys.readouterr().out.split())
    assert re.search(r"note: --scheduler cosine is laid over the run's 12 steps: the learning rate goes from "
                     r"\S+ at step 6 to \S+", said), said


def test_checkpoints_every_epoch_come_with_each_epochs_end(tmp_path):
    """A notebook user thinks in epochs, as kohya's save_state with save_every_n_epochs: --checkpoint-every 1e was
    refused ('expected a whole number'), and the first checkpoint came after 30 minutes."""
    from PIL import Image

    folder = tmp_path / "data" / "1_dot"
    folder.mkdir(parents=True)
    for n in range(2):
        Image.new("RGB", (64, 64), (120 * n, 40, 40)).save(folder / f"{n}.png")
    train(run_config(data=str(tmp_path / "data"), output=str(tmp_path / "out"), max_steps=None, epochs=3,
                     checkpoint_every="1e", keep_checkpoints=5))
    assert sorted(path.name for path in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "step-000002", "step-000004", "step-000006"]  # two steps an epoch; the last at the end, as always


def test_a_run_saving_by_epochs_trained_further_keeps_its_earlier_final_lora_under_its_epochs_name(tmp_path):
    """--save-every 1e, then --epochs raised: the earlier final LoRA of epoch 2 was kept as <name>-step00000004, a
    name of no epoch, which a kohya user picking the best epoch's save did not find."""
    from PIL import Image

    folder = tmp_path / "data" / "1_dot"
    folder.mkdir(parents=True)
    for n in range(2):
        Image.new("RGB", (64, 64), (120 * n, 40, 40)).save(folder / f"{n}.png")
    options = {"data": str(tmp_path / "data"), "output": str(tmp_path / "out"), "max_steps": None, "save_every": "1e"}
    train(run_config(epochs=2, **options))
    train(run_config(epochs=3, resume="auto", **options))
    assert sorted(path.name for path in (tmp_path / "out").glob("*.safetensors")) == [
        "out-000001.safetensors", "out-000002.safetensors", "out.safetensors"]
    assert read_header(tmp_path / "out" / "out-000002.safetensors")[0]["ss_steps"] == "4"


def test_a_resume_without_its_options_names_the_runs_toml(tmp_path, sample_data, capsys):
    """--resume with the state folder alone, as kohya's --resume takes it: "--data: no dataset given" and
    "--model: which base model?" said nothing of the options file the run wrote beside its checkpoints."""
    out = tmp_path / "out"
    train(run_config(output=str(out), data=str(sample_data), max_steps=2, checkpoint_every=1))
    capsys.readouterr()
    # an earlier run's options under another --name stay in the folder: the one named is the run's the record names
    (out / "an-earlier-name.toml").write_bytes((out / "out.toml").read_bytes())
    for resume, extra in (("auto", ["--output", str(out)]), (str(out / "checkpoints" / "step-000001"), [])):
        assert main(["train", "--resume", resume, *extra]) == 2
        assert capsys.readouterr().err.strip() == (
            f"lowvram train: error: --resume: a resume needs the run's options too, which {out / 'out.toml'} holds: "
            f"lowvram train --config {out / 'out.toml'} --resume {resume}")


def test_a_run_resumed_through_a_link_to_its_dataset_and_output_is_the_same_run(tmp_path, sample_data):
    """A Colab notebook's link without spaces to "/content/drive/MyDrive/Lora Training" (or Drive's older
    "My Drive"): the same folders, recorded by another path, were "another run (--data ... there, ... here)"."""
    from lowvram.cli import main

    drive = tmp_path / "MyDrive" / "Lora Training"
    shutil.copytree(sample_data, drive / "dataset")
    assert main(["train", "--model", "tiny", "--data", str(drive / "dataset"), "--output", str(drive / "runs" / "a"),
                 "--max-steps", "2", "--checkpoint-every", "1"]) == 0
    (tmp_path / "lt").symlink_to(drive)
    assert main(["train", "--model", "tiny", "--data", str(tmp_path / "lt" / "dataset"), "--output",
                 str(tmp_path / "lt" / "runs" / "a"), "--max-steps", "3", "--checkpoint-every", "1",
                 "--resume", "auto"]) == 0
