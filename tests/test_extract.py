"""`lowvram extract`: a LoRA from a fine-tuned model minus its base (kohya's extract_lora_from_models.py), which
gives the tuned model back where the change is within the rank, and loads wherever a trained LoRA does."""

import json
import re

import pytest
import torch
from conftest import assert_kohya_hashes, run_config
from safetensors.torch import load_file, save_file
from test_train import model_outputs

from lowvram.adapters import lora_files
from lowvram.cli import main
from lowvram.extract import low_rank
from lowvram.models.ldm_layout import sd15_single_file
from lowvram.models.loading import load_model
from lowvram.train.loop import train


@pytest.mark.parametrize("shape", [(40, 30), (12, 6, 3, 3), (300, 200)])
def test_a_change_within_the_rank_comes_back_exactly(shape):
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(shape[0], 3, generator=generator), torch.randn(3, int(torch.tensor(shape[1:]).prod()),
                                                                       generator=generator)
    change = (a @ b).reshape(shape)
    down, up, kept = low_rank(change, 3)
    assert down.shape == (3, *shape[1:]) and up.shape == ((shape[0], 3, 1, 1) if len(shape) == 4 else (shape[0], 3))
    rebuilt = (up.flatten(1) @ down.flatten(1)).reshape(shape)
    assert torch.allclose(rebuilt, change, atol=1e-4 * float(change.abs().max()))
    assert kept == pytest.approx(1.0, abs=1e-5)
    _, _, part = low_rank(change, 1)
    assert 0 < part < 1
    down, up, clamped = low_rank(change, 3, clamp=0.5)  # kohya's --clamp_quantile: each side's vectors at their median
    singular = torch.linalg.svdvals(change.flatten(1))[:3]
    for vectors in (down.flatten(1).abs(), (up.flatten(1) / singular).abs()):
        assert vectors.max() == pytest.approx(float(vectors.flatten().quantile(0.5)), rel=0.05)
    assert clamped < kept


def test_the_clamp_cuts_less_of_a_change_than_kohyas_at_an_sd_layers_shape():
    """kohya gives the up factor every singular value and clamps both factors at one signed 0.99 quantile of their
    values; lowvram clamps the singular vectors, each side at its own, and keeps more of a rank-64 change of
    SD1.5's 320x768 cross-attention key."""
    generator = torch.Generator().manual_seed(0)
    change = torch.randn(320, 64, generator=generator) @ torch.randn(64, 768, generator=generator) * 0.01
    down, up, _ = low_rank(change, 64, clamp=0.99)
    u, values, vh = torch.linalg.svd(change, full_matrices=False)
    their_up, their_down = u[:, :64] * values[:64], vh[:64]  # (extract_lora_from_models.py, as written)
    high = torch.quantile(torch.cat([their_up.flatten(), their_down.flatten()]), 0.99)
    theirs = their_up.clamp(-high, high) @ their_down.clamp(-high, high)
    error, their_error = (float(torch.linalg.norm(made - change) / torch.linalg.norm(change))
                          for made in (up @ down, theirs))
    assert error < 0.8 * their_error, (error, their_error)


def test_a_higher_rank_fits_a_full_rank_change_better_and_the_share_kept_says_how_well():
    """A fine-tune's change of every rank (singular values falling as 1/k) at SDXL's 640x2048 feed-forward shape:
    with the singular values split evenly, the default clamp cut ever more as the rank rose (rank 128 fitted worse
    than 8), and "kept" (the product's norm over the change's) said 76% of a fit far better than that."""
    generator = torch.Generator().manual_seed(0)
    left = torch.linalg.qr(torch.randn(640, 640, generator=generator))[0]
    right = torch.linalg.qr(torch.randn(2048, 640, generator=generator))[0].T
    for scale in (1, 10):  # (kohya's one quantile of U*S and Vh clamps a larger change more: rank 128 worst again)
        change = (left / torch.arange(1, 641)) @ right * scale
        errors = []
        for rank in (8, 16, 32, 64, 128):
            down, up, kept = low_rank(change, rank, clamp=0.99)
            error = float(torch.linalg.norm(change - up @ down) / torch.linalg.norm(change))
            assert kept == pytest.approx((1 - error ** 2) ** 0.5, abs=1e-4)
            errors.append(error)
        assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0], (scale, errors)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 'fine-tuned' tiny model: the tiny model with a trained LoCon fused into its U-Net's and text encoder's
    weights."""
    out = tmp_path_factory.mktemp("tuned")
    lora = train(run_config(output=str(out / "run"), max_steps=3, rank=4, alpha=4, lora_layers="full", lr=2e-2,
                            save_precision="fp32", train_text_encoder=True)).lora_path
    model = load_model("tiny", None, dtype=torch.float32)
    model.pipeline.load_lora_weights(str(lora))
    model.pipeline.fuse_lora()
    model.pipeline.unload_lora_weights()
    folder = out / "tuned-model"
    model.pipeline.save_pretrained(folder, safe_serialization=True)
    return folder, lora


def test_the_extracted_lora_gives_the_tuned_model_back(tuned, tmp_path, capsys):
    folder, lora = tuned
    out = tmp_path / "extracted.safetensors"
    # (loaded as stored, fp32 here, as kohya's loads them: fp16 lost up to a fifth of an fp32 model's change)
    assert main(["extract", "--base", "tiny", "--tuned", str(folder), "--rank", "4", "--lora-layers", "full",
                 "--clamp-quantile", "1", "--save-precision", "fp32", "--output", str(out)]) == 0
    assert re.search(r"\d+ layers of the U-Net and \d+ of text_encoder;", capsys.readouterr().out)
    extracted, trained = load_file(str(out)), load_file(str(lora))
    assert set(extracted) == set(trained)  # the same layers, under kohya's names
    base = load_model("tiny")
    lora_files.load_kohya(base, out)
    tuned_hidden, tuned_out = model_outputs(load_model(str(folder)))
    hidden, unet_out = model_outputs(base)
    torch.testing.assert_close(hidden, tuned_hidden, rtol=1e-3, atol=1e-4)  # the text encoder's change too
    torch.testing.assert_close(unet_out, tuned_out, rtol=1e-3, atol=1e-4)
    assert main(["extract", "--base", "tiny", "--tuned", str(folder), "--rank", "4", "--min-diff", "10",
                 "--output", str(tmp_path / "unet-only.safetensors")]) == 0
    assert "(the text encoders left out: none changed by more than --min-diff)" in capsys.readouterr().out
    assert not any(key.startswith("lora_te") for key in load_file(str(tmp_path / "unet-only.safetensors")))
    meta = assert_kohya_hashes(out)
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"]) == ("networks.lora", "4", "4")
    assert (meta["modelspec.title"], meta["modelspec.sai_model_spec"], meta["ss_v2"]) == ("extracted", "1.0.0", "False")
    assert meta["ss_training_comment"] == f"extracted by lowvram extract: {folder.name} minus tiny"
    by_diffusers = load_model("tiny")
    by_diffusers.pipeline.load_lora_weights(str(out))
    torch.testing.assert_close(model_outputs(by_diffusers)[1], tuned_out, rtol=1e-3, atol=1e-4)


def test_extraction_builds_no_autograd_graph(tuned, tmp_path, monkeypatch):
    """The loaded models' weights require grad; a difference taken with grad on would keep each layer's fp32
    copies alive through the factors until the file is written (tens of GB for SDXL)."""
    from lowvram import extract

    folder, _ = tuned
    tracked = []
    real = extract.low_rank

    def recording(delta, *args):
        tracked.append(delta.requires_grad)
        return real(delta, *args)

    monkeypatch.setattr(extract, "low_rank", recording)
    loras = tmp_path / "ComfyUI" / "models" / "loras"  # (its card written there, as a run's is)
    loras.mkdir(parents=True)
    assert main(["extract", "--base", "tiny", "--tuned", str(folder), "--rank", "2",
                 "--output", str(loras / "x.safetensors")]) == 0
    assert tracked and not any(tracked)
    assert json.loads((loras / "x.json").read_text()) == {"sd version": "SD1"}


def test_what_cannot_be_extracted_is_one_line(tuned, tmp_path, capsys):
    folder, _ = tuned
    for argv, says in ((["--base", "tiny-sdxl", "--tuned", str(folder), "--rank", "4"],
                        "--base is tiny SDXL (random weights), --tuned tiny SD (random weights)"),
                       (["--base", "tiny", "--tuned", str(folder), "--rank", "4", "--conv-rank", "2"],
                        "--conv-rank: only used with --lora-layers full")):
        assert main(["extract", *argv, "--output", str(tmp_path / "x.safetensors")]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """The tiny model as a single-file checkpoint."""
    pipeline = load_model("tiny").pipeline
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_file(sd15_single_file(pipeline.unet, pipeline.vae, pipeline.text_encoder), str(path))
    return path


def refused(argv, capsys) -> str:
    """The one line `extract` refuses `argv` with (exit 2, no traceback)."""
    capsys.readouterr()
    code = main(["extract", "--rank", "2", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0].removeprefix("lowvram extract: error: ")


def test_a_model_that_does_not_load_is_named_by_its_option(tuned, tmp_path, capsys):
    folder, lora = tuned
    out = str(tmp_path / "x.safetensors")
    missing = refused(["--base", str(tmp_path / "missing.safetensors"), "--tuned", str(folder), "--output", out],
                      capsys)
    assert missing.startswith("--base: ") and "missing.safetensors" in missing and "--model" not in missing, missing
    assert refused(["--base", "tiny", "--tuned", str(lora), "--output", out], capsys) == (
        f"--tuned: {lora} is a LoRA, not a model; pass a checkpoint to --tuned (a LoRA goes to generate's "
        "--lora, merge's FILEs or train's --network-weights)")
    assert not (tmp_path / "x.safetensors").exists()


def test_the_same_model_as_base_and_tuned_is_refused(tuned, base_file, tmp_path, capsys, monkeypatch):
    folder, _ = tuned
    monkeypatch.chdir(base_file.parent)
    out = str(tmp_path / "x.safetensors")
    for base, again in (("tiny", "tiny"), (str(folder), f"{folder}/"), (str(base_file), "./base.safetensors")):
        assert refused(["--base", base, "--tuned", again, "--output", out], capsys) == (
            "--tuned: the same file as --base; nothing to extract (give the fine-tuned model)")
    assert not (tmp_path / "x.safetensors").exists()  # not an all-zero LoRA
    # the same weights under another name (the built-in model written as a file): a LoRA of zeros, "kept 100.0%"
    assert refused(["--base", "tiny", "--tuned", str(base_file), "--output", out], capsys) == (
        f"--tuned {base_file} has --base's weights in every layer extract reads: there is no change to extract; give "
        "the fine-tuned model")
    assert not (tmp_path / "x.safetensors").exists()


def test_the_output_is_never_a_model_being_read(tuned, base_file, capsys):
    folder, _ = tuned
    inside = folder / "unet" / "diffusion_pytorch_model.safetensors"
    before = {path: path.read_bytes() for path in (base_file, inside)}
    for output in (base_file, inside):  # a single file, or a file of a diffusers folder
        assert refused(["--base", str(base_file), "--tuned", str(folder), "--output", str(output), "--overwrite"],
                       capsys) == f"--output: {output} is a file being read; name another"
    assert {path: path.read_bytes() for path in before} == before


def test_layers_the_tuned_model_left_unchanged_are_left_out_and_said(tmp_path, capsys):
    """A model tuned in its attention alone, extracted with --lora-layers full: its other layers were written as
    pairs of zeros and counted as extracted."""
    model = load_model("tiny", None, dtype=torch.float32)
    attention = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    with torch.no_grad():
        attention.weight += 0.01 * torch.randn_like(attention.weight)
    model.pipeline.save_pretrained(tmp_path / "tuned", safe_serialization=True)
    out = tmp_path / "x.safetensors"
    assert main(["extract", "--base", "tiny", "--tuned", str(tmp_path / "tuned"), "--rank", "4", "--lora-layers",
                 "full", "--load-precision", "fp32", "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert {key.split(".")[0] for key in load_file(str(out))} == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"}, said
    assert f"{out}: 1 layer of the U-Net (the text encoders left out" in said
    assert re.search(r"; \d+ unchanged layers left out; kept", said), said
