"""Two LiteLLM processes sharing one limit through Redis.

    .venv/bin/pip install -e '.[demo,litellm]'
    .venv/bin/python examples/litellm_fleet.py [--url redis://...] [--requests 24] [--without-limiter]

The parent starts the local cold server (it serves 4 requests at once and
refuses more with 429) and a Redis, then two worker processes. Each runs a
LiteLLM ``Router`` with one deployment and sends all its requests at once.
With ``AimdLimiter(throttle, max_parallel_requests=4)`` in
``litellm.callbacks`` the pair shares one limit of 4: every call waits for a
slot, and every call is answered. ``--without-limiter`` sets LiteLLM's own
``max_parallel_requests: 4`` on the deployment instead: LiteLLM counts it in
each process apart (8 at once for the pair) and refuses a call beyond it at
once, so many calls fail, some at the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import uuid

# LiteLLM fetches its model price list (and other catalogs) from the internet
# unless told not to; this talks to nothing but its own loopback servers.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

MAX_PARALLEL = 4


async def work(redis_url: str, server_url: str, namespace: str, requests: int, limiter: bool) -> None:
    """One worker process: ``requests`` chat calls at once through a Router."""
    import litellm

    from aimd_redis import AsyncThrottle
    from aimd_redis.litellm import AimdLimiter

    async with AsyncThrottle(redis_url, namespace=namespace) as throttle:
        deployment = {"model": "openai/cold-model", "api_base": f"{server_url}/v1", "api_key": "not-needed"}
        if limiter:
            litellm.callbacks = [AimdLimiter(throttle, max_parallel_requests=MAX_PARALLEL)]
        else:
            deployment["max_parallel_requests"] = MAX_PARALLEL
        router = litellm.Router(model_list=[{"model_name": "writer", "litellm_params": deployment}], num_retries=0)

        async def ask(i: int) -> str:
            try:
                await router.acompletion(model="writer", messages=[{"role": "user", "content": f"Line {i}, please."}])
                return "answered"
            except litellm.RateLimitError:
                return "refused"

        results = await asyncio.gather(*(ask(i) for i in range(requests)))
        print(f"worker: {results.count('answered')} answered, {results.count('refused')} refused", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: a private one)")
    parser.add_argument("--requests", type=int, default=24, help="requests per worker")
    parser.add_argument("--without-limiter", action="store_true", help="LiteLLM's own per-process limit only")
    parser.add_argument("--worker", nargs=3, metavar=("REDIS_URL", "SERVER_URL", "NAMESPACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(work(*args.worker, args.requests, not args.without_limiter))
        return

    from aimd_redis.demo.coldserver import ColdServer, ServerSettings
    from aimd_redis.demo.embedded import EmbeddedRedis

    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(EmbeddedRedis()).url
        settings = ServerSettings(peak=MAX_PARALLEL, warmup_seconds=0, service_seconds=0.1)
        server = stack.enter_context(ColdServer(settings))
        namespace = f"litellm-example-{uuid.uuid4().hex[:8]}"
        how = "LiteLLM's own limit only" if args.without_limiter else "AimdLimiter"
        print(f"two workers x {args.requests} requests, {how}, against a server of capacity {MAX_PARALLEL}")
        command = [sys.executable, __file__, "--requests", str(args.requests), "--worker", url, server.url, namespace]
        if args.without_limiter:
            command.append("--without-limiter")
        workers = [subprocess.Popen(command) for _ in range(2)]
        codes = [w.wait() for w in workers]
        stats = server.stats()
        print(
            f"server: {stats.requests} requests, {stats.served} served, {stats.rejected} refused (429), "
            f"at most {stats.max_concurrency} at once"
        )
        if any(codes):
            sys.exit(f"a worker failed: exit codes {codes}")


if __name__ == "__main__":
    main()
