"""The dataset as a run sees it, without torch or weights: its buckets, the scan options, the scan index kept in the
cache, and `lowvram check-data`. Training's caching phase (`lowvram.data.prepare`) builds on the same scan."""

from __future__ import annotations

import hashlib
import os
import random
import re
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from lowvram.config import CHECK_DATA_SKIPS, DataConfig, RunConfig, as_flag_words, fields_by_name
from lowvram.console import console as log_console
from lowvram.data.augment import AugmentOptions, CaptionOptions, auto_variant_count
from lowvram.data.buckets import make_buckets
from lowvram.data.captions import WILDCARD, has_word
from lowvram.data.epochs import counted_epochs, idle_regularization, regularization_balance
from lowvram.data.folders import ImageFolder, ScanOptions, images_below
from lowvram.data.sample import SAMPLE_TRIGGER, write_sample_dataset
from lowvram.data.scan import NoUsableImages, scan_dataset, scan_folders
from lowvram.data.scan_report import ScanReport
from lowvram.dataset_files import has_regularization_subsets, is_dataset_file, read_dataset
from lowvram.dataset_files.subsets import REPEAT_FOLDER, repeats_of
from lowvram.errors import LowvramError, shell_line
from lowvram.files import file_in_the_way, windows_name_problem, windows_output_problem
from lowvram.models.tokens import cut_captions, family_tokenizer
from lowvram.option_values import parse_colour
from lowvram.resolve import SAMPLE_DATASET, SCANS, ResolvedRun, cache_in_use

REPORT_START = b'{\n "root": '  # how ScanReport.write_json begins a report


def folder_config(config: RunConfig, settings: tuple[tuple[str, Any], ...]) -> RunConfig:
    """The run's config as an image folder with its own caption and augmentation options (`settings`, a dataset file
    subset's) trains it."""
    return replace(config, data=replace(config.data, **dict(settings))) if settings else config


def folder_options(config: RunConfig) -> tuple[ScanOptions, AugmentOptions, CaptionOptions]:
    """How the images of a folder trained with `config` (the run's, or one with its folder's own options) are read,
    augmented and captioned."""
    data = config.data
    augment = AugmentOptions(data.flip, data.crop, data.color_jitter,
                             data.latent_variants or auto_variant_count(data.flip, data.crop, data.color_jitter))
    captions = CaptionOptions(data.shuffle_tags, data.keep_tokens, data.caption_dropout, data.caption_variants,
                              data.tag_dropout, data.caption_dropout_every, data.caption_separator,
                              data.secondary_separator)
    return scan_options(config, None), augment, captions


def scan_options(config: RunConfig, trigger: str | None, regularization: bool = False) -> ScanOptions:
    """How a folder's images are read; a regularization image without a caption takes --class-prompt or its folder's
    class words, never --caption-template: the instance's caption (the diffusers scripts' --instance_prompt, or
    "sks {trigger}") would train the class images as the instance."""
    template = (config.data.class_prompt or "{trigger}") if regularization else config.data.caption_template
    return ScanOptions(caption_extension=config.data.caption_extension, caption_column=config.data.caption_column,
                       caption_template=template,
                       trigger_word=trigger, background=parse_colour(config.data.background),
                       alpha_mask=config.data.alpha_mask, small_images=config.data.small_images,
                       masked_loss=config.data.masked_loss, caption_prefix=config.data.caption_prefix,
                       caption_suffix=config.data.caption_suffix,
                       keep_tokens_separator=config.data.keep_tokens_separator,
                       caption_separator=config.data.caption_separator,
                       caption_lines=config.data.caption_lines, wildcards=config.data.wildcards,
                       class_images=regularization)


def scan_index_path(cache_dir: Path, root: Path, part: str = "") -> Path:
    """The scan index lives in the cache, never in the user's dataset folder; one per dataset and `part` of it."""
    key = str(root.resolve()) + part
    return cache_dir / SCANS / f"{hashlib.sha256(os.fsencode(key)).hexdigest()[:20]}.json"


def scan(run: ResolvedRun, data: Path, trigger: str | None, console: Console | None, regularization: bool = False,
         listed_above: bool = False) -> ScanReport:
    """The scan of an image folder, or of a dataset file's image folders: its training subsets, or its
    is_reg subsets with `regularization` (which also captions as regularization images: --reg-data's folder).
    Where no image is usable, the error points to the check-data command that lists why, or, `listed_above`, to
    the list the caller printed."""
    listed = Path(run.config.data.data) if regularization and run.config.data.data else data  # (with its --reg-data:
    # the class folder as check-data's DIR is refused, as --data's own)
    listing = "listed above" if listed_above else f"see `{check_data_command(run.config, listed)}`"
    with cache_in_use(run.cache_dir, console):  # `lowvram cache` removes no index while it is written
        return _scan(run, data, trigger, console, regularization, listing)


def check_data_command(config: RunConfig, data: Path) -> str:
    """The `lowvram check-data` command that scans `data` as `config`'s run does: with its model options (the model's
    resolution the buckets and small images follow) and the dataset options it gives, each as check-data takes it."""
    given = {name: getattr(getattr(config, section), name) for name, (section, field, _) in fields_by_name().items()
             if section in ("model", "data") and name not in CHECK_DATA_SKIPS
             and getattr(getattr(config, section), name) not in (field.default, None)}
    return shell_line("lowvram", "check-data", data, *as_flag_words(given))


def _scan(run: ResolvedRun, data: Path, trigger: str | None, console: Console | None, regularization: bool,
          listing: str) -> ScanReport:
    buckets, options = make_buckets(run), scan_options(run.config, trigger, regularization)
    index = scan_index_path(run.cache_dir, data, " is_reg" if regularization else "")
    if not is_dataset_file(data):
        report = scan_dataset(data, buckets, options, index_path=index, console=console,
                              flag="--reg-data" if regularization else "--data", listing=listing)
        if not regularization and run.config.data.reg_data:  # (kohya_ss's project: reg/ beside the N_name folders)
            given = f"give --reg-data {Path(run.config.data.reg_data).resolve()} to train them"
            report.folder_notes[:] = [note for note in report.folder_notes if not note.endswith(given)]
            if Path(run.config.data.reg_data).resolve().is_relative_to(report.root):  # (its images train, as those)
                report.passed_over = max(0, report.passed_over - images_below(Path(run.config.data.reg_data)))
        loose = [record for record in report.usable if "/" not in record.relpath and record.caption in (
            record.folder, "") and any("template used" in note for note in record.notes)]
        own = REPEAT_FOLDER.match(Path(data).name)  # (--reg-data reg/1_dog: its name is their class, as kohya's)
        named = own and repeats_of(Path(data).name) and own.group(2)
        if regularization and loose and not named and not run.config.data.class_prompt:
            # (a folder of class images named as one, reg/, class_images/, or images/: a caption of no class)
            unnamed = not loose[0].caption or re.fullmatch(REG_FOLDER_NAMES, Path(data).name.lower())
            what = (f"are captioned '{loose[0].caption}', the folder's name, as their class" if loose[0].caption else
                    f"train without a caption ({Path(data).name}/ names no class)")
            report.folder_notes.append(
                f"{'warning: ' * bool(unnamed)}{len(loose)} class image(s) at the top level of {data} without captions "
                f"{what}; give --class-prompt (e.g. 'a photo of a dog'), or move them "
                "into a folder named for their class (1_dog)")
        return report
    dataset = read_dataset(data)
    folders = []
    for s in dataset.folders(regularization):
        settings = tuple(sorted((s.settings or {}).items()))
        folders.append(ImageFolder(s.folder, s.repeats, s.label, s.caption_prefix, s.caption_suffix, s.captions,
                                   s.loss_weight, s.resolution, make_buckets(run, s.resolution) if s.resolution
                                   else None, s.batch_size, settings,
                                   scan_options(folder_config(run.config, settings), trigger, regularization)
                                   if settings else None,
                                   s.dataset, label_captions=s.label_captions, samples=s.samples))
    kind = "is_reg subsets" if regularization else "image folders"
    others = tuple(s.folder for s in dataset.folders(not regularization))
    return scan_folders(dataset.root, folders, buckets, options, index_path=index, console=console,
                        describe=(f"the {kind} of {data}", listing), elsewhere=others)


@dataclass
class ScannedSets:
    """What a run trains from (`scan_sets`)."""
    reports: list[ScanReport]  # the dataset's scan (and the regularization set's)
    training: list  # the dataset's image records trained on
    held_out: list  # the image records validated on

    @classmethod
    def whole(cls, reports: list[ScanReport]) -> ScannedSets:
        """Every usable image of the dataset trains; none is held out."""
        return cls(reports, reports[0].usable, [])

    @property
    def regularization(self) -> list:
        """The regularization images (--reg-data's, or a dataset file's is_reg subsets')."""
        return self.reports[1].usable if len(self.reports) > 1 else []


def scan_sets(run: ResolvedRun, data: Path, trigger: str | None, console: Console | None) -> ScannedSets:
    """The scans of a run's dataset and of its regularization set (--reg-data's, or a dataset file's is_reg
    subsets), the image records it trains on, and those it validates on (--validation-data's, or
    --validation-split's share of the dataset)."""
    config = run.config
    reports = [scan(run, data, trigger, console)]
    some_trained_per_epoch(reports[0], config.data.data)
    for note in caption_notes(reports[0].usable, config, trigger) if console is not None else ():
        console.print(Text(note, style="yellow"), soft_wrap=True)
    if config.data.reg_data:
        reports.append(scan(run, Path(config.data.reg_data), None, console, regularization=True))
    elif has_regularization_subsets(config.data.data):
        reports.append(scan(run, data, None, console, regularization=True))
    if len(reports) > 1 and console is not None:
        for note in class_image_notes(reports[0], reports[1], trigger):
            console.print(Text(note, style="yellow"), soft_wrap=True)
    held_out, records = [], reports[0].usable
    if config.validation.validation_data:  # (its images inside the dataset's are held out of training too)
        held_out = scan(run, Path(config.validation.validation_data), trigger, console).usable
        records = [record for record in records if record.path not in {held.path for held in held_out}]
        if not records:  # (training would wait for a batch for ever)
            raise LowvramError(f"--validation-data {config.validation.validation_data} holds every image of --data "
                               f"{config.data.data}, so none is left to train: validate on a folder of other images, "
                               "or hold out a share with --validation-split")
        trained = {record.sha256: record for record in records}
        copies = [held for held in held_out if held.sha256 in trained]
        if copies and console is not None:  # (validating on them measures how well they were learnt, not more)
            console.print(Text(f"note: {len(copies)} image(s) of --validation-data are copies of training images "
                               f"({copies[0].relpath} is {trained[copies[0].sha256].relpath}): the validation loss "
                               "does not tell overfitting on them", style="yellow"), soft_wrap=True)
    if config.validation.validation_split:
        records, held_out = hold_out(records, config.validation.validation_split, config.training.seed)
    return ScannedSets(reports, records, held_out)


REG_FOLDER_NAMES = r"(reg|regs|regularization|regularisation|class|classes)([ _-]?(images?|imgs?|data|pics))?"


def class_image_notes(training: ScanReport, regularization: ScanReport, trigger: str | None) -> list[str]:
    """What is wrong with the class images, in words: copies of training images, the trigger word in captions."""
    return [note for note in (class_copies_note(training, regularization), class_trigger_note(regularization, trigger)
                              or (None if trigger else class_label_note(training, regularization))) if note]


def class_label_note(training: ScanReport, regularization: ScanReport) -> str | None:
    """Class images captioned with a training folder's name (1_ohwx woman beside 20_ohwx woman): the trigger a kohya
    user names in the folder, not with --trigger-word, which the note of the trigger word reads; None where none is."""
    labels = sorted({label for record in training.usable if (label := concept_of(record))}, key=len, reverse=True)
    named = [(record, label) for record in regularization.usable for label in labels
             if has_word(record.caption if record.own_caption is None else record.own_caption, label)]
    if not named:
        return None
    record, label = named[0]
    count = len({id(record) for record, _ in named})
    return (f"warning: {count} class image(s) are captioned with '{label}', a training folder's name ("
            f"{record.relpath}: '{record.caption}'): prior preservation then trains the subject's caption on other "
            "images of its class; caption them with the class alone, and the subject with a word of its own besides "
            "(1_woman beside 20_ohwx woman)")


def class_trigger_note(regularization: ScanReport, trigger: str | None) -> str | None:
    """Class images captioned with the trigger word (a class folder named 1_ohwx dog, caption files of the instance):
    prior preservation then teaches the subject's word on other images of its class, the mistake the kohya and
    diffusers guides warn of; None where none is."""
    # (its own caption: a --caption-prefix of the trigger word is the prefix's, whose fix is another)
    named = [record for record in regularization.usable if trigger and has_word(
        record.caption if record.own_caption is None else record.own_caption, trigger)]
    if not named:
        return None
    return (f"warning: {len(named)} class image(s) are captioned with the trigger word '{trigger}' "
            f"({named[0].relpath}: '{named[0].caption}'): prior preservation then trains the subject's word on other "
            "images of its class; caption them with the class alone (a folder named 1_dog, or --class-prompt 'a photo "
            "of a dog')")


def class_copies_note(training: ScanReport, regularization: ScanReport) -> str | None:
    """Class images that are copies of training images, which train as the subject and as its class at once
    (a copy within the dataset is its scan's own note); None where there is none."""
    trained = {record.sha256: record for record in training.usable}
    copies = [record for record in regularization.usable if record.sha256 in trained]
    if not copies:
        return None
    return (f"warning: {len(copies)} class image(s) are copies of training images ({copies[0].path} is "
            f"{trained[copies[0].sha256].path}): each trains as the subject and as its class, under both captions; "
            "remove it from one of them")


# AUTOMATIC1111's emphasis with a weight, (red hair:1.2): what --weighted-captions reads (a tagger's "name (series)"
# holds no weight)
WEIGHTED = re.compile(r"\([^()]*:\s*-?\d+(\.\d+)?\s*\)")
# (text) without a weight, unescaped: emphasis 1.1 ("artist:name" in it too: A1111's parser takes a colon as text)
BARE_EMPHASIS = re.compile(r"(?<!\\)\((?![^()]*:\s*[+-]?[.\d]+\s*\))[^()]*(?<!\\)\)")
WIDE_COMMAS = "，、"  # Chinese and Japanese commas
KOHYA_KEEP_SEPARATOR = "|||"  # the keep_tokens_separator kohya's documentation writes


def caption_notes(records: list, config: RunConfig, trigger: str | None) -> list[str]:
    """What the captions hold that trains otherwise than it was likely meant to (kohya trains them so too, without
    a word): the trigger word varied with the other tags, kohya's "|||" or weighted emphasis read as text, tags
    parted by Chinese or Japanese commas (，、), which a shuffle takes as one tag."""
    notes = [note for note in (trigger_of_one_concept(records, trigger), trigger_moved(records, config, trigger)) if note]
    data = config.data
    varied = data.caption_separator == "," and (data.shuffle_tags or data.tag_dropout)
    for held, flag, value, does, unset in (
            (lambda caption: KOHYA_KEEP_SEPARATOR in caption, "--keep-tokens-separator", f"'{KOHYA_KEEP_SEPARATOR}'",
             "keep the tags before it in front", not data.keep_tokens_separator),
            (WEIGHTED.search, "--weighted-captions", "", "weigh them as kohya's --weighted_captions does",
             not data.weighted_captions),
            (_choices, "--wildcards", "", "draw one of them each time, as kohya's enable_wildcard does",
             not data.wildcards)):
        found = [record for record in records if unset and held(record.caption)] if records else []
        if found:
            shown = {"--keep-tokens-separator": KOHYA_KEEP_SEPARATOR,
                     "--wildcards": f"choices such as {_choices(found[0].caption)}"}.get(flag) or \
                WEIGHTED.search(found[0].caption)[0]
            example = f"weights such as {shown}" if flag == "--weighted-captions" else shown  # (each weight its own)
            notes.append(f"note: {len(found)} of {len(records)} captions hold {example} (in {found[0].relpath}'s), "
                         f"trained as text; pass {' '.join(filter(None, (flag, value)))} to {does}")
    notes += wide_comma_notes(records) if varied else []
    prose = [record for record in records if _sentences(record.caption, data.keep_tokens)] if (
        data.shuffle_tags or data.tag_dropout) and data.caption_separator == "," else []  # (another: chosen for it)
    if prose:  # (a style preset's shuffle over an illustrator's own sentences: clauses reordered, unsaid)
        shown = textwrap.shorten(max(prose[0].caption.split(","), key=len).strip(), 60, placeholder=" …")
        fix = " ".join(["--no-shuffle-tags"] * data.shuffle_tags + ["--tag-dropout 0"] * bool(data.tag_dropout))
        varies, does = ("tag shuffling", "reorders") if data.shuffle_tags else ("tag dropout", "drops")
        notes.append(f"note: {len(prose)} of {len(records)} captions are sentences (in {prose[0].relpath}'s, "
                     f"'{shown}'), which {varies} cuts at each ',' and {does}; pass {fix} to train them as written")
    if records and data.caption_template != fields_by_name()["caption_template"][1].default and not any(
            "template used" in note for record in records for note in record.notes):
        # (a diffusers user's --instance_prompt, given as the template: it captions every image there)
        notes.append(f"note: --caption-template '{data.caption_template}' captions none of the {len(records)} "
                     "images: each has its own caption (a caption file or a metadata row), which trains instead; the "
                     "template is for images without one")
    bare = [record for record in records if BARE_EMPHASIS.search(record.caption)] if data.weighted_captions else []
    if bare:  # (a tagger's "hatsune miku (vocaloid)": its series weighed 1.1, and the name parted from it)
        notes.append(f"note: {len(bare)} of {len(records)} captions hold {BARE_EMPHASIS.search(bare[0].caption)[0]} "
                     f"(in {bare[0].relpath}'s), which --weighted-captions weighs as emphasis (1.1 a pair of "
                     "brackets), as kohya does; write it \\( \\) to train it as text (a tagger's 'name (series)')")
    spanning = _emphasis_across(data.caption_separator)
    parted = [record for record in records if spanning.search(record.caption)] if data.weighted_captions and (
        data.shuffle_tags or data.tag_dropout) else []
    if parted:  # (its halves moved apart: "blush:1.3), 1girl, (smile" weighs the wrong words, or none)
        notes.append(f"note: {len(parted)} of {len(records)} captions hold emphasis across a "
                     f"'{data.caption_separator}', {spanning.search(parted[0].caption)[0]} (in {parted[0].relpath}'s), "
                     "which shuffling and tag dropout part as two tags, its brackets unpaired (as kohya's do); give "
                     "each tag its own brackets, (smile:1.3), (blush:1.3)")
    return notes


def _sentences(caption: str, kept: int) -> bool:
    """Whether a caption is written as sentences that its commas part into clauses a shuffle or tag dropout would
    move: two or more parts past the `kept` ones, of 3.5 words or more on average (booru tags and a tagger's are of
    one to three: 'long hair', 'looking at viewer')."""
    parts = [part.split() for part in caption.split(",") if part.strip()]
    return len(parts) - kept >= 2 and sum(map(len, parts)) >= 3.5 * len(parts)


def _emphasis_across(separator: str) -> re.Pattern[str]:
    """Emphasis brackets, ( ) or [ ], holding `separator` (not escaped ones, \\( \\), which are text)."""
    inside = r"(?:[^()\[\]\\]|\\.)*"
    return re.compile(rf"(?<!\\)([(\[]){inside}{re.escape(separator)}{inside}(?<!\\)[)\]]")


def wide_comma_notes(records: list) -> list[str]:
    """Captions whose tags are parted by a Chinese or Japanese comma (，、) alone: one tag to a shuffle at ','.
    --caption-separator takes one separator, so it is the way only where every caption uses the same one (in a
    dataset that mixes them it would leave the ','-parted captions whole)."""
    parted = {char: [record for record in records if char in record.caption and "," not in record.caption]
              for char in WIDE_COMMAS}
    parted = {char: found for char, found in parted.items() if found}
    if not parted:
        return []
    found = list({id(record): record for held in parted.values() for record in held}.values())
    commas = sum("," in record.caption for record in records)
    chars = " and ".join(parted)
    said = (f"note: {len(found)} of {len(records)} captions part their tags with {chars} (in {found[0].relpath}'s), "
            "which a shuffle takes as one tag")
    if len(parted) == 1 and not commas:
        return [f"{said}; pass --caption-separator '{chars}' to shuffle and drop them"]
    mixed = f", and {commas} with ','" if commas else ""
    return [(f"{said}{mixed}: replace {chars} with ', ' in those captions to shuffle them all (--caption-separator "
            "takes one separator)")]


def _choices(caption: str) -> str:
    """kohya's {a|b} wildcard in a caption (its first), or "" ({{ and }} are its escaped braces, text)."""
    plain = caption.replace("{{", "").replace("}}", "")
    return next((f"{{{found}}}" for found in WILDCARD.findall(plain) if "|" in found), "")


def concept_of(record) -> str | None:
    """The concept an image record trains by its folder: an N_name folder's name (kohya's), else None."""
    return record.folder if record.folder and repeats_of(Path(record.relpath).parent.name) else None


def concept_words(records: list) -> str | None:
    """The words of a dataset's kohya concepts, each its N_name folders' name (`10_mystyle style`: "mystyle style"),
    where most of its images' captions hold them (those without a caption file are captioned so), comma-separated
    as a merge's: its LoRA's card offers them as its activation text where no --trigger-word names them (kohya_ss's
    GUI has no such field: the card was empty). None for images of no N_name folder, or captions of their own
    without the words."""
    by_label: dict[str, list] = {}
    for record in records:
        by_label.setdefault((concept_of(record) or "").strip(), []).append(record)  # (ohwx_char as it trains)
    if "" in by_label:
        return None
    held = [label for label, own in by_label.items()
            if sum(1 for record in own if has_word(record.caption, label)) * 2 > len(own)]
    return ", ".join(held) or None


def trigger_of_one_concept(records: list, trigger: str | None) -> str | None:
    """The note where the trigger word is one of several kohya concepts' (20_sks dog, 10_ohwx cat), or none of
    theirs (a new style token): the others' images train with it too, those without a caption on it alone, in
    place of their folder's name."""
    concepts: dict[str, str] = {}  # each N_name folder's label, by the folder
    for record in records if trigger else ():
        if concept_of(record):
            concepts.setdefault(record.folder, Path(record.relpath).parent.as_posix())
    named = [folder for label, folder in concepts.items() if has_word(label.replace("_", " "), trigger)]
    others = [folder for label, folder in concepts.items() if not has_word(label.replace("_", " "), trigger)]
    if not others or len(others) < 2 - len(named):  # (one concept, named or not: its images' word)
        return None
    def shown(folders: list[str]) -> str:
        return ", ".join(f"{folder}/" for folder in folders[:3]) + (f" and {len(folders) - 3} more" * (len(folders) > 3))

    # (in no folder's name, the concepts' uncaptioned images all trained on the one word, without a note)
    where = f"is in the name of {shown(named)} only" if named else "is in no N_name folder's name"
    return (f"note: --trigger-word '{trigger}' {where}: the images of {shown(others)} "
            f"train with it{' too' * bool(named)} (those without a caption on it alone, in place of "
            "their folder's name); for several concepts leave --trigger-word out: each N_name folder's name is its "
            "images' caption, as in kohya")


def trigger_moved(records: list, config: RunConfig, trigger: str | None) -> str | None:
    """The note where --shuffle-tags or --tag-dropout vary the trigger word with the other tags: in a caption that
    has it past the tags kept in front (--keep-tokens, or its own --keep-tokens-separator part), as a
    --caption-prefix or a tag before it puts it. kohya does the same, without a word. Without --trigger-word, each
    N_name folder's name is its images' concept word (several concepts' folders, as the README has them), said
    where a tag before it (a --caption-prefix) pushed it past the tags kept."""
    moved = []
    for record in records:
        word = trigger or concept_of(record)
        if not word:
            continue
        data = folder_config(config, record.settings).data
        if not (data.shuffle_tags or data.tag_dropout):
            continue
        tags = [tag.strip() for tag in record.caption.split(data.caption_separator) if tag.strip()]
        front, end = record.kept_tags or (data.keep_tokens, 0)
        # (a trigger word of several tags, "my style, watercolor": each of them is a tag the shuffle moves)
        found = [next((i for i, tag in enumerate(tags) if has_word(tag, part)), -1)
                 for part in trigger_tags(word, data)]
        at = None if min(found) < 0 else max(found)  # (a caption of some of its tags alone has no trigger word)
        varied = len(tags) - end - front  # the tags a shuffle moves about (one alone stays), a dropout drops
        # (a folder's word is said where its own caption keeps it in front, and a --caption-prefix put it past:
        # a tag of a caption's own shuffled as the user asked is no concept word left out)
        own = [tag.strip() for tag in (record.own_caption or "").split(data.caption_separator) if tag.strip()]
        pushed = trigger or (record.own_caption is not None and next(
            (i for i, tag in enumerate(own) if has_word(tag, word)), front) < front)
        if at is not None and pushed and front <= at < len(tags) - end and (data.tag_dropout or varied > 1):
            moved.append((record, at, front, data, word))
    if not moved:
        return None
    record, at, front, data, word = moved[0]
    keep = max(at for _, at, _, _, _ in moved) + 1
    how = " and ".join(word for word, on in (("moves", data.shuffle_tags), ("is left out now and then",
                                                                            data.tag_dropout)) if on)
    kept = f"the {front} tag(s) kept in front" if front else "the tags kept in front (none: --keep-tokens 0)"
    count = len(trigger_tags(word, data))
    where = (f"its {count} tags reach tag {at + 1} in {record.relpath}'s" if count > 1 else
             f"in {record.relpath}'s it is tag {at + 1}")
    words = list(dict.fromkeys(m[4] for m in moved))
    named = f"the trigger word '{trigger}'" if trigger else (
        f"the concept word of each N_name folder ({'their names' if len(words) > 1 else 'its name'}: "
        f"{', '.join(repr(w) for w in words)}), which a --caption-prefix put past the tags kept,")
    lead = len([tag for tag in data.caption_prefix.split(data.caption_separator) if tag.strip()])  # (before it)
    return (f"note: {named} {how} with the other tags in {len(moved)} of {len(records)} captions "
            f"({where}, past {kept}), as in kohya; to keep it in place, pass --keep-tokens {keep}"
            + (f" ({lead + count} where each caption file starts with it{', after the --caption-prefix' * bool(lead)})"
               if keep > lead + count and trigger else ""))


def trigger_tags(trigger: str, data: DataConfig) -> list[str]:
    """The tags a trigger word is, split as the captions are."""
    return [part.strip() for part in trigger.split(data.caption_separator) if part.strip()] or [trigger]


def some_trained_per_epoch(report: ScanReport, data: str | None) -> None:
    """Refuse a dataset of which no image trains in an epoch (every concept's balancing rounds to none)."""
    if not report.summary()["samples_per_epoch"]:
        raise LowvramError(f"--data {data}: no image would train in an epoch: the balancing of every concept rounds "
                           "to none of its images; raise a balancing (or repeats)")


def hold_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Split usable image records into (training, validation) by `fraction`, chosen by the seed from a
    content-ordered list, so the same dataset and seed always hold out the same images. The copies of a held-out
    image (one content under several names) are held out with it: validating on an image that trains measures how
    well it was learnt, not overfitting."""
    if len(records) < 2:
        raise LowvramError(f"--validation-split: the dataset has {len(records)} usable image(s); holding some out "
                           "needs at least 2 (or pass --validation-data DIR)")
    ordered = sorted({r.sha256 for r in records})  # each content once: (without copies, as each image)
    if len(ordered) < 2:
        raise LowvramError(f"--validation-split: the dataset's {len(records)} usable images are copies of one image; "
                           "holding some out leaves none to train (pass --validation-data DIR)")
    count = min(len(ordered) - 1, max(1, round(len(records) * fraction)))
    contents = set(random.Random(f"validation/{seed}").sample(ordered, count))
    held = {id(r) for r in records if r.sha256 in contents}
    return [r for r in records if id(r) not in held], [r for r in records if id(r) in held]


def dataset_to_check(run: ResolvedRun) -> tuple[Path, str | None]:
    """The dataset (a folder or a dataset file) `run` trains on, and its trigger word: --data's, or the built-in
    sample dataset train --data sample trains on, written where the cache is."""
    if run.uses_sample_data:
        return write_sample_dataset(run.cache_dir / SAMPLE_DATASET), run.config.data.trigger_word or SAMPLE_TRIGGER
    return Path(run.config.data.data), run.config.data.trigger_word


def _is_report(path: Path) -> bool:
    """Whether `path` holds a report check-data wrote, or nothing (a new one replaces it): a report's JSON starts
    with its root, its lines ended as the system ends them (CRLF on Windows)."""
    try:
        with open(path, "rb") as fh:
            start = fh.read(len(REPORT_START) + 1)
    except OSError:
        return False
    return not start or start.replace(b"\r\n", b"\n").startswith(REPORT_START)


def check_data(run: ResolvedRun, report_path: Path | None, verbose: bool, console: Console | None = None,
               captions: bool = False) -> list[ScanReport]:
    """`lowvram check-data`: scan, print the summary (also when nothing is usable), optionally write JSON (of the
    training images; a dataset file's is_reg subsets are summed up after them); then the regularization set's
    (--reg-data's, or a dataset file's is_reg subsets'). The scans: the dataset's, and the regularization set's."""
    console = console or log_console()
    data, trigger = dataset_to_check(run)
    dataset = read_dataset(data) if is_dataset_file(data) else None
    folders = [subset.folder for subset in dataset.subsets] if dataset else [data]
    if report_path and str(report_path) != "-" and (windows := windows_output_problem("--report", report_path) or (
            (why := windows_name_problem(Path(report_path).name)) and f"--report: {why}; name another")):
        raise LowvramError(windows)
    for folder in folders if report_path else ():
        if Path(report_path).resolve().is_relative_to(Path(folder).resolve()):
            raise LowvramError(f"--report: {report_path} is inside the dataset folder {folder}, which lowvram never "
                               "writes to; write the report elsewhere")
    to_stdout = str(report_path) == "-"
    # a pipe or /dev/stdout would be read to see whose it is (waiting for ever), a link replaced by a file
    if report_path and not to_stdout and (Path(report_path).is_symlink() or (
            Path(report_path).exists() and not Path(report_path).is_file())):
        raise LowvramError(f"--report: {report_path} is not a file lowvram can write the report to (a folder, a "
                           "pipe, a device or a link); name a file, e.g. report.json, or - for stdout")
    destination = "-" if to_stdout else report_path  # (to stdout: the JSON alone, the tables on stderr)
    if to_stdout:
        report_path = None
    if report_path and Path(report_path).exists() and not _is_report(Path(report_path)):  # a LoRA, a config, ...
        raise LowvramError(f"--report: {report_path} exists and is not an earlier check-data report; name a new file")
    if report_path and (blocking := file_in_the_way(Path(report_path).parent)):  # said before the scan, not after
        raise LowvramError(f"--report: {blocking} is a file, not a folder; name the report in a folder, e.g. "
                           "report.json")
    try:
        report = scan(run, data, trigger, console, listed_above=True)
    except NoUsableImages as exc:
        exc.report.print_summary(console, verbose)
        _write_report(destination, exc.report)
        raise
    report.print_summary(console, verbose)
    if captions:
        report.print_captions(console, run.config.data.caption_separator)
    for note in caption_notes(report.usable, run.config, trigger):
        console.print(Text(note, style="yellow"), soft_wrap=True)
    if cut := cut_captions(report.usable, family_tokenizer(run.family), run.text_reading):  # (training says it too)
        console.print(Text(cut, style="yellow"), soft_wrap=True)
    if len(run.resolutions) > 1:  # the buckets above are --resolution's; every image trains at each
        sides = ", ".join(f"{side} px" for side in run.resolutions)
        console.print(f"each image trains at {sides}: {report.summary()['samples_per_epoch'] * len(run.resolutions)} "
                      "samples per epoch with repeats (the buckets above are the first resolution's)")
    reports = [report]
    if run.config.data.reg_data or has_regularization_subsets(run.config.data.data):
        try:
            reports.append(scan(run, Path(run.config.data.reg_data or data), None, console, regularization=True,
                                listed_above=True))
        except NoUsableImages as exc:
            exc.report.print_summary(console, verbose, regularization=True)
            _write_report(destination, report, exc.report)
            raise
        reports[-1].print_summary(console, verbose, regularization=True)
        if captions:
            reports[-1].print_captions(console, run.config.data.caption_separator)
        for note in class_image_notes(report, reports[-1], run.config.data.trigger_word):
            console.print(Text(note, style="yellow"), soft_wrap=True)
        epochs = counted_epochs(run, report.usable, reports[-1].usable)
        balance = regularization_balance(epochs)
        idle = idle_regularization(epochs, run.config.data.prior_loss_weight)
        console.print(Text(f"warning: {balance}; {idle}" if idle else balance, style="yellow" if idle else ""),
                      soft_wrap=True)  # ([[datasets]] as written, not as markup)
    held = dataset.values.get("validation_data") if dataset else None
    if held:  # (a OneTrainer validation concept: found, and its images counted, where check-data scans no more)
        console.print(f"validation: {held}, {images_below(Path(held))} image(s) held out, validated on as training "
                      f"does; {shell_line('lowvram', 'check-data', held)} checks them", soft_wrap=True)
    if _write_report(destination, *reports, balance=balance if len(reports) > 1 else None):
        console.print(f"report written to {report_path}")
    return reports


def _write_report(path: Path | None, report: ScanReport, regularization: ScanReport | None = None,
                  balance: str | None = None) -> bool:
    """The JSON report (to `path`, or stdout for -) of the dataset and, under "regularization", of its class images
    with how an epoch balances them. Whether a file was written."""
    more = {"regularization": regularization.to_json() | ({"balance": balance} if balance else {})} if regularization \
        else None
    if path and str(path) == "-":
        print(report.json_text(more), end="")
    elif path:
        report.write_json(Path(path), more)
    return bool(path) and str(path) != "-"
