"""The dataset panel: `check-data` for the form's dataset (every file, usable or skipped and why, the buckets and
the captions), and captions edited in place. An edit is written atomically; the caption it replaces is kept in
lowvram's cache the first time it is edited, so the dataset folder gains no backup files."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from lowvram.config import CAPTION_SUFFIXES, PLANNING_MODEL
from lowvram.configure import build_config
from lowvram.data.captions import NO_CAPTION_FILE, read_caption_text, trained_caption_file
from lowvram.dataset_files import is_dataset_file, read_dataset
from lowvram.errors import LowvramError
from lowvram.files import atomic_write, write_text
from lowvram.resolve import EDITED_CAPTIONS
from lowvram.ui.form import error_lines

COLUMNS = ["file", "status", "reason or notes", "bucket", "caption"]
TOP_TAGS = 10


def check_dataset(values: dict[str, Any]):
    """(summary markdown, table rows, usable image paths relative to the dataset, the dataset checked, each usable
    image's caption extension) for the form's dataset."""
    from lowvram.data.check import dataset_to_check, scan
    from lowvram.data.scan import NoUsableImages
    from lowvram.hardware import NO_GPU
    from lowvram.resolve import resolve_run

    if not values.get("data"):
        raise LowvramError("--data: choose the dataset folder first")
    config = build_config({"model": PLANNING_MODEL, **values}, writes=False)  # (as check-data: no run written)
    run = resolve_run(config, NO_GPU)
    data, trigger = dataset_to_check(run)
    unusable = None
    try:
        report = scan(run, data, trigger, None)
    except NoUsableImages as exc:  # the table still says why each file was skipped; the line says what is missing
        report, unusable = exc.report, exc
    rows = [[r.relpath, "usable" if r.usable else "skipped", r.reason or "; ".join(r.notes),
             f"{r.bucket[0]}x{r.bucket[1]}" if r.bucket else "", r.caption] for r in report.records]
    summary = _summary(report)
    if unusable is not None:
        summary = error_lines(str(unusable)) + "\n\n" + summary
    classes = None  # (what the class images are: --reg-data's, or a dataset file's is_reg subsets)
    if is_dataset_file(data):  # a dataset file: what was made of its settings, and its is_reg subsets
        dataset = read_dataset(data)
        summary += "".join(f"\n\n- {data.name}: {note}" for note in dataset.notes)
        classes = (data, "is_reg subsets") if dataset.folders(regularization=True) else None
    elif run.config.data.reg_data:  # (it was left out: an empty or trigger-named class folder checked clean)
        classes = (Path(run.config.data.reg_data), "class images (--reg-data)")
    if classes:
        summary += _class_images(run, report, *classes)
    # the caption file each image's captions are edited in: its subset's --caption-extension (a kohya dataset file
    # sets one per subset), else the run's, the dataset file's own included
    extensions = {r.relpath: dict(r.settings).get("caption_extension", run.config.data.caption_extension)
                  for r in report.usable}
    return summary, rows, [r.relpath for r in report.usable], data, extensions


def _class_images(run, report, where: Path, what: str) -> str:
    """The class images' lines, as check-data --reg-data says them: how many, the balance an epoch makes of them,
    and what is wrong with them (copies of training images, the trigger word in their captions)."""
    from lowvram.data.check import class_image_notes, scan
    from lowvram.data.epochs import counted_epochs, idle_regularization, regularization_balance
    from lowvram.data.scan import NoUsableImages

    try:
        reg = scan(run, where, None, None, regularization=True)
    except NoUsableImages as exc:
        return "\n\n" + error_lines(str(exc) if str(exc).startswith("--") else f"{what}: {exc}")
    lines = [f"{what}: {len(reg.usable)} usable, {len(reg.skipped)} skipped"]
    if report.usable:
        epochs = counted_epochs(run, report.usable, reg.usable)
        idle = idle_regularization(epochs, run.config.data.prior_loss_weight)
        lines.append(f"warning: {regularization_balance(epochs)}; {idle}" if idle else regularization_balance(epochs))
    notes = class_image_notes(report, reg, run.config.data.trigger_word)
    return "".join(f"\n\n{line}" for line in lines) + "".join(f"\n\n- {note}" for note in notes)


def _summary(report) -> str:
    summary = report.summary()
    usable = report.usable
    from_files = sum(1 for r in usable if not any(n.startswith((NO_CAPTION_FILE, "empty caption")) for n in r.notes))
    words = [len(r.caption.split()) for r in usable]
    tags = Counter(t.strip() for r in usable for t in r.caption.split(",") if t.strip())
    buckets = ", ".join(f"{shape} ×{n}" for shape, n in summary["buckets"].items()) or "none"
    passed = f", {report.passed_over_count} more in folders passed over (below)" if report.passed_over_count else ""
    lines = [(f"**{summary['usable']} usable, {summary['skipped']} skipped** of {summary['images']} images{passed}; "
             f"{summary['samples_per_epoch']} samples per epoch"),
             f"buckets: {buckets}",
             (f"captions: {from_files} from caption or metadata files, {len(usable) - from_files} from the template; "
             f"{sum(words) / max(1, len(words)):.1f} words on average"),
             "most frequent tags: " + (", ".join(f"{t} ({n})" for t, n in tags.most_common(TOP_TAGS)) or "none")]
    lines += [f"- {note}" for note in report.folder_notes]
    return "\n\n".join(lines)


def images_root(data: Path | str) -> Path:
    """The folder the dataset's images are named relative to: the image folder, or the folder that holds every image
    folder of a dataset file (kohya's or OneTrainer's)."""
    return read_dataset(Path(data)).root if is_dataset_file(data) else Path(data)


def _image(root: Path, relpath: str) -> Path:
    """The image `relpath` names, never outside the dataset folder by '..' or an absolute path; links the dataset
    holds are followed as the scan follows them (a dataset from the Hub's cache is links into its blobs/ folder)."""
    image = Path(os.path.abspath(Path(root) / relpath))
    if not image.is_relative_to(os.path.abspath(root)):
        raise LowvramError(f"{relpath}: not inside the dataset folder")
    return image


def caption_file(root: Path, relpath: str, extension: str | None = None) -> Path:
    """The caption file training reads for an image (`extension`: --caption-extension's), in whichever case it is
    written (the .caption beside an empty .txt: the scan's); where there is none yet, the one it would read."""
    image = _image(root, relpath)
    extension = extension or CAPTION_SUFFIXES[0]
    return trained_caption_file(image, extension) or image.with_suffix(extension)


def metadata_caption(root: Path, relpath: str, column: str | None = None, data: str | None = None
                     ) -> tuple[str, str] | None:
    """Where the metadata whose caption training reads for the image is (Hugging Face's imagefolder file above it;
    a kohya dataset file's fine-tuning subset, `data`), and that caption (from `column`, --caption-column's); None
    where training reads a caption file."""
    from lowvram.data.folders import repeat_folders

    image = _image(root, relpath)
    if data and is_dataset_file(data):  # (its scan reads the subset's metadata_file, not a caption file beside it)
        for subset in read_dataset(Path(data)).folders():
            if subset.captions is not None and Path(os.path.abspath(subset.folder)) == image.parent:
                held = subset.captions.get(image.stem, subset.captions.get(str(image), ""))
                return f"its subset's metadata_file ({Path(data).name})", held
        return None
    resolved = Path(root).resolve()
    key = os.path.normpath(resolved / relpath)  # as the scan, which lists the resolved folder, names it
    for folder in repeat_folders(resolved, column)[0] if resolved.is_dir() else []:
        if folder.captions is not None and key in folder.captions:
            return f"a {folder.captions_from} above it", folder.captions[key]
    return None


def read_caption(root: Path, relpath: str, column: str | None = None, extension: str | None = None,
                 data: str | None = None) -> str:
    try:
        from_metadata = metadata_caption(root, relpath, column, data)
    except LowvramError:  # the file is refused where the dataset is checked
        from_metadata = None
    if from_metadata:
        return from_metadata[1]
    path = caption_file(root, relpath, extension)
    return read_caption_text(path)[0].strip() if path.is_file() else ""


def save_caption(root: Path, relpath: str, text: str, backup_dir: Path, column: str | None = None,
                 extension: str | None = None, sample: bool = False, data: str | None = None) -> str:
    """Write the caption atomically; the first edit of a caption file keeps its original in `backup_dir`. An image
    a metadata file captions is not: a caption file beside it would not be read."""
    if sample:  # (--data sample: the cache's copy of the built-in one)
        raise LowvramError("the built-in sample dataset is written anew at each check and run, so an edit would be "
                           f"lost; copy its folder ({Path(root)}) and give the copy as --data to edit its captions")
    from_metadata = metadata_caption(root, relpath, column, data)
    if from_metadata:
        raise LowvramError(f"{relpath}: its caption is in {from_metadata[0]}, which training reads instead of "
                           "caption files; edit it there")
    path = caption_file(root, relpath, extension)
    kept = backup_dir / path.relative_to(os.path.abspath(root))
    if path.is_file() and not kept.exists():  # byte for byte: a UTF-16 or cp1252 original stays as it was
        atomic_write(kept, lambda tmp: shutil.copyfile(path, tmp), path.stat().st_size, "the original caption")
    write_text(path, text.strip() + "\n")
    return f"saved {path.name}" + (f"; the original is kept in {kept}" if kept.exists() else "")


def backup_dir_for(cache_dir: Path, root: Path) -> Path:
    """Where the originals of a dataset's edited captions are kept: one folder per dataset, in the cache."""
    import hashlib

    root = Path(root).resolve()
    return Path(cache_dir) / EDITED_CAPTIONS / f"{root.name}-{hashlib.sha256(os.fsencode(root)).hexdigest()[:8]}"
