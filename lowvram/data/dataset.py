"""The training images: a folder of images with same-named caption files, kohya-style repeat folders.

    dataset/
      10_sks dog/        every image here counts 10 times per epoch; "sks dog" is the caption for
        a.png a.txt      images without a caption file (through --caption-template)
      photo.jpg          images at the top level count once

A caption file's first non-empty line is the caption. A trigger word missing from a caption is prepended.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from lowvram.errors import LowvramError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIXES = (".txt", ".caption")
REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    repeats: int


@dataclass(frozen=True)
class Example:
    """One training example, ready for the encoders."""

    pixels: torch.Tensor  # (3, H, W) in [-1, 1]
    caption: str
    original_size: tuple[int, int]  # (height, width) before resizing: SDXL conditions on it
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image: SDXL conditions on it


def scan_images(root: Path, caption_extension: str = ".txt", caption_template: str = "{trigger}",
                trigger_word: str | None = None) -> tuple[list[ImageItem], list[str]]:
    """Find every image and its caption. Returns the items and notes worth telling the user."""
    root = Path(root)
    if not root.is_dir():
        raise LowvramError(f"--data: folder not found: {root}")
    notes: list[str] = []
    folders: list[tuple[Path, int, str]] = [(root, 1, root.name)]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        match = REPEAT_FOLDER.match(sub.name)
        if match:
            folders.append((sub, int(match.group(1)), match.group(2)))
        else:
            notes.append(f"skipped folder {sub.name}/: not named 'N_name' (N = repeats), as kohya's convention needs")
    order = [caption_extension] + [s for s in CAPTION_SUFFIXES if s != caption_extension]
    items = []
    for folder, repeats, folder_name in folders:
        if repeats == 0:
            notes.append(f"skipped folder {folder.name}/: 0 repeats")
            continue
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            caption = _read_caption(image, order)
            if caption is None:
                caption = caption_template.format(trigger=trigger_word or folder_name).strip()
            elif trigger_word and trigger_word not in caption:
                caption = f"{trigger_word}, {caption}"
            items.append(ImageItem(image, caption, repeats))
    if not items:
        raise LowvramError(f"--data: no images ({', '.join(IMAGE_SUFFIXES)}) in {root} or its N_name subfolders")
    return items, notes


def _read_caption(image: Path, suffixes: list[str]) -> str | None:
    for suffix in suffixes:
        path = image.with_suffix(suffix)
        if path.is_file():
            lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
            return next((line for line in lines if line), "")
    return None


def load_example(item: ImageItem, resolution: int) -> Example:
    """Read an image upright in RGB, scale its short side to `resolution` and centre-crop a square."""
    with Image.open(item.path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        im = im.convert("RGB")
        width, height = im.size
        scale = resolution / min(width, height)
        new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
        im = im.resize((new_w, new_h), Image.Resampling.LANCZOS)
        top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        array = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return Example(pixels, item.caption, (height, width), (top, left))


class TrainingData:
    """Items expanded by their repeats, served in a seeded order per epoch, batch by batch."""

    def __init__(self, items: list[ImageItem], resolution: int, batch_size: int, seed: int):
        self.items = items
        self.resolution = resolution
        self.batch_size = batch_size
        self.seed = seed
        self.expanded = [i for i, item in enumerate(items) for _ in range(item.repeats)]

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.expanded) / self.batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return [self.expanded[i] for i in torch.randperm(len(self.expanded), generator=generator).tolist()]

    def batches(self, start_epoch: int = 0):
        """Yield (epoch, batch) forever, epoch after epoch."""
        epoch = start_epoch
        while True:
            order = self.epoch_order(epoch)
            for start in range(0, len(order), self.batch_size):
                yield epoch, [load_example(self.items[i], self.resolution) for i in order[start : start + self.batch_size]]
            epoch += 1
