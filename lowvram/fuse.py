"""`lowvram merge --model BASE style.safetensors:0.8 ...`: LoRA files fused into a model's weights, as kohya's
merge_lora.py (`--sd_model`) makes a checkpoint that needs no LoRA loader. Each file is applied by lowvram's
reader (LoRA, LoCon, DoRA, LoHa or LoKr, lowvram's or another trainer's) at its weight and merged by peft, one
file after another, on the CPU; no GPU is needed.

The result keeps the model's form. A single-file checkpoint is rewritten key for key: the weights the LoRAs
changed take their new values in the file's own layout and dtype, and every other tensor (EMA weights, extra
buffers, the VAE) is kept as it was, bit for bit. A diffusers folder is saved as a folder (save_pretrained). An
`--output` ending in .safetensors from a folder or a hub model writes the original single-file layout, the one
ComfyUI and AUTOMATIC1111 load.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lowvram.errors import PICKLE_SUFFIXES, LowvramError
from lowvram.files import output_problem
from lowvram.merge import parse_sources

if TYPE_CHECKING:
    import torch

    from lowvram.models.loading import LoadedModel


@dataclass(frozen=True)
class Fused:
    path: Path
    layers: list[int]  # each file's changed layers, in order
    tensors_changed: int  # the checkpoint's tensors that differ from the model's
    schedule: tuple[str, ...] | list[str] = ()  # the sampling a fused LoRA was trained with and the model now carries
    marks_unread: bool = False  # where ComfyUI does not read the file's marks of it (SD1.5's: its SDXL class alone does)


def fuse_into_model(model_name: str, sources: list[tuple[Path, float]], output: Path, family: str | None = None,
                    precision: str | None = None) -> Fused:
    """Write `model_name` with `sources`' LoRAs (each at its weight) fused in to `output`: a .safetensors file or
    a diffusers folder. `precision` (fp16, bf16, fp32) casts every floating tensor; by default a single file keeps
    its dtypes, a diffusers folder takes the one most of its weights have, a hub model is written in fp16 and a
    built-in one (tiny) in fp32, as it trains (in fp16, transformers 5 loads its text encoder so beside an fp32 U-Net,
    and a pipeline on the CPU failed)."""
    from lowvram.adapters.lora_files import load_kohya
    from lowvram.adapters.networks import fuse_adapters
    from lowvram.models.detect import detect_family, stored_precision
    from lowvram.models.families import SCHEDULE_MARKERS
    from lowvram.models.loading import follow_lora_schedule, load_model
    from lowvram.precision import DTYPES

    detect_family(model_name, family)  # a broken or foreign file: its one line, before its header is read
    single = Path(model_name).suffix.lower() == ".safetensors" and Path(model_name).is_file()
    working = precision or stored_precision(model_name)  # (a folder's .fp16 variants are not what loading reads)
    model = load_model(model_name, family, dtype=DTYPES[working])
    layers, schedule = [], []
    for path, weight in sources:
        load_kohya(model, path, flag="FILE")  # merge's positional FILEs
        fused = sum(fuse_adapters(module, weight) for module in [model.unet, *model.text_encoders])
        layers.append(fused if weight else 0)  # (at weight 0, fused in as nothing: "40 layers" said otherwise)
        # a v-prediction LoRA fused into an epsilon model makes a v-prediction model: marked so, as the LoRA's own
        # loading samples it (clip skip is a loader's setting, not the model's)
        changes, other_model = follow_lora_schedule(model, path) if weight else ([], "")
        schedule += [change for change in changes if change in SCHEDULE_MARKERS and change not in schedule]
        if other_model:
            print(other_model)
    if output.suffix.lower() != ".safetensors":  # (save_pretrained writes the scheduler's config as changed)
        return Fused(_save_folder(model, output, DTYPES[working]), layers, 0, schedule)
    converted = _original_layout(model)
    if single:
        tensors, changed = _rewritten(Path(model_name), converted, DTYPES[working], precision)
    else:
        tensors, changed = converted, 0
    from lowvram.files import save_safetensors

    metadata = _file_metadata(Path(model_name)) if single else {}
    parts = ", ".join(f"{path.name} x{weight:g}" for path, weight in sources)
    if parts:
        metadata["lowvram.fused_loras"] = parts
    metadata |= _merged_modelspec(model, Path(model_name), metadata, sources, output)
    import torch

    for change in schedule:  # the keys ComfyUI and lowvram read (NoobAI-XL V-Pred's)
        tensors.setdefault(SCHEDULE_MARKERS[change], torch.tensor([]))
    save_safetensors(tensors, output, metadata, "the merged model")
    return Fused(output, layers, changed, schedule, marks_unread=(model.family.full_size or model.family.name) != "sdxl")


def _merged_modelspec(model: LoadedModel, base: Path, metadata: dict[str, str], sources: list[tuple[Path, float]],
                      output: Path) -> dict[str, str]:
    """modelspec of the merged checkpoint as kohya's merge_lora writes it: titled by its own file (the base's title
    named it: a model manager listed the merge as the base), merged from the base and the LoRAs by their titles."""
    from safetensors import safe_open

    from lowvram.lora_metadata import modelspec, title_of

    # (a folder's or hub id's whole name: my-model-v1.5, stable-diffusion-xl-base-1.0, not cut at its last dot)
    titles = [title_of(base, metadata) if base.is_file() else metadata.get("modelspec.title") or base.resolve().name
              if base.exists() else base.name]
    for path, _ in sources:
        with safe_open(str(path), framework="pt") as handle:
            titles.append(title_of(path, handle.metadata() or {}))
    family = model.family
    prediction = "v" if model.pipeline.scheduler.config.get("prediction_type") == "v_prediction" else "epsilon"
    # a model converted alone is the same model: its own title kept, merged from nothing
    return modelspec(family.modelspec_architecture.removesuffix("/lora"), output.stem if sources else titles[0],
                     f"{family.resolution}x{family.resolution}", prediction, ", ".join(titles) if sources else None)


def _original_layout(model: LoadedModel) -> dict[str, torch.Tensor]:
    from lowvram.models.ldm_layout import sd15_single_file, sdxl_single_file

    if len(model.text_encoders) == 2:
        return sdxl_single_file(model.unet, model.vae, *model.text_encoders)
    return sd15_single_file(model.unet, model.vae, model.text_encoders[0])


def _rewritten(path: Path, converted: dict[str, torch.Tensor], working: torch.dtype, precision: str | None
               ) -> tuple[dict[str, torch.Tensor], int]:
    """`path`'s tensors, each replaced by its converted value where that differs at the `working` dtype (the LoRAs
    changed it) and kept as the file has it otherwise; all cast to `precision` if given. A weight the conversion
    has and the file lacks would be lost: its layout is not the one lowvram writes, and that is refused."""
    import torch
    from safetensors import safe_open

    from lowvram.precision import DTYPES

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        held = set(keys)
        absent = sorted(key for key in converted if key not in held and not key.endswith("logit_scale"))
        if absent:
            raise LowvramError(f"--model: {path} names its weights otherwise than the layout lowvram writes (no "
                               f"{absent[0]}); give --output a folder name for a diffusers folder instead")
        tensors, changed = {}, 0
        for key in keys:
            tensor = handle.get_tensor(key)
            new = converted.get(key)
            if new is not None and new.numel() == tensor.numel():
                new = new.reshape(tensor.shape)
                if not torch.equal(new.to(working), tensor.to(working)):
                    tensor = new.to(tensor.dtype)
                    changed += 1
            tensors[key] = tensor.to(DTYPES[precision]) if precision and tensor.is_floating_point() else tensor
    return tensors, changed


def _save_folder(model: LoadedModel, output: Path, dtype: torch.dtype) -> Path:
    """The pipeline as a diffusers folder, written beside `output` and renamed into place when complete; a disk
    that fills up meanwhile leaves nothing behind and says so in one line."""
    from lowvram.files import DiskFull, ensure_room, free_bytes, is_disk_full, is_size_limit, with_plain_modes

    size = sum(p.numel() * dtype.itemsize for name, part in model.pipeline.components.items()
               if hasattr(part, "parameters") for p in part.parameters())
    output.parent.mkdir(parents=True, exist_ok=True)
    ensure_room(output.parent, size, "the merged model")
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.pipeline.save_pretrained(str(partial), safe_serialization=True)
        with_plain_modes(partial)
        if output.exists():
            shutil.rmtree(output)
        partial.rename(output)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if is_disk_full(exc):
            raise DiskFull(output.parent, size, free_bytes(output.parent), "the merged model",
                           is_size_limit(exc)) from None
        raise
    return output


def _file_metadata(path: Path) -> dict[str, str]:
    """The checkpoint's metadata, less the hashes of its old tensors (kohya's sshs_*, modelspec.hash_*)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: value for key, value in (handle.metadata() or {}).items()
                if not key.startswith(("sshs_", "modelspec.hash"))}


def run(args: argparse.Namespace) -> Fused:
    """`lowvram merge --model`, its options checked first (one line each)."""
    sources, problems = parse_sources(args.lora)
    for flag, given in (("--rank", args.rank), ("--conv-rank", args.conv_rank), ("--dynamic", args.dynamic),
                        ("--dynamic-param", args.dynamic_param), ("--verbose", args.verbose or None)):
        if given is not None:
            problems.append(f"{flag}: with --model the LoRAs are added to the model's weights whole; drop {flag}")
    single = Path(args.model).suffix.lower() == ".safetensors"
    output = args.output or Path("merged.safetensors" if single else "merged")
    if output.is_dir() and not (output / "model_index.json").is_file() and output.resolve().name:  # a folder of
        # the user's (ComfyUI's models/checkpoints): the model written into it as one file, never the folder replaced
        own = (Path(args.model).stem if single else Path(args.model).resolve().name if Path(args.model).exists()
               else Path(args.model).name) or "model"  # (--model .: the folder's own name)
        output = output / ("merged.safetensors" if args.lora else f"{own}.safetensors")
    if output.suffix.lower() in PICKLE_SUFFIXES:
        problems.append(f"--output: {output}: lowvram writes a .safetensors file or a diffusers folder (a name "
                        f"without extension), never a {output.suffix} pickle; name one of those")
    elif written := output_problem(output, [Path(args.model), *(path for path, _ in sources)], args.overwrite):
        problems.append(written)
    elif not output.name or output.name == ".." or not output.resolve().name:  # (Path(".").name is "")
        problems.append(f"--output {output}: name the model's own folder, e.g. {output / 'merged'}")
    if problems:
        raise LowvramError("\n".join(problems))
    return fuse_into_model(args.model, sources, output, args.model_family, args.save_precision)


def summary(result: Fused) -> str:
    changes = ", ".join(str(count) for count in result.layers)
    tail = f", {result.tensors_changed} of its tensors changed" if result.tensors_changed else ""
    marked = f"; marked {' and '.join(result.schedule)}, as its LoRAs trained" if result.schedule else ""
    if result.schedule and result.marks_unread:
        sampling = "v_prediction" if "v-prediction" in result.schedule else "eps"
        zsnr = "on" if "zero terminal SNR" in result.schedule else "off"
        a1111 = (f"; AUTOMATIC1111, beside it a {result.path.stem}.yaml: a copy of its configs/v1-inference.yaml with "
                 "parameterization: \"v\" under model.params" if sampling == "v_prediction" else "")
        marked += (f" (ComfyUI and AUTOMATIC1111 read these marks on SDXL models only: sample this one in ComfyUI "
                   f"through a ModelSamplingDiscrete node, sampling {sampling}, zsnr {zsnr}{a1111})")
    if not result.layers:
        return f"{result.path}: the model, converted (no LoRA fused in)"
    return f"{result.path}: the model with {len(result.layers)} LoRA file(s) fused in ({changes} layers{tail}){marked}"
