"""8-bit weights and 8-bit matmuls (#14, lowvram.w8a8): accurate within stated bounds at the real SD1.5 and SDXL
layer shapes, every call of a full-size training step within the CUDA kernels' contract (checked on the CPU), a
LoRA trained on them close to one trained in full precision, and the planner's view of them."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_config
from safetensors.torch import load_file

from lowvram import w8a8
from lowvram.hardware import hardware_for, load_profile
from lowvram.models.families import FAMILIES
from lowvram.plan import Workload, estimate, plan
from lowvram.plan.estimate import MemoryStrategy
from lowvram.quant import convert_frozen, storage_bytes

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import plan_trace

# Relative Frobenius error of the output and of the input's gradient against fp32, at every distinct Linear shape
# of the two U-Nets, 32 tokens of N(0, 1) inputs (the kernels take more than 16): measured at most 1.3 % (int8) and
# 3.8 % (fp8 e4m3, three mantissa bits), as at 256 tokens, where the CPU's int8 matmul took a minute; bf16 weights
# and inputs alone are off by about 0.3 %.
BOUNDS = {"int8": 0.02, "fp8": 0.05}


def linear_shapes(family: str) -> list[tuple[int, int]]:
    unet = plan_trace.meta_component(FAMILIES[family], "unet")
    return sorted({(m.in_features, m.out_features) for m in unet.modules() if isinstance(m, torch.nn.Linear)})


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_output_and_input_gradient_stay_within_bounds_at_every_real_layer_shape(family, kind):
    generator = torch.Generator().manual_seed(0)
    shapes = linear_shapes(family)
    assert len(shapes) >= 8
    for fan_in, fan_out in shapes:
        layer = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            layer.weight.normal_(0, fan_in**-0.5, generator=generator)
        weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
        x = torch.randn(2, 16, fan_in, generator=generator, requires_grad=True)
        grad_out = torch.randn(2, 16, fan_out, generator=generator)
        want = F.linear(x, weight, bias)
        (want_grad,) = torch.autograd.grad(want, x, grad_out)
        w8a8.to_w8a8(layer, kind, torch.float32)
        got = layer(x)
        (got_grad,) = torch.autograd.grad(got, x, grad_out)
        assert got.shape == want.shape and got_grad.shape == x.shape
        assert relative_error(got, want) < BOUNDS[kind], (fan_in, fan_out, relative_error(got, want))
        assert relative_error(got_grad, want_grad) < BOUNDS[kind], (fan_in, fan_out)
        assert relative_error(got, want) > 1e-4  # it did quantize


@pytest.mark.parametrize(("family", "resolution", "kind"), [
    ("sd15", 512, "int8"), ("sd15", 512, "fp8"), ("sdxl", 1024, "fp8"),  # SDXL's int8 calls: SD1.5's rules
])
def test_every_8_bit_matmul_of_a_full_size_training_step_keeps_the_cuda_kernels_contract(family, resolution, kind):
    """A whole LoRA step at full size and resolution (fake tensors: shapes, strides and dtypes without the data),
    with every adapted layer, checkpointed blocks recomputed and every matmul checked against cuBLASLt's and
    CUTLASS's demands. It found that backward's gradients arrive transposed, which only CUDA refuses."""
    calls = []
    original = w8a8.check_contract

    def counted(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    w8a8.check_contract = counted
    try:
        result = plan_trace.trace_training_step(family, resolution, weights=f"w8a8-{kind}", checkpointing=True,
                                                layers="full")
    finally:
        w8a8.check_contract = original
    assert result["activation_bytes"] > 0
    assert len(calls) > 300  # forward, recompute and backward of every converted layer


@pytest.mark.parametrize("call, problem", [
    (lambda a, b: ("int8", a.t().contiguous().t(), b), "a (strides (1, 32)) is not row-major"),
    (lambda a, b: ("int8", a, b.t().contiguous()), "is not column-major"),
    (lambda a, b: ("int8", a[:16], b), "M = 16, kernel needs more than 16 rows"),
    (lambda a, b: ("fp8", a.to(torch.float8_e4m3fn)[:, :24], b.to(torch.float8_e4m3fn)[:24]),
     "K = 24, N = 64: kernel needs multiples of 16"),
    (lambda a, b: ("fp8", a.float(), b.to(torch.float8_e4m3fn)), "operands torch.float32 and torch.float8_e4m3fn"),
])
def test_the_contract_check_refuses_what_the_cuda_kernels_refuse(call, problem):
    a = torch.randint(-100, 100, (32, 64), dtype=torch.int8)
    b = torch.randint(-100, 100, (64, 64), dtype=torch.int8).t()  # column-major, as a stored weight's transpose
    kind, a, b = call(a, b)
    rows, columns = a.shape[0], b.shape[1]
    scale_a, scale_b = torch.ones(rows, 1), torch.ones(1, columns)
    with pytest.raises(w8a8.KernelContractError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        w8a8.matmul_8bit(kind, a, scale_a, b, scale_b)


def test_quantized_rows_are_row_major_whatever_the_input_layout():
    transposed = torch.randn(640, 4096).t()  # the layout backward's gradients often have
    for kind in w8a8.KINDS:
        values, scale = w8a8.quantize_rows(transposed, kind)
        assert values.is_contiguous() and scale.shape == (4096, 1)


def test_too_few_tokens_multiply_the_dequantized_weight():
    """SDXL's time and size embeddings see one row per image: below the kernels' 17 rows the layer multiplies
    its dequantized weight (exactly the stored weight's product)."""
    layer = torch.nn.Linear(2816, 1280)
    w8a8.to_w8a8(layer, "int8", torch.float32)
    x = torch.randn(2, 2816)
    want = F.linear(x, w8a8.dequantize(layer.weight, layer.weight_scale, torch.float32), layer.bias)
    assert torch.allclose(layer(x), want, atol=1e-5)


def test_w8a8_stores_linear_weights_in_8_bits_and_keeps_convolutions():
    block = torch.nn.Sequential(torch.nn.Linear(320, 1280), torch.nn.Conv2d(320, 320, 3), torch.nn.Linear(40, 8))
    convert_frozen(block.to(torch.bfloat16), "w8a8-fp8", torch.bfloat16)
    assert isinstance(block[0], w8a8.W8A8Linear) and block[0].weight.dtype == torch.float8_e4m3fn
    assert type(block[1]) is torch.nn.Conv2d and block[1].weight.dtype == torch.bfloat16
    assert type(block[2]) is torch.nn.Linear  # 40 inputs: not a multiple of 16, stays as it was
    assert storage_bytes(block[0]) == 1280 * 320 + 1280 * 4 + 1280 * 2  # weights, fp32 scales, bf16 bias


def test_the_planner_shows_w8a8_unverified_and_counts_the_card_without_its_matmul():
    work = Workload(FAMILIES["sdxl"], 1024, sampling=False)
    result = plan(work, hardware_for(None, "24GB", "64GB"))
    shown = {e.strategy.unet_weights: e for e in result.candidates}
    assert shown["w8a8-fp8"].verified is False and shown["w8a8-int8"].verified is False
    assert not result.choice.strategy.unet_weights.startswith("w8a8")  # --auto picks only what a GPU showed
    strategy = MemoryStrategy("w8a8-fp8", False, "adamw8bit")
    ada, turing = load_profile("rtx-4060-8gb"), load_profile("colab-t4")
    assert estimate(work, strategy, ada).speed < estimate(work, MemoryStrategy("bf16", False, "adamw8bit"), ada).speed
    assert estimate(work, strategy, turing).speed > estimate(work, strategy, ada).speed  # no fp8 matmul on a T4
    assert (estimate(work, strategy, ada).vram["training"]["U-Net"]
            < 0.6 * estimate(work, MemoryStrategy("bf16", False, "adamw8bit"), ada).vram["training"]["U-Net"])


def test_a_lora_trained_on_w8a8_weights_loads_in_diffusers_and_matches_the_full_precision_one(tmp_path):
    """Same seed and options on the tiny model: each adapted layer's learned delta (up @ down), over all layers
    together, within 10 % (int8) and 25 % (fp8) of the fp32-trained one after 3 AdamW steps (measured 5.6 % and
    16.6 %; Adam's normalized steps amplify the gradients' quantization noise). A wrong scale or a transposed
    weight would be off by about 100 %."""
    from lowvram.models.loading import load_model
    from lowvram.train.loop import train

    common = {"max_steps": 3, "rank": 4, "lr": 1e-3, "save_precision": "fp32", "seed": 7,
              "cache_dir": str(tmp_path / "cache")}
    files = {fmt: train(run_config(output=str(tmp_path / fmt), unet_weights=fmt, **common)).lora_path
             for fmt in ("fp32", "w8a8-int8", "w8a8-fp8")}

    def deltas(path):
        tensors = load_file(path)
        return {k: tensors[k].flatten(1) @ tensors[k.replace("lora_up", "lora_down")].flatten(1)
                for k in tensors if k.endswith("lora_up.weight")}

    want = deltas(files["fp32"])
    for fmt, bound in (("w8a8-int8", 0.10), ("w8a8-fp8", 0.25)):
        got = deltas(files[fmt])
        difference = sum((got[k] - want[k]).norm() ** 2 for k in want) ** 0.5
        assert difference / sum(want[k].norm() ** 2 for k in want) ** 0.5 < bound, fmt
    fresh = load_model("tiny")
    fresh.pipeline.load_lora_weights(str(files["w8a8-fp8"]), adapter_name="w8a8")


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_the_kernel_probe_makes_a_legal_call_and_says_why_one_fails(kind, monkeypatch):
    """On CUDA a small call decides whether the 8-bit matmul runs (its kernels depend on the toolkit and torch
    build, not only on the card): the call itself keeps the kernels' contract, and a failure is told in words."""
    from lowvram import w8a8

    cpu = torch.device("cpu")
    try:
        problem = w8a8.kernel_problem(kind, cpu)
    except w8a8.KernelContractError as exc:  # the probe's own operands would crash the CUDA kernel
        pytest.fail(str(exc))
    if kind == "int8":
        assert problem is None  # torch's CPU int8 matmul runs
    monkeypatch.setattr(torch, "_int_mm", lambda *a: (_ for _ in ()).throw(RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")))
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no kernel\n...")))
    assert w8a8.kernel_problem(kind, cpu) == ("CUBLAS_STATUS_NOT_SUPPORTED" if kind == "int8" else "no kernel")
    w8a8.kernel_supported.cache_clear()  # a torch without the CPU kernel (fp8 before 2.9): dequantized, said once
    try:
        assert w8a8.kernel_supported(kind, cpu) is False
    finally:
        w8a8.kernel_supported.cache_clear()
