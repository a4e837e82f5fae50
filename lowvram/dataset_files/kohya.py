"""A kohya dataset config (sd-scripts' `--dataset_config`: a TOML or JSON file of `[general]`, `[[datasets]]` and
`[[datasets.subsets]]`) read as lowvram's dataset: its image folders with their repeats, class tokens and
regularization flag, and the lowvram options its settings set.

kohya settles each setting per subset: the subset's own, else its dataset's, else `[general]`'s. lowvram holds the
dataset's settings once per run. Caption and augmentation settings every subset sets are the first training
subset's for the run (the lowvram options of the same meaning), and a subset that sets one otherwise trains its images
with its own, with a note; one that some subsets leave out is the run's for those (kohya fills them from its
arguments: the training config's), and each other's own; the caption prefix and suffix stay each subset's own. Datasets
of the same subsets at different resolutions are kohya's multi-resolution training (--extra-resolutions); datasets
of other images at other resolutions or batch sizes train each subset at its dataset's. Settings that would make a
different kind of run (face-crop augmentation) are refused, as are caption rewrites lowvram lacks, each
in one line naming the setting and the fix. An image folder is read as kohya reads it: its images sit
directly in it, and its name gives no repeats. A relative path is taken from the current folder, as kohya takes
it, else from the file's folder.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from lowvram.config import fields_by_name
from lowvram.dataset_files.subsets import DatasetFile, Subset, folder_label, image_tree, repeats_of, settle
from lowvram.errors import LowvramError
from lowvram.files import expand_home, local_path, not_found_hint, text_of
from lowvram.kohya_config import NO_BUCKETS, REFUSED_SETTINGS
from lowvram.kohya_names import KOHYA_FLAGS
from lowvram.kohya_values import as_number
from lowvram.option_values import MAX_RESOLUTION, MIN_RESOLUTION

# settings of a whole dataset: subsets share them, and lowvram trains one value per run
RUN_SETTINGS = {"resolution": "resolution", "batch_size": "batch_size", "enable_bucket": "bucket",
                "min_bucket_reso": "min_bucket_side", "max_bucket_reso": "max_bucket_side",
                "bucket_reso_steps": "bucket_step", "bucket_no_upscale": "bucket_no_upscale",
                "validation_split": "validation_split"}
RUN_SWITCHES = {"enable_bucket", "bucket_no_upscale"}
# settings of a dataset that its subsets keep where datasets differ (Subset's fields), and how a note says them
OWN_SETTINGS = {"resolution": "at {} px", "batch_size": "in batches of {}"}
# settings kohya keeps per subset, as lowvram's options: the first training subset's are the run's, others its own
SUBSET_SETTINGS = {"shuffle_caption": "shuffle_tags", "keep_tokens": "keep_tokens", "caption_extension":
                   "caption_extension", "flip_aug": "flip", "color_aug": "color_jitter", "random_crop": "crop",
                   "caption_dropout_rate": "caption_dropout", "caption_tag_dropout_rate": "tag_dropout",
                   "caption_dropout_every_n_epochs": "caption_dropout_every",
                   "alpha_mask": "alpha_mask", "keep_tokens_separator": "keep_tokens_separator",
                   "enable_wildcard": "wildcards", "caption_separator": "caption_separator",
                   "secondary_separator": "secondary_separator"}
# a subset that leaves a setting out has kohya's default
KOHYA_DEFAULTS = {"shuffle_caption": False, "keep_tokens": 0, "caption_extension": ".caption", "flip_aug": False,
                  "color_aug": False, "random_crop": False, "caption_dropout_rate": 0.0,
                  "caption_tag_dropout_rate": 0.0, "alpha_mask": False, "keep_tokens_separator": "",
                  "enable_wildcard": False, "caption_separator": ",", "secondary_separator": "",
                  "caption_dropout_every_n_epochs": 0}
SWITCH_VALUES = {"color_aug": (0.1, 0.0), "random_crop": ("random", "center")}  # kohya's switch -> (on, off)
STRUCTURE = {"image_dir", "num_repeats", "class_tokens", "is_reg", "caption_prefix", "caption_suffix",
             "metadata_file", "recursive"}  # per subset
# nothing lowvram does changes with these: it caches its own scan, and resizes as it resizes
INERT = {"cache_info", "resize_interpolation", "debug_dataset"}
# settings whose work lowvram does otherwise, and the note that says how
OTHERWISE = {"validation_seed": "validation_seed: lowvram holds out the images --seed chooses (the run's seed)"}


# kohya's settings that change nothing lowvram trains (caption token warm-up, other models' prompts), passed over
UNUSED = {"token_warmup_min", "token_warmup_step", "custom_attributes", "system_prompt"}
KNOWN = set(RUN_SETTINGS) | set(SUBSET_SETTINGS) | STRUCTURE | INERT | set(OTHERWISE) | set(REFUSED_SETTINGS) | UNUSED


def is_kohya_dataset(doc: Any) -> bool:
    return isinstance(doc, dict) and "datasets" in doc


# a subset's note, which a kohya config's own caption_extension answers (kohya's settings fall back to its arguments)
NO_CAPTION_EXTENSION = "no caption_extension: kohya would read .caption files only"


def read_kohya_dataset(doc: dict[str, Any], path: Path) -> DatasetFile:
    """The dataset a kohya dataset config (`doc`, read from `path`) describes. Raises LowvramError, one line per
    problem, all at once."""
    problems: list[str] = []
    notes: list[str] = []

    def problem(key: str, text: str) -> None:
        problems.append(f"{path}: {key}: {text}")

    general = doc.get("general", {})
    datasets = doc.get("datasets")
    unknown_sections = sorted(set(doc) - {"general", "datasets"})
    if unknown_sections:
        notes.append(f"not read: {', '.join(unknown_sections)} (kohya's dataset files hold [general] and "
                     "[[datasets]])")
    if not isinstance(general, dict) or not isinstance(datasets, list) or not datasets or not all(
            isinstance(d, dict) for d in datasets):
        raise LowvramError(f"{path}: not a kohya dataset config: it needs [[datasets]] with [[datasets.subsets]] "
                           "that name an image_dir each (or give --data an image folder)")
    subsets: list[Subset] = []
    per_dataset: list[list[Subset]] = []  # the subsets of each dataset
    settings: list[dict[str, Any]] = []  # each subset's settled settings, in order
    run_values: dict[str, list[tuple[Any, str]]] = {}  # per run setting: (value, which dataset)
    holds_out: list[tuple[Any, str]] = []  # each dataset's validation_split, kohya's 0 where it sets none
    for number, dataset in enumerate(datasets, 1):
        where = f"datasets[{number}]" if len(datasets) > 1 else "datasets"
        layers = {**general, **{k: v for k, v in dataset.items() if k != "subsets"}}
        for key in RUN_SETTINGS:
            if key in layers:
                run_values.setdefault(key, []).append((layers[key], where))
        split = layers.get("validation_split", 0.0)
        holds_out.append((float(split) if isinstance(split, int) and not isinstance(split, bool) else split, where))
        seen: set[Path] = set()
        per_dataset.append([])
        entries = dataset.get("subsets")
        if isinstance(entries, dict):  # ([datasets.subsets]: one table, where kohya reads a list of them)
            problem(where, "[datasets.subsets] is written with one pair of brackets; write [[datasets.subsets]] (two "
                    "pairs: a list of subsets, as kohya reads it)")
            continue
        if not isinstance(entries, list) or not entries:
            problem(where, "no [[datasets.subsets]]; add one with image_dir = \"FOLDER\"")
            continue
        for index, entry in enumerate(entries, 1):
            name = f"{where}.subsets[{index}]"
            settled = {**layers, **entry} if isinstance(entry, dict) else {}
            for key in sorted(set(RUN_SETTINGS) & set(entry) if isinstance(entry, dict) else ()):
                # (kohya's schema refuses them there; they were passed over, unsaid)
                problem(f"{name} {key}", "a dataset's setting, not a subset's: its subsets share it; move it to "
                        "the [[datasets]] entry (or [general]), or make the subset a dataset of its own")
            given = _subset(settled, path, name, problem)
            if given is None:
                continue
            tree = settled.get("recursive") is True and given.captions is None  # (each folder of it, as kohya)
            for subset in [replace(given, folder=folder) for folder in image_tree(given.folder)] if tree else [given]:
                if subset.folder in seen:
                    dropped = ("this is_reg subset is left out: no class images come of it (kohya drops it too)"
                               if subset.regularization else "this second subset of it is left out, as kohya drops it")
                    notes.append(f"{name}: {subset.folder} is already a subset of this dataset; {dropped}")
                    continue
                seen.add(subset.folder)
                if "caption_extension" not in settled and subset.captions is None and subset.folder.is_dir() and any(
                        subset.folder.glob("*.txt")) and not any(subset.folder.glob("*.caption")):
                    notes.append(f"{name}: {NO_CAPTION_EXTENSION} (there are none); lowvram reads the .txt captions "
                                 "there (caption_extension = \".txt\" says so)")
                named = repeats_of(subset.folder.name)
                if "num_repeats" not in settled and named and named > 1:  # (a folder of kohya's layout; not 2019/)
                    notes.append(f"{name}: image_dir {subset.folder.name} trains once an epoch, as in kohya: a "
                                 f"dataset file reads num_repeats, not the folder's {named}_ (num_repeats = {named} "
                                 "repeats it so)")
                subsets.append(subset)
                per_dataset[-1].append(subset)
                settings.append(settled)
    if "validation_split" in run_values:  # a dataset without one holds nothing out in kohya: so they differ
        run_values["validation_split"] = holds_out
    if subsets and not any(not s.regularization for s in subsets):
        problem("datasets", "every subset is is_reg = true; add the images to train on as a subset without is_reg")
    batch_sizes = {json.dumps(value, default=str) for value, _ in run_values.get("batch_size", [])}
    extra = _several_resolutions(run_values.get("resolution", []), per_dataset) if len(batch_sizes) < 2 else None
    if extra:  # the same images at several resolutions: once each, at each resolution
        run_values["resolution"] = run_values["resolution"][:1]
        settings, subsets = settings[:len(per_dataset[0])], subsets[:len(per_dataset[0])]
    else:  # other images at other resolutions or batch sizes: each dataset's subsets at its own (the first's:
        # the run's)
        own = {key: _own_values(key, run_values.get(key, []), per_dataset, notes) for key in OWN_SETTINGS}
        for key, values in own.items():
            if values is not None:
                run_values[key] = run_values[key][:1]
        # each dataset's regularization images balance with its own training images, as kohya's do
        dataset_of = {id(subset): number for number, mine in enumerate(per_dataset, 1) for subset in mine}
        subsets = [replace(subset, **{key: (own[key] or {}).get(id(subset)) for key in OWN_SETTINGS},
                           dataset=dataset_of[id(subset)] if len(per_dataset) > 1 else None) for subset in subsets]
    values = _run_values(run_values, problem) | ({"extra_resolutions": extra} if extra else {})
    # kohya's default, where neither the file nor a config naming it sets it
    assumed = {} if "enable_bucket" in run_values else {"bucket": (False, NO_BUCKETS.format(where="[general]"))}
    caption_values, subsets, assumed_captions = _subset_values(settings, subsets, notes)
    values |= caption_values
    assumed |= assumed_captions
    unread = sorted({key for settled in settings for key in settled} - (KNOWN - UNUSED))
    # kohya refuses a key its schema lacks: a misspelt one would otherwise train without what it meant to set
    misspelt = {key: meant[0] for key in unread if key not in UNUSED
                and (meant := difflib.get_close_matches(key, KNOWN, n=1, cutoff=0.8))}
    for key, meant in misspelt.items():
        problem(key, f"no kohya dataset setting is called that; did you mean {meant}?")
    left = [key for key in unread if key not in misspelt]
    if values.get("validation_split"):  # (a seed of no split chooses nothing)
        notes.extend(why for key, why in OTHERWISE.items() if any(key in settled for settled in settings))
    for key in [key for key in left if f"--{key}" in KOHYA_FLAGS and key not in REFUSED_SETTINGS]:
        # (a training config's, which kohya refuses here: it was "not carried over (lowvram has no such setting)")
        ours = KOHYA_FLAGS[f"--{key}"]
        problem(key, "a training setting, not a dataset file's (kohya refuses it here); " + (
            f"leave it out {ours}" if ours.startswith("(") else
            f"give it in the training config, or as lowvram's {ours.split(' (')[0]}"))
        left.remove(key)
    if left:
        notes.append(f"not carried over (lowvram has no such setting): {', '.join(left)}")
    for key, why in REFUSED_SETTINGS.items():  # (network_multiplier 1: kohya's default, the strength trained here)
        if any(_set(settled.get(key)) and not (key == "network_multiplier" and settled[key] == 1)
               for settled in settings):
            problem(key, why)
    if problems:
        raise LowvramError("\n".join(problems))
    return DatasetFile(path.resolve(), "kohya dataset config", tuple(subsets), values, tuple(notes), "is_reg",
                       assumed)


def _set(value: Any) -> bool:
    return value not in (None, False, "", [], 0)


def _subset(settled: dict[str, Any], path: Path, name: str, problem) -> Subset | None:
    """One [[datasets.subsets]] entry with its settings settled, or None (its problems recorded)."""
    switches = [key for key, default in KOHYA_DEFAULTS.items() if isinstance(default, bool)] + ["is_reg", "recursive"]
    for key in switches:  # ("false" in quotes was read as on, "true" for is_reg as off; kohya refuses any but a bool)
        if key in settled and not isinstance(settled[key], bool):
            problem(f"{name} {key}", f"{settled[key]!r} is no switch; write true or false, without quotes")
    # (said by the subset, not as the lowvram option it becomes, which no user of the file gave)
    for key in ("keep_tokens", "caption_dropout_every_n_epochs"):
        if key in settled and (type(settled[key]) is not int or settled[key] < 0):
            problem(f"{name} {key}", f"{settled[key]!r} is no whole number of 0 or more")
    for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        value = settled.get(key)
        if key in settled and (type(value) not in (int, float) or not 0 <= value < 1):
            problem(f"{name} {key}", f"{value!r} is no rate from 0 up to 1 (1 itself would leave out all)")
    image_dir = settled.get("image_dir")
    if not isinstance(image_dir, str) or not image_dir:
        problem(name, "no image_dir; name the folder its images are in")
        return None
    folder = local_path(image_dir, path)
    if not folder.is_dir():
        beside = path.resolve().parent
        read = ("" if expand_home(image_dir).is_absolute() or folder.exists() else
                " (a relative path is read from the current folder, as kohya reads it" +
                ("" if beside == Path.cwd().resolve() else f", then from {beside}") + ")")
        problem(f"{name} image_dir", f"{'not a folder' if folder.exists() else 'folder not found'}: {image_dir}"
                                     f"{not_found_hint(image_dir) or read}")
        return None
    repeats = as_number(settled.get("num_repeats", 1), f"{name} num_repeats", problem, int)
    if repeats < 1:
        problem(f"{name} num_repeats", f"{repeats} repeats would leave its images out; give 1 or more, or drop the "
                "subset")
    tokens = settled.get("class_tokens")
    if tokens is not None and not isinstance(tokens, str):
        problem(f"{name} class_tokens", f"{tokens!r} is not text")
        tokens = None
    wrap = []
    for key in ("caption_prefix", "caption_suffix"):
        text = settled.get(key) or ""
        if not isinstance(text, str):
            problem(f"{name} {key}", f"{text!r} is not text")
            text = ""
        wrap.append(text)
    captions = None
    if _set(settled.get("metadata_file")):
        captions = _metadata_captions(local_path(str(settled["metadata_file"]), path),
                                      f"{name} metadata_file", problem)
    folder = folder.resolve()
    # (kohya trains an empty caption there, and its folder mode the class words: lowvram reads an N_name folder as
    # its folder mode does, the images' concept; a folder of another name ("regflat") is no concept's words)
    named = bool((tokens or "").strip()) or repeats_of(folder.name) is not None
    return Subset(folder, repeats, (tokens or "").strip() or folder_label(folder), settled.get("is_reg") is True, *wrap,
                  captions, label_captions=named)


def is_kohya_metadata(doc: object) -> bool:
    """Whether a JSON document is kohya's fine-tuning metadata (merge_captions_to_metadata's: image key -> caption
    and tags)."""
    return (isinstance(doc, dict) and bool(doc) and all(isinstance(entry, dict) for entry in doc.values())
            and any("caption" in entry or "tags" in entry for entry in doc.values()))


def kohya_metadata_use(metadata: Path | str, images: Path | str) -> str:
    """How lowvram reads a kohya fine-tuning metadata file: in a dataset file's subset."""
    return (f"give --data a kohya dataset file whose [[datasets.subsets]] holds image_dir = {json.dumps(str(images))} "
            f"and metadata_file = {json.dumps(str(metadata))}")


def _metadata_captions(metadata: Path, key: str, problem) -> dict[str, str]:
    """kohya's fine-tuning metadata (merge_captions_to_metadata's JSON: image key -> caption and tags) as image key ->
    caption: the caption's first line, then the tags, as kohya joins them; an entry with neither is left out."""
    try:
        entries = json.loads(text_of(metadata))  # (a BOM, Notepad's, too)
    except FileNotFoundError:
        problem(key, f"file not found: {metadata}{not_found_hint(metadata)}")
        return {}
    except (OSError, ValueError) as exc:
        problem(key, f"{metadata} is not readable JSON ({exc}); make it with kohya's merge_captions_to_metadata.py")
        return {}
    if not isinstance(entries, dict) or not all(isinstance(entry, dict) for entry in entries.values()):
        problem(key, f"{metadata} is not kohya's metadata (a JSON object of image key: {{caption, tags}})")
        return {}
    captions = {}
    for image, entry in entries.items():
        caption = str(entry.get("caption") or "").strip().split("\n")[0].strip()
        tags = str(entry.get("tags") or "").strip()
        text = ", ".join(part for part in (caption, tags) if part)
        if text:
            captions[image] = text
    return captions


def _several_resolutions(found: list[tuple[Any, str]], per_dataset: list[list[Subset]]) -> str | None:
    """kohya's way to train images at several resolutions: datasets of the same subsets, each at its own square
    resolution. The others than the first as --extra-resolutions' value; None for any other datasets."""
    sides = [value[0] if isinstance(value, list) and len(value) == 2 and value[0] == value[1] else value
             for value, _ in found]
    if len(found) != len(per_dataset) or len(set(map(str, sides))) != len(sides) or len(sides) < 2:
        return None
    if any(not isinstance(side, int) for side in sides) or any(subsets != per_dataset[0] for subsets in per_dataset):
        return None
    return ",".join(str(side) for side in sides[1:])


def _own_values(key: str, found: list[tuple[Any, str]], per_dataset: list[list[Subset]], notes: list[str]
                ) -> dict[int, int] | None:
    """kohya's datasets of different images at different square resolutions or batch sizes (`key`): the value of
    each subset (by id) of a dataset other than the first whose value differs from the first's (none where its
    subsets are missing, which is said on its own); None where the datasets agree, where one leaves it to the
    command line, or where one is not a value lowvram trains (refused later, naming the datasets)."""
    values = [value[0] if key == "resolution" and isinstance(value, list) and len(value) == 2 and value[0] == value[1]
              else value for value, _ in found]
    valid = all(isinstance(v, int) and not isinstance(v, bool) and (
        MIN_RESOLUTION <= v <= MAX_RESOLUTION and v % 8 == 0 if key == "resolution" else v >= 1) for v in values)
    if len(found) != len(per_dataset) or not valid or len(set(values)) < 2:
        return None
    own = {id(subset): value for value, subsets in zip(values[1:], per_dataset[1:], strict=True) if value != values[0]
           for subset in subsets}
    what = OWN_SETTINGS[key]
    notes.extend(f"{where}: its images train {what.format(value)} (the others {what.format(values[0])})"
                 for value, (_, where) in zip(values[1:], found[1:], strict=True) if value != values[0])
    return own


def _run_values(found: dict[str, list[tuple[Any, str]]], problem) -> dict[str, Any]:
    """A dataset-wide setting all datasets agree on, as its lowvram option."""
    values: dict[str, Any] = {}
    for key, seen in found.items():
        if key in RUN_SWITCHES and (wrong := next(((v, where) for v, where in seen if not isinstance(v, bool)), None)):
            # ("false" in quotes turned buckets on; kohya refuses any but a bool)
            problem(f"{wrong[1]} {key}", f"{wrong[0]!r} is no switch; write true or false, without quotes")
            continue
        distinct = {json.dumps(value, sort_keys=True, default=str) for value, _ in seen}
        if len(distinct) > 1:
            listed = ", ".join(f"{value} ({where})" for value, where in seen)
            problem(key, f"the datasets differ ({listed}); lowvram trains one value per run: give one in [general], "
                    "or train each dataset as a run of its own")
            continue
        value = seen[0][0]
        if key == "resolution" and isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
            value = value[0]  # kohya's [width, height]; one that is not square is read as the options read "W,H"
        values[RUN_SETTINGS[key]] = value  # (enable_bucket = true too: over a kohya config's square crop, as kohya)
    return values


def _subset_values(settings: list[dict[str, Any]], subsets: list[Subset], notes: list[str]
                   ) -> tuple[dict[str, Any], list[Subset], dict[str, tuple[Any, str]]]:
    """Caption and augmentation settings as lowvram options: of those every subset sets, the first training
    subset's are the run's, and each subset keeps those it sets otherwise (a note names each setting the subsets
    differ on). A setting some subsets leave out is each setting subset's own, and the run's value (the training
    config's or the command line's, which kohya fills a subset's gaps from) the others'; returned with the kohya
    default the run takes where no layer sets one (option -> (value, note))."""
    keys = [key for key in SUBSET_SETTINGS if any(key in settled for settled in settings)]
    if not keys or not subsets or all(subset.regularization for subset in subsets):
        return {}, subsets, {}
    order = sorted(range(len(subsets)), key=lambda i: subsets[i].regularization)  # training ones first
    # (the gaps were kohya's defaults here, which replaced a kohya config's shuffle_caption for the whole run)
    partly = [key for key in keys if not all(key in settled for settled in settings)]
    written = [{key: settings[i][key] for key in keys if key not in partly} for i in order]
    names = {option: key for key, option in SUBSET_SETTINGS.items()} | {"caption_lines": "enable_wildcard"}
    each = [_as_options(part | {key: settings[i][key] for key in partly if key in settings[i]})
            for part, i in zip(written, order, strict=True)]
    own_options = {option for key in partly for option in _as_options({key: KOHYA_DEFAULTS[key]})}
    values, owns = settle([{k: v for k, v in options.items() if k not in own_options} for options in each], notes,
                          "subsets", written, names)
    for own, options in zip(owns, each, strict=True):
        own |= {key: fields_by_name()[key][1].default if value is None else value for key, value in options.items()
                if key in own_options and not (key == "keep_tokens" and value == 0 and options.get("shuffle_tags")
                                               is False)}  # (its tags stay put: nothing to keep, nothing to say)
    for key in partly:
        setting = [subsets[i].folder.name for i in order if key in settings[i]]
        notes.append(f"{key}: set for {', '.join(setting)} alone, each training its images with its own; the other "
                     "subsets take the run's (the training config's or the command line's), as kohya fills them from "
                     "its arguments")
    if not values.get("keep_tokens"):
        values.pop("keep_tokens", None)  # kohya_ss writes it whether or not anything moves the tags
    if values.get("caption_lines") == "first":
        del values["caption_lines"]
    own_of = {order[n]: own for n, own in enumerate(owns)}
    # (lowvram's own default, .txt, differs from kohya's)
    assumed = {option: (value, (f"{key}: kohya's default {value} for the subsets that set none (none of the run's "
                               "options sets it)"))
               for key in partly for option, value in _as_options({key: KOHYA_DEFAULTS[key]}).items()
               if value != fields_by_name()[option][1].default}
    return values, [replace(subset, settings=own_of[i] or None) for i, subset in enumerate(subsets)], assumed


def _as_options(settled: dict[str, Any]) -> dict[str, Any]:
    """One subset's kohya caption and augmentation settings as the lowvram options of the same meaning."""
    values = {SUBSET_SETTINGS[key]: SWITCH_VALUES[key][0 if value else 1] if key in SWITCH_VALUES else value
              for key, value in settled.items()}
    if "caption_dropout_every" in values and not values["caption_dropout_every"]:
        values["caption_dropout_every"] = None  # kohya's 0 is off; lowvram's is no value
    if "wildcards" in values:  # kohya's wildcards read a caption file's lines as choices too
        values["caption_lines"] = "each" if values["wildcards"] else "first"
    return values
