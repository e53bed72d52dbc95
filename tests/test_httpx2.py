"""The httpx2 transports under the current OpenAI and Anthropic SDKs, the
Anthropic router, and the traps: a throttle of the wrong kind, retries."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
import redis

from aimd_redis import (
    ArgumentTypeError,
    AsyncThrottle,
    DomainState,
    InvalidArgumentError,
    Throttle,
    ThrottleConfig,
    async_with_retries,
    with_retries,
)
from aimd_redis import httpx as aimd_httpx
from aimd_redis.demo.coldserver import ColdServer, ServerSettings
from aimd_redis.httpx2 import AimdTransport, AsyncAimdTransport, Target, anthropic_router, openai_router

from .helpers import settled_tokens

MODEL = "cold-model"
THREADS, EACH = 12, 8


@pytest.fixture
def server() -> Iterator[ColdServer]:
    with ColdServer(ServerSettings(peak=4, warmup_seconds=0.0, service_seconds=0.05)) as s:
        yield s


@pytest.fixture
def throttle(real_redis: redis.Redis) -> Iterator[Throttle]:
    t = Throttle(real_redis, config=ThrottleConfig(success_window=10))
    t.register(provider_name="local", model_id=MODEL, alias="test", max_parallel_requests=4)
    yield t
    t.close()


def _state(t: Throttle) -> DomainState:
    s = t.domain_state("local", MODEL, "chat")
    assert s is not None
    return s


def _openai(throttle: Throttle, server: ColdServer) -> Any:
    client = openai.OpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",
        http_client=httpx2.Client(transport=AimdTransport(throttle, router=openai_router("local"))),
        max_retries=0,  # a 429 would fail the test: the limit is to prevent every one
    )
    return lambda i: (
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"question {i}"}])
        .choices[0]
        .message.content
    )


def _anthropic(throttle: Throttle, server: ColdServer) -> Any:
    client = anthropic.Anthropic(
        base_url=server.url,
        api_key="unused",
        http_client=httpx2.Client(transport=AimdTransport(throttle, router=anthropic_router("local"))),
        max_retries=0,
    )
    return lambda i: (
        client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": f"question {i}"}])
        .content[0]
        .text
    )


@pytest.mark.parametrize("sdk", [_openai, _anthropic], ids=["openai", "anthropic"])
def test_the_current_sdks_never_exceed_the_registered_limit(throttle: Throttle, server: ColdServer, sdk: Any) -> None:
    ask = sdk(throttle, server)
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        answers = list(pool.map(ask, range(THREADS * EACH)))
    assert answers == ["The server is warm now."] * (THREADS * EACH)
    stats = server.stats()
    assert (stats.requests, stats.rejected) == (THREADS * EACH, 0)
    assert stats.max_concurrency == 4  # reached, never passed
    s = _state(throttle)
    assert (s.in_flight, s.consecutive_429s) == (0, 0)


def _lease_ids(r: redis.Redis) -> list[str]:
    return [m.decode() for m in r.zrange(f"aimd:{{local/{MODEL}}}:chat:leases", 0, -1)]


async def test_the_async_anthropic_sdk_streams_in_its_slot(
    real_redis: redis.Redis, real_redis_url: str, server: ColdServer
) -> None:
    async with AsyncThrottle(real_redis_url) as t:
        await t.register(provider_name="local", model_id=MODEL, alias="test", max_parallel_requests=4)
        # The router's group replaces the transport's.
        router = anthropic_router("local", group="chatbot", weight=4)
        client = anthropic.AsyncAnthropic(
            base_url=server.url,
            api_key="unused",
            http_client=httpx2.AsyncClient(transport=AsyncAimdTransport(t, router=router, group="batch")),
            max_retries=0,
        )
        async with client.messages.stream(
            model=MODEL, max_tokens=16, system="Be brief.", messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            chunks = stream.text_stream
            text = [await anext(chunks)]
            assert (await t.domain_state("local", MODEL, "chat")).in_flight == 1  # type: ignore[union-attr]
            (lease_id,) = _lease_ids(real_redis)
            assert "~chatbot." in lease_id
            text += [chunk async for chunk in chunks]
            final = await stream.get_final_message()
        assert "".join(text) == "The server is warm now."
        assert (final.usage.input_tokens, final.usage.output_tokens <= 16) == (3, True)  # 11 characters
        s = await t.domain_state("local", MODEL, "chat")
        assert s is not None
        assert (s.in_flight, s.success_streak) == (0, 1)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropics_usage_settles_the_reservation(
    throttle: Throttle, server: ColdServer, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    settled = settled_tokens(throttle, monkeypatch)
    body = {"model": MODEL, "max_tokens": 20, "system": "x" * 40, "messages": [{"role": "user", "content": "y" * 8}]}
    transport = AimdTransport(throttle, router=anthropic_router("local"))
    with httpx2.Client(transport=transport, base_url=server.url) as client:
        client.post("/v1/messages", json={**body, "stream": stream}).read()
    assert settled == [server.stats().tokens_served]  # the input and output the server charged
    assert 12 < settled[0] <= 12 + 20  # 48 characters of prompt, 20 tokens of answer at most


def test_the_anthropic_router(caplog: pytest.LogCaptureFixture) -> None:
    route = anthropic_router("anthropic")
    body = b'{"model": "claude-x", "max_tokens": 5, "messages": []}'

    def request(method: str, path: str, content: bytes = body) -> httpx2.Request:
        return httpx2.Request(method, f"https://api.anthropic.com{path}", content=content)

    assert route(request("POST", "/v1/messages")) == Target("anthropic", "claude-x", "chat")
    with caplog.at_level(logging.INFO, logger="aimd_redis"):
        for _ in range(3):
            assert route(request("POST", "/v1/messages/count_tokens")) is None
            assert route(request("POST", "/v1/messages/batches")) is None
            assert route(request("GET", "/v1/models", b"")) is None
            assert route(request("POST", "/v1/messages", b"{}")) is None
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [  # once per route, never silently
        ("INFO", "anthropic_router: POST /v1/messages/count_tokens passes without a slot (it has limits of its own)"),
        ("INFO", "anthropic_router: POST /v1/messages/batches passes without a slot (it has limits of its own)"),
        ("INFO", "anthropic_router: GET /v1/models passes without a slot (no domain for it)"),
        ("WARNING", "anthropic_router: POST /v1/messages passes without a slot (its body names no model)"),
    ]


def test_a_router_stops_naming_routes_after_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    route = openai_router("local")
    with caplog.at_level(logging.INFO, logger="aimd_redis"):
        for i in range(400):  # paths with ids in them
            route(httpx2.Request("GET", f"http://127.0.0.1/v1/files/file-{i}"))
    assert len(caplog.records) == 256 + 1
    assert "not naming further ones" in caplog.records[-1].getMessage()


async def test_a_transport_refuses_a_throttle_of_the_wrong_kind(real_redis: redis.Redis, real_redis_url: str) -> None:
    sync = Throttle(real_redis_url)
    async with AsyncThrottle(real_redis_url) as asynchronous:
        for transport, wrong in [
            (AimdTransport, asynchronous),
            (AsyncAimdTransport, sync),
            (aimd_httpx.AimdTransport, asynchronous),
            (aimd_httpx.AsyncAimdTransport, sync),
        ]:
            needed = "a Throttle" if wrong is asynchronous else "an AsyncThrottle"
            with pytest.raises(ArgumentTypeError, match=f"{transport.__name__} needs {needed}, not") as refused:
                transport(wrong)  # type: ignore[arg-type]
            assert "AsyncThrottle with AsyncAimdTransport" in str(refused.value)
    sync.close()


def test_each_module_binds_its_own_library() -> None:
    assert isinstance(AimdTransport.__new__(AimdTransport), httpx2.BaseTransport)
    assert isinstance(aimd_httpx.AsyncAimdTransport.__new__(aimd_httpx.AsyncAimdTransport), httpx.AsyncBaseTransport)
    assert not issubclass(aimd_httpx.AimdTransport, httpx2.BaseTransport)


# -- with_retries ---------------------------------------------------------------------

TARGET: dict[str, Any] = {"provider_name": "local", "model_id": MODEL, "domain": "chat"}


def _answers(*statuses: int, wait: str = "0.3") -> Iterator[httpx2.Response]:
    for status in statuses:
        yield httpx2.Response(status, headers={"retry-after": wait} if status == 429 else {})


def test_with_retries_waits_out_retry_after_through_the_shared_cooldown(throttle: Throttle) -> None:
    answers = _answers(429, 429, 200)
    sent: list[float] = []

    def send() -> httpx2.Response:
        sent.append(time.monotonic())
        return next(answers)

    response = with_retries(throttle, send, **TARGET, attempts=5)
    assert response.status_code == 200
    assert len(sent) == 3
    # The server's 0.3 s each time, less Redis's rounding.
    assert min(b - a for a, b in itertools.pairwise(sent)) >= 0.25
    s = _state(throttle)
    # The first 429 cut the limit; the success ended the cascade.
    assert (s.in_flight, s.consecutive_429s, s.current_limit, s.success_streak) == (0, 0, 3, 1)


def test_with_retries_gives_the_last_refusal_back_after_its_attempts(throttle: Throttle) -> None:
    answers = _answers(429, 429, 429, 200, wait="0.01")
    response = with_retries(throttle, lambda: next(answers), **TARGET, attempts=3)
    assert response.status_code == 429
    assert next(answers).status_code == 200  # never sent
    assert _state(throttle).consecutive_429s == 3


def test_with_retries_retries_no_failure_and_reports_an_exception(throttle: Throttle) -> None:
    answers = _answers(500, 200)
    assert with_retries(throttle, lambda: next(answers), **TARGET).status_code == 500

    def broken() -> httpx2.Response:
        raise httpx2.ReadError("cut off")

    with pytest.raises(httpx2.ReadError):
        with_retries(throttle, broken, **TARGET)
    s = _state(throttle)
    assert (s.in_flight, s.success_streak, s.consecutive_429s) == (0, 0, 0)


def test_with_retries_waits_in_its_group(throttle: Throttle, real_redis: redis.Redis) -> None:
    held: list[list[str]] = []

    def send() -> httpx2.Response:
        held.append(_lease_ids(real_redis))
        return httpx2.Response(200)

    with_retries(throttle, send, **TARGET, group="nightly", weight=0.5)
    ((lease_id,),) = held
    assert "~nightly." in lease_id


def test_with_retries_settles_the_tokens_used(throttle: Throttle, real_redis: redis.Redis) -> None:
    throttle.register(
        provider_name="local", model_id=MODEL, alias="test", max_parallel_requests=4, tokens_per_minute=6000
    )
    answers = _answers(200)
    with_retries(throttle, lambda: next(answers), **TARGET, tokens=1000, used=lambda _: 100)
    left = float(real_redis.hget(f"aimd:{{local/{MODEL}}}:cap:budget", "tokens") or 0)
    assert 5900 - 1 <= left <= 5900 + 50  # 100 charged, not the 1000 reserved (plus a little refill)


def test_with_retries_checks_its_arguments(throttle: Throttle) -> None:
    for bad in (0, 101, True):
        with pytest.raises((ValueError, TypeError), match="attempts"):
            with_retries(throttle, lambda: httpx2.Response(200), **TARGET, attempts=bad)
    with pytest.raises(InvalidArgumentError, match="group"):
        with_retries(throttle, lambda: httpx2.Response(200), **TARGET, group="a~b")
    with pytest.raises(InvalidArgumentError, match="weight"):
        with_retries(throttle, lambda: httpx2.Response(200), **TARGET, weight=-1)
    assert throttle.domain_state("local", MODEL, "chat") is None  # refused before taking a slot


async def test_async_with_retries(real_redis: redis.Redis, real_redis_url: str) -> None:
    async with AsyncThrottle(real_redis_url) as t:
        await t.register(provider_name="local", model_id=MODEL, alias="test", max_parallel_requests=4)
        answers = _answers(429, 200, wait="0.05")

        async def send() -> httpx2.Response:
            return next(answers)

        assert (await async_with_retries(t, send, **TARGET)).status_code == 200
        s = await t.domain_state("local", MODEL, "chat")
        assert s is not None
        assert (s.in_flight, s.consecutive_429s) == (0, 0)
        with pytest.raises(ArgumentTypeError, match="with_retries needs a Throttle, not an AsyncThrottle"):
            with_retries(t, lambda: httpx2.Response(200), **TARGET)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("blocked", "module", "fails"),
    [
        ("httpx", "aimd_redis.httpx2", False),
        ("httpx2", "aimd_redis.httpx2", True),
        ("httpx2", "aimd_redis.httpx", False),
    ],
)
def test_each_module_needs_only_its_own_library(blocked: str, module: str, fails: bool) -> None:
    import subprocess
    import sys

    # The other library made unimportable in a child interpreter, as on an install with one extra.
    code = f"import sys; sys.modules[{blocked!r}] = None\nimport {module}, aimd_redis; print(aimd_redis.with_retries)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode != 0) == fails, done.stderr
    if fails:
        assert f"pip install 'aimd-redis[{blocked}]'" in done.stderr
