"""Held leases are renewed in the background; a killed holder's slots come back."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import redis

from aimd_redis import AsyncThrottle, Denied, Lease, Throttle, ThrottleConfig

from .helpers import M, P, wait_until

TTL = 0.6  # renewed every 0.2 s
CONFIG = ThrottleConfig(lease_ttl_seconds=TTL)
TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}


def _register(t: Throttle, limit: int) -> None:
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=limit)


def test_a_held_lease_outlives_its_ttl_while_its_process_lives(real_redis: redis.Redis) -> None:
    holder = Throttle(real_redis, config=CONFIG)
    _register(holder, 1)
    lease = holder.acquire(**TARGET, timeout=0)
    other = Throttle(real_redis, config=CONFIG)
    deadline = time.monotonic() + 4 * TTL
    while time.monotonic() < deadline:  # waiting is the point: several ttls go by
        assert isinstance(other.try_acquire(**TARGET), Denied)
        time.sleep(TTL / 4)
    assert lease.expires_at > time.time()
    assert lease.success().released
    holder.close()
    assert not holder._renewals.running


async def test_async_held_lease_is_renewed(real_redis: redis.Redis, real_redis_url: str) -> None:
    async with AsyncThrottle(real_redis_url, config=CONFIG) as holder:
        await holder.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
        lease = await holder.acquire(**TARGET, timeout=0)
        first_expiry = lease.expires_at
        await asyncio.sleep(3 * TTL)
        assert lease.expires_at > first_expiry
        assert (await lease.success()).released
    assert not holder._renewals.running


def test_leases_taken_with_an_injected_clock_are_not_renewed(real_redis: redis.Redis) -> None:
    t = Throttle(real_redis, config=CONFIG)
    _register(t, 1)
    lease = t.try_acquire(**TARGET, now=1000.0)
    assert isinstance(lease, Lease)
    assert not t._renewals.running
    assert lease.expires_at == 1000.0 + TTL


def _hold_and_wait(url: str, slots: int, ready: Any) -> None:
    t = Throttle(url, config=CONFIG)
    held = [t.acquire(**TARGET, timeout=5) for _ in range(slots)]
    ready.send(len(held))
    time.sleep(60)  # until killed


def test_slots_of_a_killed_process_come_back_within_the_ttl(real_redis: redis.Redis, real_redis_url: str) -> None:
    t = Throttle(real_redis, config=CONFIG)
    _register(t, 3)
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_hold_and_wait, args=(real_redis_url, 3, there))
    child.start()
    try:
        assert here.poll(30)
        assert here.recv() == 3
        time.sleep(3 * TTL)  # the child's renewer keeps its slots past their first expiry
        assert isinstance(t.try_acquire(**TARGET), Denied)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        killed = time.monotonic()
        leases = [t.acquire(**TARGET, timeout=5) for _ in range(3)]
        back_after = time.monotonic() - killed
    finally:
        child.kill()
        child.join()
    assert back_after < TTL + 0.5
    for lease in leases:
        assert lease.success().released
    state = t.domain_state(P, M, "chat")
    assert state is not None
    assert state.in_flight == 0
    assert real_redis.hget("aimd:{openai/gpt-4o}:chat", "total_reclaimed") == b"3"
    t.close()


def test_a_poked_job_runs_at_once_and_stops_at_once_after_a_restart() -> None:
    from aimd_redis._sync.background import Periodic

    runs: list[float] = []
    job = Periodic(3600, lambda: runs.append(time.monotonic()), "test job")
    for expected in (1, 2):  # a stop, then a start again
        job.start()
        job.poke()
        wait_until(lambda n=expected: len(runs) == n, "the poked job never ran", 10)
        job.poke()  # a poke pending as it stops: the stop does not wait out the hour
        stopper = threading.Thread(target=job.stop)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive()
        assert not job.running


def test_an_async_job_runs_in_each_event_loop_it_is_started_in() -> None:
    from aimd_redis._async.background import Periodic

    runs: list[int] = []

    async def work() -> None:
        runs.append(1)

    job = Periodic(3600, work, "test job")

    async def once(expected: int) -> None:
        job.start()
        job.poke()
        deadline = time.monotonic() + 10
        while len(runs) < expected:
            assert time.monotonic() < deadline, "the poked job never ran"
            await asyncio.sleep(0.01)
        await job.stop()

    asyncio.run(once(1))
    asyncio.run(once(2))  # a new loop: its events are that loop's own
