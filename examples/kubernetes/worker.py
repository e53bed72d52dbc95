"""One pod of a batch Job: sends its share of chat completions through the
fleet-wide limit; a 429 is sent again once the server's Retry-After has
passed, which the whole fleet waits out with it.

    REDIS_URL=redis://redis:6379/0 API_BASE=http://cold-server:8000/v1 python worker.py

Environment: REDIS_URL, API_BASE, MODEL (default cold-model), REQUESTS
(per pod, default 200), MAX_PARALLEL (the model's max across the whole
fleet, default 32), RAMPUP_SECONDS (default 20), PROGRESS_FILE (touched at
each answer or 429, for a liveness probe; default none).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from aimd_redis import Throttle, ThrottleConfig, with_retries

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
    client = httpx.Client(timeout=120)
    sent = itertools.count()
    progress = Path(os.environ["PROGRESS_FILE"]) if os.environ.get("PROGRESS_FILE") else None
    if progress is not None:
        progress.touch()

    def ask(i: int) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": f"item {i} from {socket.gethostname()}"}]}

        def send() -> httpx.Response:
            next(sent)
            response = client.post(f"{api}/chat/completions", json=body)
            if progress is not None:
                progress.touch()
            return response

        # A slot per attempt; a 429 is reported with its Retry-After, and the
        # next attempt waits it out in the queue, with every pod.
        response = with_retries(throttle, send, provider_name="local", model_id=model, domain="chat", attempts=10)
        response.raise_for_status()

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(ask, range(requests)))
    refused = next(sent) - requests
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
