"""Validation: the loss on held-out images at fixed timesteps with fixed noise, and early stopping on it.

Training loss is too noisy to say when a LoRA stops improving (each step draws a random timestep and random
noise). Validation removes that randomness: every held-out image is scored at the same evenly spread
timesteps with the same noise every time, so two validation losses differ only because the weights did.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from lowvram.data.augment import trained_text
from lowvram.data.dataset import Sample, TrainingData
from lowvram.models.conditioning import DEFAULT_READING, TextReading, encode_prompts, unet_conditioning
from lowvram.train.loss import Objective, diffusion_loss

# the plain loss, a masked image's over its mask's area: one yardstick for runs that differ in how they weigh masks
AREA_MEAN = Objective(normalize_masked_area=True)


def fixed_timesteps(count: int, lowest: int, end: int) -> list[int]:
    """`count` timesteps spread evenly over those trained, lowest to end (excluded), each in the middle of its
    share: a loss at a timestep no step trains says nothing of the training."""
    return [lowest + int((k + 0.5) * (end - lowest) / count) for k in range(count)]


@torch.no_grad()
def validation_loss(unet, noise_scheduler, family, data: TrainingData, samples: list[Sample], timesteps: list[int],
                    seed: int, device: torch.device, dtype: torch.dtype, autocast, text_encoders=None,
                    tokenizers=None, reading: TextReading = DEFAULT_READING) -> tuple[float, int]:
    """Sum and count of the losses of `samples` (each image at every fixed timestep, noise seeded per image
    and timestep). `text_encoders`: encode captions live (when they train), else use cached embeddings."""
    total, count = 0.0, 0
    for sample in samples:
        entry = data.latent_store.load(sample.latent_keys[0])
        latents = entry["latent"][None].to(device, torch.float32)  # noised in fp32, as training noises them
        if text_encoders is not None:
            with autocast():
                caption = trained_text(sample.caption, sample.captions or data.captions)  # as training reads it
                hidden, pooled = encode_prompts(family, text_encoders, tokenizers, [caption], device, reading)
        else:
            text = data.text_store.load(sample.text_keys[0])
            hidden = text["hidden"][None].to(device, dtype)
            pooled = text["pooled"][None].to(device, dtype) if text.get("pooled") is not None else None
        conditioning = unet_conditioning(family, hidden, pooled, entry["time_ids"][None].float())
        mask = entry.get("mask")  # strictly, without --unmasked-weight: one yardstick for runs that differ in it
        for t in timesteps:
            generator = torch.Generator().manual_seed(_noise_seed(seed, sample.latent_keys[0], t))
            noise = torch.randn(latents.shape, generator=generator).to(device)
            with autocast():
                loss = diffusion_loss(unet, noise_scheduler, latents, conditioning, noise,
                                      torch.tensor([t], device=device), AREA_MEAN,
                                      mask=mask[None].to(device) if mask is not None else None, unet_dtype=dtype)
            total += loss.item()
            count += 1
    return total, count


def _noise_seed(*parts) -> int:
    """A seed from the parts, the same in every process (Python's hash() of a string is not)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") % 2**63


@dataclass
class EarlyStopping:
    """Tracks the lowest validation loss (the best, kept as <name>-best); `stop` once `patience` validations in a
    row brought no improvement: a loss lower by more than `min_delta` than the last improvement's (`mark`), as
    Lightning's min_delta. A loss lower by less is still the best: -best is the lowest loss, whatever the delta."""

    patience: int | None
    min_delta: float = 0.0
    best: float = math.inf
    best_step: int = 0
    since_best: int = 0  # validations since the last improvement (by more than min_delta)
    history: list = field(default_factory=list)
    mark: float = math.inf  # the loss of the last improvement: the next must beat it by more than min_delta
    held_out: str | None = None  # which images and captions the losses score (`held_out_id`)
    restarted: bool = False  # a checkpoint's record was dropped: it scored other images

    def update(self, step: int, loss: float) -> bool:
        """Record a validation; True when it is a new best (the lowest loss yet)."""
        self.history.append((step, loss))
        if loss < self.mark - self.min_delta:
            self.mark, self.since_best = loss, 0
        else:
            self.since_best += 1
        if loss < self.best:
            self.best, self.best_step = loss, step
            return True
        return False

    def no_improvement(self) -> str:
        """What stopped the run, in words."""
        if not self.min_delta:
            return f"no better validation loss in {self.since_best} validations"
        return f"no validation loss lower than {self.mark:.5f} by more than {self.min_delta:g} in {self.since_best} " \
               "validations"

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def state(self) -> dict:
        return {"best": self.best if math.isfinite(self.best) else None, "best_step": self.best_step,
                "since_best": self.since_best, "history": self.history,
                "mark": self.mark if math.isfinite(self.mark) else None, "held_out": self.held_out}

    @classmethod
    def restore(cls, patience: int | None, min_delta: float, state: dict | None, held_out: str | None = None
                ) -> EarlyStopping:
        """The record a checkpoint kept; a fresh one where there is none, or where it scored other images than
        `held_out` (losses of another set compare with none of this one's)."""
        if not state:
            return cls(patience, min_delta, held_out=held_out)
        if held_out is not None and state.get("held_out") not in (None, held_out):
            return cls(patience, min_delta, held_out=held_out, restarted=True)
        held_out = held_out or state.get("held_out")  # (a run resumed without validation keeps what it scored)
        best = state["best"] if state["best"] is not None else math.inf
        mark = state.get("mark", state["best"])  # a checkpoint from before the mark: its best was the mark
        return cls(patience, min_delta, best, state["best_step"], state["since_best"],
                   [tuple(h) for h in state["history"]], mark if mark is not None else math.inf, held_out)


def held_out_id(records: list, samples: list) -> str | None:
    """Which images (their contents: `records`) with which captions (the `samples` scored) a validation scores, as
    a short hash; not how they are encoded (another VAE precision or tiling scores the same images)."""
    if not samples:
        return None
    scored = (sorted(record.sha256 for record in records), sorted(sample.caption for sample in samples))
    return hashlib.sha256(repr(scored).encode()).hexdigest()[:16]
