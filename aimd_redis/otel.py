"""OpenTelemetry metrics of a throttle, as this process sees it (the ``otel`` extra).

    from aimd_redis import Throttle
    from aimd_redis.otel import OtelObserver

    throttle = Throttle(url, observer=OtelObserver())  # or OtelObserver(meter_provider=...)

The names follow ASP.NET Core's rate-limiting metrics
(``aspnetcore.rate_limiting.requests``, ``.request.time_in_queue``,
``.request_lease.duration``, ``.active_request_leases``) and Envoy's
adaptive-concurrency gauge (``concurrency_limit``), under ``aimd.``:

==================================  =========  ==========================================================
``aimd.requests``                   counter    tries to take a slot, by ``aimd.result``: ``acquired``,
                                               ``at_capacity``, ``cooldown``, ``budget``, ``timeout``
``aimd.request.time_in_queue``      histogram  seconds from asking to the grant or refusal, by ``aimd.result``
``aimd.request_lease.duration``     histogram  seconds a slot was held, by ``aimd.outcome``
``aimd.request_lease.outcomes``     counter    outcomes reported, by ``aimd.outcome``: ``success``,
                                               ``rate_limited``, ``failure``
``aimd.concurrency_limit``          gauge      the domain's shared limit, as last seen
``aimd.active_request_leases``      gauge      the fleet's leases on the domain, as last seen
==================================  =========  ==========================================================

Every point has ``aimd.provider``, ``aimd.model``, ``aimd.domain`` and
``aimd.group`` (empty until requests carry a group): few values each, never
a lease id. The gauges are the fleet's figures as the last reply this
process had showed them; the Prometheus exporter (``aimd-redis exporter``)
reads them from Redis for the whole fleet.
"""

from __future__ import annotations

import contextlib
import time
from functools import lru_cache

from opentelemetry import metrics

from aimd_redis.structs import DomainState, LeaseRef, ReleaseResult

#: Seconds (OpenTelemetry's advice for durations): 5 ms to 10 s, then 30 s and 60 s for long waits.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60)
#: Grant times kept for lease durations; a lease never reported (its process
#: forgot it, Redis reclaimed it) is dropped oldest first beyond this.
_MAX_TRACKED = 100_000


@lru_cache(maxsize=1024)
def _attributes(provider: str, model: str, domain: str) -> dict[str, str]:
    return {"aimd.provider": provider, "aimd.model": model, "aimd.domain": domain, "aimd.group": ""}


def _of(ref: LeaseRef, **more: str) -> dict[str, str]:
    return {**_attributes(ref.provider_name, ref.model_id, ref.domain), **more}


class OtelObserver:
    """Records a throttle's grants, refusals and outcomes as OpenTelemetry
    metrics (an ``aimd_redis.observer.Observer``)."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        from aimd_redis import __version__

        meter = metrics.get_meter("aimd_redis", __version__, meter_provider=meter_provider)
        self._requests = meter.create_counter(
            "aimd.requests", unit="{request}", description="Tries to take a slot, by result"
        )
        self._time_in_queue = meter.create_histogram(
            "aimd.request.time_in_queue",
            unit="s",
            description="Time from asking for a slot to its grant or refusal",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._lease_duration = meter.create_histogram(
            "aimd.request_lease.duration",
            unit="s",
            description="Time a slot was held, by outcome",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._outcomes = meter.create_counter(
            "aimd.request_lease.outcomes", unit="{lease}", description="Outcomes reported, by outcome"
        )
        self._limit = meter.create_gauge(
            "aimd.concurrency_limit", unit="{request}", description="The domain's shared concurrency limit"
        )
        self._active = meter.create_gauge(
            "aimd.active_request_leases", unit="{request}", description="Slots the whole fleet holds on the domain"
        )
        self._granted_at: dict[str, float] = {}

    def _state(self, ref: LeaseRef, state: DomainState | None) -> None:
        if state is not None:
            self._limit.set(state.current_limit, _of(ref))
            self._active.set(state.in_flight, _of(ref))

    def granted(self, ref: LeaseRef, state: DomainState, waited: float) -> None:
        self._requests.add(1, _of(ref, **{"aimd.result": "acquired"}))
        self._time_in_queue.record(waited, _of(ref, **{"aimd.result": "acquired"}))
        if len(self._granted_at) >= _MAX_TRACKED:
            # Another thread may change the dict meanwhile: then it drops one next time.
            with contextlib.suppress(RuntimeError, StopIteration):
                self._granted_at.pop(next(iter(self._granted_at)), None)
        self._granted_at[ref.lease_id] = time.monotonic()
        self._state(ref, state)

    def denied(self, ref: LeaseRef, reason: str, state: DomainState | None, waited: float) -> None:
        self._requests.add(1, _of(ref, **{"aimd.result": reason}))
        self._time_in_queue.record(waited, _of(ref, **{"aimd.result": reason}))
        self._state(ref, state)

    def reported(self, ref: LeaseRef, outcome: str, result: ReleaseResult) -> None:
        self._outcomes.add(1, _of(ref, **{"aimd.outcome": outcome}))
        granted = self._granted_at.pop(ref.lease_id, None)
        if granted is not None:
            self._lease_duration.record(time.monotonic() - granted, _of(ref, **{"aimd.outcome": outcome}))
        self._state(ref, result.state)
