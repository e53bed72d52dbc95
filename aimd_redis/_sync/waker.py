"""Wake-ups for waiting acquires.

When a release hands a slot to a queued waiter, the script publishes
'<waiter id> <expiry> <state>' on the waiter's process channel; this routes it
to the waiting caller. A lost message only delays the waiter until its next
re-check. Generated from aimd_redis/_async/waker.py
by tools/unasync.py: edit that file, not this one.

A plain client listens on one pub/sub connection. A cluster client uses
sharded pub/sub (SSUBSCRIBE, Redis 7): a channel lives on the node that owns
its hash slot, the model's, so there is one connection per node that holds
a model this process waits on. Should a connection fail, it is dropped with
its subscriptions: waiters already queued fall back to re-checking, and the
next acquire subscribes again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.exceptions

from aimd_redis._sync.synchronization import Event, Lock, Mailbox, Worker, node_client, node_of, ssubscribe
from aimd_redis.core import read_pubsub
from aimd_redis.errors import one_line

logger = logging.getLogger("aimd_redis")

#: How long Redis may take to confirm a subscription when the client has no
#: socket timeout to go by; past it, Redis counts as unreachable.
CONFIRM_SECONDS = 10.0
#: How long one read of a pub/sub connection waits: a listener that is to
#: stop notices within this.
LISTEN_SECONDS = 0.2


class _Link:
    """One pub/sub connection and the worker that reads it."""

    def __init__(self, pubsub: Any, client: Any) -> None:
        self.pubsub = pubsub
        self.client = client  # a node client this link made (cluster), closed with it
        self.channels: set[str] = set()
        self.stopping = Event()
        self.worker: Worker | None = None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        else:
            self.stopping.set()
        with contextlib.suppress(Exception):
            self.pubsub.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()


class Waker:
    def __init__(self, redis: Any, *, sharded: bool = False, confirm_seconds: float = CONFIRM_SECONDS) -> None:
        self._redis = redis
        self._sharded = sharded
        self._confirm_seconds = confirm_seconds
        self._lock = Lock()
        self._links: dict[str, _Link] = {}  # by node name; one entry "" unless sharded
        self._confirmed: dict[str, Event] = {}
        self._waiting: dict[str, Mailbox[str]] = {}
        # Whole channels' messages to one receiver (a process's agent), by the
        # message's first word.
        self._handlers: dict[str, Callable[[str, str], None]] = {}

    def watch(self, channel: str) -> None:
        """Subscribe to ``channel`` (once) and return when Redis confirmed it."""
        with self._lock:  # a listener may only read once its connection exists
            link = self._link_for(channel)
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                confirmed = self._confirmed[channel] = Event()
                try:
                    if self._sharded:
                        ssubscribe(link.pubsub, channel)
                    else:
                        link.pubsub.subscribe(channel)
                except BaseException:
                    del self._confirmed[channel]
                    raise
                link.channels.add(channel)
                if link.worker is None:
                    link.worker = Worker(lambda: self._listen(link), "aimd-redis waker", link.stopping)
        if not confirmed.wait(self._confirm_seconds):
            # Sent, never answered (a stalled server): the link is not to be trusted.
            self._drop(link)
            raise redis.exceptions.TimeoutError(f"Redis did not confirm the subscription to {channel}")

    def _link_for(self, channel: str) -> _Link:
        if not self._sharded:
            if "" not in self._links:
                self._links[""] = _Link(self._redis.pubsub(), None)
            return self._links[""]
        node = node_of(self._redis, channel)
        if node.name not in self._links:
            client = node_client(self._redis, node)
            self._links[node.name] = _Link(client.pubsub(), client)
        return self._links[node.name]

    def expect(self, waiter_id: str) -> None:
        """Start catching wake-ups for ``waiter_id`` (before it can be queued)."""
        self._waiting[waiter_id] = Mailbox()

    def wait(self, waiter_id: str, timeout: float) -> str | None:
        """The hand-over message for ``waiter_id``, or None after ``timeout``."""
        return self._waiting[waiter_id].get(timeout)

    def route(self, name: str, handler: Callable[[str, str], None]) -> None:
        """Hand every message whose first word is ``name`` (or
        ``name~<group>``) to ``handler``, with its channel (called in the
        listener: it must not block)."""
        self._handlers[name] = handler

    def forget(self, waiter_id: str) -> None:
        self._waiting.pop(waiter_id, None)

    def _listen(self, link: _Link) -> None:
        while not link.stopping.is_set():
            try:
                message = link.pubsub.get_message(ignore_subscribe_messages=False, timeout=LISTEN_SECONDS)
            except Exception as exc:
                if not link.stopping.is_set():
                    line = one_line(exc)
                    why = line or exc
                    logger.warning("wake-up channel failed (%s); waiters re-check instead", why, exc_info=not line)
                    self._drop(link)
                return
            if message is None:
                continue
            kind, channel, text = read_pubsub(message)
            if kind in ("subscribe", "ssubscribe") and channel in self._confirmed:
                self._confirmed[channel].set()
            elif kind in ("message", "smessage"):
                name = text.split(" ", 1)[0]
                handler = self._handlers.get(name.partition("~")[0])  # an agent's entry of a group: '<agent>~<group>'
                if handler is not None:
                    handler(channel, text)
                mailbox = self._waiting.get(name)
                if mailbox is not None:
                    mailbox.put(text)

    def _drop(self, link: _Link) -> None:
        with self._lock:
            for name, known in list(self._links.items()):
                if known is link:
                    del self._links[name]
            for channel in link.channels:
                event = self._confirmed.pop(channel, None)
                if event is not None:
                    event.set()  # nobody waits for a confirmation that cannot come
        link.close()

    def close(self) -> None:
        with self._lock:
            links, self._links = list(self._links.values()), {}
            self._confirmed.clear()
        for link in links:
            link.close()
