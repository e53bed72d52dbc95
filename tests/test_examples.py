"""The examples in examples/ run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_sdk_example(real_redis_url: str, sdk: str) -> None:
    command = [sys.executable, str(EXAMPLES / "sdk.py"), "--sdk", sdk, "--url", real_redis_url, "--requests", "40"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{sdk}: 40 answers" in done.stdout
    assert "'The server is warm now.'" in done.stdout
    assert "in flight 0" in done.stdout


def first_python_block(page: str) -> str:
    text = (ROOT / page).read_text(encoding="utf-8")
    return text.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize(
    ("page", "answer"),
    [
        # The SDK through the httpx2 transport: the model's answer, then the state.
        ("README.md", "The server is warm now.\n"),
        # A slot taken by hand around an httpx request: the status, then the state.
        ("docs/api.md", "200 DomainState("),
    ],
)
def test_the_quick_start_runs_as_written(real_redis_url: str, page: str, answer: str) -> None:
    from aimd_redis.demo.coldserver import ColdServer, ServerSettings

    snippet = first_python_block(page)
    assert 'REDIS_URL = "redis://localhost:6379/0"' in snippet
    assert 'API = "http://127.0.0.1:8000/v1"' in snippet
    with ColdServer(ServerSettings(peak=4, warmup_seconds=0)) as server:
        # Only where it runs changes: the test's own Redis and server.
        code = snippet.replace("redis://localhost:6379/0", real_redis_url).replace(
            "http://127.0.0.1:8000/v1", f"{server.url}/v1"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        served = server.stats().served
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(answer), done.stdout
    assert "DomainState(current_limit=" in done.stdout
    assert "in_flight=0," in done.stdout  # the slot was given back
    assert served == 1
