"""A OneTrainer config's optimizer section as lowvram's options: its optimizer (lowvram's own where it has it, else
the class OneTrainer builds, named by its path) and the settings OneTrainer gives it. Plain data, no torch."""

from __future__ import annotations

import difflib
from typing import Any

from lowvram.kohya_values import as_number
from lowvram.optim import OPTIMIZERS as OPTIMIZER_SPECS
from lowvram.optim import library_defaults, optimizer_kwargs, spec_of

OPTIMIZERS = {"ADAMW": "adamw", "ADAMW_8BIT": "adamw8bit", "PAGED_ADAMW_8BIT": "paged_adamw8bit", "LION": "lion",
              "LION_8BIT": "lion8bit", "ADAFACTOR": "adafactor", "PRODIGY": "prodigy",
              "SCHEDULE_FREE_ADAMW": "schedulefree_adamw"}
# OneTrainer's other optimizers: the class it builds, and the settings of its section it gives that class, by the
# class's names. "betas" joins beta1 and beta2, "betas3" beta1 to beta3, "eps_pair" eps and eps2 into eps, and
# "key:name" gives OneTrainer's key under the class's name; WARMUP marks a schedule-free class OneTrainer gives the
# run's warm-up. Left out: what the libraries' newer releases no longer take (bitsandbytes' percentile_clipping and
# block_wise, whose defaults OneTrainer passes; pytorch_optimizer 4's adanorm settings r, adanorm and adam_debias,
# and ADOPT's cautious).
WARMUP = "+warmup"
JOINED = {"betas": ("betas", ("beta1", "beta2")), "betas3": ("betas", ("beta1", "beta2", "beta3")),
          "eps_pair": ("eps", ("eps", "eps2"))}
# OneTrainer's optimizer settings that differ from another of them by a letter or two: neither is a typo of the other
TWINS = {"eps", "eps2", "bias_correction", "use_bias_correction", "initial_accumulator", "initial_accumulator_value",
         "muon_adam_lr", "muon_te1_adam_lr", "muon_te2_adam_lr"}
OPTIMIZER_CLASSES = {
    "ADAM": ("torch.optim.Adam", "betas eps amsgrad foreach maximize capturable differentiable fused"),
    "SGD": ("torch.optim.SGD", "momentum dampening nesterov foreach maximize differentiable"),
    "ADAM_8BIT": ("bitsandbytes.optim.Adam8bit", "betas eps min_8bit_size is_paged"),
    "SGD_8BIT": ("bitsandbytes.optim.SGD8bit", "momentum dampening nesterov"),
    "ADAGRAD": ("bitsandbytes.optim.Adagrad", "eps lr_decay initial_accumulator_value"),
    "ADAGRAD_8BIT": ("bitsandbytes.optim.Adagrad8bit", "eps lr_decay initial_accumulator_value min_8bit_size"),
    "RMSPROP": ("bitsandbytes.optim.RMSprop", "eps alpha momentum centered"),
    "RMSPROP_8BIT": ("bitsandbytes.optim.RMSprop8bit", "eps alpha momentum centered min_8bit_size"),
    "LARS": ("bitsandbytes.optim.LARS", "momentum dampening nesterov max_unorm"),
    "LARS_8BIT": ("bitsandbytes.optim.LARS8bit", "momentum dampening nesterov min_8bit_size max_unorm"),
    "LAMB": ("bitsandbytes.optim.LAMB", ("bias_correction betas eps amsgrad adam_w_mode optim_bits min_8bit_size "
             "max_unorm")),
    "LAMB_8BIT": ("bitsandbytes.optim.LAMB8bit", ("bias_correction betas eps amsgrad adam_w_mode min_8bit_size "
                  "max_unorm")),
    "ADEMAMIX": ("bitsandbytes.optim.AdEMAMix", "betas3 eps alpha optim_bits min_8bit_size is_paged"),
    "ADEMAMIX_8BIT": ("bitsandbytes.optim.AdEMAMix8bit", "betas3 eps alpha min_8bit_size is_paged"),
    "SCHEDULE_FREE_SGD": ("schedulefree.SGDScheduleFree", f"momentum r weight_lr_power foreach {WARMUP}"),
    "DADAPT_SGD": ("dadaptation.DAdaptSGD", "momentum log_every d0 growth_rate fsdp_in_use"),
    "DADAPT_ADAM": ("dadaptation.DAdaptAdam", ("betas eps log_every decouple use_bias_correction d0 growth_rate "
                    "fsdp_in_use")),
    "DADAPT_ADAN": ("dadaptation.DAdaptAdan", "betas3 eps no_prox log_every d0 growth_rate"),
    "DADAPT_ADA_GRAD": ("dadaptation.DAdaptAdaGrad", "momentum log_every eps d0 growth_rate"),
    "DADAPT_LION": ("dadaptation.DAdaptLion", "betas log_every d0 fsdp_in_use"),
    "PRODIGY_PLUS_SCHEDULE_FREE": (
        "prodigyplus.prodigy_plus_schedulefree.ProdigyPlusScheduleFree",
        ("betas beta3 weight_decay_by_lr use_bias_correction d0 d_coef prodigy_steps use_speed eps split_groups "
        "split_groups_mean factored factored_fp32 use_stableadamw use_cautious use_grams use_adopt d_limiter "
        "use_schedulefree schedulefree_c use_orthograd")),
    "CAME": ("came_pytorch.CAME", "eps_pair betas3"),
    "ADABELIEF": ("timm.optim.adabelief.AdaBelief", ("betas eps amsgrad decoupled_decay fixed_decay rectify "
                  "degenerated_to_sgd")),
    "TIGER": ("pytorch_optimizer.optimizer.tiger.Tiger", "beta1:beta decoupled_decay:weight_decouple fixed_decay"),
    "AIDA": ("pytorch_optimizer.optimizer.aida.Aida", ("betas decoupled_decay:weight_decouple fixed_decay k xi rectify "
             "n_sma_threshold degenerated_to_sgd ams_bound eps")),
    "ADOPT": ("pytorch_optimizer.optimizer.adopt.ADOPT", "betas decoupled_decay:weight_decouple fixed_decay eps"),
    "YOGI": ("pytorch_optimizer.optimizer.yogi.Yogi", ("betas decoupled_decay:weight_decouple fixed_decay "
             "initial_accumulator eps")),
}


def optimizer_values(section: dict[str, Any], scheduler: str, warmup: float | None, notes: list[str],
                     problem) -> dict[str, Any]:
    """The optimizer OneTrainer builds, with its settings; a schedule-free one at a constant rate, as OneTrainer
    trains it whatever the schedule (`scheduler` and `warmup`, as translated) says."""
    name = str(section.get("optimizer") or "ADAMW").upper()
    values: dict[str, Any] = {}
    if section.get("weight_decay") is not None:
        values["weight_decay"] = as_number(section["weight_decay"], "optimizer.weight_decay", problem)
    if name in OPTIMIZERS:
        values["optimizer"] = OPTIMIZERS[name]
        values |= _optimizer_settings(section, OPTIMIZERS[name], problem)
    elif name in OPTIMIZER_CLASSES:
        values["optimizer"], taken = OPTIMIZER_CLASSES[name]
        values |= _class_settings(section, taken)
    else:
        problem("optimizer", f"{name} is not one lowvram has ({', '.join([*OPTIMIZERS, *OPTIMIZER_CLASSES])}); pick "
                "one of those, or give lowvram the class itself (--optimizer module.Class)")
        return values
    _misspelt(section, name, problem)
    values |= library_defaults(values)
    if section.get("fused_back_pass") is True:
        notes.append("optimizer.fused_back_pass: OneTrainer steps each weight as its gradient comes, so that the "
                     "gradients of a full fine-tune need not all be held; a LoRA's take a few MiB, and lowvram steps "
                     "them together after the backward pass (not carried over)")
    if spec_of(values["optimizer"]).schedule_free and scheduler != "constant":
        if scheduler != "constant_with_warmup":
            notes.append(f"learning_rate_scheduler: {name} replaces the schedule, so OneTrainer trains it at a "
                         "constant rate, as lowvram does")
        values["scheduler"] = "constant"  # its warm-up, if any, is the optimizer's own (from --warmup-steps)
        if warmup and name in OPTIMIZER_CLASSES and WARMUP not in OPTIMIZER_CLASSES[name][1].split():
            values["warmup_steps"] = 0
            notes.append(f"learning_rate_warmup_steps: {name} takes no warm-up of its own, and a schedule-free "
                         "optimizer no schedule's: it trains without one")
    return values


def _misspelt(section: dict[str, Any], name: str, problem) -> None:
    """A key of the section that is a typo of a setting optimizer `name` takes, which the section leaves out
    (weight_decy): refused, naming it (OneTrainer passes over a key it does not know, and the library's default
    trained)."""
    if name in OPTIMIZERS:
        taken = [key for key, _ in OPTIMIZER_SPECS[OPTIMIZERS[name]].args] + ["eps2"] * (name == "ADAFACTOR")
    else:
        taken = [setting.partition(":")[0] for setting in OPTIMIZER_CLASSES[name][1].split() if setting != WARMUP]
    read = {part for key in taken for part in (JOINED[key][1] if key in JOINED else (key,))} | {"weight_decay"}
    for key in sorted(set(section) - read - TWINS):
        close = difflib.get_close_matches(key, sorted(read - set(section)), n=1, cutoff=0.85)
        if close:
            problem(f"optimizer.{key}", misspelt(f"optimizer.{close[0]}"))


def misspelt(meant: str) -> str:
    """Said of a key that is no OneTrainer setting, for the one it misspells (`meant`), which the config leaves out."""
    return f"no OneTrainer setting; did you mean {meant}? (as written, {meant} is left at OneTrainer's default)"


def _class_settings(section: dict[str, Any], taken: str) -> dict[str, list[str]]:
    """The settings `taken` (OPTIMIZER_CLASSES' form) of OneTrainer's optimizer section that it gives, as
    --optimizer-arg items read as Python literals."""
    given = {key: value for key, value in section.items() if value is not None}
    items = []
    for setting in taken.split():
        key, _, name = setting.partition(":")
        if setting in JOINED:
            name, parts = JOINED[setting]
            if all(part in given for part in parts):
                items.append(f"{name}=({', '.join(_text(given[part]) for part in parts)})")
        elif key in given:
            items.append(f"{name or key}={_text(given[key])}")
    return {"optimizer_args": items} if items else {}


def _text(value: Any) -> str:
    """A setting as --optimizer-arg's text, which lowvram reads as a Python literal: a value given as text (a
    number, a switch) stays as written, so it is read as what it says."""
    return value if isinstance(value, str) else repr(value)


def _optimizer_settings(section: dict[str, Any], name: str, problem) -> dict[str, list[str]]:
    """The settings of OneTrainer's optimizer section that lowvram's optimizer `name` takes (its betas as beta1
    and beta2), as --optimizer-arg items; OneTrainer keeps unused ones as null."""
    given = {key: value for key, value in section.items() if value is not None}
    if "beta1" in given and "beta2" in given and name != "adafactor":
        given["betas"] = f"{given.pop('beta1')},{given.pop('beta2')}"
    if "eps" in given and "eps2" in given and name == "adafactor":  # Adafactor's two epsilons, one pair here
        given["eps"] = f"{given.pop('eps')},{given.pop('eps2')}"
    items = []
    for key, value in given.items():
        item = f"{key}={value}"
        try:
            optimizer_kwargs(name, [item])
        except ValueError as exc:
            if key in dict(OPTIMIZER_SPECS[name].args):
                problem(f"optimizer.{key}", f"{value!r} " + str(exc).removeprefix(f"{item}: "))
            continue
        items.append(item)
    return {"optimizer_args": items} if items else {}
