"""What providers say about budgets and token use: their rate-limit headers,
a request's token estimate, and the usage an answer reports. No I/O.

Nothing here raises on what a provider sends: a malformed header is ignored
with one debug line, a malformed body reads as nothing.
"""

from __future__ import annotations

import datetime
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

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
    """Seconds until the token budget is full again."""

    @property
    def empty(self) -> bool:
        """True when the response said nothing of its budgets."""
        return all(getattr(self, name) is None for name in self.__struct_fields__)


# -- rate-limit headers -------------------------------------------------------------

# (field, OpenAI and Azure header, Anthropic header suffix); the Anthropic
# token headers come from one family, chosen in read_rate_limit_headers.
_FIELDS = (
    ("requests_limit", "x-ratelimit-limit-requests", "requests-limit"),
    ("requests_remaining", "x-ratelimit-remaining-requests", "requests-remaining"),
    ("requests_reset", "x-ratelimit-reset-requests", "requests-reset"),
    ("tokens_limit", "x-ratelimit-limit-tokens", "{family}-limit"),
    ("tokens_remaining", "x-ratelimit-remaining-tokens", "{family}-remaining"),
    ("tokens_reset", "x-ratelimit-reset-tokens", "{family}-reset"),
)
_ANTHROPIC = "anthropic-ratelimit-"
_PREFIXES = ("x-ratelimit-", _ANTHROPIC)

# A count: "1000" or "1000.0". Beyond 15 digits no budget is real (and Lua's
# numbers stop being exact), so longer ones are malformed.
_COUNT = re.compile(r"0*([0-9]{1,15})(?:\.0*)?")
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Go's time.Duration text, as OpenAI sends it: 6m0s, 1h2m3.5s, 120ms, 2m.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(h|ms|m|s|us|\u00b5s|\u03bcs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ns": 1e-9}
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def _count(text: str) -> int | None:
    match = _COUNT.fullmatch(text.strip())
    return None if match is None else int(match[1])


def duration_seconds(text: str) -> float | None:
    """``6m0s``, ``1h2m3.5s``, ``120ms``, or plain seconds; None when unreadable."""
    text = text.strip()
    if _SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        seconds, pos = 0.0, 0
        while pos < len(text):
            match = _DURATION_PART.match(text, pos)
            if match is None:
                return None
            seconds += float(match[1]) * _UNIT_SECONDS[match[2]]
            pos = match.end()
        if pos == 0:
            return None  # nothing at all
    return seconds if math.isfinite(seconds) else None


def _timestamp(text: str) -> float | None:
    """An RFC 3339 time as a Unix timestamp (fromisoformat reads less of it
    on Python 3.10)."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, sign, offset_h, offset_m = match.groups()[6:]
    offset = 0 if sign is None else (1 if sign == "+" else -1) * (60 * int(offset_h) + int(offset_m))
    try:
        zone = datetime.timezone(datetime.timedelta(minutes=offset))
        when = datetime.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=zone)  # 60: a leap second
        return when.timestamp() + (float(fraction) if fraction else 0.0)
    except (ValueError, OverflowError):
        return None


def _reset(text: str, now: float) -> float | None:
    """Seconds from ``now``: a duration (OpenAI) or a time (Anthropic); a time
    already past is 0."""
    seconds = duration_seconds(text)
    if seconds is not None:
        return seconds
    when = _timestamp(text)
    return None if when is None else max(0.0, when - now)


def read_rate_limit_headers(headers: Mapping[str, str], now: float | None = None) -> Heard:
    """What OpenAI's, Azure's or Anthropic's rate-limit headers say, in any
    letter case; ``now`` (default: the wall clock) turns Anthropic's reset
    times into seconds.

    Where both kinds are sent, OpenAI's wins field by field. Anthropic
    limits input and output tokens apart, and its ``tokens-*`` headers show
    whichever limit in effect is most restrictive, which may be the (much
    smaller) output one. One budget counts a request's input and output
    together, so its token fields come from the ``input-tokens-*`` headers
    when any is sent: input is most of a typical request, and counting the
    output against that limit too errs on the safe side. Without them, from
    ``tokens-*``. A malformed header is ignored with one debug line.
    """
    # Lowered once, and only the headers read here: a plain dict is read
    # case-insensitively too.
    lowered = {
        name.lower(): value
        for name, value in headers.items()
        if isinstance(name, str) and name.lower().startswith(_PREFIXES)
    }
    clock = time.time() if now is None else now
    split = any(f"{_ANTHROPIC}input-tokens-{kind}" in lowered for kind in ("limit", "remaining", "reset"))
    family = "input-tokens" if split else "tokens"
    found: dict[str, Any] = {}
    for name, openai, suffix in _FIELDS:
        # Every header present is read, so each malformed one logs, even
        # where another wins.
        for header in (openai, _ANTHROPIC + suffix.format(family=family)):
            text = lowered.get(header)
            if text is None:
                continue
            value = _header_value(name, text, clock)
            if value is None:
                logger.debug("ignored the malformed header %s: %r", header, text)
            elif name not in found:
                found[name] = value
    return Heard(**found)


def _header_value(name: str, text: object, now: float) -> int | float | None:
    if not isinstance(text, str):
        return None
    if name.endswith("_reset"):
        return _reset(text, now)
    value = _count(text)
    if name.endswith("_limit") and value == 0:
        return None  # a budget of nothing is no budget: a misread header
    return value


# -- estimates ----------------------------------------------------------------------

#: Tokens counted for each message beyond its text (its role and separators).
MESSAGE_OVERHEAD = 4
DEFAULT_OUTPUT_TOKENS = 512
#: Tokens counted for each image in a prompt, whose size the body does not
#: tell: the most Anthropic charges for one at its default scaling (about
#: 1.15 megapixels), and more than OpenAI's high detail at 1024x1024.
IMAGE_TOKENS = 1600
#: Content parts that are images: Anthropic's, chat's, the Responses API's.
_IMAGE_PARTS = frozenset({"image", "image_url", "input_image"})


def _decode(body: bytes) -> Any:
    """The JSON in a body, or None when it holds none."""
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deep
        return None


def _four_characters_a_token(text: str) -> int:
    return math.ceil(len(text) / 4)  # about right for English and code


def _texts(value: Any) -> list[str]:
    """The text in a content value: a string, a list of strings, or a list of
    parts (their ``text``, or the ``content`` they hold)."""
    out: list[str] = []
    stack = [value]
    while stack:  # no recursion: the nesting is the sender's to choose
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            if isinstance(item.get("text"), str):
                out.append(item["text"])
            elif isinstance(item.get("input"), dict):  # Anthropic's tool_use: the arguments
                out.append(msgspec.json.encode(item["input"]).decode())
            elif "content" in item:
                stack.append(item["content"])
    return out


def _message_texts(message: dict[str, Any]) -> list[str]:
    """A message's text: its content, its name and the arguments of the tools
    it calls (chat), or a Responses API item's arguments and output."""
    texts = _texts(message.get("content"))
    for name in ("name", "arguments", "output"):
        if isinstance(message.get(name), str):
            texts.append(message[name])
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if isinstance(arguments, str):
            texts.append(arguments)
    return texts


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(value: Any) -> int | None:
    """A prompt or input given as token ids ([1, 2] or [[1, 2], [3]]): their
    number; None for anything else."""
    if not isinstance(value, list) or not value:
        return None
    if all(_is_int(v) for v in value):
        return len(value)
    if all(isinstance(v, list) and all(_is_int(i) for i in v) for v in value):
        return sum(len(v) for v in value)
    return None


def _images(value: Any) -> int:
    """The image parts anywhere in a prompt (a tool's result may hold some)."""
    found, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if item.get("type") in _IMAGE_PARTS:
                found += 1
            elif isinstance(item.get("content"), list):
                stack.append(item["content"])
    return found


def _prompt_tokens(data: dict[str, Any], count: Callable[[str], int]) -> int:
    # Tool definitions count as input at OpenAI and Anthropic alike: their JSON text.
    tools = data.get("tools")
    prompt = count(msgspec.json.encode(tools).decode()) if isinstance(tools, list) and tools else 0
    prompt += IMAGE_TOKENS * sum(_images(data.get(name)) for name in ("messages", "input"))
    messages = data.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict):
            prompt += MESSAGE_OVERHEAD + sum(count(t) for t in _message_texts(message))
    for name in ("prompt", "input", "system", "instructions"):
        value = data.get(name)
        ids = _token_ids(value) if name in ("prompt", "input") else None
        if ids is not None:
            prompt += ids
        elif name == "input" and isinstance(value, list):  # Responses API: strings or message-like items
            for item in value:
                if isinstance(item, dict):
                    prompt += MESSAGE_OVERHEAD + sum(count(t) for t in _message_texts(item))
                elif isinstance(item, str):
                    prompt += count(item)
        else:
            prompt += sum(count(t) for t in _texts(value))
    return prompt


def _output_limit(data: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = data.get(name)
        if _is_int(value) and value >= 0:
            return value
    return None


def estimate_tokens(
    body: bytes, *, count: Callable[[str], int] | None = None, default_output_tokens: int = DEFAULT_OUTPUT_TOKENS
) -> int:
    """A request's tokens as a provider counts them at admission: its prompt
    (``count`` per text, by default about four characters a token, plus
    ``MESSAGE_OVERHEAD`` a message) and its output limit, times ``n``.

    Without an output limit, ``default_output_tokens``; but an embeddings
    request (``input`` with no ``messages``, ``prompt``, ``instructions`` or
    output limit, and no message objects in it) produces none. 0 for a body
    that is not a JSON object.
    """
    data = _decode(body)
    if not isinstance(data, dict):
        return 0
    prompt = _prompt_tokens(data, count or _four_characters_a_token)
    limit = _output_limit(data)
    if limit is None:
        value = data.get("input")
        embeddings = (
            value is not None
            and all(data.get(name) is None for name in ("messages", "prompt", "instructions"))
            and not (isinstance(value, list) and any(isinstance(item, dict) for item in value))
        )
        limit = 0 if embeddings else max(0, default_output_tokens)
    n = data.get("n")
    choices = n if _is_int(n) and n > 1 else 1
    return max(0, prompt + limit * choices)


def tiktoken_counter(encoding: str = "o200k_base") -> Callable[[str], int] | None:
    """An exact counter for ``estimate_tokens`` when tiktoken is installed and
    its encoding loads (it may need a download); None otherwise, to fall back
    on the estimate."""
    try:
        import tiktoken  # type: ignore[import-not-found,unused-ignore]

        enc = tiktoken.get_encoding(encoding)
    except Exception as exc:  # not installed, offline, an unknown encoding
        logger.debug("no tiktoken counter for %r (%r): estimating four characters a token", encoding, exc)
        return None

    def count(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))

    return count


# -- usage --------------------------------------------------------------------------


def _whole(value: Any) -> int | None:
    return value if _is_int(value) and value >= 0 else None


def _usage_total(usage: Any) -> int | None:
    """The tokens a ``usage`` object counts: OpenAI's total_tokens, else
    input plus output (Anthropic, the Responses API), else prompt plus
    completion; None when it has none of them or they are malformed.

    Anthropic's cache writes are added: its input limits count them. Its
    cache reads are not: for most models they count against no limit.
    """
    if not isinstance(usage, dict):
        return None
    total = _whole(usage.get("total_tokens"))
    if total is not None:
        return total
    for names in (
        ("input_tokens", "output_tokens", "cache_creation_input_tokens"),
        ("prompt_tokens", "completion_tokens"),
    ):
        values = [usage.get(name) for name in names]
        if values[0] is None and values[1] is None:
            continue
        counts = [0 if value is None else _whole(value) for value in values]  # null: none of that kind
        return None if None in counts else sum(c for c in counts if c is not None)
    return None


def usage_tokens(body: bytes) -> int | None:
    """The tokens a JSON answer says its request used; None when it does not say."""
    data = _decode(body)
    return _usage_total(data.get("usage")) if isinstance(data, dict) else None


_LINE_END = re.compile(rb"\r\n|\r|\n")


class StreamUsage:
    """The usage a server-sent-events stream reports, fed chunk by chunk as it
    arrives: OpenAI's last chunk (with ``stream_options.include_usage``), the
    Responses API's ``response.completed``, Anthropic's ``message_start`` and
    ``message_delta``. Keeps only the line being read, and drops one longer
    than ``MAX_LINE`` (no usage line is that long)."""

    MAX_LINE = 1024 * 1024

    def __init__(self) -> None:
        self._partial = bytearray()
        self._skipping = False  # in the rest of a line too long to keep
        self._total: int | None = None
        self._input: int | None = None
        self._cache_writes: int | None = None
        self._output: int | None = None

    def feed(self, chunk: bytes) -> None:
        start = 0
        for match in _LINE_END.finditer(chunk):
            if self._skipping:
                self._skipping = False
            else:
                self._partial += chunk[start : match.start()]
                self._line(bytes(self._partial))
            self._partial.clear()
            start = match.end()
        if not self._skipping:
            self._partial += chunk[start:]
            if len(self._partial) > self.MAX_LINE:
                self._partial.clear()
                self._skipping = True

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return  # event:, id:, comments, the blank line between events
        event = _decode(line[5:])  # [DONE] and malformed JSON come back None
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):  # Anthropic
            self._anthropic(event["message"].get("usage"))
        elif kind == "message_delta":  # Anthropic: counts so far, the latest wins
            self._anthropic(event.get("usage"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):  # Responses API
            response = event.get("response")
            total = _usage_total(response.get("usage")) if isinstance(response, dict) else None
            if total is not None:
                self._total = total
        elif event.get("usage") is not None:  # OpenAI's last chunk; null on the others
            total = _usage_total(event["usage"])
            if total is not None:
                self._total = total

    def _anthropic(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        # A count left out (message_delta may send output alone) or malformed
        # keeps what was heard before.
        input_tokens, cache_writes, output_tokens = (
            _whole(usage.get(name)) for name in ("input_tokens", "cache_creation_input_tokens", "output_tokens")
        )
        self._input = self._input if input_tokens is None else input_tokens
        self._cache_writes = self._cache_writes if cache_writes is None else cache_writes
        self._output = self._output if output_tokens is None else output_tokens

    @property
    def tokens(self) -> int | None:
        """The tokens the stream says its request used (as ``usage_tokens``
        counts them); None when it said nothing of its usage."""
        if self._total is not None:
            return self._total
        if self._input is None and self._output is None:
            return None
        return (self._input or 0) + (self._cache_writes or 0) + (self._output or 0)
