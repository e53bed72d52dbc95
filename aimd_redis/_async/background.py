"""A job run every few seconds for the life of an asyncio client.

aimd_redis/_sync/background.py is the thread-based twin (written by hand:
a task and a thread differ in more than their keywords).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aimd_redis.errors import one_line

logger = logging.getLogger("aimd_redis")


class Periodic:
    """Runs ``job`` every ``interval`` seconds from the first :meth:`start`
    until :meth:`stop`; a failing run is logged and the next one goes ahead."""

    def __init__(self, interval: float, job: Callable[[], Awaitable[None]], name: str) -> None:
        self._interval = interval
        self._job = job
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self._name)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._job()
            except Exception as exc:
                line = one_line(exc)
                logger.warning(
                    "%s failed (%s); trying again in %.1fs",
                    self._name,
                    line or exc,
                    self._interval,
                    exc_info=line is None,
                )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
