"""Selective gradient checkpointing of the U-Net, through diffusers' own switches.

diffusers recomputes in units: every down, mid and up block has a `gradient_checkpointing` flag that recomputes
its resnets, and every Transformer2DModel one that recomputes its transformer blocks. `enable_gradient_checkpointing`
turns on all of them; here any subset can be. Which units are worth it (the most activation memory saved per
recomputed FLOP) is measured per family by `tools/build_plan_data.py` into the planner's data, and the planner
decides how many of them a budget needs; training only switches on the named ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def checkpoint_units(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The U-Net's checkpointing switches by module name, in forward order (the model itself excluded)."""
    return {name: module for name, module in unet.named_modules()
            if name and hasattr(module, "gradient_checkpointing")}


def recomputed_parts(unit: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules a unit's flag recomputes in backward: a transformer's blocks, else a U-Net block's resnets."""
    parts = getattr(unit, "transformer_blocks", None)
    if parts is None:
        parts = getattr(unit, "resnets", None) or []
    return list(parts)


def _default_checkpoint(module: torch.nn.Module, *args):
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def enable_checkpointing(unet: torch.nn.Module, names: list[str] | None = None,
                         checkpoint_func: Callable | None = None) -> int:
    """Recompute the named units in backward (None: every unit) and no others; returns how many are on.
    A name the model lacks is an error: the planner measured another architecture."""
    units = checkpoint_units(unet)
    chosen = list(units) if names is None else names
    missing = [name for name in chosen if name not in units]
    if missing:
        raise ValueError(f"the U-Net has no checkpointing unit {missing[0]!r} (it has {', '.join(units)})")
    for name, unit in units.items():
        unit.gradient_checkpointing = name in chosen
        unit._gradient_checkpointing_func = checkpoint_func or _default_checkpoint
    return len(chosen)


def checkpointed_count(unet: torch.nn.Module) -> tuple[int, int]:
    """(units recomputed, units in all)."""
    units = checkpoint_units(unet).values()
    return sum(bool(unit.gradient_checkpointing) for unit in units), len(units)
