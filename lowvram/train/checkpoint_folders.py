"""Checkpoint folders found, told apart by run and checked readable, without torch: the commands that stop at
an output folder's files (a new run where a LoRA is already, `--resume` of another run's) say so at once, before
the training's imports. Writing and loading checkpoints is `lowvram.train.checkpoint`'s."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lowvram.errors import Refused
from lowvram.lora_header import read_header
from lowvram.run_files import CHECKPOINTS, written_checkpoints
from lowvram.train.identity import differences, same_run


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def complete(root: Path, run_recipe: dict | None = None) -> list[tuple[int, Path]]:
    """`run_files.written_checkpoints`, only the run of `run_recipe`'s, if given (`identity.same_run`; checkpoints
    from before run identities count as any run's)."""
    return [(step, path) for step, path in written_checkpoints(root)
            if run_recipe is None or not (theirs := run_of(path)) or same_run(theirs, run_recipe)]


def run_of(path: Path) -> dict:
    """The run a checkpoint belongs to: {"identity", "recipe"}, or {} where it predates run identities."""
    try:
        return json.loads((path / "state.json").read_text()).get("run") or {}
    except (OSError, ValueError):
        return {}


def latest(root: Path, run_recipe: dict | None = None) -> Path | None:
    """The newest complete checkpoint (of the run of `run_recipe`, if given)."""
    done = complete(root, run_recipe)
    return done[-1][1] if done else None


ADAPTERS = "adapters.safetensors"
PARTS = (ADAPTERS, "optimizer.safetensors", "rng.safetensors")
EMA_PART = "ema.safetensors"  # with --ema


FORMAT = 2  # of the checkpoints written; 2: RNG states per process (rank<N>/...)


def processes_of(path: Path) -> int | None:
    """How many processes wrote a checkpoint (each keeps its random states and share of the data in it), None
    where that is unreadable or the checkpoint another format's (which the resume refuses for that)."""
    try:
        if json.loads((path / "state.json").read_text()).get("format") != FORMAT:
            return None
        names = read_header(path / "rng.safetensors")[1]
    except (OSError, ValueError, AttributeError):
        return None
    return len({name.split("/")[0] for name in names if re.match(r"rank\d+/", name)}) or None


def format_refusal(path: Path) -> str | None:
    """The line a checkpoint another lowvram version wrote is refused with (None: this version's)."""
    try:
        written = json.loads((path / "state.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None
    return None if written == FORMAT else (
        f"--resume: {path} was written by another lowvram version (format {written}, this one reads {FORMAT}); "
        "resume it with that version, or start over without --resume")


def processes_refusal(path: Path, saved_by: int, processes: int) -> str:
    """Why a checkpoint of `saved_by` processes does not resume in a run of `processes`, and the ways on."""
    how = (f"accelerate launch --multi_gpu --num_processes {saved_by} -m lowvram train" if saved_by > 1
           else "lowvram train, without accelerate launch")
    return (f"--resume: {path} was saved by a run of {saved_by} process(es), this one has {processes}; resume it with "
            f"as many ({how}), or start anew from a LoRA the run saved (--network-weights FILE and another --output; "
            "its optimizer state starts over)")


def problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (a part truncated, missing or unreadable), or None. Each
    part's header is checked as the safetensors library checks it, its size against the tensors it lists: what
    loading it would find wrong, without reading the tensors (the resume, and the claim before it, ask)."""
    part = "state.json"
    try:
        json.loads((path / part).read_text())
        for part in PARTS + ((EMA_PART,) if (path / EMA_PART).exists() else ()):
            read_header(path / part)
    except Exception as exc:  # noqa: BLE001 - whatever broke it, the checkpoint is unusable
        return f"{part}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}"
    return None


def resolve(resume: str, output_dir: Path, run_recipe: dict | None = None) -> tuple[Path, list[str]]:
    """The checkpoint `--resume` names: `auto`, the newest readable one of this run in the output folder (with
    a line for each newer one that was unreadable); or a folder. A checkpoint of another run is refused,
    naming what differs."""
    if resume == "auto":
        root = checkpoint_root(output_dir)
        unreadable = []
        for _, path in reversed(complete(root, run_recipe)):
            reason = problem(path)
            if reason is None:
                return path, unreadable
            unreadable.append(f"checkpoint {path.name} is unreadable ({reason})")
        if unreadable:
            raise Refused(f"--resume auto: no readable checkpoint in {root} ({'; '.join(unreadable)}); start "
                               "over with --overwrite (the earlier files move to archive/), or pass a checkpoint "
                               "folder")
        others = complete(root)
        if others:
            theirs = run_of(others[-1][1]).get("recipe", {})
            raise Refused(f"--resume auto: the checkpoints in {root} belong to another run "
                               f"({differences(theirs, run_recipe or {})}); pass the options it was trained "
                               "with, or start without --resume")
        raise Refused(f"--resume auto: no checkpoint in {root}; start without --resume, or pass a "
                           "checkpoint folder")
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise Refused(f"--resume: {path} is not a lowvram checkpoint folder (no state.json)")
    theirs = run_of(path)
    if run_recipe is not None and theirs and not same_run(theirs, run_recipe):
        raise Refused(f"--resume: {path} is a checkpoint of another run ({differences(theirs['recipe'], run_recipe)}"
                           "); pass the options it was trained with, or start without --resume")
    reason = problem(path)
    if reason:
        raise Refused(f"--resume: {path} is unreadable ({reason}); pass an earlier checkpoint")
    return path, []
