"""LoRAs in diffusers' and peft's layout (`unet.<module>.lora_A.weight`, a peft adapter's `base_model.model.<module>`,
and diffusers' older `processor.to_q_lora`, `.lora.down` and `lora_linear_layer` names: what `train --format
diffusers`, the diffusers example scripts and SimpleTuner write) seen under kohya's names, so that every reader of
kohya files (merge, resize, --network-weights, --base-weights) takes them too. Names and shapes only: no torch.

The alphas come from the adapter metadata diffusers writes beside the weights (`lora_adapter_metadata`: each part's
lora_alpha, alpha_pattern and use_rslora); a file without it is read at alpha = rank, as diffusers reads it. Here an
SDXL U-Net's layers keep diffusers' block names (lora_unet_down_blocks_1_...), which the header's readers need
alone; the tensors' reader (`adapters.lora_files.in_kohya_names`) renames them to kohya's original layout."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from lowvram.models.families import FAMILIES

# (a diffusers/peft tensor name's ending, the kohya/LyCORIS suffix of the same tensor)
SUFFIXES = ((".lora_A.weight", "lora_down.weight"), (".lora_B.weight", "lora_up.weight"),
            (".lora_magnitude_vector.weight", "dora_scale"), (".lora_magnitude_vector", "dora_scale"),
            (".lora.down.weight", "lora_down.weight"), (".lora.up.weight", "lora_up.weight"),
            (".lora_linear_layer.down.weight", "lora_down.weight"),
            (".lora_linear_layer.up.weight", "lora_up.weight"), (".lora_B.bias", "lora_up.bias"), (".alpha", "alpha"))
# peft's names with the adapter's name in them (`lora_A.default.weight`), as a peft model's own state dict holds them
NAMED_ADAPTER = re.compile(r"\.lora_([AB])\.[A-Za-z0-9_-]+\.weight$|\.lora_magnitude_vector\.(?!weight$)[A-Za-z0-9_-]+"
                           r"(?:\.weight)?$")
# diffusers' older attention processors: `<attention>.processor.to_q_lora.down.weight` adapts `<attention>.to_q`
PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
ADAPTER_METADATA = "lora_adapter_metadata"  # the metadata key of diffusers' peft settings (its own constant's value)
ADAPTER_CONFIG = "adapter_config.json"  # what peft's save_pretrained writes beside adapter_model.safetensors
PEFT_WRAPPER = "base_model.model."  # what a peft adapter saved on its own (PeftModel.save_pretrained) starts with
OWN_PARTS = ("unet", "text_encoder", "text_encoder_2")
# the modules an SD1.5 or SDXL U-Net holds at its top: a peft adapter's names without the part's (a U-Net's alone)
UNET_MODULES = ("down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
                "add_embedding")
UNET_ONLY_SDXL = re.compile(r"transformer_blocks\.[1-9]|^add_embedding\.")  # SD1.5's have one transformer block each


# OneTrainer's omi layout (the Open Model Initiative's, of every OneTrainer backup): each part's module paths, the
# U-Net's in the original layout, under the part's word, with kohya's suffixes (`unet.input_blocks.4.1.proj_in
# .lora_down.weight`, `clip_l.text_model.encoder.layers.0.mlp.fc1.alpha`)
OMI_PARTS = {"unet": "lora_unet", "clip_l": "lora_te", "clip_g": "lora_te2"}
KOHYA_SUFFIX = re.compile(r"\.(lora_(?:down|up|mid)\.weight|alpha|dora_scale|hada_\w+|lokr_\w+)$")
OMI_ONLY_SDXL = re.compile(r"^unet\.(?:label_emb\.|.*\.transformer_blocks\.[1-9]\.)")


OMI_EMBEDDINGS = "bundle_emb."  # the textual-inversion embeddings OneTrainer bundles with a LoRA: not a LoRA's layers
LEFT_OUT = ""  # a view's name for a tensor no reader takes (a bundled embedding, which lowvram does not apply)


def in_omi_layout(names) -> bool:
    """Whether tensor names are OneTrainer's omi layout of an SD1.5 or SDXL LoRA (bundled embeddings beside)."""
    names = [name for name in names if not name.startswith(OMI_EMBEDDINGS)]
    return bool(names) and all(name.partition(".")[0] in OMI_PARTS and KOHYA_SUFFIX.search(name) for name in names)


def omi_view(names) -> dict[str, str] | None:
    """{tensor name: kohya name} of a file in OneTrainer's omi layout (the U-Net's in the original layout, which
    every reader of lowvram's places, SD1.5's too); None for a file in any other."""
    if not in_omi_layout(names):
        return None
    sdxl = any(name.startswith("clip_g.") or OMI_ONLY_SDXL.match(name) for name in names)
    prefixes = OMI_PARTS | ({"clip_l": "lora_te1"} if sdxl else {})
    renames = {name: LEFT_OUT for name in names if name.startswith(OMI_EMBEDDINGS)}
    for name in names:
        if name in renames:
            continue
        part, _, rest = name.partition(".")
        suffix = KOHYA_SUFFIX.search(rest)
        renames[name] = f"{prefixes[part]}_{rest[:suffix.start()].replace('.', '_')}.{suffix[1]}"
    return renames


def in_diffusers_layout(names) -> bool:
    """Whether tensor names are diffusers' or peft's LoRA names of an SD1.5 or SDXL model's parts (a U-Net, its
    text encoders), rather than kohya's or those of another kind of model (FLUX's `transformer.`, Wan's `blocks.`)."""
    parts = [parts[0] for name in names if not name.startswith("lora_") and (parts := _split(name))]
    return bool(parts) and all(part in OWN_PARTS for part in parts)


def foreign_part(names) -> str | None:
    """The model part a file's diffusers/peft LoRA names adapt where it is none of SD1.5's or SDXL's (FLUX's
    `transformer`), for the line that refuses it."""
    return next((parts[0] for name in names if (parts := _split(name)) and parts[0] not in OWN_PARTS), None)


def kohya_view(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str]
               ) -> tuple[dict[str, str], dict[str, float]] | None:
    """For a file in diffusers' or peft's layout ({tensor name: shape}, its metadata): ({its tensor name: the
    kohya name of that tensor}, {kohya layer: alpha} for the layers that hold no alpha tensor). None for a file in
    any other layout; a name that is no LoRA tensor is not renamed (its reader then refuses it by name)."""
    if (omi := omi_view(shapes)) is not None:  # (its alphas are tensors of their own)
        return omi, {}
    if not in_diffusers_layout(shapes):
        return None
    split = {name: parts for name in shapes if (parts := _split(name))}
    sdxl = any(component == "text_encoder_2" or component == "unet" and UNET_ONLY_SDXL.search(path)
               for component, path, _ in split.values())
    family = next(f for f in FAMILIES.values() if len(f.text_encoders) == (2 if sdxl else 1))
    prefixes = {"unet": "lora_unet"} | {spec.component: spec.kohya_prefix for spec in family.text_encoders}
    configs = _adapter_configs(metadata)
    renames: dict[str, str] = {}
    alphas: dict[str, float] = {}
    for name, (component, path, suffix) in split.items():
        if component not in prefixes:
            continue
        kohya_path = path if component == "unet" or path.startswith("text_model.") else "text_model." + path
        base = f"{prefixes[component]}_{kohya_path.replace('.', '_')}"
        renames[name] = f"{base}.{suffix}"
        if suffix == "lora_down.weight":
            config, rank = configs.get(component, {}), shapes[name][0]
            alpha = float(_pattern_value(config.get("alpha_pattern"), path, config.get("lora_alpha")) or rank)
            # rank-stabilized LoRA scales by alpha / sqrt(rank); kohya's readers by alpha / rank
            alphas[base] = alpha * math.sqrt(rank) if config.get("use_rslora") else alpha
    for name, kohya_name in renames.items():  # a layer's own alpha tensor (diffusers' older files) over these
        if kohya_name.endswith(".alpha"):
            alphas.pop(kohya_name.removesuffix(".alpha"), None)
    return renames, alphas


def _split(name: str) -> tuple[str, str, str] | None:
    """(model part, module path in it, kohya suffix) of a diffusers/peft LoRA tensor name; None for another. The
    part is the name's first word where it is none of SD's (`transformer`, `diffusion_model`)."""
    match, named = PROCESSOR.search(name), NAMED_ADAPTER.search(name)
    if match:
        module = "to_out.0" if match[1] == "to_out" else match[1]
        path, suffix = f"{name[:match.start()]}.{module}", f"lora_{match[2]}.weight"
    elif named:
        path = name[:named.start()]
        suffix = {"A": "lora_down.weight", "B": "lora_up.weight"}.get(named[1], "dora_scale")
    else:
        ending = next(((end, suffix) for end, suffix in SUFFIXES if name.endswith(end)), None)
        if ending is None or ending[1] == "alpha" and not name.startswith((*OWN_PARTS, PEFT_WRAPPER)):
            return None
        path, suffix = name[: -len(ending[0])], ending[1]
    path = path.removeprefix(PEFT_WRAPPER)
    component, _, rest = path.partition(".")
    if component in OWN_PARTS:
        return component, rest, suffix
    if component == "text_model":
        return "text_encoder", path, suffix
    if component in UNET_MODULES:
        return "unet", path, suffix
    return component, rest, suffix


def with_adapter_config(path, metadata: dict[str, str]) -> dict[str, str]:
    """A file's metadata, with peft's adapter_config.json beside it (save_pretrained's adapter_model.safetensors
    holds no alpha: read at alpha = rank, a file of lora_alpha 2 at rank 8 applied 4x over) taken as diffusers'
    adapter metadata of every model part; the file's own adapter metadata wins."""
    config_path = Path(path).with_name(ADAPTER_CONFIG)
    if ADAPTER_METADATA in metadata or not Path(path).name.startswith("adapter_model") or not config_path.is_file():
        return metadata
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return metadata
    if not isinstance(config, dict) or "lora_alpha" not in config:
        return metadata
    settings = {key: config[key] for key in ("lora_alpha", "alpha_pattern", "use_rslora") if key in config}
    return metadata | {ADAPTER_METADATA: json.dumps({f"{part}.{key}": value for part in OWN_PARTS
                                                     for key, value in settings.items()})}


def _adapter_configs(metadata: dict[str, str]) -> dict[str, dict]:
    """Each model part's peft settings from diffusers' `lora_adapter_metadata` ({"unet.lora_alpha": 8, ...})."""
    try:
        packed = json.loads(metadata.get(ADAPTER_METADATA) or "{}")
    except ValueError:
        return {}
    configs: dict[str, dict] = {}
    for key, value in packed.items() if isinstance(packed, dict) else ():
        component, _, option = key.partition(".")
        configs.setdefault(component, {})[option] = value
    return configs


def _pattern_value(pattern, path: str, default):
    """A layer's value in a peft rank/alpha pattern (a key matches the module path's end, as peft matches it)."""
    for key, value in (pattern or {}).items() if isinstance(pattern, dict) else ():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default
