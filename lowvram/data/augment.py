"""Augmentations that survive latent caching, and caption handling.

Random augmentations and pre-encoded latents don't mix by themselves: a cached latent is one fixed crop
of one fixed image. So each image gets a fixed number of *variants* (flipped/unflipped, different crops,
different colour jitter), each derived deterministically from the image's content hash and the variant
number, cached once and drawn among during training. Captions do the same with tag shuffling.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from PIL import Image, ImageEnhance

from lowvram.data.buckets import Placement


@dataclass(frozen=True)
class Variant:
    """One fixed augmentation of one image: everything needed to reproduce its pixels exactly."""

    flip: bool
    crop_top_left: tuple[int, int]  # (top, left) in the scaled image
    jitter: tuple[float, float, float]  # brightness, contrast, saturation factors (1.0 = unchanged)

    def as_key(self) -> dict:
        return {"flip": self.flip, "crop": list(self.crop_top_left), "jitter": [round(j, 6) for j in self.jitter]}


@dataclass(frozen=True)
class AugmentOptions:
    flip: bool = False
    crop: str = "center"  # or "random"
    color_jitter: float = 0.0  # max relative change of brightness, contrast and saturation
    variants: int = 1  # cached variants per image


def auto_variant_count(flip: bool, crop: str, color_jitter: float) -> int:
    """Enough variants to cover the augmentations asked for: 2 for flip alone, 4 with random crop or jitter."""
    if crop == "random" or color_jitter > 0:
        return 4
    return 2 if flip else 1


def _rng(*parts: object) -> random.Random:
    seed = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


def make_variant(image_hash: str, index: int, placement: Placement, options: AugmentOptions) -> Variant:
    """Variant `index` of an image: flip alternates (0: as is, 1: flipped, ...); crop and jitter are drawn
    from a generator seeded by the image's hash, so the same image always gets the same variants."""
    rng = _rng(image_hash, index)
    slack_x = placement.scaled[0] - placement.bucket[0]
    slack_y = placement.scaled[1] - placement.bucket[1]
    if options.crop == "random" and index > 0:
        crop = (rng.randint(0, slack_y), rng.randint(0, slack_x))
    else:
        crop = (slack_y // 2, slack_x // 2)
    jitter = (1.0, 1.0, 1.0)
    if options.color_jitter > 0 and index > 0:
        jitter = tuple(1.0 + rng.uniform(-options.color_jitter, options.color_jitter) for _ in range(3))
    return Variant(flip=options.flip and index % 2 == 1, crop_top_left=crop, jitter=jitter)


def apply_variant(image: Image.Image, placement: Placement, variant: Variant) -> Image.Image:
    """Scale to cover the bucket, crop, flip and jitter: the pixels the VAE encodes for this variant."""
    image = image.resize(placement.scaled, Image.Resampling.LANCZOS)
    top, left = variant.crop_top_left
    width, height = placement.bucket
    image = image.crop((left, top, left + width, top + height))
    if variant.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if image.mode == "RGB":
        for enhancer, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color),
                                    variant.jitter):
            if factor != 1.0:
                image = enhancer(image).enhance(factor)
    return image


# how `caption_variants` draws a caption's variants; raised where it draws otherwise, so that a checkpoint of the
# earlier drawing resumes with a note (its run's remaining steps train on other variants)
VARIANTS_DRAWN = 3  # (3: as many distinct orders as a caption has, 2026-12-05)
DROPPED_VARIANTS_DRAWN = 4  # under --tag-dropout (4: the tags each leaves are kohya's draws, each a share, 2026-12-06)


@dataclass(frozen=True)
class CaptionOptions:
    shuffle_tags: bool = False
    keep_tokens: int = 0  # leading comma-separated tags that stay in place when shuffling
    dropout: float = 0.0  # probability of training on the empty caption
    variants: int = 4  # cached variants per caption (used when tags are shuffled or dropped and embeddings cached)
    tag_dropout: float = 0.0  # probability of leaving out each tag past the first `keep_tokens`
    dropout_every: int | None = None  # every Nth epoch (counted from 1, as kohya counts) on the empty caption
    separator: str = ","  # what separates a caption's tags (kohya's caption_separator)
    secondary_separator: str = ""  # joins words into one tag, trained as `separator` (kohya's secondary_separator)

    @property
    def varies_tags(self) -> bool:
        return self.shuffle_tags or self.tag_dropout > 0


def vary_tags(caption: str, options: CaptionOptions, rng: random.Random, kept: tuple[int, int] | None = None
              ) -> str:
    """The tags (split at `options.separator`) past the first `keep_tokens` shuffled (kohya's shuffle_caption) and
    each left out with probability `tag_dropout` (its caption_tag_dropout_rate); the first ones stay in front;
    joined with ", " as kohya joins them. `kept`: the caption's own (front, end) tags that stay in place instead
    (written with --keep-tokens-separator, and already joined by the separator: `split_kept_tags`)."""
    head, tail, last = _parts(caption, options, kept)
    if options.shuffle_tags:
        rng.shuffle(tail)
    if options.tag_dropout:
        tail = [tag for tag in tail if rng.random() >= options.tag_dropout]
    return ", ".join(head + tail + last)


def _parts(caption: str, options: CaptionOptions, kept: tuple[int, int] | None) -> tuple[list, list, list]:
    """A caption's tags that stay in front, those varied, and those that stay at the end."""
    tags = [t.strip() for t in caption.split(options.separator) if t.strip()]
    front, end = kept if kept is not None else (options.keep_tokens, 0)
    return tags[:front], tags[front:len(tags) - end], tags[len(tags) - end:]


def caption_variants(caption: str, options: CaptionOptions, kept: tuple[int, int] | None = None) -> list[str]:
    """The fixed set of caption texts to cache for one caption (just itself when tags aren't varied), each varied:
    kohya shuffles and drops every time, so the caption as written is no more likely than any other draw (as one
    of the set, it trained a quarter of the steps, dropout's whole caption too)."""
    return list(weighted_caption_variants(caption, options, kept))


def weighted_caption_variants(caption: str, options: CaptionOptions, kept: tuple[int, int] | None = None
                              ) -> dict[str, float]:
    """`caption_variants`, each with the share of the steps it trains. Shuffled alone, every order is as likely: as
    many distinct ones as the caption has, alike. Under --tag-dropout, the tags each variant leaves are kohya's
    draws, each a share (distinct draws, a quarter of the steps each, left "alice, 1girl" at --tag-dropout 0.1
    without 1girl in half of them), a draw repeated shuffled anew where it can be."""
    if not options.varies_tags:
        return {trained_text(caption, options): 1.0}
    if not options.tag_dropout:
        variants: list[str] = []
        for draw in range(8 * options.variants):  # a short caption's draws repeat: on to its distinct orders
            if (text := vary_tags(caption, options, _rng(caption, draw), kept)) not in variants:
                variants.append(text)
            if len(variants) == options.variants:
                break
        return _shares({text: 1.0 for text in variants}, options)
    head, tail, last = _parts(caption, options, kept)
    draws: dict[tuple[str, ...], int] = {}  # the tags each draw leaves, by how many draws leave them
    for draw in range(options.variants):
        rng = _rng(caption, draw)
        left = tuple(tag for tag in tail if rng.random() >= options.tag_dropout)
        draws[left] = draws.get(left, 0) + 1
    if missing := set(tail) - set().union(*draws):  # a tag left out of every draw would never train with its image:
        first = next(iter(draws))  # the first draw keeps it too (only it: a whole caption put back its others too)
        draws = {tuple(tag for tag in tail if tag in first or tag in missing): 1, **draws, first: draws[first] - 1}
    variants = {}
    for left, count in draws.items():
        orders = _orders(list(left), count, _rng(caption, f"{left}")) if options.shuffle_tags else [list(left)]
        for order in orders:
            text = ", ".join(head + order + last)
            variants[text] = variants.get(text, 0.0) + count / len(orders)
    return _shares(variants, options)


def _orders(tags: list[str], count: int, rng: random.Random) -> list[list[str]]:
    """Up to `count` distinct shuffled orders of `tags`."""
    orders: list[list[str]] = []
    for _ in range(8 * count):
        rng.shuffle(tags)
        if tags not in orders:
            orders.append(list(tags))
        if len(orders) == count:
            break
    return orders


def _shares(variants: dict[str, float], options: CaptionOptions) -> dict[str, float]:
    """Each variant's text as the text encoder reads it, with its share of the steps."""
    shares: dict[str, float] = {}
    for text, weight in variants.items():
        trained = trained_text(text, options)
        shares[trained] = shares.get(trained, 0.0) + weight
    total = sum(shares.values())
    return {text: weight / total for text, weight in shares.items() if weight}


def trained_text(caption: str, options: CaptionOptions) -> str:
    """A caption's text as the text encoder reads it: its tags already varied, the secondary separator read as the
    caption separator (kohya replaces it after shuffling, so the words it joins move and drop together)."""
    return caption.replace(options.secondary_separator, options.separator) if options.secondary_separator else caption
