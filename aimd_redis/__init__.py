"""One adaptive concurrency limit per upstream API, shared by a fleet through Redis."""

from importlib.metadata import PackageNotFoundError, version

from aimd_redis._async.retry import with_retries as async_with_retries
from aimd_redis._async.throttle import AsyncLease, AsyncSlot, AsyncThrottle
from aimd_redis._http import retry_after_seconds
from aimd_redis._provider import Heard, estimate_tokens, read_rate_limit_headers, usage_tokens
from aimd_redis._sync.retry import with_retries
from aimd_redis._sync.throttle import Lease, Slot, Throttle
from aimd_redis.config import MAX_RETRY_AFTER_SECONDS, FailOpen, ThrottleConfig
from aimd_redis.errors import (
    AcquireTimeout,
    AimdRedisError,
    ArgumentTypeError,
    ConfigError,
    CorruptStateError,
    EventLoopBlockedError,
    InvalidArgumentError,
    NoSuchDomainError,
    NotRegisteredError,
    RedisAuthenticationError,
    RedisCommandError,
    RedisOutOfMemoryError,
    RedisPermissionError,
    RedisUnavailableError,
    RequestTooLargeError,
)
from aimd_redis.structs import Denied, DomainState, LimitEvent, ReleaseResult

try:  # pyproject.toml's version, as installed: the one place it is written
    __version__ = version("aimd-redis")
except PackageNotFoundError:  # a source tree used without installing it
    __version__ = "0+unknown"

__all__ = [
    "MAX_RETRY_AFTER_SECONDS",
    "AcquireTimeout",
    "AimdRedisError",
    "ArgumentTypeError",
    "AsyncLease",
    "AsyncSlot",
    "AsyncThrottle",
    "ConfigError",
    "CorruptStateError",
    "Denied",
    "DomainState",
    "EventLoopBlockedError",
    "FailOpen",
    "Heard",
    "InvalidArgumentError",
    "Lease",
    "LimitEvent",
    "NoSuchDomainError",
    "NotRegisteredError",
    "RedisAuthenticationError",
    "RedisCommandError",
    "RedisOutOfMemoryError",
    "RedisPermissionError",
    "RedisUnavailableError",
    "ReleaseResult",
    "RequestTooLargeError",
    "Slot",
    "Throttle",
    "ThrottleConfig",
    "__version__",
    "async_with_retries",
    "estimate_tokens",
    "read_rate_limit_headers",
    "retry_after_seconds",
    "usage_tokens",
    "with_retries",
]
