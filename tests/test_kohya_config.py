"""A kohya sd-scripts config file (the TOML kohya_ss writes beside each run) given to --config trains as kohya would
train it: kohya's names and defaults, its switched-off settings left out, and one line per setting lowvram cannot
follow."""

import json
import re
import sys
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import assert_one_line_each
from safetensors import safe_open
from safetensors.torch import load_file

from lowvram.cli import main, train_values
from lowvram.cli_parser import build_parser
from lowvram.configure import build_config, read_config, read_toml
from lowvram.errors import LowvramError
from lowvram.kohya_config import is_kohya_config, translate

# what kohya_ss writes for a LoCon run: every setting, switched-off ones included
KOHYA_SS = {
    "bucket_no_upscale": True, "bucket_reso_steps": 64, "cache_latents": True, "cache_latents_to_disk": True,
    "caption_extension": ".txt", "clip_skip": 1, "dynamo_backend": "no", "enable_bucket": True, "epoch": 1,
    "gradient_accumulation_steps": 1, "huber_c": 0.1, "huber_schedule": "snr", "learning_rate": 0.0004,
    "logging_dir": "/workspace/kohya_ss/logs", "loss_type": "l2", "lr_scheduler": "cosine", "lr_scheduler_args": [],
    "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1, "max_bucket_reso": 2048, "max_data_loader_n_workers": 0,
    "max_grad_norm": 1, "max_timestep": 1000, "max_token_length": 75, "max_train_steps": 3,
    "min_bucket_reso": 256, "mixed_precision": "no", "multires_noise_discount": 0.3, "multires_noise_iterations": 0,
    "network_alpha": 4, "network_args": ["conv_dim=2", "conv_alpha=1", "loraplus_lr_ratio=16",
                                         "loraplus_text_encoder_lr_ratio=4", "rank_dropout=0.1"], "network_dim": 8,
    "network_module": "networks.lora", "noise_offset": 0, "noise_offset_type": "Original",
    "optimizer_args": ["weight_decay=0.05", "betas=0.9,0.99"], "optimizer_type": "AdamW", "output_name": "mylora",
    "pretrained_model_name_or_path": "tiny", "prior_loss_weight": 1, "resolution": "64,64",
    "sample_sampler": "euler_a", "sample_every_n_epochs": 0, "save_every_n_steps": 2, "save_model_as": "safetensors",
    "save_precision": "float", "seed": 42, "text_encoder_lr": 0.0001, "train_batch_size": 2, "train_data_dir": "sample",
    "unet_lr": 0.0004, "keep_tokens": 1, "shuffle_caption": False, "xformers": False, "sdpa": True,
    "caption_dropout_every_n_epochs": 0, "scale_weight_norms": 2.0, "adaptive_noise_scale": 0.005,
    "weighted_captions": True, "token_warmup_step": 10,
}


def values_of(tmp_path: Path, settings: dict, name: str = "kohya.toml") -> dict:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(settings))
    return read_toml(path)


def test_a_kohya_ss_config_trains_the_lora_kohya_would(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("# kohya's prompt file\nlvshape, a red circle --w 64 --h 64 --s 2\n\n")
    settings = KOHYA_SS | {"output_dir": str(tmp_path / "out"), "sample_prompts": str(tmp_path / "prompts.txt")}
    (tmp_path / "kohya.toml").write_text(tomli_w.dumps(settings))
    assert main(["train", "--config", str(tmp_path / "kohya.toml")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "read as a kohya sd-scripts config" in err
    assert "optimizer_args not carried over" not in err  # its betas reach AdamW
    # (what lowvram does instead said; off ones: quietly)
    assert "token_warmup_step not carried over: lowvram trains every caption whole from the first step" in err
    assert "adaptive_noise_scale" not in err  # a share of noise_offset 0: nothing, as kohya_ss writes it
    out = tmp_path / "out"
    lora = load_file(str(out / "mylora.safetensors"))
    meta = safe_open(str(out / "mylora.safetensors"), framework="pt").metadata()
    assert (meta["ss_network_dim"], meta["ss_network_alpha"], meta["ss_steps"]) == ("8", "4", "3")
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1", "rank_dropout": "0.1"}
    assert meta["ss_loraplus_lr_ratio"] == "16"
    assert meta["ss_loraplus_text_encoder_lr_ratio"] == "4"
    assert meta["ss_scale_weight_norms"] == "2" and meta["ss_optimizer"] == "adamw(weight_decay=0.05,betas=(0.9, 0.99))"
    assert (meta["ss_max_grad_norm"], meta["ss_cache_latents"]) == ("1", "True")  # (keys kohya writes, as it does)
    assert "weighted_captions = true" in meta["lowvram.config"]
    assert {tensor.dtype for tensor in lora.values()} == {torch.float32}  # save_precision "float"
    # kohya's LoRA: the text encoder trained, every layer of the transformer blocks, the convolutions at conv_dim
    assert any(key.startswith("lora_te_") for key in lora)
    assert any(key.endswith("_ff_net_2.lora_down.weight") for key in lora)
    assert lora["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape[0] == 2
    assert lora["lora_unet_down_blocks_0_resnets_0_conv1.alpha"].item() == 1.0
    assert (out / "mylora-step00000002.safetensors").is_file() and (out / "samples" / "mylora-00.png").is_file()


def test_kohyas_logging_dir_alone_writes_tensorboard_logs_as_in_kohya(tmp_path, monkeypatch):
    """A logging_dir without log_with is kohya's TensorBoard (lowvram wrote none, with a note); where TensorBoard is
    not installed the run says where its figures are instead."""
    def logging(settings):
        values, notes = translate(settings, tmp_path / "kohya.toml")
        return values.get("tensorboard"), [note for note in notes if "log" in note.split(":")[0]]

    assert logging(KOHYA_SS) == (True, [("logging_dir /workspace/kohya_ss/logs: TensorBoard's logs go to "
                                        "<output>/logs")])
    assert logging({k: v for k, v in KOHYA_SS.items() if k != "logging_dir"}) == (None, [])
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as where it is not installed
    assert logging(KOHYA_SS) == (None, [
        ("logging_dir: TensorBoard is not installed (pip install 'lowvram[tensorboard]'); metrics.jsonl in the output "
        "folder holds each step's loss, learning rate and gradient norm")])


def test_kohyas_wandb_project_and_run_carry_over_and_its_key_stays_out_of_the_config(tmp_path, monkeypatch):
    settings = KOHYA_SS | {"log_with": "wandb", "log_tracker_name": "loras", "wandb_run_name": "run-1",
                           "wandb_api_key": "0123abcd"}
    values, notes = translate(settings, tmp_path / "kohya.toml")
    assert (values["wandb_project"], values["wandb_run_name"]) == ("loras", "run-1")
    assert [note for note in notes if "wandb" in note] == [
        ("wandb_api_key: not carried over (a key is no setting for a run's saved config); run `wandb login` once, or "
        "set WANDB_API_KEY")]
    assert "0123abcd" not in json.dumps(values)
    values, notes = translate(KOHYA_SS | {"log_with": "all"}, tmp_path / "kohya.toml")
    assert values["wandb_project"] == "network_train" and values["tensorboard"]  # kohya's own name for it
    # W&B off: its run name and key are kohya's only with it on (kohya_ss keeps them in every config)
    values, notes = translate(settings | {"log_with": "tensorboard"}, tmp_path / "kohya.toml")
    assert not any(key.startswith("wandb") for key in values) and not any("wandb" in note for note in notes)
    assert values["tensorboard"]
    values, notes = translate(settings, tmp_path / "kohya.toml")  # logging_dir is W&B's folder then, in kohya
    assert not any("TensorBoard" in note for note in notes) and "tensorboard" not in values
    monkeypatch.setitem(sys.modules, "wandb", None)  # as where it is not installed: the run goes on without it
    values, notes = translate(settings, tmp_path / "kohya.toml")
    assert "wandb_project" not in values
    assert any(note.startswith("log_with wandb: Weights & Biases is not installed (pip install 'lowvram[wandb]')")
               for note in notes)


def test_kohyas_own_defaults_fill_what_the_file_leaves_out(tmp_path):
    values = values_of(tmp_path, {"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample"})
    config = build_config(values)
    network = config.network
    assert (network.rank, config.alpha, network.lora_layers, network.train_text_encoder) == (4, 1.0, "attn-mlp", True)
    assert config.training.max_steps == 1600 and config.training.epochs is None
    more = values_of(tmp_path, {"train_data_dir": "sample", "network_dim": 16, "network_alpha": 0, "max_train_epochs": 3,
                                "max_train_steps": 1600, "network_train_unet_only": True, "enable_bucket": False})
    config = build_config(more | {"model": "tiny"})
    # alpha 0 is alpha = rank in kohya; max_train_epochs wins over max_train_steps
    assert (config.alpha, config.training.epochs, config.training.max_steps) == (16.0, 3, None)
    assert not config.network.train_text_encoder and not config.data.bucket
    kept = values_of(tmp_path, {"train_data_dir": "sample", "save_every_n_steps": 100, "save_last_n_steps": 300})
    assert (kept["save_every"], kept["keep_saves"]) == ("100", 3)  # kohya counts steps, lowvram saves
    untrained = values_of(tmp_path, {"train_data_dir": "sample", "text_encoder_lr": 0, "learning_rate": 1e-4})
    assert untrained["train_text_encoder"] is False and untrained["lr"] == 1e-4
    assert values_of(tmp_path, {"train_data_dir": "sample"})["lr"] == 2e-6  # kohya's --learning_rate default
    # the text encoder takes learning_rate, not unet_lr, where text_encoder_lr is left out
    split = values_of(tmp_path, {"train_data_dir": "sample", "learning_rate": 1e-4, "unet_lr": 5e-4})
    assert (split["lr"], split["text_encoder_lr"], split["train_text_encoder"]) == (5e-4, 1e-4, True)


def test_kohyas_locon_without_a_conv_alpha_takes_kohyas_default_of_one(tmp_path):
    values = values_of(tmp_path, {"train_data_dir": "sample", "network_dim": 8, "network_alpha": 16,
                                  "network_args": ["conv_dim=8"]})
    assert (values["lora_layers"], values["conv_rank"], values["conv_alpha"]) == ("full", 8, 1.0)  # not alpha's 16
    zero = values_of(tmp_path, {"train_data_dir": "sample", "network_dim": 8, "network_args": ["conv_dim=4",
                                                                                            "conv_alpha=0"]})
    assert zero["conv_alpha"] == 4.0  # kohya's 0: the dim (it was refused as "must be > 0")


@pytest.mark.parametrize("args, network, layers, extra", [
    (["algo=locon", "conv_dim=4"], "lora", "full", {"conv_rank": 4, "conv_alpha": 2.0}),  # LyCORIS: conv_alpha = alpha
    (["algo=locon", "conv_dim=4", "conv_alpha=0"], "lora", "full", {"conv_rank": 4, "conv_alpha": 4.0}),  # 0: the dim
    (["algo=loha", "preset=attn-mlp", "conv_dim=4", "module_dropout=0.1", "rank_dropout=0.2"], "loha", "attn-mlp",
     {"module_dropout": 0.1, "rank_dropout": 0.2}),
    (["algo=lokr", "factor=8", "preset=attn-only"], "lokr", "attn", {"lokr_factor": 8}),
    (["algo=loha", "preset=unet-transformer-only"], "loha", "attn-mlp", {"train_text_encoder": False}),
    (["algo=lora", "dora_wd=True", "wd_on_output=True"], "dora", "full", {}),
    (["algo=locon", "dora_wd=True"], "dora", "full", {}),  # (LyCORIS's default now: on the output axis)
])
def test_lycoris_networks_carry_over(tmp_path, args, network, layers, extra):
    values = values_of(tmp_path, {"train_data_dir": "sample", "network_module": "lycoris.kohya", "network_dim": 8,
                                  "network_alpha": 2, "network_args": args})
    assert (values["network"], values["lora_layers"]) == (network, layers)
    assert {key: values[key] for key in extra} == extra
    build_config(values | {"model": "tiny"})  # and lowvram takes them


def test_lycoris_loha_and_lokr_ignore_network_dropout_as_lycoris_does(tmp_path):
    values, notes = translate({"train_data_dir": "sample", "network_module": "lycoris.kohya", "network_dropout": 0.1,
                               "network_args": ["algo=loha"]}, tmp_path / "k.toml")
    assert "dropout" not in values and values["network"] == "loha"
    assert any(note.startswith("network_dropout: LyCORIS's loha has no dropout of its own") for note in notes)


def test_what_lowvram_cannot_train_as_kohya_would_is_refused_one_line_each(tmp_path):
    settings = {"train_data_dir": None, "v2": True, "optimizer_type": "--",
                "lr_scheduler": "adafactor", "network_module": "lycoris.kohya",
                "network_args": ["algo=ia3"], "save_precision": "fp8", "lr_scheduler_type": "CosineAnnealingLR",
                "lr_scheduler_args": ["T_max=30"], "max_train_steps": 100, "lora_rank": 16, "allow_tf32": True,
                "center_crop": True, "model": "tiny", "rank": 8, "train_text_encoder": True}
    with pytest.raises(LowvramError) as error:
        translate({k: v for k, v in settings.items() if v is not None}, Path("kohya.toml"))
    expected = ["v2: Stable Diffusion 2", "LyCORIS algo 'ia3'",
                "optimizer_type: '--' names no optimizer", "lr_scheduler: adafactor is the schedule",
                "save_precision: 'fp8'",
                "lr_scheduler_type: CosineAnnealingLR with T_max=30 over a run of 100 steps is not one cosine",
                # SimpleTuner's name trained at kohya's default rank, with a note (allow_tf32: nothing lost)
                ("lora_rank: the diffusers scripts' or SimpleTuner's name, which a kohya config does not read; write "
                 "network_dim = 16 (kohya's)"),
                ("center_crop: the diffusers scripts' or SimpleTuner's name, which a kohya config does not read; pass "
                 "lowvram's --no-bucket --crop center"),
                # lowvram's own names beside kohya's (the run had no model and the rank of kohya's default)
                ("model: lowvram's name, which a kohya config does not read; write pretrained_model_name_or_path = "
                 "\"tiny\" (kohya's)"), "rank: lowvram's name, which a kohya config does not read; write network_dim = 8",
                ("train_text_encoder: lowvram's name, which a kohya config does not read; lowvram's own config has it "
                 "under [network]")]
    assert_one_line_each(str(error.value), "kohya.toml: ", expected)


def test_a_dora_on_the_input_axis_is_refused_not_trained_on_the_output_one(tmp_path):
    """LyCORIS's wd_on_output=False (an older LyCORIS's default) keeps one norm per input column: it trained on the
    output axis, and the file's ss_network_args said wd_on_output True."""
    settings = {"network_module": "lycoris.kohya", "network_dim": 8,
                "network_args": ["algo=locon", "dora_wd=True", "wd_on_output=False"]}
    with pytest.raises(LowvramError) as error:
        translate(settings, Path("kohya.toml"))
    assert str(error.value) == (
        "kohya.toml: network_args wd_on_output: False: LyCORIS's DoRA on the input axis (one norm per input column) is "
        "not one lowvram trains (peft's DoRA keeps one per output row); set wd_on_output=True")
    assert translate({**settings, "network_args": ["algo=locon", "wd_on_output=False"]}, Path("kohya.toml"))[0][
        "network"] == "lora"  # (no DoRA: the axis of nothing)


def test_a_cosine_annealing_schedule_over_the_whole_run_is_lowvrams_cosine_with_its_floor(tmp_path):
    """kohya's lr_scheduler_type = CosineAnnealingLR, T_max the run's steps: torch's cosine to eta_min, which is
    lowvram's cosine with eta_min / lr as its floor, step for step; without a warm-up, as kohya builds it."""
    from diffusers.optimization import get_scheduler

    from lowvram.optim import floor_schedule

    settings = {"network_module": "networks.lora", "learning_rate": 1e-3, "max_train_steps": 40,
                "lr_warmup_steps": 5, "lr_scheduler": "constant", "lr_scheduler_type": "CosineAnnealingLR",
                "lr_scheduler_args": ["T_max=40", "eta_min=1e-4"]}
    values, notes = translate(settings, tmp_path / "k.toml")
    assert (values["scheduler"], values["min_lr_ratio"], values["warmup_steps"]) == ("cosine", pytest.approx(0.1), 0)
    assert any("lr_warmup_steps not used" in note for note in notes)

    def rates(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        schedule = make(optimizer)
        out = []
        for _ in range(40):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return out

    def lowvrams(optimizer):
        schedule = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=40)
        floor_schedule(schedule, values["min_lr_ratio"], 0)
        return schedule

    torchs = rates(lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40, eta_min=1e-4))
    assert rates(lowvrams) == pytest.approx(torchs, rel=1e-6)
    with pytest.raises(LowvramError, match="lr_scheduler_type: OneCycleLR: lowvram's schedules are lr_scheduler's"):
        translate(settings | {"lr_scheduler_type": "OneCycleLR"}, tmp_path / "k.toml")


def test_flags_replace_a_kohya_configs_paths_from_another_machine(tmp_path, capsys):
    """A config shared from another machine names its model, images and prompt file there: --model and --data
    replace them before anything is checked, and a prompt file that is not here only means no samples (samples
    change nothing trained). kohya's xformers switch trains on a card without xformers too (SDPA)."""
    settings = KOHYA_SS | {"pretrained_model_name_or_path": "/mnt/c/models/illustriousXL_v01.safetensors",
                           "train_data_dir": "/path/to/dataset", "sample_prompts": "D:/model_output/prompt.txt",
                           "output_dir": str(tmp_path / "out"), "xformers": True, "sdpa": False}
    (tmp_path / "kohya.toml").write_text(tomli_w.dumps(settings))
    assert main(["train", "--config", str(tmp_path / "kohya.toml")]) == 2  # without the flags: the paths are wrong
    assert "--model: file not found: /mnt/c/models/illustriousXL_v01.safetensors" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "kohya.toml"), "--model", "tiny", "--data", "sample",
                 "--max-steps", "1"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "sample_prompts: D:/model_output/prompt.txt not found, so no samples" in err
    assert (tmp_path / "out" / "mylora.safetensors").is_file()


def test_kohyas_adafactor_and_lycoris_cp_train_as_kohya_would_or_are_refused():
    """kohya's Adafactor without optimizer_args is relative-step (its own step sizes, scale_parameter on), and so
    is it with warmup_init=True, which turns relative_step on in kohya; with the arguments kohya's docs give for a
    fixed rate it is lowvram's own. LyCORIS's use_cp factors adapted convolutions otherwise than peft: refused
    where convolutions are adapted."""
    loha = {"train_data_dir": "sample", "network_module": "lycoris.kohya", "network_args": ["algo=loha", "use_cp=True"]}
    assert translate(loha, Path("k.toml"))[0]["network"] == "loha"  # no convolutions adapted: CP changes nothing
    with pytest.raises(LowvramError, match="network_args use_cp: LyCORIS's CP .Tucker. decomposition"):
        translate(loha | {"network_args": ["algo=loha", "use_cp=True", "conv_dim=8"]}, Path("k.toml"))
    adafactor = {"train_data_dir": "sample", "optimizer_type": "Adafactor"}
    values, notes = translate(adafactor | {"optimizer_args": []}, Path("k.toml"))
    assert values["optimizer_args"] == ["relative_step=True", "scale_parameter=True"] and "lr" not in values
    assert not any("not used" in note for note in notes)  # (no rate given: nothing unused)
    values, notes = translate(adafactor | {"network_args": ["loraplus_lr_ratio=16"], "learning_rate": 1e-4},
                              Path("k.toml"))  # (refused as --loraplus-ratio, never typed: kohya reads no rate)
    assert "loraplus_ratio" not in values and build_config({"model": "tiny", **values})
    assert ("learning_rate, network_args' loraplus ratios not used: Adafactor with relative_step=True sets its own "
            "step sizes, as in kohya") in notes
    values, _ = translate(adafactor | {"optimizer_args": ["relative_step=False", "warmup_init=True"]}, Path("k.toml"))
    assert values["optimizer_args"] == ["relative_step=True", "scale_parameter=True", "warmup_init=True"]
    fixed = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
    values, _ = translate(adafactor | {"optimizer_args": fixed, "learning_rate": 2e-4}, Path("k.toml"))
    assert values["optimizer"] == "adafactor" and "optimizer_args" not in values and values["lr"] == 2e-4
    with pytest.raises(LowvramError, match=r"^k.toml: lr_scheduler: adafactor is the schedule of Adafactor with "
                       r"relative_step=True \(kohya fails on it otherwise\)"):
        translate(adafactor | {"optimizer_args": fixed, "lr_scheduler": "adafactor"}, Path("k.toml"))


def test_the_huber_settings_and_the_multires_discount_carry_over_where_they_are_used(tmp_path):
    values = values_of(tmp_path, {"train_data_dir": "sample", "loss_type": "huber", "huber_c": 0.2,
                                  "huber_schedule": "exponential", "multires_noise_iterations": 6,
                                  "multires_noise_discount": 0.4, "optimizer_type": "bitsandbytes.optim.Lion8bit"})
    assert (values["loss"], values["huber_c"], values["huber_schedule"]) == ("huber", 0.2, "exponential")
    assert (values["multires_noise_iterations"], values["multires_noise_discount"]) == (6, 0.4)
    assert "scheduler_power" not in values_of(tmp_path, KOHYA_SS | {"lr_scheduler_power": 2})  # beside cosine
    decaying = values_of(tmp_path, KOHYA_SS | {"lr_scheduler": "polynomial", "lr_scheduler_power": 2})
    assert (decaying["scheduler"], decaying["scheduler_power"]) == ("polynomial", 2)
    assert values["optimizer"] == "lion8bit"
    # kohya's huber_scale multiplies the constant schedule's threshold; the exponential one's it changes otherwise
    huber = {"train_data_dir": "sample", "loss_type": "huber", "huber_c": 0.1, "huber_scale": 3}
    assert values_of(tmp_path, huber | {"huber_schedule": "constant"})["huber_c"] == pytest.approx(0.3)
    assert values_of(tmp_path, huber | {"huber_schedule": "snr"})["huber_c"] == 0.1  # kohya's snr schedule: unscaled
    with pytest.raises(LowvramError, match="huber_scale: 3 scales the exponential schedule's threshold"):
        values_of(tmp_path, huber | {"huber_schedule": "exponential"})


def test_a_lowvram_config_is_not_read_as_kohyas(tmp_path):
    assert not is_kohya_config({"network": {"rank": 8}, "training": {"seed": 1}})
    assert not is_kohya_config({"netwrk": {"rank": 8}})  # a typo in lowvram's file gets lowvram's message
    assert is_kohya_config({"network_dim": 8}) and is_kohya_config({"model_arguments": {"network_module": "x"}})
    with pytest.raises(LowvramError, match=r"unknown section \[netwrk\]"):
        values_of(tmp_path, {"netwrk": {"rank": 8}})


def test_a_value_that_is_no_number_or_a_prompt_file_not_utf8_is_named_with_its_setting(tmp_path):
    settings = {"train_data_dir": "sample", "network_dim": "abc", "network_args": ["conv_dim=x", "conv_alpha=1"],
                "max_train_epochs": 2.5, "learning_rate": "fast", "optimizer_args": ["weight_decay=lots"]}
    with pytest.raises(LowvramError) as error:
        translate(settings, Path("kohya.toml"))
    assert str(error.value).splitlines() == [
        "kohya.toml: network_dim: 'abc' is not a whole number",
        "kohya.toml: network_args conv_dim: 'x' is not a whole number",
        "kohya.toml: learning_rate: 'fast' is not a number",
        "kohya.toml: optimizer_args weight_decay: 'lots' is not a number",
        "kohya.toml: max_train_epochs: 2.5 is not a whole number"]
    latin1 = tmp_path / "prompts.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(LowvramError, match=f"sample_prompts: {latin1} is not UTF-8 text \\(byte 3\\); save it as "):
        translate({"train_data_dir": "sample", "sample_prompts": str(latin1)}, Path("kohya.toml"))
    assert translate(settings | {"network_dim": "8", "network_args": ["conv_dim=2"], "max_train_epochs": "3",
                                 "learning_rate": "1e-4", "optimizer_args": []}, Path("k.toml"))[0]["rank"] == 8


def test_kohyas_per_block_ranks_and_learning_rates_carry_over(tmp_path, capsys):
    dims, conv = ",".join(["4"] * 12 + ["8"] + ["4"] * 12), ",".join(["2"] * 25)
    args = [f"block_dims={dims}", "block_alphas=2", f"conv_block_dims={conv}", "down_lr_weight=sine+0.5",
            "mid_lr_weight=0", "up_lr_weight=1,1,0.5", "block_lr_zero_threshold=0.6"]
    values = values_of(tmp_path, {"train_data_dir": "sample", "network_dim": 8, "network_alpha": 4,
                                  "network_args": args})
    assert values["block_lr_zero_threshold"] == 0.6
    assert {key: values[key] for key in ("block_ranks", "block_alphas", "conv_block_ranks", "conv_block_alphas",
                                         "down_lr_weight", "mid_lr_weight", "up_lr_weight", "lora_layers")} == {
        "block_ranks": dims, "block_alphas": "2", "conv_block_ranks": conv, "conv_block_alphas": "1",  # kohya's 1
        "down_lr_weight": "sine+0.5", "mid_lr_weight": "0", "up_lr_weight": "1,1,0.5", "lora_layers": "full"}
    build_config(values | {"model": "tiny"})  # and lowvram takes them
    with pytest.raises(LowvramError) as error:
        translate({"train_data_dir": "sample", "network_args": ["block_dims=4,x", "up_lr_weight=slow"]},
                  Path("kohya.toml"))
    assert str(error.value).splitlines() == [
        "kohya.toml: network_args block_dims: '4,x' is not comma-separated whole numbers (e.g. 4,4,8)",
        ("kohya.toml: network_args up_lr_weight: 'slow' is not comma-separated numbers (e.g. 4,4,8), or a curve: "
         "cosine, sine, linear, reverse_linear, zeros")]
    # one number is no list to kohya but a curve's name, which it does not find: those blocks train at 1
    values, notes = translate({"train_data_dir": "sample", "network_args": ["down_lr_weight=0.5", "mid_lr_weight=0.5",
                                                                            "up_lr_weight=2"]}, Path("kohya.toml"))
    assert "down_lr_weight" not in values and "up_lr_weight" not in values and values["mid_lr_weight"] == "0.5"
    assert any(note.startswith("network_args up_lr_weight=2: kohya reads a single value as a weight curve's name")
               for note in notes)
    _, notes = translate({"train_data_dir": "sample", "network_module": "lycoris.kohya", "network_args":
                          ["algo=locon", f"block_dims={dims}"]}, Path("kohya.toml"))
    assert f"network_args not carried over: block_dims={dims}" in notes  # LyCORIS has no per-block ranks


def test_kohyas_warmup_ratio_carries_over(tmp_path):
    assert values_of(tmp_path, {"train_data_dir": "sample", "lr_warmup_steps": 0.1})["warmup_steps"] == 0.1
    assert values_of(tmp_path, {"train_data_dir": "sample", "lr_warmup_steps": 100})["warmup_steps"] == 100


def test_kohyas_text_encoder_stop_is_ignored_as_its_lora_training_ignores_it(tmp_path):
    """Only sd-scripts' DreamBooth script reads stop_text_encoder_training (kohya_ss's LoRA tab ignores its Stop TE
    field too): the text encoder trains throughout, and a note says how lowvram would stop it."""
    values, notes = translate({"train_data_dir": "sample", "stop_text_encoder_training": 100}, tmp_path / "k.toml")
    assert values["train_text_encoder"] is True and "text_encoder_until" not in values
    assert "stop_text_encoder_training 100: sd-scripts' LoRA training ignores it, so the text encoder trains " \
           "throughout here too (--text-encoder-until 100 stops it)" in notes
    values = values_of(tmp_path, {"train_data_dir": "sample", "stop_text_encoder_training": -1, "unet_lr": 1e-4,
                                  "text_encoder_lr": 1e-5})
    assert values["train_text_encoder"] is True and values["text_encoder_lr"] == 1e-5
    _, notes = translate({"train_data_dir": "sample", "network_train_unet_only": True,
                          "stop_text_encoder_training": 100}, tmp_path / "k.toml")
    assert not any("stop_text_encoder_training" in note for note in notes)


def test_kohyas_comment_and_modelspec_settings_carry_over(tmp_path):
    values = values_of(tmp_path, {"train_data_dir": "sample", "training_comment": "v2", "metadata_title": "Dog",
                                  "metadata_author": "bob", "metadata_tags": "dog,photo", "no_metadata": True})
    assert {key: values[key] for key in ("training_comment", "metadata_title", "metadata_author",
                                         "metadata_tags", "no_metadata")} == {
        "training_comment": "v2", "metadata_title": "Dog", "metadata_author": "bob", "metadata_tags": "dog,photo",
        "no_metadata": True}


def test_kohyas_enable_wildcard_reads_choices_and_caption_lines(tmp_path):
    values = values_of(tmp_path, {"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample",
                                  "enable_wildcard": True})
    assert (values["wildcards"], values["caption_lines"]) == (True, "each")


def test_kohyas_toml_and_json_prompt_files_and_its_sampler_carry_over(tmp_path):
    (tmp_path / "prompts.toml").write_text(tomli_w.dumps({"prompt": {
        "negative_prompt": "blurry", "width": 64, "height": 96, "scale": 5.5, "sample_steps": 3,
        "subset": [{"prompt": "lvshape, a red circle", "seed": 7},
                   {"prompt": "lvshape, a blue\nsquare", "width": 128, "sample_sampler": "k_dpm_2_a",
                    "controlnet_image": "edges.png"}]}}))
    (tmp_path / "prompts.json").write_text(
        '["lvshape, a circle --w 64", {"prompt": "lvshape, a square", "negative_prompt": "", "seed": 3, "enum": 0}]')
    settings = {"train_data_dir": "sample", "sample_every_n_steps": 2}
    values, notes = translate(settings | {"sample_prompts": str(tmp_path / "prompts.toml"),
                                          "sample_sampler": "euler_a"}, Path("k.toml"))
    assert values["sample_prompts"] == [
        "lvshape, a red circle --n blurry --w 64 --h 96 --l 5.5 --s 3 --d 7",
        "lvshape, a blue square --n blurry --w 128 --h 96 --l 5.5 --s 3 --ss k_dpm_2_a"]
    assert values["sample_sampler"] == "euler_a" and values["sample_every"] == "2"
    assert "sample_prompts: not carried over from prompts.toml: controlnet_image" in notes
    config = build_config({"model": "tiny", **values})
    assert [(p.width, p.height, p.sampler) for p in config.samples] == [(64, 96, "euler_a"), (128, 96, "dpm_2_a")]
    values, _ = translate(settings | {"sample_prompts": str(tmp_path / "prompts.json")}, Path("k.toml"))
    # sd-scripts' 30 steps and scale 7.5 where a prompt gives none (lowvram's own 20 and 7: samples unlike kohya's)
    assert values["sample_prompts"] == ["lvshape, a circle --w 64 --l 7.5",
                                        "lvshape, a square --d 3 --l 7.5"] and values["sample_steps"] == 30
    assert values["sample_sampler"] == "ddim"  # kohya's default
    (tmp_path / "bad.toml").write_text("[prompt]\nwidth = 64\n")
    for bad, says in (("bad.toml", "no [[prompt.subset]] tables"), ("prompts.json", "unknown sampler 'lcm'")):
        extra = {"sample_sampler": "lcm"} if bad == "prompts.json" else {}
        with pytest.raises(LowvramError, match=re.escape(says)) as error:
            translate(settings | {"sample_prompts": str(tmp_path / bad)} | extra, Path("k.toml"))
        assert len(str(error.value).splitlines()) == 1
    values, notes = translate(settings | {"sample_prompts": str(tmp_path / "p.yaml")}, Path("k.toml"))
    assert "sample_prompts" not in values and any("p.yaml not found, so no samples" in note for note in notes)


def test_dim_from_weights_leaves_the_rank_and_alpha_to_the_file(tmp_path):
    values, _ = translate({"train_data_dir": "sample", "network_weights": "old.safetensors", "dim_from_weights": True},
                          Path("k.toml"))
    assert "rank" not in values and "alpha" not in values and values["network_weights"] == "old.safetensors"
    assert translate({"train_data_dir": "sample"}, Path("k.toml"))[0]["rank"] == 4  # kohya's own default otherwise
    # the config file's own values are checked with the file's rank, as the run takes it (it was refused for
    # differing from lowvram's default rank, which nobody gave)
    from conftest import run_config

    from lowvram.train.loop import train

    old = train(run_config(output=str(tmp_path / "old"), max_steps=1, rank=8, alpha=4)).lora_path
    (tmp_path / "k.toml").write_text(tomli_w.dumps({"train_data_dir": "sample", "network_weights": str(old),
                                                    "dim_from_weights": True, "pretrained_model_name_or_path": "tiny"}))
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "k.toml")])
    config = build_config(train_values(args))
    assert (config.network.rank, config.network.alpha) == (8, 4)


def test_a_learning_rate_free_optimizer_trains_the_text_encoder_at_the_unets_rate_not_kohyas_default(tmp_path):
    """unet_lr 1 with Prodigy and no learning_rate: kohya's default 2e-6 was the text encoder's, and the config was
    refused "drop --text-encoder-lr", a rate it never gave (kohya stops at Prodigy's first step)."""
    settings = {"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample", "optimizer_type": "Prodigy",
                "unet_lr": 1, "max_train_steps": 2}
    values, notes = translate(settings, tmp_path / "k.toml")
    assert values["lr"] == 1 and values["train_text_encoder"] and "text_encoder_lr" not in values
    assert any(note.startswith("text_encoder_lr: not given, so kohya's default learning_rate 2e-06 would be the text "
                               "encoder's, beside unet_lr 1, and prodigy takes one rate for all") for note in notes)
    build_config(values_of(tmp_path, settings))  # trains, not refused
    assert translate(settings | {"learning_rate": 0.5}, tmp_path / "k.toml")[0]["text_encoder_lr"] == 0.5  # its own


def test_kohyas_cosine_with_min_lr_and_onetrainers_min_factor_floor_the_schedule():
    from lowvram.onetrainer_config import translate_onetrainer

    values, _ = translate({"train_data_dir": "sample", "lr_scheduler": "cosine_with_min_lr",
                           "lr_scheduler_min_lr_ratio": 0.1}, Path("k.toml"))
    assert (values["scheduler"], values["min_lr_ratio"]) == ("cosine", 0.1)
    with pytest.raises(LowvramError, match="cosine_with_min_lr needs lr_scheduler_min_lr_ratio"):
        translate({"train_data_dir": "sample", "lr_scheduler": "cosine_with_min_lr"}, Path("k.toml"))
    doc = {"model_type": "STABLE_DIFFUSION_15", "training_method": "LORA", "learning_rate_scheduler": "COSINE",
           "learning_rate_min_factor": 0.05}
    assert translate_onetrainer(doc, Path("ot.json"))[0]["min_lr_ratio"] == 0.05
    constant = translate_onetrainer(doc | {"learning_rate_scheduler": "CONSTANT"}, Path("ot.json"))[0]
    assert "min_lr_ratio" not in constant  # nothing decays there


def test_lycoris_switches_kohya_ss_writes_off_are_no_loss_and_no_note():
    values, notes = translate({"train_data_dir": "sample", "network_module": "lycoris.kohya", "network_args": [
        "preset=full", "algo=locon", "conv_dim=8", "conv_alpha=4", "dora_wd=False", "use_tucker=False",
        "use_scalar=False", "rank_dropout_scale=False", "train_norm=False", "bypass_mode=False"]}, Path("k.toml"))
    assert values["conv_rank"] == 8 and not any("network_args" in note for note in notes)
    _, notes = translate({"train_data_dir": "sample", "network_module": "lycoris.kohya",
                          "network_args": ["algo=locon", "bypass_mode=True"]}, Path("k.toml"))
    assert "network_args not carried over: bypass_mode=True" in notes  # one that is on is named
    # those that train another network than lowvram's are refused (a note only, they trained without them)
    for switch, what in (("train_norm", "trained normalization layers"), ("use_scalar", "a trained scale"),
                         ("decompose_both", "its first Kronecker factor decomposed too")):
        with pytest.raises(LowvramError, match=f"network_args {switch}: LyCORIS's {switch} \\({what}"):
            translate({"train_data_dir": "sample", "network_module": "lycoris.kohya",
                       "network_args": ["algo=lokr", f"{switch}=True"]}, Path("k.toml"))
    # a LoKr's full_matrix is its whole factors: lowvram's rank past them, trained at scale 1
    values, notes = translate({"train_data_dir": "sample", "network_module": "lycoris.kohya", "network_dim": 8,
                               "network_args": ["algo=lokr", "factor=4", "full_matrix=True"]}, Path("k.toml"))
    assert values["rank"] == 100_000 and values["lokr_factor"] == 4
    values, _ = translate({"train_data_dir": "sample", "network_module": "lycoris.kohya", "network_dim": 8,
                           "network_args": ["algo=lokr", "conv_dim=4", "full_matrix=True"]}, Path("k.toml"))
    assert values["conv_rank"] == 100_000  # (the convolutions' factors whole too, as LyCORIS makes them)
    assert any(note.startswith("full_matrix=True: trained as rank 100000") for note in notes)


@pytest.mark.parametrize("config, dataset", [
    ({"shuffle_caption": True}, {"general": {"keep_tokens": 1}}),  # the config shuffles, the dataset keeps
    ({"keep_tokens": 1}, {"general": {"shuffle_caption": True}}),  # and the other way round
])
def test_kept_tags_and_the_shuffle_that_moves_them_may_each_come_from_config_or_dataset_file(
        tmp_path, sample_data, config, dataset):
    """kohya settles each subset's settings from its dataset file, then from the config (argparse) beneath it."""
    from lowvram.configure import without_idle_kept_tags

    (tmp_path / "dataset.toml").write_text(tomli_w.dumps(
        dataset | {"datasets": [{"subsets": [{"image_dir": str(sample_data / "5_lvshape"), "caption_extension": ".txt",
                                              "num_repeats": 1}]}]}))
    values = without_idle_kept_tags(values_of(tmp_path, config | {"dataset_config": str(tmp_path / "dataset.toml")}))
    assert (values["shuffle_tags"], values["keep_tokens"]) == (True, 1)
    build_config(values | {"model": "tiny"})
    idle = values_of(tmp_path, {"train_data_dir": "sample", "keep_tokens": 1})  # kohya_ss writes it either way
    assert "keep_tokens" not in without_idle_kept_tags(idle)
    build_config(without_idle_kept_tags(idle) | {"model": "tiny"})


def test_a_configs_kept_tags_that_nothing_moves_are_said(tmp_path, capsys):
    """kohya_ss writes keep_tokens whether or not shuffle_caption is on: passed over, as kohya passes it, and said
    (a user who switched shuffling off for a test run saw keep_tokens = 0 in the run's options, unexplained)."""
    from lowvram.cli import main

    config = tmp_path / "kohya.toml"
    config.write_text('pretrained_model_name_or_path = "tiny"\ntrain_data_dir = "sample"\nkeep_tokens = 1\n'
                      'shuffle_caption = false\nmax_train_steps = 1\n')
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    assert (f"keep_tokens 1 (from {config}): no effect, as nothing shuffles or drops the tags; --shuffle-tags "
            "(kohya's shuffle_caption) or --tag-dropout moves the others") in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--dry-run", "--shuffle-tags"]) == 0
    assert "no effect" not in capsys.readouterr().err
    # a preset's, named as the preset's (it was said to be a dataset file's)
    assert main(["train", "--model", "tiny", "--data", "sample", "--preset", "character", "--no-shuffle-tags",
                 "--dry-run"]) == 0
    assert "keep_tokens 1 (from the preset character): no effect" in capsys.readouterr().err


@pytest.mark.parametrize("optimizer", ["AdamWScheduleFree", "RAdamScheduleFree"])
def test_a_schedule_free_optimizer_trains_without_a_schedule_its_warm_up_from_optimizer_args_as_in_kohya(
        tmp_path, optimizer):
    """kohya gives a schedule-free optimizer a schedule that does nothing: its lr_scheduler and lr_warmup_steps go
    unused, and optimizer_args' warmup_steps is its warm-up. A cosine there (kohya_ss's default) was refused."""
    settings = {"train_data_dir": "sample", "optimizer_type": optimizer, "lr_scheduler": "cosine",
                "lr_warmup_steps": 100, "lr_scheduler_min_lr_ratio": 0.1, "optimizer_args": ["warmup_steps=20"]}
    values, notes = translate(settings, Path("kohya.toml"))
    assert (values["scheduler"], values["warmup_steps"], "min_lr_ratio" in values) == ("constant", 20, False)
    assert any(note.startswith("lr_scheduler, lr_warmup_steps not used: kohya trains") for note in notes)
    build_config(values_of(tmp_path, settings | {"pretrained_model_name_or_path": "tiny"}))  # refused before
    plain, _ = translate(settings | {"optimizer_args": []}, Path("kohya.toml"))
    assert (plain["scheduler"], "warmup_steps" in plain) == ("constant", False)  # no warm-up, as in kohya
    restarts, _ = translate(settings | {"lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 3},
                            Path("kohya.toml"))
    assert (restarts["scheduler"], "scheduler_cycles" in restarts) == ("constant", False)  # (the cycles leaked)


def test_kohyas_bucket_sides_default_to_sd_scripts_own_where_it_trains_with_them(tmp_path):
    """sd-scripts' min/max_bucket_reso are 256 and 1024: at 1024 lowvram's own (512 and 2048) would bucket a 2:1
    image at 1408x704 where kohya's is 1024x512. sd-scripts refuses a resolution outside them; lowvram's own
    follow the resolution there, and buckets off take none."""
    values = values_of(tmp_path, {"train_data_dir": "sample", "resolution": "1024", "enable_bucket": True})
    assert (values["min_bucket_side"], values["max_bucket_side"]) == (256, 1024)
    given = values_of(tmp_path, {"train_data_dir": "sample", "resolution": "1024", "max_bucket_reso": 2048,
                                    "enable_bucket": True})
    assert given["max_bucket_side"] == 2048
    large = values_of(tmp_path, {"train_data_dir": "sample", "resolution": "1536,1536", "enable_bucket": True})
    assert large["min_bucket_side"] == 256 and "max_bucket_side" not in large
    assert "min_bucket_side" not in values_of(tmp_path, {"train_data_dir": "sample", "resolution": 128,
                                                                 "enable_bucket": True})
    square = values_of(tmp_path, {"train_data_dir": "sample", "resolution": "1024", "enable_bucket": False})
    assert "min_bucket_side" not in square and "max_bucket_side" not in square


def test_a_kohya_config_without_enable_bucket_crops_square_as_sd_scripts_does(tmp_path, capsys):
    """sd-scripts' enable_bucket is off unless set (kohya_ss's configs always set it): its images are cropped square
    to the resolution; lowvram bucketed them, unsaid. A dataset file sets it for itself."""
    from lowvram.dataset_files import read_dataset

    values, notes = translate({"train_data_dir": "sample", "resolution": "512"}, tmp_path / "k.toml")
    assert values["bucket"] is False and any(note.startswith("enable_bucket: not set in the config, so every image is "
                                                             "cropped square") for note in notes)
    assert translate({"train_data_dir": "sample", "enable_bucket": True}, tmp_path / "k.toml")[0]["bucket"] is True
    assert "bucket" not in translate({"dataset_config": "d.toml"}, tmp_path / "k.toml")[0]
    (tmp_path / "imgs").mkdir()
    dataset = tmp_path / "dataset.toml"
    dataset.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\n")
    assert read_dataset(dataset).assumed["bucket"][0] is False and "bucket" not in read_dataset(dataset).values
    (tmp_path / "run.toml").write_text(f"[model]\nmodel = 'tiny'\n[data]\ndata = '{dataset}'\n")  # lowvram's own
    capsys.readouterr()
    assert build_config(read_toml(tmp_path / "run.toml")).data.bucket is False
    assert "enable_bucket: not set in [general], so every image is cropped square" in capsys.readouterr().err
    assert build_config(read_toml(tmp_path / "run.toml")).data.bucket is False  # said once, not each time built
    assert "enable_bucket" not in capsys.readouterr().err
    # a kohya config naming it fills its gaps, as kohya's arguments fill a dataset file's; so does any layer, the
    # command line's --data beside a config's enable_bucket too
    config = tmp_path / "k.toml"
    config.write_text(f"pretrained_model_name_or_path = 'tiny'\ndataset_config = '{dataset}'\nenable_bucket = true\n")
    capsys.readouterr()
    assert build_config(read_config(config)).data.bucket is True
    config.write_text("pretrained_model_name_or_path = 'tiny'\nenable_bucket = true\n")
    assert build_config(train_values(build_parser().parse_args(["train", "--config", str(config), "--data",
                                                                 str(dataset)]))).data.bucket is True
    assert "enable_bucket: not set" not in capsys.readouterr().err
    assert build_config(train_values(build_parser().parse_args(["train", "--model", "tiny", "--data",
                                                                 str(dataset)]))).data.bucket is False
    dataset.write_text("[general]\nenable_bucket = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\n")
    assert read_dataset(dataset).values == {"bucket": True} and not read_dataset(dataset).assumed  # (over a config's)


def test_kohyas_loraplus_ratios_go_to_the_part_they_name(tmp_path):
    """kohya: the U-Net's ratio is loraplus_unet_lr_ratio or loraplus_lr_ratio, the text encoders'
    loraplus_text_encoder_lr_ratio or loraplus_lr_ratio; a part with neither trains without LoRA+."""
    def ratios(*args):
        values, _ = translate({"network_module": "networks.lora", "network_args": list(args)}, tmp_path / "k.toml")
        return values.get("loraplus_ratio"), values.get("loraplus_text_encoder_ratio")

    assert ratios("loraplus_lr_ratio=16", "loraplus_unet_lr_ratio=4") == (4, 16)
    assert ratios("loraplus_unet_lr_ratio=4") == (4, 1)
    assert ratios("loraplus_lr_ratio=16") == (16, None)  # lowvram's text-encoder ratio defaults to the U-Net's
    assert ratios("loraplus_lr_ratio=16", "loraplus_text_encoder_lr_ratio=2") == (16, 2)


def test_kohya_settings_that_would_change_the_schedule_or_the_parts_trained_are_refused(tmp_path):
    base = {"network_module": "networks.lora", "max_train_steps": 100}
    refused = {"lr_scheduler_args": {"lr_scheduler": "cosine", "lr_scheduler_args": ["num_cycles=2"]},
               "lr_scheduler_num_cycles": {"lr_scheduler": "cosine_with_min_lr", "lr_scheduler_min_lr_ratio": 0.1,
                                           "lr_scheduler_num_cycles": 3},
               "lr_scheduler_timescale": {"lr_scheduler": "inverse_sqrt", "lr_warmup_steps": 10,
                                          "lr_scheduler_timescale": 50},
               "lr_scheduler_timescale ": {"lr_scheduler": "inverse_sqrt", "lr_scheduler_timescale": "auto"},
               "unet_lr": {"unet_lr": 0, "text_encoder_lr": 1e-5},
               "cache_text_encoder_outputs": {"cache_text_encoder_outputs": True}}
    for key, settings in refused.items():
        with pytest.raises(LowvramError, match=f"k.toml: {key.strip()}: ") as error:
            translate(base | settings, tmp_path / "k.toml")
        assert len(str(error.value).splitlines()) == 1, error.value
    for settings in ({"lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 3},
                     {"lr_scheduler": "warmup_stable_decay", "lr_decay_steps": 0.2, "lr_scheduler_num_cycles": 1},
                     {"lr_scheduler": "inverse_sqrt", "lr_warmup_steps": 10, "lr_scheduler_timescale": 10},
                     {"lr_scheduler": "cosine", "lr_scheduler_num_cycles": 3},  # kohya's cosine takes no cycles
                     {"cache_text_encoder_outputs": True, "network_train_unet_only": True}):
        translate(base | settings, tmp_path / "k.toml")


def test_kohyas_step_and_epoch_intervals_together(tmp_path):
    """kohya saves at both (lowvram at one, said in a note) and samples by the epochs alone."""
    values, notes = translate({"network_module": "networks.lora", "save_every_n_steps": 3, "save_every_n_epochs": 1,
                               "sample_every_n_steps": 3, "sample_every_n_epochs": 2}, tmp_path / "k.toml",
                              prompts=["a red circle"])
    assert (values["save_every"], values["sample_every"]) == ("3", "2e")
    assert any("kohya saves at both" in note for note in notes)
    assert any("sample_every_n_steps not used" in note for note in notes)


def test_kohyas_validation_settings_carry_over(tmp_path):
    values, notes = translate({"network_module": "networks.lora", "validation_split": 0.25,
                               "validate_every_n_steps": 2, "validate_every_n_epochs": 1, "validation_seed": 3,
                               "max_validation_steps": 4}, tmp_path / "k.toml")
    assert (values["validation_split"], values["validate_every"]) == (0.25, 2)
    assert {"max_validation_steps not carried over: lowvram validates every held-out image",
            ("validation_seed not carried over: the held-out images are chosen by --seed; the diffusers scripts' (the "
            "sample images' seed) is inline in --sample-prompt (\"a cat --d 42\")")} <= set(notes)
    values = values_of(tmp_path, {"network_module": "networks.lora", "validate_every_n_steps": 2,
                                  "validate_every_n_epochs": 1.0})
    assert "validate_every" not in values  # nothing held out: kohya validates nothing


def test_a_validation_interval_without_anything_held_out_is_not_used(tmp_path, capsys):
    """kohya validates only what validation_split holds out, its own or its dataset file's."""
    (tmp_path / "data.toml").write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path.as_posix()}"\n')
    settings = {"network_module": "networks.lora", "dataset_config": str(tmp_path / "data.toml"),
                "validate_every_n_steps": 50}
    assert "validate_every" not in values_of(tmp_path, settings)
    assert "its validation interval is not used: nothing is held out" in capsys.readouterr().err
    (tmp_path / "data.toml").write_text('[general]\nvalidation_split = 0.2\n' + (tmp_path / "data.toml").read_text())
    assert values_of(tmp_path, settings)["validate_every"] == 50


def test_a_validation_interval_beside_a_split_the_command_line_gives_is_kept(tmp_path, capsys):
    from lowvram.cli import build_parser, train_values

    (tmp_path / "k.toml").write_text(tomli_w.dumps({"network_module": "networks.lora", "train_data_dir": "sample",
                                                    "validate_every_n_steps": 50}))
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "k.toml"), "--validation-split", "0.2"])
    values = train_values(args)
    assert (values["validate_every"], build_config(values | {"model": "tiny"}).validation.validation_split) == (50, 0.2)
    assert "not used" not in capsys.readouterr().err
    # a plain folder on the command line holds nothing out: the interval is not used, as before
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "k.toml"), "--data", str(tmp_path)])
    assert "validate_every" not in train_values(args)
    assert "its validation interval is not used" in capsys.readouterr().err
    # a dataset file on the command line that holds images out keeps it
    (tmp_path / "data.toml").write_text(f'[general]\nvalidation_split = 0.2\n[[datasets]]\n[[datasets.subsets]]\n'
                                        f'image_dir = "{tmp_path.as_posix()}"\n')
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "k.toml"), "--data", str(tmp_path / "data.toml")])
    assert train_values(args)["validate_every"] == 50
    (tmp_path / "data.toml").write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path.as_posix()}"\n')
    assert "validate_every" not in train_values(args)  # one that holds nothing out does not


def test_a_resume_setting_resumes_a_lowvram_checkpoint_and_refuses_kohyas_state(tmp_path):
    """It was 'not carried over' and the run trained from step 0."""
    from conftest import run_config

    from lowvram.train.loop import train

    train(run_config(output=str(tmp_path / "run"), max_steps=2, checkpoint_every=2))
    found = tmp_path / "run" / "checkpoints" / "step-000002"
    values, notes = translate({"train_data_dir": "sample", "resume": str(found)}, Path("k.toml"))
    assert values["resume"] == str(found) and not any("resume" in note for note in notes)
    with pytest.raises(LowvramError) as error:
        translate({"train_data_dir": "sample", "resume": str(tmp_path / "mychar-000002-state")}, Path("k.toml"))
    assert str(error.value) == (f"k.toml: resume: {tmp_path / 'mychar-000002-state'} is not a lowvram checkpoint, and "
                                "kohya's saved state (its -state folder) is not read here; train on from its LoRA "
                                "with --network-weights FILE (a fresh optimizer), or leave resume out")


def test_a_misspelt_kohya_setting_is_named_and_one_that_changes_the_images_refused(tmp_path):
    """`netwrok_dim = 8` trained at kohya's rank 4 under a bare 'not carried over' (then under a note naming
    network_dim: a full run of nothing); face_crop_aug_range, refused as a flag and in a dataset file, trained without
    its crops. A real setting lowvram lacks is only noted, close to one it has or not; sd-scripts' old
    caption_extention is read as it reads it."""
    with pytest.raises(LowvramError) as error:
        translate({"train_data_dir": "sample", "face_crop_aug_range": "2.0,4.0"}, Path("k.toml"))
    assert str(error.value) == ("k.toml: face_crop_aug_range: lowvram has no face-crop augmentation (crop the images "
                                "beforehand, or use --crop random)")
    with pytest.raises(LowvramError) as error:
        translate({"train_data_dir": "sample", "netwrok_dim": 8, "learning_rat": 1e-4}, Path("k.toml"))
    assert str(error.value).splitlines() == [
        f"k.toml: {key}: no setting of kohya's; did you mean {meant}? (left as it is, the run would train "
        "without it)" for key, meant in (("learning_rat", "learning_rate"),
                                                                      ("netwrok_dim", "network_dim"))]
    values, notes = translate({"train_data_dir": "sample", "save_last_n_steps_state": 3, "my_own_note": "x",
                               "t5_dropout_rate": 0.5,  # (sd-scripts' own for FLUX: close to caption_dropout_rate)
                               # other trainers' and kohya_ss GUI's, a setting with a word more: noted, not refused
                               "learning_rate_te1": 1e-5, "noise_offset_type": "Original", "sdxl_no_half_vae": True,
                               "caption_extention": ".cap", "network_multiplier": 1.0,
                               "save_last_n_epochs_state": 2}, Path("k.toml"))
    # a real setting of kohya's is not taken for a typo of another (save_last_n_steps keeps LoRAs, not states)
    assert ("not carried over (lowvram has no such setting): learning_rate_te1 (did you mean learning_rate?), "
            "my_own_note, sdxl_no_half_vae (did you mean no_half_vae?), t5_dropout_rate (did you mean "
            "caption_dropout_rate?)") in notes
    assert ("save_last_n_steps_state not carried over: lowvram's counterpart is --keep-checkpoints (a number of "
            "checkpoints: the steps divided by --checkpoint-every's)") in notes
    assert values["keep_checkpoints"] == 2  # kohya's states are lowvram's checkpoints
    assert values["caption_extension"] == ".cap"
    with pytest.raises(LowvramError, match="network_multiplier: lowvram trains the LoRA at strength 1"):
        translate({"train_data_dir": "sample", "network_multiplier": 0.5}, Path("k.toml"))


def _config_of(path: Path):
    return build_config(train_values(build_parser().parse_args(["train", "--config", str(path)])))


def _launcher(settings: dict, windows: bool) -> str:
    """A kohya_ss launcher script running train_network.py with `settings` as flags, one per line."""
    flags = []
    for key, value in settings.items():
        if value is True:
            flags.append(f"--{key}")
        elif isinstance(value, list) and value:
            flags.append(f"--{key} " + " ".join(f'"{item}"' if windows else f"'{item}'" for item in value))
        elif value is not False and value != []:
            flags.append(f'--{key}="{value}"' if windows else f"--{key}='{value}'")
    if windows:
        return ("@echo off\r\nREM made by kohya_ss\r\ncall venv\\Scripts\\activate\r\naccelerate launch "
                '--num_cpu_threads_per_process=2 "./train_network.py" ^\r\n  ' + " ^\r\n  ".join(flags)
                + "\r\npause\r\n")
    return ("#!/bin/bash\n# train\naccelerate launch --mixed_precision bf16 sd-scripts/train_network.py \\\n  "
            + " \\\n  ".join(flags) + " 2>&1 | tee train.log\n")


@pytest.mark.parametrize("windows", [True, False])
def test_a_kohya_launcher_script_is_read_as_the_config_its_flags_make(tmp_path, monkeypatch, windows):
    """`lowvram train --config train.bat`: kohya_ss users keep their runs as .bat/.sh launchers of train_network.py;
    the script was refused as TOML that does not parse ('Invalid statement'). Its flags are the config's keys."""
    import dataclasses

    monkeypatch.chdir(tmp_path)
    settings = KOHYA_SS | {"output_dir": "out", "output_name": "my cat", "logging_dir": "logs"}
    (tmp_path / "kohya.toml").write_text(tomli_w.dumps(settings))
    script = tmp_path / ("train.bat" if windows else "train.sh")
    script.write_text(_launcher(settings, windows))
    as_toml, as_script = (dataclasses.asdict(_config_of(path)) for path in (tmp_path / "kohya.toml", script))
    assert as_script == as_toml and as_script["output"]["name"] == "my cat"


def test_a_launchers_config_file_its_windows_folders_and_other_scripts(tmp_path, monkeypatch):
    """A launcher's --config_file gives the values its flags do not (kohya's reading); a relative folder written
    with backslashes is read where it is (it was 'written as a Windows path'); kohya's other scripts are refused."""
    from lowvram.data.sample import write_sample_dataset

    monkeypatch.chdir(tmp_path)
    write_sample_dataset(tmp_path / "train" / "img")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "p.txt").write_text("lvshape --w 64 --h 64 --s 2\n")
    (tmp_path / "base.toml").write_text(tomli_w.dumps(KOHYA_SS | {"max_train_steps": 9, "output_dir": "out"}))
    (tmp_path / "train.bat").write_text('accelerate launch train_network.py --config_file="base.toml" '
                                        '--train_data_dir="train\\img" --sample_prompts="prompts\\p.txt" '
                                        '--output_dir="runs\\first" --max_train_steps=2\r\n')
    config = _config_of(tmp_path / "train.bat")
    assert (config.training.max_steps, config.network.rank) == (2, 8)  # the flag over the file; the file's rank
    assert Path(config.data.data) == tmp_path / "train" / "img" and config.output_dir == tmp_path / "runs" / "first"
    assert list(config.prompt_lines) == ["lvshape --w 64 --h 64 --s 2 --l 7.5"]
    from lowvram.files import local_path

    # \\tmp is the root of the current Windows drive's: this machine's /tmp would be a guess
    assert local_path("\\tmp", tmp_path / "train.bat") == Path("\\tmp")
    # the kohya_ss GUI's printed command names its own machine's config: the one beside the script
    (tmp_path / "gui.bat").write_text('accelerate launch train_network.py --config_file="C:\\kohya\\base.toml"\r\n')
    assert _config_of(tmp_path / "gui.bat").training.max_steps == 9
    (tmp_path / "db.bat").write_text('accelerate launch "train_db.py" --train_data_dir=img\r\n')
    with pytest.raises(LowvramError, match="db.bat runs kohya's train_db.py, a DreamBooth fine-tune; lowvram trains "
                                           "LoRAs"):
        read_config(tmp_path / "db.bat")
    (tmp_path / "nothing.sh").write_text("echo hello\n")
    with pytest.raises(LowvramError, match="runs no kohya training script"):
        read_config(tmp_path / "nothing.sh")
    (tmp_path / "diffusers.sh").write_text("accelerate launch examples/text_to_image/train_text_to_image_lora.py \\\n"
                                           "  --pretrained_model_name_or_path=x --rank=4\n")
    with pytest.raises(LowvramError, match="runs the diffusers example script train_text_to_image_lora.py, whose "
                                           "command lowvram does not read from a file: give its flags to lowvram "
                                           "train as lowvram's"):
        read_config(tmp_path / "diffusers.sh")


def test_a_pasted_kohya_command_line_is_pointed_at_a_launcher_script_which_reads_it(tmp_path, monkeypatch, capsys):
    """Thirty kohya flags pasted made one line of thirty hints; the launcher script reads them as they are."""
    monkeypatch.chdir(tmp_path)
    flags = ["--pretrained_model_name_or_path=tiny", "--train_data_dir=sample", "--network_dim=8", "--enable_bucket",
             "--max_train_steps=2", "--output_dir=out", "--network_args", "conv_dim=4", "--token_warmup_step=2"]
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "8 of them are kohya's flags (--pretrained_model_name_or_path=tiny ...)" in err
    assert ("save it (accelerate launch train_network.py --flags) as train.sh or train.bat and give --config "
            "train.sh") in err
    # each one's name too (two were named, then '...': a user rewriting them ran it again for each of the rest)
    assert ("or write each as lowvram's: --pretrained_model_name_or_path as --model, --train_data_dir as --data, "
            "--network_dim as --rank, --enable_bucket not needed, --max_train_steps as --max-steps, --output_dir as "
            "--output, --network_args as several (give --network_args alone to see which); --token_warmup_step is "
            "kohya's: lowvram trains every caption whole from the first step (see lowvram train --help)") in err
    # a diffusers script's command (flags kohya's share, and its own): no launcher script of kohya's reads it
    assert main(["train", *flags[:2], "--max_train_steps=2", "--output_dir=out", "--caption_column=text",
                 "--train_batch_size=1"]) == 2
    err = capsys.readouterr().err
    assert ("unknown options: 6 of them are the diffusers scripts' flags (--pretrained_model_name_or_path=tiny ...); "
            "write each as lowvram's: --pretrained_model_name_or_path as --model, --train_data_dir as --data, "
            "--max_train_steps as --max-steps, --output_dir as --output, --train_batch_size as --batch-size, "
            "--caption_column as --caption-column") in err and "launcher" not in err
    # sd-scripts has --use_8bit_adam too: a kohya command with it is kohya's
    assert main(["train", *flags[:4], "--use_8bit_adam"]) == 2
    assert "5 of them are kohya's flags" in capsys.readouterr().err
    (tmp_path / "train.sh").write_text("accelerate launch train_network.py " + " ".join(flags) + "\n")
    config = _config_of(tmp_path / "train.sh")
    assert (config.network.rank, config.training.max_steps, config.data.bucket) == (8, 2, True)


@pytest.mark.parametrize(("name", "script", "expected", "note"), [
    # a line that only mentions the script, a commented-out command and flag, the script's variable, a redirection
    ("a.sh", ("#!/bin/bash\necho Training with train_network.py\nls sd-scripts/train_network.py\n"
             "MODEL=/models/x.safetensors\n"
             "# accelerate launch train_network.py --network_dim 4\naccelerate launch sd-scripts/train_network.py \\\n"
             '  --pretrained_model_name_or_path="$MODEL" \\\n  --network_alpha 16  \\\n  # --network_dim 99 \\\n'
             "  --xformers >train.log\n"),
     {"pretrained_model_name_or_path": "/models/x.safetensors", "network_alpha": 16, "xformers": True}, None),
    ("b.sh", "accelerate launch train_network.py --network_dim 32 --xformers  # don't forget\n",
     {"network_dim": 32, "xformers": True}, None),
    # an assignment before the command on its line; a variable of another; an sh default
    ("e.sh", ("ROOT=/r\nMODEL=$ROOT/m.safetensors\nCUDA_VISIBLE_DEVICES=0 accelerate launch train_network.py "
              "--pretrained_model_name_or_path=$MODEL --output_dir=${OUT:-./out}\n"),
     {"pretrained_model_name_or_path": "/r/m.safetensors", "output_dir": "./out"}, None),
    # Akegarasu's lora-scripts: a comment after each setting, the script in a variable, arrays of conditional flags,
    # a variable set again after the command, an abbreviated flag, a --help run before the real one
    ("g.sh", ('network_dim=8 # network dim | 常用 4~128\ntrainer_file="./sd-scripts/train_network.py"\n'
              'extArgs=()\nif [ 1 == 1 ]; then extArgs+=("--network_train_unet_only"); fi\n'
              "python $trainer_file --help >/dev/null\n"
              "accelerate launch $trainer_file --network_dim=$network_dim --max_train_epoch 2 --xformers "
              "${extArgs[@]}\n"
              "network_dim=32\n"),
     {"network_dim": 8, "max_train_epochs": 2, "xformers": True}, "extArgs: array(s) of flags the script builds"),
    ("h.ps1", ('$network_dim = 8 # network dim\r\n$ext_args = [System.Collections.ArrayList]::new()\r\n'
               "accelerate launch train_network.py --network_dim=$network_dim --xformers $ext_args "
               '--metadata_author="me@host.com"\r\n'),  # (an address, no splat)
     {"network_dim": 8, "xformers": True, "metadata_author": "me@host.com"}, "ext_args: array(s) of flags"),
    ("i.bat", 'set ROOT=%~dp0\r\naccelerate launch train_network.py --sample_prompts="%ROOT%prompts.txt"\r\n',
     {"sample_prompts": "PLACE/prompts.txt"}, None),
    ("j.sh", "accelerate launch train_network.py --network_dim={network_dim} --xformers\n",
     {"network_dim": "{network_dim}", "xformers": True}, "network_dim: a notebook's Python value(s) written in braces"),
    ("f.bat", ("set model=C:\\m.safetensors\r\nset CUDA_VISIBLE_DEVICES=0 && accelerate launch train_network.py "
               "--pretrained_model_name_or_path=%MODEL%\r\n"),  # (cmd's names are of any case)
     {"pretrained_model_name_or_path": "C:\\m.safetensors"}, None),
    ("c.bat", ("@echo off\r\n@REM accelerate launch train_network.py --network_dim 8\r\n"
               "set MODEL=C:\\m\\x.safetensors\r\n"
              'accelerate launch "train_network.py" --pretrained_model_name_or_path="%MODEL%" ^\r\n'
              " --output_name=Bob's_lora --vae=%VAE% --noise_offset -0.05 --xformers 2>&1\r\n"),
     {"pretrained_model_name_or_path": "C:\\m\\x.safetensors", "output_name": "Bob's_lora", "vae": "%VAE%",
      "noise_offset": -0.05, "xformers": True}, "VAE: variable(s) the script does not set here"),
    ("d.ps1", ('$env:MODEL = "C:\\m\\x.safetensors"\r\naccelerate launch train_network.py `\r\n'
              "  --pretrained_model_name_or_path=$env:MODEL `\r\n  --output_name='my lora' --xformers # fast\r\n"),
     {"pretrained_model_name_or_path": "C:\\m\\x.safetensors", "output_name": "my lora", "xformers": True}, None),
    # set X="a b" keeps its quotes, which make %X% one word; set "X=a b" does not (the flags after it were read as
    # part of the model's path)
    ("k.bat", ('set MODEL="D:\\models\\Stable Diffusion\\model (1).safetensors"\r\nset "DATA=%~dp0img"\r\n'
               "accelerate launch train_network.py --pretrained_model_name_or_path=%MODEL% ^\r\n"
               ' --train_data_dir="%DATA%" ^\r\n --enable_bucket\r\n'),
     {"pretrained_model_name_or_path": "D:\\models\\Stable Diffusion\\model (1).safetensors",
      "train_data_dir": "PLACE/img", "enable_bucket": True}, None),
    # a PowerShell variable is one argument, spaces and all; $PSScriptRoot is the script's folder
    ("l.ps1", ('$MODEL = "D:\\models\\Stable Diffusion\\model (1).safetensors"\r\n$DATA = "$PSScriptRoot/img"\r\n'
               "accelerate launch train_network.py --pretrained_model_name_or_path=$MODEL --train_data_dir=$DATA "
               '--output_name="$MODEL"\r\n'),
     {"pretrained_model_name_or_path": "D:\\models\\Stable Diffusion\\model (1).safetensors",
      "train_data_dir": "PLACE/img", "output_name": "D:\\models\\Stable Diffusion\\model (1).safetensors"}, None),
])
def test_a_launchers_comments_variables_quotes_and_redirections_are_read_as_its_shell_reads_them(
        tmp_path, name, script, expected, note):
    from lowvram.kohya_launcher import launcher_config

    doc, notes = launcher_config(script, tmp_path / name)
    assert doc == {key: value.replace("PLACE", str(tmp_path)) if isinstance(value, str) else value
                   for key, value in expected.items()}  # (cmd's %~dp0: the script's own folder)
    assert (note is None and not notes) or any(note in said for said in notes), notes


def test_a_launchers_shell_folders_are_filled_in_and_an_output_it_cannot_name_is_left_out(tmp_path, monkeypatch):
    """cmd's %CD% and %USERPROFILE%, PowerShell's Join-Path and $PWD: kept as written, a run wrote into a folder
    named %CD% (set on a line before the command, with no note at all); a cmdlet's result named the LoRA Get-Date."""
    from lowvram.kohya_launcher import launcher_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    bat = ("@echo off\r\nset OUT=%CD%\\model\r\nset NAME=%MYNAME%_v1\r\naccelerate launch train_network.py ^\r\n"
           ' --train_data_dir="%USERPROFILE%\\img" --output_dir "%OUT%" --output_name "%NAME%"\r\n')
    doc, notes = launcher_config(bat, tmp_path / "t.bat")
    assert doc == {"train_data_dir": f"{tmp_path / 'home'}\\img", "output_dir": f"{tmp_path}\\model"}
    assert any(note.startswith("output_name %MYNAME%_v1: holds a variable the script does not set here, so it is left "
                               "out") and note.endswith("give --name on the command line") for note in notes), notes
    assert any(note.startswith("MYNAME: variable(s) the script does not set here") for note in notes), notes
    ps1 = ('$Out = Join-Path $PSScriptRoot "model"\r\n$Day = Get-Date -Format yyyyMMdd\r\n'
           'accelerate launch train_network.py --output_dir $Out --output_name "lora_$Day" '
           '--logging_dir "$PWD\\logs"\r\n')
    doc, notes = launcher_config(ps1, tmp_path / "t.ps1")
    assert doc == {"output_dir": f"{tmp_path}/model", "logging_dir": f"{tmp_path}/logs"}
    assert any(note.startswith("output_name lora_$Day: holds a variable") for note in notes), notes
    # a script that goes to its own folder first (kohya's .bat: cd /d "%~dp0"): its folder there, not lowvram's
    scripts = tmp_path / "scripts"
    for name, script, expected in (
            ("u.bat", 'cd /d "%~dp0"\r\naccelerate launch train_network.py --output_dir "%CD%\\out"\r\n',
             f"{scripts}\\out"),
            ("u.sh", 'cd "$(dirname "$0")"\naccelerate launch train_network.py --output_dir="$(pwd)/out"\n',
             f"{scripts}/out"),
            ("v.sh", 'accelerate launch train_network.py --output_dir="$(pwd)/out"\n', f"{tmp_path}/out"),
            ("u.ps1", ('Set-Location $PSScriptRoot\r\n$root = (Get-Location).Path\r\n'
                      'accelerate launch train_network.py --output_dir "$root/out"\r\n'), f"{scripts}/out")):
        assert launcher_config(script, scripts / name) == ({"output_dir": expected}, []), name


def test_a_launcher_whose_command_cannot_be_read_is_one_line(tmp_path, capsys):
    (tmp_path / "x.sh").write_text("accelerate launch train_network.py --output_name 'unclosed\n")
    assert main(["check-data", "--config", str(tmp_path / "x.sh"), "--model", "tiny", "sample"]) == 2
    err = capsys.readouterr().err
    assert "x.sh: its training command cannot be read (No closing quotation)" in err and "Traceback" not in err


def test_an_unknown_lycoris_preset_with_a_conv_dim_is_one_line(tmp_path):
    """kohya_ss passes conv_dim whatever the preset: an unknown one (its full-lin) raised a KeyError."""
    with pytest.raises(LowvramError, match="LyCORIS preset 'full-lin' is not one lowvram trains"):
        translate({"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample", "network_module": "lycoris.kohya",
                   "network_args": ["algo=locon", "preset=full-lin", "conv_dim=4"]}, tmp_path / "k.toml")


def test_kohyas_color_aug_and_a_pickle_save_format_are_said_not_carried_as_they_are(tmp_path):
    values, notes = translate({"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample", "color_aug": True,
                               "save_model_as": "ckpt"}, tmp_path / "k.toml")
    assert values["color_jitter"] == 0.1
    assert any(note.startswith("color_aug: trained as --color-jitter 0.1") for note in notes)
    assert any(note.startswith("save_model_as ckpt: lowvram writes .safetensors only") for note in notes)


def test_a_powershell_launcher_in_a_folder_with_spaces_reads_its_variables_as_powershell_does(tmp_path):
    """$PSScriptRoot is a variable (one argument, spaces and all; "$PSScriptRoot\\img" a path here), and a variable
    built from another keeps its spaces: it was cut at the first one."""
    from lowvram.kohya_launcher import launcher_config

    folder = tmp_path / "my scripts"
    script = ('$root = "D:\\AI Training"\r\n$model = "$root\\models\\sd15.safetensors"\r\n'
              "accelerate launch train_network.py --pretrained_model_name_or_path=$model `\r\n"
              '  --train_data_dir "$PSScriptRoot\\img" --output_dir $PSScriptRoot\\out --logging_dir=$root\r\n')
    doc, notes = launcher_config(script, folder / "train.ps1")
    assert doc == {"pretrained_model_name_or_path": "D:\\AI Training\\models\\sd15.safetensors",
                   "train_data_dir": f"{folder}/img", "output_dir": f"{folder}/out", "logging_dir": "D:\\AI Training"}
    assert not notes


def test_a_launchers_script_folder_with_backslashes_after_it_is_found(tmp_path, sample_data, capsys):
    """%~dp0dataset\\img (and $PSScriptRoot\\dataset\\img): the script's folder, then a Windows path, was one
    absolute path with backslashes in it, never found (dataset\\img alone was)."""
    import shutil

    shutil.copytree(sample_data, tmp_path / "dataset" / "img")
    for name, given in (("t.bat", '="%~dp0dataset\\img"'), ("t.ps1", ' "$PSScriptRoot\\dataset\\img"')):
        (tmp_path / name).write_text(f"accelerate launch train_network.py --train_data_dir{given}\r\n")
        assert main(["check-data", "--config", str(tmp_path / name), "--model", "tiny"]) == 0, capsys.readouterr().err


def test_kohyas_sample_steps_and_scale_leave_a_line_and_a_flag_their_own(tmp_path):
    """sd-scripts samples at 30 steps and scale 7.5 where a prompt says none: the scale joins each line, the steps
    are the config's --sample-steps (a flag given wins); a bare option at a line's end is none, as kohya drops it."""
    (tmp_path / "prompts.txt").write_text("lvshape, a cat --s\nlvshape, a dog --l 4\n")
    values, _ = translate({"train_data_dir": "sample", "sample_prompts": str(tmp_path / "prompts.txt")}, Path("k.toml"))
    assert values["sample_prompts"] == ["lvshape, a cat --s --l 7.5", "lvshape, a dog --l 4"]
    assert values["sample_steps"] == 30
    assert build_config({"model": "tiny", **values, "sample_steps": 12}).output.sample_steps == 12


def test_kohyas_loraplus_ratios_over_a_lycoris_loha_are_said_to_be_dropped(tmp_path):
    """LoRA+ scales LoRA's B matrices; LoHa and LoKr have none, so the ratios are not carried over, and said so."""
    values, notes = translate({"network_module": "lycoris.kohya", "network_dim": 4,
                               "network_args": ["algo=loha", "loraplus_lr_ratio=16"]}, tmp_path / "k.toml")
    assert "loraplus_ratio" not in values
    assert any(note.startswith("loraplus ratios: LoRA+ speeds up LoRA's up (B) matrices alone, which loha")
               for note in notes)


def test_fp8_base_unet_puts_the_u_net_in_fp8_as_fp8_base_does():
    """train_network.py takes `fp8_base_unet` as `fp8_base` (the U-Net stored in fp8): it was said to have no
    counterpart, and an SDXL recipe for 12 GB trained its U-Net at full width."""
    for switch in ("fp8_base", "fp8_base_unet"):
        values, notes = translate({"train_data_dir": "sample", switch: True}, Path("k.toml"))
        assert values["unet_weights"] == "fp8" and not any(switch in note for note in notes), (switch, notes)


def test_a_train_data_dir_of_images_in_no_n_name_folder_is_said(tmp_path, capsys):
    """A Civitai download unpacked as train_data_dir: sd-scripts finds no data there, lowvram trained its images
    once per epoch, unsaid."""
    from PIL import Image

    (tmp_path / "civ").mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64)).save(tmp_path / "civ" / f"{i}.png")
    (tmp_path / "k.toml").write_text(tomli_w.dumps({"train_data_dir": str(tmp_path / "civ"), "network_dim": 4,
                                                    "pretrained_model_name_or_path": "tiny", "max_train_steps": 1}))
    assert main(["plan", "--config", str(tmp_path / "k.toml"), "--vram", "6GB"]) == 0
    assert (f"train_data_dir {tmp_path / 'civ'} holds 3 images itself, in no N_name folder: sd-scripts finds no data "
            "there") in " ".join(capsys.readouterr().err.split())
    (tmp_path / "civ" / "10_civ").mkdir()  # kohya's layout (the loose ones beside it: the scan's own note)
    Image.new("RGB", (64, 64)).save(tmp_path / "civ" / "10_civ" / "a.png")
    assert main(["plan", "--config", str(tmp_path / "k.toml"), "--vram", "6GB"]) == 0
    assert "in no N_name folder" not in capsys.readouterr().err


def test_a_kohya_config_without_caption_extension_says_sd_scripts_reads_no_txt_captions(tmp_path):
    """sd-scripts' default is .caption: the same config there captions each image by its folder's name, which
    lowvram's .txt reading hid."""
    from PIL import Image

    (tmp_path / "img" / "10_ohwx").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "img" / "10_ohwx" / "a.png")
    (tmp_path / "img" / "10_ohwx" / "a.txt").write_text("ohwx, 1girl")
    settings = {"train_data_dir": str(tmp_path / "img"), "network_dim": 4}
    _, notes = translate(settings, tmp_path / "k.toml")
    assert any(note.startswith("caption_extension not set: sd-scripts then reads .caption files only") for note in notes)
    for given in (".txt", ".caption"):
        _, notes = translate(settings | {"caption_extension": given}, tmp_path / "k.toml")
        assert not any("caption_extension" in note for note in notes), given


def test_debug_dataset_is_refused_with_what_shows_the_dataset(tmp_path, capsys):
    """kohya's debug_dataset shows the dataset and trains nothing: a config with it started a 1600-step run here
    (and the flag was answered "did you mean --reg-data?")."""
    with pytest.raises(LowvramError, match=r"debug_dataset: kohya shows the dataset then and trains nothing \(lowvram "
                                           r"check-data --config FILE --captions shows its captions and buckets\)"):
        translate({"train_data_dir": "sample", "debug_dataset": True}, tmp_path / "k.toml")
    assert main(["train", "--model", "tiny", "--data", "sample", "--debug_dataset"]) == 2
    assert "lowvram check-data DIR --captions shows its captions and buckets" in capsys.readouterr().err


def test_the_caption_extension_note_is_left_out_where_the_command_line_gives_the_images(tmp_path, capsys):
    """Of train_data_dir's .txt files: with --data the command line's images train, and the note was false."""
    from PIL import Image

    (tmp_path / "img" / "10_ohwx").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "img" / "10_ohwx" / "a.png")
    (tmp_path / "img" / "10_ohwx" / "a.txt").write_text("ohwx, 1girl")
    (tmp_path / "k.toml").write_text(tomli_w.dumps({"train_data_dir": str(tmp_path / "img"), "network_dim": 4,
                                                    "pretrained_model_name_or_path": "tiny"}))
    argv = ["plan", "--config", str(tmp_path / "k.toml"), "--vram", "6GB"]
    assert main(argv) == 0
    assert "caption_extension not set" in capsys.readouterr().err
    assert main([*argv, "--data", "sample"]) == 0
    assert "caption_extension not set" not in capsys.readouterr().err


def test_save_state_checkpoints_at_each_save_by_steps_and_by_epochs(tmp_path):
    """kohya's save_state writes its state beside each LoRA it saves: it was passed over, unsaid (a README row
    promised --checkpoint-every); by epochs it was a note, and a notebook's run killed in its first half hour had
    nothing to resume."""
    values, notes = translate({"train_data_dir": "sample", "save_state": True, "save_every_n_steps": 50},
                              tmp_path / "k.toml")
    assert values["checkpoint_every"] == "50" and "keep_checkpoints" not in values
    assert ("save_state: kohya keeps every state it saves; lowvram keeps the newest 2 checkpoints (--keep-checkpoints "
            "N keeps more)") in notes
    values, notes = translate({"train_data_dir": "sample", "save_state": True, "save_every_n_steps": 50,
                               "save_last_n_steps_state": 150}, tmp_path / "k.toml")  # (as save_last_n_steps)
    assert (values["checkpoint_every"], values["keep_checkpoints"]) == ("50", 3)
    assert not any("save_state" in note or "save_last_n_steps_state" in note for note in notes)
    values, notes = translate({"train_data_dir": "sample", "save_state": True, "save_every_n_epochs": 2},
                              tmp_path / "k.toml")
    assert values["checkpoint_every"] == "2e"
    # kohya keeps the last N epochs' states (a count), else as many as the LoRAs it keeps
    values, notes = translate({"train_data_dir": "sample", "save_state": True, "save_every_n_epochs": 2,
                               "save_last_n_epochs_state": 3}, tmp_path / "k.toml")
    assert (values["checkpoint_every"], values["keep_checkpoints"]) == ("2e", 3)
    values, notes = translate({"train_data_dir": "sample", "save_state": True, "save_every_n_epochs": 1,
                               "save_last_n_epochs": 4}, tmp_path / "k.toml")
    assert (values["keep_saves"], values["keep_checkpoints"]) == (4, 4)
    for every in ("save_every_n_epochs", "save_every_n_steps"):  # (no interval: its own check names it, no traceback)
        values, _ = translate({"train_data_dir": "sample", "save_state": True, every: -1}, tmp_path / "k.toml")
        assert "checkpoint_every" not in values
    values, notes = translate({"train_data_dir": "sample", "save_every_n_steps": 50}, tmp_path / "k.toml")
    assert "checkpoint_every" not in values
