"""LoRA files ready to share: readable by a ComfyUI/AUTOMATIC1111 server running as another user (the
permissions a plain open() gives under the umask), no folder of this machine in their metadata, and
`lowvram info` to show (and strip) any LoRA file's metadata."""

import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from conftest import assert_kohya_hashes, run_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lowvram import lora_header, lora_metadata
from lowvram.adapters import lora_files
from lowvram.cli import main
from lowvram.data.sample import write_sample_dataset
from lowvram.models import load_model
from lowvram.train.loop import train


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """A run whose model, dataset and output all live under a home folder, as a user's do."""
    home = tmp_path_factory.mktemp("home") / "alice"
    model = home / "models" / "my-tiny-model"
    load_model("tiny").pipeline.save_pretrained(model, safe_serialization=True)
    data = write_sample_dataset(home / "datasets" / "shapes")
    previous = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        result = train(run_config(model=str(model), data=str(data), output=str(home / "loras" / "shapes"),
                                  max_steps=2, trigger_word="lvshape"))
    finally:
        if previous is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = previous
    return home, model, data, result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_file_a_run_writes_has_the_permissions_the_umask_gives(tmp_path, umask_022):
    """safetensors writes owner-only: a LoRA, its diffusers copy or a merged model a ComfyUI or AUTOMATIC1111 server
    running as another user could not read."""
    result = train(run_config(output=str(tmp_path / "out"), max_steps=2, checkpoint_every=1,
                              sample_prompts=("lvshape, a red circle",), format="diffusers"))
    copy = tmp_path / "out" / "out-diffusers"
    written = [result.lora_path, result.config_path, *result.samples, *copy.iterdir()]
    assert mode(copy) == 0o755
    assert result.samples and all(mode(path) == 0o644 for path in written), {p.name: oct(mode(p)) for p in written}
    checkpoints = sorted((tmp_path / "out" / "checkpoints").iterdir())
    assert checkpoints and all(mode(folder) == 0o755 for folder in checkpoints)
    assert all(mode(file) == 0o644 for folder in checkpoints for file in folder.iterdir())
    assert main(["merge", str(result.lora_path), "--model", "tiny", "--output", str(tmp_path / "merged")]) == 0
    merged = [tmp_path / "merged", *(tmp_path / "merged").rglob("*")]
    assert all(mode(p) == (0o755 if p.is_dir() else 0o644) for p in merged), {str(p): oct(mode(p)) for p in merged}


def test_no_metadata_value_names_a_folder_of_this_machine(shared_run):
    home, model, data, result = shared_run
    with safe_open(str(result.lora_path), "pt") as f:
        metadata = f.metadata()
    private = [str(home), str(model), str(data), str(result.lora_path.parent), str(model.parent), "/tmp"]
    leaks = {key: folder for key, value in metadata.items() for folder in private if folder in value}
    assert not leaks, leaks
    # what ComfyUI, AUTOMATIC1111 and model sites show is all there, by names
    assert metadata["ss_sd_model_name"] == "my-tiny-model" and metadata["lowvram.base_model"] == "my-tiny-model"
    assert metadata["ss_network_dim"] == "4" and metadata["ss_steps"] == "2" and metadata["ss_resolution"]
    assert metadata["ss_training_comment"] == "lvshape" and metadata["modelspec.architecture"]
    assert metadata["modelspec.title"] == "shapes" and "modelspec.author" not in metadata
    assert metadata["modelspec.trigger_phrase"] == "lvshape"  # the folder's, the run's trigger
    assert "5_lvshape" in json.loads(metadata["ss_tag_frequency"])
    recipe = metadata["lowvram.config"]
    assert 'data = "shapes"' in recipe and 'model = "my-tiny-model"' in recipe and "\noutput =" not in recipe
    # the full config, paths and all, stays beside the LoRA for --config to replay
    assert str(data) in result.config_path.read_text()


def test_a_lora_lowvram_trained_is_a_config_that_trains_its_recipe_again(shared_run, tmp_path, monkeypatch, capsys):
    """`train --config shapes.safetensors` reads the recipe the LoRA keeps; the model and dataset it names by name
    only are said to be needed (the model a hub id or built-in name would be kept as it is, with no note)."""
    import dataclasses

    from lowvram.configure import build_config, read_config

    _, model, data, result = shared_run
    monkeypatch.chdir(tmp_path)
    assert main(["info", str(result.lora_path)]) == 0
    assert (f"its recipe trains again with: lowvram train --config {result.lora_path} --model MODEL --data DIR"
            in " ".join(capsys.readouterr().out.split()))  # (its model a local folder, named by its name alone)
    read_config(result.lora_path)
    assert "the LoRA's recipe names --model, --data by name only" in capsys.readouterr().err
    values = read_config(result.lora_path, given={"model", "data"})
    assert "by name only" not in capsys.readouterr().err
    (tmp_path / data.name).mkdir()  # a folder of its name here (another project's): taken, and said
    read_config(result.lora_path, given={"model"})
    assert (f"the LoRA's recipe names these by name only, taken from here: --data {data.name} (give them to train "
            "on others)") in " ".join(capsys.readouterr().err.split())
    trained = build_config(read_config(result.config_path))  # the .toml beside it: the run as it was, paths and all
    again = build_config(values | {"model": str(model), "data": str(data), "output": trained.output.output})
    assert dataclasses.replace(again, output=trained.output) == dataclasses.replace(trained, output=trained.output)
    assert again.output.name == trained.output.name
    hub = dataclasses.replace(trained, model=dataclasses.replace(trained.model, model="someone/their-model"))
    assert hub.to_shareable_dict()["model"]["model"] == "someone/their-model"
    kohya, checkpoint, junk = tmp_path / "kohya.safetensors", tmp_path / "model.safetensors", tmp_path / "x.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(2, 2)}, str(kohya), {"ss_network_dim": "2"})
    save_file({"model.diffusion_model.a.weight": torch.zeros(2, 2)}, str(checkpoint))
    junk.write_bytes(b"junk")
    for path, problem in ((kohya, "is a LoRA without lowvram's recipe"),
                          (checkpoint, "a base model is given as --model"),
                          (junk, "is not a readable .safetensors file")):
        assert main(["train", "--config", str(path), "--data", "sample"]) == 2
        assert problem in capsys.readouterr().err


def test_the_lora_says_what_its_author_wrote_about_it(tmp_path):
    """kohya's --training_comment and --metadata_* options: what UIs and model sites show of a LoRA."""
    result = train(run_config(output=str(tmp_path / "out"), max_steps=1, training_comment="v2: fewer steps",
                              metadata_title="Shapes", metadata_author="alice", metadata_description="red circles",
                              metadata_license="creativeml-openrail-m", metadata_tags="shapes,  circle ,"))
    with safe_open(str(result.lora_path), "pt") as f:
        metadata = f.metadata()
    assert {key: metadata.get(key) for key in ("ss_training_comment", "modelspec.title", "modelspec.author",
                                               "modelspec.description", "modelspec.license", "modelspec.tags")} == {
        "ss_training_comment": "v2: fewer steps", "modelspec.title": "Shapes", "modelspec.author": "alice",
        "modelspec.description": "red circles", "modelspec.license": "creativeml-openrail-m",
        "modelspec.tags": "shapes, circle"}


def test_the_lora_holds_what_automatic1111_shows_and_kohyas_hashes_of_itself(shared_run, tmp_path):
    """AUTOMATIC1111's LoRA card counts the dataset from ss_dataset_dirs and lists ss_bucket_info's resolutions; it
    takes sshs_model_hash instead of hashing the file."""
    *_, result = shared_run
    metadata = assert_kohya_hashes(result.lora_path)
    assert json.loads(metadata["ss_dataset_dirs"]) == {"5_lvshape": {"n_repeats": 5, "img_count": 6}}
    buckets = json.loads(metadata["ss_bucket_info"])["buckets"].values()
    assert sum(bucket["count"] for bucket in buckets) == 30
    assert all(len(bucket["resolution"]) == 2 for bucket in buckets)
    assert (metadata["modelspec.sai_model_spec"], metadata["modelspec.implementation"]) == ("1.0.0", "diffusers")
    # kohya's figures of the run's length, which model sites show as batches per epoch and epochs
    assert result.data.batches_per_epoch == 30 // run_config().training.batch_size
    assert (metadata["ss_num_batches_per_epoch"], metadata["ss_num_epochs"], metadata["ss_max_train_steps"]) == (
        str(result.data.batches_per_epoch), "1", "2")
    assert metadata["ss_total_batch_size"] == str(run_config().training.batch_size)  # one process, no accumulation
    # how its images were bucketed and varied, as kohya records it (--no-bucket was said True)
    assert {key: metadata[key] for key in ("ss_enable_bucket", "ss_min_bucket_reso", "ss_max_bucket_reso",
                                           "ss_bucket_no_upscale", "ss_color_aug", "ss_random_crop",
                                           "ss_caption_tag_dropout_rate", "ss_caption_dropout_every_n_epochs")} == {
        "ss_enable_bucket": "True", "ss_min_bucket_reso": "32", "ss_max_bucket_reso": "128",
        "ss_bucket_no_upscale": "False", "ss_color_aug": "False", "ss_random_crop": "False",
        "ss_caption_tag_dropout_rate": "0", "ss_caption_dropout_every_n_epochs": "0"}
    varied = train(run_config(output=str(tmp_path / "varied"), max_steps=1, bucket=False, crop="random",
                              color_jitter=0.1, tag_dropout=0.25, caption_dropout_every=3, shuffle_tags=True))
    metadata = lora_header.read_header(varied.lora_path)[0]
    assert [metadata[key] for key in ("ss_enable_bucket", "ss_random_crop", "ss_color_aug",
                                      "ss_caption_tag_dropout_rate", "ss_caption_dropout_every_n_epochs")] == [
        "False", "True", "True", "0.25", "3"]


def test_no_metadata_keeps_only_which_network_the_lora_holds_for_which_model(tmp_path):
    """kohya's --no_metadata: no captions, prompts or settings; what loaders and lowvram's --network-weights read
    stays, with the model version AUTOMATIC1111 sorts LoRAs by."""
    result = train(run_config(output=str(tmp_path / "out"), max_steps=1, no_metadata=True, trigger_word="lvshape",
                              sample_prompts=("a photo of Alice Smith",), metadata_author="alice"))
    metadata = assert_kohya_hashes(result.lora_path)
    assert not [value for value in metadata.values() if "Alice Smith" in value or "lvshape" in value]
    assert {key for key in metadata if key.startswith("ss_")} == {"ss_network_module", "ss_network_dim",
                                                                  "ss_network_alpha", "ss_base_model_version", "ss_v2"}
    assert (metadata["modelspec.architecture"], metadata["modelspec.author"]) == ("stable-diffusion-v1/lora", "alice")
    options = lora_header.network_options(result.lora_path)
    assert (options["network"], options["rank"], options["lora_layers"]) == ("lora", 4, "attn")
    from PIL import Image

    assert "parameters" not in Image.open(result.samples[0]).text  # (its prompt, which names a person)


def test_strip_paths_leaves_kohyas_hashes_those_of_the_rewritten_file(tmp_path):
    """The legacy hash reads 1 MiB into the file, where a shorter header moves the tensors; a Windows folder in a
    JSON value has its backslashes doubled."""
    dirs = {"C:\\Users\\bob\\Pictures\\holiday": {"n_repeats": 2, "img_count": 3}}
    path = kohya_file(tmp_path / "big.safetensors", width=40960, extra={
        "ss_reg_dataset_dirs": json.dumps(dirs), "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8})
    assert path.stat().st_size > 0x110000
    assert main(["info", str(path), "--strip-paths"]) == 0
    metadata = assert_kohya_hashes(path)
    assert json.loads(metadata["ss_reg_dataset_dirs"]) == {"holiday": {"n_repeats": 2, "img_count": 3}}
    # a kohya file of no hashes (an older sd-scripts'): given them, as README says of every file lowvram writes
    bare = kohya_file(tmp_path / "bare.safetensors", extra={"ss_reg_dataset_dirs": json.dumps(dirs)})
    assert main(["info", str(bare), "--strip-captions"]) == 0
    assert_kohya_hashes(bare)


def kohya_file(path: Path, width: int = 320, extra: dict | None = None) -> Path:
    """A LoRA as kohya's sd-scripts writes one: lora_unet_* keys with alpha, and metadata that names the
    trainer's own folders (older sd-scripts versions wrote the checkpoint's full path)."""
    tensors = {}
    for name in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                 "lora_te_text_model_encoder_layers_0_self_attn_q_proj"):
        tensors[f"{name}.lora_down.weight"] = torch.randn(8, width)
        tensors[f"{name}.lora_up.weight"] = torch.zeros(width, 8)
        tensors[f"{name}.alpha"] = torch.tensor(4.0)
    metadata = {
        "ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "4.0",
        "ss_sd_model_name": "/home/bob/stable-diffusion-webui/models/Stable-diffusion/v1-5-pruned.safetensors",
        "ss_dataset_dirs": json.dumps({"10_ohwx dog": {"n_repeats": 10, "img_count": 24}}),
        "ss_tag_frequency": json.dumps({"10_ohwx dog": {"ohwx": 24, "dog": 20, "grass": 3}}),
        "ss_output_name": "ohwx_dog", "ss_training_comment": r"trained from C:\Users\bob\datasets\dog",
        "ss_learning_rate": "0.0001", "ss_resolution": "(512, 512)", "modelspec.title": "https://example.org/a/b",
        "modelspec.description": "[model] and [bold]tags[/bold]",
    } | (extra or {})
    save_file(tensors, str(path), metadata)
    return path


def test_info_prints_another_trainers_lora(tmp_path, capsys):
    path = kohya_file(tmp_path / "ohwx_dog.safetensors")
    assert main(["info", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "LoRA, 2 modules, rank 8, 10,242 parameters" in out and "ss_network_dim" in out and "ohwx (24)" in out
    assert "[model] and [bold]tags[/bold]" in out  # shown as written, not as markup
    assert "2 local folder(s) in the metadata" in out and "--strip-paths" in out


def test_info_names_a_kohya_files_folder_words_and_shortens_a_thumbnail(tmp_path, capsys):
    """Most published LoRAs are kohya's, which record no trigger words: their concept is the N_name folder's name,
    which the captions hold (info said nothing); a modelspec.thumbnail's base64 picture filled 900 lines."""
    thumbnail = "data:image/jpeg;base64," + "A" * 40_000
    path = kohya_file(tmp_path / "janedoe.safetensors", extra={
        "ss_dataset_dirs": json.dumps({"10_janedoe woman": {"n_repeats": 10, "img_count": 4},
                                       "1_backgrounds": {"n_repeats": 1, "img_count": 6}}),
        "ss_tag_frequency": json.dumps({"10_janedoe woman": {"janedoe woman": 4, "smiling": 2},
                                        "1_backgrounds": {"city": 6, "backgrounds": 1}}),
        "modelspec.thumbnail": thumbnail})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("trigger words: none recorded; its folders' words, which most of their captions hold (kohya's concept "
            "words): janedoe woman\n") in out, out  # (backgrounds: one caption of six holds it)
    assert len(out.splitlines()) < 60 and "(40,023 characters; --json shows it whole)" in " ".join(out.split())
    assert main(["info", str(path), "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["folder_words"] == "janedoe woman" and said["metadata"]["modelspec.thumbnail"] == thumbnail


def test_info_on_a_file_without_metadata_says_so(tmp_path, capsys):
    path = kohya_file(tmp_path / "bare.safetensors")
    save_file(load_file(str(path)), str(path))  # the same layers, no metadata
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no metadata (the file says nothing of how it was trained)" in out and "┃ key" not in out
    # what its tensors hold is said all the same (a Civitai file without metadata had no alpha shown)
    assert ("--network-weights reads its tensors as: --network lora --rank 8 --alpha 4 --lora-layers attn "
            "--train-text-encoder") in " ".join(out.split())


def test_info_of_a_file_of_several_ranks_says_why_it_does_not_train_on(tmp_path, capsys):
    """It named the most common rank as what --network-weights reads, which then refused the file."""
    path = kohya_file(tmp_path / "mixed.safetensors")
    tensors = load_file(str(path))
    name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = torch.randn(4, 320), torch.zeros(320, 4)
    save_file(tensors, str(path))
    assert main(["info", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "holds layers of several ranks (4, 8)" in out and "reads its tensors as" not in out


def test_info_says_where_the_metadata_disagrees_with_the_tensors(tmp_path, capsys):
    path = kohya_file(tmp_path / "edited.safetensors", extra={"ss_network_dim": "32", "ss_network_alpha": "4.0"})
    assert main(["info", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "its metadata disagrees with its tensors, which are what loads: ss_network_dim 32 (its tensors: rank 8)" \
        in out and "ss_network_alpha 4.0 (" not in out


def test_info_shows_a_multi_line_value_after_the_others(tmp_path, capsys):
    """lowvram.config (the run's TOML, a hundred lines) sorts before ss_*: shown there, it pushed them down."""
    config = "[model]\nmodel = \"sd15\"\n\n[data]\ndata = \"imgs\"\n"
    path = kohya_file(tmp_path / "mine.safetensors", extra={"lowvram.config": config, "lowvram.family": "sd15"})
    assert main(["info", str(path)]) == 0
    keys = [row.split("│")[1].strip() for row in capsys.readouterr().out.splitlines() if row.startswith("│")]
    keys = [key for key in keys if key]  # (the TOML's lines after its first have no key)
    assert keys[0] == "lowvram.family" and keys[-1] == "lowvram.config" and "ss_network_dim" in keys[1:-1]


def test_info_in_a_narrow_terminal_folds_its_keys_rather_than_hide_the_values(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # the key column took the width, the values showed as nothing
    path = kohya_file(tmp_path / "ohwx_dog.safetensors", extra={"ss_caption_dropout_every_n_epochs": "0"})  # long key
    assert main(["info", str(path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert any("ss_network_dim" in row.split("│")[1] and row.split("│")[2].strip() == "8" for row in rows), rows
    assert all(len(row) <= 40 for row in rows)


def test_info_counts_the_modules_of_each_rank(tmp_path, capsys):
    """A LoCon with its own conv_dim: the ranks come from the tensors' shapes, whatever the metadata says."""
    path = kohya_file(tmp_path / "locon.safetensors")
    tensors, metadata = load_file(str(path)), safe_open(str(path), framework="pt").metadata()
    for block in range(3):
        name = f"lora_unet_down_blocks_{block}_resnets_0_conv1"
        tensors |= {f"{name}.lora_down.weight": torch.zeros(2, 320, 3, 3), f"{name}.lora_up.weight": torch.zeros(320, 2, 1, 1),
                    f"{name}.alpha": torch.tensor(1.0)}
    save_file(tensors, str(path), metadata)
    assert main(["info", str(path)]) == 0
    assert "LoRA, 5 modules, ranks 8 (2 modules), 2 (3 modules)," in " ".join(capsys.readouterr().out.split())


def test_info_counts_the_modules_of_a_diffusers_layout_lora_as_of_kohyas(tmp_path, capsys):
    """peft's names (unet.down_blocks.0....to_q.lora_A.weight) have dots where kohya's have underscores."""
    tensors = {}
    for layer in ("to_q", "to_k", "to_v"):
        name = f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.{layer}"
        tensors |= {f"{name}.lora_A.weight": torch.zeros(16, 320), f"{name}.lora_B.weight": torch.zeros(320, 16)}
    save_file(tensors, str(tmp_path / "pytorch_lora_weights.safetensors"))
    assert main(["info", str(tmp_path / "pytorch_lora_weights.safetensors")]) == 0
    assert "LoRA (diffusers/peft layout), 3 modules, rank 16" in " ".join(capsys.readouterr().out.split())
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file(tensors | {f"{name}.lora_magnitude_vector": torch.ones(320)}, str(tmp_path / "dora.safetensors"))
    assert main(["info", str(tmp_path / "dora.safetensors")]) == 0  # a --format diffusers DoRA: was called LoRA
    assert "DoRA (diffusers/peft layout), 3 modules, rank 16" in " ".join(capsys.readouterr().out.split())
    # a peft model's own state dict (adapter-named keys): its rank was not found, being no diffusers name
    named = {key.replace("unet.", "base_model.model.").replace(".weight", ".default.weight"): value
             for key, value in tensors.items()}
    save_file(named, str(tmp_path / "peft.safetensors"))
    assert main(["info", str(tmp_path / "peft.safetensors")]) == 0
    assert "LoRA (diffusers/peft layout), 3 modules, rank 16" in " ".join(capsys.readouterr().out.split())
    # FLUX's names in the same layout: called a LoRA, which no reader of lowvram's takes
    flux = {key.replace("unet.down_blocks.0.attentions.0", "transformer.single_transformer_blocks.0"): value
            for key, value in tensors.items()}
    save_file(flux, str(tmp_path / "flux.safetensors"))
    assert main(["info", str(tmp_path / "flux.safetensors")]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "flux.safetensors: no layers lowvram reads: it is a LoRA of another kind of model" in out, out
    save_file({"a.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))  # (no advice for training: a
    assert main(["info", str(tmp_path / "other.safetensors")]) == 1  # LoRA file given where a model goes)
    assert "other.safetensors: no layers lowvram reads: no LoRA, DoRA, LoHa or LoKr layers, 16 parameters (F32)" in \
        " ".join(capsys.readouterr().out.split())
    from lowvram.models.loading import load_model

    vae = {key: value.contiguous() for key, value in load_model("tiny").vae.state_dict().items()}
    save_file(vae, str(tmp_path / "vae.safetensors"))  # ComfyUI's models/vae file, named as train names it
    assert main(["info", str(tmp_path / "vae.safetensors")]) == 1
    assert "vae.safetensors: a VAE, not a LoRA (for train and generate, give it as --vae)" in \
        " ".join(capsys.readouterr().out.split())
    save_file({"shared.weight": torch.zeros(4, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)},
              str(tmp_path / "t5xxl.safetensors"))  # a T5 text encoder's encoder.* is no VAE's
    assert main(["info", str(tmp_path / "t5xxl.safetensors")]) == 1
    assert "a VAE" not in capsys.readouterr().out


def test_strip_captions_leaves_the_trigger_and_no_private_caption_or_folder_name(tmp_path, capsys):
    """A LoRA of private images told their captions (ss_tag_frequency) and folder names (ss_dataset_dirs, the
    recipe) to anyone it was shared with; --no-metadata dropped the trigger and base model too."""
    data = tmp_path / "alice_private_clientX" / "10_ohwx_janedoe"
    write_sample_dataset(data.parent)
    (data.parent / "5_lvshape").rename(data)
    for caption in data.glob("*.txt"):
        caption.write_text("ohwx, jane doe home address 12 elm street")
    lora = train(run_config(output=str(tmp_path / "out"), data=str(data.parent), trigger_word="ohwx",
                            max_steps=1, caption_prefix="janedoe,", class_prompt="photo of janedoe")).lora_path
    before = load_file(str(lora))
    with safe_open(str(lora), framework="pt") as f:
        before_metadata = f.metadata()
    capsys.readouterr()
    assert main(["info", str(lora), "--strip-captions"]) == 0
    assert "held a local folder or the dataset's captions and folder names; rewritten" in capsys.readouterr().out
    with safe_open(str(lora), framework="pt") as f:
        metadata = f.metadata()
    header = json.dumps(metadata)
    assert "elm street" not in header and "janedoe" not in header and "clientX" not in header, header
    assert json.loads(metadata["ss_tag_frequency"]) == {"dataset": {"ohwx": 6}}
    assert json.loads(metadata["ss_dataset_dirs"]) == {"dataset 1": {"n_repeats": 10, "img_count": 6}}
    assert metadata["modelspec.trigger_phrase"] == "ohwx" and metadata["ss_base_model_version"] == "sd_v1"
    after = load_file(str(lora))
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert_kohya_hashes(lora)  # (those of the file rewritten)
    assert main(["info", str(lora), "--strip-captions"]) == 0 and "unchanged" in capsys.readouterr().out
    from lowvram.info import without_captions  # kohya's per-subset record: image_dir, class_tokens, tag frequency

    assert "ss_datasets" not in without_captions({"ss_datasets": json.dumps([{"subsets": [{"image_dir": "janedoe"}]}])})
    assert main(["train", "--config", str(lora), "--data", str(data.parent), "--max-steps", "1", "--output",
                 str(tmp_path / "again")]) == 0  # its recipe still replays, the data given
    # a lowvram before 2026-12-04 kept the trigger as lowvram.trigger_word alone: stripping left no tag at all
    older = tmp_path / "older.safetensors"
    kept = {key: value for key, value in before_metadata.items() if key != "modelspec.trigger_phrase"}
    save_file(before, str(older), kept)
    capsys.readouterr()
    assert main(["info", str(older), "--json"]) == 0 and json.loads(capsys.readouterr().out)["trigger_words"] == "ohwx"
    assert main(["info", str(older), "--strip-captions"]) == 0
    with safe_open(str(older), framework="pt") as f:
        assert json.loads(f.metadata()["ss_tag_frequency"]) == {"dataset": {"ohwx": 6}}


def test_strip_paths_rewrites_the_metadata_without_local_folders_and_keeps_the_tensors(tmp_path, capsys):
    path = kohya_file(tmp_path / "ohwx_dog.safetensors")
    before = load_file(str(path))
    os.chmod(path, 0o640)
    assert main(["info", str(path), "--strip-paths", "--json"]) == 0
    printed = capsys.readouterr()
    assert "2 metadata value(s) held a local folder" in printed.err  # (it led the JSON, which then did not parse)
    assert json.loads(printed.out)["metadata"]["ss_sd_model_name"] == "v1-5-pruned.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_sd_model_name"] == "v1-5-pruned.safetensors"
    assert metadata["ss_training_comment"] == "trained from dog"
    assert metadata["modelspec.title"] == "https://example.org/a/b"  # a URL is no local folder
    assert metadata["ss_dataset_dirs"] == json.dumps({"10_ohwx dog": {"n_repeats": 10, "img_count": 24}})
    after = load_file(str(path))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert mode(path) == 0o640
    assert main(["info", str(path), "--strip-paths"]) == 0 and "unchanged" in capsys.readouterr().out
    # a relative folder before a model's name tells of the machine too (it was kept); a sentence's slash is no folder
    path = kohya_file(tmp_path / "relative.safetensors", extra={"ss_sd_model_name": r"models\alice/myMix.safetensors",
                                                               "ss_vae_name": "madebyollin/sdxl-vae-fp16-fix"})
    assert main(["info", str(path), "--json"]) == 0
    assert "models\\alice/" in json.loads(capsys.readouterr().out)["private_paths"]
    assert main(["info", str(path), "--strip-paths"]) == 0
    with safe_open(str(path), framework="pt") as f:
        assert (f.metadata()["ss_sd_model_name"], f.metadata()["ss_vae_name"]) == (  # (a hub id is no folder)
            "myMix.safetensors", "madebyollin/sdxl-vae-fp16-fix")
        assert f.metadata()["modelspec.title"] == "https://example.org/a/b"


def test_info_names_a_base_model_checkpoint_as_one(tmp_path, capsys):
    from lowvram.models.ldm_layout import sd15_single_file

    model = load_model("tiny")
    path = tmp_path / "model.safetensors"
    save_file(sd15_single_file(model.unet, model.vae, model.pipeline.text_encoder), str(path))
    assert main(["info", str(path)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert ("model.safetensors: a tiny SD (random weights) model checkpoint, not a LoRA (for train and generate, "
            "give it as --model)") in out
    assert main(["info", str(path), "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert (shown["checkpoint"], shown["unet_alone"]) == ("tiny SD (random weights)", False)
    assert main(["info", str(path), "--strip-paths"]) == 0  # (the rewrite asked for is the command's work: done)


def test_info_on_a_file_that_is_no_safetensors_says_so_in_one_line(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_text("not a model")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a readable .safetensors file" in err[0]


def test_tag_frequency_counts_tags_in_lower_case_as_kohyas():
    """AUTOMATIC1111 lists each tag once: "Blue Sky" and "blue sky" are one tag to kohya's count."""
    assert json.loads(lora_files.tag_frequency({"5_sky": ["Blue Sky, clouds", "blue sky", " BLUE SKY ,"]})) == {
        "5_sky": {"blue sky": 3, "clouds": 1}}


def test_strip_paths_takes_home_share_and_file_url_folders_too(tmp_path, capsys):
    """`~/models/x` lost only its slashes (`~x`), and a network share's or a file URL's folders stayed: info
    called the file clean with them in it."""
    path = kohya_file(tmp_path / "ohwx_dog.safetensors", extra={
        "ss_sd_model_name": "~/models/v1-5.safetensors", "ss_training_comment": r"from \\NAS\share\alice\loras",
        "modelspec.description": "see file:///home/carol/x.png, file:///C:/Users/carol/y.png or https://example.org/a/",
        "ss_tag_frequency": json.dumps({"10_dog": {"hatsune miku \\(cosplay\\)": 2}}),  # A1111's escapes: no share
        "ss_dataset_dirs": json.dumps({r"\\NAS\share\dogs\10_dog": 1, "C:\\Users\\bob\\5_cat": 2})})
    assert main(["info", str(path), "--strip-paths"]) == 0
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert (metadata["ss_sd_model_name"], metadata["ss_training_comment"]) == ("v1-5.safetensors", "from loras")
    assert metadata["modelspec.description"] == "see x.png, y.png or https://example.org/a/"
    assert json.loads(metadata["ss_tag_frequency"]) == {"10_dog": {"hatsune miku \\(cosplay\\)": 2}}
    assert json.loads(metadata["ss_dataset_dirs"]) == {"10_dog": 1, "5_cat": 2}
    assert "4 metadata value(s) held a local folder" in capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["private_paths"] == []


def test_info_shows_the_hashes_model_sites_key_a_lora_on_and_a_stale_one(tmp_path, capsys):
    """Civitai's AutoV2 (the whole file's sha256) and the addnet hash (its tensors', which AUTOMATIC1111 takes from
    sshs_model_hash instead of hashing the file): an uploader checks them, and a hash left from other tensors."""
    import hashlib

    path = kohya_file(tmp_path / "ohwx_dog.safetensors")
    lora_metadata.save_lora(load_file(str(path)), path, safe_open(str(path), "pt").metadata())  # kohya's hashes
    data = path.read_bytes()
    whole, tensors = hashlib.sha256(data).hexdigest(), hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):])
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["sha256"], info["addnet_hash"]) == (whole, tensors.hexdigest())
    assert main(["info", str(path)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert (f"hashes: AutoV2 {whole[:10].upper()} (Civitai's, of the whole file), addnet {tensors.hexdigest()[:12]} "
            "(AUTOMATIC1111's, of its tensors), as its sshs_model_hash says") in printed
    changed = {key: tensor + 1 for key, tensor in load_file(str(path)).items()}
    save_file(changed, str(path), safe_open(str(path), "pt").metadata())  # the same metadata, other tensors
    assert main(["info", str(path)]) == 0
    assert "its sshs_model_hash (" in capsys.readouterr().out


def test_a_recipes_local_model_named_as_a_family_stays_a_local_model(tmp_path, monkeypatch):
    """A folder ~/models/sdxl went into the recipe as `sdxl`, which read back as the hub's SDXL, unsaid."""
    import dataclasses

    from lowvram.configure import recipe_needs

    (tmp_path / "sdxl").mkdir()
    config = run_config()
    local = dataclasses.replace(config, model=dataclasses.replace(config.model, model=str(tmp_path / "sdxl")))
    shared = local.to_shareable_dict()["model"]["model"]
    assert shared == "./sdxl"
    monkeypatch.chdir(tmp_path.parent)  # elsewhere: needed
    assert recipe_needs({"model": shared}) == ["model"]
    assert recipe_needs({"model": "sdxl"}) == recipe_needs({"model": "someone/their-model"}) == []


def test_info_says_which_base_model_a_lora_is_for_and_its_trigger_words(tmp_path, capsys):
    """A Stability Matrix user had to find SD1.5 or SDXL, and the trigger word, in the metadata table."""
    result = train(run_config(model="tiny-sdxl", output=str(tmp_path / "xl"), max_steps=1, trigger_word="lvshape"))
    capsys.readouterr()
    assert main(["info", str(result.lora_path)]) == 0
    out = capsys.readouterr().out
    # the demo model's LoRA, SDXL-shaped, is not one for SDXL (said so, it was tried on a real one's)
    assert out.startswith("xl.safetensors: LoRA for lowvram's built-in tiny-sdxl demo model (random weights; no SDXL "
                          "checkpoint loads it), ") and "\ntrigger words: lvshape\n" in out, out
    # what ComfyUI's two strengths act on (strength_clip was set on a LoRA of the U-Net alone)
    assert "\nlayers: the U-Net's alone: ComfyUI's strength_clip changes nothing (strength_model weighs it, as " \
           "AUTOMATIC1111's <lora:name:weight> does)\n" in out, out
    both = train(run_config(output=str(tmp_path / "te"), max_steps=1, train_text_encoder=True)).lora_path
    capsys.readouterr()
    assert main(["info", str(both)]) == 0
    assert re.search(r"\nlayers: the U-Net's \(\d+\) and the text encoder's \(\d+\): ComfyUI's strength_model and "
                     "strength_clip weigh each", capsys.readouterr().out)  # (SD1.5's one encoder)
    assert main(["info", str(result.lora_path), "--json"]) == 0  # (base_model in AUTOMATIC1111's words, as for any)
    said = json.loads(capsys.readouterr().out)
    assert (said["base_model"], said["demo_model"]) == ("SDXL", "tiny-sdxl")
    # how it was trained, and its scale: a LoRA manager's card (it was in the table alone, alpha in the flags)
    assert "\ntrained: 1 step, 1 epoch, at 64x64, on tiny-sdxl; alpha 4 (scale 1)\n" in out, out
    # a downloaded file's own words: no markup, a save's own epoch, odd numbers passed over (a traceback, "at 1024x0")
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 768), f"{name}.lora_up.weight": torch.zeros(320, 4)},
              str(tmp_path / "odd.safetensors"), {"ss_sd_model_name": "animeMix [v2] [/i].safetensors", "ss_steps": "²",
                                                  "ss_epoch": "1", "ss_num_epochs": "3",
                                                  "ss_resolution": "[1024.0, 1024.0]", "ss_tag_frequency": "{}"})
    assert main(["info", str(tmp_path / "odd.safetensors")]) == 0
    assert "\ntrained: 1 epoch, at 1024x1024, on animeMix [v2] [/i].safetensors; alpha 4 (scale 1)\n" in \
        capsys.readouterr().out
    # a step's save in the first epoch (kohya's ss_epoch 0): it said the run's 3 epochs
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 768), f"{name}.lora_up.weight": torch.zeros(320, 4)},
              str(tmp_path / "early.safetensors"), {"ss_steps": "20", "ss_epoch": "0", "ss_num_epochs": "3"})
    assert main(["info", str(tmp_path / "early.safetensors")]) == 0
    assert "\ntrained: 20 steps, under 1 epoch; alpha 4 (scale 1)\n" in capsys.readouterr().out
    # a file without metadata: its layers say (the cross-attention's 768 or 2048 wide input)
    for width, base in ((768, "SD1.5"), (2048, "SDXL"), (1024, None)):
        name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
        save_file({f"{name}.lora_down.weight": torch.zeros(4, width), f"{name}.lora_up.weight": torch.zeros(320, 4)},
                  str(tmp_path / "bare.safetensors"))
        assert main(["info", str(tmp_path / "bare.safetensors"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["base_model"] == base


def test_a_recipes_class_images_not_here_may_be_left_out_and_the_message_says_how(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from lowvram.configure import build_config, read_config
    from lowvram.train.loop import train

    (tmp_path / "reg" / "1_shape").mkdir(parents=True)
    Image.new("RGB", (64, 64), (90, 20, 30)).save(tmp_path / "reg" / "1_shape" / "r.png")
    lora = train(run_config(output=str(tmp_path / "run"), max_steps=1, reg_data=str(tmp_path / "reg"))).lora_path
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    values = read_config(lora, given={"data"})
    assert ('the LoRA\'s recipe names --reg-data by name only (from the machine that trained it); give --reg-data for '
            'this one (--reg-data "" trains without)') in " ".join(capsys.readouterr().err.split())
    assert build_config(values | {"data": "sample", "reg_data": ""}).data.reg_data is None
    # a dataset file given names its own: a OneTrainer concepts file's validation concept (the recipe's was said
    # missing, to be given)
    validated = train(run_config(output=str(tmp_path / "validated"), max_steps=1,
                                 validation_data=str(tmp_path / "reg" / "1_shape"))).lora_path
    (tmp_path / "concepts.json").write_text(json.dumps([
        {"path": str(tmp_path / "reg" / "1_shape")}, {"path": str(tmp_path / "reg" / "1_shape"), "type": "VALIDATION"}]))
    capsys.readouterr()
    read_config(validated, given={"data": "sample"})
    assert "the LoRA's recipe names --validation-data by name only" in capsys.readouterr().err
    read_config(validated, given={"data": str(tmp_path / "concepts.json")})
    assert "by name only" not in capsys.readouterr().err
