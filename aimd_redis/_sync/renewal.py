"""The leases this process holds, renewed in the background every third of
their ttl, so that only a dead process's slots ever expire.

Generated from aimd_redis/_async/renewal.py
by tools/unasync.py: edit that file, not this one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aimd_redis._sync.background import Periodic
from aimd_redis.core import Call, Core

if TYPE_CHECKING:
    from aimd_redis._sync.throttle import Lease

logger = logging.getLogger("aimd_redis")

#: Early acks kept for callers that have not taken their slot yet (a caller
#: gone meanwhile leaves one behind).
EARLY_ACKS_KEPT = 1024


class Renewals:
    def __init__(self, core: Core, run: Callable[[Call], Any]) -> None:
        self._core = core
        self._run = run
        self._held: dict[str, Lease] = {}
        # Acks of handed-over slots that came before their caller took the
        # lease (the agent's flusher may run first): applied when it does.
        self._early_acks: dict[str, float] = {}
        self._lock = threading.Lock()
        self._renewer = Periodic(core.config.lease_ttl_seconds / 3, self._renew_held, "aimd-redis lease renewer")

    @property
    def running(self) -> bool:
        return self._renewer.running

    def __contains__(self, lease_id: str) -> bool:
        return lease_id in self._held

    def hold(self, lease: Lease, now: float | None) -> Lease:
        """Renew ``lease`` until it is reported (not when the caller injects
        time: it renews for itself)."""
        with self._lock:
            lease.expires_at = self._early_acks.pop(lease.id, lease.expires_at)
            if now is None:
                self._held[lease.id] = lease
        if now is None:
            self._renewer.start()
        return lease

    def acked(self, lease_id: str, expiry: float) -> None:
        """Redis took the ack of a slot handed over: its lease runs to ``expiry``."""
        with self._lock:
            lease = self._held.get(lease_id)
            if lease is not None:
                lease.expires_at = expiry
                return
            self._early_acks[lease_id] = expiry
            if len(self._early_acks) > EARLY_ACKS_KEPT:  # callers that went before taking theirs
                del self._early_acks[next(iter(self._early_acks))]

    def forget(self, lease_id: str) -> None:
        """Reported: never renewed again, whatever comes of the report."""
        self._held.pop(lease_id, None)

    def clear(self) -> None:
        self._held.clear()

    def _renew_held(self) -> None:
        self.renew(list(self._held.values()))

    def renew(self, leases: list[Lease]) -> None:
        """One script call per model."""
        by_model: dict[tuple[str, str], list[Lease]] = {}
        for lease in leases:
            by_model.setdefault((lease.ref.provider_name, lease.ref.model_id), []).append(lease)
        for group in by_model.values():
            call = self._core.renew_call([lease.ref for lease in group], None)
            for lease, expiry in zip(group, self._core.parse_renew(self._run(call)), strict=True):
                if expiry is not None:
                    lease.expires_at = expiry
                # Gone: released meanwhile (fine), or expired unrenewed or lost
                # with Redis's data (say so).
                elif self._held.pop(lease.id, None) is not None and not lease.reported:
                    logger.warning("%r was gone from Redis when it was to be renewed (expired, or lost)", lease)

    def renew_one(self, lease: Lease, now: float | None) -> bool:
        if lease.local is not None:
            return not lease.reported  # a local slot does not expire
        (expiry,) = self._core.parse_renew(self._run(self._core.renew_call([lease.ref], now)))
        if expiry is None:
            return False
        lease.expires_at = expiry
        return True

    def stop(self) -> None:
        self._renewer.stop()
