"""A report refused for a bad argument still gives its slot back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from aimd_redis import AimdRedisError, ArgumentTypeError, InvalidArgumentError, Lease
from tests.conftest import MakeThrottle

TARGET: dict[str, Any] = {"provider_name": "openai", "model_id": "gpt-4o", "domain": "chat"}

BAD_REPORTS: dict[str, tuple[Callable[[Lease], object], type[AimdRedisError]]] = {
    "negative tokens": (lambda lease: lease.success(tokens=-1), InvalidArgumentError),
    "float tokens": (lambda lease: lease.success(tokens=2.5), ArgumentTypeError),  # type: ignore[arg-type]
    "headers as a list": (
        lambda lease: lease.success(headers=[("x-ratelimit-limit-requests", "10")]),  # type: ignore[arg-type]
        ArgumentTypeError,
    ),
    "headers of a failure as a string": (lambda lease: lease.failure(headers="x"), ArgumentTypeError),  # type: ignore[arg-type]
    "retry_after as text": (lambda lease: lease.rate_limited(retry_after="5"), ArgumentTypeError),  # type: ignore[arg-type]
    "now in milliseconds": (lambda lease: lease.failure(now=time.time() * 1000), InvalidArgumentError),
    "next_tokens negative": (lambda lease: lease.success_and_acquire(timeout=1, next_tokens=-1), InvalidArgumentError),
    "timeout negative": (lambda lease: lease.success_and_acquire(timeout=-1), InvalidArgumentError),
}


@pytest.mark.parametrize("case", BAD_REPORTS)
def test_a_report_refused_for_a_bad_argument_gives_the_slot_back(make_throttle: MakeThrottle, case: str) -> None:
    report, error = BAD_REPORTS[case]
    t = make_throttle()
    t.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=1)
    lease = t.acquire(**TARGET, timeout=0)
    with pytest.raises(error):
        report(lease)
    # The slot is back at once, for this process and the fleet, and nothing renews it.
    state = t.domain_state(**TARGET)
    assert state is not None
    assert state.in_flight == 0
    assert not lease.renew()
    # A report that follows changes nothing; the limit learned nothing from it either.
    assert lease.success().released is False
    assert t.domain_state(**TARGET) == state
    t.acquire(**TARGET, timeout=0).success()
