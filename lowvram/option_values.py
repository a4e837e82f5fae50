"""The text forms some options take, parsed: a save interval ('500', '2e'), --text-encoder-until ('25%'), a
background colour, a caption extension, kohya's width,height resolution, and a LoRA file with its weight
(FILE:WEIGHT). Plain functions below the config, so the config checker and the run read them alike."""

from __future__ import annotations

import math
import re
from pathlib import Path

from lowvram.errors import LowvramError


def parse_save_every(value: str | None) -> tuple[int, str] | None:
    """'500' / '500s' / '500 steps' -> (500, 'steps'); '2e' / '2 epochs' -> (2, 'epochs')."""
    if value is None:
        return None
    text = str(value).strip().lower().replace(" ", "")
    for suffix, unit in (("epochs", "epochs"), ("epoch", "epochs"), ("e", "epochs"),
                         ("steps", "steps"), ("step", "steps"), ("s", "steps"), ("", "steps")):
        if text.endswith(suffix):
            number = text[: len(text) - len(suffix)] if suffix else text
            if number.isdigit() and int(number) > 0:
                return int(number), unit
            break
    if is_time(text):  # (OneTrainer's units: 10 MINUTE)
        raise ValueError(f"'{value}' is a time; this counts steps ('500') or epochs ('2e')")
    raise ValueError(f"'{value}' is not a positive number of steps ('500') or epochs ('2e')")


def is_time(text: str) -> bool:
    """Whether an interval is written as a time: 10m, 30min, 2h, 1.5hours."""
    written = str(text).strip().lower().replace(" ", "")
    return bool(re.fullmatch(r"\d+(\.\d+)?(m|mins?|minutes?|h|hrs?|hours?)", written))


def parse_until(value: str | None) -> tuple[float, str] | None:
    """--text-encoder-until: '300' (steps), '2e' (epochs) or '25%' (of the run's steps, kohya_ss's percent)."""
    if value is None:
        return None
    text = str(value).strip().replace(" ", "")
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share < 100:
            raise ValueError(f"'{value}' is not a share of the run above 0 and under 100 % ('25%')")
        return share, "percent"
    return parse_save_every(value)


# px: a latent of 8 x 8; and past 4096 a sample (which the training resolution sizes) takes more memory than any card
# has, far past anything SD1.5 or SDXL trains at
MIN_RESOLUTION, MAX_RESOLUTION = 64, 4096


def parse_resolutions(text: str | None) -> tuple[int, ...]:
    """--extra-resolutions: '512,768' -> (512, 768); each a multiple of 8 from 64 to 8192, given once."""
    if not text:
        return ()
    try:
        sides = tuple(int(part) for part in str(text).replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"'{text}' is not a list of resolutions in pixels ('512,768')") from None
    wrong = [side for side in sides if not MIN_RESOLUTION <= side <= MAX_RESOLUTION or side % 8]
    if wrong:
        raise ValueError(f"{wrong[0]} must be a multiple of 8 from {MIN_RESOLUTION} to {MAX_RESOLUTION}")
    if len(set(sides)) < len(sides):
        raise ValueError(f"'{text}' names a resolution twice")
    return sides


def width_height(value: object) -> tuple[int, int] | None:
    """kohya's resolution as width and height ('512,768', or a dataset file's [512, 768]; '512x768' too); None for
    anything else."""
    parts = value.replace(" ", "").lower().replace("x", ",").split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or len(parts) != 2:
        return None
    try:
        width, height = (int(part) for part in parts)
    except (TypeError, ValueError, OverflowError):  # (a TOML's inf)
        return None
    return width, height


def area_side(width: int, height: int) -> int:
    """lowvram's --resolution for kohya's width,height with buckets: the side of the square of at least its pixel area,
    on the 8 px latent grid. Its buckets are kohya's for width x height but for a few near its area's edge."""
    side = math.isqrt(width * height - 1) + 1
    return -(-side // 8) * 8


COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (127, 127, 127), "gray": (127, 127, 127)}


def parse_colour(text: str) -> tuple[int, int, int]:
    """'white', '#RRGGBB' or 'R,G,B' (--background)."""
    text = text.strip().lower()
    if text in COLOURS:
        return COLOURS[text]
    if text.startswith("#") and len(text) == 7:
        return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(0 <= p <= 255 for p in parts):
        raise ValueError(f"'{text}' is not a colour: use white, black, grey, #RRGGBB or R,G,B")
    return tuple(parts)  # type: ignore[return-value]


# files of structured data, never one caption's text: gallery-dl's and taggers' per-image .json would train as raw JSON
DATA_SUFFIXES = (".json", ".jsonl", ".toml", ".yaml", ".yml", ".csv", ".parquet", ".npz", ".npy", ".safetensors")


def caption_extension_problem(extension: str) -> str | None:
    """Why `extension` names no caption file beside an image, or None. kohya reads any suffix (kohya_ss presets
    give '.txt-no' on purpose, to caption from folder names); lowvram reads only that one where it is not one of
    its own (.txt, .caption), which it reads both of."""
    if extension.lower() in DATA_SUFFIXES:
        return (f"'{extension}' files hold data, not a caption's text; captions are plain text files (.txt), or a "
                "metadata.jsonl's text column (file_name, text) for a whole folder")
    if extension.startswith(".") and len(extension) > 1 and not any(c in extension for c in "/\\ \t"):
        return None
    return f"'{extension}' is no file extension; give it with its dot, e.g. .txt"


FP16_LARGEST = 65504.0  # fp16's largest finite number: a LoRA saved in fp16 holds no alpha above it


def caption_template_problem(template: str | None) -> str | None:
    """What is wrong with a caption template (--caption-template, --class-prompt): a placeholder it has none of."""
    try:
        (template or "").format(trigger="", filename="")
    except (KeyError, IndexError, ValueError):
        return f"{template!r}: the placeholders are {{trigger}} and {{filename}}"
    return None


def parse_source(text: str, weight: float = 1.0) -> tuple[Path, float]:
    """FILE or FILE:WEIGHT, `weight` where none is given. An existing file is the file, whatever colons its name
    holds; so is text whose last ':' is a Windows drive's (C:\\x) or is followed by a path or a file name
    (dir:v2.safetensors), which is then not found. Otherwise what follows the last ':' is the weight: a
    LowvramError (one line) where it is not a finite number."""
    head, sep, tail = text.rpartition(":")
    if not sep or not head or Path(text).exists() or _is_path_part(head, tail):
        return Path(text), weight
    try:
        value = float(tail)
    except ValueError:
        raise LowvramError(f"weight '{tail}' of {head} is not a number; write FILE:WEIGHT, e.g. {head}:0.8") from None
    if not math.isfinite(value):
        raise LowvramError(f"weight '{tail}' of {head} is not a finite number; write FILE:WEIGHT, e.g. {head}:0.8")
    first_head, sep, first = head.rpartition(":")
    if sep and first_head and not Path(head).exists() and not _is_path_part(first_head, first):
        try:  # ComfyUI's strength_model and strength_clip, AUTOMATIC1111's <lora:name:te:unet>
            float(first)
        except ValueError:
            pass
        else:
            raise LowvramError(f"{first_head} has two weights ({first}:{tail}); one weight applies to the U-Net and "
                               f"the text encoders alike here: write {first_head}:{first}")
    return Path(head), value


def _is_path_part(head: str, tail: str) -> bool:
    """Whether `tail`, after the last ':', reads as the rest of a path rather than a weight: after a drive letter,
    with a folder separator, or ending in a file suffix such as .safetensors."""
    if (len(head) == 1 and head.isalpha()) or "/" in tail or "\\" in tail:
        return True
    suffix = Path(tail).suffix[1:]
    return suffix.isalpha()


def relocated_source(text: str, place) -> str:
    """FILE[:WEIGHT] with its file moved by `place` (a Path -> Path), the weight as written; text whose weight is no
    number stays as it is, for the config check to name."""
    try:
        path, _ = parse_source(text)
    except LowvramError:
        return text
    weighted = path != Path(text)  # (the weight is what follows the last ':'; the path may be written otherwise)
    return str(place(path)) + (":" + text.rpartition(":")[2] if weighted else "")


def positive(p: list[str], flag: str, value: float | None, *, allow_zero: bool = False) -> None:
    """Adds to `p` the problem of a --flag that must be over 0 (or 0 and over)."""
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        p.append(f"--{flag}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
