"""Fleet-wide FIFO waiting: hand-over on release, wake-ups, no herd, no leaks."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import threading
import time
from typing import Any

import pytest
import redis

from aimd_redis import AcquireTimeout, AsyncThrottle, Throttle, ThrottleConfig
from aimd_redis.core import Core
from aimd_redis.structs import Grant, LeaseRef, Queued

from .helpers import M, P, script_calls, wait_until

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
DOMAIN_KEY = "aimd:{openai/gpt-4o}:chat"
# Re-checks so rare that anything happening within a test came from a wake-up.
QUIET = ThrottleConfig(wait_poll_seconds=30)
# As quiet, with a claim window (2 x wait_poll) well short of the lease ttl.
LONG_LEASES = ThrottleConfig(wait_poll_seconds=30, lease_ttl_seconds=300)


def _waiters(client: redis.Redis) -> int:
    return int(client.hget(DOMAIN_KEY, "waiters") or 0)


async def _eventually(condition: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _queue_and_record(url: str, name: str) -> None:
    t = Throttle(url, config=QUIET)
    with t.slot(**TARGET, timeout=60):
        redis.Redis.from_url(url).rpush("granted", name)
    t.close()


def test_processes_are_served_in_arrival_order(real_redis: redis.Redis, real_redis_url: str) -> None:
    t = Throttle(real_redis, config=QUIET)
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = t.acquire(**TARGET, timeout=0)
    ctx = multiprocessing.get_context("spawn")
    children = []
    for i in range(4):
        child = ctx.Process(target=_queue_and_record, args=(real_redis_url, f"p{i}"))
        child.start()
        children.append(child)
        wait_until(lambda n=i + 1: _waiters(real_redis) == n, "child not queued", 30)
    held.success()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0, 0, 0]
    assert real_redis.lrange("granted", 0, -1) == [b"p0", b"p1", b"p2", b"p3"]
    assert (_waiters(real_redis), real_redis.hget(DOMAIN_KEY, "in_flight")) == (0, b"0")


async def test_one_release_serves_one_waiter_of_the_same_process_in_the_same_call(
    real_redis: redis.Redis, real_redis_url: str
) -> None:
    async with AsyncThrottle(real_redis_url, config=QUIET) as t:
        await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
        held = await t.acquire(**TARGET, timeout=0)
        waiters = [asyncio.create_task(t.acquire(**TARGET)) for _ in range(50)]
        await _eventually(lambda: _waiters(real_redis) == 50)
        assert real_redis.zcard(f"{DOMAIN_KEY}:queue") == 1  # one entry for the process, not 50
        real_redis.config_resetstat()
        await held.success()
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED, timeout=5)
        assert len(done) == 1
        first = done.pop().result()
        # The release's batch gave the slot to the process's oldest waiter; no
        # other waiter moved.
        await asyncio.sleep(0.05)
        assert script_calls(real_redis) == 1
        assert _waiters(real_redis) == 49
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await first.success()
    assert real_redis.zcard(f"{DOMAIN_KEY}:queue") == 0
    assert (_waiters(real_redis), real_redis.hget(DOMAIN_KEY, "in_flight")) == (0, b"0")


def _lease_expiry(client: redis.Redis, lease_id: str) -> float:
    return float(client.zscore(f"{DOMAIN_KEY}:leases", lease_id) or 0)


def _handed_over(holder: Throttle, t: Throttle, client: redis.Redis, count: int = 1) -> list[Any]:
    """Leases of ``t`` that ``holder``'s release handed to its waiting acquires."""
    held = [holder.acquire(**TARGET, timeout=0) for _ in range(count)]
    got: list[Any] = []
    waiters = [threading.Thread(target=lambda: got.append(t.acquire(**TARGET, timeout=10))) for _ in range(count)]
    for waiter in waiters:
        waiter.start()
    wait_until(lambda: _waiters(client) == count, "not queued", 10)
    # The holder's releases go in one batch: queued first, then sent together
    # (submitted one by one, the flusher could take the first alone).
    agent = holder._agent_for()
    boxes = [agent.submit(lease.ref, holder._core.outcome_row(lease.ref, "success"), now=False) for lease in held]
    agent.send(held[-1].ref, boxes[-1])
    for box in boxes:
        box.get(10)
    for waiter in waiters:
        waiter.join(10)
    return got


def test_slots_handed_over_are_used_at_once_and_acked_to_a_whole_lease_ttl(
    real_redis: redis.Redis, real_redis_url: str
) -> None:
    holder, t = Throttle(real_redis_url, config=LONG_LEASES), Throttle(real_redis_url, config=LONG_LEASES)
    holder.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=3)
    real_redis.config_resetstat()
    leases = _handed_over(holder, t, real_redis, count=3)
    assert len(leases) == 3
    # Three slots in one wake-up: all handed with the claim window (2 x wait_poll, 60 s).
    assert all(lease.granted_at == leases[0].granted_at for lease in leases)
    # Acked by the next batch: a whole lease ttl (300 s) in Redis, and on the leases.
    for lease in leases:
        wait_until(lambda lease=lease: _lease_expiry(real_redis, lease.id) > lease.granted_at + 200, "not acked", 10)
        wait_until(lambda lease=lease: lease.expires_at > lease.granted_at + 200, "not told", 10)
    assert all(lease.success().released for lease in leases)
    assert real_redis.hget(DOMAIN_KEY, "in_flight") == b"0"
    holder.close()
    t.close()


def test_a_lost_wake_up_is_found_by_the_next_heartbeat(real_redis: redis.Redis, real_redis_url: str) -> None:
    holder = Throttle(real_redis_url, config=QUIET)
    t = Throttle(real_redis_url, config=ThrottleConfig(wait_poll_seconds=0.3))
    t._waker = None  # hears no wake-up: its heartbeat's batch finds the slot
    holder.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    started = time.monotonic()
    leases = _handed_over(holder, t, real_redis, count=2)
    assert len(leases) == 2
    assert time.monotonic() - started < 5
    assert all(lease.success().released for lease in leases)
    assert (_waiters(real_redis), real_redis.hget(DOMAIN_KEY, "in_flight")) == (0, b"0")
    holder.close()
    t.close()


def test_a_dead_wake_up_costs_one_batch_and_no_slot(real_redis: redis.Redis, real_redis_url: str) -> None:
    t = Throttle(real_redis_url, config=QUIET)
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = t.acquire(**TARGET, timeout=0)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(t.acquire(**TARGET, timeout=20)))
    waiter.start()
    wait_until(lambda: _waiters(real_redis) == 1, "not queued", 10)
    now = float(real_redis.time()[0])
    real_redis.config_resetstat()
    # A wake-up for a hand-over whose window has ended (its slot went on).
    message = {"expires_at": now - 1, "state": _STATE, "domain": "chat", "handed": [f"{t._client_id}.h99"]}
    real_redis.publish(t._core.keys(P, M).wake_prefix + t._client_id, f"{t._client_id} {json.dumps(message)}")
    time.sleep(0.5)  # waiting is the point: the waiter is to be acked first, refused, and wait on
    calls = script_calls(real_redis)
    assert not got
    held.success()
    waiter.join(10)
    assert got[0].success().released
    t.close()
    assert calls == 1  # the ack, refused


def test_an_ack_that_finds_its_slot_gone_says_so(
    real_redis: redis.Redis, real_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    holder, t = Throttle(real_redis_url, config=LONG_LEASES), Throttle(real_redis_url, config=LONG_LEASES)
    holder.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    run = t._run

    def reclaimed_first(call: Any) -> Any:
        if call.script == "batch" and "ack" in call.args[-1] and '"ack":[]' not in call.args[-1]:
            real_redis.zrem(f"{DOMAIN_KEY}:leases", *real_redis.zrange(f"{DOMAIN_KEY}:leases", 0, -1))
        return run(call)

    t._run = reclaimed_first  # type: ignore[method-assign]
    t._agent = None  # made again with the run above
    with caplog.at_level(logging.WARNING, logger="aimd_redis"):
        (lease,) = _handed_over(holder, t, real_redis)
        wait_until(lambda: "went on before its ack" in caplog.text, "not said", 10)
    assert not lease.success().released
    holder.close()
    t.close()


_STATE = {
    "current_limit": 1,
    "in_flight": 1,
    "blocked_until": 0,
    "success_streak": 0,
    "waiters": 0,
    "rate_limit_ceiling": 0,
    "consecutive_429s": 0,
    "rampup_started_at": 0,
    "rampup_active": False,
}


def _queued_at(at: float) -> str:
    """An acquire script's reply: queued at ``at``."""
    return json.dumps({"status": "queued", "value": 0, "at": at, "state": _STATE})


def _handed(waiter: str, expiry: float) -> str:
    """A wake-up: a slot handed to ``waiter`` until ``expiry``."""
    return f"{waiter} {json.dumps({'expires_at': expiry, 'state': _STATE})}"


@pytest.mark.parametrize(
    ("published_after_queued", "window", "since_asked", "fresh"),
    [
        (0.5, 60, 0.2, True),  # the common case: woken soon after its last re-check
        (25.0, 60, 29.9, True),  # late in the wait, but early in the window
        (0.5, 60, 30.6, False),  # half the window may be gone: claimed first
        (-40.0, 60, 0.1, False),  # a stale wake-up, published before the waiter last asked
        (0.5, 4, 0.2, False),  # a releaser with a short window (another configuration)
    ],
)
def test_a_hand_over_is_used_before_its_claim_only_with_half_its_window_left(
    published_after_queued: float, window: float, since_asked: float, fresh: bool
) -> None:
    core = Core(LONG_LEASES, "aimd")  # its own claim window: 60 s
    ref = LeaseRef(provider_name=P, model_id=M, domain="chat", lease_id="c.1")
    queued = core.parse_acquire(ref, _queued_at(1000.0))
    assert isinstance(queued, Queued)
    expiry = 1000.0 + published_after_queued + window  # the window runs from the hand-over
    handed = core.parse_wake(ref, _handed("c.1", expiry))
    assert isinstance(handed, Grant)
    left = core.background_claim(handed.expires_at, queued.at, since_asked)
    assert (left is not None) is fresh
    if fresh:
        assert left == pytest.approx(expiry - 1000.0 - since_asked)


@pytest.mark.parametrize(("left", "fresh"), [(0.9, False), (1.1, True)])
def test_a_background_claim_is_given_at_least_a_second(left: float, fresh: bool) -> None:
    core = Core(ThrottleConfig(wait_poll_seconds=0.75), "aimd")  # a claim window of 1.5 s
    ref = LeaseRef(provider_name=P, model_id=M, domain="chat", lease_id="c.1")
    queued = core.parse_acquire(ref, _queued_at(1000.0))
    assert isinstance(queued, Queued)
    handed = core.parse_wake(ref, _handed("c.1", 1000.0 + left))
    assert isinstance(handed, Grant)
    assert (core.background_claim(handed.expires_at, queued.at, 0.0) is not None) is fresh


def test_a_timed_out_waiter_leaves_no_trace(client: redis.Redis) -> None:
    t = Throttle(client, config=QUIET)
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = t.acquire(**TARGET, timeout=0)
    with pytest.raises(AcquireTimeout, match="timed out"):
        t.acquire(**TARGET, timeout=0.2)
    assert client.zcard(f"{DOMAIN_KEY}:queue") == 0
    assert _waiters(client) == 0
    assert held.success().released
    assert client.hget(DOMAIN_KEY, "in_flight") == b"0"


async def test_a_slot_handed_over_as_its_waiter_gives_up_goes_to_the_next(
    real_redis: redis.Redis, real_redis_url: str
) -> None:
    async with AsyncThrottle(real_redis_url, config=QUIET) as t, AsyncThrottle(real_redis_url, config=QUIET) as deaf:
        deaf._waker = None  # never hears its hand-over: the race, made certain
        await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
        held = await t.acquire(**TARGET, timeout=0)
        giving_up = asyncio.create_task(deaf.acquire(**TARGET))
        await _eventually(lambda: _waiters(real_redis) == 1)
        patient = asyncio.create_task(t.acquire(**TARGET, timeout=10))
        await _eventually(lambda: _waiters(real_redis) == 2)
        await held.success()  # handed to the deaf waiter...
        await _eventually(lambda: _waiters(real_redis) == 1)
        giving_up.cancel()  # ...who gives up without having seen it
        with pytest.raises(asyncio.CancelledError):
            await giving_up
        lease = await patient  # the slot went on to the next waiter
        assert real_redis.hget(DOMAIN_KEY, "in_flight") == b"1"
        assert (await lease.success()).released
    assert (_waiters(real_redis), real_redis.hget(DOMAIN_KEY, "in_flight")) == (0, b"0")


async def test_the_end_of_a_cooldown_wakes_the_queue(make_async_throttle: Any) -> None:
    t = make_async_throttle(wait_poll_seconds=30)
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=4)
    a, b = await t.acquire(**TARGET, timeout=0), await t.acquire(**TARGET, timeout=0)
    await a.rate_limited(retry_after=0.3)  # limit 4 -> 3, blocked for 0.3 s
    started = time.monotonic()
    waiter = asyncio.create_task(t.acquire(**TARGET, timeout=10))
    await asyncio.sleep(0.05)
    await b.success()  # during the cooldown: tells the first waiter when it ends
    lease = await waiter
    waited = time.monotonic() - started
    assert 0.25 <= waited < 2  # woken at the cooldown's end, not by a 30 s re-check
    await lease.success()


async def test_waiters_that_start_together_on_a_new_client_are_woken(
    real_redis: redis.Redis, real_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncThrottle(real_redis_url, config=QUIET) as holder, AsyncThrottle(real_redis_url, config=QUIET) as t:
        await holder.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
        held = await holder.acquire(**TARGET, timeout=0)
        # All ten subscribe to the same new channel at once.
        waiters = [asyncio.create_task(t.acquire(**TARGET, timeout=10)) for _ in range(10)]
        await _eventually(lambda: _waiters(real_redis) == 10)
        await held.success()
        for _ in range(10):
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED, timeout=0.5)
            assert len(done) == 1, "a hand-over was not heard"
            (task,) = done
            waiters.remove(task)
            await task.result().success()
    assert not [r for r in caplog.records if r.name == "aimd_redis" and r.levelname == "WARNING"]


def test_a_refused_wake_up_fails_nothing(client: redis.Redis) -> None:
    # As on a cluster older than Redis 7 (no SPUBLISH), or with an ACL without the channel.
    t = Throttle(client, config=ThrottleConfig(wait_poll_seconds=0.2))
    t._core._publish = "NO-SUCH-COMMAND"
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = t.acquire(**TARGET, timeout=0)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(t.acquire(**TARGET, timeout=10)))
    waiter.start()
    wait_until(lambda: _waiters(client) == 1, "waiter not queued")
    assert held.success().released  # the hand-over's publish was refused; the release stands
    waiter.join(10)
    assert got, "the waiter did not find its slot by re-checking"
    assert got[0].success().released
    assert (_waiters(client), client.hget(DOMAIN_KEY, "in_flight")) == (0, b"0")
    t.close()


async def test_the_first_waiter_keeps_its_place_through_a_long_cooldown(make_async_throttle: Any) -> None:
    t = make_async_throttle(wait_poll_seconds=0.1)  # a waiter silent for 0.3 s is dropped
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    a, b = await t.acquire(**TARGET, timeout=0), await t.acquire(**TARGET, timeout=0)
    await a.rate_limited(retry_after=1.0)  # limit 2 -> 1, the queue blocked for 1 s
    first = asyncio.create_task(t.acquire(**TARGET, timeout=10))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(t.acquire(**TARGET, timeout=10))
    await asyncio.sleep(0.05)
    await b.success()
    done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {first}  # still first once the cooldown is over, not dropped as dead
    await (await first).success()
    await (await second).success()
