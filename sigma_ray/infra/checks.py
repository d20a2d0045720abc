"""The errors and range checks every config section's ``validate()`` uses: a message that names the field and the
allowed range or choices. No third-party imports, so the method's folder can use them.
"""
from __future__ import annotations

import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range; the message names the field."""


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ConfigError unless ``lo (<|<=) value (<|<=) hi``; the message shows the allowed interval."""
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{name} = {value!r} is outside the allowed range {interval}")


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} = {value!r} is not one of {', '.join(map(repr, choices))}")
