"""Ways the configuration kept per model, the tokens hash and the give-back
rule could lose a slot, charge nothing or run another database's rules."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from aimd_redis import Lease, Throttle, ThrottleConfig
from aimd_redis.structs import Grant, Queued

from .conftest import MakeThrottle
from .helpers import M, P, grant, reg, state

CAP = f"aimd:{{{P}/{M}}}:cap"
DOMAIN = f"aimd:{{{P}/{M}}}:chat"


def test_a_re_check_cut_off_mid_call_never_takes_a_slot_after_its_give_back(
    make_throttle: MakeThrottle, client: Any
) -> None:
    """A queued waiter's re-check is on its way when the waiter is cancelled;
    its give-back ('abandon') reaches Redis first (another connection, a retry
    after a timeout). The re-check must then grant nothing: no one would ever
    release that slot."""
    t = make_throttle()
    reg(t, 1)
    held = grant(t, 1.0)
    core = t._core
    waiter = core.new_lease_id(t._client_id)
    call, ref = core.acquire_call(P, M, "chat", 1.0, waiter, wait=True)
    assert isinstance(core.parse_acquire(ref, t._run(call)), Queued)
    recheck, _ = core.acquire_call(P, M, "chat", 2.0, waiter, wait=True, recheck=True)  # sent, not yet run
    # Cancelled: the give-back of the waiter runs first...
    t._run(core.release_call(ref, "abandon", None, 2.0))
    assert held.success(now=2.0).released  # nobody waits: the slot is free
    # ... then the re-check that was on its way.
    try:
        got: object = core.parse_acquire(ref, t._run(recheck))
    except RuntimeError:  # 'abandoned before its acquire ran': as it should
        got = None
    assert not isinstance(got, Grant), "a slot was granted to a waiter that had already given up"
    assert state(t).in_flight == 0
    assert isinstance(t.try_acquire(provider_name=P, model_id=M, domain="chat", now=3.0), Lease)


def test_a_held_lease_keeps_its_reservation_while_it_is_renewed(real_redis: redis.Redis, real_redis_url: str) -> None:
    """A lease renewed for longer than the model's idle time (a long request
    in a domain with no other traffic) must still be settled by its
    reservation: renew keeps the domain and its leases alive, and so it must
    the domain's tokens hash, or a success gives back nothing of what the
    lease reserved beyond what it used."""
    import time

    t = Throttle(real_redis_url, config=ThrottleConfig(lease_ttl_seconds=1, idle_ttl_seconds=1))
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=4, tokens_per_minute=600_000)
    lease = t.try_acquire(provider_name=P, model_id=M, domain="chat", tokens=500_000)
    assert isinstance(lease, Lease)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # another domain keeps the model's budget alive
        other = t.try_acquire(provider_name=P, model_id=M, domain="embed")
        assert isinstance(other, Lease)
        other.success()
        time.sleep(0.1)
    assert real_redis.zscore(f"{DOMAIN}:leases", lease.id)  # renewed all along
    assert lease.success(tokens=10).released
    left = float(real_redis.hget(f"{CAP}:budget", "tokens") or 0)
    assert left > 590_000, f"the reservation was lost: {left:.0f} tokens left, not ~600,000"
    t.close()


def test_another_process_s_idle_ttl_never_expires_a_held_lease(real_redis: redis.Redis, real_redis_url: str) -> None:
    """ThrottleConfig refuses idle_ttl_seconds below lease_ttl_seconds "or a
    held lease's domain could expire under it". With the idle expiry now the
    model's (the last register's), a process with long leases is at the
    mercy of one with a short idle time: its held lease's domain expires
    between two renewals and the slot is granted a second time."""
    import time

    long_leases = Throttle(real_redis_url, config=ThrottleConfig(lease_ttl_seconds=6, idle_ttl_seconds=6))
    short_idle = Throttle(real_redis_url, config=ThrottleConfig(lease_ttl_seconds=1, idle_ttl_seconds=1))
    long_leases.register(provider_name=P, model_id=M, alias="a", max_parallel_requests=1)
    short_idle.register(provider_name=P, model_id=M, alias="b", max_parallel_requests=1)
    held = long_leases.try_acquire(provider_name=P, model_id=M, domain="chat")
    assert isinstance(held, Lease)
    time.sleep(3)  # renewed every 2 s
    second = short_idle.try_acquire(provider_name=P, model_id=M, domain="chat")
    assert not isinstance(second, Lease), "a limit of 1, and two leases held"
    held.success()
    long_leases.close()
    short_idle.close()


def test_a_model_runs_the_settings_of_its_own_database(real_redis: redis.Redis, real_redis_url: str) -> None:
    """The function library (and so its cache of configurations, keyed by cap
    key) is one per server, shared by every database: two deployments on
    db 0 and db 1 of one Redis, same namespace and model, run each other's
    rules, and configure writes the other database's settings for good."""
    base = real_redis_url.rsplit("/", 1)[0]
    halving = Throttle(f"{base}/0", config=ThrottleConfig(reduce_factor=0.5, success_window=7))
    gentle = Throttle(f"{base}/1", config=ThrottleConfig(reduce_factor=0.75))
    for t in (halving, gentle):
        t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=40)
    halving.try_acquire(provider_name=P, model_id=M, domain="chat").success()  # db 0's settings, read
    gentle.try_acquire(provider_name=P, model_id=M, domain="chat").rate_limited()
    assert gentle.domain_state(P, M, "chat").current_limit == 30, "db 1 cut by db 0's reduce_factor"
    t1 = redis.Redis.from_url(f"{base}/1")
    halving.try_acquire(provider_name=P, model_id=M, domain="chat").success()
    gentle.configure(P, M, {"ceiling_overshoot": 0.2})
    assert t1.hget(CAP, "success_window") == b"25", "configure stored db 0's success_window in db 1"
    for t in (halving, gentle):
        t.close()
    t1.close()


def test_a_waiter_queued_before_the_budget_was_heard_still_pays_its_tokens(
    make_throttle: MakeThrottle, client: Any
) -> None:
    """No budget registered; the provider's headers tell the token limit on
    the first response (the transports pass them). The waiters queued
    before that (a fleet's first wave) are handed slots afterwards: each
    must take its estimate of the budget, as before the reservations left
    the lease ids, not run free and uncharged."""
    t = make_throttle()
    reg(t, 1)
    held = grant(t, 1.0)
    core = t._core
    call, ref = core.acquire_call(P, M, "chat", 1.0, core.new_lease_id(t._client_id), tokens=600, wait=True)
    assert isinstance(core.parse_acquire(ref, t._run(call)), Queued)
    # The first response says: 1,000 tokens a minute (all of them left).
    headers = {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "1000"}
    assert held.success(now=2.0, headers=headers).released  # the slot goes to the waiter
    left = float(client.hget(f"{CAP}:budget", "tokens"))
    assert left == pytest.approx(400), f"the waiter's 600 tokens were not taken: {left:.0f} left"


@pytest.mark.parametrize("broken", ["nan", "inf", "1e400"])
def test_a_register_repairs_a_hand_broken_setting(make_throttle: MakeThrottle, client: Any, broken: str) -> None:
    """A register stores the whole configuration again (test_config says
    so): its event of the change from the broken text must not make the
    script fail after it wrote (cjson cannot write NaN or Inf)."""
    t = make_throttle()
    reg(t, 4)
    client.hset(CAP, "reduce_factor", broken)
    assert reg(t, 4) == 4
    assert client.hget(CAP, "reduce_factor") == b"0.75"


@pytest.mark.parametrize("setting", [{"cooldown_seconds": 1e-7}, {"reduce_factor": 1e-7}])
def test_a_tiny_setting_is_stored_as_itself(make_throttle: MakeThrottle, setting: dict[str, float]) -> None:
    """A valid ThrottleConfig stored as "0" (six decimals) is a value the
    scripts then call corrupt on every call, configure included."""
    t = make_throttle(**setting)
    reg(t, 4)
    assert isinstance(t.try_acquire(provider_name=P, model_id=M, domain="chat", now=1.0), Lease)


def test_a_domain_created_by_this_release_is_readable_by_the_previous_one(
    make_throttle: MakeThrottle, client: Any
) -> None:
    """A rolling upgrade runs both releases on one model: the previous one
    requires a domain's rampup_seconds field (its FIELD_DEFAULTS have none)
    and refuses a domain without it as corrupt, on every call."""
    t = make_throttle(rampup_seconds=10)
    reg(t, 5)
    grant(t, 100.0)
    assert client.hget(DOMAIN, "rampup_seconds") == b"10"


def test_a_lost_registration_does_not_switch_a_domain_s_policy(make_throttle: MakeThrottle, client: Any) -> None:
    """With the cap hash gone (evicted, deleted) the stored configuration is
    gone too and the scripts read the defaults: a release must not take an
    adaptive domain to classic (resetting its counts) and the next register
    back again."""
    t = make_throttle(policy="adaptive")
    reg(t, 8)
    lease = grant(t, 1.0)
    client.delete(CAP)
    assert lease.success(now=2.0).released
    assert client.hget(DOMAIN, "policy") == b"adaptive"


def test_set_limit_runs_under_the_stored_policy(make_throttle: MakeThrottle, client: Any) -> None:
    """An operator's set-limit right after a change of policy (before any
    call touched the domain): adaptive marks the ceiling above the number,
    so that the loop holds there; it must not run the old policy's rule."""
    t = make_throttle()
    reg(t, 8)
    grant(t, 1.0).success(now=1.0)
    t.configure(P, M, {"policy": "adaptive"}, now=2.0)
    assert t.set_limit(P, M, "chat", 4, now=3.0) == 4
    assert (client.hget(DOMAIN, "policy"), client.hget(DOMAIN, "rate_limit_ceiling")) == (b"adaptive", b"5")
