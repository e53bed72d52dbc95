"""A fleet bound by a token budget, in real time: registered, learned, or unknown.

    pip install -e '.[demo]'
    python benchmarks/budget.py [--url redis://...] [--seconds 90] [--tpm 60000] [--plot budget.png]

Each run gets a fresh server that could serve 64 requests at once but admits
``--tpm`` tokens a minute (a bucket of one minute's worth, full at the start,
charged at admission: prompt plus answer), and a fleet of 8 processes x 8
tasks on the adaptive loop, each request asking for up to 200 tokens, every
refusal retried after its Retry-After. The fleet knows the budget three ways:

- registered: every process registers ``tokens_per_minute``;
- learned:    nobody registers it; the transports read the server's
              ``x-ratelimit-*`` headers;
- unknown:    the server sends no such headers: the concurrency loop alone,
              learning only from 429s.

The summary prints the share of the budget the server admitted in the steady
window (after the first minute's full bucket is spent) and the 429 share.
The control simulator's ``tpm-*`` scenarios model the same shape.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from aimd_redis import ThrottleConfig
from aimd_redis.demo.coldserver import ColdServer, Record, ServerSettings
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.demo.fleet import FleetRun, FleetSettings, Sample, run_fleet

MODES = ("registered", "learned", "unknown")
MAX_TOKENS = 200
#: A fleet that knows the budget uses this much of it, at no more than this share of 429s.
MIN_SHARE, MAX_429 = 0.9, 0.01


def share(records: list[Record], tpm: int, start: float, end: float) -> tuple[float, float]:
    """(tokens admitted / the budget's refill, 429s / requests) over [start, end)
    seconds of the run (record times are relative to the run's start)."""
    sent = [r for r in records if start <= r.arrived < end]
    tokens = sum(r.tokens for r in sent if r.status == 200)
    refused = sum(1 for r in sent if r.status == 429)
    return tokens / (tpm * (end - start) / 60), refused / len(sent) if sent else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--seconds", type=float, default=90.0, help="length of each run")
    parser.add_argument("--tpm", type=int, default=60_000, help="the server's tokens per minute")
    parser.add_argument("--plot", type=Path, default=Path("budget.png"))
    args = parser.parse_args()
    steady = (args.seconds / 2, args.seconds)

    embedded = None if args.url else EmbeddedRedis()
    url = args.url or embedded.url  # type: ignore[union-attr]
    print(f"Redis: {url}; {len(MODES)} runs of {args.seconds:g}s, budget {args.tpm:,} tokens/min", flush=True)
    results: dict[str, tuple[float, float, float, float, FleetRun]] = {}
    try:
        for mode in MODES:
            server_settings = ServerSettings(
                peak=64,
                warmup_seconds=0.0,
                service_seconds=0.5,
                tokens_per_minute=args.tpm,
                rate_limit_headers="none" if mode == "unknown" else "openai",
            )
            fleet = FleetSettings(
                processes=8,
                tasks=8,
                peak=64,
                config=ThrottleConfig(policy="adaptive", rampup_seconds=5.0),
                namespace=f"aimd-budget-{mode}-{int(time.time())}",
                tokens_per_minute=args.tpm if mode == "registered" else None,
                max_tokens=MAX_TOKENS,
            )

            def progress(sample: Sample, mode: str = mode) -> None:
                if round(sample.t / 0.2) % 50 == 0:  # every 10 s
                    print(
                        f"  {mode:10} {sample.t:5.0f}s  in service {sample.in_service:2}  "
                        f"limit {sample.limit}  waiters {sample.waiters:2}  served {sample.served}  "
                        f"429s {sample.rejected}",
                        flush=True,
                    )

            with ColdServer(server_settings) as server:
                run = run_fleet(url, server, fleet, seconds=args.seconds, progress=progress)
            records = [
                Record(
                    r.arrived - run.started,
                    r.finished - run.started,
                    r.path,
                    r.concurrency,
                    r.capacity,
                    r.status,
                    r.tokens,
                )
                for r in run.records
            ]
            steady_share, steady_429 = share(records, args.tpm, *steady)
            # Over the whole run the server could admit its full bucket plus the refill.
            admitted = sum(r.tokens for r in records if r.status == 200 and r.arrived < args.seconds)
            whole = admitted / (args.tpm * (1 + args.seconds / 60))
            overall_429 = share(records, args.tpm, 0.0, args.seconds)[1]
            results[mode] = (steady_share, steady_429, whole, overall_429, run)
            print(
                f"{mode:10} steady {100 * steady_share:.1f}% of the budget at {100 * steady_429:.2f}% 429s; "
                f"whole run {100 * whole:.1f}% at {100 * overall_429:.2f}% 429s",
                flush=True,
            )
    finally:
        if embedded is not None:
            embedded.close()

    print(f"\n{'fleet knows the budget':24} {'steady share':>12} {'steady 429s':>12} {'run share':>10} {'run 429s':>9}")
    for mode, (s_share, s_429, whole, o_429, _) in results.items():
        print(f"{mode:24} {100 * s_share:11.1f}% {100 * s_429:11.2f}% {100 * whole:9.1f}% {100 * o_429:8.2f}%")
    print(
        f"\nsteady: the last {steady[1] - steady[0]:g}s (the first minute's full bucket spent); share: tokens the "
        "server admitted against its budget"
    )
    missed = [mode for mode in ("registered", "learned") if results[mode][0] < MIN_SHARE or results[mode][1] > MAX_429]
    from aimd_redis.demo.plot import plot_budget

    print(f"Plot: {plot_budget([(mode, r[4]) for mode, r in results.items()], args.tpm, args.plot)}")
    print(
        "all targets met"
        if not missed
        else f"missed (at least {100 * MIN_SHARE:.0f}% at most {100 * MAX_429:.0f}% 429s): {', '.join(missed)}"
    )
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
