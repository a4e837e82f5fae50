"""The benchmark tools run end to end (on the CPU with the tiny model, where there is no VRAM to measure), so
a GPU session spends its time measuring, not debugging the scripts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


@pytest.mark.slow
def test_the_gpu_proof_runs_and_renders(tmp_path):
    out = tmp_path / "proof.json"
    subprocess.run([sys.executable, str(TOOLS / "bench_gpu_proof.py"), "--families", "tiny", "--device", "cpu",
                    "--steps", "1", "--warmup", "1", "--budgets", "0", "--strategies", "fp32,nockpt,adamw",
                    "--work", str(tmp_path / "work"), "--out", str(out)], check=True, capture_output=True, timeout=900)
    record = json.loads(out.read_text())
    section = record["families"]["tiny"]
    assert section["baseline"]["ok"] and [r["strategy"] for r in section["strategies"]] == ["fp32,nockpt,adamw"]
    assert section["auto"][0]["ok"] and section["auto"][0]["out_of_memory_events"] == 0
    assert section["summary"]["budgets"][0]["fastest"] == "fp32,nockpt,adamw"
    assert record["command"].startswith("python tools/bench_gpu_proof.py") and len(record["commit"]) == 40
    table = subprocess.run([sys.executable, str(TOOLS / "render_benchmarks.py"), str(out), "--markdown", "-"],
                           check=True, capture_output=True, text=True).stdout
    assert "| usual way (diffusers example defaults) |" in table and "| unlimited | 1 | fp32,nockpt,adamw |" in table


@pytest.mark.slow
def test_the_gpu_proof_stops_starting_runs_at_its_deadline_and_says_what_did_not_run(tmp_path):
    """A device call is short: past --deadline nothing new starts, and the JSON lists the rest in priority order
    (the usual way and the planner's choices first)."""
    out = tmp_path / "proof.json"
    subprocess.run([sys.executable, str(TOOLS / "bench_gpu_proof.py"), "--families", "tiny", "--device", "cpu",
                    "--budgets", "0", "--optimizers", "adamw8bit", "--deadline", "0.001", "--work",
                    str(tmp_path / "work"), "--out", str(out)], check=True, capture_output=True, timeout=600)
    record = json.loads(out.read_text())
    assert record["families"]["tiny"]["strategies"] == [] and not record["families"]["tiny"]["baseline"]
    assert record["not_run"][:3] == ["baseline tiny baseline", "strategy tiny bf16,nockpt,adamw", "auto tiny auto"]
    assert all(",adamw8bit" in item for item in record["not_run"][3:])
