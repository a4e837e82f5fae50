"""The training progress bar: step, smoothed loss, learning rate, it/s, ETA and, on CUDA, VRAM."""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    def __init__(self, console: Console, total_steps: int, smoothing: float = 0.9):
        self.smoothing = smoothing
        self.loss: float | None = None
        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, stats="")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float, lr: float) -> float:
        """Advance to `step`; returns the smoothed loss."""
        self.loss = loss if self.loss is None else self.smoothing * self.loss + (1 - self.smoothing) * loss
        rate = step / max(time.perf_counter() - self.started, 1e-9)
        stats = f"loss {self.loss:.4f}  lr {lr:.2e}  {rate:.2f} it/s"
        if torch.cuda.is_available():
            gib = 1024**3
            stats += (f"  VRAM {torch.cuda.memory_allocated() / gib:.2f} GiB"
                      f" (peak {torch.cuda.max_memory_reserved() / gib:.2f})")
        self.progress.update(self.task, completed=step, stats=stats)
        return self.loss
