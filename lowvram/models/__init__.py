"""Model families (architecture as data) and the loaders for every way users bring a base model."""

from lowvram.models.families import FAMILIES, ModelFamily, TextEncoderSpec
from lowvram.models.loading import LoadedModel, build_from_config, load_model

__all__ = ["FAMILIES", "LoadedModel", "ModelFamily", "TextEncoderSpec", "build_from_config", "load_model"]
