"""What the HTTP transports share, sync or asyncio, httpx or httpx2: routing
a request to a (provider, model, domain) and a group, reading the server's
Retry-After and the usage a response reports, and judging a response's
outcome. Imports neither library: each public module (``aimd_redis.httpx``,
``aimd_redis.httpx2``) binds this to its own."""

from __future__ import annotations

import email.utils
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from importlib import import_module
from types import ModuleType
from typing import NamedTuple, Protocol

from aimd_redis._provider import StreamUsage, usage_tokens
from aimd_redis.errors import ArgumentTypeError, InvalidArgumentError
from aimd_redis.keys import check_group, check_weight

logger = logging.getLogger("aimd_redis")


class Target(NamedTuple):
    """Where a request goes, and the group it waits in (``group`` and
    ``weight`` both None: the transport's or integration's own)."""

    provider_name: str
    model_id: str
    domain: str
    group: str | None = None
    weight: float | None = None


class Share(NamedTuple):
    """A request's group (None: the default group) and its weight, checked."""

    group: str | None = None
    weight: float = 1.0


def share_of(group: object, weight: object) -> Share:
    """``group`` and ``weight`` checked (ArgumentTypeError, InvalidArgumentError)."""
    return Share(check_group(group), check_weight(weight))


#: Request extensions that put one request of a transport in a group of its
#: own: ``client.post(..., extensions={"aimd_group": "interactive"})``.
GROUP_EXTENSION = "aimd_group"
WEIGHT_EXTENSION = "aimd_weight"


def share_for(target: Target, fallback: Share, extensions: object = None) -> Share:
    """The group and weight a routed request waits with: its request
    extensions' if it has them, else its target's if the router set them,
    else ``fallback``. A group set without a weight has weight 1."""
    if isinstance(extensions, Mapping) and (GROUP_EXTENSION in extensions or WEIGHT_EXTENSION in extensions):
        return share_of(extensions.get(GROUP_EXTENSION), extensions.get(WEIGHT_EXTENSION, 1.0))
    if target.group is not None or target.weight is not None:
        return share_of(target.group, 1.0 if target.weight is None else target.weight)
    return fallback


class URLLike(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def path(self) -> str: ...


class RequestLike(Protocol):
    """What a router reads of a request: an ``httpx.Request`` or an ``httpx2.Request``."""

    @property
    def method(self) -> str: ...
    @property
    def url(self) -> URLLike: ...
    @property
    def content(self) -> bytes: ...


Route = Callable[[RequestLike], Target | None]

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

#: Path endings of Anthropic's API and the domain each belongs to: the
#: Messages API is its one generating endpoint (``/v1/complete``, its
#: predecessor, too).
ANTHROPIC_DOMAINS = {
    "/v1/messages": "chat",
    "/v1/complete": "chat",
}

#: Anthropic endpoints that take a model but no slot, on purpose: token
#: counting and message batches have limits of their own, apart from the
#: Messages API's, and generate nothing while the caller waits.
ANTHROPIC_UNTHROTTLED = ("/v1/messages/count_tokens", "/v1/messages/batches")


class _PassLog:
    """Says once per route (method and path) that a router let a request
    through without a slot; remembers at most ``MOST`` routes (paths with ids
    in them would grow it without end), then says it stops telling."""

    MOST = 256

    def __init__(self, router: str) -> None:
        self._router = router
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def passed(self, request: RequestLike, why: str, level: int | None = None) -> None:
        route = (request.method, request.url.path)
        with self._lock:
            if route in self._seen or len(self._seen) >= self.MOST:
                return
            self._seen.add(route)
            full = len(self._seen) == self.MOST
        # A POST is likely work the router does not know; anything else, a lookup.
        if level is None:
            level = logging.WARNING if request.method == "POST" else logging.INFO
        logger.log(level, "%s: %s %s passes without a slot (%s)", self._router, *route, why)
        if full:
            logger.warning("%s: %d routes passed without a slot; not naming further ones", self._router, self.MOST)


def _model(request: RequestLike) -> str | None:
    """The ``model`` of a JSON body; None without one (or a body not yet read:
    a streamed upload, which no LLM SDK sends)."""
    try:
        model = json.loads(request.content).get("model")
    except (ValueError, AttributeError, RuntimeError):  # RuntimeError: httpx's RequestNotRead
        return None
    return model if isinstance(model, str) and model else None


def _router(
    name: str,
    provider_name: str | None,
    domains: Mapping[str, str],
    unthrottled: tuple[str, ...],
    group: str | None,
    weight: float | None,
) -> Route:
    log = _PassLog(name)
    if group is not None or weight is not None:
        group, weight = share_of(group, 1.0 if weight is None else weight)

    def route(request: RequestLike) -> Target | None:
        path = request.url.path
        if any(path.endswith(end) or f"{end}/" in path for end in unthrottled):
            log.passed(request, "it has limits of its own", logging.INFO)
            return None
        domain = next((d for end, d in domains.items() if path.endswith(end)), None)
        if domain is None or request.method != "POST":
            log.passed(request, "no domain for it")
            return None
        model = _model(request)
        if model is None:
            log.passed(request, "its body names no model")
            return None
        return Target(provider_name or request.url.host, model, domain, group, weight)

    return route


def openai_router(provider_name: str | None = None, *, group: str | None = None, weight: float | None = None) -> Route:
    """Route OpenAI-style requests: the model from the JSON body, the domain
    from the path (``OPENAI_DOMAINS``), the provider as given (default: the
    request's host). Other requests (listing models, health checks, files)
    pass without a slot, and each route that does is logged once.
    ``group`` and ``weight``, when given, replace the transport's."""
    return _router("openai_router", provider_name, OPENAI_DOMAINS, (), group, weight)


def anthropic_router(
    provider_name: str | None = None, *, group: str | None = None, weight: float | None = None
) -> Route:
    """Route Anthropic requests: ``POST /v1/messages`` (and the legacy
    ``/v1/complete``) to ``chat`` with the model from the JSON body, the
    provider as given (default: the request's host). Token counting and
    message batches (``ANTHROPIC_UNTHROTTLED``) pass without a slot, as does
    anything else; each route that does is logged once. ``group`` and
    ``weight``, when given, replace the transport's."""
    return _router("anthropic_router", provider_name, ANTHROPIC_DOMAINS, ANTHROPIC_UNTHROTTLED, group, weight)


def check_throttle(what: str, throttle: object, needed: type) -> None:
    """Refuse, before any request, a throttle of the other kind (sync for
    asyncio or the reverse): it would fail at the first request, or worse,
    after taking a slot."""
    if not isinstance(throttle, needed):
        raise ArgumentTypeError(
            f"{what} needs {_a(needed.__name__)}, not {_a(type(throttle).__name__)}: a Throttle goes with "
            "AimdTransport and with_retries, an AsyncThrottle with AsyncAimdTransport and async_with_retries"
        )


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header in any letter case: httpx's headers, and requests', are
    case-insensitive already; a plain dict is not."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The server's requested wait: ``retry-after-ms``, else ``Retry-After``
    as seconds or as an HTTP date; None when absent or unreadable. Reads any
    response's headers (httpx, httpx2, requests, aiohttp, a dict)."""
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
            if math.isfinite(value):
                return value
        except ValueError:
            pass
    raw = _header(headers, "retry-after")
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


class LibraryCodecs:
    """How httpx or httpx2 undoes a body's content encoding: the decoders it
    has (what it asks servers for) and the error they raise. httpx's decoders
    return bytes, httpx2's an iterator of them."""

    def __init__(self, library: ModuleType) -> None:
        self._decoders = import_module(f"{library.__name__}._decoders").SUPPORTED_DECODERS
        self.error: type[Exception] = library.DecodingError

    def decoder(self, encoding: str) -> Callable[[bytes], bytes] | None:
        kind = self._decoders.get(encoding)
        if kind is None:
            return None
        decode = kind().decode

        def joined(data: bytes) -> bytes:
            out = decode(data)
            return out if isinstance(out, bytes) else b"".join(out)

        return joined


class UsageReader:
    """The tokens a response body says its request used, read as the body
    streams past the caller: the ``usage`` of a JSON answer, or of a stream's
    events. None when it says nothing, or is too big, or is encoded in a way
    httpx cannot undo here (it undoes what it asked for: gzip and deflate,
    and br or zstd when their packages are installed)."""

    #: A JSON answer longer than this is not kept to be read.
    MAX_BODY = 8 * 1024 * 1024

    def __init__(self, headers: Mapping[str, str], codecs: LibraryCodecs) -> None:
        self._events = StreamUsage() if "text/event-stream" in headers.get("content-type", "") else None
        encoding = headers.get("content-encoding", "").strip().lower() or "identity"
        self._decode = codecs.decoder(encoding)
        self._error = codecs.error
        self._unreadable = self._decode is None
        self._body = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._unreadable or self._decode is None:
            return
        try:
            chunk = self._decode(chunk)
        except self._error:
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
