"""The httpx transports against a real HTTP server on loopback."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import redis

from aimd_redis import AsyncThrottle, DomainState, Throttle, ThrottleConfig
from aimd_redis.embedded import _free_port
from aimd_redis.httpx import AimdTransport, AsyncAimdTransport, openai_router, retry_after_seconds

MODEL = "gpt-test"
CONFIG = ThrottleConfig(success_window=10, reduce_factor=0.5)


class Upstream(BaseHTTPRequestHandler):
    """Answers as the query string says: ?status=429&retry_after=7&retry_after_ms=1500&chunks=3"""

    requests = 0

    def do_POST(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        status = int(query.get("status", 200))
        self.send_response(status)
        if "retry_after" in query:
            self.send_header("Retry-After", query["retry_after"])
        if "retry_after_ms" in query:
            self.send_header("retry-after-ms", query["retry_after_ms"])
        chunks = int(query.get("chunks", 0))
        if chunks:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(chunks):
                data = f"data: {i}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({"ok": status < 400}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def throttle(real_redis: redis.Redis) -> Iterator[Throttle]:
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


def _post(client: httpx.Client, query: str = "") -> httpx.Response:
    return client.post(f"/v1/chat/completions{query}", json={"model": MODEL, "messages": []})


def test_success_is_reported_when_the_response_is_read(throttle: Throttle, upstream: str) -> None:
    with _client(throttle, upstream) as client:
        assert _post(client).status_code == 200
    s = _state(throttle)
    assert (s.in_flight, s.success_streak, s.current_limit) == (0, 1, 8)


@pytest.mark.parametrize(
    ("query", "expected_wait"),
    [("?status=429&retry_after=7", 7.0), ("?status=429&retry_after_ms=1500&retry_after=9", 1.5), ("?status=429", 2.0)],
)
def test_a_429_reports_rate_limited_with_the_servers_wait(
    throttle: Throttle, upstream: str, real_redis: redis.Redis, query: str, expected_wait: float
) -> None:
    Upstream.requests = 0
    with _client(throttle, upstream) as client:
        before = _now(real_redis)
        assert _post(client, query).status_code == 429
    s = _state(throttle)
    assert (s.in_flight, s.consecutive_429s, s.current_limit, s.rate_limit_ceiling) == (0, 1, 4, 8)
    assert s.blocked_until - before == pytest.approx(expected_wait, abs=0.5)
    assert Upstream.requests == 1  # never retried by the transport


def test_a_429_with_an_http_date(throttle: Throttle, upstream: str, real_redis: redis.Redis) -> None:
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    with _client(throttle, upstream) as client:
        before = _now(real_redis)
        assert _post(client, f"?status=429&retry_after={when.replace(' ', '%20')}").status_code == 429
    assert _state(throttle).blocked_until - before == pytest.approx(20, abs=2)


def test_5xx_and_connection_errors_report_failure(throttle: Throttle, upstream: str) -> None:
    with _client(throttle, upstream) as client:
        _post(client)  # one success, so the streak shows that failures neither add nor reset
        assert _post(client, "?status=503").status_code == 503
    with _client(throttle, f"http://127.0.0.1:{_free_port()}") as client, pytest.raises(httpx.ConnectError):
        _post(client)
    s = _state(throttle)
    assert (s.in_flight, s.success_streak, s.current_limit, s.consecutive_429s) == (0, 1, 8, 0)


def test_a_streamed_response_holds_its_slot_until_closed(throttle: Throttle, upstream: str) -> None:
    with _client(throttle, upstream) as client:
        with client.stream("POST", "/v1/chat/completions?chunks=3", json={"model": MODEL}) as response:
            lines = response.iter_lines()
            assert next(lines) == "data: 0"
            assert _state(throttle).in_flight == 1  # half read: still held
            assert [line for line in lines if line] == ["data: 1", "data: 2"]
        assert _state(throttle).in_flight == 0
    assert _state(throttle).success_streak == 1


def test_requests_without_a_model_pass_unthrottled(throttle: Throttle, upstream: str, real_redis: redis.Redis) -> None:
    with _client(throttle, upstream) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 200
    assert throttle.domain_state("local", MODEL, "chat") is None


async def test_async_transport(real_redis: redis.Redis, real_redis_url: str, upstream: str) -> None:
    async with AsyncThrottle(real_redis_url, config=CONFIG) as t:
        await t.register(provider_name="local", model_id=MODEL, alias="test", max_parallel_requests=8)
        transport = AsyncAimdTransport(t, router=openai_router("local"))
        async with httpx.AsyncClient(transport=transport, base_url=upstream) as client:
            async with client.stream("POST", "/v1/chat/completions?chunks=2", json={"model": MODEL}) as response:
                assert (await t.domain_state("local", MODEL, "chat")).in_flight == 1  # type: ignore[union-attr]
                assert [line async for line in response.aiter_lines() if line] == ["data: 0", "data: 1"]
            response = await client.post("/v1/chat/completions?status=429&retry_after=3", json={"model": MODEL})
            assert response.status_code == 429
        s = await t.domain_state("local", MODEL, "chat")
        assert s is not None
        assert (s.in_flight, s.success_streak, s.consecutive_429s, s.current_limit) == (0, 0, 1, 4)


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
