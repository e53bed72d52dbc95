"""Faults that lose slots or admit too many, each reproduced on a real
redis-server of its own, each ending with a check that nothing leaked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest

from aimd_redis import (
    AimdRedisError,
    AsyncThrottle,
    CorruptStateError,
    FailOpen,
    InvalidArgumentError,
    Lease,
    RedisAuthenticationError,
    RedisOutOfMemoryError,
    RedisUnavailableError,
    Throttle,
    ThrottleConfig,
)
from aimd_redis._async.throttle import MAX_CONNECTIONS
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.ops.acl import acl_rule
from aimd_redis.ops.cli import main
from aimd_redis.ops.exporter import registry_for
from aimd_redis.ops.inspect import report

from .conftest import needs_server
from .helpers import M, P, wait_until

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
KEY = f"aimd:{{{P}/{M}}}:chat"


def own_server(**settings: Any) -> EmbeddedRedis:
    needs_server("these faults")
    return EmbeddedRedis(**settings)


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with own_server() as s:
        yield s


def nothing_leaked(client: redis.Redis, max_limit: int) -> None:
    """No live lease without a holder, nothing in flight, nobody queued, the limit within 1..max."""
    assert client.zcount(f"{KEY}:leases", 0, "+inf") == 0
    assert int(client.hget(KEY, "in_flight") or 0) == 0
    assert client.zcard(f"{KEY}:queue") == 0
    assert 1 <= int(client.hget(KEY, "current_limit") or 1) <= max_limit


# -- authentication ----------------------------------------------------------


def test_a_wrong_or_missing_password_is_its_own_error_and_never_fails_open() -> None:
    with own_server(password="right") as s:
        port = s.url.rsplit(":", 1)[1]
        for url in (f"redis://:wrong@127.0.0.1:{port}", f"redis://127.0.0.1:{port}"):
            t = Throttle(url, fail_open=FailOpen(concurrency=4))
            for call in (
                lambda t=t: t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=4),
                lambda t=t: t.try_acquire(**TARGET),
                lambda t=t: t.acquire(**TARGET, timeout=1),
                lambda t=t: t.domain_state(P, M, "chat"),
            ):
                with pytest.raises(RedisAuthenticationError, match=r"redis://user:password@host") as caught:
                    call()
                assert isinstance(caught.value, (AimdRedisError, PermissionError))
            t.close()
        assert redis.Redis.from_url(s.url).dbsize() == 0


def test_a_background_job_refused_its_credentials_logs_one_line(
    server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "worker", "on", ">pw", "~*", "&*", "+@all")
    port = server.url.rsplit(":", 1)[1]
    t = Throttle(f"redis://worker:pw@127.0.0.1:{port}", config=ThrottleConfig(lease_ttl_seconds=0.9))
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    lease = t.try_acquire(**TARGET)
    assert isinstance(lease, Lease)
    with caplog.at_level(logging.WARNING, logger="aimd_redis"):
        admin.execute_command("ACL", "DELUSER", "worker")  # also cuts the user's connections
        wait_until(lambda: any("renewer" in r.getMessage() for r in caplog.records), "no renewal failed", 10)
    renewal = next(r for r in caplog.records if "renewer" in r.getMessage())
    assert "credentials" in renewal.getMessage()
    assert not renewal.exc_info  # one line, no traceback
    t.close()
    time.sleep(1.0)  # the lease expires unrenewed: its slot comes back
    assert admin.zcount(f"{KEY}:leases", time.time(), "+inf") == 0


# -- namespaces ----------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["x:prod", "a*", "team?", "[ab]", "ns with space", ""])
def test_a_namespace_that_could_cover_another_is_refused(namespace: str) -> None:
    with pytest.raises(InvalidArgumentError, match="namespace"):
        Throttle(redis.Redis(), namespace=namespace)
    with pytest.raises(InvalidArgumentError, match="namespace"):
        acl_rule("u", [namespace])


# -- reading the state ---------------------------------------------------------


def test_status_counts_live_leases_and_reports_a_corrupt_domain_on_its_own(
    server: EmbeddedRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(server.url)
    t = Throttle(client, config=ThrottleConfig(lease_ttl_seconds=60))
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=4)
    seconds, micros = client.time()
    long_ago = seconds + micros / 1e6 - 420
    assert isinstance(t.try_acquire(**TARGET, now=long_ago), Lease)  # its holder died seven minutes ago
    assert isinstance(t.try_acquire(provider_name=P, model_id=M, domain="embedding"), Lease)
    client.hset(f"aimd:{{{P}/{M}}}:image", mapping={"current_limit": "abc"})
    client.sadd(f"aimd:{{{P}/{M}}}:domains", "image")
    reports = {r.domain: r for r in report(client, "aimd")}
    assert (reports["chat"].in_flight, reports["embedding"].in_flight) == (0, 1)
    assert reports["image"].problem is not None
    assert "current_limit" in reports["image"].problem
    assert main(["status", "--url", server.url]) == 0
    out = capsys.readouterr().out
    assert "embedding" in out
    assert "UNREADABLE" in out
    assert main(["check", "--url", server.url]) == 1
    assert "image" in capsys.readouterr().out
    text = generate_latest(registry_for(client, "aimd")).decode()
    assert 'aimd_unreadable{domain="image",model="gpt-4o",provider="openai"} 1.0' in text
    assert 'aimd_in_flight{domain="embedding",model="gpt-4o",provider="openai"} 1.0' in text
    t.close()


# -- an outcome that does not reach Redis ---------------------------------------


def test_a_release_during_a_write_pause_is_sent_again_and_the_slot_comes_back(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    t = Throttle(redis.Redis.from_url(server.url, socket_timeout=0.5), config=ThrottleConfig(lease_ttl_seconds=30))
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    lease = t.acquire(**TARGET, timeout=0)
    client.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    with pytest.raises(RedisUnavailableError):
        lease.success()
    assert lease.id not in t._renewals  # never renewed again
    # A worker trying again for the only slot: it is free once the pause
    # (1.5 s) is over and the outcome got through.
    started = time.monotonic()
    again = None
    while again is None and time.monotonic() - started < 10:
        with contextlib.suppress(RedisUnavailableError):
            got = t.try_acquire(**TARGET)
            again = got if isinstance(got, Lease) else None
    assert again is not None
    assert time.monotonic() - started < 4
    again.success()
    t.close()
    nothing_leaked(client, 1)


def test_a_slot_block_whose_report_fails_does_not_raise_and_gives_the_slot_back(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    t = Throttle(redis.Redis.from_url(server.url, socket_timeout=0.5))
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    with t.slot(**TARGET, timeout=0):
        client.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    # The request succeeded; its report waits for Redis, the caller does not.
    wait_until(lambda: client.zcard(f"{KEY}:leases") == 0, "the slot did not come back", 10)
    t.close()
    nothing_leaked(client, 1)


def test_an_outcome_refused_for_a_broken_field_goes_through_once_the_field_is_mended(
    server: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(server.url)
    t = Throttle(server.url)
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    lease = t.acquire(**TARGET, timeout=0)
    client.hset(KEY, "current_limit", "abc")
    with pytest.raises(CorruptStateError):
        lease.success()
    assert lease.id not in t._renewals
    client.hset(KEY, "current_limit", "1")
    wait_until(lambda: client.zcard(f"{KEY}:leases") == 0, "the outcome was not sent again", 10)
    t.close()
    nothing_leaked(client, 1)


# -- out of memory -------------------------------------------------------------


def _fill(client: redis.Redis) -> None:
    """Write until Redis refuses: it is full."""
    for i in range(100_000):
        try:
            client.set(f"junk:{i}", "x" * 10_000)
        except redis.exceptions.OutOfMemoryError:
            return
    raise AssertionError("Redis never filled up")


@pytest.mark.parametrize("functions", [True, False])
def test_out_of_memory_refuses_a_call_as_a_whole_and_is_not_an_outage(functions: bool) -> None:
    with own_server(args=["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]) as s:
        client = redis.Redis.from_url(s.url)
        t = Throttle(s.url, fail_open=FailOpen(concurrency=4))
        t._runner.functions = functions  # the function library, and the scripts a cluster runs
        t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
        held = t.try_acquire(**TARGET, now=100.0)
        assert isinstance(held, Lease)
        _fill(client)
        ours = sorted(k for k in client.keys("aimd:*"))
        before = client.execute_command("DEBUG", "DIGEST-VALUE", *ours)
        for call in (
            lambda: t.try_acquire(**TARGET, now=200.0),  # reaps the expired lease, then would grant
            lambda: held.renew(now=101.0),
            lambda: t.acquire(**TARGET, timeout=1),
        ):
            with pytest.raises(RedisOutOfMemoryError):
                call()
        assert client.execute_command("DEBUG", "DIGEST-VALUE", *ours) == before  # nothing written
        client.execute_command("FLUSHDB", "SYNC")  # memory again at once (Valkey frees lazily by default)
        t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
        assert isinstance(t.try_acquire(**TARGET), Lease)
        t.close()


# -- a lost registration -------------------------------------------------------


def test_a_registration_lost_under_a_held_lease_leaves_the_limit_where_it_was(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    t = Throttle(client, config=ThrottleConfig(success_window=1))
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=8)
    first = t.acquire(**TARGET, timeout=0)
    first.success()
    t.set_limit(P, M, "chat", 5)
    lease = t.acquire(**TARGET, timeout=0)
    client.delete(f"aimd:{{{P}/{M}}}:cap")  # by hand, or evicted
    assert lease.success().released
    state = t.domain_state(P, M, "chat")
    assert state is not None
    assert state.current_limit == 5  # not 1
    assert t.effective_max(P, M) == 8  # registered again by the client that noticed
    t.close()
    nothing_leaked(client, 8)


def test_a_release_frees_the_slot_even_when_the_domain_hash_was_lost(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    t = Throttle(client)
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    lease = t.acquire(**TARGET, timeout=0)
    client.delete(KEY)  # the domain hash alone, evicted or deleted; the lease is still recorded
    assert lease.success().released
    assert isinstance(t.try_acquire(**TARGET), Lease)  # the only slot is free again
    t.close()


def test_under_eviction_pressure_the_limit_never_falls_to_1_for_a_lost_registration() -> None:
    # allkeys-random evicts any key alike; LRU would mostly spare keys used this often.
    with own_server(args=["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-random"]) as s:
        client = redis.Redis.from_url(s.url)
        t = Throttle(client, config=ThrottleConfig(success_window=1))
        t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=8)
        limits, lost = [], 0
        for i in range(1500):
            with t.slot(**TARGET, timeout=5):
                client.set(f"junk:{i}", "x" * 20_000)  # Redis evicts to make room, our keys among others
                lost += not client.exists(f"aimd:{{{P}/{M}}}:cap")  # lost under a held lease
            state = t.domain_state(P, M, "chat")
            if state is not None:
                limits.append(state.current_limit)
        assert lost > 0  # the fault did happen (how often depends on which keys Redis picks)
        assert min(limits) > 1
        t.close()


# -- slots handed to waiters that are gone ---------------------------------------

QUICK = ThrottleConfig(lease_ttl_seconds=30, wait_poll_seconds=0.5)


def _waiting(client: redis.Redis) -> int:
    """Callers waiting on the domain, of every process."""
    return int(client.hget(KEY, "waiters") or 0)


def _queue_three_and_wait(url: str) -> None:
    t = Throttle(url, config=QUICK)
    for _ in range(3):
        threading.Thread(target=lambda: t.acquire(**TARGET), daemon=True).start()
    time.sleep(60)  # killed long before


def test_a_slot_handed_to_a_killed_process_s_waiter_comes_back_within_the_claim_window(
    server: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(server.url)
    t = Throttle(server.url, config=QUICK)
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = t.acquire(**TARGET, timeout=0)
    child = multiprocessing.get_context("spawn").Process(target=_queue_three_and_wait, args=(server.url,))
    child.start()
    wait_until(lambda: _waiting(client) == 3, "the child's waiters did not queue", 30)
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join()
    time.sleep(0.2)
    held.success()  # handed to a dead waiter whose heartbeat has not run out yet
    started = time.monotonic()
    lease = t.acquire(**TARGET, timeout=10)
    # Back after the claim window (2 x wait_poll) for each dead waiter in line
    # at most, not after the lease ttl of 30 s.
    assert time.monotonic() - started < 5
    lease.success()
    t.close()
    wait_until(lambda: client.zcard(f"{KEY}:queue") == 0, "dead waiters left in the queue", 10)
    nothing_leaked(client, 1)


def test_waiters_that_gave_up_during_a_stall_hold_no_slot_for_long(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    t = Throttle(redis.Redis.from_url(server.url, socket_timeout=0.5), config=QUICK)
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=4)
    holders = [t.acquire(**TARGET, timeout=0) for _ in range(4)]
    gave_up = []

    def wait_briefly() -> None:
        with contextlib.suppress(AimdRedisError):
            t.acquire(**TARGET, timeout=0.8)
        gave_up.append(1)

    waiters = [threading.Thread(target=wait_briefly) for _ in range(4)]
    for w in waiters:
        w.start()
    wait_until(lambda: _waiting(client) == 4, "the waiters did not queue", 10)
    threading.Thread(target=lambda: redis.Redis.from_url(server.url).execute_command("DEBUG", "SLEEP", 2)).start()
    for w in waiters:
        w.join(10)
    assert len(gave_up) == 4
    for lease in holders:  # once Redis answers: handed to waiters that are gone, if their give-backs lost
        with contextlib.suppress(AimdRedisError):
            lease.success()
    started = time.monotonic()
    fresh = []
    while len(fresh) < 4 and time.monotonic() - started < 15:
        with contextlib.suppress(AimdRedisError):
            got = t.try_acquire(**TARGET)
            if isinstance(got, Lease):
                fresh.append(got)
        time.sleep(0.05)
    assert len(fresh) == 4  # every slot back
    assert time.monotonic() - started < 6
    for lease in fresh:
        lease.success()
    t.close()
    nothing_leaked(client, 4)


# -- connections ---------------------------------------------------------------


async def test_thousands_of_waiting_tasks_share_a_bounded_pool(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    async with AsyncThrottle(server.url, config=ThrottleConfig(wait_poll_seconds=1.0)) as t:
        await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
        held = await t.acquire(**TARGET, timeout=0)
        waiters = [asyncio.create_task(t.acquire(**TARGET, timeout=30)) for _ in range(2000)]
        most = 0
        for _ in range(30):  # while they queue, re-check and beat
            await asyncio.sleep(0.1)
            most = max(most, int(client.info("clients")["connected_clients"]))
        assert _waiting(client) == 2000
        assert client.zcard(f"{KEY}:queue") == 1  # the process's one entry
        assert most <= MAX_CONNECTIONS + 1  # the pool (wake-ups included), and this test's own connection
        await held.success()
        done, pending = await asyncio.wait(waiters, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1  # the head of the queue, woken
        for w in pending:
            w.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await done.pop().result().success()
    wait_until(lambda: client.zcard(f"{KEY}:queue") == 0, "cancelled waiters left the queue", 30)
    nothing_leaked(client, 1)
