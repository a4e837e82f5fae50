"""A RunConfig's cross-field and range checks: every problem of a config at once, one line each, naming the flag
and the fix (`lowvram.configure` builds the config and reports them)."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

from lowvram.adapters.blocks import check_syntax as check_block_syntax
from lowvram.adapters.blocks import varied_rate_flags
from lowvram.config import (
    DEFAULT_SEED,
    HUBER_LOSSES,
    METADATA_FILES,
    PATH_OPTIONS,
    SAMPLE_DATA,
    SOURCE_LISTS,
    TOKEN_LENGTHS,
    TRAIN_TIMESTEPS,
    ZERO_SNR_NEEDS_V,
    RunConfig,
    fields_by_name,
    flag_name,
)
from lowvram.dataset_files import DATASET_SUFFIXES, has_regularization_subsets, is_dataset_file, read_dataset
from lowvram.dataset_files.subsets import REPEAT_FOLDER, image_folder_holding
from lowvram.dataset_zip import name_encoding, windows_powershell_zip, zip_folder
from lowvram.errors import PICKLE_SUFFIXES, LowvramError, pickle_refusal, shell_line
from lowvram.files import closest, expand_home, not_found_hint
from lowvram.formats import network_refusal
from lowvram.lora_header import network_options, network_weights_problem, no_layers_why, read_header
from lowvram.models.families import FAMILIES, SCHEDULE_MARKERS, declared_schedule
from lowvram.optim import OPTIMIZER_CHOICES, OPTIMIZERS, optimizer_kwargs, sets_own_step_sizes, spec_of
from lowvram.option_values import (
    FP16_LARGEST,
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    caption_extension_problem,
    caption_template_problem,
    is_time,
    parse_colour,
    parse_resolutions,
    parse_save_every,
    parse_source,
    parse_until,
    positive,
)
from lowvram.output_checks import cache_problems, output_problems
from lowvram.prompts import (
    as_prompt_line,
    generation_left_out,
    lora_tags,
    options_elsewhere,
    read_prompt_file,
    without_lora_tags,
)
from lowvram.run_files import (
    CHECKPOINTS,
    checkpoint_named,
    is_options_file,
    lora_in_folder,
    options_path,
    runs_name,
    written_checkpoints,
)
from lowvram.timesteps import timestep_problem


def _dataset_file_problems(c: RunConfig) -> list[str]:
    """What is wrong with the dataset file given as --data, and with --reg-data beside its is_reg subsets."""
    try:
        dataset = read_dataset(Path(c.data.data))
    except LowvramError as exc:
        return str(exc).splitlines()
    if c.data.reg_data and dataset.folders(regularization=True):
        return [f"--reg-data: {c.data.data} has is_reg subsets already; drop --reg-data, or those subsets"]
    return []


def _has_regularization_subsets(data: str | None) -> bool:
    try:
        return has_regularization_subsets(data)
    except LowvramError:  # the dataset file's own problems are reported on their own
        return True


def _alpha_mask_subsets(data: str | None) -> bool:
    """Whether a dataset file's subset keeps its images' alpha as a loss mask of its own."""
    try:
        return is_dataset_file(data) and any((s.settings or {}).get("alpha_mask") for s in
                                             read_dataset(Path(data)).subsets)
    except LowvramError:  # the dataset file's own problems are reported on their own
        return False


def config_problems(c: RunConfig, writes: bool = True) -> list[str]:
    """Cross-field and range checks; each message names the flag and the fix. `writes`: False for a command that
    writes no run (check-data), whose --output goes unused."""
    escaped = _escaped_path_problems(c)
    if escaped:  # (not found, each, with a line break in the middle of its message)
        return escaped
    return [*_file_problems(c), *_data_problems(c), *_validation_problems(c), *_network_problems(c),
            *_optimizer_problems(c), *_training_problems(c), *cache_problems(c),
            *(output_problems(c) if writes else [])]


# what a Windows path written in double quotes in a TOML or JSON file ("D:\training\new") is read with: never
# in a path anyone means
ESCAPED_IN_PATHS = {"\t": "a tab (\\t)", "\n": "a line break (\\n)", "\r": "a carriage return (\\r)",
                    "\b": "a backspace (\\b)", "\f": "a form feed (\\f)"}


MAX_STEPS_GIVEN, MAX_EPOCHS_GIVEN = 10_000_000, 1_000_000


def _escaped_path_problems(c: RunConfig) -> list[str]:
    p = []
    for name in (*PATH_OPTIONS, *SOURCE_LISTS, "model", "vae"):
        section, field, _ = fields_by_name()[name]
        value = getattr(getattr(c, section), name)
        if value == "":
            p.append(f"{flag_name(field)}: empty; give {'a folder' if name in PATH_OPTIONS else 'a model'} (an empty "
                     "value named the current folder)")
        for text in value if isinstance(value, (list, tuple)) else [value]:
            held = [what for char, what in ESCAPED_IN_PATHS.items() if isinstance(text, str) and char in text]
            if held:
                p.append(f"{flag_name(field)}: {text!r} holds {' and '.join(held)}, as a Windows path written in "
                         "double quotes in a config file is read; write it in single quotes ('D:\\training'), or "
                         "with / between folders")
    return p


def _run_options(c: RunConfig) -> Path | None:
    """The options file lowvram wrote for the run a --resume names: in its checkpoint's run folder, or --output."""
    given = expand_home(c.training.resume)
    folder = given.parent.parent if given.parent.name == CHECKPOINTS else c.output_dir
    if (name := runs_name(folder)) is None:  # (a folder of no record: the options file it holds)
        try:
            return next((path for path in sorted(folder.glob("*.toml")) if is_options_file(path)), None)
        except OSError:
            return None
    path = options_path(folder, name)
    return path if is_options_file(path) else None


def _file_problems(c: RunConfig) -> list[str]:
    """The files and folders the run reads: the dataset, the model and its parts, the weights it starts from."""
    p: list[str] = []
    if c.training.resume and c.data.data is None and c.model.model is None and (found := _run_options(c)):
        # (--resume with the state folder alone, as kohya's: "--data: no dataset given", "--model: which base model?")
        return [(f"--resume: a resume needs the run's options too, which {found} holds: lowvram train --config "
                f"{shell_line(str(found))} --resume {shell_line(c.training.resume)}")]
    if c.data.data is None:
        p.append("--data: no dataset given; pass an image folder, or 'sample' for the built-in sample dataset")
    elif is_dataset_file(c.data.data):
        p += _dataset_file_problems(c)
    elif Path(c.data.data).suffix.lower() in DATASET_SUFFIXES:
        p.append(f"--data: file not found: {c.data.data}{not_found_hint(c.data.data)}")
    elif c.data.data != SAMPLE_DATA and Path(c.data.data).name.lower() in METADATA_FILES and Path(c.data.data).is_file():
        p.append(f"--data: {c.data.data} is the captions file of a Hugging Face imagefolder; give its folder: "
                 f"--data {shell_line(str(Path(c.data.data).parent))}")
    elif c.data.data != SAMPLE_DATA and Path(c.data.data).is_file():
        p.append(f"--data: {c.data.data} is a file; give the folder of images (kohya's N_name folders inside), or a "
                 "kohya or OneTrainer dataset file" + _unpack_hint(Path(c.data.data)))
    elif c.data.data != SAMPLE_DATA and not Path(c.data.data).is_dir():
        hint = not_found_hint(c.data.data) or _hub_dataset_hint(c.data.data)
        p.append(f"--data: folder not found: {c.data.data}{hint}")
    model_path = Path(c.model.model or "")
    if c.model.model is None:
        p.append("--model: which base model? pass a .safetensors checkpoint, a diffusers folder or a hub id "
                 "(--model tiny trains the built-in demo model, whose random weights make a toy LoRA)")
    elif model_path.suffix.lower() in PICKLE_SUFFIXES:
        p.append(pickle_refusal("--model", c.model.model))
    elif model_path.suffix.lower() == ".safetensors" and not model_path.is_file():
        p.append(f"--model: file not found: {c.model.model}{not_found_hint(c.model.model)}")
    for flag, value, must_be_file in (("--vae", c.model.vae, False),
                                      ("--network-weights", c.network.network_weights, True)):
        if value is None or (flag == "--network-weights" and c.training.resume and not Path(value).exists()):
            continue  # a resumed run's checkpoint holds the adapters (a new start of --resume auto needs the file)
        if Path(value).suffix.lower() in PICKLE_SUFFIXES:
            p.append(pickle_refusal(flag, value))
        elif must_be_file and Path(value).is_dir():  # (a diffusers LoRA folder: was 'file not found')
            p.append(f"{flag}: {value} is a folder; {lora_in_folder(Path(value))}")
        elif not (Path(value).is_file() if must_be_file else Path(value).exists()):
            p.append(f"{flag}: {'file ' if must_be_file else ''}not found: {value}{not_found_hint(value)}")
    for item in c.model.base_weights:
        try:
            path, _ = parse_source(item)
        except LowvramError as exc:
            p.append(f"--base-weights: {exc}")
            continue
        if path.suffix.lower() in PICKLE_SUFFIXES:
            p.append(pickle_refusal("--base-weights", str(path)))
        elif path.is_dir():
            p.append(f"--base-weights: {path} is a folder; {lora_in_folder(path)}")
        elif not path.is_file():
            p.append(f"--base-weights: file not found: {path}{not_found_hint(item)}")
        else:
            try:
                why = None if network_options(path) else no_layers_why(path)
            except (OSError, ValueError) as exc:
                why = f"not a safetensors file ({exc}); name a LoRA file (a model checkpoint is --model)"
            if why:
                p.append(f"--base-weights: {path}: {why}")
    weights = c.network.network_weights
    readable = weights and Path(weights).is_file() and Path(weights).suffix.lower() not in PICKLE_SUFFIXES
    if readable and c.training.resume in (None, "auto"):  # (auto: a new run where nothing is there to continue)
        p += filter(None, [network_weights_problem(c.network)])
    if c.training.resume and c.training.resume != "auto" and not (Path(c.training.resume) / "state.json").is_file() \
            and not checkpoint_named(c.output_dir, c.training.resume):  # (a file's values checked alone: unresolved)
        found = "not a lowvram checkpoint folder (no state.json)" if Path(c.training.resume).exists() else "not found"
        backup = Path(c.training.resume) / "lora" / "lora.safetensors"  # (OneTrainer's backup folder's LoRA)
        lora = (" (to train a LoRA file further, pass it as --network-weights)"
                if Path(c.training.resume).suffix.lower() == ".safetensors" else
                f" (a OneTrainer backup: train on from its LoRA with --network-weights {shell_line(backup)}, its "
                "optimizer state and step starting over)" if backup.is_file() else "")
        theirs = [path.name for _, path in written_checkpoints(c.output_dir / CHECKPOINTS)]
        there = (f"; {c.output_dir / CHECKPOINTS} holds {len(theirs)}, newest first: "
                 f"{', '.join(reversed(theirs[-3:]))}" if theirs else "")
        p.append(f"--resume: {c.training.resume}: {found}; pass a checkpoint folder (<output>/checkpoints/step-N"
                 f"{there}), or --resume auto for the output folder's newest{lora}")
    reg = Path(c.data.reg_data) if c.data.reg_data is not None else None
    if reg is not None and is_dataset_file(str(reg)):  # (was "folder not found: ds.toml (did you mean ds.toml?)")
        p.append(f"--reg-data: {reg} is a dataset file; its is_reg subsets are the class images: pass it as --data "
                 f"{shell_line(reg)}")
    elif reg is not None and reg.is_file():
        p.append(f"--reg-data: {reg} is a file; give the folder of class images (kohya's N_name folders inside)"
                 + _unpack_hint(reg, "--reg-data"))
    elif reg is not None and not reg.is_dir():
        p.append(f"--reg-data: folder not found: {c.data.reg_data}{not_found_hint(c.data.reg_data)}")
    elif c.data.reg_data is not None and c.data.data and Path(c.data.data).is_dir():
        p += filter(None, [_overlap(Path(c.data.data).resolve(), Path(c.data.reg_data).resolve())])
    elif c.data.reg_data is not None and is_dataset_file(c.data.data):
        p += filter(None, [_file_overlap(Path(c.data.data), Path(c.data.reg_data).resolve())])
    return p


def _hub_dataset_hint(data: str) -> str:
    """Where --data reads as a Hugging Face dataset's id (the diffusers scripts' --dataset_name): how to fetch it,
    for lowvram reads datasets from folders only."""
    path = Path(data)  # (made absolute from the current folder, where owner/name was typed)
    if path.parent.parent != Path.cwd() or path.parent.exists() or REPEAT_FOLDER.match(path.name):
        return ""
    if near := closest(path.parent):  # (dataset/ohwx typed for datasets/ohwx: a folder here, no hub's)
        return near
    hub_id = f"{path.parent.name}/{path.name}"
    return (f"; a Hugging Face dataset's id? lowvram downloads none: huggingface-cli download {hub_id} --repo-type "
            f"dataset --local-dir {path.name}, then --data {path.name} (an image folder with its metadata.jsonl; "
            "one of parquet files is not read)")


def _overlap(data: Path, reg: Path) -> str | None:
    """--reg-data among the images --data's scan reads, or holding --data's among its own: the subject's images
    would train as class images too (a project's reg/ beside its N_name folders is passed by, as kohya does)."""
    if reg == data:
        where = "is --data's folder"
    elif images := image_folder_holding(data, reg):
        where = ("is --data's image folder, whose images all train as the subject" if images == reg else
                 f"is inside --data's image folder {images}, whose images all train as the subject")
    elif images := image_folder_holding(reg, data):
        where = (f"holds --data's folder {data} among its class images" if images == data else
                 f"holds --data's folder {data} in its class-image folder {images}")
    else:
        return None
    return f"--reg-data: {reg} {where}; {OWN_FOLDER}"


OWN_FOLDER = ("the class images (other dogs for a LoRA of one dog, other paintings for a style) go in a folder of "
              "their own beside it")


def _file_overlap(dataset: Path, reg: Path) -> str | None:
    """--reg-data that is an image folder of --data's dataset file, or holds one where its scan reads: its images
    would train as the subject and, under its captions, as class images too (warned of as copies of themselves). A
    subset reads its folder's own images (a recursive one's folders are each a subset): one inside it is no overlap."""
    try:
        folders = [subset.folder.resolve() for subset in read_dataset(dataset).folders()]
    except (LowvramError, OSError):  # (said by the dataset's own checks)
        return None
    for folder in folders:
        where = "is" if reg == folder else f"holds {folder}," if image_folder_holding(reg, folder) else None
        if where:
            return (f"--reg-data: {reg} {where} an image folder of {dataset}, whose images all train as the subject; "
                    f"{OWN_FOLDER}")
    return None


def _data_problems(c: RunConfig) -> list[str]:
    """How the images and captions are read, bucketed and varied."""
    p: list[str] = []
    if c.data.resolution is not None and (not MIN_RESOLUTION <= c.data.resolution <= MAX_RESOLUTION
                                          or c.data.resolution % 8):
        p.append(f"--resolution: {c.data.resolution} must be a multiple of 8 from {MIN_RESOLUTION} to "
                 f"{MAX_RESOLUTION}")
    try:
        if c.data.resolution in parse_resolutions(c.data.extra_resolutions):
            p.append(f"--extra-resolutions: {c.data.resolution} is --resolution already; name the others")
    except ValueError as exc:
        p.append(f"--extra-resolutions: {exc}")
    if (c.data.prior_prediction and c.data.reg_data is None and c.data.data is not None
            and not _has_regularization_subsets(c.data.data)):
        p.append("--prior-prediction: there are no regularization images to predict for; give --reg-data DIR (any "
                 "images of what the LoRA should leave as the model had it)")
    for flag, value in (("bucket-step", c.data.bucket_step), ("min-bucket-side", c.data.min_bucket_side),
                        ("max-bucket-side", c.data.max_bucket_side)):
        if value is not None and (value < 8 or value % 8):
            p.append(f"--{flag}: {value} must be a multiple of 8")
    if c.data.min_bucket_side and c.data.max_bucket_side and c.data.min_bucket_side > c.data.max_bucket_side:
        p.append("--min-bucket-side: larger than --max-bucket-side; swap them")
    for flag, value in (("color-jitter", c.data.color_jitter), ("caption-dropout", c.data.caption_dropout),
                        ("tag-dropout", c.data.tag_dropout)):
        if not 0 <= value < 1:
            p.append(f"--{flag}: must be in [0, 1), got {value}")
    positive(p, "latent-variants", c.data.latent_variants)
    positive(p, "caption-variants", c.data.caption_variants)
    positive(p, "caption-dropout-every", c.data.caption_dropout_every)
    positive(p, "keep-tokens", c.data.keep_tokens, allow_zero=True)
    if not c.data.caption_separator.strip():
        p.append(f"--caption-separator: {c.data.caption_separator!r} is no separator; give the text between tags "
                 "(kohya's default: ,)")
    if c.data.keep_tokens_separator and c.data.keep_tokens_separator.strip() in ("", ",", c.data.caption_separator):
        p.append(f"--keep-tokens-separator: {c.data.keep_tokens_separator!r} would split tags; use text no caption "
                 "has otherwise, e.g. \"|||\"")
    if c.data.secondary_separator and c.data.secondary_separator.strip() in (
            "", c.data.caption_separator.strip(), c.data.keep_tokens_separator.strip()):
        p.append(f"--secondary-separator: {c.data.secondary_separator!r} is no separator of its own; use text no "
                 "caption has otherwise, e.g. \";;;\"")
    masks = c.data.masked_loss or c.data.alpha_mask or _alpha_mask_subsets(c.data.data)
    if not 0 <= c.data.unmasked_weight < 1:
        p.append(f"--unmasked-weight: must be in [0, 1), got {c.data.unmasked_weight}")
    elif c.data.unmasked_weight and not masks:
        p.append("--unmasked-weight: only used with --masked-loss or --alpha-mask; add one or drop it")
    if c.data.normalize_masked_area_loss and not masks:
        p.append("--normalize-masked-area-loss: only used with --masked-loss or --alpha-mask; add one or drop it")
    positive(p, "masked-prior-weight", c.data.masked_prior_weight, allow_zero=True)
    if c.data.masked_prior_weight and not masks:
        p.append("--masked-prior-weight: only used with --masked-loss or --alpha-mask; add one or drop it")
    positive(p, "prior-loss-weight", c.data.prior_loss_weight, allow_zero=True)
    positive(p, "cache-batch-size", c.data.cache_batch_size)
    if not 1 <= c.data.clip_skip <= 4:
        p.append(f"--clip-skip: {c.data.clip_skip} is not one of 1 (the last layer, the default), 2, 3, 4")
    if c.data.max_token_length not in TOKEN_LENGTHS:
        p.append(f"--max-token-length: {c.data.max_token_length} is not one of {', '.join(map(str, TOKEN_LENGTHS))}")
    if c.data.keep_tokens and not (c.data.shuffle_tags or c.data.tag_dropout):
        p.append("--keep-tokens: only matters with --shuffle-tags or --tag-dropout; add one or drop --keep-tokens")

    try:
        parse_colour(c.data.background)
    except ValueError as exc:
        p.append(f"--background: {exc}")
    if caption_extension_problem(c.data.caption_extension):
        p.append(f"--caption-extension: {caption_extension_problem(c.data.caption_extension)}")
    for flag, template in (("--caption-template", c.data.caption_template), ("--class-prompt", c.data.class_prompt)):
        if caption_template_problem(template):
            p.append(f"{flag}: {caption_template_problem(template)}")
    return p


def _validation_problems(c: RunConfig) -> list[str]:
    """The held-out images and what is done with their loss."""
    p: list[str] = []
    v = c.validation
    if v.validation_data is not None and not Path(v.validation_data).is_dir():
        p.append(f"--validation-data: folder not found: {v.validation_data}{not_found_hint(v.validation_data)}")
    if not 0 <= v.validation_split < 1:
        p.append(f"--validation-split: must be in [0, 1), got {v.validation_split}")
    if v.validation_data and v.validation_split:
        p.append("--validation-split and --validation-data: can't use both; choose one")
    validating = bool(v.validation_data or v.validation_split)
    for flag, value in (("validate-every", v.validate_every), ("early-stopping", v.early_stopping)):
        if value is not None and not validating:
            p.append(f"--{flag}: needs a validation set; add --validation-split 0.1 or --validation-data DIR")
    if v.early_stopping_delta < 0:
        p.append(f"--early-stopping-delta: must be 0 or more, got {v.early_stopping_delta}")
    elif v.early_stopping_delta and v.early_stopping is None:
        p.append("--early-stopping-delta: has no effect without --early-stopping N; add it or drop the delta")
    positive(p, "validate-every", v.validate_every)
    positive(p, "validation-timesteps", v.validation_timesteps)
    positive(p, "early-stopping", v.early_stopping)
    return p


def _network_problems(c: RunConfig) -> list[str]:
    """The adapters: their kind, ranks, layers and dropouts, and the text encoders they train."""
    p: list[str] = []
    p.extend(check_block_syntax(c.network))
    p += filter(None, [network_refusal(c.network.network, c.memory.unet_weights)])  # (before the model loads)
    positive(p, "rank", c.network.rank)
    positive(p, "alpha", c.network.alpha)
    if c.output.save_precision == "fp16" and c.alpha > FP16_LARGEST and c.network.network != "lokr":  # (a full-rank
        # LoKr's alpha is no reader's)
        given = "--alpha" if c.network.alpha is not None else "--alpha (by default the rank)"
        p.append(f"{given}: {c.alpha:g} is past {FP16_LARGEST:g}, fp16's largest number, in which the LoRA is saved "
                 "(it trained, then was refused as infinite); lower it, or pass "
                 "--save-precision bf16")
    positive(p, "loraplus-ratio", c.optim.loraplus_ratio)
    positive(p, "loraplus-text-encoder-ratio", c.optim.loraplus_text_encoder_ratio)
    if c.optim.loraplus_text_encoder_ratio and not c.network.train_text_encoder:
        p.append("--loraplus-text-encoder-ratio: the text encoders are not trained; add --train-text-encoder or drop "
                 "it")
    for flag, value in (("--loraplus-ratio", c.optim.loraplus_ratio),
                        ("--loraplus-text-encoder-ratio", c.optim.loraplus_text_encoder_ratio)):
        if value is not None and c.network.network in ("loha", "lokr"):
            p.append(f"{flag}: it works on LoRA's B and A matrices, which --network {c.network.network} has none of; "
                     "drop it or use --network lora or dora")
    positive(p, "conv-rank", c.network.conv_rank)
    positive(p, "conv-alpha", c.network.conv_alpha)
    for flag, value in (("--conv-rank", c.network.conv_rank), ("--conv-alpha", c.network.conv_alpha)):
        if value is not None and c.network.lora_layers != "full":
            p.append(f"{flag}: only --lora-layers full adapts the convolutions (kohya's LoCon); add --lora-layers "
                     f"full or drop {flag}")
    if c.network.block_lr_zero_threshold < 0:
        p.append(f"--block-lr-zero-threshold: must be 0 or more, got {c.network.block_lr_zero_threshold:g}")
    elif c.network.block_lr_zero_threshold and not any(
            (c.network.down_lr_weight, c.network.mid_lr_weight, c.network.up_lr_weight)):
        p.append("--block-lr-zero-threshold: only used with --down-lr-weight, --mid-lr-weight or --up-lr-weight")
    for flag, value in (("dropout", c.network.dropout), ("rank-dropout", c.network.rank_dropout),
                        ("module-dropout", c.network.module_dropout)):
        if not 0 <= value < 1:
            p.append(f"--{flag}: must be in [0, 1), got {value}")
    if c.network.network in ("loha", "lokr") and c.network.dropout:
        p.append(f"--dropout: LyCORIS's {c.network.network} has no dropout of its own (it ignores kohya's "
                 "network_dropout); use --module-dropout, or --network lora")
    dropouts = [f"--{flag}" for flag, value in (("dropout", c.network.dropout), ("rank-dropout",
                c.network.rank_dropout), ("module-dropout", c.network.module_dropout)) if value]
    if c.network.network == "dora" and dropouts:  # peft runs DoRA's weight norm through the hooked projections
        p.append(f"{', '.join(dropouts)}: not with --network dora, whose weight norm peft computes through the "
                 "same layers the dropouts act on (they would corrupt it); drop them, or use --network lora")
    for flag, rate in (("--text-encoder-lr", c.optim.text_encoder_lr),
                       ("--text-encoder-2-lr", c.optim.text_encoder_2_lr)):
        if rate is not None and not c.network.train_text_encoder:
            p.append(f"{flag}: set, but the text encoder is not trained (lowvram trains the U-Net alone unless "
                     "told, kohya both); add --train-text-encoder")
    if c.network.text_encoder_until and not c.network.train_text_encoder:
        p.append("--text-encoder-until: the text encoders are not trained; add --train-text-encoder or drop it")
    try:
        parse_until(c.network.text_encoder_until)
    except ValueError as exc:
        p.append(f"--text-encoder-until: {exc}")
    if c.network.lokr_factor != -1 and c.network.lokr_factor < 1:
        p.append(f"--lokr-factor: must be -1 (automatic) or >= 1, got {c.network.lokr_factor}")
    if c.network.lokr_factor != -1 and c.network.network != "lokr":
        p.append("--lokr-factor: only used with --network lokr")
    return p


def _optimizer_problems(c: RunConfig) -> list[str]:
    """The optimizer, its rates, schedule and averaging."""
    p: list[str] = []
    if not 0 < c.optim.ema_decay < 1:
        p.append(f"--ema-decay: must be in (0, 1), got {c.optim.ema_decay} (0.999 is usual)")
    positive(p, "ema-every", c.optim.ema_every)
    if c.optim.ema_every != 1 and not c.optim.ema:
        p.append(f"--ema-every {c.optim.ema_every}: there is no average without --ema; add --ema or drop it")
    positive(p, "scale-weight-norms", c.optim.scale_weight_norms)
    positive(p, "lr", c.optim.lr)
    optimizer = spec_of(c.optim.optimizer) if c.optim.optimizer in OPTIMIZER_CHOICES else None
    own_steps = optimizer is not None and sets_own_step_sizes(optimizer.name, c.optim.optimizer_args)
    if optimizer and (optimizer.learning_rate_free or own_steps):
        lr = c.optim.lr or optimizer.default_lr
        varied = [flag for flag, rate in (("--text-encoder-lr", c.optim.text_encoder_lr),
                                          ("--text-encoder-2-lr", c.optim.text_encoder_2_lr))
                  if c.network.train_text_encoder and rate not in (None, 0, lr)]
        varied += [flag for flag, ratio in (("--loraplus-ratio", c.optim.loraplus_ratio),
                                            ("--loraplus-text-encoder-ratio", c.optim.loraplus_text_encoder_ratio))
                   if ratio not in (None, 1)]
        varied += varied_rate_flags(c.network)
        if own_steps:  # transformers' Adafactor reads no group's rate then: every one, and its schedule, unused
            unused = [flag for flag, given in (("--lr", c.optim.lr is not None),
                                               (f"--scheduler {c.optim.scheduler}", c.optim.scheduler != "constant"),
                                               ("--warmup-steps", c.optim.warmup_steps > 0)) if given] + varied
            if unused:
                p.append(f"{unused[0]}: adafactor with relative_step=True sets its own step sizes (from its step "
                         f"count), so learning rates and their schedule go unused; drop {', '.join(unused)}, or give "
                         "--optimizer-arg relative_step=False to train at --lr")
        elif varied:  # prodigyopt refuses groups at other rates, in the first step
            p.append(f"{varied[0]}: {optimizer.name} takes one rate for all the adapters (it finds the step size "
                     f"itself; --lr scales it) and stops at a different one for some; drop {', '.join(varied)}")
    if optimizer and optimizer.learning_rate_free and c.optim.lr is not None and c.optim.lr < 0.1:
        p.append(f"--lr: {c.optim.lr:g} with {optimizer.name}, which finds the step size itself and scales it by --lr; "
                 "use --lr 1.0 (or leave it out)")
    if (optimizer and not optimizer.learning_rate_free and c.optim.lr is not None and c.optim.lr >= 1
            and "." not in optimizer.name  # (lowvram's own names: a class may find its own step size)
            and any(kind in optimizer.name.lower() for kind in ("adam", "lion"))):  # (a config of Prodigy's, switched)
        p.append(f"--lr: {c.optim.lr:g} is the scale a learning-rate-free optimizer (Prodigy, D-Adaptation) takes; "
                 f"{optimizer.name} diverges at it: give a rate such as --lr 1e-4")
    positive(p, "text-encoder-lr", c.optim.text_encoder_lr, allow_zero=True)
    positive(p, "text-encoder-2-lr", c.optim.text_encoder_2_lr, allow_zero=True)
    if c.network.train_text_encoder and c.text_encoder_lr == 0 and c.optim.text_encoder_2_lr in (0, None):
        p.append("--text-encoder-lr: 0 leaves every text encoder untrained; drop --train-text-encoder instead")
    positive(p, "weight-decay", c.optim.weight_decay, allow_zero=True)
    positive(p, "max-grad-norm", c.optim.max_grad_norm, allow_zero=True)
    positive(p, "warmup-steps", c.optim.warmup_steps, allow_zero=True)
    if c.optim.warmup_steps > 1 and not float(c.optim.warmup_steps).is_integer():
        p.append(f"--warmup-steps: {c.optim.warmup_steps:g} is neither a whole number of steps nor a share under 1 "
                 "(0.1: the first tenth of the run)")
    positive(p, "scheduler-cycles", c.optim.scheduler_cycles)
    positive(p, "scheduler-power", c.optim.scheduler_power)
    if c.optim.scheduler_power != 1.0 and c.optim.scheduler != "polynomial":
        p.append(f"--scheduler-power: only used with --scheduler polynomial (this run's is {c.optim.scheduler}); add "
                 "it or drop --scheduler-power")
    positive(p, "decay-steps", c.optim.decay_steps, allow_zero=True)
    if c.optim.scheduler == "warmup_stable_decay" and not c.optim.decay_steps:
        p.append("--scheduler warmup_stable_decay: give its decay's length, --decay-steps N (0.2: the last fifth "
                 "of the run)")
    elif c.optim.decay_steps and c.optim.scheduler != "warmup_stable_decay":
        p.append(f"--decay-steps: only used with --scheduler warmup_stable_decay (this run's is {c.optim.scheduler}); "
                 "add it or drop --decay-steps")
    if c.optim.decay_steps > 1 and not float(c.optim.decay_steps).is_integer():
        p.append(f"--decay-steps: {c.optim.decay_steps:g} is neither a whole number of steps nor a share under 1")
    if optimizer and optimizer.name not in OPTIMIZERS:  # a class path: its package must be here (plan says so too)
        package = optimizer.name.split(".")[0]
        if importlib.util.find_spec(package) is None:
            p.append(f"--optimizer {optimizer.name}: no package {package} here; pip install the one that has it, or "
                     f"choose one of {', '.join(OPTIMIZERS)}")
    if optimizer:
        try:
            settings = optimizer_kwargs(optimizer.name, c.optim.optimizer_args)
        except ValueError as exc:
            p.append(f"--optimizer-arg: {exc}")
        else:
            if settings.get("warmup_init") and not settings.get("relative_step"):  # transformers refuses it
                p.append("--optimizer-arg warmup_init=True: Adafactor warms up only its own step sizes; add "
                         "relative_step=True, or drop warmup_init (--warmup-steps warms up --lr)")
    if c.optim.ema and optimizer and optimizer.schedule_free:
        p.append(f"--ema: {optimizer.name} averages its weights already, and saves the average; drop --ema")
    if optimizer and optimizer.schedule_free and c.optim.scheduler != "constant":
        p.append(f"--scheduler {c.optim.scheduler}: {optimizer.name} replaces the schedule; use --scheduler "
                 "constant (its warm-up comes from --warmup-steps)")
    if not 0 <= c.optim.min_lr_ratio < 1:
        p.append(f"--min-lr-ratio: must be in [0, 1), got {c.optim.min_lr_ratio:g}")
    elif c.optim.min_lr_ratio and c.optim.scheduler in ("constant", "constant_with_warmup"):
        p.append(f"--min-lr-ratio: --scheduler {c.optim.scheduler} does not decay; use cosine, linear, ... or drop it")
    return p


def _training_problems(c: RunConfig) -> list[str]:
    """The steps: their length, batches, seed, noise, timesteps and loss, and the memory levers."""
    p: list[str] = []
    if not 0 <= c.training.seed < 2**32:
        p.append(f"--seed: {c.training.seed} is not a seed from 0 to {2**32 - 1}" + (
            " (-1, random elsewhere: a lowvram run keeps its seed, so it can resume; leave --seed out for "
            f"{DEFAULT_SEED})"
            if c.training.seed == -1 else ""))
    positive(p, "v-pred-like-loss", c.training.v_pred_like_loss, allow_zero=True)
    if c.training.v_pred_like_loss and c.model.zero_terminal_snr:
        p.append("--v-pred-like-loss: its (SNR+1)/SNR weight is infinite at the last timestep of --zero-terminal-snr's "
                 "schedule; drop one of them")
    positive(p, "batch-size", c.training.batch_size)
    positive(p, "gradient-accumulation", c.training.gradient_accumulation)
    positive(p, "max-steps", c.training.max_steps)
    positive(p, "epochs", c.training.epochs)
    for flag, value, most in (("--max-steps", c.training.max_steps, MAX_STEPS_GIVEN),
                              ("--epochs", c.training.epochs, MAX_EPOCHS_GIVEN)):
        if value is not None and value > most:  # (a run of years: listing its schedule took hours before step 1)
            p.append(f"{flag}: {value} is past {most:,}, more than any LoRA trains; give a smaller number")
    positive(p, "noise-offset", c.training.noise_offset, allow_zero=True)
    positive(p, "ip-noise-gamma", c.training.ip_noise_gamma, allow_zero=True)
    for flag, random_strength, strength in (
            ("noise-offset", c.training.noise_offset_random_strength, c.training.noise_offset),
            ("ip-noise-gamma", c.training.ip_noise_gamma_random_strength, c.training.ip_noise_gamma)):
        if random_strength and not strength:
            p.append(f"--{flag}-random-strength: draws a strength up to --{flag}, which is 0; set --{flag} or "
                     f"drop --{flag}-random-strength")
    if c.training.adaptive_noise_scale and not c.training.noise_offset:
        p.append("--adaptive-noise-scale: scales --noise-offset, which is 0; set --noise-offset (e.g. 0.05) or drop "
                 "--adaptive-noise-scale")
    positive(p, "multires-noise-iterations", c.training.multires_noise_iterations)
    if c.training.multires_noise_discount is not None and not 0 < c.training.multires_noise_discount < 1:
        p.append(f"--multires-noise-discount: must be in (0, 1), got {c.training.multires_noise_discount}")
    if c.training.multires_noise_discount is not None and not c.training.multires_noise_iterations:
        p.append("--multires-noise-discount: only used with --multires-noise-iterations; add it or drop the discount")
    low, high = c.training.min_timestep, c.training.max_timestep
    if low is not None and not 0 <= low < TRAIN_TIMESTEPS:
        p.append(f"--min-timestep: {low} is not in [0, {TRAIN_TIMESTEPS})")
    if high is not None and not 0 < high <= TRAIN_TIMESTEPS:
        p.append(f"--max-timestep: {high} is not in (0, {TRAIN_TIMESTEPS}]")
    positive(p, "timestep-bias-multiplier", c.training.timestep_bias_multiplier)
    if not 0 < c.training.timestep_bias_portion < 1:
        p.append(f"--timestep-bias-portion: must be in (0, 1), got {c.training.timestep_bias_portion}")
    if problem := timestep_problem(c.training.timestep_shape):
        p.append(problem)
    if low is not None and high is not None and low >= high:
        p.append(f"--min-timestep: {low} is not below --max-timestep {high}; the range would be empty")
    if c.model.zero_terminal_snr and c.model.prediction_type == "epsilon":
        p.append(f"--zero-terminal-snr: {ZERO_SNR_NEEDS_V}")
    elif c.model.zero_terminal_snr and not c.model.prediction_type and (epsilon := _predicts_epsilon(c.model.model)):
        p.append(f"--zero-terminal-snr: {epsilon}: {ZERO_SNR_NEEDS_V}")  # (said before the scan and the load)
    if c.training.huber_c is not None and not 0 < c.training.huber_c <= 1:
        p.append(f"--huber-c: must be in (0, 1], got {c.training.huber_c}")
    for flag, value in (("huber-c", c.training.huber_c), ("huber-schedule", c.training.huber_schedule)):
        if value is not None and c.training.loss not in HUBER_LOSSES:
            p.append(f"--{flag}: only used with --loss huber or smooth_l1; add one or drop --{flag}")
    try:
        parse_save_every(c.training.checkpoint_every)
    except ValueError as exc:
        by_time = "; --checkpoint-minutes M saves one every M minutes" if is_time(c.training.checkpoint_every) else ""
        p.append(f"--checkpoint-every: {exc}{by_time}")
    positive(p, "checkpoint-minutes", c.training.checkpoint_minutes, allow_zero=True)
    positive(p, "checkpoint-blocks", c.memory.checkpoint_blocks)
    if c.memory.cuda_graphs and not c.memory.compile:
        p.append("--cuda-graphs: replays the compiled blocks; add --compile")
    positive(p, "keep-checkpoints", c.training.keep_checkpoints)
    positive(p, "min-snr-gamma", c.training.min_snr_gamma)
    if c.training.max_steps is not None and c.training.epochs is not None:
        p.append("--max-steps and --epochs: can't use both; choose one")
    return p


def _predicts_epsilon(model: str) -> str:
    """Why the model predicts epsilon, as read without loading it: a built-in architecture, or a single file without
    the v_pred key a v-prediction checkpoint (NoobAI-XL V-Pred) carries; "" where it may not."""
    path = expand_home(model)
    if model in FAMILIES and not path.exists():  # (a folder here of that name is the model, as loading reads it)
        return f"{model} predicts epsilon"
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return ""  # (a diffusers folder's scheduler says it when it loads)
    try:
        metadata, names, _ = read_header(path)
    except (OSError, ValueError):
        return ""  # (named as broken by the model's own check)
    if "v-prediction" in declared_schedule(names, metadata):
        return ""
    key = SCHEDULE_MARKERS["v-prediction"]
    return f"{path.name} predicts epsilon (it has no {key} key, as v-prediction checkpoints do)"


def sample_prompt_notes(c: RunConfig) -> list[str]:
    """What the sample prompts hold that no sample here uses (kohya's options for other models and tools, a prompt
    file's other keys): left out, the samples drawn without it, said once. (What is wrong is config_problems'.)"""
    notes, lines = [], list(c.output.sample_prompts)
    left = list(dict.fromkeys(setting for line in lines for setting in generation_left_out(line)))
    if left:  # (AUTOMATIC1111's generation data as a prompt: its prompt, negative prompt and sampling settings read)
        notes.append(f"--sample-prompt: AUTOMATIC1111's {', '.join(left)} left out: no sample here uses them")
    if c.output.sample_prompt_file:
        path = Path(c.output.sample_prompt_file)
        try:
            read, keys = read_prompt_file(path)
        except (OSError, ValueError):
            read, keys = [], []
        lines += read
        if keys:
            notes.append(f"--sample-prompt-file: {path.name}'s {', '.join(keys)} left out: lowvram's samples do not "
                         "take them, and are drawn without")
    tags = list(dict.fromkeys(tag for line in map(as_prompt_line, lines) if without_lora_tags(line) != line
                              for tag in lora_tags(line)))
    if tags:  # (a prompt copied from Civitai or AUTOMATIC1111's PNG Info)
        notes.append(f"sample prompts: {', '.join(tags)} left out: every sample is drawn with the LoRA being trained, "
                     "at full strength, and no other")
    elsewhere = list(dict.fromkeys(option for line in lines for option in options_elsewhere(line)))
    if elsewhere:
        notes.append(f"sample prompts: kohya's {', '.join(elsewhere)} left out (for other models or tools, of no use "
                     "to an SD1.5 or SDXL sample); the samples are drawn without them")
    return notes


def idle_option_notes(c: RunConfig) -> list[str]:
    """Options set away from their default whose switch is off, so they change nothing: said, not refused (kohya and
    OneTrainer configs carry such values, and both tools pass over them)."""
    validating = bool(c.validation.validation_data or c.validation.validation_split)
    regularizing = bool(c.data.reg_data) or _has_regularization_subsets(c.data.data)
    sampling = bool(c.output.sample_prompts or c.output.sample_prompt_file)
    idle = {"ema_decay": (c.optim.ema, "--ema"),
            "timestep_bias_multiplier": (c.training.timestep_bias != "none", "--timestep-bias"),
            "timestep_bias_portion": (c.training.timestep_bias != "none", "--timestep-bias"),
            "validation_timesteps": (validating, "a validation set (--validation-split or --validation-data)"),
            "prior_loss_weight": (regularizing, "regularization images (--reg-data)"),
            "class_prompt": (regularizing, "regularization images (--reg-data)"),
            "reg_balance": (regularizing, "regularization images (--reg-data)"),
            "sample_steps": (sampling, "sample prompts (--sample-prompt or --sample-prompt-file)")}
    notes = []
    for name, (switched_on, switch) in idle.items():
        section, field, _ = fields_by_name()[name]
        value = getattr(getattr(c, section), name)
        if not switched_on and value != field.default:
            shown = f'"{value}"' if isinstance(value, str) else f"{value:g}"
            notes.append(f"{flag_name(field)} {shown} changes nothing without {switch}")
    # (warnings, not refusals: a run config saved by an older version may hold them)
    if c.optim.scheduler_cycles != 1 and c.optim.scheduler != "cosine_with_restarts":
        notes.append(f"warning: --scheduler-cycles {c.optim.scheduler_cycles} has no effect with --scheduler "
                     f"{c.optim.scheduler}; only cosine_with_restarts restarts")
    if c.optim.warmup_steps and c.optim.scheduler == "constant" and not spec_of(c.optim.optimizer).schedule_free:
        notes.append(f"warning: --warmup-steps {c.optim.warmup_steps:g} has no effect with --scheduler constant; use "
                     "--scheduler constant_with_warmup (or cosine) to warm up")
    return notes


def _unpack_hint(path: Path, flag: str = "--data") -> str:
    """How to unpack a dataset uploaded as an archive (Python's own zipfile and tarfile do it on any system)."""
    name = path.name.lower()
    module = "zipfile" if name.endswith(".zip") else "tarfile" if name.endswith((".tar", ".tar.gz", ".tgz")) else None
    if module is None:
        return "; extract it first (7-Zip), then give its folder" if name.endswith((".7z", ".rar")) else ""
    folder = path.with_name(re.sub(r"(\.tar)?\.[^.]+$", "", path.name, flags=re.IGNORECASE))
    if module == "zipfile" and windows_powershell_zip(path):  # (python's zipfile would unpack flat files)
        return (f"; unpack it first with unzip (or 7-Zip), which makes the folders Windows PowerShell wrote as \\ "
                f"in its names: unzip {shell_line(path)} -d {shell_line(folder)}, then give the folder of its "
                "N_name folders")
    inside = zip_folder(path) if module == "zipfile" else None
    if inside and REPEAT_FOLDER.match(inside):  # one N_name folder: unpacked into a folder of the zip's name, the
        inside = None  # kohya --data that holds it (it was unpacked among the zip's neighbours: a Drive's top folder)
    if inside:  # (Windows' "Compressed folder" and macOS' "Compress" keep the folder itself in the zip)
        folder = path.parent
    python = "python" if os.name == "nt" else "python3"
    data = folder / inside if inside else folder
    encoding = name_encoding(path) if module == "zipfile" else None  # (zipfile would unpack its names garbled)
    unpack = (f"{python} -m {module} -e {shell_line(path, folder)}" if not encoding else
              f"{python} -m zipfile --metadata-encoding {encoding} -e {shell_line(path, folder)}"
              if sys.version_info >= (3, 11) else f"unzip -O {encoding} {shell_line(path)} -d {shell_line(folder)}")
    return f"; unpack it first: {unpack}, then {flag} {shell_line(data)}"


