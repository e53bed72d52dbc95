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
        # Never held across a wait: it only keeps starts and stops from racing.
        self._lock = threading.Lock()
        # The worker, and its own stopping and poked events: a later start
        # makes others (and in asyncio, events of the loop it runs in).
        self._worker: tuple[Worker, Event, Event] | None = None

    def start(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker[0].alive():
                stopping, poked = Event(), Event()
                worker = Worker(lambda: self._loop(stopping, poked), self._name, stopping)
                self._worker = (worker, stopping, poked)

    def poke(self) -> None:
        """Run the job as soon as it can (once for any number of pokes meanwhile)."""
        running = self._worker
        if running is not None:
            running[2].set()

    @property
    def running(self) -> bool:
        running = self._worker
        return running is not None and running[0].alive()

    def _loop(self, stopping: Event, poked: Event) -> None:
        while True:
            poked.wait(self._interval)
            poked.clear()  # first: a poke from now on runs the job again, and a stop is never missed
            if stopping.is_set():
                return
            try:
                self._job()
            except Exception as exc:
                line = one_line(exc)
                why = line or exc
                wait = self._interval
                logger.warning("%s failed (%s); trying again in %.1fs", self._name, why, wait, exc_info=not line)

    def stop(self) -> None:
        with self._lock:
            running, self._worker = self._worker, None
        if running is not None:
            worker, stopping, poked = running
            stopping.set()
            poked.set()  # a thread waiting for its next run sees it now
            worker.stop()
