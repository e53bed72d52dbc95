"""Leases: reclaimed on expiry, released once, renewed while held."""

from __future__ import annotations

import pytest

from aimd_redis import Denied, Lease

from .conftest import MakeThrottle
from .helpers import fill, grant, reg, state, take


def test_releasing_twice_changes_nothing_and_says_so(make_throttle: MakeThrottle) -> None:
    t = make_throttle(success_window=1)
    reg(t, 4)
    lease = grant(t, 0)
    first = lease.rate_limited(now=0)
    second = lease.success(now=10)
    assert (first.released, second.released) == (True, False)
    after = state(t)
    assert (after.consecutive_429s, after.current_limit, after.success_streak) == (1, 3, 0)


def test_an_expired_lease_is_reclaimed_and_its_late_outcome_ignored(make_throttle: MakeThrottle) -> None:
    t = make_throttle(lease_ttl_seconds=30, reduce_factor=0.5)
    reg(t, 2)
    stale, _ = fill(t, 2, 0)
    assert isinstance(take(t, 29.0), Denied)
    fresh = take(t, 30.0)  # the first two expired at exactly 30
    assert isinstance(fresh, Lease)
    assert state(t).in_flight == 1
    late = stale.rate_limited(now=31.0)
    assert not late.released
    assert late.state is not None
    assert (late.state.current_limit, late.state.consecutive_429s, late.state.in_flight) == (2, 0, 1)


def test_renewal_keeps_a_lease_alive_and_cannot_revive_an_expired_one(make_throttle: MakeThrottle) -> None:
    t = make_throttle(lease_ttl_seconds=30)
    reg(t, 1)
    lease = grant(t, 0)
    assert lease.renew(now=20)
    assert lease.expires_at == 50
    assert isinstance(take(t, 45), Denied)  # still held thanks to the renewal
    assert lease.success(now=49).released
    other = grant(t, 50)
    assert not other.renew(now=80)  # expired at 80
    assert state(t).in_flight == 1  # not reaped until the next acquire or release
    assert isinstance(take(t, 80), Lease)
    assert not other.success(now=80).released


def test_slot_reports_success_on_normal_exit(make_throttle: MakeThrottle) -> None:
    t = make_throttle(success_window=5)
    reg(t, 4)
    with t.slot(provider_name="openai", model_id="gpt-4o", domain="chat") as lease:
        assert state(t).in_flight == 1
    assert lease.reported
    assert (state(t).in_flight, state(t).success_streak) == (0, 1)


def test_slot_reports_failure_on_an_exception(make_throttle: MakeThrottle) -> None:
    t = make_throttle(success_window=2)
    reg(t, 4)
    with pytest.raises(KeyError), t.slot(provider_name="openai", model_id="gpt-4o", domain="chat"):
        raise KeyError("boom")
    s = state(t)
    assert (s.in_flight, s.success_streak, s.current_limit) == (0, 0, 4)


def test_slot_does_not_report_twice_after_a_429(make_throttle: MakeThrottle) -> None:
    t = make_throttle(success_window=1)
    reg(t, 8)
    with t.slot(provider_name="openai", model_id="gpt-4o", domain="chat") as lease:
        lease.rate_limited(retry_after=0.001)
    s = state(t)
    assert (s.in_flight, s.current_limit, s.consecutive_429s, s.success_streak) == (0, 6, 1, 0)


def test_sync_acquire_waits_and_times_out(make_throttle: MakeThrottle) -> None:
    import time

    from aimd_redis import AcquireTimeout

    t = make_throttle()
    reg(t, 1)
    target = {"provider_name": "openai", "model_id": "gpt-4o", "domain": "chat"}
    held = t.acquire(**target, timeout=0)
    held.rate_limited(retry_after=30)
    started = time.monotonic()
    with pytest.raises(AcquireTimeout, match="timed out"):
        t.acquire(**target, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 3


@pytest.mark.parametrize("policy", ["classic", "adaptive"])
def test_giving_up_on_an_acquire_frees_the_slot_it_granted_and_blocks_one_not_yet_run(
    make_throttle: MakeThrottle, policy: str
) -> None:
    """What a client does when an acquire is cut off and it cannot know
    whether the script ran: it gives the lease id back ('abandon')."""
    t = make_throttle(policy=policy)
    reg(t, 1)
    core = t._core
    call, ref = core.acquire_call("openai", "gpt-4o", "chat", 0.0, core.new_lease_id("c"))
    t._run(call)  # granted; the reply was lost
    assert state(t).in_flight == 1
    assert core.parse_release(ref, t._run(core.release_call(ref, "abandon", None, 1.0)))[0].released
    s = state(t)
    assert (s.in_flight, s.current_limit, s.consecutive_429s, s.success_streak) == (0, 1, 0, 0)
    # Given up before it ran: when the acquire arrives it grants nothing.
    call, ref = core.acquire_call("openai", "gpt-4o", "chat", 2.0, core.new_lease_id("c"))
    assert not core.parse_release(ref, t._run(core.release_call(ref, "abandon", None, 2.0)))[0].released
    with pytest.raises(RuntimeError, match="abandoned"):
        core.parse_acquire(ref, t._run(call))
    assert state(t).in_flight == 0
    assert isinstance(take(t, 3.0), Lease)


def test_a_slot_given_back_frees_it_and_teaches_the_rules_nothing(make_throttle: MakeThrottle) -> None:
    t = make_throttle(success_window=1)
    reg(t, 2)
    first = grant(t, 0)
    assert first.rate_limited(now=0).released
    second = grant(t, 5)  # after the cooldown; one 429 so far in the cascade
    back = second.give_back(now=6)
    assert back.released
    assert not second.success(now=7).released
    after = state(t)
    # A failure or success would have reset the cascade or grown the streak.
    assert (after.in_flight, after.consecutive_429s, after.success_streak, after.current_limit) == (0, 1, 0, 1)
