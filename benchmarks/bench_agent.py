"""What a fleet of processes costs Redis, with each process's agent, beside
the client of another tree (the previous release) in the same run.

    git worktree add /tmp/aimd-prev <commit of the previous release>
    python benchmarks/bench_agent.py --previous /tmp/aimd-prev

Two scenarios, each run by real processes (asyncio, one AsyncThrottle each,
every task through ``slot()``) against one private redis-server:

- waiting: 10 processes x 200 tasks on a domain of limit 4, holders hold
  0.5 s: script calls per second while they wait, and connections per
  process (CLIENT LIST, by each process's client name);
- hot: 6 processes x 64 tasks, limit 256, 10 ms requests: script calls and
  Redis script time (INFO commandstats) per request.

The previous tree is run from its own source (PYTHONPATH), with the same
dependencies, in another namespace. Figures go to benchmarks/results/agent.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "agent.json"
P, M, DOMAIN = "bench", "model", "chat"
SCENARIOS = {
    # processes, tasks per process, limit, seconds a request holds its slot
    "waiting": (10, 200, 4, 0.5),
    "hot": (6, 64, 256, 0.01),
}


async def _child(
    url: str, namespace: str, name: str, tasks: int, limit: int, hold: float, start: float, stop: float
) -> None:
    from aimd_redis import AsyncThrottle, ThrottleConfig

    done = 0
    async with AsyncThrottle(f"{url}?client_name={name}", namespace=namespace, config=ThrottleConfig()) as t:
        await t.register(provider_name=P, model_id=M, alias="bench", max_parallel_requests=limit)
        await asyncio.sleep(max(0.0, start - time.time()))

        async def task() -> None:
            nonlocal done
            while time.time() < stop:
                try:
                    async with t.slot(provider_name=P, model_id=M, domain=DOMAIN, timeout=max(0.1, stop - time.time())):
                        await asyncio.sleep(hold)
                except TimeoutError:
                    return
                done += 1

        await asyncio.gather(*(task() for _ in range(tasks)))
    print(json.dumps({"done": done}), flush=True)


def _run(url: str, tree: Path, namespace: str, scenario: str, seconds: float, admin: Any) -> dict[str, float]:
    processes, tasks, limit, hold = SCENARIOS[scenario]
    start = time.time() + 3.0  # every process registered and subscribed by then
    stop = start + seconds
    env = {**os.environ, "PYTHONPATH": str(tree)}
    names = [f"{namespace}-{scenario}-{i}" for i in range(processes)]
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                url,
                namespace,
                name,
                str(tasks),
                str(limit),
                str(hold),
                str(start),
                str(stop),
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    # Measured from a second in (queues formed) to a second before the end.
    time.sleep(max(0.0, start + 1.0 - time.time()))
    admin.config_resetstat()
    began = time.time()
    most = 0
    while time.time() < stop - 1.0:
        clients = admin.client_list()
        per = [sum(1 for c in clients if c.get("name") == n) for n in names]
        most = max(most, *per)
        time.sleep(0.25)
    stats = admin.info("commandstats")
    elapsed = time.time() - began
    calls = sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("fcall", "evalsha"))
    usec = sum(float(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("fcall", "evalsha"))
    done = 0
    for child in children:
        out, _ = child.communicate(timeout=120)
        done += json.loads(out.strip().splitlines()[-1])["done"]
    requests = done * elapsed / (seconds + 0.0)  # requests within the measured window, pro rata
    return {
        "calls_per_second": calls / elapsed,
        "calls_per_request": calls / requests if requests else 0.0,
        "script_usec_per_request": usec / requests if requests else 0.0,
        "most_connections_per_process": float(most),
        "requests_per_second": done / seconds,
    }


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        url, namespace, name, tasks, limit, hold, start, stop = argv[1:]
        asyncio.run(_child(url, namespace, name, int(tasks), int(limit), float(hold), float(start), float(stop)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--previous", type=Path, help="source tree of the previous release, run beside this one")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    args = parser.parse_args(argv)

    import redis

    from aimd_redis.demo.embedded import EmbeddedRedis

    trees = [("agent", ROOT, "aimd")]
    if args.previous is not None:
        trees.append(("previous", args.previous.resolve(), "prev"))
    figures: dict[str, dict[str, dict[str, float]]] = {}
    with EmbeddedRedis() as server:
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        for scenario in SCENARIOS:
            for label, tree, namespace in trees:
                print(f"{scenario}: {label} ...", flush=True)
                got = _run(server.url, tree, namespace, scenario, args.seconds, admin)
                figures.setdefault(scenario, {})[label] = got
                print("   " + ", ".join(f"{k} {v:,.2f}" for k, v in got.items()), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    waiting, hot = figures["waiting"]["agent"], figures["hot"]["agent"]
    print("\nsummary (targets in brackets)")
    print(f"  waiting: {waiting['calls_per_second']:.0f} script calls/s [<= 150]")
    print(f"  waiting: {waiting['most_connections_per_process']:.0f} connections per process at most [<= 3]")
    print(f"  hot: {hot['calls_per_request']:.2f} script calls per request [<= 0.5]")
    if "previous" in figures["hot"]:
        prev = figures["hot"]["previous"]
        ratio = hot["script_usec_per_request"] / prev["script_usec_per_request"]
        print(
            f"  hot: {hot['script_usec_per_request']:.1f} us of Redis script time per request, "
            f"{prev['script_usec_per_request']:.1f} us before: {ratio:.2f}x [<= 0.3x]"
        )
        before = figures["waiting"]["previous"]
        print(
            f"  before: waiting {before['calls_per_second']:.0f} calls/s, "
            f"{before['most_connections_per_process']:.0f} connections per process, "
            f"hot {prev['calls_per_request']:.2f} calls per request"
        )
    print(f"figures written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
