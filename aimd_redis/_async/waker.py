"""Wake-ups for waiting acquires.

When a release hands a slot to a queued waiter, the script publishes
'<waiter id> <expiry> <state>' on the waiter's process channel; this routes it
to the waiting task. A lost message only delays the waiter until its next
re-check. aimd_redis/_sync/waker.py is the thread-based twin.

A plain client listens on one pub/sub connection. A cluster client uses
sharded pub/sub (SSUBSCRIBE, Redis 7): a channel lives on the node that owns
its hash slot, the model's, so there is one connection per node that holds
a model this process waits on. Should a connection fail, it is dropped with
its subscriptions: waiters already queued fall back to re-checking, and the
next acquire subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.exceptions
from redis.asyncio import ConnectionPool, Redis

from aimd_redis.core import read_pubsub
from aimd_redis.errors import one_line

logger = logging.getLogger("aimd_redis")

#: How long Redis may take to confirm a subscription when the client has no
#: socket timeout to go by; past it, Redis counts as unreachable.
CONFIRM_SECONDS = 10.0


class _Link:
    """One pub/sub connection and the task that reads it."""

    def __init__(self, pubsub: Any, client: Redis | None) -> None:
        self.pubsub = pubsub
        self.client = client  # a node client this link made (cluster), closed with it
        self.channels: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()


class Waker:
    def __init__(self, redis: Any, *, sharded: bool = False, confirm_seconds: float = CONFIRM_SECONDS) -> None:
        self._redis = redis
        self._sharded = sharded
        self._confirm_seconds = confirm_seconds
        self._lock = asyncio.Lock()
        self._links: dict[str, _Link] = {}  # by node name; one entry "" unless sharded
        self._confirmed: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, asyncio.Future[str]] = {}

    async def watch(self, channel: str) -> None:
        """Subscribe to ``channel`` (once) and return when Redis confirmed it."""
        async with self._lock:  # a listener may only read once its connection exists
            link = await self._link_for(channel)
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                confirmed = self._confirmed[channel] = asyncio.Event()
                try:
                    if self._sharded:
                        await link.pubsub.execute_command("SSUBSCRIBE", channel)
                    else:
                        await link.pubsub.subscribe(channel)
                except BaseException:
                    del self._confirmed[channel]
                    raise
                link.channels.add(channel)
                if link.task is None:
                    link.task = asyncio.get_running_loop().create_task(self._listen(link), name="aimd-redis waker")
        try:
            await asyncio.wait_for(confirmed.wait(), self._confirm_seconds)
        except asyncio.TimeoutError:
            # Sent, never answered (a stalled server): the link is not to be trusted.
            await self._drop(link)
            raise redis.exceptions.TimeoutError(f"Redis did not confirm the subscription to {channel}") from None

    async def _link_for(self, channel: str) -> _Link:
        if not self._sharded:
            if "" not in self._links:
                self._links[""] = _Link(self._redis.pubsub(), None)
            return self._links[""]
        await self._redis.initialize()
        node = self._redis.get_node_from_key(channel)
        if node.name not in self._links:
            pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            client = Redis.from_pool(pool)  # closing the client closes the pool
            self._links[node.name] = _Link(client.pubsub(), client)
        return self._links[node.name]

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

    async def _listen(self, link: _Link) -> None:
        while True:
            try:
                message = await link.pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                line = one_line(exc)
                why = line or exc
                logger.warning("wake-up channel failed (%s); waiters re-check instead", why, exc_info=not line)
                await self._drop(link)
                return
            if message is None:
                continue
            kind, channel, text = read_pubsub(message)
            if kind in ("subscribe", "ssubscribe") and channel in self._confirmed:
                self._confirmed[channel].set()
            elif kind in ("message", "smessage"):
                future = self._waiting.get(text.split(" ", 1)[0])
                if future is not None and not future.done():
                    future.set_result(text)

    async def _drop(self, link: _Link) -> None:
        async with self._lock:
            for name, known in list(self._links.items()):
                if known is link:
                    del self._links[name]
            for channel in link.channels:
                event = self._confirmed.pop(channel, None)
                if event is not None:
                    event.set()  # nobody waits for a confirmation that cannot come
        await link.close()

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.close()
        self._confirmed.clear()
