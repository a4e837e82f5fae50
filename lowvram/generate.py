"""`lowvram generate`: render images from a base model with LoRAs applied, as training renders its samples: one
model part on the GPU at a time (the text encoders encode and leave, the U-Net denoises, the VAE decodes and
leaves), so it runs on the cards lowvram trains on, and a prompt and seed give the image a training sample gave.
Prompts are read as AUTOMATIC1111 reads them: `(emphasis:1.2)`, BREAK, and long ones in 75-token chunks."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import secrets
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from lowvram.adapters.lora_files import UNET_KOHYA_PREFIX
from lowvram.config import IMAGE_FORMATS, WRITTEN_IMAGE_SUFFIXES
from lowvram.errors import PICKLE_SUFFIXES, LowvramError, not_safetensors, pickle_refusal
from lowvram.files import atomic_write, human_size, not_found_hint, output_problem, unwritable
from lowvram.hardware import detect, resolve_mixed_precision
from lowvram.lora_header import base_family, demo_family, kohya_header, no_layers_why, read_header, shapes_of
from lowvram.lora_layout import in_diffusers_layout, in_omi_layout
from lowvram.lora_metadata import addnet_hash, trigger_words
from lowvram.models.detect import base_model_words, detect_family, looks_like_lora
from lowvram.models.families import DEFAULT_READING, FAMILIES, clip_skip_problem, prompt_reading
from lowvram.models.loading import LoadedModel, follow_lora_schedule, load_model
from lowvram.option_values import MAX_RESOLUTION, MIN_RESOLUTION, parse_source
from lowvram.precision import compute_dtype
from lowvram.prompts import (
    MAX_SEED,
    TRIGGER_PLACEHOLDER,
    SamplePrompt,
    from_generation_data,
    infotext,
    model_title,
    options_elsewhere,
    parse_prompt,
    unread_syntax,
    with_trigger,
)
from lowvram.samplers import a1111_name, own_sampler, sampler_problem
from lowvram.train.sampling import render

WRITTEN_FORMATS = {suffix: IMAGE_FORMATS[suffix][0] for suffix in WRITTEN_IMAGE_SUFFIXES}  # Pillow's names
# the key prefixes of kohya's and LyCORIS's files: the U-Net's and every family's text encoders'
KOHYA_PREFIXES = tuple(sorted({f"{prefix}_" for prefix in (UNET_KOHYA_PREFIX, *(
    spec.kohya_prefix for family in FAMILIES.values() for spec in family.text_encoders))}))


def generate(args: argparse.Namespace) -> list[Path]:
    """Render `--count` images; the prompt's kohya-style inline options (--n --w --h --s --l --d --ss) win over
    the flags that say the same. Every option is checked before the model loads (one line each), and nothing is
    written over a file being read, or over any file without --overwrite."""
    args.model = args.model or _model_unsaid(args.lora or [])
    given = str(args.output)  # (an output folder, as ComfyUI and AUTOMATIC1111 have: the images go in it, made if
    folder = Path(given) if given.endswith(("/", os.sep)) or Path(given).is_dir() else None  # it ends in /)
    args.output = (folder / "generated.png") if folder else Path(given)
    args.prompt, clip_skip = _generation_data(args.prompt, args.model)
    clip_skip = clip_skip if not args.clip_skip else None  # (the prompt's own, where none is given)
    args.clip_skip = args.clip_skip or clip_skip
    paths = numbered_in(folder, args.count) if folder else output_paths(args.output, args.count)
    if args.seed is None:  # (class images added to a folder were copies of the first ones, each seed 0 on again)
        number = int(paths[0].stem) if folder else 0  # (a timestamp's name, 20240101123456.png, passes the seeds')
        args.seed = number if number + args.count - 1 <= MAX_SEED else 0
    prompt, sources, problems = _read_options(args)
    args.output = paths[0] if folder else args.output
    problem = _output_problem(args, paths, [Path(args.model), *([Path(args.vae)] if args.vae else []),
                                            *(path for path, _ in sources)])
    if folder and folder.exists() and not folder.is_dir():  # (refused after the model loaded: "could not write")
        problem = f"--output: {folder} is a file, not a folder to write the images in; name another"
    problems += [problem] if problem else []
    if problems:
        raise LowvramError("\n".join(problems))
    prompt = _with_trigger(prompt, sources)
    for path in dict.fromkeys(path.resolve() for path, _ in sources):  # (a strength sweep tried in one call)
        weights = [weight for given, weight in sources if given.resolve() == path]
        if len(weights) > 1:
            print(f"--lora: {path.name} is given {len(weights)} times: its strengths add up "
                  f"({' + '.join(f'{w:g}' for w in weights)} = {sum(weights):g}), as two ComfyUI loaders of one file "
                  "do; for an image at each strength, run generate once per strength")
    if prompt.negative and args.negative_prompt and args.negative_prompt != prompt.negative:
        print("--negative-prompt: the prompt's own --n replaces it (kohya's inline options win over the flags)")
    if options_elsewhere(args.prompt):
        print(f"--prompt: kohya's {', '.join(options_elsewhere(args.prompt))} left out (for other models or tools); "
              "the image is drawn without it")
    seed = args.seed if prompt.seed is None else prompt.seed
    if seed == -1:  # AUTOMATIC1111's random seed, said so that the image can be made again
        seed = secrets.randbelow(MAX_SEED + 2 - args.count)
        print(f"seed -1: drew {seed}" + (f" (the images' seeds are {seed} to {seed + args.count - 1})"
                                          if args.count > 1 else ""))
    hardware = detect()
    device = torch.device(hardware.device)
    dtype = compute_dtype(resolve_mixed_precision("auto", hardware))  # as training computes (fp32 on a GTX 16xx)
    if args.clip_skip and (problem := clip_skip_problem(detect_family(args.model, args.model_family), args.clip_skip)):
        if not clip_skip:
            raise LowvramError(problem)
        # (Pony's images on Civitai say it)
        print(f"--prompt: its Clip skip: {clip_skip} changes nothing on SDXL, which reads its text encoders' "
              "penultimate layer already (AUTOMATIC1111 ignores it there too): left out")
        args.clip_skip = None
    if other := _other_family(args, sources):  # said from the headers, before the model's minute of loading
        raise LowvramError(other)
    print(f"loading {model_title(args.model)}", flush=True)  # (a minute of silence otherwise, in a log too)
    model = load_model(args.model, args.model_family, dtype=dtype, vae=args.vae)
    steps = prompt.steps or args.steps
    most = model.pipeline.scheduler.config.num_train_timesteps
    if steps > most:  # the samplers cannot take more steps than the model was trained with timesteps
        flag = "--steps:" if prompt.steps is None else "--prompt: --s (steps)"
        raise LowvramError(f"{flag} {model.family.title} has {most} timesteps, so at most {most} steps; got {steps}")
    if sources:
        apply_loras(model, sources, args.clip_skip)
    if prompt.sampler:
        problem = sampler_problem(prompt.sampler, bool(model.pipeline.scheduler.config.get("rescale_betas_zero_snr")))
        if problem:
            raise LowvramError(f"--sampler: {problem}")
    prompt = replace(prompt, negative=prompt.negative or args.negative_prompt or "", seed=None,
                     guidance=args.guidance if prompt.guidance is None else prompt.guidance,
                     width=prompt.width or args.width, height=prompt.height or args.height)
    model.text_reading = prompt_reading(args.clip_skip or (model.text_reading or DEFAULT_READING).clip_skip)
    model.unet.to(device)
    if dtype == torch.float16 and getattr(model.vae.config, "force_upcast", False):
        model.vae.to(torch.float32)  # SDXL's VAE overflows in fp16, as its pipeline knows
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if device.type != "cpu" else nullcontext
    sampler = a1111_name(prompt.sampler or own_sampler(model.pipeline.scheduler))  # (none asked: the model's own)
    # a kohya file's addnet hash, by which AUTOMATIC1111 and model sites know it (a diffusers folder has none)
    hashes = {path: addnet_hash(path)[:12] for path, _ in sources if path.is_file()}
    for i, path in enumerate(paths):
        started = time.monotonic()
        image = render(model, prompt, args.resolution or model.family.resolution, steps, seed + i, device, autocast)
        save_as_named(image, path, infotext(prompt, sources, hashes, steps, sampler, seed + i, image.size,
                                            model_title(args.model), model.text_reading.clip_skip,
                                            model.hash if Path(args.model).is_file() else ""))
        counted = f"{i + 1}/{len(paths)}, " if len(paths) > 1 else ""
        print(f"wrote {path} ({counted}{time.monotonic() - started:.0f} s)", flush=True)  # each as it is written
    return paths


def output_paths(output: Path, count: int) -> list[Path]:
    """The files `--output` names: itself for one image, else numbered ones beside it (out-00.png, out-01.png)."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i:02d}{output.suffix}") for i in range(count)]


def numbered_in(folder: Path, count: int) -> list[Path]:
    """`count` files for an output folder, numbered on from its highest (00000.png, 00001.png ...), as AUTOMATIC1111
    numbers its outputs: a second call writes beside the first ("generated.png exists" refused it)."""
    taken = [int(match[1]) for path in (folder.iterdir() if folder.is_dir() else ())
             if (match := re.match(r"(\d{5,})", path.name))]
    start = max(taken, default=-1) + 1
    return [folder / f"{start + i:05d}.png" for i in range(count)]


EXIF_IFD, USER_COMMENT = 0x8769, 0x9286  # the EXIF tags AUTOMATIC1111 keeps a JPEG's or WebP's parameters in


def parameters_of(path: Path) -> str | None:
    """The generation data an image holds where `save_as_named` (and AUTOMATIC1111, Forge) keep it; None for none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if "parameters" in image.info:
                return str(image.info["parameters"])
            comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except (OSError, UnidentifiedImageError):
        return None
    if isinstance(comment, bytes) and comment.startswith(b"UNICODE\0"):
        return comment[8:].decode("utf-16-be", errors="replace")
    return comment.decode("utf-8", errors="replace").removeprefix("ASCII\0\0\0") if isinstance(comment, bytes) \
        else comment


def save_as_named(image, path: Path, parameters: str | None = None) -> Path:
    """The image in the format its file's extension names (JPEG without an alpha channel), atomically, with its
    `parameters` text where AUTOMATIC1111 stores it: a PNG's text chunk, a JPEG's or WebP's EXIF UserComment (as
    piexif writes it: "UNICODE" and UTF-16 big-endian)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    kind = WRITTEN_FORMATS[path.suffix.lower()]
    image = image.convert("RGB") if kind == "JPEG" and image.mode != "RGB" else image
    options = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}.get(kind, {})  # 4:4:4 colour
    if kind == "PNG" and parameters:
        options = {"pnginfo": PngInfo()}
        options["pnginfo"].add_text("parameters", parameters)
    elif parameters:
        exif = Image.Exif()
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + parameters.encode("utf-16-be")
        options["exif"] = exif
    return atomic_write(path, lambda tmp: image.save(tmp, format=kind, **options), image.width * image.height * 4,
                        "the image")


def _generation_data(given: str, model: str) -> tuple[str, int | None]:
    """The prompt: AUTOMATIC1111's generation data (pasted from PNG Info or Civitai, or an image made with it, by
    path) as one line with its negative prompt, steps, CFG scale, seed, size and sampler inline, and its clip skip;
    other text as it is. What it holds that is not read here is said (its LoRA tags: --lora loads LoRAs)."""
    if Path(given).suffix.lower() in WRITTEN_FORMATS and os.path.isfile(given):  # (never raises: a long prompt)
        data = parameters_of(Path(given))
        if data is None:
            raise LowvramError(f"--prompt: {given} holds no generation data (AUTOMATIC1111's parameters); give the "
                               "prompt as text")
        given = data
    data = from_generation_data(given)
    if data is None:
        return given, None
    tags = re.findall(r"<(?:lora|lyco):[^>]*>", data.line, re.IGNORECASE)
    line = re.sub(r"\s*<(?:lora|lyco):[^>]*>", "", data.line, flags=re.IGNORECASE).strip()
    left = [*data.left_out, *tags]
    if data.model and data.model != model_title(model):  # (the random tiny model drew it, unsaid)
        left.append(f"Model: {data.model} (drawn with {model_title(model)}: --model loads the base model)")
    print(f"--prompt: read as AUTOMATIC1111's generation data: {line}"
          + (f", --clip-skip {data.clip_skip}" if data.clip_skip else "")
          + " (its settings win over the flags, as a prompt's inline options do"
          + (f"; left out: {', '.join(left)}" + ("; --lora FILE:WEIGHT loads a LoRA" if tags else "") if left else "")
          + ")")
    return line, data.clip_skip


def _with_trigger(prompt: SamplePrompt, sources: list[tuple[Path, float]]) -> SamplePrompt:
    """ai-toolkit's [trigger] in the prompt as its training samples drew it: the --lora files' trigger words (what
    their metadata records), said; without any, left out, said."""
    if TRIGGER_PLACEHOLDER not in prompt.text + prompt.negative:
        return prompt
    words = []
    for path, weight in sources:
        try:
            words.append(trigger_words(read_header(path)[0]) if weight else "")
        except (OSError, ValueError):  # (a diffusers LoRA's folder, whose saver keeps no trigger word; a file
            continue  # diffusers reads where lowvram's reader cannot)
    trigger = ", ".join(dict.fromkeys(part.strip() for word in words for part in word.split(",") if part.strip()))
    plural = "s" * ("," in trigger)  # (several concepts' words: the LoRA's trigger words)
    print(f"--prompt: {TRIGGER_PLACEHOLDER} is " + (f"'{trigger}', the LoRA's trigger word{plural}" if trigger else
                                                      "left out: no --lora file records a trigger word"))
    return dataclasses.replace(prompt, text=with_trigger(prompt.text, trigger),
                               negative=with_trigger(prompt.negative, trigger))


def _read_options(args: argparse.Namespace) -> tuple[SamplePrompt, list[tuple[Path, float]], list[str]]:
    """The prompt, the LoRAs with their weights, and what is wrong with the options, one line each."""
    problems = []
    try:
        if not args.prompt.strip():  # (a training sample's empty prompt draws unconditioned; asked here, a slip)
            raise ValueError("nothing to draw: the prompt is empty")
        prompt = parse_prompt(args.prompt, args.sampler)
    except ValueError as exc:
        problems.append(f"--prompt: {exc}")
        prompt = SamplePrompt("", sampler=args.sampler)  # the flags are still checked
    # (the image would be drawn without the LoRA, the switch, the network)
    problems += [f"--prompt: {problem}" for problem in unread_syntax(
        prompt, "which a prompt here does not read: {} loads it")]
    if prompt.sampler and (problem := sampler_problem(prompt.sampler, False)):  # (a package missing: before the
        problems.append(f"--sampler: {problem}")  # model loads; zero terminal SNR is known once it has)
    if args.weight is not None and math.isfinite(args.weight) and not args.lora:
        problems.append("--weight: sets the strength of --lora files, and none is given; add --lora FILE")
    sources = []
    for text in args.lora or []:
        try:
            sources.append(parse_source(text, 1.0 if args.weight is None else args.weight))
        except LowvramError as exc:
            problems.append(f"--lora: {exc}")
    problems += lora_problems(sources)
    for flag, value in (("--steps", args.steps), ("--count", args.count)):
        if value < 1:
            problems.append(f"{flag}: must be 1 or more, got {value}")
    for flag in ("resolution", "width", "height"):
        value = getattr(args, flag)
        if value is not None and not (MIN_RESOLUTION <= value <= MAX_RESOLUTION and value % 8 == 0):
            near = [side for side in (value // 8 * 8, value // 8 * 8 + 8) if MIN_RESOLUTION <= side <= MAX_RESOLUTION]
            problems.append(f"--{flag}: must be a multiple of 8 from {MIN_RESOLUTION} to {MAX_RESOLUTION}, got "
                            f"{value}" + (f" (give {' or '.join(map(str, near))}; a prompt's --w and --h are rounded "
                                          "down, as kohya's)" if value % 8 and near else ""))
    for flag, value in (("--guidance:", args.guidance), ("--weight:", args.weight)):
        if value is not None and not math.isfinite(value):
            problems.append(f"{flag} must be a finite number, got {value}")
    given = 0 if args.seed is None else args.seed  # (None: `generate` numbers it; read alone, the first image's)
    if given != -1 and not 0 <= given <= MAX_SEED:  # (the prompt's --d is checked where it is read)
        problems.append(f"--seed: must be from 0 to {MAX_SEED}, or -1 for a random one; got {given}")
    seed, flag = (given, "--seed") if prompt.seed is None else (prompt.seed, "--prompt: --d (seed)")
    if args.count > 1 and 0 <= seed <= MAX_SEED < seed + args.count - 1:
        problems.append(f"{flag}: the {args.count} images' seeds {seed} to {seed + args.count - 1} pass {MAX_SEED}; "
                        "give a smaller seed, or -1 for a random one")
    return prompt, sources, problems


def _output_problem(args: argparse.Namespace, paths: list[Path], inputs: list[Path]) -> str | None:
    """What is wrong with --output (one line): a file being read (never replaced), an extension that names no
    image format, or files that exist (every numbered one is checked before any is written) without
    --overwrite."""
    read = [problem for problem in (output_problem(path, inputs, overwrite=True) for path in paths) if problem]
    if read:
        return read[0]
    if blocked := unwritable(args.output.parent):  # (said after the model loaded and the image was drawn)
        return f"--output: {blocked}; choose a folder you can write to"
    if args.output.suffix.lower() not in WRITTEN_FORMATS:
        return (f"--output: {args.output} names no image format; end it in "
                f"{', '.join(WRITTEN_IMAGE_SUFFIXES[:-1])} or {WRITTEN_IMAGE_SUFFIXES[-1]} (the format is the "
                "extension's), or in / for a folder to write in")
    existing = [path for path in paths if path.exists()]
    if existing and not args.overwrite:
        more = f" (and {len(existing) - 1} more of the numbered files)" if len(existing) > 1 else ""
        return f"--output: {existing[0]} exists{more}; add --overwrite to replace it, or name another"
    return None


def _model_unsaid(loras: list[str]) -> str:
    """The model of a generate without --model: the built-in demo model (the one a --lora was trained on), but not
    for a LoRA of another model, which it drew nothing of (with random weights) without a word."""
    from lowvram.run_files import DIFFUSERS_WEIGHTS

    for text in loras:
        try:
            path = parse_source(text, 1.0)[0]
            path = path / DIFFUSERS_WEIGHTS if path.is_dir() else path
            metadata, tensors, _ = kohya_header(path)  # (kohya's names: a diffusers or peft file's layers too)
        except (LowvramError, OSError, ValueError):
            continue  # (said where the LoRAs are read)
        trained_on = metadata.get("lowvram.base_model") or metadata.get("ss_sd_model_name")
        if (demo := demo_family(metadata)) and trained_on in (None, demo.name):
            return demo.name
        if trained_on is None:  # (a merge's, a checkpoint's adapters: a full-size family's layers still say so)
            full = FAMILIES.get(base_family(metadata, shapes_of(tensors)) or "")
            if full is None:
                continue
            trained_on = f"a {full.title} model"
        raise LowvramError(f"--model: which base model? {path} was trained on {trained_on}; give that model (a "
                           ".safetensors checkpoint, a diffusers folder or a hub id), or another of its family, as "
                           "--model")
    return "tiny"


def _other_family(args, sources: list[tuple[Path, float]]) -> str | None:
    """The line for a --lora file made for another model family than --model's, from the headers alone (None: the
    same, or not known without loading: the load says it then)."""
    from lowvram.adapters.lora_files import other_family
    from lowvram.run_files import DIFFUSERS_WEIGHTS

    if not sources:
        return None
    try:
        family = detect_family(args.model, args.model_family)
    except LowvramError:
        return None
    for path, _ in sources:
        path = path / DIFFUSERS_WEIGHTS if path.is_dir() else path  # (a diffusers LoRA folder, by its weights)
        try:
            metadata, tensors, _ = kohya_header(path)
        except (OSError, ValueError):
            continue
        if other := other_family(metadata, family, f"--lora: {path}", shapes_of(tensors)):
            return other
    return None


def lora_problems(sources: list[tuple[Path, float]]) -> list[str]:
    """What is wrong with the --lora files before anything loads: one that is not there, or not .safetensors (a
    diffusers LoRA folder is read by its weights file)."""
    from lowvram.run_files import DIFFUSERS_WEIGHTS, listed_lora, lora_in_folder, not_written_yet

    problems = []
    for path, _ in sources:
        path = path / DIFFUSERS_WEIGHTS if (path / DIFFUSERS_WEIGHTS).is_file() else path
        if path.is_dir():
            problems.append(f"--lora: {path} is a folder; {lora_in_folder(path)}")
        elif not path.is_file():
            hint = not_written_yet(path) or listed_lora(path) or not_found_hint(path)
            problems.append(f"--lora: file not found: {path}{hint}")
        elif path.suffix.lower() in PICKLE_SUFFIXES:  # (as train's --network-weights says it)
            problems.append(_embedding_pickle(path) or pickle_refusal("--lora", str(path)))
        elif path.suffix.lower() != ".safetensors":
            problems.append(f"--lora: {path} is not a .safetensors file")
        elif model := base_model_words(path):
            problems.append(f"--lora: {path} is {model[0]}, not a LoRA; {model[1]}")
        elif words := _checkpoint_adapters(path):
            problems.append(f"--lora: {path} is {words}")
        elif not _any_lora_names(path):  # a VAE, an embedding: diffusers said "Invalid LoRA checkpoint"
            problems.append(f"--lora: {path}: {no_layers_why(path)}")
    return problems


def _checkpoint_adapters(path: Path) -> str:
    """Why a run's checkpoint's adapters.safetensors is no LoRA to preview, and the LoRA of its step where the run
    wrote one; "" for any other file (diffusers said it "placed none of its layers", after loading the model)."""
    from lowvram.errors import shell_line
    from lowvram.run_files import CHECKPOINTS, written_checkpoints
    from lowvram.train.checkpoint_folders import ADAPTERS

    path = path.absolute()  # (given from inside its step's folder: adapters.safetensors alone)
    found = [step for step, folder in written_checkpoints(path.parent.parent) if folder == path.parent]
    if path.name != ADAPTERS or not found:
        return ""
    step = found[0]
    run = path.parent.parent.parent if path.parent.parent.name == CHECKPOINTS else path.parent.parent  # (archive/T/)

    def steps_of(lora: Path) -> str:
        try:
            return read_header(lora)[0].get("ss_steps", "")
        except (OSError, ValueError):
            return ""

    saves = [lora for lora in sorted(run.glob("*.safetensors")) if steps_of(lora) == str(step)]
    return ("a lowvram checkpoint's adapters, not a LoRA (they lack its alphas): "
            + (f"preview step {step} with its LoRA, --lora {shell_line(saves[0])}" if saves else
               f"the run wrote no LoRA at step {step} (--save-every writes one at each save of its steps); its LoRA "
               "files are beside its checkpoints/ folder"))


def _embedding_pickle(path: Path) -> str:
    """Why a pickle given as --lora is an AUTOMATIC1111 textual-inversion embedding (a .pt of its embeddings/
    folder), which converting would not make a LoRA; "" otherwise (its size tells nothing: a demo LoRA's is small)."""
    if "embeddings" not in (part.lower() for part in path.resolve().parent.parts[-2:]):
        return ""
    return (f"--lora: {path} is a textual-inversion embedding (in an embeddings folder, {human_size(path.stat().st_size)}"
            "), not a LoRA; AUTOMATIC1111 reads it from its embeddings folder as it is, by its name in the prompt; "
            "lowvram applies LoRAs only")


def _any_lora_names(path: Path) -> bool:
    try:
        return looks_like_lora(read_header(path)[1])
    except (OSError, ValueError):  # a broken file: named where it is read
        return True


def apply_loras(model: LoadedModel, sources: list[tuple[Path, float]], clip_skip: int | None = None) -> None:
    """Apply each LoRA file at its strength. One file stays a separate adapter. Several stack as ComfyUI and
    AUTOMATIC1111 stack them: those lowvram's reader applies are fused into the weights one after another (its
    adapters share one name), then diffusers' adapters for the rest are set side by side, each at its weight.
    `clip_skip`: the one asked for (--clip-skip), which a LoRA's own does not replace."""
    from lowvram.run_files import DIFFUSERS_WEIGHTS

    # a diffusers LoRA folder (train --format diffusers writes one) by the weights file in it
    sources = [(path / DIFFUSERS_WEIGHTS if (path / DIFFUSERS_WEIGHTS).is_file() else path, weight)
               for path, weight in sources]
    problems = lora_problems(sources)
    if problems:
        raise LowvramError("\n".join(problems))
    for path, weight in sources:
        changes, other_model = follow_lora_schedule(model, path, clip_skip is not None) if weight else ([], "")
        for change in changes:  # (at weight 0, as in ComfyUI, no change)
            print(f"{path.name} was trained with {change}: sampling with it too")
        if other_model:
            print(other_model)
        trained = read_header(path)[0].get("ss_clip_skip", "") if clip_skip is not None and weight else ""
        if trained.isdigit() and max(int(trained), 1) != clip_skip:  # (it said "sampling with it too", and did not)
            print(f"{path.name} was trained with clip skip {trained}: sampling with --clip-skip {clip_skip}, as given")
    from lowvram.adapters.lora_files import load_kohya
    from lowvram.adapters.networks import fuse_adapters

    by_peft = [_read_with_peft(path) for path, _ in sources]
    for (path, weight), ours in zip(sources, by_peft):
        if ours and len(sources) > 1:
            load_kohya(model, path)
            for module in (model.unet, *model.text_encoders):
                fuse_adapters(module, weight)
        elif ours:
            load_kohya(model, path, weight)
    theirs = [source for source, ours in zip(sources, by_peft) if not ours]
    names = ["lora"] + [f"lora{i}" for i in range(1, len(theirs))]
    for name, (path, _) in zip(names, theirs):
        try:
            # the folder and the file's name: a bare file path, under HF_HUB_OFFLINE, diffusers before 0.40 refused
            model.pipeline.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise LowvramError(f"--lora: {path} does not fit {model.family.title}: "
                               f"{str(exc).splitlines()[0]}") from None
        if not any(name in loaded for loaded in model.pipeline.get_list_adapters().values()):
            raise LowvramError(f"--lora: {path}: diffusers placed none of its layers in {model.family.title}; is it "
                               "a LoRA for this model, in kohya's, diffusers' or peft's naming?")
    if theirs:
        model.pipeline.set_adapters(names[: len(theirs)], adapter_weights=[weight for _, weight in theirs])


def _read_with_peft(path: Path) -> bool:
    """Whether lowvram's own reader applies the file: any in kohya's or LyCORIS's naming (lora_unet_..., lora_te_...:
    it reads them exactly, as merge and --base-weights do, and refuses what it cannot place; diffusers' converter
    drops DoRA, LoHa and LoKr, misplaces alphas, and lost a text encoder's q/k/v where no out_proj came with them),
    or a file lowvram wrote, or one in diffusers' or peft's layout of SD's parts (`lora_layout`). Others go through
    diffusers."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            ours = "lowvram.network" in (f.metadata() or {})
    except (OSError, SafetensorError) as exc:  # truncated, or not safetensors at all: one line, as train says it
        raise LowvramError("--lora: " + not_safetensors(path, exc, "pass a LoRA .safetensors file")) from None
    # diffusers' and peft's layouts of SD's parts too: read as kohya's (diffusers' loader left a text encoder's DoRA
    # magnitudes at their start, and refused peft's adapter-named keys)
    return ours or any(key.startswith(KOHYA_PREFIXES) for key in keys) or in_omi_layout(keys) or (
        in_diffusers_layout(keys) and not any(key.endswith(".bias") for key in keys))  # (peft's lora_bias: diffusers')
