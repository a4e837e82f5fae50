"""The frozen U-Net's storage formats (`--unet-weights`), declared once: the options, the converters in
`lowvram.quant`, the planner and the trace all read this table. Plain data, no torch: `plan` and option checks
import it without loading any backend."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightFormat:
    name: str
    backend: str  # "torch", "bitsandbytes", "optimum-quanto"
    description: str  # for --help
    prior_step_time: float  # step time against native 16-bit weights where no GPU result measured it
    # the planner weighs it (beside the native 16-bit format): no other format is both as small and as fast.
    # bnb-int8 (Linear only) is larger and slower than fp8; quanto's int8 and fp8 are fp8's size, slower by prior.
    planned: bool = False
    # activations against the 16-bit trace, for formats a fake-tensor trace cannot convert: measured against fp32
    # weights in a real CPU step of the tiny model (quanto keeps dequantized convolution weights for backward);
    # to be replaced by GPU measurements
    untraced_activation_factor: float = 1.0
    # W8A8: the CUDA compute capability its 8-bit matmul needs (lowvram.w8a8); older cards store the 8-bit
    # weights and multiply them dequantized, at the prior of weight-only storage
    matmul_capability: tuple[int, int] | None = None
    weight_only_step_time: float | None = None
    # the --network kinds peft cannot train on its layers: (network, why, a format of about its size that can)
    refused_networks: tuple[tuple[str, str, str], ...] = ()

    @property
    def cast(self) -> bool:
        """A plain float type: the weights are cast, or stored so and upcast per layer (no quantization)."""
        return self.name in ("fp32", "fp16", "bf16")


WEIGHT_FORMATS = {
    f.name: f
    for f in (
        WeightFormat("fp32", "torch", "full precision", 2.0),
        WeightFormat("fp16", "torch", "half precision", 1.0),
        WeightFormat("bf16", "torch", "bfloat16", 1.0),
        # (DoRA's initial magnitude adds the float8 weight to a float32 one, a promotion torch refuses)
        WeightFormat("fp8", "torch", "float8 storage upcast per layer, as kohya's fp8_base", 1.12, planned=True,
                     refused_networks=(("dora", "peft's DoRA cannot read float8 weights", "quanto-fp8"),)),
        WeightFormat("bnb-int8", "bitsandbytes", "bitsandbytes LLM.int8 Linear layers", 1.8,
                     untraced_activation_factor=1.11),
        # (peft's LoHa/LoKr reshape their delta to the base weight's shape, and a 4-bit weight is packed)
        WeightFormat("bnb-nf4", "bitsandbytes", "bitsandbytes NF4 Linear layers, double-quantized", 1.3,
                     planned=True, refused_networks=tuple(
                         (network, f"peft has no {name} layer for bitsandbytes 4-bit weights", "quanto-int4")
                         for network, name in (("loha", "LoHa"), ("lokr", "LoKr")))),
        WeightFormat("quanto-int8", "optimum-quanto", "optimum-quanto int8 Linear and Conv2d", 1.35,
                     untraced_activation_factor=1.09),
        WeightFormat("quanto-int4", "optimum-quanto", "optimum-quanto group-wise int4 Linear and Conv2d", 1.5,
                     planned=True, untraced_activation_factor=1.09),
        WeightFormat("quanto-fp8", "optimum-quanto", "optimum-quanto float8 Linear and Conv2d", 1.3,
                     untraced_activation_factor=1.09),
        # int8/fp8 weights *and* matmuls (inputs quantized per token) on Linear layers; convolutions keep the
        # compute dtype. Faster than 16 bits by prior only: OneTrainer reports about 2x for its W8A8 LoRA training
        # (DoRA's magnitude is the norm of the base weight, which peft reads as stored: 8-bit values without their
        # per-feature scales)
        WeightFormat("w8a8-int8", "torch", "int8 Linear weights and int8 matmuls", 0.85, planned=True,
                     matmul_capability=(7, 5), weight_only_step_time=1.12,
                     refused_networks=(("dora", "peft's DoRA cannot read W8A8's 8-bit weights", "quanto-int8"),)),
        WeightFormat("w8a8-fp8", "torch", "float8 Linear weights and float8 matmuls", 0.85,
                     planned=True, matmul_capability=(8, 9), weight_only_step_time=1.12,
                     refused_networks=(("dora", "peft's DoRA cannot read W8A8's 8-bit weights", "quanto-fp8"),)),
    )
}
PLANNED_FORMATS = tuple(name for name, f in WEIGHT_FORMATS.items() if f.planned)
CAST_FORMATS = tuple(name for name, f in WEIGHT_FORMATS.items() if f.cast)
# formats a fake-tensor trace can convert (bitsandbytes and quanto cannot wrap fake tensors)
TRACEABLE_FORMATS = tuple(name for name, f in WEIGHT_FORMATS.items() if f.backend == "torch")


def network_refusal(network: str, format_name: str) -> str | None:
    """The line `--network network` stops at on `--unet-weights format_name` (None: peft trains it there), said
    before the model loads; the planner leaves such formats out."""
    weights = WEIGHT_FORMATS.get(format_name)
    for refused, why, instead in weights.refused_networks if weights else ():
        if refused == network:
            return (f"--network {network}: {why} (--unet-weights {format_name}); use --unet-weights {instead}, or "
                    "another --network")
    return None
