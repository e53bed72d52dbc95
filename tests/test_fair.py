"""Fair share across groups in the simulator (the real scripts on a real
Redis, in simulated time): weights split a saturated domain, and a group
alone or the only one waiting uses every slot."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from aimd_redis.demo import fair
from aimd_redis.demo.simulator import CLIENTS, Scenario, simulate, with_


@pytest.mark.parametrize("shape", [fair.split, fair.mixed], ids=["own-processes", "shared-processes"])
@pytest.mark.parametrize("fleet", list(CLIENTS))
def test_weights_3_to_1_give_group_a_three_quarters_of_a_saturated_domain(
    real_redis: redis.Redis, shape: Callable[..., Scenario], fleet: str
) -> None:
    """With the process agent, and with callers waiting one by one (acquire.lua's queue)."""
    s = shape((3.0, 1.0), seconds=20.0)
    f = fair.fair_figures(simulate(real_redis, s, "classic", fleet=CLIENTS[fleet]), s)
    assert f.of("a").share == pytest.approx(0.75, abs=0.05)
    assert f.busy_share >= 0.95


def test_equal_weights_split_a_saturated_domain_evenly(real_redis: redis.Redis) -> None:
    s = fair.split((1.0, 1.0), seconds=20.0)
    f = fair.fair_figures(simulate(real_redis, s, "classic"), s)
    assert f.of("a").share == pytest.approx(0.5, abs=0.05)


def test_a_group_alone_or_the_only_one_waiting_keeps_every_slot_busy(real_redis: redis.Redis) -> None:
    alone = with_(fair.ALONE, seconds=20.0)
    assert fair.fair_figures(simulate(real_redis, alone, "classic"), alone).busy_share >= 0.95
    light = with_(fair.LIGHT, seconds=20.0)
    f = fair.fair_figures(simulate(real_redis, light, "classic"), light)
    assert f.busy_share >= 0.95
    # The light group asks about once a second and is served at the next
    # releases, not behind the flood (24 tasks for 8 slots of 0.25 s: 0.75 s).
    assert f.of("b").grants >= 10
    assert f.of("b").wait_max < 0.25


def test_a_reserved_group_waits_behind_a_flood_of_long_requests_no_longer_than_alone(real_redis: redis.Redis) -> None:
    """A quarter of the limit held for the interactive group: its callers
    find their slots free while 64 batch tasks queue for 1 s requests."""
    waits = {}
    for batch in (False, True):
        s = fair.interactive(1.0, batch=batch, reserved=0.25, seconds=60.0)
        waits[batch] = fair.fair_figures(simulate(real_redis, s, "classic"), s, fair.INTERACTIVE_START)
    interactive = waits[True].of("interactive")
    assert interactive.grants >= 50
    assert interactive.wait_p99 <= 1.2 * waits[False].of("interactive").wait_p99
    assert waits[True].of("batch").busy >= 5.9  # the 6 slots not reserved stay busy
