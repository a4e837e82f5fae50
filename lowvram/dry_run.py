"""train --dry-run: the checks a run makes of its options without weights, and every option it would train with,
as its <name>.toml holds them (a dataset file's folders with what they set). Plain text, no torch."""

from __future__ import annotations

import json
from pathlib import Path


def dry_run_blocks(config) -> None:
    """Per-block lists the model's blocks do not match, refused as the run refuses them (--dry-run said nothing of
    three values for 25 blocks, and exited 0): the family from the model's name or header, no weights loaded."""
    from lowvram.adapters.blocks import BLOCK_OPTIONS, block_plan
    from lowvram.models.detect import detect_family

    if any(getattr(config.network, name) is not None for name in BLOCK_OPTIONS):
        family = detect_family(config.model.model, config.model.model_family)
        block_plan(config.network, family.blocks, family.title)


def print_run_options(config, auto: bool) -> None:
    """train --dry-run: every option the run would train with, as its <name>.toml holds them."""
    import tomli_w

    from lowvram.dataset_files import is_dataset_file, read_dataset
    from lowvram.train.outdir import dataset_file_options, saved_options

    picked = " (--auto then picks --unet-weights, --gradient-checkpointing and --optimizer for the GPU)" * auto
    print(f"# lowvram train --dry-run: the options this run trains with{picked}; nothing trained (lowvram plan with "
          f"them shows its memory); {config.output_dir / config.output_name}.toml holds them once it starts")
    options = saved_options(config)
    options["output"]["output"] = str(config.output_dir)  # (the .toml's "." is the folder it lies in)
    print(tomli_w.dumps(options), end="")
    if config.training.resume:  # (one run's circumstance, kept out of its .toml: a OneTrainer config's
        # continue_last_backup, said nowhere)
        print(f"\n# and --resume {config.training.resume}: "
              + ("it goes on from the newest checkpoint in its --output, else starts the run"
                 if config.training.resume == "auto" else "it goes on from that checkpoint"))
    if is_dataset_file(config.data.data):
        settled = dataset_file_options(config)
        # (a OneTrainer user missed their concepts' flip, crop and tag shuffling here: the .toml leaves them out)
        print(f"\n# and what {config.data.data} sets, read from it at each start (so its .toml leaves them out):")
        print("\n".join(f"# {line}".rstrip() for line in tomli_w.dumps(settled).splitlines()))
        for subset in read_dataset(Path(config.data.data)).subsets:
            print(f"# {subset.folder}: {_subset_shown(subset)}")


def _subset_shown(subset) -> str:
    """A dataset file's image folder as --dry-run shows it: its repeats and role, and what it trains otherwise than
    the run (its resolution, batch, caption wrapping, the caption of its images without one, loss weight, and its
    own caption and augmentation options; None of these: lowvram's default)."""
    import tomli_w

    shown = [f"{subset.repeats:g} repeat{'s' * (subset.repeats != 1)}"] + ["regularization"] * subset.regularization
    shown += [f"resolution {subset.resolution}"] * (subset.resolution is not None)
    shown += [f"batch {subset.batch_size}"] * (subset.batch_size is not None)
    shown += [f"{name} {json.dumps(value, ensure_ascii=False)}" for name, value in (
        ("caption_prefix", subset.caption_prefix), ("caption_suffix", subset.caption_suffix)) if value]
    shown += [f"images without a caption file captioned {json.dumps(subset.label, ensure_ascii=False)}"] * bool(
        subset.label_captions and subset.label)
    shown += [f"loss weight {subset.loss_weight:g}"] * (subset.loss_weight != 1)
    shown += [tomli_w.dumps({name: value}).strip() if value is not None else f"{name} = lowvram's default"
              for name, value in (subset.settings or {}).items()]
    return ", ".join(shown)
