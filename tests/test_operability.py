"""What a person sees and may change with redis-cli."""

from __future__ import annotations

import time

import pytest
import redis
from redis.crc import key_slot

from aimd_redis import CorruptStateError, Denied, Lease, Throttle, ThrottleConfig

from .conftest import MakeThrottle
from .helpers import M, P, fill, grant, rate_limit_at, reg, state, take, wait_until

DOMAIN_KEY = "aimd:{openai/gpt-4o}:chat"


def _snapshot(client: redis.Redis) -> dict[bytes, object]:
    """Every key with its type and value, to prove a call wrote nothing."""
    out: dict[bytes, object] = {}
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[key] = client.smembers(key)
        elif kind == b"stream":
            out[key] = client.xrange(key)
        else:
            out[key] = kind
    return out


def test_keys_follow_the_documented_layout_in_one_cluster_slot(make_throttle: MakeThrottle, client) -> None:
    t = make_throttle()
    reg(t, 4)
    rate_limit_at(t, 0)
    grant(t, 10)
    keys = sorted(k.decode() for k in client.scan_iter("*"))
    assert keys == [
        "aimd:{openai/gpt-4o}:cap",
        "aimd:{openai/gpt-4o}:chat",
        "aimd:{openai/gpt-4o}:chat:leases",
        "aimd:{openai/gpt-4o}:domains",
        "aimd:{openai/gpt-4o}:events",
    ]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    cap = {k.decode(): v.decode() for k, v in client.hgetall("aimd:{openai/gpt-4o}:cap").items()}
    # The registration, and the loop's settings it stored under ThrottleConfig's names, with their id
    # (no reservations: a register that has none leaves the stored ones).
    assert len(cap.pop("settings_id")) == 16
    assert cap == {"effective_max": "4", "alias:gen": "4", **_stored(ThrottleConfig())}


def _stored(config: ThrottleConfig) -> dict[str, str]:
    return {
        name: f"{value:g}" if isinstance(value, float) else str(value)
        for name, value in config.settings().items()
        if value != ""
    }


def test_hash_numbers_are_plain_decimals(make_throttle: MakeThrottle, client) -> None:
    t = make_throttle(cooldown_seconds=2.5)
    reg(t, 4)
    rate_limit_at(t, 1000.25)
    assert client.hget(DOMAIN_KEY, "blocked_until") == b"1002.75"
    assert client.hget(DOMAIN_KEY, "current_limit") == b"3"


def test_the_event_stream_tells_the_story(make_throttle: MakeThrottle, client) -> None:
    t = make_throttle(rampup_seconds=4, reduce_factor=0.5)
    reg(t, 5)
    grant(t, 0)
    take(t, 2)
    rate_limit_at(t, 3)
    events = [
        (f[b"domain"].decode(), f[b"event"].decode(), f[b"from"].decode(), f[b"to"].decode())
        for _, f in client.xrange("aimd:{openai/gpt-4o}:events")
    ]
    assert events == [
        ("*", "effective_max", "0", "5"),
        ("chat", "ramp_start", "0", "1"),
        ("chat", "ramp", "1", "3"),
        ("chat", "ramp", "3", "4"),
        ("chat", "ramp_stopped", "4", "4"),
        ("chat", "cooldown", "3", "5"),
        ("chat", "decrease", "4", "2"),
        ("chat", "ceiling", "0", "4"),
    ]


def test_hand_set_limit_and_cooldown_are_honoured(make_throttle: MakeThrottle, client) -> None:
    t = make_throttle()
    reg(t, 8)
    grant(t, 0)
    client.hset(DOMAIN_KEY, "current_limit", 1)
    assert isinstance(take(t, 0), Denied)
    client.hset(DOMAIN_KEY, mapping={"current_limit": 5, "blocked_until": 50})
    denied = take(t, 40)
    assert isinstance(denied, Denied)
    assert (denied.reason, denied.retry_in) == ("cooldown", 10)
    assert isinstance(take(t, 50), Lease)
    client.hset(DOMAIN_KEY, "current_limit", 1000)  # above the registered max
    take(t, 50)
    assert state(t).current_limit == 8


def test_in_flight_is_recounted_from_the_leases(make_throttle: MakeThrottle, client) -> None:
    t = make_throttle()
    reg(t, 3)
    fill(t, 2, 0)
    client.hset(DOMAIN_KEY, "in_flight", 0)
    take(t, 0)
    assert isinstance(take(t, 0), Denied)
    assert state(t).in_flight == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("current_limit", "abc"),
        ("current_limit", "0"),
        ("current_limit", "2.5"),
        ("blocked_until", "nan"),
        ("blocked_until", "-1"),
        ("success_streak", "inf"),
        ("rate_limit_ceiling", ""),
        ("rampup_active", "2"),
        ("consecutive_429s", "-3"),
        ("current_limit", "0x3"),
        ("blocked_until", "1e300"),
        ("total_429s", "1e16"),
        ("current_limit", "10000000000000000"),
        ("in_flight", "100000000000000000000"),
    ],
)
def test_a_garbage_field_is_a_clear_error_and_writes_nothing(
    make_throttle: MakeThrottle, client, field: str, value: str
) -> None:
    t = make_throttle()
    reg(t, 4)
    lease = grant(t, 0)
    client.hset(DOMAIN_KEY, field, value)
    before = _snapshot(client)
    for call in (lambda: take(t, 1), lambda: lease.success(now=1), lambda: reg(t, 2, alias="x")):
        with pytest.raises(CorruptStateError, match=rf"{DOMAIN_KEY.replace('{', '.').replace('}', '.')} field {field}"):
            call()
        assert _snapshot(client) == before
    with pytest.raises(CorruptStateError, match=field):
        t.domain_state(P, M, "chat")


def test_a_garbage_effective_max_is_a_clear_error(make_throttle: MakeThrottle, client) -> None:
    t = make_throttle()
    reg(t, 4)
    client.hset("aimd:{openai/gpt-4o}:cap", "effective_max", "lots")
    with pytest.raises(CorruptStateError, match="effective_max"):
        take(t, 0)
    with pytest.raises(CorruptStateError, match="effective_max"):
        t.effective_max(P, M)


def test_plain_reads_create_and_advance_nothing(make_throttle: MakeThrottle, client) -> None:
    t = make_throttle(rampup_seconds=10)
    assert t.domain_state(P, M, "chat") is None
    reg(t, 5)
    grant(t, 0)
    before = _snapshot(client)
    t.domain_state(P, M, "chat")
    t.domain_state(P, M, "embedding")
    t.effective_max(P, M)
    assert _snapshot(client) == before


def test_an_idle_model_expires_and_comes_back_with_a_fresh_ramp(client) -> None:
    # Real waiting: key expiry runs on Redis's own clock.
    t = Throttle(client, config=_idle_config())
    assert reg(t, 6) == 6
    lease = t.try_acquire(provider_name=P, model_id=M, domain="chat")
    assert isinstance(lease, Lease)
    lease.success()
    ttl_ms = client.pttl(DOMAIN_KEY)
    assert 0 < ttl_ms <= 400
    time.sleep(0.4)
    # Expired keys count in DBSIZE until Redis's expiry cycle sweeps them.
    wait_until(lambda: client.dbsize() == 0, f"the idle model keys did not expire: {client.keys()}", 5)
    # The client remembers its registration and registers again by itself.
    again = t.try_acquire(provider_name=P, model_id=M, domain="chat")
    assert isinstance(again, Lease)
    assert again.state.rampup_active
    assert again.state.current_limit == 1


def _idle_config():  # type: ignore[no-untyped-def]
    from aimd_redis import ThrottleConfig

    return ThrottleConfig(idle_ttl_seconds=0.4, lease_ttl_seconds=0.4, rampup_seconds=30)


def test_hand_set_numbers_in_other_spellings_are_accepted_and_rewritten_plain(
    make_throttle: MakeThrottle, client
) -> None:
    t = make_throttle()
    reg(t, 8)
    grant(t, 0)
    client.hset(DOMAIN_KEY, mapping={"current_limit": "5.0", "blocked_until": "1e1"})
    denied = take(t, 5)
    assert isinstance(denied, Denied)
    assert denied.retry_in == 5
    assert denied.state.current_limit == 5
    assert client.hmget(DOMAIN_KEY, ["current_limit", "blocked_until"]) == [b"5", b"10"]
