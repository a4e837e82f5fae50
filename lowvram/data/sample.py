"""The built-in sample dataset: a few drawn images with captions, written on demand (`--data sample`).

Small and deterministic, so the README's main command trains end to end with nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from lowvram.files import atomic_write, write_text

SAMPLE_TRIGGER = "lvshape"
SHAPES = (
    ("circle", "red", (220, 40, 40), "blue", (40, 60, 200)),
    ("square", "yellow", (230, 200, 40), "green", (40, 150, 60)),
    ("triangle", "white", (240, 240, 240), "black", (20, 20, 20)),
    ("circle", "orange", (240, 140, 30), "purple", (110, 40, 150)),
    ("square", "blue", (40, 60, 200), "white", (240, 240, 240)),
    ("triangle", "green", (40, 150, 60), "pink", (240, 160, 190)),
)


def write_sample_dataset(root: Path, size: int = 96) -> Path:
    """Write the sample dataset under `root` (a '5_lvshape' repeat folder) and return `root`."""
    folder = Path(root) / f"5_{SAMPLE_TRIGGER}"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (shape, colour, rgb, background, bg_rgb) in enumerate(SHAPES):
        image = Image.new("RGB", (size, size + 16 * (i % 2)), bg_rgb)  # some portrait images, to be cropped
        draw = ImageDraw.Draw(image)
        box = (size * 0.2, size * 0.2, size * 0.8, size * 0.8)
        if shape == "circle":
            draw.ellipse(box, fill=rgb)
        elif shape == "square":
            draw.rectangle(box, fill=rgb)
        else:
            draw.polygon([(size * 0.5, size * 0.15), (size * 0.85, size * 0.8), (size * 0.15, size * 0.8)], fill=rgb)
        stem = f"{i:02d}_{colour}_{shape}"
        # written as every file lowvram writes: a link of that name (in an output folder from elsewhere) is replaced,
        # not followed
        atomic_write(folder / f"{stem}.png", lambda tmp, image=image: image.save(tmp, format="PNG"))
        write_text(folder / f"{stem}.txt", f"{SAMPLE_TRIGGER}, a {colour} {shape} on a {background} background\n")
    return Path(root)
