"""`lowvram extract`: a LoRA from a fine-tuned model minus its base (kohya's extract_lora_from_models.py), which
gives the tuned model back where the change is within the rank, and loads wherever a trained LoRA does."""

import pytest
import torch
from conftest import run_config
from safetensors import safe_open
from safetensors.torch import load_file
from test_train import model_outputs

from lowvram.adapters import lora_files
from lowvram.cli import main
from lowvram.extract import low_rank
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
    assert main(["extract", "--base", "tiny", "--tuned", str(folder), "--rank", "4", "--lora-layers", "full",
                 "--clamp-quantile", "1", "--load-precision", "fp32", "--save-precision", "fp32",
                 "--output", str(out)]) == 0
    assert "layers of the U-Net and text_encoder" in capsys.readouterr().out
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
    assert "(the text encoders unchanged)" in capsys.readouterr().out  # a change under --min-diff is none
    assert not any(key.startswith("lora_te") for key in load_file(str(tmp_path / "unet-only.safetensors")))
    meta = safe_open(str(out), framework="pt").metadata()
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"]) == ("networks.lora", "4", "4")
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
    assert main(["extract", "--base", "tiny", "--tuned", str(folder), "--rank", "2",
                 "--output", str(tmp_path / "x.safetensors")]) == 0
    assert tracked and not any(tracked)


def test_what_cannot_be_extracted_is_one_line(tuned, tmp_path, capsys):
    folder, _ = tuned
    for argv, says in ((["--base", "tiny-sdxl", "--tuned", str(folder), "--rank", "4"],
                        "--base is tiny SDXL (random weights), --tuned tiny SD (random weights)"),
                       (["--base", "tiny", "--tuned", str(folder), "--rank", "4", "--conv-rank", "2"],
                        "--conv-rank: only used with --lora-layers full")):
        assert main(["extract", *argv, "--output", str(tmp_path / "x.safetensors")]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
