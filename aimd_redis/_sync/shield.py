"""Work that must finish: the sync twin of aimd_redis/_async/shield.py (a
thread is not cancelled, so it just runs)."""

from __future__ import annotations

from collections.abc import Callable


def run_to_the_end(job: Callable[[], None]) -> None:
    job()
