"""What only a CUDA GPU can show, on the tiny models in seconds: every weight format's CUDA kernels
(bitsandbytes, optimum-quanto, the fp8 upcast, W8A8's 8-bit matmuls) train, fp16 mixed precision survives an
overflow through its grad scaler, the attention choice, the 8-bit and paged optimizers, offloaded activations,
compiled blocks with selective checkpointing, and `train --auto` held to a VRAM cap. Skipped without CUDA (see conftest); a GPU session runs them with `pytest -m gpu`."""

import ast
import os
import subprocess
import sys

import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file
from test_step_syncs import PER_STEP_OPTIONS, with_regularization

from lowvram.formats import WEIGHT_FORMATS
from lowvram.train.loop import train

pytestmark = pytest.mark.gpu


def finite_lora(path) -> dict:
    tensors = load_file(str(path))
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())
    return tensors


@pytest.mark.parametrize("fmt", WEIGHT_FORMATS)
def test_every_weight_format_trains_on_cuda(fmt, tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=3, unet_weights=fmt, lr=1e-3))
    assert result.model.unet.device.type == "cuda"
    assert next(p for p in result.model.unet.parameters() if p.requires_grad).dtype == torch.float32
    assert result.final_loss == result.final_loss  # not NaN
    finite_lora(result.lora_path)


def test_fp16_mixed_precision_survives_an_overflow_through_its_grad_scaler(tmp_path, monkeypatch, capsys):
    """A T4's path: fp16 autocast with fp32 adapters and a grad scaler. An overflowing step is skipped by the
    scaler (which lowers its scale), the run goes on, and nothing non-finite is written."""
    from lowvram.train import step as loop

    real = loop.diffusion_loss
    calls = {"n": 0}

    def overflow_once(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("inf") if calls["n"] == 2 else loss

    monkeypatch.setattr(loop, "diffusion_loss", overflow_once)
    result = train(run_config(output=str(tmp_path), max_steps=5, mixed_precision="fp16", lr=1e-3))
    out = " ".join(capsys.readouterr().out.split())
    assert "(fp16 mixed precision)" in out and out.count("step skipped") == 1
    assert result.steps == 5
    lora = finite_lora(result.lora_path)
    assert any(t.abs().sum() > 0 for k, t in lora.items() if "lora_up" in k)  # the other steps trained


def test_attention_on_cuda_is_xformers_when_it_works_else_sdpa():
    from lowvram.attention import set_attention
    from lowvram.models import load_model

    unet = load_model("tiny").unet.to("cuda", torch.float16)
    try:
        import xformers.ops  # noqa: F401

        expected = {"xformers", "sdpa"}  # sdpa when this xformers build does not run here
    except ImportError:
        expected = {"sdpa"}
    assert set_attention(unet, "auto") in expected
    with torch.no_grad():
        out = unet(torch.randn(1, 4, 32, 32, device="cuda", dtype=torch.float16), torch.tensor([10], device="cuda"),
                   torch.randn(1, 77, 32, device="cuda", dtype=torch.float16)).sample
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit", "lion8bit", "adafactor"])
def test_8bit_paged_and_factored_optimizers_step_cuda_tensors(name):
    from lowvram.optim import build_optimizer

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(256, 256, device="cuda"))
    target = torch.randn(256, 256, device="cuda")
    optimizer = build_optimizer(name, [{"params": [weight], "lr": 1e-2}], weight_decay=0.0)
    losses = []
    for _ in range(20):
        loss = (weight - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("fmt", ["bnb-nf4", "bf16", "fp8", "quanto-int8"])
def test_offloaded_activations_train_on_cuda_as_kept_ones_do(tmp_path, fmt):
    """Pinned host copies, the weights kept on the GPU (bf16's transposed views, fp8's and quanto's stored
    weights): the same LoRA as without offloading."""
    from safetensors.torch import load_file

    runs = [train(run_config(output=str(tmp_path / str(offload)), max_steps=3, offload_activations=offload,
                             gradient_checkpointing=True, unet_weights=fmt)).lora_path for offload in (False, True)]
    finite_lora(runs[1])
    kept, offloaded = (load_file(str(path)) for path in runs)
    assert all(torch.allclose(kept[k].float(), offloaded[k].float(), atol=1e-5) for k in kept)


def test_train_auto_plans_for_a_vram_cap_and_trains_within_it(tmp_path):
    """In a process of its own: --vram holds the whole process to the budget."""
    done = subprocess.run([sys.executable, "-m", "lowvram", "train", "--auto", "--vram", "2GB", "--model", "tiny",
                           "--data", "sample", "--max-steps", "3", "--output", str(tmp_path / "auto")],
                          check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert "(detected, held to --vram): budget 1.75 GiB" in out and "chose " in out  # 2 GiB less the safety margin
    finite_lora(tmp_path / "auto" / "auto.safetensors")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_the_vram_cap_holds_each_process_to_its_own_gpu():
    """Under `accelerate launch` each process's --vram cap applies to the GPU of its LOCAL_RANK, not to GPU 0
    (which every rank capped before)."""
    code = ("import torch\nfrom lowvram.cli import auto_strategy\nfrom lowvram.configure import build_config\n"
            "values = {'model': 'tiny', 'data': 'sample', 'max_steps': 1}\n"
            "auto_strategy(build_config(values), values, '2GB')\n"
            "print([torch.cuda.get_per_process_memory_fraction(i) for i in range(2)])\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LOCAL_RANK": "1"}, check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert first == 1.0 and second < 1.0, (first, second)


@pytest.mark.slow  # Triton's compile takes tens of seconds: outside the GPU session's 60 s of tests (its sweep
# trains compiled full-size U-Nets instead)
def test_compiled_blocks_and_selective_checkpointing_train_on_cuda(tmp_path, capsys):
    """#14's levers on CUDA: transformer blocks compiled by inductor (Triton kernels) and recomputed in part."""
    result = train(run_config(output=str(tmp_path), max_steps=3, compile=True, checkpoint_blocks=4, lr=1e-3))
    out = " ".join(capsys.readouterr().out.split())
    assert "blocks compiled" in out and "checkpointing 4 of 9 blocks" in out, out
    assert result.final_loss == result.final_loss
    finite_lora(result.lora_path)


@pytest.mark.slow  # as above: Triton's compile
def test_compiled_blocks_replay_cuda_graphs_and_match_the_eager_run(tmp_path, capsys):
    """--cuda-graphs on CUDA, through every pass a run makes: training micro-batches (gradient accumulation: a
    gradient kept in a graph's memory would be overwritten by the next replay), blocks recomputed by selective
    checkpointing (without graphs), the model's own prediction, validation and a sample (without gradients: without
    graphs). In fp32 the LoRA stays within 2 % of the eager run's (as tests/test_compile.py measures the
    compiled run's on the CPU); a block fed overwritten memory would be off by far more."""
    common = {"max_steps": 3, "lr": 1e-3, "seed": 7, "save_precision": "fp32", "mixed_precision": "no",
              "gradient_accumulation": 2, "checkpoint_blocks": 2, "validation_split": 0.2, "validate_every": 2,
              "sample_prompts": ["lvshape, a red circle"], "sample_steps": 3, "cache_dir": str(tmp_path / "cache"),
              **with_regularization(tmp_path, {"prior_prediction": True})}
    eager = train(run_config(output=str(tmp_path / "eager"), **common)).lora_path
    capsys.readouterr()
    graphs = train(run_config(output=str(tmp_path / "graphs"), compile=True, cuda_graphs=True, **common))
    out = " ".join(capsys.readouterr().out.split())
    assert "replay CUDA graphs in training" in out, out
    tensors, reference = finite_lora(graphs.lora_path), load_file(str(eager))
    keys = [k for k in reference if k.endswith(".weight")]
    difference = (sum((tensors[k] - reference[k]).norm() ** 2 for k in keys)
                  / sum(reference[k].norm() ** 2 for k in keys)).sqrt().item()
    assert difference < 0.02, difference


def test_adamw_steps_cuda_adapters_in_one_fused_kernel():
    from lowvram.optim import build_optimizer

    params = [torch.nn.Parameter(torch.randn(320, 16, device="cuda")) for _ in range(4)]
    optimizer = build_optimizer("adamw", [{"params": params, "lr": 1e-2}], weight_decay=0.01)
    assert optimizer.defaults["fused"] is True
    for p in params:
        p.grad = torch.ones_like(p)
    before = params[0].detach().clone()
    optimizer.step()
    assert not torch.equal(before, params[0]) and torch.isfinite(params[0]).all()


def cuda_waits(tmp_path, steps: int, **options) -> dict:
    """The host's waits for the GPU in a run of `steps` steps (torch's sync debug mode), by file and line."""
    import warnings
    from collections import Counter
    from pathlib import Path

    config = run_config(output=str(tmp_path / f"steps{steps}"), cache_dir=str(tmp_path / "cache"), max_steps=steps,
                        batch_size=2, **with_regularization(tmp_path, options))
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(config)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


@pytest.mark.parametrize("options", [{}, PER_STEP_OPTIONS], ids=["plain", "per-step-options"])
def test_a_training_step_waits_for_the_gpu_once(tmp_path, options):
    """What tests/test_step_syncs.py counts in lowvram's code on the CPU, counted here in everything a step runs
    (diffusers, peft, torch, CUDA copies): three extra steps add three waits, the step's one read-back."""
    cuda_waits(tmp_path, 1, **options)  # fills the cache
    short, long = cuda_waits(tmp_path, 2, **options), cuda_waits(tmp_path, 5, **options)
    long.subtract(short)
    extra = {where: count for where, count in long.items() if count}
    assert sum(extra.values()) == 3, f"waits per 3 steps, by place: {extra}"
