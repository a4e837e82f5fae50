"""Regional compilation (`--compile`): torch.compile on the U-Net's repeated transformer blocks, through diffusers'
`compile_repeated_blocks`, not on the whole model. One compiled block serves every block of its shape, so the
warm-up is seconds to a minute instead of many minutes, and adapters, checkpointing and the storage formats
around the blocks stay as they are.

Where the platform cannot compile (no Triton for CUDA, as on Windows without triton-windows; no C++ compiler
for the CPU), the run says so in one line and trains eagerly. A block that fails to compile later (a quantized
layer the compiler cannot trace) falls back to eager by itself: dynamo's errors are suppressed for the run.
"""

from __future__ import annotations

import shutil

import torch

CXX_COMPILERS = ("g++", "c++", "clang++", "cl")


def compile_problem(device: torch.device) -> str | None:
    """Why the compiler cannot run on this device here; None when it can."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile needs Triton for CUDA (pip install triton; on Windows, triton-windows)"
        return None
    if not any(shutil.which(name) for name in CXX_COMPILERS):
        return "torch.compile needs a C++ compiler for the CPU (g++ or clang++ on the PATH)"
    return None


def compile_blocks(unet: torch.nn.Module) -> int:
    """Compile the U-Net's repeated blocks in place; returns how many modules will run compiled. Shapes are
    static (one graph per bucket resolution and batch size), which lets the compiler specialize fully."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a block the compiler cannot handle runs eagerly instead
    # every bucket is a new shape for every block; the default limit of 8 would leave the rest eager
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    unet.compile_repeated_blocks(dynamic=False)
    return compiled_count(unet)


def compiled_count(unet: torch.nn.Module) -> int:
    return sum(1 for m in unet.modules() if getattr(m, "_compiled_call_impl", None) is not None)
