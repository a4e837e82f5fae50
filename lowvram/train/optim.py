"""Optimizers by name. The 8-bit ones (bitsandbytes) keep Adam's two moments in 8 bits, a quarter of AdamW's
state; the paged variant lets that state spill to host memory under pressure; Adafactor factors the second
moment into row and column statistics. Heavy imports happen only for the optimizer chosen."""

from __future__ import annotations

import torch

from lowvram.errors import LowvramError


def build_optimizer(name: str, groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # fixed learning rates (ours, with our schedule), not Adafactor's relative-step heuristics
        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise LowvramError(f"--optimizer {name}: needs bitsandbytes ({exc}); pip install bitsandbytes, or use "
                           "--optimizer adamw") from None
    classes = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw8bit": bnb.optim.PagedAdamW8bit,
               "lion8bit": bnb.optim.Lion8bit}
    if name not in classes:
        raise LowvramError(f"--optimizer: '{name}' is not one of adamw, adafactor, {', '.join(classes)}")
    return classes[name](groups, weight_decay=weight_decay)


def optimizer_state_bytes(name: str, trainable_params: int) -> int:
    """Bytes of optimizer state for `trainable_params` fp32 parameters (for the planner)."""
    per_param = {"adamw": 8, "adamw8bit": 2, "paged_adamw8bit": 2, "lion8bit": 1, "adafactor": 4}[name]
    return per_param * trainable_params
