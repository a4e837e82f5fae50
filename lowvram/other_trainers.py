"""Configs of trainers whose files lowvram does not read: ostris' ai-toolkit (YAML: `config: process: [...]`) and
SimpleTuner (config.json, config.env, and its data backends' multidatabackend.json). Each is named for what it is,
with the `lowvram train` command its settings make as far as they map (kohya's and the diffusers scripts' names
are read through `kohya_names`), so that a user moving over starts from their own settings."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lowvram.config import as_flag_words, fields_by_name, flag_name
from lowvram.files import text_of
from lowvram.kohya_names import AI_TOOLKIT_FLAGS, KOHYA_FLAGS, OTHER_TRAINER_FLAGS
from lowvram.optim import KOHYA_OPTIMIZERS

# what changes nothing lowvram does (it always caches latents), or is read with another setting
AI_TOOLKIT_READ = {("dataset", "resolution"), ("dataset", "caption_ext"), ("model", "is_v_pred"), ("model", "is_xl"),
                   ("sample", "prompts"), ("sample", "samples"), ("sample", "neg"), ("sample", "width"),
                   ("sample", "height"), ("sample", "guidance_scale"), ("sample", "seed"), ("sample", "walk_seed"),
                   ("network", "linear_alpha"), ("network", "alpha"), ("train", "ema_config"),
                   ("train", "skip_first_sample"), ("train", "train_unet"), ("dataset", "cache_latents"),
                   ("train", "disable_sampling"),
                   ("dataset", "cache_latents_to_disk"), ("train", "noise_scheduler")}
ISNT_READ = "which lowvram does not read"
SIMPLETUNER_BACKENDS = ("local", "aws", "csv", "huggingface")
BACKEND_FILES = ("data_backend_config",)  # SimpleTuner's datasets: not carried over (a folder is --data)


def is_ai_toolkit(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("config"), dict) and isinstance(
        doc["config"].get("process"), list)


def is_simpletuner_backends(doc: Any) -> bool:
    """SimpleTuner's multidatabackend.json: a list of data backends, each with an id and a type (local, aws, ...)."""
    return isinstance(doc, list) and bool(doc) and all(isinstance(entry, dict) for entry in doc) and any(
        "instance_data_dir" in entry or "id" in entry and str(entry.get("type")).lower() in SIMPLETUNER_BACKENDS
        for entry in doc)


def is_simpletuner_config(doc: Any) -> bool:
    """SimpleTuner's config.json (or config.toml): its command-line flags as keys ("--lora_rank": 16), or their
    names (its data_backend_config, its model_family at the top level: no other trainer's)."""
    return isinstance(doc, dict) and bool(doc) and (
        all(isinstance(key, str) and key.startswith("--") for key in doc)
        or bool({"data_backend_config", "--data_backend_config", "model_family", "--model_family"} & doc.keys()))


def _with_given(words: list[str], options: Mapping[str, Any] | None) -> list[str]:
    """The command with the `options` given beside --config in place of the file's (as a kohya config's are)."""
    known = fields_by_name()
    given = {name: value for name, value in (options or {}).items() if value is not None and name in known}
    # the file's options that answer with the given one: its resolutions list, the rates of encoders not trained
    dropped = [*given, *(["extra_resolutions"] if "resolution" in given else []),
               *(["text_encoder_lr", "text_encoder_2_lr"] if given.get("train_text_encoder") is False else []),
               *(["conv_rank", "conv_alpha"] if given.get("lora_layers", "full") != "full" else [])]
    flags = {flag_name(known[name][1]) for name in dropped if name in known}
    kept, value_of_dropped = [], False
    for word in words:
        if value_of_dropped and not word.startswith("--"):
            value_of_dropped = False
            continue
        value_of_dropped = word in flags
        if not value_of_dropped:
            kept.append(word)
    return kept + as_flag_words(given)


def ai_toolkit_problem(path: Path, doc: Any, options: Mapping[str, Any] | None = None) -> str:
    """The one line an ai-toolkit config is answered with: the lowvram command its settings make, with ai-toolkit's
    defaults where they are not lowvram's (an alpha of 1, every linear layer of the U-Net adapted, images never
    upscaled, a sample before the first step)."""
    process = doc["config"]["process"][0] if doc["config"]["process"] else {}
    process = process if isinstance(process, dict) else {}
    sections: dict[str, Any] = {"": process} | {name: process.get(name) or {} for name in
                                                ("model", "network", "train", "save", "sample")}
    sections = {name: section if isinstance(section, dict) else {} for name, section in sections.items()}
    datasets = process.get("datasets") or [{}]
    datasets = datasets if isinstance(datasets, list) else [datasets]
    sections["dataset"] = datasets[0] if isinstance(datasets[0], dict) else {}
    words, left = ["lowvram", "train"], []
    fields = _fields_by_flag()
    network, train, sample = sections["network"], sections["train"], sections["sample"]
    prompts = [] if train.get("disable_sampling") else _ai_toolkit_prompts(sample)
    given_flags: set[str] = set()
    for (section, key), flag in AI_TOOLKIT_FLAGS.items():
        value = sections[section].get(key)
        if value is None or flag in given_flags or section == "sample" and not prompts:  # (rank over linear, as
            continue  # ai-toolkit reads them; unet_lr over lr; no prompts, no sampling: refused without them)
        if (section, key) == ("train", "lr") and train.get("unet_lr") is not None:
            continue
        given = _value(value, fields[flag])  # (as SimpleTuner's: "locon" is no --network here, steps 0 none)
        if given is None:
            left += [] if value in (0, "0", False) else [f"{key} {value}"]
        elif given is not True:
            words += [flag, given] if given else []
        else:
            words.append(flag)
        given_flags.add(flag)
    # ai-toolkit's defaults where they are not lowvram's: rank 4, alpha 1 (not the rank), a convolutions' alpha of
    # their rank, the text encoder at lr (not unet_lr), lr 1e-6
    defaults = {"--rank": 4, "--alpha": network.get("linear_alpha", network.get("alpha", 1.0)),
                "--conv-alpha": network.get("conv"), "--lr": 1e-6,
                "--text-encoder-lr": train.get("lr") if train.get("unet_lr") is not None and train.get(
                    "train_text_encoder") else None}
    for flag, value in defaults.items():
        if flag not in given_flags and value is not None and (given := _value(value, fields[flag])):
            words += [flag, given]
    # ai-toolkit adapts every linear layer of the U-Net (its ResNets' too), and with conv (or locon) its 3x3
    # convolutions: lowvram's nearest are attn-mlp and full
    words += ["--lora-layers", "full" if network.get("conv") or network.get("type") == "locon" else "attn-mlp"]
    if network.get("type") == "locon":
        left = [item for item in left if item != "type locon"]
    ema = train.get("ema_config") or {}
    if isinstance(ema, dict) and ema.get("use_ema"):
        words += ["--ema"] + (["--ema-decay", str(ema["ema_decay"])] if ema.get("ema_decay") is not None else [])
    resolution = sections["dataset"].get("resolution")
    sides = sorted(int(side) for side in (resolution if isinstance(resolution, list) else [resolution] if resolution
                                          else []) if str(side).isdigit())
    if sides:
        words += ["--resolution", str(sides[-1])] + (["--extra-resolutions", ",".join(map(str, sides[:-1]))]
                                                     if len(sides) > 1 else [])
    words.append("--bucket-no-upscale")  # (ai-toolkit never upscales an image to its bucket)
    name = doc["config"].get("name")  # ai-toolkit writes to training_folder/name
    if process.get("training_folder") or name:
        words += ["--output", str(Path(str(process.get("training_folder") or ".")) / str(name or ""))]
    for prompt in prompts:
        words += ["--sample-prompt", prompt]
    if prompts and not train.get("skip_first_sample"):  # (ai-toolkit's baseline sample, before training)
        words.append("--sample-at-first")
    if sections["dataset"].get("caption_ext"):
        words += ["--caption-extension", "." + str(sections["dataset"]["caption_ext"]).lstrip(".")]
    if sections["model"].get("is_v_pred"):
        words += ["--prediction-type", "v_prediction"]
    if train.get("train_unet") is False:
        left.append("train_unet false (lowvram always trains the U-Net's adapters)")
    left += [key for section in ("network", "train", "model", "sample", "save", "dataset")
             for key, value in sections[section].items()
             if (section, key) not in {*AI_TOOLKIT_FLAGS, *AI_TOOLKIT_READ} and value not in (None, False)]
    if len(datasets) > 1:
        left.append(f"{len(datasets) - 1} more dataset(s) (a kohya dataset .toml as --data holds several)")
    repeats = sections["dataset"].get("num_repeats")
    left = [f"num_repeats {repeats} (a folder named {repeats}_name trains its images {repeats} times, as kohya's)"
            if item == "num_repeats" else item for item in left
            if item != "loss_type" or str(train.get("loss_type")).lower() not in ("mse", "l2")]  # (lowvram's loss)
    return (f"--config: {path} is an ai-toolkit config, {ISNT_READ}; its settings as lowvram's: "
            f"{shlex.join(_with_given(words, options))}" + (f" (not carried over: {', '.join(left)})" if left else ""))


def _ai_toolkit_prompts(sample: dict) -> list[str]:
    """The sample prompts of ai-toolkit's sample section (`prompts`, or `samples`' entries of its newer UI), each
    with the section's negative prompt, size, guidance and seed (walk_seed: one more per prompt) as lowvram's
    inline options."""
    listed = [value if isinstance(value, list) else [value] for value in (sample.get("prompts") or [],
                                                                          sample.get("samples") or [])]
    entries = [{"prompt": entry} if isinstance(entry, str) else entry for entry in [*listed[0], *listed[1]]
               if isinstance(entry, str) or isinstance(entry, dict) and entry.get("prompt")]
    prompts = []
    for i, entry in enumerate(entries):
        line = str(entry["prompt"])
        seed = entry.get("seed", sample.get("seed"))
        seed = int(seed) if isinstance(seed, int) or str(seed).isdigit() else None
        for option, value in (("n", entry.get("neg", sample.get("neg"))),
                              ("w", entry.get("width", sample.get("width"))),
                              ("h", entry.get("height", sample.get("height"))),
                              ("l", entry.get("guidance_scale", sample.get("guidance_scale"))),
                              ("d", None if seed is None else seed + (i if sample.get("walk_seed") else 0))):
            if value not in (None, False, ""):
                line += f" --{option} {value}"
        prompts.append(line)
    return prompts


def simpletuner_config_problem(path: Path, doc: dict, options: Mapping[str, Any] | None = None) -> str:
    """The one line a SimpleTuner config.json (or config.env's settings) is answered with; the image folders of
    the data backends it names (its data_backend_config) read from that file."""
    words, left = ["lowvram", "train"], []
    fields = _fields_by_flag()
    reports = str(doc.get("--report_to", doc.get("report_to", "wandb"))).lower()  # (SimpleTuner's default: wandb)
    kind = str(doc.get("--resolution_type", doc.get("resolution_type", "pixel"))).lower()
    key = "--resolution" if "--resolution" in doc else "resolution"
    with contextlib.suppress(TypeError, ValueError):  # (a resolution that is no number: left out, named)
        if kind == "area" and float(doc.get(key)) > 0:  # megapixels: lowvram's --resolution is pixel_area's, the side
            # of a square of the buckets' area
            doc = doc | {key: str(max(64, round(float(doc[key]) ** 0.5 * 1000 / 64) * 64))}
    for key, value in doc.items():
        name = str(key).lstrip("-")
        if name == "resolution_type":  # (read with --resolution: lowvram's is pixel_area's)
            if kind not in ("area", "pixel_area"):
                left.append(f"resolution_type {kind} (its shorter edge; lowvram's --resolution is the side of the "
                            "buckets' area)")
            continue
        if name == "noise_offset":  # (theirs offsets a quarter of the steps' noise, and only with --offset_noise)
            left += [] if value in (0, "0", "") else [
                (f"noise_offset {value} (SimpleTuner offsets the noise of a share of the steps, "
                 "noise_offset_probability 0.25 unless set, and only with offset_noise; lowvram's --noise-offset "
                 "offsets every step's)")]
            continue
        if name.startswith("tracker_") and "wandb" not in reports:  # (a project name of no W&B run would start one)
            left.append(name)
            continue
        if name == "lora_type" and str(value).lower() == "standard":  # (a plain LoRA: lowvram's)
            continue
        if name in BACKEND_FILES:
            backend = _backend_words(Path(str(value)), path)
            words += backend[0] if backend else []
            left += backend[1] if backend else [name]
            continue
        counterpart = KOHYA_FLAGS.get(f"--{name}") or OTHER_TRAINER_FLAGS.get(f"--{name}") or (
            flag_name(fields_by_name()[name][1]) if name in fields_by_name() else None)  # (one of lowvram's own)
        if counterpart and counterpart.startswith("("):
            left += [name] if counterpart.startswith("(none") else []  # (else one lowvram needs none for)
            continue
        # a counterpart that is one flag taking the value as it is (not "--crop center", "--sample-every Ne")
        flag = counterpart.split()[0] if counterpart and re.fullmatch(r"--[a-z0-9-]+( N)?( \(.*\))?", counterpart) \
            else None
        given = _value(value, fields[flag]) if flag in fields and name not in BACKEND_FILES else None
        if given is None:
            left += [] if value in (0, "0") else [name]  # (0: off, or SimpleTuner's "by epochs")
        elif given is not True:
            words += [flag, given] if given else []
        else:
            words.append(flag)
    if "--timestep-bias" in words and "--timestep-bias-multiplier" not in words:  # (theirs is 1 unless given: a
        at = words.index("--timestep-bias")                                      # bias of nothing; lowvram's 2)
        if words[at + 1] != "none":
            left.append("timestep_bias_strategy (without timestep_bias_multiplier it biases nothing)")
        del words[at:at + 2]
    return (f"--config: {path} is a SimpleTuner config, {ISNT_READ}; its settings as lowvram's: "
            f"{shlex.join(_with_given(words, options))}" + (f" (not carried over: {', '.join(left)})" if left else ""))


def _backend_words(named: Path, config: Path) -> tuple[list[str], list[str]] | None:
    """The lowvram options of a config's data backend file (named as SimpleTuner finds it: from the folder it runs
    in, its own, whose config/<model>/ holds the config, a file beside it alone; else beside the config), and
    what they leave out; None where it cannot be read as one."""
    for path in (named, *(folder / named for folder in [config.parent, *config.parent.parents][:4]
                          if (folder / named).parent.resolve() == config.parent.resolve())):
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(text_of(path))  # (a BOM, Notepad's, too)
            if is_simpletuner_backends(doc):
                break
    else:
        return None
    training, regularization = _backend_sets(doc)
    if not training:
        return None
    first, words, left = training[0], ["--data", str(training[0]["instance_data_dir"])], []
    strategy = first.get("caption_strategy") or "filename"
    if strategy == "filename":
        words += ["--caption-template", "{filename}"]
    elif strategy == "instanceprompt" and first.get("instance_prompt"):
        words += ["--caption-template", str(first["instance_prompt"])]
    repeats = first.get("repeats") or 0
    if isinstance(repeats, int) and repeats > 0:
        left.append(f"repeats {repeats} ({repeats + 1} passes an epoch: a kohya {repeats + 1}_name folder)")
    if regularization:
        words += ["--reg-data", str(regularization[0]["instance_data_dir"]), "--prior-prediction"]
    if training[1:]:
        left.append(f"{len(training) - 1} more image folder(s) (a kohya dataset .toml as --data holds several)")
    return words, left


def _backend_sets(doc: list) -> tuple[list[dict], list[dict]]:
    """SimpleTuner's image backends that train, and its regularisation ones."""
    images = [entry for entry in doc if entry.get("instance_data_dir") and entry.get("dataset_type", "image") == "image"
              and not entry.get("disabled") and not entry.get("disable")]  # (SimpleTuner reads both spellings)
    regularization = [entry for entry in images if entry.get("is_regularisation_data")
                      or entry.get("is_regularization_data")]
    return [entry for entry in images if entry not in regularization], regularization


def _fields_by_flag() -> dict[str, tuple]:
    """Every lowvram option by its flag: (its dataclass field, its type)."""
    return {flag_name(f): (f, kind) for _, f, kind in fields_by_name().values()}


def _value(value: Any, field_kind: tuple) -> str | bool | None:
    """Another trainer's value as the lowvram option `field_kind` (its dataclass field, its type) takes it: a
    switch's True (False: "", nothing to pass), a choice in lowvram's spelling, the text of another; None where it
    takes no such value ("true" from a config.env is a switch's)."""
    f, kind = field_kind
    value = {"true": True, "false": False}.get(value.lower(), value) if isinstance(value, str) else value
    if kind is bool or isinstance(value, bool):
        return (value or "") if kind is bool and isinstance(value, bool) else None
    if value is None or value == "":
        return None
    if flag_name(f) == "--optimizer":
        return _optimizer(value)
    numbers = {int, float} & {kind, *typing.get_args(kind)}
    if numbers:
        try:  # (SimpleTuner's max_train_steps 0: train by epochs; lowvram's numbers here are all above 0)
            number = float(value)
        except (TypeError, ValueError):
            return None
        whole = int in numbers and number.is_integer()
        return (str(int(number)) if whole else f"{number:g}") if number > 0 else None
    choices, spelling = f.metadata.get("choices"), f.metadata.get("spelling")
    if spelling:
        try:
            value = spelling(str(value))
        except ValueError:
            return None
    return str(value) if not choices or str(value) in choices else None


def _optimizer(name: Any) -> str | None:
    """lowvram's name of another trainer's optimizer (adamw8bit, AdamW8bit, adamw_8bit), None where it has none."""
    return KOHYA_OPTIMIZERS.get(str(name).lower().replace("_", "").replace("-", ""))


def simpletuner_env(text: str) -> dict[str, str] | None:
    """SimpleTuner's config.env (`export NAME=value` lines) as a config's settings; None for other text."""
    pairs: dict[str, str] = {}
    for name, rest in re.findall(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", text, re.MULTILINE):
        try:  # as the shell reads it: quotes, a trailing comment (SimpleTuner's example's #@param), $NAME of earlier
            words = shlex.split(rest, comments=True)
        except ValueError:  # (a quote closed on a later line: its first line's words, as before)
            words = [rest.split(" #")[0].strip().strip("\"'")]
        pairs[name] = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: pairs.get(m[1] or m[2], m[0]), words[0] if words else "")
    if not pairs:
        return None
    settings = {{"MODEL_NAME": "pretrained_model_name_or_path", "LEARNING_RATE": "learning_rate",
                 "MAX_NUM_STEPS": "max_train_steps", "TRAIN_BATCH_SIZE": "train_batch_size",
                 "RESOLUTION": "resolution", "VALIDATION_PROMPT": "validation_prompt", "OUTPUT_DIR": "output_dir",
                 }.get(name, name.lower()): value for name, value in pairs.items()}
    extra = pairs.get("TRAINER_EXTRA_ARGS", "")
    try:
        words = shlex.split(extra)
    except ValueError:
        words = extra.split()
    for i, word in enumerate(words):  # --flag=value, --flag value, or a switch
        flag, equals, value = word.partition("=")
        if flag.startswith("--"):
            following = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
            settings[flag] = value if equals else following if following is not None else True
    settings.pop("trainer_extra_args", None)
    return settings


def simpletuner_backends_problem(path: Path, doc: list, flag: str) -> str:
    """The one line SimpleTuner's data backends are answered with: the folders they name, as lowvram's --data."""
    training, regularization = _backend_sets(doc)  # (the class images were named first)
    if not training:
        return f"{flag}: {path} is a SimpleTuner data backend config, {ISNT_READ}; give the image folder as --data"
    first = training[0]
    hint = f"; give its image folder as --data {shlex.quote(str(first['instance_data_dir']))}"
    strategy = first.get("caption_strategy") or "filename"  # (SimpleTuner's default)
    if strategy == "filename":
        hint += " and --caption-template '{filename}' for its file-name captions"
    elif strategy == "instanceprompt" and first.get("instance_prompt"):
        hint += f" and --caption-template {shlex.quote(str(first['instance_prompt']))}, its instance prompt"
    repeats = first.get("repeats") or 0
    if isinstance(repeats, int) and repeats > 0:  # (0 is one pass there, as kohya's 1)
        hint += (f"; its repeats {repeats} are {repeats + 1} passes an epoch (a kohya {repeats + 1}_name folder, or "
                 f"num_repeats = {repeats + 1})")
    hint += (f"; its regularisation images (the base model's prediction their target, as there): --reg-data "
             f"{shlex.quote(str(regularization[0]['instance_data_dir']))} --prior-prediction" if regularization else "")
    others = ", ".join(shlex.quote(str(entry["instance_data_dir"])) for entry in training[1:])
    return (f"{flag}: {path} is a SimpleTuner data backend config, {ISNT_READ}{hint}"
            + (f" (and {others}: a kohya dataset .toml as --data holds several folders)" if others else ""))


def yaml_or_env_problem(path: Path, text: str, options: Mapping[str, Any] | None = None) -> str:
    """What a YAML or .env config (its `text`) is answered with: ai-toolkit's or SimpleTuner's, with the command
    their settings make; another's, the formats lowvram reads."""
    import yaml

    if path.suffix.lower() == ".env":
        settings = simpletuner_env(text)
        if settings:
            return simpletuner_config_problem(path, settings, options)
    else:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            doc = None
        if is_ai_toolkit(doc):
            return ai_toolkit_problem(path, doc, options)
    return (f"--config: {path} is no config lowvram reads: lowvram's and kohya's are TOML, OneTrainer's and "
            "kohya_ss's JSON")
