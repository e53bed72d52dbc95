"""What providers say about budgets and token use: their rate-limit headers,
a request's token estimate, and the usage an answer reports. No I/O.

Nothing here raises on what a provider sends: a malformed value is ignored
with one debug line.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

logger = logging.getLogger("aimd_redis")


class Heard(msgspec.Struct, frozen=True, kw_only=True):
    """What a response's rate-limit headers said; None for what they did not."""

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset: float | None = None
    """Seconds until the request budget is full again."""
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset: float | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__struct_fields__)


# (field, OpenAI and Azure header, Anthropic headers in order of preference).
# Anthropic limits input and output tokens apart, and its tokens-* family
# shows whichever has least left, often the (much smaller) output limit. One
# budget counts a request's input and output together, so it follows the
# input limit: most of a typical request, and counting the output against it
# too errs on the safe side.
_HEADERS = (
    ("requests_limit", "x-ratelimit-limit-requests", ("anthropic-ratelimit-requests-limit",)),
    ("requests_remaining", "x-ratelimit-remaining-requests", ("anthropic-ratelimit-requests-remaining",)),
    ("requests_reset", "x-ratelimit-reset-requests", ("anthropic-ratelimit-requests-reset",)),
    (
        "tokens_limit",
        "x-ratelimit-limit-tokens",
        ("anthropic-ratelimit-input-tokens-limit", "anthropic-ratelimit-tokens-limit"),
    ),
    (
        "tokens_remaining",
        "x-ratelimit-remaining-tokens",
        ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-tokens-remaining"),
    ),
    (
        "tokens_reset",
        "x-ratelimit-reset-tokens",
        ("anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-tokens-reset"),
    ),
)
_COUNT = re.compile(r"\d+(\.0*)?")
# Go's time.Duration text, as OpenAI sends it: 6m0s, 1h2m3.5s, 120ms, 2m.
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?")
_MAX = 10**15


def _count(text: str) -> int | None:
    text = text.strip()
    if not _COUNT.fullmatch(text):
        return None
    value = int(float(text))
    return value if value <= _MAX else None


def duration_seconds(text: str) -> float | None:
    """``6m0s``, ``1h2m3.5s``, ``120ms``, or plain seconds; None when unreadable."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            return None
        h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * h + 60 * m + s + ms / 1000
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _reset(text: str, now: float) -> float | None:
    seconds = duration_seconds(text)
    if seconds is not None:
        return seconds
    try:  # Anthropic: an RFC 3339 time
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def read_rate_limit_headers(headers: Mapping[str, str], now: float | None = None) -> Heard:
    """What OpenAI's, Azure's or Anthropic's rate-limit headers say (``now``:
    the wall clock, for Anthropic's reset times)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    clock = time.time() if now is None else now
    found: dict[str, Any] = {}
    for name, openai, anthropic in _HEADERS:
        for header in (openai, *anthropic):
            text = lowered.get(header)
            if text is None:
                continue
            value = _reset(text, clock) if name.endswith("_reset") else _count(text)
            if name.endswith("_limit") and value == 0:
                value = None  # a budget of nothing is no budget: a misread header
            if value is None:
                logger.debug("ignored the malformed header %s: %r", header, text)
                continue
            found[name] = value
            break
    return Heard(**found)


# -- estimates ----------------------------------------------------------------------

#: Tokens counted for each message beyond its text (role and separators).
MESSAGE_OVERHEAD = 4
DEFAULT_OUTPUT_TOKENS = 512


def _chars_per_token(text: str) -> int:
    return math.ceil(len(text) / 4)  # about four characters a token, for English and code


def _texts(value: Any) -> list[str]:
    """The text in a content value: a string, a list of parts (their ``text``),
    or a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out: list[str] = []
        for part in value:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif "content" in part:
                    out += _texts(part["content"])
        return out
    return []


def _output_limit(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def estimate_tokens(
    body: bytes, *, count: Callable[[str], int] | None = None, default_output_tokens: int = DEFAULT_OUTPUT_TOKENS
) -> int:
    """A request's tokens as a provider counts them at admission: its prompt
    plus its output limit (``default_output_tokens`` when it sets none;
    embeddings produce none). 0 for a body that is not a JSON object."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return 0
    if not isinstance(data, dict):
        return 0
    counter = count or _chars_per_token
    prompt = 0
    messages = data.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            texts = _texts(message.get("content"))
            if isinstance(message.get("name"), str):
                texts.append(message["name"])
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                function = call.get("function") if isinstance(call, dict) else None
                arguments = function.get("arguments") if isinstance(function, dict) else None
                if isinstance(arguments, str):
                    texts.append(arguments)
            prompt += MESSAGE_OVERHEAD + sum(counter(t) for t in texts)
    for name in ("prompt", "input", "system", "instructions"):
        prompt += sum(counter(t) for t in _texts(data.get(name)))
    limit = _output_limit(data)
    embedding = "messages" not in data and "prompt" not in data and "input" in data and "instructions" not in data
    if limit is None:
        limit = 0 if embedding else default_output_tokens
    n = data.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return max(0, prompt + limit * choices)


def tiktoken_counter(encoding: str = "o200k_base") -> Callable[[str], int] | None:
    """An exact counter from tiktoken when it is installed and its encoding
    loads (it may need a download); None otherwise."""
    try:
        import tiktoken  # type: ignore[import-not-found]

        enc = tiktoken.get_encoding(encoding)
    except Exception as exc:  # not installed, offline, unknown encoding
        logger.debug("no tiktoken counter (%s); estimating four characters a token", exc)
        return None

    def count(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))

    return count


# -- usage --------------------------------------------------------------------------


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _usage_total(usage: Any) -> int | None:
    """Total tokens of a ``usage`` object: OpenAI's total_tokens, else input
    plus output (Anthropic, the Responses API), else prompt plus completion.
    Anthropic's cache reads are left out: its rate limits do not count them
    for most models."""
    if not isinstance(usage, dict):
        return None
    total = _whole(usage.get("total_tokens"))
    if total is not None:
        return total
    for first, second in (("input_tokens", "output_tokens"), ("prompt_tokens", "completion_tokens")):
        a, b = _whole(usage.get(first)), _whole(usage.get(second))
        if a is not None or b is not None:
            return (a or 0) + (b or 0)
    return None


def usage_tokens(body: bytes) -> int | None:
    """The tokens a JSON answer says its request used; None when it does not say."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return _usage_total(data.get("usage")) if isinstance(data, dict) else None


class StreamUsage:
    """The usage a server-sent-events stream reports, fed chunk by chunk:
    OpenAI's final chunk (with ``stream_options.include_usage``), the
    Responses API's ``response.completed``, Anthropic's ``message_start`` and
    ``message_delta``. Keeps only the line being read."""

    MAX_LINE = 1024 * 1024

    def __init__(self) -> None:
        self._partial = b""
        self._total: int | None = None
        self._input: int | None = None
        self._output: int | None = None

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > self.MAX_LINE:
            self._partial = b""  # no usage line is this long; drop it rather than grow
        for line in lines:
            self._line(line.strip())

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload.startswith(b"{"):
            return  # [DONE], or nothing
        try:
            event = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):  # Anthropic
            usage = event["message"].get("usage")
            if isinstance(usage, dict):
                self._input = _whole(usage.get("input_tokens"))
                self._output = _whole(usage.get("output_tokens"))
        elif kind == "message_delta" and isinstance(event.get("usage"), dict):  # Anthropic, cumulative
            output = _whole(event["usage"].get("output_tokens"))
            if output is not None:
                self._output = output
        elif kind == "response.completed" and isinstance(event.get("response"), dict):  # Responses API
            self._total = _usage_total(event["response"].get("usage"))
        elif event.get("usage") is not None:  # OpenAI's last chunk
            self._total = _usage_total(event["usage"])

    @property
    def tokens(self) -> int | None:
        """None when the stream said nothing of its usage."""
        if self._total is not None:
            return self._total
        if self._input is None and self._output is None:
            return None
        return (self._input or 0) + (self._output or 0)
