"""Short forms of the client calls the tests make over and over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from aimd_redis import Denied, DomainState, Lease, LimitEvent, Throttle

P, M = "openai", "gpt-4o"


def reg(t: Throttle, max_parallel: int, alias: str = "gen", now: float = 0.0, model: str = M) -> int:
    return t.register(provider_name=P, model_id=model, alias=alias, max_parallel_requests=max_parallel, now=now)


def take(t: Throttle, now: float, domain: str = "chat", model: str = M) -> Lease | Denied:
    return t.try_acquire(provider_name=P, model_id=model, domain=domain, now=now)


def grant(t: Throttle, now: float, domain: str = "chat", model: str = M) -> Lease:
    got = take(t, now, domain, model)
    assert isinstance(got, Lease), got
    return got


def fill(t: Throttle, n: int, now: float, domain: str = "chat") -> list[Lease]:
    return [grant(t, now, domain) for _ in range(n)]


def state(t: Throttle, domain: str = "chat", model: str = M) -> DomainState:
    s = t.domain_state(P, model, domain)
    assert s is not None
    return s


def limit(t: Throttle, domain: str = "chat") -> int:
    return state(t, domain).current_limit


def succeed(t: Throttle, n: int, now: float, domain: str = "chat") -> None:
    """n acquire+success round trips."""
    for _ in range(n):
        assert grant(t, now, domain).success(now=now).released


def rate_limit_at(t: Throttle, now: float, retry_after: float | None = None, domain: str = "chat") -> None:
    """One acquire answered by a 429."""
    assert grant(t, now, domain).rate_limited(retry_after=retry_after, now=now).released


def script_calls(client: redis.Redis) -> int:
    """Calls of the library's scripts since the last CONFIG RESETSTAT, as functions or as scripts."""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("fcall", "evalsha"))


def wait_until(condition: Callable[[], object], what: str = "condition not reached", seconds: float = 20) -> None:
    """Poll ``condition`` (a refused connection counts as not yet) until it holds."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


async def wait_until_async(
    condition: Callable[[], Awaitable[object]], what: str = "condition not reached", seconds: float = 20
) -> None:
    """wait_until for an awaitable condition."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def events_of(client: redis.Redis, model: str = M) -> list[LimitEvent]:
    """The model's event stream, oldest first."""
    return [
        LimitEvent(
            provider_name=P,
            model_id=model,
            domain=f[b"domain"].decode(),
            event=f[b"event"].decode(),
            old=_number_or_name(f[b"from"].decode()),
            new=_number_or_name(f[b"to"].decode()),
        )
        for _, f in client.xrange(f"aimd:{{{P}/{model}}}:events")
    ]


def _number_or_name(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def settled_tokens(t: Throttle, monkeypatch: Any) -> list[int | None]:
    """The tokens each release of ``t`` reports as used (None: the estimate stands), as they come."""
    settled: list[int | None] = []
    release_call = t._core.release_call

    def spy(*args: Any, **kwargs: Any) -> Any:
        settled.append(args[6] if len(args) > 6 else kwargs.get("tokens"))
        return release_call(*args, **kwargs)

    monkeypatch.setattr(t._core, "release_call", spy)
    return settled
