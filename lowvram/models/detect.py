"""Which family a model is, from its name, its safetensors header or its configs: no weights are read and
torch is not imported, so `lowvram plan` and `check-data` answer at once."""

from __future__ import annotations

import json
from pathlib import Path

from lowvram.errors import PICKLE_SUFFIXES, LowvramError, pickle_refusal
from lowvram.models.families import FAMILIES, ModelFamily, family_for_pipeline


def detect_family(model: str, family: str | None = None) -> ModelFamily:
    """The family of `model` from names, headers and configs only: no weights are read. `family`
    (--model-family) names it where detection cannot (an unknown checkpoint, a hub id offline); where detection
    finds another family, the two disagree and that is an error, not a guess."""
    forced = FAMILIES[family] if family else None
    path = Path(model).expanduser()
    if model in FAMILIES and not path.exists():
        found = FAMILIES[model]
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        raise LowvramError(pickle_refusal("--model", model))
    elif path.is_file():
        try:
            found = detect_single_file_family(path)
        except LowvramError:
            if forced is None or not path.suffix.lower() == ".safetensors":
                raise
            found = forced  # an unknown U-Net: --model-family says what it is
    elif path.is_dir():
        found = folder_family(path / "model_index.json", path / "unet" / "config.json", str(path))
    elif forced is not None:
        return forced  # a hub id: no download just to confirm what the user said
    elif any(model == f.hub_id for f in FAMILIES.values()):  # a family's own repository: known without the hub
        found = next(f for f in FAMILIES.values() if model == f.hub_id)
    else:
        found = _hub_family(model)
    if forced is not None and found is not forced:
        raise LowvramError(f"--model-family {forced.name}: {model} is {found.title} ({found.name}), not "
                           f"{forced.title}; drop --model-family, or pass a {forced.title} model")
    return found


def _hub_family(model: str) -> ModelFamily:
    try:
        from huggingface_hub import hf_hub_download

        index = hf_hub_download(model, "model_index.json")
        unet = hf_hub_download(model, "config.json", subfolder="unet")
    except Exception as exc:  # noqa: BLE001 - hub, network and auth errors have no common base class
        raise LowvramError(f"--model: '{model}' is not a local file or folder, and its config could not be fetched "
                           f"from the hub ({first_line(exc)}); offline, --model-family names its family") from None
    return folder_family(Path(index), Path(unet), model)


def folder_family(index_file: Path, unet_file: Path, name: str) -> ModelFamily:
    if not index_file.is_file():
        raise LowvramError(f"--model: {name} is a folder without model_index.json, so not a diffusers model; "
                           "pass a diffusers folder or a .safetensors checkpoint")
    index = json.loads(index_file.read_text())
    unet_config = json.loads(unet_file.read_text()) if unet_file.is_file() else {}
    family = family_for_pipeline(index.get("_class_name", ""), unet_config.get("cross_attention_dim"))
    if family is None:
        raise LowvramError(f"--model: {name} is a {index.get('_class_name')} with cross-attention width "
                           f"{unet_config.get('cross_attention_dim')}; lowvram trains SD1.5 and SDXL models")
    return family


def detect_single_file_family(path: Path) -> ModelFamily:
    """Identify a single-file checkpoint from its header (key names and shapes; no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:  # the header only, without torch
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys if "attn2.to_k.weight" in k}
    except (OSError, SafetensorError) as exc:
        raise LowvramError(f"--model: {path} is not a readable .safetensors file ({exc}); re-download it") from None
    for family in FAMILIES.values():
        if all(shapes.get(key) == shape for key, shape in family.fingerprint):
            return family
    raise LowvramError(f"--model: {path} {_describe_unknown_checkpoint(keys, shapes)}")


def _describe_unknown_checkpoint(keys: list[str], shapes: dict[str, tuple[int, ...]]) -> str:
    """Name what a checkpoint we can't train on probably is, and what to pass instead."""
    if any(k.startswith(("lora_", "lycoris_")) or ".lora_" in k or "lora_A" in k or ".alpha" in k for k in keys):
        return ("is a LoRA, not a base model; pass a base checkpoint to --model "
                "(and this file to `lowvram generate --lora`)")
    if any(k.startswith("model.diffusion_model.joint_blocks") for k in keys):
        return "is a Stable Diffusion 3 checkpoint; lowvram trains SD1.5 and SDXL models"
    if any("double_blocks" in k for k in keys):
        return "is a Flux checkpoint; lowvram trains SD1.5 and SDXL models"
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys):
            return "is a VAE, not a full checkpoint; pass a full SD1.5 or SDXL checkpoint"
        if any(k.startswith(("down_blocks.", "conv_in.", "text_model.")) for k in keys):
            return "is a single diffusers component; pass the whole diffusers folder (with model_index.json)"
        return "has no U-Net (no model.diffusion_model.* keys); pass a full SD1.5 or SDXL checkpoint"
    widths = sorted({shape[-1] for shape in shapes.values()})
    guess = {1024: " (Stable Diffusion 2.x)", 1280: " (SDXL refiner)"}.get(widths[0] if widths else 0, "")
    return (f"has an unknown U-Net (cross-attention width {widths}){guess}; lowvram trains SD1.5 and SDXL; "
            "if it is one of those, say which with --model-family")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
