"""What a model costs Redis in memory, key by key, and how much of it is the
event stream at a range of stream lengths: the figures behind the stream's
default cap (``EVENTS_MAXLEN`` in aimd_redis/core.py).

    python benchmarks/event_memory.py [--domains 3] [--events 10000]

It starts a private redis-server on 127.0.0.1, registers one model, uses
each domain once, writes limit changes through the library (``set_limit``,
whose events have the fields every event has) and, beyond the library's own
cap, copies of them up to ``--events``; then it trims the stream to each
length in turn and reads MEMORY USAGE of every key of the model.
"""

from __future__ import annotations

import argparse
import sys

import redis

from aimd_redis import Lease, Throttle
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.keys import model_keys

LENGTHS = (100, 500, 1_000, 2_000, 5_000, 10_000)
#: Limit changes written through the library (each set_limit writes one or two).
LIBRARY_EVENTS = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--events", type=int, default=10_000, help="limit changes to write (at most the cap)")
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        throttle = Throttle(client)
        throttle.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=64)
        domains = ["chat", "embedding", "image", "rerank", "audio"][: args.domains]
        for domain in domains:
            lease = throttle.try_acquire(provider_name="openai", model_id="gpt-4o", domain=domain)
            assert isinstance(lease, Lease)
            lease.success()
        mk = model_keys("aimd", "openai", "gpt-4o")
        for i in range(LIBRARY_EVENTS):
            throttle.set_limit("openai", "gpt-4o", domains[i % len(domains)], 20 + i % 40)
        # The library trims the stream at its cap: longer streams are made of
        # copies of its own entries, appended as it appends them.
        entries = client.xrange(mk.events)
        for i in range(client.xlen(mk.events), args.events):
            client.xadd(mk.events, entries[i % len(entries)][1])
            if (i + 1) % 2000 == 0:
                print(f"  wrote {i + 1}/{args.events} events", flush=True)
        written = int(client.xlen(mk.events))
        keys = [as_text(k) for k in client.scan_iter(match="aimd:*", count=1000)]
        others = sum(int(client.memory_usage(k) or 0) for k in keys if k != mk.events)
        print(f"\nSummary: one model, {len(domains)} domains; every key but the stream: {others:,} bytes")
        print(f"  {'entries':>8}  {'stream bytes':>12}  {'a entry':>8}  {'stream share':>12}  {'1,000 models':>12}")
        for length in reversed(LENGTHS):
            if length > written:
                continue
            client.xtrim(mk.events, maxlen=length, approximate=False)
            stream = int(client.memory_usage(mk.events) or 0)
            share = stream / (stream + others)
            per_thousand = (stream + others) * 1000 / 1e6
            print(f"  {length:>8,}  {stream:>12,}  {stream / length:>8.0f}  {share:>11.0%}  {per_thousand:>9.0f} MB")
        throttle.close()
        client.close()
    return 0


def as_text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


if __name__ == "__main__":
    sys.exit(main())
