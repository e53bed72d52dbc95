"""The hashes the scripts keep: the domain's fields and their kinds, which
texts the scripts accept, and the settings of the loop stored in a model's
cap hash. ``lua/_fields.lua`` holds the same lists and rules (a test compares
them), so a plain read in Python judges a hash as a script would.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import msgspec

from aimd_redis.errors import CorruptStateError

Kind = Literal["pos", "count", "time", "flag", "policy"]
"""pos: whole number >= 1; count: whole number >= 0; time: seconds >= 0;
flag: 0 or 1; policy: 'classic', 'adaptive' or 'latency'."""

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
    ("last_cut_at", "time"),
    ("total_429s", "count"),
    ("total_reclaimed", "count"),
    ("probe_after", "count"),
    ("increase_step", "count"),
    ("policy", "policy"),
    ("latency_noload", "time"),
    ("latency_recent", "time"),
    ("latency_spread", "time"),
    ("latency_round", "count"),
    ("latency_window_at", "time"),
    ("latency_dip", "count"),
)
#: The first this many are the public state (``DomainState``); the scripts
#: reply with them, comma-joined, and wake-ups carry them the same way.
PUBLIC = 9
#: Fields an older release did not write, and what they count as when missing.
DEFAULTS: dict[str, Any] = {
    "last_cut_at": 0,
    "probe_after": 0,
    "increase_step": 0,
    "policy": "classic",
    "latency_noload": 0,
    "latency_recent": 0,
    "latency_spread": 0,
    "latency_round": 0,
    "latency_window_at": 0,
    "latency_dip": 0,
}
POLICIES = ("classic", "adaptive", "latency")
#: The loop's settings a model's cap hash stores under ThrottleConfig's names
#: (the last register's, or an operator's): every script runs these, whatever
#: the calling process was configured with.
SETTINGS = (
    "policy",
    "reduce_factor",
    "additive_increase",
    "success_window",
    "cooldown_seconds",
    "ceiling_overshoot",
    "rampup_seconds",
    "ceiling_ttl_seconds",
    "max_cooldown_seconds",
    "idle_ttl_seconds",
    "latency_tolerance",
    "latency_window_seconds",
    "reserved",
)
#: Beyond these a value is a mistake, not a measurement. The scripts hold
#: the same bounds (MAX_TIME, MAX_COUNT in lua/_base.lua; tests/test_scripts.py
#: checks they agree); ``now=`` is held to MAX_TIME too.
MAX_TIME, MAX_COUNT = 1e11, 1e15

# Decimal spellings (' 5', '5.0', '1e1'); no hex, inf, nan or sign.
_SPELLING = re.compile(r"\s*[\d.]+[eE]?[+-]?\d*\s*")


class DomainRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Every field of a domain hash, read as the scripts read it (the public
    ones are DomainState's; the rest are documented in docs/redis-cli.md)."""

    current_limit: int
    in_flight: int
    blocked_until: float
    success_streak: int
    waiters: int
    rate_limit_ceiling: int
    consecutive_429s: int
    rampup_started_at: float
    rampup_active: int
    ceiling_confirmed_at: float
    last_cut_at: float
    total_429s: int
    total_reclaimed: int
    probe_after: int
    increase_step: int
    policy: str
    latency_noload: float = 0.0
    latency_recent: float = 0.0
    latency_spread: float = 0.0
    latency_round: int = 0
    latency_window_at: float = 0.0
    latency_dip: int = 0


def parse_field(key: str, name: str, text: str | None, kind: Kind) -> float | str:
    """The value a field holds, as the scripts read it; CorruptStateError otherwise."""
    if kind == "policy" and text in POLICIES:
        return text
    value: float | None = None
    if text is not None and kind != "policy" and _SPELLING.fullmatch(text):
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


def parse_domain(key: str, fields: dict[str, str]) -> DomainRecord | None:
    """A domain hash's record (None when the hash is empty)."""
    if not fields:
        return None
    out: dict[str, Any] = {}
    for name, kind in FIELDS:
        text = fields.get(name)
        if text is None and name in DEFAULTS:
            out[name] = DEFAULTS[name]
            continue
        value = parse_field(key, name, text, kind)
        out[name] = int(value) if kind in ("pos", "count", "flag") else value
    return DomainRecord(**out)
