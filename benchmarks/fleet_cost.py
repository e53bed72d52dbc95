"""What a large fleet costs Redis, with the process agent and with the
previous client task by task, side by side in one run: simulated on the real
scripts in a real Redis with injected time.

    python benchmarks/fleet_cost.py [--client task --client agent] [--pods 50 --pods 100 --pods 200]
                                    [--seconds 10] [--url redis://...] [--plot fleet_cost.png]

Each pod runs 64 tasks that loop on 2 s requests through one domain. The
limit is either 8 slots a pod (most tasks wait: 56 of every 64) or 128 a pod
(above the fleet's tasks: nobody waits). The two clients
(``aimd_redis/demo/simulator.py``):

- ``task``, the previous client: every waiting task re-runs the acquire
  script every ``wait_poll_seconds`` (2 s), a release hands its slot to the
  next waiter on its process's wake channel, and the woken task claims it;
- ``agent``, the process agent: a pod's tasks queue locally, its flusher
  sends one batch with everything pending (a heartbeat every 2 s while tasks
  wait), a slot handed over comes on the wake channel and is acked by the
  next batch.

After a warm-up of one request's length it resets Redis's command statistics
and, over the rest of the run, reports per simulated second the script calls
and the Redis time they took (INFO commandstats: what Redis itself spent in
FCALL, as the clients run them on Redis 7), and the waiter entries Redis holds (the queue's size), in all and
per pod, and the agent's figures against the task client's. Per-pod figures
that stay flat as the fleet grows extrapolate to 1,000 pods on paper (printed
as such); ``--pods 1000`` measures it. Results go to
benchmarks/results/fleet_cost.json.
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
from aimd_redis.demo.simulator import CLIENTS, Scenario, Simulation, scenario_config, steps, uniform

TASKS, SERVICE = 64, 2.0
#: Slots a pod's share of the limit: most tasks wait, or none does.
SHARES = {"most wait": 8, "none waits": 128}
RESULTS = Path(__file__).parent / "results" / "fleet_cost.json"
#: Issue targets for 1,000 pods with most tasks waiting: Redis ms a simulated
#: second, and the agent's cost against the task client's.
TARGET_MS, TARGET_RATIO, TARGET_PODS = 500.0, 0.1, 1000


class Cost(msgspec.Struct, frozen=True):
    client: str
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


def measure(client: redis.Redis, fleet: str, pods: int, case: str, seconds: float) -> Cost:
    s = scenario(pods, case, seconds)
    sim = Simulation(
        client, s, scenario_config(s, "classic"), namespace=f"aimd-fleet-cost-{fleet}", fleet=CLIENTS[fleet]
    )
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
        client=fleet,
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


def _markdown(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def table(costs: list[Cost]) -> str:
    head = ["pods x 64", "case", "client", "served/s", "waiting", "calls/s", "per pod", "Redis ms/s", "per pod"]
    head += ["us/call", "entries", "per pod", "wall"]
    rows = [head]
    for c in costs:
        paper = c.wall == 0
        rows.append(
            [
                f"{c.pods:,}" + (" (paper)" if paper else ""),
                c.case,
                c.client,
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
    return _markdown(rows)


def _pairs(costs: list[Cost]) -> list[tuple[Cost, Cost]]:
    """(agent, task) of each fleet size and case both clients ran."""
    task = {(c.pods, c.case): c for c in costs if c.client == "task"}
    return [(c, task[(c.pods, c.case)]) for c in costs if c.client == "agent" and (c.pods, c.case) in task]


def ratios(costs: list[Cost]) -> str:
    rows = [["pods x 64", "case", "calls agent/task", "Redis ms agent/task", "entries agent/task"]]
    for agent, task in _pairs(costs):
        rows.append(
            [
                f"{agent.pods:,}" + (" (paper)" if agent.wall == 0 or task.wall == 0 else ""),
                agent.case,
                f"{agent.calls / task.calls:.3f}" if task.calls else "-",
                f"{agent.redis_ms / task.redis_ms:.3f}" if task.redis_ms else "-",
                f"{agent.entries / task.entries:.3f}" if task.entries else "-",
            ]
        )
    return _markdown(rows)


def on_paper(costs: list[Cost], pods: int) -> list[Cost]:
    """``pods`` pods from the largest fleet measured, per pod figures held flat."""
    out = []
    for fleet in CLIENTS:
        for case in SHARES:
            measured = [c for c in costs if c.case == case and c.client == fleet]
            if not measured or any(c.pods >= pods for c in measured):
                continue
            c = max(measured, key=lambda c: c.pods)
            k = pods / c.pods
            out.append(
                msgspec.structs.replace(
                    c,
                    pods=pods,
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


def verdict(costs: list[Cost]) -> list[str]:
    """The targets for 1,000 pods with most tasks waiting, measured or on paper."""
    lines = []
    for agent, task in _pairs(costs):
        if agent.pods != TARGET_PODS or agent.case != "most wait":
            continue
        how = "on paper" if agent.wall == 0 else "measured"
        ms_ok, ratio = agent.redis_ms <= TARGET_MS, agent.redis_ms / task.redis_ms
        lines.append(
            f"{'ok  ' if ms_ok else 'MISS'} {TARGET_PODS:,} pods, most tasks wait ({how}): the agent costs Redis "
            f"{agent.redis_ms:,.0f} ms a simulated second (at most {TARGET_MS:,.0f})"
        )
        lines.append(
            f"{'ok  ' if ratio <= TARGET_RATIO else 'MISS'} ... {ratio:.3f} of the task client's {task.redis_ms:,.0f} "
            f"ms (at most {TARGET_RATIO:g})"
        )
    return lines


def plot(costs: list[Cost], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SHARES), figsize=(11, 4))
    for ax, case in zip(axes, SHARES, strict=True):
        for fleet in CLIENTS:
            mine = sorted((c for c in costs if c.case == case and c.client == fleet), key=lambda c: c.pods)
            if mine:
                ax.plot(
                    [c.pods for c in mine],
                    [c.redis_ms / c.pods for c in mine],
                    "o-" if fleet == "agent" else "s--",
                    label=fleet,
                )
        ax.set_title(f"{case} (measured)")
        ax.set_xlabel("pods x 64 tasks")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("Redis script ms per simulated second, per pod")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--client", action="append", choices=list(CLIENTS), help="client models (default: both)")
    parser.add_argument("--pods", type=int, action="append", help="fleet sizes (default: 50, 100, 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="simulated seconds measured after the warm-up")
    parser.add_argument("--case", action="append", choices=list(SHARES), help="only these")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"figures as JSON (default: {RESULTS})")
    parser.add_argument("--plot", type=Path, help="draw per-pod Redis time against fleet size to this PNG")
    args = parser.parse_args()
    sizes = args.pods or [50, 100, 200]
    cases = args.case or list(SHARES)
    fleets = args.client or list(CLIENTS)
    embedded = None if args.url else EmbeddedRedis()
    url = args.url or embedded.url  # type: ignore[union-attr]
    client = redis.Redis.from_url(url)
    print(
        f"Redis: {url}; {TASKS} tasks a pod, {SERVICE:g} s requests, {args.seconds:g} s measured after {SERVICE:g} s; "
        f"clients: {', '.join(fleets)}"
    )
    costs: list[Cost] = []
    runs = [(case, pods, fleet) for case in cases for pods in sizes for fleet in fleets]
    try:
        for i, (case, pods, fleet) in enumerate(runs, 1):
            print(f"  [{i}/{len(runs)}] {pods:,} pods, {case}, {fleet}: ", end="", flush=True)
            c = measure(client, fleet, pods, case, args.seconds)
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
    everything = costs + on_paper(costs, TARGET_PODS)
    text = table(everything) + "\n\n" + ratios(everything)
    note = (
        "\nPer simulated second, after the warm-up. calls/s: script calls (FCALL); Redis ms/s: Redis's own time "
        "in them (INFO commandstats), a Redis core is 1,000 ms/s; entries: mean waiter entries in Redis's queue; "
        "(paper): the largest fleet measured, scaled by its per-pod figures."
    )
    print()
    print(text)
    print(note)
    found = verdict(everything)
    if found:
        print("\n" + "\n".join(found))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(msgspec.json.format(msgspec.json.encode({"seconds": args.seconds, "costs": everything})))
    print(f"\nFigures: {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(text + "\n" + note + "\n")
        print(f"Tables: {args.markdown}")
    if args.plot is not None:
        print(f"Plot: {plot(costs, args.plot)}")
    return 0 if all(line.startswith("ok") for line in found) else 1


if __name__ == "__main__":
    sys.exit(main())
