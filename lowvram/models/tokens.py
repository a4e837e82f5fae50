"""How many tokens a caption takes of what the text encoders read, without torch: `check-data` says the captions
training would cut, as training does, with the family's own CLIP tokenizer (SD1.5's and SDXL's read alike)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from types import SimpleNamespace

from lowvram.config import CHUNK_TOKENS, TOKEN_LENGTHS
from lowvram.models.families import DEFAULT_READING, ModelFamily, TextReading
from lowvram.prompts import CHUNK_BREAK, UNSPACED, weighted_pieces


def caption_tokens(text: str, tokenizer, reading: TextReading = DEFAULT_READING) -> int:
    """The tokens `text` takes of the `reading.max_tokens` the encoders read (BOS and EOS aside): more means its end
    is cut."""
    if reading.weighted:
        return len(weighted_tokens(text, tokenizer)[0])
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def weighted_tokens(text: str, tokenizer) -> tuple[list[int], list[float]]:
    """A prompt's token ids (without BOS and EOS) and each one's weight, as AUTOMATIC1111 reads it: each piece of
    emphasis tokenized alone and weighed, and a BREAK ending the 75-token chunk there (an EOS, then padding of
    weight 1 to the chunk's end; a BREAK at a chunk's start does nothing)."""
    pad = pad_id(tokenizer)
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


def pad_id(tokenizer) -> int:
    """The id that pads a caption to its length (EOS for a tokenizer without a pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def cut_captions(records: list, tokenizer, reading: TextReading) -> str | None:
    """One line when captions run past what the text encoders read, which kohya cuts without a word: how many
    images have one (each caption is tokenized once, however many images share it), and the longest's image."""
    lengths: dict[str, int] = {}
    cut = []  # (tokens, image) of each image's longest cut caption
    for record in records:
        for text, _ in ((record.caption, None), *record.more_captions):
            if text not in lengths:
                lengths[text] = caption_tokens(text, tokenizer, reading)
        own = max(lengths[text] for text, _ in ((record.caption, None), *record.more_captions))
        if own > reading.max_tokens:
            cut.append((own, record.relpath))
    if not cut:
        return None
    longest, name = max(cut, key=lambda c: c[0])
    breaks = reading.weighted and any(CHUNK_BREAK.search(text) for text, tokens in lengths.items()
                                      if tokens > reading.max_tokens)
    enough = next((length for length in TOKEN_LENGTHS if length >= longest), None)
    more = (f", or add --max-token-length {enough}" if enough else
            f", or add --max-token-length {TOKEN_LENGTHS[-1]} to read more of each"
            if reading.max_tokens < TOKEN_LENGTHS[-1] else "")
    cjk = any(re.search(f"[{UNSPACED}]", text) for text, tokens in lengths.items() if tokens > reading.max_tokens)
    return (f"warning: {len(cut)} of {len(records)} images have a caption past {reading.max_tokens} tokens, and the "
            f"text encoders read only their first {reading.max_tokens}: shorten them{more} (the longest, {name}'s, "
            f"has {longest}" + ("; a BREAK fills the rest of its 75-token chunk, so what follows it needs the next one"
                                * breaks) + ")" + ("; CLIP reads a Chinese or Japanese character as 1 to 3 tokens, and "
                                                   "knows English tags far better" if cjk else ""))




@cache
def family_tokenizer(family: ModelFamily) -> CountingTokenizer:
    """The family's first CLIP tokenizer, from the configs lowvram carries (no download, no weights)."""
    return CountingTokenizer(Path(family.config_dir) / family.text_encoders[0].tokenizer)


class CountingTokenizer:
    """CLIP's tokenizer as transformers' CLIPTokenizer splits a caption (its converter's normalizer, split and
    byte-level BPE), on the tokenizers library alone: transformers takes a second to import, check-data a fraction.
    It counts (`caption_tokens`); it never encodes for a text encoder."""

    def __init__(self, folder: Path):
        from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        eos, pad = (config.get(name) for name in ("eos_token", "pad_token"))
        eos, pad = (token.get("content") if isinstance(token, dict) else token for token in (eos, pad))
        self._bpe = Tokenizer(BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                            continuing_subword_prefix="", end_of_word_suffix="</w>",
                                            fuse_unk=False, unk_token=config.get("unk_token", eos)))
        self._bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                     normalizers.Lowercase()])
        self._bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"),
                                 behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        self.eos_token_id = self._bpe.token_to_id(eos)
        self.pad_token_id = self._bpe.token_to_id(pad) if pad else None

    def __call__(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(input_ids=self._bpe.encode(text, add_special_tokens=add_special_tokens).ids)
