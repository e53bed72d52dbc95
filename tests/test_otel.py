"""OpenTelemetry metrics through the throttle's observer, read with the SDK's in-memory reader."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import aimd_redis
from aimd_redis import AcquireTimeout, AsyncThrottle, Denied, Lease, Throttle
from aimd_redis.otel import OtelObserver

P, M = "openai", "gpt-4o"
WHERE = {"aimd.provider": P, "aimd.model": M, "aimd.domain": "chat", "aimd.group": ""}


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def by(points: list[Any], key: str) -> dict[str, Any]:
    """Data points by one attribute, each also carrying the domain's attributes."""
    out = {}
    for p in points:
        attrs = dict(p.attributes)
        assert {k: attrs[k] for k in WHERE} == WHERE
        out[attrs[key]] = p
    return out


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def test_grants_refusals_outcomes_and_gauges_are_recorded(
    real_redis: redis.Redis, reader: InMemoryMetricReader
) -> None:
    throttle = Throttle(real_redis, observer=OtelObserver(meter_provider=MeterProvider(metric_readers=[reader])))
    throttle.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=2)
    target = {"provider_name": P, "model_id": M, "domain": "chat"}
    first, second = throttle.try_acquire(**target), throttle.try_acquire(**target)
    assert isinstance(first, Lease)
    assert isinstance(second, Lease)
    assert isinstance(throttle.try_acquire(**target), Denied)  # at capacity
    first.rate_limited(retry_after=30)
    assert isinstance(throttle.try_acquire(**target), Denied)  # in cooldown
    with pytest.raises(AcquireTimeout):
        throttle.acquire(**target, timeout=0.05)
    second.success()
    second.success()  # a second report counts as an outcome, but holds no slot twice
    throttle.close()

    got = points(reader)
    requests = {result: p.value for result, p in by(got["aimd.requests"], "aimd.result").items()}
    assert requests == {"acquired": 2, "at_capacity": 1, "cooldown": 1, "timeout": 1}
    queue = by(got["aimd.request.time_in_queue"], "aimd.result")
    assert (queue["acquired"].count, queue["acquired"].sum) == (2, 0)
    assert queue["timeout"].count == 1
    assert 0.05 <= queue["timeout"].sum < 5
    outcomes = {outcome: p.value for outcome, p in by(got["aimd.request_lease.outcomes"], "aimd.outcome").items()}
    assert outcomes == {"rate_limited": 1, "success": 2}
    held = by(got["aimd.request_lease.duration"], "aimd.outcome")
    assert (held["rate_limited"].count, held["success"].count) == (1, 1)
    assert held["success"].sum >= held["rate_limited"].sum > 0
    (limit,) = got["aimd.concurrency_limit"]
    (active,) = got["aimd.active_request_leases"]
    assert (limit.value, active.value) == (1, 0)  # the 429 cut 2 to 1; both slots are back
    assert dict(limit.attributes) == WHERE


async def test_the_async_throttle_is_observed_alike(
    real_redis: redis.Redis, real_redis_url: str, reader: InMemoryMetricReader
) -> None:
    observer = OtelObserver(meter_provider=MeterProvider(metric_readers=[reader]))
    async with AsyncThrottle(real_redis_url, observer=observer) as throttle:
        await throttle.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=4)
        async with throttle.slot(provider_name=P, model_id=M, domain="chat", timeout=5) as lease:
            assert lease.state.in_flight == 1
    got = points(reader)
    assert [p.value for p in got["aimd.requests"]] == [1]
    assert [p.value for p in got["aimd.request_lease.outcomes"]] == [1]
    assert [p.value for p in got["aimd.active_request_leases"]] == [0]


def test_the_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    assert aimd_redis.__version__ == version("aimd-redis")
    assert aimd_redis.__version__[0].isdigit()
