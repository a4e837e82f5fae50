"""How --model and --vae paths are recognised: an upper-case .SAFETENSORS loads; a broken JSON config, a mistyped
local path, an inpainting or pix2pix U-Net and a diffusers folder missing a part each get one line naming the file
and the fix, before any weights load and without asking the hub; a whole model folder as --vae gives its vae/."""

import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from lowvram.cli import main
from lowvram.errors import LowvramError
from lowvram.models import FAMILIES, build_from_config, load_model
from lowvram.models.detect import detect_family
from lowvram.models.ldm_layout import sd15_single_file

UNET_STEM = "model.diffusion_model.input_blocks.0.0.weight"  # (out, in_channels, 3, 3)


@pytest.fixture(scope="module")
def tiny_pipeline():
    return build_from_config(FAMILIES["tiny"])


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_pipeline):
    """models/tinydiff (a diffusers folder) and models/tiny.safetensors (the same model as one file)."""
    root = tmp_path_factory.mktemp("work") / "models"
    tiny_pipeline.save_pretrained(root / "tinydiff", safe_serialization=True)
    p = tiny_pipeline
    save_file({k: v.contiguous() for k, v in sd15_single_file(p.unet, p.vae, p.text_encoder).items()},
              str(root / "tiny.safetensors"))
    return root


@pytest.fixture
def folder(models, tmp_path):
    """A copy of the tiny diffusers folder, to break."""
    return shutil.copytree(models / "tinydiff", tmp_path / "tinydiff")


@pytest.mark.parametrize(("part", "named"), [("text_encoder", "is a text encoder alone, not a full checkpoint"),
                                             ("vae", "is a VAE, not a full checkpoint"),
                                             ("unet", "is a single diffusers component")])
def test_one_part_of_a_model_given_as_model_is_named(models, part, named):
    """A diffusers folder's part given as --model, as a user picks the largest file: a text encoder's
    encoder.layers are not a VAE's encoder."""
    weights = next((models / "tinydiff" / part).glob("*.safetensors"))
    with pytest.raises(LowvramError, match=f"--model: {re.escape(str(weights))} {named}"):
        load_model(str(weights))


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def commands(model: str, tmp_path) -> list[list[str]]:
    """plan, check-data and train with `model`: each reads --model before anything else."""
    return [["plan", "--model", model, "--data", "sample", "--vram", "8GB"],
            ["check-data", "sample", "--model", model],
            ["train", "--model", model, "--data", "sample", "--max-steps", "1", "--output", str(tmp_path / "out")]]


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("config", ["model_index.json", "unet/config.json", "vae/config.json"])
def test_a_malformed_json_config_is_one_line_naming_the_file(config, folder, tmp_path, capsys):
    (folder / config).write_text('{"_class_name": "StableDiffusionPipeline",\n  "in_channels": 4,,\n}')
    for argv in commands(str(folder), tmp_path):
        err = one_line_error(capsys, argv)
        assert f"--model: {folder / config} is not valid JSON (line 2 column 20): Expecting property name" in err
        assert err.endswith("restore it from the model's source")


def test_an_upper_case_safetensors_extension_loads_as_safetensors(models, tiny_pipeline, tmp_path, no_network):
    path = shutil.copy(models / "tiny.safetensors", tmp_path / "tiny.SAFETENSORS")
    loaded = load_model(str(path))
    assert loaded.family is FAMILIES["tiny"] and loaded.source == str(path) and len(loaded.hash) == 8
    assert_same_weights(loaded.unet, tiny_pipeline.unet)
    assert_same_weights(loaded.vae, tiny_pipeline.vae)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.SAFETENSORS"]  # nothing left beside it


@pytest.mark.parametrize("name", ["models/tinydif", "./models/nothere", "{tmp}/nothere/model",
                                  "models/nothere.safetensors", "nothere.Safetensors", "~/lowvram-nothere/x"])
def test_a_local_path_that_is_not_there_is_not_found_without_the_hub(name, models, tmp_path, monkeypatch, capsys,
                                                                     no_network):
    monkeypatch.chdir(models.parent)  # models/ is a folder here: `models/tinydif` is a typo, not a hub id
    name = name.format(tmp=tmp_path)
    expected = f"--model: file or folder not found: {name}"
    with pytest.raises(LowvramError) as plan_error:
        detect_family(name)  # what plan, check-data and train ask first
    with pytest.raises(LowvramError) as forced_error:
        detect_family(name, "sd15")  # --model-family does not make it a hub id
    with pytest.raises(LowvramError) as load_error:
        load_model(name)  # what merge, extract and generate load with
    for error in (plan_error, forced_error, load_error):
        assert str(error.value).startswith(expected) and "hub" not in str(error.value)
    if name == "models/tinydif":
        assert str(plan_error.value) == f"{expected} (did you mean models/tinydiff?)"
        assert expected in one_line_error(capsys, commands(name, tmp_path)[0])
    with pytest.raises(LowvramError, match="--vae: file or folder not found: ./nothere/vae"):
        load_model("tiny", vae="./nothere/vae")
    (models.parent / "runwayml" / "other-download").mkdir(parents=True, exist_ok=True)  # other downloads
    for hub_id in ("someone/some-sd15-model", "runwayml/stable-diffusion-v1-5"):  # still hub ids (offline here)
        with pytest.raises(LowvramError, match=f"'{hub_id}' is not .*, and its config could not be fetched from the "
                                               "hub .*--model-family") as error:
            detect_family(hub_id)
    # a folder of that name here: the path it is as likely to be is named (a name close to one there is a path)
    assert str(error.value).startswith("--model: 'runwayml/stable-diffusion-v1-5' is not in the folder runwayml/ "
                                       "here, and its config")
    assert detect_family(FAMILIES["sdxl"].hub_id) is FAMILIES["sdxl"]


def test_an_inpainting_unet_folder_is_refused_before_loading(folder, tmp_path, capsys):
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    UNet2DConditionModel.from_config({**unet.config, "in_channels": 9}).save_pretrained(folder / "unet")
    expected = (f"--model: {folder} is an inpainting model (9 input channels); lowvram trains SD1.5 and SDXL "
                "text-to-image models: give the base model")
    for argv in commands(str(folder), tmp_path):
        assert one_line_error(capsys, argv) == f"lowvram {argv[0]}: error: {expected}"
    with pytest.raises(LowvramError) as error:
        load_model(str(folder))
    assert str(error.value) == expected


@pytest.mark.parametrize(("channels", "kind"), [(9, "an inpainting model"),
                                               (8, "an image-editing model like instruct-pix2pix")])
def test_an_image_conditioned_single_file_is_refused_from_its_header(channels, kind, models, tmp_path, capsys):
    state = load_file(str(models / "tiny.safetensors"))
    assert state[UNET_STEM].shape[1] == 4
    state[UNET_STEM] = torch.zeros(state[UNET_STEM].shape[0], channels, 3, 3)
    path = tmp_path / "edit.safetensors"
    save_file(state, str(path))
    err = one_line_error(capsys, commands(str(path), tmp_path)[0])
    assert f"{path} is {kind}" in err and f"({channels} input channels); lowvram trains SD1.5 and SDXL text-to-image" \
        in err and err.endswith("give the base model")
    for family in (None, "tiny"):  # --model-family names the family; it does not make the U-Net text-to-image
        with pytest.raises(LowvramError, match=rf"\({channels} input channels\)"):
            load_model(str(path), family)


def test_a_folder_without_its_vae_names_the_missing_part(folder, tmp_path, capsys):
    shutil.rmtree(folder / "vae")
    expected = (f"--model: {folder} has no vae/ (a diffusers model folder needs unet/, vae/, text_encoder/, "
                "tokenizer/, scheduler/); copy the whole model")
    for argv in commands(str(folder), tmp_path):
        assert one_line_error(capsys, argv).endswith(expected)
    with pytest.raises(LowvramError) as error:
        load_model(str(folder))
    assert str(error.value) == expected


def test_an_index_that_names_no_unet_and_no_unet_folder_says_the_model_is_not_whole(folder, tmp_path, capsys):
    """It said "a StableDiffusionPipeline with cross-attention width None"."""
    index = json.loads((folder / "model_index.json").read_text())
    del index["unet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(folder / "unet")
    expected = (f"--model: {folder}: its model_index.json names no unet, so it is no whole diffusers model; copy the "
                "whole model, or pass a .safetensors checkpoint")
    for argv in commands(str(folder), tmp_path):
        assert one_line_error(capsys, argv) == f"lowvram {argv[0]}: error: {expected}"
    # a whole model of another kind: an SD3 pipeline has a transformer, not a U-Net
    sd3 = tmp_path / "sd3"
    (sd3 / "transformer").mkdir(parents=True)
    (sd3 / "transformer" / "config.json").write_text("{}")
    (sd3 / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline",
                                                      "transformer": ["diffusers", "SD3Transformer2DModel"]}))
    assert one_line_error(capsys, ["plan", "--vram", "6GB", "--model", str(sd3)]).endswith(
        f"--model: {sd3} is a StableDiffusion3Pipeline without a U-Net; lowvram trains SD1.5 and SDXL models")
    (sd3 / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "SD3Transformer2DModel"]}))
    assert one_line_error(capsys, ["plan", "--vram", "6GB", "--model", str(sd3)]).endswith(
        "names no unet, so it is no whole diffusers model; copy the whole model, or pass a .safetensors checkpoint")


@pytest.mark.parametrize(("part", "weights"), [("unet", "diffusion_pytorch_model.safetensors"),
                                                ("vae", "diffusion_pytorch_model.safetensors"),
                                                ("text_encoder", "model.safetensors")])
def test_a_folder_part_without_weights_is_named_without_a_pickle_hint(part, weights, folder, tmp_path, capsys):
    (folder / part / weights).unlink()
    expected = f"--model: no weights in {folder / part} ({weights}); copy the whole model"
    assert one_line_error(capsys, commands(str(folder), tmp_path)[0]).endswith(expected)
    with pytest.raises(LowvramError) as error:
        load_model(str(folder))
    assert str(error.value) == expected  # one line: no diffusers line before it, no advice about .bin files


def test_pickle_weights_in_a_folder_get_the_command_that_converts_them(folder, tiny_pipeline):
    """transformers reads text_encoder/model.safetensors, not pytorch_model.safetensors: the command in the
    message writes the name the loader looks for, and then the folder loads."""
    (folder / "text_encoder" / "model.safetensors").unlink()
    torch.save(tiny_pipeline.text_encoder.state_dict(), folder / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(LowvramError) as error:
        load_model(str(folder))
    message = str(error.value)
    assert message.startswith(f"--model: {folder / 'text_encoder' / 'pytorch_model.bin'} is a pickle file")
    command = shlex.split(message.split("convert it once to safetensors: ", 1)[1])
    assert command[:2] == ["python", "-c"] and command[4] == str(folder / "text_encoder" / "model.safetensors")
    subprocess.run([sys.executable, *command[1:]], check=True)
    assert_same_weights(load_model(str(folder)).pipeline.text_encoder, tiny_pipeline.text_encoder)


def test_a_whole_model_folder_as_vae_uses_its_vae(folder, tmp_path):
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(1.5)  # another VAE than tiny's own
    vae.save_pretrained(folder / "vae")
    loaded = load_model("tiny", vae=str(folder))
    assert_same_weights(loaded.vae, vae)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LowvramError, match=r"--vae: .*empty has no config.json, so is not a diffusers VAE folder"):
        load_model("tiny", vae=str(tmp_path / "empty"))


def test_the_pickle_conversion_command_takes_any_name(tmp_path):
    """The paths were written into the Python code in quotes: an apostrophe in a name (José's) broke it, as a
    Windows path's \\U does there."""
    from lowvram.errors import pickle_refusal

    weights = {"layer.weight": torch.randn(3, 2)}
    path = tmp_path / "José's model $HOME.ckpt"
    torch.save({"state_dict": weights}, path)
    command = shlex.split(pickle_refusal("--model", str(path)).split("convert it once to safetensors: ", 1)[1])
    subprocess.run([sys.executable, *command[1:]], check=True)
    assert torch.equal(load_file(str(path.with_suffix(".safetensors")))["layer.weight"], weights["layer.weight"])


def test_a_refiner_folder_is_named_for_what_it_is(folder, capsys):
    """It said "is a StableDiffusionXLImg2ImgPipeline with cross-attention width 1280; lowvram trains SD1.5 and SDXL
    models", never that it is the refiner, nor what to give instead."""
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    unet = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps(unet | {"cross_attention_dim": 1280}))
    assert one_line_error(capsys, ["plan", "--vram", "6GB", "--model", str(folder)]).endswith(
        "is the SDXL refiner (cross-attention width 1280), which lowvram does not train: LoRAs are trained on the SDXL "
        "base, as kohya and OneTrainer train them (the refiner, if used, runs after it as it is); pass an SDXL base "
        "checkpoint")
