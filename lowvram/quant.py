"""Storage formats for the frozen U-Net, behind one function: `convert_frozen(module, format)`.

LoRA adapters are added *after* conversion, on top of the converted layers, and train in fp32; the
saved LoRA holds only adapter weights, and nothing is ever merged into quantized weights.

| format       | Linear           | Conv2d           | backend                                   |
|--------------|------------------|------------------|-------------------------------------------|
| fp32/fp16/bf16 | cast (or stored, upcast per layer when it differs from the compute dtype) | torch |
| fp8          | float8_e4m3fn    | float8_e4m3fn    | torch: stored fp8, upcast per layer       |
| bnb-int8     | LLM.int8         | compute dtype    | bitsandbytes Linear8bitLt                 |
| bnb-nf4      | NF4 + double quant | compute dtype  | bitsandbytes Linear4bit (QLoRA)           |
| quanto-int8  | int8             | int8             | optimum-quanto                            |
| quanto-int4  | int4             | int4             | optimum-quanto                            |
| quanto-fp8   | float8_e4m3fn    | float8_e4m3fn    | optimum-quanto                            |
| w8a8-int8    | int8, int8 matmuls | compute dtype  | torch._int_mm (lowvram.w8a8)              |
| w8a8-fp8     | float8_e4m3fn, fp8 matmuls | compute dtype | torch._scaled_mm (lowvram.w8a8)     |

bitsandbytes quantizes only nn.Linear, and SD1.5's U-Net is ~69 % convolutions by parameters, so the
fp8 and quanto formats, which also convert Conv2d, save far more on SD1.5. Heavy backends are
imported only when their format is chosen.

The backends' CUDA kernels demand more of a call than their CPU paths do, and an H200 showed it (quanto's
int4 TinyGemm kernel takes bf16 inputs only, its fp8 Marlin kernel fp16/bf16, bitsandbytes' int8 matmul its
statistics on the input's device). `KERNEL_CONTRACTS` writes those demands down and `contract_violations`
checks them on any device, so the CPU suite catches what only a GPU would have crashed on.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from lowvram import w8a8
from lowvram.errors import LowvramError, first_line
from lowvram.formats import WEIGHT_FORMATS
from lowvram.precision import DTYPES

# The input and output convolutions are tiny and sensitive; every tool keeps them in full precision.
KEEP_FULL_PRECISION = ("conv_in", "conv_out")


def convert_frozen(module: torch.nn.Module, fmt: str, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Store `module`'s frozen weights in `fmt`, computing in `compute_dtype`. Call before adding adapters,
    and move the result with `place`.

    Non-converted parts (norms, embeddings, convolutions under bitsandbytes) are cast to `compute_dtype`.
    """
    if fmt not in WEIGHT_FORMATS:
        raise LowvramError(f"--unet-weights: '{fmt}' is not one of {', '.join(WEIGHT_FORMATS)}")
    module.requires_grad_(False)
    if DTYPES.get(fmt) == compute_dtype:
        return module.to(dtype=compute_dtype)
    module.to(dtype=compute_dtype)
    if fmt in DTYPES or fmt == "fp8":  # stored in another float type, upcast layer by layer
        _to_stored_dtype(module, DTYPES.get(fmt, torch.float8_e4m3fn), compute_dtype)
    elif fmt.startswith("w8a8-"):
        _to_w8a8(module, fmt.removeprefix("w8a8-"), compute_dtype)
    elif fmt.startswith("bnb-"):
        _to_bitsandbytes(module, fmt, compute_dtype)
    else:
        _to_quanto(module, fmt, compute_dtype)
    module.requires_grad_(False)  # quanto's freeze() leaves requires_grad on
    return module


def place(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """`module.to(device)` for a converted module, keeping every tensor a kernel reads with its layer.

    `Module.to` swaps each parameter's data in place, which leaves bitsandbytes' int8 statistics (`CB`, `SCB`,
    attributes of the parameter and of the layer's state) behind on the old device; its CUDA matmul then
    meets CPU tensors."""
    module.to(device)
    for layer in module.modules():
        if type(layer).__name__ != "Linear8bitLt":
            continue
        weight, state = layer.weight, layer.state
        scale = weight.SCB if weight.SCB is not None else state.SCB
        if scale is not None:  # quantized: the int8 data is the matrix the kernel reads
            weight.CB, weight.SCB = weight.data, scale.to(weight.device)
            state.CB = state.SCB = None  # forward takes them from the weight again (init_8bit_state)
    return module


class _UpcastLinear(torch.autograd.Function):
    """F.linear with a weight stored small and upcast for the call. Autograd would keep the upcast copy of
    every layer until backward (it needs the weight for the input's gradient), which makes fp8 storage use
    *more* memory than bf16; this keeps the stored weight instead and upcasts it again in backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        ctx.save_for_backward(weight)
        ctx.dtype, ctx.x_dtype = dtype, x.dtype
        return F.linear(x.to(dtype), weight.to(dtype), bias)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        grad_x = grad_out.to(ctx.dtype) @ weight.to(ctx.dtype) if ctx.needs_input_grad[0] else None
        return None if grad_x is None else grad_x.to(ctx.x_dtype), None, None, None


class _UpcastConv2d(torch.autograd.Function):
    """The Conv2d counterpart of `_UpcastLinear`."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.dtype, ctx.x_dtype, ctx.x_shape = dtype, x.dtype, x.shape
        ctx.conv = (stride, padding, dilation, groups)
        return F.conv2d(x.to(dtype), weight.to(dtype), bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, weight.to(ctx.dtype), grad_out.to(ctx.dtype),
                                                *ctx.conv).to(ctx.x_dtype)
        return grad_x, None, None, None, None, None, None, None


class UpcastLinear(torch.nn.Linear):
    """A Linear whose weight is stored in a smaller float type (fp8, or bf16 under fp32 compute) and upcast
    to the compute dtype for each call (and again in backward, instead of keeping the upcast copy)."""

    compute_dtype: torch.dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return _UpcastLinear.apply(x, self.weight, bias, self.compute_dtype)


class UpcastConv2d(torch.nn.Conv2d):
    """A Conv2d whose weight is stored in a smaller float type and upcast to the compute dtype for each call."""

    compute_dtype: torch.dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # not in SD/SDXL U-Nets; the plain path keeps it correct anyway
            bias = None if self.bias is None else self.bias.to(self.compute_dtype)
            return self._conv_forward(x.to(self.compute_dtype), self.weight.to(self.compute_dtype), bias)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return _UpcastConv2d.apply(x, self.weight, bias, self.compute_dtype, self.stride, self.padding,
                                   self.dilation, self.groups)


def _convertible(module: torch.nn.Module):
    """(parent, attribute name, layer) for every Linear/Conv2d outside KEEP_FULL_PRECISION."""
    for name, parent in module.named_modules():
        for child_name, child in parent.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if full.split(".")[0] in KEEP_FULL_PRECISION:
                continue
            if type(child) in (torch.nn.Linear, torch.nn.Conv2d):
                yield parent, child_name, child


def _to_stored_dtype(module: torch.nn.Module, stored: torch.dtype, compute_dtype: torch.dtype) -> None:
    for _, _, layer in list(_convertible(module)):
        layer.weight.data = layer.weight.data.to(stored)
        layer.__class__ = UpcastLinear if isinstance(layer, torch.nn.Linear) else UpcastConv2d
        layer.compute_dtype = compute_dtype


def _to_w8a8(module: torch.nn.Module, kind: str, compute_dtype: torch.dtype) -> None:
    for _, _, layer in list(_convertible(module)):
        if isinstance(layer, torch.nn.Linear) and w8a8.convertible(layer, kind):
            w8a8.to_w8a8(layer, kind, compute_dtype)


def _to_bitsandbytes(module: torch.nn.Module, fmt: str, compute_dtype: torch.dtype) -> None:
    bnb = _import("bitsandbytes", fmt)
    for parent, name, layer in list(_convertible(module)):
        if not isinstance(layer, torch.nn.Linear):
            continue
        bias = layer.bias is not None
        if fmt == "bnb-nf4":
            new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=bias, compute_dtype=compute_dtype,
                                    compress_statistics=True, quant_type="nf4", device="meta")
            new.weight = bnb.nn.Params4bit(layer.weight.data, requires_grad=False, compress_statistics=True,
                                           quant_type="nf4")
        else:
            new = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, bias=bias, has_fp16_weights=False,
                                      threshold=6.0, device="meta")
            new.weight = bnb.nn.Int8Params(layer.weight.data, requires_grad=False, has_fp16_weights=False)
        if bias:
            new.bias = torch.nn.Parameter(layer.bias.data, requires_grad=False)
        setattr(parent, name, new)
    # bitsandbytes quantizes when the weights move to a device; peft reads these flags to pick its bnb layers
    module.to(next(module.parameters()).device)
    module.is_loaded_in_4bit = fmt == "bnb-nf4"
    module.is_loaded_in_8bit = fmt == "bnb-int8"


def _to_quanto(module: torch.nn.Module, fmt: str, compute_dtype: torch.dtype) -> None:
    quanto = _import("optimum.quanto", fmt)
    weights = {"quanto-int8": quanto.qint8, "quanto-int4": quanto.qint4, "quanto-fp8": quanto.qfloat8}[fmt]
    quanto.quantize(module, weights=weights, exclude=[f"{name}*" for name in KEEP_FULL_PRECISION])
    quanto.freeze(module)
    cast = functools.partial(_input_to, compute_dtype)
    for layer in module.modules():
        if isinstance(layer, quanto.nn.QModuleMixin):
            # quanto's kernels are picked by the weight's __torch_function__, before autocast can cast the
            # input: fp32 arrives from autocast's fp32 norms and from fp32 adapters, and its CUDA kernels
            # (TinyGemm int4, Marlin fp8) refuse it; its int8 kernels refuse transposed views (SDXL's
            # time embeddings)
            layer.register_forward_pre_hook(cast)


def _input_to(dtype: torch.dtype, layer: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].to(dtype).contiguous(), *args[1:])


def _import(name: str, fmt: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise LowvramError(f"--unet-weights {fmt}: needs {name.split('.')[-1]} ({first_line(exc)}); "
                           f"pip install {name.replace('.', '-')}, or choose fp16/fp8") from None


def storage_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's parameters and buffers really occupy, looking inside quantized tensors."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        for part in _storage_parts(tensor):
            key = part.untyped_storage().data_ptr() if part.device.type != "meta" else id(part)
            if key not in seen:
                seen.add(key)
                total += part.numel() * part.element_size()
    return total


def _storage_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors behind a (possibly quantized) tensor: quanto's inner data and scales, and
    bitsandbytes' packed data plus its quantization statistics."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) is not torch.nn.Parameter:
        names, _ = tensor.__tensor_flatten__()
        return [p for name in names for p in _storage_parts(getattr(tensor, name))]
    parts = [tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor]
    state = getattr(tensor, "quant_state", None)
    if state is not None:
        parts += [t for t in _quant_state_tensors(state)]
    scale = getattr(tensor, "SCB", None)
    if isinstance(scale, torch.Tensor):
        parts.append(scale)
    return parts


def _quant_state_tensors(state) -> list[torch.Tensor]:
    tensors = [getattr(state, "absmax", None), getattr(state, "code", None)]
    nested = getattr(state, "state2", None)
    if nested is not None:
        tensors += [getattr(nested, "absmax", None), getattr(nested, "code", None)]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


# What each backend's CUDA kernels demand of a converted layer's call. Their CPU paths accept more, so these are
# checked explicitly (`contract_violations`), on the CPU at full-size layer shapes in the tests.
KERNEL_CONTRACTS = {
    "torch": "every weight tensor on the input's device",
    "bitsandbytes": "every weight tensor and quantization statistic (int8 CB/SCB, NF4 absmax/code, in the weight "
                    "and in the layer's state) on the input's device",
    "optimum-quanto": "input in the compute dtype, the dtype of the weight's scales (TinyGemm int4: bf16 only; "
                      "Marlin fp8: fp16/bf16 only), contiguous (int8 matmuls); Linear inputs of 2 or 3 dimensions (its int8 CUDA matmul); "
                      "every inner tensor on the input's device",
}


def converted_layers(module: torch.nn.Module):
    """(name, layer, backend) for every layer whose frozen weight a backend stores (what a kernel contract
    covers)."""
    for name, layer in module.named_modules():
        backend = _backend_of(layer)
        if backend:
            yield name, layer, backend


def _backend_of(layer: torch.nn.Module) -> str | None:
    if isinstance(layer, (UpcastLinear, UpcastConv2d, w8a8.W8A8Linear)):
        return "torch"
    kind = type(layer).__name__
    if kind in ("Linear8bitLt", "Linear4bit"):
        return "bitsandbytes"
    if kind in ("QLinear", "QConv2d") and type(layer).__module__.startswith("optimum.quanto"):
        return "optimum-quanto"
    return None


def contract_violations(layer: torch.nn.Module, x: torch.Tensor, compute_dtype: torch.dtype) -> list[str]:
    """How the call `layer(x)` breaks its backend's kernel contract (`KERNEL_CONTRACTS`); empty when it keeps it.
    `x` is the input as the layer's forward receives it (after its own pre-hooks)."""
    backend = _backend_of(layer)
    problems = []
    tensors = _storage_parts(layer.weight)
    state = getattr(layer, "state", None)
    tensors += [t for t in (getattr(state, "CB", None), getattr(state, "SCB", None)) if isinstance(t, torch.Tensor)]
    tensors += [t for t in (getattr(layer.weight, "CB", None),) if isinstance(t, torch.Tensor)]
    elsewhere = sorted({str(t.device) for t in tensors if t.device != x.device})
    if elsewhere:
        problems.append(f"weight tensors on {', '.join(elsewhere)}, input on {x.device}")
    if backend == "optimum-quanto":
        if x.dtype != compute_dtype:
            problems.append(f"input {x.dtype}, kernel needs {compute_dtype}")
        if not x.is_contiguous():
            problems.append("input not contiguous (a view), kernel needs contiguous memory")
        if isinstance(layer, torch.nn.Linear) and x.dim() not in (2, 3):
            problems.append(f"input of {x.dim()} dimensions, kernel needs 2 or 3")
    return problems


@contextlib.contextmanager
def watch_contracts(module: torch.nn.Module, compute_dtype: torch.dtype):
    """Check every converted layer's calls inside the block against its kernel contract; yields the list of
    violations found, '<layer>: <problem>'. The check runs after the layer's own pre-hooks (registered first)."""
    found: list[str] = []
    handles = []
    for name, layer, _ in converted_layers(module):
        def check(layer, args, name=name):
            found.extend(f"{name} ({type(layer).__name__}): {p}"
                         for p in contract_violations(layer, args[0], compute_dtype))
        handles.append(layer.register_forward_pre_hook(check))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
