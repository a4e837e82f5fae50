"""`lowvram generate` reads a prompt as AUTOMATIC1111 does (its sd_hijack_clip with default settings): in as many
77-token chunks as it needs, each encoded alone and kept whole; a full chunk ends at a comma among its last 20
tokens; each chunk's weighed states are scaled back to its unweighed mean ("Original" emphasis). Prompts of
different lengths are repeated to a common one, which attention reads as the prompt itself."""

import pytest
import torch

from lowvram.config import CHUNK_TOKENS
from lowvram.models import load_model
from lowvram.models.conditioning import COMMA_BACKTRACK, a1111_chunks, encode_prompts
from lowvram.models.families import TextReading

A1111 = TextReading(a1111=True)


@pytest.fixture(scope="module", params=["tiny", "tiny-sdxl"])
def model(request):
    return load_model(request.param)


def encode(model, prompts, reading=A1111):
    with torch.no_grad():
        return encode_prompts(model.family, model.text_encoders, model.tokenizers, prompts, "cpu", reading)


def test_a_full_chunk_ends_at_a_comma_among_its_last_tokens(model):
    tokenizer = model.tokenizers[0]
    x, y, comma = (tokenizer(word, add_special_tokens=False).input_ids for word in ("x", "y", ","))
    assert len(x) == len(y) == len(comma) == 1
    # 69 tokens, a comma, 10 more: the 75th token falls 5 after the comma, so the 5 after it start the next chunk
    ids, weights = a1111_chunks(" ".join(["x"] * 69) + ", " + " ".join(["y"] * 10), tokenizer)
    assert [len(row) for row in ids] == [CHUNK_TOKENS + 2] * 2 and [len(row) for row in weights] == [77, 77]
    assert ids[0][1:72] == x * 69 + comma + [tokenizer.eos_token_id]
    assert ids[1][1:12] == y * 10 + [tokenizer.eos_token_id]
    # AUTOMATIC1111's "prompt word wrap length limit" is 20 tokens: a comma 19 from the end ends the chunk, one
    # further back does not, and the chunk is cut at 75 tokens
    assert COMMA_BACKTRACK == 20
    near = CHUNK_TOKENS - 19
    ids, _ = a1111_chunks(" ".join(["x"] * (near - 1)) + ", " + " ".join(["y"] * 40), tokenizer)
    assert ids[0][1:near + 2] == x * (near - 1) + comma + [tokenizer.eos_token_id]
    before = CHUNK_TOKENS - 20 - 2
    ids, _ = a1111_chunks(" ".join(["x"] * before) + ", " + " ".join(["y"] * 40), tokenizer)
    assert ids[0][1:-1] == x * before + comma + y * (CHUNK_TOKENS - before - 1)


def test_each_chunk_is_encoded_alone_and_kept_whole(model):
    first, second = "lvshape, a red circle", "a blue square, yellow background"
    split, split_pooled = encode(model, [f"{first} BREAK {second}"])
    alone, alone_pooled = encode(model, [first, second])
    assert split.shape[1] == 2 * (CHUNK_TOKENS + 2)  # the inner EOS and BOS too, as AUTOMATIC1111 and ComfyUI
    torch.testing.assert_close(split[0], torch.cat([alone[0], alone[1]]), rtol=0, atol=0)
    if split_pooled is not None:  # SDXL's pooled embedding is the first chunk's
        torch.testing.assert_close(split_pooled[0], alone_pooled[0], rtol=0, atol=0)


def test_emphasis_keeps_each_chunks_mean(model):
    first, second = "lvshape, a red circle", "a blue square, yellow background"
    # a real CLIP's final norm has a bias, which keeps a chunk's mean off 0; the tiny model's is 0, its states' mean
    # rounding noise, which the "not the same mean" below would compare
    final_norm = next(m for name, m in model.text_encoders[0].named_modules() if name.endswith("final_layer_norm"))
    bias = final_norm.bias.detach().clone()
    with torch.no_grad():
        final_norm.bias.copy_(torch.linspace(-0.5, 1.0, bias.numel()))
    try:
        plain, _ = encode(model, [f"{first} BREAK {second}"])
        weighed, _ = encode(model, [f"{first} BREAK a (blue square:1.5), yellow background"])
        kohya, _ = encode(model, [f"{first} BREAK a (blue square:1.5), yellow background"],
                          TextReading(max_tokens=150, weighted=True))
    finally:
        with torch.no_grad():
            final_norm.bias.copy_(bias)
    chunk = CHUNK_TOKENS + 2
    torch.testing.assert_close(weighed[0, :chunk], plain[0, :chunk], rtol=0, atol=0)  # the first chunk: untouched
    torch.testing.assert_close(weighed[0, chunk:].mean(), plain[0, chunk:].mean())
    assert not torch.allclose(weighed[0, chunk:], plain[0, chunk:])
    assert not torch.isclose(kohya[0, chunk:].mean(), plain[0, chunk:].mean())  # training's reading: weighed only


def test_prompts_of_different_lengths_are_repeated_to_a_common_length(model):
    short, long = "lvshape", ", ".join(f"tag{i}" for i in range(30)) + ", a red circle"
    both, pooled = encode(model, [short, long])
    alone, alone_pooled = encode(model, [short])
    assert both.shape[1] == 2 * (CHUNK_TOKENS + 2)
    torch.testing.assert_close(both[0], alone[0].repeat(2, 1), rtol=0, atol=0)
    if pooled is not None:
        torch.testing.assert_close(pooled[0], alone_pooled[0])  # (a batch of 3 rows against 1)


def test_prompts_whose_common_length_repeats_one_past_four_times_are_padded_with_the_empty_prompt(model):
    """ComfyUI batches by repetition only up to 4 times (7 and 8 chunks would be 56); past that the shorter prompt
    is padded with the empty prompt's chunk, as AUTOMATIC1111's pad_cond_uncond does."""
    short, long = "lvshape", " BREAK ".join(["a red circle"] * 5)  # 1 chunk and 5
    both, _ = encode(model, [short, long])
    alone, _ = encode(model, [short, ""])
    chunk = CHUNK_TOKENS + 2
    assert both.shape[1] == 5 * chunk
    torch.testing.assert_close(both[0, :chunk], alone[0])  # (other batches: a few ulps apart on some processors)
    torch.testing.assert_close(both[0, chunk:], alone[1].repeat(4, 1))
