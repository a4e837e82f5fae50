"""The objective on the tiny U-Net: input perturbation noises the input and not the target, the losses (l2, l1,
kohya's pseudo-Huber huber and smooth_l1 with their threshold schedules) and the per-timestep weightings are what
they say, and zero terminal SNR makes the last timestep pure noise for v-prediction models and is refused for
epsilon ones."""

import dataclasses

import pytest
import torch
from conftest import run_config
from diffusers import DDPMScheduler
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lowvram.configure import build_config
from lowvram.errors import LowvramError
from lowvram.models import load_model
from lowvram.models.conditioning import unet_conditioning
from lowvram.models.loading import follow_lora_schedule
from lowvram.timesteps import TimestepShape
from lowvram.train.loop import train
from lowvram.train.loss import (
    Objective,
    diffusion_loss,
    elementwise_loss,
    huber_threshold,
    sample_noise,
    sample_timesteps,
)
from lowvram.train.setup import noise_schedules


def tiny_step_inputs(prediction_type="epsilon"):
    model = load_model("tiny")
    scheduler = DDPMScheduler.from_pretrained(model.family.config_dir, subfolder="scheduler",
                                              prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    latents, noise, perturbation = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(3))
    hidden = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=generator)
    return model, scheduler, latents, noise, 0.1 * perturbation, unet_conditioning(model.family, hidden, None, None)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_input_perturbation_noises_the_input_more_and_leaves_the_target(prediction_type):
    """--ip-noise-gamma: the U-Net is given latents noised with the noise plus the perturbation, and its target is
    still made of the noise alone."""
    model, scheduler, latents, noise, perturbation, conditioning = tiny_step_inputs(prediction_type)
    timesteps = torch.tensor([100, 700])
    with torch.no_grad():
        got = diffusion_loss(model.unet, scheduler, latents, conditioning, noise, timesteps, perturbation=perturbation)
        seen = model.unet(scheduler.add_noise(latents, noise + perturbation, timesteps), timesteps,
                          **conditioning).sample
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
        plain = diffusion_loss(model.unet, scheduler, latents, conditioning, noise, timesteps)
    assert got.item() == pytest.approx(torch.nn.functional.mse_loss(seen, target).item(), rel=1e-6)
    assert got.item() != pytest.approx(plain.item(), rel=1e-6)  # random weights: the input moves it little


def test_a_noise_offsets_random_strength_scales_the_offset_alone():
    latents = torch.zeros(2, 4, 8, 8)

    def noise(offset, strength=None):
        torch.manual_seed(0)
        return sample_noise(latents, offset, offset_strength=None if strength is None else torch.tensor(strength))

    plain, full = noise(0.0), noise(0.1)
    torch.testing.assert_close(noise(0.1, 0.0), plain)
    torch.testing.assert_close(noise(0.1, 1.0), full)
    torch.testing.assert_close(noise(0.1, 0.25) - plain, 0.25 * (full - plain))
    assert (full - plain).abs().max() > 0.01


def test_an_adaptive_noise_scale_adds_each_channels_absolute_latent_mean_to_the_offset():
    """kohya's --adaptive_noise_scale: offset + scale x |channel mean| per sample and channel, never below 0."""
    latents = torch.zeros(2, 4, 8, 8)
    latents[0, 1] = 3.0  # sample 0, channel 1 is bright; the rest have mean 0
    latents[1, 2] = -2.0

    def offsets(scale):  # what the offset added: the same seed draws the same plain noise first
        torch.manual_seed(0)
        noise = sample_noise(latents, 0.1, adaptive_scale=scale)
        torch.manual_seed(0)
        return noise - sample_noise(latents, 0.0)

    plain, adaptive = offsets(0.0), offsets(0.5)
    expected = torch.full((2, 4, 1, 1), 0.1)
    expected[0, 1], expected[1, 2] = 0.1 + 0.5 * 3.0, 0.1 + 0.5 * 2.0
    torch.testing.assert_close(adaptive, plain / 0.1 * expected)  # the same draws, each scaled by its offset
    clamped = offsets(-0.5)  # a negative scale takes the offset down to 0, not below
    assert bool((clamped[0, 1] == 0).all()) and bool((clamped[1, 0] != 0).any())
    with pytest.raises(LowvramError, match="--adaptive-noise-scale: scales --noise-offset, which is 0"):
        run_config(adaptive_noise_scale=0.005)


@pytest.mark.parametrize("flag", ["noise_offset", "ip_noise_gamma"])
def test_a_random_strength_of_nothing_is_refused(flag):
    with pytest.raises(LowvramError, match=f"--{flag.replace('_', '-')}-random-strength: draws a strength up to"):
        run_config(**{f"{flag}_random_strength": True})


def test_the_pseudo_huber_losses_are_squared_near_zero_and_linear_far_out():
    d = torch.tensor([0.0, 0.01, 1.0, 100.0]).view(4, 1, 1, 1)
    zero, c = torch.zeros_like(d), torch.full((4,), 0.1)
    huber = elementwise_loss(d, zero, "huber", c).flatten()
    exact = 2 * 0.1 * ((d.flatten().double() ** 2 + 0.01).sqrt() - 0.1)
    assert huber.tolist() == pytest.approx(exact.tolist(), rel=1e-6)
    assert huber[1].item() == pytest.approx(0.01**2, rel=1e-2)  # ~d^2 well inside the threshold
    assert huber[3].item() == pytest.approx(2 * 0.1 * 100, rel=1e-2)  # ~2c|d| far outside it
    assert elementwise_loss(d, zero, "smooth_l1", c).flatten().tolist() == pytest.approx((huber / 0.1).tolist())
    assert elementwise_loss(d, zero, "l1").flatten().tolist() == pytest.approx(d.flatten().tolist())
    assert elementwise_loss(d, zero, "l2").flatten().tolist() == pytest.approx((d.flatten() ** 2).tolist())


def test_an_outlier_pulls_on_the_huber_gradient_no_more_than_2c():
    prediction = torch.tensor([0.0, 1000.0]).view(2, 1, 1, 1).requires_grad_()
    elementwise_loss(prediction, torch.zeros_like(prediction), "huber", torch.full((2,), 0.1)).sum().backward()
    assert prediction.grad.abs().max().item() == pytest.approx(0.2, rel=1e-3)
    l2 = prediction.detach().requires_grad_()
    elementwise_loss(l2, torch.zeros_like(l2), "l2").sum().backward()
    assert l2.grad.abs().max().item() == pytest.approx(2000.0)


@pytest.mark.parametrize("schedule", ["snr", "exponential", "constant"])
def test_the_huber_threshold_runs_from_1_at_no_noise_to_c_at_full_noise(schedule):
    scheduler = DDPMScheduler.from_pretrained(load_model("tiny").family.config_dir, subfolder="scheduler")
    last = scheduler.config.num_train_timesteps - 1
    first, middle, end = huber_threshold(scheduler, torch.tensor([0, last // 2, last]), 0.1, schedule).tolist()
    if schedule == "constant":
        assert first == middle == end == pytest.approx(0.1)
    else:
        assert first > 0.9 and end == pytest.approx(0.1, abs=0.01) and first > middle > end


@pytest.mark.parametrize("loss", ["l1", "huber", "smooth_l1"])
def test_each_loss_trains_the_u_net_through_the_real_objective(loss):
    model, scheduler, latents, noise, _, conditioning = tiny_step_inputs()
    value = diffusion_loss(model.unet, scheduler, latents, conditioning, noise, torch.tensor([100, 900]),
                           Objective(loss, huber=(0.1, "snr")))
    value.backward()
    assert torch.isfinite(value) and any(p.grad is not None and p.grad.abs().sum() > 0
                                         for p in model.unet.parameters())


@pytest.mark.parametrize(("values", "message"), [
    ({"huber_c": 0.2}, "--huber-c: only used with --loss huber or smooth_l1"),
    ({"loss": "huber", "huber_c": 0.0}, "--huber-c: must be in (0, 1]"),
    ({"huber_schedule": "snr", "loss": "l1"}, "--huber-schedule: only used with --loss huber or smooth_l1"),
    ({"loss": "mse"}, "--loss: 'mse' is not one of l2, l1, huber, smooth_l1"),
])
def test_loss_options_that_do_not_go_together_are_refused(values, message):
    with pytest.raises(LowvramError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config({"model": "tiny", "data": "sample", **values})


def test_zero_terminal_snr_makes_the_last_timestep_pure_noise_and_samples_to_match(tmp_path, capsys):
    config = run_config(output=str(tmp_path), prediction_type="v_prediction", zero_terminal_snr=True)
    model = load_model("tiny")
    plain = noise_schedules(load_model("tiny"), run_config(output=str(tmp_path), prediction_type="v_prediction"))
    rescaled = noise_schedules(model, config)
    assert plain.alphas_cumprod[-1] > 0 and rescaled.alphas_cumprod[-1] == 0
    assert rescaled.config.prediction_type == "v_prediction"
    sampler = model.pipeline.scheduler.config
    assert sampler.rescale_betas_zero_snr and sampler.timestep_spacing == "trailing"
    result = train(dataclasses.replace(config, output=dataclasses.replace(
        config.output, sample_prompts=("lvshape, a red circle",), sample_steps=3)))
    assert result.final_loss == result.final_loss and result.samples  # trained (no NaN) and sampled
    assert safe_open(str(result.lora_path), framework="pt").metadata()["ss_zero_terminal_snr"] == "True"
    base = load_model("tiny")  # epsilon, no rescaling: generate follows what the LoRA was trained with
    assert follow_lora_schedule(base, result.lora_path) == (["v-prediction", "zero terminal SNR"], "")
    sampler = base.pipeline.scheduler.config
    assert sampler.prediction_type == "v_prediction" and sampler.rescale_betas_zero_snr
    assert follow_lora_schedule(base, result.lora_path) == ([], "")  # nothing left to change
    # fused into the epsilon model: a v-prediction, zero-terminal-SNR model, marked so in the file and the folder
    from lowvram.cli import main

    for output in (tmp_path / "fused.safetensors", tmp_path / "fused"):
        assert main(["merge", "--model", "tiny", str(result.lora_path), "--output", str(output)]) == 0
        sampler = load_model(str(output)).pipeline.scheduler.config
        assert sampler.prediction_type == "v_prediction" and sampler.rescale_betas_zero_snr, output
    # ComfyUI reads the file's marks on SDXL alone: an SD1.5 file's user is told the node that samples it so
    said = capsys.readouterr().out.replace("\n", "")
    assert said.count("(ComfyUI and AUTOMATIC1111 read these marks on SDXL models only: sample this one in ComfyUI "
                      "through a ModelSamplingDiscrete node, sampling v_prediction, zsnr on; AUTOMATIC1111, beside it "
                      "a fused.yaml: a copy of its configs/v1-inference.yaml with parameterization: \"v\" under "
                      "model.params)") == 1
    assert main(["merge", "--model", "tiny", f"{result.lora_path}:0", "--output", str(tmp_path / "none.safetensors")]
                ) == 0  # at weight 0 the model is the base, as it samples
    assert "the model with 1 LoRA file(s) fused in (0 layers)" in capsys.readouterr().out  # (it said 40)
    assert load_model(str(tmp_path / "none.safetensors")).pipeline.scheduler.config.prediction_type == "epsilon"
    capsys.readouterr()  # trained on, the model's own v_pred and ztsnr keys are followed, and said
    train(run_config(model=str(tmp_path / "fused.safetensors"), output=str(tmp_path / "on"), max_steps=1))
    assert "fused.safetensors predicts with v-prediction and zero terminal SNR (its own setting): trained and " \
           "sampled so" in capsys.readouterr().out
    # that LoRA (trained on a v-prediction model) tried on another, an epsilon one (a NoobAI-XL V-Pred LoRA on
    # Illustrious): the other keeps its own schedule, as ComfyUI samples it; it was sampled v-prediction with zero
    # terminal SNR, and merged into a model marked so
    on, epsilon = tmp_path / "on" / "on.safetensors", load_model(str(tmp_path / "none.safetensors"))
    assert follow_lora_schedule(epsilon, on) == ([], (
        "on.safetensors was trained with v-prediction and zero terminal SNR on another model (fused.safetensors): "
        "none.safetensors keeps its own schedule (epsilon, without zero terminal SNR), as ComfyUI and AUTOMATIC1111 "
        "sample it"))
    assert epsilon.pipeline.scheduler.config.prediction_type == "epsilon"
    cross = tmp_path / "cross.safetensors"
    assert main(["merge", "--model", str(tmp_path / "none.safetensors"), str(on), "--output", str(cross)]) == 0
    assert "none.safetensors keeps its own schedule" in capsys.readouterr().out
    sampler = load_model(str(cross)).pipeline.scheduler.config
    assert sampler.prediction_type == "epsilon" and not sampler.get("rescale_betas_zero_snr")
    # its clip skip is still followed there (it was dropped with the schedule); kohya's stand-in hashes (a diffusers
    # folder's IsADirectory) name no other model
    with safe_open(str(on), framework="pt") as handle:
        metadata = handle.metadata()
    for trained_on, expected in (("deadbeef", ["clip skip 2"]), ("IsADirectory", ["v-prediction", "zero terminal SNR",
                                                                                   "clip skip 2"])):
        marked = tmp_path / f"{trained_on}.safetensors"
        save_file(load_file(str(on)), str(marked), metadata | {"ss_sd_model_hash": trained_on, "ss_clip_skip": "2"})
        base = load_model(str(tmp_path / "none.safetensors"))
        changes, note = follow_lora_schedule(base, marked)
        assert changes == expected and bool(note) == (trained_on == "deadbeef"), (changes, note)
        assert base.text_reading.clip_skip == 2


def test_zero_terminal_snr_is_refused_for_a_model_that_predicts_epsilon(tmp_path):
    # said by the config check (plan's and --dry-run's too), not after the scan and a minute of the model's loading
    with pytest.raises(LowvramError, match="--zero-terminal-snr: tiny predicts epsilon: the last timestep's input "
                                           "is pure noise, in which an epsilon model has nothing to predict; it needs "
                                           "a v-pred"):
        run_config(output=str(tmp_path), zero_terminal_snr=True)
    from lowvram.cli import main

    plain, marked = tmp_path / "plain.safetensors", tmp_path / "marked.safetensors"
    assert main(["merge", "--model", "tiny", "--output", str(plain)]) == 0
    with pytest.raises(LowvramError, match=r"--zero-terminal-snr: plain.safetensors predicts epsilon \(it has no "
                                           r"v_pred key, as v-prediction checkpoints do\): the last timestep"):
        run_config(model=str(plain), output=str(tmp_path), zero_terminal_snr=True)
    # NoobAI-XL V-Pred's keys
    save_file(load_file(str(plain)) | {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(marked))
    # a v-prediction model that says so in its modelspec alone: it trained as epsilon, unsaid
    said_v = tmp_path / "said-v.safetensors"
    save_file(load_file(str(plain)), str(said_v), {"modelspec.prediction_type": "v"})
    run_config(model=str(said_v), output=str(tmp_path), zero_terminal_snr=True)
    assert load_model(str(said_v)).pipeline.scheduler.config.prediction_type == "v_prediction"
    run_config(model=str(marked), output=str(tmp_path), zero_terminal_snr=True)  # as it predicts
    with pytest.raises(LowvramError, match=r"--prediction-type epsilon: .*marked.safetensors has a zero-terminal-SNR "
                                           r"schedule \(its ztsnr key\)"):  # (it blamed --model)
        train(run_config(model=str(marked), output=str(tmp_path / "eps"), prediction_type="epsilon", max_steps=1))
    with pytest.raises(LowvramError, match="--zero-terminal-snr: the last timestep's input is pure noise"):
        build_config({"model": "tiny", "data": "sample", "zero_terminal_snr": True, "prediction_type": "epsilon"})
    with pytest.raises(LowvramError, match=r"--v-pred-like-loss: its \(SNR\+1\)/SNR weight is infinite"):
        build_config({"model": "tiny", "data": "sample", "zero_terminal_snr": True, "v_pred_like_loss": 0.1,
                      "prediction_type": "v_prediction"})


# each per-timestep weighting (kohya's), from the timestep's SNR capped at 1000 as kohya caps it
def capped(snr):  # as kohya caps it for the weightings after min-SNR: the first timestep's is near infinite
    return snr.clamp(max=1000)


WEIGHTINGS = {  # (the objective, its weight of a sample from its timestep's SNR, whether the model predicts v)
    "min_snr": (Objective(min_snr_gamma=5.0), lambda snr, v: snr.clamp(max=5) / (snr + 1 if v else snr)),
    "debiased": (Objective(debiased=True), lambda snr, v: 1 / (capped(snr) + 1) if v else capped(snr).rsqrt()),
    "scale_v_pred_loss": (Objective(v_scaled_like_epsilon=True), lambda snr, v: capped(snr) / (capped(snr) + 1)),
    "v_pred_like_loss": (Objective(v_like=0.1), lambda snr, v: 1 + 0.1 * (capped(snr) + 1) / capped(snr)),
}


@pytest.mark.parametrize("weighting, prediction_type", [("min_snr", "epsilon"), ("min_snr", "v_prediction"),
                                                        ("debiased", "epsilon"), ("debiased", "v_prediction"),
                                                        ("scale_v_pred_loss", "v_prediction"),
                                                        ("v_pred_like_loss", "epsilon")])
def test_each_timestep_weighting_weighs_by_its_snr(weighting, prediction_type):
    model, scheduler, latents, noise, _, conditioning = tiny_step_inputs(prediction_type)
    timesteps = torch.tensor([0, 500])
    alone = [{name: value[i:i + 1] for name, value in conditioning.items()} for i in range(2)]
    objective, weight_of = WEIGHTINGS[weighting]
    with torch.no_grad():
        per_sample = [diffusion_loss(model.unet, scheduler, latents[i:i + 1], alone[i], noise[i:i + 1],
                                     timesteps[i:i + 1]).item() for i in range(2)]
        got = diffusion_loss(model.unet, scheduler, latents, conditioning, noise, timesteps, objective)
    snr = (scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod))[timesteps]
    weight = weight_of(snr, prediction_type == "v_prediction")
    assert got.item() == pytest.approx(sum(w * l for w, l in zip(weight.tolist(), per_sample)) / 2, rel=1e-4)


def test_scaling_the_loss_like_epsilon_is_refused_for_a_model_that_predicts_epsilon(tmp_path):
    with pytest.raises(LowvramError, match="--scale-v-pred-loss: tiny predicts epsilon, whose loss is scaled so"):
        train(run_config(output=str(tmp_path), scale_v_pred_loss=True))


def test_timesteps_stay_in_the_range_asked_for():
    scheduler = DDPMScheduler.from_pretrained(load_model("tiny").family.config_dir, subfolder="scheduler")
    drawn = sample_timesteps(scheduler, 4000, torch.device("cpu"), shape=TimestepShape(200, 300))
    assert drawn.min().item() == 200 and drawn.max().item() == 299
    whole = sample_timesteps(scheduler, 4000, torch.device("cpu"))
    assert whole.min().item() < 10 and whole.max().item() > 990


@pytest.mark.parametrize("strategy", ["earlier", "later"])
def test_a_timestep_bias_draws_its_portion_multiplier_times_as_often(strategy):
    """The diffusers SDXL example's --timestep_bias_strategy: with the later quarter of [200, 1000) weighted 3x, it
    holds 3 x 200 / (600 + 3 x 200) = half of the draws; the rest stay uniform."""
    scheduler = DDPMScheduler.from_pretrained(load_model("tiny").family.config_dir, subfolder="scheduler")
    generator = torch.Generator().manual_seed(0)
    drawn = sample_timesteps(scheduler, 40000, torch.device("cpu"), generator,
                             TimestepShape(200, None, favour=strategy, multiplier=3.0, portion=0.25))
    assert drawn.min().item() == 200 and drawn.max().item() == 999
    favoured = (drawn < 400) if strategy == "earlier" else (drawn >= 800)
    assert favoured.float().mean().item() == pytest.approx(0.5, abs=0.01)
    counts = torch.bincount(drawn - 200, minlength=800).float()
    inside, outside = (counts[:200], counts[200:]) if strategy == "earlier" else (counts[600:], counts[:600])
    assert inside.mean().item() / outside.mean().item() == pytest.approx(3.0, rel=0.05)


@pytest.mark.parametrize(("values", "message"), [
    ({"min_timestep": 500, "max_timestep": 500}, "--min-timestep: 500 is not below --max-timestep 500"),
    ({"max_timestep": 1001}, "--max-timestep: 1001 is not in \\(0, 1000\\]"),
])
def test_an_empty_or_outside_timestep_range_is_refused(values, message):
    with pytest.raises(LowvramError, match=message):
        build_config({"model": "tiny", "data": "sample", **values})


def test_multires_noise_has_unit_variance_and_far_more_coarse_structure_than_plain_noise():
    latents = torch.zeros(8, 4, 64, 64)
    torch.manual_seed(0)
    plain = sample_noise(latents, 0.0)
    pyramid, strong = (sample_noise(latents, 0.0, multires=(6, discount)) for discount in (0.3, 0.8))
    assert pyramid.std().item() == pytest.approx(1.0, rel=1e-3) and strong.std().item() == pytest.approx(1.0, rel=1e-3)
    # the low frequencies plain noise averages away: kohya's default discount adds a third, 0.8 ten times as much
    coarse = [torch.nn.functional.avg_pool2d(n, 8).var().item() for n in (plain, pyramid, strong)]
    assert coarse[1] > 1.2 * coarse[0] and coarse[2] > 8 * coarse[0], coarse
    torch.manual_seed(0)
    sample_noise(latents, 0.0)
    assert torch.equal(sample_noise(latents, 0.0, multires=(6, 0.3)), pyramid)  # the seed decides it all: resumable


def test_noise_offset_and_multires_noise_together_apply_in_kohyas_order():
    """kohya (its check commented out since 2023) adds the offset, then the pyramid over it: the recipe was
    refused here ("choose one")."""
    from lowvram.train.loss import pyramid_noise

    config = build_config({"model": "tiny", "data": "sample", "noise_offset": 0.05, "multires_noise_iterations": 6})
    assert (config.training.noise_offset, config.training.multires_noise_iterations) == (0.05, 6)
    latents = torch.zeros(2, 4, 32, 32)
    torch.manual_seed(0)  # (the pyramid's scale factors: torch's CPU generator)
    both = sample_noise(latents, 0.05, torch.Generator().manual_seed(3), multires=(6, 0.3))
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    assert torch.equal(both, pyramid_noise(sample_noise(latents, 0.05, generator), 6, 0.3, generator))


@pytest.mark.parametrize(("values", "message"), [
    ({"multires_noise_discount": 0.3}, "--multires-noise-discount: only used with --multires-noise-iterations"),
    ({"multires_noise_iterations": 6, "multires_noise_discount": 1.5}, "--multires-noise-discount: must be in"),
])
def test_multires_noise_options_that_do_not_go_together_are_refused(values, message):
    with pytest.raises(LowvramError, match=message):
        build_config({"model": "tiny", "data": "sample", **values})


def test_a_masked_loss_weighs_the_whole_image_as_kohya_and_onetrainer_and_its_mask_alone_when_asked():
    """kohya (loss * mask, then the mean) and OneTrainer by default: an image masked to a quarter weighs a quarter;
    OneTrainer's normalize_masked_area_loss divides by the mask's mean, so every image weighs alike."""
    model, scheduler, latents, noise, _, conditioning = tiny_step_inputs()
    timesteps = torch.tensor([100, 700])
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :, :2] = 1  # a quarter
    mask[1, :, :, :6] = 0.5  # three quarters, half weighed
    with torch.no_grad():
        error = (model.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, **conditioning).sample
                 - noise).square()
        plain = diffusion_loss(model.unet, scheduler, latents, conditioning, noise, timesteps, mask=mask)
        normalized = diffusion_loss(model.unet, scheduler, latents, conditioning, noise, timesteps,
                                    Objective(normalize_masked_area=True), mask=mask)
    assert plain.item() == pytest.approx((error * mask).mean().item(), rel=1e-5)
    per_image = (error * mask).mean(dim=(1, 2, 3)) / mask.mean(dim=(1, 2, 3))
    assert normalized.item() == pytest.approx(per_image.mean().item(), rel=1e-5)


def test_noising_is_in_fp32_so_the_least_noisy_steps_keep_their_noise_under_bf16(monkeypatch, tmp_path):
    """diffusers' add_noise computes in the latents' dtype: in bf16, SD's alphas_cumprod at t = 0 and 1 (0.99915,
    0.99829) round to 1, so the U-Net was shown clean latents and asked for the noise. Noised in fp32, its bf16
    input holds the noise (0.03 of it at t = 0); training hands the loss fp32 latents and noise."""
    from lowvram.train import step

    model, scheduler, latents, noise, _, conditioning = tiny_step_inputs()
    model.unet.to(torch.bfloat16)
    conditioning = {key: value.to(torch.bfloat16) for key, value in conditioning.items()}
    timesteps = torch.tensor([0, 1])
    seen = []
    model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        diffusion_loss(model.unet, scheduler, latents, conditioning, noise, timesteps, unet_dtype=torch.bfloat16)
        in_bf16 = scheduler.add_noise(latents.bfloat16(), noise.bfloat16(), timesteps)
    assert seen[0].dtype == torch.bfloat16 and torch.equal(in_bf16, latents.bfloat16())  # what it was shown before
    assert (seen[0].float() - latents)[0].std().item() == pytest.approx(
        (1 - scheduler.alphas_cumprod[0]).sqrt().item(), rel=0.2)
    dtypes = {}
    real = step.diffusion_loss

    def spy(unet, scheduler, latents, conditioning, noise, *args):
        dtypes.update(latents=latents.dtype, noise=noise.dtype, unet=args[-1])
        return real(unet, scheduler, latents, conditioning, noise, *args)

    monkeypatch.setattr(step, "diffusion_loss", spy)
    train(run_config(output=str(tmp_path), max_steps=1, mixed_precision="bf16"))
    assert dtypes == {"latents": torch.float32, "noise": torch.float32, "unet": torch.bfloat16}
