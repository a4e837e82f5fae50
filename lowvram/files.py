"""Writing files so that a crash, a kill or a full disk never leaves a half-written one behind: each file is
written under a temporary name and renamed into place, and a write whose size is known is checked against the
free space first, so a full disk stops it before it starts (`DiskFull`)."""

from __future__ import annotations

import codecs
import contextlib
import difflib
import errno
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lowvram.errors import PICKLE_SUFFIXES, LowvramError
from lowvram.run_files import RECORD

if TYPE_CHECKING:
    import torch

# what atomic_write names its temporary files: `.<final name>.<mkstemp's 8 characters>.tmp`
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
MAX_FILE_NAME = 255  # what a file name holds on every common file system: bytes, or NTFS's UTF-16 units
NAME_UNITS = "UTF-16 units" if os.name == "nt" else "bytes"  # what name_length counts
TEMPORARY_NAME_EXTRA = len("..12345678.tmp")  # what atomic_write's temporary name adds to a file's: .<name>.<8>.tmp
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
WINDOWS_DISK_FULL = (39, 112)  # ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL: safetensors' writer reports these codes


class DiskFull(LowvramError):
    """No room for a write: `what` needs `needed` bytes in `folder` (`kept_free` of them left free), which has
    `free`; or the process's file-size limit (`ulimit -f`) stopped it."""

    def __init__(self, folder: Path, needed: int, free: int, what: str, size_limit: bool = False,
                 kept_free: int = 0):
        self.folder, self.needed, self.free, self.what = Path(folder), needed, free, what
        # what lets the write through: freeing space cannot lift a file-size limit
        self.remedy = "raise the limit (ulimit -f unlimited) or write elsewhere" if size_limit else "free space"
        if size_limit:
            self.reason = f"the file-size limit (ulimit -f) stopped writing {what} in {folder}"
        elif free >= needed:  # the check before writing passed: something else filled the disk meanwhile
            self.reason = (f"the disk filled up while writing {what} in {folder} ({human_size(free)} free now; "
                           "another program may be writing there)")
        else:
            kept = f" with the {human_size(kept_free)} kept free" if needed < 2 * kept_free else ""  # (a small file)
            # (where both read alike, 1.55 MiB needed and free, how much is short says that it does not fit)
            short = f" ({human_size(needed - free)} short)" if human_size(needed) == human_size(free) else ""
            self.reason = (f"no room for {what} in {folder}: it needs {human_size(needed)}{kept}, "
                           f"{human_size(free)} is free{short}")
        # the fix, in the one line; a run's own message (lowvram.train.outdir.out_of_room) says it after what it kept
        super().__init__(f"{self.reason}; {self.remedy}" + ("" if size_limit else " there, or write elsewhere"))


PLAIN_LINE_SECONDS = 10.0  # where no bar redraws: a progress line this often (CI jobs stop after minutes of silence)


def expand_home(path: str | os.PathLike) -> Path:
    """`path` with `~` or `~user` at its start expanded, as a shell expands it; one no home expands (Windows'
    `~\\lora` here, an unknown user's) as it is, for the not-found message that follows to name."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def broken_link(path: str | os.PathLike) -> str:
    """Where a path is not found because it, or a folder on the way to it, is a link whose target is gone (a drive
    not mounted, a shared models folder moved): that, in words; '' otherwise."""
    link = next((part for part in (Path(path), *Path(path).parents) if part.is_symlink() and not part.exists()), None)
    return f"; {link} is a link to {os.readlink(link)}, which is gone (a drive not mounted, or a folder moved)" \
        if link else ""


def not_found_hint(path: str | os.PathLike) -> str:
    """Why a path is not found here: a link to what is gone (`broken_link`), or backslashes, as Windows writes
    folders (a config or a command line from a Windows machine), or a file:// address (a file manager's copy), or
    a name close to it beside where it should be (a typo, 10_ohwx_woman for 10_ohwx woman)."""
    return (broken_link(path) or file_url_hint(path) or web_url_hint(path) or windows_path_hint(path)
            or eaten_backslashes(path) or closest(Path(path)))


def web_url_hint(path: str | os.PathLike) -> str:
    """What to give for a web address (a model page's download link, as notebooks paste them): lowvram downloads
    none."""
    found = re.search(r"(https?):/+(.*)", str(path), re.IGNORECASE)  # (a path made of it keeps one slash)
    if not found:
        return ""
    address = f"{found.group(1)}://{found.group(2)}"
    hub = re.match(r"https?://(?:www\.)?huggingface\.co/(?!(?:datasets|spaces|docs|blog|models|papers)/)"
                   r"([\w.-]+/[\w.-]+)", address, re.IGNORECASE)
    page = "; a /blob/ link is the file's web page, /resolve/ in its place the file" if "/blob/" in address else ""
    return (f"; lowvram downloads no web address: download it first (wget, or huggingface-cli download{page}) and "
            "give its path" + (f", or give its hub id {hub.group(1)}" if hub else ""))


def eaten_backslashes(path: str | os.PathLike) -> str:
    """Why C:modelssd15.safetensors is not found: C:\\models\\sd15.safetensors unquoted, whose backslashes the
    shell took as escapes of the letters after them (a name to read, not one to write: a:b is a name refused as
    such)."""
    if os.sep == "/" and re.search(r"(^|/)[A-Za-z]:[^\\/]+$", str(path)):
        return ("; that looks like a Windows path whose backslashes the shell took out (an unquoted \\ escapes the "
                "letter after it): give where it is on this machine, in quotes")
    return ""


SIDE_FILES = (".toml", ".json", ".jsonl", ".txt", ".caption", ".yaml", ".yml", ".log", ".md")  # text beside


def closest(path: Path) -> str:
    """" (did you mean models/tinydiff?)" for the name beside where `path` should be that is close to it, if any."""
    try:
        entries = list(expand_home(path).parent.iterdir()) if path.name else []
    except OSError:
        return ""
    names: dict[str, str] = {}  # stems compared: every "*.safetensors" name is close to every other
    for entry in entries:  # (a run's early.toml is no near name of its missing early.safetensors: a text file is
        if entry.suffix.lower() in SIDE_FILES and path.suffix.lower() not in SIDE_FILES:  # named where one is)
            continue
        if entry.stem not in names or entry.suffix == path.suffix:
            names[entry.stem] = entry.name
    close = difflib.get_close_matches(path.stem, list(names), n=1)
    return f" (did you mean {path.parent / names[close[0]]}?)" if close else ""


FILE_URL = re.compile(r"""(?:^|[/\\])\s*['"]?(file:[^'"]*)""", re.IGNORECASE)  # a path's start, or a folder's


def file_url_hint(path: str | os.PathLike) -> str:
    """The path a file:// address names (a browser's or file manager's "copy location"), to give instead."""
    match = FILE_URL.search(str(path))
    if not match:
        return ""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    address = match.group(1)  # (as given, or a path made of it: file:/srv/x, its // taken as one)
    parsed = urlparse(address if address.lower().startswith("file://") else "file://" + address[5:])
    local = url2pathname(parsed.path)  # (%20 a space; on Windows /C:/Users/me is C:\Users\me)
    if parsed.netloc and parsed.netloc.lower() != "localhost":  # another machine's share
        local = f"//{parsed.netloc}{local}"
    return f" (a file:// address: give the path alone, {local})"


def absolute_path(path: str | os.PathLike) -> Path:
    """`path` from the current folder, `~` expanded and `..` taken out where that names the same place (not after a
    link, whose `..` is its target's parent): `../data` and the same folder by its full path are one dataset to a
    run's identity."""
    given = expand_home(path).absolute()
    shorter = Path(os.path.normpath(given))
    return shorter if shorter == given or os.path.realpath(shorter) == os.path.realpath(given) else given


WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")  # C:\ or C:/, at a path's start


def is_windows_path(text: str) -> bool:
    """Whether a path was written on Windows: a drive, or \\ between folders."""
    return bool(WINDOWS_DRIVE.match(text)) or "\\" in text


WSL_MOUNTS = Path("/mnt")  # where WSL mounts Windows' drives (C:\ is /mnt/c)
WSL_SHARE = re.compile(r"(^|/)\\\\wsl(\.localhost|\$)\\[^\\]+(\\.*)?$", re.IGNORECASE)  # \\wsl.localhost\Ubuntu\home\me

SHELL_ESCAPE = re.compile(r"\\([ ()'&!])")  # what a shell's \ escapes in a name (My\ Dog), never Windows' folders


def windows_path_hint(path: str | os.PathLike) -> str:
    r"""Why a path with backslashes is not found here: Windows writes folders so. On WSL, the path that is the
    Windows one here (C:\Users\me is /mnt/c/Users/me; \\wsl.localhost\Ubuntu\home\me is /home/me)."""
    text = str(path)
    if text.endswith('"') and '"' in text[:-1]:  # (Explorer's "Copy as path" quotes what it copies)
        return "; the quotes are part of that name (Windows' Copy as path adds them): leave them out"
    if text.endswith("'") and re.search(r"(^|[\\/])'", text[:-1]):  # (cmd.exe passes single quotes on as they are)
        return "; the quotes are part of that name (cmd.exe keeps single quotes): leave them out, or use \"\""
    if os.sep != "/":
        return ""
    if share := WSL_SHARE.search(text):
        here = (share.group(3) or "\\").replace("\\", "/")
        return f"; that is how Windows names this WSL machine's {here}: give {here}"
    drive = re.search(r"(^|/)([A-Za-z]):[\\/](.*)", text)
    if drive:  # another machine's drive (made absolute here)
        mounted = WSL_MOUNTS / drive.group(2).lower()
        if mounted.is_dir():  # WSL
            here = mounted / drive.group(3).replace("\\", "/")
            try:
                found = here.exists()
            except OSError:  # (a folder on the way this user cannot look into)
                found = False
            return (f"; that is a Windows path: here it is {here}" if found else
                    f"; that is a Windows path: here it would be {here}, which is not there either")
        return "; that is a Windows path: give where it is on this machine" + (
            ", with / between folders" if "\\" in text else "")
    if "\\" not in text:
        return ""
    if SHELL_ESCAPE.search(text):  # (macOS Terminal escapes a folder dragged in: inside quotes the \ is kept)
        unescaped = SHELL_ESCAPE.sub(r"\1", text)
        try:
            found = Path(unescaped).exists()
        except OSError:
            found = False
        return (f"; the \\ before a space is the shell's escape, kept inside quotes (a folder dragged into them): "
                f"here it is {unescaped}" if found else "; the \\ before a space is the shell's escape, kept inside "
                "quotes: in quotes write the space alone")
    slashed = text.replace("\\", "/")
    try:
        found = Path(slashed).exists()
    except OSError:
        found = False
    return f"; written as a Windows path: here it is {slashed}" if found else \
        "; written as a Windows path: write it with / between folders here"


def decode_hint(text: str, exc: Exception) -> str:
    """Why a JSON or TOML config does not parse, where the error's own words do not say it: a comma before a JSON
    object's or list's end (a hand edit of an export; the error names the line after it), or `backslash_hint`'s."""
    at = getattr(exc, "pos", None)
    if isinstance(at, int) and text[at:at + 1] in ("}", "]") and text[:at].rstrip().endswith(","):
        comma = len(text[:at].rstrip()) - 1
        line = text.count("\n", 0, comma) + 1
        return (f"; the comma at line {line} column {comma - text.rfind(chr(10), 0, comma)} stands before a closing "
                f"{text[at]}, where JSON allows none: delete it")
    return backslash_hint(text)


# a backslash that starts no escape TOML or JSON reads (C:\Users: \U wants 8 hex digits), its doubled ones passed over
INVALID_ESCAPE = re.compile(r'(?<!\\)(?:\\\\)*\\(?![\\"/bfnrt]|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})')


def backslash_hint(text: str) -> str:
    """Why a TOML or JSON config that does not parse may not: a Windows path in double quotes, where a \\U or a \\d
    starts an escape (said where the file has one)."""
    quoted = [found.group(1) for found in re.finditer(r'"([^"\n]*\\[^"\n]*)"', text)]
    if not quoted:
        return ""
    # the file's own, written each way: one that no escape reads (a path written right before it was doubled again;
    # with none, the error is another's)
    path = next((value for value in quoted if INVALID_ESCAPE.search(value)), None)
    if path is None:
        return ""
    return (f"; a Windows path in double quotes needs each \\ doubled (\"{path.replace(chr(92), chr(92) * 2)}\"), or "
            f"/ between folders (\"{path.replace(chr(92), '/')}\"), or (in TOML) single quotes ('{path}')")


# what Windows refuses in a file name (and / and \\ are folders), control characters (a tab) too
NOT_IN_NAMES = '/\\:*?"<>|' + "".join(map(chr, range(32)))


def refused_in_name(name: str) -> str:
    """The characters of `name` that NOT_IN_NAMES holds, once each, shown as `escaped` shows them."""
    return escaped("".join(dict.fromkeys(ch for ch in name if ch in NOT_IN_NAMES)))


def escaped(text: str) -> str:
    """`text` with its control characters as Python escapes them (a tab as \\t), to be seen in a message."""
    return "".join(repr(ch)[1:-1] if ord(ch) < 32 else ch for ch in text)
# names Windows keeps for its devices, with any extension: NUL.safetensors written there is gone
WINDOWS_DEVICES = re.compile(r"(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?", re.IGNORECASE)


def windows_name_problem(name: str) -> str | None:
    """Why a file or folder named so here cannot be opened on Windows (a drive mounted under WSL, a copy to a
    Windows PC, ComfyUI's folders there), in a clause; None where it can."""
    refused = refused_in_name(name)
    if refused:
        return f"{escaped(name)} holds {refused}, which Windows cannot have in a name"
    if WINDOWS_DEVICES.fullmatch(name):
        return f"{name} is a name Windows keeps for a device (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    if name.endswith((".", " ")) and name not in (".", ".."):
        return f"'{name}' ends in a {'dot' if name.endswith('.') else 'space'}, which Windows takes off: it cannot open it"
    return None


def new_folder_problem(flag: str, folder: Path) -> str | None:
    """The line a folder lowvram would make stops at: one of the folders it makes named so Windows cannot open it."""
    made = folder
    try:
        while not made.exists() and made != made.parent:
            if why := windows_name_problem(made.name):
                return f"{flag}: {why}; name {'the folder' if made != folder or not made.suffix else 'it'} another way"
            made = made.parent
    except OSError:  # (a name too long, a loop of links: what the system says, where the folder is checked)
        return None
    return None


def cache_variable() -> tuple[str, str] | None:
    """(the environment variable naming the caches' folder, its value): $LOWVRAM_CACHE_DIR, else $XDG_CACHE_HOME
    (whose lowvram folder holds them); None where neither is set."""
    return next(((name, os.environ[name]) for name in ("LOWVRAM_CACHE_DIR", "XDG_CACHE_HOME") if os.environ.get(name)),
                None)


def windows_output_problem(flag: str, given: str | os.PathLike) -> str | None:
    """A place to write given as a Windows path (C:\\Users\\me\\out, .\\out) where backslashes are no separators:
    it would be written as one file or folder of that whole name, in the current folder."""
    hint = windows_path_hint(given)
    if not hint:
        return None
    drive = re.search(r"^(.*?)([A-Za-z]:)/", str(given))
    where = (f"a file or folder inside {drive.group(1) or './'}{drive.group(2)}" if drive and "\\" not in str(given)
             else "one file or folder of that whole name here")
    return f"{flag}: {given} would be written as {where}{hint}"


# what an archiver, a file system or another trainer adds beside the images (macOS's zip copies of resource forks,
# Windows' bins, a Synology's thumbnails, ai-toolkit's latents), passed over as hidden files are
SYSTEM_FOLDERS = ("__MACOSX", "$RECYCLE.BIN", "System Volume Information", "@eaDir", "_latent_cache")


def local_path(given: str, config_file: Path, levels: int = 1) -> Path:
    """A path as kohya and OneTrainer read it, from the current folder; where nothing is there, from the config or
    dataset file's folder, or up to `levels` - 1 folders above it (OneTrainer's own folder holds its concepts
    folder). A path written with Windows' backslashes (img\\10_cat; a launcher's %~dp0img\\10_cat, made absolute
    from the script's folder) is read with / where only that is there."""
    path = expand_home(given)
    if path.is_absolute() and not path.exists() and (other := slashed(given)) and expand_home(other).exists():
        return expand_home(other)
    if path.is_absolute() or path.exists():
        return path
    parents = absolute_path(config_file).parents  # (a config given as its name alone has only "." above it)
    bases = [parents[level] for level in range(min(levels, len(parents)))]
    found = next((base / path for base in bases if (base / path).exists()), None)
    if found is None and (other := slashed(given)):
        found = local_path(other, config_file, levels)
        found = found if found.exists() else None
    return found or path


def slashed(given: str) -> str | None:
    """A path written with Windows' backslashes (img\\10_cat, /here/img\\10_cat) with / between its folders; None
    for any other (a drive's C:\\x, or \\x at the root of the current Windows drive, which this machine's root would
    only guess)."""
    if os.sep != "/" or "\\" not in given or re.match(r"[A-Za-z]:|\\", given):
        return None
    return given.replace("\\", "/")


def passed_over(path: Path) -> bool:
    """A hidden file or folder, a system's own (`SYSTEM_FOLDERS`), or a lowvram run's output folder (its record in
    it: an --output inside the dataset, whose samples are no training images): nothing of a dataset."""
    return path.name.startswith(".") or path.name in SYSTEM_FOLDERS or is_run_folder(path)


def is_run_folder(path: Path) -> bool:
    """Whether `path` is a lowvram run's output folder (its record in it)."""
    try:
        return (path / RECORD).is_file()
    except OSError:  # (a folder that cannot be read: said where it is read)
        return False


def ignores_case(path: Path) -> bool:
    """Whether the file system holding the file `path` takes names in any case as one (Windows', macOS's): there
    pic.png's Pic.txt and pic.jpg's pic.txt are one caption file."""
    other = path.with_name(path.name.swapcase())
    try:
        return other.name != path.name and os.path.samefile(path, other)
    except OSError:
        return False


def redraws_in_place(console) -> bool:
    """Whether `console` writes to a terminal, where a progress bar redraws in place. FORCE_COLOR (which ipykernel
    sets, and so a notebook's `lowvram` commands inherit it, as CI systems do) makes rich take a pipe for one: its
    colours are welcome there, a bar redrawn into a notebook cell's stored output or a CI log is not. A dumb
    terminal (TERM=dumb: Emacs' shell, some screen readers') takes plain lines: rich draws no live bar on it."""
    isatty = getattr(console.file, "isatty", None)
    if console.is_dumb_terminal:
        return False
    if os.environ.get("JPY_PARENT_PID") or os.environ.get("COLAB_RELEASE_TAG"):  # a notebook's `!lowvram`: a
        return False  # pseudo-terminal, whose every redraw the cell keeps (and Jupyter draws no cursor-up)
    return console.is_terminal and bool(isatty and isatty())


def human_size(size: int) -> str:
    """Bytes in the largest unit that keeps the number at 1 or more, to three digits: '1023 B', '1.50 KiB',
    '45.2 GiB'; a nearly full disk then shows its few MiB instead of '0.00 GiB'."""
    if size < 1024:
        return f"{size} B"
    value, unit = float(size), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f} {unit}"


def free_bytes(folder: Path) -> int:
    folder = Path(folder)
    while not _exists(folder) and folder != folder.parent:  # a write's new folder: its nearest existing parent's disk
        folder = folder.parent  # (a drive that is not there, E:\, is its own parent)
    return shutil.disk_usage(folder).free


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # in a folder that cannot be looked into (another user's): its parent's disk is the one
        return False


KEPT_FREE = 2**20  # what every write leaves free on its disk, for the filesystem's own bookkeeping


def ensure_room(folder: Path, size: int, what: str) -> None:
    """Stop before writing `size` bytes into `folder` if they cannot fit (with room for the filesystem's own
    bookkeeping: 5 % and 1 MiB)."""
    needed = int(size * 1.05) + KEPT_FREE
    free = free_bytes(folder)
    if needed > free:
        raise DiskFull(folder, needed, free, what, kept_free=KEPT_FREE)


def atomic_write(path: Path, write, size: int | None = None, what: str | None = None, durable: bool = True) -> Path:
    """Call `write(tmp_path)`, fsync, then rename over `path`; on failure the old `path` is untouched. With
    `size` (bytes, known beforehand) the free space is checked first. Not `durable`: no fsync, for files a power cut
    may cost but that are checked on reading and made again (the cache's entries), as kohya writes its .npz."""
    path = Path(path)
    what = what or path.name
    if size is not None:
        ensure_room(path.parent, size, what)
    try:
        make_folders(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # read-only, a file where a folder should be, no permission
        blocking = file_in_the_way(path.parent)
        reason = f"{blocking} is a file, not a folder" if blocking else exc.strerror or exc
        refused = LowvramError(f"could not write {path}: {reason}")
        refused.errno = exc.errno  # (what a caller tells a lasting refusal, EACCES, from a passing one by)
        raise refused from None
    os.close(fd)
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        # mkstemp (and safetensors' own writer) leave it owner-only; a ComfyUI server of another user must read it.
        # A file replaced keeps its own permissions (one kept private stays so; a read-only one too, hence last)
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if path.exists()
                 else shared_mode(path.parent, plain_mode(0o666)))
        if os.name == "nt" and path.exists():  # Windows replaces no read-only file (its copy is read-only again)
            os.chmod(path, stat.S_IREAD | stat.S_IWRITE)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # Windows removes no read-only file either
            os.chmod(tmp, stat.S_IREAD | stat.S_IWRITE)
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFull(path.parent, size or 0, free_bytes(path.parent), what, is_size_limit(exc)) from None
        if isinstance(exc, OSError):
            refused = LowvramError(f"could not write {path}: {exc.strerror or exc}")
            refused.errno = exc.errno
            raise refused from None
        raise
    return path


def write_problem(folder: Path) -> str | None:
    """Why no file can be written in `folder` (made with its parents first, as a write would): read-only, a file
    where a folder should be, no permission; None when one can."""
    seen = unwritable(folder)
    if seen:
        return seen
    try:
        make_folders(Path(folder))
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return f"can't write in {folder}: {exc.strerror or exc}"


def unwritable(folder: Path) -> str | None:
    """What `write_problem` would find, as far as it shows without writing anything (a file in the way, a read-only
    file system, no permission on the nearest folder there is): for the first second of a command."""
    try:
        if link := broken_link(folder):
            return f"can't write in {folder}{link}"
        blocking = file_in_the_way(folder)
        if blocking:
            return f"can't write in {folder}: {blocking} is a file, not a folder"
        existing = Path(folder)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"can't write in {folder}: {existing} is on a read-only file system"
    except OSError as exc:  # a folder above it that cannot even be looked into
        return f"can't write in {folder}: {exc.strerror or exc}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"can't write in {folder}: {existing} is not writable (permission denied)"
    return None


def name_length(name: str, windows: bool = os.name == "nt") -> int:
    """A file name's length as its file system counts it against MAX_FILE_NAME: UTF-16 units on Windows (NTFS),
    bytes elsewhere."""
    return len(name.encode("utf-16-le")) // 2 if windows else len(os.fsencode(name))


def lora_output_problem(output: Path, inputs: list[Path], overwrite: bool) -> str | None:
    """`output_problem` for a LoRA file written (resize, merge, extract): a .safetensors name, never a folder (a UI's
    loras/ folder was refused as existing, and its --overwrite failed after the work)."""
    output = expand_home(output)
    try:
        folder = output.is_dir()
    except OSError:  # (a name too long: output_problem says so)
        folder = False
    if folder:
        return f"--output: {output} is a folder; name the LoRA file in it, e.g. {output / 'NAME.safetensors'}"
    if output.suffix.lower() != ".safetensors":  # (a LoRA under a pickle's name would be refused as one, here too)
        named = output.with_suffix(".safetensors") if output.suffix.lower() in PICKLE_SUFFIXES else \
            output.with_name(f"{output.name}.safetensors")  # (mychar_v1.5: its .5 kept)
        return f"--output: {output}: a LoRA is written as .safetensors; name it {named}"
    return output_problem(output, inputs, overwrite)


def output_problem(output: Path, inputs: list[Path], overwrite: bool, flag: str = "--output") -> str | None:
    """Why `output` must not be written, in one line: it is one of the files `inputs` being read (or inside a
    folder being read: a diffusers model's), whatever --overwrite says; or it exists and `overwrite` is off.
    None when it may be written. A name too long to write through a temporary name beside it is refused too."""
    if windows := windows_output_problem(flag, output):
        return windows
    output = expand_home(output)
    if why := windows_name_problem(output.name) or new_folder_problem(flag, output.parent):
        return why if why.startswith(flag) else f"{flag}: {why}; name another"
    size = name_length(output.name)
    if size + TEMPORARY_NAME_EXTRA > MAX_FILE_NAME:
        return (f"{flag}: {output.name[:16]}...{output.name[-12:]} is {size} {NAME_UNITS} long; a file name holds "
                f"{MAX_FILE_NAME} and lowvram writes it through a temporary name {TEMPORARY_NAME_EXTRA} longer, so it "
                f"can be at most {MAX_FILE_NAME - TEMPORARY_NAME_EXTRA}; shorten it")
    try:
        target = output.resolve()
        for path in (expand_home(given) for given in inputs):
            if not path.exists():
                continue
            same = target == path.resolve() or (output.exists() and output.samefile(path))  # a link to it too
            if same or (path.is_dir() and output.exists() and target.is_relative_to(path.resolve())):
                return f"{flag}: {output} is a file being read; name another"
            if path.is_dir() and target.is_relative_to(path.resolve()):  # (a new file in a model being read)
                return f"{flag}: {output} is inside {path}, which is being read; name another"
            if output.is_dir() and path.resolve().is_relative_to(target):  # replacing it would remove the input
                return f"{flag}: {output} is a folder holding {path}, which is being read; name another"
        if output.exists() and not overwrite:
            return f"{flag}: {output} exists; add --overwrite to replace it, or name another"
    except OSError as exc:  # a folder name too long, a loop of links: what the system says
        return f"{flag}: {output}: {exc.strerror or exc}; name another"
    return None


def file_in_the_way(folder: Path) -> Path | None:
    """The file standing where `folder` or one of the folders above it should be, if one does."""
    existing = Path(folder)
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    return None if existing.is_dir() else existing


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or a file-size limit, as the OS says it, or as safetensors' writer words it (its own error)."""
    if isinstance(exc, OSError) and exc.errno in FULL_DISK_ERRNOS:
        return True
    text = str(exc)
    codes = (*FULL_DISK_ERRNOS, *(WINDOWS_DISK_FULL if os.name == "nt" else ()))
    return any(f"os error {code})" in text for code in codes) or "No space left on device" in text


def is_size_limit(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.EFBIG) or f"os error {errno.EFBIG})" in str(exc)


def remove_orphans(folder: Path, older_than: float = 0.0) -> list[Path]:
    """Delete the temporary files that writes killed midway left in `folder` (only names atomic_write makes,
    and only those untouched for `older_than` seconds: another process may be writing the newer ones)."""
    removed = []
    now = time.time()
    for path in Path(folder).glob(".*.tmp"):
        try:
            if TEMPORARY.match(path.name) and path.is_file() and now - path.stat().st_mtime >= older_than:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer finished (or cleaned up) meanwhile
            continue
    return removed


def not_utf8(path: str | os.PathLike, exc: UnicodeDecodeError) -> str:
    """What a text file lowvram reads is, when it is in another encoding (Notepad's ANSI), and the fix."""
    return f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"


def text_of(path: Path) -> str:
    """A text file as Windows editors save it too: UTF-8 with or without Notepad's byte-order mark, or UTF-16 with
    one (PowerShell 5's `>`). OSError, or UnicodeDecodeError for other bytes."""
    raw = Path(path).read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    return raw.decode("utf-8-sig")


def with_plain_modes(folder: Path) -> Path:
    """`folder` and everything under it given the permissions open() and mkdir() give under the umask: the
    libraries writing it (safetensors, save_pretrained) leave files owner-only, which a ComfyUI or AUTOMATIC1111
    server running as another user cannot read."""
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, shared_mode(path.parent, plain_mode(0o777 if path.is_dir() else 0o666), path.is_dir()))
    return folder


def make_folders(folder: Path) -> None:
    """`folder` and the folders above it made where missing. Under a group's shared folder (setgid and writable by
    the group, as a lab's shared cache is made) the new folders are the group's to write in too, whatever this
    user's umask: else the next user of the cache could add nothing to a folder the first one made."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    folder.mkdir(parents=True, exist_ok=True)
    shared = group_shared(existing)
    made = folder
    while shared and made != existing and made != made.parent:
        with contextlib.suppress(OSError):  # (one another user made meanwhile: theirs to set)
            os.chmod(made, made.stat().st_mode & 0o7777 | stat.S_ISGID | stat.S_IRWXG)
        made = made.parent


def group_shared(folder: Path) -> bool:
    """Whether `folder` is a group's shared folder: setgid and writable by the group, as a lab's shared cache or
    output folder is made."""
    try:
        return Path(folder).stat().st_mode & (stat.S_ISGID | stat.S_IWGRP) == stat.S_ISGID | stat.S_IWGRP
    except OSError:
        return False


def cache_sharing_fix(folder: Path) -> str:
    """What lets this user write a cache `folder` that refused them: joining its group, where it is a group's
    shared folder already (the README's lab set-up, its chmod 2775 done: naming that again misled), else sharing
    it so."""
    try:
        group = Path(folder).stat().st_gid
    except OSError:
        group = None
    if group is not None and group_shared(folder) and hasattr(os, "getgroups") and group not in (
            os.getgid(), *os.getgroups()):
        import grp
        import pwd

        user = "USER"
        with contextlib.suppress(KeyError):  # (a user or group of no name: docker run --user 1234)
            group = grp.getgrgid(group).gr_name
        with contextlib.suppress(KeyError):
            user = pwd.getpwuid(os.getuid()).pw_name
        return (f"you are not in its group, {group}: ask to be added (usermod -aG {group} {user}, then log in "
                "again), or give --cache-dir a folder of your own")
    return ("give --cache-dir a folder you can write, or share the cache as a group's folder (chmod 2775, see the "
            "README's Caches)")


def shared_mode(folder: Path, mode: int, of_folder: bool = False) -> int:
    """`mode` for a new file (or folder) in `folder`: in a group's shared folder, the group's to read and write too
    (and a folder setgid, as its parent), whatever the umask: else another user of a lab's shared cache could not mark
    an entry used (`lowvram cache --unused-for` removed entries in use), take its lock or resume a classmate's run."""
    if not group_shared(folder):
        return mode
    return mode | (stat.S_ISGID | stat.S_IRWXG if of_folder else stat.S_IRGRP | stat.S_IWGRP)


def plain_mode(requested: int) -> int:
    """The permissions `open()` (0o666) or `mkdir()` (0o777) gives under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return requested & ~umask


def utf8_text(text: str) -> str:
    """`text` as UTF-8 can hold it: a file name of bytes that are no UTF-8 (a zip from a Japanese Windows, unpacked
    without -O cp932) reaches Python as lone surrogates, which no UTF-8 file or safetensors header takes; its
    bytes become replacement characters."""
    try:
        return text.encode("utf-8").decode()
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # (a surrogate of no escaped byte)
            return text.encode("utf-8", "replace").decode()


def is_utf8(text: str) -> bool:
    """Whether the bytes of `text`, a name as the file system gave it, are UTF-8: under a C locale (LC_ALL=C,
    PYTHONUTF8=0) Python hands UTF-8 names over as lone surrogates too, which `utf8_text` reads again."""
    try:
        text.encode("utf-8", "surrogateescape").decode("utf-8")
        return True
    except UnicodeError:
        return False


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None,
                     what: str | None = None, durable: bool = True) -> Path:
    """Save tensors as safetensors, atomically, after checking they fit (metadata naming files whose names are
    no UTF-8 with `utf8_text`: a run's LoRA was lost to one at its save); `durable` as for `atomic_write`."""
    from safetensors.torch import save_file

    metadata = {key: utf8_text(value) for key, value in metadata.items()} if metadata else metadata
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    size = sum(t.nbytes for t in tensors.values()) + 256 * len(tensors) + len(str(metadata or ""))
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), size, what, durable)


def save_image(image, path: Path, what: str | None = None, parameters: str | None = None) -> Path:
    """A PNG, atomically: a kill mid-save leaves no truncated image. `parameters`: what it was made with, in the
    text chunk where AUTOMATIC1111 keeps it (its PNG Info, Civitai and ComfyUI's loaders read it)."""
    from PIL.PngImagePlugin import PngInfo

    text = PngInfo()
    if parameters:  # (as UTF-8: a C locale's output name crashed a finished run's sample)
        text.add_text("parameters", utf8_text(parameters))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=text), image.width * image.height * 4,
                        what)


def write_text(path: Path, text: str) -> Path:
    text = utf8_text(text)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), len(text.encode()))
