"""Model families as data: everything that differs between SD1.5 and SDXL lives here and nowhere else.

The training loop, the LoRA export and the loaders read these fields; none of them asks "is this SDXL?".
`tiny` and `tiny-sdxl` are the same structures shrunk for demos and tests (seeded random weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from lowvram.adapters.blocks import BlockLayout
from lowvram.config import CHUNK_TOKENS, DEFAULT_LORA_LAYERS

CONFIG_ROOT = Path(__file__).parent / "configs"

# peft target modules (module-name suffixes) per --lora-layers choice, the same for every family:
#   attn      the attention projections: what the diffusers example scripts adapt
#   attn-mlp  every Linear (and SD1.5's 1x1 projection convs) of the transformer blocks, and CLIP's MLPs too:
#             kohya's default LoRA (networks.lora), so kohya recipes carry over rank for rank
#   full      also the ResNet blocks' convolutions and time projections and the resamplers: kohya's LoCon
#             (conv_dim) / LyCORIS's full preset; the stem (conv_in/out) and embeddings stay frozen, as there
# a single file's keys that say how it samples, what ComfyUI reads (NoobAI-XL V-Pred carries both), by the change
# loading.follow_lora_schedule names
SCHEDULE_MARKERS = {"v-prediction": "v_pred", "zero terminal SNR": "ztsnr"}


def declared_schedule(names, metadata: dict[str, str]) -> set[str]:
    """What a single file says of how it samples (SCHEDULE_MARKERS' changes), from its tensor names and its
    metadata: its keys, or (a kohya or lowvram save of a v-prediction model) its modelspec alone."""
    found = {change for change, key in SCHEDULE_MARKERS.items() if key in names}
    return found | ({"v-prediction"} if metadata.get("modelspec.prediction_type") == "v" else set())
UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_TRANSFORMER = UNET_ATTENTION + ("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
UNET_RESNET = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")
LORA_LAYERS = {
    "attn": {"unet": UNET_ATTENTION, "text": CLIP_ATTENTION},
    "attn-mlp": {"unet": UNET_TRANSFORMER, "text": CLIP_ATTENTION + ("fc1", "fc2")},
    "full": {"unet": UNET_TRANSFORMER + UNET_RESNET, "text": CLIP_ATTENTION + ("fc1", "fc2")},
}


SD15_BLOCKS = BlockLayout(leading=0, down=12, mid=1, up=12, trailing=0)
SDXL_BLOCKS = BlockLayout(leading=1, down=9, mid=3, up=9, trailing=1)


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family and how its output conditions the U-Net."""

    component: str  # pipeline attribute: "text_encoder" / "text_encoder_2"
    tokenizer: str  # pipeline attribute of its tokenizer
    kohya_prefix: str  # LoRA key prefix that ComfyUI/A1111 expect: lora_te, lora_te1, lora_te2
    hidden_state: int  # which hidden state feeds cross-attention: -1 = final (with final layer norm), -2 = penultimate
    pooled: bool = False  # its projected pooled output conditions the U-Net (SDXL's text_embeds)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    title: str
    config_dir: Path  # diffusers config folder (no weights) shipped in the package
    pipeline_class: str  # diffusers pipeline that loads and samples this family
    resolution: int  # native training resolution
    text_encoders: tuple[TextEncoderSpec, ...]
    size_conditioning: bool  # SDXL's add_time_ids: original size, crop top-left, target size
    hub_id: str | None  # where `--model <family name>` downloads from (None: built from random weights)
    # single-file checkpoint key -> shape that identifies this architecture (the cross-attention key width)
    fingerprint: tuple[tuple[str, tuple[int, ...]], ...]
    modelspec_architecture: str  # Stability's modelspec id written into LoRA metadata
    base_model_version: str  # kohya's ss_base_model_version
    bucket_step: int = 64  # aspect-bucket side step in pixels (a multiple of the latent grid's alignment)
    full_size: str = ""  # a shrunk family: the full-size one it stands for (whose GPU results verify its strategies)
    blocks: BlockLayout = SD15_BLOCKS  # kohya's block numbering (per-block ranks and learning rates)
    # kohya's SDXL U-Net is a port of the original layout, so its LoRA keys name those modules
    # (lora_unet_input_blocks_4_1_...), as do the SDXL LoRAs people share; SD1.5's name diffusers' modules
    kohya_original_layout: bool = False

    @cached_property
    def unet_config(self) -> dict:
        """Its U-Net's diffusers config as lowvram ships it (read once; read it, do not change it)."""
        return json.loads((self.config_dir / "unet" / "config.json").read_text())

    @property
    def is_random_init(self) -> bool:
        return self.hub_id is None

    @staticmethod
    def lora_targets(part: str, layers: str = DEFAULT_LORA_LAYERS) -> tuple[str, ...]:
        """peft target modules of `part` ("unet", or a text encoder's component name) for --lora-layers."""
        return LORA_LAYERS[layers]["unet" if part == "unet" else "text"]


SD_TEXT = (TextEncoderSpec("text_encoder", "tokenizer", "lora_te", hidden_state=-1),)
SDXL_TEXT = (
    TextEncoderSpec("text_encoder", "tokenizer", "lora_te1", hidden_state=-2),
    TextEncoderSpec("text_encoder_2", "tokenizer_2", "lora_te2", hidden_state=-2, pooled=True),
)
_ATTN2_K = "model.diffusion_model.input_blocks.{}.1.transformer_blocks.0.attn2.to_k.weight"

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily("sd15", "Stable Diffusion 1.5", CONFIG_ROOT / "sd15", "StableDiffusionPipeline", 512, SD_TEXT,
                    size_conditioning=False, hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
                    fingerprint=((_ATTN2_K.format(1), (320, 768)),),
                    modelspec_architecture="stable-diffusion-v1/lora", base_model_version="sd_v1"),
        ModelFamily("sdxl", "Stable Diffusion XL", CONFIG_ROOT / "sdxl", "StableDiffusionXLPipeline", 1024, SDXL_TEXT,
                    size_conditioning=True, hub_id="stabilityai/stable-diffusion-xl-base-1.0",
                    fingerprint=((_ATTN2_K.format(4), (640, 2048)),),
                    modelspec_architecture="stable-diffusion-xl-v1-base/lora", base_model_version="sdxl_base_v1-0",
                    blocks=SDXL_BLOCKS, kohya_original_layout=True),
        ModelFamily("tiny", "tiny SD (random weights)", CONFIG_ROOT / "tiny", "StableDiffusionPipeline", 64, SD_TEXT,
                    size_conditioning=False, hub_id=None, fingerprint=((_ATTN2_K.format(1), (32, 32)),),
                    modelspec_architecture="stable-diffusion-v1/lora", base_model_version="sd_v1", bucket_step=16,
                    full_size="sd15"),
        ModelFamily("tiny-sdxl", "tiny SDXL (random weights)", CONFIG_ROOT / "tiny-sdxl", "StableDiffusionXLPipeline",
                    64, SDXL_TEXT, size_conditioning=True, hub_id=None,
                    fingerprint=((_ATTN2_K.format(3), (64, 80)),),
                    modelspec_architecture="stable-diffusion-xl-v1-base/lora", base_model_version="sdxl_base_v1-0",
                    bucket_step=16, full_size="sdxl", blocks=SDXL_BLOCKS, kohya_original_layout=True),
    )
}


def family_for_pipeline(pipeline_class: str, cross_attention_dim: int) -> ModelFamily | None:
    """The family whose pipeline class and U-Net cross-attention width match a diffusers model."""
    for family in FAMILIES.values():
        if family.pipeline_class == pipeline_class and family.unet_config["cross_attention_dim"] == cross_attention_dim:
            return family
    return None


@dataclass(frozen=True)
class TextReading:
    """How captions are read: `max_tokens` 75, 150 or 225 (kohya's max_token_length) and `clip_skip`, the CLIP
    layers skipped from the end (kohya's and AUTOMATIC1111's numbering: 1 reads the last layer, 2 the one
    before it through the final layer norm, as anime SD1.5 models expect)."""

    max_tokens: int = CHUNK_TOKENS
    clip_skip: int = 1
    weighted: bool = False  # AUTOMATIC1111's (emphasis:1.2) weighs the tokens' states (kohya's weighted_captions)
    # read a prompt whole, as AUTOMATIC1111 does (generate; training captions are read as kohya reads them): as many
    # 77-token chunks as it needs, each kept whole, a chunk's last words after a comma moved to the next, and its
    # weighed states scaled back to their unweighed mean (its default "Original" emphasis); max_tokens is unused
    a1111: bool = False

    @property
    def cache_tag(self) -> str:
        """What sets these embeddings apart from the default reading's in the cache."""
        return ((f"/tokens{self.max_tokens}" if self.max_tokens != CHUNK_TOKENS else "")
                + (f"/clipskip{self.clip_skip}" if self.clip_skip != 1 else "")
                + ("/weighted-break" * self.weighted)  # (BREAK ends a chunk: entries from before read it as text)
                + ("/a1111" * self.a1111))


DEFAULT_READING = TextReading()


def prompt_reading(clip_skip: int = 1) -> TextReading:
    """How a prompt is read, a training sample's as generate's: as AUTOMATIC1111 reads it (kohya's samples read its
    emphasis too), whatever the reading of the captions trained on."""
    return TextReading(clip_skip=clip_skip, a1111=True)


def clip_skip_problem(family: ModelFamily, clip_skip: int) -> str | None:
    """Why `family` takes no --clip-skip above 1 (SDXL reads its penultimate layer already), or None."""
    if clip_skip > 1 and any(spec.hidden_state != -1 for spec in family.text_encoders):
        return (f"--clip-skip {clip_skip}: {family.title} already reads its text encoders' penultimate layer, and "
                "kohya ignores clip skip for it; drop --clip-skip")
    return None
