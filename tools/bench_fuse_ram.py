"""Peak host RAM of `lowvram merge --model`: a LoRA fused into a full-size SD1.5/SDXL single-file checkpoint
(random weights; CPU only, no GPU needed).

Writes the family's architecture with random fp16 weights as a single file in the original layout, and a kohya
LoRA for it (rank 16 on every attention, feed-forward and projection layer of the U-Net and the text encoders:
`--lora-layers full` without the convolutions, random up and down weights so that every adapted weight changes).
Then fuses it in a fresh process as `lowvram merge LORA --model CHECKPOINT` does, sampling that process's resident
memory every 20 ms: its peak (VmHWM), and the peak of its anonymous part (RssAnon: what the system cannot drop;
file pages of the mapped checkpoint it can). Colab's free tier has 12.7 GB.

    python tools/bench_fuse_ram.py --family sdxl --work /tmp/fuseram --out benchmarks/fuse-ram-sdxl.json
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
import json, sys, threading, time
from pathlib import Path

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}

peak_anon, done = [0], threading.Event()
def sample():
    while not done.wait(0.02):
        peak_anon[0] = max(peak_anon[0], status()["RssAnon"])
threading.Thread(target=sample, daemon=True).start()
before = status()
from lowvram.fuse import fuse_into_model
start = time.perf_counter()
result = fuse_into_model(sys.argv[1], [(Path(sys.argv[2]), 1.0)], Path(sys.argv[3]))
seconds = time.perf_counter() - start
done.set()
after = status()
print(json.dumps({"before": before, "after": after, "peak_rss_bytes": after["VmHWM"],
                  "peak_anon_bytes": max(peak_anon[0], after["RssAnon"]), "seconds": round(seconds, 1),
                  "layers_fused": result.layers, "tensors_changed": result.tensors_changed}))
"""


def write_files(family_name: str, work: Path) -> tuple[Path, Path]:
    """The random-weight checkpoint and a LoRA for it (kept between runs: the same files measure each version)."""
    import torch
    from safetensors.torch import save_file

    from lowvram.adapters.lora_files import save_kohya
    from lowvram.adapters.networks import adapted_layers, add_lora
    from lowvram.config import NetworkConfig
    from lowvram.models.families import FAMILIES
    from lowvram.models.ldm_layout import sd15_single_file, sdxl_single_file
    from lowvram.models.loading import build_from_config, load_model

    family = FAMILIES[family_name]
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, lora = work / f"{family_name}-random.safetensors", work / f"{family_name}-lora.safetensors"
    if not checkpoint.is_file():
        pipeline = build_from_config(family, dtype=torch.float16)
        encoders = [getattr(pipeline, spec.component) for spec in family.text_encoders]
        writer = sdxl_single_file if len(encoders) == 2 else sd15_single_file
        save_file(writer(pipeline.unet, pipeline.vae, *encoders), str(checkpoint))
        del pipeline
    if not lora.is_file():
        model = load_model(str(checkpoint), family_name, dtype=torch.float16)
        add_lora(model, NetworkConfig(rank=16, lora_layers="full", conv_rank=0), 16.0, True)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for module in [model.unet, *model.text_encoders]:
                for _, layer in adapted_layers(module):
                    for weight in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
                        weight.normal_(0, 0.01, generator=generator)
        save_kohya(model, lora, 16.0, "fp16", {})
    return checkpoint, lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("sd15", "sdxl", "tiny", "tiny-sdxl"), required=True)
    parser.add_argument("--work", type=Path, required=True, help="where the model, LoRA and merged files go")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--write-only", action="store_true", help="only write the checkpoint and the LoRA")
    args = parser.parse_args()

    if args.write_only:
        write_files(args.family, args.work)
        return
    # written by a process of its own, so none of the building's memory is in the measured one
    subprocess.run([sys.executable, __file__, "--family", args.family, "--work", str(args.work), "--out",
                    str(args.out), "--write-only"], check=True)
    checkpoint, lora = args.work / f"{args.family}-random.safetensors", args.work / f"{args.family}-lora.safetensors"
    merged = args.work / f"{args.family}-merged.safetensors"
    done = subprocess.run([sys.executable, "-c", MEASURE, str(checkpoint), str(lora), str(merged)],
                          capture_output=True, text=True, check=True)
    run = json.loads(done.stdout.strip().splitlines()[-1])
    merged.unlink()
    print(run, flush=True)

    import diffusers
    import torch

    commit = bench_memory.commit()
    result = {
        "what": f"peak host RAM of fusing a LoRA into a full-size {args.family} fp16 single-file checkpoint "
                "(lowvram merge --model; random weights)",
        "command": " ".join(["python", *sys.argv]),
        "commit": commit,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "diffusers": diffusers.__version__},
        "checkpoint_bytes": checkpoint.stat().st_size,
        "lora_bytes": lora.stat().st_size,
        "run": run,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
