"""The library's exceptions, and the one place redis-py's are translated."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions


class AimdRedisError(Exception):
    """Base class of every error this library raises."""


class InvalidArgumentError(AimdRedisError, ValueError):
    """A bad name, number or setting, refused before anything reaches Redis."""


class ArgumentTypeError(AimdRedisError, TypeError):
    """An argument of the wrong type, refused before anything reaches Redis."""


class ConfigError(InvalidArgumentError):
    """A ThrottleConfig or FailOpen setting out of range; the message names it."""


class RequestTooLargeError(AimdRedisError, ValueError):
    """A request whose tokens exceed the model's whole budget per minute: it
    could never be granted, so it is refused at once instead of waiting."""


class EventLoopBlockedError(AimdRedisError, RuntimeError):
    """A sync ``Throttle`` called inside a running event loop: its waits
    would block the loop, and with it whatever was to free a slot, so it
    refuses at once. ``AsyncThrottle`` is the one for asyncio code."""


class NotRegisteredError(AimdRedisError, RuntimeError):
    """Acquire on a model no alias has registered."""


class AcquireTimeout(AimdRedisError, TimeoutError):
    """No slot became free before the acquire's timeout."""


class NoSuchDomainError(AimdRedisError, LookupError):
    """An operator command named a domain that does not exist in Redis."""


class CorruptStateError(AimdRedisError, ValueError):
    """A hash field in Redis holds a value the scripts cannot use."""


class RedisUnavailableError(AimdRedisError, ConnectionError):
    """Redis could not be reached, or did not answer in time."""


class RedisAuthenticationError(AimdRedisError, PermissionError):
    """Redis refused this client's credentials, or wanted some it was not
    given. Never an outage: a client configured to fail open does not."""


class RedisCommandError(AimdRedisError):
    """Redis refused a command (permissions, wrong type, scripting errors)."""


class RedisPermissionError(RedisCommandError, PermissionError):
    """The Redis user may not run a command, or touch a key or channel, that
    the library needs (``aimd-redis acl`` prints a rule that allows them)."""


class RedisOutOfMemoryError(RedisCommandError):
    """Redis is full (``maxmemory`` with a policy that evicts nothing) and
    refused a call as a whole: nothing of it was written. Not an outage: a
    client configured to fail open does not."""


#: What Redis says to a client without valid credentials (a command sent
#: before AUTH may also be cut off as a protocol error).
_AUTH_REFUSED = ("NOAUTH", "WRONGPASS", "unauthenticated", "invalid username-password", "Authentication required")


#: Refusals that leave nothing behind: the call never ran (credentials,
#: memory, permissions), or the script refused before its first write.
REFUSED_BEFORE_RUNNING = (
    NotRegisteredError,
    CorruptStateError,
    RedisAuthenticationError,
    RedisOutOfMemoryError,
    RedisPermissionError,
)


def _from_script(message: str) -> AimdRedisError | None:
    code, _, rest = message.partition(" ")
    if code == "AIMD_NOT_REGISTERED":
        return NotRegisteredError(
            f"no alias has registered this model ({rest} has no effective_max): call "
            "register(provider_name=..., model_id=..., alias=..., max_parallel_requests=...) "
            "before acquiring"
        )
    if code == "AIMD_NO_DOMAIN":
        return NoSuchDomainError(f"{rest} does not exist: nothing has acquired on this domain yet")
    if code == "AIMD_CORRUPT":
        return CorruptStateError(f"{rest}; fix or delete it with redis-cli (HSET/HDEL), the scripts will not guess")
    return None


def translate(exc: redis.exceptions.RedisError) -> AimdRedisError:
    """The library's exception for a redis-py one."""
    if isinstance(exc, redis.exceptions.AuthenticationError) or any(a in str(exc) for a in _AUTH_REFUSED):
        return RedisAuthenticationError(
            f"Redis refused this client's credentials ({exc}): give the user and password in the URL, "
            "redis://user:password@host:6379/0, or to the client you pass in"
        )
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return RedisUnavailableError(f"Redis is unreachable: {exc}")
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or str(exc).startswith("OOM "):
        return RedisOutOfMemoryError(
            f"Redis is out of memory and refused the call, writing nothing ({exc}): raise maxmemory, or free "
            "memory; the library's keys expire after idle_ttl_seconds"
        )
    if isinstance(exc, redis.exceptions.ResponseError):
        ours = _from_script(str(exc))
        if ours is not None:
            return ours
    # Inside a script, a refused command is a plain script error.
    refused = ("NOPERM", "can't run this command", "no permissions")
    if isinstance(exc, redis.exceptions.NoPermissionError) or any(r in str(exc) for r in refused):
        return RedisPermissionError(
            f"the Redis user lacks a permission the library needs ({exc}); "
            "`aimd-redis acl --namespace NAMESPACE` prints an ACL rule that grants exactly what it uses"
        )
    return RedisCommandError(f"Redis refused the command: {exc}")


def function_missing(exc: redis.exceptions.ResponseError) -> bool:
    """FCALL of a function Redis does not have: the library is to be loaded."""
    return "Function not found" in str(exc)


def flags_refused(exc: redis.exceptions.ResponseError) -> bool:
    """A script's flags line ('#!lua') that the server cannot compile (before Redis 7)."""
    return "near '#'" in str(exc)


def functions_refused(exc: redis.exceptions.ResponseError) -> bool:
    """Redis will not run function libraries for this client: a server
    before 7, or a user whose ACL allows EVALSHA but not FCALL or FUNCTION LOAD."""
    text = str(exc).lower()
    if "unknown command" in text:
        return True
    # Only the refusal of FCALL or FUNCTION themselves: one for a key, or for a
    # command inside a function, stands as it is.
    return isinstance(exc, redis.exceptions.NoPermissionError) and ("'fcall'" in text or "'function|" in text)


def one_line(exc: BaseException) -> str | None:
    """A Redis error as the library words it, in one line (for a log line);
    None for anything else, which deserves its traceback."""
    if isinstance(exc, redis.exceptions.RedisError):
        return str(translate(exc))
    if isinstance(exc, AimdRedisError):
        return str(exc)
    return None


@contextmanager
def redis_boundary() -> Iterator[None]:
    """Re-raise redis-py errors as the library's own (works around awaits too)."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise translate(exc) from exc
