"""A Redis user restricted by `aimd-redis acl` can do everything the library
does; one without the rule gets a clear, typed permission error. The
behaviour suites also run as the restricted user (the "acl" backend)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from aimd_redis import InvalidArgumentError, RedisPermissionError, Throttle, ThrottleConfig
from aimd_redis.ops.acl import CLIENT_COMMANDS, SCRIPT_COMMANDS, acl_rule
from aimd_redis.ops.cli import main
from aimd_redis.ops.inspect import report

from .helpers import M, P

ROOT = Path(__file__).parent.parent


def test_the_rule_names_every_command_the_scripts_call() -> None:
    called = set()
    for script in (ROOT / "lua").glob("*.lua"):
        called |= {c.lower() for c in re.findall(r"redis\.p?call\('([A-Za-z]+)'", script.read_text())}
    assert called  # the pattern still matches how the scripts call Redis
    assert called <= set(SCRIPT_COMMANDS), called - set(SCRIPT_COMMANDS)
    assert {"publish", "spublish"} <= set(SCRIPT_COMMANDS)  # the wake-ups, called through a variable


def test_the_docs_show_the_rule_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["acl", "--user", "fleet"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("ACL SETUSER fleet on >CHANGE-ME resetkeys ~aimd:* resetchannels &aimd:* -@all +fcall")
    assert printed in (ROOT / "docs" / "operations.md").read_text()


def test_the_restricted_user_can_also_read_with_the_cli(
    real_redis: redis.Redis, acl_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    t = Throttle(acl_url, config=ThrottleConfig())
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    t.acquire(provider_name=P, model_id=M, domain="chat", timeout=0).rate_limited(retry_after=1)
    t.close()
    restricted = redis.Redis.from_url(acl_url)
    (domain,) = report(restricted, "aimd")
    assert (domain.current_limit, domain.rate_limit_ceiling) == (1, 2)
    assert main(["events", f"{P}/{M}", "--url", acl_url]) == 0
    assert "decrease" in capsys.readouterr().out
    assert main(["check", "--url", acl_url]) == 0


@pytest.mark.parametrize(
    ("rule", "what"),
    [
        (["resetkeys", "~elsewhere:*", "-@all", *(f"+{c}" for c in CLIENT_COMMANDS + SCRIPT_COMMANDS)], "keys"),
        (["resetkeys", "~aimd:*", "-@all", "+evalsha", "+eval", "+script|load", "+hget", "+ping", "+hello"], "script"),
    ],
)
def test_a_user_without_the_rule_gets_a_permission_error(
    real_redis: redis.Redis, real_redis_url: str, rule: list[str], what: str
) -> None:
    real_redis.execute_command("ACL", "SETUSER", "outsider", "reset", "on", ">outsider", *rule)
    scheme, rest = real_redis_url.split("://", 1)
    t = Throttle(f"{scheme}://outsider:outsider@{rest}")
    with pytest.raises(RedisPermissionError, match="aimd-redis acl") as caught:
        t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    assert isinstance(caught.value, PermissionError)
    assert real_redis.dbsize() == 0  # refused before it wrote anything
    t.close()


def test_the_rule_needs_a_namespace() -> None:
    with pytest.raises(InvalidArgumentError, match="namespace"):
        acl_rule("u", [])
    assert "~team-a:*" in acl_rule("u", ["team-a"])
