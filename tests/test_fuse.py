"""`lowvram merge --model`: LoRA files fused into a model (kohya's merge_lora.py). The merged checkpoint, loaded by
diffusers' own single-file loader, gives what the base model with the LoRA applied gives; every tensor the LoRA
did not change is kept bit for bit, extra keys included; a diffusers folder comes back as a folder."""

import shutil

import numpy as np
import pytest
import torch
from conftest import run_config
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_train import model_outputs

from lowvram import lora_header
from lowvram.adapters.lora_files import load_kohya
from lowvram.cli import main
from lowvram.models.ldm_layout import sd15_single_file, sdxl_single_file
from lowvram.models.loading import load_model
from lowvram.train.loop import train

EXTRA = "model_ema.decay"  # a tensor diffusers does not read, which the merged file must still hold


@pytest.fixture(scope="module", params=["tiny", "tiny-sdxl"])
def setup(request, tmp_path_factory):
    """(family, the base model as a single file, two LoRAs trained on it with their text encoders)"""
    family, root = request.param, tmp_path_factory.mktemp(request.param)
    model = load_model(family)
    p = model.pipeline
    state = (sdxl_single_file(p.unet, p.vae, p.text_encoder, p.text_encoder_2) if model.family.size_conditioning
             else sd15_single_file(p.unet, p.vae, p.text_encoder))
    checkpoint = root / "base.safetensors"
    save_file(state | {EXTRA: torch.tensor(0.9999)}, str(checkpoint),
              metadata={"modelspec.title": "base", "modelspec.hash_sha256": "0x1234"})
    loras = [train(run_config(model=family, output=str(root / name), max_steps=3, rank=4, alpha=2, lr=5e-2,
                              seed=seed, lora_layers="full", train_text_encoder=True)).lora_path
             for name, seed in (("first", 1), ("second", 2))]
    return family, checkpoint, loras


def applied(family, checkpoint, lora, weight):
    """The base model with the LoRA applied by lowvram's reader, unfused: the reference."""
    model = load_model(str(checkpoint), family)
    load_kohya(model, lora, weight)
    return model_outputs(model)


def test_the_merged_checkpoint_gives_what_the_lora_gives(setup, tmp_path, capsys):
    family, checkpoint, (lora, _) = setup
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", f"{lora}:0.7", "--model", str(checkpoint), "--output", str(merged)]) == 0
    assert f"{merged}: the model with 1 LoRA file(s) fused in" in capsys.readouterr().out

    base_hidden, base_out = model_outputs(load_model(str(checkpoint), family))
    hidden, out = model_outputs(load_model(str(merged), family))  # diffusers' from_single_file reads it
    want_hidden, want_out = applied(family, checkpoint, lora, 0.7)
    assert not torch.allclose(want_out, base_out, atol=1e-3) and not torch.allclose(want_hidden, base_hidden, atol=1e-3)
    torch.testing.assert_close(hidden, want_hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)

    before, after = load_file(str(checkpoint)), load_file(str(merged))
    assert before.keys() == after.keys()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.endswith(".weight") or "in_proj_weight" in key for key in changed)
    assert not any(key.startswith("first_stage_model.") or key == EXTRA for key in changed)  # the VAE, the extra
    assert all(after[key].dtype == before[key].dtype for key in before)
    metadata = safe_open(str(merged), framework="pt").metadata()
    assert metadata["lowvram.fused_loras"] == f"{lora.name} x0.7"
    # titled by its own file, as kohya's merge_lora titles it (the base's title named it: listed as the base)
    assert (metadata["modelspec.title"], metadata["modelspec.merged_from"]) == ("merged", f"base, {lora.parent.name}")
    assert not metadata["modelspec.architecture"].endswith("/lora")
    assert metadata["modelspec.prediction_type"] == "epsilon"
    assert "modelspec.hash_sha256" not in metadata  # the old tensors' hash would be wrong


def test_several_loras_add_up_at_their_weights(setup, tmp_path):
    _, checkpoint, (first, second) = setup
    paths = {}
    runs = (("a", [f"{first}:1"]), ("b", [f"{second}:1"]), ("ab", [f"{first}:0.5", f"{second}:-0.8"]))
    for name, sources in runs:
        paths[name] = tmp_path / f"{name}.safetensors"
        assert main(["merge", *sources, "--model", str(checkpoint), "--output", str(paths[name])]) == 0
    base, a, b, ab = (load_file(str(path)) for path in (checkpoint, paths["a"], paths["b"], paths["ab"]))
    for key in a:
        if a[key].is_floating_point() and not torch.equal(a[key], base[key]):
            want = base[key] + 0.5 * (a[key] - base[key]) - 0.8 * (b[key] - base[key])
            torch.testing.assert_close(ab[key], want, rtol=1e-4, atol=1e-5, msg=key)


def test_a_diffusers_folder_is_merged_into_a_folder_or_a_single_file(setup, tmp_path):
    family, checkpoint, (lora, _) = setup
    folder = tmp_path / "base-folder"
    load_model(str(checkpoint), family).pipeline.save_pretrained(str(folder))
    want_hidden, want_out = applied(family, checkpoint, lora, 1.0)
    for output in (tmp_path / "merged", tmp_path / "merged.safetensors"):
        assert main(["merge", str(lora), "--model", str(folder), "--output", str(output),
                     "--save-precision", "fp32"]) == 0
        hidden, out = model_outputs(load_model(str(output), family))
        torch.testing.assert_close(hidden, want_hidden, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob(".*partial"))
    weights = next((folder / "unet").glob("*.safetensors"))  # an fp16 variant beside, as hub snapshots hold: unread
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights.with_suffix(".fp16.safetensors")))
    assert main(["merge", str(lora), "--model", str(folder), "--output", str(tmp_path / "merged"),
                 "--overwrite"]) == 0  # a model folder it wrote: replaced

    for part in ("unet", "vae"):  # an fp32 folder stays fp32 (it was written in fp16, the VAE too), as kohya's does
        with safe_open(str(next((tmp_path / "merged" / part).glob("*.safetensors"))), framework="pt") as handle:
            assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {"F32"}, part  # noqa: SIM118


def test_save_precision_casts_the_whole_checkpoint(setup, tmp_path):
    family, checkpoint, (lora, _) = setup
    merged = tmp_path / "half.safetensors"
    assert main(["merge", str(lora), "--model", str(checkpoint), "--output", str(merged), "--save-precision",
                 "fp16"]) == 0
    tensors = load_file(str(merged))
    assert {tensor.dtype for tensor in tensors.values()} == {torch.float16}
    hidden, out = model_outputs(load_model(str(merged), family))
    want_hidden, want_out = applied(family, checkpoint, lora, 1.0)
    torch.testing.assert_close(hidden, want_hidden, rtol=2e-2, atol=2e-2)  # fp16's rounding of every weight
    torch.testing.assert_close(out, want_out, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("argv, message", [
    (["--rank", "4"], "--rank: with --model the LoRAs are added to the model's weights whole; drop --rank"),
    (["--verbose"], "--verbose: with --model the LoRAs are added to the model's weights whole; drop --verbose"),
    (["--output", "{checkpoint}"], "is a file being read; name another"),
    (["--output", "{lora}", "--overwrite"], "is a file being read; name another"),
    (["--output", "{existing}"], "exists; add --overwrite to replace it"),
    (["--model", "{existing}"], "is not a readable .safetensors file"),  # a traceback once, from its header
    (["--output", "{tmp}/merged.ckpt"], ("merged.ckpt: lowvram writes a .safetensors file or a diffusers folder (a "
                                         "name without extension), never a .ckpt pickle")),
])
def test_wrong_options_are_refused_in_one_line(setup, tmp_path, capsys, argv, message):
    _, checkpoint, (lora, _) = setup
    existing = tmp_path / "there.safetensors"
    existing.write_bytes(b"keep")
    argv = [arg.format(checkpoint=checkpoint, existing=existing, tmp=tmp_path, lora=lora, loradir=lora.parent)
            for arg in argv]
    held = sorted(lora.parent.iterdir())
    assert main(["merge", str(lora), "--model", str(checkpoint), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert existing.read_bytes() == b"keep" and not (tmp_path / "merged.ckpt").exists()
    assert sorted(lora.parent.iterdir()) == held


def test_a_lora_of_another_family_is_refused(setup, tmp_path, capsys):
    family, checkpoint, _ = setup
    other = "tiny" if family == "tiny-sdxl" else "tiny-sdxl"
    lora = train(run_config(model=other, output=str(tmp_path / "other"), max_steps=1)).lora_path
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", str(lora), "--model", str(checkpoint), "--output", str(merged)]) == 2
    err = capsys.readouterr().err
    assert f"is a LoRA for lowvram's built-in {other} demo model" in err and len(err.strip().splitlines()) == 1
    assert not merged.exists()


def test_merging_without_a_rank_or_a_model_is_refused(setup, capsys):
    _, _, (lora, _) = setup
    assert main(["merge", str(lora)]) == 2
    assert "--rank: give the merged file's rank (or --model" in capsys.readouterr().err


@pytest.mark.parametrize("network", ["dora", "loha", "lokr"])
def test_other_networks_fuse_as_they_apply(setup, tmp_path, network):
    family, checkpoint, _ = setup
    lora = train(run_config(model=family, output=str(tmp_path / network), max_steps=2, rank=4, lr=5e-2,
                            network=network, train_text_encoder=True)).lora_path
    merged = tmp_path / "merged.safetensors"
    strength = 0.6  # a DoRA's whole change scaled, as ComfyUI weighs it (test_lora_interop checks the formula)
    assert main(["merge", f"{lora}:{strength}", "--model", str(checkpoint), "--output", str(merged)]) == 0
    hidden, out = model_outputs(load_model(str(merged), family))
    want_hidden, want_out = applied(family, checkpoint, lora, strength)
    base_hidden, base_out = model_outputs(load_model(str(checkpoint), family))
    assert not torch.allclose(want_out, base_out, atol=1e-4) and not torch.allclose(want_hidden, base_hidden, atol=1e-4)
    torch.testing.assert_close(hidden, want_hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)


def test_generate_stacks_several_loras_as_the_merged_checkpoint_holds_them(setup, tmp_path):
    """`generate --lora A:0.5 --lora B:-0.8` renders what the checkpoint with both fused in renders, whichever
    reader applies each file (lowvram's for a kohya file it wrote, diffusers' for a diffusers-format file)."""
    family, checkpoint, (first, _) = setup
    diffusers_second = train(run_config(model=family, output=str(tmp_path / "second"), max_steps=3, rank=4, alpha=4,
                                        lr=5e-2, seed=2, format="diffusers", save_precision="fp32"))
    second_folder = diffusers_second.lora_path.parent / f"{diffusers_second.lora_path.stem}-diffusers"
    assert (second_folder / "pytorch_lora_weights.safetensors").is_file()
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", f"{first}:0.5", f"{diffusers_second.lora_path}:-0.8", "--model", str(checkpoint),
                 "--output", str(merged)]) == 0
    argv = ["generate", "--prompt", "lvshape, a red circle", "--steps", "3", "--seed", "1", "--model-family", family]
    images = {}
    for name, extra in (("merged", ["--model", str(merged)]),
                        ("stacked", ["--model", str(checkpoint), "--lora", f"{first}:0.5", "--lora",
                                     f"{second_folder}:-0.8"]),  # a diffusers LoRA folder, by its file
                        ("ours", ["--model", str(checkpoint), "--lora", f"{first}:0.5", "--lora",
                                  f"{diffusers_second.lora_path}:-0.8"]),
                        ("one", ["--model", str(checkpoint), "--lora", f"{first}:0.5"])):
        images[name] = tmp_path / f"{name}.png"
        assert main([*argv, *extra, "--output", str(images[name])]) == 0
    merged_pixels, stacked, ours, one = (np.asarray(Image.open(images[name]), dtype=np.int16)
                                         for name in ("merged", "stacked", "ours", "one"))
    assert np.abs(merged_pixels - stacked).max() <= 2 and np.abs(merged_pixels - ours).max() <= 2  # 8-bit rounding
    assert np.abs(merged_pixels - one).max() > 10  # the second LoRA changed it
    # the folder tagged by its whole name; only the kohya file hashed, whose hash AUTOMATIC1111 and sites know
    text = Image.open(images["stacked"]).text["parameters"]
    assert f"<lora:{first.stem}:0.5> <lora:{second_folder.name}:-0.8>" in text
    assert text.endswith(f'Lora hashes: "{first.stem}: {lora_header.read_header(first)[0]["sshs_model_hash"][:12]}"')


def test_a_broken_lora_file_is_named_as_merges_file_not_a_flag_it_lacks(setup, tmp_path, capsys):
    _, checkpoint, _ = setup
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"hello")
    assert main(["merge", str(broken), "--model", str(checkpoint), "--output", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lowvram merge: error: FILE: {broken} is not a readable .safetensors file"), err


def test_the_current_folder_as_output_is_named_not_replaced(setup, tmp_path, capsys, monkeypatch):
    """`--output .` in a model folder: Path('.') has no name to write beside (it was a traceback)."""
    _, checkpoint, (lora, _) = setup
    (tmp_path / "model_index.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert main(["merge", str(lora), "--model", str(checkpoint), "--output", ".", "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().endswith("--output .: name the model's own folder, e.g. merged")
    assert (tmp_path / "model_index.json").read_text() == "{}"


def test_a_model_alone_is_converted_between_a_folder_and_a_single_file(setup, tmp_path, capsys, monkeypatch):
    """kohya's convert_diffusers20_original_sd.py: no LoRA, the model written in the other form, the same model."""
    family, checkpoint, _ = setup
    folder, single = tmp_path / "model-v1.5", tmp_path / "single.safetensors"
    assert main(["merge", "--model", str(checkpoint), "--output", str(folder), "--save-precision", "fp32"]) == 0
    assert main(["merge", "--model", str(folder), "--output", str(single), "--save-precision", "fp32"]) == 0
    assert f"{single}: the model, converted (no LoRA fused in)" in capsys.readouterr().out
    want_hidden, want_out = model_outputs(load_model(str(checkpoint), family))
    hidden, out = model_outputs(load_model(str(single), family))  # diffusers' from_single_file reads it
    torch.testing.assert_close(hidden, want_hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)
    metadata = safe_open(str(single), framework="pt").metadata()
    assert "lowvram.fused_loras" not in metadata and "modelspec.merged_from" not in metadata
    assert metadata["modelspec.title"] == "model-v1.5"  # a folder's whole name (its stem was model-v1)
    variant = tmp_path / "variant"  # a hub download of the fp16 variant alone: its files named *.fp16.safetensors
    shutil.copytree(folder, variant)
    for weights in variant.rglob("*.safetensors"):
        weights.rename(weights.with_suffix(".fp16.safetensors"))
    assert main(["merge", "--model", str(variant), "--output", str(tmp_path / "v.safetensors"), "--save-precision",
                 "fp32"]) == 0, capsys.readouterr().err
    hidden, out = model_outputs(load_model(str(tmp_path / "v.safetensors"), family))
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    assert main(["merge", str(folder), "--output", str(tmp_path / "x.safetensors")]) == 2  # the model as a FILE
    assert capsys.readouterr().err.strip().splitlines() == [
        (f"lowvram merge: error: {folder}: a diffusers model, not a LoRA; give it as --model (merge --model {folder} "
         "[LoRA FILEs] --output FILE, no --rank: the LoRAs fused into it, or it converted alone)")]
    (tmp_path / "checkpoints").mkdir()  # a folder of the user's (ComfyUI's models/checkpoints/): written into
    assert main(["merge", "--model", str(folder), "--output", str(tmp_path / "checkpoints")]) == 0
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["model-v1.5.safetensors"]
    assert main(["merge", "--model", str(folder), "--output", str(folder / "unet")]) == 2  # not into the model read
    assert f"--output: {folder / 'unet' / 'model-v1.5.safetensors'} is inside {folder}, which is being read" in \
        capsys.readouterr().err
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(folder)  # --model .: the folder's own name, not ".safetensors" (a hidden folder)
    assert main(["merge", "--model", ".", "--output", str(tmp_path / "out")]) == 0
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["model-v1.5.safetensors"]
    assert main(["merge"]) == 2
    assert "give the LoRA files to merge" in capsys.readouterr().err


def test_the_built_in_model_converted_to_a_folder_draws_in_diffusers_on_the_cpu(tmp_path):
    """`merge --model tiny --output FOLDER`, the diffusers pipeline of lowvram's toy model: written in fp16, its text
    encoder loaded so by transformers 5 beside an fp32 U-Net, and StableDiffusionPipeline failed on a dtype mismatch.
    Now fp32, as it trains."""
    from diffusers import StableDiffusionPipeline

    assert main(["merge", "--model", "tiny", "--output", str(tmp_path / "tiny")]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "tiny"), safety_checker=None)
    assert pipe.text_encoder.dtype == pipe.unet.dtype == torch.float32
    image = pipe("a cat", height=64, width=64, num_inference_steps=2, output_type="np").images[0]
    assert np.isfinite(image).all()


def test_a_hub_model_is_written_and_extracted_in_fp16_and_a_built_in_one_in_fp32(tmp_path):
    """merge --model and extract take the precision a model is stored in: sd15 and sdxl (hub models, loaded in
    fp16) stayed fp16 when the built-in tiny became fp32 (review: every family was taken as built-in)."""
    from lowvram.models.detect import stored_precision

    assert [stored_precision(name) for name in ("sd15", "sdxl", "tiny", "tiny-sdxl")] == ["fp16", "fp16", "fp32", "fp32"]
    model = load_model("tiny")
    checkpoint = tmp_path / "fp16.safetensors"
    save_file({k: v.half() for k, v in sd15_single_file(model.unet, model.vae, model.pipeline.text_encoder).items()},
              str(checkpoint))
    assert stored_precision(str(checkpoint)) == "fp16"
