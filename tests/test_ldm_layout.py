"""Checks for lowvram/models/ldm_layout.py: our diffusers -> original-layout writer must be the exact inverse of
diffusers' own single-file converters, and files it writes must load with ``from_single_file`` offline."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local; never reach for the Hub

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from lowvram.models.ldm_layout import (
    SD15_CLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
    clip_text_to_ldm,
    open_clip_to_sgm,
    sd15_single_file,
    sdxl_single_file,
    unet_to_ldm,
    vae_to_ldm,
)

HIDDEN_1, HIDDEN_2, POOLED = 32, 48, 24  # the two SDXL encoders must differ in width, see tiny_text_encoder_2


# --------------------------------------------------------------------------- tiny random models


def _clip_config(hidden: int, layers: int, **kw) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=1000,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        **kw,
    )


@pytest.fixture(scope="module")
def unet_sd15():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN_1,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


@pytest.fixture(scope="module")
def unet_sdxl():
    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=HIDDEN_1 + HIDDEN_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + POOLED,
        norm_num_groups=32,
    ).eval()


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(2)
    return AutoencoderKL(
        sample_size=16,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
    ).eval()


@pytest.fixture(scope="module")
def text_encoder():
    torch.manual_seed(3)
    return CLIPTextModel(_clip_config(HIDDEN_1, 2)).eval()


@pytest.fixture(scope="module")
def text_encoder_2():
    # Wider than text_encoder: diffusers picks the SDXL encoder-1 branch for any CLIP model whose
    # width equals conditioner.embedders.0's, so equal widths would load encoder 2 from encoder 1.
    # 10 layers so the file carries resblocks.9, the key diffusers sniffs to recognise SDXL.
    torch.manual_seed(4)
    return CLIPTextModelWithProjection(_clip_config(HIDDEN_2, 10, projection_dim=POOLED, hidden_act="gelu")).eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """Byte-level CLIP BPE with no merges: tiny, offline, real CLIPTokenizer behaviour.

    Written as vocab.json + merges.txt files so it loads under transformers 4 and 5 alike; transformers 5
    needs model_max_length passed explicitly (no tokenizer_config.json here to carry it).
    """
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def assert_same(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].shape == value.shape, key
        assert torch.equal(actual[key], value), key


# --------------------------------------------------------------------------- round trips through diffusers


@pytest.mark.parametrize("name", ["unet_sd15", "unet_sdxl"])
def test_unet_round_trip(name, request):
    unet = request.getfixturevalue(name)
    ldm = unet_to_ldm(unet.state_dict(), unet.config)
    assert all(k.startswith("model.diffusion_model.") for k in ldm)
    assert_same(convert_ldm_unet_checkpoint(ldm, dict(unet.config)), unet.state_dict())


def test_unet_sdxl_layout(unet_sdxl):
    ldm = unet_to_ldm(unet_sdxl.state_dict(), unet_sdxl.config)
    for key in [
        "label_emb.0.0.weight",
        "input_blocks.3.0.op.weight",  # downsample after two resnets
        "input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight",  # 2 transformer layers
        "middle_block.1.transformer_blocks.1.ff.net.2.weight",
        "output_blocks.2.2.conv.weight",  # upsample after an attention
        "output_blocks.5.0.skip_connection.weight",
        "out.2.weight",
    ]:
        assert "model.diffusion_model." + key in ldm, key


def test_vae_round_trip(vae):
    ldm = vae_to_ldm(vae.state_dict())
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert ldm["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)
    # decoder levels are numbered in reverse: diffusers up_blocks.0 (64 ch) is LDM up.1
    assert ldm["first_stage_model.decoder.up.1.block.0.conv1.weight"].shape[0] == 64
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in ldm
    assert "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight" in ldm
    assert_same(convert_ldm_vae_checkpoint(ldm, dict(vae.config)), vae.state_dict())


@pytest.mark.parametrize("prefix", [SD15_CLIP_PREFIX, SDXL_CLIP_PREFIX])
def test_clip_round_trip(text_encoder, prefix):
    state_dict = text_encoder.state_dict()
    # older transformers: keys carry text_model. and a position_ids buffer; both inputs must work
    legacy = {"text_model." + k: v for k, v in state_dict.items()}
    legacy["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    for source in (state_dict, legacy):
        ldm = clip_text_to_ldm(source, prefix)
        assert prefix + "text_model.encoder.layers.0.self_attn.q_proj.weight" in ldm
        assert not any(k.endswith("position_ids") for k in ldm)
        back = convert_ldm_clip_checkpoint(ldm)  # yields text_model.* keys ...
        if not hasattr(text_encoder, "text_model"):  # ... which diffusers strips for flat CLIPTextModel
            back = {k.removeprefix("text_model."): v for k, v in back.items()}
        assert_same(back, state_dict)


def test_open_clip_round_trip(text_encoder_2):
    ldm = open_clip_to_sgm(text_encoder_2.state_dict(), text_encoder_2.config.num_hidden_layers)
    p = SDXL_OPEN_CLIP_PREFIX
    assert ldm[p + "text_projection"].shape == (HIDDEN_2, POOLED)  # [hidden, proj], i.e. Linear.weight.T
    assert ldm[p + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * HIDDEN_2, HIDDEN_2)
    assert ldm[p + "positional_embedding"].shape == (77, HIDDEN_2)
    back = convert_open_clip_checkpoint(text_encoder_2, ldm, prefix=p)
    assert_same(back, text_encoder_2.state_dict())


def test_full_size_layouts():
    """Real SD1.5 / SDXL / VAE architectures (on meta, no memory): key counts of the released files."""
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(cross_attention_dim=768)
        sdxl = UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            use_linear_projection=True,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
    for unet, count, anchors in [
        (sd15, 686, ["output_blocks.11.0.skip_connection.weight", "output_blocks.8.2.conv.weight"]),
        (sdxl, 1680, ["input_blocks.8.1.transformer_blocks.9.attn2.to_v.weight", "output_blocks.2.2.conv.bias"]),
    ]:
        ldm = unet_to_ldm(unet.state_dict(), unet.config)
        assert len(ldm) == count
        assert all("model.diffusion_model." + a in ldm for a in anchors)
        back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
        assert sorted(back) == sorted(unet.state_dict())
    ldm = vae_to_ldm(vae.state_dict())
    assert len(ldm) == 248
    assert "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight" in ldm  # 256 -> 128 channels
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in ldm
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in ldm
    assert sorted(convert_ldm_vae_checkpoint(ldm, dict(vae.config))) == sorted(vae.state_dict())


# --------------------------------------------------------------------------- end to end: file -> from_single_file


def _write_single_file(tmp_path, pipe, state_dict):
    """Save the checkpoint plus a weight-less diffusers folder (configs + tokenizer) to serve as `config=`."""
    ckpt = tmp_path / "model.safetensors"
    save_file(state_dict, str(ckpt))
    config_dir = tmp_path / "config"
    pipe.save_pretrained(config_dir)
    for f in list(config_dir.rglob("*.safetensors")) + list(config_dir.rglob("*.bin")):
        f.unlink()
    assert load_file(str(ckpt)).keys() == state_dict.keys()
    return str(ckpt), str(config_dir)


def _latents(pipe, **kw):
    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=16,
        width=16,
        guidance_scale=5.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **kw,
    )
    return out.images


def _check_components(loaded, original, names):
    for name in names:
        assert_same(getattr(loaded, name).state_dict(), getattr(original, name).state_dict())


def test_sd15_from_single_file(tmp_path, unet_sd15, vae, text_encoder, tokenizer):
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet_sd15,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    state_dict = sd15_single_file(unet_sd15, vae, text_encoder)
    assert infer_diffusers_model_type(state_dict) == "v1"
    ckpt, config = _write_single_file(tmp_path, pipe, state_dict)

    unet = UNet2DConditionModel.from_single_file(ckpt, config=config, subfolder="unet", local_files_only=True)
    assert_same(unet.state_dict(), unet_sd15.state_dict())
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, HIDDEN_1)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, ctx).sample, unet_sd15(x, t, ctx).sample)
    loaded_vae = AutoencoderKL.from_single_file(ckpt, config=config, subfolder="vae", local_files_only=True)
    assert_same(loaded_vae.state_dict(), vae.state_dict())

    loaded = StableDiffusionPipeline.from_single_file(ckpt, config=config, local_files_only=True)
    _check_components(loaded, pipe, ["unet", "vae", "text_encoder"])
    torch.testing.assert_close(_latents(loaded), _latents(pipe))


def test_sdxl_from_single_file(tmp_path, unet_sdxl, vae, text_encoder, text_encoder_2, tokenizer):
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet_sdxl,
        scheduler=DDIMScheduler(),
    )
    state_dict = sdxl_single_file(unet_sdxl, vae, text_encoder, text_encoder_2)
    assert infer_diffusers_model_type(state_dict) == "xl_base"
    ckpt, config = _write_single_file(tmp_path, pipe, state_dict)

    # a folder holding just the model's config.json works too (no subfolder)
    unet_sdxl.save_config(tmp_path / "unet_only")
    unet = UNet2DConditionModel.from_single_file(ckpt, config=str(tmp_path / "unet_only"), local_files_only=True)
    assert_same(unet.state_dict(), unet_sdxl.state_dict())

    loaded = StableDiffusionXLPipeline.from_single_file(ckpt, config=config, local_files_only=True)
    _check_components(loaded, pipe, ["unet", "vae", "text_encoder", "text_encoder_2"])
    torch.testing.assert_close(_latents(loaded), _latents(pipe))
