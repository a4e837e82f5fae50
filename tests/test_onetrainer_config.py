"""A OneTrainer training config given as --config trains the LoRA OneTrainer would: its model, concepts, samples,
learning rate and schedule, network, loss and noise settings; its memory defaults are the planner's to choose; its
paths are found as OneTrainer finds them; what lowvram cannot train as OneTrainer would is one line per setting."""

import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_each, image_folders
from safetensors import safe_open

from lowvram.cli import main
from lowvram.configure import build_config, read_config, read_toml
from lowvram.errors import LowvramError
from lowvram.onetrainer_config import translate_onetrainer
from lowvram.onetrainer_optimizers import JOINED, OPTIMIZER_CLASSES, WARMUP
from lowvram.optim import build_optimizer, optimizer_class, optimizer_kwargs, use_averaged_weights

# a OneTrainer LoRA config as its UI saves it (a share of its keys, OneTrainer's defaults where not said)
CONFIG = {
    "__version": 10, "training_method": "LORA", "model_type": "STABLE_DIFFUSION_15", "base_model_name": "tiny",
    "workspace_dir": "workspace/run", "cache_dir": "workspace-cache/run", "tensorboard": True,
    "output_dtype": "BFLOAT_16", "output_model_format": "SAFETENSORS",
    "output_model_destination": "models/ot-lora.safetensors", "gradient_checkpointing": "ON",
    "concept_file_name": "training_concepts/concepts.json", "aspect_ratio_bucketing": True, "latent_caching": True,
    "learning_rate_scheduler": "CONSTANT", "learning_rate": 0.0003, "learning_rate_warmup_steps": 2.0,
    "learning_rate_cycles": 1.0, "epochs": 1, "batch_size": 2, "gradient_accumulation_steps": 1, "ema": "OFF",
    "ema_decay": 0.999, "train_dtype": "FLOAT_16", "resolution": "64", "mse_strength": 1.0, "mae_strength": 0.0,
    "loss_weight_fn": "MIN_SNR_GAMMA", "loss_weight_strength": 5.0, "dropout_probability": 0.0,
    "loss_scaler": "NONE", "learning_rate_scaler": "NONE", "clip_grad_norm": 1.0, "offset_noise_weight": 0.05,
    "perturbation_noise_weight": 0.0, "min_noising_strength": 0.0, "max_noising_strength": 1.0,
    "timestep_distribution": "UNIFORM", "timestep_shift": 1.0,
    "unet": {"train": True, "learning_rate": None, "weight_dtype": "FLOAT_16"},
    "text_encoder": {"train": True, "learning_rate": 0.0001, "stop_training_after": 30,
                     "stop_training_after_unit": "EPOCH", "weight_dtype": "FLOAT_16"},
    "text_encoder_layer_skip": 1, "vae": {"model_name": "", "weight_dtype": "FLOAT_32"},
    "masked_training": False, "unmasked_weight": 0.1, "layer_filter": "attentions",
    "layer_filter_preset": "attn-mlp", "peft_type": "LORA", "lora_model_name": "", "lora_rank": 8,
    "lora_alpha": 4.0, "lora_decompose": False,
    "optimizer": {"optimizer": "ADAMW_8BIT", "weight_decay": 0.01, "stochastic_rounding": True},
    "sample_definition_file_name": "training_samples/samples.json", "sample_after": 1, "sample_after_unit": "EPOCH",
    "save_every": 0, "save_every_unit": "NEVER", "backup_after": 30, "backup_after_unit": "MINUTE",
}


def onetrainer_folder(root: Path) -> Path:
    """OneTrainer's own layout: training_presets/ (the config), training_concepts/, training_samples/."""
    image_folders(root)
    for folder in ("training_presets", "training_concepts", "training_samples"):
        (root / folder).mkdir()
    (root / "training_concepts" / "concepts.json").write_text(json.dumps(
        [{"name": "alpha", "path": str(root / "imgs" / "alpha"), "balancing": 2.0}]))
    (root / "training_samples" / "samples.json").write_text(json.dumps([
        {"enabled": True, "prompt": "lvshape, a red circle", "negative_prompt": "blurry", "width": 64, "height": 64,
         "seed": 7, "random_seed": False, "diffusion_steps": 2, "cfg_scale": 6.5, "noise_scheduler": "EULER_A"},
        {"enabled": False, "prompt": "left out"}]), encoding="utf-8-sig")  # (Notepad's BOM: it was "not JSON")
    path = root / "training_presets" / "my lora.json"
    path.write_text(json.dumps(CONFIG, indent=4))
    return path


def test_a_onetrainer_config_trains_the_lora_onetrainer_would(tmp_path, monkeypatch, capsys):
    path = onetrainer_folder(tmp_path / "OneTrainer")
    monkeypatch.chdir(tmp_path)  # not OneTrainer's folder: its paths are found beside the config
    assert main(["train", "--config", str(path)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "read as a OneTrainer config" in err
    assert ("unet.weight_dtype FLOAT_16, gradient_checkpointing ON, train_dtype FLOAT_16: OneTrainer's defaults, "
            "left to lowvram's planner") in err
    # the LoRA where OneTrainer writes it, the run's files in its workspace (a second preset's LoRA in models/ too)
    # (where the run's own folder is, from the folder it runs in, said whole)
    assert (f"the run's checkpoints, samples and logs go to {tmp_path}/workspace/run/ot-lora (workspace_dir/<name>)"
            in err)
    saved = read_toml(tmp_path / "workspace" / "run" / "ot-lora" / "ot-lora.toml")
    assert saved["text_encoder_until"] == "30e"  # its text encoder stops after 30 epochs
    assert saved["data"] == str(tmp_path / "OneTrainer" / "training_concepts" / "concepts.json")
    assert (saved["rank"], saved["alpha"], saved["lora_layers"], saved["optimizer"]) == (8, 4.0, "attn-mlp",
                                                                                       "adamw8bit")
    assert (saved["lr"], saved["text_encoder_lr"], saved["train_text_encoder"]) == (0.0003, 0.0001, True)
    assert (saved["scheduler"], saved["warmup_steps"], saved["min_snr_gamma"]) == ("constant_with_warmup", 2, 5.0)
    assert (saved["clip_skip"], saved["noise_offset"], saved["save_precision"]) == (2, 0.05, "bf16")
    assert saved["sample_prompts"] == [
        "lvshape, a red circle --n blurry --w 64 --h 64 --s 2 --l 6.5 --d 7 --ss euler_a"]
    assert saved["sample_every"] == "1e"
    meta = safe_open(str(tmp_path / "models" / "ot-lora.safetensors"), framework="pt").metadata()
    assert set(json.loads(meta["ss_tag_frequency"])) == {"alpha"}  # the concept, by its folder's name
    assert list((tmp_path / "workspace").glob("**/*.png"))  # its sample was drawn
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == [  # (with AUTOMATIC1111's card files)
        "ot-lora.json", "ot-lora.preview.png", "ot-lora.safetensors"]


def test_what_lowvram_cannot_train_as_onetrainer_would_is_refused_one_line_each(tmp_path):
    path = onetrainer_folder(tmp_path)
    doc = CONFIG | {"training_method": "FINE_TUNE", "model_type": "STABLE_DIFFUSION_3", "peft_type": "OFT_2",
                    "mse_strength": 1.0, "huber_strength": 0.5, "resolution": "512;768", "loss_scaler": "BATCH",
                    "learning_rate_scheduler": "ADAFACTOR", "optimizer": {"optimizer": "CAME_8BIT"},
                    "layer_filter_preset": "custom", "layer_filter": "down_blocks.0", "unet": {"weight_dtype": "GGUF"},
                    "additional_embeddings": [{"placeholder": "<zkw>", "token_count": 2, "train": True}]}
    with pytest.raises(LowvramError) as error:
        translate_onetrainer(doc, path)
    expected = ["training_method: FINE_TUNE: lowvram trains LoRA adapters", "model_type: STABLE_DIFFUSION_3",
                "peft_type: OFT_2 is not an adapter", "mse_strength: mse_strength 1, huber_strength 0.5",
                "resolution: '512;768': give a number, numbers separated by commas", "loss_scaler: BATCH",
                "learning_rate_scheduler: ADAFACTOR", "optimizer: CAME_8BIT is not one lowvram has",
                "layer_filter: down_blocks.0",
                "unet.weight_dtype: GGUF", "additional_embeddings: lowvram trains no embeddings"]
    assert_one_line_each(str(error.value), f"{path}: ", expected)


@pytest.mark.parametrize("network", [{"peft_type": "LORA", "lora_decompose": True}, {"peft_type": "LOHA"}])
def test_a_dropout_on_a_network_that_takes_none_is_refused(tmp_path, network):
    """DoRA's weight norm runs through the layers a dropout acts on; LyCORIS's LoHa and LoKr have no rank dropout."""
    with pytest.raises(LowvramError, match="dropout_probability: lowvram's (dora|loha) takes no dropout"):
        translate_onetrainer(CONFIG | network | {"dropout_probability": 0.1}, onetrainer_folder(tmp_path))


def test_inline_concepts_quantized_weights_and_files_that_are_no_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    inline = tmp_path / "inline.json"
    inline.write_text(json.dumps(CONFIG | {"concepts": [{"path": "imgs/alpha"}], "unet": {"weight_dtype": "NFLOAT_4"},
                                           "gradient_checkpointing": "CPU_OFFLOADED", "train_dtype": "BFLOAT_16",
                                           "samples": [], "masked_training": True,
                                           "masked_prior_preservation_weight": 1.0,
                                           "normalize_masked_area_loss": True}))
    values = read_config(inline)
    assert values["data"] == str(inline)  # its concepts are read from it
    with pytest.raises(LowvramError, match="unmasked_probability: '0.1x' is not a number"):  # a hand-edited one
        translate_onetrainer(json.loads(inline.read_text()) | {"unmasked_probability": "0.1x"}, tmp_path)
    for probability, noted in ((0.1, True), (0.0, False)):  # OneTrainer's presets train 10 % of steps unmasked
        _, notes = translate_onetrainer(json.loads(inline.read_text()) | {"unmasked_probability": probability},
                                        tmp_path)
        assert any(note.startswith(f"unmasked_probability {probability}: not carried over; lowvram trains every "
                                   "step with its mask") for note in notes) is noted, notes
    assert (values["unet_weights"], values["gradient_checkpointing"], values["offload_activations"]) == (
        "bnb-nf4", True, True)
    assert (values["mixed_precision"], values["masked_loss"], values["masked_prior_weight"],
            values["normalize_masked_area_loss"]) == ("bf16", True, 1.0, True)
    assert "left to lowvram's planner" not in capsys.readouterr().err  # every memory setting was the user's
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    assert main(["train", "--config", "other.json"]) == 2
    assert "--config: other.json is no config lowvram reads" in capsys.readouterr().err
    (tmp_path / "concepts.json").write_text(json.dumps([{"path": "imgs/alpha"}]))
    assert main(["train", "--config", "concepts.json"]) == 2
    assert "is given as --data concepts.json" in capsys.readouterr().err


def test_a_current_config_s_per_part_checkpointing_and_offloading_are_read(tmp_path):
    """OneTrainer's migration 10 moved gradient_checkpointing into each model part (a bool), with
    activation_offloading beside it: the U-Net's are the user's choice, not OneTrainer's defaults."""
    folder = onetrainer_folder(tmp_path)
    for unet, expected, planned in (({"gradient_checkpointing": False}, (False, None), False),
                                    ({"gradient_checkpointing": True, "activation_offloading": True}, (True, True),
                                     False),
                                    ({"gradient_checkpointing": True}, (None, None), True)):
        doc = CONFIG | {"__version": 12, "unet": (CONFIG.get("unet") or {}) | unet}
        doc.pop("gradient_checkpointing", None)
        values, notes = translate_onetrainer(doc, folder)
        assert (values.get("gradient_checkpointing"), values.get("offload_activations")) == expected, unet
        assert any("unet.gradient_checkpointing true" in note and "left to lowvram's planner" in note
                   for note in notes) is planned, notes
        assert not any(note.startswith("gradient_checkpointing ON") for note in notes), notes


def test_a_config_without_latent_caching_says_lowvram_caches(tmp_path):
    """latent_caching false (OneTrainer encodes each step, its augmentations new each time) was passed by unsaid."""
    folder = onetrainer_folder(tmp_path)
    for caching, said in ((False, True), (True, False)):
        notes = translate_onetrainer(CONFIG | {"latent_caching": caching}, folder)[1]
        assert any(note.startswith("latent_caching false: lowvram always caches the latents") for note in notes) is said


def test_a_cache_only_config_and_a_ckpt_format_are_said(tmp_path):
    """OneTrainer's only_cache (fill the caches, train nothing) and a CKPT output format were passed over unsaid: the
    run trained, and wrote a .safetensors."""
    notes = translate_onetrainer(CONFIG | {"only_cache": True, "output_model_format": "CKPT"},
                                 onetrainer_folder(tmp_path))[1]
    assert ("only_cache true: not carried over; this run caches the latents and text, then trains (stop it once its "
            "steps begin: the caches stay for the next run)") in notes
    assert ("output_model_format CKPT: lowvram writes the LoRA as .safetensors (kohya's layout), which every UI "
            "loads") in notes
    quiet = translate_onetrainer(CONFIG | {"only_cache": False, "output_model_format": "SAFETENSORS"},
                                 onetrainer_folder(tmp_path / "quiet"))[1]
    assert not any(note.startswith(("only_cache", "output_model_format")) for note in quiet)


def test_a_destination_and_workspace_written_with_backslashes_are_folders_here(tmp_path):
    """models\\zoe_lora.safetensors (a OneTrainer config saved on Windows) was refused as "--name: 'models\\zoe_lora'
    is not a valid file name", a --name never given."""
    values, _ = translate_onetrainer(CONFIG | {"output_model_destination": "models\\zoë_lora.safetensors",
                                               "workspace_dir": "workspace\\zoe"}, onetrainer_folder(tmp_path))
    assert (values["name"], values["copy_to"], values["output"]) == (
        "zoë_lora", "models/zoë_lora.safetensors", "workspace/zoe/zoë_lora")


def test_onetrainers_backups_are_lowvrams_timed_checkpoints(tmp_path):
    """OneTrainer backs a run up every 30 minutes by default: lowvram's checkpoints every --checkpoint-minutes."""
    folder = onetrainer_folder(tmp_path)
    bare = {key: value for key, value in CONFIG.items() if not key.startswith("backup_after")}
    assert {"checkpoint_minutes", "checkpoint_every"}.isdisjoint(translate_onetrainer(bare, folder)[0])  # both 30
    for backups, expected in (({"backup_after": 30, "backup_after_unit": "MINUTE"}, {"checkpoint_minutes": 30}),
                              ({"backup_after": 2, "backup_after_unit": "HOUR"}, {"checkpoint_minutes": 120}),
                              ({"backup_after": 90, "backup_after_unit": "SECOND"}, {"checkpoint_minutes": 1.5}),
                              ({"backup_after": 500, "backup_after_unit": "STEP"}, {"checkpoint_every": "500"}),
                              ({"backup_after": 2, "backup_after_unit": "EPOCH"}, {"checkpoint_every": "2e"}),
                              ({"backup_after": 30, "backup_after_unit": "NEVER"}, {"checkpoint_minutes": 0}),
                              ({"backup_after": 10}, {"checkpoint_minutes": 10}),  # (its presets: minutes)
                              ({"backup_after_unit": "HOUR"}, {"checkpoint_minutes": 30 * 60})):
        values, notes = translate_onetrainer(CONFIG | backups, folder)
        assert {key: values[key] for key in ("checkpoint_minutes", "checkpoint_every") if key in values} == expected
        assert not any("backup" in note for note in notes), notes
    # (by epochs it was not carried over: lowvram checkpointed by steps or minutes alone then); a time for samples is
    # said with the options that sample along the way
    values, notes = translate_onetrainer(CONFIG | {"sample_after": 10, "sample_after_unit": "MINUTE"}, folder)
    assert "sample_every" not in values
    assert ("sample_after 10 MINUTE: lowvram counts in steps or epochs, not time; not carried over (the run samples at "
            "its end: --sample-every N, or Ne for every N epochs, does so along the way)") in notes
    # how many it keeps: OneTrainer's newest rolling_backup_count, or every one (lowvram's two took the older away)
    for rolling, kept in (({"rolling_backup": True, "rolling_backup_count": 5}, 5), ({"rolling_backup": True}, 3)):
        assert translate_onetrainer(CONFIG | rolling, folder)[0]["keep_checkpoints"] == kept
    values, notes = translate_onetrainer(CONFIG | {"rolling_backup": False}, folder)
    assert "keep_checkpoints" not in values
    assert ("rolling_backup false: OneTrainer keeps every backup, lowvram the newest 2 checkpoints; --keep-checkpoints "
            "N keeps more") in notes
    values, notes = translate_onetrainer(CONFIG | {"rolling_backup": False, "backup_after_unit": "NEVER"}, folder)
    assert "keep_checkpoints" not in values and not any("rolling_backup" in note for note in notes)


def test_an_older_onetrainer_config_is_read_by_its_old_names_without_false_notes(tmp_path):
    """OneTrainer renamed settings over its versions (lora_layer_preset became layer_filter_preset, save_after
    save_every) and writes settings that change nothing at their values; none of them makes a note."""
    path = onetrainer_folder(tmp_path)
    old = {key: value for key, value in CONFIG.items() if key not in ("layer_filter", "layer_filter_preset",
                                                                         "save_every", "save_every_unit")}
    old |= {"__version": 6, "lora_layers": "attentions", "lora_layer_preset": "attn-mlp", "weight_dtype": "BFLOAT_16",
            "attention_mechanism": "DEFAULT", "align_prop": False, "align_prop_probability": 0.1,
            "noising_weight": 0.0, "noising_bias": 0.5, "save_after": 2, "save_after_unit": "EPOCH",
            "text_encoder": {"train": True, "stop_training_after": 10000, "stop_training_after_unit": "NEVER"}}
    values, notes = translate_onetrainer(old, path)
    assert (values["lora_layers"], values["save_every"], values["train_text_encoder"]) == ("attn-mlp", "2e", True)
    assert [note for note in notes if "planner" not in note and "copied there at the end" not in note] == [], notes
    with pytest.raises(LowvramError, match="align_prop: AlignProp's reward training is not something lowvram does"):
        translate_onetrainer(old | {"align_prop": True}, path)


@pytest.mark.parametrize(("encoders", "until", "note"), [
    ({"text_encoder": {"train": True, "stop_training_after": 200, "stop_training_after_unit": "STEP"}}, "200", None),
    ({"model_type": "STABLE_DIFFUSION_XL_10_BASE", "text_encoder_layer_skip": 0,  # (an SD1.5 config's
      # text_encoder_2 is not read)
      "text_encoder": {"train": True, "stop_training_after": 2, "stop_training_after_unit": "EPOCH"},
      "text_encoder_2": {"train": True, "stop_training_after": 5, "stop_training_after_unit": "EPOCH"}}, "2e",
     "the text encoders' stops differ (after 2e, after 5e); both stop as the first says"),
    ({"model_type": "STABLE_DIFFUSION_XL_10_BASE", "text_encoder_layer_skip": 0,  # (Python's None was said for
      # the one that never stops)
      "text_encoder": {"train": True, "stop_training_after": 0, "stop_training_after_unit": "NEVER"},
      "text_encoder_2": {"train": True, "stop_training_after": 200, "stop_training_after_unit": "STEP"}}, None,
     "the text encoders' stops differ (never, after 200); both stop as the first says"),
    ({"text_encoder": {"train": True, "stop_training_after": 30, "stop_training_after_unit": "MINUTE"}}, None,
     "stop_training_after 30 minute: lowvram stops the text encoders after steps or epochs, not a time"),
    ({"text_encoder": {"train": False, "stop_training_after": 3, "stop_training_after_unit": "EPOCH"}}, None, None),
])
def test_the_text_encoders_stop_training_as_onetrainer_says(tmp_path, encoders, until, note):
    path = onetrainer_folder(tmp_path)
    values, notes = translate_onetrainer({key: value for key, value in CONFIG.items() if key != "text_encoder"}
                                         | encoders, path)
    assert values.get("text_encoder_until") == until
    assert any(note in line for line in notes) if note else not any("stop_training_after" in n for n in notes)


def test_what_onetrainer_schedules_otherwise_is_said(tmp_path):
    """The U-Net's stop_training_after was passed over, and COSINE_WITH_RESTARTS (a smooth wave in OneTrainer)
    trained as hard restarts, unsaid."""
    path = onetrainer_folder(tmp_path)
    _, notes = translate_onetrainer(CONFIG | {"epochs": 5, "unet": {"train": True, "stop_training_after": 2,
                                                                    "stop_training_after_unit": "EPOCH"},
                                              "learning_rate_scheduler": "COSINE_WITH_RESTARTS"}, path)
    assert ("unet.stop_training_after 2 epoch: lowvram trains the U-Net's adapters to the end of the run; --epochs 2 "
            "ends the run there") in notes
    assert any(note.startswith("learning_rate_scheduler COSINE_WITH_RESTARTS: trained as cosine_with_restarts, a "
                               "decay from the full rate in each cycle") for note in notes)
    # OneTrainer's presets' 100000 epochs, past the run's end: nothing to say (it read as advice to train 100000)
    _, notes = translate_onetrainer(CONFIG | {"epochs": 5, "unet": {"train": True, "stop_training_after": 100000,
                                                                    "stop_training_after_unit": "EPOCH"}}, path)
    assert not any("stop_training_after" in note for note in notes), notes
    _, notes = translate_onetrainer(CONFIG | {"unet": {"train": True, "stop_training_after": 0,
                                                       "stop_training_after_unit": "NEVER"},
                                              "learning_rate_scheduler": "COSINE_WITH_HARD_RESTARTS"}, path)
    assert not any(note.startswith(("unet.stop", "learning_rate_scheduler")) for note in notes), notes
    # ALWAYS: every step, whatever the count (it was left out, unsaid)
    values, _ = translate_onetrainer(CONFIG | {"save_every": 0, "save_every_unit": "ALWAYS"}, path)
    assert values["save_every"] == "1"


# an early OneTrainer config (no __version): each model part's settings at the top level, the optimizer a name,
# min-SNR its own setting, gradient checkpointing a switch; as OneTrainer's LoRA presets were first written
EARLY = {
    "training_method": "LORA", "model_type": "STABLE_DIFFUSION_XL_10_BASE", "base_model_name": "tiny-sdxl",
    "weight_dtype": "FLOAT_16", "unet_weight_dtype": "NONE", "text_encoder_weight_dtype": "NONE",
    "vae_weight_dtype": "FLOAT_32", "output_model_destination": "models/early.safetensors",
    "concept_file_name": "training_concepts/concepts.json", "optimizer": "ADAMW_8BIT",
    "optimizer_weight_decay": 0.02, "learning_rate_scheduler": "CONSTANT", "learning_rate": 0.0003,
    "learning_rate_warmup_steps": 0, "epochs": 2, "batch_size": 1, "train_text_encoder": True,
    "train_text_encoder_epochs": 30, "text_encoder_learning_rate": 0.0001, "train_unet": True,
    "train_unet_epochs": 100000, "unet_learning_rate": 0.0002, "min_snr_gamma": 5.0, "noising_weight": 0.0,
    "noising_bias": 0.5, "gradient_checkpointing": True, "lora_rank": 8, "lora_alpha": 4.0,
    "token_count": 1, "initial_embedding_text": "*", "latent_caching_epochs": 1, "resolution": 64,
    "attention_mechanism": "XFORMERS", "save_after": 0, "save_after_unit": "NEVER",
}


def test_an_early_onetrainer_config_is_brought_up_to_date_as_onetrainer_does(tmp_path, monkeypatch):
    """OneTrainer's own migrations: the optimizer and its settings become a section, each part's settings move
    into it (the text encoder's epochs becoming its stop), min-SNR becomes a loss weighting. Nothing is lost in a
    note, and a config that was once a crash (an optimizer given by name) trains."""
    monkeypatch.chdir(tmp_path)  # (its LoRA is copied to models/ there)
    path = onetrainer_folder(tmp_path)
    values, notes = translate_onetrainer(EARLY, path)
    assert {key: values.get(key) for key in ("optimizer", "weight_decay", "lr", "train_text_encoder",
                                             "text_encoder_lr", "text_encoder_until", "min_snr_gamma", "rank")} == {
        "optimizer": "adamw8bit", "weight_decay": 0.02, "lr": 0.0002, "train_text_encoder": True,
        "text_encoder_lr": 0.0001, "text_encoder_until": "30e", "min_snr_gamma": 5.0, "rank": 8}
    assert not [note for note in notes if "not carried over" in note], notes
    assert any("unet.weight_dtype FLOAT_16" in note for note in notes)  # NONE read as the config's weight dtype
    # the stock presets of then (#sdxl 1.0 LoRA.json) keep it at the top level: named as no setting of lowvram's
    early = {key: value for key, value in EARLY.items() if key != "optimizer_weight_decay"} | {"weight_decay": 0.03}
    values, notes = translate_onetrainer(early, path)
    assert values["weight_decay"] == 0.03 and not [note for note in notes if "not carried over" in note], notes
    path.write_text(json.dumps(EARLY))
    assert main(["train", "--config", str(path), "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "early.safetensors").is_file()  # named as output_model_destination says
    assert (tmp_path / "models" / "early.safetensors").is_file()  # and where it says


def test_a_onetrainer_preset_as_its_repository_ships_it_is_read(tmp_path):
    """OneTrainer's presets hold only what differs from its defaults, the parts' settings in their sections."""
    path = onetrainer_folder(tmp_path)
    preset = {"base_model_name": "stable-diffusion-v1-5/stable-diffusion-v1-5", "batch_size": 4,
              "layer_filter_preset": "attn-mlp", "learning_rate": 0.0003, "model_type": "STABLE_DIFFUSION_15",
              "output_model_destination": "models/lora.safetensors", "output_model_format": "KOHYA_LORA",
              "resolution": "512", "training_method": "LORA", "vae": {"weight_dtype": "FLOAT_32"},
              "unet": {"weight_dtype": "FLOAT_16"}, "text_encoder": {"weight_dtype": "FLOAT_16"}}
    values, _ = translate_onetrainer(preset, path)
    assert {key: values.get(key) for key in ("model", "batch_size", "lora_layers", "lr", "resolution")} == {
        "model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "batch_size": 4, "lora_layers": "attn-mlp",
        "lr": 0.0003, "resolution": 512}
    for given, resolution, extra in (("512,768", 512, "768"), ("768x1024", 888, None), ("640x640", 640, None)):
        values, _ = translate_onetrainer(preset | {"resolution": given}, path)  # several; a shape: its area's
        assert (values["resolution"], values.get("extra_resolutions")) == (resolution, extra), given
        build_config(values)  # and lowvram trains them: at both sides, as buckets of the shape's area
    # (it was said to be kohya's width,height, which the OneTrainer user had not written)
    _, notes = translate_onetrainer(preset | {"resolution": "768x1024"}, path)
    assert "resolution '768x1024': lowvram trains aspect-ratio buckets of about its pixel area, those of 888 px " \
        "square" in notes
    with pytest.raises(LowvramError, match="resolution: '768x1024' with aspect_ratio_bucketing off: lowvram crops "
                       "every image square; give one side, or turn aspect_ratio_bucketing on"):
        translate_onetrainer(preset | {"resolution": "768x1024", "aspect_ratio_bucketing": False}, path)
    # what it leaves out is OneTrainer's default, not lowvram's: alpha 1 (not the rank: a LoRA 16 times weaker),
    # 200 warm-up steps, 100 epochs, the text encoder trained for its first 30 epochs
    assert {key: values.get(key) for key in ("rank", "alpha", "warmup_steps", "epochs", "train_text_encoder",
                                             "text_encoder_until")} == {
        "rank": 16, "alpha": 1.0, "warmup_steps": 200, "epochs": 100, "train_text_encoder": True,
        "text_encoder_until": "30e"}


@pytest.mark.parametrize(("settings", "expected"), [
    ({"timestep_distribution": "LOGIT_NORMAL", "noising_weight": 0.3, "noising_bias": -0.2, "timestep_shift": 2.0},
     {"timestep_distribution": "logit_normal", "noising_weight": 0.3, "noising_bias": -0.2, "timestep_shift": 2.0}),
    ({"timestep_distribution": "COS_MAP", "noising_weight": 0.0, "noising_bias": 0.5}, {"timestep_distribution":
                                                                                      "cos_map"}),
    ({"timestep_distribution": "UNIFORM", "noising_weight": 0.0, "noising_bias": 0.5}, {}),  # OneTrainer's defaults
])
def test_onetrainers_timestep_distribution_is_carried(tmp_path, settings, expected):
    path = onetrainer_folder(tmp_path)
    values, notes = translate_onetrainer(CONFIG | settings, path)
    keys = ("timestep_distribution", "noising_weight", "noising_bias", "timestep_shift")
    assert {key: values[key] for key in keys if key in values} == expected
    assert not [note for note in notes if "timestep" in note], notes
    build_config(values | {"output": str(tmp_path / "out")})  # and the run accepts it


@pytest.mark.parametrize(("encoders", "expected"), [
    ({"text_encoder": {"train": True, "learning_rate": 1e-5}, "text_encoder_2": {"train": False}},
     {"text_encoder_lr": 1e-5, "text_encoder_2_lr": 0.0}),
    ({"text_encoder": {"train": False}, "text_encoder_2": {"train": True}},
     {"text_encoder_lr": 0.0, "text_encoder_2_lr": 0.0003}),  # the second at the run's rate
    ({"text_encoder": {"train": True, "learning_rate": 2e-5}, "text_encoder_2": {"train": True, "learning_rate": 2e-5}},
     {"text_encoder_lr": 2e-5}),
])
def test_sdxls_two_text_encoders_train_as_onetrainer_says(tmp_path, encoders, expected):
    path = onetrainer_folder(tmp_path)
    doc = CONFIG | {"model_type": "STABLE_DIFFUSION_XL_10_BASE", "base_model_name": "tiny-sdxl",
                    "text_encoder_layer_skip": 0} | encoders
    values, notes = translate_onetrainer(doc, path)
    assert {key: values[key] for key in ("text_encoder_lr", "text_encoder_2_lr") if key in values} == expected
    assert values["train_text_encoder"] is True
    assert not [note for note in notes if note.startswith("text_encoder_2.train")]  # (the config says it)
    older = CONFIG | {"model_type": "STABLE_DIFFUSION_XL_10_BASE", "text_encoder": {"train": False},
                      "text_encoder_layer_skip": 0}
    values, notes = translate_onetrainer(older, path)  # no word of the second: OneTrainer trains it, and says not
    assert values["text_encoder_2_lr"] > 0 and any(note.startswith("text_encoder_2.train: not in the config, so "
                                                                   "OneTrainer's default (true)") for note in notes)


def test_a_preset_that_leaves_out_the_concepts_and_samples_files_reads_onetrainers_default_ones(tmp_path,
                                                                                                monkeypatch):
    """OneTrainer's presets hold only what differs from its defaults: training_concepts/concepts.json and
    training_samples/samples.json are read as OneTrainer reads them."""
    path = onetrainer_folder(tmp_path / "OneTrainer")
    preset = {key: value for key, value in CONFIG.items()
              if key not in ("concept_file_name", "sample_definition_file_name")}
    values, _ = translate_onetrainer(preset, path)
    assert values["data"] == str(tmp_path / "OneTrainer" / "training_concepts" / "concepts.json")
    assert values["sample_prompts"][0].startswith("lvshape, a red circle")
    monkeypatch.chdir(path.parent)  # the preset given by its name alone, from its own folder (a note said the
    values, _ = translate_onetrainer(preset, Path(path.name))  # concepts were in none of the folders they were in)
    assert values["data"] == str(tmp_path / "OneTrainer" / "training_concepts" / "concepts.json")
    assert values["sample_prompts"][0].startswith("lvshape, a red circle")
    for default in ("training_samples/samples.json", "training_concepts/concepts.json"):
        (tmp_path / "OneTrainer" / default).unlink()  # OneTrainer's own defaults, missing: --data gives the images
    monkeypatch.chdir(tmp_path)
    notes = translate_onetrainer(preset, path)[1]
    assert not any(note.startswith(("sample_definition_file_name", "concept_file_name")) for note in notes)
    assert (f"no concepts: OneTrainer's default training_concepts/concepts.json is in none of {tmp_path}, "
            f"{path.parent}, {tmp_path / 'OneTrainer'}; the images come from --data") in notes


def test_a_sample_with_a_random_seed_is_said_to_draw_with_one(tmp_path):
    """Its recipe's prompt held no seed, unsaid: the run's seed drew it at every save point."""
    path = onetrainer_folder(tmp_path / "OneTrainer")
    samples = [{"enabled": True, "prompt": "lvshape", "seed": 7, "random_seed": True},
               {"enabled": True, "prompt": "a cat", "seed": 8, "random_seed": False},
               {"enabled": False, "prompt": "left out", "random_seed": True}]
    values, notes = translate_onetrainer(CONFIG | {"sample_definition_file_name": "", "samples": samples}, path)
    assert values["sample_prompts"] == ["lvshape --ss ddim", "a cat --d 8 --ss ddim"]
    assert ("samples: random_seed on in 1 of them: not carried over; lowvram draws a prompt with one seed at every "
            "save point (its --d, else the run's --seed plus its place in the list), so its grids of successive "
            "steps compare") in notes
    assert not any("random_seed" in note for note in translate_onetrainer(CONFIG, path)[1])


def test_a_misspelt_setting_is_refused_naming_the_one_it_misspells(tmp_path):
    """learning_rte trained at OneTrainer's default rate, 100 times lower, said only among settings not carried."""
    doc = {key: value for key, value in CONFIG.items() if key not in ("learning_rate", "lora_rank")}
    older = {"effnet_encoder_weight_dtype": "FLOAT_32", "prior_weight_dtype": "FLOAT_32", "embeddings": [{}],
             "decoder_text_encoder_weight_dtype": "FLOAT_32"}  # (an older OneTrainer's own keys: no typos)
    assert translate_onetrainer(doc | older, tmp_path / "ot.json")
    with pytest.raises(LowvramError) as error:
        translate_onetrainer(doc | {"learning_rte": 3e-4, "lora_rnak": 32}, tmp_path / "ot.json")
    assert str(error.value).splitlines() == [
        f"{tmp_path / 'ot.json'}: {key}: no OneTrainer setting; did you mean {meant}? (as written, {meant} is left "
        "at OneTrainer's default)" for key, meant in (("learning_rte", "learning_rate"), ("lora_rnak", "lora_rank"))]
    with pytest.raises(LowvramError, match="text_encoder_learnig_rate: no OneTrainer setting; did you mean "
                                           "text_encoder_learning_rate"):  # (an older config keeps it at the top)
        translate_onetrainer(CONFIG | {"__version": 1, "text_encoder_learnig_rate": 1e-4}, tmp_path / "ot.json")
    assert translate_onetrainer(CONFIG | {"__version": 1, "text_encoder_weight_dtype": "FLOAT_32",
                                          "decoder_text_encoder_weight_dtype": "FLOAT_32"}, tmp_path / "ot.json")


def test_a_misspelt_setting_of_a_section_is_refused_naming_the_one_it_misspells(tmp_path):
    """optimizer.weight_decy trained at the library's weight decay, unet.learnig_rate at the run's rate: unsaid."""
    path = tmp_path / "ot.json"
    for section, key, meant in (("optimizer", "weight_decy", "weight_decay"), ("unet", "learnig_rate", "learning_rate"),
                                ("text_encoder", "learning_rte", "learning_rate")):
        with pytest.raises(LowvramError) as error:
            given = {name: value for name, value in CONFIG.get(section, {}).items() if name != meant}
            translate_onetrainer(CONFIG | {section: given | {key: 0.1}}, path)
        assert str(error.value) == (f"{path}: {section}.{key}: no OneTrainer setting; did you mean {section}.{meant}? "
                                    f"(as written, {section}.{meant} is left at OneTrainer's default)")
    with pytest.raises(LowvramError, match=r"optimizer.d_cof: .* did you mean optimizer.d_coef\?"):
        translate_onetrainer(CONFIG | {"optimizer": {"optimizer": "PRODIGY", "d_cof": 2.0}}, path)
    # OneTrainer's own settings a letter apart, each without its twin (a section as a preset holds it): no typos
    for optimizer, twin in (("ADAM", "eps2"), ("ADAGRAD", "initial_accumulator"), ("LAMB", "use_bias_correction"),
                            ("PRODIGY", "bias_correction"), ("ADAFACTOR", "eps2")):
        assert translate_onetrainer(CONFIG | {"optimizer": {"optimizer": optimizer, twin: 1e-3}}, path)
    assert translate_onetrainer(CONFIG | {"unet": {"train": True, "include": True, "offload_fraction": 0.0}}, path)


def test_continue_last_backup_is_resume_auto(tmp_path, monkeypatch):
    """OneTrainer's continue_last_backup goes on from its newest backup, else starts: --resume auto does both."""
    path = onetrainer_folder(tmp_path / "OneTrainer")
    monkeypatch.chdir(tmp_path / "OneTrainer")
    values, notes = translate_onetrainer({**CONFIG, "continue_last_backup": True}, path)
    assert values["resume"] == "auto" and build_config(values | {"model": "tiny"}).training.resume == "auto"
    assert "resume" not in translate_onetrainer({**CONFIG, "continue_last_backup": False}, path)[0]
    assert not any(note.startswith("continue_last_backup") for note in notes)
    # OneTrainer's own backups there are not lowvram's to continue: said (the run started over, unsaid)
    backups = tmp_path / "OneTrainer" / "workspace" / "run" / "backup"
    (backups / "2026-12-01_10-00-00-backup-120-3-0").mkdir(parents=True)
    _, notes = translate_onetrainer({**CONFIG, "continue_last_backup": True}, path)
    assert ("continue_last_backup: lowvram continues its own checkpoints (in workspace/run/ot-lora), not "
            "OneTrainer's backups in workspace/run/backup") in notes, notes
    for name in ("2026-12-01_10-00-00-backup-120-3-0", "2026-12-02_09-00-00-backup-240-6-0"):  # (omi LoRAs: read)
        (backups / name / "lora").mkdir(parents=True, exist_ok=True)
        (backups / name / "lora" / "lora.safetensors").write_bytes(b"")
    _, notes = translate_onetrainer({**CONFIG, "continue_last_backup": True}, path)
    assert any(note.endswith("backup/2026-12-02_09-00-00-backup-240-6-0/lora/lora.safetensors starts from the newest "
                             "one's LoRA (its optimizer state and step start over)") for note in notes), notes


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
@pytest.mark.parametrize("destination", ["C:\\Users\\me\\OneTrainer\\models\\ohwx.safetensors",
                                         "C:/Users/me/OneTrainer/models/ohwx.safetensors"])
def test_a_windows_output_destination_keeps_its_name_and_leaves_the_folder_to_output(tmp_path, destination):
    path = onetrainer_folder(tmp_path / "OneTrainer")
    values, notes = translate_onetrainer({**CONFIG, "output_model_destination": destination}, path)
    assert values["name"] == "ohwx" and "output" not in values
    assert any(note.startswith(f"output_model_destination {destination} is a Windows path") for note in notes)
    build_config(values | {"model": "tiny"})  # a name lowvram takes


@pytest.mark.parametrize("destination", ["models/", "models\\", "models"])
def test_a_folder_as_output_destination_is_refused_naming_a_file_in_it(tmp_path, destination, monkeypatch):
    """OneTrainer writes the LoRA to that path as a file and fails at the run's end: lowvram wrote
    ./models.safetensors."""
    path = onetrainer_folder(tmp_path / "OneTrainer")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(LowvramError) as error:
        translate_onetrainer({**CONFIG, "output_model_destination": destination}, path)
    assert str(error.value) == (f"{path}: output_model_destination: {destination} is a folder; OneTrainer writes the "
                                "LoRA to a file: give its name, as models/mylora.safetensors")


@pytest.mark.parametrize("name", sorted(OPTIMIZER_CLASSES))
def test_each_class_onetrainer_builds_is_one_that_takes_the_settings_given_it(name):
    """Each of OneTrainer's other optimizers names a class that is there (where its package is installed), is an
    optimizer, and takes every setting lowvram gives it: a typo or a library's rename fails here, not mid-run."""
    path, taken = OPTIMIZER_CLASSES[name]
    if importlib.util.find_spec(path.split(".")[0]) is None:
        pytest.skip(f"{path.split('.')[0]} is not installed")
    parameters = inspect.signature(optimizer_class(path)).parameters
    given = [JOINED[setting][0] if setting in JOINED else setting.partition(":")[2] or setting
             for setting in taken.split() if setting != WARMUP]
    if WARMUP in taken.split():  # the run's warm-up, which OneTrainer gives it
        assert "warmup_steps" in parameters
    assert [key for key in given if key not in parameters] == []
    assert "weight_decay" in parameters  # OneTrainer gives each its weight decay


@pytest.mark.parametrize(("section", "built", "expected"), [
    ({"optimizer": "ADAM", "beta1": 0.8, "beta2": 0.95, "eps": 1e-7, "amsgrad": True, "weight_decay": 0.05,
      "stochastic_rounding": True, "fused_back_pass": False, "momentum": 0.9, "__version": 0},
     torch.optim.Adam, {"betas": (0.8, 0.95), "eps": 1e-7, "amsgrad": True, "weight_decay": 0.05}),
    ({"optimizer": "AdEMAMix_8BIT", "beta1": 0.9, "beta2": 0.99, "beta3": 0.999, "alpha": 4.0, "eps": 1e-8,
      "weight_decay": 0.01, "min_8bit_size": 4096, "is_paged": False, "percentile_clipping": 100},
     "bitsandbytes.optim.AdEMAMix8bit", {"betas": (0.9, 0.99, 0.999), "alpha": 4.0, "weight_decay": 0.01}),
    ({"optimizer": "SGD", "momentum": 0.9, "nesterov": True, "dampening": 0.0, "weight_decay": 0.0, "beta1": 0.9},
     torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
])
def test_onetrainers_other_optimizers_train_as_the_class_onetrainer_builds_with_its_settings(tmp_path, section,
                                                                                              built, expected):
    values, _ = translate_onetrainer(CONFIG | {"optimizer": section}, onetrainer_folder(tmp_path))
    name = values["optimizer"]
    optimizer = build_optimizer(name, [{"params": [torch.nn.Parameter(torch.zeros(4))], "lr": 3e-4}],
                                values["weight_decay"], settings=optimizer_kwargs(name, values["optimizer_args"]))
    assert type(optimizer) is (built if isinstance(built, type) else optimizer_class(built))
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in expected} == expected
    assert group["lr"] == 3e-4


def test_a_onetrainer_optimizer_whose_package_is_missing_names_it_and_a_third_beta_joins_the_others(tmp_path):
    path = onetrainer_folder(tmp_path)
    section = {"optimizer": "CAME", "beta1": 0.9, "beta2": 0.999, "beta3": 0.9999, "eps": 1e-30, "eps2": 1e-16,
               "weight_decay": 0.01, "stochastic_rounding": True}
    values, _ = translate_onetrainer(CONFIG | {"optimizer": section}, path)
    assert (values["optimizer"], values["optimizer_args"]) == (
        "came_pytorch.CAME", ["eps=(1e-30, 1e-16)", "betas=(0.9, 0.999, 0.9999)"])
    tiger, _ = translate_onetrainer(CONFIG | {"optimizer": {"optimizer": "TIGER", "beta1": 0.95,
                                                            "decoupled_decay": False}}, path)
    assert tiger["optimizer_args"] == ["beta=0.95", "weight_decouple=False"]  # under the class's own names
    # a number given as text is one, as OneTrainer's config types read it
    texts, _ = translate_onetrainer(CONFIG | {"optimizer": {"optimizer": "DADAPT_ADAM", "growth_rate": "1.02",
                                                            "decouple": "true"}}, path)
    assert optimizer_kwargs(texts["optimizer"], texts["optimizer_args"]) == {"decouple": True, "growth_rate": 1.02}
    # OneTrainer's default growth rate, which its JSON writes as Infinity: a number, not the text "inf"
    adapted, _ = translate_onetrainer(json.loads(json.dumps(CONFIG | {"optimizer": {
        "optimizer": "DADAPT_ADAM", "growth_rate": float("inf"), "d0": 1e-6}})), path)
    assert optimizer_kwargs(adapted["optimizer"], adapted["optimizer_args"]) == {"d0": 1e-6,
                                                                                 "growth_rate": float("inf")}
    belief, _ = translate_onetrainer(CONFIG | {"optimizer": {"optimizer": "ADABELIEF"}}, path)
    with pytest.raises(LowvramError, match=r"^--optimizer timm.optim.adabelief.AdaBelief: no package timm here; pip "
                                           r"install the one that has it"):  # (timm is no dependency of lowvram's)
        build_config(belief)


@pytest.mark.parametrize("optimizer", ["SCHEDULE_FREE_ADAMW", "SCHEDULE_FREE_SGD"])
@pytest.mark.parametrize("scheduler", ["CONSTANT", "COSINE"])
def test_a_schedule_free_optimizer_trains_at_a_constant_rate_with_its_own_warm_up_as_in_onetrainer(
        tmp_path, optimizer, scheduler):
    """OneTrainer trains a schedule-free optimizer at a constant rate whatever the schedule; its warm-up is the
    optimizer's own. A config with a warm-up (OneTrainer's default) was refused: it became constant_with_warmup."""
    doc = CONFIG | {"optimizer": {"optimizer": optimizer, "weight_decay": 0.0}, "learning_rate_scheduler": scheduler,
                    "learning_rate_warmup_steps": 10.0, "learning_rate_min_factor": 0.1}
    values, notes = translate_onetrainer(doc, onetrainer_folder(tmp_path))
    assert (values["scheduler"], values["warmup_steps"], "min_lr_ratio" in values) == ("constant", 10, False)
    assert not any("learning_rate_min_factor" in note for note in notes)  # read, and applied where it decays
    assert any(note.startswith(f"learning_rate_scheduler: {optimizer} replaces the schedule")
               for note in notes) == (scheduler == "COSINE")
    config = build_config(values)  # which refused constant_with_warmup for it
    optimizer = build_optimizer(config.optim.optimizer, [{"params": [torch.nn.Parameter(torch.zeros(4))],
                                                          "lr": 1e-3}], 0.0, warmup_steps=10)
    assert optimizer.param_groups[0]["warmup_steps"] == 10  # the optimizer warms up, not a schedule
    with use_averaged_weights(optimizer):
        assert not optimizer.param_groups[0]["train_mode"]  # a class's averaged weights are what is saved, too
    assert optimizer.param_groups[0]["train_mode"]


def test_a_warm_up_share_and_no_clipping_carry_over(tmp_path):
    """OneTrainer's learning_rate_warmup_steps under 1 is a share of the run, as lowvram's; clip_grad_norm null
    clips nothing."""
    values, _ = translate_onetrainer(CONFIG | {"learning_rate_scheduler": "COSINE",
                                               "learning_rate_warmup_steps": 0.05, "clip_grad_norm": None},
                                     onetrainer_folder(tmp_path))
    assert (values["warmup_steps"], values["max_grad_norm"]) == (0.05, 0.0)


def test_a_onetrainer_schedule_free_class_without_a_warm_up_of_its_own_trains_without_its_default_one(tmp_path):
    """OneTrainer's configs warm up 200 steps unless told otherwise: PRODIGY_PLUS_SCHEDULE_FREE, which takes no
    warm-up, then trains without one (a note says so) instead of being refused; SCHEDULE_FREE_SGD keeps its own."""
    path = onetrainer_folder(tmp_path)
    values, notes = translate_onetrainer(CONFIG | {"optimizer": {"optimizer": "PRODIGY_PLUS_SCHEDULE_FREE"},
                                                   "learning_rate_warmup_steps": 200.0}, path)
    assert (values["scheduler"], values["warmup_steps"]) == ("constant", 0)
    assert "learning_rate_warmup_steps: PRODIGY_PLUS_SCHEDULE_FREE takes no warm-up of its own" in " ".join(notes)
    values, notes = translate_onetrainer(CONFIG | {"optimizer": {"optimizer": "SCHEDULE_FREE_SGD"},
                                                   "learning_rate_warmup_steps": 200.0}, path)
    assert (values["scheduler"], values["warmup_steps"]) == ("constant", 200)
    assert not any(note.startswith("learning_rate_warmup_steps") for note in notes)


def test_a_schedule_free_class_without_a_warm_up_of_its_own_refuses_one(tmp_path):
    """Its schedule stays constant, so a --warmup-steps it cannot take would be no warm-up at all (kohya stops on
    RAdamScheduleFree's warmup_steps too)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(4))], "lr": 1e-3}]
    with pytest.raises(LowvramError, match=r"^--warmup-steps: schedulefree.RAdamScheduleFree has no warm-up of its "
                                           r"own, and a schedule-free optimizer takes no schedule's; drop "):
        build_optimizer("schedulefree.RAdamScheduleFree", groups, 0.0, warmup_steps=10)
    assert build_optimizer("schedulefree.RAdamScheduleFree", groups, 0.0).param_groups[0]["lr"] == 1e-3


def test_a_validation_concept_is_the_validation_data_validate_after_needs(tmp_path, monkeypatch):
    """validate_after in steps needs a validation set, which the config's own validation concept is: the file's
    values are checked beside its concepts' (they were checked alone, and the run refused to start)."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    path = tmp_path / "validating.json"
    path.write_text(json.dumps(CONFIG | {"validation": True, "validate_after": 2, "validate_after_unit": "STEP",
                                         "concepts": [{"path": "imgs/alpha"},
                                                      {"path": "imgs/beta", "type": "VALIDATION"}]}))
    values = read_config(path)
    assert (values["validate_every"], values["validation_data"]) == (2, str(tmp_path / "imgs" / "beta"))
    path.write_text(json.dumps(CONFIG | {"validation": True, "validate_after": 2, "validate_after_unit": "STEP",
                                         "concepts": [{"path": "imgs/alpha"}]}))
    assert "validate_every" not in read_config(path)  # OneTrainer validates nothing without a validation concept


def test_with_validation_off_a_validation_concept_is_not_validated_on(tmp_path, monkeypatch, capsys):
    """OneTrainer validates only with `validation` on; its validation concepts rest otherwise (lowvram validated on
    them once per epoch, the cost of a validation pass each time)."""
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path)
    concepts = [{"path": "imgs/alpha"}, {"path": "imgs/beta", "type": "VALIDATION"}]
    path = tmp_path / "resting.json"
    path.write_text(json.dumps(CONFIG | {"validation": False, "concepts": concepts}))
    assert read_config(path).get("validation_data") is None
    assert f"{path}: --validation-data {tmp_path / 'imgs' / 'beta'} is not used: {path} turns it off" in " ".join(
        capsys.readouterr().err.split())


def test_onetrainers_ema_averages_every_fifth_step_unless_its_interval_says_otherwise(tmp_path):
    for settings, every in (({"ema": "GPU"}, 5), ({"ema": "CPU", "ema_update_step_interval": 1}, None),
                            ({"ema": "GPU", "ema_update_step_interval": 3}, 3), ({"ema": "OFF"}, None)):
        values, notes = translate_onetrainer(CONFIG | settings, tmp_path / "c.json")
        assert values.get("ema_every") == every, settings
        assert not any("ema_update_step_interval" in note for note in notes)


def test_onetrainers_tensorboard_logs_are_written_where_tensorboard_is_installed(tmp_path, monkeypatch):
    """OneTrainer logs every run to TensorBoard (its switch starts the viewer); lowvram wrote none for its configs."""
    assert translate_onetrainer(CONFIG | {"tensorboard": False}, tmp_path / "c.json")[0]["tensorboard"] is True
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as where it is not installed: the run goes on without
    assert "tensorboard" not in translate_onetrainer(CONFIG, tmp_path / "c.json")[0]


@pytest.mark.parametrize(("preset", "written", "layers"), [("attn-mlp", "attentions", "attn-mlp"),
                                                           ("attn-only", "attn", "attn"), ("full", "", "full"),
                                                           # (layer_filter is what OneTrainer trains)
                                                           ("attn-only", "attentions", "attn-mlp"),
                                                           ("custom", "attn", "attn")])
def test_the_layer_filter_is_what_trains_and_the_text_encoders_layers_are_said(tmp_path, preset, written, layers):
    values, notes = translate_onetrainer(CONFIG | {"layer_filter_preset": preset, "layer_filter": written},
                                         onetrainer_folder(tmp_path))
    assert values["lora_layers"] == layers
    # OneTrainer's filter is the U-Net's: its text encoders' MLPs train all the same
    assert ("lowvram adapts the text encoders' attention alone too" in " ".join(notes)) == (layers == "attn")


def test_a_fractional_validate_after_is_said_as_written(tmp_path):
    _, notes = translate_onetrainer(CONFIG | {"validation": True, "validate_after": 0.5, "validate_after_unit": "EPOCH"},
                                    onetrainer_folder(tmp_path))
    assert any(note.startswith("validate_after 0.5 EPOCH: lowvram validates once per epoch") for note in notes), notes
    values, _ = translate_onetrainer(CONFIG | {"validation": True, "validate_after": 2.5, "validate_after_unit": "STEP"},
                                     onetrainer_folder(tmp_path / "steps"))
    assert values["validate_every"] == 3  # (every 2.5 steps: rounded to 2, it validated more often than asked)


def test_a_ckpt_destination_and_a_run_an_earlier_lowvram_trained_in_models_go_on(tmp_path, monkeypatch):
    """A CKPT destination was refused as '--copy-to: ... is no .safetensors file', a flag never typed; a run an
    earlier lowvram trained in models/ (the destination's folder) was refused as another run's copy."""
    monkeypatch.chdir(tmp_path)
    path = onetrainer_folder(tmp_path)
    values, _ = translate_onetrainer(CONFIG | {"output_model_destination": "models/ot.ckpt"}, path)
    assert (values["copy_to"], values["name"]) == ("models/ot.safetensors", "ot")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "lowvram-run.json").write_text(json.dumps({"name": "ot-lora", "recipe": {}}))
    values, notes = translate_onetrainer(CONFIG, path)
    assert values["output"] == "models" and "copy_to" not in values and not any("copied there" in n for n in notes)


def test_a_fused_back_pass_and_a_file_name_prefix_are_said_not_carried_over(tmp_path):
    folder = onetrainer_folder(tmp_path)
    doc = CONFIG | {"optimizer": CONFIG["optimizer"] | {"fused_back_pass": True}, "save_filename_prefix": "v2-"}
    notes = translate_onetrainer(doc, folder)[1]
    assert any(note.startswith("optimizer.fused_back_pass:") for note in notes)
    assert "not carried over (lowvram has no such setting): save_filename_prefix" in notes
    assert not any("fused_back_pass" in note for note in translate_onetrainer(CONFIG, folder)[1])


def test_what_a_preset_leaves_out_and_a_mistyped_precision_are_read_as_onetrainer_reads_them(tmp_path):
    """A shipped preset names no output_dtype (OneTrainer saves FLOAT_32: fp16 was saved); train_dtype BF_16, a
    typo, and TFLOAT_32, a choice, were both 'OneTrainer's defaults'; cache_dir and the skipped first saves went
    unsaid; settings that change no LoRA filled the not-carried-over note."""
    folder = onetrainer_folder(tmp_path)
    bare = {key: value for key, value in CONFIG.items() if key != "output_dtype"}
    values, notes = translate_onetrainer(bare | {"train_dtype": "TFLOAT_32", "cache_dir": str(tmp_path / "drive"),
                                                 "save_skip_first": 2, "image_caching": True, "caching_threads": 2},
                                         folder)
    assert (values["save_precision"], values["mixed_precision"]) == ("fp32", "no")
    assert "cache_dir" not in values and f"cache_dir {tmp_path / 'drive'}: not carried over; lowvram keeps one cache " \
        "for every run (--cache-dir, or LOWVRAM_CACHE_DIR): give --cache-dir to put it there" in notes
    assert "save_skip_first 2: not carried over; lowvram saves and samples from the first interval" in notes
    assert not any("image_caching" in note or "caching_threads" in note for note in notes), notes
    for own in ("workspace-cache/run", "./workspace-cache/run/", "workspace-cache\\run"):  # (OneTrainer's, unsaid)
        assert not any("cache_dir" in note for note in translate_onetrainer(CONFIG | {"cache_dir": own}, folder)[1])
    assert translate_onetrainer(CONFIG | {"output_model_format": "DIFFUSERS_LORA"}, folder)[0]["format"] == "diffusers"
    with pytest.raises(LowvramError, match=r"train_dtype: BF_16: not a precision OneTrainer trains in \(FLOAT_16, "):
        translate_onetrainer(CONFIG | {"train_dtype": "BF_16"}, folder)


def test_a_lora_trained_further_takes_its_rank_and_alpha_where_the_config_names_none(tmp_path):
    """lora_model_name of a rank-4 LoRA, lora_rank and lora_alpha left out: OneTrainer's 16 and 1 were taken and the
    file refused for them, naming --rank and --alpha, flags no OneTrainer config has."""
    from safetensors.torch import save_file

    folder = onetrainer_folder(tmp_path)
    earlier = tmp_path / "earlier.safetensors"
    base = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{base}.lora_down.weight": torch.ones(4, 32), f"{base}.lora_up.weight": torch.ones(32, 4),
               f"{base}.alpha": torch.tensor(2.0)}, str(earlier))
    doc = {key: value for key, value in CONFIG.items() if key not in ("lora_rank", "lora_alpha")}
    values, _ = translate_onetrainer(doc | {"lora_model_name": str(earlier)}, folder)
    assert "rank" not in values and "alpha" not in values
    from lowvram.lora_header import with_network_weights

    config = build_config(with_network_weights(values, quiet=True))  # (as the command line reads a config)
    assert (config.network.rank, config.network.alpha) == (4, 2.0)
    values, _ = translate_onetrainer(doc, folder)  # without a file: OneTrainer's own defaults
    assert (values["rank"], values["alpha"]) == (16, 1.0)


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is this machine's own there")
def test_a_windows_workspace_is_said_to_be_replaced_not_credited(tmp_path):
    folder = onetrainer_folder(tmp_path)
    values, notes = translate_onetrainer(CONFIG | {"workspace_dir": "D:/OneTrainer/workspace/run",
                                                   "output_model_destination": "models/ot-lora.safetensors"}, folder)
    assert values["output"] == str(Path("workspace/run/ot-lora"))
    assert "workspace_dir D:/OneTrainer/workspace/run is a Windows path: the run's files go to workspace/run here" \
        in notes
    assert not any("(workspace_dir/<name>)" in note for note in notes), notes


def test_a_config_of_another_model_type_than_its_model_is_refused(tmp_path, monkeypatch, capsys):
    """An SD1.5 preset given an SDXL model (a dropdown's slip): OneTrainer fails to load it; lowvram trained."""
    path = onetrainer_folder(tmp_path / "OneTrainer")
    monkeypatch.chdir(tmp_path)
    path.write_text(json.dumps(CONFIG | {"base_model_name": "tiny-sdxl"}))
    assert main(["plan", "--config", str(path), "--vram", "8GB"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"--model: tiny-sdxl is tiny SDXL (random weights), but {path} is a recipe for SD1.5 (its model_type is "
        "STABLE_DIFFUSION_15); pass an SD1.5 model, or a recipe made for tiny SDXL (random weights)")


def test_a_sample_prompt_given_beside_a_onetrainer_config_replaces_its_samples_at_its_interval(tmp_path, capsys):
    """Its samples.json left on another machine: 'not found; no samples' was said beside the --sample-prompt given,
    and the interval dropped with the samples."""
    import tomllib

    from lowvram.cli import main

    config = tmp_path / "ot.json"
    config.write_text(json.dumps({"__version": 6, "training_method": "LORA", "model_type": "STABLE_DIFFUSION_15",
                                  "base_model_name": "tiny", "resolution": "64", "epochs": 1, "sample_after": 2,
                                  "sample_after_unit": "STEP", "concept_file_name": "",
                                  "sample_definition_file_name": str(tmp_path / "elsewhere" / "samples.json")}))
    assert main(["train", "--config", str(config), "--data", "sample", "--sample-prompt", "a cat", "--dry-run"]) == 0
    captured = capsys.readouterr()
    output = tomllib.loads(captured.out.split("\n", 1)[1])["output"]
    assert (output["sample_prompts"], output["sample_every"]) == (["a cat"], "2")
    assert "samples.json" not in captured.err


def test_the_text_encoders_layer_skips_are_read_for_the_model_type_that_reads_them(tmp_path):
    """SDXL's skip (OneTrainer reads that many layers before the penultimate one) was kohya's clip skip, refused as
    a --clip-skip never typed; SD1.5 took a second encoder's skip, left from another model type, as its own."""
    path = onetrainer_folder(tmp_path)
    sd15 = CONFIG | {"text_encoder_layer_skip": 0, "text_encoder_2_layer_skip": 1}
    assert "clip_skip" not in translate_onetrainer(sd15, path)[0]
    assert translate_onetrainer(CONFIG, path)[0]["clip_skip"] == 2
    sdxl = CONFIG | {"model_type": "STABLE_DIFFUSION_XL_10_BASE", "text_encoder_layer_skip": 0,
                     "text_encoder_2_layer_skip": 1}
    with pytest.raises(LowvramError) as error:
        translate_onetrainer(sdxl, path)
    assert str(error.value) == (
        f"{path}: text_encoder_2_layer_skip: 1: OneTrainer reads SDXL's text encoder that many layers before the "
        "penultimate one, as lowvram and kohya never do; set it to 0")


def test_the_dry_run_says_continue_last_backup_resumes(tmp_path, capsys):
    """continue_last_backup is --resume auto, a run's circumstance its .toml leaves out: the dry run that prints
    "every option the run would train with" said nothing of it."""
    import tomllib

    from lowvram.cli import main

    config = tmp_path / "ot.json"
    config.write_text(json.dumps({"__version": 6, "training_method": "LORA", "model_type": "STABLE_DIFFUSION_15",
                                  "base_model_name": "tiny", "resolution": "64", "epochs": 1, "concept_file_name": "",
                                  "continue_last_backup": True}))
    assert main(["train", "--config", str(config), "--data", "sample", "--dry-run"]) == 0
    out = capsys.readouterr().out
    tomllib.loads(out.split("\n", 1)[1])  # (still TOML, the line a comment)
    assert ("# and --resume auto: it goes on from the newest checkpoint in its --output, else starts the run"
            in out.splitlines())
