"""Captions from a folder's metadata file, the layout of Hugging Face's imagefolder datasets and of the diffusers
example scripts' --train_data_dir: metadata.jsonl or metadata.csv, one row per image, its `file_name` (relative to
the folder) and its caption in a column (diffusers' --caption_column, "text" by default)."""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from lowvram.config import CAPTION_SUFFIXES, IMAGE_SUFFIXES, METADATA_FILES
from lowvram.dataset_files.kohya import kohya_metadata_use
from lowvram.errors import LowvramError

UNREAD_METADATA_FILES = ("metadata.parquet",)
CAPTION_COLUMNS = ("text", "caption", "prompt")  # tried in this order without --caption-column; "text" is diffusers'
FILE_COLUMN = "file_name"
TRAIN_SPLIT = "train"  # where a dataset downloaded from the Hub keeps its training images, as diffusers reads it
HELD_OUT_SPLITS = ("validation", "valid", "val", "test")  # and its held-out ones, beside it
MAX_METADATA_BYTES = 256 * 2**20


class FolderMetadata(NamedTuple):
    file: Path
    captions: dict[Path, str]  # image (inside the file's folder) -> caption; "" where its row has none
    column: str


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


def folder_metadata(folder: Path, column: str | None, notes: list[str], root: Path) -> FolderMetadata | None:
    """The folder's imagefolder captions (None where it has no metadata file, or one of another kind: one without
    a file_name column is passed over with a note, `root` naming where it is, where caption files caption the
    images; refused where it would be their captions)."""
    found = metadata_file(folder)
    if found is None:
        return None
    rows = _rows(found)
    columns = list(dict.fromkeys(key for _, row in rows for key in row))
    if FILE_COLUMN not in columns and {column, *CAPTION_COLUMNS} & set(columns) and (
            naming := _naming_column(folder, rows)):  # (its images, with no caption file, trained on the folder's name)
        raise LowvramError(f"{found}: its {naming!r} column names the images, and Hugging Face's imagefolder reads "
                           f"them from a {FILE_COLUMN} column, which it lacks (its columns: {', '.join(columns[:12])}); "
                           f"rename it {FILE_COLUMN}, or move the file out of the folder")
    if FILE_COLUMN not in columns:
        notes.append(f"{_shown(found, root)}: not read (Hugging Face's imagefolder names each image in a "
                     f"{FILE_COLUMN} column; its columns: {', '.join(columns[:12]) or 'none'})")
        return None
    filled = [name for name in columns if name != FILE_COLUMN and any(_caption_text(row.get(name)) for _, row in rows)]
    if column is None and filled and not set(CAPTION_COLUMNS) & set(filled) and _captioned_by_files(folder, rows):
        # (a downloader's metadata.csv of tags and ratings beside a tagger's .txt files: kohya reads the .txt)
        notes.append(f"{_shown(found, root)}: not read, as no column of it is named {', '.join(CAPTION_COLUMNS)}, and "
                     f"caption files caption its images; to train its captions instead, name their column with "
                     f"--caption-column (its columns with values: {', '.join(filled[:12])})")
        return None
    captions, column, repeated = _captions(found, rows, columns, column)
    if repeated:  # (Hugging Face's imagefolder trains each row as a sample of its own)
        notes.append(f"{_shown(found, root)}: {', '.join(repeated[:3])}{' ...' * (len(repeated) > 3)} in more than "
                     "one row: their captions are read as the lines of one, as a list is (the first trains; "
                     "--caption-lines each draws one each time)")
    return FolderMetadata(found, captions, column)


# beside an image, no caption: kohya's latent cache, a downloader's record
NOT_CAPTIONS = (".npz", ".npy", ".json", ".safetensors", ".pt")


def _captioned_by_files(folder: Path, rows: list[tuple[int, dict]]) -> bool:
    """Whether each image a metadata file's first rows name, that is there, has a caption file beside it (one stray
    .txt beside an imagefolder's images is no captioning; a row of an image deleted since counts for nothing)."""
    images = [image for _, row in rows[:20] if isinstance(name := row.get(FILE_COLUMN), str) and name.strip()
              and ".." not in name and (image := folder / name.strip()).is_file()]
    return bool(images) and all(any(image.with_suffix(suffix).is_file() for suffix in CAPTION_SUFFIXES)
                                for image in images)


def _naming_column(folder: Path, rows: list[tuple[int, dict]]) -> str | None:
    """The column of a metadata file without file_name whose values name images in `folder` that have no caption
    file of any extension beside them (whose captions the file would be); None where there is none."""
    for _, row in rows[:20]:
        for name, value in row.items():
            image = folder / value if isinstance(value, str) and value.strip() and ".." not in value else None
            if image is not None and image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
                beside = [path for path in image.parent.glob(f"{glob.escape(image.stem)}.*") if path.stem == image.stem]
                return None if any(path.suffix.lower() not in (*IMAGE_SUFFIXES, *NOT_CAPTIONS) for path in beside
                                   ) else name
    return None


def with_metadata(root: Path, folders: list, metadata: dict[Path, FolderMetadata], notes: list[str]) -> list:
    """`folders` (scan's ImageFolders) where a metadata file captions them: each as the folders of the images its
    file names, each of those with the captions of its own images (only those are read; the others in them are left
    out with a note). A folder takes its own file's captions, else those of the root's file (`metadata[root]`) for
    the images in it; the root those of its file for the images in no other of `folders`."""
    expanded = []
    others = [folder.path for folder in folders if folder.path != root]
    for folder in folders:
        own = None if folder.path == root else metadata.get(folder.path)
        if own is None and root in metadata:
            found = metadata[root]
            inside = {image: caption for image, caption in found.captions.items() if image.is_relative_to(folder.path)
                      and (folder.path != root or not any(image.is_relative_to(other) for other in others))}
            own = found._replace(captions=inside) if inside or folder.path == root else None
        expanded += [folder] if own is None else _folders_of(folder, own, root, notes)
    return expanded


def described(metadata: FolderMetadata, root: Path) -> str:
    """The note that says where a metadata file's captions come from, and what it overrides."""
    beside = sum(any(image.with_suffix(suffix).is_file() for suffix in CAPTION_SUFFIXES)
                 for image in metadata.captions)
    overridden = f"; its captions are read, not the {beside} caption file(s) beside those images" if beside else ""
    return (f"{_shown(metadata.file, root)}: the captions of {len(metadata.captions)} image(s), from its "
            f"{metadata.column!r} column{overridden}")


def _folders_of(folder, metadata: FolderMetadata, root: Path, notes: list[str]) -> list:
    own: dict[Path, dict[str, str]] = {folder.path: {}}
    missing: set[str] = set()
    for image, caption in metadata.captions.items():
        if not image.parent.is_dir():
            missing.add(image.parent.relative_to(root).as_posix() + "/")
            continue
        own.setdefault(image.parent, {})[str(image)] = caption
        for parent in image.parent.parents:
            if not parent.is_relative_to(folder.path):
                break
            own.setdefault(parent, {})
    if missing:
        notes.append(f"{_shown(metadata.file, root)} names images in folders that are not there: "
                     f"{', '.join(sorted(missing)[:5])}{' ...' if len(missing) > 5 else ''}")
    return [folder._replace(path=path, captions=own[path], captions_from=metadata.file.name) for path in sorted(own)]


# kohya's fine-tuning metadata as it starts: an object of image keys, each an object of its caption or tags
KOHYA_METADATA_START = re.compile(r'\s*\{\s*"[^"]*"\s*:\s*\{[^{}]*"(caption|tags)"\s*:')
KOHYA_METADATA_HEAD = 64 * 2**10


def kohya_metadata_note(folder: Path, root: Path) -> str | None:
    """A note on kohya's fine-tuning metadata file (meta_cap.json, meta_lat.json: its scripts' names) in an image
    folder, whose captions a folder's scan does not read; None where there is none."""
    for path in sorted(folder.glob("meta*.json"))[:3]:
        try:  # (its head alone, at each scan: a meta_lat.json of a large set runs to tens of MB)
            with open(path, "rb") as fh:
                head = fh.read(KOHYA_METADATA_HEAD).decode("utf-8-sig", errors="replace")
        except OSError:
            continue
        if not KOHYA_METADATA_START.match(head):
            continue
        return (f"{_shown(path, root)} holds kohya's fine-tuning captions, which an image folder's scan does not "
                "read (its images train on their caption files, else their folder's name): to train them, "
                + kohya_metadata_use(path, folder))
    return None


def _shown(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _captions(metadata: Path, rows: list[tuple[int, dict]], columns: list[str], column: str | None
              ) -> tuple[dict[Path, str], str, list[str]]:
    """Image path (inside the metadata file's folder or its subfolders) -> caption, the column read, and the
    images named in more than one row. A list of captions is one per line, as a caption file of several lines, and
    so are the rows of one image. Raises LowvramError naming the file and the fix."""
    shown = ", ".join(columns[:12])
    if column is not None and column not in columns:
        raise LowvramError(f"--caption-column: {metadata} has no column {column!r}; its columns: {shown}")
    filled = [name for name in columns if any(_caption_text(row.get(name)) for _, row in rows)]
    if column is not None and column not in filled:
        raise LowvramError(f"--caption-column: {metadata}'s column {column!r} holds no caption; its columns with "
                           f"values: {', '.join(filled[:12]) or 'none'}")
    column = column or next((name for name in CAPTION_COLUMNS if name in filled), None)
    others = [name for name in filled if name != FILE_COLUMN]
    if column is None and others:
        raise LowvramError(f"{metadata}: no captions in a column named {', '.join(CAPTION_COLUMNS)}; name the one "
                           f"that holds them with --caption-column; its columns with values: {', '.join(others[:12])}")
    if column is None:  # no caption in any column: every image takes the template, as with empty caption files
        column = next((name for name in CAPTION_COLUMNS if name in columns), CAPTION_COLUMNS[0])
    folder = metadata.parent  # as the scan lists it, so that its images' paths are these keys
    captions: dict[Path, str] = {}
    repeated: list[str] = []
    for line, row in rows:
        name = row.get(FILE_COLUMN)
        if not isinstance(name, str) or not name.strip():
            raise LowvramError(f"{metadata}:{line}: {FILE_COLUMN} {name!r} is not a file name")
        relative = PurePosixPath(name.strip().replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise LowvramError(f"{metadata}:{line}: {FILE_COLUMN} {name!r} is outside {folder}; name the image "
                               "relative to the metadata file's folder")
        image, caption = folder.joinpath(*relative.parts), _caption_text(row.get(column))
        if image in captions:
            repeated += [relative.as_posix()] * (relative.as_posix() not in repeated)
            caption = "\n".join(line for line in (captions[image], caption) if line)
        captions[image] = caption
    return captions, column, repeated


def _caption_text(value) -> str:
    if isinstance(value, list):
        return "\n".join(line for line in (_caption_text(item) for item in value) if line)
    if value is None or isinstance(value, (dict, bool)) or isinstance(value, float) and not math.isfinite(value):
        return ""  # (a JSON NaN: pandas' missing value)
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


def train_split_metadata(root: Path, column: str | None, notes: list[str]) -> FolderMetadata | None:
    """A dataset downloaded from the Hub: its training images and their metadata file in train/ (the split the
    diffusers scripts train), where the root has no metadata file of its own."""
    split = root / TRAIN_SPLIT
    found = folder_metadata(split, column, notes, root) if split.is_dir() else None
    if found:
        notes.append(f"{TRAIN_SPLIT}/ read as the dataset's training images (Hugging Face's train split, which the "
                     "diffusers scripts train)")
    return found
