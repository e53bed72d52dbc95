"""A plain-Python model of the algorithm, written from the product spec.

It shares no code with the Lua scripts; the property test drives both with
the same operations and compares them field by field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from aimd_redis import ThrottleConfig


def cooldown_for(c: ThrottleConfig, retry_after: float | None) -> float:
    """The cooldown a 429 imposes: a usable Retry-After, else cooldown_seconds; at most max_cooldown_seconds."""
    usable = retry_after is not None and math.isfinite(retry_after) and retry_after > 0
    return min(float(retry_after) if usable and retry_after is not None else c.cooldown_seconds, c.max_cooldown_seconds)


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
    probe_after: int = 0
    increase_step: int = 0
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
        granted_at = d.leases.pop(lease_id) - self.c.lease_ttl_seconds
        if self.c.policy == "adaptive":
            fresh = granted_at >= d.ceiling_confirmed_at
            saturated = len(d.leases) + 1 >= d.current_limit
            Adaptive(self.c, d, emax, now).release(outcome, retry_after, fresh, saturated)
            return True
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
            d.blocked_until = now + cooldown_for(self.c, retry_after)
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


class Adaptive:
    """The adaptive policy, as docs/control-loop.md describes it."""

    MAX_WINDOWS = 16  # probe_after is at most this many success windows, or rounds
    PERSISTING = 3  # 429s with nothing sent since a cut getting through
    NOISE_WINDOWS = 2  # success windows a 429 taken as noise uses up

    def __init__(self, config: ThrottleConfig, d: RefDomain, emax: int, now: float) -> None:
        self.c, self.d, self.emax, self.now = config, d, emax, now

    def base(self, limit: int) -> int:
        return min(self.c.success_window, 2 * limit)

    def held(self, limit: int) -> int:
        return max(limit, self.base(limit))

    def release(self, outcome: str, retry_after: float | None, fresh: bool, saturated: bool) -> None:
        d = self.d
        if outcome == "success":
            self.success(fresh, saturated)
        elif outcome == "rate_limited":
            d.rampup_active = False
            self.rate_limited(cooldown_for(self.c, retry_after), fresh, saturated)
        elif not d.leases:
            d.consecutive_429s = 0

    def success(self, fresh: bool, saturated: bool) -> None:
        d = self.d
        if fresh:
            d.consecutive_429s = 0
        RefModel(self.c)._ramp(d, self.now, self.emax)
        if d.rampup_active:
            d.success_streak = 0
            return
        if not saturated or d.current_limit >= self.emax:  # used in full, and never above the max
            return
        d.success_streak += 1
        limit, mark = d.current_limit, d.rate_limit_ceiling
        if mark and limit < mark - 1:  # back up under the mark, a step per quarter round
            if d.success_streak >= max(1, limit // 4):
                d.current_limit, d.success_streak = limit + 1, 0
        elif mark and limit == mark - 1:  # just under the mark: probe it in time
            if d.success_streak >= max(d.probe_after, self.base(limit)):
                d.current_limit, d.success_streak = mark, 0
        elif d.success_streak >= (self.held(limit) if mark else limit):
            if mark:  # the probe held
                d.rate_limit_ceiling = 0
                d.probe_after = max(self.base(limit), d.probe_after // 2)
            step = max(1, d.increase_step)
            d.current_limit = min(self.emax, limit + step)
            d.increase_step = min(2 * step, max(1, d.current_limit // 4))
            d.success_streak = 0

    def rate_limited(self, cooldown: float, fresh: bool, saturated: bool) -> None:
        d = self.d
        before, mark, streak = d.current_limit, d.rate_limit_ceiling, d.success_streak
        if not fresh:  # one of a burst sent before the last cut
            if saturated:
                d.current_limit = max(1, before - 1)
                if not mark or mark > d.current_limit + 1:
                    d.rate_limit_ceiling = d.current_limit + 1
                d.success_streak, d.increase_step = 0, 1
            return
        if before > 1 and (not mark or before >= mark):  # a probe refused, or the climb's end
            cap = self.MAX_WINDOWS * max(self.c.success_window, before)  # 16 windows, or 16 rounds
            d.probe_after = min(cap, 2 * max(d.probe_after, self.base(before)))
            d.rate_limit_ceiling, d.current_limit = before, before - 1
            d.success_streak = self.NOISE_WINDOWS * self.c.success_window if before == mark else 0
        else:
            d.consecutive_429s += 1
            cost = self.NOISE_WINDOWS * self.c.success_window
            if before == mark - 1 and streak >= cost and d.consecutive_429s == 1:
                d.success_streak = streak - cost  # noise
                return
            persisting = d.consecutive_429s >= self.PERSISTING
            d.rate_limit_ceiling = before
            if persisting:
                d.current_limit = max(1, math.floor(before * self.c.reduce_factor))
                d.success_streak = 0
            else:
                d.current_limit = max(1, before - 1)
                d.success_streak = max(0, d.probe_after - self.base(d.current_limit))
            if before == 1 and persisting:
                d.blocked_until = max(d.blocked_until, self.now + cooldown)
        d.ceiling_confirmed_at = self.now
        d.increase_step = 1
