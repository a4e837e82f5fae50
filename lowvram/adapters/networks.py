"""Adapters (peft) on the model: LoRA, DoRA, LoHa and LoKr, added to the frozen U-Net and text encoders, their
parameters always in fp32. Their files (kohya/LyCORIS, diffusers) are `lowvram.adapters.lora_files`."""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Collection
from contextlib import contextmanager

import torch

from lowvram.adapters.blocks import BlockPlan
from lowvram.adapters.dropout import add_lora_dropouts
from lowvram.config import NetworkConfig
from lowvram.errors import LowvramError
from lowvram.formats import network_refusal
from lowvram.lora_header import smaller_side_first
from lowvram.models.loading import LoadedModel

ADAPTER = "default"  # peft's adapter name; lowvram adds one adapter per model part
NAMES = {"lora": "LoRA", "dora": "DoRA", "loha": "LoHa", "lokr": "LoKr"}


def peft_config(network: str, targets: tuple[str, ...], rank: int, alpha: float, module_dropout: float,
                lokr_factor: int = -1, rank_dropout: float = 0.0):
    """The peft config of one network type, with the defaults LyCORIS's kohya network uses: LoHa's and LoKr's
    `module_dropout` and `rank_dropout` (the rows of the update left out, the rest scaled up; LoRA's dropouts are
    kohya's, lowvram.adapters.dropout), LoKr's first matrix never decomposed, LoKr's second matrix zero at first
    (its `init_weights="lycoris"`)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if network in ("lora", "dora"):
        return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True,
                          use_dora=network == "dora")
    if network == "loha":
        return LoHaConfig(r=rank, alpha=alpha, module_dropout=module_dropout, rank_dropout=rank_dropout,
                          target_modules=list(targets))
    if network == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, module_dropout=module_dropout, rank_dropout=rank_dropout,
                          rank_dropout_scale=True, target_modules=list(targets), decompose_factor=lokr_factor,
                          decompose_both=False, init_weights="lycoris")
    raise LowvramError(f"--network: '{network}' is not one of {', '.join(NAMES)}")


_EARLIER_LOKR_SHAPES = contextvars.ContextVar("earlier_lokr_shapes", default=False)


@contextmanager
def earlier_lokr_shapes(earlier: bool):
    """Within, if `earlier`: LoKr factors split as peft splits a side (a factor above its root first), as lowvram
    wrote LoKr files and checkpoints before 2026-12-05 (`lora_header.larger_side_first` tells them), which then
    apply and train on."""
    token = _EARLIER_LOKR_SHAPES.set(earlier)
    try:
        yield
    finally:
        _EARLIER_LOKR_SHAPES.reset(token)


def add_peft_adapter(module: torch.nn.Module, config) -> None:
    """peft's `add_adapter`, a LoKr's factors shaped as LyCORIS's (`smaller_side_first`), so that a LyCORIS file
    of any factor trains on and applies, and a LoKr trained here has the shapes LyCORIS gives the same factor
    (within `earlier_lokr_shapes`, peft's own)."""
    _split_as_lycoris()
    module.add_adapter(config)


_SPLIT_LOCK = threading.Lock()


def _split_as_lycoris() -> None:
    """Put, once, a split in peft's LoKr layers that reads `earlier_lokr_shapes` (a context variable: each thread
    its own), peft's own kept as its `__wrapped__` (what `lora_header.lokr_factor` reads); patching peft's module
    around each call raced between threads."""
    import peft.tuners.lokr.layer as lokr

    with _SPLIT_LOCK:
        if hasattr(lokr.factorization, "__wrapped__"):
            return
        peft_sides = lokr.factorization

        def split(dimension: int, factor: int = -1) -> tuple[int, int]:
            sides = peft_sides(dimension, factor)
            return sides if _EARLIER_LOKR_SHAPES.get() else smaller_side_first(sides)

        split.__wrapped__ = peft_sides  # type: ignore[attr-defined]
        lokr.factorization = split


def add_adapter(module: torch.nn.Module, targets: tuple[str, ...], rank: int, alpha: float, module_dropout: float,
                network: str = "lora", lokr_factor: int = -1, conv: tuple[int, float] | None = None,
                blocks: BlockPlan | None = None, rank_dropout: float = 0.0) -> list[torch.nn.Parameter]:
    """Add an adapter (peft) of type `network` on `targets` of a frozen module; return its trainable parameters,
    in fp32 whatever the frozen weights' dtype or format. `conv` is the (rank, alpha) of the targeted 3x3
    convolutions (kohya's conv_dim and conv_alpha), by default `rank` and `alpha`; `blocks`, the U-Net's per-block
    ranks and alphas, which set both in its blocks (rank 0: no adapter)."""
    config = peft_config(network, targets, rank, alpha, module_dropout, lokr_factor, rank_dropout)
    spatial = set(spatial_convolutions(module, targets))
    own = {name: planned_rank_alpha(name, name in spatial, (rank, alpha), conv, blocks)
           for name, _ in module.named_modules() if targeted(name, targets)}
    skipped = [name for name, (layer_rank, _) in own.items() if not layer_rank]
    if own and len(skipped) == len(own):
        raise LowvramError("--block-ranks, --*-lr-weight: every adapted layer is in a block at 0; give some blocks "
                           "a rank and a weight above 0")
    if skipped:  # one expression, which peft matches against each module's whole path
        config.exclude_modules = "(?:" + "|".join(re.escape(name) for name in skipped) + ")"
    kept = {name: value for name, value in own.items() if value[0]}
    config.rank_pattern = layer_patterns({name: r for name, (r, _) in kept.items()}, rank)
    config.alpha_pattern = layer_patterns({name: a for name, (_, a) in kept.items()}, alpha)
    add_peft_adapter(module, config)
    _plain_adapter_convolutions(module)
    _whole_kronecker_unscaled(module)
    _lycoris_hadamard_start(module)
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def planned_rank_alpha(path: str, spatial: bool, plain: tuple[int, float], conv: tuple[int, float] | None,
                     blocks: BlockPlan | None) -> tuple[int, float]:
    """(rank, alpha) of the adapted layer at `path`: its block's where `blocks` numbers it, else `conv` for a 3x3
    convolution and `plain` for the rest."""
    return (blocks and blocks.rank_alpha(path, spatial)) or (conv if spatial and conv else plain)


def layer_patterns(values: dict[str, float], default: float) -> dict[str, float]:
    """peft's rank_pattern or alpha_pattern for per-layer `values`: one expression per value other than `default`,
    naming its layers' whole paths. peft tries every pattern against every adapted layer, each through Python's
    cache of 512 compiled expressions: one pattern per layer (SDXL's U-Net has 722 under attn-mlp) would be
    compiled anew at each try, about 45 s on SDXL."""
    by_value: dict[float, list[str]] = {}
    for name, value in values.items():
        if value != default:
            by_value.setdefault(value, []).append(re.escape(name))
    return {"(?:" + "|".join(names) + ")": value for value, names in by_value.items()}


def _whole_kronecker_unscaled(module: torch.nn.Module) -> None:
    """A LoKr layer whose Kronecker factors are both whole (its rank at least half the second factor's side, as
    in "full-rank" LoKr recipes of rank 10000 and more) has no rank to scale by: LyCORIS trains and applies it at
    scale 1, where peft would keep alpha/rank (1e-5 at rank 100000, which would leave it all but untrained)."""
    for _, layer in adapted_layers(module):
        if ADAPTER in getattr(layer, "lokr_w1", {}) and ADAPTER in getattr(layer, "lokr_w2", {}):
            layer.scaling[ADAPTER] = 1.0


def _lycoris_hadamard_start(module: torch.nn.Module) -> None:
    """LoHa's first weights as LyCORIS draws them (its LohaModule: w1_a ~ N(0, 0.1), w1_b and w2_b ~ N(0, 1), w2_a
    zero), not peft's (kaiming-uniform, w2_b zero), whose update starts about twenty times slower: a LyCORIS LoHa's
    learning rate carries over."""
    for _, layer in adapted_layers(module):
        if ADAPTER in getattr(layer, "hada_w1_a", {}):
            with torch.no_grad():
                torch.nn.init.normal_(layer.hada_w1_a[ADAPTER], std=0.1)
                torch.nn.init.normal_(layer.hada_w1_b[ADAPTER], std=1.0)
                torch.nn.init.normal_(layer.hada_w2_b[ADAPTER], std=1.0)
                torch.nn.init.zeros_(layer.hada_w2_a[ADAPTER])


def _plain_adapter_convolutions(module: torch.nn.Module) -> None:
    """peft builds a convolution's LoRA matrices with the base layer's own class (`type(base_layer)`): for a
    stored format that is lowvram's upcasting Conv2d (no weight gradient) or quanto's quantizing one (no
    weight at all unless quantized). The adapters are plain fp32 convolutions, keeping peft's initial weights."""
    for layer in module.modules():
        for matrices in (getattr(layer, "lora_A", None), getattr(layer, "lora_B", None)):
            if not isinstance(matrices, torch.nn.ModuleDict):
                continue
            for key, conv in list(matrices.items()):
                if isinstance(conv, torch.nn.Conv2d) and type(conv) is not torch.nn.Conv2d:
                    plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                            conv.padding, conv.dilation, conv.groups, bias=conv.bias is not None,
                                            padding_mode=conv.padding_mode, device="meta")
                    plain.weight, plain.bias = conv.weight, conv.bias  # the same parameters, peft's init
                    matrices[key] = plain


def targeted(name: str, targets: tuple[str, ...]) -> bool:
    """Whether the module at path `name` is one that `targets` (peft's target_modules) names."""
    return any(name == t or name.endswith("." + t) for t in targets)


def spatial_convolutions(module: torch.nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The paths of the targeted convolutions with a kernel larger than 1x1: the layers kohya's conv_dim and
    conv_alpha apply to (its 1x1 convolutions take the linear layers' rank, as they are linear layers)."""
    return [name for name, layer in module.named_modules() if targeted(name, targets) and is_spatial(layer)]


def is_spatial(layer: torch.nn.Module) -> bool:
    """A convolution with a kernel larger than 1x1."""
    return isinstance(layer, torch.nn.Conv2d) and tuple(layer.kernel_size) != (1, 1)


def check_supported(module: torch.nn.Module, targets: tuple[str, ...], network: str) -> None:
    """Raise a one-line LowvramError if peft cannot train `network` on the (converted) layers `targets` names."""
    for name, layer in module.named_modules():
        if targeted(name, targets):
            problem = _unsupported(network, layer)
            if problem:
                raise LowvramError(problem)


def _unsupported(network: str, layer: torch.nn.Module) -> str | None:
    kind, weight = type(layer).__name__, getattr(layer, "weight", None)
    stored = ("bnb-nf4" if kind == "Linear4bit" else f"w8a8-{layer.kind}" if kind == "W8A8Linear"
              else "fp8" if weight is not None and weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else None)
    if stored and (refused := network_refusal(network, stored)):  # (the table in lowvram.formats)
        return refused
    if network == "dora" and kind == "Linear8bitLt" and weight is not None and weight.device.type == "cpu":
        # on the CPU peft re-wraps the 8-bit weight each time DoRA reads it and loses its scales
        return ("--network dora: peft's DoRA breaks bitsandbytes 8-bit weights on the CPU (--unet-weights "
                "bnb-int8); use --unet-weights quanto-int8, or --network lora, loha or lokr")
    return None


def add_lora(model: LoadedModel, network: NetworkConfig, alpha: float, text_encoders: bool | Collection[str],
             blocks: BlockPlan | None = None) -> dict[str, list[torch.nn.Parameter]]:
    """Add the adapters `network` describes to the U-Net and the text encoders `text_encoders` names (True: every
    one), with the U-Net's per-block ranks `blocks`; return the trainable parameters per part. Every part is
    checked first, so a refused combination leaves the model untouched."""
    family = model.family
    parts = [("unet", model.unet, family.lora_targets("unet", network.lora_layers))]
    parts += [(spec.component, encoder, family.lora_targets(spec.component, network.lora_layers))
              for spec, encoder in zip(family.text_encoders, model.text_encoders)
              if text_encoders is True or (text_encoders and spec.component in text_encoders)]
    for _, module, targets in parts:
        check_supported(module, targets, network.network)
    params = {name: add_adapter(module, targets, network.rank, alpha, network.lycoris_module_dropout,
                                network.network, network.lokr_factor, network.conv_rank_alpha,
                                blocks if name == "unet" else None, network.lycoris_rank_dropout)
              for name, module, targets in parts}
    if network.network in ("lora", "dora"):
        for _, module, _ in parts:
            pairs = [(layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]) for _, layer in adapted_layers(module)]
            add_lora_dropouts(pairs, network.dropout, network.rank_dropout, network.module_dropout)
    return params


def cast_inputs(module: torch.nn.Module, cast: bool) -> None:
    """Whether peft casts each adapted layer's input to the adapters' fp32. Under autocast it need not: autocast
    casts the fp32 copy straight back to 16 bits for the adapter's matmul, so the cast costs two copies of the
    activation per layer in forward, two more in backward, and a third copy kept for backward, all with the
    values the 16-bit input already had. Training under mixed precision turns it off; without autocast (fp32
    runs, a trained model handed back) it stays on, as the adapters' matmuls then need fp32 inputs. DoRA keeps it
    always: its forward computes with the input's dtype beyond the adapter's matmuls. (LoHa casts nothing.)"""
    for _, layer in adapted_layers(module):
        layer.cast_input_dtype_enabled = cast or bool(getattr(layer, "use_dora", {}).get(ADAPTER))


def limit_norms(module: torch.nn.Module, max_norm: float) -> None:
    """kohya's --scale_weight_norms (LyCORIS's apply_max_norm for LoHa and LoKr): each layer whose update has a
    Frobenius norm above `max_norm` gets its two factors scaled by the same factor, which brings it back to
    `max_norm`. For LoRA the norm comes from the rank-sized Gram matrices (|B A|^2 = sum((B^T B) * (A A^T))), for
    LoHa and LoKr from the update itself, a layer at a time; nothing is read back from the GPU."""
    with torch.no_grad():
        for _, layer in adapted_layers(module):
            factors, norm = _norm_factors(layer)
            factor = (max_norm / norm.clamp(min=max_norm)).sqrt()
            for weight in factors:
                weight.mul_(factor)


def _norm_factors(layer) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The two weights the update is linear in, one each side of its product, and the update's norm."""
    if hasattr(layer, "lora_A"):
        down, up = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        a, b = down.flatten(1), up.flatten(1)  # (rank, in x kernel area), (out, rank)
        return [down, up], ((b.T @ b) * (a @ a.T)).sum().clamp(min=0).sqrt() * abs(layer.scaling[ADAPTER])
    norm = layer.get_delta_weight(ADAPTER).float().norm()  # the update itself (scaling included), a layer at a time
    if hasattr(layer, "lokr_w1"):  # w1 (x) w2, each whole or a low-rank pair
        return [(layer.lokr_w1 if ADAPTER in layer.lokr_w1 else layer.lokr_w1_a)[ADAPTER],
                (layer.lokr_w2 if ADAPTER in layer.lokr_w2 else layer.lokr_w2_a)[ADAPTER]], norm
    return [layer.hada_w1_a[ADAPTER], layer.hada_w2_a[ADAPTER]], norm  # (w1_a w1_b) * (w2_a w2_b)


def adapted_modules(model: LoadedModel) -> list[tuple[str, torch.nn.Module]]:
    """(component name, module) for each part that carries an adapter."""
    parts = [("unet", model.unet)]
    parts += [(spec.component, enc) for spec, enc in zip(model.family.text_encoders, model.text_encoders)
              if getattr(enc, "peft_config", None)]
    return parts


@contextmanager
def adapters_off(*modules: torch.nn.Module):
    """The modules as they were before their adapters: each peft layer passes its base layer's output alone. peft's
    switch also takes the adapters' gradients away and, switched back, turns them all on: each keeps what it had
    (adapters frozen by --text-encoder-until stay frozen)."""
    layers = [layer for module in modules for _, layer in adapted_layers(module)]
    wanted = [(param, param.requires_grad) for module in modules for param in module.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for param, requires_grad in wanted:
            param.requires_grad_(requires_grad)


def adapter_rank_alpha(layer: torch.nn.Module) -> tuple[int, float]:
    """The (rank, alpha) a peft layer's adapter was made with (LoRA/DoRA name alpha `lora_alpha`, LoHa/LoKr
    `alpha`)."""
    alphas = layer.lora_alpha if hasattr(layer, "lora_alpha") else layer.alpha
    return int(layer.r[ADAPTER]), float(alphas[ADAPTER])


def adapted_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(module path, peft layer) for every layer of `module` that carries lowvram's adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, layer) for name, layer in module.named_modules()
            if isinstance(layer, BaseTunerLayer) and ADAPTER in getattr(layer, "r", {})]


def peft_state_dicts(model: LoadedModel) -> dict[str, dict[str, torch.Tensor]]:
    """The adapters' weights per component, in peft naming (`<module>.lora_A.weight`, `<module>.hada_w1_a`)."""
    from peft.utils import get_peft_model_state_dict

    return {name: get_peft_model_state_dict(module) for name, module in adapted_modules(model)}


def fuse_adapters(module: torch.nn.Module, strength: float = 1.0) -> int:
    """Merge lowvram's adapter into `module`'s weights (peft's merge: LoRA, DoRA, LoHa, LoKr alike) and take the
    peft layers out, leaving the plain model, changed, to which another file's adapter can be added. At another
    `strength` each weight moves that share of the way to the merged one: a LoRA's, LoHa's or LoKr's update scaled,
    and a DoRA's whole change scaled, as ComfyUI and AUTOMATIC1111 weigh one. Returns how many layers changed."""
    layers = adapted_layers(module)
    for name, layer in layers:
        base = layer.get_base_layer()
        params = [param for param in (base.weight, getattr(base, "bias", None)) if param is not None]
        before = [param.detach().float().clone() for param in params] if strength != 1 else []
        layer.merge(adapter_names=[ADAPTER])
        for param, old in zip(params, before):
            param.data.copy_(old.lerp(param.detach().float(), strength))
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent), child, layer.get_base_layer())
    # the model's record of the adapter (diffusers' and transformers' add_adapter refuse a name it holds)
    if hasattr(module, "peft_config"):
        del module.peft_config
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = False
    return len(layers)
