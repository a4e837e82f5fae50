"""Model families (architecture as data) and the loaders for every way users bring a base model. The loaders
(torch, diffusers) are imported on first use: the families alone are plain data."""

from lowvram.models.families import FAMILIES, ModelFamily, TextEncoderSpec

__all__ = ["FAMILIES", "LoadedModel", "ModelFamily", "TextEncoderSpec", "build_from_config", "load_model"]
LOADERS = ("LoadedModel", "build_from_config", "load_model")


def __getattr__(name: str):
    if name in LOADERS:
        from lowvram.models import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'lowvram.models' has no attribute '{name}'")
