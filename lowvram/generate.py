"""`lowvram generate`: render images from a base model with LoRAs applied, as training renders its samples: one
model part on the GPU at a time (the text encoders encode and leave, the U-Net denoises, the VAE decodes and
leaves), so it runs on the cards lowvram trains on, and a prompt and seed give the image a training sample gave.
Prompts are read as AUTOMATIC1111 reads them: `(emphasis:1.2)`, BREAK, and long ones in 75-token chunks."""

from __future__ import annotations

import argparse
import math
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from lowvram.errors import LowvramError
from lowvram.files import save_image
from lowvram.hardware import detect
from lowvram.merge import parse_source
from lowvram.models.conditioning import weighted_tokens
from lowvram.models.families import CHUNK_TOKENS, DEFAULT_READING, TextReading
from lowvram.models.loading import LoadedModel, load_model, zero_terminal_snr_sampler
from lowvram.prompts import parse_prompt
from lowvram.samplers import sampler_problem
from lowvram.train.sampling import render


def generate(args: argparse.Namespace) -> list[Path]:
    """Render `--count` images; the prompt's kohya-style inline options (--n --w --h --s --l --d --ss) win over
    the flags that say the same."""
    try:
        prompt = parse_prompt(args.prompt, args.sampler)
    except ValueError as exc:
        raise LowvramError(f"--prompt: {exc}") from None
    hardware = detect()
    device = torch.device(hardware.device)
    dtype = torch.float32 if device.type == "cpu" else (torch.bfloat16 if hardware.bf16 else torch.float16)
    model = load_model(args.model, args.model_family, dtype=dtype)
    if args.lora:
        apply_loras(model, [parse_source(text, args.weight) for text in args.lora])
    if prompt.sampler:
        problem = sampler_problem(prompt.sampler, bool(model.pipeline.scheduler.config.get("rescale_betas_zero_snr")))
        if problem:
            raise LowvramError(f"--sampler: {problem}")
    seed = args.seed if prompt.seed is None else prompt.seed
    prompt = replace(prompt, negative=prompt.negative or args.negative_prompt or "", seed=None,
                     guidance=args.guidance if prompt.guidance is None else prompt.guidance)
    reading = model.text_reading or DEFAULT_READING
    model.text_reading = TextReading(CHUNK_TOKENS * _chunks(model, [prompt.text, prompt.negative]),
                                     args.clip_skip or reading.clip_skip, weighted=True)
    model.unet.to(device)
    if dtype == torch.float16 and getattr(model.vae.config, "force_upcast", False):
        model.vae.to(torch.float32)  # SDXL's VAE overflows in fp16, as its pipeline knows
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if device.type != "cpu" else nullcontext
    paths = []
    for i in range(args.count):
        image = render(model, prompt, args.resolution or model.family.resolution, prompt.steps or args.steps,
                       seed + i, device, autocast)
        path = args.output if args.count == 1 else args.output.with_name(f"{args.output.stem}-{i:02d}{args.output.suffix}")
        paths.append(save_image(image, path, "the image"))
    return paths


def _chunks(model: LoadedModel, texts: list[str]) -> int:
    """How many 75-token chunks the longest of `texts` needs, as AUTOMATIC1111 sizes a prompt (no limit)."""
    longest = max(len(weighted_tokens(text, model.tokenizers[0])[0]) for text in texts)
    return max(1, math.ceil(longest / CHUNK_TOKENS))


def apply_loras(model: LoadedModel, sources: list[tuple[Path, float]]) -> None:
    """Apply each LoRA file at its strength. One file stays a separate adapter. Several stack as ComfyUI and
    AUTOMATIC1111 stack them: those lowvram's reader applies are fused into the weights one after another (its
    adapters share one name), then diffusers' adapters for the rest are set side by side, each at its weight."""
    from lowvram.adapters.lora_files import DIFFUSERS_WEIGHTS

    # a diffusers LoRA folder (train --format diffusers writes one) by the weights file in it
    sources = [(path / DIFFUSERS_WEIGHTS if (path / DIFFUSERS_WEIGHTS).is_file() else path, weight)
               for path, weight in sources]
    for path, _ in sources:
        if not path.is_file():
            raise LowvramError(f"--lora: file not found: {path}")
        if path.suffix.lower() != ".safetensors":
            raise LowvramError(f"--lora: {path} is not a .safetensors file")
    for path, _ in sources:
        for change in follow_lora_schedule(model, path):
            print(f"{path.name} was trained with {change}: sampling with it too")
    from lowvram.adapters.lora_files import load_kohya
    from lowvram.adapters.networks import fuse_adapters

    by_peft = [_read_with_peft(path) for path, _ in sources]
    for (path, weight), ours in zip(sources, by_peft):
        if ours:
            load_kohya(model, path, weight)
            if len(sources) > 1:
                for module in (model.unet, *model.text_encoders):
                    fuse_adapters(module)
    theirs = [source for source, ours in zip(sources, by_peft) if not ours]
    names = ["lora"] + [f"lora{i}" for i in range(1, len(theirs))]
    for name, (path, _) in zip(names, theirs):
        try:
            model.pipeline.load_lora_weights(str(path), adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise LowvramError(f"--lora: {path} does not fit {model.family.title}: "
                               f"{str(exc).splitlines()[0]}") from None
    if theirs:
        model.pipeline.set_adapters(names[: len(theirs)], adapter_weights=[weight for _, weight in theirs])


def follow_lora_schedule(model: LoadedModel, lora: Path) -> list[str]:
    """A LoRA trained with v-prediction, zero terminal SNR or clip skip (its modelspec.prediction_type,
    ss_zero_terminal_snr and ss_clip_skip) where the base model's own reading says otherwise: the sampler and the
    text reading are set to what training used. What was changed, in words."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(lora), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError):
        return []  # _lycoris_kind names the unreadable file
    scheduler, changes = model.pipeline.scheduler, []
    if metadata.get("modelspec.prediction_type") == "v" and scheduler.config.prediction_type != "v_prediction":
        scheduler.register_to_config(prediction_type="v_prediction")
        changes.append("v-prediction")
    if metadata.get("ss_zero_terminal_snr") == "True" and not scheduler.config.get("rescale_betas_zero_snr"):
        model.pipeline.scheduler = zero_terminal_snr_sampler(scheduler)
        changes.append("zero terminal SNR")
    skip = metadata.get("ss_clip_skip", "")
    reading = model.text_reading or DEFAULT_READING
    if skip.isdigit() and int(skip) > 1 and model.family.text_encoders[0].hidden_state == -1 and reading.clip_skip == 1:
        model.text_reading = replace(reading, clip_skip=int(skip))  # SDXL reads its penultimate layer already
        changes.append(f"clip skip {skip}")
    return changes


def _read_with_peft(path: Path) -> bool:
    """Whether lowvram's own reader applies the file: a DoRA, LoHa or LoKr (diffusers drops or refuses them), a
    file lowvram wrote (its reader is the exact inverse of the writer), or one whose alphas differ between layers
    (diffusers' kohya converter misplaces the alphas of attention layers, which shows then). Other plain LoRAs go
    through diffusers."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            ours = "lowvram.network" in (f.metadata() or {})
            ours |= len({float(f.get_tensor(key)) for key in keys if key.endswith(".alpha")}) > 1
    except (OSError, SafetensorError) as exc:  # truncated, or not safetensors at all: one line, as train says it
        raise LowvramError(f"--lora: {path} is not a readable .safetensors file ({str(exc).splitlines()[0]}); "
                           "pass a LoRA .safetensors file") from None
    return ours or any(marker in key for key in keys for marker in (".hada_w1_a", ".lokr_w", ".dora_scale"))
