"""Sample prompts with kohya's inline options, so a kohya prompt list works as it is:

    a portrait of ohwx, studio light --n blurry, lowres --w 512 --h 768 --s 28 --l 6.5 --d 1234

`--n` negative prompt, `--w`/`--h` width and height in pixels (multiples of 8), `--s` denoising steps, `--l`
guidance scale, `--d` seed. Anything not given takes the run's settings (--sample-steps, guidance 7, the run's
seed plus the prompt's index, the training resolution).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPTIONS = {"n": "negative prompt", "w": "width", "h": "height", "s": "steps", "l": "guidance scale", "d": "seed"}


@dataclass(frozen=True)
class SamplePrompt:
    text: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None

    def size(self, resolution: int) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width or resolution, self.height or resolution


def parse_prompt(line: str) -> SamplePrompt:
    """One prompt and its inline options; a ValueError names a bad or unknown option."""
    text, *parts = re.split(r"\s--(?=[A-Za-z]+\s)", " " + line.strip())
    values: dict = {"text": text.strip()}
    for part in parts:
        key, _, value = part.partition(" ")
        key = key.lower()
        value = value.strip()
        if key not in OPTIONS:
            raise ValueError(f"unknown option --{key} in '{line}'; the options are "
                             + ", ".join(f"--{k} ({v})" for k, v in OPTIONS.items()))
        try:
            if key == "n":
                values["negative"] = value
            elif key in ("w", "h"):
                pixels = int(value)
                if pixels < 32 or pixels % 8:
                    raise ValueError
                values["width" if key == "w" else "height"] = pixels
            elif key == "s":
                values["steps"] = int(value)
                if values["steps"] < 1:
                    raise ValueError
            elif key == "l":
                values["guidance"] = float(value)
            else:
                values["seed"] = int(value)
        except ValueError:
            need = "a multiple of 8, at least 32" if key in ("w", "h") else "a number"
            raise ValueError(f"--{key} ({OPTIONS[key]}) must be {need}, got '{value}' in '{line}'") from None
    if not values["text"]:
        raise ValueError(f"no prompt before the options in '{line}'")
    return SamplePrompt(**values)
