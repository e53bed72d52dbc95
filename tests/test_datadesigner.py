"""DataDesigner's request admission shared through Redis, checked against
DataDesigner's own in-process controller run through the same steps."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from data_designer.engine.models.request_admission.controller import (
    AdaptiveRequestAdmissionController,
    RequestAdmissionDenied,
    RequestAdmissionError,
    RequestAdmissionLease,
)
from data_designer.engine.models.request_admission.outcomes import RequestReleaseOutcome
from data_designer.engine.models.request_admission.resources import (
    RequestAdmissionItem,
    RequestDomain,
    RequestGroupSpec,
    RequestResourceKey,
)

from aimd_redis import ArgumentTypeError, InvalidArgumentError
from aimd_redis.datadesigner import RedisRequestAdmissionController, group_name

CHAT = RequestResourceKey("local", "m", RequestDomain.CHAT)
# What a snapshot says that does not depend on when it is taken (nor on
# which process asks: last_outcome is the asking process's own).
COMPARED = (
    "effective_max",
    "current_limit",
    "in_flight_count",
    "active_lease_count",
    "waiters",
    "rate_limit_ceiling",
    "consecutive_rate_limits",
)


def item(resource: RequestResourceKey = CHAT, timeout: float | None = None) -> RequestAdmissionItem:
    return RequestAdmissionItem(
        resource=resource, group=RequestGroupSpec(key=resource), queue_wait_timeout_seconds=timeout
    )


@pytest.fixture
def pair(real_redis_url: str) -> Iterator[tuple[RedisRequestAdmissionController, RedisRequestAdmissionController]]:
    """Two controllers of one job (as two processes would have), on a namespace of their own."""
    namespace = f"dd{uuid.uuid4().hex[:8]}"
    with (
        RedisRequestAdmissionController(real_redis_url, namespace=namespace) as a,
        RedisRequestAdmissionController(real_redis_url, namespace=namespace) as b,
    ):
        yield a, b


def snap(controller: Any) -> Any:
    """The chat domain's snapshot, which must exist."""
    snapshot = controller.snapshot(CHAT)
    assert snapshot is not None
    return snapshot


def seen(snapshot: Any) -> dict[str, Any]:
    return {name: getattr(snapshot, name) for name in COMPARED}


def test_two_controllers_share_one_limit_cooldown_and_snapshot_as_datadesigner_does(
    pair: tuple[RedisRequestAdmissionController, RedisRequestAdmissionController],
) -> None:
    a, b = pair
    reference = AdaptiveRequestAdmissionController(a.config)
    for controller, alias, most in ((reference, "gen", 6), (reference, "judge", 4), (a, "gen", 6), (b, "judge", 4)):
        controller.register(provider_name="local", model_id="m", alias=alias, max_parallel_requests=most)

    def both(step: Any) -> tuple[Any, Any]:
        """The step on the reference, and on the shared pair."""
        return step(reference, reference), step(a, b)

    def compare() -> None:
        ref, ours_a, ours_b = (snap(c) for c in (reference, a, b))
        assert seen(ours_a) == seen(ours_b) == seen(ref)
        for ours in (ours_a, ours_b):
            assert ours.cooldown_remaining_seconds == pytest.approx(ref.cooldown_remaining_seconds, abs=1.0)

    assert a.snapshot(CHAT) is None  # nobody touched the domain yet
    leases_ref, leases = both(lambda one, other: [c.try_acquire(item()) for c in (one, other, one, other)])
    assert all(isinstance(x, RequestAdmissionLease) for x in leases_ref + leases)
    assert [x.effective_max for x in leases] == [x.effective_max for x in leases_ref] == [4] * 4
    # The fifth is refused on either side: the four leases fill one limit.
    refused = both(lambda one, other: (one.try_acquire(item()), other.try_acquire(item())))
    for pair_of in refused:
        assert [(d.reason, d.retry_after_seconds) for d in pair_of] == [("no_capacity", None)] * 2
    compare()

    # A 429 with Retry-After: one cut and one cooldown for all.
    for controllers, got in ((reference, leases_ref), (a, leases)):
        owner = controllers if controllers is reference else a
        assert owner.release(got[0], RequestReleaseOutcome(kind="rate_limited", retry_after_seconds=30)).released
    compare()
    assert snap(a).current_limit == 3
    cooled = both(lambda _, other: other.try_acquire(item()))
    for denied in cooled:
        assert isinstance(denied, RequestAdmissionDenied)
        assert denied.reason == "cooldown"
        assert denied.retry_after_seconds == pytest.approx(30, abs=1.0)

    # The rest of the burst: a second 429 of the cascade cuts nothing, a
    # failure keeps the cascade while requests are out, and a cancelled
    # request (given back) says nothing of the server, so the cascade stands.
    rest = (
        RequestReleaseOutcome(kind="rate_limited", retry_after_seconds=30),
        RequestReleaseOutcome(kind="provider_failure"),
        RequestReleaseOutcome(kind="local_cancelled"),
    )
    for i, outcome in enumerate(rest, start=1):
        assert reference.release(leases_ref[i], outcome).released
        assert (a if i % 2 == 0 else b).release(leases[i], outcome).released
        compare()
    assert snap(b).consecutive_rate_limits == 2

    # Only the first release frees a slot, and says so as DataDesigner does.
    again = RequestReleaseOutcome(kind="success")
    assert reference.release(leases_ref[0], again).reason == a.release(leases[0], again).reason == "duplicate"
    assert b.release(leases[0], again).reason == "wrong_controller_generation"
    compare()

    ref_global, ours_global = reference.global_snapshot("local", "m"), b.global_snapshot("local", "m")
    assert ref_global is not None
    assert ours_global is not None
    for name in ("static_cap", "aggregate_in_flight", "aggregate_active_lease_count", "aliases", "raw_caps", "domains"):
        assert getattr(ours_global, name) == getattr(ref_global, name), name
    assert b.global_snapshot("local", "nobody") is reference.global_snapshot("local", "nobody") is None
    assert set(b.snapshots()) == set(reference.snapshots()) == {CHAT}

    unknown = item(RequestResourceKey("local", "unregistered", RequestDomain.CHAT))
    for controller in (reference, a):
        denied = controller.try_acquire(unknown)
        assert isinstance(denied, RequestAdmissionDenied)
        assert denied.reason == "hard_policy_denial"


def test_a_queue_timeout_raises_datadesigners_error_and_leaves_the_queue(
    pair: tuple[RedisRequestAdmissionController, RedisRequestAdmissionController],
) -> None:
    a, b = pair
    for c in pair:
        c.register(provider_name="local", model_id="m", alias="gen", max_parallel_requests=1)
    held = a.acquire_sync(item())
    with pytest.raises(RequestAdmissionError) as caught:
        b.acquire_sync(item(timeout=0.2))
    assert caught.value.decision.reason == "queue_timeout"
    after = snap(b)
    assert (after.in_flight_count, after.waiters) == (1, 0)
    assert a.release(held, RequestReleaseOutcome(kind="success")).released
    assert b.try_acquire(item()).__class__ is RequestAdmissionLease


async def test_an_async_waiter_gets_the_slot_another_process_releases_and_a_cancelled_one_leaks_none(
    pair: tuple[RedisRequestAdmissionController, RedisRequestAdmissionController],
) -> None:
    a, b = pair
    for c in pair:
        c.register(provider_name="local", model_id="m", alias="gen", max_parallel_requests=1)
    held = a.try_acquire(item())
    assert isinstance(held, RequestAdmissionLease)
    with pytest.raises(RuntimeError, match="acquire_async"):
        b.acquire_sync(item())  # inside a running loop it would block it
    cancelled = asyncio.create_task(b.acquire_async(item()))
    waiting = asyncio.create_task(b.acquire_async(item()))
    await asyncio.sleep(0.2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    threading.Timer(0.1, a.release, (held, RequestReleaseOutcome(kind="success"))).start()
    got = await asyncio.wait_for(waiting, timeout=10)
    state = snap(b)
    assert (state.in_flight_count, state.waiters) == (1, 0)
    assert b.release(got, RequestReleaseOutcome(kind="success")).released
    assert snap(b).in_flight_count == 0


def test_a_closed_controller_refuses_with_shutdown_and_gives_its_slots_back(real_redis_url: str) -> None:
    namespace = f"dd{uuid.uuid4().hex[:8]}"
    with RedisRequestAdmissionController(real_redis_url, namespace=namespace) as watcher:
        controller = RedisRequestAdmissionController(real_redis_url, namespace=namespace)
        controller.register(provider_name="local", model_id="m", alias="gen", max_parallel_requests=2)
        controller.acquire_sync(item())
        controller.close()
        assert snap(watcher).in_flight_count == 0
        with pytest.raises(RequestAdmissionError) as caught:
            controller.acquire_sync(item())
        assert caught.value.decision.reason == "shutdown"
        denied = controller.try_acquire(item())
        assert isinstance(denied, RequestAdmissionDenied)
        assert denied.reason == "shutdown"


def test_a_datadesigner_job_in_two_processes_keeps_to_one_limit(real_redis_url: str) -> None:
    example = Path(__file__).parent.parent / "examples" / "datadesigner_fleet.py"
    command = [sys.executable, str(example), "--url", real_redis_url, "--records", "12"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("worker: 12 records, 12 notes written") == 2, done.stdout
    summary = done.stdout.rsplit("server: ", 1)[1]
    at_most = int(summary.split("at most ")[1].split()[0])
    assert 1 <= at_most <= 4, summary  # two processes, each registering 4: still 4 at the server


def _lease_groups(real_redis_url: str, namespace: str) -> list[str]:
    """The group in each live lease id of the chat domain ('default' for none)."""
    client = redis.Redis.from_url(real_redis_url, decode_responses=True)
    try:
        ids = client.zrange(f"{namespace}:{{local/m}}:chat:leases", 0, -1)
    finally:
        client.close()
    return sorted(str(i).partition(".")[0].partition("~")[2] or "default" for i in ids)


def grouped(key: RequestResourceKey, weight: float = 1.0) -> RequestAdmissionItem:
    return RequestAdmissionItem(resource=CHAT, group=RequestGroupSpec(key=key, weight=weight))


def test_request_groups_reach_the_fleets_queue(real_redis_url: str) -> None:
    namespace = f"dd{uuid.uuid4().hex[:8]}"
    other = RequestResourceKey("local", "m/v2", RequestDomain.EMBEDDING)
    with (
        RedisRequestAdmissionController(real_redis_url, namespace=namespace) as plain,
        RedisRequestAdmissionController(real_redis_url, namespace=namespace, group="nightly", weight=3) as job,
    ):
        plain.register(provider_name="local", model_id="m", alias="gen", max_parallel_requests=8)
        # DataDesigner's own items: the group is the item's resource, the default group here.
        assert isinstance(plain.try_acquire(item()), RequestAdmissionLease)
        # A group named after another resource.
        assert isinstance(plain.acquire_sync(grouped(other)), RequestAdmissionLease)
        # The controller's group, whatever the item's.
        assert isinstance(job.try_acquire(grouped(other)), RequestAdmissionLease)
        assert isinstance(job.acquire_sync(item()), RequestAdmissionLease)
        assert _lease_groups(real_redis_url, namespace) == sorted(["default", group_name(other), "nightly", "nightly"])
        assert re.fullmatch(r"m-v2-embedding-[0-9a-f]{8}", group_name(other))
        assert group_name(other) != group_name(RequestResourceKey("local", "m-v2", RequestDomain.EMBEDDING))


@pytest.mark.parametrize(
    ("controller", "item_weight", "share"),
    [
        ({}, 1.0, (None, 1.0)),
        ({}, 4.0, (None, 4.0)),
        ({}, 0.25, (None, 1.0)),  # DataDesigner's queue counts a weight below 1 as 1
        ({}, float("inf"), (None, 1000.0)),
        ({}, float("nan"), (None, 1.0)),
        ({"weight": 0.5}, 4.0, (None, 0.5)),
        ({"group": "eval", "weight": 2}, 4.0, ("eval", 2.0)),
        ({"group": "default"}, 4.0, (None, 4.0)),
    ],
)
def test_the_share_of_an_item(
    real_redis_url: str, controller: dict[str, Any], item_weight: float, share: tuple[str | None, float]
) -> None:
    with RedisRequestAdmissionController(real_redis_url, **controller) as c:
        assert tuple(c.share(grouped(CHAT, item_weight))) == share


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"group": "job 1"}, InvalidArgumentError),
        ({"group": "a~b"}, InvalidArgumentError),
        ({"group": 1}, ArgumentTypeError),
        ({"weight": 0}, InvalidArgumentError),
        ({"weight": 1e6}, InvalidArgumentError),
        ({"weight": "1"}, ArgumentTypeError),
    ],
)
def test_a_bad_group_or_weight_is_refused_at_construction(
    real_redis_url: str, settings: dict[str, Any], error: type[Exception]
) -> None:
    threads = threading.active_count()
    with pytest.raises(error, match=r"group|weight"):
        RedisRequestAdmissionController(real_redis_url, **settings)
    assert threading.active_count() == threads  # nothing started


async def test_two_jobs_share_a_full_domain_by_their_weights(real_redis_url: str) -> None:
    """Two jobs' controllers (as two processes would have) queue behind one
    slot; as the slot comes back again and again, the job of weight 3 gets
    three times as many turns as the job of weight 1."""
    namespace = f"dd{uuid.uuid4().hex[:8]}"
    with (
        RedisRequestAdmissionController(real_redis_url, namespace=namespace) as holder,
        RedisRequestAdmissionController(real_redis_url, namespace=namespace, group="big", weight=3) as big,
        RedisRequestAdmissionController(real_redis_url, namespace=namespace, group="small") as small,
    ):
        holder.register(provider_name="local", model_id="m", alias="gen", max_parallel_requests=1)
        held = holder.try_acquire(item())
        assert isinstance(held, RequestAdmissionLease)
        waiting = {asyncio.create_task(c.acquire_async(item(timeout=30))): c for c in (big, small) for _ in range(8)}
        for _ in range(1000):  # until all of them wait (10 s at most)
            if snap(holder).waiters == len(waiting):
                break
            await asyncio.sleep(0.01)
        holder.release(held, RequestReleaseOutcome(kind="success"))
        turns = []
        while waiting:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:  # one at a time: the domain's limit is 1
                owner = waiting.pop(task)
                turns.append("big" if owner is big else "small")
                assert owner.release(task.result(), RequestReleaseOutcome(kind="success")).released
    assert Counter(turns[:8]) == {"big": 6, "small": 2}, turns
