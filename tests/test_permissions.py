"""A Redis user who may not run a command the scripts call is refused before
any script writes anything: a script stopped half way by a refused command
keeps what it wrote, a granted lease included."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from aimd_redis import RedisPermissionError, Throttle
from aimd_redis.ops.acl import SCRIPT_COMMANDS, acl_rule

from .helpers import M, P

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"provider_name": P, "model_id": M, "domain": "chat"}
#: Commands the scripts run late, after a grant was written.
LATE = ["pexpire", "xadd", "hset", "pttl"]
#: What redis-py's cluster client asks a node for on its own.
CLUSTER_CLIENT = ["+cluster|slots", "+cluster|shards", "+command", "+info", "+readonly"]


def _called_by_the_scripts() -> set[str]:
    called: set[str] = set()
    for script in (ROOT / "lua").glob("*.lua"):
        if script.name != "probe.lua":
            called |= {c.lower() for c in re.findall(r"redis\.p?call\('([A-Za-z]+)'", script.read_text())}
    return called | {"publish", "spublish"}  # the wake-ups, called through a variable


def test_the_probe_tries_every_command_the_scripts_call() -> None:
    probe = (ROOT / "lua" / "probe.lua").read_text()
    tried = {c.lower() for c in re.findall(r"^\s*(?:local may_delete = try\()?\{'([A-Z]+)'", probe, re.MULTILINE)}
    assert {"del", "sadd", "incr", "time"} <= tried  # the pattern still reads the probe's lists
    assert _called_by_the_scripts() <= tried, _called_by_the_scripts() - tried
    assert tried <= set(SCRIPT_COMMANDS), tried - set(SCRIPT_COMMANDS)


def _user_url(url: str, user: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{user}@{rest.split('@')[-1]}"


def _without(command: str, *, functions: bool = True) -> list[str]:
    dropped = {f"+{command}"} | (set() if functions else {"+fcall", "+function|load"})
    return [c for c in acl_rule("lacking", ["aimd"], password="lacking") if c not in dropped]


def _nothing_held(admin: Any) -> None:
    tag = f"aimd:{{{P}/{M}}}"
    assert admin.zcard(f"{tag}:chat:leases") == 0
    assert admin.hget(f"{tag}:chat", "in_flight") in (None, b"0")
    assert not admin.exists(f"{tag}:cap:probe")


@pytest.mark.parametrize("functions", [True, False], ids=["fcall", "evalsha"])
@pytest.mark.parametrize("command", LATE)
def test_a_user_lacking_a_late_command_is_refused_before_any_lease_is_written(
    real_redis: redis.Redis, real_redis_url: str, command: str, functions: bool
) -> None:
    admin = Throttle(real_redis)
    admin.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    real_redis.execute_command("ACL", "SETUSER", *_without(command, functions=functions))
    t = Throttle(_user_url(real_redis_url, "lacking"))
    for _ in range(2):  # asked again while refused: the user may be granted it meanwhile
        with pytest.raises(RedisPermissionError, match=rf"\b{command}\b") as refused:
            t.try_acquire(**CHAT)
        assert "aimd-redis acl" in str(refused.value)
        _nothing_held(real_redis)
    # Granted now: the throttle starts working, without a restart.
    real_redis.execute_command("ACL", "SETUSER", "lacking", f"+{command}")
    lease = t.try_acquire(**CHAT)
    assert lease.success().released  # type: ignore[union-attr]
    t.close()
    admin.close()


@pytest.fixture
def lacking_cluster(cluster_client: RedisCluster, request: pytest.FixtureRequest) -> Iterator[RedisCluster]:
    rule = [*_without(request.param), *CLUSTER_CLIENT]
    cluster_client.execute_command("ACL", "SETUSER", *rule, target_nodes=RedisCluster.ALL_NODES)
    port = cluster_client.get_default_node().port
    client = RedisCluster(host="127.0.0.1", port=port, username="lacking", password="lacking")
    yield client
    client.close()


@pytest.mark.parametrize("lacking_cluster", ["pexpire", "spublish"], indirect=True)
def test_on_a_cluster_too(cluster_client: RedisCluster, lacking_cluster: RedisCluster) -> None:
    admin = Throttle(cluster_client)
    admin.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    t = Throttle(lacking_cluster)
    with pytest.raises(RedisPermissionError, match=r"pexpire|spublish"):
        t.try_acquire(**CHAT)
    _nothing_held(cluster_client)
    t.close()
    admin.close()


def test_a_plain_server_does_not_need_spublish_nor_a_cluster_publish(
    real_redis: redis.Redis, real_redis_url: str
) -> None:
    real_redis.execute_command("ACL", "SETUSER", *_without("spublish"))
    t = Throttle(_user_url(real_redis_url, "lacking"))
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    assert t.acquire(**CHAT, timeout=0).success().released
    t.close()


@pytest.mark.parametrize("command", sorted(_called_by_the_scripts()))
def test_the_probe_names_each_command_a_user_lacks(real_redis: redis.Redis, command: str) -> None:
    real_redis.execute_command("ACL", "SETUSER", *_without(command))
    t = Throttle(
        redis.Redis(**{**real_redis.connection_pool.connection_kwargs, "username": "lacking", "password": "lacking"})
    )
    if command == "spublish":
        t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)  # not used here
    else:
        with pytest.raises(RedisPermissionError, match=rf"\b{command}\b"):
            t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
        assert real_redis.dbsize() == 0
    t.close()
