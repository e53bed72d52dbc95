"""One configuration per model, kept in Redis: the last register's settings
run every script, whoever calls."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from aimd_redis import ConfigError, InvalidArgumentError, NotRegisteredError, Throttle, ThrottleConfig
from aimd_redis.ops.cli import main

from .conftest import MakeThrottle
from .helpers import M, P, events_of, fill, grant, limit, rate_limit_at, reg, state

CAP = f"aimd:{{{P}/{M}}}:cap"
DOMAIN = f"aimd:{{{P}/{M}}}:chat"


def test_every_process_runs_the_model_s_stored_rules(make_throttle: MakeThrottle, client: Any) -> None:
    half, quarter = make_throttle(reduce_factor=0.5), make_throttle(reduce_factor=0.75)
    reg(quarter, 40)
    reg(half, 40)  # the last register wins
    assert client.hget(CAP, "reduce_factor") == b"0.5"
    leases = fill(quarter, 40, 1.0)
    # The process configured with 0.75 reports the 429: the model's 0.5 applies.
    assert leases[0].rate_limited(now=1.0).released
    assert limit(quarter) == 20
    assert [(e.event, e.old, e.new) for e in events_of(client) if e.event == "reduce_factor"] == [
        ("reduce_factor", 0.75, 0.5)
    ]


def test_the_ramp_and_cooldown_are_the_model_s_too() -> None:
    client = fakeredis.FakeRedis()
    ramping = Throttle(client, config=ThrottleConfig(rampup_seconds=10, cooldown_seconds=7))
    plain = Throttle(client)  # no ramp, a 2 s cooldown of its own
    reg(ramping, 5)
    assert grant(plain, 0.0).success(now=0.0).released
    assert limit(plain) == 1  # the stored ramp, though this process has none
    grant(plain, 5.0).rate_limited(now=5.0)
    assert state(plain).blocked_until == 12.0  # the stored cooldown_seconds
    assert state(plain).rampup_active is False


def test_a_change_of_policy_is_taken_up_by_each_domain_at_its_next_touch() -> None:
    client = fakeredis.FakeRedis()
    classic = Throttle(client)
    reg(classic, 40)
    leases = fill(classic, 40, 0.0)
    leases[0].rate_limited(now=0.0)
    assert (limit(classic), state(classic).rate_limit_ceiling) == (30, 40)
    adaptive = Throttle(client, config=ThrottleConfig(policy="adaptive"))
    reg(adaptive, 40)
    assert client.hget(DOMAIN, "policy") == b"classic"  # untouched domains change at their next call
    assert leases[1].success(now=10.0).released
    assert client.hget(DOMAIN, "policy") == b"adaptive"
    # What it learned of the server stays: the limit, the ceiling and the cooldown.
    assert (limit(adaptive), state(adaptive).rate_limit_ceiling) == (30, 40)
    assert [(e.domain, e.old, e.new) for e in events_of(client) if e.event == "policy"] == [
        ("*", "classic", "adaptive"),
        ("chat", "classic", "adaptive"),
    ]


def test_a_hand_set_cooldown_lasts_at_most_max_cooldown_seconds(make_throttle: MakeThrottle, client: Any) -> None:
    t = make_throttle(max_cooldown_seconds=60)
    reg(t, 4)
    grant(t, 0.0).success(now=0.0)
    client.hset(DOMAIN, "blocked_until", "100000000000")  # 2,800 years away
    denied = t.try_acquire(provider_name=P, model_id=M, domain="chat", now=10.0)
    assert not hasattr(denied, "success")
    assert denied.retry_in == 60.0  # type: ignore[union-attr]
    assert state(t).blocked_until == 70.0


def test_configure_changes_the_stored_settings_and_says_so_in_the_stream() -> None:
    client = fakeredis.FakeRedis()
    t = Throttle(client)
    reg(t, 40)
    stored = t.configure(P, M, {"reduce_factor": 0.5, "success_window": 10}, now=1.0)
    assert (stored["reduce_factor"], stored["success_window"], stored["policy"]) == (0.5, 10, "classic")
    fill(t, 40, 2.0)[0].rate_limited(now=2.0)
    assert limit(t) == 20
    changes = [(e.event, e.old, e.new) for e in events_of(client) if e.domain == "*" and e.event != "effective_max"]
    assert sorted(changes) == [("reduce_factor", 0.75, 0.5), ("success_window", 25, 10)]


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"reduce_factor": 1.5}, ConfigError),
        ({"policy": "fastest"}, ConfigError),
        ({"lease_ttl_seconds": 5}, InvalidArgumentError),  # each process's own, never stored
        ({"colour": "red"}, InvalidArgumentError),
    ],
)
def test_configure_refuses_a_bad_setting_before_redis(settings: dict[str, Any], error: type[Exception]) -> None:
    t = Throttle(fakeredis.FakeRedis())
    with pytest.raises(error):
        t.configure(P, M, settings)


def test_configure_needs_a_registered_model() -> None:
    with pytest.raises(NotRegisteredError):
        Throttle(fakeredis.FakeRedis()).configure(P, M, {"reduce_factor": 0.5})


def test_a_hand_broken_setting_is_named() -> None:
    client = fakeredis.FakeRedis()
    t = Throttle(client)
    reg(t, 4)
    client.hset(CAP, "success_window", "0")
    with pytest.raises(ValueError, match="success_window"):
        t.try_acquire(provider_name=P, model_id=M, domain="chat", now=1.0)
    reg(t, 4)  # a register stores the whole configuration again
    assert grant(t, 1.0).success(now=1.0).released


def test_a_model_registered_without_settings_runs_the_defaults() -> None:
    client = fakeredis.FakeRedis()
    t = Throttle(client, config=ThrottleConfig(reduce_factor=0.5))
    reg(t, 40)
    from aimd_redis.schema import SETTINGS

    client.hdel(CAP, *SETTINGS)  # as an older release left it
    fill(t, 40, 1.0)[0].rate_limited(now=1.0)
    assert limit(t) == 30  # ThrottleConfig's 0.75


def test_the_config_command_shows_and_sets(real_redis_url: str, real_redis: Any, capsys: Any) -> None:
    t = Throttle(real_redis_url)
    reg(t, 8)
    assert main(["config", f"{P}/{M}", "--url", real_redis_url]) == 0
    shown = capsys.readouterr().out
    assert "reduce_factor" in shown
    assert "0.75" in shown
    assert main(["config", f"{P}/{M}", "--url", real_redis_url, "--set", "reduce_factor=0.5"]) == 0
    assert "0.5" in capsys.readouterr().out
    assert real_redis.hget(CAP, "reduce_factor") == b"0.5"
    assert main(["config", f"{P}/nope", "--url", real_redis_url]) != 0
    t.close()


def test_a_waiter_that_gives_up_leaves_no_tombstone(make_throttle: MakeThrottle, client: Any) -> None:
    from aimd_redis import AcquireTimeout

    t = make_throttle(wait_poll_seconds=0.05)
    reg(t, 1)
    held = t.acquire(provider_name=P, model_id=M, domain="chat", timeout=0)
    for _ in range(3):
        with pytest.raises(AcquireTimeout):
            t.acquire(provider_name=P, model_id=M, domain="chat", timeout=0.05)
    # Their acquires ran (they were queued): nothing is left to stop them.
    assert client.zcard(f"{DOMAIN}:leases") == 1
    held.success()


def test_stored_settings_round_trip_through_rate_limits(make_throttle: MakeThrottle) -> None:
    t = make_throttle(cooldown_seconds=3, max_cooldown_seconds=5)
    reg(t, 4)
    rate_limit_at(t, 0.0, retry_after=60)
    assert state(t).blocked_until == 5.0  # the stored cap on Retry-After
