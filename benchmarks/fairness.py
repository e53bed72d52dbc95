"""Fair share across groups against its targets: in the simulator, in real
time, and what the queue costs Redis.

    pip install -e '.[demo]'
    python benchmarks/fairness.py [--url redis://...] [--only sim|real|cost ...] [--real-seconds 20]
                                  [--plot benchmarks/results/fairness.png]

A domain of limit 8 (registered, no ramp, never refused) is shared by
groups of tasks that always want a slot:

- simulator (``aimd_redis/demo/fair.py``: the real scripts on a real Redis,
  injected time, the agent's own decisions), 60 simulated seconds of 0.25 s
  requests: groups "a" and "b" with weights 3:1 on 2 processes each (12
  tasks a process) and mixed in each of 4 processes (6 tasks of each), the
  same at 1:1 (the control), a group alone (4 x 12), and a light group
  (1 task, weight 3) beside a flood. Then an interactive group (2 tasks,
  0.2 s requests about 1 s apart) arriving at 5 s while a batch group (4 x 16
  tasks, 1 s requests) floods the queue, at weight 10, and at weight 1 with
  a quarter of the limit reserved for it (``ThrottleConfig(reserved=...)``),
  each against the same group with no batch load, over 300 simulated seconds;
- real time (``aimd_redis/demo/fairfleet.py``): real processes with
  ``AsyncThrottle.slot(..., group=, weight=)`` around 0.25 s sleeps on a real
  Redis on 127.0.0.1: the 3:1 splits, 1:1, the group alone, and the
  interactive group (weight 10, and the reservation) over twice as long;
- queue cost (``benchmarks/queue_cost.py``): Redis time per batch call with
  10 to 10,000 processes waiting and 1 to 1,000 groups.

Targets: "a" gets 75% +- 5 points of the grants at 3:1 (50% +- 5 at 1:1);
a group alone keeps at least 95% of the slots busy in the simulator, 85% in
real time; the interactive group's p99 wait under the batch flood is at
most 1.2x its p99 with no batch load, in the simulator, with its
reservation (weight 10 alone, and the real-time runs, are shown beside it,
not counted: a weight divides the slots that come back, it cannot make one
come back sooner); Redis time per call varies at most
1.5x over each queue sweep. Grants and busy slots count after the first
2 s (every task has asked by then). It prints progress, a table per part,
each target met or missed, writes the figures to
benchmarks/results/fairness.json and the slots each group held over time
to ``--plot``; exit status 1 if a target was missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec
import redis
from queue_cost import QueueCost, sweeps
from queue_cost import verdict as cost_verdict

from aimd_redis import ThrottleConfig
from aimd_redis.demo import fair
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.demo.fair import FairFigures, Interval
from aimd_redis.demo.fairfleet import Part, Record, run_fleet
from aimd_redis.demo.simulator import Granted, Scenario, simulate

RESULTS = Path(__file__).parent / "results"
SHARE, SHARE_TOLERANCE = 0.75, 0.05
SIM_BUSY, REAL_BUSY = 0.95, 0.85
MAX_WAIT_X = 1.2
#: The interactive group's reservation: 2 of the 8 slots, what its 2 tasks can hold at once.
RESERVED = 0.25
#: (weight, reserved share) of the interactive group: the targets' two ways.
INTERACTIVE = ((10.0, 0.0), (1.0, RESERVED))
PARTS = ("sim", "real", "cost")
COLORS = {"a": "tab:blue", "b": "tab:orange", "batch": "tab:blue", "interactive": "tab:red", "default": "tab:green"}


class Panel(msgspec.Struct):
    """One run: its figures and the slots each group held over time."""

    where: str
    figures: FairFigures
    about: str
    step: float
    load: dict[str, list[float]]


class Check(msgspec.Struct):
    text: str
    ok: bool
    target: bool = True
    """Counted in the exit status (else shown for comparison)."""


def _panel(where: str, about: str, f: FairFigures, busy: Sequence[Interval], end: float) -> Panel:
    step = 0.5 if end <= 100 else 2.0
    return Panel(where, f, about, step, fair.concurrency(busy, end, step))


# -- simulator ---------------------------------------------------------------------


def simulated(client: redis.Redis, log: Callable[[str], None]) -> list[Panel]:
    runs: list[tuple[Scenario, float]] = [
        (fair.split((3, 1)), fair.WARMUP),
        (fair.mixed((3, 1)), fair.WARMUP),
        (fair.split((1, 1)), fair.WARMUP),
        (fair.mixed((1, 1)), fair.WARMUP),
        (fair.ALONE, fair.WARMUP),
        (fair.LIGHT, fair.WARMUP),
    ]
    for weight, reserved in INTERACTIVE:
        for batch in (False, True):
            runs.append((fair.interactive(weight, batch=batch, reserved=reserved), fair.INTERACTIVE_START))
    panels = []
    for i, (s, start) in enumerate(runs, 1):
        began = time.perf_counter()
        run = simulate(client, s, "classic", namespace=f"aimd-fair-{s.name}")
        f = fair.fair_figures(run, s, start)
        panels.append(_panel("simulated", s.about, f, fair.served(run), run.end))
        log(f"  [{i}/{len(runs)}] {s.name}: {_shares(f)} ({time.perf_counter() - began:.1f}s)")
    return panels


# -- real time ----------------------------------------------------------------------


class RealRun(NamedTuple):
    name: str
    about: str
    processes: list[list[Part]]
    reserved: float = 0.0
    """The interactive group's reserved share of the limit."""
    start: float = fair.WARMUP
    """Grants and busy slots count from here on."""
    longer: float = 1.0
    """How many times ``--real-seconds`` it runs (the interactive group asks seldom)."""


A3, A1, B1 = Part("a", 3.0, 12), Part("a", 1.0, 12), Part("b", 1.0, 12)
BATCH = [Part("batch", 1.0, 16, service=1.0)]


def _interactive(weight: float) -> list[Part]:
    return [Part("interactive", weight, 2, service=0.2, think=1.0, start=fair.INTERACTIVE_START)]


REAL: list[RealRun] = [
    RealRun("real-3to1", "a (weight 3) on 2 processes, b (1) on 2 others, 12 tasks each", [[A3], [A3], [B1], [B1]]),
    RealRun(
        "real-3to1-mixed",
        "a (weight 3) and b (1) in each of 4 processes, 6 tasks of each",
        [[Part("a", 3.0, 6), Part("b", 1.0, 6)]] * 4,
    ),
    RealRun(
        "real-1to1", "a and b (weight 1) on 2 processes each, 12 tasks each", [[Part("a", 1.0, 12)] * 2, [B1], [B1]]
    ),
    RealRun("real-alone", "a (weight 3) alone, 4 processes x 12 tasks", [[A3]] * 4),
    RealRun(
        "real-interactive-alone",
        "interactive (2 tasks, 0.2 s requests 1 s apart) alone",
        [_interactive(10.0)],
        start=fair.INTERACTIVE_START,
        longer=2.0,
    ),
    RealRun(
        "real-interactive-w10",
        "interactive (weight 10) behind a batch group (4 x 16 tasks, 1 s requests)",
        [BATCH] * 4 + [_interactive(10.0)],
        start=fair.INTERACTIVE_START,
        longer=2.0,
    ),
    RealRun(
        f"real-interactive-r{RESERVED:g}",
        f"interactive (weight 1, {RESERVED:g} of the limit reserved) behind the batch group",
        [BATCH] * 4 + [_interactive(1.0)],
        reserved=RESERVED,
        start=fair.INTERACTIVE_START,
        longer=2.0,
    ),
]


def real_time(url: str, seconds: float, log: Callable[[str], None]) -> list[Panel]:
    panels = []
    for i, run in enumerate(REAL, 1):
        span = seconds * run.longer
        log(f"  [{i}/{len(REAL)}] {run.name}: {run.about}, {span:g} s")
        started, records = run_fleet(
            url,
            run.processes,
            seconds=span,
            limit=fair.LIMIT,
            namespace=f"aimd-fair-{run.name}-{int(time.time())}",
            config=ThrottleConfig(reserved={"interactive": run.reserved} if run.reserved else ""),
            progress=log,
        )
        f, busy = real_figures(run, started, records, span)
        panels.append(_panel("real time", f"{run.about}; limit {fair.LIMIT}", f, busy, span))
        log(f"      {_shares(f)}")
    return panels


def real_figures(
    run: RealRun, started: float, records: Sequence[Record], seconds: float
) -> tuple[FairFigures, list[Interval]]:
    names = sorted({p.group or "default" for parts in run.processes for p in parts})
    grants = [Granted(g - started, group or "default", g - asked) for group, asked, g, _ in records]
    busy = [(group or "default", g - started, end - started) for group, _, g, end in records]
    return fair.group_figures(run.name, names, grants, busy, (run.start, seconds), fair.LIMIT), busy


# -- the verdict -----------------------------------------------------------------------

#: Group a's share of the grants, by scenario.
SHARES = {
    **{f(w).name: SHARE if w == (3, 1) else 0.5 for f in (fair.split, fair.mixed) for w in ((3, 1), (1, 1))},
    "real-3to1": SHARE,
    "real-3to1-mixed": SHARE,
    "real-1to1": 0.5,
}
#: The least share of the slots busy, by scenario.
BUSY = {fair.ALONE.name: SIM_BUSY, fair.LIGHT.name: SIM_BUSY, "real-alone": REAL_BUSY}
#: (under batch load, its baseline with no batch load, counted in the exit status): the
#: target holds for an interactive group "of weight 10, or with a reservation", so
#: the reservation is counted and weight 10 shown beside it, as the real-time runs.
WAITS = [
    *(
        (fair.interactive(w, reserved=r).name, fair.interactive(w, batch=False, reserved=r).name, r > 0)
        for w, r in INTERACTIVE
    ),
    ("real-interactive-w10", "real-interactive-alone", False),
    (f"real-interactive-r{RESERVED:g}", "real-interactive-alone", False),
]


def _shares(f: FairFigures) -> str:
    grants = sum(g.grants for g in f.groups)
    each = ", ".join(f"{g.group} {g.share:.1%} (p99 wait {g.wait_p99 * 1000:,.1f} ms)" for g in f.groups)
    return f"busy {f.busy_share:.1%}; {grants:,} grants: {each}"


def checks(panels: Sequence[Panel]) -> list[Check]:
    by = {p.figures.scenario: p.figures for p in panels}
    out = []
    for name, want in SHARES.items():
        if name in by:
            got = by[name].of("a").share
            line = f"{name}: a gets {got:.1%} of the grants ({want:.0%} +- {SHARE_TOLERANCE * 100:g} points)"
            out.append(Check(line, abs(got - want) <= SHARE_TOLERANCE))
    for name, low in BUSY.items():
        if name in by:
            busy = by[name].busy_share
            out.append(Check(f"{name}: {busy:.1%} of the slots busy (at least {low:.0%})", busy >= low))
    for loaded, quiet, target in WAITS:
        if loaded in by and quiet in by:
            base, p99 = by[quiet].of("interactive").wait_p99, by[loaded].of("interactive").wait_p99
            line = (
                f"{loaded}: the interactive group's p99 wait {p99 * 1000:,.1f} ms, x{p99 / base:,.1f} its "
                f"{base * 1000:.1f} ms with no batch load (at most x{MAX_WAIT_X:g})"
            )
            out.append(Check(line, p99 <= MAX_WAIT_X * base, target))
    return out


def table(panels: Sequence[Panel]) -> str:
    rows = [["where", "scenario", "busy", "group", "grants", "share", "slots", "wait p50", "wait p99", "max"]]
    for p in panels:
        f = p.figures
        for i, g in enumerate(f.groups):
            rows.append(
                [
                    p.where if i == 0 else "",
                    f.scenario if i == 0 else "",
                    f"{f.busy_share:.1%}" if i == 0 else "",
                    g.group,
                    f"{g.grants:,}",
                    f"{g.share:.1%}",
                    f"{g.busy:.2f}",
                    f"{g.wait_p50 * 1000:.1f} ms",
                    f"{g.wait_p99 * 1000:.1f} ms",
                    f"{g.wait_max * 1000:.1f} ms",
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def plot(panels: Sequence[Panel], costs: Sequence[QueueCost], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(panels) + (1 if costs else 0)
    cols = 3
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels, strict=False):
        groups = sorted(p.load)
        t = [i * p.step for i in range(len(p.load[groups[0]]))]
        colors = [COLORS.get(g, "tab:gray") for g in groups]
        ax.stackplot(t, [p.load[g] for g in groups], labels=groups, colors=colors, step="post", alpha=0.8)
        ax.axhline(fair.LIMIT, color="black", lw=0.8, ls="--")
        f = p.figures
        shares = ", ".join(f"{g.group} {g.share:.0%}" for g in f.groups)
        ax.set_title(f"{p.where}: {f.scenario}\n{shares}; busy {f.busy_share:.0%}", fontsize=9)
        ax.set_ylim(0, fair.LIMIT * 1.15)
        ax.set_xlabel("seconds")
        ax.set_ylabel("slots held")
        ax.legend(loc="lower right", fontsize=7)
    if costs:
        ax = axes.flat[len(panels)]
        entries = [c for c in costs if c.groups == 1]
        groups = (
            [c for c in costs if c.entries == max(c.entries for c in costs if c.groups > 1)]
            if any(c.groups > 1 for c in costs)
            else []
        )
        ax.plot([c.entries for c in entries], [c.usec for c in entries], "o-", label="waiting processes (1 group)")
        ax.plot([c.groups for c in groups], [c.usec for c in groups], "s--", label="groups (1,000 waiting)")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title("queue cost: Redis time per batch call", fontsize=9)
        ax.set_ylabel("us per call")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server on 127.0.0.1)")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts (default: all)")
    parser.add_argument("--real-seconds", type=float, default=20.0, help="wall seconds of each real-time run")
    parser.add_argument("--cycles", type=int, default=400, help="queue cost: hand-overs a round")
    parser.add_argument("--rounds", type=int, default=3, help="queue cost: rounds over every queue")
    parser.add_argument("--json", type=Path, default=RESULTS / "fairness.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "fairness.png")
    args = parser.parse_args()
    parts = args.only or list(PARTS)
    embedded = None if args.url else EmbeddedRedis()
    url = args.url or embedded.url  # type: ignore[union-attr]
    print(f"Redis: {url}; limit {fair.LIMIT}, {fair.SERVICE:g} s requests unless said; parts: {', '.join(parts)}")

    def log(line: str) -> None:
        print(line, flush=True)

    panels: list[Panel] = []
    costs: list[QueueCost] = []
    client = redis.Redis.from_url(url)
    try:
        if "sim" in parts:
            log("\nSimulator (60 simulated seconds; interactive: 300):")
            panels += simulated(client, log)
        if "real" in parts:
            log(f"\nReal time ({args.real_seconds:g} s each):")
            panels += real_time(url, args.real_seconds, log)
        if "cost" in parts:
            log("\nQueue cost:")
            costs = sweeps(client, args.cycles, args.rounds, log)
    finally:
        client.close()
        if embedded is not None:
            embedded.close()

    found = checks(panels) + [Check(text, ok) for text, ok in (cost_verdict(costs) if costs else [])]
    if panels:
        print("\n" + table(panels))
        print("slots: mean slots the group held (at the server); waits: from asking to the grant")
    print()
    for c in found:
        print(f"  {('ok  ' if c.ok else 'MISS') if c.target else ('(ok)' if c.ok else '(miss)')} {c.text}")
    if not all(c.target for c in found):
        print("  (in brackets: shown for comparison, not counted)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    figures = {"panels": [msgspec.structs.replace(p, load={}) for p in panels], "queue_cost": costs, "checks": found}
    args.json.write_bytes(msgspec.json.format(msgspec.json.encode(figures)))
    print(f"\nFigures: {args.json}")
    if panels or costs:
        print(f"Plot: {plot(panels, costs, args.plot)}")
    return 0 if all(c.ok for c in found if c.target) else 1


if __name__ == "__main__":
    sys.exit(main())
