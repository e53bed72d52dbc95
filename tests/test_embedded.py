"""The private server: which binary it runs, and what it does when one will not start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from aimd_redis.demo.embedded import SERVER_ENV, EmbeddedRedis, _packaged_server


@pytest.fixture
def broken_redis_server_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A redis-server on PATH, ahead of any other, that exits at once."""
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(SERVER_ENV, raising=False)


def test_a_redis_server_that_will_not_start_gives_way_to_the_packaged_one(broken_redis_server_first: None) -> None:
    if _packaged_server() is None:
        pytest.skip("no packaged valkey-server on this platform")
    with EmbeddedRedis() as server:
        assert server.kind == "valkey-server"
        assert redis.Redis.from_url(server.url).ping()


def test_without_a_working_binary_it_says_what_failed(
    broken_redis_server_first: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aimd_redis.demo.embedded._packaged_server", lambda: None)
    with pytest.raises(RuntimeError, match=r"could not start .*redis-server"):
        EmbeddedRedis()
    with EmbeddedRedis(allow_fake=True) as server:  # the demo's last resort
        assert server.kind == "fakeredis"


def test_a_chosen_binary_that_does_not_exist_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVER_ENV, "no-such-server-binary")
    with pytest.raises(RuntimeError, match="AIMD_REDIS_SERVER"):
        EmbeddedRedis()
