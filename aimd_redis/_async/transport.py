"""HTTP transports that take a fleet-wide slot for every routed request
(see aimd_redis/httpx.py), written once for httpx and httpx2: the two share
every name used here, and each public module binds this to its own library
(``_library``). aimd_redis/_sync/transport.py is generated from
this file by tools/unasync.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from types import ModuleType
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from aimd_redis._async.retry import report_outcome
from aimd_redis._async.throttle import AsyncThrottle
from aimd_redis._http import (
    RATE_LIMITED_STATUSES,
    LibraryCodecs,
    RequestLike,
    Target,
    UsageReader,
    check_throttle,
    openai_router,
    outcome_of,
    share_for,
    share_of,
)
from aimd_redis._http import rate_limited_statuses as rate_limited_statuses_of
from aimd_redis._provider import estimate_tokens


class ResponseLike(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def stream(self) -> Any: ...
    @property
    def extensions(self) -> Any: ...


RequestT = TypeVar("RequestT", bound=RequestLike)
ResponseT = TypeVar("ResponseT", bound=ResponseLike)
RequestIn = TypeVar("RequestIn", bound=RequestLike, contravariant=True)
ResponseOut = TypeVar("ResponseOut", bound=ResponseLike, covariant=True)


class AsyncSender(Protocol[RequestIn, ResponseOut]):
    """A transport of the bound library, to send what the router let through."""

    async def handle_async_request(self, request: RequestIn) -> ResponseOut: ...
    async def aclose(self) -> None: ...


class AsyncReportingStream:
    """A response body that reports the lease's outcome, the tokens its
    usage says were used and when its first byte came (``time.monotonic``),
    when it is closed. Made a byte stream of each library by ``_binding``."""

    def __init__(
        self, inner: Any, usage: UsageReader, report: Callable[[bool, int | None, float | None], Awaitable[None]]
    ) -> None:
        self._inner = inner
        self._usage = usage
        self._report = report
        self._broken = False
        self._first: float | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                if self._first is None and chunk:
                    self._first = time.monotonic()
                self._usage.feed(chunk)
                yield chunk
        except Exception:  # the body broke off; a caller who stops reading early is no failure
            self._broken = True
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._report(self._broken, self._usage.tokens, self._first)


_bound: dict[str, tuple[type[AsyncReportingStream], LibraryCodecs]] = {}


def _binding(library: ModuleType) -> tuple[type[AsyncReportingStream], LibraryCodecs]:
    """The reporting stream as a byte stream of ``library`` (its clients
    insist on their own), and its decoders; made once."""
    if library.__name__ not in _bound:
        stream = type("AsyncReportingStream", (AsyncReportingStream, library.AsyncByteStream), {})
        _bound[library.__name__] = (stream, LibraryCodecs(library))
    return _bound[library.__name__]


class AsyncAimdTransportBase(Generic[RequestT, ResponseT]):
    """One slot of ``throttle`` per routed request, held until the response
    is closed.

    ``router`` says which (provider, model, domain) a request belongs to
    (default: ``openai_router()``); a request it does not route passes
    without a slot.

    ``group`` and ``weight`` are the group its requests wait in while the
    domain is full, and the group's weight (see ``AsyncThrottle.acquire``);
    a router that sets a group or weight overrides them, and so does a
    request's ``aimd_group`` / ``aimd_weight`` extension.

    ``rate_limited_statuses`` are the statuses reported as rate-limited
    (default 429 alone; add 503 or 529 for servers that answer those when
    overloaded); other 5xx are failures.

    Each request reserves ``estimate(body)`` tokens of the model's budget
    (by default: its prompt, about four characters a token, plus its
    ``max_tokens``); the response's ``usage`` settles what it really used. A
    response that says no usage (a stream without
    ``stream_options.include_usage``, a body not read to the end) keeps the
    estimate as used. Every response's rate-limit headers teach the fleet the
    provider's budget and what is left of it. A streamed answer
    (``text/event-stream``) also reports the time to its first byte, which
    ``policy="latency"`` reads as the server's queueing.

    The transport never retries: a rate-limited response reaches the caller,
    already reported, so that a retry (the same call again, as the SDKs' own
    retries make it) waits out the shared cooldown in its acquire."""

    #: The library this transport is a transport of (httpx or httpx2).
    _library: ClassVar[ModuleType]

    def __init__(
        self,
        throttle: AsyncThrottle,
        transport: AsyncSender[RequestT, ResponseT] | None = None,
        *,
        router: Callable[[RequestT], Target | None] | None = None,
        acquire_timeout: float | None = None,
        rate_limited_statuses: Collection[int] = RATE_LIMITED_STATUSES,
        estimate: Callable[[bytes], int] = estimate_tokens,
        group: str | None = None,
        weight: float = 1.0,
    ) -> None:
        check_throttle(type(self).__name__, throttle, AsyncThrottle)
        self._share = share_of(group, weight)
        self._throttle = throttle
        self._rate_limited = rate_limited_statuses_of(rate_limited_statuses)
        self._inner: AsyncSender[RequestT, ResponseT] = (
            transport if transport is not None else self._library.AsyncHTTPTransport()
        )
        self._route = router if router is not None else openai_router()
        self._timeout = acquire_timeout
        self._estimate = estimate

    async def handle_async_request(self, request: RequestT) -> ResponseT:
        target = self._route(request)
        if target is None:
            return await self._inner.handle_async_request(request)
        group, weight = share_for(target, self._share, getattr(request, "extensions", None))
        tokens = self._estimate(request.content)
        lease = await self._throttle.acquire(
            provider_name=target.provider_name,
            model_id=target.model_id,
            domain=target.domain,
            tokens=tokens,
            timeout=self._timeout,
            group=group,
            weight=weight,
        )
        sent = time.monotonic()
        try:
            response = await self._inner.handle_async_request(request)
        except (self._library.ConnectError, self._library.ConnectTimeout):
            # Never sent: the slot and its budget go back as if never taken.
            await self._throttle._release(lease, "abandon", None, None)
            raise
        except BaseException:
            await lease.failure()
            raise
        outcome, headers = outcome_of(response.status_code, self._rate_limited), response.headers
        streamed = "text/event-stream" in headers.get("content-type", "")

        async def report(broken: bool, used: int | None, first: float | None) -> None:
            ttfb = first - sent if streamed and first is not None else None
            await report_outcome(lease, outcome, headers, broken=broken, used=used, ttfb=ttfb)

        stream, codecs = _binding(self._library)
        assert isinstance(response.stream, self._library.AsyncByteStream)
        return cast(
            ResponseT,
            self._library.Response(
                response.status_code,
                headers=headers,
                stream=stream(response.stream, UsageReader(headers, codecs), report),
                extensions=response.extensions,
            ),
        )

    async def aclose(self) -> None:
        await self._inner.aclose()
