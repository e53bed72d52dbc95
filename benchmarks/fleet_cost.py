"""What a large fleet costs Redis with today's client, simulated on the real
scripts in a real Redis with injected time.

    python benchmarks/fleet_cost.py [--pods 50 --pods 100 --pods 200] [--seconds 10] [--url redis://...]

Each pod runs 64 tasks that loop on 2 s requests through one domain. The
limit is either 8 slots a pod (most tasks wait: 56 of every 64) or 128 a pod
(above the fleet's tasks: nobody waits). The simulator models today's client
task by task: every waiting task re-runs the acquire script every
``wait_poll_seconds`` (2 s), a release hands its slot to the next waiter on
its process's wake channel, and the woken task claims it.

After a warm-up of one request's length it resets Redis's command statistics
and, over the rest of the run, reports per simulated second the script calls
and the Redis time they took (INFO commandstats: what Redis itself spent in
EVALSHA), and the waiter entries Redis holds (the queue's size), in all and
per pod. Per-pod figures that stay flat as the fleet grows extrapolate to
1,000 pods on paper (printed as such); ``--pods 1000`` measures it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import msgspec
import redis
from script_stats import script_stats

from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.demo.simulator import Scenario, Simulation, scenario_config, steps, uniform

TASKS, SERVICE = 64, 2.0
#: Slots a pod's share of the limit: most tasks wait, or none does.
SHARES = {"most wait": 8, "none waits": 128}


class Cost(msgspec.Struct, frozen=True):
    pods: int
    case: str
    limit: int
    seconds: float
    """Simulated seconds measured (after the warm-up)."""
    calls: float
    """Script calls a simulated second."""
    redis_ms: float
    """Redis milliseconds in scripts a simulated second."""
    entries: float
    """Mean waiter entries in Redis."""
    waiting: float
    """Mean tasks waiting."""
    served: float
    """Requests served a simulated second."""
    wall: float


def scenario(pods: int, case: str, seconds: float) -> Scenario:
    share = SHARES[case]
    return Scenario(
        name=f"fleet-{pods}x{TASKS}-{case.replace(' ', '-')}",
        about=f"{pods} pods x {TASKS} tasks, 2 s requests, limit {share} a pod",
        seconds=SERVICE + seconds,
        capacity=steps(10**9),  # the server takes whatever the limit lets through
        service=uniform(SERVICE, 0.05),
        mean_service=SERVICE,
        processes=pods,
        tasks=TASKS,
        peak=pods * share,
        count_entries=True,
        start_spread=SERVICE,
    )


def measure(client: redis.Redis, pods: int, case: str, seconds: float) -> Cost:
    s = scenario(pods, case, seconds)
    sim = Simulation(client, s, scenario_config(s, "classic"), namespace="aimd-fleet-cost")
    mark: dict[str, int] = {}

    def start(_: None) -> None:  # the warm-up is over
        client.config_resetstat()
        mark.update(calls=sim.calls, points=len(sim.points), requests=len(sim.requests))

    sim.at(SERVICE, start, None)
    began = time.perf_counter()
    run = sim.run()
    wall = time.perf_counter() - began
    calls, usec = script_stats(client)
    span = run.end - SERVICE
    points = run.points[mark["points"] :]
    served = sum(1 for r in run.requests if SERVICE <= r.finished < run.end)
    return Cost(
        pods=pods,
        case=case,
        limit=s.peak,
        seconds=span,
        calls=calls / span,
        redis_ms=usec / 1000 / span,
        entries=statistics.fmean(run.waiter_entries[mark["points"] :]),
        waiting=statistics.fmean(p.waiters for p in points),
        served=served / span,
        wall=wall,
    )


def table(costs: list[Cost]) -> str:
    head = ["pods x 64", "case", "limit", "served/s", "waiting", "calls/s", "per pod", "Redis ms/s", "per pod"]
    head += ["us/call", "entries", "per pod", "wall"]
    rows = [head]
    for c in costs:
        paper = c.wall == 0
        rows.append(
            [
                f"{c.pods:,}" + (" (paper)" if paper else ""),
                c.case,
                f"{c.limit:,}",
                f"{c.served:,.0f}",
                f"{c.waiting:,.0f}",
                f"{c.calls:,.0f}",
                f"{c.calls / c.pods:.1f}",
                f"{c.redis_ms:,.0f}",
                f"{c.redis_ms / c.pods:.2f}",
                f"{1000 * c.redis_ms / c.calls:.0f}" if c.calls else "-",
                f"{c.entries:,.0f}",
                f"{c.entries / c.pods:.1f}",
                "-" if paper else f"{c.wall:.0f}s",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def on_paper(costs: list[Cost], pods: int) -> list[Cost]:
    """``pods`` pods from the largest fleet measured, per pod figures held flat."""
    out = []
    for case in SHARES:
        measured = [c for c in costs if c.case == case]
        if not measured or any(c.pods >= pods for c in measured):
            continue
        c = max(measured, key=lambda c: c.pods)
        k = pods / c.pods
        out.append(
            Cost(
                pods=pods,
                case=case,
                limit=round(c.limit * k),
                seconds=0.0,
                calls=c.calls * k,
                redis_ms=c.redis_ms * k,
                entries=c.entries * k,
                waiting=c.waiting * k,
                served=c.served * k,
                wall=0.0,
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--pods", type=int, action="append", help="fleet sizes (default: 50, 100, 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="simulated seconds measured after the warm-up")
    parser.add_argument("--case", action="append", choices=list(SHARES), help="only these")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    sizes = args.pods or [50, 100, 200]
    cases = args.case or list(SHARES)
    embedded = None if args.url else EmbeddedRedis()
    url = args.url or embedded.url  # type: ignore[union-attr]
    client = redis.Redis.from_url(url)
    print(f"Redis: {url}; {TASKS} tasks a pod, {SERVICE:g} s requests, {args.seconds:g} s measured after {SERVICE:g} s")
    costs: list[Cost] = []
    try:
        for case in cases:
            for pods in sizes:
                print(f"  {pods:,} pods, {case}: ", end="", flush=True)
                c = measure(client, pods, case, args.seconds)
                costs.append(c)
                print(
                    f"{c.calls:,.0f} script calls/s, {c.redis_ms:,.0f} Redis ms/s, {c.entries:,.0f} waiter entries "
                    f"({c.wall:.0f}s of wall time)",
                    flush=True,
                )
    finally:
        client.close()
        if embedded is not None:
            embedded.close()
    text = table(costs + on_paper(costs, 1000))
    note = (
        "\nPer simulated second, after the warm-up. calls/s: script calls (EVALSHA); Redis ms/s: Redis's own time "
        "in them (INFO commandstats), a Redis core is 1,000 ms/s; entries: mean waiter entries in Redis's queue; "
        "(paper): the largest fleet measured, scaled by its per-pod figures."
    )
    print()
    print(text)
    print(note)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n" + note + "\n")
        print(f"\nWritten to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
