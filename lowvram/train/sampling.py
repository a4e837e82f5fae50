"""Sample images during/after training, one model part on the GPU at a time.

diffusers' pipelines want every component on one device; on a small card that means the text encoders,
the U-Net and the VAE together. Here each part visits the device for its own step: the text encoders
encode the prompts and leave, the U-Net denoises (classifier-free guidance), the VAE decodes and leaves.
So sampling never needs more memory than training plus the VAE decode.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lowvram.models.loading import LoadedModel
from lowvram.train.conditioning import encode_prompts, unet_conditioning

if TYPE_CHECKING:
    from PIL.Image import Image

GUIDANCE = 7.0


def _visit(modules: list[torch.nn.Module], device: torch.device):
    for module in modules:
        module.to(device)


@torch.no_grad()
def render(model: LoadedModel, prompt: str, resolution: int, steps: int, seed: int, device: torch.device,
           autocast, embeddings: tuple | None = None) -> Image:
    """One image. `embeddings`: the (hidden, pooled) of ["", prompt], encoded beforehand; else the text
    encoders visit the device to encode them."""
    family, pipeline, unet, vae = model.family, model.pipeline, model.unet, model.vae
    home = next(vae.parameters()).device
    if embeddings is None:
        text_home = next(model.text_encoders[0].parameters()).device
        _visit(model.text_encoders, device)
        with autocast():
            hidden, pooled = encode_prompts(family, model.text_encoders, model.tokenizers, ["", prompt], device,
                                            model.max_token_length)
        _visit(model.text_encoders, text_home)
    else:
        hidden, pooled = (None if t is None else t.to(device) for t in embeddings)
    if getattr(pipeline.config, "force_zeros_for_empty_prompt", False):  # SDXL's unconditional embedding
        hidden[0].zero_()
        if pooled is not None:
            pooled[0].zero_()

    scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, unet.config.in_channels, resolution // factor, resolution // factor)
    latents = (torch.randn(shape, generator=generator) * scheduler.init_noise_sigma).to(device)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * 2, dtype=torch.float32)
    conditioning = unet_conditioning(family, hidden, pooled, time_ids)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        with autocast():
            uncond, cond = unet(model_input, t, **conditioning).sample.float().chunk(2)
        latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents).prev_sample

    vae.to(device)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample  # outside autocast:
    vae.to(home)  # SDXL's VAE overflows in fp16 and is kept in fp32
    return pipeline.image_processor.postprocess(image.float(), output_type="pil")[0]


def render_images(model: LoadedModel, prompts: tuple[str, ...], resolution: int, steps: int, seed: int,
                  accelerator, embeddings: tuple | None = None) -> list[Image]:
    """One seeded image per prompt (seed + its index). `embeddings`: (hidden, pooled) of ["", *prompts] from
    the caching phase, so the text encoders need not come back to the device."""
    images = []
    for i, prompt in enumerate(prompts):
        pair = None
        if embeddings is not None:
            hidden, pooled = embeddings
            pick = torch.tensor([0, i + 1])
            pair = (hidden[pick], None if pooled is None else pooled[pick])
        images.append(render(model, prompt, resolution, steps, seed + i, accelerator.device, accelerator.autocast,
                             pair))
    return images


def render_samples(model: LoadedModel, prompts: tuple[str, ...], folder: Path, name: str, resolution: int,
                   steps: int, seed: int, accelerator, embeddings: tuple | None = None) -> list[Path]:
    """The final samples: `<folder>/<name>-NN.png`, one per prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(render_images(model, prompts, resolution, steps, seed, accelerator, embeddings)):
        paths.append(folder / f"{name}-{i:02d}.png")
        image.save(paths[-1])
    return paths


def render_grid(model: LoadedModel, prompts: tuple[str, ...], path: Path, resolution: int, steps: int, seed: int,
                accelerator, embeddings: tuple | None = None) -> Path:
    """The samples of one point in training side by side in one image (same seeds every time, so grids of
    successive steps show what training changed)."""
    from diffusers.utils import make_image_grid

    images = render_images(model, prompts, resolution, steps, seed, accelerator, embeddings)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(images, rows=1, cols=len(images)).save(path)
    return path
