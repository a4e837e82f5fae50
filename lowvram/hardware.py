"""What we are running on: the device to train on and the precision it supports."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowvram.errors import LowvramError


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    name: str
    total_vram: int  # bytes; 0 on CPU
    bf16: bool  # bf16 tensor math supported (Ampere and newer)


def detect() -> Hardware:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware("cuda", props.name, props.total_memory, torch.cuda.is_bf16_supported())
    return Hardware("cpu", "CPU", 0, True)


def resolve_mixed_precision(choice: str, hardware: Hardware) -> str:
    """'auto' -> bf16 on GPUs that have it, fp16 on older GPUs (T4, Turing, GTX 16xx), no (fp32) on CPU."""
    if choice == "auto":
        if hardware.device == "cpu":
            return "no"
        return "bf16" if hardware.bf16 else "fp16"
    if choice == "fp16" and hardware.device == "cpu":
        raise LowvramError("--mixed-precision fp16: needs a CUDA GPU; on the CPU use bf16 or no")
    if choice == "bf16" and hardware.device == "cuda" and not hardware.bf16:
        raise LowvramError(f"--mixed-precision bf16: {hardware.name} has no bf16 support; use fp16 (or auto)")
    return choice
