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


ACQUIRE = msgspec.json.Decoder(AcquireReply)
RELEASE = msgspec.json.Decoder(ReleaseReply)
REGISTER = msgspec.json.Decoder(RegisterReply)
CONFIGURE = msgspec.json.Decoder(ConfigureReply)
RENEW = msgspec.json.Decoder(list[float])
WAKE = msgspec.json.Decoder(Wake)
