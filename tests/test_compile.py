"""--compile (#14): the U-Net's transformer blocks compiled with torch.compile (regional), on the CPU's inductor
backend: the run trains, its LoRA reloads in diffusers and matches the eager run's, and a platform that cannot
compile trains eagerly after one line."""

import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file

from lowvram.compiling import compile_problem
from lowvram.train.loop import train

pytestmark = pytest.mark.skipif(compile_problem(torch.device("cpu")) is not None, reason="no C++ compiler here")


def relative_difference(a: dict, b: dict) -> float:
    keys = [k for k in a if k.endswith(".weight")]
    return (sum((a[k] - b[k]).norm() ** 2 for k in keys) / sum(b[k].norm() ** 2 for k in keys)).sqrt().item()


def test_a_compiled_run_trains_reloads_and_matches_the_eager_one(tmp_path, capsys):
    """Inductor fuses and reorders float operations, so the bits differ from eager's; the LoRA (with
    checkpointing recomputing compiled blocks) stays within 2 % of the eager run's after 3 AdamW steps (measured
    0.5 %: Adam's normalized first steps magnify rounding in the smallest gradients). A compiled block that lost
    its adapters or its gradients would be off by about 100 %."""
    from lowvram.models.loading import load_model

    common = {"max_steps": 3, "rank": 4, "lr": 1e-3, "save_precision": "fp32", "seed": 7,
              "gradient_checkpointing": True, "cache_dir": str(tmp_path / "cache")}
    eager = train(run_config(output=str(tmp_path / "eager"), **common)).lora_path
    capsys.readouterr()
    compiled = train(run_config(output=str(tmp_path / "compiled"), compile=True, **common)).lora_path
    assert "blocks compiled" in " ".join(capsys.readouterr().out.split())
    difference = relative_difference(load_file(compiled), load_file(eager))
    assert difference < 0.02, difference
    fresh = load_model("tiny")
    fresh.pipeline.load_lora_weights(str(compiled), adapter_name="compiled")


def test_without_a_compiler_the_run_says_so_and_trains_eagerly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++, clang++ or cl to be found
    result = train(run_config(output=str(tmp_path / "out"), max_steps=2, compile=True))
    out = " ".join(capsys.readouterr().out.split())
    assert "--compile: torch.compile needs a C++ compiler for the CPU" in out and "training without it" in out
    assert "blocks compiled" not in out and result.lora_path.is_file()
