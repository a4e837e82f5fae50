"""The lock of a folder many runs share and one command holds alone (the cache's `.in-use`: runs read from it
while `lowvram cache` may remove nothing; it removes only while it holds the lock alone). Each shared holder locks a
file of its own, so the same files and locks work on Windows (msvcrt) and elsewhere (flock); a killed holder's lock
goes with its process."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import time
from pathlib import Path

from lowvram.files import make_folders, shared_mode

CLEARING = "exclusive.lock"  # the exclusive holder's lock file; each shared holder has one of its own
LOCK_POLL = 0.1  # seconds between tries: a shared holder takes the exclusive lock for a moment to look


@contextlib.contextmanager
def hold_shared(folder: Path, waiting=None, unlocked=None):
    """One of any number of holders of `folder`'s lock for the block: waits while the exclusive holder has it
    (calling `waiting()` once, to say so). Each holder locks a file of its own, so the same files and locks work on
    Windows (msvcrt) and elsewhere (flock); a killed holder's lock goes with its process. Where no lock can be had
    the block runs unlocked: quietly on a file system without locks, after `unlocked(reason)` where the folder
    cannot be written (another user's)."""
    folder, mine, told = Path(folder), None, False
    earlier = _earlier_lock_file(folder)
    if earlier is not None:  # an earlier lowvram's, which its runs share as this: until a removal makes the folder
        with earlier:
            _share(earlier, waiting)
            yield
        return
    try:
        for attempt in itertools.count():
            try:
                mine = _new_holder(folder)
            except OSError as exc:
                if unlocked:
                    unlocked(f"{folder}: {exc.strerror}")
                break
            # registered first, then looked: a clearer finds this holder's file, or this holder finds the clearer
            if mine is None or (mine and _free(folder / CLEARING) and _still_there(mine)):
                break
            if mine:
                _let_go(mine)  # and register again once the clearer is done (it may have removed this file)
            mine = None
            if waiting and not told and attempt >= 5:  # held longer than another holder's look takes
                waiting()
                told = True
            time.sleep(LOCK_POLL)
        yield
    finally:
        if mine:
            _let_go(mine)


@contextlib.contextmanager
def hold_exclusive(folder: Path):
    """The only holder of `folder`'s lock for the block: BlockingIOError while another holds it, shared or
    exclusive. A killed shared holder's file is removed. Goes on unlocked on a file system without locks; an
    OSError where the lock can be neither taken nor made (a folder of another user's)."""
    folder, handle = Path(folder), False
    for _ in range(10):  # a shared holder looks for a moment
        handle = _take(folder / CLEARING) if _make_lock_folder(folder) else False
        if handle is not False:
            break
        time.sleep(LOCK_POLL)
    if handle is False:
        raise BlockingIOError(errno.EAGAIN, "held by another", str(folder))
    try:
        for path in sorted(folder.glob("holder-*.lock")) if handle else []:
            if not _free(path, create=False):
                raise BlockingIOError(errno.EAGAIN, "held by another", str(path))
            try:
                path.unlink()  # its process is gone (Windows refuses while the holder has it open)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if os.name != "nt":  # a folder of another user's: a dead holder's file stays, and would for ever
                    raise
                raise BlockingIOError(errno.EAGAIN, "held by another", str(path)) from exc
        yield
    finally:
        if handle:
            _release(handle)


def _make_lock_folder(folder: Path) -> bool:
    """`folder` made, where an earlier lowvram kept one lock file (removed once nobody holds it); False while
    somebody does. OSError where it cannot be made."""
    try:
        if folder.is_file() and folder.stat().st_size == 0:
            old = _take(folder, create=False)
            if old is False:
                return False
            if old:
                _release(old)
            folder.unlink()
    except OSError:  # another made the folder meanwhile
        if not folder.is_dir():
            raise
    make_folders(folder)
    return True


def _earlier_lock_file(folder: Path):
    """An earlier lowvram's single lock file where the folder goes, opened; None where there is none (a lowvram
    on Windows made none)."""
    if os.name == "nt":
        return None
    try:
        return open(folder, "rb") if folder.is_file() else None  # (held open for as long as the lock is)
    except OSError:  # (another user's cache folder, which is_file may not look into either)
        return None


def _share(handle, waiting=None) -> None:
    """A shared flock on an earlier lowvram's lock file, as its runs took one: after its removal, if one holds it."""
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        if waiting:
            waiting()
        fcntl.flock(handle, fcntl.LOCK_SH)
    except OSError:  # a file system without locks
        pass


def _new_holder(folder: Path):
    """A file of this holder's own in `folder`, locked; None where the file system has no locks; False where
    someone holds it already (a clearer looking at it the moment it was made). OSError where the folder cannot be
    written."""
    make_folders(folder)
    handle = open(folder / f"holder-{os.getpid()}-{os.urandom(4).hex()}.lock", "x+b")  # noqa: SIM115
    _share_with_group(handle, folder)
    got = _lock(handle)
    if not got:
        _let_go(handle)
    return handle if got else got


def _share_with_group(handle, folder: Path) -> None:
    """A lock file of ours in a group's shared folder made the group's to open too (a umask of 077 made the cache's
    lock this user's alone: no classmate could clean the cache)."""
    with contextlib.suppress(OSError, AttributeError):  # another user's file; (Windows has no fchmod)
        if os.fstat(handle.fileno()).st_uid == os.getuid():
            os.fchmod(handle.fileno(), shared_mode(folder, stat.S_IMODE(os.fstat(handle.fileno()).st_mode)))


def _take(path: Path, create: bool = True):
    """`path` opened and locked (held open for as long as the lock is); False while another holds it; None where
    the file system has no locks, or (without `create`) the file is gone. OSError where it can be neither opened
    nor made."""
    if create:
        make_folders(path.parent)
    try:
        handle = open(path, "a+b" if create else "r+b")  # noqa: SIM115
        _share_with_group(handle, path.parent)
    except FileNotFoundError:
        if create:
            raise
        return None
    except PermissionError as refused:
        try:
            handle = open(path, "rb")  # noqa: SIM115 - another user's: a lock needs no write access
        except FileNotFoundError:
            if create:
                raise refused from None
            return None
    got = _lock(handle)
    if not got:
        handle.close()
    return handle if got else got


def is_held(path: Path) -> bool:
    """Whether a process holds the lock of `path`, a holder's file (on any machine the file system's locks reach)."""
    return not _free(path, create=False)


def _free(path: Path, create: bool = True) -> bool:
    """Whether nobody holds `path`'s lock (taken and let go at once, to look). The exclusive lock's file that
    cannot be made is nobody's: the one who could hold it would have made it. A holder's file that cannot be opened
    (another user's, unreadable) counts as held."""
    try:
        taken = _take(path, create)
    except OSError:
        return create
    if taken:
        _release(taken)
    return taken is not False


def _still_there(handle) -> bool:
    """Whether an open file is still in its folder under its name (a clearer removes the holders' files it finds
    unlocked)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(handle.name))
    except OSError:
        return False


def _let_go(handle) -> None:
    _release(handle)
    with contextlib.suppress(OSError):
        os.unlink(handle.name)


def _release(handle) -> None:
    """Close a file this process may hold the lock of: unlocked first on Windows, which frees a lock closed over
    only some time later."""
    if os.name == "nt":
        import msvcrt

        with contextlib.suppress(OSError):
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    handle.close()


def _lock(handle) -> bool | None:
    """An exclusive lock on an open file without waiting: whether it was had (None: the file system has none).
    Closing the file, or its process's end, releases it."""
    if os.name == "nt":
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            return False if exc.errno in (errno.EACCES, errno.EDEADLK) else None
        return True
    import fcntl

    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True
