"""httpx transports that take a fleet-wide slot for every request
(``aimd_redis.httpx2`` has the same for httpx2, which the current OpenAI and
Anthropic SDKs are built on; see docs/httpx.md).

    client = httpx.Client(transport=AimdTransport(throttle))

Each request is routed to a (provider, model, domain); the transport acquires
a slot, sends the request through the wrapped transport and reports the
outcome when the response is closed, so a streamed response holds its slot
until the caller is done with it. A 429 reports ``rate_limited`` with the
server's ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); a
5xx or a transport error reports ``failure``; anything else ``success``.
Servers that say "overloaded" otherwise (503, Anthropic's 529) can be
counted as rate-limited too (``rate_limited_statuses``). The transports
never retry a refused request themselves.

Each request also reserves its estimated tokens of the model's budget
(``estimate``, by default :func:`estimate_tokens`; for an exact count,
``estimate=functools.partial(estimate_tokens, count=tiktoken_counter())``);
the answer's ``usage`` settles them, and its rate-limit headers teach the
fleet the provider's budget.
"""

from __future__ import annotations

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"aimd_redis.httpx needs httpx ({exc}): pip install 'aimd-redis[httpx]'") from None

from collections.abc import Callable
from types import ModuleType
from typing import ClassVar

from aimd_redis._async.transport import AsyncAimdTransportBase
from aimd_redis._http_public import *  # noqa: F403 (the names both modules offer)
from aimd_redis._http_public import Target
from aimd_redis._http_public import __all__ as _shared
from aimd_redis._sync.transport import AimdTransportBase

#: What a router is: a request in, its (provider, model, domain) out, or None
#: to let it pass without a slot.
Router = Callable[[httpx.Request], Target | None]


class AimdTransport(AimdTransportBase[httpx.Request, httpx.Response], httpx.BaseTransport):
    __doc__ = AimdTransportBase.__doc__
    _library: ClassVar[ModuleType] = httpx


class AsyncAimdTransport(AsyncAimdTransportBase[httpx.Request, httpx.Response], httpx.AsyncBaseTransport):
    __doc__ = AsyncAimdTransportBase.__doc__
    _library: ClassVar[ModuleType] = httpx


__all__ = [*_shared, "AimdTransport", "AsyncAimdTransport", "Router"]
