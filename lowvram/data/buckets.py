"""Aspect-ratio buckets, as kohya makes them: shapes of about the training resolution's pixel area in
steps of 64 px between a minimum and maximum side; each image goes to the bucket nearest its aspect
ratio, is scaled to cover it and cropped; every batch is drawn from one bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lowvram.resolve import ResolvedRun


@dataclass(frozen=True)
class Placement:
    """Where an image of a given size goes: its bucket, the size it is scaled to, and the crop slack."""

    bucket: tuple[int, int]  # (width, height) of the training shape
    scaled: tuple[int, int]  # (width, height) after scaling, covering the bucket
    upscale: float  # > 1 when the image is enlarged to fill the bucket

    @property
    def kept_fraction(self) -> float:
        """Share of the scaled image that survives the crop to the bucket."""
        return (self.bucket[0] * self.bucket[1]) / (self.scaled[0] * self.scaled[1])


@dataclass(frozen=True)
class Buckets:
    resolution: int
    min_side: int
    max_side: int
    step: int = 64
    no_upscale: bool = False

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """kohya's make_bucket_resolutions: (width, height) pairs with area <= resolution², sides on the step."""
        area = self.resolution * self.resolution
        side = int(math.sqrt(area) // self.step) * self.step
        shapes = {(side, side)}
        width = self.min_side
        while width <= self.max_side:
            height = min(self.max_side, int((area // width) // self.step) * self.step)
            if height >= self.min_side:
                shapes.add((width, height))
                shapes.add((height, width))
            width += self.step
        return sorted(shapes)

    def place(self, width: int, height: int) -> Placement:
        """The bucket nearest the image's aspect ratio (kohya: smallest |ratio difference|, the first in sorted
        order on a tie), the image scaled to cover it as kohya rounds it. With no_upscale, the bucket inside the
        image (shrunk to resolution² where it is larger), which it is scaled to cover: kohya crops a smaller image
        at its own size instead, which would leave too little of it where the bucket step is coarse."""
        ratio = width / height
        if self.no_upscale and width * height <= self.resolution**2:
            bucket = self._own_size_bucket(width, height)
        elif self.no_upscale:
            bucket = self._own_size_bucket(*self._shrunk(width, height))
        else:
            bucket = min(self.shapes, key=lambda s: abs(s[0] / s[1] - ratio))
        scale = max(bucket[0] / width, bucket[1] / height)
        scaled = (max(bucket[0], int(width * scale + 0.5)), max(bucket[1], int(height * scale + 0.5)))
        return Placement(bucket, scaled, scale)

    def _shrunk(self, width: int, height: int) -> tuple[int, int]:
        """kohya's bucket_no_upscale for an image larger than resolution²: shrunk to that area at its own aspect
        ratio, one side rounded to the step (the one that keeps the ratio closer), the other following it."""
        ratio = width / height
        resized_width = math.sqrt(self.resolution**2 * ratio)
        resized_height = self.resolution**2 / resized_width
        by_width = self._round(resized_width)
        by_height = self._round(resized_height)
        width_error = abs(by_width / self._round(by_width / ratio) - ratio)
        height_error = abs(self._round(by_height * ratio) / by_height - ratio)
        if width_error < height_error:
            return by_width, int(by_width / ratio + 0.5)
        return int(by_height * ratio + 0.5), by_height

    def _round(self, side: float) -> int:
        """kohya's round_to_steps."""
        whole = int(side + 0.5)
        return max(self.step, whole - whole % self.step)

    def _own_size_bucket(self, width: int, height: int) -> tuple[int, int]:
        """kohya's bucket_no_upscale: a shape inside the image itself, sides rounded down to the step."""
        return (max(self.step, width // self.step * self.step), max(self.step, height // self.step * self.step))


def default_buckets(resolution: int, step: int = 64, min_side: int | None = None, max_side: int | None = None,
                    no_upscale: bool = False) -> Buckets:
    """Sides from half to twice the resolution (kohya's 256..1024 at 512), never below one step; sides given off
    the step put on it as kohya's adjust_min_max_bucket_reso_by_steps does, the smallest down and the largest up
    (200 at step 64 made 392x640 buckets)."""
    step = min(step, resolution)
    low = (min_side or resolution // 2) // step * step
    high = -(-(max_side or resolution * 2) // step) * step
    return Buckets(resolution, max(step, low), max(step, high), step, no_upscale)


def bucket_batches(buckets_of: list[tuple[int, int]], batch_sizes: list[int], seed: int, epoch: int,
                   shuffled: bool = True) -> list[list[int]]:
    """One epoch's batches of sample indices: shuffled within each bucket, split into batches of one bucket
    each, then the batches shuffled. Each sample's batch size (kohya's datasets may differ) keeps those of another
    size in batches of their own. Deterministic for (seed, epoch). Unshuffled, the same batches' sizes and buckets
    in a fixed order, without torch: what counting them needs (scanning and planning import no torch)."""
    by_bucket: dict[tuple[tuple[int, int], int], list[int]] = {}
    for index, (bucket, size) in enumerate(zip(buckets_of, batch_sizes, strict=True)):
        by_bucket.setdefault((bucket, size), []).append(index)
    if not shuffled:
        return [members[i : i + size] for (_, size), members in sorted(by_bucket.items())
                for i in range(0, len(members), size)]
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    batches = []
    for bucket, size in sorted(by_bucket):
        members = by_bucket[bucket, size]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        batches += [order[i : i + size] for i in range(0, len(order), size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def make_buckets(run: ResolvedRun, resolution: int | None = None) -> Buckets:
    """The buckets of the run's resolution (or of `resolution`, one of --extra-resolutions)."""
    config, resolution = run.config, resolution or run.resolution
    step = config.data.bucket_step or run.family.bucket_step
    if not config.data.bucket:
        return Buckets(resolution, resolution, resolution, min(step, resolution))
    return default_buckets(resolution, step, config.data.min_bucket_side, config.data.max_bucket_side,
                           config.data.bucket_no_upscale)
