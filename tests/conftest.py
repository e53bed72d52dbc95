"""Backends for the tests: fakeredis in-process, and a real Redis server.

The real server is, in order: ``REDIS_URL`` when set, a private
``redis-server`` started on a free loopback port when the binary exists, or
a testcontainers Redis when Docker is available. With ``CI=true`` a missing
real Redis fails the run instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio

from aimd_redis import AsyncThrottle, Throttle, ThrottleConfig
from aimd_redis.embedded import EmbeddedRedis

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
BACKENDS = ["fakeredis", "redis-server"]


def _docker_available() -> bool:
    return bool(os.environ.get("DOCKER_HOST")) or os.path.exists("/var/run/docker.sock")


@pytest.fixture(scope="session")
def real_redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with ExitStack() as stack:
        if shutil.which("redis-server"):
            yield stack.enter_context(EmbeddedRedis()).url
            return
        if _docker_available():
            from testcontainers.redis import RedisContainer

            container = stack.enter_context(RedisContainer("redis:7"))
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
            return
    reason = "no real Redis for these tests: set REDIS_URL, install redis-server, or start Docker"
    if IN_CI:
        pytest.fail(reason)
    warnings.warn(reason, stacklevel=1)
    pytest.skip(reason)


@pytest.fixture
def real_redis(real_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(real_redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(backend: str, request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A sync client of an empty database on the parametrised backend."""
    if backend == "fakeredis":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return
    yield request.getfixturevalue("real_redis")


@pytest.fixture
async def aclient(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client of an empty database on the parametrised backend."""
    if backend == "fakeredis":
        yield fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        return
    url = request.getfixturevalue("real_redis_url")
    client = redis.asyncio.Redis.from_url(url)
    await client.flushall()
    yield client
    await client.aclose()


MakeThrottle = Callable[..., Throttle]


@pytest.fixture
def make_throttle(client: redis.Redis) -> MakeThrottle:
    """Throttle factory on ``client``; keyword arguments go to ThrottleConfig."""

    def make(namespace: str = "aimd", **config: Any) -> Throttle:
        return Throttle(client, config=ThrottleConfig(**config), namespace=namespace)

    return make


@pytest.fixture
def make_async_throttle(aclient: redis.asyncio.Redis) -> Callable[..., AsyncThrottle]:
    def make(namespace: str = "aimd", **config: Any) -> AsyncThrottle:
        return AsyncThrottle(aclient, config=ThrottleConfig(**config), namespace=namespace)

    return make
