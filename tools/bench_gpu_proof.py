"""The GPU proof in one short device call: every strategy the planner may choose at batch 1 and 4, the usual way
beside them, and `lowvram train --auto` end to end under each VRAM cap, for SD1.5 at 512 px and SDXL at 1024 px.

    python tools/bench_gpu_proof.py --deadline 420 --calibrate benchmarks/gpu/DATE-DEVICE/gpu-proof.json \\
        --out $OUT/gpu-proof.json
    python tools/bench_gpu_proof.py --families tiny --device cpu --budgets 0 --out /tmp/p.json   # rehearsal

In order, each part bounded by `--deadline` (seconds; nothing new starts after it) and the JSON rewritten after
each part, so a call cut short still returns what it measured:

1. Random-weight model folders for the `--auto` runs are written in the background (CPU, a few threads).
2. Per family, one process sweeps the strategies (tools/bench_sweep.py): the usual way (diffusers' example
   defaults) and every planner candidate at each batch size, each on a U-Net made and converted on the GPU.
3. With `--calibrate PATH`, the sweep is written to PATH (under benchmarks/) and lowvram/plan/calibration.json is
   derived again from benchmarks/ (tools/calibrate_planner.py), so the `--auto` runs plan with what was just seen.
4. At once, in parallel (their speed is not what they measure, their memory is per process): `lowvram train
   --auto --vram B` per family and budget, end to end on the sample dataset (caching, training, a sample, the
   save), each phase's peak VRAM read from its metrics.jsonl; the way a Colab T4 runs it (`--mixed-precision
   fp16`, SDXL's VAE in fp32, 15 GB; SD1.5 at 6 GB); SD1.5 in fp32 at 6 GB, as a GTX 16xx trains (`--mixed-precision
   no`); and two strategies again in fresh processes of their own,
   converted on the host as a run does, to check the sweep's peaks.
5. The summary: per family and batch, what fits each budget, the fastest of it, the planner's pick against the
   fastest unconstrained step, the fastest against the usual way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

import bench_memory

GIB = 1024**3
FRESH_PROCESS_CHECKS = ("bf16,ckpt,adamw8bit", "bnb-nf4,ckpt,adamw8bit")  # SD1.5: seconds to convert on the host
T4_BUDGETS = {"sd15": 6, "sdxl": 15}  # GB, with --mixed-precision fp16
GTX16_BUDGETS = {"sd15": 6}  # GB, in fp32 (--mixed-precision no), as a GTX 16xx trains
AUTO_RESERVE = 150  # seconds the --auto runs need after the sweeps (they run side by side)
# the sweeps' time is shared out by these weights (SDXL's 1024 px steps take some 3x SD1.5's 512 px ones: the
# 2026-11-29 H200 readings), so the first family cannot leave the second none; and one strategy may take at most
# STRATEGY_LIMIT seconds (a compile or a kernel build that runs long is cut, the sweep goes on)
SWEEP_SHARE = {"sdxl": 2.0, "tiny-sdxl": 2.0}
STRATEGY_LIMIT = {"sdxl": 75, "tiny-sdxl": 75}
DEFAULT_STRATEGY_LIMIT = 45
WRITER = """
import sys, torch
sys.path.insert(0, sys.argv[3])
torch.set_num_threads(4)
import bench_memory, importlib
from lowvram.models import FAMILIES
family = FAMILIES[sys.argv[1]]
index = __import__("json").loads((family.config_dir / "model_index.json").read_text())
names = [n for n, e in index.items() if not n.startswith("_") and isinstance(e, list) and e[0]
         and not e[1].endswith("Scheduler")]
parts = bench_memory.random_components(family, torch.device("cpu"), torch.float16, tuple(names))
scheduler = index["scheduler"]
parts["scheduler"] = getattr(importlib.import_module(scheduler[0]), scheduler[1]).from_pretrained(
    family.config_dir, subfolder="scheduler")
for name, entry in index.items():
    if isinstance(entry, list) and entry[0] is None:
        parts[name] = None
pipeline = getattr(importlib.import_module("diffusers"), family.pipeline_class)(**parts)
pipeline.save_pretrained(sys.argv[2], safe_serialization=True)
"""


def elapsed_since(started: float) -> float:
    return time.monotonic() - started


def write_model(family: str, work: Path) -> tuple[Path, subprocess.Popen | None]:
    """A full-size diffusers folder of random fp16 weights (what `--auto` loads as a user's model), in the
    background."""
    folder = work / f"{family}-random"
    if (folder / "model_index.json").is_file():
        return folder, None
    env = {**os.environ, "OMP_NUM_THREADS": "4"}
    return folder, subprocess.Popen([sys.executable, "-c", WRITER, family, str(folder), str(TOOLS)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def sweep_share(families: list[str], left: float) -> float:
    """Seconds the first of `families` (those still to sweep) may start strategies for, of `left` in all."""
    weights = [SWEEP_SHARE.get(family, 1.0) for family in families]
    return max(1.0, (left - AUTO_RESERVE) * weights[0] / sum(weights))


def sweep(family: str, args, share: float) -> list[dict]:
    """tools/bench_sweep.py for one family, starting strategies for `share` seconds, its lines read back whether
    it finished or was stopped."""
    lines = args.work / f"sweep-{family}.jsonl"
    lines.unlink(missing_ok=True)
    limit = STRATEGY_LIMIT.get(family, DEFAULT_STRATEGY_LIMIT)
    cmd = [sys.executable, str(TOOLS / "bench_sweep.py"), "--family", family, "--device", args.device,
           "--deadline", str(max(1, round(share))), "--strategy-limit", str(limit), "--out", str(lines),
           "--batches", *map(str, args.batches), "--steps", *map(str, args.steps), "--warmup", str(args.warmup),
           "--budgets", *map(str, args.budgets)]
    try:
        subprocess.run(cmd, check=False, timeout=share + limit + 60, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pass
    return [json.loads(line) for line in lines.read_text().splitlines()] if lines.is_file() else []


def auto_run(model: Path, family: str, resolution: int, budget: float, precision: str, args, timeout: float) -> dict:
    """`lowvram train --auto` as a user runs it, held to the budget: its choice, out-of-memory events, and the
    peak of every phase (from its metrics.jsonl)."""
    out = Path(tempfile.mkdtemp(prefix=f"auto-{family}-{budget:g}-", dir=args.work))
    cmd = [sys.executable, "-m", "lowvram", "train", "--auto", "--model", str(model), "--data", "sample",
           "--resolution", str(resolution), "--max-steps", "3", "--sample-prompt", "lvshape, a red circle",
           "--sample-steps", "2", "--output", str(out), "--cache-dir", str(out / "cache"), "--overwrite"]
    if budget and args.device == "cuda":
        cmd += ["--vram", f"{budget:g}GB"]
    if precision != "bf16":
        cmd += ["--mixed-precision", precision]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.device != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""
    result = {"kind": "auto", "family": family, "budget_gb": budget, "mixed_precision": precision,
              "resolution": resolution, "batch": 1, "rank": 16, "command": " ".join(["lowvram", *cmd[3:]])}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**result, "ok": False, "error": f"timed out after {timeout:.0f} s"}
    result.update(ok=done.returncode == 0, exit_code=done.returncode,
                  out_of_memory_events=done.stdout.count("out of memory at step"))
    if done.returncode:
        result["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1][:400]
    resolved = out / f"{out.name}.toml"
    if resolved.is_file():
        from lowvram.configure import tomllib

        config = tomllib.loads(resolved.read_text())
        result.update(unet_weights=config["memory"]["unet_weights"],
                      gradient_checkpointing=bool(config["memory"].get("gradient_checkpointing")
                                                  or config["memory"].get("checkpoint_blocks")),
                      checkpoint_units=config["memory"].get("checkpoint_blocks"),
                      optimizer=config["optim"]["optimizer"],
                      vae_fp32=precision == "fp16" and family in ("sdxl", "tiny-sdxl"))
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        peaks = next((r["phase_peak_bytes"] for r in rows if "phase_peak_bytes" in r), None)
        if peaks:
            result["phase_peaks"] = peaks
    return result


def within_cap(run: dict, context: int) -> bool | None:
    if not run.get("budget_gb") or "phase_peaks" not in run:
        return None
    return all(peak + context <= run["budget_gb"] * GIB for peak in run["phase_peaks"].values())


def planner_pick(family: str, resolution: int, batch: int, budget: float, mixed_precision: str = "bf16"):
    """What `lowvram plan` picks for this budget (0: unlimited) with the calibration as it stands now."""
    from lowvram.hardware import hardware_for
    from lowvram.models import FAMILIES
    from lowvram.plan.estimate import Workload
    from lowvram.plan.planner import plan
    from lowvram.resolve import NATIVE_FORMAT

    work = Workload(FAMILIES[family], resolution, batch, sampling=False, mixed_precision=mixed_precision,
                    native_format=NATIVE_FORMAT[mixed_precision], compute_bytes=4 if mixed_precision == "no" else 2)
    choice = plan(work, hardware_for(None, f"{budget or 141:g}GB", "128GB"), {}).choice
    if choice is None:
        return None
    s = choice.strategy
    return bench_memory.strategy_name(s.unet_weights, s.checkpoint_units if s.selective else s.gradient_checkpointing,
                                      s.optimizer)


def summarize(section: dict, budgets: list[float], family: str) -> list[dict]:
    """Per batch size and budget: what fit, the fastest of it, the planner's pick and its speed."""
    rows = []
    bf16 = [r for r in section["strategies"] if r.get("ok") and r.get("mixed_precision", "bf16") == "bf16"]
    for batch in sorted({r["batch"] for r in bf16}):
        runs = [r for r in bf16 if r["batch"] == batch]
        fastest = min(runs, key=lambda r: r["seconds_per_step"])
        base = next((b for b in section["baseline"] if b.get("ok") and b["batch"] == batch), None)
        for budget in [0, *budgets]:
            fitting = [r for r in runs if not budget or r.get("peak_reserved_plus_context", 0) <= budget * GIB]
            best = min(fitting, key=lambda r: r["seconds_per_step"], default=None)
            pick = planner_pick(family, section["resolution"], batch, budget)
            picked = next((r for r in runs if r["strategy"] == pick), None)
            row = {"batch": batch, "budget_gb": budget, "fitting": [r["strategy"] for r in fitting],
                   "fastest_fitting": best and best["strategy"], "planner_pick": pick,
                   "fastest_unconstrained": fastest["strategy"]}
            if picked:
                row["pick_vs_fastest_unconstrained"] = round(picked["seconds_per_step"] / fastest["seconds_per_step"], 3)
                row["pick_fits"] = picked in fitting
            if base and best:
                row["fastest_fitting_speedup_vs_usual_way"] = round(base["seconds_per_step"] / best["seconds_per_step"], 3)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["sd15", "sdxl"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[4, 6, 8, 12], help="GiB for --auto --vram")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--steps", nargs="+", type=int, default=[3, 2], help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--deadline", type=float, default=420, help="seconds after which nothing new starts")
    parser.add_argument("--calibrate", type=Path, help="also write the result here (under benchmarks/) and derive "
                        "lowvram/plan/calibration.json again before the --auto runs")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lowvram-proof")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    from lowvram.models import FAMILIES

    record = {"benchmark": "GPU proof: every planner strategy at batch 1 and 4, the usual way, train --auto per cap",
              "command": " ".join(["python", "tools/bench_gpu_proof.py", *sys.argv[1:]]),
              "commit": bench_memory.commit(), "environment": bench_memory.environment(),
              "batches": args.batches, "steps": args.steps, "warmup": args.warmup, "budgets_gb": args.budgets,
              "families": {f: {"resolution": FAMILIES[f].resolution, "rank": 16, "baseline": [], "strategies": [],
                               "auto": [], "fresh_process": []} for f in args.families}, "not_run": []}

    def save() -> None:
        record["seconds"] = round(elapsed_since(started))
        for path in (args.out, args.calibrate):
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=2) + "\n")

    writers = {f: write_model(f, args.work) for f in args.families}
    for index, family in enumerate(args.families):
        left = args.deadline - elapsed_since(started)
        if left < 30:
            record["not_run"].append(f"sweep {family}")
            continue
        section = record["families"][family]
        for line in sweep(family, args, sweep_share(args.families[index:], left)):
            kind = line.pop("kind", "strategy")
            if kind == "not run":
                record["not_run"].append(f"{family} {line['strategy']}")
            else:
                section["baseline" if kind == "baseline" else "strategies"].append(line)
        save()
        print(f"[{elapsed_since(started):4.0f} s] swept {family}: {len(section['strategies'])} measurements",
              flush=True)
    if args.calibrate:
        from lowvram.plan.calibration import calibration

        subprocess.run([sys.executable, str(TOOLS / "calibrate_planner.py")], check=False)
        calibration.cache_clear()  # the summary's picks plan with it too

    jobs = []
    for family in args.families:
        folder, writer = writers[family]
        resolution = FAMILIES[family].resolution
        wanted = [(folder, family, resolution, budget, "bf16") for budget in args.budgets]
        if args.device == "cuda":
            wanted += [(folder, family, resolution, budgets[family], precision)
                       for budgets, precision in ((T4_BUDGETS, "fp16"), (GTX16_BUDGETS, "no")) if family in budgets]
        if elapsed_since(started) > args.deadline:
            if writer is not None:
                writer.kill()
            record["not_run"] += [f"auto {family} {budget:g} GB{'' if precision == 'bf16' else ' ' + precision}"
                                  for *_, budget, precision in wanted]
            continue
        if writer is not None:
            _, error = writer.communicate()
            if writer.returncode:
                record["not_run"].append(f"auto {family}: writing the model failed: {error.strip()[-300:]}")
                continue
        jobs += wanted
    timeout = max(60, args.deadline - elapsed_since(started) + 60)
    processes = len(jobs) + len(FRESH_PROCESS_CHECKS)  # at once: each its share of the cores, not all of them
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, processes)))
    with ThreadPoolExecutor(max_workers=len(jobs) + len(FRESH_PROCESS_CHECKS) or 1) as pool:
        autos = [pool.submit(auto_run, *job, args, timeout) for job in jobs]
        fresh = []
        if jobs and args.device == "cuda" and "sd15" in args.families:
            fresh = [pool.submit(bench_memory.measure, "sd15", 512, name, 0, 3, 1, 1, 16, "cuda", None, timeout)
                     for name in FRESH_PROCESS_CHECKS]
        contexts = {f: next((r["context_bytes"] for r in record["families"][f]["strategies"]), 0)
                    for f in args.families}
        for future in autos:
            run = future.result()
            run["context_bytes"] = contexts[run["family"]]
            run["within_cap"] = within_cap(run, run["context_bytes"])
            record["families"][run["family"]]["auto"].append(run)
            save()
        for name, future in zip(FRESH_PROCESS_CHECKS, fresh):
            run = future.result()
            swept = next((r for r in record["families"]["sd15"]["strategies"]
                          if r["strategy"] == name and r.get("batch") == 1 and r.get("ok")), None)
            if swept and run.get("ok"):
                run["sweep_peak_reserved"] = swept["peak_reserved"]
                run["sweep_vs_fresh"] = round(swept["peak_reserved"] / run["peak_reserved"], 3)
            record["families"]["sd15"]["fresh_process"].append(run)
    for family, section in record["families"].items():
        section["summary"] = summarize(section, args.budgets, family)
    save()
    print(f"wrote {args.out} in {elapsed_since(started):.0f} s" +
          (f"; not run: {', '.join(record['not_run'])}" if record["not_run"] else ""))


if __name__ == "__main__":
    main()
