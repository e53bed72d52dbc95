"""Request and token budgets: the buckets, refunds, the least over aliases,
oversize requests, all-or-nothing grants, FIFO waiting and learned budgets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from aimd_redis import AsyncThrottle, Denied, Lease, RequestTooLargeError, Throttle
from aimd_redis.errors import InvalidArgumentError
from aimd_redis.structs import Grant

from .conftest import MakeThrottle
from .helpers import M, P, events_of, state, wait_until_async

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
CAP, BUDGET = f"aimd:{{{P}/{M}}}:cap", f"aimd:{{{P}/{M}}}:cap:budget"


def _register(t: Throttle, alias: str = "gen", max_parallel: int = 8, **budget: Any) -> int:
    return t.register(provider_name=P, model_id=M, alias=alias, max_parallel_requests=max_parallel, now=0.0, **budget)


def _take(t: Throttle, now: float, tokens: int = 0) -> Lease | Denied:
    return t.try_acquire(**TARGET, tokens=tokens, now=now)


def _grant(t: Throttle, now: float, tokens: int = 0) -> Lease:
    got = _take(t, now, tokens)
    assert isinstance(got, Lease), got
    return got


def _left(client: Any) -> tuple[float, float]:
    fields = {k.decode(): v.decode() for k, v in client.hgetall(BUDGET).items()}
    return float(fields.get("requests", "nan")), float(fields.get("tokens", "nan"))


def _cap(client: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(CAP).items()}


def test_a_token_budget_is_a_bucket_of_one_minute_refilling_continuously(
    make_throttle: MakeThrottle, client: Any
) -> None:
    t = make_throttle()
    _register(t, tokens_per_minute=600)  # 10 tokens a second
    first = _grant(t, 0.0, tokens=400)  # a whole minute's budget may go at once
    assert first.tokens == 400
    denied = _take(t, 0.0, tokens=300)
    assert isinstance(denied, Denied)
    assert denied.reason == "budget"
    assert denied.retry_in == pytest.approx(10.0)  # 100 tokens short, at 10 a second
    assert state(t).in_flight == 1  # nothing taken by the refusal
    assert isinstance(_take(t, 9.9, tokens=300), Denied)
    _grant(t, 10.0, tokens=300)
    assert _left(client)[1] == pytest.approx(0.0)
    # Refilled, never beyond a minute's worth.
    assert isinstance(_take(t, 1000.0, tokens=600), Lease)
    assert _left(client)[1] == pytest.approx(0.0)


def test_a_request_budget_counts_requests(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    _register(t, requests_per_minute=2)
    _grant(t, 0.0).success(now=0.0)
    _grant(t, 0.0).success(now=0.0)
    denied = _take(t, 1.0)
    assert isinstance(denied, Denied)
    assert (denied.reason, denied.retry_in) == ("budget", pytest.approx(29.0))
    _grant(t, 30.0)


def test_the_release_settles_the_reservation(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle(policy="adaptive")  # a first 429 pauses nobody
    _register(t, requests_per_minute=60, tokens_per_minute=6000)
    assert _grant(t, 0.0, tokens=1000).success(now=0.0, tokens=250).released
    assert _left(client) == (pytest.approx(59), pytest.approx(5750))  # 750 of 1000 came back
    plenty = {"x-ratelimit-remaining-requests": "999", "x-ratelimit-remaining-tokens": "99999"}
    assert _grant(t, 0.0, tokens=1000).rate_limited(now=0.0, headers=plenty).released
    assert _left(client) == (pytest.approx(58), pytest.approx(5750))  # a refused request used no tokens
    assert _grant(t, 0.0, tokens=1000).failure(now=0.0).released
    assert _left(client) == (pytest.approx(57), pytest.approx(4750))  # a failure may have been served
    assert _grant(t, 0.0, tokens=1000).success(now=0.0).released
    assert _left(client) == (pytest.approx(56), pytest.approx(3750))  # used what it reserved
    assert _grant(t, 0.0, tokens=1000).success(now=0.0, tokens=4000).released
    assert _left(client) == (pytest.approx(55), pytest.approx(-250))  # charged: a debt the refill pays
    denied = _take(t, 0.0, tokens=1)
    assert isinstance(denied, Denied)
    assert denied.retry_in == pytest.approx(2.51)
    # An outcome reported twice settles once.
    lease = _grant(t, 10.0, tokens=100)
    assert lease.success(now=10.0, tokens=0).released
    before = _left(client)
    assert not lease.success(now=10.0, tokens=0).released
    assert _left(client) == before


def test_a_429_empties_the_buckets_the_provider_says_nothing_of(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle(policy="adaptive")
    _register(t, requests_per_minute=60, tokens_per_minute=6000)
    # Estimates too low let more through than the provider takes: its 429 says what is left.
    assert _grant(t, 0.0, tokens=10).rate_limited(now=0.0, headers={"x-ratelimit-remaining-requests": "7"}).released
    assert _left(client) == (pytest.approx(7), pytest.approx(0))
    denied = _take(t, 0.0, tokens=100)
    assert isinstance(denied, Denied)
    assert (denied.reason, denied.retry_in) == ("budget", pytest.approx(1.0))  # 100 tokens at 100 a second
    assert [(e.event, e.old, e.new) for e in events_of(client) if e.event.endswith("_corrected")] == [
        ("requests_corrected", 59, 7),
        ("tokens_corrected", 6000, 0),
    ]


def test_the_budget_is_the_least_over_the_aliases_that_set_one(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    _register(t, "a", tokens_per_minute=1000)
    _register(t, "b", tokens_per_minute=600, requests_per_minute=50)
    _register(t, "c")  # sets none: no say in the budget
    cap = _cap(client)
    assert (cap["tpm"], cap["rpm"], cap["tpm:a"], cap["tpm:b"]) == ("600", "50", "1000", "600")
    _register(t, "b")  # b drops its budget
    cap = _cap(client)
    assert (cap["tpm"], "rpm" in cap, "tpm:b" in cap) == ("1000", False, False)
    changes = [(e.event, e.old, e.new) for e in events_of(client) if e.domain == "*" and e.event in ("tpm", "rpm")]
    assert changes == [("tpm", 0, 1000), ("rpm", 0, 50), ("tpm", 1000, 600), ("rpm", 50, 0), ("tpm", 600, 1000)]


def test_a_budget_is_shared_by_all_domains_of_the_model(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    _register(t, requests_per_minute=1)
    assert isinstance(t.try_acquire(provider_name=P, model_id=M, domain="chat", now=0.0), Lease)
    denied = t.try_acquire(provider_name=P, model_id=M, domain="embedding", now=0.0)
    assert isinstance(denied, Denied)
    assert denied.reason == "budget"


def test_a_request_larger_than_the_whole_budget_is_refused_at_once(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    _register(t, tokens_per_minute=600)
    with pytest.raises(RequestTooLargeError, match=r"601 tokens can never fit .* 600 tokens per minute"):
        _take(t, 0.0, tokens=601)
    with pytest.raises(RequestTooLargeError):
        t.acquire(**TARGET, tokens=601, timeout=None)  # no waiting for what cannot come
    assert t.domain_state(P, M, "chat") is None  # nothing queued, nothing created


def test_slot_and_budget_are_granted_together_or_not_at_all(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    _register(t, max_parallel=1, requests_per_minute=10, tokens_per_minute=600)
    held = _grant(t, 0.0, tokens=100)
    before = _left(client)
    denied = _take(t, 0.0, tokens=100)
    assert isinstance(denied, Denied)
    assert denied.reason == "at_capacity"
    assert _left(client) == before  # no slot: no budget taken either
    held.success(now=0.0)
    denied = _take(t, 0.0, tokens=550)
    assert isinstance(denied, Denied)
    assert denied.reason == "budget"
    assert (state(t).in_flight, _left(client)) == (0, before)  # no budget: no slot taken either


def test_budgets_refuse_bad_values_before_redis(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    for bad in ({"tokens_per_minute": 0}, {"requests_per_minute": -5}, {"tokens_per_minute": 10**13}):
        with pytest.raises(InvalidArgumentError):
            _register(t, **bad)
    with pytest.raises(TypeError):
        _register(t, tokens_per_minute=1.5)
    _register(t)
    with pytest.raises(InvalidArgumentError):
        _take(t, 0.0, tokens=-1)
    with pytest.raises(InvalidArgumentError):
        _grant(t, 0.0).success(now=0.0, tokens=-1)


def test_a_model_without_a_budget_keeps_no_budget_state(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    _register(t)
    _grant(t, 0.0, tokens=10_000).success(now=0.0, tokens=20_000)
    assert client.exists(BUDGET) == 0


def test_a_budget_is_learned_from_the_providers_headers(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    _register(t)
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-remaining-tokens": "12000",
        "x-ratelimit-reset-tokens": "36s",
    }
    assert _grant(t, 0.0, tokens=100).success(now=0.0, tokens=100, headers=headers).released
    cap = _cap(client)
    assert (cap["rpm"], cap["tpm"], cap["rpm_heard"], cap["tpm_heard"]) == ("500", "30000", "500", "30000")
    assert _left(client) == (pytest.approx(499), pytest.approx(12000))  # corrected down to what the provider said
    # The next request is held to it.
    denied = _take(t, 0.0, tokens=13000)
    assert isinstance(denied, Denied)
    assert denied.reason == "budget"
    corrected = [e for e in events_of(client) if e.event == "tokens_corrected"]
    assert [(e.old, e.new) for e in corrected] == [(30000, 12000)]
    # A registered budget below what the provider allows wins; above it, the provider's does.
    _register(t, "low", tokens_per_minute=20000)
    assert _cap(client)["tpm"] == "20000"
    _register(t, "low", tokens_per_minute=90000)
    assert _cap(client)["tpm"] == "30000"
    # What the provider says is left never raises a bucket.
    _grant(t, 0.0).success(now=0.0, headers={"x-ratelimit-remaining-tokens": "29000"})
    assert _left(client)[1] < 13000


def test_malformed_headers_change_nothing(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    _register(t, tokens_per_minute=1000)
    bad = {"x-ratelimit-limit-tokens": "lots", "x-ratelimit-remaining-tokens": "-3"}
    assert _grant(t, 0.0, tokens=10).success(now=0.0, headers=bad).released
    assert (_cap(client)["tpm"], "tpm_heard" in _cap(client), _left(client)[1]) == ("1000", False, 990)


async def test_waiters_on_the_budget_are_served_in_arrival_order(make_async_throttle: Any, aclient: Any) -> None:
    t: AsyncThrottle = make_async_throttle(wait_poll_seconds=0.1)
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=8, tokens_per_minute=60_000)
    drain = await t.try_acquire(**TARGET, tokens=60_000)  # the bucket is empty: 1,000 tokens come back a second
    assert not isinstance(drain, Denied)
    await drain.success()
    order: list[str] = []

    async def wait_for(name: str, tokens: int) -> None:
        lease = await t.acquire(**TARGET, tokens=tokens, timeout=10)
        order.append(name)
        await lease.success()

    async def queued() -> bool:
        s = await t.domain_state(P, M, "chat")
        return s is not None and s.waiters == 1

    big = asyncio.create_task(wait_for("big", 300))
    await wait_until_async(queued, "the first waiter never queued")
    small = asyncio.create_task(wait_for("small", 50))  # would fit sooner, but came later
    await asyncio.gather(big, small)
    assert order == ["big", "small"]


def test_a_worker_loop_reserves_the_next_requests_tokens(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    _register(t, tokens_per_minute=600)
    lease = t.acquire(**TARGET, tokens=200, timeout=0)
    lease = lease.success_and_acquire(tokens=100, next_tokens=300)
    assert lease.tokens == 300
    assert _left(client)[1] == pytest.approx(200, abs=5)  # 600 - 100 used - 300 reserved (plus a little refill)


def test_the_budget_hash_is_readable(make_throttle: MakeThrottle, client: redis.Redis) -> None:
    t = make_throttle()
    _register(t, requests_per_minute=100, tokens_per_minute=1000)
    _grant(t, 12.5, tokens=10)
    fields = {k.decode(): v.decode() for k, v in client.hgetall(BUDGET).items()}
    assert fields == {"requests": "99", "tokens": "990", "refilled_at": "12.5"}


def test_a_limit_of_nothing_in_the_headers_is_ignored(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    _register(t)
    zero = {"x-ratelimit-limit-requests": "0", "x-ratelimit-limit-tokens": "0"}
    assert _grant(t, 0.0).success(now=0.0, headers=zero).released
    assert "rpm" not in _cap(client)
    assert isinstance(_take(t, 0.0), Lease)  # the model still works
    _register(t, "other")  # and registers


def test_a_budget_learned_later_starts_full(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle()
    _register(t, requests_per_minute=1000)
    _grant(t, 0.0).success(now=0.0)
    learned = {"x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "60000"}
    assert _grant(t, 0.0).success(now=0.0, headers=learned).released
    assert isinstance(_take(t, 0.0, tokens=6000), Lease)


def test_a_waiter_short_of_budget_is_not_passed_by_another_domain(make_throttle: MakeThrottle) -> None:
    """The budget is the model's and the queues are the domains': the first
    waiter of one domain claims the budget it waits for, so that newcomers
    of another domain (whose queue is empty) do not take every refill."""
    t = make_throttle(wait_poll_seconds=30.0)  # the claim lasts the waiter's heartbeat, 90 s
    _register(t, tokens_per_minute=600)  # 10 tokens a second
    _grant(t, 0.0, tokens=600).success(now=0.0)
    core = t._core
    call, ref = core.acquire_call(P, M, "chat", 0.0, core.new_lease_id("a"), tokens=500, wait=True)
    queued = core.parse_acquire(ref, t._run(call))
    assert queued.retry_in == pytest.approx(50.0)
    for now in (1.0, 20.0, 49.0):  # small requests of another domain would fit, but not beside the claim
        other = t.try_acquire(provider_name=P, model_id=M, domain="embedding", tokens=10, now=now)
        assert isinstance(other, Denied)
        assert other.reason == "budget"
    call, ref = core.acquire_call(P, M, "chat", 50.0, ref.lease_id, tokens=500, wait=True, recheck=True)
    assert isinstance(core.parse_acquire(ref, t._run(call)), Grant)  # its turn came
    assert isinstance(t.try_acquire(provider_name=P, model_id=M, domain="embedding", tokens=10, now=51.0), Lease)


def test_a_waiter_that_gives_up_leaves_no_claim(make_throttle: MakeThrottle) -> None:
    t = make_throttle(wait_poll_seconds=30.0)
    _register(t, tokens_per_minute=600)
    _grant(t, 0.0, tokens=600).success(now=0.0)
    core = t._core
    call, ref = core.acquire_call(P, M, "chat", 0.0, core.new_lease_id("a"), tokens=500, wait=True)
    core.parse_acquire(ref, t._run(call))
    t._run(core.release_call(ref, "abandon", None, 1.0))
    assert isinstance(t.try_acquire(provider_name=P, model_id=M, domain="embedding", tokens=10, now=1.0), Lease)


def test_one_retry_after_holds_the_fleet_no_longer_than_max_cooldown(make_throttle: MakeThrottle) -> None:
    t = make_throttle(max_cooldown_seconds=30.0)
    _register(t)
    assert _grant(t, 100.0).rate_limited(retry_after=89.0, now=100.0).released
    assert state(t).blocked_until == pytest.approx(130.0)
    denied = _take(t, 129.0)
    assert isinstance(denied, Denied)
    assert denied.reason == "cooldown"
    assert isinstance(_take(t, 130.0), Lease)


@pytest.mark.parametrize("bad", [None, 1.5, "10", True])
def test_tokens_of_the_wrong_type_are_refused_before_redis(bad: object) -> None:
    t = Throttle(redis.Redis(port=1))  # nothing listens: refused before any call
    with pytest.raises(TypeError, match="tokens must be an int"):
        t.try_acquire(**TARGET, tokens=bad, now=0.0)  # type: ignore[arg-type]
    t.close()
