"""8-bit weights *and* 8-bit matmuls for the frozen U-Net's Linear layers (`--unet-weights w8a8-int8/w8a8-fp8`).

The weight is stored in int8 or float8 (e4m3) with one scale per output feature. Each call quantizes its input per
token (absmax), multiplies in 8 bits on the tensor cores (`torch._int_mm`, `torch._scaled_mm`) and rescales.
Backward computes only the input's gradient, also in 8 bits: the weight is frozen, and LoRA adapters beside
the layer keep their own full-precision path. The per-feature weight scale lies on backward's contraction
dimension, so it is folded into the output gradient before that is quantized per token: exact up to the
quantization itself.

The CUDA kernels demand more than their CPU versions (cuBLASLt and CUTLASS, torch 2.5-2.11; see KERNEL_RULES),
so every call checks those demands on whatever device it runs; the CPU suite runs the full-size U-Nets through
here and fails on what a GPU would crash on. Calls a kernel cannot take (fewer than 17 tokens: time embeddings)
multiply the dequantized weight instead.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

from lowvram.errors import first_line
from lowvram.formats import WEIGHT_FORMATS

KINDS = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
LARGEST = {"int8": 127.0, "fp8": 448.0}  # the largest magnitude each 8-bit type holds
MIN_TOKENS = 17  # _int_mm: "self.size(0) needs to be greater than 16"
MULTIPLE = {"int8": 8, "fp8": 16}  # of K and N: _int_mm's and _scaled_mm's shape rules
KERNEL_RULES = (
    "int8: torch._int_mm(a, b): a int8 row-major [M, K] with M > 16, b int8 column-major [K, N], K and N multiples "
    "of 8, int32 out. fp8: torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=bf16): a float8_e4m3fn row-major, "
    "b float8_e4m3fn column-major, K and N multiples of 16, scale_a fp32 [M, 1], scale_b fp32 [1, N], both "
    "contiguous, bf16 out (row-wise scaling), compute capability 8.9 or 9.0+. All operands on one device.")


class KernelContractError(RuntimeError):
    """A call that the CUDA kernel would refuse (or crash on); raised on every device."""


@functools.cache
def kernel_supported(kind: str, device: torch.device) -> bool:
    """Whether the device runs this kind's 8-bit matmul (the CPU, with a recent torch; CUDA cards from a compute
    capability on, formats.WEIGHT_FORMATS' matmul_capability). Elsewhere the layers multiply their weights
    dequantized."""
    if device.type == "cuda":
        if kind == "fp8" and (sys.platform == "win32" or torch.version.hip):
            return False  # torch's row-wise scaled-mm (CUTLASS) kernel is built for neither Windows nor ROCm
        if torch.cuda.get_device_capability(device) < WEIGHT_FORMATS[f"w8a8-{kind}"].matmul_capability:
            return False
    # the kernels also depend on the CUDA toolkit and torch build (cuBLAS int8 on Turing before CUDA 12.3, row-wise
    # fp8 on Ada before torch 2.7, fp8 on the CPU before torch 2.9): one small call says whether this one has them
    problem = kernel_problem(kind, device)
    if problem:
        where = "GPU" if device.type == "cuda" else device.type.upper()
        print(f"warning: --unet-weights w8a8-{kind}: this {where} and torch build have no {kind} matmul ({problem}); "
              "its layers multiply their weights dequantized instead (slower)", file=sys.stderr)
    return problem is None


def kernel_problem(kind: str, device: torch.device) -> str | None:
    """Why the 8-bit matmul fails on `device`, from one call at the smallest legal shapes; None when it runs."""
    rows = torch.ones(32, 32, device=device)
    a, scale_a = quantize_rows(rows, kind)
    b, scale_b = quantize_rows(rows, kind)  # [N, K] row-major: its transpose is the column-major [K, N] operand
    try:
        matmul_8bit(kind, a, scale_a, b.t(), scale_b.view(1, -1))
    except (RuntimeError, TypeError, NotImplementedError) as exc:  # a kernel missing, or an older signature
        return first_line(exc)
    return None


def in_8_bits(rows: torch.Tensor, kind: str) -> bool:
    """Whether a call multiplies in 8 bits: enough tokens for the kernels (not SDXL's time embeddings), on a
    device that has them."""
    return rows.shape[0] >= MIN_TOKENS and kernel_supported(kind, rows.device)


def convertible(layer: torch.nn.Linear, kind: str) -> bool:
    """Layers whose shapes every kernel call can take (SD and SDXL's all are: multiples of 64)."""
    return layer.in_features % MULTIPLE[kind] == 0 and layer.out_features % MULTIPLE[kind] == 0


def quantize_rows(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row absmax quantization: (8-bit values, row-major, and fp32 scales of shape [rows, 1]) with
    x ~ values * scales. Row-major whatever x's layout: elementwise ops keep a transposed input's strides
    (backward's gradients often are), and the kernels take row-major rows only."""
    scale = x.detach().abs().amax(dim=1, keepdim=True).float().clamp_(min=1e-12) / LARGEST[kind]
    scaled = x.float().div(scale).contiguous()
    if kind == "int8":
        return scaled.round_().clamp_(-127, 127).to(torch.int8), scale
    return scaled.clamp_(-LARGEST[kind], LARGEST[kind]).to(KINDS[kind]), scale


def check_contract(kind: str, a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor | None = None,
                   scale_b: torch.Tensor | None = None) -> None:
    """Raise KernelContractError where the CUDA kernel for `kind` would refuse a @ b (KERNEL_RULES)."""
    problems = []
    want = KINDS[kind]
    if a.dtype != want or b.dtype != want:
        problems.append(f"operands {a.dtype} and {b.dtype}, kernel needs {want}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise KernelContractError(f"{kind} matmul of {tuple(a.shape)} by {tuple(b.shape)}: not 2-D matrices that chain")
    (m, k), n = a.shape, b.shape[1]
    if kind == "int8" and m < MIN_TOKENS:
        problems.append(f"M = {m}, kernel needs more than 16 rows")
    if k % MULTIPLE[kind] or n % MULTIPLE[kind]:
        problems.append(f"K = {k}, N = {n}: kernel needs multiples of {MULTIPLE[kind]}")
    if a.stride(1) != 1 or (m > 1 and a.stride(0) < k):
        problems.append(f"a (strides {a.stride()}) is not row-major")
    if b.stride(0) != 1 or (n > 1 and b.stride(1) < k):
        problems.append(f"b (strides {b.stride()}) is not column-major")
    devices = {t.device for t in (a, b, scale_a, scale_b) if t is not None}
    if len(devices) > 1:
        problems.append(f"operands on {', '.join(sorted(map(str, devices)))}")
    if kind == "fp8":
        for name, scale, shape in (("scale_a", scale_a, (m, 1)), ("scale_b", scale_b, (1, n))):
            if scale is None or scale.dtype != torch.float32 or tuple(scale.shape) != shape or not scale.is_contiguous():
                problems.append(f"{name} must be contiguous fp32 of shape {shape}"
                                f"{'' if scale is None else f', got {scale.dtype} {tuple(scale.shape)}'}")
    if problems:
        raise KernelContractError(f"{kind} matmul {tuple(a.shape)} x {tuple(b.shape)}: " + "; ".join(problems))


def matmul_8bit(kind: str, a: torch.Tensor, scale_a: torch.Tensor, b: torch.Tensor, scale_b: torch.Tensor
                ) -> torch.Tensor:
    """(a * scale_a) @ (b * scale_b) in fp32-accurate scaling, computed in 8 bits: a [M, K] row-major with
    per-row scales [M, 1], b [K, N] column-major with per-column scales [1, N]. Returns bf16 (fp8) or fp32 (int8)."""
    check_contract(kind, a, b, scale_a, scale_b)
    on_cpu = a.device.type == "cpu"
    if kind == "int8":  # the CPU kernel wants contiguous operands (CUDA's wants b column-major: checked above)
        return torch._int_mm(a, b.contiguous() if on_cpu else b).float().mul_(scale_a).mul_(scale_b)
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)


class _W8A8Linear(torch.autograd.Function):
    """y = x W^T + bias with W = weight * weight_scale[:, None]; dx in 8 bits too; no gradient for W."""

    @staticmethod
    def forward(ctx, x, weight, weight_scale, bias, kind, compute_dtype):
        ctx.save_for_backward(weight, weight_scale)
        ctx.kind, ctx.compute_dtype, ctx.x_dtype = kind, compute_dtype, x.dtype
        rows = x.reshape(-1, x.shape[-1])
        if not in_8_bits(rows, kind):
            out = F.linear(rows.to(compute_dtype), dequantize(weight, weight_scale, compute_dtype))
        else:
            quantized, scale = quantize_rows(rows, kind)
            out = matmul_8bit(kind, quantized, scale, weight.t(), weight_scale.view(1, -1)).to(compute_dtype)
        if bias is not None:
            out = out + bias.to(compute_dtype)
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        weight, weight_scale = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        if not in_8_bits(rows, ctx.kind):
            grad = rows.to(ctx.compute_dtype) @ dequantize(weight, weight_scale, ctx.compute_dtype)
        else:
            # dx = dy (s W): the per-output scale s multiplies dy's columns, leaving W's plain 8-bit values
            quantized, scale = quantize_rows(rows.float() * weight_scale.view(1, -1), ctx.kind)
            # W [out, in] is the [K, N] operand here; the kernels take it column-major: a transient copy
            columns = weight.t().contiguous().t()
            ones = torch.ones(1, weight.shape[1], device=weight.device, dtype=torch.float32)
            grad = matmul_8bit(ctx.kind, quantized, scale, columns, ones)
        return grad.reshape(*grad_out.shape[:-1], weight.shape[1]).to(ctx.x_dtype), None, None, None, None, None


def dequantize(weight: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (weight.float() * weight_scale.view(-1, 1)).to(dtype)


class W8A8Linear(torch.nn.Linear):
    """A frozen Linear stored in 8 bits that multiplies in 8 bits (see the module docstring). peft wraps it like
    any Linear: adapters add their full-precision path to this layer's output."""

    kind: str = "int8"
    compute_dtype: torch.dtype = torch.bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _W8A8Linear.apply(x, self.weight, self.weight_scale, self.bias, self.kind, self.compute_dtype)


def to_w8a8(layer: torch.nn.Linear, kind: str, compute_dtype: torch.dtype) -> W8A8Linear:
    """Convert one Linear in place (its class becomes W8A8Linear): weight quantized per output feature."""
    values, scale = quantize_rows(layer.weight.data, kind)
    layer.weight = torch.nn.Parameter(values, requires_grad=False)
    layer.register_buffer("weight_scale", scale.view(-1).contiguous())
    if layer.bias is not None:
        layer.bias.data = layer.bias.data.to(compute_dtype)
    layer.__class__ = W8A8Linear
    layer.kind, layer.compute_dtype = kind, compute_dtype
    return layer
