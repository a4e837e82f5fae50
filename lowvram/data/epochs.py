"""Which samples each epoch trains, and in which batches, without torch: training's stream (`lowvram.data.dataset`)
draws its batches from it, and `lowvram plan` counts a run's steps with it before anything is cached.

Every usable image becomes a `Sample` (its cached latent variants and caption variants; none where only the run's
length is counted), expanded by its repeats; a fractional part (a OneTrainer balancing of 0.5 or 2.25) trains a
seeded share of the images of its folder each epoch, the same count every epoch. Regularization images are cycled
to match the training images' count per epoch (kohya's balance). Each epoch's batches come from one bucket each, in
an order fixed by the seed.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lowvram.data.augment import CaptionOptions
from lowvram.data.buckets import Buckets, Placement, bucket_batches, make_buckets
from lowvram.data.scan_report import per_epoch
from lowvram.resolve import ResolvedRun


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



class Epochs:
    def __init__(self, samples: list[Sample], reg_samples: list[Sample], batch_size: int, seed: int,
                 reg_balance: str = "kohya"):
        self.samples = samples + reg_samples
        self.training_count = len(samples)  # the samples past it are regularization images
        self.batch_size, self.seed = batch_size, seed
        self.balanced = reg_balance == "kohya"  # (else each by its own repeats: --reg-balance repeats)
        self.fractional = any(s.repeats % 1 for s in self.samples)

    def expanded(self, epoch: int) -> list[int]:
        """The sample indices one epoch trains, each as often as its repeats say: whole repeats always, and of each
        group with a fractional part, that share of its images (rounded), seeded by the epoch. Regularization
        images follow, as many as the training images (kohya's balance; per dataset of a kohya file with several),
        or each as its own repeats say (--reg-balance repeats)."""
        training = self._repeated(range(self.training_count), epoch)
        return training + [i for chosen, _ in self._regularization(training, epoch) for i in chosen]

    @property
    def regularization_per_epoch(self) -> int:
        """The regularization samples each epoch trains: as many as its training samples (kohya's balance)."""
        return len(self.expanded(0)) - len(self._repeated(range(self.training_count), 0))

    @property
    def regularization_unused(self) -> int:
        """Regularization samples (with repeats) that no epoch reaches: more of them than training samples."""
        return sum(unused for _, unused in self._regularization(self._repeated(range(self.training_count), 0), 0))

    def _regularization(self, training: list[int], epoch: int) -> list[tuple[list[int], int]]:
        """Per dataset: (the regularization samples of the epoch, how many of its samples with repeats it leaves
        out)."""
        images = range(self.training_count, len(self.samples))
        if not self.balanced:
            return [(self._repeated(images, epoch), 0)]
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

    def epoch_batches(self, epoch: int, shuffled: bool = True) -> list[list[int]]:
        """Sample indices of each batch of one epoch: one bucket per batch, seeded order (unshuffled: the same
        batches' sizes and buckets, counted without torch)."""
        expanded = self.expanded(epoch)
        buckets = [self.samples[i].bucket for i in expanded]
        sizes = [self.samples[i].batch_size or self.batch_size for i in expanded]
        return [[expanded[i] for i in batch] for batch in bucket_batches(buckets, sizes, self.seed, epoch, shuffled)]

    def batch_shapes(self) -> set[tuple[int, int]]:
        """The (pixel count, batch size) pairs of the batches: the shapes a compiled U-Net specializes on (a
        bucket's last batch may be smaller; a bucket and its transpose have the same count). The same every
        epoch, where only the order changes; with fractional repeats a bucket's last batch may be of any size."""
        shapes = {(self.samples[batch[0]].bucket[0] * self.samples[batch[0]].bucket[1], len(batch))
                  for batch in self.epoch_batches(0, shuffled=False)}
        if self.fractional:
            largest = max(s.batch_size or self.batch_size for s in self.samples)
            shapes |= {(pixels, size) for pixels, _ in shapes for size in range(1, largest + 1)}
        return shapes

    @property
    def batches_per_epoch(self) -> int:
        return len(self.epoch_batches(0, shuffled=False))


def placements(run: ResolvedRun, record, buckets: dict[int, Buckets], first_only: bool = False) -> Iterator[Placement]:
    """Where an image record trains at each resolution (its folder's own, or every one of the run's; the first
    only with `first_only`, as validation scores it); `buckets` keeps each resolution's buckets across calls."""
    resolutions = (record.resolution,) if record.resolution else run.resolutions
    for resolution in resolutions[:1] if first_only else resolutions:
        if resolution not in buckets:
            buckets[resolution] = make_buckets(run, resolution)
        yield buckets[resolution].place(record.width, record.height)


def regularization_balance(epochs: Epochs) -> str:
    """How an epoch pairs the regularization images with the training images, in a line (kohya's balance): of a
    run's epochs, or of a dry run's (`counted_epochs`)."""
    trained, unused = epochs.regularization_per_epoch, epochs.regularization_unused
    if not epochs.balanced:
        return (f"regularization: {trained} sample{'s' * (trained != 1)} each epoch, each as often as its own repeats "
                "say (--reg-balance repeats, OneTrainer's balancing)")
    training = len(epochs.expanded(0)) - trained
    offered = len(epochs._repeated(range(epochs.training_count, len(epochs.samples)), 0))
    samples = f"sample{'s' * (offered != 1)}"
    how = (f"{trained} of its {offered} {samples} train" if unused else
           f"its {offered} {samples} {'are' if offered != 1 else 'is'} repeated to {trained}" if trained > offered
           else f"its {offered} {samples} train")
    several = len({sample.dataset for sample in epochs.samples}) > 1  # each balanced within its [[datasets]] entry
    matched = "the training samples of its [[datasets]] entry" if several else f"the {training} training samples"
    # a class left out whole (kohya takes them in order: 1_cat's fill the epoch before 1_dog's come)
    drawn = {epochs.samples[i].group for i in epochs.expanded(0)[training:]}
    left = [f"'{group}'" for group in dict.fromkeys(epochs.samples[i].group for i in
                                                    range(epochs.training_count, len(epochs.samples)))
            if group not in drawn]
    whole = (f", none of {', '.join(left)}: the balance takes them in order, so fewer class images or more training "
             "repeats give each class its turn") if left else ""
    return (f"regularization: {how} each epoch, to match {matched} (kohya's balance)"
            + (f"; {unused} never train{whole}" if unused else ""))


def idle_regularization(epochs: Epochs, weight: float) -> str:
    """Why the class images train nothing, where they do not; "" where they do."""
    if not epochs.regularization_per_epoch:
        return ("none of them trains: an is_reg subset balances the training images of its own [[datasets]] entry "
                "alone, so put it in theirs")
    if not weight:
        return ("their loss weighs 0 (--prior-loss-weight), so they train nothing, and a step that draws only them "
                "is idle (AdamW's momentum still moves the weights): weigh them (kohya's 1), or leave them out")
    return ""


def counted_epochs(run: ResolvedRun, records: list, regularization: list) -> Epochs:
    """The run's epochs as training will draw them, from the image records it trains on and its regularization
    images alone (no cache, no model): a dry run's count of its steps."""
    buckets: dict[int, Buckets] = {}
    samples: list[list[Sample]] = [[], []]
    for part, images in enumerate([records, regularization]):
        for record in images:
            samples[part] += [Sample((), (), record.caption, placement.bucket, record.repeats, group=record.folder,
                                     batch_size=record.batch_size, dataset=record.dataset)
                              for placement in placements(run, record, buckets)]
    return Epochs(samples[0], samples[1], run.config.training.batch_size, run.config.training.seed,
                  run.config.data.reg_balance)
