"""Refusing a Redis user who may not run a command the scripts call, before
any script runs.

Redis checks a script's commands one by one as it runs them, and a script
stopped by a refused one keeps what it wrote before it (a granted lease, say).
So each client runs lua/probe.lua once, before its first script call: it
tries every command the scripts call and names those refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aimd_redis.core import Call, ProbeArgs, as_str
from aimd_redis.errors import RedisPermissionError

#: The pub/sub command each kind of client publishes wake-ups with: a client
#: needs only its own.
PUBLISH_COMMANDS = ("publish", "spublish")


def probe_call(key: str) -> Call:
    """The probe, on scratch names of the model that ``key`` (any key of a
    script call) belongs to: on a cluster it runs on that model's node."""
    tag = key[: key.index("}") + 1]
    return Call("probe", [f"{tag}:cap:probe"], list(ProbeArgs(channel=f"{tag}:wake:probe")))


def check_probe(reply: Sequence[Any], publish: str) -> None:
    """Raise RedisPermissionError naming what the probe found refused, of the
    commands a client that publishes with ``publish`` calls."""
    flat = [as_str(part) for part in reply]
    refused = {
        command: why
        for command, why in zip(flat[::2], flat[1::2], strict=True)
        if command == publish.lower() or command not in PUBLISH_COMMANDS
    }
    if refused:
        raise RedisPermissionError(
            f"the Redis user may not run {', '.join(refused)}, which the library's scripts call "
            f"(Redis: {next(iter(refused.values()))}); refused before any script ran, so nothing was written. "
            "`aimd-redis acl --namespace NAMESPACE` prints an ACL rule that grants exactly what it uses"
        )
