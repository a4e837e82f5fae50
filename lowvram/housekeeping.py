"""`lowvram cache`: what the cache folder holds, and removing what the next run would rebuild anyway.

Runs find their latents and text embeddings by content, so the cache only grows: every VAE, resolution, crop and
caption wording adds entries. A run marks each entry it uses (its mtime), so entries no run used for a while are
told apart from the ones in use. The user's earlier captions (the web UI's edits, `caption --overwrite`) are kept
here too, and are never removed by this command: they are not a cache.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lowvram.errors import LowvramError
from lowvram.files import human_size, lock_file
from lowvram.resolve import (
    EDITED_CAPTIONS,
    IN_USE,
    LATENTS,
    REPLACED_CAPTIONS,
    SAMPLE_DATASET,
    SCANS,
    TEXT,
    UI_FILES,
    default_cache_dir,
)

FOLDERS = {  # what each folder of the cache holds, as the table says it
    LATENTS: "VAE latents of training images",
    TEXT: "text embeddings of captions",
    SCANS: "dataset scan indexes",
    SAMPLE_DATASET: "the built-in sample dataset",
    EDITED_CAPTIONS: "captions before the web UI changed them (kept)",
    REPLACED_CAPTIONS: "captions before caption --overwrite (kept)",
    UI_FILES: "the web UI's run logs (kept)",
}
BY_AGE = (LATENTS, TEXT, SCANS)  # one file per entry: removed one by one, by when a run last used it
REMOVABLE = (*BY_AGE, SAMPLE_DATASET)  # what --clear removes; the next run rebuilds what it needs
DAY = 24 * 3600


@dataclass(frozen=True)
class FolderUsage:
    name: str
    files: int
    size: int
    last_used: float | None  # the newest file's mtime


def usage(cache_dir: Path) -> list[FolderUsage]:
    """Every folder of the cache with a file in it: the known ones first, then any other."""
    names = [name for name in FOLDERS if (cache_dir / name).is_dir()]
    names += sorted(p.name for p in cache_dir.iterdir() if p.is_dir() and p.name not in FOLDERS) \
        if cache_dir.is_dir() else []
    found = []
    for name in names:
        stats = [p.lstat() for p in _files(cache_dir / name)]
        if stats:
            found.append(FolderUsage(name, len(stats), sum(s.st_size for s in stats), max(s.st_mtime for s in stats)))
    return found


def remove(cache_dir: Path, unused_for: float | None, dry_run: bool = False) -> tuple[int, int]:
    """Remove the entries no run used for `unused_for` seconds (None: every removable file); returns how many
    files and bytes went (or would go, with `dry_run`). Refused while a run reads the cache."""
    try:
        lock = lock_file(cache_dir / IN_USE, shared=False) if cache_dir.is_dir() else None
    except BlockingIOError:
        raise LowvramError(f"{cache_dir}: a lowvram run is using this cache; run `lowvram cache` again when it ends "
                           "(or pass another --cache-dir)") from None
    try:
        cutoff = None if unused_for is None else time.time() - unused_for
        files, size = 0, 0
        for name in BY_AGE if unused_for is not None else REMOVABLE:
            for path in _files(cache_dir / name):
                try:
                    stat = path.stat()
                except FileNotFoundError:  # a scan index check-data replaced meanwhile (it takes no lock)
                    continue
                if cutoff is not None and stat.st_mtime >= cutoff:
                    continue
                if not dry_run:
                    try:
                        path.unlink()
                    except OSError as exc:
                        raise LowvramError(f"{path}: cannot be removed ({exc.strerror}); removed {files} files "
                                           f"({human_size(size)}) before it") from None
                files, size = files + 1, size + stat.st_size
            if not dry_run:
                _remove_empty_folders(cache_dir / name)
        return files, size
    finally:
        if lock:
            lock.close()


def run_cache(cache_dir: Path | None, unused_for: float | None, clear: bool, dry_run: bool) -> None:
    """`lowvram cache`: the table, or the removal and what it freed."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise LowvramError(f"--cache-dir {cache_dir}: a file, not a folder; name the cache folder")
    if unused_for is None and not clear:
        print("\n".join(summary(cache_dir, usage(cache_dir))))
        return
    files, size = remove(cache_dir, None if clear else unused_for, dry_run)
    which = "every cache entry" if clear else f"the entries no run used for {_age(unused_for)}"
    print(f"{'would remove' if dry_run else 'removed'} {files} files ({human_size(size)}) of {cache_dir}: {which}")


def summary(cache_dir: Path, folders: list[FolderUsage]) -> list[str]:
    if not folders:
        return [f"{cache_dir}: empty"]
    now = time.time()
    width = max(len(f.name) for f in folders)
    lines = [f"{cache_dir}:"]
    for f in folders:
        lines.append(f"  {f.name:<{width}}  {f.files:>7} {'files' if f.files != 1 else 'file '}  {human_size(f.size):>10}  last used "
                     f"{_age(now - f.last_used)} ago  {FOLDERS.get(f.name, '')}".rstrip())
    total = sum(f.size for f in folders if f.name in REMOVABLE)
    lines.append(f"{human_size(total)} can be removed (the next run rebuilds what it needs); "
                 f"{human_size(shutil.disk_usage(cache_dir).free)} free on its disk")
    return lines


def parse_age(text: str) -> float:
    """'30' or '30d' (days), '12h', '2w' as seconds."""
    units = {"h": 3600, "d": DAY, "w": 7 * DAY}
    number, unit = (text[:-1], text[-1].lower()) if text[-1:].lower() in units else (text, "d")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"--unused-for {text}: give a number of days (30 or 30d), hours (12h) or weeks (2w)")
    return value * units[unit]


def _age(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{max(0, round(seconds / 60))} min"
    if seconds < 2 * DAY:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / DAY)} days"


def _files(folder: Path) -> list[Path]:
    """The plain files under `folder`; links (to files or folders) are neither followed nor counted."""
    found = []
    for root, _, names in os.walk(folder):
        found += [path for path in (Path(root) / name for name in names) if path.is_file() and not path.is_symlink()]
    return found


def _remove_empty_folders(folder: Path) -> None:
    for root, _, _ in sorted(os.walk(folder), key=lambda walked: len(walked[0]), reverse=True):
        if Path(root) != folder and not any(Path(root).iterdir()):
            Path(root).rmdir()
