"""Outcomes and give-backs that did not reach Redis, sent again until Redis
takes them or the lease would have expired anyway (both are idempotent by
lease id).

aimd_redis/_sync/resend.py is generated from this file by tools/unasync.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aimd_redis._async.background import Periodic
from aimd_redis._async.synchronization import run_to_the_end
from aimd_redis.core import Call
from aimd_redis.errors import AimdRedisError, RedisUnavailableError, one_line
from aimd_redis.structs import LeaseRef

logger = logging.getLogger("aimd_redis")

#: How often an outcome that did not reach Redis is sent again.
RESEND_SECONDS = 1.0


class AsyncResender:
    def __init__(self, run: Callable[[Call], Awaitable[Any]], lease_ttl_seconds: float) -> None:
        self._run = run
        self._ttl = lease_ttl_seconds
        # lease id -> (call, the lease's name for the logs, monotonic deadline)
        self._unsent: dict[str, tuple[Call, LeaseRef, float]] = {}
        self._resender = Periodic(RESEND_SECONDS, self._resend, "aimd-redis outcome resender")

    async def run_quietly(self, call: Call, ref: LeaseRef) -> None:
        """A call that gives a slot back, after the first try was cut off: sent
        now, and again in the background until Redis takes it."""

        async def give_back() -> None:
            try:
                await self._run(call)
            except BaseException as exc:  # the caller's own exception is on its way; this one only informs
                self.keep(call, ref, exc)

        await run_to_the_end(give_back)

    def keep(self, call: Call, ref: LeaseRef, exc: BaseException) -> None:
        """Send ``call`` again until Redis takes it, or until the lease would
        have expired anyway."""
        if ref.lease_id not in self._unsent:
            logger.warning(
                "could not report on lease %s of %s/%s %s (%s); sending it again until Redis takes it",
                ref.lease_id,
                ref.provider_name,
                ref.model_id,
                ref.domain,
                one_line(exc) or exc,
            )
        self._unsent[ref.lease_id] = (call, ref, time.monotonic() + self._ttl)
        self._resender.start()

    def sent(self, lease_id: str) -> None:
        """Redis took a report on the lease: nothing of it is to be sent again."""
        self._unsent.pop(lease_id, None)

    def clear(self) -> None:
        self._unsent.clear()

    async def _resend(self) -> None:
        for lease_id, (call, ref, deadline) in list(self._unsent.items()):
            if time.monotonic() > deadline:  # Redis has reclaimed the slot and would ignore the outcome
                self._unsent.pop(lease_id, None)
                logger.warning("gave up reporting on lease %s: it has expired, and its slot is back", lease_id)
                continue
            try:
                await self._run(call)
            except RedisUnavailableError:
                return  # still unreachable: so would the rest be; next round
            except AimdRedisError:
                continue  # refused for this one (a broken field, memory): the others may go through
            self._unsent.pop(lease_id, None)
            logger.info(
                "reported on lease %s of %s/%s %s after all", lease_id, ref.provider_name, ref.model_id, ref.domain
            )

    async def stop(self) -> None:
        """Stop, after one last try for what Redis has not taken yet."""
        await self._resender.stop()
        if self._unsent:
            await self._resend()
