"""Peak memory of lowvram's GPU phases, measured on the CPU without a GPU and without weights. A build-time tool:
`tools/build_plan_data.py` and the tests use it; nothing in the `lowvram` package imports it.

The architecture is built on the meta device from the shipped configs (no weights, no RAM), LoRA adapters
are added there, and then every parameter is replaced by a FakeTensor: a CPU tensor with shape and dtype
but no data. One real training step (forward, backward, AdamW step) runs on these through the very
functions training uses, and `LiveBytes` counts the bytes of live tensor storages after every op, so the
peak includes what autograd saves for backward, what gradient checkpointing recomputes, autocast's casts
and the optimizer's temporaries. A step takes seconds, so `lowvram plan` reads precomputed results from
`plan_data.json` (written by tools/build_plan_data.py) instead of tracing at run time.

Fake CUDA tensors can't be made without a GPU, so the trace runs on fake CPU tensors. Two things differ
from CUDA and are handled here: diffusers' SDPA processor is forced (on CPU it picks the flash kernel,
which, like CUDA's flash/efficient kernels, never materializes the attention matrix), and CPU autocast
keeps group_norm/layer_norm in 16 bits where CUDA autocast runs them in fp32, which `CudaAutocastPolicy`
reproduces. Full-size families trace in bf16 (training's `auto` precision on current GPUs; fp16 has the
same sizes), the tiny families in fp32 without autocast, as a CPU run trains them, so a real CPU run can
check the fake trace.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import time
import weakref
from collections import Counter
from collections.abc import Iterable

import torch
import torch.utils.checkpoint
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only

from lowvram.checkpointing import checkpoint_units, enable_checkpointing, recomputed_parts
from lowvram.config import DEFAULT_LORA_LAYERS
from lowvram.formats import TRACEABLE_FORMATS
from lowvram.models.families import FAMILIES, ModelFamily
from lowvram.models.loading import _quiet_diffusers
from lowvram.quant import _convertible, convert_frozen, storage_bytes

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# CUDA autocast's float32 list (torch docs, "CUDA Ops that can autocast to float32"); CPU autocast has few.
CUDA_FP32_OPS = frozenset((
    "__pow__", "__rdiv__", "__rpow__", "__rtruediv__", "acos", "asin", "binary_cross_entropy_with_logits", "cosh",
    "cosine_embedding_loss", "cdist", "cosine_similarity", "cross_entropy", "cumprod", "cumsum", "dist", "erfinv",
    "exp", "expm1", "group_norm", "hinge_embedding_loss", "kl_div", "l1_loss", "layer_norm", "log", "log_softmax",
    "log10", "log1p", "log2", "margin_ranking_loss", "mse_loss", "multilabel_margin_loss", "multi_margin_loss",
    "nll_loss", "norm", "normalize", "pdist", "poisson_nll_loss", "pow", "prod", "reciprocal", "rsqrt", "sinh",
    "smooth_l1_loss", "soft_margin_loss", "softmax", "softmin", "softplus", "sum", "renorm", "tan",
    "triplet_margin_loss",
))


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages, counted at the dispatcher: every op's outputs are registered once per
    storage (views and in-place results share it) and released when the storage object dies. A storage's
    Python object is preserved for its whole life in this torch (checked by the tests), so a finalizer on
    it fires exactly when the memory would be freed. Works for real and fake tensors alike."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # id(storage) -> bytes counted for it

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that existed before the mode was entered (weights, inputs)."""
        for tensor in tensors:
            self._register(tensor)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._register(tensor)
        return out

    def _register(self, tensor: torch.Tensor) -> None:
        if hasattr(tensor, "__tensor_flatten__"):  # a wrapper subclass (quanto's QTensors): its inner tensors
            for name in tensor.__tensor_flatten__()[0]:
                self._register(getattr(tensor, name))
            return
        if tensor.layout != torch.strided or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key, size = id(storage), storage.nbytes()
        old = self._sizes.get(key)
        if old is None:
            weakref.finalize(storage, self._release, key)
        if old != size:  # new, or resized in place (resize_ on an `out=` tensor)
            self._sizes[key] = size
            self.live += size - (old or 0)
            self.peak = max(self.peak, self.live)

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


class CudaAutocastPolicy(TorchFunctionMode):
    """Run CUDA autocast's fp32 ops in fp32 while CPU autocast is on. Without it group_norm and layer_norm
    outputs (saved for backward by the SiLU/attention that follows) would be counted at 2 bytes instead of
    CUDA's 4. Inert outside autocast. A mode is switched off while it handles a call, so it is off during
    `loss.backward()`: checkpointed blocks re-enter it for their recomputation (`_checkpoint`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in CUDA_FP32_OPS and torch.is_autocast_enabled("cpu"):
            args, kwargs = tree_map_only(torch.Tensor, _to_fp32, (args, kwargs))
        return func(*args, **kwargs)


def _checkpoint(module: torch.nn.Module, *args):
    """diffusers' default gradient checkpointing (non-reentrant), recomputing under `CudaAutocastPolicy`."""
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False,
                                             context_fn=lambda: (contextlib.nullcontext(), CudaAutocastPolicy()))


def _to_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() and tensor.dtype != torch.float64 else tensor


def trace_dtype(family: ModelFamily) -> torch.dtype:
    """bf16 for the real architectures (as trained on GPUs), fp32 for the tiny ones (as trained on CPUs)."""
    return torch.float32 if family.is_random_init else torch.bfloat16


def meta_component(family: ModelFamily, name: str) -> torch.nn.Module:
    """A model part (unet, vae, text_encoder, ...) of the family, built from its shipped config on meta."""
    from accelerate import init_empty_weights

    index = json.loads((family.config_dir / "model_index.json").read_text())
    library, class_name = index[name]
    cls = getattr(importlib.import_module(library), class_name)
    with init_empty_weights(include_buffers=True):
        if library == "diffusers":
            return cls.from_config(cls.load_config(family.config_dir, subfolder=name))
        return cls(cls.config_class.from_pretrained(family.config_dir, subfolder=name))


def materialize(module: torch.nn.Module, fake: bool, seed: int = 0) -> None:
    """Replace a meta module's tensors in place: fake (to be called inside FakeTensorMode) or real CPU
    tensors with small random values. `.to()`/`to_empty()` fail on fake tensors, so parameters are assigned
    into `_parameters` directly; shared tensors stay shared."""
    generator = torch.Generator().manual_seed(seed)
    made: dict[int, torch.Tensor] = {}

    def make(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            new = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            if not fake and new.is_floating_point():
                with torch.no_grad():
                    new.copy_(torch.randn(t.shape, generator=generator) * 0.02)
            made[id(t)] = torch.nn.Parameter(new, t.requires_grad) if isinstance(t, torch.nn.Parameter) else new
        return made[id(t)]

    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for key, tensor in table.items():
                if tensor is not None:
                    table[key] = make(tensor)


def _module_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.untyped_storage().nbytes() for t in {id(t): t for t in tensors}.values())


def _trace_unet(family: ModelFamily, dtype: torch.dtype, weights: str, rank: int | None,
                checkpointing: bool | list[str], layers: str = DEFAULT_LORA_LAYERS, input_casts: bool | None = None
                ) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """The U-Net as training prepares it (format, SDPA, adapters, checkpointing), still on meta."""
    from lowvram.adapters.networks import add_adapter, cast_inputs
    from lowvram.attention import set_attention

    fmt = DTYPE_NAMES[dtype] if weights == "auto" else weights
    if fmt not in TRACEABLE_FORMATS:
        raise ValueError(f"can only trace U-Net weights in {TRACEABLE_FORMATS}, not {fmt}")
    with _quiet_diffusers():  # its warning about casting with .to() concerns loading weights, not sizes
        unet = convert_frozen(meta_component(family, "unet"), fmt, dtype)
    set_attention(unet, "sdpa")
    params = add_adapter(unet, family.lora_targets("unet", layers), rank, rank, 0.0) if rank else []
    # None: as training sets them (no input casts under autocast); tools/bench_step_overhead.py compares both
    cast_inputs(unet, cast=dtype == torch.float32 if input_casts is None else input_casts)
    if checkpointing:  # True: every unit; a list: the named units (lowvram.checkpointing)
        enable_checkpointing(unet, None if checkpointing is True else list(checkpointing),
                             None if dtype == torch.float32 else _checkpoint)
    return unet, params


def _autocast(dtype: torch.dtype):
    """Training's `accelerator.autocast()` for a 16-bit dtype (with `CudaAutocastPolicy` active around it);
    nothing for fp32, which trains without autocast."""
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)


def _latent_shape(family: ModelFamily, batch: int, resolution: int) -> tuple[int, int, int, int]:
    vae = json.loads((family.config_dir / "vae" / "config.json").read_text())
    f = 2 ** (len(vae["block_out_channels"]) - 1)
    return (batch, vae["latent_channels"], resolution // f, resolution // f)


def _conditioning(family: ModelFamily, unet: torch.nn.Module, batch: int, resolution: int, dtype: torch.dtype):
    """Cached-style text conditioning (hidden states, SDXL's pooled embedding and size time_ids)."""
    from lowvram.models.conditioning import unet_conditioning

    config = unet.config
    hidden = torch.randn(batch, 77, config.cross_attention_dim, dtype=dtype)
    pooled = None
    if family.size_conditioning:
        width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        pooled = torch.randn(batch, width, dtype=dtype)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch, dtype=torch.float32)
    return unet_conditioning(family, hidden, pooled, time_ids)


def trace_training_step(family_name: str, resolution: int, batch: int = 1, rank: int = 16,
                        checkpointing: bool | list[str] = False, fake: bool = True, weights: str = "auto",
                        dtype: torch.dtype | None = None, layers: str = DEFAULT_LORA_LAYERS,
                        input_casts: bool | None = None) -> dict:
    """Live bytes of one U-Net LoRA training step from cached latents and text embeddings.

    `baseline_bytes` is what stays resident between steps (frozen weights, LoRA parameters, AdamW state:
    the optimizer is warmed up with one step on zero gradients first); `peak_bytes` is the most alive at
    once during the next step (inputs, forward, backward, optimizer step); `activation_bytes` their
    difference, which grows with batch and pixels. `fake=False` runs the same step on real CPU tensors
    (for tests; slow beyond the tiny families). `weights` is the frozen U-Net's storage format ("auto":
    `dtype` itself; fp8 stores weights in 8 bits and upcasts them per layer).
    """
    from diffusers import DDPMScheduler

    from lowvram.optim import build_optimizer
    from lowvram.train.loss import diffusion_loss, sample_noise, sample_timesteps

    family = FAMILIES[family_name]
    dtype = dtype or trace_dtype(family)
    start = time.perf_counter()
    unet, meta_params = _trace_unet(family, dtype, weights, rank, checkpointing, layers, input_casts)
    scheduler = DDPMScheduler.from_pretrained(family.config_dir, subfolder="scheduler")
    counter = LiveBytes()
    with _tensor_mode(fake), CudaAutocastPolicy(), counter:
        materialize(unet, fake)
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        frozen = [t for t in _module_tensors(unet) if not t.requires_grad]
        counter.track(_module_tensors(unet))
        optimizer = build_optimizer("adamw", [{"params": params, "lr": 1e-4}], weight_decay=0.0)
        for p in params:  # creates AdamW's state, as the first real step would
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        baseline = counter.live
        counter.reset_peak()

        latents = torch.randn(_latent_shape(family, batch, resolution), dtype=dtype)
        conditioning = _conditioning(family, unet, batch, resolution, dtype)
        noise = sample_noise(latents, 0.0)
        timesteps = sample_timesteps(scheduler, batch, latents.device)
        with _autocast(dtype):
            loss = diffusion_loss(unet, scheduler, latents, conditioning, noise, timesteps)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss, latents, conditioning, noise, timesteps
        result = {
            "family": family_name, "resolution": resolution, "batch": batch, "rank": rank,
            "checkpointing": checkpointing, "fake": fake, "dtype": DTYPE_NAMES[dtype], "layers": layers,
            "unet_weights": DTYPE_NAMES[dtype] if weights == "auto" else weights,
            "weights_bytes": _bytes(frozen), "lora_params": sum(p.numel() for p in meta_params),
            "baseline_bytes": baseline, "peak_bytes": counter.peak,
            "activation_bytes": counter.peak - baseline, "end_bytes": counter.live,
        }
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _tensor_mode(fake: bool):
    from torch._subclasses.fake_tensor import FakeTensorMode

    # non-fake inputs: the scheduler's real alphas_cumprod table is converted on use
    return FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()


def vae_dtype(family: ModelFamily, dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype in training and sampling: fp32 where it overflows in fp16 (SDXL's force_upcast)."""
    vae = json.loads((family.config_dir / "vae" / "config.json").read_text())
    return torch.float32 if dtype == torch.float16 and vae.get("force_upcast") else dtype


def trace_vae_encode(family_name: str, resolution: int, batch: int = 1, dtype: torch.dtype | None = None,
                     tiling: bool = False) -> dict:
    """Transient bytes of encoding a batch of images to latents (the latent-caching phase), beyond the
    VAE's weights: the pixel batch on the device, the encoder's activations (no_grad) and the latents."""
    from lowvram.models.conditioning import encode_images

    family = FAMILIES[family_name]
    dtype = dtype or trace_dtype(family)
    with _quiet_diffusers():
        vae = meta_component(family, "vae").to(dtype=dtype).requires_grad_(False)
    if tiling:
        vae.enable_tiling()
    counter = LiveBytes()
    with _tensor_mode(True), counter, torch.no_grad():
        materialize(vae, fake=True)
        counter.track(_module_tensors(vae))
        weights = counter.live
        encode_images(vae, torch.randn(batch, 3, resolution, resolution, dtype=dtype))
    return {"resolution": resolution, "batch": batch, "dtype": DTYPE_NAMES[dtype], "tiling": tiling,
            "vae_weight_bytes": weights, "activation_bytes": counter.peak - weights}


def trace_sampling(family_name: str, resolution: int, dtype: torch.dtype | None = None) -> dict:
    """Transient bytes of sampling, as lowvram.train.sampling renders: one U-Net forward at batch 2
    (classifier-free guidance) under autocast, then the VAE decode of one latent in the VAE's dtype. The
    parts take turns on the device, so the phase needs U-Net weights + max(U-Net activations, VAE weights
    + decode activations); `activation_bytes` is the larger of the two transients. LoRA adapters are left
    out (their weights are in the plan's baseline; their activations are a fraction of a percent)."""
    family = FAMILIES[family_name]
    dtype = dtype or trace_dtype(family)
    unet, _ = _trace_unet(family, dtype, "auto", None, False)
    with _quiet_diffusers():
        vae = meta_component(family, "vae").to(dtype=vae_dtype(family, dtype)).requires_grad_(False)
    counter = LiveBytes()
    with _tensor_mode(True), CudaAutocastPolicy(), counter, torch.no_grad():
        materialize(unet, fake=True)
        counter.track(_module_tensors(unet))
        base = counter.live
        latents = torch.randn(_latent_shape(family, 1, resolution))
        conditioning = _conditioning(family, unet, 2, resolution, dtype)
        with _autocast(dtype):
            uncond, cond = unet(torch.cat([latents] * 2), torch.tensor(500), **conditioning).sample.float().chunk(2)
        latents = uncond + 7.0 * (cond - uncond)
        del uncond, cond, conditioning
        unet_activation = counter.peak - base
        materialize(vae, fake=True)
        counter.track(_module_tensors(vae))
        vae_weights = _bytes(_module_tensors(vae))
        base = counter.live
        counter.reset_peak()
        vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float()
        decode_activation = counter.peak - base
    return {"resolution": resolution, "dtype": DTYPE_NAMES[dtype], "unet_activation_bytes": unet_activation,
            "vae_weight_bytes": vae_weights, "vae_decode_activation_bytes": decode_activation,
            "activation_bytes": max(unet_activation, decode_activation)}


def _layer_kind(layer: torch.nn.Module) -> tuple:
    if isinstance(layer, torch.nn.Linear):
        return ("linear", layer.in_features, layer.out_features, layer.bias is not None)
    return ("conv", layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)


def _real_layer(kind: tuple, dtype: torch.dtype) -> torch.nn.Module:
    if kind[0] == "linear":
        return torch.nn.Linear(*kind[1:3], bias=kind[3], dtype=dtype)
    _, cin, cout, kernel, stride, padding, dilation, groups, bias, padding_mode = kind
    return torch.nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias, padding_mode, dtype=dtype)


def _converted_bytes(kinds: list[tuple], fmt: str, dtype: torch.dtype) -> int:
    """storage_bytes of real layers of these kinds after convert_frozen, held under a neutral name (`layers`,
    not conv_in/conv_out) so every one is converted as it would be inside the U-Net."""
    holder = torch.nn.Module()
    holder.layers = torch.nn.ModuleList(_real_layer(kind, dtype) for kind in kinds)
    return storage_bytes(convert_frozen(holder, fmt, dtype))


def unet_weight_bytes(family_name: str, fmt: str, compute_dtype: torch.dtype) -> int:
    """Exactly `storage_bytes(convert_frozen(unet, fmt, compute_dtype))` for the family's U-Net, without
    building it: one real layer per distinct kind is converted with the real backend. A kind's bytes per
    extra layer are measured as (two layers - one layer), because backends share some tensors between
    layers (e.g. quantization tables) that storage_bytes counts once; one container holding one layer of
    every kind counts those shared tensors once. Everything `_convertible` skips (norms, embeddings,
    conv_in/conv_out) is stored in the compute dtype."""
    unet = meta_component(FAMILIES[family_name], "unet")
    layers = [layer for _, _, layer in _convertible(unet)]
    converted = {id(t) for layer in layers for t in _module_tensors(layer)}
    size = torch.empty((), dtype=compute_dtype).element_size()
    rest = sum(t.numel() * (size if t.is_floating_point() else t.element_size())
               for t in {id(t): t for t in _module_tensors(unet)}.values() if id(t) not in converted)
    kinds = Counter(_layer_kind(layer) for layer in layers)
    total = rest + _converted_bytes(list(kinds), fmt, compute_dtype)
    for kind, count in kinds.items():
        if count > 1:
            per_layer = (_converted_bytes([kind, kind], fmt, compute_dtype)
                         - _converted_bytes([kind], fmt, compute_dtype))
            total += (count - 1) * per_layer
    return total


def trace_checkpoint_units(family_name: str, resolution: int, dtype: torch.dtype | None = None) -> list[dict]:
    """What checkpointing each unit (lowvram.checkpointing) saves and costs, from one traced forward pass of a
    LoRA training step without checkpointing, at batch 1: `saved_bytes`, the storages autograd keeps for
    backward that the unit's recomputed parts create (their inputs and the weights stay saved either way), and
    `forward_flops`, what recomputing them costs. The storages are counted once, for the innermost unit."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    family = FAMILIES[family_name]
    dtype = dtype or trace_dtype(family)
    unet, _ = _trace_unet(family, dtype, "auto", 16, False)
    units = checkpoint_units(unet)
    saved: dict[str, dict[int, int]] = {name: {} for name in units}
    flops: dict[str, int] = dict.fromkeys(units, 0)
    active: list[tuple[str, set[int]]] = []  # (unit, storages that existed when its part was called)

    def enter(name: str):
        def hook(module, args, kwargs):
            known = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            active.append((name, known | weights))
        return hook

    def leave(module, args, kwargs, output):
        active.pop()

    def pack(tensor: torch.Tensor):
        if active and tensor.layout == torch.strided:
            name, known = active[-1]
            storage = tensor.untyped_storage()
            if id(storage) not in known:
                saved[name][id(storage)] = storage.nbytes()
        return tensor

    handles = []
    for name, unit in units.items():
        for part in recomputed_parts(unit):
            handles.append(part.register_forward_pre_hook(enter(name), with_kwargs=True))
            handles.append(part.register_forward_hook(leave, with_kwargs=True))
    # the CPU flash-attention op has no formula of its own; its FLOPs are any SDPA kernel's (arguments as shapes)
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                     lambda query, key, value, *args, out_shape=None, **kwargs: sdpa_flop_count(query, key, value)}
    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention)
    with _tensor_mode(True), CudaAutocastPolicy():
        materialize(unet, fake=True)
        unet.train()
        weights = {id(t.untyped_storage()) for t in _module_tensors(unet)}
        latents = torch.randn(_latent_shape(family, 1, resolution), dtype=dtype)
        conditioning = _conditioning(family, unet, 1, resolution, dtype)
        with _autocast(dtype), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), counter:
            unet(latents, torch.tensor([500]), **conditioning)
    for handle in handles:
        handle.remove()
    by_module = counter.get_flop_counts()
    root = type(unet).__name__
    for name, unit in units.items():
        parts = {f"{root}.{part_name}" for part_name, part in unet.named_modules() if part in recomputed_parts(unit)}
        flops[name] = sum(sum(by_module.get(part, {}).values()) for part in parts)
    return [{"name": name, "saved_bytes": sum(saved[name].values()), "forward_flops": flops[name]}
            for name in units]
