"""The learning-rate schedules other trainers have besides diffusers' own: REX (OneTrainer's), inverse_sqrt and
warmup_stable_decay (kohya's, from transformers), each after its linear warm-up, read from their configs and
trained with."""

import itertools
import json
import math

import pytest
import torch
from conftest import run_config

from lowvram.kohya_config import translate
from lowvram.onetrainer_config import SCHEDULERS as ONETRAINER_SCHEDULERS
from lowvram.optim import build_schedule
from lowvram.train.loop import train


def factors(name: str, warmup: int, total: int, decay: int = 0, floor: float = 0.0) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_schedule(name, optimizer, warmup, total, cycles=1, power=1.0, decay_steps=decay,
                              min_lr_ratio=floor)
    found = []
    for _ in range(total + 1):
        found.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return found


def test_rex_warms_up_then_holds_the_rate_above_linear_and_ends_at_zero():
    rex, linear = factors("rex", 4, 24), factors("linear", 4, 24)
    assert rex[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert rex[14] == pytest.approx(0.5 / (0.1 + 0.9 * 0.5))  # halfway through the decay: the paper's d = 0.9
    assert all(r > line for r, line in zip(rex[5:24], linear[5:24])) and rex[24] == 0.0
    assert all(a > b for a, b in itertools.pairwise(rex[4:]))


def test_inverse_sqrt_decays_as_one_over_the_root_of_the_step_after_its_warm_up():
    found = factors("inverse_sqrt", 5, 80)
    assert found[5] == pytest.approx(1.0) and found[20] == pytest.approx(0.5) and found[80] == pytest.approx(0.25)
    assert all(found[s] == pytest.approx(math.sqrt(5 / s)) for s in range(5, 81))


def test_warmup_stable_decay_holds_the_rate_then_decays_over_its_last_steps():
    found = factors("warmup_stable_decay", 4, 24, decay=8)
    assert found[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0]) and found[4:17] == pytest.approx([1.0] * 13)
    assert found[20] == pytest.approx(0.5) and found[24] == pytest.approx(0.0)  # a cosine over steps 16-24
    assert all(a > b for a, b in itertools.pairwise(found[16:25]))


def test_a_floor_lifts_warmup_stable_decays_warm_up_too_and_no_other_schedules():
    """kohya's warmup_stable_decay is transformers', whose min_lr_ratio floors the warm-up as well; transformers'
    cosine_with_min_lr (kohya's) and OneTrainer's floor only what follows the warm-up."""
    wsd = factors("warmup_stable_decay", 4, 24, decay=8, floor=0.1)
    assert wsd[:5] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0]) and wsd[24] == pytest.approx(0.1)
    cosine = factors("cosine", 4, 24, floor=0.1)
    assert cosine[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0]) and cosine[24] == pytest.approx(0.1)


def test_a_warmup_share_is_rounded_down_as_kohya_does():
    from lowvram.train.schedule import in_steps

    assert [in_steps(0.29, 100), in_steps(0.15, 10), in_steps(0.05, 1030), in_steps(12, 100)] == [28, 1, 51, 12]
    assert (in_steps(1, 100), in_steps(0, 100)) == (1, 0)  # 1 is a step, not the whole run (kohya's ratio is < 1)


def test_kohyas_warmup_stable_decay_takes_its_decay_and_floor_and_other_schedules_drop_the_decay(tmp_path):
    kohya = {"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample", "lr_decay_steps": 0.25}
    values, _ = translate(kohya | {"lr_scheduler": "warmup_stable_decay", "lr_scheduler_min_lr_ratio": 0.1},
                          tmp_path / "kohya.toml")
    assert (values["scheduler"], values["decay_steps"], values["min_lr_ratio"]) == ("warmup_stable_decay", 0.25, 0.1)
    values, _ = translate(kohya | {"lr_scheduler": "cosine"}, tmp_path / "kohya.toml")
    assert "decay_steps" not in values  # kohya_ss writes it beside any schedule


def test_onetrainers_rex_and_kohyas_inverse_sqrt_are_read_as_theirs(tmp_path):
    assert ONETRAINER_SCHEDULERS["REX"] == "rex"
    values, _ = translate({"pretrained_model_name_or_path": "tiny", "train_data_dir": "sample",
                           "lr_scheduler": "inverse_sqrt", "lr_warmup_steps": 10}, tmp_path / "kohya.toml")
    assert (values["scheduler"], values["warmup_steps"]) == ("inverse_sqrt", 10)


def test_a_warmup_stable_decay_run_without_its_decay_or_a_decay_without_it_is_one_line(capsys):
    from lowvram.cli import main

    argv = ["train", "--model", "tiny", "--data", "sample"]
    for extra, says in ((["--scheduler", "warmup_stable_decay"], ("--scheduler warmup_stable_decay: give its "
                                                                  "decay's length, --decay-steps N")),
                        (["--decay-steps", "10"], "--decay-steps: only used with --scheduler warmup_stable_decay")):
        assert main([*argv, *extra]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and says in error, error


def test_a_run_with_rex_and_a_floor_logs_the_rates_it_trained_with(tmp_path):
    train(run_config(output=str(tmp_path), scheduler="rex", warmup_steps=2, min_lr_ratio=0.1, lr=1e-3, max_steps=6))
    rates = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if '"lr"' in line]
    expected = [0.0, 0.5, *(0.1 + 0.9 * (1 - p) / (0.1 + 0.9 * (1 - p)) for p in (0, 0.25, 0.5, 0.75))]
    assert rates == pytest.approx([1e-3 * f for f in expected])


def test_a_schedule_free_warm_up_shows_in_the_logged_rate_and_is_warned_about_when_most_of_the_run(tmp_path):
    """The optimizer warms up inside its step: the rate logged is the one it used, and a warm-up longer than half
    the run is said, as for a schedule's."""
    import io

    from rich.console import Console

    printed = io.StringIO()
    config = run_config(output=str(tmp_path / "out"), optimizer="schedulefree_adamw", lr=1e-3, warmup_steps=10,
                        max_steps=3)
    train(config, Console(file=printed, width=300))
    rates = [record["lr"] for record in map(json.loads, (config.output_dir / "metrics.jsonl").read_text().splitlines())
             if "lr" in record]
    assert rates == pytest.approx([1e-4, 2e-4, 3e-4])  # 1, 2 and 3 tenths of the way up
    assert "--warmup-steps 10 is most of this run's 3 steps" in printed.getvalue()
