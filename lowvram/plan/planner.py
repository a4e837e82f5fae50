"""The planner: enumerate memory strategies, keep those whose every phase fits the budget and that have been
seen training on a GPU, pick the fastest predicted, explain the choice; when nothing fits, find the smallest
change that would. A storage format the user names explicitly may be unverified: it runs, with a warning."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

from lowvram.formats import PLANNED_FORMATS, network_refusal
from lowvram.hardware import GIB, Hardware, gib
from lowvram.models.families import FAMILIES
from lowvram.optim import PLANNED_OPTIMIZERS
from lowvram.plan.calibration import full_size, is_verified, seen_in_bf16
from lowvram.plan.estimate import VRAM_SAFETY, Estimate, MemoryStrategy, Workload, checkpoint_unit_count, estimate
from lowvram.resolve import NATIVE_FORMAT


@dataclass
class Plan:
    workload: Workload
    hardware: Hardware
    candidates: list[Estimate]  # fastest predicted first
    choice: Estimate | None
    explanation: str
    suggestions: list[str]

    @property
    def budget(self) -> int:
        return plan_budget(self.hardware)


def strategies(work: Workload, fixed: dict) -> list[MemoryStrategy]:
    """Every strategy the planner may choose, restricted to the user's explicit choices (`fixed`): no
    checkpointing and all of it (selective checkpointing is added per budget by `estimates`)."""
    formats = [fixed["unet_weights"]] if fixed.get("unet_weights") else [
        name for name in (work.native_format, *PLANNED_FORMATS) if not network_refusal(work.network, name)]
    if fixed.get("checkpoint_blocks"):
        checkpointing = [(True, fixed["checkpoint_blocks"])]
    elif "gradient_checkpointing" in fixed:
        checkpointing = [(fixed["gradient_checkpointing"], None)]
    else:
        checkpointing = [(False, None), (True, None)]
    optimizers = [fixed["optimizer"]] if fixed.get("optimizer") else list(PLANNED_OPTIMIZERS)
    return [MemoryStrategy(f, c, o, units) for f, (c, units), o in itertools.product(formats, checkpointing, optimizers)]


def estimates_for(work: Workload, hardware: Hardware, fixed: dict) -> list[Estimate]:
    """The estimate of every strategy, plus, where the planner chooses checkpointing and a budget lies between
    none and all of it, the fewest checkpointed units that fit: a 12 GB card then recomputes little or nothing,
    a 6 GB card a few blocks."""
    found = [estimate(work, s, hardware) for s in strategies(work, fixed)]
    if "gradient_checkpointing" in fixed or fixed.get("checkpoint_blocks"):
        return found
    for full in [e for e in found if e.strategy.gradient_checkpointing and e.fits(hardware)]:
        without = replace(full.strategy, gradient_checkpointing=False)
        if any(e.strategy == without and e.fits(hardware) and (e.verified is not False or full.verified is False)
               for e in found):
            continue  # nothing need be recomputed, unless only the checkpointed strategy may be chosen
        fewest = fewest_units(work, hardware, full.strategy)
        if fewest is not None:
            found.append(fewest)
    return found


def fewest_units(work: Workload, hardware: Hardware, strategy: MemoryStrategy) -> Estimate | None:
    """The estimate with the fewest checkpointed units that fits (activations fall as units are added, so a
    bisection finds it); None when only all of them fit."""
    low, high = 1, checkpoint_unit_count(work.family) - 1  # high: the most units short of all
    best = None
    while low <= high:
        middle = (low + high) // 2
        candidate = estimate(work, replace(strategy, checkpoint_units=middle), hardware)
        if candidate.fits(hardware):
            best, high = candidate, middle - 1
        else:
            low = middle + 1
    return best


def plan(work: Workload, hardware: Hardware, fixed: dict | None = None, suggest: bool = True,
         seen_only: bool = True) -> Plan:
    """The fastest strategy that fits, among those a GPU result shows training unless `seen_only` is off (what the
    GPU proof measures: the picks once each is seen)."""
    fixed = fixed or {}
    estimates = estimates_for(work, hardware, fixed)
    estimates.sort(key=lambda e: (e.speed, e.peak_vram("training"), e.peak_vram()))
    explicit = bool(fixed.get("unet_weights")) or not seen_only  # the user's own format runs unverified (warned)
    # the user's own --checkpoint-blocks is seen where the rest of the strategy is, with every block recomputed
    named_blocks = bool(fixed.get("checkpoint_blocks"))

    def seen_whole(e: Estimate) -> bool:
        s = e.strategy
        return named_blocks and is_verified(work.family, s.unet_weights, True, s.optimizer, work.mixed_precision)

    def bf16_seen(e: Estimate) -> bool:  # (a card without bf16: seen in bf16 is the nearest there is)
        s = e.strategy
        return work.mixed_precision != "bf16" and seen_in_bf16(
            work.family, s.unet_weights, True if named_blocks else _checkpointing(s), s.optimizer)

    def allowed(e: Estimate) -> bool:  # (warned, where unverified)
        return e.verified is not False or explicit or seen_whole(e) or named_blocks and bf16_seen(e)

    # seen ones first: a setting the user names fixes that setting alone, not the others (the GPU proof's plan,
    # not seen only, takes the fastest of all)
    fits = [e for e in estimates if e.fits(hardware)]
    tiers = [lambda e: e.verified is not False, seen_whole, lambda e: allowed(e) and bf16_seen(e)] if seen_only else []
    admitted = next((tier for tier in tiers if any(tier(e) for e in fits)), allowed)
    fitting = [e for e in fits if admitted(e)]
    if fitting:
        choice = fitting[0]
        faster = [e for e in estimates if e.speed < choice.speed]
        # (said seen only where each one it chose among is; the user's own flags may let an unseen one in)
        narrowed = len(fitting) < len(fits)
        in_bf16 = narrowed and all(e.verified is False and bf16_seen(e) for e in fitting)
        all_whole = narrowed and all(e.verified is False and seen_whole(e) for e in fitting)
        seen = (f" and {'were' if len(fitting) > 1 else 'was'} seen training on a GPU" + " in bf16" * in_bf16
                + " with every block recomputed" * (all_whole or in_bf16 and named_blocks)
                if in_bf16 or all_whole or narrowed and all(e.verified is not False for e in fitting) else "")
        why = (f"the fastest predicted of {len(fitting)} strategies that fit{seen}" if len(fitting) > 1
               else f"the one strategy that fits{seen}")
        if choice.verified is False:  # the user's own flags asked for it
            why += (f" (unverified with {choice.strategy.checkpoint_units} blocks recomputed" if all_whole
                    else " (unverified: GPU results show it only with every block recomputed" if seen_whole(choice)
                    else f" (unverified in {NATIVE_FORMAT[work.mixed_precision]}"
                + ("" if in_bf16 else ": GPU results show it in bf16") if bf16_seen(choice)
                else " (unverified: no GPU result shows it training"
            ) + "; it runs with a warning)"
        if faster:
            over = faster[0]
            reason = ("has not been seen training on a GPU" if over.fits(hardware)
                      else f"needs {gib(over.peak_vram())} GiB in {over.limiting_phase}"
                      if over.peak_vram() > plan_budget(hardware)
                      else f"needs {over.peak_host() / GIB:.1f} GiB of host RAM")
            why += f"; {over.strategy.label} would be faster but {reason}"
            budget = plan_budget(hardware)
            # the fastest of those markedly faster and only just over the budget: a little VRAM freed (a browser, a
            # lower rank) takes it
            near = next((e for e in faster if admitted(e) and budget < e.peak_vram() <= 1.1 * budget
                         and choice.speed >= 1.1 * e.speed
                         and (not hardware.host_ram or e.peak_host() <= hardware.host_ram)), None)
            if near is not None and near is not over:
                why += (f"; {near.strategy.label} would be {choice.speed / near.speed:.2f}x as fast and needs "
                        f"{gib(near.peak_vram())} GiB, {max(1, round((near.peak_vram() - budget) / 2**20))} MiB over "
                        f"the {gib(budget)} GiB budget: a lower --rank, or VRAM freed, may fit it")
        explanation = f"chose {choice.strategy.label}: {why}"
        return Plan(work, hardware, estimates, choice, explanation, [])
    unverified = [e for e in estimates if e.fits(hardware)]
    seen_in_bf16_only = [e for e in unverified if bf16_seen(e)]
    if seen_in_bf16_only:
        choice = seen_in_bf16_only[0]
        precision = NATIVE_FORMAT[work.mixed_precision]  # fp32 for "no"
        explanation = (f"chose {choice.strategy.label}: no GPU result shows {precision} training yet, so the "
                       f"fastest predicted of {len(seen_in_bf16_only)} strategies that fit and were seen training "
                       f"on a GPU in bf16; this card trains it in {precision}"
                       + " mixed precision" * (precision != "fp32") + ", unverified (a warning says so)")
        return Plan(work, hardware, estimates, choice, explanation, [])
    if unverified:
        first = unverified[0].strategy
        # (where a seen one fits the GPU, host RAM is what rules it out)
        ram = any(e.verified and e.peak_vram() <= plan_budget(hardware) for e in estimates)
        explanation = (f"nothing seen training {FAMILIES[full_size(work.family)].title} on a GPU fits "
                       f"{gib(plan_budget(hardware))} GiB"
                       f"{f' and {hardware.host_ram / GIB:.1f} GiB of host RAM' if ram else ''}; {len(unverified)} "
                       f"unverified strategies would (the fastest: {first.label})")
        # a change that a seen strategy then fits (a lower rank) comes before running an unseen one
        seen_with = smallest_changes(work, hardware, fixed, seen_only=True) if suggest else []
        return Plan(work, hardware, estimates, None, explanation, seen_with + (
            [f"{strategy_flags(first)} (runs it unverified, with a warning)"] if suggest else []))
    leanest = leanest_first(estimates, hardware)[0]
    if leanest.peak_vram() <= plan_budget(hardware):  # only host RAM is short
        explanation = (f"nothing fits {hardware.host_ram / GIB:.1f} GiB of host RAM: the leanest strategy that fits "
                       f"the GPU ({leanest.strategy.label}) needs {leanest.peak_host() / GIB:.1f} GiB")
        explanation += _swap_takes_loading(leanest, work, hardware, fixed)
    else:
        explanation = (f"nothing fits {gib(plan_budget(hardware))} GiB: the leanest strategy "
                       f"({leanest.strategy.label}) needs {gib(leanest.peak_vram())} GiB in "
                       f"{leanest.limiting_phase}")
    return Plan(work, hardware, estimates, None, explanation,
                smallest_changes(work, hardware, fixed) if suggest else [])


def _swap_takes_loading(leanest: Estimate, work: Workload, hardware: Hardware, fixed: dict) -> str:
    """Where only loading the model is short of host RAM (a passing peak, which swap takes): how much swap, and the
    --ram that then plans a strategy seen training; "" where training is short of it too."""
    steps = leanest.peak_host([phase for phase in leanest.host if phase != "loading"])
    if steps > hardware.host_ram:
        return ""
    for candidate in leanest_first(plan(work, replace(hardware, host_ram=0), fixed, suggest=False).candidates,
                                   hardware):
        ram = _gib_up(candidate.peak_host())
        chosen = plan(work, replace(hardware, host_ram=int(ram * GIB)), fixed, suggest=False).choice
        if chosen is not None:
            doctor = "" if hardware.source.startswith("profile") else " (lowvram doctor shows this machine's swap)"
            # (--ram's too: it stands for this machine's RAM and swap, as the clause says to give it)
            # (a need, not a finding: "with 2.7 GiB of swap free" read as this machine's, which had none)
            return (f" to load the model, {steps / GIB:.1f} GiB to train; swap takes a loading peak (slowly): given "
                    f"{_gib_up(ram * GIB - hardware.host_ram):.1f} GiB of free swap (a swap file adds it), --ram "
                    f"{ram:g}GB (RAM and swap) "
                    f"plans {chosen.strategy.label} and trains with it{doctor}")
    return f" to load the model, {steps / GIB:.1f} GiB to train"


def leanest_first(estimates: list[Estimate], hardware: Hardware) -> list[Estimate]:
    """Where nothing fits: those that fit the GPU, least host RAM first (only host RAM is short), else every one,
    least VRAM first."""
    in_vram = [e for e in estimates if e.peak_vram() <= plan_budget(hardware)]
    if in_vram:
        return sorted(in_vram, key=lambda e: (e.peak_host(), e.peak_vram()))
    return sorted(estimates, key=lambda e: e.peak_vram())


def _checkpointing(strategy: MemoryStrategy) -> bool | int:
    return strategy.checkpoint_units if strategy.selective else strategy.gradient_checkpointing


def strategy_flags(strategy: MemoryStrategy) -> str:
    return f"--unet-weights {strategy.unet_weights} {checkpointing_flags(strategy)} --optimizer {strategy.optimizer}"


def checkpointing_flags(strategy: MemoryStrategy) -> str:
    if strategy.selective:
        return f"--checkpoint-blocks {strategy.checkpoint_units}"
    return f"--{'' if strategy.gradient_checkpointing else 'no-'}gradient-checkpointing"


def plan_budget(hardware: Hardware) -> int:
    """The VRAM a plan may use: what is free, less the margin kept below it."""
    return max(hardware.free_vram - VRAM_SAFETY, 0)


def smallest_changes(work: Workload, hardware: Hardware, fixed: dict, seen_only: bool = False) -> list[str]:
    """Single changes that would make some strategy fit, least disruptive first; one that only an unverified
    strategy then fits names its flags (left out under `seen_only`)."""
    def fits(w: Workload, h: Hardware = hardware, f: dict = fixed) -> str | None:
        """None when the change fits nothing; else what to add to its line ("" when a seen strategy fits)."""
        changed = plan(w, h, f, suggest=False)
        if changed.choice is not None:
            return ""
        first = next((e.strategy for e in changed.candidates if e.fits(h)), None)
        return None if first is None or seen_only else f", with {strategy_flags(first)} (unverified, runs with a " \
            "warning)"

    found = []
    if fixed and (how := fits(work, f={})) is not None:
        given = ", ".join(f"--{'no-' * (value is False)}{name.replace('_', '-')}"
                          + ("" if isinstance(value, bool) else f" {value}") for name, value in fixed.items())
        found.append(f"leave {given} to the planner ({'it rules' if len(fixed) == 1 else 'they rule'} out every "
                     f"strategy {'seen training ' * seen_only}that fits){how}")
    # the largest batch that fits (a seen strategy's first) and keeps the effective batch with accumulation: batch 1
    # alone was named where 4 of 8 fitted
    unverified = None
    for batch in (batch for batch in range(work.batch - 1, 0, -1) if work.batch % batch == 0):
        if (how := fits(replace(work, batch=batch))) == "":
            break
        unverified = unverified or ((batch, how) if how is not None else None)
    else:
        batch, how = unverified or (0, None)
    if how is not None:
        times = work.batch // batch
        found.append(f"--batch-size {batch} (with {times} times the --gradient-accumulation, for the same effective "
                     f"batch){how}")
    if work.train_text_encoder and (how := fits(replace(work, train_text_encoder=False))) is not None:
        found.append("the U-Net's adapters only (drop --train-text-encoder, or kohya's network_train_unet_only = "
                     f"true): the text encoders then run once, for the cache, and leave the GPU{how}")
    if work.sampling and (how := fits(replace(work, sampling=False))) is not None:
        found.append(f"drop --sample-prompt (sampling at the end is the phase that does not fit){how}")
    # the largest rank that fits, before a lower resolution: it offered rank 8 where 128 fitted, then a style LoRA
    # at half its resolution
    for rank in [2 ** power for power in range(10, 1, -1) if 2 ** power < work.rank]:
        # (a --conv-rank left unset follows --rank: it stayed at 320 here, so rank 128 fitted nothing; a --conv-rank
        # given stays as given)
        if (how := fits(replace(work, rank=rank))) is not None:
            found.append(f"--rank {rank}{how}")
            break
    for resolution in range(work.resolution - 64, max(255, work.resolution // 2 - 1), -64):
        if (how := fits(replace(work, resolution=resolution))) is not None:
            found.append(f"--resolution {resolution}{how}")
            break
    if work.cache_batch_size > 1 and (how := fits(replace(work, cache_batch_size=1))) is not None:
        found.append(f"--cache-batch-size 1{how}")
    # a bigger GPU or more host RAM: the least that makes one strategy fit, with the other as it is where it can be
    candidates = plan(work, hardware, fixed, suggest=False).candidates
    on_gpu = [e for e in candidates if e.peak_vram() + VRAM_SAFETY <= hardware.free_vram]
    in_ram = [e for e in candidates if not hardware.host_ram or e.peak_host() <= hardware.host_ram]
    if not on_gpu:
        leanest = min(candidates, key=lambda e: e.peak_vram())
        least_in_ram = min(in_ram, key=lambda e: e.peak_vram()) if in_ram else leanest
        # the least GPU with this host RAM, then (where host RAM rules the leaner ones out) the least with more RAM
        for least in [least_in_ram] + [leanest] * (leanest is not least_in_ram):
            gpu, ram = _gib_up(least.peak_vram() + VRAM_SAFETY), _gib_up(least.peak_host())
            more_ram = bool(hardware.host_ram) and least.peak_host() > hardware.host_ram
            bigger = replace(hardware, free_vram=int(gpu * GIB), host_ram=hardware.host_ram and max(
                hardware.host_ram, int(ram * GIB)))
            if (how := fits(work, bigger)) is not None:
                found.append(f"a GPU with at least {gpu:.1f} GiB free"
                             + (f" and at least {ram:.1f} GiB of host RAM (--ram)" if more_ram else "") + how)
    elif not {id(e) for e in on_gpu} & {id(e) for e in in_ram}:
        # the least host RAM a strategy seen training then fits, else the least any fits
        ways = [(ram, how) for ram in sorted({_gib_up(e.peak_host()) for e in on_gpu})
                if (how := fits(work, replace(hardware, host_ram=int(ram * GIB)))) is not None]
        if ways:
            ram, how = next(((ram, how) for ram, how in ways if how == ""), ways[0])
            found.append(f"at least {ram:.1f} GiB of host RAM (--ram){how}")
    return found


def _gib_up(size: float) -> float:
    """GiB to one decimal, rounded up: a 4.13 GiB need is no 4.1 GiB card's."""
    return math.ceil(size / GIB * 10 - 1e-9) / 10
