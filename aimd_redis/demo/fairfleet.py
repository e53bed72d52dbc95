"""Real processes sharing one domain in groups, in real time: what
``benchmarks/fairness.py`` runs beside the simulator.

Each spawned process runs asyncio tasks of one or more groups; every task
loops on ``AsyncThrottle.slot(..., group=, weight=)`` around a request that
is a sleep of its part's ``service`` seconds (no server: the limit alone
decides who runs), pausing ``think`` seconds on average between requests.
The domain's limit is fixed: the fleet registers ``limit`` without a ramp
and nothing is ever refused. Each task records when it asked, when it
got its slot and when it gave it back; the parent prints the domain's
in-flight count per group every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from aimd_redis import AsyncThrottle, ThrottleConfig
from aimd_redis.core import as_str
from aimd_redis.keys import model_keys

PROVIDER, MODEL, DOMAIN = "fair", "model", "chat"
#: How long the tasks still running at the end may take to finish their request.
GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Part:
    """Tasks of one group in one process."""

    group: str | None
    weight: float
    tasks: int
    service: float = 0.25
    """Seconds a request holds its slot."""
    think: float = 0.0
    """Mean pause (exponential) between a task's requests."""
    start: float = 0.0
    """Seconds after the fleet's start when the tasks begin."""


#: (group, asked, granted, released): one request, in seconds of the wall clock.
Record = tuple[str | None, float, float, float]


class _Control:
    def __init__(self, ctx: Any) -> None:
        self.ready = ctx.Value("i", 0)
        self.go = ctx.Event()
        self.stop = ctx.Event()
        self.out = ctx.Queue()


def _main(
    url: str, namespace: str, config: ThrottleConfig, limit: int, parts: Sequence[Part], control: _Control
) -> None:
    try:
        control.out.put(asyncio.run(_work(url, namespace, config, limit, parts, control)))
    except BaseException:
        traceback.print_exc()
        control.out.put([])
        sys.exit(1)


async def _work(
    url: str, namespace: str, config: ThrottleConfig, limit: int, parts: Sequence[Part], control: _Control
) -> list[Record]:
    records: list[Record] = []
    stop = asyncio.Event()
    async with AsyncThrottle(url, namespace=namespace, config=config) as throttle:
        await throttle.register(provider_name=PROVIDER, model_id=MODEL, alias="fair", max_parallel_requests=limit)

        async def task(part: Part) -> None:
            await asyncio.sleep(part.start)
            while not stop.is_set():
                asked = time.time()
                async with throttle.slot(
                    provider_name=PROVIDER, model_id=MODEL, domain=DOMAIN, group=part.group, weight=part.weight
                ):
                    granted = time.time()
                    await asyncio.sleep(part.service)
                records.append((part.group, asked, granted, time.time()))
                if part.think > 0:
                    await asyncio.sleep(random.expovariate(1 / part.think))

        with control.ready.get_lock():
            control.ready.value += 1
        await asyncio.to_thread(control.go.wait)
        tasks = [asyncio.create_task(task(p)) for p in parts for _ in range(p.tasks)]
        await asyncio.to_thread(control.stop.wait)
        stop.set()
        # A task still waiting for a slot leaves the queue when cancelled.
        _, pending = await asyncio.wait(tasks, timeout=GRACE_SECONDS)
        for t in pending:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
    return records


def in_flight(client: Any, namespace: str) -> tuple[dict[str, int], int]:
    """The domain's in-flight count per group, and its waiters (a plain read
    of the domain hash: ``in_flight:<group>`` per named group)."""
    raw = client.hgetall(model_keys(namespace, PROVIDER, MODEL).domain(DOMAIN))
    fields = {as_str(k): as_str(v) for k, v in raw.items()}
    named = {k.split(":", 1)[1]: int(v) for k, v in fields.items() if k.startswith("in_flight:")}
    rest = int(fields.get("in_flight", 0)) - sum(named.values())
    return ({"default": rest} if rest else {}) | named, int(fields.get("waiters", 0))


def run_fleet(
    url: str,
    processes: Sequence[Sequence[Part]],
    *,
    seconds: float,
    limit: int,
    namespace: str,
    config: ThrottleConfig | None = None,
    progress: Callable[[str], None] = print,
) -> tuple[float, list[Record]]:
    """Run one process per entry of ``processes`` for ``seconds``; returns
    when they started (wall clock) and every request they made."""
    ctx = multiprocessing.get_context("spawn")
    control = _Control(ctx)
    procs = [
        ctx.Process(
            target=_main, args=(url, namespace, config or ThrottleConfig(), limit, parts, control), name=f"fair-{i}"
        )
        for i, parts in enumerate(processes)
    ]
    for p in procs:
        p.start()
    client = redis.Redis.from_url(url)
    records: list[Record] = []
    try:
        while control.ready.value < len(procs):
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError("a worker process failed while starting; see its traceback above")
            time.sleep(0.05)
        started = time.time()
        control.go.set()
        while (t := time.time() - started) < seconds:
            time.sleep(min(1.0, seconds - t))
            groups, waiters = in_flight(client, namespace)
            shown = ", ".join(f"{g} {n}" for g, n in sorted(groups.items()))
            progress(f"    {time.time() - started:4.0f}s  in flight: {shown or '-'}; waiting: {waiters}")
        control.stop.set()
        for _ in procs:
            records += control.out.get(timeout=60)
    finally:
        control.stop.set()
        control.go.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        client.close()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError("a worker process failed; see its traceback above")
    return started, records
