"""`lowvram extract --base A --tuned B --rank 32`: a LoRA from the difference between a fine-tuned model and the
model it was tuned from, as kohya's extract_lora_from_models.py makes one. Each adapted layer's weight change is
cut by its singular values to --rank (--conv-rank for the 3x3 convolutions of --lora-layers full), its factors'
values clamped at a quantile as kohya's are (--clamp-quantile, 0.99), and written as a kohya LoRA at alpha = rank.
A text encoder is extracted only where it changed by more than --min-diff (kohya's 0.01): tuned models often
leave theirs as they were. Both models load on the CPU, in fp16 where both are stored so, else in fp32 (or
--load-precision's: a small change survives fp16's rounding, not bf16's); each layer is split in fp32. No GPU is
needed.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lowvram.errors import LowvramError
from lowvram.files import expand_home, lora_output_problem

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Extracted:
    path: Path
    layers: int  # of the U-Net; the text encoders' are the rest of `kept`
    text_encoders: list[str]  # the text encoders extracted (the others changed by --min-diff or less)
    kept: list[float]  # each layer's share of its change's Frobenius norm kept
    unchanged: int = 0  # layers the tuned model left as they were: none written (kohya's were pairs of zeros)


def low_rank(delta: torch.Tensor, rank: int, clamp: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down, up, share of the change's Frobenius norm kept): the rank-`rank` pair closest to `delta` (a Linear's
    (out, in) or a convolution's (out, in, k, k) change), the up factor holding the singular values as kohya's
    does, the singular vectors' values clamped at the `clamp` quantile of their size (1: none), each side's at its
    own. The share kept is what the pair fits of the change (the square root of one less the squared residual's
    share): a clamp's loss counts."""
    import torch

    matrix = delta.flatten(1).float()
    rank = min(rank, *matrix.shape)
    if min(matrix.shape) <= 4 * rank:  # small enough to decompose whole
        u, values, vh = torch.linalg.svd(matrix, full_matrices=False)
    else:  # randomized, the rank's subspace found by power iteration: exact to float error for a low-rank change
        u, values, v = torch.svd_lowrank(matrix, q=min(rank + 10, min(matrix.shape)), niter=6)
        vh = v.T
    # the vectors clamped, not the factors: with the singular values split evenly between the factors, each further
    # factor's small values lowered the quantile the first ones were clamped at (rank 128 fitted worse than 8); one
    # quantile of kohya's factors, U*S and Vh, clamps more the larger the change. A unit vector's values are alike
    # in size whatever the rank and the change's scale.
    left, right = u[:, :rank], vh[:rank]
    if clamp < 1:
        left_limit, right_limit = (torch.quantile(side.abs().flatten(), clamp) for side in (left, right))
        left, right = left.clamp(-left_limit, left_limit), right.clamp(-right_limit, right_limit)
    up, down = left * values[:rank], right
    total = torch.linalg.norm(matrix)
    # (the product's norm over the change's said "kept 76%" of a fit 93% good)
    kept = math.sqrt(max(0.0, 1 - float(torch.linalg.norm(matrix - up @ down) / total) ** 2)) if total > 0 else 1.0
    if delta.dim() == 4:
        return down.reshape(rank, *delta.shape[1:]), up.reshape(delta.shape[0], rank, 1, 1), kept
    return down, up, kept


def extract(base: str, tuned: str, rank: int, output: Path, lora_layers: str = "attn-mlp",
            conv_rank: int | None = None, min_diff: float = 0.01, clamp: float = 0.99, precision: str = "fp16",
            family: str | None = None, load_precision: str = "fp16") -> Extracted:
    """Write the LoRA of `tuned` minus `base` to `output`; the models are loaded in `load_precision`."""
    import torch

    from lowvram.adapters.lora_files import UNET_KOHYA_PREFIX, kohya_unet_paths, network_metadata
    from lowvram.adapters.networks import is_spatial, targeted
    from lowvram.config import NetworkConfig
    from lowvram.lora_metadata import modelspec, save_lora
    from lowvram.precision import DTYPES
    from lowvram.train.publish import carded

    torch.manual_seed(0)  # svd_lowrank's random start: the same file from the same models
    original, changed = (_load(name, flag, family, DTYPES[load_precision])
                         for name, flag in ((base, "--base"), (tuned, "--tuned")))
    if original.family.name != changed.family.name:
        raise LowvramError(f"--base is {original.family.title}, --tuned {changed.family.title}; give the "
                           "model the tuned one was trained from")
    spec = original.family
    parts = [(UNET_KOHYA_PREFIX, "unet", original.unet, changed.unet)] + [
        (text.kohya_prefix, text.component, a, b)
        for text, a, b in zip(spec.text_encoders, original.text_encoders, changed.text_encoders)]
    tensors: dict[str, torch.Tensor] = {}
    unet_paths = kohya_unet_paths(original.unet, spec)  # the names kohya's own files give the U-Net's layers
    kept, encoders, unchanged, unet_layers = [], [], 0, 0
    dtype = DTYPES[precision]
    with torch.no_grad():  # the weights require grad: each difference would keep an fp32 graph alive
        for prefix, part, a, b in parts:
            theirs = dict(b.named_modules())
            pairs = [(name, layer, theirs.get(name)) for name, layer in a.named_modules()
                     if targeted(name, spec.lora_targets(part, lora_layers))
                     and isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))]
            if any(other is None or other.weight.shape != layer.weight.shape for _, layer, other in pairs):
                raise LowvramError(f"--tuned's {part} is not shaped as --base's; give the model it was tuned from")
            if part != "unet":
                largest = max((float((other.weight.float() - layer.weight.float()).abs().max()) for _, layer, other
                               in pairs), default=0.0)
                if largest <= min_diff:
                    continue
                encoders.append(part)
            for name, layer, other in pairs:
                delta = other.weight.float() - layer.weight.float()
                if not delta.any():
                    unchanged += 1
                    continue
                layer_rank = conv_rank if conv_rank and is_spatial(layer) else rank
                down, up, share = low_rank(delta, layer_rank, clamp)
                if part == "unet":
                    path = unet_paths.get(name, name)
                else:
                    path = name if name.startswith("text_model.") else "text_model." + name
                key = f"{prefix}_{path.replace('.', '_')}"
                tensors |= {f"{key}.lora_down.weight": down.to(dtype), f"{key}.lora_up.weight": up.to(dtype),
                            f"{key}.alpha": torch.tensor(float(down.shape[0]), dtype=dtype)}
                kept.append(share)
            if part == "unet":
                unet_layers = len(kept)
    if not kept:  # (it wrote a LoRA of zeros, "kept 100.0%")
        raise LowvramError(f"--tuned {tuned} has --base's weights in every layer extract reads: there is no change "
                           "to extract; give the fine-tuned model")
    network = NetworkConfig(rank=rank, alpha=float(rank), lora_layers=lora_layers, conv_rank=conv_rank,
                            conv_alpha=float(conv_rank) if conv_rank else None)
    metadata = network_metadata(network) | {
        "ss_base_model_version": spec.base_model_version, "ss_v2": "False",
        "ss_training_comment": f"extracted by lowvram extract: {Path(tuned).name} minus {Path(base).name}"
    } | modelspec(spec.modelspec_architecture, output.stem, f"{spec.resolution}x{spec.resolution}")
    with carded(output):
        save_lora(tensors, output, metadata, "the extracted LoRA")
    return Extracted(output, unet_layers, encoders, kept, unchanged)


def _load(model: str, flag: str, family: str | None, dtype: torch.dtype):
    """The model, loaded on the CPU; its errors name `flag` (--base or --tuned) where load_model's say --model
    (not --model-family, which extract has too)."""
    from lowvram.models.loading import load_model

    try:
        return load_model(model, family, dtype=dtype)
    except LowvramError as exc:
        if not str(exc).startswith("--model:"):
            raise
        raise LowvramError(re.sub(r"--model(?![-\w])", flag, str(exc))) from None


def same_model(base: str, tuned: str) -> bool:
    """Whether --base and --tuned name one model: the same file or folder (however written), or the same name."""
    first, second = expand_home(base), expand_home(tuned)
    if first.exists() and second.exists():
        return first.samefile(second)
    return base == tuned


def run(args: argparse.Namespace) -> Extracted:
    """`lowvram extract`, its options checked first (one line each)."""
    problems = []
    if args.rank < 1 or (args.conv_rank is not None and args.conv_rank < 1):
        problems.append("--rank, --conv-rank: must be 1 or more")
    if args.conv_rank is not None and args.lora_layers != "full":
        problems.append("--conv-rank: only used with --lora-layers full (the 3x3 convolutions)")
    if not 0 < args.clamp_quantile <= 1:
        problems.append(f"--clamp-quantile: must be in (0, 1], got {args.clamp_quantile:g}")
    if args.min_diff < 0:
        problems.append(f"--min-diff: must be 0 or more, got {args.min_diff:g}")
    if same_model(args.base, args.tuned):
        problems.append("--tuned: the same file as --base; nothing to extract (give the fine-tuned model)")
    written = lora_output_problem(args.output, [Path(args.base), Path(args.tuned)], args.overwrite)
    if written:
        problems.append(written)
    if problems:
        raise LowvramError("\n".join(problems))
    from lowvram.models.detect import stored_precision

    # as the models are stored, as kohya's loads them: fp16 where both are, else fp32 (an fp32 model's small change
    # lost up to a fifth of itself to fp16's rounding, which the kept share, of the rounded change, did not show)
    loading = args.load_precision or ("fp16" if {stored_precision(args.base), stored_precision(args.tuned)} == {
        "fp16"} else "fp32")
    return extract(args.base, args.tuned, args.rank, args.output, args.lora_layers, args.conv_rank, args.min_diff,
                   args.clamp_quantile, args.save_precision, args.model_family, loading)


def summary(result: Extracted) -> str:
    text = len(result.kept) - result.layers
    encoders = f" and {text} of {', '.join(result.text_encoders)}" if result.text_encoders else (
        " (the text encoders left out: none changed by more than --min-diff)")
    left = f"; {result.unchanged} unchanged layers left out" if result.unchanged else ""
    mean = sum(result.kept) / max(1, len(result.kept))
    return (f"{result.path}: {result.layers} layer{'s' * (result.layers != 1)} of the U-Net{encoders}{left}; kept "
            f"{mean:.1%} of the changes' Frobenius norm on average, {min(result.kept, default=1.0):.1%} at least")
