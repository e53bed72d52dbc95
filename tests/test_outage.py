"""Outages: typed errors within a bounded time, or, when chosen, failing open."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from aimd_redis import (
    AcquireTimeout,
    ArgumentTypeError,
    AsyncThrottle,
    ConfigError,
    Denied,
    FailOpen,
    Lease,
    RedisUnavailableError,
    Throttle,
)
from aimd_redis.demo.embedded import EmbeddedRedis, _free_port

from .conftest import needs_server
from .helpers import M, P, reg, wait_until

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}


def test_an_unreachable_redis_is_a_typed_error_within_the_socket_timeout() -> None:
    t = Throttle(f"redis://127.0.0.1:{_free_port()}/0")
    started = time.monotonic()
    for call in (
        lambda: reg(t, 4),
        lambda: t.try_acquire(provider_name=P, model_id=M, domain="chat"),
        lambda: t.domain_state(P, M, "chat"),
        lambda: t.effective_max(P, M),
    ):
        with pytest.raises(RedisUnavailableError, match="unreachable") as info:
            call()
        assert isinstance(info.value, ConnectionError)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert time.monotonic() - started < 30
    t.close()


def test_a_release_that_times_out_can_be_retried_and_leaks_nothing(real_redis_url: str) -> None:
    needs_server("tests that pause the server")
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.3)
        t = Throttle(client)
        reg(t, 2)
        lease = t.try_acquire(provider_name=P, model_id=M, domain="chat")
        assert isinstance(lease, Lease)
        server.pause()
        try:
            with pytest.raises(RedisUnavailableError):
                lease.success()
            assert not lease.reported
        finally:
            server.resume()
        # The timed-out call may or may not have run once Redis resumed; a
        # retry is safe either way, and the slot is back.
        lease.success()
        assert lease.reported
        state = t.domain_state(P, M, "chat")
        assert state is not None
        assert state.in_flight == 0
        client.close()


@pytest.fixture
def paused_server() -> Iterator[EmbeddedRedis]:
    """A server that will be paused (SIGSTOP) by the test."""
    needs_server("tests that pause the server")
    with EmbeddedRedis() as server:
        try:
            yield server
        finally:
            server.resume()


def test_every_call_gives_up_within_the_configured_timeout(paused_server: EmbeddedRedis) -> None:
    t = Throttle(paused_server.url, socket_timeout=0.3)
    reg(t, 2)
    paused_server.pause()  # a black hole: connected, but nothing answers
    for call in (
        lambda: reg(t, 2),
        lambda: t.try_acquire(**TARGET),
        lambda: t.acquire(**TARGET),  # no timeout of its own: the socket's bounds it
        lambda: t.domain_state(P, M, "chat"),
    ):
        started = time.monotonic()
        with pytest.raises(RedisUnavailableError):
            call()
        # One call, and at most one give-back of a slot it may have been granted.
        assert time.monotonic() - started < 2 * 0.3 + 0.5
    paused_server.resume()
    t.close()


def test_fail_open_lends_local_slots_while_redis_is_down(
    paused_server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    t = Throttle(paused_server.url, socket_timeout=0.2, fail_open=FailOpen(concurrency=2))
    reg(t, 8)
    paused_server.pause()
    first, second = t.acquire(**TARGET, timeout=5), t.acquire(**TARGET, timeout=5)
    assert first.local is not None
    assert second.local is not None
    with pytest.raises(AcquireTimeout, match="local limit full"):
        t.acquire(**TARGET, timeout=0.3)  # two per process, not the fleet's eight
    denied = t.try_acquire(**TARGET)
    assert isinstance(denied, Denied)
    assert (denied.reason, denied.state.in_flight, denied.state.current_limit) == ("at_capacity", 2, 2)
    assert first.success().released
    assert not first.success().released  # once only, as with Redis
    third = t.acquire(**TARGET, timeout=5)
    assert third.local is not None
    warnings = [r for r in caplog.records if "failing open" in r.getMessage()]
    assert len(warnings) == 1  # said once, not per call

    paused_server.resume()
    back = t.acquire(**TARGET, timeout=5)
    assert back.local is None  # from the fleet's limit again
    assert any("answers again" in r.getMessage() for r in caplog.records)
    second.success()
    third.failure()
    back.success()
    state = t.domain_state(P, M, "chat")
    assert state is not None
    assert state.in_flight == 0  # the local slots never touched Redis
    t.close()


async def test_async_fail_open(paused_server: EmbeddedRedis) -> None:
    async with AsyncThrottle(paused_server.url, socket_timeout=0.2, fail_open=FailOpen(concurrency=1)) as t:
        await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=4)
        paused_server.pause()
        async with t.slot(**TARGET, timeout=5) as lease:
            assert lease.local is not None
            with pytest.raises(AcquireTimeout):
                await t.acquire(**TARGET, timeout=0.3)
        again = await t.acquire(**TARGET, timeout=5)  # the slot came back when the block ended
        assert (await again.success()).released
        paused_server.resume()


def test_fail_open_needs_a_chosen_concurrency() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        FailOpen()  # type: ignore[call-arg]
    with pytest.raises(ArgumentTypeError, match="FailOpen"):
        Throttle(f"redis://127.0.0.1:{_free_port()}/0", fail_open=2)  # type: ignore[arg-type]


def test_a_report_and_next_slot_cut_off_mid_call_leaves_no_slot_taken(paused_server: EmbeddedRedis) -> None:
    t = Throttle(paused_server.url, socket_timeout=0.3)
    reg(t, 2)
    lease = t.acquire(**TARGET, timeout=0)
    paused_server.pause()
    try:
        with pytest.raises(RedisUnavailableError):
            lease.success_and_acquire(timeout=0)
    finally:
        paused_server.resume()
    # Redis runs the call it had buffered (the report, and a next slot nobody
    # holds); the client gives that slot back by its id and reports again.
    wait_until(lambda: t.domain_state(P, M, "chat").in_flight == 0, "a slot stayed taken", 10)  # type: ignore[union-attr]
    t.close()


def test_the_worker_loop_fails_open_too(paused_server: EmbeddedRedis) -> None:
    t = Throttle(paused_server.url, socket_timeout=0.3, fail_open=FailOpen(concurrency=2))
    reg(t, 4)
    lease = t.acquire(**TARGET, timeout=0)
    paused_server.pause()
    try:
        started = time.monotonic()
        local = lease.success_and_acquire(timeout=5)
        assert local.local is not None  # a slot of this process's own limit
        assert time.monotonic() - started < 2 * 0.3 + 0.5  # one timeout, no second wait for the give-back
    finally:
        paused_server.resume()
    local.success()
    # The success, and the give-back of a next slot the cut-off call may have
    # taken, reach Redis once it answers again.
    wait_until(lambda: t.domain_state(P, M, "chat").in_flight == 0, "a slot stayed taken", 10)  # type: ignore[union-attr]
    t.close()
