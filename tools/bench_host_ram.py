"""Peak host RAM of loading a full-size SD1.5/SDXL model, as users bring it (CPU only; no GPU needed).

Builds the family's architecture with random weights in fp16, writes it the two ways users have models (a
single-file checkpoint in the original LDM/SGM layout, and a diffusers folder), then loads each in a fresh
process exactly as `lowvram train` does (`load_model(..., dtype=fp16)`, or `--dtype bf16`: what an Ampere or
newer card computes in, so the fp16 file is converted) and records that process's peak resident memory beside
the planner's host-RAM estimate for the loading phase, for that file. Colab's free tier has 12.7 GB.

    python tools/bench_host_ram.py --family sdxl --work /tmp/hostram --out benchmarks/host-ram-sdxl.json
    python tools/bench_host_ram.py --family sd15 --dtype bf16 --work /tmp/hostram \
        --out benchmarks/host-ram-sd15-bf16.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import bench_memory  # tools/, the script's folder

ROOT = Path(__file__).resolve().parent.parent

MEASURE = """
import json, sys, time, torch
import lowvram.models.loading as loading

def status():  # this process's memory (VmHWM: peak resident since exec, so nothing of the parent's)
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}

before = status()
start = time.perf_counter()
model = loading.load_model(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
seconds = time.perf_counter() - start
loaded = status()
modules = [c for c in model.pipeline.components.values() if isinstance(c, torch.nn.Module)]
weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
checksum = sum(float(p.float().sum()) for m in modules for p in m.parameters())  # every page read, as training does
touched = status()
print(json.dumps({"before_load": before, "after_load": loaded, "after_reading_every_weight": touched,
                  "peak_rss_bytes": touched["VmHWM"], "weights_bytes": weights, "load_seconds": round(seconds, 1)}))
"""


def write_model(family_name: str, work: Path, single_file: bool = True) -> dict[str, Path]:
    import torch
    from safetensors.torch import save_file

    from lowvram.models.families import FAMILIES
    from lowvram.models.ldm_layout import sd15_single_file, sdxl_single_file
    from lowvram.models.loading import build_from_config

    family = FAMILIES[family_name]
    work.mkdir(parents=True, exist_ok=True)
    single, folder = work / f"{family_name}-random.safetensors", work / f"{family_name}-random"
    written = {"single-file": single, "diffusers folder": folder} if single_file else {"diffusers folder": folder}
    if all(path.exists() for path in written.values()) and (folder / "model_index.json").is_file():
        return written
    pipeline = build_from_config(family, dtype=torch.float16)
    if single_file:
        encoders = [getattr(pipeline, spec.component) for spec in family.text_encoders]
        writer = sdxl_single_file if len(encoders) == 2 else sd15_single_file
        save_file(writer(pipeline.unet, pipeline.vae, *encoders), str(single))
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    return written


PROFILES = {"fp16": "colab-t4", "bf16": "rtx-3060-12gb"}  # a card that computes in each dtype


def planner_estimate(model: Path, dtype: str) -> dict:
    from lowvram.configure import build_config
    from lowvram.hardware import load_profile
    from lowvram.plan import plan, workload_for
    from lowvram.plan.estimate import PAGE_CACHE
    from lowvram.resolve import resolve_run

    hardware = load_profile(PROFILES[dtype])
    config = build_config({"model": str(model), "data": "sample", "mixed_precision": dtype})
    result = plan(workload_for(resolve_run(config, hardware)), hardware, {})
    chosen = result.choice or result.candidates[0]
    loading = chosen.host["loading"]
    return {"profile": PROFILES[dtype], "strategy": chosen.strategy.label,
            "loading_host_bytes": sum(v for k, v in loading.items() if k != PAGE_CACHE),
            "loading_resident_bytes": sum(loading.values()), "components": loading}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("sd15", "sdxl", "tiny", "tiny-sdxl"), required=True)
    parser.add_argument("--work", type=Path, required=True, help="where the random-weight model files are written")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", choices=tuple(PROFILES), default="fp16", help="the dtype the weights load in "
                        "(the files are fp16) [default: fp16]")
    parser.add_argument("--write-only", action="store_true", help="only write the random-weight model files")
    parser.add_argument("--folder-only", action="store_true", help="with --write-only: only the diffusers folder "
                        "(what tools/bench_gpu_proof.py reads)")
    args = parser.parse_args()

    if args.write_only:
        write_model(args.family, args.work, single_file=not args.folder_only)
        return
    # written by a process of its own, so none of the building's memory is in this one's children
    subprocess.run([sys.executable, __file__, "--family", args.family, "--work", str(args.work), "--out",
                    str(args.out), "--write-only"], check=True)
    sources = write_model(args.family, args.work)  # the files exist now: only their paths
    runs = {}
    for kind, path in sources.items():
        done = subprocess.run([sys.executable, "-c", MEASURE, str(path), {"fp16": "float16", "bf16": "bfloat16"}[
            args.dtype]], capture_output=True, text=True, check=True)
        runs[kind] = json.loads(done.stdout.strip().splitlines()[-1]) | {"file_bytes": _size(path),
                                                                        "planner": planner_estimate(path, args.dtype)}
        print(kind, runs[kind], flush=True)
    commit = bench_memory.commit()
    import diffusers
    import transformers

    result = {
        "what": f"peak host RAM of loading a full-size {args.family} model stored in fp16, in {args.dtype} "
                "(random weights)",
        "command": " ".join(["python", *sys.argv]),
        "commit": commit,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "diffusers": diffusers.__version__,
                    "transformers": transformers.__version__},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


if __name__ == "__main__":
    main()
