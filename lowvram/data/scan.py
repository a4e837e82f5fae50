"""The dataset scan (`lowvram check-data`, and the start of `train`): every file read once and reported with
what was found and what will be done to it.

Users' folders are messy, so one bad file becomes a skipped record with a reason, never a crash; and nothing
in the folder is ever written. An index kept elsewhere (the cache) lets a rescan skip decoding unchanged files.
Folder rules are kohya's: images in the root count once, `N_name/` repeats N times.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, ImageChops, ImageOps
from rich.console import Console
from rich.progress import Progress
from rich.text import Text

from lowvram.config import (
    CAPTION_SUFFIXES,
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    LABEL_STEMS,
    MASK_SUFFIX,
)
from lowvram.console import counted_progress
from lowvram.data.buckets import Buckets
from lowvram.data.captions import (
    NO_CAPTION_FILE,
    captions_of,
    has_word,
    name_key,
    read_caption_file,
    split_kept_tags,
    wrapped,
)
from lowvram.data.image_files import (
    ALPHA_MODES,
    PIL_FORMATS,
    UNSUPPORTED_SUFFIXES,
    file_facts,
    to_grey,
    to_rgb,
    unsupported_suffix_reason,
)
from lowvram.data.image_metadata import (
    HELD_OUT_SPLITS,
    METADATA_FILES,
    TRAIN_SPLIT,
    described,
    folder_metadata,
    kohya_metadata_note,
    train_split_metadata,
    with_metadata,
)
from lowvram.data.scan_report import ImageRecord, ScanReport
from lowvram.dataset_files.subsets import MAX_REPEATS, REPEAT_FOLDER, folder_label, is_year, repeats_of
from lowvram.errors import LowvramError, shell_line
from lowvram.files import ignores_case, is_run_folder, is_utf8, passed_over, utf8_text, write_text
from lowvram.option_values import caption_extension_problem, caption_template_problem
from lowvram.prompts import TRIGGER_PLACEHOLDER, with_trigger
from lowvram.run_files import run_dataset

SILENT_SUFFIXES = (".txt", ".caption", ".json", ".jsonl", ".toml", ".yaml", ".yml", ".npz", ".npy", ".md", ".csv")
SILENT_NAMES = ("Thumbs.db", "desktop.ini")
MODE_NOTES = {"I;16": "16-bit -> 8-bit RGB", "CMYK": "CMYK -> RGB", "P": "palette -> RGB", "L": "greyscale -> RGB", "LA": "greyscale -> RGB",
              "1": "1-bit -> RGB", "I": "32-bit -> 8-bit RGB", "F": "32-bit float -> 8-bit RGB"}
INDEX_VERSION = 1
UPSCALE_NOTE_FROM = 1.01  # enlarging by under 1% is not worth a word
CROP_NOTE_BELOW = 0.8  # a bucket's crop keeping less of an image (a panorama's) is said; buckets keep most of others
PROGRESS_FROM = 50  # files; fewer scan in a blink
MASK_ASPECT_TOLERANCE = 0.02  # a mask of another shape belongs to another image


@dataclass(frozen=True)
class ScanOptions:
    caption_extension: str = ".txt"  # tried first where it is .txt or .caption, the only one read otherwise
    caption_column: str | None = None  # a metadata.jsonl's caption column (None: the first of CAPTION_COLUMNS)
    caption_template: str = "{trigger}"
    trigger_word: str | None = None
    caption_prefix: str = ""  # written before every caption, as it is (kohya's caption_prefix)
    caption_suffix: str = ""
    background: tuple[int, int, int] = (255, 255, 255)  # what transparency is composited on
    alpha_mask: bool = False  # keep alpha as a loss mask instead of compositing
    small_images: str = "upscale"  # "upscale" (with a note) or "skip"
    min_side: int = 64  # images with a side below this are skipped
    # where Pillow refuses to decode (twice the pixels it warns from): a 108 MP phone photo trains, as in kohya
    max_pixels: int = 2 * 89_478_485
    min_kept_fraction: float = 0.5  # skip images whose crop to the nearest bucket keeps less than this
    masked_loss: bool = False  # an image's <stem>-masklabel.png is its loss mask
    keep_tokens_separator: str = ""  # kohya's: ends the tags a caption keeps in front
    caption_separator: str = ","  # kohya's: what separates a caption's tags
    caption_lines: str = "first"  # a caption file's lines: the first, "each" a caption drawn in turn, or "join" as tags
    wildcards: bool = False  # kohya's {a|b|c}: each combination one of the image's captions
    class_images: bool = False  # regularization images: one without a caption takes its class words, always

    def __post_init__(self):
        if caption_extension_problem(self.caption_extension):
            raise LowvramError(f"--caption-extension: {caption_extension_problem(self.caption_extension)}")
        if self.small_images not in ("upscale", "skip"):
            raise LowvramError(f"--small-images: {self.small_images!r} is not 'upscale' or 'skip'")
        if caption_template_problem(self.caption_template):
            raise LowvramError(f"--caption-template: {caption_template_problem(self.caption_template)}")


class NoUsableImages(LowvramError):
    """Nothing to train on; `.report` still says why each file was skipped, for `check-data` to print."""

    def __init__(self, message: str, report: ScanReport):
        super().__init__(message)
        self.report = report


class ImageFolder(NamedTuple):
    """A folder of training images: its images sit directly in it, each repeated `repeats` times per epoch; `label`
    is the caption of those without a caption file; every caption of it is wrapped in `caption_prefix` and
    `caption_suffix` (a kohya dataset subset's). With `captions` (a kohya fine-tuning subset's metadata: image key,
    its file name without the extension or its path, -> caption), only the images it names are read, and their
    captions come from it."""
    path: Path
    repeats: float
    label: str
    caption_prefix: str = ""
    caption_suffix: str = ""
    captions: dict[str, str] | None = None
    loss_weight: float = 1.0  # scales its images' loss (a OneTrainer concept's)
    resolution: int | None = None  # its images' own resolution, and `buckets` of it (a kohya dataset's)
    buckets: Buckets | None = None
    batch_size: int | None = None  # its images' own batch size (a kohya dataset's)
    # the caption and augmentation options it sets otherwise than the run (a dataset file subset's: option -> value),
    # and the scan options they make (None: the run's)
    settings: tuple[tuple[str, Any], ...] = ()
    options: ScanOptions | None = None
    dataset: int | None = None  # its [[datasets]] entry in a kohya file of several (None: one dataset)
    captions_from: str = "metadata_file"  # the file `captions` come from, as notes name it
    # whether an image without a caption file takes `label` as its caption through the template (a OneTrainer
    # concept's display name does not: OneTrainer trains such an image without a caption)
    label_captions: bool = True


# folders beside the N_name ones that are no concept to train: class images, held-out ones
SPECIAL_FOLDERS = {"reg", "regularization", "class", "val", "valid", "validation", "test", "eval"}
# the names of folders that hold a dataset rather than name what it shows
CONTAINER_NAMES = {"img", "imgs", "image", "images", "pics", "pictures", "photos", "data", "dataset", "datasets",
                   "train", "training", "input", "inputs", "raw", "output", "outputs"}  # (ComfyUI's input/, output/)


def scan_dataset(root: Path, buckets: Buckets, options: ScanOptions = ScanOptions(), index_path: Path | None = None,
                 console: Console | None = None, flag: str = "--data", listing: str | None = None) -> ScanReport:
    """Scan a dataset folder laid out as kohya's: images in the root count once, `N_name/` repeats N times. Raises
    LowvramError when the folder is missing or nothing in it is usable (NoUsableImages, carrying the report; `listing`
    says where its skipped files are listed, by default `lowvram check-data ROOT`)."""
    given = Path(root)
    if not given.is_dir():
        raise LowvramError(f"{flag}: {'not a folder' if given.exists() else 'folder not found'}: {given}")
    if is_run_folder(given):  # (--data and --output mixed up, or the last run's folder given)
        raise LowvramError(f"{flag}: {given} is a lowvram run's output folder, not a dataset; give the folder of the "
                           f"images to train{run_dataset(given)}")
    root = given.resolve()
    try:
        folders, layout_notes = repeat_folders(root, options.caption_column)
    except PermissionError as exc:  # (a shared server's dataset of another user's)
        raise LowvramError(f"{flag}: {given} cannot be read ({exc.strerror}); give a folder you can read, or ask its "
                           "owner to let you (chmod)") from None
    return scan_folders(root, folders, buckets, options, index_path, console, layout_notes,
                        describe=(f"{root} or its N_name subfolders",
                                  listing or f"see `{shell_line('lowvram', 'check-data', given)}`"),
                        flag=flag)


def scan_folders(root: Path, folders: list[ImageFolder], buckets: Buckets, options: ScanOptions = ScanOptions(),
                 index_path: Path | None = None, console: Console | None = None, layout_notes: list[str] | None = None,
                 describe: tuple[str, str] | None = None, elsewhere: tuple[Path, ...] = (), flag: str = "--data"
                 ) -> ScanReport:
    """Read every image of `folders` (all inside `root`, the resolved folder reports name files relative to) once,
    or not at all when the index knows it unchanged, and judge it. `describe`: where the images are, and where the
    reasons each was skipped are listed (`see <the command>`, or `listed above`), for the error (naming `flag`) when
    none is usable (NoUsableImages, carrying the report).
    `layout_notes` (the N_name layout's judgement of the root's subfolders) means the root's subfolders need no
    further word; nor do the folders `elsewhere` (the dataset's other image folders, scanned in another role)."""
    root = Path(root).resolve()
    judged = layout_notes is not None
    # the image folders, not a dataset file's root: that may be the home folder the cache is in too
    for folder in [root] if judged else [Path(f.path).resolve() for f in folders]:
        if index_path is not None and Path(index_path).resolve().is_relative_to(folder):
            raise LowvramError(f"--cache-dir: the cache ({Path(index_path).parents[1]}) is inside the dataset folder "
                               f"{folder}, which lowvram never writes to; choose a cache folder outside it")
    files, listing_notes = _list_files(root, folders, "an N_name folder" if judged else "its image folder", judged,
                                       elsewhere)
    folder_notes = list(layout_notes or []) + listing_notes
    for folder in [] if judged else folders:  # a kohya or OneTrainer file's folder: captions as those tools read them
        held = next((name for name in METADATA_FILES if (Path(folder.path) / name).is_file()), None)
        if held and folder.captions is None:
            folder_notes.append(f"{Path(folder.path) / held}: not read for a dataset file's folder, whose captions "
                                f"come from caption files; --data {folder.path} reads it")
    masked = sum(path.with_name(path.stem + MASK_SUFFIX).is_file() for path, _ in files)
    if masked and not options.masked_loss:
        folder_notes.append(f"{masked} image(s) have a {MASK_SUFFIX} mask (OneTrainer's), unused: --masked-loss "
                            "trains on their white areas only")
    elif files and not masked and options.masked_loss and not options.alpha_mask:  # (a row per file said it alone)
        folder_notes.append(f"--masked-loss: no image has a mask beside it (<image name>{MASK_SUFFIX}), so each trains "
                            "everywhere, as without it")
    old_index = _read_index(index_path)
    new_index = {k: v for k, v in old_index.items() if not Path(k).is_relative_to(root)}  # other datasets' entries
    records: list[ImageRecord] = []
    first_of: dict[str, ImageRecord] = {}  # sha256 -> the first usable copy
    shown = console is not None and len(files) >= PROGRESS_FROM
    with (counted_progress(console, f"scanning {root.name}", transient=True) if shown
          else Progress(disable=True)) as progress, _index_kept_if_stopped(index_path, old_index, new_index):
        task = progress.add_task(f"scanning {root.name}", total=len(files))
        for path, folder in files:
            record = _scan_file(root, path, folder, buckets if folder.buckets is None else folder.buckets,
                                folder.options or options, old_index, new_index)
            if options.masked_loss and record.usable:
                record = _with_mask(record, options, old_index, new_index)
            if record.usable and record.sha256 in first_of:
                earlier = first_of[record.sha256]
                first = earlier.relpath
                # (the note goes on the second name scanned, the link or the file it reaches: the link is named)
                link = path if _through_a_link(path) or not _through_a_link(root / first) else root / first
                duplicate = ("in another subset of the dataset file too: both train, their repeats adding up, as "
                             "in kohya" if os.path.abspath(root / first) == os.path.abspath(path) else
                             f"linked copy of {first}: the same file through a link (both train, their repeats adding "
                             f"up; remove the link, {_shown(link, root)}, not the file)"
                             if _same_file(root / first, path) else _duplicate_note(earlier, record))
                record = replace(record, notes=record.notes + (duplicate,))
            elif record.usable:
                first_of[record.sha256] = record
            records.append(record)
            progress.advance(task)
    if index_path is not None:
        try:
            write_text(Path(index_path), json.dumps({"version": INDEX_VERSION, "files": new_index}))
        except LowvramError as exc:  # only a cache: the scan itself is still good
            if console is not None:
                console.print(Text(f"scan index not saved: {exc}", style="yellow"), soft_wrap=True)  # (a log: one line)
    # (the N_name layout's root: the images in folders it passes over, which "0 skipped" said nothing of)
    passed, more = _passed_over_images(root, folders, elsewhere) if judged else (0, False)
    report = ScanReport(root, records, folder_notes, passed, more)
    if report.usable and not options.class_images and not any(record.caption for record in report.usable):
        # (a folder of photos given as it is: a LoRA of no word that shifts all the model draws, unsaid)
        folder_notes.append("every image trains on an empty caption (no caption file with text, no --trigger-word, "
                            "no N_name folder): the LoRA then changes all the model draws, with no word to call it "
                            "up; give --trigger-word (e.g. ohwx) or a caption file per image")
    if not report.usable:
        where, listing = describe or (str(root), "see `lowvram check-data`")
        if not records:
            message = f"{flag}: no images ({', '.join(IMAGE_SUFFIXES)}) in {where}"
            nested = {option: sub for sub in sorted(root.iterdir()) if judged and sub.is_dir()
                      and (option := nested_option(sub))}
            if "--data" in nested:  # kohya_ss's project folder given, not its img/ folder
                message += "; its N_name folders are a level down: give " + " ".join(
                    f"{option} {folder}" for option, folder in nested.items())
            elif judged and (unnamed := [sub for sub in sorted(root.iterdir()) if sub.is_dir() and not passed_over(sub)
                                         and (not (m := REPEAT_FOLDER.match(sub.name)) or is_year(m))
                                         and _holds_images(sub)]):
                sub = unnamed[0]  # (a beginner's dataset/ohwx_mug/: kohya's layout wants 10_ohwx_mug)
                count = repeats_of(root.name) or (1 if flag == "--reg-data" else 10)
                named = (f"{n_name_for(root, sub.name, count)} (kohya's balance repeats class images to match the "
                         "training images)" if flag == "--reg-data" else
                         f"{n_name_for(root, sub.name, count)} (each image {count} times per epoch)")
                if len(unnamed) == 1:
                    message += (f"; {sub.name}/ holds images but is not named N_name: rename it to {named}, or give "
                                f"{flag} {sub}")
                else:  # (giving one of them would leave the others out: a class, or a concept)
                    names = ", ".join(f"{s.name}/" for s in unnamed[:3]) + (" …" if len(unnamed) > 3 else "")
                    others = ", ".join(n_name_for(root, s.name, count) for s in unnamed[1:3]) + (
                        ", …" if len(unnamed) > 3 else "")
                    message += f"; {names} hold images but are not named N_name: rename each as {named}, {others}"
            parquet = next(root.glob("*.parquet"), None) or next(root.glob("*/*.parquet"), None)
            if parquet:  # a dataset from the Hub in its own format: images inside the file
                message += (f"; {parquet.relative_to(root).as_posix()} is a dataset stored as parquet, which lowvram "
                            "does not read: save its rows as files first (with the datasets library, each row's "
                            "image as NNNNN.png and its caption in NNNNN.txt)")
            left_out = next((note for note in folder_notes if note.startswith("left out ")), None)
            if left_out:  # every image there, none named by its metadata file
                message = f"{flag}: no image in {where} has a row in its metadata file: {left_out}"
        else:
            message = f"{flag}: no usable images in {where}: {len(records)} skipped ({listing})"
        raise NoUsableImages(message, report)
    return report


def _same_file(first: Path, other: Path) -> bool:
    """Whether two names are one file, a link's (a symlinked folder or image): deleting either as a copy would delete
    the one image, or leave a dangling link."""
    try:
        return os.path.samefile(first, other)
    except OSError:
        return False


def _through_a_link(path: Path) -> bool:
    """Whether `path` is reached through a symlink (its own, or a linked folder's above it)."""
    return path.absolute() != path.resolve()


def _shown(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


@contextlib.contextmanager
def _index_kept_if_stopped(index_path: Path | None, old_index: dict, new_index: dict):
    """A scan stopped part way (Ctrl-C in a scan of thousands of camera photos) keeps what it read: the next one
    reads only the rest (the entries it had not reached yet are kept as they were)."""
    try:
        yield
    except KeyboardInterrupt:
        if index_path is not None:
            with contextlib.suppress(LowvramError):
                write_text(Path(index_path), json.dumps({"version": INDEX_VERSION, "files": old_index | new_index}))
        raise


COUNTED_UP_TO = 20_000  # files the counts of passed-over folders look at (a Drive given whole: not all of it)


def images_below(folder: Path, up_to: int = COUNTED_UP_TO) -> int:
    """The images in `folder` and every folder below it (hidden and system folders passed over; masks and
    OneTrainer's label files are no images), counted among its first `up_to` files."""
    return _walk_images(folder, up_to)[0]


def _walk_images(folder: Path, up_to: int) -> tuple[int, int]:
    """(images, files looked at) of `images_below`."""
    count = seen = 0
    for here, subfolders, names in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not passed_over(Path(here) / name)]
        count += sum(1 for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")
                     and not Path(name).stem.lower().endswith(LABEL_STEMS))
        seen += len(names)
        if seen >= up_to:
            break
    return count, seen


def _passed_over_images(root: Path, folders: list[ImageFolder], elsewhere: tuple[Path, ...]) -> tuple[int, bool]:
    """(the images in the subfolders of the root and of its image folders that no image folder is or holds (not
    N_name, 0_name, a year's, nested in one), none of which trains; whether there are more than counted: the
    folders' first COUNTED_UP_TO files, all told, are looked at)."""
    image_folders = {Path(folder.path).resolve() for folder in folders}
    read = image_folders | {Path(path).resolve() for path in elsewhere}
    count, left = 0, COUNTED_UP_TO
    for folder in sorted({root} | image_folders):
        try:
            subfolders = sorted(sub for sub in folder.iterdir() if sub.is_dir() and not passed_over(sub))
        except OSError:
            continue
        for sub in subfolders:
            resolved = sub.resolve()
            if any(path.is_relative_to(resolved) for path in read):  # (it is, or holds, a folder read)
                continue
            if left <= 0:
                return count, True
            images, seen = _walk_images(sub, left)
            count, left = count + images, left - seen
    return count, left <= 0


def _untrained(count: int) -> str:
    """A passed-over folder's images, as its note counts them."""
    return f" ({count} image{'s' * (count != 1)} in it and below do not train)" if count else ""


def _holds_images(folder: Path) -> bool:
    try:
        return any(path.suffix.lower() in IMAGE_SUFFIXES for path in folder.iterdir())
    except OSError:
        return False


def nested_option(folder: Path) -> str | None:
    """Where `folder` holds N_name folders itself (as the img/ and reg/ of kohya_ss's project folder), the option that
    trains them; None otherwise."""
    try:
        holds = any(sub.is_dir() and repeats_of(sub.name) for sub in folder.iterdir())
    except OSError:
        return None
    if not holds:
        return None
    return "--reg-data" if folder.name.lower() in ("reg", "regularization", "class") else "--data"


def _doubled_fix(folder: Path, doubled: list[Path]) -> str:
    """Why caption files are named cat.png.txt or cat.txt.txt, and how to rename them as their images': those of an
    image's name (a downloader's, gallery-dl's) all at once, in a shell here."""
    first = doubled[0]
    sidecars = [path for path in doubled if Path(path.stem).suffix.lower() in IMAGE_SUFFIXES]
    if not sidecars:
        return ("(named where Windows hides the extensions it knows); rename each as its image, "
                f"{Path(first.stem).stem}{first.suffix}")
    said = f"(a downloader's names, or ones made where Windows hides extensions); rename each as its image, " \
           f"{Path(first.stem).stem}{first.suffix}"
    if os.name == "nt":  # (no command of cmd's or PowerShell's is offered: none is run by the tests)
        return said
    endings = " ".join(sorted({f"*{Path(path.stem).suffix}{path.suffix}" for path in sidecars}))
    # (a.png.txt -> a.txt, my.photo.jpg.caption -> my.photo.caption; in a subshell, the user's own stays where it is)
    return f"{said}, those of an image's name all at once: (cd {shell_line(str(folder))} && for f in {endings}; do " \
           "[ ! -e \"$f\" ] || mv -n -- \"$f\" \"${f%.*.*}.${f##*.}\"; done)"


def _duplicate_note(earlier: ImageRecord, record: ImageRecord) -> str:
    """The note on a copy of an image scanned before: which to delete, where their captions differ (a photo and its
    download "(1)" copy, one captioned by hand: "delete one" on the captioned one's row lost the caption)."""
    if earlier.caption == record.caption:
        return f"duplicate of {earlier.relpath} (both train, their repeats adding up; delete one)"
    bare = [copy.relpath for copy in (earlier, record) if any(note.startswith(NO_CAPTION_FILE) for note in copy.notes)]
    which = (f"delete {bare[0]}, which has no caption file" if len(bare) == 1 else
             "delete the one whose caption is not the one you want")
    return (f"duplicate of {earlier.relpath}, under another caption (there '{earlier.caption}'): both train, their "
            f"repeats adding up; {which}")


def n_name_for(root: Path, name: str, repeats: int) -> str:
    """The N_name a folder `name` of images in `root` trains under, as typed in a shell: `repeats`, and in an N_name
    folder of outfits (10_ohwx/casual/) its class words too (10_casual lost the trigger, unsaid)."""
    words = f"{folder_label(root)} " if repeats_of(root.name) and folder_label(root) else ""
    # ("10 zoe", "5-zoe beach": the repeats typed already; not "01 - beach" of numbered folders, nor a date)
    typed = re.fullmatch(r"([1-9]\d*)(?: +|-)([^\W\d_].*)", name)
    if typed and not is_year(typed) and int(typed.group(1)) <= MAX_REPEATS:
        repeats, name = int(typed.group(1)), typed.group(2)
    return shell_line(f"{repeats}_{words}{name}")


def repeat_folders(root: Path, caption_column: str | None = None) -> tuple[list[ImageFolder], list[str]]:
    """The root (once) and its `N_name` subfolders (N times), and notes about the folders passed over; a folder with
    a metadata file (Hugging Face's imagefolder) as the folders of the images it names, with their captions."""
    notes: list[str] = []
    found = folder_metadata(root, caption_column, notes, root) or train_split_metadata(root, caption_column, notes)
    metadata = {root: found} if found else {}
    by_metadata = {image.relative_to(root).parts[0] for image in found.captions} if found else set()
    # (a container's name, kohya_ss's img/, is no caption: its loose images train without one, or with the trigger)
    folders = [ImageFolder(root, 1, utf8_text(root.name), label_captions=root.name.lower() not in CONTAINER_NAMES)]
    left = COUNTED_UP_TO
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not passed_over(p))
    # the repeats a folder left unnamed would take: its siblings' (kohya's folders of one set share theirs)
    usual = next((repeats_of(sub.name) for sub in subfolders if repeats_of(sub.name)), repeats_of(root.name) or 10)
    for sub in subfolders:
        match = REPEAT_FOLDER.match(sub.name)
        try:  # (another user's private folder, lost+found on a mounted disk)
            os.scandir(sub).close()  # (opened, not listed: it is listed once, later)
        except OSError as exc:
            notes.append(f"skipped folder {sub.name}/: can't read it ({exc.strerror or exc})")
            continue
        if sub.name in by_metadata and repeats_of(sub.name) is None and not (match and int(match.group(1)) == 0):
            continue  # (its images the metadata file names train, once each: 2019/ too)
        repeats, year = int(match.group(1)) if match else 0, is_year(match)
        skipped = ""  # (counted only where passed over, COUNTED_UP_TO files all told: a Drive given whole)
        if not (match and 0 < repeats <= MAX_REPEATS and not year):
            images, seen = _walk_images(sub, left) if left > 0 else (0, 0)
            skipped, left = f"skipped folder {sub.name}/{_untrained(images)}", left - seen
        if not match:
            held = next((name for name in METADATA_FILES if (sub / name).is_file()), None)
            split = held and sub.name.lower() in HELD_OUT_SPLITS and (root / TRAIN_SPLIT).is_dir()
            notes.append(f"{skipped}: not named 'N_name' (N = repeats), as kohya's convention needs"
                         + (f"; it holds a {held}, a split held out beside {TRAIN_SPLIT}/: give --validation-data "
                            f"{root / sub.name} to score the run on its images" if split else
                            f"; it holds a {held}: give --data {root / sub.name} to train its images" if held else
                            f"; it holds N_name folders: give {option} {sub} to train them"
                            if (option := nested_option(sub)) else
                            f"; rename it {n_name_for(root, sub.name, usual)} to train it"
                            if images and sub.name.lower() not in SPECIAL_FOLDERS else ""))
        elif repeats > MAX_REPEATS or year:  # (a date, 20240101_trip: an epoch of millions, hours to list; an
            # illustrator's archive of 2019/, 2020/ trained each image 2019 times, as kohya would)
            label = match.group(2) or "name"
            why = "is a year" if year else f"repeats is past {MAX_REPEATS}, a date or a number"
            notes.append(f"{skipped}: {repeats} {why} rather than repeats; name it N_name with N the repeats "
                         f"(10_{label})")
        elif repeats == 0:
            label = match.group(2) or "name"  # (then "no images in reg or its N_name subfolders" alone, beside it)
            notes.append(f"{skipped}: 0 repeats, so none of its images trains; name it 1_{label} to "
                         "train them once per epoch")
            if found:  # nor do the root file's rows bring it back
                found = metadata[root] = found._replace(captions={
                    image: caption for image, caption in found.captions.items() if not image.is_relative_to(sub)})
        else:
            folders.append(ImageFolder(sub, int(match.group(1)), utf8_text(match.group(2) or "")))  # (a label is text)
    loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if loose and len(folders) > 1:  # often a cover or preview image left there: say that it trains
        named = ", ".join(sorted(loose)[:3]) + (", ..." if len(loose) > 3 else "")
        notes.append(f"{len(loose)} image(s) at the top level beside the N_name folders ({named}) train once each per "
                     "epoch; kohya leaves them out: move them out of the dataset folder, or into an N_name folder")
    itself = REPEAT_FOLDER.match(root.name)
    # --data names the N_name folder, not its parent (a year's or a date's, 2019/, is a folder of images as any)
    if len(folders) == 1 and itself and repeats_of(root.name):
        folders = [ImageFolder(root, int(itself.group(1)), utf8_text(itself.group(2) or ""))]
        notes.append(f"{root.name}/ is itself an N_name folder: read as one ({itself.group(1)} repeats), as kohya "
                     "reads it inside the folder it asks for")
    for folder in folders:
        if folder.path != root and (own := folder_metadata(folder.path, caption_column, notes, root)):
            metadata[folder.path] = own
        if folder.path not in metadata and (note := kohya_metadata_note(folder.path, root)):
            notes.append(note)
    notes += [described(found, root) for found in metadata.values()]
    if caption_column and not metadata and not any((folder.path / name).is_file() for folder in folders
                                                   for name in METADATA_FILES):
        # (the diffusers scripts stop at a column their dataset lacks; a file passed over is said so already)
        notes.append(f"--caption-column {caption_column}: no {' or '.join(METADATA_FILES)} in {root} or its N_name "
                     "folders to read it from; the captions are the caption files'")
    return with_metadata(root, folders, metadata, notes), notes


def _list_files(root: Path, folders: list[ImageFolder], container: str, root_judged: bool,
                elsewhere: tuple[Path, ...] = ()) -> tuple[list[tuple[Path, ImageFolder]], list[str]]:
    """(image-like file, its folder) in a stable order, and notes about what was passed over: a folder
    inside an image folder is not read (`container` names where images must sit), unless it is one of `folders`
    itself or `elsewhere`, or the root's subfolders were judged already (`root_judged`: the N_name layout)."""
    notes: list[str] = []
    listed = {folder.path for folder in folders} | set(elsewhere)
    files = []
    for image_folder in folders:
        folder = image_folder.path
        where = "" if folder == root else f"{folder.relative_to(root).as_posix()}/"
        unknown, masks, stems, unlisted, keys, unread, captions = [], [], set(), [], set(), [], []
        named: dict[str, list[str]] = {}  # images by their name without the extension
        try:
            entries = sorted(p for p in folder.iterdir() if not passed_over(p))
        except OSError as exc:
            notes.append(f"skipped folder {where or './'}: can't list it ({exc.strerror or exc})")
            continue
        for path in entries:
            suffix = path.suffix.lower()
            if path.is_dir():
                if path not in listed and not (folder == root and root_judged):
                    inside = images_below(path)
                    count = _untrained(inside)
                    # (a zip unpacked one level deeper than the dataset file's image_dir says)
                    fix = "" if not inside or not (option := nested_option(path)) else (
                        f"; it holds N_name folders: give {option} {path}" if root_judged else
                        "; it holds N_name folders: point the dataset file's image_dir at each of them")
                    notes.append(f"ignored folder {where}{path.name}/{count}: images must sit directly in {container}"
                                 + fix)
            elif path.name.endswith(MASK_SUFFIX):
                masks.append(path.name)
            elif path.stem.lower().endswith(LABEL_STEMS) and suffix in (*IMAGE_SUFFIXES, *UNSUPPORTED_SUFFIXES):
                # a mask of another type or case, a OneTrainer condlabel: no image
                unread.append(path.name)
            elif suffix in IMAGE_SUFFIXES or suffix in UNSUPPORTED_SUFFIXES:
                key = _metadata_key(path, image_folder.captions)
                if image_folder.captions is not None and key is None:
                    unlisted.append(path.name)
                    continue
                files.append((path, image_folder))
                stems.add(path.stem)
                named.setdefault(path.stem.lower() if ignores_case(path) else path.stem, []).append(path.name)
                keys.add(key)
            elif suffix in CAPTION_SUFFIXES:
                captions.append(path)
            elif suffix not in SILENT_SUFFIXES and path.name not in SILENT_NAMES:
                unknown.append(path.name)
        if not stems and not unlisted and not (folder == root and root_judged) and image_folder.captions != {}:
            notes.append(f"no images in {where or './'} ({', '.join(IMAGE_SUFFIXES)}): nothing of it trains")
        if unlisted:
            notes.append(f"left out {len(unlisted)} image(s) in {where or './'} that its {image_folder.captions_from} "
                         f"has no caption for: {', '.join(unlisted[:5])}{' ...' if len(unlisted) > 5 else ''}")
        if image_folder.captions is not None and len(image_folder.captions) > len(keys - {None}):
            nameless = [Path(key).name for key in image_folder.captions if key not in keys]  # (a typo, a moved one)
            notes.append(f"{len(image_folder.captions) - len(keys - {None})} {image_folder.captions_from} entries name "
                         f"no image in {where or './'}: {', '.join(nameless[:5])}{' ...' if len(nameless) > 5 else ''}")
        if unread:
            notes.append(f"ignored {len(unread)} label file(s) in {where or './'}, not images and not read as masks: "
                         f"{', '.join(unread[:5])}{' ...' if len(unread) > 5 else ''} (a mask is read as "
                         f"<image name>{MASK_SUFFIX}, as OneTrainer reads it)")
        orphans = [name for name in masks if name[:-len(MASK_SUFFIX)] not in stems]
        if orphans:
            notes.append(f"ignored {len(orphans)} mask file(s) in {where or './'} without an image of the same name: "
                         f"{', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}")
        # an image renamed away from its caption, a common slip: a caption read by no image beside an image without
        # one, where the others pair (a README.txt in a captioned folder, or in one of template captions, is none)
        read = {name_key(stem) for stem in stems}  # (Cat05.PNG reads cat05.txt: caption_file)
        paired = {name_key(p.stem) for p in captions} & read
        lone = [p.name for p in captions if name_key(p.stem) not in read] if paired and len(paired) < len(stems) \
            and image_folder.captions is None else []
        # cat.txt.txt or cat.png.txt: named where Windows hides the extensions it knows
        doubled = [p for p in captions if name_key(p.stem) not in read and name_key(Path(p.stem).stem) in read
                   and Path(p.stem).suffix.lower() in (*IMAGE_SUFFIXES, *CAPTION_SUFFIXES)]
        if doubled and image_folder.captions is None:
            notes.append(f"{len(doubled)} caption file(s) in {where or './'} have two extensions, read by none: "
                         f"{', '.join(p.name for p in doubled[:5])}{' ...' if len(doubled) > 5 else ''} "
                         f"{_doubled_fix(folder, doubled)}")
        lone = [name for name in lone if name not in {p.name for p in doubled}]
        if lone:
            notes.append(f"{len(lone)} caption file(s) in {where or './'} without an image of the same name, read by "
                         f"none: {', '.join(lone[:5])}{' ...' if len(lone) > 5 else ''} (an image renamed?)")
        # none pairs: one captions.txt of every image's caption, or captions named otherwise (dog1.txt), trained none
        # (where no file of another extension is named as an image either: --caption-extension .tags reads those)
        beside = {name_key(p.stem) for p in entries  # (a caption of another extension; not a latent cache's .npz)
                  if p.suffix.lower() not in (*IMAGE_SUFFIXES, *UNSUPPORTED_SUFFIXES, *SILENT_SUFFIXES)}
        unpaired = [p.name for p in captions if name_key(p.stem) not in read and p not in doubled
                    and p.stem.lower() not in ("readme", "license")] if stems and not paired and not (
            beside & read) and image_folder.captions is None else []
        if unpaired:
            example = min(stems)
            notes.append(f"{len(unpaired)} caption file(s) in {where or './'} named as no image, so no image there "
                         f"has a caption: {', '.join(unpaired[:5])}{' ...' if len(unpaired) > 5 else ''} (each image's "
                         f"caption is the file of its name: {example}.txt, or .caption)")
        flattened = [path.name for path in entries if "\\" in path.name and os.sep == "/"]
        if flattened:  # (PowerShell's Compress-Archive wrote \ in its entries; Python's zipfile keeps them in names)
            notes.append(f"{len(flattened)} name(s) in {where or './'} hold a \\ ({flattened[0]}): a zip made on "
                         "Windows, unpacked with its folders as parts of the names; unpack it with `7z x` (or "
                         "`unzip`), which makes the folders")
        garbled = [path.name for path in entries if not is_utf8(path.name)]
        if garbled:  # (a zip of a Japanese or Chinese Windows, unpacked without its code page)
            notes.append(f"{len(garbled)} name(s) in {where or './'} are not UTF-8: they train, garbled in the LoRA's "
                         "metadata; `unzip -O cp932` (or `convmv -f cp932 -t utf8 -r --notest`) names them right")
        alike = [" and ".join(names) for names in named.values() if len(names) > 1]
        if alike and image_folder.captions is None:  # (a metadata file keys them by path: each its own)
            notes.append(f"{len(alike)} pair(s) of images in {where or './'} of one name read one caption file: "
                         f"{'; '.join(alike[:5])}{' ...' if len(alike) > 5 else ''} (rename one of each to give it "
                         "its own caption)")
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            notes.append(f"ignored {len(unknown)} file(s) of unknown type in {where or './'}: "
                         f"{', '.join(unknown[:5])}{more}")
    return files, notes


def _metadata_key(image: Path, captions: dict[str, str] | None) -> str | None:
    """The key a kohya fine-tuning metadata file knows an image by: its name without the extension, or its path."""
    if captions is None:
        return None
    return next((key for key in (image.stem, str(image), str(image.with_suffix(""))) if key in captions), None)


def _read_index(index_path: Path | None) -> dict[str, dict]:
    """The previous scan's facts per file; a missing or damaged index just means decoding everything again."""
    try:
        data = json.loads(Path(index_path).read_text(encoding="utf-8")) if index_path else {}
        return data["files"] if data.get("version") == INDEX_VERSION and isinstance(data.get("files"), dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _scan_file(root: Path, path: Path, folder: ImageFolder, buckets: Buckets, options: ScanOptions,
               old_index: dict, new_index: dict) -> ImageRecord:
    relpath, label, repeats = path.relative_to(root).as_posix(), folder.label, folder.repeats
    captions, weights, caption_notes, caption_file, own = _caption(path, folder, options)
    (caption, kept), *more = [split_kept_tags(text, options.keep_tokens_separator, options.caption_separator)
                              for text in captions]
    own_caption = split_kept_tags(own, options.keep_tokens_separator, options.caption_separator)[0]
    non_utf8 = (Path(relpath).parent / caption_file.name).as_posix() if caption_file else None
    suffix = path.suffix.lower()
    if suffix in UNSUPPORTED_SUFFIXES:
        reason = unsupported_suffix_reason(path)
        return ImageRecord(path, relpath, label, repeats, False, reason, (), 0, 0, "", False, "", caption, None,
                           non_utf8_caption=non_utf8, loss_weight=folder.loss_weight, resolution=folder.resolution,
                           batch_size=folder.batch_size, kept_tags=kept, more_captions=tuple(more),
                           caption_weights=weights, settings=folder.settings, dataset=folder.dataset,
                           own_caption=own_caption)
    facts = file_facts(path, options.max_pixels, old_index.get(str(path)))
    if facts["size"] >= 0:
        new_index[str(path)] = facts
    width, height, mode = facts["width"], facts["height"], facts["mode"]
    reason, bucket, notes = _judge(facts, suffix, buckets, options)
    if reason is None:
        rotated = ["EXIF rotation applied"] if facts["transposed"] else []
        notes = _mode_notes(mode, facts["has_alpha"], facts["opaquest"], options) + rotated + notes + caption_notes
    return ImageRecord(path, relpath, label, repeats, reason is None, reason, tuple(notes), width, height, mode,
                       facts["has_alpha"], facts["sha256"], caption, bucket, facts["transposed"], non_utf8,
                       loss_weight=folder.loss_weight, resolution=folder.resolution, batch_size=folder.batch_size,
                       kept_tags=kept, more_captions=tuple(more), caption_weights=weights, settings=folder.settings,
                       dataset=folder.dataset, own_caption=own_caption)


def _with_mask(record: ImageRecord, options: ScanOptions, old_index: dict, new_index: dict) -> ImageRecord:
    """A usable image with its mask file, if it has one: unreadable, or of another shape than the image, it is
    skipped with the reason, since training it unmasked is not what was asked."""
    mask = record.path.with_name(record.path.stem + MASK_SUFFIX)
    if not mask.is_file():
        return replace(record, notes=record.notes + ("no mask: trained everywhere",))
    facts = file_facts(mask, options.max_pixels, old_index.get(str(mask)), mask=True)
    if facts["size"] >= 0:
        new_index[str(mask)] = facts
    shape = (facts["width"], facts["height"])
    if facts["error"]:
        reason = f"mask unreadable: {mask.name} is {facts['error']}"
    elif abs(shape[0] * record.height / max(1, shape[1] * record.width) - 1) > MASK_ASPECT_TOLERANCE:
        reason = (f"mask of another shape: {mask.name} is {shape[0]}x{shape[1]}, the image {record.width}x"
                  f"{record.height}; make the mask the image's size")
    elif facts["lightest"] == 0:  # as black as its grey levels go: a mask kept in the alpha channel reads so
        reason = (f"mask all black: nothing of the image would train; white marks what trains, so fix {mask.name} "
                  "(a mask drawn in transparency goes in its grey levels) or delete it")
    else:
        resized = () if shape == (record.width, record.height) else (f"mask resized from {shape[0]}x{shape[1]}",)
        if facts["has_alpha"]:  # (as kohya and OneTrainer read a mask: what is see-through weighs by its grey)
            resized += (f"{mask.name}'s transparency is not read: its grey levels weigh the loss",)
        return replace(record, mask=mask, mask_sha256=facts["sha256"], mask_mode=facts["mode"],
                       notes=record.notes + resized)
    return replace(record, usable=False, reason=reason, bucket=None)


def _judge(facts: dict, suffix: str, buckets: Buckets, options: ScanOptions) -> tuple[str | None, tuple | None, list]:
    """(reason it is skipped or None, bucket, notes) from the facts and this run's options."""
    width, height = facts["width"], facts["height"]
    if facts["error"]:
        return facts["error"], None, []
    if facts["opaquest"] == 0 and options.alpha_mask:
        return ("transparent everywhere: with --alpha-mask nothing of it would train; make what should train "
                "opaque, or delete it"), None, []
    if width * height > options.max_pixels:
        return (f"too large: {width}x{height} = {width * height} pixels, over the limit of {options.max_pixels}; "
                "downscale it"), None, []
    if min(width, height) < options.min_side:
        return f"too small: {width}x{height}, sides must be at least {options.min_side} px; use a larger image", None, []
    placement = buckets.place(width, height)
    if placement.kept_fraction < options.min_kept_fraction:
        wide = width >= height
        extreme = max(buckets.shapes, key=lambda s: s[0] / s[1] if wide else s[1] / s[0])
        ratio = max(width, height) / min(width, height)
        shape = f"{'widest' if wide else 'tallest'} bucket is {extreme[0]}x{extreme[1]}"
        target = "it" if placement.bucket == extreme else f"its bucket {placement.bucket[0]}x{placement.bucket[1]}"
        return (f"extreme aspect ratio: {width}x{height} is {f'{ratio:.1f}:1' if wide else f'1:{ratio:.1f}'} and the "
                f"{shape}: cropping to {target} would keep only {placement.kept_fraction:.0%} of the image; "
                "crop or split it"), None, []
    notes = []
    if placement.upscale > UPSCALE_NOTE_FROM:
        if options.small_images == "skip":
            return (f"needs upscaling: {width}x{height} would be enlarged x{placement.upscale:.1f} to fill its bucket "
                    f"{placement.bucket[0]}x{placement.bucket[1]} (small images = skip)"), None, []
        notes.append(f"upscaled x{placement.upscale:.1f} to fill its bucket")
    if placement.kept_fraction < CROP_NOTE_BELOW and len(buckets.shapes) > 1:  # (one square bucket: every photo's)
        notes.append(f"cropped to its bucket {placement.bucket[0]}x{placement.bucket[1]}, keeping "
                     f"{placement.kept_fraction:.0%} of the image (crop or split it to train all of it)")
    if facts["format"] and facts["format"] not in IMAGE_FORMATS.get(suffix, ()):
        notes.append(f"is a {facts['format']} file despite its {suffix} name")
    if facts.get("frames", 1) > 1:  # (an animated WebP, a TIFF of several pages: decoded, its first frame alone)
        notes.append(f"{facts['frames']} frames (animated, or pages): the first trains")
    return None, placement.bucket, notes


def _mode_notes(mode: str, has_alpha: bool, opaquest: int | None, options: ScanOptions) -> list[str]:
    key = "I;16" if mode.startswith("I;16") else mode
    notes = [MODE_NOTES[key]] if key in MODE_NOTES else [] if mode in ("RGB", "RGBA") else [f"{mode} -> RGB"]
    if has_alpha:
        what = mode if mode in ALPHA_MODES else "transparency"
        colour = {(255, 255, 255): "white", (0, 0, 0): "black"}.get(tuple(options.background),
                                                                     f"rgb{tuple(options.background)}")
        notes.append("alpha kept as loss mask" if options.alpha_mask else f"{what} composited on {colour}")
        if opaquest == 0 and not options.alpha_mask:
            notes.append(f"transparent everywhere: it trains as a plain {colour} image")
    return notes


def _caption(image: Path, folder: ImageFolder, options: ScanOptions
             ) -> tuple[list[str], tuple[float, ...], list[str], Path | None, str]:
    """The folder's caption for it (a metadata file's, a concept's), else the caption file's, else the template:
    its first line, or each line with --caption-lines each, each {a|b} combination with --wildcards; the trigger
    word prepended where missing, and the prefixes and suffixes around each; their chances of being drawn (see
    `captions_of`). Also the caption file when it was not UTF-8 (None when it was, or when there is none)."""
    metadata_key = _metadata_key(image, folder.captions)
    if metadata_key:
        text, non_utf8 = folder.captions[metadata_key] or None, None
        # the diffusers scripts train an empty caption so; the template would be the folder's name here (a Hub
        # snapshot's is a commit hash), but for an N_name folder's, a trigger word's or a template of the user's
        unnamed = not (options.trigger_word or repeats_of(Path(folder.path).name) or options.class_images
                       or options.caption_template != ScanOptions.caption_template)
        if not text:
            notes = [f"empty caption in {folder.captions_from}: "
                     + ("trains without a caption, as the diffusers scripts do" if unnamed else "template used")]
            text = "" if unnamed else None
        else:
            notes = []
    else:
        text, notes, non_utf8 = read_caption_file(image, options.caption_extension)
    weights: tuple[float, ...] = ()
    if text is None:  # (a kohya folder named with the trigger, 10_ohwx dog, keeps its class word as kohya's does;
        # a folder given as --data so named too, as the diffusers scripts' instance folder, and a kohya subset's
        # class_tokens; not a OneTrainer concept's display name)
        label = folder.label if folder.label_captions else ""
        named = options.trigger_word and label and (
            has_word(label.replace("_", " "), options.trigger_word) if repeats_of(Path(folder.path).name)
            else options.trigger_word in label.split(" "))  # (its words: not ohwx_photos, my-ohwx-set, ohwx_v2)
        lines = [options.caption_template.format(trigger=folder.label if named else options.trigger_word or label,
                                                 filename=image.stem.replace("_", " ")).strip()]  # (as SimpleTuner)
    else:
        lines, weights = captions_of(text, options.caption_lines, options.wildcards, notes, options.caption_separator,
                                     tag_file=folder.captions is None)
    if any(TRIGGER_PLACEHOLDER in line for line in lines):  # (a template's too: ai-toolkit's default_caption)
        if not options.trigger_word:
            notes.append(f"{TRIGGER_PLACEHOLDER} (ai-toolkit's trigger word placeholder) left out: no "
                         "--trigger-word says what goes there")
        lines = [with_trigger(line, options.trigger_word, options.caption_separator) for line in lines]
    if options.trigger_word and (text is not None or "{trigger}" not in options.caption_template and lines[0]):
        # (a template's caption lacks it where written without {trigger}; an empty one's trains without a caption)
        joint = ", " if options.caption_separator == "," else f"{options.caption_separator} "  # a tag of its own
        lines = [line if has_word(line, options.trigger_word) else f"{options.trigger_word}{joint}{line}"
                 for line in lines]
    own = lines[0]  # (before every prefix and suffix: what ss_tag_frequency counts, as kohya counts its files')
    for prefix, suffix in ((folder.caption_prefix, folder.caption_suffix), (options.caption_prefix,
                                                                             options.caption_suffix)):
        lines = [wrapped(prefix, line, suffix) for line in lines]
    if text is None:  # what the template made, as it trains (a folder's label or the trigger word: say which)
        notes = [(f"{note}: '{lines[0]}'" if lines[0] else f"{note}: an empty caption") if note.endswith(
            "template used") else note for note in notes]
    return lines, weights, notes, non_utf8, own


def open_training_image(record: ImageRecord, options: ScanOptions = ScanOptions(),
                        bucket: tuple[int, int] | None = None) -> tuple[Image.Image, Image.Image | None]:
    """THE one place an image is decoded for training: upright, 8-bit RGB, alpha composited on the background
    (or returned as an "L" loss mask). A large JPEG may come back reduced (draft mode), never below the size
    that covers `bucket` (by default the record's; an --extra-resolutions placement's is another): resize to the
    placement's `scaled`, and take the original size from the record."""
    bucket = bucket or record.bucket
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the scan checked max_pixels
            with Image.open(record.path, formats=PIL_FORMATS) as im:
                if im.format in ("JPEG", "MPO") and bucket and record.width and record.height:
                    scale = max(bucket[0] / record.width, bucket[1] / record.height)
                    need = (math.ceil(record.width * scale), math.ceil(record.height * scale))
                    if scale <= 0.5:
                        im.draft(im.mode, need if im.size == (record.width, record.height) else need[::-1])
                upright = ImageOps.exif_transpose(im) if record.transposed else im
                image, alpha = to_rgb(upright, options.background, options.alpha_mask)
            if not (options.masked_loss and record.mask):
                return image, alpha
            with Image.open(record.mask, formats=PIL_FORMATS) as im:
                mask = to_grey(ImageOps.exif_transpose(im)).resize(image.size, Image.Resampling.BILINEAR)
            return image, mask if alpha is None else ImageChops.multiply(mask, alpha)
    except Exception as exc:  # noqa: BLE001
        raise LowvramError(f"{record.path}: could not be decoded for training ({exc}); did it or its mask change "
                           "since the scan? Run `lowvram check-data` again") from None
