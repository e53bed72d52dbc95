"""The per-process limit a fail-open client uses while Redis is unreachable
(the asyncio twin is aimd_redis/_async/fallback.py)."""

from __future__ import annotations

import threading


class LocalLimit:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.held = 0
        self._semaphore = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()

    def take(self, timeout: float | None) -> bool:
        """A local slot within ``timeout`` seconds (None: however long it takes)."""
        got = self._semaphore.acquire(blocking=False) if timeout == 0 else self._semaphore.acquire(timeout=timeout)
        if not got:
            return False
        with self._lock:
            self.held += 1
        return True

    def give(self) -> None:
        with self._lock:
            self.held -= 1
        self._semaphore.release()
