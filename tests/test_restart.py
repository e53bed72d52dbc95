"""Redis restarts empty under a working fleet: the clients carry on by
themselves (re-register, re-create the domain, drop lost leases, re-queue)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from aimd_redis import AcquireTimeout, RedisUnavailableError, Throttle, ThrottleConfig
from aimd_redis.demo.embedded import EmbeddedRedis

from .conftest import needs_server
from .helpers import M, P

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
DOMAIN_KEY = f"aimd:{{{P}/{M}}}:chat"


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    needs_server("the restart tests")
    with EmbeddedRedis() as s:
        yield s


def test_a_fleet_survives_a_restart_that_lost_everything(server: EmbeddedRedis) -> None:
    config = ThrottleConfig(rampup_seconds=1.0, wait_poll_seconds=0.2, lease_ttl_seconds=3)
    throttles = [Throttle(server.url, config=config) for _ in range(2)]  # two "processes"
    for t in throttles:
        t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=3)
    stop = threading.Event()
    served, outages, unexpected = [0, 0], [0], []
    crashed_at = [0.0]

    def work(t: Throttle) -> None:
        while not stop.is_set():
            try:
                with t.slot(**TARGET, timeout=5):
                    time.sleep(0.01)
                served[int(crashed_at[0] > 0)] += 1
            except (RedisUnavailableError, AcquireTimeout):
                outages[0] += 1
                time.sleep(0.05)
            except Exception as exc:  # anything else is a bug
                unexpected.append(repr(exc))

    workers = [threading.Thread(target=work, args=(t,)) for t in throttles for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(1.5)
    server.crash()
    crashed_at[0] = time.time()
    time.sleep(0.5)
    server.restart()
    time.sleep(2.0)
    stop.set()
    for w in workers:
        w.join(15)

    assert not unexpected
    assert outages[0] > 0  # the crash was felt
    assert served[0] > 0 and served[1] > 0  # noqa: PT018 - work went on before and after
    admin = redis.Redis.from_url(server.url)
    assert admin.hget(f"aimd:{{{P}/{M}}}:cap", "effective_max") == b"3"  # registered again
    state = throttles[0].domain_state(P, M, "chat")
    assert state is not None
    assert state.rampup_started_at >= crashed_at[0] - 1  # a new domain: the ramp began again
    assert (state.in_flight, state.waiters) == (0, 0)
    # No lease left (give-backs sent again after the restart may leave tombstones: negative scores).
    assert admin.zcount(f"{DOMAIN_KEY}:leases", 0, "+inf") == 0
    for t in throttles:
        t.close()
