"""What a run does between its steps: the --save-every LoRAs it writes and keeps, the modes sampling and validation
leave the models in, what validation scores, and the schedule's epoch and --text-encoder-until arithmetic."""

import bisect
import itertools
import json
import math
from types import SimpleNamespace

import pytest
from conftest import run_config
from safetensors import safe_open

from lowvram.data.check import hold_out
from lowvram.train import saving
from lowvram.train.loop import train
from lowvram.train.schedule import plan_schedule
from lowvram.train.validation import EarlyStopping


def test_sampling_and_validation_see_the_lora_in_eval_mode_and_training_goes_on_in_train_mode(tmp_path, monkeypatch,
                                                                                               text_encoder_modes):
    """Adapter dropout is off while a sample grid is drawn or validation scores, and on again after each: a run
    that samples must not train its remaining steps without the dropout it asked for. Validation scores only the
    timesteps the run trains, and with the text encoders it trains, their captions encoded live."""
    step_modes, render_modes, scored = text_encoder_modes, [], []
    real_render, real_validation = saving.render_grid, saving.validation_loss

    def rendering(model, *args, **kwargs):
        render_modes.append([m.training for m in (model.unet, *model.text_encoders)])
        return real_render(model, *args, **kwargs)

    def validating(unet, noise_scheduler, family, data, samples, timesteps, *args):
        scored.append((unet.training, timesteps, args[-3] is not None))
        return real_validation(unet, noise_scheduler, family, data, samples, timesteps, *args)

    monkeypatch.setattr(saving, "render_grid", rendering)
    monkeypatch.setattr(saving, "validation_loss", validating)
    result = train(run_config(output=str(tmp_path), max_steps=6, train_text_encoder=True, dropout=0.1,
                              sample_every="2", sample_prompts=["a red circle"], validation_split=0.34,
                              validate_every=2, min_timestep=500, max_timestep=700))
    assert result.steps == 6 and len(step_modes) == 6 and all(all(modes) for modes in step_modes), step_modes
    # steps 2 and 4 (step 6's grid is put together from the final samples, drawn after the steps)
    assert len(render_modes) == 2 and not any(any(modes) for modes in render_modes), render_modes
    assert len(scored) == 3
    for unet_training, timesteps, live_text in scored:
        assert not unet_training and live_text and all(500 <= t < 700 for t in timesteps), timesteps


def test_save_every_two_epochs_saves_the_even_ones_and_keep_saves_keeps_the_newest(tmp_path, capsys):
    """5 epochs, --save-every 2e: the LoRAs of epochs 2 and 4 (the 5th is the final LoRA); --keep-saves 1 leaves
    epoch 4's, which records the epochs it trained. Each save is said as it is written, with the checkpoint of
    the same step (a notebook's piped log shows what is on the disk)."""
    name = tmp_path.name
    result = train(run_config(output=str(tmp_path), epochs=5, max_steps=None, batch_size=6, save_every="2e",
                              keep_saves=1, checkpoint_every=10, sample_every="4e", sample_prompts=["a red circle"],
                              sample_steps=2))
    assert result.epochs == 5
    printed = capsys.readouterr().out.splitlines()
    assert "loading tiny" in printed  # no spinner in a log: a line says what takes the time
    said = [line for line in printed if line.startswith("step ") and ": " in line]
    assert said == [(f"step 10: saved {tmp_path / f'{name}-000002.safetensors'}; checkpoint "
                    f"{tmp_path / 'checkpoints' / 'step-000010'}"),
                    (f"step 20: saved {tmp_path / f'{name}-000004.safetensors'}; removed {name}-000002.safetensors "
                     f"(--keep-saves 1); checkpoint {tmp_path / 'checkpoints' / 'step-000020'}"),
                    f"step 20: samples {tmp_path / 'samples' / f'{name}-step00000020.png'}"], said
    saves = sorted(p.name for p in tmp_path.glob(f"{name}-0*.safetensors"))
    assert saves == [f"{name}-000004.safetensors"]
    with safe_open(str(tmp_path / saves[0]), framework="pt") as saved:
        assert saved.metadata()["ss_epoch"] == "4"


def test_loraplus_logs_the_rate_the_a_matrices_learn_at(tmp_path):
    """The logged learning rate is --lr (the A matrices'), not the B matrices' ratio times it."""
    train(run_config(output=str(tmp_path), max_steps=2, lr=1e-4, scheduler="constant", loraplus_ratio=16))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if "lr" in r] == pytest.approx([1e-4, 1e-4])


def test_text_encoders_frozen_by_text_encoder_until_run_in_eval_mode(tmp_path, text_encoder_modes):
    """Frozen, their adapters' dropout is off: the conditioning the U-Net trains on stops being noised."""
    modes = text_encoder_modes
    train(run_config(output=str(tmp_path), max_steps=4, train_text_encoder=True, dropout=0.1, text_encoder_until="2"))
    assert [all(m) for m in modes] == [True, True, False, False] and not any(any(m) for m in modes[2:]), modes


def test_text_encoder_until_in_epochs_and_percent_and_the_epochs_a_step_past_the_last_begins(tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=1, batch_size=6))
    per_epoch = plan_schedule(run_config(), result.data, 1).steps_per_epoch
    assert per_epoch == 5  # 6 images, 5 repeats, 6 a batch
    for until, step in (("1e", 5), ("2e", 10), ("50%", 6), ("25%", 3)):
        config = run_config(max_steps=12, train_text_encoder=True, text_encoder_until=until)
        assert plan_schedule(config, result.data, 1).text_encoder_until == step, until
    schedule = plan_schedule(run_config(max_steps=7), result.data, 1)
    assert [schedule.epochs_at(s) for s in (0, 1, 5, 6, 7)] == [0, 1, 1, 2, 2]
    assert schedule.epochs_at(11) == math.ceil(11 / 5)


def test_the_epochs_a_run_reaches_count_its_last_one_by_its_own_length():
    """A fractional share of a folder over five buckets: an epoch draws 8 of its 40 images, in 1 to 5 batches of 8
    as they fall. A --max-steps run's last epoch, longer than the first, was counted by the first's length: the
    progress line's and ss_num_epochs' count came out higher."""
    from lowvram.data.epochs import Epochs, Sample

    samples = [Sample((f"{i}",), (), "x", (64 * (1 + i % 5), 64), 0.2, group="g") for i in range(40)]
    data = Epochs(samples, [], 8, 21)
    lengths = [len(data.epoch_batches(epoch, shuffled=False)) for epoch in range(12)]
    assert max(lengths) >= lengths[0] + 2  # the premise: a later epoch well longer than the first (seed 21: 3, 5)
    ends = list(itertools.accumulate(lengths))
    for total in range(1, ends[-1] + 1):
        schedule = plan_schedule(run_config(max_steps=total, batch_size=8), data, 1)
        assert schedule.epochs_at(total) == bisect.bisect_left(ends, total) + 1, total


def test_a_resumed_schedule_counts_the_epochs_the_checkpoint_ended_before_it():
    """A checkpoint a batch into epoch 2 (of 30 batches), resumed at 4 batches a step: epoch 1 ended before its step
    (it was put at it, which drew a sample grid there and counted one epoch less); a run asked to end before its
    checkpoint is where the checkpoint stands, not -2.25 epochs."""
    from lowvram.data.epochs import Epochs, Sample

    data = Epochs([Sample((f"{i}",), (), "x", (64, 64), 1.0) for i in range(30)], [], 1, 0)
    schedule = plan_schedule(run_config(max_steps=40, gradient_accumulation=4), data, 1, (31, 1, 1))
    assert schedule.epochs_done_at(31) is None and schedule.epochs_at(31) == 2 and schedule.epochs_done_at(39) == 2
    assert plan_schedule(run_config(max_steps=40, gradient_accumulation=4), data, 1, (30, 0, 30)).epochs_done_at(30) == 1
    assert plan_schedule(run_config(max_steps=20, gradient_accumulation=4), data, 1, (31, 1, 1)).epochs == \
        pytest.approx(1 + 1 / 30)


def test_a_validation_split_holds_out_at_least_one_image_and_never_all():
    records = [SimpleNamespace(sha256=f"{i:064x}", relpath=f"{i}.png") for i in range(6)]
    assert [len(part) for part in hold_out(records[:3], 0.9, 0)] == [1, 2]
    assert [len(part) for part in hold_out(records, 0.05, 0)] == [5, 1]
    held = {r.relpath for r in hold_out(records, 0.5, 7)[1]}
    assert held == {r.relpath for r in hold_out(list(reversed(records)), 0.5, 7)[1]}  # by content, not order


def test_early_stopping_restored_from_a_checkpoint_keeps_its_history():
    stopping = EarlyStopping(3, 0.0)
    for step, loss in ((2, 0.5), (4, 0.4), (6, 0.45)):
        stopping.update(step, loss)
    restored = EarlyStopping.restore(3, 0.0, json.loads(json.dumps(stopping.state())))
    assert restored == stopping and restored.history == [(2, 0.5), (4, 0.4), (6, 0.45)]


def test_saves_are_named_as_kohya_names_them_and_an_earlier_lowvrams_count_with_them(tmp_path):
    """Upload scripts and <lora:name-000004> prompts go by kohya's names (its EPOCH_FILE_NAME and STEP_FILE_NAME);
    a run continued from an earlier lowvram's folder prunes its -e0002 saves with the new ones. Another run's file
    named by a date (x-240101, x-2024) is none of them: --keep-saves deleted it."""
    import torch
    from safetensors.torch import save_file

    from lowvram.run_files import epoch_save, step_save
    from lowvram.train.outdir import is_save_of
    from lowvram.train.saving import older_saves

    assert (epoch_save("x", 4), step_save("x", 500)) == ("x-000004", "x-step00000500")
    for name, epoch, run in (("x-e0002", "2", "x"), ("x-000004", "4", "x"), ("x-000006", "6", "x"),
                             ("x-step00000006", "3", "x"), ("x-best", "1", "x"), ("x", "6", "x"), ("x-2", "9", "x-2"),
                             ("xy-000002", "2", "xy"), ("x-240101", "10", "x-240101"), ("x-2024", "1", "x-2024")):
        save_file({"w": torch.zeros(1)}, str(tmp_path / f"{name}.safetensors"), {"ss_epoch": epoch,
                                                                                  "ss_output_name": run})
    save_file({"w": torch.zeros(1)}, str(tmp_path / "x-000008.safetensors"))  # --no-metadata's: nothing says not
    assert [p.name for p in older_saves(tmp_path, "x", (2, "epochs"), 2)] == ["x-e0002.safetensors",
                                                                             "x-000004.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir() if is_save_of("x", p)) == [
        "x-000004.safetensors", "x-000006.safetensors", "x-000008.safetensors", "x-best.safetensors",
        "x-e0002.safetensors", "x-step00000006.safetensors", "x.safetensors"]
