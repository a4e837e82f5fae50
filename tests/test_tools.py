"""The benchmark tools run end to end (on the CPU with the tiny model, where there is no VRAM to measure), so
a GPU session spends its time measuring, not debugging the scripts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))
from bench_memory import UNKNOWN_COMMIT, commit

COMMIT = commit()  # what every result made from this tree must name (LOWVRAM_COMMIT where it is set)


def test_a_result_names_the_commit_that_ran_not_a_repository_it_was_copied_into(tmp_path):
    """A device machine runs a copy of the tree without its git metadata: the first GPU results named the commit
    of a repository the copy sat in. LOWVRAM_COMMIT names the commit copied; without it, the commit is unknown."""
    import os
    import shutil

    own = commit(from_environment=False)
    if (TOOLS.parent / ".git").exists():  # a git checkout (CI's clone): its HEAD
        head = subprocess.run(["git", "-C", str(TOOLS.parent), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert own == head and len(head) == 40
    else:  # a tarball of the repository
        assert own == UNKNOWN_COMMIT
    from render_benchmarks import short_commit

    assert short_commit("0123456789" * 4) == "0123456789" and short_commit(UNKNOWN_COMMIT) == UNKNOWN_COMMIT
    outer = tmp_path / "outer"
    (outer / "copy" / "tools").mkdir(parents=True)
    shutil.copy(TOOLS / "bench_memory.py", outer / "copy" / "tools")
    git = ["git", "-C", str(outer), "-c", "user.email=qa@example.com", "-c", "user.name=qa"]
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "another project"], check=True)
    env = {k: v for k, v in os.environ.items() if k != "LOWVRAM_COMMIT"}
    ask = [sys.executable, "-c", "import bench_memory; print(bench_memory.commit())"]
    said = subprocess.run(ask, cwd=outer / "copy" / "tools", env=env, capture_output=True, text=True, check=True)
    assert said.stdout.strip() == UNKNOWN_COMMIT
    said = subprocess.run(ask, cwd=outer / "copy" / "tools", env={**env, "LOWVRAM_COMMIT": "a1eed3d"},
                          capture_output=True, text=True, check=True)
    assert said.stdout.strip() == "a1eed3d"


@pytest.mark.slow
def test_the_gpu_proof_runs_end_to_end_and_renders(tmp_path):
    """The whole proof on the CPU with the tiny model: the usual way and every planner candidate in one sweep
    process, `train --auto` end to end, the summary, and the README tables from it."""
    out = tmp_path / "proof.json"
    subprocess.run([sys.executable, str(TOOLS / "bench_gpu_proof.py"), "--families", "tiny", "--device", "cpu",
                    "--budgets", "0", "--batches", "1", "--steps", "1", "--deadline", "900", "--work",
                    str(tmp_path / "work"), "--out", str(out)], check=True, capture_output=True, timeout=1200)
    record = json.loads(out.read_text())
    section = record["families"]["tiny"]
    assert [b["ok"] for b in section["baseline"]] == [True] and not record["not_run"]
    trained = {r["unet_weights"] for r in section["strategies"] if r["ok"]}
    assert {"fp32", "fp8", "bnb-nf4", "quanto-int4"} <= trained
    auto = section["auto"][0]
    assert auto["ok"] and auto["out_of_memory_events"] == 0 and auto["unet_weights"]
    assert record["command"].startswith("python tools/bench_gpu_proof.py") and record["commit"] == COMMIT
    table = subprocess.run([sys.executable, str(TOOLS / "render_benchmarks.py"), str(out), "--markdown", "-"],
                           check=True, capture_output=True, text=True).stdout
    assert "| tiny 64 | 1 | usual way (diffusers example defaults) |" in table and "| tiny 64 | 1 | fp8,ckpt,adamw8bit |" in table


def test_the_gpu_proof_starts_nothing_past_its_deadline_and_says_what_did_not_run(tmp_path):
    out = tmp_path / "proof.json"
    subprocess.run([sys.executable, str(TOOLS / "bench_gpu_proof.py"), "--families", "tiny", "--device", "cpu",
                    "--budgets", "0", "--deadline", "0", "--work", str(tmp_path / "work"), "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    record = json.loads(out.read_text())
    assert record["families"]["tiny"]["strategies"] == [] and record["families"]["tiny"]["auto"] == []
    assert record["not_run"] == ["sweep tiny", "auto tiny 0 GB"]


def test_the_first_model_swept_leaves_the_second_its_share():
    """SD1.5's sweep may not use the time SDXL's needs (on 2026-11-29's plan SDXL was left a 1 s deadline)."""
    sys.path.insert(0, str(TOOLS))
    from bench_gpu_proof import AUTO_RESERVE, sweep_share

    left = 400
    first = sweep_share(["sd15", "sdxl"], left)
    second = sweep_share(["sdxl"], left - first)  # SD1.5 used all of its share
    assert first + second == pytest.approx(left - AUTO_RESERVE) and second == pytest.approx(2 * first)


def test_a_strategy_past_its_limit_is_stopped_and_not_taken_for_its_own_error():
    """The sweep's per-strategy limit: a measurement catches its errors (Exception) as its result and goes on, so
    the limit's must pass through that, or the next batch sizes would run unlimited."""
    import time

    sys.path.insert(0, str(TOOLS))
    from bench_sweep import StrategyTimeout, time_limit

    started = time.monotonic()
    with pytest.raises(StrategyTimeout), time_limit(1):
        try:
            time.sleep(5)
        except Exception:  # noqa: BLE001, S110 - what bench_sweep.measure does with a backend's error
            pass
        time.sleep(5)
    assert time.monotonic() - started < 3
    with time_limit(0):  # no limit
        time.sleep(0.1)


def test_the_captioner_benchmark_rehearses_on_the_cpu(tmp_path):
    """The GPU check of the captioner's VRAM allowance runs its code path with a small model here."""
    out = tmp_path / "captioner.json"
    subprocess.run([sys.executable, str(TOOLS / "bench_captioner.py"), "--tiny", "--batches", "1,2", "--out", str(out)],
                   check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["commit"] == COMMIT and result["environment"]["device"] == "cpu"  # a result names its source
    rows = result["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    assert rows[1]["estimate_bytes"] - rows[0]["estimate_bytes"] == 256 * 1024**2  # the allowance per image
    assert all(r["weights_bytes"] > 0 for r in rows)


def test_the_step_overhead_benchmark_rehearses_on_the_cpu(tmp_path):
    """The benchmark behind the README's figures for peft's input casts and the compile workers, on the tiny
    model: without the casts a bf16 step keeps fewer activations, and the compile run had workers."""
    out = tmp_path / "overhead.json"
    subprocess.run([sys.executable, str(TOOLS / "bench_step_overhead.py"), "--tiny", "--out", str(out)],
                   check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["commit"] == COMMIT and result["environment"]["device"] == "cpu"
    assert all(p["activation_bytes_without_casts"] < p["activation_bytes_with_casts"]
               for p in result["peft_input_casts"])
    workers = result["compile_workers"]
    assert workers["returncode"] == 0 and workers["workers"] >= 1 and workers["per_worker_bytes"] > 0


def test_the_host_ram_benchmarks_rehearse_on_the_cpu(tmp_path):
    """The benchmarks behind the README's host RAM figures, on the tiny model: loading it both ways users bring a
    model, and fusing a LoRA into its single file (every adapted layer changed)."""
    loading, fusing = tmp_path / "load.json", tmp_path / "fuse.json"
    for tool, out in (("bench_host_ram.py", loading), ("bench_fuse_ram.py", fusing)):
        subprocess.run([sys.executable, str(TOOLS / tool), "--family", "tiny", "--work", str(tmp_path / "work"),
                        "--out", str(out)], check=True, capture_output=True)
    runs = json.loads(loading.read_text())["runs"]
    assert set(runs) == {"single-file", "diffusers folder"} and all(r["peak_rss_bytes"] > 0 for r in runs.values())
    fused = json.loads(fusing.read_text())
    assert fused["commit"] == COMMIT and fused["run"]["peak_anon_bytes"] > 0
    assert fused["run"]["tensors_changed"] == sum(fused["run"]["layers_fused"]) > 0


def test_the_readme_timing_tools_read_what_they_time(tmp_path):
    """record_ci_time.py reads a timed .ci/run log; bench_quick_start.py finds the README's quick-start job."""
    log = tmp_path / "ci.log"
    log.write_text("+ .ci/run\n...\n===== 975 passed, 66 skipped, 4 warnings in 855.03s (0:14:15) =====\n\n"
                   "real\t16m31.683s\nuser\t25m18.369s\n")
    out = tmp_path / "ci.json"
    subprocess.run([sys.executable, str(TOOLS / "record_ci_time.py"), str(log), "--clone", str(TOOLS.parent),
                    "--out", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert (result["result"], result["tests_seconds"], result["total_seconds"]) == (
        "975 passed, 66 skipped, 4 warnings", 855.03, 991.7)
    assert result["commit"] == commit(from_environment=False)  # the clone's, which --clone names explicitly
    sys.path.insert(0, str(TOOLS))
    try:
        from bench_quick_start import quick_start_arguments
    finally:
        sys.path.remove(str(TOOLS))
    arguments = quick_start_arguments()
    assert arguments[:3] == ["train", "--model", "tiny"] and "--sample-prompt" in arguments
