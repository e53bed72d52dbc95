"""The control simulator: its arithmetic, and the loop's quality on two short
scenarios (the real scripts on a real Redis, in simulated time)."""

from __future__ import annotations

import pytest
import redis

from aimd_redis.demo.servers import Batching, Queue
from aimd_redis.demo.simulator import (
    BY_NAME,
    CLIENTS,
    Point,
    Request,
    Scenario,
    SimRun,
    Simulation,
    figures,
    queue_figures,
    scenario_config,
    simulate,
    steps,
    uniform,
    with_,
)


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


def test_a_queueing_server_batches_up_to_its_knee_and_queues_the_rest_in_order() -> None:
    server: Queue[str] = Queue(Batching(growth=0.5, queue_cap=2), knee=2)
    assert server.arrive("a") is True
    alone = server.join(1.0, now=0.0)
    assert alone.seconds == pytest.approx(1.25)  # a batch of 1 of 2: 1 + 0.5 x 1/2
    assert server.arrive("b") is True
    assert server.join(1.0, now=0.0).seconds == pytest.approx(1.5)  # a full batch: 1.5x
    assert [server.arrive(x) for x in "cde"] == [False, False, None]  # queued, queued, 503 past the cap
    assert server.leave() == ["c"]  # first come, first served
    server.knee = 4  # scaled out
    assert server.admit() == ["d"]
    assert Batching(growth=0.5).rate(batch=8, knee=2, mean_work=1.0) == pytest.approx(2 / 1.5)  # the knee's


def test_a_loop_deaf_to_queueing_fills_the_queue_while_a_small_fleet_stays_fast(real_redis: redis.Redis) -> None:
    """Today's policies against a server that queues: the throughput is all
    there, but a fleet above the knee waits in the server's queue."""
    s = with_(BY_NAME["q-batch"], seconds=30.0, steady=(15.0, 30.0))
    large = queue_figures(simulate(real_redis, s, "adaptive"), s)
    assert large.throughput_share >= 0.9
    assert large.median_x > 5  # 64 at the server against a batch of 12
    assert large.queued >= 50
    small = with_(BY_NAME["q-small-fleet"], seconds=30.0, steady=(15.0, 30.0))
    fast = queue_figures(simulate(real_redis, small, "adaptive"), small)
    assert fast.median_x <= 2.0
    assert fast.queued == 0
    assert fast.throughput_share >= 0.9  # of what 8 tasks can get from a batch of 12


def test_a_stream_shows_the_queue_in_its_first_token(real_redis: redis.Redis) -> None:
    s = with_(BY_NAME["q-stream"], seconds=30.0, steady=(15.0, 30.0))
    f = queue_figures(simulate(real_redis, s, "classic"), s)
    assert f.first_x is not None
    # The first token waits out the queue, and alone it comes in a tenth of the answer's time.
    assert f.first_x[0] > 5 * f.median_x


def _waiting_fleet() -> Scenario:
    """4 pods x 64 tasks on 2 s requests, 8 slots a pod: 56 tasks a pod wait."""
    return with_(
        BY_NAME["steady"],
        seconds=8.0,
        capacity=steps(10**9),
        service=uniform(2.0, 0.05),
        processes=4,
        tasks=64,
        peak=32,
        rampup_seconds=0.0,
        count_entries=True,
        start_spread=2.0,
    )


def test_the_task_client_costs_redis_a_waiter_entry_and_a_poll_per_waiting_task(real_redis: redis.Redis) -> None:
    """Each waiting task is its own entry in Redis and re-runs the acquire
    script every ``wait_poll_seconds`` (2 s)."""
    run = simulate(real_redis, _waiting_fleet(), "classic", fleet=CLIENTS["task"])
    assert sum(run.waiter_entries[-20:]) / 20 == pytest.approx(4 * 56, abs=4)
    calls_per_second = run.script_calls / run.end
    # 224 waiters x 0.5 polls a second, plus about 2 calls per request at 16 requests a second
    assert 4 * 56 * 0.5 <= calls_per_second <= 4 * 56 * 0.5 + 16 * 3 + 40


def test_the_agent_costs_redis_one_waiter_entry_per_pod_and_batches_per_request(real_redis: redis.Redis) -> None:
    """A pod's waiting tasks are one entry in Redis, with no poll of their
    own: what the pods cost is their requests' batches and a heartbeat each."""
    s = _waiting_fleet()
    sim = Simulation(real_redis, s, scenario_config(s, "classic"), fleet=CLIENTS["agent"])
    started: list[int] = []
    sim.at(4.0, lambda _: started.append(sim.calls), None)  # every task has started
    run = sim.run()
    assert run.waiter_entries[-20:] == [4] * 20
    # The limit is used whole: 32 slots of 2 s requests, 16 a second.
    late = [r for r in run.requests if r.arrived >= 4.0]
    assert len(late) / (run.end - 4.0) == pytest.approx(16, rel=0.15)
    assert max(r.concurrency for r in run.requests) <= 32
    # Per request about one batch: the release, with the want that follows
    # it and the acks of slots handed over riding along; plus 4 heartbeats
    # every 2 s: nothing per waiting task.
    calls_per_second = (run.script_calls - started[0]) / (run.end - 4.0)
    assert 16 <= calls_per_second <= 16 * 1.5 + 4 * 0.5
