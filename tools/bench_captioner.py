"""Peak VRAM of `lowvram caption` with a BLIP-large-sized captioner (random weights: memory does not depend on their
values), at several batch sizes, beside what `lowvram/plan/captioner.py` estimates; so that the estimate's
per-image allowance can be set from a measurement. A GPU check (tools/gpu_session.sh runs it); `--tiny` rehearses
the code on the CPU with a small model.

    python tools/bench_captioner.py --out benchmarks/gpu/DATE-DEVICE/captioner.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from bench_memory import commit, environment, write_result

from lowvram.plan.captioner import ACTIVATIONS_PER_IMAGE, CaptionerEstimate

LARGE = {  # Salesforce/blip-image-captioning-large
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 384, "patch_size": 16},
    "text_config": {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "encoder_hidden_size": 1024},
}
TINY = {
    "vision_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "image_size": 32, "patch_size": 8},
    "text_config": {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "encoder_hidden_size": 32, "bos_token_id": 5, "sep_token_id": 3,
                    "pad_token_id": 0, "eos_token_id": 3},
}
NEW_TOKENS = 40  # lowvram caption's default --max-length, every caption generated to full length


def measure(sizes: dict, batches: list[int], device: str):
    """Yield one row per batch size, as it is measured."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    dtype = torch.float16 if device == "cuda" else torch.float32
    config = BlipConfig(**sizes)
    if device == "cuda":
        context = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]  # before our first tensor
    with torch.device(device):
        model = BlipForConditionalGeneration(config).to(dtype).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    side = sizes["vision_config"]["image_size"]
    for batch in batches:
        pixels = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
        if device == "cuda":  # the fp32 model, cast to fp16, is no part of the peak
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(pixel_values=pixels, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
        row = {"batch": batch, "seconds": round(time.perf_counter() - start, 3), "weights_bytes": weights,
               "estimate_bytes": CaptionerEstimate(0, weights, batch * ACTIVATIONS_PER_IMAGE).total}
        if device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_reserved()
            row |= {"peak_reserved_bytes": peak, "context_bytes": context,
                    "activations_per_image_bytes": (torch.cuda.max_memory_allocated() - weights) // batch,
                    "estimate_over_measured": round(row["estimate_bytes"] / peak, 3)}
        yield row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a small model on the CPU: rehearse the code")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    result = {"command": " ".join(["python", *sys.argv]), "commit": commit(), "environment": environment(),
              "model": "tiny BLIP" if args.tiny else "BLIP-large sizes",
              "allowance_per_image_bytes": ACTIVATIONS_PER_IMAGE, "rows": []}
    for row in measure(TINY if args.tiny else LARGE, [int(b) for b in args.batches.split(",")], device):
        result["rows"].append(row)
        write_result(result, args.out)  # after each batch size: a run cut off keeps what it measured


if __name__ == "__main__":
    main()
