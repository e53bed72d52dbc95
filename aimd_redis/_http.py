"""What the httpx transports share, sync or asyncio: routing a request to a
(provider, model, domain), reading the server's Retry-After and the usage a
response reports, and judging a response's outcome. Public through
``aimd_redis.httpx``."""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable, Collection
from typing import NamedTuple

import httpx
from httpx._decoders import SUPPORTED_DECODERS  # what this httpx asks for, and undoes

from aimd_redis._provider import StreamUsage, usage_tokens
from aimd_redis.errors import InvalidArgumentError


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


def rate_limited_statuses(statuses: Collection[int]) -> frozenset[int]:
    found = frozenset(statuses)
    bad = sorted(repr(v) for v in found if isinstance(v, bool) or not isinstance(v, int) or not 400 <= v <= 599)
    if bad or not found:
        raise InvalidArgumentError(
            f"rate_limited_statuses must be HTTP error statuses (400-599), not {', '.join(bad) or 'none'}"
        )
    return found


def outcome_of(status_code: int, rate_limited: frozenset[int]) -> str:
    if status_code in rate_limited:
        return "rate_limited"
    if status_code >= 500:
        return "failure"
    return "success"


class UsageReader:
    """The tokens a response body says its request used, read as the body
    streams past the caller: the ``usage`` of a JSON answer, or of a stream's
    events. None when it says nothing, or is too big, or is encoded in a way
    httpx cannot undo here (it undoes what it asked for: gzip and deflate,
    and br or zstd when their packages are installed)."""

    #: A JSON answer longer than this is not kept to be read.
    MAX_BODY = 8 * 1024 * 1024

    def __init__(self, headers: httpx.Headers) -> None:
        self._events = StreamUsage() if "text/event-stream" in headers.get("content-type", "") else None
        encoding = headers.get("content-encoding", "").strip().lower() or "identity"
        decoder = SUPPORTED_DECODERS.get(encoding)
        self._decode = None if decoder is None else decoder().decode
        self._unreadable = decoder is None
        self._body = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._unreadable or self._decode is None:
            return
        try:
            chunk = self._decode(chunk)
        except httpx.DecodingError:
            self._unreadable = True
            return
        if self._events is not None:
            self._events.feed(chunk)
        elif len(self._body) + len(chunk) > self.MAX_BODY:
            self._unreadable = True
            self._body.clear()
        else:
            self._body += chunk

    @property
    def tokens(self) -> int | None:
        if self._unreadable:
            return None
        if self._events is not None:
            return self._events.tokens
        return usage_tokens(bytes(self._body)) if self._body else None
