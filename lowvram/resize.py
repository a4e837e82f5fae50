"""`lowvram resize FILE --rank N`: a LoRA file at a lower rank, as kohya's resize_lora.py makes one: each layer's
update (alpha/rank x up @ down) is split by its singular values and cut to the rank that keeps the most of it
(Eckart-Young: no other rank-N pair comes closer). A fixed rank, or per layer the least rank that meets one of
kohya's rules (`--dynamic`):

    sv_ratio       keep the singular values above the largest / PARAM (PARAM > 1, e.g. 8)
    sv_fro         keep PARAM of the update's Frobenius norm (0 < PARAM <= 1, e.g. 0.9)
    sv_cumulative  keep PARAM of the sum of its singular values (0 < PARAM <= 1)

never above --rank. The update is never formed: its factors' QR decompositions leave an SVD of a rank x rank
core, so no GPU and little memory are needed. Each layer keeps its alpha/rank scale (alpha becomes that
scale x the new rank; after a --dynamic rule, one alpha for all and the rest of each scale in its up weight,
which diffusers reads too) and the singular values are split evenly between the two factors, so the file can also
continue training (--network-weights). Any kohya-format LoRA or LoCon works, whoever trained it; DoRA, LoHa and
LoKr have no such split of their update and are refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from lowvram.errors import LowvramError
from lowvram.files import lora_output_problem
from lowvram.lora_header import base_model_metadata, no_layers_reason
from lowvram.lora_metadata import RECIPE_KEY, save_lora
from lowvram.run_files import lora_in_folder

if TYPE_CHECKING:
    import torch

DYNAMIC = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True)
class Resized:
    path: Path
    layers: int
    ranks: tuple[int, int]  # (before, after): the largest
    after: list[int]  # each layer's new rank
    kept: list[float]  # each layer's share of its update's Frobenius norm kept
    names: list[str]  # each layer's, as the file names it (lora_unet_…)


def kept_rank(values: torch.Tensor, limit: int, dynamic: str | None, param: float | None) -> int:
    """How many of the singular values `values` (descending) to keep: at most `limit`, at least 1."""
    import torch

    if dynamic == "sv_ratio":
        count = int((values > values[0] / param).sum())
    elif dynamic in ("sv_fro", "sv_cumulative"):
        weights = values.square() if dynamic == "sv_fro" else values
        share = torch.cumsum(weights, 0) / weights.sum().clamp(min=1e-30)
        target = param * param if dynamic == "sv_fro" else param
        count = int(torch.searchsorted(share, torch.tensor(target, dtype=share.dtype) * (1 - 1e-6))) + 1
    else:
        count = limit
    return max(1, min(count, limit, len(values)))


def update_norm(down: torch.Tensor, up: torch.Tensor) -> float:
    """The Frobenius norm of up @ down, from the factors' rank x rank Gram matrices (the product itself, a layer's
    whole weight shape, is never made)."""
    a, b = up.reshape(up.shape[0], -1).double(), down.reshape(down.shape[0], -1).double()
    return float(((a.T @ a) * (b @ b.T)).sum().clamp(min=0).sqrt())


def resize_pair(down: torch.Tensor, up: torch.Tensor, limit: int, dynamic: str | None, param: float | None
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down, up, share of the update's Frobenius norm kept) at the kept rank, shaped as the given ones (a
    convolution's down (rank, in, k, k), up (out, rank, 1, 1)), their product the best approximation of
    up @ down at that rank."""
    import torch

    rank = down.shape[0]
    a, b = up.reshape(up.shape[0], rank).double(), down.reshape(rank, -1).double()
    q_up, r_up = torch.linalg.qr(a)  # up @ down = q_up (r_up r_down^T) q_down^T
    q_down, r_down = torch.linalg.qr(b.T)
    u, values, vh = torch.linalg.svd(r_up @ r_down.T)
    new = kept_rank(values, limit, dynamic, param)
    root = values[:new].sqrt()
    new_up = (q_up @ u[:, :new]) * root
    new_down = root[:, None] * (vh[:new] @ q_down.T)
    total = values.square().sum()
    kept = float((values[:new].square().sum() / total).sqrt()) if total > 0 else 1.0
    return (new_down.reshape(new, *down.shape[1:]).float(), new_up.reshape(up.shape[0], new, *up.shape[2:]).float(),
            kept)


def resize_file(path: Path, rank: int, output: Path, dynamic: str | None = None, param: float | None = None,
                conv_rank: int | None = None, precision: str | None = None) -> Resized:
    """Write `path`'s LoRA at (at most) `rank` (`conv_rank` for 3x3 convolutions) to `output`."""
    import torch

    from lowvram.precision import DTYPES

    metadata, tensors, pairs = read_pairs(path, "resize")
    dtype = DTYPES[precision] if precision else next(iter(pairs.values()))["lora_down.weight"].dtype
    written: dict[str, torch.Tensor] = {key: tensor for key, tensor in tensors.items()
                                        if key.split(".", 1)[0] not in pairs}
    before, after, kept = [], [], []
    for base, own in pairs.items():
        down, up = own["lora_down.weight"], own["lora_up.weight"]
        old = down.shape[0]
        alpha = float(own["alpha"]) if "alpha" in own else float(old)
        spatial = down.dim() == 4 and down.shape[-1] > 1  # a LoCon's 3x3 convolution: --conv-rank's
        limit = conv_rank if conv_rank and spatial else rank
        new_down, new_up, share = resize_pair(down, up, limit, dynamic, param)
        new = new_down.shape[0]
        written |= {f"{base}.lora_down.weight": new_down.to(dtype), f"{base}.lora_up.weight": new_up.to(dtype),
                    # --save-precision casts every tensor, as kohya's does; else each keeps the file's dtype
                    f"{base}.alpha": torch.tensor(alpha / old * new, dtype=dtype if precision else own.get(
                        "alpha", down).dtype)}
        before.append(old)
        after.append((new, spatial))
        kept.append(share)
    uncut = all(new == old for old, (new, _) in zip(before, after, strict=True))
    linear = max((old for old, (_, spatial) in zip(before, after, strict=True) if not spatial), default=rank)
    if not dynamic and precision is None and uncut and rank > linear:  # (a copy named for a rank it is not; at
        # its own rank it is a conversion: kohya's layout, Tucker cores folded)
        raise LowvramError(f"{path}: every linear layer is at rank {linear} or below already, so --rank {rank} cuts "
                           f"nothing (resize lowers ranks, never raises them); give a rank under {linear} ({linear} "
                           "writes it in kohya's layout, --save-precision in another precision)")
    if not dynamic and conv_rank and rank > linear and any(spatial for _, spatial in after):
        # (the file is named for --rank: -r32 of a rank-8 file whose convolutions alone were cut)
        raise LowvramError(f"{path}: --rank {rank}, above its linear layers' {linear}, cuts nothing there (resize "
                           f"lowers ranks, never raises them); give --rank {linear} --conv-rank {conv_rank} to cut "
                           "the convolutions alone")
    # a fixed rank keeps each layer's alpha/rank scale (a LoCon's conv_alpha, per-block alphas), for
    # --network-weights to continue it; a rule's ranks per layer are no file's rank and alpha to continue, nor are
    # a file's of one alpha whose layers' ranks differed (a --dynamic resize's, a merge's): diffusers read it right
    folded = len({float(own["alpha"]) if "alpha" in own else float(own["lora_down.weight"].shape[0])
                  for own in pairs.values()}) < 2 and len({old for old, (_, spatial) in zip(before, after, strict=True)
                                                           if not spatial}) > 1  # (a LoCon's conv_dim is its own)
    from lowvram.train.publish import carded

    with carded(output):
        save_lora(with_one_alpha(written) if dynamic or folded else written, output,
                  _metadata(metadata, max(before), rank, dynamic, param, after, shape_of(written), conv_rank),
                  "the resized LoRA")
    ranks = [new for new, _ in after]
    return Resized(output, len(pairs), (max(before), max(ranks)), ranks, kept, list(pairs))


def with_one_alpha(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kohya-format `tensors` with one alpha for every layer, each layer's own alpha/rank scale kept by folding
    the difference into its up weight. A --dynamic resize or a merge leaves layers of several ranks, and alphas
    that differ between layers are what diffusers' reader of kohya files misplaces; ComfyUI, AUTOMATIC1111, kohya
    and lowvram read the same update either way."""
    import torch

    alphas = {key.removesuffix(".alpha"): float(tensor) for key, tensor in tensors.items()
              if key.endswith(".alpha") and f"{key.removesuffix('.alpha')}.lora_up.weight" in tensors}
    if len(set(alphas.values())) < 2:
        return tensors
    common = statistics.mode(alphas.values())  # (most layers then keep their weights as they are)
    out = dict(tensors)
    for base, alpha in alphas.items():
        if alpha != common:
            up = tensors[f"{base}.lora_up.weight"]
            out[f"{base}.lora_up.weight"] = (up.float() * (alpha / common)).to(up.dtype)
            out[f"{base}.alpha"] = torch.tensor(common, dtype=tensors[f"{base}.alpha"].dtype)
    return out


def read_pairs(path: Path, command: str) -> tuple[dict[str, str], dict[str, torch.Tensor], dict[str, dict]]:
    """(metadata, tensors, the LoRA layers' tensors by key prefix, a LoCon's Tucker cores folded into its down
    matrices: `by_layer`) of a kohya-format LoRA/LoCon file; a one-line LowvramError for an unreadable file, a
    DoRA, LoHa or LoKr, a tensor the pair would lose, or no LoRA layers at all."""
    from lowvram.adapters.lora_files import broken_layer, by_layer, read_lora_file

    metadata, tensors = read_lora_file(path, None)
    layers = by_layer(tensors)
    if broken := broken_layer(layers):
        raise LowvramError(f"{path} {broken}")
    suffixes = {suffix for own in layers.values() for suffix in own}
    kind = next((name for marker, name in (("dora_scale", "DoRA"), ("hada_", "LoHa"), ("lokr_", "LoKr"))
                 if any(suffix.startswith(marker) for suffix in suffixes)), None)
    if kind:  # (fuse reads them all: merge --model takes any)
        fuse = "; lowvram merge --model MODEL fuses it into a model instead" if command == "merge" else ""
        raise LowvramError(f"{path} is a {kind} file; only a LoRA's (or LoCon's) update splits into a "
                           f"lower-rank pair{fuse}")
    pairs = {base: own for base, own in layers.items() if {"lora_down.weight", "lora_up.weight"} <= own.keys()}
    extra = next((f"{suffix} at {base}" for base, own in pairs.items() for suffix in own
                  if suffix not in ("lora_down.weight", "lora_up.weight", "alpha")), None)
    if extra:  # a tensor the split would drop, changing the update
        raise LowvramError(f"{path} holds {extra} besides its LoRA pair, which lowvram {command} cannot keep; "
                           f"lowvram {command}s plain LoRA and LoCon files (Tucker cores too)")
    if not pairs:
        raise LowvramError(f"{path}: {no_layers_reason(list(tensors))}")
    return metadata, tensors, pairs


def _metadata(metadata: dict[str, str], old: int, rank: int, dynamic: str | None, param: float | None,
              after: list[tuple[int, bool]], shapes: dict[str, tuple[int, ...]], conv_rank: int | None = None
              ) -> dict[str, str]:
    """The file's metadata, its rank and alpha as kohya's resize writes them ("Dynamic" for a --dynamic rule, or
    where layers differ; a LoCon's 3x3 convolutions in its ss_network_args), and a note of the resize in the
    training comment. `after`: each layer's new rank, and whether it is a 3x3 convolution."""
    meta = dict(metadata)
    how = f"{dynamic} {param:g}, at most rank {rank}" if dynamic else f"rank {rank}"
    linear = {new for new, spatial in after if not spatial}
    spatial = {new for new, spatial in after if spatial}
    if dynamic or len(linear) > 1:
        meta["ss_network_dim"] = meta["ss_network_alpha"] = "Dynamic"
    elif "ss_network_dim" in meta and linear:
        meta["ss_network_dim"], meta["ss_network_alpha"] = _scaled(meta["ss_network_dim"],
                                                                   meta.get("ss_network_alpha", ""), min(linear))
    with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):  # (none, or not kohya's JSON: kept)
        args = json.loads(meta["ss_network_args"])
        if not dynamic and len(spatial) == 1 and "conv_dim" in args:
            args["conv_dim"], args["conv_alpha"] = _scaled(str(args["conv_dim"]), str(args.get("conv_alpha", "")),
                                                           min(spatial))
            meta["ss_network_args"] = json.dumps(args)
    if conv_rank and not dynamic:
        how += f" (conv: {conv_rank})"
    note = f"resized from rank {old} by lowvram resize ({how})"
    meta["ss_training_comment"] = f"{meta['ss_training_comment']}; {note}" if meta.get("ss_training_comment") else note
    if RECIPE_KEY in meta:  # (its rank and alpha were the trained file's: `train --config` on it trained those)
        recipe = resized_recipe(meta[RECIPE_KEY], linear, spatial, dynamic)
        meta.pop(RECIPE_KEY) if recipe is None else meta.update({RECIPE_KEY: recipe})
    return meta | base_model_metadata(meta, shapes)


def resized_recipe(text: str, linear: set[int], spatial: set[int], dynamic: str | None) -> str | None:
    """A LoRA's recipe (`train --config` on the file) at its new ranks, each alpha/rank scale kept; None where no
    one rank trains the resized file (a --dynamic rule, layers of several ranks, per-block ranks)."""
    from lowvram.config import NetworkConfig

    try:
        recipe = tomllib.loads(text)
        network = recipe["network"]
        trained = NetworkConfig(**network)  # (its defaults, as the run resolved them: alpha, the convolutions')
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, LowvramError):
        return None
    per_block = trained.block_ranks or trained.conv_block_ranks or trained.block_alphas or trained.conv_block_alphas
    if dynamic or len(linear) != 1 or len(spatial) > 1 or per_block:
        return None
    new, (conv_rank, conv_alpha) = min(linear), trained.conv_rank_alpha
    network["rank"] = new
    if network.get("alpha") is not None:
        network["alpha"] = trained.resolved_alpha / trained.rank * new
    if spatial:
        network["conv_rank"], network["conv_alpha"] = min(spatial), conv_alpha / conv_rank * min(spatial)
    return tomli_w.dumps(recipe)


def shape_of(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in tensors.items()}


def _scaled(dim: str, alpha: str, new: int) -> tuple[str, str]:
    """A rank and alpha as metadata writes them, at the rank `new`: the alpha/rank scale kept where both are
    numbers."""
    if not (dim.isdigit() and alpha.replace(".", "", 1).isdigit()):
        return str(new), alpha
    return str(new), f"{float(alpha) / int(dim) * new:g}"


def run(args: argparse.Namespace) -> Resized:
    """`lowvram resize`, its options checked first (one line each)."""
    missing = (f"{args.lora}: a folder; {lora_in_folder(args.lora)}" if args.lora.is_dir() else
               f"{args.lora}: file not found; give a LoRA .safetensors file")
    problems = [] if args.lora.is_file() else [missing]
    rule = f"{args.dynamic}{args.dynamic_param:g}" if args.dynamic and args.dynamic_param is not None else None
    suffix = f"-r{args.rank}" + (f"-{rule}" if rule else "")
    output = args.output or args.lora.with_name(f"{args.lora.stem}{suffix}.safetensors")
    problems += option_problems(args, output, [args.lora])
    if problems:
        raise LowvramError("\n".join(problems))
    return resize_file(args.lora, args.rank, output, args.dynamic, args.dynamic_param, args.conv_rank,
                       args.save_precision)


def option_problems(args: argparse.Namespace, output: Path, inputs: list[Path]) -> list[str]:
    """What is wrong with resize's and merge's shared options (--rank, --dynamic, --output), one line each."""
    problems = []
    if args.rank < 1 or (args.conv_rank is not None and args.conv_rank < 1):
        problems.append("--rank, --conv-rank: must be 1 or more")
    if args.dynamic and args.dynamic_param is None:
        example = "8" if args.dynamic == "sv_ratio" else "0.9"
        problems.append(f"--dynamic {args.dynamic}: give --dynamic-param (e.g. {example})")
    elif args.dynamic and not math.isfinite(args.dynamic_param):  # (nan passed every check: rank 1 everywhere)
        problems.append(f"--dynamic-param: must be a finite number, got {args.dynamic_param:g}")
    elif args.dynamic == "sv_ratio" and args.dynamic_param <= 1:
        problems.append(f"--dynamic-param: sv_ratio keeps the values above the largest / PARAM; give more than 1, "
                        f"got {args.dynamic_param:g}")
    elif args.dynamic and args.dynamic != "sv_ratio" and not 0 < args.dynamic_param <= 1:
        problems.append(f"--dynamic-param: {args.dynamic} keeps that share; give a number in (0, 1], got "
                        f"{args.dynamic_param:g}")
    elif args.dynamic_param is not None and not args.dynamic:
        problems.append("--dynamic-param: only used with --dynamic; add it or drop --dynamic-param")
    if written := lora_output_problem(output, inputs, args.overwrite):
        problems.append(written)
    return problems


def summary(result: Resized, verbose: bool = False) -> str:
    """The written file's line; `verbose` (kohya's --verbose): each layer's new rank and what it kept, first."""
    layers = [f"{name}: rank {rank}, kept {kept:.1%} of its update's Frobenius norm"
              for name, rank, kept in zip(result.names, result.after, result.kept)] if verbose else []
    ranks = sorted(result.after)
    uncut = result.ranks[1] == result.ranks[0] and min(result.kept) > 0.9999
    line = (f"{result.path}: {result.layers} layers, rank {result.ranks[0]} -> {result.ranks[1]} (median "
            f"{statistics.median(ranks):g}, least {ranks[0]}); kept {statistics.mean(result.kept):.1%} of the "
            f"updates' Frobenius norm on average, {min(result.kept):.1%} at least"
            + ("; nothing was cut: each layer was at that rank or below already" if uncut else ""))
    return "\n".join([*layers, line])
