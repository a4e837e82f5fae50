"""The run configuration: TOML + flags merge, validation that names every problem, the saved config replays."""

import json
import os
import re

import pytest
import tomllib
from conftest import run_config

from lowvram.cli import build_parser, train_values
from lowvram.config import RunConfig
from lowvram.configure import build_config, read_toml
from lowvram.errors import LowvramError
from lowvram.models.detect import path_not_found
from lowvram.option_values import parse_save_every


def parse_train(argv):
    return train_values(build_parser().parse_args(["train", *argv]))


def test_flags_override_the_file_and_file_paths_are_relative_to_it(tmp_path, sample_data):
    config_file = tmp_path / "run.toml"
    config_file.write_text('[model]\nmodel = "tiny"\n[data]\ndata = "data"\nresolution = 128\n[network]\nrank = 8\n[output]\noutput = "out"\n')
    config = build_config(parse_train(["--config", str(config_file), "--rank", "32"]))
    assert config.network.rank == 32  # flag wins
    assert config.data.resolution == 128  # file value kept
    assert config.data.data == str(sample_data)  # resolved against the file's folder, not the cwd
    assert config.output.output == str(tmp_path / "out")


def test_a_config_files_home_folders_are_the_users_not_beside_it(tmp_path, sample_data, monkeypatch):
    """`~/x` in a config file was taken as relative to the file (<its folder>/~/x), where on the command line it
    is the home's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config_file = tmp_path / "configs" / "run.toml"
    config_file.parent.mkdir()
    config_file.write_text('[model]\nmodel = "tiny"\n[data]\ndata = "~/data"\n[output]\noutput = "~/out"\n')
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "data").symlink_to(sample_data)
    config = build_config(parse_train(["--config", str(config_file)]))
    assert (config.data.data, config.output.output) == (str(tmp_path / "home" / "data"), str(tmp_path / "home" / "out"))


def test_a_flag_replaces_the_files_answer_to_the_same_question(tmp_path, sample_data):
    """--max-steps on the command line replaces the file's epochs (and --validation-data its split): not both."""
    config_file = tmp_path / "run.toml"
    config_file.write_text('[model]\nmodel = "tiny"\n[data]\ndata = "data"\n[validation]\nvalidation_split = 0.2\n'
                           '[training]\nepochs = 3\n')
    config = build_config(parse_train(["--config", str(config_file), "--max-steps", "5", "--validation-data",
                                       str(sample_data)]))
    assert (config.training.max_steps, config.training.epochs) == (5, None)
    assert (config.validation.validation_split, config.validation.validation_data) == (0.0, str(sample_data))


def test_unknown_toml_key_is_named_with_its_section(tmp_path):
    config_file = tmp_path / "run.toml"
    config_file.write_text("[network]\nrank = 8\nrnak = 4\nlr = 1e-4\nnetwork_alpha = 4\n[optim]\nlearnign_rate = 1\n"
                           "rnak = 4\n")
    with pytest.raises(LowvramError) as err:
        read_toml(config_file)
    message = str(err.value)
    assert "unknown key 'rnak' in [network] (did you mean 'rank'?)" in message
    assert "unknown key 'rnak' in [optim] (did you mean 'rank' in [network]?)" in message
    # a typo of kohya's name, as --learnign_rate on the command line (it had no hint)
    assert "unknown key 'learnign_rate' in [optim] (did you mean 'lr'?)" in message
    assert "'lr' in [network] (it belongs in [optim])" in message
    # kohya's name for it, as the command line answers --network_alpha ("did you mean 'network'?" it said)
    assert "'network_alpha' in [network] (network_alpha is kohya's name; lowvram's is alpha in [network])" in message


def test_unknown_section_is_an_error(tmp_path):
    config_file = tmp_path / "run.toml"
    config_file.write_text("[netwrk]\nrank = 8\n")
    with pytest.raises(LowvramError, match=r"unknown section \[netwrk\] \(did you mean 'network'\?\)"):
        read_toml(config_file)
    config_file.write_text("linear_alpha = 8\nrnak = 4\n[model]\nmodel = 'tiny'\n")  # (keys above every table)
    with pytest.raises(LowvramError) as err:
        read_toml(config_file)
    assert "unknown key 'linear_alpha' outside any [section] (linear_alpha is ai-toolkit's name" in str(err.value)
    # (a "section" before; and its table, where it goes)
    assert "unknown key 'rnak' outside any [section] (did you mean 'rank' in [network]?)" in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(LowvramError) as err:
        build_config({"model": "tiny", "data": "/no/such/folder", "lr": -1, "scheduler": "cosin", "max_steps": 3, "epochs": 2,
                      "rank": "x"})
    lines = str(err.value).splitlines()
    assert any(line.startswith("--scheduler: 'cosin' is not one of constant") for line in lines)
    assert any(line.startswith("--rank:") for line in lines)
    assert "--data: folder not found: /no/such/folder" in lines
    assert "--lr: must be > 0, got -1.0" in lines
    assert "--max-steps and --epochs: can't use both; choose one" in lines


def test_a_files_wrong_type_and_wrong_range_are_said_together_but_not_what_a_flag_settles(tmp_path):
    """One pass shows every value of a file to mend (the range waited for the type to be mended); a check about a
    flag given on the command line waits for it."""
    config_file = tmp_path / "run.toml"
    config_file.write_text('[network]\nrank = "abc"\n[training]\nmax_steps = -3\n[optim]\ntext_encoder_lr = 1e-5\n')
    with pytest.raises(LowvramError) as err:
        read_toml(config_file)
    lines = str(err.value).splitlines()
    assert f"{config_file}: --rank: 'abc' is invalid: expected a whole number" in lines
    assert f"{config_file}: --max-steps: must be > 0, got -3" in lines
    assert any("--text-encoder-lr: " in line and "--train-text-encoder" in line for line in lines)
    with pytest.raises(LowvramError) as err:
        read_toml(config_file, given=("train_text_encoder",))
    assert len(str(err.value).splitlines()) == 2 and "--text-encoder-lr" not in str(err.value)
    # a flag given whose name begins another's (--rank, --rank-dropout) hides no line of the other's
    config_file.write_text('[network]\nrank_dropout = "abc"\n[training]\nmax_steps = -3\n')
    with pytest.raises(LowvramError) as err:
        read_toml(config_file, given=("rank", "max_steps"))
    assert str(err.value) == f"{config_file}: --rank-dropout: 'abc' is invalid: expected a number"


def test_text_encoder_lr_without_training_the_text_encoder_is_refused():
    with pytest.raises(LowvramError, match="--text-encoder-lr: .*add --train-text-encoder"):
        build_config({"model": "tiny", "data": "sample", "text_encoder_lr": 1e-5})


def test_conv_rank_and_alpha_need_the_convolutions_adapted_and_default_to_the_same_scale():
    for flag in ("conv_rank", "conv_alpha"):
        with pytest.raises(LowvramError, match=f"--{flag.replace('_', '-')}: only --lora-layers full adapts"):
            build_config({"model": "tiny", "data": "sample", flag: 4})
    with pytest.raises(LowvramError, match="--conv-rank: must be > 0, got 0"):
        build_config({"model": "tiny", "data": "sample", "lora_layers": "full", "conv_rank": 0})
    def conv(**values):
        return build_config({"model": "tiny", "data": "sample", "lora_layers": "full"} | values).network
    assert conv(rank=16).conv_rank_alpha == (16, 16.0) and conv(rank=16).distinct_conv is None
    assert conv(rank=16, alpha=8).conv_rank_alpha == (16, 8.0)
    assert conv(rank=16, alpha=8, conv_rank=4).conv_rank_alpha == (4, 2.0)  # alpha/rank stays 1/2
    assert conv(rank=16, conv_rank=4, conv_alpha=1).distinct_conv == (4, 1.0)


@pytest.mark.parametrize("text, expected", [("500", (500, "steps")), ("2e", (2, "epochs")),
                                            ("3 epochs", (3, "epochs")), ("100steps", (100, "steps"))])
def test_save_every_accepts_steps_and_epochs(text, expected):
    assert parse_save_every(text) == expected


@pytest.mark.parametrize("text", ["0", "-2", "e", "2x", "1.5e"])
def test_save_every_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_save_every(text)


def test_an_interval_written_as_a_time_names_the_option_that_counts_minutes():
    """OneTrainer's habit, --checkpoint-every 10m: "not a positive number of steps", without --checkpoint-minutes."""
    with pytest.raises(LowvramError, match=r"^--checkpoint-every: '10m' is a time; this counts steps \('500'\) or "
                                           r"epochs \('2e'\); --checkpoint-minutes M saves one every M minutes$"):
        build_config({"model": "tiny", "data": "sample", "checkpoint_every": "10m"})
    with pytest.raises(LowvramError, match=r"^--sample-every: '1.5 hours' is a time; this counts steps"):
        build_config({"model": "tiny", "data": "sample", "sample_every": "1.5 hours", "sample_prompts": ["x"]})


def test_resolved_config_replays_to_the_same_config(tmp_path):
    config = build_config({"model": "tiny", "data": "sample", "rank": 8, "alpha": 4, "sample_prompts": ["a", "b"], "lr": 3e-4,
                           "min_snr_gamma": 5, "save_every": "2e"})
    import tomli_w

    path = tmp_path / "resolved.toml"
    path.write_text(tomli_w.dumps(config.to_toml_dict()))
    assert tomllib.loads(path.read_text())["network"]["alpha"] == 4
    assert build_config(read_toml(path)) == config


def test_defaults_are_a_valid_config_given_data():
    config = build_config({"model": "tiny", "data": "sample"})
    assert isinstance(config, RunConfig)
    assert config.alpha == config.network.rank  # alpha defaults to rank: scale 1
    assert config.text_encoder_lr == config.lr == 1e-4


def test_vae_option_is_checked_and_resolved(tmp_path):
    with pytest.raises(LowvramError, match="--vae: not found"):
        build_config({"model": "tiny", "data": "sample", "vae": str(tmp_path / "nope")})
    with pytest.raises(LowvramError, match="--vae: .*vae.pt is a pickle file"):
        build_config({"model": "tiny", "data": "sample", "vae": str(tmp_path / "vae.pt")})
    (tmp_path / "vae").mkdir()
    config_file = tmp_path / "run.toml"
    config_file.write_text('[model]\nmodel = "tiny"\nvae = "vae"\n[data]\ndata = "sample"\n')
    assert build_config(read_toml(config_file)).model.vae == str(tmp_path / "vae")


def test_lora_layers_and_family_choices_are_the_families_own():
    """config lists them without importing the models package (which builds on it); they must agree."""
    from lowvram.config import DEFAULT_LORA_LAYERS, FAMILIES, LORA_LAYERS
    from lowvram.models.families import FAMILIES as BY_NAME
    from lowvram.models.families import LORA_LAYERS as SETS

    assert LORA_LAYERS == tuple(SETS) and DEFAULT_LORA_LAYERS in SETS
    assert FAMILIES == tuple(BY_NAME)


@pytest.mark.parametrize(("values", "says"), [
    ({"output": "out/a:b"}, ("--output: the LoRA's name, the folder's 'a:b', is not a valid file name (: cannot be "
                             "in one on Windows); pass --name NAME, or name the folder another way")),
    ({"output": "out", "name": "a*b"}, ("--name: 'a*b' is not a valid file name (* cannot be in one on Windows); "
                                        "pass another --name")),
    ({"output": "out", "name": "my lora/v2"}, ("--name: 'my lora/v2' is not a valid file name (/ cannot be in one); "
                                               "pass another --name")),
    ({"output": "out", "name": "a/b*c"}, ("--name: 'a/b*c' is not a valid file name (/ cannot be in one; * cannot be "
                                          "in one on Windows); pass another --name")),
    ({"output": "out/" + "é" * 110}, "is 220 bytes long; the run's files add up to 39 to it"),  # 110 characters
    ({"output": "out", "name": "nul"}, ("--name: 'nul' is a name Windows keeps for a device (CON, PRN, AUX, NUL, "
                                        "COM1-9, LPT1-9): a LoRA of it cannot be saved or downloaded there; pass "
                                        "another --name")),
    ({"output": "out/COM3.v2"}, "--output: the LoRA's name, the folder's 'COM3.v2', is a name Windows keeps"),
])
def test_a_lora_name_no_file_system_takes_is_refused_naming_where_it_came_from(values, says):
    with pytest.raises(LowvramError) as error:
        run_config(**values)
    assert says in str(error.value)


def test_the_longest_name_a_run_can_write_is_taken(tmp_path):
    from lowvram.files import atomic_write
    from lowvram.output_checks import MAX_NAME_BYTES

    name = "n" * MAX_NAME_BYTES
    assert run_config(output=str(tmp_path), name=name).output_name == name
    atomic_write(tmp_path / f"{name}-step9999999.safetensors", lambda tmp: tmp.write_bytes(b"{}"))


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
def test_a_windows_path_not_found_here_says_to_write_it_with_slashes(tmp_path):
    """A path from a Windows machine (a config made there, a command copied from a guide) is named as one wherever
    a path is read: a relative one is written with /, one on a drive is the user's to find here."""
    with pytest.raises(LowvramError) as error:
        run_config(data="winds\\10_dog", validation_data="C:\\val", model="D:\\models\\v1-5.safetensors",
                   network_weights="C:\\loras\\start.safetensors")
    lines = str(error.value).splitlines()
    relative = "; written as a Windows path: write it with / between folders here"
    drive = "; that is a Windows path: give where it is on this machine, with / between folders"
    for start, end in (("--data: folder not found:", relative), ("--validation-data: folder not found:", drive),
                       ("--model: file not found:", drive), ("--network-weights: file not found:", drive)):
        assert any(line.startswith(start) and line.endswith(end) for line in lines), (start, lines)
    kohya = tmp_path / "dataset.toml"
    kohya.write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'C:\\Users\\me\\10_cat'\n")
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps([{"name": "cat", "path": "data\\10_cat"}]))
    for dataset, end in ((kohya, drive), (concepts, relative)):
        with pytest.raises(LowvramError) as error:
            run_config(data=str(dataset))
        assert any(line.endswith(end) and "10_cat" in line for line in str(error.value).splitlines()), str(error.value)
    missing = "C:\\models\\v1-5"
    assert str(path_not_found("--model", missing)) == f"--model: file or folder not found: {missing}{drive}"
    (tmp_path / "My LoRAs" / "char 1").mkdir(parents=True)  # there, written with \\: the path to give, named
    with pytest.raises(LowvramError, match=re.escape(f"written as a Windows path: here it is {tmp_path}/My LoRAs/char 1")):
        run_config(data=str(tmp_path / "My LoRAs\\char 1"))


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
def test_a_shells_escaped_space_kept_inside_quotes_is_named_so_not_as_a_windows_path(tmp_path):
    """macOS Terminal writes a folder dragged in as My\\ Dog; inside quotes typed before, the \\ stays: it was
    "written as a Windows path: write it with / between folders", which it was."""
    (tmp_path / "My Dog").mkdir()
    with pytest.raises(LowvramError) as error:
        run_config(data=f"{tmp_path}/My\\ Dog")
    assert str(error.value).endswith("; the \\ before a space is the shell's escape, kept inside quotes (a folder "
                                     f"dragged into them): here it is {tmp_path}/My Dog")
    with pytest.raises(LowvramError) as error:
        run_config(data=f"{tmp_path}/Other\\ Dog")
    assert str(error.value).endswith("kept inside quotes: in quotes write the space alone")


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
def test_on_wsl_a_windows_path_not_found_names_the_path_it_is_here(tmp_path, monkeypatch):
    """A config or command made on Windows, run under WSL: C:\\ is /mnt/c/ there, \\\\wsl.localhost\\Ubuntu\\x is /x, and
    Explorer's Copy as path quotes the path."""
    import lowvram.files

    monkeypatch.setattr(lowvram.files, "WSL_MOUNTS", tmp_path / "mnt")
    (tmp_path / "mnt" / "c" / "Users" / "me" / "My LoRA" / "img").mkdir(parents=True)
    for given, says in (("C:\\Users\\me\\My LoRA\\img",
                         f"that is a Windows path: here it is {tmp_path / 'mnt/c/Users/me/My LoRA/img'}"),
                        ("C:/Users/me/gone", f"here it would be {tmp_path / 'mnt/c/Users/me/gone'}, which is not there"),
                        ("\\\\wsl.localhost\\Ubuntu\\home\\me\\img",
                         "that is how Windows names this WSL machine's /home/me/img: give /home/me/img"),
                        ('"C:\\Users\\me\\My LoRA\\img"', "the quotes are part of that name"),
                        ("'My LoRA/img'", "the quotes are part of that name (cmd.exe keeps single quotes)")):
        with pytest.raises(LowvramError) as error:
            run_config(data=given)
        assert str(error.value).endswith(says) or says in str(error.value), (given, str(error.value))


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
def test_a_home_no_user_has_here_is_a_path_not_found_not_a_traceback(capsys):
    """`~\\lora\\img` (Windows' home, pasted) and `~nobody/x` raised pathlib's RuntimeError ("Could not determine home
    directory") from expanduser, wherever a path is read."""
    from lowvram.cli import main

    for command, hint in ((["info", "C:/Users/me/x.safetensors"], "that is a Windows path"),  # / after the drive
                          (["generate", "--lora", "C:\\loras\\a.safetensors", "--prompt", "a cat"], "a Windows path"),
                          (["train", "--config", "~\\cfg.toml"], "written as a Windows path"),
                          (["train", "--model", "tiny", "--data", "D:\\sets\\dataset.toml"], "a Windows path")):
        assert main(command) == 2, command
        assert hint in capsys.readouterr().err, command
    for command in (["check-data", "~\\lora\\img"], ["check-data", "~lowvram-no-such-user/img"],
                    ["plan", "--model", "~\\models\\v1-5.safetensors"],
                    ["train", "--model", "tiny", "--data", "~\\lora\\img"]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "not found" in err and "~" in err and "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
def test_a_windows_path_to_write_to_is_refused_not_made_one_folder_of_that_name(tmp_path, monkeypatch, capsys):
    """`--output C:\\Users\\me\\out` (a kohya_ss config's output_dir) made a folder named so in the current folder,
    unsaid; `generate --output out\\a.png` a file named so."""
    from lowvram.cli import main

    monkeypatch.chdir(tmp_path)
    drive = "that is a Windows path: give where it is on this machine, with / between folders"
    relative = "written as a Windows path: write it with / between folders here"
    for command, says in ((["train", "--model", "tiny", "--data", "sample", "--output", "C:\\Users\\me\\out"],
                           (f"--output: C:\\Users\\me\\out would be written as one file or folder of that whole name "
                            f"here; {drive}")),  # (as given: it was joined to the current folder)
                          (["train", "--model", "tiny", "--data", "sample", "--output", "C:/Users/me/out"],
                           ("--output: C:/Users/me/out would be written as a file or folder inside ./C:; that is a "
                            "Windows path: give where it is on this machine")),
                          (["train", "--model", "tiny", "--data", "sample", "--cache-dir", "cache\\lv"],
                           "--cache-dir: "),
                          (["check-data", "sample", "--report", "reports\\r.json"], "--report: reports\\r.json "),
                          (["generate", "--model", "tiny", "--prompt", "a cat", "--output", "out\\a.png"],
                           (f"--output: out\\a.png would be written as one file or folder of that whole name here; "
                           f"{relative}"))):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert says in err and "not a valid file name" not in err, command  # (its folder said: not its name too)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
def test_check_data_reads_a_kohya_config_whose_output_is_another_machines(tmp_path, monkeypatch, capsys):
    """check-data writes nothing: a kohya config's output_dir from Windows was refused, and no flag of check-data
    could replace it (its options are the dataset's and the model's)."""
    from lowvram.cli import main
    from lowvram.data.sample import write_sample_dataset

    monkeypatch.chdir(tmp_path)
    write_sample_dataset(tmp_path / "img")
    (tmp_path / "kohya.toml").write_text("output_dir = 'C:\\Users\\me\\train\\model'\n"
                                         "logging_dir = 'C:\\Users\\me\\train\\log'\n"
                                         "train_data_dir = 'img'\nresolution = '64,64'\n", encoding="utf-8")
    assert main(["check-data", "--config", "kohya.toml", "--model", "tiny"]) == 0, capsys.readouterr().err
    assert "images usable" in capsys.readouterr().out
    # train still refuses it, naming the fix
    assert main(["train", "--config", "kohya.toml", "--model", "tiny", "--max-steps", "1"]) == 2
    assert "--output: C:\\Users\\me\\train\\model would be written" in capsys.readouterr().err


def test_a_windows_path_in_double_quotes_in_a_config_file_says_how_to_write_it(tmp_path):
    """"D:\\training\\new" reads as D:<tab>raining<line break>ew: its not-found message came in two lines;
    "C:\\Users" stops TOML (\\U) and JSON, which said only 'Invalid hex value' or 'Invalid \\escape'."""
    escapes = tmp_path / "escapes.toml"
    escapes.write_text('[model]\nmodel = "tiny"\n[data]\ndata = "D:\\training\\new"\n')
    with pytest.raises(LowvramError) as error:
        build_config(parse_train(["--config", str(escapes)]))
    assert str(error.value) == (f"--data: '{tmp_path}/D:\\training\\new' holds a tab (\\t) and a line break (\\n), "
                                "as a Windows path written in double quotes in a config file is read; write it in "
                                "single quotes ('D:\\training'), or with / between folders")
    hint = ("; a Windows path in double quotes needs each \\ doubled (\"C:\\\\Users\\\\me\"), or / between folders "
            "(\"C:/Users/me\"), or (in TOML) single quotes ('C:\\Users\\me')")  # (the file's own path)
    # (a path written right before it, doubled: that one was quoted, its \\ doubled again)
    (tmp_path / "users.toml").write_text('[model]\nmodel = "D:\\\\m.safetensors"\n[data]\ndata = "C:\\Users\\me"\n')
    (tmp_path / "gui.json").write_text('{"output_dir": "out\\\\x", "train_data_dir": "C:\\Users\\me"}')
    (tmp_path / "dataset.toml").write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "C:\\Users\\me"\n')
    (tmp_path / "ansi.toml").write_bytes('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "café"\n'.encode("cp1252"))
    for args, says in ((["--config", "users.toml"], "is not valid TOML: Invalid hex value"),
                       (["--config", "gui.json"], "is not readable JSON: Invalid \\escape"),
                       (["--model", "tiny", "--data", "dataset.toml"], "is not valid TOML: Invalid hex value")):
        with pytest.raises(LowvramError) as error:
            build_config(parse_train([*args[:-1], str(tmp_path / args[-1])]))
        assert says in str(error.value) and str(error.value).endswith(hint), str(error.value)
    # a file whose error is another's, a path in it written right: no hint (it doubled that path's \\ again)
    (tmp_path / "rank.toml").write_text('[model]\nmodel = "D:\\\\m.safetensors"\n[network]\nrank = 8 8\n')
    with pytest.raises(LowvramError) as error:
        build_config(parse_train(["--config", str(tmp_path / "rank.toml")]))
    assert "Windows path" not in str(error.value)
    with pytest.raises(LowvramError) as error:
        build_config(parse_train(["--model", "tiny", "--data", str(tmp_path / "ansi.toml")]))
    assert str(error.value) == f"--data: {tmp_path / 'ansi.toml'} is not UTF-8 text (byte 50); save it as UTF-8"


def test_a_trailing_comma_in_a_json_config_is_named_where_it_stands(tmp_path, capsys):
    """A OneTrainer export edited by hand: json named the line after the comma ('Expecting property name')."""
    from lowvram.cli import main

    (tmp_path / "concepts.json").write_text('[\n  {\n    "path": "data",\n    "name": "a",\n  }\n]\n')
    (tmp_path / "config.json").write_text('{\n  "learning_rate": 0.0001,\n  "epochs": [1, 2,]\n}\n')
    (tmp_path / "sampled.json").write_text('{"model_type": "STABLE_DIFFUSION_15", "training_method": "LORA", '
                                           '"sample_definition_file_name": "s.json"}')
    (tmp_path / "s.json").write_text('[{"prompt": "a cat"},\n]')
    for args, comma in ((["check-data", "concepts.json"], "line 4 column 16 stands before a closing }"),
                        (["train", "--config", "config.json"], "line 3 column 18 stands before a closing ]"),
                        (["train", "--config", "sampled.json"], "line 1 column 21 stands before a closing ]")):
        assert main([args[0], *args[1:-1], str(tmp_path / args[-1])]) == 2
        assert f"; the comma at {comma}, where JSON allows none: delete it" in capsys.readouterr().err


def test_an_option_whose_switch_is_off_is_said_to_change_nothing(tmp_path, capsys):
    """--ema-decay without --ema (and the like) trains as if it were not given: said once before training, not
    refused, as kohya's and OneTrainer's configs carry such values and both tools pass over them."""
    from lowvram.cli import main
    from lowvram.config_checks import idle_option_notes

    config = run_config(ema_decay=0.99, timestep_bias_multiplier=3, timestep_bias_portion=0.5, validation_timesteps=2,
                        prior_loss_weight=0.5, class_prompt="a dog", sample_steps=30, reg_balance="repeats")
    assert idle_option_notes(config) == [
        "--ema-decay 0.99 changes nothing without --ema",
        "--timestep-bias-multiplier 3 changes nothing without --timestep-bias",
        "--timestep-bias-portion 0.5 changes nothing without --timestep-bias",
        "--validation-timesteps 2 changes nothing without a validation set (--validation-split or --validation-data)",
        "--prior-loss-weight 0.5 changes nothing without regularization images (--reg-data)",
        '--class-prompt "a dog" changes nothing without regularization images (--reg-data)',
        '--reg-balance "repeats" changes nothing without regularization images (--reg-data)',
        "--sample-steps 30 changes nothing without sample prompts (--sample-prompt or --sample-prompt-file)"]
    (tmp_path / "reg").mkdir()
    switched_on = run_config(ema=True, ema_decay=0.99, timestep_bias="later", timestep_bias_multiplier=3,
                             timestep_bias_portion=0.5,
                             validation_split=0.2, validation_timesteps=2, reg_data=str(tmp_path / "reg"),
                             prior_loss_weight=0.5, class_prompt="a dog", sample_prompts=["a cat"], sample_steps=30,
                             reg_balance="repeats")
    assert idle_option_notes(switched_on) == []
    assert idle_option_notes(run_config()) == []  # the defaults, given or not, say nothing
    assert main(["train", "--model", "tiny", "--data", "sample", "--ema-decay", "0.99", "--vram", "2GB"]) == 2
    assert "--ema-decay 0.99 changes nothing without --ema" in capsys.readouterr().err


def test_a_config_over_a_preset_says_which_of_its_settings_it_replaces(tmp_path, capsys):
    """A kohya config sets kohya's defaults too (network alpha 1 over the character preset's 8), and a saved .toml
    sets every option the preset does: both trained past the preset without a word."""
    (tmp_path / "mine.toml").write_text("[network]\nrank = 64\n")
    values = parse_train(["--preset", "character", "--config", str(tmp_path / "mine.toml")])
    assert values["rank"] == 64 and values["alpha"] == 32
    err = capsys.readouterr().err
    assert "--preset character: --config mine.toml replaces its --rank 16\n" in err
    assert "the --config's rank 64: the preset's alpha follows it, alpha 32" in err  # (no --rank was typed)
    (tmp_path / "kohya.toml").write_text("network_dim = 32\nlearning_rate = 1e-4\nmax_train_steps = 100\n")
    values = parse_train(["--preset", "character", "--config", str(tmp_path / "kohya.toml")])
    assert values["alpha"] == 1 and values["max_steps"] == 100
    assert "replaces its --rank 16, --alpha 8, --epochs 10\n" in capsys.readouterr().err
    every = tmp_path / "every.toml"
    every.write_text("[network]\nlora_layers = 'attn'\nrank = 4\nalpha = 4\n"
                     "[optim]\nlr = 1e-3\nscheduler = 'constant'\nwarmup_steps = 0\n"
                     "[training]\nmax_steps = 50\nmin_snr_gamma = 1.0\n"
                     "[data]\nflip = true\nshuffle_tags = false\nkeep_tokens = 0\n")
    parse_train(["--preset", "character", "--config", str(every)])
    assert capsys.readouterr().err.rstrip().endswith("; the preset changes nothing")
    (tmp_path / "same.toml").write_text("[network]\nrank = 16\n[training]\nseed = 3\n")
    parse_train(["--preset", "character", "--config", str(tmp_path / "same.toml")])
    assert "--preset" not in capsys.readouterr().err


def test_a_zero_switches_off_what_a_saved_config_switched_on(tmp_path):
    """A sweep from a run's saved .toml could not turn its saves, samples or checkpoints off: 0 was refused as
    'not a positive number', and no --no- flag exists for them."""
    from lowvram.cli import train_values
    from lowvram.cli_parser import build_parser
    from lowvram.configure import build_config

    (tmp_path / "run.toml").write_text('[output]\nsave_every = "5"\nsample_every = "2"\nkeep_saves = 2\n'
                                       'sample_prompts = ["a cat"]\n[training]\ncheckpoint_every = 3\n')
    argv = ["train", "--model", "tiny", "--data", "sample", "--config", str(tmp_path / "run.toml")]
    on = build_config(train_values(build_parser().parse_args(argv)))
    assert (on.output.save_every, on.output.sample_every, on.output.keep_saves, on.training.checkpoint_every) == (
        "5", "2", 2, "3")  # (an older run's whole number, read as the steps it was)
    off = build_config(train_values(build_parser().parse_args([*argv, "--save-every", "0", "--sample-every", "0",
                                                               "--keep-saves", "0", "--checkpoint-every", "0"])))
    assert (off.output.save_every, off.output.sample_every, off.output.keep_saves, off.training.checkpoint_every) == (
        None, None, None, None)
    # the saves off alone: the file's keep_saves goes with them (it was refused as needing --save-every), 0e too
    for zero in ("0", "0e"):
        alone = build_config(train_values(build_parser().parse_args([*argv, "--save-every", zero])))
        assert (alone.output.save_every, alone.output.keep_saves) == (None, None)


@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
def test_a_lowvram_config_written_on_windows_reads_its_relative_folders_and_says_its_drive_paths_as_given(tmp_path):
    """data = 'img\\train' beside the config: 'folder not found: /here/img\\train'; output = 'D:\\out': said as
    '/here/D:\\out' (joined to the config's folder)."""
    from lowvram.configure import read_toml
    from lowvram.data.sample import write_sample_dataset

    write_sample_dataset(tmp_path / "img" / "train")
    (tmp_path / "run.toml").write_text("[data]\ndata = 'img\\train'\n[output]\noutput = 'D:\\lora\\out'\n")
    values = read_toml(tmp_path / "run.toml")
    assert values["data"] == str(tmp_path / "img" / "train") and values["output"] == "D:\\lora\\out"


@pytest.mark.parametrize("data, reg, refused", [
    ("img", "img", "is --data's folder"), ("img", "img/5_shape", "is --data's image folder, whose images"),
    ("img", "img/5_shape/sub", "is inside --data's image folder"),
    ("img/5_shape", "img", "holds --data's folder"),  # (its N_name folder: class images too)
    ("img", ".", None), ("img", "elsewhere", None),  # (a kohya_ss project: img/ is no N_name folder of it)
    (".", "reg", None),  # (N_name folders and reg/ in one project folder: its scan passes reg/ by, and says so)
    ("img", "img/2019", None),  # (a year's folder, which the scan passes by: it was refused as --data's own)
])
def test_class_images_among_the_subjects_images_are_refused(tmp_path, monkeypatch, data, reg, refused):
    """--reg-data the same as --data, or among the images its scan reads (or holding --data's among its own), trained
    the subject's images as class images too; folders each scan passes by are no overlap."""
    for folder in ("img/5_shape/sub", "elsewhere/1_dog", "reg/1_dog", "5_lvshape", "img/2019"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    values = {"model": "tiny", "data": data, "reg_data": reg}
    if refused is None:
        assert build_config(values).data.reg_data
        return
    with pytest.raises(LowvramError, match=f"^--reg-data: .*{refused}"):
        build_config(values)


@pytest.mark.parametrize("reg, refused", [
    ("img/20_ohwx woman", "is an image folder of"), ("img", "holds {folder}, an image folder of"),
    ("img/20_ohwx woman/sub", None),  # (a subset reads its folder's own images: not those of one inside it)
    ("img/20_ohwx woman/sub/1_woman", None), ("reg", None)])
def test_class_images_among_a_dataset_files_images_are_refused(tmp_path, monkeypatch, reg, refused):
    """A kohya dataset file as --data, its training folder as --reg-data: the subject's images trained under their
    captions as class images too, warned of as "copies of training images" (/a.jpg is /a.jpg)."""
    for folder in ("img/20_ohwx woman/sub/1_woman", "reg/1_woman"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "ds.toml").write_text("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'img/20_ohwx woman'\n")
    monkeypatch.chdir(tmp_path)
    values = {"model": "tiny", "data": "ds.toml", "reg_data": reg}
    if refused is None:
        assert build_config(values).data.reg_data
        return
    with pytest.raises(LowvramError) as error:
        build_config(values)
    folder = tmp_path / "img" / "20_ohwx woman"
    assert str(error.value).startswith(f"--reg-data: {tmp_path / reg} {refused.format(folder=folder)} "
                                       f"{tmp_path / 'ds.toml'}, whose images all train as the subject; ")


def test_class_images_given_as_a_file_say_what_to_give(tmp_path, monkeypatch):
    """--reg-data naming a file said "folder not found: ds.toml (did you mean ds.toml?)"."""
    import zipfile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "img" / "5_shape").mkdir(parents=True)
    (tmp_path / "ds.toml").write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img/5_shape"\n')
    (tmp_path / "photo.png").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "reg.zip", "w") as archive:
        archive.writestr("1_dog/a.png", b"")
        archive.writestr("1_cat/a.png", b"")
    for reg, said in (("ds.toml", ("--reg-data: ds.toml is a dataset file; its is_reg subsets are the class images: "
                                  "pass it as --data ds.toml")),
                      ("photo.png", ("--reg-data: photo.png is a file; give the folder of class images (kohya's N_name "
                                    "folders inside)")),
                      ("reg.zip", ("--reg-data: reg.zip is a file; give the folder of class images (kohya's N_name "
                                  "folders inside); unpack it first: python3 -m zipfile -e reg.zip reg, then "
                                  "--reg-data reg"))):
        with pytest.raises(LowvramError) as error:
            build_config({"model": "tiny", "data": "img", "reg_data": reg})
        assert str(error.value).replace(f"{tmp_path}{os.sep}", "") == said


def test_every_file_and_new_folder_lowvram_writes_is_one_windows_can_open(tmp_path, monkeypatch, capsys):
    """Only train's --name was checked: generate wrote img:1.png and aux.png, resize pr2:r4.safetensors, and train
    made outs/run. (Windows takes a trailing dot or space off, and cannot open the folder)."""
    from lowvram.cli import main

    monkeypatch.chdir(tmp_path)
    for command, says in ((["generate", "--model", "tiny", "--prompt", "x", "--output", "img:1.png"],
                           "--output: img:1.png holds :, which Windows cannot have in a name; name another"),
                          (["generate", "--model", "tiny", "--prompt", "x", "--output", "aux.png"],
                           "--output: aux.png is a name Windows keeps for a device"),
                          (["resize", "x.safetensors", "--rank", "4", "--output", "a?.safetensors"],
                           "--output: a?.safetensors holds ?, which Windows cannot"),
                          (["train", "--model", "tiny", "--data", "sample", "--output", "outs/run."],
                           "--output: 'run.' ends in a dot, which Windows takes off: it cannot open it"),
                          (["train", "--model", "tiny", "--data", "sample", "--name", "n", "--output", "run /x"],
                           "--output: 'run ' ends in a space"),
                          (["train", "--model", "tiny", "--data", "sample", "--copy-to", "loras/v1?.safetensors"],
                           "--copy-to: v1?.safetensors holds ?, which Windows cannot have in a name; name it another"),
                          (["check-data", "sample", "--report", "r:1.json"], "--report: r:1.json holds :"),
                          # a tab: written, and a name Windows cannot have (1 to 31 are refused there)
                          (["train", "--model", "tiny", "--data", "sample", "--name", "my\tv1"],
                           "--name: 'my\\tv1' is not a valid file name (\\t cannot be in one on Windows)"),
                          (["train", "--model", "tiny", "--data", "sample", "--output", "tab\x01dir/run"],
                           "--output: tab\\x01dir holds \\x01, which Windows cannot have in a name")):
        assert main(command) == 2, command
        assert says in capsys.readouterr().err, command
    assert not any(tmp_path.iterdir())  # nothing made


def test_a_kohya_ss_projects_model_folder_names_no_lora_its_project_does(tmp_path):
    """kohya_ss's Dataset Preparation makes img/ log/ model/ in a project: with --output model every project's LoRA
    was model.safetensors, and the second one's --copy-to to ComfyUI's folder was refused as taken."""
    project = tmp_path / "char 1"
    (project / "model").mkdir(parents=True)
    assert run_config(output=str(project / "model")).output_name == "model"  # no img/ beside it: a folder like any
    (project / "img").mkdir()
    assert run_config(output=str(project / "model")).output_name == "char 1"
    assert run_config(output=str(project / "model"), name="mine").output_name == "mine"
    (project / "model" / "lowvram-run.json").write_text('{"name": "model"}')  # a run trained there before: its name
    assert run_config(output=str(project / "model")).output_name == "model"
