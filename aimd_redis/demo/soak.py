"""``aimd-redis soak``: a fleet under faults, then a check that nothing leaked.

Worker processes x asyncio tasks call the cold server through the httpx
transport while everything goes wrong on purpose: the server answers random
429s and 5xx, tasks cancel requests half way and give up on acquires after a
few milliseconds, every worker now and then cancels all its tasks at once
(as a TaskGroup that fails or a graceful shutdown does) and starts new ones,
the parent SIGKILLs a worker every few seconds (and starts another). With
the private Redis, more: Redis is killed and restarted empty in the middle,
and every few seconds one of four faults in turn: writes paused (CLIENT
PAUSE), memory full (maxmemory at what is in use, nothing evicted), a
client with a wrong password trying its luck, and one whose ACL lacks a
command the scripts call. At the end, once the killed workers' leases have
expired: no domain has anything in flight, no lease or waiter is left, the
server never saw more requests at once than the registered maximum, the
wrong password and the missing permission never got a slot, every
cancelled task ended at once, and no worker died of an exception it did
not expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from aimd_redis import (
    AcquireTimeout,
    AsyncThrottle,
    FailOpen,
    Lease,
    RedisAuthenticationError,
    RedisOutOfMemoryError,
    RedisPermissionError,
    RedisUnavailableError,
    Throttle,
    ThrottleConfig,
)
from aimd_redis.demo.coldserver import ColdServer, ServerSettings
from aimd_redis.demo.embedded import EmbeddedRedis, server_binary
from aimd_redis.httpx import AsyncAimdTransport, openai_router
from aimd_redis.keys import model_keys
from aimd_redis.ops.acl import acl_rule

PROVIDER, MODEL, DOMAIN = "soak", "soak-model", "chat"
COUNTERS = (
    "ok", "rate_limited", "server_errors", "cancelled", "timeouts", "outages", "full", "storms", "unexpected",
)  # fmt: skip
#: The private Redis's password (the wrong-password fault needs one to get wrong).
PASSWORD = "soak"
#: How long the tasks of a worker may take to end once all are cancelled at
#: once: a round trip each, or a write pause or a busy machine at worst.
STORM_BOUND_SECONDS = 5.0
#: The command the user of the missing-permission fault lacks: one the scripts call late.
LACKING = "pexpire"


@dataclass(frozen=True)
class SoakSettings:
    processes: int = 16
    tasks: int = 4
    seconds: float = 60.0
    peak: int = 16
    """``max_parallel_requests`` registered, and the server's capacity."""
    kill_every: float = 5.0
    """Seconds between SIGKILLs of a random worker."""
    restart_redis: bool = True
    """Kill and restart the private Redis (empty) half way."""
    fault_every: float = 4.0
    """Seconds between the private Redis's faults (pause, memory full, wrong password, missing
    permission), in turn; 0: none."""
    storm_every: float = 3.0
    """Mean seconds between a worker's cancelling all its tasks at once; 0: never."""
    seed: int = 1
    namespace: str = "aimd-soak"
    """Apart from any real fleet's keys when pointed at a shared Redis."""

    def config(self) -> ThrottleConfig:
        # Short leases, so that a killed worker's slots come back within the run.
        return ThrottleConfig(
            rampup_seconds=3.0,
            lease_ttl_seconds=3.0,
            idle_ttl_seconds=30.0,
            wait_poll_seconds=0.5,
            cooldown_seconds=0.2,
        )


def _worker(index: int, redis_url: str, server_url: str, s: SoakSettings, counts: Any, stop: Any) -> None:
    try:
        asyncio.run(_work(index, redis_url, server_url, s, counts, stop))
    except BaseException:
        traceback.print_exc()
        with counts["unexpected"].get_lock():
            counts["unexpected"].value += 1
        sys.exit(1)


async def _work(index: int, redis_url: str, server_url: str, s: SoakSettings, counts: Any, stop: Any) -> None:
    throttle = AsyncThrottle(redis_url, config=s.config(), namespace=s.namespace, socket_timeout=1.0)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

    def count(name: str) -> None:
        with counts[name].get_lock():
            counts[name].value += 1

    async def task(client: httpx.AsyncClient, rng: random.Random) -> None:
        while not stop.is_set():
            roll = rng.random()
            try:
                if roll < 0.05:  # a caller that gives up half way
                    request = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
                    await asyncio.sleep(rng.uniform(0, 0.05))
                    request.cancel()
                    await asyncio.gather(request, return_exceptions=True)
                    count("cancelled")
                elif roll < 0.10:  # an impatient acquire
                    lease = await throttle.acquire(
                        provider_name=PROVIDER, model_id=MODEL, domain=DOMAIN, timeout=rng.uniform(0, 0.02)
                    )
                    await lease.success()
                    count("ok")
                else:
                    response = await client.post("/v1/chat/completions", json=body)
                    if response.status_code == 200:
                        count("ok")
                    elif response.status_code == 429:
                        count("rate_limited")
                    else:
                        count("server_errors")
            except AcquireTimeout:
                count("timeouts")
            except (RedisUnavailableError, httpx.TransportError):
                count("outages")
                await asyncio.sleep(0.2)
            except RedisOutOfMemoryError:  # refused as a whole: nothing happened
                count("full")
                await asyncio.sleep(0.2)
            except Exception:
                traceback.print_exc()
                count("unexpected")

    try:
        while True:
            try:
                await throttle.register(
                    provider_name=PROVIDER, model_id=MODEL, alias="soak", max_parallel_requests=s.peak
                )
                break
            except (RedisUnavailableError, RedisOutOfMemoryError):  # started while Redis was down, or full
                await asyncio.sleep(0.2)
        rng = random.Random(s.seed * 1000 + index)
        transport = AsyncAimdTransport(throttle, router=openai_router(PROVIDER))
        async with httpx.AsyncClient(transport=transport, base_url=server_url, timeout=10) as client:
            while not stop.is_set():
                tasks = [asyncio.create_task(task(client, random.Random(rng.random()))) for _ in range(s.tasks)]
                if s.storm_every <= 0:
                    await asyncio.gather(*tasks)
                    break
                await asyncio.wait(tasks, timeout=rng.expovariate(1 / s.storm_every))
                for running in tasks:  # a cancellation storm: every task at once, wherever it is
                    running.cancel()
                _, stuck = await asyncio.wait(tasks, timeout=STORM_BOUND_SECONDS)
                count("storms")
                if stuck:
                    print(f"{len(stuck)} of {len(tasks)} cancelled tasks still running after {STORM_BOUND_SECONDS}s")
                    count("unexpected")
                    return
    finally:
        await throttle.aclose()


@dataclass
class SoakResult:
    counts: dict[str, int]
    requests: int
    server_429s: int
    server_errors: int
    kills: int
    redis_restarts: int
    faults: dict[str, int]
    """How often each fault of the private Redis was applied."""
    wrong_password: tuple[int, int]
    """(attempts refused with RedisAuthenticationError, slots it got anyway)."""
    lacking_permission: tuple[int, int]
    """(attempts refused with RedisPermissionError, slots it got anyway)."""
    reclaimed: int
    max_concurrency: int
    allowed: int
    in_flight: int
    leases: int
    waiters: int
    failed_workers: int

    @property
    def ok(self) -> bool:
        return (
            self.counts["unexpected"] == 0
            and self.failed_workers == 0
            and self.max_concurrency <= self.allowed
            and (self.in_flight, self.leases, self.waiters) == (0, 0, 0)
            and self.wrong_password[1] == 0
            and self.lacking_permission[1] == 0
        )

    def lines(self) -> list[str]:
        c = self.counts
        return [
            f"requests the server saw   {self.requests:,} ({self.server_429s:,} 429s, {self.server_errors:,} 5xx)",
            f"callers saw               {c['ok']:,} ok, {c['rate_limited']:,} 429, {c['server_errors']:,} 5xx, "
            f"{c['cancelled']:,} cancelled, {c['timeouts']:,} acquire timeouts, {c['outages']:,} outages, "
            f"{c['full']:,} refused while Redis was full",
            f"cancellation storms       {c['storms']:,} (every task of a worker at once)",
            f"workers SIGKILLed         {self.kills} (replaced each time)",
            f"Redis restarts            {self.redis_restarts}",
            "faults                    "
            + (", ".join(f"{name} x{n}" for name, n in self.faults.items()) or "none (a Redis of your own)"),
            f"wrong password            {self.wrong_password[0]:,} attempts refused, "
            f"{self.wrong_password[1]} slot(s) obtained",
            f"missing permission        {self.lacking_permission[0]:,} attempts refused ({LACKING}), "
            f"{self.lacking_permission[1]} slot(s) obtained",
            f"leases reclaimed          {self.reclaimed}",
            f"most requests at once     {self.max_concurrency} (allowed {self.allowed})",
            f"left at the end           in flight {self.in_flight}, leases {self.leases}, waiters {self.waiters}",
            f"unexpected exceptions     {c['unexpected']}; workers that died on their own {self.failed_workers}",
        ]


class _Faults:
    """The private Redis's faults, one every ``fault_every`` seconds in turn,
    each in a thread of its own so that the parent's schedule goes on."""

    def __init__(self, server: EmbeddedRedis, namespace: str) -> None:
        self.server = server
        self.namespace = namespace
        self.applied = {"writes paused": 0, "memory full": 0, "wrong password": 0, "missing permission": 0}
        self.refused = self.slots = 0
        self.unpermitted = self.unpermitted_slots = 0
        self._turn = 0
        self._threads: list[threading.Thread] = []

    def next(self) -> None:
        name = list(self.applied)[self._turn % len(self.applied)]
        self._turn += 1
        self.applied[name] += 1
        act = {
            "writes paused": self._pause,
            "memory full": self._fill,
            "wrong password": self._intrude,
            "missing permission": self._lacking,
        }[name]
        thread = threading.Thread(target=self._quietly, args=(act,), name=f"soak fault: {name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _quietly(self, act: Any) -> None:
        with contextlib.suppress(redis.RedisError):  # Redis may be down (restarting) at that moment
            act()

    def _admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, socket_timeout=5)

    def _pause(self) -> None:
        with self._admin() as admin:
            admin.execute_command("CLIENT", "PAUSE", 800, "WRITE")

    def _fill(self) -> None:
        with self._admin() as admin:
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", used)  # full: anything that needs memory is refused
            try:
                time.sleep(1.0)
            finally:
                admin.config_set("maxmemory", 0)

    def _intrude(self) -> None:
        wrong = self.server.url.replace(f":{PASSWORD}@", ":wrong@")
        t = Throttle(wrong, config=ThrottleConfig(), socket_timeout=1, fail_open=FailOpen(concurrency=4))
        try:
            for _ in range(20):
                try:
                    got = t.try_acquire(provider_name=PROVIDER, model_id=MODEL, domain=DOMAIN)
                except RedisAuthenticationError:
                    self.refused += 1
                else:
                    self.slots += isinstance(got, Lease)
                time.sleep(0.05)
        finally:
            t.close()

    def _lacking(self) -> None:
        """A user whose ACL lacks one command the scripts call late: refused
        before any script runs, never with a slot left behind."""
        rule = [c for c in acl_rule("lacking", [self.namespace], password="lacking") if c != f"+{LACKING}"]
        with self._admin() as admin:
            admin.execute_command("ACL", "SETUSER", *rule)
        lacking = self.server.url.replace(f":{PASSWORD}@", ":lacking@").replace("//:", "//lacking:")
        t = Throttle(lacking, config=ThrottleConfig(), namespace=self.namespace, socket_timeout=1)
        try:
            for _ in range(5):
                try:
                    got = t.try_acquire(provider_name=PROVIDER, model_id=MODEL, domain=DOMAIN)
                except RedisPermissionError:
                    self.unpermitted += 1
                except (RedisUnavailableError, RedisOutOfMemoryError):
                    pass  # another fault at the same moment
                else:
                    self.unpermitted_slots += isinstance(got, Lease)
                time.sleep(0.05)
        finally:
            t.close()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(10)


def run(url: str | None, s: SoakSettings, progress: bool = True) -> SoakResult:
    embedded = EmbeddedRedis(password=PASSWORD) if url is None and server_binary() else None
    if url is None and embedded is None:
        embedded = EmbeddedRedis(allow_fake=True)  # fakeredis: no restart, no faults
    redis_url = url or embedded.url  # type: ignore[union-attr]
    own_server = embedded is not None and embedded.kind != "fakeredis"
    restarts = s.restart_redis and own_server
    faults = _Faults(embedded, s.namespace) if embedded is not None and own_server and s.fault_every > 0 else None
    server_settings = ServerSettings(
        peak=s.peak, warmup_seconds=0, service_seconds=0.1, retry_after_seconds=0.2, error_rate=0.03, reject_rate=0.005
    )
    ctx = multiprocessing.get_context("spawn")
    counts = {name: ctx.Value("q", 0) for name in COUNTERS}
    stop = ctx.Event()
    rng = random.Random(s.seed)
    kills = restarted = reclaimed = failed = 0
    admin: Any = redis.Redis.from_url(redis_url, socket_timeout=2)
    keys = model_keys(s.namespace, PROVIDER, MODEL)
    try:
        with ColdServer(server_settings) as server:

            def spawn(i: int) -> Any:
                p = ctx.Process(target=_worker, args=(i, redis_url, server.url, s, counts, stop), name=f"soak-{i}")
                p.start()
                return p

            procs = [spawn(i) for i in range(s.processes)]
            started = time.monotonic()
            next_kill, next_print, restart_at = s.kill_every, 5.0, s.seconds / 2
            next_fault = s.fault_every
            while (elapsed := time.monotonic() - started) < s.seconds:
                if elapsed >= next_kill:
                    victim = rng.randrange(len(procs))
                    procs[victim].kill()
                    procs[victim].join()
                    procs[victim] = spawn(len(procs) + kills)
                    kills += 1
                    next_kill += s.kill_every
                if faults is not None and elapsed >= next_fault:
                    faults.next()
                    next_fault += s.fault_every
                if restarts and embedded is not None and elapsed >= restart_at:
                    reclaimed += int(admin.hget(keys.domain(DOMAIN), "total_reclaimed") or 0)
                    embedded.crash()
                    # Down for a second, and on until a worker has felt it
                    # (at most 5 s): on a loaded machine a second can pass
                    # with every task inside a request.
                    felt, down_until = counts["outages"].value, time.monotonic() + 1.0
                    while time.monotonic() < down_until or (
                        counts["outages"].value == felt and time.monotonic() < down_until + 4.0
                    ):
                        time.sleep(0.05)
                    embedded.restart()
                    restarted += 1
                    restart_at = float("inf")
                if progress and elapsed >= next_print:
                    done = {n: v.value for n, v in counts.items()}
                    print(
                        f"{elapsed:5.0f}s  ok {done['ok']:,}  429 {done['rate_limited']:,}  "
                        f"5xx {done['server_errors']:,}  kills {kills}  outages {done['outages']:,}  "
                        f"unexpected {done['unexpected']}",
                        flush=True,
                    )
                    next_print += 5.0
                time.sleep(0.05)
            stop.set()
            if faults is not None:
                faults.join()
            for p in procs:
                p.join(30)
                if p.is_alive():  # did not stop when told: as bad as a crash
                    p.kill()
                    p.join()
                if p.exitcode != 0:
                    failed += 1
            stats = server.stats()
        # The killed workers' leases expire within lease_ttl; any script run reaps them.
        time.sleep(s.config().lease_ttl_seconds + 0.5)
        checker = Throttle(admin, config=s.config(), namespace=s.namespace)
        checker.register(provider_name=PROVIDER, model_id=MODEL, alias="soak", max_parallel_requests=s.peak)
        probe = checker.try_acquire(provider_name=PROVIDER, model_id=MODEL, domain=DOMAIN)
        if isinstance(probe, Lease):
            probe.success()
        state = checker.domain_state(PROVIDER, MODEL, DOMAIN)
        reclaimed += int(admin.hget(keys.domain(DOMAIN), "total_reclaimed") or 0)
        result = SoakResult(
            counts={n: v.value for n, v in counts.items()},
            requests=stats.requests,
            server_429s=stats.rejected,
            server_errors=stats.errors,
            kills=kills,
            redis_restarts=restarted,
            faults=faults.applied if faults is not None else {},
            wrong_password=(faults.refused, faults.slots) if faults is not None else (0, 0),
            lacking_permission=(faults.unpermitted, faults.unpermitted_slots) if faults is not None else (0, 0),
            reclaimed=reclaimed,
            max_concurrency=stats.max_concurrency,
            allowed=s.peak,
            in_flight=state.in_flight if state else 0,
            # Live leases only: a negative score is a give-back's tombstone, not a slot.
            leases=int(admin.zcount(f"{keys.domain(DOMAIN)}:leases", "(0", "+inf")),
            waiters=int(admin.zcard(keys.queue(DOMAIN)[0])),
            failed_workers=failed,
        )
        checker.close()
        return result
    finally:
        admin.close()
        if embedded is not None:
            embedded.close()
