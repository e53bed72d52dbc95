"""Read-only views of what the fleet is doing, for the CLI and the exporter.

Nothing here writes to Redis: models are found with SCAN (never KEYS), their
domains through each model's index set, and time comes from Redis TIME.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from aimd_redis.core import as_str, state_of
from aimd_redis.errors import CorruptStateError
from aimd_redis.keys import check_namespace, model_keys
from aimd_redis.schema import SETTINGS, parse_domain

#: Events that change a domain's limit, for "last change".
LIMIT_EVENTS = frozenset(
    {"ramp_start", "ramp", "ramp_end", "increase", "decrease", "clamp", "set_limit", "created", "reset"}
)
_LAST_CHANGE_SCAN = 500
#: A sync redis-py client (plain or cluster). Any: redis-py annotates its sync
#: and asyncio clients with one shared "Awaitable or value" type.
SyncClient = Any


class Budget(msgspec.Struct, kw_only=True):
    """A model's budget in force and what is left of it now (shared by its domains)."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    requests_left: float | None
    tokens_left: float | None

    def in_force(self) -> list[tuple[Literal["requests", "tokens"], int, float]]:
        """(kind, per minute, left) of each budget that is set."""
        kinds: tuple[tuple[Literal["requests", "tokens"], int | None, float | None], ...] = (
            ("requests", self.requests_per_minute, self.requests_left),
            ("tokens", self.tokens_per_minute, self.tokens_left),
        )
        return [(kind, limit, left) for kind, limit, left in kinds if limit is not None and left is not None]


def read_budget(client: SyncClient, cap: dict[str, str], budget_key: str, now: float) -> Budget | None:
    """The budget as the scripts would see it at ``now`` (refilled), or None."""
    limits = {name: int(cap[name]) if cap.get(name, "").isdigit() else None for name in ("rpm", "tpm")}
    if limits["rpm"] is None and limits["tpm"] is None:
        return None
    raw = {as_str(k): as_str(v) for k, v in client.hgetall(budget_key).items()}
    elapsed = max(0.0, now - _num(raw, "refilled_at")) / 60 if raw else 0.0
    left: dict[str, float | None] = {}
    for name, field in (("rpm", "requests"), ("tpm", "tokens")):
        limit = limits[name]
        left[field] = None if limit is None else min(limit, _num(raw, field) + limit * elapsed if raw else limit)
    return Budget(
        requests_per_minute=limits["rpm"],
        tokens_per_minute=limits["tpm"],
        requests_left=left["requests"],
        tokens_left=left["tokens"],
    )


class DomainReport(msgspec.Struct, kw_only=True):
    """One domain as an operator wants to see it; times in seconds."""

    provider_name: str
    model_id: str
    domain: str
    effective_max: int | None
    aliases: dict[str, int]
    current_limit: int
    in_flight: int
    waiters: int
    cooldown_left: float
    rate_limit_ceiling: int
    ceiling_age: float | None
    rampup_active: bool
    ramp_percent: float | None
    ramp_left: float | None
    last_change: str | None
    last_change_age: float | None
    total_429s: int
    total_reclaimed: int
    policy: str = "classic"
    """The policy the domain runs (it takes up the model's at its next touch)."""
    settings: dict[str, str] = {}
    """The model's stored loop settings (the last register's), by name."""
    budget: Budget | None = None
    """The model's budget (the same for each of its domains)."""
    problem: str | None = None
    """Why the domain cannot be read (a field the scripts refuse); the other
    numbers are then 0."""


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def server_time(client: SyncClient) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1_000_000


def find_models(client: SyncClient, namespace: str) -> list[tuple[str, str]]:
    """Every (provider, model) with a registration in the namespace, sorted."""
    check_namespace(namespace)
    prefix = f"{namespace}:{{"
    found = set()
    for key in client.scan_iter(match=f"{_glob_escape(prefix)}*}}:cap", count=1000):
        tag = as_str(key)[len(prefix) : -len("}:cap")]
        provider, _, model = tag.partition("/")
        found.add((provider, model))
    return sorted(found)


def _num(fields: dict[str, str], name: str) -> float:
    try:
        return float(fields.get(name, 0))
    except ValueError:
        return 0.0


def _last_changes(client: SyncClient, events_key: str, now: float) -> dict[str, tuple[str, float]]:
    """Domain -> (latest limit-changing event, its age), from the stream's tail."""
    latest: dict[str, tuple[str, float]] = {}
    for _id, raw in client.xrevrange(events_key, count=_LAST_CHANGE_SCAN):
        f = {as_str(k): as_str(v) for k, v in raw.items()}
        domain, event = f.get("domain", ""), f.get("event", "")
        if event in LIMIT_EVENTS and domain not in latest:
            latest[domain] = (f"{event} {f.get('from')} -> {f.get('to')}", max(0.0, now - _num(f, "at")))
    return latest


def report(
    client: SyncClient,
    namespace: str = "aimd",
    provider_name: str | None = None,
    model_id: str | None = None,
    domain: str | None = None,
) -> list[DomainReport]:
    """Reports for every domain matching the filters (None matches all)."""
    now = server_time(client)
    out = []
    for provider, model in find_models(client, namespace):
        if provider_name not in (None, provider) or model_id not in (None, model):
            continue
        mk = model_keys(namespace, provider, model)
        cap = {as_str(k): as_str(v) for k, v in client.hgetall(mk.cap).items()}
        emax = int(cap["effective_max"]) if cap.get("effective_max", "").isdigit() else None
        aliases = {k[len("alias:") :]: int(v) for k, v in cap.items() if k.startswith("alias:") and v.isdigit()}
        budget = read_budget(client, cap, mk.budget, now)
        names = sorted(as_str(n) for n in client.smembers(mk.index))
        changes = _last_changes(client, mk.events, now)
        for name in names:
            if domain not in (None, name):
                continue
            key = mk.domain(name)
            raw: dict[Any, Any] = client.hgetall(key)
            last = changes.get(name)
            try:
                record = parse_domain(key, {as_str(k): as_str(v) for k, v in raw.items()})
            except CorruptStateError as exc:  # this domain on its own line; the others as usual
                out.append(_unreadable(provider, model, name, emax, aliases, str(exc)))
                continue
            if record is None:
                continue
            state = state_of(record)
            ramp_seconds = _num(cap, "rampup_seconds")
            ramp_elapsed = now - state.rampup_started_at
            ramp_on = state.rampup_active and ramp_seconds > 0
            out.append(
                DomainReport(
                    provider_name=provider,
                    model_id=model,
                    domain=name,
                    effective_max=emax,
                    aliases=aliases,
                    current_limit=state.current_limit,
                    # Live leases only: one that expired counts in the hash until a script reaps it.
                    in_flight=client.zcount(mk.leases(name), f"({now}", "+inf"),
                    waiters=state.waiters,
                    cooldown_left=max(0.0, state.blocked_until - now),
                    rate_limit_ceiling=state.rate_limit_ceiling,
                    ceiling_age=now - record.ceiling_confirmed_at if state.rate_limit_ceiling else None,
                    rampup_active=state.rampup_active,
                    ramp_percent=min(100.0, 100 * ramp_elapsed / ramp_seconds) if ramp_on else None,
                    ramp_left=max(0.0, ramp_seconds - ramp_elapsed) if ramp_on else None,
                    last_change=last[0] if last else None,
                    last_change_age=last[1] if last else None,
                    total_429s=record.total_429s,
                    total_reclaimed=record.total_reclaimed,
                    policy=record.policy,
                    settings={name: cap[name] for name in SETTINGS if name in cap},
                    budget=budget,
                )
            )
    return out


def _unreadable(
    provider: str, model: str, domain: str, emax: int | None, aliases: dict[str, int], problem: str
) -> DomainReport:
    return DomainReport(
        provider_name=provider,
        model_id=model,
        domain=domain,
        effective_max=emax,
        aliases=aliases,
        current_limit=0,
        in_flight=0,
        waiters=0,
        cooldown_left=0.0,
        rate_limit_ceiling=0,
        ceiling_age=None,
        rampup_active=False,
        ramp_percent=None,
        ramp_left=None,
        last_change=None,
        last_change_age=None,
        total_429s=0,
        total_reclaimed=0,
        problem=problem,
    )


class Problem(msgspec.Struct):
    report: DomainReport
    why: str


def problems(reports: list[DomainReport], *, max_cooldown: float, max_pinned: float) -> list[Problem]:
    """Domains a probe should fail on: a long cooldown, or stuck at limit 1."""
    found = []
    for r in reports:
        if r.problem is not None:
            found.append(Problem(r, r.problem))
            continue
        if r.cooldown_left > max_cooldown:
            found.append(Problem(r, f"in cooldown for another {r.cooldown_left:.0f}s (threshold {max_cooldown:g}s)"))
        pinned_for = r.last_change_age
        if (
            r.current_limit == 1
            and (r.effective_max or 1) > 1
            and not r.rampup_active
            and (pinned_for is None or pinned_for > max_pinned)
        ):
            since = "as long as the event log goes back" if pinned_for is None else f"{pinned_for:.0f}s"
            found.append(Problem(r, f"pinned at limit 1 for {since} (threshold {max_pinned:g}s)"))
    return found
