"""Peak GPU memory per phase of a run (caching, training, sampling, saving), as PyTorch's allocator reserved it:
what `lowvram plan` predicts, measured, so every `--auto` run checks the planner and the GPU proof records it."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch


class PhasePeaks:
    """Peak reserved bytes of each named phase on a CUDA device (nothing is measured on the CPU). The peak
    statistics are reset as a phase starts and read as it ends, so phases must not nest."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.bytes: dict[str, int] = {}

    @contextmanager
    def phase(self, name: str):
        if not self.cuda:
            yield
            return
        torch.cuda.synchronize(self.device)
        # the peak restarts at what is reserved now, and the allocator still holds the last phase's freed blocks
        # (the VAE's, the training step's): handed back first, they are not counted as this phase's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            self.bytes[name] = max(self.bytes.get(name, 0), torch.cuda.max_memory_reserved(self.device))

    def summary(self) -> str:
        return ", ".join(f"{name} {peak / 2**30:.2f} GiB" for name, peak in self.bytes.items())


def host_peak_bytes() -> int | None:
    """This process's peak resident host RAM so far (the high-water mark the system keeps); None where unknown.
    Linux's is VmHWM: its ru_maxrss keeps a parent's peak across fork and exec (the web UI's, accelerate's)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows: the peak working set
        import psutil

        return getattr(psutil.Process().memory_info(), "peak_wset", None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # (bytes on macOS, KiB elsewhere)


def free_cached_memory(device: torch.device) -> None:
    """After an out-of-memory error: what the failed work's tensors held goes back to the GPU, for the next step."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


class ActivationsToHost(torch.autograd.graph.saved_tensors_hooks):
    """--offload-activations: what autograd saves for the backward pass goes to (pinned) host RAM and comes back
    for it, as torch's save_on_cpu does, except the model's own tensors: its frozen weights (and views of them,
    such as a Linear's transposed weight), quantized weights (tensor subclasses, which save_on_cpu would copy out
    dequantized) and parameters stay where they are, referenced, where save_on_cpu copied the whole U-Net to the
    host and back every step. `moved_bytes` counts what went to the host."""

    def __init__(self, model: torch.nn.Module, pin_memory: bool):
        kept = {_storage(tensor) for tensor in (*model.parameters(), *model.buffers())}
        self.moved_bytes = 0

        def pack(tensor: torch.Tensor):
            if type(tensor) is not torch.Tensor or _storage(tensor) in kept:
                return tensor
            # its own strides (a transposed view stays one): the backward pass runs the kernels it would have
            host = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, layout=tensor.layout,
                                       pin_memory=pin_memory)
            host.copy_(tensor, non_blocking=pin_memory)
            self.moved_bytes += host.numel() * host.element_size()
            return tensor.device, host

        def unpack(packed):
            if isinstance(packed, torch.Tensor):
                return packed
            device, host = packed
            return host.to(device, non_blocking=pin_memory)

        super().__init__(pack, unpack)


def _storage(tensor: torch.Tensor) -> int | None:
    """Where a tensor's data lives; None for a tensor subclass without storage of its own (a quantized weight)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except RuntimeError:
        return None
