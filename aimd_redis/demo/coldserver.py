"""A cold, rate-limited inference server on loopback, for the demo, the
benchmarks and the tests (extra ``demo``).

It answers OpenAI-shaped ``POST /v1/chat/completions`` (also streamed) and
``POST /v1/embeddings``, and Anthropic-shaped ``POST /v1/messages`` (also
streamed), sharing one capacity. Like an autoscaled endpoint coming up from zero, its
capacity (requests served at once) is 1 when traffic arrives after an idle
spell and grows linearly to ``peak`` over ``warmup_seconds``. A request that
would exceed the capacity is answered at once with 429 and both
``retry-after-ms`` and ``Retry-After`` (as OpenAI does; other forms can be
chosen). Every request is recorded.

Like a hosted API it can also hold budgets, ``requests_per_minute`` and
``tokens_per_minute``: token buckets of one minute's worth, refilled
continuously. A request's tokens (its prompt at 4 characters a token, plus its
answer's length) are charged at admission and reported in ``usage``; one that
does not fit gets a 429 saying when it would, before the capacity is asked.
A budgeted server's answers carry OpenAI's ``x-ratelimit-*`` headers (or
Anthropic's ``anthropic-ratelimit-*``).

    with ColdServer(ServerSettings(peak=16, warmup_seconds=10, tokens_per_minute=20_000)) as server:
        httpx.post(f"{server.url}/v1/chat/completions", json={"model": "m", "messages": []})
        server.set_peak(24)        # scale out mid-run
        server.set_budget(tokens_per_minute=40_000)
        server.records()           # one Record per request

With ``queueing=True`` it behaves as a self-hosted server (vLLM, TGI)
instead: the capacity is its batch, requests beyond it wait in a FIFO queue
(a 503 past ``queue_cap``), a fuller batch serves each request more slowly,
and a stream's first token waits out the queue (``servers.py`` holds the
model, shared with the simulator).

Admin endpoints: ``GET /admin/stats``, ``POST /admin/peak {"peak": N}`` and
``POST /admin/budget {"requests_per_minute": N|null, "tokens_per_minute": N|null}``.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import email.utils
import math
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import EllipsisType, TracebackType
from typing import Literal

import msgspec
from aiohttp import web

from aimd_redis.demo.bucket import Bucket
from aimd_redis.demo.servers import Batching, Queue, Served

#: How a 429 says when to retry: OpenAI's pair (``retry-after-ms`` and
#: ``Retry-After`` in whole seconds), ``Retry-After`` alone as seconds or as
#: an HTTP date, or nothing.
RetryAfterForm = Literal["openai", "seconds", "date", "none"]
#: How a budgeted server's answers tell what is left: OpenAI's
#: ``x-ratelimit-*``, Anthropic's ``anthropic-ratelimit-*``, or not at all.
RateLimitHeaderForm = Literal["openai", "anthropic", "none"]
BudgetKind = Literal["requests", "tokens"]


@dataclass(frozen=True)
class _Turn:
    """How an admitted request is to be answered."""

    seconds: float
    fail: bool
    """A server error: a 500, or a stream that breaks off after its first chunks."""
    prompt_tokens: int
    completion_tokens: int
    """The answer's length, decided (and charged) at admission."""
    headers: dict[str, str]
    """The rate-limit headers, as they stand after this request's charge."""
    first_token: float | None = None
    """When a streamed answer's first chunk goes out (default: the chunks evenly spread)."""


@dataclass(frozen=True)
class _Place:
    """A request a queueing server admitted, in its batch or its queue."""

    waiter: asyncio.Future[Served]
    """Resolved once it is in the batch."""
    work: float
    arrived: float
    concurrency: int
    capacity: int
    cost: int
    status: int
    headers: dict[str, str]


#: Serves an admitted request.
Responder = Callable[[web.Request, _Turn], Awaitable[web.StreamResponse]]


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
    requests_per_minute: int | None = None
    """A budget of requests: a bucket of one minute's worth, refilled continuously; None: no such limit."""
    tokens_per_minute: int | None = None
    """A budget of tokens (prompt plus answer, charged at admission), kept like ``requests_per_minute``."""
    rate_limit_headers: RateLimitHeaderForm = "openai"
    """How a budgeted server's answers (200 and 429) tell its budgets."""
    completion_tokens: int = 64
    """The most tokens a chat answer has when the request sets no ``max_completion_tokens``/``max_tokens``."""
    queueing: bool = False
    """Queue instead of refusing, as self-hosted servers do (``servers.py``): the capacity is then
    the batch, a request joining a batch of ``n`` takes ``1 + growth * n / capacity`` times its own
    time, and the rest wait in a FIFO queue (past ``queue_cap``, a 503)."""
    growth: float = 0.5
    """(queueing) A full batch serves each request ``1 + growth`` times slower than a lone one."""
    queue_cap: int | None = None
    """(queueing) Requests waiting beyond the batch before a 503 (vLLM's ``--max-num-queued-reqs``); None: no cap."""
    first_token_share: float = 0.1
    """(queueing) A streamed answer's first token comes after this share of its service time."""
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
        for name in ("requests_per_minute", "tokens_per_minute"):
            limit = getattr(self, name)
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1 (or None for no limit), not {limit!r}")
        if self.rate_limit_headers not in ("openai", "anthropic", "none"):
            raise ValueError(f"rate_limit_headers must be openai, anthropic or none, not {self.rate_limit_headers!r}")
        if self.completion_tokens < 1:
            raise ValueError(f"completion_tokens must be at least 1, not {self.completion_tokens!r}")
        self.batching()  # checks growth, queue_cap and first_token_share

    def batching(self) -> Batching:
        return Batching(growth=self.growth, queue_cap=self.queue_cap, first_token_share=self.first_token_share)


class Record(msgspec.Struct, frozen=True, array_like=True):
    """One request as the server saw it; times in seconds since the server started."""

    arrived: float
    finished: float
    path: str
    concurrency: int
    """Requests in service counting this one, had it been admitted."""
    capacity: int
    status: int
    tokens: int = 0
    """The tokens charged to an admitted request (prompt plus answer); 0 for a refused one."""
    queued: float = 0.0
    """Seconds it waited in the queue of a queueing server before it was served."""


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
    tokens_served: int
    """Tokens charged to admitted requests, finished or not."""
    budget_refusals: int
    """The 429s the budgets gave (counted in ``rejected`` too)."""
    queued: int = 0
    """Requests waiting in a queueing server's queue."""


class _State:
    """Lives on the server's event loop; other threads only read it (the budgets they may also set,
    under ``budget_lock``)."""

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
        # Answers' lengths draw apart, so the other draws (and runs without budgets) stay as they were.
        self.completion_rng = random.Random(f"completion-{settings.seed}")
        # Admission and set_budget (possibly from another thread) must not interleave; the
        # methods below leave the locking to their callers.
        self.budget_lock = threading.Lock()
        self.budgets: dict[BudgetKind, Bucket] = {}
        self.set_budget(0.0, settings.requests_per_minute, settings.tokens_per_minute)
        self.tokens_served = 0
        self.budget_refusals = 0
        # A queueing server's batch and queue: futures resolved with their place in the batch.
        self.queue: Queue[tuple[asyncio.Future[Served], float]] = Queue(settings.batching(), settings.peak)

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

    # -- budgets -------------------------------------------------------------

    def set_budget(
        self,
        now: float,
        requests_per_minute: int | EllipsisType | None = ...,
        tokens_per_minute: int | EllipsisType | None = ...,
    ) -> None:
        """Set the limits (None: none; ``...``: unchanged). A new budget starts full; a lower one caps the level."""
        limits: tuple[tuple[BudgetKind, int | EllipsisType | None], ...] = (
            ("requests", requests_per_minute),
            ("tokens", tokens_per_minute),
        )
        for kind, limit in limits:
            if isinstance(limit, EllipsisType):
                continue
            bucket = self.budgets.get(kind)
            if limit is None:
                self.budgets.pop(kind, None)
            elif bucket is None:
                self.budgets[kind] = Bucket(limit, float(limit), now)
            else:
                bucket.refill(now)  # what accrued so far accrued at the old rate
                bucket.limit, bucket.level = limit, min(bucket.level, limit)

    def limits(self) -> dict[str, int | None]:
        return {f"{kind}_per_minute": b.limit if (b := self.budgets.get(kind)) else None for kind in _KINDS}

    def _refilled(self, now: float) -> list[tuple[BudgetKind, Bucket]]:
        out = [(kind, b) for kind in _KINDS if (b := self.budgets.get(kind)) is not None]
        for _, b in out:
            b.refill(now)
        return out

    def completion_tokens(self, most: int) -> int:
        """An answer's length: between half and all of ``most`` (0: no answer, as for embeddings)."""
        return self.completion_rng.randint((most + 1) // 2, most) if most else 0

    def over_budget(self, cost: int, now: float) -> tuple[BudgetKind, float] | None:
        """None if a request costing ``cost`` tokens fits every budget at ``now``; else the budget
        that holds it back longest and the seconds until it would fit (inf: it never can)."""
        worst: tuple[BudgetKind, float] | None = None
        for kind, b in self._refilled(now):
            wait = b.wait(1 if kind == "requests" else cost)
            if wait > 0 and (worst is None or wait > worst[1]):
                worst = (kind, wait)
        return worst

    def charge(self, cost: int, now: float) -> None:
        """Admit a request costing ``cost`` tokens."""
        for kind, b in self._refilled(now):
            b.level -= 1 if kind == "requests" else cost
        self.tokens_served += cost

    def rate_limit_headers(self, now: float) -> dict[str, str]:
        """What is left, in ``settings.rate_limit_headers``' form; nothing without budgets."""
        form = self.settings.rate_limit_headers
        headers: dict[str, str] = {}
        for kind, b in self._refilled(now):
            limit, remaining, reset = str(b.limit), str(max(0, math.floor(b.level))), b.reset()
            if form == "openai":
                headers[f"x-ratelimit-limit-{kind}"] = limit
                headers[f"x-ratelimit-remaining-{kind}"] = remaining
                headers[f"x-ratelimit-reset-{kind}"] = go_duration(reset)
            elif form == "anthropic":
                headers[f"anthropic-ratelimit-{kind}-limit"] = limit
                headers[f"anthropic-ratelimit-{kind}-remaining"] = remaining
                headers[f"anthropic-ratelimit-{kind}-reset"] = _rfc3339(time.time() + reset)
        return headers


_KINDS: tuple[BudgetKind, ...] = ("requests", "tokens")


def go_duration(seconds: float) -> str:
    """``seconds`` as Go prints a duration (OpenAI's ``x-ratelimit-reset-*`` are in this form), to the
    millisecond: ``0s``, ``120ms``, ``1s``, ``1m30.5s``, ``6m0s``, ``1h0m0s``."""
    ms = round(seconds * 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    text = f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text


def _rfc3339(wall: float) -> str:
    """A wall-clock time as Anthropic's resets are given, rounded up to the second (never early)."""
    when = datetime.datetime.fromtimestamp(math.ceil(wall), tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


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
                web.post("/v1/messages", self._messages),
                web.post("/v1/embeddings", self._embeddings),
                web.get("/v1/models", self._models),
                web.get("/admin/stats", self._stats),
                web.post("/admin/peak", self._set_peak),
                web.post("/admin/budget", self._set_budget),
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

    def set_budget(
        self,
        *,
        requests_per_minute: int | EllipsisType | None = ...,
        tokens_per_minute: int | EllipsisType | None = ...,
    ) -> None:
        """Change the budgets mid-run: None lifts a limit, one left out stays. A new budget starts
        full; a lower one caps what is left."""
        for name, limit in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if isinstance(limit, int) and limit < 1:
                raise ValueError(f"{name} must be at least 1 (or None for no limit), not {limit}")
        s = self._state
        with s.budget_lock:
            s.set_budget(s.clock(), requests_per_minute, tokens_per_minute)

    def records(self) -> list[Record]:
        return list(self._state.records)

    def stats(self) -> ServerStats:
        s = self._state
        counts = dict(s.by_status)  # a copy: the server's thread keeps counting
        refusals = {429, self.settings.refusal_status} | ({503} if self.settings.queueing else set())
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
            tokens_served=s.tokens_served,
            budget_refusals=s.budget_refusals,
            queued=len(s.queue.waiting),
        )

    # -- handlers ----------------------------------------------------------

    def _too_many(
        self,
        status: int = 429,
        *,
        wait: float | None = None,
        error: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """A refusal asking to wait ``wait`` (default: the fixed ``retry_after_seconds``)."""
        wait = self.settings.retry_after_seconds if wait is None else wait
        form = self.settings.retry_after_form
        headers = dict(headers or {})
        if form == "openai":
            headers |= {"retry-after-ms": str(round(wait * 1000)), "Retry-After": str(math.ceil(wait))}
        elif form == "seconds":
            headers["Retry-After"] = f"{wait:g}"
        elif form == "date":
            headers["Retry-After"] = email.utils.formatdate(time.time() + wait, usegmt=True)
        if error is None and status == 429:
            error = {"message": "Too many requests, retry later", "type": "rate_limit_error", "code": 429}
        elif error is None:
            error = {"message": "The server is overloaded, retry later", "type": "overloaded_error", "code": status}
        # "type": "error" as Anthropic's say; OpenAI's clients read only "error".
        return web.json_response({"type": "error", "error": error}, status=status, headers=headers)

    def _over_budget(self, kind: BudgetKind, wait: float, cost: int, now: float) -> web.Response:
        """A 429 from a budget, worded as OpenAI's, asking to wait until the request fits."""
        bucket = self._state.budgets[kind]
        what = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        requested = 1 if kind == "requests" else cost
        if math.isinf(wait):
            wait = 60.0  # it never fits; OpenAI errors, and a minute is as long as a budget remembers
            message = (
                f"Request too large on {what}: Limit {bucket.limit}, Requested {requested}. "
                "The input or output tokens must be reduced."
            )
        else:
            wait = math.ceil(wait * 1000) / 1000  # to the millisecond, rounded up: a retry then fits
            used = bucket.limit - max(0, math.floor(bucket.level))
            message = (
                f"Rate limit reached on {what}: Limit {bucket.limit}, Used {used}, Requested {requested}. "
                f"Please try again in {go_duration(wait)}."
            )
        error: dict[str, object] = {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}
        return self._too_many(429, wait=wait, error=error, headers=self._state.rate_limit_headers(now))

    async def _serve(
        self, request: web.Request, mean_seconds: float, prompt_tokens: int, most_completion: int, respond: Responder
    ) -> web.StreamResponse:
        s = self._state
        with s.budget_lock:  # no awaits inside: admission is one step
            arrived = s.clock()
            completion_tokens = s.completion_tokens(most_completion)
            cost = prompt_tokens + completion_tokens
            over = s.over_budget(cost, arrived)
            if over is not None:
                # The budgets stand in front of the servers, as a hosted API's gateway does: this
                # request neither reaches (nor warms) them nor counts toward their concurrency.
                s.budget_refusals += 1
                s.record(Record(arrived, arrived, request.path, s.in_service + 1, s.capacity(arrived), 429))
                return self._over_budget(*over, cost, arrived)
            concurrency, capacity = s.arrive(arrived)
            place: _Place | None = None
            if self.settings.queueing:
                placed = self._enqueue(request.path, arrived, capacity, cost, mean_seconds)
                if isinstance(placed, web.Response):
                    return placed
                place = placed
            else:
                refused: int | None = None
                if concurrency > capacity:
                    refused = self.settings.refusal_status
                elif self.settings.reject_rate and s.rng.random() < self.settings.reject_rate:
                    refused = 429
                if refused is not None:
                    s.record(Record(arrived, arrived, request.path, concurrency, capacity, refused))
                    return self._too_many(refused, headers=s.rate_limit_headers(arrived))
                s.charge(cost, arrived)
                headers = s.rate_limit_headers(arrived)
                s.in_service += 1
                status = 500 if s.rng.random() < self.settings.error_rate else 200
                seconds = mean_seconds * s.rng.uniform(0.8, 1.2)
        if place is not None:
            return await self._serve_queued(request, place, prompt_tokens, completion_tokens, respond)
        try:
            return await respond(request, _Turn(seconds, status == 500, prompt_tokens, completion_tokens, headers))
        finally:
            s.in_service -= 1
            s.last_activity = s.clock()
            s.record(Record(arrived, s.last_activity, request.path, concurrency, capacity, status, cost))

    # -- a queueing server -----------------------------------------------------

    def _enqueue(
        self, path: str, arrived: float, capacity: int, cost: int, mean_seconds: float
    ) -> _Place | web.Response:
        """Admit a request to the batch or its queue, or refuse it past the queue cap (under the budget lock)."""
        s = self._state
        self._admit(arrived)  # the batch may have grown
        concurrency = s.queue.in_batch + len(s.queue.waiting) + 1  # requests at the server, this one counted
        work = mean_seconds * s.rng.uniform(0.8, 1.2)
        waiter: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        joined = s.queue.arrive((waiter, work))
        if joined is None:
            s.record(Record(arrived, arrived, path, concurrency, capacity, 503))
            return self._too_many(503, headers=s.rate_limit_headers(arrived))
        if joined:
            self._join(waiter, work, arrived)
        s.charge(cost, arrived)
        status = 500 if s.rng.random() < self.settings.error_rate else 200
        return _Place(waiter, work, arrived, concurrency, capacity, cost, status, s.rate_limit_headers(arrived))

    async def _serve_queued(
        self, request: web.Request, place: _Place, prompt_tokens: int, completion_tokens: int, respond: Responder
    ) -> web.StreamResponse:
        s = self._state
        try:
            served = await place.waiter
        except asyncio.CancelledError:  # the caller hung up while it waited
            if place.waiter.done() and not place.waiter.cancelled():
                self._leave()  # it had just joined the batch
            else:
                s.queue.forget((place.waiter, place.work))
            raise
        started = s.clock()
        try:
            fail = place.status == 500
            turn = _Turn(served.seconds, fail, prompt_tokens, completion_tokens, place.headers, served.first_token)
            return await respond(request, turn)
        finally:
            self._leave()
            s.last_activity = s.clock()
            s.record(
                Record(
                    place.arrived,
                    s.last_activity,
                    request.path,
                    place.concurrency,
                    place.capacity,
                    place.status,
                    place.cost,
                    started - place.arrived,
                )
            )

    def _admit(self, now: float) -> None:
        """Move queued requests into the batch as far as it has room."""
        s = self._state
        s.queue.knee = s.capacity(now)
        while ready := s.queue.admit():
            for waiter, work in ready:
                self._join(waiter, work, now)

    def _join(self, waiter: asyncio.Future[Served], work: float, now: float) -> None:
        if waiter.cancelled():  # its caller hung up; its place goes to the next
            return
        self._state.in_service += 1
        waiter.set_result(self._state.queue.join(work, now))

    def _leave(self) -> None:
        s = self._state
        now = s.clock()
        s.in_service -= 1
        s.queue.in_batch -= 1
        self._admit(now)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        prompt = _chat_prompt_tokens(body.get("messages"))
        most = _most_completion_tokens(body, self.settings.completion_tokens)
        return await self._serve(request, self.settings.service_seconds, prompt, most, _chat_responder(body))

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        prompt = _chat_prompt_tokens([{"content": body.get("system")}, *_listed(body.get("messages"))])
        most = _most_completion_tokens(body, self.settings.completion_tokens)
        return await self._serve(request, self.settings.service_seconds, prompt, most, _messages_responder(body))

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        prompt = _input_tokens(body.get("input", ""))
        return await self._serve(request, self.settings.embedding_seconds, prompt, 0, _embedding_responder(body))

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

    async def _set_budget(self, request: web.Request) -> web.Response:
        body = await _json(request)
        changes: dict[str, int | None] = {}
        for name in ("requests_per_minute", "tokens_per_minute"):
            if name in body:
                limit = body[name]
                if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                    raise web.HTTPBadRequest(text=f'expected {{"{name}": <int >= 1, or null for no limit>}}')
                changes[name] = limit
        if not changes:
            raise web.HTTPBadRequest(text='expected {"requests_per_minute": N|null, "tokens_per_minute": N|null}')
        self.set_budget(**changes)
        return web.json_response(self._state.limits())


def _server_error(headers: dict[str, str]) -> web.Response:
    return web.json_response(
        {"error": {"message": "internal error", "type": "server_error"}}, status=500, headers=headers
    )


async def _json(request: web.Request) -> dict[str, object]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body is not a JSON object")
    return body


def _tokens(chars: int) -> int:
    return -(-chars // 4)  # OpenAI's rule of thumb: 4 characters a token, rounded up


def _chat_prompt_tokens(messages: object) -> int:
    """A chat prompt's tokens: of every message's ``content``, a string or text parts."""
    chars = 0
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return _tokens(chars)


def _listed(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _input_tokens(raw: object) -> int:
    """An embeddings ``input``'s tokens: strings by their length, token arrays as they are."""
    chars = given = 0
    for item in raw if isinstance(raw, list) else [raw]:
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, int):
            given += 1
        elif isinstance(item, list):
            given += len(item)
    return given + _tokens(chars)


def _most_completion_tokens(body: dict[str, object], default: int) -> int:
    """The longest answer a chat request allows: its ``max_completion_tokens`` (or older ``max_tokens``)."""
    for name in ("max_completion_tokens", "max_tokens"):
        most = body.get(name)
        if most is None:
            continue
        if not isinstance(most, int) or isinstance(most, bool) or most < 1:
            raise web.HTTPBadRequest(text=f"{name} must be an integer >= 1")
        return most
    return default


#: Every answer's words; a stream sends one an event.
WORDS = ["The", " server", " is", " warm", " now."]


def _sse(event: dict[str, object], named: bool) -> bytes:
    """One server-sent event; ``named``: with an ``event:`` line, as Anthropic's."""
    line = b"data: " + msgspec.json.encode(event) + b"\n\n"
    return f"event: {event['type']}\n".encode() + line if named else line


async def _stream(
    request: web.Request,
    turn: _Turn,
    before: list[dict[str, object]],
    words: list[dict[str, object]],
    after: list[dict[str, object]],
    *,
    done: bool = False,
    named: bool = False,
) -> web.StreamResponse:
    """A streamed answer: the ``before`` events at once, then the ``words``
    spread over the turn's time, then the ``after`` ones (and OpenAI's
    ``[DONE]``). A failing turn breaks off after two words."""
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", **turn.headers})
    await stream.prepare(request)
    for event in before:
        await stream.write(_sse(event, named))
    first = turn.seconds / len(words) if turn.first_token is None else turn.first_token
    rest = (turn.seconds - first) / max(1, len(words) - 1)
    for i, event in enumerate(words):
        await asyncio.sleep(first if i == 0 else rest)
        if turn.fail and i == 2:
            assert request.transport is not None
            request.transport.close()  # the status line said 200; the body just stops
            return stream
        await stream.write(_sse(event, named))
    for event in after:
        await stream.write(_sse(event, named))
    if done:
        await stream.write(b"data: [DONE]\n\n")
    await stream.write_eof()
    return stream


def _chat_responder(body: dict[str, object]) -> Responder:
    model = str(body.get("model", "cold-model"))
    created = int(time.time())
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True

    async def respond(request: web.Request, turn: _Turn) -> web.StreamResponse:
        # The usage says the length charged at admission; the text itself may be shorter.
        usage = {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "total_tokens": turn.prompt_tokens + turn.completion_tokens,
        }
        if not body.get("stream"):
            await asyncio.sleep(turn.seconds)
            if turn.fail:
                return _server_error(turn.headers)
            message = {"role": "assistant", "content": "".join(WORDS)}
            return web.json_response(
                {
                    "id": "chatcmpl-cold",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                },
                headers=turn.headers,
            )
        head = {"id": "chatcmpl-cold", "object": "chat.completion.chunk", "created": created, "model": model}
        chunks = []
        for word in WORDS:
            chunk = {**head, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            if include_usage:
                chunk["usage"] = None  # as OpenAI's: every chunk has the field, only the last fills it
            chunks.append(chunk)
        # As OpenAI's: a last chunk says why the answer ended (clients such as LiteLLM insist).
        end: dict[str, object] = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        if include_usage:
            end["usage"] = None
        after = [end, {**head, "choices": [], "usage": usage}] if include_usage else [end]
        return await _stream(request, turn, [], chunks, after, done=True)

    return respond


def _messages_responder(body: dict[str, object]) -> Responder:
    """Anthropic's Messages API: a message, or its stream of events."""
    model = str(body.get("model", "cold-model"))

    async def respond(request: web.Request, turn: _Turn) -> web.StreamResponse:
        usage = {"input_tokens": turn.prompt_tokens, "output_tokens": turn.completion_tokens}
        message: dict[str, object] = {
            "id": "msg_cold",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(WORDS)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            await asyncio.sleep(turn.seconds)
            if turn.fail:
                return _server_error(turn.headers)
            return web.json_response(message, headers=turn.headers)
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        before: list[dict[str, object]] = [
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ]
        words: list[dict[str, object]] = [
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}} for word in WORDS
        ]
        after: list[dict[str, object]] = [
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": turn.completion_tokens},
            },
            {"type": "message_stop"},
        ]
        return await _stream(request, turn, before, words, after, named=True)

    return respond


def _embedding_responder(body: dict[str, object]) -> Responder:
    model = str(body.get("model", "cold-model"))
    raw = body.get("input", "")
    inputs = raw if isinstance(raw, list) else [raw]

    async def respond(request: web.Request, turn: _Turn) -> web.StreamResponse:
        await asyncio.sleep(turn.seconds)
        if turn.fail:
            return _server_error(turn.headers)
        data = [
            {"object": "embedding", "index": i, "embedding": [round(math.sin(i + k), 6) for k in range(8)]}
            for i in range(len(inputs))
        ]
        usage = {"prompt_tokens": turn.prompt_tokens, "total_tokens": turn.prompt_tokens}
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage}, headers=turn.headers)

    return respond
