"""Ways for a fleet to call one cold, rate-limited server, in one run.

    pip install -e '.[demo]'
    python benchmarks/fleet.py [--url redis://...] [--requests 2000] [--plot docs/fleet-comparison.png]

Each strategy gets a fresh cold server (capacity 1 -> 16 over 10 s, 250 ms a
request, 429 with Retry-After above capacity) and must get ``--requests``
chat completions served. Every refused request is retried after its
Retry-After, as the provider SDKs do:

- fixed:            8 processes x 8 tasks, no adaptive limit, each process
                    capped at the peak (32);
- per-process:      8 x 8, the classic loop with the ramp, but each process in
                    its own namespace: the in-process design, eight loops;
- shared classic:   8 x 8, one loop in Redis for the fleet, classic rules;
- shared adaptive:  the same with ``policy="adaptive"``;
- shared latency:   the same with ``policy="latency"`` (it must do here what
                    adaptive does: the server refuses, it does not queue);
- one process:      1 x 64 on the shared classic loop, the reference for the
                    shared loop's 429 rate.

The throttled strategies register a peak of 32 with a 25 s ramp, slower than
the server's warm-up. The summary prints 429s (all, and in the warm-up),
goodput against what the server could serve, makespan, the highest
concurrency the server saw and when the fleet first used the server's full
peak. The control simulator (``aimd_redis/demo/simulator.py``) then runs the same
shape for both shared policies in simulated time, and the two are compared.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import redis

from aimd_redis import ThrottleConfig
from aimd_redis.demo.coldserver import ColdServer, ServerSettings
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.demo.fleet import FleetRun, FleetSettings, Sample, Summary, run_fleet, summarize, summary_table
from aimd_redis.demo.simulator import BY_NAME, Figures, figures, simulate, with_

SERVER = ServerSettings(peak=16, warmup_seconds=10.0, service_seconds=0.25, retry_after_seconds=0.5)
PEAK, RAMP = 32, 25.0
#: (name, strategy, processes, tasks, policy)
RUNS = [
    ("fixed", "fixed", 8, 8, "classic"),
    ("per-process", "per-process", 8, 8, "classic"),
    ("shared classic", "shared", 8, 8, "classic"),
    ("shared adaptive", "shared", 8, 8, "adaptive"),
    ("shared latency", "shared", 8, 8, "latency"),
    ("one process", "shared", 1, 64, "classic"),
]
#: The simulator's scenario of the same shape (server, fleet, peak, ramp).
SIMULATED = "cold-fast"
#: How close the simulation must come to the real run: points of goodput, and of 429 share.
GOODPUT_TOLERANCE, REFUSED_TOLERANCE = 0.05, 0.005


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--requests", type=int, default=2000, help="requests each strategy must get served")
    parser.add_argument("--plot", type=Path, default=Path("fleet-comparison.png"))
    args = parser.parse_args()

    embedded = None if args.url else EmbeddedRedis()
    url = args.url or embedded.url  # type: ignore[union-attr]
    print(f"Redis: {url} ({embedded.kind if embedded else 'given'})")
    print(
        f"Server: capacity 1 -> {SERVER.peak} over {SERVER.warmup_seconds:g}s, "
        f"{SERVER.service_seconds * 1000:.0f} ms a request; fleet peak {PEAK}, ramp {RAMP:g}s; "
        f"{args.requests} requests per strategy\n"
    )
    results: list[tuple[str, FleetRun, Summary]] = []
    simulated: dict[str, Figures] = {}
    try:
        for name, strategy, processes, tasks, policy in RUNS:
            settings = FleetSettings(
                processes=processes,
                tasks=tasks,
                strategy=strategy,  # type: ignore[arg-type]
                peak=PEAK,
                requests=args.requests,
                config=ThrottleConfig(rampup_seconds=RAMP, policy=policy),  # type: ignore[arg-type]
                namespace=f"fleet-bench-{strategy}-{policy}-{processes}-{int(time.time())}",
            )
            print(f"{name} ({processes}x{tasks}): ", end="", flush=True)
            with ColdServer(SERVER) as server:

                def progress(x: Sample, goal: int = args.requests) -> None:
                    if round(x.t) % 5 == 0:
                        print(f"[{x.t:.0f}s {x.served}/{goal} 429s {x.rejected}] ", end="", flush=True)

                run = run_fleet(url, server, settings, progress=progress)
            summary = summarize(
                run, warmup_seconds=SERVER.warmup_seconds, service_seconds=SERVER.service_seconds, peak=SERVER.peak
            )
            print(f"done in {summary.seconds:.1f}s")
            results.append((name, run, summary))
        print("simulated, same shape: ", end="", flush=True)
        client = redis.Redis.from_url(url)
        scenario = with_(BY_NAME[SIMULATED], requests=args.requests, seconds=10 * args.requests)
        for policy in ("classic", "adaptive"):
            simulated[policy] = figures(simulate(client, scenario, policy, namespace="fleet-bench-sim"), scenario)
            print(f"{policy} ", end="", flush=True)
        client.close()
        print("done")
    finally:
        if embedded is not None:
            embedded.close()

    print()
    print(summary_table([(name, m) for name, _, m in results]))
    by_name = {name: m for name, _, m in results}
    shared, single, per = by_name["shared classic"], by_name["one process"], by_name["per-process"]
    adaptive, latency = by_name["shared adaptive"], by_name["shared latency"]
    ratio = shared.rejected_rate / single.rejected_rate if single.rejected_rate else float("inf")
    checks = [
        (f"shared 429 rate {shared.rejected_rate:.2%}, 1x64 {single.rejected_rate:.2%}: x{ratio:.2f}", ratio <= 1.5),
        (f"shared 429s in warm-up {shared.warmup_rate:.2%} (under 1%)", shared.warmup_rate < 0.01),
        (f"shared max concurrency {shared.max_concurrency} (at most the peak {PEAK})", shared.max_concurrency <= PEAK),
        (f"per-process AIMD: {per.rejected:,} 429s, x{per.rejected / max(1, shared.rejected):.1f} the shared", True),
        (
            f"adaptive: {adaptive.oracle_share:.0%} of capacity at {adaptive.rejected_rate:.2%} 429s "
            "(at least 90%, at most 1%)",
            adaptive.oracle_share >= 0.9 and adaptive.rejected_rate <= 0.01,
        ),
        (
            f"latency: {latency.oracle_share:.0%} of capacity at {latency.rejected_rate:.2%} 429s "
            "(at least 90%, at most 1%)",
            latency.oracle_share >= 0.9 and latency.rejected_rate <= 0.01,
        ),
    ]
    print("\nThe simulator against the real run (same shape, same number of requests):")
    for policy, real in (("classic", shared), ("adaptive", adaptive)):
        sim = simulated[policy]
        dg, dr = sim.count_share - real.oracle_share, sim.refused_share - real.rejected_rate
        print(
            f"  {policy:8}  real {real.oracle_share:.1%} of capacity, {real.rejected_rate:.2%} 429s, "
            f"{real.seconds:.1f}s;  simulated {sim.count_share:.1%}, {sim.refused_share:.2%}, {sim.seconds:.1f}s"
        )
        checks.append(
            (
                f"simulated {policy}: goodput {100 * dg:+.1f} points, 429 share {100 * dr:+.2f} points from the "
                f"real run (within {100 * GOODPUT_TOLERANCE:g} and {100 * REFUSED_TOLERANCE:g})",
                abs(dg) <= GOODPUT_TOLERANCE and abs(dr) <= REFUSED_TOLERANCE,
            )
        )
    print()
    for text, ok in checks:
        print(f"  {'ok  ' if ok else 'MISS'} {text}")

    from aimd_redis.demo.plot import plot_comparison

    title = f"{args.requests} requests each, cold server: capacity 1 -> {SERVER.peak} over {SERVER.warmup_seconds:g}s"
    panels = [
        (f"{n} ({m.shape}): {m.rejected:,} 429s, {m.seconds:.0f}s, {m.oracle_share:.0%}", run) for n, run, m in results
    ]
    path = plot_comparison(panels, args.plot, title=title, peak=PEAK)
    print(f"\nPlot: {path}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
