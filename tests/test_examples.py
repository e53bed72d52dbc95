"""The examples in examples/ run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_the_openai_sdk_example(real_redis_url: str) -> None:
    command = [sys.executable, str(EXAMPLES / "openai_sdk.py"), "--url", real_redis_url, "--requests", "40"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "40 answers" in done.stdout
    assert "in flight 0" in done.stdout
