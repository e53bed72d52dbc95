"""Fair share across groups: while a domain is full, freed slots go to the
waiting groups of the whole fleet in proportion to their weights, in
arrival order within a group; a reservation holds slots for its group.

Most tests drive batch.lua as two or more processes' agents would, at
injected times, so that who gets which slot is exact."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import Any

import pytest

from aimd_redis import AcquireTimeout, Lease, Throttle, ThrottleConfig
from aimd_redis.core import Core, DomainItems
from aimd_redis.errors import ArgumentTypeError, ConfigError, InvalidArgumentError
from aimd_redis.replies import DomainBatchReply
from aimd_redis.structs import LeaseRef

from .conftest import MakeThrottle
from .helpers import M, P, reg
from .test_input import unreachable  # noqa: F401  (a fixture)

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
DOMAIN_KEY = "aimd:{openai/gpt-4o}:chat"


class Process:
    """One process's agent for one group of the domain, as batch.lua sees it."""

    def __init__(self, t: Throttle, client_id: str, group: str | None = None, weight: float = 1.0) -> None:
        self.t, self.client_id, self.group, self.weight = t, client_id, group, weight
        self.held: list[str] = []
        self.got = 0
        self._n = 0

    def ref(self, lease_id: str) -> LeaseRef:
        return LeaseRef(provider_name=P, model_id=M, domain="chat", lease_id=lease_id, group=self.group)

    def new_ids(self, n: int) -> list[str]:
        entry = self.client_id if self.group is None else f"{self.client_id}~{self.group}"
        self._n += n
        return [f"{entry}.{i}" for i in range(self._n - n, self._n)]

    def items(self, *, want: int, release: bool = True, ids: int = 4) -> DomainItems:
        """Its item of a batch: gives back what it holds (when told to) and
        waits for ``want`` slots, with ``ids`` lease ids."""
        back, self.held = (self.held, []) if release else ([], self.held)
        return DomainItems(
            name="chat",
            outcomes=[Core.outcome_row(self.ref(i), "success") for i in back],
            acks=[],
            tries=[],
            want=want,
            ids=[self.ref(i) for i in self.new_ids(ids)],
            tokens=0,
            group=self.group,
            weight=self.weight,
        )

    def took(self, got: DomainBatchReply) -> None:
        """Takes what the reply gives it, granted or handed over."""
        taken = [i for i, _ in got.got] + [i for i, _ in got.handed]
        self.held += taken
        self.got += len(taken)

    def batch(self, now: float, *, want: int, release: bool = True, ids: int = 4) -> DomainBatchReply:
        """A batch of its own (see ``items``); takes what comes."""
        items = self.items(want=want, release=release, ids=ids)
        reply = self.t._run(self.t._core.batch_call(P, M, self.client_id, [items], now))
        got = self.t._core.parse_batch(P, M, reply).domains[0]
        self.took(got)
        return got


def _rounds(procs: list[Process], rounds: int, *, start: float = 1.0) -> None:
    """Every process keeps wanting; each round each gives back what it held."""
    for r in range(rounds):
        order = procs if r % 2 == 0 else procs[::-1]
        for i, p in enumerate(order):
            p.batch(start + r + i / 100, want=50)


def _shares(procs: list[Process]) -> dict[str | None, float]:
    by_group: Counter[str | None] = Counter()
    for p in procs:
        by_group[p.group] += p.got
    total = sum(by_group.values())
    return {g: n / total for g, n in by_group.items()}


def test_weights_share_a_full_domain_across_processes(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 8)
    procs = [Process(t, f"p{i}", "a" if i < 2 else "b", 3.0 if i < 2 else 1.0) for i in range(4)]
    _rounds(procs, 30)
    shares = _shares(procs)
    assert abs(shares["a"] - 0.75) <= 0.03, shares


def test_equal_weights_share_alike_and_callers_without_a_group_are_one_group(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 6)
    procs = [Process(t, "p0", None), Process(t, "p1", None), Process(t, "p2", "b")]
    _rounds(procs, 30)
    shares = _shares(procs)
    assert abs(shares[None] - 0.5) <= 0.03, shares


def test_a_group_alone_may_use_every_slot(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    reg(t, 8)
    lone = Process(t, "p0", "batch", 0.5)
    got = lone.batch(1.0, want=20, ids=20)
    assert len(got.got) == 8
    assert int(client.hget(DOMAIN_KEY, "in_flight:batch")) == 8


def test_a_group_arriving_late_is_not_served_after_the_backlog(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 4)
    flood = Process(t, "p0", "batch")
    flood.batch(1.0, want=1000)  # 4 slots, and 996 waiting
    late = Process(t, "p1", "chat")
    late.batch(2.0, want=1)
    flood.batch(3.0, want=996)  # gives its 4 back: the late group's one caller is served among them
    assert late.batch(4.0, want=1, release=False).handed or late.got == 1


def test_arrival_order_within_a_group_across_processes(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 2)
    holder = Process(t, "h", "x")
    holder.batch(1.0, want=2)
    first, second = Process(t, "p1", "x"), Process(t, "p2", "x")
    first.batch(1.1, want=2)
    second.batch(1.2, want=2)
    holder.batch(1.3, want=0)  # both slots back: both to the first process
    assert (first.batch(1.4, want=2, release=False, ids=0).handed, second.got) != ([], 0)
    assert (first.got, second.got) == (2, 0)


def test_groups_go_with_their_last_waiter(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    reg(t, 1)
    holder = Process(t, "h")
    holder.batch(1.0, want=1)
    flood = [Process(t, f"p{i}", f"g{i}") for i in range(300)]
    for i, p in enumerate(flood):
        p.batch(2.0 + i / 1000, want=1, ids=0)
    assert client.zcard(f"{DOMAIN_KEY}:groups") >= 300
    for p in flood:  # each gives up
        p.batch(3.0, want=0, ids=0)
    holder.batch(4.0, want=0)
    assert client.zcard(f"{DOMAIN_KEY}:groups") == 0
    assert client.zcard(f"{DOMAIN_KEY}:queue") == 0


def test_groups_served_fall_behind_and_are_forgotten(make_throttle: MakeThrottle, client: Any) -> None:
    """Redis keeps a group while it waits: a stream of one-off groups
    through a domain that stays full leaves no trace of those served."""
    t = make_throttle()
    reg(t, 2)
    backlog = Process(t, "b", "batch")
    backlog.batch(1.0, want=500)
    served, now = 0, 2.0
    for i in range(200):
        once = Process(t, f"o{i}", f"once{i}")
        once.batch(now, want=1, ids=0)
        for _ in range(3):  # the backlog gives back its slots until the newcomer has one
            now += 0.001
            backlog.batch(now, want=500)
            once.batch(now, want=1 - once.got, ids=0, release=False)
            if once.got:
                break
        served += once.got
        once.batch(now, want=0, ids=0)  # done with it
    assert served == 200
    assert len([g for g in client.zrange(f"{DOMAIN_KEY}:groups", 0, -1) if g != b"~v"]) <= 3


def test_a_reservation_holds_slots_no_other_group_may_use(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle(reserved={"interactive": 0.25})
    reg(t, 8)
    batch = Process(t, "b", "batch")
    assert len(batch.batch(1.0, want=100, ids=100).got) == 6  # 2 of 8 held
    # The group with the reservation finds its slots free though 94 wait.
    chat = Process(t, "c", "interactive", 1.0)
    assert len(chat.batch(2.0, want=3, ids=3).got) == 2
    # Beyond its reservation it waits in turn: a slot batch gives back is
    # shared by weight (1:1 here).
    batch.batch(3.0, want=94, ids=0)
    shares = Counter()
    for r in range(10):
        chat_got = chat.batch(4.0 + r, want=3, release=False, ids=1)
        shares["interactive"] += len(chat_got.got) + len(chat_got.handed)
        shares["batch"] += len(batch.batch(4.5 + r, want=94, ids=0).handed)
    assert shares["interactive"] >= 1
    assert int(client.hget(DOMAIN_KEY, "in_flight")) <= 8


def test_a_reservation_is_served_out_of_turn_when_its_slot_comes_back(make_throttle: MakeThrottle) -> None:
    t = make_throttle(reserved={"interactive": 0.25})
    reg(t, 4)  # one slot held for interactive
    batch = Process(t, "b", "batch")
    chat = Process(t, "c", "interactive")
    assert len(chat.batch(1.0, want=1, ids=1).got) == 1
    assert len(batch.batch(1.1, want=50, ids=50).got) == 3
    assert chat.batch(1.2, want=2, release=False, ids=1).got == []  # its one slot is in use: it queues, behind 47
    # Its own slot back (a success of the first request) goes to its next
    # caller at once, not to the 47 batch callers ahead of it.
    assert len(chat.batch(2.0, want=1, ids=1).got) == 1


def test_reservations_are_checked_before_redis() -> None:
    for bad in ({"default": 0.1}, {"a": 0.95}, {"a": 0.5, "b": 0.5}, {"a b": 0.1}, "a", {"a": math.nan}):
        with pytest.raises(ConfigError):
            ThrottleConfig(reserved=bad)


@pytest.mark.parametrize("weight", [0, -1.0, math.nan, math.inf, 1e-6, 1e6])
def test_bad_weights_are_value_errors(unreachable: Throttle, weight: float) -> None:  # noqa: F811
    with pytest.raises(InvalidArgumentError, match="weight"):
        unreachable.try_acquire(**TARGET, weight=weight)
    with pytest.raises(InvalidArgumentError, match="weight"):
        unreachable.slot(**TARGET, weight=weight)


@pytest.mark.parametrize("weight", [True, "1", None])
def test_weights_that_are_not_numbers_are_type_errors(unreachable: Throttle, weight: Any) -> None:  # noqa: F811
    with pytest.raises(ArgumentTypeError, match="weight"):
        unreachable.acquire(**TARGET, weight=weight)


@pytest.mark.parametrize("group", ["", "a.b", "a~b", "a,b", "a b", "x" * 65, "é"])
def test_group_names_that_cannot_be_stored_safely_are_value_errors(
    unreachable: Throttle,  # noqa: F811
    group: str,
) -> None:
    with pytest.raises(InvalidArgumentError, match="group"):
        unreachable.acquire(**TARGET, group=group)
    with pytest.raises(InvalidArgumentError, match="group"):
        unreachable.try_acquire(**TARGET, group=group)


def test_group_names_that_are_not_strings_are_type_errors(unreachable: Throttle) -> None:  # noqa: F811
    with pytest.raises(ArgumentTypeError, match="group"):
        unreachable.slot(**TARGET, group=3)  # type: ignore[arg-type]


def test_the_throttle_waits_in_its_group(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle(wait_poll_seconds=0.2)
    reg(t, 1)
    with t.slot(**TARGET, group="nightly", weight=2.0) as lease:
        assert lease.ref.group == "nightly"
        assert lease.id.split(".")[0].endswith("~nightly")
        assert int(client.hget(DOMAIN_KEY, "in_flight:nightly")) == 1
        with pytest.raises(AcquireTimeout):
            t.acquire(**TARGET, group="other", timeout=0.3)
    assert client.hget(DOMAIN_KEY, "in_flight:nightly") is None
    nxt = t.try_acquire(**TARGET, group="default")  # the default group's own name
    assert isinstance(nxt, Lease)
    assert nxt.ref.group is None
    nxt.success()


def test_a_budget_goes_to_the_groups_in_their_weighted_turn(make_throttle: MakeThrottle) -> None:
    """Under a budget of requests the first in line claims the budget and
    everyone behind it waits: the claim passes from group to group by tag,
    so a group with a long backlog does not keep it."""
    t = make_throttle()
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=100, requests_per_minute=60, now=0.0)
    procs = [Process(t, "p0", "a", 3.0), Process(t, "p1", "b", 1.0)]
    for p in procs:
        p.batch(1.0, want=100)
    for s in range(40):  # a request a second comes free
        for p in procs:
            p.batch(2.0 + s + (0.1 if p is procs[1] else 0.0), want=100, ids=1)
    shares = _shares(procs)
    assert sum(p.got for p in procs) >= 30
    assert abs(shares["a"] - 0.75) <= 0.1, shares


def test_a_dead_process_s_group_entry_and_leases_go(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle(wait_poll_seconds=1.0, lease_ttl_seconds=5.0, idle_ttl_seconds=0)
    reg(t, 2)
    dead = Process(t, "dead", "nightly")
    assert len(dead.batch(1.0, want=10, ids=10).got) == 2  # and 8 waiting; then it dies
    assert int(client.hget(DOMAIN_KEY, "in_flight:nightly")) == 2
    alive = Process(t, "alive", "chat")
    alive.batch(2.0, want=1, ids=1)
    # Its entry goes with its heartbeat (3 s), its leases with their ttl (5 s):
    # the slots come back to the living, and the group leaves no trace.
    got = alive.batch(7.0, want=1, ids=1)
    assert len(got.got) == 1
    assert client.hget(DOMAIN_KEY, "in_flight:nightly") is None
    assert client.hget(f"{DOMAIN_KEY}:want", "dead~nightly") is None
    assert client.zscore(f"{DOMAIN_KEY}:groups", "nightly") is None


def test_a_slot_is_handed_over_to_a_waiter_of_another_group(make_throttle: MakeThrottle) -> None:
    """Woken on its process's channel: its next heartbeat (30 s) is far off."""
    holder, waiter = make_throttle(), make_throttle(wait_poll_seconds=30.0)  # two processes' throttles
    reg(holder, 1)
    held = holder.acquire(**TARGET, group="batch", timeout=5)
    got: list[Lease] = []
    thread = threading.Thread(target=lambda: got.append(waiter.acquire(**TARGET, group="chat", weight=5, timeout=10)))
    thread.start()
    deadline = time.monotonic() + 5
    while (holder.domain_state(P, M, "chat") or held.state).waiters == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # until it waits in Redis
    held.success()
    thread.join(5)
    assert got
    assert got[0].ref.group == "chat"
    got[0].success()


def test_a_register_without_reservations_keeps_the_stored_ones(make_throttle: MakeThrottle) -> None:
    service = make_throttle(reserved={"interactive": 0.25})
    reg(service, 8)
    batch_job = make_throttle()  # its pods say nothing of reservations
    reg(batch_job, 8)
    assert batch_job.configure(P, M, {})["reserved"] == "interactive=0.25"
    hog = Process(batch_job, "b", "batch")
    assert len(hog.batch(1.0, want=100, ids=100).got) == 6
    assert batch_job.configure(P, M, {"reserved": ""})["reserved"] == ""
    assert len(hog.batch(2.0, want=94, release=False, ids=94).got) == 2
    with pytest.raises(ConfigError, match="16"):
        ThrottleConfig(reserved={f"g{i}": 0.01 for i in range(17)})
