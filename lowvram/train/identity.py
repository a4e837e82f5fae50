"""What makes two runs the same run: what the adapters' weights depend on beyond their length, namely the model
(with the LoRAs merged into it), the data, the network's shape, the resolution, the seed and the optimizer. The
number of steps or epochs, the learning rate and the save points may change on resume (raising --epochs to train
further is how a finished run continues). Output folders and checkpoints record it (`lowvram.train.outdir`,
`lowvram.train.checkpoint`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PureWindowsPath

from lowvram.adapters.blocks import BLOCK_OPTIONS
from lowvram.config import NetworkConfig
from lowvram.files import is_windows_path
from lowvram.option_values import relocated_source
from lowvram.resolve import ResolvedRun


def recipe(run: ResolvedRun) -> dict[str, object]:
    """The options that make a run this run, by flag name."""
    config = run.config
    run_recipe = {"--model": config.model.model, "--model-family": run.family.name, "--vae": config.model.vae,
                  "--data": config.data.data, "--reg-data": config.data.reg_data, "--resolution": run.resolution,
                  "--network": config.network.network, "--rank": config.network.rank, "--alpha": config.alpha,
                  "--lora-layers": config.network.lora_layers, "--lokr-factor": config.network.lokr_factor,
                  "--train-text-encoder": config.network.train_text_encoder, "--seed": config.training.seed,
                  "--optimizer": config.optim.optimizer}
    # options that came later count only where set, so earlier runs keep their identity
    run_recipe |= conv_recipe(config.network)
    run_recipe |= {"--" + name.replace("_", "-"): getattr(config.network, name) for name in BLOCK_OPTIONS
                   if getattr(config.network, name) is not None}  # the adapters' shapes and the optimizer's groups
    if config.optim.loraplus_ratio:  # the optimizer's groups, which a checkpoint's state must match
        run_recipe["--loraplus-ratio"] = config.optim.loraplus_ratio
    if config.optim.loraplus_text_encoder_ratio:
        run_recipe["--loraplus-text-encoder-ratio"] = config.optim.loraplus_text_encoder_ratio
    if config.optim.ema:  # the average a checkpoint holds
        run_recipe["--ema-decay"] = config.optim.ema_decay
    if config.model.base_weights:  # the model the adapters train on (by file name: a moved file is the same)
        run_recipe["--base-weights"] = " ".join(relocated_source(item, lambda path: Path(path.name))
                                                for item in config.model.base_weights)
    return run_recipe


def conv_recipe(network: NetworkConfig) -> dict[str, object]:
    """--conv-rank and --conv-alpha where they make the convolutions differ from the other layers."""
    conv = network.distinct_conv
    return {"--conv-rank": conv[0], "--conv-alpha": conv[1]} if conv else {}


def identity(run_recipe: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(run_recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


MOVABLE = ("--model", "--vae", "--data", "--reg-data")  # paths a run's files may move from between sessions


def same_run(recorded: dict, ours: dict[str, object]) -> bool:
    """Whether a recorded run ({"identity", "recipe"}: an output folder's, a checkpoint's) is the run of recipe
    `ours`: the same options, where a model, VAE or dataset that moved (its path gone, the same name at the new
    one) is the same; whether the images changed is checked apart (`checkpoint.data_fingerprint`)."""
    if recorded.get("identity") == identity(ours):
        return True
    theirs = recorded.get("recipe")
    return isinstance(theirs, dict) and all(theirs.get(flag) == ours.get(flag) or _same_place(flag, theirs, ours)
                                            for flag in {**theirs, **ours})


def _same_place(flag: str, theirs: dict, ours: dict) -> bool:
    """Whether a model, VAE or dataset path recorded differently is the one given: moved, recorded with `..` in
    it (as runs before `files.absolute_path` recorded `--data ../data`), or reached through a link (a Colab
    notebook's /content/lt to "/content/drive/MyDrive/Lora Training", or Drive's older "My Drive")."""
    then, now = theirs.get(flag), ours.get(flag)
    return flag in MOVABLE and isinstance(then, str) and isinstance(now, str) and (
        os.path.normpath(then) == os.path.normpath(now) or _moved(then, now) or _same_file(then, now))


def _same_file(then: str, now: str) -> bool:
    try:
        return os.path.samefile(then, now)
    except (OSError, ValueError):
        return False


def _moved(then: object, now: object) -> bool:
    """Whether a path recorded `then` (gone, a Windows one on a machine that reads / too) is `now`'s, moved: the
    same file or folder name."""
    if not (isinstance(then, str) and isinstance(now, str)) or Path(then).exists():
        return False
    recorded = PureWindowsPath(then) if is_windows_path(then) else Path(then)  # (a run started on Windows)
    return recorded.is_absolute() and recorded.name == Path(now).name


def moved_paths(theirs: dict[str, object], ours: dict[str, object]) -> list[str]:
    """'--model /content/a.safetensors there, /home/me/a.safetensors here' for each model, VAE or dataset taken as
    moved (by its name: its contents are not compared, the dataset's images apart)."""
    return [f"{flag} {theirs[flag]} there, {ours[flag]} here" for flag in MOVABLE
            if theirs.get(flag) != ours.get(flag) and _moved(theirs.get(flag), ours.get(flag))]


def model_fingerprint(model: object) -> str | None:
    """A single-file model's fingerprint: its size and a hash of 64 KiB at nine places through it (a few reads of a
    file of gigabytes), by which a run knows its model moved from another of the same name; None for a folder, a
    hub id or a built-in model."""
    path = Path(str(model)) if model else None
    if path is None or not path.is_file():
        return None
    size, digest = path.stat().st_size, hashlib.sha256()
    with open(path, "rb") as f:
        for part in range(9):
            f.seek(size * part // 9)
            digest.update(f.read(2**16))
    return f"{size}:{digest.hexdigest()[:16]}"


SWITCHED_BY = {"--ema-decay": "--ema"}  # a setting a recipe holds only where its switch is on


def differences(theirs: dict[str, object], ours: dict[str, object]) -> str:
    """'--rank 8 there, 16 here; ...' for the options two recipes disagree on (a switch where one side lacks it)."""
    changed = [flag for flag in {**theirs, **ours} if theirs.get(flag) != ours.get(flag)  # one set there only too
               and not _same_place(flag, theirs, ours)]
    return "; ".join(f"{SWITCHED_BY[flag]} {'on there, off here' if flag in theirs else 'off there, on here'}"
                     if flag in SWITCHED_BY and (flag in theirs) != (flag in ours)
                     else f"{flag} {_shown(theirs.get(flag))} there, {_shown(ours.get(flag))} here" for flag in changed)


def _shown(value: object) -> str:
    return "(not set)" if value is None else str(value)
