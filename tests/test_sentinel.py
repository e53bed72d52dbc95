"""Failover under Sentinel: a primary, a replica and a sentinel on loopback;
the primary is killed and the clients carry on against the promoted replica."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from aimd_redis import Lease, RedisUnavailableError, Throttle, ThrottleConfig
from aimd_redis.demo.embedded import _free_port

from .conftest import needs_server
from .helpers import M, P, wait_until

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
SERVICE = "aimd"


class Setup:
    def __init__(self, binary: str, folder: Path) -> None:
        self.primary, self.replica, self.sentinel = _free_port(), _free_port(), _free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
        self.procs = {
            "primary": subprocess.Popen([binary, "--port", str(self.primary), *common], stdout=subprocess.DEVNULL),
            "replica": subprocess.Popen(
                [binary, "--port", str(self.replica), "--replicaof", "127.0.0.1", str(self.primary), *common],
                stdout=subprocess.DEVNULL,
            ),
        }
        conf = folder / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel}\nbind 127.0.0.1\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 500\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        self.procs["sentinel"] = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[Setup]:
    setup = Setup(needs_server("the Sentinel tests"), tmp_path)
    try:
        replica = redis.Redis(port=setup.replica)
        wait_until(lambda: replica.info("replication")["master_link_status"] == "up", "the replica did not sync")
        sentinel = redis.Redis(port=setup.sentinel)
        wait_until(lambda: len(sentinel.sentinel_slaves(SERVICE)) == 1, "the sentinel does not see the replica")
        yield setup
    finally:
        setup.close()


def test_clients_carry_on_after_the_primary_is_killed(sentinel_setup: Setup) -> None:
    sentinel = Sentinel([("127.0.0.1", sentinel_setup.sentinel)], socket_timeout=1)
    client = sentinel.master_for(SERVICE, socket_timeout=1, socket_connect_timeout=1)
    t = Throttle(client, config=ThrottleConfig(wait_poll_seconds=0.5))
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    held = t.acquire(**TARGET, timeout=0)
    assert client.execute_command("WAIT", 1, 2000) == 1  # replicated before the crash

    sentinel_setup.procs["primary"].send_signal(signal.SIGKILL)
    outcomes: list[str] = []
    lease = None
    deadline = time.monotonic() + 30
    while lease is None:
        assert time.monotonic() < deadline, f"no failover: {outcomes[-3:]}"
        try:
            got = t.try_acquire(**TARGET)
            lease = got if isinstance(got, Lease) else None
        except RedisUnavailableError:  # the only error the gap may show
            outcomes.append("unavailable")
            time.sleep(0.1)
    assert sentinel.discover_master(SERVICE)[1] == sentinel_setup.replica

    # The promoted replica had the registration and the held lease.
    assert held.success().released
    state = t.domain_state(P, M, "chat")
    assert state is not None
    assert (state.in_flight, state.current_limit) == (1, 2)

    # Waiting and wake-ups work on the new primary.
    other = t.acquire(**TARGET, timeout=0)
    got_slot: list[Lease] = []
    waiter = threading.Thread(target=lambda: got_slot.append(t.acquire(**TARGET, timeout=10)))
    waiter.start()
    wait_until(lambda: t.domain_state(P, M, "chat").waiters == 1, "the waiter did not queue")  # type: ignore[union-attr]
    other.success()
    waiter.join(10)
    assert got_slot
    got_slot[0].success()
    lease.success()
    final = t.domain_state(P, M, "chat")
    assert final is not None
    assert (final.in_flight, final.waiters) == (0, 0)
    t.close()
