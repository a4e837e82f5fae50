"""A deliberately messy dataset, made with Pillow at test time (nothing binary is committed): good images a
tiny-model run at resolution 64 can train on, plus every kind of bad or odd file users' folders hold."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FOLDER = "2_messy"
GOOD = ("good_1.png", "good_2.jpg", "good_3.png", "good_4.jpg")
COLOURS = ((220, 40, 40), (40, 150, 60), (40, 60, 200), (230, 200, 40))


def drawn(size=(96, 96), colour=(220, 40, 40), background=(240, 240, 240)) -> Image.Image:
    """An RGB image with a filled circle: something a model can learn, and distinct per colour."""
    image = Image.new("RGB", size, background)
    w, h = size
    ImageDraw.Draw(image).ellipse((w * 0.2, h * 0.2, w * 0.8, h * 0.8), fill=colour)
    return image


def write_messy_dataset(root: Path) -> dict[str, str]:
    """Write the dataset under `root/2_messy/` and return relpath -> a word its reason or note must contain."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}

    def caption(stem: str, text: str | bytes) -> None:
        path = folder / f"{stem}.txt"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))

    for name, colour in zip(GOOD, COLOURS):
        drawn(colour=colour).save(folder / name, quality=95)
        caption(Path(name).stem, f"a circle in rgb{colour}\n")
        expect[f"{FOLDER}/{name}"] = ""  # usable, nothing to say

    # The same bytes again: usable, noted as a duplicate of the first.
    (folder / "good_1_copy.png").write_bytes((folder / "good_1.png").read_bytes())
    caption("good_1_copy", "the same circle")
    expect[f"{FOLDER}/good_1_copy.png"] = "duplicate of 2_messy/good_1.png, under another caption"

    # Converted, usable.
    Image.new("CMYK", (96, 96), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)  # pure red
    expect[f"{FOLDER}/cmyk.jpg"] = "CMYK"
    rgba = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 48, 96))  # left half opaque red, right half fully transparent
    rgba.save(folder / "rgba.png")
    expect[f"{FOLDER}/rgba.png"] = "composited"
    grey16 = np.full((96, 96), 128 * 257, dtype=np.uint16)  # mid grey: a clipping convert would make it white
    grey16[:, 48:] = 65535
    Image.fromarray(grey16).save(folder / "sixteen.png")
    expect[f"{FOLDER}/sixteen.png"] = "16-bit"
    sideways = Image.new("RGB", (120, 80), (220, 30, 30))
    sideways.paste((30, 30, 220), (60, 0, 120, 80))  # stored: red left, blue right; shown: red top, blue bottom
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    sideways.save(folder / "rotated.jpg", exif=exif, quality=95)
    expect[f"{FOLDER}/rotated.jpg"] = "EXIF"
    drawn().convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    expect[f"{FOLDER}/palette.png"] = "palette"
    drawn().convert("L").save(folder / "grey.png")
    expect[f"{FOLDER}/grey.png"] = "greyscale"
    drawn().convert("1").save(folder / "bitmap.png")
    expect[f"{FOLDER}/bitmap.png"] = "1-bit"

    # Caption trouble, image fine.
    drawn(colour=(200, 100, 0)).save(folder / "latin1.png")
    caption("latin1", "caf\xe9 au lait".encode("latin-1"))
    expect[f"{FOLDER}/latin1.png"] = "UTF-8"
    drawn(colour=(0, 100, 200)).save(folder / "empty_caption.png")
    caption("empty_caption", "\n   \n")
    expect[f"{FOLDER}/empty_caption.png"] = "empty caption"
    drawn(colour=(100, 0, 200)).save(folder / "both.png")
    caption("both", "from the txt")
    (folder / "both.caption").write_text("from the caption file", encoding="utf-8")
    expect[f"{FOLDER}/both.png"] = "both .txt and .caption"
    drawn(colour=(0, 200, 200)).save(folder / "uncaptioned.png")
    expect[f"{FOLDER}/uncaptioned.png"] = "no caption file"

    # Skipped, each with its reason.
    buffer = io.BytesIO()
    drawn(colour=(10, 200, 10)).save(buffer, "JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    expect[f"{FOLDER}/truncated.jpg"] = "truncated"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "tiny.png")
    expect[f"{FOLDER}/tiny.png"] = "too small"
    drawn(size=(8000, 200)).save(folder / "panorama.png")
    expect[f"{FOLDER}/panorama.png"] = "aspect ratio"
    (folder / "text.png").write_text("this is not an image, just a note saved with the wrong name\n")
    expect[f"{FOLDER}/text.png"] = "not an image"
    (folder / "empty.jpg").write_bytes(b"")
    expect[f"{FOLDER}/empty.jpg"] = "empty file"
    drawn().save(folder / "anim.gif")
    expect[f"{FOLDER}/anim.gif"] = "unsupported"
    drawn().save(folder / "really_a_gif.png", format="GIF")
    expect[f"{FOLDER}/really_a_gif.png"] = "GIF"

    # Passed over: silently (metadata, dotfiles) or with a folder note (unknown files, odd folders).
    (folder / "metadata.json").write_text("{}")
    (folder / ".DS_Store").write_bytes(b"\0\1\2")
    (folder / "._good_1.png").write_bytes(b"\0\5\26\7AppleDouble")
    (folder / "notes.docx").write_bytes(b"PK\3\4 not really a document")
    for macos in (Path(root) / "__MACOSX" / folder.name, folder / "__MACOSX"):  # as macOS zips a folder
        macos.mkdir(parents=True)
        (macos / "._good_1.png").write_bytes(b"\0\5\26\7AppleDouble")
    (Path(root) / "_latent_cache").mkdir()  # ai-toolkit's, in the dataset it trained
    (Path(root) / "_latent_cache" / "good_1_a1b2.safetensors").write_bytes(b"\0" * 16)
    (folder / "nested" / "deeper").mkdir(parents=True)  # a level too deep: not read, its images counted
    drawn().save(folder / "nested" / "ignored.png")
    drawn().save(folder / "nested" / "deeper" / "ignored.jpg")
    (folder / "nested" / "._ignored.png").write_bytes(b"\0\5\26\7AppleDouble")
    (Path(root) / "misc").mkdir(exist_ok=True)
    drawn().save(Path(root) / "misc" / "ignored.png")
    (Path(root) / "0_off").mkdir(exist_ok=True)
    drawn().save(Path(root) / "0_off" / "ignored.png")
    return expect
