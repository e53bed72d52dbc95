"""Bad input is a typed error raised before anything reaches Redis."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import redis

from aimd_redis import (
    AimdRedisError,
    ArgumentTypeError,
    AsyncThrottle,
    ConfigError,
    InvalidArgumentError,
    Throttle,
    ThrottleConfig,
)
from aimd_redis.core import check_now
from aimd_redis.demo.embedded import _free_port
from aimd_redis.schema import MAX_TIME


@pytest.fixture
def unreachable() -> Throttle:
    """A throttle whose Redis does not exist: reaching it would raise
    RedisUnavailableError, so a ValueError proves validation came first."""
    return Throttle(redis.Redis(port=_free_port(), socket_connect_timeout=0.2))


GOOD: dict[str, Any] = {"provider_name": "openai", "model_id": "gpt-4o", "domain": "chat"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("provider_name", ""),
        ("provider_name", "open{ai"),
        ("provider_name", "openai}"),
        ("provider_name", "a/b"),
        ("provider_name", "two words"),
        ("model_id", ""),
        ("model_id", "gpt-{4o}"),
        ("model_id", "x" * 201),
        ("model_id", "new\nline"),
        ("domain", ""),
        ("domain", "cap"),
        ("domain", "events"),
        ("domain", "domains"),
        ("domain", "chat:leases"),
        ("domain", "chat bot"),
        ("domain", "c" * 65),
        ("domain", "chät"),
    ],
)
def test_bad_names_are_value_errors(unreachable: Throttle, field: str, value: str) -> None:
    args = {**GOOD, field: value}
    with pytest.raises(InvalidArgumentError, match=field):
        unreachable.try_acquire(**args)
    with pytest.raises(InvalidArgumentError, match=field):
        unreachable.domain_state(args["provider_name"], args["model_id"], args["domain"])


def test_model_ids_may_hold_slashes_and_colons(unreachable: Throttle) -> None:
    # Real model ids look like this; only the provider may not hold '/'.
    from aimd_redis.keys import model_keys

    assert (
        model_keys("aimd", "vllm", "meta-llama/Llama-3.1-8B:fp8").cap == "aimd:{vllm/meta-llama/Llama-3.1-8B:fp8}:cap"
    )


@pytest.mark.parametrize("value", [0, -1, 1_000_001, True, 2.0, "8", None])
def test_bad_max_parallel_requests(unreachable: Throttle, value: Any) -> None:
    with pytest.raises(AimdRedisError, match="max_parallel_requests"):
        unreachable.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=value)


@pytest.mark.parametrize("alias", ["", "a b", "x" * 201, 5])
def test_bad_alias(unreachable: Throttle, alias: Any) -> None:
    with pytest.raises(AimdRedisError, match="alias"):
        unreachable.register(provider_name="openai", model_id="gpt-4o", alias=alias, max_parallel_requests=4)


@pytest.mark.parametrize("now", [-1.0, math.nan, math.inf, "5", True])
def test_bad_now(unreachable: Throttle, now: Any) -> None:
    with pytest.raises(AimdRedisError, match="now"):
        unreachable.try_acquire(**GOOD, now=now)


@pytest.mark.parametrize("now", [time.time() * 1000, time.time() * 1e6, MAX_TIME * 1.0001])
def test_now_beyond_the_scripts_bound_on_times(unreachable: Throttle, now: float) -> None:
    # Milliseconds for seconds would write a time every later call refuses as corrupt.
    with pytest.raises(InvalidArgumentError, match="now"):
        unreachable.try_acquire(**GOOD, now=now)
    with pytest.raises(InvalidArgumentError, match="now"):
        unreachable.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=4, now=now)


def test_now_up_to_the_bound_is_taken() -> None:
    assert check_now(MAX_TIME) == repr(MAX_TIME)


@pytest.mark.parametrize("timeout", [-0.5, math.nan, "1"])
def test_bad_timeout(unreachable: Throttle, timeout: Any) -> None:
    with pytest.raises(AimdRedisError, match="timeout"):
        unreachable.acquire(**GOOD, timeout=timeout)


@pytest.mark.parametrize("namespace", ["", "a{b", "my space"])
def test_bad_namespace(namespace: str) -> None:
    with pytest.raises(InvalidArgumentError, match="namespace"):
        Throttle(redis.Redis(), namespace=namespace)
    with pytest.raises(InvalidArgumentError, match="namespace"):
        AsyncThrottle(redis.asyncio.Redis(), namespace=namespace)


@pytest.mark.parametrize(
    ("redis_arg", "error"),
    [
        ("not-a-url", InvalidArgumentError),
        ("", InvalidArgumentError),
        ("http://localhost:6379", InvalidArgumentError),
        (123, ArgumentTypeError),
        (None, ArgumentTypeError),
        (b"redis://localhost", ArgumentTypeError),
    ],
)
def test_bad_redis_argument(redis_arg: Any, error: type[AimdRedisError]) -> None:
    for make in (Throttle, AsyncThrottle):
        with pytest.raises(error, match="redis"):
            make(redis_arg)


def test_config_must_be_a_throttle_config() -> None:
    with pytest.raises(ArgumentTypeError, match="ThrottleConfig"):
        Throttle(redis.Redis(), config={"rampup_seconds": 3})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reduce_factor", 0),
        ("reduce_factor", 1),
        ("reduce_factor", 1.5),
        ("additive_increase", 0),
        ("success_window", 0),
        ("cooldown_seconds", 0),
        ("cooldown_seconds", math.inf),
        ("ceiling_overshoot", -0.1),
        ("rampup_seconds", -1),
        ("rampup_seconds", math.nan),
        ("lease_ttl_seconds", 0),
        ("ceiling_ttl_seconds", -5),
        ("idle_ttl_seconds", -1),
        ("max_cooldown_seconds", 0),
        ("max_cooldown_seconds", math.nan),
        ("no_such_setting", 1),
    ],
)
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        ThrottleConfig(**{field: value})


def test_idle_ttl_must_outlast_leases() -> None:
    with pytest.raises(ConfigError, match="idle_ttl_seconds"):
        ThrottleConfig(lease_ttl_seconds=60, idle_ttl_seconds=30)
    assert ThrottleConfig(lease_ttl_seconds=60, idle_ttl_seconds=0).idle_ttl_seconds == 0


def test_defaults() -> None:
    c = ThrottleConfig()
    assert (c.reduce_factor, c.additive_increase, c.success_window, c.cooldown_seconds) == (0.75, 1, 25, 2.0)
    assert (c.ceiling_overshoot, c.rampup_seconds) == (0.10, 0.0)
    assert c.idle_ttl_seconds >= c.lease_ttl_seconds > 0


def test_bad_names_in_a_waiting_acquire_are_value_errors(unreachable: Throttle) -> None:
    with pytest.raises(InvalidArgumentError, match="domain"):
        unreachable.acquire(**{**GOOD, "domain": "cap"}, timeout=5)
