"""The sync side of everything the two clients do differently, with threads:
the hand-written twin of aimd_redis/_async/synchronization.py, which says
what each name is for."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from redis import ConnectionPool, Redis

Job = Callable[[], None]
T = TypeVar("T")


def pending_cancellations() -> int:
    """A thread is never cancelled."""
    return 0


def raise_swallowed_cancellation(pending: int) -> None:
    """Nothing to raise: a thread is never cancelled."""


#: Whether a caller that finds no batch out sends it itself (with whatever
#: else is pending) instead of waiting for the flusher: a lone caller is
#: spared two thread switches a call (the flusher's wake-up, its answer's).
CALLER_SENDS = True


class Event:
    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


class Lock:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class Semaphore:
    def __init__(self, value: int) -> None:
        self._semaphore = threading.BoundedSemaphore(value)

    def acquire(self, timeout: float | None) -> bool:
        if timeout == 0:
            return self._semaphore.acquire(blocking=False)
        return self._semaphore.acquire(timeout=timeout)

    def release(self) -> None:
        self._semaphore.release()


class Mailbox(Generic[T]):
    def __init__(self) -> None:
        self._event = threading.Event()
        self._message: T | None = None
        self._lock = threading.Lock()

    def put(self, message: T) -> None:
        with self._lock:
            if not self._event.is_set():
                self._message = message
                self._event.set()

    def get(self, timeout: float | None) -> T | None:
        return self._message if self._event.wait(timeout) else None

    def peek(self) -> T | None:
        return self._message if self._event.is_set() else None


class Worker:
    """A daemon thread; ``job`` is to return soon after ``stopping`` is set,
    since a thread cannot be interrupted where it waits."""

    def __init__(self, job: Job, name: str, stopping: Event) -> None:
        self._stopping = stopping
        self._thread = threading.Thread(target=job, name=name, daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


def current() -> object:
    return threading.current_thread()


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def run_to_the_end(job: Job) -> None:
    """A thread is not cancelled: the job just runs."""
    job()


def blocking_a_running_loop() -> str | None:
    """Why a call would block an event loop, if this thread runs one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return (
        "a sync Throttle called inside a running event loop blocks the loop while it waits for Redis "
        "and for slots: use AsyncThrottle there"
    )


def node_of(cluster: Any, channel: str) -> Any:
    return cluster.get_node_from_key(channel)


def node_client(cluster: Any, node: Any) -> Any:
    pool = cluster.get_redis_connection(node).connection_pool
    return Redis.from_pool(ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs))


def ssubscribe(pubsub: Any, channel: str) -> None:
    pubsub.ssubscribe(channel)
