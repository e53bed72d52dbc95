"""The current OpenAI or Anthropic SDK behind the shared limit, against the
local cold server.

    .venv/bin/pip install -e '.[demo,httpx2]' openai anthropic
    .venv/bin/python examples/sdk.py --sdk openai [--url redis://...]
    .venv/bin/python examples/sdk.py --sdk anthropic

Sixteen threads share one SDK client whose httpx2 transport takes a
fleet-wide slot for every request (the OpenAI SDK 3.x and the Anthropic SDK
2.x take only an ``httpx2.Client``). The server starts cold (one request at a
time, warming to eight over five seconds); the shared limit ramps to eight
over eight seconds, behind it. Should a 429 come anyway, the transport
reports it with the server's Retry-After before the SDK sees it, and the
SDK's own retry then queues behind the fleet's cooldown: no retry loop here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import time
from collections.abc import Callable

import httpx2

from aimd_redis import Throttle, ThrottleConfig
from aimd_redis.demo.coldserver import ColdServer, ServerSettings
from aimd_redis.demo.embedded import EmbeddedRedis
from aimd_redis.httpx2 import AimdTransport, anthropic_router, openai_router

MODEL = "cold-model"


def openai_asker(server: ColdServer, http: httpx2.Client) -> Callable[[int], str]:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", http_client=http, max_retries=5)

    def ask(i: int) -> str:
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Question {i}"}])
        return reply.choices[0].message.content or ""

    return ask


def anthropic_asker(server: ColdServer, http: httpx2.Client) -> Callable[[int], str]:
    import anthropic

    client = anthropic.Anthropic(base_url=server.url, api_key="not-needed", http_client=http, max_retries=5)

    def ask(i: int) -> str:
        reply = client.messages.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": f"Question {i}"}]
        )
        return "".join(block.text for block in reply.content if block.type == "text")

    return ask


SDKS = {"openai": (openai_router, openai_asker), "anthropic": (anthropic_router, anthropic_asker)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdk", choices=sorted(SDKS), default="openai")
    parser.add_argument("--url", help="Redis URL (default: a private one)")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    router, asker = SDKS[args.sdk]

    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(EmbeddedRedis(allow_fake=True)).url
        server = stack.enter_context(ColdServer(ServerSettings(peak=8, warmup_seconds=5, service_seconds=0.1)))
        throttle = Throttle(url, config=ThrottleConfig(rampup_seconds=8), namespace="sdk-example")
        throttle.register(provider_name="local", model_id=MODEL, alias="example", max_parallel_requests=8)
        http = stack.enter_context(httpx2.Client(transport=AimdTransport(throttle, router=router("local"))))
        ask = asker(server, http)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(args.requests)))
        seconds = time.monotonic() - started
        state = throttle.domain_state("local", MODEL, "chat")
        stats = server.stats()
        throttle.close()
    print(f"{args.sdk}: {len(answers)} answers in {seconds:.1f}s, e.g. {answers[0]!r}")
    print(f"429s sent by the server: {stats.rejected}")
    print(f"most requests the server saw at once: {stats.max_concurrency} (its peak: {server.settings.peak})")
    if state is not None:
        print(f"shared limit {state.current_limit}, in flight {state.in_flight}, ceiling {state.rate_limit_ceiling}")


if __name__ == "__main__":
    main()
