"""--base-weights (kohya's --base_weights and --base_weights_multiplier): LoRA files fused into the frozen model
before training, at their weights, so the new LoRA trains on top of them; paths in a config file are found beside
it, and a file that is not there is one line before anything loads."""

import re
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import run_config
from safetensors.torch import save_file

from lowvram.adapters import lora_files, networks
from lowvram.configure import build_config, read_toml
from lowvram.errors import LowvramError
from lowvram.kohya_config import translate
from lowvram.models import load_model
from lowvram.train.loop import train


def frozen_weights(model) -> dict[str, torch.Tensor]:
    """Every frozen weight of the U-Net and text encoders, by its plain name (peft's base_layer left out)."""
    return {f"{part}.{name.replace('.base_layer', '')}": value.detach().clone()
            for part, module in (("unet", model.unet), *((f"te{i}", m) for i, m in enumerate(model.text_encoders)))
            for name, value in module.state_dict().items() if "lora_" not in name}


def test_a_run_trains_on_the_model_with_the_base_loras_fused_in(tmp_path):
    style = train(run_config(output=str(tmp_path / "style"), max_steps=2, lr=5e-2, train_text_encoder=True,
                             text_encoder_lr=5e-2)).lora_path
    config_file = tmp_path / "next.toml"
    config_file.write_text(tomli_w.dumps({"model": {"model": "tiny", "base_weights": [f"style/{style.name}:0.5"]},
                                          "data": {"data": "sample"}, "training": {"max_steps": 2},
                                          "output": {"output": str(tmp_path / "next"), "overwrite": True}}))
    values = read_toml(config_file)
    assert values["base_weights"] == [f"{style}:0.5"]  # found beside the config
    result = train(build_config(values))

    expected = load_model("tiny")
    lora_files.load_kohya(expected, style, 0.5)
    assert sum(networks.fuse_adapters(m) for m in (expected.unet, *expected.text_encoders)) > 0
    plain, fused, trained_on = frozen_weights(load_model("tiny")), frozen_weights(expected), frozen_weights(
        result.model)
    changed = [name for name in fused if not torch.equal(fused[name], plain[name])]
    assert any(n.startswith("unet") for n in changed) and any(n.startswith("te") for n in changed)
    for name in fused:
        torch.testing.assert_close(trained_on[name], fused[name], msg=name)


def test_a_resume_without_the_base_loras_is_refused_for_what_it_would_train_on(tmp_path, capsys):
    from lowvram.cli import main

    style = train(run_config(output=str(tmp_path / "style"), max_steps=1)).lora_path
    argv = ["train", "--model", "tiny", "--data", "sample", "--output", str(tmp_path / "next"), "--max-steps", "2"]
    assert main([*argv, "--checkpoint-every", "1", "--base-weights", f"{style}:0.5"]) == 0
    assert main([*argv, "--max-steps", "3", "--resume", "auto"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"(--base-weights {style.name}:0.5 there, (not set) here)" in error, error
    assert main([*argv, "--max-steps", "3", "--resume", "auto", "--base-weights", f"{style}:0.5"]) == 0


def test_a_base_weights_path_moves_with_its_weight_however_it_is_written():
    from lowvram.option_values import relocated_source

    def beside(path):
        return Path("/cfg") / path

    assert relocated_source("./loras/style.safetensors:0.5", beside) == "/cfg/loras/style.safetensors:0.5"
    assert relocated_source("style.safetensors", beside) == "/cfg/style.safetensors"
    assert relocated_source("a//b.safetensors:-1", beside) == "/cfg/a/b.safetensors:-1"
    assert relocated_source("style.safetensors:lots", beside) == "style.safetensors:lots"  # for the check to name


def test_a_lora_of_another_family_is_one_line_naming_base_weights(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from lowvram.cli import main

    sdxl = train(run_config(model="tiny-sdxl", output=str(tmp_path / "sdxl"), max_steps=1)).lora_path
    assert main(["train", "--model", "tiny", "--data", "sample", "--max-steps", "1", "--output",
                 str(tmp_path / "next"), "--base-weights", str(sdxl)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--base-weights: {sdxl} is a LoRA for lowvram's built-in tiny-sdxl demo " \
        "model (its metadata says), not for tiny SD (random weights)" in error, error
    bare = tmp_path / "bare.safetensors"  # no metadata to say it: the layer that does not fit says it
    save_file(load_file(str(sdxl)), str(bare))
    assert main(["train", "--model", "tiny", "--data", "sample", "--max-steps", "1", "--output",
                 str(tmp_path / "next"), "--base-weights", str(bare), "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--base-weights: {bare} does not fit" in error, error
    assert "another model family?" in error


def test_kohyas_base_weights_take_their_multipliers_and_one_where_none_is_left():
    values, notes = translate({"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample",
                               "base_weights": ["a.safetensors", "b.safetensors"], "base_weights_multiplier": [0.5]},
                              Path("kohya.toml"))
    assert values["base_weights"] == ["a.safetensors:0.5", "b.safetensors:1"]
    assert not any("base_weights" in note for note in notes)


def test_a_base_weights_file_missing_misweighted_pickled_or_no_lora_is_one_line_each(tmp_path):
    (tmp_path / "junk.safetensors").write_text("junk")
    save_file({"model.diffusion_model.out.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(LowvramError) as error:
        build_config({"model": "tiny", "data": "sample", "base_weights": [
            str(tmp_path / "gone.safetensors"), f"{tmp_path / 'a.safetensors'}:strong", str(tmp_path / "old.ckpt"),
            str(tmp_path / "junk.safetensors"), str(tmp_path / "model.safetensors")]})
    lines = [line for line in str(error.value).splitlines() if line.startswith("--base-weights")]
    assert len(lines) == 5, lines
    assert f"--base-weights: file not found: {tmp_path / 'gone.safetensors'}" in lines
    assert any("weight 'strong'" in line for line in lines) and any("old.ckpt" in line for line in lines)
    assert f"--base-weights: {tmp_path / 'model.safetensors'}: no LoRA, DoRA, LoHa or LoKr layers: name a LoRA file " \
           "(a model checkpoint is --model)" in lines
    assert any(line.startswith(f"--base-weights: {tmp_path / 'junk.safetensors'}: not a safetensors file")
               for line in lines)


def test_a_lora_of_another_kind_of_model_is_named_so_before_anything_loads(tmp_path):
    """A LoRA in diffusers' layout as --base-weights was called no LoRA ("name a LoRA file"), and as
    --network-weights it failed after the caching, naming no file. SD's are read now (test_blocks); a FLUX one is
    named for what it is."""
    flux = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4)}, str(flux))
    for option in ("base_weights", "network_weights"):
        with pytest.raises(LowvramError, match=rf"--{option.replace('_', '-')}: {re.escape(str(flux))}: it is a "
                                               r"LoRA of another kind of model \(its layers are a `transformer`'s"):
            build_config({"model": "tiny", "data": "sample",
                          option: [str(flux)] if option == "base_weights" else str(flux)})
