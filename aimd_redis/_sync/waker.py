"""Wake-ups for waiting acquires: one pub/sub connection per client, read by
one thread. The asyncio twin is aimd_redis/_async/waker.py."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from aimd_redis.core import read_pubsub

logger = logging.getLogger("aimd_redis")

#: How long a waiter waits for Redis to confirm a subscription before it
#: goes on without (it re-checks anyway, every ``wait_poll_seconds``).
CONFIRM_SECONDS = 10.0


class _Slot:
    """Where the listener leaves a wake-up for one waiting thread."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message = ""


class Waker:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._lock = threading.Lock()
        self._pubsub: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._confirmed: dict[str, threading.Event] = {}
        self._waiting: dict[str, _Slot] = {}

    def watch(self, channel: str) -> None:
        """Subscribe to ``channel`` (once) and return when Redis confirmed it."""
        with self._lock:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                confirmed = self._confirmed[channel] = threading.Event()
                try:
                    self._pubsub.subscribe(channel)
                except BaseException:
                    del self._confirmed[channel]
                    raise
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._listen, name="aimd-redis waker", daemon=True)
                self._thread.start()
        confirmed.wait(CONFIRM_SECONDS)  # unconfirmed: the waiter still re-checks

    def expect(self, waiter_id: str) -> None:
        """Start catching wake-ups for ``waiter_id`` (before it can be queued)."""
        self._waiting[waiter_id] = _Slot()

    def wait(self, waiter_id: str, timeout: float) -> str | None:
        """The hand-over message for ``waiter_id``, or None after ``timeout``."""
        slot = self._waiting[waiter_id]
        return slot.message if slot.event.wait(timeout) else None

    def forget(self, waiter_id: str) -> None:
        self._waiting.pop(waiter_id, None)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                message = self._pubsub.get_message(ignore_subscribe_messages=False, timeout=0.2)
            except Exception:
                if self._stopping.is_set():
                    return
                logger.warning("wake-up channel failed; waiters fall back to re-checking", exc_info=True)
                self._stopping.wait(1.0)
                continue
            if message is None:
                continue
            kind, channel, text = read_pubsub(message)
            if kind == "subscribe" and channel in self._confirmed:
                self._confirmed[channel].set()
            elif kind == "message":
                slot = self._waiting.get(text.split(" ", 1)[0])
                if slot is not None:
                    slot.message = text
                    slot.event.set()

    def close(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
            self._pubsub = None
        self._confirmed.clear()
