"""Wake-ups for waiting acquires, read by one thread per pub/sub connection.
The asyncio twin, aimd_redis/_async/waker.py, says how they work."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import redis.exceptions

from aimd_redis.core import read_pubsub
from aimd_redis.errors import one_line

logger = logging.getLogger("aimd_redis")

#: How long Redis may take to confirm a subscription when the client has no
#: socket timeout to go by; past it, Redis counts as unreachable.
CONFIRM_SECONDS = 10.0


class _Slot:
    """Where the listener leaves a wake-up for one waiting thread."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message = ""


class _Link:
    """One pub/sub connection and the thread that reads it."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub
        self.channels: set[str] = set()
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()
        with contextlib.suppress(Exception):
            self.pubsub.close()


class Waker:
    def __init__(self, redis: Any, *, sharded: bool = False, confirm_seconds: float = CONFIRM_SECONDS) -> None:
        self._redis = redis
        self._sharded = sharded
        self._confirm_seconds = confirm_seconds
        self._lock = threading.Lock()
        self._links: dict[str, _Link] = {}  # by node name; one entry "" unless sharded
        self._confirmed: dict[str, threading.Event] = {}
        self._waiting: dict[str, _Slot] = {}

    def watch(self, channel: str) -> None:
        """Subscribe to ``channel`` (once) and return when Redis confirmed it."""
        with self._lock:  # a listener may only read once its connection exists
            link = self._link_for(channel)
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                confirmed = self._confirmed[channel] = threading.Event()
                try:
                    if self._sharded:
                        link.pubsub.ssubscribe(channel)
                    else:
                        link.pubsub.subscribe(channel)
                except BaseException:
                    del self._confirmed[channel]
                    raise
                link.channels.add(channel)
                if link.thread is None:
                    link.thread = threading.Thread(target=self._listen, args=(link,), daemon=True)
                    link.thread.name = "aimd-redis waker"
                    link.thread.start()
        if not confirmed.wait(self._confirm_seconds):
            # Sent, never answered (a stalled server): the link is not to be trusted.
            self._drop(link)
            raise redis.exceptions.TimeoutError(f"Redis did not confirm the subscription to {channel}")

    def _link_for(self, channel: str) -> _Link:
        if not self._sharded:
            if "" not in self._links:
                self._links[""] = _Link(self._redis.pubsub())
            return self._links[""]
        node = self._redis.get_node_from_key(channel)
        if node.name not in self._links:
            # The node's own client: its pub/sub re-subscribes after a reconnect.
            self._links[node.name] = _Link(self._redis.get_redis_connection(node).pubsub())
        return self._links[node.name]

    def expect(self, waiter_id: str) -> None:
        """Start catching wake-ups for ``waiter_id`` (before it can be queued)."""
        self._waiting[waiter_id] = _Slot()

    def wait(self, waiter_id: str, timeout: float) -> str | None:
        """The hand-over message for ``waiter_id``, or None after ``timeout``."""
        slot = self._waiting[waiter_id]
        return slot.message if slot.event.wait(timeout) else None

    def forget(self, waiter_id: str) -> None:
        self._waiting.pop(waiter_id, None)

    def _listen(self, link: _Link) -> None:
        while not link.stopping.is_set():
            try:
                message = link.pubsub.get_message(ignore_subscribe_messages=False, timeout=0.2)
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
                slot = self._waiting.get(text.split(" ", 1)[0])
                if slot is not None:
                    slot.message = text
                    slot.event.set()

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
