"""Configuration of the shared AIMD loop."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aimd_redis.errors import ConfigError, InvalidArgumentError
from aimd_redis.keys import DEFAULT_GROUP, check_group
from aimd_redis.schema import SETTINGS

#: The most of a limit that reservations may hold together: the groups
#: without one always keep a tenth.
MAX_RESERVED = 0.9
#: At most this many groups hold reservations: each costs every grant a look.
MAX_RESERVED_GROUPS = 16
#: The longest cooldown a single 429 can impose unless configured otherwise
#: (``max_cooldown_seconds``). A Retry-After of a day is almost always a
#: misparsed header; an hour still honours real quota resets while bounding
#: how long a bad value can stall a fleet.
MAX_RETRY_AFTER_SECONDS = 3600.0


class _Settings(BaseModel):
    """Frozen, strict about names, and refusing a bad value with the library's
    own ConfigError (a ValueError) that names the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(str(exc)) from None


class ThrottleConfig(_Settings):
    """Tuning of the AIMD loop, the startup ramp and the state kept in Redis.

    The loop's settings (``schema.SETTINGS``: the policy, its rules, the
    ramp, the ceiling's and cooldown's bounds and the idle expiry) are stored
    per model by ``register``, and every script runs the stored ones: the
    last register wins. The rest belong to each process: lease ttl and
    renewal, polling.
    """

    policy: Literal["classic", "adaptive", "latency"] = "classic"
    """How the limit moves after the ramp (the rules are in ``lua/_rules.lua``).
    ``"classic"``: additive increase, multiplicative decrease, and a cooldown
    for the whole fleet on every 429. ``"adaptive"``: holds just under the
    level a 429 marked and probes it less often the longer it holds, follows
    a drop step by step, and pauses the fleet only when 429s persist.
    ``"latency"``: adaptive, and for servers that queue instead of refusing,
    holds the fleet where latency passes ``latency_tolerance`` times the
    no-load latency (docs/queueing.md)."""
    reduce_factor: float = Field(0.75, gt=0, lt=1)
    """The limit is multiplied by this on the first 429 of a cascade."""
    additive_increase: int = Field(1, ge=1)
    """Added to the limit after every ``success_window`` successes."""
    success_window: int = Field(25, ge=1)
    """Consecutive successes needed for one additive increase."""
    cooldown_seconds: float = Field(2.0, gt=0, allow_inf_nan=False)
    """How long a 429 without a usable Retry-After blocks the domain."""
    ceiling_overshoot: float = Field(0.10, ge=0, allow_inf_nan=False)
    """How far above a learned ceiling the limit may probe (fraction, at least 1)."""
    rampup_seconds: float = Field(0.0, ge=0, allow_inf_nan=False)
    """Length of the linear startup ramp from 1 to the effective max; 0 is off."""
    lease_ttl_seconds: float = Field(60.0, gt=0, allow_inf_nan=False)
    """A lease not released or renewed for this long is reclaimed. The client
    renews held leases every third of this, so only a dead (or frozen)
    process's slots expire."""
    ceiling_ttl_seconds: float = Field(300.0, ge=0, allow_inf_nan=False)
    """A ceiling no 429 has confirmed for this long is forgotten; 0 keeps it."""
    wait_poll_seconds: float = Field(2.0, gt=0, allow_inf_nan=False)
    """How often a queued acquire re-checks (its heartbeat, and its fallback
    should a wake-up be lost); a waiter silent for three of these is dropped."""
    idle_ttl_seconds: float = Field(600.0, ge=0, allow_inf_nan=False)
    """A model untouched for this long expires from Redis; 0 keeps it."""
    max_cooldown_seconds: float = Field(MAX_RETRY_AFTER_SECONDS, gt=0, allow_inf_nan=False)
    """The longest cooldown one 429 imposes on the fleet, whatever its
    Retry-After says: a server that always answers a long Retry-After
    cannot freeze the fleet for longer than this."""

    latency_tolerance: float = Field(1.4, gt=1, le=100, allow_inf_nan=False)
    """``policy="latency"``: how many times the no-load latency the fleet's
    median may reach before the limit stops climbing and steps down."""
    latency_window_seconds: float = Field(30.0, gt=0, allow_inf_nan=False)
    """``policy="latency"``: how long a no-load latency is trusted while the
    latency says "queue"; then the limit dips to a quarter for a moment to
    measure it again (a server slower for everyone is not a queue)."""

    reserved: str = ""
    """Shares of the limit held for groups, which no other group may use even
    while they are idle: ``{"interactive": 0.2}`` (or its stored form,
    ``"interactive=0.2"``) keeps ``floor(0.2 * current_limit)`` slots for
    the group ``interactive``; beyond them it competes for the rest by
    weight. Together at most 0.9, for at most 16 groups; the default group
    cannot hold one. Unlike the other stored settings, a register with none
    leaves the model's reservations as they are; ``configure(reserved="")``
    clears them (docs/fairness.md)."""

    @field_validator("reserved", mode="before")
    @classmethod
    def _reserved_text(cls, value: object) -> object:
        """A mapping of shares, or its text, as stored: 'group=share,...'."""
        if isinstance(value, str):
            pairs: list[tuple[str, object]] = []
            for part in filter(None, value.split(",")):
                name, eq, share = part.partition("=")
                if not eq:
                    raise InvalidArgumentError(f"reserved: {part!r} is not 'group=share'")
                try:
                    pairs.append((name, float(share)))
                except ValueError:
                    raise InvalidArgumentError(f"reserved: {share!r} is not a number") from None
            value = dict(pairs)
        if not isinstance(value, Mapping):
            raise InvalidArgumentError("reserved must be a mapping of group to share, or 'group=share,...'")
        stored: dict[str, str] = {}
        for name, share in value.items():
            if check_group(name) is None or name == DEFAULT_GROUP:
                raise InvalidArgumentError("reserved: the default group cannot hold a reservation")
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.001 <= share <= MAX_RESERVED:
                raise InvalidArgumentError(f"reserved: the share of {name!r} must be 0.001 to {MAX_RESERVED}")
            stored[name] = f"{share:.6f}".rstrip("0")
        # The shares as stored (to the millionth) are the ones the scripts add up.
        total = math.fsum(float(share) for share in stored.values())
        if len(stored) > MAX_RESERVED_GROUPS:
            raise InvalidArgumentError(f"reserved: at most {MAX_RESERVED_GROUPS} groups may hold a reservation")
        if total > MAX_RESERVED + 1e-9:
            raise InvalidArgumentError(f"reserved: the shares add up to {total:g}, more than {MAX_RESERVED}")
        return ",".join(f"{name}={share}" for name, share in sorted(stored.items()))

    @model_validator(mode="after")
    def _idle_outlasts_leases(self) -> ThrottleConfig:
        if 0 < self.idle_ttl_seconds < self.lease_ttl_seconds:
            raise InvalidArgumentError(
                "idle_ttl_seconds must be 0 or at least lease_ttl_seconds, or a held "
                "lease's domain could expire under it"
            )
        return self

    def settings(self) -> dict[str, float | str]:
        """The loop's settings, as register stores them in the model's cap hash."""
        return {name: getattr(self, name) for name in SETTINGS}


class FailOpen(_Settings):
    """Let callers proceed while Redis is unreachable, each process allowing
    at most ``concurrency`` requests at once per domain on its own.

    There is no default: with R processes the fleet may send R x
    ``concurrency`` while Redis is down, and that number should be chosen,
    not stumbled into.
    """

    concurrency: int = Field(ge=1)
    """Requests this process may have open at once per domain without Redis."""
