"""Optimizers (`--optimizer`) and learning-rate schedules (`--scheduler`), declared once: the option's choices and
help, the planner's state sizes and step costs, and the builders all read `OPTIMIZERS` and `SCHEDULERS`; any other
optimizer is named by its class. The 8-bit ones (bitsandbytes) keep Adam's two moments in 8 bits, a
quarter of AdamW's state; the paged variant lets that state spill to host memory under pressure; Lion keeps one
moment; Adafactor factors the second moment into row and column statistics; Prodigy estimates the step size
itself (its learning rate is a multiplier, 1.0); schedule-free AdamW needs no decaying schedule, but its weights
must be switched to their averaged form (`use_averaged_weights`) before saving, sampling or validating.
Plain data at import: torch and the optimizer's package are imported only when one is built, so `plan` and the
option checks stay fast."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lowvram.errors import LowvramError, first_line, shell_line

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Optimizer:
    name: str
    state_bytes: int  # optimizer state per trainable fp32 parameter
    # step time against AdamW's, for the planner: a LoRA's state is megabytes, so 8-bit state only pays when
    # memory is that tight
    step_cost: float
    help: str
    default_lr: float = 1e-4
    planned: bool = False  # the planner weighs it (beside the user's explicit choice)
    learning_rate_free: bool = False  # finds the step size itself: --lr is a multiplier around 1.0
    schedule_free: bool = False  # replaces the schedule: only --scheduler constant (with its warm-up) applies
    # its own settings a user may give (--optimizer-arg KEY=VALUE, kohya's optimizer_args), each by the kind of
    # value: float, int, bool, or pair (two numbers, comma-separated)
    args: tuple[tuple[str, str], ...] = ()
    # its library's own defaults where lowvram chooses otherwise: what kohya and OneTrainer train with when their
    # config gives none (weight decay, and KEY=VALUE settings)
    library_weight_decay: float = 1e-2
    library_settings: tuple[str, ...] = ()


ADAM_ARGS = (("betas", "pair"), ("eps", "float"))
BNB_ARGS = (("min_8bit_size", "int"),)  # tensors smaller than this keep 32-bit state (bitsandbytes has no amsgrad)


OPTIMIZERS = {
    o.name: o
    for o in (
        Optimizer("adamw", 8, 1.0, "adamw (torch)", planned=True, args=(*ADAM_ARGS, ("amsgrad", "bool"))),
        Optimizer("adamw8bit", 2, 1.01, "adamw8bit (bitsandbytes: state in 8 bits)", planned=True,
                  args=ADAM_ARGS + BNB_ARGS),
        Optimizer("paged_adamw8bit", 2, 1.02, "paged_adamw8bit (its 8-bit state spills to host RAM under pressure)",
                  args=ADAM_ARGS + BNB_ARGS),
        Optimizer("lion", 4, 1.0, "lion (one moment)", args=(("betas", "pair"), *BNB_ARGS), library_weight_decay=0),
        Optimizer("lion8bit", 1, 1.01, "lion8bit", args=(("betas", "pair"), *BNB_ARGS), library_weight_decay=0),
        Optimizer("adafactor", 4, 1.02, "adafactor (factored second moments)",
                  args=(("eps", "pair"), ("clip_threshold", "float"), ("decay_rate", "float"), ("beta1", "float"),
                        ("relative_step", "bool"), ("scale_parameter", "bool"), ("warmup_init", "bool")),
                  library_weight_decay=0),
        Optimizer("prodigy", 16, 1.03, "prodigy (learning-rate-free: --lr is a multiplier, 1.0)", default_lr=1.0,
                  learning_rate_free=True,
                  args=(("betas", "pair"), ("beta3", "float"), ("eps", "float"), ("d0", "float"), ("d_coef", "float"),
                        ("growth_rate", "float"), ("decouple", "bool"), ("use_bias_correction", "bool"),
                        ("safeguard_warmup", "bool"), ("slice_p", "int")),
                  library_weight_decay=0, library_settings=("use_bias_correction=False", "safeguard_warmup=False")),
        Optimizer("schedulefree_adamw", 8, 1.01, "schedulefree_adamw (no schedule needed)", schedule_free=True,
                  args=(("betas", "pair"), ("eps", "float"), ("r", "float"), ("weight_lr_power", "float")),
                  library_weight_decay=0),
    )
}
PLANNED_OPTIMIZERS = tuple(name for name, o in OPTIMIZERS.items() if o.planned)
POLYNOMIAL_END = 1e-7  # diffusers' (and kohya's) polynomial schedule decays towards it
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial", "rex",
              "inverse_sqrt", "warmup_stable_decay")  # build_schedule builds each
# any other optimizer, named by its class as kohya's --optimizer_type does (torch.optim.RAdam, pytorch_optimizer.CAME,
# dadaptation.DAdaptAdam): built with the groups' rates, --weight-decay and its --optimizer-arg settings
CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class NamesOrClassPath(tuple):
    """--optimizer's choices: the named ones, listed in the help, or a class path."""

    def __contains__(self, value: object) -> bool:
        return tuple.__contains__(self, value) or (isinstance(value, str) and bool(CLASS_PATH.match(value)))


OPTIMIZER_CHOICES = NamesOrClassPath(OPTIMIZERS)


# kohya's --optimizer_type names (a class path's last part, lower-cased, without _ or -) -> lowvram's
KOHYA_OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "pagedadamw8bit": "paged_adamw8bit", "lion": "lion",
                    "lion8bit": "lion8bit", "adafactor": "adafactor", "prodigy": "prodigy",
                    "adamwschedulefree": "schedulefree_adamw", "schedulefreeadamw": "schedulefree_adamw"}
# torch.optim's optimizers (a bare class name in a kohya config is torch.optim's), known without importing torch
TORCH_OPTIMIZERS = ("ASGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "Muon", "NAdam",
                    "RAdam", "RMSprop", "Rprop", "SGD", "SparseAdam")
# kohya's other optimizers by name: the class it builds, and the settings it adds where optimizer_args has none
KOHYA_CLASSES = {
    "dadaptadam": ("dadaptation.DAdaptAdam", ()), "dadaptadagrad": ("dadaptation.DAdaptAdaGrad", ()),
    "dadaptadan": ("dadaptation.DAdaptAdan", ()), "dadaptsgd": ("dadaptation.DAdaptSGD", ()),
    "dadaptlion": ("dadaptation.DAdaptLion", ()),
    "dadaptadampreprint": ("dadaptation.experimental.DAdaptAdamPreprint", ()),
    "dadaptation": ("dadaptation.experimental.DAdaptAdamPreprint", ()),  # (kohya's first name of it, the GUI's)
    "pagedadamw": ("bitsandbytes.optim.PagedAdamW", ()), "pagedadamw32bit": ("bitsandbytes.optim.PagedAdamW32bit", ()),
    "dadaptadanip": ("dadaptation.experimental.DAdaptAdanIP", ()),
    "sgdnesterov": ("torch.optim.SGD", ("nesterov=True", "momentum=0.9")),
    "sgdnesterov8bit": ("bitsandbytes.optim.SGD8bit", ("nesterov=True", "momentum=0.9")),
    "pagedlion8bit": ("bitsandbytes.optim.PagedLion8bit", ()),
    "ademamix8bit": ("bitsandbytes.optim.AdEMAMix8bit", ()),
    "pagedademamix8bit": ("bitsandbytes.optim.PagedAdEMAMix8bit", ()),
    "radamschedulefree": ("schedulefree.RAdamScheduleFree", ()),
    "sgdschedulefree": ("schedulefree.SGDScheduleFree", ()),
}


def optimizer_name(text: str) -> str:
    """--optimizer's value as lowvram names it: its own name or a class path as given, or kohya's --optimizer_type
    name in any case (AdamW8bit, DAdaptAdam); ValueError for anything else, or for a kohya name that adds settings."""
    if text in OPTIMIZERS or CLASS_PATH.match(text):
        return text
    key = re.sub(r"[^a-z0-9]", "", text.lower())
    if key in KOHYA_OPTIMIZERS:
        return KOHYA_OPTIMIZERS[key]
    if key in KOHYA_CLASSES:
        path, settings = KOHYA_CLASSES[key]
        if settings:
            raise ValueError(f"'{text}' is kohya's {path} with {' '.join(settings)}: give --optimizer {path} "
                             + " ".join(f"--optimizer-arg {setting}" for setting in settings))
        return path
    if torch_name := next((name for name in TORCH_OPTIMIZERS if name.lower() == text.lower()), None):
        return f"torch.optim.{torch_name}"  # (kohya's bare name of one: SGD, RAdam)
    called = re.fullmatch(r"\s*([\w.]+)\((.*)\)\s*", text)
    if called:  # a LoRA's ss_optimizer, pasted: kohya writes the class with its settings
        own = KOHYA_OPTIMIZERS.get(re.sub(r"[^a-z0-9]", "", called[1].rsplit(".", 1)[-1].lower()))  # (AdamW8bit)
        raise ValueError(f"'{text}' is a class with its settings, as a LoRA's ss_optimizer says them: give "
                         + shell_line("--optimizer", own or optimizer_name(called[1]), *_settings_flags(called[2])))
    raise ValueError(f"'{text}' names no optimizer: use one of {', '.join(OPTIMIZERS)}, kohya's name of one "
                     "(AdamW8bit, DAdaptAdam), or a class (torch.optim.RAdam)")


def _settings_flags(settings: str) -> list[str]:
    """kohya's `weight_decay=0.1,betas=(0.9, 0.99)` as the flags that give them: --weight-decay 0.1 --optimizer-arg
    betas=0.9,0.99 (split at the commas outside brackets)."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(settings + ","):
        depth += (char in "([") - (char in ")]")
        if char == "," and depth == 0:
            if settings[start:i].strip():
                items.append(settings[start:i].strip())
            start = i + 1
    flags = []
    for item in items:
        key, _, value = item.partition("=")
        value = re.sub(r"[\s()\[\]]", "", value)
        flags += ["--weight-decay", value] if key.strip() == "weight_decay" else ["--optimizer-arg",
                                                                                 f"{key.strip()}={value}"]
    return flags


# classes that find the step size themselves, --lr a multiplier around 1, and that refuse a second rate among their
# parameter groups: prodigyopt's, and every D-Adaptation class (kohya's DAdaptAdam, DAdaptLion, DAdaptAdaGrad ...)
LEARNING_RATE_FREE_CLASSES = ("prodigyopt.Prodigy", "dadaptation.")


def spec_of(name: str) -> Optimizer:
    """The named optimizer, or a class path's: its state unknown, planned as AdamW's (a LoRA's state is megabytes),
    its settings any, its library's weight decay the usual 0."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    free = name.startswith(LEARNING_RATE_FREE_CLASSES)
    return Optimizer(name, 8, 1.0, f"{name} (a class)", library_weight_decay=0, schedule_free=_is_schedule_free(name),
                     learning_rate_free=free, default_lr=1.0 if free else Optimizer.default_lr)


def _is_schedule_free(class_path: str) -> bool:
    """Whether a class replaces the schedule: schedulefree's, and those named after it (ProdigyPlusScheduleFree)."""
    return "schedulefree" in class_path.lower()


def library_defaults(values: dict) -> dict:
    """What of translated option values to add so that their optimizer trains as its library's defaults do, as kohya
    and OneTrainer pass it no settings of their own: its weight decay and settings, where `values` gives none."""
    spec = spec_of(values.get("optimizer", "adamw"))
    given = list(values.get("optimizer_args", []))
    added = [item for item in spec.library_settings if item.split("=")[0] not in {g.split("=")[0] for g in given}]
    return ({} if "weight_decay" in values else {"weight_decay": spec.library_weight_decay}) | (
        {"optimizer_args": given + added} if added else {})


def optimizer_kwargs(name: str, items: tuple[str, ...] | list[str]) -> dict:
    """--optimizer-arg's KEY=VALUE items as the optimizer's keyword arguments; a ValueError names a wrong one."""
    kinds = dict(OPTIMIZERS[name].args) if name in OPTIMIZERS else None
    kwargs, seen = {}, {}
    for item in items:
        if len(several := str(item).split()) > 1 and all(re.fullmatch(r"[^=\s]+=\S+", part) for part in several):
            flags = " ".join(f"--optimizer-arg {part}" for part in several)  # (kohya_ss's one string of them)
            raise ValueError(f"'{item}' holds {len(several)} settings: give each as its own item ({flags}; in a TOML "
                             f"file, optimizer_args = {json.dumps(several)})")
        key, sep, text = (part.strip() for part in str(item).partition("="))
        if not sep or not key or not text:
            raise ValueError(f"'{item}' is not KEY=VALUE (e.g. betas=0.9,0.99)")
        if key in seen:  # (the last won, and the file's ss_optimizer named both)
            raise ValueError(f"{key} is given twice ({key}={seen[key]}, {key}={text}): give it once")
        seen[key] = text
        if key in ("weight_decay", "lr"):  # the run's own options, which the optimizer's groups carry
            raise ValueError(f"{key}={text}: give it as --{key.replace('_', '-')} {text}")
        if kinds is None:  # a class's: read as kohya reads them (a Python literal, else the text)
            kwargs[key] = _literal(text)
            continue
        if key not in kinds:
            raise ValueError(f"{name} takes no '{key}' here; it takes {', '.join(kinds) or 'none'}")
        kwargs[key] = _typed(key, text, kinds[key])
    return kwargs


# the options a learning rate's size or its schedule takes: unused where the optimizer sets its own step sizes
RATE_OPTIONS = ("lr", "text_encoder_lr", "text_encoder_2_lr", "loraplus_ratio", "loraplus_text_encoder_ratio",
                "warmup_steps", "min_lr_ratio", "scheduler_cycles", "decay_steps", "scheduler_power")


def sets_own_step_sizes(name: str, items: tuple[str, ...] | list[str]) -> bool:
    """Adafactor with relative_step=True (kohya's default for it): a step size from its step count and the
    weights' scale, so the groups' rates, and any schedule or warm-up of them, go unused."""
    try:
        return name == "adafactor" and optimizer_kwargs(name, items).get("relative_step", False)
    except ValueError:  # (said where the settings are checked)
        return False


def _literal(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.lower().lstrip("+-") in ("inf", "infinity", "nan"):  # Python writes float("inf") as inf, JSON Infinity
        return float(text)
    if text.lower() in ("true", "false"):  # as TOML and JSON write them
        return text.lower() == "true"
    return text


def optimizer_class(name: str):
    """A class path's optimizer class; a LowvramError in one line where it cannot be imported."""
    module_name, _, class_name = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name, None)
    except ImportError as exc:
        raise LowvramError(f"--optimizer {name}: cannot import {module_name} ({exc}); pip install the package that "
                           f"has it, or choose one of {', '.join(OPTIMIZERS)}") from None
    if not isinstance(found, type):
        raise LowvramError(f"--optimizer {name}: {module_name} has no class {class_name}; check its name "
                           "(upper and lower case count)")
    import torch

    if not issubclass(found, torch.optim.Optimizer):
        raise LowvramError(f"--optimizer {name}: not an optimizer (a torch.optim.Optimizer); name an optimizer's "
                           "class, e.g. torch.optim.RAdam")
    return found


def build_class_optimizer(name: str, groups: list[dict], weight_decay: float, settings: dict, warmup_steps: int = 0):
    """A class path's optimizer, given what its constructor takes, as kohya builds it: the rate (the first group's,
    for a class that wants one), the weight decay where it has one, and the settings; a schedule-free one its
    warm-up. A LowvramError in one line where it refuses them (run with a one-element parameter first, to check the
    options before the model loads)."""
    import inspect

    cls = optimizer_class(name)
    taken = inspect.signature(cls).parameters
    anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in taken.values())
    unknown = [key for key in settings if key not in taken and not anything]
    if unknown:
        raise LowvramError(f"--optimizer-arg: {name} takes no {', '.join(unknown)}; it takes "
                           f"{', '.join(k for k in taken if k not in ('self', 'params', 'lr', 'weight_decay'))}")
    given = dict(settings)
    if "weight_decay" in taken or anything:
        given["weight_decay"] = weight_decay
    elif weight_decay:
        raise LowvramError(f"--weight-decay: {name} has no weight decay; pass --weight-decay 0")
    if "lr" in taken:
        given["lr"] = groups[0].get("lr", 1e-3)
    if _is_schedule_free(name) and "warmup_steps" not in settings and warmup_steps:
        if "warmup_steps" not in taken:  # its schedule stays constant, so there would be no warm-up at all
            raise LowvramError(f"--warmup-steps: {name} has no warm-up of its own, and a schedule-free optimizer "
                               "takes no schedule's; drop --warmup-steps")
        given["warmup_steps"] = warmup_steps  # the schedule stays constant: the warm-up is the optimizer's
    try:
        return cls(groups, **given)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LowvramError(f"--optimizer-arg: {name} refused its settings ({exc}); check each value and its type "
                           "(e.g. momentum=0.9)") from None


def try_optimizer(name: str, lr: float, weight_decay: float, items: tuple[str, ...], warmup: bool) -> None:
    """Build the optimizer over a one-element parameter, so that it refuses its settings (betas=1.5) before the model
    loads, in one line, rather than after the caches are filled. `warmup`: whether the run warms up at all."""
    import torch

    trial = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr}]
    settings = optimizer_kwargs(name, items)
    if name not in OPTIMIZERS:
        build_class_optimizer(name, trial, weight_decay, settings, warmup_steps=1 if warmup else 0)
        return
    try:
        build_optimizer(name, trial, weight_decay, 1 if warmup else 0, settings)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LowvramError(f"--optimizer-arg: {name} refused its settings ({exc}); check each value and its type "
                           "(e.g. momentum=0.9)") from None


def _typed(key: str, text: str, kind: str):
    try:
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if kind == "pair":
            first, second = (float(part) for part in text.strip("()[] ").split(","))
            return first, second
        number = float(text)
        if kind == "int" and not number.is_integer():
            raise ValueError
        return int(number) if kind == "int" else number
    except ValueError:
        need = {"bool": "True or False", "pair": "two numbers, comma-separated", "int": "a whole number"}
        raise ValueError(f"{key}={text}: must be {need.get(kind, 'a number')}") from None


def build_optimizer(name: str, groups: list[dict], weight_decay: float, warmup_steps: int = 0,
                    settings: dict | None = None) -> torch.optim.Optimizer:
    """The optimizer `name` over `groups`; `settings`, its own keyword arguments (`optimizer_kwargs`), override
    lowvram's choices for it."""
    import torch

    settings = settings or {}
    if name == "adamw":
        # on CUDA one fused kernel updates every adapter tensor (instead of a few launches per tensor); the CPU
        # keeps the default loop, whose results the pinned LoRAs were made with
        on_cuda = all(p.is_cuda for group in groups for p in group["params"])
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=on_cuda or None, **settings)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # fixed learning rates (ours, with our schedule) unless relative_step=True asks for Adafactor's own, which
        # scale with each weight's size unless told otherwise (as transformers' and kohya's: a flat 1e-2 without)
        own = {"scale_parameter": bool(settings.get("relative_step")), "relative_step": False, "warmup_init": False}
        return Adafactor(groups, weight_decay=weight_decay, **(own | settings))
    if name == "prodigy":
        from prodigyopt import Prodigy

        # bias correction and a safeguarded warm-up are what Prodigy's authors advise for diffusion LoRAs;
        # its constructor prints which weight decay it uses, in the middle of our progress output
        with contextlib.redirect_stdout(io.StringIO()):
            return Prodigy(groups, weight_decay=weight_decay, **({"use_bias_correction": True,
                                                                  "safeguard_warmup": warmup_steps > 0} | settings))
    if name == "schedulefree_adamw":
        from schedulefree import AdamWScheduleFree

        optimizer = AdamWScheduleFree(groups, weight_decay=weight_decay, warmup_steps=warmup_steps, **settings)
        optimizer.train()
        return optimizer
    if name not in OPTIMIZERS:
        optimizer = build_class_optimizer(name, groups, weight_decay, settings, warmup_steps)
        if hasattr(optimizer, "train") and spec_of(name).schedule_free:
            optimizer.train()
        return optimizer
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise LowvramError(f"--optimizer {name}: needs bitsandbytes ({first_line(exc)}); pip install bitsandbytes, or "
                           "use --optimizer adamw") from None
    classes = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw8bit": bnb.optim.PagedAdamW8bit,
               "lion": bnb.optim.Lion, "lion8bit": bnb.optim.Lion8bit}
    if name not in classes:
        raise LowvramError(f"--optimizer: '{name}' is not one of {', '.join(OPTIMIZERS)}")
    return classes[name](groups, weight_decay=weight_decay, **settings)


def build_schedule(name: str, optimizer, warmup_steps: int, total_steps: int, cycles: int, power: float,
                   decay_steps: int = 0, min_lr_ratio: float = 0.0):
    """The learning-rate schedule `name` (SCHEDULERS), each with a linear warm-up over `warmup_steps`: diffusers'
    for the usual ones; REX as OneTrainer builds it (the paper's d = 0.9, over the steps after the warm-up);
    inverse_sqrt and warmup_stable_decay as kohya builds them (transformers': the time scale the warm-up; the rate
    held, then a cosine decay over the last `decay_steps`). `min_lr_ratio` is the floor of the decay."""
    schedule = _schedule(name, optimizer, warmup_steps, total_steps, cycles, power, decay_steps)
    if min_lr_ratio:  # transformers' warmup_stable_decay (kohya's) floors its warm-up too
        floor_schedule(schedule, min_lr_ratio, 0 if name == "warmup_stable_decay" else warmup_steps)
    return schedule


def floor_schedule(lr_scheduler, ratio: float, warmup_steps: int) -> None:
    """Past its warm-up, a schedule's factor f runs from 1 to `ratio` instead of to 0: ratio + (1 - ratio) f, as
    OneTrainer's learning_rate_min_factor and transformers' min_lr_rate shape it."""
    lr_scheduler.lr_lambdas = [
        lambda step, factor=factor: factor(step) if step < warmup_steps else ratio + (1 - ratio) * factor(step)
        for factor in lr_scheduler.lr_lambdas]
    # the rate in force now is the one the schedule set when it was built, from the factors before the floor
    step = lr_scheduler.last_epoch
    for group, base, factor in zip(lr_scheduler.optimizer.param_groups, lr_scheduler.base_lrs,
                                   lr_scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    lr_scheduler._last_lr = [group["lr"] for group in lr_scheduler.optimizer.param_groups]


def _schedule(name: str, optimizer, warmup_steps: int, total_steps: int, cycles: int, power: float,
              decay_steps: int):
    import torch

    if name == "rex":
        decay = max(1, total_steps - warmup_steps)

        def rex(step: int) -> float:  # https://arxiv.org/abs/2107.04197
            if step < warmup_steps:
                return step / warmup_steps
            left = 1.0 - min(1.0, (step - warmup_steps) / decay)
            return left / (0.1 + 0.9 * left)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, rex)
    if name == "inverse_sqrt":
        from transformers.optimization import get_inverse_sqrt_schedule

        return get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup_steps)
    if name == "warmup_stable_decay":
        from transformers.optimization import get_wsd_schedule

        # by keyword, the stable phase's length given: transformers 4.45 takes (warm-up, stable, decay) in that order
        return get_wsd_schedule(optimizer, num_warmup_steps=warmup_steps, num_decay_steps=decay_steps,
                                num_stable_steps=max(0, total_steps - warmup_steps - decay_steps))
    from diffusers.optimization import get_polynomial_decay_schedule_with_warmup, get_scheduler

    if name == "polynomial" and optimizer.defaults["lr"] <= POLYNOMIAL_END:  # (diffusers raises: it decays towards
        return get_polynomial_decay_schedule_with_warmup(  # 1e-7, and from a rate that low, to 0)
            optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps, lr_end=0.0, power=power)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         num_cycles=cycles, power=power)


@contextmanager
def use_averaged_weights(optimizer):
    """For schedule-free optimizers: the parameters hold the averaged weights (what to save and sample)
    inside the block, and the training point again after it. Other optimizers: nothing to do."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    switch = (hasattr(optimizer, "eval") and hasattr(optimizer, "train")
              and _is_schedule_free(f"{type(inner).__module__}.{type(inner).__name__}"))
    if switch:
        optimizer.eval()
    try:
        yield
    finally:
        if switch:
            optimizer.train()


def optimizer_state_bytes(name: str, trainable_params: int) -> int:
    """Bytes of optimizer state for `trainable_params` fp32 parameters (for the planner)."""
    return spec_of(name).state_bytes * trainable_params
