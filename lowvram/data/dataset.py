"""The training stream: which cached entries form each batch, epoch after epoch.

The epochs' batches are `lowvram.data.epochs`'; each draw here picks one of the sample's cached latent and caption
variants. Entries are read from disk per batch, so RAM does not grow with the dataset.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from lowvram.data.augment import CaptionOptions, trained_text, vary_tags
from lowvram.data.cache import TensorStore
from lowvram.data.epochs import Epochs, Sample


@dataclass
class Batch:
    latents: torch.Tensor
    time_ids: torch.Tensor  # SDXL size conditioning per sample
    weights: torch.Tensor
    captions: list[str]  # what to encode live when the text encoder trains
    mask: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # cached text embeddings
    pooled: torch.Tensor | None = None
    regularization: torch.Tensor | None = None  # (B,) bool: its regularization images; None when it holds none

    def __len__(self) -> int:
        return len(self.latents)

    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {name: getattr(self, name) for name in ("latents", "time_ids", "weights", "mask", "hidden", "pooled",
                                                       "regularization")}

    def pinned(self) -> Batch:
        """The batch in page-locked host memory, from which a copy to the GPU need not wait for the GPU."""
        return replace(self, **{k: t.pin_memory() for k, t in self.tensors().items() if t is not None})

    def to(self, device: torch.device) -> Batch:
        """On `device`; from pinned memory without blocking the host (the copy queues behind the GPU's work)."""
        return replace(self, **{k: t.to(device, non_blocking=t.is_pinned()) for k, t in self.tensors().items()
                                if t is not None})

    def split(self, parts: int) -> list[Batch]:
        """The batch in up to `parts` smaller ones (for running a batch that no longer fits in memory)."""
        if parts <= 1:
            return [self]
        size = max(1, -(-len(self) // parts))

        def cut(value, i):
            return None if value is None else value[i : i + size]

        def rows(i):  # read on the host, where the batch still is: no wait for the GPU
            part = cut(self.regularization, i)
            return part if part is not None and bool(part.any()) else None

        return [Batch(self.latents[i : i + size], self.time_ids[i : i + size], self.weights[i : i + size],
                      self.captions[i : i + size], cut(self.mask, i), cut(self.hidden, i), cut(self.pooled, i),
                      rows(i))
                for i in range(0, len(self), size)]


class TrainingData(Epochs):
    """The epochs' batches read from the caches, with each sample's caption and variants drawn per batch."""

    def __init__(self, samples: list[Sample], reg_samples: list[Sample], batch_size: int, seed: int,
                 captions: CaptionOptions, latents: TensorStore, texts: TensorStore, empty_text_key: str | None,
                 reg_balance: str = "kohya"):
        super().__init__(samples, reg_samples, batch_size, seed, reg_balance)
        self.captions = captions
        self.latent_store, self.text_store, self.empty_text_key = latents, texts, empty_text_key

    def batches(self, start_epoch: int = 0, start_batch: int = 0):
        """Yield (epoch, batch number, Batch, whether it is its epoch's last) forever, from a position (where a
        resumed run left off)."""
        epoch, first = start_epoch, start_batch
        while True:
            batches = self.epoch_batches(epoch)
            for number, indices in enumerate(batches):
                if number >= first:
                    batch = self.load(indices, random.Random(f"{self.seed}/{epoch}/{number}"), epoch)
                    yield epoch, number, batch, number == len(batches) - 1
            epoch, first = epoch + 1, 0

    def load(self, indices: list[int], rng: random.Random, epoch: int | None = None) -> Batch:
        """The batch of these samples; `epoch` (from 0) decides --caption-dropout-every's captionless epochs."""
        latents, time_ids, masks, hidden, pooled, captions = [], [], [], [], [], []
        for i in indices:
            sample = self.samples[i]
            options = sample.captions or self.captions
            every = options.dropout_every
            silent = bool(every and epoch is not None and (epoch + 1) % every == 0)
            entry = self.latent_store.load(rng.choice(sample.latent_keys))
            latents.append(entry["latent"])
            time_ids.append(entry["time_ids"])
            masks.append(entry.get("mask"))
            dropped = (options.dropout > 0 and rng.random() < options.dropout) or silent
            if sample.text_keys:
                text = self.text_store.load(self.empty_text_key if dropped else
                                            _draw(rng, sample.text_keys, sample.text_weights))
                hidden.append(text["hidden"])
                pooled.append(text.get("pooled"))
            caption, kept = sample.caption, sample.kept_tags
            if sample.more_captions:  # one of its caption lines (--caption-lines each)
                caption, kept = _draw(rng, ((caption, kept), *sample.more_captions), sample.caption_weights)
            if options.varies_tags:
                caption = vary_tags(caption, options, rng, kept)
            captions.append("" if dropped else trained_text(caption, options))
        return Batch(
            latents=torch.stack(latents),
            time_ids=torch.stack(time_ids).float(),
            weights=torch.tensor([self.samples[i].weight for i in indices]),
            captions=captions,
            mask=_stack_masks(masks, latents),
            hidden=torch.stack(hidden) if hidden else None,
            pooled=torch.stack(pooled) if pooled and pooled[0] is not None else None,
            regularization=_regularization_rows(indices, self.training_count),
        )


def _draw(rng: random.Random, choices, weights: tuple[float, ...]):
    """One of `choices`, by `weights` where they are given (uniform draws keep the stream they always had)."""
    return rng.choices(choices, weights)[0] if weights else rng.choice(choices)


def _regularization_rows(indices: list[int], training_count: int) -> torch.Tensor | None:
    rows = [i >= training_count for i in indices]
    return torch.tensor(rows) if any(rows) else None


def _stack_masks(masks: list[torch.Tensor | None], latents: list[torch.Tensor]) -> torch.Tensor | None:
    """Images without transparency train on every pixel (a mask of ones) beside masked ones."""
    if all(m is None for m in masks):
        return None
    return torch.stack([m if m is not None else torch.ones_like(lat[:1]) for m, lat in zip(masks, latents)])
