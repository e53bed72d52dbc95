"""Redis CPU per script call with a short and a long wait queue.

    python benchmarks/bench_queue_cpu.py [--url redis://...] [--cycles 2000]

The queue is filled to N live waiters (written directly into its sorted
sets, as N waiting processes would leave it). Each cycle then releases the
slot, which hands it to the head of the queue and publishes the wake-up, and
queues one new waiter through the acquire script, so the queue keeps its
length. INFO commandstats gives Redis's own microseconds per EVALSHA.
"""

from __future__ import annotations

import argparse
import secrets
import sys

import redis
from script_stats import usec_per_call

from aimd_redis import Throttle, ThrottleConfig
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.structs import LeaseRef

P, M, D = "bench", "queue", "chat"
TAG = "aimd:{bench/queue}"


def queue_usec_per_call(client: redis.Redis, waiters: int, cycles: int) -> float:
    client.flushall()
    t = Throttle(client, config=ThrottleConfig(wait_poll_seconds=3600))
    t.register(provider_name=P, model_id=M, alias="bench", max_parallel_requests=1)
    holder = t.acquire(provider_name=P, model_id=M, domain=D, timeout=0).ref
    order = [f"fake{i}.{secrets.token_hex(4)}" for i in range(waiters)]
    client.zadd(f"{TAG}:{D}:queue", {w: i + 1 for i, w in enumerate(order)})
    client.zadd(f"{TAG}:{D}:beats", {w: 1e12 for w in order})
    client.set(f"{TAG}:{D}:tickets", waiters)
    core = t._core
    client.config_resetstat()
    for i in range(cycles):
        t._run(core.release_call(holder, "success", None, None))  # hands the slot to the head
        holder = LeaseRef(provider_name=P, model_id=M, domain=D, lease_id=order[i])
        newcomer = f"new{i}.{secrets.token_hex(4)}"
        order.append(newcomer)
        call, _ = core.acquire_call(P, M, D, None, newcomer, wait=True)
        t._run(call)  # queues at the tail
        if i % max(1, cycles // 10) == 0:
            print(f"  {waiters} waiters: {i}/{cycles}", file=sys.stderr, flush=True)
    assert int(client.hget(f"{TAG}:{D}", "waiters") or 0) == waiters
    return usec_per_call(client)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--cycles", type=int, default=2000)
    args = parser.parse_args()
    server = None if args.url else EmbeddedRedis()
    try:
        client = redis.Redis.from_url(args.url or server.url)  # type: ignore[union-attr]
        short = queue_usec_per_call(client, 10, args.cycles)
        long = queue_usec_per_call(client, 10_000, args.cycles)
    finally:
        if server:
            server.close()
    print(f"\nRedis CPU per script call (release + queueing acquire, averaged), {args.cycles} cycles")
    print(f"  10 waiters       {short:7.2f} us/call")
    print(f"  10,000 waiters   {long:7.2f} us/call")
    print(f"  ratio            {long / short:7.2f}   (goal < 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
