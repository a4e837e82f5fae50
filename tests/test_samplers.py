"""Samplers for sample images and `lowvram generate` (kohya's --sample_sampler and a prompt's --ss): each a
diffusers scheduler made from the model's own config, seeded, and refused up front where it cannot sample."""

import contextlib

import numpy as np
import pytest
import torch
from conftest import run_config

from lowvram.cli import main
from lowvram.errors import LowvramError
from lowvram.models.loading import load_model, zero_terminal_snr_sampler
from lowvram.prompts import parse_prompt
from lowvram.samplers import SAMPLERS, make_sampler, sampler_name, sampler_problem
from lowvram.train.sampling import render
from lowvram.train.setup import noise_schedules


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", None, dtype=torch.float32)


def draw(model, line: str, seed: int = 3):
    image = render(model, parse_prompt(line), 64, 3, seed, torch.device("cpu"), contextlib.nullcontext)
    return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_renders_the_same_image_from_the_same_seed_whatever_the_global_generator(tiny, name):
    if sampler_problem(name, False):  # lms without scipy: refused up front, as the next tests show
        pytest.skip(sampler_problem(name, False))
    torch.manual_seed(0)
    first = draw(tiny, f"lvshape, a red circle --ss {name}")
    state = torch.random.get_rng_state()
    torch.manual_seed(1)  # an ancestral sampler's noise comes from the prompt's seed, not from here
    second = draw(tiny, f"lvshape, a red circle --ss {name}")
    assert np.array_equal(first, second)
    torch.manual_seed(0)
    draw(tiny, f"lvshape, a red circle --ss {name}")
    assert torch.equal(torch.random.get_rng_state(), state)  # training's random draws are not moved by a sample


def test_the_sampler_changes_the_image_and_the_default_is_the_models_own(tiny):
    own = draw(tiny, "lvshape, a red circle")
    assert np.array_equal(own, draw(tiny, f"lvshape, a red circle --ss {type_name(tiny)}"))
    assert np.abs(draw(tiny, "lvshape, a red circle --ss euler_a") - draw(tiny, "lvshape, a red circle --ss ddim")
                  ).mean() > 0.5


def type_name(model) -> str:
    """The sampler name of the model's own scheduler (the tiny SD1.5's is PNDM)."""
    return next(name for name, (cls, _) in SAMPLERS.items() if cls == type(model.pipeline.scheduler).__name__)


def test_other_tools_names_mean_the_same_sampler():
    assert [sampler_name(n) for n in ("k_euler_a", "DPMPP_SDE_KARRAS", "dpm++_2m_karras", "Euler_A", "k_dpm_2")] == [
        "euler_a", "dpmsolver++_sde_karras", "dpmsolver++_karras", "euler_a", "dpm_2"]
    # AUTOMATIC1111's names, spaces and all
    assert [sampler_name(n) for n in ("DPM++ 2M Karras", "Euler a", "DPM2 a", " UniPC ")] == [
        "dpmsolver++_karras", "euler_a", "dpm_2_a", "unipc"]
    assert [sampler_name(n) for n in ("DPM++ SDE Karras", "LMS Karras", "DPM2 Karras", "DPM2 a Karras", "DDPM")] == [
        "dpmsingle_karras", "lms_karras", "dpm_2_karras", "dpm_2_a_karras", "ddpm"]
    with pytest.raises(ValueError, match="unknown sampler 'restart'; use one of ddim, pndm") as error:
        sampler_name("restart")
    assert "(or AUTOMATIC1111's names: 'DDIM', 'PLMS'" in str(error.value)  # the names typed in its UI


def test_a_sampler_keeps_the_models_prediction_type_and_schedule(tiny):
    base = type(tiny.pipeline.scheduler).from_config(tiny.pipeline.scheduler.config, prediction_type="v_prediction")
    for name in ("dpmsolver++", "euler_a", "unipc_karras"):
        made = make_sampler(zero_terminal_snr_sampler(base), name)
        assert made.config.prediction_type == "v_prediction"
        assert made.config.rescale_betas_zero_snr and made.config.timestep_spacing == "trailing"
    karras = make_sampler(base, "euler_karras")
    assert karras.config.use_karras_sigmas and not make_sampler(karras, "euler").config.use_karras_sigmas
    # A1111's "DPM++ 2M SDE" is the stochastic one; after it, plain DPM++ 2M is not
    sde = make_sampler(base, "dpm++_2m_sde")
    assert (sde.config.algorithm_type, make_sampler(sde, "dpmsolver++").config.algorithm_type) == (
        "sde-dpmsolver++", "dpmsolver++")


def test_a_sampler_that_cannot_sample_zero_terminal_snr_is_refused_before_training(tiny):
    with pytest.raises(LowvramError) as error:
        run_config(zero_terminal_snr=True, prediction_type="v_prediction", sample_sampler="heun",
                   sample_prompts=["a", "b --ss pndm", "c --ss euler_a"])
    lines = str(error.value).splitlines()
    assert [line.split(" cannot")[0] for line in lines] == ["--sample-sampler: 'heun'", "--sample-sampler: 'pndm'"]
    assert "use one of ddim, euler, euler_karras, euler_a, dpmsolver" in lines[0]
    # a base model whose own schedule is zero-terminal-SNR shows it only once loaded: refused there, before training
    tiny.pipeline.scheduler = zero_terminal_snr_sampler(type(tiny.pipeline.scheduler).from_config(
        tiny.pipeline.scheduler.config, prediction_type="v_prediction"))
    try:
        with pytest.raises(LowvramError, match="--sample-sampler: 'pndm' cannot sample a zero-terminal-SNR"):
            noise_schedules(tiny, run_config(sample_prompts=["a"], sample_sampler="pndm"))
        noise_schedules(tiny, run_config(sample_prompts=["a"], sample_sampler="ddim"))
    finally:
        tiny.pipeline.scheduler = load_model("tiny", None, dtype=torch.float32).pipeline.scheduler


def test_an_unknown_sampler_is_one_line_naming_the_option():
    with pytest.raises(LowvramError) as error:
        run_config(sample_prompts=["a cat --ss restart"])
    assert str(error.value).startswith("--sample-prompt: --ss (sampler): unknown sampler 'restart'; use one of")
    assert len(str(error.value).splitlines()) == 1
    with pytest.raises(LowvramError, match="--sample-sampler: "):
        run_config(sample_prompts=["a cat"], sample_sampler="restart")


def test_generate_samples_with_the_sampler_asked_for(tmp_path, capsys):
    argv = ["generate", "--model", "tiny", "--prompt", "lvshape, a red circle", "--steps", "3", "--seed", "1"]
    for sampler in ("k_euler_a", "ddim"):
        assert main([*argv, "--sampler", sampler, "--output", str(tmp_path / f"{sampler}.png")]) == 0
    from PIL import Image

    images = [np.asarray(Image.open(tmp_path / f"{s}.png"), dtype=np.float32) for s in ("k_euler_a", "ddim")]
    assert np.abs(images[0] - images[1]).mean() > 0.5
    assert main([*argv, "--sampler", "restart"]) == 2
    assert "unknown sampler 'restart'" in capsys.readouterr().err


def test_a_sampler_whose_package_is_missing_is_refused_naming_it():
    import importlib.util

    if importlib.util.find_spec("scipy") is not None:
        pytest.skip("scipy is installed here: lms samples")
    with pytest.raises(LowvramError, match="--sample-sampler: 'lms' needs scipy: pip install scipy"):
        run_config(sample_prompts=["a cat --ss k_lms"])
    # generate says it with the other option checks, before the model loads (a real checkpoint takes a while)
    from lowvram.cli_parser import build_parser
    from lowvram.generate import _read_options

    args = build_parser().parse_args(["generate", "--model", "tiny", "--prompt", "a cat --ss LMS Karras"])
    assert "--sampler: 'lms_karras' needs scipy: pip install scipy, or pick another sampler" in _read_options(args)[2]


def test_generate_takes_the_prompts_inline_options_over_its_flags(tmp_path):
    from PIL import Image

    base = ["generate", "--model", "tiny", "--steps", "2"]
    assert main([*base, "--prompt", "a red circle --ss ddim --d 3 --n blue", "--seed", "9",
                 "--output", str(tmp_path / "inline.png")]) == 0
    assert main([*base, "--prompt", "a red circle", "--sampler", "ddim", "--seed", "3", "--negative-prompt", "blue",
                 "--output", str(tmp_path / "flags.png")]) == 0
    inline, flags = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("inline", "flags"))
    assert np.array_equal(inline, flags)
    assert main([*base, "--prompt", "a red circle --w 96 --h 64", "--output", str(tmp_path / "wide.png")]) == 0
    assert Image.open(tmp_path / "wide.png").size == (96, 64)
    # AUTOMATIC1111's --width/--height draw the same image; the prompt's own size wins over them
    assert main([*base, "--prompt", "a red circle", "--width", "96", "--height", "64",
                 "--output", str(tmp_path / "flags-wide.png")]) == 0
    wide, flags_wide = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("wide", "flags-wide"))
    assert np.array_equal(wide, flags_wide)
    assert main([*base, "--prompt", "a red circle --w 96 --h 64", "--width", "64", "--height", "128",
                 "--output", str(tmp_path / "inline-wins.png")]) == 0
    assert Image.open(tmp_path / "inline-wins.png").size == (96, 64)


def test_the_sample_sampler_option_takes_other_tools_names_on_the_command_line_and_in_a_file(tmp_path):
    from lowvram.cli import build_parser, train_values
    from lowvram.configure import build_config

    args = build_parser().parse_args(["train", "--data", "sample", "--model", "tiny", "--sample-sampler", "k_euler_a"])
    assert build_config(train_values(args)).output.sample_sampler == "euler_a"
    (tmp_path / "run.toml").write_text('[output]\nsample_sampler = "DPM++ 2M Karras"\n')
    args = build_parser().parse_args(["train", "--data", "sample", "--model", "tiny", "--config", str(tmp_path / "run.toml")])
    assert build_config(train_values(args)).output.sample_sampler == "dpmsolver++_karras"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--sample-sampler", "restart"])


def test_a_models_own_scheduler_is_named_as_automatic1111_names_it_and_read_back():
    """A diffusers folder's DPM++ 2M with Karras sigmas was written "Sampler: DPMSolverMultistepScheduler", which
    generate refused reading its own image back (and AUTOMATIC1111 did not know)."""
    import diffusers

    from lowvram.samplers import a1111_name, own_sampler

    karras = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    assert a1111_name(own_sampler(karras)) == "DPM++ 2M Karras"
    assert a1111_name(own_sampler(diffusers.DPMSolverMultistepScheduler())) == "DPM++ 2M"
    assert a1111_name(own_sampler(diffusers.PNDMScheduler(skip_prk_steps=True))) == "PLMS"
    assert own_sampler(diffusers.LCMScheduler()) == "LCMScheduler"  # (no sampler here: its class, as it is)
    # of a sampler's class, but none of them: not named as one (PLMS without PRK steps read back with them)
    assert own_sampler(diffusers.PNDMScheduler()) == "PNDMScheduler"
    sde = diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min")
    assert own_sampler(sde) == "DPMSolverMultistepScheduler"
    for name, (kind, settings) in SAMPLERS.items():  # each sampler's scheduler is named so that it reads back as it
        if sampler_problem(name, False):  # (a package missing: LMS needs scipy)
            continue
        scheduler = getattr(diffusers, kind)(**settings)
        assert own_sampler(scheduler) == name
        if "," not in a1111_name(name):  # (Euler, Schedule type: Karras is two settings of the infotext)
            assert sampler_name(a1111_name(name)) == name
