"""`lowvram cache`: what the cache folder holds, and removing what the next run would rebuild anyway.

Runs find their latents and text embeddings by content, so the cache only grows: every VAE, resolution, crop and
caption wording adds entries. A run marks each entry it uses (its mtime), so entries no run used for a while are
told apart from the ones in use. Only files named as lowvram names its entries are removed, never through a link,
so a wrong --cache-dir (a home folder) loses nothing. The user's earlier captions (the web UI's edits, `caption
--overwrite`) are kept in the cache folder too, and are never removed here: they are not a cache.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lowvram.errors import Busy, LowvramError
from lowvram.files import TEMPORARY, human_size
from lowvram.locks import hold_exclusive, is_held
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
# the removable entries, by their names within their folder (a killed write's temporary file is one too)
ENTRY_NAMES = {LATENTS: re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.safetensors$"),
               TEXT: re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.safetensors$"),
               SCANS: re.compile(r"^[0-9a-f]{20}\.json$")}
DAY = 24 * 3600
MOST_DAYS = 36500


@dataclass(frozen=True)
class FolderUsage:
    name: str
    files: int
    size: int
    last_used: float  # the newest file's mtime
    removable: int  # bytes of entries (ENTRY_NAMES)
    unreadable: int = 0  # folders in it another user keeps to themselves (a lab's shared cache), not counted


def run_cache(cache_dir: Path | None, unused_for: float | None, clear: bool, dry_run: bool) -> None:
    """`lowvram cache`: the table, or the removal and what it freed."""
    given = "--cache-dir" if cache_dir is not None else "the cache folder"
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if dry_run and unused_for is None and not clear:
        raise LowvramError("--dry-run: only used with --unused-for or --clear; add one, or drop --dry-run")
    if cache_dir.exists() and not cache_dir.is_dir():
        raise LowvramError(f"{given} {cache_dir}: a file, not a folder; pass --cache-dir with the cache folder")
    if not cache_dir.is_dir():
        print(f"{cache_dir}: no cache there (nothing was cached yet, or the cache is elsewhere: --cache-dir)")
        return
    try:
        if unused_for is None and not clear:
            print("\n".join(summary(cache_dir, usage(cache_dir))))
            return
        files, size = remove(cache_dir, None if clear else unused_for, dry_run)
    except PermissionError as exc:
        raise LowvramError(f"{exc.filename}: cannot be read ({exc.strerror}); run as the user who owns the cache, "
                           "or pass another --cache-dir") from None
    which = "every cache entry" if clear else f"the entries no run used for {_age(unused_for)}"
    print(f"{'would remove' if dry_run else 'removed'} {_files_count(files)} ({human_size(size)}) of {cache_dir}: "
          f"{which}")


def usage(cache_dir: Path) -> list[FolderUsage]:
    """Every folder of the cache with a file in it: the known ones first, then any other."""
    names = [name for name in FOLDERS if (cache_dir / name).is_dir()]
    names += sorted(p.name for p in cache_dir.iterdir() if p.is_dir() and p.name not in (*FOLDERS, IN_USE))
    found = []
    for name in names:
        unreadable: list[str] = []
        files = _files(cache_dir, name, unreadable if name == UI_FILES else None)  # (each user's UI files private)
        stats = {path: path.lstat() for path in files}
        if stats or unreadable:
            entries = set(_entries(cache_dir, name, files))
            found.append(FolderUsage(name, len(stats), sum(s.st_size for s in stats.values()),
                                     max((s.st_mtime for s in stats.values()), default=0.0),
                                     sum(s.st_size for path, s in stats.items() if path in entries), len(unreadable)))
    return found


def remove(cache_dir: Path, unused_for: float | None, dry_run: bool = False) -> tuple[int, int]:
    """Remove the entries no run used for `unused_for` seconds (None: every entry); returns how many files and
    bytes went (or would go, with `dry_run`). Refused while a run reads the cache, unless only counting."""
    with contextlib.ExitStack() as held:
        try:
            if not dry_run:
                held.enter_context(hold_exclusive(cache_dir / IN_USE))
        except BlockingIOError:
            # (exit 75, "try again later", as a busy --output: a prune job told it apart from a wrong --cache-dir)
            raise Busy(f"{cache_dir}: a lowvram run (or another `lowvram cache`) is using this cache"
                       f"{_holders(cache_dir / IN_USE)}; run this again when it ends") from None
        except OSError as exc:
            raise LowvramError(f"{cache_dir / IN_USE}: cannot be locked ({exc.strerror}), so a run could be reading "
                               "what this removes; run as the user who owns the cache") from None
        return _remove(cache_dir, unused_for, dry_run)


def _holders(folder: Path) -> str:
    """Whose processes hold the cache (a lab's teacher asks which student's run): each held holder file's pid (on
    the machine that holds it) and owner, as " (pid 12 of ann, ...)"; "" where none is seen (a file system without
    locks)."""
    seen = []
    for path in sorted(folder.glob("holder-*.lock")):
        try:
            pid, owner = int(path.name.split("-")[1]), path.stat().st_uid
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not a holder's name
            continue
        if not is_held(path):  # (a killed run's: its file is left until a clearer removes it)
            continue
        try:
            import pwd

            seen.append(f"pid {pid} of {pwd.getpwuid(owner).pw_name}")
        except ImportError:  # Windows: files have no owner's id to name
            seen.append(f"pid {pid}")
        except KeyError:  # a user of another machine's (an NFS share)
            seen.append(f"pid {pid} of user {owner}")
    return f" ({', '.join(seen)})" if seen else ""


def _remove(cache_dir: Path, unused_for: float | None, dry_run: bool) -> tuple[int, int]:
    cutoff = None if unused_for is None else time.time() - unused_for
    files, size = 0, 0
    for name in ENTRY_NAMES:
        for path in _entries(cache_dir, name, _files(cache_dir, name)):
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            if cutoff is not None and stat.st_mtime >= cutoff:
                continue
            if not dry_run:
                try:
                    path.unlink()
                except OSError as exc:
                    raise LowvramError(f"{path}: cannot be removed ({exc.strerror}); removed "
                                       f"{_files_count(files)} ({human_size(size)}) before it") from None
            files, size = files + 1, size + stat.st_size
        if not dry_run:
            _remove_empty_folders(cache_dir / name)
    return files, size


def summary(cache_dir: Path, folders: list[FolderUsage]) -> list[str]:
    if not folders:
        return [f"{cache_dir}: empty"]
    now = time.time()
    width = max(len(f.name) for f in folders)
    lines = [f"{cache_dir}:"]
    for f in folders:
        lines.append(f"  {f.name:<{width}}  {f.files:>7} {'files' if f.files != 1 else 'file '}  "
                     f"{human_size(f.size):>10}  "
                     f"{'last used ' + _age(now - f.last_used) + ' ago' if f.files else 'none readable'}  "
                     f"{FOLDERS.get(f.name, '')}".rstrip() + (f" (and {_folders_count(f.unreadable)} other users keep "
                                                             "to themselves)" if f.unreadable else ""))
    removable = sum(f.removable for f in folders)
    lines.append(f"{human_size(removable)} can be removed (the next run rebuilds what it needs); "
                 f"{human_size(shutil.disk_usage(cache_dir).free)} free on its disk")
    return lines


def cache_folder(text: str) -> Path:
    """--cache-dir's type: a blank name is refused (Path("") is the working folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; name the cache folder")
    return Path(text)


def parse_age(text: str) -> float:
    """--unused-for's type: '30' or '30d' (days), '12h', '2w' as seconds."""
    units = {"h": 3600, "d": DAY, "w": 7 * DAY}
    text = text.strip()
    number, unit = (text[:-1], text[-1].lower()) if text[-1:].lower() in units else (text, "d")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MOST_DAYS * DAY:
        raise argparse.ArgumentTypeError(f"give a number of days (30 or 30d), hours (12h) or weeks (2w), up to "
                                         f"{MOST_DAYS} days")
    return seconds


def _age(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{max(0, round(seconds / 60))} min"
    if seconds < 2 * DAY:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / DAY)} days"


def _files_count(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def _folders_count(count: int) -> str:
    return f"{count} folder" if count == 1 else f"{count} folders"


def _files(cache_dir: Path, name: str, unreadable: list[str] | None = None) -> list[Path]:
    """The plain files under the cache's folder `name`; links (the folder itself, or files and folders in it) are
    neither followed nor counted. A folder that cannot be read raises PermissionError (is added to `unreadable`,
    if given)."""
    folder = cache_dir / name
    if folder.is_symlink() or not folder.is_dir():
        return []
    found = []

    def cannot_read(error: OSError) -> None:
        if unreadable is None or not isinstance(error, PermissionError):
            raise error
        unreadable.append(error.filename)

    for root, _, names in os.walk(folder, onerror=cannot_read):
        found += [path for path in (Path(root) / n for n in names) if path.is_file() and not path.is_symlink()]
    return found


def _entries(cache_dir: Path, name: str, files: list[Path]) -> list[Path]:
    """Those of `files` that are entries of the folder `name`, by their names."""
    pattern = ENTRY_NAMES.get(name)
    if pattern is None:
        return []
    folder = cache_dir / name
    return [path for path in files
            if pattern.match(path.relative_to(folder).as_posix()) or TEMPORARY.match(path.name)]


def _remove_empty_folders(folder: Path) -> None:
    if folder.is_symlink() or not folder.is_dir():
        return
    for root, _, _ in sorted(os.walk(folder), key=lambda walked: len(walked[0]), reverse=True):
        if Path(root) != folder and not any(Path(root).iterdir()):
            Path(root).rmdir()
