"""The per-process limit a fail-open client uses while Redis is unreachable.

Generated from aimd_redis/_async/fallback.py
by tools/unasync.py: edit that file, not this one.
"""

from __future__ import annotations

import threading

from aimd_redis._sync.synchronization import Semaphore


class LocalLimit:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.held = 0
        self._semaphore = Semaphore(concurrency)
        self._count = threading.Lock()  # never held across a wait

    def take(self, timeout: float | None) -> bool:
        """A local slot within ``timeout`` seconds (None: however long it takes)."""
        if not self._semaphore.acquire(timeout):
            return False
        with self._count:
            self.held += 1
        return True

    def give(self) -> None:
        with self._count:
            self.held -= 1
        self._semaphore.release()
