"""What two of #14's overhead measures change, measured on the CPU (no GPU, no weights):

1. peft's fp32 input casts under autocast: the activations one training step keeps, traced at full size
   (fake tensors, tools/plan_trace.py), with the casts (peft's default) and without them (what training does
   under mixed precision, `lowvram.adapters.networks.cast_inputs`).
2. --compile's worker processes: the peak resident memory of inductor's compile workers during a tiny
   `lowvram train --compile` run, and how many there were (the planner counts 64 MiB per worker).

    python tools/bench_step_overhead.py --out benchmarks/step-overhead.json      # a few minutes on 2 cores
    python tools/bench_step_overhead.py --tiny                                    # a rehearsal in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_memory import commit, environment, write_result

TINY_POINTS = [("tiny", 64, False, "attn"), ("tiny", 64, True, "full")]  # --tiny: a rehearsal in seconds
POINTS = [("sd15", 512, False, "attn"), ("sd15", 512, True, "attn"), ("sd15", 512, False, "full"),
          ("sd15", 512, True, "full"), ("sdxl", 1024, False, "attn"), ("sdxl", 1024, True, "attn")]


def traced_activations(family: str, resolution: int, checkpointing: bool, layers: str, cast: bool) -> int:
    import plan_trace
    import torch

    # bf16 under autocast, as the full-size families train on a GPU (and are traced); the tiny ones too, here
    return plan_trace.trace_training_step(family, resolution, checkpointing=checkpointing, layers=layers,
                                          dtype=torch.bfloat16, input_casts=cast)["activation_bytes"]


def compile_workers(work: Path) -> dict:
    """Peak RSS of the run's process and of its children (the compile workers) while it compiles and trains."""
    import psutil

    argv = [sys.executable, "-m", "lowvram", "train", "--model", "tiny", "--data", "sample", "--max-steps", "3",
            "--rank", "4", "--compile", "--output", str(work / "out"), "--cache-dir", str(work / "cache")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    parent = psutil.Process(proc.pid)
    peak_children, most, peak_main = 0, 0, 0
    while proc.poll() is None:
        try:
            children = parent.children(recursive=True)
            peak_main = max(peak_main, parent.memory_info().rss)
        except psutil.Error:
            break
        resident = 0
        for child in children:
            try:
                resident += child.memory_info().rss
            except psutil.Error:
                pass
        peak_children, most = max(peak_children, resident), max(most, len(children))
        time.sleep(0.05)
    return {"returncode": proc.returncode, "workers": most, "workers_peak_rss_bytes": peak_children,
            "per_worker_bytes": peak_children // most if most else None, "run_peak_rss_bytes": peak_main,
            "command": " ".join(argv[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tiny", action="store_true", help="the tiny model only (a CPU rehearsal)")
    args = parser.parse_args()
    casts = []
    for family, resolution, checkpointing, layers in TINY_POINTS if args.tiny else POINTS:
        with_casts = traced_activations(family, resolution, checkpointing, layers, cast=True)
        without = traced_activations(family, resolution, checkpointing, layers, cast=False)
        casts.append({"family": family, "resolution": resolution, "checkpointing": checkpointing,
                      "lora_layers": layers, "activation_bytes_with_casts": with_casts,
                      "activation_bytes_without_casts": without,
                      "saved": round(1 - without / with_casts, 3)})
        print(json.dumps(casts[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workers = compile_workers(Path(tmp))
    print(json.dumps(workers), flush=True)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": commit(),
              "environment": environment(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "peft_input_casts": casts, "compile_workers": workers}
    write_result(result, args.out)


if __name__ == "__main__":
    main()
