"""Fair share across groups: edge cases of the virtual tags, the
reservations and the hand-over of a group's slots."""

from __future__ import annotations

from typing import Any

import pytest

from aimd_redis import Denied, Lease, ThrottleConfig
from aimd_redis.errors import ConfigError
from aimd_redis.replies import DomainBatchReply

from .conftest import MakeThrottle
from .helpers import M, P, reg
from .test_groups import DOMAIN_KEY, TARGET, Process


def _handed(client: Any, entry: str) -> list[str]:
    text = client.hget(f"{DOMAIN_KEY}:handed", entry)
    return text.decode().split(",") if text else []


def test_a_head_whose_tag_text_rounds_up_still_takes_the_slot_it_is_owed(
    make_throttle: MakeThrottle, client: Any
) -> None:
    """An entry's start tag is kept as text in :want and as its score in
    :queue; when the text comes out later than the score and a group joins
    at that score, the entry, first in line, must still get the freed slot
    (not none, leaving it free while 50 wait)."""
    t = make_throttle()
    reg(t, 1)
    holder = Process(t, "h")
    holder.batch(1.0, want=1)
    slow = Process(t, "s", "slow", 0.001)  # one request moves its tag by 1000
    slow.batch(1.1, want=3, ids=0)
    holder.batch(1.2, want=0)  # to slow: its next tag is 1000
    fast = Process(t, "a", "fast", 600.0)  # joins at 1000, its steps 1/600
    fast.batch(1.3, want=50, ids=0)
    late = Process(t, "d", "late")
    late.batch(1.4, want=5, ids=0)  # joins beside them
    for r in range(12):  # whoever holds the slot gives it back: it is taken again at once
        for p in (slow, fast, late):
            p.batch(2.0 + r + (0.1 if p is fast else 0.2 if p is late else 0.0), want=5, ids=1)
            assert int(client.hget(DOMAIN_KEY, "in_flight")) == 1
    # A single call that serves the queue (acquire.lua, release.lua) was a Lua error.
    assert isinstance(t.try_acquire(**TARGET, now=20.0), Denied)


def _rounds_until_served(flood: Process, late: Process, start: float, rounds: int) -> int:
    """Rounds of the flood giving back its slot and asking again until the
    late process's one caller has a slot."""
    for r in range(rounds):
        flood.batch(start + r, want=100)
        if late.batch(start + r + 0.5, want=1 - late.got, release=False, ids=0).handed or late.got:
            return r + 1
    return rounds


def test_a_group_whose_callers_all_gave_up_is_not_served_behind_their_tags(make_throttle: MakeThrottle) -> None:
    """Tags a group no longer needs are given back: 50 callers that gave up
    must not push the group's next caller 50 tags back."""
    t = make_throttle()
    reg(t, 1)
    flood = Process(t, "f")
    flood.batch(1.0, want=100)
    quitter = Process(t, "q", "b")
    quitter.batch(1.1, want=50, ids=0)
    quitter.batch(1.2, want=0, ids=0)  # every caller timed out
    quitter.batch(1.3, want=1, ids=0)  # a new one: it joins next to the flood's next request
    assert _rounds_until_served(flood, quitter, 2.0, 60) <= 2


def test_reservations_are_judged_as_stored(make_throttle: MakeThrottle) -> None:
    """Shares are stored to the millionth: a set that adds up to 0.9 only
    before rounding is refused at once, not by every register later (as a
    corrupt cap hash); one at the bound as stored is taken."""
    with pytest.raises(ConfigError, match="add up"):
        ThrottleConfig(reserved={"a": 0.2999996, "b": 0.2999996, "c": 0.3000008})
    t = make_throttle(reserved={"a": 0.4499996, "b": 0.45})
    reg(t, 10)
    assert isinstance(t.try_acquire(**TARGET, group="c", now=1.0), Lease)


def _one_batch(procs: list[Process], now: float, wants: list[int]) -> list[DomainBatchReply]:
    """One batch of one process carrying an item per group (the processes
    share a client id): each gives back what it holds and waits for its want."""
    items = [p.items(want=want, ids=want) for p, want in zip(procs, wants, strict=True)]
    t = procs[0].t
    reply = t._run(t._core.batch_call(P, M, procs[0].client_id, items, now))
    got = t._core.parse_batch(P, M, reply).domains
    for p, d in zip(procs, got, strict=True):
        p.took(d)
    return got


def test_a_slot_one_group_frees_for_another_in_the_same_batch_is_counted_once(
    make_throttle: MakeThrottle, client: Any
) -> None:
    """A process gives back a slot of group a and waits for two of group b
    in one batch: the slot goes to b's entry, which then waits for one more,
    not two (it would be handed a slot nobody waits for)."""
    t = make_throttle()
    reg(t, 1)
    a, b = Process(t, "p", "a"), Process(t, "p", "b")
    a.batch(1.0, want=1)
    b.batch(1.1, want=2, ids=0)
    _one_batch([a, b], 1.2, [0, 2])
    assert client.hget(f"{DOMAIN_KEY}:want", "p~b").decode().startswith("1=")
    assert b.got == 1  # in the reply, as well as by its wake-up


def test_an_acquire_run_twice_leaves_its_group_s_count_right(make_throttle: MakeThrottle, client: Any) -> None:
    """An acquire that runs again with the same lease id (a reply lost, the
    command retried) ends the lease: the group counts one lease fewer too."""
    t = make_throttle()
    reg(t, 4)
    held = t.try_acquire(**TARGET, group="g", now=1.0)
    assert isinstance(held, Lease)
    call, _ = t._core.acquire_call(P, M, "chat", 2.0, t._core.new_lease_id("x", "g"), group="g")
    t._run(call)
    t._run(call)
    leases = [i for i in client.zrange(f"{DOMAIN_KEY}:leases", 0, -1) if b"~g." in i]
    assert int(client.hget(DOMAIN_KEY, "in_flight:g")) == len(leases)


def test_arrival_order_within_a_group_holds_at_large_tags(make_throttle: MakeThrottle, client: Any) -> None:
    """Tags grow for as long as the queue never empties (here to 10^7 in a
    few batches, by a group of weight 0.001). A process's new callers join
    the group behind another process's callers who came before them, even
    when a step (1/1000) is smaller than a billionth of the tags."""
    t = make_throttle()
    reg(t, 1000)
    slow = Process(t, "s", "slow", 0.001)
    for r in range(11):  # each batch 1000 requests of 1000 each
        slow.batch(1.0 + r / 100, want=100_000, ids=1000)
    assert float(client.zscore(f"{DOMAIN_KEY}:queue", "s~slow")) >= 1e7
    first, second, third = (Process(t, n, "fast", 1000.0) for n in ("a", "b", "c"))
    first.batch(2.0, want=1, ids=0)
    second.batch(2.1, want=5, ids=0)
    first.batch(2.2, want=2, ids=0)  # its second caller comes after second's five
    third.batch(2.3, want=1, ids=0)
    want = {e: client.hget(f"{DOMAIN_KEY}:want", e).decode() for e in ("a~fast", "b~fast", "c~fast")}
    second_start = float(want["b~fast"].split("=")[1].split(":")[0])
    last_of_second = second_start + 4 / 1000
    newer = [float(seg.split(":")[0]) for seg in want["a~fast"].split("=")[1].split(",")[1:]]
    assert newer, want
    assert newer[0] > last_of_second, want
    assert float(client.zscore(f"{DOMAIN_KEY}:queue", "c~fast")) > last_of_second, want


def test_a_reserved_group_s_single_acquire_takes_its_slot_while_others_wait(make_throttle: MakeThrottle) -> None:
    """A reservation's slots are its group's at once, also for an acquire
    that runs on its own (try_acquire at a given time), not only for one
    that rides in its process's batch."""
    t = make_throttle(reserved={"interactive": 0.25})
    reg(t, 4)  # one slot held for interactive
    flood = Process(t, "b", "batch")
    assert len(flood.batch(1.0, want=10, ids=10).got) == 3  # and 7 waiting
    got = t.try_acquire(**TARGET, group="interactive", now=2.0)
    assert isinstance(got, Lease), got
    assert isinstance(t.try_acquire(**TARGET, group="batch", now=2.1), Denied)


def test_a_heartbeat_at_a_weight_with_many_digits_changes_nothing(make_throttle: MakeThrottle, client: Any) -> None:
    """The weight as stored in :want has 14 digits: the same weight sent
    again is no new weight (which would rewrite the entry, segment by
    segment, at every heartbeat)."""
    t = make_throttle()
    reg(t, 1)
    holder = Process(t, "h")
    holder.batch(1.0, want=1)
    third = Process(t, "p", "g", 1 / 3)
    third.batch(1.1, want=5, ids=0)
    holder.batch(1.2, want=0)  # one to the group, not acked yet
    score = client.zscore(f"{DOMAIN_KEY}:queue", "p~g")
    before = client.hget(f"{DOMAIN_KEY}:want", "p~g")
    client.hset(f"{DOMAIN_KEY}:want", "p~g", before + b",")  # a rewrite would show
    third.batch(1.3, want=5, release=False, ids=0)  # the same five callers
    assert client.hget(f"{DOMAIN_KEY}:want", "p~g") == before + b","
    assert client.zscore(f"{DOMAIN_KEY}:queue", "p~g") == score


@pytest.mark.parametrize("keeps", [0, 1])
def test_tags_given_back_never_put_a_newcomer_ahead_of_its_group(
    make_throttle: MakeThrottle, client: Any, keeps: int
) -> None:
    """A process whose callers give up hands back only the tags after the
    others of its group: a caller of the group that comes next is served
    after every caller of the group that came before it."""
    t = make_throttle()
    reg(t, 1)
    Process(t, "h").batch(1.0, want=1)
    first, second, third = (Process(t, n, "g") for n in ("a", "b", "c"))
    first.batch(1.1, want=2, ids=0)  # tags 0, 1
    second.batch(1.2, want=3, ids=0)  # 2, 3, 4
    first.batch(1.3, want=4, ids=0)  # and 5, 6
    first.batch(1.4, want=keeps, ids=0)  # all but `keeps` give up
    third.batch(1.5, want=1, ids=0)
    assert client.zscore(f"{DOMAIN_KEY}:queue", "c~g") >= 5


def test_a_dead_process_s_backlog_does_not_push_its_group_back(make_throttle: MakeThrottle, client: Any) -> None:
    """A process that died with 100 callers of a group waiting leaves the
    queue with its heartbeat; the group's next caller joins next to the
    others, not behind the 100 tags the dead process no longer needs."""
    t = make_throttle(wait_poll_seconds=1.0)
    reg(t, 1)
    Process(t, "h").batch(1.0, want=1)
    others = Process(t, "o", "o")
    others.batch(1.0, want=50, ids=0)
    Process(t, "dead", "g").batch(1.1, want=100, ids=0)  # then it dies
    others.batch(3.0, want=50, ids=0)
    others.batch(5.0, want=50, ids=0)  # the dead one's heartbeat is late: its entry goes
    assert client.hget(f"{DOMAIN_KEY}:want", "dead~g") is None
    Process(t, "new", "g").batch(5.1, want=1, ids=0)
    assert client.zscore(f"{DOMAIN_KEY}:queue", "new~g") <= 1
