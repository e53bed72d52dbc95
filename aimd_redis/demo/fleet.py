"""A fleet of worker processes calling one cold server through httpx: what
``aimd-redis demo`` and ``benchmarks/fleet.py`` run (extra ``demo``).

Each of ``processes`` spawned processes runs ``tasks`` asyncio tasks that
post chat completions until the work is done or the run is stopped. A
refused request is retried after the Retry-After it was given, as the
provider SDKs do; how the fleet holds back otherwise depends on the strategy:

- ``shared``: one loop in Redis for the whole fleet (this library; the
  configuration's ``policy`` chooses its rules);
- ``per-process``: the same loop, but each process in its own namespace, as
  if every process ran an in-process AIMD throttle;
- ``fixed``: no adaptive limit, each process capped at ``peak`` requests at
  once.

The parent samples the server and Redis five times a second, prints a line
of progress every second and returns everything the server recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx
import msgspec

from aimd_redis import AsyncThrottle, Throttle, ThrottleConfig
from aimd_redis.httpx import AsyncAimdTransport, openai_router, retry_after_seconds

if TYPE_CHECKING:
    from aimd_redis.demo.coldserver import ColdServer, Record

Strategy = Literal["shared", "per-process", "fixed"]
STRATEGIES: tuple[Strategy, ...] = ("fixed", "per-process", "shared")
PROVIDER, MODEL, DOMAIN = "cold", "cold-model", "chat"
SAMPLE_SECONDS = 0.2


@dataclass(frozen=True)
class FleetSettings:
    processes: int = 8
    tasks: int = 8
    """Asyncio tasks per process, each with one request open at a time."""
    strategy: Strategy = "shared"
    peak: int = 32
    """``max_parallel_requests`` every process registers (``fixed``: its own cap)."""
    requests: int | None = None
    """Stop once this many requests have succeeded; None runs until stopped."""
    config: ThrottleConfig = field(default_factory=ThrottleConfig)
    namespace: str = "aimd-fleet"
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    """A budget every process registers (None: none; the throttle may still
    learn the server's from its headers)."""
    max_tokens: int | None = None
    """The output limit each request sets (None: none)."""

    def __post_init__(self) -> None:
        for name in ("processes", "tasks", "peak"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests must be at least 1 or None, not {self.requests}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")

    def namespaces(self) -> list[str]:
        """The namespaces the fleet's limits live in (none for ``fixed``)."""
        if self.strategy == "fixed":
            return []
        if self.strategy == "shared":
            return [self.namespace]
        return [f"{self.namespace}-p{i}" for i in range(self.processes)]


class Sample(msgspec.Struct, frozen=True, array_like=True):
    t: float
    """Seconds since the fleet started."""
    capacity: int
    in_service: int
    limit: int | None
    """The fleet's limit: the shared one, or the sum of the per-process ones."""
    ceiling: int | None
    waiters: int
    leases: int
    served: int
    rejected: int
    queued: int = 0
    """Requests waiting in a queueing server's queue."""


class FleetRun(msgspec.Struct):
    settings: dict[str, Any]
    started: float
    """Server clock when the fleet was released."""
    samples: list[Sample]
    records: list[Record]
    marks: list[tuple[float, str]]
    """(seconds since start, what happened) for the timeline's actions."""
    exitcodes: list[int | None]
    leases_left: int
    waiters_left: int


class Control:
    """What the parent and the workers share."""

    def __init__(self, ctx: Any, requests: int | None) -> None:
        self.ready = ctx.Value("i", 0)
        self.go = ctx.Event()
        self.running = ctx.Event()
        self.running.set()
        self.stop = ctx.Event()
        self.todo = ctx.Value("q", -1 if requests is None else requests)

    def halt(self) -> None:
        """Stop the workers, waking any that wait to start or to resume."""
        self.stop.set()
        self.go.set()
        self.running.set()

    def take_job(self) -> bool:
        with self.todo.get_lock():
            if self.todo.value < 0:
                return True
            if self.todo.value == 0:
                return False
            self.todo.value -= 1
            return True


#: (seconds after the start, label, action on the server and the fleet)
Action = tuple[float, str, "Callable[[ColdServer, Control], None]"]


def pause(server: ColdServer, control: Control) -> None:
    control.running.clear()


def resume(server: ColdServer, control: Control) -> None:
    control.running.set()


def scale_to(peak: int) -> Callable[[ColdServer, Control], None]:
    def act(server: ColdServer, control: Control) -> None:
        server.set_peak(peak)

    return act


# -- the workers -------------------------------------------------------------


def _worker_main(index: int, redis_url: str, server_url: str, s: FleetSettings, control: Control) -> None:
    try:
        asyncio.run(_worker(index, redis_url, server_url, s, control))
    except BaseException:
        traceback.print_exc()
        sys.exit(1)  # the exit code is how the parent learns


async def _worker(index: int, redis_url: str, server_url: str, s: FleetSettings, control: Control) -> None:
    throttle: AsyncThrottle | None = None
    gate: asyncio.Semaphore | None = None
    transport: httpx.AsyncBaseTransport
    if s.strategy == "fixed":
        gate = asyncio.Semaphore(s.peak)
        transport = httpx.AsyncHTTPTransport()
    else:
        namespace = s.namespaces()[0 if s.strategy == "shared" else index]
        throttle = AsyncThrottle(redis_url, namespace=namespace, config=s.config)
        await throttle.register(
            provider_name=PROVIDER,
            model_id=MODEL,
            alias="fleet",
            max_parallel_requests=s.peak,
            requests_per_minute=s.requests_per_minute,
            tokens_per_minute=s.tokens_per_minute,
        )
        transport = AsyncAimdTransport(throttle, router=openai_router(PROVIDER))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=server_url, timeout=60) as client:
            with control.ready.get_lock():
                control.ready.value += 1
            await asyncio.to_thread(control.go.wait)
            await asyncio.gather(*(_task(client, gate, control, s.max_tokens) for _ in range(s.tasks)))
    finally:
        if throttle is not None:
            await throttle.aclose()


async def _task(
    client: httpx.AsyncClient, gate: asyncio.Semaphore | None, control: Control, max_tokens: int | None
) -> None:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    while not control.stop.is_set():
        await asyncio.to_thread(control.running.wait)  # while the fleet is idle
        if control.stop.is_set() or not control.take_job():
            return
        while not control.stop.is_set():  # one job: retried until it succeeds
            try:
                async with gate if gate is not None else contextlib.nullcontext():
                    response = await client.post("/v1/chat/completions", json=body)
            except httpx.TransportError:
                await asyncio.sleep(0.1)
                continue
            if response.status_code == 200:
                break
            if response.status_code == 429:
                # The request that was refused waits what it was told; a
                # throttle decides what the rest of the fleet does.
                wait = retry_after_seconds(response.headers)
                await asyncio.sleep(wait if wait is not None else (1.0 if gate is not None else 0.0))


# -- the parent --------------------------------------------------------------


class _Observer:
    """Reads the fleet's limits from Redis without changing anything."""

    def __init__(self, redis_url: str, namespaces: Sequence[str]) -> None:
        self._throttles = [Throttle(redis_url, namespace=ns) for ns in namespaces]

    def read(self) -> tuple[int | None, int | None, int, int]:
        """(limit, ceiling, waiters, leases), summed over the namespaces."""
        states = [t.domain_state(PROVIDER, MODEL, DOMAIN) for t in self._throttles]
        found = [st for st in states if st is not None]
        if not found:
            return None, None, 0, 0
        # A sum of per-process ceilings means nothing: a ceiling is shown for one loop only.
        ceiling = found[0].rate_limit_ceiling or None if len(self._throttles) == 1 else None
        return (
            sum(st.current_limit for st in found),
            ceiling,
            sum(st.waiters for st in found),
            sum(st.in_flight for st in found),
        )

    def close(self) -> None:
        for t in self._throttles:
            t.close()


Progress = Callable[[Sample], None]


def run_fleet(
    redis_url: str,
    server: ColdServer,
    s: FleetSettings,
    *,
    seconds: float | None = None,
    timeline: Sequence[Action] = (),
    progress: Progress | None = None,
    on_mark: Callable[[float, str], None] | None = None,
) -> FleetRun:
    """Run the fleet until its requests are done (or ``seconds`` have passed),
    applying the timeline's actions on the way."""
    if s.requests is None and seconds is None:
        raise ValueError("give the fleet a number of requests or a duration")
    ctx = multiprocessing.get_context("spawn")
    control = Control(ctx, s.requests)
    procs = [
        ctx.Process(target=_worker_main, args=(i, redis_url, server.url, s, control), name=f"fleet-{i}")
        for i in range(s.processes)
    ]
    for p in procs:
        p.start()
    observer = _Observer(redis_url, s.namespaces())
    try:
        while control.ready.value < s.processes:
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError("a worker process failed while starting; see its traceback above")
            time.sleep(0.05)
        started = server.clock()
        control.go.set()
        samples, marks = _watch(server, observer, control, procs, started, seconds, timeline, progress, on_mark)
    finally:
        control.halt()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        observer.close()
    records = [r for r in server.records() if r.arrived >= started]
    return FleetRun(
        settings={
            "processes": s.processes,
            "tasks": s.tasks,
            "strategy": s.strategy,
            "peak": s.peak,
            "requests": s.requests,
            "rampup_seconds": s.config.rampup_seconds,
            "policy": s.config.policy,
        },
        started=started,
        samples=samples,
        records=records,
        marks=marks,
        exitcodes=[p.exitcode for p in procs],
        leases_left=samples[-1].leases,
        waiters_left=samples[-1].waiters,
    )


def _watch(
    server: ColdServer,
    observer: _Observer,
    control: Control,
    procs: list[Any],
    started: float,
    seconds: float | None,
    timeline: Sequence[Action],
    progress: Progress | None,
    on_mark: Callable[[float, str], None] | None,
) -> tuple[list[Sample], list[tuple[float, str]]]:
    pending = sorted(timeline, key=lambda a: a[0])
    samples: list[Sample] = []
    marks: list[tuple[float, str]] = []
    next_print = 1.0

    def sample() -> Sample:
        st = server.stats()
        limit, ceiling, waiters, leases = observer.read()
        t = st.elapsed - started
        x = Sample(t, st.capacity, st.in_service, limit, ceiling, waiters, leases, st.served, st.rejected, st.queued)
        samples.append(x)
        return x

    while any(p.is_alive() for p in procs):
        t = server.clock() - started
        while pending and pending[0][0] <= t:
            _at, label, act = pending.pop(0)
            act(server, control)
            marks.append((t, label))
            if on_mark is not None:
                on_mark(t, label)
        if seconds is not None and t >= seconds:
            control.halt()
        x = sample()
        if progress is not None and x.t >= next_print:
            progress(x)
            next_print += 1.0
        time.sleep(SAMPLE_SECONDS)
    sample()  # the fleet has gone: how it left things
    return samples, marks


# -- what a run shows ----------------------------------------------------------


class Summary(msgspec.Struct, frozen=True):
    strategy: str
    shape: str
    requests: int
    served: int
    rejected: int
    rejected_rate: float
    warmup_requests: int
    warmup_rejected: int
    seconds: float
    """From the start to the last request served."""
    goodput: float
    """Requests served per second over ``seconds``."""
    oracle: float
    """What the server could have served while the fleet had work: capacity / service time, integrated."""
    max_concurrency: int
    time_to_peak: float | None
    """When the server first served its full peak at once."""
    leases_left: int
    waiters_left: int
    failed_workers: int

    @property
    def warmup_rate(self) -> float:
        return self.warmup_rejected / self.warmup_requests if self.warmup_requests else 0.0

    @property
    def oracle_share(self) -> float:
        return self.served / self.oracle if self.oracle else 0.0


def summarize(run: FleetRun, *, warmup_seconds: float, service_seconds: float, peak: int) -> Summary:
    """``warmup_seconds``, ``service_seconds`` and ``peak`` are the server's."""
    records = run.records
    served = [r for r in records if r.status == 200]
    rejected = sum(1 for r in records if r.status == 429)
    end = max((r.finished for r in served), default=run.started) - run.started
    warmup = [r for r in records if r.arrived - run.started < warmup_seconds]
    oracle = 0.0
    for a, b in itertools.pairwise(run.samples):
        if a.t < end and a.in_service + a.waiters > 0:  # time the fleet had work (not idle)
            oracle += a.capacity * (min(b.t, end) - a.t) / service_seconds
    full = next((r.arrived - run.started for r in served if r.concurrency >= peak), None)
    s = run.settings
    return Summary(
        strategy=str(s["strategy"]),
        shape=f"{s['processes']}x{s['tasks']}",
        requests=len(records),
        served=len(served),
        rejected=rejected,
        rejected_rate=rejected / len(records) if records else 0.0,
        warmup_requests=len(warmup),
        warmup_rejected=sum(1 for r in warmup if r.status == 429),
        seconds=end,
        goodput=len(served) / end if end > 0 else 0.0,
        oracle=oracle,
        max_concurrency=max((r.concurrency for r in records), default=0),
        time_to_peak=full,
        leases_left=run.leases_left,
        waiters_left=run.waiters_left,
        failed_workers=sum(1 for code in run.exitcodes if code != 0),
    )


def summary_table(rows: Sequence[tuple[str, Summary]]) -> str:
    """One column per run."""
    lines: list[tuple[str, Callable[[Summary], str]]] = [
        ("processes x tasks", lambda m: m.shape),
        ("requests sent", lambda m: f"{m.requests:,}"),
        ("served", lambda m: f"{m.served:,}"),
        ("429s", lambda m: f"{m.rejected:,} ({m.rejected_rate:.1%})"),
        ("429s in warm-up", lambda m: f"{m.warmup_rejected:,} ({m.warmup_rate:.1%})"),
        ("makespan", lambda m: f"{m.seconds:.1f}s"),
        ("goodput", lambda m: f"{m.goodput:.1f}/s ({m.oracle_share:.0%} of capacity)"),
        ("max concurrency seen", lambda m: str(m.max_concurrency)),
        ("time to server peak", lambda m: "-" if m.time_to_peak is None else f"{m.time_to_peak:.1f}s"),
        ("leases / waiters left", lambda m: f"{m.leases_left} / {m.waiters_left}"),
        ("failed workers", lambda m: str(m.failed_workers)),
    ]
    table = [["", *(name for name, _ in rows)]]
    table += [[label, *(cell(m) for _, m in rows)] for label, cell in lines]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in table
    )
