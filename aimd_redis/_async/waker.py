"""Wake-ups for waiting acquires: one pub/sub connection per client.

When a release hands a slot to a queued waiter, the script publishes
'<waiter id> <expiry> <state>' on the waiter's process channel; this routes it
to the waiting task. A lost message only delays the waiter until its next
re-check. aimd_redis/_sync/waker.py is the thread-based twin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aimd_redis.core import read_pubsub

logger = logging.getLogger("aimd_redis")

#: How long a waiter waits for Redis to confirm a subscription before it
#: goes on without (it re-checks anyway, every ``wait_poll_seconds``).
CONFIRM_SECONDS = 10.0


class Waker:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._confirmed: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, asyncio.Future[str]] = {}

    async def watch(self, channel: str) -> None:
        """Subscribe to ``channel`` (once) and return when Redis confirmed it."""
        async with self._lock:  # the listener may only read once the connection exists
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                confirmed = self._confirmed[channel] = asyncio.Event()
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    del self._confirmed[channel]
                    raise
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._listen(), name="aimd-redis waker")
        with contextlib.suppress(asyncio.TimeoutError):  # unconfirmed: the waiter still re-checks
            await asyncio.wait_for(confirmed.wait(), CONFIRM_SECONDS)

    def expect(self, waiter_id: str) -> None:
        """Start catching wake-ups for ``waiter_id`` (before it can be queued)."""
        self._waiting[waiter_id] = asyncio.get_running_loop().create_future()

    async def wait(self, waiter_id: str, timeout: float) -> str | None:
        """The hand-over message for ``waiter_id``, or None after ``timeout``."""
        future = self._waiting[waiter_id]
        done, _ = await asyncio.wait({future}, timeout=timeout)
        return future.result() if done else None

    def forget(self, waiter_id: str) -> None:
        self._waiting.pop(waiter_id, None)

    async def _listen(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("wake-up channel failed; waiters fall back to re-checking", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            if message is None:
                continue
            kind, channel, text = read_pubsub(message)
            if kind == "subscribe" and channel in self._confirmed:
                self._confirmed[channel].set()
            elif kind == "message":
                future = self._waiting.get(text.split(" ", 1)[0])
                if future is not None and not future.done():
                    future.set_result(text)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        self._confirmed.clear()
