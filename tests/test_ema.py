"""--ema: the LoRA saved is diffusers' EMAModel average of the weights each step left, the training itself is
untouched, and an interrupted run resumes to the same average."""

import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file

from lowvram.errors import LowvramError
from lowvram.hardware import load_profile
from lowvram.plan import workload_for
from lowvram.plan.estimate import MemoryStrategy, estimate
from lowvram.resolve import resolve_run
from lowvram.train.loop import train

STEPS = 4


def weights_and_average(tmp_path, **ema) -> tuple[list[dict], dict]:
    """The LoRA each of STEPS steps left, and the LoRA of the same run with `ema`'s options."""
    plain = train(run_config(output=str(tmp_path / "plain"), max_steps=STEPS, save_every="1", save_precision="fp32",
                             lr=1e-2, name="plain"))
    each_step = [load_file(str(tmp_path / "plain" / f"plain-step{step:08d}.safetensors")) for step in (1, 2, 3)]
    each_step.append(load_file(str(plain.lora_path)))
    averaged = train(run_config(output=str(tmp_path / "ema"), max_steps=STEPS, save_precision="fp32", lr=1e-2,
                                ema=True, **ema))
    return each_step, load_file(str(averaged.lora_path))


def test_the_saved_lora_is_the_moving_average_of_what_each_step_left(tmp_path):
    each_step, saved = weights_and_average(tmp_path, ema_decay=0.3)
    # diffusers' EMAModel: the first step copies the weights, then decay min((1 + s) / (10 + s), 0.3) for s = 1, 2, ..
    expected = dict(each_step[0])
    for step, weights in enumerate(each_step[1:], start=1):
        decay = min((1 + step) / (10 + step), 0.3)
        expected = {key: decay * expected[key] + (1 - decay) * weights[key] for key in weights}
    moved = [key for key in saved if not key.endswith(".alpha") and not torch.equal(saved[key], each_step[-1][key])]
    assert moved  # the average is not the last step's weights
    for key, value in saved.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-7)


def test_an_interrupted_run_resumes_to_the_same_average(tmp_path):
    whole = train(run_config(output=str(tmp_path / "whole"), max_steps=STEPS, ema=True, name="lora"))
    train(run_config(output=str(tmp_path / "cut"), max_steps=2, ema=True, name="lora"))
    resumed = train(run_config(output=str(tmp_path / "cut"), max_steps=STEPS, ema=True, name="lora", resume="auto"))
    first, second = load_file(str(whole.lora_path)), load_file(str(resumed.lora_path))
    assert all(torch.equal(first[key], second[key]) for key in first)
    with pytest.raises(LowvramError, match=r"holds another run \(--ema-decay 0.999 there, 0.9 here\)"):
        train(run_config(output=str(tmp_path / "cut"), max_steps=6, ema=True, ema_decay=0.9, resume="auto"))


def test_what_ema_cannot_do_is_refused_and_the_planner_counts_its_copy():
    with pytest.raises(LowvramError, match="--ema: schedulefree_adamw averages its weights already"):
        run_config(ema=True, optimizer="schedulefree_adamw", scheduler="constant")
    for decay in (1.5, 1.0):  # (an average of decay 1 never moves from the untrained adapters)
        with pytest.raises(LowvramError, match=r"--ema-decay: must be in \(0, 1\)"):
            run_config(ema=True, ema_decay=decay)
    hardware = load_profile("rtx-3060-12gb")
    config = run_config(model="sd15", ema=True)
    work = workload_for(resolve_run(config, hardware))
    training = estimate(work, MemoryStrategy("bf16", False, "adamw"), hardware).vram["training"]
    assert training["EMA"] == training["LoRA"] > 0


def test_ema_every_averages_every_nth_steps_weights_as_onetrainers_interval_does(tmp_path):
    each_step, saved = weights_and_average(tmp_path, ema_decay=0.3, ema_every=2)
    # updates after steps 2 and 4 only: the first copies step 2's weights, the second mixes in step 4's
    decay = min((1 + 1) / (10 + 1), 0.3)
    for key, value in saved.items():
        torch.testing.assert_close(value, decay * each_step[1][key] + (1 - decay) * each_step[3][key], rtol=1e-5,
                                   atol=1e-7)
    with pytest.raises(LowvramError, match="--ema-every 2: there is no average without --ema"):
        run_config(ema_every=2)


def test_a_text_encoder_frozen_by_text_encoder_until_keeps_its_average(tmp_path):
    """diffusers' EMAModel.step copies a parameter that no longer trains over its average; OneTrainer's keeps the
    average, and so does lowvram's: the text encoder's part of the LoRA stays the average of its training steps."""
    settings = {"max_steps": STEPS, "save_precision": "fp32", "lr": 1e-2, "train_text_encoder": True,
                "text_encoder_until": "2"}
    raw = load_file(str(train(run_config(output=str(tmp_path / "raw"), **settings)).lora_path))
    averaged = load_file(str(train(run_config(output=str(tmp_path / "ema"), ema=True, ema_decay=0.5,
                                              **settings)).lora_path))
    text = [key for key in raw if key.startswith("lora_te_") and key.endswith("lora_up.weight")]
    assert text and any(not torch.equal(raw[key], averaged[key]) for key in text)
