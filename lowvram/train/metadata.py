"""What a saved LoRA says about itself: kohya's ss_* keys, Stability's modelspec and lowvram's own, so UIs
and model sites can show how it was trained. LoRAs get shared: no value holds a folder of this machine (the
base model and datasets are named by file and folder name, as kohya does); the `.toml` beside the LoRA keeps
the full config that `--config` replays. `--no-metadata` keeps only what says which network the file holds, for
which model (kohya's minimum keys: ss_base_model_version and ss_v2 too, without which AUTOMATIC1111 takes an SDXL
LoRA for SD1.5's)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import tomli_w

import lowvram
from lowvram.adapters import lora_files
from lowvram.config import TRAIN_TIMESTEPS, RunConfig, shareable_name
from lowvram.data.buckets import make_buckets
from lowvram.data.epochs import counted_epochs
from lowvram.lora_metadata import RECIPE_KEY, modelspec
from lowvram.models.loading import LoadedModel
from lowvram.optim import sets_own_step_sizes
from lowvram.resolve import ResolvedRun


@dataclass(frozen=True)
class TrainingShape:
    """What every save of a run records alike: when it started and kohya's figures of its length."""
    started: datetime
    batches_per_epoch: int  # per process (kohya's len(train_dataloader))
    epochs: int  # the epochs it trains, the last maybe in part (kohya's num_train_epochs)
    total_steps: int
    processes: int = 1  # accelerate's, each drawing its own batch


def _as_kohya_writes(setting: str) -> str:
    """An --optimizer-arg as kohya's ss_optimizer writes it, a tuple in brackets (betas=(0.9, 0.99)): pasted back as
    --optimizer, betas=0.9,0.99 read as two settings."""
    key, _, value = setting.partition("=")
    return f"{key}=({', '.join(part.strip() for part in value.split(','))})" if "," in value else setting


def lora_metadata(run: ResolvedRun, model: LoadedModel, records, step: int, epoch: int,
                  trigger: str | None, shape: TrainingShape, regularization=(), from_folder: bool = False
                  ) -> dict[str, str]:
    """What kohya (ss_*), Stability's modelspec and lowvram record, so UIs and model sites can show it; the
    images trained on (`records`) and the regularization images. A trigger `from_folder` (a concept folder's name,
    no --trigger-word) is the trigger phrase alone: no training comment nor lowvram.trigger_word, which tell
    `info --strip-captions` a trigger given to share (a folder's name is stripped with the others)."""
    config, family, resolution = run.config, model.family, run.resolution
    prediction = model.pipeline.scheduler.config.prediction_type
    own_steps = sets_own_step_sizes(config.optim.optimizer, config.optim.optimizer_args)
    # kohya's ss_optimizer: the class and its settings, weight_decay among them (lowvram's own option)
    settings = ",".join([f"weight_decay={config.optim.weight_decay:g}",
                         *map(_as_kohya_writes, config.optim.optimizer_args)])
    now = datetime.now(timezone.utc)
    described = modelspec(family.modelspec_architecture, config.output.metadata_title or config.output_name,
                          f"{resolution}x{resolution}", "v" if prediction == "v_prediction" else "epsilon", when=now
                          ) | own_description(config) | lora_files.network_metadata(config.network)
    if config.output.no_metadata:  # (its trigger word, a person's name maybe, too)
        return {"ss_base_model_version": family.base_model_version, "ss_v2": "False"} | described
    if trigger:  # the words a model site lists to use it with (modelspec's trigger_phrase)
        described["modelspec.trigger_phrase"] = trigger
    data, buckets = config.data, make_buckets(run)
    folders = folder_keys([*records, *regularization])  # one key per folder in every field that names them
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.network.rank),
        "ss_network_alpha": f"{config.alpha:g}",
        "ss_network_dropout": f"{config.network.dropout:g}",
        "ss_base_model_version": family.base_model_version,
        "ss_sd_model_name": model.name,
        "ss_sd_model_hash": model.hash,
        "ss_vae_name": shareable_name(config.model.vae) if config.model.vae else "None",
        "ss_session_id": str(int(shape.started.timestamp() * 1e6) % 2**32),  # one for the run's every save, as kohya's
        "ss_mixed_precision": run.mixed_precision,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
        "ss_num_train_images": str(round(sum(record.repeats * (1 if record.resolution else len(run.resolutions))
                                             for record in records))),
        "ss_num_reg_images": str(round(sum(record.repeats for record in regularization))),
        "ss_dataset_dirs": dataset_dirs(records, folders),
        "ss_reg_dataset_dirs": dataset_dirs(regularization, folders),
        "ss_bucket_info": bucket_info(run, records, regularization),
        "ss_enable_bucket": str(data.bucket),
        "ss_min_bucket_reso": str(buckets.min_side),
        "ss_max_bucket_reso": str(buckets.max_side),
        "ss_bucket_no_upscale": str(data.bucket_no_upscale),
        "ss_color_aug": str(bool(data.color_jitter)),
        "ss_random_crop": str(data.crop == "random"),
        "ss_flip_aug": str(data.flip),
        "ss_shuffle_caption": str(data.shuffle_tags),
        "ss_keep_tokens": str(data.keep_tokens),
        "ss_caption_dropout_rate": f"{data.caption_dropout:g}",
        "ss_caption_dropout_every_n_epochs": str(data.caption_dropout_every or 0),
        "ss_caption_tag_dropout_rate": f"{data.tag_dropout:g}",
        "ss_prior_loss_weight": f"{data.prior_loss_weight:g}",
        "ss_max_train_steps": str(shape.total_steps),  # kohya's, worked out from the epochs where they are given
        "ss_num_batches_per_epoch": str(shape.batches_per_epoch),
        "ss_num_epochs": str(shape.epochs),
        "ss_gradient_checkpointing": str(config.memory.gradient_checkpointing),
        "ss_cache_latents": "True",  # (lowvram trains from cached latents always)
        "ss_max_grad_norm": f"{config.optim.max_grad_norm:g}",
        "ss_lr_warmup_steps": f"{config.optim.warmup_steps:g}",
        # (Adafactor's own step sizes read no rate: None, as kohya writes it, not one the run never used)
        "ss_learning_rate": "None" if own_steps else f"{config.lr:g}",
        "ss_unet_lr": "None" if own_steps else f"{config.lr:g}",
        "ss_text_encoder_lr": "None" if own_steps else _text_encoder_rates(config, len(family.text_encoders)),
        "ss_lr_scheduler": "adafactor" if own_steps else config.optim.scheduler,
        "ss_optimizer": f"{config.optim.optimizer}({settings})",
        "ss_scale_weight_norms": f"{config.optim.scale_weight_norms:g}" if config.optim.scale_weight_norms else "None",
        "ss_loraplus_lr_ratio": f"{config.optim.loraplus_ratio:g}" if config.optim.loraplus_ratio else "None",
        "ss_loraplus_text_encoder_lr_ratio": (f"{config.optim.loraplus_text_encoder_ratio:g}"
                                              if config.optim.loraplus_text_encoder_ratio else "None"),
        "ss_seed": str(config.training.seed),
        "ss_max_token_length": str(config.data.max_token_length),
        "ss_clip_skip": str(config.data.clip_skip) if config.data.clip_skip > 1 else "None",
        "ss_noise_offset": f"{config.training.noise_offset:g}",
        "ss_multires_noise_iterations": str(config.multires_noise[0]) if config.multires_noise else "None",
        "ss_multires_noise_discount": f"{config.multires_noise[1]:g}" if config.multires_noise else "None",
        "ss_noise_offset_random_strength": str(config.training.noise_offset_random_strength),
        "ss_adaptive_noise_scale": (f"{config.training.adaptive_noise_scale:g}" if config.training.adaptive_noise_scale
                                    else "None"),
        "ss_ip_noise_gamma_random_strength": str(config.training.ip_noise_gamma_random_strength),
        "ss_ip_noise_gamma": f"{config.training.ip_noise_gamma:g}" if config.training.ip_noise_gamma else "None",
        "ss_min_snr_gamma": f"{config.training.min_snr_gamma or 0:g}",
        "ss_debiased_estimation": str(config.training.debiased_estimation),
        "ss_scale_v_pred_loss_like_noise_pred": str(config.training.scale_v_pred_loss),
        "ss_v_pred_like_loss": f"{config.training.v_pred_like_loss:g}" if config.training.v_pred_like_loss else "None",
        "ss_min_timestep": str(config.training.min_timestep or 0),
        "ss_max_timestep": str(config.training.max_timestep or TRAIN_TIMESTEPS),
        "ss_zero_terminal_snr": str(bool(model.pipeline.scheduler.config.get("rescale_betas_zero_snr"))),
        "ss_loss_type": config.training.loss,
        "ss_masked_loss": str(config.data.masked_loss or config.data.alpha_mask),
        "ss_huber_c": f"{config.huber[0]:g}",
        "ss_huber_schedule": config.huber[1],
        "ss_batch_size_per_device": str(config.training.batch_size),
        "ss_gradient_accumulation_steps": str(config.training.gradient_accumulation),
        "ss_total_batch_size": str(config.training.batch_size * config.training.gradient_accumulation
                                   * shape.processes),  # the images of a step, as kohya counts them
        "ss_output_name": config.output_name,
        "ss_training_comment": config.output.training_comment or (trigger if not from_folder else "") or "",
        "ss_training_started_at": str(shape.started.timestamp()),
        "ss_training_finished_at": str(now.timestamp()),
        "ss_tag_frequency": lora_files.tag_frequency(  # as kohya's
            _captions_by_folder([*records, *regularization], folders)),
        "ss_v2": "False",
        "lowvram.version": lowvram.__version__,
        "lowvram.family": family.name,
        "lowvram.base_model": shareable_name(model.source),
        "lowvram.trigger_word": (trigger if not from_folder else "") or "",
        "lowvram.dataset_images": str(len(records)),
        RECIPE_KEY: tomli_w.dumps(config.to_shareable_dict()),
    } | datasets_entry(run, records, regularization, folders) | described


def datasets_entry(run: ResolvedRun, records, regularization, keys: dict[Path, str]) -> dict[str, str]:
    """kohya's ss_datasets, where a dataset file gave the data (kohya's dataset_config, whose readers find each
    [[datasets]] entry's batch size, resolution and images there, and each subset's own settings; the run's keys
    above are its first subset's): {} for a folder."""
    from lowvram.data.check import folder_config
    from lowvram.dataset_files import is_dataset_file

    config = run.config
    if not config.data.data or not is_dataset_file(config.data.data):
        return {}
    reg = {id(record) for record in regularization}
    by_dataset: dict[int, list] = {}
    for record in [*records, *regularization]:
        by_dataset.setdefault(record.dataset or 1, []).append(record)
    datasets = []
    for number in sorted(by_dataset):
        mine = by_dataset[number]
        first, by_folder = mine[0], {}
        for record in mine:
            by_folder.setdefault(record.path.parent, []).append(record)
        buckets = make_buckets(run, first.resolution)
        subsets = []
        for folder, own in by_folder.items():
            data = folder_config(config, own[0].settings).data
            repeats = own[0].repeats
            subsets.append({"img_count": len(own), "num_repeats": int(repeats) if float(repeats).is_integer() else
                            repeats, "color_aug": bool(data.color_jitter), "flip_aug": data.flip,
                            "random_crop": data.crop == "random", "shuffle_caption": data.shuffle_tags,
                            "keep_tokens": data.keep_tokens, "keep_tokens_separator": data.keep_tokens_separator,
                            "enable_wildcard": data.wildcards, "image_dir": folder.name, "class_tokens": own[0].folder,
                            "is_reg": id(own[0]) in reg})
        side = first.resolution or run.resolution
        datasets.append({
            "is_dreambooth": True, "batch_size_per_device": first.batch_size or config.training.batch_size,
            "num_train_images": round(sum(record.repeats for record in mine if id(record) not in reg)),
            "num_reg_images": round(sum(record.repeats for record in mine if id(record) in reg)),
            "resolution": [side, side], "enable_bucket": config.data.bucket, "min_bucket_reso": buckets.min_side,
            "max_bucket_reso": buckets.max_side,
            "tag_frequency": json.loads(lora_files.tag_frequency(_captions_by_folder(mine, keys))),
            "subsets": subsets})
    return {"ss_datasets": json.dumps(datasets, ensure_ascii=False)}


def folder_keys(records) -> dict[Path, str]:
    """Each folder images are in, by its name (kohya's keys: `10_name`, or a dataset file's image_dir's name); folders
    of one name (a dataset file's a/img and b/img) apart, the later as "img (2)" (a name no folder has)."""
    folders = list(dict.fromkeys(record.path.parent for record in records))
    keys: dict[Path, str] = {}
    for folder in folders:
        key, n = folder.name, 1
        while key in keys.values() or (n > 1 and key in {other.name for other in folders}):
            n += 1
            key = f"{folder.name} ({n})"
        keys[folder] = key
    return keys


def _captions_by_folder(records, keys: dict[Path, str]) -> dict[str, list[str]]:
    """Each folder's captions without the prefixes and suffixes added to them, as kohya counts its tags before it
    adds them (Pony's "score_9" prefix was every LoRA's most frequent tag); an image's other captions (its other
    lines, each {a|b} choice) add the tags the first lacks, once each (only "red dress" of "{red|blue} dress" was
    counted)."""
    folders: dict[str, list[str]] = {}
    for record in records:
        own = record.caption if record.own_caption is None else record.own_caption
        at = record.caption.find(own) if own else -1  # (each caption is wrapped alike: the prefix, it, the suffix)
        before, after = (record.caption[:at], record.caption[at + len(own):]) if at >= 0 else ("", "")
        seen = {tag.lower() for tag in _tags(own)}
        others: dict[str, str] = {}  # (counted in lower case, as tag_frequency counts)
        for text, _ in record.more_captions:
            text = text[len(before):] if before and text.startswith(before) else text
            text = text[:len(text) - len(after)] if after and text.endswith(after) else text
            others |= {tag.lower(): tag for tag in _tags(text) if tag.lower() not in seen and tag.lower() not in others}
        folders.setdefault(keys[record.path.parent], []).append(", ".join([own, *others.values()]) if others else own)
    return folders


def _tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def dataset_dirs(records, keys: dict[Path, str]) -> str:
    """kohya's ss_dataset_dirs: each folder's repeats and image count (AUTOMATIC1111 shows their sum), by its
    `folder_keys` key, so that folders of one name keep their own repeats."""
    dirs: dict[str, dict] = {}
    for record in records:
        entry = dirs.setdefault(keys[record.path.parent], {"n_repeats": record.repeats, "img_count": 0})
        entry["img_count"] += 1
    for entry in dirs.values():
        entry["n_repeats"] = int(entry["n_repeats"]) if float(entry["n_repeats"]).is_integer() else entry["n_repeats"]
    return json.dumps(dirs, ensure_ascii=False)


def bucket_info(run: ResolvedRun, records, regularization=()) -> str:
    """kohya's ss_bucket_info: each bucket's (width, height) and its samples per epoch with repeats, the
    regularization images' as an epoch pairs them, at every resolution an image trains at (AUTOMATIC1111 lists them
    as the LoRA's resolutions), and the images' mean aspect-ratio error against their buckets."""
    epochs = counted_epochs(run, list(records), list(regularization))
    counts = Counter(epochs.samples[i].bucket for i in epochs.expanded(0))
    buckets = {resolution: make_buckets(run, resolution) for resolution in run.resolutions[1:]}
    errors = []
    for record in [*records, *regularization]:
        placed = [record.bucket] + ([] if record.resolution else
                                    [buckets[resolution].place(record.width, record.height).bucket
                                     for resolution in run.resolutions[1:]])
        errors += [abs(bucket[0] / bucket[1] - record.width / record.height) for bucket in placed]
    listed = {str(i): {"resolution": list(bucket), "count": round(count)}
              for i, (bucket, count) in enumerate(sorted(counts.items()))}
    return json.dumps({"buckets": listed, "mean_img_ar_error": sum(errors) / max(1, len(errors))})


def own_description(config: RunConfig) -> dict[str, str]:
    """The modelspec entries the user wrote (--metadata-author and the rest), as kohya writes them."""
    output = config.output
    given = {"author": output.metadata_author, "description": output.metadata_description,
             "license": output.metadata_license,
             "tags": ", ".join(t.strip() for t in output.metadata_tags.split(",") if t.strip())
             if output.metadata_tags else None}
    return {f"modelspec.{key}": value for key, value in given.items() if value}


def _text_encoder_rates(config: RunConfig, encoders: int) -> str:
    """kohya's ss_text_encoder_lr: one rate, or the list of SDXL's two where they differ ("0": none trains)."""
    rates = [config.text_encoder_rate(i) for i in range(encoders)]
    return f"{rates[0]:g}" if len(set(rates)) == 1 else "[" + ", ".join(f"{rate:g}" for rate in rates) + "]"
