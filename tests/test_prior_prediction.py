"""--prior-prediction (OneTrainer's prior prediction): regularization images are trained toward the model's own
prediction with the adapters off, so a fresh LoRA has nothing to learn from them, a changed one is pulled back to
the model, and the adapters are on again after; their batches know it on the host; it needs regularization
images; a OneTrainer prior prediction concept turns it on. --masked-prior-weight holds the area outside the masks
to the same prediction."""

import json
import random
import shutil

import pytest
import torch
from conftest import image_folders, run_config
from test_loss import tiny_step_inputs
from test_masks import left_half_white, masked_dataset

from lowvram.adapters import networks
from lowvram.configure import build_config, with_dataset_settings
from lowvram.dataset_files import read_dataset
from lowvram.errors import LowvramError
from lowvram.train.loop import train
from lowvram.train.loss import Objective, diffusion_loss


def test_prior_rows_learn_the_models_own_prediction_and_the_adapters_come_back():
    model, scheduler, latents, noise, _, conditioning = tiny_step_inputs()
    params = networks.add_adapter(model.unet, model.family.lora_targets("unet"), 4, 4.0, 0.0)
    timesteps, prior = torch.tensor([100, 700]), torch.tensor([True, False])
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.no_grad():
        base = model.unet(noisy, timesteps, **conditioning).sample

    def loss():
        return diffusion_loss(model.unet, scheduler, latents, conditioning, noise, timesteps, prior=prior,
                              weights=torch.tensor([1.0, 0.0]))  # the prior row alone

    assert loss().item() == 0.0  # a fresh LoRA predicts what the model does: nothing to learn from the prior row
    with torch.no_grad():
        for param in params:
            param.add_(0.05 * torch.randn_like(param))
    got = loss()
    adapted = model.unet(noisy, timesteps, **conditioning).sample
    # the batch's mean: the prior row's error against the model, the other row weighted out
    assert got.item() == pytest.approx(torch.nn.functional.mse_loss(adapted[:1], base[:1]).item() / 2, rel=1e-5)
    assert got.item() > 0 and got.requires_grad
    assert all(param.requires_grad for param in params)  # the adapters are back on, with their gradients
    assert not torch.allclose(adapted, base)


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_a_run_with_prior_prediction_trains_its_regularization_images_toward_the_model(tmp_path, sample_data,
                                                                                        train_text_encoder):
    """With the text encoders training, the model's own prediction reads the captions without their adapters."""
    reg = tmp_path / "reg" / "1_shape"
    shutil.copytree(sample_data / "5_lvshape", reg)
    runs = {prior: train(run_config(data=str(sample_data), reg_data=str(tmp_path / "reg"), batch_size=2,
                                    prior_prediction=prior, max_steps=1, output=str(tmp_path / f"out{prior}"),
                                    train_text_encoder=train_text_encoder))
            for prior in (False, True)}
    # step 1 trains a fresh LoRA: the regularization images in its batch add nothing toward the model
    batch = runs[True].data.load(runs[True].data.epoch_batches(0)[0], random.Random(0))
    assert batch.regularization is not None and 0 < int(batch.regularization.sum()) < len(batch)
    assert runs[True].final_loss < runs[False].final_loss


def test_prior_prediction_needs_regularization_images(sample_data):
    with pytest.raises(LowvramError, match="--prior-prediction: there are no regularization images to predict for"):
        run_config(data=str(sample_data), prior_prediction=True)


def test_a_onetrainer_prior_prediction_concept_is_regularization_with_prior_prediction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps([{"path": "imgs/alpha"}, {"path": "imgs/reg", "type": "PRIOR_PREDICTION",
                                                          "loss_weight": 0.5}]))
    dataset = read_dataset(path)
    assert [(s.folder.name, s.regularization, s.loss_weight) for s in dataset.subsets] == [
        ("alpha", False, 1.0), ("reg", True, 0.5)]
    assert dataset.values["prior_prediction"] is True
    assert dataset.summary == "read as a OneTrainer concepts file: 1 image folder, 1 prior prediction"
    values = with_dataset_settings({"model": "tiny", "data": str(path)}, "the test", quiet=True)
    assert build_config(values).data.prior_prediction  # the file's setting, and its images, suffice


def test_a_prior_prediction_concept_is_drawn_by_its_own_balancing(tmp_path, monkeypatch, capsys):
    """As OneTrainer draws every concept: kohya's balance repeated 2 prior images to match the training samples, so
    half of the steps were prior steps where balancing said 1 each (or 0.5)."""
    from lowvram.cli import main

    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    for balancing, prior in ((1.0, 2), (0.5, 1), (3.0, 6)):
        path = tmp_path / "concepts.json"
        path.write_text(json.dumps([{"path": "imgs/alpha", "balancing": 5},
                                    {"path": "imgs/reg", "type": "PRIOR_PREDICTION", "balancing": balancing}]))
        assert main(["plan", "--model", "tiny", "--data", str(path), "--vram", "8GB", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["run_length"]["images_per_epoch"] == 3 * 5 + prior
    assert main(["check-data", str(path), "--model", "tiny"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "regularization: 6 samples each epoch, each as often as its own repeats say (--reg-balance repeats" in said
    assert main(["train", "--model", "tiny", "--data", str(path), "--max-steps", "1", "--output", "out"]) == 0
    said = " ".join(capsys.readouterr().out.split())  # (the epochs training draws)
    assert "regularization: 6 samples each epoch, each as often as its own repeats say" in said, said
    # kohya's balance, asked for: the class images match the 15 training samples
    assert main(["plan", "--model", "tiny", "--data", str(path), "--reg-balance", "kohya", "--vram", "8GB",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_length"]["images_per_epoch"] == 15 + 15


def test_a_masked_prior_weight_holds_the_area_outside_the_mask_to_the_model():
    model, scheduler, latents, noise, _, conditioning = tiny_step_inputs()
    params = networks.add_adapter(model.unet, model.family.lora_targets("unet"), 4, 4.0, 0.0)
    timesteps = torch.tensor([100, 700])
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1  # the left half trains toward the noise, the right half is held to the model

    def loss(weight):
        return diffusion_loss(model.unet, scheduler, latents, conditioning, noise, timesteps,
                              Objective(masked_prior_weight=weight), mask=mask)

    assert loss(2.0).item() == loss(0.0).item()  # a fresh LoRA predicts what the model does
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.no_grad():
        base = model.unet(noisy, timesteps, **conditioning).sample
        for param in params:
            param.add_(0.05 * torch.randn_like(param))
        adapted = model.unet(noisy, timesteps, **conditioning).sample
    held = ((adapted - base) ** 2)[..., 4:].mean()  # each sample's right half has the same area: one mean
    # over the whole image, as OneTrainer's masked_losses_with_prior weighs it: the right half is half of it
    assert loss(2.0).item() == pytest.approx(loss(0.0).item() + 2.0 * 0.5 * held.item(), rel=1e-5)


def test_a_run_with_a_masked_prior_weight_trains_and_needs_masks(tmp_path):
    stems = ["00_red_circle", "01_yellow_square", "02_white_triangle", "03_orange_circle", "04_blue_square",
             "05_green_triangle"]
    masked_dataset(tmp_path / "data", {stem: left_half_white(96, 96 + 16 * (i % 2)) for i, stem in enumerate(stems)})
    runs = {weight: train(run_config(data=str(tmp_path / "data"), masked_loss=True, masked_prior_weight=weight,
                                     max_steps=2, lr=0.1, output=str(tmp_path / f"out{weight}")))
            for weight in (0.0, 1.0)}
    # the first step moves the LoRA alike (held to the model where it is the model, nothing pulls); by the second,
    # the area outside the masks adds how far the LoRA moved it
    assert runs[1.0].final_loss > runs[0.0].final_loss
    with pytest.raises(LowvramError, match="--masked-prior-weight: only used with --masked-loss or --alpha-mask"):
        run_config(masked_prior_weight=1.0)


def test_the_planner_counts_the_extra_forward_pass_in_the_step_time(tmp_path, sample_data):
    from lowvram.hardware import NO_GPU
    from lowvram.plan import MemoryStrategy, workload_for
    from lowvram.plan.estimate import relative_step_time
    from lowvram.resolve import resolve_run

    reg = tmp_path / "reg"
    shutil.copytree(sample_data, reg)
    strategy = MemoryStrategy("bf16", gradient_checkpointing=False, optimizer="adamw")
    times = [relative_step_time(workload_for(resolve_run(run_config(data=str(sample_data), reg_data=str(reg),
                                                                    prior_prediction=prior), NO_GPU)), strategy)
             for prior in (False, True)]
    assert times[1] == pytest.approx(times[0] * 4 / 3)  # a forward pass is about a third of forward and backward


def test_a_measured_own_prediction_cost_replaces_the_prior(monkeypatch):
    """calibrate_planner derives the extra forward pass's cost from a GPU result's pair of runs, with and without
    it, and the planner's step time then uses it instead of the prior third."""
    import dataclasses
    import importlib
    import sys
    from pathlib import Path

    from lowvram.models import FAMILIES
    from lowvram.plan import MemoryStrategy, Workload

    estimator = importlib.import_module("lowvram.plan.estimate")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import calibrate_planner

    runs = [{"family": "sd15", "batch": 1, "device": "GPU", "mixed_precision": "bf16", "unet_weights": "bf16",
             "gradient_checkpointing": False, "optimizer": "adamw8bit", "seconds_per_step": seconds,
             "own_prediction": own} for own, seconds in ((False, 0.10), (True, 0.125))]
    measured = calibrate_planner.step_time(runs)["sd15"]["1"]
    assert measured == {"own_prediction": 1.25}  # and no other ratio from the pair
    work = Workload(FAMILIES["sd15"], 512, own_prediction=True)
    strategy = MemoryStrategy("bf16", False, "adamw8bit")
    monkeypatch.setattr(estimator, "step_time_ratios", lambda family, batch: {})
    prior = estimator.relative_step_time(work, strategy) / estimator.relative_step_time(
        dataclasses.replace(work, own_prediction=False), strategy)
    monkeypatch.setattr(estimator, "step_time_ratios", lambda family, batch: measured)
    assert prior == pytest.approx(4 / 3)
    assert estimator.relative_step_time(work, strategy) / estimator.relative_step_time(
        dataclasses.replace(work, own_prediction=False), strategy) == pytest.approx(1.25)
