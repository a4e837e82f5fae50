"""Which family a model is, from its name, its safetensors header or its configs: no weights are read and
torch is not imported, so `lowvram plan` and `check-data` answer at once."""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import re
from collections import Counter
from pathlib import Path

from lowvram.errors import PICKLE_SUFFIXES, LowvramError, first_line, not_safetensors, pickle_refusal
from lowvram.files import expand_home, not_found_hint
from lowvram.models.families import FAMILIES, ModelFamily, family_for_pipeline

WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
VAE_PREFIX, TEXT_ENCODER_PREFIXES = "first_stage_model.", ("cond_stage_model.", "conditioner.")  # in a single file
UNET_PREFIX = "model.diffusion_model."
BARE_UNET_BLOCKS = ("input_blocks.", "middle_block.", "output_blocks.")  # the original layout's, without it
UNET_IN = UNET_PREFIX + "input_blocks.0.0.weight"  # a single file's U-Net stem: (320, in_channels, 3, 3)
# U-Nets that read more than the noisy latent, by their input channels (text-to-image U-Nets read 4)
IMAGE_CONDITIONED = {9: "an inpainting model", 8: "an image-editing model like instruct-pix2pix",
                     7: "an upscaler", 5: "a depth-to-image model"}


class UnknownCheckpoint(LowvramError):
    """A readable checkpoint of a U-Net lowvram does not know (--model-family may still say which it is)."""


def detect_family(model: str, family: str | None = None) -> ModelFamily:
    """The family of `model` from names, headers and configs only: no weights are read. `family`
    (--model-family) names it where detection cannot (an unknown checkpoint, a hub id offline); where detection
    finds another family, the two disagree and that is an error, not a guess."""
    forced = FAMILIES[family] if family else None
    path = expand_home(model)
    if model in FAMILIES and not path.exists():
        found = FAMILIES[model]
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        raise LowvramError(pickle_refusal("--model", model))
    elif path.is_file():
        try:
            found = detect_single_file_family(path)
        except UnknownCheckpoint:
            if forced is None or not path.suffix.lower() == ".safetensors":
                raise
            found = forced  # an unknown U-Net: --model-family says what it is
    elif path.is_dir():
        found = diffusers_folder_family(path)
    elif any(model == f.hub_id for f in FAMILIES.values()):  # a family's own repository: known without the hub
        found = next(f for f in FAMILIES.values() if model == f.hub_id)
    elif is_plainly_local(model):
        raise path_not_found("--model", model)
    elif "/" not in model:  # no hub id (owner/name), no file or folder here: a built-in model's name mistyped?
        near = difflib.get_close_matches(model.lower(), list(FAMILIES), n=1, cutoff=0.6)
        raise LowvramError(f"--model: '{model}' is no file or folder here, nor a built-in model ("
                           f"{', '.join(FAMILIES)})" + (f"; did you mean '{near[0]}'?" if near else "; give a "
                           ".safetensors file, a diffusers folder or a hub id (owner/name)"))
    elif forced is not None:
        return forced  # a hub id: no download just to confirm what the user said
    else:
        found = _hub_family(model)
    if forced is not None and found is not forced:
        raise LowvramError(f"--model-family {forced.name}: {model} is {found.title} ({found.name}), not "
                           f"{forced.title}; drop --model-family, or pass a {forced.title} model")
    return found


def is_plainly_local(name: str) -> bool:
    """Whether `name` can only be a path on this machine, never a hub id ("owner/repo"): it starts at a root, the
    current or the home folder or a drive, has more than one `/`, ends in a weights extension, or its first part
    is a folder here holding a name close to its second (`models/tinydif`, a typo of `models/tinydiff`; a
    `stabilityai/` folder of other downloads leaves `stabilityai/sdxl-turbo` a hub id)."""
    if name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in name or re.match(r"[A-Za-z]:", name):
        return True
    if name.count("/") > 1 or Path(name).suffix.lower() in WEIGHT_SUFFIXES:
        return True
    if "/" not in name or not Path(name.split("/", 1)[0]).is_dir():
        return False
    folder, entry = name.split("/", 1)
    return bool(difflib.get_close_matches(entry, [p.stem for p in Path(folder).iterdir()], n=1))


def path_not_found(flag: str, name: str) -> LowvramError:
    """`flag`'s local file or folder is not there; the closest name beside where it should be, if one is close."""
    return LowvramError(f"{flag}: file or folder not found: {name}{not_found_hint(name)}")


def read_json(file: Path, flag: str = "--model") -> dict:
    """A model's JSON config; a broken one is a one-line error naming the file and where it breaks."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        reason = exc.msg.removesuffix(" at").removesuffix(" starting")  # "Unterminated string starting at"
        raise LowvramError(f"{flag}: {file} is not valid JSON (line {exc.lineno} column {exc.colno}): {reason}; "
                           "restore it from the model's source") from None
    except UnicodeDecodeError:
        raise LowvramError(f"{flag}: {file} is not valid JSON (not UTF-8 text); restore it from the model's "
                           "source") from None
    if not isinstance(value, dict):
        raise LowvramError(f"{flag}: {file} is not valid JSON for a config (a {type(value).__name__}, not an "
                           "object); restore it from the model's source")
    return value


def _hub_family(model: str) -> ModelFamily:
    try:
        from huggingface_hub import hf_hub_download

        with quiet_hub():
            index = hf_hub_download(model, "model_index.json")
            unet = hf_hub_download(model, "config.json", subfolder="unet")
    except Exception as exc:  # noqa: BLE001 - hub, network and auth errors have no common base class
        here = expand_home(model.split("/", 1)[0])  # models/typo: in a folder here, as likely as a hub id
        where = f"not in the folder {here}/ here" if here.is_dir() else "not a local file or folder"
        raise LowvramError(f"--model: '{model}' is {where}, and its config could not be fetched "
                           f"from the hub ({hub_failure(exc)}); pass a local .safetensors file or diffusers folder, "
                           "or (a hub id, offline) --model-family") from None
    return folder_family(Path(index), Path(unet), model)


PART_ORDER = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def diffusers_folder_family(folder: Path) -> ModelFamily:
    """The family of a local diffusers folder, once every part the loader reads is there with a valid config and
    .safetensors weights: a copy that lost a part is named here, before diffusers fails on it in loading."""
    index_file = folder / "model_index.json"
    if index_file.is_file():
        index = read_json(index_file)
        parts = {name: entry for name, entry in index.items()  # the loader passes safety_checker=None
                 if isinstance(entry, list) and len(entry) == 2 and entry[0] and name != "safety_checker"}
        names = sorted(parts, key=lambda n: (PART_ORDER.index(n) if n in PART_ORDER else len(PART_ORDER), n))
        for name in names:
            if not (folder / name).is_dir():
                raise LowvramError(f"--model: {folder} has no {name}/ (a diffusers model folder needs "
                                   f"{', '.join(n + '/' for n in names)}); copy the whole model")
        for name in names:
            check_model_part(folder / name, *parts[name])
    return folder_family(index_file, folder / "unet" / "config.json", str(folder))


def check_model_part(part: Path, library: str, class_name: str, flag: str = "--model") -> None:
    """One part of a diffusers model (unet/, vae/, tokenizer/, …) has what its `library` class loads from: its
    config (valid JSON) and, for a network, .safetensors weights; pickles are named with the command that
    converts them."""
    if not any(part.iterdir()):
        raise LowvramError(f"{flag}: {part} is empty; copy the whole model")
    if "Tokenizer" in class_name:
        return  # vocab.json + merges.txt, or tokenizer.json: transformers names what it lacks
    config = ("scheduler_config.json" if class_name.endswith("Scheduler")
              else "preprocessor_config.json" if class_name.endswith(("ImageProcessor", "FeatureExtractor"))
              else "config.json")
    if not (part / config).is_file():
        raise LowvramError(f"{flag}: no {config} in {part}; copy the whole model")
    read_json(part / config, flag)
    if config != "config.json" or any(part.glob("*.safetensors")):
        return
    weights = "diffusion_pytorch_model.safetensors" if library == "diffusers" else "model.safetensors"
    pickles = sorted(p for p in part.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:  # converted to the name `library` looks for (transformers': model.safetensors)
        raise LowvramError(pickle_refusal(flag, str(pickles[0]), part / weights))
    raise LowvramError(f"{flag}: no weights in {part} ({weights}); copy the whole model")


def refuse_image_conditioned(name: str, in_channels: object) -> None:
    """A U-Net that reads more than the noisy latent (inpainting, instruct-pix2pix, …) can't train here."""
    if in_channels is None or in_channels == 4:
        return
    kind = IMAGE_CONDITIONED.get(in_channels if isinstance(in_channels, int) else 0, "not a text-to-image model")
    raise LowvramError(f"--model: {name} is {kind} ({in_channels} input channels); lowvram trains SD1.5 and SDXL "
                       "text-to-image models: give the base model")


def folder_family(index_file: Path, unet_file: Path, name: str) -> ModelFamily:
    if not index_file.is_file():
        # (a checkpoints folder, ComfyUI's or AUTOMATIC1111's: the file in it is what was meant)
        folder = index_file.parent
        held = sorted(path.name for path in folder.glob("*") if path.suffix.lower() in WEIGHT_SUFFIXES
                      and not _a_lora(path)) if folder.is_dir() else []
        inside = (f"; it holds {'one weights file' if len(held) == 1 else f'{len(held)} weights files, such as'} "
                  f"{folder / held[0]}: give the file itself" if held else "")
        if (folder / "config.json").is_file() and (folder.parent / "model_index.json").is_file():
            inside = f"; it is one part of one: give the model's folder, {folder.parent}"
        # (a UI's whole install: its checkpoints folder is where the file is)
        models = next((place / name for place in (folder / "models", folder)
                       for name in ("checkpoints", "Stable-diffusion") if (place / name).is_dir()), None)
        if not held and models is not None:
            inside = f"; it is a UI's install: give a checkpoint file from {models}"
        loras = sorted(path for path in folder.glob("*.safetensors") if _a_lora(path)) if not held and \
            folder.is_dir() else []
        if loras:  # (--format diffusers' <name>-diffusers/, diffusers' save_lora_weights)
            inside = (f"; it holds a LoRA, {loras[0].name}, not a model: pass a checkpoint to --model (a "
                      "LoRA goes to generate's --lora, merge's FILEs or train's --network-weights)")
        raise LowvramError(f"--model: {name} is a folder without model_index.json, so not a diffusers model"
                           f"{inside or '; pass a diffusers folder or a .safetensors checkpoint'}")
    index = read_json(index_file)
    if not unet_file.is_file():  # an index that names no unet (an SD3 or Flux pipeline has a transformer)
        kind = index.get("_class_name")
        # an SD or SDXL pipeline (text-to-image, img2img, inpainting: each of a U-Net), or none named
        if not kind or (kind.startswith("StableDiffusion") and not kind.startswith("StableDiffusion3")):
            raise LowvramError(f"--model: {name}: its model_index.json names no unet, so it is no whole diffusers "
                               "model; copy the whole model, or pass a .safetensors checkpoint")
        raise LowvramError(f"--model: {name} is a {kind} without a U-Net; lowvram trains SD1.5 and SDXL models")
    unet_config = read_json(unet_file)
    refuse_image_conditioned(name, unet_config.get("in_channels", 4))
    family = family_for_pipeline(index.get("_class_name", ""), unet_config.get("cross_attention_dim"))
    if family is None:
        width = unet_config.get("cross_attention_dim")
        known = OTHER_MODELS.get(width) if isinstance(width, int) else None
        raise LowvramError(f"--model: {name} is " + (known or f"a {index.get('_class_name')} with cross-attention "
                           f"width {width}; lowvram trains SD1.5 and SDXL models"))
    return family


WEIGHT_DTYPES = ("F32", "F16", "BF16")
MODEL_PARTS = ("unet", "text_encoder", "text_encoder_2", "vae")  # the folders of a diffusers model loading reads


def folder_variant(path: Path) -> str | None:
    """"fp16" for a diffusers folder some part of which holds only .fp16 variant weights (a hub download of the
    fp16 variant alone), which diffusers loads only when told the variant; None where every part has its own."""
    for part in MODEL_PARTS:
        files = [file.name for file in (path / part).glob("*.safetensors")] if (path / part).is_dir() else []
        if files and all(name.endswith(".fp16.safetensors") for name in files):
            return "fp16"
    return None


HEADER_DTYPES = {"F16": "fp16", "BF16": "bf16", "F32": "fp32"}  # safetensors' names: lowvram's


def stored_precision(model: str) -> str:
    """The precision a model's weights are stored in, as loading them keeps them: a local safetensors model's own,
    fp32 for a built-in one (tiny, as it trains), else fp16 (a hub model's, as lowvram loads one)."""
    if model in FAMILIES and FAMILIES[model].full_size:  # (a shrunk family: sd15's and sdxl's are "")
        return "fp32"
    stored = checkpoint_storage(model)
    return HEADER_DTYPES.get(stored[1], "fp16") if stored else "fp16"


def checkpoint_storage(model: str) -> tuple[int, str] | None:
    """(bytes on disk, the dtype most of its weight bytes are stored in) of a local safetensors model: a single
    file, or the files of a diffusers folder that loading reads (not its .fp16 variants); None for a hub id, a
    family name or anything unreadable (the planner then assumes weights stored as it computes)."""
    path = expand_home(model)
    if path.is_file() and path.suffix.lower() == ".safetensors":
        files = [path]
    elif path.is_dir():
        files = []
        for part in MODEL_PARTS:  # the files loading reads: each part's own, or its .fp16 variant's where it has only
            held = sorted((path / part).glob("*.safetensors"))  # those (a variant folder, diffusers told so)
            files += [file for file in held if file.name.count(".") == 1] or [
                file for file in held if file.name.endswith(".fp16.safetensors")]
    else:
        return None
    try:
        return _storage(tuple((str(file), file.stat().st_mtime_ns, file.stat().st_size) for file in files))
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=8)  # the UI plans on every change; a header costs a read
def _storage(files: tuple[tuple[str, int, int], ...]) -> tuple[int, str] | None:
    from lowvram.lora_header import read_header

    stored: Counter[str] = Counter()
    for name, _, _ in files:
        for entry in read_header(Path(name))[1].values():
            if isinstance(entry, dict) and entry.get("dtype") in WEIGHT_DTYPES:
                start, end = entry["data_offsets"]
                stored[entry["dtype"]] += end - start
    return (sum(size for _, _, size in files), stored.most_common(1)[0][0]) if stored else None


def checkpoint_title(path: Path) -> str | None:
    """The family's name of a single-file base model (what --model takes), by its header; None for a file of
    anything else (a LoRA given where a model goes, or a model where a LoRA goes, is named so)."""
    try:
        return detect_single_file_family(path, whole=False).title
    except LowvramError:
        return None


def unet_alone(path: Path) -> bool:
    """Whether a file of a family's U-Net (checkpoint_title says one) lacks its VAE and text encoders, as ComfyUI's
    models/unet files do: --model refuses it."""
    try:
        detect_single_file_family(path, whole=True)
    except LowvramError:
        return True
    return False


def base_model_words(path: Path) -> tuple[str, str] | None:
    """(what a single-file base model is, what to do with it instead of using it as a LoRA), by its header; None
    for a file of anything else."""
    title = checkpoint_title(path)
    if title is None:
        from lowvram.lora_header import read_header

        with contextlib.suppress(OSError, ValueError):  # a VAE alone (ComfyUI's models/vae): not a LoRA's layers
            keys = [key for key in read_header(path)[1] if key != "__metadata__"]
            if (_what_else(keys) or "").startswith("is a VAE"):
                return "a VAE", "give it as --vae"
        return None
    if unet_alone(path):
        return (f"a {title} U-Net alone (as ComfyUI's models/unet files are)",
                "give the full checkpoint it came from as --model")
    return f"a {title} model checkpoint", "give it as --model"


def detect_single_file_family(path: Path, whole: bool = True) -> ModelFamily:
    """Identify a single-file checkpoint from its header (key names and shapes; no tensor is read); `whole`: one
    with its VAE and text encoders, as --model needs (a U-Net alone is refused)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:  # the header only, without torch
            keys = list(f.keys())
            # a U-Net alone saved without its prefix (ComfyUI's models/unet files may be) is read as with it
            bare = UNET_PREFIX if any(k.startswith(BARE_UNET_BLOCKS) for k in keys) and not any(
                k.startswith(UNET_PREFIX) for k in keys) else ""
            shapes = {bare + k: tuple(f.get_slice(k).get_shape()) for k in keys
                      if "attn2.to_k.weight" in k or bare + k == UNET_IN}
    except (OSError, SafetensorError) as exc:
        raise LowvramError("--model: " + not_safetensors(path, exc, "give a model checkpoint (.safetensors) or a "
                                                           "diffusers folder, or re-download a broken one")) from None
    stem = shapes.pop(UNET_IN, ())
    if len(stem) == 4:
        refuse_image_conditioned(str(path), stem[1])
    for family in FAMILIES.values():
        if not all(shapes.get(key) == shape for key, shape in family.fingerprint):
            continue
        if whole and not any(key.startswith((VAE_PREFIX, *TEXT_ENCODER_PREFIXES)) for key in keys):
            # (diffusers named the part missing only as it loaded: after a dataset's scan)
            encoders = "text encoders" if len(family.text_encoders) > 1 else "text encoder"
            raise LowvramError(f"--model: {path} is a {family.title} U-Net alone (as ComfyUI's models/unet files "
                               f"are), without its VAE and {encoders}; pass a full checkpoint (as in "
                               "models/checkpoints) or a diffusers folder")
        return family
    other = _what_else(keys)
    if other:  # (no --model-family makes these a model)
        raise LowvramError(f"--model: {path} {other}")
    widths = sorted({shape[-1] for shape in shapes.values()})
    known = OTHER_MODELS.get(widths[0]) if widths else None
    if known:  # (no --model-family makes it one: the run would fail at loading, after the dataset's scan)
        raise LowvramError(f"--model: {path} is {known}")
    raise UnknownCheckpoint(f"--model: {path} has an unknown U-Net (cross-attention width {widths}); lowvram "
                            "trains SD1.5 and SDXL; if it is one of those, say which with --model-family")


# cross-attention widths of the U-Nets people mistake for a trainable base
OTHER_MODELS = {
    1024: "a Stable Diffusion 2.x model (cross-attention width 1024), which lowvram does not train; pass an SD1.5 or "
          "SDXL checkpoint",
    1280: "the SDXL refiner (cross-attention width 1280), which lowvram does not train: LoRAs are trained on the SDXL "
          "base, as kohya and OneTrainer train them (the refiner, if used, runs after it as it is); pass an SDXL "
          "base checkpoint"}


def looks_like_lora(keys) -> bool:
    """Whether a file's tensor names are a LoRA's (kohya's, LyCORIS', peft's, diffusers' old and new), not a model's
    or a VAE's."""
    return any(k.startswith(("lora_", "lycoris_")) or ".lora_" in k or "lora_A" in k or "lora.down." in k
               or ".alpha" in k for k in keys)


def _a_lora(path: Path) -> bool:
    """Whether a .safetensors file's header is a LoRA's (a pickle's is not read)."""
    from lowvram.lora_header import read_header

    try:
        return path.suffix.lower() == ".safetensors" and looks_like_lora(read_header(path)[1])
    except (OSError, ValueError, LowvramError):
        return False


def _what_else(keys: list[str]) -> str | None:
    """What a file with no U-Net of a Stable Diffusion probably is, and what to pass instead; None for one with."""
    if looks_like_lora(keys):
        return ("is a LoRA, not a model; pass a checkpoint to --model (a LoRA goes to generate's --lora, "
                "merge's FILEs or train's --network-weights)")
    if any(k.startswith("model.diffusion_model.joint_blocks") for k in keys):
        return "is a Stable Diffusion 3 checkpoint; lowvram trains SD1.5 and SDXL models"
    if any("double_blocks" in k for k in keys):
        return "is a Flux checkpoint; lowvram trains SD1.5 and SDXL models"
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        # a CLIP text encoder's (transformers writes it without its text_model. prefix): its encoder.layers are not
        # a VAE's encoder
        if any("token_embedding" in k or k.startswith(("encoder.layers.", *TEXT_ENCODER_PREFIXES))
               for k in keys):
            return ("is a text encoder alone, not a full checkpoint; pass a full SD1.5 or SDXL checkpoint, or the "
                    "whole diffusers folder it came from")
        # (a VAE's own layers: T5's encoder.block.* is a text encoder's)
        if any(k.startswith(("encoder.conv_in.", "decoder.conv_out.", "quant_conv.", VAE_PREFIX)) for k in keys):
            return "is a VAE, not a full checkpoint; pass a full SD1.5 or SDXL checkpoint"
        if any(k.startswith(("down_blocks.", "conv_in.", "text_model.")) for k in keys):
            return "is a single diffusers component; pass the whole diffusers folder (with model_index.json)"
        return "has no U-Net (no model.diffusion_model.* keys); pass a full SD1.5 or SDXL checkpoint"
    return None


# what the hub's libraries say, in their many wordings, when it cannot be reached and nothing is cached
UNREACHABLE = ("outgoing traffic has been disabled", "offline", "connection", "name or service not known",
               "not fully cached", "cannot find the requested files in the local cache", "timed out")


def hub_failure(exc: BaseException) -> str:
    """Why the hub gave no model, in a few words: diffusers and huggingface_hub say it in sentences of advice for
    their own API (local_files_only=False, "the stacktrace above"), the cause often a few exceptions down."""
    from huggingface_hub import errors

    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for cause in chain:
        if isinstance(cause, errors.GatedRepoError):
            return "the model is gated: accept its terms on huggingface.co, then log in (hf auth login)"
        if isinstance(cause, errors.RepositoryNotFoundError):
            return "no such model on the hub: check the id (a private one needs hf auth login)"
    said = " ".join(str(cause) for cause in chain).lower()
    if any(words in said for words in UNREACHABLE):
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
        return f"{why}, and the model is not in Hugging Face's cache, {constants.HF_HUB_CACHE} (HF_HOME moves it)"
    return first_line(chain[0])[:200]


@contextlib.contextmanager
def quiet_hub():
    """huggingface_hub's retries (a warning each, 'Retrying in 8s [Retry 4/5]') off the terminal: the one line
    that ends them says it."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
