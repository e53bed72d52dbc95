"""Read-only views of what the fleet is doing, for the CLI and the exporter.

Nothing here writes to Redis: models are found with SCAN (never KEYS), their
domains through each model's index set, and time comes from Redis TIME.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Literal

import msgspec

from aimd_redis.core import as_str, state_of
from aimd_redis.errors import CorruptStateError
from aimd_redis.keys import DEFAULT_GROUP, ModelKeys, check_namespace, group_of, model_keys
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


def read_budget(cap: dict[str, str], bucket: dict[Any, Any], now: float) -> Budget | None:
    """The budget as the scripts would see it at ``now`` (refilled), or None;
    ``bucket`` is the budget key's hash."""
    limits = {name: int(cap[name]) if cap.get(name, "").isdigit() else None for name in ("rpm", "tpm")}
    if limits["rpm"] is None and limits["tpm"] is None:
        return None
    raw = texts(bucket)
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


class GroupReport(msgspec.Struct, kw_only=True):
    """One group of a domain's requests: its leases live now and its callers queued."""

    group: str
    """The group's name; ``default`` for requests without a group."""
    in_flight: int
    waiting: int
    weight: float
    """The weight its waiting processes declared (the largest, when they
    differ); 1 when none did: Redis keeps no weight for leases or for single
    waiting calls."""
    share: float
    """The group's part of the domain's slots in use at the time of reading:
    its in-flight over the domain's, from 0 to 1 (0 when nothing is in flight)."""
    reserved: int = 0
    """Slots the model's ``reserved`` setting holds for the group at the
    domain's current limit, ``floor(share * current_limit)``, which no other
    group may take (0: none)."""


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
    latency_noload: float = 0.0
    latency_recent: float = 0.0
    """``policy="latency"``: the no-load and recent latency (seconds, or per
    token used); 0 until measured."""
    latency_dip: bool = False
    """``policy="latency"``: the limit is dipped to measure the no-load latency."""
    settings: dict[str, str] = {}
    """The model's stored loop settings (the last register's), by name."""
    budget: Budget | None = None
    """The model's budget (the same for each of its domains)."""
    groups: list[GroupReport] = []
    """Each group with requests in flight or waiting or slots reserved, by
    name, while any of them is a named group; empty while the domain serves
    requests without a group only."""
    problem: str | None = None
    """Why the domain cannot be read (a field the scripts refuse, a key of the
    wrong type); the other numbers are then 0. A problem of the model as a
    whole (its cap, index, budget or events key) has ``domain`` "", and a cap
    key that names no model has its hash tag as ``provider_name`` and
    ``model_id`` ""."""


def texts(raw: dict[Any, Any]) -> dict[str, str]:
    """A hash as text: as it is from a client that decodes replies (the
    CLI's, the faster), decoded here from one that does not."""
    if not raw or isinstance(next(iter(raw)), str):
        return raw
    return {as_str(k): as_str(v) for k, v in raw.items()}


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def server_time(client: SyncClient) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1_000_000


def find_models(client: SyncClient, namespace: str) -> list[str]:
    """The hash tag (``provider/model``) of every cap key in the namespace,
    sorted; a tag that names no valid model is kept, to be reported."""
    check_namespace(namespace)
    prefix = f"{namespace}:{{"
    found = {
        as_str(key)[len(prefix) : -len("}:cap")]
        for key in client.scan_iter(match=f"{_glob_escape(prefix)}*}}:cap", count=1000)
    }
    return sorted(found)


def _num(fields: dict[str, str], name: str) -> float:
    try:
        return float(fields.get(name, 0))
    except ValueError:
        return 0.0


def _last_changes(entries: list[Any], now: float) -> dict[str, tuple[str, float]]:
    """Domain -> (latest limit-changing event, its age), from the stream's tail."""
    latest: dict[str, tuple[str, float]] = {}
    for _id, raw in entries:
        f = texts(raw)
        domain, event = f.get("domain", ""), f.get("event", "")
        if event in LIMIT_EVENTS and domain not in latest:
            latest[domain] = (f"{event} {f.get('from')} -> {f.get('to')}", max(0.0, now - _num(f, "at")))
    return latest


#: Models read per round trip: two pipelines (their cap, index, budget and
#: events; then their domains) serve this many models at once.
MODELS_PER_TRIP = 100


def report(
    client: SyncClient,
    namespace: str = "aimd",
    provider_name: str | None = None,
    model_id: str | None = None,
    domain: str | None = None,
) -> list[DomainReport]:
    """Reports for every domain matching the filters (None matches all).

    A key the library cannot read (a cap key that names no model, a key of the
    wrong type) becomes a report of its own with ``problem`` set; the other
    models are read as usual.
    """
    now = server_time(client)
    if provider_name is not None and model_id is not None:  # one model: no need to scan for it
        one = model_keys(namespace, provider_name, model_id)
        tags = [f"{provider_name}/{model_id}"] if client.exists(one.cap) else []
    else:
        tags = [t for t in find_models(client, namespace) if provider_name in (None, t.partition("/")[0])]
    out: list[DomainReport] = []
    for start in range(0, len(tags), MODELS_PER_TRIP):
        out += _read_models(client, namespace, tags[start : start + MODELS_PER_TRIP], domain, now)
    return out


class _Model(msgspec.Struct):
    provider: str
    model: str
    keys: ModelKeys
    emax: int | None
    aliases: dict[str, int]
    settings: dict[str, str]
    budget: Budget | None
    domains: list[str]
    changes: dict[str, tuple[str, float]]


def _failed(reply: Any, key: str) -> str | None:
    """Why ``reply`` (one command's, from a pipeline) is not a value, or None."""
    if not isinstance(reply, Exception):
        return None
    if str(reply).startswith("WRONGTYPE"):
        return f"{key} holds the wrong type of value; fix or delete it with redis-cli"
    return f"{key}: {reply}"


def _read_models(
    client: SyncClient, namespace: str, tags: list[str], domain: str | None, now: float
) -> list[DomainReport]:
    out: list[DomainReport] = []
    named: list[tuple[str, str, ModelKeys]] = []
    for tag in tags:
        provider, _, model = tag.partition("/")
        try:
            named.append((provider, model, model_keys(namespace, provider, model)))
        except ValueError as exc:  # a stray key under the namespace: its cap names no model
            out.append(_unreadable(tag, "", "", None, {}, f"{namespace}:{{{tag}}}:cap names no model ({exc})"))
    pipe = client.pipeline(transaction=False)
    for _p, _m, mk in named:
        pipe.hgetall(mk.cap)
        pipe.smembers(mk.index)
        pipe.hgetall(mk.budget)
        pipe.xrevrange(mk.events, count=_LAST_CHANGE_SCAN)
    replies = pipe.execute(raise_on_error=False)
    models: list[_Model] = []
    for i, (provider, model, mk) in enumerate(named):
        got = replies[4 * i : 4 * i + 4]
        why = next(
            (w for r, k in zip(got, (mk.cap, mk.index, mk.budget, mk.events), strict=True) if (w := _failed(r, k))),
            None,
        )
        raw_cap, index, raw_budget, events = got
        cap = {} if isinstance(raw_cap, Exception) else texts(raw_cap)
        emax = int(cap["effective_max"]) if cap.get("effective_max", "").isdigit() else None
        aliases = {k[len("alias:") :]: int(v) for k, v in cap.items() if k.startswith("alias:") and v.isdigit()}
        if why is not None:  # the model on a line of its own; its domains as far as they can be read
            out.append(_unreadable(provider, model, "", emax, aliases, why))
        budget = None if isinstance(raw_budget, Exception) else read_budget(cap, raw_budget, now)
        names = [] if isinstance(index, Exception) else sorted(as_str(n) for n in index)
        changes = {} if isinstance(events, Exception) else _last_changes(events, now)
        wanted = [n for n in names if domain in (None, n)]
        settings = {name: cap[name] for name in SETTINGS if name in cap}
        models.append(_Model(provider, model, mk, emax, aliases, settings, budget, wanted, changes))
    pipe = client.pipeline(transaction=False)
    for m in models:
        for name in m.domains:
            pipe.hgetall(m.keys.domain(name))
            # Live leases only: one that expired counts in the hash until a script reaps it.
            pipe.zcount(m.keys.leases(name), f"({now}", "+inf")
    replies = iter(pipe.execute(raise_on_error=False))
    grouped: list[tuple[int, ModelKeys]] = []
    waiting: list[tuple[int, ModelKeys]] = []
    for m in models:
        for name in m.domains:
            raw, live = next(replies), next(replies)
            fields = raw if isinstance(raw, Exception) else texts(raw)
            for r in _domain_report(m, name, fields, live, now):
                if not isinstance(fields, Exception) and r.problem is None:
                    if _has_groups(r, fields):
                        grouped.append((len(out), m.keys))
                    elif r.waiters > 0:
                        waiting.append((len(out), m.keys))
                out.append(r)
    _add_groups(client, out, grouped + _waiting_in_groups(client, out, waiting), now)
    return out


def _has_groups(r: DomainReport, fields: dict[str, str]) -> bool:
    """Whether the domain hash says the domain's groups are worth a read:
    leases live while it counts a named group's, or the model reserves
    slots for groups (most domains: neither)."""
    return bool(r.settings.get("reserved")) or (r.in_flight > 0 and any(f.startswith("in_flight:") for f in fields))


def _waiting_in_groups(
    client: SyncClient, out: list[DomainReport], waiting: list[tuple[int, ModelKeys]]
) -> list[tuple[int, ModelKeys]]:
    """Those of these domains with callers waiting where a named group is
    among them, from their ``:groups`` (a member per waiting group), so that
    a fleet that waits without groups costs a small read, not its queues and
    leases. A ``:groups`` that cannot be read makes its domain unreadable."""
    if not waiting:
        return []
    keys = [mk.queue(out[i].domain)[2] for i, mk in waiting]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.zrange(key, 0, 2)  # of any three one is named, if any but 'default' and '~v' (the virtual time) is there
    found = []
    for (i, mk), key, got in zip(waiting, keys, pipe.execute(raise_on_error=False), strict=True):
        if (why := _failed(got, key)) is not None:
            r = out[i]
            out[i] = _unreadable(r.provider_name, r.model_id, r.domain, r.effective_max, r.aliases, why)
        elif any(as_str(g) not in (DEFAULT_GROUP, VIRTUAL_TIME) for g in got):
            found.append((i, mk))
    return found


#: The member of a domain's ``:groups`` that holds the queue's virtual time, not a group.
VIRTUAL_TIME = "~v"


def reserved_slots(reserved: str, current_limit: int) -> dict[str, int]:
    """Group -> the slots a stored ``reserved`` setting (``"interactive=0.2,..."``)
    holds for it at this limit, as the scripts count them, where that is at
    least one; a part that is not ``group=share`` is left out."""
    held: dict[str, int] = {}
    for part in filter(None, reserved.split(",")):
        group, _, share = part.partition("=")
        with contextlib.suppress(ValueError, OverflowError):
            if (slots := math.floor(float(share) * current_limit)) > 0:
                held[group] = slots
    return held


def _group_of(member: str) -> str:
    return group_of(member) or DEFAULT_GROUP


def _group_keys(mk: ModelKeys, domain: str) -> tuple[str, str, str]:
    """The keys that tell a domain's groups: what each process wants, the
    queue (for single waiting calls) and the leases."""
    queue, _beats, _groups, want, _handed = mk.queue(domain)
    return want, queue, mk.leases(domain)


def _add_groups(client: SyncClient, out: list[DomainReport], grouped: list[tuple[int, ModelKeys]], now: float) -> None:
    """Fill in the groups of the reports at these places in ``out``, in one
    round trip (each lease id and queue member names its group)."""
    if not grouped:
        return
    keys = [_group_keys(mk, out[i].domain) for i, mk in grouped]
    pipe = client.pipeline(transaction=False)
    for want, queue, leases in keys:
        pipe.hgetall(want)
        pipe.zrange(queue, 0, -1)
        pipe.zrangebyscore(leases, f"({now}", "+inf")  # live leases only, as the domain's in-flight
    replies = pipe.execute(raise_on_error=False)
    for n, (i, _mk) in enumerate(grouped):
        r, read = out[i], replies[3 * n : 3 * n + 3]
        why = next((w for got, key in zip(read, keys[n], strict=True) if (w := _failed(got, key))), None)
        held = reserved_slots(r.settings.get("reserved", ""), r.current_limit)
        try:
            r.groups = [] if why else _groups_of(keys[n][0], texts(read[0]), read[1], read[2], held)
        except CorruptStateError as exc:
            why = str(exc)
        if why is not None:
            out[i] = _unreadable(r.provider_name, r.model_id, r.domain, r.effective_max, r.aliases, why)


def _groups_of(
    want_key: str, wants: dict[str, str], queued: list[Any], leases: list[Any], held: dict[str, int]
) -> list[GroupReport]:
    """The groups of one domain, from its processes' wants, the members of its
    queue, its live lease ids and the slots reserved for groups."""
    in_flight: dict[str, int] = {}
    waiting: dict[str, int] = {}
    weights: dict[str, float] = {}
    for lease_id in leases:
        group = _group_of(as_str(lease_id))
        in_flight[group] = in_flight.get(group, 0) + 1
    for member, value in wants.items():  # a process's entry: '<total>[x<weight>]=<segments>'
        if member == "*":  # the total wanted by every process
            continue
        head = value.partition("=")[0]
        total, _, weight = head.partition("x")
        try:
            count, declared = int(total), float(weight or 1)
        except ValueError:
            raise CorruptStateError(
                f"{want_key} field {member} holds {value!r}, which is no count of callers"
            ) from None
        group = _group_of(member)
        waiting[group] = waiting.get(group, 0) + count
        weights[group] = max(weights.get(group, 0.0), declared)
    for member in map(as_str, queued):
        if "." in member:  # a single waiting call (a process's entry has no token)
            group = _group_of(member)
            waiting[group] = waiting.get(group, 0) + 1
    names = sorted(in_flight.keys() | waiting.keys() | held.keys())
    if names in ([], [DEFAULT_GROUP]):
        return []
    busy = sum(in_flight.values())
    return [
        GroupReport(
            group=g,
            in_flight=in_flight.get(g, 0),
            waiting=waiting.get(g, 0),
            weight=weights.get(g, 1.0),
            share=in_flight.get(g, 0) / busy if busy else 0.0,
            reserved=held.get(g, 0),
        )
        for g in names
    ]


def _domain_report(m: _Model, name: str, raw: Any, live: Any, now: float) -> list[DomainReport]:
    key = m.keys.domain(name)
    why = _failed(raw, key) or _failed(live, m.keys.leases(name))
    try:
        record = None if why else parse_domain(key, raw)
    except CorruptStateError as exc:  # this domain on its own line; the others as usual
        why = str(exc)
    if why is not None:
        return [_unreadable(m.provider, m.model, name, m.emax, m.aliases, why)]
    if record is None:
        return []
    state = state_of(record)
    ramp_seconds = _num(m.settings, "rampup_seconds")
    ramp_elapsed = now - state.rampup_started_at
    ramp_on = state.rampup_active and ramp_seconds > 0
    last = m.changes.get(name)
    return [
        DomainReport(
            provider_name=m.provider,
            model_id=m.model,
            domain=name,
            effective_max=m.emax,
            aliases=m.aliases,
            current_limit=state.current_limit,
            in_flight=int(live),
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
            latency_noload=record.latency_noload,
            latency_recent=record.latency_recent,
            latency_dip=record.latency_dip > 0,
            settings=m.settings,
            budget=m.budget,
        )
    ]


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
