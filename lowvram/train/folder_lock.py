"""The lock a run holds on its output folder while it writes there: `<folder>/.lowvram.lock`, naming the process
(and machine, and multi-GPU launch) that holds it, refreshed while the run goes on so that another machine sharing
the disk (a reconnected Colab runtime) can tell a live run's lock from a gone one's."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from lowvram.errors import Busy, LowvramError
from lowvram.files import make_folders

LOCK = ".lowvram.lock"
LOCK_HEARTBEAT_S = 30  # a held lock's file is touched this often, and one from another machine (where its process
LOCK_STALE_S = 180  # cannot be looked up) untouched this long is a gone run's: a reconnected Colab is a new machine
LOCK_POLL_S = 2.0  # how often a run waiting for such a lock to go stale looks at it


def launch_id() -> str | None:
    """Which launch of accelerate's (torchrun's) this process is one of, alike in each of its processes on every
    machine; None outside one. The main process takes the folder's lock once the process group forms, which on GPUs
    (NCCL connects lazily) may come before another process has looked at it: that one must know it for its own."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "0", "1"):
        return None
    return ":".join(os.environ.get(key, "") for key in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))


def _this_launch(holder: dict) -> bool:
    """Whether a lock's holder is this launch's main process: the same launch id, on this machine (every launch of
    accelerate's on one machine is none:127.0.0.1:29500 by default: two machines' on a shared disk are two), or
    anywhere where the launcher names its rendezvous."""
    ours = launch_id()
    return bool(ours) and holder.get("launch") == ours and (holder.get("host") == socket.gethostname()
                                                           or not ours.startswith("none:"))


class FolderLock:
    """`<folder>/.lowvram.lock`, created exclusively, naming the process that holds it. A lock whose process is
    gone (killed, crashed, the machine restarted) is stale and taken over. Another machine cannot look that
    process up, so a run refreshes its lock while it runs, where the disk lets it (the lock says whether)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.held = False
        self._stop = threading.Event()

    def acquire(self) -> None:
        make_folders(self.path.parent)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "created": _process_created(os.getpid()),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "refreshed": True,
                "launch": launch_id()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if busy := self.held_by_another():
                    raise Busy(busy) from None
                self.path.unlink(missing_ok=True)  # stale: the process that wrote it is gone
                continue
            try:
                with os.fdopen(fd, "w") as fh:
                    try:
                        os.utime(self.path)  # (a disk that keeps no times: a lock another run must not take over)
                    except OSError:
                        mine["refreshed"] = False
                    json.dump(mine, fh)
            except OSError as exc:  # a full disk: the first write of a run (its resume, right after the disk filled)
                self.path.unlink(missing_ok=True)
                raise LowvramError(f"--output: can't write {self.path} ({exc.strerror or exc}); free space in "
                                   f"{self.path.parent}, or choose another --output") from None
            self.held = True
            self._stop = threading.Event()
            threading.Thread(target=self._refresh, args=(self._stop,), daemon=True, name="lowvram-lock").start()
            return
        raise Busy(f"--output: could not take {self.path}; another run keeps creating it")

    def _refresh(self, stop: threading.Event) -> None:
        while not stop.wait(LOCK_HEARTBEAT_S):
            with contextlib.suppress(OSError):  # (a full or unmounted disk: the run says so where it writes)
                os.utime(self.path)

    def wait_while_going_stale(self, say) -> None:
        """Where the lock is another machine's and goes unrefreshed (a Colab runtime that disconnected: the
        reconnected one is a new machine, often back within the minutes it takes to go stale), wait until it is
        stale, saying so through `say`; return early where it is refreshed meanwhile (its run goes on)."""
        holder = self._holder() if self.path.is_file() else None
        if not holder or holder.get("host") == socket.gethostname() or not holder.get("refreshed"):
            return
        try:
            touched = self.path.stat().st_mtime
        except OSError:
            return
        if not 0 < LOCK_STALE_S - (time.time() - touched) <= LOCK_STALE_S:
            return
        say(f"{self.path.parent} is locked by a run on {holder.get('host')}, which last refreshed the lock "
            f"{time.time() - touched:.0f} s ago (a run going on does so every {LOCK_HEARTBEAT_S} s): waiting up to "
            f"{LOCK_STALE_S - (time.time() - touched):.0f} s for it to go stale, as a gone machine's does")
        while time.time() - touched < LOCK_STALE_S:
            time.sleep(min(LOCK_POLL_S, max(LOCK_STALE_S - (time.time() - touched), 0.0)))
            try:
                if self.path.stat().st_mtime != touched:
                    return  # refreshed: its run goes on (held_by_another says so)
            except OSError:
                return  # released

    def held_by_another(self) -> str | None:
        """The line a run stops at while another live process holds the folder (None: free, or a stale lock)."""
        holder = self._holder() if self.path.is_file() else None
        if holder is None or not _alive(holder, self.path) or _this_launch(holder):
            return None  # (free, stale, or this launch's own main process's: taken before this one looked)
        where = "" if holder.get("host") == socket.gethostname() else f" on {holder.get('host')}"
        return (f"--output: {self.path.parent} is in use by another lowvram run (pid {holder.get('pid')}{where}, "
                f"since {holder.get('since')}); wait for it to end, or choose another --output"
                + (f" (if that run is gone, delete {self.path}" + (
                    f"; a lock another machine leaves is taken over {LOCK_STALE_S // 60} minutes after it stops"
                    if holder.get("refreshed") else "") + ")" if where else ""))

    def held_here(self) -> int | None:
        """The pid of the live process of this machine that holds the folder (None: free, stale, or another
        machine's)."""
        holder = self._holder() if self.path.is_file() else None
        if holder is None or holder.get("host") != socket.gethostname() or not _alive(holder, self.path):
            return None
        return int(holder.get("pid", -1))

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # half-written by a process killed between creating and writing it

    def release(self) -> None:
        self._stop.set()
        if self.held:
            holder = self._holder() or {}
            if (holder.get("pid"), holder.get("host")) == (os.getpid(), socket.gethostname()):  # (not one that
                with contextlib.suppress(OSError):  # another machine took over meanwhile; a folder gone read-only
                    self.path.unlink(missing_ok=True)  # keeps it: a lock of this pid, which is gone, is taken over)
            self.held = False


def _process_created(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(holder: dict, path: Path) -> bool:
    """Whether the process named in the lock at `path` still runs (the same pid and start time: pids are
    reused); on another host, whether it refreshed the lock lately (one that does not: held, as earlier
    lowvram's locks)."""
    if holder.get("host") != socket.gethostname():
        if not holder.get("refreshed"):
            return True
        try:
            return time.time() - path.stat().st_mtime < LOCK_STALE_S
        except OSError:
            return False
    created = _process_created(int(holder.get("pid", -1)))
    return created is not None and (holder.get("created") is None or abs(created - holder["created"]) < 1.0)
