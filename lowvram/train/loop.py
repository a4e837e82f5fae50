"""The training run, top to bottom: data, model, adapters, optimizer, the loop, the LoRA file, samples."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import tomli_w
import torch
from rich.console import Console

from lowvram.attention import set_attention
from lowvram.config import SAMPLE_DATA, RunConfig, parse_save_every
from lowvram.data.cache import default_cache_dir
from lowvram.data.dataset import TrainingData
from lowvram.data.prepare import prepare_training_data, scan
from lowvram.data.sample import SAMPLE_TRIGGER, write_sample_dataset
from lowvram.errors import LowvramError, TrainingDiverged, TrainingInterrupted
from lowvram.files import write_text
from lowvram.hardware import detect, resolve_mixed_precision
from lowvram.memory import PhasePeaks
from lowvram.models.loading import LoadedModel, detect_family, load_model
from lowvram.plan.calibration import unverified_warning
from lowvram.quant import convert_frozen, place, storage_bytes
from lowvram.train import checkpoint, lora
from lowvram.train.conditioning import encode_prompts, unet_conditioning
from lowvram.train.loss import diffusion_loss, sample_noise, sample_timesteps
from lowvram.train.metadata import lora_metadata
from lowvram.train.optim import build_optimizer, use_averaged_weights
from lowvram.train.progress import StopOnSignal, TrainingProgress
from lowvram.train.runlog import RunLog, append_record
from lowvram.train.sampling import render_grid, render_samples
from lowvram.train.validation import EarlyStopping, hold_out, validation_loss

DEFAULT_EPOCHS = 10
MAX_BAD_STEPS = 5  # non-finite steps in a row before the run stops
MIN_GRAD_SCALE = 1.0  # fp16: overflows the grad scaler has brought its scale below this are not fp16's range
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class TrainResult:
    lora_path: Path
    config_path: Path
    samples: list[Path]
    steps: int
    epochs: int
    final_loss: float
    model: LoadedModel  # the base model with the trained adapters still attached
    data: TrainingData  # what it trained on (cached entries)
    encoded: tuple[int, int]  # latents and text embeddings encoded by this run; the rest came from the cache
    data_reports: list  # the scan reports of the dataset (and the regularization set)
    validation: EarlyStopping | None = None  # the validation record, when a validation set was given


def train(config: RunConfig, console: Console | None = None) -> TrainResult:
    """Train a LoRA as `config` says and write it, its config and sample images to the output folder.

    Under `accelerate launch` every process runs this: each trains on its share of every step's batches
    (DDP averages the gradients), only the main process writes files."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    out_dir = config.output_dir
    lora_path = out_dir / f"{config.output_name}.safetensors"
    if lora_path.exists() and not config.output.overwrite:
        raise LowvramError(f"--output: {lora_path} exists; pass --overwrite to replace it, or choose another --name")
    hardware = detect()
    mixed_precision = resolve_mixed_precision(config.training.mixed_precision, hardware)
    # accelerate keeps the first Accelerator's precision for the whole process and refuses another; a second run
    # in one process (a notebook, the tests) starts from its own (the process group, PartialState, stays)
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=hardware.device == "cpu")
    device, weight_dtype = accelerator.device, WEIGHT_DTYPES[mixed_precision]
    main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    console = console or Console(quiet=not main)
    set_seed(config.training.seed, device_specific=True)  # each process draws its own noise

    # Data: scan first, so a bad dataset fails before any weight is loaded.
    trigger = config.data.trigger_word
    if config.data.data == SAMPLE_DATA:
        data_root = out_dir / "sample_data"
        if main:  # one writer: another process rewriting the files while the main one scans them changed their
            write_sample_dataset(data_root)  # cache keys, and that process then encoded its own latents
        accelerator.wait_for_everyone()
        trigger = trigger or SAMPLE_TRIGGER
    else:
        data_root = Path(config.data.data)
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
    family_hint = detect_family(config.model.model, config.model.model_family)
    if config.data.clip_skip > 1 and any(spec.hidden_state != -1 for spec in family_hint.text_encoders):
        raise LowvramError(f"--clip-skip {config.data.clip_skip}: {family_hint.title} already reads its text "
                           "encoders' penultimate layer, and kohya ignores clip skip for it; drop --clip-skip")
    with accelerator.main_process_first():  # one process writes the scan index, the others read it
        reports = [scan(config, data_root, family_hint, trigger, cache_dir, console)]
        if config.data.reg_data:
            reports.append(scan(config, Path(config.data.reg_data), family_hint, None, cache_dir, console))
        held_out = []
        if config.validation.validation_data:
            held_out = scan(config, Path(config.validation.validation_data), family_hint, trigger, cache_dir,
                            console).usable
    records = reports[0].usable
    if config.validation.validation_split:
        records, held_out = hold_out(records, config.validation.validation_split, config.training.seed)
    for report in reports:
        report.print_summary(console)

    # Model: everything frozen, in the compute dtype; the VAE stays fp32 where it overflows in fp16 (SDXL).
    with console.status(f"loading {config.model.model}"):
        # straight into the compute dtype: an SDXL checkpoint never exists in fp32 in host RAM
        model = load_model(config.model.model, config.model.model_family, dtype=weight_dtype, vae=config.model.vae)
    family = model.family
    model.text_reading = config.text_reading
    noise_scheduler = DDPMScheduler.from_config(model.pipeline.scheduler.config)
    if config.model.prediction_type:
        noise_scheduler.register_to_config(prediction_type=config.model.prediction_type)
        model.pipeline.scheduler.register_to_config(prediction_type=config.model.prediction_type)
    vae_dtype = torch.float32 if weight_dtype == torch.float16 and model.vae.config.force_upcast else weight_dtype
    for module in (model.unet, *model.text_encoders):
        module.requires_grad_(False).to(dtype=weight_dtype)
    model.vae.requires_grad_(False).to(dtype=vae_dtype)

    # Caches: encode what is missing; afterwards only the U-Net (and trained text encoders) use the GPU.
    peaks = PhasePeaks(device)  # each phase's peak VRAM, to print and to log beside the metrics
    with accelerator.main_process_first():  # the main process encodes; the others find it all cached
        prepared_data = prepare_training_data(config, model, reports, device, cache_dir, console, held_out,
                                              peaks)
    data, validation_samples = prepared_data.data, prepared_data.validation
    unet_weights = config.memory.unet_weights if config.memory.unet_weights != "auto" else WEIGHT_NAMES[weight_dtype]
    convert_frozen(model.unet, unet_weights, weight_dtype)
    place(model.unet, device)
    attention = set_attention(model.unet, config.memory.attention)
    train_text = config.network.train_text_encoder
    if train_text:
        for encoder in model.text_encoders:
            encoder.to(device)

    # Adapters: seeded so the same config gives the same LoRA (in every process).
    torch.manual_seed(config.training.seed)
    trainable = lora.add_lora(model, config.network, config.alpha, train_text)
    if config.network.network_weights and not config.training.resume:  # a checkpoint holds them already
        filled = lora.start_from(model, Path(config.network.network_weights), config.network, config.alpha)
        console.print(f"adapters start from {config.network.network_weights} ({filled} layers)", soft_wrap=True)
    torch.manual_seed(config.training.seed + rank)
    if config.memory.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if train_text:
            for encoder in model.text_encoders:
                encoder.gradient_checkpointing_enable()
    groups = [{"params": params, "lr": config.lr if part == "unet" else config.text_encoder_lr}
              for part, params in trainable.items()]
    optimizer = build_optimizer(config.optim.optimizer, groups, config.optim.weight_decay, config.optim.warmup_steps)

    batches_per_step = config.training.gradient_accumulation * world
    steps_per_epoch = max(1, math.ceil(data.batches_per_epoch / batches_per_step))
    total_steps = config.training.max_steps or steps_per_epoch * (config.training.epochs or DEFAULT_EPOCHS)
    lr_scheduler = get_scheduler(config.optim.scheduler, optimizer, num_warmup_steps=config.optim.warmup_steps,
                                 num_training_steps=total_steps, num_cycles=config.optim.scheduler_cycles)
    # wrapped for multi-GPU (DDP), unchanged in one process; the forward passes go through the wrappers. The
    # schedule is not: accelerate's wrapper steps it once per process each call (split_batches=False), which
    # would end warm-up and decay after total_steps / processes
    prepared = accelerator.prepare(model.unet, *[m for _, m in lora.adapted_modules(model)[1:]], optimizer)
    unet, optimizer = prepared[0], prepared[-1]
    text_encoders = list(prepared[1:-1]) if train_text else model.text_encoders
    all_params = [p for params in trainable.values() for p in params]
    save_every = parse_save_every(config.output.save_every)
    sample_every = parse_save_every(config.output.sample_every)
    validate_every = config.validation.validate_every or steps_per_epoch
    resolution = config.data.resolution or family.resolution

    console.print(
        f"[bold]lowvram[/] {family.title} from {model.source} on {hardware.name} ({mixed_precision})"
        f"{f' x {world} processes' if world > 1 else ''} | U-Net {unet_weights} "
        f"({storage_bytes(model.unet) / 2**20:.0f} MiB), {attention} attention, {config.optim.optimizer} | "
        f"{len(records)} images, {data.images_per_epoch} per epoch with repeats"
        f"{f', {len(validation_samples)} for validation' if validation_samples else ''} | {config.network.network} "
        f"rank {config.network.rank} alpha {config.alpha:g} | {total_steps} steps = "
        f"{total_steps / steps_per_epoch:.3g} epochs of {steps_per_epoch} | batch {config.training.batch_size} x "
        f"{config.training.gradient_accumulation}{f' x {world}' if world > 1 else ''}"
    )
    if hardware.device == "cuda":
        unverified = unverified_warning(family, unet_weights, config.memory.gradient_checkpointing,
                                        config.optim.optimizer, mixed_precision)
        if unverified:
            console.print(f"[yellow]warning:[/] {unverified}", soft_wrap=True)
    # Resumable state: adapters, optimizer, scheduler, RNG, the data position and early stopping's record.
    adapted = dict(lora.adapted_modules(model))
    position = checkpoint.Position(0, 0, 0)
    if config.training.resume:
        found = checkpoint.resolve(config.training.resume, out_dir)
        position = checkpoint.load(found, adapted, optimizer, lr_scheduler, accelerator)
        console.print(f"resumed from {found} at step {position.step}", soft_wrap=True)
        if position.step >= total_steps:
            console.print(f"nothing left to train: the run ends at step {total_steps} (raise --max-steps or "
                          "--epochs to train further); writing the LoRA from the checkpoint", soft_wrap=True)
    stopping = EarlyStopping.restore(config.validation.early_stopping, position.validation)

    def save_checkpoint() -> Path | None:
        rng_states = checkpoint.gather_rng_states(accelerator)  # every process: a collective
        if not main:
            return None
        return checkpoint.save(checkpoint.checkpoint_root(out_dir), position, adapted, optimizer, lr_scheduler,
                               accelerator, config.training.keep_checkpoints, rng_states)

    def save_lora(path: Path, step: int, epoch: int) -> Path:
        """The LoRA as it stands (schedule-free: its averaged weights), written by the main process."""
        if main:
            with use_averaged_weights(optimizer):
                lora.save_kohya(model, path, config.alpha, config.output.save_precision,
                                lora_metadata(config, model, records, step, epoch, trigger, started))
        return path

    def offload():
        """Saved activations to pinned host RAM and back (torch's save_on_cpu), when asked for."""
        if not config.memory.offload_activations:
            return nullcontext()
        return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")

    def batch_loss(batch, share: float) -> float:
        """Forward and backward of one (part of a) batch whose loss counts `share` of the step's."""
        latents = batch.latents.to(device, weight_dtype)
        if train_text:
            with accelerator.autocast():
                hidden, pooled = encode_prompts(family, text_encoders, model.tokenizers, batch.captions, device,
                                                model.text_reading)
        else:
            hidden = batch.hidden.to(device, weight_dtype)
            pooled = batch.pooled.to(device, weight_dtype) if batch.pooled is not None else None
        conditioning = unet_conditioning(family, hidden, pooled, batch.time_ids)
        noise = sample_noise(latents, config.training.noise_offset)
        timesteps = sample_timesteps(noise_scheduler, len(latents), device)
        with accelerator.autocast(), offload():
            loss = diffusion_loss(unet, noise_scheduler, latents, conditioning, noise, timesteps,
                                  config.training.min_snr_gamma, batch.weights.to(device),
                                  batch.mask.to(device) if batch.mask is not None else None)
        accelerator.backward(loss * share)
        return loss.item() * share

    def validate() -> float:
        """The held-out loss, each process scoring its share of the images."""
        with evaluating(model, optimizer):
            total, count = validation_loss(
                model.unet, noise_scheduler, family, data, validation_samples[rank::world],
                config.validation.validation_timesteps, config.training.seed, device, weight_dtype,
                accelerator.autocast, model.text_encoders if train_text else None, model.tokenizers,
                model.text_reading)
        total, count = _sum_over_processes(accelerator, total, count)
        return total / count

    splits = 1  # batches run in this many parts after an out-of-memory
    started = datetime.now(timezone.utc)
    # written first: it is what `--config ... --resume auto` continues an interrupted run with
    config_path = out_dir / f"{config.output_name}.toml"
    if main:
        write_text(config_path, tomli_w.dumps(config.to_toml_dict()))
    batches = data.batches(position.epoch, position.batch)
    epoch, bad_steps, step = position.epoch, 0, position.step
    trained_modules = [model.unet, *(model.text_encoders if train_text else [])]
    for module in trained_modules:  # adapter dropout and transformers' gradient checkpointing read .training
        module.train()
    with (TrainingProgress(console, total_steps, position.step) as progress, StopOnSignal() as signals,
          RunLog(out_dir, position.step, config.output.tensorboard, main) as log, peaks.phase("training")):
        for step in range(position.step + 1, total_steps + 1):
            step_start = time.perf_counter()
            drawn = [next(batches) for _ in range(batches_per_step)]  # the same draws in every process
            epoch, number = drawn[-1][0], drawn[-1][1]
            mine = [batch for _, _, batch in drawn[rank::world]]
            while True:  # a CUDA out-of-memory makes the run leaner and repeats the step on the same data
                try:
                    step_loss = sum(batch_loss(chunk, len(chunk) / len(batch) / len(mine))
                                    for batch in mine for chunk in batch.split(splits))
                    break
                except torch.OutOfMemoryError:
                    optimizer.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    change, splits = leaner_after_oom(model.unet, splits, max(len(b) for b in mine))
                    console.print(f"[yellow]out of memory at step {step}: {change}; repeating the step[/]")
            # one collective per step: the mean loss, and whether any process was asked to stop
            step_loss, stop_asked = _sum_over_processes(accelerator, step_loss, float(signals.received is not None))
            step_loss /= world
            # one total norm (one device sync), unscaled first under fp16; inf max_norm measures without clipping
            grad_norm = accelerator.clip_grad_norm_(all_params, config.optim.max_grad_norm or math.inf)
            verdict = step_verdict(step_loss, grad_norm, accelerator.scaler)
            if verdict == "ok" or accelerator.scaler is not None:
                # under fp16 the grad scaler skips a non-finite update itself and lowers its scale; it must see
                # every step (skipping optimizer.step would leave it unscaled and never recovering)
                optimizer.step()
                if not optimizer.step_was_skipped:  # the grad scaler skipped it: the schedule waits too
                    lr_scheduler.step()
            if verdict == "ok":
                bad_steps = 0
            elif verdict == "bad":  # a non-finite loss or gradient never reaches the weights
                bad_steps += 1
                console.print(f"[yellow]step {step}: non-finite loss or gradient, step skipped[/]")
                if bad_steps >= MAX_BAD_STEPS:
                    raise TrainingDiverged(
                        f"{bad_steps} steps in a row had a non-finite loss or gradient (at step {step}); likely "
                        "causes: a learning rate too high (--lr), fp16 overflow (try --mixed-precision bf16, or "
                        "keep SDXL's VAE in fp32), or a broken image (lowvram check-data); the last checkpoint "
                        f"in {checkpoint.checkpoint_root(out_dir)} holds the last good weights")
            optimizer.zero_grad(set_to_none=True)

            lr = lr_scheduler.get_last_lr()[0]
            seconds = time.perf_counter() - step_start
            smoothed = progress.update(step, step_loss, lr, seconds)
            log.step(step, {"epoch": epoch, "loss": step_loss, "loss_smoothed": smoothed, "lr": lr,
                            "grad_norm": float(grad_norm) if grad_norm is not None else None, "seconds": seconds})
            if validation_samples and (step % validate_every == 0 or step == total_steps):
                loss = validate()
                best = stopping.update(step, loss)
                log.validation(step, loss, best)
                console.print(f"step {step}: validation loss {loss:.5f}" + (" (best)" if best else
                              f", best {stopping.best:.5f} at step {stopping.best_step}"))
                if best:
                    save_lora(out_dir / f"{config.output_name}-best.safetensors", step, epoch)
            position = checkpoint.Position(step, epoch, number + 1, stopping.state())
            if save_every and step < total_steps and _is_save_point(save_every, step, steps_per_epoch):
                suffix = f"step{step:06d}" if save_every[1] == "steps" else f"e{step // steps_per_epoch:04d}"
                save_lora(out_dir / f"{config.output_name}-{suffix}.safetensors", step, epoch)
            if sample_every and main and _is_save_point(sample_every, step, steps_per_epoch):
                with evaluating(model, optimizer):
                    grid = render_grid(model, config.samples,
                                       out_dir / "samples" / f"{config.output_name}-step{step:06d}.png", resolution,
                                       config.output.sample_steps, config.training.seed, accelerator,
                                       prepared_data.sample_embeddings)
                log.image(step, "samples", grid)
            every = config.training.checkpoint_every
            if (every and step % every == 0) or step == total_steps or stopping.stop:
                save_checkpoint()
            if stopping.stop:
                console.print(f"[yellow]early stopping at step {step}:[/] no better validation loss in "
                              f"{stopping.since_best} validations; the best ({stopping.best:.5f}, step "
                              f"{stopping.best_step}) is {config.output_name}-best.safetensors")
                break
            if stop_asked and step < total_steps:
                saved = save_checkpoint()
                usable = save_lora(out_dir / f"{config.output_name}-step{step:06d}.safetensors", step, epoch)
                raise TrainingInterrupted(f"interrupted at step {step} of {total_steps}: saved {usable} and the "
                                          f"checkpoint {saved}; continue with: lowvram train --config "
                                          f"{out_dir / config.output_name}.toml --resume auto")

    for module in trained_modules:
        module.eval()
    epochs_done = math.ceil(step / steps_per_epoch)
    with peaks.phase("saving"):
        save_lora(lora_path, step, epochs_done)
    samples: list[Path] = []
    if main:
        with use_averaged_weights(optimizer):
            if config.output.format == "diffusers":
                lora.save_diffusers(model, out_dir / f"{config.output_name}-diffusers", config.output.save_precision)
            with peaks.phase("sampling"):
                samples = render_samples(model, config.samples, out_dir / "samples", config.output_name,
                                         resolution, config.output.sample_steps, config.training.seed, accelerator,
                                         prepared_data.sample_embeddings)
        console.print(f"[green]saved[/] {lora_path}" + "".join(f"\n[green]sample[/] {p}" for p in samples),
                      soft_wrap=True)
        if peaks.bytes:
            console.print(f"peak VRAM per phase (reserved, without the CUDA context): {peaks.summary()}")
            append_record(out_dir / "metrics.jsonl", {"step": step, "phase_peak_bytes": peaks.bytes})
    accelerator.wait_for_everyone()
    return TrainResult(lora_path, config_path, samples, step, epochs_done, progress.loss or float("nan"), model,
                       data, (prepared_data.encoded_latents, prepared_data.encoded_texts), reports,
                       stopping if validation_samples else None)


@contextmanager
def evaluating(model: LoadedModel, optimizer):
    """Sampling and validation see the LoRA as it will be saved: no adapter dropout, schedule-free's
    averaged weights; training resumes where it was afterwards."""
    modules = [model.unet, *model.text_encoders]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with use_averaged_weights(optimizer):
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def step_verdict(loss: float, grad_norm, scaler) -> str:
    """'ok'; 'scaler overflow': fp16's grad scaler met gradients beyond fp16's range, skips the update and
    lowers its scale, as it does now and then, above all in the first steps (routine, not a bad step); or
    'bad': the loss itself is not finite, or the gradients are not even at a scale below 1, where no fp16
    range explains them."""
    if not math.isfinite(loss):
        return "bad"
    if grad_norm is None or math.isfinite(float(grad_norm)):
        return "ok"
    if scaler is not None and scaler.get_scale() >= MIN_GRAD_SCALE:
        return "scaler overflow"
    return "bad"


def _sum_over_processes(accelerator, *values: float) -> tuple[float, ...]:
    """Sums across processes (one all-reduce); the values themselves in a single process."""
    if accelerator.num_processes == 1:
        return values
    summed = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum")
    return tuple(summed.tolist())


def leaner_after_oom(unet: torch.nn.Module, splits: int, batch_size: int) -> tuple[str, int]:
    """The next leaner way to run a step that ran out of memory, keeping the effective batch: recompute
    activations, then run each batch in smaller parts (gradients accumulate to the same update)."""
    if not unet.is_gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        return "turned on gradient checkpointing", splits
    if batch_size // splits > 1:
        return f"running each batch in {splits * 2} parts (same effective batch)", splits * 2
    raise LowvramError("out of memory even with gradient checkpointing and one image at a time; run lowvram plan "
                       "for this GPU, or use a lower --resolution or leaner --unet-weights (e.g. bnb-nf4)")


def _is_save_point(save_every: tuple[int, str], step: int, steps_per_epoch: int) -> bool:
    every, unit = save_every
    if unit == "steps":
        return step % every == 0
    return step % steps_per_epoch == 0 and (step // steps_per_epoch) % every == 0
