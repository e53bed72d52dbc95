"""A job run every few seconds for the life of a sync client, in a thread.

The asyncio twin is aimd_redis/_async/background.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from aimd_redis.errors import one_line

logger = logging.getLogger("aimd_redis")


class Periodic:
    """Runs ``job`` every ``interval`` seconds in a daemon thread from the
    first :meth:`start` until :meth:`stop`; a failing run is logged and the
    next one goes ahead."""

    def __init__(self, interval: float, job: Callable[[], None], name: str) -> None:
        self._interval = interval
        self._job = job
        self._name = name
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self._job()
            except Exception as exc:
                line = one_line(exc)
                why = line or exc
                wait = self._interval
                logger.warning("%s failed (%s); trying again in %.1fs", self._name, why, wait, exc_info=not line)

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
