"""The same scripts through redis-py's cluster clients (a one-node cluster
here; the multi-node suite belongs with the scale-out tests)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from aimd_redis import AsyncLease, AsyncThrottle, Lease, Throttle
from aimd_redis.embedded import _free_port

from .conftest import IN_CI
from .helpers import M, P

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}


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


@pytest.fixture(scope="module")
def cluster_port() -> Iterator[int]:
    binary = shutil.which("redis-server")
    if not binary:
        if IN_CI:
            pytest.fail("redis-server is needed for the cluster tests")
        pytest.skip("no redis-server on PATH for the cluster tests")
    port = _cluster_port()
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-announce-ip", "127.0.0.1",
             "--cluster-config-file", f"{folder}/nodes.conf", "--save", "", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            node = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    node.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            while node.cluster("info")["cluster_state"] != "ok":
                time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait()


def test_sync_cluster_client(cluster_port: int) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_port)
    client.flushall()
    t = Throttle(client)
    assert t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2, now=0) == 2
    first = t.try_acquire(**TARGET, now=0)
    assert isinstance(first, Lease)
    first.rate_limited(now=0)
    state = t.domain_state(P, M, "chat")
    assert state is not None
    assert (state.current_limit, state.rate_limit_ceiling, state.in_flight) == (1, 2, 0)
    client.close()


async def test_async_cluster_client(cluster_port: int) -> None:
    client = AsyncRedisCluster(host="127.0.0.1", port=cluster_port)
    await client.flushall()
    t = AsyncThrottle(client)
    await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    async with t.slot(**TARGET) as lease:
        assert isinstance(lease, AsyncLease)
    state = await t.domain_state(P, M, "chat")
    assert state is not None
    assert state.in_flight == 0
    await client.aclose()
