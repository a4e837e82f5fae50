"""The phase before training, after the scan (`lowvram.data.check`): encode every latent and caption variant into the
caches, so the VAE (and the frozen text encoders) can leave the GPU for the whole training loop."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text

from lowvram.config import RunConfig
from lowvram.data.augment import (
    AugmentOptions,
    make_variant,
    trained_text,
    weighted_caption_variants,
)
from lowvram.data.buckets import Buckets
from lowvram.data.cache import (
    LatentJob,
    TensorStore,
    TextJob,
    cache_problem,
    encode_latents,
    encode_texts,
    estimate_bytes,
    latent_key,
    module_fingerprint,
    text_key,
)
from lowvram.data.check import ScannedSets, folder_config, folder_options
from lowvram.data.dataset import TrainingData
from lowvram.data.epochs import Epochs, Sample, placements
from lowvram.errors import LowvramError
from lowvram.memory import PhasePeaks
from lowvram.models.conditioning import set_vae_tiling
from lowvram.models.families import prompt_reading
from lowvram.models.tokens import cut_captions
from lowvram.resolve import LATENTS, TEXT, ResolvedRun


@dataclass
class PreparedData:
    data: TrainingData
    encoded_latents: int  # entries encoded by this run (the rest came from the cache)
    encoded_texts: int
    # each sample prompt's (hidden, pooled) of its negative and itself, encoded while the text encoders were on the
    # device, so that sampling later needs no text encoder there; None when the text encoders train
    sample_embeddings: list[tuple] | None = None
    validation: list[Sample] = field(default_factory=list)  # held-out samples (first variant, plain caption)


def prepare_training_data(run: ResolvedRun, model, sets: ScannedSets, device: torch.device, console: Console,
                          peaks: PhasePeaks | None = None) -> PreparedData:
    """Encode what the caches lack for the images of `sets`, then free the GPU of the VAE (and of the text encoders
    unless they train). The held-out images are cached once each, unaugmented, with their caption.
    `peaks` records the caching phases' peak VRAM."""
    config, family, cache_dir = run.config, model.family, run.cache_dir
    options_of = cache(lambda settings: folder_options(folder_config(config, settings)))
    captions = options_of(())[2]
    cache_text = not config.network.train_text_encoder
    vae_id = module_fingerprint(model.vae)
    text_id = (module_fingerprint(*model.text_encoders) + repr([s.hidden_state for s in family.text_encoders])
               + run.text_reading.cache_tag)
    latent_store, text_store = TensorStore(cache_dir, LATENTS), TensorStore(cache_dir, TEXT)

    latent_jobs: dict[str, LatentJob] = {}
    text_jobs: dict[str, TextJob] = {}
    samples: list[list[Sample]] = [[], [], []]  # training, regularization, validation
    origins: list[list[Path]] = [[], [], []]  # each sample's image file
    copies: dict[str, list[LatentJob]] = {}  # a latent's other images of the same contents (duplicates)
    buckets: dict[int, Buckets] = {}
    plain = AugmentOptions()
    dropping, variant_counts = False, set()  # whether some caption is dropped; the latent variants per image
    for report_index, records in enumerate([sets.training, sets.regularization, sets.held_out]):
        weight = config.data.prior_loss_weight if report_index == 1 else 1.0
        validating = report_index == 2
        for record in records:
            options, augment, own_captions = options_of(record.settings)
            dropping |= bool(own_captions.dropout or own_captions.dropout_every) and not validating
            if not validating:
                variant_counts.add(augment.variants)
            text_keys, text_weights = [], []
            caption_weights = () if validating else record.caption_weights
            if cache_text:
                drawn = ([(record.caption, None)] if validating
                         else [(record.caption, record.kept_tags), *record.more_captions])
                for i, (text, kept) in enumerate(drawn):  # each caption line's variants
                    variants = ({trained_text(text, own_captions): 1.0} if validating
                                else weighted_caption_variants(text, own_captions, kept))
                    for caption, share in variants.items():
                        key = text_key(caption, text_id)
                        text_jobs.setdefault(key, TextJob(key, caption))
                        text_keys.append(key)
                        # a caption line's chance, shared by its variants as kohya's draw would (a tag dropout's
                        # are unlike; a line's count of them is no weight of it); uniform where all are alike
                        if not validating and (caption_weights or record.more_captions or own_captions.tag_dropout):
                            text_weights.append((caption_weights[i] if caption_weights else 1.0) * share)
            for placement in placements(run, record, buckets, first_only=validating):
                keys = []
                for v in range(1 if validating else augment.variants):
                    variant = make_variant(record.sha256, v, placement, plain if validating else augment)
                    key = latent_key(record, placement, variant, options, vae_id, model.vae.dtype,
                                     config.memory.vae_tiling)
                    job = LatentJob(key, record, placement, variant, options)
                    if latent_jobs.setdefault(key, job).record.path != record.path:  # a copy of an image: read in
                        copies.setdefault(key, []).append(job)                        # its place if it is gone
                    keys.append(key)
                origins[report_index].append(record.path)
                samples[report_index].append(Sample(tuple(dict.fromkeys(keys)), tuple(text_keys), record.caption,
                                                    placement.bucket, record.repeats,
                                                    weight if validating else weight * record.loss_weight,
                                                    record.kept_tags, () if validating else record.more_captions,
                                                    record.folder, caption_weights, tuple(text_weights),
                                                    record.batch_size, own_captions if record.settings else None,
                                                    record.dataset))
    drawn = _drawn_keys(samples, config)
    if drawn is not None:  # (kohya leaves such images out of its dataset: it neither caches nor reads them)
        latent_jobs = {key: job for key, job in latent_jobs.items() if key in drawn}
        text_jobs = {key: job for key, job in text_jobs.items() if key in drawn}
    empty_key = None
    if cache_text and dropping:
        empty_key = text_key("", text_id)
        text_jobs.setdefault(empty_key, TextJob(empty_key, ""))

    text_width = sum(getattr(enc.config, "hidden_size", 0) for enc in model.text_encoders)
    pooled_width = sum(enc.config.projection_dim for spec, enc in zip(family.text_encoders, model.text_encoders)
                       if spec.pooled)
    te_bytes, text_tokens = model.text_encoders[0].dtype.itemsize, run.text_reading.max_tokens + 2  # BOS, EOS
    total = estimate_bytes(list(latent_jobs.values()), list(text_jobs.values()), model.vae, text_width, pooled_width,
                           model.vae.dtype.itemsize, te_bytes, text_tokens)
    missing_latents = [j for j in latent_jobs.values() if not latent_store.valid(j.key)]
    missing_texts = [j for j in text_jobs.values() if not text_store.valid(j.key)]
    needed = estimate_bytes(missing_latents, missing_texts, model.vae, text_width, pooled_width,
                            model.vae.dtype.itemsize, te_bytes, text_tokens)
    per_image = "-".join(str(count) for count in sorted(variant_counts)[::max(1, len(variant_counts) - 1)])
    console.print(f"cache {cache_dir}: {len(latent_jobs)} latents ({per_image} variant(s) per image) and "
                  f"{len(text_jobs)} text embeddings, {total / 2**20:.1f} MiB; "
                  f"{len(missing_latents)} + {len(missing_texts)} to encode ({needed / 2**20:.1f} MiB)", soft_wrap=True)
    latent_store.expected_bytes = text_store.expected_bytes = needed
    short = cache_problem(cache_dir, needed)
    if short:  # said before the caching it changes, not after minutes of it
        latent_store.keep_in_memory(short, needed)
        text_store.keep_in_memory(short, needed)
        _say_in_memory(console, short)

    if warning := cut_captions(sets.reports[0].usable, model.tokenizers[0], run.text_reading):
        console.print(Text(warning, style="yellow"), soft_wrap=True)
    batch = config.data.cache_batch_size
    set_vae_tiling(model.vae, config.memory.vae_tiling)
    with peaks.phase("latent caching") if peaks else nullcontext():
        model.vae.to(device)
        encoded_latents, unreadable = encode_latents(missing_latents, latent_store, model.vae, batch, console)
        gone = {path: why for path, why in unreadable.values()}
        while retry := [next(job for job in copies.get(key, ()) if job.record.path not in gone) for key in unreadable
                        if any(job.record.path not in gone for job in copies.get(key, ()))]:
            more, unreadable = encode_latents(retry, latent_store, model.vae, batch, console)
            encoded_latents += more
            gone |= {path: why for path, why in unreadable.values()}
        model.vae.to("cpu")
    if gone:
        samples = _readable(samples, origins, gone, sets, console)
    for store in (latent_store, text_store):
        if store.orphans_removed:
            console.print(f"removed {store.orphans_removed} temporary file(s) a killed run left in {store.root}")
    for store in (latent_store, text_store):
        if store.fell_back and store.fell_back != short:  # (a disk that filled during the caching)
            _say_in_memory(console, store.fell_back)
            break
    encoded_texts, sample_embeddings = 0, None
    if cache_text:
        from lowvram.models.conditioning import encode_prompts

        def encode(texts):
            return encode_prompts(family, model.text_encoders, model.tokenizers, texts, device,
                                  run.text_reading)

        with peaks.phase("text caching") if peaks else nullcontext():
            for encoder in model.text_encoders:
                encoder.to(device)
            encoded_texts = encode_texts(missing_texts, text_store, encode, batch, console)
            sample_embeddings = []
            for prompt in config.samples:  # each alone: its chunks are its own and its negative's
                with torch.no_grad():
                    hidden, pooled = encode_prompts(family, model.text_encoders, model.tokenizers,
                                                    [prompt.negative, prompt.text], device,
                                                    prompt_reading(run.text_reading.clip_skip))
                sample_embeddings.append((hidden.cpu(), None if pooled is None else pooled.cpu()))
            for encoder in model.text_encoders:
                encoder.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    data = TrainingData(samples[0], samples[1], config.training.batch_size, config.training.seed, captions,
                        latent_store, text_store, empty_key, config.data.reg_balance)
    return PreparedData(data, encoded_latents, encoded_texts, sample_embeddings, samples[2])


def _readable(samples: list[list[Sample]], origins: list[list[Path]], gone: dict[Path, str], sets: ScannedSets,
              console: Console) -> list[list[Sample]]:
    """`samples` less those of the image files that could not be read when their latents were encoded (at every
    resolution: a latent cached before is of an image the run no longer has), said in one line; `sets` marks them
    skipped, so that the run's summary, the LoRA's metadata and a checkpoint count the images that trained."""
    kept = [[sample for sample, path in zip(group, paths) if path not in gone] for group, paths in zip(samples, origins)]
    if not kept[0]:
        raise LowvramError(f"no image of the dataset could be read when caching: {next(iter(gone.values()))}")
    for report in sets.reports:
        report.records = [replace(record, usable=False, reason=f"unreadable since the scan: {gone[record.path]}")
                          if record.path in gone else record for record in report.records]
    sets.training = [record for record in sets.training if record.path not in gone]
    sets.held_out = [record for record in sets.held_out if record.path not in gone]
    console.print(f"[yellow]warning:[/] {len(gone)} image(s) left out of this run, unreadable since the scan: "
                  f"{next(iter(gone.values()))}", soft_wrap=True)
    return kept


def _say_in_memory(console: Console, reason: str) -> None:
    console.print(f"[yellow]warning:[/] {reason}; encoding into memory for this run instead (the next run encodes "
                  "again)", soft_wrap=True)


def _drawn_keys(samples: list[list[Sample]], config: RunConfig) -> set[str] | None:
    """The cache keys of what training can draw, where regularization images no epoch reaches (more of them than
    training samples: kohya's balance) need none; None where every sample may be drawn (a fractional repeat draws
    another share each epoch)."""
    epochs = Epochs(samples[0], samples[1], config.training.batch_size, config.training.seed, config.data.reg_balance)
    if not epochs.regularization_unused or epochs.fractional:
        return None
    drawn = [epochs.samples[i] for i in set(epochs.expanded(0))] + samples[2]  # (every epoch's, without fractions)
    return {key for sample in drawn for key in (*sample.latent_keys, *sample.text_keys)}
