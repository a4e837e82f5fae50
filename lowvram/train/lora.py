"""LoRA adapters (peft) on the model, and their export in the formats users load.

kohya format (the default) is what ComfyUI and AUTOMATIC1111 map completely, and diffusers'
`load_lora_weights` reads it too: `lora_unet_<module path with _>.lora_down.weight` / `.lora_up.weight`
and a per-module `.alpha`. Text-encoder module paths always read `text_model.…` there, whatever
transformers calls them in memory (transformers 5 dropped that level in CLIPTextModel).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lowvram.config import NetworkConfig
from lowvram.files import save_safetensors
from lowvram.models.loading import LoadedModel

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
UNET_KOHYA_PREFIX = "lora_unet"


def add_adapter(module: torch.nn.Module, targets: tuple[str, ...], rank: int, alpha: float,
                dropout: float) -> list[torch.nn.Parameter]:
    """Add a LoRA adapter (peft) on `targets` of a frozen module; return its trainable parameters, in fp32
    whatever the frozen weights' dtype or format."""
    from peft import LoraConfig

    module.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                                  init_lora_weights=True))
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def add_lora(model: LoadedModel, network: NetworkConfig, alpha: float, train_text_encoder: bool
             ) -> dict[str, list[torch.nn.Parameter]]:
    """Add the adapters `network` describes to the U-Net (and the text encoders); return the trainable
    parameters per part."""
    from lowvram.errors import LowvramError

    if network.network != "lora":
        raise LowvramError(f"--network {network.network}: not supported yet; use --network lora")
    family, rank, dropout = model.family, network.rank, network.dropout
    trainable = {"unet": add_adapter(model.unet, family.unet_lora_targets, rank, alpha, dropout)}
    if train_text_encoder:
        for spec, encoder in zip(family.text_encoders, model.text_encoders):
            trainable[spec.component] = add_adapter(encoder, family.text_lora_targets, rank, alpha, dropout)
    return trainable


def network_metadata(network: NetworkConfig) -> dict[str, str]:
    """kohya's ss_network_* entries that tell UIs and model sites which network type the file holds."""
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(network.rank)}


def adapted_modules(model: LoadedModel) -> list[tuple[str, torch.nn.Module]]:
    """(component name, module) for each part that carries an adapter."""
    parts = [("unet", model.unet)]
    parts += [(spec.component, enc) for spec, enc in zip(model.family.text_encoders, model.text_encoders)
              if getattr(enc, "peft_config", None)]
    return parts


def peft_state_dicts(model: LoadedModel) -> dict[str, dict[str, torch.Tensor]]:
    """The adapters' weights per component, in peft naming (`<module>.lora_A.weight`)."""
    from peft.utils import get_peft_model_state_dict

    return {name: get_peft_model_state_dict(module) for name, module in adapted_modules(model)}


def kohya_state_dict(model: LoadedModel, alpha: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The adapters in kohya naming with the trained alpha (diffusers' converter writes alpha = rank)."""
    prefixes = {"unet": UNET_KOHYA_PREFIX} | {spec.component: spec.kohya_prefix for spec in model.family.text_encoders}
    out = {}
    for component, state in peft_state_dicts(model).items():
        for key, tensor in state.items():
            module, kind = key.rsplit(".lora_", 1)
            if component != "unet" and not module.startswith("text_model."):
                module = "text_model." + module
            base = f"{prefixes[component]}_{module.replace('.', '_')}"
            out[f"{base}.lora_down.weight" if kind == "A.weight" else f"{base}.lora_up.weight"] = tensor.to(dtype)
            out[f"{base}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return out


def save_kohya(model: LoadedModel, path: Path, alpha: float, precision: str, metadata: dict[str, str]) -> Path:
    from lowvram.errors import LowvramError

    state = kohya_state_dict(model, alpha, DTYPES[precision])
    if not all(torch.isfinite(t).all() for t in state.values()):
        raise LowvramError(f"refusing to write {path}: the LoRA holds non-finite values (NaN/inf); the "
                           "checkpoints in the output folder hold the last good weights")
    return save_safetensors(state, path, metadata)


def save_diffusers(model: LoadedModel, folder: Path, precision: str) -> Path:
    """diffusers' own LoRA layout (pytorch_lora_weights.safetensors) with the adapter metadata that keeps
    alpha (without it diffusers reloads with alpha = rank and the outputs are wrong whenever they differ)."""
    from diffusers.utils import convert_state_dict_to_diffusers

    dtype = DTYPES[precision]
    kwargs = {}
    states = peft_state_dicts(model)
    for component, module in adapted_modules(model):
        state = convert_state_dict_to_diffusers(states[component])
        kwargs[f"{component}_lora_layers"] = {k: v.to(dtype) for k, v in state.items()}
        kwargs[f"{component}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
    folder.mkdir(parents=True, exist_ok=True)
    type(model.pipeline).save_lora_weights(str(folder), safe_serialization=True, **kwargs)
    return folder / "pytorch_lora_weights.safetensors"


def tag_frequency(captions_by_folder: dict[str, list[str]]) -> str:
    """kohya's ss_tag_frequency: per folder, how often each comma-separated tag occurs."""
    freq: dict[str, dict[str, int]] = {}
    for folder, captions in captions_by_folder.items():
        counts = freq.setdefault(folder, {})
        for caption in captions:
            for tag in (t.strip() for t in caption.split(",")):
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
    return json.dumps(freq, ensure_ascii=False)
