"""What a throttle tells an observer (``Throttle(..., observer=...)``): each
slot it grants or is refused, and each outcome reported. ``aimd_redis.otel``
turns these into OpenTelemetry metrics.

The throttle calls an observer on the caller's own thread or task, inline:
an observer must be quick and must not raise. Slots taken while failing
open (Redis unreachable) are not observed.
"""

from __future__ import annotations

from typing import Protocol

from aimd_redis.structs import DomainState, LeaseRef, ReleaseResult


class Observer(Protocol):
    def granted(self, ref: LeaseRef, state: DomainState, waited: float) -> None:
        """A slot was granted after ``waited`` seconds (0 for try_acquire)."""

    def denied(self, ref: LeaseRef, reason: str, state: DomainState | None, waited: float) -> None:
        """No slot: ``reason`` is a Denied's (cooldown, at_capacity, budget),
        or ``timeout`` when acquire gave up waiting."""

    def reported(self, ref: LeaseRef, outcome: str, result: ReleaseResult) -> None:
        """An outcome (success, rate_limited, failure) reached Redis."""
