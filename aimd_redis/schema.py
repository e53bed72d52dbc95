"""The domain hash: its fields, their kinds, and which texts the scripts
accept. ``lua/_prelude.lua`` holds the same list and rules (a test compares
them), so a plain read in Python judges a hash as a script would.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from aimd_redis.errors import CorruptStateError

Kind = Literal["pos", "count", "time", "flag"]
"""pos: whole number >= 1; count: whole number >= 0; time: seconds >= 0; flag: 0 or 1."""

#: Every field, in the order of the state the scripts reply with.
FIELDS: tuple[tuple[str, Kind], ...] = (
    ("current_limit", "pos"),
    ("in_flight", "count"),
    ("blocked_until", "time"),
    ("success_streak", "count"),
    ("waiters", "count"),
    ("rate_limit_ceiling", "count"),
    ("consecutive_429s", "count"),
    ("rampup_started_at", "time"),
    ("rampup_active", "flag"),
    ("ceiling_confirmed_at", "time"),
    ("rampup_seconds", "time"),
    ("total_429s", "count"),
    ("total_reclaimed", "count"),
    ("probe_after", "count"),
    ("increase_step", "count"),
)
#: The first this many are the public state (``DomainState``); the scripts
#: reply with them, comma-joined, and wake-ups carry them the same way.
PUBLIC = 9
#: Fields an older release did not write, and what they count as when missing.
DEFAULTS: dict[str, int] = {"probe_after": 0, "increase_step": 0}
#: Beyond these a value is a mistake, not a measurement.
MAX_TIME, MAX_COUNT = 1e11, 1e15

# Decimal spellings (' 5', '5.0', '1e1'); no hex, inf, nan or sign.
_SPELLING = re.compile(r"\s*[\d.]+[eE]?[+-]?\d*\s*")


def parse_field(key: str, name: str, text: str | None, kind: Kind) -> float:
    """The number a field holds, as the scripts read it; CorruptStateError otherwise."""
    value: float | None = None
    if text is not None and _SPELLING.fullmatch(text):
        try:
            value = float(text)
        except ValueError:
            value = None
    if value is not None and math.isfinite(value):
        if kind == "time":
            if 0 <= value <= MAX_TIME:
                return value
        elif value % 1 == 0 and (1 if kind == "pos" else 0) <= value <= (1 if kind == "flag" else MAX_COUNT):
            return value
    shown = "(nothing)" if text is None else f'"{text}"'
    raise CorruptStateError(
        f"{key} field {name} holds {shown}; fix or delete it with redis-cli (HSET/HDEL), the scripts will not guess"
    )


def parse_domain(key: str, fields: dict[str, str]) -> dict[str, float] | None:
    """Every field of a domain hash by name (None when the hash is empty)."""
    if not fields:
        return None
    out: dict[str, float] = {}
    for name, kind in FIELDS:
        text = fields.get(name)
        if text is None and name in DEFAULTS:
            out[name] = DEFAULTS[name]
        else:
            out[name] = parse_field(key, name, text, kind)
    return out
