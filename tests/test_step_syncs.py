"""A training step waits for the GPU once. Every read of a tensor's value on the host (`.item()`, `.tolist()`,
`float(t)`, `if t:`, ...) makes the host wait until the GPU has finished all the work queued before it, and the
GPU then idles while the host prepares the next work. lowvram's own step code reads back once per step: the
loss, the stop flag and the gradient norm, together.

On the CPU this is counted with a torch function mode that sees every such read, attributed to the code that
made it. The library code the step calls (diffusers, peft, torch) and CUDA's own waits (copies from pageable
memory) are counted on a GPU, by tests/test_gpu.py::test_a_training_step_waits_for_the_gpu_once."""

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import run_config
from torch.overrides import TorchFunctionMode

import lowvram
from lowvram.data.sample import write_sample_dataset
from lowvram.train.loop import train

READBACKS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu"}
LOWVRAM = str(Path(lowvram.__file__).parent)
TORCH = str(Path(torch.__file__).parent)


class CountReadbacks(TorchFunctionMode):
    """Counts reads of tensor values made by lowvram's code, by file and line."""

    def __init__(self):
        super().__init__()
        self.where: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READBACKS:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH):  # e.g. Tensor.__format__
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(LOWVRAM):
                self.where[f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {func.__name__}"] += 1
        return func(*args, **(kwargs or {}))


# the options that add work to every step: each must stay on the device too
PER_STEP_OPTIONS = {"scale_weight_norms": 0.05, "loraplus_ratio": 4.0, "noise_offset": 0.05,
                    "noise_offset_random_strength": True, "adaptive_noise_scale": 0.01, "ip_noise_gamma": 0.1,
                    "ip_noise_gamma_random_strength": True, "min_snr_gamma": 5.0, "debiased_estimation": True,
                    "v_pred_like_loss": 0.1, "ema": True, "timestep_bias": "later", "prior_prediction": True}


def with_regularization(tmp_path: Path, options: dict) -> dict:
    """--prior-prediction needs regularization images: the sample dataset once more."""
    if options.get("prior_prediction"):
        return {**options, "reg_data": str(write_sample_dataset(tmp_path / "reg"))}
    return options


def readbacks(tmp_path, steps: int, **options) -> Counter:
    config = run_config(output=str(tmp_path / f"steps{steps}"), cache_dir=str(tmp_path / "cache"), max_steps=steps,
                        batch_size=2, **with_regularization(tmp_path, options))
    with CountReadbacks() as counter:
        train(config)
    return counter.where


@pytest.mark.parametrize("options", [{}, PER_STEP_OPTIONS], ids=["plain", "per-step-options"])
def test_lowvrams_step_code_reads_back_from_the_device_once_per_step(tmp_path, options):
    """Two runs that differ only in their number of steps, after a first run has filled the cache: what the three
    extra steps read is the per-step cost (setup, saving and sampling are the same in both and cancel out)."""
    readbacks(tmp_path, 1, **options)
    short, long = readbacks(tmp_path, 2, **options), readbacks(tmp_path, 5, **options)
    per_step = long.copy()
    per_step.subtract(short)
    extra = {where: count for where, count in per_step.items() if count}
    assert sum(extra.values()) == 3, f"reads per 3 steps, by place: {extra}"
