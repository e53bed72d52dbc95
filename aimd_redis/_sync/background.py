"""A job run every few seconds for the life of a client.

Generated from aimd_redis/_async/background.py
by tools/unasync.py: edit that file, not this one.
"""

from __future__ import annotations

import logging
import threading

from aimd_redis._sync.synchronization import Event, Job, Worker
from aimd_redis.errors import one_line

logger = logging.getLogger("aimd_redis")


class Periodic:
    """Runs ``job`` every ``interval`` seconds in the background from the
    first :meth:`start` until :meth:`stop`; a failing run is logged and the
    next one goes ahead."""

    def __init__(self, interval: float, job: Job, name: str) -> None:
        self._interval = interval
        self._job = job
        self._name = name
        # Never held across a wait: it only keeps two starts from racing.
        self._lock = threading.Lock()
        self._worker: Worker | None = None

    def start(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.alive():
                stopping = Event()  # this worker's own: a later start makes another
                self._worker = Worker(lambda: self._loop(stopping), self._name, stopping)

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.alive()

    def _loop(self, stopping: Event) -> None:
        while not stopping.wait(self._interval):
            try:
                self._job()
            except Exception as exc:
                line = one_line(exc)
                why = line or exc
                wait = self._interval
                logger.warning("%s failed (%s); trying again in %.1fs", self._name, why, wait, exc_info=not line)

    def stop(self) -> None:
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
