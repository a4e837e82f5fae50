"""--timestep-distribution: OneTrainer's timestep shapes, --noising-weight, --noising-bias and --timestep-shift. Each
is drawn as OneTrainer draws it: the test samples OneTrainer's own procedure (its continuous formulas, or
multinomial draws from its weights over the timesteps) and lowvram's inverse-CDF sampler side by side, and their
histograms agree. Bad settings are refused in one line naming the option."""

import math

import pytest
import torch
from conftest import run_config
from diffusers import DDPMScheduler

from lowvram.configure import build_config
from lowvram.errors import LowvramError
from lowvram.models import load_model
from lowvram.timesteps import TimestepShape, timestep_weights
from lowvram.train.loop import train
from lowvram.train.loss import sample_timesteps

COUNT, DRAWS = 1000, 400_000


def onetrainer_draws(shape: TimestepShape, generator: torch.Generator) -> torch.Tensor:
    """OneTrainer's ModelSetupNoiseMixin._get_timestep_discrete, written out from its formulas."""
    low, high = shape.span(COUNT)
    span, w, b, s = high - low, shape.weight, shape.bias, shape.shift
    if shape.distribution in ("uniform", "logit_normal", "heavy_tail"):
        if shape.distribution == "uniform":
            x = torch.rand(DRAWS, generator=generator, dtype=torch.float64)
        elif shape.distribution == "logit_normal":
            x = (torch.randn(DRAWS, generator=generator, dtype=torch.float64) * (w + 1) + b).sigmoid()
        else:
            u = torch.rand(DRAWS, generator=generator, dtype=torch.float64)
            x = 1 - u - w * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)
        t = low + span * x
        return (COUNT * s * t / ((s - 1) * t + COUNT)).floor().long().clamp(max=COUNT - 1)
    x = torch.linspace(0, 1, span, dtype=torch.float64)
    if shape.distribution == "cos_map":
        weights = 2 / (math.pi - 2 * math.pi * x + 2 * math.pi * x**2)
    elif shape.distribution == "sigmoid":
        weights = torch.sigmoid(w * (x - (b + 0.5)))
    else:
        weights = (2 - w * (x - (b + 0.5)) ** 2).clamp(min=0)
    return torch.multinomial(weights, DRAWS, replacement=True, generator=generator) + low


def shares(drawn: torch.Tensor, bins: int = 20) -> torch.Tensor:
    return torch.bincount(drawn * bins // COUNT, minlength=bins).double() / len(drawn)


@pytest.mark.parametrize("shape", [
    TimestepShape(distribution="logit_normal"),
    TimestepShape(distribution="logit_normal", weight=0.5, bias=-0.7),
    TimestepShape(distribution="logit_normal", shift=3.0),
    TimestepShape(100, 900, distribution="logit_normal", weight=-0.3, bias=0.4),
    TimestepShape(distribution="heavy_tail", weight=1.2),
    TimestepShape(distribution="heavy_tail", weight=-0.8, shift=0.5),
    TimestepShape(distribution="cos_map"),
    TimestepShape(distribution="sigmoid", weight=6.0, bias=0.1),
    TimestepShape(distribution="inverted_parabola", weight=8.0, bias=-0.2),
    TimestepShape(200, None, distribution="inverted_parabola", weight=-3.0),
    TimestepShape(shift=2.0),
], ids=lambda shape: f"{shape.distribution}-{shape.weight:g}-{shape.bias:g}-{shape.shift:g}-{shape.low}")
def test_each_shape_draws_as_onetrainer_draws_it(shape):
    scheduler = DDPMScheduler.from_pretrained(load_model("tiny").family.config_dir, subfolder="scheduler")
    generator = torch.Generator().manual_seed(0)
    ours = sample_timesteps(scheduler, DRAWS, torch.device("cpu"), generator, shape)
    theirs = onetrainer_draws(shape, generator)
    assert ours.min() >= 0 and ours.max() < COUNT
    torch.testing.assert_close(shares(ours), shares(theirs), rtol=0, atol=0.004)
    uniform = shares(torch.randint(0, COUNT, (DRAWS,), generator=generator))
    assert (shares(ours) - uniform).abs().max() > 0.01  # each shape is far from uniform, so the comparison means much


def test_a_range_without_a_shift_keeps_every_draw_inside_it():
    weights = timestep_weights(TimestepShape(300, 700, distribution="cos_map"), COUNT)
    assert sum(weights[:300]) == sum(weights[700:]) == 0 and sum(weights) == pytest.approx(1)
    biased = timestep_weights(TimestepShape(300, 700, distribution="cos_map", favour="later", multiplier=3.0), COUNT)
    assert biased[650] / biased[450] == pytest.approx(3 * weights[650] / weights[450])  # a bias multiplies a shape


@pytest.mark.parametrize(("values", "message"), [
    ({"timestep_shift": 0}, "--timestep-shift: must be above 0"),
    ({"noising_weight": 2.0}, "--noising-weight: --timestep-distribution uniform has no shape to set"),
    ({"timestep_distribution": "cos_map", "noising_bias": 0.2}, "--noising-bias: --timestep-distribution cos_map"),
    ({"timestep_distribution": "heavy_tail", "noising_weight": 2.0}, "--noising-weight: heavy_tail needs it in"),
    ({"timestep_distribution": "logit_normal", "noising_weight": -1.0}, "--noising-weight: logit_normal's spread"),
    ({"timestep_distribution": "inverted_parabola", "noising_weight": 50.0, "noising_bias": 2.0},
     "--noising-bias: inverted_parabola's peak at 2.5"),
])
def test_wrong_settings_are_refused_in_one_line(values, message):
    with pytest.raises(LowvramError, match=message) as caught:
        build_config({"model": "tiny", "data": "sample", **values})
    assert len(str(caught.value).splitlines()) == 1


def test_a_shaped_run_trains(tmp_path):
    result = train(run_config(output=str(tmp_path), max_steps=2, timestep_distribution="logit_normal",
                              noising_weight=0.2, timestep_shift=1.5))
    assert result.lora_path.is_file()
