"""Low-VRAM execution on the tiny model: every frozen-U-Net storage format trains with LoRA on top and is
really stored in that format; every optimizer steps; LoRAs from quantized runs load in full-precision
diffusers pipelines."""

import random

import pytest
import torch
from conftest import run_config
from peft.utils import get_peft_model_state_dict

from lowvram.attention import set_attention
from lowvram.formats import WEIGHT_FORMATS
from lowvram.models import load_model
from lowvram.optim import OPTIMIZERS, build_optimizer
from lowvram.quant import convert_frozen, storage_bytes
from lowvram.train.loop import train

# Largest relative error of the converted tiny U-Net's output against fp32 (random weights, CPU).
MAX_RELATIVE_ERROR = {"fp32": 0.0, "fp16": 0.01, "bf16": 0.05, "fp8": 0.15, "bnb-int8": 0.02, "bnb-nf4": 0.1,
                      "quanto-int8": 0.03, "quanto-int4": 0.35, "quanto-fp8": 0.15, "w8a8-int8": 0.05, "w8a8-fp8": 0.15}
# Bytes of the converted U-Net relative to fp32, at most (the tiny model's convolutions dominate, so the
# bitsandbytes and W8A8 formats, which keep convolutions, save little on it, as on SD1.5).
MAX_SIZE_RATIO = {"fp32": 1.0, "fp16": 0.52, "bf16": 0.52, "fp8": 0.3, "bnb-int8": 0.85, "bnb-nf4": 0.82,
                  "quanto-int8": 0.3, "quanto-int4": 0.2, "quanto-fp8": 0.3, "w8a8-int8": 0.82, "w8a8-fp8": 0.82}
FORMATS = [f for f in WEIGHT_FORMATS if f != "quanto-int4"] + [pytest.param("quanto-int4", marks=pytest.mark.slow)]


def unet_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 32, 32, generator=generator), torch.tensor([10, 600]),
            torch.randn(2, 77, 32, generator=generator))


@pytest.fixture(scope="module")
def reference():
    unet = load_model("tiny").unet
    with torch.no_grad():
        return storage_bytes(unet), unet(*unet_inputs()).sample


@pytest.mark.parametrize("fmt", FORMATS)
def test_weight_format_is_really_stored_and_stays_close(fmt, reference):
    fp32_bytes, expected = reference
    unet = convert_frozen(load_model("tiny").unet, fmt, torch.float32)
    if fmt in ("fp16", "bf16"):  # stored in half precision while computing in fp32, as on a CPU
        assert type(unet.down_blocks[0].resnets[0].conv1).__name__ == "UpcastConv2d"
    assert storage_bytes(unet) <= MAX_SIZE_RATIO[fmt] * fp32_bytes
    to_q = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    conv = unet.down_blocks[0].resnets[0].conv1
    stored = {
        "fp16": (torch.float16, torch.float16), "bf16": (torch.bfloat16, torch.bfloat16),
        "fp8": (torch.float8_e4m3fn, torch.float8_e4m3fn), "bnb-int8": (torch.int8, torch.float32),
        "bnb-nf4": (torch.uint8, torch.float32), "w8a8-int8": (torch.int8, torch.float32),
        "w8a8-fp8": (torch.float8_e4m3fn, torch.float32),
    }.get(fmt)
    if stored:
        assert (to_q.weight.dtype, conv.weight.dtype) == stored
    if fmt.startswith("quanto"):
        inner = {"quanto-int8": torch.int8, "quanto-int4": torch.uint8, "quanto-fp8": torch.float8_e4m3fn}[fmt]
        assert to_q.weight._data.dtype == inner and conv.weight._data.dtype == inner
    assert not any(p.requires_grad for p in unet.parameters())
    with torch.no_grad():  # computing in fp32: stored fp16/bf16/fp8 weights are upcast layer by layer
        out = unet(*unet_inputs()).sample
    error = ((out - expected).norm() / expected.norm()).item()
    print(f"{fmt}: relative error {error:.4f}, {storage_bytes(unet) / fp32_bytes:.2f} x fp32 bytes")
    assert error <= MAX_RELATIVE_ERROR[fmt], error


@pytest.mark.parametrize("fmt", ["fp8", "bnb-nf4", "bnb-int8", "quanto-int8"])
def test_quantized_run_trains_and_its_lora_loads_in_full_precision_diffusers(fmt, tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=4, lr=1e-2, rank=4, alpha=2.0, unet_weights=fmt,
                              save_precision="fp32"))
    assert result.final_loss == result.final_loss
    trained = get_peft_model_state_dict(result.model.unet)
    assert not any("base_layer" in k or "weight_format" in k for k in trained)
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)  # the adapters learned
    fresh = load_model("tiny")
    fresh.pipeline.load_lora_weights(str(result.lora_path), adapter_name="q")
    reloaded = get_peft_model_state_dict(fresh.unet, adapter_name="q")
    assert set(reloaded) == set(trained)
    for key, value in trained.items():
        torch.testing.assert_close(reloaded[key], value.float())
    from safetensors.torch import load_file

    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in load_file(result.lora_path))


def fixed_batch_loss_after(optimizer_name: str, steps: int = 20) -> tuple[float, float]:
    """Loss of a LoRA'd tiny U-Net on one fixed batch before and after `steps` optimizer steps."""
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = load_model("tiny").unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    lr = 1.0 if optimizer_name == "prodigy" else 1e-2  # Prodigy's lr multiplies the step size it finds
    optimizer = build_optimizer(optimizer_name, [{"params": params, "lr": lr}], weight_decay=0.0)
    x, t, h = unet_inputs()
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(steps + 1):
        loss = torch.nn.functional.mse_loss(unet(x, t, h).sample, target)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses[0], losses[-1]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_steps_and_lowers_the_loss(name):
    # Prodigy starts from a tiny step size (d0 = 1e-6) and needs ~25 steps to find its own
    before, after = fixed_batch_loss_after(name, steps=40 if name == "prodigy" else 20)
    assert after < before * 0.95, (before, after)


@pytest.mark.parametrize("name", ["adamw8bit", "paged_adamw8bit", "lion8bit"])
def test_8bit_optimizers_keep_their_state_in_8_bits(name):
    param = torch.nn.Parameter(torch.randn(64, 128))  # bitsandbytes uses 8-bit state from 4,096 elements
    optimizer = build_optimizer(name, [{"params": [param], "lr": 1e-3}], weight_decay=0.0)
    param.grad = torch.randn_like(param)
    optimizer.step()
    state = optimizer.state[param]
    assert state["state1"].dtype == torch.uint8


def test_attention_falls_back_to_sdpa_without_xformers():
    unet = load_model("tiny").unet
    import importlib.util

    xformers = torch.cuda.is_available() and importlib.util.find_spec("xformers") is not None
    assert set_attention(unet, "auto") == ("xformers" if xformers else "sdpa")
    assert set_attention(unet, "math") == "math"
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnProcessor"}  # math: the memory-hungry one
    with torch.no_grad():
        math_out = unet(*unet_inputs()).sample
    set_attention(unet, "sdpa")
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnProcessor2_0"}
    with torch.no_grad():
        torch.testing.assert_close(unet(*unet_inputs()).sample, math_out, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_asking_for_xformers_without_cuda_says_why(tmp_path, capsys):
    from lowvram.errors import LowvramError
    from lowvram.train.loop import train

    with pytest.raises(LowvramError, match="--attention xformers: xformers needs a CUDA GPU"):
        set_attention(load_model("tiny").unet, "xformers")
    with pytest.raises(LowvramError, match="--attention xformers: xformers needs a CUDA GPU"):
        train(run_config(output=str(tmp_path / "out"), attention="xformers"))
    assert "cache" not in capsys.readouterr().out  # said before the data is scanned and cached


@pytest.mark.gpu
def test_only_the_unet_is_on_the_gpu_after_caching(tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=2, unet_weights="bnb-nf4"))
    model = result.model  # no sample prompts: nothing brought the VAE or text encoders back
    assert model.unet.device.type == "cuda"
    assert model.vae.device.type == "cpu"
    assert all(enc.device.type == "cpu" for enc in model.text_encoders)


def test_batch_variant_choice_is_seeded(tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=1, flip=True))
    data = result.data
    first = data.load([0, 1, 2], random.Random(5))
    again = data.load([0, 1, 2], random.Random(5))
    torch.testing.assert_close(first.latents, again.latents)


def test_memory_benchmark_runs_on_the_cpu(tmp_path):
    """tools/bench_memory.py is what a GPU session runs; keep it working where CI can see it."""
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "tools/bench_memory.py", "--family", "tiny", "--device", "cpu", "--steps", "1",
                    "--warmup", "0", "--strategies", "fp8-ckpt", "--out", str(out)], check=True, capture_output=True)
    record = json.loads(out.read_text())
    assert record["command"].startswith("python tools/bench_memory.py") and record["commit"]
    (run,) = record["runs"]
    assert run["ok"] and run["unet_weights"] == "fp8" and run["seconds_per_step"] > 0 and run["lora_params"] > 0
    assert run["estimated_peak_allocated"] > 0  # the planner's prediction, for calibration


def saved_for_backward_bytes(unet) -> int:
    """Bytes of the distinct storages autograd keeps from one forward for the backward pass."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    x, t, h = unet_inputs()
    x.requires_grad_(True)  # as under a LoRA: gradients flow through every frozen layer
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        unet(x, t, h).sample.sum()
    return sum(storages.values())


def test_fp8_keeps_its_stored_weights_for_backward_not_upcast_copies():
    full = load_model("tiny").unet.requires_grad_(False)
    fp8 = convert_frozen(load_model("tiny").unet.requires_grad_(False), "fp8", torch.float32)
    weights = sum(p.numel() * 4 for p in full.parameters())
    # upcast copies kept for backward would cost fp8 as much as the fp32 weights: each layer's 4-byte copy
    assert saved_for_backward_bytes(fp8) < saved_for_backward_bytes(full) - 0.5 * weights


def test_offloading_activations_trains_the_same_lora(tmp_path):
    from peft.utils import get_peft_model_state_dict

    def weights(**options):
        result = train(run_config(output=str(tmp_path / str(len(options))), max_steps=2, lr=1e-2, **options))
        return get_peft_model_state_dict(result.model.unet)

    plain, offloaded = weights(), weights(offload_activations=True)
    assert plain.keys() == offloaded.keys()
    assert all(torch.equal(plain[k], offloaded[k]) for k in plain)


def test_the_planner_moves_offloaded_ActivationsToHost_ram():
    from lowvram.hardware import hardware_for
    from lowvram.models import FAMILIES
    from lowvram.plan.estimate import MemoryStrategy, Workload, estimate

    hardware, strategy = hardware_for(None, "24GB", "64GB"), MemoryStrategy("bf16", False, "adamw")
    kept = estimate(Workload(FAMILIES["sdxl"], 1024), strategy, hardware)
    moved = estimate(Workload(FAMILIES["sdxl"], 1024, offload_activations=True), strategy, hardware)
    assert moved.vram["training"]["activations"] < kept.vram["training"]["activations"] / 4
    assert moved.host["training"]["offloaded activations"] == kept.vram["training"]["activations"]
    assert moved.speed > kept.speed


@pytest.mark.parametrize("fmt", ["bf16", "fp8", "quanto-int8"])
def test_offloading_moves_the_activations_and_leaves_the_frozen_weights_in_place(fmt):
    """torch's save_on_cpu also copied every weight autograd keeps (a Linear's transposed weight, fp8's stored
    weight, quanto's weight dequantized) to the host and back each step: the whole U-Net over PCIe twice."""
    from lowvram.memory import ActivationsToHost

    unet = convert_frozen(load_model("tiny").unet.requires_grad_(False), fmt, torch.bfloat16)
    own = {t.untyped_storage().data_ptr() for t in (*unet.parameters(), *unet.buffers()) if type(t.data) is torch.Tensor}
    saved = []
    x, t, h = unet_inputs()
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(
            lambda tensor: saved.append(tensor) or tensor, lambda tensor: tensor):
        unet(x, t, h).sample.float().sum()
    weights = [s for s in saved if type(s) is not torch.Tensor or s.untyped_storage().data_ptr() in own]
    activations = [s for s in saved if not any(s is w for w in weights)]
    assert weights and activations  # the model keeps weights for backward: these must not move
    offloaded = ActivationsToHost(unet, pin_memory=False)
    with torch.autocast("cpu", dtype=torch.bfloat16), offloaded:
        loss = unet(x, t, h).sample.float().sum()
    loss.backward()  # every saved tensor comes back for it
    assert offloaded.moved_bytes == sum(s.numel() * s.element_size() for s in activations)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_a_phase_peak_does_not_count_the_blocks_the_last_phase_left_cached(monkeypatch):
    """CUDA's peak restarts at what is reserved when reset; the allocator keeps the last phase's freed blocks
    until emptied. (A stand-in allocator: the CPU has no CUDA one.)"""
    from lowvram.memory import PhasePeaks

    class Allocator:
        in_use, reserved, peak = 0, 0, 0

        def use(self, size):
            self.in_use = size
            self.reserved = max(self.reserved, size)
            self.peak = max(self.peak, self.reserved)

        def empty_cache(self):
            self.reserved = self.in_use

        def reset(self, device=None):
            self.peak = self.reserved

    allocator = Allocator()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", allocator.empty_cache)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", allocator.reset)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: allocator.peak)
    peaks = PhasePeaks(torch.device("cuda", 0))
    with peaks.phase("caching"):
        allocator.use(6)  # the VAE's encode
        allocator.use(1)  # freed, still cached
    with peaks.phase("training"):
        allocator.use(3)
    assert peaks.bytes == {"caching": 6, "training": 3}
    for size in (5, 2):  # a phase run again (samples at each save): its largest peak, not its last
        with peaks.phase("sampling"):
            allocator.use(size)
            allocator.use(0)  # its pipeline freed
    assert peaks.bytes["sampling"] == 5
