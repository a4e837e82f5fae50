"""Turning images and captions into what the U-Net sees, driven by the family's data (no SD/SDXL branches)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowvram.models.families import CHUNK_TOKENS, DEFAULT_READING, ModelFamily, TextReading
from lowvram.prompts import CHUNK_BREAK, weighted_pieces

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


def encode_images(vae: torch.nn.Module, pixels: torch.Tensor, seeds: list[int] | None = None) -> torch.Tensor:
    """VAE latents scaled to unit variance, as the U-Net was trained on. With `seeds` (one per image) each
    latent's draw from the VAE's distribution depends on its own seed alone, not on the global random state nor
    on which other images share its batch: a cached latent is then a function of its cache key."""
    distribution = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    if seeds is None:
        latents = distribution.sample()
    else:
        mean = distribution.mean
        noise = torch.stack([torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(seed))
                             for seed in seeds])
        latents = mean + distribution.std * noise.to(mean)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def encode_prompts(family: ModelFamily, text_encoders: list, tokenizers: list, captions: list[str],
                   device: torch.device, reading: TextReading = DEFAULT_READING
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-attention states (the encoders' chosen hidden states, concatenated) and the pooled embedding
    of the encoder marked `pooled` (SDXL), exactly as the family's diffusers pipeline computes them.

    `reading.max_tokens` 150 or 225 reads longer captions as kohya's max_token_length and AUTOMATIC1111/ComfyUI's
    long prompts do: 75-token chunks, each encoded with its own BOS/EOS, joined without the inner BOS/EOS (so 227
    states for 225 tokens); the pooled embedding is the first chunk's. `reading.clip_skip` 2 or more takes an
    earlier layer's states through the final layer norm, as diffusers' `clip_skip` (one less) does.
    `reading.weighted` reads AUTOMATIC1111's emphasis, `(red hair:1.2)`, as kohya's weighted_captions does: each
    token's states times its weight (the pooled embedding is the plain text's), and its BREAK ends a chunk."""
    chunks = max(1, reading.max_tokens // CHUNK_TOKENS)
    states, pooled = [], None
    for spec, encoder, tokenizer in zip(family.text_encoders, text_encoders, tokenizers):
        if reading.weighted:
            ids, weights = _weighted_ids(captions, tokenizer, chunks * CHUNK_TOKENS + 2)
        else:
            ids = tokenizer(captions, padding="max_length", max_length=chunks * CHUNK_TOKENS + 2, truncation=True,
                            return_tensors="pt").input_ids
        if chunks > 1:
            ids = _chunked(ids, chunks, tokenizer)
        out = encoder(ids.to(device), output_hidden_states=True)
        if spec.hidden_state == -1 and reading.clip_skip > 1:
            text_model = getattr(encoder, "module", encoder)  # (DDP wraps a text encoder that trains)
            text_model = getattr(text_model, "text_model", text_model)  # (transformers 5 has no text_model level)
            hidden = _final_norm(text_model.final_layer_norm, out.hidden_states[-reading.clip_skip])
        else:
            hidden = out.last_hidden_state if spec.hidden_state == -1 else out.hidden_states[spec.hidden_state]
        if chunks > 1:
            hidden = hidden.reshape(len(captions), chunks, CHUNK_TOKENS + 2, -1)
            hidden = torch.cat([hidden[:, 0, :1], hidden[:, :, 1:-1].flatten(1, 2), hidden[:, -1, -1:]], dim=1)
        if reading.weighted:
            weighed = hidden * weights.to(device=hidden.device, dtype=hidden.dtype)[:, :, None]
            if reading.keep_mean:  # per prompt, as AUTOMATIC1111 encodes each prompt on its own
                before, after = (states.float().mean(dim=(1, 2), keepdim=True) for states in (hidden, weighed))
                weighed = (weighed.float() * (before / after)).to(hidden.dtype)
            hidden = weighed
        states.append(hidden)
        if spec.pooled:
            pooled = out.text_embeds if chunks == 1 else out.text_embeds[::chunks]
    return torch.cat(states, dim=-1), pooled


def caption_tokens(text: str, tokenizer, reading: TextReading = DEFAULT_READING) -> int:
    """The tokens `text` takes of the `reading.max_tokens` the encoders read (BOS and EOS aside): more means its end
    is cut."""
    if reading.weighted:
        return len(weighted_tokens(text, tokenizer)[0])
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def _final_norm(norm: torch.nn.LayerNorm, hidden: torch.Tensor) -> torch.Tensor:
    """The encoder's final layer norm of an earlier layer's states, computed in fp32 as CUDA's autocast computes
    layer norms: the states of a trained encoder are fp32 (its adapters' sums) beside 16-bit weights, which the CPU's
    layer norm refuses to mix."""
    weight, bias = (None if p is None else p.float() for p in (norm.weight, norm.bias))
    return F.layer_norm(hidden.float(), norm.normalized_shape, weight, bias, norm.eps).to(hidden.dtype)


def weighted_tokens(text: str, tokenizer) -> tuple[list[int], list[float]]:
    """A prompt's token ids (without BOS and EOS) and each one's weight, as AUTOMATIC1111 reads it: each piece of
    emphasis tokenized alone and weighed, and a BREAK ending the 75-token chunk there (an EOS, then padding of
    weight 1 to the chunk's end; a BREAK at a chunk's start does nothing)."""
    pad = _pad_id(tokenizer)
    tokens: list[int] = []
    weights: list[float] = []
    for piece, weight in weighted_pieces(text):
        for i, part in enumerate(CHUNK_BREAK.split(piece)):
            if i and len(tokens) % CHUNK_TOKENS:
                fill = CHUNK_TOKENS - len(tokens) % CHUNK_TOKENS
                tokens += [tokenizer.eos_token_id] + [pad] * (fill - 1)
                weights += [1.0] * fill
            ids = tokenizer(part, add_special_tokens=False).input_ids if part.strip() else []
            tokens += ids
            weights += [weight] * len(ids)
    return tokens, weights


def _weighted_ids(captions: list[str], tokenizer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, weights), each (B, `length`): the ids the tokenizer gives the captions' plain text (BOS, tokens cut to
    fit, EOS, padding), read by `weighted_tokens`, and each token's weight (1 for BOS, EOS and padding)."""
    pad = _pad_id(tokenizer)
    rows, weights = [], []
    for caption in captions:
        tokens, weighed = weighted_tokens(caption, tokenizer)
        body = length - 2
        row = [tokenizer.bos_token_id, *tokens[:body], tokenizer.eos_token_id]
        rows.append(row + [pad] * (length - len(row)))
        weights.append([1.0, *weighed[:body]] + [1.0] * (length - 1 - min(body, len(weighed))))
    return torch.tensor(rows), torch.tensor(weights)


def _chunked(ids: torch.Tensor, chunks: int, tokenizer) -> torch.Tensor:
    """(B, chunks*75 + 2) token ids as (B*chunks, 77): each 75-token piece between a BOS and an EOS. A piece
    that ends inside the caption gets an EOS of its own; a piece past the caption's end is padding, as
    kohya's get_input_ids builds it."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = _pad_id(tokenizer)
    body = ids[:, 1:-1].reshape(len(ids), chunks, CHUNK_TOKENS)
    out = torch.full((len(ids), chunks, CHUNK_TOKENS + 2), pad, dtype=ids.dtype)
    out[:, :, 0] = bos
    out[:, :, 1:-1] = body
    last = ids[:, -1:].expand(-1, chunks)  # the sequence's own end: EOS when truncated, else padding
    out[:, :, -1] = torch.where((body[:, :, -1] != eos) & (body[:, :, -1] != pad), eos, last)
    empty = body[:, :, 0] == pad  # a chunk wholly past the caption: an EOS right after BOS, as for ""
    out[:, :, 1] = torch.where(empty, eos, out[:, :, 1])
    return out.reshape(-1, CHUNK_TOKENS + 2)


def _pad_id(tokenizer) -> int:
    """The id that pads a caption to its length (EOS for a tokenizer without a pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def unet_conditioning(family: ModelFamily, hidden: torch.Tensor, pooled: torch.Tensor | None,
                      time_ids: torch.Tensor) -> dict:
    """Keyword arguments for the U-Net's forward besides the noisy latents and timesteps. `time_ids` are
    SDXL's size conditioning per sample: original (h, w), crop (top, left), target (h, w)."""
    kwargs: dict = {"encoder_hidden_states": hidden}
    if family.size_conditioning:
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled,
                                       "time_ids": time_ids.to(device=hidden.device, dtype=hidden.dtype)}
    return kwargs
