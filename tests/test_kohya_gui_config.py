"""A kohya_ss GUI config (the JSON its LoRA tab saves, and its presets) given to --config trains as kohya_ss would
have sd-scripts train it: its LoRA type, epochs, percent warm-up and text-encoder stop, attention and noise choices,
sample prompts and additional parameters, in the GUI's own shapes (numbers as text, empty strings for unset)."""

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_each
from safetensors import safe_open

from lowvram.cli import main, train_values
from lowvram.cli_parser import build_parser
from lowvram.configure import build_config, read_config, read_toml
from lowvram.errors import LowvramError
from lowvram.kohya_config import translate
from lowvram.kohya_gui_config import translate_gui

# what the GUI saves for a standard LoRA (modelled on kohya_ss's "SDXL - LoRA AI_characters standard" preset):
# every field, the unset ones empty, many numbers as text
STANDARD = {
    "LoRA_type": "Standard", "adaptive_noise_scale": 0, "additional_parameters": "", "block_alphas": "",
    "block_dims": "", "block_lr_zero_threshold": "", "bucket_no_upscale": False, "bucket_reso_steps": 64,
    "cache_latents": True, "cache_latents_to_disk": True, "caption_dropout_every_n_epochs": 0.0,
    "caption_dropout_rate": 0.05, "caption_extension": ".txt", "clip_skip": "1", "color_aug": False,
    "conv_alpha": 1, "conv_block_alphas": "", "conv_block_dims": "", "conv_dim": 1, "decompose_both": False,
    "dim_from_weights": False, "down_lr_weight": "", "enable_bucket": True, "epoch": 50, "factor": -1,
    "flip_aug": False, "full_bf16": False, "full_fp16": False, "gradient_accumulation_steps": "1",
    "gradient_checkpointing": True, "keep_tokens": "0", "learning_rate": 3e-05, "lora_network_weights": "",
    "lr_scheduler": "constant", "lr_scheduler_args": "", "lr_scheduler_num_cycles": "", "lr_scheduler_power": "",
    "lr_warmup": 0, "max_bucket_reso": 2048, "max_data_loader_n_workers": "0", "max_resolution": "64,64",
    "max_timestep": 1000, "max_token_length": "75", "max_train_epochs": "", "max_train_steps": "2",
    "mem_eff_attn": False, "mid_lr_weight": "", "min_bucket_reso": 256, "min_snr_gamma": 5, "min_timestep": 0,
    "mixed_precision": "no", "module_dropout": 0, "multires_noise_discount": 0, "multires_noise_iterations": 0,
    "network_alpha": 8, "network_dim": 8, "network_dropout": 0, "no_token_padding": False, "noise_offset": 0,
    "noise_offset_type": "Original", "num_cpu_threads_per_process": 2, "optimizer": "AdamW", "optimizer_args": "",
    "persistent_data_loader_workers": False, "prior_loss_weight": 1.0, "random_crop": False, "rank_dropout": 0,
    "save_every_n_epochs": 1, "save_every_n_steps": 0, "save_last_n_steps": 0, "save_last_n_steps_state": 0,
    "save_precision": "fp16", "scale_v_pred_loss_like_noise_pred": False, "scale_weight_norms": 0, "sdxl": False,
    "sdxl_cache_text_encoder_outputs": False, "sdxl_no_half_vae": True, "seed": "", "shuffle_caption": False,
    "stop_text_encoder_training_pct": 0, "text_encoder_lr": 3e-05, "train_batch_size": 1, "train_on_input": True,
    "training_comment": "3 repeats", "unet_lr": 3e-05, "unit": 1, "up_lr_weight": "", "use_cp": False,
    "use_wandb": False, "v2": False, "v_parameterization": False, "v_pred_like_loss": 0, "vae_batch_size": 0,
    "weighted_captions": False, "xformers": "xformers",
    "pretrained_model_name_or_path": "tiny", "train_data_dir": "sample", "output_name": "gui",
}


def write(path: Path, settings: dict) -> Path:
    path.write_text(json.dumps(settings, indent=4))
    return path


def test_a_kohya_ss_gui_config_trains_the_lora_kohya_ss_would(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "gui.json", STANDARD | {"output_dir": str(tmp_path / "out"), "xformers": "sdpa"})
    assert main(["train", "--config", str(path)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "read as a kohya_ss GUI config" in err and "not carried over" not in err  # every field placed
    values = read_toml(tmp_path / "out" / "gui.toml")  # the resolved config (the text encoders at --lr, as given)
    assert {key: values.get(key) for key in ("rank", "alpha", "lora_layers", "lr", "text_encoder_lr", "max_steps",
                                             "min_snr_gamma", "attention", "resolution", "gradient_checkpointing",
                                             "caption_dropout", "train_text_encoder")} == {
        "rank": 8, "alpha": 8.0, "lora_layers": "attn-mlp", "lr": 3e-05, "text_encoder_lr": None, "max_steps": 2,
        "min_snr_gamma": 5, "attention": "sdpa", "resolution": 64, "gradient_checkpointing": True,
        "caption_dropout": 0.05, "train_text_encoder": True}
    meta = safe_open(str(tmp_path / "out" / "gui.safetensors"), framework="pt").metadata()
    assert meta["ss_training_comment"] == "3 repeats" and meta["ss_network_dim"] == "8"


def settings_of(tmp_path, **changes) -> dict:
    values, _ = translate_gui(STANDARD | changes, tmp_path / "gui.json")
    return values


@pytest.mark.parametrize("kind", ["gui.json", "config.toml", "train.bat"])
def test_a_configs_clip_skip_for_an_sdxl_model_is_left_out_with_a_note_as_kohya_ignores_it(tmp_path, kind, capsys):
    """Pony guides give clip_skip 2, and their configs carry it: kohya's SDXL script warns and trains on, where a
    kohya .toml or launcher was refused (the GUI's file, by its sdxl switch, even for an SD1.5 model)."""
    config = tmp_path / kind
    if kind == "gui.json":
        config.write_text(json.dumps(STANDARD | {"sdxl": True, "clip_skip": "2",
                                                 "pretrained_model_name_or_path": "tiny-sdxl"}))
    elif kind == "config.toml":
        config.write_text('pretrained_model_name_or_path = "tiny-sdxl"\ntrain_data_dir = "sample"\n'
                          'network_module = "networks.lora"\nclip_skip = 2\n')
    else:
        config.write_text("accelerate launch sdxl_train_network.py --pretrained_model_name_or_path=tiny-sdxl "
                          "--train_data_dir=sample --network_module=networks.lora --clip_skip=2\n")
    values = train_values(build_parser().parse_args(["train", "--config", str(config)]))
    assert "clip_skip" not in values
    note = (f"{config}: clip_skip 2: tiny SDXL (random weights) reads its text encoders' penultimate layer already, "
            "and kohya ignores clip skip for it; not carried over")
    assert note in capsys.readouterr().err
    from lowvram.ui.form import read_for_form  # (the web UI's Load: its plan refused the form's clip skip)

    values, notes = read_for_form(config)
    assert "clip_skip" not in values and note in notes
    if kind == "config.toml":  # (an SD1.5 model reads it; the others are SDXL recipes, which it is refused)
        sd15 = train_values(build_parser().parse_args(["train", "--config", str(config), "--model", "tiny"]))
        assert sd15["clip_skip"] == 2
    else:
        with pytest.raises(LowvramError, match=f"--model: tiny is tiny SD \\(random weights\\), but {config} is a "
                                               "recipe for SDXL"):
            train_values(build_parser().parse_args(["train", "--config", str(config), "--model", "tiny"]))
    assert main(["plan", "--config", str(config), "--vram", "8GB", "--clip-skip", "2"]) == 2  # typed: refused
    assert "--clip-skip 2: tiny SDXL (random weights) already reads" in capsys.readouterr().err


def test_the_gui_s_wandb_switch_logs_to_the_project_sd_scripts_names(tmp_path):
    values, _ = translate_gui(STANDARD | {"use_wandb": True, "wandb_run_name": "first"}, tmp_path / "gui.json")
    assert (values["wandb_project"], values["wandb_run_name"]) == ("network_train", "first")
    values, notes = translate_gui(STANDARD | {"use_wandb": False, "wandb_run_name": "first", "wandb_api_key": "0a1b"},
                                  tmp_path / "gui.json")
    assert not any(key.startswith("wandb") for key in values) and not any("wandb" in note for note in notes)


def test_a_config_of_several_gpus_says_how_to_launch_as_many(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _, notes = translate_gui(STANDARD | {"num_processes": 2, "multi_gpu": True}, tmp_path / "gui.json")
    assert (f"num_processes 2: kohya_ss launches that many processes, one per GPU; here: accelerate launch "
            f"--multi_gpu --num_processes 2 -m lowvram train --config {tmp_path / 'gui.json'}") in notes
    monkeypatch.setenv("WORLD_SIZE", "2")  # launched so
    assert not any("num_processes" in note for note in translate_gui(STANDARD | {"num_processes": 2},
                                                                      tmp_path / "gui.json")[1])
    assert not any("num_processes" in note for note in translate_gui(STANDARD | {"num_processes": 1},
                                                                      tmp_path / "gui.json")[1])


def test_the_gui_s_network_types_become_kohya_s_networks(tmp_path):
    # the GUI's xformers: xformers where it runs, else SDPA (the same memory), never a refusal on a card without it
    assert settings_of(tmp_path)["attention"] == "auto"
    locon = settings_of(tmp_path, LoRA_type="Kohya LoCon", conv_dim=4, conv_alpha=2)
    assert (locon["lora_layers"], locon["conv_rank"], locon["conv_alpha"]) == ("full", 4, 2.0)
    lokr = settings_of(tmp_path, LoRA_type="LyCORIS/LoKr", LyCORIS_preset="attn-mlp", network_dim=100000,
                       network_alpha=1, conv_dim=100000, factor=6)
    assert (lokr["network"], lokr["lokr_factor"], lokr["rank"], lokr["lora_layers"]) == ("lokr", 6, 100000,
                                                                                       "attn-mlp")
    dora = settings_of(tmp_path, LoRA_type="LyCORIS/LoCon", dora_wd=True)
    assert (dora["network"], dora["lora_layers"]) == ("dora", "full")
    with pytest.raises(LowvramError, match="network_args dora_wd: LyCORIS's loha with weight decomposition"):
        settings_of(tmp_path, LoRA_type="LyCORIS/LoHa", dora_wd=True)
    blocks = settings_of(tmp_path, block_dims=",".join(["4"] * 25), up_lr_weight="0.5,0.5")
    assert (blocks["block_ranks"], blocks["up_lr_weight"]) == (",".join(["4"] * 25), "0.5,0.5")
    with pytest.raises(LowvramError) as error:
        settings_of(tmp_path, LoRA_type="LyCORIS/iA3")
    assert_one_line_each(str(error.value), f"{tmp_path / 'gui.json'}: ", ["LoRA_type: 'LyCORIS/iA3' is not a network"])


def test_percent_settings_epochs_and_switches_take_the_gui_s_meaning(tmp_path):
    values = settings_of(tmp_path, max_train_steps="", epoch=3, lr_warmup=10, lr_scheduler="cosine",
                         stop_text_encoder_training_pct=25,
                         xformers="sdpa", noise_offset_type="Multires", noise_offset=0.1,
                         multires_noise_iterations=6, multires_noise_discount=0.3)
    # (kohya_ss's LoRA tab ignores its "Stop TE" percent: "not yet supported. Ignoring")
    assert {key: values.get(key) for key in ("epochs", "warmup_steps", "text_encoder_until", "attention",
                                             "noise_offset", "multires_noise_iterations")} == {
        "epochs": 3, "warmup_steps": 0.1, "text_encoder_until": None, "attention": "sdpa", "noise_offset": None,
        "multires_noise_iterations": 6}
    # no epochs nor steps: kohya_ss counts no steps, so no warm-up (sd-scripts trains 1600 steps without one)
    values, notes = translate_gui(STANDARD | {"max_train_steps": "", "epoch": 0, "lr_warmup": 10,
                                              "lr_scheduler": "cosine"}, tmp_path / "gui.json")
    assert "warmup_steps" not in values and any(note.startswith("lr_warmup 10% not used: with no epoch nor "
                                                                "max_train_steps") for note in notes), values
    original = settings_of(tmp_path, noise_offset=0.1, multires_noise_iterations=6)
    assert (original["noise_offset"], original.get("multires_noise_iterations")) == (0.1, None)
    # SDXL's cached text encoder outputs cannot train them: kohya refuses, and the text encoders trained here
    with pytest.raises(LowvramError, match="cache_text_encoder_outputs: cached text embeddings cannot train"):
        settings_of(tmp_path, sdxl=True, sdxl_cache_text_encoder_outputs=True)
    assert settings_of(tmp_path, sdxl=True, sdxl_cache_text_encoder_outputs=True, text_encoder_lr=0)[
        "train_text_encoder"] is False
    # without a unet_lr the GUI's text_encoder_lr 0 trains them all the same (learning_rate stands in): the fix says so
    with pytest.raises(LowvramError, match=r"\(or text_encoder_lr 0; in kohya_ss's GUI, beside a unet_lr\)"):
        settings_of(tmp_path, sdxl=True, sdxl_cache_text_encoder_outputs=True, text_encoder_lr=0, unet_lr="")
    assert settings_of(tmp_path, clip_skip=2)["clip_skip"] == 2  # (an SDXL model's: left out, see below)
    constant, notes = translate_gui(STANDARD | {"lr_warmup": 10, "max_train_steps": 100}, tmp_path / "gui.json")
    assert "warmup_steps" not in constant and "lr_warmup 10%: the constant scheduler has no warm-up (sd-scripts " \
        "stops at one" in " ".join(notes)
    steps, notes = translate_gui(STANDARD | {"lr_warmup_steps": 20, "max_train_steps": 100}, tmp_path / "gui.json")
    assert "warmup_steps" not in steps and "lr_warmup_steps 20: the constant scheduler" in " ".join(notes)
    free, notes = translate_gui(STANDARD | {"lr_warmup": 10, "max_train_steps": 100, "optimizer": "AdamWScheduleFree",
                                            "optimizer_args": "warmup_steps=50"}, tmp_path / "gui.json")
    assert free["warmup_steps"] == 50 and "the constant scheduler has no warm-up" not in " ".join(notes)
    unet_only = settings_of(tmp_path, text_encoder_lr=0)  # the GUI's way of training the U-Net alone
    assert unet_only["train_text_encoder"] is False
    both_at_the_rate = settings_of(tmp_path, text_encoder_lr=0, unet_lr=0, learning_rate=5e-4)  # both left out
    assert both_at_the_rate["train_text_encoder"] is True and both_at_the_rate["lr"] == 5e-4
    assert "text_encoder_lr" not in both_at_the_rate
    # the GUI's epochs make the steps it passes, unless sd-scripts' own flag gives them, or a dataset file (whose
    # images kohya_ss does not count: sd-scripts' 1600 steps then)
    steps = settings_of(tmp_path, max_train_steps="", epoch=10, additional_parameters="--max_train_steps=500")
    assert (steps["max_steps"], steps.get("epochs")) == (500, None)
    from_file, notes = translate_gui(STANDARD | {"max_train_steps": "", "epoch": 10, "dataset_config": str(
        tmp_path / "dataset.toml")}, tmp_path / "gui.json")
    assert (from_file["max_steps"], from_file.get("epochs")) == (1600, None)
    assert any(note.startswith("epoch 10 not used: with a dataset_config kohya_ss passes no length") for note in notes)
    assert not any("lowvram" in note for note in translate_gui(STANDARD | {"lowvram": True}, tmp_path / "g.json")[1])
    _, notes = translate_gui(STANDARD | {"max_train_steps": 0, "max_train_epochs": 0, "epoch": 10,  # (newer GUIs' 0)
                                         "dataset_config": str(tmp_path / "dataset.toml")}, tmp_path / "gui.json")
    assert any(note.startswith("epoch 10 not used: with a dataset_config kohya_ss passes no length") for note in notes)
    from_file, notes = translate_gui(STANDARD | {"max_train_steps": "", "lr_warmup": 10, "dataset_config": str(
        tmp_path / "dataset.toml")}, tmp_path / "gui.json")
    assert "warmup_steps" not in from_file and any(note.startswith("lr_warmup 10% not used") for note in notes)
    restarts = settings_of(tmp_path, lr_scheduler="cosine_with_restarts", epoch=10)  # no cycles: one per epoch
    assert restarts["scheduler_cycles"] == 10 and "scheduler_cycles" not in settings_of(tmp_path, epoch=10)
    # --epochs beside it: a restart per epoch of the run, as kohya_ss counts them anew (it kept the file's 10)
    restarts, _ = translate_gui(STANDARD | {"lr_scheduler": "cosine_with_restarts", "epoch": 10}, tmp_path / "g.json",
                                {"epochs": 2})
    assert restarts["scheduler_cycles"] == 2
    # with a dataset_config, --epochs is no epoch "not used" (review: its own value was said to be unused)
    _, notes = translate_gui(STANDARD | {"max_train_steps": 0, "epoch": 10, "dataset_config": str(
        tmp_path / "dataset.toml")}, tmp_path / "g.json", {"epochs": 5})
    assert not any("not used: with a dataset_config" in note for note in notes)
    build_config(values | {"model": "tiny"})  # and lowvram takes them


def test_sample_prompts_text_and_additional_parameters_are_read_as_kohya_ss_passes_them(tmp_path):
    values = settings_of(tmp_path, sample_prompts="# a comment\nlvshape, a red circle --w 64 --h 64\n\n",
                         sample_every_n_steps=25,
                         additional_parameters='--max_grad_norm=0.5 --noise_offset 0.05 --network_args "conv_dim=4" '
                                               '"conv_alpha=1" --flip_aug')
    assert values["sample_prompts"] == ["lvshape, a red circle --w 64 --h 64 --l 7.5"]
    assert values["sample_every"] == "25"  # the GUI's prompts are the ones kohya_ss samples every 25 steps
    assert values["sample_sampler"] == "euler_a"  # the GUI's default sampler, whether or not the file names one
    assert settings_of(tmp_path, sample_prompts="a", sample_sampler="k_dpm_2")["sample_sampler"] == "dpm_2"
    assert (values["max_grad_norm"], values["noise_offset"], values["flip"]) == (0.5, 0.05, True)
    assert (values["lora_layers"], values["conv_rank"]) == ("full", 4)  # network_args on the command line win
    with pytest.raises(LowvramError, match=r"additional_parameters: 'stray' follows no --flag"):
        settings_of(tmp_path, additional_parameters="stray --flip_aug")
    # a typo typed there is refused as sd-scripts refuses it (it trained min_snr_gamma 5, after a note), whether or
    # not the GUI's file has the setting it meant
    with pytest.raises(LowvramError, match=r"min_snr_gama: no setting of kohya's; did you mean min_snr_gamma\?"):
        settings_of(tmp_path, additional_parameters="--min_snr_gama 1")
    # a Windows path's backslashes, which POSIX quoting took for escapes (C:UsersJosélora...)
    windows = settings_of(tmp_path, additional_parameters='--network_weights C:\\Users\\José\\old.safetensors '
                                                          '--vae "\\\\NAS\\my models\\vae.safetensors" --flip_aug '
                                                          '--caption_prefix="a photo, of"')
    assert (windows["network_weights"], windows["vae"], windows["flip"], windows["caption_prefix"]) == (
        "C:\\Users\\José\\old.safetensors", "\\\\NAS\\my models\\vae.safetensors", True, "a photo, of")
    # an apostrophe in a Windows path; POSIX's own escapes where no path has a backslash
    assert settings_of(tmp_path, additional_parameters="--vae C:\\Users\\O'Brien\\vae.safetensors")["vae"] == (
        "C:\\Users\\O'Brien\\vae.safetensors")
    escaped = settings_of(tmp_path, additional_parameters='--caption_prefix="a \\"b\\" c"')
    assert escaped["caption_prefix"] == 'a "b" c'
    # one value of a list flag is a list of one (its characters were read as the list)
    annealing = settings_of(tmp_path, optimizer="Prodigy", max_train_steps=30, lr_scheduler="constant",
                            additional_parameters='--lr_scheduler_type "CosineAnnealingLR" --lr_scheduler_args "T_max=30"')
    assert annealing["scheduler"] == "cosine"
    # kohya_ss leaves a max_grad_norm of 0 out, as it leaves False out: sd-scripts clips at its default 1
    assert "max_grad_norm" not in settings_of(tmp_path, max_grad_norm=0)
    # the GUI's LoRA+ fields go beside network_args, where sd-scripts reads none
    values, notes = translate_gui(STANDARD | {"loraplus_lr_ratio": 16, "loraplus_unet_lr_ratio": 0},
                                  tmp_path / "gui.json")
    assert "loraplus_ratio" not in values and not any("no such setting" in note for note in notes)
    assert any(note.startswith("loraplus_lr_ratio 16: kohya_ss passes these beside network_args") for note in notes)


def test_a_sample_prompt_given_beside_a_config_that_samples_replaces_its_prompts(tmp_path, capsys):
    """The README's "a flag given beside --config replaces the file's value": --sample-prompt beside a GUI file of
    prompts drawn every 2 epochs was refused as "--sample-every: no prompt to render; add --sample-prompt"."""
    import tomllib

    from lowvram.cli import main

    config = write(tmp_path / "gui.json", STANDARD | {"sample_prompts": "ohwx, portrait --w 64 --h 64",
                                                       "sample_every_n_epochs": 2})
    assert main(["train", "--config", str(config), "--sample-prompt", "ohwx, smiling", "--dry-run"]) == 0
    output = tomllib.loads(capsys.readouterr().out.split("\n", 1)[1])["output"]
    assert (output["sample_prompts"], output["sample_every"]) == (["ohwx, smiling"], "2e")
    # a prompt file replaces them too, one setting in kohya's configs (it was added to them)
    (tmp_path / "prompts.txt").write_text("ohwx, walking --w 64 --h 64\n")
    assert main(["train", "--config", str(config), "--sample-prompt-file", str(tmp_path / "prompts.txt"),
                 "--dry-run"]) == 0
    output = tomllib.loads(capsys.readouterr().out.split("\n", 1)[1])["output"]
    assert (output["sample_prompts"], output["sample_prompt_file"]) == ([], str(tmp_path / "prompts.txt"))
    # an sd-scripts config whose prompt file is on another machine: not looked for, and its interval theirs (it
    # said "not found, so no samples; give --sample-prompt" to a user who had, and dropped the interval)
    kohya = tmp_path / "kohya.toml"
    kohya.write_text('pretrained_model_name_or_path = "tiny"\ntrain_data_dir = "sample"\nmax_train_steps = 2\n'
                     'sample_prompts = "/elsewhere/prompts.txt"\nsample_every_n_epochs = 3\n')
    assert main(["train", "--config", str(kohya), "--sample-prompt", "ohwx, smiling", "--dry-run"]) == 0
    captured = capsys.readouterr()
    output = tomllib.loads(captured.out.split("\n", 1)[1])["output"]
    assert (output["sample_prompts"], output["sample_every"]) == (["ohwx, smiling"], "3e")
    assert "/elsewhere/prompts.txt" not in captured.err and "sample_every_n_*" not in captured.err
    # lowvram's own config keeps its prompts beside a prompt file, as its flags add one to the other
    own = tmp_path / "own.toml"
    own.write_text('[model]\nmodel = "tiny"\n[data]\ndata = "sample"\n[output]\nsample_prompts = ["a dog"]\n')
    assert main(["train", "--config", str(own), "--sample-prompt-file", str(tmp_path / "prompts.txt"), "--dry-run"]) == 0
    output = tomllib.loads(capsys.readouterr().out.split("\n", 1)[1])["output"]
    assert (output["sample_prompts"], output["sample_prompt_file"]) == (["a dog"], str(tmp_path / "prompts.txt"))


def test_a_bucket_step_off_the_latent_grid_is_rounded_up_to_it(tmp_path):
    values, notes = translate_gui(STANDARD | {"bucket_reso_steps": 1}, tmp_path / "gui.json")
    assert values["bucket_step"] == 8 and any("bucket_reso_steps 1: buckets step by 8 pixels" in n for n in notes)


def test_a_prodigy_preset_trains_with_its_own_settings(tmp_path):
    """kohya_ss's Prodigy presets put d_coef, decouple and the rest in optimizer_args (text in the GUI)."""
    values = settings_of(tmp_path, optimizer="Prodigy", learning_rate=1, unet_lr=1, text_encoder_lr=1,
                         optimizer_args="decouple=True weight_decay=0.01 d_coef=2 use_bias_correction=True "
                                        "safeguard_warmup=True betas=0.9,0.99")
    assert values["optimizer"] == "prodigy" and values["weight_decay"] == 0.01
    assert values["optimizer_args"] == ["decouple=True", "d_coef=2", "use_bias_correction=True",
                                        "safeguard_warmup=True", "betas=0.9,0.99"]
    build_config(values | {"model": "tiny"})


def test_the_gui_s_epochs_are_the_steps_kohya_ss_counts_from_its_images(tmp_path):
    """kohya_ss passes sd-scripts ceil(images x repeats / batch / accumulation x epochs x 2 with regularization
    images), counted over train_data_dir's N_name folders, and its warm-up percent of those steps, rounded."""
    from PIL import Image

    for folder, count in (("10_shape", 5), ("notes", 3)):  # a folder without its repeats is not counted
        (tmp_path / "img" / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (64, 64)).save(tmp_path / "img" / folder / f"{i}.png")
    (tmp_path / "img" / "10_shape" / "0.txt").write_text("a caption is no image")
    gui = {"max_train_steps": "", "epoch": 10, "train_batch_size": 3, "lr_warmup": 10, "lr_scheduler": "cosine",
           "train_data_dir": str(tmp_path / "img")}
    values = settings_of(tmp_path, **gui)
    assert (values["max_steps"], values.get("epochs"), values["warmup_steps"]) == (167, None, 17)
    (tmp_path / "reg" / "1_dog").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "reg" / "1_dog" / "r.png")
    assert settings_of(tmp_path, **gui, reg_data_dir=str(tmp_path / "reg"))["max_steps"] == 334
    elsewhere = settings_of(tmp_path, **gui | {"train_data_dir": str(tmp_path / "gone")})  # not on this machine
    assert (elsewhere["epochs"], elsewhere["warmup_steps"]) == (10, 0.1)
    # the warm-up is a percent of the GUI's own steps where it gives them, of those it counts where it gives epochs,
    # and a whole-run warm-up stays one where the folder is not here (a share of 1 would read as one step)
    assert settings_of(tmp_path, **gui | {"max_train_steps": 90})["warmup_steps"] == 9
    assert settings_of(tmp_path, **gui | {"max_train_epochs": 2})["warmup_steps"] == 17
    assert settings_of(tmp_path, **gui | {"train_data_dir": str(tmp_path / "gone"), "lr_warmup": 100})[
        "warmup_steps"] == 0.999
    # the command line's batch size, accumulation and folders: counted as kohya_ss counts them anew when they
    # change in the GUI (the GUI's count stood, so --batch-size 1 trained a third of its epochs)
    (tmp_path / "gui.json").write_text(json.dumps(STANDARD | gui))
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "gui.json"), "--batch-size", "1",
                                      "--gradient-accumulation", "2"])
    values = train_values(args)
    assert (values["max_steps"], values["warmup_steps"]) == (250, 25)  # 50 images x 10 epochs / 2
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "gui.json"), "--reg-data",
                                      str(tmp_path / "reg")])
    assert train_values(args)["max_steps"] == 334
    # an empty --reg-data drops the config's, as kohya reads an empty reg_data_dir (it was the current folder)
    (tmp_path / "gui.json").write_text(json.dumps(STANDARD | gui | {"reg_data_dir": str(tmp_path / "reg")}))
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "gui.json"), "--reg-data", ""])
    values = train_values(args)
    assert "reg_data" not in values and values["max_steps"] == 167
    assert build_config(values).data.reg_data is None
    # so does an empty --vae, --network-weights: another machine's files the config names (they were "empty")
    (tmp_path / "other.json").write_text(json.dumps(STANDARD | gui | {
        "vae": "C:\\Users\\me\\vae.safetensors", "network_weights": "C:\\Users\\me\\old.safetensors"}))
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "other.json"), "--vae", "",
                                      "--network-weights", ""])
    config = build_config(train_values(args))
    assert (config.model.vae, config.network.network_weights) == (None, None)
    # the command line's length: the GUI's 10 % of it (it was 10 % of the GUI's 167 steps: 17 of a 4-step run)
    for length in (["--max-steps", "4"], ["--epochs", "1"]):
        args = build_parser().parse_args(["train", "--config", str(tmp_path / "gui.json"), *length])
        assert train_values(args)["warmup_steps"] == 0.1, length


def test_a_relative_folder_is_found_beside_the_config_when_not_in_the_current_folder(tmp_path, monkeypatch):
    """A kohya_ss project's config names ./img; run from elsewhere it was 'folder not found: ./img'."""
    from lowvram.configure import read_config

    (tmp_path / "proj" / "img" / "10_shape").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "proj" / "img" / "10_shape" / "a.png")
    (tmp_path / "proj" / "prompts.txt").write_text("a red circle\n")
    config = write(tmp_path / "proj" / "gui.json", STANDARD | {"train_data_dir": "./img", "output_dir": "./model",
                                                               "max_train_steps": "", "epoch": 2,
                                                               "sample_prompts": "", "additional_parameters":
                                                               "--sample_prompts prompts.txt"})
    values = read_config(config)
    assert values["data"] == str(tmp_path / "proj" / "img")
    assert values["max_steps"] == 20  # kohya_ss's count of its images for its 2 epochs, found there too
    assert list(values["sample_prompts"]) == ["a red circle --l 7.5"]  # its prompt file too (kohya's steps and scale)
    (tmp_path / "proj" / "k.toml").write_text('train_data_dir = "./img"\nnetwork_module = "networks.lora"\n')
    assert read_config(tmp_path / "proj" / "k.toml")["data"] == str(tmp_path / "proj" / "img")  # kohya's own too
    assert values["output"] == "./model"  # not there yet: from the current folder, as kohya_ss writes it
    (tmp_path / "elsewhere" / "img").mkdir()
    assert read_config(config)["data"] == "./img"  # in the current folder: that one, as kohya_ss reads it


@pytest.mark.parametrize(("kind", "sdxl", "why"), [
    ("gui.json", True, "kohya_ss's SDXL switch is on in it"),
    ("gui.json", False, "kohya_ss's SDXL switch is off in it"),
    ("train.bat", True, "it runs sdxl_train_network.py"), ("train.bat", False, "it runs train_network.py")])
def test_a_kohya_recipe_for_one_kind_of_model_refuses_a_model_of_the_other(tmp_path, kind, sdxl, why):
    """An SD1.5 checkpoint picked for an SDXL recipe trained SD1.5 at the recipe's 1024 px without a word (sd-scripts
    stops)."""
    config = tmp_path / kind
    right, wrong = ("tiny-sdxl", "tiny") if sdxl else ("tiny", "tiny-sdxl")
    if kind == "gui.json":
        config.write_text(json.dumps(STANDARD | {"sdxl": sdxl, "pretrained_model_name_or_path": wrong}))
    else:
        config.write_text(f"accelerate launch {'sdxl_' * sdxl}train_network.py --pretrained_model_name_or_path={wrong} "
                          "--train_data_dir=sample --network_module=networks.lora\n")
    family = {"tiny": "tiny SD (random weights)", "tiny-sdxl": "tiny SDXL (random weights)"}[wrong]
    with pytest.raises(LowvramError) as error:
        train_values(build_parser().parse_args(["train", "--config", str(config)]))
    kind = "SDXL" if sdxl else "SD1.5"
    assert str(error.value) == (f"--model: {wrong} is {family}, but {config} is a recipe for {kind} ({why}); pass an "
                                f"{kind} model, or a recipe made for {family}")
    given = build_parser().parse_args(["train", "--config", str(config), "--model", right])
    assert train_values(given)["model"] == right


def test_an_older_kohya_ss_config_s_switches_and_8bit_adam_are_read_as_kohya_ss_reads_them(tmp_path):
    """An older kohya_ss saved "False" as text (read as on: v-prediction, fp8, random crop), use_8bit_adam (refused as
    another trainer's, a switch sd-scripts reads, whatever flag was given), and no LoRA_type (not read at all)."""
    values = settings_of(tmp_path, v_parameterization="False", fp8_base="false", random_crop="False",
                         enable_bucket="False", optimizer="", use_8bit_adam=True)
    assert (values.get("prediction_type"), values.get("unet_weights"), values.get("crop"), values["bucket"],
            values["optimizer"]) == (None, None, None, False, "adamw8bit")
    assert settings_of(tmp_path, v_parameterization="True")["prediction_type"] == "v_prediction"
    assert settings_of(tmp_path, caption_prefix="False")["caption_prefix"] == "False"  # (text: no switch's)
    # kohya_ss's own reading: use_8bit_adam where the file names no optimizer (it names AdamW: AdamW, as kohya_ss
    # trains it); an sd-scripts config naming both is refused, as sd-scripts refuses it
    assert settings_of(tmp_path, optimizer="AdamW", use_8bit_adam=True)["optimizer"] == "adamw"
    with pytest.raises(LowvramError, match="use_8bit_adam: optimizer_type is Lion too; keep one"):
        translate({"optimizer_type": "Lion", "use_8bit_adam": True, "network_module": "networks.lora"},
                  tmp_path / "k.toml")
    _, notes = translate_gui(STANDARD | {"caption_extension": ""}, tmp_path / "gui.json")  # (the dropdown's blank)
    assert any(note.startswith('caption_extension "": kohya_ss passes none, and sd-scripts reads .caption files only')
               for note in notes), notes
    old = write(tmp_path / "old.json", {key: value for key, value in STANDARD.items() if key != "LoRA_type"})
    assert read_config(old)["rank"] == 8  # (Standard, as kohya_ss loads it; "is no config lowvram reads")
    # its textual-inversion tab's config (no network_dim) is no LoRA's: not read as one
    inversion = write(tmp_path / "ti.json", {key: value for key, value in STANDARD.items()
                                             if key not in ("LoRA_type", "network_dim")} | {"token_string": "ohwx"})
    with pytest.raises(LowvramError, match="is no config lowvram reads"):
        read_config(inversion)


def test_check_data_takes_a_gui_configs_hub_model_offline_by_its_sdxl_switch(tmp_path, sample_data, monkeypatch,
                                                                             capsys):
    """check-data needs the model for its resolution alone: a GUI config's hub id (kohya_ss's default model) stopped
    it offline; the GUI's SDXL switch says the family."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for sdxl, hub_id in ((False, "runwayml/stable-diffusion-v1-5"), (True, "stabilityai/stable-diffusion-xl-base-1.0")):
        config = tmp_path / f"gui{sdxl}.json"
        config.write_text(json.dumps(STANDARD | {"pretrained_model_name_or_path": hub_id, "sdxl": sdxl,
                                                 "train_data_dir": str(sample_data), "max_resolution": ""}))
        assert main(["check-data", "--config", str(config)]) == 0, capsys.readouterr().err
        assert "images usable" in "".join(capsys.readouterr())
        # and plan, which stopped at the hub id a OneTrainer config of SD1.5 names too
        assert main(["plan", "--config", str(config), "--vram", "6GB", "--json"]) in (0, 1), capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["model_family"] == ("sdxl" if sdxl else "sd15")
    # a hub id known offline keeps its own family (the switch the other way: the family the model has, as training)
    config.write_text(json.dumps(STANDARD | {"pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
                                             "sdxl": False, "train_data_dir": str(sample_data), "max_resolution": ""}))
    assert main(["check-data", "--config", str(config)]) == 0, capsys.readouterr().err


def test_settings_a_gui_file_leaves_out_are_the_lora_tabs_not_sd_scripts_defaults(tmp_path):
    """A preset, or a config trimmed by hand: kohya_ss opens it over the LoRA tab's values (buckets on, rank 8,
    .txt captions, one epoch); lowvram took sd-scripts' (every image cropped square, rank 4, 1600 steps)."""
    trimmed = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "tiny", "train_data_dir": "sample",
               "output_name": "x", "network_alpha": 4}
    values, notes = translate_gui(trimmed, tmp_path / "preset.json")
    assert {key: values.get(key) for key in ("bucket", "rank", "alpha", "epochs", "caption_extension", "scheduler",
                                             "max_bucket_side", "optimizer", "max_steps")} == {
        "bucket": True, "rank": 8, "alpha": 4.0, "epochs": 1, "caption_extension": ".txt", "scheduler": "cosine",
        "max_bucket_side": 2048, "optimizer": None, "max_steps": None}  # (AdamW: kohya_ss's for a file of none)
    # an older file's switch still names its optimizer; the command line's batch size is no value left out
    values, notes = translate_gui(trimmed | {"use_lion_optimizer": True}, tmp_path / "preset.json", {"batch_size": 4})
    assert values["optimizer"] == "lion" and "train_batch_size" not in notes[0]
    assert notes[0].startswith("left out of the file, taken as kohya_ss's LoRA tab has them: enable_bucket True, "
                               "network_dim 8, epoch 1,") and "network_alpha" not in notes[0]
    values, notes = translate_gui(STANDARD | {"enable_bucket": False}, tmp_path / "gui.json")  # a full file: as it is
    assert values.get("bucket") is False and not any("left out of the file" in note for note in notes)


def test_a_gui_number_field_of_other_text_is_refused_as_kohya_ss_stops_on_it(tmp_path):
    """kohya_ss's float() or int() of a field stops on text that is no number; lowvram read it as none: epoch "ten"
    trained sd-scripts' 1600 steps, lr_warmup "10%" no warm-up, text_encoder_lr "abc" no text encoder, unsaid. An
    empty unet_lr beside a text-encoder rate (kohya_ss: the text encoder alone) was refused naming a setting the file
    does not hold."""
    for key, value, kind in (("epoch", "ten", "a whole number"), ("lr_warmup", "10%", "a number"),
                             ("max_train_steps", "1,600", "a whole number"), ("text_encoder_lr", "abc", "a number")):
        with pytest.raises(LowvramError) as error:
            settings_of(tmp_path, **{key: value})
        assert str(error.value) == f"{tmp_path / 'gui.json'}: {key}: '{value}' is not {kind}"
    assert settings_of(tmp_path, epoch="2", max_train_steps="")["epochs"] == 2  # (numbers as text, blanks: read)
    for unet in ("", 0, None):
        with pytest.raises(LowvramError) as error:
            translate_gui({key: value for key, value in STANDARD.items() if key != "unet_lr"} | (
                {} if unet is None else {"unet_lr": unet}), tmp_path / "gui.json")
        assert str(error.value) == (
            f"{tmp_path / 'gui.json'}: unet_lr: {'not in the file,' if unet is None else repr(unet)} beside "
            "text_encoder_lr 3e-05: kohya_ss then trains the text encoder alone, and lowvram always trains the U-Net; "
            "give unet_lr (kohya_ss's default is 0.0001)")


def test_compiling_and_the_launchers_settings_are_carried_over_or_said(tmp_path):
    """sd-scripts' torch_compile was "not carried over (lowvram has no such setting)" beside lowvram's --compile;
    accelerate's dynamo_backend, the GPUs kohya_ss picks and its launcher's own flags went unsaid."""
    values, notes = translate_gui(STANDARD | {
        "additional_parameters": "--torch_compile", "dynamo_backend": "inductor", "gpu_ids": "1",
        "extra_accelerate_launch_args": "--mixed_precision bf16"}, tmp_path / "gui.json")
    assert values["compile"] is True
    assert [note for note in notes if "not carried over" in note] == [
        ("dynamo_backend inductor not carried over: lowvram's counterpart is --compile (torch.compile of the U-Net's "
        "blocks; accelerate's dynamo_backend compiles the whole model)"),
        "gpu_ids 1 not carried over: kohya_ss trains on those GPUs; here, set CUDA_VISIBLE_DEVICES=1 for the command",
        ("extra_accelerate_launch_args '--mixed_precision bf16' not carried over: kohya_ss's flags for accelerate's "
        "launcher; give lowvram's own (its --mixed-precision for accelerate's)")]
    _, quiet = translate_gui(STANDARD | {"dynamo_backend": "no", "gpu_ids": ""}, tmp_path / "gui.json")
    assert not [note for note in quiet if "not carried over" in note]  # (the GUI's defaults: nothing to say)


def test_a_refusal_names_the_setting_as_the_gui_file_does(tmp_path):
    """kohya_ss's "optimizer" was refused as sd-scripts' optimizer_type, a key the user's file does not hold."""
    with pytest.raises(LowvramError) as error:
        settings_of(tmp_path, optimizer="AdamW8bitt")
    assert str(error.value).startswith(f"{tmp_path / 'gui.json'}: optimizer: 'AdamW8bitt' is no optimizer of kohya's")
