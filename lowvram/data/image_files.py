"""What an image file is, read once: its size, mode, orientation and whether it decodes, for the scan and its
index; and the conversion of a decoded image to the 8-bit RGB that training reads. Only the formats lowvram
trains from are decoded (PIL_FORMATS); another format behind a supported name is named, not read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from stat import S_ISREG

import numpy as np
from PIL import Image

from lowvram.config import IMAGE_FORMATS, IMAGE_SUFFIXES

PIL_FORMATS = tuple(dict.fromkeys(formats[0] for formats in IMAGE_FORMATS.values()))  # Pillow decoders tried
UNSUPPORTED_SUFFIXES = (".gif", ".heic", ".heif", ".jxl", ".jp2", ".psd", ".svg",
                        ".ico", ".tga", ".exr", ".dng", ".raw", ".cr2", ".nef", ".arw")
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SUPPORTED = " ".join(IMAGE_SUFFIXES)


def file_facts(path: Path, max_pixels: int, cached: dict | None, mask: bool = False) -> dict:
    """What the file is, from the index when its size, mtime and ctime are unchanged, else from reading it once;
    for a `mask`, also its lightest grey level. (The ctime too: `cp -p`, rsync and unzip give a replaced file its
    source's mtime, and an image of the same pixel count, uncompressed, has the same size.)"""
    try:
        stat = path.stat()
        if not S_ISREG(stat.st_mode):  # a named pipe or a device: reading it waits for ever
            return _blank(size=-1, error="not a regular file (a named pipe or a device): not read")
        if _still_valid(cached, stat, max_pixels):
            return cached
        data = path.read_bytes()
    except OSError as exc:  # kept out of the index (size -1): a chmod does not change the mtime
        if path.is_symlink() and not path.exists():  # (a copy's link to where the image was)
            return _blank(size=-1, error=f"a link to {os.readlink(path)}, which is not there: link it again, or "
                                         "delete the link")
        return _blank(size=-1, error=f"unreadable: {exc.strerror or exc}; check the file and its permissions")
    return {**_probe(data, max_pixels, mask), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns}


def _still_valid(cached, stat, max_pixels: int) -> bool:
    """Same size, mtime and ctime, and decoded last time (or never to be: an error, or still over max_pixels)."""
    try:
        return (cached.keys() >= _blank().keys() and cached["size"] == stat.st_size
                and cached["mtime_ns"] == stat.st_mtime_ns and cached["ctime_ns"] == stat.st_ctime_ns
                and bool(cached["decoded"] or cached["error"] or cached["width"] * cached["height"] > max_pixels))
    except (AttributeError, KeyError, TypeError):
        return False


def _blank(**values) -> dict:
    facts = {"size": 0, "mtime_ns": 0, "ctime_ns": 0, "sha256": "", "width": 0, "height": 0, "mode": "", "format": "",
             "has_alpha": False, "transposed": False, "decoded": False, "error": None, "lightest": None,
             "opaquest": None}
    return {**facts, **values}


def _probe(data: bytes, max_pixels: int, mask: bool = False) -> dict:
    """Header facts, then a full decode unless over max_pixels: truncated files only fail in load(). A `mask`'s
    lightest grey level, as training reads the mask; an image's most opaque alpha level where it has transparency
    (0: see-through everywhere)."""
    facts = _blank(sha256=hashlib.sha256(data).hexdigest())
    if not data:
        return {**facts, "error": "empty file: 0 bytes; re-export or delete it"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides, below
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
                orientation = _orientation(im)
                width, height = im.size[::-1] if orientation in (5, 6, 7, 8) else im.size
                facts.update(width=width, height=height, mode=im.mode, format=im.format or "",
                             has_alpha=has_alpha(im), transposed=orientation in (2, 3, 4, 5, 6, 7, 8),
                             # (a phone's MPO JPEG holds a depth map or preview beside its photo: no frames)
                             frames=1 if im.format == "MPO" else getattr(im, "n_frames", 1))
                if width * height <= max_pixels:
                    if im.format in ("JPEG", "MPO"):  # 1/8 scale still reads every byte: truncation shows, in 1/64 RAM
                        im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                    im.load()
                    facts["decoded"] = True
                    if mask:
                        facts["lightest"] = to_grey(im).getextrema()[1]
                    elif facts["has_alpha"] and (alpha := to_rgb(im, (0, 0, 0), alpha_mask=True)[1]) is not None:
                        facts["opaquest"] = alpha.getextrema()[1]
    except Image.DecompressionBombError as exc:
        size = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow says the image's pixels only in its message
        facts["error"] = (f"too large: {_pixels(int(size.group(1))) + ', ' if size else ''}over Pillow's "
                          f"decompression-bomb limit of {_pixels(2 * (Image.MAX_IMAGE_PIXELS or 0))}; downscale it")
    except Image.UnidentifiedImageError:
        facts["error"] = _unidentified(data)
    except Exception as exc:  # noqa: BLE001 -- truncated, corrupt, odd: one bad file never ends the scan
        message = str(exc) or type(exc).__name__
        kind = "truncated" if "truncated" in message else "unreadable"
        facts["error"] = f"{kind}: {message}; re-download or re-export it"
    return facts


def _pixels(count: int) -> str:
    return f"{count / 1e6:.0f} megapixels" if count >= 10**7 else f"{count} pixels"


# the brands of an ISO media file (its bytes 8-12, after "ftyp") that name a HEIF image: a phone's photo
HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC", b"mif1": "HEIF",
               b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}

# (an iPhone's photos are HEIC unless set otherwise: a Mac's own tool first)
HEIC_CONVERTERS = ("on a Mac: sips -s format jpeg IMG.HEIC --out IMG.jpg; on Linux: heif-convert; or set the phone to "
                   "its most compatible format")


def _unidentified(data: bytes) -> str:
    """An image of another format behind a supported name, or not an image at all."""
    actual = _format_of(data)
    if actual:
        return f"unsupported format: it is {a_or_an(actual)} {actual} file; convert it to one of {SUPPORTED}"
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:  # (Pillow has no decoder: its bytes said, unread)
        size = int.from_bytes(data[:4], "big")  # the ftyp box: its brands, an AVIF's among them after mif1
        if (b"avif" in data[8:size] or HEIF_BRANDS[data[8:12]] == "AVIF") and _reads_avif():
            return "unreadable: an AVIF image whose content its decoder does not take; re-download or re-export it"
        if b"avif" in data[8:size] or HEIF_BRANDS[data[8:12]] == "AVIF":
            return (f"unsupported format: it is an AVIF image, which this Pillow ({Image.__version__}) cannot read: "
                    f"pip install -U pillow (11.3 or later reads it), or convert it to one of {SUPPORTED}")
        return (f"unsupported format: it is a {HEIF_BRANDS[data[8:12]]} photo (a phone's), whatever its name says; "
                f"convert it to one of {SUPPORTED} ({HEIC_CONVERTERS})")
    return f"not an image: no image decoder recognises its content ({data[:12]!r}...); delete or re-export it"


def _reads_avif() -> bool:
    """Whether this Pillow decodes AVIF (its wheels do from 11.3; an older one knows no such feature)."""
    from PIL import features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(features.check("avif"))
        except (ValueError, KeyError):
            return False


def _format_of(data: bytes) -> str | None:
    """The format Pillow reads `data` as, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.format
    except Exception:  # noqa: BLE001
        return None


def a_or_an(name: str) -> str:
    """The article before a format's name as it is read out: an AVIF, an MPO (letter by letter), a PNG, a HEIC."""
    return "an" if name[:1] in "AEIOU" or name == "MPO" else "a"


def unsupported_suffix_reason(path: Path) -> str:
    """Why a file of an unsupported suffix (.heic, .gif) is skipped: its format, or a supported image behind a
    phone's name (a JPEG renamed .heic, as a share sheet or a student does), which a rename makes usable."""
    head = b""
    if path.suffix.lower() in (".heic", ".heif"):  # (read at every scan: the index keeps no skipped file)
        with contextlib.suppress(OSError), open(path, "rb") as file:
            head = file.read(1 << 16)  # (its header: enough to tell the format)
    actual = _format_of(head) if head else None
    supported = next((suffix for suffix, formats in IMAGE_FORMATS.items() if actual in formats), None)
    if supported:
        return (f"unsupported name: it is {a_or_an(actual)} {actual} file named {path.suffix}; rename it "
                f"{path.stem}{supported}")
    how = f" ({HEIC_CONVERTERS})" if path.suffix.lower() in (".heic", ".heif") else ""
    return f"unsupported format: {path.suffix.lower()} files can't be read; convert it to one of {SUPPORTED}{how}"


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 -- malformed EXIF: shown as stored, as most viewers do
        return 1


def has_alpha(im: Image.Image) -> bool:
    return im.mode in ALPHA_MODES or im.info.get("transparency") is not None


def to_rgb(im: Image.Image, background: tuple[int, int, int], alpha_mask: bool) -> tuple[Image.Image, Image.Image | None]:
    if has_alpha(im) and im.mode not in HIGH_BIT_MODES:
        rgba = im.convert("RGBA")
        return _composited(rgba.convert("RGB"), rgba.getchannel("A"), background, alpha_mask)
    if im.mode in HIGH_BIT_MODES:
        array = np.asarray(im).astype(np.float32)
        grey = _eight_bit(im, array)
        transparent = im.info.get("transparency")
        if isinstance(transparent, (int, float)):  # a 16-bit grey PNG's tRNS: one grey level is see-through
            alpha = Image.fromarray(np.where(array == transparent, 0, 255).astype(np.uint8))
            return _composited(Image.fromarray(grey).convert("RGB"), alpha, background, alpha_mask)
        return Image.fromarray(grey).convert("RGB"), None
    return im.convert("RGB"), None


def to_grey(im: Image.Image) -> Image.Image:
    """A mask's grey levels in 8 bits: a 16-bit or float one scaled as to_rgb scales images (white stays white)."""
    if im.mode in HIGH_BIT_MODES:
        return Image.fromarray(_eight_bit(im, np.asarray(im).astype(np.float32)))
    return im.convert("L")


def _eight_bit(im: Image.Image, array: np.ndarray) -> np.ndarray:
    """A high-bit grey image's levels in 0-255 (Pillow's own convert clips them at 255 instead of scaling)."""
    peak = float(array.max()) if array.size else 0.0  # 'I' and 'F' carry no bit depth: guess it from the peak
    top = 65535.0 if im.mode.startswith("I;16") or peak > 255 else 1.0 if im.mode == "F" and peak <= 1 else 255.0
    return np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)


def _composited(rgb: Image.Image, alpha: Image.Image, background: tuple[int, int, int], alpha_mask: bool
                ) -> tuple[Image.Image, Image.Image | None]:
    """The pixels on the background colour, or as they are with the alpha as the loss mask (--alpha-mask)."""
    if alpha_mask:
        return rgb, alpha
    out = Image.new("RGB", rgb.size, tuple(background))
    out.paste(rgb, mask=alpha)
    return out, None
