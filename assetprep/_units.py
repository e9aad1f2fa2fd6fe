"""Parsing of human durations such as 6h, 30m, 90s, 7d."""

from __future__ import annotations

import re

from .errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_FACTORS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int, *, what: str = "duration") -> float:
    """Seconds from '90', '90s', '30m', '6h' or '7d'."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"invalid {what} '{text}'", hint="use a number with s, m, h or d, e.g. 6h")
    return float(match.group(1)) * _FACTORS[match.group(2)]
