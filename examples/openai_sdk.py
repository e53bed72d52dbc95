"""The OpenAI SDK behind the shared limit, against the local cold server.

    .venv/bin/pip install -e '.[demo]' openai
    .venv/bin/python examples/openai_sdk.py [--url redis://...]

Sixteen threads share one ``openai.OpenAI`` client whose httpx transport
takes a fleet-wide slot for every request. The server starts cold (one
request at a time, warming to eight over five seconds); the shared limit
ramps to eight over eight seconds, behind it. Should a 429 come, it reaches
the caller as ``openai.RateLimitError`` (the transport never retries), and
the transport has already reported it: the next attempt queues behind the
cooldown instead of hammering the server.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import time

import httpx
import openai

from aimd_redis import Throttle, ThrottleConfig
from aimd_redis.demo.coldserver import ColdServer, ServerSettings
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.httpx import AimdTransport, openai_router

MODEL = "cold-model"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", help="Redis URL (default: a private one)")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(EmbeddedRedis(allow_fake=True)).url
        server = stack.enter_context(ColdServer(ServerSettings(peak=8, warmup_seconds=5, service_seconds=0.1)))
        throttle = Throttle(url, config=ThrottleConfig(rampup_seconds=8), namespace="openai-example")
        throttle.register(provider_name="local", model_id=MODEL, alias="example", max_parallel_requests=8)
        client = openai.OpenAI(
            base_url=f"{server.url}/v1",
            api_key="not-needed",
            http_client=httpx.Client(transport=AimdTransport(throttle, router=openai_router("local"))),
            max_retries=0,  # a retry would take a slot of its own anyway; the loop below retries
        )
        refused = 0

        def ask(i: int) -> str:
            nonlocal refused
            while True:
                try:
                    reply = client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"Question {i}"}]
                    )
                    return reply.choices[0].message.content or ""
                except openai.RateLimitError:
                    refused += 1  # reported already: the next try queues behind the cooldown

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(args.requests)))
        seconds = time.monotonic() - started
        state = throttle.domain_state("local", MODEL, "chat")
        stats = server.stats()
        throttle.close()
    print(f"{len(answers)} answers in {seconds:.1f}s, e.g. {answers[0]!r}")
    print(f"RateLimitError seen by the callers: {refused}; 429s sent by the server: {stats.rejected}")
    print(f"most requests the server saw at once: {stats.max_concurrency} (its peak: {server.settings.peak})")
    if state is not None:
        print(f"shared limit {state.current_limit}, in flight {state.in_flight}, ceiling {state.rate_limit_ceiling}")


if __name__ == "__main__":
    main()
