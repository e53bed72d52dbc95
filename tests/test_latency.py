"""The latency policy's rules, with injected time, on every backend: each
request's time is measured in Redis (granted to reported), per token used
when the caller says, or its first byte's."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from aimd_redis import ArgumentTypeError, InvalidArgumentError, Lease, Throttle

from .conftest import MakeThrottle
from .helpers import M, P, events_of, grant, limit, reg, state


def latency(make_throttle: MakeThrottle, **config: Any) -> Throttle:
    return make_throttle(policy="latency", latency_tolerance=1.5, **config)


def field(client: Any, name: str) -> float:
    return float(client.hget(f"aimd:{{{P}/{M}}}:chat", name))


class Clock:
    """Requests one after another, each granted when the last one ended."""

    def __init__(self, t: Throttle, now: float = 0.0) -> None:
        self.t, self.now = t, now

    def serve(self, n: int, took: float, **outcome: Any) -> None:
        for _ in range(n):
            lease = grant(self.t, self.now)
            self.now += took
            assert lease.success(now=self.now, **outcome).released


def test_latency_past_tolerance_steps_the_limit_down_to_where_it_holds(
    make_throttle: MakeThrottle, client: Any
) -> None:
    t = latency(make_throttle, latency_window_seconds=10_000)
    reg(t, 16)
    clock = Clock(t)
    clock.serve(40, 1.0)  # the first 20 find the no-load latency
    assert (limit(t), field(client, "latency_noload"), field(client, "latency_recent")) == (16, 1.0, 1.0)
    clock.serve(300, 1.8)  # 1.8 times no load, tolerance 1.5: a queue
    # A step a round, never more than a halving, down to where
    # limit * 1.5 / 1.8 + sqrt(limit) / 2 is the limit again: 8.
    steps = [16] + [int(e.new) for e in events_of(client) if e.event == "latency"]
    assert all(a // 2 <= b < a for a, b in itertools.pairwise(steps))
    assert steps[-1] == limit(t) == 8
    assert field(client, "latency_noload") == 1.0


def test_a_server_slower_for_everyone_is_measured_again_in_a_dip_not_cut(
    make_throttle: MakeThrottle, client: Any
) -> None:
    t = latency(make_throttle, latency_window_seconds=10)
    reg(t, 16)
    clock = Clock(t)
    clock.serve(40, 1.0)
    clock.serve(200, 2.5)  # the whole server slower, whatever the load
    names = [(e.event, e.new) for e in events_of(client) if e.event.startswith("latency")]
    # The first round that says "queue" dips to a quarter. Its requests find
    # 2.5 times the old no-load latency: a queue still, or a slower server? A
    # dip to a quarter of that finds the same: the new no-load latency. The
    # limit goes back (to the step it was to take) and stays: no cut.
    assert names[:4] == [
        ("latency_dip", 4),
        ("latency_noload", pytest.approx(2.5)),
        ("latency_dip", 1),
        ("latency_noload", pytest.approx(2.5)),
    ]
    assert names[4][0] == "latency_back"
    assert names[4:] == [names[4]]
    assert limit(t) == names[4][1] >= 8
    assert field(client, "latency_noload") == pytest.approx(2.5)


def test_a_long_answer_is_not_read_as_queueing_when_its_tokens_are_reported(
    make_throttle: MakeThrottle, client: Any
) -> None:
    t = latency(make_throttle, latency_window_seconds=10_000)
    reg(t, 16)
    clock = Clock(t)
    for tokens in [10, 400, 50, 200] * 40:  # 10 ms a token, whatever the length
        clock.serve(1, 0.01 * tokens, tokens=tokens)
    assert limit(t) == 16
    assert not [e for e in events_of(client) if e.event == "latency"]


def test_widely_scattered_samples_are_not_read_as_a_queue(make_throttle: MakeThrottle) -> None:
    t = latency(make_throttle, latency_window_seconds=10)
    reg(t, 16)
    clock = Clock(t)
    for took in [0.3, 3.0, 1.0, 8.0, 0.5, 2.0] * 40:  # answers of unknown length
        clock.serve(1, took)
    assert limit(t) == 16


def test_a_streams_first_byte_is_the_signal_when_no_usage_is_reported(make_throttle: MakeThrottle) -> None:
    t = latency(make_throttle, latency_window_seconds=10_000)
    reg(t, 16)
    clock = Clock(t)
    for took in [0.5, 20.0, 3.0, 9.0] * 10:  # the answers' lengths vary; their first bytes do not
        clock.serve(1, took, ttfb=0.2)
    assert limit(t) == 16
    clock.serve(100, 5.0, ttfb=0.6)  # the first byte three times later: a queue
    assert limit(t) < 16


def test_a_429_does_what_adaptive_does(make_throttle: MakeThrottle) -> None:
    t = latency(make_throttle)
    reg(t, 16)
    leases = [grant(t, 10.0) for _ in range(16)]
    assert leases[-1].rate_limited(retry_after=30, now=10.0).released
    s = state(t)
    assert (s.current_limit, s.rate_limit_ceiling, s.blocked_until) == (15, 16, 0.0)


def test_the_other_policies_measure_nothing(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle(policy="adaptive")
    reg(t, 16)
    Clock(t).serve(20, 3.0, ttfb=0.5)
    assert client.hget(f"aimd:{{{P}/{M}}}:chat", "latency_noload") is None  # nor keep its fields


@pytest.mark.parametrize(
    ("ttfb", "error"),
    [
        (-1.0, InvalidArgumentError),
        (math.nan, InvalidArgumentError),
        (math.inf, InvalidArgumentError),
        ("0.5", ArgumentTypeError),
        (True, ArgumentTypeError),
    ],
)
def test_a_bad_ttfb_is_refused_before_redis_and_the_slot_comes_back(
    make_throttle: MakeThrottle, ttfb: Any, error: type[Exception]
) -> None:
    t = latency(make_throttle)
    reg(t, 2)
    lease = grant(t, 1.0)
    with pytest.raises(error, match="ttfb"):
        lease.success(now=2.0, ttfb=ttfb)
    assert state(t).in_flight == 0
    assert isinstance(lease, Lease)


def test_status_and_the_exporter_show_the_latency_against_no_load(real_redis: Any) -> None:
    from aimd_redis import ThrottleConfig
    from aimd_redis.ops.cli import status_table
    from aimd_redis.ops.exporter import ThrottleCollector
    from aimd_redis.ops.inspect import report

    t = Throttle(real_redis, config=ThrottleConfig(policy="latency"))
    try:
        reg(t, 16)
        clock = Clock(t, now=1000.0)
        clock.serve(20, 0.5)
        clock.serve(5, 0.8)
    finally:
        t.close()
    (r,) = report(real_redis, "aimd")
    assert r.latency_noload == 0.5
    assert r.latency_recent == pytest.approx(0.5 * 1.06**5)  # on its way to 0.8, 6% a sample
    assert f"{0.5 * 1.06**5 / 0.5:.1f}x no load" in status_table([r])
    metrics = {f.name: f.samples[0].value for f in ThrottleCollector(real_redis, "aimd").collect() if f.samples}
    assert metrics["aimd_latency_noload"] == 0.5
    assert metrics["aimd_latency_recent"] == pytest.approx(0.5 * 1.06**5)
