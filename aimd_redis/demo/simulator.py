"""A discrete-event simulation of a fleet calling a model server through the
shared loop, on the real Lua scripts and a real Redis, with injected time.

Minutes of simulated time take seconds: nothing sleeps. Every acquire,
release and hand-over is a real script call with ``now`` set to the
simulated clock, so the loop under test is the one that ships; only the
callers, the network and the server are modelled:

- the server serves up to ``capacity(t)`` requests at once and refuses the
  rest at arrival (429, or 503/529 for an "overloaded" server), with or
  without Retry-After; it may also refuse at random, or at given moments;
- P processes x C tasks each loop: acquire a slot (queueing in Redis as the
  client does: hand-overs arrive on the wake channel, re-checks every
  ``wait_poll_seconds``), send, report the outcome, and retry a refused
  request after its Retry-After;
- one-way network latency, the wake-up latency of a hand-over, and an
  optional lag between a response reaching the caller and the server freeing
  its slot (the release/refusal race of servers that clean up after replying);
- or a server that queues instead of refusing (``servers.py``: continuous
  batching slower with the batch, a FIFO queue, 503 past a queue cap,
  streamed first tokens, slow spells), judged by ``queue_figures``;
- optionally, request and token budgets per minute on the server (token
  buckets, as hosted APIs keep them, charged at admission; a request that does
  not fit is refused with a Retry-After of when it would), which the fleet
  registers, learns from the rate-limit headers of each answer, or ignores;
- optionally, tasks in groups with weights (``Scenario.groups``: which
  processes run each group's tasks, from when, with what pause between
  requests and what service time), for fair share (``fair.py``).

The callers reach Redis through a client model (``CLIENTS``, the only
places that speak the core's calls and replies): ``AgentClient``, the
process agent running the agent's own decisions (``process_queue.py``), by
default; or ``TaskClient``, the client before it, task by task
(``Simulation(..., fleet=...)``).

``benchmarks/control.py`` runs every scenario under both policies;
``benchmarks/fleet_cost.py`` counts what large fleets cost Redis.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import msgspec

from aimd_redis._provider import Heard
from aimd_redis._sync.runner import ScriptRunner
from aimd_redis.config import ThrottleConfig
from aimd_redis.core import Call, Core, as_str, check_now
from aimd_redis.demo.bucket import Bucket
from aimd_redis.demo.servers import Batching, Queue, Reference, Slow
from aimd_redis.process_queue import Batch, ProcessQueue, Waiter
from aimd_redis.replies import BatchReply, Wake
from aimd_redis.structs import DomainState, Grant, LeaseRef, Queued

PROVIDER, MODEL, DOMAIN = "sim", "model", "chat"
#: Simulated time starts here (script times must be positive and plausible).
EPOCH = 1_000_000.0
SAMPLE_SECONDS = 0.1

Capacity = Callable[[float], int]
ServiceTime = Callable[[random.Random], float]


def warming(peak: int, seconds: float, start: int = 1) -> Capacity:
    """Capacity that grows linearly from ``start`` to ``peak`` over ``seconds``."""

    def capacity(t: float) -> int:
        if t >= seconds:
            return peak
        return min(peak, start + math.floor((peak - start) * t / seconds))

    return capacity


def steps(first: int, *changes: tuple[float, int]) -> Capacity:
    """Capacity ``first``, then each (time, capacity) from that time on."""

    def capacity(t: float) -> int:
        value = first
        for at, cap in changes:
            if t >= at:
                value = cap
        return value

    return capacity


def uniform(mean: float, spread: float = 0.2) -> ServiceTime:
    """Service times uniform within mean +- spread (the cold server's)."""
    return lambda rng: mean * rng.uniform(1 - spread, 1 + spread)


def lognormal(median: float, sigma: float, cap: float) -> ServiceTime:
    """Heavy-tailed service times (streamed completions of very different lengths)."""
    return lambda rng: min(cap, median * math.exp(sigma * rng.gauss(0, 1)))


def pareto(least: float, alpha: float, cap: float) -> ServiceTime:
    """Service times of at least ``least``, Pareto-tailed with index ``alpha`` (lower: heavier)."""
    return lambda rng: min(cap, least * rng.paretovariate(alpha))


@dataclass(frozen=True)
class Group:
    """Tasks of one group of a fair-share scenario: ``tasks`` on each of
    ``processes`` processes from ``first`` on (groups may share processes)."""

    name: str | None
    weight: float = 1.0
    processes: int = 1
    tasks: int = 8
    first: int = 0
    """The first process of the group's (``p<first>``)."""
    start: float = 0.0
    """When its tasks start."""
    think: float = 0.0
    """Mean pause (exponential) between a task's requests: 0 sends the next at once."""
    service: ServiceTime | None = None
    """Its requests' service time (None: the scenario's)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    seconds: float
    capacity: Capacity
    service: ServiceTime
    mean_service: float
    processes: int = 8
    tasks: int = 8
    peak: int = 32
    """``max_parallel_requests`` the fleet registers."""
    rampup_seconds: float = 0.0
    retry_after: float | None = 0.5
    """What a refusal asks the caller to wait; None sends no Retry-After."""
    refusal_status: int = 429
    """429, or 503/529 for a server that says "overloaded" (the callers report
    those as rate-limited, as a client configured for them does)."""
    random_refusals: float = 0.0
    """Share of requests within capacity refused anyway (a quota, not capacity)."""
    forced: tuple[tuple[float, float | None], ...] = ()
    """(time, Retry-After): the first request arriving from that time on is refused."""
    release_lag: float = 0.0
    """The server frees a slot this long after the caller has the response."""
    scale: tuple[tuple[float, int], ...] = ()
    """(time, processes): the fleet grows to that many processes."""
    requests: int | None = None
    """Stop once this many requests were served (as ``benchmarks/fleet.py`` does)."""
    steady: tuple[float, float] | None = None
    """A window in which capacity is stable, for the steady-state figures."""
    goal: float = 0.9
    """The share of capacity the adaptive policy should reach in the steady window."""
    warmup: float = 0.0
    """The server's warm-up (its 429s are counted apart)."""
    step_up: float | None = None
    """When capacity steps up, for the time to reach 90% of it."""
    config: dict[str, Any] = field(default_factory=dict)
    """ThrottleConfig settings beyond the policy and the ramp."""
    seed: int = 1
    server_rpm: int | None = None
    """The server's request budget per minute (None: none)."""
    server_tpm: int | None = None
    """The server's token budget per minute (None: none)."""
    budget: Literal["registered", "learned", "ignored"] = "ignored"
    """How the fleet knows the server's budget: registered with it, learned
    from the rate-limit headers of the answers, or not at all (the
    concurrency loop alone, learning only from 429s)."""
    prompt_tokens: int = 400
    max_tokens: int = 400
    """Each request's prompt and output limit: its estimate is their sum; the
    answer's length is between half and all of max_tokens."""
    estimate: int | None = None
    """What the fleet reserves per request instead (a request that sets no
    output limit is estimated low)."""
    batching: Batching | None = None
    """A server that queues instead of refusing (``servers.py``): ``capacity``
    is then its knee (the batch), ``service`` a request's own work."""
    count_entries: bool = False
    """Sample the waiter entries Redis holds (one more command per sample)."""
    start_spread: float = 0.01
    """Tasks start at random within this many seconds."""
    groups: tuple[Group, ...] = ()
    """Tasks of groups (fair share), instead of ``processes`` x ``tasks`` without a group."""


@dataclass(frozen=True)
class Latency:
    network: float = 0.0005
    """One way, caller <-> server."""
    wake: float = 0.0003
    """From the release that hands a slot over to the woken caller acting on it."""


class Request(msgspec.Struct, array_like=True):
    arrived: float
    finished: float
    status: int
    concurrency: int
    """Requests in service counting this one, had it been admitted."""
    capacity: int
    tokens: int = 0
    """What the server charged an admitted request."""
    queued: float = 0.0
    """Seconds it waited in a queueing server's queue before it was served."""
    first_byte: float | None = None
    """A streamed answer's first token, in seconds after it arrived (None: not streamed)."""
    group: str | None = None
    """The group of the task that sent it."""

    @property
    def started(self) -> float:
        """When the server began to serve it."""
        return self.arrived + self.queued

    @property
    def latency(self) -> float:
        return self.finished - self.arrived

    @property
    def over_capacity(self) -> bool:
        """Refused because the fleet sent more than the server could take
        (not a random or forced refusal)."""
        return self.status != 200 and self.concurrency > self.capacity


class Point(msgspec.Struct, array_like=True):
    t: float
    capacity: int
    in_service: int
    limit: int
    ceiling: int
    waiters: int
    tasks: int
    queue: int = 0
    """Requests waiting in a queueing server's queue."""


class Granted(msgspec.Struct, array_like=True):
    """A slot granted to a task."""

    at: float
    group: str | None
    waited: float
    """Seconds from the task's ask to its grant."""


class SimRun(msgspec.Struct):
    scenario: str
    policy: str
    end: float
    """Simulated seconds the run lasted."""
    requests: list[Request]
    points: list[Point]
    script_calls: int
    waiter_entries: list[int] = []
    """Waiter entries in Redis at each sample (with ``Scenario.count_entries``)."""
    grants: list[Granted] = []


class _Task:
    __slots__ = (
        "arrived",
        "asked",
        "at_server",
        "call",
        "granted_at",
        "group",
        "job_started",
        "process",
        "queued",
        "recheck",
        "ref",
        "token",
        "ttfb",
        "used",
    )

    def __init__(self, process: str, group: Group | None = None) -> None:
        self.process = process
        self.group = group
        self.token = 0  # invalidates a scheduled re-check once the task has moved on
        self.queued = False
        self.recheck = False
        self.call: Call | None = None
        self.ref: LeaseRef | None = None
        self.job_started = 0.0
        self.asked = 0.0  # when it last asked for a slot
        self.granted_at: float | None = None
        self.used = 0
        self.ttfb: float | None = None  # a streamed answer's first byte, as the caller measures it
        self.arrived = 0.0  # at a queueing server
        self.at_server = 0  # requests there when it arrived, itself counted


def _group_name(task: _Task) -> str | None:
    return None if task.group is None else task.group.name


def _group_of(task: _Task) -> tuple[str | None, float]:
    """The group and weight a task asks with."""
    return (None, 1.0) if task.group is None else (task.group.name, task.group.weight)


class FleetClient(Protocol):
    """How the simulated fleet's processes talk to Redis (``AgentClient``, ``TaskClient``)."""

    def reset(self) -> None: ...
    def acquire(self, task: _Task, tokens: int) -> None: ...
    def release(
        self, task: _Task, outcome: str, retry_after: float | None, tokens: int | None, heard: Heard | None
    ) -> None: ...
    def waiter_entries(self) -> int: ...
    def close(self) -> None: ...


class _Client:
    """What every client model shares: the model's keys in Redis, and the
    processes' wake channels, read after each script call."""

    def __init__(self, sim: Simulation, namespace: str) -> None:
        self.sim = sim
        self.core = Core(sim.config, namespace)
        self.keys = self.core.keys(PROVIDER, MODEL)
        self._pubsub = sim.client.pubsub()
        self._pubsub.psubscribe(self.keys.wake_prefix + "*")
        self._pubsub.get_message(timeout=5)  # the subscription's confirmation

    def reset(self) -> None:
        """Start from an empty model, registered with the scenario's peak (and budgets if registered)."""
        keys, s = self.keys, self.sim.s
        self.sim.client.delete(keys.cap, keys.index, keys.events, keys.budget)
        self.sim.client.delete(keys.domain(DOMAIN), keys.leases(DOMAIN), keys.tokens(DOMAIN), *keys.queue(DOMAIN))
        rpm, tpm = (s.server_rpm, s.server_tpm) if s.budget == "registered" else (None, None)
        self.sim.script(self.core.register_call(PROVIDER, MODEL, "sim", s.peak, EPOCH, (), rpm, tpm))

    def waiter_entries(self) -> int:
        """Waiters Redis holds for the domain."""
        return int(self.sim.client.zcard(self.keys.queue(DOMAIN)[0]))

    def close(self) -> None:
        self._pubsub.close()

    def _drain_wakeups(self) -> None:
        """Hand-overs and cooldown notices the last script published, read up
        to a PING so that none is left in flight."""
        if self.sim.waiting == 0:
            return
        self._pubsub.ping()
        while True:
            message = self._pubsub.get_message(timeout=5)
            if message is None:
                raise RuntimeError("the wake-up channel went silent")
            if message["type"] == "pong":
                return
            if message["type"] == "pmessage":
                self._woken(as_str(message["data"]))

    def _woken(self, text: str) -> None:
        """A message on a wake channel: '<waiter or process> <JSON>'."""
        raise NotImplementedError


class TaskClient(_Client):
    """The client before the agent, task by task: every task acquires on
    its own, joins the Redis queue as its own waiter, re-runs the acquire
    script every ``wait_poll_seconds`` while it waits, and takes hand-overs
    from its process's wake channel."""

    def __init__(self, sim: Simulation, namespace: str) -> None:
        super().__init__(sim, namespace)
        self._by_id: dict[str, _Task] = {}

    def acquire(self, task: _Task, tokens: int) -> None:
        """Ask for a slot; the simulation's ``granted`` is called once the task has one."""
        group, weight = _group_of(task)
        lease_id = self.core.new_lease_id(task.process, group)
        task.call, task.ref = self.core.acquire_call(
            PROVIDER,
            MODEL,
            DOMAIN,
            EPOCH + self.sim.now,
            lease_id,
            tokens=tokens,
            wait=True,
            group=group,
            weight=weight,
        )
        task.recheck = False
        self._by_id[lease_id] = task
        self._ask(task)

    def release(
        self, task: _Task, outcome: str, retry_after: float | None, tokens: int | None, heard: Heard | None
    ) -> None:
        sim = self.sim
        assert task.ref is not None
        self._by_id.pop(task.ref.lease_id, None)
        call = self.core.release_call(
            task.ref,
            outcome,  # type: ignore[arg-type]
            retry_after,
            EPOCH + sim.now,
            task.granted_at,
            tokens=tokens,
            heard=heard,
            ttfb=task.ttfb if outcome == "success" else None,
        )
        result, _, _ = self.core.parse_release(task.ref, sim.script(call))
        if result.state is not None:
            sim.state = result.state
        self._drain_wakeups()

    def _ask(self, task: _Task) -> None:
        sim = self.sim
        assert task.call is not None
        assert task.ref is not None
        call = task.call._replace(args=[check_now(EPOCH + sim.now), *task.call.args[1:]])
        got = self.core.parse_acquire(task.ref, sim.script(call))
        sim.state = got.state
        if isinstance(got, Grant):
            task.granted_at = got.granted_at
            sim.granted(task, sim.latency.network)
        else:
            assert isinstance(got, Queued)
            if not task.queued:
                task.queued = True
                sim.waiting += 1
            if not task.recheck:
                task.recheck = True
                task.call, _ = self.core.acquire_call(
                    PROVIDER,
                    MODEL,
                    DOMAIN,
                    EPOCH + sim.now,
                    task.ref.lease_id,
                    tokens=task.ref.tokens,
                    wait=True,
                    recheck=True,
                    group=task.ref.group,
                    weight=task.ref.weight,
                )
            poll = sim.config.wait_poll_seconds
            self._recheck_in(task, min(got.retry_in, poll) if got.retry_in > 0 else poll)
        self._drain_wakeups()

    def _recheck_in(self, task: _Task, seconds: float) -> None:
        task.token += 1
        self.sim.at(self.sim.now + seconds, self._recheck, (task, task.token))

    def _recheck(self, arg: tuple[_Task, int]) -> None:
        task, token = arg
        if token == task.token:
            self._ask(task)

    def _woken(self, text: str) -> None:
        sim = self.sim
        task = self._by_id.get(text.split(" ", 1)[0])
        if task is None or not task.queued:
            return
        assert task.ref is not None
        woke = self.core.parse_wake(task.ref, text)
        if isinstance(woke, Grant):
            sim.state = woke.state
            # Claimed at once, as the client does (the claim window is seconds).
            sim.script(self.core.renew_call([task.ref], EPOCH + sim.now))
            task.granted_at = woke.granted_at
            sim.granted(task, sim.latency.wake + sim.latency.network)
        else:
            self._recheck_in(task, min(woke, sim.config.wait_poll_seconds))


class _Process:
    """One process's agent: its queues (the agent's own decisions), and its flusher's state."""

    __slots__ = ("client_id", "out", "queue", "timer")

    def __init__(self, core: Core, client_id: str) -> None:
        self.client_id = client_id
        self.queue: ProcessQueue[_Task] = ProcessQueue(core)
        self.out = False  # a batch is on its way
        self.timer: float | None = None  # when the flusher looks next


class AgentClient(_Client):
    """The process agent (``aimd_redis/_async/agent.py``): each process's
    tasks queue locally, and its flusher sends one batch.lua call with
    everything pending whenever something changed and no batch is out (the
    next gathers while one is; a round trip takes ``latency.network``), and a
    heartbeat every ``wait_poll_seconds`` while tasks wait. Slots handed over
    by other processes' releases arrive on the wake channel and are acked by
    the next batch. What goes in a batch and who gets what of its reply is
    decided by the agent's own code (``aimd_redis/process_queue.py``)."""

    def __init__(self, sim: Simulation, namespace: str) -> None:
        super().__init__(sim, namespace)
        self._processes: dict[str, _Process] = {}

    def _process(self, name: str) -> _Process:
        agent = self._processes.get(name)
        if agent is None:
            agent = self._processes[name] = _Process(self.core, name)
        return agent

    def acquire(self, task: _Task, tokens: int) -> None:
        agent = self._process(task.process)
        group, weight = _group_of(task)
        task.ref = LeaseRef(
            provider_name=PROVIDER,
            model_id=MODEL,
            domain=DOMAIN,
            lease_id=self.core.new_lease_id(agent.client_id, group),
            tokens=tokens,
            group=group,
            weight=weight,
        )
        task.queued = True
        self.sim.waiting += 1
        agent.queue.domain(task.ref).join(Waiter(task.ref, task), self.sim.now)
        self._kick(agent, 0.0)

    def release(
        self, task: _Task, outcome: str, retry_after: float | None, tokens: int | None, heard: Heard | None
    ) -> None:
        assert task.ref is not None
        agent = self._process(task.process)
        ttfb = task.ttfb if outcome == "success" else None
        row = Core.outcome_row(task.ref, outcome, retry_after, task.granted_at, tokens, heard, ttfb)  # type: ignore[arg-type]
        agent.queue.domain(task.ref).outcome(row, None)
        self._kick(agent, 0.0)

    def _kick(self, agent: _Process, delay: float) -> None:
        """The flusher looks in ``delay`` seconds (or sooner, if it already meant to)."""
        at = self.sim.now + delay
        if agent.timer is not None and agent.timer <= at:
            return
        agent.timer = at
        self.sim.at(at, self._flush, (agent, at))

    def _flush(self, arg: tuple[_Process, float]) -> None:
        agent, at = arg
        if agent.timer != at:  # superseded by an earlier look
            return
        agent.timer = None
        if agent.out:  # the reply to the batch out looks next
            return
        sim = self.sim
        for model, batch in agent.queue.take(sim.now).items():
            call = self.core.batch_call(*model, agent.client_id, [b.items for b in batch], EPOCH + sim.now)
            reply = self.core.parse_batch(*model, sim.script(call))
            agent.out = True
            sim.at(sim.now + sim.latency.network, self._replied, (agent, batch, reply, sim.now))
            self._drain_wakeups()
        if not agent.out:
            self._next(agent)

    def _replied(self, arg: tuple[_Process, list[Batch[_Task]], BatchReply, float]) -> None:
        agent, batch, reply, sent = arg
        agent.out = False
        agent.queue.deliver(batch, reply, sent, self.sim.now)
        for got in reply.domains:
            if got.state is not None:
                self.sim.state = got.state
        self._post(agent)
        self._next(agent)

    def _next(self, agent: _Process) -> None:
        wait = agent.queue.next_due(self.sim.now, math.inf)
        if wait < math.inf:
            self._kick(agent, wait)

    def _post(self, agent: _Process) -> None:
        out, _ = agent.queue.drain()  # acked leases: renewal is not modelled (leases outlast the runs)
        for task, got in out:
            if isinstance(got, BaseException):
                raise got
            assert isinstance(got, Grant)
            task.ref = got.ref
            task.granted_at = got.granted_at
            self.sim.granted(task, self.sim.latency.network)

    def _woken(self, text: str) -> None:
        entry, _ = text.split(" ", 1)
        agent = self._processes.get(entry.partition("~")[0])  # '<process>~<group>' for a group's entry
        if agent is not None:
            woke = self.core.parse_agent_wake(text)
            self.sim.at(self.sim.now + self.sim.latency.wake, self._wake, (agent, woke))

    def _wake(self, arg: tuple[_Process, Wake]) -> None:
        agent, woke = arg
        agent.queue.on_wake((PROVIDER, MODEL), woke, self.sim.now)
        self._post(agent)
        self._kick(agent, 0.0)


#: The client models, by name, and the one a simulation runs unless told.
CLIENTS: dict[str, Callable[[Simulation, str], FleetClient]] = {"task": TaskClient, "agent": AgentClient}
DEFAULT_CLIENT = "agent"


class Simulation:
    """One scenario under one configuration, on a Redis the caller provides
    (its database is used under ``namespace``; run one simulation at a time
    per namespace)."""

    def __init__(
        self,
        client: Any,
        scenario: Scenario,
        config: ThrottleConfig,
        *,
        namespace: str = "aimd-sim",
        latency: Latency | None = None,
        fleet: Callable[[Simulation, str], FleetClient] | None = None,
    ) -> None:
        if config.idle_ttl_seconds != 0:
            raise ValueError("simulations need idle_ttl_seconds=0: key expiry runs on the real clock")
        self.client = client
        self.s = scenario
        self.config = config
        self.latency = latency or Latency()
        # The scripts run as the client runs them: the function library where
        # the server has functions (their shared code loaded once), else EVALSHA.
        self._runner = ScriptRunner(client, functions=True)
        self._rng = random.Random(scenario.seed)
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self.waiting = 0
        """Tasks waiting for a slot."""
        self._in_service = 0
        self._forced = sorted(scenario.forced, key=lambda f: f[0])
        self._tasks = 0
        self.state: DomainState | None = None
        self.now = 0.0
        self._done_count = 0
        self._done = False
        self.requests: list[Request] = []
        self.points: list[Point] = []
        self.calls = 0
        self.entries: list[int] = []
        """Waiter entries in Redis at each sample."""
        self.grants: list[Granted] = []
        # The server's budgets, full at the start, as the cold server keeps them.
        limits = {"requests": scenario.server_rpm, "tokens": scenario.server_tpm}
        self._buckets = {kind: Bucket(limit, float(limit), 0.0) for kind, limit in limits.items() if limit is not None}
        self._server: Queue[_Task] | None = None
        if scenario.batching is not None:
            self._server = Queue(scenario.batching, scenario.capacity(0.0))
        self.fleet: FleetClient = (fleet or CLIENTS[DEFAULT_CLIENT])(self, namespace)

    # -- running ---------------------------------------------------------------

    def run(self) -> SimRun:
        self.fleet.reset()
        if self.s.groups:
            self._add_groups()
        else:
            self._add_processes(self.s.processes, 0.0)
        for at, processes in self.s.scale:
            self.at(at, self._scale_to, processes)
        self.at(0.0, self._sample, None)
        try:
            while self._heap and not self._done:
                t, _, fn, arg = heapq.heappop(self._heap)
                if t > self.s.seconds:
                    self.now = self.s.seconds
                    break
                self.now = t
                fn(arg)
        finally:
            self.fleet.close()
        return SimRun(
            scenario=self.s.name,
            policy=self.config.policy,
            end=self.now,
            requests=self.requests,
            points=self.points,
            script_calls=self.calls,
            waiter_entries=self.entries,
            grants=self.grants,
        )

    def at(self, t: float, fn: Callable[[Any], None], arg: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn, arg))

    def script(self, call: Call) -> Any:
        self.calls += 1
        return self._runner.run(call)

    def _sample(self, _: None) -> None:
        st = self.state
        if self._server is not None:
            self._server.knee = self.s.capacity(self.now)
            for task in self._server.admit():  # the knee grew
                self._serve(task)
        self.points.append(
            Point(
                self.now,
                self.s.capacity(self.now),
                self._in_service,
                st.current_limit if st else 0,
                st.rate_limit_ceiling if st else 0,
                self.waiting,
                self._tasks,
                len(self._server.waiting) if self._server is not None else 0,
            )
        )
        if self.s.count_entries:
            self.entries.append(self.fleet.waiter_entries())
        self.at(self.now + SAMPLE_SECONDS, self._sample, None)

    def _add_processes(self, n: int, at: float) -> None:
        first = self._tasks // self.s.tasks
        for p in range(first, first + n):
            for _ in range(self.s.tasks):
                self._add_task(_Task(f"p{p}"), at)

    def _add_groups(self) -> None:
        for g in self.s.groups:
            for p in range(g.first, g.first + g.processes):
                for _ in range(g.tasks):
                    self._add_task(_Task(f"p{p}", g), g.start)

    def _add_task(self, task: _Task, at: float) -> None:
        self._tasks += 1
        # Spread the starts a little, as real processes start.
        self.at(at + self._rng.uniform(0, self.s.start_spread), self._start_job, task)

    def _scale_to(self, processes: int) -> None:
        now_processes = self._tasks // self.s.tasks
        if processes > now_processes:
            self._add_processes(processes - now_processes, self.now)

    # -- a caller --------------------------------------------------------------

    def _start_job(self, task: _Task) -> None:
        task.job_started = self.now
        self._acquire(task)

    def _acquire(self, task: _Task) -> None:
        task.asked = self.now
        estimate = 0
        if self.s.budget != "ignored":
            estimate = self.s.estimate or self.s.prompt_tokens + self.s.max_tokens
        self.fleet.acquire(task, estimate)

    def granted(self, task: _Task, delay: float) -> None:
        task.token += 1  # no re-check pending any more
        self.grants.append(Granted(self.now, _group_name(task), self.now - task.asked))
        if task.queued:
            task.queued = False
            self.waiting -= 1
        self.at(self.now + delay, self._arrive, task)

    # -- the server --------------------------------------------------------------

    def _refilled(self) -> dict[str, Bucket]:
        for bucket in self._buckets.values():
            bucket.refill(self.now)
        return self._buckets

    def _over_budget(self, cost: int) -> float | None:
        """Seconds until a request of ``cost`` tokens fits the server's
        budgets, or None when it fits (and is charged)."""
        needs = {kind: 1 if kind == "requests" else cost for kind in self._refilled()}
        wait = max((self._buckets[kind].wait(need) for kind, need in needs.items()), default=0.0)
        if wait > 0:
            return wait
        for kind, need in needs.items():
            self._buckets[kind].level -= need
        return None

    def _heard(self) -> Heard | None:
        """The rate-limit headers of an answer sent now, if the fleet reads them."""
        if self.s.budget != "learned":
            return None
        left = {kind: max(0, math.floor(bucket.level)) for kind, bucket in self._refilled().items()}
        return Heard(
            requests_limit=self.s.server_rpm,
            requests_remaining=left.get("requests"),
            tokens_limit=self.s.server_tpm,
            tokens_remaining=left.get("tokens"),
        )

    def _arrive(self, task: _Task) -> None:
        if self._server is not None:
            self._queue(self._server, task)
            return
        s, now = self.s, self.now
        concurrency, capacity = self._in_service + 1, s.capacity(now)
        cost = s.prompt_tokens + self._rng.randint(s.max_tokens // 2, s.max_tokens)
        refusal: tuple[int, float | None] | None = None
        if self._forced and now >= self._forced[0][0]:
            refusal = (429, self._forced.pop(0)[1])
        elif (wait := self._over_budget(cost)) is not None:
            refusal = (429, wait)
        elif concurrency > capacity:
            refusal = (s.refusal_status, s.retry_after)
        elif s.random_refusals and self._rng.random() < s.random_refusals:
            refusal = (429, s.retry_after)
        if refusal is not None:
            self.requests.append(Request(now, now, refusal[0], concurrency, capacity, group=_group_name(task)))
            self.at(now + self.latency.network, self._refused, (task, refusal[1]))
            return
        self._in_service += 1
        seconds = self._service(task)
        self.requests.append(Request(now, now + seconds, 200, concurrency, capacity, cost, group=_group_name(task)))
        task.used = cost
        self.at(now + seconds + self.latency.network, self._served, task)
        self.at(now + seconds + s.release_lag, self._free, None)

    def _service(self, task: _Task) -> float:
        """A request's own service time (its group's, or the scenario's)."""
        g = task.group
        return (g.service if g is not None and g.service is not None else self.s.service)(self._rng)

    def _free(self, _: None) -> None:
        self._in_service -= 1

    def _queue(self, server: Queue[_Task], task: _Task) -> None:
        """A request reaches a queueing server: it joins the batch, waits, or gets a 503 past the queue cap."""
        now = self.now
        server.knee = self.s.capacity(now)
        task.arrived, task.at_server = now, server.in_batch + len(server.waiting) + 1
        joined = server.arrive(task)
        if joined is None:
            self.requests.append(Request(now, now, 503, task.at_server, server.knee))
            self.at(now + self.latency.network, self._refused, (task, self.s.retry_after))
        elif joined:
            self._serve(task)

    def _serve(self, task: _Task) -> None:
        assert self._server is not None
        assert self.s.batching is not None
        now, server = self.now, self._server
        got = server.join(self._service(task), now)
        self._in_service += 1
        waited = now - task.arrived
        first = waited + got.first_token if self.s.batching.stream else None
        self.requests.append(
            Request(task.arrived, now + got.seconds, 200, task.at_server, server.knee, got.tokens, waited, first)
        )
        task.used = got.tokens
        task.ttfb = None if first is None else first + 2 * self.latency.network
        self.at(now + got.seconds + self.latency.network, self._served, task)
        self.at(now + got.seconds, self._leave, None)

    def _leave(self, _: None) -> None:
        assert self._server is not None
        self._in_service -= 1
        self._server.knee = self.s.capacity(self.now)
        for task in self._server.leave():
            self._serve(task)

    def _served(self, task: _Task) -> None:
        self._release(task, "success", None)
        self._done_count += 1
        if self.s.requests is not None and self._done_count >= self.s.requests:
            self._done = True
            return
        think = task.group.think if task.group is not None else 0.0
        self.at(self.now + (self._rng.expovariate(1 / think) if think > 0 else 0.0), self._start_job, task)

    def _refused(self, arg: tuple[_Task, float | None]) -> None:
        task, retry_after = arg
        self._release(task, "rate_limited", retry_after)
        # The caller honours Retry-After for the request that got it.
        self.at(self.now + (retry_after or 0.0), self._acquire, task)

    def _release(self, task: _Task, outcome: str, retry_after: float | None) -> None:
        # The usage an answer reports: for the budget, and for a queueing
        # server's latency per token.
        reported = self.s.budget != "ignored" or self.s.batching is not None
        used = task.used if outcome == "success" and reported else None
        self.fleet.release(task, outcome, retry_after, used, self._heard())


# -- what a run shows ------------------------------------------------------------


class Figures(msgspec.Struct, frozen=True):
    scenario: str
    policy: str
    seconds: float
    requests: int
    served: int
    refused: int
    refused_share: float
    """Refusals (429, or 503/529 for an overloaded server) among requests sent."""
    caused_share: float
    """Refusals because the fleet sent more than the capacity (not random or forced ones)."""
    warmup_refused_share: float | None
    goodput: float
    """Share of the capacity the fleet's tasks could fill that went to requests served."""
    steady_goodput: float | None
    steady_refused_share: float | None
    to_90: float | None
    """Seconds from the step up until the server ran at 90% of the new capacity (over a second)."""
    max_concurrency: int
    count_share: float
    """Requests served / (usable capacity x time / mean service): ``benchmarks/fleet.py``'s measure."""
    budget_share: float | None = None
    """In the steady window, what the server admitted of its budget (tokens,
    or requests where it has no token budget): the budget-bound scenarios' goodput."""


def figures(run: SimRun, s: Scenario) -> Figures:
    """The figures of one run. Capacity counts only what the fleet's tasks
    could fill (a fleet of 64 tasks cannot use a capacity of 96)."""
    end, points, requests = run.end, run.points, run.requests

    def usable(t0: float, t1: float) -> float:
        """Slot-seconds the fleet could have kept busy in [t0, t1)."""
        total = 0.0
        for a, b in itertools.pairwise([*points, Point(end, 0, 0, 0, 0, 0, 0)]):
            lo, hi = max(a.t, t0), min(b.t, t1)
            if hi > lo:
                total += min(a.capacity, a.tasks) * (hi - lo)
        return total

    def used(t0: float, t1: float) -> float:
        return sum(
            max(0.0, min(r.finished, t1) - max(r.started, t0))
            for r in requests
            if r.status == 200 and r.finished > t0 and r.started < t1
        )

    def refused_share(t0: float, t1: float) -> float | None:
        sent = [r for r in requests if t0 <= r.arrived < t1]
        return sum(1 for r in sent if r.status != 200) / len(sent) if sent else None

    def budget_share(t0: float, t1: float) -> float | None:
        admitted = [r for r in requests if r.status == 200 and t0 <= r.arrived < t1]
        if s.server_tpm is not None:
            return sum(r.tokens for r in admitted) / (s.server_tpm * (t1 - t0) / 60)
        if s.server_rpm is not None:
            return len(admitted) / (s.server_rpm * (t1 - t0) / 60)
        return None

    served = sum(1 for r in requests if r.status == 200 and r.finished <= end)
    refused = sum(1 for r in requests if r.status != 200)
    steady_goodput = steady_refused = None
    if s.steady is not None and s.steady[1] <= end:
        a, b = s.steady
        steady_goodput = used(a, b) / usable(a, b)
        steady_refused = refused_share(a, b)
    to_90 = None
    if s.step_up is not None:
        window = round(1.0 / SAMPLE_SECONDS)
        after = [p for p in points if p.t >= s.step_up]
        for i in range(len(after) - window):
            chunk = after[i : i + window]
            if sum(p.in_service for p in chunk) >= 0.9 * sum(min(p.capacity, p.tasks) for p in chunk):
                to_90 = chunk[0].t - s.step_up
                break
    sent = len(requests)
    return Figures(
        scenario=s.name,
        policy=run.policy,
        seconds=end,
        requests=sent,
        served=served,
        refused=refused,
        refused_share=refused / sent if sent else 0.0,
        caused_share=sum(1 for r in requests if r.over_capacity) / sent if sent else 0.0,
        warmup_refused_share=refused_share(0.0, s.warmup) if s.warmup else None,
        goodput=used(0.0, end) / usable(0.0, end),
        steady_goodput=steady_goodput,
        steady_refused_share=steady_refused,
        to_90=to_90,
        max_concurrency=max((r.concurrency for r in requests), default=0),
        count_share=served / (usable(0.0, end) / s.mean_service),
        budget_share=budget_share(*s.steady) if s.steady is not None and s.steady[1] <= end else None,
    )


def simulate(
    client: Any,
    scenario: Scenario,
    policy: str,
    *,
    namespace: str = "aimd-sim",
    latency: Latency | None = None,
    fleet: Callable[[Simulation, str], FleetClient] | None = None,
) -> SimRun:
    """Run ``scenario`` under ``policy`` with the scenario's settings
    (``fleet``: the client model, see ``CLIENTS``)."""
    config = scenario_config(scenario, policy)
    return Simulation(client, scenario, config, namespace=namespace, latency=latency, fleet=fleet).run()


def scenario_config(scenario: Scenario, policy: str) -> ThrottleConfig:
    """The loop's configuration for ``scenario`` under ``policy``."""
    settings = {
        "lease_ttl_seconds": 600.0,
        "idle_ttl_seconds": 0.0,
        "rampup_seconds": scenario.rampup_seconds,
        **scenario.config,
        "policy": policy,
    }
    return ThrottleConfig(**settings)


def with_(scenario: Scenario, **changes: Any) -> Scenario:
    return replace(scenario, **changes)


# -- the scenarios ----------------------------------------------------------------

SERVICE = 0.25

SCENARIOS: Sequence[Scenario] = (
    Scenario(
        name="steady",
        about="capacity 16 throughout; fleet 8x8 with peak 32 and a 10 s ramp",
        seconds=120,
        capacity=steps(16),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        rampup_seconds=10,
        steady=(30, 120),
    ),
    Scenario(
        name="cold-fast",
        about="server warms 1 -> 16 over 10 s, faster than the fleet's 25 s ramp (the fleet benchmark's shape)",
        seconds=90,
        capacity=warming(16, 10),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        rampup_seconds=25,
        warmup=10,
        steady=(40, 90),
    ),
    Scenario(
        name="cold-slow",
        about="server warms 1 -> 16 over 40 s, slower than the fleet's 10 s ramp",
        seconds=120,
        capacity=warming(16, 40),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        rampup_seconds=10,
        warmup=40,
        steady=(60, 120),
    ),
    Scenario(
        name="hiccup",
        about="a warming server refuses three requests at 2 s, while the ramp is at 3",
        seconds=90,
        capacity=warming(16, 10),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        rampup_seconds=20,
        forced=((2.0, 0.5), (2.05, 0.5), (2.1, 0.5)),
        warmup=10,
        steady=(30, 90),
    ),
    Scenario(
        name="double",
        about="capacity 16, doubled to 32 at 60 s (peak 64)",
        seconds=150,
        capacity=steps(16, (60, 32)),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        processes=8,
        tasks=8,
        peak=64,
        rampup_seconds=10,
        step_up=60,
        steady=(90, 150),
    ),
    Scenario(
        name="halve",
        about="capacity 32, halved to 16 at 60 s (peak 64)",
        seconds=150,
        capacity=steps(32, (60, 16)),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        peak=64,
        rampup_seconds=10,
        steady=(90, 150),
    ),
    Scenario(
        name="random-429",
        about="capacity 16, and 0.5% of requests refused at random whatever the load",
        seconds=120,
        capacity=steps(16),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        rampup_seconds=10,
        random_refusals=0.005,
        steady=(30, 120),
    ),
    Scenario(
        name="long-retry-after",
        about="capacity 16; single requests refused with Retry-After 60 s at 30 s and 30 s at 80 s",
        seconds=150,
        capacity=steps(16),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        rampup_seconds=10,
        forced=((30.0, 60.0), (80.0, 30.0)),
        steady=(20, 150),
    ),
    Scenario(
        name="overloaded-503",
        about="capacity 16; above it the server answers 503 without Retry-After",
        seconds=120,
        capacity=steps(16),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        rampup_seconds=10,
        retry_after=None,
        refusal_status=503,
        steady=(30, 120),
    ),
    Scenario(
        name="overloaded-529",
        about="capacity 16; above it the server answers 529 with Retry-After 1 s",
        seconds=120,
        capacity=steps(16),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        rampup_seconds=10,
        retry_after=1.0,
        refusal_status=529,
        steady=(30, 120),
    ),
    Scenario(
        name="scale-out",
        about="capacity 96; the fleet grows from 8 to 64 processes (x8 tasks) at 30 s (peak 128)",
        seconds=90,
        capacity=steps(96),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        peak=128,
        rampup_seconds=10,
        scale=((30.0, 64),),
        step_up=30,
        steady=(50, 90),
    ),
    Scenario(
        name="heavy-tail",
        about="capacity 16 streams; lognormal service times, median 2 s, p99 about 20 s",
        seconds=240,
        capacity=steps(16),
        service=lognormal(2.0, 1.0, 120.0),
        mean_service=2.0 * math.exp(0.5),
        rampup_seconds=10,
        steady=(60, 240),
    ),
    Scenario(
        name="release-race",
        about="capacity 16, but the server frees a slot 2 ms after the caller has its response, later than the "
        "next request arrives: above 14 at once it refuses a few percent of requests",
        seconds=120,
        capacity=steps(16),
        service=uniform(SERVICE),
        mean_service=SERVICE,
        rampup_seconds=10,
        release_lag=0.002,
        steady=(30, 120),
        # 14 of 16 is all a fleet can hold at under 1% 429s (measured with the
        # registered peak at 14 and at 15).
        goal=0.85,
    ),
)

# Bound by a budget, not by concurrency: the server could serve 64 at once,
# and the fleet's 64 tasks would send several times its budget.
_TPM = Scenario(
    name="tpm-registered",
    about="budget 60,000 tokens/min (requests of 400 + up to 400 tokens, served in 1 s), registered by the fleet",
    seconds=240,
    capacity=steps(64),
    service=uniform(1.0),
    mean_service=1.0,
    peak=64,
    rampup_seconds=10,
    steady=(60, 240),
    server_tpm=60_000,
    budget="registered",
)
_RPM = with_(
    _TPM,
    name="rpm-registered",
    about="budget 120 requests/min (served in 1 s), registered by the fleet",
    server_tpm=None,
    server_rpm=120,
)
BUDGETED: Sequence[Scenario] = (
    _TPM,
    with_(_TPM, name="tpm-learned", about="the same token budget, learned from the answers' headers", budget="learned"),
    with_(_TPM, name="tpm-ignored", about="the same token budget, unknown to the fleet (429s only)", budget="ignored"),
    with_(
        _TPM,
        name="tpm-low-estimate",
        about="the registered token budget, but each request reserves 400 tokens and uses 600 to 800",
        estimate=400,
    ),
    with_(
        _TPM,
        name="tpm-low-learned",
        about="the same low estimates, the budget learned from the headers",
        estimate=400,
        budget="learned",
    ),
    _RPM,
    with_(
        _RPM, name="rpm-learned", about="the same request budget, learned from the answers' headers", budget="learned"
    ),
    with_(
        _RPM, name="rpm-ignored", about="the same request budget, unknown to the fleet (429s only)", budget="ignored"
    ),
)
SCENARIOS = (*SCENARIOS, *BUDGETED)


# -- servers that queue instead of refusing ------------------------------------------


class QueueFigures(msgspec.Struct, frozen=True):
    """A run against a queueing server, judged against what the server does
    alone (no-load latency) and at its best (peak throughput), in the
    scenario's steady window."""

    scenario: str
    policy: str
    no_load: float
    """Median latency of a lone request."""
    no_load_p90: float
    """The 90th percentile of a lone request's latency."""
    first_share: float
    """A lone request's first token comes after this share of its latency."""
    peak_rate: float
    """Requests a second the server serves at best in the window (with the fleet's tasks)."""
    rate: float
    """Requests a second served (finished) in the window."""
    throughput_share: float
    median: float
    p90: float
    """Latency (arrival at the server to the last byte) of requests that arrived in the window."""
    first_median: float | None
    first_p90: float | None
    """Time to the first token, for streamed answers."""
    refused: int
    """Requests refused over the run (503s past the queue cap); the callers retried them."""
    at_server: float
    """Median of the requests at the server (in the batch or queued) in the window."""
    queued: float
    """Median of the requests in the server's queue in the window."""
    slow_busy: float | None
    """Through the slow spells: the batch's mean fill, of what the fleet's tasks could fill."""

    @property
    def median_x(self) -> float:
        return self.median / self.no_load

    @property
    def p90_x(self) -> float:
        """The p90 against a lone request's p90."""
        return self.p90 / self.no_load_p90

    @property
    def first_x(self) -> tuple[float, float] | None:
        """The first token's median and p90 against a lone request's."""
        if self.first_median is None or self.first_p90 is None:
            return None
        return self.first_median / (self.no_load * self.first_share), self.first_p90 / (
            self.no_load_p90 * self.first_share
        )


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]


def queue_figures(run: SimRun, s: Scenario) -> QueueFigures:
    batching = s.batching
    if batching is None or s.steady is None:
        raise ValueError(f"{s.name} is not a queueing scenario with a steady window")
    a, b = s.steady
    ref = Reference.of(s.service, batching, s.capacity(a))
    window = [p for p in run.points if a <= p.t < b]
    peak = statistics.fmean(batching.rate(min(p.capacity, p.tasks), p.capacity, ref.mean_work, p.t) for p in window)
    served = [r for r in run.requests if r.status == 200 and r.finished <= run.end]
    arrived = [r for r in served if a <= r.arrived < b]
    rate = sum(1 for r in served if a <= r.finished < b) / (b - a)
    firsts = [r.first_byte for r in arrived if r.first_byte is not None]
    spell = [p for p in run.points if any(x.start <= p.t < x.end for x in batching.slow)]
    return QueueFigures(
        scenario=s.name,
        policy=run.policy,
        no_load=ref.no_load,
        no_load_p90=ref.no_load_p90,
        first_share=batching.first_token_share,
        peak_rate=peak,
        rate=rate,
        throughput_share=rate / peak,
        median=quantile([r.latency for r in arrived], 0.5),
        p90=quantile([r.latency for r in arrived], 0.9),
        first_median=quantile(firsts, 0.5) if firsts else None,
        first_p90=quantile(firsts, 0.9) if firsts else None,
        refused=sum(1 for r in run.requests if r.status != 200),
        at_server=statistics.median(p.in_service + p.queue for p in window),
        queued=statistics.median(p.queue for p in window),
        slow_busy=(statistics.fmean(p.in_service / min(p.capacity, p.tasks) for p in spell) if spell else None),
    )


_BATCH = Scenario(
    name="q-batch",
    about="a server batching 12 at once (0.2 s alone, lognormal; 1.5x slower at a full batch), FIFO queue beyond; "
    "fleet 4x16, peak 64",
    seconds=90,
    capacity=steps(12),
    service=lognormal(0.2, 0.25, 2.0),
    mean_service=0.2 * math.exp(0.25**2 / 2),
    processes=4,
    tasks=16,
    peak=64,
    rampup_seconds=10,
    steady=(30, 90),
    batching=Batching(growth=0.5),
)
_LONG = lognormal(1.0, 1.0, 30.0)
QUEUEING: Sequence[Scenario] = (
    _BATCH,
    with_(
        _BATCH,
        name="q-heavy-tail",
        about="batch 16; output lengths lognormal (median 1 s, sigma 1, p99 about 10 s)",
        seconds=240,
        capacity=steps(16),
        service=_LONG,
        mean_service=math.exp(0.5),
        steady=(60, 240),
    ),
    with_(
        _BATCH,
        name="q-stream",
        about="batch 12, streamed answers (first token after 10% of the service), Pareto lengths (0.1 s up, alpha 2)",
        seconds=120,
        service=pareto(0.1, 2.0, 5.0),
        mean_service=0.2,
        steady=(30, 120),
        batching=Batching(growth=0.5, stream=True),
    ),
    with_(
        _BATCH,
        name="q-knee-moves",
        about="batch 12, scaled out to 24 at 60 s and in to 8 at 120 s",
        seconds=180,
        capacity=steps(12, (60, 24), (120, 8)),
        steady=(30, 180),
    ),
    with_(
        _BATCH,
        name="q-queue-cap",
        about="batch 12 and at most 16 queued: past that it answers 503 with Retry-After 1 s",
        retry_after=1.0,
        refusal_status=503,
        batching=Batching(growth=0.5, queue_cap=16),
    ),
    with_(
        _BATCH,
        name="q-large-fleet",
        about="batch 12; fleet 16x16 with peak 256",
        processes=16,
        peak=256,
    ),
    with_(
        _BATCH,
        name="q-small-fleet",
        about="batch 12; fleet 1x8, smaller than the batch",
        processes=1,
        tasks=8,
    ),
    with_(
        _BATCH,
        name="hosted-slow",
        about="a hosted API (batch 64, hardly slower loaded); fleet 4x8, peak 32; every request twice as slow "
        "from 60 s to 120 s whatever the load",
        seconds=180,
        capacity=steps(64),
        tasks=8,
        peak=32,
        steady=(30, 180),
        batching=Batching(growth=0.1, slow=(Slow(60.0, 120.0),)),
    ),
)
SCENARIOS = (*SCENARIOS, *QUEUEING)
BY_NAME = {s.name: s for s in SCENARIOS}
