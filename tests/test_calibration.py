"""The planner against every committed GPU measurement (benchmarks/): each estimate within 10 % of what was
measured and never more than 5 % under it, and calibration.json exactly what the GPU results say."""

import json
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


def test_an_unverified_strategy_gets_a_warning_line_and_a_verified_one_none():
    from lowvram.models import FAMILIES
    from lowvram.plan.calibration import unverified_warning

    sd15 = FAMILIES["sd15"]
    assert unverified_warning(sd15, "bf16", True, "adamw8bit", "bf16") is None
    line = unverified_warning(sd15, "quanto-int4", True, "adamw8bit", "bf16")
    assert line.startswith("--unet-weights quanto-int4 with checkpointing") and "\n" not in line
    assert "not yet seen training Stable Diffusion 1.5 on a GPU" in line
    # the tiny models stand for their full-size family; fp16 is another kernel path, not yet seen
    assert unverified_warning(FAMILIES["tiny"], "bf16", True, "adamw8bit", "bf16") is None
    assert unverified_warning(sd15, "fp16", True, "adamw8bit", "fp16") is not None


def test_some_blocks_recomputed_are_seen_once_all_and_none_are_or_a_result_shows_some(tmp_path, monkeypatch):
    from lowvram.models import FAMILIES
    from lowvram.plan import calibration as calibration_module
    from lowvram.plan.calibration import is_verified, unverified_warning

    sd15 = FAMILIES["sd15"]
    assert is_verified(sd15, "bf16", True, "adamw8bit", "bf16")  # every block: seen
    line = unverified_warning(sd15, "bf16", 5, "adamw8bit", "bf16")  # none was seen with adamw8bit, so not some
    assert line.startswith("--unet-weights bf16 with 5 checkpointed blocks, adamw8bit, bf16: not yet seen")
    entry = {"family": "sd15", "unet_weights": "bf16", "optimizer": "adamw8bit", "mixed_precision": "bf16"}
    for seen, expected in (([True, False], True), (["some"], True), ([True], False)):
        (tmp_path / "calibration.json").write_text(json.dumps(
            {"verified": [{**entry, "gradient_checkpointing": c} for c in seen], "step_time": {}}))
        monkeypatch.setattr(calibration_module, "CALIBRATION_FILE", tmp_path / "calibration.json")
        calibration_module.calibration.cache_clear()
        assert is_verified(sd15, "bf16", 5, "adamw8bit", "bf16") is expected, seen
    calibration_module.calibration.cache_clear()  # (the real file again, once monkeypatch restores its path)


def test_a_result_with_some_blocks_recomputed_beside_all_or_none_is_calibrated_not_a_crash():
    """The GPU proof sweeps the planner's picks (some blocks) beside every block or none, for one format: ordering
    those strategies once compared "some" with True and ended the calibration (the CPU rehearsal never got there,
    its results are not calibrated on)."""
    from lowvram.plan.calibration import PARTIAL

    run = {"family": "sd15", "unet_weights": "w8a8-int8", "optimizer": "adamw", "device": "NVIDIA H200"}
    runs = [{**run, "gradient_checkpointing": False}, {**run, "gradient_checkpointing": True, "checkpoint_units": 20},
            {**run, "gradient_checkpointing": True}]
    assert [v["gradient_checkpointing"] for v in calibrate_planner.verified(runs)] == [False, True, PARTIAL]


def test_plan_json_says_which_strategies_a_gpu_has_shown_training():
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-m", "lowvram", "plan", "--model", "sdxl", "--vram", "12GB", "--json"],
                          capture_output=True, text=True, check=True)
    plan = json.loads(done.stdout)
    assert plan["choice"]["verified_on_gpu"] is True
    flags = {(c["strategy"]["unet_weights"], c["strategy"]["gradient_checkpointing"], c["strategy"]["optimizer"]):
             c["verified_on_gpu"] for c in plan["candidates"]}
    assert flags[("bnb-nf4", True, "adamw8bit")] is True and flags[("quanto-int4", True, "adamw8bit")] is False
