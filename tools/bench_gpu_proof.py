"""The GPU proof, one command: every strategy the planner can choose, the usual way of training beside them,
and `lowvram train --auto` under each VRAM budget, for SD1.5 at 512 px and SDXL at 1024 px.

    python tools/bench_gpu_proof.py --out benchmarks/gpu-proof-h100.json
    python tools/render_benchmarks.py benchmarks/gpu-proof-h100.json --markdown - --png docs/gpu-proof.png
    python tools/bench_gpu_proof.py --families tiny --device cpu --steps 2 --warmup 1 --out /tmp/p.json  # smoke

Device time is short (a 10-minute call, 15 minutes a session), so the runs go in the order that answers the
most when cut short, and `--deadline S` starts nothing after S seconds (a run still going then is stopped
RUN_TIMEOUT_MIN later); the JSON is rewritten after every run and lists what did not run. First: per family,
the random-weight model folder (written once, read by every run), the usual way, and the planner's choice for
every budget; then train --auto per budget; then every other strategy; then `--capped`. A GPU session:

    python tools/bench_gpu_proof.py --optimizers adamw8bit --deadline 420 --out $OUT/gpu-proof.json

1. Each strategy runs once without a cap (tools/bench_memory.py, a process per run): peak allocated and
   reserved, the CUDA context, host peak RSS, median s/step over `--steps` after `--warmup`, and the planner's
   estimate of the same step. A strategy fits a budget when its peak reserved plus the context is within it.
   `--capped` also reruns every (strategy, budget) pair under `torch.cuda.set_per_process_memory_fraction`
   (the issue's full grid; about |strategies| x |budgets| minutes).
2. The baseline: diffusers' LoRA example defaults (fp16 everywhere on the GPU, VAE and text encoders every
   step, AdamW, no checkpointing), same machine, same run: every strategy gets a speed ratio against it.
3. `lowvram train --auto --vram B` per budget on a full-size random-weight model written to `--work`, held to
   the budget: it must not run out of memory, and its s/step is compared with the fastest strategy that fit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

import bench_memory

RESOLUTIONS = {"sd15": 512, "sdxl": 1024, "tiny": 64, "tiny-sdxl": 64}
RUN_TIMEOUT_MIN = 120  # seconds one run may take past the deadline before it is stopped
GIB = 1024**3


def planner_strategies(family_name: str, resolution: int) -> list[str]:
    """Every strategy `lowvram plan` may choose for this family on a bf16 GPU."""
    from lowvram.hardware import hardware_for
    from lowvram.models import FAMILIES
    from lowvram.plan.estimate import Workload
    from lowvram.plan.planner import strategies

    hardware = hardware_for(None, "80GB", "128GB")
    work = Workload(FAMILIES[family_name], resolution, native_format="bf16" if hardware.bf16 else "fp16")
    names = [bench_memory.strategy_name(s.unet_weights, s.gradient_checkpointing, s.optimizer)
             for s in strategies(work, {})]
    # --offload-activations is the user's choice, not the planner's: measured on the leanest strategies
    return names + [f"{name},offload" for name in names if name.endswith(",ckpt,adamw8bit")
                    and name.split(",")[0] in ("bnb-nf4", "quanto-int4")]


def fits(run: dict, budget_gb: float) -> bool:
    if not run.get("ok"):
        return False
    if not budget_gb:
        return True
    used = run.get("peak_reserved_plus_context")
    return used is not None and used <= budget_gb * GIB


def auto_run(model: str, family: str, resolution: int, budget_gb: float, steps: int, warmup: int, device: str,
             work: Path, timeout: float | None = None) -> dict:
    """`lowvram train --auto` as a user runs it, held to the budget; s/step from its metrics.jsonl."""
    out = Path(tempfile.mkdtemp(prefix=f"auto-{family}-{budget_gb:g}-", dir=work))
    cmd = [sys.executable, "-m", "lowvram", "train", "--auto", "--model", model, "--data", "sample", "--resolution",
           str(resolution), "--max-steps", str(warmup + steps), "--output", str(out), "--overwrite"]
    if budget_gb and device == "cuda":
        cmd += ["--vram", f"{budget_gb:g}GB"]
    env = None if device == "cuda" else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"budget_gb": budget_gb, "ok": False, "command": " ".join(cmd[1:]), "out_of_memory_events": 0,
                "error": f"timed out after {timeout:.0f} s"}
    result = {"budget_gb": budget_gb, "exit_code": done.returncode, "command": " ".join(cmd[1:]),
              "out_of_memory_events": done.stdout.count("out of memory at step"),
              "ok": done.returncode == 0}
    if done.returncode:
        result["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1]
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        seconds = [r["seconds"] for r in rows if "seconds" in r and r["step"] > warmup]
        if seconds:
            result["seconds_per_step"] = statistics.median(seconds)
        peaks = [r["vram_peak_gib"] for r in rows if "vram_peak_gib" in r]
        if peaks:
            result["peak_reserved"] = int(max(peaks) * GIB)
    saved = out / f"{out.name}.toml"
    if saved.is_file():
        from lowvram.config import tomllib

        resolved = tomllib.loads(saved.read_text())
        memory, optimizer = resolved.get("memory", {}), resolved.get("optim", {}).get("optimizer")
        result["choice"] = bench_memory.strategy_name(memory.get("unet_weights"),
                                                      bool(memory.get("gradient_checkpointing")), optimizer)
    return result


def random_model(family: str, work: Path) -> str:
    """A full-size diffusers folder with random weights, written once (a process of its own, so its memory is
    nobody's peak): train --auto loads it as a user's model, and each strategy run reads its U-Net from it."""
    folder = work / f"{family}-random"
    if not (folder / "model_index.json").is_file():
        subprocess.run([sys.executable, str(TOOLS / "bench_host_ram.py"), "--family", family, "--work", str(work),
                        "--out", str(work / f"host-ram-{family}.json"), "--write-only", "--folder-only"], check=True)
    return str(folder)


def planner_choice(family_name: str, resolution: int, budget_gb: float) -> str | None:
    """What `lowvram plan` picks on a bf16 GPU with this much free VRAM (0: unlimited)."""
    from lowvram.hardware import hardware_for
    from lowvram.models import FAMILIES
    from lowvram.plan.estimate import Workload
    from lowvram.plan.planner import plan

    hardware = hardware_for(None, f"{budget_gb or 80:g}GB", "128GB")
    chosen = plan(Workload(FAMILIES[family_name], resolution, native_format="bf16"), hardware, {}).choice
    if chosen is None:
        return None
    strategy = chosen.strategy
    return bench_memory.strategy_name(strategy.unet_weights, strategy.gradient_checkpointing, strategy.optimizer)


def work_queue(args) -> list[tuple[str, str, str, float]]:
    """(kind, family, strategy, budget) in the order that answers the most if the run is cut short: per family
    the usual way and the planner's choice for every budget; then train --auto per budget; then every other
    strategy (the estimator's calibration); then, with --capped, every strategy under every budget's cap."""
    first, auto, rest, capped = [], [], [], []
    for family in args.families:
        resolution = RESOLUTIONS[family]
        every = args.strategies or planner_strategies(family, resolution)
        names = [n for n in every if not args.optimizers or n.split(",")[2] in args.optimizers]
        first.append(("baseline", family, "baseline", 0))
        if not args.auto_only:  # the planner's choices run whatever --optimizers says: they are what --auto runs
            chosen = [planner_choice(family, resolution, budget) for budget in args.budgets]
            chosen = [n for n in dict.fromkeys(chosen) if n in every]
            first += [("strategy", family, name, 0) for name in chosen]
            rest += [("strategy", family, name, 0) for name in names if name not in chosen]
        if not args.skip_auto:
            auto += [("auto", family, "auto", budget) for budget in args.budgets]
        if args.capped:
            capped += [("capped", family, name, budget) for name in names for budget in args.budgets if budget]
    return first + auto + rest + capped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["sd15", "sdxl"], choices=list(RESOLUTIONS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[2, 4, 6, 8, 12, 16, 0],
                        help="GiB; 0 = unlimited")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--capped", action="store_true", help="also run every strategy under every budget's cap")
    parser.add_argument("--skip-auto", action="store_true")
    parser.add_argument("--auto-only", action="store_true", help="only the baseline and train --auto (to split a "
                        "long run over several device calls; render the results together)")
    parser.add_argument("--strategies", nargs="+", help="only these (default: every one the planner may choose)")
    parser.add_argument("--optimizers", nargs="+", help="only strategies with these optimizers (the optimizer "
                        "changes a LoRA's memory by megabytes and its speed barely: one is enough per device call)")
    parser.add_argument("--deadline", type=float, default=0, help="seconds after which no new run starts (0: none); "
                        "what did not run is listed under not_run, and the JSON is rewritten after every run")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lowvram-proof")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    record = {"benchmark": "GPU proof: every strategy, the usual way, and train --auto per budget",
              "command": " ".join(["python", "tools/bench_gpu_proof.py", *sys.argv[1:]]),
              "commit": bench_memory.commit(), "environment": bench_memory.environment(),
              "steps": args.steps, "warmup": args.warmup, "budgets_gb": args.budgets, "families": {}, "not_run": []}
    queue = work_queue(args)
    models = {family: random_model(family, args.work) for family in args.families}
    for family in args.families:
        record["families"][family] = {"resolution": RESOLUTIONS[family], "batch": 1, "rank": args.rank,
                                      "baseline": {}, "strategies": [], "capped": [], "auto": []}

    def save() -> None:
        for section in record["families"].values():
            section["summary"] = summarize(section, args.budgets)
        record["seconds"] = round(time.monotonic() - started)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")  # after every run: a cut-short call keeps its part

    for kind, family, name, budget in queue:
        elapsed = time.monotonic() - started
        if args.deadline and elapsed > args.deadline:
            record["not_run"].append(f"{kind} {family} {name}" + (f" {budget:g} GiB" if budget else ""))
            continue
        section, resolution = record["families"][family], RESOLUTIONS[family]
        # a hung run (a kernel compiling, a driver stall) must not eat the device call
        timeout = max(RUN_TIMEOUT_MIN, args.deadline - elapsed + RUN_TIMEOUT_MIN) if args.deadline else None
        if kind == "auto":
            run = auto_run(models[family], family, resolution, budget, args.steps, args.warmup, args.device,
                           args.work, timeout)
        else:
            run = bench_memory.measure(family, resolution, name, budget, args.steps, args.warmup, 1, args.rank,
                                       args.device, models[family], timeout)
        if kind == "baseline":
            section["baseline"] = run
        else:
            section[{"strategy": "strategies", "capped": "capped", "auto": "auto"}[kind]].append(run)
        print(f"[{time.monotonic() - started:5.0f} s] {json.dumps(run)}", flush=True)
        save()
    save()
    print(f"wrote {args.out}" + (f"; not run (deadline): {len(record['not_run'])}" if record["not_run"] else ""))


def summarize(section: dict, budgets: list[float]) -> dict:
    """Per budget: what fit, the fastest of those, --auto against it; per strategy: speed against the
    baseline and the estimator's error on peak allocated."""
    baseline = section["baseline"].get("seconds_per_step") if section.get("baseline", {}).get("ok") else None
    per_strategy = []
    for run in section["strategies"]:
        row = {"strategy": run["strategy"], "ok": run.get("ok", False)}
        if run.get("ok") and baseline:
            row["speed_vs_baseline"] = baseline / run["seconds_per_step"]
        measured, estimated = run.get("peak_allocated"), run.get("estimated_peak_allocated")
        if measured and estimated:
            row["estimate_error"] = (estimated - measured) / measured  # negative: an underestimate
        per_strategy.append(row)
    per_budget = []
    for budget in budgets:
        fitting = [r for r in section["strategies"] if fits(r, budget)]
        fastest = min(fitting, key=lambda r: r["seconds_per_step"], default=None)
        auto = next((a for a in section["auto"] if a["budget_gb"] == budget), None)
        row = {"budget_gb": budget, "fitting": [r["strategy"] for r in fitting],
               "fastest": fastest["strategy"] if fastest else None}
        if auto:
            row.update(auto_ok=auto["ok"], auto_choice=auto.get("choice"),
                       auto_out_of_memory_events=auto["out_of_memory_events"])
            if fastest and auto.get("seconds_per_step"):
                row["auto_vs_fastest"] = auto["seconds_per_step"] / fastest["seconds_per_step"]
            if baseline and auto.get("seconds_per_step"):
                row["auto_speed_vs_baseline"] = baseline / auto["seconds_per_step"]
        per_budget.append(row)
    return {"baseline_seconds_per_step": baseline, "strategies": per_strategy, "budgets": per_budget}


if __name__ == "__main__":
    main()
