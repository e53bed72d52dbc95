"""The adaptive policy's rules, with injected time, on every backend."""

from __future__ import annotations

from typing import Any

import pytest

from aimd_redis import Denied, Lease, Throttle

from .conftest import MakeThrottle
from .helpers import M, P, fill, grant, limit, reg, state, take


def adaptive(make_throttle: MakeThrottle, **config: Any) -> Throttle:
    return make_throttle(policy="adaptive", success_window=25, **config)


def field(client: Any, name: str) -> int:
    return int(client.hget(f"aimd:{{{P}/{M}}}:chat", name))


def start_at(t: Throttle, client: Any, limit: int) -> None:
    """The domain created, at ``limit`` with no mark (set-limit, then the mark cleared by hand)."""
    release_all(fill(t, 1, 0), 0)
    t.set_limit(P, M, "chat", limit, now=0)
    client.hset(f"aimd:{{{P}/{M}}}:chat", "rate_limit_ceiling", 0)


def cycle(t: Throttle, n: int, now: float) -> list[Lease]:
    """n successes while every slot is taken: fill the limit, then pass one
    slot round n times. Returns the leases still held (limit - 1 of them)."""
    held = fill(t, limit(t) - 1, now)
    for _ in range(n):
        assert grant(t, now).success(now=now).released
    return held


def release_all(leases: list[Lease], now: float) -> None:
    for lease in leases:
        lease.failure(now=now)


def at_capacity_429(t: Throttle, now: float, retry_after: float | None = 0.5) -> list[Lease]:
    """Every slot taken, and the last request refused: what a server full at
    the limit does. Returns the leases still held."""
    first = grant(t, now)  # the acquire creates the domain, and brings its ramp up to date
    leases = [first, *fill(t, limit(t) - 1, now)]
    assert leases[-1].rate_limited(retry_after=retry_after, now=now).released
    return leases[:-1]


def test_a_429_at_capacity_costs_one_slot_and_pauses_nobody(make_throttle: MakeThrottle) -> None:
    t = adaptive(make_throttle)
    reg(t, 16)
    held = at_capacity_429(t, 10.0, retry_after=30)
    s = state(t)
    assert (s.current_limit, s.rate_limit_ceiling, s.blocked_until) == (15, 16, 0.0)
    # No cooldown: the 15 slots are simply all in use, and the next frees one.
    denied = take(t, 10.0)
    assert isinstance(denied, Denied)
    assert denied.reason == "at_capacity"
    held[0].success(now=10.5)
    assert isinstance(take(t, 10.5), Lease)


def test_classic_pauses_the_fleet_and_cuts_a_quarter_for_the_same_429(make_throttle: MakeThrottle) -> None:
    t = make_throttle(policy="classic")
    reg(t, 16)
    held = at_capacity_429(t, 10.0, retry_after=30)
    assert (limit(t), state(t).blocked_until) == (12, 40.0)
    held[0].success(now=10.5)
    denied = take(t, 10.5)
    assert isinstance(denied, Denied)
    assert denied.reason == "cooldown"


def test_the_mark_is_probed_after_probe_after_successes_and_each_refusal_doubles_the_wait(
    make_throttle: MakeThrottle, client: Any
) -> None:
    t = adaptive(make_throttle)
    reg(t, 32)
    start_at(t, client, 16)
    release_all(at_capacity_429(t, 1.0), 1.0)  # the mark at 16, the limit at 15
    assert field(client, "probe_after") == 50  # two success windows
    release_all(cycle(t, 49, 2.0), 2.0)
    assert limit(t) == 15
    release_all(cycle(t, 1, 2.0), 2.0)
    assert limit(t) == 16  # the probe
    release_all(at_capacity_429(t, 3.0), 3.0)  # refused at once: the capacity is still 15
    assert (limit(t), state(t).rate_limit_ceiling, field(client, "probe_after")) == (15, 16, 100)
    release_all(cycle(t, 99 - 50, 4.0), 4.0)  # coming back under a probed mark counts 50 already
    assert limit(t) == 15
    release_all(cycle(t, 1, 4.0), 4.0)
    assert limit(t) == 16


def test_a_probe_that_holds_drops_the_mark_and_the_limit_climbs_faster_each_round(
    make_throttle: MakeThrottle, client: Any
) -> None:
    t = adaptive(make_throttle)
    reg(t, 64)
    start_at(t, client, 16)
    release_all(at_capacity_429(t, 1.0), 1.0)
    release_all(cycle(t, 50, 2.0), 2.0)
    assert limit(t) == 16  # probing the mark
    release_all(cycle(t, 25, 3.0), 3.0)  # held for a success window: the capacity grew
    assert (limit(t), state(t).rate_limit_ceiling, field(client, "increase_step")) == (17, 0, 2)
    climbed = []
    for now in (4.0, 5.0, 6.0, 7.0):
        release_all(cycle(t, limit(t), now), now)  # a round each
        climbed.append(limit(t))
    assert climbed == [19, 23, 28, 35]  # steps 2, 4, 5, 7: doubling, at most a quarter of the limit


def test_a_ceiling_learned_low_during_the_ramp_does_not_pin_the_fleet(make_throttle: MakeThrottle) -> None:
    """A warming server refuses a request while the ramp is at 3; it then
    serves everything. Classic stays at the soft cap above 3 until the
    ceiling expires; adaptive climbs back within a few dozen successes."""
    results = {}
    for namespace, policy in (("aimd", "classic"), ("other", "adaptive")):
        t = make_throttle(namespace=namespace, policy=policy, rampup_seconds=20, success_window=25)
        reg(t, 32)
        grant(t, 0.0).success(now=0.0)  # the domain and its ramp start
        release_all(at_capacity_429(t, 1.3), 1.3)  # ramp at 3: refused
        assert not state(t).rampup_active
        successes = 0
        while limit(t) < 16 and successes < 400:
            release_all(cycle(t, 1, 2.0), 2.0)
            successes += 1
        results[policy] = (limit(t), successes)
    assert results["classic"][0] <= 4
    assert results["adaptive"][0] >= 16
    assert results["adaptive"][1] <= 100


def test_a_429_at_the_held_level_is_noise_until_it_repeats(make_throttle: MakeThrottle, client: Any) -> None:
    t = adaptive(make_throttle)
    reg(t, 32)
    start_at(t, client, 16)
    release_all(at_capacity_429(t, 1.0), 1.0)
    release_all(cycle(t, 50, 2.0), 2.0)
    release_all(at_capacity_429(t, 3.0), 3.0)  # a refused probe: back at 15 under the mark 16
    release_all(at_capacity_429(t, 4.0), 4.0)  # a 429 at 15: noise, nothing changes
    assert (limit(t), state(t).rate_limit_ceiling) == (15, 16)
    release_all(cycle(t, 1, 5.0), 5.0)
    release_all(at_capacity_429(t, 6.0), 6.0)  # again, soon after: the capacity is below 15
    assert (limit(t), state(t).rate_limit_ceiling) == (14, 15)


def test_429s_of_a_burst_sent_before_the_cut_take_one_slot_each_and_count_nothing(
    make_throttle: MakeThrottle,
) -> None:
    t = adaptive(make_throttle)
    reg(t, 20)
    burst = fill(t, 20, 0.0)  # sent together; the server takes 16
    for lease in burst[:4]:
        assert lease.rate_limited(now=1.0).released
    s = state(t)
    assert (s.current_limit, s.rate_limit_ceiling, s.consecutive_429s, s.blocked_until) == (16, 17, 0, 0.0)


def test_429s_that_persist_cut_multiplicatively_and_pause_the_fleet_only_at_limit_1(
    make_throttle: MakeThrottle,
) -> None:
    t = adaptive(make_throttle, reduce_factor=0.5)
    reg(t, 8)
    seen = []
    now = 1.0
    while True:
        # Every request sent gets a 429: a quota ran out.
        lease = grant(t, now)
        assert lease.rate_limited(retry_after=30, now=now).released
        s = state(t)
        seen.append(s.current_limit)
        if s.blocked_until:
            break
        now += 0.25
    # 8 refused: the top found (7); 7 and 6 refused soon after: the mark was
    # too high (6, 5); nothing has got through since the cuts: multiplicative
    # (2, 1); refused at 1, where nothing is left to cut: the fleet pauses.
    assert seen == [7, 6, 5, 2, 1, 1]
    assert state(t).blocked_until == now + 30
    denied = take(t, now + 1)
    assert isinstance(denied, Denied)
    assert denied.reason == "cooldown"


def test_a_long_retry_after_on_one_request_does_not_stop_the_fleet(make_throttle: MakeThrottle) -> None:
    t = adaptive(make_throttle)
    reg(t, 16)
    lease = grant(t, 5.0)
    lease.rate_limited(retry_after=90, now=5.0)
    assert state(t).blocked_until == 0
    assert isinstance(take(t, 5.0), Lease)


def test_successes_move_the_limit_only_while_the_fleet_uses_it_all(make_throttle: MakeThrottle, client: Any) -> None:
    t = adaptive(make_throttle)
    reg(t, 32)
    start_at(t, client, 8)
    release_all(at_capacity_429(t, 1.0), 1.0)  # limit 7 under the mark 8
    for _ in range(200):  # one request at a time: the limit is not what holds the fleet back
        assert grant(t, 2.0).success(now=2.0).released
    assert limit(t) == 7
    release_all(cycle(t, 50, 3.0), 3.0)
    assert limit(t) == 8


def test_a_limit_set_by_hand_holds_and_is_probed_in_time(make_throttle: MakeThrottle) -> None:
    t = adaptive(make_throttle)
    reg(t, 32)
    release_all(fill(t, 1, 0), 0)
    assert t.set_limit(P, M, "chat", 5, now=0) == 5
    assert state(t).rate_limit_ceiling == 6
    release_all(cycle(t, 9, 1.0), 1.0)  # two rounds would have climbed back under no mark
    assert limit(t) == 5
    release_all(cycle(t, 1, 1.0), 1.0)
    assert limit(t) == 6  # the probe, after two rounds


@pytest.mark.parametrize("policy", ["classic", "adaptive"])
def test_both_policies_ramp_the_same_and_a_429_ends_the_ramp(make_throttle: MakeThrottle, policy: str) -> None:
    t = make_throttle(policy=policy, rampup_seconds=10)
    reg(t, 5)
    seen = []
    for now in (0.0, 5.0):
        grant(t, now).success(now=now)
        seen.append(limit(t))
    assert seen == [1, 3]
    release_all(at_capacity_429(t, 6.0), 6.0)
    assert not state(t).rampup_active
    take(t, 10.0)
    assert limit(t) < 5  # the ramp would have reached 5


def test_a_request_sent_before_a_cut_stays_stale_when_its_lease_was_renewed(make_throttle: MakeThrottle) -> None:
    t = adaptive(make_throttle)
    reg(t, 8)
    long_stream = grant(t, 0.0)  # sent before anything went wrong
    others = fill(t, 7, 1.0)
    others[-1].rate_limited(now=1.0)  # the top found: mark 8, limit 7
    release_all(others[:-1], 1.0)
    lease = grant(t, 2.0)
    lease.rate_limited(now=2.0)  # under the mark, soon after: a cut, one 429 that counts
    assert state(t).consecutive_429s == 1
    assert long_stream.renew(now=3.0)  # renewed after the cut
    long_stream.success(now=4.0)
    assert state(t).consecutive_429s == 1  # its success says nothing about the level after the cut
