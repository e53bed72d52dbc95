"""LiteLLM's calls to a deployment through the shared limit, against the cold server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

# LiteLLM fetches its model price list (and other catalogs) from the internet
# unless told not to; this talks to nothing but its own loopback servers.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

import litellm

from aimd_redis import ArgumentTypeError, AsyncThrottle, DomainState, InvalidArgumentError, Throttle, ThrottleConfig
from aimd_redis.demo.coldserver import ColdServer, ServerSettings
from aimd_redis.litellm import AimdLimiter, deployment_target, priority_share

EXAMPLE = Path(__file__).parent.parent / "examples" / "litellm_fleet.py"


async def in_flight(throttle: AsyncThrottle, count: int, within: float = 10.0) -> DomainState:
    """The cold model's chat domain once ``count`` requests are in flight
    (reports that LiteLLM makes in tasks of its own come a little later)."""
    deadline = time.monotonic() + within
    while True:
        state = await throttle.domain_state("cold", "cold-model", "chat")
        if state is not None and (state.in_flight == count or time.monotonic() > deadline):
            return state
        await asyncio.sleep(0.02)


def ask(server: ColdServer, **extra: Any) -> Any:
    """LiteLLM's call of the cold model, with ``extra`` arguments (a coroutine)."""
    return litellm.acompletion(
        model="openai/cold-model",
        api_base=f"{server.url}/v1",
        api_key="not-needed",
        messages=[{"role": "user", "content": "hello"}],
        **extra,
    )


def test_two_litellm_processes_share_one_limit_and_every_call_is_answered(real_redis_url: str) -> None:
    command = [sys.executable, str(EXAMPLE), "--url", real_redis_url, "--requests", "12"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("worker: 12 answered, 0 refused") == 2, done.stdout
    # Twice LiteLLM's per-process limit would reach the server; the shared one holds at 4.
    assert "server: 24 requests, 24 served, 0 refused (429), at most 4 at once" in done.stdout, done.stdout


async def test_a_429_sets_the_fleets_cooldown_from_its_retry_after(real_redis_url: str) -> None:
    namespace = f"litellm{uuid.uuid4().hex[:8]}"
    settings = ServerSettings(peak=1, warmup_seconds=0, service_seconds=0.3, retry_after_seconds=0.5)
    config = ThrottleConfig(cooldown_seconds=30)  # what the cooldown would be without Retry-After
    with ColdServer(settings) as server:
        async with AsyncThrottle(real_redis_url, namespace=namespace, config=config) as throttle:
            limiter = AimdLimiter(throttle, max_parallel_requests=3, provider_name="cold")
            litellm.callbacks = [limiter]
            try:

                async def one() -> str:
                    try:
                        await ask(server, max_retries=0)
                        return "answered"
                    except litellm.RateLimitError:
                        return "refused"

                started = time.time()
                results = await asyncio.gather(*(one() for _ in range(3)))
                ended = time.time()
            finally:
                litellm.callbacks = []
            state = await throttle.domain_state("cold", "cold-model", "chat")
    assert sorted(results) == ["answered", "refused", "refused"]
    assert state is not None
    # The first 429 cut the limit (the second, of the same burst, did not); the
    # answer that came last ended the cascade. The cooldown is the server's
    # half second, not 30 s.
    assert (state.in_flight, state.current_limit, state.rate_limit_ceiling) == (0, 2, 3)
    assert (state.consecutive_429s, state.success_streak) == (0, 1)
    assert started < state.blocked_until <= ended + 1


def test_the_limiter_refuses_a_sync_throttle(real_redis_url: str) -> None:
    throttle = Throttle(real_redis_url)
    with pytest.raises(ArgumentTypeError, match="AsyncThrottle"):
        AimdLimiter(throttle)  # type: ignore[arg-type]


async def test_a_streamed_answer_holds_its_slot_until_it_ends(real_redis_url: str) -> None:
    namespace = f"litellm{uuid.uuid4().hex[:8]}"
    with ColdServer(ServerSettings(peak=2, warmup_seconds=0, service_seconds=0.2)) as server:
        async with AsyncThrottle(real_redis_url, namespace=namespace) as throttle:
            litellm.callbacks = [AimdLimiter(throttle, max_parallel_requests=2, provider_name="cold")]
            try:
                stream = await ask(server, stream=True)
                during = await throttle.domain_state("cold", "cold-model", "chat")
                words = [chunk async for chunk in stream]
                # LiteLLM logs a stream's end in a task of its own: the report follows it.
                after = await in_flight(throttle, 0)
            finally:
                litellm.callbacks = []
    assert words
    assert during is not None
    assert during.in_flight == 1
    assert (after.in_flight, after.success_streak) == (0, 1)


async def test_a_call_cancelled_mid_flight_gives_its_slot_back(real_redis_url: str) -> None:
    namespace = f"litellm{uuid.uuid4().hex[:8]}"
    with ColdServer(ServerSettings(peak=2, warmup_seconds=0, service_seconds=5)) as server:
        async with AsyncThrottle(real_redis_url, namespace=namespace) as throttle:
            litellm.callbacks = [AimdLimiter(throttle, max_parallel_requests=2, provider_name="cold")]
            try:
                call = asyncio.create_task(ask(server))
                during = await in_flight(throttle, 1)
                call.cancel()  # a client gone: LiteLLM runs no hook after the call
                with pytest.raises(asyncio.CancelledError):
                    await call
                after = await in_flight(throttle, 0)
            finally:
                litellm.callbacks = []
    assert during.in_flight == 1
    # Given back: free again, and nothing learned from a call with no answer.
    assert (after.in_flight, after.success_streak, after.consecutive_429s) == (0, 0, 0)


def _proxy_call(priority: str | None = None, team: str | None = None, key: str = "metadata") -> dict[str, Any]:
    """A call's kwargs as LiteLLM's proxy hands them to the deployment hooks."""
    return {
        key: {
            "user_api_key_metadata": {} if priority is None else {"priority": priority},
            "user_api_key_team_metadata": None if team is None else {"priority": team},
        }
    }


@pytest.mark.parametrize(
    ("kwargs", "share"),
    [
        (_proxy_call("prod"), ("prod", 0.9)),
        (_proxy_call("dev", key="litellm_metadata"), ("dev", 0.1)),
        (_proxy_call("dev", team="prod"), ("prod", 0.9)),  # the team's priority wins, as in LiteLLM
        (_proxy_call("batch"), ("batch", 1.0)),  # reserved in rpm: no fraction to weigh by
        (_proxy_call("bad name"), None),  # cannot be a group
        (_proxy_call("unlisted"), None),
        (_proxy_call(), None),
        ({}, None),
    ],
)
def test_the_proxys_priority_reservation_is_a_weighted_group(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], share: tuple[str, float] | None
) -> None:
    monkeypatch.setattr(
        litellm,
        "priority_reservation",
        {
            "prod": 0.9,
            "dev": {"type": "percent", "value": 0.1},
            "batch": {"type": "rpm", "value": 600},
            "bad name": 0.5,
        },
    )
    found = priority_share(kwargs)
    assert (None if found is None else tuple(found)) == share


def test_without_a_reservation_no_priority_makes_a_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litellm, "priority_reservation", None)
    assert priority_share(_proxy_call("prod")) is None


@pytest.mark.parametrize(
    ("limiter", "target", "groups"),
    [
        ({}, None, ["prod", "default"]),
        ({"group": "batch", "weight": 0.5}, None, ["prod", "batch"]),
        ({"group": "batch"}, "interactive", ["interactive", "interactive"]),  # the target's group wins
        ({"group": "batch", "by_priority": False}, None, ["batch", "batch"]),
    ],
    ids=["none", "limiter", "target", "no-priority"],
)
async def test_a_call_waits_in_its_group(
    real_redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    limiter: dict[str, Any],
    target: str | None,
    groups: list[str],
) -> None:
    """A call of a key with the proxy's priority 'prod', then one without."""
    monkeypatch.setattr(litellm, "priority_reservation", {"prod": 0.9})
    namespace = f"litellm{uuid.uuid4().hex[:8]}"

    def grouped(kwargs: Any, domain: str) -> Any:
        found = deployment_target(kwargs, domain, "cold")
        return found if found is None or target is None else found._replace(group=target, weight=5)

    seen = []
    with ColdServer(ServerSettings(peak=2, warmup_seconds=0, service_seconds=0.5)) as server:
        async with AsyncThrottle(real_redis_url, namespace=namespace) as throttle:
            litellm.callbacks = [
                AimdLimiter(throttle, max_parallel_requests=2, provider_name="cold", target=grouped, **limiter)
            ]
            try:
                for metadata in (_proxy_call("prod")["metadata"], {}):
                    call = asyncio.create_task(ask(server, metadata=metadata))
                    await in_flight(throttle, 1)
                    (lease_id,) = await throttle._redis.zrange(f"{namespace}:{{cold/cold-model}}:chat:leases", 0, -1)
                    seen.append(lease_id.decode().partition(".")[0].partition("~")[2] or "default")
                    await call
                    await in_flight(throttle, 0)
            finally:
                litellm.callbacks = []
    assert seen == groups


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"group": "a.b"}, InvalidArgumentError),
        ({"group": b"x"}, ArgumentTypeError),
        ({"weight": 0}, InvalidArgumentError),
    ],
)
async def test_a_bad_group_or_weight_is_refused_when_the_limiter_is_made(
    real_redis_url: str, settings: dict[str, Any], error: type[Exception]
) -> None:
    async with AsyncThrottle(real_redis_url) as throttle:
        with pytest.raises(error, match=r"group|weight"):
            AimdLimiter(throttle, **settings)
