"""Sample prompts with kohya's inline options, so a kohya prompt list works as it is:

    a portrait of ohwx, studio light --n blurry, lowres --w 512 --h 768 --s 28 --l 6.5 --d 1234 --ss euler_a

`--n` negative prompt, `--w`/`--h` width and height in pixels (multiples of 8), `--s` denoising steps, `--l`
guidance scale, `--d` seed, `--ss` sampler. Anything not given takes the run's settings (--sample-steps,
guidance 7, the run's seed plus the prompt's index, the training resolution, --sample-sampler).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowvram.errors import shell_line
from lowvram.files import text_of
from lowvram.option_values import MAX_RESOLUTION
from lowvram.samplers import sampler_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# scripts written without spaces between words: kana (and half-width katakana) and CJK ideographs (a regex range)
UNSPACED = "\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f"
TRIGGER_PLACEHOLDER = "[trigger]"  # ai-toolkit's, in captions and sample prompts: its trigger_word goes there
MAX_STEPS = 1000  # the timesteps SD1.5 and SDXL were trained with: no sampler takes more
MAX_SEED = 2**32 - 1  # AUTOMATIC1111's and kohya's seeds; -1 draws one (where a random seed has a place)
OPTIONS = {"n": "negative prompt", "w": "width", "h": "height", "s": "steps", "l": "guidance scale", "d": "seed",
           "ss": "sampler"}
# the keys of a kohya .toml/.json prompt file -> the inline option that says the same
FILE_KEYS = {"negative_prompt": "n", "width": "w", "height": "h", "sample_steps": "s", "scale": "l", "seed": "d",
             "sample_sampler": "ss"}
# a OneTrainer sample definition's keys -> the inline option that says the same (its seed and noise scheduler apart)
ONETRAINER_KEYS = {"negative_prompt": "n", "width": "w", "height": "h", "diffusion_steps": "s", "cfg_scale": "l"}
ONETRAINER_OWN = {"diffusion_steps", "cfg_scale", "noise_scheduler", "random_seed", "enabled"}  # none are kohya's
# kohya's inline options for other model families or tools, which no SD1.5/SDXL sample here has a use for: a kohya
# prompt list holding them samples all the same, without them, and says so (kohya skips any option it does not know)
ELSEWHERE = {"g": "Flux's guidance", "cn": "ControlNet image", "am": "additional networks' weights",
             "ctr": "Lumina's CFG truncation", "rcfg": "Lumina's CFG renormalisation", "fs": "SD3's flow shift",
             "i": "init image"}


@dataclass(frozen=True)
class SamplePrompt:
    text: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    sampler: str | None = None  # None: the model's own

    def size(self, resolution: int) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width or resolution, self.height or resolution


def parse_prompt(line: str, sampler: str | None = None) -> SamplePrompt:
    """One prompt and its inline options (`sampler`: the run's, where the line names none); a ValueError names a
    bad or unknown option."""
    text, *parts = _option_parts(line)
    values: dict = {"text": literal_dashes(text.strip()), "sampler": sampler}
    for part in parts:
        key, _, value = part.partition(" ")
        key = key.lower()
        value = value.strip()
        if key in ELSEWHERE or (key in OPTIONS and not value):  # (a bare option at the line's end: kohya drops it)
            continue
        if key not in OPTIONS:
            raise ValueError(f"unknown option --{key} in '{line}'; the options are "
                             + ", ".join(f"--{k} ({v})" for k, v in OPTIONS.items()))
        if key == "ss":
            try:
                values["sampler"] = sampler_name(value)
            except ValueError as exc:
                raise ValueError(f"--ss (sampler): {exc} in '{line}'") from None
            continue
        try:
            if key == "n":
                values["negative"] = literal_dashes(value)
            elif key in ("w", "h"):
                pixels = int(value) // 8 * 8  # down to a multiple of 8, as kohya's sampling rounds it
                if not 32 <= pixels <= MAX_RESOLUTION:  # (a shared file may ask any size)
                    raise ValueError
                values["width" if key == "w" else "height"] = pixels
            elif key == "s":
                values["steps"] = int(value)
                if not 1 <= values["steps"] <= MAX_STEPS:
                    raise ValueError
            elif key == "l":
                values["guidance"] = float(value)
                if not math.isfinite(values["guidance"]):
                    raise ValueError
            else:
                values["seed"] = int(value)
                if values["seed"] != -1 and not 0 <= values["seed"] <= MAX_SEED:
                    raise ValueError
        except ValueError:
            side = f"a whole number from 32 to {MAX_RESOLUTION} (rounded down to a multiple of 8)"
            need = {"w": side, "h": side, "s": f"a whole number from 1 to {MAX_STEPS}", "l": "a finite number",
                    "d": f"a whole number from 0 to {MAX_SEED}, or -1 for a random one"}[key]
            raise ValueError(f"--{key} ({OPTIONS[key]}) must be {need}, got '{value}' in '{line}'") from None
    if not values["text"]:
        raise ValueError(f"no prompt before the options in '{line}'")
    return SamplePrompt(**values)


def _option_parts(line: str) -> list[str]:
    """The prompt's text, then each inline option as `key value`; one of ours with nothing after it ends the line
    (a hand-edited `... --n`: kohya drops it, it was trained as the prompt's text)."""
    bare = "|".join(OPTIONS)
    return re.split(rf"\s--(?=[A-Za-z]+\s|(?:{bare})$)", " " + line.strip(), flags=re.IGNORECASE)  # (--N too)


def with_trigger(line: str, trigger: str | None, separator: str = ",") -> str:
    """ai-toolkit's placeholder in `line` replaced by the trigger word; without one, left out, a tag of its own with
    its separator ("[trigger], red style" trains "red style", not ", red style")."""
    if trigger:
        return line.replace(TRIGGER_PLACEHOLDER, trigger)
    separator = separator.strip() or ","
    tags = line.split(separator)
    line = separator.join(tag for tag in tags if tag.strip() != TRIGGER_PLACEHOLDER) if len(tags) > 1 else line
    return re.sub(rf"\s*{re.escape(TRIGGER_PLACEHOLDER)}", "", line).strip()


def line_with_trigger(line: str, trigger: str | None) -> str:
    """A prompt line's ai-toolkit placeholder filled with the trigger word, or left out (`with_trigger`) of its
    text and its negative prompt, each read apart from the other options (out of the whole line, "[trigger],
    portrait --n [trigger], blurry" read its --n as text)."""
    if trigger or TRIGGER_PLACEHOLDER not in line:
        return line.replace(TRIGGER_PLACEHOLDER, trigger or "")
    text, *parts = _option_parts(line)
    parts = [f"{part[:2]}{with_trigger(part[2:], None)}" if part[:2].lower() == "n " else part for part in parts]
    return " --".join([with_trigger(text, None), *parts])


def lora_tags(line: str) -> list[str]:
    """AUTOMATIC1111's LoRA tags in a prompt line's text (its negative prompt's are words in AUTOMATIC1111 too)."""
    return LORA_TAG.findall(_option_parts(line)[0])


def without_lora_tags(line: str) -> str:
    """A training sample's prompt line without AUTOMATIC1111's LoRA tags in its text (<lora:mychar:0.8>, a prompt
    copied from a Civitai page): every sample is drawn with the LoRA being trained, and a tag would be drawn as
    words. A line of tags alone stays as it is, for the options' check to refuse."""
    text, *parts = _option_parts(line)
    if not LORA_TAG.search(text) or not LORA_TAG.sub("", text).strip(" ,"):
        return line
    text = re.sub(r",(\s*,)+", ",", re.sub(r"\s*" + LORA_TAG.pattern, "", text, flags=re.IGNORECASE))
    return " --".join([text.strip(" ,"), *parts])


def options_elsewhere(line: str) -> list[str]:
    """The kohya options of a prompt line that samples here leave out, each as `--key (what it is)`."""
    keys = [part.partition(" ")[0].lower() for part in _option_parts(line)[1:]]
    return [f"--{key} ({ELSEWHERE[key]})" for key in dict.fromkeys(keys) if key in ELSEWHERE]


def is_prompt_list(doc: Any) -> bool:
    """Whether a JSON document is a list of sample prompts (OneTrainer's samples.json, kohya's prompt JSON): its
    entries prompts or objects with a prompt, none with a concept's folder."""
    return isinstance(doc, list) and bool(doc) and all(
        isinstance(entry, str) or (isinstance(entry, dict) and "prompt" in entry and "path" not in entry)
        for entry in doc)


def prompt_list_problem(path: Path, flag: str) -> str:
    return (f"{flag}: {path} is a list of sample prompts (OneTrainer's samples.json, kohya's prompt file), no "
            f"{'dataset' if flag == '--data' else 'training config'}; give it as --sample-prompt-file {path}")


def read_prompt_file(path: Path) -> tuple[list[str], list[str]]:
    """The prompts of a kohya sample-prompt file, as lines with inline options: a .txt file's lines (# comments
    skipped), each [[prompt.subset]] of a .toml file over its [prompt] defaults, or a .json list of prompts or
    of objects with kohya's keys (or OneTrainer's, as its samples.json holds them), or SimpleTuner's prompt library
    (a JSON object of names and prompts). Also the keys left out (ones no
    sample here uses, such as a ControlNet image). OSError or ValueError says what is wrong with the file."""
    text = text_of(path)  # a BOM (Notepad's) or UTF-16 (PowerShell's) too: '\ufeff# comment' is no comment
    suffix = path.suffix.lower()
    if suffix == ".txt":  # (AUTOMATIC1111's generation data pasted in, a field a line: its negative prompt and
        # settings lines are the prompt's, which its settings line ends; "Steps: 3, a staircase" is a prompt)
        blocks: list[str] = []
        ended = True
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip() if not line.startswith("#") else ""
            settings = bool(line) and settings_fields(line) is not None
            if not line:
                continue
            if not ended and (NEGATIVE_LINE.match(line) and "\nNegative prompt:" not in blocks[-1] or settings):
                blocks[-1] += "\n" + line
                ended = settings
            elif NEGATIVE_LINE.match(line):  # (it was drawn as a prompt of those words)
                fix = ("a prompt takes one" if not ended else "it goes between its prompt and that prompt's Steps: line"
                       if blocks else "put its prompt on the line above")
                raise ValueError(f"line {number}, '{line[:40]}', follows no prompt of its own; {fix} (AUTOMATIC1111's "
                                 "generation data: the prompt, its negative prompt, its settings)")
            else:
                blocks.append(line)
                ended = False
        left = [setting for block in blocks for setting in generation_left_out(block)]
        return [as_prompt_line(block) for block in blocks], list(dict.fromkeys(left))
    if suffix == ".toml":
        try:
            table = tomllib.loads(text).get("prompt")
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"not valid TOML: {exc}") from None
        if not isinstance(table, dict) or not isinstance(table.get("subset"), list):
            raise ValueError("no [[prompt.subset]] tables: kohya's prompt TOML holds [prompt] defaults and one "
                             "[[prompt.subset]] per prompt")
        defaults = {key: value for key, value in table.items() if key != "subset"}
        entries = [defaults | subset for subset in table["subset"] if isinstance(subset, dict)]
    elif suffix == ".json":
        entries = json.loads(text)
        if isinstance(entries, dict) and entries and all(isinstance(value, str) for value in entries.values()):
            entries = [escaped_dashes(value) for value in entries.values()]  # (SimpleTuner's user prompt library:
            # name -> prompt)
        if not isinstance(entries, list):
            raise ValueError("not a JSON list of prompts (nor SimpleTuner's prompt library of names and prompts)")
    else:
        raise ValueError("not a prompt file (.txt, .toml or .json)")
    lines, left_out = [], set()
    onetrainer = any(isinstance(entry, dict) and ONETRAINER_OWN & entry.keys() for entry in entries)
    for entry in entries:
        if isinstance(entry, str):
            lines.append(entry.strip())
            continue
        if onetrainer and isinstance(entry, dict):
            lines.append(onetrainer_sample(entry) or "")
            # (OneTrainer writes every setting: those at no value, and its file's __version, change nothing)
            left_out |= {key for key, value in entry.items() if value not in (None, "", 0, False)
                         and not key.startswith("__")} - {"prompt", "seed", *ONETRAINER_KEYS, *ONETRAINER_OWN}
            continue
        if not isinstance(entry, dict) or not str(entry.get("prompt") or "").strip():
            raise ValueError(f"an entry without a prompt: {entry!r}")
        line = escaped_dashes(" ".join(str(entry["prompt"]).split()))  # kohya reads a table's fields as they are
        for key, value in entry.items():
            if key in FILE_KEYS and value not in (None, ""):
                line += f" --{FILE_KEYS[key]} {escaped_dashes(' '.join(str(value).split()))}"
            elif key not in ("prompt", "enum"):
                left_out.add(key)
        lines.append(line)
    return [line for line in lines if line], sorted(left_out)


def escaped_dashes(text: str) -> str:
    """Text a prompt line holds as written: a `--word` in it escaped as `\\--word`, which parse_prompt reads as text,
    not as one of kohya's inline options (OneTrainer's prompts have none: `--ar 16:9` in one is words)."""
    return re.sub(r"(?:(?<=\s)|(?<=\\)|^)--(?=[A-Za-z])", r"\\--", text)  # an escape's own \-- too: read back exact


def literal_dashes(text: str) -> str:
    return text.replace("\\--", "--")


def onetrainer_sample(sample: dict) -> str | None:
    """A OneTrainer sample definition as a prompt with kohya's inline options (None: disabled, or no prompt); its
    noise scheduler as the sampler, DDIM where it names none, as OneTrainer's default. ValueError for a scheduler
    lowvram has not."""
    if sample.get("enabled") is False or not str(sample.get("prompt") or "").strip():
        return None
    line = escaped_dashes(" ".join(str(sample["prompt"]).split()))
    given = {**ONETRAINER_KEYS, **({"seed": "d"} if not sample.get("random_seed") else {})}
    for key, flag in given.items():
        value = sample.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, float) and value.is_integer() and flag != "l":  # JSON's 512.0 is a size of 512
            value = int(value)
        line += f" --{flag} {escaped_dashes(' '.join(str(value).split()))}"
    return line + f" --ss {sampler_name(str(sample.get('noise_scheduler') or 'DDIM'))}"


# AUTOMATIC1111's emphasis syntax: \( \) \[ \] \\ escapes, ( [ openers, ":1.2)" a weighted closer, ) ], plain text
EMPHASIS = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
ROUND, SQUARE = 1.1, 1 / 1.1  # what ( ) and [ ] multiply by


# AUTOMATIC1111's syntax that lowvram's prompts do not read: a LoRA tag, prompt editing ([from:to:when], [to:when])
# and alternation ([a|b]; a ':' inside parentheses, [(cat:1.2)], is emphasis within de-emphasis), other networks,
# and composable diffusion's AND: each would reach CLIP as words
LORA_TAG = re.compile(r"<(?:lora|lyco):[^>]*>", re.IGNORECASE)
# (as its grammar reads them: editing ends in a number, [ohwx:person] and [artist:name] are words; \[ is text)
PROMPT_EDITING = re.compile(r"(?<!\\)\[(?:[^\[\]():|]*:)?[^\[\]():|]*:\s*[+-]?\d*\.?\d+\s*\]"
                            r"|(?<!\\)\[[^\[\]():|]*(?:\|[^\[\]():|]*)+\]")
OTHER_NETWORK = re.compile(r"<(hypernet|embedding):[^>]*>", re.IGNORECASE)
COMPOSABLE = re.compile(r"\bAND\b")


def lora_tag_flag(tag: str) -> str:
    """The --lora that loads what an AUTOMATIC1111 tag names (<lora:name:0.8>): its file here where it is, else by
    the name, to be found in the LoRA folder."""
    _, name, *values = tag.strip("<>").split(":")
    strengths = [value.strip().partition("=")[2] or value.strip() for value in values]  # (te=0.8 too)
    weight = strengths[0] if strengths and re.fullmatch(r"[-+]?[0-9]*\.?[0-9]+", strengths[0]) else "1"
    file = Path(re.sub(r"\.safetensors$", "", name.strip(), flags=re.IGNORECASE) + ".safetensors")
    where = "" if file.is_file() else f" (the path of {file.name}: AUTOMATIC1111's models/Lora, ComfyUI's models/loras)"
    one = "; one strength here, for the U-Net and text encoders alike" if len(set(strengths)) > 1 else ""
    return f"--lora {shell_line(f'{file}:{weight}')}{where}{one}"


def unread_syntax(prompt: SamplePrompt, lora_tag: str | None = None) -> list[str]:
    """What `prompt` holds of AUTOMATIC1111's syntax that lowvram would draw as words, each said with what to do
    (`lora_tag`: what to do with a LoRA tag, its `{}` the --lora that loads it; None: it stays words, as a
    training sample's does in kohya)."""
    both, found = f"{prompt.text} {prompt.negative or ''}", []
    if lora_tag and (tag := LORA_TAG.search(prompt.text)):
        loads = lora_tag.format(lora_tag_flag(tag.group(0)))
        found.append(f"{tag.group(0)} is AUTOMATIC1111's way to load a LoRA, {loads}")
    if editing := PROMPT_EDITING.search(both):
        found.append(f"{editing.group(0)} is AUTOMATIC1111's prompt editing or alternation, which lowvram does not "
                     "do: write the words to draw (emphasis, (word:1.2) and [word], works)")
    if network := OTHER_NETWORK.search(both):
        found.append(f"{network.group(0)} loads an AUTOMATIC1111 {network.group(1).lower()}, which lowvram does not: "
                     "leave it out")
    if word := COMPOSABLE.search(prompt.text):  # (a negative prompt's AND is words in AUTOMATIC1111 too)
        found.append(f"{word.group(0)} is AUTOMATIC1111's composable diffusion, which lowvram does not do: write one "
                     "prompt")
    return found


# AUTOMATIC1111's BREAK: the word alone, in capitals, ends the prompt's 75-token chunk
CHUNK_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def weighted_pieces(text: str) -> list[tuple[str, float]]:
    """A caption or prompt written with AUTOMATIC1111's emphasis, as kohya's --weighted_captions reads it: the
    text in pieces, each with its weight. `(red hair)` is 1.1 times, `((red hair))` 1.21, `[red hair]` 1/1.1,
    `(red hair:1.5)` 1.5; an unclosed bracket weighs to the end; `\\(` is a plain parenthesis. Neighbouring
    pieces of the same weight are joined."""
    pieces: list[list] = []
    opened: dict[str, list[int]] = {"(": [], "[": []}

    def weigh(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in EMPHASIS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif token in opened:
            opened[token].append(len(pieces))
        elif weight is not None and opened["("]:
            weigh(opened["("].pop(), float(weight))
        elif token == ")" and opened["("]:
            weigh(opened["("].pop(), ROUND)
        elif token == "]" and opened["["]:
            weigh(opened["["].pop(), SQUARE)
        else:
            pieces.append([token, 1.0])
    for bracket, factor in (("(", ROUND), ("[", SQUARE)):
        for start in opened[bracket]:
            weigh(start, factor)
    joined: list[tuple[str, float]] = []
    for piece, weight in pieces:
        if joined and joined[-1][1] == weight:
            joined[-1] = (joined[-1][0] + piece, weight)
        else:
            joined.append((piece, weight))
    return joined or [("", 1.0)]


def model_title(model: str) -> str:
    """A base model as AUTOMATIC1111's infotext names it: its file's name without the extension, else its folder's or
    hub id's last part whole (stable-diffusion-xl-base-1.0 keeps its .0)."""
    name = Path(model).name
    return Path(name).stem if Path(name).suffix.lower() in (".safetensors", ".ckpt", ".pt", ".bin") else name


# the lines of AUTOMATIC1111's generation data after its prompt (PNG Info's, pasted as it shows them)
NEGATIVE_LINE = re.compile("Negative prompt:")
SETTINGS_LINE = re.compile(r"Steps: \d+,")
SAMPLING_KEYS = ("Sampler", "CFG scale", "Seed", "Size", "Schedule type", "Model", "Model hash")
# the generation data's settings a prompt here takes (inline, or as --clip-skip), or that name what made it
GENERATION_READ = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip", "Model", "Model hash",
                   "Lora hashes", "TI hashes", "VAE", "VAE hash", "Version")


@dataclass(frozen=True)
class GenerationData:
    line: str  # the prompt with kohya's inline options
    clip_skip: int | None
    left_out: tuple[str, ...]  # its settings no prompt here takes (a hires fix's, an unknown schedule type)
    model: str = ""  # the base model it names (its Model: field), which --model loads, not the prompt


def settings_fields(line: str) -> dict[str, str] | None:
    """AUTOMATIC1111's settings line ("Steps: 20, Sampler: Euler a, ...") as its fields, a quoted value, or a JSON
    object or list (Civitai's "Hashes: {...}"), whole; None for a line that is none: every field a "key: value",
    one of them a sampling setting ("Steps: 3, a spiral staircase" is a prompt). One pass, no backtracking."""
    if not SETTINGS_LINE.match(line):
        return None
    pieces, start, depth, quoted, escaped = [], 0, 0, False, False
    for at, char in enumerate(line):
        if quoted:
            escaped, quoted = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            quoted = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth = max(depth - 1, 0)
        elif char == "," and not depth:
            pieces.append(line[start:at])
            start = at + 1
    fields = {}
    for piece in [*pieces, line[start:]]:
        key, colon, value = piece.partition(":")
        if not piece.strip():
            continue
        if not colon or not key.strip():
            return None
        fields[key.strip()] = value.strip().strip('"')
    return fields if any(key in fields for key in SAMPLING_KEYS) else None


def from_generation_data(text: str) -> GenerationData | None:
    """AUTOMATIC1111's generation data (PNG Info, Civitai's "copy generation data"): the prompt, a "Negative
    prompt:" line, and a last line "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768, ...", as
    one prompt with kohya's inline options (the prompt and its negative prompt alone too); None for text that is
    none."""
    lines = text.strip().splitlines()
    params = settings_fields(lines[-1]) if len(lines) >= 2 else None
    if params is None and not any(NEGATIVE_LINE.match(line) for line in lines[1:]):
        return None
    body = "\n".join(lines[:-1] if params is not None else lines)
    params = params or {}
    prompt, _, negative = ("\n" + body).partition("\nNegative prompt:")
    words = [" ".join(prompt.split())]
    words += [f"--n {' '.join(negative.split())}"] if negative.strip() else []
    words += [f"--{option} {params[key]}" for key, option in (("Steps", "s"), ("CFG scale", "l"), ("Seed", "d"))
              if params.get(key)]
    size = re.fullmatch(r"(\d+)x(\d+)", params.get("Size", ""))
    words += [f"--w {size[1]} --h {size[2]}"] if size else []
    schedule = params.get("Schedule type", "")  # (A1111 1.9 and later: "Sampler: DPM++ 2M, Schedule type: Karras")
    sampler = f"{params.get('Sampler', '')} {schedule if schedule == 'Karras' else ''}".strip()
    words += [f"--ss {sampler}"] if sampler else []
    left_out = [key for key in params if key not in GENERATION_READ]
    left_out += [f"Schedule type: {schedule}"] if schedule not in ("", "Automatic", "Karras") else []
    skip = params.get("Clip skip", "")
    return GenerationData(" ".join(words), int(skip) if skip.isdigit() else None, tuple(left_out),
                          params.get("Model", ""))


def generation_left_out(text: str) -> list[str]:
    """What AUTOMATIC1111's generation data given as a sample prompt holds that a training sample does not take (a
    hires fix's settings; its clip skip is the run's --clip-skip's, as a kohya prompt's is)."""
    data = from_generation_data(text)
    return list(data.left_out) if data else []


def as_prompt_line(text: str) -> str:
    """A sample prompt given as AUTOMATIC1111 writes one (its prompt, a "Negative prompt:" line, its settings' line)
    as one prompt with kohya's inline options; other text as it is."""
    data = from_generation_data(text)
    return data.line if data else text


def infotext(prompt: SamplePrompt, loras: list[tuple[Path, float]], hashes: dict[Path, str], steps: int, sampler: str,
             seed: int, size: tuple[int, int], model: str, clip_skip: int = 1, model_hash: str = "") -> str:
    """What the image was made with, as AUTOMATIC1111 writes it into a PNG (its PNG Info and "Send to txt2img" read
    it back; its LoRA tags name the files). `model_hash`: a single file's AUTOMATIC1111 hash (Civitai's AutoV1), by
    which Civitai links the base model an uploaded image was made with."""
    names = {path: path.name if path.is_dir() else path.stem for path, _ in loras}  # (a diffusers folder: v1.0-...)
    tags = "".join(f" <lora:{names[path]}:{weight:g}>" for path, weight in loras)
    negative = f"\nNegative prompt: {prompt.negative}" if prompt.negative else ""
    # AUTOMATIC1111 leaves , and : out of a name here: its reader splits the list at them
    listed = ", ".join(f"{re.sub('[,:]', '', names[path])}: {short}" for path, short in hashes.items())
    return (f"{prompt.text}{tags}{negative}\nSteps: {steps}, Sampler: {sampler}, CFG scale: "
            f"{prompt.guidance:g}, Seed: {seed}, Size: {size[0]}x{size[1]}"
            + (f", Model hash: {model_hash}" if model_hash else "") + f", Model: {model}"
            + (f", Clip skip: {clip_skip}" if clip_skip > 1 else "")  # (AUTOMATIC1111's default, 1, goes unsaid)
            + (f', Lora hashes: "{listed}"' if listed else ""))


def prompted(given: Collection[str]) -> bool:
    """Whether the command line's options (`given`: their names, or names and values) give the sample prompts, which
    replace another trainer's config's (one setting there: kohya's prompt file or GUI text, OneTrainer's samples)."""
    return bool({"sample_prompts", "sample_prompt_file"} & set(given))
