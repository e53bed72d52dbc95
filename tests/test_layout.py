"""The layers: the library never loads the operator tools or the demo, and
the command loads the demo only to run it."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(imports: str) -> set[str]:
    code = f"import sys\n{imports}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


def test_the_library_loads_neither_the_tools_nor_the_demo() -> None:
    loaded = _loaded_after("import aimd_redis, aimd_redis.httpx")
    assert not {m for m in loaded if m.startswith(("aimd_redis.ops", "aimd_redis.demo"))}
    assert not {"aiohttp", "matplotlib", "fakeredis"} & loaded


def test_the_command_loads_the_demo_only_to_run_it() -> None:
    loaded = _loaded_after("from aimd_redis.ops.cli import build_parser\nbuild_parser().parse_args(['status'])")
    assert not {"aimd_redis.demo.coldserver", "aimd_redis.demo.fleet", "aiohttp", "matplotlib", "httpx"} & loaded
