"""The ``aimd-redis`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aimd_redis.demo import DemoSettings, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aimd-redis", description="A fleet-wide AIMD concurrency limit in Redis.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a small fleet against a simulated rate-limited upstream")
    demo.add_argument("--url", default=os.environ.get("REDIS_URL"), help="Redis URL (default: a private server)")
    d = DemoSettings()
    demo.add_argument("--processes", type=int, default=d.processes)
    demo.add_argument("--threads", type=int, default=d.threads, help="threads per process")
    demo.add_argument("--seconds", type=float, default=d.seconds)
    demo.add_argument("--capacity", type=int, default=d.capacity, help="what the upstream can serve at once")
    demo.add_argument("--peak", type=int, default=d.peak, help="max_parallel_requests registered")
    demo.add_argument("--rampup", type=float, default=d.rampup_seconds, help="startup ramp in seconds")
    demo.add_argument("-v", "--verbose", action="store_true", help="log every limit change")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    settings = DemoSettings(
        processes=args.processes,
        threads=args.threads,
        seconds=args.seconds,
        capacity=args.capacity,
        peak=args.peak,
        rampup_seconds=args.rampup,
    )
    return run(args.url, settings)


if __name__ == "__main__":
    sys.exit(main())
