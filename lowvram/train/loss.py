"""The diffusion training objective: DDPM noising, epsilon or v target, min-SNR weighting, noise offset, input
perturbation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr


def sample_noise(latents: torch.Tensor, noise_offset: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise; with an offset, plus a per-channel constant so the model can shift overall brightness."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        noise += noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator,
                                            device=latents.device, dtype=latents.dtype)
    return noise


def sample_timesteps(scheduler, batch: int, device: torch.device, generator: torch.Generator | None = None):
    return torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator, device=device)


def diffusion_loss(unet: torch.nn.Module, scheduler, latents: torch.Tensor, conditioning: dict,
                   noise: torch.Tensor, timesteps: torch.Tensor, min_snr_gamma: float | None = None,
                   weights: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   perturbation: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the U-Net's prediction for the noised latents and its target (noise or velocity).

    `weights` scale each sample (regularization images); `mask` (B, 1, h, w) in [0, 1] restricts the loss
    to the opaque part of an image (alpha as loss mask); `perturbation` is added to the noise the input gets,
    not to the one the target is made of (input perturbation, Ning et al. 2023)."""
    noisy = scheduler.add_noise(latents, noise if perturbation is None else noise + perturbation, timesteps)
    prediction_type = scheduler.config.prediction_type
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, **conditioning).sample
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if mask is None:
        loss = error.mean(dim=(1, 2, 3))
    else:
        mask = mask.to(error)
        loss = (error * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * error.shape[1]).clamp(min=1)
    if min_snr_gamma:
        snr = compute_snr(scheduler, timesteps)
        weight = snr.clamp(max=min_snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)
        loss = loss * weight
    if weights is not None:
        loss = loss * weights.to(loss)
    return loss.mean()
