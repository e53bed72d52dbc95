"""Fair share across groups in the simulator: the scenarios, and what a run
shows per group (share of the grants, busy slots, waits).

Every scenario holds the domain at a fixed limit of 8 (the registered peak,
no ramp, a server that takes whatever the limit lets through), so the only
thing that decides who gets a slot is the queue. ``benchmarks/fairness.py``
runs them against their targets; ``tests/test_fair.py`` guards the 3:1 share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import msgspec

from aimd_redis.demo.simulator import Granted, Group, Scenario, SimRun, quantile, steps, uniform

LIMIT = 8
SERVICE = 0.25
#: Grants and busy slots count from here on (every task has asked by then).
WARMUP = 2.0
#: The interactive group's arrival, once the batch group fills the queue.
INTERACTIVE_START = 5.0


def scenario(name: str, about: str, groups: Sequence[Group], seconds: float = 60.0) -> Scenario:
    """A domain of limit ``LIMIT`` shared by ``groups``."""
    return Scenario(
        name=name,
        about=about,
        seconds=seconds,
        capacity=steps(10**9),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        processes=max(g.first + g.processes for g in groups),
        peak=LIMIT,
        groups=tuple(groups),
    )


def split(weights: tuple[float, float], seconds: float = 60.0) -> Scenario:
    """Groups "a" and "b" of ``weights``, 2 processes each, 12 tasks a process."""
    wa, wb = weights
    return scenario(
        f"fair-{wa:g}to{wb:g}",
        f"a (weight {wa:g}) on 2 processes, b ({wb:g}) on 2 others, 12 tasks each; limit {LIMIT}",
        [Group("a", wa, processes=2, tasks=12), Group("b", wb, processes=2, tasks=12, first=2)],
        seconds,
    )


def mixed(weights: tuple[float, float], seconds: float = 60.0) -> Scenario:
    """Groups "a" and "b" of ``weights`` in each of 4 processes, 6 tasks of each a process."""
    wa, wb = weights
    return scenario(
        f"fair-{wa:g}to{wb:g}-mixed",
        f"a (weight {wa:g}) and b ({wb:g}) in each of 4 processes, 6 tasks of each; limit {LIMIT}",
        [Group("a", wa, processes=4, tasks=6), Group("b", wb, processes=4, tasks=6)],
        seconds,
    )


ALONE = scenario(
    "fair-alone",
    f"group a (weight 3) alone, 4 processes x 12 tasks; limit {LIMIT}",
    [Group("a", 3.0, processes=4, tasks=12)],
)
LIGHT = scenario(
    "fair-light",
    f"a (weight 1) floods from 2 processes x 12 tasks; b (weight 3) has 1 task, 1 s apart; limit {LIMIT}",
    [Group("a", 1.0, processes=2, tasks=12), Group("b", 3.0, processes=1, tasks=1, first=2, think=1.0)],
)

BATCH = Group("batch", 1.0, processes=4, tasks=16, service=uniform(1.0))
"""A batch group flooding the queue with 1 s requests."""


def interactive(weight: float, *, batch: bool = True, reserved: float = 0.0, seconds: float = 300.0) -> Scenario:
    """An interactive group (2 tasks, 0.2 s requests about 1 s apart, from
    ``INTERACTIVE_START``) of ``weight`` and a ``reserved`` share of the
    limit, with the batch group flooding or alone."""
    group = Group(
        "interactive",
        weight,
        processes=1,
        tasks=2,
        first=BATCH.processes,
        start=INTERACTIVE_START,
        think=1.0,
        service=uniform(0.2),
    )
    load = "behind a batch group (4 x 16 tasks, 1 s requests)" if batch else "alone"
    held = f", {reserved:g} of the limit reserved" if reserved else ""
    s = scenario(
        f"interactive-w{weight:g}" + (f"-r{reserved:g}" if reserved else "") + ("" if batch else "-alone"),
        f"interactive (weight {weight:g}{held}; 2 tasks, 0.2 s requests 1 s apart) {load}; limit {LIMIT}",
        [BATCH, group] if batch else [group],
        seconds,
    )
    return replace(s, config={"reserved": {group.name: reserved}}) if reserved else s


class GroupFigures(msgspec.Struct, frozen=True):
    group: str
    """The group's name ("default" for none)."""
    grants: int
    share: float
    """Its share of the grants."""
    busy: float
    """Slots it kept busy, on average (requests at the server)."""
    wait_p50: float
    wait_p99: float
    wait_max: float
    """Seconds from asking to the grant."""


class FairFigures(msgspec.Struct, frozen=True):
    scenario: str
    window: tuple[float, float]
    busy_share: float
    """Slot-seconds in service / (limit x window)."""
    groups: list[GroupFigures]

    def of(self, group: str) -> GroupFigures:
        return next(g for g in self.groups if g.group == group)


#: (group, start, end): a slot held, or a request in service.
Interval = tuple[str, float, float]


def _name(group: str | None) -> str:
    return "default" if group is None else group


def fair_figures(run: SimRun, s: Scenario, start: float = WARMUP) -> FairFigures:
    """Per-group figures of a simulated run over [start, end of the run)."""
    names = sorted({_name(g.name) for g in s.groups} or {"default"})
    return group_figures(
        s.name,
        names,
        [Granted(g.at, _name(g.group), g.waited) for g in run.grants],
        served(run),
        (start, run.end),
        s.peak,
    )


def served(run: SimRun) -> list[Interval]:
    """The requests served, as (group, start, end) at the server."""
    return [(_name(r.group), r.started, r.finished) for r in run.requests if r.status == 200]


def group_figures(
    scenario: str,
    names: Sequence[str],
    grants: Sequence[Granted],
    busy: Sequence[Interval],
    window: tuple[float, float],
    limit: int,
) -> FairFigures:
    """Per-group figures over ``window``: grants, the slots they kept busy
    (of ``limit``), and waits (a grant counts in the window it came in)."""
    a, b = window
    mine = {n: [g.waited for g in grants if a <= g.at < b and g.group == n] for n in names}
    total = sum(len(v) for v in mine.values())
    held = dict.fromkeys(names, 0.0)
    for group, t0, t1 in busy:
        if group in held:
            held[group] += max(0.0, min(t1, b) - max(t0, a))
    groups = [
        GroupFigures(
            group=n,
            grants=len(waits),
            share=len(waits) / total if total else 0.0,
            busy=held[n] / (b - a),
            wait_p50=quantile(waits, 0.5),
            wait_p99=quantile(waits, 0.99),
            wait_max=max(waits, default=math.nan),
        )
        for n, waits in mine.items()
    ]
    return FairFigures(scenario=scenario, window=window, busy_share=sum(held.values()) / (b - a) / limit, groups=groups)


def concurrency(busy: Sequence[Interval], end: float, step: float = 0.5) -> dict[str, list[float]]:
    """Per group, the mean slots busy over [i x step, (i + 1) x step), for plots."""
    bins = int(end / step) + 1
    out: dict[str, list[float]] = {}
    for group, t0, t1 in busy:
        load = out.setdefault(group, [0.0] * bins)
        t = max(0.0, t0)
        while t < t1:
            i = int(t / step)
            if i >= bins:
                break
            edge = min(t1, (i + 1) * step)
            load[i] += (edge - t) / step
            t = edge
    return out
