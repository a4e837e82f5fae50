"""Derive the planner's GPU facts from the committed GPU results, into lowvram/plan/calibration.json.

    python tools/calibrate_planner.py            # rewrite lowvram/plan/calibration.json from benchmarks/
    python tools/calibrate_planner.py --check    # exit 1 if it differs from what benchmarks/ says (CI runs this)

Every GPU result under benchmarks/ (a JSON with an `environment.device` other than the CPU) counts:

- verified: each (family, storage format, checkpointing (all, none or "some" blocks), optimizer, mixed precision)
  that trained at full size on CUDA. `--auto` chooses only these; `plan` marks the rest unverified.
- cuda_context_bytes: the largest CUDA context measured (driver, context and libraries before our first tensor).
- step_time: measured step-time ratios per full-size family and batch: gradient checkpointing against none (same
  format), each storage format against the native 16-bit one (same checkpointing), and `--compile` against the
  same strategy uncompiled, with its warm-up ("compile_seconds": the compiled run's first step less the eager
  one's), `--cuda-graphs` against the same strategy compiled without graphs ("cuda_graphs"), and the model's own
  prediction ("own_prediction": its extra forward pass) against the same strategy
  without it (selective checkpointing runs check the planner's picks, not these ratios). A ratio
  no result measured
  stays the estimator's prior. Pairs whose optimizers differ are compared as measured: an 8-bit optimizer's step
  on a few million LoRA parameters is within the noise of a U-Net step.

The file is derived, never edited: a test checks that it is what this tool makes of benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
OUT = ROOT / "lowvram" / "plan" / "calibration.json"
NATIVE = ("bf16", "fp16")


def gpu_results(root: Path = BENCHMARKS) -> list[tuple[str, dict]]:
    """(path relative to the repository, record) of every committed GPU result."""
    found = []
    for path in sorted(root.rglob("*.json")):
        record = json.loads(path.read_text())
        device = record.get("environment", {}).get("device")
        if isinstance(record, dict) and "families" in record and device and device != "cpu":
            found.append((path.relative_to(root.parent).as_posix(), record))
    return found


def measured_runs(results: list[tuple[str, dict]]) -> list[dict]:
    """Every strategy run that trained (ok) at full size, with where it was measured."""
    runs = []
    for source, record in results:
        for family, section in record["families"].items():
            for run in section.get("strategies", []):
                if run.get("ok") and not run.get("offload_activations"):
                    runs.append({**run, "family": family, "batch": run.get("batch", section.get("batch", 1)),
                                 "source": source, "device": record["environment"]["device"]})
    return runs


def strategy_key(run: dict) -> tuple:
    """What a run verifies; results from before mixed_precision was recorded ran bf16 (on a bf16 GPU)."""
    from lowvram.plan.calibration import PARTIAL

    checkpointing = PARTIAL if run.get("checkpoint_units") else run["gradient_checkpointing"]
    return run["family"], run["unet_weights"], checkpointing, run["optimizer"], run.get("mixed_precision", "bf16")


def verified(runs: list[dict]) -> list[dict]:
    return [{"family": f, "unet_weights": w, "gradient_checkpointing": c, "optimizer": o, "mixed_precision": m,
             "seen_on": sorted({r["device"] for r in runs if strategy_key(r) == (f, w, c, o, m)})}
            for f, w, c, o, m in sorted({strategy_key(r) for r in runs},
                                                  key=lambda key: [str(part) for part in key])]  # bools, PARTIAL


def step_time(runs: list[dict]) -> dict:
    """family -> batch -> {"gradient_checkpointing": ratio, "unet_weights": {format: ratio}}, from same-run pairs
    (one device, one family, one batch); the median over pairs where several exist."""
    ratios: dict = {}
    for run in runs:
        for other in runs:
            if (other is run or other["family"] != run["family"] or other["batch"] != run["batch"]
                    or other["device"] != run["device"] or other.get("mixed_precision") != run.get("mixed_precision")):
                continue
            entry = ratios.setdefault(run["family"], {}).setdefault(str(run["batch"]), {})
            ratio = run["seconds_per_step"] / other["seconds_per_step"]
            if run.get("own_prediction") or other.get("own_prediction"):  # they give the own prediction's cost only
                if run.get("own_prediction") and not other.get("own_prediction") and not other.get("compiled") \
                        and strategy_key(run) == strategy_key(other) and not run.get("checkpoint_units"):
                    entry.setdefault("own_prediction", []).append(ratio)
                continue
            if run.get("compiled") or other.get("compiled"):  # compiled runs give the compile ratios only
                same = (strategy_key(run) == strategy_key(other)
                        and run.get("checkpoint_units") == other.get("checkpoint_units"))
                if same and run.get("cuda_graphs") and other.get("compiled") and not other.get("cuda_graphs"):
                    entry.setdefault("cuda_graphs", []).append(ratio)  # against the same blocks without graphs
                elif same and run.get("compiled") and not run.get("cuda_graphs") and not other.get("compiled"):
                    entry.setdefault("compile", []).append(ratio)
                    if "first_step_seconds" in run and "first_step_seconds" in other:
                        entry.setdefault("compile_seconds", []).append(
                            max(0.0, run["first_step_seconds"] - other["first_step_seconds"]))
                continue
            same_format = run["unet_weights"] == other["unet_weights"]
            every_unit = not run.get("checkpoint_units")  # selective runs check the planner's pick, not this ratio
            if same_format and run["gradient_checkpointing"] and every_unit and not other["gradient_checkpointing"]:
                entry.setdefault("gradient_checkpointing", []).append(ratio)
            elif (run["gradient_checkpointing"] == other["gradient_checkpointing"] and other["unet_weights"] in NATIVE
                  and run.get("checkpoint_units") == other.get("checkpoint_units")
                  and run["unet_weights"] not in NATIVE):
                entry.setdefault("unet_weights", {}).setdefault(run["unet_weights"], []).append(ratio)
    for family in ratios.values():
        for entry in family.values():
            for ratio in ("gradient_checkpointing", "compile", "compile_seconds", "cuda_graphs", "own_prediction"):
                if ratio in entry:
                    entry[ratio] = round(statistics.median(entry[ratio]), 3)
            for fmt, values in entry.get("unet_weights", {}).items():
                entry["unet_weights"][fmt] = round(statistics.median(values), 3)
    return ratios


def planned(run: dict, phase: str = "training") -> int:
    """What the planner says of a measured run's phase (bytes, the CUDA context included), for the same model,
    resolution, batch, rank, strategy and precision on the card that measured it."""
    from lowvram.hardware import hardware_for
    from lowvram.models import FAMILIES
    from lowvram.plan.estimate import MemoryStrategy, Workload, estimate
    from lowvram.resolve import NATIVE_FORMAT

    mixed_precision = run.get("mixed_precision", "bf16")
    work = Workload(FAMILIES[run["family"]], run["resolution"], run.get("batch", 1), run.get("rank", 16),
                    lora_layers=run.get("lora_layers", "attn"), offload_activations=run.get("offload_activations", False),
                    compile=run.get("compiled", False), cuda_graphs=run.get("cuda_graphs", False),
                    sampling=phase == "sampling", mixed_precision=mixed_precision,
                    native_format=NATIVE_FORMAT[mixed_precision], compute_bytes=4 if mixed_precision == "no" else 2,
                    vae_fp32=run.get("vae_fp32", False))
    strategy = MemoryStrategy(run["unet_weights"], run["gradient_checkpointing"], run["optimizer"],
                              run.get("checkpoint_units"))
    return estimate(work, strategy, hardware_for(None, "141GB", "128GB")).peak_vram(phase)


def calibration(root: Path = BENCHMARKS) -> dict:
    results = gpu_results(root)
    runs = measured_runs(results)
    contexts = [r["context_bytes"] for r in runs if r.get("context_bytes")]
    return {
        "about": "derived by tools/calibrate_planner.py from the GPU results under benchmarks/; do not edit",
        "sources": [source for source, _ in results],
        "cuda_context_bytes": max(contexts) if contexts else None,
        "verified": verified(runs),
        "step_time": step_time(runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is out of date")
    args = parser.parse_args()
    text = json.dumps(calibration(), indent=2) + "\n"
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python tools/calibrate_planner.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} from {len(json.loads(text)['sources'])} GPU results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
