"""`lowvram info FILE`: what a LoRA file says about itself (its network, layers and metadata), whoever trained it,
and `--strip-paths` to take this machine's folders out of its metadata before sharing it.

The file's header says the rest (safetensors keeps names, shapes and metadata there); a LoRA's tensors are read only
to hash them, another file's not at all. `--strip-paths` rewrites the file atomically with the same tensors.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from lowvram import lora_header
from lowvram.config import NetworkConfig, as_flag_words, fields_by_name, flag_name
from lowvram.configure import read_toml, recipe_needs
from lowvram.errors import PICKLE_SUFFIXES, LowvramError, not_safetensors, pickle_refusal, shell_line
from lowvram.files import not_found_hint
from lowvram.lora_header import network_weights_problem
from lowvram.lora_metadata import RECIPE_KEY, file_hashes, trigger_words
from lowvram.run_files import lora_in_folder

# the recipe's dataset folders (by name: a private one's name tells of it) and the caption text it holds
DATASET_FOLDERS = ("data", "reg_data", "validation_data", "caption_template", "caption_prefix", "caption_suffix",
                   "class_prompt", "class_tokens")
SAMPLE_TEXTS = ("sample_prompts", "sample_prompt_file")  # (in the recipe's [samples]: prompts may name the subject)

# An absolute folder in a text: POSIX (/home/alice/, ~/models/), Windows (C:\Users\bob\), a network share
# (\\NAS\share\) or a file URL (file:///home/carol/), not part of another URL or a word; in a JSON value its
# backslashes are doubled (C:\\Users\\bob\\).
_FOLDER = re.compile(r"(?<![\w.:/\\~])(?:[A-Za-z]:[\\/]+|/|~[\\/]+|\\{2,}[\w.$-]+[\\/]+|file:/+(?:[A-Za-z]:/+)?)"
                     r"(?:[^\s\"'<>|*?\\/:]+[\\/]+)+")
# kohya's metadata that names a file: a folder before its name, relative too (models/alice/mix.safetensors), tells of
# the machine it was trained on
_NAMED_FILES = ("ss_sd_model_name", "ss_vae_name")
BASE_MODELS = {"sdxl": "SDXL", "sd15": "SD1.5"}  # as AUTOMATIC1111's card filter names them
_NETWORKS = {"loha": "LoHa", "lokr": "LoKr", "dora": "DoRA", "lora": "LoRA"}


def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """(metadata, {tensor name: (dtype, shape)}), reading no tensor data."""
    if path.is_dir():
        raise LowvramError(f"{path} is a folder; {lora_in_folder(path)}")
    if not path.is_file():
        raise LowvramError(f"file not found: {path}{not_found_hint(path)}")
    if path.suffix.lower() in PICKLE_SUFFIXES:  # (as train and generate say it)
        raise LowvramError(pickle_refusal("FILE", str(path)).removeprefix("FILE: "))
    try:
        metadata, tensors, _ = lora_header.read_header(path)
    except (OSError, ValueError) as exc:
        raise LowvramError(not_safetensors(path, exc, "pass a .safetensors file")) from None
    return metadata, {key: (entry["dtype"], tuple(entry["shape"])) for key, entry in tensors.items()}


def describe(path: Path) -> dict:
    """What `lowvram info` prints: the network type, its layers and parameters, and the metadata."""
    metadata, tensors = read_header(path)
    params = sum(_count(shape) for _, shape in tensors.values())
    # a diffusers/peft file's layers are counted under kohya's names, as every other reader of it sees them
    _, kohya_tensors, start = lora_header.kohya_header(path)
    options = lora_header.network_options(path)
    network = _NETWORKS.get(options.get("network"), "unknown")
    if network != "unknown" and set(kohya_tensors) != set(tensors):
        network += " (diffusers/peft layout)"
    layers, (plain, spatial) = lora_header.layer_ranks(path, kohya_tensors, start) if options else ({}, ([], []))
    ranks: dict[int, int] = {}
    for rank, _ in plain + spatial:  # (a LoKr with both factors whole has none)
        ranks[rank] = ranks.get(rank, 0) + 1
    from lowvram.models.detect import checkpoint_title, unet_alone

    checkpoint = checkpoint_title(path) if network == "unknown" else None
    demo = lora_header.demo_family(metadata)
    shapes = lora_header.shapes_of(kohya_tensors)
    # (an adapter's few MiB read once; no other file's, which may be a model of gigabytes)
    whole, tensor_data = file_hashes(path) if network != "unknown" else (None, None)
    return {"file": str(path), "bytes": path.stat().st_size, "network": network, "checkpoint": checkpoint,
            "unet_alone": bool(checkpoint) and unet_alone(path),
            "base_model": BASE_MODELS.get(lora_header.base_family(metadata, shapes)) if network != "unknown" else None,
            "demo_model": demo.name if demo and network != "unknown" else None,  # (trained on --model tiny)
            "trigger_words": trigger_words(metadata) or None,
            # (a kohya file names none: its concept words are its N_name folders', which a card then offers)
            "folder_words": None if trigger_words(metadata) else folder_words(metadata) or None,
            "modules": len(layers),
            "text_encoder_modules": sum(name.startswith("lora_te") for name in layers),
            # (SDXL's two: lora_te1_, lora_te2_, either alone one; ComfyUI's SDXL CLIP-L under lora_te_ one)
            "text_encoders": len({name.split("_")[1] for name in layers if name.startswith("lora_te")}),
            "unet_modules": sum(name.startswith("lora_unet") for name in layers),
            "ranks": dict(sorted(ranks.items(), reverse=True)), "parameters": params,
            "dtypes": sorted({dtype for dtype, _ in tensors.values()}),
            "metadata": metadata, "private_paths": sorted({m for v in metadata.values() for m in _FOLDER.findall(v)}
                                                          | {_folder_of(metadata[key]) for key in _NAMED_FILES
                                                             if _folder_of(metadata.get(key, ""))}),
            "sha256": whole, "addnet_hash": tensor_data,
            "network_options": options}


def _trained_line(metadata: dict[str, str], options: dict) -> str:
    """'trained: 1200 steps, 10 epochs, at 1024x1024, on sd_xl_base_1.0.safetensors; alpha 8 (scale 0.5)', of what
    the metadata says (kohya's ss_ keys); '' where it says none of it."""
    said = []
    whole = {key: int(value) for key in ("ss_steps", "ss_epoch", "ss_num_epochs")
             if re.fullmatch(r"[0-9]+", value := str(metadata.get(key, "")))}
    if "ss_steps" in whole:
        said.append(f"{whole['ss_steps']} step{'s' * (whole['ss_steps'] != 1)}")
    # a save's own epoch, not the run's planned ones: kohya's 0 is a save within the first (it said the run's 2)
    epochs = whole["ss_epoch"] if "ss_epoch" in whole else whole.get("ss_num_epochs")
    if epochs == 0:
        said.append("under 1 epoch")
    elif epochs:
        said.append(f"{epochs} epoch{'s' * (epochs != 1)}")
    sides = [round(float(side)) for side in re.findall(r"[0-9]+(?:\.[0-9]+)?", metadata.get("ss_resolution", ""))]
    if len(sides) in (1, 2):
        said.append(f"at {sides[0]}x{sides[-1]}")
    if model := metadata.get("ss_sd_model_name"):
        said.append(f"on {model}")
    scale = (f"alpha {options['alpha']:g} (scale {options['alpha'] / options['rank']:g})"
             if "alpha" in options and options.get("rank") else "")
    return "; ".join(filter(None, [f"trained: {', '.join(said)}" if said else "", scale]))


def _metadata_disagrees(metadata: dict[str, str], options: dict) -> str:
    """kohya's ss_network_dim and ss_network_alpha where the tensors' rank and alpha differ (a file's metadata
    copied from another, or edited): '' where they agree, or where the file has none."""
    said = []
    for key, name in (("ss_network_dim", "rank"), ("ss_network_alpha", "alpha")):
        try:
            if key in metadata and name in options and float(metadata[key]) != float(options[name]):
                said.append(f"{key} {metadata[key]} (its tensors: {name} {options[name]:g})")
        except ValueError:  # ("Dynamic", as a resized file's dim is)
            continue
    return ", ".join(said)


def _count(shape: tuple[int, ...]) -> int:
    total = 1
    for side in shape:
        total *= side
    return total


def _folder_of(name: str) -> str:
    """The folder part of a file's name as written (`models/alice/` of models/alice/mix.safetensors), '' for none."""
    if "\\" not in name and not re.search(r"\.(safetensors|ckpt|pt|bin)$", name, re.IGNORECASE):
        return ""  # a hub id (stabilityai/sdxl-vae) names no folder of anyone's
    return name[: max(name.rfind("/"), name.rfind("\\")) + 1]


def strip_paths(path: Path, captions: bool = False) -> int:
    """Rewrite `path` with every absolute folder in its metadata removed (a file keeps its name), and with
    `captions` what tells its dataset's captions and folder names (`without_captions`); returns how many values
    changed. The tensors and the file's permissions stay as they were; a file of kohya's training metadata (ss_*)
    gets kohya's hashes of the rewritten file (AUTOMATIC1111 reads its hash from them), as every kohya file lowvram
    writes has them."""
    from safetensors.torch import load

    from lowvram.files import save_safetensors
    from lowvram.lora_metadata import HASHES, save_lora

    metadata, _ = read_header(path)
    stripped = {key: value.removeprefix(_folder_of(value)) if key in _NAMED_FILES else _FOLDER.sub("", value)
                for key, value in metadata.items()}
    stripped = without_captions(stripped) if captions else stripped
    changed = sum(stripped.get(key) != value for key, value in metadata.items())
    if changed:
        mode = path.stat().st_mode & 0o777
        # read whole, not mapped: Windows replaces no file that is mapped
        save = save_lora if any(key in HASHES or key.startswith("ss_") for key in metadata) else save_safetensors
        save(load(path.read_bytes()), path, stripped)
        os.chmod(path, mode)
    return changed


def without_captions(metadata: dict[str, str]) -> dict[str, str]:
    """The metadata without the dataset's captions and folder names, for sharing a LoRA of private images: kohya's
    tag frequency keeps the trigger phrase's words alone (what Civitai offers as trained words), the folders are
    numbered (their repeats and counts kept), and the recipe names no dataset folder."""
    out = {key: value for key, value in metadata.items() if key != "ss_datasets"}  # (kohya's: each subset's
    # image_dir, class_tokens and tag frequency)
    if "lowvram.version" in metadata and not metadata.get("lowvram.trigger_word"):  # (its trigger phrase is a
        out.pop("modelspec.trigger_phrase", None)  # concept folder's name, not one given: stripped as folder names)
    triggers = {word.strip().lower() for word in trigger_words(out).split(",")}
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency") or "{}")
        kept: dict[str, int] = {}
        for counts in frequency.values():
            for tag, count in counts.items():
                if tag.strip().lower() in triggers - {""}:
                    kept[tag] = kept.get(tag, 0) + count
        out["ss_tag_frequency"] = json.dumps({"dataset": kept} if kept else {})
    except (ValueError, AttributeError, TypeError):
        out.pop("ss_tag_frequency", None)
    for key in ("ss_dataset_dirs", "ss_reg_dataset_dirs"):
        try:
            folders = json.loads(metadata[key])
            out[key] = json.dumps({f"dataset {i}": facts for i, facts in enumerate(folders.values(), 1)})
        except (KeyError, ValueError, AttributeError):
            continue
    try:
        recipe = tomllib.loads(metadata[RECIPE_KEY])
    except (KeyError, tomllib.TOMLDecodeError):
        return out
    for section in recipe.values():
        for name in (*DATASET_FOLDERS, *SAMPLE_TEXTS) if isinstance(section, dict) else ():
            section.pop(name, None)
    out[RECIPE_KEY] = tomli_w.dumps(recipe)
    return out


def print_info(path: Path, as_json: bool, strip: bool, captions: bool = False) -> bool:
    """Print what the file holds; whether it is a LoRA (a script's `lowvram info FILE || ...` tells one so)."""
    from rich.table import Table
    from rich.text import Text

    from lowvram.console import Console
    from lowvram.models.detect import base_model_words

    if strip or captions:
        changed = strip_paths(path, captions)
        what = "a local folder" + " or the dataset's captions and folder names" * captions
        print(f"{path}: {changed} metadata value(s) held {what}; rewritten without them" if changed
              else f"{path}: no {what.removeprefix('a ')} in its metadata; unchanged",
              file=sys.stderr if as_json else sys.stdout)  # (--json: stdout holds the JSON alone, for a script)
    info = describe(path)
    is_lora = info["network"] != "unknown" and not info["checkpoint"]
    options = info["network_options"]
    refused = options and network_weights_problem(NetworkConfig(**options, network_weights=str(path)))
    if as_json:  # (its network options then no flags to train it on with: said as the text says it)
        print(json.dumps(info | {"network_weights_refused": refused or None}, indent=2))
        return is_lora
    console = Console()
    ranks = info["ranks"]
    each = ", ".join(f"{rank} ({count} module{'s' * (count > 1)})" for rank, count in ranks.items())
    shown = f"rank {next(iter(ranks))}, " if len(ranks) == 1 else f"ranks {each}, " if ranks else ""
    base = f" for {info['base_model']}" if info["base_model"] else ""
    if info["demo_model"]:  # (said as "for SD1.5", it would be tried on a real one's)
        base = (f" for lowvram's built-in {info['demo_model']} demo model (random weights; no "
                f"{info['base_model'] or 'real'} checkpoint loads it)")
    model = base_model_words(path) if info["checkpoint"] or info["network"] == "unknown" else None  # (a VAE's too)
    what = (f"{model[0]}, not a LoRA (for train and generate, {model[1]})" if model
            else f"{info['network']}{base}, {info['modules']} modules, {shown}".rstrip(", "))
    if info["network"] == "unknown" and not model:  # (an embedding, a LyCORIS full file, ...)
        what = f"no layers lowvram reads: {lora_header.no_layers_why(path, fix=False)}"
    console.print(f"[bold]{path.name}[/]: {what}, {info['parameters']:,} parameters ({', '.join(info['dtypes'])}), "
                  f"{info['bytes'] / 2**20:.1f} MiB", soft_wrap=True)
    if info["trigger_words"]:  # (what ComfyUI's and AUTOMATIC1111's prompt needs, buried in the table otherwise)
        console.print(f"trigger words: {info['trigger_words']}", soft_wrap=True, highlight=False, markup=False)
    elif info["folder_words"]:
        console.print(f"trigger words: none recorded; its folders' words, which most of their captions hold (kohya's "
                      f"concept words): {info['folder_words']}", soft_wrap=True, highlight=False, markup=False)
    # (what a LoRA manager's card shows, at a glance; a scale only where every layer has the one rank)
    if trained := _trained_line(info["metadata"], options if len(ranks) == 1 else {}):
        console.print(trained, soft_wrap=True, highlight=False, markup=False)  # (a file's "[v2]" is no markup)
    if info["modules"]:  # (what ComfyUI's two strengths act on: a user set strength_clip on a U-Net-only LoRA)
        encoders, unet = info["text_encoder_modules"], info["unet_modules"]
        # (an SD1.5 file's one encoder was "the text encoders'", and its count of layers "(8)", unsaid)
        whose = "text encoders'" if info["text_encoders"] == 2 else "text encoder's"
        console.print(f"layers: the U-Net's ({unet}) and the {whose} ({encoders}): ComfyUI's strength_model and "
                      "strength_clip weigh each, AUTOMATIC1111's <lora:name:weight> both" if encoders and unet else
                      f"layers: the {whose} alone: ComfyUI's strength_model changes nothing (strength_clip "
                      "weighs them, as AUTOMATIC1111's <lora:name:weight> does)" if encoders else
                      "layers: the U-Net's alone: ComfyUI's strength_clip changes nothing (strength_model weighs it, "
                      "as AUTOMATIC1111's <lora:name:weight> does)", soft_wrap=True)
    if refused:  # (layers of several ranks: a --dynamic resize's, a merge's, or per-block ranks without their flags)
        console.print(f"[yellow]{refused}[/]", soft_wrap=True, highlight=False)
    elif options:
        flags = " ".join(as_flag_words(options))
        console.print(f"--network-weights reads its tensors as: {flags}", soft_wrap=True, highlight=False)
        said = _metadata_disagrees(info["metadata"], options)
        if said:
            console.print(f"[yellow]its metadata disagrees with its tensors, which are what loads: {said}[/]",
                          soft_wrap=True)
    if info["sha256"]:
        written = info["metadata"].get("sshs_model_hash")
        state = "" if not written else ", as its sshs_model_hash says" if written == info["addnet_hash"] else (
            f"; [yellow]its sshs_model_hash ({written[:12]}) is stale: its tensors changed after it was written, and "
            "AUTOMATIC1111 takes that hash instead of hashing the file[/]")
        console.print(f"hashes: AutoV2 {info['sha256'][:10].upper()} (Civitai's, of the whole file), addnet "
                      f"{info['addnet_hash'][:12]} (AUTOMATIC1111's, of its tensors){state}", soft_wrap=True)
    if not info["metadata"]:
        console.print("no metadata (the file says nothing of how it was trained)")
        return is_lora
    table = Table(title="metadata")
    table.add_column("key", overflow="fold")  # folded in a narrow terminal, rather than squeezing the values out
    table.add_column("value", min_width=12, overflow="fold")
    metadata = info["metadata"]  # a multi-line value (lowvram.config's TOML) last: it would push the rest down
    for key in sorted(metadata, key=lambda key: ("\n" in _shown(key, metadata[key]), key)):
        table.add_row(key, Text(_shown(key, info["metadata"][key])))  # as text: TOML's [section] is no markup
    console.print(table)
    if RECIPE_KEY in metadata:
        try:
            needs = recipe_needs(read_toml(path, recipe=metadata[RECIPE_KEY]))
        except LowvramError:  # (an edited recipe: --config names what is wrong)
            needs = []
        again = shell_line("lowvram", "train", "--config", path, *[word for name in needs for word in (
            flag_name(fields_by_name()[name][1]), fields_by_name()[name][1].metadata.get("metavar") or "PATH")])
        console.print(f"its recipe trains again with: {again}", soft_wrap=True, highlight=False)
    if info["private_paths"]:
        console.print(f"[yellow]{len(info['private_paths'])} local folder(s) in the metadata (e.g. "
                      f"{info['private_paths'][0]}); lowvram info --strip-paths {path} removes them[/]", soft_wrap=True)
    return is_lora


LONG_VALUE = 400  # characters of a metadata value the table shows


def folder_words(metadata: dict[str, str]) -> str:
    """The words of a kohya LoRA's N_name folders (10_janedoe woman: janedoe woman) that at least half of each
    folder's images have as a caption tag, by its ss_tag_frequency and ss_dataset_dirs ("" for none)."""
    try:
        tags, dirs = json.loads(metadata.get("ss_tag_frequency", "{}")), json.loads(metadata.get("ss_dataset_dirs",
                                                                                                "{}"))
    except ValueError:
        return ""
    words = []
    for folder, counts in tags.items() if isinstance(tags, dict) and isinstance(dirs, dict) else ():
        label = folder.split("_", 1)[1].strip() if re.fullmatch(r"\d+_.+", folder) else ""
        own = dirs.get(folder)
        images = own.get("img_count") if isinstance(own, dict) else None
        held = counts.get(label) if isinstance(counts, dict) and label else None
        if held and isinstance(images, int) and images > 0 and held * 2 >= images and label not in words:
            words.append(label)
    return ", ".join(words)


def _shown(key: str, value: str) -> str:
    """ss_tag_frequency is a JSON of every caption tag: its most frequent ones are what a reader wants."""
    if key == "ss_tag_frequency":
        try:
            counts: dict[str, int] = {}
            for tags in json.loads(value).values():
                for tag, count in tags.items():
                    counts[tag] = counts.get(tag, 0) + count
            top = sorted(counts.items(), key=lambda item: -item[1])[:10]
            return ", ".join(f"{tag} ({count})" for tag, count in top) + (" ..." if len(counts) > 10 else "")
        except (ValueError, AttributeError):
            return value
    if len(value) > LONG_VALUE and "\n" not in value:  # (a modelspec.thumbnail's base64 image filled 900 lines;
        # lowvram.config's TOML, in lines, is the recipe the table shows whole)
        return f"{value[:LONG_VALUE // 2]} ... ({len(value):,} characters; --json shows it whole)"
    return value
