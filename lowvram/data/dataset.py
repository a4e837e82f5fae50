"""The training stream: which cached entries form each batch, epoch after epoch.

Every usable image becomes a `Sample` (its cached latent variants and caption variants), expanded by its
repeats; a fractional part (a OneTrainer balancing of 0.5 or 2.25) trains a seeded share of the images of its
folder each epoch, the same count every epoch. Regularization images are cycled to match the training images'
count per epoch (kohya's balance). Each epoch's batches come from one bucket each, in an order fixed by the
seed; each draw picks one of the sample's variants. Entries are read from disk per batch, so RAM does not grow
with the dataset.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from lowvram.data.augment import CaptionOptions, trained_text, vary_tags
from lowvram.data.buckets import bucket_batches
from lowvram.data.cache import TensorStore
from lowvram.data.scan import per_epoch


@dataclass(frozen=True)
class Sample:
    latent_keys: tuple[str, ...]  # one per cached augmentation variant
    text_keys: tuple[str, ...]  # one per cached caption variant; empty when captions are encoded live
    caption: str
    bucket: tuple[int, int]
    repeats: float  # per epoch; a fractional part is a share of its group drawn each epoch
    weight: float = 1.0  # loss weight: --prior-loss-weight for regularization images, times its folder's
    kept_tags: tuple[int, int] | None = None  # its caption's own tags kept in place (front, end)
    more_captions: tuple[tuple[str, tuple[int, int] | None], ...] = ()  # other captions of it, and their kept tags
    group: str = ""  # its folder: the images a fractional repeat draws its share from
    caption_weights: tuple[float, ...] = ()  # the chance of its caption and each of more_captions; () = equal
    text_weights: tuple[float, ...] = ()  # the same per cached text embedding (text_keys)
    batch_size: int | None = None  # its folder's own batch size (None: the run's)
    captions: CaptionOptions | None = None  # its folder's own caption options (None: the run's)
    dataset: int | None = None  # its [[datasets]] entry in a kohya file of several (None: one dataset)


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


class TrainingData:
    def __init__(self, samples: list[Sample], reg_samples: list[Sample], batch_size: int, seed: int,
                 captions: CaptionOptions, latents: TensorStore, texts: TensorStore, empty_text_key: str | None):
        self.samples = samples + reg_samples
        self.training_count = len(samples)  # the samples past it are regularization images
        self.batch_size, self.seed, self.captions = batch_size, seed, captions
        self.latent_store, self.text_store, self.empty_text_key = latents, texts, empty_text_key
        self.fractional = any(s.repeats % 1 for s in self.samples)

    def expanded(self, epoch: int) -> list[int]:
        """The sample indices one epoch trains, each as often as its repeats say: whole repeats always, and of each
        group with a fractional part, that share of its images (rounded), seeded by the epoch. Regularization
        images follow, as many as the training images (kohya's balance; per dataset of a kohya file with several)."""
        training = self._repeated(range(self.training_count), epoch)
        return training + [i for chosen, _ in self._regularization(training, epoch) for i in chosen]

    @property
    def regularization_unused(self) -> int:
        """Regularization samples (with repeats) that no epoch reaches: more of them than training samples."""
        return sum(unused for _, unused in self._regularization(self._repeated(range(self.training_count), 0), 0))

    def _regularization(self, training: list[int], epoch: int) -> list[tuple[list[int], int]]:
        """Per dataset: (the regularization samples of the epoch, how many of its samples with repeats it leaves
        out)."""
        images = range(self.training_count, len(self.samples))
        out = []
        for dataset in dict.fromkeys(self.samples[i].dataset for i in images):
            mine = [i for i in images if self.samples[i].dataset == dataset]
            count = sum(1 for i in training if dataset is None or self.samples[i].dataset == dataset)
            chosen, offered = self._balanced(mine, count, epoch), len(self._repeated(mine, epoch))
            out.append((chosen, max(0, offered - len(chosen))))
        return out

    def _balanced(self, images: list[int], count: int, epoch: int) -> list[int]:
        """kohya's (DreamBoothDataset): each regularization image in turn with all its repeats until there are
        `count` (the last one may pass it), then, while short, one more of each in turn."""
        if not images or count <= 0:
            return []
        chosen: list[int] = []
        for _, run in itertools.groupby(self._repeated(images, epoch)):
            chosen += run
            if len(chosen) >= count:
                return chosen
        return chosen + [images[i % len(images)] for i in range(count - len(chosen))]

    def _repeated(self, indices: Sequence[int], epoch: int) -> list[int]:
        chosen = [i for i in indices for _ in range(int(self.samples[i].repeats))]
        groups: dict[tuple[str, float], list[int]] = {}
        for i in indices:
            if self.samples[i].repeats % 1:
                groups.setdefault((self.samples[i].group, self.samples[i].repeats), []).append(i)
        for (group, repeats), members in groups.items():
            share = per_epoch(len(members), repeats % 1)
            chosen += sorted(random.Random(f"{self.seed}/share/{epoch}/{group}/{repeats}").sample(members, share))
        return chosen

    @property
    def images_per_epoch(self) -> int:
        return len(self.expanded(0))  # the same count every epoch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Sample indices of each batch of one epoch: one bucket per batch, seeded order."""
        expanded = self.expanded(epoch)
        buckets = [self.samples[i].bucket for i in expanded]
        sizes = [self.samples[i].batch_size or self.batch_size for i in expanded]
        return [[expanded[i] for i in batch] for batch in bucket_batches(buckets, sizes, self.seed, epoch)]

    def batch_shapes(self) -> set[tuple[int, int]]:
        """The (pixel count, batch size) pairs of the batches: the shapes a compiled U-Net specializes on (a
        bucket's last batch may be smaller; a bucket and its transpose have the same count). The same every
        epoch, where only the order changes; with fractional repeats a bucket's last batch may be of any size."""
        shapes = {(self.samples[batch[0]].bucket[0] * self.samples[batch[0]].bucket[1], len(batch))
                  for batch in self.epoch_batches(0)}
        if self.fractional:
            largest = max(s.batch_size or self.batch_size for s in self.samples)
            shapes |= {(pixels, size) for pixels, _ in shapes for size in range(1, largest + 1)}
        return shapes

    @property
    def batches_per_epoch(self) -> int:
        return len(self.epoch_batches(0))

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
