"""The control simulator: its arithmetic, and the loop's quality on two short
scenarios (the real scripts on a real Redis, in simulated time)."""

from __future__ import annotations

import pytest
import redis

from aimd_redis.demo.simulator import BY_NAME, Point, Request, SimRun, figures, simulate, steps, uniform, with_


def test_goodput_counts_capacity_the_fleet_could_use_and_the_time_spent_serving() -> None:
    s = with_(BY_NAME["steady"], capacity=steps(2), seconds=10.0, steady=(5.0, 10.0), service=uniform(5.0))
    points = [Point(t, 2, 0, 2, 0, 0, 4) for t in range(10)]
    requests = [
        Request(0.0, 5.0, 200, 1, 2),
        Request(5.0, 10.0, 200, 1, 2),
        Request(1.0, 1.0, 429, 3, 2),  # over capacity: the fleet's doing
        Request(6.0, 6.0, 429, 1, 2),  # refused at random
    ]
    f = figures(
        SimRun(scenario="steady", policy="adaptive", end=10.0, requests=requests, points=points, script_calls=0), s
    )
    assert f.goodput == pytest.approx(10.0 / 20.0)  # 10 slot-seconds served of 2 x 10
    assert f.steady_goodput == pytest.approx(5.0 / 10.0)
    assert (f.refused, f.refused_share, f.caused_share) == (2, 0.5, 0.25)
    assert f.steady_refused_share == pytest.approx(1 / 2)
    assert f.max_concurrency == 3


@pytest.mark.parametrize("name", ["steady", "hiccup"])
def test_the_adaptive_loop_uses_the_capacity_where_classic_leaves_it(real_redis: redis.Redis, name: str) -> None:
    """The sawtooth (steady) and a ceiling learned in a warm-up hiccup, cut to 45 s."""
    s = with_(BY_NAME[name], seconds=45.0, steady=(20.0, 45.0))
    got = {policy: figures(simulate(real_redis, s, policy), s) for policy in ("classic", "adaptive")}
    adaptive, classic = got["adaptive"], got["classic"]
    assert adaptive.steady_goodput is not None
    assert adaptive.steady_refused_share is not None
    assert adaptive.steady_goodput >= 0.9
    assert adaptive.steady_refused_share <= 0.01
    assert adaptive.goodput > classic.goodput + 0.1
    assert adaptive.max_concurrency <= 17  # never more than one over the capacity of 16


def test_a_fleet_that_knows_the_token_budget_uses_it_without_429s(real_redis: redis.Redis) -> None:
    """Estimates that run low (400 reserved, 600 to 800 used): the budget
    registered or learned from the headers, against the concurrency loop alone."""
    got = {}
    for budget in ("registered", "learned", "ignored"):
        s = with_(BY_NAME["tpm-low-estimate"], budget=budget, seconds=150.0, steady=(60.0, 150.0))
        got[budget] = figures(simulate(real_redis, s, "adaptive"), s)
    for budget in ("registered", "learned"):
        f = got[budget]
        assert f.budget_share is not None
        assert f.steady_refused_share is not None
        assert f.budget_share >= 0.9, budget
        assert f.steady_refused_share <= 0.01, budget
    ignored = got["ignored"].steady_refused_share
    assert ignored is not None
    assert ignored > 0.02  # learning only from 429s costs refusals
