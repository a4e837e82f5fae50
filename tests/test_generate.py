"""`lowvram generate` reads prompts as AUTOMATIC1111 does (emphasis, long prompts in 75-token chunks, BREAK) and as the
LoRA was trained (its clip skip), through the renderer training samples with."""

import re

import numpy as np
import pytest
from conftest import run_config
from PIL import Image

from lowvram.cli import main
from lowvram.config_checks import sample_prompt_notes
from lowvram.errors import LowvramError
from lowvram.lora_header import read_header
from lowvram.train.loop import train

BASE = ["generate", "--model", "tiny", "--steps", "2", "--seed", "5"]


def render(tmp_path, name: str, *argv) -> np.ndarray:
    assert main([*BASE, *argv, "--output", str(tmp_path / f"{name}.png")]) == 0
    return np.asarray(Image.open(tmp_path / f"{name}.png"), dtype=np.int16)


def test_emphasis_weighs_a_prompt_and_a_weight_of_one_changes_nothing(tmp_path):
    plain = render(tmp_path, "plain", "--prompt", "lvshape, a red circle")
    unit = render(tmp_path, "unit", "--prompt", "lvshape, a (red circle:1.0)")
    strong = render(tmp_path, "strong", "--prompt", "lvshape, a (red circle:1.8)")
    assert np.array_equal(plain, unit)
    assert np.abs(plain - strong).mean() > 0.5
    # emphasis weighs, it does not wipe: the tiny CLIP's layer norm has no bias, and a rescale by its mean of
    # rounding noise zeroed every state, so that every weight drew one image
    weak, loud = (render(tmp_path, name, "--prompt", f"(red:{weight}) circle") for name, weight in (("weak", 1.2),
                                                                                                 ("loud", 3)))
    assert not np.array_equal(weak, loud)


def test_the_lora_of_a_run_not_ended_yet_says_how_to_continue_it(tmp_path, capsys, monkeypatch):
    """A Colab runtime that disconnected mid-run: generate's "file not found: early.safetensors (did you mean
    early.toml?)" offered the run's options as the LoRA."""
    lora = train(run_config(output=str(tmp_path / "early"), max_steps=2, checkpoint_every=1)).lora_path
    lora.unlink()  # (killed after its last checkpoint, before its LoRA)
    capsys.readouterr()
    assert main(["generate", "--model", "tiny", "--lora", str(lora), "--prompt", "x",
                 "--output", str(tmp_path / "x.png")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"--lora: file not found: {lora}; the run in {lora.parent} has not written it yet (its newest checkpoint "
            f"is step 2): lowvram train --config {lora.parent / 'early.toml'} --resume auto continues it") in err
    assert "did you mean" not in err
    (tmp_path / "early" / "early.toml").rename(tmp_path / "early.toml")  # (stopped while caching: no options yet,
    (tmp_path / "early" / "early.toml").write_text("[data]\nrank = 4\n")  # and a config of the user's own there)
    main(["generate", "--model", "tiny", "--lora", str(lora), "--prompt", "x", "--output", str(tmp_path / "x.png")])
    assert (f"the run in {lora.parent} stopped before it trained: start it again as it was started" in
            " ".join(capsys.readouterr().err.split()))
    (tmp_path / "early" / "lowvram-run.json").unlink()  # no run's folder: its options are no near name
    main(["generate", "--model", "tiny", "--lora", str(lora), "--prompt", "x", "--output", str(tmp_path / "x.png")])
    assert "early.toml" not in capsys.readouterr().err
    saved = next(lora.parent.glob("early-step*.safetensors"), None) or lora.with_name("early-1.safetensors")
    saved.write_bytes(b"")  # a near name of its own kind still is one (a typo of the extension too)
    for typed in (lora.with_name(saved.name.replace("-", "_")), lora.with_name(saved.name[:-1])):
        main(["generate", "--model", "tiny", "--lora", str(typed), "--prompt", "x", "--output",
              str(tmp_path / "x.png")])
        assert f"(did you mean {saved}?)" in capsys.readouterr().err
    # named alone, as AUTOMATIC1111's <lora:mystyle:0.8> names it, from its folder: found in its models/Lora
    (tmp_path / "webui" / "models" / "Lora" / "styles").mkdir(parents=True)  # (its subfolders listed too)
    (tmp_path / "webui" / "models" / "Lora" / "styles" / "mystyle.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "webui")
    main(["generate", "--model", "tiny", "--lora", "mystyle:0.8", "--prompt", "x"])
    assert ("--lora: file not found: mystyle (did you mean models/Lora/styles/mystyle.safetensors?)"
            in capsys.readouterr().err)


def test_a_checkpoints_adapters_as_lora_name_the_lora_of_their_step(tmp_path, capsys, monkeypatch):
    """A notebook user previewing a checkpoint: diffusers "placed none of its layers ... is it a LoRA for this
    model?" after loading the model, of lowvram's own file."""
    train(run_config(output=str(tmp_path / "run"), max_steps=2, checkpoint_every=1, save_every="1"))
    capsys.readouterr()
    for step, said in ((1, f"preview step 1 with its LoRA, --lora {tmp_path / 'run' / 'run-step00000001.safetensors'}"),
                       (2, f"preview step 2 with its LoRA, --lora {tmp_path / 'run' / 'run.safetensors'}")):
        adapters = tmp_path / "run" / "checkpoints" / f"step-{step:06d}" / "adapters.safetensors"
        assert main(["generate", "--model", "tiny", "--lora", str(adapters), "--prompt", "x"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"--lora: {adapters} is a lowvram checkpoint's adapters, not a LoRA (they lack its alphas): {said}" \
            in err, err
    monkeypatch.chdir(adapters.parent)  # named from inside its step's folder
    assert main(["generate", "--model", "tiny", "--lora", "adapters.safetensors", "--prompt", "x"]) == 2
    assert "preview step 2 with its LoRA" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run" / "run-step00000001.safetensors").unlink()
    assert main(["generate", "--model", "tiny", "--lora", str(adapters.parent.parent / "step-000001" / adapters.name),
                 "--prompt", "x"]) == 2
    assert "the run wrote no LoRA at step 1 (--save-every" in capsys.readouterr().err


def test_a_long_prompt_is_read_past_75_tokens(tmp_path):
    head = ", ".join(f"tag{i}" for i in range(45))  # past 75 tokens
    red = render(tmp_path, "red", "--prompt", f"{head}, a red circle")
    blue = render(tmp_path, "blue", "--prompt", f"{head}, a blue square")
    assert not np.array_equal(red, blue)  # CLIP's first 75 tokens alone give one image (the same ids)


def test_a_prompt_past_225_tokens_is_read_to_its_end_and_break_starts_a_chunk(tmp_path):
    head = ", ".join(f"tag{i}" for i in range(100))  # past 225 tokens, the most a caption is read to
    red = render(tmp_path, "red", "--prompt", f"{head}, a red circle")
    blue = render(tmp_path, "blue", "--prompt", f"{head}, a blue square")
    assert not np.array_equal(red, blue)
    plain = render(tmp_path, "plain", "--prompt", "lvshape, a red circle")
    broken = render(tmp_path, "broken", "--prompt", "lvshape, a red circle BREAK")  # pads the chunk: no new one
    assert np.array_equal(plain, broken)


def test_a_lora_trained_with_clip_skip_is_rendered_with_it(tmp_path, capsys):
    lora = train(run_config(output=str(tmp_path / "skip"), max_steps=1, clip_skip=2)).lora_path
    capsys.readouterr()
    followed = render(tmp_path, "followed", "--prompt", "lvshape", "--lora", str(lora))
    assert "skip.safetensors was trained with clip skip 2: sampling with it too" in capsys.readouterr().out
    explicit = render(tmp_path, "explicit", "--prompt", "lvshape", "--lora", str(lora), "--clip-skip", "2")
    assert "trained with" not in capsys.readouterr().out  # (as asked: nothing to say)
    last_layer = render(tmp_path, "last", "--prompt", "lvshape", "--lora", str(lora), "--clip-skip", "1")
    said = capsys.readouterr().out  # (it said "sampling with it too" and sampled with 1)
    assert "skip.safetensors was trained with clip skip 2: sampling with --clip-skip 1, as given" in said
    assert "sampling with it too" not in said
    assert np.array_equal(followed, explicit)
    assert np.abs(followed - last_layer).mean() > 0.5
    # said in the PNG, as AUTOMATIC1111 says it (its default, 1, unsaid): "Send to txt2img" draws the same image
    assert ", Clip skip: 2, " in Image.open(tmp_path / "followed.png").text["parameters"]
    assert "Clip skip" not in Image.open(tmp_path / "last.png").text["parameters"]
    # at weight 0 the LoRA changes nothing, its reading neither (as in ComfyUI): the base model's image
    capsys.readouterr()
    off = render(tmp_path, "off", "--prompt", "lvshape", "--lora", f"{lora}:0")
    assert "trained with" not in capsys.readouterr().out
    assert np.array_equal(off, render(tmp_path, "base", "--prompt", "lvshape"))
    # one file given twice, a strength sweep tried in one call: they stack, and are said to (one image, unsaid)
    render(tmp_path, "twice", "--prompt", "lvshape", "--lora", f"{lora}:0.5", "--lora", f"{lora}:0.8")
    assert ("--lora: skip.safetensors is given 2 times: its strengths add up (0.5 + 0.8 = 1.3), as two ComfyUI "
            "loaders of one file do") in " ".join(capsys.readouterr().out.split())


def test_ai_toolkits_trigger_placeholder_takes_the_loras_trigger_word(tmp_path, capsys):
    """A training sample's "[trigger] holding a cup" drew the trigger word; generate drew "[trigger]" as text."""
    lora = train(run_config(output=str(tmp_path / "t"), max_steps=1, trigger_word="lvshape")).lora_path
    capsys.readouterr()
    placeholder = render(tmp_path, "placeholder", "--prompt", "[trigger] holding a cup", "--lora", str(lora))
    assert "--prompt: [trigger] is 'lvshape', the LoRA's trigger word" in capsys.readouterr().out
    word = render(tmp_path, "word", "--prompt", "lvshape holding a cup", "--lora", str(lora))
    assert np.array_equal(placeholder, word)
    assert Image.open(tmp_path / "placeholder.png").text["parameters"].startswith("lvshape holding a cup")
    render(tmp_path, "none", "--prompt", "[trigger], holding a cup")
    assert "--prompt: [trigger] is left out: no --lora file records a trigger word" in capsys.readouterr().out
    assert Image.open(tmp_path / "none.png").text["parameters"].startswith("holding a cup\n")  # (not ", holding")
    # a negative prompt's too; a diffusers-format copy's folder holds no trigger word (a traceback: a folder read as
    # a file)
    render(tmp_path, "negative", "--prompt", "a cup --n [trigger]", "--lora", str(lora))
    assert "Negative prompt: lvshape" in Image.open(tmp_path / "negative.png").text["parameters"]
    folder = train(run_config(output=str(tmp_path / "d"), max_steps=1, trigger_word="lvshape",
                              format="diffusers")).lora_path.parent / "d-diffusers"
    capsys.readouterr()
    render(tmp_path, "folder", "--prompt", "[trigger] a cup", "--lora", str(folder))
    assert "[trigger] is left out: no --lora file records a trigger word" in capsys.readouterr().out


def test_the_vae_a_lora_trained_with_renders_its_samples_again(tmp_path):
    """train --vae: generate --vae decodes with the same VAE, so a sample prompt's image is made again."""
    import torch

    from lowvram.models import load_model

    vae = load_model("tiny").vae
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(1.5)  # another VAE than tiny's own
    vae.save_pretrained(tmp_path / "vae")
    result = train(run_config(output=str(tmp_path / "run"), max_steps=1, vae=str(tmp_path / "vae"),
                              sample_prompts=("lvshape --d 5 --s 2",)))
    sample = np.asarray(Image.open(result.samples[0]), dtype=np.int16)
    again = render(tmp_path, "again", "--prompt", "lvshape --d 5 --s 2", "--lora", str(result.lora_path), "--vae",
                   str(tmp_path / "vae"))
    own = render(tmp_path, "own", "--prompt", "lvshape --d 5 --s 2", "--lora", str(result.lora_path))
    assert np.abs(again - sample).max() <= 1 and np.abs(own - sample).mean() > 0.5


def test_a_wrong_clip_skip_is_one_line(capsys):
    assert main([*BASE, "--prompt", "x", "--clip-skip", "9"]) == 2
    assert "--clip-skip" in capsys.readouterr().err


def test_clip_skip_on_sdxl_is_refused_as_training_refuses_it(tmp_path, capsys):
    """SDXL reads its encoders' penultimate layer already: a --clip-skip 2 there would change nothing, silently."""
    assert main(["generate", "--model", "tiny-sdxl", "--prompt", "x", "--steps", "1", "--clip-skip", "2",
                 "--output", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--clip-skip 2: tiny SDXL (random weights) already reads its text encoders' penultimate layer" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_count_renders_each_image_from_its_own_seed(tmp_path, capsys):
    """--count N: image i is the one --seed S + i renders alone, as AUTOMATIC1111's batch count seeds them; each is
    said as it is written (nothing was said before the last, minutes later on a slow card)."""
    assert main([*BASE, "--prompt", "lvshape, a red circle", "--count", "2", "--output", str(tmp_path / "n.png")]) == 0
    said = capsys.readouterr().out.splitlines()
    assert [re.sub(r"\d+ s\)$", "N s)", line) for line in said] == [
        "loading tiny", f"wrote {tmp_path / 'n-00.png'} (1/2, N s)", f"wrote {tmp_path / 'n-01.png'} (2/2, N s)"], said
    first, second = (np.asarray(Image.open(tmp_path / f"n-{i:02d}.png"), dtype=np.int16) for i in range(2))
    assert not np.array_equal(first, second)
    assert np.array_equal(second, render(tmp_path, "six", "--prompt", "lvshape, a red circle", "--seed", "6"))
    # each PNG says what made it, as AUTOMATIC1111 writes it (its PNG Info, "Send to txt2img")
    assert Image.open(tmp_path / "n-01.png").text["parameters"] == (
        "lvshape, a red circle\nSteps: 2, Sampler: PLMS, CFG scale: 7, Seed: 6, Size: 64x64, Model: tiny")
    lora = train(run_config(output=str(tmp_path / "style"), max_steps=1)).lora_path
    render(tmp_path, "tagged", "--prompt", "a cat --n blurry --ss dpmsolver++_karras", "--lora", f"{lora}:0.5")
    # its sampler by AUTOMATIC1111's name, and its LoRA's hash (the addnet hash: kohya's of the file as written),
    # which model sites link an image to its LoRA by
    short = read_header(lora)[0]["sshs_model_hash"][:12]
    assert Image.open(tmp_path / "tagged.png").text["parameters"] == (
        "a cat <lora:style:0.5>\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, "
        f'Size: 64x64, Model: tiny, Lora hashes: "style: {short}"')
    # a JPEG or WebP keeps them where AUTOMATIC1111 does: its EXIF UserComment (they had none)
    for suffix in (".jpg", ".webp"):
        assert main([*BASE, "--prompt", "a cat --n blurry --ss dpmsolver++_karras", "--lora", f"{lora}:0.5",
                     "--output", str(tmp_path / f"tagged{suffix}")]) == 0
        comment = Image.open(tmp_path / f"tagged{suffix}").getexif().get_ifd(0x8769)[0x9286]
        assert comment[:8] == b"UNICODE\0"
        assert comment[8:].decode("utf-16-be") == Image.open(tmp_path / "tagged.png").text["parameters"]
    named = tmp_path / "my, style: v2.safetensors"  # a name AUTOMATIC1111's list could not be split at
    named.write_bytes(lora.read_bytes())
    render(tmp_path, "named", "--prompt", "a cat", "--lora", str(named))
    assert Image.open(tmp_path / "named.png").text["parameters"].endswith(f'Lora hashes: "my style v2: {short}"')


def test_a_dora_in_peft_naming_renders_as_its_kohya_file_does(tmp_path, capsys):
    """diffusers' loader left a text encoder's DoRA magnitudes at their start where peft names them bare
    (`lora_magnitude_vector`), and refused peft's adapter-named keys: both go through lowvram's reader now."""
    from safetensors.torch import load_file, save_file

    lora = train(run_config(output=str(tmp_path / "dora"), max_steps=2, lr=5e-2, network="dora",
                            train_text_encoder=True, format="diffusers")).lora_path
    folder = lora.parent / f"{lora.stem}-diffusers"
    # the folder named, which load_lora_weights takes (on the run's folder it picked one of the step saves there)
    assert f"saved {folder} (diffusers' format: pipe.load_lora_weights on that folder)" in capsys.readouterr().out
    tensors = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    bare = {key.removesuffix(".weight") if ".lora_magnitude_vector" in key else key: t for key, t in tensors.items()}
    named = {key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
             .replace(".lora_magnitude_vector.", ".lora_magnitude_vector.default."): t for key, t in tensors.items()}
    assert any(key.startswith("text_encoder.") and key.endswith("lora_magnitude_vector") for key in bare)
    metadata = {"lora_adapter_metadata": read_header(folder / "pytorch_lora_weights.safetensors")[0][
        "lora_adapter_metadata"]}
    expected = render(tmp_path, "kohya", "--prompt", "lvshape, a red circle", "--lora", str(lora))
    for name, variant in (("bare", bare), ("named", named)):
        save_file(variant, str(tmp_path / f"{name}.safetensors"), metadata)
        got = render(tmp_path, name, "--prompt", "lvshape, a red circle", "--lora",
                     str(tmp_path / f"{name}.safetensors"))
        assert np.abs(got - expected).max() <= 1, name


def test_an_image_of_a_single_file_model_names_its_hash_as_automatic1111_does(tmp_path):
    """Civitai links an uploaded image's base model by its Model hash (AutoV1, AUTOMATIC1111's): it was missing."""
    from safetensors.torch import save_file

    from lowvram.models.ldm_layout import sd15_single_file
    from lowvram.models.loading import file_short_hash, load_model

    parts = load_model("tiny").pipeline
    checkpoint = tmp_path / "myMix_v3.safetensors"
    save_file(sd15_single_file(parts.unet, parts.vae, parts.text_encoder), str(checkpoint))
    assert main(["generate", "--model", str(checkpoint), "--prompt", "a cat", "--steps", "1", "--output",
                 str(tmp_path / "x.png")]) == 0
    said = Image.open(tmp_path / "x.png").text["parameters"]
    assert said.endswith(f"Size: 64x64, Model hash: {file_short_hash(checkpoint)}, Model: myMix_v3"), said


def test_an_automatic1111_lora_tag_is_refused_naming_lora_and_left_out_of_training_samples(tmp_path, capsys,
                                                                                           monkeypatch):
    """In generate the tag would reach CLIP as words and the image be drawn without the LoRA; a training sample's
    (a prompt copied from Civitai) is left out with a note, the LoRA being trained drawn (kohya draws the tag as
    words beside it). The --lora said names the tag's file and weight (its file where it is here)."""
    monkeypatch.chdir(tmp_path)
    assert main([*BASE, "--prompt", "a cat <lora:style:0.8>", "--output", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        "lowvram generate: error: --prompt: <lora:style:0.8> is AUTOMATIC1111's way to load a LoRA, which a prompt "
        "here does not read: --lora style.safetensors:0.8 (the path of style.safetensors: AUTOMATIC1111's "
        "models/Lora, ComfyUI's models/loras) loads it")  # (it said "--lora FILE:WEIGHT loads one")
    (tmp_path / "my style.safetensors").write_bytes(b"")
    assert main([*BASE, "--prompt", "a cat <lora:my style>", "--output", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip().endswith("--lora 'my style.safetensors:1' loads it")
    from lowvram.prompts import lora_tag_flag

    assert lora_tag_flag("<lora:my style.safetensors:te=0.5>") == "--lora 'my style.safetensors:0.5'"
    assert lora_tag_flag("<lora:my style:0.8:0.5>") == ("--lora 'my style.safetensors:0.8'; one strength here, for the "
                                                       "U-Net and text encoders alike")
    tagged = run_config(sample_prompts=["<lora:mychar:0.8>, a cat, <lora:style:1> sitting --n <lora:x:1> blurry",
                                        "a dog <LYCO:style:1>", "a bird -- <lora:wings:1> flying"])
    assert [(s.text, s.negative) for s in tagged.samples] == [("a cat, sitting", "<lora:x:1> blurry"),
                                                              ("a dog", ""), ("a bird -- flying", "")]
    assert sample_prompt_notes(tagged) == [("sample prompts: <lora:mychar:0.8>, <lora:style:1>, <LYCO:style:1>, "
                                            "<lora:wings:1> left out: every sample is drawn with the LoRA being "
                                            "trained, at full strength, and no other")]
    with pytest.raises(LowvramError) as alone:  # (it said "no prompt before the options in ' --n blurry'")
        run_config(sample_prompts=["<lora:mychar:0.8> --n blurry"])
    assert str(alone.value) == ("--sample-prompt: '<lora:mychar:0.8> --n blurry' holds AUTOMATIC1111's LoRA tags "
                                "alone, which a sample leaves out (every sample is drawn with the LoRA being trained); "
                                "write the words to draw")
    # prompt editing, alternation and a hypernetwork: AUTOMATIC1111's, drawn here without them (as words)
    for prompt, said in (("[red:blue:0.5] circle", "[red:blue:0.5] is AUTOMATIC1111's prompt editing or alternation"),
                         ("a [cat|dog]", "[cat|dog] is AUTOMATIC1111's prompt editing"),
                         ("a cat --n [ugly:0.5]", "[ugly:0.5] is AUTOMATIC1111's prompt editing"),
                         ("<hypernet:ink:1> a cat", "<hypernet:ink:1> loads an AUTOMATIC1111 hypernet")):
        assert main([*BASE, "--prompt", prompt, "--output", str(tmp_path / "x.png")]) == 2
        assert said in capsys.readouterr().err
    assert main([*BASE, "--prompt", "a [red] (circle:1.2) [(square:1.2)]", "--output", str(tmp_path / "x.png")]) == 0
    # a training sample's too: drawn as words, then refused by generate reading the sample's own infotext
    for prompt, said in (("lvshape, [red:blue:0.5] circle", ("--sample-prompt: [red:blue:0.5] is AUTOMATIC1111's "
                          "prompt editing or alternation, which lowvram does not do")),
                         ("a red circle AND a blue square", ("--sample-prompt: AND is AUTOMATIC1111's composable "
                          "diffusion, which lowvram does not do: write one prompt"))):
        with pytest.raises(LowvramError, match=re.escape(said)):
            run_config(sample_prompts=[prompt])
    # as AUTOMATIC1111's grammar reads them: no number, no editing; escaped, text; a negative prompt's AND, words
    assert run_config(sample_prompts=["photo of [ohwx:person] man, [artist:name], \\[12:30\\] --n ugly AND blurry"])


def test_emphasis_in_half_precision_weighs_by_the_weight_not_by_rounding_noise():
    """On a GPU the text encoders run in bf16, whose rounding noise (1e-4) in the tiny CLIP's zero-mean states
    passed for a mean: the ratio of two noises scaled the prompt at random, or by 0."""
    import torch

    from lowvram.models.conditioning import _encode_as_a1111
    from lowvram.models.loading import load_model

    model = load_model("tiny")
    encoders = [encoder.to(torch.bfloat16) for encoder in model.text_encoders]
    prompts = ["circle dog", "(circle:1.2) dog", "(circle:3) dog", "(red:1.5) sky"]
    with torch.no_grad():
        states, _ = _encode_as_a1111(model.family, encoders, model.tokenizers, prompts, torch.device("cpu"), 1)
    plain, weak, loud, sky = (float(s.float().abs().mean()) for s in states)
    # one token of 77 weighed moves the mean a little; a rescale by noise moved all of them (by 11 %, or to 0)
    assert plain < weak < loud < 1.05 * plain and sky > 0.5 * plain
    assert float(states[2].float().abs().max()) > 2 * float(states[0].float().abs().max())  # the token itself


def test_peft_biases_are_left_to_diffusers_which_applies_them(tmp_path):
    """lowvram's reader has no place for peft's lora_bias (it refused a file diffusers renders); plain peft and
    diffusers files are its own."""
    from safetensors.torch import save_file
    from torch import zeros

    from lowvram.generate import _read_with_peft

    layer = "unet.down_blocks.0.attentions.0.proj_in"
    plain = {f"{layer}.lora_A.weight": zeros(2, 32), f"{layer}.lora_B.weight": zeros(32, 2)}
    save_file(plain, str(tmp_path / "plain.safetensors"))
    save_file(plain | {f"{layer}.lora_B.bias": zeros(32)}, str(tmp_path / "bias.safetensors"))
    assert _read_with_peft(tmp_path / "plain.safetensors") and not _read_with_peft(tmp_path / "bias.safetensors")
