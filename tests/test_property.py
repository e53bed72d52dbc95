"""Random operation sequences on the scripts and on the reference model,
compared field by field after every step."""

from __future__ import annotations

import math

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from redis.cluster import RedisCluster

from aimd_redis import Denied, Lease, NotRegisteredError, Throttle, ThrottleConfig

from .cluster import LocalCluster
from .reference import NotRegistered, RefModel

P, M = "prov", "model"
DOMAINS = ("chat", "embedding")
# Binary fractions only: every sum of times is exact in both languages, so the
# comparison can be exact too.
STEPS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 4.5, 16.0, 64.0])
RETRY_AFTER = st.sampled_from([None, 0.5, 3.0, -1.0, 0.0, math.nan, math.inf])

CONFIGS = st.builds(
    ThrottleConfig,
    policy=st.sampled_from(["classic", "adaptive"]),
    reduce_factor=st.sampled_from([0.5, 0.75, 0.9]),
    additive_increase=st.integers(1, 3),
    success_window=st.integers(1, 4),
    cooldown_seconds=st.sampled_from([0.5, 2.0]),
    ceiling_overshoot=st.sampled_from([0.0, 0.1, 0.5]),
    rampup_seconds=st.sampled_from([0.0, 4.0, 16.0]),
    lease_ttl_seconds=st.sampled_from([8.0, 32.0]),
    ceiling_ttl_seconds=st.sampled_from([0.0, 20.0]),
    idle_ttl_seconds=st.just(0.0),
)


class ThrottleMachine(RuleBasedStateMachine):
    """Subclassed per backend with a ``make_client`` that returns an empty database."""

    @staticmethod
    def make_client() -> redis.Redis:
        raise NotImplementedError

    @initialize(config=CONFIGS)
    def setup(self, config: ThrottleConfig) -> None:
        self.client = self.make_client()
        self.throttle = Throttle(self.client, config=config)
        self.ref = RefModel(config)
        self.now = 1000.0
        self.leases: list[tuple[str, Lease]] = []
        self.released: set[str] = set()

    # One rule with weighted operations: left to itself the search spends
    # most steps on registrations and too few on the outcomes that matter.
    @rule(op=st.sampled_from(["acquire"] * 4 + ["report"] * 4 + ["advance"] * 2 + ["register"]), data=st.data())
    def step(self, op: str, data: st.DataObject) -> None:
        if op == "advance":
            self.now += data.draw(STEPS, label="step")
        elif op == "register" or self.ref.emax is None:
            self.register(
                data.draw(st.sampled_from(["a", "b"]), label="alias"), data.draw(st.integers(1, 12), label="max")
            )
        elif op == "acquire" or not self.leases:
            self.acquire(data.draw(st.sampled_from(DOMAINS), label="domain"))
        else:
            self.report(
                data.draw(st.integers(0, len(self.leases) - 1), label="lease"),
                data.draw(st.sampled_from(["success", "success", "rate_limited", "failure"]), label="outcome"),
                data.draw(RETRY_AFTER, label="retry_after"),
                data.draw(st.booleans(), label="keep"),
            )

    def register(self, alias: str, max_parallel: int) -> None:
        got = self.throttle.register(
            provider_name=P, model_id=M, alias=alias, max_parallel_requests=max_parallel, now=self.now
        )
        assert got == self.ref.register(alias, max_parallel)

    def acquire(self, domain: str) -> None:
        try:
            got = self.throttle.try_acquire(provider_name=P, model_id=M, domain=domain, now=self.now)
        except NotRegisteredError:
            with pytest.raises(NotRegistered):
                self.ref.acquire(domain, "x", self.now)
            return
        # The state in the reply is the hash as the script left it.
        assert got.state == self.throttle.domain_state(P, M, domain)
        lease_id = got.id if isinstance(got, Lease) else "denied"
        expected = self.ref.acquire(domain, lease_id, self.now)
        if isinstance(got, Lease):
            assert expected == "granted"
            self.leases.append((domain, got))
        else:
            assert isinstance(got, Denied)
            assert got.reason == expected

    def report(self, pick: int, outcome: str, retry_after: float | None, keep: bool) -> None:
        domain, lease = self.leases[pick]
        if not keep:  # kept leases may be reported again later
            self.leases.remove((domain, lease))
        if outcome == "success":
            result = lease.success(now=self.now)
        elif outcome == "failure":
            result = lease.failure(now=self.now)
        else:
            result = lease.rate_limited(retry_after=retry_after, now=self.now)
        assert result.released == self.ref.release(domain, lease.id, outcome, retry_after, self.now)
        if result.released:
            assert lease.id not in self.released, "a lease was released twice"
            self.released.add(lease.id)

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "throttle"):
            return
        emax = self.ref.emax
        for domain in DOMAINS:
            got = self.throttle.domain_state(P, M, domain)
            want = self.ref.domains.get(domain)
            if want is None:
                assert got is None
                continue
            assert got is not None
            assert {f: getattr(got, f) for f in want.snapshot()} == want.snapshot()
            # The fields beyond the public state too.
            hidden = ("probe_after", "increase_step", "ceiling_confirmed_at")
            raw = self.client.hmget(f"aimd:{{{P}/{M}}}:{domain}", list(hidden))
            assert [float(v) for v in raw] == [float(getattr(want, f)) for f in hidden]
            assert emax is not None
            assert 1 <= got.current_limit <= emax
            live = sum(1 for d, lease in self.leases if d == domain and lease.id not in self.released)
            assert 0 <= got.in_flight <= live


class FakeRedisMachine(ThrottleMachine):
    @staticmethod
    def make_client() -> redis.Redis:
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())


TestOnFakeRedis = FakeRedisMachine.TestCase
TestOnFakeRedis.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture
def real_machine(real_redis_url: str) -> type[ThrottleMachine]:
    class RealRedisMachine(ThrottleMachine):
        @staticmethod
        def make_client() -> redis.Redis:
            client = redis.Redis.from_url(real_redis_url)
            client.flushall()
            return client

    return RealRedisMachine


def test_on_a_real_redis(real_machine: type[ThrottleMachine]) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        real_machine,
        settings=settings(
            max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )


def test_on_a_redis_cluster(local_cluster: LocalCluster) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    class ClusterMachine(ThrottleMachine):
        @staticmethod
        def make_client() -> RedisCluster:
            client = RedisCluster(host="127.0.0.1", port=local_cluster.ports[0])
            client.flushall(target_nodes=RedisCluster.PRIMARIES)
            return client

    run_state_machine_as_test(
        ClusterMachine,
        settings=settings(
            max_examples=30, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
