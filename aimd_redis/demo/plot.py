"""Concurrency-over-time pictures of fleet runs (matplotlib, extra ``demo``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from aimd_redis.demo.fleet import FleetRun

COLORS = {"capacity": "#c8c8c8", "limit": "#1f5fbf", "in_flight": "#e07b00", "ceiling": "#1f5fbf", "429": "#c0392b"}


def in_flight_curve(run: FleetRun) -> tuple[list[float], list[int]]:
    """Requests in service at the server over time (a step curve), from its records."""
    steps = sorted(
        [(r.arrived - run.started, 1) for r in run.records if r.status != 429]
        + [(r.finished - run.started, -1) for r in run.records if r.status != 429]
    )
    times, values, level = [0.0], [0], 0
    for t, change in steps:
        level += change
        times.append(t)
        values.append(level)
    return times, values


def _rejections_per_second(run: FleetRun, end: float) -> tuple[list[float], list[int]]:
    buckets = [0] * (int(end) + 1)
    for r in run.records:
        if r.status == 429:
            buckets[min(len(buckets) - 1, max(0, int(r.arrived - run.started)))] += 1
    return [i + 0.5 for i in range(len(buckets))], buckets


def _draw(top: Any, bottom: Any, run: FleetRun, *, limit_label: str, peak: int | None, ymax: float) -> None:
    t = [s.t for s in run.samples]
    end = max(t[-1] if t else 0.0, max((r.finished - run.started for r in run.records), default=0.0))
    top.fill_between(
        t, [s.capacity for s in run.samples], step="post", color=COLORS["capacity"], label="server capacity"
    )
    if any(s.limit is not None for s in run.samples):
        top.step(
            t,
            [s.limit if s.limit is not None else float("nan") for s in run.samples],
            where="post",
            color=COLORS["limit"],
            lw=1.8,
            label=limit_label,
        )
    if any(s.ceiling for s in run.samples):
        top.step(
            t,
            [s.ceiling if s.ceiling else float("nan") for s in run.samples],
            where="post",
            color=COLORS["ceiling"],
            lw=1,
            ls=":",
            label="learned ceiling",
        )
    times, values = in_flight_curve(run)
    top.step(times, values, where="post", color=COLORS["in_flight"], lw=0.9, label="in flight at the server")
    if peak is not None:
        top.axhline(peak, color="black", lw=0.8, ls="--", label=f"registered peak ({peak})")
    for at, label in run.marks:
        for ax in (top, bottom):
            ax.axvline(at, color="#555555", lw=0.8, ls="-.")
        top.annotate(label, (at, ymax * 0.97), fontsize=8, rotation=90, va="top", ha="right", color="#333333")
    centers, counts = _rejections_per_second(run, end)
    bottom.bar(centers, counts, width=0.9, color=COLORS["429"])
    top.set_ylim(0, ymax)
    top.set_xlim(0, end)
    bottom.set_xlim(0, end)
    top.set_ylabel("requests at once")
    bottom.set_ylabel("429s / s")
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)


def plot_run(run: FleetRun, path: Path, *, title: str, peak: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 6), sharex=True, gridspec_kw={"height_ratios": [4, 1]}, constrained_layout=True
    )
    ymax = 1.15 * max([peak or 0, *(s.capacity for s in run.samples), *(s.limit or 0 for s in run.samples)], default=1)
    _draw(top, bottom, run, limit_label="shared limit (Redis)", peak=peak, ymax=ymax)
    top.set_title(title)
    top.legend(loc="lower right", fontsize=8)
    bottom.set_xlabel("seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(runs: Sequence[tuple[str, FleetRun]], path: Path, *, title: str, peak: int) -> Path:
    """One panel per run, on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2,
        len(runs),
        figsize=(4.2 * len(runs), 5.5),
        sharex=True,
        sharey="row",
        gridspec_kw={"height_ratios": [4, 1]},
        constrained_layout=True,
    )
    highest = max(max((r.concurrency for r in run.records), default=0) for _, run in runs)
    ymax = 1.1 * max(peak, highest)
    for i, (name, run) in enumerate(runs):
        top, bottom = axes[0][i], axes[1][i]
        label = "sum of per-process limits" if run.settings["strategy"] == "per-process" else "shared limit (Redis)"
        _draw(top, bottom, run, limit_label=label, peak=peak, ymax=ymax)
        top.set_title(name, fontsize=10)
        bottom.set_xlabel("seconds")
        if i:
            top.set_ylabel("")
            bottom.set_ylabel("")
        top.legend(loc="upper right", fontsize=7)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_control(scenarios: Sequence[tuple[Any, Sequence[tuple[str, Any]]]], path: Path) -> Path:
    """Simulated runs (``aimd_redis.demo.simulator``): a row per scenario, a column per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(runs) for _, runs in scenarios)
    fig, axes = plt.subplots(
        len(scenarios), columns, figsize=(6.5 * columns, 2.1 * len(scenarios)), squeeze=False, constrained_layout=True
    )
    for row, (scenario, runs) in enumerate(scenarios):
        ymax = 1.15 * max(max((p.capacity for p in run.points), default=1) for _, run in runs)
        ymax = max(ymax, 1.15 * max(max((p.limit for p in run.points), default=1) for _, run in runs))
        for col, (policy, run) in enumerate(runs):
            ax = axes[row][col]
            t = [p.t for p in run.points]
            ax.fill_between(
                t, [p.capacity for p in run.points], step="post", color=COLORS["capacity"], label="capacity"
            )
            ax.step(
                t,
                [p.in_service for p in run.points],
                where="post",
                color=COLORS["in_flight"],
                lw=0.7,
                label="in service",
            )
            ax.step(t, [p.limit for p in run.points], where="post", color=COLORS["limit"], lw=1.4, label="limit")
            ax.step(
                t,
                [p.ceiling or float("nan") for p in run.points],
                where="post",
                color=COLORS["ceiling"],
                lw=0.8,
                ls=":",
                label="ceiling",
            )
            refused = [r.arrived for r in run.requests if r.status != 200]
            ax.plot(refused, [ymax * 0.02] * len(refused), "|", color=COLORS["429"], ms=6, label="429")
            served = sum(1 for r in run.requests if r.status == 200)
            share = len(refused) / max(1, len(run.requests))
            ax.set_title(f"{scenario.name}, {policy}: {served:,} served, {share:.2%} 429s", fontsize=9)
            ax.set_ylim(0, ymax)
            ax.set_xlim(0, run.end)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if row == 0 and col == 0:
                ax.legend(loc="lower right", fontsize=7, ncol=5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def plot_budget(runs: Sequence[tuple[str, FleetRun]], tokens_per_minute: int, path: Path) -> Path:
    """Tokens the server admitted per second (5 s windows) and 429s per second,
    one column per run, against the budget's refill rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(5 * len(runs), 6), sharex=True, squeeze=False)
    rate = tokens_per_minute / 60
    for col, (name, run) in enumerate(runs):
        end = max((r.arrived - run.started for r in run.records), default=0.0)
        windows = [0] * (int(end // 5) + 1)
        for r in run.records:
            if r.status == 200:
                windows[max(0, int((r.arrived - run.started) // 5))] += r.tokens
        top, bottom = axes[0][col], axes[1][col]
        top.step(
            [5 * i for i in range(len(windows))], [w / 5 for w in windows], where="post", color=COLORS["in_flight"]
        )
        top.axhline(rate, color=COLORS["limit"], linestyle="--", label="budget's refill")
        top.set_title(name)
        top.set_ylabel("tokens admitted / s")
        top.legend(loc="upper right")
        seconds, refused = _rejections_per_second(run, end)
        bottom.bar(seconds, refused, width=1.0, color=COLORS["429"])
        bottom.set_ylabel("429s / s")
        bottom.set_xlabel("seconds")
    fig.suptitle(f"A fleet of 64 against a budget of {tokens_per_minute:,} tokens a minute")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class QueuePanel(NamedTuple):
    """One run against a queueing server, as curves over time."""

    title: str
    t: Sequence[float]
    knee: Sequence[int]
    in_batch: Sequence[int]
    queued: Sequence[int]
    limit: Sequence[int | None]
    latency: Sequence[tuple[float, float]]
    """(when it finished, latency / no-load) of each request served."""


def plot_queue_panels(rows: Sequence[Sequence[QueuePanel]], path: Path) -> Path:
    """Runs against servers that queue, a row per scenario: requests at the
    server, in its batch and in its queue, the knee and the limit; and each
    second's median latency against the no-load latency (right axis)."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(6.5 * columns, 2.3 * len(rows)), squeeze=False, constrained_layout=True
    )
    for r, row in enumerate(rows):
        ymax = 1.1 * max(
            max([*(q + b for q, b in zip(p.queued, p.in_batch, strict=True)), *(x or 0 for x in p.limit), 1])
            for p in row
        )
        for c, p in enumerate(row):
            ax = axes[r][c]
            ax.fill_between(p.t, p.knee, step="post", color=COLORS["capacity"], label="knee")
            at_server = [q + b for q, b in zip(p.queued, p.in_batch, strict=True)]
            ax.step(p.t, at_server, where="post", color="#7f4f24", lw=0.8, label="at server")
            ax.step(p.t, p.queued, where="post", color="#8e44ad", lw=0.7, label="queued")
            ax.step(p.t, p.in_batch, where="post", color=COLORS["in_flight"], lw=0.7, label="in batch")
            limit = [float("nan") if x is None else x for x in p.limit]
            ax.step(p.t, limit, where="post", color=COLORS["limit"], lw=1.4, label="limit")
            by_second: dict[int, list[float]] = {}
            for when, ratio in p.latency:
                by_second.setdefault(int(when), []).append(ratio)
            seconds = sorted(by_second)
            medians = [statistics.median(by_second[s]) for s in seconds]
            right = ax.twinx()
            right.plot(seconds, medians, ".", color="black", ms=2, label="median latency / no-load")
            right.axhline(2.0, color="black", lw=0.5, ls=":")
            right.set_ylim(0, max(4.0, 1.1 * max(medians, default=1.0)))
            right.tick_params(labelsize=7)
            ax.set_title(p.title, fontsize=9)
            ax.set_ylim(0, ymax)
            ax.set_xlim(0, max(p.t, default=1.0))
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if r == 0 and c == 0:
                ax.legend(loc="upper left", fontsize=7, ncol=5)
                right.legend(loc="upper right", fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def plot_queueing(scenarios: Sequence[tuple[Any, Sequence[tuple[str, Any]]]], path: Path) -> Path:
    """Simulated runs (``aimd_redis.demo.simulator``) against servers that queue."""
    from aimd_redis.demo.servers import Reference

    rows = []
    for scenario, runs in scenarios:
        no_load = Reference.of(scenario.service, scenario.batching, scenario.capacity(0.0)).no_load
        row = []
        for policy, run in runs:
            refused = sum(1 for r in run.requests if r.status != 200)
            pts = run.points
            row.append(
                QueuePanel(
                    title=f"{scenario.name}, {policy}: {len(run.requests) - refused:,} served, {refused} refused",
                    t=[p.t for p in pts],
                    knee=[p.capacity for p in pts],
                    in_batch=[p.in_service for p in pts],
                    queued=[p.queue for p in pts],
                    limit=[p.limit for p in pts],
                    latency=[(r.finished, r.latency / no_load) for r in run.requests if r.status == 200],
                )
            )
        rows.append(row)
    return plot_queue_panels(rows, path)
