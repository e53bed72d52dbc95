"""LiteLLM's calls to its deployments through the shared limit (extra ``litellm``).

``AimdLimiter`` is a LiteLLM ``CustomLogger``. Its deployment hooks run around
every attempt LiteLLM makes at a deployment (``litellm.acompletion``, each
retry and fallback of a ``Router``, the proxy): before the call it waits for a
slot of the fleet-wide limit; after, it reports the outcome, a 429 with its
Retry-After included. A call waits in a group of the fleet's fair share: the
proxy's priority reservation for its key or team, or one the limiter is given.
See docs/litellm.md.

    limiter = AimdLimiter(AsyncThrottle(REDIS_URL), max_parallel_requests=16)
    litellm.callbacks.append(limiter)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.utils import CallTypes

from aimd_redis import AimdRedisError, ArgumentTypeError, AsyncLease, AsyncThrottle
from aimd_redis._http import Share, Target, outcome_of, retry_after_seconds, share_for, share_of
from aimd_redis._http import rate_limited_statuses as check_statuses
from aimd_redis.errors import InvalidArgumentError
from aimd_redis.keys import WEIGHT_RANGE

__all__ = ["AimdLimiter", "Target", "deployment_target", "priority_share"]

logger = logging.getLogger(__name__)

#: The domain of each kind of asyncio call LiteLLM makes. Other calls pass
#: without a slot: LiteLLM runs the hooks of some sync calls on an event loop
#: of their own, where an AsyncThrottle cannot follow.
DOMAINS: Mapping[str, str] = {
    "acompletion": "chat",
    "atext_completion": "chat",
    "aresponses": "chat",
    "aembedding": "embedding",
    "aimage_generation": "image",
}


class _Held:
    """A lease, and the watch on the task that took it: a task cancelled
    mid-call (a client gone) runs no hook after the call, so its lease is
    given back when the task ends cancelled."""

    def __init__(self, call_id: str, lease: AsyncLease) -> None:
        self.call_id, self.lease = call_id, lease
        self.task = asyncio.current_task()
        if self.task is not None:
            self.task.add_done_callback(self._ended)

    def unwatch(self) -> None:
        if self.task is not None:
            self.task.remove_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        held = _LEASES.get(self.call_id, [])
        if task.cancelled() and self in held:
            held.remove(self)
            if not held:
                del _LEASES[self.call_id]
            giving = asyncio.ensure_future(_give_back(self.lease))
            _GIVING.add(giving)
            giving.add_done_callback(_GIVING.discard)


#: Leases held, by LiteLLM's call id (oldest first, should an id come twice).
#: One table for every limiter: LiteLLM sends its log events (a stream's end,
#: a cache hit) to one instance of a logger class only, the first it saw.
_LEASES: dict[str, list[_Held]] = {}
_GIVING: set[asyncio.Future[None]] = set()

TargetOf = Callable[[Mapping[str, Any], str], "Target | None"]


def deployment_target(kwargs: Mapping[str, Any], domain: str, provider_name: str | None = None) -> Target | None:
    """Where a deployment call goes: the provider as given, else the host
    (and port) of the deployment's ``api_base``, else LiteLLM's provider name
    (``openai``, ``hosted_vllm``...); the model as LiteLLM sends it."""
    model = kwargs.get("model")
    if not isinstance(model, str) or not model:
        return None
    api_base = kwargs.get("api_base")
    provider = kwargs.get("custom_llm_provider")
    try:
        model_id, litellm_provider, _, _ = litellm.get_llm_provider(
            model,
            custom_llm_provider=provider if isinstance(provider, str) else None,
            api_base=api_base if isinstance(api_base, str) else None,
        )
    except Exception:  # a model LiteLLM cannot place: LiteLLM's own call will say so
        return None
    if provider_name is None and isinstance(api_base, str) and api_base:
        provider_name = urllib.parse.urlsplit(api_base).netloc.rpartition("@")[2] or None
    return Target(provider_name or litellm_provider, model_id, domain)


#: Where the proxy puts what it knows of a call's key and team: ``metadata``,
#: or ``litellm_metadata`` on the routes whose ``metadata`` is the provider's.
_METADATA = ("litellm_metadata", "metadata")
#: The key's and the team's metadata in it; the team's ``priority`` wins, as
#: in LiteLLM's own priority reservation.
_PRIORITY_SOURCES = ("user_api_key_team_metadata", "user_api_key_metadata")
_warned: set[str] = set()


def priority_share(kwargs: Mapping[str, Any]) -> Share | None:
    """The group of a proxy call whose key or team has a ``priority`` that
    ``litellm.priority_reservation`` lists: the priority's name, weighted by
    its reserved fraction (``{"prod": 0.9, "dev": 0.1}`` shares slots 9:1).
    None for any other call. A reservation in rpm or tpm weighs 1, and a
    priority that cannot name a group counts as none; each is logged once."""
    reservation = litellm.priority_reservation
    if not reservation:
        return None
    priority = None
    for name in _METADATA:
        metadata = kwargs.get(name)
        if isinstance(metadata, Mapping):
            found = (metadata.get(source) for source in _PRIORITY_SOURCES)
            priority = next((p.get("priority") for p in found if isinstance(p, Mapping) and p.get("priority")), None)
            if priority is not None:
                break
    if not isinstance(priority, str) or priority not in reservation:
        return None
    reserved: object = reservation[priority]
    if isinstance(reserved, Mapping):
        reserved = reserved.get("value", 1.0) if reserved.get("type", "percent") == "percent" else None
    if isinstance(reserved, bool) or not isinstance(reserved, (int, float)) or reserved != reserved:  # NaN
        _warn_once(priority, "priority %r: only a reserved fraction becomes a weight; it weighs 1")
        reserved = 1.0
    try:
        return share_of(priority, min(max(float(reserved), WEIGHT_RANGE[0]), WEIGHT_RANGE[1]))
    except InvalidArgumentError:
        _warn_once(priority, "priority %r cannot name a group (A-Z a-z 0-9 _ -, at most 64); its calls wait ungrouped")
        return None


def _warn_once(priority: str, message: str) -> None:
    if priority not in _warned:
        _warned.add(priority)
        logger.warning(message, priority)


class AimdLimiter(CustomLogger):
    """Takes a slot of ``throttle``'s fleet-wide limit before each call
    LiteLLM makes to a deployment, and reports how the call went.

    A deployment's limit is registered on its first call: its own
    ``max_parallel_requests`` (set in a Router's ``litellm_params``) or, for
    one without, ``max_parallel_requests`` given here; with neither, the model
    must have been registered on the throttle beforehand. ``acquire_timeout``
    bounds the wait for a slot (None waits for ever): LiteLLM then sees
    ``AcquireTimeout``. ``provider_name`` names the upstream for every
    deployment (default: the host of its ``api_base``); ``target`` replaces
    the whole mapping of a call to (provider, model, domain), and may set its
    group and weight too.

    Groups: while a domain is full, its free slots go to the fleet's waiting
    groups in proportion to their weights. A call waits in the group its
    ``target`` sets; else, on the proxy, in its key's or team's priority
    reservation (``priority_share``; ``by_priority=False`` turns that off);
    else in ``group`` with ``weight`` (default: the default group).

    Outcomes: a 2xx or 4xx answer is a success (the server answered), a
    status in ``rate_limited_statuses`` a 429 with the server's Retry-After,
    a 5xx, timeout or broken connection a failure. A streamed answer is
    reported when LiteLLM logs its end; a call answered from LiteLLM's cache,
    or cancelled mid-flight, gives its slot back untouched.

    Works for LiteLLM's asyncio calls, on one event loop (``throttle`` is an
    ``AsyncThrottle``).
    """

    def __init__(
        self,
        throttle: AsyncThrottle,
        *,
        max_parallel_requests: int | None = None,
        acquire_timeout: float | None = None,
        provider_name: str | None = None,
        target: TargetOf | None = None,
        rate_limited_statuses: Collection[int] = (429,),
        group: str | None = None,
        weight: float = 1.0,
        by_priority: bool = True,
    ) -> None:
        if not isinstance(throttle, AsyncThrottle):
            raise ArgumentTypeError(f"AimdLimiter needs an AsyncThrottle, not {type(throttle).__name__}")
        self._share = share_of(group, weight)
        self._by_priority = by_priority
        super().__init__()
        self._throttle = throttle
        self._default_max = max_parallel_requests
        self._timeout = acquire_timeout
        self._target: TargetOf = target or (lambda kwargs, domain: deployment_target(kwargs, domain, provider_name))
        self._rate_limited = check_statuses(rate_limited_statuses)
        self._registered: set[tuple[str, str, str, int]] = set()
        self._unknown_calls: set[str] = set()

    # -- before the call ------------------------------------------------------

    async def async_pre_call_deployment_hook(self, kwargs: dict[str, Any], call_type: CallTypes | None) -> None:
        kind = call_type.value if isinstance(call_type, CallTypes) else str(call_type)
        domain = DOMAINS.get(kind)
        call_id = kwargs.get("litellm_call_id")
        if domain is None or not isinstance(call_id, str):
            if kind not in self._unknown_calls:
                self._unknown_calls.add(kind)
                logger.warning(
                    "LiteLLM %s calls pass without a slot (only asyncio chat, embedding and image calls take one)", kind
                )
            return None
        target = self._target(kwargs, domain)
        if target is None:
            return None
        await self._register(target, kwargs)
        fallback = (priority_share(kwargs) if self._by_priority else None) or self._share
        group, weight = share_for(target, fallback)
        lease = await self._throttle.acquire(
            provider_name=target.provider_name,
            model_id=target.model_id,
            domain=target.domain,
            timeout=self._timeout,
            group=group,
            weight=weight,
        )
        _LEASES.setdefault(call_id, []).append(_Held(call_id, lease))
        return None

    async def _register(self, target: Target, kwargs: Mapping[str, Any]) -> None:
        most = kwargs.get("max_parallel_requests")
        if not isinstance(most, int) or isinstance(most, bool):
            most = self._default_max
        if most is None:
            return  # registered on the throttle by its owner, or acquire says to
        info = kwargs.get("model_info")
        alias = str(info.get("id")) if isinstance(info, Mapping) and info.get("id") else "litellm"
        key = (target.provider_name, target.model_id, alias, most)
        if key not in self._registered:
            await self._throttle.register(
                provider_name=target.provider_name, model_id=target.model_id, alias=alias, max_parallel_requests=most
            )
            self._registered.add(key)

    # -- after it ---------------------------------------------------------------

    def _take(self, kwargs: Mapping[str, Any]) -> AsyncLease | None:
        call_id = kwargs.get("litellm_call_id")
        held = _LEASES.get(call_id) if isinstance(call_id, str) else None
        if not held:
            return None
        first = held.pop(0)
        if not held:
            del _LEASES[str(call_id)]
        first.unwatch()
        return first.lease

    async def async_post_call_success_deployment_hook(
        self, request_data: dict[str, Any], response: Any, call_type: CallTypes | None
    ) -> None:
        lease = self._take(request_data)
        if lease is not None:
            with _quietly():
                await lease.success()
        return None

    async def async_post_call_failure_deployment_hook(
        self,
        request_data: Mapping[str, object],
        exception: Exception,
        call_type: CallTypes | None,
        fallback_depth: int | None = None,
    ) -> None:
        lease = self._take(request_data)
        if lease is None:
            return
        status = getattr(exception, "status_code", None)
        outcome = outcome_of(status, self._rate_limited) if isinstance(status, int) else "failure"
        with _quietly():
            if outcome == "rate_limited":
                await lease.rate_limited(retry_after=_retry_after(exception))
            elif outcome == "failure":
                await lease.failure()
            else:
                await lease.success()

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """A stream's end, or an answer from LiteLLM's cache (no deployment hook ran)."""
        lease = self._take(kwargs)
        if lease is not None:
            if kwargs.get("cache_hit"):
                await _give_back(lease)
            else:
                with _quietly():
                    await lease.success()

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """A stream that broke off."""
        lease = self._take(kwargs)
        if lease is not None:
            with _quietly():
                await lease.failure()


def _retry_after(exception: Exception) -> float | None:
    """The Retry-After of the answer LiteLLM turned into ``exception``."""
    for headers in (
        getattr(exception, "litellm_response_headers", None),
        getattr(getattr(exception, "response", None), "headers", None),
    ):
        if isinstance(headers, Mapping):
            wait = retry_after_seconds(headers)
            if wait is not None:
                return wait
    return None


async def _give_back(lease: AsyncLease) -> None:
    with _quietly():
        await lease.give_back()


def _quietly() -> contextlib.AbstractContextManager[None]:
    """An outcome Redis did not take is sent again in the background (and
    logged); it never replaces the call's own answer or error."""
    return contextlib.suppress(AimdRedisError)
