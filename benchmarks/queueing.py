"""A fleet against a real server that queues instead of refusing, in real time.

    pip install -e '.[demo]'
    python benchmarks/queueing.py [--url redis://...] [--seconds 20] [--policy latency --policy adaptive]
                                  [--static 8 --static 12 ...] [--plot queueing.png]

The server is the cold server in its queueing mode (``aimd-redis cold-server
--queue``): a batch of 12 served at once, 0.2 s a request alone (+-20%) and
1.5x that in a full batch, the rest in a FIFO queue, never refused. The fleet
is 4 processes x 16 asyncio tasks calling it through ``AsyncAimdTransport``,
registered with ``max_parallel_requests=64``, once per policy. As a
reference, the same fleet runs with a static limit (classic, no 429 ever
comes, so the limit is the registered value) over a small sweep, and the best
of them in hindsight (the most throughput per second of median latency,
Kleinrock's "power") is shown beside the policies.

For each run, over the steady window (after the first third): requests served
a second against the server's peak, median and p90 latency (arrival at the
server to the last byte) against a lone request's, and the requests refused
or failed. The targets: at least 90% of the peak, median at most 2x no-load,
p90 at most 3x, every request served. The classic and adaptive policies keep
the whole fleet at the server and miss the latency targets; the latency
policy holds it near the knee, as the best static limit does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import msgspec

from aimd_redis import ThrottleConfig
from aimd_redis.demo.coldserver import ColdServer, ServerSettings
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.demo.fleet import FleetRun, FleetSettings, Sample, run_fleet
from aimd_redis.demo.plot import QueuePanel, plot_queue_panels
from aimd_redis.demo.servers import Reference
from aimd_redis.demo.simulator import quantile, uniform

SERVER = ServerSettings(peak=12, warmup_seconds=0.0, service_seconds=0.2, queueing=True, growth=0.5)
PROCESSES, TASKS, PEAK = 4, 16, 64
POLICIES: tuple[str, ...] = ("classic", "adaptive", "latency")
STATIC = (8, 12, 16, 32)
MIN_THROUGHPUT, MAX_MEDIAN_X, MAX_P90_X = 0.9, 2.0, 3.0


class Result(msgspec.Struct, frozen=True):
    name: str
    rate: float
    share: float
    median_x: float
    p90_x: float
    refused: int
    at_server: float
    power: float
    """Requests a second per second of median latency."""


def judge(name: str, run: FleetRun, ref: Reference, peak_rate: float, window: tuple[float, float]) -> Result:
    a, b = window
    served = [r for r in run.records if r.status == 200]
    rate = sum(1 for r in served if a <= r.finished - run.started < b) / (b - a)
    latencies = [r.finished - r.arrived for r in served if a <= r.arrived - run.started < b]
    median, p90 = quantile(latencies, 0.5), quantile(latencies, 0.9)
    inside = [x for x in run.samples if a <= x.t < b]
    return Result(
        name=name,
        rate=rate,
        share=rate / peak_rate,
        median_x=median / ref.no_load,
        p90_x=p90 / ref.no_load_p90,
        refused=sum(1 for r in run.records if r.status != 200),
        at_server=statistics.median(x.in_service + x.queued for x in inside) if inside else 0.0,
        power=rate / median if median else 0.0,
    )


def panel(title: str, run: FleetRun, ref: Reference) -> QueuePanel:
    samples: list[Sample] = run.samples
    return QueuePanel(
        title=title,
        t=[x.t for x in samples],
        knee=[x.capacity for x in samples],
        in_batch=[x.in_service for x in samples],
        queued=[x.queued for x in samples],
        limit=[x.limit for x in samples],
        latency=[
            (r.finished - run.started, (r.finished - r.arrived) / ref.no_load) for r in run.records if r.status == 200
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--seconds", type=float, default=20.0, help="each run's length")
    parser.add_argument("--policy", action="append", help=f"policies (default: {', '.join(POLICIES)})")
    parser.add_argument("--static", type=int, action="append", help=f"static limits (default: {STATIC})")
    parser.add_argument("--plot", type=Path, default=Path("queueing.png"))
    args = parser.parse_args()
    policies = args.policy or list(POLICIES)
    static = args.static or list(STATIC)
    batching = SERVER.batching()
    ref = Reference.of(uniform(SERVER.service_seconds), batching, SERVER.peak)
    peak_rate = batching.rate(SERVER.peak, SERVER.peak, ref.mean_work)
    window = (args.seconds / 3, args.seconds)
    embedded = None if args.url else EmbeddedRedis()
    url = args.url or embedded.url  # type: ignore[union-attr]
    print(f"Redis: {url} ({embedded.kind if embedded else 'given'})")
    print(
        f"Server: a batch of {SERVER.peak}, {1000 * SERVER.service_seconds:.0f} ms a request alone (+-20%), "
        f"{1 + SERVER.growth:g}x in a full batch, FIFO queue beyond; peak {peak_rate:.1f} requests/s, "
        f"no-load latency {1000 * ref.no_load:.0f} ms (p90 {1000 * ref.no_load_p90:.0f} ms)"
    )
    print(f"Fleet: {PROCESSES} processes x {TASKS} tasks, {args.seconds:g}s a run, steady from {window[0]:.0f}s\n")
    plans = [(policy, policy, PEAK) for policy in policies] + [(f"static {n}", "classic", n) for n in static]
    results: list[tuple[Result, FleetRun]] = []
    try:
        for name, policy, limit in plans:
            settings = FleetSettings(
                processes=PROCESSES,
                tasks=TASKS,
                peak=limit,
                config=ThrottleConfig(policy=policy),  # type: ignore[arg-type,unused-ignore]
                namespace=f"queueing-bench-{name.replace(' ', '-')}-{int(time.time())}",
            )
            print(f"{name:10} (limit {limit}): ", end="", flush=True)
            with ColdServer(SERVER) as server:
                run = run_fleet(url, server, settings, seconds=args.seconds)
            r = judge(name, run, ref, peak_rate, window)
            results.append((r, run))
            print(
                f"{r.rate:.1f}/s ({r.share:.0%} of peak), median {r.median_x:.1f}x, p90 {r.p90_x:.1f}x no-load, "
                f"{r.refused} refused, {r.at_server:g} at the server"
            )
    finally:
        if embedded is not None:
            embedded.close()
    statics = [(r, run) for r, run in results if r.name.startswith("static")]
    best = max(statics, key=lambda x: x[0].power) if statics else None
    shown = [(r, run) for r, run in results if not r.name.startswith("static")] + ([best] if best else [])
    rows = [["run", "served/s", "of peak", "median", "p90", "refused", "at server", "targets"]]
    for r, _ in results:
        ok = r.share >= MIN_THROUGHPUT and r.median_x <= MAX_MEDIAN_X and r.p90_x <= MAX_P90_X and r.refused == 0
        name = r.name + (" (best static)" if best is not None and r is best[0] else "")
        row = [name, f"{r.rate:.1f}", f"{r.share:.0%}", f"{r.median_x:.1f}x", f"{r.p90_x:.1f}x", str(r.refused)]
        rows.append([*row, f"{r.at_server:g}", "met" if ok else "missed"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    print(
        f"\nsteady window {window[0]:.0f}-{window[1]:.0f}s; of peak: against {peak_rate:.1f} requests/s; median, p90: "
        f"latency at the server against a lone request's; targets: at least {MIN_THROUGHPUT:.0%} of peak, "
        f"median at most {MAX_MEDIAN_X:g}x, p90 at most {MAX_P90_X:g}x, nothing refused"
    )
    panels = [panel(f"{r.name}: {r.share:.0%} of peak, median {r.median_x:.1f}x", run, ref) for r, run in shown]
    print(f"\nPlot: {plot_queue_panels([[p] for p in panels], args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
