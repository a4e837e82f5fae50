"""A dataset uploaded as one zip (the Colab notebook's DATA, a Drive upload): the folder it holds, and unpacking it
beside itself once, again where the zip changes."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import zipfile
import zlib
from datetime import datetime
from pathlib import Path

from lowvram.errors import LowvramError
from lowvram.files import SYSTEM_FOLDERS

UTF8_NAME = 0x800  # the zip entry's flag that its name is UTF-8; without it, zipfile reads the name as cp437
# kana, CJK punctuation, kanji, full- and half-width forms (１０_ｷｬﾗ): what cp932 names hold
JAPANESE = re.compile("[\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef]+")


def names_encoding(archive: zipfile.ZipFile) -> str | None:
    """The code page a zip's unflagged names were written in where it is not the cp437 zipfile reads them in.
    Windows' "Compressed folder" writes the system's code page without saying which: a Japanese Windows' cp932
    (キャラ学習 read as âLâââëèwÅK: a folder's label, and so the captions of its images), or UTF-8 unflagged. Each
    unflagged name must read so (a Western Windows' naïve in cp850 reads as na久e in cp932, alone), and for cp932
    be Japanese letters with a word of two at least somewhere."""
    raw = [name for name in map(_unread_bytes, archive.infolist()) if name]
    if not raw:
        return None
    for encoding in ("utf-8", "cp932"):
        try:
            names = [name.decode(encoding) for name in raw]
        except UnicodeDecodeError:
            continue
        if encoding == "utf-8" or all(JAPANESE.fullmatch(run) for name in names
                                      for run in re.findall(r"[^\x00-\x7f]+", name)) and any(
                len(run) > 1 for name in names for run in JAPANESE.findall(name)):
            return encoding
    return None


def member_name(member: zipfile.ZipInfo, encoding: str | None) -> str:
    """An entry's name as the machine that zipped it wrote it (`encoding`: `names_encoding`'s), with / between
    folders: Windows PowerShell 5's Compress-Archive wrote \\ there, which zipfile keeps in a name (one flat file
    `a\\5_cat\\x.png`)."""
    raw = _unread_bytes(member) if encoding else None
    return (raw.decode(encoding, errors="replace") if raw else member.filename).replace("\\", "/")


def _unread_bytes(member: zipfile.ZipInfo) -> bytes | None:
    """The bytes of a name zipfile read as cp437 (unflagged, not ASCII), as written; None for any other: a flagged
    one, or one zipfile took from Info-ZIP's Unicode path field (Python 3.12+: its name is no longer the cp437 one,
    which keeps the bytes \\ in a cp932 letter that zipfile turns into / on Windows)."""
    original = member.orig_filename
    if member.flag_bits & UTF8_NAME or original.isascii() or member.filename not in (original, original.replace(
            "\\", "/")):
        return None
    try:
        return original.encode("cp437")
    except UnicodeEncodeError:
        return None


def name_encoding(path: Path) -> str | None:
    """`names_encoding` of the zip at `path` (None where it cannot be read)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return names_encoding(archive)
    except (OSError, zipfile.BadZipFile):
        return None


def _names(archive: zipfile.ZipFile) -> list[str]:
    """Its entries' names as `member_name` reads them."""
    encoding = names_encoding(archive)
    return [name for name in (member_name(member, encoding) for member in archive.infolist()) if name.strip("/")]


def windows_powershell_zip(path: Path) -> bool:
    r"""Whether the zip names its folders with \ (Windows PowerShell 5's Compress-Archive), which `python -m
    zipfile -e` keeps in flat files' names."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("\\" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def zip_folder(path: Path) -> str | None:
    """The one folder a zip holds everything in, if it does (a folder compressed as itself); None otherwise."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = _names(archive)
    except (OSError, zipfile.BadZipFile):
        return None
    tops = {name.split("/")[0] for name in names} - set(SYSTEM_FOLDERS)  # (macOS' __MACOSX beside it)
    return tops.pop() if len(tops) == 1 and any("/" in name.strip("/") for name in names) else None


def _stamp(archive: Path, digest: str = "") -> str:
    """What tells one upload of the zip from the next: its size and modification time, and (written when it is
    unpacked) its content's hash, which tells the same bytes touched or uploaded again from a new upload."""
    status = archive.stat()
    return f"{status.st_size} {status.st_mtime_ns} {digest}".strip() + "\n"


def _same_upload(done: str | None, archive: Path) -> bool:
    """Whether the stamp `done` is of this zip: the same size and time, or the same bytes (a re-upload of the same
    file, a network share's time drift: unpacked anew, each kept a copy of the dataset beside it)."""
    if done is None or len(done.split()) < 2:  # (none, or one a disconnect cut short)
        return False
    size, time_ns, *digest = done.split()
    status = archive.stat()
    if (size, time_ns) == (str(status.st_size), str(status.st_mtime_ns)):
        return True
    return size == str(status.st_size) and digest == [_digest(archive)]


def _digest(archive: Path) -> str:
    """The zip's sha256, read once while it stays as it is (a matched upload's stamp is rewritten with it)."""
    status = archive.stat()
    return _file_digest(str(archive), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, _size: int, _changed: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def unpack_dataset_zip(archive: Path) -> tuple[Path, str]:
    """Unpack `archive` into the folder of its name beside it (where a reconnected session finds it), unless that
    holds this very upload already; returns the folder that trains (the one folder inside, where the zip holds
    its folder itself) and what was done, in words. The unpacking goes to another name first, so a disconnect
    midway leaves no half dataset; a folder there that was not unpacked from it is kept, moved aside."""
    archive = Path(archive)
    target = archive.with_suffix("")
    stamp = target.with_name(f".{target.name}.unpacked")  # (beside it: inside, it would be one more file to scan)
    try:
        current = _stamp(archive)
        done = stamp.read_text() if stamp.is_file() else None
    except OSError as exc:
        raise LowvramError(f"DATA: {archive} cannot be read ({exc.strerror or exc})") from None
    inside = zip_folder(archive)
    trains = target / inside if inside else target
    if target.is_dir() and (_same_upload(done, archive) or done is None and
                            target.stat().st_mtime >= archive.stat().st_mtime):
        if done is None or done.split()[:2] != current.split():  # (an earlier notebook's unpacking, after the zip
            stamp.write_text(_stamp(archive, _digest(archive)))  # was uploaded: this upload's; the same bytes again)
        return trains, f"{archive} was unpacked into {target} already"
    partial = target.with_name(target.name + ".unpacking")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as opened:
            encoding = names_encoding(opened)
            for member in opened.infolist():
                member.filename = member_name(member, encoding)
                opened.extract(member, partial)  # (zipfile drops a name's .. and drive: nothing lands outside)
    except (zipfile.BadZipFile, zlib.error) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise LowvramError(f"DATA: {archive} is not a readable zip ({exc}); upload it again") from None
    except OSError as exc:  # (a full Drive: nothing half-unpacked is left to train)
        shutil.rmtree(partial, ignore_errors=True)
        raise LowvramError(f"DATA: {archive} could not be unpacked beside it ({exc.strerror or exc}); free space "
                           "there, then run this again") from None
    said = f"{archive} unpacked into {target}"
    if target.is_dir():  # kept, moved aside: captions written or edited in it since would be lost with it
        kept = target.with_name(f"{target.name}.before-{datetime.now():%Y%m%d-%H%M%S-%f}")  # (two in a second)
        target.rename(kept)
        said = (f"{archive} changed since it was unpacked: unpacked anew into {target} (the folder of the earlier "
                f"one is kept as {kept}; delete it once nothing in it is needed)" if done is not None else
                f"{archive} unpacked anew into {target} (the folder there before is kept as {kept})")
    partial.rename(target)
    stamp.write_text(_stamp(archive, _digest(archive)))
    return trains, said
