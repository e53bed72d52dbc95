"""The names ``aimd_redis.httpx`` and ``aimd_redis.httpx2`` both offer
besides their transports: what does not depend on the library."""

from aimd_redis._http import (
    ANTHROPIC_DOMAINS,
    ANTHROPIC_UNTHROTTLED,
    GROUP_EXTENSION,
    OPENAI_DOMAINS,
    RATE_LIMITED_STATUSES,
    WEIGHT_EXTENSION,
    Target,
    anthropic_router,
    openai_router,
    retry_after_seconds,
)
from aimd_redis._provider import estimate_tokens, tiktoken_counter

__all__ = [
    "ANTHROPIC_DOMAINS",
    "ANTHROPIC_UNTHROTTLED",
    "GROUP_EXTENSION",
    "OPENAI_DOMAINS",
    "RATE_LIMITED_STATUSES",
    "WEIGHT_EXTENSION",
    "Target",
    "anthropic_router",
    "estimate_tokens",
    "openai_router",
    "retry_after_seconds",
    "tiktoken_counter",
]
