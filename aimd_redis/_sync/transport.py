"""httpx transports that take a fleet-wide slot for every routed request
(see aimd_redis/httpx.py). Generated from aimd_redis/_async/transport.py
by tools/unasync.py: edit that file, not this one.
"""

from __future__ import annotations

from collections.abc import Iterator, Callable, Collection

import httpx

from aimd_redis._sync.throttle import Throttle
from aimd_redis._http import (
    RATE_LIMITED_STATUSES,
    Router,
    UsageReader,
    openai_router,
    outcome_of,
    retry_after_seconds,
)
from aimd_redis._http import rate_limited_statuses as rate_limited_statuses_of
from aimd_redis._provider import estimate_tokens


class ReportingStream(httpx.SyncByteStream):
    """A response body that reports the lease's outcome, and the tokens its
    usage says were used, when it is closed."""

    def __init__(
        self, inner: httpx.SyncByteStream, usage: UsageReader, report: Callable[[bool, int | None], None]
    ) -> None:
        self._inner = inner
        self._usage = usage
        self._report = report
        self._broken = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                self._usage.feed(chunk)
                yield chunk
        except Exception:  # the body broke off; a caller who stops reading early is no failure
            self._broken = True
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._report(self._broken, self._usage.tokens)


class AimdTransport(httpx.BaseTransport):
    """One slot of ``throttle`` per routed request, held until the response
    is closed.

    ``rate_limited_statuses`` are the statuses reported as rate-limited
    (default 429 alone; add 503 or 529 for servers that answer those when
    overloaded); other 5xx are failures.

    Each request reserves ``estimate(body)`` tokens of the model's budget
    (by default: its prompt, about four characters a token, plus its
    ``max_tokens``); the response's ``usage`` settles what it really used. A
    response that says no usage (a stream without
    ``stream_options.include_usage``, a body not read to the end) keeps the
    estimate as used. Every response's rate-limit headers teach the fleet the
    provider's budget and what is left of it."""

    def __init__(
        self,
        throttle: Throttle,
        transport: httpx.BaseTransport | None = None,
        *,
        router: Router | None = None,
        acquire_timeout: float | None = None,
        rate_limited_statuses: Collection[int] = RATE_LIMITED_STATUSES,
        estimate: Callable[[bytes], int] = estimate_tokens,
    ) -> None:
        self._throttle = throttle
        self._rate_limited = rate_limited_statuses_of(rate_limited_statuses)
        self._inner = transport if transport is not None else httpx.HTTPTransport()
        self._route = router if router is not None else openai_router()
        self._timeout = acquire_timeout
        self._estimate = estimate

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = self._route(request)
        if target is None:
            return self._inner.handle_request(request)
        tokens = self._estimate(request.content)
        lease = self._throttle.acquire(**target._asdict(), tokens=tokens, timeout=self._timeout)
        try:
            response = self._inner.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            # Never sent: the slot and its budget go back as if never taken.
            self._throttle._release(lease, "abandon", None, None)
            raise
        except BaseException:
            lease.failure()
            raise
        outcome, wait = outcome_of(response.status_code, self._rate_limited), retry_after_seconds(response.headers)
        headers = response.headers

        def report(broken: bool, used: int | None) -> None:
            if broken or outcome == "failure":
                lease.failure(headers=headers)
            elif outcome == "rate_limited":
                lease.rate_limited(retry_after=wait, headers=headers)
            else:
                lease.success(tokens=used, headers=headers)

        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=headers,
            stream=ReportingStream(response.stream, UsageReader(headers), report),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()
