"""Prometheus metrics for every domain of a namespace (the ``metrics`` extra).

Each scrape reads Redis afresh through :func:`aimd_redis.ops.inspect.report`, so
the exporter holds no state and any number of them can run; a group or domain
that has gone is simply not in the next scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from aimd_redis.ops.inspect import SyncClient, report

LABELS = ["provider", "model", "domain"]
GROUP_LABELS = [*LABELS, "group"]


class ThrottleCollector(Collector):
    def __init__(self, client: SyncClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def collect(self) -> Iterator[Any]:
        gauges = {
            "limit": GaugeMetricFamily("aimd_current_limit", "Shared concurrency limit", labels=LABELS),
            "max": GaugeMetricFamily("aimd_effective_max", "Registered effective max", labels=LABELS),
            "in_flight": GaugeMetricFamily("aimd_in_flight", "Live leases", labels=LABELS),
            "waiters": GaugeMetricFamily("aimd_waiters", "Queued waiters", labels=LABELS),
            "cooldown": GaugeMetricFamily("aimd_cooldown_seconds", "Cooldown left after a 429", labels=LABELS),
            "ceiling": GaugeMetricFamily("aimd_rate_limit_ceiling", "Learned ceiling (0: none)", labels=LABELS),
            "noload": GaugeMetricFamily(
                "aimd_latency_noload", "No-load latency, seconds or per token (0: unmeasured)", labels=LABELS
            ),
            "recent": GaugeMetricFamily(
                "aimd_latency_recent", "Recent median latency, seconds or per token (0: unmeasured)", labels=LABELS
            ),
        }
        group_gauges = {
            "in_flight": GaugeMetricFamily("aimd_group_in_flight", "Live leases of the group", labels=GROUP_LABELS),
            "waiting": GaugeMetricFamily("aimd_group_waiting", "Queued callers of the group", labels=GROUP_LABELS),
            "share": GaugeMetricFamily(
                "aimd_group_share", "The group's part of the domain's slots in use (0 to 1)", labels=GROUP_LABELS
            ),
            "reserved": GaugeMetricFamily(
                "aimd_group_reserved", "Slots reserved for the group (0: none)", labels=GROUP_LABELS
            ),
        }
        counters = {
            "429s": CounterMetricFamily("aimd_rate_limited", "429s reported", labels=LABELS),
            "reclaimed": CounterMetricFamily("aimd_reclaimed_leases", "Leases reclaimed on expiry", labels=LABELS),
        }
        model_labels = ["provider", "model", "kind"]
        budget = GaugeMetricFamily(
            "aimd_budget_per_minute", "The model's budget in force (kind: requests or tokens)", labels=model_labels
        )
        budget_left = GaugeMetricFamily("aimd_budget_left", "What is left of the model's budget", labels=model_labels)
        seen: set[tuple[str, str]] = set()
        unreadable = GaugeMetricFamily(
            "aimd_unreadable", "1 when the domain's hash holds a value the scripts refuse", labels=LABELS
        )
        for r in report(self.client, self.namespace):
            labels = [r.provider_name, r.model_id, r.domain]
            unreadable.add_metric(labels, 0 if r.problem is None else 1)
            if r.budget is not None and (r.provider_name, r.model_id) not in seen:  # once per model
                seen.add((r.provider_name, r.model_id))
                for kind, limit, left in r.budget.in_force():
                    budget.add_metric([r.provider_name, r.model_id, kind], limit)
                    budget_left.add_metric([r.provider_name, r.model_id, kind], left)
            if r.problem is not None:
                continue
            gauges["limit"].add_metric(labels, r.current_limit)
            gauges["max"].add_metric(labels, r.effective_max or 0)
            gauges["in_flight"].add_metric(labels, r.in_flight)
            gauges["waiters"].add_metric(labels, r.waiters)
            gauges["cooldown"].add_metric(labels, r.cooldown_left)
            gauges["ceiling"].add_metric(labels, r.rate_limit_ceiling)
            gauges["noload"].add_metric(labels, r.latency_noload)
            gauges["recent"].add_metric(labels, r.latency_recent)
            counters["429s"].add_metric(labels, r.total_429s)
            counters["reclaimed"].add_metric(labels, r.total_reclaimed)
            for g in r.groups:
                group_gauges["in_flight"].add_metric([*labels, g.group], g.in_flight)
                group_gauges["waiting"].add_metric([*labels, g.group], g.waiting)
                group_gauges["share"].add_metric([*labels, g.group], g.share)
                group_gauges["reserved"].add_metric([*labels, g.group], g.reserved)
        yield from gauges.values()
        yield from group_gauges.values()
        yield from counters.values()
        yield budget
        yield budget_left
        yield unreadable


def registry_for(client: SyncClient, namespace: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ThrottleCollector(client, namespace))
    return registry
