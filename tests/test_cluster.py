"""The scripts and the wake-ups through redis-py's cluster clients, on a real
three-master Redis Cluster the tests start on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from aimd_redis import AsyncLease, AsyncThrottle, Lease, Throttle, ThrottleConfig
from aimd_redis.embedded import _free_port
from aimd_redis.keys import model_keys

from .conftest import IN_CI
from .helpers import M, P

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
NODES = 3
# Re-checks so rare that a waiter served within a test was woken.
QUIET = ThrottleConfig(wait_poll_seconds=30)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        port = _free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _wait_until(condition: object, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"cluster: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    """Three masters, the slots split evenly, joined with CLUSTER MEET."""
    binary = shutil.which("redis-server")
    if not binary:
        if IN_CI:
            pytest.fail("redis-server is needed for the cluster tests")
        pytest.skip("no redis-server on PATH for the cluster tests")
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as folder:
        try:
            for i in range(NODES):
                port = _cluster_port()
                ports.append(port)
                procs.append(
                    subprocess.Popen(
                        [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                         "--cluster-announce-ip", "127.0.0.1", "--cluster-config-file", f"{folder}/nodes-{i}.conf",
                         "--save", "", "--appendonly", "no", "--dir", folder],
                        stdout=subprocess.DEVNULL,
                    )
                )  # fmt: skip
            nodes = [redis.Redis(port=port) for port in ports]
            for node in nodes:
                _wait_until(node.ping, "a node did not start")
            step = 16384 // NODES
            for i, node in enumerate(nodes):
                last = 16383 if i == NODES - 1 else (i + 1) * step - 1
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
            for port in ports[1:]:
                nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
            for node in nodes:
                _wait_until(lambda n=node: n.cluster("info")["cluster_state"] == "ok", "not ok")
                _wait_until(lambda n=node: len(n.cluster("nodes")) == NODES, "nodes do not know each other")
            yield ports
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()


@pytest.fixture
def cluster(cluster_ports: list[int]) -> Iterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[0])
    client.flushall()
    client.config_resetstat(target_nodes=RedisCluster.ALL_NODES)
    yield client
    client.close()


def _models_on_every_node(client: RedisCluster) -> list[str]:
    """One model id whose keys (and wake channels) live on each master."""
    found: dict[str, str] = {}
    for i in range(1000):
        model = f"model-{i}"
        node = client.get_node_from_key(model_keys("aimd", P, model).cap)
        found.setdefault(node.name, model)
        if len(found) == NODES:
            return sorted(found.values())
    raise AssertionError("no spread of models over the nodes")


def _spublish_calls(client: RedisCluster) -> dict[str, int]:
    stats = client.info("commandstats", target_nodes=RedisCluster.ALL_NODES)
    return {name: int(s.get("cmdstat_spublish", {}).get("calls", 0)) for name, s in stats.items()}


def test_sync_cluster_client(cluster: RedisCluster) -> None:
    t = Throttle(cluster)
    assert t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2, now=0) == 2
    first = t.try_acquire(**TARGET, now=0)
    assert isinstance(first, Lease)
    first.rate_limited(now=0)
    state = t.domain_state(P, M, "chat")
    assert state is not None
    assert (state.current_limit, state.rate_limit_ceiling, state.in_flight) == (1, 2, 0)


async def test_async_cluster_client(cluster_ports: list[int], cluster: RedisCluster) -> None:
    client = AsyncRedisCluster(host="127.0.0.1", port=cluster_ports[0])
    t = AsyncThrottle(client)
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    async with t.slot(**TARGET) as lease:
        assert isinstance(lease, AsyncLease)
    state = await t.domain_state(P, M, "chat")
    assert state is not None
    assert state.in_flight == 0
    await client.aclose()


def test_sync_waiters_are_woken_on_every_node(cluster: RedisCluster) -> None:
    models = _models_on_every_node(cluster)
    holder, waiting = Throttle(cluster, config=QUIET), Throttle(cluster, config=QUIET)
    served: dict[str, float] = {}

    def wait_for(model: str) -> None:
        lease = waiting.acquire(provider_name=P, model_id=model, domain="chat", timeout=10)
        served[model] = time.monotonic()
        lease.success()

    held = {}
    for model in models:
        holder.register(provider_name=P, model_id=model, alias="gen", max_parallel_requests=1)
        held[model] = holder.acquire(provider_name=P, model_id=model, domain="chat", timeout=0)
    threads = [threading.Thread(target=wait_for, args=(model,)) for model in models]
    for thread in threads:
        thread.start()
    for model in models:
        _wait_until(lambda m=model: holder.domain_state(P, m, "chat").waiters == 1, "waiter not queued")  # type: ignore[union-attr]
    released = time.monotonic()
    for model in models:
        held[model].success()
    for thread in threads:
        thread.join(15)
    assert sorted(served) == models
    assert max(served.values()) - released < 2  # woken, not found by a 30 s re-check
    calls = _spublish_calls(cluster)
    assert sorted(calls.values()) == [1] * NODES  # each hand-over published on its model's own node
    waiting.close()
    holder.close()


async def test_async_waiters_are_woken_on_every_node(cluster_ports: list[int], cluster: RedisCluster) -> None:
    models = _models_on_every_node(cluster)
    client = AsyncRedisCluster(host="127.0.0.1", port=cluster_ports[0])
    async with AsyncThrottle(client, config=QUIET) as holder, AsyncThrottle(client, config=QUIET) as waiting:
        held = []
        for model in models:
            await holder.register(provider_name=P, model_id=model, alias="gen", max_parallel_requests=1)
            held.append(await holder.acquire(provider_name=P, model_id=model, domain="chat", timeout=0))
        waiters = [
            asyncio.create_task(waiting.acquire(provider_name=P, model_id=model, domain="chat", timeout=10))
            for model in models
        ]
        deadline = time.monotonic() + 10
        for model in models:
            while (await holder.domain_state(P, model, "chat")).waiters != 1:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "waiter not queued"
                await asyncio.sleep(0.01)
        started = time.monotonic()
        for lease in held:
            await lease.success()
        for lease in await asyncio.gather(*waiters):
            await lease.success()
        assert time.monotonic() - started < 2  # woken, not found by a 30 s re-check
    await client.aclose()
    assert sorted(_spublish_calls(cluster).values()) == [1] * NODES
