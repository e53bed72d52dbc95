"""What the scripts answer, as the structs their JSON replies decode into
(one shape per script; see each script's header in ``lua/``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from aimd_redis.structs import DomainState

#: A change the scripts made: [domain, event, from, to]; from and to are
#: numbers, or names (a policy's).
RawEvent = tuple[str, str, "float | str", "float | str"]


class AcquireReply(msgspec.Struct, frozen=True):
    status: Literal["granted", "cooldown", "at_capacity", "budget", "queued", "abandoned", "oversize"]
    value: float = 0.0
    at: float = 0.0
    state: DomainState | None = None
    events: list[RawEvent] = []


class ReleaseReply(msgspec.Struct, frozen=True):
    released: bool
    registered: bool
    next: float = 0.0
    state: DomainState | None = None
    events: list[RawEvent] = []


class DomainBatchReply(msgspec.Struct, frozen=True):
    """batch.lua's answer for one domain (see its header)."""

    rel: list[bool] = []
    ack: list[float] = []
    got: list[tuple[str, float]] = []
    handed: list[tuple[str, float]] = []
    tries: list[tuple[str, float]] = msgspec.field(default_factory=list, name="try")
    oversize: list[str] = []
    wait: float = 0.0
    more: bool = False
    state: DomainState | None = None


class BatchReply(msgspec.Struct, frozen=True):
    registered: bool
    at: float = 0.0
    events: list[RawEvent] = []
    domains: list[DomainBatchReply] = []


class RegisterReply(msgspec.Struct, frozen=True):
    status: Literal["ok", "stale"]
    effective_max: int = 0
    domains: list[str] = []
    events: list[RawEvent] = []


class ConfigureReply(msgspec.Struct, frozen=True):
    config: dict[str, float | str]
    events: list[RawEvent] = []


class Wake(msgspec.Struct, frozen=True):
    """A wake-up on a waiter's channel, after its id: a slot handed over
    (until ``expires_at`` unless claimed), or the seconds until a cooldown
    that blocks the queue ends."""

    expires_at: float = 0.0
    state: DomainState | None = None
    wait: float | None = None
    domain: str = ""
    """The domain, in a message to a process's agent."""
    handed: list[str] = []
    """The slots handed to a process's agent (lease ids)."""
    group: str | None = None
    """The group of the agent's entry the message is for (None: the default)."""


ACQUIRE = msgspec.json.Decoder(AcquireReply)
RELEASE = msgspec.json.Decoder(ReleaseReply)
BATCH = msgspec.json.Decoder(BatchReply)
REGISTER = msgspec.json.Decoder(RegisterReply)
CONFIGURE = msgspec.json.Decoder(ConfigureReply)
RENEW = msgspec.json.Decoder(list[float])
WAKE = msgspec.json.Decoder(Wake)
