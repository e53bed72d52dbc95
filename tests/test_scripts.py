"""How the scripts are loaded, shipped and kept in one copy."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from aimd_redis import DomainState, Lease, Throttle, ThrottleConfig, schema
from aimd_redis.core import SCRIPT_ARGS
from aimd_redis.ops.acl import acl_rule
from aimd_redis.scripts import LIBRARY, NAMES, library, sources

from .helpers import M, P, reg

ROOT = Path(__file__).resolve().parent.parent


def _stat(client: redis.Redis, command: str, what: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get(what, 0))


def test_the_function_library_is_loaded_once_and_again_when_redis_lost_it(real_redis: redis.Redis) -> None:
    real_redis.function_flush()
    real_redis.config_resetstat()
    t = Throttle(real_redis)
    reg(t, 2)
    for _ in range(3):
        lease = t.try_acquire(provider_name=P, model_id=M, domain="chat")
        assert isinstance(lease, Lease)
        assert lease.success().released
    # One FCALL (the permission probe) found nothing; one FUNCTION LOAD; then the probe and the 7 calls ran.
    assert (_stat(real_redis, "fcall", "failed_calls"), _stat(real_redis, "function|load", "calls")) == (1, 1)
    assert _stat(real_redis, "fcall", "calls") == 9
    assert _stat(real_redis, "evalsha", "calls") == 0
    names = [dict(zip(lib[::2], lib[1::2], strict=True))[b"library_name"] for lib in real_redis.function_list()]
    assert names == [library().name.encode()]
    real_redis.function_flush()  # as a restart without persistence would
    assert t.try_acquire(provider_name=P, model_id=M, domain="chat", now=1.0).success(now=1.0).released
    assert _stat(real_redis, "function|load", "calls") == 2
    t.close()


def test_a_cluster_runs_the_scripts_and_reloads_them_on_noscript(cluster_client: RedisCluster) -> None:
    t = Throttle(cluster_client)
    reg(t, 2)
    cluster_client.script_flush()
    cluster_client.config_resetstat(target_nodes=RedisCluster.PRIMARIES)
    lease = t.try_acquire(provider_name=P, model_id=M, domain="chat")
    assert isinstance(lease, Lease)
    assert lease.success().released
    node = cluster_client.get_node_from_key(f"aimd:{{{P}/{M}}}:cap")
    stats = cluster_client.info("commandstats", target_nodes=node)
    # The acquire's batch: a failed EVALSHA, a SCRIPT LOAD, an EVALSHA that runs;
    # the release's batch: an EVALSHA; no FCALL.
    assert (stats["cmdstat_evalsha"]["failed_calls"], stats["cmdstat_evalsha"]["calls"]) == (1, 3)
    assert "cmdstat_fcall" not in stats


def test_a_user_refused_functions_runs_the_scripts(
    real_redis: redis.Redis, real_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    rule = [c for c in acl_rule("nofunctions", ["aimd"], password="p") if c not in ("+fcall", "+function|load")]
    real_redis.execute_command("ACL", "SETUSER", *rule)
    scheme, rest = real_redis_url.split("://", 1)
    t = Throttle(f"{scheme}://nofunctions:p@{rest}")
    with caplog.at_level(logging.INFO, logger="aimd_redis"):
        reg(t, 2)
        for _ in range(3):
            assert t.acquire(provider_name=P, model_id=M, domain="chat", timeout=0).success().released
    assert sum("EVALSHA" in r.getMessage() for r in caplog.records) == 1  # said once
    t.close()


def test_every_script_header_lists_the_keys_it_touches() -> None:
    for name in NAMES:
        text = (ROOT / "lua" / f"{name}.lua").read_text()
        header = text.split("\n\n", 1)[0]
        for part in ("KEYS[", "ARGV[", "Reply"):
            assert part in header, (name, part)
        # No key is built inside a script: every key comes from KEYS.
        body = sources()[name]
        assert not re.search(r"redis\.call\('[A-Z]+', [^K)]*\.\.", body), name


def test_the_named_arguments_of_each_script_match_its_header() -> None:
    assert set(SCRIPT_ARGS) == set(NAMES)
    for name, args in SCRIPT_ARGS.items():
        header = (ROOT / "lua" / f"{name}.lua").read_text().split("\n\n", 1)[0]
        documented = [(int(i), n) for i, n in re.findall(r"^-- ARGV\[(\d+)\]\s+(\w+)", header, re.MULTILINE)]
        assert documented == list(enumerate(args._fields, 1)), name


def _lua_table(path: str, name: str) -> str:
    body = re.search(rf"^local {name} = {{(.*?)}}$", (ROOT / "lua" / path).read_text(), re.DOTALL | re.MULTILINE)
    assert body is not None, name
    return body.group(1)


def test_one_schema_of_the_domain_hash_in_lua_and_python() -> None:
    def lua_list(name: str) -> list[str]:
        return re.findall(r"'(\w+)'", _lua_table("_fields.lua", name))

    assert list(zip(lua_list("FIELD_NAMES"), lua_list("FIELD_KINDS"), strict=True)) == list(schema.FIELDS)
    found = dict(re.findall(r"(\w+) = '?(\w+)'?", _lua_table("_fields.lua", "FIELD_DEFAULTS")))
    assert found == {k: str(v) for k, v in schema.DEFAULTS.items()}
    base = (ROOT / "lua" / "_base.lua").read_text()
    assert re.search(rf"local MAX_TIME, MAX_COUNT = {schema.MAX_TIME:g}, {schema.MAX_COUNT:g}", base)
    # The public state is the schema's first fields, in order: replies and wake-ups rely on it.
    assert DomainState.__struct_fields__ == tuple(name for name, _ in schema.FIELDS[: schema.PUBLIC])


def test_one_list_of_the_stored_settings_with_throttleconfig_s_defaults() -> None:
    assert tuple(re.findall(r"'(\w+)'", _lua_table("_fields.lua", "CONFIG_NAMES"))) == schema.SETTINGS
    defaults = dict(re.findall(r"(\w+) = '?([\w.]*)'?", _lua_table("_fields.lua", "CONFIG_DEFAULTS")))
    expected = ThrottleConfig().settings()
    assert set(defaults) == set(expected)
    for name, value in expected.items():
        assert defaults[name] == value if isinstance(value, str) else float(defaults[name]) == value, name
    ranged = re.findall(r"(\w+) = {", _lua_table("_fields.lua", "CONFIG_RANGES") + "}")
    assert {"policy", "reserved", *ranged} == set(schema.SETTINGS)


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "unasync.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_wheel_ships_the_scripts(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("aimd_redis-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (*NAMES, *LIBRARY):
        assert f"aimd_redis/lua/{name}.lua" in names
    assert "aimd_redis/py.typed" in names
