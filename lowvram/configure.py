"""From option values to a validated `RunConfig`: TOML files, presets, flags and the web UI's form.

Each value is read as its option's type (`lowvram.config` declares them), checked against its choices, its range and
the other options (`lowvram.config_checks`), and every problem is reported at once, one line each, naming the option
and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import sys
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from lowvram.config import (
    FAMILIES,
    OFF_AT_ZERO,
    PATH_OPTIONS,
    SAMPLE_DATA,
    SECTIONS,
    SOURCE_LISTS,
    RunConfig,
    as_flag_words,
    fields_by_name,
    flag_name,
)
from lowvram.config_checks import config_problems
from lowvram.dataset_files import (
    is_dataset_document,
    is_dataset_file,
    read_dataset,
)
from lowvram.dataset_files.kohya import NO_CAPTION_EXTENSION as NO_SUBSET_EXTENSION
from lowvram.dataset_files.subsets import images_without_repeats
from lowvram.errors import LowvramError, not_safetensors, quoted, shell_line
from lowvram.files import (
    WINDOWS_DRIVE,
    absolute_path,
    backslash_hint,
    decode_hint,
    expand_home,
    local_path,
    not_found_hint,
    not_utf8,
    slashed,
    text_of,
)
from lowvram.kohya_config import NO_BUCKETS, NO_CAPTION_EXTENSION, flat_config, is_kohya_config, translate
from lowvram.kohya_gui_config import is_kohya_gui_config, translate_gui
from lowvram.kohya_launcher import is_launcher, launcher_config
from lowvram.kohya_names import kohya_hint, others_single_flags
from lowvram.lora_header import read_header, with_network_weights
from lowvram.lora_metadata import RECIPE_KEY
from lowvram.onetrainer_config import is_onetrainer_config, translate_onetrainer
from lowvram.option_values import (
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    area_side,
    parse_resolutions,
    parse_source,
    relocated_source,
    width_height,
)
from lowvram.other_trainers import (
    ai_toolkit_problem,
    is_ai_toolkit,
    is_simpletuner_backends,
    is_simpletuner_config,
    simpletuner_backends_problem,
    simpletuner_config_problem,
    yaml_or_env_problem,
)
from lowvram.prompts import is_prompt_list, prompt_list_problem, prompted
from lowvram.run_files import RECORD, checkpoint_named
from lowvram.run_folder_options import saved_run_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# options that answer one question: a layer that sets one of them replaces a lower layer's other
ALTERNATIVES = (("max_steps", "epochs"), ("validation_split", "validation_data"))


def _given_values(given: Collection[str]) -> Mapping[str, Any] | None:
    """The command line's option values, where `given` holds them (a name alone holds none)."""
    return given if isinstance(given, Mapping) else None


def read_config(path: Path, given: Collection[str] = ()) -> dict[str, Any]:
    """Option values from a `--config` file: lowvram's TOML (kohya's TOML configs too), or a OneTrainer or kohya_ss
    GUI config's JSON. `given`: the options the command line gives, which replace the file's: the file's values of
    them are not checked (a kohya config's paths on another machine, replaced by --model and --data)."""
    if Path(path).suffix.lower() == ".safetensors":
        return _read_recipe(Path(path), given)
    if is_launcher(Path(path)):
        return _read_launcher(Path(path), given)
    if Path(path).suffix.lower() in (".yaml", ".yml", ".env"):
        raise LowvramError(yaml_or_env_problem(Path(path), config_text(path), _given_values(given)))
    if Path(path).suffix.lower() != ".json":
        return read_toml(path, given)
    text = config_text(path)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise LowvramError(f"--config: {path} is not readable JSON: {exc}{decode_hint(text, exc)}") from None
    if is_simpletuner_backends(doc):
        raise LowvramError(simpletuner_backends_problem(Path(path), doc, "--config"))
    if is_simpletuner_config(doc):
        raise LowvramError(simpletuner_config_problem(Path(path), doc, _given_values(given)))
    if is_ai_toolkit(doc):  # (it reads a .json config as its .yaml)
        raise LowvramError(ai_toolkit_problem(Path(path), doc, _given_values(given)))
    if is_onetrainer_config(doc):
        values, notes = translate_onetrainer(doc, Path(path), prompted(given))
        return _translated(values, notes, Path(path), "a OneTrainer config", False, given)
    if is_kohya_gui_config(doc):
        values, notes = translate_gui(doc, Path(path), given if isinstance(given, Mapping) else None)
        return _translated(values, notes, Path(path), "a kohya_ss GUI config", True, given)
    if is_prompt_list(doc):
        raise LowvramError(prompt_list_problem(Path(path), "--config"))
    if is_dataset_document(doc):
        raise LowvramError(f"--config: {path} is JSON, not a TOML config; a dataset file (a kohya dataset config "
                           f"or a OneTrainer concepts file) is given as --data {path}")
    raise LowvramError(f"--config: {path} is no config lowvram reads: lowvram's and kohya's are TOML, OneTrainer's "
                       "JSON has model_type and training_method, kohya_ss's JSON LoRA_type")


def kohya_recipe(path: Path) -> tuple[bool | None, str] | None:
    """Whether a config file is kohya's (sd-scripts' TOML, a launcher script, kohya_ss's GUI JSON): None for another's;
    else whether it is for SDXL (True), SD1.5 (False) or does not say (None, sd-scripts' TOML), and what says so
    (kohya_ss's SDXL switch, the training script a launcher runs)."""
    path = Path(path)
    try:
        if is_launcher(path):
            script = re.search(r"(?:sdxl_)?train_network\.py", config_text(path))
            return (script.group().startswith("sdxl"), f"it runs {script.group()}") if script else (None, "")
        if path.suffix.lower() == ".json":
            doc = json.loads(config_text(path))
            if not is_kohya_gui_config(doc):
                return None
            if isinstance(doc.get("sdxl"), bool) and not doc.get("v2"):
                return doc["sdxl"], f"kohya_ss's SDXL switch is {'on' if doc['sdxl'] else 'off'} in it"
            return None, ""
        if path.suffix.lower() == ".toml" and is_kohya_config(tomllib.loads(config_text(path))):
            return None, ""
    except (LowvramError, ValueError):  # (said where the file is read)
        return None
    return None


def onetrainer_recipe(path: Path) -> tuple[bool, str] | None:
    """Whether a OneTrainer config is for SDXL (its model_type, by which OneTrainer loads the model), and what says
    so; None for another file."""
    try:
        doc = json.loads(config_text(Path(path))) if Path(path).suffix.lower() == ".json" else None
    except (LowvramError, ValueError):  # (said where the file is read)
        return None
    if not is_onetrainer_config(doc):
        return None
    return str(doc["model_type"]).upper().startswith("STABLE_DIFFUSION_XL"), f"its model_type is {doc['model_type']}"


def is_own_toml(path: Path) -> bool:
    """Whether a --config is lowvram's own TOML (not kohya's, whose translation sets kohya's defaults too, nor
    another trainer's JSON)."""
    if Path(path).suffix.lower() in (".json", ".yaml", ".yml", ".env", ".safetensors") or is_launcher(Path(path)):
        return False  # (as read_config tells them apart: any other file is read as TOML)
    try:
        return not is_kohya_config(tomllib.loads(config_text(path)))
    except (LowvramError, ValueError):  # (said where the file is read)
        return False


def config_text(path: Path, flag: str = "--config") -> str:
    """A config file's text: UTF-8 (with or without Notepad's byte-order mark) or UTF-16 (PowerShell 5's `>`)."""
    try:
        return text_of(path)
    except FileNotFoundError:
        raise LowvramError(f"{flag}: file not found: {path}{not_found_hint(path)}") from None
    except IsADirectoryError:
        raise LowvramError(f"{flag}: {path} is a folder; give the config file in it") from None
    except OSError as exc:
        raise LowvramError(f"{flag}: can't read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LowvramError(f"{flag}: {not_utf8(path, exc)}") from None


def _read_launcher(path: Path, given: Collection[str]) -> dict[str, Any]:
    """A kohya launcher script's training command as a kohya config: its flags over the values of the TOML its
    --config_file names, as kohya reads them."""
    doc, notes = launcher_config(config_text(path), path)
    for note in notes:
        print(f"{path}: {note}", file=sys.stderr)
    if isinstance(doc.get("config_file"), str):
        named = doc.pop("config_file")  # (kohya adds the .toml where it is left out)
        inner = local_path(named if named.lower().endswith(".toml") else f"{named}.toml", path)
        beside = path.resolve().parent / re.split(r"[\\/]", str(inner))[-1]  # (the GUI's printed command names
        inner = beside if not inner.exists() and beside.is_file() else inner  # its own machine's folder)
        text = config_text(inner, f"--config: {path}: its --config_file")
        try:
            doc = flat_config(tomllib.loads(text)) | doc
        except tomllib.TOMLDecodeError as exc:
            raise LowvramError(f"--config: {path}: its --config_file {inner} is not valid TOML: {exc}"
                               f"{backslash_hint(text)}") from None
    return _read_kohya(doc, path, given)


def _read_recipe(path: Path, given: Collection[str]) -> dict[str, Any]:
    """The options a LoRA lowvram trained was trained with (its `lowvram.config` metadata). The recipe names local
    files and folders by their names only (`RunConfig.to_shareable_dict`; a hub id, with its /, or a built-in model
    whole): those the command line does not give and that are not here are said to be needed."""
    try:
        metadata, tensors, _ = read_header(path)
    except FileNotFoundError:
        raise LowvramError(f"--config: file not found: {path}{not_found_hint(path)}") from None
    except (OSError, ValueError) as exc:
        raise LowvramError("--config: " + not_safetensors(path, exc, "pass a LoRA lowvram trained (its options "
                                                            "are in its metadata)")) from None
    if RECIPE_KEY not in metadata:
        if any(name.startswith(("lora_", "lycoris_")) or ".lora" in name for name in tensors):
            raise LowvramError(f"--config: {path} is a LoRA without lowvram's recipe (lowvram keeps its options in "
                               f"each LoRA it trains); `{shell_line('lowvram', 'info', path)}` shows the settings its "
                               f"metadata names: give them as flags, or train on from it with --network-weights")
        raise LowvramError(f"--config: {path} is a model or a LoRA without lowvram's recipe, not a config; a base "
                           "model is given as --model")
    values = read_toml(path, given, recipe=metadata[RECIPE_KEY])
    data = given.get("data") if isinstance(given, Mapping) else None  # a dataset file given names its own (a
    taken = set(read_dataset(Path(data)).values) if is_dataset_file(data) else set()  # validation concept's folder)
    needed = [name for name in recipe_needs(values) if name not in taken]
    named = [flag_name(fields_by_name()[name][1]) for name in needed]
    if named:
        optional = [flag for name, flag in zip(needed, named) if fields_by_name()[name][1].default is None]
        without = f" ({' or '.join(f'{flag} {chr(34) * 2}' for flag in optional)} trains without)" if optional else ""
        print(f"--config {path}: the LoRA's recipe names {', '.join(named)} by name only (from the machine that "
              f"trained it); give {' and '.join(named)} for this one{without}", file=sys.stderr)
    # a name found here may be anything of that name (a ./data of another project): said, to be seen
    found = [f"{flag_name(fields_by_name()[name][1])} {values[name]}" for name in _local_names(values)
             if name not in needed and name not in given and name not in taken]
    if found:
        print(f"--config {path}: the LoRA's recipe names these by name only, taken from here: {'; '.join(found)} "
              "(give them to train on others)", file=sys.stderr)
    return values


def recipe_needs(values: dict[str, Any]) -> list[str]:
    """The options of a LoRA's recipe (as read) that name local files or folders not here, by their names only: a
    hub id (its /, no ./ before it), a built-in model (a family's name) or the sample dataset needs none."""
    return [name for name, paths in _local_names(values).items() if not all(Path(local).exists() for local in paths)]


def _local_names(values: dict[str, Any]) -> dict[str, list[str]]:
    """The options of a recipe that name local files or folders, and those names: not a hub id (its /, no ./ before
    it), a built-in model (a family's name) or the sample dataset."""
    def paths(name: str, value: Any) -> list[str]:
        if name in SOURCE_LISTS:
            return [str(parse_source(str(item))[0]) for item in value]
        hub = "/" in value and not value.startswith(("./", "../"))
        return [] if value == SAMPLE_DATA or name == "model" and (hub or value in FAMILIES) else [value]

    return {name: local for name in ("model", "vae", *PATH_OPTIONS, *SOURCE_LISTS)
            if values.get(name) and (local := paths(name, values[name]))}


def read_toml(path: Path, given: Collection[str] = (), flag: str = "--config", recipe: str | None = None
              ) -> dict[str, Any]:
    """Option values from a TOML config file (a --config, or a --preset as `flag` says), relative paths resolved
    against the file's folder; `given` as for `read_config`. `recipe`: the TOML of a LoRA's recipe, read in place of
    the file's text, its names of files and folders kept as they are (they were another machine's)."""
    text = config_text(path, flag) if recipe is None else recipe
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LowvramError(f"{flag}: {path} is not valid TOML: {exc}{backslash_hint(text)}") from None
    if isinstance(doc.get("datasets"), list):
        raise LowvramError(f"--config: {path} is a kohya dataset config ([[datasets]] of image folders); pass it as "
                           f"--data {path}")
    if is_simpletuner_config(doc):  # (its config.toml: read as kohya's, refused key by key)
        raise LowvramError(simpletuner_config_problem(Path(path), doc, _given_values(given)))
    if is_kohya_config(doc):
        return _read_kohya(doc, path, given)
    known = fields_by_name()
    values: dict[str, Any] = {}
    problems = []
    for section, table in doc.items():
        if not isinstance(table, dict) and section in known:  # an option outside its table
            problems.append(f"{path}: {section} belongs in a table: write it under [{known[section][0]}]")
            continue
        if not isinstance(table, dict):  # (a key of no option: what it may have meant, as for one in a table)
            hint = _other_tools_key(section, known) or _closest_key(section, known)
            problems.append(f"{path}: unknown key '{section}' outside any [section]{hint}")
            continue
        if section not in SECTIONS:
            hint = _did_you_mean(section, list(SECTIONS))
            problems.append(f"{path}: unknown section [{section}]{hint}; sections are {', '.join(SECTIONS)}")
            continue
        for key, value in table.items():
            if key not in known or known[key][0] != section:
                where = (f" (it belongs in [{known[key][0]}])" if key in known else _other_tools_key(key, known)
                         or _closest_key(key, known, section))
                problems.append(f"{path}: unknown key '{key}' in [{section}]{where}")
                continue
            values[key] = value
    base = Path() if recipe is not None else path.resolve().parent
    for key in PATH_OPTIONS:  # (an absolute one, ~/ expanded, stays as it is: base / it is it)
        value = values.get(key)
        if isinstance(value, str) and value != SAMPLE_DATA and not (WINDOWS_DRIVE.match(value) and os.sep == "/"):
            here = base / expand_home(value)  # (img\10_cat written on Windows: where only img/10_cat is, that)
            other = slashed(value)
            values[key] = str(base / other if not here.exists() and other and (base / other).exists() else here)
    for key in SOURCE_LISTS:
        if isinstance(values.get(key), list):
            values[key] = [relocated_source(str(item), lambda path: base / expand_home(path)) for item in values[key]]
    for key in ("model", "vae"):
        value = values.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and recipe is None and (base / value).exists():
            values[key] = str(base / value)
    values = saved_run_options(values, Path(path), text, given)
    kept = _unreplaced(values, given)
    wrong_type = _parsed_values(kept)[1]
    if problems or wrong_type:  # with them, every value of the file that is wrong: one pass shows all there is to
        # fix (but for checks across options that a flag given may settle: those wait for every layer)
        flags = [flag_name(field) for name, (_, field, _) in fields_by_name().items() if name in given]
        flags += ["--resume"] * ("output" in given)  # (a checkpoint's name is looked for in the --output given)
        problems += [f"{path}: {line}" for line in _file_value_problems(kept) if line in wrong_type
                     or not any(re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", line) for flag in flags)]
    if problems:
        raise LowvramError("\n".join(problems))
    return with_dataset_settings(_spelled(kept), str(path))


def _spelled(values: dict[str, Any]) -> dict[str, Any]:
    """Values in another tool's spelling as lowvram's (kohya's float: fp32), as the flags' are read: the web UI's
    form lists lowvram's names only."""
    spelled = dict(values)
    for name, value in values.items():
        spelling = fields_by_name()[name][1].metadata.get("spelling")
        if spelling and isinstance(value, str):
            with contextlib.suppress(ValueError):  # (checked: not one)
                spelled[name] = spelling(value)
    return spelled


def _read_kohya(doc: dict[str, Any], path: Path, given: Collection[str]) -> dict[str, Any]:
    """A kohya sd-scripts config's values (`lowvram.kohya_config`), its notes printed; its paths are relative to the
    current folder, as kohya reads them."""
    values, notes = translate(doc, path, prompted=prompted(given))
    return _translated(values, notes, path, "a kohya sd-scripts config", True, given)


def _translated(values: dict[str, Any], notes: list[str], path: Path, kind: str, dataset_wins: bool,
                given: Collection[str]) -> dict[str, Any]:
    """Another trainer's config, translated: its notes printed, its values checked (less those the command line
    replaces), its dataset file's settings beneath them (over them for kohya's, whose dataset file wins as in
    kohya)."""
    print(f"{path}: read as {kind}", file=sys.stderr)
    data = given.get("data") if isinstance(given, Mapping) else None
    if is_dataset_file(data) and "bucket" in read_dataset(Path(data)).values:  # (kohya's --dataset_config: its own
        notes = [note for note in notes if note != NO_BUCKETS.format(where="the config")]  # enable_bucket wins)
    if "data" in given:  # the command line's images replace train_data_dir's, whose .txt files that note was of
        notes = [note for note in notes if note != NO_CAPTION_EXTENSION]
    for note in notes:
        print(f"{path}: {note}", file=sys.stderr)
    values = _unreplaced(values, given)
    for key in ("output", "cache_dir", "copy_to"):  # written on Windows (..\out): no name of one folder, but folders
        if isinstance(values.get(key), str) and (other := slashed(values[key])):
            values[key] = other
    for key in ("model", "vae", *PATH_OPTIONS):  # relative: from the current folder, as its trainer reads it, else
        value = values.get(key)                  # beside the file (a project folder's config run from elsewhere)
        if isinstance(value, str) and value != SAMPLE_DATA and (found := local_path(value, Path(path))) != expand_home(
                value):
            values[key] = str(found)
    data = values.get("data")
    if dataset_wins and isinstance(data, str) and not is_dataset_file(data) and (
            count := images_without_repeats(expand_home(data))):  # (kohya's: the command line's --data is lowvram's)
        print(f"{path}: train_data_dir {data} holds {count} images itself, in no N_name folder: sd-scripts finds no "
              "data there (kohya_ss counts no steps), lowvram trains each once per epoch; for kohya's repeats, move "
              f"them into a folder named N_name in it ({Path(data).name}/10_name: 10 times per epoch)",
              file=sys.stderr)
    layered = with_dataset_settings(values, str(path), dataset_wins=dataset_wins)
    elsewhere = _holds_out(given)
    if "validate_every" in values and not elsewhere and not any(layered.get(name) for name in (
            "validation_split", "validation_data")):
        del layered["validate_every"]  # kohya and OneTrainer validate nothing without images to validate on
        print(f"{path}: its validation interval is not used: nothing is held out for validation", file=sys.stderr)
    # the file's own values checked beside its dataset file's (a OneTrainer validation concept is the
    # validation data its validate_after needs); its interval against the command line's held-out images later
    # (the prompts the command line gives, which replace the file's, are its interval's: checked with them later)
    problems = _file_value_problems(layered, about=set(values) - ({"validate_every"} if elsewhere else set())
                                    - ({"sample_every"} if prompted(given) else set()))
    if problems:
        raise LowvramError("\n".join(f"{path}: {line}" for line in problems))
    return layered


def _holds_out(given: Collection[str]) -> bool:
    """Whether the command line holds images out for validation itself: a split, a folder, or a --data dataset
    file that has either (`given`: the flags with their values, or their names alone)."""
    if {"validation_split", "validation_data"} & set(given):
        return True
    data = given.get("data") if isinstance(given, Mapping) else None
    if not is_dataset_file(data):
        return False
    own = read_dataset(Path(data)).values
    return bool(own.get("validation_split") or own.get("validation_data"))


ASSUMED = "assumed by the dataset file"  # the key its assumed values travel under, to build_config
_SAID: set[str] = set()  # the notes of assumed values said in this process (a command builds its config twice)


def with_assumed(values: dict[str, Any]) -> dict[str, Any]:
    """The merged option values with a dataset file's assumed ones where no layer set the option (kohya's
    enable_bucket off), each said."""
    if ASSUMED not in values:
        return values
    values = dict(values)
    for name, (value, note) in values.pop(ASSUMED).items():
        if name not in values:
            values[name] = value
            if note not in _SAID:
                _SAID.add(note)
                print(note, file=sys.stderr)
    return values


def with_dataset_settings(layer: dict[str, Any], source: str, dataset_wins: bool = False, quiet: bool = False
                          ) -> dict[str, Any]:
    """One layer of options (a config file's, the flags, the web UI's form) with the settings of the dataset file
    (kohya's or OneTrainer's) it names as --data: beneath the layer's own values, which a note names where they
    replace one; over them where the layer is a kohya config, whose dataset file wins as in kohya. Notes go to
    stderr unless `quiet`."""
    data = layer.get("data")
    if not is_dataset_file(data):
        return layer
    dataset = read_dataset(Path(data))
    problems = _file_value_problems(dataset.values)
    for subset in dataset.subsets:  # its own values, beside the run's they join
        problems += [f"{subset.folder}: {line}" for line in _file_value_problems(
            dataset.values | (subset.settings or {}), about=set(subset.settings or {}))]
    if problems:
        raise LowvramError("\n".join(f"{data}: {line}" for line in problems))
    notes = [dataset.summary, *dataset.notes]
    if dataset_wins and layer.get("caption_extension"):  # (a kohya config's: the subsets' fallback, as in kohya)
        notes = [note for note in notes if NO_SUBSET_EXTENSION not in note]
    values = dict(dataset.values)
    # what the format takes where the file is silent: beneath every layer, settled once they are all merged
    assumed = {ASSUMED: {name: (value, f"{data}: {note}") for name, (value, note) in dataset.assumed.items()}
               } if dataset.assumed else {}
    if not dataset_wins:
        notes += [f"{' '.join(as_flag_words({name: layer[name]}))} from {source} replaces its setting "
                  f"({_shown(value)})"
                  if layer[name] is not None else f"{flag_name(fields_by_name()[name][1])} {value} is not used: "
                  f"{source} turns it off" for name, value in values.items() if name in layer and layer[name] != value]
        for name, given in layer.items():  # the run's value: a subset that sets another of its own keeps it
            # (it named --shuffle-tags for --no-shuffle-tags, and a subset keeping the value the flag gives)
            keeping = [f"{subset.folder.name} ({_shown(subset.settings[name])})" for subset in dataset.subsets
                       if name in (subset.settings or {}) and subset.settings[name] != given]
            if keeping and given is not None:
                notes.append(f"{' '.join(as_flag_words({name: given}))} from {source} is the run's; "
                             f"{', '.join(keeping)} keep{'s' * (len(keeping) == 1)} "
                             f"{'its' if len(keeping) == 1 else 'their'} own from the file")
        if "resolution" in layer and "extra_resolutions" in values and "extra_resolutions" not in layer:
            extra = [side for side in str(values["extra_resolutions"]).split(",") if side.strip() != str(layer[
                "resolution"])]
            if len(extra) < len(str(values["extra_resolutions"]).split(",")):
                notes.append(f"--resolution {layer['resolution']} from {source} is one of its resolutions already: "
                             "trained once")
            values["extra_resolutions"] = ",".join(extra)
            if not extra:
                del values["extra_resolutions"]
    for note in notes if not quiet else ():
        print(f"{data}: {note}", file=sys.stderr)
    return (layer | values if dataset_wins else values | layer) | assumed


def with_preset_alpha(values: dict[str, Any], preset: dict[str, Any], above: list[dict[str, Any]]
                      ) -> tuple[dict[str, Any], str | None]:
    """A preset's alpha is a share of its rank (character: alpha = rank / 2): where a layer above the preset sets
    the rank alone, the alpha follows it, rather than a smaller rank making the updates several times stronger.
    Returns the values and a note saying so (naming the flag, or the config file's key, where the rank came from:
    `above` is the layers over the preset, the flags' last)."""
    if not {"rank", "alpha"} <= preset.keys() or not any("rank" in layer for layer in above) or any(
            "alpha" in layer for layer in above):
        return values, None
    try:
        alpha = float(values["rank"]) * preset["alpha"] / preset["rank"]  # a flag's value is still its text
    except (TypeError, ValueError):
        return values, None  # not a number: the config check names it
    source = "--rank" if "rank" in above[-1] else "the --config's rank"
    return values | {"alpha": alpha}, (f"{source} {values['rank']}: the preset's alpha follows it, alpha {alpha:g} "
                                       f"(its {preset['alpha']:g} of rank {preset['rank']}); --alpha sets your own")


def without_preset_rates(values: dict[str, Any], preset: dict[str, Any], above: list[dict[str, Any]]
                         ) -> tuple[dict[str, Any], str | None]:
    """A preset's learning rate (and schedule) where the optimizer chosen above it finds its own step size: Prodigy's
    --lr is a multiplier around 1 (the preset's 1e-4 trained almost nothing, refused as a --lr never given), and
    Adafactor with relative_step uses no rate or schedule. Returns the values without them, and a note."""
    from lowvram.optim import RATE_OPTIONS, sets_own_step_sizes, spec_of

    name = str(values.get("optimizer") or "")
    if not name or "optimizer" in preset or not any("optimizer" in layer for layer in above):
        return values, None
    spec = spec_of(name)
    if sets_own_step_sizes(spec.name, values.get("optimizer_args") or ()):
        dropped = [*RATE_OPTIONS, "scheduler"]
        why = f"{spec.name} with relative_step=True sets its own step sizes"
    elif spec.learning_rate_free:  # (one rate for all the adapters: prodigyopt refuses groups at others)
        dropped = ["lr", "text_encoder_lr", "text_encoder_2_lr"]
        why = f"{spec.name} finds its step size itself (its --lr, 1.0, scales it)"
    else:
        return values, None
    dropped = [name for name in dropped if name in preset and not any(name in layer for layer in above)]
    if not dropped:
        return values, None
    shown = ", ".join(f"{name} {preset[name]}" for name in dropped)
    return ({key: value for key, value in values.items() if key not in dropped},
            f"the preset's {shown} left out: {why}")


def without_idle_kept_tags(values: dict[str, Any], typed: Collection[str] = ()) -> dict[str, Any]:
    """The merged values less a file's keep_tokens where nothing moves the tags (kohya_ss writes it either way, and
    kohya's config and dataset file may each hold one half); one `typed` on the command line stays, to be refused."""
    if values.get("keep_tokens") and "keep_tokens" not in typed and not (
            values.get("shuffle_tags") or values.get("tag_dropout")):
        return {key: value for key, value in values.items() if key != "keep_tokens"}
    return values


def _shown(value: Any) -> str:
    """A file's setting as a note names it: a switch on or off, else its value."""
    return "on" if value is True else "off" if value is False else str(value)


def _unreplaced(values: dict[str, Any], given: Collection[str]) -> dict[str, Any]:
    """A file's values less those the command line gives (and so replaces), with the alternatives of each (a file's
    epochs where the command line gives --max-steps)."""
    replaced = set(given) | {name for group in ALTERNATIVES if set(group) & set(given) for name in group}
    return {key: value for key, value in values.items() if key not in replaced}


def _file_value_problems(values: dict[str, Any], about: set[str] | None = None) -> list[str]:
    """What is wrong with the values one file sets, alone: their types and choices, and the range and
    cross-field checks about them (not those about options the file leaves to other layers); `about`: only those
    about these options."""
    values = {name: value for name, value in values.items() if name != ASSUMED}
    # (kept tags that another layer moves: fine, a --tag-dropout from the command line too where the file shuffles
    # nothing; a --network-weights file gives the rank and alpha the file leaves out, kohya's dim_from_weights, as
    # the run takes them)
    moved_elsewhere = {} if "tag_dropout" in values or values.get("shuffle_tags") else {"tag_dropout": 0.1}
    sections, problems = _parsed_values(with_network_weights(values, quiet=True) | moved_elsewhere)
    flags = {flag_name(fields_by_name()[name][1]) for name in (values if about is None else about)}
    if about is not None:
        problems = [line for line in problems if line.split(":")[0] in flags]
    try:
        config = RunConfig(**{s: SECTIONS[s](**v) for s, v in sections.items()})
    except TypeError:
        return problems
    rejected = {line.split(":")[0] for line in problems}
    return problems + [line for line in config_problems(config) if line.split(":")[0] in flags - rejected]


PRESETS_DIR = Path(__file__).parent / "profiles" / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    """A preset (typical settings for a kind of job) by name, or a TOML file of the same form."""
    if Path(name).suffix == ".toml" and Path(name).is_file():
        return Path(name)
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file() and (name.startswith("#") or Path(name).suffix.lower() == ".json"):
        # (OneTrainer's presets, '#sdxl 1.0 LoRA', are its whole training configs, which --config reads)
        what = "a OneTrainer preset" if name.startswith("#") else "a JSON config"
        fix = (f"its file (OneTrainer's training_presets/{name}.json) goes to --config" if name.startswith("#")
               else "it goes to --config, which reads OneTrainer's and kohya_ss's")
        raise LowvramError(f"--preset: '{name}' is {what}: {fix}; lowvram's presets are {', '.join(list_presets())}")
    if not path.is_file():
        raise LowvramError(f"--preset: no preset '{name}'{_did_you_mean(name, list_presets())}; presets are "
                           f"{', '.join(list_presets())} (or give a .toml file)")
    return path


ZERO = re.compile(r"0+\s*(e|s|epochs?|steps?)?", re.IGNORECASE)  # 0, 0e, 00 steps: off (OFF_AT_ZERO)


def _absolute_path(name: str, value: Any) -> Any:
    """Paths become absolute, so the resolved config saved beside the LoRA replays from any folder. An empty one of
    an option that is off by default turns it off (a config's --copy-to, from the command line), never the current
    folder."""
    if name in PATH_OPTIONS and value == "" and fields_by_name()[name][1].default is None:
        return None
    if value == "":  # (--output= named the current folder, which it trained into; config_problems says it)
        return value
    if name in PATH_OPTIONS and isinstance(value, str) and value != SAMPLE_DATA:
        if WINDOWS_DRIVE.match(value) and os.sep == "/":  # another machine's: said as given, not joined to here
            return value
        # (--copy-to loras.v2/ names a folder; elsewhere a slash typed or not is the same path: a run's identity)
        folder = os.sep if name == "copy_to" and value.endswith(("/", "\\")) else ""
        return str(absolute_path(value)) + folder
    if name in ("model", "vae") and isinstance(value, str) and expand_home(value).exists():
        return str(absolute_path(value))
    if name in SOURCE_LISTS and isinstance(value, (list, tuple)):
        return tuple(relocated_source(str(item), absolute_path) for item in value)
    return value


def _other_tools_key(key: str, known: dict) -> str:
    """Another trainer's name for an option, as a key of lowvram's config says it: ' (network_alpha is kohya's name;
    lowvram's is alpha in [network])', or ''."""
    said = re.fullmatch(r"--\S+ is (.+) name; (lowvram's is|lowvram has none) (.+)", kohya_hint(f"--{key}") or "")
    if not said:
        return ""
    ours = re.sub(r"--([a-z][a-z0-9-]*)", lambda flag: (f"{name} in [{known[name][0]}]" if (
        name := flag.group(1).replace("-", "_")) in known else flag.group(0)), said.group(3))
    return f" ({key} is {said.group(1)} name; {said.group(2)} {ours})"


def _closest_key(key: str, known: dict, section: str | None = None) -> str:
    """' (did you mean 'rank'?)' for a typo of a key, or of another trainer's name for one (learnign_rate: lr), as
    the command line answers --learnign_rate; with its table where that is not `section`."""
    by_flag = {flag_name(field): name for name, (_, field, _) in known.items()}
    theirs = {name.lstrip("-"): by_flag[flag] for name, flag in others_single_flags().items() if flag in by_flag}
    close = difflib.get_close_matches(key, list(known) + list(theirs), n=1)
    if not close:
        return ""
    ours = close[0] if close[0] in known else theirs[close[0]]
    return f" (did you mean '{ours}'{'' if known[ours][0] == section else f' in [{known[ours][0]}]'}?)"


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _number(value: Any) -> float:
    try:
        return float(value)
    except ValueError:  # ("invalid literal for float()": Python's words)
        raise ValueError("expected a number") from None
    except OverflowError:  # (an integer of hundreds of digits)
        raise ValueError("a number too large") from None


def _coerce(value: Any, kind: Any) -> Any:
    """Convert a TOML or flag value to the field's type; raise ValueError with a readable reason."""
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
    if value is None:
        if optional:
            return None
        raise ValueError("a value is required")
    target = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
    if typing.get_origin(target) is tuple:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return tuple(value)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError("expected true or false")
    if target is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected a whole number")
        try:
            return int(value)
        except ValueError:
            pass
        try:
            whole = float(value)  # 1e3: a whole number, written as a float
        except ValueError:
            whole = math.nan
        if not whole.is_integer():
            raise ValueError("expected a whole number")
        return int(whole)
    if target is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        number = _number(value)
        if not math.isfinite(number):  # nan passes every range check, and trains to a non-finite LoRA
            raise ValueError("expected a finite number")
        return number
    if target is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError("expected a string")
        return str(value)
    return value


def options_from(cls: type, values: dict[str, Any]) -> Any:
    """An options dataclass other than the run's (e.g. `lowvram caption`'s) from flag or form values, each read as its
    field's type; every problem is reported at once."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    parsed, problems = {}, []
    for name, value in values.items():
        try:
            parsed[name] = _coerce(value, hints[name])
        except (TypeError, ValueError, OverflowError) as exc:
            problems.append(f"{flag_name(fields[name])}: {quoted(value)} is invalid: {exc}")
    if problems:
        raise LowvramError("\n".join(problems))
    return cls(**parsed)


def build_config(values: dict[str, Any], writes: bool = True) -> RunConfig:
    """Validate option values (from TOML and flags, flags already merged on top) into a RunConfig; `writes`: False
    where no run is written (check-data), so --output is not checked.

    Every problem is collected and reported at once, one line each, naming the flag and the fix.
    """
    known = fields_by_name()
    off = {name for name, value in values.items() if name in OFF_AT_ZERO and ZERO.fullmatch(str(value).strip())}
    off |= {"keep_saves"} if "save_every" in off else set()  # (a saved config's, kept for the saves now off)
    values = {name: value for name, value in with_assumed(values).items() if name not in off}
    if values.get("resume") == "latest":  # the diffusers scripts' word for it
        values = {**values, "resume": "auto"}
    sections, problems = _parsed_values(values)
    for name in ("model", "vae", *PATH_OPTIONS, *SOURCE_LISTS):
        section, f, _ = known[name]
        if name in sections[section] or name not in SOURCE_LISTS:  # (a list's default is made by its factory)
            sections[section][name] = _absolute_path(name, sections[section].get(name, f.default))
    config = _resume_in_output(RunConfig(**{s: SECTIONS[s](**v) for s, v in sections.items()}))
    rejected = {line.split(":")[0] for line in problems}
    problems += [line for line in config_problems(config, writes) if line.split(":")[0] not in rejected]
    if sections["memory"].get("gradient_checkpointing") is False and config.memory.checkpoint_blocks is not None:
        problems.append(f"--checkpoint-blocks: recomputes {config.memory.checkpoint_blocks} blocks, which "
                        "--no-gradient-checkpointing rules out; drop one")  # (given, not the default, so a choice)
    if problems:
        raise LowvramError("\n".join(problems))
    return _resumed_name(config)


def _resume_in_output(config: RunConfig) -> RunConfig:
    """`--resume step-000020` (or `20`) names that checkpoint of the output folder, as a folder of that name
    here would: the names `lowvram` prints are the output folder's, not paths from where the command runs."""
    given = config.training.resume
    if given in (None, "auto") or (Path(given) / "state.json").is_file() or re.search(r"[\\/]", given.strip("/\\")):
        return config
    found = checkpoint_named(config.output_dir, given)
    return dataclasses.replace(config, training=dataclasses.replace(config.training, resume=str(found))) if found \
        else config


def _resumed_name(config: RunConfig) -> RunConfig:
    """A resumed run without --name keeps the name its folder's record holds where the folder was renamed since
    (its default name, the folder's, would start other files beside the run's)."""
    if not config.training.resume or config.output.name is not None:
        return config
    try:
        named = json.loads((config.output_dir / RECORD).read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return config
    if not isinstance(named, str) or not named or named == config.output_name:
        return config
    return dataclasses.replace(config, output=dataclasses.replace(config.output, name=named))


def _parsed_values(values: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each value read as its option's type and checked against its choices: (values by section, problems)."""
    known = fields_by_name()
    problems: list[str] = []
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in values.items():
        if name not in known:
            problems.append(f"unknown option '{name}'{_did_you_mean(name, list(known))}")
            continue
        section, f, kind = known[name]
        flag = flag_name(f)
        shape = width_height(value) if name == "resolution" else None
        sides: tuple[int, ...] = ()
        if name == "resolution" and not shape and isinstance(value, (str, list, tuple)):
            with contextlib.suppress(ValueError):
                sides = parse_resolutions(value if isinstance(value, str) else ",".join(map(str, value)))
        if len(sides) > 1:  # ai-toolkit's and SimpleTuner's list of resolutions
            others = ",".join(map(str, sorted(sides)[:-1]))
            problems.append(f"{flag}: {quoted(value)} is several resolutions; give the largest as --resolution "
                            f"{max(sides)} and the others as --extra-resolutions {others}")
            continue
        if name == "resolution" and isinstance(value, (list, tuple)) and not shape:
            problems.append(f"{flag}: {quoted(value)} is not a width and height in pixels")
            continue
        if shape and not (MIN_RESOLUTION <= min(shape) and max(shape) <= MAX_RESOLUTION):
            side = min(shape) if min(shape) < MIN_RESOLUTION else max(shape)
            problems.append(f"{flag}: {quoted(value)} has a side of {side} px; give sides from {MIN_RESOLUTION} to "
                            f"{MAX_RESOLUTION} px")
            continue
        if shape:  # kohya's "W,H": buckets of its pixel area (train_values says so); square without buckets
            if shape[0] != shape[1] and str(values.get("bucket")).lower() in ("false", "no", "0"):
                problems.append(f"{flag}: '{value}' is kohya's width,height; with buckets off (--no-bucket, a kohya "
                                "file's enable_bucket false or none) lowvram crops every image square, where kohya "
                                "crops to that size: give one side, or turn buckets on (--bucket, enable_bucket = "
                                "true) to train buckets of its area")
                continue
            value = shape[0] if shape[0] == shape[1] else area_side(*shape)
        try:
            value = _coerce(value, kind)
        except (TypeError, ValueError, OverflowError) as exc:
            problems.append(f"{flag}: {quoted(value)} is invalid: {exc}")
            continue
        choices, spelling = f.metadata.get("choices"), f.metadata.get("spelling")
        if spelling and isinstance(value, str):
            try:
                value = spelling(value)
            except ValueError as exc:
                problems.append(f"{flag}: {exc}")
                continue
        if choices and value is not None and value not in choices:
            problems.append(f"{flag}: '{value}' is not one of {', '.join(choices)}")
            continue
        sections[section][name] = value
    return sections, problems
