"""The `lowvram` command: parse, build the config, call one function. Errors are one line each."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import io
import os
import re
import signal
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from lowvram.cli_parser import build_parser, utf8_text_arguments
from lowvram.config import (
    PLANNING_MODEL,
    as_flag_words,
    fields_by_name,
    flag_name,
)
from lowvram.config_checks import idle_option_notes, sample_prompt_notes
from lowvram.configure import (
    ALTERNATIVES,
    ASSUMED,
    build_config,
    is_own_toml,
    kohya_recipe,
    onetrainer_recipe,
    preset_path,
    read_config,
    read_toml,
    with_dataset_settings,
    with_preset_alpha,
    without_idle_kept_tags,
    without_preset_rates,
)
from lowvram.console import another_process, launched_processes, to_nowhere, unwritten_remedy, watched_output
from lowvram.errors import LowvramError, Refused, TrainingInterrupted, first_line, host_memory_ran_out, shell_line
from lowvram.files import MAX_FILE_NAME, expand_home, unwritable
from lowvram.hardware import parse_size
from lowvram.lora_header import FILE_NETWORK_OPTIONS, with_network_weights
from lowvram.models.families import FAMILIES
from lowvram.option_values import MAX_RESOLUTION, area_side, width_height

PACKAGE = Path(__file__).resolve().parent  # lowvram's own files: one missing is a broken install


def run_plan(args: argparse.Namespace, argv: list[str]) -> int:
    import json

    from lowvram.console import console as log_console
    from lowvram.hardware import hardware_for
    from lowvram.plan import plan_cards, plan_options, planning_values
    from lowvram.plan.report import cards_json, plan_json, print_cards, print_plan

    values = with_recipe_family(train_values(args), args.config)
    build_config(planning_values(values))  # option errors before looking at a GPU
    hardware = hardware_for(args.profile, args.vram, args.ram)
    console = log_console(stderr=args.json)
    if hardware.device != "cuda":  # none here and none named: which card the run needs
        cards = plan_cards(values, hardware.host_ram if args.ram else None)
        run = next(card.run for card in reversed(cards) if card.run)
        length = None if run.uses_sample_data else plan_dataset(run, console)
        if args.json:  # (each card's command, as the plan on that card gives it)
            shown = cards_json(cards)
            for listed, card in zip(shown["cards"], cards):
                listed["train_command"] = _train_line(argv, values, args.plan_only, card.plan, card.run.config) \
                    if card.plan else None
            print(json.dumps(shown | ({"run_length": length} if length else {}), indent=2))
        else:
            print_cards(cards, console)
        return 0 if any(card.plan and card.plan.choice for card in cards) else 1
    run, result = plan_options(values, hardware)
    config = run.config
    length = None if run.uses_sample_data else plan_dataset(run, console)
    line = _train_line(argv, values, args.plan_only, result, config)
    if args.json:
        print(json.dumps({**plan_json(result), "train_command": line} | ({"run_length": length} if length else {}),
                         indent=2))
    else:
        print_plan(result, console)
        if line:  # one physical line, as typed: a wrapped one would paste as several commands
            console.print(f"to train with {result.choice.strategy.label}: {shell_line(*line)}", soft_wrap=True,
                          markup=False, highlight=False)
    return 0 if result.choice else 1


def _train_line(argv: list[str], values: dict, plan_only: dict, result, config) -> list[str] | None:
    """The train command of the plan's choice: the options given, less plan's own, with the choice's flags; None
    where nothing fits."""
    from lowvram.plan import fixed_choices
    from lowvram.plan.report import choice_flags

    if not result.choice:
        return None
    chosen = choice_flags(result.choice, fixed_choices(values, config), config)
    replaced = {"--cache-batch-size": 1} if "--cache-batch-size" in chosen else {}  # (the user's, lowered to fit)
    return ["lowvram", "train", *train_words(argv, values, plan_only | replaced), *chosen]


def plan_dataset(run, console) -> dict:
    """Scan a real dataset, so its problems show up before the evening, and say how long the run is in steps and
    epochs, as training will count them (one process)."""
    from lowvram.data.cache_size import cache_room_problem, planned_cache_size
    from lowvram.data.check import scan_sets
    from lowvram.data.epochs import counted_epochs
    from lowvram.files import human_size
    from lowvram.train.schedule import folder_batches, plan_schedule, short_run_note

    config = run.config
    sets = scan_sets(run, Path(config.data.data), config.data.trigger_word, console)
    reports = sets.reports
    buckets = ", ".join(f"{shape} x{n}" for shape, n in reports[0].summary()["buckets"].items())
    passed = f", {reports[0].passed_over_count} in folders it passes over" if reports[0].passed_over_count else ""
    console.print(f"dataset {reports[0].root}: {len(reports[0].usable)} usable images, {len(reports[0].skipped)} "
                  f"skipped{passed} (details: lowvram check-data); buckets {buckets}", soft_wrap=True)
    epochs = counted_epochs(run, sets.training, sets.regularization)
    schedule = plan_schedule(config, epochs, 1)
    regularization = epochs.regularization_per_epoch  # (class images none of which trains add no steps)
    accumulation = config.training.gradient_accumulation
    console.print(f"run: {schedule.length(epochs.fractional)} steps ({epochs.images_per_epoch} images per epoch with "
                  f"repeats{' and regularization' * bool(regularization)}"
                  f"{f', {len(sets.held_out)} held out for validation' if sets.held_out else ''}; batch "
                  f"{config.training.batch_size}{folder_batches(run)}"
                  f"{f' x {accumulation} accumulated' * (accumulation > 1)}; on one GPU: under accelerate launch "
                  "each takes its share of the batches)",
                  soft_wrap=True, highlight=False)
    if short := short_run_note(config, run.family, schedule.total_steps):
        console.print(f"note: {short}", soft_wrap=True, highlight=False)
    size = planned_cache_size(run, sets)
    bound = "at most" if epochs.regularization_unused else "about"  # (class images no epoch draws are not cached)
    texts = f", {size.texts} caption embedding{'s' * (size.texts != 1)}" if size.texts else ""
    console.print(f"cache: {bound} {human_size(size.bytes)} on disk in {run.cache_dir} ({size.latents} latents{texts}), "
                  "written once and read by later runs of these images; --cache-dir puts it elsewhere",
                  soft_wrap=True, highlight=False)
    if short := cache_room_problem(run.cache_dir, size.bytes):  # (the run found it, after loading the model)
        console.print(f"[yellow]warning:[/] {short}; else the run keeps it in host RAM instead", soft_wrap=True,
                      highlight=False)
    return {"total_steps": schedule.total_steps, "steps_per_epoch": schedule.steps_per_epoch,
            "epochs": round(schedule.epochs, 3),
            "images_per_epoch": epochs.images_per_epoch, "cache_bytes": size.bytes}


def train_words(argv: list[str], values: dict, plan_only: dict[str, int]) -> list[str]:
    """`lowvram plan`'s words as train's: plan's own flags (`plan_only`: each with the values it takes) left out,
    placeholders for a model and a dataset it assumed (train needs them named)."""
    words, skip = [], 0
    for word in argv[argv.index("plan") + 1:]:
        if skip:
            skip -= 1
        elif word in plan_only:
            skip = plan_only[word]
        elif word.split("=", 1)[0] not in plan_only:
            words.append(word)
    return ([] if "model" in values else ["--model", "MODEL"]) + ([] if "data" in values else ["--data", "DIR"]) \
        + words


def auto_strategy(config, values: dict, vram: str | None, ram: str | None = None, words: Sequence[str] = ()):
    """train --auto: plan for the GPU present (capped by --vram, with --ram's host RAM) and apply the choice;
    explicit flags stay. `words`: the train command's, which plan takes as they are but --auto."""
    import dataclasses

    from lowvram.console import Console
    from lowvram.hardware import detect, parse_size
    from lowvram.plan import apply_choice, fixed_choices, plan, workload_for
    from lowvram.plan.estimate import context_bytes
    from lowvram.plan.report import print_plan
    from lowvram.resolve import resolve_run

    hardware = detect()
    if hardware.device != "cuda":  # (a full-size model's slowness there: the run warns of it, with --auto or not)
        if config.training.mixed_precision == "fp16":  # (refused next: it needs a GPU)
            return config
        precision = "bf16" if config.training.mixed_precision == "bf16" else "fp32"
        line = shell_line("lowvram", "plan", *[word for word in words if word != "--auto"]) if words else \
            f"lowvram plan --vram {vram}"  # (its model, dataset and --ram: what it plans for)
        cap = f" (`{line}` shows what it picks on such a card)" if vram else ""
        if not another_process():  # (each of accelerate launch's processes comes here alike)
            print(f"lowvram train: --auto: no CUDA GPU, so nothing to plan; training on the CPU in {precision}{cap}")
        return config
    if vram:
        budget = parse_size(vram, "--vram")
        hardware = dataclasses.replace(hardware, free_vram=min(hardware.free_vram, budget),
                                       source=f"{hardware.source}, held to --vram")
        # held to it, not only planned for: the rest of the card stays free for other programs (or a display)
        import torch

        # the process's own GPU: under `accelerate launch` each rank's (detect() read LOCAL_RANK), not GPU 0; the
        # cap holds PyTorch's allocator, the CUDA context comes on top of it (the plan counts it in the budget)
        allocator = max(budget - context_bytes(hardware), 0)
        torch.cuda.set_per_process_memory_fraction(min(1.0, allocator / hardware.total_vram), hardware.index)
    if ram:
        hardware = dataclasses.replace(hardware, host_ram=parse_size(ram, "--ram"))
    result = plan(workload_for(resolve_run(config, hardware)), hardware, fixed_choices(values, config))
    print_plan(result, Console(), top=6)
    if result.choice is None:
        raise LowvramError(f"--auto: {result.explanation}; " + "; ".join(result.suggestions))
    return apply_choice(config, result.choice)


def check_values(args: argparse.Namespace) -> dict:
    """Options for check-data: the [model] and [data] options of the preset, config and flags given (the
    model only for its resolution and buckets); the rest of a training config does not matter here."""
    known = fields_by_name()
    given = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "data" or v})  # else the config's
    unread = [name for name, (section, _, _) in known.items() if section not in ("model", "data")]
    values = {k: v for k, v in train_values(given, unread).items()
              if k == ASSUMED or known[k][0] in ("model", "data")}
    if not values.get("data"):
        raise LowvramError(f"the dataset is required: lowvram check-data DIR ({args.config} names none)")
    values.setdefault("model", PLANNING_MODEL)
    return with_recipe_family(values, getattr(args, "config", None))


def with_recipe_family(values: dict, config: Path | None) -> dict:
    """`values` with the family a kohya or OneTrainer config's recipe says, where its model is a hub id not known
    offline (runwayml/stable-diffusion-v1-5): all check-data and plan need of the model."""
    model = str(values.get("model") or "")
    recipe = (kohya_recipe(config) or onetrainer_recipe(config)) if config else None
    if recipe and recipe[0] is not None and model not in FAMILIES and not expand_home(model).exists() \
            and "model_family" not in values:
        from lowvram.models.detect import detect_family

        try:
            detect_family(model)  # (a hub id known offline, or found: its own family, as training reads it)
        except LowvramError:
            return values | {"model_family": "sdxl" if recipe[0] else "sd15"}
    return values


def run_caption(args: argparse.Namespace) -> int:
    from lowvram.caption import CaptionConfig, caption_dataset
    from lowvram.configure import options_from
    from lowvram.hardware import hardware_for
    from lowvram.resolve import default_cache_dir

    names = {f.name for f in dataclasses.fields(CaptionConfig)}
    config = options_from(CaptionConfig, {k: v for k, v in vars(args).items() if k in names})
    hardware = hardware_for(None, args.vram, None)
    if args.vram and not args.dry_run:
        import torch

        if not torch.cuda.is_available():  # as train --auto --vram does: the CPU writes them
            print("--vram: no CUDA GPU here, so the CPU writes the captions (--dry-run shows the plan for --vram)",
                  file=sys.stderr)
            hardware = hardware_for(None, None, None)
    report = caption_dataset(config, hardware, default_cache_dir(), dry_run=args.dry_run)
    for note in report.notes:
        print(f"note: {note}")
    for image, reason in report.skipped:
        print(f"skipped {image}: {reason}")
    if not args.dry_run:
        print(f"wrote {len(report.written)} caption(s); kept {len(report.kept)} existing")
    if report.backup and report.written:
        print(f"the captions replaced are kept in {report.backup}")
    return 0


def train_values(args: argparse.Namespace, unread: Collection[str] = ()) -> dict:
    """Option values: a preset's, overridden by the config file's, overridden by the flags given; a kohya dataset
    file given as --data sets its settings just beneath the layer that names it. `unread`: options the command has
    no use for, whose values in the config file are left out unchecked (another machine's output folder)."""
    values: dict = {}
    flags = {k: v for k, v in vars(args).items() if k in fields_by_name()}
    layers = [read_toml(preset_path(args.preset), flag="--preset") if args.preset is not None else {},
              read_config(args.config, given=flags | {name: None for name in unread if name not in flags})
              if args.config else {},
              with_dataset_settings(flags, "the command line")]
    for layer in layers:
        for group in ALTERNATIVES:
            if any(name in layer for name in group):
                for name in group:
                    values.pop(name, None)
        values.update(layer)
    if args.preset and args.config:
        preset_replaced_note(args.preset, args.config, layers[0], layers[1])
    if args.config and is_own_toml(args.config):  # (kohya's dataset file wins over its config, as in kohya)
        dataset_replaced_note(flags.get("data"), args.config, layers[1], {
            name: value for name, value in layers[2].items() if name not in flags and name != ASSUMED})
    if values.get("network_weights"):  # the file's network, not the preset's, unless the user's own says otherwise
        values = {name: value for name, value in values.items() if name not in FILE_NETWORK_OPTIONS
                  or name not in layers[0] or any(name in layer for layer in layers[1:])}
    else:
        values, note = with_preset_alpha(values, layers[0], layers[1:])
        if note:
            print(note, file=sys.stderr)
    values, note = without_preset_rates(values, layers[0], layers[1:])
    if note:
        print(note, file=sys.stderr)
    # `--reg-data ""`: none, over a config's (as kohya reads an empty reg_data_dir); a VAE another machine's config
    for name in ("reg_data", "validation_data", "network_weights", "vae"):  # names: the model's own
        if flags.get(name) == "":
            values.pop(name, None)
    kept = values.get("keep_tokens")
    values = without_idle_kept_tags(values, typed=flags)  # a file's kept tags, idle: not the user's error
    if kept and "keep_tokens" not in values:  # (said, as kohya_ss users switch shuffling off for a test run)
        source = next(source for layer, source in zip(reversed(layers), (
            f"--data {flags.get('data')}", str(args.config), f"the preset {args.preset}")) if "keep_tokens" in layer)
        print(f"keep_tokens {kept} (from {source}): no effect, as nothing shuffles or drops the tags; --shuffle-tags "
              "(kohya's shuffle_caption) or --tag-dropout moves the others", file=sys.stderr)
    if args.config:
        from lowvram.resolve import kohya_model_checked

        values = kohya_model_checked(values, args.config, typed=flags)
    shape = width_height(values.get("resolution"))
    if shape and 0 < min(shape) <= max(shape) <= MAX_RESOLUTION and shape[0] != shape[1] and values.get("bucket") \
            is not False:  # else refused, naming the fix
        print(f"--resolution {shape[0]},{shape[1]} is kohya's width,height: lowvram trains aspect-ratio buckets of "
              f"about its pixel area, those of {area_side(*shape)} px square, as kohya's buckets do", file=sys.stderr)
    idle = [flag_name(fields_by_name()[name][1]) for name in ("bucket_step", "min_bucket_side", "max_bucket_side",
                                                             "bucket_no_upscale") if values.get(name) not in (None, False)]
    if idle and values.get("bucket") is False:
        print(f"{', '.join(idle)}: no effect with --no-bucket, which crops every image square", file=sys.stderr)
    else:
        bucket_sides_note(values if "resolution" in values else values | {"resolution": _models_resolution(values)},
                          typed=flags)
    return with_network_weights(values)


def _models_resolution(values: dict) -> int | None:
    """The resolution the model trains at, no --resolution given (check-data's model: SD1.5's); None where its
    family is not known yet (said where the run checks its model), or only the hub would say it (looked up where
    the run looks its model up, once)."""
    from lowvram.models.detect import detect_family, is_plainly_local

    model, family = str(values.get("model") or PLANNING_MODEL), values.get("model_family")
    if not (family or model in FAMILIES or is_plainly_local(model) or expand_home(model).exists()):
        return None
    try:
        return detect_family(model, family).resolution
    except LowvramError:
        return None


def preset_replaced_note(preset: str, config: Path, preset_values: dict, config_values: dict) -> None:
    """What a --config sets over the --preset's own settings (another tool's config sets its defaults too: kohya's
    network alpha 1), said in a line; and that the preset changes nothing where the config sets all of them."""
    answered = {name for group in ALTERNATIVES if set(group) & set(config_values) for name in group}
    replaced = [name for name in preset_values if (name in config_values and config_values[name] != preset_values[
        name]) or (name in answered and name not in config_values)]
    if not replaced:
        return
    shown = ", ".join(" ".join(as_flag_words({name: preset_values[name]})) for name in replaced)
    nothing = "; the preset changes nothing" if all(
        name in config_values or name in answered for name in preset_values) else ""
    print(f"--preset {preset}: --config {config.name} replaces its {shown}{nothing}", file=sys.stderr)


def dataset_replaced_note(data: str | None, config: Path, config_values: dict, from_dataset: dict) -> None:
    """What a --data dataset file's own settings replace of the --config's: they come with the command line that
    names the file (a config's --no-bucket under a kohya dataset file's enable_bucket = true trained buckets)."""
    replaced = {name: config_values[name] for name, value in from_dataset.items()
                if name in config_values and config_values[name] != value}
    if replaced:
        theirs, kept = (shell_line(*as_flag_words(values)) for values in (
            {name: from_dataset[name] for name in replaced}, replaced))
        print(f"{data}: its settings ({theirs}) replace --config {config.name}'s {kept}, as --data on the command "
              f"line brings them; give {kept} on the command line to keep {'it' if len(replaced) == 1 else 'them'}",
              file=sys.stderr)


def bucket_sides_note(values: dict, typed: Collection[str] = ()) -> None:
    """Bucket sides the resolution (given, or the model's own) lies outside, as kohya refuses them: a smallest side
    above it is said (a kohya_ss GUI config keeps its 256 px minimum at any resolution: the square bucket alone is
    left); a largest side
    below it is refused (a dataset file's max_bucket_reso kept under a --resolution given over its own trained every
    image smaller than the resolution its metadata names)."""
    # (a malformed value, or none given, is the config's to refuse or fill in)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        shape = width_height(values["resolution"])
        resolution = area_side(*shape) if shape else int(values["resolution"])
        low, high = (int(values.get(name) or 0) for name in ("min_bucket_side", "max_bucket_side"))
        if low > resolution:  # (a config's: named as its own, not a flag the user never typed)
            named = "--min-bucket-side" if "min_bucket_side" in typed else "a file's smallest bucket side " \
                "(kohya's min_bucket_reso)"
            fix = f"give at most {resolution}" if "min_bucket_side" in typed else \
                f"give --min-bucket-side {resolution // 2}, or another at most {resolution}"
            print(f"{named} {low}: above the resolution, {resolution} px, which leaves the square bucket "
                  f"alone (every image cropped square; kohya refuses it): {fix}", file=sys.stderr)
        if 0 < high < resolution:  # refused: the run trained at 256 px while its metadata said 1024
            raise LowvramError(f"--max-bucket-side {high}: below the resolution, {resolution} px, so every image "
                               f"would train smaller than it (kohya refuses it too): give --max-bucket-side "
                               f"{resolution} or more (a config's or dataset file's max_bucket_reso is read as it; "
                               f"kohya's default is 1024)")


def _kept_on_interrupt(config, started: float) -> str:
    """What a run stopped at once (a second Ctrl-C, during its save) left to continue from: its newest whole
    checkpoint, of this run (written since it started, or the one it resumed); none, before its first (its steps
    were lost unsaid)."""
    from lowvram.run_files import options_path
    from lowvram.train import checkpoint_folders
    from lowvram.train.outdir import continue_line

    if config is None:
        return ""
    newest = checkpoint_folders.latest(checkpoint_folders.checkpoint_root(config.output_dir))
    options = options_path(config.output_dir, config.output_name)
    if newest is None or not options.is_file() or not (config.training.resume or newest.stat().st_mtime >= started):
        return ("; no checkpoint of this run yet, so no step of it is kept: the same command starts it again (with "
                "what it cached)")
    return (f"; kept: checkpoint {newest.name}; continue with: "
            f"{continue_line(config.output_dir, config.output_name, launched_processes())}")


def main(argv: list[str] | None = None) -> int:
    """Runs a lowvram command (`argv`: its words, else the process's) and returns its exit code, raising nothing:
    from Python (a notebook's cell, a wrapper script) a wrong option too returns 2, its line printed, where
    argparse raises SystemExit."""
    try:
        return _run_command(argv)
    except SystemExit as exc:  # (argparse's: an unknown option, --help, --version)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def _run_command(argv: list[str] | None) -> int:
    started, config = time.time(), None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _print_any_name()
    if argv is not None:  # from Python (a notebook): numbers and paths as the shell would give them
        argv = [os.fspath(word) if isinstance(word, os.PathLike) else str(word) for word in argv]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command = parser._subparsers._group_actions[0].choices[args.command]
    if unknown:  # reported by the subcommand's parser, so the message names `lowvram train` and its flags
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    utf8_text_arguments(args, command)
    if "data_flag" in args:
        if args.data and args.data_flag and args.data != args.data_flag:
            command.error(f"two datasets: {args.data} and --data {args.data_flag}; give one")
        args.data = args.data or args.data_flag
        if not args.data and not getattr(args, "config", None):  # (a config's [data] may name it)
            command.error(f"the dataset is required: lowvram {args.command} DIR")
    # under accelerate launch every process reads the same options: the main one alone tells their notes and errors
    echo = args.command == "train" and another_process()
    # a run's stderr goes quiet where its file fails (a refusal then said on stdout); stdout that fails before a
    # run's steps (a dry run's, another command's) is said in one line, from the steps on the run goes on without it
    streams = contextlib.ExitStack()
    written = streams.enter_context(watched_output(run=args.command == "train"))
    try:
        if args.command not in ("plan", "doctor", "train", "info", "check-data", "cache"):  # diffusers takes seconds
            _quiet_libraries()
        if args.command == "train":
            with contextlib.redirect_stderr(io.StringIO()) if echo else contextlib.nullcontext():
                values = train_values(args)
                try:
                    config = build_config(values)  # every option error within a second, before the heavy imports
                except LowvramError as exc:
                    raise LowvramError(_moved_hint(str(exc), args)) from None
                for note in sample_prompt_notes(config) + idle_option_notes(config):
                    print(note, file=sys.stderr)
                for flag, size in (("--vram", args.vram), ("--ram", args.ram)):
                    if size and not args.auto:
                        raise LowvramError(f"{flag}: only used with --auto; add --auto or drop {flag}")
                    if size:
                        parse_size(size, flag)  # wrong on any machine, one without a GPU too
                if args.dry_run:  # (what a kohya_ss user compares with what kohya would do, before a GPU hour)
                    from lowvram.models.detect import detect_family, is_plainly_local
                    from lowvram.resolve import family_problem

                    model = config.model.model  # the checks of the model's family the run makes (a hub id's, where
                    local = model in FAMILIES or is_plainly_local(model)  # the run looks it up, not here: offline too)
                    if local and (problem := family_problem(config, detect_family(model, config.model.model_family))):
                        raise LowvramError(problem)
                    from lowvram.dry_run import dry_run_blocks, print_run_options

                    dry_run_blocks(config)
                    print_run_options(config, args.auto)
                    return 0
                if unwritable(config.output_dir):
                    raise LowvramError(f"--output: {unwritable(config.output_dir)}; choose an --output folder you can "
                                       "write to")
                from lowvram.train.folder_lock import FolderLock
                from lowvram.train.outdir import copy_problem, existing_lora_problem

                # a lock there (a run going on, another machine's going stale, or under accelerate launch the main
                # process's own): the run waits for it or names it first; the run checks the whole folder again
                if not FolderLock(config.output_dir).path.exists():
                    taken = existing_lora_problem(config) or copy_problem(config)
                    if taken:
                        raise LowvramError(taken)
            echo = False  # what follows may differ per process (its GPU, its share of the work)
            with stop_signals_interrupt():
                with remembered_interrupt() as interrupted:
                    _quiet_libraries()
                    from lowvram.train.loop import train
                if interrupted:  # a Ctrl-C the imports swallowed
                    raise KeyboardInterrupt
                if args.auto:
                    words = list(argv if argv is not None else sys.argv[1:])
                    config = auto_strategy(config, values, args.vram, args.ram, words[words.index("train") + 1:])
                if written is not None:  # the steps begin: their output may go, the run goes on
                    written.go_on()
                train(config)
        elif args.command == "plan":
            return run_plan(args, sys.argv[1:] if argv is None else argv)
        elif args.command == "doctor":
            from lowvram.doctor import print_doctor

            print_doctor(args.profiles, args.json)
        elif args.command == "cache":
            from lowvram.housekeeping import run_cache

            run_cache(args.cache_dir, args.unused_for, args.clear, args.dry_run)
        elif args.command == "check-data":
            from lowvram.console import console as log_console
            from lowvram.data.check import check_data
            from lowvram.hardware import NO_GPU
            from lowvram.resolve import resolve_run

            if args.json and args.report is not None and str(args.report) != "-":
                raise LowvramError(f"--json writes the report to stdout, --report to {args.report}: give one")
            report = Path("-") if args.json else args.report
            run = resolve_run(build_config(check_values(args), writes=False), NO_GPU)  # (from inside a folder too)
            to_stdout = str(report) == "-"  # (the JSON alone on stdout, for a script; the tables on stderr)
            check_data(run, report, args.verbose, log_console(stderr=to_stdout), args.captions)
        elif args.command == "ui":
            from lowvram.resolve import default_cache_dir
            from lowvram.ui.app import exposed, launch, login, other_users

            launch(args.listen or "127.0.0.1", args.port, args.share, default_cache_dir(),
                   auth=login(args.auth, args.share, exposed(args.listen), other_users()),
                   inbrowser=args.inbrowser)
        elif args.command == "caption":
            return run_caption(args)
        elif args.command == "info":
            import logging

            from lowvram.info import print_info

            bitsandbytes = logging.getLogger("bitsandbytes")  # (peft, read for a LoKr's factor, imports it: its
            level = bitsandbytes.level  # CPU kernel's fetch fails and is logged, as `_quiet_libraries` says)
            bitsandbytes.setLevel(logging.ERROR)
            try:
                lora = print_info(args.file, args.json, args.strip_paths, args.strip_captions)
            finally:
                bitsandbytes.setLevel(level)
            return 0 if lora or args.strip_paths or args.strip_captions else 1  # (a rewrite asked for: done)
        elif args.command == "extract":
            from lowvram.extract import run, summary

            print(summary(run(args)))
        elif args.command == "merge" and args.model:
            from lowvram.fuse import run, summary

            print(summary(run(args)))
        elif args.command in ("resize", "merge"):
            from lowvram.merge import run as merge
            from lowvram.resize import run as resize
            from lowvram.resize import summary

            print(summary((resize if args.command == "resize" else merge)(args), args.verbose))
        elif args.command == "generate":
            from lowvram.generate import generate

            generate(args)  # (it says each image as it is written)
    except LowvramError as exc:
        said = "" if isinstance(exc, TrainingInterrupted) else "error: "  # a stop asked for is no error
        echo = echo or (another_process() and isinstance(exc, Refused))  # (every process refuses alike)
        for line in str(exc).splitlines() if not echo else []:
            print(f"lowvram {args.command}: {said}{line}", file=sys.stderr)
            if getattr(sys.stderr, "gone", False):  # (its file full: said on stdout)
                print(f"lowvram {args.command}: {said}{line}")
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        if not another_process():  # (every process gets the launcher's signal: the main one says it)
            with _last_words():
                print(f"lowvram {args.command}: interrupted{_kept_on_interrupt(config, started)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lowvram plan --json | head`: the reader took what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would raise it again
        return 141  # as a shell says a pipe's writer ended by its reader (128 + SIGPIPE): not plan's "nothing fits"
    except (MemoryError, RuntimeError, OSError) as exc:
        if written is not None and exc is written.failure:  # (a file's own is said where it is written)
            to_nowhere(sys.stdout)  # (the flush at exit would raise it again)
            with contextlib.suppress(OSError):
                print(f"lowvram {args.command}: error: its output cannot be written ({exc.strerror}): "
                      f"{unwritten_remedy(exc)}", file=sys.stderr)
            return 2
        if args.command == "train" and _peer_lost(exc):
            with _last_words():
                print(f"lowvram train: error: lost contact with the run's other processes (one ended, out of memory or "
                      f"killed, its own lines above saying why; or their link failed: {first_line(exc)}), and this "
                      f"one ended with it{_kept_on_interrupt(config, started)}", file=sys.stderr)
            return 2
        if (why := host_memory_ran_out(exc, args.command)) is None:
            return _path_problem(exc, args.command)
        print(f"lowvram {args.command}: error: {why}", file=sys.stderr)
        return 2
    finally:
        while _LOUDNESS:
            _LOUDNESS.pop()()
        streams.close()
    return 0


@contextlib.contextmanager
def _last_words():
    """Ctrl-C and SIGTERM held while a run's last line is written: accelerate launch's SIGTERM to a process already
    ending (another process lost) broke that line off, and "lowvram: interrupted" alone was said."""
    import threading

    main_thread = threading.current_thread() is threading.main_thread()  # (signals are the main thread's)
    held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        yield
    finally:
        for sig, before in held.items():
            signal.signal(sig, before)


def _peer_lost(exc: BaseException) -> bool:
    """Whether `exc` is torch.distributed's word that another process of accelerate launch's is gone (gloo's closed
    connection, NCCL's failed collective): what the user reads is that, not this process's traceback."""
    return launched_processes() > 1 and (
        type(exc).__name__ in ("DistBackendError", "DistNetworkError")
        or any(words in str(exc) for words in ("Connection closed by peer", "Connection reset by peer")))


def _path_problem(exc: BaseException, command: str) -> int:
    """A path no file system holds, or a file gone between two looks at it: said in a line; anything else raised."""
    if not isinstance(exc, OSError):
        raise exc
    if exc.errno == errno.ENAMETOOLONG:
        why = f"a name in this path is over {MAX_FILE_NAME} bytes, which no file or folder can have; check the path"
    elif exc.errno == errno.ENOENT and exc.filename and not Path(exc.filename).resolve().is_relative_to(PACKAGE):
        why = "not found (it was there a moment before: removed while lowvram read it?)"  # (by another run)
    else:
        raise exc
    print(f"lowvram {command}: error: {exc.filename}: {why}", file=sys.stderr)
    return 2


def _print_any_name() -> None:
    """A file name that is no UTF-8 (a zip of a Japanese Windows, unpacked without -O cp932) reaches Python with
    lone surrogates, which a UTF-8 terminal's stdout refuses: printing it ended a run. They print as '?'."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, io.UnsupportedOperation):  # (a closed or detached stream)
                stream.reconfigure(errors="replace")


@contextlib.contextmanager
def stop_signals_interrupt():
    """SIGTERM (a CI job cancelled, docker stop), SIGHUP (the ssh connection gone) and Windows' Ctrl-Break (the UI's
    Stop) as Ctrl-C until the steps take them over: "interrupted" and 130 while the run caches (SIGTERM's default
    ended it without a word, 143)."""
    from lowvram.console import leave_terminal

    def hung_up(signum, frame):
        leave_terminal()
        signal.signal(signum, signal.SIG_IGN)  # (the second hang-up of a dropped connection: the run is ending)
        signal.default_int_handler(signum, frame)

    previous = {}
    for name in ("SIGTERM", "SIGHUP", "SIGBREAK"):
        if hasattr(signal, name) and not (name == "SIGHUP" and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN):
            with contextlib.suppress(ValueError):  # (not the main thread: a notebook's worker keeps its own)
                previous[name] = signal.signal(getattr(signal, name),
                                               hung_up if name == "SIGHUP" else signal.default_int_handler)
    try:
        yield
    finally:
        for name, handler in previous.items():
            if name == "SIGHUP" and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
                continue  # hung up: the terminal is gone, and its second hang-up would end the run's last words
            signal.signal(getattr(signal, name), handler)


def _moved_hint(problems: str, args: argparse.Namespace) -> str:
    """`problems` with, on each path not found that --config named (not typed), how a run whose folders moved (a
    rented machine's volume mounted elsewhere, a copied folder) goes on: its flag beside --config."""
    if not args.config:
        return problems
    lines = problems.splitlines()
    for i, line in enumerate(lines):
        missing = re.match(r"--(model|data|reg-data|vae): (?:file|folder) not found", line)
        if missing and getattr(args, missing.group(1).replace("-", "_"), None) is None:
            lines[i] = (f"{line} ({args.config} names it: where the run's folders moved, give --{missing.group(1)} "
                        "beside --config)")
    return "\n".join(lines)


@contextlib.contextmanager
def remembered_interrupt():
    """Ctrl-C while the libraries load: a KeyboardInterrupt raised wherever it lands may land in a C extension's
    initialisation (which then aborts the process, SIGABRT, with a C++ message) or in a finalizer or callback (where
    it is printed as 'Exception ignored' and lost, and the run would go on). So the first one is only remembered
    here (a list that is non-empty once it came), for the caller to act on after the block, seconds later; a
    second one raises at once. An error the block raises after a signal came is the interrupt's doing (a library
    that wraps it, or a half-imported module that then recurses: diffusers' lazy modules do both), so it is raised
    as the KeyboardInterrupt it is."""
    received: list[int] = []

    def handle(signum, frame):
        received.append(signum)
        if len(received) > 1:  # asked again: at once
            raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (a notebook's worker): leave signals alone
        yield received
        return
    try:
        yield received
    except Exception:
        if received:
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_LOUDNESS: list = []  # how to undo _quiet_libraries when main returns: a notebook's own pipelines keep their output


def _quiet_libraries() -> None:
    """diffusers/transformers warn about things users can't act on (safety checker, unused config keys)."""
    import logging
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    if _LOUDNESS:
        return
    kept = [(library, library.get_verbosity(), library.is_progress_bar_enabled())
            for library in (diffusers_logging, transformers_logging)]
    bitsandbytes = logging.getLogger("bitsandbytes")
    level, caught = bitsandbytes.level, warnings.catch_warnings()
    caught.__enter__()

    def restore():
        for library, verbosity, bar in kept:
            library.set_verbosity(verbosity)
            if bar:
                library.enable_progress_bar()
            else:
                library.disable_progress_bar()
        bitsandbytes.setLevel(level)
        caught.__exit__(None, None, None)

    _LOUDNESS.append(restore)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    # bitsandbytes (imported by peft) tries to fetch a CPU kernel from the hub on AVX512-BF16 CPUs and logs its
    # failure on every run; it falls back to its own kernel, so there is nothing for the user to do
    bitsandbytes.setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
