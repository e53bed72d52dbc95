"""The least a Redis user needs to run the library: an ACL rule.

Scripts run with their caller's permissions, so the rule lists every command
the scripts call as well as the ones the clients send. Keys and channels are
limited to the namespaces given (every key and wake channel starts with
``<namespace>:``).

    $ aimd-redis acl --user fleet
    ACL SETUSER fleet on >CHANGE-ME resetkeys ~aimd:* resetchannels &aimd:* -@all +fcall ...
"""

from __future__ import annotations

from collections.abc import Sequence

from aimd_redis.errors import InvalidArgumentError
from aimd_redis.keys import check_namespace

#: Called by the Lua scripts (tests/test_acl.py checks the scripts against it).
SCRIPT_COMMANDS = (
    "del", "get", "hdel", "hget", "hgetall", "hincrby", "hlen", "hmget", "hset", "incr", "pexpire", "pttl", "sadd",
    "smembers", "srem", "time", "xadd", "zadd", "zcard", "zcount", "zrange", "zrangebyscore", "zrank", "zrem",
    "zremrangebyscore", "zscore", "publish", "spublish",
)  # fmt: skip
#: Sent by the clients: the function library (FCALL, and FUNCTION LOAD once
#: per server), the scripts where functions are not used (EVALSHA, and EVAL /
#: SCRIPT LOAD after a flushed script cache), plain reads, wake-ups, the CLI's reads.
CLIENT_COMMANDS = (
    "fcall", "function|load", "evalsha", "eval", "script|load", "hgetall", "hget", "subscribe", "ssubscribe",
    "unsubscribe", "sunsubscribe", "ping", "hello", "scan", "smembers", "time", "xrevrange", "xread", "exists",
)  # fmt: skip


def acl_rule(user: str = "aimd", namespaces: Sequence[str] = ("aimd",), password: str = "CHANGE-ME") -> list[str]:
    """The arguments of ``ACL SETUSER`` for a user that can run the library
    in ``namespaces`` and nothing else."""
    if not namespaces:
        raise InvalidArgumentError("give at least one namespace")
    rule = [user, "on", f">{password}", "resetkeys"]
    rule += [f"~{check_namespace(ns)}:*" for ns in namespaces]
    rule += ["resetchannels", *(f"&{ns}:*" for ns in namespaces), "-@all"]
    rule += [f"+{c}" for c in dict.fromkeys((*CLIENT_COMMANDS, *SCRIPT_COMMANDS))]
    return rule
