"""Optimizers by name. The 8-bit ones (bitsandbytes) keep Adam's two moments in 8 bits, a quarter of AdamW's
state; the paged variant lets that state spill to host memory under pressure; Lion keeps one moment;
Adafactor factors the second moment into row and column statistics; Prodigy estimates the step size itself
(its learning rate is a multiplier, 1.0); schedule-free AdamW needs no decaying schedule, but its weights
must be switched to their averaged form (`use_averaged_weights`) before saving, sampling or validating.
Heavy imports happen only for the optimizer chosen."""

from __future__ import annotations

import contextlib
import io
from contextlib import contextmanager

import torch

from lowvram.errors import LowvramError

# fp32 state per trainable parameter, in bytes (for the planner)
STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "paged_adamw8bit": 2, "lion": 4, "lion8bit": 1, "adafactor": 4,
               "prodigy": 16, "schedulefree_adamw": 8}


def build_optimizer(name: str, groups: list[dict], weight_decay: float, warmup_steps: int = 0
                    ) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
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
        raise LowvramError(f"--optimizer: '{name}' is not one of {', '.join(STATE_BYTES)}")
    return classes[name](groups, weight_decay=weight_decay)


@contextmanager
def use_averaged_weights(optimizer: torch.optim.Optimizer):
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
    return STATE_BYTES[name] * trainable_params
