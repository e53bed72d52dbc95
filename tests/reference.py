"""A plain-Python model of the algorithm, written from the product spec.

It shares no code with the Lua scripts; the property test drives both with
the same operations and compares them field by field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from aimd_redis import ThrottleConfig


@dataclass
class RefDomain:
    current_limit: int
    blocked_until: float
    rampup_started_at: float
    rampup_active: bool
    success_streak: int = 0
    rate_limit_ceiling: int = 0
    consecutive_429s: int = 0
    ceiling_confirmed_at: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> dict[str, object]:
        return {
            "current_limit": self.current_limit,
            "in_flight": len(self.leases),
            "blocked_until": self.blocked_until,
            "success_streak": self.success_streak,
            "waiters": 0,
            "rate_limit_ceiling": self.rate_limit_ceiling,
            "consecutive_429s": self.consecutive_429s,
            "rampup_started_at": self.rampup_started_at,
            "rampup_active": self.rampup_active,
        }


class NotRegistered(Exception):
    pass


class RefModel:
    def __init__(self, config: ThrottleConfig) -> None:
        self.c = config
        self.aliases: dict[str, int] = {}
        self.domains: dict[str, RefDomain] = {}

    @property
    def emax(self) -> int | None:
        return min(self.aliases.values()) if self.aliases else None

    def register(self, alias: str, max_parallel: int) -> int:
        self.aliases[alias] = max_parallel
        emax = min(self.aliases.values())
        for d in self.domains.values():
            d.current_limit = min(d.current_limit, emax)
        return emax

    def _reap_and_refresh(self, d: RefDomain, now: float, emax: int) -> None:
        d.leases = {k: exp for k, exp in d.leases.items() if exp > now}
        d.current_limit = min(d.current_limit, emax)
        ttl = self.c.ceiling_ttl_seconds
        if d.rate_limit_ceiling > 0 and ttl > 0 and now - d.ceiling_confirmed_at >= ttl:
            d.rate_limit_ceiling = 0

    def _ramp(self, d: RefDomain, now: float, emax: int) -> None:
        if not d.rampup_active:
            return
        elapsed = max(0.0, now - d.rampup_started_at)
        if elapsed >= self.c.rampup_seconds:
            d.current_limit, d.rampup_active = emax, False
        else:
            d.current_limit = min(emax, 1 + math.floor((emax - 1) * elapsed / self.c.rampup_seconds))

    def acquire(self, domain: str, lease_id: str, now: float) -> str:
        emax = self.emax
        if emax is None:
            raise NotRegistered
        d = self.domains.get(domain)
        if d is None:
            ramp = self.c.rampup_seconds > 0 and emax > 1
            d = RefDomain(
                current_limit=1 if ramp else emax, blocked_until=0.0, rampup_started_at=now, rampup_active=ramp
            )
            self.domains[domain] = d
        self._reap_and_refresh(d, now, emax)
        self._ramp(d, now, emax)
        if now < d.blocked_until:
            return "cooldown"
        if len(d.leases) >= d.current_limit:
            return "at_capacity"
        d.leases[lease_id] = now + self.c.lease_ttl_seconds
        return "granted"

    def release(self, domain: str, lease_id: str, outcome: str, retry_after: float | None, now: float) -> bool:
        emax = self.emax or 1
        d = self.domains.get(domain)
        if d is None:
            return False
        self._reap_and_refresh(d, now, emax)
        if lease_id not in d.leases:
            return False
        del d.leases[lease_id]
        if outcome == "success":
            d.consecutive_429s = 0
            self._ramp(d, now, emax)
            if d.rampup_active:
                d.success_streak = 0
                return True
            d.success_streak += 1
            if d.success_streak >= self.c.success_window:
                cap = emax
                if d.rate_limit_ceiling > 0:
                    c = d.rate_limit_ceiling
                    cap = min(emax, c + max(1, math.floor(c * self.c.ceiling_overshoot)))
                if d.current_limit < cap:
                    d.current_limit = min(cap, d.current_limit + self.c.additive_increase)
                d.success_streak = 0
        elif outcome == "rate_limited":
            d.rampup_active = False
            d.blocked_until = now + self.c.cooldown_for(retry_after)
            d.success_streak = 0
            if d.consecutive_429s == 0:
                before = d.current_limit
                d.current_limit = max(1, math.floor(before * self.c.reduce_factor))
                if d.current_limit < before:
                    d.rate_limit_ceiling = min(d.rate_limit_ceiling, before) if d.rate_limit_ceiling else before
            if d.rate_limit_ceiling > 0:
                d.ceiling_confirmed_at = now
            d.consecutive_429s += 1
        elif not d.leases:
            d.consecutive_429s = 0
        return True
