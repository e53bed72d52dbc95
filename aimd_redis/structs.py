"""Typed values the clients return."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec

from aimd_redis.errors import InvalidArgumentError

_Count = Annotated[int, msgspec.Meta(ge=0)]
_Time = Annotated[float, msgspec.Meta(ge=0)]


class DomainState(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one domain's hash in Redis (times in seconds)."""

    current_limit: Annotated[int, msgspec.Meta(ge=1)]
    in_flight: _Count
    blocked_until: _Time
    success_streak: _Count
    waiters: _Count
    rate_limit_ceiling: _Count
    consecutive_429s: _Count
    rampup_started_at: _Time
    rampup_active: bool

    def __post_init__(self) -> None:
        # The same rules the scripts apply to a hand-edited hash.
        for name in ("blocked_until", "rampup_started_at"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidArgumentError(f"{name} must be a finite number of seconds")


class Denied(msgspec.Struct, frozen=True, kw_only=True):
    """A try_acquire that got no slot."""

    reason: Literal["cooldown", "at_capacity", "budget"]
    retry_in: float
    """Seconds to wait: the cooldown left, a short poll interval at capacity,
    or until the model's budget has room for the request."""
    state: DomainState


class ReleaseResult(msgspec.Struct, frozen=True, kw_only=True):
    """What reporting a lease's outcome did."""

    released: bool
    """True only for the call that gave the slot back; an outcome reported on
    a lease already released or expired changes nothing."""
    state: DomainState | None
    """The domain after the call (None if it no longer exists)."""


class LimitEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One change the scripts made and appended to the model's event stream."""

    provider_name: str
    model_id: str
    domain: str
    """The domain, or ``*`` for a change of the model (its effective max,
    budget or a setting of its configuration)."""
    event: str
    old: float | str
    """A number, or a name for a change of policy."""
    new: float | str


class Queued(msgspec.Struct, frozen=True, kw_only=True):
    """An acquire that joined the domain's queue."""

    retry_in: float
    """Seconds until it should ask again (the cooldown left when it is first
    in line), or 0: wait for a hand-over."""
    state: DomainState
    at: float
    """When it was queued (Redis clock)."""


class LeaseRef(msgspec.Struct, frozen=True, kw_only=True):
    """Which lease of which domain."""

    provider_name: str
    model_id: str
    domain: str
    lease_id: str
    tokens: int = 0
    """The tokens it reserves of the model's budget."""
    group: str | None = None
    """The group it waits and counts in (None: the default group)."""
    weight: float = 1.0
    """Its group's weight while it waits."""


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """A granted slot, before a client wraps it in its Lease."""

    ref: LeaseRef
    expires_at: float
    state: DomainState
    granted_at: float = 0.0
    """When Redis granted it (its clock), which renewals do not move: the
    release tells the rules whether the request was sent after the last cut."""
