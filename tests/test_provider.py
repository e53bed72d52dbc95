"""What providers say: rate-limit headers, token estimates, usage."""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
import types

import httpx
import msgspec
import pytest

from aimd_redis._provider import (
    IMAGE_TOKENS,
    Heard,
    StreamUsage,
    duration_seconds,
    estimate_tokens,
    read_rate_limit_headers,
    tiktoken_counter,
    usage_tokens,
)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aimd_redis" and r.levelno == logging.DEBUG]


# -- rate-limit headers -------------------------------------------------------------


def test_openai_headers() -> None:
    headers = httpx.Headers(
        {
            "X-RateLimit-Limit-Requests": "500",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-reset-tokens": "6m0s",
            "content-type": "application/json",
        }
    )
    heard = read_rate_limit_headers(headers)
    assert heard.requests_reset == pytest.approx(0.12)
    assert msgspec.structs.replace(heard, requests_reset=None) == Heard(
        requests_limit=500, requests_remaining=499, tokens_limit=30000, tokens_remaining=29000, tokens_reset=360.0
    )
    assert not heard.empty


def test_a_plain_dict_is_read_in_any_case_and_counts_may_end_in_point_zero() -> None:
    heard = read_rate_limit_headers({"X-RateLimit-Remaining-Tokens": "1000.0", "X-RATELIMIT-LIMIT-TOKENS": "2000."})
    assert heard == Heard(tokens_limit=2000, tokens_remaining=1000)  # Azure often sends what is left alone


def test_no_rate_limit_headers_is_empty() -> None:
    heard = read_rate_limit_headers({"content-type": "application/json", "retry-after": "3"})
    assert heard == Heard()
    assert heard.empty
    assert read_rate_limit_headers({}).empty


def test_anthropic_headers_with_rfc3339_resets() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:30Z",
        "anthropic-ratelimit-tokens-limit": "48000",
        "anthropic-ratelimit-tokens-remaining": "47000",
        "anthropic-ratelimit-tokens-reset": "2027-01-15T07:59:00+00:00",  # past: full already
    }
    assert read_rate_limit_headers(headers, now=NOW) == Heard(
        requests_limit=50,
        requests_remaining=49,
        requests_reset=30.0,
        tokens_limit=48000,
        tokens_remaining=47000,
        tokens_reset=0.0,
    )


def test_anthropic_input_tokens_family_wins_over_tokens() -> None:
    """The combined family may show the output limit, far below the input one."""
    headers = {
        "anthropic-ratelimit-tokens-limit": "8000",
        "anthropic-ratelimit-tokens-remaining": "7000",
        "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:02Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": "2027-01-15T08:00:01Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7000",
    }
    heard = read_rate_limit_headers(headers, now=NOW)
    assert (heard.tokens_limit, heard.tokens_remaining, heard.tokens_reset) == (40000, 39000, 1.0)
    # The family is chosen as a whole: one input-tokens-* header rules out tokens-* for all three fields.
    one = {
        **{k: v for k, v in headers.items() if "input" not in k},
        "anthropic-ratelimit-input-tokens-limit": "1",
    }
    heard = read_rate_limit_headers(one, now=NOW)
    assert (heard.tokens_limit, heard.tokens_remaining, heard.tokens_reset) == (1, None, None)


def test_anthropic_tokens_without_the_input_tokens_family() -> None:
    headers = {
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "7000",
        "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:06.5Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "3",
    }
    heard = read_rate_limit_headers(headers, now=NOW)
    assert heard.tokens_reset == pytest.approx(6.5)
    assert msgspec.structs.replace(heard, tokens_reset=None) == Heard(tokens_limit=40000, tokens_remaining=7000)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2027-01-15T08:00:30Z", 30.0),
        ("2027-01-15t08:00:30z", 30.0),
        ("2027-01-15T08:00:30.25Z", 30.25),
        ("2027-01-15T08:00:30.123456789Z", 30.123456789),
        ("2027-01-15T09:00:30+01:00", 30.0),
        ("2027-01-15T07:30:30-00:30", 30.0),
        ("2027-01-15T07:59:59Z", 0.0),
        ("2026-01-01T00:00:00Z", 0.0),
    ],
)
def test_anthropic_reset_times(text: str, seconds: float) -> None:
    heard = read_rate_limit_headers({"anthropic-ratelimit-requests-reset": text}, now=NOW)
    assert heard.requests_reset == pytest.approx(seconds)


def test_reset_times_are_measured_from_the_wall_clock_by_default() -> None:
    soon = datetime.datetime.fromtimestamp(time.time() + 30, datetime.timezone.utc)
    heard = read_rate_limit_headers({"anthropic-ratelimit-requests-reset": soon.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert heard.requests_reset is not None
    assert 25 <= heard.requests_reset <= 30


def test_openai_style_wins_field_by_field() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-reset-requests": "1s",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:30Z",
    }
    assert read_rate_limit_headers(headers, now=NOW) == Heard(
        requests_limit=500, requests_remaining=49, requests_reset=1.0
    )


@pytest.mark.parametrize(
    "bad",
    ["", " ", "lots", "-3", "nan", "NaN", "inf", "-inf", "1e3", "12.5", "0x10", "1_000", "1" * 400, "1" * 5000, "0"],
)
def test_malformed_counts_are_ignored_with_one_debug_line(bad: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aimd_redis"):
        heard = read_rate_limit_headers({"x-ratelimit-limit-tokens": bad, "x-ratelimit-remaining-tokens": "10"})
    assert heard == Heard(tokens_remaining=10)
    assert _messages(caplog) == [f"ignored the malformed header x-ratelimit-limit-tokens: {bad!r}"]


def test_nothing_left_is_not_malformed_but_a_limit_of_nothing_is(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aimd_redis"):
        heard = read_rate_limit_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-limit-requests": "0"})
    assert heard == Heard(requests_remaining=0)
    assert len(_messages(caplog)) == 1


@pytest.mark.parametrize(
    ("header", "bad"),
    [
        ("x-ratelimit-reset-tokens", "soon"),
        ("x-ratelimit-reset-tokens", "-1s"),
        ("x-ratelimit-reset-tokens", "nan"),
        ("x-ratelimit-reset-tokens", "inf"),
        ("x-ratelimit-reset-tokens", "9" * 400 + "h"),
        ("x-ratelimit-reset-tokens", "6m0"),
        ("anthropic-ratelimit-tokens-reset", "2027-01-15T08:00:30"),  # no time zone
        ("anthropic-ratelimit-tokens-reset", "2027-02-30T08:00:30Z"),  # no such day
        ("anthropic-ratelimit-tokens-reset", "2027-01-15T08:00:30+99:00"),
        ("anthropic-ratelimit-tokens-reset", "0000-01-01T00:00:00Z"),
        ("anthropic-ratelimit-tokens-reset", "tomorrow"),
    ],
)
def test_malformed_resets_are_ignored_with_one_debug_line(
    header: str, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="aimd_redis"):
        heard = read_rate_limit_headers({header: bad, "x-ratelimit-remaining-requests": "7"}, now=NOW)
    assert heard == Heard(requests_remaining=7)
    assert _messages(caplog) == [f"ignored the malformed header {header}: {bad!r}"]


def test_each_malformed_header_logs_once_even_where_another_wins(caplog: pytest.LogCaptureFixture) -> None:
    headers = {
        "x-ratelimit-limit-requests": "x",
        "x-ratelimit-remaining-requests": "5",
        "anthropic-ratelimit-requests-limit": "50",  # fills in for the malformed OpenAI one
        "anthropic-ratelimit-requests-remaining": "-1",  # malformed, and OpenAI's wins anyway
        "anthropic-ratelimit-tokens-reset": "whenever",
    }
    with caplog.at_level(logging.DEBUG, logger="aimd_redis"):
        heard = read_rate_limit_headers(headers, now=NOW)
    assert heard == Heard(requests_limit=50, requests_remaining=5)
    assert sorted(_messages(caplog)) == [
        "ignored the malformed header anthropic-ratelimit-requests-remaining: '-1'",
        "ignored the malformed header anthropic-ratelimit-tokens-reset: 'whenever'",
        "ignored the malformed header x-ratelimit-limit-requests: 'x'",
    ]


def test_a_value_that_is_not_text_is_malformed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aimd_redis"):
        heard = read_rate_limit_headers({"x-ratelimit-limit-requests": 500, "x-ratelimit-limit-tokens": "9"})  # type: ignore[dict-item]
    assert heard == Heard(tokens_limit=9)
    assert _messages(caplog) == ["ignored the malformed header x-ratelimit-limit-requests: 500"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("120ms", 0.12),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("2m", 120.0),
        ("1m30.5s", 90.5),
        ("1h", 3600.0),
        ("0s", 0.0),
        ("1.5ms", 0.0015),
        ("250us", 0.00025),
        ("250\u00b5s", 0.00025),
        ("100ns", 1e-7),
        (" 6m0s ", 360.0),
        ("17", 17.0),
        ("0.25", 0.25),
        ("", None),
        ("s", None),
        ("5 minutes", None),
        ("6m 0s", None),
        ("1d", None),
        ("-1s", None),
        ("-4", None),
        ("1e3", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == (pytest.approx(seconds) if seconds is not None else None)


# -- estimates ----------------------------------------------------------------------


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_estimate_of_a_chat_request() -> None:
    chat = _body(model="m", messages=[{"role": "user", "content": "x" * 40}], max_tokens=100)
    assert estimate_tokens(chat) == 4 + 10 + 100  # overhead, 40 characters, the output limit
    assert estimate_tokens(chat, count=lambda text: 1) == 4 + 1 + 100
    parts = _body(
        messages=[
            {"role": "system", "content": "s" * 5, "name": "boss"},
            {"role": "user", "content": [{"type": "text", "text": "y" * 8}, {"type": "image_url", "image_url": {}}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
            },
        ],
        max_completion_tokens=10,
        max_tokens=999,  # max_completion_tokens wins
    )
    assert estimate_tokens(parts) == (4 + 2 + 1) + (4 + 2 + IMAGE_TOKENS) + (4 + 2) + 10


def test_estimate_of_an_anthropic_messages_request() -> None:
    body = _body(
        model="claude",
        max_tokens=100,
        system=[{"type": "text", "text": "s" * 40, "cache_control": {"type": "ephemeral"}}],
        tools=[{"name": "get", "description": "d" * 54, "input_schema": {"type": "object"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "u" * 8}, {"type": "image", "source": {}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "get", "input": {"q": "abc"}}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}],
            },
        ],
    )
    tools = 30  # their JSON, 120 characters
    messages = (4 + 2) + (4 + 3) + 4  # overhead and text; the tool's input as JSON ('{"q":"abc"}')
    assert estimate_tokens(body) == 10 + tools + messages + 2 * IMAGE_TOKENS + 100


def test_estimate_of_the_output() -> None:
    assert estimate_tokens(_body(messages=[])) == 512  # no output limit: the default
    assert estimate_tokens(_body(messages=[]), default_output_tokens=64) == 64
    assert estimate_tokens(_body(messages=[], max_tokens=10, n=3)) == 30
    assert estimate_tokens(_body(messages=[], n=2)) == 1024
    assert estimate_tokens(_body(messages=[], max_tokens=10, n=0)) == 10  # n below 2 is one answer
    assert estimate_tokens(_body(messages=[], max_tokens=10, n=True)) == 10
    assert estimate_tokens(_body(messages=[], max_tokens=-5, max_output_tokens=7)) == 7  # a malformed one is skipped
    assert estimate_tokens(_body(messages=[], max_tokens="10")) == 512


def test_estimate_of_a_completions_request() -> None:
    assert estimate_tokens(_body(prompt="abcdefgh", max_tokens=16)) == 2 + 16
    assert estimate_tokens(_body(prompt=["ab" * 4, "c" * 4], max_tokens=1)) == 2 + 1 + 1
    assert estimate_tokens(_body(prompt=[1, 2, 3], max_tokens=1)) == 3 + 1  # token ids
    assert estimate_tokens(_body(prompt="", n=2, max_tokens=5)) == 10


def test_estimate_of_an_embeddings_request_has_no_output() -> None:
    assert estimate_tokens(_body(model="e", input="a" * 8)) == 2
    assert estimate_tokens(_body(model="e", input=["a" * 8, "b" * 4])) == 3
    assert estimate_tokens(_body(model="e", input=[[1, 2], [3]])) == 3  # token ids
    assert estimate_tokens(_body(model="e", input=["a" * 8], n=4)) == 2


def test_estimate_of_a_responses_request() -> None:
    assert estimate_tokens(_body(input="q" * 8, instructions="i" * 4, max_output_tokens=50)) == 2 + 1 + 50
    assert estimate_tokens(_body(input="q" * 8, instructions="i" * 4)) == 2 + 1 + 512
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "w" * 12}]},
        {"type": "function_call", "name": "f", "arguments": "a" * 4},
        {"type": "function_call_output", "output": "o" * 8},
        "s" * 4,
    ]
    # Message objects in the input: not an embeddings request, so the default output.
    assert estimate_tokens(_body(input=items)) == (4 + 3) + (4 + 1 + 1) + (4 + 2) + 1 + 512


def test_estimate_of_an_anthropic_request() -> None:
    anthropic = _body(
        model="claude",
        system=[{"type": "text", "text": "s" * 4}],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": "x"}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "r" * 8}]}
                ],
            },
        ],
        max_tokens=1024,
    )
    assert estimate_tokens(anthropic) == 1 + (4 + 1) + (4 + 3) + (4 + 2) + 1024  # '{"q":"x"}' is 9 characters
    assert estimate_tokens(_body(system="s" * 8, messages=[], max_tokens=0)) == 2


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2]", b"\xff\xfe", b"null", b'"text"', b"{broken", b"[" * 100_000, b'{"a":' * 10_000],
)
def test_a_body_that_is_not_a_json_object_estimates_nothing(body: bytes) -> None:
    assert estimate_tokens(body) == 0


@pytest.mark.parametrize(
    "message",
    [
        {"content": 5, "tool_calls": 5},
        {"content": None, "tool_calls": [{"function": "x"}, 7, {"function": {"arguments": 3}}]},
        {"content": [1, None, {"text": 3}, {"content": 4}], "name": 4},
        {"content": {"no": "text"}},
    ],
)
def test_a_malformed_message_counts_only_its_overhead(message: dict[str, object]) -> None:
    assert estimate_tokens(_body(messages=[message, 7, None], max_tokens=10)) == 4 + 10


def test_malformed_fields_count_nothing() -> None:
    body = _body(messages="hi", prompt=5, input={"x": 1}, system=None, instructions=[None], max_tokens=3)
    assert estimate_tokens(body) == 3


def test_deeply_nested_content_is_estimated_without_raising() -> None:
    content: object = "abcd"
    for _ in range(400):
        content = [{"type": "tool_result", "content": content}]
    assert estimate_tokens(_body(messages=[{"content": content}], max_tokens=0)) == 4 + 1


def test_no_tiktoken_no_counter(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # not installed
    with caplog.at_level(logging.DEBUG, logger="aimd_redis"):
        assert tiktoken_counter() is None
    assert len(_messages(caplog)) == 1


def test_an_encoding_that_will_not_load_gives_no_counter(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = types.ModuleType("tiktoken")

    def get_encoding(name: str) -> object:
        raise OSError("no network to download the encoding from")

    fake.get_encoding = get_encoding  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    with caplog.at_level(logging.DEBUG, logger="aimd_redis"):
        assert tiktoken_counter("cl100k_base") is None
    assert len(_messages(caplog)) == 1


def test_tiktoken_counts_when_it_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("tiktoken")
    asked: list[str] = []

    class Encoding:
        def encode(self, text: str, disallowed_special: tuple[()] = ()) -> list[int]:
            return [0] * len(text.split())

    def get_encoding(name: str) -> Encoding:
        asked.append(name)
        return Encoding()

    fake.get_encoding = get_encoding  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    count = tiktoken_counter("cl100k_base")
    assert count is not None
    assert asked == ["cl100k_base"]
    body = _body(messages=[{"content": "three words here, and more"}], max_tokens=0)
    assert estimate_tokens(body, count=count) == 4 + 5
    assert estimate_tokens(body) == 4 + 7  # without it, four characters a token


# -- usage --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "tokens"),
    [
        ({"object": "chat.completion", "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}}, 13),
        ({"object": "list", "usage": {"prompt_tokens": 6, "total_tokens": 6}}, 6),  # embeddings
        ({"object": "response", "usage": {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}}, 10),
        ({"type": "message", "usage": {"input_tokens": 10, "output_tokens": 7}}, 17),
        # Anthropic's cache writes count against its limits, its cache reads do not.
        (
            {
                "usage": {
                    "input_tokens": 10,
                    "output_tokens": 7,
                    "cache_creation_input_tokens": 100,
                    "cache_read_input_tokens": 99,
                }
            },
            117,
        ),
        ({"usage": {"input_tokens": 10, "output_tokens": 7, "cache_creation_input_tokens": None}}, 17),
        ({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, 7),
        ({"usage": {"total_tokens": "13", "prompt_tokens": 3, "completion_tokens": 4}}, 7),
        ({"usage": {"input_tokens": 10, "output_tokens": -1}}, None),
        ({"usage": {"input_tokens": True, "output_tokens": 1}}, None),
        ({"usage": {"total_tokens": "13"}}, None),
        ({"usage": {"total_tokens": 1.5}}, None),
        ({"usage": {}}, None),
        ({"usage": None}, None),
        ({"usage": [13]}, None),
        ({"choices": []}, None),
    ],
)
def test_usage_of_an_answer(answer: dict[str, object], tokens: int | None) -> None:
    assert usage_tokens(json.dumps(answer).encode()) == tokens


@pytest.mark.parametrize("body", [b"", b"{broken", b"[1]", b"null", b"\xff", b"[" * 100_000])
def test_usage_of_a_malformed_answer(body: bytes) -> None:
    assert usage_tokens(body) is None


def _events(*events: dict[str, object], newline: bytes = b"\n") -> bytes:
    frames = (b"event: x" + newline + b"data: " + json.dumps(e).encode() + newline + newline for e in events)
    return b"".join(frames) + b"data: [DONE]" + newline + newline


OPENAI_STREAM = _events(
    {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "h\u00e9llo \u2603"}}], "usage": None},
    {
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    },
)
ANTHROPIC_STREAM = _events(
    {"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1}}},
    {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "h\u00e9"}},
    {"type": "ping"},
    {"type": "message_delta", "usage": {"output_tokens": 9}},
    {"type": "message_delta", "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
)
RESPONSES_STREAM = _events(
    {"type": "response.created", "response": {"usage": None}},
    {"type": "response.output_text.delta", "delta": "\u2603"},
    {"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 6}}},
)


@pytest.mark.parametrize(
    ("stream", "tokens"),
    [
        (OPENAI_STREAM, 11),
        (ANTHROPIC_STREAM, 40),
        (RESPONSES_STREAM, 10),
        (OPENAI_STREAM.replace(b"\n", b"\r\n"), 11),
        (ANTHROPIC_STREAM.replace(b"\n", b"\r\n"), 40),
        (RESPONSES_STREAM.replace(b"\n", b"\r"), 10),  # SSE lines may end in CR alone
    ],
)
def test_stream_usage_split_anywhere(stream: bytes, tokens: int) -> None:
    for cut in range(len(stream) + 1):
        reader = StreamUsage()
        reader.feed(stream[:cut])
        reader.feed(stream[cut:])
        assert reader.tokens == tokens, cut
    reader = StreamUsage()
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
    assert reader.tokens == tokens


def test_stream_usage_is_none_until_it_is_said() -> None:
    reader = StreamUsage()
    head = OPENAI_STREAM.split(b"data: [DONE]")[0]
    last = head.rindex(b"event: x")
    reader.feed(head[:last])
    assert reader.tokens is None
    reader.feed(head[last:])
    assert reader.tokens == 11


def test_anthropic_stream_usage_counts_cache_writes_and_the_latest_delta() -> None:
    stream = _events(
        {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 5,
                    "cache_creation_input_tokens": 200,
                    "cache_read_input_tokens": 1000,
                    "output_tokens": 1,
                }
            },
        },
        {"type": "message_delta", "usage": {"output_tokens": 30}},
        {"type": "message_delta", "usage": {"output_tokens": "garbage"}},  # malformed: the last good count stays
    )
    reader = StreamUsage()
    reader.feed(stream)
    assert reader.tokens == 5 + 200 + 30


def test_anthropic_delta_input_counts_replace_the_start() -> None:
    stream = _events(
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "message_delta", "usage": {"input_tokens": 50, "output_tokens": 30}},
    )
    reader = StreamUsage()
    reader.feed(stream)
    assert reader.tokens == 80


def test_a_stream_without_usage_says_none() -> None:
    reader = StreamUsage()
    reader.feed(_events({"choices": [{"delta": {"content": "x"}}], "usage": None}))
    reader.feed(b": keep-alive comment\nevent: message\ndata: {broken\ndata:\ndata: [1]\nid: 7\nretry: 10\n\n")
    reader.feed(b'data: {"usage": {"total_tokens": "many"}}\n')
    reader.feed(b'data: {"type": "message_start", "message": "x"}\n')
    reader.feed(b'data: {"type": "response.completed", "response": {"usage": null}}\n')
    assert reader.tokens is None
    assert StreamUsage().tokens is None


def test_a_line_without_its_end_is_not_read() -> None:
    reader = StreamUsage()
    reader.feed(b'data: {"usage": {"total_tokens": 5}}')
    assert reader.tokens is None
    reader.feed(b"\n")
    assert reader.tokens == 5


def test_an_endless_line_is_not_kept() -> None:
    reader = StreamUsage()
    for _ in range(3):
        reader.feed(b"x" * (StreamUsage.MAX_LINE // 2))
        assert len(reader._partial) <= StreamUsage.MAX_LINE  # what is kept stays bounded
    # The rest of the dropped line is not taken for a line of its own.
    reader.feed(b'data: {"usage": {"total_tokens": 999}}\n')
    assert reader.tokens is None
    reader.feed(OPENAI_STREAM)
    assert reader.tokens == 11
