"""DataDesigner's request admission through the shared limit (extra ``datadesigner``).

``RedisRequestAdmissionController`` implements the ``RequestAdmissionController``
protocol of data-designer-engine 0.9, with DataDesigner's own types, on top of
an ``AsyncThrottle``: every process of a DataDesigner job that is given one
(``create_model_registry(request_admission=...)`` or
``create_resource_provider(request_admission=...)``) shares one limit, one
cooldown and one queue per (provider, model, domain), and the fair share of
its request groups fleet-wide. See docs/datadesigner.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as aredis
from data_designer.engine.models.request_admission.config import RequestAdmissionConfig
from data_designer.engine.models.request_admission.controller import (
    RequestAdmissionDenied,
    RequestAdmissionError,
    RequestAdmissionLease,
)
from data_designer.engine.models.request_admission.outcomes import ReleaseResult, RequestReleaseOutcome
from data_designer.engine.models.request_admission.pressure import (
    ProviderModelPressureSnapshot,
    RequestPressureSnapshot,
)
from data_designer.engine.models.request_admission.resources import (
    RequestAdmissionItem,
    RequestDomain,
    RequestResourceKey,
)
from data_designer.engine.models.resources import ProviderModelKey

from aimd_redis import (
    AcquireTimeout,
    AimdRedisError,
    AsyncLease,
    AsyncThrottle,
    Denied,
    DomainState,
    NotRegisteredError,
    ThrottleConfig,
)
from aimd_redis import ReleaseResult as AimdReleaseResult
from aimd_redis._http import Share, share_of
from aimd_redis.core import as_str
from aimd_redis.errors import redis_boundary
from aimd_redis.keys import WEIGHT_RANGE, model_keys

__all__ = ["RedisRequestAdmissionController", "group_name"]

T = TypeVar("T")

#: How each of DataDesigner's outcomes is reported to the shared loop. A
#: failure frees the slot and ends a 429 cascade once the burst has drained,
#: as DataDesigner's own controller does; a give-back frees it and teaches
#: the loop nothing (the server said nothing about its capacity).
OUTCOMES: Mapping[str, str] = {
    "success": "success",
    "rate_limited": "rate_limited",
    "provider_failure": "failure",
    "provider_timeout": "failure",
    "unexpected_exception": "failure",
    "local_cancelled": "give_back",
    "local_timeout": "give_back",
}


class _Handoff:
    """A lease on its way from the throttle's loop to a caller who may have
    stopped waiting for it (cancelled, interrupted): then it is given back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted = True
        self._lease: AsyncLease | None = None

    def deliver(self, lease: AsyncLease) -> bool:
        with self._lock:
            self._lease = lease
            return self._wanted

    def give_up(self) -> AsyncLease | None:
        with self._lock:
            self._wanted = False
            return self._lease


class RedisRequestAdmissionController:
    """DataDesigner's ``RequestAdmissionController`` and pressure provider,
    backed by one AIMD loop per domain kept in Redis.

    ``url`` is the Redis URL every process of the job uses, with the same
    ``namespace``; ``config`` is the loop's ``ThrottleConfig`` (DataDesigner's
    ``RunConfig.request_admission`` tuning does not apply: pass the matching
    fields here). ``default_queue_wait_timeout_seconds`` bounds a blocking
    acquire whose item sets no timeout (None waits for ever).

    While a domain is full, its free slots go to the waiting request groups
    of the whole fleet in proportion to their weights. ``group`` puts every
    request of this controller in one group (say, one per job: every process
    of the job passes the same); without it, a request's DataDesigner group
    decides (see ``share``). ``weight`` is that group's weight; without it,
    the item's ``group.weight`` as DataDesigner counts it.

    The controller works from threads and from any event loop: its throttle
    runs on an event loop of its own, in a daemon thread. Call ``close()``
    when done.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "aimd",
        config: ThrottleConfig | None = None,
        default_queue_wait_timeout_seconds: float | None = None,
        group: str | None = None,
        weight: float | None = None,
    ) -> None:
        # Checked first: a bad one starts nothing. "default" names the default group.
        self._group = None if group is None else share_of(group, 1.0)
        self._weight = None if weight is None else share_of(None, weight).weight
        self._throttle_config = config if config is not None else ThrottleConfig()
        self._config = RequestAdmissionConfig(
            cooldown_seconds=self._throttle_config.cooldown_seconds,
            multiplicative_decrease_factor=self._throttle_config.reduce_factor,
            additive_increase_step=self._throttle_config.additive_increase,
            successes_until_increase=self._throttle_config.success_window,
            startup_ramp_seconds=self._throttle_config.rampup_seconds,
            default_queue_wait_timeout_seconds=default_queue_wait_timeout_seconds,
        )
        self._namespace = namespace
        self._generation = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._active: dict[str, tuple[RequestAdmissionLease, AsyncLease]] = {}
        self._released: dict[str, None] = {}  # insertion-ordered, capped
        self._diagnostics: Counter[str] = Counter()
        self._last_outcome: dict[RequestResourceKey, str] = {}
        self._models: dict[ProviderModelKey, None] = {}
        # The effective max as last seen (registered or read), for leases.
        self._effective_max: dict[ProviderModelKey, int] = {}
        self._sequence = 0
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="aimd-redis datadesigner", daemon=True)
        self._thread.start()
        try:
            self._throttle, self._redis = self._run(self._open(url))
        except BaseException:
            self._stop_loop()
            raise

    async def _open(self, url: str) -> tuple[AsyncThrottle, Any]:
        # Made on the loop that uses them: redis-py's asyncio pools belong to one loop.
        throttle = AsyncThrottle(url, config=self._throttle_config, namespace=self._namespace)
        # Any: redis-py types its replies as "Awaitable or value".
        return throttle, aredis.Redis.from_url(url, decode_responses=True)

    # -- running on the throttle's loop ------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the controller is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- the protocol -------------------------------------------------------

    def share(self, item: RequestAdmissionItem) -> Share:
        """The group and weight ``item`` waits with across the fleet.

        The group: the controller's ``group`` if it has one; else the default
        group for an item whose DataDesigner group is its own resource (as
        DataDesigner 0.9 makes every item: each domain has a queue of its own
        here already); else a group named after the group's resource (see
        ``group_name``). The weight: the controller's ``weight`` if it has
        one, else the item's, raised to 1 as DataDesigner's queue raises it
        (and held to at most 1000)."""
        group = self._group.group if self._group is not None else _group_of(item)
        weight = self._weight if self._weight is not None else _weight_of(item.group.weight)
        return Share(group, weight)

    @property
    def pressure(self) -> RedisRequestAdmissionController:
        return self

    @property
    def config(self) -> RequestAdmissionConfig:
        """The loop's rules in DataDesigner's terms (for its reports)."""
        return self._config

    def register(self, *, provider_name: str, model_id: str, alias: str, max_parallel_requests: int) -> None:
        """Record ``alias``'s max for the model; the fleet's effective max is
        the least over every alias any process registered."""
        emax = self._run(
            self._throttle.register(
                provider_name=provider_name,
                model_id=model_id,
                alias=alias,
                max_parallel_requests=max(1, max_parallel_requests),
            )
        )
        with self._lock:
            self._models[ProviderModelKey(provider_name, model_id)] = None
            self._effective_max[ProviderModelKey(provider_name, model_id)] = emax
            self._sequence += 1

    def try_acquire(self, item: RequestAdmissionItem) -> RequestAdmissionLease | RequestAdmissionDenied:
        """A lease if a slot is free now, else why not (never queues)."""
        if self._closed:
            return RequestAdmissionDenied(item=item, reason="shutdown")
        return self._run(self._try_acquire(item))

    async def _try_acquire(self, item: RequestAdmissionItem) -> RequestAdmissionLease | RequestAdmissionDenied:
        r = item.resource
        group, weight = self.share(item)
        try:
            got = await self._throttle.try_acquire(
                provider_name=r.provider_name, model_id=r.model_id, domain=_domain(r), group=group, weight=weight
            )
        except NotRegisteredError:
            return _unregistered(item)
        if isinstance(got, Denied):
            return await self._denied(item, got)
        return await self._lease(item, got)

    def acquire_sync(self, item: RequestAdmissionItem) -> RequestAdmissionLease:
        """Wait for a slot in the fleet's queue; raises DataDesigner's
        ``RequestAdmissionError`` on a queue timeout (``queue_timeout``), an
        unregistered model (``hard_policy_denial``) or a closed controller."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("acquire_sync would block the running event loop; use acquire_async instead.")
        self._check_open(item)
        handoff = _Handoff()
        future = asyncio.run_coroutine_threadsafe(self._acquire(item, handoff), self._loop)
        try:
            return future.result()
        except BaseException:
            self._abandon(future, handoff)
            raise

    async def acquire_async(self, item: RequestAdmissionItem) -> RequestAdmissionLease:
        """``acquire_sync`` for coroutines, from any event loop."""
        self._check_open(item)
        handoff = _Handoff()
        future = asyncio.run_coroutine_threadsafe(self._acquire(item, handoff), self._loop)
        try:
            return await asyncio.wrap_future(future)
        except BaseException:
            self._abandon(future, handoff)
            raise

    def _abandon(self, future: Any, handoff: _Handoff) -> None:
        """The caller stopped waiting: stop the acquire, and give back a slot
        it may have got all the same."""
        future.cancel()
        taken = handoff.give_up()
        if taken is not None:
            self._forget(taken.id)
            asyncio.run_coroutine_threadsafe(self._give_back_quietly(taken), self._loop)

    async def _acquire(self, item: RequestAdmissionItem, handoff: _Handoff) -> RequestAdmissionLease:
        r = item.resource
        timeout = item.queue_wait_timeout_seconds
        if timeout is None:
            timeout = self._config.default_queue_wait_timeout_seconds
        group, weight = self.share(item)
        try:
            got = await self._throttle.acquire(
                provider_name=r.provider_name,
                model_id=r.model_id,
                domain=_domain(r),
                timeout=timeout,
                group=group,
                weight=weight,
            )
        except NotRegisteredError as exc:
            raise RequestAdmissionError(_unregistered(item)) from exc
        except AcquireTimeout as exc:
            snapshot = await self._snapshot(r)
            raise RequestAdmissionError(
                RequestAdmissionDenied(item=item, reason="queue_timeout", snapshot=snapshot)
            ) from exc
        lease = await self._lease(item, got)
        if not handoff.deliver(got):  # its caller is gone
            self._forget(got.id)
            await self._give_back_quietly(got)
        return lease

    def release(self, lease: RequestAdmissionLease, outcome: RequestReleaseOutcome) -> ReleaseResult:
        """Report the request's outcome and free its slot (see ``OUTCOMES``).

        Only the first release of a lease frees it: another says
        ``duplicate``; one whose lease expired (its slot reclaimed by the
        fleet) says ``stale_lease``; a lease of another controller says
        ``wrong_controller_generation``."""
        with self._lock:
            held = self._active.pop(lease.lease_id, None)
            if held is None:
                if lease.controller_generation != self._generation:
                    reason = "wrong_controller_generation"
                elif lease.lease_id in self._released:
                    reason = "duplicate"
                else:
                    reason = "unknown_lease"
                self._diagnostics[reason] += 1
                return ReleaseResult(released=False, reason=reason)
            self._remember_released(lease.lease_id)
        try:
            result = self._run(self._report(held[1], outcome))
        except AimdRedisError as exc:
            # The throttle sends the outcome again until Redis takes it (and
            # logs that); DataDesigner releases from its error paths, where an
            # exception of ours would hide the request's own.
            return ReleaseResult(released=True, reason="released", diagnostics={"pending": str(exc)})
        with self._lock:
            self._last_outcome[lease.item.resource] = outcome.kind
            self._sequence += 1
            if not result.released:
                self._diagnostics["stale_lease"] += 1
                return ReleaseResult(released=False, reason="stale_lease")
        return ReleaseResult(released=True, reason="released")

    @staticmethod
    async def _report(lease: AsyncLease, outcome: RequestReleaseOutcome) -> AimdReleaseResult:
        kind = OUTCOMES.get(outcome.kind, "failure")
        if kind == "success":
            return await lease.success()
        if kind == "rate_limited":
            return await lease.rate_limited(retry_after=outcome.retry_after_seconds)
        if kind == "give_back":
            return await lease.give_back()
        return await lease.failure()

    # -- pressure snapshots ------------------------------------------------

    def snapshot(self, resource: RequestResourceKey) -> RequestPressureSnapshot | None:
        """The domain as the whole fleet sees it (None if nobody touched it)."""
        return self._run(self._snapshot(resource))

    def snapshots(self) -> Mapping[RequestResourceKey, RequestPressureSnapshot]:
        """Every domain of the models this controller registered."""
        return self._run(self._snapshots())

    def global_snapshot(self, provider: str, model: str) -> ProviderModelPressureSnapshot | None:
        """The model across its domains (None if nobody registered it)."""
        return self._run(self._global_snapshot(ProviderModelKey(provider, model)))

    def global_snapshots(self) -> Mapping[ProviderModelKey, ProviderModelPressureSnapshot]:
        """``global_snapshot`` of every model this controller registered."""
        return self._run(self._global_snapshots())

    async def _snapshot(self, resource: RequestResourceKey) -> RequestPressureSnapshot | None:
        view = await self._read_model(resource.provider_model_key)
        state = view.states.get(resource.domain)
        return None if state is None else self._pressure(resource, state, view)

    async def _snapshots(self) -> dict[RequestResourceKey, RequestPressureSnapshot]:
        out = {}
        for key in self._registered():
            view = await self._read_model(key)
            for domain, state in view.states.items():
                resource = RequestResourceKey(key.provider_name, key.model_id, domain)
                out[resource] = self._pressure(resource, state, view)
        return out

    async def _global_snapshot(self, key: ProviderModelKey) -> ProviderModelPressureSnapshot | None:
        view = await self._read_model(key)
        if view.effective_max is None:
            return None
        in_flight = sum(state.in_flight for state in view.states.values())
        return ProviderModelPressureSnapshot(
            captured_at=time.monotonic(),
            sequence=self._sequence,
            provider_model=key,
            static_cap=view.effective_max,
            aggregate_in_flight=in_flight,
            aggregate_active_lease_count=in_flight,
            aliases=tuple(sorted(view.aliases)),
            raw_caps=view.aliases,
            domains={domain: state.current_limit for domain, state in view.states.items()},
        )

    async def _global_snapshots(self) -> dict[ProviderModelKey, ProviderModelPressureSnapshot]:
        out = {}
        for key in self._registered():
            snapshot = await self._global_snapshot(key)
            if snapshot is not None:
                out[key] = snapshot
        return out

    async def _read_model(self, key: ProviderModelKey) -> _ModelView:
        """Redis's clock, the model's registration and its domains, read at once."""
        cap_key = model_keys(self._namespace, key.provider_name, key.model_id).cap
        p, m = key.provider_name, key.model_id
        with redis_boundary():
            clock, cap, *states = await asyncio.gather(
                self._redis.time(),
                self._redis.hgetall(cap_key),
                *(self._throttle.domain_state(p, m, domain.value) for domain in RequestDomain),
            )
        fields = {as_str(k): as_str(v) for k, v in cap.items()}
        emax = int(fields["effective_max"]) if fields.get("effective_max", "").isdigit() else None
        if emax is not None:
            with self._lock:
                self._effective_max[key] = emax
        return _ModelView(
            now=float(clock[0]) + float(clock[1]) / 1e6,
            effective_max=emax,
            aliases={k[len("alias:") :]: int(v) for k, v in fields.items() if k.startswith("alias:") and v.isdigit()},
            states={d: state for d, state in zip(RequestDomain, states, strict=True) if state is not None},
        )

    def _pressure(self, resource: RequestResourceKey, state: DomainState, view: _ModelView) -> RequestPressureSnapshot:
        cooldown = max(0.0, state.blocked_until - view.now)
        captured = time.monotonic()
        with self._lock:
            return RequestPressureSnapshot(
                captured_at=captured,
                sequence=self._sequence,
                resource=resource,
                effective_max=view.effective_max or 1,  # an unregistered model counts as 1
                current_limit=state.current_limit,
                in_flight_count=state.in_flight,
                active_lease_count=state.in_flight,
                waiters=state.waiters,
                blocked_until_monotonic=captured + cooldown if cooldown > 0 else None,
                cooldown_remaining_seconds=cooldown,
                rate_limit_ceiling=state.rate_limit_ceiling,
                consecutive_rate_limits=state.consecutive_429s,
                last_outcome=self._last_outcome.get(resource),
                leak_diagnostics=dict(self._diagnostics),
            )

    # -- bookkeeping --------------------------------------------------------

    async def _lease(self, item: RequestAdmissionItem, got: AsyncLease) -> RequestAdmissionLease:
        lease = RequestAdmissionLease(
            lease_id=got.id,
            item=item,
            acquired_at=time.monotonic(),
            current_adaptive_limit=got.state.current_limit,
            effective_max=self._effective_max.get(item.resource.provider_model_key, 1),
            controller_generation=self._generation,
        )
        with self._lock:
            self._active[got.id] = (lease, got)
            self._sequence += 1
        return lease

    async def _denied(self, item: RequestAdmissionItem, denied: Denied) -> RequestAdmissionDenied:
        state = denied.state
        if denied.reason == "cooldown":
            return RequestAdmissionDenied(
                item=item,
                reason="cooldown",
                retry_after_seconds=denied.retry_in,
                available_after_monotonic=time.monotonic() + denied.retry_in,
                snapshot=await self._snapshot(item.resource),
            )
        # A free slot owed to a queued waiter (of any process) is not taken.
        ahead = denied.reason == "at_capacity" and state.waiters > 0 and state.in_flight < state.current_limit
        return RequestAdmissionDenied(
            item=item,
            reason="queued_waiters_ahead" if ahead else "no_capacity",
            retry_after_seconds=denied.retry_in if denied.reason == "budget" else None,
            snapshot=await self._snapshot(item.resource),
        )

    def _remember_released(self, lease_id: str) -> None:
        self._released[lease_id] = None
        if len(self._released) > RELEASED_HISTORY:
            del self._released[next(iter(self._released))]

    def _forget(self, lease_id: str) -> None:
        with self._lock:
            self._active.pop(lease_id, None)
            self._remember_released(lease_id)

    @staticmethod
    async def _give_back_quietly(lease: AsyncLease) -> None:
        with contextlib.suppress(AimdRedisError):  # resent in the background until Redis takes it
            await lease.give_back()

    def _registered(self) -> list[ProviderModelKey]:
        with self._lock:
            return list(self._models)

    def _check_open(self, item: RequestAdmissionItem) -> None:
        if self._closed:
            raise RequestAdmissionError(RequestAdmissionDenied(item=item, reason="shutdown"))

    # -- closing --------------------------------------------------------------

    def close(self) -> None:
        """Give back the slots still held, close the Redis connections and stop
        the controller's thread. Acquires then fail with ``shutdown``."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            held = [lease for _, lease in self._active.values()]
            self._active.clear()
        try:
            asyncio.run_coroutine_threadsafe(self._aclose(held), self._loop).result()
        finally:
            self._stop_loop()

    async def _aclose(self, held: list[AsyncLease]) -> None:
        for lease in held:
            await self._give_back_quietly(lease)
        await self._throttle.aclose()
        await self._redis.aclose()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> RedisRequestAdmissionController:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


#: How many released lease ids each controller remembers to tell a duplicate
#: release from an unknown lease (as DataDesigner's controller does).
RELEASED_HISTORY = 8192


class _ModelView(NamedTuple):
    now: float
    """Redis's clock."""
    effective_max: int | None
    aliases: dict[str, int]
    states: dict[RequestDomain, DomainState]


def _domain(resource: RequestResourceKey) -> str:
    return str(RequestDomain(resource.domain).value)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def group_name(key: RequestResourceKey) -> str:
    """The fleet's name for DataDesigner's request group ``key`` (a resource
    key): its model and domain in the characters a group may hold, and a
    hash of the whole key that tells apart keys those would confuse, e.g.
    ``gpt-4o-mini-chat-1a2b3c4d``."""
    whole = f"{key.provider_name}/{key.model_id}/{_domain(key)}"
    readable = _UNSAFE.sub("-", f"{key.model_id}-{_domain(key)}").strip("-")[:55]
    return f"{readable}-{hashlib.sha1(whole.encode()).hexdigest()[:8]}".lstrip("-")


def _group_of(item: RequestAdmissionItem) -> str | None:
    key = item.group.key
    return None if key == item.resource else group_name(key)


def _weight_of(weight: float) -> float:
    # DataDesigner's queue counts max(weight, 1); NaN, which it cannot order, counts 1.
    return 1.0 if math.isnan(weight) else min(max(weight, 1.0), WEIGHT_RANGE[1])


def _unregistered(item: RequestAdmissionItem) -> RequestAdmissionDenied:
    return RequestAdmissionDenied(item=item, reason="hard_policy_denial", diagnostics={"unregistered": True})
