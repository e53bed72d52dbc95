"""The examples in examples/ run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_sdk_example(real_redis_url: str, sdk: str) -> None:
    command = [sys.executable, str(EXAMPLES / "sdk.py"), "--sdk", sdk, "--url", real_redis_url, "--requests", "40"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{sdk}: 40 answers" in done.stdout
    assert "'The server is warm now.'" in done.stdout
    assert "in flight 0" in done.stdout


def test_the_readme_quick_start_runs_as_written(real_redis_url: str) -> None:
    from aimd_redis.demo.coldserver import ColdServer, ServerSettings

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'REDIS_URL = "redis://localhost:6379/0"' in snippet
    with ColdServer(ServerSettings(peak=4, warmup_seconds=0)) as server:
        # Only where it runs changes: the test's own Redis and server.
        code = snippet.replace("redis://localhost:6379/0", real_redis_url).replace(
            "http://127.0.0.1:8000/v1", f"{server.url}/v1"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("200 DomainState(")
    assert "in_flight=0" in done.stdout
