"""Wall time of the README's quick-start job (its first command after the install: the tiny model on the sample
dataset, 100 steps and a sample image) in a fresh process and an empty folder with an empty cache, as a new user
runs it; CPU only.

    python tools/bench_quick_start.py --out benchmarks/quick-start.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_memory  # tools/, the script's folder

ROOT = Path(__file__).resolve().parent.parent
MARK = ".venv/bin/lowvram train "


def quick_start_arguments() -> list[str]:
    """The README's quick-start train command, as written there (the line holding the install and the job)."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if MARK in line and "pip install" in line:
            return shlex.split(line[line.index(MARK) + len(".venv/bin/lowvram "):])
    raise SystemExit("README.md: no quick-start line (`... && .venv/bin/lowvram train ...`)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    arguments = quick_start_arguments()
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "LOWVRAM_CACHE_DIR": str(Path(work) / "cache"), "CUDA_VISIBLE_DEVICES": ""}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lowvram", *arguments], cwd=work, env=env, check=False,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        written = sorted(str(p.relative_to(work)) for p in Path(work, "output").rglob("*") if p.is_file())
    if done.returncode:
        raise SystemExit(f"the quick-start job failed ({done.returncode}):\n{done.stderr[-3000:]}")
    import torch

    commit = bench_memory.commit()
    result = {"what": "wall time of the README's quick-start job, fresh process, empty cache",
              "command": " ".join(["python", *sys.argv]), "job": "lowvram " + shlex.join(arguments), "commit": commit,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "platform": platform.platform()},
              "seconds": round(seconds, 1), "written": written}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{seconds:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
