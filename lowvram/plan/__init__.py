"""The memory planner: estimate every phase's peak VRAM and host RAM without a GPU, pick a strategy that fits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lowvram.config import RunConfig
from lowvram.hardware import Hardware, resolve_mixed_precision
from lowvram.plan.estimate import Estimate, MemoryStrategy, Workload, estimate
from lowvram.plan.planner import Plan, plan

__all__ = ["Estimate", "MemoryStrategy", "Plan", "Workload", "apply_choice", "estimate", "fixed_choices", "plan",
           "workload_for"]

STRATEGY_OPTIONS = ("unet_weights", "gradient_checkpointing", "optimizer")
NATIVE_FORMAT = {"bf16": "bf16", "fp16": "fp16", "no": "fp32"}  # the U-Net stored as the run computes


def workload_for(config: RunConfig, hardware: Hardware) -> Workload:
    """What `config` trains, for the estimator. Reads the model's header/config only, never its weights."""
    import json

    from lowvram.models.loading import detect_family

    family = detect_family(config.model.model, config.model.model_family)
    mixed_precision = resolve_mixed_precision(config.training.mixed_precision, hardware)
    fp16 = mixed_precision == "fp16"
    vae = json.loads((family.config_dir / "vae" / "config.json").read_text())
    user_vae = Path(config.model.vae or "") / "config.json"
    if config.model.vae and user_vae.is_file():  # e.g. the fp16-fixed SDXL VAE: force_upcast false
        vae = json.loads(user_vae.read_text())
    return Workload(family=family, resolution=config.data.resolution or family.resolution,
                    batch=config.training.batch_size, rank=config.network.rank, network=config.network.network,
                    lora_layers=config.network.lora_layers,
                    offload_activations=config.memory.offload_activations,
                    train_text_encoder=config.network.train_text_encoder,
                    cache_batch_size=config.data.cache_batch_size, sampling=bool(config.output.sample_prompts),
                    sample_resolution=sample_resolution(config, config.data.resolution or family.resolution),
                    compute_bytes=4 if mixed_precision == "no" else 2, mixed_precision=mixed_precision,
                    native_format=NATIVE_FORMAT[mixed_precision], vae_fp32=fp16 and bool(vae.get("force_upcast")))


def sample_resolution(config: RunConfig, resolution: int) -> int | None:
    """The square side with as many pixels as the largest sample image (prompts may set --w/--h)."""
    sizes = [p.size(resolution) for p in config.samples]
    return int(max(w * h for w, h in sizes) ** 0.5) if sizes else None


def fixed_choices(values: dict) -> dict:
    """The strategy options the user gave explicitly (flags or config file): the planner keeps them."""
    fixed = {k: values[k] for k in STRATEGY_OPTIONS if k in values}
    if fixed.get("unet_weights") == "auto":
        del fixed["unet_weights"]
    return fixed


def apply_choice(config: RunConfig, chosen: Estimate) -> RunConfig:
    """The config with the planner's choices filled in (explicit user choices were fixed in planning)."""
    strategy = chosen.strategy
    memory = dataclasses.replace(config.memory, unet_weights=strategy.unet_weights,
                                 gradient_checkpointing=strategy.gradient_checkpointing,
                                 vae_tiling=config.memory.vae_tiling or chosen.vae_tiling)
    optim = dataclasses.replace(config.optim, optimizer=strategy.optimizer)
    data = dataclasses.replace(config.data, cache_batch_size=min(config.data.cache_batch_size,
                                                                 chosen.cache_batch_size))
    return dataclasses.replace(config, memory=memory, optim=optim, data=data)
