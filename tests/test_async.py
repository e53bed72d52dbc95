"""The asyncio client: same surface, awaitable, on both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from aimd_redis import AcquireTimeout, AsyncLease, AsyncThrottle, Denied, NotRegisteredError

from .conftest import needs_server
from .helpers import M, P

MakeAsync = Callable[..., AsyncThrottle]
TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}


async def test_async_rules_match_the_sync_client(make_async_throttle: MakeAsync) -> None:
    t = make_async_throttle(rampup_seconds=10, reduce_factor=0.5)
    assert await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=9, now=0) == 9
    assert await t.effective_max(P, M) == 9
    first = await t.try_acquire(**TARGET, now=0)
    assert isinstance(first, AsyncLease)
    assert first.state.current_limit == 1
    assert isinstance(await t.try_acquire(**TARGET, now=1), Denied)
    result = await first.rate_limited(now=4)  # a 429 ends the ramp where it stands: at 1
    assert result.released
    state = await t.domain_state(P, M, "chat")
    assert state is not None
    assert (state.current_limit, state.rampup_active, state.in_flight) == (1, False, 0)
    assert not (await first.success(now=5)).released


async def test_async_slot_reports_success_and_failure(make_async_throttle: MakeAsync) -> None:
    t = make_async_throttle(success_window=10)
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    async with t.slot(**TARGET) as lease:
        assert isinstance(lease, AsyncLease)
    with pytest.raises(ZeroDivisionError):
        async with t.slot(**TARGET):
            _ = 1 / 0
    state = await t.domain_state(P, M, "chat")
    assert state is not None
    assert (state.in_flight, state.success_streak) == (0, 1)  # the failure neither adds nor resets


async def test_async_acquire_times_out_without_sleeping_past_the_deadline(make_async_throttle: MakeAsync) -> None:
    t = make_async_throttle()
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = await t.acquire(**TARGET, timeout=0)
    started = time.monotonic()
    with pytest.raises(AcquireTimeout, match="timed out"):
        await t.acquire(**TARGET, timeout=0)
    assert time.monotonic() - started < 1
    await held.rate_limited(retry_after=30)  # the domain now says: retry in 30 s
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        await t.acquire(**TARGET, timeout=0.3)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 3  # woke at the deadline, not after the 30 s cooldown


async def test_async_acquire_waits_for_a_release(make_async_throttle: MakeAsync) -> None:
    t = make_async_throttle()
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = await t.acquire(**TARGET)

    async def release_soon() -> None:
        await asyncio.sleep(0.1)
        await held.success()

    releaser = asyncio.create_task(release_soon())
    lease = await t.acquire(**TARGET, timeout=5)
    await releaser
    await lease.success()


async def test_a_cancelled_async_acquire_leaks_nothing(make_async_throttle: MakeAsync) -> None:
    t = make_async_throttle()
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = await t.acquire(**TARGET)
    waiter = asyncio.create_task(t.acquire(**TARGET))
    await asyncio.sleep(0.15)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await held.success()
    state = await t.domain_state(P, M, "chat")
    assert state is not None
    assert state.in_flight == 0


async def test_async_unregistered_model(make_async_throttle: MakeAsync) -> None:
    t = make_async_throttle()
    with pytest.raises(NotRegisteredError, match="register"):
        await t.acquire(**TARGET, timeout=0)


async def test_async_renew(make_async_throttle: MakeAsync) -> None:
    t = make_async_throttle(lease_ttl_seconds=10)
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1, now=0)
    lease = await t.try_acquire(**TARGET, now=0)
    assert isinstance(lease, AsyncLease)
    assert await lease.renew(now=5)
    assert lease.expires_at == 15
    assert not await lease.renew(now=15)


async def test_async_throttle_from_url_closes_its_client(real_redis_url: str) -> None:
    async with AsyncThrottle(real_redis_url, namespace="url-test") as t:
        assert await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=3) == 3
        async with t.slot(**TARGET):
            pass


async def test_an_acquire_cancelled_while_redis_is_stalled_leaks_nothing(real_redis_url: str) -> None:
    # The acquire reaches a paused server, its caller gives up, the server
    # resumes: whichever of the grant and the give-back runs first, no slot
    # stays taken.
    from aimd_redis.demo.embedded import EmbeddedRedis

    needs_server("tests that pause the server")
    with EmbeddedRedis() as server:
        async with AsyncThrottle(server.url) as t:
            await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
            for _ in range(3):
                server.pause()
                try:
                    task = asyncio.create_task(t.try_acquire(**TARGET))
                    await asyncio.sleep(0.2)
                    task.cancel()
                    await asyncio.sleep(0.2)
                finally:
                    server.resume()
                with pytest.raises(asyncio.CancelledError):
                    await task
                state = await t.domain_state(P, M, "chat")
                assert state is None or state.in_flight == 0
            lease = await t.acquire(**TARGET, timeout=1)
            assert (await lease.success()).released


async def test_the_sync_throttle_inside_a_running_loop_refuses_at_once_naming_the_async_one() -> None:
    import fakeredis

    from aimd_redis import EventLoopBlockedError, Throttle

    server = fakeredis.FakeServer()
    t = Throttle(fakeredis.FakeRedis(server=server))
    for call in (
        lambda: t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2),
        lambda: t.acquire(**TARGET, timeout=None),  # would wait for ever, blocking the loop
        lambda: t.try_acquire(**TARGET),
    ):
        with pytest.raises(EventLoopBlockedError, match="use AsyncThrottle"):
            call()
    t.close()
    assert fakeredis.FakeRedis(server=server).keys("*") == []  # refused before anything reached Redis


def test_the_sync_throttle_outside_a_loop_does_not_warn() -> None:
    import warnings

    import fakeredis

    from aimd_redis import Throttle

    t = Throttle(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    t.close()
