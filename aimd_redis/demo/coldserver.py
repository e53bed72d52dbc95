"""A cold, rate-limited inference server on loopback, for the demo, the
benchmarks and the tests (extra ``demo``).

It answers OpenAI-shaped ``POST /v1/chat/completions`` (also streamed) and
``POST /v1/embeddings``. Like an autoscaled endpoint coming up from zero, its
capacity (requests served at once) is 1 when traffic arrives after an idle
spell and grows linearly to ``peak`` over ``warmup_seconds``. A request that
would exceed the capacity is answered at once with 429 and both
``retry-after-ms`` and ``Retry-After`` (as OpenAI does; other forms can be
chosen). Every request is recorded.

    with ColdServer(ServerSettings(peak=16, warmup_seconds=10)) as server:
        httpx.post(f"{server.url}/v1/chat/completions", json={"model": "m", "messages": []})
        server.set_peak(24)        # scale out mid-run
        server.records()           # one Record per request

Admin endpoints: ``GET /admin/stats`` and ``POST /admin/peak {"peak": N}``.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import math
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import msgspec
from aiohttp import web

#: How a 429 says when to retry: OpenAI's pair (``retry-after-ms`` and
#: ``Retry-After`` in whole seconds), ``Retry-After`` alone as seconds or as
#: an HTTP date, or nothing.
RetryAfterForm = Literal["openai", "seconds", "date", "none"]
#: Serves an admitted request that takes ``seconds``; ``fail`` makes it a
#: server error (a 500, or a stream that breaks off after its first chunks).
Responder = Callable[[web.Request, float, bool], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServerSettings:
    peak: int = 16
    """Requests served at once once warm."""
    warmup_seconds: float = 10.0
    """From capacity 1 to ``peak`` after traffic arrives on a cold server; 0 starts warm."""
    service_seconds: float = 0.25
    """Mean time to serve a chat completion (uniform within +-20%)."""
    embedding_seconds: float = 0.05
    """Mean time to serve an embedding."""
    retry_after_seconds: float = 0.5
    """The wait a 429 asks for."""
    retry_after_form: RetryAfterForm = "openai"
    refusal_status: int = 429
    """What a request above capacity is answered with: 429, or 503 or 529 for a
    server that says "overloaded" (its Retry-After headers are the same)."""
    cold_after_seconds: float | None = None
    """Scale to zero after this long without traffic (the next request finds it cold); None never."""
    error_rate: float = 0.0
    """Fraction of admitted requests that fail: a 500, or a stream that breaks off."""
    reject_rate: float = 0.0
    """Fraction of requests within capacity refused with 429 anyway (a quota, not a capacity, ran out)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.peak < 1:
            raise ValueError(f"peak must be at least 1, not {self.peak}")
        for name in ("warmup_seconds", "service_seconds", "embedding_seconds", "retry_after_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.refusal_status not in (429, 503, 529):
            raise ValueError(f"refusal_status must be 429, 503 or 529, not {self.refusal_status!r}")
        if self.retry_after_form not in ("openai", "seconds", "date", "none"):
            raise ValueError(f"retry_after_form must be openai, seconds, date or none, not {self.retry_after_form!r}")
        for name in ("error_rate", "reject_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1], not {getattr(self, name)!r}")


class Record(msgspec.Struct, frozen=True, array_like=True):
    """One request as the server saw it; times in seconds since the server started."""

    arrived: float
    finished: float
    path: str
    concurrency: int
    """Requests in service counting this one, had it been admitted."""
    capacity: int
    status: int


class ServerStats(msgspec.Struct, frozen=True):
    elapsed: float
    capacity: int
    peak: int
    in_service: int
    requests: int
    served: int
    rejected: int
    errors: int
    max_concurrency: int


class _State:
    """Lives on the server's event loop; other threads only read it."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.peak = settings.peak
        self.started = time.monotonic()
        self.warm_since: float | None = None
        self.last_activity = 0.0
        self.in_service = 0
        self.max_concurrency = 0
        self.records: list[Record] = []
        self.by_status: collections.Counter[int] = collections.Counter()  # so stats need not walk the records
        self.rng = random.Random(settings.seed)

    def clock(self) -> float:
        return time.monotonic() - self.started

    def cold(self, now: float) -> bool:
        """Never warmed, or scaled to zero after an idle spell."""
        cold_after = self.settings.cold_after_seconds
        idle = cold_after is not None and self.in_service == 0 and now - self.last_activity >= cold_after
        return self.warm_since is None or idle

    def capacity(self, now: float) -> int:
        """What the server can serve at ``now``; 1 while cold (it warms when a request arrives)."""
        warmup = self.settings.warmup_seconds
        if warmup == 0:
            return self.peak
        if self.warm_since is None or self.cold(now):
            return 1
        return min(self.peak, 1 + math.floor((self.peak - 1) * (now - self.warm_since) / warmup))

    def record(self, r: Record) -> None:
        self.records.append(r)
        self.by_status[r.status] += 1

    def arrive(self, now: float) -> tuple[int, int]:
        """Note an arrival; return (concurrency it would make, capacity)."""
        if self.cold(now):
            self.warm_since = now
        self.last_activity = now
        concurrency = self.in_service + 1
        self.max_concurrency = max(self.max_concurrency, concurrency)
        return concurrency, self.capacity(now)


class ColdServer:
    """The server, run on its own event loop in a daemon thread."""

    def __init__(self, settings: ServerSettings | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings if settings is not None else ServerSettings()
        self._host, self._port = host, port
        self._state = _State(self.settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- running ---------------------------------------------------------

    def start(self) -> ColdServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._bind())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._unbind())
            loop.close()

        self._thread = threading.Thread(target=serve, name="cold-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    async def _bind(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.post("/v1/chat/completions", self._chat),
                web.post("/v1/embeddings", self._embeddings),
                web.get("/v1/models", self._models),
                web.get("/admin/stats", self._stats),
                web.post("/admin/peak", self._set_peak),
            ]
        )
        # A caller that hangs up cancels its request, as inference servers abort a
        # generation nobody waits for: it stops counting against the capacity.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        await web.SockSite(self._runner, sock, backlog=1024).start()
        self.url = f"http://{self._host}:{sock.getsockname()[1]}"

    async def _unbind(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> ColdServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what other threads may ask ---------------------------------------

    def clock(self) -> float:
        """Seconds since the server started: the time base of its records."""
        return self._state.clock()

    def capacity(self) -> int:
        return self._state.capacity(self._state.clock())

    def set_peak(self, peak: int) -> None:
        if peak < 1:
            raise ValueError(f"peak must be at least 1, not {peak}")
        self._state.peak = peak

    def records(self) -> list[Record]:
        return list(self._state.records)

    def stats(self) -> ServerStats:
        s = self._state
        counts = dict(s.by_status)  # a copy: the server's thread keeps counting
        refusals = {429, self.settings.refusal_status}
        now = s.clock()
        return ServerStats(
            elapsed=now,
            capacity=s.capacity(now),
            peak=s.peak,
            in_service=s.in_service,
            requests=sum(counts.values()),
            served=counts.get(200, 0),
            rejected=sum(n for status, n in counts.items() if status in refusals),
            errors=sum(n for status, n in counts.items() if status >= 500 and status not in refusals),
            max_concurrency=s.max_concurrency,
        )

    # -- handlers ----------------------------------------------------------

    def _too_many(self, status: int = 429) -> web.Response:
        wait = self.settings.retry_after_seconds
        form = self.settings.retry_after_form
        headers: dict[str, str] = {}
        if form == "openai":
            headers = {"retry-after-ms": str(round(wait * 1000)), "Retry-After": str(math.ceil(wait))}
        elif form == "seconds":
            headers = {"Retry-After": f"{wait:g}"}
        elif form == "date":
            headers = {"Retry-After": email.utils.formatdate(time.time() + wait, usegmt=True)}
        if status == 429:
            error = {"message": "Too many requests, retry later", "type": "rate_limit_error", "code": 429}
        else:
            error = {"message": "The server is overloaded, retry later", "type": "overloaded_error", "code": status}
        return web.json_response({"error": error}, status=status, headers=headers)

    async def _serve(self, request: web.Request, mean_seconds: float, respond: Responder) -> web.StreamResponse:
        s = self._state
        arrived = s.clock()
        concurrency, capacity = s.arrive(arrived)
        if concurrency > capacity:
            status = self.settings.refusal_status
            s.record(Record(arrived, arrived, request.path, concurrency, capacity, status))
            return self._too_many(status)
        if self.settings.reject_rate and s.rng.random() < self.settings.reject_rate:
            s.record(Record(arrived, arrived, request.path, concurrency, capacity, 429))
            return self._too_many()
        s.in_service += 1
        status = 500 if s.rng.random() < self.settings.error_rate else 200
        try:
            seconds = mean_seconds * s.rng.uniform(0.8, 1.2)
            return await respond(request, seconds, status == 500)
        finally:
            s.in_service -= 1
            s.last_activity = s.clock()
            s.record(Record(arrived, s.last_activity, request.path, concurrency, capacity, status))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        return await self._serve(request, self.settings.service_seconds, _chat_responder(body))

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        return await self._serve(request, self.settings.embedding_seconds, _embedding_responder(body))

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "cold-model", "object": "model"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=msgspec.json.encode(self.stats()), content_type="application/json")

    async def _set_peak(self, request: web.Request) -> web.Response:
        peak = (await _json(request)).get("peak")
        if not isinstance(peak, int) or isinstance(peak, bool) or peak < 1:
            raise web.HTTPBadRequest(text='expected {"peak": <int >= 1>}')
        self.set_peak(peak)
        return await self._stats(request)


def _server_error() -> web.Response:
    return web.json_response({"error": {"message": "internal error", "type": "server_error"}}, status=500)


async def _json(request: web.Request) -> dict[str, object]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body is not a JSON object")
    return body


def _chat_responder(body: dict[str, object]) -> Responder:
    model = str(body.get("model", "cold-model"))
    created = int(time.time())
    words = ["The", " server", " is", " warm", " now."]

    async def respond(request: web.Request, seconds: float, fail: bool) -> web.StreamResponse:
        if not body.get("stream"):
            await asyncio.sleep(seconds)
            if fail:
                return _server_error()
            message = {"role": "assistant", "content": "".join(words)}
            return web.json_response(
                {
                    "id": "chatcmpl-cold",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 8, "completion_tokens": len(words), "total_tokens": 8 + len(words)},
                }
            )
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        for i, word in enumerate(words):
            await asyncio.sleep(seconds / len(words))
            if fail and i == 2:
                assert request.transport is not None
                request.transport.close()  # the status line said 200; the body just stops
                return stream
            chunk = {
                "id": "chatcmpl-cold",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            await stream.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
        await stream.write(b"data: [DONE]\n\n")
        await stream.write_eof()
        return stream

    return respond


def _embedding_responder(body: dict[str, object]) -> Responder:
    model = str(body.get("model", "cold-model"))
    raw = body.get("input", "")
    inputs = raw if isinstance(raw, list) else [raw]

    async def respond(request: web.Request, seconds: float, fail: bool) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        if fail:
            return _server_error()
        data = [
            {"object": "embedding", "index": i, "embedding": [round(math.sin(i + k), 6) for k in range(8)]}
            for i in range(len(inputs))
        ]
        return web.json_response(
            {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        )

    return respond
