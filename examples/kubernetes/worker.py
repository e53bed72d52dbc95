"""One pod of a batch Job: sends its share of chat completions through the
fleet-wide limit, retrying each 429 after the server's Retry-After.

    REDIS_URL=redis://redis:6379/0 API_BASE=http://cold-server:8000/v1 python worker.py

Environment: REDIS_URL, API_BASE, MODEL (default cold-model), REQUESTS
(per pod, default 200), MAX_PARALLEL (the model's max across the whole
fleet, default 32), RAMPUP_SECONDS (default 20).
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from aimd_redis import Throttle, ThrottleConfig
from aimd_redis.httpx import AimdTransport, openai_router, retry_after_seconds

THREADS = 16  # requests this pod keeps open at most; the fleet's limit decides how many go


def main() -> None:
    model = os.environ.get("MODEL", "cold-model")
    requests = int(os.environ.get("REQUESTS", "200"))
    api = os.environ["API_BASE"].rstrip("/")
    config = ThrottleConfig(policy="adaptive", rampup_seconds=float(os.environ.get("RAMPUP_SECONDS", "20")))
    throttle = Throttle(os.environ["REDIS_URL"], config=config)
    # Every pod registers the same alias and max: idempotent, and whichever pod
    # starts first creates the model.
    throttle.register(
        provider_name="local",
        model_id=model,
        alias="batch",
        max_parallel_requests=int(os.environ.get("MAX_PARALLEL", "32")),
    )
    client = httpx.Client(transport=AimdTransport(throttle, router=openai_router("local")), timeout=120)
    refused = 0

    def ask(i: int) -> None:
        nonlocal refused
        body = {"model": model, "messages": [{"role": "user", "content": f"item {i} from {socket.gethostname()}"}]}
        while True:
            response = client.post(f"{api}/chat/completions", json=body)
            if response.status_code != 429:
                response.raise_for_status()
                return
            refused += 1  # already reported by the transport: the fleet backs off together
            time.sleep(retry_after_seconds(response.headers) or 1.0)

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(ask, range(requests)))
    state = throttle.domain_state("local", model, "chat")
    print(
        f"{socket.gethostname()}: {requests} answers in {time.monotonic() - started:.1f}s, {refused} 429s; "
        f"fleet limit {state.current_limit if state else '?'}",
        flush=True,
    )
    client.close()
    throttle.close()


if __name__ == "__main__":
    main()
