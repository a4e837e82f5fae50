"""`lowvram merge A.safetensors B.safetensors:0.5 --rank 32`: several LoRA files as one, as kohya's
svd_merge_lora.py makes it: each layer's updates, each times its file's weight, summed, and cut to the rank that
keeps the most of the sum (a fixed rank, or per layer by `--dynamic`, as `lowvram resize`). The factors are laid
side by side (their ranks added), so the sum is split as a resize splits one update, never formed at full size.
A layer that only some files adapt takes only theirs. The merged file is a plain kohya LoRA at alpha = rank (the
most common rank, for a file of layers of several ranks: the rest of each scale is in its up weight).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lowvram.errors import LowvramError, shell_line
from lowvram.lora_header import base_model_metadata
from lowvram.lora_metadata import modelspec, save_lora, title_of, trigger_words
from lowvram.option_values import parse_source
from lowvram.resize import Resized, option_problems, read_pairs, resize_pair, shape_of, update_norm, with_one_alpha
from lowvram.run_files import lora_in_folder

# metadata the merged file keeps when every source agrees on it: what the LoRAs were trained for
SHARED_METADATA = ("ss_base_model_version", "ss_v2", "modelspec.architecture", "modelspec.prediction_type",
                   "modelspec.resolution", "ss_zero_terminal_snr", "lowvram.family")
# what a file without them leaves unsaid (a kohya or Civitai file with no modelspec), not says otherwise (a file
# without a prediction type or zero-SNR is of the usual kind): the files that say them agree on the merged file's
SAID_BY_SOME = ("ss_base_model_version", "modelspec.architecture")  # (the layers' shapes agree; a resolution is
# each file's own)


CANCELLED = 1e-4  # a weighted sum this small beside its parts is float error's residue: they cancel out


def merge_files(sources: list[tuple[Path, float]], rank: int, output: Path, dynamic: str | None = None,
                param: float | None = None, conv_rank: int | None = None, precision: str | None = None) -> Resized:
    """Write the weighted sum of `sources`' LoRAs at (at most) `rank` to `output`."""
    import torch

    from lowvram.adapters.lora_files import in_original_layout
    from lowvram.precision import DTYPES

    read = [(path, weight, *read_pairs(path, "merge")) for path, weight in sources]
    families = _one_model(read)
    # an SDXL U-Net named both ways across the files, and its CLIP-L's layers too: one naming (kohya's), so each
    # layer's updates add up
    bases = [base for *_, pairs in read for base in pairs]
    renames = in_original_layout(bases) | _clip_l_renames(bases, families)
    for path, *_, pairs in read if renames else []:
        named = [renames.get(base, base) for base in pairs]
        if len(set(named)) < len(named):
            twice = next(name for name in named if named.count(name) > 1)
            raise LowvramError(f"{path} holds one layer under two names ({twice}, in kohya's and another naming), "
                               "which lowvram merge cannot add up within one file; apply it in ComfyUI instead")
    if renames:
        read = [(path, weight, meta, _renamed(tensors, renames), {renames.get(base, base): own
                                                                  for base, own in pairs.items()})
                for path, weight, meta, tensors, pairs in read]
    for path, _, _, tensors, pairs in read:
        extra = sorted(key for key in tensors if key.split(".", 1)[0] not in pairs)
        if extra:
            raise LowvramError(f"{path} holds tensors besides its LoRA layers ({extra[0]}); merge reads plain "
                               "LoRA files")
    dtype = DTYPES[precision] if precision else next(iter(read[0][4].values()))["lora_down.weight"].dtype
    bases = list(dict.fromkeys(base for *_, pairs in read for base in pairs))
    written, before, after, kept = {}, [], [], []
    given = summed = 0.0  # the Frobenius norms of the weighted updates, and of their sums
    for base in bases:
        downs, ups, shapes = [], [], set()
        for path, weight, _, _, pairs in read:
            if base not in pairs:
                continue
            down, up = pairs[base]["lora_down.weight"].float(), pairs[base]["lora_up.weight"].float()
            alpha = float(pairs[base].get("alpha", down.shape[0]))
            shapes.add((down.shape[1:], up.shape[0], up.shape[2:]))
            if len(shapes) > 1:
                raise LowvramError(f"{path} does not fit the others at {base} ({tuple(down.shape)} against "
                                   "another file's shape); merge LoRAs of one base model family")
            downs.append(down)
            ups.append(up * (weight * alpha / down.shape[0]))
            given += update_norm(down, ups[-1])
        down, up = torch.cat(downs), torch.cat(ups, dim=1)
        summed += update_norm(down, up)
        limit = conv_rank if conv_rank and down.dim() == 4 and down.shape[-1] > 1 else rank
        new_down, new_up, share = resize_pair(down, up, limit, dynamic, param)
        new = new_down.shape[0]
        written |= {f"{base}.lora_down.weight": new_down.to(dtype), f"{base}.lora_up.weight": new_up.to(dtype),
                    f"{base}.alpha": torch.tensor(float(new), dtype=dtype)}
        before.append(down.shape[0])
        after.append(new)
        kept.append(share)
    if given == 0:  # (an untrained save: its up weights are zeros)
        raise LowvramError(f"{', '.join(str(path) for path, _ in sources)}: every update is zero (a LoRA saved before "
                           "training, its up weights zeros): merging changes nothing")
    # (A and A:-1: float error's residue, resized, was "kept 98.0%"; weights past float's range are said at saving)
    if math.isfinite(given) and summed <= CANCELLED * given:
        named = ", ".join(f"{path.name}:{weight:g}" for path, weight in sources)
        raise LowvramError(f"the LoRAs cancel out ({named}): their weighted sum changes nothing; check the weights' "
                           "signs")
    from lowvram.train.publish import carded

    with carded(output):
        save_lora(with_one_alpha(written), output,
                  _metadata(read, output, rank, dynamic, param, after, shape_of(written)), "the merged LoRA")
    return Resized(output, len(bases), (max(before), max(after)), after, kept, bases)


def _one_model(read: list) -> set[str] | None:
    """Refuse files made for different base models, by what their metadata says or, where it says nothing (files
    stripped of it, or from tools that write none), by their layers: the U-Net's cross-attention width and the text
    encoders' key prefixes (lora_te1_/lora_te2_: two encoders; an SDXL file's lora_te_ layers are its CLIP-L's, as
    ComfyUI reads them). Their layers hardly overlap, so a merge would write both models' in one file. Returns the
    families every file's layers may be for (None: no file's layers say)."""
    for key in ("modelspec.architecture", "ss_base_model_version"):
        said = {meta[key]: path for path, _, meta, _, _ in read if meta.get(key)}
        if len(said) > 1:
            (first, one), (second, other) = list(said.items())[:2]
            raise LowvramError(f"{one} is for {first}, {other} for {second}; merge LoRAs of one base model")
    known = [(path, found) for path, _, _, _, pairs in read if (found := _families_of(pairs)) is not None]
    common = None
    for path, (families, title) in known:
        if common is not None and not common & families:
            one, (_, first) = next(((other, found) for other, found in known if not found[0] & families), known[0])
            raise LowvramError(f"{one} is for {first}, {path} for {title} (by their layers); merge LoRAs of one base "
                               "model")
        common = families if common is None else common & families
    return common


def _families_of(pairs: dict[str, dict]) -> tuple[set[str], str] | None:
    """The families a file's layers may be for, and their title: by the width of the U-Net's cross-attention
    input (a width no family has stands for itself), and by its text-encoder layers: two encoders' (lora_te1_,
    lora_te2_), or lora_te_ alone, one encoder's unless the width says SDXL (whose CLIP-L ComfyUI reads under
    lora_te_). None when its layers say neither."""
    from lowvram.models import FAMILIES

    widths = {own["lora_down.weight"].shape[1] for base, own in pairs.items()
              if base.endswith(("_attn2_to_k", "_attn2_to_v")) and own["lora_down.weight"].dim() == 2}
    two_encoders = any(base.startswith(("lora_te1_", "lora_te2_")) for base in pairs)
    one_encoder = not two_encoders and any(base.startswith("lora_te_") for base in pairs)
    if len(widths) != 1 and not two_encoders and not one_encoder:
        return None
    families = set(FAMILIES)
    if len(widths) == 1:
        width = next(iter(widths))
        families = {name for name, family in FAMILIES.items() if family.unet_config["cross_attention_dim"] == width}
        if not families:
            return {f"{width} wide"}, f"a U-Net with {width}-wide cross-attention"
    counted = {name for name in families if len(FAMILIES[name].text_encoders) == 2}
    if two_encoders or (one_encoder and len(widths) == 1 and counted == families):
        families = counted
    elif one_encoder:
        families -= counted
    return families, " or ".join(FAMILIES[name].title for name in sorted(families)) or "no model lowvram knows"


def _clip_l_renames(bases: list[str], families: set[str] | None) -> dict[str, str]:
    """Where every file is for a family of two text encoders, its lora_te_ layers (CLIP-L's, as ComfyUI reads
    them) under kohya's lora_te1_ name, so that they add up with other files' lora_te1_ layers."""
    from lowvram.models import FAMILIES

    if not families or not all(FAMILIES.get(name) and len(FAMILIES[name].text_encoders) == 2 for name in families):
        return {}
    return {base: "lora_te1_" + base.removeprefix("lora_te_") for base in bases if base.startswith("lora_te_")}


def _renamed(tensors: dict, renames: dict[str, str]) -> dict:
    """The tensors with their layers' key prefixes renamed."""
    out = {}
    for key, tensor in tensors.items():
        base, _, suffix = key.partition(".")
        out[f"{renames.get(base, base)}.{suffix}"] = tensor
    return out


def _metadata(read: list, output: Path, rank: int, dynamic: str | None, param: float | None, after: list[int],
              shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """What the sources agree on, the merged network as kohya's svd_merge_lora writes it, and a modelspec block
    titled by the output's name that names the sources (where they say what model they are for)."""
    said = {key: [meta.get(key) for _, _, meta, _, _ in read if key in meta or key not in SAID_BY_SOME]
            for key in SHARED_METADATA}
    shared = {key: values[0] for key, values in said.items() if values and values[0] is not None
              and values.count(values[0]) == len(values)}
    dim = str(after[0]) if len(set(after)) == 1 and not dynamic else "Dynamic"
    how = f"{dynamic} {param:g}, at most rank {rank}" if dynamic else f"rank {rank}"
    parts = ", ".join(f"{path.name} x{weight:g}" for path, weight, *_ in read)
    merged = shared | {"ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": dim,
                       "ss_training_comment": f"merged by lowvram merge from {parts} ({how})"} | _prompted_by(read)
    merged |= base_model_metadata(merged, shapes)
    architecture = shared.get("modelspec.architecture")
    if architecture is None:
        return merged
    return merged | modelspec(architecture, output.stem, shared.get("modelspec.resolution"),
                              shared.get("modelspec.prediction_type"),
                              ", ".join(title_of(path, meta) for path, _, meta, _, _ in read))


def _prompted_by(read: list) -> dict[str, str]:
    """What LoRA managers show as the merged file's trigger words and tags: the sources' trigger phrases, and their
    tag frequencies by file and folder (kohya's svd_merge_lora writes neither, and the merged file showed none)."""
    triggers, tags = [], {}
    for path, weight, meta, _, _ in read:
        if weight <= 0:  # (a LoRA subtracted brings none of its words)
            continue
        triggers += [word.strip() for word in trigger_words(meta).split(",") if word.strip()]  # ("a, b" and "b")
        try:
            frequency = json.loads(meta.get("ss_tag_frequency") or "{}")
        except ValueError:
            continue
        if isinstance(frequency, dict):
            tags |= {f"{path.stem}/{folder}": counts for folder, counts in frequency.items()}
    return ({"modelspec.trigger_phrase": ", ".join(dict.fromkeys(triggers))} if triggers else {}) | (
        {"ss_tag_frequency": json.dumps(tags)} if tags else {})


def parse_sources(texts: list[str]) -> tuple[list[tuple[Path, float]], list[str]]:
    """Each FILE:WEIGHT read, and one line for each that names no weight or no file."""
    sources, problems = [], []
    for text in texts:
        try:
            sources.append(parse_source(text))
        except LowvramError as exc:
            problems.append(str(exc))
    missing = [f"{path}: a diffusers model, not a LoRA; give it as --model (merge --model {shell_line(path)} "
               f"[LoRA FILEs] --output FILE, no --rank: the LoRAs fused into it, or it converted alone)"
               if (path / "model_index.json").is_file() else f"{path}: a folder; {lora_in_folder(path)}"
               if path.is_dir() else f"{path}: file not found; give a LoRA .safetensors file"
               for path, _ in sources if not path.is_file()]
    return sources, problems + missing


def run(args: argparse.Namespace) -> Resized:
    """`lowvram merge`, its options checked first (one line each)."""
    sources, problems = parse_sources(args.lora)
    # (it wrote a LoRA of zeros, "kept 100.0%", that still named its trigger words; fused into a model, one of weight
    # 0 is the model as it is, its file's marks its own)
    problems += [f"{path}:0: a weight of 0 adds nothing to the merge; drop the file, or give it a weight"
                 for path, weight in sources if weight == 0]
    if not args.lora:
        raise LowvramError("give the LoRA files to merge (FILE[:WEIGHT] ... --rank N), or --model MODEL --output FILE "
                           "to convert a model alone")
    if args.rank is None:
        if not any("a diffusers model, not a LoRA" in problem for problem in problems):  # (converting: no rank)
            problems.append("--rank: give the merged file's rank (or --model to fuse the LoRAs into a model instead)")
        args.rank = 1  # the other options are still checked
    output = args.output or Path("merged.safetensors")
    problems += option_problems(args, output, [path for path, _ in sources])
    if problems:
        raise LowvramError("\n".join(problems))
    return merge_files(sources, args.rank, output, args.dynamic, args.dynamic_param, args.conv_rank,
                       args.save_precision)
