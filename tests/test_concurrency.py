"""Many threads, tasks and processes on one domain: the limit holds, nothing leaks."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from aimd_redis import AsyncThrottle, Throttle, ThrottleConfig

from .helpers import M, P, reg, state

LIMIT = 3
# Cooldowns short enough that a 429 costs the test milliseconds, not seconds.
CONFIG = ThrottleConfig(cooldown_seconds=0.005, success_window=1000)
TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}


class Gauge:
    """Counts holders at once; remembers the most seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def _one_request(lease: Any, rng: random.Random) -> str:
    roll = rng.random()
    return "rate_limited" if roll < 0.1 else "failure" if roll < 0.2 else "success"


def test_threads_hammering_one_domain(client: redis.Redis) -> None:
    t = Throttle(client, config=CONFIG)
    reg(t, LIMIT)
    gauge, done, errors = Gauge(), [], []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                outcome = None
                try:
                    with t.slot(**TARGET, timeout=30) as lease:
                        gauge.enter()
                        time.sleep(rng.random() / 1000)
                        gauge.leave()
                        outcome = _one_request(lease, rng)
                        if outcome == "rate_limited":
                            lease.rate_limited(retry_after=0.002)
                        elif outcome == "failure":
                            raise ConnectionResetError("upstream hung up")
                except ConnectionResetError:
                    pass
                done.append(outcome)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(done) == 8 * 60
    assert gauge.peak <= LIMIT
    assert state(t).in_flight == 0
    assert client.zcard("aimd:{openai/gpt-4o}:chat:leases") == 0


async def test_asyncio_tasks_hammering_one_domain(make_async_throttle: Callable[..., AsyncThrottle]) -> None:
    t = make_async_throttle(cooldown_seconds=0.005, success_window=1000)
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=LIMIT)
    holders, peak, finished = 0, 0, 0

    async def worker(seed: int) -> None:
        nonlocal holders, peak, finished
        rng = random.Random(seed)
        for _ in range(40):
            async with t.slot(**TARGET, timeout=30) as lease:
                holders += 1
                peak = max(peak, holders)
                try:
                    await asyncio.sleep(rng.random() / 1000)
                finally:  # a doomed task cancelled here leaves its slot too
                    holders -= 1
                if _one_request(lease, rng) == "rate_limited":
                    await lease.rate_limited(retry_after=0.002)
            finished += 1

    # Cancel some waiters half way: they must leave no slot behind.
    workers = [asyncio.create_task(worker(i)) for i in range(16)]
    doomed = [asyncio.create_task(worker(100 + i)) for i in range(4)]
    await asyncio.sleep(0.05)
    for task in doomed:
        task.cancel()
    await asyncio.gather(*workers)
    await asyncio.gather(*doomed, return_exceptions=True)
    assert finished >= 16 * 40
    assert peak <= LIMIT
    s = await t.domain_state(P, M, "chat")
    assert s is not None
    assert s.in_flight == 0


def _process_worker(url: str, rounds: int, holders: Any, peak: Any) -> None:
    t = Throttle(url, config=CONFIG)
    reg(t, LIMIT)
    for _ in range(rounds):
        with t.slot(**TARGET, timeout=30):
            with holders.get_lock():
                holders.value += 1
                peak.value = max(peak.value, holders.value)
            time.sleep(0.001)
            with holders.get_lock():
                holders.value -= 1
    t.close()


def test_processes_share_one_limit(real_redis: redis.Redis, real_redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    holders, peak = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=_process_worker, args=(real_redis_url, 50, holders, peak)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert 1 <= peak.value <= LIMIT
    assert real_redis.hget("aimd:{openai/gpt-4o}:chat", "in_flight") == b"0"
