"""A kohya sd-scripts config file (`train_network.py --config_file`, the TOML kohya_ss writes beside each run) read
as lowvram options, so a kohya recipe trains here as it is.

Each kohya setting becomes the lowvram option that means the same (`lowvram.kohya_names` holds the names). Where
kohya's default differs from lowvram's in a way that changes the LoRA, a kohya file gets kohya's: rank 4 and
alpha 1 without `network_dim`/`network_alpha`, 1600 steps without a length, kohya's LoRA layers (every layer of the
transformer blocks; the ResNet convolutions too with `conv_dim`) and the text encoder trained unless
`network_train_unet_only`. kohya_ss writes every setting, switched-off ones included (`noise_offset = 0`,
`huber_c` beside `loss_type = "l2"`), so a setting at its off value is left out. Paths are relative to the
current folder, as kohya reads them. A setting that would train something other than what kohya trains (an
algorithm, optimizer or schedule lowvram lacks) is an error naming it; one lowvram does not know is listed as
not carried over; one that changes nothing here (data loader workers, caching switches) is dropped quietly.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lowvram.config import SAVE_PRECISION, SAVE_PRECISION_ALIASES, SCHEDULERS, SECTIONS, fields_by_name
from lowvram.errors import LowvramError
from lowvram.files import expand_home, local_path, not_utf8
from lowvram.kohya_names import (
    KOHYA_EQUIVALENTS,
    KOHYA_FLAGS,
    OTHER_TRAINER_FLAGS,
    SD_SCRIPTS_SETTINGS,
    WITHOUT_COUNTERPART,
)
from lowvram.kohya_network import network_settings
from lowvram.kohya_optimizer import (
    KOHYA_LEARNING_RATE,
    check_schedule_settings,
    learning_rates,
    optimizer_settings,
    scheduler_class,
    without_rates,
    without_schedule,
)
from lowvram.kohya_values import as_number, is_off, switched_on
from lowvram.optim import (
    sets_own_step_sizes,
    spec_of,
)
from lowvram.option_values import parse_save_every
from lowvram.prompts import parse_prompt, read_prompt_file
from lowvram.samplers import sampler_name

NO_CAPTION_EXTENSION = ("caption_extension not set: sd-scripts then reads .caption files only (its default), not the "
                        ".txt captions in train_data_dir (it captions those images with their folder's name); "
                        "lowvram reads .txt and .caption files (caption_extension = \".txt\" has kohya read them too)")
# kohya's enable_bucket is off unless set: every image cropped square to the resolution
NO_BUCKETS = ("enable_bucket: not set in {where}, so every image is cropped square to the resolution, as kohya crops "
              "it; enable_bucket = true (or --bucket) trains aspect-ratio buckets")
# kohya's settings that would change what the model is shown: refused rather than trained without (a dataset
# file's, and a config file's where sd-scripts reads them there too)
REFUSED_SETTINGS = {
    "conditioning_data_dir": "ControlNet training is not something lowvram does; for kohya's masked loss (its masks "
                             "in that folder), put each mask beside its image as <image name>-masklabel.png and "
                             "train with --masked-loss (its brightness weighs the loss, as OneTrainer reads it; "
                             "kohya read the red channel: a mask drawn in grey reads the same)",
    "face_crop_aug_range": WITHOUT_COUNTERPART["--face_crop_aug_range"],
    "debug_dataset": "kohya shows the dataset then and trains nothing (lowvram check-data --config FILE --captions "
                     "shows its captions and buckets); leave it out to train",
    "skip_image_resolution": "lowvram skips no images by resolution; leave it out (`lowvram check-data` lists small "
                             "images, and --small-images skip leaves them out)",
    "network_multiplier": "lowvram trains the LoRA at strength 1; leave it out",
}
# kohya's switches that set a lowvram option to a value
SWITCHES = {"v_parameterization": ("prediction_type", "v_prediction"), "xformers": ("attention", "auto"),
            "sdpa": ("attention", "sdpa"), "fp8_base": ("unet_weights", "fp8"), "random_crop": ("crop", "random"),
            "fp8_base_unet": ("unet_weights", "fp8"),  # (train_network.py takes it as fp8_base: the U-Net in fp8)
            "color_aug": ("color_jitter", 0.1)}
# kohya setting -> lowvram option where the value carries over as it is: each single-flag entry of the kohya table
SAME = {flag[2:]: ours[2:].replace("-", "_") for flag, ours in KOHYA_FLAGS.items()
        if re.fullmatch(r"--[a-z0-9-]+", ours) and flag[2:] not in SWITCHES} | {"seed": "seed", "vae": "vae",
                                                                              "resolution": "resolution"}
SAVE_PRECISIONS = {name: name for name in SAVE_PRECISION} | SAVE_PRECISION_ALIASES
# settings that change nothing lowvram does: it always caches, picks its own loader and kernels, and logs to --output
INERT = {"cache_latents", "cache_latents_to_disk", "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk",
         "max_data_loader_n_workers", "persistent_data_loader_workers", "logging_dir", "log_prefix", "log_with",
         "log_tracker_name", "lowram", "highvram", "epoch", "save_model_as",
         "save_state", "save_state_on_train_end", "full_fp16", "full_bf16", "no_half_vae",
         "enable_bucket", "mem_eff_attn", "lr_scheduler_args",
         "wandb_run_name", "wandb_api_key", "output_config", "ddp_timeout", "console_log_simple", "noise_offset_type"}
KOHYA_KEYS = set(SAME) | set(SWITCHES) | INERT | {
    "base_weights", "base_weights_multiplier",
    "network_dim", "network_module", "network_args", "network_train_unet_only", "network_train_text_encoder_only",
    "learning_rate",
    "unet_lr", "text_encoder_lr", "optimizer_type", "optimizer_args", "save_every_n_steps", "save_every_n_epochs",
    "sample_every_n_steps", "sample_every_n_epochs", "sample_prompts", "sample_sampler", "dataset_config", "v2",
    "save_precision",
    "stop_text_encoder_training"}
# settings only kohya has: one of them makes a file kohya's
MARKERS = KOHYA_KEYS - set(fields_by_name())


def _holds_txt(folder: Path) -> bool:
    """Whether a kohya image folder (or one of its N_name folders) holds .txt files, its captions or not."""
    try:
        return any(True for _ in folder.glob("*.txt")) or any(True for _ in folder.glob("*/*.txt"))
    except OSError:
        return False


def is_kohya_config(doc: dict[str, Any]) -> bool:
    """Whether a TOML document is a kohya config: settings at the top level, or in sections other than lowvram's
    (kohya reads any section as if its settings were at the top), one of which only kohya has."""
    if all(section in SECTIONS and isinstance(table, dict) for section, table in doc.items()):
        return False
    return bool(set(flat_config(doc)) & MARKERS)


def flat_config(doc: dict[str, Any]) -> dict[str, Any]:
    """A kohya config's settings as one table: kohya reads any section's as if at the top level."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def translate(doc: dict[str, Any], path: Path, prompts: list[str] | None = None,
              by_hand: bool | Collection[str] = True, prompted: bool = False) -> tuple[dict[str, Any], list[str]]:
    """(lowvram option values, notes for the user) for a kohya config document; `prompts`: sample prompts it comes
    with as text (kohya_ss's). Raises LowvramError, one line per setting, for each setting lowvram cannot train as
    kohya would, and (`by_hand`: not a file kohya_ss's GUI wrote, whose own keys are no sd-scripts settings; or the
    keys typed by hand in one, its additional parameters) for a misspelt setting. `prompted`: the command line gives
    the sample prompts, which replace its own (its prompt file not read, its interval theirs)."""
    flat = flat_config(doc)
    if prompted:
        flat.pop("sample_prompts", None)
        prompts = None
    # kohya's off values are left out, except where 0 means something: no clipping, an untrained text encoder
    left = {key: value for key, value in flat.items()
            if not is_off(value) or key in ("max_grad_norm", "text_encoder_lr", "network_alpha")}
    notes: list[str] = []
    values: dict[str, Any] = {}
    if "enable_bucket" in flat:  # (true too: over a dataset file's own default)
        values["bucket"] = switched_on(flat["enable_bucket"])
    elif not flat.get("dataset_config"):  # kohya's default, which a dataset file sets for itself
        values["bucket"] = False
        notes.append(NO_BUCKETS.format(where="the config"))
    problems: list[str] = []

    def problem(key: str, text: str) -> None:
        problems.append(f"{path}: {key}: {text}")

    if switched_on(left.pop("v2", None)):
        problem("v2", "Stable Diffusion 2 is not a family lowvram trains (SD1.5 and SDXL are)")
    scheduler_type = left.pop("lr_scheduler_type", None)
    if left.pop("network_train_text_encoder_only", None):
        problem("network_train_text_encoder_only", "lowvram always trains adapters on the U-Net; leave it out")
    if flat.get("unet_lr") == 0 and not isinstance(flat.get("unet_lr"), bool):  # kohya skips a group of rate 0
        problem("unet_lr", "0 leaves the U-Net untrained in kohya; lowvram always trains adapters on the U-Net: "
                "give it a rate, or leave it out for learning_rate")
    resume = left.pop("resume", None)
    if resume and (expand_home(str(resume)) / "state.json").is_file():  # a lowvram checkpoint: resumed, as asked
        values["resume"] = str(resume)
    elif resume:
        problem("resume", f"{resume} is not a lowvram checkpoint, and kohya's saved state (its -state folder) is not "
                "read here; train on from its LoRA with --network-weights FILE (a fresh optimizer), or leave "
                "resume out")
    dataset_config = left.pop("dataset_config", None)
    if dataset_config:  # the images and their settings come from the dataset file (lowvram.dataset_files)
        values["data"] = str(dataset_config)
        ignored = [key for key in ("train_data_dir", "reg_data_dir", "in_json") if left.pop(key, None)]
        left.pop("dataset_repeats", None)
        if ignored:
            notes.append(f"{' and '.join(ignored)} not used: dataset_config names the images, as in kohya")
    elif in_json := left.pop("in_json", None):  # kohya's fine-tuning captions, which the folder's files are not
        repeats = left.pop("dataset_repeats", None)
        repeats = f"num_repeats = {repeats}, " if repeats not in (None, 1, "1") else ""
        problem("in_json", f"kohya's fine-tuning mode (captions and tags from {in_json}) is read from a dataset "
                f"file: write one holding [[datasets]] and [[datasets.subsets]] with image_dir = "
                f"{json.dumps(str(flat.get('train_data_dir') or 'IMAGES'))}, metadata_file = "
                f"{json.dumps(str(in_json))}, {repeats}and set dataset_config to it in place of train_data_dir "
                "(its cached latents are not read: lowvram caches its own)")
    values |= network_settings(left, notes, problem)
    values |= _base_weights(left, problem)
    rate_given = any(left.get(key) is not None for key in ("learning_rate", "unet_lr"))
    text_rate_default = all(left.get(key) is None for key in ("learning_rate", "text_encoder_lr"))
    values |= learning_rates(left, values["train_text_encoder"], problem)
    set_by = None  # sd-scripts' older switches for their optimizers (a kohya_ss GUI file's are read as it reads them)
    for switch, kind in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion")):
        if switched_on(left.pop(switch, None)):  # (refused as another trainer's: a switch sd-scripts still reads)
            other = left.get("optimizer_type")
            if other and str(other).lower() != kind.lower():  # (sd-scripts refuses both at once)
                problem(switch, f"{set_by + ' sets' if set_by else 'optimizer_type is'} {other} too; keep one "
                        "(sd-scripts refuses both)")
            left["optimizer_type"], set_by = kind, switch
    optimizer = optimizer_settings(left, notes, problem)
    spec = spec_of(optimizer.get("optimizer", "adamw"))
    own_steps = sets_own_step_sizes(spec.name, optimizer.get("optimizer_args", []))
    if left.get("lr_scheduler") == "adafactor" and not own_steps:  # kohya's, which only logs such steps
        problem("lr_scheduler", "adafactor is the schedule of Adafactor with relative_step=True (kohya fails on it "
                "otherwise); use constant, or optimizer_type Adafactor without relative_step=False")
    if left.get("lr_scheduler") == "adafactor":
        left.pop("lr_scheduler")
    # (prodigyopt refuses groups at other rates)
    if spec.learning_rate_free and text_rate_default and "text_encoder_lr" in values:
        notes.append(f"text_encoder_lr: not given, so kohya's default learning_rate {KOHYA_LEARNING_RATE:g} would be "
                     f"the text encoder's, beside unet_lr {values['lr']:g}, and {spec.name} takes one rate for all "
                     "(kohya stops at its first step): the text encoder trains at the U-Net's "
                     "(network_train_unet_only trains the U-Net alone)")
        del values["text_encoder_lr"]
    if spec.learning_rate_free and not rate_given:  # kohya warns of its default there, and trains almost nothing
        values["lr"] = spec.default_lr
        notes.append(f"learning_rate: not given; kohya's default {KOHYA_LEARNING_RATE:g} scales {spec.name}'s own "
                     f"step size to almost nothing (kohya warns so): --lr {spec.default_lr:g}, its usual scale")
    values |= _length_and_saves(left, notes, problem, path)
    if spec_of(optimizer.get("optimizer", "adamw")).schedule_free:
        without_schedule(values, optimizer["optimizer"], scheduler_type, notes)
    elif own_steps:
        without_rates(values, flat, notes)
    elif scheduler_type:  # kohya's own schedule class replaces lr_scheduler: training it otherwise changes the LoRA
        values |= scheduler_class(str(scheduler_type), flat.get("lr_scheduler_args") or [], values, notes, problem)
    else:
        check_schedule_settings(flat, problem)
    values |= optimizer
    stop = as_number(left.pop("stop_text_encoder_training", 0) or 0, "stop_text_encoder_training", problem, int)
    if stop and values["train_text_encoder"]:  # only sd-scripts' DreamBooth script reads it (-1 there: none)
        notes.append(f"stop_text_encoder_training {stop}: sd-scripts' LoRA training ignores it, so the text encoder "
                     "trains throughout here too" + (f" (--text-encoder-until {stop} stops it)" if stop > 0 else ""))
    if flat.get("cache_text_encoder_outputs") and values["train_text_encoder"]:
        problem("cache_text_encoder_outputs", "cached text embeddings cannot train the text encoder (kohya refuses "
                "this too; kohya_ss's sdxl_cache_text_encoder_outputs passes it): set network_train_unet_only = true "
                "(or text_encoder_lr 0; in kohya_ss's GUI, beside a unet_lr), or leave the cache out")
    scale = as_number(left.pop("huber_scale", 1) or 1, "huber_scale", problem)
    if left.get("loss_type") not in ("huber", "smooth_l1"):  # kohya_ss writes the Huber settings beside any loss
        left.pop("huber_c", None), left.pop("huber_schedule", None)
    elif scale != 1:  # kohya scales the constant and exponential schedules' threshold by it, not the snr one's
        schedule = str(left.get("huber_schedule") or "snr")
        if schedule == "constant":
            left["huber_c"] = as_number(left.get("huber_c", 0.1), "huber_c", problem) * scale
            notes.append(f"huber_scale {scale:g}: the constant threshold huber_c is {left['huber_c']:g} here")
        elif schedule == "exponential":
            problem("huber_scale", f"{scale:g} scales the exponential schedule's threshold, which lowvram's "
                    "--huber-c does not; use huber_schedule \"constant\" or \"snr\", or huber_scale 1")
    if not left.get("multires_noise_iterations"):
        left.pop("multires_noise_discount", None)
    if flat.get("lr_scheduler") != "polynomial":  # kohya_ss writes the power beside any schedule
        left.pop("lr_scheduler_power", None)
    if flat.get("lr_scheduler") != "cosine_with_restarts" or values.get("scheduler") not in (None,
                                                                                          "cosine_with_restarts"):
        left.pop("lr_scheduler_num_cycles", None)  # and the cycles, where they count (check_schedule_settings), not
        # where a schedule-free optimizer or lr_scheduler_type replaced lr_scheduler's schedule
    left.pop("lr_scheduler_timescale", None)  # only inverse_sqrt reads it (check_schedule_settings)
    precision = left.pop("save_precision", None)
    if precision is not None and str(precision) not in SAVE_PRECISIONS:
        problem("save_precision", f"'{precision}' is not one of {', '.join(SAVE_PRECISIONS)}")
    elif precision is not None:
        values["save_precision"] = SAVE_PRECISIONS[str(precision)]
    if left.pop("enable_wildcard", None):  # kohya's wildcards read a caption file's lines as choices too
        values |= {"wildcards": True, "caption_lines": "each"}
    for key, (option, value) in SWITCHES.items():
        if switched_on(left.pop(key, None)):
            values[option] = value
    if str(flat.get("save_model_as") or "safetensors").lower() != "safetensors":  # (a pickle: never written)
        notes.append(f"save_model_as {flat['save_model_as']}: lowvram writes .safetensors only (a .ckpt or .pt runs "
                     "code when loaded); ComfyUI, AUTOMATIC1111 and diffusers load it")
    if values.get("color_jitter"):  # (said: the same switch, not the same augmentation)
        notes.append("color_aug: trained as --color-jitter 0.1 (brightness, contrast and saturation by up to 10 %, "
                     "in cached variants), where kohya shifts the hue a little or changes the gamma, a third of the "
                     "time")
    every = left.pop("validate_every_n_steps", None)
    if every:  # (configure drops it where nothing is held out: kohya validates nothing then)
        values["validate_every"] = as_number(every, "validate_every_n_steps", problem, int)
    if as_number(left.get("validate_every_n_epochs", 0), "validate_every_n_epochs", problem) == 1:
        del left["validate_every_n_epochs"]  # kohya's default, lowvram's too: at each epoch's end
    sides = _sides(left.get("resolution"))
    if sides and values.get("bucket") is not False:  # sd-scripts' bucket sides, where it trains the resolution
        if sides[0] >= KOHYA_BUCKET_SIDES[0]:       # with them (it refuses one outside them; lowvram's own follow
            left.setdefault("min_bucket_reso", KOHYA_BUCKET_SIDES[0])  # the resolution)
        if sides[1] <= KOHYA_BUCKET_SIDES[1]:
            left.setdefault("max_bucket_reso", KOHYA_BUCKET_SIDES[1])
    step = left.get("bucket_reso_steps")
    if isinstance(step, int) and step % 8:  # the latent grid is 8 pixels: kohya's buckets land on it too
        left["bucket_reso_steps"] = max(8, -(-step // 8) * 8)
        notes.append(f"bucket_reso_steps {step}: buckets step by {left['bucket_reso_steps']} pixels here, the "
                     "latent grid's")
    # before SAME, which would pass wandb_run_name on as it is: _logging takes it, used only with W&B on, as in kohya
    values |= _logging(left, notes)
    if "caption_extention" in left:  # sd-scripts' old spelling, which it reads over the new one
        left["caption_extension"] = left.pop("caption_extention")
    values |= {SAME[key]: left.pop(key) for key in list(left) if key in SAME}
    if by_hand is True and not dataset_config and values.get("data") and not flat.get("caption_extension") \
            and not flat.get("caption_extention") and _holds_txt(local_path(str(values["data"]), path)):
        notes.append(NO_CAPTION_EXTENSION)
    for share, strength in (("noise_offset_random_strength", "noise_offset"), ("adaptive_noise_scale", "noise_offset"),
                            ("ip_noise_gamma_random_strength", "ip_noise_gamma")):
        if values.get(share) and not values.get(strength):
            del values[share]  # a share of nothing
    if values.get("keep_saves") and not values.get("save_every"):
        del values["keep_saves"]  # nothing saved along the way to keep or delete
    if values.get("scheduler") != "warmup_stable_decay":
        values.pop("decay_steps", None)  # kohya_ss writes it beside any schedule; only this one reads it
    if prompts:
        values["sample_prompts"] = [_kohya_sample_defaults(line) for line in prompts]
    if values.get("sample_prompts"):
        values.setdefault("sample_steps", KOHYA_SAMPLE_STEPS)  # (a prompt's --s, and --sample-steps given, win)
    if values.get("sample_every") and not values.get("sample_prompts") and not prompted:
        notes.append("sample_every_n_* is not carried over: no sample_prompts file to render")
        del values["sample_every"]
    backend = left.pop("dynamo_backend", None)
    if str(backend or "no").lower() != "no":  # (kohya_ss writes "no" where it compiles nothing)
        notes.append(f"dynamo_backend {backend} not carried over: lowvram's counterpart is "
                     f"{KOHYA_FLAGS['--dynamo_backend']}")
    unknown = sorted(set(left) - INERT)
    if str(left.get("network_multiplier", 1)) in ("1", "1.0"):  # kohya's default: the strength trained here
        left.pop("network_multiplier", None)
        unknown = [key for key in unknown if key != "network_multiplier"]
    for key in [key for key in unknown if key in REFUSED_SETTINGS]:  # would change what the model is shown
        problem(key, REFUSED_SETTINGS[key])
        unknown.remove(key)
    # the diffusers scripts' or SimpleTuner's name in a file read as kohya's (lora_rank = 16 trained at rank 4)
    for key in [key for key in unknown if f"--{key}" in OTHER_TRAINER_FLAGS and f"--{key}" not in KOHYA_FLAGS
                and key not in fields_by_name()]:  # (train_text_encoder: lowvram's own too, said so below)
        ours = OTHER_TRAINER_FLAGS[f"--{key}"]
        kohya = KOHYA_EQUIVALENTS.get(f"--{key}")
        if not ours.startswith("("):  # (one lowvram needs none for is no loss)
            problem(key, "the diffusers scripts' or SimpleTuner's name, which a kohya config does not read; "
                    + (f"write {kohya} = {json.dumps(left[key])} (kohya's)" if kohya else f"pass lowvram's {ours}"))
            unknown.remove(key)
    # lowvram's own name in a file read as kohya's (`model = "…"` beside network_dim: the run then had no model)
    kohya_names = {}
    for kohya_flag, ours in KOHYA_FLAGS.items():
        kohya_names.setdefault(ours.split()[0], kohya_flag[2:])
    for key in [key for key in unknown if key in fields_by_name() and key not in SD_SCRIPTS_SETTINGS]:
        kohya = kohya_names.get("--" + key.replace("_", "-"))
        problem(key, "lowvram's name, which a kohya config does not read; " + (
            f"write {kohya} = {json.dumps(left[key])} (kohya's)" if kohya else
            f"lowvram's own config has it under [{fields_by_name()[key][0]}]"))
        unknown.remove(key)
    # a setting lowvram maps, misspelt (kohya passes it over: netwrok_dim trained at rank 4), is refused naming it;
    # a real sd-scripts setting lowvram lacks may be close to one too (save_last_n_steps_state): said, not refused
    typed = set(flat) if by_hand is True else set(by_hand or ())
    flags = [flag[2:] for flag in KOHYA_FLAGS if flag[2:] not in flat]
    meant = {key: close[0] for key in unknown if f"--{key}" not in KOHYA_FLAGS and (close := difflib.get_close_matches(
        key, [flag[2:] for flag in KOHYA_FLAGS] if by_hand is not True and key in typed else flags, n=1, cutoff=0.8))}
    for key in [key for key in unknown if key in typed and key in meant and key not in SD_SCRIPTS_SETTINGS
                and not _extends(key, meant[key])]:
        problem(key, f"no setting of kohya's; did you mean {meant[key]}? (left as it is, the run would train without "
                "it)")
        unknown.remove(key)
    # one of kohya's whose value lowvram cannot carry over as it is: its counterpart named, to set by hand
    notes += [f"{key} not carried over: lowvram's counterpart is {KOHYA_FLAGS[f'--{key}']}" for key in unknown
              if f"--{key}" in KOHYA_FLAGS]
    unknown = [key for key in unknown if f"--{key}" not in KOHYA_FLAGS]
    # one lowvram does otherwise: what to do instead (kohya's metadata_thumbnail: the first sample is the preview)
    notes += [f"{key} not carried over: {WITHOUT_COUNTERPART[f'--{key}']}" for key in unknown
              if f"--{key}" in WITHOUT_COUNTERPART]
    unknown = [key for key in unknown if f"--{key}" not in WITHOUT_COUNTERPART]
    if unknown:
        notes.append("not carried over (lowvram has no such setting): " + ", ".join(
            f"{key} (did you mean {meant[key]}?)" if key in meant else key for key in unknown))
    if problems:
        raise LowvramError("\n".join(problems))
    return values, notes


def _extends(key: str, setting: str) -> bool:
    """Whether `key` is `setting` with a word before or after it, or the other way round: another trainer's setting
    (sdxl_train.py's learning_rate_te1) or kohya_ss GUI's (noise_offset_type, sdxl_no_half_vae), not a typo of it."""
    return any(longer.startswith(shorter + "_") or longer.endswith("_" + shorter)
               for longer, shorter in ((key, setting), (setting, key)))


def _kohya_sample_defaults(line: str) -> str:
    """A prompt line of a kohya config's sample_prompts with sd-scripts' scale where it gives none, so that its
    samples compare with kohya's (lowvram's own is 7; its steps are --sample-steps, which the config sets)."""
    try:
        if parse_prompt(line).guidance is not None:
            return line
        parse_prompt(with_scale := f"{line} --l {KOHYA_SAMPLE_SCALE}")
    except ValueError:  # (said where the prompts are read for the run)
        return line
    return with_scale


def _base_weights(left: dict[str, Any], problem) -> dict[str, Any]:
    """kohya's base_weights and their base_weights_multiplier (1 where the list is short) as FILE:WEIGHT items."""
    files, weights = left.pop("base_weights", None) or [], left.pop("base_weights_multiplier", None) or []
    files = files if isinstance(files, list) else [files]
    weights = weights if isinstance(weights, list) else [weights]
    numbers = [as_number(w, "base_weights_multiplier", problem) for w in weights]
    return {"base_weights": [f"{file}:{numbers[i] if i < len(numbers) else 1.0:g}" for i, file in enumerate(files)]
            } if files else {}


def _logging(left: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Where kohya's logs go here: its Weights & Biases project (log_tracker_name, else kohya's network_train) where
    log_with asks for one and W&B is installed, and TensorBoard where log_with or a logging_dir alone asks for it
    (kohya's default then) and it is installed. Its W&B run name and key are used only with W&B on, as in kohya."""
    tracker = str(left.get("log_with") or "").lower()
    run_name, key = left.pop("wandb_run_name", None), left.pop("wandb_api_key", None)
    values: dict[str, Any] = {}
    if tracker in ("wandb", "all") and importlib.util.find_spec("wandb") is None:
        notes.append("log_with wandb: Weights & Biases is not installed (pip install 'lowvram[wandb]'); "
                     "metrics.jsonl in the output folder holds each step's loss, learning rate and gradient norm")
    elif tracker in ("wandb", "all"):
        values = {"wandb_project": str(left.get("log_tracker_name") or "network_train")} | (
            {"wandb_run_name": str(run_name)} if run_name else {})
        if key:
            notes.append("wandb_api_key: not carried over (a key is no setting for a run's saved config); run "
                         "`wandb login` once, or set WANDB_API_KEY")
    if tracker in ("tensorboard", "all") or (left.get("logging_dir") and not tracker):
        asked = f"log_with {tracker}" if tracker else "logging_dir"
        if importlib.util.find_spec("tensorboard") is None:
            notes.append(f"{asked}: TensorBoard is not installed (pip install 'lowvram[tensorboard]'); "
                         "metrics.jsonl in the output folder holds each step's loss, learning rate and gradient norm")
        else:
            values["tensorboard"] = True
            if left.get("logging_dir"):
                notes.append(f"logging_dir {left['logging_dir']}: TensorBoard's logs go to <output>/logs")
    return values


KOHYA_SAMPLE_STEPS, KOHYA_SAMPLE_SCALE = 30, 7.5  # sd-scripts' samples where a prompt gives no --s or --l
KOHYA_BUCKET_SIDES = (256, 1024)  # sd-scripts' --min_bucket_reso and --max_bucket_reso defaults


def _sides(resolution: Any) -> tuple[int, int] | None:
    """The smaller and larger side of kohya's resolution ("1024", "832,1216", [w, h]); None where it says none."""
    try:
        sides = [int(float(side)) for side in (resolution if isinstance(resolution, list) else
                                                str(resolution).split(","))]
    except (TypeError, ValueError, OverflowError):
        return None
    return (min(sides), max(sides)) if sides else None


def _length_and_saves(left: dict[str, Any], notes: list[str], problem, path: Path) -> dict[str, Any]:
    """Epochs over steps where both are set (kohya's max_train_epochs wins), kohya's 1600 steps where neither is;
    saves and samples every N steps or epochs; the prompts of a sample_prompts file, and kohya's sampler."""
    values: dict[str, Any] = {}
    epochs, steps = left.pop("max_train_epochs", None), left.pop("max_train_steps", None)
    values |= ({"epochs": as_number(epochs, "max_train_epochs", problem, int)} if epochs else
               {"max_steps": as_number(steps or 1600, "max_train_steps", problem, int)})
    warmup = as_number(left.pop("lr_warmup_steps", 0) or 0, "lr_warmup_steps", problem)
    if warmup:  # under 1, a share of the run's steps, as kohya reads it
        values["warmup_steps"] = warmup if warmup < 1 else as_number(warmup, "lr_warmup_steps", problem, int)
    scheduler = left.pop("lr_scheduler", None)
    ratio = as_number(left.pop("lr_scheduler_min_lr_ratio", 0) or 0, "lr_scheduler_min_lr_ratio", problem)
    if scheduler == "cosine_with_min_lr":  # transformers' cosine to min_lr_rate, as kohya builds it
        scheduler = "cosine"
        if ratio:
            values["min_lr_ratio"] = ratio
        else:
            problem("lr_scheduler", "cosine_with_min_lr needs lr_scheduler_min_lr_ratio; give it, or use cosine")
    if scheduler and scheduler not in SCHEDULERS:
        problem("lr_scheduler", f"'{scheduler}' is not one lowvram has; use one of {', '.join(SCHEDULERS)}")
    elif scheduler:
        values["scheduler"] = scheduler
        if scheduler == "warmup_stable_decay" and ratio:  # where its decay ends, as kohya passes it
            values["min_lr_ratio"] = ratio
    last_steps, every = left.pop("save_last_n_steps", None), left.get("save_every_n_steps")
    if last_steps and every:
        every_n = as_number(every, "save_every_n_steps", problem, int) or 1
        values["keep_saves"] = max(1, as_number(last_steps, "save_last_n_steps", problem, int) // every_n)
    for what in ("save", "sample"):
        every_steps, every_epochs = left.pop(f"{what}_every_n_steps", None), left.pop(f"{what}_every_n_epochs", None)
        by_steps = bool(every_steps) and not (what == "sample" and every_epochs)  # kohya samples by epoch then
        if every_steps and every_epochs:
            notes.append("save_every_n_steps and save_every_n_epochs: kohya saves at both; lowvram saves every "
                         f"{every_steps} steps (give --save-every {every_epochs}e for the other)" if what == "save"
                         else f"sample_every_n_steps not used: kohya samples every {every_epochs} epochs when "
                         "sample_every_n_epochs is set")
        if every_steps or every_epochs:
            count = as_number(every_steps if by_steps else every_epochs,
                              f"{what}_every_n_{'steps' if by_steps else 'epochs'}", problem, int)
            values[f"{what}_every"] = str(count) if by_steps else f"{count}e"
    try:  # (no positive interval: the save_every check names it)
        saved_every = parse_save_every(values.get("save_every"))
    except ValueError:
        saved_every = None
    if switched_on(left.get("save_state")) and saved_every:
        # kohya's state beside each LoRA saved, by epochs too: it said "lowvram's checkpoints come every 30
        # minutes", and a notebook's run killed in its first half hour could not resume
        values["checkpoint_every"] = values["save_every"]
        every, unit = saved_every
        # kohya keeps the last N epochs' states, or those of the last N steps; else as many as the LoRAs it keeps
        kept = f"save_last_n_{unit}_state"
        if last_states := left.pop(kept, None):
            count = as_number(last_states, kept, problem, int)
            values["keep_checkpoints"] = max(1, count if unit == "epochs" else count // every)
        elif saves := values.get("keep_saves") or (unit == "epochs" and left.get("save_last_n_epochs")):
            values["keep_checkpoints"] = max(1, as_number(saves, "save_last_n_epochs", problem, int))
        else:
            notes.append("save_state: kohya keeps every state it saves; lowvram keeps the newest 2 checkpoints "
                         "(--keep-checkpoints N keeps more)")
    prompts = left.pop("sample_prompts", None)
    sampler = str(left.pop("sample_sampler", None) or "ddim")  # kohya samples with DDIM unless told otherwise
    if prompts:
        prompt_file = local_path(str(prompts), path)  # here, else beside the config (as its folders are)
        try:
            lines, left_out = read_prompt_file(prompt_file)
            values["sample_prompts"] = [_kohya_sample_defaults(line) for line in lines]
        except FileNotFoundError:  # samples change nothing trained: a file left on another machine is no error
            notes.append(f"sample_prompts: {prompt_file} not found, so no samples; give --sample-prompt, or the "
                         "prompt file's path")
        except IsADirectoryError:
            problem("sample_prompts", f"{prompt_file} is a folder; give the prompt file in it")
        except UnicodeDecodeError as exc:
            problem("sample_prompts", not_utf8(prompt_file, exc))
        except OSError as exc:
            problem("sample_prompts", f"{prompt_file} is unreadable ({exc.strerror or exc})")
        except ValueError as exc:
            problem("sample_prompts", f"{prompt_file}: {exc}")
        else:
            if left_out:
                notes.append(f"sample_prompts: not carried over from {prompt_file.name}: {', '.join(left_out)}")
        try:
            values["sample_sampler"] = sampler_name(sampler)
        except ValueError as exc:
            problem("sample_sampler", str(exc))
    return values
