"""End-to-end training on the tiny models: the loss falls, and the saved LoRA reloads in diffusers with
exactly the behaviour it had in lowvram (alpha != rank included), for SD and SDXL, kohya and diffusers formats."""

import dataclasses
import json
import math
import os
import random
import re
import signal

import pytest
import torch
from conftest import run_config
from diffusers import DDPMScheduler
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from lowvram.adapters import networks
from lowvram.cli import main
from lowvram.configure import build_config, read_toml
from lowvram.errors import LowvramError, TrainingInterrupted
from lowvram.models import FAMILIES, load_model
from lowvram.models.conditioning import TextReading, encode_prompts, unet_conditioning
from lowvram.train.loop import train
from lowvram.train.loss import diffusion_loss


def fixed_batch_loss(unet, family, data):
    """Loss over one fixed batch of cached samples at four fixed timesteps with fixed noise."""
    batch = data.load(list(range(len(data.samples))), random.Random(0))
    scheduler = DDPMScheduler.from_pretrained(family.config_dir, subfolder="scheduler")
    generator = torch.Generator().manual_seed(0)
    conditioning = unet_conditioning(family, batch.hidden, batch.pooled, batch.time_ids)
    losses = []
    with torch.no_grad():
        for t in (100, 300, 600, 900):
            noise = torch.randn(batch.latents.shape, generator=generator)
            timesteps = torch.full((len(batch.latents),), t)
            losses.append(diffusion_loss(unet, scheduler, batch.latents, conditioning, noise, timesteps).item())
    return sum(losses) / len(losses)


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    result = train(run_config(output=str(tmp_path / "out"), max_steps=60, lr=2e-3, rank=8))
    before = fixed_batch_loss(load_model("tiny").unet, result.model.family, result.data)
    after = fixed_batch_loss(result.model.unet, result.model.family, result.data)
    assert after < 0.9 * before, (before, after)
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == list(range(1, 61))
    assert [s["step"] for s in steps if "epoch_loss" in s] == [30, 60]  # 6 images, 5 repeats: 30 steps an epoch


@pytest.fixture(scope="module", params=["tiny", "tiny-sdxl"])
def trained(request, tmp_path_factory):
    """A short run with alpha != rank and the text encoder(s) trained, saved in fp32 in both formats."""
    out = tmp_path_factory.mktemp(request.param)
    config = run_config(model=request.param, output=str(out), rank=4, alpha=2.0, lr=1e-2, train_text_encoder=True,
                        text_encoder_lr=5e-3, save_precision="fp32", format="diffusers", max_steps=5,
                        sample_prompts=["lvshape, a (red:1.2) circle"], sample_steps=2, save_every="2")
    return config, train(config)


def model_outputs(model, captions=("lvshape, a red circle", "a green square")):
    torch.manual_seed(0)
    latents, timesteps = torch.randn(2, 4, 32, 32), torch.tensor([10, 700])
    with torch.no_grad():
        hidden, pooled = encode_prompts(model.family, model.text_encoders, model.tokenizers, list(captions), "cpu")
        conditioning = {"encoder_hidden_states": hidden}
        if model.family.size_conditioning:
            time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
            conditioning["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return hidden, model.unet(latents, timesteps, **conditioning).sample


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_lora_reloads_in_diffusers_and_reproduces_the_trained_model(trained, layout):
    config, result = trained
    path = result.lora_path if layout == "kohya" else result.lora_path.parent / f"{config.output_name}-diffusers"
    fresh = load_model(config.model.model)
    untouched_hidden, untouched_out = model_outputs(fresh)
    fresh.pipeline.load_lora_weights(str(path), adapter_name="reloaded")

    # every tensor of the file landed in the model: nothing missing, nothing dropped as unexpected
    ours = {name: get_peft_model_state_dict(module) for name, module in
            [("unet", result.model.unet), *zip([s.component for s in result.model.family.text_encoders],
                                               result.model.text_encoders)]}
    for name, state in ours.items():
        module = getattr(fresh.pipeline, name)
        theirs = get_peft_model_state_dict(module, adapter_name="reloaded")
        assert set(theirs) == set(state), name
        assert module.peft_config["reloaded"].lora_alpha == 2.0 and module.peft_config["reloaded"].r == 4

    hidden, out = model_outputs(result.model)
    reloaded_hidden, reloaded_out = model_outputs(fresh)
    torch.testing.assert_close(reloaded_hidden, hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reloaded_out, out, rtol=1e-4, atol=1e-5)
    assert (out - untouched_out).abs().max() > 1e-3  # the LoRA really changes the output
    assert (hidden - untouched_hidden).abs().max() > 1e-3


def test_kohya_file_has_the_keys_comfyui_and_a1111_map(trained):
    config, result = trained
    state = load_file(str(result.lora_path))
    prefixes = {key.split(".")[0].split("_text_model_")[0] for key in state if "_text_model_" in key}
    expected_te = {"lora_te"} if config.model.model == "tiny" else {"lora_te1", "lora_te2"}
    assert prefixes == expected_te
    assert all(key.startswith(("lora_unet_", "lora_te")) for key in state)
    assert all(key.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for key in state)
    if config.model.model == "tiny":  # kohya names SD1.5's U-Net layers as diffusers does
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in state
    else:  # and SDXL's in the original layout, as its SDXL U-Net (a port of it) has them
        assert any(re.fullmatch(r"lora_unet_input_blocks_\d+_1_transformer_blocks_0_attn1_to_q\.lora_down\.weight", key)
                   for key in state)
        assert not any("down_blocks" in key or "up_blocks" in key or "mid_block" in key for key in state)
    alphas = {float(v) for k, v in state.items() if k.endswith(".alpha")}
    assert alphas == {2.0}
    downs = [v for k, v in state.items() if k.endswith(".lora_down.weight")]
    assert all(v.shape[0] == 4 and v.dtype == torch.float32 for v in downs)


def test_metadata_describes_the_run(trained):
    config, result = trained
    with safe_open(str(result.lora_path), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2"
    assert meta["ss_steps"] == "5" and meta["ss_resolution"] == "(64, 64)"
    assert meta["ss_sd_model_name"] == config.model.model and meta["ss_sd_model_hash"] == "random0"
    assert meta["lowvram.trigger_word"] == "lvshape" and meta["lowvram.dataset_images"] == "6"
    assert meta["ss_num_train_images"] == "30"  # 6 images x 5 repeats
    assert json.loads(meta["ss_tag_frequency"])["5_lvshape"]["lvshape"] == 6
    assert meta["modelspec.architecture"].endswith("/lora")
    # the recipe replays the run; where its output went is this machine's business (the .toml beside it keeps it)
    replayed = build_config(read_toml_text(meta["lowvram.config"], result.lora_path.parent))
    assert "output =" not in meta["lowvram.config"]
    assert dataclasses.replace(replayed, output=dataclasses.replace(  # (--overwrite is this run's, never replayed)
        replayed.output, output=config.output.output, overwrite=config.output.overwrite)) == config


def read_toml_text(text, folder):
    path = folder / "from-metadata.toml"
    path.write_text(text)
    return read_toml(path)


def test_outputs_beside_the_lora(trained):
    config, result = trained
    assert result.config_path.name == f"{config.output_name}.toml"
    replayed = build_config(read_toml(result.config_path))
    assert replayed == dataclasses.replace(config, output=dataclasses.replace(config.output, overwrite=False))
    assert [p.name for p in result.samples] == [f"{config.output_name}-00.png"]
    from PIL import Image

    assert Image.open(result.samples[0]).size == (64, 64)
    checkpoints = sorted(p.name for p in result.lora_path.parent.glob(f"{config.output_name}-step*.safetensors"))
    assert checkpoints == [f"{config.output_name}-step{step:08d}.safetensors" for step in (2, 4)]


def test_save_precision_fp16_halves_the_file(tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=1, save_precision="fp16"))
    state = load_file(str(result.lora_path))
    assert {v.dtype for v in state.values()} == {torch.float16}


@pytest.mark.parametrize("network", ["lora", "dora"])
def test_loraplus_makes_the_b_matrices_learn_ratio_times_faster(tmp_path, network):
    """Adam's first step moves each parameter that has a gradient by its learning rate. LoRA's B matrices start at
    zero, so only they move then: by --lr, and by --lr times the ratio with LoRA+. The text encoder's too, by its
    own ratio where --loraplus-text-encoder-ratio gives one."""
    for ratio, text_ratio in ((None, None), (4.0, None), (4.0, 2.0)):
        result = train(run_config(output=str(tmp_path / f"{ratio}-{text_ratio}"), max_steps=1, lr=1e-3,
                                  text_encoder_lr=1e-3, train_text_encoder=True, network=network,
                                  loraplus_ratio=ratio, loraplus_text_encoder_ratio=text_ratio))
        for part, module in networks.adapted_modules(result.model):
            layers = [layer for _, layer in networks.adapted_layers(module)]
            moved = max(layer.lora_B["default"].weight.abs().max().item() for layer in layers)
            expected = ratio if part == "unet" else text_ratio or ratio
            assert moved == pytest.approx(1e-3 * (expected or 1), rel=1e-3), part
        meta = safe_open(str(result.lora_path), framework="pt").metadata()
        assert meta["ss_loraplus_lr_ratio"] == ("4" if ratio else "None")
        assert meta["ss_loraplus_text_encoder_lr_ratio"] == ("2" if text_ratio else "None")
    with pytest.raises(LowvramError, match="--loraplus-ratio: it works on LoRA's B and A matrices, which --network "
                                           "loha has none of"):
        run_config(network="loha", loraplus_ratio=16)


@pytest.mark.parametrize("network", ["lora", "dora", "loha", "lokr"])
def test_scale_weight_norms_brings_each_layers_update_back_to_the_limit(network):
    """On real adapted layers (linear and 3x3 convolutions): a layer whose update is above the limit ends exactly at
    it, one below stays as it was, and the norm from the rank-sized Gram matrices is the full update's; LoHa and
    LoKr too, as LyCORIS limits them (the LoHa preset kohya_ss ships sets scale_weight_norms)."""
    model = load_model("tiny")
    family = model.family
    networks.add_adapter(model.unet, family.lora_targets("unet", "full"), 4, 2.0, 0.0, network)
    torch.manual_seed(0)
    layers = [layer for _, layer in networks.adapted_layers(model.unet)]
    with torch.no_grad():
        for layer in layers:
            grown = (layer.lora_B if network in ("lora", "dora") else layer.hada_w2_a if network == "loha"
                     else layer.lokr_w2_a if "default" in layer.lokr_w2_a else layer.lokr_w2)["default"]
            grown = getattr(grown, "weight", grown)
            grown.normal_(std=0.05 * (1 + layers.index(layer) % 3))
    before = [layer.get_delta_weight("default").norm().item() for layer in layers]
    limit = sorted(before)[len(before) // 2]
    networks.limit_norms(model.unet, limit)
    after = [layer.get_delta_weight("default").norm().item() for layer in layers]
    assert any(isinstance(layer.get_base_layer(), torch.nn.Conv2d) for layer in layers)
    for was, now in zip(before, after):
        assert now == pytest.approx(min(was, limit), rel=1e-4)
    assert sum(was > limit for was in before) >= len(before) // 3


def test_a_run_with_scale_weight_norms_keeps_every_layer_within_it(tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=3, lr=1e-2, scale_weight_norms=0.01))
    norms = [layer.get_delta_weight("default").norm().item()
             for _, layer in networks.adapted_layers(result.model.unet)]
    assert max(norms) <= 0.01 * (1 + 1e-4) and max(norms) > 0.005
    assert safe_open(str(result.lora_path), framework="pt").metadata()["ss_scale_weight_norms"] == "0.01"


def test_keep_saves_keeps_the_newest_intermediate_loras(tmp_path, capsys):
    result = train(run_config(output=str(tmp_path), max_steps=5, save_every="1", keep_saves=2, name="notes"))
    assert sorted(p.name for p in tmp_path.glob("notes*.safetensors")) == [
        "notes-step00000003.safetensors", "notes-step00000004.safetensors", "notes.safetensors"]
    said = " ".join(capsys.readouterr().out.split())  # each removal said with its save (it went without a word)
    assert "removed notes-step00000001.safetensors (--keep-saves 2)" in said and said.count("removed notes-") == 2
    assert result.lora_path.name == "notes.safetensors"
    with pytest.raises(LowvramError, match="--keep-saves: only used with --save-every"):
        run_config(keep_saves=2)


def test_keep_saves_counts_no_lora_an_interrupt_left_between_save_points(tmp_path, monkeypatch):
    """The LoRA Ctrl-C leaves (named as a step's save) is no --save-every save: the resumed run keeps the newest
    saves an uninterrupted run keeps, and the interrupted one too."""
    from lowvram.train import step as steps

    real, calls = steps.diffusion_loss, {"n": 0}

    def ctrl_c_in_step_6(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGINT)  # the run stops after this step
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "diffusion_loss", ctrl_c_in_step_6)
    values = {"output": str(tmp_path), "max_steps": 10, "save_every": "4", "keep_saves": 2, "name": "k"}
    with pytest.raises(TrainingInterrupted):
        train(run_config(**values))
    monkeypatch.undo()
    assert (tmp_path / "k-step00000006.safetensors").is_file()
    train(run_config(**values, resume="auto"))
    assert sorted(p.name for p in tmp_path.glob("k*.safetensors")) == [
        "k-step00000004.safetensors", "k-step00000006.safetensors", "k-step00000008.safetensors", "k.safetensors"]


def test_existing_lora_is_not_overwritten_without_the_flag(tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=1))
    before = result.lora_path.read_bytes()
    with pytest.raises(LowvramError, match="exists; continue its run with --resume auto, start over with --overwrite"):
        train(run_config(output=str(tmp_path), max_steps=1, overwrite=False))
    assert result.lora_path.read_bytes() == before
    # another rank: not told to continue with --resume auto, which refuses it as another run
    with pytest.raises(LowvramError, match=r"exists; it is another run's \(--rank 4 there, 8 here\), start over with "
                                           "--overwrite"):
        train(run_config(output=str(tmp_path), max_steps=1, overwrite=False, rank=8))


@pytest.mark.parametrize("options", [
    {"prediction_type": "v_prediction", "min_snr_gamma": 5.0, "noise_offset": 0.05, "ip_noise_gamma": 0.1,
     "loss": "huber", "huber_schedule": "exponential", "scale_v_pred_loss": True,
     "noise_offset_random_strength": True, "ip_noise_gamma_random_strength": True},
    {"scheduler": "cosine_with_restarts", "warmup_steps": 2, "scheduler_cycles": 2, "gradient_accumulation": 2,
     "batch_size": 2, "gradient_checkpointing": True, "unet_weights": "fp8", "optimizer": "adamw8bit",
     "debiased_estimation": True, "min_timestep": 100, "max_timestep": 900, "v_pred_like_loss": 0.1},
    {"epochs": 1, "batch_size": 3, "scheduler": "linear", "max_steps": None, "tag_dropout": 0.5, "keep_tokens": 1,
     "multires_noise_iterations": 6, "timestep_bias": "later", "timestep_bias_multiplier": 3.0},
])
def test_training_options_run_and_are_recorded(tmp_path, options):
    result = train(run_config(output=str(tmp_path), **options))
    meta = result.lora_path and safe_open(str(result.lora_path), framework="pt").metadata()
    if "prediction_type" in options:
        assert meta["modelspec.prediction_type"] == "v" and meta["ss_min_snr_gamma"] == "5"
        assert meta["ss_ip_noise_gamma"] == "0.1" and meta["ss_loss_type"] == "huber"
        assert meta["ss_huber_c"] == "0.1" and meta["ss_huber_schedule"] == "exponential"
        assert meta["ss_scale_v_pred_loss_like_noise_pred"] == "True" and meta["ss_v_pred_like_loss"] == "None"
        assert meta["ss_noise_offset_random_strength"] == meta["ss_ip_noise_gamma_random_strength"] == "True"
    if "debiased_estimation" in options:
        assert (meta["ss_debiased_estimation"], meta["ss_min_timestep"], meta["ss_max_timestep"]) == ("True", "100",
                                                                                                     "900")
        assert meta["ss_v_pred_like_loss"] == "0.1" and meta["ss_scale_v_pred_loss_like_noise_pred"] == "False"
    if "epochs" in options:
        assert result.steps == 10 and meta["ss_epoch"] == "1"  # 30 images with repeats / batch 3
        # "lvshape, a red circle ...": with and without its second tag, both cached and drawn from
        assert all(len(sample.text_keys) == 2 for sample in result.data.samples)
        assert (meta["ss_multires_noise_iterations"], meta["ss_multires_noise_discount"]) == ("6", "0.3")
    assert result.final_loss == result.final_loss  # not NaN


def test_an_epoch_ends_its_last_accumulated_step_so_epochs_stay_whole_passes(tmp_path):
    """10 batches an epoch, 4 a step: steps of 4, 4 and 2 batches (kohya's accumulation ends with the epoch too),
    so 2 epochs are 2 passes over the images and the epoch's save point comes after its last batch."""
    import json

    result = train(run_config(output=str(tmp_path), epochs=2, max_steps=None, batch_size=3, gradient_accumulation=4,
                              save_every="1e"))
    assert result.data.batches_per_epoch == 10 and result.steps == 6
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "loss" in r] == [0, 0, 0, 1, 1, 1]  # the epoch of each step's last batch
    losses = [r["loss"] for r in records if "loss" in r]
    assert [(r["step"], r["epoch"], r["epoch_loss"]) for r in records if "epoch_loss" in r] == [
        (3, 0, pytest.approx(sum(losses[:3]) / 3)), (6, 1, pytest.approx(sum(losses[3:]) / 3))]  # kohya's loss/epoch
    first_epoch = safe_open(str(tmp_path / f"{tmp_path.name}-000001.safetensors"), framework="pt").metadata()
    assert (first_epoch["ss_epoch"], first_epoch["ss_steps"]) == ("1", "3")
    assert first_epoch["ss_total_batch_size"] == "12"  # a step's images: 3 x 4 accumulated


def test_the_polynomial_schedule_decays_with_its_power(tmp_path):
    """kohya's `--lr_scheduler polynomial --lr_scheduler_power 2`: (lr - lr_end) (1 - step/total)^2 + lr_end, with
    diffusers' lr_end of 1e-7 (the optimizer's default rate, AdamW's 1e-3, would have made it 1e-8)."""
    train(run_config(output=str(tmp_path), max_steps=4, scheduler="polynomial", scheduler_power=2.0, lr=1e-4))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [record["lr"] for record in records if "lr" in record]
    end = 1e-7  # diffusers' lr_end
    # the rate each step's update used: the schedule's at the steps before it
    assert logged == pytest.approx([(1e-4 - end) * (1 - done / 4) ** 2 + end for done in (0, 1, 2, 3)], rel=1e-6)
    with pytest.raises(LowvramError, match="--scheduler-power: only used with --scheduler polynomial"):
        run_config(scheduler_power=2.0)


def test_a_polynomial_schedule_from_a_rate_at_or_below_its_end_decays_to_zero():
    """--lr 1e-8 --scheduler polynomial raised "lr_end (1e-07) must be smaller than initial lr" (a traceback, after
    the model's load and caching)."""
    from lowvram.optim import build_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1e-8)
    schedule, rates = build_schedule("polynomial", optimizer, 0, 4, 1, 1.0), []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([1e-8 * (1 - done / 4) for done in range(4)], rel=1e-6)


def test_a_warmup_under_1_is_a_share_of_the_run(tmp_path):
    """kohya's lr_warmup_steps 0.25 (and OneTrainer's share): the first quarter of the steps warms up."""
    train(run_config(output=str(tmp_path), max_steps=8, scheduler="constant_with_warmup", warmup_steps=0.25,
                     lr=1e-4))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [record["lr"] for record in records if "lr" in record]
    assert logged == pytest.approx([1e-4 * min(1.0, done / 2) for done in range(8)], rel=1e-6)  # 2 of 8 steps
    with pytest.raises(LowvramError, match=r"--warmup-steps: 2.5 is neither a whole number of steps nor a share"):
        run_config(warmup_steps=2.5)


def test_generate_renders_with_the_lora(trained, tmp_path):
    config, result = trained
    argv = ["generate", "--model", config.model.model, "--prompt", "lvshape, a red circle", "--steps", "3",
            "--seed", "1"]
    assert main([*argv, "--output", str(tmp_path / "plain.png")]) == 0
    assert main([*argv, "--lora", str(result.lora_path), "--weight", "1.0", "--output", str(tmp_path / "l.png")]) == 0
    import numpy as np
    from PIL import Image

    plain = np.asarray(Image.open(tmp_path / "plain.png"), dtype=np.float32)
    with_lora = np.asarray(Image.open(tmp_path / "l.png"), dtype=np.float32)
    assert plain.shape == with_lora.shape == (64, 64, 3)
    assert np.abs(plain - with_lora).mean() > 0.5  # the LoRA changes the image


def test_generate_renders_the_image_training_sampled(trained, tmp_path):
    """The same prompt, seed and steps give the final training sample again: generate renders as training does (and
    reads the prompt as training samples read theirs, with the text encoders trained: emphasis weighed)."""
    config, result = trained
    import numpy as np
    from PIL import Image

    assert main(["generate", "--model", config.model.model, "--lora", str(result.lora_path), "--prompt",
                 config.output.sample_prompts[0], "--steps", str(config.output.sample_steps), "--seed",
                 str(config.training.seed), "--output", str(tmp_path / "again.png")]) == 0
    sampled = np.asarray(Image.open(result.samples[0]), dtype=np.int16)
    again = np.asarray(Image.open(tmp_path / "again.png"), dtype=np.int16)
    assert np.abs(sampled - again).max() <= 2  # 8-bit rounding of the same image


def test_generate_without_model_takes_the_demo_model_a_lora_was_trained_on_and_asks_for_any_other(trained, tmp_path,
                                                                                                  capsys):
    """A LoRA trained on a model of the user's drew on the built-in tiny model, its random weights, without a word;
    a tiny-sdxl LoRA was refused as tiny's."""
    config, result = trained
    argv = ["generate", "--prompt", "x", "--steps", "1", "--output", str(tmp_path / "x.png")]
    assert main([*argv, "--lora", str(result.lora_path)]) == 0
    assert f"loading {config.model.model}" in capsys.readouterr().out
    from safetensors.torch import load_file, save_file

    from lowvram.lora_header import read_header

    theirs = tmp_path / "theirs.safetensors"
    save_file(load_file(str(result.lora_path)), str(theirs),
              read_header(result.lora_path)[0] | {"lowvram.base_model": "mymodel.safetensors"})
    assert main([*argv, "--lora", str(theirs)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"lowvram generate: error: --model: which base model? {theirs} was trained on mymodel.safetensors; give that "
        "model (a .safetensors checkpoint, a diffusers folder or a hub id), or another of its family, as --model")
    # a merge of the demo model's LoRAs (whose metadata names no base model): the demo model, as before
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", f"{result.lora_path}:0.5", f"{result.lora_path}:0.5", "--rank", "4", "--output",
                 str(merged)]) == 0
    capsys.readouterr()
    assert main([*argv, "--lora", str(merged), "--overwrite"]) == 0
    assert f"loading {config.model.model}" in capsys.readouterr().out


def test_generate_refuses_a_lora_of_the_other_family(trained, tmp_path, capsys):
    config, result = trained
    other = "tiny-sdxl" if config.model.model == "tiny" else "tiny"
    code = main(["generate", "--model", other, "--prompt", "x", "--steps", "1", "--lora", str(result.lora_path),
                 "--output", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "--lora:" in err and len(err.strip().splitlines()) == 1
    # the demo model's LoRA: its own model named, not the full-size family it is shaped as, whose checkpoints do not
    # load it
    assert err.rstrip().endswith(f"is a LoRA for lowvram's built-in {config.model.model} demo model (its metadata "
                                 f"says), not for {FAMILIES[other].title}; give --model {config.model.model}, or train "
                                 "one on this model"), err


@pytest.mark.parametrize("family", ["tiny", "tiny-sdxl"])
def test_part_by_part_sampler_matches_the_diffusers_pipeline(family):
    """Training samples use our own denoising loop (one model part on the device at a time); it must give
    the image diffusers' pipeline gives for the same prompt, seed and steps."""
    import contextlib

    import numpy as np

    from lowvram.train.sampling import GUIDANCE, render

    model = load_model(family)
    model.pipeline.set_progress_bar_config(disable=True)
    ours = render(model, "lvshape, a red circle", 64, 4, seed=3, device=torch.device("cpu"),
                  autocast=contextlib.nullcontext)
    theirs = model.pipeline("lvshape, a red circle", num_inference_steps=4, guidance_scale=GUIDANCE, height=64,
                            width=64, generator=torch.Generator("cpu").manual_seed(3)).images[0]
    difference = np.abs(np.asarray(ours, dtype=np.float32) - np.asarray(theirs, dtype=np.float32))
    assert difference.max() <= 2.0, difference.max()
    # with the prompts encoded beforehand (as the caching phase does), the same image
    with torch.no_grad():
        embeddings = encode_prompts(model.family, model.text_encoders, model.tokenizers,
                                    ["", "lvshape, a red circle"], "cpu")
    cached = render(model, "lvshape, a red circle", 64, 4, seed=3, device=torch.device("cpu"),
                    autocast=contextlib.nullcontext, embeddings=embeddings)
    # (the text encoder batched otherwise: CPU kernels round a batch of two a few ulps apart on some processors, a
    # pixel or two a step of 8-bit rounding apart; embeddings rounded to bf16 change 0.25 % of them, off by 1 % 3 %)
    apart = np.abs(np.asarray(cached, dtype=np.float32) - np.asarray(ours, dtype=np.float32))
    assert apart.max() <= 1.0 and (apart > 0).mean() <= 0.001, ((apart > 0).mean(), apart.max())
    # a negative prompt, another size, steps, guidance and seed from kohya's inline options: the same image
    # as the pipeline given them as arguments
    ours = render(model, "lvshape, a red circle --n a blue square --w 96 --h 48 --s 3 --l 4.5 --d 11", 64, 4,
                  seed=3, device=torch.device("cpu"), autocast=contextlib.nullcontext)
    theirs = model.pipeline("lvshape, a red circle", negative_prompt="a blue square", num_inference_steps=3,
                            guidance_scale=4.5, height=48, width=96,
                            generator=torch.Generator("cpu").manual_seed(11)).images[0]
    assert ours.size == theirs.size == (96, 48)
    difference = np.abs(np.asarray(ours, dtype=np.float32) - np.asarray(theirs, dtype=np.float32))
    assert difference.max() <= 2.0, difference.max()


@pytest.mark.parametrize("model_name", ["tiny", "tiny-sdxl"])
def test_long_captions_are_read_in_75_token_chunks(model_name):
    model = load_model(model_name)
    head = ", ".join(f"tag{i}" for i in range(40))  # about 80 tokens
    captions = [head + ", a red circle", head + ", a blue square"]  # differ only after the first 75 tokens

    def encode(max_tokens):
        with torch.no_grad():
            return encode_prompts(model.family, model.text_encoders, model.tokenizers, captions, "cpu",
                                  TextReading(max_tokens))

    plain, plain_pooled = encode(75)
    chunked, chunked_pooled = encode(225)
    assert plain.shape[1] == 77 and chunked.shape[1] == 227
    assert torch.equal(plain[0], plain[1])  # cut at 75 tokens: the difference is lost
    assert not torch.allclose(chunked[0], chunked[1])  # read in chunks: it is kept
    torch.testing.assert_close(chunked[:, :76], plain[:, :76])  # the first chunk is the plain encoding
    if plain_pooled is not None:
        torch.testing.assert_close(chunked_pooled, plain_pooled)  # SDXL pools the first chunk, as kohya


def test_a_run_with_long_captions_caches_and_trains_on_all_of_them(tmp_path, capsys):
    data = tmp_path / "data" / "3_long"
    data.mkdir(parents=True)
    from PIL import Image

    for i, colour in enumerate(["red", "blue", "green", "blue"]):  # (two images share a long caption)
        Image.new("RGB", (64, 64), colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(", ".join(f"tag{j}" for j in range(30 if i != 2 else 3)) + f", {colour}\n")
    train(run_config(data=str(tmp_path / "data"), output=str(tmp_path / "cut"), max_steps=1))
    assert ("warning: 3 of 4 images have a caption past 75 tokens, and the text encoders read only their first 75: "
            "shorten them, or add --max-token-length 150 (the longest, 3_long/0.png's, has 111)"
            ) in " ".join(capsys.readouterr().out.split())
    result = train(run_config(data=str(tmp_path / "data"), output=str(tmp_path / "out"), max_token_length=225,
                              max_steps=2))
    assert "captions run past" not in capsys.readouterr().out
    assert result.data.load([0], random.Random(0)).hidden.shape[1] == 227
    with safe_open(str(result.lora_path), "pt") as f:
        assert f.metadata()["ss_max_token_length"] == "225"


def test_clip_skip_reads_the_layer_diffusers_and_automatic1111_read():
    """kohya's and AUTOMATIC1111's clip skip 2 (diffusers' clip_skip=1): the penultimate layer's states through
    the final layer norm, as diffusers' encode_prompt computes them (its own call reaches for the `text_model`
    level transformers 5 removed, so the formula is written out here)."""
    model = load_model("tiny")
    prompt = ["lvshape, a red circle"]
    encoder, tokenizer = model.text_encoders[0], model.tokenizers[0]
    with torch.no_grad():
        skipped, _ = encode_prompts(model.family, model.text_encoders, model.tokenizers, prompt, "cpu",
                                    TextReading(clip_skip=2))
        plain, _ = encode_prompts(model.family, model.text_encoders, model.tokenizers, prompt, "cpu")
        ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        states = encoder(ids, output_hidden_states=True).hidden_states
        theirs = encoder.final_layer_norm(states[-2])
    torch.testing.assert_close(skipped, theirs)
    torch.testing.assert_close(plain, encoder.final_layer_norm(states[-1]))
    assert not torch.allclose(skipped, plain)


def test_a_clip_skip_run_encodes_its_own_embeddings_and_records_it(tmp_path, sample_data):
    cache = str(tmp_path / "cache")  # a cache of its own: the shared one may hold these captions already
    first = train(run_config(data=str(sample_data), output=str(tmp_path / "a"), max_steps=1, cache_dir=cache))
    skipped = train(run_config(data=str(sample_data), output=str(tmp_path / "b"), max_steps=1, clip_skip=2,
                               cache_dir=cache))
    assert skipped.encoded[1] == first.encoded[1] > 0  # the default reading's cached embeddings are not reused
    with safe_open(str(skipped.lora_path), "pt") as f:
        assert f.metadata()["ss_clip_skip"] == "2"
    # a trained encoder's states are fp32 (its adapters' sums) beside its bf16 weights: the final norm still reads
    # them (kohya_ss's usual SD1.5 recipe: clip skip 2, bf16, the text encoder trained)
    trained = train(run_config(data=str(sample_data), output=str(tmp_path / "te"), max_steps=1, clip_skip=2,
                               mixed_precision="bf16", train_text_encoder=True, cache_dir=cache))
    assert trained.lora_path.is_file()
    with pytest.raises(LowvramError, match="--clip-skip 2: tiny SDXL .* already reads .* penultimate"):
        train(run_config(model="tiny-sdxl", output=str(tmp_path / "c"), clip_skip=2))
    with pytest.raises(LowvramError, match="--clip-skip: 7 is not one of"):
        run_config(clip_skip=7)


def test_a_second_run_in_one_process_may_use_another_precision(tmp_path):
    """accelerate keeps the first Accelerator's mixed precision for the whole process and refuses another (seen on
    a GPU as 'AcceleratorState has already been initialized'); a notebook that trains twice must not meet it."""
    first = train(run_config(output=str(tmp_path / "fp32"), max_steps=1, mixed_precision="no"))
    second = train(run_config(output=str(tmp_path / "bf16"), max_steps=1, mixed_precision="bf16"))
    assert first.lora_path.is_file() and second.lora_path.is_file()


def test_a_bf16_run_skips_peft_input_casts_yet_every_forward_works_and_the_model_handed_back_too(tmp_path):
    """Under mixed precision training turns off peft's fp32 input casts (autocast casts back): every forward of
    the run (training with the text encoder, validation, sample grids, final samples) runs under autocast, and
    the model handed back casts again, so it runs outside autocast."""
    result = train(run_config(output=str(tmp_path / "bf16"), max_steps=2, mixed_precision="bf16",
                              train_text_encoder=True, validation_split=0.34, validate_every=1, sample_every="1",
                              sample_prompts=["lvshape, a red circle"], sample_steps=2, gradient_checkpointing=True))
    assert len(list((tmp_path / "bf16" / "samples").glob("*.png"))) >= 3  # two grids and the final sample
    unet = result.model.unet
    layers = networks.adapted_layers(unet)
    assert layers and all(layer.cast_input_dtype_enabled for _, layer in layers)
    latents = torch.randn(1, 4, 32, 32, dtype=unet.dtype)
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim, dtype=unet.dtype)
    with torch.no_grad():
        assert torch.isfinite(unet(latents, torch.tensor([500]), encoder_hidden_states=hidden).sample).all()


def test_trained_text_encoders_train_in_train_mode(tmp_path, text_encoder_modes):
    """--train-text-encoder: the text encoders run in train mode, as the U-Net does (adapter dropout and
    transformers' gradient checkpointing read it), and are back in eval mode afterwards."""
    modes = text_encoder_modes
    folder = tmp_path / "model"  # loaded as users' models are: from_pretrained leaves every part in eval mode
    load_model("tiny").pipeline.save_pretrained(folder, safe_serialization=True)
    result = train(run_config(model=str(folder), output=str(tmp_path / "out"), max_steps=2, train_text_encoder=True,
                              dropout=0.1))
    assert modes and all(all(step) for step in modes), modes
    assert not any(encoder.training for encoder in result.model.text_encoders)


def test_caption_dropout_every_n_epochs_trains_those_epochs_on_the_empty_caption(tmp_path):
    """kohya's caption_dropout_every_n_epochs 2: the 2nd, 4th, ... epoch (counted from 1) has no captions."""
    result = train(run_config(output=str(tmp_path), max_steps=1, caption_dropout_every=2, batch_size=6))
    data = result.data
    empty = data.text_store.load(data.empty_text_key)["hidden"]
    for epoch, captioned in ((0, True), (1, False), (2, True), (3, False)):
        _, _, batch, _ = next(data.batches(epoch))
        assert all(bool(caption) == captioned for caption in batch.captions), (epoch, batch.captions)
        assert all(torch.equal(hidden, empty) != captioned for hidden in batch.hidden), epoch


def test_a_min_lr_ratio_floors_the_decay_not_the_warm_up(tmp_path):
    """OneTrainer's learning_rate_min_factor (kohya's cosine_with_min_lr): past warm-up, ratio + (1 - ratio) x the
    schedule's factor, so the run ends at ratio x --lr instead of 0."""
    train(run_config(output=str(tmp_path), max_steps=8, scheduler="cosine", warmup_steps=2, lr=1e-4,
                     min_lr_ratio=0.2))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [record["lr"] for record in records if "lr" in record]
    # the rate each step used: warm-up over 2 steps, then cosine over the other 6, floored at 0.2
    expected = [1e-4 * (done / 2 if done < 2 else 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (done - 2) / 6)))
                for done in range(8)]
    assert logged == pytest.approx(expected, rel=1e-6)
    with pytest.raises(LowvramError, match="--min-lr-ratio: --scheduler constant does not decay"):
        run_config(min_lr_ratio=0.1)


def test_sdxl_sizes_reach_a_bf16_unet_exactly():
    """SDXL's size conditioning is embedded from the exact sizes, as kohya and Stability's code embed them: cast to
    bf16 first, 451 became 452 and 1500 became 1504 (bf16 keeps whole numbers exact only up to 256)."""
    model = load_model("tiny-sdxl", dtype=torch.bfloat16)
    unet, family = model.unet, model.family
    hidden = torch.zeros(1, 77, unet.config.cross_attention_dim, dtype=torch.bfloat16)
    pooled = torch.zeros(1, model.pipeline.text_encoder_2.config.projection_dim, dtype=torch.bfloat16)
    latents = torch.zeros(1, 4, 8, 8, dtype=torch.bfloat16)
    outputs = []
    with torch.no_grad():
        for height in (1500.0, 1504.0):
            time_ids = torch.tensor([[height, 1000.0, 0.0, 0.0, 64.0, 64.0]])
            outputs.append(unet(latents, torch.tensor([500]), **unet_conditioning(family, hidden, pooled, time_ids)
                                ).sample)
    assert not torch.equal(*outputs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's precision is the one named")
def test_accelerate_launchs_mixed_precision_is_said_not_to_be_used(tmp_path, capsys, monkeypatch):
    """`accelerate launch --mixed_precision bf16` sets the diffusers scripts' precision; lowvram's own choice wins
    (an old accelerate config file's "no" must not make a run fp32), and says so."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    train(run_config(output=str(tmp_path / "a"), max_steps=1))
    assert ("accelerate's mixed precision bf16 is not used: lowvram picks fp32 for CPU (--mixed-precision bf16 "
            "trains in it)") in capsys.readouterr().out
    for launched in ("fp16", "fp8"):  # no flag named that would be refused here (fp16 on a CPU; fp8 is no choice)
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
        train(run_config(output=str(tmp_path / launched), max_steps=1))
        assert (f"accelerate's mixed precision {launched} is not used: lowvram picks fp32 for CPU\n"
                in capsys.readouterr().out)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # the same as lowvram's: nothing to say
    train(run_config(output=str(tmp_path / "b"), max_steps=1))
    assert "accelerate's" not in capsys.readouterr().out
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # lowvram's own flag wins: said too (it was not)
    train(run_config(output=str(tmp_path / "c"), max_steps=1, mixed_precision="bf16"))
    assert "accelerate's mixed precision fp16 is not used: --mixed-precision bf16 is\n" in capsys.readouterr().out
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # (what accelerate launch sets where nothing names one)
    train(run_config(output=str(tmp_path / "d"), max_steps=1, mixed_precision="bf16"))
    assert "accelerate's" not in capsys.readouterr().out
