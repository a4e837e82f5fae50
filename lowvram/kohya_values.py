"""How a kohya config's values are read: kohya_ss writes numbers as text, switches as "False", lists of
`key=value` settings as one string, and an off value in several spellings."""

from __future__ import annotations

from typing import Any

from lowvram.errors import quoted


def pairs(value: Any) -> dict[str, str]:
    """kohya's `network_args`/`optimizer_args`: ["conv_dim=8", "conv_alpha=1"] (or one such string)."""
    items = value if isinstance(value, list) else str(value).split()
    return {k.strip(): v.strip().strip("\"'") for k, _, v in (str(item).partition("=") for item in items) if k.strip()}


def number_or_text(value: Any) -> Any:
    """A value kept as text where a number is meant ("75", "0": the kohya_ss GUI's fields, a launcher's flags) as
    that number; anything else as it is."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def as_number(value: Any, key: str, problem, kind: type = float) -> Any:
    """A kohya value as a number; where it is none, the problem is recorded and a stand-in returned, so that the
    rest of the file is still checked and every problem reported at once."""
    try:
        number = float(value)
        if kind is int and not number.is_integer():
            raise ValueError
        return kind(number)
    except (TypeError, ValueError, OverflowError):  # (int(inf): a number too large for a float)
        problem(key, f"{quoted(value)} is not {'a whole number' if kind is int else 'a number'}")
        return kind(1)


def is_off(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == "" or value == []


def switched_on(value: Any) -> bool:
    """A switch's value on (an older kohya_ss's "False", as text, is off: it was read as on)."""
    return not is_off(value) and not (isinstance(value, str) and value.strip().lower() == "false")
