"""A dataset's folders, as kohya reads them: the root once, each `N_name/` folder N times, others passed over with
a note (and how many images that leaves untrained); and the options a folder's images are read with."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lowvram.config import IMAGE_SUFFIXES, LABEL_STEMS
from lowvram.data.buckets import Buckets
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
from lowvram.dataset_files.subsets import MAX_REPEATS, REPEAT_FOLDER, folder_label, is_year, repeats_of
from lowvram.errors import LowvramError, shell_line
from lowvram.files import passed_over, utf8_text
from lowvram.option_values import caption_extension_problem, caption_template_problem


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


DEFAULT_SCAN_OPTIONS = ScanOptions()  # (frozen: one instance serves every default argument)


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
    # a OneTrainer concept balanced by SAMPLES: (its number, the images it shows per epoch), spread over the images
    # of its folders that train once the scan knows them (`repeats` until then: over every file)
    samples: tuple[int, float] | None = None


# folders beside the N_name ones that are no concept to train: class images, held-out ones
SPECIAL_FOLDERS = {"reg", "regularization", "class", "val", "valid", "validation", "test", "eval"}
# the names of folders that hold a dataset rather than name what it shows
CONTAINER_NAMES = {"img", "imgs", "image", "images", "pics", "pictures", "photos", "data", "dataset", "datasets",
                   "train", "training", "input", "inputs", "raw", "output", "outputs"}  # (ComfyUI's input/, output/)


COUNTED_UP_TO = 20_000  # files the counts of passed-over folders look at (a Drive given whole: not all of it)


def images_below(folder: Path, up_to: int = COUNTED_UP_TO) -> int:
    """The images in `folder` and every folder below it (hidden and system folders passed over; masks and
    OneTrainer's label files are no images), counted among its first `up_to` files."""
    return walk_images(folder, up_to)[0]


def walk_images(folder: Path, up_to: int) -> tuple[int, int]:
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


def passed_over_images(root: Path, folders: list[ImageFolder], elsewhere: tuple[Path, ...]) -> tuple[int, bool]:
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
            images, seen = walk_images(sub, left)
            count, left = count + images, left - seen
    return count, left <= 0


def untrained_images(count: int) -> str:
    """A passed-over folder's images, as its note counts them."""
    return f" ({count} image{'s' * (count != 1)} in it and below do not train)" if count else ""


def holds_images(folder: Path) -> bool:
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
            images, seen = walk_images(sub, left) if left > 0 else (0, 0)
            skipped, left = f"skipped folder {sub.name}/{untrained_images(images)}", left - seen
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
