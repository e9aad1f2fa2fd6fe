"""Parsing of human durations (6h, 30m, 90s, 7d) and rates (30/min, 5/s)."""

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


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|min|m|h)\s*$")


def parse_rate(text: str | None, *, what: str = "rate") -> float | None:
    """Per second from '30/min', '5/s' or '100/h' (None stays None)."""
    if not text:
        return None
    m = _RATE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"invalid {what} {text!r}", hint="use e.g. 30/min or 5/s")
    return float(m.group(1)) / {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[m.group(2)]
