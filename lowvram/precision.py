"""The floating-point precisions that options name (--save-precision, the weight formats, --mixed-precision) as
torch dtypes: the one table every reader takes them from."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compute_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype a run computes in under --mixed-precision (its "no" is fp32)."""
    return DTYPES["fp32" if mixed_precision == "no" else mixed_precision]
