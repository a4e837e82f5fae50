"""Optimizers (`--optimizer`), declared once: the option's choices and help, the planner's state sizes and step
costs, and the builder all read `OPTIMIZERS`. The 8-bit ones (bitsandbytes) keep Adam's two moments in 8 bits, a
quarter of AdamW's state; the paged variant lets that state spill to host memory under pressure; Lion keeps one
moment; Adafactor factors the second moment into row and column statistics; Prodigy estimates the step size
itself (its learning rate is a multiplier, 1.0); schedule-free AdamW needs no decaying schedule, but its weights
must be switched to their averaged form (`use_averaged_weights`) before saving, sampling or validating.
Plain data at import: torch and the optimizer's package are imported only when one is built, so `plan` and the
option checks stay fast."""

from __future__ import annotations

import contextlib
import io
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lowvram.errors import LowvramError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Optimizer:
    name: str
    state_bytes: int  # optimizer state per trainable fp32 parameter
    # step time against AdamW's, for the planner: a LoRA's state is megabytes, so 8-bit state only pays when
    # memory is that tight
    step_cost: float
    help: str
    default_lr: float = 1e-4
    planned: bool = False  # the planner weighs it (beside the user's explicit choice)
    learning_rate_free: bool = False  # finds the step size itself: --lr is a multiplier around 1.0
    schedule_free: bool = False  # replaces the schedule: only --scheduler constant (with its warm-up) applies


OPTIMIZERS = {
    o.name: o
    for o in (
        Optimizer("adamw", 8, 1.0, "adamw (torch)", planned=True),
        Optimizer("adamw8bit", 2, 1.01, "adamw8bit (bitsandbytes: state in 8 bits)", planned=True),
        Optimizer("paged_adamw8bit", 2, 1.02, "paged_adamw8bit (its 8-bit state spills to host RAM under pressure)"),
        Optimizer("lion", 4, 1.0, "lion (one moment)"),
        Optimizer("lion8bit", 1, 1.01, "lion8bit"),
        Optimizer("adafactor", 4, 1.02, "adafactor (factored second moments)"),
        Optimizer("prodigy", 16, 1.03, "prodigy (learning-rate-free: --lr is a multiplier, 1.0)", default_lr=1.0,
                  learning_rate_free=True),
        Optimizer("schedulefree_adamw", 8, 1.01, "schedulefree_adamw (no schedule needed)", schedule_free=True),
    )
}
PLANNED_OPTIMIZERS = tuple(name for name, o in OPTIMIZERS.items() if o.planned)


def build_optimizer(name: str, groups: list[dict], weight_decay: float, warmup_steps: int = 0
                    ) -> torch.optim.Optimizer:
    import torch

    if name == "adamw":
        # on CUDA one fused kernel updates every adapter tensor (instead of a few launches per tensor); the CPU
        # keeps the default loop, whose results the pinned LoRAs were made with
        on_cuda = all(p.is_cuda for group in groups for p in group["params"])
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=on_cuda or None)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # fixed learning rates (ours, with our schedule), not Adafactor's relative-step heuristics
        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    if name == "prodigy":
        from prodigyopt import Prodigy

        # bias correction and a safeguarded warm-up are what Prodigy's authors advise for diffusion LoRAs;
        # its constructor prints which weight decay it uses, in the middle of our progress output
        with contextlib.redirect_stdout(io.StringIO()):
            return Prodigy(groups, weight_decay=weight_decay, use_bias_correction=True,
                           safeguard_warmup=warmup_steps > 0)
    if name == "schedulefree_adamw":
        from schedulefree import AdamWScheduleFree

        optimizer = AdamWScheduleFree(groups, weight_decay=weight_decay, warmup_steps=warmup_steps)
        optimizer.train()
        return optimizer
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise LowvramError(f"--optimizer {name}: needs bitsandbytes ({exc}); pip install bitsandbytes, or use "
                           "--optimizer adamw") from None
    classes = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw8bit": bnb.optim.PagedAdamW8bit,
               "lion": bnb.optim.Lion, "lion8bit": bnb.optim.Lion8bit}
    if name not in classes:
        raise LowvramError(f"--optimizer: '{name}' is not one of {', '.join(OPTIMIZERS)}")
    return classes[name](groups, weight_decay=weight_decay)


@contextmanager
def use_averaged_weights(optimizer):
    """For schedule-free optimizers: the parameters hold the averaged weights (what to save and sample)
    inside the block, and the training point again after it. Other optimizers: nothing to do."""
    switch = hasattr(optimizer, "eval") and hasattr(optimizer, "train") and _is_schedule_free(optimizer)
    if switch:
        optimizer.eval()
    try:
        yield
    finally:
        if switch:
            optimizer.train()


def _is_schedule_free(optimizer) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    return type(inner).__module__.startswith("schedulefree")


def optimizer_state_bytes(name: str, trainable_params: int) -> int:
    """Bytes of optimizer state for `trainable_params` fp32 parameters (for the planner)."""
    return OPTIMIZERS[name].state_bytes * trainable_params
