"""Captions from a folder's metadata file, the layout of Hugging Face's imagefolder datasets and of the diffusers
example scripts' --train_data_dir: metadata.jsonl or metadata.csv, one row per image, its `file_name` (relative to
the folder) and its caption in a column (diffusers' --caption_column, "text" by default)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path, PurePosixPath

from lowvram.errors import LowvramError

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
UNREAD_METADATA_FILES = ("metadata.parquet",)
CAPTION_COLUMNS = ("text", "caption", "prompt")  # tried in this order without --caption-column; "text" is diffusers'
FILE_COLUMN = "file_name"
MAX_METADATA_BYTES = 256 * 2**20


def metadata_file(folder: Path) -> Path | None:
    """The folder's metadata file, if it has one; refuses one lowvram cannot read rather than train without its
    captions."""
    for name in METADATA_FILES:
        if (folder / name).is_file():
            return folder / name
    for name in UNREAD_METADATA_FILES:
        if (folder / name).is_file():
            raise LowvramError(f"{folder / name}: lowvram reads a folder's captions from {' or '.join(METADATA_FILES)}"
                               "; convert it, e.g. pandas.read_parquet(path).to_json('metadata.jsonl', "
                               "orient='records', lines=True)")
    return None


def metadata_captions(metadata: Path, column: str | None) -> tuple[dict[Path, str], str]:
    """Image path (absolute, inside the metadata file's folder or its subfolders) -> caption, and the column read.
    A row without a caption is left out (its image then is, with a note); a list of captions is one per line, as a
    caption file of several lines. Raises LowvramError naming the file and the fix."""
    rows = _rows(metadata)
    columns = list(dict.fromkeys(key for _, row in rows for key in row))
    shown = ", ".join(columns[:12]) or "none"
    if FILE_COLUMN not in columns:
        raise LowvramError(f"{metadata}: no {FILE_COLUMN} column naming each row's image (Hugging Face's imagefolder "
                           f"layout); its columns: {shown}")
    if column is not None and column not in columns:
        raise LowvramError(f"--caption-column: {metadata} has no column {column!r}; its columns: {shown}")
    filled = [name for name in columns if any(_caption_text(row.get(name)) for _, row in rows)]
    if column is not None and column not in filled:
        raise LowvramError(f"--caption-column: {metadata}'s column {column!r} holds no caption; its columns with "
                           f"values: {', '.join(filled[:12]) or 'none'}")
    column = column or next((name for name in CAPTION_COLUMNS if name in filled), None)
    if column is None:
        raise LowvramError(f"{metadata}: no captions in a column named {', '.join(CAPTION_COLUMNS)}; name the one "
                           f"that holds them with --caption-column; its columns: {shown}")
    folder = metadata.parent  # as the scan lists it, so that its images' paths are these keys
    captions: dict[Path, str] = {}
    for line, row in rows:
        name = row.get(FILE_COLUMN)
        if not isinstance(name, str) or not name.strip():
            raise LowvramError(f"{metadata}:{line}: {FILE_COLUMN} {name!r} is not a file name")
        relative = PurePosixPath(name.strip().replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise LowvramError(f"{metadata}:{line}: {FILE_COLUMN} {name!r} is outside {folder}; name the image "
                               "relative to the metadata file's folder")
        text = _caption_text(row.get(column))
        if text:
            captions[folder.joinpath(*relative.parts)] = text
    return captions, column


def _caption_text(value) -> str:
    if isinstance(value, list):
        return "\n".join(line for line in (_caption_text(item) for item in value) if line)
    if value is None or isinstance(value, (dict, bool)):
        return ""
    return str(value).strip()


def _rows(metadata: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a metadata file."""
    try:
        if metadata.stat().st_size > MAX_METADATA_BYTES:
            raise LowvramError(f"{metadata}: over {MAX_METADATA_BYTES >> 20} MiB, not a caption file; move it out of "
                               "the dataset folder")
        text = metadata.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LowvramError(f"{metadata}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
                           ) from None
    except OSError as exc:
        raise LowvramError(f"{metadata}: can't read it ({exc.strerror or exc})") from None
    if metadata.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        return [(reader.line_num, {k: v for k, v in row.items() if k is not None}) for row in reader]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise LowvramError(f"{metadata}:{number}: not JSON ({exc}); each line is one image's "
                               '{"file_name": ..., "text": ...}') from None
        if not isinstance(row, dict):
            raise LowvramError(f"{metadata}:{number}: not a JSON object; each line is one image's "
                               '{"file_name": ..., "text": ...}')
        rows.append((number, row))
    return rows
