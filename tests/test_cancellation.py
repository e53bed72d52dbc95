"""Tasks that hold or wait for slots, cancelled all at once (a TaskGroup
failing, a timeout, a graceful shutdown): each ends at once, and gives its
slot back."""

from __future__ import annotations

import asyncio
import time

import fakeredis
import pytest

from aimd_redis import AsyncThrottle, ThrottleConfig

TARGET = {"provider_name": "openai", "model_id": "gpt-4o", "domain": "chat"}
TASKS = 64
#: Generous for a machine under load; the tasks end within milliseconds.
BOUND_SECONDS = 3.0


async def _storm(throttle: AsyncThrottle, rounds: int = 3) -> None:
    await throttle.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=8)

    async def worker() -> None:
        while True:
            async with throttle.slot(**TARGET):
                await asyncio.sleep(0.001)

    for _ in range(rounds):
        tasks = [asyncio.create_task(worker()) for _ in range(TASKS)]
        await asyncio.sleep(0.3)  # all of them busy: holding, queued, reporting
        for task in tasks:
            task.cancel()
        started = time.monotonic()
        _, running = await asyncio.wait(tasks, timeout=BOUND_SECONDS)
        assert not running, f"{len(running)} of {TASKS} cancelled tasks still running after {BOUND_SECONDS}s"
        assert all(task.cancelled() for task in tasks)
        assert time.monotonic() - started < BOUND_SECONDS
        state = await throttle.domain_state(**TARGET)
        assert state is not None
        assert (state.in_flight, state.waiters) == (0, 0)


CONFIG = ThrottleConfig(lease_ttl_seconds=30, wait_poll_seconds=0.5)


async def test_cancelled_slot_holders_end_at_once_and_give_their_slots_back_on_fakeredis() -> None:
    async with AsyncThrottle(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()), config=CONFIG) as throttle:
        await _storm(throttle)


@pytest.mark.usefixtures("real_redis")  # an empty database
async def test_cancelled_slot_holders_end_at_once_and_give_their_slots_back(real_redis_url: str) -> None:
    # Built from a URL: its bounded pool has fewer connections than there are tasks.
    async with AsyncThrottle(real_redis_url, config=CONFIG) as throttle:
        await _storm(throttle)
