"""The asyncio side of everything the two clients do differently: events,
locks, a semaphore, a one-message mailbox, background workers, and the few
redis-py calls whose sync and asyncio forms differ. Everything else in
``aimd_redis/_async`` is written once and the sync client generated from it
by ``tools/unasync.py``; aimd_redis/_sync/synchronization.py is the twin of
this file, written by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from redis.asyncio import ConnectionPool, Redis

Job = Callable[[], Coroutine[Any, Any, None]]
T = TypeVar("T")

# Tasks still running after their caller was cancelled: the loop keeps only a
# weak reference to a task.
_running: set[asyncio.Task[None]] = set()


async def _within(future: asyncio.Future[Any], timeout: float | None) -> None:
    """Wait up to ``timeout`` seconds for ``future``, cancelled if not done by
    then. Unlike asyncio.wait_for before Python 3.12, a cancellation of the
    caller that comes as the future completes is raised, not swallowed (it
    left cancelled tasks running on)."""
    try:
        await asyncio.wait({future}, timeout=timeout)
    except GeneratorExit:  # closed with its loop (a throttle never closed): nothing left to cancel
        raise
    except BaseException:
        future.cancel()
        raise
    future.cancel()


def pending_cancellations() -> int:
    """How many cancellations of the current task are pending (Python 3.11
    and later count them; 0 before)."""
    task = asyncio.current_task()
    counted = getattr(task, "cancelling", None)
    return int(counted()) if counted is not None else 0


def raise_swallowed_cancellation(pending: int) -> None:
    """Raise the CancelledError of a cancellation requested since
    ``pending`` (pending_cancellations()) was read that a call returned over:
    asyncio.wait_for before Python 3.12, which redis-py sends with, drops a
    cancellation that arrives as what it waits for completes."""
    if pending_cancellations() > pending:
        raise asyncio.CancelledError


#: Whether a caller that finds no batch out sends it itself (with whatever
#: else is pending) instead of waiting for the flusher. Not here: a task
#: switch costs little, and a caller's cancellation must not cut off a batch
#: that carries other callers' items.
CALLER_SENDS = False


class Event:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, timeout: float | None = None) -> bool:
        """True once set; False if ``timeout`` seconds passed first."""
        if self._event.is_set():
            return True
        await _within(asyncio.ensure_future(self._event.wait()), timeout)
        return self._event.is_set()


class Lock:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


class Semaphore:
    def __init__(self, value: int) -> None:
        self._semaphore = asyncio.Semaphore(value)

    async def acquire(self, timeout: float | None) -> bool:
        """A unit within ``timeout`` seconds (0: only if free now; None: however long it takes)."""
        if timeout == 0:
            if self._semaphore.locked():
                return False
            await self._semaphore.acquire()  # free: returns at once
            return True
        taking = asyncio.ensure_future(self._semaphore.acquire())
        try:
            await _within(taking, timeout)
        except BaseException:
            if taking.done() and not taking.cancelled():  # taken as the caller was cancelled
                self._semaphore.release()
            raise
        return taking.done() and not taking.cancelled()

    def release(self) -> None:
        self._semaphore.release()


class Mailbox(Generic[T]):
    """One message, left by one party for another that waits for it."""

    def __init__(self) -> None:
        self._future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

    def put(self, message: T) -> None:
        if not self._future.done():
            self._future.set_result(message)

    async def get(self, timeout: float | None) -> T | None:
        """The message, or None after ``timeout`` seconds (None: however long it takes)."""
        done, _ = await asyncio.wait({self._future}, timeout=timeout)
        return self._future.result() if done else None

    def peek(self) -> T | None:
        """The message if it is there, without waiting."""
        return self._future.result() if self._future.done() else None


class Worker:
    """``job`` running in the background (a task here, a thread in the sync
    client) until it returns or :meth:`stop`."""

    def __init__(self, job: Job, name: str, stopping: Event) -> None:
        self._stopping = stopping
        self._task = asyncio.get_running_loop().create_task(job(), name=name)

    def alive(self) -> bool:
        return not self._task.done()

    async def stop(self) -> None:
        """Set its ``stopping`` event and wait for it to end; at once here,
        since a task can be cancelled wherever it waits."""
        self._stopping.set()
        if self._task is asyncio.current_task():
            return
        self._task.cancel()
        await asyncio.wait({self._task})  # a cancellation of the caller still reaches it


def current() -> object:
    """What runs this code: the task here, the thread in the sync client."""
    return asyncio.current_task()


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def run_to_the_end(job: Job) -> None:
    """Run ``job`` in a task of its own and wait for it. A cancellation of the
    caller (once more, say) does not stop it. In its own task it also runs
    clear of the caller's pending cancellation, which some timeout helpers
    (async-timeout, used by redis-py before Python 3.11.3) turn into a
    CancelledError of their own. ``job`` must handle its own errors."""
    task = asyncio.create_task(job())
    _running.add(task)
    task.add_done_callback(_running.discard)
    await asyncio.shield(task)


def blocking_a_running_loop() -> str | None:
    """Why a call would block an event loop, if it would: never, here."""
    return None


# -- where redis-py's two clients differ ----------------------------------------


async def node_of(cluster: Any, channel: str) -> Any:
    """The cluster node that owns ``channel``."""
    await cluster.initialize()
    return cluster.get_node_from_key(channel)


def node_client(cluster: Any, node: Any) -> Any:
    """A client of its own (closed with it) for a node of the cluster."""
    return Redis.from_pool(ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs))


async def ssubscribe(pubsub: Any, channel: str) -> None:
    await pubsub.execute_command("SSUBSCRIBE", channel)
