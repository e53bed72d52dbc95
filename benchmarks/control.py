"""The policies side by side, over every control scenario, in one run.

    pip install -e '.[demo]'
    python benchmarks/control.py [--url redis://...] [--scenario NAME ...] [--policy NAME ...] [--seed 1]
                                 [--client agent|task] [--plot control.png]

Each scenario is simulated under ``policy="classic"``, ``"adaptive"`` and
``"latency"``, on the real Lua scripts in a real Redis with injected
time (``aimd_redis/demo/simulator.py``): minutes of simulated time take seconds.
Runs are spread over two worker processes. For each run it prints the share
of the usable capacity that went to requests served (overall and in the
scenario's steady window), the 429 share (overall, in the steady window,
during the server's warm-up), the time to 90% of capacity after a step up
and the most requests the server saw at once; then it checks the adaptive
policy against its targets and against classic, the latency policy against
adaptive (it must do as well against servers that refuse), and draws limit, ceiling,
requests in service and capacity over time for every run.

The budget-bound scenarios (``tpm-*``, ``rpm-*``) put a token or request
budget per minute on a server that could serve far more at once. The fleet
registers the budget, learns it from the answers' headers, or ignores it
(the concurrency loop alone); the figure that counts there is the share of
the budget the server admitted in the steady window, at the 429 share.

The queueing scenarios (``q-*``, ``hosted-slow``) put the fleet against a
server that queues instead of refusing; they get a table of their own
(throughput against the server's peak, latency against a lone request's,
time to the first token, 503s, the slow spell's busy share), targets that
bind the policies in ``QUEUE_TARGET_POLICIES``, and a plot of their own
(``control-queueing.png`` beside ``--plot``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import redis

from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.demo.simulator import (
    BY_NAME,
    CLIENTS,
    DEFAULT_CLIENT,
    SCENARIOS,
    Figures,
    QueueFigures,
    Scenario,
    SimRun,
    figures,
    queue_figures,
    simulate,
    with_,
)

#: The policies compared (adaptive is checked against classic, latency against adaptive).
POLICIES: tuple[str, ...] = ("classic", "adaptive", "latency")
#: The policies the queueing servers' targets bind (the others' figures are shown).
QUEUE_TARGET_POLICIES: tuple[str, ...] = ("latency",)
#: Against a server that queues: throughput, latency against no load, and
#: (the hosted API whose latency doubles) how busy it stays through the spell.
MIN_THROUGHPUT, MAX_MEDIAN_X, MAX_P90_X, MIN_SLOW_BUSY = 0.9, 2.0, 3.0, 0.85
#: Targets for the adaptive policy (see the scenario's ``goal`` for the steady share).
MAX_STEADY_429 = 0.01
MAX_TO_90 = 10.0
#: How much worse than classic the adaptive policy may be, in points.
GOODPUT_SLACK, REFUSED_SLACK = 0.02, 0.005
#: A fleet that knows the budget (registered or learned) uses this much of it.
MIN_BUDGET_SHARE = 0.9


def _run(job: tuple[str, str, str, int, str]) -> tuple[str, str, SimRun, float]:
    url, name, policy, seed, fleet = job
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    scenario = with_(BY_NAME[name], seed=seed)
    run = simulate(client, scenario, policy, namespace=f"aimd-control-{name}-{policy}", fleet=CLIENTS[fleet])
    client.close()
    return name, policy, run, time.perf_counter() - started


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def checks(s: Scenario, classic: Figures, adaptive: Figures) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    if s.budget != "ignored" and (s.server_tpm or s.server_rpm):
        for f in (classic, adaptive):
            share, refused = f.budget_share or 0.0, f.steady_refused_share or 0.0
            ok = share >= MIN_BUDGET_SHARE and refused <= MAX_STEADY_429
            out.append(
                (
                    ok,
                    f"{f.policy}: {_pct(share)} of the budget (at least {_pct(MIN_BUDGET_SHARE, 0)}) "
                    f"at {_pct(refused, 2)} 429s (at most {_pct(MAX_STEADY_429, 0)})",
                )
            )
        return out
    if s.server_tpm or s.server_rpm:
        return out  # for comparison only
    if adaptive.steady_goodput is not None and adaptive.steady_refused_share is not None:
        ok = adaptive.steady_goodput >= s.goal and adaptive.steady_refused_share <= MAX_STEADY_429
        out.append(
            (
                ok,
                f"steady {_pct(adaptive.steady_goodput)} of capacity (goal {_pct(s.goal, 0)}) "
                f"at {_pct(adaptive.steady_refused_share, 2)} 429s (at most {_pct(MAX_STEADY_429, 0)})",
            )
        )
    if s.step_up is not None:
        ok = adaptive.to_90 is not None and adaptive.to_90 <= MAX_TO_90
        took = "never" if adaptive.to_90 is None else f"{adaptive.to_90:.1f}s"
        out.append((ok, f"90% of the new capacity {took} after the step (at most {MAX_TO_90:g}s)"))
    dg = adaptive.goodput - classic.goodput
    dr = adaptive.refused_share - classic.refused_share
    out.append((dg >= -GOODPUT_SLACK, f"goodput {100 * dg:+.1f} points against classic"))
    out.append((dr <= REFUSED_SLACK, f"429 share {100 * dr:+.2f} points against classic"))
    return out


def against_adaptive(s: Scenario, adaptive: Figures, latency: Figures) -> list[tuple[bool, str]]:
    """The latency policy against a server that refuses: as adaptive does."""
    if s.server_tpm or s.server_rpm:
        return []
    dg = latency.goodput - adaptive.goodput
    dr = latency.refused_share - adaptive.refused_share
    return [
        (dg >= -GOODPUT_SLACK, f"latency: goodput {100 * dg:+.1f} points against adaptive"),
        (dr <= REFUSED_SLACK, f"latency: 429 share {100 * dr:+.2f} points against adaptive"),
    ]


def queue_checks(s: Scenario, f: QueueFigures) -> list[tuple[bool, str]]:
    assert s.batching is not None
    if s.batching.slow:
        busy = f.slow_busy or 0.0
        return [
            (busy >= MIN_SLOW_BUSY, f"{_pct(busy)} busy through the slow spell (at least {_pct(MIN_SLOW_BUSY, 0)})")
        ]
    return [
        (
            f.throughput_share >= MIN_THROUGHPUT,
            f"throughput {_pct(f.throughput_share)} of peak (at least {_pct(MIN_THROUGHPUT, 0)})",
        ),
        (f.median_x <= MAX_MEDIAN_X, f"median latency {f.median_x:.1f}x no-load (at most {MAX_MEDIAN_X:g}x)"),
        (f.p90_x <= MAX_P90_X, f"p90 latency {f.p90_x:.1f}x no-load's (at most {MAX_P90_X:g}x)"),
        (f.refused == 0, f"{f.refused} requests refused (every request served at once)"),
    ]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def queue_table(results: dict[tuple[str, str], QueueFigures], names: list[str]) -> str:
    rows = [
        [
            "scenario",
            "policy",
            "no-load",
            "p90",
            "peak/s",
            "served/s",
            "of peak",
            "median",
            "p90",
            "TTFT med",
            "TTFT p90",
        ]
    ]
    rows[0] += ["refused", "at server", "queued", "slow busy"]
    for name in names:
        for policy in POLICIES:
            f = results[(name, policy)]
            first, first90 = ("-", "-") if f.first_x is None else (f"{x:.1f}x" for x in f.first_x)
            rows.append(
                [
                    name,
                    policy,
                    f"{1000 * f.no_load:.0f}ms",
                    f"{1000 * f.no_load_p90:.0f}ms",
                    f"{f.peak_rate:.1f}",
                    f"{f.rate:.1f}",
                    _pct(f.throughput_share),
                    f"{f.median_x:.1f}x",
                    f"{f.p90_x:.1f}x",
                    first,
                    first90,
                    str(f.refused),
                    f"{f.at_server:g}",
                    f"{f.queued:g}",
                    _pct(f.slow_busy),
                ]
            )
    return _table(rows)


def table(results: dict[tuple[str, str], Figures], names: list[str]) -> str:
    head = ["scenario"]
    for policy in POLICIES:
        head += [f"{policy}: goodput", "steady", "429s", "steady", "warm-up", "to 90%", "budget"]
    rows = [head]
    for name in names:
        row = [name]
        for policy in POLICIES:
            f = results[(name, policy)]
            to90 = "-" if BY_NAME[name].step_up is None else ("never" if f.to_90 is None else f"{f.to_90:.1f}s")
            row += [
                _pct(f.goodput),
                _pct(f.steady_goodput),
                _pct(f.refused_share, 2),
                _pct(f.steady_refused_share, 2),
                _pct(f.warmup_refused_share, 2),
                to90,
                _pct(f.budget_share),
            ]
        rows.append(row)
    return _table(rows)


def main() -> int:
    global POLICIES
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS], help="only these")
    parser.add_argument("--policy", action="append", help=f"only these policies (default: {', '.join(POLICIES)})")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the server and the callers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--client", choices=list(CLIENTS), default=DEFAULT_CLIENT, help="the client model")
    parser.add_argument("--plot", type=Path, default=Path("control.png"))
    args = parser.parse_args()

    POLICIES = tuple(args.policy or POLICIES)
    names = args.scenario or [s.name for s in SCENARIOS]
    refusing = [n for n in names if BY_NAME[n].batching is None]
    queueing = [n for n in names if BY_NAME[n].batching is not None]
    embedded = None if args.url else EmbeddedRedis()
    url = args.url or embedded.url  # type: ignore[union-attr]
    print(
        f"Redis: {url} ({embedded.kind if embedded else 'given'}); {len(names)} scenarios x {len(POLICIES)} policies; "
        f"{args.client} client"
    )
    for name in names:
        print(f"  {name:18} {BY_NAME[name].about}")
    print()
    runs: dict[tuple[str, str], SimRun] = {}
    results: dict[tuple[str, str], Figures] = {}
    started = time.perf_counter()
    jobs = [(url, name, policy, args.seed, args.client) for name in names for policy in POLICIES]
    try:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for name, policy, run, wall in pool.imap_unordered(_run, jobs):
                f = figures(run, BY_NAME[name])
                runs[(name, policy)], results[(name, policy)] = run, f
                print(
                    f"[{len(runs):2}/{len(jobs)}] {name:18} {policy:8} {_pct(f.goodput)} of capacity, "
                    f"{_pct(f.refused_share, 2)} 429s; {run.end:.0f}s simulated in {wall:.1f}s "
                    f"({run.script_calls:,} script calls)",
                    flush=True,
                )
    finally:
        if embedded is not None:
            embedded.close()
    print(f"\nAll runs in {time.perf_counter() - started:.0f}s of wall time.\n")
    failed = 0
    if refusing:
        print(table(results, refusing))
        print(
            "\ngoodput: share of the capacity the fleet could use that went to requests served; steady: in the "
            "scenario's steady window;\n429s: refusals among requests sent (503/529 for the overloaded server); "
            "budget: share of the server's budget it admitted in the steady window\n"
        )
    compared = {"classic", "adaptive"} <= set(POLICIES)
    for name in refusing:
        s = BY_NAME[name]
        found = checks(s, results[(name, "classic")], results[(name, "adaptive")]) if compared else []
        if {"adaptive", "latency"} <= set(POLICIES):
            found += against_adaptive(s, results[(name, "adaptive")], results[(name, "latency")])
        if not found:
            continue
        failed += sum(1 for ok, _ in found if not ok)
        print(f"{name}:")
        for ok, text in found:
            print(f"  {'ok  ' if ok else 'MISS'} {text}")
    queued = {key: queue_figures(runs[key], BY_NAME[key[0]]) for key in runs if key[0] in queueing}
    if queueing:
        print("\nServers that queue (steady window; latencies against the no-load latency):\n")
        print(queue_table(queued, queueing))
        print(
            "\nno-load: a lone request's median and p90 latency; served/s against the server's best with the "
            "fleet's tasks;\nmedian, p90: latency from arrival at the server to the last byte, against no-load's "
            "median and p90; TTFT: time to the first token of a stream, likewise;\n"
            "refused: 503s past the queue cap (retried); "
            "at server, queued: medians of requests at the server and in its queue; slow busy: the batch's fill "
            "through the slow spell\n"
        )
        print(f"Targets (they bind {', '.join(QUEUE_TARGET_POLICIES)}; the others' are shown for comparison):")
    for name in queueing:
        for policy in POLICIES:
            binds = policy in QUEUE_TARGET_POLICIES
            found = queue_checks(BY_NAME[name], queued[(name, policy)])
            if binds:
                failed += sum(1 for ok, _ in found if not ok)
            marks = ("ok  ", "MISS") if binds else ("ok  ", "miss")
            print(f"{name}, {policy}:")
            for ok, text in found:
                print(f"  {marks[0] if ok else marks[1]} {text}")
    from aimd_redis.demo.plot import plot_control, plot_queueing

    if refusing:
        panels = [(BY_NAME[name], [(policy, runs[(name, policy)]) for policy in POLICIES]) for name in refusing]
        print(f"\nPlot: {plot_control(panels, args.plot)}")
    if queueing:
        panels = [(BY_NAME[name], [(policy, runs[(name, policy)]) for policy in POLICIES]) for name in queueing]
        path = args.plot.with_name(f"{args.plot.stem}-queueing{args.plot.suffix}")
        print(f"Plot: {plot_queueing(panels, path)}")
    print(f"\n{'all targets met' if not failed else f'{failed} target(s) missed'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
