"""Random sequences of grants, outcomes, give-backs, provider headers and
time on the budget, against a reference bucket kept in the test: every grant
and every refusal agrees, and so do the levels after every step."""

from __future__ import annotations

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from aimd_redis import Denied, Lease, Throttle, ThrottleConfig

P, M = "prov", "model"
BUDGET_KEY = f"aimd:{{{P}/{M}}}:cap:budget"
EPS = 1e-6


class RefBucket:
    """The budget's rules, written out plainly: a minute's worth, refilled
    continuously, a debt of at most a minute, refusals emptying it."""

    def __init__(self, rpm: int | None, tpm: int | None, now: float) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.requests, self.tokens, self.at = float(rpm or 0), float(tpm or 0), now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.at) / 60
        if self.rpm:
            self.requests = min(self.rpm, self.requests + self.rpm * elapsed)
        if self.tpm:
            self.tokens = min(self.tpm, self.tokens + self.tpm * elapsed)
        self.at = max(self.at, now)

    def fits_now(self, tokens: int) -> bool:
        ok_requests = not self.rpm or self.requests >= 1 - EPS
        return ok_requests and (not self.tpm or self.tokens >= tokens - EPS)

    def give(self, requests: float, tokens: float) -> None:
        if self.rpm:
            self.requests = min(self.rpm, self.requests + requests)
        if self.tpm:
            self.tokens = max(-self.tpm, min(self.tpm, self.tokens + tokens))

    def heard(self, requests: int | None, tokens: int | None) -> None:
        if self.rpm and requests is not None:
            self.requests = min(self.requests, requests)
        if self.tpm and tokens is not None:
            self.tokens = min(self.tokens, tokens)


class BudgetMachine(RuleBasedStateMachine):
    @staticmethod
    def make_client() -> redis.Redis:
        raise NotImplementedError

    @initialize(
        rpm=st.sampled_from([None, 4, 60]),
        tpm=st.sampled_from([None, 600, 6000]),
    )
    def setup(self, rpm: int | None, tpm: int | None) -> None:
        if rpm is None and tpm is None:
            tpm = 600
        self.client = self.make_client()
        # The adaptive policy pauses nobody at a first 429, and the limit is
        # far above what the steps take: only the budget refuses. Leases never
        # expire here (an expired lease keeps its reservation).
        self.throttle = Throttle(
            self.client, config=ThrottleConfig(policy="adaptive", idle_ttl_seconds=0, lease_ttl_seconds=1e6)
        )
        self.now = 1000.0
        self.throttle.register(
            provider_name=P,
            model_id=M,
            alias="a",
            max_parallel_requests=10_000,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            now=self.now,
        )
        self.ref = RefBucket(rpm, tpm, self.now)
        self.leases: list[Lease] = []

    @rule(step=st.sampled_from([0.0, 0.25, 1.0, 5.0, 30.0, 90.0]))
    def advance(self, step: float) -> None:
        self.now += step

    @rule(tokens=st.sampled_from([0, 1, 50, 300, 599, 601, 5000]), domain=st.sampled_from(["chat", "embedding"]))
    def acquire(self, tokens: int, domain: str) -> None:
        self.ref.refill(self.now)
        if self.ref.tpm is not None and tokens > self.ref.tpm:
            with pytest.raises(ValueError, match="can never fit"):
                self.throttle.try_acquire(provider_name=P, model_id=M, domain=domain, tokens=tokens, now=self.now)
            return
        got = self.throttle.try_acquire(provider_name=P, model_id=M, domain=domain, tokens=tokens, now=self.now)
        if isinstance(got, Lease):
            assert self.ref.fits_now(tokens), "granted beyond the budget"
            self.ref.give(-1, -tokens)
            self.leases.append(got)
        else:
            assert isinstance(got, Denied)
            assert got.reason == "budget"
            assert not self.ref.fits_now(tokens), "refused within the budget"

    @rule(
        data=st.data(),
        outcome=st.sampled_from(["success", "success", "rate_limited", "failure", "abandon"]),
        used=st.sampled_from([None, 0, 40, 700]),
        left=st.sampled_from([None, None, 0, 3, 250, 100_000]),
    )
    def report(self, data: st.DataObject, outcome: str, used: int | None, left: int | None) -> None:
        if not self.leases:
            return
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        self.ref.refill(self.now)
        headers = (
            {}
            if left is None
            else {"x-ratelimit-remaining-requests": str(left), "x-ratelimit-remaining-tokens": str(left)}
        )
        reserved = lease.tokens
        if outcome == "success":
            assert lease.success(now=self.now, tokens=used, headers=headers).released
            self.ref.give(0, 0 if used is None else reserved - used)
        elif outcome == "rate_limited":
            assert lease.rate_limited(now=self.now, headers=headers).released
            self.ref.give(0, reserved)
            self.ref.heard(0 if left is None else left, 0 if left is None else left)
            return
        elif outcome == "failure":
            assert lease.failure(now=self.now, headers=headers).released
        else:
            core = self.throttle._core
            self.throttle._run(core.release_call(lease.ref, "abandon", None, self.now))
            self.ref.give(1, reserved)
            return
        self.ref.heard(left, left)

    @invariant()
    def same_levels(self) -> None:
        if not hasattr(self, "ref"):
            return
        raw = {k.decode(): float(v) for k, v in self.client.hgetall(BUDGET_KEY).items() if k != b"claim"}
        if not raw:  # nothing granted yet: the buckets are full
            return
        # Redis's buckets as last written, brought to the reference's time
        # (a refill in two steps is the same as in one).
        redis_side = RefBucket(self.ref.rpm, self.ref.tpm, raw["refilled_at"])
        redis_side.requests, redis_side.tokens = raw.get("requests", 0.0), raw.get("tokens", 0.0)
        redis_side.refill(self.ref.at)
        if self.ref.rpm:
            assert redis_side.requests == pytest.approx(self.ref.requests, abs=1e-6)
        if self.ref.tpm:
            assert redis_side.tokens == pytest.approx(self.ref.tokens, abs=1e-6)


class FakeBudgetMachine(BudgetMachine):
    @staticmethod
    def make_client() -> redis.Redis:
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())


TestBudgetOnFakeRedis = FakeBudgetMachine.TestCase
TestBudgetOnFakeRedis.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_the_budget_on_a_real_redis(real_redis_url: str) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    class RealBudgetMachine(BudgetMachine):
        @staticmethod
        def make_client() -> redis.Redis:
            client = redis.Redis.from_url(real_redis_url)
            client.flushall()
            return client

    run_state_machine_as_test(
        RealBudgetMachine,
        settings=settings(
            max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
