"""Cold-start latency of the commands that must answer at once: `lowvram plan`, `check-data`, `--help`, and an
option error. Each runs in a fresh process `--repeat` times; the median wall time is recorded. The goal is
`lowvram plan` under 2 s on the 2-core CI machine.

    python tools/bench_cli_latency.py --out benchmarks/cli-latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COMMANDS = {
    "lowvram --help": ["--help"],
    "lowvram plan --model sd15 --vram 6GB": ["plan", "--model", "sd15", "--vram", "6GB"],
    "lowvram plan --model sdxl --vram 12GB --json": ["plan", "--model", "sdxl", "--vram", "12GB", "--json"],
    "lowvram train --help": ["train", "--help"],
    "lowvram train --data sample --rank 0 (an option error)": ["train", "--data", "sample", "--rank", "0"],
    "lowvram check-data SAMPLE --model tiny (6 images, scan index warm)": ["check-data", "SAMPLE", "--model", "tiny"],
    "lowvram doctor (detects the GPU: imports torch)": ["doctor"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import tempfile

    import bench_memory

    from lowvram.data.sample import write_sample_dataset

    scratch = Path(tempfile.mkdtemp(prefix="lowvram-latency-"))
    sample = write_sample_dataset(scratch / "data")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "LOWVRAM_CACHE_DIR": str(scratch / "cache")}
    results = []
    for name, argv in COMMANDS.items():
        argv = [str(sample) if a == "SAMPLE" else a for a in argv]
        times, code = [], None
        for _ in range(args.repeat):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "lowvram", *argv], capture_output=True, env=env, check=False)
            times.append(time.perf_counter() - start)
            code = done.returncode
        results.append({"command": name, "median_seconds": round(statistics.median(times), 3),
                        "max_seconds": round(max(times), 3), "exit_code": code})
        print(f"{name}: median {statistics.median(times):.2f} s (exit {code})", flush=True)
    record = {"benchmark": "CLI cold-start latency (fresh process each time, median)",
              "command": " ".join(["python", "tools/bench_cli_latency.py", *sys.argv[1:]]),
              "commit": bench_memory.commit(), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                           "platform": platform.platform()},
              "repeat": args.repeat, "results": results}
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
