"""Precompute what `lowvram plan` needs into lowvram/plan/plan_data.json (shipped with the package).

Per family: the frozen U-Net's exact bytes in every storage format and compute dtype, parameter counts of
every part, LoRA parameters per rank, and traced peak memory of training steps, latent caching (VAE
encode) and sampling, all measured on the CPU with fake tensors (see tools/plan_trace.py). No GPU, no
weights, no network. Takes a few minutes on 2 cores:

    python tools/build_plan_data.py                 # the full grid
    python tools/build_plan_data.py --quick         # the tiny families and sd15 512 / sdxl 1024 only
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import plan_trace as trace

from lowvram.adapters.networks import add_adapter, spatial_convolutions
from lowvram.config import DEFAULT_LORA_LAYERS
from lowvram.formats import CAST_FORMATS, TRACEABLE_FORMATS, WEIGHT_FORMATS
from lowvram.models.families import FAMILIES, LORA_LAYERS

OUT = ROOT / "lowvram" / "plan" / "plan_data.json"
# family -> training resolutions; the first is also where batch 2 and fp8 storage are traced for full-size ones
GRID = {"tiny": [64, 32, 128], "tiny-sdxl": [64, 32, 128], "sd15": [512, 768, 1024], "sdxl": [1024, 768, 1280]}
QUICK = {"tiny": [64], "tiny-sdxl": [64], "sd15": [512], "sdxl": [1024]}
COMPUTE = {"compute16": torch.float16, "compute32": torch.float32}
BYTE_KEYS = ("activation_bytes", "peak_bytes", "baseline_bytes", "weights_bytes")
NOTES = """\
Measured by tracing on the CPU with fake tensors (tools/plan_trace.py): no GPU, no weights.
unet_weight_bytes: exact storage_bytes(convert_frozen(unet, format, compute dtype)) (fp16/fp32 compute;
bf16 compute has the fp16 sizes), from one real converted layer per distinct layer kind.
training: one LoRA step (rank 16, AdamW, dropout 0, SDPA attention) from cached latents and text embeddings,
batch 1. "training" has one entry per (resolution, checkpointing, unet_weights): the trace dtype at every
resolution, fp8 and W8A8 storage at the native one; "training_variants" holds batch 2 (sd15 512) for comparison. Full-size families: frozen
U-Net in bf16 (fp16 has identical sizes) under autocast with CUDA's fp32 ops (group_norm, layer_norm, ...);
tiny families: fp32, no autocast, as on a CPU.
baseline_bytes = frozen weights + LoRA params + AdamW state (resident between steps); peak_bytes = most live
during a step (inputs, forward, backward, optimizer step); activation_bytes = peak - baseline. Counts are live
tensor bytes, i.e. torch.cuda.max_memory_allocated: the CUDA context (~0.3-0.5 GiB) and caching-allocator
fragmentation (reserved > allocated) are not included. "unet_weights" says how the frozen U-Net was stored
in the trace. fp8 storage upcasts each layer per call and autograd keeps that 16-bit copy for backward, so
without checkpointing fp8 activations contain a 16-bit copy of most weights (fp8 then needs MORE memory
than bf16); with checkpointing only the recomputed block's copies live at once. bnb/quanto formats can't be
traced (their tensors can't wrap fake ones). A real CPU step of the tiny U-Net (fp32 compute) counted by the
same counter raised activations over fp32 storage by: fp8 +13 %, quanto-int8/fp8 +9 % (dequantized conv
weights kept for backward), bnb-int8 +11 %, bnb-nf4 0 %; CUDA kernels of bnb/quanto may differ. Besides, a
dequantizing backend needs a transient of about one layer (largest_layer_params in the compute dtype).
LoRA rank changes only LoRA params/state (lora_params_per_rank) and a negligible part of activations.
Scaling: LoRA-step activations are linear in batch (see batch_scaling) and close to linear in pixel count
(see resolution_scaling: activation bytes per pixel at each traced resolution); attention is SDPA, whose
memory is linear in tokens, so interpolating per pixel between grid points is sound and extrapolating
slightly beyond is a mild overestimate or underestimate as resolution_scaling shows.
vae_encode: latent caching, no_grad, transient bytes beyond the VAE weights (pixels, activations, latents) in
the trace dtype; vae_encode_variants: fp32 (what training uses for SDXL's VAE under fp16 mixed precision,
force_upcast; exactly 2x) and vae.enable_tiling() (bounded by one tile above the VAE's sample_size).
sampling: U-Net forward at batch 2 (classifier-free guidance) under autocast, then VAE decode of one latent in
the VAE dtype (bf16 here; 2x for fp32); the phase needs U-Net weights + max(unet_activation_bytes, VAE weights
+ vae_decode_activation_bytes). activation_bytes = the larger transient.
largest_layer_params: most parameters directly held by one U-Net module (weight + bias).
checkpoint_units: diffusers' checkpointing switches (each block's resnets, each Transformer2DModel's blocks) at
the native resolution, batch 1, no checkpointing: saved_bytes = storages autograd keeps for backward that the
unit's recomputed parts create (inputs and weights excluded), forward_flops = what recomputing them costs
(torch's FlopCounterMode). Ordered most bytes per FLOP first: selective checkpointing takes a prefix.
"""


def log(message: str) -> None:
    print(message, flush=True)


def param_counts(family) -> dict[str, int]:
    parts = ["unet", "vae", *[spec.component for spec in family.text_encoders]]
    return {part: sum(p.numel() for p in trace.meta_component(family, part).parameters()) for part in parts}


def parts_of(family) -> list[str]:
    return ["unet", *[spec.component for spec in family.text_encoders]]


def lora_per_rank(family) -> dict[str, dict[str, int]]:
    """Per --lora-layers choice and part, LoRA parameters at rank 1 (exactly linear in rank: rank * (in + out)
    per adapted layer, times kernel area for convolutions' down matrices)."""
    return {layers: {part: sum(p.numel() for p in add_adapter(trace.meta_component(family, part),
                                                              family.lora_targets(part, layers), 1, 1, 0.0))
                     for part in parts_of(family)}
            for layers in LORA_LAYERS}


def conv_per_rank(family) -> dict[str, dict[str, int]]:
    """The part of `lora_per_rank` that is in 3x3 convolutions (what --conv-rank changes), per --lora-layers
    choice and part."""
    out: dict[str, dict[str, int]] = {}
    for layers in LORA_LAYERS:
        out[layers] = {}
        for part in parts_of(family):
            module = trace.meta_component(family, part)
            targets = spatial_convolutions(module, family.lora_targets(part, layers))
            out[layers][part] = sum(p.numel() for p in add_adapter(module, tuple(targets), 1, 1, 0.0)) if targets else 0
    return out


def adapted_layers(family) -> dict[str, dict[str, dict[str, int]]]:
    """Per --lora-layers choice and part, what the adapter types beyond LoRA cost: the adapted layers' weight
    parameters (LoHa and LoKr build a full-size delta per layer, kept for backward), their output features
    (DoRA's magnitudes), and the most weight parameters adapted inside one checkpointed unit (a transformer
    block, a ResNet block, a CLIP layer: what checkpointing keeps alive at once)."""
    return {layers: {part: _adapted(family, part, family.lora_targets(part, layers)) for part in parts_of(family)}
            for layers in LORA_LAYERS}


def _adapted(family, part: str, targets: tuple[str, ...]) -> dict[str, int]:
    module = trace.meta_component(family, part)
    weights, outputs, blocks = 0, 0, {}
    for name, layer in module.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) and hasattr(layer, "weight"):
            weights += layer.weight.numel()
            outputs += layer.weight.shape[0]
            # checkpointing recomputes one transformer block, ResNet block or CLIP layer at a time
            block = re.sub(r"(transformer_blocks|resnets|layers)\.(\d+)\..*", r"\1.\2", name)
            blocks[block] = blocks.get(block, 0) + layer.weight.numel()
    return {"weight_params": weights, "output_features": outputs,
            "largest_block_weight_params": max(blocks.values(), default=0)}


def largest_layer(family) -> int:
    unet = trace.meta_component(family, "unet")
    return max(sum(p.numel() for p in module.parameters(recurse=False)) for module in unet.modules())


def training_entry(family_name: str, resolution: int, **kwargs) -> dict:
    result = trace.trace_training_step(family_name, resolution, **kwargs)
    log(f"  training {family_name} {resolution}px batch {result['batch']} ckpt {result['checkpointing']} "
        f"{result['unet_weights']} {result['layers']}: peak {result['peak_bytes'] / 2**30:.3f} GiB, activations "
        f"{result['activation_bytes'] / 2**30:.3f} GiB ({result['seconds']:.1f} s)")
    keep = ("resolution", "batch", "checkpointing", "unet_weights", "dtype", "rank", "layers", *BYTE_KEYS)
    return {key: result[key] for key in keep}


def build_family(name: str, resolutions: list[int], extras: bool) -> dict:
    family = FAMILIES[name]
    started = time.perf_counter()
    data: dict = {"unet_weight_bytes": {}}
    for column, dtype in COMPUTE.items():
        data["unet_weight_bytes"][column] = {fmt: trace.unet_weight_bytes(name, fmt, dtype) for fmt in WEIGHT_FORMATS}
    log(f"{name}: weight bytes for {len(WEIGHT_FORMATS)} formats x 2 compute dtypes "
        f"({time.perf_counter() - started:.1f} s)")
    data["part_param_counts"] = param_counts(family)
    data["lora_params_per_rank"] = lora_per_rank(family)
    data["conv_params_per_rank"] = conv_per_rank(family)
    data["largest_layer_params"] = largest_layer(family)
    data["adapted_layers"] = adapted_layers(family)
    # "training" holds one batch-1 entry per (resolution, checkpointing, unet_weights) and "vae_encode" one per
    # resolution: the planner interpolates over them; other settings go to the *_variants lists
    data["training"] = [training_entry(name, r, checkpointing=c) for r in sorted(resolutions) for c in (False, True)]
    first = resolutions[0]
    if extras and not family.is_random_init:  # fp8 keeps 16-bit upcast copies for backward, W8A8 quantizes
        # each input: their own entries
        data["training"] += [training_entry(name, first, checkpointing=c, weights=fmt)
                             for fmt in TRACEABLE_FORMATS if fmt not in CAST_FORMATS for c in (False, True)]
    data["training"] += layer_set_entries(family)
    data["checkpoint_units"] = checkpoint_units(family)
    data["training_variants"] = []
    if extras and name == "sd15":
        data["training_variants"] += [training_entry(name, first, batch=2, checkpointing=c)
                                      for c in (False, True)]
    data["vae_encode"] = [trace.trace_vae_encode(name, r) for r in sorted(resolutions)]
    data["vae_encode_variants"] = [trace.trace_vae_encode(name, r, dtype=torch.float32) for r in sorted(resolutions)
                                   if trace.trace_dtype(family) != torch.float32]
    data["vae_encode_variants"] += [trace.trace_vae_encode(name, r, tiling=True) for r in sorted(resolutions)]
    data["sampling"] = [trace.trace_sampling(name, family.resolution)]
    data["batch_scaling"] = batch_scaling(data["training"] + data["training_variants"])
    data["resolution_scaling"] = resolution_scaling(data["training"])
    log(f"{name}: done in {time.perf_counter() - started:.1f} s")
    return data


def checkpoint_units(family) -> list[dict]:
    """The U-Net's checkpointing units at the native resolution, in the order selective checkpointing switches
    them on: the most activation bytes saved per recomputed FLOP first."""
    units = trace.trace_checkpoint_units(family.name, family.resolution)
    units.sort(key=lambda u: (-u["saved_bytes"] / max(u["forward_flops"], 1), u["name"]))
    log(f"  {family.name}: {len(units)} checkpointing units, {sum(u['saved_bytes'] for u in units) / 2**20:.0f} MiB "
        f"saved for backward, {sum(u['forward_flops'] for u in units) / 1e9:.0f} GFLOP to recompute")
    return units


def layer_set_entries(family) -> list[dict]:
    """The wider --lora-layers choices at the native resolution, with and without checkpointing: the planner
    adds their extra activations over the default set's (scaled with pixels and batch like the rest)."""
    return [training_entry(family.name, family.resolution, checkpointing=c, layers=layers)
            for layers in LORA_LAYERS if layers != DEFAULT_LORA_LAYERS for c in (False, True)]


def _plain(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["unet_weights"] == e["dtype"] and e.get("layers", DEFAULT_LORA_LAYERS)
            == DEFAULT_LORA_LAYERS]


def batch_scaling(entries: list[dict]) -> list[dict]:
    """activation(batch 2) / (2 * activation(batch 1)) where both were traced: 1.0 is exactly linear."""
    out = []
    for two in (e for e in _plain(entries) if e["batch"] == 2):
        one = next(e for e in _plain(entries) if e["batch"] == 1 and e["resolution"] == two["resolution"]
                   and e["checkpointing"] == two["checkpointing"])
        out.append({"resolution": two["resolution"], "checkpointing": two["checkpointing"],
                    "ratio": round(two["activation_bytes"] / (2 * one["activation_bytes"]), 4)})
    return out


def resolution_scaling(entries: list[dict]) -> list[dict]:
    """Activation bytes per pixel at each resolution (batch 1): constant means linear in pixel count."""
    return [{"resolution": e["resolution"], "checkpointing": e["checkpointing"],
             "activation_bytes_per_pixel": round(e["activation_bytes"] / e["resolution"] ** 2, 2)}
            for e in sorted(_plain(entries), key=lambda e: (e["checkpointing"], e["resolution"])) if e["batch"] == 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one resolution per family, no extras")
    parser.add_argument("--families", nargs="+", default=list(GRID), choices=list(GRID))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--update-adapted-layers", action="store_true",
                        help="only recompute the adapter counts (adapted_layers, lora_params_per_rank, "
                        "conv_params_per_rank) in the existing file (seconds, no tracing)")
    parser.add_argument("--update-checkpoint-units", action="store_true",
                        help="only recompute checkpoint_units in the existing file (a trace per family: seconds)")
    parser.add_argument("--update-layer-sets", action="store_true",
                        help="only recompute the --lora-layers data in the existing file (adapter counts, and "
                        "the wider sets' traces at the native resolutions: a minute or two)")
    args = parser.parse_args()
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # the dtype-cast warning on every meta build
    if args.update_checkpoint_units:
        record = json.loads(args.out.read_text())
        for name, data in record["families"].items():
            data["checkpoint_units"] = checkpoint_units(FAMILIES[name])
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        log(f"updated checkpoint_units in {args.out}")
        return
    if args.update_adapted_layers or args.update_layer_sets:
        record = json.loads(args.out.read_text())
        for name, data in record["families"].items():
            family = FAMILIES[name]
            data["adapted_layers"] = adapted_layers(family)
            data["lora_params_per_rank"] = lora_per_rank(family)
            data["conv_params_per_rank"] = conv_per_rank(family)
            if args.update_layer_sets:
                default = [e for e in data["training"] if e.get("layers", DEFAULT_LORA_LAYERS) == DEFAULT_LORA_LAYERS]
                for entry in default:
                    entry["layers"] = DEFAULT_LORA_LAYERS
                data["training"] = default + layer_set_entries(family)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        log(f"updated {'the --lora-layers data' if args.update_layer_sets else 'the adapter counts'} in {args.out}")
        return
    started = time.perf_counter()
    grid = QUICK if args.quick else GRID
    import diffusers
    import peft

    record = {"version": 1, "command": " ".join(["python", "tools/build_plan_data.py", *sys.argv[1:]]),
              "torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__,
              "notes": NOTES, "families": {}}
    for name in args.families:
        record["families"][name] = build_family(name, grid[name], extras=not args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    log(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
