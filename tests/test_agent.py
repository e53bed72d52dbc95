"""One agent per process: one queue entry and one heartbeat per process and
domain, FIFO across processes to within a batch, forks."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import redis

from aimd_redis import Throttle, ThrottleConfig
from aimd_redis.core import Core, DomainItems
from aimd_redis.replies import DomainBatchReply
from aimd_redis.structs import LeaseRef

from .conftest import MakeThrottle
from .helpers import M, P, reg

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
DOMAIN_KEY = "aimd:{openai/gpt-4o}:chat"


def _batch(
    t: Throttle,
    client_id: str,
    now: float,
    *,
    want: int = 0,
    ids: tuple[str, ...] = (),
    tries: tuple[str, ...] = (),
    releases: tuple[str, ...] = (),
    acks: tuple[str, ...] = (),
) -> DomainBatchReply:
    """One batch of process ``client_id`` for the domain, at ``now``."""

    def ref(lease_id: str) -> LeaseRef:
        return LeaseRef(provider_name=P, model_id=M, domain="chat", lease_id=lease_id)

    items = DomainItems(
        name="chat",
        outcomes=[Core.outcome_row(ref(i), "success") for i in releases],
        acks=list(acks),
        tries=[ref(i) for i in tries],
        want=want,
        ids=[ref(i) for i in ids],
        tokens=0,
    )
    reply = t._run(t._core.batch_call(P, M, client_id, [items], now))
    return t._core.parse_batch(P, M, reply).domains[0]


def _handed(got: DomainBatchReply) -> list[str]:
    return [lease_id for lease_id, _ in got.handed]


def test_a_process_waits_as_one_entry_whose_count_grows_while_nobody_else_queues(
    make_throttle: MakeThrottle, client: Any
) -> None:
    t = make_throttle()
    reg(t, 1)
    assert [i for i, _ in _batch(t, "h", 1.0, tries=("h.1",)).tries] == ["granted"]
    _batch(t, "a", 1.0, want=1, ids=("a.1",))
    _batch(t, "a", 1.1, want=3, ids=("a.1", "a.2", "a.3"))  # two more callers, nobody else between
    assert client.zcard(f"{DOMAIN_KEY}:queue") == 1
    assert client.hget(f"{DOMAIN_KEY}:want", "a") in (b"3=0:3", "3=0:3")  # one segment: tags 0, 1, 2
    assert int(client.hget(DOMAIN_KEY, "waiters")) == 3
    _batch(t, "a", 1.2, want=1, ids=("a.1",))  # two gave up: the newest go
    assert int(client.hget(DOMAIN_KEY, "waiters")) == 1


def test_processes_are_served_in_arrival_order_to_within_a_batch(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 2)
    held = _batch(t, "h", 1.0, want=2, ids=("h.1", "h.2")).got
    assert len(held) == 2
    _batch(t, "a", 1.1, want=1, ids=("a.1",))  # tag 0
    _batch(t, "b", 1.2, want=1, ids=("b.1",))  # tag 1
    _batch(t, "a", 1.3, want=2, ids=("a.1", "a.2"))  # a's second caller: tag 2, behind b's
    # One batch gives both slots back (and h asks for one more): they go to
    # a's first caller and to b, not to a's second, nor to h.
    got = _batch(t, "h", 1.4, releases=("h.1", "h.2"), want=1, ids=("h.3",))
    assert got.rel == [True, True]
    assert got.got == []
    a, b = _batch(t, "a", 1.5, want=2, ids=("a.1", "a.2")), _batch(t, "b", 1.5, want=1, ids=("b.1",))
    assert (len(_handed(a)), len(_handed(b))) == (1, 1)
    assert a.got == []
    assert b.got == []


def test_several_slots_go_to_one_process_in_one_wake_up(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    reg(t, 3)
    assert len(_batch(t, "h", 1.0, want=3, ids=("h.1", "h.2", "h.3")).got) == 3
    _batch(t, "a", 1.1, want=3, ids=("a.1", "a.2", "a.3"))
    _batch(t, "h", 1.2, releases=("h.1", "h.2", "h.3"))
    a = _batch(t, "a", 1.3, want=3, ids=("a.1", "a.2", "a.3"))
    assert len(_handed(a)) == 3
    # Acked: each lasts a lease ttl now, and is listed no more.
    acked = _batch(t, "a", 1.4, acks=tuple(_handed(a)))
    assert all(expiry == 1.4 + t.config.lease_ttl_seconds for expiry in acked.ack)
    assert acked.handed == []
    assert int(client.hget(DOMAIN_KEY, "in_flight")) == 3


def test_a_dead_process_s_entry_goes_with_its_heartbeat(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle(wait_poll_seconds=1.0)  # an entry lives 3 s without a batch
    reg(t, 1)
    assert len(_batch(t, "h", 10.0, want=1, ids=("h.1",)).got) == 1
    _batch(t, "dead", 10.0, want=5, ids=("dead.1",))
    _batch(t, "b", 11.0, want=1, ids=("b.1",))
    _batch(t, "b", 12.5, want=1, ids=("b.1",))  # b beats; dead does not
    got = _batch(t, "h", 13.5, releases=("h.1",))
    assert got.rel == [True]
    assert client.hget(f"{DOMAIN_KEY}:want", "dead") is None
    assert len(_handed(_batch(t, "b", 13.6, want=1, ids=("b.1",)))) == 1  # the slot went to b, past dead
    assert int(client.hget(DOMAIN_KEY, "waiters")) == 0


#: The parent's throttle, which forked children inherit.
_INHERITED: list[Throttle] = []


def _three_requests_inherited(_: int) -> float:
    return _three_requests(_INHERITED[0])


def _three_requests(t: Throttle) -> float:
    started = time.monotonic()
    for _ in range(3):
        with t.slot(**TARGET, timeout=30):
            time.sleep(0.02)
    return time.monotonic() - started


def test_a_forked_child_uses_the_parent_s_throttle_at_full_speed(real_redis_url: str) -> None:
    # Re-checks every 5 s: a child that missed its wake-ups would wait them out.
    t = Throttle(real_redis_url, config=ThrottleConfig(wait_poll_seconds=5))
    reg(t, 1)
    _three_requests(t)  # the parent's agent, waker and pool exist before the fork
    _INHERITED[:] = [t]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        took = pool.map(_three_requests_inherited, range(4))
    assert max(took) < 4  # 12 requests of 20 ms, one at a time; no 5 s re-check waited out
    assert _three_requests(t) < 2  # and the parent goes on as before
    t.close()
    client = redis.Redis.from_url(real_redis_url)
    assert client.hget(DOMAIN_KEY, "in_flight") == b"0"
    assert client.zcard(f"{DOMAIN_KEY}:queue") == 0


def test_a_client_passed_in_never_has_more_than_three_connections_of_the_throttle(real_redis_url: str) -> None:
    mine = redis.Redis.from_url(f"{real_redis_url}?client_name=gated")  # its own pool has no bound
    t = Throttle(mine, config=ThrottleConfig(wait_poll_seconds=0.2))
    reg(t, 2)
    admin = redis.Redis.from_url(real_redis_url, decode_responses=True)
    most = 0

    def busy(i: int) -> None:
        for _ in range(5):
            with t.slot(**TARGET, timeout=30):  # the agent's path
                t.domain_state(P, M, "chat")  # plain reads, renewals: the one other connection
                time.sleep(0.01)

    threads = [threading.Thread(target=busy, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        most = max(most, sum(1 for c in admin.client_list() if c.get("name") == "gated"))
        time.sleep(0.02)
    assert 2 <= most <= 3  # the batches, one other call, the wake-ups
    t.close()
