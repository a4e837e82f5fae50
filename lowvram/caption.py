"""`lowvram caption DIR`: a caption file for every image that lacks one, written by a captioning model the user
names. Two kinds, told apart by the model's files:

- a tagger in the WD14 layout (`model.onnx` + `selected_tags.csv`, as SmilingWolf's taggers ship), run by
  onnxruntime: comma-separated tags above a threshold, character tags first, then the most confident;
- an image-to-text model that transformers' AutoModelForImageTextToText loads (BLIP, GIT, BLIP-2, Florence-2):
  a sentence.

The trigger word, when given, comes first. The dataset folder gains the new caption files and nothing else:
models are cached by huggingface_hub, the captions `--overwrite` replaces are kept in lowvram's cache, and each
caption is written atomically as soon as its batch is done, so an interrupted run keeps what it wrote and a rerun
goes on from there. Images are decoded by the dataset scan, so a file that training would skip is skipped here
with the same reason.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import re
import shutil
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from lowvram.config import CAPTION_SUFFIXES, option
from lowvram.data.captions import (
    LEGACY_NAMES,
    MAX_CAPTION_BYTES,
    caption_file,
    decode_caption,
    has_word,
    read_caption_text,
    trained_caption_file,
)
from lowvram.dataset_files import is_dataset_file, read_dataset
from lowvram.errors import LowvramError, first_line, shell_line
from lowvram.files import (
    expand_home,
    file_in_the_way,
    human_size,
    ignores_case,
    is_disk_full,
    make_folders,
    redraws_in_place,
    unwritable,
)
from lowvram.hardware import Hardware, gib
from lowvram.plan.captioner import CaptionerEstimate, estimate_captioner
from lowvram.resolve import REPLACED_CAPTIONS

if TYPE_CHECKING:
    from rich.console import Console

TAGGER_FILES = ("model.onnx", "selected_tags.csv")
IMAGE_TO_TEXT_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]  # configs, tokenizers, weights
RATING, GENERAL, CHARACTER = 9, 0, 4  # selected_tags.csv categories
CAPTION_EXTENSION_DEFAULT = ".txt"
SCAN_RESOLUTION = 1024  # the scan only decodes here; buckets at SDXL's size keep every image training could use


@dataclass(frozen=True)
class CaptionConfig:
    """`lowvram caption`'s options (the CLI's flags and the UI's form are made from these fields)."""

    data: str | None = option(None, "Dataset folder (or a kohya dataset .toml or OneTrainer concepts .json: its "
                              "image folders, is_reg ones left out): its images without a caption file get one.",
                              metavar="DIR")
    caption_model: str | None = option(
        None, "Captioning model: a hub id or a local folder. A WD14-style tagger (model.onnx + selected_tags.csv, "
        "e.g. SmilingWolf/wd-swinv2-tagger-v3) writes tags; an image-to-text model transformers loads (e.g. "
        "Salesforce/blip-image-captioning-large, microsoft/git-large-coco) writes a sentence.", metavar="MODEL")
    trigger_word: str | None = option(None, "Word written first in every new caption.")
    overwrite: bool = option(False, "Caption every image, replacing existing captions (the old ones are kept in "
                             "lowvram's cache).")
    append: bool = option(False, "Caption the images that have a caption too, adding at its end the tags it lacks "
                          "(kohya's --append_tags; the old captions are kept in lowvram's cache).")
    caption_extension: str = option(CAPTION_EXTENSION_DEFAULT, "Extension of the caption files written (an image's "
                                    "existing caption file is written in place, whatever its extension; a kohya "
                                    "dataset file's caption_extension where this is not given).",
                                    choices=CAPTION_SUFFIXES)
    caption_column: str | None = option(None, "Column of a folder's metadata.jsonl or metadata.csv that holds its "
                                        "captions, as train's --caption-column: the images it captions are left "
                                        "alone.", metavar="NAME")
    threshold: float = option(0.35, "Tagger: lowest confidence of a general tag.", metavar="P")
    character_threshold: float = option(0.85, "Tagger: lowest confidence of a character tag.", metavar="P")
    exclude_tags: tuple[str, ...] = option((), "Tagger: a tag never written (repeatable, or several separated by "
                                           "commas, as kohya's --undesired_tags).", metavar="TAG")
    keep_underscores: bool = option(False, "Tagger: keep the underscores of tags (long_hair) instead of spaces.")
    prompt: str | None = option(None, "Image-to-text: text the caption continues (BLIP: 'a photo of'; Florence-2 "
                                "needs a task such as '<DETAILED_CAPTION>').")
    max_length: int = option(40, "Image-to-text: most tokens per caption.", metavar="N")
    batch_size: int = option(8, "Images captioned at once.", metavar="N")
    device: str = option("auto", "Where the model runs: auto (the GPU when the plan says it fits), cuda or cpu.",
                         choices=("auto", "cuda", "cpu"))

    def problems(self) -> list[str]:
        found = []
        folder = expand_home(self.data or "")
        if not self.data:
            found.append("DIR: name the dataset folder to caption")
        elif not folder.is_dir() and not is_dataset_file(folder):
            found.append(f"DIR: {'not a folder' if folder.exists() else 'folder not found'}: {folder}")
        if not self.caption_model:
            found.append("--caption-model: name a captioning model (a hub id or a local folder), e.g. "
                         "SmilingWolf/wd-swinv2-tagger-v3 or Salesforce/blip-image-captioning-large")
        for flag, value in (("threshold", self.threshold), ("character-threshold", self.character_threshold)):
            if not 0 < value <= 1:
                found.append(f"--{flag}: {value} is not a confidence in (0, 1]")
        for flag, value in (("max-length", self.max_length), ("batch-size", self.batch_size)):
            if value < 1:
                found.append(f"--{flag}: must be at least 1, not {value}")
        if self.append and self.overwrite:
            found.append("--append: --overwrite replaces the captions instead of adding to them; give one of the two")
        return found


@dataclass
class CaptionReport:
    written: list[str] = field(default_factory=list)  # relative paths of the caption files written
    kept: list[str] = field(default_factory=list)  # images whose existing caption was left alone
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    notes: list[str] = field(default_factory=list)  # folders passed over, options the model does not read
    backup: Path | None = None  # where the captions --overwrite replaced were kept
    device: str = "cpu"


def caption_dataset(config: CaptionConfig, hardware: Hardware, cache_dir: Path, console: Console | None = None,
                    dry_run: bool = False) -> CaptionReport:
    """Caption the images of `config.data` that lack a caption (all of them with --overwrite)."""
    from rich.progress import Progress

    from lowvram.console import Console
    from lowvram.data.scan import open_training_image
    from lowvram.files import write_text

    problems = config.problems()
    if problems:
        raise LowvramError("\n".join(problems))
    console = console or Console()
    report = CaptionReport()
    root, todo = _images_to_caption(expand_home(config.data), config, report)
    model = locate_model(config.caption_model)
    report.notes += _unread_options(config, model.kind)
    estimate = estimate_captioner(model.weight_files, config.batch_size, runs_in_half=model.kind != "tagger")
    report.device = _choose_device(config.device, estimate, hardware, console)
    console.print(f"{len(todo)} image(s) to caption, {len(report.kept)} already captioned, {len(report.skipped)} "
                  f"skipped; {model.kind} {config.caption_model} on the {'GPU' if report.device == 'cuda' else 'CPU'}")
    # before the model loads (and as a dry run's answer): a dataset folder the captions cannot go into (a lab's
    # read-only share) stopped the run at its first caption, a backup of the captions made
    blocked = sorted(filter(None, map(unwritable, {target.parent for _, target in todo})))  # (each folder once)
    if blocked:
        raise LowvramError(f"{blocked[0]}{f' (and {len(blocked) - 1} more folders)' if len(blocked) > 1 else ''}: "
                           "captions are written beside their images; caption a copy of the dataset you can write "
                           "in, or ask its owner")
    if dry_run:  # what a run would do, the model unloaded
        console.print(f"the captioner needs about {estimate.describe()} on a GPU")
        for record, target in todo:
            console.print(f"  {record.relpath} -> {target.name}", soft_wrap=True)
    if dry_run or not todo:
        return report
    if config.overwrite or config.append:  # before the model loads: a cache that cannot keep the captions
        # replaced stops it first
        report.backup = _claim_new_folder(cache_dir / REPLACED_CAPTIONS /
                                          f"{root.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        captioner = model.load(report.device, config)
        converted: list[tuple[str, str]] = []  # (caption, code page) of the legacy ones --append writes as UTF-8
        with Progress(console=console, transient=True, disable=not redraws_in_place(console)) as progress:
            task = progress.add_task("captioning", total=len(todo))
            for start in range(0, len(todo), config.batch_size):
                batch = todo[start:start + config.batch_size]
                images = [open_training_image(record)[0] for record, _ in batch]
                for (record, target), text in zip(batch, captioner(images), strict=True):
                    caption = ", ".join(part for part in (config.trigger_word, text.strip()) if part)
                    if config.append and caption:
                        old, read_as = read_caption_text(target)
                        caption = _appended(old, caption, config.trigger_word)
                        if caption is not None and read_as in LEGACY_NAMES:
                            converted.append((target.relative_to(root.resolve()).as_posix(), read_as))
                        if caption is None:  # it held every tag already
                            report.kept.append(record.relpath)
                            continue
                    if not caption:
                        report.skipped.append((record.relpath, "no tag reached --threshold or --character-threshold"
                                               if model.kind == "tagger" else "the model gave no caption"))
                        continue
                    _keep_old_caption(target, root.resolve(), report.backup)
                    write_text(target, caption + "\n")
                    report.written.append(target.relative_to(root.resolve()).as_posix())
                progress.advance(task, len(batch))
        if converted:
            report.notes.append(f"{len(converted)} caption(s) not in UTF-8 ({converted[0][0]} read as "
                                f"{converted[0][1]}) written back as UTF-8, as training reads them; the originals are "
                                "kept with the replaced captions")
    except BaseException:  # Ctrl-C, a full disk, a model error: what was written, and where the originals went
        if report.written:
            kept = f"; the captions it replaced are kept in {report.backup}" if _holds_files(report.backup) else ""
            console.print(f"stopped after writing {len(report.written)} caption(s){kept}", soft_wrap=True)
        raise
    finally:
        with contextlib.suppress(OSError):  # a folder removed meanwhile: nothing to tidy
            if report.backup and not _holds_files(report.backup):  # no caption was replaced (a copy that failed
                shutil.rmtree(report.backup)  # may have made its subfolder)
                report.backup = None
    return report


def _unread_options(config: CaptionConfig, kind: str) -> list[str]:
    """A note naming the options given that the kind of model found does not read (a tagger has no prompt)."""
    theirs = {"tagger": ("prompt", "max_length"),
              "image-to-text": ("threshold", "character_threshold", "exclude_tags", "keep_underscores")}[kind]
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(CaptionConfig)}
    given = [f"--{name.replace('_', '-')}" for name in theirs if getattr(config, name) != defaults[name]]
    if not given:
        return []
    readers = "image-to-text models" if kind == "tagger" else "taggers"
    note = (f"{', '.join(given)}: not read by {'a tagger' if kind == 'tagger' else 'an image-to-text model'} "
            f"({readers} read {'them' if len(given) > 1 else 'it'})")
    return [note]


def _images_to_caption(data: Path, config: CaptionConfig, report: CaptionReport) -> tuple[Path, list]:
    """The folder the images are named relative to, and (scan record, caption file to write) for each usable image
    that needs a caption."""
    from lowvram.config import IMAGE_SUFFIXES
    from lowvram.data.buckets import default_buckets
    from lowvram.data.folders import ImageFolder, ScanOptions, nested_option, repeat_folders
    from lowvram.data.scan import NoUsableImages, scan_dataset, scan_folders

    dataset = read_dataset(data) if is_dataset_file(data) else None
    extension = config.caption_extension
    own = dataset.values.get("caption_extension") if dataset else None
    if own in CAPTION_SUFFIXES and extension == CAPTION_EXTENSION_DEFAULT:  # a kohya dataset file's own, which
        extension = own  # kohya reads (its --caption-extension given: that one)
    buckets, options = default_buckets(SCAN_RESOLUTION), ScanOptions(caption_extension=extension,
                                                                     caption_column=config.caption_column)
    root = dataset.root if dataset else data.resolve()
    by_metadata = set() if dataset or not root.is_dir() else {  # an imagefolder's metadata file captions them
        folder.path for folder in repeat_folders(root, config.caption_column)[0] if folder.captions is not None}
    try:
        if dataset:
            folders = [ImageFolder(s.folder, s.repeats, s.label) for s in dataset.folders()
                       if s.captions is None]  # a fine-tuning subset is captioned by its metadata file
            scan = scan_folders(root, folders, buckets, options)
        else:
            scan = scan_dataset(root, buckets, options)
    except NoUsableImages as exc:
        scan = exc.report
    scanned = scan.records
    # (folders the scan passes by: a year's, 2019/, was left uncaptioned without a word)
    report.notes += [note for note in scan.folder_notes if note.startswith(("ignored folder", "skipped folder"))]
    if not scanned:
        where = f"the image folders of {data}" if dataset else f"{root} or its N_name subfolders"
        below = [] if dataset else [sub for sub in sorted(root.iterdir())  # (regularization images keep their
                                    if sub.is_dir() and nested_option(sub) == "--data"]  # class-word captions)
        down = f"; its N_name folders are a level down: caption {' and '.join(map(str, below))}" if below else ""
        raise LowvramError(f"DIR: no images ({', '.join(IMAGE_SUFFIXES)}) in {where}{down}")
    todo, untriggered = [], []
    for record in scanned:
        if not record.usable:
            report.skipped.append((record.relpath, record.reason or "unusable"))
            continue
        existing = [found for suffix in dict.fromkeys((extension, *CAPTION_SUFFIXES))
                    if (found := caption_file(record.path, suffix))]  # in any case: training reads 003.TXT too
        trained = trained_caption_file(record.path, extension)  # (an empty .txt beside the .caption that trains:
        existing = sorted(existing, key=lambda found: found != trained)  # tags written there replaced it)
        if record.path.parent in by_metadata:
            report.kept.append(record.relpath)
            continue
        state, why = _caption_state(existing[0]) if existing else (EMPTY, "")
        if state == LOCKED or state == UNREAD and not config.overwrite:
            report.skipped.append((record.relpath, f"{existing[0].name} {why}"))
            continue
        if state == TEXT and not (config.overwrite or config.append):
            report.kept.append(record.relpath)
            if config.trigger_word and not has_word(record.caption, config.trigger_word):
                untriggered.append(record.relpath)
            continue
        target = existing[0] if existing else record.path.with_suffix(extension)
        if not existing and os.path.lexists(target):  # a folder or a broken link: nothing to write over
            taken = f"{target.name} is not a file (a folder or a broken link) where its caption goes: left as it is"
            report.skipped.append((record.relpath, taken + "; rename it"))
            continue
        todo.append((record, target))
    if untriggered:  # (the option writes it into new captions only)
        word = shell_line(config.trigger_word)
        report.notes.append(f"{len(untriggered)} of the {len(report.kept)} caption(s) kept lack the trigger word "
                            f"'{config.trigger_word}' (e.g. {untriggered[0]}'s): `lowvram train --trigger-word {word}` "
                            "puts it first in each caption that lacks it, or --overwrite captions them anew")
    # pic.png and pic.jpg read one pic.txt: captioning both writes one's tags over the other's (and over a caption
    # --overwrite kept away first), so neither is captioned
    def key(record, target) -> str:
        return str(target).lower() if ignores_case(record.path) else str(target)

    sharing: dict[str, list[str]] = {}
    for record, target in todo:
        sharing.setdefault(key(record, target), []).append(record.path.name)
    for record, target in [(record, target) for record, target in todo if len(sharing[key(record, target)]) > 1]:
        names = " and ".join(sharing[key(record, target)])
        why = f"{names} share one caption file, {target.name}: rename one so that each has its own"
        report.skipped.append((record.relpath, why))
        todo.remove((record, target))
    return root, todo


TEXT, EMPTY, UNREAD, LOCKED = "text", "empty", "unread", "locked"  # a caption file as _caption_state finds it


def _caption_state(path: Path) -> tuple[str, str]:
    """What an existing caption file holds, and for a file that is the user's though training reads no caption
    from it (UNREAD: over a caption's size, or bytes that are no text it reads, as UTF-16 CJK without a byte-order
    mark; LOCKED: it cannot be opened) why, and what to do."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CAPTION_BYTES + 1)
    except FileNotFoundError:
        return EMPTY, ""
    except OSError as exc:
        return LOCKED, f"cannot be read ({exc.strerror}): left as it is (fix its permissions)"
    kept = "replaces it and keeps it in the cache"
    if len(raw) > MAX_CAPTION_BYTES:
        return UNREAD, (f"is over {human_size(MAX_CAPTION_BYTES)}, no caption: left as it is (move it away, or "
                        f"--overwrite {kept})")
    text = decode_caption(raw)[0]
    if text is None:
        if not raw.strip(b"\0 \t\r\n"):
            return EMPTY, ""
        return UNREAD, f"is no text training reads: left as it is (save it as UTF-8, or --overwrite {kept})"
    return (TEXT if text.strip() else EMPTY), ""


def _holds_files(folder: Path | None) -> bool:
    return folder is not None and any(path.is_file() for path in folder.rglob("*"))


def _claim_new_folder(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`..., created: the first no other run holds (two runs within a second would
    share one, and the second would replace the first's copies of the user's captions with the first's output)."""
    for folder in itertools.chain([path], (path.with_name(f"{path.name}-{n}") for n in itertools.count(2))):
        try:
            make_folders(folder.parent)  # (in a lab's shared cache, the group's to write in as the cache is)
            folder.mkdir()
            return folder
        except FileExistsError:
            if folder.parent.is_dir():  # (a file where the folder goes: each next name would fail alike)
                continue
            raise LowvramError(f"--overwrite: the captions it replaces cannot be kept in {folder}: "
                               f"{file_in_the_way(folder) or folder.parent} is not a folder; move it away, or set "
                               "LOWVRAM_CACHE_DIR to another cache folder") from None
        except OSError as exc:
            fix = ("make room there, or set LOWVRAM_CACHE_DIR to another cache folder" if is_disk_full(exc) else
                   "set LOWVRAM_CACHE_DIR to a cache folder you can write in")
            raise LowvramError(f"--overwrite: the captions it replaces cannot be kept in {folder} ({exc.strerror}); "
                               f"{fix}") from None
    raise AssertionError("unreachable")


def _appended(old: str, new: str, trigger: str | None) -> str | None:
    """An existing caption with the tags of `new` it lacks added at its end, and the trigger word first where it
    lacks it (kohya's --append_tags with --always_first_tags); None where it lacks none. Tags match whatever their
    case, underscores and A1111's escaped brackets (`hatsune_miku \\(vocaloid\\)`), and whether commas or Chinese
    and Japanese ones (，、) part them."""
    def same(tag: str) -> str:
        return re.sub(r"\\([()\[\]])", r"\1", tag.strip().replace("_", " ").lower())

    first_line, *more = old.strip().splitlines() or [""]  # (more lines: --caption-lines each draws among them)
    old = first_line.strip().rstrip(",").strip()
    held = {same(tag) for tag in re.split(r"[,，、]", old)}
    added = [tag.strip() for tag in new.split(",") if tag.strip() and same(tag) not in held and same(tag) != same(
        trigger or "")]
    first = [trigger] if trigger and not has_word(old, trigger) else []
    if not added and not first:
        return None
    return "\n".join([", ".join(part for part in (*first, old, *added) if part), *more])


def _keep_old_caption(target: Path, root: Path, backup: Path | None) -> None:
    """Byte for byte: a UTF-16 or cp1252 original stays as it was."""
    from lowvram.files import atomic_write

    if backup is not None and target.is_file() and _caption_state(target)[0] != EMPTY:
        atomic_write(backup / target.relative_to(root), lambda tmp: shutil.copyfile(target, tmp),
                     target.stat().st_size, "the replaced caption")


def _choose_device(choice: str, estimate: CaptionerEstimate, hardware: Hardware, console: Console) -> str:
    if choice == "cpu":
        return "cpu"
    if choice == "cuda":
        if hardware.device != "cuda":
            raise LowvramError("--device cuda: no CUDA GPU here; use --device cpu (or auto)")
        return "cuda"
    if hardware.device != "cuda":
        return "cpu"
    if estimate.fits(hardware):
        return "cuda"
    console.print(f"the captioner needs about {estimate.describe()}; {hardware.name} has "
                  f"{gib(hardware.free_vram or hardware.total_vram)} GiB free: captioning on the CPU")
    return "cpu"


@dataclass(frozen=True)
class LocatedModel:
    """A captioning model's kind and files, found without loading it."""

    kind: str  # "tagger" or "image-to-text"
    source: str  # a local folder, or the hub id transformers loads (and caches) itself
    weight_files: list[Path]

    def load(self, device: str, config: CaptionConfig):
        """A function from a list of RGB images to their captions."""
        if self.kind == "tagger":
            return _load_tagger(Path(self.source), device, config)
        return _load_image_to_text(self.source, device, config)


def locate_model(name: str) -> LocatedModel:
    """The model's kind and weight files: a local folder, else a hub id (downloaded once, then from the cache)."""
    path = expand_home(name)
    if path.is_dir():
        return _located(path, name)
    if path.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise LowvramError(f"--caption-model: {name} is not a model folder or a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:  # first the small files that tell the kind, then that kind's files only (a WD14 repo also holds timm
        # weights a tagger never reads); never pickles
        folder = Path(snapshot_download(name, allow_patterns=["selected_tags.csv", "config.json"]))
        tagger = (folder / "selected_tags.csv").is_file()
        folder = snapshot_download(name, allow_patterns=list(TAGGER_FILES) if tagger else IMAGE_TO_TEXT_FILES)
    except Exception as exc:  # noqa: BLE001 - offline without a cached copy, unknown repo, gated repo
        raise LowvramError(f"--caption-model: {name} could not be fetched ({first_line(exc)}); give a local folder "
                           "or run once online") from None
    return _located(Path(folder), name)


def _located(folder: Path, name: str) -> LocatedModel:
    if all((folder / f).is_file() for f in TAGGER_FILES):
        return LocatedModel("tagger", str(folder), [folder / "model.onnx"])
    if (folder / "config.json").is_file():
        weights = sorted(folder.glob("*.safetensors"))
        if not weights:
            raise LowvramError(f"--caption-model: {name} has no .safetensors weights (pickled weights are never "
                               "opened); use a model that ships safetensors")
        return LocatedModel("image-to-text", str(folder), weights)
    raise LowvramError(f"--caption-model: {name} is neither a WD14-style tagger ({' + '.join(TAGGER_FILES)}) nor a "
                       "transformers model (config.json)")


def _load_image_to_text(source: str, device: str, config: CaptionConfig):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = torch.float16 if device == "cuda" else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, use_safetensors=True)
    except Exception as exc:  # noqa: BLE001 - an unsupported architecture or broken files
        raise LowvramError(f"--caption-model: {config.caption_model} could not be loaded as an image-to-text model "
                           f"({first_line(exc)})") from None
    model.to(device=device, dtype=dtype).eval()  # (transformers before 4.56 took the dtype as torch_dtype only)

    @torch.inference_mode()
    def caption(images: list) -> list[str]:
        text = [config.prompt] * len(images) if config.prompt else None
        inputs = processor(images=images, text=text, return_tensors="pt").to(device)
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        ids = model.generate(**inputs, max_new_tokens=config.max_length, do_sample=False)
        return processor.batch_decode(ids, skip_special_tokens=True)

    return caption


def _load_tagger(folder: Path, device: str, config: CaptionConfig):
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError:
        raise LowvramError("--caption-model: a WD14 tagger runs on onnxruntime, which is not installed; "
                           "pip install 'lowvram[caption]' (onnxruntime-gpu runs it on CUDA)") from None
    tags = _read_tags(folder / "selected_tags.csv")
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    elif device == "cuda":
        print("onnxruntime here has no CUDA: the tagger runs on the CPU (pip install onnxruntime-gpu for the GPU)")
    try:
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=providers)
    except Exception as exc:  # noqa: BLE001
        raise LowvramError(f"--caption-model: {folder / 'model.onnx'} could not be loaded ({first_line(exc)})") from None
    entry = session.get_inputs()[0]
    if len(entry.shape) != 4 or entry.shape[3] != 3 or not isinstance(entry.shape[1], int):
        raise LowvramError(f"--caption-model: {config.caption_model} takes input {entry.shape}, not the WD14 "
                           "layout (batch, size, size, 3)")
    size = entry.shape[1]
    excluded = {tag.strip().replace("_", " ").lower() for given in config.exclude_tags for tag in given.split(",")}

    def caption(images: list) -> list[str]:
        batch = np.stack([_tagger_input(image, size) for image in images])
        scores = session.run(None, {entry.name: batch})[0]
        if scores.shape[1] != len(tags):
            raise LowvramError(f"--caption-model: the model scores {scores.shape[1]} tags, selected_tags.csv "
                               f"names {len(tags)}")
        return [_tag_line(row, tags, config, excluded) for row in scores]

    return caption


def _read_tags(path: Path) -> list[tuple[str, int]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [(row["name"], int(row.get("category") or GENERAL)) for row in csv.DictReader(fh)]
    except (KeyError, ValueError, OSError) as exc:
        raise LowvramError(f"--caption-model: {path} is not a tag list with name and category columns "
                           f"({first_line(exc)})") from None


def _tagger_input(image, size: int):
    """WD14's input: the image padded to a white square, resized, as float BGR 0-255 (what the taggers trained on)."""
    import numpy as np
    from PIL import Image

    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    pixels = np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32)
    return np.ascontiguousarray(pixels[:, :, ::-1])


def _tag_line(scores, tags: list[tuple[str, int]], config: CaptionConfig, excluded: set[str]) -> str:
    chosen = []
    for (name, category), score in zip(tags, scores, strict=True):
        # a short tag keeps its underscores, as kohya's --remove_underscore keeps them: ^_^ and o_o are faces
        tag = name if config.keep_underscores or len(name) <= 3 else name.replace("_", " ")
        spaced = tag.replace("_", " ").lower()
        if category == RATING or spaced in excluded or spaced == (config.trigger_word or "").replace("_", " ").lower():
            continue
        if score >= (config.character_threshold if category == CHARACTER else config.threshold):
            chosen.append((category != CHARACTER, -float(score), tag))
    return ", ".join(tag for *_, tag in sorted(chosen))
