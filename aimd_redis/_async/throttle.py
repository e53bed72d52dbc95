"""The asyncio client: a thin shell that runs the core's script calls.

aimd_redis/_sync/throttle.py is generated from this file by tools/unasync.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from aimd_redis._async.agent import AsyncAgent
from aimd_redis._async.fallback import LocalLimit
from aimd_redis._async.registrations import AsyncRegistrations, Registration
from aimd_redis._async.renewal import AsyncRenewals
from aimd_redis._async.resend import AsyncResender
from aimd_redis._async.runner import AsyncScriptRunner
from aimd_redis._async.synchronization import (
    Mailbox,
    Semaphore,
    blocking_a_running_loop,
    pending_cancellations,
    raise_swallowed_cancellation,
)
from aimd_redis._async.waker import CONFIRM_SECONDS, Waker
from aimd_redis._provider import read_rate_limit_headers
from aimd_redis.config import FailOpen, ThrottleConfig
from aimd_redis.core import (
    MAX_BUDGET,
    Call,
    Core,
    Outcome,
    as_str,
    check_int,
    check_now,
    check_retry_after,
    check_timeout,
    check_ttfb,
    local_state,
    parse_effective_max,
    parse_state,
    socket_timeout_of,
)
from aimd_redis.errors import (
    REFUSED_BEFORE_RUNNING,
    AcquireTimeout,
    AimdRedisError,
    ArgumentTypeError,
    EventLoopBlockedError,
    InvalidArgumentError,
    NotRegisteredError,
    RedisUnavailableError,
    redis_boundary,
)
from aimd_redis.keys import check_domain, check_group, check_weight
from aimd_redis.observer import Observer
from aimd_redis.permissions import check_probe, probe_call
from aimd_redis.structs import Denied, DomainState, Grant, LeaseRef, Queued, ReleaseResult

logger = logging.getLogger("aimd_redis")

#: Socket timeouts of a client built from a URL: an outage surfaces as
#: RedisUnavailableError within seconds instead of a hang.
URL_SOCKET_TIMEOUT_SECONDS = 5.0
#: Connections a client built from a URL opens at most: the agent's batches,
#: one for everything else, and the wake-up channel. Waiting callers hold
#: none; other calls wait their turn (bounded by the socket timeout of the
#: call ahead, never reported as an outage).
MAX_CONNECTIONS = 3


def _client_from_url(url: str, socket_timeout: float) -> Redis:
    """A client with a bounded pool: a call beyond MAX_CONNECTIONS at once
    waits for a free connection (each call ahead is bounded by the socket
    timeout: never an outage of its own) instead of opening one more;
    waiting tasks need no connection."""
    try:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=None,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )
    except (ValueError, TypeError) as exc:  # redis-py's word for a URL it cannot read
        raise InvalidArgumentError(
            f"redis must be a Redis URL such as 'redis://127.0.0.1:6379/0' (or rediss://, unix://), not {url!r}: {exc}"
        ) from exc
    return Redis.from_pool(pool)


class AsyncThrottle:
    """A fleet-wide adaptive concurrency limit per (provider, model, domain).

    ``redis`` is a URL, or a client the caller keeps ownership of (a plain,
    Sentinel-backed or cluster client). Every process of a fleet should use
    the same ``namespace`` and ``config``.

    ``socket_timeout`` bounds each Redis call of a client made from a URL
    (a client passed in keeps its own). With ``fail_open``, an acquire that
    finds Redis unreachable takes a slot of a per-process limit instead of
    raising ``RedisUnavailableError``. An ``observer`` (see
    ``aimd_redis.observer``; ``aimd_redis.otel.OtelObserver`` records
    OpenTelemetry metrics) is told of every grant, refusal and outcome.
    """

    def __init__(
        self,
        redis: str | Redis | RedisCluster,
        *,
        config: ThrottleConfig | None = None,
        namespace: str = "aimd",
        socket_timeout: float = URL_SOCKET_TIMEOUT_SECONDS,
        fail_open: FailOpen | None = None,
        observer: Observer | None = None,
    ) -> None:
        if config is not None and not isinstance(config, ThrottleConfig):
            raise ArgumentTypeError(f"config must be a ThrottleConfig, not {type(config).__name__}")
        if fail_open is not None and not isinstance(fail_open, FailOpen):
            raise ArgumentTypeError(f"fail_open must be a FailOpen, not {type(fail_open).__name__}")
        if not (isinstance(socket_timeout, (int, float)) and 0 < socket_timeout < float("inf")):
            raise InvalidArgumentError(f"socket_timeout must be a number of seconds above 0, not {socket_timeout!r}")
        self.config = config if config is not None else ThrottleConfig()
        cluster = isinstance(redis, RedisCluster)
        # Cluster: sharded pub/sub, so a wake-up stays on the node that owns the model.
        self._core = Core(self.config, namespace, sharded_pubsub=cluster)
        # Names this process's wake channel and queue entries; every lease id
        # starts with it. Made anew in a child after fork (see _agent_for).
        self._client_id = secrets.token_hex(6)
        self._pid = os.getpid()
        self._agent: AsyncAgent | None = None
        self._owns_redis = isinstance(redis, str)
        # A client passed in is used as given, with at most the agent's batch
        # and one other call of this throttle in flight (a client built here
        # has a pool that small).
        self._gate = None if self._owns_redis else Semaphore(1)
        if isinstance(redis, str):
            redis = _client_from_url(redis, socket_timeout)
        elif not isinstance(redis, (Redis, RedisCluster)):
            raise ArgumentTypeError(
                f"redis must be a Redis URL such as 'redis://127.0.0.1:6379/0', or a {Redis.__module__} "
                f"Redis or RedisCluster client, not {type(redis).__name__}"
            )
        # Any: redis-py annotates its sync and asyncio clients with one shared
        # "Awaitable or value" return type that fits neither.
        self._redis: Any = cast(Any, redis)
        self._runner = AsyncScriptRunner(self._redis, functions=not cluster)
        # Whether the Redis user may run every command the scripts call (checked on the first call).
        self._permitted = False
        self._publish = "spublish" if cluster else "publish"
        self._registrations = AsyncRegistrations(self._core, self._run)
        self._renewals = AsyncRenewals(self._core, self._run)
        self._resender = AsyncResender(self._run, self.config.lease_ttl_seconds)
        # A subscription Redis never confirms is an outage, given the same bound as any call.
        self._confirm = socket_timeout_of(redis) or CONFIRM_SECONDS
        self._cluster = cluster
        self._waker: Waker | None = Waker(redis, sharded=cluster, confirm_seconds=self._confirm)
        self._fail_open = fail_open
        self._local: dict[tuple[str, str, str], LocalLimit] = {}
        self._failing_open = False  # warned, and not yet seen Redis answer again
        self._observer = observer  # told of grants, refusals and outcomes (aimd_redis.observer)

    @property
    def namespace(self) -> str:
        return self._core.namespace

    async def _run(self, call: Call) -> Any:
        self._check_loop()
        if not self._permitted:
            await self._check_permissions(call)
        pending = pending_cancellations()
        if self._agent is not None and self._agent.is_sender():
            reply = await self._runner.run(call)
        else:
            reply = await self._gated(self._runner.run, call)
        # Cancelled meanwhile, which redis-py may have dropped: a reply of a
        # grant is given back, an outcome sent again, by the caller's handler.
        raise_swallowed_cancellation(pending)
        return reply

    async def _check_permissions(self, call: Call) -> None:
        """Before the first script call: refuse a Redis user who may not run
        every command the scripts call (see aimd_redis/permissions.py). Asked
        again on the next call while refused, then never again."""
        check_probe(await self._gated(self._runner.run, probe_call(call.keys[0])), self._publish)
        self._permitted = True

    @staticmethod
    def _check_loop() -> None:
        if why := blocking_a_running_loop():
            raise EventLoopBlockedError(why)

    async def _gated(self, command: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``command(*args)`` as the one call in flight besides the agent's (see _gate)."""
        gate = self._gate
        if gate is None:
            return await command(*args)
        await gate.acquire(None)
        try:
            return await command(*args)
        finally:
            gate.release()

    async def register(
        self,
        *,
        provider_name: str,
        model_id: str,
        alias: str,
        max_parallel_requests: int,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        now: float | None = None,
    ) -> int:
        """Record ``alias``'s max (and budget, if it sets one) for the model;
        return the model's effective max.

        The effective max is the minimum over the model's aliases; a lower
        value clamps the model's existing domains down at once. The model's
        budget is the least over the aliases that set one, shared by all its
        domains (and lowered further by what the provider's headers say).
        """
        registration = Registration(max_parallel_requests, requests_per_minute, tokens_per_minute)
        return await self._registrations.register(provider_name, model_id, alias, registration, now)

    async def effective_max(self, provider_name: str, model_id: str) -> int:
        """The model's effective max, read without changing anything."""
        key = self._core.keys(provider_name, model_id).cap
        with redis_boundary():
            raw = await self._gated(self._redis.hget, key, "effective_max")
        if raw is None:
            raise NotRegisteredError(f"{provider_name}/{model_id} is not registered: call register(...) first")
        return parse_effective_max(key, raw)

    async def domain_state(self, provider_name: str, model_id: str, domain: str) -> DomainState | None:
        """A snapshot of the domain, or None if it was never touched (a plain read)."""
        key = self._core.keys(provider_name, model_id).domain(check_domain(domain))
        with redis_boundary():
            fields = await self._gated(self._redis.hgetall, key)
        return parse_state(key, fields)

    async def try_acquire(
        self,
        *,
        provider_name: str,
        model_id: str,
        domain: str,
        tokens: int = 0,
        now: float | None = None,
        group: str | None = None,
        weight: float = 1.0,
    ) -> AsyncLease | Denied:
        """Take a slot if one is free now, else say why not and how long to wait.

        Never queues, and never takes a slot a queued waiter is owed. With a
        budget, the slot comes with one request and ``tokens`` (the request's
        estimate) of the model's budget, or not at all. The lease counts in
        ``group`` (see ``acquire``)."""
        call, ref = self._core.acquire_call(
            provider_name,
            model_id,
            domain,
            now,
            self._core.new_lease_id(self._client_id, check_group(group)),
            tokens=tokens,
            group=group,
            weight=weight,
        )
        try:
            if now is None:  # with the process's other callers, in its agent's next batch
                result: Grant | Denied | Queued = await self._agent_for().try_acquire(ref)
            else:
                result = await self._acquire_once(call, ref, now)
        except RedisUnavailableError as exc:
            return await self._open_fallback(provider_name, model_id, domain, 0, exc)
        self._redis_answers()
        assert not isinstance(result, Queued)
        if isinstance(result, Denied):
            if self._observer is not None:
                self._observer.denied(ref, result.reason, result.state, 0.0)
            return result
        return self._observed(self._renewals.hold(AsyncLease(self, result), now), 0.0)

    async def _acquire_once(self, call: Call, ref: LeaseRef, now: float | None) -> Grant | Denied | Queued:
        try:
            try:
                reply = await self._run(call)
            except NotRegisteredError:
                if not await self._registrations.restore(ref.provider_name, ref.model_id, now):
                    raise
                reply = await self._run(call)
        except REFUSED_BEFORE_RUNNING:
            raise  # Redis, or the script, refused before granting anything
        except BaseException:
            # Cancelled, interrupted or cut off: the script may have granted
            # the slot without our seeing the reply. Give it back by its id.
            await self._resender.run_quietly(self._core.release_call(ref, "abandon", None, now), ref)
            raise
        return self._core.parse_acquire(ref, reply)

    async def _open_fallback(
        self, provider_name: str, model_id: str, domain: str, timeout: float | None, exc: RedisUnavailableError
    ) -> AsyncLease | Denied:
        """With fail_open, a slot of this process's own limit for the domain;
        without, the outage as it came."""
        if self._fail_open is None:
            raise exc
        concurrency = self._fail_open.concurrency
        if not self._failing_open:
            self._failing_open = True
            logger.warning(
                "Redis is unreachable (%s); failing open with at most %d request(s) at once per domain "
                "in this process until it answers again",
                exc,
                concurrency,
            )
        local = self._local.setdefault((provider_name, model_id, domain), LocalLimit(concurrency))
        if not await local.take(timeout):
            return Denied(reason="at_capacity", retry_in=self.config.wait_poll_seconds, state=local_state(local))
        lease_id = self._core.new_lease_id("local")
        ref = LeaseRef(provider_name=provider_name, model_id=model_id, domain=domain, lease_id=lease_id)
        return AsyncLease(self, Grant(ref=ref, expires_at=0.0, state=local_state(local)), local=local)

    def _redis_answers(self) -> None:
        if self._failing_open:
            self._failing_open = False
            logger.warning("Redis answers again: slots come from the fleet's limit again")

    async def acquire(
        self,
        *,
        provider_name: str,
        model_id: str,
        domain: str,
        tokens: int = 0,
        timeout: float | None = None,
        group: str | None = None,
        weight: float = 1.0,
    ) -> AsyncLease:
        """Wait for a slot; ``timeout=None`` waits for ever, ``0`` fails at once.

        While the domain is full, freed slots go to the waiting groups of the
        whole fleet in proportion to their ``weight`` (callers without a
        ``group`` form one group), and within a group to the longest waiting
        caller, who is woken on its process's channel. Raises AcquireTimeout
        when no slot came in time; never sleeps past the deadline, and leaves
        the queue on timeout or cancellation. ``tokens`` are reserved with the
        slot as in ``try_acquire``; a request larger than the model's whole
        budget per minute raises RequestTooLargeError at once.
        """
        limit = check_timeout(timeout)
        if limit == 0:
            result = await self.try_acquire(
                provider_name=provider_name,
                model_id=model_id,
                domain=domain,
                tokens=tokens,
                group=group,
                weight=weight,
            )
            if isinstance(result, Denied):
                raise self._timed_out(timeout, provider_name, model_id, domain, result.reason, result.state)
            return result
        started = time.monotonic()
        try:
            lease = await self._wait_in_queue(
                provider_name, model_id, domain, tokens, timeout, limit, started, check_group(group), weight
            )
        except AcquireTimeout:
            if self._observer is not None:
                ref = LeaseRef(provider_name=provider_name, model_id=model_id, domain=domain, lease_id="")
                self._observer.denied(ref, "timeout", None, time.monotonic() - started)
            raise
        except RedisUnavailableError as exc:
            left = None if limit is None else max(0.0, limit - (time.monotonic() - started))
            got = await self._open_fallback(provider_name, model_id, domain, left, exc)
            if isinstance(got, Denied):
                why = "Redis unreachable, local limit full"
                raise self._timed_out(timeout, provider_name, model_id, domain, why, got.state) from exc
            return got
        self._redis_answers()
        return self._observed(lease, time.monotonic() - started)

    def _observed(self, lease: AsyncLease, waited: float) -> AsyncLease:
        if self._observer is not None:
            self._observer.granted(lease.ref, lease.state, waited)
        return lease

    async def _wait_in_queue(
        self,
        provider_name: str,
        model_id: str,
        domain: str,
        tokens: int,
        timeout: float | None,
        limit: float | None,
        started: float,
        group: str | None,
        weight: float,
    ) -> AsyncLease:
        # Built (and the names checked) first: a bad name reaches nothing.
        _, ref = self._core.acquire_call(
            provider_name,
            model_id,
            domain,
            None,
            self._core.new_lease_id(self._client_id, group),
            tokens=tokens,
            wait=True,
            group=group,
            weight=weight,
        )
        agent = self._agent_for()
        # A cancellation that redis-py's subscribe dropped is raised before
        # the caller queues.
        pending = pending_cancellations()
        if self._waker is not None:
            channel = self._core.keys(provider_name, model_id).wake_prefix + self._client_id
            agent.watching(channel, provider_name, model_id)
            with redis_boundary():
                await self._waker.watch(channel)
        raise_swallowed_cancellation(pending)
        left = None if limit is None else max(0.0, limit - (time.monotonic() - started))
        grant = await agent.acquire(ref, left)
        if grant is None:
            state = agent.state(provider_name, model_id, domain)
            raise self._timed_out(timeout, provider_name, model_id, domain, "queued", state)
        self._log_queue("got a slot", ref, started)
        return self._renewals.hold(AsyncLease(self, grant), None)

    def _agent_for(self) -> AsyncAgent:
        """The process's agent; in a child after fork(), a new one (with an id,
        wake channel and queue entries of its own)."""
        self._check_loop()
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._client_id = secrets.token_hex(6)
            self._agent = None
            self._renewals.clear()  # the parent's leases: the parent renews and reports them
            self._resender.clear()
            if self._waker is not None:  # its connection is the parent's
                self._waker = Waker(self._redis, sharded=self._cluster, confirm_seconds=self._confirm)
        if self._agent is None:
            self._agent = AsyncAgent(
                self._core,
                self._client_id,
                lambda call: self._run(call),
                self._registrations.restore,
                self._renewals.acked,
            )
            if self._waker is not None:
                self._waker.route(self._client_id, self._agent.on_wake)
        return self._agent

    @staticmethod
    def _log_queue(what: str, ref: LeaseRef, started: float) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            waited = time.monotonic() - started
            logger.debug("%s/%s %s: %s after %.3fs", ref.provider_name, ref.model_id, ref.domain, what, waited)

    @staticmethod
    def _timed_out(
        timeout: float | None, provider_name: str, model_id: str, domain: str, why: str, state: DomainState | None
    ) -> AcquireTimeout:
        seen = (
            ""
            if state is None
            else (f", limit {state.current_limit}, in flight {state.in_flight}, waiters {state.waiters}")
        )
        return AcquireTimeout(
            f"timed out after {timeout}s waiting for a slot on {provider_name}/{model_id} {domain} ({why}{seen})"
        )

    def slot(
        self,
        *,
        provider_name: str,
        model_id: str,
        domain: str,
        tokens: int = 0,
        timeout: float | None = None,
        group: str | None = None,
        weight: float = 1.0,
    ) -> AsyncSlot:
        """Context manager around acquire: leaving the block reports success,
        unless an outcome was already reported; an exception reports failure."""
        check_group(group)
        check_weight(weight)
        return AsyncSlot(self, provider_name, model_id, domain, tokens, timeout, group, weight)

    async def _release(
        self,
        lease: AsyncLease,
        outcome: Outcome,
        retry_after: float | None,
        now: float | None,
        tokens: int | None = None,
        headers: Mapping[str, str] | None = None,
        ttfb: float | None = None,
    ) -> ReleaseResult:
        await self._check_report(lease, retry_after, now, tokens, headers, ttfb=ttfb)
        if lease.local is not None:  # taken while failing open: nothing to tell Redis
            if not lease.reported:
                lease.reported = True
                lease.local.give()
                return ReleaseResult(released=True, state=local_state(lease.local))
            return ReleaseResult(released=False, state=local_state(lease.local))
        result, _ = await self._report(lease, outcome, retry_after, now, None, tokens, headers, ttfb)
        return result

    async def _check_report(
        self,
        lease: AsyncLease,
        retry_after: float | None,
        now: float | None,
        tokens: int | None,
        headers: Mapping[str, str] | None,
        timeout: float | None = None,
        next_tokens: int = 0,
        ttfb: float | None = None,
    ) -> None:
        """Refuse a report's bad argument before anything else, and give the
        lease back without an outcome (see AsyncLease.success)."""
        try:
            check_now(now)
            check_retry_after(retry_after)
            check_ttfb(ttfb)
            if tokens is not None:
                check_int("tokens", tokens, 0, MAX_BUDGET)
            if headers is not None and not isinstance(headers, Mapping):
                raise ArgumentTypeError(f"headers must be a mapping of names to values, not {type(headers).__name__}")
            check_timeout(timeout)
            check_int("next_tokens", next_tokens, 0, MAX_BUDGET)
        except AimdRedisError:
            if not lease.reported:
                lease.reported = True
                if lease.local is not None:
                    lease.local.give()
                else:
                    self._renewals.forget(lease.id)
                    await self._resender.run_quietly(
                        self._core.release_call(lease.ref, "abandon", None, None), lease.ref
                    )
            raise

    async def _report(
        self,
        lease: AsyncLease,
        outcome: Outcome,
        retry_after: float | None,
        now: float | None,
        next_ref: LeaseRef | None,
        tokens: int | None = None,
        headers: Mapping[str, str] | None = None,
        ttfb: float | None = None,
    ) -> tuple[ReleaseResult, Grant | None]:
        """Report the outcome (with the tokens used and the response's
        headers, if known); with ``next_ref``, take that next lease in the
        same call if a slot is free for it."""
        heard = None if headers is None else read_rate_limit_headers(headers)
        call = self._core.release_call(
            lease.ref, outcome, retry_after, now, lease.granted_at, next_ref, tokens, heard, ttfb
        )
        self._renewals.forget(lease.id)  # reported: never renewed again, whatever comes of the call
        if now is None and next_ref is None:  # in the agent's next batch
            row = self._core.outcome_row(lease.ref, outcome, retry_after, lease.granted_at, tokens, heard, ttfb)
            agent = self._agent_for()
            return await self._reported(lease, outcome, call, agent.submit(lease.ref, row)), None
        try:
            reply = await self._run(call)
        except BaseException as exc:
            # Refused, or cut off mid-call (it may or may not have run): the
            # outcome is sent again until Redis takes it. That is safe, since
            # a lease is released at most once, and gives the slot back as
            # soon as Redis answers again. A next lease the call may have
            # taken is given back by its id.
            plain = (
                call
                if next_ref is None
                else self._core.release_call(
                    lease.ref, outcome, retry_after, now, lease.granted_at, None, tokens, heard, ttfb
                )
            )
            if isinstance(exc, AimdRedisError):
                self._resender.keep(plain, lease.ref, exc)
            else:  # cancelled or interrupted: sent again at once, the slot back within a round trip
                await self._resender.run_quietly(plain, lease.ref)
            if next_ref is not None and not isinstance(exc, REFUSED_BEFORE_RUNNING):
                give_back = self._core.release_call(next_ref, "abandon", None, now)
                if isinstance(exc, RedisUnavailableError):  # no use waiting out another timeout now
                    self._resender.keep(give_back, next_ref, exc)
                else:
                    await self._resender.run_quietly(give_back, next_ref)
            raise
        self._resender.sent(lease.id)
        lease.reported = True
        result, registered, taken = self._core.parse_release(lease.ref, reply, next_ref)
        if self._observer is not None:
            self._observer.reported(lease.ref, outcome, result)
        if result.released and not registered:
            await self._registrations.restore_quietly(lease.ref)
        return result, taken

    async def _reported(self, lease: AsyncLease, outcome: Outcome, call: Call, box: Mailbox[Any]) -> ReleaseResult:
        """The outcome an agent's batch took (``call``: the same outcome on its own,
        sent again until Redis takes it should the batch fail)."""
        try:
            released, registered, state = await self._agent_for().reported(box, lease.ref)
        except BaseException as exc:
            self._resender.keep(call, lease.ref, exc)
            raise
        self._resender.sent(lease.id)
        lease.reported = True
        result = ReleaseResult(released=released, state=state)
        if self._observer is not None:
            self._observer.reported(lease.ref, outcome, result)
        if released and not registered:
            await self._registrations.restore_quietly(lease.ref)
        return result

    async def _success_and_acquire(
        self, lease: AsyncLease, timeout: float | None, tokens: int | None, next_tokens: int
    ) -> AsyncLease:
        await self._check_report(lease, None, None, tokens, None, timeout, next_tokens)
        ref = lease.ref
        if lease.local is None and self._pid == os.getpid():
            # The outcome and the next acquire go in one batch, the outcome first.
            call = self._core.release_call(ref, "success", None, None, lease.granted_at, None, tokens)
            self._renewals.forget(lease.id)
            agent = self._agent_for()
            row = self._core.outcome_row(ref, "success", None, lease.granted_at, tokens)
            box = agent.submit(ref, row, now=False)
            try:
                return await self.acquire(
                    provider_name=ref.provider_name,
                    model_id=ref.model_id,
                    domain=ref.domain,
                    tokens=next_tokens,
                    timeout=timeout,
                    group=ref.group,
                    weight=ref.weight,
                )
            finally:
                agent.send(ref, box)  # should the acquire not have gone through the agent
                with contextlib.suppress(AimdRedisError):
                    await self._reported(lease, "success", call, box)
        if lease.local is None:
            next_ref = LeaseRef(
                provider_name=ref.provider_name,
                model_id=ref.model_id,
                domain=ref.domain,
                lease_id=self._core.new_lease_id(self._client_id, ref.group),
                tokens=next_tokens,
                group=ref.group,
                weight=ref.weight,
            )
            try:
                _, grant = await self._report(lease, "success", None, None, next_ref, tokens)
            except RedisUnavailableError:
                if self._fail_open is None:
                    raise
                grant = None  # the report goes out again once Redis answers; acquire fails open
            if grant is not None:
                self._redis_answers()
                return self._observed(self._renewals.hold(AsyncLease(self, grant), None), 0.0)
        else:
            await self._release(lease, "success", None, None)
        return await self.acquire(
            provider_name=ref.provider_name,
            model_id=ref.model_id,
            domain=ref.domain,
            tokens=next_tokens,
            timeout=timeout,
            group=ref.group,
            weight=ref.weight,
        )

    async def set_limit(
        self, provider_name: str, model_id: str, domain: str, limit: int, *, now: float | None = None
    ) -> int:
        """Set a domain's current limit by hand (clamped to 1..effective max; a
        running ramp stops). Returns the limit in force. Logged as an event."""
        reply = await self._run(self._core.set_limit_call(provider_name, model_id, domain, limit, now))
        return int(reply)

    async def configure(
        self, provider_name: str, model_id: str, settings: Mapping[str, float | str], *, now: float | None = None
    ) -> dict[str, float | str]:
        """Change some of the model's stored loop settings (names as in
        ThrottleConfig, e.g. ``{"reduce_factor": 0.5}``); returns every
        setting now stored. Each change is an event of the model; the next
        ``register`` stores its own configuration again."""
        call = self._core.configure_call(provider_name, model_id, dict(settings), now)
        return self._core.parse_configure(provider_name, model_id, await self._run(call))

    async def reset(
        self, provider_name: str, model_id: str, domain: str | None = None, *, now: float | None = None
    ) -> int:
        """Delete the state and leases of one domain, or of every domain of the
        model; the next acquire starts afresh. Returns how many existed."""
        if domain is None:
            index = self._core.keys(provider_name, model_id).index
            with redis_boundary():
                names = sorted(as_str(n) for n in await self._gated(self._redis.smembers, index))
        else:
            names = [domain]
        if not names:
            return 0
        return int(await self._run(self._core.reset_call(provider_name, model_id, names, now)))

    async def aclose(self) -> None:
        """Stop renewing leases, and close the Redis client if this throttle
        created it from a URL. Leases still held expire after their ttl."""
        await self._renewals.stop()
        if self._agent is not None and self._pid == os.getpid():  # what it has pending goes out first
            with contextlib.suppress(Exception):
                await self._agent.stop()
        await self._resender.stop()
        if self._waker is not None:
            await self._waker.close()
        if self._owns_redis:
            await self._redis.aclose()

    async def __aenter__(self) -> AsyncThrottle:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncLease:
    """A granted slot. Report one outcome: success, rate_limited or failure
    (or give it back untouched).

    A lease nobody reports or renews is reclaimed after ``lease_ttl_seconds``.
    """

    def __init__(self, throttle: AsyncThrottle, grant: Grant, *, local: LocalLimit | None = None) -> None:
        self._throttle = throttle
        self.local = local
        """The per-process limit it came from, when taken while failing open."""
        self.ref = grant.ref
        self.expires_at = grant.expires_at
        """When Redis reclaims the lease unless it is renewed (Redis clock)."""
        self.granted_at = grant.granted_at
        """When Redis granted it (Redis clock)."""
        self.reported = False
        """Whether an outcome call has completed (released or not)."""
        self.state = grant.state
        """The domain as it was when the slot was granted."""

    @property
    def id(self) -> str:
        return self.ref.lease_id

    @property
    def tokens(self) -> int:
        """The tokens this lease reserved of the model's budget."""
        return self.ref.tokens

    async def success(
        self,
        now: float | None = None,
        *,
        tokens: int | None = None,
        headers: Mapping[str, str] | None = None,
        ttfb: float | None = None,
    ) -> ReleaseResult:
        """Report success. ``tokens``: what the request used (the response's
        usage); the difference from the reservation goes back to the budget,
        or is charged. ``headers``: the response's, whose rate-limit headers
        teach the fleet the provider's budget and what is left of it.
        ``ttfb``: seconds from sending the request to its first byte, for a
        streamed answer (``policy="latency"`` reads it as the server's
        queueing; otherwise it reads the lease's time, per token used).

        A bad argument (any outcome method's) raises InvalidArgumentError or
        ArgumentTypeError and gives the slot back at once, reporting nothing:
        the fleet gets the slot back and the loop learns nothing from a
        report it could not read; a report after that changes nothing."""
        return await self._throttle._release(self, "success", None, now, tokens, headers, ttfb)

    async def success_and_acquire(
        self, *, timeout: float | None = None, tokens: int | None = None, next_tokens: int = 0
    ) -> AsyncLease:
        """Report success (``tokens`` used, as ``success`` takes them) and take
        the next slot of the same domain (reserving ``next_tokens``).

        In a worker's loop this is one round trip per request: the next slot
        comes back with the report when one is free and nobody is waiting
        (a queued waiter is always served first). Otherwise it waits as
        ``acquire(timeout=...)`` does; the success is reported either way."""
        return await self._throttle._success_and_acquire(self, timeout, tokens, next_tokens)

    async def rate_limited(
        self, retry_after: float | None = None, now: float | None = None, *, headers: Mapping[str, str] | None = None
    ) -> ReleaseResult:
        """Report a 429. ``retry_after`` in seconds sets the cooldown; a
        missing, non-positive or non-finite value means ``cooldown_seconds``
        (at most ``max_cooldown_seconds``). The reserved tokens go back to the
        budget (a refused request used none) and its request stays counted;
        then the budget's buckets are emptied, unless ``headers`` say what the
        provider has left: it refused, whatever the estimates said."""
        return await self._throttle._release(self, "rate_limited", retry_after, now, None, headers)

    async def failure(self, now: float | None = None, *, headers: Mapping[str, str] | None = None) -> ReleaseResult:
        """Report a failure (an error, a broken connection). The reservation
        stays counted: the request may have been served in part."""
        return await self._throttle._release(self, "failure", None, now, None, headers)

    async def give_back(self, now: float | None = None) -> ReleaseResult:
        """Return the slot as if it had never been taken: the rules learn
        nothing (the request was never sent, or was abandoned before the
        server answered) and a token reservation goes back whole."""
        return await self._throttle._release(self, "abandon", None, now)

    async def renew(self, now: float | None = None) -> bool:
        """Push the expiry back by ``lease_ttl_seconds``; False if the lease is gone."""
        return await self._throttle._renewals.renew_one(self, now)

    def __repr__(self) -> str:
        r = self.ref
        return f"<{type(self).__name__} {r.provider_name}/{r.model_id} {r.domain} id={r.lease_id}>"


class AsyncSlot:
    """What ``AsyncThrottle.slot`` returns."""

    def __init__(
        self,
        throttle: AsyncThrottle,
        provider_name: str,
        model_id: str,
        domain: str,
        tokens: int,
        timeout: float | None,
        group: str | None,
        weight: float,
    ) -> None:
        self._throttle = throttle
        self._target = (provider_name, model_id, domain)
        self._tokens = tokens
        self._timeout = timeout
        self._group = (group, weight)
        self._lease: AsyncLease | None = None

    async def __aenter__(self) -> AsyncLease:
        provider_name, model_id, domain = self._target
        group, weight = self._group
        self._lease = await self._throttle.acquire(
            provider_name=provider_name,
            model_id=model_id,
            domain=domain,
            tokens=self._tokens,
            timeout=self._timeout,
            group=group,
            weight=weight,
        )
        return self._lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lease = self._lease
        if lease is None or lease.reported:
            return
        # The request's own outcome stands: a report Redis did not take is sent
        # again in the background (and logged), not raised over it.
        with contextlib.suppress(AimdRedisError):
            if exc_type is None:
                await lease.success()
            else:
                await lease.failure()
