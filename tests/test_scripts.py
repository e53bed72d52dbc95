"""How the scripts are loaded, shipped and kept in one copy."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import redis

from aimd_redis import Lease, Throttle
from aimd_redis.core import SCRIPT_ARGS
from aimd_redis.scripts import LIBRARY, NAMES, sources

from .helpers import M, P, reg

ROOT = Path(__file__).resolve().parent.parent


def test_a_flushed_script_cache_is_reloaded_on_noscript(client: redis.Redis, backend: str) -> None:
    t = Throttle(client)
    reg(t, 2)
    client.script_flush()
    if backend == "redis-server":
        client.config_resetstat()
    lease = t.try_acquire(provider_name=P, model_id=M, domain="chat")
    assert isinstance(lease, Lease)
    assert lease.success().released
    if backend == "redis-server":
        stats = client.info("commandstats")
        # acquire and release each: a failed EVALSHA, a SCRIPT LOAD, an EVALSHA that runs.
        assert stats["cmdstat_evalsha"]["failed_calls"] == 2
        assert stats["cmdstat_script|load"]["calls"] == 2
        assert stats["cmdstat_evalsha"]["calls"] == 4


def test_every_script_header_lists_the_keys_it_touches() -> None:
    for name in NAMES:
        text = (ROOT / "lua" / f"{name}.lua").read_text()
        header = text.split("\n\n", 1)[0]
        for part in ("KEYS[", "ARGV[", "Reply:"):
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
