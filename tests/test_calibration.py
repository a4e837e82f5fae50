"""The planner against every committed GPU measurement (benchmarks/): each estimate within 10 % of what was
measured and never more than 5 % under it, and calibration.json exactly what the GPU results say."""

import sys
from pathlib import Path

import pytest

from lowvram.hardware import GIB
from lowvram.plan.calibration import calibration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import calibrate_planner

MAX_OVER, MAX_UNDER = 0.10, 0.05
RESULTS = calibrate_planner.gpu_results()


def measured_phases() -> list[tuple[str, dict, str, int]]:
    """(what, run, phase, measured bytes: peak reserved plus the CUDA context) for every phase a result measured:
    the training step of each strategy run, and every phase of each `train --auto` run."""
    found = []
    for source, record in RESULTS:
        for family, section in record["families"].items():
            for run in section.get("strategies", []):
                if run.get("ok") and run.get("peak_reserved"):
                    found.append((f"{source} {family} {run['strategy']} batch {run.get('batch', 1)}",
                                  {**run, "family": family}, "training", run["peak_reserved"] + run["context_bytes"]))
            for run in section.get("auto", []):
                for phase, peak in run.get("phase_peaks", {}).items():
                    found.append((f"{source} {family} auto {run['budget_gb']:g} GiB", {**run, "family": family},
                                  phase, peak + run["context_bytes"]))
    return found


PHASES = measured_phases()


def test_there_are_gpu_results_to_calibrate_against():
    assert RESULTS and PHASES


@pytest.mark.parametrize(("what", "run", "phase", "measured"), PHASES, ids=[f"{p[0]} {p[2]}" for p in PHASES])
def test_each_estimate_is_within_10_percent_and_never_5_percent_under(what, run, phase, measured):
    estimate_bytes = calibrate_planner.planned(run, phase)
    error = (estimate_bytes - measured) / measured
    print(f"{what} {phase}: planned {estimate_bytes / GIB:.2f} GiB, measured {measured / GIB:.2f} GiB, {error:+.1%}")
    assert -MAX_UNDER <= error <= MAX_OVER, f"{what} {phase}: {error:+.1%}"


def test_calibration_json_is_what_the_gpu_results_say():
    assert calibration() == calibrate_planner.calibration(), "run python tools/calibrate_planner.py"


def test_only_strategies_a_result_shows_training_are_verified():
    runs = calibrate_planner.measured_runs(RESULTS)
    assert {(v["family"], v["unet_weights"], v["gradient_checkpointing"], v["optimizer"])
            for v in calibration()["verified"]} == {(r["family"], r["unet_weights"], r["gradient_checkpointing"],
                                                     r["optimizer"]) for r in runs}
    crashed = [r for _, rec in RESULTS for s in rec["families"].values() for r in s["strategies"] if not r.get("ok")]
    assert crashed and not any(v["unet_weights"] == "quanto-int4" for v in calibration()["verified"])
