"""Regenerate the diffusers config folders shipped in lowvram/models/configs/.

They hold no weights: only what diffusers' `from_single_file(..., config=DIR)` and a random-weight build
need to know about each architecture (about 1.5 MB each, mostly the CLIP tokenizer files, which
tools/build_clip_tokenizer.py makes offline). The values are those of the public diffusers repos
(stable-diffusion-v1-5, stable-diffusion-xl-base-1.0); `tiny` and `tiny-sdxl` are the same structures
shrunk to a few hundred thousand parameters for demos and tests.

    python tools/write_model_configs.py TOKENIZER_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "lowvram" / "models" / "configs"

SD_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None, "prediction_type": "epsilon",
}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
    "use_karras_sigmas": False,
}


def vae(block_out_channels, layers_per_block, sample_size, scaling_factor, force_upcast):
    n = len(block_out_channels)
    return {
        "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": block_out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": layers_per_block,
        "norm_num_groups": 32, "sample_size": sample_size, "scaling_factor": scaling_factor,
        "force_upcast": force_upcast,
    }


def clip(hidden, layers, heads, intermediate, act, projection_dim, cls="CLIPTextModel"):
    return {
        "architectures": [cls], "model_type": "clip_text_model", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_attention_heads": heads, "num_hidden_layers": layers,
        "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": act, "projection_dim": projection_dim,
        "layer_norm_eps": 1e-05, "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0,
        "initializer_range": 0.02, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float32",
    }


def unet_sd(block_out_channels, layers_per_block, cross_attention_dim, attention_head_dim, sample_size, down, up):
    return {
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": attention_head_dim,
        "block_out_channels": block_out_channels, "center_input_sample": False,
        "cross_attention_dim": cross_attention_dim, "down_block_types": down, "up_block_types": up,
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "out_channels": 4,
        "layers_per_block": layers_per_block, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
        "sample_size": sample_size,
    }


def unet_sdxl(block_out_channels, layers_per_block, cross_attention_dim, attention_head_dim, transformer_layers,
              time_embed_dim, pooled_dim, sample_size, down, up):
    config = unet_sd(block_out_channels, layers_per_block, cross_attention_dim, attention_head_dim, sample_size,
                     down, up)
    config.update({
        "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": time_embed_dim, "projection_class_embeddings_input_dim": 6 * time_embed_dim + pooled_dim,
        "transformer_layers_per_block": transformer_layers, "use_linear_projection": True,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
    })
    return config


def tokenizer_config(pad_token):
    return {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, "errors": "replace",
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": pad_token, "add_prefix_space": False, "clean_up_tokenization_spaces": True,
    }


def families():
    sd_down = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    sd_up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    xl_down = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    xl_up = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    sd_pipe = {"_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
               "safety_checker": [None, None], "requires_safety_checker": False,
               "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}
    xl_pipe = {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
               "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
               "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
               "image_encoder": [None, None], "feature_extractor": [None, None]}
    yield "sd15", {
        "model_index.json": sd_pipe, "scheduler/scheduler_config.json": SD_SCHEDULER,
        "unet/config.json": unet_sd([320, 640, 1280, 1280], 2, 768, 8, 64, sd_down, sd_up),
        "vae/config.json": vae([128, 256, 512, 512], 2, 512, 0.18215, False),
        "text_encoder/config.json": clip(768, 12, 12, 3072, "quick_gelu", 768),
        "tokenizer": "<|endoftext|>",
    }
    yield "sdxl", {
        "model_index.json": xl_pipe, "scheduler/scheduler_config.json": SDXL_SCHEDULER,
        "unet/config.json": unet_sdxl([320, 640, 1280], 2, 2048, [5, 10, 20], [1, 2, 10], 256, 1280, 128,
                                      xl_down, xl_up),
        "vae/config.json": vae([128, 256, 512, 512], 2, 1024, 0.13025, True),
        "text_encoder/config.json": clip(768, 12, 12, 3072, "quick_gelu", 768),
        "text_encoder_2/config.json": clip(1280, 32, 20, 5120, "gelu", 1280, "CLIPTextModelWithProjection"),
        "tokenizer": "<|endoftext|>", "tokenizer_2": "!",
    }
    # diffusers reads SD's attention_head_dim as the number of heads: 8 made heads of 4 channels, whose CPU
    # attention at 32x32 latents took two thirds of a tiny training step; 2 heads still split, at a third the time
    yield "tiny", {
        "model_index.json": sd_pipe, "scheduler/scheduler_config.json": SD_SCHEDULER,
        "unet/config.json": unet_sd([32, 64], 1, 32, 2, 32, ["CrossAttnDownBlock2D", "DownBlock2D"],
                                    ["UpBlock2D", "CrossAttnUpBlock2D"]),
        "vae/config.json": vae([32, 64], 1, 64, 0.18215, False),
        "text_encoder/config.json": clip(32, 2, 4, 37, "quick_gelu", 32),
        "tokenizer": "<|endoftext|>",
    }
    yield "tiny-sdxl", {
        "model_index.json": xl_pipe, "scheduler/scheduler_config.json": SDXL_SCHEDULER,
        "unet/config.json": unet_sdxl([32, 64], 1, 80, [2, 4], [1, 2], 8, 32, 32,
                                      ["DownBlock2D", "CrossAttnDownBlock2D"], ["CrossAttnUpBlock2D", "UpBlock2D"]),
        "vae/config.json": vae([32, 64], 1, 64, 0.13025, True),
        "text_encoder/config.json": clip(32, 2, 4, 37, "quick_gelu", 32),
        # wider than text_encoder: diffusers' single-file loader tells the two encoders apart by width
        "text_encoder_2/config.json": clip(48, 2, 4, 37, "gelu", 32, "CLIPTextModelWithProjection"),
        "tokenizer": "<|endoftext|>", "tokenizer_2": "!",
    }


def main(tokenizer_dir: Path) -> None:
    for name, files in families():
        root = CONFIGS / name
        shutil.rmtree(root, ignore_errors=True)
        for rel, content in files.items():
            if rel.startswith("tokenizer"):
                (root / rel).mkdir(parents=True)
                for f in ("vocab.json", "merges.txt"):
                    shutil.copy(tokenizer_dir / f, root / rel / f)
                (root / rel / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(content), indent=2))
                continue
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(json.dumps(content, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
