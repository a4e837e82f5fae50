"""The training form, made from the config dataclasses the CLI and TOML files use, so no option is described
twice: one component per option (its flag is the label, its help the hint), and the conversions between the
form's values, option values and `.toml` files."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import types
import typing
from pathlib import Path
from typing import Any

from lowvram.config import as_flag_words, fields_by_name, flag_name
from lowvram.configure import ALTERNATIVES, build_config, read_config, with_dataset_settings, without_idle_kept_tags
from lowvram.errors import LowvramError
from lowvram.lora_header import with_network_weights
from lowvram.resolve import kohya_model_checked


@dataclasses.dataclass(frozen=True)
class FormField:
    name: str
    section: str
    field: dataclasses.Field
    kind: Any  # the resolved type: bool, int, float, str, tuple[str, ...], or Optional of one
    prefix: str = "opt"  # of the page element's id: options of two forms may share a name

    @property
    def base(self) -> Any:
        """The type without Optional."""
        if typing.get_origin(self.kind) in (typing.Union, types.UnionType):
            return next(a for a in typing.get_args(self.kind) if a is not type(None))
        return self.kind

    @property
    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]

    @property
    def required(self) -> bool:
        """The option always has a value (an optional one may be left empty)."""
        return self.base is self.kind

    @property
    def flag(self) -> str:
        return flag_name(self.field)

    @property
    def elem_id(self) -> str:
        return f"{self.prefix}-{self.name.replace('_', '-')}"

    def to_form(self, value: Any) -> Any:
        """An option value as its component shows it."""
        if typing.get_origin(self.base) is tuple:
            return "\n".join(value or ())
        if self.base is bool:
            return bool(value)
        if self.base in (int, float):
            return value if self.required else "" if value is None else str(value)
        return "" if value is None else str(value)

    def from_form(self, shown: Any) -> Any:
        """What the component holds, as an option value (None: left empty)."""
        if typing.get_origin(self.base) is tuple:
            return tuple(line.strip() for line in str(shown or "").splitlines() if line.strip())
        if self.base is bool:
            return bool(shown)
        if self.base in (int, float):
            if isinstance(shown, str):  # an optional number's text box: the config reads (and checks) the text
                return shown.strip() or None
            if shown is None:  # (a number box holding letters sends None: not the default, said as the CLI's --lr=)
                return None if not self.required else ""
            return int(shown) if self.base is int and float(shown).is_integer() else shown
        text = "" if shown is None else str(shown).strip()
        return text or None


def form_fields() -> list[FormField]:
    """Every option of the run, section by section, in the order the dataclasses declare them."""
    return [FormField(name, section, f, kind) for name, (section, f, kind) in fields_by_name().items()]


def option_fields(cls: type, section: str) -> list[FormField]:
    """The fields of another command's options dataclass (e.g. `lowvram caption`'s), ids prefixed by `section`."""
    hints = typing.get_type_hints(cls)
    return [FormField(f.name, section, f, hints[f.name], prefix=section) for f in dataclasses.fields(cls)]


def given_values(fields: list[FormField], shown: list[Any]) -> dict[str, Any]:
    """The options the form sets: those whose value is not the default (as flags given on the command line)."""
    values = {}
    for field, raw in zip(fields, shown, strict=True):
        value = field.from_form(raw)
        default = field.default
        if value is None or value == default or (value == () and not default):
            continue
        values[field.name] = value
    return values


def option_values(fields: list[FormField], shown: list[Any]) -> dict[str, Any]:
    """The options the form sets (`given_values`: so the planner keeps only the strategy options the user chose),
    over the settings of a dataset file (kohya's or OneTrainer's) given as the dataset (a broken one is reported by
    the check of the whole config)."""
    values = given_values(fields, shown)
    try:
        return with_network_weights(with_dataset_settings(values, "the form", quiet=True), quiet=True)
    except LowvramError:
        return values


def with_preset(given: dict[str, Any], preset: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """The form's options once a preset is chosen: the preset's settings over what the form gave (its model, data,
    names...), less what the `previous` preset set and the form still shows as it set it (another preset's noise
    offset is no choice of the user's), and less the other answer to a question the preset answers (its epochs
    replace a max steps)."""
    previous = previous or {}
    replaced = set(preset) | {name for group in ALTERNATIVES if set(group) & set(preset) for name in group}
    return {name: value for name, value in given.items()
            if name not in replaced and (name not in previous or previous[name] != value)} | preset


def replaced_by_preset(given: dict[str, Any], chosen: dict[str, Any], previous: dict[str, Any] | None) -> str:
    """What the user had set that a preset chosen (`with_preset`'s result: `chosen`) replaced, as flags and the
    values that were in the form ("" where none): a typed learning rate was gone, unsaid."""
    previous = previous or {}
    lost = {name: value for name, value in given.items() if (name not in previous or previous[name] != value)
            and chosen.get(name) != value}
    return " ".join(as_flag_words(lost))


def form_values(fields: list[FormField], values: dict[str, Any]) -> list[Any]:
    """The form showing `values` over the defaults."""
    return [field.to_form(values.get(field.name, field.default)) for field in fields]


def as_text(line: str) -> str:
    """A line of the CLI's for a Markdown box, as it is: `<output>/logs` was taken for HTML and left out, the
    `*` of a path for emphasis."""
    return re.sub(r"([\\`*_{}\[\]<>#|~])", r"\\\1", line)


def error_lines(text: str) -> str:
    """An error's lines as a Markdown box shows them."""
    return "\n\n".join(f"**error:** {as_text(line)}" for line in text.splitlines())


def toml_text(values: dict[str, Any]) -> str:
    """The `.toml` that `lowvram train --config` replays: the validated config (its folders absolute, so the file
    works from anywhere), less the memory strategy's options the form leaves at their defaults: every strategy
    option a config holds is the user's choice to `--auto`, which then could not take the plan the Setup tab
    shows. Raises LowvramError with the CLI's words when the options cannot run."""
    import tomli_w

    from lowvram.plan import STRATEGY_OPTIONS

    sections = build_config(values).to_toml_dict()
    for section in sections.values():
        for name in STRATEGY_OPTIONS:
            if name not in values:
                section.pop(name, None)
    return tomli_w.dumps(sections)


def read_for_form(path: Path) -> tuple[dict[str, Any], list[str]]:
    """A config's option values for the form, and the notes reading it printed (what another trainer's config
    leaves out or reads otherwise), which the page shows: a GUI user does not watch the terminal."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            values = kohya_model_checked(without_idle_kept_tags(read_config(path)), path)
    except LowvramError as exc:  # what it said before the problem, with the problem
        raise LowvramError("\n".join([*said.getvalue().splitlines(), str(exc)])) from None
    return values, said.getvalue().splitlines()
