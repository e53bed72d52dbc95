"""The soak, short: a fleet under faults leaves nothing behind. The full one
is `aimd-redis soak` (16 processes x 4 tasks for 60 s)."""

from __future__ import annotations

from aimd_redis.demo.soak import SoakSettings, run

from .conftest import needs_server


def test_a_short_soak_leaks_nothing() -> None:
    needs_server("the soak (it restarts the server half way)")
    result = run(None, SoakSettings(processes=6, tasks=4, seconds=15, kill_every=3, fault_every=3), progress=False)
    summary = "\n".join(result.lines())
    assert result.kills >= 4, summary
    assert result.redis_restarts == 1, summary
    assert result.counts["outages"] > 0, summary  # the restart was felt...
    assert result.counts["ok"] > 100, summary  # ...and the work went on
    assert result.reclaimed > 0, summary  # the killed workers' slots came back
    assert result.counts["storms"] > 0, summary  # every cancelled task ended at once (else "unexpected")
    assert result.lacking_permission[0] > 0, summary  # refused before any script ran...
    assert result.lacking_permission[1] == 0, summary  # ...and never with a slot
    assert result.counts["unexpected"] == 0, summary
    assert result.failed_workers == 0, summary
    assert result.max_concurrency <= result.allowed, summary
    assert (result.in_flight, result.leases, result.waiters) == (0, 0, 0), summary
