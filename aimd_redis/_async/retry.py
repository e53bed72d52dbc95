"""Bounded retries of an HTTP request through the shared limit, honouring
the server's Retry-After the way the fleet does: by reporting it on the lease,
so the next attempt (of this process or any other) waits out the cooldown in
``acquire``. aimd_redis/_sync/retry.py is generated from
this file by tools/unasync.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Protocol, TypeVar

from aimd_redis._async.throttle import AsyncLease, AsyncThrottle
from aimd_redis._http import RATE_LIMITED_STATUSES, check_throttle, outcome_of, retry_after_seconds, share_of
from aimd_redis._http import rate_limited_statuses as rate_limited_statuses_of
from aimd_redis.core import check_int

logger = logging.getLogger("aimd_redis")

#: More attempts than anyone should make of one request.
MAX_ATTEMPTS = 100


class HTTPAnswer(Protocol):
    """What the helper reads of a response: httpx's, httpx2's, requests'
    (aiohttp's has ``status``: wrap it)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


AnswerT = TypeVar("AnswerT", bound=HTTPAnswer)


async def report_outcome(
    lease: AsyncLease,
    outcome: str,
    headers: Mapping[str, str],
    *,
    broken: bool = False,
    used: int | None = None,
    ttfb: float | None = None,
) -> None:
    """Report what a response says (``outcome_of`` its status) on its lease;
    ``broken``: its body broke off, a failure whatever the status said;
    ``used``, ``ttfb``: a success's tokens and time to its first byte."""
    if broken or outcome == "failure":
        await lease.failure(headers=headers)
    elif outcome == "rate_limited":
        await lease.rate_limited(retry_after=retry_after_seconds(headers), headers=headers)
    else:
        await lease.success(tokens=used, headers=headers, ttfb=ttfb)


async def with_retries(
    throttle: AsyncThrottle,
    send: Callable[[], Awaitable[AnswerT]],
    *,
    provider_name: str,
    model_id: str,
    domain: str,
    attempts: int = 5,
    tokens: int = 0,
    used: Callable[[AnswerT], int | None] | None = None,
    timeout: float | None = None,
    rate_limited_statuses: Collection[int] = RATE_LIMITED_STATUSES,
    group: str | None = None,
    weight: float = 1.0,
) -> AnswerT:
    """Send a request in a slot of ``throttle``, again while it is refused
    as rate-limited, at most ``attempts`` times in all; return the last
    response.

    Each attempt acquires a slot (reserving ``tokens`` of the model's
    budget), calls ``send()`` (which sends the request and returns its
    response, read) and reports the response on the lease: a 429 (or one of
    ``rate_limited_statuses``) as rate-limited with its Retry-After, so the
    next acquire, here or anywhere in the fleet, waits out the cooldown;
    another 5xx as a failure; anything else as a success, with the tokens
    ``used(response)`` says (default: the estimate stands).

    Only rate-limited responses are retried: a success or a failure comes
    back at once, and an exception from ``send`` is reported as a failure
    and raised. After the last attempt the rate-limited response itself
    comes back, for the caller to raise as it would any error status.
    ``timeout`` bounds the waiting for slots over all attempts
    (``AcquireTimeout``), not the requests themselves. Every attempt waits
    in ``group`` with ``weight`` (see ``AsyncThrottle.acquire``).

    Not for a client that already goes through ``AimdTransport``: that takes
    a slot of its own for the request (a retry there is just a new call).
    """
    check_throttle("with_retries", throttle, AsyncThrottle)
    check_int("attempts", attempts, 1, MAX_ATTEMPTS)
    statuses = rate_limited_statuses_of(rate_limited_statuses)
    group, weight = share_of(group, weight)
    deadline = None if timeout is None else time.monotonic() + timeout
    for attempt in range(1, attempts + 1):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        lease = await throttle.acquire(
            provider_name=provider_name,
            model_id=model_id,
            domain=domain,
            tokens=tokens,
            timeout=left,
            group=group,
            weight=weight,
        )
        try:
            answer = await send()
        except BaseException:
            await lease.failure()
            raise
        outcome = outcome_of(answer.status_code, statuses)
        await report_outcome(lease, outcome, answer.headers, used=None if used is None else used(answer))
        if outcome != "rate_limited":
            return answer
        logger.debug("%s/%s %s: attempt %d of %d rate-limited", provider_name, model_id, domain, attempt, attempts)
    return answer
