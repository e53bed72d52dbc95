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

Each request also reserves its estimated tokens of the model's budget
(``estimate``, by default :func:`estimate_tokens`; for an exact count,
``estimate=functools.partial(estimate_tokens, count=tiktoken_counter())``);
the answer's ``usage`` settles them, and its rate-limit headers teach the
fleet the provider's budget.
"""

from __future__ import annotations

try:
    import httpx  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(f"aimd_redis.httpx needs httpx ({exc}): pip install 'aimd-redis[httpx]'") from None

from aimd_redis._async.transport import AsyncAimdTransport
from aimd_redis._http import OPENAI_DOMAINS, RATE_LIMITED_STATUSES, Router, Target, openai_router, retry_after_seconds
from aimd_redis._provider import estimate_tokens, tiktoken_counter
from aimd_redis._sync.transport import AimdTransport

__all__ = [
    "OPENAI_DOMAINS",
    "RATE_LIMITED_STATUSES",
    "AimdTransport",
    "AsyncAimdTransport",
    "Router",
    "Target",
    "estimate_tokens",
    "openai_router",
    "retry_after_seconds",
    "tiktoken_counter",
]
