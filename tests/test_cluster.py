"""What is particular to Redis Cluster, on a real three-master cluster the
tests start on loopback (the behaviour suites also run there, as the
"cluster" backend): models spread over the nodes, wake-ups on each."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from aimd_redis import AsyncLease, AsyncThrottle, Lease, Throttle, ThrottleConfig
from aimd_redis.keys import model_keys
from aimd_redis.ops.cli import main

from .cluster import LocalCluster
from .helpers import M, P, wait_until

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
NODES = 3
# Re-checks so rare that a waiter served within a test was woken.
QUIET = ThrottleConfig(wait_poll_seconds=30)


@pytest.fixture
def cluster_ports(local_cluster: LocalCluster) -> list[int]:
    return local_cluster.ports


@pytest.fixture
def cluster(cluster_client: RedisCluster) -> RedisCluster:
    return cluster_client


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
        wait_until(lambda m=model: holder.domain_state(P, m, "chat").waiters == 1, "waiter not queued")  # type: ignore[union-attr]
    cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)  # the permission probes published too
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
        cluster.config_resetstat(target_nodes=RedisCluster.PRIMARIES)  # the permission probes published too
        started = time.monotonic()
        for lease in held:
            await lease.success()
        for lease in await asyncio.gather(*waiters):
            await lease.success()
        assert time.monotonic() - started < 2  # woken, not found by a 30 s re-check
    await client.aclose()
    assert sorted(_spublish_calls(cluster).values()) == [1] * NODES


def test_status_on_a_cluster_finds_models_on_every_node(
    cluster: RedisCluster, cluster_ports: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    models = _models_on_every_node(cluster)
    t = Throttle(cluster)
    for model in models:
        t.register(provider_name=P, model_id=model, alias="gen", max_parallel_requests=3)
        t.acquire(provider_name=P, model_id=model, domain="chat", timeout=0).success()
    url = f"redis://127.0.0.1:{cluster_ports[0]}/0"
    assert main(["status", "--json", "--cluster", "--url", url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(d["model_id"] for d in shown) == models
    assert main(["check", "--cluster", "--url", url]) == 0
    assert main(["events", f"{P}/{models[-1]}", "--cluster", "--url", url]) == 0
    assert "created" in capsys.readouterr().out
    t.close()
