"""One training step: forward and backward over this process's batches (made leaner and repeated after a CUDA
out-of-memory), then the update, which a non-finite loss or gradient never reaches.

A step reads values back from the GPU once: the loss, the gradient norm and the stop flag, together, because the
update's verdict needs them. Nothing else waits for the GPU (batches arrive from pinned memory without blocking),
so the host prepares the next step's data while the GPU still works on this one's backward pass."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from lowvram.adapters import networks
from lowvram.checkpointing import checkpointed_count, enable_checkpointing
from lowvram.compiling import drop_cuda_graphs, uses_cuda_graphs
from lowvram.errors import LowvramError, TrainingDiverged
from lowvram.hardware import precision_trouble
from lowvram.memory import ActivationsToHost, free_cached_memory
from lowvram.models.conditioning import encode_prompts, unet_conditioning
from lowvram.train import checkpoint_folders
from lowvram.train.loss import Objective, diffusion_loss, sample_noise, sample_timesteps
from lowvram.train.setup import Session, Trainee

MAX_BAD_STEPS = 5  # non-finite steps in a row before the run stops
MIN_GRAD_SCALE = 1.0  # fp16: overflows the grad scaler has brought its scale below this are not fp16's range


def forward_backward(session: Session, trainee: Trainee, batches: list, splits: int, step: int
                     ) -> tuple[torch.Tensor, int]:
    """This process's share of the step's loss (on the device, not read back), gradients accumulated. A CUDA
    out-of-memory makes the run leaner (see `leaner_after_oom`) and repeats the step on the same data; returns the
    loss and the parts each batch now runs in."""
    while True:
        try:
            return sum(batch_loss(session, trainee, chunk, len(chunk) / len(batch) / len(batches))
                       for batch in batches for chunk in batch.split(splits)), splits
        except torch.OutOfMemoryError:
            trainee.optimizer.zero_grad(set_to_none=True)
            free_cached_memory(session.device)
            change, splits = leaner_after_oom(trainee.model.unet, splits, max(len(b) for b in batches))
            session.console.print(f"[yellow]warning: out of memory at step {step}: {change}; repeating the step[/]")


def batch_loss(session: Session, trainee: Trainee, batch, share: float) -> torch.Tensor:
    """Forward and backward of one (part of a) batch whose loss counts `share` of the step's."""
    config, device, dtype, accelerator = session.config, session.device, session.weight_dtype, session.accelerator
    model = trainee.model
    batch = batch.to(device)  # without waiting: pinned on CUDA (see `Batch.pinned`)
    latents = batch.latents.float()  # noised in fp32 (`diffusion_loss`), the U-Net given them in `dtype`
    if trainee.train_text:
        with torch.no_grad() if trainee.text_frozen else nullcontext(), accelerator.autocast():
            hidden, pooled = encode_prompts(model.family, trainee.text_encoders, model.tokenizers, batch.captions,
                                            device, model.text_reading)
    else:
        hidden = batch.hidden.to(dtype)
        pooled = batch.pooled.to(dtype) if batch.pooled is not None else None
    conditioning = unet_conditioning(model.family, hidden, pooled, batch.time_ids)
    t = config.training
    # kohya's random strengths: one per step, drawn on the device (reading it back would wait for the GPU)
    offset_strength = torch.rand((), device=device) if t.noise_offset_random_strength else None
    noise = sample_noise(latents, t.noise_offset, multires=config.multires_noise, offset_strength=offset_strength,
                         adaptive_scale=t.adaptive_noise_scale)
    timesteps = sample_timesteps(trainee.noise_scheduler, len(latents), device, shape=t.timestep_shape)
    perturbation = t.ip_noise_gamma * torch.randn_like(latents) if t.ip_noise_gamma else None
    if perturbation is not None and t.ip_noise_gamma_random_strength:
        perturbation = perturbation * torch.rand((), device=device, dtype=perturbation.dtype)
    mask = batch.mask
    if mask is not None and config.data.unmasked_weight:  # the area outside the masks keeps some, as OneTrainer's
        mask = mask.clamp(min=config.data.unmasked_weight)
    prior = batch.regularization if config.data.prior_prediction else None
    objective, prior_conditioning = Objective.of(config), None
    if objective.needs_own_prediction(mask, prior) and trainee.train_text:  # without the LoRA, in the encoders too
        with torch.no_grad(), accelerator.autocast(), networks.adapters_off(*trainee.text_encoders):
            prior_conditioning = unet_conditioning(model.family, *encode_prompts(
                model.family, trainee.text_encoders, model.tokenizers, batch.captions, device, model.text_reading),
                batch.time_ids)
    with accelerator.autocast(), offloading(session, trainee.unet):
        loss = diffusion_loss(trainee.unet, trainee.noise_scheduler, latents, conditioning, noise, timesteps,
                              objective, batch.weights, mask, perturbation, prior, prior_conditioning, dtype)
    accelerator.backward(loss * share)
    return loss.detach().float() * share


def offloading(session: Session, unet: torch.nn.Module):
    """Saved activations to pinned host RAM and back, the U-Net's own weights kept in place, when asked for."""
    if not session.config.memory.offload_activations:
        return nullcontext()
    return ActivationsToHost(unet, pin_memory=session.device.type == "cuda")


@dataclass
class StepOutcome:
    verdict: str  # see `step_verdict`
    loss: float  # the mean over processes
    grad_norm: float | None
    stop_asked: bool  # some process was asked to stop (Ctrl-C, SIGTERM)
    checkpoint_due: bool  # some process's clock says --checkpoint-minutes have passed since the last checkpoint


def update(session: Session, trainee: Trainee, step_loss: torch.Tensor, stop_asked: bool, step: int,
           checkpoint_due: bool = False) -> StepOutcome:
    """Clip, judge and apply the step's gradients. The loss is averaged over processes with the stop flag and
    whether a timed checkpoint is due in the same all-reduce (so that every process agrees on both), and read back
    with the gradient norm: the step's one wait for the GPU."""
    accelerator, optimizer = session.accelerator, trainee.optimizer
    # torch.full fills on the device; torch.tensor(value, device=...) would copy from the host and wait
    shared = torch.stack([step_loss.to(session.device, torch.float32),
                          torch.full((), float(stop_asked), device=session.device),
                          torch.full((), float(checkpoint_due), device=session.device)])
    if accelerator.num_processes > 1:
        shared = accelerator.reduce(shared, "sum")
    # one total norm, unscaled first under fp16; inf max_norm measures without clipping
    grad_norm = accelerator.clip_grad_norm_(trainee.params, session.config.optim.max_grad_norm or math.inf)
    if grad_norm is not None:
        shared = torch.cat([shared, torch.as_tensor(grad_norm).detach().to(shared).reshape(1)])
    loss, stop, due, *norm = shared.tolist()
    loss, grad_norm = loss / accelerator.num_processes, norm[0] if norm else None
    verdict = step_verdict(loss, grad_norm, accelerator.scaler)
    if verdict == "ok" or accelerator.scaler is not None:
        # under fp16 the grad scaler skips a non-finite update itself and lowers its scale; it must see every
        # step (skipping optimizer.step would leave it unscaled and never recovering); the schedule, the norm
        # limits and the EMA wait for an update it skipped
        finite = grad_norm is not None and math.isfinite(grad_norm)
        if optimizer_stepped(optimizer, accelerator.scaler, finite):
            trainee.lr_scheduler.step()
            if session.config.optim.scale_weight_norms:
                for module in trainee.adapted.values():
                    networks.limit_norms(module, session.config.optim.scale_weight_norms)
            if trainee.ema is not None and step % session.config.optim.ema_every == 0:  # as applied, limits in
                average(trainee.ema, trainee.params)
    optimizer.zero_grad(set_to_none=not trainee.gradients_kept)
    return StepOutcome(verdict, loss, grad_norm, stop > 0, due > 0)


def average(ema, params: list[torch.nn.Parameter]) -> None:
    """One step of --ema's average (diffusers' EMAModel: its decay ramp, its state), over the parameters that
    train: a text encoder frozen by --text-encoder-until keeps its average, as OneTrainer's does (EMAModel.step
    would copy the frozen weights over it)."""
    ema.optimization_step += 1
    ema.cur_decay_value = ema.get_decay(ema.optimization_step)
    trained = [(shadow, param) for shadow, param in zip(ema.shadow_params, params, strict=True) if param.requires_grad]
    if trained:
        shadows, values = zip(*trained)
        torch._foreach_lerp_(list(shadows), list(values), 1 - ema.cur_decay_value)


def optimizer_stepped(optimizer, scaler, gradients_finite: bool) -> bool:
    """Step the (accelerate-wrapped) optimizer; whether it updated the weights. Under fp16 the grad scaler skips an
    update of non-finite gradients and lowers its scale. accelerate's `step_was_skipped` cannot see that where the
    optimizer skips it inside its own kernel (fused AdamW, lowvram's on CUDA), so the scale says it: it falls
    exactly when an update was skipped. Reading it waits for the GPU, so only where the gradients (their norm, read
    already) were not all finite."""
    if scaler is None or gradients_finite:
        optimizer.step()
        return not optimizer.step_was_skipped
    scale = scaler.get_scale()
    optimizer.step()
    return scaler.get_scale() >= scale and not optimizer.step_was_skipped


def learning_rates(trainee: Trainee, before: dict[str, float] | None = None) -> dict[str, float]:
    """The log's learning rates: the U-Net's plain rate ("lr") and each trained text encoder's ("lr_text_encoder",
    as kohya logs lr/textencoder). Read `before` the update, as the step uses them; then, after it, a schedule-free
    optimizer's rate (it warms up inside its step and keeps the rate used) and Prodigy's or D-Adaptation's
    d x lr ("lr_effective", kohya's lr/d*lr: the rate that moves the weights, where the plain one stays at 1), or
    relative-step Adafactor's own step size, which reads no group's rate."""
    groups = trainee.optimizer.param_groups
    named = {"lr": 0} | {f"lr_{part}": index for part, index in trainee.text_rate_groups.items()
                         if not trainee.text_frozen}  # (past --text-encoder-until they train no more)
    if before is None:
        return {name: groups[index]["lr"] for name, index in named.items()}
    rates = {name: groups[index].get("scheduled_lr", before[name]) for name, index in named.items()}
    if isinstance(groups[0].get("d"), float):
        rates["lr_effective"] = groups[0]["d"] * rates["lr"]
    inner = getattr(trainee.optimizer, "optimizer", trainee.optimizer)
    state = inner.state.get(groups[0]["params"][0]) if groups[0].get("relative_step") else None
    if state:  # (as transformers' AdafactorSchedule reads it, from the first weight's state: none before a step)
        rates["lr_effective"] = float(type(inner)._get_lr(groups[0], state))
    return rates


def count_bad_steps(session: Session, verdict: str, bad_steps: int, step: int) -> int:
    """Non-finite steps in a row; too many stop the run, pointing at the likely causes."""
    if verdict == "ok":
        return 0
    if verdict != "bad":
        return bad_steps
    bad_steps += 1
    session.console.print(f"[yellow]warning: step {step}: non-finite loss or gradient, step skipped[/]")
    if bad_steps >= MAX_BAD_STEPS:
        precision = precision_trouble(session.run.mixed_precision, session.run.hardware)
        last = checkpoint_folders.latest(checkpoint_folders.checkpoint_root(session.out_dir))
        kept = (f"the last checkpoint, {last}, holds the last good weights (--resume auto goes on from it)" if last
                else "no checkpoint was saved to go back to (--checkpoint-every N keeps one)")
        raise TrainingDiverged(
            f"{bad_steps} steps in a row had a non-finite loss or gradient (at step {step}); likely causes: a "
            f"learning rate too high (--lr), {precision + ', ' if precision else ''}or a broken image (lowvram "
            f"check-data); {kept}")
    return bad_steps


def step_verdict(loss: float, grad_norm: float | None, scaler) -> str:
    """'ok'; 'scaler overflow': fp16's grad scaler met gradients beyond fp16's range, skips the update and
    lowers its scale, as it does now and then, above all in the first steps (routine, not a bad step); or
    'bad': the loss itself is not finite, or the gradients are not even at a scale below 1, where no fp16
    range explains them."""
    if not math.isfinite(loss):
        return "bad"
    if grad_norm is None or math.isfinite(grad_norm):
        return "ok"
    if scaler is not None and scaler.get_scale() >= MIN_GRAD_SCALE:
        return "scaler overflow"
    return "bad"


def sum_over_processes(accelerator, *values: float) -> tuple[float, ...]:
    """Sums across processes (one all-reduce); the values themselves in a single process."""
    if accelerator.num_processes == 1:
        return values
    summed = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum")
    return tuple(summed.tolist())


def leaner_after_oom(unet: torch.nn.Module, splits: int, batch_size: int) -> tuple[str, int]:
    """The next leaner way to run a step that ran out of memory, keeping the effective batch: free the CUDA
    graphs' memory, recompute activations, then run each batch in smaller parts (gradients accumulate to the same
    update)."""
    if uses_cuda_graphs(unet):
        drop_cuda_graphs(unet)
        return "stopped replaying CUDA graphs (the blocks stay compiled)", splits
    recomputed, units = checkpointed_count(unet)
    if recomputed < units:
        enable_checkpointing(unet)
        return f"turned on gradient checkpointing{f' (all blocks, was {recomputed})' if recomputed else ''}", splits
    if batch_size // splits > 1:
        return f"running each batch in {splits * 2} parts (same effective batch)", splits * 2
    raise LowvramError("out of memory even with gradient checkpointing and one image at a time; run lowvram plan "
                       "for this GPU, or use a lower --resolution or leaner --unet-weights (e.g. bnb-nf4)")
