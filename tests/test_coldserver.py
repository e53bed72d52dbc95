"""The cold inference server the demo and the benchmarks run against."""

from __future__ import annotations

import concurrent.futures
import datetime
import email.utils
import json
import re
import subprocess
import sys
import time

import httpx
import pytest
from aiohttp import web

from aimd_redis.demo.coldserver import (
    ColdServer,
    ServerSettings,
    _chat_prompt_tokens,
    _input_tokens,
    _most_completion_tokens,
    _State,
    go_duration,
)

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
        {"requests_per_minute": 0},
        {"tokens_per_minute": 0},
        {"completion_tokens": 0},
        {"rate_limit_headers": "x"},
        {"growth": -1},
        {"queue_cap": -1},
        {"first_token_share": 2},
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


def _burst(server: ColdServer, n: int, body: dict[str, object] = CHAT) -> list[httpx.Response]:
    """``n`` chat requests sent at once, in order."""
    with httpx.Client(base_url=server.url) as client, concurrent.futures.ThreadPoolExecutor(n) as pool:
        sent = []
        for _ in range(n):
            sent.append(pool.submit(client.post, "/v1/chat/completions", json=body))
            while server.stats().requests + server.stats().in_service + server.stats().queued < len(sent):
                time.sleep(0.005)
        return [f.result() for f in sent]


def test_a_queueing_server_serves_a_batch_at_a_time_slower_when_full_and_queues_the_rest() -> None:
    settings = ServerSettings(peak=2, warmup_seconds=0, service_seconds=0.2, queueing=True, growth=0.5)
    with ColdServer(settings) as server:
        answers = _burst(server, 4)
        assert [a.status_code for a in answers] == [200] * 4  # none refused
        records = sorted(server.records(), key=lambda r: r.arrived)
    assert [r.concurrency for r in records] == [1, 2, 3, 4]  # requests at the server, queued ones counted
    first, second, third, fourth = records
    assert first.queued == pytest.approx(0, abs=0.01)
    assert second.queued == pytest.approx(0, abs=0.01)
    # Alone in a batch of 2 a request takes 1.25x its 0.2 s (+-20%); with a second, 1.5x.
    assert 0.2 <= first.finished - first.arrived <= 0.35
    assert 0.24 <= second.finished - second.arrived <= 0.42
    assert min(third.queued, fourth.queued) >= 0.15  # they waited for a place in the batch
    assert third.arrived + third.queued <= fourth.arrived + fourth.queued  # first come, first served


def test_past_its_queue_cap_a_queueing_server_answers_503() -> None:
    settings = ServerSettings(peak=1, warmup_seconds=0, service_seconds=0.3, queueing=True, queue_cap=1)
    with ColdServer(settings) as server:
        answers = _burst(server, 3)
        assert [a.status_code for a in answers] == [200, 200, 503]
        assert answers[2].headers["retry-after-ms"] == "500"
        stats = server.stats()
        assert (stats.served, stats.rejected, stats.errors, stats.queued) == (2, 1, 0, 0)


def test_a_streamed_answer_s_first_token_waits_out_the_queue() -> None:
    settings = ServerSettings(
        peak=1, warmup_seconds=0, service_seconds=0.5, queueing=True, first_token_share=0.1, growth=0.0
    )

    def first_token(client: httpx.Client) -> float:
        started = time.monotonic()
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as answer:
            next(answer.iter_lines())
            return time.monotonic() - started

    with ColdServer(settings) as server, httpx.Client(base_url=server.url) as client:
        alone = first_token(client)
        while server.stats().in_service:  # the server lets go of the stream we left
            time.sleep(0.005)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            ahead = pool.submit(client.post, "/v1/chat/completions", json=CHAT)
            while server.stats().in_service < 1:
                time.sleep(0.005)
            behind = first_token(client)
            assert ahead.result().status_code == 200
    assert alone < 0.1  # a tenth of 0.5 s (+-20%), and no queue
    assert behind >= 0.3  # the request ahead's 0.4 to 0.6 s first


def test_a_caller_that_hangs_up_while_queued_leaves_the_queue() -> None:
    settings = ServerSettings(peak=1, warmup_seconds=0, service_seconds=0.4, queueing=True)
    with ColdServer(settings) as server, httpx.Client(base_url=server.url) as client:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(client.post, "/v1/chat/completions", json=CHAT)
            while server.stats().in_service < 1:
                time.sleep(0.005)
            with pytest.raises(httpx.ReadTimeout):
                client.post("/v1/chat/completions", json=CHAT, timeout=0.05)
            assert ahead.result().status_code == 200
        deadline = time.monotonic() + 2
        while server.stats().queued and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = server.stats()
        assert (stats.queued, stats.in_service) == (0, 0)
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert server.records()[-1].queued < 0.05  # nobody ahead of it


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
        "--tpm",
        "6000",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[3]  # "cold server on http://127.0.0.1:PORT/v1 ..."
            answer = httpx.post(f"{url}/chat/completions", json=CHAT)
            assert (answer.status_code, answer.headers["x-ratelimit-limit-tokens"]) == (200, "6000")
            report = next(line for line in proc.stdout if "served 1" in line)
            assert f"tokens {answer.json()['usage']['total_tokens']}" in report
        finally:
            proc.terminate()
    queueing = [*command, "--queue", "--queue-cap", "0", "--peak", "1"]
    with subprocess.Popen(queueing, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split()[3]
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda _: httpx.post(f"{url}/chat/completions", json=CHAT).status_code, [0, 1]))
            assert sorted(answers) == [200, 503]  # a batch of 1 and no room to queue
            assert "queued 0" in next(line for line in proc.stdout if "served 1" in line)
        finally:
            proc.terminate()
    bad = subprocess.run([*command[:3], "cold-server", "--peak", "0"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "peak must be at least 1" in bad.stderr


# -- budgets -------------------------------------------------------------------


def _wait(state: _State, cost: int, now: float) -> tuple[str, object]:
    """What holds a request back, and for how long (typed for comparing with approx)."""
    over = state.over_budget(cost, now)
    assert over is not None
    return over


def _remaining(state: _State, now: float) -> tuple[str, str]:
    headers = state.rate_limit_headers(now)
    return headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-remaining-tokens"]


def test_a_budget_refills_continuously_up_to_one_minutes_worth() -> None:
    state = _State(ServerSettings(requests_per_minute=60, tokens_per_minute=600))  # 1 and 10 a second
    assert state.over_budget(600, 0.0) is None  # starts full
    state.charge(600, 0.0)
    assert _remaining(state, 0.0) == ("59", "0")
    assert state.over_budget(10, 0.0) == ("tokens", 1.0)
    assert _wait(state, 10, 0.5) == ("tokens", pytest.approx(0.5))
    assert _remaining(state, 0.75) == ("59", "7")  # 7.5 tokens back: whole ones count
    assert state.over_budget(10, 1.0) is None
    assert _remaining(state, 1000.0) == ("60", "600")  # never more than a minute's worth
    assert state.rate_limit_headers(1000.0)["x-ratelimit-reset-tokens"] == "0s"
    assert state.tokens_served == 600


def test_a_request_waits_for_the_budget_that_holds_it_back_longest() -> None:
    state = _State(ServerSettings(requests_per_minute=2, tokens_per_minute=1200))  # 1 per 30 s; 20 tokens a second
    state.charge(10, 0.0)
    state.charge(10, 0.0)
    assert state.over_budget(10, 0.0) == ("requests", 30.0)
    headers = state.rate_limit_headers(15.0)
    assert (headers["x-ratelimit-reset-requests"], headers["x-ratelimit-reset-tokens"]) == ("45s", "0s")
    assert _wait(state, 1190, 29.0) == ("requests", pytest.approx(1.0))
    assert state.over_budget(1190, 30.0) is None
    assert state.over_budget(1201, 1000.0) == ("tokens", float("inf"))  # more than a minute's worth: never


def test_budgets_can_be_changed() -> None:
    state = _State(ServerSettings(tokens_per_minute=600))
    assert "x-ratelimit-limit-requests" not in state.rate_limit_headers(0.0)
    state.set_budget(10.0, tokens_per_minute=60)  # a lower limit caps what is left
    assert state.limits() == {"requests_per_minute": None, "tokens_per_minute": 60}
    assert state.rate_limit_headers(10.0)["x-ratelimit-remaining-tokens"] == "60"
    state.charge(60, 10.0)
    state.set_budget(10.0, requests_per_minute=5, tokens_per_minute=6000)  # a higher one refills faster, from here
    assert _remaining(state, 10.5) == ("5", "50")  # the new requests budget starts full
    state.set_budget(11.0, requests_per_minute=None)
    assert state.limits() == {"requests_per_minute": None, "tokens_per_minute": 6000}


def test_an_answer_is_between_half_and_all_of_its_maximum_and_the_same_per_seed() -> None:
    def draws(seed: int) -> list[int]:
        state = _State(ServerSettings(seed=seed))
        return [state.completion_tokens(most) for most in (1, 2, 3, 100, 100, 100, 0)]

    assert draws(5) == draws(5) != draws(6)
    ones, twos, threes, *hundreds, none = draws(5)
    assert (ones, none) == (1, 0)
    assert 1 <= twos <= 2
    assert 2 <= threes <= 3
    assert all(50 <= n <= 100 for n in hundreds)


def test_a_requests_tokens_are_counted_four_characters_a_token() -> None:
    messages = [
        {"role": "system", "content": "x" * 10},
        {"role": "user", "content": [{"type": "text", "text": "y" * 5}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None},
    ]
    assert _chat_prompt_tokens(messages) == 4  # 15 characters
    assert (_chat_prompt_tokens([]), _chat_prompt_tokens("nonsense")) == (0, 0)
    assert [_input_tokens(x) for x in ("abcde", ["abcd", "e"], "", [1, 2, 3], [[1, 2], [3]])] == [2, 2, 0, 3, 3]
    assert _most_completion_tokens({"max_tokens": 9, "max_completion_tokens": 7}, 64) == 7
    assert (_most_completion_tokens({"max_tokens": 9}, 64), _most_completion_tokens({}, 64)) == (9, 64)
    with pytest.raises(web.HTTPBadRequest):
        _most_completion_tokens({"max_tokens": 0}, 64)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.12, "120ms"),
        (0.9994, "999ms"),
        (1, "1s"),
        (17.28, "17.28s"),
        (59.9996, "1m0s"),
        (90.5, "1m30.5s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
    ],
)
def test_durations_are_written_as_go_writes_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def _chat(max_tokens: int, chars: int = 40, **extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "x" * chars}], "max_tokens": max_tokens, **extra}


def test_openai_rate_limit_headers_and_usage() -> None:
    settings = ServerSettings(warmup_seconds=0, service_seconds=0.01, requests_per_minute=10, tokens_per_minute=1000)
    with ColdServer(settings) as server, httpx.Client(base_url=server.url) as client:
        answer = client.post("/v1/chat/completions", json=_chat(20))  # 10 tokens of prompt
        usage = answer.json()["usage"]
        assert usage["prompt_tokens"] == 10
        assert 10 <= usage["completion_tokens"] <= 20
        assert usage["total_tokens"] == 10 + usage["completion_tokens"]
        # The buckets were full: what is left after the charge is exact.
        assert {k: v for k, v in answer.headers.items() if k.startswith("x-ratelimit")} == {
            "x-ratelimit-limit-requests": "10",
            "x-ratelimit-remaining-requests": "9",
            "x-ratelimit-reset-requests": "6s",
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": str(1000 - usage["total_tokens"]),
            "x-ratelimit-reset-tokens": go_duration(usage["total_tokens"] * 60 / 1000),
        }

        with client.stream(
            "POST", "/v1/chat/completions", json=_chat(8, stream=True, stream_options={"include_usage": True})
        ) as s:
            assert s.headers["x-ratelimit-remaining-requests"] == "8"
            events = [line.removeprefix("data: ") for line in s.iter_lines() if line]
        *chunks, last, done = events
        assert done == "[DONE]"
        final = json.loads(last)
        assert (final["choices"], final["usage"]["prompt_tokens"]) == ([], 10)
        assert 4 <= final["usage"]["completion_tokens"] <= 8
        assert all(json.loads(c)["usage"] is None for c in chunks)
        with client.stream("POST", "/v1/chat/completions", json=_chat(8, stream=True)) as s:
            plain = [json.loads(line[6:]) for line in s.iter_lines() if line and line != "data: [DONE]"]
        assert plain
        assert all("usage" not in c and c["choices"] for c in plain)

        embedded = client.post("/v1/embeddings", json={"model": "e", "input": ["abcd", "efghi"]}).json()
        assert embedded["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    records = server.records()
    assert records[0].tokens == usage["total_tokens"]
    assert records[1].tokens == final["usage"]["total_tokens"]
    assert server.stats().tokens_served == sum(r.tokens for r in records)


def test_a_burst_above_the_rpm_gets_429s_that_say_when_to_retry() -> None:
    settings = ServerSettings(warmup_seconds=0, service_seconds=0.01, requests_per_minute=3)  # 1 per 20 s
    with ColdServer(settings) as server, httpx.Client(base_url=server.url) as client:
        answers = [client.post("/v1/chat/completions", json=CHAT) for _ in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0", "0"]
    refused = answers[3]
    assert 19_000 < int(refused.headers["retry-after-ms"]) <= 20_000  # one request back in 20 s
    assert refused.headers["retry-after"] == "20"
    assert re.fullmatch(r"59\.\d+s|1m0s", refused.headers["x-ratelimit-reset-requests"])
    assert "x-ratelimit-limit-tokens" not in refused.headers
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "Limit 3, Used 3" in error["message"]
    stats = server.stats()
    assert (stats.served, stats.rejected, stats.budget_refusals, stats.max_concurrency) == (3, 2, 2, 1)
    assert [r.tokens > 0 for r in server.records()] == [True, True, True, False, False]


def test_a_request_that_waits_as_told_then_fits() -> None:
    settings = ServerSettings(warmup_seconds=0, embedding_seconds=0.01, tokens_per_minute=60_000)  # 1000 a second
    with ColdServer(settings) as server, httpx.Client(base_url=server.url) as client:

        def embed(tokens: int) -> httpx.Response:
            return client.post("/v1/embeddings", json={"model": "e", "input": "x" * (4 * tokens)})

        assert embed(59_900).status_code == 200  # 100 tokens left
        refused = embed(200)  # 100 short: 0.1 s
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "tokens"
        wait = int(refused.headers["retry-after-ms"]) / 1000
        assert 0.05 < wait <= 0.1
        time.sleep(wait)
        assert embed(200).status_code == 200
        too_large = embed(60_001)
        assert (too_large.status_code, too_large.headers["retry-after-ms"]) == (429, "60000")
        assert "Request too large" in too_large.json()["error"]["message"]
        assert server.stats().budget_refusals == 2


def test_anthropic_rate_limit_headers() -> None:
    settings = ServerSettings(
        warmup_seconds=0,
        service_seconds=0.01,
        requests_per_minute=1,
        tokens_per_minute=100,
        rate_limit_headers="anthropic",
    )
    with ColdServer(settings) as server, httpx.Client(base_url=server.url) as client:
        served = client.post("/v1/chat/completions", json=_chat(10))
        refused = client.post("/v1/chat/completions", json=_chat(10))
    assert (served.status_code, refused.status_code) == (200, 429)
    total = served.json()["usage"]["total_tokens"]
    for answer in (served, refused):
        h = answer.headers
        assert not any(k.startswith("x-ratelimit") for k in h)
        assert (h["anthropic-ratelimit-requests-limit"], h["anthropic-ratelimit-requests-remaining"]) == ("1", "0")
        assert h["anthropic-ratelimit-tokens-limit"] == "100"
        reset = datetime.datetime.fromisoformat(h["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
        assert reset.timestamp() - time.time() == pytest.approx(60, abs=2)
    assert served.headers["anthropic-ratelimit-tokens-remaining"] == str(100 - total)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", served.headers["anthropic-ratelimit-tokens-reset"])


@pytest.mark.parametrize(
    "settings",
    [
        ServerSettings(warmup_seconds=0, service_seconds=0.01),
        ServerSettings(warmup_seconds=0, service_seconds=0.01, requests_per_minute=1, rate_limit_headers="none"),
    ],
    ids=["no budget", "no headers"],
)
def test_no_rate_limit_headers(settings: ServerSettings) -> None:
    with ColdServer(settings) as server, httpx.Client(base_url=server.url) as client:
        answers = [client.post("/v1/chat/completions", json=CHAT) for _ in range(2)]
    budgeted = settings.requests_per_minute is not None
    assert [a.status_code for a in answers] == [200, 429 if budgeted else 200]
    assert not [k for a in answers for k in a.headers if "ratelimit" in k]


def test_a_capacity_refusal_tells_the_budget_but_does_not_charge_it() -> None:
    settings = ServerSettings(peak=1, warmup_seconds=0, service_seconds=0.3, requests_per_minute=10)
    with (
        ColdServer(settings) as server,
        httpx.Client(base_url=server.url) as client,
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}),
    ):
        refused = client.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 429
    assert (refused.headers["retry-after-ms"], refused.headers["x-ratelimit-remaining-requests"]) == ("500", "9")
    stats = server.stats()
    assert (stats.rejected, stats.budget_refusals) == (1, 0)


def test_the_budget_can_be_changed_over_http() -> None:
    settings = ServerSettings(warmup_seconds=0, service_seconds=0.01)
    with ColdServer(settings) as server, httpx.Client(base_url=server.url) as client:
        changed = client.post("/admin/budget", json={"requests_per_minute": 1})
        assert changed.json() == {"requests_per_minute": 1, "tokens_per_minute": None}
        assert [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(2)] == [200, 429]
        client.post("/admin/budget", json={"requests_per_minute": None, "tokens_per_minute": 1000})
        answer = client.post("/v1/chat/completions", json=CHAT)
        assert (answer.status_code, answer.headers["x-ratelimit-limit-tokens"]) == (200, "1000")
        assert "x-ratelimit-limit-requests" not in answer.headers
        for bad in ({"requests_per_minute": 0}, {"tokens_per_minute": "5"}, {"rpm": 5}):
            assert client.post("/admin/budget", json=bad).status_code == 400
        with pytest.raises(ValueError, match="tokens_per_minute"):
            server.set_budget(tokens_per_minute=0)
