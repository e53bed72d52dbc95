"""httpx2 transports that take a fleet-wide slot for every request: the
current OpenAI (3.x) and Anthropic (2.x) SDKs are built on httpx2 and take
only an ``httpx2.Client``.

    client = httpx2.Client(transport=AimdTransport(throttle, router=anthropic_router()))
    anthropic.Anthropic(http_client=client)

The same transports, routers and behaviour as ``aimd_redis.httpx`` (one
implementation serves both; see docs/httpx.md).
"""

from __future__ import annotations

try:
    import httpx2
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"aimd_redis.httpx2 needs httpx2 ({exc}): pip install 'aimd-redis[httpx2]'") from None

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
Router = Callable[[httpx2.Request], Target | None]


class AimdTransport(AimdTransportBase[httpx2.Request, httpx2.Response], httpx2.BaseTransport):
    __doc__ = AimdTransportBase.__doc__
    _library: ClassVar[ModuleType] = httpx2


class AsyncAimdTransport(AsyncAimdTransportBase[httpx2.Request, httpx2.Response], httpx2.AsyncBaseTransport):
    __doc__ = AsyncAimdTransportBase.__doc__
    _library: ClassVar[ModuleType] = httpx2


__all__ = [*_shared, "AimdTransport", "AsyncAimdTransport", "Router"]
