"""The two policies side by side, over every control scenario, in one run.

    pip install -e '.[demo]'
    python benchmarks/control.py [--url redis://...] [--scenario NAME ...] [--seed 1] [--plot control.png]

Each scenario is simulated twice, under ``policy="classic"`` and
``policy="adaptive"``, on the real Lua scripts in a real Redis with injected
time (``aimd_redis/demo/simulator.py``): minutes of simulated time take seconds.
Runs are spread over two worker processes. For each run it prints the share
of the usable capacity that went to requests served (overall and in the
scenario's steady window), the 429 share (overall, in the steady window,
during the server's warm-up), the time to 90% of capacity after a step up
and the most requests the server saw at once; then it checks the adaptive
policy against its targets and against classic, and draws limit, ceiling,
requests in service and capacity over time for every run.

The budget-bound scenarios (``tpm-*``, ``rpm-*``) put a token or request
budget per minute on a server that could serve far more at once. The fleet
registers the budget, learns it from the answers' headers, or ignores it
(the concurrency loop alone); the figure that counts there is the share of
the budget the server admitted in the steady window, at the 429 share.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

import redis

from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.demo.simulator import BY_NAME, SCENARIOS, Figures, Scenario, SimRun, figures, simulate, with_

POLICIES = ("classic", "adaptive")
#: Targets for the adaptive policy (see the scenario's ``goal`` for the steady share).
MAX_STEADY_429 = 0.01
MAX_TO_90 = 10.0
#: How much worse than classic the adaptive policy may be, in points.
GOODPUT_SLACK, REFUSED_SLACK = 0.02, 0.005
#: A fleet that knows the budget (registered or learned) uses this much of it.
MIN_BUDGET_SHARE = 0.9


def _run(job: tuple[str, str, str, int]) -> tuple[str, str, SimRun, float]:
    url, name, policy, seed = job
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    scenario = with_(BY_NAME[name], seed=seed)
    run = simulate(client, scenario, policy, namespace=f"aimd-control-{name}-{policy}")
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
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS], help="only these")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the server and the callers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=Path("control.png"))
    args = parser.parse_args()

    names = args.scenario or [s.name for s in SCENARIOS]
    embedded = None if args.url else EmbeddedRedis()
    url = args.url or embedded.url  # type: ignore[union-attr]
    print(f"Redis: {url} ({embedded.kind if embedded else 'given'}); {len(names)} scenarios x {len(POLICIES)} policies")
    for name in names:
        print(f"  {name:18} {BY_NAME[name].about}")
    print()
    runs: dict[tuple[str, str], SimRun] = {}
    results: dict[tuple[str, str], Figures] = {}
    started = time.perf_counter()
    jobs = [(url, name, policy, args.seed) for name in names for policy in POLICIES]
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
    print(table(results, names))
    print(
        "\ngoodput: share of the capacity the fleet could use that went to requests served; steady: in the "
        "scenario's steady window;\n429s: refusals among requests sent (503/529 for the overloaded server); "
        "budget: share of the server's budget it admitted in the steady window\n"
    )
    failed = 0
    for name in names:
        s = BY_NAME[name]
        found = checks(s, results[(name, "classic")], results[(name, "adaptive")])
        failed += sum(1 for ok, _ in found if not ok)
        print(f"{name}:")
        for ok, text in found:
            print(f"  {'ok  ' if ok else 'MISS'} {text}")
    from aimd_redis.demo.plot import plot_control

    panels = [(BY_NAME[name], [(policy, runs[(name, policy)]) for policy in POLICIES]) for name in names]
    print(f"\nPlot: {plot_control(panels, args.plot)}")
    print(f"\n{'all targets met' if not failed else f'{failed} target(s) missed'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
