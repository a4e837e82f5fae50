"""VRAM a captioning model needs (`lowvram caption`), from its files alone, without loading it: the weights at the
dtype they run in, an allowance per image in flight, and the CUDA context. It decides one thing: whether
captioning runs on the GPU or on the CPU. The allowance is not yet calibrated on a GPU, so it is generous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lowvram.errors import LowvramError, not_safetensors
from lowvram.hardware import DEFAULT_CONTEXT, Hardware, gib
from lowvram.plan.calibration import cuda_context_bytes

MIB = 1024**2
# activations of one image going through a ViT-L-sized encoder at 384-448 px and a short decode, no gradients
ACTIVATIONS_PER_IMAGE = 256 * MIB
HEADROOM = 0.9  # of the free VRAM: what other programs and the allocator's fragmentation may take meanwhile
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class CaptionerEstimate:
    context: int
    weights: int
    activations: int

    @property
    def total(self) -> int:
        return self.context + self.weights + self.activations

    def fits(self, hardware: Hardware) -> bool:
        free = hardware.free_vram or hardware.total_vram
        return hardware.device == "cuda" and self.total <= free * HEADROOM

    def describe(self) -> str:
        return (f"{gib(self.total)} GiB (weights {gib(self.weights)}, {gib(self.activations)} for "
                f"the images in flight, CUDA context {gib(self.context)})")


def weight_bytes(files: list[Path], runs_in_half: bool) -> int:
    """Bytes of the weights once loaded: safetensors tensors at 2 bytes each where the model runs in fp16 (their
    stored size otherwise); an ONNX graph at its file size (onnxruntime runs it as stored)."""
    total = 0
    for path in files:
        if path.suffix == ".safetensors":
            for dtype, count in _tensors(path):
                stored = DTYPE_BYTES.get(dtype, 4)
                total += count * (min(stored, 2) if runs_in_half and dtype.startswith(("F", "BF")) else stored)
        else:
            total += path.stat().st_size
    return total


def _tensors(path: Path) -> list[tuple[str, int]]:
    """(dtype, element count) of each tensor of a safetensors file, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return [(f.get_slice(k).get_dtype(), math.prod(f.get_slice(k).get_shape())) for k in f.keys()]  # noqa: SIM118
    except (OSError, SafetensorError) as exc:
        raise LowvramError("--caption-model: " + not_safetensors(path, exc, "download the model again")) from None


def estimate_captioner(files: list[Path], batch_size: int, runs_in_half: bool) -> CaptionerEstimate:
    return CaptionerEstimate(cuda_context_bytes() or DEFAULT_CONTEXT, weight_bytes(files, runs_in_half),
                             batch_size * ACTIVATIONS_PER_IMAGE)
