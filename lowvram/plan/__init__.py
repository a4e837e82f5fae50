"""The memory planner: estimate every phase's peak VRAM and host RAM without a GPU, pick a strategy that fits."""

from __future__ import annotations

import dataclasses

from lowvram.config import PLANNING_MODEL, RunConfig
from lowvram.configure import build_config
from lowvram.errors import LowvramError
from lowvram.hardware import Hardware, list_profiles, load_profile
from lowvram.models.detect import checkpoint_storage, detect_family
from lowvram.plan.estimate import Estimate, MemoryStrategy, Workload, estimate
from lowvram.plan.planner import Plan, plan
from lowvram.resolve import NATIVE_FORMAT, ResolvedRun, resolve_run

__all__ = ["NATIVE_FORMAT", "CardPlan", "Estimate", "MemoryStrategy", "Plan", "Workload", "apply_choice", "estimate",
           "fixed_choices", "plan", "plan_cards", "plan_options", "planning_values", "workload_for"]

STRATEGY_OPTIONS = ("unet_weights", "gradient_checkpointing", "checkpoint_blocks", "optimizer")


def workload_for(run: ResolvedRun) -> Workload:
    """What the resolved run trains, for the estimator."""
    config = run.config
    rank, conv_rank = config.network.rank, config.network.conv_rank  # (None: --rank's, which a lower rank lowers)
    if run.blocks:  # every block counted at the largest rank: a bound, a few MiB of adapter weights and state over
        largest, conv_rank = run.blocks.largest_ranks()
        rank = max(largest, rank) if config.network.train_text_encoder else largest  # the encoders' is --rank
    resolution, batch = run.planned_shape
    return Workload(family=run.family, resolution=resolution, batch=batch,
                    rank=rank, per_block=run.blocks is not None, conv_rank=conv_rank,
                    network=config.network.network, lokr_factor=config.network.lokr_factor,
                    lora_layers=config.network.lora_layers,
                    offload_activations=config.memory.offload_activations, compile=config.memory.compile,
                    cuda_graphs=config.memory.compile and config.memory.cuda_graphs,
                    train_text_encoder=config.network.train_text_encoder, trained_text=run.trained_text_encoders,
                    cache_batch_size=config.data.cache_batch_size, sampling=bool(config.prompt_lines),
                    sample_resolution=run.sample_resolution, compute_bytes=run.compute_bytes,
                    mixed_precision=run.mixed_precision, native_format=run.native_format, vae_fp32=run.vae_fp32,
                    vae_tiling=config.memory.vae_tiling, ema=config.optim.ema,
                    own_prediction=config.data.own_prediction, checkpoint=checkpoint_storage(config.model.model))


def planning_values(values: dict) -> dict:
    """The option values `lowvram plan` plans with: a dataset and a model are optional (the sample data and sd15,
    or the --model-family named, stand in)."""
    return {"data": "sample", "model": values.get("model_family") or PLANNING_MODEL, **values}


def plan_options(values: dict, hardware: Hardware) -> tuple[ResolvedRun, Plan]:
    """`lowvram plan` for option values (`planning_values`) on a card.
    Raises LowvramError with the CLI's words where the options cannot run or there is no GPU to plan for."""
    values = planning_values(values)
    config = build_config(values)
    if hardware.device != "cuda":  # a wrong --model first: naming a card to plan for would not mend it
        detect_family(config.model.model, config.model.model_family)
        raise LowvramError("no CUDA GPU here: plan for a card (a profile, or a VRAM budget)")
    run = resolve_run(config, hardware)
    return run, plan(workload_for(run), hardware, fixed_choices(values, config))


@dataclasses.dataclass(frozen=True)
class CardPlan:
    profile: str  # its --profile name
    hardware: Hardware
    run: ResolvedRun | None  # None where the options cannot run on the card (`refused` says why)
    plan: Plan | None
    refused: str = ""


def plan_cards(values: dict, ram: int | None = None) -> list[CardPlan]:
    """`lowvram plan` with no GPU here and none named: the plan on each card lowvram has a profile of, least VRAM
    first (which card a run needs; --ram: the host RAM to plan with on every card)."""
    values = planning_values(values)
    config = build_config(values)
    detect_family(config.model.model, config.model.model_family)
    cards = []
    for name in list_profiles():
        hardware = load_profile(name)
        if ram:
            hardware = dataclasses.replace(hardware, host_ram=ram, host_ram_source="--ram")
        try:
            run = resolve_run(config, hardware)
        except LowvramError as exc:  # (--mixed-precision bf16 on a T4)
            cards.append(CardPlan(name, hardware, None, None, str(exc)))
            continue
        cards.append(CardPlan(name, hardware, run, plan(workload_for(run), hardware, fixed_choices(values, config))))
    if not any(card.run for card in cards):  # (an option no card takes: --clip-skip 3)
        raise LowvramError(cards[0].refused)
    return sorted(cards, key=lambda card: (card.hardware.free_vram, card.profile))


def fixed_choices(values: dict, config: RunConfig) -> dict:
    """The strategy options the user gave explicitly (flags or config file), as the config reads them (kohya's
    AdamW8bit as adamw8bit): the planner keeps them."""
    read = {"unet_weights": config.memory.unet_weights, "gradient_checkpointing": config.memory.gradient_checkpointing,
            "checkpoint_blocks": config.memory.checkpoint_blocks, "optimizer": config.optim.optimizer}
    fixed = {k: read[k] for k in STRATEGY_OPTIONS if k in values}
    if fixed.get("unet_weights") == "auto":
        del fixed["unet_weights"]
    if fixed.get("checkpoint_blocks") is None:
        fixed.pop("checkpoint_blocks", None)
    return fixed


def apply_choice(config: RunConfig, chosen: Estimate) -> RunConfig:
    """The config with the planner's choices filled in (explicit user choices were fixed in planning)."""
    strategy = chosen.strategy
    memory = dataclasses.replace(config.memory, unet_weights=strategy.unet_weights,
                                 gradient_checkpointing=strategy.gradient_checkpointing,
                                 checkpoint_blocks=strategy.checkpoint_units,
                                 vae_tiling=config.memory.vae_tiling or chosen.vae_tiling)
    optim = dataclasses.replace(config.optim, optimizer=strategy.optimizer)
    data = dataclasses.replace(config.data, cache_batch_size=min(config.data.cache_batch_size,
                                                                 chosen.cache_batch_size))
    return dataclasses.replace(config, memory=memory, optim=optim, data=data)
