"""The fleet runner and the demo: real worker processes, a real redis-server,
real HTTP to the cold server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from aimd_redis import ThrottleConfig
from aimd_redis.demo.coldserver import ColdServer, Record, ServerSettings
from aimd_redis.demo.fleet import DOMAIN, MODEL, PROVIDER, FleetRun, FleetSettings, Sample, run_fleet, summarize

SERVER = ServerSettings(peak=3, warmup_seconds=0.5, service_seconds=0.05, retry_after_seconds=0.1)


def _fleet(strategy: str, namespace: str, **changes: object) -> FleetSettings:
    settings: dict[str, object] = {
        "processes": 2,
        "tasks": 4,
        "strategy": strategy,
        "peak": 6,
        "requests": 120,
        "config": ThrottleConfig(rampup_seconds=1.0, cooldown_seconds=0.1),
        "namespace": namespace,
    }
    return FleetSettings(**{**settings, **changes})  # type: ignore[arg-type]


def test_a_shared_fleet_does_its_work_and_leaves_nothing_behind(real_redis: redis.Redis, real_redis_url: str) -> None:
    with ColdServer(SERVER) as server:
        run = run_fleet(real_redis_url, server, _fleet("shared", "t-shared"))
    m = summarize(run, warmup_seconds=SERVER.warmup_seconds, service_seconds=SERVER.service_seconds, peak=SERVER.peak)
    assert (m.served, m.failed_workers, m.leases_left, m.waiters_left) == (120, 0, 0, 0)
    assert m.max_concurrency <= 6  # the registered peak: never more at the server
    assert run.exitcodes == [0, 0]
    key = f"t-shared:{{{PROVIDER}/{MODEL}}}:{DOMAIN}"
    assert real_redis.hget(key, "in_flight") == b"0"
    assert real_redis.zcard(f"{key}:leases") == 0
    assert run.samples[-1].served == 120


def test_per_process_fleets_keep_one_loop_each(real_redis: redis.Redis, real_redis_url: str) -> None:
    with ColdServer(SERVER) as server:
        run = run_fleet(real_redis_url, server, _fleet("per-process", "t-own", requests=40))
    assert run.exitcodes == [0, 0]
    loops = sorted(k.decode() for k in real_redis.scan_iter(f"t-own-p*:{{{PROVIDER}/{MODEL}}}:{DOMAIN}"))
    assert loops == [f"t-own-p{i}:{{{PROVIDER}/{MODEL}}}:{DOMAIN}" for i in range(2)]


def test_a_fixed_fleet_uses_no_redis(real_redis: redis.Redis, real_redis_url: str) -> None:
    with ColdServer(SERVER) as server:
        run = run_fleet(real_redis_url, server, _fleet("fixed", "t-fixed", requests=40))
    assert sum(1 for r in run.records if r.status == 200) == 40
    assert real_redis.dbsize() == 0


def test_bad_fleet_settings() -> None:
    with pytest.raises(ValueError, match="strategy"):
        _fleet("both", "x")
    with pytest.raises(ValueError, match="processes"):
        _fleet("shared", "x", processes=0)


def test_the_summary_counts_from_the_servers_records() -> None:
    def rec(arrived: float, status: int, concurrency: int = 1) -> Record:
        return Record(arrived, arrived + 0.5, "/v1/chat/completions", concurrency, 4, status)

    run = FleetRun(
        settings={"strategy": "shared", "processes": 2, "tasks": 3},
        started=100.0,
        # 2 s at capacity 4 with work, then 2 s idle (not counted), then 1 s at 4.
        samples=[
            Sample(0.0, 4, 1, 4, None, 0, 1, 0, 0),
            Sample(2.0, 4, 0, 4, None, 0, 0, 3, 0),
            Sample(4.0, 4, 1, 4, None, 0, 1, 3, 0),
            Sample(5.0, 4, 0, 4, None, 0, 0, 5, 2),
        ],
        records=[
            *(rec(100.1, 429), rec(100.2, 200, 4), rec(101.5, 200)),
            *(rec(102.5, 429), rec(104.0, 200), rec(104.5, 200)),
        ],
        marks=[],
        exitcodes=[0, 1],
        leases_left=0,
        waiters_left=0,
    )
    m = summarize(run, warmup_seconds=1.0, service_seconds=0.5, peak=4)
    assert (m.requests, m.served, m.rejected, m.rejected_rate) == (6, 4, 2, pytest.approx(1 / 3))
    assert (m.warmup_requests, m.warmup_rejected) == (2, 1)
    assert m.seconds == pytest.approx(5.0)  # the last success finished at 105.0
    assert m.oracle == pytest.approx((2 * 4 + 1 * 4) / 0.5)
    assert (m.time_to_peak, m.max_concurrency, m.failed_workers) == (pytest.approx(0.2), 4, 1)


def test_the_demo_runs_end_to_end(real_redis_url: str, tmp_path: Path) -> None:
    plot = tmp_path / "demo.png"
    # The same three acts in a third of the time, with a smaller fleet, its ramp
    # again slower than the server's warm-up.
    command = [sys.executable, "-m", "aimd_redis.ops.cli", "demo", "--url", real_redis_url, "--time-scale", "0.3"]
    command += ["--processes", "2", "--tasks", "8", "--peak", "16", "--rampup", "30"]
    command += ["--server-peak", "6", "--scaled-peak", "10"]
    done = subprocess.run([*command, "--plot", str(plot)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "-- fleet idle" in out
    assert "failed workers" in out
    assert "cold start: 0 429s" in out
    assert "Redis forgot the domain" in out  # the idle act: the state expired, the ramp starts again
    assert "policy adaptive" in out
    assert "the limit reached the new capacity 10" in out  # the scale-out act: the probes found it
    assert "Traceback" not in done.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
