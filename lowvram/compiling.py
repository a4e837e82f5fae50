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


RECOMPILE_MARGIN = 8  # graphs beyond the counted ones before dynamo gives up on a block (a changed guard, a split)


def compile_blocks(unet: torch.nn.Module, batch_shapes: int, passes: int = 2) -> int:
    """Compile the U-Net's repeated blocks in place; returns how many modules will run compiled. Shapes are
    static (one graph per bucket resolution and batch size), which lets the compiler specialize fully.

    `batch_shapes`: how many input shapes (pixel count x batch size) the run feeds the U-Net. All blocks of one
    class share one code object, whose graphs dynamo counts against a limit: past it, the block runs eagerly for
    the rest of the run after one log line. Each shape needs a graph per block width (SD1.5 has three), with
    gradients (training) and without (validation, samples), and with the adapters off (`passes` 3: the model's own
    prediction), so the limit is raised to cover them all."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a block the compiler cannot handle runs eagerly instead
    needed = passes * batch_shapes * block_widths(unet) + RECOMPILE_MARGIN
    for name in ("recompile_limit", "accumulated_recompile_limit"):  # cache_size_limit before torch 2.6
        name = name if hasattr(torch._dynamo.config, name) else name.replace("recompile", "cache_size")
        setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), needed))
    unet.compile_repeated_blocks(dynamic=False)
    return compiled_count(unet)


def block_widths(unet: torch.nn.Module) -> int:
    """How many differently shaped kinds of repeated block the U-Net has (its parameters' shapes tell them
    apart): each needs its own graphs."""
    kinds = getattr(unet, "_repeated_blocks", ())
    return max(1, len({tuple(tuple(p.shape) for p in module.parameters()) for module in unet.modules()
                       if type(module).__name__ in kinds}))


def compiled_count(unet: torch.nn.Module) -> int:
    return sum(1 for m in unet.modules() if getattr(m, "_compiled_call_impl", None) is not None)
