"""kohya's dropouts on a LoRA layer, which peft's LoRA lacks (its lora_dropout drops the layer's input instead):

- dropout on the rank activations, the down projection's output (kohya's network_dropout, OneTrainer's dropout);
- rank dropout: whole ranks left out per sample, the rest scaled up to match (kohya's rank_dropout);
- module dropout: the layer's whole update left out of a forward pass (kohya's module_dropout).

Forward hooks on peft's lora_A and lora_B, acting in training mode only. Their random draws come from torch's
generator of the activations' device, which gradient checkpointing restores before it recomputes a block, so the
recomputation drops what the forward dropped. Module dropout multiplies by its draw rather than branching on it,
so compiled blocks keep one graph.
"""

from __future__ import annotations

from functools import partial

import torch


def add_lora_dropouts(pairs: list[tuple[torch.nn.Module, torch.nn.Module]], activations: float, ranks: float,
                      whole: float) -> None:
    """Hook the dropouts with these rates (0: none) onto each LoRA layer's (down, up) projections (peft's lora_A
    and lora_B)."""
    for down, up in pairs:
        if activations or ranks:
            down.register_forward_hook(partial(_drop_ranks, activations, ranks))
        if whole:
            up.register_forward_hook(partial(_drop_update, whole))


def _drop_ranks(activations: float, ranks: float, down: torch.nn.Module, inputs, out: torch.Tensor):
    if not down.training:
        return None
    if activations:
        out = torch.nn.functional.dropout(out, activations)
    if ranks:  # one draw per sample and rank: a convolution's ranks are its channels, a linear layer's its last axis
        axis = 1 if isinstance(down, torch.nn.Conv2d) else out.dim() - 1
        shape = [out.shape[0] if i == 0 else out.shape[axis] if i == axis else 1 for i in range(out.dim())]
        keep = torch.rand(shape, device=out.device) >= ranks
        out = out * keep.to(out.dtype) * (1 / (1 - ranks))
    return out


def _drop_update(rate: float, up: torch.nn.Module, inputs, out: torch.Tensor):
    if not up.training:
        return None
    return out * (torch.rand((), device=out.device) >= rate).to(out.dtype)
