"""The training run, top to bottom: data, model, adapters, optimizer, the loop, the LoRA file, samples."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import tomli_w
import torch
from rich.console import Console

import lowvram
from lowvram.attention import set_attention
from lowvram.config import SAMPLE_DATA, RunConfig, parse_save_every
from lowvram.data.cache import default_cache_dir
from lowvram.data.dataset import TrainingData
from lowvram.data.prepare import prepare_training_data, scan
from lowvram.data.sample import SAMPLE_TRIGGER, write_sample_dataset
from lowvram.errors import LowvramError, TrainingDiverged, TrainingInterrupted
from lowvram.files import write_text
from lowvram.hardware import detect, resolve_mixed_precision
from lowvram.models.loading import LoadedModel, detect_family, load_model
from lowvram.quant import convert_frozen, storage_bytes
from lowvram.train import checkpoint, lora
from lowvram.train.conditioning import encode_prompts, unet_conditioning
from lowvram.train.loss import diffusion_loss, sample_noise, sample_timesteps
from lowvram.train.optim import build_optimizer
from lowvram.train.progress import StopOnSignal, TrainingProgress
from lowvram.train.sampling import render_samples

DEFAULT_EPOCHS = 10
MAX_BAD_STEPS = 5  # non-finite steps in a row before the run stops
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


def train(config: RunConfig, console: Console | None = None) -> TrainResult:
    """Train a LoRA as `config` says and write it, its config and sample images to the output folder."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    console = console or Console()
    out_dir = config.output_dir
    lora_path = out_dir / f"{config.output_name}.safetensors"
    if lora_path.exists() and not config.output.overwrite:
        raise LowvramError(f"--output: {lora_path} exists; pass --overwrite to replace it, or choose another --name")
    hardware = detect()
    mixed_precision = resolve_mixed_precision(config.training.mixed_precision, hardware)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=hardware.device == "cpu")
    device, weight_dtype = accelerator.device, WEIGHT_DTYPES[mixed_precision]
    set_seed(config.training.seed)

    # Data: scan first, so a bad dataset fails before any weight is loaded.
    trigger = config.data.trigger_word
    if config.data.data == SAMPLE_DATA:
        data_root = write_sample_dataset(out_dir / "sample_data")
        trigger = trigger or SAMPLE_TRIGGER
    else:
        data_root = Path(config.data.data)
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
    family_hint = detect_family(config.model.model, config.model.model_family)
    reports = [scan(config, data_root, family_hint, trigger, cache_dir, console)]
    if config.data.reg_data:
        reports.append(scan(config, Path(config.data.reg_data), family_hint, None, cache_dir, console))
    for report in reports:
        report.print_summary(console)

    # Model: everything frozen, in the compute dtype; the VAE stays fp32 where it overflows in fp16 (SDXL).
    with console.status(f"loading {config.model.model}"):
        # straight into the compute dtype: an SDXL checkpoint never exists in fp32 in host RAM
        model = load_model(config.model.model, config.model.model_family, dtype=weight_dtype, vae=config.model.vae)
    family = model.family
    noise_scheduler = DDPMScheduler.from_config(model.pipeline.scheduler.config)
    if config.model.prediction_type:
        noise_scheduler.register_to_config(prediction_type=config.model.prediction_type)
        model.pipeline.scheduler.register_to_config(prediction_type=config.model.prediction_type)
    vae_dtype = torch.float32 if weight_dtype == torch.float16 and model.vae.config.force_upcast else weight_dtype
    for module in (model.unet, *model.text_encoders):
        module.requires_grad_(False).to(dtype=weight_dtype)
    model.vae.requires_grad_(False).to(dtype=vae_dtype)

    # Caches: encode what is missing; afterwards only the U-Net (and trained text encoders) use the GPU.
    prepared_data = prepare_training_data(config, model, reports, device, cache_dir, console)
    data = prepared_data.data
    unet_weights = config.memory.unet_weights if config.memory.unet_weights != "auto" else WEIGHT_NAMES[weight_dtype]
    convert_frozen(model.unet, unet_weights, weight_dtype)
    model.unet.to(device)
    attention = set_attention(model.unet, config.memory.attention)
    train_text = config.network.train_text_encoder
    if train_text:
        for encoder in model.text_encoders:
            encoder.to(device)

    # Adapters: seeded so the same config gives the same LoRA.
    torch.manual_seed(config.training.seed)
    trainable = lora.add_lora(model, config.network.rank, config.alpha, config.network.dropout, train_text)
    if config.memory.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if train_text:
            for encoder in model.text_encoders:
                encoder.gradient_checkpointing_enable()
    groups = [{"params": params, "lr": config.lr if part == "unet" else config.text_encoder_lr}
              for part, params in trainable.items()]
    optimizer = build_optimizer(config.optim.optimizer, groups, config.optim.weight_decay)

    steps_per_epoch = math.ceil(data.batches_per_epoch / config.training.gradient_accumulation)
    total_steps = config.training.max_steps or steps_per_epoch * (config.training.epochs or DEFAULT_EPOCHS)
    lr_scheduler = get_scheduler(config.optim.scheduler, optimizer, num_warmup_steps=config.optim.warmup_steps,
                                 num_training_steps=total_steps, num_cycles=config.optim.scheduler_cycles)
    prepared = accelerator.prepare(model.unet, *[m for _, m in lora.adapted_modules(model)[1:]], optimizer,
                                   lr_scheduler)
    optimizer, lr_scheduler = prepared[-2], prepared[-1]
    all_params = [p for params in trainable.values() for p in params]
    save_every = parse_save_every(config.output.save_every)
    records = reports[0].usable

    console.print(
        f"[bold]lowvram[/] {family.title} from {model.source} on {hardware.name} ({mixed_precision}) | U-Net "
        f"{unet_weights} ({storage_bytes(model.unet) / 2**20:.0f} MiB), {attention} attention, "
        f"{config.optim.optimizer} | "
        f"{len(records)} images, {data.images_per_epoch} per epoch with repeats | rank {config.network.rank} "
        f"alpha {config.alpha:g} | {total_steps} steps = {total_steps / steps_per_epoch:.3g} epochs "
        f"of {steps_per_epoch} | batch {config.training.batch_size} x {config.training.gradient_accumulation}"
    )
    # Resumable state: adapters, optimizer, scheduler, RNG and the data position.
    adapted = dict(lora.adapted_modules(model))
    position = checkpoint.Position(0, 0, 0)
    if config.training.resume:
        found = checkpoint.resolve(config.training.resume, out_dir)
        position = checkpoint.load(found, adapted, optimizer, lr_scheduler, accelerator)
        console.print(f"resumed from {found} at step {position.step}")

    def save_checkpoint() -> Path:
        return checkpoint.save(checkpoint.checkpoint_root(out_dir), position, adapted, optimizer, lr_scheduler,
                               accelerator, config.training.keep_checkpoints)

    def batch_loss(batch, share: float) -> float:
        """Forward and backward of one (part of a) batch whose loss counts `share` of the step's."""
        latents = batch.latents.to(device, weight_dtype)
        if train_text:
            with accelerator.autocast():
                hidden, pooled = encode_prompts(family, model.text_encoders, model.tokenizers, batch.captions,
                                                device)
        else:
            hidden = batch.hidden.to(device, weight_dtype)
            pooled = batch.pooled.to(device, weight_dtype) if batch.pooled is not None else None
        conditioning = unet_conditioning(family, hidden, pooled, batch.time_ids)
        noise = sample_noise(latents, config.training.noise_offset)
        timesteps = sample_timesteps(noise_scheduler, len(latents), device)
        with accelerator.autocast():
            loss = diffusion_loss(model.unet, noise_scheduler, latents, conditioning, noise, timesteps,
                                  config.training.min_snr_gamma, batch.weights.to(device),
                                  batch.mask.to(device) if batch.mask is not None else None)
        accelerator.backward(loss * share)
        return loss.item() * share

    splits = 1  # batches run in this many parts after an out-of-memory
    started = datetime.now(timezone.utc)
    metrics_path = out_dir / "metrics.jsonl"
    # written first: it is what `--config ... --resume auto` continues an interrupted run with
    config_path = write_text(out_dir / f"{config.output_name}.toml", tomli_w.dumps(config.to_toml_dict()))
    batches = data.batches(position.epoch, position.batch)
    epoch, bad_steps = position.epoch, 0
    model.unet.train()
    with (TrainingProgress(console, total_steps, position.step) as progress, StopOnSignal() as signals,
          open(metrics_path, "a" if position.step else "w", encoding="utf-8") as metrics):
        for step in range(position.step + 1, total_steps + 1):
            step_start = time.perf_counter()
            drawn = [next(batches) for _ in range(config.training.gradient_accumulation)]
            epoch, number = drawn[-1][0], drawn[-1][1]
            while True:  # a CUDA out-of-memory makes the run leaner and repeats the step on the same data
                try:
                    step_loss = sum(batch_loss(chunk, len(chunk) / len(batch) / len(drawn))
                                    for _, _, batch in drawn for chunk in batch.split(splits))
                    break
                except torch.OutOfMemoryError:
                    optimizer.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    change, splits = leaner_after_oom(model.unet, splits, max(len(b) for _, _, b in drawn))
                    console.print(f"[yellow]out of memory at step {step}: {change}; repeating the step[/]")
            position = checkpoint.Position(step, epoch, number + 1)
            # one total norm (one device sync), unscaled first under fp16; inf max_norm measures without clipping
            grad_norm = accelerator.clip_grad_norm_(all_params, config.optim.max_grad_norm or math.inf)
            finite = math.isfinite(step_loss) and (grad_norm is None or math.isfinite(float(grad_norm)))
            if finite or accelerator.scaler is not None:
                # under fp16 the grad scaler skips a non-finite update itself and lowers its scale; it must see
                # every step (skipping optimizer.step would leave it unscaled and never recovering)
                optimizer.step()
                lr_scheduler.step()
            if finite:
                bad_steps = 0
            else:  # a non-finite loss or gradient never reaches the weights
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
            smoothed = progress.update(step, step_loss, lr, time.perf_counter() - step_start)
            metrics.write(json.dumps({"step": step, "epoch": epoch, "loss": step_loss, "loss_smoothed": smoothed,
                                      "lr": lr, "seconds": time.perf_counter() - step_start}) + "\n")
            metrics.flush()  # readable while training runs (and after a kill)
            if save_every and step < total_steps and _is_save_point(save_every, step, steps_per_epoch):
                suffix = f"step{step:06d}" if save_every[1] == "steps" else f"e{step // steps_per_epoch:04d}"
                _save(config, model, records, out_dir / f"{config.output_name}-{suffix}.safetensors",
                      step, epoch, trigger, started)
            every = config.training.checkpoint_every
            if (every and step % every == 0) or step == total_steps:
                save_checkpoint()
            if signals.received and step < total_steps:
                saved = save_checkpoint()
                usable = _save(config, model, records, out_dir / f"{config.output_name}-step{step:06d}.safetensors",
                               step, epoch, trigger, started)
                raise TrainingInterrupted(f"interrupted at step {step} of {total_steps}: saved {usable} and the "
                                          f"checkpoint {saved}; continue with: lowvram train --config "
                                          f"{out_dir / config.output_name}.toml --resume auto")

    model.unet.eval()
    epochs_done = math.ceil(total_steps / steps_per_epoch)
    _save(config, model, records, lora_path, total_steps, epochs_done, trigger, started)
    if config.output.format == "diffusers":
        lora.save_diffusers(model, out_dir / f"{config.output_name}-diffusers", config.output.save_precision)
    samples = render_samples(model, config.output.sample_prompts, out_dir / "samples", config.output_name,
                             config.data.resolution or family.resolution, config.output.sample_steps,
                             config.training.seed, accelerator, prepared_data.sample_embeddings)
    console.print(f"[green]saved[/] {lora_path}" + "".join(f"\n[green]sample[/] {p}" for p in samples))
    return TrainResult(lora_path, config_path, samples, total_steps, epochs_done, progress.loss or float("nan"), model,
                       data, (prepared_data.encoded_latents, prepared_data.encoded_texts), reports)


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


def _save(config: RunConfig, model: LoadedModel, records, path: Path, step: int, epoch: int,
          trigger: str | None, started: datetime) -> Path:
    metadata = lora_metadata(config, model, records, step, epoch, trigger, started)
    return lora.save_kohya(model, path, config.alpha, config.output.save_precision, metadata)


def lora_metadata(config: RunConfig, model: LoadedModel, records, step: int, epoch: int,
                  trigger: str | None, started: datetime) -> dict[str, str]:
    """What kohya (ss_*), Stability's modelspec and lowvram record, so UIs and model sites can show it."""
    family = model.family
    resolution = config.data.resolution or family.resolution
    folders: dict[str, list[str]] = {}
    for record in records:
        folders.setdefault(f"{record.repeats}_{record.folder}", []).append(record.caption)
    prediction = model.pipeline.scheduler.config.prediction_type
    now = datetime.now(timezone.utc)
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.network.rank),
        "ss_network_alpha": f"{config.alpha:g}",
        "ss_network_dropout": f"{config.network.dropout:g}",
        "ss_base_model_version": family.base_model_version,
        "ss_sd_model_name": model.name,
        "ss_sd_model_hash": model.hash,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
        "ss_num_train_images": str(sum(record.repeats for record in records)),
        "ss_learning_rate": f"{config.lr:g}",
        "ss_unet_lr": f"{config.lr:g}",
        "ss_text_encoder_lr": f"{config.text_encoder_lr:g}" if config.network.train_text_encoder else "0",
        "ss_lr_scheduler": config.optim.scheduler,
        "ss_optimizer": config.optim.optimizer,
        "ss_seed": str(config.training.seed),
        "ss_noise_offset": f"{config.training.noise_offset:g}",
        "ss_min_snr_gamma": f"{config.training.min_snr_gamma or 0:g}",
        "ss_batch_size_per_device": str(config.training.batch_size),
        "ss_gradient_accumulation_steps": str(config.training.gradient_accumulation),
        "ss_output_name": config.output_name,
        "ss_training_comment": trigger or "",
        "ss_training_started_at": str(started.timestamp()),
        "ss_training_finished_at": str(now.timestamp()),
        "ss_tag_frequency": lora.tag_frequency(folders),
        "ss_v2": "False",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family.modelspec_architecture,
        "modelspec.implementation": "diffusers",
        "modelspec.title": config.output_name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
        "modelspec.date": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "lowvram.version": lowvram.__version__,
        "lowvram.family": family.name,
        "lowvram.base_model": model.source,
        "lowvram.trigger_word": trigger or "",
        "lowvram.dataset_images": str(len(records)),
        "lowvram.config": tomli_w.dumps(config.to_toml_dict()),
    }
