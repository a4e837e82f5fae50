"""A OneTrainer training config (the JSON its UI saves or exports) translated into lowvram's options, so a OneTrainer
user's `--config my-lora.json` trains the LoRA OneTrainer would: its model, concepts, samples, learning rate and
schedule, network, loss, noise and masking settings. Plain data, no torch.

OneTrainer writes every setting, most at their defaults; those that change nothing lowvram does (its workspace,
its TensorBoard viewer, the parts other model types have) are left out quietly; its backups are checkpoints; its
TensorBoard logs, which it always writes, are written (where TensorBoard is installed). Its memory settings at their defaults
(16-bit weights, gradient checkpointing on) are left to lowvram's planner, which picks the fastest that fits; a
quantized U-Net it names is kept. What lowvram cannot train as OneTrainer would (another model type, a full
fine-tune, another adapter or loss) is refused, one line per setting. Relative paths are taken from the current
folder, else from the config's folder or the one above it (OneTrainer reads them from its own folder, and keeps
its configs one below).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
from pathlib import Path, PureWindowsPath
from typing import Any

from lowvram.config import fields_by_name
from lowvram.errors import LowvramError, quoted
from lowvram.files import decode_hint, expand_home, local_path, not_found_hint, text_of
from lowvram.kohya_network import LYCORIS_PRESETS as LAYER_PRESETS  # OneTrainer names its presets as LyCORIS
from lowvram.kohya_values import as_number
from lowvram.onetrainer_optimizers import misspelt, optimizer_values
from lowvram.optim import RATE_OPTIONS, sets_own_step_sizes
from lowvram.option_values import area_side
from lowvram.prompts import onetrainer_sample
from lowvram.run_files import LORA_SUFFIX, runs_name
from lowvram.timesteps import SHAPED, TIMESTEP_DISTRIBUTIONS

MODEL_TYPES = ("STABLE_DIFFUSION_15", "STABLE_DIFFUSION_XL_10_BASE")
SCHEDULERS = {"CONSTANT": "constant", "LINEAR": "linear", "COSINE": "cosine", "COSINE_WITH_RESTARTS":
              "cosine_with_restarts", "COSINE_WITH_HARD_RESTARTS": "cosine_with_restarts", "REX": "rex"}
QUANTIZED = {"FLOAT_8": "fp8", "INT_8": "bnb-int8", "NFLOAT_4": "bnb-nf4", "FLOAT_W8A8": "w8a8-fp8",
             "INT_W8A8": "w8a8-int8"}  # a U-Net storage OneTrainer names -> lowvram's
PRECISIONS = {"FLOAT_16": "fp16", "BFLOAT_16": "bf16", "FLOAT_32": "fp32"}
NETWORKS = {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr"}
# the U-Net's layer_filter each of OneTrainer's SD1.5/SDXL presets writes (its LAYER_PRESETS), which is what trains
FILTER_LAYERS = {"attentions": "attn-mlp", "attn": "attn", "": "full"}
# what OneTrainer keeps beside the training itself, or for model types and methods lowvram does not train
INERT = {
    "__version", "debug_mode", "debug_dir", "workspace_dir", "cache_dir", "tensorboard", "tensorboard_expose",
    "tensorboard_always_on", "tensorboard_port", "prevent_overwrites", "include_train_config",
    "multi_gpu", "device_indexes", "gradient_reduce_precision", "fused_gradient_reduce", "async_gradient_reduce",
    "async_gradient_reduce_buffer", "output_model_format", "enable_async_offloading", "force_circular_padding",
    "latent_caching", "clear_cache_before_training", "dataloader_threads", "train_device", "temp_device",
    "fallback_train_dtype", "enable_autocast_cache", "only_cache", "frames", "vb_loss_strength", "prior",
    "transformer", "quantization", "text_encoder_3", "text_encoder_3_layer_skip", "text_encoder_4",
    "text_encoder_4_layer_skip", "text_encoder_sequence_length", "text_encoder_2_sequence_length",
    "effnet_encoder", "decoder", "decoder_text_encoder", "decoder_vqgan", "unmasked_probability",
    "custom_conditioning_image", "embedding_learning_rate", "preserve_embedding_norm", "embedding",
    "additional_embeddings", "embedding_weight_dtype", "cloud", "lora_weight_dtype", "bundle_additional_embeddings",
    "lora_decompose_norm_epsilon", "lora_decompose_output_axis", "optimizer_defaults", "sample_image_format",
    "sample_video_format", "sample_audio_format", "samples_to_tensorboard", "non_ema_sampling",
    "rolling_backup", "rolling_backup_count", "backup_before_save",
    "secrets", "async_offloading", "caching_threads", "image_caching", "text_caching", "prefetch_next_batch",
    "oft_clipped_norm", "unconditional_transformer",
    "layer_filter_regex", "oft_block_size", "oft_block_share", "oft_scaled", "lokr_dim", "lokr_decompose_both",
    "lokr_use_tucker", "lokr_weight_decompose", "lokr_dora_on_output", "lokr_full_matrix", "lokr_vec_trick",
    "constant_snr_floor", "scheduler_params", "custom_learning_rate_scheduler",
    "enable_activation_offloading", "layer_offload_fraction",  # memory levers: the planner's to choose
    "weight_dtype", "attention_mechanism",  # older configs': the planner's and lowvram's attention choice
    "align_prop_probability", "align_prop_loss", "align_prop_weight", "align_prop_steps", "align_prop_truncate_steps",
    "align_prop_cfg_scale",  # used only with align_prop, which is refused
    "token_count", "initial_embedding_text", "latent_caching_epochs",  # older configs': embeddings, caching
}
# older OneTrainer configs' names for what newer ones call otherwise
RENAMED = {"lora_layers": "layer_filter", "lora_layer_preset": "layer_filter_preset", "save_after": "save_every",
           "save_after_unit": "save_every_unit"}
# settings read below, each by its own rule
READ = {
    "training_method", "model_type", "base_model_name", "output_dtype", "output_model_destination",
    "continue_last_backup", "backup_after", "backup_after_unit",
    "gradient_checkpointing", "compile",
    "concept_file_name", "concepts", "aspect_ratio_bucketing", "learning_rate_scheduler", "learning_rate",
    "learning_rate_warmup_steps", "learning_rate_cycles", "learning_rate_min_factor", "epochs", "batch_size",
    "gradient_accumulation_steps",
    "ema", "ema_decay", "ema_update_step_interval", "train_dtype", "resolution", "mse_strength", "mae_strength", "log_cosh_strength",
    "huber_strength", "huber_delta", "loss_weight_fn", "loss_weight_strength", "dropout_probability", "loss_scaler",
    "learning_rate_scaler", "clip_grad_norm", "offset_noise_weight", "generalized_offset_noise",
    "perturbation_noise_weight", "rescale_noise_scheduler_to_zero_terminal_snr", "force_v_prediction",
    "force_epsilon_prediction", "min_noising_strength", "max_noising_strength", "timestep_distribution",
    "noising_weight", "noising_bias", "timestep_shift", "dynamic_timestep_shifting", "resolution_aware_loss_weight",
    "unet", "text_encoder", "text_encoder_2", "text_encoder_layer_skip", "text_encoder_2_layer_skip", "vae",
    "align_prop",
    "masked_training", "unmasked_weight", "masked_prior_preservation_weight", "normalize_masked_area_loss",
    "layer_filter", "layer_filter_preset",
    "peft_type", "lora_model_name", "lora_rank", "lora_alpha", "lora_decompose", "lokr_decompose_factor",
    "optimizer", "sample_definition_file_name", "samples", "sample_after", "sample_after_unit", "save_every",
    "save_every_unit", "validation", "validate_after", "validate_after_unit",
}


def is_onetrainer_config(doc: Any) -> bool:
    return isinstance(doc, dict) and "model_type" in doc and "training_method" in doc


# the settings of each model part older configs (before __version 2) keep at the top level: OneTrainer's own
# migration 1 moves `<prefix>...` into the part's section under the second name
PART_SETTINGS = {"unet": ("train_unet", "unet_learning_rate", "unet_weight_dtype", "train_unet_epochs"),
                 "text_encoder": ("train_text_encoder", "text_encoder_learning_rate", "text_encoder_weight_dtype",
                                  "train_text_encoder_epochs"),
                 "text_encoder_2": ("train_text_encoder_2", "text_encoder_2_learning_rate",
                                    "text_encoder_2_weight_dtype", "train_text_encoder_2_epochs"),
                 "vae": (None, None, "vae_weight_dtype", None)}


# OneTrainer's own defaults (its TrainConfig.default_values) where lowvram's differ in a way that changes the LoRA: its
# presets hold only what differs from them, and its UI fills in the rest
DEFAULTS = {"lora_rank": 16, "lora_alpha": 1.0, "learning_rate": 3e-6, "learning_rate_warmup_steps": 200.0,
            "epochs": 100, "batch_size": 1, "layer_filter_preset": "full", "learning_rate_scheduler": "CONSTANT",
            "concept_file_name": "training_concepts/concepts.json",
            "sample_definition_file_name": "training_samples/samples.json",
            "output_dtype": "FLOAT_32"}  # (its own presets give none: fp16 was saved)
BACKUP_AFTER, BACKUP_UNIT = 30, "MINUTE"  # OneTrainer's where a config gives one alone (its presets: 10, never)
ROLLING_BACKUPS = 3  # OneTrainer's rolling_backup_count where a config gives none
# what lowvram reads as numbers and as sections: a hand-edited value of another type is named, not crashed into
NUMBERS = ("learning_rate", "learning_rate_warmup_steps", "learning_rate_cycles", "learning_rate_min_factor", "epochs",
           "unmasked_probability",
           "batch_size", "gradient_accumulation_steps", "lora_rank", "lora_alpha", "dropout_probability",
           "lokr_decompose_factor", "clip_grad_norm", "save_every", "sample_after", "validate_after",
           "text_encoder_layer_skip", "text_encoder_2_layer_skip", "mse_strength", "mae_strength",
           "log_cosh_strength", "huber_strength", "loss_weight_strength", "min_snr_gamma", "min_noising_strength",
           "max_noising_strength", "noising_weight", "noising_bias", "timestep_shift", "unmasked_weight",
           "masked_prior_preservation_weight", "offset_noise_weight", "perturbation_noise_weight", "ema_decay",
           "ema_update_step_interval")
PART_NUMBERS = ("learning_rate", "stop_training_after")
# a model part's section: OneTrainer's settings (its TrainModelPartConfig), and those lowvram reads
PART_KEYS = {"model_name", "include", "train", "stop_training_after", "stop_training_after_unit", "learning_rate",
             "weight_dtype", "dropout_probability", "train_embedding", "attention_mask", "guidance_scale",
             "gradient_checkpointing", "offload_fraction", "activation_offloading"}
PART_READ = ("train", "learning_rate", "stop_training_after", "stop_training_after_unit", "weight_dtype",
             "model_name")
NESTED_SECTIONS = ("unet", "text_encoder", "text_encoder_2", "vae", "optimizer")
PART_DEFAULTS = {part: {"train": True, "stop_training_after": 30, "stop_training_after_unit": "EPOCH"}
                 for part in ("text_encoder", "text_encoder_2")}


def _with_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    """A config (a preset of only what differs, as OneTrainer ships them) with OneTrainer's defaults beneath it."""
    parts = {part: defaults | (doc.get(part) or {}) for part, defaults in PART_DEFAULTS.items()}
    return DEFAULTS | doc | parts


def _migrated(doc: dict[str, Any]) -> dict[str, Any]:
    """An older config in the shape of the current one, as OneTrainer's TrainConfig migrations bring it (those
    that concern what lowvram reads): the optimizer and its settings into one section (version 0), each model
    part's settings into its own (1), min-SNR as a loss weighting (2), the old noising bias as an offset from
    0.5 (3), gradient checkpointing as ON or OFF (4), and a part's weight dtype NONE as the config's (9)."""
    version = int(doc.get("__version") or 0) if str(doc.get("__version") or 0).isdigit() else 0
    doc = dict(doc)
    if version < 1 and isinstance(doc.get("optimizer"), str):
        section = {key.removeprefix("optimizer_"): doc.pop(key) for key in list(doc)
                   if key.startswith("optimizer_") and key != "optimizer_defaults"}
        if "weight_decay" in doc:  # (the first configs' own setting, which the migration leaves where the current
            section.setdefault("weight_decay", doc.pop("weight_decay"))  # ones read nothing: what it was meant as)
        doc["optimizer"] = {"optimizer": doc["optimizer"], **section}
    if version < 2:
        vae_model = doc.pop("vae_model_name", None)
        for part, (train, rate, dtype, epochs) in PART_SETTINGS.items():
            section = dict(doc.get(part) or {})
            for key, name in ((train, "train"), (rate, "learning_rate"), (dtype, "weight_dtype")):
                if key in doc:
                    section[name] = doc.pop(key)
            if epochs in doc:
                section |= {"stop_training_after": doc.pop(epochs), "stop_training_after_unit": "EPOCH"}
            if part == "vae" and vae_model:
                section["model_name"] = vae_model
            if section:
                doc[part] = section
    if version < 3 and doc.get("min_snr_gamma"):
        doc |= {"loss_weight_fn": "MIN_SNR_GAMMA", "loss_weight_strength": doc.pop("min_snr_gamma")}
    if version < 4 and "noising_bias" in doc:
        doc["noising_bias"] = float(doc["noising_bias"] or 0.5) - 0.5 if doc.get("noising_weight") else 0.0
    if version < 5 and isinstance(doc.get("gradient_checkpointing"), bool):
        doc["gradient_checkpointing"] = "ON" if doc["gradient_checkpointing"] else "OFF"
    if version < 10 and doc.get("weight_dtype"):  # a part's NONE: the config's weight_dtype
        for part in PART_SETTINGS:
            if isinstance(doc.get(part), dict) and str(doc[part].get("weight_dtype", "NONE")).upper() == "NONE":
                doc[part] = {**doc[part], "weight_dtype": doc["weight_dtype"]}
    return doc


def _misspelt(doc: dict[str, Any], problem, older: set[str] | None = None) -> None:
    """A key of no OneTrainer setting that is a typo of one the config leaves out (learning_rte): refused, naming
    it (OneTrainer passes over a key it does not know, and its default, 100 times lower, trained)."""
    known = READ | INERT | set(RENAMED) | {name for names in PART_SETTINGS.values() for name in names if name}
    for key in sorted(set(doc) - known):  # (only the settings read are offered: an older OneTrainer's own keys,
        # effnet_encoder_weight_dtype, embeddings, are no typos of the ones lowvram passes over)
        # (an older config's: its model parts' keys too, but for those it holds, moved into their sections)
        parts = {name for names in PART_SETTINGS.values() for name in names if name} - older if older else set()
        close = difflib.get_close_matches(key, sorted((READ | parts) - set(doc)), n=1, cutoff=0.85)
        if close:
            problem(key, misspelt(close[0]))
    for part in PART_SETTINGS:  # (the sections' own: unet.learnig_rate trained at the run's rate)
        section = doc.get(part) if isinstance(doc.get(part), dict) else {}
        for key in sorted(set(section) - PART_KEYS):
            close = difflib.get_close_matches(key, sorted(set(PART_READ) - set(section)), n=1, cutoff=0.85)
            if close:
                problem(f"{part}.{key}", misspelt(f"{part}.{close[0]}"))


def translate_onetrainer(doc: dict[str, Any], path: Path, prompted: bool = False) -> tuple[dict[str, Any], list[str]]:
    """(lowvram option values, notes for the user) for a OneTrainer training config. Raises LowvramError, one line
    per setting, for each setting lowvram cannot train as OneTrainer would. `prompted`: the command line gives the
    sample prompts, which replace its samples (not read, their interval the command line's prompts')."""
    values: dict[str, Any] = {}
    notes: list[str] = []
    problems: list[str] = []

    def problem(key: str, text: str) -> None:
        problems.append(f"{path}: {key}: {text}")

    # checked before the migrations read values and after they (and the renames) move them (a first version's
    # optimizer is a name)
    older = not str(doc.get("__version") or 0).isdigit() or int(doc.get("__version") or 0) < 2  # (its parts' keys
    # at the top level: a typo of one stays there after the migration, which moves the ones it has)
    written = set(doc)
    doc = _migrated(_typed(doc, problem, NESTED_SECTIONS[:-1]))
    second_given = "train" in (doc.get("text_encoder_2") or {})
    # a LoRA trained further whose rank and alpha the config leaves out: the file's (OneTrainer's 16 and 1 were
    # taken, and the file refused for them, naming command-line flags a config does not have)
    files_own = [key for key in ("lora_rank", "lora_alpha") if doc.get("lora_model_name") and key not in doc]
    _misspelt(doc, problem, written if older else None)
    doc = _with_defaults(_typed({RENAMED.get(key, key): value for key, value in doc.items()}, problem))
    if (_upper(doc, "model_type") or "").startswith("STABLE_DIFFUSION_XL") and not second_given and \
            doc["text_encoder_2"]["train"] and not doc["text_encoder"]["train"]:  # (an older config's, often)
        notes.append("text_encoder_2.train: not in the config, so OneTrainer's default (true): the second text "
                     "encoder trains though the first does not; set it false to train the U-Net alone")

    def number(key: str, kind: type = float) -> Any:
        return as_number(doc[key], key, problem, kind)

    if _upper(doc, "training_method") != "LORA":
        problem("training_method", f"{doc.get('training_method')}: lowvram trains LoRA adapters; save the config "
                "with the training method LoRA")
    if doc.get("additional_embeddings"):
        problem("additional_embeddings", "lowvram trains no embeddings, so the captions' placeholders would train as "
                "plain words; remove the embeddings (and their placeholders from the captions), or train them in "
                "OneTrainer")
    if doc.get("align_prop"):
        problem("align_prop", "AlignProp's reward training is not something lowvram does; turn it off")
    if _upper(doc, "model_type") not in MODEL_TYPES:
        problem("model_type", f"{doc.get('model_type')}: lowvram trains Stable Diffusion 1.5 and SDXL (base), not "
                "their inpainting models or other architectures")
    if doc.get("base_model_name"):
        values["model"] = _found(str(doc["base_model_name"]), path)
    if (doc.get("vae") or {}).get("model_name"):
        values["vae"] = _found(str(doc["vae"]["model_name"]), path)
    values |= _data(doc, path, problem, notes)
    values |= _output(doc, notes, problem)
    values |= _schedule(doc, notes, problem, number)
    values |= _network(doc, path, problem, number)
    if files_own:
        values = {key: value for key, value in values.items() if f"lora_{key}" not in files_own}
    if values.get("train_text_encoder") and values.get("lora_layers") == "attn":
        notes.append("layer_filter attn (attn-only): lowvram adapts the text encoders' attention alone too, where "
                     "OneTrainer filters the U-Net's layers only (the text encoders' MLPs as well: --lora-layers "
                     "attn-mlp, which adds the U-Net's)")
    if doc.get("latent_caching") is False:  # (OneTrainer then encodes each step, its augmentations drawn anew)
        notes.append("latent_caching false: lowvram always caches the latents, its cached variants standing for the "
                     "augmentations drawn anew each step (--latent-variants sets how many)")
    values |= _loss_and_noise(doc, notes, problem, number)
    values |= _memory(doc, notes, problem)
    values |= _samples(doc, path, notes, problem) if not prompted else {}
    if "sample_prompts" not in values and not prompted:
        values.pop("sample_every", None)  # no samples defined: OneTrainer draws nothing either
    left = sorted(key for key in set(doc) - READ - INERT
                  if doc[key] not in (None, False, 0, "", [], {}, "NONE", "OFF"))
    if left:
        notes.append(f"not carried over (lowvram has no such setting): {', '.join(left)}")
    if problems:
        raise LowvramError("\n".join(problems))
    return values, notes


def _typed(doc: dict[str, Any], problem, sections: tuple[str, ...] = NESTED_SECTIONS) -> dict[str, Any]:
    """The config with each number and section (of `sections`) lowvram reads that is not one named as a problem,
    and left out."""
    doc = dict(doc)

    def numbers(section: dict[str, Any], keys: tuple[str, ...], prefix: str = "") -> None:
        for key in keys:
            value = section.get(key)
            if value is None:
                continue
            try:
                number = float(value)
                finite = not isinstance(value, bool) and math.isfinite(number)
            except (TypeError, ValueError, OverflowError):
                finite = False
            if not finite:
                problem(prefix + key, f"{quoted(value)} is not a number; write one as OneTrainer saves it (e.g. 1.0)")
                del section[key]
            elif isinstance(value, str):  # "2" as 2: read on as the number it is
                section[key] = int(number) if number.is_integer() else number

    for key in sections:
        if key in doc and doc[key] is not None and not isinstance(doc[key], dict):
            problem(key, f"{quoted(doc.pop(key))} is not a section; OneTrainer writes it as {{...}} with its settings")
    numbers(doc, NUMBERS)
    for part in ("unet", "text_encoder", "text_encoder_2"):
        if isinstance(doc.get(part), dict):
            doc[part] = dict(doc[part])
            numbers(doc[part], PART_NUMBERS, f"{part}.")
    return doc


def _found(given: str, config: Path) -> str:
    """A path as OneTrainer names it, found as it finds it (see the module's docs); a name found nowhere stays as it
    is (a hub id)."""
    return str(local_path(given, config, levels=2))


def _data(doc: dict[str, Any], path: Path, problem, notes: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if isinstance(doc.get("concepts"), list):  # held inline: the config is its own concepts file
        values["data"] = str(path)
    elif doc.get("concept_file_name"):
        concepts = _found(str(doc["concept_file_name"]), path)
        if Path(concepts).is_file():
            values["data"] = concepts
        elif doc["concept_file_name"] == DEFAULTS["concept_file_name"]:  # (a shipped preset's: says no file)
            # (looked for as OneTrainer looks: from the current folder, the config's, and OneTrainer's own above it)
            looked = ", ".join(map(str, dict.fromkeys([Path.cwd(), *path.resolve().parents[:2]])))
            notes.append(f"no concepts: OneTrainer's default {DEFAULTS['concept_file_name']} is in none of {looked}; "
                         "the images come from --data")
        else:
            notes.append(f"concept_file_name: file not found: {doc['concept_file_name']}"
                         f"{not_found_hint(doc['concept_file_name'])}; give the concepts file as --data, or the "
                         "image folder")
    resolution = str(doc.get("resolution", "512")).strip()
    sides = [side.strip() for side in resolution.split(",")]
    shape = [side.strip() for side in resolution.lower().split("x")]
    if all(side.isdigit() for side in sides):  # several: OneTrainer trains each image at each
        values["resolution"] = int(sides[0])
        if len(sides) > 1:
            values["extra_resolutions"] = ",".join(sides[1:])
    elif len(shape) == 2 and all(side.isdigit() for side in shape) and shape[0] == shape[1]:
        values["resolution"] = int(shape[0])
    elif len(shape) == 2 and all(side.isdigit() for side in shape):  # (said as its own, not kohya's width,height)
        if doc.get("aspect_ratio_bucketing") is False:
            problem("resolution", f"'{resolution}' with aspect_ratio_bucketing off: lowvram crops every image "
                    "square; give one side, or turn aspect_ratio_bucketing on to train buckets of its area")
        else:
            values["resolution"] = area_side(int(shape[0]), int(shape[1]))
            notes.append(f"resolution '{resolution}': lowvram trains aspect-ratio buckets of about its pixel area, "
                         f"those of {values['resolution']} px square")
    else:
        problem("resolution", f"'{resolution}': give a number, numbers separated by commas (each image trains at "
                "each), or WIDTHxHEIGHT")
    if doc.get("aspect_ratio_bucketing") is False:
        values["bucket"] = False
    if doc.get("masked_training"):
        values["masked_loss"] = True
        values["unmasked_weight"] = float(doc.get("unmasked_weight") or 0.0)
        values["masked_prior_weight"] = float(doc.get("masked_prior_preservation_weight") or 0.0)
        values["normalize_masked_area_loss"] = bool(doc.get("normalize_masked_area_loss"))
        if float(doc.get("unmasked_probability") or 0.0):  # (OneTrainer's presets: 0.1)
            notes.append(f"unmasked_probability {doc['unmasked_probability']}: not carried over; lowvram trains "
                         "every step with its mask (--unmasked-weight weighs the area outside it instead)")
    if (_upper(doc, "model_type") or "").startswith("STABLE_DIFFUSION_XL"):  # (read past their penultimate layers)
        for key in ("text_encoder_layer_skip", "text_encoder_2_layer_skip"):
            if doc.get(key):
                problem(key, f"{doc[key]}: OneTrainer reads SDXL's text encoder that many layers before the "
                        "penultimate one, as lowvram and kohya never do; set it to 0")
    elif skip := doc.get("text_encoder_layer_skip") or 0:  # (SD1.5's one encoder: a second's skip is another
        # model type's, kept when the type was switched in OneTrainer's page, which reads it no more)
        values["clip_skip"] = int(skip) + 1  # OneTrainer counts the layers skipped past the last; kohya counts it
    return values


def _output(doc: dict[str, Any], notes: list[str], problem) -> dict[str, Any]:
    # OneTrainer logs every run to TensorBoard (its `tensorboard` switch starts the viewer): so does lowvram,
    # where TensorBoard is installed
    values: dict[str, Any] = {"tensorboard": True} if importlib.util.find_spec("tensorboard") else {}
    if doc.get("continue_last_backup") is True:  # its newest backup, else a new start: --resume auto's two ways
        values["resume"] = "auto"
    destination = given = doc.get("output_model_destination")
    if destination and os.name != "nt" and not PureWindowsPath(str(destination)).drive:  # (models\\x: a folder's \\)
        destination = str(destination).replace("\\", "/")
    if destination and os.name != "nt" and PureWindowsPath(str(destination)).drive:  # saved on Windows, read here
        values["name"] = PureWindowsPath(str(destination)).stem
        notes.append(f"output_model_destination {destination} is a Windows path: the LoRA is written as "
                     f"{values['name']} under --output (give one; default ./output)")
    elif destination and (str(destination).endswith(("/", "\\")) or expand_home(str(destination)).is_dir()):
        # (OneTrainer fails at its end writing a folder's name as the file)
        folder = str(destination).rstrip("/\\")
        problem("output_model_destination", f"{given} is a folder; OneTrainer writes the LoRA to a file: give "
                f"its name, as {folder}/mylora{LORA_SUFFIX}")
    elif destination:  # a file to write: from the current folder, as kohya's output_dir
        # the LoRA where OneTrainer writes it, the run's own files in its workspace (a folder for each LoRA's name:
        # every preset shares one workspace and one models/ folder, and lowvram keeps one run per folder)
        target = expand_home(str(destination))
        workspace = str(doc.get("workspace_dir") or "workspace/run")
        if os.name != "nt" and PureWindowsPath(workspace).drive:  # saved on Windows, read here: said, not credited
            notes.append(f"workspace_dir {workspace} is a Windows path: the run's files go to workspace/run here")
            workspace = "workspace/run"
        elif os.name != "nt":
            workspace = workspace.replace("\\", "/")
        if runs_name(target.parent) == target.stem:  # a run an earlier lowvram trained there: it goes on there
            values |= {"name": target.stem, "output": str(target.parent)}
        else:  # (a .ckpt destination, OneTrainer's CKPT format: the LoRA is written as .safetensors all the same)
            values |= {"name": target.stem, "copy_to": str(target.with_suffix(LORA_SUFFIX)),
                       "output": str(expand_home(workspace) / target.stem)}
            backups = expand_home(workspace) / "backup"
            if values.get("resume") and backups.is_dir() and any(backups.iterdir()):  # (a new start, unsaid)
                newest = max(backups.glob(f"*/lora/lora{LORA_SUFFIX}"), key=lambda p: p.parent.parent.name,
                             default=None)
                start = (f"; --network-weights {newest} starts from the newest one's LoRA (its optimizer state and "
                         "step start over)" if newest else "")
                notes.append(f"continue_last_backup: lowvram continues its own checkpoints (in {values['output']}), "
                             f"not OneTrainer's backups in {backups}{start}")
            notes.append(f"output_model_destination {destination}: the LoRA is copied there at the end (as "
                         f"{target.stem}{LORA_SUFFIX}); the run's checkpoints, samples and logs go to "
                         f"{Path(values['output']).absolute()} "
                         f"({'workspace_dir' if workspace == doc.get('workspace_dir') else workspace}/<name>)")
    precision = _upper(doc, "output_dtype")
    if precision in PRECISIONS:
        values["save_precision"] = PRECISIONS[precision]
    elif precision:
        problem("output_dtype", f"{precision}: a LoRA is saved in {', '.join(PRECISIONS)}")
    values |= _backups(doc, notes, problem)
    if _upper(doc, "output_model_format") == "DIFFUSERS_LORA":  # (newer OneTrainer's): a diffusers folder as well
        values["format"] = "diffusers"
    elif _upper(doc, "output_model_format") == "CKPT":  # (unsaid, a user looked for a .ckpt)
        notes.append("output_model_format CKPT: lowvram writes the LoRA as .safetensors (kohya's layout), which every "
                     "UI loads")
    if doc.get("only_cache") is True:  # (unsaid, it trained: a GPU hour the user meant to spend on caching alone)
        notes.append("only_cache true: not carried over; this run caches the latents and text, then trains (stop it "
                     "once its steps begin: the caches stay for the next run)")
    skipped = [f"{key} {doc[key]}" for key in ("save_skip_first", "sample_skip_first")
               if isinstance(doc.get(key), (int, float)) and doc[key] > 0]
    if skipped:  # (the early saves and samples were made all the same)
        notes.append(f"{', '.join(skipped)}: not carried over; lowvram saves and samples from the first interval")
    cache = str(doc.get("cache_dir") or "").replace("\\", "/").strip("/").removeprefix("./")
    if cache and cache != ONETRAINER_CACHE:  # (a data drive chosen for it: said; a lab's LOWVRAM_CACHE_DIR stays)
        notes.append(f"cache_dir {doc['cache_dir']}: not carried over; lowvram keeps one cache for every run "
                     "(--cache-dir, or LOWVRAM_CACHE_DIR): give --cache-dir to put it there")
    for key, option in (("save_every", "save_every"), ("sample_after", "sample_every")):
        every = _every(doc, key, notes, option)
        if every:
            values[option] = every
    if doc.get("validation"):
        unit = _upper(doc, "validate_after_unit") or "EPOCH"
        after = as_number(doc.get("validate_after") or 1, "validate_after", problem)
        if unit == "STEP":
            values["validate_every"] = max(1, math.ceil(after))  # (2.5 steps: every third, not every second)
        elif unit != "EPOCH" or after != 1:
            notes.append(f"validate_after {after:g} {unit}: lowvram validates once per epoch, or every N steps "
                         "(--validate-every)")
        if not doc.get("concepts") and not doc.get("concept_file_name"):
            notes.append("validation: lowvram validates on a validation concept or --validation-split")
    else:  # OneTrainer validates only with validation on: a validation concept then rests
        values["validation_data"] = None
    return values


ONETRAINER_CACHE = "workspace-cache/run"  # its cache_dir where a config names none of its own
MINUTES_PER = {"SECOND": 1 / 60, "MINUTE": 1, "HOUR": 60}


def _backups(doc: dict[str, Any], notes: list[str], problem) -> dict[str, Any]:
    """OneTrainer's backups (every 30 minutes unless its config says otherwise, as lowvram's timed checkpoints) as
    lowvram's checkpoints."""
    if "backup_after" not in doc and "backup_after_unit" not in doc:
        return {}
    unit = _upper(doc, "backup_after_unit") or BACKUP_UNIT
    count = as_number(doc.get("backup_after", BACKUP_AFTER) or 0, "backup_after", problem)
    if unit == "NEVER" or not count or count <= 0:
        return {"checkpoint_minutes": 0}
    if unit in MINUTES_PER:
        return {"checkpoint_minutes": count * MINUTES_PER[unit]} | _kept_backups(doc, notes, problem)
    if unit in ("STEP", "EPOCH", "ALWAYS"):  # (by epochs: kohya's save_state's, lowvram's Ne)
        every = "1" if unit == "ALWAYS" else f"{max(1, int(count))}{'e' * (unit == 'EPOCH')}"
        return {"checkpoint_every": every} | _kept_backups(doc, notes, problem)
    notes.append(f"backup_after {count:g} {unit}: lowvram checkpoints every N steps, epochs or minutes; not carried "
                 "over")
    return {}


def _kept_backups(doc: dict[str, Any], notes: list[str], problem) -> dict[str, Any]:
    """How many backups a run keeps: OneTrainer every one, or with rolling_backup its newest rolling_backup_count;
    lowvram its newest --keep-checkpoints (a OneTrainer user lost the older ones unsaid)."""
    if doc.get("rolling_backup"):
        return {"keep_checkpoints": max(1, int(as_number(doc.get("rolling_backup_count", ROLLING_BACKUPS),
                                                         "rolling_backup_count", problem)))}
    if "rolling_backup" in doc:
        kept = fields_by_name()["keep_checkpoints"][1].default
        notes.append(f"rolling_backup false: OneTrainer keeps every backup, lowvram the newest {kept} checkpoints; "
                     "--keep-checkpoints N keeps more")
    return {}


def _every(doc: dict[str, Any], key: str, notes: list[str], option: str) -> str | None:
    """OneTrainer's `key` with its unit as lowvram's 'N' steps or 'Ne' epochs (ALWAYS: every step, whatever the
    count); None where it is off (or timed)."""
    unit = _upper(doc, f"{key}_unit") or "NEVER"
    count = int(doc.get(key) or 0)
    if unit == "ALWAYS":  # (it was left out, unsaid)
        return "1"
    if unit == "NEVER" or count <= 0:
        return None
    if unit in ("STEP", "EPOCH"):
        return f"{count}{'e' if unit == 'EPOCH' else ''}"
    flag = "--" + option.replace("_", "-")
    notes.append(f"{key} {count} {unit}: lowvram counts in steps or epochs, not time; not carried over (the run "
                 f"{'samples' if 'sample' in key else 'saves'} at its end: {flag} N, or Ne for every N epochs, does so "
                 "along the way)")
    return None


def _schedule(doc: dict[str, Any], notes: list[str], problem, number) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, option, kind in (("learning_rate", "lr", float), ("epochs", "epochs", int),
                              ("batch_size", "batch_size", int), ("gradient_accumulation_steps",
                                                                  "gradient_accumulation", int)):
        if doc.get(key) is not None:
            values[option] = number(key, kind)
    unet = doc.get("unet") or {}
    if unet.get("train") is False:
        problem("unet.train", "lowvram always trains the U-Net's adapters; train it")
    if unet.get("learning_rate") is not None:
        values["lr"] = as_number(unet["learning_rate"], "unet.learning_rate", problem)
    unit = str(unet.get("stop_training_after_unit") or "NEVER").upper()
    after = unet.get("stop_training_after")
    past_end = unit == "EPOCH" and isinstance(after, (int, float)) and after >= (values.get("epochs") or math.inf)
    if unit != "NEVER" and after and not past_end:  # (OneTrainer freezes it there: passed over, unsaid; its presets'
        # 100000 epochs, past any run's end, said nothing that would change)
        until = {"EPOCH": f"; --epochs {after} ends the run there", "STEP": f"; --max-steps {after} ends the run there"}
        notes.append(f"unet.stop_training_after {after} {unit.lower()}: lowvram trains the U-Net's adapters to the "
                     f"end of the run{until.get(unit, '')}")
    sdxl = (_upper(doc, "model_type") or "").startswith("STABLE_DIFFUSION_XL")
    encoders = [doc.get(part) or {} for part in ("text_encoder", "text_encoder_2")[: 2 if sdxl else 1]]
    if any(part.get("train") for part in encoders):
        values["train_text_encoder"] = True
        # each encoder's own rate (OneTrainer's default: the run's); one it does not train has 0
        rates = [float(part.get("learning_rate") or values.get("lr") or 0) if part.get("train") else 0.0
                 for part in encoders]
        if rates[0] != values.get("lr"):
            values["text_encoder_lr"] = rates[0]
        if rates[1:] and rates[1] != rates[0]:
            values["text_encoder_2_lr"] = rates[1]
        values |= _text_encoder_until([part for part in encoders if part.get("train")], notes, problem)
    scheduler = _upper(doc, "learning_rate_scheduler") or "CONSTANT"
    warmup = float(doc.get("learning_rate_warmup_steps") or 0)
    if scheduler not in SCHEDULERS and scheduler != "ADAFACTOR":  # (that one: below)
        problem("learning_rate_scheduler", f"{scheduler} is not one lowvram has ({', '.join(SCHEDULERS)})")
    elif scheduler in SCHEDULERS:
        values["scheduler"] = SCHEDULERS[scheduler]
        if warmup > 0:  # under 1, a share of the run's steps in both
            values["warmup_steps"] = int(warmup) if warmup >= 1 else warmup
            if scheduler == "CONSTANT":
                values["scheduler"] = "constant_with_warmup"
    if doc.get("learning_rate_min_factor") and SCHEDULERS.get(scheduler, "constant").startswith(
            ("cosine", "linear", "rex")):
        values["min_lr_ratio"] = number("learning_rate_min_factor")  # OneTrainer: where the schedule decays to
    if scheduler in ("COSINE_WITH_RESTARTS", "COSINE_WITH_HARD_RESTARTS") and doc.get("learning_rate_cycles"):
        values["scheduler_cycles"] = max(1, round(float(doc["learning_rate_cycles"])))
    values |= optimizer_values(doc.get("optimizer") or {}, values.get("scheduler", "constant"),
                               values.get("warmup_steps"), notes, problem)
    if sets_own_step_sizes(values.get("optimizer", ""), values.get("optimizer_args", [])):
        # OneTrainer pops every group's rate then, as transformers' Adafactor reads none; ADAFACTOR only logs them
        notes.append("learning rates and learning_rate_scheduler not used: ADAFACTOR with relative_step sets its own "
                     "step sizes, as in OneTrainer")
        for key in RATE_OPTIONS:
            values.pop(key, None)
        values["scheduler"] = "constant"
    elif scheduler == "ADAFACTOR":
        problem("learning_rate_scheduler", "ADAFACTOR is the schedule of the ADAFACTOR optimizer with relative_step "
                "(its own step sizes); use CONSTANT, or that optimizer")
    if values.get("scheduler") == "constant":  # a schedule-free optimizer's: nothing decays or restarts
        values.pop("min_lr_ratio", None)
        values.pop("scheduler_cycles", None)
    elif scheduler == "COSINE_WITH_RESTARTS":  # (OneTrainer's is a smooth wave, cos(2 pi cycles t))
        notes.append("learning_rate_scheduler COSINE_WITH_RESTARTS: trained as cosine_with_restarts, a decay from the "
                     "full rate in each cycle, which then restarts at it (OneTrainer's COSINE_WITH_HARD_RESTARTS); "
                     "OneTrainer's own climbs back smoothly to the full rate by each cycle's end")
    if doc.get("ema") and _upper(doc, "ema") != "OFF":
        values["ema"] = True
        if doc.get("ema_decay") is not None:
            values["ema_decay"] = number("ema_decay")
        every = number("ema_update_step_interval", int) if doc.get("ema_update_step_interval") is not None else 5
        if every != 1:  # OneTrainer's default is 5
            values["ema_every"] = every
    for key in ("loss_scaler", "learning_rate_scaler"):
        if (_upper(doc, key) or "NONE") != "NONE":
            problem(key, f"{doc[key]}: lowvram does not scale the {key.split('_scaler')[0].replace('_', ' ')} by "
                    "the batch; set it to NONE and scale --lr yourself")
    return values


def _network(doc: dict[str, Any], path: Path, problem, number) -> dict[str, Any]:
    values: dict[str, Any] = {}
    peft = _upper(doc, "peft_type") or "LORA"
    if peft not in NETWORKS:
        problem("peft_type", f"{peft} is not an adapter lowvram trains ({', '.join(NETWORKS)})")
    else:
        values["network"] = "dora" if peft == "LORA" and doc.get("lora_decompose") else NETWORKS[peft]
    if peft == "LOKR" and doc.get("lokr_decompose_factor") is not None:
        values["lokr_factor"] = number("lokr_decompose_factor", int)
    if doc.get("lora_rank") is not None:
        values["rank"] = number("lora_rank", int)
    if doc.get("lora_alpha") is not None:
        values["alpha"] = number("lora_alpha")
    if doc.get("dropout_probability") and values.get("network", "lora") != "lora":
        problem("dropout_probability", f"lowvram's {values['network']} takes no dropout on its ranks (LoRA's only); "
                "set it to 0")
    elif doc.get("dropout_probability"):
        values["dropout"] = number("dropout_probability")
    if doc.get("lora_model_name"):
        values["network_weights"] = _found(str(doc["lora_model_name"]), path)
    preset = str(doc.get("layer_filter_preset") or "full")  # (the UI's name for what layer_filter holds)
    written = doc.get("layer_filter")
    if written is not None and ",".join(part.strip() for part in str(written).split(",")) in FILTER_LAYERS:
        values["lora_layers"] = FILTER_LAYERS[",".join(part.strip() for part in str(written).split(","))]
    elif written is None and preset in LAYER_PRESETS:
        values["lora_layers"] = LAYER_PRESETS[preset]
    else:
        problem("layer_filter", f"{doc.get('layer_filter') or preset}: lowvram adapts {', '.join(LAYER_PRESETS)} "
                "(layer_filter_preset); choose one of them")
    return values


def _loss_and_noise(doc: dict[str, Any], notes: list[str], problem, number) -> dict[str, Any]:
    values: dict[str, Any] = {}
    strengths = {key: float(doc.get(f"{key}_strength", 1.0 if key == "mse" else 0.0) or 0.0)
                 for key in ("mse", "mae", "log_cosh", "huber")}
    used = [key for key, strength in strengths.items() if strength]
    if used == ["mae"]:
        values["loss"] = "l1"
    elif used != ["mse"]:
        problem("mse_strength", f"{', '.join(f'{k}_strength {strengths[k]:g}' for k in used) or 'no loss'}: "
                "lowvram trains one loss, l2 (mse) or l1 (mae); keep one of them at 1")
    weighting = _upper(doc, "loss_weight_fn") or "CONSTANT"
    if weighting == "MIN_SNR_GAMMA":
        values["min_snr_gamma"] = float(doc.get("loss_weight_strength") or 5.0)
    elif weighting == "DEBIASED_ESTIMATION":
        values["debiased_estimation"] = True
    elif weighting != "CONSTANT":
        problem("loss_weight_fn", f"{weighting}: lowvram weighs timesteps by MIN_SNR_GAMMA or DEBIASED_ESTIMATION")
    if "clip_grad_norm" in doc:  # None: no clipping
        values["max_grad_norm"] = float(doc["clip_grad_norm"] or 0.0)
    if doc.get("offset_noise_weight"):
        values["noise_offset"] = number("offset_noise_weight")
        if doc.get("generalized_offset_noise"):
            notes.append("generalized_offset_noise: lowvram's noise offset is the plain one")
    if doc.get("perturbation_noise_weight"):
        values["ip_noise_gamma"] = number("perturbation_noise_weight")
    if doc.get("rescale_noise_scheduler_to_zero_terminal_snr"):
        values["zero_terminal_snr"] = True
    if doc.get("force_v_prediction"):
        values["prediction_type"] = "v_prediction"
    elif doc.get("force_epsilon_prediction"):
        values["prediction_type"] = "epsilon"
    low, high = float(doc.get("min_noising_strength") or 0.0), float(doc.get("max_noising_strength", 1.0) or 1.0)
    if low > 0:
        values["min_timestep"] = round(low * 1000)
    if high < 1:
        values["max_timestep"] = round(high * 1000)
    distribution = (_upper(doc, "timestep_distribution") or "UNIFORM").lower()
    if distribution not in TIMESTEP_DISTRIBUTIONS:
        problem("timestep_distribution", f"{distribution.upper()} is not one lowvram draws "
                f"({', '.join(d.upper() for d in TIMESTEP_DISTRIBUTIONS)})")
    elif distribution != "uniform":
        values["timestep_distribution"] = distribution
    if distribution in SHAPED:  # OneTrainer keeps them (noising_bias 0.5 by default) when nothing reads them
        values |= {key: float(doc[key]) for key in ("noising_weight", "noising_bias") if doc.get(key)}
    if float(doc.get("timestep_shift", 1.0) or 1.0) != 1.0:
        values["timestep_shift"] = float(doc["timestep_shift"])
    for key in ("dynamic_timestep_shifting", "resolution_aware_loss_weight"):
        if doc.get(key):
            notes.append(f"{key}: not carried (lowvram's shift is --timestep-shift, the same at every resolution)")
    return values


def _memory(doc: dict[str, Any], notes: list[str], problem) -> dict[str, Any]:
    """The memory settings OneTrainer's user chose, beyond its defaults; the rest are the planner's to choose."""
    values: dict[str, Any] = {}
    planners: list[str] = []  # OneTrainer's defaults among them, which lowvram's planner chooses for the card
    weights = _upper(doc.get("unet") or {}, "weight_dtype") or "NONE"
    if weights in QUANTIZED:
        values["unet_weights"] = QUANTIZED[weights]
    elif weights in ("NONE", *PRECISIONS):
        planners.append(f"unet.weight_dtype {weights}")
    else:
        problem("unet.weight_dtype", f"{weights} is not a storage lowvram has for the U-Net")
    unet = doc.get("unet") or {}
    if "gradient_checkpointing" in unet or "activation_offloading" in unet:  # version 11 on: per model part
        on = unet.get("gradient_checkpointing", True) is not False
        checkpointing = "CPU_OFFLOADED" if unet.get("activation_offloading") else "ON" if on else "OFF"
        named = f"unet.gradient_checkpointing {str(on).lower()}"
    else:
        checkpointing = str(doc.get("gradient_checkpointing", "ON")).upper()
        named = f"gradient_checkpointing {checkpointing}"
    if checkpointing in ("OFF", "FALSE"):
        values["gradient_checkpointing"] = False
    elif checkpointing == "CPU_OFFLOADED":  # (lowvram's offload keeps the checkpoints' inputs on the host)
        values["gradient_checkpointing"] = values["offload_activations"] = True
    else:
        planners.append(named)
    if doc.get("compile"):
        values["compile"] = True
    compute = _upper(doc, "train_dtype") or "FLOAT_16"
    if compute in ("BFLOAT_16", "FLOAT_32", "TFLOAT_32"):  # (TF32: fp32 whose matmuls a card's tensor cores round)
        values["mixed_precision"] = "bf16" if compute == "BFLOAT_16" else "no"
    elif compute == "FLOAT_16":  # OneTrainer's default; lowvram computes in bf16 where the card has it (fp16 overflows)
        planners.append(f"train_dtype {compute}")
    else:
        problem("train_dtype", f"{compute}: not a precision OneTrainer trains in (FLOAT_16, BFLOAT_16, FLOAT_32, "
                "TFLOAT_32)")
    if planners:
        notes.append(f"{', '.join(planners)}: OneTrainer's defaults, left to lowvram's planner, which picks the "
                     "fastest that fits the card")
    return values


def _samples(doc: dict[str, Any], path: Path, notes: list[str], problem) -> dict[str, Any]:
    """OneTrainer's sample definitions as prompts with kohya's inline options, which lowvram reads, its noise
    scheduler as the sampler."""
    samples = doc.get("samples")
    if not isinstance(samples, list) and doc.get("sample_definition_file_name"):
        file = Path(_found(str(doc["sample_definition_file_name"]), path))
        text = ""
        try:
            text = text_of(file)  # (a BOM, Notepad's, too)
            samples = json.loads(text)
        except FileNotFoundError:
            if doc["sample_definition_file_name"] != DEFAULTS["sample_definition_file_name"]:  # (its own: no word)
                notes.append(f"sample_definition_file_name: {file} not found; no samples")
            samples = []
        except OSError as exc:
            problem("sample_definition_file_name", f"{file} is not readable JSON ({exc})")
            samples = []
        except ValueError as exc:  # (not UTF-8 too: no text to hint from)
            problem("sample_definition_file_name", f"{file} is not readable JSON ({exc}{decode_hint(text, exc)})")
            samples = []
    prompts, drawn = [], 0
    for sample in samples if isinstance(samples, list) else []:
        try:
            line = onetrainer_sample(sample) if isinstance(sample, dict) else None
        except ValueError as exc:
            problem("samples.noise_scheduler", str(exc))
            continue
        if line:
            prompts.append(line)
            drawn += bool(sample.get("random_seed"))
    if drawn:  # (their recipe's prompts held no seed, unsaid: the run's own seed drew each)
        notes.append(f"samples: random_seed on in {drawn} of them: not carried over; lowvram draws a prompt with one "
                     "seed at every save point (its --d, else the run's --seed plus its place in the list), so its "
                     "grids of successive steps compare")
    return {"sample_prompts": prompts} if prompts else {}


def _text_encoder_until(trained: list[dict], notes: list[str], problem) -> dict[str, str]:
    """The trained text encoders' stop_training_after (OneTrainer's per encoder; here one for both) as
    --text-encoder-until, in steps or epochs; a stop after some time is a note."""
    stops = []
    for part in trained:
        unit = str(part.get("stop_training_after_unit") or "NEVER").upper()
        after = part.get("stop_training_after")
        if unit == "NEVER" or not after:
            stops.append(None)
        elif unit in ("STEP", "EPOCH"):
            count = as_number(after, "text_encoder.stop_training_after", problem, int)
            stops.append(f"{count}{'e' if unit == 'EPOCH' else ''}")
        else:
            notes.append(f"text_encoder.stop_training_after {after} {unit.lower()}: lowvram stops the text encoders "
                         "after steps or epochs, not a time; they train for the whole run")
            stops.append(None)
    if len(set(stops)) > 1:
        shown = ", ".join(f"after {stop}" if stop else "never" for stop in stops)  # (200: steps, 2e: epochs)
        notes.append(f"text_encoder.stop_training_after: the text encoders' stops differ ({shown}); both stop as the "
                     f"first says")
    return {"text_encoder_until": stops[0]} if stops and stops[0] else {}


def _upper(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return str(value).upper() if value is not None else None
