"""Configs of trainers lowvram does not read (ai-toolkit's YAML, SimpleTuner's config.json, config.env and data
backends): each is named for what it is in one line, with the lowvram command its settings make, which parses."""

import json
import shlex

import pytest
import yaml

from lowvram.cli import main
from lowvram.cli_parser import build_parser

AI_TOOLKIT = {"job": "extension", "config": {"name": "my_lora", "process": [{
    "type": "sd_trainer", "training_folder": "output", "trigger_word": "ohwx",
    "network": {"type": "lora", "linear": 16, "linear_alpha": 8},
    "save": {"save_every": 250}, "sample": {"sample_every": 250, "prompts": ["[trigger] holding a sign"]},
    "datasets": [{"folder_path": "/data/my images", "caption_ext": "txt", "resolution": [512, 768, 1024]}],
    "train": {"steps": 2000, "lr": 1e-4, "optimizer": "adamw8bit", "gradient_checkpointing": True,
              "noise_scheduler": "ddpm"},
    "model": {"name_or_path": "stabilityai/stable-diffusion-xl-base-1.0", "is_xl": True}}]}}
SIMPLETUNER = {"--model_type": "lora", "--lora_rank": 16, "--learning_rate": 1e-4, "--max_train_steps": 0,
               "--resolution": 1024, "--resolution_type": "pixel", "--data_backend_config": "multidatabackend.json",
               "--pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0", "--use_ema": True,
               "--optimizer": "adamw_bf16", "--validation_guidance": 7.5, "--report_to": "wandb",
               "--center_crop": True, "--lora_type": "standard", "--validation_epochs": 2, "--num_train_epochs": 10,
               "--noise_offset": "abc"}
BACKENDS = [{"id": "pseudo", "type": "local", "instance_data_dir": "/data/pseudo", "caption_strategy": "filename"},
            {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "cache_dir": "cache/text"}]


def refusal(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def suggested_flags(line: str) -> dict:
    """The suggested command's options as `lowvram train` parses them (an unknown one fails)."""
    words = shlex.split(line.split("its settings as lowvram's: ", 1)[1].split(" (not carried over")[0])
    assert words[:2] == ["lowvram", "train"]
    args, unknown = build_parser().parse_known_args(["train", *words[2:]])
    assert not unknown, unknown
    return vars(args)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_an_ai_toolkit_config_is_answered_with_its_lowvram_command(tmp_path, capsys, suffix):
    path = tmp_path / f"train_lora{suffix}"
    dump = json.dumps if suffix == ".json" else yaml.safe_dump  # (ai-toolkit reads either)
    path.write_text(dump(AI_TOOLKIT))
    line = refusal(capsys, ["train", "--config", str(path)])
    assert f"--config: {path} is an ai-toolkit config, which lowvram does not read" in line
    args = suggested_flags(line)
    assert (args["rank"], args["alpha"], args["max_steps"], float(args["lr"]), args["optimizer"]) == (
        "16", "8", "2000", 1e-4, "adamw8bit")
    assert (args["data"] or args["data_flag"], args["resolution"], args["extra_resolutions"]) == (
        "/data/my images", "1024", "512,768")
    assert (args["gradient_checkpointing"], args["trigger_word"], args["output"]) == (True, "ohwx", "output/my_lora")
    assert list(args["sample_prompts"]) == ["[trigger] holding a sign"]  # (its placeholder: lowvram's too)
    # ai-toolkit's defaults where they are not lowvram's: every linear layer of the U-Net adapted (attn-mlp the
    # nearest), images never upscaled, a baseline sample before the first step
    assert (args["lora_layers"], args["bucket_no_upscale"], args["sample_at_first"]) == ("attn-mlp", True, True)
    locon = AI_TOOLKIT | {"config": {"name": "x", "process": [AI_TOOLKIT["config"]["process"][0] | {
        "network": {"type": "locon", "linear": 16}}]}}
    path.write_text(dump(locon))  # (no LoCon network here: its layers; not "--network locon")
    line = refusal(capsys, ["train", "--config", str(path)])
    args = suggested_flags(line)
    assert "--network" not in line and "locon" not in line and args["lora_layers"] == "full", line
    assert args["alpha"] == "1"  # (ai-toolkit's alpha where none is given: 1, not lowvram's the rank)
    # a flag given beside --config in place of the file's (the printed line trained SD XL base for 2000 steps); its
    # timestep range, its mse (lowvram's loss) not named, its repeats said as a folder's
    process = AI_TOOLKIT["config"]["process"][0]
    path.write_text(dump(AI_TOOLKIT | {"config": {"name": "x", "process": [process | {
        "train": process["train"] | {"max_denoising_steps": 900, "loss_type": "mse"},
        "network": {"type": "lora", "linear": 16, "linear_alpha": 8, "conv": 8, "conv_alpha": 4},
        "datasets": [process["datasets"][0] | {"num_repeats": 3}]}]}}))
    line = refusal(capsys, ["train", "--config", str(path), "--model", "tiny-sdxl", "--max-steps", "2", "--no-flip",
                            "--resolution", "512", "--lora-layers", "attn"])
    args = suggested_flags(line)
    assert (args["model"], args["max_steps"], args["max_timestep"], args["flip"]) == ("tiny-sdxl", "2", "900", False)
    assert (args["resolution"], args.get("extra_resolutions")) == ("512", None), line  # (its list answered by it)
    assert "--conv-rank" not in line and args["lora_layers"] == "attn"  # (its conv's, refused with attn)
    assert "stabilityai" not in line and "2000" not in line and "loss_type" not in line, line
    assert "num_repeats 3 (a folder named 3_name trains its images 3 times, as kohya's)" in line
    path.write_text("a: [1, 2" if suffix != ".json" else "{}")  # another's: the formats lowvram reads
    assert "is no config lowvram reads: lowvram's and kohya's are TOML" in refusal(capsys, ["train", "--config",
                                                                                             str(path)])


def test_ai_toolkits_names_typed_as_flags_name_lowvrams(capsys):
    """--caption_ext was "did you mean --caption-prefix?", --dtype "--network?", --num_repeats nothing."""
    for flag, whose, says in (("--caption_ext", "ai-toolkit's", "lowvram's is --caption-extension"),
                              ("--dtype", "ai-toolkit's", "lowvram's is --mixed-precision"),
                              ("--num_repeats", "a kohya dataset file's and ai-toolkit's",
                               "lowvram has none (a folder named N_name trains its images N times")):
        assert main(["train", "--model", "tiny", flag, "1"]) == 2
        assert f"unknown option {flag} ({flag} is {whose} name; {says}" in capsys.readouterr().err


def test_an_ai_toolkit_ui_config_makes_a_command_that_trains_as_it_did(tmp_path, capsys, monkeypatch):
    """Its newer UI's config: samples as entries, the section's size, negative prompt, guidance and walking seed,
    a conv rank, EMA, bf16 and ai-toolkit's own names of lowvram's settings. The command it made was refused
    (--conv-rank without its layers, no prompt for --sample-every), with settings dropped unsaid past the 4th
    prompt and the 8th setting left out."""
    from lowvram.cli import train_values
    from lowvram.configure import build_config

    process = {"type": "sd_trainer", "training_folder": "output", "trigger_word": "ohwx",
               "network": {"type": "lora", "linear": 8, "conv": 4},
               "save": {"dtype": "bf16", "save_every": 10, "max_step_saves_to_keep": 2, "push_to_hub": True},
               "sample": {"sample_every": 10, "width": 128, "height": 96, "neg": "blurry", "seed": 42,
                          "walk_seed": True, "guidance_scale": 4, "sample_steps": 8,
                          "samples": [{"prompt": f"[trigger] pose {i}"} for i in range(6)]},
               "datasets": [{"folder_path": "sample", "caption_ext": "txt", "resolution": [64],
                             "flip_x": True, "default_caption": "a picture", "cache_latents_to_disk": True}],
               "train": {"steps": 2, "unet_lr": 2e-4, "lr": 1e-4, "text_encoder_lr": 5e-5, "train_text_encoder": True,
                         "lr_scheduler": "cosine", "dtype": "bf16", "gradient_accumulation": 2, "train_unet": True,
                         "ema_config": {"use_ema": True, "ema_decay": 0.99}, "skip_first_sample": True,
                         "optimizer": "adamw8bit", "timestep_type": "sigmoid"},
               "model": {"name_or_path": "tiny", "is_xl": False, "quantize": True}}
    path = tmp_path / "ui.yaml"
    path.write_text(yaml.safe_dump({"job": "extension", "config": {"name": "ui", "process": [process]}}))
    line = refusal(capsys, ["train", "--config", str(path)])
    args = suggested_flags(line)
    assert [str(p) for p in args["sample_prompts"]] == [
        f"[trigger] pose {i} --n blurry --w 128 --h 96 --l 4 --d {42 + i}" for i in range(6)]
    assert (args["lora_layers"], args["rank"], args["conv_rank"], args["alpha"]) == ("full", "8", "4", "1")
    assert args["conv_alpha"] == "4"  # (ai-toolkit's conv_alpha: conv's own, where lowvram's scales as --alpha)
    assert (float(args["lr"]), float(args["text_encoder_lr"]), args["scheduler"], args["ema"], args["ema_decay"]) == (
        2e-4, 5e-5, "cosine", True, "0.99")
    assert (args["flip"], args["caption_template"], args["save_precision"], args.get("sample_at_first")) == (
        True, "a picture", "bf16", None)
    assert line.endswith("(not carried over: timestep_type, quantize, push_to_hub)"), line
    # without prompts, no sampling (its --sample-every was refused: nothing to render); ai-toolkit's rank 4 and its
    # text encoder at lr where only unet_lr and lr are given
    bare = process | {"network": {"type": "lora"}, "sample": {"sample_every": 10},
                      "train": {"steps": 2, "lr": 1e-4, "unet_lr": 2e-4, "train_text_encoder": True}}
    path.write_text(yaml.safe_dump({"job": "extension", "config": {"name": "ui", "process": [bare]}}))
    args = suggested_flags(refusal(capsys, ["train", "--config", str(path)]))
    assert args.get("sample_every") is None and args.get("sample_at_first") is None and args["rank"] == "4"
    assert (float(args["lr"]), float(args["text_encoder_lr"])) == (2e-4, 1e-4)
    path.write_text(yaml.safe_dump({"job": "extension", "config": {"name": "ui", "process": [process]}}))
    line = refusal(capsys, ["train", "--config", str(path)])
    monkeypatch.chdir(tmp_path)  # the command as printed trains (bf16 aside: this CPU's precision)
    command = shlex.split(line.split("its settings as lowvram's: ", 1)[1].split(" (not carried over")[0])[2:]
    argv = ["train", *command, "--mixed-precision", "fp32"]
    assert build_config(train_values(build_parser().parse_args(argv))).network.lora_layers == "full"


def test_simpletuners_configs_are_answered_with_their_lowvram_command(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SIMPLETUNER))
    line = refusal(capsys, ["train", "--config", str(path)])
    # what takes no value as it is (adamw_bf16: no such optimizer here; a guidance is a sample prompt's inline
    # option, --center_crop a choice, epochs for samples an e): named, not turned into another option's value
    # (its data_backend_config not there; a standard lora_type is lowvram's; SimpleTuner's noise offset is not
    # lowvram's: said why)
    assert line.endswith("(not carried over: resolution_type pixel (its shorter edge; lowvram's --resolution is the "
                         "side of the buckets' area), data_backend_config, optimizer, validation_guidance, report_to, "
                         "center_crop, validation_epochs, noise_offset abc (SimpleTuner offsets the noise of a share of "
                         "the steps, noise_offset_probability 0.25 unless set, and only with offset_noise; lowvram's "
                         "--noise-offset offsets every step's))"), line  # (not max_train_steps 0)
    args = suggested_flags(line)
    given = (args["rank"], float(args["lr"]), args.get("max_steps"), args["resolution"], args["ema"], args["network"])
    assert given == ("16", 1e-4, None, "1024", True, "lora")  # (max_train_steps 0: SimpleTuner's way by epochs)
    assert args["epochs"] == "10"
    # the data backends it names, beside it (SimpleTuner's own folder): their image folder and captions; and a flag
    # given beside --config in place of the file's, as a kohya config's
    (tmp_path / "multidatabackend.json").write_text(json.dumps([
        {"id": "me", "type": "local", "instance_data_dir": "/data/me", "repeats": 2}, BACKENDS[1]]))
    line = refusal(capsys, ["train", "--config", str(path), "--model", "tiny-sdxl", "--max-steps", "2"])
    args = suggested_flags(line)
    assert (args["data"] or args["data_flag"], args["caption_template"], args["model"], args["max_steps"]) == (
        "/data/me", "{filename}", "tiny-sdxl", "2"), line
    assert "stabilityai" not in line and "data_backend_config" not in line
    assert "repeats 2 (3 passes an epoch: a kohya 3_name folder)" in line
    # as SimpleTuner lays it out: config/<model>/config.json naming config/<model>/multidatabackend.json from its own
    # folder, which lowvram need not run in
    nested = tmp_path / "SimpleTuner" / "config" / "sdxl"
    nested.mkdir(parents=True)
    (tmp_path / "multidatabackend.json").rename(nested / "multidatabackend.json")
    (nested / "config.json").write_text(json.dumps(SIMPLETUNER | {
        "--data_backend_config": "config/sdxl/multidatabackend.json"}))
    assert suggested_flags(refusal(capsys, ["train", "--config", str(nested / "config.json")]))["data"] == "/data/me"
    # step cadences and the caption dropout have lowvram's (they were left out); a W&B project of a run that reports
    # to none would start a W&B run
    path.write_text(json.dumps(SIMPLETUNER | {
        "--checkpointing_steps": 500, "--validation_steps": 100, "--caption_dropout_probability": 0.1,
        "--report_to": "none", "--tracker_project_name": "lora-training"}))
    line = refusal(capsys, ["train", "--config", str(path)])
    args = suggested_flags(line)
    assert (args["checkpoint_every"], args["sample_every"], args["caption_dropout"]) == ("500", "100", "0.1"), args
    assert args.get("wandb_project") is None and "tracker_project_name" in line
    # a strategy without a multiplier biases nothing there (theirs is 1, lowvram's 2); a sample cap is named
    path.write_text(json.dumps(SIMPLETUNER | {"--timestep_bias_strategy": "later", "--max_train_samples": 100}))
    line = refusal(capsys, ["train", "--config", str(path)])
    args = suggested_flags(line)
    assert "timestep_bias" not in args and "max_train_samples" in line
    assert "timestep_bias_strategy (without timestep_bias_multiplier it biases nothing)" in line
    path.write_text(json.dumps(SIMPLETUNER | {"--timestep_bias_strategy": "later", "--timestep_bias_multiplier": 2}))
    args = suggested_flags(refusal(capsys, ["train", "--config", str(path)]))
    assert (args["timestep_bias"], args["timestep_bias_multiplier"]) == ("later", "2")
    path.write_text(json.dumps(SIMPLETUNER | {"--noise_offset": 0}))  # (off: nothing left out)
    assert "noise_offset" not in refusal(capsys, ["train", "--config", str(path)])
    # its config.toml (CONFIG_BACKEND=toml): refused key by key as a kohya config's ("lora_rank: ... write network_dim")
    toml = tmp_path / "config.toml"
    toml.write_text('model_type = "lora"\nmodel_family = "sdxl"\nlora_rank = 16\nlearning_rate = 1e-4\n')
    line = refusal(capsys, ["train", "--config", str(toml)])
    assert f"--config: {toml} is a SimpleTuner config" in line and suggested_flags(line)["rank"] == "16", line
    # an area in megapixels: the side of a square of that area (--resolution 1, refused as no multiple of 8)
    path.write_text(json.dumps(SIMPLETUNER | {"--resolution_type": "area", "--resolution": 1.0}))
    line = refusal(capsys, ["train", "--config", str(path)])
    assert suggested_flags(line)["resolution"] == "1024" and "resolution_type" not in line, line
    env = tmp_path / "config.env"
    env.write_text('export MODEL_NAME="stabilityai/stable-diffusion-xl-base-1.0"\nexport LEARNING_RATE=1e-4\n'
                   'export TRAINER_EXTRA_ARGS="--lora_rank=16 --use_ema"\nexport USE_GRADIENT_CHECKPOINTING=false\n')
    args = suggested_flags(refusal(capsys, ["train", "--config", str(env)]))
    assert (args["model"], float(args["lr"]), args["rank"], args["ema"]) == (
        "stabilityai/stable-diffusion-xl-base-1.0", 1e-4, "16", True)
    # as SimpleTuner's config.env.example writes them: trailing comments, quotes inside, $NAME (the rate was lost)
    env.write_text('export MODEL_TYPE="lora"\nexport LEARNING_RATE=8e-7 #@param {type:"number"}\n'
                   'export MIXED_PRECISION="bf16"   # Might not be supported on all GPUs\n'
                   'export TRACKER_PROJECT_NAME="${MODEL_TYPE}-training"\n'
                   "export TRAINER_EXTRA_ARGS=\"--lora_rank=16 --validation_prompt='a teddy bear' --use_ema\"\n")
    args = suggested_flags(refusal(capsys, ["train", "--config", str(env)]))
    assert (float(args["lr"]), args["mixed_precision"], args["rank"], args["sample_prompts"], args["ema"]) == (
        8e-7, "bf16", "16", ["a teddy bear"], True), args


def test_simpletuners_data_backends_name_their_image_folder_not_onetrainers_concepts(tmp_path, capsys):
    """It was read as a OneTrainer concepts file ("type 'LOCAL' is not a concept type", "no path")."""
    path = tmp_path / "multidatabackend.json"
    path.write_text(json.dumps(BACKENDS))
    for argv in (["train", "--config", str(path)], ["check-data", "--model", "tiny", str(path)]):
        line = refusal(capsys, argv)
        assert line.endswith(f"{path} is a SimpleTuner data backend config, which lowvram does not read; give its "
                             "image folder as --data /data/pseudo and --caption-template '{filename}' for its "
                             "file-name captions"), line
    # the class images listed first, a disabled backend, repeats (SimpleTuner's 0 is one pass), an instance prompt
    path.write_text(json.dumps([
        {"id": "reg", "type": "local", "instance_data_dir": "/data/reg", "is_regularisation_data": True},
        {"id": "old", "type": "local", "instance_data_dir": "/data/old", "disabled": True},
        {"id": "me", "type": "local", "instance_data_dir": "/data/me", "repeats": 2,
         "caption_strategy": "instanceprompt", "instance_prompt": "ohwx person"}, BACKENDS[1],
        {"id": "style", "type": "local", "instance_data_dir": "/data/my style"}]))
    line = refusal(capsys, ["train", "--config", str(path)])
    assert line.endswith("give its image folder as --data /data/me and --caption-template 'ohwx person', its instance "
                         "prompt; its repeats 2 are 3 passes an epoch (a kohya 3_name folder, or num_repeats = 3); its "
                         "regularisation images (the base model's prediction their target, as there): --reg-data "
                         "/data/reg --prior-prediction (and '/data/my style': a kohya dataset .toml as --data holds "
                         "several folders)"), line  # (the second training folder went unnamed: "2 folders")
