"""The I/O-free core both clients share: script arguments in, typed values out.

The clients only move a :class:`Call` to Redis and hand the reply back here,
so the sync and asyncio shells cannot drift apart in what they compute.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from aimd_redis import replies
from aimd_redis._provider import Heard
from aimd_redis.config import ThrottleConfig
from aimd_redis.errors import ArgumentTypeError, CorruptStateError, InvalidArgumentError, RequestTooLargeError
from aimd_redis.keys import (
    ModelKeys,
    check_alias,
    check_domain,
    check_group,
    check_namespace,
    check_weight,
    group_of,
    model_keys,
)
from aimd_redis.replies import RawEvent
from aimd_redis.schema import MAX_TIME, SETTINGS, DomainRecord, parse_domain
from aimd_redis.structs import Denied, DomainState, Grant, LeaseRef, LimitEvent, Queued, ReleaseResult

logger = logging.getLogger("aimd_redis")

Outcome = Literal["success", "rate_limited", "failure", "abandon", "leave"]

#: Mean wait suggested to a caller denied at capacity; jittered so pollers
#: of many processes spread out.
CAPACITY_POLL_SECONDS = 0.05
#: The least time a slot handed over may have left until it must be claimed
#: for its waiter to use it at once, the claim following in the background: a
#: pause of the process (a busy event loop, a collection) must not outlast it.
CLAIM_MARGIN_SECONDS = 1.0
#: Upper bound on max_parallel_requests: far above any real endpoint, low
#: enough that a typo (an extra zero or six) is caught.
MAX_PARALLEL_LIMIT = 1_000_000
#: Upper bound on a budget per minute and on one request's tokens, for the same reason.
MAX_BUDGET = 10**12
#: A register retries while domains are being created under it; each try
#: passes every domain the previous one saw, so this is never reached in practice.
REGISTER_ATTEMPTS = 16
# Changes that happen often in a healthy run; logged at DEBUG, the rest at INFO.
_QUIET_EVENTS = frozenset({"cooldown", "created", "ramp"})


class Call(NamedTuple):
    """One script invocation."""

    script: str
    keys: list[str]
    args: list[str]


# The ARGV of each script, by name, in the order of the script's header
# (tests/test_scripts.py holds them against the headers). Scripts that take
# a variable tail (domain names, lease ids) get it after these. Only what
# belongs to the call travels: the loop's rules are the model's, stored in
# its cap hash by register.


class RegisterArgs(NamedTuple):
    now: str
    alias: str
    max_parallel: str
    rpm: str
    tpm: str
    config: str
    settings_id: str


class AcquireArgs(NamedTuple):
    now: str
    domain: str
    lease_id: str
    tokens: str
    lease_ttl: str
    mode: str
    beat: str
    recheck: str
    claim_ttl: str
    publish: str
    weight: str


class ReleaseArgs(NamedTuple):
    now: str
    domain: str
    lease_id: str
    outcome: str
    retry_after: str
    granted_at: str
    lease_ttl: str
    claim_ttl: str
    publish: str
    next_id: str
    next_tokens: str
    tokens: str
    heard_rpm: str
    heard_tpm: str
    heard_requests: str
    heard_tokens: str
    ttfb: str


class BatchArgs(NamedTuple):
    now: str
    client: str
    lease_ttl: str
    claim_ttl: str
    publish: str
    beat: str
    items: str


class RenewArgs(NamedTuple):
    now: str
    lease_ttl: str


class SetLimitArgs(NamedTuple):
    now: str
    domain: str
    limit: str


class ResetArgs(NamedTuple):
    now: str


class ConfigureArgs(NamedTuple):
    now: str
    config: str
    settings_id: str


class ProbeArgs(NamedTuple):
    channel: str


#: Script name -> its named arguments.
SCRIPT_ARGS: dict[str, type[tuple[str, ...]]] = {
    "register": RegisterArgs,
    "acquire": AcquireArgs,
    "release": ReleaseArgs,
    "batch": BatchArgs,
    "renew": RenewArgs,
    "set_limit": SetLimitArgs,
    "reset": ResetArgs,
    "configure": ConfigureArgs,
    "probe": ProbeArgs,
}


def as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _seconds(value: float) -> str:
    return repr(float(value))


def read_pubsub(message: dict[str, Any]) -> tuple[str, str, str]:
    """(kind, channel, text) of a redis-py pub/sub message: for a wake-up,
    kind 'message' and text '<waiter id> ...'; 'subscribe' confirms a channel."""
    return as_str(message["type"]), as_str(message["channel"]), as_str(message["data"])


def socket_timeout_of(client: Any) -> float | None:
    """The socket timeout a redis-py client (plain, cluster, sync or asyncio) was given, if any."""
    for holder in (
        getattr(client, "connection_pool", None),  # plain clients
        getattr(client, "nodes_manager", None),  # sync cluster
        client,  # asyncio cluster
    ):
        kwargs = getattr(holder, "connection_kwargs", None)
        if isinstance(kwargs, dict) and isinstance(kwargs.get("socket_timeout"), (int, float)):
            return float(kwargs["socket_timeout"])
    return None


class LocalCounts(Protocol):
    """A fail-open client's per-process limit (``LocalLimit``)."""

    concurrency: int
    held: int


def local_state(local: LocalCounts) -> DomainState:
    """How a per-process limit looks as a domain."""
    return DomainState(
        current_limit=local.concurrency,
        in_flight=local.held,
        blocked_until=0.0,
        success_streak=0,
        waiters=0,
        rate_limit_ceiling=0,
        consecutive_429s=0,
        rampup_started_at=0.0,
        rampup_active=False,
    )


def check_now(now: float | None) -> str:
    """The ``now`` argument of a script: '' lets the script read Redis TIME."""
    if now is None:
        return ""
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise ArgumentTypeError(f"now must be seconds as a number, not {now!r}")
    if not math.isfinite(now) or now < 0:
        raise InvalidArgumentError(f"now must be a finite number of seconds >= 0, not {now!r}")
    if now > MAX_TIME:  # the scripts refuse a stored time beyond it as corrupt, for every later call
        raise InvalidArgumentError(
            f"now must be seconds since the epoch (at most {MAX_TIME:g}), not {now!r}: milliseconds?"
        )
    return _seconds(now)


def check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"timeout must be seconds as a number or None, not {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise InvalidArgumentError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def check_int(name: str, value: object, low: int, high: int, *, or_none: bool = False) -> int:
    """A whole-number argument within [low, high] (a bool is not one)."""
    none = ", or None" if or_none else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an int{' or None' if or_none else ''}, not {value!r}")
    if not low <= value <= high:
        raise InvalidArgumentError(f"{name} must be between {low} and {high}{none}, not {value}")
    return value


def check_budget(name: str, value: object) -> str:
    """A requests or tokens per minute argument as the scripts take it ('' for none)."""
    return "" if value is None else str(check_int(name, value, 1, MAX_BUDGET, or_none=True))


def _heard(value: int | None) -> str:
    return "" if value is None else str(value)


def parse_state(key: str, fields: dict[Any, Any]) -> DomainState | None:
    """A DomainState from a domain hash's fields (None when it has none),
    judged as the scripts judge them (CorruptStateError otherwise)."""
    record = parse_domain(key, {as_str(k): as_str(v) for k, v in fields.items()})
    return None if record is None else state_of(record)


def state_of(r: DomainRecord) -> DomainState:
    """The public state out of a domain's record."""
    return DomainState(
        current_limit=r.current_limit,
        in_flight=r.in_flight,
        blocked_until=r.blocked_until,
        success_streak=r.success_streak,
        waiters=r.waiters,
        rate_limit_ceiling=r.rate_limit_ceiling,
        consecutive_429s=r.consecutive_429s,
        rampup_started_at=r.rampup_started_at,
        rampup_active=r.rampup_active == 1,
    )


def parse_effective_max(key: str, raw: Any) -> int:
    text = as_str(raw)
    if not text.isdigit() or int(text) < 1:
        raise CorruptStateError(f"{key} field effective_max holds {text!r}")
    return int(text)


def check_retry_after(retry_after: float | None) -> str:
    """A 429's Retry-After as the release script takes it: '' when missing or
    unusable (not finite, not positive), which the rules read as the model's
    cooldown_seconds."""
    if retry_after is None:
        return ""
    if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)):
        raise ArgumentTypeError(f"retry_after must be a number of seconds or None, not {retry_after!r}")
    return _seconds(retry_after) if math.isfinite(retry_after) and retry_after > 0 else ""


def check_ttfb(ttfb: float | None) -> str:
    """A success's time to the first byte (seconds, as the caller measured
    it) as the release script takes it: '' when not known."""
    if ttfb is None:
        return ""
    if isinstance(ttfb, bool) or not isinstance(ttfb, (int, float)):
        raise ArgumentTypeError(f"ttfb must be a number of seconds or None, not {ttfb!r}")
    if not (math.isfinite(ttfb) and 0 <= ttfb <= MAX_TIME):
        raise InvalidArgumentError(f"ttfb must be a finite number of seconds >= 0, not {ttfb!r}")
    return _seconds(ttfb)


def check_settings(config: ThrottleConfig, settings: dict[str, Any]) -> str:
    """Settings of the loop as the scripts take them (JSON), checked as
    ThrottleConfig checks them beside the rest of ``config``."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise InvalidArgumentError(f"not a setting of the loop stored in Redis: {', '.join(unknown)}")
    checked = ThrottleConfig(**{**config.model_dump(), **settings}).settings()  # ConfigError names the field
    return msgspec.json.encode({name: checked[name] for name in settings}).decode()


#: The fields of an outcome in batch.lua's ARGV, in order.
OUTCOME_FIELDS = (
    "lease_id",
    "outcome",
    "retry_after",
    "granted_at",
    "tokens",
    "heard_rpm",
    "heard_tpm",
    "heard_requests",
    "heard_tokens",
    "ttfb",
)


def _trimmed(values: list[str]) -> list[str]:
    """An outcome row without its trailing unknowns (''): what the script
    reads past the end is unknown too, and a batch decodes less."""
    while values and values[-1] == "":
        values.pop()
    return values


class DomainItems(NamedTuple):
    """What an agent sends for one domain in a batch (see batch.lua)."""

    name: str
    outcomes: list[dict[str, str]]
    acks: list[str]
    tries: list[LeaseRef]
    want: int
    ids: list[LeaseRef]
    tokens: int
    group: str | None = None
    weight: float = 1.0


class Core:
    """Builds script calls for one namespace and configuration, parses replies."""

    def __init__(self, config: ThrottleConfig, namespace: str, *, sharded_pubsub: bool = False) -> None:
        self.config = config
        self.namespace = check_namespace(namespace)
        # A register that reserves nothing leaves the model's reservations as
        # they are: a batch job's pods need not repeat an interactive
        # service's (configure clears them).
        settings = {k: v for k, v in config.settings().items() if not (k == "reserved" and v == "")}
        self._settings = msgspec.json.encode(settings).decode()
        self._lease_ttl_s = config.lease_ttl_seconds
        # A slot handed to a waiter is its own only once claimed: the waiter
        # claims it when woken (see background_claim), or at its next re-check
        # (every wait_poll).
        self._claim_s = min(config.lease_ttl_seconds, 2 * config.wait_poll_seconds)
        # The arguments every call of a script shares, built once.
        self._acquire_args = AcquireArgs(
            now="",
            domain="",
            lease_id="",
            tokens="0",
            lease_ttl=_seconds(config.lease_ttl_seconds),
            mode="try",
            beat=_seconds(3 * config.wait_poll_seconds),
            recheck="",
            claim_ttl=_seconds(self._claim_s),
            publish="SPUBLISH" if sharded_pubsub else "PUBLISH",
            weight="1",
        )
        self._release_args = ReleaseArgs(
            now="",
            domain="",
            lease_id="",
            outcome="",
            retry_after="",
            granted_at="",
            lease_ttl=self._acquire_args.lease_ttl,
            claim_ttl=self._acquire_args.claim_ttl,
            publish=self._acquire_args.publish,
            next_id="",
            next_tokens="0",
            tokens="",
            heard_rpm="",
            heard_tpm="",
            heard_requests="",
            heard_tokens="",
            ttfb="",
        )

    def keys(self, provider_name: str, model_id: str) -> ModelKeys:
        return model_keys(self.namespace, provider_name, model_id)

    def _domain_keys(self, provider_name: str, model_id: str, domain: str) -> list[str]:
        mk = self.keys(provider_name, model_id)
        check_domain(domain)
        return [
            mk.cap,
            mk.domain(domain),
            mk.leases(domain),
            mk.index,
            mk.events,
            *mk.queue(domain),
            mk.budget,
            mk.tokens(domain),
        ]

    # -- register -----------------------------------------------------------

    def register_call(
        self,
        provider_name: str,
        model_id: str,
        alias: str,
        max_parallel_requests: int,
        now: float | None,
        domains: Sequence[str] = (),
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
    ) -> Call:
        """Registers the alias and stores this throttle's configuration of
        the loop as the model's."""
        mk = self.keys(provider_name, model_id)
        check_alias(alias)
        check_int("max_parallel_requests", max_parallel_requests, 1, MAX_PARALLEL_LIMIT)
        args = RegisterArgs(
            check_now(now),
            alias,
            str(max_parallel_requests),
            check_budget("requests_per_minute", requests_per_minute),
            check_budget("tokens_per_minute", tokens_per_minute),
            self._settings,
            secrets.token_hex(8),
        )
        return Call("register", [mk.cap, mk.index, mk.events, *(mk.domain(d) for d in domains)], [*args, *domains])

    def parse_register(self, provider_name: str, model_id: str, reply: Any) -> int | list[str]:
        """The effective max, or the domain names to call again with."""
        got = replies.REGISTER.decode(reply)
        if got.status == "stale":
            return got.domains
        self._log(provider_name, model_id, got.events)
        return got.effective_max

    def configure_call(self, provider_name: str, model_id: str, settings: dict[str, Any], now: float | None) -> Call:
        mk = self.keys(provider_name, model_id)
        args = ConfigureArgs(check_now(now), check_settings(self.config, settings), secrets.token_hex(8))
        return Call("configure", [mk.cap, mk.events], list(args))

    def parse_configure(self, provider_name: str, model_id: str, reply: Any) -> dict[str, float | str]:
        got = replies.CONFIGURE.decode(reply)
        self._log(provider_name, model_id, got.events)
        return got.config

    # -- acquire ------------------------------------------------------------

    @staticmethod
    def new_lease_id(client_id: str, group: str | None = None) -> str:
        """'<client>.<token>', or '<client>~<group>.<token>': the client part
        names the process's wake channel, the group is the one the lease
        counts in (see check_group)."""
        if group is None:
            return f"{client_id}.{secrets.token_hex(8)}"
        return f"{client_id}~{group}.{secrets.token_hex(8)}"

    def acquire_call(
        self,
        provider_name: str,
        model_id: str,
        domain: str,
        now: float | None,
        lease_id: str,
        *,
        tokens: int = 0,
        wait: bool = False,
        recheck: bool = False,
        group: str | None = None,
        weight: float = 1.0,
    ) -> tuple[Call, LeaseRef]:
        """The call, and the lease it grants if it does (chosen before the call,
        so a caller that never sees the reply can still give the slot back).
        ``tokens``: the request's estimate, reserved of the model's budget with
        the slot. With ``wait`` a caller that gets no slot joins the queue,
        in ``group`` with ``weight``; ``lease_id`` must be one of
        ``new_lease_id(client, group)``."""
        check_int("tokens", tokens, 0, MAX_BUDGET)
        group, weight = check_group(group), check_weight(weight)
        ref = LeaseRef(
            provider_name=provider_name,
            model_id=model_id,
            domain=domain,
            lease_id=lease_id,
            tokens=tokens,
            group=group,
            weight=weight,
        )
        keys = self._domain_keys(provider_name, model_id, domain)
        args = self._acquire_args._replace(
            now=check_now(now),
            domain=domain,
            lease_id=lease_id,
            tokens=str(tokens),
            mode="wait" if wait else "try",
            recheck="1" if recheck else "",
            weight=repr(weight),
        )
        return Call("acquire", keys, list(args)), ref

    def parse_acquire(self, ref: LeaseRef, reply: Any) -> Grant | Denied | Queued:
        got = replies.ACQUIRE.decode(reply)
        if got.status not in ("abandoned", "oversize"):
            self._log(ref.provider_name, ref.model_id, got.events)
        return self.acquired(ref, got.status, got.value, got.state, got.at)

    def acquired(
        self, ref: LeaseRef, status: str, value: float, state: DomainState | None, at: float = 0.0
    ) -> Grant | Denied | Queued:
        """What an acquire's status and value (acquire.lua's, or a 'try' of
        batch.lua) mean for the caller."""
        if status == "abandoned":
            raise RuntimeError(f"lease {ref.lease_id} was abandoned before its acquire ran")
        if status == "oversize":
            raise self.too_large(ref, value)
        assert state is not None
        if status == "granted":
            return self._granted(ref, value, state)
        if status == "cooldown":
            return Denied(reason="cooldown", retry_in=value, state=state)
        if status == "queued":
            return Queued(retry_in=value, state=state, at=at)
        if status == "budget":
            return Denied(reason="budget", retry_in=value, state=state)
        return Denied(reason="at_capacity", retry_in=CAPACITY_POLL_SECONDS * (0.5 + random.random()), state=state)

    @staticmethod
    def too_large(ref: LeaseRef, tokens_per_minute: float | None) -> RequestTooLargeError:
        budget = "" if tokens_per_minute is None else f" of {tokens_per_minute:g} tokens per minute"
        return RequestTooLargeError(
            f"a request of {ref.tokens} tokens can never fit {ref.provider_name}/{ref.model_id}'s budget{budget}"
        )

    # -- release and renew --------------------------------------------------

    def release_call(
        self,
        ref: LeaseRef,
        outcome: Outcome,
        retry_after: float | None,
        now: float | None,
        granted_at: float | None = None,
        next_ref: LeaseRef | None = None,
        tokens: int | None = None,
        heard: Heard | None = None,
        ttfb: float | None = None,
    ) -> Call:
        """``granted_at``: when Redis granted the lease (Grant.granted_at), if
        known. ``next_ref``: a new lease of the same domain to take in the
        same call when a slot is free for it (see :meth:`parse_release`).
        ``tokens``: what the request used, if known; ``heard``: what the
        provider's headers said of its limits; ``ttfb``: seconds to the
        response's first byte, if measured."""
        keys = self._domain_keys(ref.provider_name, ref.model_id, ref.domain)
        args = self._release_args._replace(
            now=check_now(now),
            domain=ref.domain,
            **self.outcome_row(ref, outcome, retry_after, granted_at, tokens, heard, ttfb),
        )
        if next_ref is not None:
            args = args._replace(next_id=next_ref.lease_id, next_tokens=str(next_ref.tokens))
        return Call("release", keys, list(args))

    @staticmethod
    def outcome_row(
        ref: LeaseRef,
        outcome: Outcome,
        retry_after: float | None = None,
        granted_at: float | None = None,
        tokens: int | None = None,
        heard: Heard | None = None,
        ttfb: float | None = None,
    ) -> dict[str, str]:
        """An outcome's arguments, checked, by release.lua's names (batch.lua
        takes the same, in the order of :data:`OUTCOME_FIELDS`)."""
        return {
            "lease_id": ref.lease_id,
            "outcome": outcome,
            "retry_after": check_retry_after(retry_after),
            "granted_at": "" if granted_at is None else _seconds(granted_at),
            "tokens": "" if tokens is None else str(check_int("tokens", tokens, 0, MAX_BUDGET)),
            "heard_rpm": "" if heard is None else _heard(heard.requests_limit),
            "heard_tpm": "" if heard is None else _heard(heard.tokens_limit),
            "heard_requests": "" if heard is None else _heard(heard.requests_remaining),
            "heard_tokens": "" if heard is None else _heard(heard.tokens_remaining),
            "ttfb": check_ttfb(ttfb),
        }

    # -- batches of a process's agent ------------------------------------------

    def batch_call(
        self, provider_name: str, model_id: str, client_id: str, domains: Sequence[DomainItems], now: float | None
    ) -> Call:
        """One call for everything an agent has for one model (see batch.lua)."""
        mk = self.keys(provider_name, model_id)
        keys = [mk.cap, mk.index, mk.events, mk.budget]
        items: list[dict[str, Any]] = []
        for d in domains:
            check_domain(d.name)
            keys += [mk.domain(d.name), mk.leases(d.name), *mk.queue(d.name), mk.tokens(d.name)]
            item: dict[str, Any] = {
                "name": d.name,
                "rel": [_trimmed([row[f] for f in OUTCOME_FIELDS]) for row in d.outcomes],
                "ack": d.acks,
                "try": [[r.lease_id, str(r.tokens)] for r in d.tries],
                "want": d.want,
                "ids": [[r.lease_id, str(r.tokens)] for r in d.ids],
                "tokens": d.tokens,
            }
            if d.group is not None:
                item["group"] = d.group
            if d.weight != 1.0:
                item["weight"] = d.weight
            items.append(item)
        args = BatchArgs(
            now=check_now(now),
            client=client_id,
            lease_ttl=self._acquire_args.lease_ttl,
            claim_ttl=self._acquire_args.claim_ttl,
            publish=self._acquire_args.publish,
            beat=self._acquire_args.beat,
            items=msgspec.json.encode(items).decode(),
        )
        return Call("batch", keys, list(args))

    def parse_batch(self, provider_name: str, model_id: str, reply: Any) -> replies.BatchReply:
        got = replies.BATCH.decode(reply)
        self._log(provider_name, model_id, got.events)
        return got

    def handed(self, ref: LeaseRef, expires_at: float, state: DomainState) -> Grant:
        """A slot handed over, lasting the claim window until it is claimed."""
        return Grant(ref=ref, expires_at=expires_at, state=state, granted_at=expires_at - self._claim_s)

    def parse_wake(self, ref: LeaseRef, message: str) -> Grant | float:
        """A wake-up ('<id> <JSON>'): a slot handed over, or the seconds until
        a cooldown ends."""
        woke = self.parse_agent_wake(message)
        if woke.state is None:
            return woke.wait or 0.0
        return self.handed(ref, woke.expires_at, woke.state)

    @staticmethod
    def parse_agent_wake(message: str) -> replies.Wake:
        """'<entry> <JSON>', the entry '<client>' or '<client>~<group>'."""
        entry, _, body = message.partition(" ")
        group = group_of(entry)
        woke = replies.WAKE.decode(body)
        return msgspec.structs.replace(woke, group=group) if group else woke

    def background_claim(self, expires_at: float, asked_at: float, since_asked: float) -> float | None:
        """The seconds a claim (an ack) of a slot handed over until
        ``expires_at`` has to land, or None when the claim is to be waited
        for before the slot is used.

        ``asked_at``: Redis's clock in the reply to a call sent
        ``since_asked`` seconds ago (local clock). Redis's clock cannot be
        past asked_at + since_asked now, so what is left of the claim window
        is at least expires_at less that, whoever set the window and however
        old the wake-up. With half a window left (and at least
        CLAIM_MARGIN_SECONDS) the claim can go out in the background and land
        in time, saving the waiter a round trip."""
        left = expires_at - (asked_at + since_asked)
        return left if left >= max(self._claim_s / 2, CLAIM_MARGIN_SECONDS) else None

    def parse_release(
        self, ref: LeaseRef, reply: Any, next_ref: LeaseRef | None = None
    ) -> tuple[ReleaseResult, bool, Grant | None]:
        """The result; whether the model's registration was there (if not,
        the caller should register again); and the next lease the call took
        (``next_ref``), or None when no slot was free for it."""
        got = replies.RELEASE.decode(reply)
        self._log(ref.provider_name, ref.model_id, got.events)
        result = ReleaseResult(released=got.released, state=got.state)
        taken = None
        if next_ref is not None and got.next and got.state is not None:
            taken = self._granted(next_ref, got.next, got.state)
        return result, got.registered, taken

    def _granted(self, ref: LeaseRef, expires_at: float, state: DomainState) -> Grant:
        """A lease a script has just granted for a whole lease ttl."""
        return Grant(ref=ref, expires_at=expires_at, state=state, granted_at=expires_at - self._lease_ttl_s)

    def renew_call(self, refs: Sequence[LeaseRef], now: float | None) -> Call:
        """Renew leases of one model (any of its domains) in one call."""
        first = refs[0]
        mk = self.keys(first.provider_name, first.model_id)
        keys = [mk.cap, mk.index, mk.events]
        for ref in refs:
            if (ref.provider_name, ref.model_id) != (first.provider_name, first.model_id):
                raise InvalidArgumentError("renew_call takes leases of one model")
            keys += [mk.domain(ref.domain), mk.leases(ref.domain), mk.tokens(ref.domain)]
        args = RenewArgs(check_now(now), self._acquire_args.lease_ttl)
        return Call("renew", keys, [*args, *(r.lease_id for r in refs)])

    @staticmethod
    def parse_renew(reply: Any) -> list[float | None]:
        """New expiry per lease; None where the lease is gone."""
        return [expiry or None for expiry in replies.RENEW.decode(reply)]

    # -- operator commands ----------------------------------------------------

    def set_limit_call(self, provider_name: str, model_id: str, domain: str, limit: int, now: float | None) -> Call:
        mk = self.keys(provider_name, model_id)
        check_domain(domain)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError(f"limit must be a whole number >= 1, not {limit!r}")
        args = SetLimitArgs(check_now(now), domain, str(limit))
        return Call("set_limit", [mk.cap, mk.domain(domain), mk.events], list(args))

    def reset_call(self, provider_name: str, model_id: str, domains: Sequence[str], now: float | None) -> Call:
        mk = self.keys(provider_name, model_id)
        keys = [mk.cap, mk.index, mk.events]
        for domain in domains:
            check_domain(domain)
            keys += [mk.domain(domain), mk.leases(domain), *mk.queue(domain), mk.tokens(domain)]
        return Call("reset", keys, [*ResetArgs(check_now(now)), *domains])

    # -- logging ------------------------------------------------------------

    def _log(self, provider_name: str, model_id: str, raw: Sequence[RawEvent]) -> None:
        for event in self.events(provider_name, model_id, raw):
            level = logging.DEBUG if event.event in _QUIET_EVENTS else logging.INFO
            if logger.isEnabledFor(level):
                logger.log(
                    level,
                    "%s/%s %s: %s %s -> %s",
                    provider_name,
                    model_id,
                    event.domain,
                    event.event,
                    _shown(event.old),
                    _shown(event.new),
                )

    @staticmethod
    def events(provider_name: str, model_id: str, raw: Sequence[RawEvent]) -> list[LimitEvent]:
        return [
            LimitEvent(provider_name=provider_name, model_id=model_id, domain=domain, event=event, old=old, new=new)
            for domain, event, old, new in raw
        ]


def _shown(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"
