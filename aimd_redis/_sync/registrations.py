"""What this process registered, to register again when Redis forgot a model
(its idle expiry ran out, or a restart lost the data).

Generated from aimd_redis/_async/registrations.py
by tools/unasync.py: edit that file, not this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from aimd_redis.core import REGISTER_ATTEMPTS, Call, Core
from aimd_redis.errors import AimdRedisError, RedisCommandError
from aimd_redis.structs import LeaseRef

logger = logging.getLogger("aimd_redis")


class Registration(NamedTuple):
    max_parallel: int
    requests_per_minute: int | None
    tokens_per_minute: int | None


class Registrations:
    def __init__(self, core: Core, run: Callable[[Call], Any]) -> None:
        self._core = core
        self._run = run
        self._by_model: dict[tuple[str, str], dict[str, Registration]] = {}

    def register(
        self, provider_name: str, model_id: str, alias: str, registration: Registration, now: float | None
    ) -> int:
        """Register ``alias`` (remembered for :meth:`restore`); the model's effective max."""
        emax = self._register(provider_name, model_id, alias, registration, now)
        self._by_model.setdefault((provider_name, model_id), {})[alias] = registration
        return emax

    def _register(
        self, provider_name: str, model_id: str, alias: str, registration: Registration, now: float | None
    ) -> int:
        domains: list[str] = []
        for _ in range(REGISTER_ATTEMPTS):
            call = self._core.register_call(
                provider_name,
                model_id,
                alias,
                registration.max_parallel,
                now,
                domains,
                requests_per_minute=registration.requests_per_minute,
                tokens_per_minute=registration.tokens_per_minute,
            )
            result = self._core.parse_register(provider_name, model_id, self._run(call))
            if isinstance(result, int):
                return result
            domains = result
        raise RedisCommandError(f"register of {provider_name}/{model_id} kept racing domain creation")

    def restore(self, provider_name: str, model_id: str, now: float | None = None) -> bool:
        """Register again what this process registered of the model; False if nothing."""
        aliases = self._by_model.get((provider_name, model_id))
        if not aliases:
            return False
        logger.info("%s/%s: Redis has no registration (expired or lost); registering again", provider_name, model_id)
        for alias, registration in aliases.items():
            self._register(provider_name, model_id, alias, registration, now)
        return True

    def restore_quietly(self, ref: LeaseRef) -> None:
        """Redis lost the model's registration under a held lease: register it
        again, best effort (the next acquire would, too)."""
        try:
            self.restore(ref.provider_name, ref.model_id)
        except AimdRedisError as exc:
            logger.warning("could not register %s/%s again: %s", ref.provider_name, ref.model_id, exc)
