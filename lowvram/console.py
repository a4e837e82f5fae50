"""The console lowvram's tables and notes are printed on: a terminal keeps its width; a log (a pipe, a file, a CI
job) gets room for the tables, where rich would otherwise cut file names to 80 columns."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from datetime import timedelta

import rich.console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lowvram.files import PLAIN_LINE_SECONDS, redraws_in_place

LOG_WIDTH = 160  # the columns a table is laid out in where no terminal says its own


def another_process() -> bool:
    """Under `accelerate launch`, whether this is a process other than the main one, which alone tells the notes
    and errors every process would (all read the same options)."""
    return os.environ.get("RANK", "0") != "0" and os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")


def launched_processes() -> int:
    """How many processes accelerate launch (torchrun) started for the run: 1 outside it."""
    size = os.environ.get("WORLD_SIZE", "")
    return int(size) if size.isascii() and size.isdigit() and int(size) > 0 else 1


def leave_terminal() -> None:
    """After SIGHUP (the ssh connection or the terminal window gone): what the run prints next goes nowhere instead
    of failing on the terminal that is gone (EIO), so that it can still save its checkpoint and end; its steps' figures
    stay in metrics.jsonl."""
    with contextlib.suppress(OSError):
        nowhere = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            if stat.S_ISCHR(os.fstat(fd).st_mode):  # a terminal (its hung-up one fails isatty); a log file stays
                os.dup2(nowhere, fd)
        os.close(nowhere)


class Console(rich.console.Console):
    """rich's console, but for a reader gone from the pipe (`lowvram plan | head -1`): rich exits 1 there, which is
    plan's "nothing fits"; the command ends as a shell's pipe writer does (cli says 141)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def counted_progress(console: Console, label: str, transient: bool = False) -> Progress | PlainLines:
    """A bar of done/total with the time left, or where no bar redraws (a pipe, a notebook, a CI log, where rich's
    bar shows only at the end) a plain line now and then."""
    if not redraws_in_place(console):
        return PlainLines(console, label)
    return Progress(TextColumn(f"[bold]{label}"), MofNCompleteColumn(), BarColumn(), TimeRemainingColumn(),
                    console=console, transient=transient)


class PlainLines:
    """Progress as a line every PLAIN_LINE_SECONDS and at the end, as training's, with the rate and the time left, so
    that a long scan or caching in a log is not taken for a hang."""

    def __init__(self, console: Console, label: str):
        self.console, self.label, self.done, self.total = console, label, 0, 0
        self.started = self.last = time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, name: str, total: int) -> int:
        self.total = total
        return 0

    def advance(self, task: int, advance: int = 1) -> None:
        self.done += advance
        now = time.monotonic()
        if now - self.last >= PLAIN_LINE_SECONDS or self.done >= self.total:
            self.last = now
            took = now - self.started
            left = timedelta(seconds=round((self.total - self.done) * took / max(self.done, 1)))
            rate = f", {self.done / took:.1f}/s, {left} left" if self.done < self.total and took > 0 else ""
            self.console.print(f"{self.label} {self.done}/{self.total} ({took:.0f} s{rate})", highlight=False)


def console(stderr: bool = False, quiet: bool = False) -> Console:
    probe = Console(stderr=stderr)
    return Console(width=probe.width if probe.is_terminal else max(probe.width, LOG_WIDTH), stderr=stderr,
                   quiet=quiet)
