"""What a dataset scan found (`lowvram.data.scan`): each file's record, and the report check-data and training
print, per folder, then every skipped file with its reason, the files with notes and the buckets."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from lowvram.config import FILES_LISTED_UP_TO
from lowvram.files import write_text

TAGS_SHOWN = 20  # the most common tags check-data --captions names
LISTS_EACH = "lowvram check-data --verbose, or its --report, lists"  # where a summary's tally is listed in full


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute
    relpath: str  # relative to the dataset root, for reports
    folder: str  # label: "name" of "10_name", or the root folder's name
    repeats: float  # whole for kohya's folders; a OneTrainer balancing may be fractional
    usable: bool
    reason: str | None  # "kind: details; fix" when skipped, None when usable
    notes: tuple[str, ...]  # what will be done to it (conversions, caption fallbacks, duplicates)
    width: int  # after EXIF orientation
    height: int
    mode: str  # Pillow mode as stored
    has_alpha: bool
    sha256: str  # of the file bytes ("" when not read)
    caption: str  # final: template and trigger word applied
    bucket: tuple[int, int] | None  # (width, height); None when skipped
    transposed: bool = False  # EXIF orientation rotates or flips it
    non_utf8_caption: str | None = None  # the caption file (relative path) when it was read in a legacy code page
    mask: Path | None = None  # its loss mask file, with --masked-loss
    mask_sha256: str = ""
    mask_mode: str = ""  # its Pillow mode: a 16-bit one's grey levels are scaled, as they were not before
    loss_weight: float = 1.0  # its folder's
    resolution: int | None = None  # its folder's own (None: the run's resolutions)
    batch_size: int | None = None  # its folder's own (None: the run's)
    kept_tags: tuple[int, int] | None = None  # its caption's tags kept at the front and end (keep_tokens_separator)
    more_captions: tuple[tuple[str, tuple[int, int] | None], ...] = ()  # its other caption lines (and their kept)
    caption_weights: tuple[float, ...] = ()  # each caption's chance (the first, then more_captions); () = equal
    settings: tuple[tuple[str, Any], ...] = ()  # its folder's own caption and augmentation options
    dataset: int | None = None  # its folder's [[datasets]] entry in a kohya file of several
    own_caption: str | None = None  # `caption` before every --caption-prefix/suffix (a dataset file subset's too)

    def to_json(self) -> dict:
        return {**asdict(self), "path": str(self.path), "notes": list(self.notes),
                "bucket": list(self.bucket) if self.bucket else None, "mask": str(self.mask) if self.mask else None,
                "kept_tags": list(self.kept_tags) if self.kept_tags else None,
                "more_captions": [[text, list(kept) if kept else None] for text, kept in self.more_captions],
                "caption_weights": list(self.caption_weights), "settings": dict(self.settings)}


def per_epoch(images: int, repeats: float) -> int:
    """How many samples `images` images repeated `repeats` times give per epoch: a fractional part is that share
    of them, rounded half up (so that one image balanced at 0.5 still trains)."""
    return int(repeats) * images + math.floor(images * (repeats % 1) + 0.5)


def _kind(text: str) -> str:
    """'too small: 1x1 ...' -> 'too small'; 'duplicate of a.png' -> 'duplicate': counts in the summary. A colon
    within brackets ends no kind (one was cut in its aside's middle), and an aside that ends the kind is none of it
    ("... as it has no .txt (kohya and OneTrainer read ...: ...)"); "[trigger] (ai-toolkit's) left out" is whole."""
    depth, end = 0, len(text)
    for i, char in enumerate(text):
        depth = max(depth + (char == "(") - (char == ")"), 0)  # (a stray ")" in a file name opens nothing)
        if char == ":" and depth == 0:
            end = i
            break
    kind = re.sub(r" \([^()]*\)$| \([^()]*$", "", text[:end])  # (an aside closing it, or cut off in it)
    return re.sub(r" of .*| x[\d.]+", "", kind)


def _in_number_order(text: str) -> list:
    """A sort key that puts 2_dogs before 10_alice and 64x208 before 240x64 (as a file manager lists them), where
    text order put 10_ before 1_ and 2_."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _folder_of(record: ImageRecord) -> str:
    parent = Path(record.relpath).parent.as_posix()
    return "." if parent == "." else parent + "/"


@dataclass
class ScanReport:
    root: Path
    records: list[ImageRecord]
    folder_notes: list[str]
    passed_over: int = 0  # images in folders the layout does not read (not N_name, 0_name, nested): none trains
    passed_over_more: bool = False  # more of them than counted (a whole Drive given: its first files looked at)

    @property
    def usable(self) -> list[ImageRecord]:
        return [r for r in self.records if r.usable]

    @property
    def skipped(self) -> list[ImageRecord]:
        return [r for r in self.records if not r.usable]

    def summary(self) -> dict:
        usable = self.usable
        folders: dict[str, dict] = {}
        for r in self.records:
            f = folders.setdefault(_folder_of(r), {"label": r.folder, "repeats": r.repeats, "images": 0, "usable": 0,
                                                   "skipped": 0, "loss_weight": r.loss_weight,
                                                   "settings": dict(r.settings)})
            f["images"] += 1
            f["usable" if r.usable else "skipped"] += 1
        buckets = Counter(f"{r.bucket[0]}x{r.bucket[1]}" for r in usable)
        drawn: Counter = Counter()  # with repeats, as kohya's bucket info and the LoRA's ss_bucket_info count them
        by_folder: dict[tuple, Counter] = {}
        for r in usable:
            by_folder.setdefault((r.folder, r.repeats), Counter())[f"{r.bucket[0]}x{r.bucket[1]}"] += 1
        for (_, repeats), counts in by_folder.items():  # a folder's samples shared out over its buckets: a fractional
            exact = {shape: count * repeats for shape, count in counts.items()}  # share rounded once, for all
            floors = {shape: math.floor(value) for shape, value in exact.items()}
            left = per_epoch(sum(counts.values()), repeats) - sum(floors.values())
            for shape in sorted(exact, key=lambda s: floors[s] - exact[s])[:max(left, 0)]:
                floors[shape] += 1
            drawn.update(floors)
        return {"images": len(self.records), "usable": len(usable), "skipped": len(self.records) - len(usable),
                "samples_per_epoch": sum(per_epoch(count, repeats) for (_, repeats), count in
                                         Counter((r.folder, r.repeats) for r in usable).items()),
                "folders": folders,
                "skipped_by_reason": dict(Counter(_kind(r.reason or "") for r in self.skipped)),
                "notes": dict(Counter(_kind(n) for r in usable for n in r.notes)),
                "buckets": dict(sorted(buckets.items(), key=lambda item: _in_number_order(item[0]))),
                "bucket_samples_per_epoch": {shape: drawn[shape] for shape in sorted(
                    buckets, key=_in_number_order)}}

    @property
    def passed_over_count(self) -> str:
        """How many images are in folders passed over, as a summary says it ("" where none are)."""
        if not (self.passed_over or self.passed_over_more):
            return ""
        return f"at least {self.passed_over}" if self.passed_over_more else str(self.passed_over)

    def to_json(self) -> dict:
        return {"root": str(self.root), "summary": self.summary() | {"passed_over": self.passed_over,
                                                                     "passed_over_more": self.passed_over_more},
                "folder_notes": list(self.folder_notes),
                "records": [r.to_json() for r in self.records]}

    def write_json(self, path: Path, more: dict | None = None) -> Path:
        return write_text(path, self.json_text(more))

    def json_text(self, more: dict | None = None) -> str:
        """The report as JSON, with `more` (a regularization set's report) after its own keys."""
        return json.dumps(self.to_json() | (more or {}), indent=1, ensure_ascii=False) + "\n"

    def print_summary(self, console: Console, verbose: bool = False, regularization: bool = False) -> None:
        """Per folder, then every skipped file with its reason, the files with notes, and the buckets; the class
        images' (`regularization`) titled so, their samples counted before an epoch draws them (--reg-balance)."""
        summary = self.summary()
        folders = summary["folders"].values()
        weighted = any(f["loss_weight"] != 1 for f in folders)  # a column only where it tells
        own = any(f["settings"] for f in folders)
        console.print(_table(f"{'class images' if regularization else 'dataset'} {self.root}", ("folder", "label", "images", "usable", "skipped", "repeats",
                                                       "samples/epoch", *(("weight",) if weighted else ()),
                                                       *(("own settings",) if own else ())),
                             [(k, f["label"], f["images"], f["usable"], f["skipped"], f"{f['repeats']:g}",
                               # (a fractional balancing draws its share of the whole concept: on average, here)
                               per_epoch(f["usable"], f["repeats"]) if float(f["repeats"]).is_integer() else
                               f"~{f['usable'] * f['repeats']:.3g}",
                               *((f"{f['loss_weight']:g}",) if weighted else ()),
                               # (an option whose default is None: lowvram works it out, as it does unset)
                               *((", ".join(f"{key} {'default' if value is None else value}"
                                            for key, value in f["settings"].items()),) if own
                                 else ()))
                              for k, f in sorted(summary["folders"].items(),
                                                 key=lambda item: _in_number_order(item[0]))]))
        for note in self.folder_notes:
            console.print(Text(note, style="yellow"), soft_wrap=True)
        if self.skipped and (verbose or len(self.skipped) <= FILES_LISTED_UP_TO):
            console.print(_table(f"{len(self.skipped)} skipped", ("file", "reason"),
                                 [(r.relpath, r.reason) for r in sorted(self.skipped,
                                                                        key=lambda r: _in_number_order(r.relpath))]))
        elif self.skipped:  # a tally: thousands of rows would bury the rest
            first: dict[str, ImageRecord] = {}
            for r in self.skipped:
                first.setdefault(_kind(r.reason or ""), r)
            console.print(_table(f"{len(self.skipped)} skipped ({LISTS_EACH} each)",
                                 ("reason", "files", "the first"),
                                 [(kind, count, f"{first[kind].relpath}: {first[kind].reason}")
                                  for kind, count in summary["skipped_by_reason"].items()]))
        noted = sorted((r for r in self.usable if r.notes), key=lambda r: _in_number_order(r.relpath))
        if noted and (verbose or len(noted) <= FILES_LISTED_UP_TO):
            console.print(_table("usable, with notes", ("file", "size", "bucket", "notes"),  # (the bucket: what the
                                 [(r.relpath, f"{r.width}x{r.height}",  # crop or upscale noted is to)
                                   "x".join(map(str, r.bucket)) if r.bucket else "", "; ".join(r.notes))
                                  for r in noted]))
        elif noted:
            kinds = ", ".join(f"{k} ({n})" for k, n in summary["notes"].items())
            console.print(f"{len(noted)} usable files have notes: {kinds}; {LISTS_EACH} them")
        if summary["buckets"]:
            per_epoch_counts = summary["bucket_samples_per_epoch"]
            if list(per_epoch_counts.values()) == list(summary["buckets"].values()):
                console.print(_table("buckets", ("bucket", "images"), summary["buckets"].items()))
            else:  # repeats: an epoch's count per bucket is what kohya users read as a bucket's size
                console.print(_table("buckets", ("bucket", "images", "per epoch (with repeats)"),
                                     [(shape, count, per_epoch_counts[shape])
                                      for shape, count in summary["buckets"].items()]))
        legacy = [r.non_utf8_caption for r in self.records if r.non_utf8_caption]
        if legacy:
            were = "caption was" if len(legacy) == 1 else "captions were"
            console.print(Text(f"{len(legacy)} {were} not UTF-8; read in the Windows code page each one's note "
                               f"names: {', '.join(legacy)}", style="yellow"))
        counted = ("with repeats, before an epoch draws them (kohya's balance matches them to the training samples; "
                   "--reg-balance repeats draws each by its repeats)" if regularization else "per epoch with repeats")
        passed = f", {self.passed_over_count} more in folders passed over (named above)" if self.passed_over_count else ""
        console.print(f"{summary['usable']} of {summary['images']} images usable, {summary['skipped']} skipped"
                      f"{passed}; {summary['samples_per_epoch']} samples {counted}")


    def print_captions(self, console: Console, separator: str = ",") -> None:
        """Each usable image's caption as it trains, and its tags (split at `separator`) by how many captions hold
        them: the tag table a tagger's user checks before training (as trained, so with --caption-prefix and
        --caption-suffix; the LoRA's ss_tag_frequency counts the caption files' own tags, as kohya's does)."""
        console.print(_table("captions", ("file", "caption"), [(r.relpath, _captions_shown(r)) for r in self.usable]))
        held: Counter = Counter()
        repeated, empty = [], []
        for record in self.usable:
            parts = [tag.strip() for tag in record.caption.split(separator)]
            if len(parts) > 1 and not all(parts):  # ("a, , b", a trailing comma: a tagger's or an edit's leftover)
                empty.append(record.relpath)
            tags = [tag.lower() for tag in parts if tag]
            others = [tag.strip().lower() for text, _ in record.more_captions for tag in text.split(separator)]
            held.update(list(dict.fromkeys(tags + [tag for tag in others if tag])))  # (in order: ties stay in the
            # order met; each of its captions' tags once: every {a|b} choice, every line)
            twice = list(dict.fromkeys(tag for tag in tags if tags.count(tag) > 1))
            if twice:
                repeated.append(f"{record.relpath}'s " + ", ".join(f"'{tag}'" for tag in twice))
        common = ", ".join(f"{tag} ({count})" for tag, count in held.most_common(TAGS_SHOWN))
        once = sum(1 for count in held.values() if count == 1)
        console.print(Text(f"{len(held)} distinct tags; most common: {common or 'none'}; {once} in one caption only"
                           + (f"; {len(repeated)} caption(s) hold a tag twice ({'; '.join(repeated[:3])}"
                              + ("; ..." if len(repeated) > 3 else "") + ")" if repeated else "")
                           + (f"; {len(empty)} caption(s) hold an empty tag or a trailing separator "
                              f"({', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''}), trained as written "
                              "where the tags are not shuffled or dropped" if empty else ""),
                           style="yellow" if repeated or empty else ""), soft_wrap=True)


def _captions_shown(record: ImageRecord, most: int = 3) -> str:
    """An image's captions, one a line: its other lines or {a|b} choices train too (the first alone was listed)."""
    texts = [record.caption, *(text for text, _ in record.more_captions)]
    more = f"\n... and {len(texts) - most} more" if len(texts) > most else ""
    return "\n".join(texts[:most]) + more


def _table(title: str, columns: tuple[str, ...], rows) -> Table:
    """Cells as plain Text: file names like 'a[1].png' are not rich markup."""
    table = Table(title=Text(title))
    for name in columns:
        texts = ("folder", "label", "file", "reason", "notes", "own settings", "caption")
        table.add_column(name, justify="left" if name in texts else "right",
                         overflow="fold" if name in texts else "ellipsis")  # (a file's name whole, if wrapped)
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    return table
