"""A small fleet sharing one limit: worker processes x threads call a
simulated upstream whose capacity is fixed, through one Throttle in Redis.

The upstream answers 429 (with a Retry-After) whenever more requests are in
flight than its capacity; the fleet's shared limit finds that capacity.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from aimd_redis import Throttle, ThrottleConfig
from aimd_redis.embedded import EmbeddedRedis

PROVIDER, MODEL, DOMAIN = "demo", "upstream", "chat"


@dataclass(frozen=True)
class DemoSettings:
    processes: int = 4
    threads: int = 4
    seconds: float = 15.0
    capacity: int = 6
    peak: int = 12
    rampup_seconds: float = 4.0
    service_seconds: float = 0.05


class Upstream:
    """Counts fleet-wide concurrency in shared memory; refuses above capacity."""

    def __init__(self, ctx: Any, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight: Synchronized[int] = ctx.Value("i", 0)
        self.peak: Synchronized[int] = ctx.Value("i", 0)
        self.ok: Synchronized[int] = ctx.Value("i", 0)
        self.rejected: Synchronized[int] = ctx.Value("i", 0)

    def call(self, service_seconds: float) -> bool:
        with self.in_flight.get_lock():
            self.in_flight.value += 1
            now = self.in_flight.value
            self.peak.value = max(self.peak.value, now)
        try:
            if now > self.capacity:
                with self.rejected.get_lock():
                    self.rejected.value += 1
                return False
            time.sleep(service_seconds * (0.5 + random.random()))
            with self.ok.get_lock():
                self.ok.value += 1
            return True
        finally:
            with self.in_flight.get_lock():
                self.in_flight.value -= 1


def _config(s: DemoSettings) -> ThrottleConfig:
    return ThrottleConfig(rampup_seconds=s.rampup_seconds, success_window=5, cooldown_seconds=0.5)


def _worker(url: str, s: DemoSettings, upstream: Upstream, deadline: float) -> None:
    throttle = Throttle(url, config=_config(s))
    throttle.register(provider_name=PROVIDER, model_id=MODEL, alias="demo", max_parallel_requests=s.peak)

    def loop() -> None:
        while time.time() < deadline:
            with throttle.slot(provider_name=PROVIDER, model_id=MODEL, domain=DOMAIN) as lease:
                if not upstream.call(s.service_seconds):
                    lease.rate_limited(retry_after=0.2)

    threads = [threading.Thread(target=loop) for _ in range(s.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    throttle.close()


def run(url: str | None, s: DemoSettings) -> int:
    server = None
    if url is None:
        server = EmbeddedRedis()
        url = server.url
        print(f"Redis: a private {server.kind} at {url} (pass --url to use your own)")
    else:
        print(f"Redis: {url}")
    try:
        return _run(url, s)
    finally:
        if server is not None:
            server.close()


def _run(url: str, s: DemoSettings) -> int:
    ctx = multiprocessing.get_context("spawn")
    upstream = Upstream(ctx, s.capacity)
    observer = Throttle(url, config=_config(s))
    print(
        f"{s.processes} processes x {s.threads} threads share one limit on {PROVIDER}/{MODEL} {DOMAIN}: "
        f"registered peak {s.peak}, ramp {s.rampup_seconds:g}s, upstream capacity {s.capacity}"
    )
    deadline = time.time() + s.seconds
    procs = [ctx.Process(target=_worker, args=(url, s, upstream, deadline)) for _ in range(s.processes)]
    for p in procs:
        p.start()
    started = time.monotonic()
    print(f"{'t':>5} {'limit':>5} {'in flight':>9} {'waiters':>7} {'ceiling':>7} {'ok':>6} {'429s':>5}")
    while any(p.is_alive() for p in procs):
        time.sleep(1.0)
        st = observer.domain_state(PROVIDER, MODEL, DOMAIN)
        if st is not None:
            print(
                f"{time.monotonic() - started:5.1f} {st.current_limit:>5} {st.in_flight:>9} {st.waiters:>7} "
                f"{st.rate_limit_ceiling or '-':>7} {upstream.ok.value:>6} {upstream.rejected.value:>5}",
                flush=True,
            )
    for p in procs:
        p.join()
    final = observer.domain_state(PROVIDER, MODEL, DOMAIN)
    observer.close()
    total = upstream.ok.value + upstream.rejected.value
    print("\nSummary")
    print(f"  requests           {total}")
    print(f"  succeeded          {upstream.ok.value}")
    rate = upstream.rejected.value / total if total else 0.0
    print(f"  rate limited (429) {upstream.rejected.value} ({rate:.1%})")
    print(f"  upstream peak      {upstream.peak.value} in flight (capacity {s.capacity})")
    if final is not None:
        print(f"  shared limit       {final.current_limit} (ceiling {final.rate_limit_ceiling or 'none'})")
        print(f"  leases left        {final.in_flight}")
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        print(f"  worker failures    {failed}")
        return 1
    return 0
