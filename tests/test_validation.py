"""Validation and early stopping on the tiny model: a held-out split chosen by the seed, a loss that only
changes when the weights do, a run that stops when that loss stops improving, and the best LoRA kept."""

import json
import re

import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file

from lowvram.data.check import hold_out
from lowvram.data.scan_report import ScanReport
from lowvram.errors import LowvramError
from lowvram.train.loop import train
from lowvram.train.validation import EarlyStopping, fixed_timesteps, validation_loss


def test_the_held_out_split_is_fixed_by_the_seed_and_disjoint(sample_data):
    from lowvram.data.buckets import default_buckets
    from lowvram.data.folders import ScanOptions
    from lowvram.data.scan import scan_dataset

    records = scan_dataset(sample_data, default_buckets(64, 16), ScanOptions()).usable
    train_a, held_a = hold_out(records, 0.34, seed=1)
    _, held_b = hold_out(list(reversed(records)), 0.34, seed=1)
    assert len(held_a) == 2 and len(train_a) == 4
    assert {r.path for r in held_a} == {r.path for r in held_b}  # order of the scan does not matter
    assert not {r.path for r in held_a} & {r.path for r in train_a}
    assert {r.path for r in hold_out(records, 0.34, seed=2)[1]} != {r.path for r in held_a} or len(records) < 4
    with pytest.raises(LowvramError, match="--validation-split"):
        hold_out(records[:1], 0.5, seed=1)


def test_the_copies_of_a_held_out_image_are_held_out_with_it(sample_data, tmp_path):
    """A messy dataset's copies (one image under two names, in two folders): one trained and its copy validated,
    the validation loss told how well it was learnt."""
    import shutil

    from lowvram.data.buckets import default_buckets
    from lowvram.data.folders import ScanOptions
    from lowvram.data.scan import scan_dataset

    data = tmp_path / "copied"
    shutil.copytree(sample_data / "5_lvshape", data / "5_lvshape")
    shutil.copytree(sample_data / "5_lvshape", data / "2_copies")
    records = scan_dataset(data, default_buckets(64, 16), ScanOptions()).usable
    for seed in range(6):
        trained, held = hold_out(records, 0.2, seed=seed)
        assert held and not {r.sha256 for r in held} & {r.sha256 for r in trained}
        assert len(trained) + len(held) == len(records)
    copies = [r for r in records if r.sha256 == records[0].sha256]
    with pytest.raises(LowvramError, match="copies of one image; holding some out leaves none to train"):
        hold_out(copies, 0.5, seed=1)
    other = next(r for r in records if r.sha256 != records[0].sha256)
    for seed in range(10):  # two images, one of them twice: one of the two held out, never both
        trained, held = hold_out([*copies, other], 0.5, seed=seed)
        assert trained and held and len({r.sha256 for r in held}) == 1


def test_the_images_held_out_are_named_by_the_run(tmp_path):
    """The run said "3 for validation" alone: a phone's resized copy of a held-out photo trained, unseen."""
    import io

    from rich.console import Console

    printed = io.StringIO()
    train(run_config(output=str(tmp_path / "out"), validation_split=0.34, max_steps=1), Console(file=printed,
                                                                                                width=300))
    said = printed.getvalue()
    line = next(line for line in said.splitlines() if line.startswith("held out for validation"))
    assert line.startswith("held out for validation (--validation-split 0.34): 5_lvshape/") and line.count(".png") == 2
    assert line.endswith("would score what the LoRA learnt, not how it does on new images")


def test_fixed_timesteps_spread_over_the_schedule():
    assert fixed_timesteps(4, 0, 1000) == [125, 375, 625, 875]
    assert fixed_timesteps(4, 500, 700) == [525, 575, 625, 675]  # --min-timestep 500 --max-timestep 700


def test_early_stopping_counts_validations_without_a_new_best():
    stopping = EarlyStopping(patience=2)
    assert stopping.update(10, 1.0) and not stopping.stop
    assert stopping.update(20, 0.9)
    assert not stopping.update(30, 0.95) and not stopping.stop
    assert not stopping.update(40, 0.9) and stopping.stop  # equal is not better
    restored = EarlyStopping.restore(2, 0.0, json.loads(json.dumps(stopping.state())))
    assert (restored.best, restored.best_step, restored.since_best, restored.stop) == (0.9, 20, 2, True)


def test_early_stopping_delta_asks_an_improvement_to_beat_the_last_by_more_and_best_stays_the_lowest():
    stopping = EarlyStopping(patience=2, min_delta=0.01)
    assert stopping.update(10, 1.0)
    assert stopping.update(20, 0.995) and stopping.since_best == 1  # the lowest yet (-best), but no improvement
    assert stopping.update(30, 0.98) and stopping.since_best == 0  # 0.02 below the last improvement (1.0)
    assert stopping.update(40, 0.975) and not stopping.update(50, 0.979) and stopping.stop
    assert (stopping.best, stopping.best_step) == (0.975, 40)
    assert "lower than 0.98000 by more than 0.01 in 2 validations" in stopping.no_improvement()
    restored = EarlyStopping.restore(2, 0.01, json.loads(json.dumps(stopping.state())))
    assert (restored.min_delta, restored.best, restored.mark, restored.stop) == (0.01, 0.975, 0.98, True)
    small_steps = EarlyStopping(patience=2, min_delta=0.01)  # steady small gains add up to improvements
    assert all(small_steps.update(step, loss) for step, loss in enumerate([1.0, 0.994, 0.988, 0.982]))
    assert not small_steps.stop and small_steps.mark == 0.988
    older = EarlyStopping.restore(2, 0.01, {"best": 0.9, "best_step": 5, "since_best": 1, "history": []})
    assert older.mark == 0.9  # a checkpoint written before the mark was kept


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    """A run whose learning rate is far too high: its validation loss gets worse, so it must stop early."""
    out = tmp_path_factory.mktemp("early")
    config = run_config(output=str(out), validation_split=0.34, validate_every=2, early_stopping=3, max_steps=40,
                        lr=0.5, rank=4, save_every="2", save_precision="fp32")
    return config, train(config)


def test_a_run_stops_when_validation_stops_improving_and_keeps_the_best(diverging):
    config, result = diverging
    history = result.validation.history
    assert result.steps < 40, "the run did not stop early"
    assert [s for s, _ in history] == list(range(2, result.steps + 1, 2))
    losses = [loss for _, loss in history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert best == len(losses) - 1 - 3  # stopped exactly `patience` validations after the best
    assert result.validation.best_step == history[best][0]

    out = config.output_dir
    best_file = load_file(out / f"{config.output_name}-best.safetensors")
    at_best = load_file(out / f"{config.output_name}-step{history[best][0]:08d}.safetensors")
    assert best_file.keys() == at_best.keys()
    assert all(torch.equal(best_file[k], at_best[k]) for k in best_file)
    final = load_file(result.lora_path)
    assert any(not torch.equal(final[k], best_file[k]) for k in final)  # the final LoRA is the last weights

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in logged if "validation_loss" in r]
    assert [(r["step"], r["validation_loss"]) for r in validations] == [tuple(h) for h in history]


def test_an_early_stopped_run_resumed_stays_stopped_and_keeps_its_files(diverging, tmp_path, capsys):
    """Every "Run all" of the notebook resumes: the stop stands, no step is taken and no LoRA is set aside."""
    import dataclasses
    import shutil

    config, result = diverging
    out = tmp_path / "copy"
    shutil.copytree(config.output_dir, out)
    before = {path.name: load_file(path) for path in out.glob("*.safetensors")}
    again = train(dataclasses.replace(config, output=dataclasses.replace(config.output, output=str(out),
                                                                         name=config.output_name),
                                      training=dataclasses.replace(config.training, resume="auto")))
    printed = " ".join(capsys.readouterr().out.split())
    assert f"nothing left to train: the run stopped early at step {result.steps}" in printed
    assert again.steps == result.steps and "kept the run's earlier final LoRA" not in printed
    after = {path.name: load_file(path) for path in out.glob("*.safetensors")}
    assert after.keys() == before.keys()
    final, earlier = (files[f"{config.output_name}.safetensors"] for files in (after, before))
    assert all(torch.equal(final[key], earlier[key]) for key in earlier)  # the same weights, written again


def test_the_validation_loss_depends_only_on_the_weights(diverging):
    _, result = diverging
    model, data = result.model, result.data
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(model.pipeline.scheduler.config)
    samples = data.samples[:2]

    def score():
        return validation_loss(model.unet, scheduler, model.family, data, samples, fixed_timesteps(4, 0, 1000), 42,
                               torch.device("cpu"), torch.float32, _no_autocast)

    first, second = score(), score()
    assert first == second and first[1] == 8  # 2 images x 4 timesteps
    with torch.no_grad():
        next(p for p in model.unet.parameters() if p.requires_grad).add_(0.1)
    assert score()[0] != first[0]


def test_a_live_encoded_caption_is_read_as_training_reads_it(diverging):
    """With the text encoder training, validation encodes each caption itself: its secondary separator read as
    the tag separator, as training reads it (it encoded the raw text)."""
    import dataclasses

    from diffusers import DDPMScheduler

    _, result = diverging
    model, data = result.model, result.data
    scheduler = DDPMScheduler.from_config(model.pipeline.scheduler.config)
    joined = dataclasses.replace(data.samples[0], caption="lvshape;;;red circle, plain background")
    plain = dataclasses.replace(data.samples[0], caption="lvshape,red circle, plain background")
    own = dataclasses.replace(data.captions, secondary_separator=";;;")

    def score(sample):
        return validation_loss(model.unet, scheduler, model.family, data, [dataclasses.replace(sample, captions=own)],
                               fixed_timesteps(2, 0, 1000), 42, torch.device("cpu"), torch.float32, _no_autocast,
                               model.text_encoders, model.tokenizers)

    assert score(joined) == score(plain)


def _no_autocast():
    import contextlib

    return contextlib.nullcontext()


def test_validation_options_need_a_validation_set():
    with pytest.raises(LowvramError, match="--early-stopping: needs a validation set"):
        run_config(early_stopping=3)
    with pytest.raises(LowvramError, match="can't use both"):
        run_config(validation_split=0.1, validation_data=".")
    with pytest.raises(LowvramError, match="--early-stopping-delta: has no effect without --early-stopping"):
        run_config(validation_split=0.1, early_stopping_delta=0.01)
    with pytest.raises(LowvramError, match="--early-stopping-delta: must be 0 or more"):
        run_config(validation_split=0.1, early_stopping=2, early_stopping_delta=-0.01)


def test_a_validation_folder_is_used_whole(tmp_path, sample_data):
    from lowvram.data.sample import write_sample_dataset

    held = write_sample_dataset(tmp_path / "validation")
    result = train(run_config(output=str(tmp_path / "out"), data=str(sample_data), validation_data=str(held),
                              max_steps=3, validate_every=2))
    assert [s for s, _ in result.validation.history] == [2, 3]  # and the final weights, past the last multiple
    assert isinstance(result.data_reports[0], ScanReport) and len(result.data_reports[0].usable) == 6


def test_a_validation_folders_captions_get_the_trigger_word_as_trainings_do(tmp_path, sample_data, monkeypatch):
    """Scored on other conditioning than training's (no trigger word), the loss would measure the wrong thing."""
    from lowvram.data.sample import write_sample_dataset
    from lowvram.train import saving

    held = write_sample_dataset(tmp_path / "validation")
    for caption in held.rglob("*.txt"):
        caption.write_text("a shape")
    scored = []
    real = saving.validation_loss

    def validating(unet, noise_scheduler, family, data, samples, *args):
        scored.extend(sample.caption for sample in samples)
        return real(unet, noise_scheduler, family, data, samples, *args)

    monkeypatch.setattr(saving, "validation_loss", validating)
    train(run_config(output=str(tmp_path / "out"), data=str(sample_data), validation_data=str(held), max_steps=2,
                     validate_every=2, trigger_word="zkw"))
    assert len(scored) == 6 and all(caption.startswith("zkw") for caption in scored), scored


def test_a_run_resumed_with_another_validation_split_says_its_held_out_images_changed(tmp_path, capsys):
    """Another split trains other images, and the early-stopping record compares losses of another set: said as a
    changed dataset is (a run from before the checkpoints kept the split resumes as it did)."""
    train(run_config(output=str(tmp_path / "run"), validation_split=0.34, max_steps=2, checkpoint_every=2))
    capsys.readouterr()
    first = json.loads(next((tmp_path / "run").rglob("state.json")).read_text())["validation"]
    assert first["history"] and first["held_out"]
    train(run_config(output=str(tmp_path / "run"), validation_split=0.5, max_steps=4, resume="auto"))
    printed = " ".join(capsys.readouterr().out.split())
    assert "the dataset changed since this checkpoint (1 image held out for validation or back in training" in printed
    assert "in another order than the interrupted run's" in printed  # other images train
    # its best loss scored other images: the record starts over, and the first validation is the new best
    assert "the validation images or their captions changed since the checkpoint: early stopping's record starts " \
           "over" in printed
    assert re.search(r"step 4: validation loss [\d.]+ \(best\)", printed), printed  # not "(best, 0.01 lower)"
    from lowvram.train.checkpoint import data_changes

    assert data_changes({"0:a.png": "aa/bb"}, {"0:a.png": "aa/bb/held out"}) is None  # kept before the split was


def test_a_validation_folder_marks_no_training_image_held_out(tmp_path, sample_data, capsys):
    """Its images are apart from the dataset's, even where their names are the same; copies of training images are
    said to be (their validation loss does not tell overfitting)."""
    import shutil

    shutil.copytree(sample_data, tmp_path / "held")
    train(run_config(data=str(sample_data), validation_data=str(tmp_path / "held"), output=str(tmp_path / "run"),
                     max_steps=2, checkpoint_every=2))
    assert "note: 6 image(s) of --validation-data are copies of training images" in " ".join(
        capsys.readouterr().out.split())
    state = json.loads(next((tmp_path / "run").rglob("state.json")).read_text())
    assert state["data"] and all(facts.endswith("/trained") for facts in state["data"].values())


def test_a_ctrl_c_while_validating_stops_after_the_validation_not_a_step_later(tmp_path, monkeypatch):
    """Validation takes a while, and the step's stop flag was read before it: the run trained one more step."""
    import os
    import signal

    from lowvram.errors import TrainingInterrupted
    from lowvram.train import saving

    real = saving.validate

    def ctrl_c_while_validating(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(saving, "validate", ctrl_c_while_validating)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 2 of 6"):
        train(run_config(output=str(tmp_path), validation_split=0.34, validate_every=2, max_steps=6, name="v"))
    assert (tmp_path / "v-step00000002.safetensors").is_file()


def test_early_stopping_goes_on_when_only_the_encoding_changes_or_validation_pauses(tmp_path, capsys):
    """The same images and captions, cached otherwise (--vae-tiling), score the same set; a run resumed without
    validation keeps the record for one that brings it back."""
    out = str(tmp_path / "run")
    train(run_config(output=out, validation_split=0.34, max_steps=2, checkpoint_every=2))
    capsys.readouterr()
    train(run_config(output=out, validation_split=0.34, max_steps=4, checkpoint_every=2, resume="auto",
                     vae_tiling=True))
    assert "starts over" not in capsys.readouterr().out
    train(run_config(output=out, max_steps=6, checkpoint_every=2, resume="auto"))
    assert "starts over" not in capsys.readouterr().out
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000006" / "state.json").read_text())["validation"]
    assert [step for step, _ in state["history"]] == [2, 4] and state["held_out"]
