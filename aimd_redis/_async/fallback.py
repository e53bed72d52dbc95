"""The per-process limit a fail-open client uses while Redis is unreachable.

aimd_redis/_sync/fallback.py is the thread-based twin (waiting on a
semaphore differs between the two in more than keywords).
"""

from __future__ import annotations

import asyncio


class LocalLimit:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.held = 0
        self._semaphore = asyncio.Semaphore(concurrency)

    async def take(self, timeout: float | None) -> bool:
        """A local slot within ``timeout`` seconds (None: however long it takes)."""
        if timeout == 0:
            if self._semaphore.locked():
                return False
            await self._semaphore.acquire()  # free: returns at once
        else:
            try:
                await asyncio.wait_for(self._semaphore.acquire(), timeout)
            except asyncio.TimeoutError:
                return False
        self.held += 1
        return True

    def give(self) -> None:
        self.held -= 1
        self._semaphore.release()
