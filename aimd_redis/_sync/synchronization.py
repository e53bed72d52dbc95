"""What the sync client does where the asyncio one differs: the twin of
aimd_redis/_async/synchronization.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def run_to_the_end(job: Callable[[], None]) -> None:
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
