"""Validated names and the Redis key layout.

All keys of one model share the hash tag ``{<provider>/<model>}``, so they
live in one Cluster slot and a script may touch any of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from aimd_redis.errors import ArgumentTypeError, InvalidArgumentError

_NAME_MAX = 200
# Printable, no whitespace: keys stay readable and unambiguous in redis-cli.
_BAD_CHARS = re.compile(r"[{}\s\x00-\x1f\x7f]")
_DOMAIN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A namespace starts every key and wake channel, and an ACL rule grants
# "<namespace>:*": a ':' or a glob character in it would let one namespace's
# rule cover another's keys.
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: The group of waiters and leases without one.
DEFAULT_GROUP = "default"
#: Weights outside this range would make the virtual clock's steps (1/weight)
#: lose precision against each other.
WEIGHT_RANGE = (0.001, 1000.0)
#: Names under the model's tag that are not domains.
RESERVED_DOMAINS = frozenset({"cap", "events", "domains"})


def _check_name(what: str, value: object, extra: str = "") -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > _NAME_MAX:
        raise InvalidArgumentError(f"{what} is longer than {_NAME_MAX} characters")
    bad = _BAD_CHARS.search(value) or (re.search(f"[{re.escape(extra)}]", value) if extra else None)
    if bad:
        raise InvalidArgumentError(f"{what} {value!r} contains {bad.group()!r}, which names may not hold")
    return value


def check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise ArgumentTypeError(f"namespace must be a str, not {type(namespace).__name__}")
    if not _NAMESPACE.fullmatch(namespace):
        raise InvalidArgumentError(f"namespace {namespace!r} must be 1 to 64 characters from A-Z a-z 0-9 _ . -")
    return namespace


def check_alias(alias: object) -> str:
    return _check_name("alias", alias)


def check_domain(domain: object) -> str:
    if not isinstance(domain, str):
        raise ArgumentTypeError(f"domain must be a str, not {type(domain).__name__}")
    if not _DOMAIN.fullmatch(domain):
        raise InvalidArgumentError(f"domain {domain!r} must be 1 to 64 characters from A-Z a-z 0-9 _ -")
    if domain in RESERVED_DOMAINS:
        raise InvalidArgumentError(f"domain {domain!r} is reserved by the key layout")
    return domain


def check_group(group: object) -> str | None:
    """A group name as stored (``None`` for the default group, which
    ``"default"`` also names): it becomes part of lease ids and queue entries,
    so it holds only characters that cannot be mistaken for their separators."""
    if group is None:
        return None
    if not isinstance(group, str):
        raise ArgumentTypeError(f"group must be a str or None, not {type(group).__name__}")
    if not _DOMAIN.fullmatch(group):
        raise InvalidArgumentError(f"group {group!r} must be 1 to 64 characters from A-Z a-z 0-9 _ -")
    return None if group == DEFAULT_GROUP else group


def group_of(member: str) -> str | None:
    """The group a lease id, queue member or wake-up's entry names,
    ``<client>[~<group>][.<token>]`` (None: the default group)."""
    return member.partition(".")[0].partition("~")[2] or None


def check_weight(weight: object) -> float:
    """A group's weight: a finite number in WEIGHT_RANGE."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ArgumentTypeError(f"weight must be a number, not {type(weight).__name__}")
    low, high = WEIGHT_RANGE
    if not low <= weight <= high:  # also refuses nan
        raise InvalidArgumentError(f"weight must be between {low:g} and {high:g}, not {weight!r}")
    return float(weight)


@dataclass(frozen=True, slots=True)
class ModelKeys:
    """The keys of one model."""

    tag: str
    cap: str
    index: str
    events: str

    def domain(self, domain: str) -> str:
        return f"{self.tag}:{domain}"

    def leases(self, domain: str) -> str:
        return f"{self.tag}:{domain}:leases"

    def queue(self, domain: str) -> list[str]:
        """The wait queue's keys: waiters by virtual start time, their
        heartbeats, each group's virtual finish time, what each process's entry
        wants, the slots handed to each process."""
        return [f"{self.tag}:{domain}:{name}" for name in ("queue", "beats", "groups", "want", "handed")]

    def tokens(self, domain: str) -> str:
        """The token reservations of the domain's leases and waiters (with a token budget)."""
        return f"{self.tag}:{domain}:tokens"

    @property
    def budget(self) -> str:
        """The model's request and token buckets (what is left, and when);
        named under ``cap`` so that it cannot be a domain's key."""
        return f"{self.cap}:budget"

    @property
    def wake_prefix(self) -> str:
        """Prefix of the processes' wake channels (with the model's hash tag)."""
        return f"{self.tag}:wake:"


@lru_cache(maxsize=4096)
def model_keys(namespace: str, provider_name: str, model_id: str) -> ModelKeys:
    """Validate the names and build the model's keys (cached: on the hot path)."""
    check_namespace(namespace)
    _check_name("provider_name", provider_name, extra="/")
    _check_name("model_id", model_id)
    tag = f"{namespace}:{{{provider_name}/{model_id}}}"
    return ModelKeys(tag=tag, cap=f"{tag}:cap", index=f"{tag}:domains", events=f"{tag}:events")
