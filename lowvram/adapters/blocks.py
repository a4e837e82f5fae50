"""Per-block ranks and learning rates of the U-Net's adapters, as kohya's LoRA network sets them (its network_args
block_dims, block_alphas, conv_block_dims, conv_block_alphas, down_lr_weight, mid_lr_weight, up_lr_weight).

Blocks are numbered as kohya numbers them (`ModelFamily.blocks`): for SD1.5 IN00-IN11, M00, OUT00-OUT11, where
the input block of `down_blocks.i.resnets.j` is 3i + j + 1 and its downsampler 3i + 3; SDXL the same with its time
embedding first, three middle parts (resnet, attention, resnet) and its output layers last. A layer's rank, alpha
and learning-rate weight are its block's; a rank or a weight of 0 leaves the block's layers without adapters.
Plain Python (no torch): the config checks and the planner read it too.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from lowvram.config import NetworkConfig
from lowvram.errors import LowvramError

# NetworkConfig's per-block fields, by the name of the kohya network argument each one is
BLOCK_OPTIONS = {"block_ranks": "block_dims", "block_alphas": "block_alphas", "conv_block_ranks": "conv_block_dims",
                 "conv_block_alphas": "conv_block_alphas", "down_lr_weight": "down_lr_weight",
                 "mid_lr_weight": "mid_lr_weight", "up_lr_weight": "up_lr_weight"}
LR_WEIGHT_SHAPES = ("cosine", "sine", "linear", "reverse_linear", "zeros")  # kohya's named down/up weight curves
_SIDE_BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(\.|$)")
_MID_BLOCK = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)(\.|$)")


@dataclass(frozen=True)
class BlockLayout:
    """kohya's numbering of a U-Net's blocks, which its per-block ranks and learning rates (block_dims,
    down_lr_weight, mid_lr_weight, up_lr_weight) count in: `leading` entries before the input blocks (SDXL's time
    embedding), the input blocks (IN00 is conv_in), the middle block's parts, the output blocks, and `trailing`
    entries after them (SDXL's output layers). Only the input, middle and output blocks hold adapted layers."""

    leading: int
    down: int
    mid: int
    up: int
    trailing: int

    @property
    def size(self) -> int:
        return self.leading + self.down + self.mid + self.up + self.trailing

    def names(self) -> list[str]:
        """Names for messages: IN, M and OUT numbered as kohya and the block-weight tools number them."""
        return (["EMB"] * self.leading + [f"IN{i:02d}" for i in range(self.down)]
                + [f"M{i:02d}" for i in range(self.mid)] + [f"OUT{i:02d}" for i in range(self.up)]
                + ["FINAL"] * self.trailing)


def block_of(path: str, layout: BlockLayout) -> int | None:
    """The kohya block number of the U-Net module at `path` (diffusers naming); None outside the input, middle
    and output blocks (conv_in, the time embedding, conv_out), which kohya never adapts."""
    side = _SIDE_BLOCK.match(path)
    if side:
        direction, i, kind, j = side.group(1), int(side.group(2)), side.group(3), int(side.group(4))
        within = 3 * i + (2 if kind.endswith("samplers") else j)  # a resampler shares the last block of its level
        return layout.leading + 1 + within if direction == "down" else layout.leading + layout.down + layout.mid + within
    mid = _MID_BLOCK.match(path)
    if mid:
        part = 0 if layout.mid == 1 else 2 * int(mid.group(2)) + (mid.group(1) == "attentions")
        return layout.leading + layout.down + part
    return None


def parse_values(text: str, flag: str, integer: bool = False) -> tuple[float, ...]:
    """'4,8,8' -> (4, 8, 8); a one-line error naming `flag` for anything else, or a negative value."""
    try:
        values = tuple((int if integer else float)(item.strip()) for item in text.split(","))
    except ValueError:
        kind = "whole numbers" if integer else "numbers"
        raise LowvramError(f"{flag}: {text!r} is not comma-separated {kind} (e.g. 4,4,8)") from None
    if any(v < 0 or not math.isfinite(v) for v in values):
        raise LowvramError(f"{flag}: {text!r} holds a negative value; use 0 for a block without adapters")
    return values


def check_syntax(network: NetworkConfig) -> list[str]:
    """The problems of the block options that need no model family: values that are not numbers, and a
    --conv-block-* without adapted convolutions."""
    problems = []
    for flag, text, integer in _block_options(network):
        try:
            if text is not None:
                check_value(flag, text, integer)
        except LowvramError as exc:
            problems.append(str(exc))
    for flag, text in (("--conv-block-ranks", network.conv_block_ranks),
                       ("--conv-block-alphas", network.conv_block_alphas)):
        if text is not None and network.lora_layers != "full":
            problems.append(f"{flag}: only --lora-layers full adapts the 3x3 convolutions; add it or drop {flag}")
    return problems


def check_value(flag: str, text: str, integer: bool) -> None:
    """Raise a one-line LowvramError naming `flag` if `text` is not a list of numbers (or, for a learning-rate
    weight, one of kohya's curves)."""
    if flag.endswith(("lr-weight", "lr_weight")):
        try:
            if _shape(text):
                return
        except LowvramError as exc:
            raise LowvramError(f"{flag}: {exc}") from None
        try:
            parse_values(text, flag, integer)
        except LowvramError as exc:  # ('cosin': a curve's name mistyped, which the numbers' message did not name)
            near = difflib.get_close_matches(text.strip().partition("+")[0], LR_WEIGHT_SHAPES, n=1)
            raise LowvramError(f"{exc}, or a curve: {', '.join(LR_WEIGHT_SHAPES)}"
                               + (f" (did you mean {near[0]}?)" if near else "")) from None
        return
    parse_values(text, flag, integer)


def _block_options(network: NetworkConfig) -> list[tuple[str, str | None, bool]]:
    """(flag, its text, whether it holds whole numbers) of each per-block option."""
    return [("--" + name.replace("_", "-"), getattr(network, name), name.endswith("ranks")) for name in BLOCK_OPTIONS]


def sets_blocks(network: NetworkConfig) -> bool:
    return any(getattr(network, name) is not None for name in BLOCK_OPTIONS)


def kohya_block_args(network: NetworkConfig) -> dict[str, str]:
    """The per-block options set, as kohya's network_args (its metadata's ss_network_args records them)."""
    args = {kohya: getattr(network, name) for name, kohya in BLOCK_OPTIONS.items()
            if getattr(network, name) is not None}
    if network.block_lr_zero_threshold and sets_blocks(network):
        args["block_lr_zero_threshold"] = f"{network.block_lr_zero_threshold:g}"
    return args


def _shape(text: str) -> tuple[str, float] | None:
    """kohya's named weight curve ('sine', 'cosine+0.5'): (name, the base added to it); None for numbers."""
    name, _, base = text.strip().partition("+")
    if name not in LR_WEIGHT_SHAPES:
        return None
    try:
        return name, float(base or 0)
    except ValueError:
        raise LowvramError(f"{text!r}: the part after + is the base added to the curve, a number (e.g. "
                           f"{name}+0.5)") from None


@dataclass(frozen=True)
class BlockPlan:
    """The rank and alpha of each block's layers (linear and 1x1 layers; 3x3 convolutions), and the
    learning-rate weight of each block, resolved for one model family."""

    layout: BlockLayout
    ranks: tuple[int, ...]
    alphas: tuple[float, ...]
    conv_ranks: tuple[int, ...]
    conv_alphas: tuple[float, ...]
    lr_weights: tuple[float, ...]

    def rank_alpha(self, path: str, spatial: bool) -> tuple[int, float] | None:
        """(rank, alpha) of the layer at `path`; None outside the numbered blocks (the run's own then apply)."""
        block = block_of(path, self.layout)
        if block is None:
            return None
        if not self.lr_weights[block]:
            return 0, 0.0
        return ((self.conv_ranks[block], self.conv_alphas[block]) if spatial
                else (self.ranks[block], self.alphas[block]))

    def lr_weight(self, path: str) -> float:
        block = block_of(path, self.layout)
        return 1.0 if block is None else self.lr_weights[block]

    def largest_ranks(self) -> tuple[int, int]:
        """The largest rank of the linear layers and of the 3x3 convolutions in a trained block."""
        trained = [i for i, weight in enumerate(self.lr_weights) if weight]
        return (max((self.ranks[i] for i in trained), default=0), max((self.conv_ranks[i] for i in trained), default=0))


def block_plan(network: NetworkConfig, layout: BlockLayout, family_title: str) -> BlockPlan | None:
    """The per-block settings `network` asks for, for a family's block layout; None when it sets none. Raises a
    one-line LowvramError for a list of the wrong length."""
    if not sets_blocks(network):
        return None
    conv_rank, conv_alpha = network.conv_rank_alpha
    # kohya's defaults: every block at the run's rank and alpha (so a block of lower rank scales its update up)
    ranks = _per_block(network.block_ranks, "--block-ranks", layout, family_title, network.rank, integer=True)
    alphas = _per_block(network.block_alphas, "--block-alphas", layout, family_title, network.resolved_alpha)
    conv_ranks = _per_block(network.conv_block_ranks, "--conv-block-ranks", layout, family_title, conv_rank,
                            integer=True)
    conv_alphas = _per_block(network.conv_block_alphas, "--conv-block-alphas", layout, family_title, conv_alpha)
    # an alpha of 0 is its block's rank, as kohya's LoRAModule reads it (a scale of 1, not of 0)
    alphas = tuple(alpha or float(rank) for alpha, rank in zip(alphas, ranks))
    conv_alphas = tuple(alpha or float(rank) for alpha, rank in zip(conv_alphas, conv_ranks))
    # kohya's block_lr_zero_threshold: a block weighted at or below it is left out (kohya's default 0 drops 0), in
    # the groups given weights; the others stay at 1 whatever the threshold
    weights: tuple[float, ...] = ()
    for text, flag, size in ((network.down_lr_weight, "--down-lr-weight", layout.down),
                             (network.mid_lr_weight, "--mid-lr-weight", layout.mid),
                             (network.up_lr_weight, "--up-lr-weight", layout.up)):
        group = _lr_weights(text, flag, size)
        weights += group if text is None else tuple(w if w > network.block_lr_zero_threshold else 0.0 for w in group)
    return BlockPlan(layout, tuple(int(r) for r in ranks), alphas, tuple(int(r) for r in conv_ranks), conv_alphas,
                     (1.0,) * layout.leading + weights + (1.0,) * layout.trailing)


def varied_rate_flags(network: NetworkConfig) -> list[str]:
    """The per-block learning-rate weights that give a block a rate other than the run's (a weight of 0 leaves the
    block out, which gives it no rate at all); a list of the wrong form is check_syntax's to name."""
    varied = []
    for text, flag in ((network.down_lr_weight, "--down-lr-weight"), (network.mid_lr_weight, "--mid-lr-weight"),
                       (network.up_lr_weight, "--up-lr-weight")):
        try:
            weights = _lr_weights(text, flag, 25) if text is not None else ()
        except LowvramError:
            continue
        if {w if w > network.block_lr_zero_threshold else 0.0 for w in weights} - {0.0, 1.0}:
            varied.append(flag)
    return varied


def _per_block(text: str | None, flag: str, layout: BlockLayout, family_title: str, default: float,
               integer: bool = False) -> tuple[float, ...]:
    """One value per block: the list given, one value for every block (alphas), or `default` everywhere."""
    if text is None:
        return (default,) * layout.size
    values = parse_values(text, flag, integer)
    if len(values) == 1 and not integer:
        return values * layout.size
    if len(values) != layout.size:
        names = layout.names()
        raise LowvramError(f"{flag}: {len(values)} values given; {family_title} has {layout.size} blocks "
                           f"({', '.join(names[:3])}, ..., {names[-1]}): give one value for each")
    return values


def _lr_weights(text: str | None, flag: str, count: int) -> tuple[float, ...]:
    """kohya's down/mid/up_lr_weight for `count` blocks: a list (missing entries 1, as kohya pads them), one
    value for every block, or a named curve from the first block to the last."""
    if text is None:
        return (1.0,) * count
    try:
        shape = _shape(text)
    except LowvramError as exc:
        raise LowvramError(f"{flag}: {exc}") from None
    if shape:
        name, base = shape
        steps = [i / max(1, count - 1) for i in range(count)]
        curve = {"cosine": [math.sin(math.pi * s / 2) for s in reversed(steps)],
                 "sine": [math.sin(math.pi * s / 2) for s in steps],
                 "linear": steps, "reverse_linear": list(reversed(steps)), "zeros": [0.0] * count}[name]
        return tuple(v + base for v in curve)
    values = parse_values(text, flag)
    if len(values) == 1:
        return values * count
    if len(values) > count:
        raise LowvramError(f"{flag}: {len(values)} values given for {count} blocks; give at most {count}")
    return values + (1.0,) * (count - len(values))
