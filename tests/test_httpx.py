"""The httpx transports against the cold inference server on loopback."""

from __future__ import annotations

import email.utils
import gzip
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis

from aimd_redis import ArgumentTypeError, AsyncThrottle, DomainState, InvalidArgumentError, Throttle, ThrottleConfig
from aimd_redis._http import LibraryCodecs, UsageReader
from aimd_redis.demo.coldserver import ColdServer, RetryAfterForm, ServerSettings
from aimd_redis.demo.embedded import _free_port
from aimd_redis.httpx import (
    AimdTransport,
    AsyncAimdTransport,
    anthropic_router,
    openai_router,
    retry_after_seconds,
)

from .helpers import settled_tokens

MODEL = "gpt-test"
CONFIG = ThrottleConfig(success_window=10, reduce_factor=0.5)
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def cold_server(**settings: object) -> Iterator[ColdServer]:
    """A warm server (no warm-up) unless told otherwise; 100 ms a request."""
    defaults: dict[str, object] = {"peak": 4, "warmup_seconds": 0.0, "service_seconds": 0.1}
    with ColdServer(ServerSettings(**{**defaults, **settings})) as server:  # type: ignore[arg-type]
        yield server


@pytest.fixture
def server() -> Iterator[ColdServer]:
    with cold_server() as s:
        yield s


@pytest.fixture
def throttle(real_redis: redis.Redis) -> Iterator[Throttle]:
    # Registered at 8 while the server takes 1 at a time: the server's 429s are the test.
    t = Throttle(real_redis, config=CONFIG)
    t.register(provider_name="local", model_id=MODEL, alias="test", max_parallel_requests=8)
    yield t
    t.close()


def _client(throttle: Throttle, base: str) -> httpx.Client:
    """OpenAI-style routing, with the provider named 'local'."""
    return httpx.Client(transport=AimdTransport(throttle, router=openai_router("local")), base_url=base)


def _state(t: Throttle) -> DomainState:
    s = t.domain_state("local", MODEL, "chat")
    assert s is not None
    return s


def _now(r: redis.Redis) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def test_success_is_reported_when_the_response_is_read(throttle: Throttle, server: ColdServer) -> None:
    with _client(throttle, server.url) as client:
        response = client.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["role"] == "assistant"
    s = _state(throttle)
    assert (s.in_flight, s.success_streak, s.current_limit) == (0, 1, 8)


@pytest.mark.parametrize(
    ("form", "server_wait", "expected_wait"),
    [
        ("openai", 1.5, 1.5),  # retry-after-ms wins over the rounded Retry-After: 2
        ("seconds", 7.0, 7.0),
        ("date", 20.0, 20.0),
        ("none", 1.0, 2.0),  # no header: the configured cooldown
    ],
)
def test_a_429_reports_rate_limited_with_the_servers_wait(
    throttle: Throttle, real_redis: redis.Redis, form: RetryAfterForm, server_wait: float, expected_wait: float
) -> None:
    with (
        cold_server(peak=1, service_seconds=2.0, retry_after_form=form, retry_after_seconds=server_wait) as server,
        _client(throttle, server.url) as client,
        client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as first,
    ):
        lines = first.iter_lines()  # kept: a dropped iterator closes the stream
        next(lines)  # the server is busy with this one: capacity 1
        before = _now(real_redis)
        response = client.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 429
        assert response.json()["error"]["type"] == "rate_limit_error"
        s = _state(throttle)
        assert (s.in_flight, s.consecutive_429s, s.current_limit, s.rate_limit_ceiling) == (1, 1, 4, 8)
        # An HTTP date has whole seconds only.
        assert s.blocked_until - before == pytest.approx(expected_wait, abs=1.1 if form == "date" else 0.3)
        assert server.stats().rejected == 1  # never retried by the transport


@pytest.mark.parametrize("status", [503, 529])
def test_an_overloaded_answer_counts_as_rate_limited_when_the_transport_is_told(
    throttle: Throttle, status: int
) -> None:
    with (
        cold_server(peak=1, service_seconds=2.0, refusal_status=status, retry_after_seconds=3.0) as server,
        httpx.Client(
            transport=AimdTransport(throttle, router=openai_router("local"), rate_limited_statuses={429, status}),
            base_url=server.url,
        ) as client,
        client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as first,
    ):
        lines = first.iter_lines()
        next(lines)  # the server is busy with this one: capacity 1
        response = client.post("/v1/chat/completions", json=BODY)
        assert response.status_code == status
        assert response.json()["error"]["type"] == "overloaded_error"
        s = _state(throttle)
        assert (s.consecutive_429s, s.current_limit, s.rate_limit_ceiling) == (1, 4, 8)
        assert server.stats().rejected == 1


def test_an_overloaded_answer_is_a_failure_by_default(throttle: Throttle) -> None:
    with (
        cold_server(peak=1, service_seconds=2.0, refusal_status=503) as server,
        _client(throttle, server.url) as client,
        client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as first,
    ):
        lines = first.iter_lines()
        next(lines)
        assert client.post("/v1/chat/completions", json=BODY).status_code == 503
        s = _state(throttle)
        assert (s.consecutive_429s, s.current_limit, s.rate_limit_ceiling) == (0, 8, 0)


def test_rate_limited_statuses_must_be_error_statuses(throttle: Throttle) -> None:
    for bad in ([200], [], ["503"], [True]):
        with pytest.raises(InvalidArgumentError, match="rate_limited_statuses"):
            AimdTransport(throttle, rate_limited_statuses=bad)  # type: ignore[arg-type]


def test_5xx_and_connection_errors_report_failure(throttle: Throttle, server: ColdServer) -> None:
    with _client(throttle, server.url) as client:
        client.post("/v1/chat/completions", json=BODY)  # a success: failures neither add to nor reset the streak
    with cold_server(error_rate=1.0) as failing, _client(throttle, failing.url) as client:
        assert client.post("/v1/chat/completions", json=BODY).status_code == 500
    with _client(throttle, f"http://127.0.0.1:{_free_port()}") as client, pytest.raises(httpx.ConnectError):
        client.post("/v1/chat/completions", json=BODY)
    s = _state(throttle)
    assert (s.in_flight, s.success_streak, s.current_limit, s.consecutive_429s) == (0, 1, 8, 0)


def test_a_streamed_response_holds_its_slot_until_closed(throttle: Throttle, server: ColdServer) -> None:
    with (
        _client(throttle, server.url) as client,
        client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response,
    ):
        lines = (line for line in response.iter_lines() if line)
        assert next(lines).startswith("data: {")
        assert _state(throttle).in_flight == 1  # half read: still held
        assert list(lines)[-1] == "data: [DONE]"
    assert _state(throttle).in_flight == 0
    assert _state(throttle).success_streak == 1


def test_a_stream_closed_half_read_still_gives_its_slot_back(throttle: Throttle, server: ColdServer) -> None:
    with _client(throttle, server.url) as client:
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
            next(response.iter_lines())
        s = _state(throttle)
        assert (s.in_flight, s.success_streak) == (0, 1)  # the caller chose to stop reading: not a failure


def test_a_stream_that_breaks_off_reports_failure(throttle: Throttle, server: ColdServer) -> None:
    with _client(throttle, server.url) as client:
        client.post("/v1/chat/completions", json=BODY)
    with (
        cold_server(error_rate=1.0) as failing,
        _client(throttle, failing.url) as client,
        client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            list(response.iter_lines())  # the body breaks off after two chunks
    s = _state(throttle)
    # A failure: the streak neither grew nor reset.
    assert (s.in_flight, s.success_streak, s.consecutive_429s) == (0, 1, 0)


def test_embeddings_take_a_slot_of_their_own_domain(throttle: Throttle, server: ColdServer) -> None:
    with _client(throttle, server.url) as client:
        response = client.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})
        assert len(response.json()["data"]) == 2
    s = throttle.domain_state("local", MODEL, "embedding")
    assert s is not None
    assert (s.in_flight, s.success_streak) == (0, 1)
    assert throttle.domain_state("local", MODEL, "chat") is None


def test_requests_without_a_model_pass_unthrottled(throttle: Throttle, server: ColdServer) -> None:
    with _client(throttle, server.url) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 200
    assert throttle.domain_state("local", MODEL, "chat") is None


async def test_async_transport(real_redis: redis.Redis, real_redis_url: str) -> None:
    async with AsyncThrottle(real_redis_url, config=CONFIG) as t:
        await t.register(provider_name="local", model_id=MODEL, alias="test", max_parallel_requests=8)
        transport = AsyncAimdTransport(t, router=openai_router("local"))
        with cold_server(peak=1, service_seconds=1.0, retry_after_seconds=3.0) as server:
            async with (
                httpx.AsyncClient(transport=transport, base_url=server.url) as client,
                client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response,
            ):
                lines = response.aiter_lines()
                await anext(lines)
                assert (await t.domain_state("local", MODEL, "chat")).in_flight == 1  # type: ignore[union-attr]
                assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 429
                assert [line async for line in lines if line][-1] == "data: [DONE]"
        s = await t.domain_state("local", MODEL, "chat")
        assert s is not None
        # The stream's success came after the 429: it ends the cascade and starts a streak.
        assert (s.in_flight, s.success_streak, s.consecutive_429s, s.current_limit) == (0, 1, 0, 4)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "4"}, 4.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(httpx.Headers(headers)) == expected
    past = email.utils.formatdate(1000.0, usegmt=True)
    assert retry_after_seconds(httpx.Headers({"retry-after": past}), now=1010.0) == -10.0


def test_without_httpx_the_import_names_the_extra_to_install() -> None:
    import subprocess
    import sys

    # httpx made unimportable in a child interpreter, as on an install without the extra.
    code = "import sys; sys.modules['httpx'] = None\nimport aimd_redis.httpx"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "pip install 'aimd-redis[httpx]'" in done.stderr


def _budget_left(r: redis.Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in r.hgetall(f"aimd:{{local/{MODEL}}}:cap:budget").items()}


def test_the_transport_learns_the_budget_from_the_headers(throttle: Throttle, real_redis: redis.Redis) -> None:
    with cold_server(tokens_per_minute=6000, requests_per_minute=60) as s, _client(throttle, s.url) as client:
        assert client.post("/v1/chat/completions", json={**BODY, "max_tokens": 100}).status_code == 200
        served = s.stats().tokens_served
    cap = {k.decode(): v.decode() for k, v in real_redis.hgetall(f"aimd:{{local/{MODEL}}}:cap").items()}
    assert (cap["rpm"], cap["tpm"], cap["rpm_heard"], cap["tpm_heard"]) == ("60", "6000", "60", "6000")
    left = _budget_left(real_redis)
    # Corrected down to what the server said was left after this request
    # (plus the refill since: 100 tokens a second).
    assert 6000 - served <= left["tokens"] < 6000 - served + 50
    assert left["requests"] == pytest.approx(59, abs=0.1)


@pytest.mark.parametrize(
    ("stream", "include_usage"), [(False, False), (True, True), (True, False)], ids=["json", "stream", "no-usage"]
)
def test_the_answers_usage_settles_the_reservation(
    throttle: Throttle, monkeypatch: pytest.MonkeyPatch, stream: bool, include_usage: bool
) -> None:
    settled = settled_tokens(throttle, monkeypatch)
    body = {**BODY, "max_tokens": 100, "stream": stream, "stream_options": {"include_usage": include_usage}}
    with (
        cold_server() as s,
        _client(throttle, s.url) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        text = response.read()
    used = None
    if not stream:
        used = json.loads(text)["usage"]["total_tokens"]
    elif include_usage:
        last = [line for line in text.split(b"\n") if line.startswith(b"data: {")][-1]
        used = json.loads(last[6:])["usage"]["total_tokens"]
    assert settled == [used]  # no usage in the answer: the estimate stands as used
    if stream and include_usage:
        assert used is not None


def test_a_request_above_the_learned_budget_waits_for_it(throttle: Throttle) -> None:
    small = {**BODY, "max_tokens": 50}
    with cold_server(tokens_per_minute=600) as s, _client(throttle, s.url) as client:
        assert client.post("/v1/chat/completions", json=small).status_code == 200
        # The fleet knows the budget now: a request that cannot fit in a minute is refused before it is sent.
        with pytest.raises(Exception, match="can never fit"):
            client.post("/v1/chat/completions", json={**BODY, "max_tokens": 700})
        assert s.stats().requests == 1


def test_usage_is_read_through_gzip_but_not_from_an_unknown_encoding() -> None:
    answer = b'{"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}'
    packed = gzip.compress(answer)
    codecs = LibraryCodecs(httpx)
    reader = UsageReader(httpx.Headers({"content-encoding": "gzip", "content-type": "application/json"}), codecs)
    for i in range(0, len(packed), 3):
        reader.feed(packed[i : i + 3])
    assert reader.tokens == 12
    unknown = UsageReader(httpx.Headers({"content-encoding": "br"}), codecs)
    unknown.feed(answer)
    assert unknown.tokens is None
    broken = UsageReader(httpx.Headers({"content-encoding": "gzip"}), codecs)
    broken.feed(answer)  # not gzip at all
    assert broken.tokens is None


def test_a_request_never_sent_gives_its_slot_and_budget_back(throttle: Throttle, real_redis: redis.Redis) -> None:
    throttle.register(
        provider_name="local", model_id=MODEL, alias="test", max_parallel_requests=8, requests_per_minute=60
    )
    with _client(throttle, f"http://127.0.0.1:{_free_port()}") as client, pytest.raises(httpx.ConnectError):
        client.post("/v1/chat/completions", json=BODY)
    assert _state(throttle).in_flight == 0
    assert _budget_left(real_redis)["requests"] == pytest.approx(60, abs=0.01)  # nothing was sent


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_streams_first_byte_is_reported_with_its_success(
    throttle: Throttle, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    reported: list[float | None] = []
    release_call = throttle._core.release_call

    def spy(*args: object, **kwargs: object) -> object:
        reported.append(args[8] if len(args) > 8 else kwargs.get("ttfb"))  # type: ignore[arg-type]
        return release_call(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(throttle._core, "release_call", spy)
    body = {**BODY, "max_tokens": 20, "stream": stream}
    with cold_server(service_seconds=0.4) as s, _client(throttle, s.url) as client:
        started = time.monotonic()
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            response.read()
        took = time.monotonic() - started
    if not stream:
        assert reported == [None]  # an answer in one piece: its time per token is the signal
    else:
        (ttfb,) = reported
        assert ttfb is not None
        assert 0 < ttfb < took / 2  # the first of the chunks spread over the answer


def _groups_of_leases(r: redis.Redis) -> list[str]:
    """The group named in each live lease id ('<client>~<group>.<token>';
    'default' for an id without one)."""
    ids = [m.decode() for m in r.zrange(f"aimd:{{local/{MODEL}}}:chat:leases", 0, -1)]
    return sorted(i.partition(".")[0].partition("~")[2] or "default" for i in ids)


@pytest.mark.parametrize(
    ("transport", "router", "extensions", "group"),
    [
        ({}, {}, {}, "default"),
        ({"group": "batch", "weight": 3}, {}, {}, "batch"),
        ({"group": "batch"}, {"group": "evals", "weight": 0.5}, {}, "evals"),
        ({"group": "batch"}, {"weight": 2}, {}, "default"),  # a router's weight alone: the default group's
        ({"group": "batch"}, {"group": "evals"}, {"aimd_group": "interactive", "aimd_weight": 10}, "interactive"),
    ],
    ids=["none", "transport", "router", "router-weight", "request"],
)
def test_a_request_waits_in_the_group_its_request_router_or_transport_names(
    throttle: Throttle,
    real_redis: redis.Redis,
    server: ColdServer,
    transport: dict[str, object],
    router: dict[str, object],
    extensions: dict[str, object],
    group: str,
) -> None:
    aimd = AimdTransport(throttle, router=openai_router("local", **router), **transport)  # type: ignore[arg-type]
    with (
        httpx.Client(transport=aimd, base_url=server.url) as client,
        client.stream("POST", "/v1/chat/completions", json=BODY, extensions=extensions) as response,
    ):
        assert response.status_code == 200
        assert _groups_of_leases(real_redis) == [group]  # held until the response is closed
    assert _groups_of_leases(real_redis) == []


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"group": "two words"}, InvalidArgumentError),
        ({"group": "x" * 65}, InvalidArgumentError),
        ({"group": "a.b"}, InvalidArgumentError),  # '.' and '~' would make lease ids ambiguous
        ({"group": 7}, ArgumentTypeError),
        ({"weight": 0}, InvalidArgumentError),
        ({"weight": float("nan")}, InvalidArgumentError),
        ({"weight": float("inf")}, InvalidArgumentError),
        ({"weight": "2"}, ArgumentTypeError),
        ({"weight": True}, ArgumentTypeError),
    ],
)
def test_a_bad_group_or_weight_is_refused_when_the_transport_or_router_is_made(
    throttle: Throttle, settings: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"group|weight"):
        AimdTransport(throttle, **settings)  # type: ignore[arg-type]
    with pytest.raises(error, match=r"group|weight"):
        AsyncAimdTransport(AsyncThrottle("redis://127.0.0.1:1"), **settings)  # type: ignore[arg-type]
    for router in (openai_router, anthropic_router):
        with pytest.raises(error, match=r"group|weight"):
            router("local", **settings)  # type: ignore[arg-type]


def test_a_bad_group_in_a_requests_extensions_is_refused_before_redis(throttle: Throttle, server: ColdServer) -> None:
    with _client(throttle, server.url) as client:
        with pytest.raises(InvalidArgumentError, match="group"):
            client.post("/v1/chat/completions", json=BODY, extensions={"aimd_group": "no/slash"})
        with pytest.raises(ArgumentTypeError, match="weight"):
            client.post("/v1/chat/completions", json=BODY, extensions={"aimd_weight": None})
    assert throttle.domain_state("local", MODEL, "chat") is None  # nothing reached Redis
    assert server.stats().requests == 0
