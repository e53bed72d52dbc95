"""The decisions a process's agent takes for its callers (aimd_redis/process_queue.py),
without Redis or a clock: what a batch carries, and who gets what from its reply."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from aimd_redis import ThrottleConfig
from aimd_redis.core import Core
from aimd_redis.errors import RedisOutOfMemoryError, RedisUnavailableError
from aimd_redis.process_queue import LINGER_SECONDS, Batch, ProcessQueue, Waiter
from aimd_redis.replies import BatchReply, DomainBatchReply, Wake
from aimd_redis.structs import Denied, DomainState, Grant, LeaseRef

POLL = 2.0
CORE = Core(ThrottleConfig(wait_poll_seconds=POLL, lease_ttl_seconds=60.0), "aimd")
AT = 1_000_000.0  # Redis's clock in the replies
STATE = DomainState(
    current_limit=4,
    in_flight=4,
    blocked_until=0.0,
    success_streak=0,
    waiters=0,
    rate_limit_ceiling=0,
    consecutive_429s=0,
    rampup_started_at=0.0,
    rampup_active=False,
)


def ref(lease_id: str, tokens: int = 0) -> LeaseRef:
    return LeaseRef(provider_name="openai", model_id="gpt-4o", domain="chat", lease_id=lease_id, tokens=tokens)


class Callers:
    """A process queue whose callers are named by their boxes (str)."""

    def __init__(self) -> None:
        self.q: ProcessQueue[str] = ProcessQueue(CORE)
        self.waiters: dict[str, Waiter[str]] = {}

    def wait(self, *names: str, now: float = 0.0) -> None:
        for name in names:
            self.waiters[name] = Waiter(ref(f"p1.{name}"), name)
            self.q.domain(ref("")).join(self.waiters[name], now)

    def take(self, now: float = 0.0) -> list[Batch[str]]:
        batches = self.q.take(now)
        assert set(batches) <= {("openai", "gpt-4o")}
        return batches.get(("openai", "gpt-4o"), [])

    def reply(self, batches: list[Batch[str]], now: float = 0.0, sent: float = 0.0, **got: Any) -> dict[str, Any]:
        got.setdefault("state", STATE)
        self.q.deliver(batches, BatchReply(registered=True, at=AT, domains=[DomainBatchReply(**got)]), sent, now)
        out, _ = self.q.drain()
        return dict(out)


def test_a_batch_asks_for_the_process_s_callers_oldest_first_and_grants_go_to_them_in_that_order() -> None:
    c = Callers()
    c.wait("a", "b", "c")
    (batch,) = c.take()
    assert batch.items.want == 3
    assert [r.lease_id for r in batch.items.ids] == ["p1.a", "p1.b", "p1.c"]
    answered = c.reply([batch], got=[("p1.a", AT + 60), ("p1.b", AT + 60)])
    assert set(answered) == {"a", "b"}
    assert all(isinstance(g, Grant) and g.expires_at == AT + 60 for g in answered.values())
    # The one left waits on, as one caller for Redis.
    assert [w.box for w in c.q.domain(ref("")).waiters] == ["c"]
    assert c.take() == []  # Redis already knows one waits (want 3, 2 granted)


def test_a_slot_handed_over_goes_to_the_oldest_caller_then_the_next() -> None:
    c = Callers()
    c.wait("a", "b")
    (batch,) = c.take()
    assert c.reply([batch]) == {}
    wake = Wake(expires_at=AT + 4, state=STATE, domain="chat", handed=["p1.h1", "p1.h2"])
    c.q.on_wake(("openai", "gpt-4o"), wake, 0.0)  # heard at 0, Redis's clock AT: the whole window is left
    out, _ = c.q.drain()
    assert [(box, g.ref.lease_id) for box, g in out] == [("a", "p1.h1"), ("b", "p1.h2")]
    # Claimed with the process's next batch, which goes for them alone at
    # the latest LINGER_SECONDS later.
    assert c.take() == []
    assert 0 < c.q.next_due(0.0, 60.0) <= LINGER_SECONDS
    (acks,) = c.take(LINGER_SECONDS)
    assert acks.items.acks == ["p1.h1", "p1.h2"]
    assert acks.items.want == 0


def test_an_ack_rides_with_a_release_and_a_caller_for_a_full_domain_with_the_next_batch() -> None:
    c = Callers()
    c.wait("a", "b")
    (batch,) = c.take()
    full = msgspec.structs.replace(STATE, in_flight=STATE.current_limit, waiters=5)
    c.reply([batch], state=full)
    c.q.on_wake(("openai", "gpt-4o"), Wake(expires_at=AT + 4, state=full, domain="chat", handed=["p1.h1"]), 0.0)
    c.q.drain()
    c.wait("c", now=0.01)  # one more caller: the process is in the queue already
    assert c.take(0.01) == []
    c.q.domain(ref("")).outcome(CORE.outcome_row(ref("p1.old"), "success"), "holder")  # a release goes at once
    (batch,) = c.take(0.02)
    assert [row["lease_id"] for row in batch.items.outcomes] == ["p1.old"]
    assert (batch.items.acks, batch.items.want) == (["p1.h1"], 2)


def test_a_freed_slot_goes_to_redis_with_the_next_caller_s_want_never_straight_to_the_caller() -> None:
    """Redis serves its queue in arrival order: the process's own next caller
    gets the slot only if no older waiter of another process is first."""
    c = Callers()
    c.q.domain(ref("")).outcome(CORE.outcome_row(ref("p1.done"), "success"), "holder")
    c.wait("next")
    assert c.q.drain() == ([], [])  # nothing given locally
    (batch,) = c.take()
    assert [row["lease_id"] for row in batch.items.outcomes] == ["p1.done"]
    assert (batch.items.want, [r.lease_id for r in batch.items.ids]) == (1, ["p1.next"])
    # Another process was first in line: its hand-over, nothing for this one.
    answered = c.reply([batch], rel=[True])
    assert answered == {"holder": (True, True, STATE)}
    assert [w.box for w in c.q.domain(ref("")).waiters] == ["next"]


def test_a_grant_for_a_caller_that_left_goes_to_the_next_or_back_to_redis() -> None:
    c = Callers()
    c.wait("a", "b")
    (batch,) = c.take()
    dom = c.q.domain(ref(""))
    assert dom.leave(c.waiters["a"])
    # a's id granted: b, the oldest still waiting, takes it.
    answered = c.reply([batch], got=[("p1.a", AT + 60)])
    assert list(answered) == ["b"]
    assert answered["b"].ref.lease_id == "p1.a"
    # A grant with nobody left to take it goes back by id.
    c = Callers()
    dom = c.q.domain(ref(""))
    c.wait("c")
    (batch,) = c.take()
    assert dom.leave(c.waiters["c"])
    assert c.reply([batch], got=[("p1.c", AT + 60)]) == {}
    (back,) = c.take()
    assert [(row["lease_id"], row["outcome"]) for row in back.items.outcomes] == [("p1.c", "abandon")]
    assert back.items.want == 0


def test_a_slot_handed_over_when_nobody_waits_any_more_goes_back() -> None:
    c = Callers()
    c.wait("a")
    (batch,) = c.take()
    c.reply([batch])
    assert c.q.domain(ref("")).leave(c.waiters["a"])
    c.q.on_wake(("openai", "gpt-4o"), Wake(expires_at=AT + 4, state=STATE, domain="chat", handed=["p1.h1"]), 0.0)
    assert c.q.drain() == ([], [])
    (back,) = c.take()
    assert [(row["lease_id"], row["outcome"]) for row in back.items.outcomes] == [("p1.h1", "abandon")]
    assert back.items.acks == []


def test_a_slot_handed_over_too_late_in_its_claim_window_is_acked_before_its_caller_uses_it() -> None:
    c = Callers()
    c.wait("a")
    (batch,) = c.take()
    c.reply([batch], sent=0.0)
    # Heard Redis at AT when local time was 0; 3.5 s later a slot whose window
    # ends at AT + 4 may have 0.5 s left: too little to claim in the background.
    c.q.on_wake(("openai", "gpt-4o"), Wake(expires_at=AT + 4, state=STATE, domain="chat", handed=["p1.h1"]), 3.5)
    assert c.q.drain() == ([], [])
    (ack,) = c.take(3.5)
    assert ack.items.acks == ["p1.h1"]
    answered = c.reply([ack], now=3.6, sent=3.5, ack=[AT + 63.5])
    assert answered["a"].ref.lease_id == "p1.h1"
    assert answered["a"].expires_at == AT + 63.5  # the whole lease ttl, from the ack
    # One whose window closed before its ack (it went on) goes to nobody.
    c.wait("b")
    c.q.on_wake(("openai", "gpt-4o"), Wake(expires_at=AT + 5, state=STATE, domain="chat", handed=["p1.h2"]), 8.0)
    (ack,) = c.take(8.0)
    assert c.reply([ack], now=8.1, sent=8.0, ack=[0.0]) == {}
    assert [w.box for w in c.q.domain(ref("")).waiters] == ["b"]


@pytest.mark.parametrize(
    ("error", "ids_back"),
    [(RedisUnavailableError("cut off"), True), (RedisOutOfMemoryError("OOM"), False)],
)
def test_a_failed_batch_fails_every_item_with_its_error_and_gives_back_what_may_have_been_granted(
    error: Exception, ids_back: bool
) -> None:
    c = Callers()
    dom = c.q.domain(ref(""))
    c.wait("a", "b")
    dom.outcome(CORE.outcome_row(ref("p1.old"), "success"), "holder")
    dom.try_acquire(ref("p1.try"), "trier")
    dom.give_back(ref("p1.unwanted"))
    (batch,) = c.take()
    c.q.failed([batch], error)
    out, _ = c.q.drain()
    assert dict(out) == {"a": error, "b": error, "holder": error, "trier": error}
    assert not dom.waiters
    (again,) = c.take()
    backs = [row["lease_id"] for row in again.items.outcomes]
    # A give-back is sent until Redis has it; ids a batch cut off may have
    # granted go back by id; a batch refused before it ran granted nothing.
    assert backs == (["p1.unwanted", "p1.try", "p1.a", "p1.b"] if ids_back else ["p1.unwanted"])
    assert all(row["outcome"] == "abandon" for row in again.items.outcomes)
    assert again.items.want == 0


def test_a_try_is_answered_with_its_own_result() -> None:
    c = Callers()
    c.q.domain(ref("")).try_acquire(ref("p1.t1"), "t1")
    c.q.domain(ref("")).try_acquire(ref("p1.t2"), "t2")
    (batch,) = c.take()
    assert [r.lease_id for r in batch.items.tries] == ["p1.t1", "p1.t2"]
    answered = c.reply([batch], tries=[("granted", AT + 60), ("at_capacity", 0.0)])
    assert isinstance(answered["t1"], Grant)
    assert isinstance(answered["t2"], Denied)


def test_waiting_callers_cost_one_batch_per_wait_poll_and_nothing_between() -> None:
    c = Callers()
    c.wait(*"abcdefgh")
    (batch,) = c.take(0.0)
    assert len(batch.items.ids) == 8  # nothing known of the domain: an id for each
    c.reply([batch])
    assert c.take(0.1) == []
    assert c.q.next_due(0.1, 99.0) == pytest.approx(POLL - 0.1)
    (beat,) = c.take(POLL)
    assert beat.items.want == 8
    # The domain looked full: a few ids, not one per caller.
    assert len(beat.items.ids) == 4
    # A cooldown's end told by a wake-up brings the next batch forward.
    c.reply([beat], now=POLL)
    c.q.on_wake(("openai", "gpt-4o"), Wake(wait=0.5, domain="chat"), POLL + 0.1)
    assert c.q.next_due(POLL + 0.1, 99.0) == pytest.approx(0.5)


def test_a_domain_with_nothing_pending_is_forgotten() -> None:
    c = Callers()
    c.q.domain(ref("")).try_acquire(ref("p1.t1"), "t1")
    (batch,) = c.take()
    c.reply([batch], tries=[("granted", AT + 60)])
    assert c.take() == []
    assert c.q.domains == {}
    assert c.q.next_due(0.0, 99.0) == 99.0
