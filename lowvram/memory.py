"""Peak GPU memory per phase of a run (caching, training, sampling, saving), as PyTorch's allocator reserved it:
what `lowvram plan` predicts, measured, so every `--auto` run checks the planner and the GPU proof records it."""

from __future__ import annotations

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
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            self.bytes[name] = max(self.bytes.get(name, 0), torch.cuda.max_memory_reserved(self.device))

    def summary(self) -> str:
        return ", ".join(f"{name} {peak / 2**30:.2f} GiB" for name, peak in self.bytes.items())


def free_cached_memory(device: torch.device) -> None:
    """After an out-of-memory error: what the failed work's tensors held goes back to the GPU, for the next step."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
