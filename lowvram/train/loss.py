"""The diffusion training objective: DDPM noising, epsilon or v target, noise offset, input perturbation, a
timestep range, the loss between prediction and target (squared, absolute or pseudo-Huber) and its weighting per
timestep (min-SNR, v-prediction's scales, debiased estimation)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from lowvram.adapters.networks import adapters_off
from lowvram.config import HUBER_C, HUBER_LOSSES, HUBER_SCHEDULES, RunConfig
from lowvram.timesteps import TimestepShape, timestep_weights

UNIFORM = TimestepShape()


@dataclass(frozen=True)
class Objective:
    """What the loss is and how each timestep's is weighed (the plain l2 loss by default)."""

    loss: str = "l2"  # l2, l1, huber or smooth_l1
    huber: tuple[float, str] = (HUBER_C, HUBER_SCHEDULES[0])  # the Huber threshold at the noisiest step, schedule
    min_snr_gamma: float | None = None
    debiased: bool = False  # weigh each timestep by 1/sqrt(SNR) (1/(SNR+1) for v-prediction)
    v_scaled_like_epsilon: bool = False  # weigh each timestep by SNR/(SNR+1)
    v_like: float = 0.0  # add this times the loss weighed by (SNR+1)/SNR
    masked_prior_weight: float = 0.0  # hold the area outside the mask to the model's own prediction, this much
    normalize_masked_area: bool = False  # a masked image's loss: the mean over its mask's area, not the image's

    @classmethod
    def of(cls, config: RunConfig) -> Objective:
        t = config.training
        return cls(t.loss, config.huber, t.min_snr_gamma, t.debiased_estimation, t.scale_v_pred_loss,
                   t.v_pred_like_loss, config.data.masked_prior_weight, config.data.normalize_masked_area_loss)

    def needs_own_prediction(self, mask: torch.Tensor | None, prior: torch.Tensor | None) -> bool:
        """Whether the loss compares with the model's own prediction without the adapters: for prior prediction
        rows, or for the area outside the masks."""
        return prior is not None or (mask is not None and self.masked_prior_weight > 0)


def sample_noise(latents: torch.Tensor, noise_offset: float, generator: torch.Generator | None = None,
                 multires: tuple[int, float] | None = None, offset_strength: torch.Tensor | None = None,
                 adaptive_scale: float = 0.0) -> torch.Tensor:
    """Gaussian noise; with an offset, plus a per-channel constant so the model can shift overall brightness (times
    `offset_strength`, a scalar on the device, where given; plus `adaptive_scale` times each latent channel's
    absolute mean, never below 0, as kohya's adaptive noise scale adds it); with `multires` (iterations, discount),
    plus noise drawn at ever coarser scales (kohya's multires noise)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        offset = noise_offset if offset_strength is None else noise_offset * offset_strength.to(latents.dtype)
        if adaptive_scale:
            offset = (offset + adaptive_scale * latents.mean(dim=(2, 3), keepdim=True).abs()).clamp(min=0)
        noise += offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=latents.device,
                                      dtype=latents.dtype)
    if multires:
        noise = pyramid_noise(noise, *multires, generator)
    return noise


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise plus `iterations` more, the i-th drawn at a scale 1/r^i for a random r in [2, 4), scaled up to the
    latent's size and weighed by discount^i, all rescaled to unit variance: the low frequencies plain noise barely
    has (Whitaker's pyramid noise, as kohya's --multires_noise_iterations adds it). The factors come from torch's
    CPU generator, whose state checkpoints keep, so a resumed run draws the same."""
    height, width = noise.shape[-2:]
    for i, factor in enumerate((2 + 2 * torch.rand(iterations)).tolist()):
        coarse = (max(1, int(height / factor**i)), max(1, int(width / factor**i)))
        drawn = torch.randn((*noise.shape[:2], *coarse), generator=generator, device=noise.device, dtype=noise.dtype)
        noise = noise + F.interpolate(drawn, size=(height, width), mode="bilinear") * discount**i
        if min(coarse) == 1:
            break
    return noise / noise.std()


def sample_timesteps(scheduler, batch: int, device: torch.device, generator: torch.Generator | None = None,
                     shape: TimestepShape = UNIFORM) -> torch.Tensor:
    """`batch` timesteps as `shape` says (lowvram.timesteps): uniform over its range by default."""
    count = scheduler.config.num_train_timesteps
    if shape.is_uniform():
        return torch.randint(*shape.span(count), (batch,), generator=generator, device=device)
    cdf = _timestep_cdf(shape, count, device)
    # inverse-CDF sampling: torch.multinomial would wait for the GPU to check its weights
    drawn = torch.rand(batch, generator=generator, device=device) * cdf[-1]
    return torch.searchsorted(cdf, drawn, right=True).clamp(max=count - 1)


@functools.lru_cache(maxsize=4)
def _timestep_cdf(shape: TimestepShape, count: int, device: torch.device) -> torch.Tensor:
    """The cumulative weights of the timesteps, worked out once per run and kept on the device."""
    return torch.tensor(timestep_weights(shape, count), dtype=torch.float64).cumsum(0).float().to(device)


def huber_threshold(scheduler, timesteps: torch.Tensor, c: float, schedule: str) -> torch.Tensor:
    """Per sample, where the pseudo-Huber loss turns from squared to linear: 1 at the least noisy timestep, `c` at
    the noisiest; in between following the noise level (snr), geometrically in the timestep (exponential), or
    `c` throughout (constant). kohya's --huber_schedule."""
    if schedule == "constant":
        return torch.full(timesteps.shape, c, device=timesteps.device)
    if schedule == "exponential":
        return c ** (timesteps.float() / scheduler.config.num_train_timesteps)
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    return (1 - c) / (1 + sigmas) ** 2 + c


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss: str,
                     threshold: torch.Tensor | None = None) -> torch.Tensor:
    """l2, l1, or the pseudo-Huber losses: huber (2c(sqrt(d^2 + c^2) - c), ~d^2 near 0 and 2c|d| far out) and
    smooth_l1 (the same divided by c), with the per-sample threshold c."""
    if loss == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    c = threshold.view(-1, *[1] * (prediction.dim() - 1))
    squared = (prediction - target) ** 2
    pseudo = 2 * squared / ((squared + c**2).sqrt() + c)  # = 2(sqrt(d^2 + c^2) - c), without its cancellation
    return c * pseudo if loss == "huber" else pseudo


def _masked_mean(error: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Each sample's error weighed by its mask: the mean over the whole image, as kohya and OneTrainer take it (a
    small mask weighs less), or with `normalize` the mean over the area the mask weighs (OneTrainer's
    normalize_masked_area_loss; nothing where the mask is empty)."""
    if not normalize:
        return (error * mask).mean(dim=(1, 2, 3))
    return (error * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * error.shape[1]).clamp(min=1)


def diffusion_loss(unet: torch.nn.Module, scheduler, latents: torch.Tensor, conditioning: dict,
                   noise: torch.Tensor, timesteps: torch.Tensor, objective: Objective = Objective(),
                   weights: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   perturbation: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                   prior_conditioning: dict | None = None, unet_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The `objective`'s loss between the U-Net's prediction for the noised latents and its target (noise or
    velocity).

    `weights` scale each sample (regularization images); `mask` (B, 1, h, w) in [0, 1] restricts the loss
    to the opaque part of an image (alpha as loss mask); `perturbation` is added to the noise the input gets,
    not to the one the target is made of (input perturbation, Ning et al. 2023). The `prior` rows (B,) bool take
    the model's own prediction without the adapters as their target (prior prediction), conditioned on
    `prior_conditioning` (the text encoders' without their adapters) where it differs from `conditioning`; with
    the objective's masked prior weight, the area outside the mask is held to that prediction too (OneTrainer's
    masked prior preservation), each part's loss weighed as `_masked_mean` says.

    The noising and the target are computed in the latents' dtype (fp32: in bf16, SD's alphas_cumprod at the two
    least noisy timesteps round to 1 and the U-Net would be shown clean latents), the U-Net given its input in
    `unet_dtype`, where that is another."""
    noisy = scheduler.add_noise(latents, noise if perturbation is None else noise + perturbation, timesteps)
    noisy = noisy if unet_dtype is None else noisy.to(unet_dtype)
    prediction_type = scheduler.config.prediction_type
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    own = None
    if objective.needs_own_prediction(mask, prior):  # before the training forward: their activations never meet
        with torch.no_grad(), adapters_off(unet):
            own = unet(noisy, timesteps, **(prior_conditioning or conditioning)).sample.float()
    if prior is not None:
        target = torch.where(prior[:, None, None, None], own.to(target.dtype), target)
    prediction = unet(noisy, timesteps, **conditioning).sample
    huber = objective.loss in HUBER_LOSSES
    threshold = huber_threshold(scheduler, timesteps, *objective.huber) if huber else None
    error = elementwise_loss(prediction.float(), target.float(), objective.loss, threshold)
    if mask is None:
        loss = error.mean(dim=(1, 2, 3))
    else:
        mask = mask.to(error)
        loss = _masked_mean(error, mask, objective.normalize_masked_area)
        if objective.masked_prior_weight:  # the rest of the image held to what the model did before
            kept = elementwise_loss(prediction.float(), own, objective.loss, threshold)
            loss = loss + objective.masked_prior_weight * _masked_mean(kept, 1 - mask, objective.normalize_masked_area)
    if objective.min_snr_gamma or objective.v_scaled_like_epsilon or objective.v_like or objective.debiased:
        snr = compute_snr(scheduler, timesteps)
        capped = snr.clamp(max=1000)  # as kohya caps it for its weightings: a noiseless first step's is infinite
    if objective.min_snr_gamma:
        weight = snr.clamp(max=objective.min_snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)
        loss = loss * weight
    # kohya's order: min-SNR, the two v-prediction scales, then debiased estimation
    if objective.v_scaled_like_epsilon:
        loss = loss * capped / (capped + 1)
    if objective.v_like:
        loss = loss + objective.v_like * loss * (capped + 1) / capped
    if objective.debiased:
        loss = loss * (capped.rsqrt() if prediction_type == "epsilon" else 1 / (capped + 1))
    if weights is not None:
        loss = loss * weights.to(loss)
    return loss.mean()
