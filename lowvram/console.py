"""The console lowvram's tables and notes are printed on: a terminal keeps its width; a log (a pipe, a file, a CI
job) gets room for the tables, where rich would otherwise cut file names to 80 columns."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from datetime import timedelta

import rich.console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lowvram.files import FULL_DISK_ERRNOS, PLAIN_LINE_SECONDS, is_size_limit, redraws_in_place

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
    plan's "nothing fits"; the command ends as a shell's pipe writer does (cli says 141). Without rich's highlighting
    of what looks like numbers and paths: it coloured a path up to its first space (/tmp/出力 中断/x.safetensors
    read as ending at 出力)."""

    def __init__(self, *args, highlight: bool = False, **kwargs):
        super().__init__(*args, highlight=highlight, **kwargs)

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


def unwritten_remedy(exc: OSError) -> str:
    if is_size_limit(exc):  # (freeing space cannot lift a file-size limit)
        return "raise the file-size limit (ulimit -f unlimited) or write it elsewhere"
    return "free space on the disk of the file it goes to"


class WatchedOutput:
    """stdout (or stderr) whose reader may go (`train | head`, a log shipper that died) or whose file may not grow
    (`nohup train > ~/run.log` over a lab's quota). Each write is flushed, so that a failure is met where it is
    written, not at the exit's flush. Once `going_on` (a run's steps; stderr always), such a stream is written to
    nowhere and said once on the other: the run goes on to its checkpoints and LoRA, its figures in metrics.jsonl,
    rather than dying mid-step unsaid. Before, the failure is raised and kept as `failure`, to be said as the
    output's (a dry run's options, a plan's JSON: its exit code tells the script reading it)."""

    def __init__(self, stream, errors: bool = False, going_on: bool = False):
        self._stream, self.gone, self._errors, self._going_on = stream, False, errors, going_on
        self.failure: OSError | None = None

    def go_on(self) -> None:
        self._going_on = True

    def write(self, text: str) -> int:
        written = self._guarded(self._stream.write, text)
        self._guarded(self._stream.flush)
        return written or len(text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def _guarded(self, call, *args):
        if self.gone:
            return None
        try:
            return call(*args)
        except OSError as exc:
            if not isinstance(exc, BrokenPipeError) and exc.errno not in FULL_DISK_ERRNOS:
                raise
            if not self._going_on:
                self.failure = exc
                raise
            self.gone = True
            to_nowhere(self._stream)  # (the exit's flush would raise it again)
            output = "error output" if self._errors else "output"
            why = (f"the {output}'s reader has gone" if isinstance(exc, BrokenPipeError) else
                   f"the {output} cannot be written ({exc.strerror}: {unwritten_remedy(exc)})")
            goes_on = ("lowvram goes on without it (a refusal is said here)" if self._errors else
                       "training goes on without printing (each step's figures are in the run's metrics.jsonl)")
            other = sys.stdout if self._errors else sys.stderr
            try:  # (on the same pipe, `2>&1 | head`, the other's reader is gone too; on the same full disk, its file:
                # watched too, it goes quiet in turn)
                print(f"lowvram train: {why}; {goes_on}", file=other, flush=True)
            except OSError:
                to_nowhere(other)
            return None

    def __getattr__(self, name):  # isatty, encoding, fileno ... as the stream's
        return getattr(self._stream, name)


def to_nowhere(stream) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


@contextlib.contextmanager
def watched_output(run: bool):
    """stdout watched (`WatchedOutput`; a `run`'s to go on once its steps begin), and a `run`'s stderr, which goes
    quiet when it fails. Yields the watched stdout (None where there is none, pythonw's: left so)."""
    previous = sys.stdout, sys.stderr
    if previous[0] is not None:
        sys.stdout = WatchedOutput(previous[0])
    if previous[1] is not None and run:
        sys.stderr = WatchedOutput(previous[1], errors=True, going_on=True)
    try:
        yield sys.stdout if previous[0] is not None else None
    finally:
        sys.stdout, sys.stderr = previous
