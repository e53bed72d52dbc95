"""What providers say: rate-limit headers, token estimates, usage."""

from __future__ import annotations

import json
import logging
import sys
import types

import httpx
import pytest

from aimd_redis._provider import (
    Heard,
    StreamUsage,
    duration_seconds,
    estimate_tokens,
    read_rate_limit_headers,
    tiktoken_counter,
    usage_tokens,
)


def test_openai_and_azure_headers() -> None:
    headers = httpx.Headers(
        {
            "X-RateLimit-Limit-Requests": "500",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-remaining-tokens": "29000.0",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert read_rate_limit_headers(headers) == Heard(
        requests_limit=500,
        requests_remaining=499,
        requests_reset=0.12,
        tokens_limit=30000,
        tokens_remaining=29000,
        tokens_reset=360.0,
    )
    # Azure sends what is left alone; a plain dict is read case-insensitively too.
    azure = read_rate_limit_headers({"X-RateLimit-Remaining-Tokens": "1000"})
    assert azure == Heard(tokens_remaining=1000)
    assert not azure.empty
    assert read_rate_limit_headers({"content-type": "application/json"}).empty


def test_anthropic_headers_with_rfc3339_resets() -> None:
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:30Z",
        "anthropic-ratelimit-tokens-limit": "80000",
        "anthropic-ratelimit-tokens-remaining": "79000",
        "anthropic-ratelimit-tokens-reset": "2027-01-15T07:59:00+00:00",  # past: full already
    }
    heard = read_rate_limit_headers(headers, now=now)
    assert heard == Heard(
        requests_limit=50,
        requests_remaining=49,
        requests_reset=30.0,
        tokens_limit=80000,
        tokens_remaining=79000,
        tokens_reset=0.0,
    )
    # The input-tokens family wins over the combined one (often the output limit's).
    both = {
        **headers,
        "anthropic-ratelimit-input-tokens-limit": "400000",
        "anthropic-ratelimit-input-tokens-remaining": "399000",
        "anthropic-ratelimit-output-tokens-limit": "80000",
    }
    heard = read_rate_limit_headers(both, now=now)
    assert (heard.tokens_limit, heard.tokens_remaining, heard.tokens_reset) == (400000, 399000, 0.0)


@pytest.mark.parametrize("bad", ["", "lots", "-3", "nan", "inf", "1e3", "12.5", "0x10", "0"])
def test_malformed_values_are_ignored_with_one_debug_line(bad: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aimd_redis"):
        heard = read_rate_limit_headers(
            {"x-ratelimit-limit-tokens": bad, "x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "x"}
        )
    assert heard == Heard(tokens_remaining=10)
    assert [r.getMessage() for r in caplog.records] == [
        f"ignored the malformed header x-ratelimit-limit-tokens: {bad!r}",
        "ignored the malformed header x-ratelimit-reset-tokens: 'x'",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("2m", 120.0),
        ("17", 17.0),
        ("1m30.5s", 90.5),
        ("", None),
        ("5 minutes", None),
        ("-1s", None),
        ("-4", None),
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == (pytest.approx(seconds) if seconds is not None else None)


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_estimates_count_the_prompt_and_the_output_limit() -> None:
    chat = _body(model="m", messages=[{"role": "user", "content": "x" * 40}], max_tokens=100)
    assert estimate_tokens(chat) == 4 + 10 + 100  # overhead, 40 characters, the output limit
    parts = _body(
        messages=[{"role": "user", "content": [{"type": "text", "text": "y" * 8}, {"type": "image_url"}]}],
        max_completion_tokens=10,
        max_tokens=999,  # max_completion_tokens wins
    )
    assert estimate_tokens(parts) == 4 + 2 + 10
    assert estimate_tokens(_body(messages=[], n=3, max_tokens=10)) == 30
    assert estimate_tokens(_body(messages=[])) == 512  # no output limit: the default
    assert estimate_tokens(_body(messages=[]), default_output_tokens=64) == 64
    assert estimate_tokens(_body(prompt=["ab" * 4, "c" * 4], max_tokens=1)) == 2 + 1 + 1
    assert estimate_tokens(_body(model="e", input=["a" * 8, "b" * 4])) == 3  # embeddings: no output
    responses = _body(input="q" * 8, instructions="i" * 4, max_output_tokens=50)
    assert estimate_tokens(responses) == 2 + 1 + 50
    anthropic = _body(system=[{"type": "text", "text": "s" * 4}], messages=[{"role": "user", "content": "hi"}])
    assert estimate_tokens(anthropic, default_output_tokens=0) == 1 + 4 + 1
    assert estimate_tokens(chat, count=lambda text: 1) == 4 + 1 + 100


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b"\xff\xfe", b"null"])
def test_a_body_that_is_not_a_json_object_estimates_nothing(body: bytes) -> None:
    assert estimate_tokens(body) == 0


@pytest.mark.parametrize(
    "message",
    [
        {"content": 5, "tool_calls": 5},
        {"content": None, "tool_calls": [{"function": "x"}, 7, {"function": {"arguments": 3}}]},
        {"content": [1, None, {"text": 3}], "name": 4},
    ],
)
def test_a_malformed_body_is_estimated_without_raising(message: dict[str, object]) -> None:
    assert estimate_tokens(_body(messages=[message], max_tokens=10)) == 4 + 10


def test_tiktoken_is_used_when_it_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # not installed
    assert tiktoken_counter() is None
    fake = types.ModuleType("tiktoken")

    class Encoding:
        def encode(self, text: str, disallowed_special: tuple[()] = ()) -> list[int]:
            return [0] * len(text.split())

    fake.get_encoding = lambda name: Encoding()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    count = tiktoken_counter()
    assert count is not None
    assert estimate_tokens(_body(messages=[{"content": "three words here"}], max_tokens=0), count=count) == 4 + 3


@pytest.mark.parametrize(
    ("answer", "tokens"),
    [
        ({"usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}}, 13),
        ({"usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 99}}, 17),
        ({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, 7),
        ({"usage": {"prompt_tokens": 2, "total_tokens": 2}}, 2),
        ({"usage": None}, None),
        ({"usage": {"total_tokens": "13"}}, None),
        ({"choices": []}, None),
    ],
)
def test_usage_of_an_answer(answer: dict[str, object], tokens: int | None) -> None:
    assert usage_tokens(json.dumps(answer).encode()) == tokens
    assert usage_tokens(b"{broken") is None


def _events(*events: dict[str, object]) -> bytes:
    return b"".join(b"event: x\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


OPENAI_STREAM = _events(
    {"choices": [{"delta": {"content": "h\u00e9llo"}}], "usage": None},
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
)
ANTHROPIC_STREAM = _events(
    {"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1}}},
    {"type": "content_block_delta", "delta": {"text": "hi"}},
    {"type": "message_delta", "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
)
RESPONSES_STREAM = _events(
    {"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 6}}}
)


@pytest.mark.parametrize(("stream", "tokens"), [(OPENAI_STREAM, 11), (ANTHROPIC_STREAM, 40), (RESPONSES_STREAM, 10)])
def test_stream_usage_split_anywhere(stream: bytes, tokens: int) -> None:
    for cut in range(len(stream) + 1):
        reader = StreamUsage()
        reader.feed(stream[:cut])
        reader.feed(stream[cut:])
        assert reader.tokens == tokens, cut


def test_a_stream_without_usage_says_none() -> None:
    reader = StreamUsage()
    reader.feed(_events({"choices": [{"delta": {"content": "x"}}], "usage": None}) + b"data: {broken\n\n: comment\n")
    assert reader.tokens is None


def test_an_endless_line_is_not_kept() -> None:
    reader = StreamUsage()
    for _ in range(3):
        reader.feed(b"x" * StreamUsage.MAX_LINE)
    assert len(reader._partial) <= StreamUsage.MAX_LINE
    reader.feed(b"\n" + OPENAI_STREAM)
    assert reader.tokens == 11
