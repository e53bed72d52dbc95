"""Acquire+release throughput from 1 and 8 processes, contended (capacity 4)
and uncontended (capacity 64), next to the redis-rate-limiters semaphore
measured in the same run against the same server.

    pip install 'aimd-redis[bench]'
    python benchmarks/bench_throughput.py [--url redis://...] [--seconds 3]

Each process loops for the given time: take a slot, hold it for 1 ms, give it
back. Figures are slots taken per second, summed over the processes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from typing import Any

import redis

from aimd_redis import Throttle, ThrottleConfig
from aimd_redis.demo.embedded import EmbeddedRedis

HOLD_SECONDS = 0.001


def _aimd_worker(url: str, capacity: int, seconds: float, start: float, out: Any) -> None:
    t = Throttle(redis.Redis.from_url(url), config=ThrottleConfig(), namespace=f"tp{capacity}")
    t.register(provider_name="bench", model_id="tp", alias="bench", max_parallel_requests=capacity)
    time.sleep(max(0.0, start - time.time()))
    done, end = 0, start + seconds
    while time.time() < end:
        with t.slot(provider_name="bench", model_id="tp", domain="chat"):
            time.sleep(HOLD_SECONDS)
        done += 1
    t.close()
    out.send(done)


def _limiters_worker(url: str, capacity: int, seconds: float, start: float, out: Any) -> None:
    from limiters import SyncSemaphore

    semaphore = SyncSemaphore(connection=redis.Redis.from_url(url), name=f"tp{capacity}", capacity=capacity)
    time.sleep(max(0.0, start - time.time()))
    done, end = 0, start + seconds
    while time.time() < end:
        with semaphore:
            time.sleep(HOLD_SECONDS)
        done += 1
    out.send(done)


def _run(worker: Any, url: str, processes: int, capacity: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 2.0  # let every process import and connect first
    pipes = [ctx.Pipe() for _ in range(processes)]
    procs = [ctx.Process(target=worker, args=(url, capacity, seconds, start, b)) for _, b in pipes]
    for p in procs:
        p.start()
    total = sum(a.recv() for a, _ in pipes)
    for p in procs:
        p.join()
    return total / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    try:
        import limiters  # noqa: F401
    except ImportError:
        print("needs redis-rate-limiters: pip install 'aimd-redis[bench]'", file=sys.stderr)
        return 2
    server = None if args.url else EmbeddedRedis()
    url = args.url or server.url  # type: ignore[union-attr]
    rows = []
    try:
        for processes in (1, 8):
            for capacity in (4, 64):
                redis.Redis.from_url(url).flushall()
                label = f"{processes} process{'es' if processes > 1 else ''}, capacity {capacity}"
                print(f"  {label}...", file=sys.stderr, flush=True)
                ours = _run(_aimd_worker, url, processes, capacity, args.seconds)
                peer = _run(_limiters_worker, url, processes, capacity, args.seconds)
                rows.append((label, ours, peer))
    finally:
        if server:
            server.close()
    print(f"\nSlots taken per second ({args.seconds:g} s each, 1 ms hold)")
    print(f"  {'':<28} {'aimd-redis':>11} {'limiters':>11} {'ratio':>6}")
    for label, ours, peer in rows:
        print(f"  {label:<28} {ours:11,.0f} {peer:11,.0f} {ours / peer:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
