"""How long ``aimd-redis status --json`` takes over many domains: the
report of every domain and its JSON, as the command prints it, next to the
same for the report of a previous release (a file of aimd_redis/ops/inspect.py
taken from git) measured in the same run against the same server.

    python benchmarks/bench_status.py [--models 1000] [--domains 10] [--rounds 3] [--baseline-ref main]
                                      [--grouped 0] [--waiting 0]

It starts a private redis-server on 127.0.0.1 and fills it through the
library (register, then one acquire and success per domain, so each model
has its events too). ``--grouped N`` then fills N of the domains with
callers waiting in four groups, as the scripts lay them out, so that status
reads their queues too; ``--waiting N`` N others with callers waiting
without groups.
Rounds alternate between the two; the figures are the best of the rounds.
Last, the whole command in a process of its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import redis

from aimd_redis import Lease, Throttle, ThrottleConfig
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.keys import model_keys
from aimd_redis.ops import inspect

DOMAINS = ("chat", "embedding", "image", "healthcheck", "rerank", "audio", "vision", "tools", "batch", "moderation")


def fill(client: redis.Redis, models: int, domains: int) -> list[str]:
    """Fills the server; returns every domain's hash key."""
    throttle = Throttle(client, config=ThrottleConfig(rampup_seconds=60))
    names = [*DOMAINS, *(f"d{i}" for i in range(len(DOMAINS), domains))][:domains]
    keys = []
    for m in range(models):
        provider, model = f"p{m % 7}", f"model-{m}"
        throttle.register(provider_name=provider, model_id=model, alias="gen", max_parallel_requests=64)
        for name in names:
            lease = throttle.try_acquire(provider_name=provider, model_id=model, domain=name)
            assert isinstance(lease, Lease)
            lease.success()
            keys.append(model_keys("aimd", provider, model).domain(name))
        if (m + 1) % 100 == 0:
            print(f"  filled {m + 1}/{models} models", flush=True)
    throttle.close()
    return keys


def add_waiters(client: redis.Redis, domains: list[str], groups: int, processes: int = 8) -> None:
    """Makes these domains (hash keys) full with callers waiting, as the
    scripts lay them out: ``processes`` entries with two leases and three
    waiting callers each, across ``groups`` named groups (0: no group)."""
    seconds, _micros = client.time()
    names = [f"g{g}" for g in range(groups)] or [""]
    pipe = client.pipeline(transaction=False)
    for key in domains:
        entries = {f"{p:012x}" + (f"~{names[p % len(names)]}" if groups else ""): p for p in range(processes)}
        wants = {e: f"3x{1 + p % len(names)}=0:3" if groups else "3=0:3" for e, p in entries.items()}
        pipe.hset(f"{key}:want", mapping={**wants, "*": 3 * processes})
        pipe.zadd(f"{key}:queue", dict.fromkeys(entries, 0))
        pipe.zadd(f"{key}:leases", {f"{e}.{i}": seconds + 600 for e in entries for i in range(2)})
        pipe.zadd(f"{key}:groups", {name or "default": 3 for name in names})
        counts = {f"in_flight:{name}": 2 * processes // groups for name in names if name}
        pipe.hset(key, mapping={"waiters": 3 * processes, "current_limit": 2 * processes, "in_flight": 2 * processes})
        if counts:
            pipe.hset(key, mapping=counts)
    pipe.execute()


def baseline_module(ref: str) -> ModuleType | None:
    """aimd_redis/ops/inspect.py as it was at ``ref``, loaded beside today's."""
    root = Path(__file__).resolve().parent.parent
    try:
        text = subprocess.run(
            ["git", "show", f"{ref}:aimd_redis/ops/inspect.py"], cwd=root, capture_output=True, check=True, text=True
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    path = Path(tempfile.mkdtemp(prefix="aimd-bench-")) / "inspect_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("inspect_baseline", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(run: Callable[[], Any]) -> tuple[float, int]:
    start = time.perf_counter()
    reports = run()
    out = msgspec.json.encode(reports)  # what status --json prints
    return time.perf_counter() - start, len(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--domains", type=int, default=10, help="domains per model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-ref", default="main", help="git ref of the report to compare with")
    parser.add_argument("--grouped", type=int, default=0, help="domains full with callers waiting in groups")
    parser.add_argument("--waiting", type=int, default=0, help="domains full with callers waiting, no groups")
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        print(f"filling {args.models} models x {args.domains} domains on {server.kind} at {server.url}", flush=True)
        domain_keys = fill(client, args.models, args.domains)
        add_waiters(client, domain_keys[: args.grouped], groups=4)
        add_waiters(client, domain_keys[args.grouped : args.grouped + args.waiting], groups=0)
        memory = int(client.info("memory")["used_memory"])
        old = baseline_module(args.baseline_ref)
        # Each with the client its command used: this tree's decodes replies,
        # as did every release whose report has texts() to read them.
        text_client = redis.Redis.from_url(server.url, decode_responses=True)
        old_client = text_client if old is not None and hasattr(old, "texts") else client
        candidates: dict[str, Callable[[], Any]] = {"this tree": lambda: inspect.report(text_client)}
        if old is not None:
            candidates[f"report at {args.baseline_ref}"] = lambda: old.report(old_client)
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name, run in candidates.items():
                seconds, size = timed(run)
                best[name] = min(best.get(name, seconds), seconds)
                print(f"  round {r + 1}: {name:<16} {seconds:6.3f} s ({size / 1e6:.1f} MB of JSON)", flush=True)
        command = [sys.executable, "-m", "aimd_redis.ops.cli", "status", "--json", "--url", server.url]
        whole = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            whole.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "aimd_redis.ops.cli", "--help"], check=True, stdout=subprocess.DEVNULL)
        startup = time.perf_counter() - start
        domains = args.models * args.domains
        size = f"{memory / 1e6:.0f} MB in Redis"
        grouped = f", {args.grouped:,} of them full in groups" if args.grouped else ""
        grouped += f", {args.waiting:,} full without groups" if args.waiting else ""
        print(f"\nSummary: status --json over {domains:,} domains{grouped} ({size}), best of {args.rounds}")
        for name, seconds in best.items():
            print(f"  {name:<16} {seconds:6.3f} s  ({seconds / domains * 1e6:.0f} us a domain)")
        print(f"  the whole command, this tree: {min(whole):.3f} s ({startup:.3f} s of it starting Python and the CLI)")
        if old is not None:
            base = best[f"report at {args.baseline_ref}"]
            print(f"  ratio: {best['this tree'] / base:.2f}x the time of {args.baseline_ref}")
        client.close()
        text_client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
