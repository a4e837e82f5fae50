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
