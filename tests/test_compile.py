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


def test_the_recompile_limit_covers_every_batch_shape_of_the_run():
    """Past dynamo's recompile limit a block runs eagerly for the rest of the run (one log line, seen on this CPU
    with a limit of 2). All transformer blocks share one code object, so the limit must cover every input shape
    the run meets, at each block width, with and without gradients; the old fixed 64 covered 10 shapes of
    SD1.5 (three widths)."""
    import torch._dynamo

    from lowvram.compiling import block_widths, compile_blocks
    from lowvram.data.augment import CaptionOptions
    from lowvram.data.dataset import Sample, TrainingData
    from lowvram.models.loading import load_model
    from lowvram.train.setup import plan_schedule

    # 5 square images, 3 wide and 2 tall at batch 4: (4096 px, 4), (4096, 1), (2048, 3), (2048, 2)
    buckets = [(64, 64)] * 5 + [(64, 32)] * 3 + [(32, 64)] * 2
    data = TrainingData([Sample((), (), "", bucket, 1) for bucket in buckets], [], 4, 0, CaptionOptions(),
                        None, None, None)
    assert data.batch_shapes() == {(4096, 4), (4096, 1), (2048, 3), (2048, 2)}
    schedule = plan_schedule(run_config(batch_size=4, sample_prompts=["a", "b"]), data, 1)
    assert schedule.batch_shapes == 4 + 2 + 1  # and the samples' sizes, the default one included

    unet = load_model("tiny").unet
    assert block_widths(unet) == 2  # the tiny U-Net's transformer blocks come in two widths
    limits = torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit
    try:
        compile_blocks(unet, 40)
        assert torch._dynamo.config.recompile_limit >= 2 * 40 * 2
        assert torch._dynamo.config.accumulated_recompile_limit >= 2 * 40 * 2
    finally:
        torch._dynamo.config.recompile_limit, torch._dynamo.config.accumulated_recompile_limit = limits
