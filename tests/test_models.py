"""Loading base models: single-file checkpoints offline, diffusers folders, and clear refusals of wrong kinds."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from lowvram.errors import LowvramError
from lowvram.models import FAMILIES, load_model
from lowvram.models.detect import detect_family, detect_single_file_family
from lowvram.models.ldm_layout import sd15_single_file, sdxl_single_file


@pytest.fixture(scope="module", params=["tiny", "tiny-sdxl"])
def base(request):
    return load_model(request.param)


def single_file(model, path):
    p = model.pipeline
    if model.family.size_conditioning:
        state = sdxl_single_file(p.unet, p.vae, p.text_encoder, p.text_encoder_2)
    else:
        state = sd15_single_file(p.unet, p.vae, p.text_encoder)
    save_file(state, str(path))
    return path


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def test_random_init_models_are_fixed(base):
    again = load_model(base.family.name)
    assert_same_weights(base.unet, again.unet)  # the same "tiny" every time, so its LoRAs load later


def test_single_file_checkpoint_loads_offline(base, tmp_path, no_network):
    path = single_file(base, tmp_path / "model.safetensors")
    assert detect_single_file_family(path) is base.family
    loaded = load_model(str(path))
    assert loaded.family is base.family
    for spec in (("unet",), ("vae",), *[(s.component,) for s in base.family.text_encoders]):
        assert_same_weights(getattr(base.pipeline, spec[0]), getattr(loaded.pipeline, spec[0]))
    assert len(loaded.hash) == 8


def test_an_sd1_file_of_2022s_text_encoder_layout_loads_as_automatic1111_and_comfyui_load_it(tmp_path, no_network):
    """cond_stage_model.transformer.encoder.* (transformers' CLIP before its text_model level, as NovelAI-era merges
    are): diffusers found no text encoder, and the file was refused as one without it."""
    base = load_model("tiny")
    state = load_file(str(single_file(base, tmp_path / "model.safetensors")))
    older = {key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): value
             for key, value in state.items()}
    save_file(older, str(tmp_path / "older.safetensors"))
    loaded = load_model(str(tmp_path / "older.safetensors"))
    assert_same_weights(base.pipeline.text_encoder, loaded.pipeline.text_encoder)
    assert_same_weights(base.unet, loaded.unet)
    del older["cond_stage_model.transformer.final_layer_norm.weight"]
    save_file(older, str(tmp_path / "partial.safetensors"))
    with pytest.raises(LowvramError, match=r"partial.safetensors has an incomplete text encoder \(no "
                                           r"cond_stage_model.transformer.final_layer_norm.weight, 1 missing\)"):
        load_model(str(tmp_path / "partial.safetensors"))


def test_a_checkpoints_v_pred_and_ztsnr_keys_set_its_prediction_and_schedule(base, tmp_path):
    """NoobAI-XL V-Pred style checkpoints say what they predict with empty `v_pred` and `ztsnr` tensors (ComfyUI
    reads them); training and sampling then use v-prediction on a zero-terminal-SNR schedule unasked."""
    path = single_file(base, tmp_path / "plain.safetensors")
    plain = load_model(str(path)).pipeline.scheduler.config
    assert plain.prediction_type == "epsilon" and not plain.get("rescale_betas_zero_snr")
    state = load_file(str(path))
    save_file({**state, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(tmp_path / "vpred.safetensors"))
    marked = load_model(str(tmp_path / "vpred.safetensors")).pipeline.scheduler.config
    assert marked.prediction_type == "v_prediction" and marked.rescale_betas_zero_snr
    assert marked.timestep_spacing == "trailing"
    from conftest import run_config

    from lowvram.train.setup import noise_schedules

    model = str(tmp_path / "vpred.safetensors")  # kohya's v-pred-like loss weighs the last timestep infinitely here
    with pytest.raises(LowvramError, match=r"--v-pred-like-loss: .*vpred.safetensors has a zero-terminal-SNR "
                                           r"schedule \(its ztsnr key\), where the loss's \(SNR\+1\)/SNR weight"):
        noise_schedules(load_model(model), run_config(model=model, v_pred_like_loss=0.1))


def test_diffusers_folder_loads(base, tmp_path, no_network):
    base.pipeline.save_pretrained(tmp_path / "folder")
    loaded = load_model(str(tmp_path / "folder"))
    assert loaded.family is base.family
    assert_same_weights(base.unet, loaded.unet)


def test_lora_file_passed_as_model_is_named(tmp_path):
    path = tmp_path / "my_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(path))
    with pytest.raises(LowvramError, match="my_lora.safetensors is a LoRA, not a model"):
        load_model(str(path))


def test_vae_file_passed_as_model_is_named(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_out.weight": torch.zeros(1)}, str(path))
    with pytest.raises(LowvramError, match="is a VAE, not a full checkpoint"):
        load_model(str(path))


@pytest.mark.parametrize(("key", "named"), [("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
                                             "is a Stable Diffusion 3 checkpoint"),
                                            ("double_blocks.0.img_attn.qkv.weight", "is a Flux checkpoint")])
def test_a_checkpoint_of_another_model_is_named(tmp_path, key, named):
    path = tmp_path / "other.safetensors"
    save_file({key: torch.zeros(1), "model.diffusion_model.x_embedder.proj.weight": torch.zeros(1)}, str(path))
    with pytest.raises(LowvramError, match=f"{named}; lowvram trains SD1.5 and SDXL models"):
        load_model(str(path))


def test_sd2_and_the_sdxl_refiner_are_refused_with_their_names_whatever_family_is_named(tmp_path):
    """Both were "an unknown U-Net ...; if it is one of those, say which with --model-family": a refiner given
    --model-family sdxl was planned as SDXL, and its run failed at loading, after the dataset's scan."""
    from lowvram.models.detect import detect_family

    for width, named in ((1024, (r"a Stable Diffusion 2\.x model \(cross-attention width 1024\), which lowvram does not "
                                r"train; pass an SD1\.5 or SDXL checkpoint$")),
                         (1280, (r"the SDXL refiner \(cross-attention width 1280\), which lowvram does not train: .*; "
                                r"pass an SDXL base checkpoint$"))):
        path = tmp_path / f"other{width}.safetensors"
        save_file({FAMILIES["sd15"].fingerprint[0][0]: torch.zeros(320, width)}, str(path))
        with pytest.raises(LowvramError, match=named):
            load_model(str(path))
        with pytest.raises(LowvramError, match=named):
            detect_family(str(path), "sdxl")


@pytest.mark.parametrize(("state", "named"), [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, "is a LoRA, not a model"),
    ({"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_out.weight": torch.zeros(1)}, "is a VAE, not a full"),
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(1)}, "is a Stable Diffusion 3"),
])
def test_model_family_names_an_unknown_u_net_never_a_file_of_something_else(tmp_path, state, named):
    unknown = tmp_path / "unknown.safetensors"  # (SD2's width 1024 and the refiner's 1280 are refused by name)
    save_file({FAMILIES["sd15"].fingerprint[0][0]: torch.zeros(320, 896)}, str(unknown))
    assert detect_family(str(unknown), "sd15") is FAMILIES["sd15"]
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    with pytest.raises(LowvramError, match=named):  # (plan took a LoRA as an SD1.5 model: planned, then crashed)
        detect_family(str(other), "sd15")


def test_truncated_checkpoint_is_a_clear_error(tmp_path, base):
    path = single_file(base, tmp_path / "model.safetensors")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LowvramError, match="is not a readable .safetensors file"):
        load_model(str(path))


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_a_u_net_alone_is_refused_by_its_header_before_the_dataset_is_read(tmp_path, name, capsys, monkeypatch):
    """ComfyUI keeps U-Nets alone in models/unet: diffusers named the part missing only after the dataset's scan."""
    from lowvram.cli import main

    model = load_model(name)
    state = (sdxl_single_file(model.unet, model.vae, model.pipeline.text_encoder, model.pipeline.text_encoder_2)
             if name == "tiny-sdxl" else sd15_single_file(model.unet, model.vae, model.pipeline.text_encoder))
    path = tmp_path / "unet.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}, str(path))
    encoders = "text encoders" if name == "tiny-sdxl" else "text encoder"
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", str(path), "--data", "sample", "--max-steps", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (f"lowvram train: error: --model: {path} is a {model.family.title} U-Net alone (as "
                                    f"ComfyUI's models/unet files are), without its VAE and {encoders}; pass a full "
                                    "checkpoint (as in models/checkpoints) or a diffusers folder")
    assert "images usable" not in captured.out + captured.err
    # given where a LoRA goes, it is still named as the model it is
    assert main(["info", str(path)]) == 1
    assert (f"unet.safetensors: a {model.family.title} U-Net alone (as ComfyUI's models/unet files are), not a LoRA "
            "(for train and generate, give the full checkpoint it came from as --model)") in capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["unet_alone"] is True
    assert main(["generate", "--model", name, "--lora", str(path), "--prompt", "x"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"lowvram generate: error: --lora: {path} is a {model.family.title} U-Net alone (as ComfyUI's models/unet "
        "files are), not a LoRA; give the full checkpoint it came from as --model")
    # saved without its model.diffusion_model. prefix (ComfyUI loads that too): "has no U-Net" and "no layers"
    save_file({k.removeprefix("model.diffusion_model."): v for k, v in load_file(str(path)).items()}, str(path))
    assert main(["train", "--model", str(path), "--data", "sample", "--max-steps", "1"]) == 2
    assert "U-Net alone (as ComfyUI's models/unet files are), without its VAE" in capsys.readouterr().err
    assert main(["info", str(path)]) == 1
    assert f"a {model.family.title} U-Net alone (as ComfyUI's models/unet files are)" in capsys.readouterr().out


def test_checkpoint_missing_a_component_is_refused(tmp_path):
    model = load_model("tiny")
    state = sd15_single_file(model.unet, model.vae, model.pipeline.text_encoder)
    state = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    save_file(state, str(tmp_path / "novae.safetensors"))
    with pytest.raises(LowvramError, match="novae.safetensors has no AutoencoderKL weights"):
        load_model(str(tmp_path / "novae.safetensors"))


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(LowvramError, match="without model_index.json"):
        load_model(str(tmp_path))
    # ComfyUI's models/checkpoints/ given: the file in it is named (the way out was "pass a .safetensors checkpoint")
    (tmp_path / "mymodel.safetensors").write_bytes(b"")
    with pytest.raises(LowvramError) as refused:
        load_model(str(tmp_path))
    assert str(refused.value).endswith(f"it holds one weights file {tmp_path / 'mymodel.safetensors'}: give the file "
                                       "itself")
    comfyui = tmp_path / "ComfyUI"  # a UI's whole install: its checkpoints folder named
    (comfyui / "models" / "checkpoints").mkdir(parents=True)
    with pytest.raises(LowvramError) as refused:
        load_model(str(comfyui))
    assert str(refused.value).endswith(f"it is a UI's install: give a checkpoint file from {comfyui / 'models' / 'checkpoints'}")
    with pytest.raises(LowvramError) as refused:  # its models/ folder too
        load_model(str(comfyui / "models"))
    assert str(refused.value).endswith(f"give a checkpoint file from {comfyui / 'models' / 'checkpoints'}")
    # a diffusers LoRA folder (--format diffusers' <name>-diffusers/): said to be a LoRA, as a LoRA file is
    lora_folder = tmp_path / "run-diffusers"
    lora_folder.mkdir()
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32),
               "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(32, 4)},
              str(lora_folder / "pytorch_lora_weights.safetensors"))
    with pytest.raises(LowvramError) as refused:
        load_model(str(lora_folder))
    assert str(refused.value).endswith("it holds a LoRA, pytorch_lora_weights.safetensors, not a model: pass a "
                                       "checkpoint to --model (a LoRA goes to generate's --lora, merge's FILEs "
                                       "or train's --network-weights)")


def test_unknown_name_lists_the_families():
    with pytest.raises(LowvramError, match="tiny-sdxl"):
        load_model("not-a-model")


@pytest.fixture
def other_vae():
    vae = load_model("tiny").vae
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(1.5)  # a "fixed" VAE: same architecture, other weights
    return vae


@pytest.mark.parametrize("layout", ["folder", "diffusers-file", "original-file"])
def test_a_users_vae_replaces_the_models(layout, other_vae, tmp_path):
    from lowvram.models.ldm_layout import vae_to_ldm

    if layout == "folder":
        other_vae.save_pretrained(tmp_path / "vae")
        path = tmp_path / "vae"
    elif layout == "diffusers-file":
        path = tmp_path / "vae.safetensors"
        save_file({k: v.contiguous() for k, v in other_vae.state_dict().items()}, str(path))
    else:
        path = tmp_path / "vae.safetensors"
        save_file(vae_to_ldm(other_vae.state_dict()), str(path))
    loaded = load_model("tiny", vae=str(path))
    assert_same_weights(loaded.vae, other_vae)
    assert loaded.pipeline.vae is loaded.vae


def test_a_file_that_is_not_a_vae_is_named(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(LowvramError, match="--vae: .*lora.safetensors is a LoRA, not a VAE; give a VAE file"):
        load_model("tiny", vae=str(path))
    other = tmp_path / "other.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(other))
    with pytest.raises(LowvramError, match="--vae: .*other.safetensors does not fit"):
        load_model("tiny", vae=str(other))


def test_a_whole_checkpoint_as_vae_gives_its_vae_for_its_own_family_only(tmp_path):
    """A Stability Matrix user picked a checkpoint of the other family as --vae: its VAE fits the architecture, but
    its latents are scaled otherwise, and the images came out wrong without a word."""
    sd15, sdxl = (single_file(load_model(name), tmp_path / f"{name}.safetensors") for name in ("tiny", "tiny-sdxl"))
    with pytest.raises(LowvramError, match=r"--vae: .*tiny-sdxl.safetensors is a whole tiny SDXL .*checkpoint, whose "
                                           r"VAE is not tiny SD .*'s \(its latents are scaled otherwise\)"):
        load_model("tiny", vae=str(sdxl))
    assert_same_weights(load_model("tiny", vae=str(sd15)).vae, load_model("tiny").vae)  # (its own family's: taken)


@pytest.mark.parametrize(("model", "name", "named"), [("tiny", "sdxl_vae.safetensors", "sdxl"),
                                                     ("tiny", "sdxl-vae-fp16-fix", "sdxl"),
                                                     ("tiny-sdxl", "vae-ft-mse-840000-ema-pruned.safetensors", "sd15")])
def test_the_other_familys_vae_is_refused_by_its_name_or_config(tmp_path, model, name, named):
    """SD1.5's and SDXL's VAEs are built alike: sdxl_vae.safetensors with an SD1.5 model loaded, and the LoRA learned
    from latents scaled for another U-Net."""
    other = load_model("tiny-sdxl" if model == "tiny" else "tiny").vae
    path = tmp_path / name
    if path.suffix:
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    else:  # a diffusers folder: its config's scale says whose it is, whatever its name
        other.save_pretrained(path)
        path = path.rename(tmp_path / "my_vae")
    title, named = FAMILIES[model].title, FAMILIES[named].title
    with pytest.raises(LowvramError, match=rf"--vae: .*{path.name} is {named}'s VAE by its (name|config), and the "
                                           rf"model is {re.escape(title)}: .*; give a VAE of {re.escape(title)}'s"):
        load_model(model, vae=str(path))
    own = load_model(model).vae
    mine = tmp_path / ("vae-ft-mse-840000.safetensors" if model == "tiny" else "sdxl_vae.safetensors")
    save_file({k: v.contiguous() for k, v in own.state_dict().items()}, str(mine))
    assert_same_weights(load_model(model, vae=str(mine)).vae, own)
    versioned = tmp_path / "MyVAE_v1-5.safetensors"  # (a version number, not SD1.5's name)
    save_file({k: v.contiguous() for k, v in own.state_dict().items()}, str(versioned))
    assert_same_weights(load_model(model, vae=str(versioned)).vae, own)


def test_training_with_a_users_vae_encodes_with_it(other_vae, tmp_path):
    from conftest import run_config

    from lowvram.train.loop import train

    other_vae.save_pretrained(tmp_path / "vae")
    result = train(run_config(output=str(tmp_path / "out"), max_steps=1, vae=str(tmp_path / "vae"),
                              cache_dir=str(tmp_path / "cache")))
    assert_same_weights(result.model.vae, other_vae)
    assert result.encoded[0] == 6  # fresh latents for this VAE: the cache key covers the VAE's weights


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_familys_own_hub_repository_is_known_offline(family, no_network):
    """`lowvram plan --model stabilityai/stable-diffusion-xl-base-1.0` (what OneTrainer's presets name) needs no
    connection: a family's own repository is that family."""

    assert detect_family(FAMILIES[family].hub_id) is FAMILIES[family]


def test_a_mistyped_built_in_model_is_named_with_the_closest(no_network):
    """`--model tinysdxl` was asked of the hub (offline: 'its config could not be fetched') though no hub id is one
    word."""
    from lowvram.models.detect import detect_family

    for typed, said in (("tinysdxl", "did you mean 'tiny-sdxl'?"), ("SD15", "did you mean 'sd15'?"),
                        ("mymodel", "give a .safetensors file, a diffusers folder or a hub id (owner/name)")):
        with pytest.raises(LowvramError) as error:
            detect_family(typed)
        assert str(error.value) == (f"--model: '{typed}' is no file or folder here, nor a built-in model (sd15, sdxl, "
                                    f"tiny, tiny-sdxl); {said}")


@pytest.mark.slow
def test_a_hub_model_in_hugging_faces_cache_trains_offline(tmp_path):
    """As the README says: HF_HUB_OFFLINE=1 loads a hub id from HF_HOME's cache (a lab's shared one, a flight)."""
    import os
    import subprocess
    import sys

    snapshot = "0" * 40
    repo = tmp_path / "hf" / "hub" / "models--lab--tiny"
    load_model("tiny", None, dtype=torch.float32).pipeline.save_pretrained(repo / "snapshots" / snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot)
    done = subprocess.run([sys.executable, "-m", "lowvram", "train", "--model", "lab/tiny", "--model-family", "tiny",
                           "--data", "sample", "--max-steps", "1", "--rank", "4", "--output", str(tmp_path / "run")],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 0, done.stderr
    assert load_file(str(tmp_path / "run" / "run.safetensors"))
