"""lowvram: LoRA training for Stable Diffusion 1.5 and SDXL that fits small GPUs."""

__version__ = "0.1.0"
