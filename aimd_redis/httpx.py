"""httpx transports that take a fleet-wide slot for every request.

    client = httpx.Client(transport=AimdTransport(throttle))
    openai.OpenAI(http_client=client)

Each request is routed to a (provider, model, domain); the transport acquires
a slot, sends the request through the wrapped transport and reports the
outcome when the response is closed, so a streamed response holds its slot
until the caller is done with it. A 429 reports ``rate_limited`` with the
server's ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); a
5xx or a transport error reports ``failure``; anything else ``success``.
Servers that say "overloaded" otherwise (503, Anthropic's 529) can be
counted as rate-limited too (``rate_limited_statuses``). The transports
never retry a refused request themselves.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from typing import NamedTuple

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"aimd_redis.httpx needs httpx ({exc}): pip install 'aimd-redis[httpx]'") from None

from aimd_redis._async.throttle import AsyncLease, AsyncThrottle
from aimd_redis._sync.throttle import Lease, Throttle
from aimd_redis.errors import InvalidArgumentError

logger = logging.getLogger("aimd_redis")


class Target(NamedTuple):
    provider_name: str
    model_id: str
    domain: str


Router = Callable[[httpx.Request], Target | None]

#: Path endings of OpenAI-compatible APIs and the domain each belongs to.
OPENAI_DOMAINS = {
    "/chat/completions": "chat",
    "/completions": "chat",
    "/responses": "chat",
    "/embeddings": "embedding",
    "/images/generations": "image",
    "/images/edits": "image",
    "/images/variations": "image",
}


def openai_router(provider_name: str | None = None) -> Router:
    """Route OpenAI-style requests: the model from the JSON body, the domain
    from the path, the provider as given (default: the request's host).
    Requests without a model (listing models, health checks) pass unthrottled."""

    def route(request: httpx.Request) -> Target | None:
        domain = next((d for end, d in OPENAI_DOMAINS.items() if request.url.path.endswith(end)), None)
        if domain is None or request.method != "POST":
            return None
        try:
            model = json.loads(request.content).get("model")
        except (ValueError, AttributeError, httpx.RequestNotRead):
            return None
        if not isinstance(model, str) or not model:
            return None
        return Target(provider_name or request.url.host, model, domain)

    return route


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """The server's requested wait: ``retry-after-ms``, else ``Retry-After``
    as seconds or as an HTTP date; None when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
            if math.isfinite(value):
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return when.timestamp() - (time.time() if now is None else now)


#: Statuses reported as rate-limited unless a transport is told otherwise.
RATE_LIMITED_STATUSES = frozenset({429})


def _rate_limited_statuses(statuses: Collection[int]) -> frozenset[int]:
    found = frozenset(statuses)
    bad = sorted(repr(v) for v in found if isinstance(v, bool) or not isinstance(v, int) or not 400 <= v <= 599)
    if bad or not found:
        raise InvalidArgumentError(
            f"rate_limited_statuses must be HTTP error statuses (400-599), not {', '.join(bad) or 'none'}"
        )
    return found


def _outcome(status_code: int, rate_limited: frozenset[int]) -> str:
    if status_code in rate_limited:
        return "rate_limited"
    if status_code >= 500:
        return "failure"
    return "success"


class _ReportingStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, report: Callable[[bool], None]) -> None:
        self._inner = inner
        self._report = report
        self._broken = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except Exception:  # the body broke off; a caller who stops reading early is no failure
            self._broken = True
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._report(self._broken)


class _AsyncReportingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, report: Callable[[bool], Awaitable[None]]) -> None:
        self._inner = inner
        self._report = report
        self._broken = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except Exception:  # the body broke off; a caller who stops reading early is no failure
            self._broken = True
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._report(self._broken)


class AimdTransport(httpx.BaseTransport):
    """Sync transport: one slot of ``throttle`` per routed request.

    ``rate_limited_statuses`` are the statuses reported as rate-limited
    (default 429 alone; add 503 or 529 for servers that answer those when
    overloaded); other 5xx are failures."""

    def __init__(
        self,
        throttle: Throttle,
        transport: httpx.BaseTransport | None = None,
        *,
        router: Router | None = None,
        acquire_timeout: float | None = None,
        rate_limited_statuses: Collection[int] = RATE_LIMITED_STATUSES,
    ) -> None:
        self._throttle = throttle
        self._rate_limited = _rate_limited_statuses(rate_limited_statuses)
        self._inner = transport if transport is not None else httpx.HTTPTransport()
        self._route = router if router is not None else openai_router()
        self._timeout = acquire_timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = self._route(request)
        if target is None:
            return self._inner.handle_request(request)
        lease = self._throttle.acquire(**target._asdict(), timeout=self._timeout)
        try:
            response = self._inner.handle_request(request)
        except BaseException:
            lease.failure()
            raise
        outcome, wait = _outcome(response.status_code, self._rate_limited), retry_after_seconds(response.headers)

        def report(broken: bool) -> None:
            _report(lease, "failure" if broken else outcome, wait)

        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_ReportingStream(response.stream, report),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


class AsyncAimdTransport(httpx.AsyncBaseTransport):
    """Asyncio transport: one slot of ``throttle`` per routed request."""

    def __init__(
        self,
        throttle: AsyncThrottle,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        router: Router | None = None,
        acquire_timeout: float | None = None,
        rate_limited_statuses: Collection[int] = RATE_LIMITED_STATUSES,
    ) -> None:
        self._throttle = throttle
        self._rate_limited = _rate_limited_statuses(rate_limited_statuses)
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._route = router if router is not None else openai_router()
        self._timeout = acquire_timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self._route(request)
        if target is None:
            return await self._inner.handle_async_request(request)
        lease = await self._throttle.acquire(**target._asdict(), timeout=self._timeout)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            await lease.failure()
            raise
        outcome, wait = _outcome(response.status_code, self._rate_limited), retry_after_seconds(response.headers)

        async def report(broken: bool) -> None:
            await _areport(lease, "failure" if broken else outcome, wait)

        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_AsyncReportingStream(response.stream, report),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def _report(lease: Lease, outcome: str, wait: float | None) -> None:
    if outcome == "rate_limited":
        lease.rate_limited(retry_after=wait)
    elif outcome == "failure":
        lease.failure()
    else:
        lease.success()


async def _areport(lease: AsyncLease, outcome: str, wait: float | None) -> None:
    if outcome == "rate_limited":
        await lease.rate_limited(retry_after=wait)
    elif outcome == "failure":
        await lease.failure()
    else:
        await lease.success()
