"""What the asyncio client and the sync one do differently, behind one name
each, so that the sync client can be generated from the asyncio one.

aimd_redis/_sync/synchronization.py is the sync twin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

# Tasks still running after their caller was cancelled: the loop keeps only a
# weak reference to a task.
_running: set[asyncio.Task[None]] = set()


async def run_to_the_end(job: Callable[[], Coroutine[Any, Any, None]]) -> None:
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
