"""The console lowvram's tables and notes are printed on: a terminal keeps its width; a log (a pipe, a file, a CI
job) gets room for the tables, where rich would otherwise cut file names to 80 columns."""

from __future__ import annotations

from rich.console import Console

LOG_WIDTH = 160  # the columns a table is laid out in where no terminal says its own


def console(stderr: bool = False, quiet: bool = False) -> Console:
    probe = Console(stderr=stderr)
    return Console(width=probe.width if probe.is_terminal else max(probe.width, LOG_WIDTH), stderr=stderr,
                   quiet=quiet)
