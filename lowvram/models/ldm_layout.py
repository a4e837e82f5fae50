"""diffusers/transformers weights in the ORIGINAL single-file checkpoint layout, the one ComfyUI and AUTOMATIC1111
load: CompVis LDM keys for SD1.x, Stability's "sgm" keys for SDXL. The inverse of the converters in
``diffusers.loaders.single_file_utils`` (the tests check each round trip): `lowvram merge --model` writes a
checkpoint with it, and the tests build single files from tiny random models with it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lowvram.models.detect import UNET_PREFIX, VAE_PREFIX
from lowvram.models.ldm_names import Table, ldm_path, unet_table

SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _remap(state_dict: dict[str, torch.Tensor], table: Table, out_prefix: str) -> dict[str, torch.Tensor]:
    """Rename every key by its longest prefix found in ``table``; raise on a key no entry covers."""
    out = {}
    for key, value in state_dict.items():
        path = ldm_path(key, table)
        if path is None:
            raise KeyError(f"no original-layout mapping for {key!r}")
        out[out_prefix + path] = value
    return out


def _has(state_dict: dict[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state_dict)


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` state dict -> ``model.diffusion_model.*`` (SD1.x / SDXL)."""
    return _remap(state_dict, unet_table(config, lambda prefix: _has(state_dict, prefix)), UNET_PREFIX)


def vae_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` state dict -> ``first_stage_model.*``."""
    table: Table = {f"{p}.": (f"{p}.", {}) for p in ("quant_conv", "post_quant_conv")}
    for side in ("encoder", "decoder"):
        table[f"{side}.conv_in."] = (f"{side}.conv_in.", {})
        table[f"{side}.conv_out."] = (f"{side}.conv_out.", {})
        table[f"{side}.conv_norm_out."] = (f"{side}.norm_out.", {})
        for i in range(2):
            table[f"{side}.mid_block.resnets.{i}."] = (f"{side}.mid.block_{i + 1}.", _VAE_RESNET)
        for ours, theirs in _VAE_ATTN.items():
            table[f"{side}.mid_block.attentions.0.{ours}."] = (f"{side}.mid.attn_1.{theirs}.", {})

    n_down = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.down_blocks.")})
    for i in range(n_down):
        table[f"encoder.down_blocks.{i}.resnets."] = (f"encoder.down.{i}.block.", _VAE_RESNET)
        table[f"encoder.down_blocks.{i}.downsamplers.0."] = (f"encoder.down.{i}.downsample.", {})
    n_up = len({k.split(".")[2] for k in state_dict if k.startswith("decoder.up_blocks.")})
    for i in range(n_up):  # LDM numbers decoder levels from the lowest resolution up
        table[f"decoder.up_blocks.{i}.resnets."] = (f"decoder.up.{n_up - 1 - i}.block.", _VAE_RESNET)
        table[f"decoder.up_blocks.{i}.upsamplers.0."] = (f"decoder.up.{n_up - 1 - i}.upsample.", {})

    out = _remap(state_dict, table, VAE_PREFIX)
    # LDM's AttnBlock uses 1x1 convolutions: its q/k/v/proj_out weights are [C, C, 1, 1]
    return {
        k: v[:, :, None, None] if ".mid.attn_1." in k and k.endswith(".weight") and v.ndim == 2 else v
        for k, v in out.items()
    }


def clip_text_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers ``CLIPTextModel`` -> ``{prefix}text_model.*`` (``position_ids`` buffers dropped).

    transformers >= 5.6 flattened ``CLIPTextModel`` (no ``text_model.`` in its keys); the original
    layout always has it, so it is added where missing.
    """
    return {
        prefix + (k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
        for k, v in state_dict.items()
        if not k.endswith("position_ids")
    }


def open_clip_to_sgm(
    state_dict: dict[str, torch.Tensor], num_layers: int, prefix: str = SDXL_OPEN_CLIP_PREFIX
) -> dict[str, torch.Tensor]:
    """transformers ``CLIPTextModelWithProjection`` -> OpenCLIP layout under ``prefix`` (SDXL encoder 2)."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    out = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
        # OpenCLIP computes `x @ text_projection`: the transpose of the nn.Linear weight, [hidden, proj]
        "text_projection": sd.pop("text_projection.weight").T,
        "logit_scale": torch.tensor(math.log(100.0)),  # present in real SDXL files, unused by diffusers
    }
    for i in range(num_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            for ours, theirs in _OPEN_CLIP_LAYER.items():
                out[f"{dst}{theirs}.{kind}"] = sd.pop(f"{src}{ours}.{kind}")
    if sd:
        raise KeyError(f"no OpenCLIP mapping for {sorted(sd)}")
    return {prefix + k: v for k, v in out.items()}


def _finish(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def sd15_single_file(unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module) -> dict:
    """Full SD1.x single-file state dict (LDM layout), ready for ``safetensors.torch.save_file``."""
    return _finish(
        {
            **unet_to_ldm(unet.state_dict(), unet.config),
            **vae_to_ldm(vae.state_dict()),
            **clip_text_to_ldm(text_encoder.state_dict(), SD15_CLIP_PREFIX),
        }
    )


def sdxl_single_file(
    unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module
) -> dict:
    """Full SDXL single-file state dict (sgm layout), ready for ``safetensors.torch.save_file``."""
    return _finish(
        {
            **unet_to_ldm(unet.state_dict(), unet.config),
            **vae_to_ldm(vae.state_dict()),
            **clip_text_to_ldm(text_encoder.state_dict(), SDXL_CLIP_PREFIX),
            **open_clip_to_sgm(text_encoder_2.state_dict(), text_encoder_2.config.num_hidden_layers),
        }
    )
