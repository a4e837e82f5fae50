"""Turning images and captions into what the U-Net sees, driven by the family's data (no SD/SDXL branches)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lowvram.config import CHUNK_TOKENS
from lowvram.models.families import DEFAULT_READING, ModelFamily, TextReading
from lowvram.models.tokens import pad_id, weighted_tokens
from lowvram.prompts import CHUNK_BREAK, weighted_pieces

VAE_TILE_PX = 512
MOST_REPEATS = 4  # ComfyUI's: prompts whose common length repeats one more often are not batched by repetition
COMMA_BACKTRACK = 20  # AUTOMATIC1111's comma_padding_backtrack: how far back a full chunk looks for a comma to end at


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

    `reading.max_tokens` 150 or 225 reads longer captions as kohya's max_token_length does: 75-token chunks, each
    encoded with its own BOS/EOS, joined without the inner BOS/EOS (so 227 states for 225 tokens); the pooled
    embedding is the first chunk's. `reading.clip_skip` 2 or more takes an
    earlier layer's states through the final layer norm, as diffusers' `clip_skip` (one less) does.
    `reading.weighted` reads AUTOMATIC1111's emphasis, `(red hair:1.2)`, as kohya's weighted_captions does: each
    token's states times its weight (the pooled embedding is the plain text's), and its BREAK ends a chunk.
    `reading.a1111` reads them as AUTOMATIC1111 reads prompts instead (`_encode_as_a1111`)."""
    if reading.a1111:
        return _encode_as_a1111(family, text_encoders, tokenizers, captions, device, reading.clip_skip)
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
        hidden = _chosen_states(spec, encoder, out, reading.clip_skip)
        if chunks > 1:
            hidden = hidden.reshape(len(captions), chunks, CHUNK_TOKENS + 2, -1)
            hidden = torch.cat([hidden[:, 0, :1], hidden[:, :, 1:-1].flatten(1, 2), hidden[:, -1, -1:]], dim=1)
        if reading.weighted:
            hidden = hidden * weights.to(device=hidden.device, dtype=hidden.dtype)[:, :, None]
        states.append(hidden)
        if spec.pooled:
            pooled = out.text_embeds if chunks == 1 else out.text_embeds[::chunks]
    return torch.cat(states, dim=-1), pooled


def _encode_as_a1111(family: ModelFamily, text_encoders: list, tokenizers: list, prompts: list[str],
                     device: torch.device, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`encode_prompts` for prompts read as AUTOMATIC1111 reads them (its sd_hijack_clip): each prompt in as many
    77-token chunks as `a1111_chunks` gives it, each chunk encoded alone and kept whole (BOS and EOS too), its
    weighed states scaled back to the chunk's unweighed mean; the pooled embedding is the first chunk's. Prompts of
    different lengths are repeated to a common one, as ComfyUI batches them (attention reads a repeated sequence as
    the sequence itself), where that repeats one at most `MOST_REPEATS` times; else the shorter ones are padded with
    the empty prompt's chunk, as AUTOMATIC1111's pad_cond_uncond does."""
    states, pooled = [], None
    for spec, encoder, tokenizer in zip(family.text_encoders, text_encoders, tokenizers):
        chunked = [a1111_chunks(prompt, tokenizer) for prompt in [*prompts, ""]]  # (the empty prompt pads)
        ids = torch.tensor([row for rows, _ in chunked for row in rows])
        weights = torch.tensor([row for _, rows in chunked for row in rows])
        out = encoder(ids.to(device), output_hidden_states=True)
        hidden = _chosen_states(spec, encoder, out, clip_skip)
        weighed = hidden.float() * weights.to(hidden.device)[:, :, None]
        before, after = (chunk_states.float().mean(dim=(1, 2), keepdim=True) for chunk_states in (hidden, weighed))
        # (a chunk without emphasis keeps its states as they are: its ratio is 1, or 0/0 where layer norms without
        # a bias give a mean of exactly 0; such a chunk's means are rounding noise (1e-8 in fp32, 1e-4 in bf16),
        # whose ratio would scale the prompt by a random factor or wipe it out: it keeps its weighed states)
        noise = 1e-3 * hidden.float().abs().mean(dim=(1, 2), keepdim=True)
        weighted = (weights != 1).any(dim=1).to(hidden.device)[:, None, None] & (before.abs() > noise) & (
            after.abs() > noise)
        hidden = (weighed * torch.where(weighted, before / after, 1.0)).to(hidden.dtype)
        counts = [len(rows) for rows, _ in chunked]
        states.append(hidden.split(counts))
        if spec.pooled:
            firsts = torch.tensor([0, *counts[:-2]]).cumsum(0)
            pooled = out.text_embeds[firsts.to(out.text_embeds.device)]
    counts = [len(chunks) for encoder_states in states for chunks in encoder_states[:-1]]
    common = math.lcm(*counts)
    if common // min(counts) > MOST_REPEATS:
        common = max(counts)
        states = [[torch.cat([chunks, *[encoder_states[-1]] * (common - len(chunks))]) for chunks in encoder_states]
                  for encoder_states in states]
    per_prompt = [torch.cat([chunks.repeat(common // len(chunks), 1, 1).flatten(0, 1)
                             for chunks in encoder_states[:-1]]).reshape(len(prompts), common * (CHUNK_TOKENS + 2), -1)
                  for encoder_states in states]
    return torch.cat(per_prompt, dim=-1), pooled


def a1111_chunks(text: str, tokenizer) -> tuple[list[list[int]], list[list[float]]]:
    """A prompt's 77-token chunks (token ids, and each token's weight) as AUTOMATIC1111's tokenize_line makes them:
    each piece of emphasis tokenized alone; a chunk that fills up with the last comma among its last
    `COMMA_BACKTRACK` tokens ends at that comma, the words after it starting the next chunk; a BREAK ends the chunk
    (one that has not begun stays empty); each chunk is BOS, its tokens, EOS, then padding."""
    comma = tokenizer.get_vocab().get(",</w>")
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, weights, last_comma
        chunks.append((tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for piece, weight in weighted_pieces(text):
        for i, part in enumerate(CHUNK_BREAK.split(piece)):
            if i:
                close()
            for token in tokenizer(part, add_special_tokens=False).input_ids:
                if token == comma:
                    last_comma = len(tokens)
                elif len(tokens) == CHUNK_TOKENS and last_comma != -1 and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK:
                    moved = tokens[last_comma + 1:], weights[last_comma + 1:]
                    del tokens[last_comma + 1:], weights[last_comma + 1:]
                    close()
                    tokens, weights = moved
                if len(tokens) == CHUNK_TOKENS:
                    close()
                tokens.append(token)
                weights.append(weight)
    if tokens or not chunks:
        close()
    pad = pad_id(tokenizer)
    ids = [[tokenizer.bos_token_id, *body, tokenizer.eos_token_id] + [pad] * (CHUNK_TOKENS - len(body))
           for body, _ in chunks]
    return ids, [[1.0, *weighed] + [1.0] * (CHUNK_TOKENS + 1 - len(weighed)) for _, weighed in chunks]


def _chosen_states(spec, encoder: torch.nn.Module, out, clip_skip: int) -> torch.Tensor:
    """The hidden states the family reads from an encoder's output: `clip_skip` 2 or more takes an earlier layer's
    through the final layer norm, where the family reads the last layer."""
    if spec.hidden_state == -1 and clip_skip > 1:
        text_model = getattr(encoder, "module", encoder)  # (DDP wraps a text encoder that trains)
        text_model = getattr(text_model, "text_model", text_model)  # (transformers 5 has no text_model level)
        return _final_norm(text_model.final_layer_norm, out.hidden_states[-clip_skip])
    return out.last_hidden_state if spec.hidden_state == -1 else out.hidden_states[spec.hidden_state]


def _final_norm(norm: torch.nn.LayerNorm, hidden: torch.Tensor) -> torch.Tensor:
    """The encoder's final layer norm of an earlier layer's states, computed in fp32 as CUDA's autocast computes
    layer norms: the states of a trained encoder are fp32 (its adapters' sums) beside 16-bit weights, which the CPU's
    layer norm refuses to mix."""
    weight, bias = (None if p is None else p.float() for p in (norm.weight, norm.bias))
    return F.layer_norm(hidden.float(), norm.normalized_shape, weight, bias, norm.eps).to(hidden.dtype)


def _weighted_ids(captions: list[str], tokenizer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, weights), each (B, `length`): the ids the tokenizer gives the captions' plain text (BOS, tokens cut to
    fit, EOS, padding), read by `weighted_tokens`, and each token's weight (1 for BOS, EOS and padding)."""
    pad = pad_id(tokenizer)
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
    pad = pad_id(tokenizer)
    body = ids[:, 1:-1].reshape(len(ids), chunks, CHUNK_TOKENS)
    out = torch.full((len(ids), chunks, CHUNK_TOKENS + 2), pad, dtype=ids.dtype)
    out[:, :, 0] = bos
    out[:, :, 1:-1] = body
    last = ids[:, -1:].expand(-1, chunks)  # the sequence's own end: EOS when truncated, else padding
    out[:, :, -1] = torch.where((body[:, :, -1] != eos) & (body[:, :, -1] != pad), eos, last)
    empty = body[:, :, 0] == pad  # a chunk wholly past the caption: an EOS right after BOS, as for ""
    out[:, :, 1] = torch.where(empty, eos, out[:, :, 1])
    return out.reshape(-1, CHUNK_TOKENS + 2)


def unet_conditioning(family: ModelFamily, hidden: torch.Tensor, pooled: torch.Tensor | None,
                      time_ids: torch.Tensor) -> dict:
    """Keyword arguments for the U-Net's forward besides the noisy latents and timesteps. `time_ids` are
    SDXL's size conditioning per sample: original (h, w), crop (top, left), target (h, w), kept in fp32 (the U-Net
    embeds them in fp32, then casts): in bf16 a size over 256 would be rounded first (1500 to 1504), where kohya
    and Stability's code embed the exact sizes."""
    kwargs: dict = {"encoder_hidden_states": hidden}
    if family.size_conditioning:
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled,
                                       "time_ids": time_ids.to(device=hidden.device, dtype=torch.float32)}
    return kwargs
