"""Showing a plan: rich tables for people, a JSON document for programs."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lowvram.hardware import gib, precision_trouble
from lowvram.plan.calibration import graphs_measured
from lowvram.plan.estimate import PAGE_CACHE, PHASES, VRAM_SAFETY, Estimate
from lowvram.plan.planner import Plan, checkpointing_flags, leanest_first, plan_budget
from lowvram.resolve import NATIVE_FORMAT

SHOWN_PHASES = ("latent caching", "text caching", "training", "sampling")
VERIFIED = {True: "seen", False: "unverified", None: ""}
SHORT = {"latent caching": "latents", "text caching": "text", "training": "train", "sampling": "sample",
         "loading": "load", "saving": "save"}


def print_plan(result: Plan, console: Console, top: int = 12) -> None:
    work, hardware = result.workload, result.hardware
    rank = f"ranks up to {work.rank} (per block)" if work.per_block else f"rank {work.rank}"
    network = "LoRA" if work.network == "lora" else work.network  # the run's own line names it so too
    console.print(f"[bold]{work.family.title}[/] at {work.resolution}px, batch {work.batch}, {network} {rank}"
                  f"{' + text encoder' if work.train_text_encoder else ''} on [bold]{hardware.name}[/] "
                  f"({hardware.source}): budget {gib(result.budget)} GiB of {gib(hardware.total_vram)} GiB VRAM "
                  f"({gib(hardware.free_vram)} free, less {gib(VRAM_SAFETY)} kept spare), {gib(hardware.host_ram)} GiB "
                  f"host RAM ({hardware.host_ram_source}); computing in {NATIVE_FORMAT[work.mixed_precision]}"
                  + (" (the VAE in fp32: it overflows in fp16)" if work.vae_fp32 else "")
                  + (" (a --vram card is taken to have bf16, as Ampere and newer do: --mixed-precision fp16 plans "
                     "for a T4 or RTX 20xx, no for a GTX 16xx, --profile for a known card)"
                     if hardware.source == "--vram" and work.mixed_precision == "bf16" else ""))
    trouble = precision_trouble(work.mixed_precision, hardware) if hardware.fp16_fails else None
    if trouble:  # (the run says it too: said here before anyone plans a run that cannot train)
        console.print(f"[yellow]warning:[/] {trouble}", soft_wrap=True)
    rows = shown_candidates(result, top)
    phases = [p for p in SHOWN_PHASES if p != "sampling" or any(e.peak_vram(p) for e in rows)]  # no prompts: none
    table = Table(title="candidate strategies: peak VRAM per phase, host RAM (GiB), time per step relative to "
                        f"{work.native_format} weights, no checkpointing, adamw (1.00; lower is faster), whether a GPU "
                        "result shows it training")
    # on a narrow console the strategy's name wraps: a number cut to "10.…" would mislead
    table.add_column("strategy", overflow="fold", min_width=12)
    for column in ("fits", *[SHORT[p] for p in phases], "host", "time", "on GPU"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    for est in rows:
        fits = est.fits(hardware)
        style = "bold green" if est is result.choice else ("" if fits and est.verified is not False else "dim")
        # "chosen" in words: a log or a notebook cell shows no colour to tell the choice by
        table.add_row(est.strategy.label, "chosen" if est is result.choice else "yes" if fits else "no",
                      *[gib(est.peak_vram(phase)) for phase in phases], gib(est.peak_host()),
                      f"{est.speed:.2f}", VERIFIED[est.verified], style=style)
    console.print(table)
    if len(rows) < len(result.candidates):
        console.print(f"[dim]{len(result.candidates) - len(rows)} more strategies: lowvram plan --json lists every "
                      "one[/]")
    shown = result.choice or shown_candidates(result, 1)[0]
    console.print(breakdown(shown))
    console.print(host_breakdown(shown))
    console.print(f"latent caching: {shown.cache_batch_size} image(s) per VAE call"
                  + (", VAE in 512 px tiles (--vae-tiling)" if shown.vae_tiling else "")
                  + ("; samples decoded in 512 px tiles (whole, they would not fit)" if shown.sample_tiles
                     and not shown.vae_tiling else ""))
    if shown.compile_seconds is not None:
        console.print(f"--compile: the first step at each input shape (bucket size x batch size) compiles the "
                      f"blocks, about {shown.compile_seconds:.0f} s each ("
                      + ("measured on a GPU" if shown.compile_measured else "a prior, not yet measured on a GPU")
                      + "); a short run over many buckets may not win it back")
    if result.workload.cuda_graphs:
        console.print("--cuda-graphs: the replayed blocks' memory and speed-up are "
                      + ("measured on a GPU" if graphs_measured(result.workload.family)
                         else "priors, not yet measured on a GPU"))
    console.print(("[green]" if result.choice else "[red]") + result.explanation)
    for suggestion in result.suggestions:
        console.print(f"  would fit with: {suggestion}")
    if hardware.can_spill_vram:  # (a silent slow-down, where other cards run out: the plan is what avoids it)
        console.print("[yellow]note:[/] behind the Windows driver this card may spill into system RAM instead of "
                      "running out, every step then several times slower: set 'CUDA - Sysmem Fallback Policy' to "
                      "'Prefer No Sysmem Fallback' in the NVIDIA Control Panel, and close what else uses the GPU",
                      soft_wrap=True)
    console.print("[dim]activations are traced per model and scaled; the CUDA context, allocator slack, kernel "
                  "workspace and step-time ratios come from committed GPU results where measured "
                  "(lowvram/plan/calibration.json), priors elsewhere; only strategies seen training on a GPU are "
                  "chosen (in bf16, for a card without it, until an fp16 result exists), but for those your own "
                  "flags name[/]")


def choice_flags(est: Estimate, given: dict, config) -> list[str]:
    """The train flags that run the plan's choice, but for the strategy options the user gave (already in the line):
    what `train --auto` would set on that card, written out."""
    strategy, flags = est.strategy, []
    if "unet_weights" not in given:
        flags += ["--unet-weights", strategy.unet_weights]
    if not {"gradient_checkpointing", "checkpoint_blocks"} & set(given):
        flags += checkpointing_flags(strategy).split()
    if "optimizer" not in given:
        flags += ["--optimizer", strategy.optimizer]
    if est.cache_batch_size < config.data.cache_batch_size:
        flags += ["--cache-batch-size", str(est.cache_batch_size)]
    if est.vae_tiling and not config.memory.vae_tiling:
        flags.append("--vae-tiling")
    return flags


def shown_candidates(result: Plan, top: int) -> list[Estimate]:
    """The rows worth reading, fastest first: the choice and the next strategies that fit (and every one that fits
    and was seen training on a GPU), plus the fastest one, the fastest that fits (unverified) and the two just
    faster than the choice (what more VRAM, or a GPU result for an unverified one, would buy); when nothing is
    chosen, those that fit but were never seen on a GPU, else the leanest."""
    if result.choice is None:
        unverified = [e for e in result.candidates if e.fits(result.hardware)]  # fit, but never seen on a GPU
        leanest = unverified[:top] or leanest_first(result.candidates, result.hardware)[:top]
        return [e for e in result.candidates if e in leanest]
    chosen_at = result.candidates.index(result.choice)
    faster = result.candidates[:chosen_at]
    picked = faster[:1] + [e for e in faster if e.fits(result.hardware)][:1] + faster[1:][-2:]
    over = [e for i, e in enumerate(picked) if all(e is not other for other in picked[:i])]  # (one row each)
    fitting = [e for e in result.candidates[chosen_at:] if e.fits(result.hardware)]
    # every strategy the choice was made among (seen training on a GPU), past `top` too: the count it gives is read
    # against the table
    shown = fitting[:max(1, top - len(over))] + [e for e in fitting if e.verified]
    return [e for e in result.candidates if e in over or e in shown]


def breakdown(est: Estimate) -> Table:
    """Per-component bytes of every phase for one strategy."""
    title = f"{est.strategy.label}: VRAM per phase and component (GiB)"
    table = Table(title=title, min_width=len(title))  # a title wrapped mid-phrase reads badly
    table.add_column("component", no_wrap=True)
    # sampling only where there are prompts, as in the strategies' table
    phases = [p for p in PHASES if p in est.vram and (p != "sampling" or est.peak_vram(p))]
    for phase in phases:
        table.add_column(SHORT[phase], justify="right", no_wrap=True)
    used = [p for p in phases if est.peak_vram(p)]  # loading puts nothing on the GPU: no row of zeros says so
    components = list(dict.fromkeys(c for phase in used for c in est.vram[phase]))
    for component in components:
        cells = [gib(est.vram[p][component]) if p in used and component in est.vram[p] else "" for p in phases]
        table.add_row(component, *cells)
    table.add_row("[bold]total", *[f"[bold]{gib(est.peak_vram(p))}" if p in used else "[bold]none" for p in phases])
    return table


def host_breakdown(est: Estimate) -> Table:
    """Per-component host RAM of every phase for one strategy (loading peaks: the mapped checkpoint and, for a
    stored format, the converted U-Net beside it); under the total, the checkpoint's pages that stay resident
    but are given back under memory pressure."""
    title = f"{est.strategy.label}: host RAM per phase (GiB)"
    table = Table(title=title, min_width=len(title))
    table.add_column("component", no_wrap=True)
    phases = list(est.host)
    for phase in phases:
        table.add_column(SHORT.get(phase, phase), justify="right", no_wrap=True)
    components = list(dict.fromkeys(c for phase in phases for c in est.host[phase] if c != PAGE_CACHE))
    for component in components:
        table.add_row(component, *[gib(est.host[p][component]) if component in est.host[p] else "" for p in phases])
    table.add_row("[bold]total", *[f"[bold]{gib(sum(v for c, v in est.host[p].items() if c != PAGE_CACHE))}"
                                   for p in phases])
    if any(est.host[p].get(PAGE_CACHE) for p in phases):  # resident beside the total, as top shows it
        table.add_row(f"[dim]+ {PAGE_CACHE}", *[f"[dim]{gib(est.host[p][PAGE_CACHE])}" if est.host[p].get(PAGE_CACHE)
                                                 else "" for p in phases])
    return table


def print_cards(cards: list, console: Console) -> None:
    """`plan_cards` as one table: each card's pick (the first line of `lowvram plan --profile NAME`)."""
    work = next(card.plan.workload for card in cards if card.plan)
    rank = f"ranks up to {work.rank} (per block)" if work.per_block else f"rank {work.rank}"
    console.print(f"[bold]{work.family.title}[/] at {work.resolution}px, batch {work.batch}, "
                  f"{'LoRA' if work.network == 'lora' else work.network} {rank}"
                  f"{' + text encoder' if work.train_text_encoder else ''}: no CUDA GPU here, so the plan on each card "
                  "lowvram has a profile of", soft_wrap=True)
    table = Table(title="the fastest strategy that fits each card and was seen training on a GPU: peak VRAM in "
                        "training (GiB), time per step relative to weights in the computing format, no "
                        "checkpointing, adamw (1.00; lower is faster)")
    table.add_column("--profile", overflow="fold")
    for column in ("budget", "computing"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("strategy", overflow="fold")
    for column in ("train", "time"):
        table.add_column(column, justify="right", no_wrap=True)
    for card in cards:
        budget = gib(plan_budget(card.hardware))
        if card.plan is None:
            table.add_row(card.profile, budget, "", card.refused, "", "", style="dim")
            continue
        choice, computing = card.plan.choice, NATIVE_FORMAT[card.plan.workload.mixed_precision]
        if choice is None:
            fix = card.plan.suggestions[0] if card.plan.suggestions else ""
            table.add_row(card.profile, budget, computing, "nothing fits" + (f" (would with {fix})" if fix else ""),
                          "", "", style="dim")
            continue
        # (an fp16 card's pick, among those seen training in bf16, is itself unverified: said so)
        table.add_row(card.profile, budget, computing,
                      choice.strategy.label + (f" ({computing} unverified)" if choice.verified is False else ""),
                      gib(choice.peak_vram("training")), f"{choice.speed:.2f}")
    console.print(table)
    console.print("every phase and the train command on one card: lowvram plan ... --profile NAME, or --vram SIZE "
                  "for a card not listed", soft_wrap=True, highlight=False)


def cards_json(cards: list) -> dict:
    """`plan_cards` for programs: each card's plan (without its candidates); a card the options cannot run on with
    its reason, its hardware and no choice alike."""
    listed = []
    for card in cards:
        shown = ({key: value for key, value in plan_json(card.plan).items() if key != "candidates"} if card.plan
                 else {"hardware": _hardware_json(card.hardware, plan_budget(card.hardware)), "fits": False,
                       "choice": None})
        listed.append({"profile": card.profile, "refused": card.refused or None, **shown})
    return {"hardware": None, "fits": any(card.plan and card.plan.choice for card in cards), "cards": listed}


def _hardware_json(hardware, budget: int) -> dict:
    return {"name": hardware.name, "source": hardware.source, "total_vram": hardware.total_vram,
            "free_vram": hardware.free_vram, "budget": budget, "host_ram": hardware.host_ram}


def plan_json(result: Plan) -> dict:
    def one(est: Estimate) -> dict:
        return {"strategy": {"unet_weights": est.strategy.unet_weights,
                             "gradient_checkpointing": est.strategy.gradient_checkpointing,
                             "checkpoint_blocks": est.strategy.checkpoint_units,
                             "optimizer": est.strategy.optimizer, "cache_batch_size": est.cache_batch_size,
                             "vae_tiling": est.vae_tiling, "sample_tiles": est.sample_tiles},
                "fits": est.fits(result.hardware), "verified_on_gpu": est.verified,
                "relative_step_time": round(est.speed, 3), "compile_seconds_per_shape": est.compile_seconds,
                "peak_vram_bytes": est.peak_vram(), "peak_host_bytes": est.peak_host(),
                "peak_resident_host_bytes": est.peak_resident_host(),
                "limiting_phase": est.limiting_phase, "vram_bytes": est.vram, "host_bytes": est.host}

    work, hardware = result.workload, result.hardware
    return {
        "model_family": work.family.name, "resolution": work.resolution, "batch": work.batch, "rank": work.rank,
        "compute_dtype": NATIVE_FORMAT[work.mixed_precision], "vae_fp32": work.vae_fp32,
        "hardware": _hardware_json(hardware, result.budget),
        "fits": result.choice is not None, "choice": one(result.choice) if result.choice else None,
        "explanation": result.explanation, "suggestions": result.suggestions,
        "candidates": [one(e) for e in result.candidates],
    }
