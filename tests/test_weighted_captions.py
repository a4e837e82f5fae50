"""--weighted-captions (kohya's --weighted_captions): AUTOMATIC1111's emphasis in captions and sample prompts
weighs the text states of the tokens inside it, as kohya weighs them; a caption without emphasis is read exactly
as without the option; the weighted embeddings are cached apart from plain ones."""

import pytest
import torch
from conftest import run_config
from safetensors import safe_open

from lowvram.kohya_config import translate
from lowvram.models import load_model
from lowvram.models.conditioning import TextReading, encode_prompts
from lowvram.models.tokens import weighted_tokens
from lowvram.prompts import weighted_pieces
from lowvram.train.loop import train


@pytest.mark.parametrize(("text", "pieces"), [
    ("a (red hair) girl", [("a ", 1.0), ("red hair", 1.1), (" girl", 1.0)]),
    ("((red)), [blue]", [("red", 1.1 * 1.1), (", ", 1.0), ("blue", 1 / 1.1)]),
    ("(green:1.5), plain", [("green", 1.5), (", plain", 1.0)]),
    ("(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),
    (r"a \(b\) c: d", [("a (b) c: d", 1.0)]),  # escaped parentheses and a colon are text
    ("(unclosed", [("unclosed", 1.1)]),  # weighs to the end
    ("closed) only", [("closed) only", 1.0)]),
])
def test_emphasis_is_read_as_automatic1111_reads_it(text, pieces):
    got = weighted_pieces(text)
    assert [piece for piece, _ in got] == [piece for piece, _ in pieces]
    assert [weight for _, weight in got] == pytest.approx([weight for _, weight in pieces])


@pytest.mark.parametrize("model_name", ["tiny", "tiny-sdxl"])
@pytest.mark.parametrize("max_tokens", [75, 150])
def test_emphasis_weighs_its_tokens_states_and_nothing_else(model_name, max_tokens):
    model = load_model(model_name)
    def encode(captions, weighted):
        return encode_prompts(model.family, model.text_encoders, model.tokenizers, captions, "cpu",
                              TextReading(max_tokens, 1, weighted))

    long = ", ".join(f"tag{i}" for i in range(30)) + ", a red circle, blue background"
    with torch.no_grad():
        plain, plain_pooled = encode([long, "lvshape, a red circle"], False)
        same, _ = encode([long, "lvshape, a red circle"], True)
        weighed, weighed_pooled = encode(["lvshape, a (red circle:1.5)"], True)
    torch.testing.assert_close(same, plain, rtol=0, atol=0)  # no emphasis: exactly the plain reading
    position = len(model.tokenizers[0]("lvshape, a", add_special_tokens=False).input_ids) + 1  # after BOS
    red_circle = slice(position, position + 2)
    torch.testing.assert_close(weighed[0, red_circle], 1.5 * plain[1, red_circle])
    rest = torch.ones(plain.shape[1], dtype=torch.bool)
    rest[red_circle] = False
    torch.testing.assert_close(weighed[0, rest], plain[1, rest])
    if plain_pooled is not None:  # SDXL's pooled embedding is the plain text's
        torch.testing.assert_close(weighed_pooled[0], plain_pooled[1])


@pytest.mark.parametrize("model_name", ["tiny", "tiny-sdxl"])
def test_break_ends_the_chunk_as_automatic1111_reads_it(model_name):
    """"A BREAK B" reads as A and B each encoded alone, one chunk each, joined as long prompts are; the pooled
    embedding is A's. A BREAK at the start, a lower-case "break" and "BREAKFAST" are no chunk break."""
    model = load_model(model_name)
    def encode(captions, max_tokens):
        return encode_prompts(model.family, model.text_encoders, model.tokenizers, captions, "cpu",
                              TextReading(max_tokens, 1, True))

    first, second = "lvshape, a (red circle:1.3)", "a blue square, [yellow] background"
    with torch.no_grad():
        split, split_pooled = encode([f"{first} BREAK {second}"], 150)
        alone, alone_pooled = encode([first, second], 75)
    torch.testing.assert_close(split, torch.cat([alone[:1, :-1], alone[1:, 1:]], dim=1), rtol=0, atol=0)
    if split_pooled is not None:
        torch.testing.assert_close(split_pooled[0], alone_pooled[0], rtol=0, atol=0)
    tokenizer = model.tokenizers[0]
    tokens, weights = weighted_tokens(f"{first} BREAK {second}", tokenizer)
    assert len(tokens) == 75 + len(weighted_tokens(second, tokenizer)[0]) and len(weights) == len(tokens)
    for text, plain in (("BREAK a red circle", "a red circle"), ("a break here", "a break here"),
                        ("BREAKFAST", "BREAKFAST")):
        assert weighted_tokens(text, tokenizer)[0] == tokenizer(plain, add_special_tokens=False).input_ids


def test_a_weighted_run_caches_its_own_embeddings_and_kohya_configs_ask_for_it(tmp_path, sample_data):
    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("a (red circle:1.3), [blue background]")
    cache = str(tmp_path / "cache")
    plain = train(run_config(data=str(sample_data), output=str(tmp_path / "a"), max_steps=1, cache_dir=cache))
    weighted = train(run_config(data=str(sample_data), output=str(tmp_path / "b"), max_steps=1, cache_dir=cache,
                                weighted_captions=True))
    assert weighted.encoded[1] == plain.encoded[1] > 0  # the plain reading's cached embeddings are not reused
    assert weighted.lora_path.is_file()
    with safe_open(str(weighted.lora_path), "pt") as f:
        assert "weighted_captions = true" in f.metadata()["lowvram.config"]  # the recipe replays it
    values, _ = translate({"weighted_captions": True, "network_module": "networks.lora"}, tmp_path / "k.toml")
    assert values["weighted_captions"] is True


def test_a_break_that_pushes_a_weighted_caption_past_its_chunks_is_named_in_the_warning(tmp_path, sample_data, capsys):
    """kohya's weighted captions read BREAK as a word; lowvram's start the next chunk there, which at the default
    --max-token-length 75 leaves what follows unread: the warning says why."""
    (sample_data / "5_lvshape" / "00_red_circle.txt").write_text("a red circle BREAK on a blue background")
    train(run_config(data=str(sample_data), output=str(tmp_path / "a"), max_steps=1, weighted_captions=True,
                     cache_dir=str(tmp_path / "cache")))
    out = " ".join(capsys.readouterr().out.split())
    assert "1 of 6 images have a caption past 75 tokens" in out
    assert "a BREAK fills the rest of its 75-token chunk" in out


@pytest.mark.parametrize("family_name", ["sd15", "sdxl"])
def test_check_datas_tokenizer_counts_as_the_text_encoders_tokenizer_does(family_name):
    """check-data counts a caption's tokens without transformers (a second to import): with its own CLIP BPE, which
    must split every caption as transformers' CLIPTokenizer does, plain and weighted."""
    from transformers import CLIPTokenizer

    from lowvram.models.families import FAMILIES, TextReading
    from lowvram.models.tokens import caption_tokens, family_tokenizer

    family = FAMILIES[family_name]
    theirs = CLIPTokenizer.from_pretrained(str(family.config_dir / family.text_encoders[0].tokenizer))
    ours = family_tokenizer(family)
    assert (ours.eos_token_id, ours.pad_token_id) == (theirs.eos_token_id, theirs.pad_token_id)
    # (transformers 4's slow CLIPTokenizer splits CJK per character, and ftfy fixes some punctuation first: there
    # check-data's count of such captions may differ by a few tokens from training's, which warns again)
    texts = ["ohwx, 1girl, red hair", "Hatsune Miku (Vocaloid), smiling!!  at\tnight\n",
             "don't you're it's", "a photo of sks dog, 8k, ultra-detailed, f/1.8", "émilie café naïve", "^_^ :) <3 _",
             "(red hair:1.2), [blue eyes], ((smile)) BREAK background", ", ".join(f"tag{i} word" for i in range(60)), ""]
    for text in texts:
        assert ours(text).input_ids == theirs(text, add_special_tokens=False).input_ids, text
        for weighted in (False, True):
            reading = TextReading(75, 1, weighted)
            assert caption_tokens(text, ours, reading) == caption_tokens(text, theirs, reading), (text, weighted)
