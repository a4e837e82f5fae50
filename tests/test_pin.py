"""Restructuring changes no result: for a fixed seed and options, the LoRA a run writes is pinned, on the tiny SD
and SDXL models, with and without text-encoder training.

The pins (`tests/pins/lora-pins.json`) hold each LoRA's tensor digest and per-tensor norms, and the library
versions and CPU kernels that produced them. Where those match, the LoRA must be bit-identical; elsewhere
(another CPU's kernels round differently) its norms must agree to 1e-4. Rewrite the pins only for a change
that is meant to change results, on a commit whose results you trust, with the thread count the test command
gives each worker on the 2-core CI machine:
`OMP_NUM_THREADS=1 LOWVRAM_WRITE_PINS=1 .venv/bin/python -m pytest tests/test_pin.py`."""

import hashlib
import json
import os
import platform
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file

from lowvram.train.loop import train

PINS = Path(__file__).parent / "pins" / "lora-pins.json"
CASES = {
    "tiny": {"model": "tiny"},
    "tiny-text-encoder": {"model": "tiny", "train_text_encoder": True, "text_encoder_lr": 5e-3},
    "tiny-sdxl": {"model": "tiny-sdxl"},
    "tiny-sdxl-text-encoder": {"model": "tiny-sdxl", "train_text_encoder": True, "text_encoder_lr": 5e-3},
}
COMMON = {"max_steps": 3, "rank": 4, "alpha": 2.0, "lr": 1e-2, "save_precision": "fp32", "seed": 7}


def environment() -> dict[str, str]:
    """What decides the exact bits besides our code (the thread count splits the reductions differently)."""
    return {"python": platform.python_version(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": str(torch.get_num_threads()),
            **{name: version(name) for name in ("torch", "diffusers", "transformers", "peft", "accelerate")}}


def fingerprint(path: Path) -> dict:
    tensors = load_file(path)
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return {"sha256": digest.hexdigest(),
            "norms": {key: tensors[key].double().norm().item() for key in sorted(tensors)}}


@pytest.fixture(scope="module")
def pins():
    if os.environ.get("LOWVRAM_WRITE_PINS"):
        return None
    return json.loads(PINS.read_text())


_written: dict = {}


@pytest.mark.parametrize("case", list(CASES))
def test_the_lora_a_run_writes_is_pinned(case, pins, tmp_path):
    # a cache of its own: latents drawn from a cache another test filled would depend on the test order
    config = run_config(output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), **COMMON, **CASES[case])
    got = fingerprint(train(config).lora_path)
    if pins is None:
        _written[case] = got
        PINS.parent.mkdir(exist_ok=True)
        PINS.write_text(json.dumps({"environment": environment(), "cases": _written}, indent=1) + "\n")
        return
    want = pins["cases"][case]
    assert sorted(got["norms"]) == sorted(want["norms"]), "the LoRA holds other tensors than pinned"
    if pins["environment"] == environment():
        assert got["sha256"] == want["sha256"], "same environment as the pins, yet the LoRA's bits changed"
    for key, norm in want["norms"].items():
        assert got["norms"][key] == pytest.approx(norm, rel=1e-4, abs=1e-7), key
