"""Benchmark the data pipeline at scale: scan and caching time, and peak host RAM, against dataset size.

Shows two claims of the data pipeline with numbers:
- host RAM during scanning and caching does not grow with the dataset (files are streamed one at a time);
- rescanning an unchanged dataset is fast: the index answers, no image is decoded again.

Each measurement runs in a fresh subprocess so its peak RSS is its own. Usage:

    python tools/bench_data.py --images 5000 --out benchmarks/data-scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_memory
from bench_memory import write_result


def make_dataset(root: Path, count: int, size=(640, 480)) -> None:
    """`count` noisy JPEGs (noise compresses badly, like photos) with captions, in a kohya 1_ folder."""
    folder = root / "1_bench"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if path.exists():
            continue
        base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize(size, Image.Resampling.BILINEAR).save(path, quality=90)
        (folder / f"{i:05d}.txt").write_text(f"bench image {i}, noise, tag{i % 17}")


def child(task: str, data: Path, cache: Path) -> dict:
    """Run one measurement in this process and return its numbers."""
    from rich.console import Console

    from lowvram.configure import build_config
    from lowvram.data.check import ScannedSets, scan
    from lowvram.data.prepare import prepare_training_data
    from lowvram.hardware import NO_GPU
    from lowvram.models import load_model
    from lowvram.resolve import resolve_run

    config = build_config({"model": "tiny", "data": str(data), "cache_dir": str(cache), "max_steps": 1})
    run = resolve_run(config, NO_GPU)
    quiet = Console(quiet=True)
    start = time.perf_counter()
    if task == "scan":
        report = scan(run, data, None, None)
        result = {"images": len(report.records), "usable": len(report.usable)}
    else:
        import torch

        model = load_model("tiny")
        report = scan(run, data, None, None)
        start = time.perf_counter()
        prepared = prepare_training_data(run, model, ScannedSets.whole([report]), torch.device("cpu"), quiet)
        result = {"images": len(report.usable), "encoded_latents": prepared.encoded_latents,
                  "encoded_texts": prepared.encoded_texts}
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def measure(task: str, data: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", task, "--data", str(data), "--cache", str(cache)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="size of the large dataset")
    parser.add_argument("--small", type=int, default=500, help="size of the small dataset (RAM comparison)")
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    parser.add_argument("--work", type=Path, help="folder for datasets and caches (default: a temp folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.cache)))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="lowvram-bench-"))
    results = {}
    for label, count in (("small", args.small), ("large", args.images)):
        data, cache = work / f"data-{count}", work / f"cache-{count}"
        started = time.perf_counter()
        make_dataset(data, count)
        print(f"{label}: {count} images written in {time.perf_counter() - started:.1f} s", flush=True)
        results[label] = {
            "images": count,
            "scan_cold": measure("scan", data, cache),
            "scan_warm": measure("scan", data, cache),
            "cache_cold": measure("cache", data, cache),
            "cache_warm": measure("cache", data, cache),
        }
        print(json.dumps(results[label], indent=1), flush=True)

    import torch

    commit = bench_memory.commit()
    record = {
        "benchmark": "data pipeline scale",
        "command": " ".join(["python", "tools/bench_data.py", *sys.argv[1:]]),
        "commit": commit,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__, "gpu": None},
        "dataset": "640x480 JPEG noise images with captions, tiny model at 64 px (1 latent + 1 text entry each)",
        "results": results,
    }
    write_result(record, args.out, indent=2)


if __name__ == "__main__":
    main()
