"""Uncontended requests per second from one process, next to a minimal
two-script hash counter (one EVALSHA each way) measured in the same run
against the same server: as try_acquire + success pairs (two calls per
request), and as a worker's loop of Lease.success_and_acquire (one call per
request). Then Redis's own time per call (INFO commandstats) for ours,
without and with a request and token budget; for the minimal script as
EVALSHA and as a function (FCALL); and for a function that issues the very
Redis commands ours issue on this path, with the same keys and arguments,
and no logic at all: the floor for any script that keeps this state. Last,
the client's own cost per pair.

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
from script_stats import usec_per_call

from aimd_redis import Lease, Throttle, ThrottleConfig, schema
from aimd_redis.demo.embedded import EmbeddedRedis

BASELINE_ACQUIRE = """
local n = redis.call('HINCRBY', KEYS[1], 'in_flight', 1)
if n > tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'in_flight', -1)
  return 0
end
return 1
"""
BASELINE_RELEASE = "return redis.call('HINCRBY', KEYS[1], 'in_flight', -1)"
BASELINE_LIBRARY = f"""#!lua name=aimd_bench_baseline
redis.register_function('bench_acquire', function(KEYS, ARGV)
{BASELINE_ACQUIRE}
end)
redis.register_function('bench_release', function(KEYS, ARGV)
{BASELINE_RELEASE}
end)
"""


# The commands an uncontended acquire and a success issue, in order (as
# MONITOR shows them), bare: no parsing, no validation, no rules.
_DOMAIN_FIELDS = ", ".join(f"'{name}'" for name, _kind in schema.FIELDS)
BARE_LIBRARY = f"""#!lua name=aimd_bench_bare
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
redis.register_function('bare_acquire', function(KEYS, ARGV)
  local t = now()
  redis.call('HMGET', KEYS[1], 'effective_max', 'rpm', 'tpm')
  redis.call('HMGET', KEYS[2], {_DOMAIN_FIELDS})
  redis.call('ZREMRANGEBYSCORE', KEYS[3], 0, t)
  local n = redis.call('ZCARD', KEYS[3]) - redis.call('ZCOUNT', KEYS[3], '-inf', '(0')
  redis.call('ZCARD', KEYS[6])
  local expiry = tostring(t + 60)
  redis.call('ZADD', KEYS[3], 'NX', expiry, ARGV[3])
  redis.call('HSET', KEYS[2], 'in_flight', n + 1)
  redis.call('PTTL', KEYS[2])
  return {{'granted', expiry, '1,1,0,0,0,0,0,0,0', {{}}, ''}}
end)
redis.register_function('bare_release', function(KEYS, ARGV)
  local t = now()
  redis.call('HMGET', KEYS[1], 'effective_max', 'rpm', 'tpm')
  redis.call('HMGET', KEYS[2], {_DOMAIN_FIELDS})
  redis.call('ZREMRANGEBYSCORE', KEYS[3], 0, t)
  redis.call('ZSCORE', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  local n = redis.call('ZCARD', KEYS[3]) - redis.call('ZCOUNT', KEYS[3], '-inf', '(0')
  redis.call('ZCARD', KEYS[6])
  redis.call('HSET', KEYS[2], 'in_flight', n, 'success_streak', 1)
  redis.call('PTTL', KEYS[2])
  return {{1, '1,0,0,0,0,0,0,0,0', {{}}, 1, ''}}
end)
"""


def bare(client: redis.Redis, throttle: Throttle, pairs: int) -> None:
    """The bare commands, called with our keys and arguments."""
    core = throttle._core
    acquire, ref = core.acquire_call("bench", "bare", "chat", None, core.new_lease_id("c"))
    release = core.release_call(ref, "success", None, None)
    for _ in range(pairs):
        client.fcall("bare_acquire", len(acquire.keys), *acquire.keys, *acquire.args)
        client.fcall("bare_release", len(release.keys), *release.keys, *release.args)


def baseline(client: redis.Redis, pairs: int) -> float:
    acquire, release = client.register_script(BASELINE_ACQUIRE), client.register_script(BASELINE_RELEASE)
    keys = ["baseline:{m}:chat"]
    started = time.perf_counter()
    for _ in range(pairs):
        assert acquire(keys=keys, args=[64]) == 1
        release(keys=keys)
    return pairs / (time.perf_counter() - started)


def redis_time(client: redis.Redis, throttle: Throttle, pairs: int) -> dict[str, float]:
    """Redis microseconds per call, each measured alone (CONFIG RESETSTAT between)."""
    out = {}
    client.config_resetstat()
    ours(throttle, pairs)
    out["aimd-redis (per script call)"] = usec_per_call(client)
    client.config_resetstat()
    ours(throttle, pairs, model="budgeted", tokens=100)
    out["aimd-redis with a budget"] = usec_per_call(client)
    client.config_resetstat()
    loop(throttle, pairs)
    out["aimd-redis success_and_acquire"] = usec_per_call(client)
    client.config_resetstat()
    baseline(client, pairs)
    out["minimal script, EVALSHA"] = usec_per_call(client, ("evalsha",))
    client.function_load(BASELINE_LIBRARY, replace=True)
    client.config_resetstat()
    for _ in range(pairs):
        client.fcall("bench_acquire", 1, "baseline:{m}:chat", 64)
        client.fcall("bench_release", 1, "baseline:{m}:chat")
    out["minimal script, FCALL"] = usec_per_call(client, ("fcall",))
    client.function_load(BARE_LIBRARY, replace=True)
    client.config_resetstat()
    bare(client, throttle, pairs)
    out["our commands, bare (FCALL)"] = usec_per_call(client, ("fcall",))
    return out


def client_cost(throttle: Throttle, pairs: int) -> float:
    """Microseconds per pair the client spends on its own (building the calls,
    parsing real replies, the Lease object), Redis and the network left out:
    replies recorded once are replayed."""
    core, target = throttle._core, {"provider_name": "bench", "model_id": "m", "domain": "chat"}
    lease = throttle.try_acquire(**target)
    assert isinstance(lease, Lease)
    call, ref = core.acquire_call("bench", "m", "chat", None, core.new_lease_id("c"))
    acquired = throttle._run(call)
    released = throttle._run(core.release_call(ref, "success", None, None))
    lease.success()
    started = time.perf_counter()
    for _ in range(pairs):
        call, ref = core.acquire_call("bench", "m", "chat", None, core.new_lease_id("c"))
        grant = core.parse_acquire(ref, acquired)
        held = Lease(throttle, grant)  # type: ignore[arg-type]
        core.release_call(held.ref, "success", None, None)
        core.parse_release(held.ref, released)
    return (time.perf_counter() - started) / pairs * 1e6


def ours(throttle: Throttle, pairs: int, model: str = "m", tokens: int = 0) -> float:
    started = time.perf_counter()
    for _ in range(pairs):
        lease = throttle.try_acquire(provider_name="bench", model_id=model, domain="chat", tokens=tokens)
        assert isinstance(lease, Lease)
        lease.success(tokens=tokens // 2 if tokens else None)
    return pairs / (time.perf_counter() - started)


def loop(throttle: Throttle, requests: int) -> float:
    lease = throttle.acquire(provider_name="bench", model_id="m", domain="chat", timeout=0)
    started = time.perf_counter()
    for _ in range(requests):
        lease = lease.success_and_acquire(timeout=0)
    elapsed = time.perf_counter() - started
    lease.success()
    return requests / elapsed


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
        # A budget that never runs short: what it costs, not what it refuses.
        throttle.register(
            provider_name="bench",
            model_id="budgeted",
            alias="bench",
            max_parallel_requests=64,
            requests_per_minute=10**9,
            tokens_per_minute=10**12,
        )
        runners: dict[str, Callable[[int], float]] = {
            "baseline (2-script hash counter)": lambda n: baseline(client, n),
            "aimd-redis try_acquire+success": lambda n: ours(throttle, n),
            "aimd-redis success_and_acquire": lambda n: loop(throttle, n),
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
        base, pairs, looped = (statistics.median(v) for v in results.values())
        ratio = looped / base
        where = server.kind if server else url
        print(f"\nUncontended requests/s from one process ({where}, {args.rounds} rounds x {args.pairs}, median)")
        for name, values in results.items():
            print(f"  {name:<34} {statistics.median(values):>10,.0f}")
        print(f"  {'ratio, two calls per request':<34} {pairs / base:>10.2f}")
        print(f"  {'ratio, one call per request':<34} {ratio:>10.2f}   target >= {args.min_ratio}")
        times = redis_time(client, throttle, args.pairs)
        print(f"\nRedis time per call (INFO commandstats, {args.pairs} pairs each, same run)")
        for name, usec in times.items():
            print(f"  {name:<34} {usec:>8.1f} us")
        for base in ("minimal script, EVALSHA", "minimal script, FCALL"):
            print(f"  {'aimd-redis / ' + base:<34} {times['aimd-redis (per script call)'] / times[base]:>8.1f} x")
        with_budget = times["aimd-redis with a budget"] / times["minimal script, FCALL"]
        print(f"  {'with a budget / minimal FCALL':<34} {with_budget:>8.1f} x")
        floor = times["our commands, bare (FCALL)"]
        print(f"  {'our commands, bare / minimal FCALL':<34} {floor / times['minimal script, FCALL']:>8.1f} x")
        print(f"  {'aimd-redis / our commands, bare':<34} {times['aimd-redis (per script call)'] / floor:>8.1f} x")
        print(f"\nThe client's own cost: {client_cost(throttle, args.pairs):.1f} us per pair (target < 15)")
        return 0 if ratio >= args.min_ratio else 1
    finally:
        if server:
            server.close()


if __name__ == "__main__":
    sys.exit(main())
