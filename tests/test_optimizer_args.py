"""--optimizer-arg KEY=VALUE (kohya's optimizer_args): each optimizer's own settings reach its real constructor,
wrong ones are one line naming what it takes, and kohya's and OneTrainer's settings carry over."""

import re
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import run_config

from lowvram.errors import LowvramError
from lowvram.kohya_config import translate
from lowvram.onetrainer_config import translate_onetrainer
from lowvram.optim import OPTIMIZERS, TORCH_OPTIMIZERS, build_optimizer, optimizer_kwargs

# a value each setting may take
EXAMPLES = {"betas": "0.85,0.98", "eps": "1e-7", "amsgrad": "True", "min_8bit_size": "2048", "clip_threshold": "0.9",
            "decay_rate": "-0.7", "beta1": "0.8", "beta3": "0.97", "d0": "2e-6", "d_coef": "2", "growth_rate": "1e6",
            "decouple": "False", "use_bias_correction": "False", "safeguard_warmup": "True", "slice_p": "3", "r": "0.5",
            "weight_lr_power": "1.5", "relative_step": "True", "scale_parameter": "True", "warmup_init": "True"}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_setting_an_optimizer_takes_reaches_its_constructor_and_it_steps(name):
    items = [f"{key}={'1e-29,1e-3' if (name, key) == ('adafactor', 'eps') else EXAMPLES[key]}"
             for key, _ in OPTIMIZERS[name].args]
    settings = optimizer_kwargs(name, items)
    assert settings.keys() == dict(OPTIMIZERS[name].args).keys() and settings
    param = torch.nn.Parameter(torch.randn(64, 64))
    optimizer = build_optimizer(name, [{"params": [param], "lr": 1e-3}], 0.0, 2, settings)
    inner = getattr(optimizer, "optimizer", optimizer)
    where = {**inner.defaults, **getattr(getattr(inner, "args", None), "__dict__", {})}  # bitsandbytes keeps some
    for key, value in settings.items():
        assert where.get(key) == value, (key, where.get(key), value)
    param.square().sum().backward()
    optimizer.step()


def test_a_wrong_setting_is_one_line_naming_what_the_optimizer_takes():
    for items, says in ((["d_coef=2"], "--optimizer-arg: adamw takes no 'd_coef' here; it takes betas, eps, amsgrad"),
                        (["betas=0.9"], "--optimizer-arg: betas=0.9: must be two numbers, comma-separated"),
                        (["weight_decay=0.1"], "--optimizer-arg: weight_decay=0.1: give it as --weight-decay 0.1"),
                        (["decouple"], "--optimizer-arg: 'decouple' is not KEY=VALUE (e.g. betas=0.9,0.99)"),
                        # (the last won, unsaid, and ss_optimizer named both)
                        (["eps=1e-8", "eps=1e-6"], ("--optimizer-arg: eps is given twice (eps=1e-8, eps=1e-6): give it "
                                                   "once")),
                        # kohya_ss's one string of them, read as one setting: "amsgrad=True eps=1e-8: must be True or
                        # False"
                        (["amsgrad=True eps=1e-8"], (
                            "--optimizer-arg: 'amsgrad=True eps=1e-8' holds 2 settings: give each as its own item "
                            "(--optimizer-arg amsgrad=True --optimizer-arg eps=1e-8; in a TOML file, optimizer_args = "
                            "[\"amsgrad=True\", \"eps=1e-8\"])"))):
        with pytest.raises(LowvramError) as error:
            run_config(optimizer_args=items)
        assert str(error.value) == says
    with pytest.raises(LowvramError, match=r"^--optimizer-arg: decouple=yes: must be True or False$"):
        run_config(optimizer="prodigy", optimizer_args=["decouple=yes"])


def test_kohyas_and_onetrainers_optimizer_settings_carry_over():
    values, notes = translate({"train_data_dir": "sample", "optimizer_type": "Prodigy", "optimizer_args": [
        "decouple=True", "weight_decay=0.01", "d_coef=2", "use_bias_correction=True", "safeguard_warmup=True",
        "foo=1"]}, Path("k.toml"))
    assert values["optimizer_args"] == ["decouple=True", "d_coef=2", "use_bias_correction=True",
                                        "safeguard_warmup=True"]
    assert values["weight_decay"] == 0.01 and "optimizer_args not carried over: foo=1" in notes
    values, _ = translate({"train_data_dir": "sample", "optimizer_type": "Adafactor", "optimizer_args": [
        "scale_parameter=False", "relative_step=False", "warmup_init=False"]}, Path("k.toml"))
    assert values["optimizer"] == "adafactor" and "optimizer_args" not in values  # lowvram's own way already
    with pytest.raises(LowvramError, match="optimizer_args d_coef: 'lots' must be a number"):
        translate({"train_data_dir": "sample", "optimizer_type": "Prodigy",
                   "optimizer_args": ["d_coef=lots"]}, Path("k.toml"))
    section = {"optimizer": "PRODIGY", "beta1": 0.9, "beta2": 0.99, "d_coef": 1.5, "decouple": True,
               "use_bias_correction": False, "weight_decay": 0.02, "stochastic_rounding": True, "eps": None}
    values, _ = translate_onetrainer({"model_type": "STABLE_DIFFUSION_15", "training_method": "LORA",
                                      "optimizer": section}, Path("ot.json"))
    assert values["optimizer_args"] == ["d_coef=1.5", "decouple=True", "use_bias_correction=False", "betas=0.9,0.99",
                                        "safeguard_warmup=False"]  # OneTrainer's default where its config is silent


@pytest.mark.parametrize("kohya, onetrainer, weight_decay, args", [
    ("Prodigy", "PRODIGY", 0, ["use_bias_correction=False", "safeguard_warmup=False"]),
    ("Lion", "LION", 0, None), ("Adafactor", "ADAFACTOR", 0, None), ("AdamW8bit", "ADAMW_8BIT", 0.01, None)])
def test_an_optimizer_with_no_settings_trains_as_its_librarys_defaults_as_kohya_and_onetrainer_pass_it(
        kohya, onetrainer, weight_decay, args):
    """Neither passes a weight decay of its own, nor Prodigy's bias correction and safeguarded warm-up, which
    lowvram's own runs turn on as Prodigy's authors advise for diffusion LoRAs."""
    extra = {"optimizer_args": ["relative_step=False", "scale_parameter=False"]} if kohya == "Adafactor" else {}
    from_kohya, _ = translate({"train_data_dir": "sample", "optimizer_type": kohya, **extra}, Path("k.toml"))
    from_onetrainer, _ = translate_onetrainer({"model_type": "STABLE_DIFFUSION_15", "training_method": "LORA",
                                               "optimizer": {"optimizer": onetrainer}}, Path("ot.json"))
    for values in (from_kohya, from_onetrainer):
        assert values["weight_decay"] == weight_decay and values.get("optimizer_args") == args


def test_kohyas_adafactor_with_its_own_step_sizes_trains_as_transformers_builds_it(tmp_path, capsys):
    """kohya's Adafactor without optimizer_args, with the lr_scheduler kohya_ss's presets give it: relative-step
    (a step size from the step count and the weights' scale). The rates and their schedule go unused, said so;
    the log shows the step size that moved the weights; flags that would go unused are refused."""
    import json

    from lowvram.cli import main

    kohya = {"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample", "optimizer_type": "Adafactor",
             "lr_scheduler": "adafactor", "learning_rate": 1e-4, "lr_warmup_steps": 1, "max_train_steps": 2,
             "output_dir": str(tmp_path), "enable_bucket": True}
    (tmp_path / "k.toml").write_text(tomli_w.dumps(kohya))
    assert main(["train", "--config", str(tmp_path / "k.toml")]) == 0
    assert ("learning_rate, lr_warmup_steps not used: Adafactor with relative_step=True sets its own step sizes, as "
            "in kohya") in " ".join(capsys.readouterr().err.split())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    # min(1e-2, 1/sqrt(step)) times the weight's root mean square (at least 1e-3): never the 1e-4 of the config
    assert len(rows) == 2 and all(1e-5 <= row["lr_effective"] <= 1e-2 for row in rows)
    assert all(row["lr_effective"] != row["lr"] for row in rows)
    from safetensors import safe_open  # (kohya writes no rate it never used: None)

    with safe_open(str(tmp_path / f"{tmp_path.name}.safetensors"), "pt") as f:
        metadata = f.metadata()
    assert (metadata["ss_learning_rate"], metadata["ss_text_encoder_lr"], metadata["ss_lr_scheduler"]) == (
        "None", "None", "adafactor")
    for flags, says in (({"lr": 1e-4}, "--lr: adafactor with relative_step=True sets its own step sizes"),
                        ({"scheduler": "cosine", "text_encoder_lr": 5e-5, "train_text_encoder": True},
                         "drop --scheduler cosine, --text-encoder-lr, or give --optimizer-arg relative_step=False")):
        with pytest.raises(LowvramError, match=re.escape(says)):
            run_config(optimizer="adafactor", optimizer_args=["relative_step=True"], **flags)
    relative = build_optimizer("adafactor", [{"params": [torch.nn.Parameter(torch.ones(4))], "lr": 1e-3}], 0.0,
                               settings={"relative_step": True})  # (its steps scaled by each weight's size, as kohya's)
    assert relative.defaults["scale_parameter"] is True
    with pytest.raises(LowvramError, match="^--optimizer-arg warmup_init=True: Adafactor warms up only its own"):
        run_config(optimizer="adafactor", optimizer_args=["warmup_init=True"])
    section = {"optimizer": "ADAFACTOR", "relative_step": True, "scale_parameter": True, "warmup_init": False}
    onetrainer = {"model_type": "STABLE_DIFFUSION_15", "training_method": "LORA", "learning_rate": 3e-4,
                  "learning_rate_scheduler": "ADAFACTOR", "optimizer": section}
    values, notes = translate_onetrainer(onetrainer, Path("ot.json"))  # (OneTrainer pops the groups' rates)
    assert values["optimizer_args"] == ["relative_step=True", "scale_parameter=True", "warmup_init=False"]
    assert "lr" not in values and values["scheduler"] == "constant" and any("relative_step" in n for n in notes)
    with pytest.raises(LowvramError, match="learning_rate_scheduler: ADAFACTOR is the schedule of the ADAFACTOR"):
        translate_onetrainer(onetrainer | {"optimizer": section | {"relative_step": False}}, Path("ot.json"))


def test_an_optimizer_named_by_its_class_trains_resumes_and_plans(tmp_path, capsys):
    """kohya's optimizer_type takes any class (torch.optim.RAdam, pytorch_optimizer.CAME): its settings are read as
    Python literals and reach the constructor, the run resumes with its state, and the planner counts it as AdamW."""
    import json

    from lowvram.cli import main
    from lowvram.train.loop import train

    options = {"optimizer": "torch.optim.RAdam", "optimizer_args": ("decoupled_weight_decay=True",
                                                                    "betas=(0.8, 0.95)")}
    train(run_config(output=str(tmp_path), max_steps=2, checkpoint_every=2, **options))
    state = json.loads((tmp_path / "checkpoints" / "step-000002" / "state.json").read_text())["optimizer"]
    group = state["param_groups"][0]
    assert group["decoupled_weight_decay"] is True and group["betas"] == [0.8, 0.95] and state["state"]
    assert train(run_config(output=str(tmp_path), max_steps=3, resume="auto", **options)).steps == 3
    assert "resumed from" in capsys.readouterr().out
    assert main(["plan", "--model", "sd15", "--vram", "6GB", "--optimizer", "torch.optim.RAdam"]) == 0
    assert optimizer_kwargs("torch.optim.RAdam", ["foreach=None", "name=fast"]) == {"foreach": None, "name": "fast"}


def test_a_class_that_cannot_be_had_is_one_line_before_anything_loads(tmp_path):
    for name, says in (("torch.optim.NoSuch", "--optimizer torch.optim.NoSuch: torch.optim has no class NoSuch"),
                       ("nosuchpackage.Came", "--optimizer nosuchpackage.Came: cannot import nosuchpackage"),
                       ("torch.nn.Linear", "--optimizer torch.nn.Linear: not an optimizer")):
        with pytest.raises(LowvramError) as error:
            build_optimizer(name, [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1.0}], 0.0)
        assert str(error.value).startswith(says) and len(str(error.value).splitlines()) == 1
    with pytest.raises(LowvramError, match="--optimizer-arg: torch.optim.SGD takes no gamma; it takes momentum"):
        build_optimizer("torch.optim.SGD", [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1.0}], 0.0,
                        settings={"gamma": 0.5})


def test_what_a_class_takes_is_checked_before_the_model_loads_and_plan_knows_a_missing_package(tmp_path, capsys):
    from lowvram.cli import main

    argv = ["train", "--model", "tiny", "--data", "sample", "--max-steps", "1", "--output", str(tmp_path / "out")]
    for extra, says in (
            (["--optimizer", "torch.optim.Rprop"], ("--weight-decay: torch.optim.Rprop has no weight decay; pass "
                                                   "--weight-decay 0")),
            (["--optimizer", "torch.optim.RAdam", "--optimizer-arg", "lr=0.5"], "lr=0.5: give it as --lr 0.5"),
            (["--optimizer", "torch.optim.RAdam", "--optimizer-arg", "nonsense=1"],
             "--optimizer-arg: torch.optim.RAdam takes no nonsense; it takes betas, eps"),
            (["--optimizer", "torch.optim.SGD", "--optimizer-arg", "momentum=-1"],
             "--optimizer-arg: torch.optim.SGD refused its settings (Invalid momentum value: -1)"),
            (["--optimizer", "schedulefree.SGDScheduleFree", "--scheduler", "cosine"],
             "--scheduler cosine: schedulefree.SGDScheduleFree replaces the schedule")):
        assert main([*argv, *extra]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and says in error, error
        assert not (tmp_path / "out").exists()  # stopped before the run began
    assert main([*argv, "--optimizer", "torch.optim.Rprop", "--weight-decay", "0"]) == 0
    assert main(["plan", "--model", "sdxl", "--vram", "8GB", "--optimizer", "nosuchpackage.Opt"]) == 2
    assert "--optimizer nosuchpackage.Opt: no package nosuchpackage here" in capsys.readouterr().err


@pytest.mark.parametrize("kohya, ours, added", [
    ("DAdaptAdam", "dadaptation.DAdaptAdam", []),
    ("DAdaptation", "dadaptation.experimental.DAdaptAdamPreprint", []),  # (kohya_ss GUI's choices, which were read
    ("PagedAdamW", "bitsandbytes.optim.PagedAdamW", []),                 # as torch.optim's classes)
    ("PagedAdamW32bit", "bitsandbytes.optim.PagedAdamW32bit", []),
    ("SGDNesterov", "torch.optim.SGD", ["nesterov=True", "momentum=0.9"]),
    ("RAdam", "torch.optim.RAdam", []),
    ("Adam", "torch.optim.Adam", []),  # (close to kohya's AdamW, and torch.optim's own)
    ("pytorch_optimizer.CAME", "pytorch_optimizer.CAME", []),
    ("bitsandbytes.optim.AdamW8bit", "adamw8bit", []),
])
def test_kohyas_other_optimizers_are_the_classes_kohya_builds(kohya, ours, added):
    values, _ = translate({"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample",
                           "optimizer_type": kohya}, Path("kohya.toml"))
    assert values["optimizer"] == ours and sorted(values.get("optimizer_args", [])) == sorted(added)


def test_a_misspelt_optimizer_in_a_kohya_config_names_kohyas_and_torch_optims_are_all_known():
    """`optimizer_type = "AdamW9bit"` was read as torch.optim.AdamW9bit: 'torch.optim has no class AdamW9bit', where
    --optimizer on the command line listed the names."""
    with pytest.raises(LowvramError, match=r"^kohya.toml: optimizer_type: 'AdamW9bit' is no optimizer of kohya's; did "
                                           r"you mean adamw8bit\? \(another package's class is given by its path"):
        translate({"train_data_dir": "sample", "optimizer_type": "AdamW9bit"}, Path("kohya.toml"))
    import inspect

    import torch

    installed = {name for name, kind in vars(torch.optim).items() if inspect.isclass(kind)
                 and issubclass(kind, torch.optim.Optimizer) and kind is not torch.optim.Optimizer}
    assert installed <= set(TORCH_OPTIMIZERS) and set(TORCH_OPTIMIZERS) - installed <= {"Muon"}  # (came in 2.9)


def test_prodigy_refuses_a_second_rate_before_anything_loads():
    """prodigyopt stops in its first step where one parameter group's rate differs from another's (the text
    encoders', LoRA+'s B matrices', a block's weighted one): said now, not after the caching. A block weighted
    0 (left out) or at 1, and the text encoders at --lr, are one rate."""
    for values, flag in (({"train_text_encoder": True, "text_encoder_lr": 0.5}, "--text-encoder-lr"),
                         ({"loraplus_ratio": 4.0}, "--loraplus-ratio"), ({"up_lr_weight": "cosine"}, "--up-lr-weight")):
        with pytest.raises(LowvramError, match=rf"^{flag}: prodigy takes one rate for all the adapters .* drop "
                                               rf"{flag}$"):
            run_config(optimizer="prodigy", lr=1.0, **values)
    run_config(optimizer="prodigy", lr=1.0, train_text_encoder=True, text_encoder_lr=1.0, down_lr_weight="0,0,1")
    # D-Adaptation's classes (kohya's DAdaptAdam ...) refuse a second rate as prodigyopt does
    for name in ("dadaptation.DAdaptAdam", "dadaptation.DAdaptAdaGrad", "dadaptation.experimental.DAdaptAdamPreprint"):
        with pytest.raises(LowvramError, match=rf"--loraplus-ratio: {re.escape(name)} takes one rate for all"):
            run_config(optimizer=name, loraplus_ratio=4.0)
        assert run_config(optimizer=name).lr == 1.0  # its scale, not AdamW's rate


def test_a_kohya_config_for_a_learning_rate_free_optimizer_without_a_rate_trains_at_its_scale(tmp_path):
    """kohya's default learning_rate (2e-6) scales D-Adaptation's or Prodigy's own step size to almost nothing, and
    kohya warns so: --lr 1 with a note (the config was refused, naming an --lr it never gave)."""
    values, notes = translate({"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample",
                               "optimizer_type": "DAdaptAdam"}, tmp_path / "k.toml")
    assert values["lr"] == 1.0 and any(note.startswith("learning_rate: not given; kohya's default 2e-06 scales "
                                                       "dadaptation.DAdaptAdam's own step size") for note in notes)
    values, _ = translate({"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample",
                           "optimizer_type": "DAdaptAdam", "learning_rate": 0.5}, tmp_path / "k.toml")
    assert values["lr"] == 0.5
    run_config(optimizer="adamw", train_text_encoder=True, text_encoder_lr=5e-5, loraplus_ratio=4.0)


def test_prodigy_safeguards_its_warm_up_where_the_run_has_one():
    """Prodigy's authors' advice for diffusion LoRAs: bias correction always, the safeguarded warm-up where the run
    warms up (without a warm-up it would only slow d's growth)."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    warmed = build_optimizer("prodigy", [{"params": params, "lr": 1.0}], 0.0, warmup_steps=5).defaults
    cold = build_optimizer("prodigy", [{"params": params, "lr": 1.0}], 0.0, warmup_steps=0).defaults
    assert (warmed["safeguard_warmup"], warmed["use_bias_correction"]) == (True, True)
    assert (cold["safeguard_warmup"], cold["use_bias_correction"]) == (False, True)


def test_a_loras_ss_optimizer_pasted_as_optimizer_names_the_flags_that_give_it(capsys):
    """kohya writes `bitsandbytes.optim.adamw.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))`: pasted from a LoRA's
    metadata it was "names no optimizer"; the flags said train as it did."""
    import shlex

    from lowvram.cli import build_parser, main, train_values
    from lowvram.configure import build_config

    pasted = "torch.optim.adamw.AdamW(weight_decay=0.05,betas=(0.9, 0.99),eps=1e-08)"
    assert main(["train", "--model", "tiny", "--data", "sample", "--optimizer", pasted]) == 2
    flags = re.search(r"says them: give (.+) \(see lowvram train --help\)", capsys.readouterr().err)[1]
    assert flags == "--optimizer adamw --weight-decay 0.05 --optimizer-arg betas=0.9,0.99 --optimizer-arg eps=1e-08"
    argv = ["train", "--model", "tiny", "--data", "sample", *shlex.split(flags)]
    given = build_config(train_values(build_parser().parse_args(argv)))
    assert (given.optim.optimizer, given.optim.weight_decay, given.optim.optimizer_args) == (
        "adamw", 0.05, ("betas=0.9,0.99", "eps=1e-08"))
    # lowvram's own LoRA's, as kohya writes it (betas=0.9,0.99 was pasted back as betas=0.9 and a setting '0.99')
    from lowvram.train.metadata import _as_kohya_writes

    own = f"adamw(weight_decay=0.05,{_as_kohya_writes('betas=0.9,0.99')})"
    assert own == "adamw(weight_decay=0.05,betas=(0.9, 0.99))"
    assert main(["train", "--model", "tiny", "--data", "sample", "--optimizer", own]) == 2
    assert "give --optimizer adamw --weight-decay 0.05 --optimizer-arg betas=0.9,0.99 (" in capsys.readouterr().err


def test_a_learning_rate_free_optimizers_scale_is_refused_for_adam(tmp_path):
    """A sweep from a Prodigy run's saved config with --optimizer adamw kept its --lr 1.0, and AdamW trained at it,
    unsaid (the other way round, Prodigy at 1e-4, is refused)."""
    from lowvram.errors import LowvramError

    with pytest.raises(LowvramError, match=r"--lr: 1 is the scale a learning-rate-free optimizer \(Prodigy, "
                                           r"D-Adaptation\) takes; adamw diverges at it: give a rate such as --lr 1e-4"):
        run_config(optimizer="adamw", lr=1.0)
    run_config(optimizer="prodigy", lr=1.0)
    run_config(optimizer="adamw", lr=1e-3)
    run_config(optimizer="torch.optim.Adam", lr=1.0)  # a class by its path may find its own step size: not refused


def test_kohyas_bare_torch_optimizer_and_its_scheduler_names_are_read_or_named_on_the_command_line(capsys):
    """--optimizer SGD (kohya's optimizer_type, a torch.optim class by its bare name) was "names no optimizer", and
    --scheduler cosine_with_min_lr or adafactor argparse's bare "invalid choice"."""
    from lowvram.cli import build_parser, main, train_values
    from lowvram.configure import build_config

    def optim(*flags):
        return build_config(train_values(build_parser().parse_args(["train", "--model", "tiny", "--data", "sample",
                                                                     *flags]))).optim

    assert optim("--optimizer", "SGD").optimizer == "torch.optim.SGD"
    assert optim("--optimizer", "radam").optimizer == "torch.optim.RAdam"
    assert optim("--scheduler", "Cosine").scheduler == "cosine"
    for name, says in (("cosine_with_min_lr", ("'cosine_with_min_lr' is kohya's cosine down to a floor: give "
                                              "--scheduler cosine --min-lr-ratio R")),
                       ("adafactor", ("'adafactor' is kohya's schedule of Adafactor's own step sizes: give --optimizer "
                                     "adafactor --optimizer-arg relative_step=True"))):
        assert main(["train", "--model", "tiny", "--data", "sample", "--scheduler", name, "--dry-run"]) == 2
        assert says in capsys.readouterr().err
