"""Lease.success_and_acquire: a worker's loop in one round trip per request,
never ahead of a queued waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from aimd_redis import AcquireTimeout, AsyncLease, AsyncThrottle, Lease, Throttle

from .conftest import MakeThrottle
from .helpers import M, P, reg, state, wait_until_async

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}


def count_calls(t: Throttle | AsyncThrottle) -> list[str]:
    """The script calls ``t`` makes from now on, by name."""
    made: list[str] = []
    run = t._run

    def counted(call: Any) -> Any:
        made.append(call.script)
        return run(call)

    t._run = counted  # type: ignore[method-assign]
    return made


def test_in_a_loop_each_request_costs_one_call_and_holds_one_slot(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 4)
    lease = t.acquire(**TARGET, timeout=0)
    calls = count_calls(t)
    for _ in range(5):
        previous, lease = lease, lease.success_and_acquire(timeout=0)
        assert previous.reported
        assert lease.id != previous.id
        assert state(t).in_flight == 1
    assert calls == ["batch"] * 5  # the success and the next acquire, together
    assert lease.success().released
    assert state(t).in_flight == 0


def test_the_success_counts_for_the_loop(make_throttle: MakeThrottle) -> None:
    t = make_throttle(success_window=2, policy="classic")
    reg(t, 4)
    lease = t.acquire(**TARGET, timeout=0)
    other = t.acquire(**TARGET, timeout=0)
    t.set_limit(P, M, "chat", 2)  # both slots taken: the successes grow the limit
    lease = lease.success_and_acquire(timeout=0)
    lease = lease.success_and_acquire(timeout=0)
    assert state(t).current_limit == 3
    lease.success()
    other.success()


def test_below_a_lowered_limit_it_reports_and_then_waits_like_acquire(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 2)
    first, second = t.acquire(**TARGET, timeout=0), t.acquire(**TARGET, timeout=0)
    t.set_limit(P, M, "chat", 1)
    with pytest.raises(AcquireTimeout):
        first.success_and_acquire(timeout=0)  # one still in flight, at the limit
    assert first.reported
    assert state(t).in_flight == 1
    second.success_and_acquire(timeout=0).success()  # the domain was free once second was back
    assert state(t).in_flight == 0


async def test_a_queued_waiter_is_served_before_the_loop_takes_the_slot_again(
    make_async_throttle: Callable[..., AsyncThrottle],
) -> None:
    t = make_async_throttle(wait_poll_seconds=0.2)
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = await t.acquire(**TARGET, timeout=0)
    waiter = asyncio.create_task(t.acquire(**TARGET, timeout=10))

    async def queued() -> bool:
        s = await t.domain_state(P, M, "chat")
        return s is not None and s.waiters == 1

    await wait_until_async(queued, "the waiter did not queue", 5)
    looped = asyncio.create_task(held.success_and_acquire(timeout=10))
    served: AsyncLease = await asyncio.wait_for(waiter, 5)  # the slot went to the waiter first
    assert not looped.done()
    await served.success()
    again = await asyncio.wait_for(looped, 5)  # then to the loop, which queued behind it
    assert (await again.success()).released
    final = await t.domain_state(P, M, "chat")
    assert final is not None
    assert (final.in_flight, final.waiters) == (0, 0)


def test_the_sync_and_async_leases_both_have_it() -> None:
    assert Lease.success_and_acquire.__doc__ == AsyncLease.success_and_acquire.__doc__
