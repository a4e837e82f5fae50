"""The dataset scan (`lowvram check-data`, and the start of `train`): every file read once and reported with
what was found and what will be done to it.

Users' folders are messy, so one bad file becomes a skipped record with a reason, never a crash; and nothing
in the folder is ever written. An index kept elsewhere (the cache) lets a rescan skip decoding unchanged files.
Which folders train, and how often, is `lowvram.data.folders`' (kohya's rules: the root once, `N_name/` N times).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import replace
from pathlib import Path

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
from lowvram.data.folders import (
    DEFAULT_SCAN_OPTIONS,
    ImageFolder,
    ScanOptions,
    holds_images,
    images_below,
    n_name_for,
    nested_option,
    passed_over_images,
    repeat_folders,
    untrained_images,
)
from lowvram.data.image_files import (
    ALPHA_MODES,
    PIL_FORMATS,
    UNSUPPORTED_SUFFIXES,
    a_or_an,
    file_facts,
    to_grey,
    to_rgb,
    unsupported_suffix_reason,
)
from lowvram.data.image_metadata import (
    METADATA_FILES,
)
from lowvram.data.scan_report import ImageRecord, ScanReport
from lowvram.dataset_files.subsets import REPEAT_FOLDER, is_year, repeats_of
from lowvram.errors import LowvramError, shell_line
from lowvram.files import ignores_case, is_run_folder, is_utf8, passed_over, write_text
from lowvram.prompts import TRIGGER_PLACEHOLDER, with_trigger
from lowvram.run_files import run_dataset

SILENT_SUFFIXES = (".txt", ".caption", ".json", ".jsonl", ".toml", ".yaml", ".yml", ".npz", ".npy", ".md", ".csv")
SILENT_NAMES = ("Thumbs.db", "desktop.ini")
MODE_NOTES = {"I;16": "16-bit -> 8-bit RGB", "CMYK": "CMYK -> RGB", "P": "palette -> RGB", "L": "greyscale -> RGB", "LA": "greyscale -> RGB",
              "1": "1-bit -> RGB", "I": "32-bit -> 8-bit RGB", "F": "32-bit float -> 8-bit RGB"}
INDEX_VERSION = 1
UPSCALE_NOTE_FROM = 1.01  # enlarging by under 1% is not worth a word
CROP_NOTE_BELOW = 0.8  # a bucket's crop keeping less of an image (a panorama's) is said; buckets keep most of others
SQUARE_CROP_NOTE_BELOW = 0.6  # --no-bucket's square crop: a 3:2 photo's (67%) is every photo's; a 16:9 one's is said
PROGRESS_FROM = 50  # files; fewer scan in a blink
MASK_ASPECT_TOLERANCE = 0.02  # a mask of another shape belongs to another image


class NoUsableImages(LowvramError):
    """Nothing to train on; `.report` still says why each file was skipped, for `check-data` to print."""

    def __init__(self, message: str, report: ScanReport):
        super().__init__(message)
        self.report = report


def scan_dataset(root: Path, buckets: Buckets, options: ScanOptions = DEFAULT_SCAN_OPTIONS,
                 index_path: Path | None = None, console: Console | None = None, flag: str = "--data",
                 listing: str | None = None) -> ScanReport:
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


def scan_folders(root: Path, folders: list[ImageFolder], buckets: Buckets,
                 options: ScanOptions = DEFAULT_SCAN_OPTIONS, index_path: Path | None = None,
                 console: Console | None = None, layout_notes: list[str] | None = None,
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
    sampled: dict[tuple[int, float], list[int]] = {}  # a SAMPLES concept -> its records
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
            if folder.samples:
                sampled.setdefault(folder.samples, []).append(len(records))
            records.append(record)
            progress.advance(task)
    for (_, per_epoch), indices in sampled.items():  # (a skipped file shows no sample: the others show more)
        shown = sum(records[index].usable for index in indices)
        for index in indices if shown else ():
            records[index] = replace(records[index], repeats=per_epoch / shown)
    if index_path is not None:
        try:
            write_text(Path(index_path), json.dumps({"version": INDEX_VERSION, "files": new_index}))
        except LowvramError as exc:  # only a cache: the scan itself is still good
            if console is not None:
                console.print(Text(f"scan index not saved: {exc}", style="yellow"), soft_wrap=True)  # (a log: one line)
    # (the N_name layout's root: the images in folders it passes over, which "0 skipped" said nothing of)
    passed, more = passed_over_images(root, folders, elsewhere) if judged else (0, False)
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
                                         and holds_images(sub)]):
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
                    count = untrained_images(inside)
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
    # (--bucket-no-upscale's own-shape bucket crops nothing: a 60:1 panorama trained 3840x64, where the buckets'
    # sides skip it as without it)
    bounded = replace(buckets, no_upscale=False).place(width, height) if buckets.no_upscale else placement
    if bounded.kept_fraction < options.min_kept_fraction:
        wide = width >= height
        extreme = max(buckets.shapes, key=lambda s: s[0] / s[1] if wide else s[1] / s[0])
        ratio = max(width, height) / min(width, height)
        shape = f"{'widest' if wide else 'tallest'} bucket is {extreme[0]}x{extreme[1]}"
        target = "it" if bounded.bucket == extreme else f"its bucket {bounded.bucket[0]}x{bounded.bucket[1]}"
        own = (f" (its own shape under --bucket-no-upscale, {placement.bucket[0]}x{placement.bucket[1]}, is as "
               "extreme)" if buckets.no_upscale else "")
        return (f"extreme aspect ratio: {width}x{height} is {f'{ratio:.1f}:1' if wide else f'1:{ratio:.1f}'} and the "
                f"{shape}: cropping to {target} would keep only {bounded.kept_fraction:.0%} of the image{own}; "
                "crop or split it"), None, []
    notes = []
    if placement.upscale > UPSCALE_NOTE_FROM:
        if options.small_images == "skip":
            return (f"needs upscaling: {width}x{height} would be enlarged x{placement.upscale:.1f} to fill its bucket "
                    f"{placement.bucket[0]}x{placement.bucket[1]} (small images = skip)"), None, []
        notes.append(f"upscaled x{placement.upscale:.1f} to fill its bucket")
    if placement.kept_fraction < (CROP_NOTE_BELOW if len(buckets.shapes) > 1 else SQUARE_CROP_NOTE_BELOW):
        notes.append(f"cropped to its bucket {placement.bucket[0]}x{placement.bucket[1]}, keeping "
                     f"{placement.kept_fraction:.0%} of the image (crop or split it to train all of it)")
    if facts["format"] and facts["format"] not in IMAGE_FORMATS.get(suffix, ()):
        notes.append(f"is {a_or_an(facts['format'])} {facts['format']} file despite its {suffix} name")
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


def open_training_image(record: ImageRecord, options: ScanOptions = DEFAULT_SCAN_OPTIONS,
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
