"""Sample images during/after training, one model part on the GPU at a time.

diffusers' pipelines want every component on one device; on a small card that means the text encoders,
the U-Net and the VAE together. Here each part visits the device for its own step: the text encoders
encode the prompts and leave, the U-Net denoises (classifier-free guidance), the VAE decodes and leaves.
So sampling never needs more memory than training plus the VAE decode.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lowvram.files import make_folders, save_image
from lowvram.memory import free_cached_memory
from lowvram.models.conditioning import DEFAULT_READING, encode_prompts, set_vae_tiling, unet_conditioning
from lowvram.models.families import prompt_reading
from lowvram.models.loading import LoadedModel
from lowvram.prompts import SamplePrompt, infotext, model_title, parse_prompt
from lowvram.run_files import final_sample
from lowvram.samplers import a1111_name, make_sampler, own_sampler

if TYPE_CHECKING:
    from PIL.Image import Image

GUIDANCE = 7.0


@contextmanager
def visiting(modules: list[torch.nn.Module], device: torch.device):
    """The modules on `device` for a while, then back home: after an out-of-memory error too, which training
    survives (a VAE left on a small card would take the next step's room)."""
    homes = [next(module.parameters()).device for module in modules]
    try:
        for module in modules:
            module.to(device)
        yield
    finally:
        for module, home in zip(modules, homes):
            module.to(home)


@torch.no_grad()
def render(model: LoadedModel, prompt: SamplePrompt | str, resolution: int, steps: int, seed: int,
           device: torch.device, autocast, embeddings: tuple | None = None) -> Image:
    """One image; the prompt's own options (negative prompt, size, steps, guidance, seed) override the
    arguments. `embeddings`: the (hidden, pooled) of [negative, prompt], encoded beforehand; else the text
    encoders visit the device to encode them."""
    prompt = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    family, pipeline, unet, vae = model.family, model.pipeline, model.unet, model.vae
    if embeddings is None:
        with visiting(model.text_encoders, device), autocast():
            hidden, pooled = encode_prompts(family, model.text_encoders, model.tokenizers,
                                            [prompt.negative, prompt.text], device,
                                            prompt_reading((model.text_reading or DEFAULT_READING).clip_skip))
    else:
        hidden, pooled = (None if t is None else t.to(device) for t in embeddings)
    if not prompt.negative and getattr(pipeline.config, "force_zeros_for_empty_prompt", False):
        hidden[0].zero_()  # SDXL's unconditional embedding, as its pipeline makes it
        if pooled is not None:
            pooled[0].zero_()

    width, height = prompt.size(resolution)
    guidance = GUIDANCE if prompt.guidance is None else prompt.guidance
    scheduler = make_sampler(pipeline.scheduler, prompt.sampler)
    scheduler.set_timesteps(prompt.steps or steps, device=device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    generator = torch.Generator("cpu").manual_seed(seed if prompt.seed is None else prompt.seed)
    shape = (1, unet.config.in_channels, height // factor, width // factor)
    latents = (torch.randn(shape, generator=generator) * scheduler.init_noise_sigma).to(device)
    time_ids = torch.tensor([[height, width, 0, 0, height, width]] * 2, dtype=torch.float32)
    conditioning = unet_conditioning(family, hidden, pooled, time_ids)
    # an ancestral sampler's noise comes from the seed too, not from the global generator training draws from
    seeded = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        with autocast():
            uncond, cond = unet(model_input, t, **conditioning).sample.float().chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents, **seeded).prev_sample

    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with visiting([vae], device):  # outside autocast: SDXL's VAE overflows in fp16 and is kept in fp32
        image = decode(vae, latents.to(vae.dtype) / vae.config.scaling_factor + shift, device)
    return pipeline.image_processor.postprocess(image.float(), output_type="pil")[0]


def decode(vae: torch.nn.Module, latents: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The VAE's decode, whole, or in tiles where whole it runs out of memory (SDXL's 1024 px decode in fp32 takes
    3 GiB; the planner counts the tiles there): the training's latents stay encoded as they were."""
    if getattr(vae, "use_tiling", False):
        return vae.decode(latents).sample
    try:
        return vae.decode(latents).sample
    except torch.OutOfMemoryError:
        pass  # (left before retrying: the failed decode's tensors go with the exception)
    free_cached_memory(device)
    set_vae_tiling(vae, True)
    try:
        return vae.decode(latents).sample
    finally:
        set_vae_tiling(vae, False)


def render_images(model: LoadedModel, prompts: tuple[SamplePrompt, ...], resolution: int, steps: int, seed: int,
                  accelerator, embeddings: list[tuple] | None = None) -> list[Image]:
    """One seeded image per prompt (seed + its index, unless it sets its own). `embeddings`: each prompt's
    (hidden, pooled) of its negative and itself, from the caching phase, so the text encoders need not come back
    to the device."""
    return [render(model, prompt, resolution, steps, seed + i, accelerator.device, accelerator.autocast,
                   embeddings[i] if embeddings is not None else None) for i, prompt in enumerate(prompts)]


def render_samples(model: LoadedModel, prompts: tuple[SamplePrompt, ...], folder: Path, name: str, resolution: int,
                   steps: int, seed: int, accelerator, embeddings: list[tuple] | None = None,
                   lora: tuple[Path, str] | None = None, model_name: str = "",
                   drawing: Callable[[int, int], None] | None = None) -> list[Path]:
    """The final samples: `<folder>/<name>-NN.png`, one per prompt. `lora`: the LoRA file they show and its addnet
    hash, which each image's parameters name as AUTOMATIC1111 writes them (a model site links an uploaded sample to
    the LoRA and base model by them), with the base model's `model_name` (and hash, for a single file). A sample
    there already with the same parameters (a finished run resumed: the same LoRA, prompt and seed) is kept, not
    drawn again. `drawing` is told of each sample drawn (its place from 1, and how many there are) before it is."""
    from PIL import Image as PILImage

    if not prompts:  # (no samples/ folder of nothing)
        return []
    make_folders(folder)
    paths = []
    sampler = own_sampler(model.pipeline.scheduler)
    for i, prompt in enumerate(prompts):
        paths.append(folder / final_sample(name, i))
        drawn = replace(prompt, guidance=GUIDANCE if prompt.guidance is None else prompt.guidance)
        made_with = lora and infotext(
            drawn, [(lora[0], 1.0)], {lora[0]: lora[1]}, prompt.steps or steps, a1111_name(prompt.sampler or sampler),
            seed + i if prompt.seed is None else prompt.seed, prompt.size(resolution), model_title(model_name),
            (model.text_reading or DEFAULT_READING).clip_skip, model.hash if Path(model_name).is_file() else "")
        if made_with and paths[-1].is_file():
            with PILImage.open(paths[-1]) as held:
                if held.text.get("parameters") == made_with:
                    continue
        if drawing is not None:
            drawing(i + 1, len(prompts))
        image = render(model, prompt, resolution, steps, seed + i, accelerator.device, accelerator.autocast,
                       embeddings[i] if embeddings is not None else None)
        save_image(image, paths[-1], "a sample image", made_with or None)
    return paths


def render_grid(model: LoadedModel, prompts: tuple[SamplePrompt, ...], path: Path, resolution: int, steps: int,
                seed: int, accelerator, embeddings: list[tuple] | None = None) -> Path:
    """The samples of one point in training side by side in one image, top-aligned when their sizes differ
    (same seeds every time, so grids of successive steps show what training changed)."""
    return save_grid(render_images(model, prompts, resolution, steps, seed, accelerator, embeddings), path)


def save_grid(images: list[Image], path: Path) -> Path:
    """The images side by side in one image at `path`, top-aligned when their sizes differ."""
    from PIL import Image as PILImage

    grid = PILImage.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
    x = 0
    for image in images:
        grid.paste(image, (x, 0))
        x += image.width
    return save_image(grid, path, "a sample grid")
