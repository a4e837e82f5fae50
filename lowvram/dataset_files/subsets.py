"""What a dataset file describes, whichever trainer wrote it: image folders (subsets) with their repeats, captions
and roles, and the lowvram options its settings set."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowvram.config import IMAGE_SUFFIXES, LABEL_STEMS, fields_by_name
from lowvram.files import passed_over

# kohya's: the repeats, then the label ("10" has none); a Japanese IME's full-width digits and underscore (１０＿キャラ)
# too, which look alike (its rename hint read '10_10＿キャラ')
# (spaces before the underscore too: kohya's int() of "5 " is 5, so "5 _zoe" trains 5 times as "zoe")
REPEAT_FOLDER = re.compile(r"^(\d+)[ \t]*(?:[_\uff3f](.*))?$")
YEARS = (1900, 2099)  # a folder named 2019 or 2019_summer is a year's, not 2019 repeats anyone means
MAX_REPEATS = 10_000  # an N_name folder's: more is a date or a number in the name, not repeats anyone means


def is_year(match: re.Match[str] | None) -> bool:
    """Whether an N_name folder's N (a REPEAT_FOLDER match) is a year (2019, 2019_summer) rather than repeats."""
    return bool(match) and len(match.group(1)) == 4 and YEARS[0] <= int(match.group(1)) <= YEARS[1]


def repeats_of(name: str) -> int | None:
    """The repeats of a folder of that name where it is an N_name folder that trains (N from 1 to MAX_REPEATS, no
    year); None for another (not so named, 0_name, 2019/, a date)."""
    match = REPEAT_FOLDER.match(name)
    if not match or is_year(match) or not 0 < int(match.group(1)) <= MAX_REPEATS:
        return None
    return int(match.group(1))


def images_without_repeats(folder: Path) -> int:
    """How many images a kohya train_data_dir holds itself where it holds no N_name folder (a Civitai or booru
    download unpacked as it is): images kohya never reads, and lowvram trains once per epoch."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    if any(entry.is_dir() and repeats_of(entry.name) for entry in entries):
        return 0
    return sum(entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file() for entry in entries)


def image_folder_holding(dataset: Path, path: Path) -> Path | None:
    """The image folder of a kohya-layout dataset folder whose images a scan of it reads that `path` is or lies in:
    the dataset itself (its top-level images; all of it where it is an N_name folder), or one of its N_name folders;
    None where the scan passes `path` by (a project's other folders). Both resolved."""
    if not path.is_relative_to(dataset):
        return None
    if path == dataset or repeats_of(dataset.name):
        return dataset
    first = dataset / path.relative_to(dataset).parts[0]
    return first if repeats_of(first.name) else None


def images_in(folders: list[Path]) -> list[Path]:
    """The images directly in `folders`, as the scan lists them: not their masks and other label files."""
    return [p for folder in folders for p in sorted(folder.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES and not passed_over(p) and p.is_file()
            and not p.stem.lower().endswith(LABEL_STEMS)]


def image_tree(folder: Path) -> list[Path]:
    """The (resolved) folder and those below it that hold images (kohya's recursive subset, OneTrainer's
    include_subdirectories), the scan's passed-over ones (.git, a run's folder) and what is below them left out;
    [folder] where none holds any."""
    below = [folder, *sorted(p for p in folder.rglob("*") if p.is_dir() and not any(
        passed_over(folder.joinpath(*p.relative_to(folder).parts[:depth + 1]))
        for depth in range(len(p.relative_to(folder).parts))))]
    return [p for p in below if images_in([p])] or [folder]


def folder_label(folder: Path) -> str:
    """A folder's class words, as kohya reads an N_name folder's name: "cat" of "10_cat", else the whole name."""
    match = REPEAT_FOLDER.match(folder.name)
    return (match.group(2) or "") if match and not is_year(match) else folder.name  # (2019/: its name)


@dataclass(frozen=True)
class Subset:
    folder: Path  # absolute
    repeats: float  # per epoch; a fractional part trains that share of the images each epoch
    # the caption of an image without a caption file: class_tokens, else the folder's class words ("cat" of 10_cat)
    label: str
    regularization: bool
    caption_prefix: str = ""  # written around each caption of the subset, as it is
    caption_suffix: str = ""
    captions: dict[str, str] | None = None  # image key (stem or path) -> caption, where the file gives captions
    loss_weight: float = 1.0  # each of its images' loss is scaled by it (OneTrainer's concept loss weight)
    # its images' own square resolution (a kohya dataset's, a OneTrainer concept's override); None: --resolution's
    resolution: int | None = None
    batch_size: int | None = None  # its images' own batch size (a kohya dataset's); None: --batch-size
    # the caption and augmentation options (lowvram's data options: name -> value) it sets otherwise than the first
    # training subset, whose are the run's; its images train with these
    settings: dict[str, Any] | None = None
    dataset: int | None = None  # its [[datasets]] entry in a kohya file of several: reg images balance within it
    label_captions: bool = True  # whether `label` captions an image without a caption file (see ImageFolder's)
    samples: tuple[int, float] | None = None  # see ImageFolder's


@dataclass(frozen=True)
class DatasetFile:
    path: Path
    kind: str  # what read it: "kohya dataset config", "OneTrainer concepts file"
    subsets: tuple[Subset, ...]
    values: dict[str, Any]  # lowvram options its settings set
    notes: tuple[str, ...]
    regularization_kind: str = "regularization"  # what the file calls its regularization subsets
    # what its format takes where the file is silent (option -> (value, the note that says so)): beneath any value
    # of the layer naming it (a kohya config's enable_bucket, as kohya's arguments fill a dataset file's gaps)
    assumed: dict[str, tuple[Any, str]] = field(default_factory=dict)

    def folders(self, regularization: bool = False) -> list[Subset]:
        return [s for s in self.subsets if s.regularization == regularization]

    @property
    def root(self) -> Path:
        """The folder all its image folders are in: reports and caption edits name images relative to it."""
        try:
            return Path(os.path.commonpath([s.folder for s in self.subsets]))
        except ValueError:  # image folders on two drives: no common folder but the drives' own
            return Path(self.subsets[0].folder.anchor)

    @property
    def summary(self) -> str:
        training = len(self.folders())
        regularization = len(self.subsets) - training
        return (f"read as a {self.kind}: {training} image folder{'s' * (training != 1)}"
                + (f", {regularization} {self.regularization_kind}" if regularization else ""))


def settle(each: list[dict[str, Any]], notes: list[str], parts: str, written: list[dict[str, Any]] | None = None,
           names: dict[str, str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's value of each lowvram option, the first part's (put the first training subset first), and the
    options each part sets otherwise (its own). A note names each setting the `parts` (subsets, concepts) give
    differently, as the file writes it: `written` (each part's settings in the file), `names` (option -> the file's
    setting). A value of None is the option's default: left out of the run's values."""
    first = each[0] if each else {}
    # (a part's None is the option's default: its own where the first part sets another value)
    owns = [{key: fields_by_name()[key][1].default if value is None else value for key, value in settings.items()
             if key not in first or value != first[key]} for settings in each]
    for key in dict.fromkeys((names or {}).get(key, key) for own in owns for key in own):
        shown = sorted({_shown(settings.get(key), key if written is None else None) for settings in written or each})
        if len(shown) > 1:  # (written alike, differing by another setting: kohya's keep_tokens of a subset whose
            # tags no shuffle moves)
            notes.append(f"{key}: the {parts} differ ({', '.join(shown)}); each trains its images with its own")
    return {key: value for key, value in first.items() if value is not None}, owns


def _shown(value: Any, option: str | None) -> str:
    """A part's value in the note that says the parts differ: `option`'s default where it is None."""
    if value is None and option:
        default = fields_by_name()[option][1].default
        return "lowvram's default" + (f" {default}" if default is not None else "")
    return "''" if value == "" else str(value)
