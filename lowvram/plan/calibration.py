"""What committed GPU measurements say, as the planner reads it: which strategies have been seen training at
full size on CUDA, the CUDA context, and measured step-time ratios.

`calibration.json` beside this file is derived from benchmarks/ by tools/calibrate_planner.py (a test keeps the
two in step). A strategy no result shows training on a GPU is unverified: `--auto` never picks it, `plan` marks
it, and an explicit `--unet-weights` runs it with a one-line warning. The tiny models plan as the full-size
family they shrink.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from lowvram.models.families import FAMILIES, ModelFamily
from lowvram.optim import OPTIMIZERS

CALIBRATION_FILE = Path(__file__).parent / "calibration.json"
PROOF_COMMAND = "python tools/bench_gpu_proof.py"  # in a source checkout: tools/ is not installed


@lru_cache(maxsize=1)
def calibration() -> dict:
    if not CALIBRATION_FILE.is_file():
        return {"verified": [], "step_time": {}, "cuda_context_bytes": None}
    return json.loads(CALIBRATION_FILE.read_text())


def full_size(family: ModelFamily) -> str:
    """The full-size family whose GPU results stand for `family` (tiny -> sd15, tiny-sdxl -> sdxl)."""
    return family.full_size or family.name


PARTIAL = "some"  # a verified entry's gradient_checkpointing when only some blocks were recomputed


def is_verified(family: ModelFamily, unet_weights: str, checkpointing: bool | int, optimizer: str,
                mixed_precision: str) -> bool:
    """Whether a GPU result shows this strategy training; `checkpointing` True (every block), False, or a count of
    blocks. Some blocks recomputed is seen when a result shows it, or shows both all and none: each block then
    runs one of two ways seen working. An optimizer named by its class is the user's own code: the strategy counts
    as seen where it is with AdamW."""
    optimizer = optimizer if optimizer in OPTIMIZERS else "adamw"
    seen = {v["gradient_checkpointing"] for v in calibration()["verified"]
            if (v["family"], v["unet_weights"], v["optimizer"], v.get("mixed_precision", "bf16"))
            == (full_size(family), unet_weights, optimizer, mixed_precision)}
    if isinstance(checkpointing, bool):
        return checkpointing in seen
    return PARTIAL in seen or {True, False} <= seen


def seen_in_bf16(family: ModelFamily, unet_weights: str, checkpointing: bool | int, optimizer: str) -> bool:
    """For a card without bf16 (a T4, Turing), which trains in fp16, or a GTX 16xx, in fp32: whether the same
    strategy was seen training in bf16 (16- or 32-bit storage standing for bf16's). Until such a result exists,
    `--auto` picks among these, with the unverified warning, rather than refusing the card it was made for."""
    return is_verified(family, "bf16" if unet_weights in ("fp16", "fp32") else unet_weights, checkpointing,
                       optimizer, "bf16")


def unverified_warning(family: ModelFamily, unet_weights: str, checkpointing: bool | int, optimizer: str,
                       mixed_precision: str) -> str | None:
    """One line for a run about to train a strategy no GPU result shows working; None when one does."""
    if is_verified(family, unet_weights, checkpointing, optimizer, mixed_precision):
        return None
    how = (" with checkpointing" if checkpointing is True else "" if checkpointing is False
           else f" with {checkpointing} checkpointed blocks")
    return (f"--unet-weights {unet_weights}{how}, {optimizer}, "
            f"{mixed_precision}: not yet seen training {FAMILIES[full_size(family)].title} on a GPU (no result "
            f"committed to lowvram; a source checkout's {PROOF_COMMAND} measures it); it may fail in a CUDA kernel")


def graphs_measured(family: ModelFamily) -> bool:
    """Whether a GPU result measured the family's compiled blocks replaying CUDA graphs (--cuda-graphs)."""
    return any("cuda_graphs" in entry for entry in calibration()["step_time"].get(full_size(family), {}).values())


def step_time_ratios(family: ModelFamily, batch: int) -> dict:
    """Measured ratios for the family at the measured batch nearest `batch` ({} where none was measured)."""
    measured = calibration()["step_time"].get(full_size(family), {})
    if not measured:
        return {}
    nearest = min(measured, key=lambda b: (abs(int(b) - batch), int(b)))
    return measured[nearest]


def cuda_context_bytes() -> int | None:
    return calibration().get("cuda_context_bytes")
