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
    first :meth:`start` until :meth:`stop`, and at once when poked; a failing
    run is logged and the next one goes ahead."""

    def __init__(self, interval: float, job: Job, name: str) -> None:
        self._interval = interval
        self._job = job
        self._name = name
        # Never held across a wait: it only keeps two starts from racing.
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        self._stopping = Event()
        self._poked = Event()

    def start(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.alive():
                stopping = self._stopping = Event()  # this worker's own: a later start makes another
                self._worker = Worker(lambda: self._loop(stopping), self._name, stopping)

    def poke(self) -> None:
        """Run the job as soon as it can (once for any number of pokes meanwhile)."""
        self._poked.set()

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.alive()

    def _loop(self, stopping: Event) -> None:
        while True:
            self._poked.wait(self._interval)
            if stopping.is_set():
                return
            self._poked.clear()  # before the run: a poke during it runs the job again
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
            self._stopping.set()
            self._poked.set()  # a thread waiting for the next run sees it now
            worker.stop()
