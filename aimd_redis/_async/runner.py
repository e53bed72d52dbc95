"""Running the library's scripts on one Redis client: as functions (``FCALL``
of the library, loaded once per server) where Redis has them, else with
``EVALSHA``, under a flags line where the server reads one.

aimd_redis/_sync/runner.py is generated from this file by tools/unasync.py.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from redis.commands.core import AsyncScript

from aimd_redis.core import Call
from aimd_redis.errors import flags_refused, function_missing, functions_refused, redis_boundary
from aimd_redis.scripts import library, sources

logger = logging.getLogger("aimd_redis")


class AsyncScriptRunner:
    """``functions``: whether to try the function library first (not on a
    cluster, where redis-py would spend a round trip asking for an FCALL's
    keys)."""

    def __init__(self, client: Any, *, functions: bool) -> None:
        self._redis = client
        self._scripts: dict[str, AsyncScript] = {name: client.register_script(text) for name, text in sources().items()}
        self._plain_scripts: dict[str, AsyncScript] = {
            name: client.register_script(text) for name, text in sources(flags=False).items()
        }
        self._library = library()
        self.functions = functions

    async def run(self, call: Call) -> Any:
        with redis_boundary():
            if self.functions:
                name = self._library.functions[call.script]
                try:
                    return await self._redis.fcall(name, len(call.keys), *call.keys, *call.args)
                except redis.exceptions.ResponseError as exc:
                    if function_missing(exc) and await self._load_library():
                        return await self._redis.fcall(name, len(call.keys), *call.keys, *call.args)
                    if not functions_refused(exc):
                        raise
                    self._without_functions(exc)
            try:
                return await self._scripts[call.script](keys=call.keys, args=call.args)
            except redis.exceptions.ResponseError as exc:
                if not flags_refused(exc) or self._scripts is self._plain_scripts:
                    raise
                # A server before 7 (or fakeredis) cannot read the flags line.
                self._scripts = self._plain_scripts
                return await self._scripts[call.script](keys=call.keys, args=call.args)

    async def _load_library(self) -> bool:
        """Load the function library (once per server, or after a restart or a
        FUNCTION FLUSH lost it); False when Redis will not have it here."""
        try:
            await self._redis.function_load(self._library.code)
        except redis.exceptions.ResponseError as exc:
            if "already exists" in str(exc):  # another process was first
                return True
            if not functions_refused(exc):
                raise
            self._without_functions(exc)
            return False
        return True

    def _without_functions(self, exc: redis.exceptions.ResponseError) -> None:
        if self.functions:
            self.functions = False
            logger.info("Redis refuses function libraries here (%s); running the scripts with EVALSHA", exc)
