"""A kohya_ss GUI config (the JSON its LoRA tab saves and loads, its presets among them) read as kohya_ss passes it
to sd-scripts, then as any kohya config (`lowvram.kohya_config`): its LoRA type becomes the network module and its
network_args, its epochs the steps kohya_ss counts from its images, its warm-up (percent) a share of them, its
text-encoder stop nothing (kohya_ss ignores it for LoRA), its attention choice kohya's switch, its noise-offset type the settings that apply, its sample prompts (text in
the GUI) the prompts, and its additional parameters (sd-scripts flags) the settings they name. Plain data."""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lowvram.errors import LowvramError, quoted, shell_line
from lowvram.files import expand_home, local_path
from lowvram.kohya_config import translate
from lowvram.kohya_values import as_number, number_or_text, switched_on
from lowvram.optim import spec_of
from lowvram.prompts import prompted
from lowvram.samplers import sampler_name

# the GUI's LoRA types lowvram trains: (network module, LyCORIS algo or None, whether conv_dim/conv_alpha pass)
LORA_TYPES = {"Standard": ("networks.lora", None, False), "Kohya LoCon": ("networks.lora", None, True),
              "LoCon": ("lycoris.kohya", "locon", True), "LyCORIS/LoCon": ("lycoris.kohya", "locon", True),
              "LyCORIS/LoHa": ("lycoris.kohya", "loha", True), "LyCORIS/LoKr": ("lycoris.kohya", "lokr", True)}
# what the GUI passes in network_args for kohya's own LoRA, and for LyCORIS's, where set
KOHYA_LORA_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
                   "block_alphas", "conv_block_dims", "conv_block_alphas", "rank_dropout", "module_dropout")
LYCORIS_ARGS = ("dora_wd", "module_dropout", "rank_dropout", "use_tucker", "use_scalar", "rank_dropout_scale",
                "bypass_mode", "train_norm", "decompose_both", "use_cp")
# written beside network_args, where sd-scripts does not read them (its LoRA+ ratios are network_args')
LORAPLUS_KEYS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
RENAMED = {"optimizer": "optimizer_type", "max_resolution": "resolution", "lora_network_weights": "network_weights"}
# the GUI's own state, and what the steps above consume: never an sd-scripts setting of the same name
GUI_ONLY = {
    "LoRA_type", "LyCORIS_preset", "conv_dim", "conv_alpha", "factor", "unit", "epoch", "lr_warmup",
    "stop_text_encoder_training_pct", "stop_text_encoder_training", "xformers", "sdxl", "sdxl_no_half_vae", "sdxl_cache_text_encoder_outputs",
    "noise_offset_type", "sample_prompts", "additional_parameters", "num_cpu_threads_per_process", "model_list",
    "num_processes", "num_machines", "multi_gpu", "gpu_ids", "main_process_port", "extra_accelerate_launch_args",
    "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic", "use_wandb", "save_as_bool", "file_path",
    "flux1_checkbox", "sd3_checkbox", "constrain", "rescaled", "train_on_input",
    "lowvram",  # (kohya_ss's switch for sd-scripts' --lowvram offloading of FLUX/SD3 parts: lowvram plans its own)
    *KOHYA_LORA_ARGS, *LYCORIS_ARGS, *LORAPLUS_KEYS,
}


def is_kohya_gui_config(doc: Any) -> bool:
    """A kohya_ss GUI's saved LoRA config: its LoRA_type, or (an older kohya_ss's, which had none, and loads as
    Standard) its max_resolution and network_dim beside the model (its DreamBooth, textual-inversion and
    fine-tuning tabs' configs have no network_dim: no LoRA's)."""
    return isinstance(doc, dict) and ("LoRA_type" in doc or {"max_resolution", "network_dim",
                                                             "pretrained_model_name_or_path"} <= doc.keys())


# the LoRA tab's own values, which a file kohya_ss opens leaves in place where it names no value (a preset, a config
# trimmed by hand): not sd-scripts' defaults (no buckets, rank 4, .caption files, 1600 steps), which it never meets
# (no optimizer: kohya_ss's update_my_data gives a file without one AdamW, or its use_8bit_adam's AdamW8bit)
GUI_DEFAULTS = {"enable_bucket": True, "network_dim": 8, "network_alpha": 1, "epoch": 1, "learning_rate": 0.0001,
                "lr_scheduler": "cosine", "lr_warmup": 10, "max_resolution": "512,512", "min_bucket_reso": 256,
                "max_bucket_reso": 2048, "bucket_reso_steps": 64, "caption_extension": ".txt", "train_batch_size": 1}

# the GUI's number fields whose text is read as a number (kohya_ss's float() or int() of it stops on another text)
GUI_NUMBERS = {"epoch": int, "max_train_steps": int, "max_train_epochs": int, "lr_warmup": float,
               "lr_warmup_steps": int, "train_batch_size": int, "gradient_accumulation_steps": int,
               "num_processes": int, "learning_rate": float, "text_encoder_lr": float, "unet_lr": float,
               "max_grad_norm": float}

# the command line's options kohya_ss counts its steps for the GUI's epochs from, as the GUI's fields
COUNTED_FROM = {"batch_size": "train_batch_size", "gradient_accumulation": "gradient_accumulation_steps",
                "data": "train_data_dir", "reg_data": "reg_data_dir", "epochs": "epoch"}  # (and its restarts)


def translate_gui(doc: dict[str, Any], path: Path, given: Mapping[str, Any] | None = None
                  ) -> tuple[dict[str, Any], list[str]]:
    """(lowvram option values, notes) for a kohya_ss GUI config. Raises LowvramError, one line per setting, for
    what lowvram cannot train as kohya_ss would. `given`: the command line's values, which replace the GUI's
    fields kohya_ss counts the steps of its epochs from (its batch size, images), as kohya_ss counts them anew
    when they change."""
    given_fields = {field: given[name] for name, field in COUNTED_FROM.items() if given and given.get(name) is not None}
    filled = {key: value for key, value in GUI_DEFAULTS.items() if key not in doc and key not in given_fields
              and not (key == "lr_warmup" and doc.get("lr_scheduler") == "constant")}  # (the GUI's 0 there)
    doc = filled | doc | given_fields
    for switch, kind in (("use_8bit_adam", "AdamW8bit"), ("use_lion_optimizer", "Lion")):  # an older kohya_ss's:
        # its optimizer where the file names none, as kohya_ss's update_my_data reads it (never passed on)
        on = switched_on(doc.get(switch))
        doc = {key: value for key, value in doc.items() if key != switch} | (
            {"optimizer": kind} if on and not doc.get("optimizer") else {})
    for field in ("train_data_dir", "reg_data_dir"):  # counted where they are found: here, else beside the config
        if doc.get(field) and (found := local_path(str(doc[field]), Path(path))) != expand_home(str(doc[field])):
            doc = doc | {field: str(found)}
    problems: list[str] = []

    def problem(key: str, text: str) -> None:
        problems.append(f"{path}: {key}: {text}")

    for key, kind in GUI_NUMBERS.items():  # (else read as none: epoch "ten" trained sd-scripts' 1600 steps unsaid)
        if doc.get(key) not in ("", None):
            as_number(doc[key], key, problem, kind)
    # (a length the command line gives: the GUI's warm-up percent is of its steps, not the GUI's)
    length_given = bool(given) and any(given.get(name) is not None for name in ("max_steps", "epochs"))
    settings = _sd_scripts_settings(doc, problem, length_given)
    if problems:
        raise LowvramError("\n".join(problems))
    prompts = [line.strip() for line in str(doc.get("sample_prompts") or "").splitlines()]
    prompts = [line for line in prompts if line and not line.startswith("#")]
    typed = set(_additional(str(doc.get("additional_parameters") or ""), lambda *_: None))  # (refused if misspelt)
    try:
        values, notes = translate(settings, path, prompts, by_hand=typed, prompted=prompted(given or {}))
    except LowvramError as exc:  # (each line names the setting as the GUI's file does: optimizer, not optimizer_type)
        lines = str(exc).splitlines()
        for gui, ours in RENAMED.items():
            lines = [f"{path}: {gui}:{line.removeprefix(f'{path}: {ours}:')}" if line.startswith(f"{path}: {ours}:")
                     else line for line in lines]
        raise LowvramError("\n".join(lines)) from None
    if filled:  # (said: which of the run's settings the file did not name)
        notes.insert(0, "left out of the file, taken as kohya_ss's LoRA tab has them: " + ", ".join(
            f"{key} {value}{'%' * (key == 'lr_warmup')}" for key, value in filled.items()))
    if doc.get("dataset_config") and _number(doc.get("epoch")) and not _number(settings.get("max_train_epochs")) \
            and not _number(settings.get("max_train_steps")) and not length_given:  # (0, as newer GUIs write it)
        notes.append(f"epoch {doc['epoch']} not used: with a dataset_config kohya_ss passes no length, and "
                     "sd-scripts trains its default 1600 steps (give max_train_steps, or --epochs)")
    if _number(doc.get("lr_warmup")) and not doc.get("dataset_config") and "lr_warmup_steps" not in settings:
        notes.append(f"lr_warmup {doc['lr_warmup']}% not used: with no epoch nor max_train_steps, kohya_ss counts no "
                     "steps and passes no warm-up (sd-scripts trains its default 1600 steps)")
    if doc.get("dataset_config") and _number(doc.get("lr_warmup")) and not _number(doc.get("max_train_steps")):
        notes.append(f"lr_warmup {doc['lr_warmup']}% not used: with a dataset_config and no max_train_steps, "
                     "kohya_ss passes no warm-up")
    if doc.get("caption_extension") == "" and not doc.get("dataset_config"):  # (one of the GUI's dropdown's choices)
        notes.append("caption_extension \"\": kohya_ss passes none, and sd-scripts reads .caption files only then "
                     "(the folders' names where there are none); lowvram reads .txt and .caption files")
    schedule_free = spec_of(values.get("optimizer", "adamw")).schedule_free
    constant = values.get("scheduler", "constant") == "constant" and not schedule_free
    given = (f"lr_warmup_steps {doc['lr_warmup_steps']}" if _number(doc.get("lr_warmup_steps")) else
             f"lr_warmup {doc['lr_warmup']}%" if _number(doc.get("lr_warmup")) else None)
    if values.get("warmup_steps") and constant and given:  # (a schedule-free one's is its own)
        del values["warmup_steps"]  # (said in the GUI's words, not as a --warmup-steps never typed)
        notes.append(f"{given}: the constant scheduler has no warm-up (sd-scripts stops at one: \"constant does not "
                     "require num_warmup_steps\"; constant_with_warmup has one); not carried over, the rate is "
                     "constant from the first step")
    ignored = [f"{key} {doc[key]}" for key in LORAPLUS_KEYS if _number(doc.get(key))]
    if ignored:
        notes.append(f"{', '.join(ignored)}: kohya_ss passes these beside network_args, where sd-scripts does not "
                     "read them, so they train nothing here either (LoRA+ is network_args' loraplus_lr_ratio=R, or "
                     "--loraplus-ratio R)")
    key = "stop_text_encoder_training_pct" if "stop_text_encoder_training_pct" in doc else "stop_text_encoder_training"
    percent = as_number(doc.get(key) or 0, key, problem)  # percent of the run in the GUI, under either name
    if percent and values.get("train_text_encoder"):  # kohya_ss: "not yet supported. Ignoring" (lora_gui.py)
        notes.append(f"{key} {percent:g}: kohya_ss's LoRA training ignores it, so the text encoder trains "
                     f"throughout here too (--text-encoder-until {percent:g}% stops it)")
    processes = int(_number(doc.get("num_processes")))
    if processes > 1 and int(os.environ.get("WORLD_SIZE") or 1) < processes:  # (not launched as it asks)
        notes.append(f"num_processes {processes}: kohya_ss launches that many processes, one per GPU; here: "
                     + shell_line("accelerate", "launch", "--multi_gpu", "--num_processes", processes, "-m",
                                  "lowvram", "train", "--config", path))
    if ids := str(doc.get("gpu_ids") or "").strip():  # (kohya_ss's accelerate launch --gpu_ids)
        notes.append(f"gpu_ids {ids} not carried over: kohya_ss trains on those GPUs; here, set "
                     f"CUDA_VISIBLE_DEVICES={ids} for the command")
    if extra := str(doc.get("extra_accelerate_launch_args") or "").strip():
        notes.append(f"extra_accelerate_launch_args {extra!r} not carried over: kohya_ss's flags for accelerate's "
                     "launcher; give lowvram's own (its --mixed-precision for accelerate's)")
    if prompts:
        try:  # kohya_ss's default is euler_a; sd-scripts' (without the GUI) ddim
            values["sample_sampler"] = sampler_name(str(doc.get("sample_sampler") or "euler_a"))
        except ValueError as exc:
            problem("sample_sampler", str(exc))
    if problems:
        raise LowvramError("\n".join(problems))
    return values, notes


def _sd_scripts_settings(doc: dict[str, Any], problem, length_given: bool = False) -> dict[str, Any]:
    """The settings kohya_ss writes into sd-scripts' config for this GUI config (lowvram reads the parts it
    trains; kohya_config leaves out the switched-off ones). `length_given`: the command line sets the run's
    length, which the warm-up percent is then a share of."""
    gui = {key: number_or_text(value) for key, value in doc.items() if value not in ("", None)}
    settings = {RENAMED.get(key, key): value for key, value in gui.items() if key not in GUI_ONLY}
    for key in ("optimizer_args", "lr_scheduler_args"):  # text in the GUI, split as kohya_ss splits it
        if isinstance(settings.get(key), str):
            settings[key] = settings[key].replace('"', "").split()
    settings |= _network(gui, problem)
    if gui.get("sdxl") is True and gui.get("sdxl_cache_text_encoder_outputs") is True:  # (kohya_ss passes it so)
        settings["cache_text_encoder_outputs"] = True
    if gui.get("use_wandb") is True:  # the GUI's switch for sd-scripts' --log_with wandb
        settings.setdefault("log_with", "wandb")
    additional = _additional(str(gui.get("additional_parameters") or ""), problem)
    length = [key for key in ("max_train_epochs", "max_train_steps") if _number(gui.get(key)) or key in additional]
    steps = None
    if not length and _number(gui.get("epoch")) and not gui.get("dataset_config"):
        # the steps kohya_ss passes for the GUI's epochs, from its own count of the images (not of a dataset file,
        # whose images it does not count: sd-scripts' 1600 steps then); where its folder is not here, the epochs
        steps = gui_steps(gui)
        settings |= {"max_train_steps": steps} if steps else {"max_train_epochs": gui["epoch"]}
    # steps kohya_ss knows (epoch and max_train_steps 0: none, and it passes no warm-up; sd-scripts trains 1600)
    counted = (not gui.get("dataset_config") or _number(gui.get("max_train_steps"))) and (
        length or _number(gui.get("epoch")) or length_given)
    if not _number(gui.get("lr_warmup_steps")) and _number(gui.get("lr_warmup")) and counted:  # percent of them
        # the GUI's steps, else those it counts for its epochs (even where max_train_epochs then sets the length)
        known = int(_number(gui.get("max_train_steps"))) or steps or (
            gui_steps(gui) if _number(gui.get("epoch")) and not gui.get("dataset_config") else None)
        percent = float(gui["lr_warmup"])
        settings["lr_warmup_steps"] = (round(percent * known / 100) if known and not length_given
                                       else min(percent / 100, 0.999))  # (a share under 1, else a step count)
    attention = str(gui.get("xformers", "")).lower()
    settings |= {"xformers": attention in ("xformers", "true"), "sdpa": attention == "sdpa"}
    if str(gui.get("noise_offset_type", "Original")) == "Multires":
        settings.pop("noise_offset", None), settings.pop("adaptive_noise_scale", None)
    else:
        settings.pop("multires_noise_iterations", None), settings.pop("multires_noise_discount", None)
    if _number(gui.get("max_grad_norm")) == 0:
        settings.pop("max_grad_norm", None)  # kohya_ss drops a 0 as it drops False: sd-scripts clips at its 1.0
    text_rate, unet_rate = _number(gui.get("text_encoder_lr")), _number(gui.get("unet_lr"))
    for key, rate in (("text_encoder_lr", text_rate), ("unet_lr", unet_rate)):
        if not rate:
            settings.pop(key, None)  # kohya_ss leaves a rate of 0 out: learning_rate stands in
    if not text_rate and unet_rate:  # a text-encoder rate of 0 beside a U-Net one: kohya_ss trains the U-Net alone
        settings |= {"network_train_unet_only": True}
    elif text_rate and not unet_rate:  # (kohya_ss trains the text encoder alone: its network_train_text_encoder_only)
        given = quoted(gui.get("unet_lr", "")) if "unet_lr" in doc else "not in the file,"
        problem("unet_lr", f"{given} beside text_encoder_lr {gui['text_encoder_lr']}: kohya_ss "
                "then trains the text encoder alone, and lowvram always trains the U-Net; give unet_lr (kohya_ss's "
                "default is 0.0001)")
    if gui.get("lr_scheduler") == "cosine_with_restarts" and "lr_scheduler_num_cycles" not in gui and _number(
            gui.get("epoch")):
        settings["lr_scheduler_num_cycles"] = int(_number(gui["epoch"]))  # kohya_ss: a restart per epoch
    return settings | additional


GUI_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # what kohya_ss counts


def gui_steps(gui: dict[str, Any]) -> int | None:
    """kohya_ss's max_train_steps for its epochs: ceil(images x repeats / batch / accumulation x epochs x 2 with
    regularization images) over the N_name folders of train_data_dir; None where that folder is not here."""
    given = str(gui.get("train_data_dir") or "")
    root = expand_home(given)
    if not given or not root.is_dir():
        return None
    total = 0
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        try:
            repeats = int(folder.name.split("_")[0])
        except ValueError:  # kohya_ss skips a folder without its repeats
            continue
        total += repeats * sum(1 for path in folder.iterdir() if path.name.lower().endswith(GUI_IMAGE_SUFFIXES))
    if not total:
        return None
    batch = max(1, int(_number(gui.get("train_batch_size")) or 1))
    accumulation = max(1, int(_number(gui.get("gradient_accumulation_steps")) or 1))
    regularization = 2 if gui.get("reg_data_dir") else 1
    return math.ceil(total / batch / accumulation * int(_number(gui["epoch"])) * regularization)


def _network(gui: dict[str, Any], problem) -> dict[str, Any]:
    kind = str(gui.get("LoRA_type", "Standard"))
    if kind not in LORA_TYPES:
        problem("LoRA_type", f"'{kind}' is not a network lowvram trains ({', '.join(LORA_TYPES)})")
        return {}
    module, algo, conv = LORA_TYPES[kind]
    names = KOHYA_LORA_ARGS if algo is None else LYCORIS_ARGS + (("factor",) if algo == "lokr" else ())
    args = [f"{name}={gui[name]}" for name in names if _set(gui.get(name))]
    if conv and _set(gui.get("conv_dim")):
        args += [f"conv_dim={gui['conv_dim']}", f"conv_alpha={gui.get('conv_alpha', 1)}"]
    if algo:
        args += [f"algo={algo}", f"preset={gui.get('LyCORIS_preset') or 'full'}"]
    return {"network_module": module, "network_args": args}


LIST_FLAGS = ("network_args", "optimizer_args", "lr_scheduler_args", "base_weights", "base_weights_multiplier")


def _additional(text: str, problem) -> dict[str, Any]:
    """kohya_ss's additional parameters (sd-scripts flags, appended to its command) as settings: `--name value`,
    `--name=value`, a switch alone, or several values (network_args) as a list: always one for sd-scripts'
    list flags, whose single value is a list of one."""
    try:
        words = _words(text)
    except ValueError as exc:
        problem("additional_parameters", f"{text!r} is not a command line ({exc})")
        return {}
    settings: dict[str, Any] = {}
    name = None
    for word in words:
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            settings[name] = number_or_text(value) if value else True
        elif name is None:
            problem("additional_parameters", f"{word!r} follows no --flag")
        else:
            given = settings[name]
            settings[name] = number_or_text(word) if given is True else (given if isinstance(given, list) else [given]) + [word]
    for name in LIST_FLAGS:
        if name in settings and not isinstance(settings[name], list):
            settings[name] = [settings[name]] if settings[name] is not True else []
    return settings


def _words(text: str) -> list[str]:
    """A command line as kohya_ss passes it: POSIX quoting, where a \\ escapes only as POSIX reads it in a path
    (before a quote, a space or another \\); a Windows path's other \\ stays. One whose quotes do not close as a
    shell's would (C:\\Users\\O'Brien) is split at its spaces."""
    words = shlex.shlex(text, posix=True)
    words.whitespace_split, words.commenters = True, ""
    if re.search(r"\\[^\"'\\\s]", text):  # a Windows path's \U, \m: no escapes
        words.escape = ""
    try:
        return list(words)
    except ValueError:
        return text.split()


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _set(value: Any) -> bool:
    """A network setting the GUI passes: not empty, zero or off."""
    return value not in (None, "", 0, False, "0", "False", "false")
