"""A kohya config's optimizer (`optimizer_type`, `optimizer_args`), learning rates and schedule as lowvram's
options, with kohya's defaults where the config leaves them out."""

from __future__ import annotations

import difflib
import re
from typing import Any

from lowvram.config import SCHEDULERS
from lowvram.kohya_values import as_number, is_off, pairs
from lowvram.optim import (
    KOHYA_CLASSES,
    KOHYA_OPTIMIZERS,
    RATE_OPTIONS,
    TORCH_OPTIMIZERS,
    library_defaults,
    optimizer_kwargs,
    spec_of,
)

KOHYA_LEARNING_RATE = 2e-6  # sd-scripts' --learning_rate default, the rate of whatever no other rate names


def without_schedule(values: dict[str, Any], optimizer: str, scheduler_type: Any, notes: list[str]) -> None:
    """kohya trains a schedule-free optimizer with a schedule that does nothing: its lr_scheduler (or
    lr_scheduler_type) and lr_warmup_steps go unused, and its warm-up is optimizer_args' warmup_steps."""
    unused = [key for key, given in (("lr_scheduler", values.get("scheduler", "constant") != "constant"),
                                     ("lr_scheduler_type", scheduler_type),
                                     ("lr_warmup_steps", values.get("warmup_steps"))) if given]
    if unused:
        notes.append(f"{', '.join(unused)} not used: kohya trains {optimizer} without a schedule (its warm-up is "
                     "optimizer_args' warmup_steps)")
    values["scheduler"] = "constant"
    for key in ("warmup_steps", "min_lr_ratio", "scheduler_cycles", "decay_steps"):
        values.pop(key, None)


def without_rates(values: dict[str, Any], flat: dict[str, Any], notes: list[str]) -> None:
    """kohya's Adafactor with relative_step=True sets its own step sizes, as transformers builds it: the learning
    rates, their schedule and warm-up go unused (kohya logs learning_rate as its first rate, no more)."""
    unused = [key for key in ("learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler", "lr_scheduler_type",
                              "lr_warmup_steps") if not is_off(flat.get(key)) and flat.get(key) != "adafactor"]
    unused += ["network_args' loraplus ratios"] if values.get("loraplus_ratio") or values.get(
        "loraplus_text_encoder_ratio") else []
    if unused:
        notes.append(f"{', '.join(unused)} not used: Adafactor with relative_step=True sets its own step sizes, as "
                     "in kohya")
    for key in RATE_OPTIONS:
        values.pop(key, None)
    values["scheduler"] = "constant"


def check_schedule_settings(flat: dict[str, Any], problem) -> None:
    """What kohya gives lr_scheduler's schedule beyond lowvram's settings: lr_scheduler_args, num_cycles where
    transformers' schedules take them (their half: other than 1 they rise again), and inverse_sqrt's timescale."""
    name = flat.get("lr_scheduler") or "constant"
    extra = flat.get("lr_scheduler_args")
    if extra:
        problem("lr_scheduler_args", f"{', '.join(map(str, extra if isinstance(extra, list) else [extra]))}: kohya "
                f"passes these to the {name} schedule, which lowvram builds from its own settings only (warm-up, "
                "cycles, power, lr_scheduler_min_lr_ratio, lr_decay_steps); leave them out")
    cycles = flat.get("lr_scheduler_num_cycles")
    if name in ("cosine_with_min_lr", "warmup_stable_decay") and cycles not in (None, "", 1, 1.0, "1"):
        problem("lr_scheduler_num_cycles", f"{cycles} makes kohya's {name} decay {cycles} half-cosines, rising "
                "again between them; lowvram's decays once: leave it at 1, or use cosine_with_restarts")
    timescale = flat.get("lr_scheduler_timescale")
    if name == "inverse_sqrt" and timescale not in (None, "", 0):
        warmup = flat.get("lr_warmup_steps") or 0
        try:
            scale = float(timescale)
        except (TypeError, ValueError):
            problem("lr_scheduler_timescale", f"{timescale!r} is not a number")
            return
        if not (isinstance(warmup, (int, float)) and warmup >= 1 and scale == float(warmup)):
            problem("lr_scheduler_timescale", f"{timescale}: lowvram's inverse_sqrt decays on the warm-up's time "
                    "scale (kohya's without one); leave it out, or set lr_warmup_steps to it")


def scheduler_class(name: str, args: list, values: dict[str, Any], notes: list[str], problem) -> dict[str, Any]:
    """kohya's lr_scheduler_type, a torch schedule class built from lr_scheduler_args in place of lr_scheduler
    (and without its warm-up): CosineAnnealingLR over the whole run (T_max its steps) is lowvram's cosine with
    eta_min as its floor; anything else is refused."""
    refusal = f"{name}: lowvram's schedules are lr_scheduler's ({', '.join(SCHEDULERS)}); use one of them"
    if name.rsplit(".", 1)[-1] != "CosineAnnealingLR":
        problem("lr_scheduler_type", refusal)
        return {}
    given = dict(str(arg).split("=", 1) for arg in args if "=" in str(arg))
    t_max = as_number(given.get("T_max", 0), "lr_scheduler_args T_max", problem, int)
    eta_min = as_number(given.get("eta_min", 0), "lr_scheduler_args eta_min", problem)
    steps = values.get("max_steps") if "epochs" not in values else None
    if t_max != steps:  # torch's cosine turns back up after T_max steps, or stops short of the end
        run = f"a run of {steps} steps" if steps else "a run of max_train_epochs"
        problem("lr_scheduler_type", f"CosineAnnealingLR with T_max={t_max} over {run} is not one cosine over the "
                "run, the one lowvram trains; set T_max to max_train_steps, or use lr_scheduler = \"cosine\"")
        return {}
    if eta_min and any(key in values for key in ("text_encoder_lr", "text_encoder_2_lr")):
        problem("lr_scheduler_args", "eta_min is one floor for every learning rate, lowvram's floor a share of each; "
                "drop eta_min, or give the text encoder the U-Net's learning rate")
        return {}
    translated: dict[str, Any] = {"scheduler": "cosine"}
    if values.get("warmup_steps"):
        translated["warmup_steps"] = 0
        notes.append("lr_warmup_steps not used: kohya builds lr_scheduler_type's schedule without a warm-up")
    if eta_min:
        translated["min_lr_ratio"] = eta_min / values["lr"]
    return translated


def learning_rates(left: dict[str, Any], train_text_encoder: bool, problem) -> dict[str, Any]:
    """unet_lr, else learning_rate, for the U-Net; text_encoder_lr, else learning_rate, for the text encoder, which
    a text_encoder_lr of 0 leaves untrained; SDXL's pair of text-encoder rates, one per encoder. learning_rate is
    kohya's default where the config gives none."""
    rates = {key: left.pop(key, None) for key in ("learning_rate", "unet_lr", "text_encoder_lr")}
    given = rates["text_encoder_lr"]
    pair = given if isinstance(given, list) else [] if given is None else [given]
    rates["text_encoder_lr"] = pair[0] if pair else None
    rates = {key: None if value is None else as_number(value, key, problem) for key, value in rates.items()}
    second = as_number(pair[1], "text_encoder_lr", problem) if len(pair) > 1 else None
    default = rates["learning_rate"] if rates["learning_rate"] is not None else KOHYA_LEARNING_RATE
    lr = rates["unet_lr"] or default
    text_lr = rates["text_encoder_lr"] if rates["text_encoder_lr"] is not None else default
    values: dict[str, Any] = {"lr": lr}
    if train_text_encoder and text_lr == 0 and not second:
        values["train_text_encoder"] = False
    elif train_text_encoder:
        if text_lr != lr or second is not None:
            values["text_encoder_lr"] = text_lr
        if second is not None and second != text_lr:
            values["text_encoder_2_lr"] = second
    return values


def optimizer_settings(left: dict[str, Any], notes: list[str], problem) -> dict[str, Any]:
    """optimizer_type by kohya's name (a class path's last part), weight_decay and the optimizer's own settings
    from optimizer_args."""
    values: dict[str, Any] = {}
    kind = left.pop("optimizer_type", None)
    added: tuple[str, ...] = ()
    if kind:
        key = re.sub(r"[^a-z0-9]", "", str(kind).rsplit(".", 1)[-1].lower())
        if key in KOHYA_OPTIMIZERS:
            values["optimizer"] = KOHYA_OPTIMIZERS[key]
        elif key in KOHYA_CLASSES:
            values["optimizer"], added = KOHYA_CLASSES[key]
        elif "." not in str(kind) and str(kind) not in TORCH_OPTIMIZERS and (
                close := difflib.get_close_matches(key, [*KOHYA_OPTIMIZERS, *KOHYA_CLASSES], n=1, cutoff=0.8)):
            problem("optimizer_type", f"'{kind}' is no optimizer of kohya's; did you mean {close[0]}? (another "
                    "package's class is given by its path, e.g. torch.optim.RAdam)")
        elif key:  # another class, as kohya builds it: a bare name is torch.optim's
            values["optimizer"] = str(kind) if "." in str(kind) else f"torch.optim.{kind}"
        else:
            choices = ", ".join(sorted(set(KOHYA_OPTIMIZERS.values())))
            problem("optimizer_type", f"'{kind}' names no optimizer; use one of {choices}, or a class")
    args = pairs(left.pop("optimizer_args", []))
    args |= {k: v for k, v in (item.split("=", 1) for item in added) if k not in args}
    if "weight_decay" in args:
        values["weight_decay"] = as_number(args.pop("weight_decay"), "optimizer_args weight_decay", problem)
    name = values.get("optimizer", "adamw")
    if name == "adafactor":  # kohya's defaults where optimizer_args leaves them out (relative_step its own, the
        # others transformers'), and warmup_init turns relative_step on as kohya does; lowvram's own are all False
        given = {key: str(args.pop(key, default)) for key, default in (("relative_step", True),
                                                                        ("scale_parameter", True),
                                                                        ("warmup_init", False))}
        if given["warmup_init"].lower() != "false":
            given["relative_step"] = "True"
        args |= {key: value for key, value in given.items() if value.lower() != "false"}
    if spec_of(name).schedule_free and "warmup_steps" in args:  # its warm-up: lowvram's --warmup-steps gives it
        values["warmup_steps"] = as_number(args.pop("warmup_steps"), "optimizer_args warmup_steps", problem, int)
    carried = []
    for key, value in list(args.items()):
        try:
            optimizer_kwargs(name, [f"{key}={value}"])
        except ValueError as exc:
            if key in dict(spec_of(name).args):
                problem(f"optimizer_args {key}", f"{value!r} " + str(exc).removeprefix(f"{key}={value}: "))
            continue
        carried.append(f"{key}={args.pop(key)}")
    if carried:
        values["optimizer_args"] = carried
    if args:
        notes.append(f"optimizer_args not carried over: {', '.join(f'{k}={v}' for k, v in args.items())}")
    return values | library_defaults(values)
