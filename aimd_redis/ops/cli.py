"""The ``aimd-redis`` command: the demo, and the operator's tools."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import redis
from redis.cluster import RedisCluster

from aimd_redis.errors import AimdRedisError, RedisUnavailableError, translate
from aimd_redis.ops.inspect import Budget, DomainReport, SyncClient, find_models, problems, report

DEFAULT_URL = "redis://localhost:6379/0"
EXIT_PROBLEM, EXIT_UNREACHABLE = 1, 2


def _client(args: argparse.Namespace, *, text: bool = False) -> SyncClient:
    """The client for ``--url``; with ``text``, one that decodes replies (in
    hiredis: ten thousand domains read faster than through Python)."""
    options = {"socket_timeout": 5, "socket_connect_timeout": 5, "decode_responses": text}
    if args.cluster:  # SCAN then visits every primary, and each key goes to its node
        return RedisCluster.from_url(args.url, **options)
    return redis.Redis.from_url(args.url, **options)


def _model(text: str) -> tuple[str, str]:
    provider, sep, model = text.partition("/")
    if not sep or not provider or not model:
        raise argparse.ArgumentTypeError(f"MODEL is provider/model, e.g. openai/gpt-4o, not {text!r}")
    return provider, model


def _models(text: str) -> tuple[str, str | None]:
    """PROVIDER/MODEL, or PROVIDER alone for all of its models."""
    if "/" in text:
        return _model(text)
    if not text:
        raise argparse.ArgumentTypeError("MODEL is provider/model (or a provider alone), e.g. openai/gpt-4o")
    return text, None


def _number(kind: type[int] | type[float], least: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= least or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
        return value

    return parse


#: Argument types that refuse what makes no sense (a negative count, a NaN).
COUNT = _number(int, 0, "0 or more")
SECONDS = _number(float, 0, "0 or more seconds")
POSITIVE_SECONDS = _number(float, 1e-9, "more than 0 seconds")


def _model_exists(client: SyncClient, namespace: str, provider: str, model: str) -> bool:
    from aimd_redis.keys import model_keys

    keys = model_keys(namespace, provider, model)
    return bool(client.exists(keys.cap, keys.index, keys.events))


def _no_such_model(client: SyncClient, namespace: str, provider: str, model: str | None) -> int:
    """Say that nothing matches (with the models that exist) and fail."""
    wanted = f"model {provider}/{model}" if model else f"model of provider {provider!r}"
    print(f"aimd-redis: no {wanted} in namespace {namespace!r} (nothing registered it, or it expired)", file=sys.stderr)
    known = find_models(client, namespace)
    close = difflib.get_close_matches(f"{provider}/{model or ''}", known, n=3)
    if close:
        print(f"aimd-redis: did you mean {' or '.join(close)}?", file=sys.stderr)
    shown = ", ".join(known[:_MODELS_LISTED]) + (
        f" and {len(known) - _MODELS_LISTED} more" if len(known) > _MODELS_LISTED else ""
    )
    print(f"aimd-redis: the models there: {shown or 'none'}", file=sys.stderr)
    return EXIT_PROBLEM


_MODELS_LISTED = 20


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _budget_cell(budget: Budget | None) -> str:
    """'rpm 37/60 tpm 12000/30000': what is left of each budget per minute."""
    if budget is None:
        return "-"
    short = {"requests": "rpm", "tokens": "tpm"}
    return " ".join(f"{short[kind]} {left:.0f}/{limit}" for kind, limit, left in budget.in_force())


def _model_lines(r: DomainReport) -> list[str]:
    """The lines of a model as a whole, above its domains: its name,
    registration and budget. Whatever else belongs to the model rather than
    to one domain (its stored loop configuration) is a line of its own here."""
    if not r.model_id:  # a key that names no model
        return [r.provider_name]
    aliases = " ".join(f"{a}={v}" for a, v in sorted(r.aliases.items()))
    emax = "?" if r.effective_max is None else str(r.effective_max)
    head = f"{r.provider_name}/{r.model_id}  max {emax} ({aliases or 'no alias'})  budget left {_budget_cell(r.budget)}"
    if not r.settings:  # registered by a release that stored none: ThrottleConfig's defaults run
        return [head, "  rules: the defaults (none stored)"]
    return [head, "  rules: " + " ".join(f"{name}={value}" for name, value in r.settings.items())]


DOMAIN_COLUMNS = ["DOMAIN", "LIMIT", "IN FLIGHT", "WAITERS", "COOLDOWN", "CEILING", "RAMP", "LATENCY", "LAST CHANGE"]


def _latency_cell(r: DomainReport) -> str:
    """'1.6x no load', with ' (dip)' while the limit dips to measure it; '-' unmeasured."""
    if r.latency_noload <= 0:
        return "-"
    return f"{r.latency_recent / r.latency_noload:.1f}x no load" + (" (dip)" if r.latency_dip else "")


def _domain_row(r: DomainReport) -> list[str]:
    if r.problem is not None:
        return [r.domain or "-", f"UNREADABLE: {r.problem}"]
    ramp = "-" if r.ramp_percent is None else f"{r.ramp_percent:.0f}% ({_age(r.ramp_left)} left)"
    ceiling = "-" if not r.rate_limit_ceiling else f"{r.rate_limit_ceiling} ({_age(r.ceiling_age)} ago)"
    last = "-" if r.last_change is None else f"{r.last_change} ({_age(r.last_change_age)} ago)"
    cooldown = "-" if r.cooldown_left <= 0 else f"{r.cooldown_left:.1f}s"
    cells = [r.domain, str(r.current_limit), str(r.in_flight), str(r.waiters), cooldown, ceiling, ramp]
    return [*cells, _latency_cell(r), last]


def _group_lines(r: DomainReport) -> list[str]:
    """A line per group under its domain: 'batch  in flight 6  waiting 24  weight 1  share 75%',
    then 'reserved 2' for a group with reserved slots."""
    cells = [
        [
            g.group,
            f"in flight {g.in_flight}",
            f"waiting {g.waiting}",
            f"weight {g.weight:g}",
            f"share {g.share:.0%}",
            f"reserved {g.reserved}" if g.reserved else "",
        ]
        for g in r.groups
    ]
    widths = [max((len(row[i]) for row in cells), default=0) for i in range(6)]
    return ["    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def status_table(reports: list[DomainReport]) -> str:
    """Each model's own lines, then a row per domain (with a line per group
    under a domain whose callers come in groups); the columns line up across
    models (an unreadable domain's problem runs on from its name)."""
    blocks = [(_model_lines(run[0]), [(_domain_row(r), _group_lines(r)) for r in run]) for run in _by_model(reports)]
    rows = [DOMAIN_COLUMNS, *(row for _, block in blocks for row, _ in block)]
    widths = [max((len(row[i]) for row in rows if len(row) > i + 1), default=0) for i in range(len(DOMAIN_COLUMNS))]

    def line(row: list[str]) -> str:
        return "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()

    out: list[str] = []
    for head, block in blocks:
        out += [*head, line(DOMAIN_COLUMNS)]
        for row, groups in block:
            out += [line(row), *groups]
    return "\n".join(out)


def _by_model(reports: list[DomainReport]) -> list[list[DomainReport]]:
    """The reports cut into runs of one model each (they come in model order)."""
    groups: list[list[DomainReport]] = []
    for r in reports:
        if groups and (groups[-1][0].provider_name, groups[-1][0].model_id) == (r.provider_name, r.model_id):
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args, text=True)
    provider, model = args.model or (None, None)
    while True:
        reports = report(client, args.namespace, provider, model, args.domain)
        if not reports and provider is not None and not args.watch:
            return _nothing_matches(client, args, provider, model)
        if args.json:
            print(msgspec.json.encode(reports).decode())
        else:
            if args.watch:
                print("\x1b[H\x1b[2J", end="")
            print(status_table(reports) if reports else f"no domains in namespace {args.namespace!r}")
        if not args.watch:
            return 0
        sys.stdout.flush()
        time.sleep(args.watch)


def _nothing_matches(client: SyncClient, args: argparse.Namespace, provider: str, model: str | None) -> int:
    if args.domain is None or not report(client, args.namespace, provider, model):
        return _no_such_model(client, args.namespace, provider, model)
    what = f"{provider}/{model}" if model else f"the models of {provider}"
    print(f"aimd-redis: no domain {args.domain!r} in {what} (nothing used it, or it expired)", file=sys.stderr)
    return EXIT_PROBLEM


def _where(r: DomainReport) -> str:
    """The model and domain a report is about (a key that names no model as itself)."""
    model = f"{r.provider_name}/{r.model_id}" if r.model_id else r.provider_name
    return f"{model} {r.domain}" if r.domain else model


def cmd_check(args: argparse.Namespace) -> int:
    client = _client(args, text=True)
    provider, model = args.model or (None, None)
    reports = report(client, args.namespace, provider, model)
    if not reports and provider is not None:
        return _no_such_model(client, args.namespace, provider, model)
    found = problems(reports, max_cooldown=args.max_cooldown, max_pinned=args.max_pinned)
    for p in found:
        print(f"PROBLEM {_where(p.report)}: {p.why}")
    sick = {id(p.report) for p in found}
    healthy = sum(1 for r in reports if id(r) not in sick)
    if found:
        print(f"{healthy} healthy domain(s), {len(found)} problem(s) in namespace {args.namespace!r}")
        return EXIT_PROBLEM
    print(f"ok: {len(reports)} domain(s) in namespace {args.namespace!r}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    from aimd_redis import Throttle

    provider, model = args.model
    client = _client(args)
    if not _model_exists(client, args.namespace, provider, model):
        return _no_such_model(client, args.namespace, provider, model)
    what = f"{provider}/{model} {args.domain}" if args.domain else f"every domain of {provider}/{model}"
    if not args.yes:
        try:
            answer = input(f"Reset {what}? Its learned limit and leases are deleted. [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in {"y", "yes"}:
            print("not reset")
            return EXIT_PROBLEM
    count = Throttle(client, namespace=args.namespace).reset(provider, model, args.domain)
    print(f"reset {count} domain(s) of {provider}/{model}")
    return 0


def cmd_set_limit(args: argparse.Namespace) -> int:
    from aimd_redis import Throttle

    provider, model = args.model
    client = _client(args)
    if not _model_exists(client, args.namespace, provider, model):
        return _no_such_model(client, args.namespace, provider, model)
    throttle = Throttle(client, namespace=args.namespace)
    limit = throttle.set_limit(provider, model, args.domain, args.limit)
    if limit != args.limit:
        emax = throttle.effective_max(provider, model)
        clamped = f"asked {args.limit}: clamped to 1..{emax}, the effective max"
        print(f"{provider}/{model} {args.domain}: limit {limit} ({clamped})")
    else:
        print(f"{provider}/{model} {args.domain}: limit {limit}")
    return 0


def _setting(text: str) -> tuple[str, float | str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"a setting is name=value, e.g. reduce_factor=0.5, not {text!r}")
    try:
        return name, int(value) if value.isdigit() else float(value)
    except ValueError:
        return name, value  # a name (the policy); the library judges it


def cmd_config(args: argparse.Namespace) -> int:
    from aimd_redis import Throttle
    from aimd_redis.keys import model_keys
    from aimd_redis.schema import SETTINGS

    provider, model = args.model
    client = _client(args)
    if not _model_exists(client, args.namespace, provider, model):
        return _no_such_model(client, args.namespace, provider, model)
    if args.set:
        Throttle(client, namespace=args.namespace).configure(provider, model, dict(args.set))
    cap = model_keys(args.namespace, provider, model).cap
    stored = dict(zip(SETTINGS, client.hmget(cap, list(SETTINGS)), strict=True))
    width = max(map(len, SETTINGS))
    for name, raw in stored.items():
        shown = "(default: never stored)" if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)
        print(f"{name:<{width}}  {shown}")
    return 0


def _event_line(entry_id: bytes, raw: dict[bytes, bytes]) -> str:
    f = {k.decode(): v.decode() for k, v in raw.items()}
    millis = int(entry_id.decode().split("-")[0])
    stamp = datetime.datetime.fromtimestamp(millis / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    event = f.get("event", "?")
    change = f"{f.get('from')} -> {f.get('to')}"
    if event == "cooldown":  # from and to are the times the cooldown starts and ends
        with contextlib.suppress(KeyError, ValueError):
            change = f"for {float(f['to']) - float(f['from']):.1f}s"
    return f"{stamp[:-4]}Z  {f.get('domain', '?'):<12} {event:<18} {change}"


def cmd_events(args: argparse.Namespace) -> int:
    from aimd_redis.keys import model_keys

    provider, model = args.model
    key = model_keys(args.namespace, provider, model).events
    client = _client(args)
    if not _model_exists(client, args.namespace, provider, model):
        return _no_such_model(client, args.namespace, provider, model)
    entries = list(reversed(client.xrevrange(key, count=max(1, args.count))))
    for entry_id, raw in entries[len(entries) - args.count :] if args.count else []:
        print(_event_line(entry_id, raw))
    if not args.follow:
        return 0
    # Follow from the last entry that exists, not "$": nothing written between
    # this read and the first XREAD can be missed.
    last = entries[-1][0] if entries else b"0-0"
    print(f"following {key} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    while True:
        sys.stdout.flush()
        for _stream, new in client.xread({key: last}, block=1000) or []:
            for entry_id, raw in new:
                print(_event_line(entry_id, raw))
                last = entry_id


def cmd_exporter(args: argparse.Namespace) -> int:
    try:
        from prometheus_client import start_http_server
    except ImportError:
        print("the exporter needs the metrics extra: pip install 'aimd-redis[metrics]'", file=sys.stderr)
        return EXIT_UNREACHABLE
    from aimd_redis.ops.exporter import registry_for

    start_http_server(args.port, addr=args.host, registry=registry_for(_client(args, text=True), args.namespace))
    print(f"serving metrics of namespace {args.namespace!r} on http://{args.host}:{args.port}/metrics", flush=True)
    while True:
        time.sleep(3600)


def cmd_demo(args: argparse.Namespace) -> int:
    from aimd_redis.demo.main import DemoSettings, run

    settings = DemoSettings(
        processes=args.processes,
        tasks=args.tasks,
        peak=args.peak,
        server_peak=args.server_peak,
        scaled_peak=args.scaled_peak,
        warmup_seconds=args.warmup,
        rampup_seconds=args.rampup,
        time_scale=args.time_scale,
        policy=args.policy,
        plot=None if args.plot == "" else Path(args.plot),
    )
    return run(args.demo_url, settings)


def cmd_cold_server(args: argparse.Namespace) -> int:
    try:
        from aimd_redis.demo.coldserver import ColdServer, ServerSettings
    except ImportError as exc:
        print(f"the cold server needs the demo extra ({exc.name} is missing)", file=sys.stderr)
        return EXIT_PROBLEM
    settings = ServerSettings(
        peak=args.peak,
        warmup_seconds=args.warmup,
        service_seconds=args.service,
        retry_after_seconds=args.retry_after,
        cold_after_seconds=args.cold_after,
        error_rate=args.error_rate,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        rate_limit_headers=args.rate_limit_headers,
        queueing=args.queue,
        growth=args.growth,
        queue_cap=args.queue_cap,
        first_token_share=args.first_token_share,
    )
    with ColdServer(settings, host=args.host, port=args.port) as server:
        print(
            f"cold server on {server.url}/v1 (Ctrl-C to stop); GET /admin/stats, POST /admin/peak, POST /admin/budget",
            flush=True,
        )
        while True:
            time.sleep(args.report)
            st = server.stats()
            print(
                f"{st.elapsed:7.0f}s  capacity {st.capacity}/{st.peak}  in service {st.in_service}  "
                f"served {st.served}  tokens {st.tokens_served}  429s {st.rejected} "
                f"({st.budget_refusals} on the budget)  errors {st.errors}"
                + (f"  queued {st.queued}" if settings.queueing else ""),
                flush=True,
            )


def cmd_acl(args: argparse.Namespace) -> int:
    from aimd_redis.ops.acl import acl_rule

    rule = acl_rule(args.user, args.namespace or ["aimd"], args.password)
    # An ACL file line reads its words as redis-cli does, after "user".
    print(("user " if args.aclfile else "ACL SETUSER ") + " ".join(_redis_cli_quoted(arg) for arg in rule))
    if args.password == PASSWORD_PLACEHOLDER:
        print(f"(replace {PASSWORD_PLACEHOLDER} with the user's password, or pass --password)", file=sys.stderr)
    return 0


PASSWORD_PLACEHOLDER = "CHANGE-ME"


def _redis_cli_quoted(arg: str) -> str:
    """``arg`` as redis-cli reads it back: quoted (and escaped) when it holds a
    space, a quote, a backslash or a control character."""
    if arg and all(c.isprintable() and not c.isspace() and c not in "\"'\\" for c in arg):
        return arg
    escaped = "".join(_ESCAPES.get(c) or (c if c.isprintable() else _hex(c)) for c in arg)
    return f'"{escaped}"'


def _hex(c: str) -> str:
    return "".join(f"\\x{b:02x}" for b in c.encode())


#: Inside double quotes, redis-cli reads these back (a line ends the command).
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def cmd_soak(args: argparse.Namespace) -> int:
    from aimd_redis.demo.soak import SoakSettings, run

    settings = SoakSettings(
        processes=args.processes, tasks=args.tasks, seconds=args.seconds, kill_every=args.kill_every
    )
    where = args.url or "a private Redis (killed and restarted empty half way)"
    print(f"soak: {settings.processes} processes x {settings.tasks} tasks for {settings.seconds:g}s on {where}")
    result = run(args.url, settings)
    print("\nSummary")
    for line in result.lines():
        print(f"  {line}")
    print("\n" + ("ok: nothing leaked, nothing crashed, the limit held" if result.ok else "FAILED"))
    return 0 if result.ok else EXIT_PROBLEM


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the defaults, except where there is none (None or a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


MODEL_HELP = "provider/model, e.g. openai/gpt-4o"
MODELS_HELP = "only this model (provider/model), or a provider's models (provider); default: every model"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aimd-redis",
        description="A fleet-wide AIMD concurrency limit in Redis.",
        formatter_class=_Help,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every limit change this process makes")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_redis(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", default=os.environ.get("REDIS_URL", DEFAULT_URL), help="Redis URL ($REDIS_URL)")
        p.add_argument("--namespace", default="aimd", help="the prefix of every key the fleet uses")
        p.add_argument("--cluster", action="store_true", help="the URL is a node of a Redis Cluster")
        return p

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help, formatter_class=_Help)
        p.set_defaults(func=func)
        return p

    demo = add("demo", cmd_demo, "run a fleet against a cold, rate-limited local inference server")
    demo.add_argument("--url", dest="demo_url", default=os.environ.get("REDIS_URL"), help="default: a private Redis")
    from aimd_redis.demo.main import DemoSettings  # its defaults; the demo's machinery loads only to run it

    d = DemoSettings()
    demo.add_argument("--processes", type=int, default=d.processes, help="worker processes of the fleet")
    demo.add_argument("--tasks", type=int, default=d.tasks, help="asyncio tasks per process")
    demo.add_argument("--peak", type=int, default=d.peak, help="max_parallel_requests the fleet registers")
    demo.add_argument("--server-peak", type=int, default=d.server_peak, help="what the warm server serves at once")
    demo.add_argument("--scaled-peak", type=int, default=d.scaled_peak, help="the server's peak after it scales out")
    demo.add_argument("--warmup", type=float, default=d.warmup_seconds, help="server warm-up in seconds")
    demo.add_argument("--rampup", type=float, default=d.rampup_seconds, help="the fleet's startup ramp in seconds")
    demo.add_argument("--time-scale", type=float, default=d.time_scale, help="multiply every duration by this")
    demo.add_argument("--policy", choices=("classic", "adaptive"), default=d.policy, help="the loop's rules")
    demo.add_argument("--plot", default=str(d.plot), help="where to write the PNG ('' for none)")

    soak = add("soak", cmd_soak, "run a fleet under faults (kills, a Redis restart, errors) and check nothing leaked")
    soak.add_argument("--url", default=None, help="a Redis to use (no restart then); default: a private one")
    soak.add_argument("--processes", type=int, default=16, help="worker processes of the fleet")
    soak.add_argument("--tasks", type=int, default=4, help="asyncio tasks per process")
    soak.add_argument("--seconds", type=float, default=60.0, help="how long to run")
    soak.add_argument("--kill-every", type=float, default=5.0, help="seconds between SIGKILLs of a worker")

    cold = add("cold-server", cmd_cold_server, "run the demo's cold, rate-limited inference server alone")
    cold.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    cold.add_argument("--port", type=int, default=8000, help="the port to listen on")
    cold.add_argument("--peak", type=int, default=16, help="requests served at once when warm")
    cold.add_argument("--warmup", type=float, default=10.0, help="seconds from capacity 1 to the peak")
    cold.add_argument("--service", type=float, default=0.25, help="seconds per chat completion")
    cold.add_argument("--retry-after", type=float, default=0.5, help="seconds a 429 asks to wait")
    cold.add_argument("--cold-after", type=float, help="scale to zero after this many idle seconds")
    cold.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests that fail")
    cold.add_argument("--rpm", type=int, help="requests per minute it admits (default: no such budget)")
    cold.add_argument("--tpm", type=int, help="tokens per minute it admits (default: no such budget)")
    cold.add_argument(
        "--rate-limit-headers",
        choices=("openai", "anthropic", "none"),
        default="openai",
        help="how a budgeted server tells its budget",
    )
    cold.add_argument(
        "--queue", action="store_true", help="queue beyond the peak (the batch) instead of refusing, as vLLM does"
    )
    cold.add_argument("--growth", type=float, default=0.5, help="(--queue) a full batch is 1 + this times slower")
    cold.add_argument("--queue-cap", type=int, help="(--queue) requests queued before it answers 503 (default: no cap)")
    cold.add_argument(
        "--first-token-share", type=float, default=0.1, help="(--queue) a stream's first token after this share"
    )
    cold.add_argument("--report", type=float, default=5.0, help="print counts every this many seconds")

    status = with_redis(add("status", cmd_status, "show every model and domain (read-only)"))
    status.add_argument("model", nargs="?", type=_models, metavar="MODEL", help=MODELS_HELP)
    status.add_argument("domain", nargs="?", metavar="DOMAIN", help="only this domain (chat, embedding, ...)")
    status.add_argument("--json", action="store_true", help="print the same as JSON")
    status.add_argument("--watch", type=POSITIVE_SECONDS, metavar="SECONDS", help="refresh every SECONDS")

    check = with_redis(
        add("check", cmd_check, "exit 1 on a long cooldown, a limit stuck at 1 or an unreadable key, 2 if unreachable")
    )
    check.add_argument("model", nargs="?", type=_models, metavar="MODEL", help=MODELS_HELP)
    check.add_argument("--max-cooldown", type=SECONDS, default=60.0, metavar="SECONDS", help="longest cooldown left")
    check.add_argument(
        "--max-pinned", type=SECONDS, default=300.0, metavar="SECONDS", help="longest time a limit may sit at 1"
    )

    reset = with_redis(add("reset", cmd_reset, "forget a model's (or one domain's) learned state"))
    reset.add_argument("model", type=_model, metavar="MODEL", help=MODEL_HELP)
    reset.add_argument(
        "domain", nargs="?", metavar="DOMAIN", help="only this domain (default: every domain of the model)"
    )
    reset.add_argument("--yes", action="store_true", help="do not ask")

    set_limit = with_redis(add("set-limit", cmd_set_limit, "set a domain's current limit"))
    set_limit.add_argument("model", type=_model, metavar="MODEL", help=MODEL_HELP)
    set_limit.add_argument("domain", metavar="DOMAIN", help="the domain (chat, embedding, ...)")
    set_limit.add_argument(
        "limit", type=int, metavar="LIMIT", help="the new current limit (clamped to 1..the effective max)"
    )

    config = with_redis(add("config", cmd_config, "show a model's stored loop settings, or change some (--set)"))
    config.add_argument("model", type=_model, metavar="MODEL", help=MODEL_HELP)
    config.add_argument(
        "--set",
        type=_setting,
        action="append",
        metavar="NAME=VALUE",
        help="change a setting (repeat); logged in the event stream; the next register stores its own again",
    )

    events = with_redis(add("events", cmd_events, "print a model's event log"))
    events.add_argument("model", type=_model, metavar="MODEL", help=MODEL_HELP)
    events.add_argument("--count", type=COUNT, default=50, help="how many of the latest to print first")
    events.add_argument("--follow", action="store_true", help="keep printing new events")

    acl = add("acl", cmd_acl, "print the ACL rule for a Redis user that may run the library and nothing else")
    acl.add_argument("--user", default="aimd", help="the Redis user's name")
    acl.add_argument("--password", default=PASSWORD_PLACEHOLDER, help="written into the rule as >PASSWORD")
    acl.add_argument("--namespace", action="append", help="a namespace the user may use (repeat; default aimd)")
    acl.add_argument(
        "--aclfile", action="store_true", help="print the user's line for a Redis ACL file instead of a command"
    )

    exporter = with_redis(add("exporter", cmd_exporter, "serve Prometheus metrics of every domain"))
    exporter.add_argument("--port", type=int, default=9464, help="the port to serve /metrics on")
    exporter.add_argument("--host", default="0.0.0.0", help="the address to listen on")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except redis.RedisError as exc:
        return _failed(args, translate(exc))
    except (AimdRedisError, ValueError) as exc:
        return _failed(args, exc)


def _failed(args: argparse.Namespace, exc: Exception) -> int:
    print(f"aimd-redis: {exc}", file=sys.stderr)
    if not isinstance(exc, RedisUnavailableError):
        return EXIT_PROBLEM
    if getattr(args, "url", None) == DEFAULT_URL:
        print(
            f"aimd-redis: {DEFAULT_URL} is only the default: give your Redis with --url redis://HOST:PORT/DB "
            "or in $REDIS_URL",
            file=sys.stderr,
        )
    return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
