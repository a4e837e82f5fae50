"""A run's saved options (the `<name>.toml` beside its LoRA) read back: the run folder the file lies in is the
output, wherever the file says, so that a run folder copied, renamed or moved (a Drive mounted elsewhere) resumes
there."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lowvram.run_files import CHECKPOINTS, OPTIONS_HEADER, RECORD


def saved_run_options(values: dict[str, Any], path: Path, text: str, given: Collection[str]) -> dict[str, Any]:
    """A config file's `values` (its `text` read), with the output its run folder makes it where it is a run's saved
    options; `given`: the options the command line gives."""
    if text.split("\n", 1)[0].rstrip("\r") + "\n" == OPTIONS_HEADER:  # (Windows writes it with CRLF)
        return _run_options(values, path, given)
    if "resume" in given and "output" not in given and _moved_run_folder(values, path):
        folder = path.resolve().parent
        print(f"--config {path}: the run folder it lies in holds the run's checkpoints, and the folder the file "
              f"names ({values['output']}) none: the folder was moved since; the run resumes in {folder}",
              file=sys.stderr)
        return values | {"output": str(folder)}
    return values


def _run_options(values: dict[str, Any], path: Path, given: Collection[str]) -> dict[str, Any]:
    """A run's saved options: in a run folder (its record beside it), that folder is the output, wherever the file
    says (an older lowvram's saved its absolute path; the folder may have been renamed or copied since); away from
    any (a copy as a template), where it trains is said."""
    folder = path.resolve().parent
    if "output" in given:
        return values
    if (folder / RECORD).is_file():
        if values.get("output") != str(folder):
            print(f"--config {path}: the run folder it lies in is the output, {folder} (the file names "
                  f"{values.get('output')})", file=sys.stderr)
        return values | {"output": str(folder)}
    if values.get("output") == str(folder) and "resume" not in given:
        named = "" if "name" in given else f" as {values.get('name') or folder.name}"
        print(f"--config {path}: a run's saved options, away from its run folder: this run trains in {folder}"
              f"{named}; give --output DIR to train elsewhere", file=sys.stderr)
    return values


def _moved_run_folder(values: dict[str, Any], path: Path) -> bool:
    """Whether `path` holds an older lowvram's options of the run beside it (written before the header, with the
    absolute output folder it had then), in a run folder moved since (Drive remounted elsewhere; not renamed): the
    folder it lies in holds the run's checkpoints (the file is its <name>.toml), the folder of that name it names
    none. Resuming there started the run over. (A user's own config there, for a run into a new folder, names a
    folder of another name.)"""
    folder, named = path.resolve().parent, values.get("output")
    if not isinstance(named, str) or Path(named).name != folder.name or Path(named).resolve() == folder \
            or _holds_checkpoints(Path(named)) or not _holds_checkpoints(folder):
        return False
    try:
        return json.loads((folder / RECORD).read_text()).get("name") == path.stem
    except (OSError, ValueError, AttributeError):
        return False


def _holds_checkpoints(folder: Path) -> bool:
    try:
        return any((folder / CHECKPOINTS).iterdir())
    except OSError:
        return False
