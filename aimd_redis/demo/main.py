"""``aimd-redis demo``: a fleet meets a cold inference server, in about a minute.

Eight processes x eight asyncio tasks call a local OpenAI-shaped server
through the httpx transport, sharing one limit in Redis. The run has three
acts, each a promise of the shared loop:

1. Cold start. The server warms from 1 to 16 requests at once over 8 s; the
   fleet's ramp (1 to 32 over 20 s) stays under it, then the loop finds 16.
2. Scale-out. The server is raised to 24. The adaptive loop's next probe
   finds the room and climbs to it (the classic loop waits until no 429
   has confirmed its ceiling for ``ceiling_ttl``).
3. Idle and back. The fleet pauses past ``idle_ttl``: Redis forgets the
   domain and the server scales to zero. The returning fleet ramps again
   instead of bursting into the cold server.

The fleet uses ``policy="adaptive"``, the one ``benchmarks/control.py`` and
``benchmarks/fleet.py`` show winning; ``--policy classic`` runs the brief's.

Times are scaled by ``--time-scale`` (the tests run it at a quarter).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from aimd_redis.config import ThrottleConfig
from aimd_redis.demo.embedded import EmbeddedRedis

if TYPE_CHECKING:  # the demo extra's packages are imported when the demo runs
    from aimd_redis.demo.coldserver import ColdServer, ServerSettings
    from aimd_redis.demo.fleet import FleetRun, Sample


@dataclass(frozen=True)
class DemoSettings:
    processes: int = 8
    tasks: int = 8
    peak: int = 32
    """``max_parallel_requests`` the fleet registers."""
    server_peak: int = 16
    scaled_peak: int = 24
    """The server's peak after the scale-out."""
    warmup_seconds: float = 8.0
    rampup_seconds: float = 20.0
    service_seconds: float = 0.25
    time_scale: float = 1.0
    policy: Literal["classic", "adaptive"] = "adaptive"
    plot: Path | None = Path("aimd-redis-demo.png")

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be above 0, not {self.time_scale}")
        if self.policy not in ("classic", "adaptive"):
            raise ValueError(f"policy must be classic or adaptive, not {self.policy!r}")

    def seconds(self, at: float) -> float:
        return at * self.time_scale


WIDTHS = (6, 8, 5, 7, 9, 7, 7, 5, 9)
# When each act begins, at time scale 1.
SCALE_OUT_AT, IDLE_AT, BACK_AT, END_AT = 20.0, 34.0, 44.0, 62.0


def _config(d: DemoSettings) -> ThrottleConfig:
    # Short TTLs so that a minute shows what takes minutes in production. The
    # classic loop needs a short ceiling ttl to see the scale-out at all.
    return ThrottleConfig(
        policy=d.policy,
        rampup_seconds=d.seconds(d.rampup_seconds),
        cooldown_seconds=d.seconds(0.5),
        ceiling_ttl_seconds=d.seconds(6.0) if d.policy == "classic" else 300.0,
        lease_ttl_seconds=d.seconds(5.0),
        idle_ttl_seconds=d.seconds(5.0),
        wait_poll_seconds=d.seconds(2.0),
    )


def _server(d: DemoSettings) -> ServerSettings:
    from aimd_redis.demo.coldserver import ServerSettings

    return ServerSettings(
        peak=d.server_peak,
        warmup_seconds=d.seconds(d.warmup_seconds),
        service_seconds=d.seconds(d.service_seconds),
        retry_after_seconds=d.seconds(0.5),
        cold_after_seconds=d.seconds(3.0),
    )


def run(url: str | None, d: DemoSettings) -> int:
    try:
        from aimd_redis.demo.coldserver import ColdServer
    except ImportError as exc:
        missing = f"the demo needs the demo extra ({exc.name} is missing)"
        raise SystemExit(f"{missing}: pip install 'aimd-redis[demo]'") from None
    embedded = None
    if url is None:
        embedded = EmbeddedRedis(allow_fake=True)
        url = embedded.url
        print(f"Redis: a private {embedded.kind} at {url} (pass --url to use your own)")
    else:
        print(f"Redis: {url}")
    try:
        with ColdServer(_server(d)) as server:
            return _run(url, server, d)
    finally:
        if embedded is not None:
            embedded.close()


def _run(url: str, server: ColdServer, d: DemoSettings) -> int:
    from aimd_redis.demo.fleet import FleetSettings, pause, resume, run_fleet, scale_to, summarize, summary_table

    s = server.settings
    fleet = FleetSettings(
        processes=d.processes,
        tasks=d.tasks,
        strategy="shared",
        peak=d.peak,
        config=_config(d),
        namespace=f"aimd-demo-{int(time.time())}",
    )
    print(
        f"Cold server at {server.url}: capacity 1 -> {s.peak} over {s.warmup_seconds:g}s once traffic arrives, "
        f"{s.service_seconds * 1000:.0f} ms a request, 429 above capacity"
    )
    print(
        f"Fleet: {d.processes} processes x {d.tasks} tasks, one limit in Redis (namespace {fleet.namespace!r}): "
        f"policy {d.policy}, peak {d.peak}, ramp {fleet.config.rampup_seconds:g}s, "
        f"ceiling ttl {fleet.config.ceiling_ttl_seconds:g}s, idle ttl {fleet.config.idle_ttl_seconds:g}s\n"
    )
    timeline = [
        (d.seconds(SCALE_OUT_AT), f"server scaled out to {d.scaled_peak}", scale_to(d.scaled_peak)),
        (d.seconds(IDLE_AT), "fleet idle", pause),
        (d.seconds(BACK_AT), "fleet back", resume),
    ]
    columns = ("t", "capacity", "limit", "ceiling", "in flight", "waiters", "served", "429s", "goodput/s")
    print(" ".join(f"{c:>{w}}" for c, w in zip(columns, WIDTHS, strict=True)))

    last: list[Sample] = []

    def progress(x: Sample) -> None:
        limit = "-" if x.limit is None else str(x.limit)
        rate = (x.served - last[0].served) / (x.t - last[0].t) if last else x.served / max(x.t, 1e-9)
        last[:] = [x]
        cells = (f"{x.t:.1f}", x.capacity, limit, x.ceiling or "-", x.in_service, x.waiters, x.served, x.rejected)
        print(" ".join(f"{c:>{w}}" for c, w in zip((*cells, f"{rate:.0f}"), WIDTHS, strict=True)), flush=True)

    def mark(t: float, label: str) -> None:
        print(f"{t:6.1f} -- {label}", flush=True)

    end = d.seconds(END_AT)
    result = run_fleet(url, server, fleet, seconds=end, timeline=timeline, progress=progress, on_mark=mark)
    summary = summarize(result, warmup_seconds=s.warmup_seconds, service_seconds=s.service_seconds, peak=s.peak)
    print("\nSummary")
    print(summary_table([(f"shared limit, {d.policy}", summary)]))
    print("\nWhat happened")
    for line in story(result, d):
        print(f"  {line}")
    if d.plot is not None:
        from aimd_redis.demo.plot import plot_run

        title = (
            f"{d.processes} processes x {d.tasks} tasks sharing one limit in Redis ({d.policy} policy), "
            "against a cold server"
        )
        print(f"\nPlot: {plot_run(result, d.plot, title=title, peak=d.peak)}")
    healthy = summary.failed_workers == 0 and summary.leases_left == 0 and summary.max_concurrency <= d.peak
    return 0 if healthy else 1


def story(run: FleetRun, d: DemoSettings) -> list[str]:
    """The acts of the run, read off its samples and the server's records."""
    lines: list[str] = []
    back, warmup = d.seconds(BACK_AT), d.seconds(d.warmup_seconds)
    refusals = [r for r in run.records if r.status == 429]
    rejected = [r.arrived - run.started for r in refusals]
    cold = sum(1 for t in rejected if t < warmup)
    first = refusals[0] if refusals else None
    found = "none at all"
    if first is not None:
        at = first.arrived - run.started
        found = f"the first at {at:.1f}s, {first.concurrency} requests against capacity {first.capacity}"
    lines.append(f"cold start: {cold} 429s while the server warmed up (first {warmup:g}s); {found}")
    scale_out, idle = d.seconds(SCALE_OUT_AT), d.seconds(IDLE_AT)
    # Under the adaptive policy a ceiling is dropped when a probe holds, which is how it finds the room.
    forgotten = _ceiling_forgotten(run.samples, after=scale_out) if d.policy == "classic" else None
    act = [x for x in run.samples if scale_out <= x.t < idle]
    top = max((x.limit or 0 for x in act), default=0)
    reached = next((x.t for x in act if (x.limit or 0) >= d.scaled_peak), None)
    lines.append(
        "scale-out: "
        + (f"the old ceiling was forgotten at {forgotten:.1f}s; " if forgotten is not None else "")
        + (
            f"the limit reached the new capacity {d.scaled_peak} at {reached:.1f}s, "
            f"{reached - scale_out:.1f}s after it grew"
            if reached is not None
            else f"the limit reached {top} of the new capacity {d.scaled_peak}"
        )
    )
    gone = next((x.t for x in run.samples if d.seconds(IDLE_AT) < x.t < back and x.limit is None), None)
    rejected_back = sum(1 for t in rejected if back <= t < back + warmup)
    lines.append(
        "idle: "
        + (f"Redis forgot the domain at {gone:.1f}s" if gone is not None else "the domain did not expire")
        + f"; after the fleet came back the ramp restarted, and the cold server answered {rejected_back} 429s"
        f" while it warmed up again"
    )
    return lines


def _ceiling_forgotten(samples: list[Sample], *, after: float) -> float | None:
    for prev, x in itertools.pairwise(samples):
        if x.t >= after and prev.ceiling and not x.ceiling and x.limit is not None:
            return x.t
    return None
