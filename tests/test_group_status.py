"""Groups as an operator sees them: ``status`` and the exporter, against a real
redis-server, with the queue and leases written as the scripts lay them out."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

from aimd_redis import Lease, Throttle, ThrottleConfig
from aimd_redis.keys import model_keys
from aimd_redis.ops.cli import main
from aimd_redis.ops.exporter import registry_for

from .cluster import LocalCluster
from .helpers import wait_until

CHAT = "aimd:{openai/gpt-4o}:chat"


@pytest.fixture
def domain(real_redis: redis.Redis) -> str:
    """A registered model with a domain ``chat`` and one ``embedding``, both idle."""
    throttle = Throttle(real_redis)
    throttle.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=8)
    for name in ("chat", "embedding"):
        lease = throttle.try_acquire(provider_name="openai", model_id="gpt-4o", domain=name)
        assert isinstance(lease, Lease)
        lease.success()
    throttle.close()
    return CHAT


def _seed_groups(client: redis.Redis) -> None:
    """Three groups on chat: batch (weight 0.5, three leases, five callers in
    one process), interactive (weight 3 in one process, 1 lease, a single
    waiting call beside) and the default group (a lease, a process wanting 1,
    a single waiting call); plus what must not count."""
    seconds, _micros = client.time()
    live, gone = seconds + 60, seconds - 5
    client.zadd(
        f"{CHAT}:leases",
        {
            "c1~batch.a1": live,
            "c1~batch.a2": live,
            "c2~batch.h7": live,  # a slot handed to a process, not acked yet
            "c2~interactive.b1": live,
            "c3.c1": live,
            "c1~batch.old": gone,  # expired, not reaped yet
            "c1~batch.gave-up": -1,  # the tombstone of an abandoned acquire
        },
    )
    client.hset(
        f"{CHAT}:want",
        mapping={"c1~batch": "5x0.5=10:3,14:2", "c2~interactive": "2x3=11:2", "c3": "1=12:1", "*": "8"},
    )
    client.zadd(
        f"{CHAT}:queue",
        {"c1~batch": 10, "c2~interactive": 11, "c3": 12, "c4~interactive.t1": 11.5, "c5.t2": 13},
    )
    client.zadd(f"{CHAT}:groups", {"batch": 20, "interactive": 12, "default": 14})
    client.hset(CHAT, mapping={"waiters": 10, "in_flight": 6, "in_flight:batch": 4, "in_flight:interactive": 1})


def _status(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str]:
    code = main(["status", "--url", url, *argv])
    return code, capsys.readouterr().out


def test_status_json_shows_each_groups_in_flight_waiting_weight_and_share(
    domain: str, real_redis: redis.Redis, real_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_groups(real_redis)
    code, out = _status(capsys, real_redis_url, "--json")
    assert code == 0
    by_domain = {r["domain"]: r for r in json.loads(out)}
    chat = by_domain["chat"]
    assert (chat["in_flight"], chat["waiters"]) == (5, 10)
    assert chat["groups"] == [
        {"group": "batch", "in_flight": 3, "waiting": 5, "weight": 0.5, "share": 0.6, "reserved": 0},
        {"group": "default", "in_flight": 1, "waiting": 2, "weight": 1.0, "share": 0.2, "reserved": 0},
        {"group": "interactive", "in_flight": 1, "waiting": 3, "weight": 3.0, "share": 0.2, "reserved": 0},
    ]
    # what the groups count adds up to the domain's own numbers
    assert sum(g["in_flight"] for g in chat["groups"]) == chat["in_flight"]
    assert sum(g["waiting"] for g in chat["groups"]) == chat["waiters"]
    assert by_domain["embedding"]["groups"] == []


def test_status_table_has_a_line_per_group_under_its_domain(
    domain: str, real_redis: redis.Redis, real_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_groups(real_redis)
    code, out = _status(capsys, real_redis_url, "openai/gpt-4o")
    assert code == 0
    lines = out.splitlines()
    chat = next(i for i, line in enumerate(lines) if line.split()[:1] == ["chat"])
    assert [line.split() for line in lines[chat + 1 : chat + 4]] == [
        ["batch", "in", "flight", "3", "waiting", "5", "weight", "0.5", "share", "60%"],
        ["default", "in", "flight", "1", "waiting", "2", "weight", "1", "share", "20%"],
        ["interactive", "in", "flight", "1", "waiting", "3", "weight", "3", "share", "20%"],
    ]
    # the groups' columns line up, indented under the domain's name
    assert len({line.index("in flight") for line in lines[chat + 1 : chat + 4]}) == 1
    assert lines[chat + 1].startswith("    batch")
    assert lines[chat + 4].split()[:1] == ["embedding"]


def test_a_group_alone_in_flight_is_shown_without_waiters(
    domain: str, real_redis: redis.Redis, real_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seconds, _micros = real_redis.time()
    real_redis.zadd(f"{CHAT}:leases", {"c1~batch.a1": seconds + 60, "c1.b1": seconds + 60})
    real_redis.hset(CHAT, mapping={"in_flight": 2, "in_flight:batch": 1})
    code, out = _status(capsys, real_redis_url, "openai/gpt-4o", "chat", "--json")
    assert code == 0
    (chat,) = json.loads(out)
    assert [(g["group"], g["in_flight"], g["waiting"], g["share"]) for g in chat["groups"]] == [
        ("batch", 1, 0, 0.5),
        ("default", 1, 0, 0.5),
    ]


def test_requests_without_a_group_alone_show_no_group_lines(
    domain: str, real_redis: redis.Redis, real_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seconds, _micros = real_redis.time()
    real_redis.zadd(f"{CHAT}:leases", {"c1.a1": seconds + 60})
    real_redis.hset(f"{CHAT}:want", mapping={"c1": "4=3:4", "*": "4"})
    real_redis.zadd(f"{CHAT}:queue", {"c1": 3})
    real_redis.hset(CHAT, mapping={"waiters": 4, "in_flight": 1})
    code, out = _status(capsys, real_redis_url, "openai/gpt-4o", "chat", "--json")
    assert code == 0
    (chat,) = json.loads(out)
    assert (chat["in_flight"], chat["waiters"], chat["groups"]) == (1, 4, [])
    code, out = _status(capsys, real_redis_url, "openai/gpt-4o", "chat")
    assert out.splitlines()[-1].split()[:4] == ["chat", "8", "1", "4"]


def test_a_group_that_only_waits_shows_beside_the_one_in_flight(
    real_redis: redis.Redis, real_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    throttle = Throttle(real_redis)
    where = {"provider_name": "openai", "model_id": "gpt-4o", "domain": "chat"}
    throttle.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=1)
    held = throttle.try_acquire(**where)  # the default group's: the hash counts no named group
    assert isinstance(held, Lease)
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            waiter = pool.submit(throttle.acquire, **where, group="interactive", weight=2, timeout=20)
            wait_until(lambda: (s := throttle.domain_state("openai", "gpt-4o", "chat")) and s.waiters == 1)
            code, out = _status(capsys, real_redis_url, "openai/gpt-4o", "chat", "--json")
            assert code == 0
            assert [(g["group"], g["in_flight"], g["waiting"], g["weight"]) for g in json.loads(out)[0]["groups"]] == [
                ("default", 1, 0, 1.0),
                ("interactive", 0, 1, 2.0),
            ]
        finally:
            held.success()
        waiter.result().success()
    throttle.close()


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        (f"{CHAT}:want", "many=1:1"),
        (f"{CHAT}:want", "3xheavy=1:3"),
        (f"{CHAT}:queue", None),
        (f"{CHAT}:groups", None),
    ],
)
def test_an_unreadable_queue_is_reported_beside_the_other_domains(
    domain: str,
    real_redis: redis.Redis,
    real_redis_url: str,
    capsys: pytest.CaptureFixture[str],
    key: str,
    bad: str | None,
) -> None:
    _seed_groups(real_redis)
    if key.endswith(":groups"):  # read when nothing in the hash says groups are there
        real_redis.hdel(CHAT, "in_flight:batch", "in_flight:interactive")
    if bad is None:
        real_redis.delete(key)
        real_redis.set(key, "x")
    else:
        real_redis.hset(key, "c9~batch", bad)
    code, out = _status(capsys, real_redis_url, "--json")
    assert code == 0
    by_domain = {r["domain"]: r for r in json.loads(out)}
    assert key in by_domain["chat"]["problem"]
    assert by_domain["embedding"]["problem"] is None
    code, out = _status(capsys, real_redis_url)
    assert code == 0
    assert f"UNREADABLE: {key}" in out


def _group_samples(client: redis.Redis) -> dict[tuple[str, str], float]:
    text = generate_latest(registry_for(client, "aimd")).decode()
    return {
        (s.name, s.labels["group"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("aimd_group_")
    }


def test_the_exporter_shows_each_group_and_forgets_one_that_left(domain: str, real_redis: redis.Redis) -> None:
    _seed_groups(real_redis)
    samples = _group_samples(real_redis)
    assert samples[("aimd_group_in_flight", "batch")] == 3
    assert samples[("aimd_group_waiting", "batch")] == 5
    assert samples[("aimd_group_share", "batch")] == pytest.approx(0.6)
    assert samples[("aimd_group_waiting", "default")] == 2
    assert samples[("aimd_group_in_flight", "interactive")] == 1
    assert samples[("aimd_group_share", "interactive")] == pytest.approx(0.2)
    assert {group for _name, group in samples} == {"batch", "default", "interactive"}

    # batch is served and gone: no leases, no entry in the queue
    real_redis.zrem(f"{CHAT}:leases", "c1~batch.a1", "c1~batch.a2", "c2~batch.h7")
    real_redis.hdel(f"{CHAT}:want", "c1~batch")
    real_redis.zrem(f"{CHAT}:queue", "c1~batch")
    real_redis.hset(f"{CHAT}:want", "*", 3)
    real_redis.hset(CHAT, mapping={"waiters": 5, "in_flight": 2, "in_flight:batch": 0})
    samples = _group_samples(real_redis)
    assert {group for _name, group in samples} == {"default", "interactive"}
    assert samples[("aimd_group_share", "interactive")] == pytest.approx(0.5)

    # everyone left: no group series at all
    for suffix in ("leases", "want", "queue"):
        real_redis.delete(f"{CHAT}:{suffix}")
    real_redis.hset(CHAT, mapping={"waiters": 0, "in_flight": 0})
    assert _group_samples(real_redis) == {}


def test_two_groups_waiting_on_a_full_domain_both_show_in_status(
    real_redis: redis.Redis, real_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    throttle = Throttle(real_redis)
    where = {"provider_name": "openai", "model_id": "gpt-4o", "domain": "chat"}
    throttle.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=2)

    def served(group: str, weight: float) -> None:
        assert throttle.acquire(**where, group=group, weight=weight, timeout=20).success().released

    held = [throttle.try_acquire(**where, group="batch"), throttle.try_acquire(**where, group="interactive")]
    with ThreadPoolExecutor(max_workers=5) as pool:
        try:
            assert all(isinstance(lease, Lease) for lease in held)
            waiting = [pool.submit(served, "batch", 1) for _ in range(3)]
            waiting += [pool.submit(served, "interactive", 3) for _ in range(2)]
            wait_until(lambda: (s := throttle.domain_state("openai", "gpt-4o", "chat")) and s.waiters == 5)
            code, out = _status(capsys, real_redis_url, "openai/gpt-4o", "chat", "--json")
            assert code == 0
            (chat,) = json.loads(out)
            assert chat["groups"] == [
                {"group": "batch", "in_flight": 1, "waiting": 3, "weight": 1.0, "share": 0.5, "reserved": 0},
                {"group": "interactive", "in_flight": 1, "waiting": 2, "weight": 3.0, "share": 0.5, "reserved": 0},
            ]
        finally:
            for lease in held:
                if isinstance(lease, Lease):
                    lease.success()
        for future in waiting:
            future.result()
    code, out = _status(capsys, real_redis_url, "openai/gpt-4o", "chat", "--json")
    assert json.loads(out)[0]["groups"] == []  # both groups have gone
    throttle.close()


def test_status_on_a_cluster_reads_the_groups_of_models_on_every_node(
    cluster_client: RedisCluster, local_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    throttle = Throttle(cluster_client)
    models = [f"model-{i}" for i in range(12)]  # spread over the three masters
    for model in models:
        throttle.register(provider_name="openai", model_id=model, alias="gen", max_parallel_requests=1)
        lease = throttle.try_acquire(provider_name="openai", model_id=model, domain="chat", group="batch")
        assert isinstance(lease, Lease)
        key = model_keys("aimd", "openai", model).domain("chat")
        cluster_client.hset(f"{key}:want", mapping={"c2~interactive": "2x3=0:2", "*": "2"})
        cluster_client.zadd(f"{key}:queue", {"c2~interactive": 0})
        cluster_client.hset(key, "waiters", 2)
    assert len({cluster_client.get_node_from_key(model_keys("aimd", "openai", m).cap).name for m in models}) == 3
    url = f"redis://127.0.0.1:{local_cluster.ports[0]}/0"
    code, out = _status(capsys, url, "--cluster", "--json")
    assert code == 0
    shown = {r["model_id"]: r["groups"] for r in json.loads(out)}
    assert shown == {
        model: [
            {"group": "batch", "in_flight": 1, "waiting": 0, "weight": 1.0, "share": 1.0, "reserved": 0},
            {"group": "interactive", "in_flight": 0, "waiting": 2, "weight": 3.0, "share": 0.0, "reserved": 0},
        ]
        for model in models
    }
    throttle.close()


def test_slots_reserved_for_an_idle_group_show_beside_the_busy_one(
    real_redis: redis.Redis, real_redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    throttle = Throttle(real_redis, config=ThrottleConfig(reserved={"interactive": 0.25}))
    throttle.register(provider_name="openai", model_id="gpt-4o", alias="gen", max_parallel_requests=8)
    where = {"provider_name": "openai", "model_id": "gpt-4o", "domain": "chat"}
    leases = [throttle.try_acquire(**where, group="batch") for _ in range(7)]
    assert [isinstance(lease, Lease) for lease in leases] == [True] * 6 + [False]  # 2 of 8 held for interactive
    code, out = _status(capsys, real_redis_url, "openai/gpt-4o", "chat", "--json")
    assert code == 0
    assert [(g["group"], g["in_flight"], g["share"], g["reserved"]) for g in json.loads(out)[0]["groups"]] == [
        ("batch", 6, 1.0, 0),
        ("interactive", 0, 0.0, 2),
    ]
    code, out = _status(capsys, real_redis_url, "openai/gpt-4o", "chat")
    assert out.splitlines()[-1].split() == [
        *("interactive", "in", "flight", "0", "waiting", "0", "weight", "1", "share", "0%", "reserved", "2")
    ]
    samples = _group_samples(real_redis)
    assert (samples[("aimd_group_reserved", "interactive")], samples[("aimd_group_reserved", "batch")]) == (2, 0)
    for lease in leases:
        if isinstance(lease, Lease):
            lease.success()
    throttle.close()
