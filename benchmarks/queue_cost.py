"""What a script call costs Redis as a domain's queue grows: from 10 to
10,000 waiting processes, and from 1 to 1,000 groups among 1,000 of them.

    python benchmarks/queue_cost.py [--url redis://...] [--cycles 400] [--rounds 3]

A domain of limit 8 is held full (8 leases of a holder), and ``entries``
processes wait in its queue, one caller each, spread over ``groups`` groups
of weight 1 (or the default group). Then each cycle is the agent's two
calls of a slot changing hands, made with the real batch script through
the core and the script runner (injected time, as the simulator runs them):

1. the process holding a slot gives it back (an outcome, its want of 1
   again): the script hands the slot to the head of the queue, which it
   finds woken on its wake channel;
2. the woken process acks the slot and wants one more: it joins the queue's
   tail again, so the queue keeps its size.

Redis's own time per call comes from ``INFO commandstats`` (FCALL), reset
before each round; the median over rounds is reported, and the ratio of the
largest to the smallest across each sweep (flat: at most 1.5).
``benchmarks/fairness.py`` runs it as part of the fair share targets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import redis
from script_stats import script_stats

from aimd_redis._sync.runner import ScriptRunner
from aimd_redis.config import ThrottleConfig
from aimd_redis.core import Core, DomainItems
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.structs import LeaseRef

PROVIDER, MODEL, DOMAIN = "qcost", "model", "chat"
LIMIT = 8
EPOCH = 1_000_000.0
#: Injected time moves this much a call: a run stays well within a waiter's heartbeat.
TICK = 1e-4
ENTRIES = (10, 100, 1_000, 10_000)
GROUPS = (1, 10, 100, 1_000)
GROUPS_ENTRIES = 1_000
MAX_RATIO = 1.5


class QueueCost(msgspec.Struct, frozen=True):
    entries: int
    groups: int
    usec: float
    """Redis microseconds per call (median over rounds)."""
    rounds: list[float]
    queue: int
    """Entries in the queue at the end."""


class _Bench:
    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.core = Core(ThrottleConfig(lease_ttl_seconds=600.0, idle_ttl_seconds=0.0), namespace)
        self.keys = self.core.keys(PROVIDER, MODEL)
        self.runner = ScriptRunner(client, functions=True)
        self.now = EPOCH
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe(self.keys.wake_prefix + "*")
        self.pubsub.get_message(timeout=5)

    def close(self) -> None:
        self.pubsub.close()

    def call(self, client_id: str, items: DomainItems) -> Any:
        self.now += TICK
        return self.core.parse_batch(
            PROVIDER, MODEL, self.runner.run(self.core.batch_call(PROVIDER, MODEL, client_id, [items], self.now))
        )

    def ref(self, lease_id: str, group: str | None) -> LeaseRef:
        return LeaseRef(provider_name=PROVIDER, model_id=MODEL, domain=DOMAIN, lease_id=lease_id, group=group)

    def reset(self) -> None:
        self.client.delete(self.keys.cap, self.keys.index, self.keys.events, self.keys.budget)
        self.client.delete(self.keys.domain(DOMAIN), self.keys.leases(DOMAIN), *self.keys.queue(DOMAIN))
        self.runner.run(self.core.register_call(PROVIDER, MODEL, "bench", LIMIT, self.now))

    def handed(self) -> tuple[str, str | None, str]:
        """The (client, group, lease id) of the slot the last call handed over."""
        while True:
            message = self.pubsub.get_message(timeout=5)
            if message is None:
                raise RuntimeError("no slot was handed over")
            if message["type"] == "pmessage":
                text = message["data"].decode()
                woke = self.core.parse_agent_wake(text)
                if woke.handed:
                    return text.split(" ", 1)[0].partition("~")[0], woke.group, woke.handed[0]


def _items(**kw: Any) -> DomainItems:
    base: dict[str, Any] = {"name": DOMAIN, "outcomes": [], "acks": [], "tries": [], "want": 0, "ids": [], "tokens": 0}
    return DomainItems(**(base | kw))


class _Queue:
    """A full domain with ``entries`` waiting in ``groups`` groups, and who holds the slot that changes hands."""

    def __init__(self, client: Any, entries: int, groups: int) -> None:
        self.entries, self.groups = entries, groups
        self.bench = bench = _Bench(client, f"aimd-queue-cost-{entries}-{groups}")
        bench.reset()
        names = [None] if groups == 1 else [f"g{i}" for i in range(groups)]
        holder = [bench.ref(bench.core.new_lease_id("holder"), None) for _ in range(LIMIT)]
        got = bench.call("holder", _items(tries=holder))
        assert all(status == "granted" for status, _ in got.domains[0].tries), got
        for i in range(entries):
            bench.call(f"w{i}", _items(want=1, group=names[i % len(names)]))
        # The first slot changes hands from the holder, then from process to process.
        self.holding: tuple[str, str | None, str] = ("holder", None, holder[0].lease_id)
        self.rounds: list[float] = []

    def round(self, cycles: int) -> float:
        """Redis microseconds a call over ``cycles`` hand-overs."""
        bench = self.bench
        bench.client.config_resetstat()
        for _ in range(cycles):
            owner, group, lease_id = self.holding
            row = Core.outcome_row(bench.ref(lease_id, group), "success")
            given = bench.call(owner, _items(outcomes=[row], want=0 if owner == "holder" else 1, group=group))
            if given.domains[0].rel != [True]:
                raise RuntimeError(f"{lease_id} was not given back: {given}")
            self.holding = owner, group, lease_id = bench.handed()
            acked = bench.call(owner, _items(acks=[lease_id], want=1, group=group))
            if not acked.domains[0].ack[0]:
                raise RuntimeError(f"{lease_id} was not acked: {acked}")
        calls, usec = script_stats(bench.client)
        self.rounds.append(usec / calls)
        return self.rounds[-1]

    def cost(self) -> QueueCost:
        queue = int(self.bench.client.zcard(self.bench.keys.queue(DOMAIN)[0]))
        self.bench.close()
        return QueueCost(self.entries, self.groups, statistics.median(self.rounds), self.rounds, queue)


def sweeps(client: Any, cycles: int, rounds: int, progress: Callable[[str], None] = print) -> list[QueueCost]:
    """The two sweeps: entries (default group), then groups among ``GROUPS_ENTRIES``
    entries; every queue is set up first, then the rounds go over them in turn
    (so that the machine's noise falls on all of them alike)."""
    shapes = [(n, 1) for n in ENTRIES] + [(GROUPS_ENTRIES, g) for g in GROUPS if g > 1]
    queues = []
    for n, g in shapes:
        progress(f"  queueing {n:,} waiting in {g:,} group{'s' if g > 1 else ''}")
        queues.append(_Queue(client, n, g))
    for r in range(rounds):
        done = [f"{q.entries:,}/{q.groups:,}: {q.round(cycles):.1f}" for q in queues]
        progress(f"  round {r + 1}/{rounds}, us a call (waiting/groups): " + ", ".join(done))
    return [q.cost() for q in queues]


def verdict(costs: list[QueueCost]) -> list[tuple[str, bool]]:
    """(what was measured, target met) of each sweep: the largest time a call against the smallest."""
    out = []
    for what, sweep in (
        (f"{ENTRIES[0]:,} to {ENTRIES[-1]:,} waiting", [c for c in costs if c.groups == 1]),
        (f"1 to {GROUPS[-1]:,} groups, {GROUPS_ENTRIES:,} waiting", [c for c in costs if c.entries == GROUPS_ENTRIES]),
    ):
        lo, hi = min(c.usec for c in sweep), max(c.usec for c in sweep)
        flat = hi / lo <= MAX_RATIO
        line = f"Redis time a call, {what}: {lo:.0f} to {hi:.0f} us, x{hi / lo:.2f} (at most x{MAX_RATIO:g})"
        out.append((line, flat))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--cycles", type=int, default=400, help="slot hand-overs a round (two calls each)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    embedded = None if args.url else EmbeddedRedis()
    client = redis.Redis.from_url(args.url or embedded.url)  # type: ignore[union-attr]
    try:
        costs = sweeps(client, args.cycles, args.rounds)
    finally:
        client.close()
        if embedded is not None:
            embedded.close()
    ok = True
    for line, flat in verdict(costs):
        print(f"{'ok  ' if flat else 'MISS'} {line}")
        ok = ok and flat
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
