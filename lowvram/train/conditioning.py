"""Turning images and captions into what the U-Net sees, driven by the family's data (no SD/SDXL branches)."""

from __future__ import annotations

import torch

from lowvram.models.families import ModelFamily

VAE_TILE_PX = 512


def set_vae_tiling(vae: torch.nn.Module, enabled: bool) -> None:
    """Tiles of 512 px (diffusers' default tile is the model's native size, 1024 px for SDXL, which at
    1024 px saves nothing)."""
    if enabled:
        vae.enable_tiling()
        vae.tile_sample_min_size = VAE_TILE_PX
        vae.tile_latent_min_size = VAE_TILE_PX // 2 ** (len(vae.config.block_out_channels) - 1)
    else:
        vae.disable_tiling()


def encode_images(vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latents scaled to unit variance, as the U-Net was trained on."""
    latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.sample()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def encode_prompts(family: ModelFamily, text_encoders: list, tokenizers: list, captions: list[str],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-attention states (the encoders' chosen hidden states, concatenated) and the pooled embedding
    of the encoder marked `pooled` (SDXL), exactly as the family's diffusers pipeline computes them."""
    states, pooled = [], None
    for spec, encoder, tokenizer in zip(family.text_encoders, text_encoders, tokenizers):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        out = encoder(ids, output_hidden_states=True)
        states.append(out.last_hidden_state if spec.hidden_state == -1 else out.hidden_states[spec.hidden_state])
        if spec.pooled:
            pooled = out.text_embeds
    return torch.cat(states, dim=-1), pooled


def unet_conditioning(family: ModelFamily, hidden: torch.Tensor, pooled: torch.Tensor | None,
                      time_ids: torch.Tensor) -> dict:
    """Keyword arguments for the U-Net's forward besides the noisy latents and timesteps. `time_ids` are
    SDXL's size conditioning per sample: original (h, w), crop (top, left), target (h, w)."""
    kwargs: dict = {"encoder_hidden_states": hidden}
    if family.size_conditioning:
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled,
                                       "time_ids": time_ids.to(device=hidden.device, dtype=hidden.dtype)}
    return kwargs
