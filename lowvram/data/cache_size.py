"""What a run's caches take on disk: each entry's bytes (as the cache writes them), and a dry run's count of the
entries from the scan alone (`lowvram plan`), before any model is loaded: a small disk (a laptop's, Colab's) is
known short before the evening, not at the caching."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lowvram.data.augment import AugmentOptions, make_variant, trained_text, weighted_caption_variants
from lowvram.data.buckets import Buckets
from lowvram.data.check import ScannedSets, folder_config, folder_options
from lowvram.data.epochs import placements
from lowvram.files import KEPT_FREE, free_bytes, human_size
from lowvram.resolve import ResolvedRun

ENTRY_HEADER = 256  # a safetensors entry's header and metadata, about


def latent_entry_bytes(channels: int, dtype_bytes: int, bucket: tuple[int, int], downscale: int, mask: bool) -> int:
    """A latent entry's tensor bytes: the VAE's latent at its bucket's size, and its loss mask (fp32, one channel)."""
    return (channels * dtype_bytes + 4 * mask) * (bucket[0] // downscale) * (bucket[1] // downscale)


def text_entry_bytes(tokens: int, width: int, pooled_width: int, dtype_bytes: int) -> int:
    """A caption's entry: every text encoder's hidden states over `tokens`, and the pooled embedding."""
    return (tokens * width + pooled_width) * dtype_bytes


def holds_mask(options, record) -> bool:
    """Whether an image's latent entry holds a loss mask (as open_training_image gives one)."""
    return bool(options.masked_loss and record.mask or options.alpha_mask and record.has_alpha)


@dataclass(frozen=True)
class CacheSize:
    latents: int
    texts: int  # 0 where the text encoders train (captions are read each step)
    bytes: int


def planned_cache_size(run: ResolvedRun, sets: ScannedSets) -> CacheSize:
    """The entries a run of `sets` caches, counted as its caching phase will (every latent variant at each of its
    resolutions, every caption variant once), with the family's shipped VAE and text encoder shapes."""
    config, family = run.config, run.family
    options_of = cache(lambda settings: folder_options(folder_config(config, settings)))
    vae = _config(family, "vae")
    downscale, channels = 2 ** (len(vae["block_out_channels"]) - 1), vae["latent_channels"]
    vae_bytes = 4 if run.vae_fp32 else run.compute_bytes
    latents: dict[tuple, int] = {}
    texts: set[str] = set()
    buckets: dict[int, Buckets] = {}
    for part, records in enumerate([sets.training, sets.regularization, sets.held_out]):
        validating = part == 2
        for record in records:
            options, augment, captions = options_of(record.settings)
            for placement in placements(run, record, buckets, first_only=validating):
                for number in range(1 if validating else augment.variants):
                    # keyed as the cache keys it (`latent_key`): variants alike are one entry (random crops of an
                    # image that fills its bucket), an image's masked and unmasked copies two
                    variant = make_variant(record.sha256, number, placement, AugmentOptions() if validating else augment)
                    mask = record.mask_sha256 if options.masked_loss and record.mask else ""
                    key = (record.sha256 or record.path, placement, repr(variant.as_key()), mask, options.background,
                           options.alpha_mask)
                    latents[key] = latent_entry_bytes(channels, vae_bytes, placement.bucket, downscale,
                                                      holds_mask(options, record))
            if validating:
                texts.add(trained_text(record.caption, captions))
                continue
            for text, kept in [(record.caption, record.kept_tags), *record.more_captions]:
                texts.update(weighted_caption_variants(text, captions, kept))
            if captions.dropout or captions.dropout_every:
                texts.add("")
    if config.network.train_text_encoder:
        texts = set()
    encoders = [_config(family, spec.component) for spec in family.text_encoders]
    width = sum(encoder["hidden_size"] for encoder in encoders)
    pooled = sum(encoder["projection_dim"] for spec, encoder in zip(family.text_encoders, encoders) if spec.pooled)
    text = text_entry_bytes(run.text_reading.max_tokens + 2, width, pooled, run.compute_bytes)  # BOS, EOS
    total = sum(latents.values()) + len(texts) * text + ENTRY_HEADER * (len(latents) + len(texts))
    return CacheSize(len(latents), len(texts), total)


def _config(family, component: str) -> dict:
    return json.loads((family.config_dir / component / "config.json").read_text())


def cache_room_problem(folder: Path, needed: int) -> str | None:
    """Why a cache of `needed` more bytes will not fit the disk of `folder` (with 10% to spare for headers and other
    writers, and what every write leaves free); None when it will. (lowvram plan says it before a run finds it.)"""
    free = free_bytes(folder)
    required = int(needed * 1.1) + KEPT_FREE
    if not needed or required <= free:
        return None
    # the total with the margins: `needed` alone may be below `free`, which reads as no reason to refuse
    return (f"--cache-dir: {folder} has {human_size(free)} free but the cache needs {human_size(required)} "
            f"({human_size(needed)} of entries, 10% to spare and the {human_size(KEPT_FREE)} every write leaves "
            f"free); free {human_size(_rounded_up(required - free))} more or pass another --cache-dir")


def _rounded_up(size: int) -> int:
    """`size` a little over, so that the three digits human_size shows are never less than it."""
    return math.ceil(size * 1.01 / 1024) * 1024
