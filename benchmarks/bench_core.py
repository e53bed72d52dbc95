"""Uncontended try_acquire + success pairs per second from one process,
next to a minimal two-script hash counter (one EVALSHA each way) measured
in the same run against the same server.

    python benchmarks/bench_core.py [--url redis://...] [--pairs 3000] [--rounds 7]

Without --url it starts a private redis-server. Rounds alternate between the
two so that noise from a shared machine hits both alike; the figures are
medians over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import redis

from aimd_redis import Lease, Throttle, ThrottleConfig
from aimd_redis.embedded import EmbeddedRedis

BASELINE_ACQUIRE = """
local n = redis.call('HINCRBY', KEYS[1], 'in_flight', 1)
if n > tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'in_flight', -1)
  return 0
end
return 1
"""
BASELINE_RELEASE = "return redis.call('HINCRBY', KEYS[1], 'in_flight', -1)"


def baseline(client: redis.Redis, pairs: int) -> float:
    acquire, release = client.register_script(BASELINE_ACQUIRE), client.register_script(BASELINE_RELEASE)
    keys = ["baseline:{m}:chat"]
    started = time.perf_counter()
    for _ in range(pairs):
        assert acquire(keys=keys, args=[64]) == 1
        release(keys=keys)
    return pairs / (time.perf_counter() - started)


def ours(throttle: Throttle, pairs: int) -> float:
    started = time.perf_counter()
    for _ in range(pairs):
        lease = throttle.try_acquire(provider_name="bench", model_id="m", domain="chat")
        assert isinstance(lease, Lease)
        lease.success()
    return pairs / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="Redis to measure against (default: a private redis-server)")
    parser.add_argument("--pairs", type=int, default=3000, help="acquire+release pairs per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-ratio", type=float, default=0.85, help="exit 1 below this ratio")
    args = parser.parse_args()

    server = None if args.url else EmbeddedRedis()
    url = args.url or server.url  # type: ignore[union-attr]
    try:
        client = redis.Redis.from_url(url)
        throttle = Throttle(client, config=ThrottleConfig(), namespace="bench")
        throttle.register(provider_name="bench", model_id="m", alias="bench", max_parallel_requests=64)
        runners: dict[str, Callable[[int], float]] = {
            "baseline (2-script hash counter)": lambda n: baseline(client, n),
            "aimd-redis try_acquire+success": lambda n: ours(throttle, n),
        }
        for run in runners.values():  # warm up: load scripts, open connections
            run(200)
        results: dict[str, list[float]] = {name: [] for name in runners}
        for r in range(args.rounds):
            for name, run in runners.items():
                results[name].append(run(args.pairs))
            print(
                f"  round {r + 1}/{args.rounds}: "
                + ", ".join(f"{name.split(' ')[0]} {v[-1]:,.0f}/s" for name, v in results.items()),
                file=sys.stderr,
                flush=True,
            )
        base, mine = (statistics.median(v) for v in results.values())
        ratio = mine / base
        where = server.kind if server else url
        print(f"\nUncontended pairs/s from one process ({where}, {args.rounds} rounds x {args.pairs} pairs, median)")
        for name, values in results.items():
            print(f"  {name:<34} {statistics.median(values):>10,.0f}")
        print(f"  {'ratio (aimd-redis / baseline)':<34} {ratio:>10.2f}   target >= {args.min_ratio}")
        return 0 if ratio >= args.min_ratio else 1
    finally:
        if server:
            server.close()


if __name__ == "__main__":
    sys.exit(main())
