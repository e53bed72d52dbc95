"""The cold inference server the demo and the benchmarks run against."""

from __future__ import annotations

import concurrent.futures
import email.utils
import subprocess
import sys
import time

import httpx
import pytest

from aimd_redis.demo.coldserver import ColdServer, ServerSettings, _State

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_capacity_warms_linearly_from_the_first_request() -> None:
    state = _State(ServerSettings(peak=11, warmup_seconds=10))
    assert state.capacity(0.0) == 1  # cold, and no traffic yet
    assert state.arrive(100.0) == (1, 1)  # traffic starts the warm-up
    assert [state.capacity(100.0 + t) for t in (0, 0.99, 1, 5, 9.99, 10, 50)] == [1, 1, 2, 6, 10, 11, 11]


def test_an_idle_server_scales_to_zero_and_warms_again() -> None:
    state = _State(ServerSettings(peak=5, warmup_seconds=4, cold_after_seconds=3))
    state.arrive(0.0)
    state.last_activity = 10.0  # the last request finished at 10 s
    assert state.capacity(12.9) == 5
    assert state.capacity(13.0) == 1  # idle for 3 s: scaled to zero
    assert state.arrive(20.0) == (1, 1)
    assert state.capacity(22.0) == 3  # warming up again from 20 s


def test_a_server_without_warm_up_is_at_peak_at_once() -> None:
    assert _State(ServerSettings(peak=7, warmup_seconds=0)).capacity(0.0) == 7


def test_a_raised_peak_applies_during_and_after_the_warm_up() -> None:
    state = _State(ServerSettings(peak=11, warmup_seconds=10))
    state.arrive(0.0)
    state.peak = 21
    assert (state.capacity(5.0), state.capacity(10.0)) == (11, 21)


@pytest.mark.parametrize(
    "bad",
    [
        {"peak": 0},
        {"warmup_seconds": -1},
        {"service_seconds": float("nan")},
        {"error_rate": 2},
        {"retry_after_form": "x"},
    ],
)
def test_settings_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ServerSettings(**bad)  # type: ignore[arg-type]


def test_above_capacity_it_answers_429_and_records_every_request() -> None:
    settings = ServerSettings(peak=2, warmup_seconds=0, service_seconds=0.5, retry_after_seconds=1.5)
    with ColdServer(settings) as server, httpx.Client(base_url=server.url) as client:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(client.post, "/v1/chat/completions", json=CHAT) for _ in range(2)]
            while server.stats().in_service < 2:
                time.sleep(0.01)
            refused = client.post("/v1/chat/completions", json=CHAT)
            assert [f.result().status_code for f in busy] == [200, 200]
        assert refused.status_code == 429
        assert (refused.headers["retry-after-ms"], refused.headers["retry-after"]) == ("1500", "2")
        stats = server.stats()
        assert (stats.requests, stats.served, stats.rejected, stats.max_concurrency) == (3, 2, 1, 3)
        records = server.records()
        assert sorted(r.status for r in records) == [200, 200, 429]
        rejected = next(r for r in records if r.status == 429)
        assert (rejected.concurrency, rejected.capacity, rejected.finished) == (3, 2, rejected.arrived)
        served = [r for r in records if r.status == 200]
        assert all(0.4 <= r.finished - r.arrived < 2 for r in served)  # 0.5 s +-20%


def test_a_date_retry_after() -> None:
    settings = ServerSettings(
        peak=1, warmup_seconds=0, service_seconds=1, retry_after_form="date", retry_after_seconds=30
    )
    with (
        ColdServer(settings) as server,
        httpx.Client(base_url=server.url) as client,
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}),
    ):
        refused = client.post("/v1/chat/completions", json=CHAT)
    when = email.utils.parsedate_to_datetime(refused.headers["retry-after"]).timestamp()
    assert when - time.time() == pytest.approx(30, abs=2)
    assert "retry-after-ms" not in refused.headers


def test_the_peak_can_be_changed_over_http() -> None:
    with ColdServer(ServerSettings(peak=3, warmup_seconds=0)) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/admin/peak", json={"peak": 9}).json()["capacity"] == 9
        assert client.post("/admin/peak", json={"peak": 0}).status_code == 400
        assert client.get("/admin/stats").json()["peak"] == 9


def test_openai_shapes() -> None:
    with ColdServer(ServerSettings(warmup_seconds=0, service_seconds=0.01)) as server:
        with httpx.Client(base_url=server.url) as client:
            chat = client.post("/v1/chat/completions", json=CHAT).json()
            assert chat["object"] == "chat.completion"
            assert chat["choices"][0]["message"]["content"]
            embedded = client.post("/v1/embeddings", json={"model": "e", "input": ["a", "b", "c"]}).json()
            assert [d["index"] for d in embedded["data"]] == [0, 1, 2]
            assert client.post("/v1/chat/completions", content=b"not json").status_code == 400
            assert client.get("/v1/models").json()["object"] == "list"
        assert server.stats().requests == 2  # the bad body and the listing are not inference


def test_the_cold_server_command() -> None:
    command = [
        sys.executable,
        "-m",
        "aimd_redis.ops.cli",
        "cold-server",
        "--port",
        "0",
        "--peak",
        "2",
        "--report",
        "0.2",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[3]  # "cold server on http://127.0.0.1:PORT/v1 ..."
            assert httpx.post(f"{url}/chat/completions", json=CHAT).status_code == 200
            assert "served 1" in next(line for line in proc.stdout if "served 1" in line)
        finally:
            proc.terminate()
    bad = subprocess.run([*command[:3], "cold-server", "--peak", "0"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "peak must be at least 1" in bad.stderr
