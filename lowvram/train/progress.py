"""The training progress bar: step, smoothed loss, learning rate, it/s, ETA and, on CUDA, VRAM."""

from __future__ import annotations

import math
import sys
import time

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lowvram.console import another_process, leave_terminal
from lowvram.files import PLAIN_LINE_SECONDS, redraws_in_place
from lowvram.hardware import gib


class SpillWatch:
    """Warns once when training looks like it spilled out of VRAM: Windows drivers may fall back to shared
    system memory instead of raising out-of-memory, and every step then becomes several times slower."""

    def __init__(self, console: Console, settle_steps: int = 5, factor: float = 3.0, patience: int = 3):
        self.console, self.settle_steps, self.factor, self.patience = console, settle_steps, factor, patience
        self.times: list[float] = []
        self.slow_in_a_row = 0
        self.warned = False

    def step(self, seconds: float) -> str | None:
        """Record one step's time; returns the warning when one is due (and prints it)."""
        self.times.append(seconds)
        if self.warned or len(self.times) <= self.settle_steps:
            return None
        baseline = sorted(self.times[: self.settle_steps])[self.settle_steps // 2]
        self.slow_in_a_row = self.slow_in_a_row + 1 if seconds > self.factor * baseline else 0
        message = None
        if self.slow_in_a_row >= self.patience:
            message = (f"steps slowed from {baseline:.2f} s to {seconds:.2f} s: if this is Windows, the driver may "
                       "be spilling VRAM into system RAM; lower the memory use (see lowvram plan) or turn off "
                       "'CUDA - Sysmem Fallback Policy' in the NVIDIA control panel")
        elif torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            if torch.cuda.max_memory_reserved() > total:
                message = "PyTorch reserved more memory than the GPU has: the driver is using system RAM"
        if message:
            self.warned = True
            self.console.print(f"[yellow]warning:[/] {message}")
        return message


class StopOnSignal:
    """The first Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal gone: `console.leave_terminal`) asks the loop to
    stop after the current step (or, with another `notice`, what is under way to finish); a second Ctrl-C or SIGTERM
    stops at once (files are written atomically, so nothing already saved is damaged)."""

    def __init__(self, notice: str = "stopping after this step and saving a checkpoint"):
        self.notice = notice

    def __enter__(self):
        import signal

        self.received = None
        self.previous = {}
        # SIGBREAK: Windows' Ctrl-Break, which is what reaches a run started in its own process group (the UI's)
        for sig in (signal.SIGINT, signal.SIGTERM, *(getattr(signal, name) for name in ("SIGHUP", "SIGBREAK")
                                                     if hasattr(signal, name))):
            if sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # (nohup: the run goes on when the terminal goes)
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        import signal

        if signum == getattr(signal, "SIGHUP", None):
            leave_terminal()
            # a dropped ssh connection hangs up twice (bash passes it on to its jobs, the kernel sends it as bash
            # exits): no one asking to stop at once; the save goes on, and after the steps too
            self.previous[signum] = signal.SIG_IGN
            if self.received is not None:
                return
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.received = signum
        again = {signal.SIGINT: "press Ctrl-C again", getattr(signal, "SIGHUP", None): "press Ctrl-C or send SIGTERM"}.get(
            signum, "send the same signal again")  # (a second hang-up goes on saving)
        below_the_bar = "\n" if sys.stdout and sys.stdout.isatty() else ""  # (a terminal's bar is on the line)
        if not another_process():  # (each of accelerate launch's processes gets the signal: the main one says it)
            print(f"{below_the_bar}{self.notice} ({again} to stop at once)", flush=True)

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class TrainingProgress:
    """A live progress bar in a terminal; where output goes to a pipe or a notebook (which would show a bar
    only when it ends), a plain line every `LINE_SECONDS` and at the last step instead. `watch_spill` adds the
    warning for steps that slow down for good, where the driver can spill VRAM (`Hardware.can_spill_vram`)."""

    LINE_SECONDS = PLAIN_LINE_SECONDS
    MIN_BAR = 10

    def __init__(self, console: Console, total_steps: int, start_step: int = 0, smoothing: float = 0.9,
                 watch_spill: bool = False, epochs: int | None = None):
        self.console, self.total_steps, self.live = console, total_steps, redraws_in_place(console)
        self.epochs = epochs  # the epochs the steps reach into, shown beside the one under way
        self.last_line = 0.0
        self.spill = SpillWatch(console) if watch_spill else None
        self.start_step = start_step
        self.smoothing = smoothing
        self.loss: float | None = None
        self.started = time.perf_counter()
        self.timed: tuple[int, float] | None = None  # the step the pace is timed from, and when it ended
        self.bar = BarColumn()
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), self.bar, TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, stats="")

    def __enter__(self):
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.progress.stop()

    def update(self, step: int, loss: float, lr: float, seconds: float | None = None, epoch: int | None = None
               ) -> float:
        """Advance to `step` (which took `seconds`, in `epoch`, counted from 0); returns the smoothed loss."""
        if seconds is not None and self.spill is not None:
            self.spill.step(seconds)
        if math.isfinite(loss):  # a skipped step's NaN would hold the average at nan for the rest of the run
            self.loss = loss if self.loss is None else self.smoothing * self.loss + (1 - self.smoothing) * loss
        now = time.perf_counter()
        elapsed = now - self.started
        # the first step of a start or a resume holds the warm-up (and a resume's reading back): the pace, and the
        # time left with it, are timed from its end, so that one step's time does not stand for the run's
        steady = self.timed is not None
        if not steady:
            self.timed = (step, now)
            # the step's own time where given: the elapsed time holds the sample grid of --sample-at-first too
            rate = 1 / max(seconds, 1e-9) if seconds else (step - self.start_step) / max(elapsed, 1e-9)
        else:
            rate = (step - self.timed[0]) / max(now - self.timed[1], 1e-9)
        shown = "nan" if self.loss is None else f"{self.loss:.4f}"
        speed = f"{rate:.2f} it/s" if rate >= 1 else f"{1 / max(rate, 1e-9):.2f} s/it"  # as tqdm switches
        parts = {"epoch": f"epoch {epoch + 1}/{self.epochs}" if epoch is not None and self.epochs else "",
                 "loss": f"loss {shown}", "lr": f"lr {lr:.2e}", "speed": speed,
                 "vram": (f"VRAM {gib(torch.cuda.memory_allocated())} GiB "
                          f"(peak {gib(torch.cuda.max_memory_reserved())})" if torch.cuda.is_available() else "")}
        stats = "  ".join(part for part in parts.values() if part)
        if self.live:
            self.progress.update(self.task, completed=step, stats=self._fitted(parts))
        elif time.perf_counter() - self.last_line >= self.LINE_SECONDS or step == self.total_steps:
            self.last_line = time.perf_counter()
            left = (self.total_steps - step) / rate if rate else 0.0  # the live bar shows this in its own column
            timing = f"{clock(elapsed)} elapsed" + (f", {clock(left)} left" if steady or step == self.total_steps
                                                    else "")
            self.console.print(f"step {step}/{self.total_steps}  {stats}  {timing}", highlight=False, soft_wrap=True)
        return self.loss

    def _fitted(self, parts: dict[str, str]) -> str:
        """The figures that fit the terminal's width beside the step count, a bar and the time left, the least
        needed left out first; the bar takes what is left, up to rich's 40 (at 80 columns on a GPU, rich cut the
        step count and the time left to '…' to show the VRAM)."""
        digits = len(str(self.total_steps))
        room = self.console.width - (len("step") + 2 * digits + 1 + len("0:00:00") + 4 + self.MIN_BAR + 1)
        parts = dict(parts)
        for least_needed in ("lr", "epoch", "vram", "speed"):
            if len("  ".join(part for part in parts.values() if part)) <= room:
                break
            parts[least_needed] = ""
        stats = "  ".join(part for part in parts.values() if part)
        stats = stats if len(stats) <= room else ""
        self.bar.bar_width = max(self.MIN_BAR, min(40, self.MIN_BAR + room - len(stats)))
        return stats


def clock(seconds: float) -> str:
    """'0:04:05', as the live bar's time remaining reads."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
