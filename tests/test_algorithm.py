"""Each rule of the algorithm, with injected time, on fakeredis and a real Redis."""

from __future__ import annotations

import pytest

from aimd_redis import Denied, Lease, NotRegisteredError

from .conftest import MakeThrottle
from .helpers import M, P, fill, grant, limit, rate_limit_at, reg, state, succeed, take

# -- registration --------------------------------------------------------


def test_effective_max_is_the_minimum_over_aliases(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    assert reg(t, 64, alias="gen") == 64
    assert reg(t, 16, alias="judge") == 16
    assert reg(t, 32, alias="other") == 16
    assert t.effective_max(P, M) == 16
    # An alias registering again replaces its own value.
    assert reg(t, 100, alias="judge") == 32


def test_lower_registration_clamps_existing_domains_and_never_raises_them(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 20)
    grant(t, 0, "chat")
    grant(t, 0, "embedding")
    assert limit(t, "chat") == limit(t, "embedding") == 20
    assert reg(t, 8, alias="small") == 8
    assert limit(t, "chat") == limit(t, "embedding") == 8
    assert reg(t, 50, alias="small") == 20
    assert limit(t, "chat") == limit(t, "embedding") == 8


def test_acquire_on_unregistered_model_says_to_register_and_creates_nothing(
    make_throttle: MakeThrottle, client
) -> None:
    t = make_throttle()
    with pytest.raises(NotRegisteredError, match="register") as info:
        take(t, 0)
    assert isinstance(info.value, RuntimeError)
    assert client.dbsize() == 0
    with pytest.raises(NotRegisteredError):
        t.effective_max(P, M)


# -- domain creation and the ramp -------------------------------------------


def test_a_new_domain_holds_every_state_field(make_throttle: MakeThrottle, client) -> None:
    t = make_throttle(rampup_seconds=10)
    reg(t, 5)
    grant(t, 100.0)
    fields = {k.decode(): v.decode() for k, v in client.hgetall("aimd:{openai/gpt-4o}:chat").items()}
    assert fields == {
        "current_limit": "1",
        "in_flight": "1",
        "blocked_until": "0",
        "success_streak": "0",
        "waiters": "0",
        "rate_limit_ceiling": "0",
        "consecutive_429s": "0",
        "rampup_started_at": "100",
        "rampup_active": "1",
        "ceiling_confirmed_at": "0",
        "last_cut_at": "0",
        "total_429s": "0",
        "total_reclaimed": "0",
        "probe_after": "0",
        "increase_step": "0",
        "policy": "classic",
        "rampup_seconds": "10",  # for the previous release during an upgrade
    }


def test_ramp_of_10s_to_5_gives_1_3_5(make_throttle: MakeThrottle) -> None:
    t = make_throttle(rampup_seconds=10)
    reg(t, 5)
    seen = []
    for now in (0.0, 5.0, 10.0):
        take(t, now)
        seen.append((state(t).current_limit, state(t).rampup_active))
    assert seen == [(1, True), (3, True), (5, False)]


def test_ramp_is_off_without_rampup_or_when_the_max_is_1(make_throttle: MakeThrottle) -> None:
    t = make_throttle(rampup_seconds=10)
    reg(t, 1, model=M)
    grant(t, 0)
    assert (limit(t), state(t).rampup_active) == (1, False)
    t2 = make_throttle(namespace="other")
    reg(t2, 7)
    grant(t2, 0)
    assert (limit(t2), state(t2).rampup_active) == (7, False)


def test_ramp_advances_on_successful_release_and_keeps_the_streak_at_zero(make_throttle: MakeThrottle) -> None:
    t = make_throttle(rampup_seconds=10, success_window=1)
    reg(t, 9)
    lease = grant(t, 0)
    assert lease.success(now=5).state.current_limit == 5  # 1 + floor(8 * 5/10)
    assert state(t).success_streak == 0
    assert state(t).rampup_active


def test_ramp_denies_above_its_current_step(make_throttle: MakeThrottle) -> None:
    t = make_throttle(rampup_seconds=10)
    reg(t, 5)
    grant(t, 0)
    denied = take(t, 1)
    assert isinstance(denied, Denied)
    assert denied.reason == "at_capacity"
    assert 0 < denied.retry_in < 1


# -- acquire ----------------------------------------------------------------


def test_acquire_during_cooldown_is_denied_with_the_time_left(make_throttle: MakeThrottle) -> None:
    t = make_throttle(cooldown_seconds=2.0)
    reg(t, 4)
    rate_limit_at(t, 10.0)
    denied = take(t, 10.5)
    assert isinstance(denied, Denied)
    assert denied.reason == "cooldown"
    assert denied.retry_in == pytest.approx(1.5)
    assert isinstance(take(t, 12.0), Lease)


def test_acquire_at_capacity_is_denied_until_a_slot_is_released(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 3)
    leases = fill(t, 3, 0)
    assert state(t).in_flight == 3
    denied = take(t, 0)
    assert isinstance(denied, Denied)
    assert denied.reason == "at_capacity"
    leases[0].failure(now=0)
    assert isinstance(take(t, 0), Lease)


# -- success ----------------------------------------------------------------


def test_a_full_success_window_adds_the_additive_increase(make_throttle: MakeThrottle) -> None:
    t = make_throttle(success_window=3, additive_increase=2)
    reg(t, 40)
    rate_limit_at(t, 0)  # 40 -> 30, ceiling 40
    succeed(t, 2, now=10)
    assert (limit(t), state(t).success_streak) == (30, 2)
    succeed(t, 1, now=10)
    assert (limit(t), state(t).success_streak) == (32, 0)


def test_429_at_40_cuts_to_30_and_successes_stop_at_44(make_throttle: MakeThrottle) -> None:
    t = make_throttle(success_window=1, ceiling_ttl_seconds=0)
    reg(t, 64)
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=64)
    grant(t, 0)  # create the domain
    # Bring the limit to 40 by hand, as an operator would with redis-cli.
    t._redis.hset("aimd:{openai/gpt-4o}:chat", "current_limit", 40)
    state_before = state(t)
    assert state_before.current_limit == 40
    rate_limit_at(t, 1.0)
    assert (limit(t), state(t).rate_limit_ceiling) == (30, 40)
    succeed(t, 30, now=5.0)
    assert limit(t) == 44
    succeed(t, 5, now=5.0)
    assert limit(t) == 44


def test_without_a_ceiling_successes_climb_to_the_effective_max(make_throttle: MakeThrottle) -> None:
    t = make_throttle(success_window=1)
    reg(t, 3)
    grant(t, 0).failure(now=0)
    t._redis.hset("aimd:{openai/gpt-4o}:chat", "current_limit", 1)
    succeed(t, 5, now=0)
    assert limit(t) == 3


# -- rate limited ---------------------------------------------------------------


def test_only_the_first_429_of_a_cascade_cuts(make_throttle: MakeThrottle) -> None:
    t = make_throttle(reduce_factor=0.5)
    reg(t, 16)
    burst = fill(t, 4, 0)
    for lease in burst:
        lease.rate_limited(now=0)
    s = state(t)
    assert (s.current_limit, s.rate_limit_ceiling, s.consecutive_429s) == (8, 16, 4)
    # A success ends the cascade; the next 429 cuts again, and lowers the ceiling.
    succeed(t, 1, now=10)
    assert state(t).consecutive_429s == 0
    rate_limit_at(t, 11)
    assert (limit(t), state(t).rate_limit_ceiling) == (4, 8)


def test_a_429_at_limit_1_records_no_ceiling(make_throttle: MakeThrottle) -> None:
    t = make_throttle()
    reg(t, 1)
    rate_limit_at(t, 0)
    s = state(t)
    assert (s.current_limit, s.rate_limit_ceiling, s.consecutive_429s) == (1, 0, 1)


def test_a_429_during_the_ramp_ends_it_for_good(make_throttle: MakeThrottle) -> None:
    t = make_throttle(rampup_seconds=8, reduce_factor=0.5)
    reg(t, 9)
    grant(t, 0)
    rate_limit_at(t, 4.0)  # ramp at 1 + floor(8 * 4/8) = 5
    s = state(t)
    assert (s.current_limit, s.rate_limit_ceiling, s.rampup_active) == (2, 5, False)
    succeed(t, 1, now=100)  # long after the ramp would have ended
    assert limit(t) == 2


def test_the_ceiling_keeps_the_lower_of_the_old_ceiling_and_the_pre_cut_limit(make_throttle: MakeThrottle) -> None:
    t = make_throttle(reduce_factor=0.5, ceiling_ttl_seconds=0)
    reg(t, 20)
    rate_limit_at(t, 0)  # 20 -> 10, ceiling 20
    succeed(t, 1, now=5)
    t._redis.hset("aimd:{openai/gpt-4o}:chat", "current_limit", 30)  # clamped to 20 on the next touch
    rate_limit_at(t, 10)  # 20 -> 10, ceiling stays min(20, 20)
    assert state(t).rate_limit_ceiling == 20
    succeed(t, 1, now=20)
    rate_limit_at(t, 30)  # 10 -> 5, ceiling min(20, 10)
    assert (limit(t), state(t).rate_limit_ceiling) == (5, 10)


@pytest.mark.parametrize(
    ("retry_after", "blocked_for"),
    [(7.5, 7.5), (None, 2.0), (0, 2.0), (-3, 2.0), (float("nan"), 2.0), (float("inf"), 2.0), (10**9, 3600.0)],
)
def test_retry_after_sets_the_cooldown(
    make_throttle: MakeThrottle, retry_after: float | None, blocked_for: float
) -> None:
    t = make_throttle(cooldown_seconds=2.0)
    reg(t, 4)
    rate_limit_at(t, 100.0, retry_after=retry_after)
    assert state(t).blocked_until == pytest.approx(100.0 + blocked_for)


# -- other failures ------------------------------------------------------------


def test_a_failure_ends_a_429_cascade_only_once_the_burst_has_drained(make_throttle: MakeThrottle) -> None:
    t = make_throttle(reduce_factor=0.5)
    reg(t, 16)
    a, b, c = fill(t, 3, 0)
    a.rate_limited(now=0)
    b.failure(now=0)
    assert state(t).consecutive_429s == 1  # c still in flight
    c.failure(now=0)
    assert state(t).consecutive_429s == 0
    rate_limit_at(t, 10)  # a new cascade cuts again
    assert limit(t) == 4


def test_a_failure_leaves_the_ramp_running(make_throttle: MakeThrottle) -> None:
    t = make_throttle(rampup_seconds=10)
    reg(t, 5)
    grant(t, 0).failure(now=1)
    assert state(t).rampup_active
    take(t, 5)
    assert limit(t) == 3


# -- ceiling expiry ----------------------------------------------------------------


def test_an_unconfirmed_ceiling_is_forgotten_after_its_ttl(make_throttle: MakeThrottle) -> None:
    t = make_throttle(ceiling_ttl_seconds=60, reduce_factor=0.5, success_window=1)
    reg(t, 32)
    rate_limit_at(t, 0)  # 32 -> 16, ceiling 32
    succeed(t, 1, now=3)
    rate_limit_at(t, 10)  # 16 -> 8, ceiling 16, confirmed at 10
    succeed(t, 1, now=20)
    rate_limit_at(t, 40)  # a later 429 confirms it again: 9 -> 4, ceiling 9
    assert state(t).rate_limit_ceiling == 9
    take(t, 99.0)
    assert state(t).rate_limit_ceiling == 9
    take(t, 100.0)
    assert state(t).rate_limit_ceiling == 0
    succeed(t, 40, now=101)  # nothing holds the limit at 9 + 1 any more
    assert limit(t) == 32


def test_a_ceiling_ttl_of_zero_keeps_the_ceiling(make_throttle: MakeThrottle) -> None:
    t = make_throttle(ceiling_ttl_seconds=0, reduce_factor=0.5)
    reg(t, 8)
    rate_limit_at(t, 0)
    take(t, 10**6)
    assert state(t).rate_limit_ceiling == 8
