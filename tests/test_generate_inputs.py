"""`lowvram generate` checks what it is given before it loads anything: numbers in range, seeds A1111 can repeat,
LoRA weights that are numbers, an --output in a format it writes, and never a file it reads, nor any existing
file without --overwrite. Each refusal is one line naming the option and the fix, and writes nothing."""

import re

import numpy as np
import pytest
import torch
from conftest import run_config
from PIL import Image
from safetensors.torch import save_file

from lowvram.cli import build_parser, main
from lowvram.data.sample import write_sample_dataset
from lowvram.generate import parameters_of
from lowvram.models.ldm_layout import sd15_single_file
from lowvram.models.loading import load_model
from lowvram.train.loop import train

BASE = ["generate", "--model", "tiny", "--prompt", "lvshape, a red circle", "--steps", "1"]


def base(argv: list[str]) -> list[str]:
    """BASE with `argv`, whose own --prompt replaces BASE's (generate refuses a prompt given twice)."""
    return [*(BASE[:3] + BASE[5:] if "--prompt" in argv else BASE), *argv]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(a LoRA trained on the tiny model, the tiny model as a single-file checkpoint)"""
    root = tmp_path_factory.mktemp("inputs")
    lora = train(run_config(output=str(root / "run"), max_steps=1)).lora_path
    pipeline = load_model("tiny").pipeline
    checkpoint = root / "base.safetensors"
    save_file(sd15_single_file(pipeline.unet, pipeline.vae, pipeline.text_encoder), str(checkpoint))
    return lora, checkpoint


def refused(argv, capsys) -> str:
    """The one line `generate` refuses `argv` with (exit 2, no traceback)."""
    capsys.readouterr()
    code = main(base(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("lowvram generate: error: ")
    return err[0].removeprefix("lowvram generate: error: ")


def test_generate_never_writes_over_a_file_it_reads(inputs, tmp_path, capsys):
    lora, checkpoint = inputs
    numbered = tmp_path / "style-00.safetensors"  # with --count 2, the first numbered --output is this --lora
    numbered.write_bytes(lora.read_bytes())
    before = {path: path.read_bytes() for path in (lora, checkpoint, numbered)}
    for argv, named in ((["--lora", str(lora), "--output", str(lora)], lora),
                        (["--lora", f"{lora}:0.5", "--output", str(lora)], lora),
                        (["--model", str(checkpoint), "--output", str(checkpoint)], checkpoint),
                        (["--lora", str(numbered), "--count", "2", "--output", str(tmp_path / "style.safetensors")],
                         numbered)):
        for overwrite in ([], ["--overwrite"]):  # --overwrite never replaces a file being read
            assert refused([*argv, *overwrite], capsys) == f"--output: {named} is a file being read; name another"
    assert {path: path.read_bytes() for path in before} == before


def test_generate_replaces_an_existing_file_only_with_overwrite(tmp_path, capsys):
    image = next((write_sample_dataset(tmp_path / "data") / "5_lvshape").glob("*.png"))
    kept = image.read_bytes()
    assert refused(["--output", str(image)], capsys) == (f"--output: {image} exists; add --overwrite to replace "
                                                           "it, or name another")
    assert image.read_bytes() == kept
    numbered = tmp_path / "out-01.png"  # with --count, every numbered file is checked before any is written
    numbered.write_bytes(kept)
    assert refused(["--count", "3", "--output", str(tmp_path / "out.png")], capsys) == (
        f"--output: {numbered} exists; add --overwrite to replace it, or name another")
    assert sorted(path.name for path in tmp_path.glob("out*")) == ["out-01.png"]
    assert main([*BASE, "--output", str(image), "--overwrite"]) == 0
    assert Image.open(image).size == (64, 64) and image.read_bytes() != kept


def test_generate_writes_the_format_its_extension_names(tmp_path, capsys):
    pixels = {}
    for name, kind in (("a.png", "PNG"), ("b.jpg", "JPEG"), ("c.JPEG", "JPEG"), ("d.webp", "WEBP")):
        assert main([*BASE, "--output", str(tmp_path / name)]) == 0
        with Image.open(tmp_path / name) as image:
            assert image.format == kind, name
            pixels[name] = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert main([*BASE, "--seed", "7", "--output", str(tmp_path / "other.png")]) == 0
    other = np.abs(np.asarray(Image.open(tmp_path / "other.png"), dtype=np.int16) - pixels["a.png"]).mean()
    assert np.abs(pixels["b.jpg"] - pixels["a.png"]).mean() < 8  # the same image, compressed at quality 95
    for name in ("c.JPEG", "d.webp"):
        assert np.abs(pixels[name] - pixels["a.png"]).mean() < other / 2, name  # not another image
    for name in ("x.txt", "x.safetensors", "x"):
        assert refused(["--output", str(tmp_path / name)], capsys) == (
            f"--output: {tmp_path / name} names no image format; end it in .png, .jpg, .jpeg or .webp (the format "
            "is the extension's), or in / for a folder to write in")
        assert not (tmp_path / name).exists()
    # an output folder, as ComfyUI's and AUTOMATIC1111's: the image goes in it (it was refused as a name), numbered
    # on as AUTOMATIC1111 numbers (a second call was refused: generated.png exists); made where it ends in /
    (tmp_path / "previews").mkdir()
    assert main([*BASE, "--output", str(tmp_path / "previews")]) == 0
    assert main([*BASE, "--output", str(tmp_path / "previews"), "--count", "2"]) == 0
    assert sorted(path.name for path in (tmp_path / "previews").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    # each image's seed is its number there: images added later are new ones (class images topped up were copies)
    made = {path.name: path.read_bytes() for path in (tmp_path / "previews").iterdir()}
    assert len(set(made.values())) == 3 and "Seed: 2," in parameters_of(tmp_path / "previews" / "00002.png")
    (tmp_path / "stamped").mkdir()  # a timestamp's name past the seeds: seed 0 (it was refused as a --seed given)
    Image.new("RGB", (8, 8)).save(tmp_path / "stamped" / "20240101123456.png")
    assert main([*BASE, "--output", str(tmp_path / "stamped")]) == 0
    assert "Seed: 0," in parameters_of(tmp_path / "stamped" / "20240101123457.png")
    assert main([*BASE, "--output", f"{tmp_path / 'outputs' / 'txt2img-images'}/"]) == 0
    assert [path.name for path in (tmp_path / "outputs" / "txt2img-images").iterdir()] == ["00000.png"]
    (tmp_path / "taken.png").write_bytes(b"")
    assert refused(["--output", f"{tmp_path / 'taken.png'}/"], capsys) == (  # (said once the model had loaded)
        f"--output: {tmp_path / 'taken.png'} is a file, not a folder to write the images in; name another")
    assert refused(["--output", str(tmp_path / "taken.png" / "x.png")], capsys) == (  # (as were these)
        f"--output: can't write in {tmp_path / 'taken.png'}: {tmp_path / 'taken.png'} is a file, not a folder; choose "
        "a folder you can write to")


@pytest.mark.parametrize("argv, says", [
    (["--steps", "0"], "--steps: must be 1 or more, got 0"),
    (["--steps", "-1"], "--steps: must be 1 or more, got -1"),
    (["--resolution", "-64"], "--resolution: must be a multiple of 8 from 64 to 4096, got -64"),
    (["--resolution", "100000"], "--resolution: must be a multiple of 8 from 64 to 4096, got 100000"),
    (["--resolution", "0"], "--resolution: must be a multiple of 8 from 64 to 4096, got 0"),
    (["--resolution", "65"], ("--resolution: must be a multiple of 8 from 64 to 4096, got 65 (give 64 or 72; a "
                              "prompt's --w and --h are rounded down, as kohya's)")),
    (["--count", "0"], "--count: must be 1 or more, got 0"),
    (["--count", "-1"], "--count: must be 1 or more, got -1"),
    (["--guidance", "nan"], "--guidance: must be a finite number, got nan"),
    (["--weight", "nan"], "--weight: must be a finite number, got nan"),
    (["--weight", "inf"], "--weight: must be a finite number, got inf"),
    (["--weight", "0.5"], "--weight: sets the strength of --lora files, and none is given; add --lora FILE"),
    (["--width", "100"], ("--width: must be a multiple of 8 from 64 to 4096, got 100 (give 96 or 104; a prompt's "
                          "--w and --h are rounded down, as kohya's)")),  # (the prompt's --w 100 drew 96, unsaid)
    (["--width", "4100"], ("--width: must be a multiple of 8 from 64 to 4096, got 4100 (give 4096; a prompt's --w "
                          "and --h are rounded down, as kohya's)")),
    (["--height", "32"], "--height: must be a multiple of 8 from 64 to 4096, got 32"),
    (["--prompt", "  "], "--prompt: nothing to draw: the prompt is empty"),
    (["--prompt", "x --d 4294967295", "--count", "2"], ("--prompt: --d (seed): the 2 images' seeds 4294967295 to "
                                                       "4294967296 pass 4294967295; give a smaller seed, or -1 for a "
                                                       "random one")),
    (["--seed", "99999999999999999999"],
     "--seed: must be from 0 to 4294967295, or -1 for a random one; got 99999999999999999999"),
    (["--seed", "-2"], "--seed: must be from 0 to 4294967295, or -1 for a random one; got -2"),
    (["--seed", "4294967295", "--count", "2"], ("--seed: the 2 images' seeds 4294967295 to 4294967296 pass "
                                                "4294967295; give a smaller seed, or -1 for a random one")),
    (["--prompt", "x --s 0"], "--prompt: --s (steps) must be a whole number from 1 to 1000, got '0' in 'x --s 0'"),
    (["--prompt", "x --l nan"], "--prompt: --l (guidance scale) must be a finite number, got 'nan' in 'x --l nan'"),
    (["--prompt", "x --w 8192"], ("--prompt: --w (width) must be a whole number from 32 to 4096 (rounded down to a "
                                 "multiple of 8), got '8192' in 'x --w 8192'")),
    (["--prompt", "x --d -5"], ("--prompt: --d (seed) must be a whole number from 0 to 4294967295, or -1 for a random "
                                "one, got '-5' in 'x --d -5'")),
])
def test_a_number_out_of_range_is_one_line_and_writes_nothing(argv, says, tmp_path, capsys):
    assert refused([*argv, "--output", str(tmp_path / "x.png")], capsys) == says
    assert not (tmp_path / "x.png").exists()


def test_a_prompt_given_twice_is_refused_and_a_negative_prompt_the_prompts_own_replaces_is_said(tmp_path, capsys):
    for flag in ("--prompt", "--negative-prompt"):  # argparse kept the last, dropping the first unsaid
        assert main([*base([flag, "a", flag, "b"]), "--output", str(tmp_path / "x.png")]) == 2
        assert f"{flag} given twice; give it once" in capsys.readouterr().err
    assert main([*base(["--prompt", "a cat --n blurry", "--negative-prompt", "lowres"]), "--output",
                 str(tmp_path / "x.png")]) == 0
    assert ("--negative-prompt: the prompt's own --n replaces it (kohya's inline options win over the flags)"
            in capsys.readouterr().out.splitlines())
    assert "Negative prompt: blurry\n" in Image.open(tmp_path / "x.png").text["parameters"]


def test_a_lora_weight_that_is_no_number_is_named(inputs, tmp_path, capsys):
    lora, _ = inputs
    for weight, says in (("abc", "is not a number"), ("nan", "is not a finite number"),
                         ("-inf", "is not a finite number")):
        assert refused(["--lora", f"{lora}:{weight}", "--output", str(tmp_path / "x.png")], capsys) == (
            f"--lora: weight '{weight}' of {lora} {says}; write FILE:WEIGHT, e.g. {lora}:0.8")
    assert not (tmp_path / "x.png").exists()


def test_steps_past_the_models_timesteps_are_one_line(tmp_path, capsys):
    says = refused(["--steps", "1001", "--sampler", "ddim", "--output", str(tmp_path / "x.png")], capsys)
    assert says.startswith("--steps: ") and "at most 1000 steps; got 1001" in says


def test_seed_minus_one_draws_a_seed_says_it_and_the_image_can_be_made_again(tmp_path, capsys):
    capsys.readouterr()
    assert main([*BASE, "--seed", "-1", "--output", str(tmp_path / "drawn.png")]) == 0
    drawn = re.search(r"^seed -1: drew (\d+)$", capsys.readouterr().out, re.MULTILINE)
    assert drawn and 0 <= int(drawn[1]) <= 2**32 - 1
    assert main([*BASE, "--seed", drawn[1], "--output", str(tmp_path / "again.png")]) == 0
    images = [np.asarray(Image.open(tmp_path / name)) for name in ("drawn.png", "again.png")]
    assert np.array_equal(*images)
    assert main([*base(["--prompt", "a red circle --d -1"]), "--output", str(tmp_path / "inline.png")]) == 0
    assert re.search(r"^seed -1: drew \d+$", capsys.readouterr().out, re.MULTILINE)


def test_generate_computes_as_training_would_on_the_card(monkeypatch):
    """A GTX 16xx draws in fp32 (fp16 gives black images there, as it gives training NaN losses); a card with bf16
    in bf16, a T4 in fp16."""
    from lowvram import generate
    from lowvram.hardware import load_profile

    class Loaded(Exception):
        pass

    def loading(model, family=None, dtype=None, **kwargs):
        raise Loaded(dtype)

    monkeypatch.setattr(generate, "load_model", loading)
    for profile, dtype in (("gtx-1660-6gb", torch.float32), ("rtx-3060-12gb", torch.bfloat16),
                           ("colab-t4", torch.float16)):
        monkeypatch.setattr(generate, "detect", lambda profile=profile: load_profile(profile))
        with pytest.raises(Loaded) as loaded:
            generate.generate(build_parser().parse_args(["generate", "--model", "tiny", "--prompt", "a cat"]))
        assert loaded.value.args[0] == dtype, profile


def test_a_model_checkpoint_given_as_a_lora_is_named_one(tmp_path, capsys):
    """It got diffusers' "Invalid LoRA checkpoint. Make sure all LoRA param names contain 'lora'"."""
    from lowvram.models.loading import load_model

    parts = load_model("tiny").pipeline
    checkpoint = tmp_path / "model.safetensors"
    save_file(sd15_single_file(parts.unet, parts.vae, parts.text_encoder), str(checkpoint))
    assert refused(["--lora", str(checkpoint), "--output", str(tmp_path / "x.png")], capsys) == (
        f"--lora: {checkpoint} is a tiny SD (random weights) model checkpoint, not a LoRA; give it as --model")
    vae = tmp_path / "vae.safetensors"  # a VAE or an embedding got that message too; a VAE is named as one
    save_file({key: tensor.contiguous() for key, tensor in parts.vae.state_dict().items()}, str(vae))
    assert refused(["--lora", str(vae), "--output", str(tmp_path / "x.png")], capsys) == (
        f"--lora: {vae} is a VAE, not a LoRA; give it as --vae")
    embedding = tmp_path / "embedding.safetensors"
    save_file({"emb_params": torch.zeros(2, 32)}, str(embedding))
    assert refused(["--lora", str(embedding), "--output", str(tmp_path / "x.png")], capsys) == (
        f"--lora: {embedding}: it is a textual-inversion embedding, not a LoRA: put it in ComfyUI's or "
        "AUTOMATIC1111's embeddings folder")


def test_an_automatic1111_embedding_pickle_given_as_a_lora_is_named_one(tmp_path, capsys):
    """Its pickle refusal's conversion command failed on it ('dict' object has no attribute 'contiguous'), and a
    converted embedding is no LoRA either. The command converts a checkpoint with a step count beside its tensors."""
    import subprocess
    import sys

    from lowvram.errors import CONVERT_PICKLE

    embedding = tmp_path / "embeddings" / "badhands.pt"
    embedding.parent.mkdir()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(2, 768)}, "name": "badhands",
                "step": 100}, embedding)
    said = refused(["--lora", str(embedding), "--output", str(tmp_path / "x.png")], capsys)
    assert re.fullmatch(rf"--lora: {re.escape(str(embedding))} is a textual-inversion embedding \(in an embeddings "
                        r"folder, [\d.]+ KiB\), not a LoRA; AUTOMATIC1111 reads it from its "
                        r"embeddings folder as it is, by its name in the prompt; lowvram applies LoRAs only", said)
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"lora_unet_x.alpha": torch.tensor(4.0), "global_step": 5}, checkpoint)
    subprocess.run([sys.executable, "-c", CONVERT_PICKLE, str(checkpoint), str(tmp_path / "model.safetensors")],
                   check=True)
    from safetensors.torch import load_file

    assert load_file(tmp_path / "model.safetensors") == {"lora_unet_x.alpha": torch.tensor(4.0)}


def test_a_lora_of_another_family_is_named_by_its_metadata(tmp_path, capsys):
    """An SDXL LoRA on an SD1.5 model said peft's size mismatch of one layer; its metadata says what it is for."""
    from lowvram.train.loop import train

    lora = train(run_config(model="tiny-sdxl", output=str(tmp_path / "xl"), max_steps=1)).lora_path
    capsys.readouterr()
    assert main(base(["--lora", str(lora), "--output", str(tmp_path / "x.png")])) == 2
    said = capsys.readouterr()
    assert said.err.strip() == (
        f"lowvram generate: error: --lora: {lora} is a LoRA for lowvram's built-in tiny-sdxl demo model (its metadata "
        "says), not for tiny SD (random weights); give --model tiny-sdxl, or train one on this model")
    assert "loading" not in said.out  # said from the headers, before the model loads (a minute, at full size)
    # a full-size one's metadata (no demo model named): its family
    from safetensors.torch import load_file, save_file

    from lowvram.lora_header import read_header

    full = tmp_path / "full.safetensors"
    save_file(load_file(str(lora)), str(full),
              {key: value for key, value in read_header(lora)[0].items() if key != "lowvram.family"})
    assert main(base(["--lora", str(full), "--output", str(tmp_path / "x.png")])) == 2
    assert capsys.readouterr().err.strip() == (
        f"lowvram generate: error: --lora: {full} is a LoRA for Stable Diffusion XL (its metadata says), not for tiny "
        "SD (random weights); give a Stable Diffusion XL model as --model")


def test_generation_data_pasted_or_in_an_image_is_read_as_automatic1111_writes_it(tmp_path, capsys):
    """AUTOMATIC1111's generation data (PNG Info, Civitai's "copy generation data") given as --prompt was drawn as
    the prompt's words, its negative prompt, steps, seed and size too; an image's path was drawn as the words."""
    made = ["--prompt", "lvshape, a red circle --n blurry", "--seed", "7", "--steps", "2", "--guidance", "5",
            "--width", "64", "--height", "72", "--clip-skip", "2"]
    for name in ("made.webp", "made.png"):
        assert main([*base(made), "--output", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert main([*base(["--prompt", str(tmp_path / "made.webp")]), "--output", str(tmp_path / "again.png")]) == 0
    assert "--prompt: read as AUTOMATIC1111's generation data: lvshape, a red circle --n blurry --s 2 --l 5 --d 7 " \
           "--w 64 --h 72 --ss PLMS, --clip-skip 2 (its settings win over the flags, as a prompt's inline options " \
           "do)" in " ".join(capsys.readouterr().out.split())
    made, again = (np.asarray(Image.open(tmp_path / name)) for name in ("made.png", "again.png"))
    assert made.shape == (72, 64, 3) and np.array_equal(made, again)  # the image made again
    pasted = ("lvshape, a red circle <lora:style:0.8>\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M, "
              'Schedule type: Karras, CFG scale: 5, Seed: 7, Size: 64x72, Lora hashes: "style: 0123456789ab", '
              "Hires upscale: 2, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1")
    assert main([*base(["--prompt", pasted]), "--output", str(tmp_path / "pasted.png")]) == 0
    assert ("read as AUTOMATIC1111's generation data: lvshape, a red circle --n blurry --s 2 --l 5 --d 7 --w 64 "
            "--h 72 --ss DPM++ 2M Karras (its settings win over the flags, as a prompt's inline options do; left out: "
            "Hires upscale, <lora:style:0.8>, Model: v1-5-pruned-emaonly (drawn with tiny: --model loads the base "
            "model); --lora FILE:WEIGHT loads a LoRA)"
            in " ".join(capsys.readouterr().out.split()))
    newer = pasted.replace("Schedule type: Karras", "Schedule type: SGM Uniform")  # (Forge's: none here)
    assert main([*base(["--prompt", newer]), "--output", str(tmp_path / "newer.png")]) == 0
    assert "--ss DPM++ 2M (its settings" in " ".join(capsys.readouterr().out.split())
    # a Pony image's (Civitai's) Clip skip: 2 on an SDXL model: AUTOMATIC1111 ignores it there, so it drew the image
    # as lowvram draws it (it was refused as a --clip-skip never given)
    pony = "a red circle\nSteps: 2, Sampler: Euler a, CFG scale: 5, Seed: 7, Size: 64x64, Clip skip: 2"
    assert main(["generate", "--model", "tiny-sdxl", "--prompt", pony, "--output", str(tmp_path / "pony.png")]) == 0
    assert ("--prompt: its Clip skip: 2 changes nothing on SDXL, which reads its text encoders' penultimate layer "
            "already (AUTOMATIC1111 ignores it there too): left out") in " ".join(capsys.readouterr().out.split())
    assert "Clip skip" not in Image.open(tmp_path / "pony.png").text["parameters"]
    assert main(["generate", "--model", "tiny-sdxl", "--prompt", pony, "--clip-skip", "2", "--output",
                 str(tmp_path / "given.png")]) == 2  # one given is refused as ever
    assert "--clip-skip 2: tiny SDXL (random weights) already reads" in capsys.readouterr().err
    Image.new("RGB", (64, 64)).save(tmp_path / "plain.png")
    assert refused(["--prompt", str(tmp_path / "plain.png")], capsys) == (
        f"--prompt: {tmp_path / 'plain.png'} holds no generation data (AUTOMATIC1111's parameters); give the prompt "
        "as text")
