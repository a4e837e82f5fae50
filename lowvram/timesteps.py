"""How often each timestep is trained. Uniform over a range by default (kohya's --min_timestep, --max_timestep); a
portion of the range drawn more often with --timestep-bias (the diffusers SDXL example's strategy); or one of
OneTrainer's shapes with --timestep-distribution, shaped by --noising-weight and --noising-bias and moved by
--timestep-shift as OneTrainer's (and SD3's) shift moves it. Each is a weight per timestep, worked out once per run
from the shape's cumulative distribution, so the step samples it by its inverse CDF and never waits for the GPU.

Shapes, over the drawn range's share x in [0, 1] (0: its least noisy timestep):
    logit_normal       SD3's: sigmoid of a normal draw, mean --noising-bias, spread 1 + --noising-weight
    heavy_tail         SD3's mode sampling: x = 1 - u - W (cos^2(pi u / 2) - 1 + u) of a uniform u; W > 0 favours
                       the middle, W < 0 the ends; W in (-1, 1.75), where the map stays monotone
    cos_map            density 2 / (pi (1 - 2x + 2x^2)): twice as much in the middle as at the ends
    sigmoid            density rising as sigmoid(W (x - 0.5 - B)): W > 0 favours the noisy end
    inverted_parabola  density max(0, 2 - W (x - 0.5 - B)^2), peaked at 0.5 + B
Plain math, no torch: the config checker reads it too.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

TIMESTEP_DISTRIBUTIONS = ("uniform", "logit_normal", "heavy_tail", "cos_map", "sigmoid", "inverted_parabola")
SHAPED = ("logit_normal", "heavy_tail", "sigmoid", "inverted_parabola")  # those --noising-weight/-bias shape
HEAVY_TAIL_LIMITS = (-1.0, 1 / (math.pi / 2 - 1))  # where x(u) stays monotone (SD3's mode sampling)


@dataclass(frozen=True)
class TimestepShape:
    low: int | None = None  # --min-timestep
    high: int | None = None  # --max-timestep (exclusive)
    distribution: str = "uniform"
    weight: float = 0.0  # --noising-weight
    bias: float = 0.0  # --noising-bias
    shift: float = 1.0  # --timestep-shift
    favour: str = "none"  # --timestep-bias: none, earlier or later
    multiplier: float = 2.0  # --timestep-bias-multiplier
    portion: float = 0.25  # --timestep-bias-portion

    def is_uniform(self) -> bool:
        return self.distribution == "uniform" and self.shift == 1.0 and self.favour == "none"

    def span(self, count: int) -> tuple[int, int]:
        return self.low or 0, count if self.high is None else self.high


def timestep_weights(shape: TimestepShape, count: int) -> list[float]:
    """The chance of each of the schedule's `count` timesteps (summing to 1)."""
    low, high = shape.span(count)
    share = _cdf(shape)

    def below(timestep: float) -> float:  # P(drawn timestep < timestep): the shift's inverse, then the shape's CDF
        b = timestep / count
        unshifted = count * b / (shape.shift - (shape.shift - 1) * b)
        return share(min(1.0, max(0.0, (unshifted - low) / (high - low))))

    edges = [below(k) for k in range(count + 1)]
    weights = [max(0.0, b - a) for a, b in itertools.pairwise(edges)]
    if shape.favour != "none":
        favoured = max(1, int(shape.portion * (high - low)))
        chosen = range(low, low + favoured) if shape.favour == "earlier" else range(high - favoured, high)
        for k in chosen:
            weights[k] *= shape.multiplier
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else weights


def timestep_problem(shape: TimestepShape) -> str | None:
    """What is wrong with the shape's settings, in one line naming the option; None when nothing."""
    if shape.shift <= 0:
        return f"--timestep-shift: must be above 0 (1 leaves the timesteps as drawn), got {shape.shift:g}"
    if (shape.weight or shape.bias) and shape.distribution not in SHAPED:
        flag = "--noising-weight" if shape.weight else "--noising-bias"
        return (f"{flag}: --timestep-distribution {shape.distribution} has no shape to set; drop it or choose "
                f"{', '.join(SHAPED)}")
    if shape.distribution == "logit_normal" and shape.weight <= -1:
        return f"--noising-weight: logit_normal's spread is 1 + W, so W must be above -1, got {shape.weight:g}"
    if shape.distribution == "heavy_tail" and not HEAVY_TAIL_LIMITS[0] < shape.weight < HEAVY_TAIL_LIMITS[1]:
        return (f"--noising-weight: heavy_tail needs it in (-1, {HEAVY_TAIL_LIMITS[1]:.2f}), where its draw stays "
                f"monotone; got {shape.weight:g}")
    if shape.distribution == "inverted_parabola" and _cdf(shape)(1.0) <= 0:
        return (f"--noising-bias: inverted_parabola's peak at {0.5 + shape.bias:g} with --noising-weight "
                f"{shape.weight:g} leaves no timestep of the range any weight; bring it nearer 0")
    return None


def _cdf(shape: TimestepShape):
    """The shape's cumulative distribution over x in [0, 1] (for inverted_parabola, unnormalised)."""
    w, centre = shape.weight, 0.5 + shape.bias
    if shape.distribution == "logit_normal":
        spread = 1.0 + w

        def cdf(x: float) -> float:
            if x <= 0 or x >= 1:
                return float(x >= 1)
            return 0.5 * (1 + math.erf((math.log(x / (1 - x)) - shape.bias) / (spread * math.sqrt(2))))
        return cdf
    if shape.distribution == "heavy_tail":
        return lambda x: 1.0 - _heavy_tail_inverse(x, w)
    if shape.distribution == "cos_map":
        return lambda x: 0.5 + 2 / math.pi * math.atan(2 * x - 1)
    if shape.distribution == "sigmoid" and w:
        def integral(x: float) -> float:  # of sigmoid(w (x - centre)): softplus / w
            z = w * (x - centre)
            return (max(z, 0.0) + math.log1p(math.exp(-abs(z)))) / w
        return lambda x: (integral(x) - integral(0.0)) / (integral(1.0) - integral(0.0))
    if shape.distribution == "inverted_parabola":
        reach = math.sqrt(2 / w) if w > 0 else math.inf

        def integral(x: float) -> float:  # an antiderivative of max(0, 2 - w (x - centre)^2)
            z = min(max(x - centre, -reach), reach)
            return 2 * z - w * z**3 / 3
        total = integral(1.0) - integral(0.0)
        return lambda x: (integral(x) - integral(0.0)) / total if total > 0 else 0.0
    return lambda x: x  # uniform, and a sigmoid of no steepness


def _heavy_tail_inverse(x: float, w: float) -> float:
    """The u in [0, 1] at which 1 - u - w (cos^2(pi u / 2) - 1 + u) is x (the map falls from 1 to 0)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 1 - mid - w * (math.cos(math.pi * mid / 2) ** 2 - 1 + mid) > x:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
