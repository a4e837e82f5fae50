"""Regional compilation (`--compile`): torch.compile on the U-Net's repeated transformer blocks, through diffusers'
`compile_repeated_blocks`, not on the whole model. One compiled block serves every block of its shape, so the
warm-up is seconds to a minute instead of many minutes, and adapters, checkpointing and the storage formats
around the blocks stay as they are.

Where the platform cannot compile (no Triton for CUDA, as on Windows without triton-windows; no C++ compiler
for the CPU), the run says so in one line and trains eagerly. A block that fails to compile later (a quantized
layer the compiler cannot trace) falls back to eager by itself: dynamo's errors are suppressed for the run.

`--cuda-graphs` replays the blocks' training passes as CUDA graphs (inductor's reduce-overhead mode): one launch
per block instead of dozens of small kernels, which is what bounds a small batch's step. CUDA Graph Trees start a
new generation at each compiled call that has no backward pending, freeing the last one's outputs, so a pass
without gradients through blocks compiled one by one reads freed memory (PyTorch issues 152887, 160281); a block
recomputed by checkpointing is recorded and replayed with different tensor lifetimes (PyTorch issue 154306). So
each block chooses per call: graphs for a training pass outside a recomputed unit, the same compiled code without
graphs for everything else (validation, samples, the model's own prediction, recomputed units).
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass

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


def cuda_graphs_problem(device: torch.device, processes: int, offload_activations: bool) -> str | None:
    """Why --cuda-graphs cannot replay here; None when it can."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if processes > 1:
        return "not measured with several processes (DDP's gradient hooks), so not offered there"
    if offload_activations:
        return "--offload-activations moves what the graphs would keep in their own memory"
    return None


RECOMPILE_MARGIN = 8  # graphs beyond the counted ones before dynamo gives up on a block (a changed guard, a split)


def compile_blocks(unet: torch.nn.Module, batch_shapes: int, passes: int = 2, cuda_graphs: bool = False) -> int:
    """Compile the U-Net's repeated blocks in place; returns how many modules will run compiled. Shapes are
    static (one graph per bucket resolution and batch size), which lets the compiler specialize fully.

    `batch_shapes`: how many input shapes (pixel count x batch size) the run feeds the U-Net. All blocks of one
    class share one code object, whose graphs dynamo counts against a limit: past it, the block runs eagerly for
    the rest of the run after one log line. Each shape needs a graph per block width (SD1.5 has three), with
    gradients (training) and without (validation, samples), and with the adapters off (`passes` 3: the model's own
    prediction), so the limit is raised to cover them all; `cuda_graphs` adds a pass (training passes with
    graphs, and without them in recomputed units)."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a block the compiler cannot handle runs eagerly instead
    needed = (passes + cuda_graphs) * batch_shapes * block_widths(unet) + RECOMPILE_MARGIN
    for name in ("recompile_limit", "accumulated_recompile_limit"):  # cache_size_limit before torch 2.6
        name = name if hasattr(torch._dynamo.config, name) else name.replace("recompile", "cache_size")
        setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), needed))
    if not cuda_graphs:
        unet.compile_repeated_blocks(dynamic=False)
        return compiled_count(unet)
    switch = GraphSwitch()
    owners = {id(block): unit for unit in unet.modules() for block in getattr(unit, "transformer_blocks", ())}
    for block in unet.modules():
        if type(block).__name__ in getattr(unet, "_repeated_blocks", ()):
            # what nn.Module.compile sets, here choosing between two compilations of the same call per call
            block._compiled_call_impl = GraphedBlock(block, owners.get(id(block)), switch)
    return compiled_count(unet)


@dataclass
class GraphSwitch:
    """Whether a U-Net's blocks may replay CUDA graphs: off for the rest of the run once dropped."""

    on: bool = True


class GraphedBlock:
    """A compiled block's call: replayed as CUDA graphs in training passes, compiled without graphs otherwise
    (see the module's docstring). `calls` counts each kind."""

    def __init__(self, block: torch.nn.Module, unit: torch.nn.Module | None, switch: GraphSwitch):
        self.graphs = torch.compile(block._call_impl, dynamic=False, mode="reduce-overhead")
        self.plain = torch.compile(block._call_impl, dynamic=False)
        self.unit = unit  # the transformer whose checkpointing switch recomputes this block, if any
        self.trains = any(p.requires_grad for p in block.parameters())
        self.switch = switch
        self.calls: Counter[str] = Counter()

    def replays(self, hidden: torch.Tensor | None) -> bool:
        """A pass that will run backward through this block (it trains, or its input carries gradients), outside
        a recomputed unit (diffusers recomputes a transformer's blocks when its flag is on and gradients are)."""
        if not (self.switch.on and torch.is_grad_enabled()):
            return False
        if self.unit is not None and getattr(self.unit, "gradient_checkpointing", False):
            return False
        return self.trains or (hidden is not None and hidden.requires_grad)

    def __call__(self, *args, **kwargs):
        graphed = self.replays(args[0] if args else kwargs.get("hidden_states"))
        self.calls["graphs" if graphed else "plain"] += 1
        return (self.graphs if graphed else self.plain)(*args, **kwargs)


def graphed_blocks(unet: torch.nn.Module) -> list[GraphedBlock]:
    return [call for m in unet.modules() if isinstance(call := getattr(m, "_compiled_call_impl", None), GraphedBlock)]


def uses_cuda_graphs(unet: torch.nn.Module) -> bool:
    return any(block.switch.on for block in graphed_blocks(unet))


def replaying_count(unet: torch.nn.Module) -> int:
    """Blocks whose training passes replay graphs: those outside the recomputed units."""
    return sum(block.switch.on and not getattr(block.unit, "gradient_checkpointing", False)
               for block in graphed_blocks(unet))


def drop_cuda_graphs(unet: torch.nn.Module) -> None:
    """No more graphs for the rest of the run, and the memory the recorded ones hold freed: the first thing an
    out-of-memory gives up (the blocks stay compiled)."""
    for block in graphed_blocks(unet):
        block.switch.on = False
    from torch._inductor import cudagraph_trees

    cudagraph_trees.reset_cudagraph_trees()


def block_widths(unet: torch.nn.Module) -> int:
    """How many differently shaped kinds of repeated block the U-Net has (its parameters' shapes tell them
    apart): each needs its own graphs."""
    kinds = getattr(unet, "_repeated_blocks", ())
    return max(1, len({tuple(tuple(p.shape) for p in module.parameters()) for module in unet.modules()
                       if type(module).__name__ in kinds}))


def compiled_count(unet: torch.nn.Module) -> int:
    return sum(1 for m in unet.modules() if getattr(m, "_compiled_call_impl", None) is not None)
