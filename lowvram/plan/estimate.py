"""The estimator: peak VRAM and host RAM of every phase of a run, per component, without a GPU or weights.

Exact parts are computed: frozen-weight bytes per storage format (precomputed from the real backends into
`plan_data.json`), LoRA parameters, their gradients and optimizer state. Activations come from one traced
training step per grid point (fake tensors, `tools/build_plan_data.py`), scaled linearly in pixels and batch
between grid points. What is not yet calibrated on a GPU (CUDA context, fragmentation, speed) says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path

from lowvram.config import DEFAULT_LORA_LAYERS
from lowvram.errors import LowvramError
from lowvram.formats import CAST_FORMATS, WEIGHT_FORMATS
from lowvram.hardware import DEFAULT_CONTEXT, GIB, Hardware
from lowvram.models.families import ModelFamily
from lowvram.optim import optimizer_state_bytes, spec_of
from lowvram.plan.calibration import cuda_context_bytes, is_verified, step_time_ratios

DATA_FILE = Path(__file__).parent / "plan_data.json"
PHASES = ("loading", "latent caching", "text caching", "training", "sampling", "saving")
FRAGMENTATION = 0.08  # share of transient memory the caching allocator loses to fragmentation (caching, sampling)
# Training, measured (benchmarks/gpu/2026-11-29-h200, H200): reserved exceeds allocated by 1.5-14 %, in proportion
# to the activation bytes a whole forward pass allocates and frees (checkpointing recomputes them block by block
# but allocates them all the same), not to what is kept: 4-5 % of that volume for SD1.5 at 512 and SDXL at 1024
# in bf16 and NF4, 7 % for SDXL in bf16, 14 % for SD1.5 in fp8 (its per-layer upcast copies; at 7 % its estimate
# is 4.2 % under, inside the calibration test's bounds). 7 % covers all but that one.
TRAINING_FRAGMENTATION = 0.07
# cuBLAS/cuBLASLt workspaces and kernel scratch, allocated through PyTorch's allocator in every GPU phase: the
# median shortfall of the estimated allocated peak below the measured one (the same six runs: 23-158 MiB).
KERNEL_WORKSPACE = 80 * 2**20
HOST_BASELINE = int(2.5 * GIB)  # python + torch + CUDA libraries resident in host RAM (uncalibrated)
# a checkpoint's pages mapped in while loading: resident (top shows them) but given back under memory pressure,
# so no part of what a run needs
PAGE_CACHE = "checkpoint file (reclaimable)"
STORED_DTYPE = {"bf16": "BF16", "fp16": "F16", "no": "F32"}  # safetensors' name of each compute dtype
VRAM_SAFETY = int(0.25 * GIB)  # kept free below the budget
# fp32 compute (as a GTX 16xx trains) against the full-size families' 16-bit traces, measured with tools/plan_trace
# at SD1.5 512 and SDXL 1024: training activations 1.47 and 1.54 times as large without checkpointing, 1.72 and 1.52
# with; the sampling U-Net's 1.93 and 1.57; a VAE's exactly 2 (tests/test_planner.py traces SD1.5's again)
FP32_TRAINING = {False: 1.55, True: 1.75}
FP32_SAMPLING = 1.95
TILE_PX = 512  # lowvram.models.conditioning.VAE_TILE_PX (not imported: plan must not import diffusers)
# Relative step time of checkpointing (and, in lowvram.formats, of each storage format): priors, replaced per
# family by the measured ratios in calibration.json wherever a GPU result measured them.
CHECKPOINT_COST = 1.3
OFFLOAD_COST = 1.5  # activations over PCIe and back (a prior: uncalibrated)
# the model's own prediction (--prior-prediction, --masked-prior-weight): one more forward pass without gradients,
# about a third of a forward and backward pass (a prior until calibration.json has a measured "own_prediction"
# ratio), counted on every step
OWN_PREDICTION_COST = 1 / 3
# --compile's compiled transformer blocks: "about 27 % faster than eager" is what compiled training is reported to
# gain elsewhere (a prior until calibration.json has a measured "compile" ratio); its warm-up is paid once per
# image size and batch
COMPILE_COST = 0.8
# --compile's warm-up: the first step at each input shape (bucket pixel count x batch size) compiles the blocks.
# A prior until a GPU result measures it (calibration.json "compile_seconds": a compiled run's first step less the
# eager one's); inductor compiles on worker processes, one per CPU core up to 32, each about 58 MiB resident
# (measured on the CPU backend, this repository's 2-core machine; uncalibrated for Triton's)
COMPILE_SECONDS = 30.0
COMPILE_WORKER_BYTES = 64 * 2**20
COMPILE_WORKERS_MAX = 32
# --cuda-graphs: CUDA Graph Trees keep the inputs of each replayed block that no earlier graph made (the text
# embeddings, each transformer's first block input) in buffers of their own, in a memory pool apart from the
# caching allocator's; a replay launches a block's kernels at once. Priors until a GPU result measures them
# (calibration.json "cuda_graphs": the step time against the same strategy compiled without graphs): a tenth more
# of the replayed blocks' activations, a tenth off their step. Recomputed blocks replay nothing (compiling.py)
CUDA_GRAPHS_MEMORY = 0.1
CUDA_GRAPHS_COST = 0.9
# DoRA also keeps each adapted layer's base output for its magnitude's gradient: measured 1.30x LoRA's saved
# activations on the tiny model (CPU, SDPA; uncalibrated on a GPU)
DORA_ACTIVATION_FACTOR = 1.3


@dataclass(frozen=True)
class MemoryStrategy:
    """What the planner chooses: how the frozen U-Net is stored, whether activations are recomputed, and
    which optimizer keeps the adapters' state."""

    unet_weights: str
    gradient_checkpointing: bool
    optimizer: str
    # with checkpointing: how many of the family's checkpointing units are recomputed, the ones that save the
    # most per recomputed FLOP first (plan_data.json "checkpoint_units"); None: all of them
    checkpoint_units: int | None = None

    @property
    def label(self) -> str:
        if not self.gradient_checkpointing:
            return f"{self.unet_weights} {self.optimizer}"
        units = self.checkpoint_units
        part = "" if units is None else f" {units} block{'s' if units > 1 else ''}"
        return f"{self.unet_weights} ckpt{part} {self.optimizer}"

    @property
    def selective(self) -> bool:
        return self.gradient_checkpointing and self.checkpoint_units is not None


@dataclass(frozen=True)
class Workload:
    """What is trained, as far as memory is concerned."""

    family: ModelFamily
    resolution: int
    batch: int = 1
    rank: int = 16
    per_block: bool = False  # --block-ranks: `rank` is the largest block's (for the report)
    conv_rank: int | None = None  # rank of the adapted 3x3 convolutions (--conv-rank; default: rank)
    network: str = "lora"  # lora, dora, loha, lokr
    lokr_factor: int = -1  # --lokr-factor: LoKr's first factor's side (-1: as square as possible)
    lora_layers: str = DEFAULT_LORA_LAYERS  # which layers carry adapters (--lora-layers)
    offload_activations: bool = False  # saved activations in pinned host RAM (--offload-activations)
    compile: bool = False  # compiled transformer blocks (--compile)
    cuda_graphs: bool = False  # their training passes replayed as CUDA graphs (--cuda-graphs, with --compile)
    train_text_encoder: bool = False  # the text encoders read each batch's captions on the GPU
    trained_text: tuple[str, ...] | None = None  # those of them with adapters (None: every one)
    cache_batch_size: int = 4
    sampling: bool = True
    compute_bytes: int = 2  # 2 for bf16/fp16 mixed precision, 4 for fp32
    native_format: str = "bf16"  # the storage format that matches the compute dtype (fp16 on pre-Ampere GPUs)
    mixed_precision: str = "bf16"  # bf16, fp16 or no: what the run computes in (--mixed-precision resolved)
    vae_fp32: bool = False  # SDXL's VAE under fp16: kept in fp32
    vae_tiling: bool = False  # --vae-tiling: the VAE encodes and decodes in tiles from the start
    sample_resolution: int | None = None  # square side of the largest sample image's pixels (default: resolution)
    ema: bool = False  # a moving average of the adapters (--ema): one more fp32 copy of them
    own_prediction: bool = False  # the model's own prediction per step: a forward pass without gradients first
    checkpoint: tuple[int, str] | None = None  # a local model's bytes on disk and the dtype its weights are stored in


@dataclass
class Estimate:
    strategy: MemoryStrategy
    cache_batch_size: int = 1  # images per VAE call in the caching phase, the largest that fits
    vae_tiling: bool = False  # VAE in 512 px tiles: asked for, or where one whole image's encode doesn't fit
    sample_tiles: bool = False  # a sample's decode in tiles: where whole it doesn't fit (the run falls back to them)
    vram: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> component -> bytes
    host: dict[str, dict[str, int]] = field(default_factory=dict)
    speed: float = 1.0  # predicted step time relative to 16-bit weights without checkpointing
    compile_seconds: float | None = None  # --compile: the warm-up per input shape (None: not compiling)
    compile_measured: bool = False  # that warm-up comes from a GPU result, not the prior
    verified: bool | None = None  # seen training at full size on a GPU (calibration.json); None: planned for a CPU

    def peak_vram(self, phase: str | None = None) -> int:
        return max(sum(v.values()) for k, v in self.vram.items() if phase in (None, k))

    def peak_host(self, phases: Collection[str] = PHASES) -> int:
        """The most host RAM a phase of `phases` needs (the reclaimable page cache of the checkpoint left out)."""
        return max(sum(v for k, v in self.host[name].items() if k != PAGE_CACHE) for name in self.host
                   if name in phases)

    def peak_resident_host(self) -> int:
        """The most a phase holds resident, as top shows it: what it needs and the checkpoint's mapped pages."""
        return max(sum(phase.values()) for phase in self.host.values())

    @property
    def limiting_phase(self) -> str:
        return max(self.vram, key=lambda phase: sum(self.vram[phase].values()))

    def fits(self, hardware: Hardware) -> bool:
        return (self.peak_vram() <= hardware.free_vram - VRAM_SAFETY
                and (not hardware.host_ram or self.peak_host() <= hardware.host_ram))


def adapter_params(data: dict, work: Workload, parts: list[str]) -> int:
    """Trainable parameters of the adapters on `parts`: exact for LoRA (rank x (in + out) per layer), DoRA
    (plus one magnitude per output feature) and LoHa (two LoRA-sized pairs); LoKr's Kronecker factors are
    smaller than LoRA's at the same rank, so LoRA's count bounds them. The 3x3 convolutions take `conv_rank`."""
    per_rank, conv_per_rank = data["lora_params_per_rank"][work.lora_layers], data["conv_params_per_rank"]
    conv_rank = work.conv_rank if work.conv_rank is not None else work.rank
    lora = sum(per_rank[p] * work.rank + conv_per_rank[work.lora_layers][p] * (conv_rank - work.rank) for p in parts)
    if work.network == "dora":
        return lora + sum(data["adapted_layers"][work.lora_layers][p]["output_features"] for p in parts)
    if work.network == "lokr":  # past the factors' sides the second factor is whole: the weight / side^2 or less,
        # and the first (side x side, under a layer's width) a layer's output features at most
        layers = data["adapted_layers"][work.lora_layers]
        side = lokr_side(work.lokr_factor, layer_widths(work.family))
        whole = sum(layers[p]["weight_params"] // side ** 2 + layers[p]["output_features"] for p in parts)
        return min(lora, whole)
    return 2 * lora if work.network == "loha" else lora


def lokr_side(factor: int, widths: tuple[int, ...]) -> int:
    """The least side of LoKr's first Kronecker factor on a model whose layers' widths are multiples of `widths`'
    (LyCORIS splits a width by its largest divisor up to --lokr-factor, or for -1 as squarely as it can, the
    smaller side first): the largest power of two up to the factor that divides them all, or the narrowest width
    divided by it where that is less; for -1, a power of two up to the narrowest one's root."""
    if factor < 1:
        return min(1 << ((int(w ** 0.5)).bit_length() - 1) for w in widths)
    side = min(1 << (factor.bit_length() - 1), *(w & -w for w in widths))  # w & -w: w's largest power-of-2 divisor
    return min(side, min(widths) // side)


@cache
def layer_widths(family: ModelFamily) -> tuple[int, ...]:
    """The widths a family's adapted layers are multiples of: its U-Net's block widths and the text width."""
    unet = family.unet_config
    return (*unet["block_out_channels"], unet["cross_attention_dim"])


def delta_weight_bytes(data: dict, work: Workload, parts: list[str], checkpointing: bool) -> int:
    """LoHa and LoKr build each layer's full-size delta weight (fp32) in forward, and autograd keeps it for
    backward: every adapted layer's, or with checkpointing only one recomputed block's at a time."""
    if work.network not in ("loha", "lokr"):
        return 0
    key = "largest_block_weight_params" if checkpointing else "weight_params"
    return 4 * sum(data["adapted_layers"][work.lora_layers][p][key] for p in parts)


@lru_cache(maxsize=1)
def plan_data() -> dict:
    if not DATA_FILE.is_file():
        raise LowvramError(f"{DATA_FILE} is missing; regenerate it with python tools/build_plan_data.py")
    return json.loads(DATA_FILE.read_text())


def family_data(family: ModelFamily) -> dict:
    families = plan_data()["families"]
    if family.name not in families:
        raise LowvramError(f"no planning data for {family.title}; regenerate lowvram/plan/plan_data.json")
    return families[family.name]


def scaled(entries: list[dict], resolution: int, batch: int, key: str = "activation_bytes", **match) -> int:
    """Activation bytes at `resolution` and `batch`, from the traced grid: linear in pixel count between the
    two nearest grid resolutions (extrapolated from the nearest one outside), linear in batch."""
    points = sorted((e["resolution"], e[key]) for e in entries
                    if e.get("batch", 1) == 1 and all(e.get(k) == v for k, v in match.items()))
    if not points:
        raise LowvramError(f"no traced data for {match}; regenerate lowvram/plan/plan_data.json")
    pixels = resolution * resolution
    below = [p for p in points if p[0] <= resolution]
    above = [p for p in points if p[0] >= resolution]
    if below and above and below[-1][0] != above[0][0]:
        (r0, a0), (r1, a1) = below[-1], above[0]
        per_image = a0 + (a1 - a0) * (pixels - r0 * r0) / (r1 * r1 - r0 * r0)
    else:
        r0, a0 = (below[-1] if below else above[0])
        per_image = a0 * pixels / (r0 * r0)
    return int(per_image * batch)


def training_entries(entries: list[dict], strategy: MemoryStrategy, layers: str = DEFAULT_LORA_LAYERS) -> list[dict]:
    """The traced steps that stand for this strategy: its own storage format where it was traced (fp8 keeps
    16-bit copies for backward, so it has its own entries), else the 16-bit trace (bitsandbytes and quanto
    save their quantized weights, not dequantized copies); all with adapters on `layers`."""
    entries = [e for e in entries if e.get("layers", DEFAULT_LORA_LAYERS) == layers]
    same = [e for e in entries if e.get("unet_weights") == strategy.unet_weights
            and e["checkpointing"] == strategy.gradient_checkpointing]
    if same:
        return same
    return [e for e in entries if e.get("unet_weights", "bf16") in CAST_FORMATS]


def wider_layers_activations(entries: list[dict], work: Workload, checkpointing: bool) -> int:
    """What adapting more layers (--lora-layers attn-mlp/full) adds to the default set's activations: each
    adapted layer keeps its input for the adapter's gradient. Traced at the native resolution, scaled with
    pixels and batch like the rest."""
    if work.lora_layers == DEFAULT_LORA_LAYERS:
        return 0
    strategy = MemoryStrategy("bf16", checkpointing, "adamw")
    wider = training_entries(entries, strategy, work.lora_layers)
    traced_at = {e["resolution"] for e in wider}
    default = [e for e in training_entries(entries, strategy) if e["resolution"] in traced_at]
    return max(0, scaled(wider, work.resolution, work.batch, checkpointing=checkpointing)
               - scaled(default, work.resolution, work.batch, checkpointing=checkpointing))


def widened(work: Workload, entries: list[dict]) -> bool:
    """Whether the run computes in fp32 where `entries` were traced in 16 bits (the full-size families' traces)."""
    return work.compute_bytes == 4 and entries[0].get("dtype") != "fp32"


def vae_factor(work: Workload, entries: list[dict]) -> int:
    """A VAE's activations against its 16-bit trace: twice as large in fp32 (SDXL's under fp16, or an fp32 run)."""
    return 2 if (work.vae_fp32 or work.compute_bytes == 4) and entries[0].get("dtype") != "fp32" else 1


def caching_phase(work: Workload, data: dict, context: int, vae_bytes: int, hardware: Hardware
                  ) -> tuple[int, bool, dict[str, int]]:
    """The latent-caching settings for this budget: the largest VAE batch (up to the one asked for) that
    fits, else one image in 512 px tiles (tiles from the start with --vae-tiling). The VAE runs once per image, so
    this costs little time."""

    def phase(batch: int, tiled: bool) -> dict[str, int]:
        size = min(work.resolution, TILE_PX) if tiled else work.resolution
        activations = scaled(data["vae_encode"], size, batch) * vae_factor(work, data["vae_encode"])
        return {"context": context, "workspace": KERNEL_WORKSPACE if context else 0, "VAE": vae_bytes,
                "activations": activations, "fragment.": int(FRAGMENTATION * activations)}

    budget = hardware.free_vram - VRAM_SAFETY
    batch = work.cache_batch_size
    while batch >= 1:
        if sum(phase(batch, work.vae_tiling).values()) <= budget:
            return batch, work.vae_tiling, phase(batch, work.vae_tiling)
        batch //= 2
    return 1, True, phase(1, True)


def context_bytes(hardware: Hardware) -> int:
    """What the CUDA context takes on the card before the first tensor: the profile's, else the measured one."""
    return hardware.cuda_context or cuda_context_bytes() or DEFAULT_CONTEXT


def estimate(work: Workload, strategy: MemoryStrategy, hardware: Hardware) -> Estimate:
    """Peak VRAM and host RAM of every phase, per component."""
    data = family_data(work.family)
    compute_key = "compute16" if work.compute_bytes == 2 else "compute32"
    counts = data["part_param_counts"]
    text_parts = [spec.component for spec in work.family.text_encoders]
    text_bytes = sum(counts[p] for p in text_parts) * work.compute_bytes
    vae_bytes = counts["vae"] * (4 if work.vae_fp32 else work.compute_bytes)
    unet_bytes = data["unet_weight_bytes"][compute_key][strategy.unet_weights]
    trained_text = [part for part in text_parts if work.trained_text is None or part in work.trained_text]
    trained_parts = ["unet", *(trained_text if work.train_text_encoder else [])]
    lora_params = adapter_params(data, work, trained_parts)
    lora = lora_params * 4  # adapters train in fp32
    cuda = hardware.device == "cuda"
    context = context_bytes(hardware) if cuda else 0
    workspace = KERNEL_WORKSPACE if cuda else 0

    traced = training_entries(data["training"], strategy)
    if strategy.selective:
        checkpoint_unit_names(work.family, strategy.checkpoint_units)  # refuses a count the U-Net lacks
        everything = unet_activations(data, work, replace(strategy, checkpoint_units=None), trained_parts)
        nothing = unet_activations(data, work, replace(strategy, gradient_checkpointing=False), trained_parts)
        saved_share, _ = checkpointed_shares(data, strategy.checkpoint_units)
        activations = everything + int((nothing - everything) * (1 - saved_share))
    else:
        activations = unet_activations(data, work, strategy, trained_parts)
    offloaded = 0
    if work.offload_activations:
        # what stays on the GPU is the op at hand and the tensors backward is using: bounded (loosely) by what
        # checkpointing keeps; the rest waits in host RAM
        offloaded = activations
        checkpointed = training_entries(data["training"], replace(strategy, gradient_checkpointing=True))
        activations = min(activations, int(scaled(checkpointed, work.resolution, work.batch, checkpointing=True) * (
            FP32_TRAINING[True] if widened(work, checkpointed) else 1)))
    if work.train_text_encoder:  # 77 tokens: small next to the U-Net (uncalibrated)
        activations += int(0.1 * sum(counts[p] for p in trained_text) * work.compute_bytes * work.batch)
    # bitsandbytes/quanto dequantize one layer at a time (they can't be traced on fake tensors); fp8's upcast
    # copies are in its own traced activations
    untraced = traced[0].get("unet_weights") != strategy.unet_weights and strategy.unet_weights not in CAST_FORMATS
    dequant = data["largest_layer_params"] * 2 * 2 if untraced else 0
    # what a whole forward pass allocates, kept or not: the native format's activations without checkpointing
    forward_volume = scaled(training_entries(data["training"], MemoryStrategy(work.native_format, False, "adamw")),
                            work.resolution, work.batch, checkpointing=False) * (
        FP32_TRAINING[False] if widened(work, data["training"]) else 1)
    training = {
        "context": context,
        "workspace": workspace,
        "U-Net": unet_bytes,
        "text enc.": text_bytes if work.train_text_encoder else 0,
        "LoRA": lora,
        "gradients": lora,
        "optim. state": optimizer_state_bytes(strategy.optimizer, lora_params),
        **({"EMA": lora} if work.ema else {}),
        "activations": activations,
        "dequant": dequant,
        "fragment.": int(TRAINING_FRAGMENTATION * forward_volume) if cuda else 0,
    }
    if work.cuda_graphs and cuda:
        training["CUDA graphs"] = int(CUDA_GRAPHS_MEMORY * activations * replayed_share(data, strategy))
    result = Estimate(strategy)
    result.cache_batch_size, result.vae_tiling, latent_caching = caching_phase(work, data, context, vae_bytes,
                                                                              hardware)
    sample_side = work.sample_resolution or work.resolution
    # the U-Net's steps, then the VAE's decode: one at a time
    denoising = scaled(data["sampling"], sample_side, 1, key="unet_activation_bytes") * (
        FP32_SAMPLING if widened(work, data["sampling"]) else 1)
    decode_factor = vae_factor(work, data["sampling"])
    whole = max(denoising, scaled(data["sampling"], sample_side, 1, key="vae_decode_activation_bytes") * decode_factor)
    tiled = max(denoising, min(whole, scaled(data["sampling"], TILE_PX, 1, key="vae_decode_activation_bytes")
                               * decode_factor))  # the decode in tiles
    sampling_weights = {"context": context, "workspace": workspace, "U-Net": unet_bytes, "LoRA": lora,
                        "text enc.": text_bytes if work.train_text_encoder else 0, "VAE": vae_bytes}
    result.sample_tiles = work.sampling and (result.vae_tiling or sum(sampling_weights.values()) + whole > (
        hardware.free_vram - VRAM_SAFETY))
    result.vram = {
        "loading": {"context": 0},
        "latent caching": latent_caching,
        "text caching": {"context": context, "workspace": workspace, "text enc.": text_bytes,
                         "activations": int(0.05 * text_bytes)},
        "training": training,
        # prompts were encoded in the caching phase (trained text encoders are on the device already);
        # the VAE visits the device for the decode
        "sampling": sampling_weights | {"activations": tiled if result.sample_tiles else whole}
        if work.sampling else {"context": 0},
        "saving": {"context": context, "U-Net": unet_bytes, "LoRA": lora,
                   "optim. state": training["optim. state"]},
    }
    model_host = (counts["unet"] + sum(counts[p] for p in text_parts)) * work.compute_bytes + vae_bytes
    parked = vae_bytes + (0 if work.train_text_encoder else text_bytes)
    file_bytes, stored = work.checkpoint or (0, STORED_DTYPE[work.mixed_precision])
    converted = stored != STORED_DTYPE[work.mixed_precision]
    result.host = {
        # measured on the CPU (benchmarks/host-ram-*.json): loading maps the file and peaks at about the
        # weights' size (mostly reclaimable file pages); a file in another dtype is read whole beside the
        # converted weights; converting the U-Net to another format adds its copy
        "loading": {"process": HOST_BASELINE, "model": model_host,
                    "conversion": unet_bytes if strategy.unet_weights != work.native_format else 0,
                    PAGE_CACHE: file_bytes if converted else 0},
        # unconverted, the parts waiting on the host are the file's own pages, and the rest stays mapped
        "training": {"process": HOST_BASELINE, "offloaded activations": offloaded, "parked parts": parked,
                     "compile workers": compile_workers_bytes() if work.compile else 0,
                     PAGE_CACHE: 0 if converted else max(0, file_bytes - parked)},
        "saving": {"process": HOST_BASELINE, "LoRA copy": lora},
    }
    result.speed = relative_step_time(work, strategy, hardware)
    if work.compile:
        measured = step_time_ratios(work.family, work.batch).get("compile_seconds")
        result.compile_seconds, result.compile_measured = measured or COMPILE_SECONDS, measured is not None
    if cuda:
        checkpointing = strategy.checkpoint_units if strategy.selective else strategy.gradient_checkpointing
        result.verified = is_verified(work.family, strategy.unet_weights, checkpointing, strategy.optimizer,
                                      work.mixed_precision)
    return result


def compile_workers_bytes() -> int:
    """Host RAM of inductor's compile workers: one per CPU core of this machine (the one that plans is, as a
    rule, the one that trains), up to 32."""
    return min(COMPILE_WORKERS_MAX, os.cpu_count() or 1) * COMPILE_WORKER_BYTES


def has_capability(hardware: Hardware, needed: tuple[int, int]) -> bool:
    """Whether a CUDA card reaches a compute capability; an unknown card (a bare --vram budget) is assumed to."""
    if hardware.device != "cuda" or not hardware.compute_capability:
        return True
    major, _, minor = hardware.compute_capability.partition(".")
    return (int(major), int(minor or 0)) >= needed


def unet_activations(data: dict, work: Workload, strategy: MemoryStrategy, trained_parts: list[str]) -> int:
    """The U-Net's training activations with checkpointing all units or none, from the traces."""
    traced = training_entries(data["training"], strategy)
    activations = int(scaled(traced, work.resolution, work.batch, checkpointing=strategy.gradient_checkpointing)
                      * WEIGHT_FORMATS[strategy.unet_weights].untraced_activation_factor
                      * (DORA_ACTIVATION_FACTOR if work.network == "dora" else 1.0))
    activations += wider_layers_activations(data["training"], work, strategy.gradient_checkpointing)
    activations *= FP32_TRAINING[bool(strategy.gradient_checkpointing)] if widened(work, traced) else 1
    # (LoHa's and LoKr's delta weights are fp32 already)
    return int(activations) + delta_weight_bytes(data, work, trained_parts, strategy.gradient_checkpointing)


def checkpointed_shares(data: dict, count: int | None) -> tuple[float, float]:
    """(share of the saved-for-backward bytes, share of the recomputed FLOPs) of the first `count` checkpointing
    units (None: all). Selective checkpointing's activations lie between the all-units and no-units traces in
    proportion to the bytes its units save; measured against traces of the chosen sets (tests/test_selective_
    checkpointing.py), this is within 5 % of SD1.5's activations at every count."""
    units = data["checkpoint_units"]
    chosen = units if count is None else units[:count]
    saved = sum(u["saved_bytes"] for u in chosen) / max(sum(u["saved_bytes"] for u in units), 1)
    flops = sum(u["forward_flops"] for u in chosen) / max(sum(u["forward_flops"] for u in units), 1)
    return saved, flops


def replayed_share(data: dict, strategy: MemoryStrategy) -> float:
    """The share of the U-Net's work in blocks that --cuda-graphs replays: those no checkpointing recomputes
    (in proportion to the recomputed FLOPs where checkpointing is selective)."""
    if not strategy.gradient_checkpointing:
        return 1.0
    return 1 - checkpointed_shares(data, strategy.checkpoint_units)[1] if strategy.selective else 0.0


def checkpoint_unit_count(family: ModelFamily) -> int:
    return len(family_data(family)["checkpoint_units"])


def checkpoint_unit_names(family: ModelFamily, count: int | None) -> list[str] | None:
    """The U-Net modules whose checkpointing switch `count` selective units turn on (None: all of them)."""
    if count is None:
        return None
    units = family_data(family)["checkpoint_units"]
    if not 1 <= count <= len(units):
        raise LowvramError(f"--checkpoint-blocks {count}: {family.title}'s U-Net has {len(units)} blocks to "
                           f"recompute; pass 1 to {len(units)}, or --gradient-checkpointing for all of them")
    return [unit["name"] for unit in units[:count]]


def relative_step_time(work: Workload, strategy: MemoryStrategy, hardware: Hardware | None = None) -> float:
    """Step time relative to native 16-bit weights without checkpointing: measured ratios (calibration.json) for
    the family at the nearest measured batch, priors where nothing was measured. A W8A8 format on a card without
    its 8-bit matmul stores 8-bit weights only (dequantized per call): its weight-only prior."""
    measured = step_time_ratios(work.family, work.batch)
    native = strategy.unet_weights == work.native_format
    fmt = WEIGHT_FORMATS[strategy.unet_weights]
    weights = 1.0 if native else measured.get("unet_weights", {}).get(strategy.unet_weights, fmt.prior_step_time)
    if fmt.matmul_capability and hardware and not has_capability(hardware, fmt.matmul_capability):
        weights = fmt.weight_only_step_time
    checkpointing = 1.0
    if strategy.gradient_checkpointing:  # recomputing a share of the forward FLOPs costs that share of all of it
        _, recomputed = checkpointed_shares(family_data(work.family), strategy.checkpoint_units)
        checkpointing = 1 + (measured.get("gradient_checkpointing", CHECKPOINT_COST) - 1) * recomputed
    own = measured.get("own_prediction", 1 + OWN_PREDICTION_COST) - 1 if work.own_prediction else 0
    passes = checkpointing + own  # the U-Net's work per step
    graphs = 1.0
    if work.compile and work.cuda_graphs:
        replayed = replayed_share(family_data(work.family), strategy)
        graphs = 1 - (1 - measured.get("cuda_graphs", CUDA_GRAPHS_COST)) * replayed
    return (weights * passes * (OFFLOAD_COST if work.offload_activations else 1)
            * (measured.get("compile", COMPILE_COST) if work.compile else 1) * graphs
            * spec_of(strategy.optimizer).step_cost)
