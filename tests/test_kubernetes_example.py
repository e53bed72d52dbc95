"""examples/kubernetes: the manifests hang together, and the worker they run
does its job against a real Redis and a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from aimd_redis.demo.coldserver import ColdServer, ServerSettings
from aimd_redis.ops.cli import build_parser

FOLDER = Path(__file__).parent.parent / "examples" / "kubernetes"


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(FOLDER.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def test_the_manifests_name_what_exists() -> None:
    m = _manifests()
    assert set(m) == {
        ("Deployment", "redis"),
        ("Service", "redis"),
        ("Deployment", "cold-server"),
        ("Service", "cold-server"),
        ("Job", "aimd-batch"),
    }
    for name in ("redis", "cold-server"):  # each Service selects its Deployment's pods
        assert (
            m[("Service", name)]["spec"]["selector"]
            == m[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        )
    worker = _container(m[("Job", "aimd-batch")])
    dockerfile = (FOLDER / "Dockerfile").read_text(encoding="utf-8")
    assert worker["command"] == ["python", "/app/worker.py"]
    assert "COPY examples/kubernetes/worker.py /app/worker.py" in dockerfile
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["REDIS_URL"] == f"redis://redis:{m[('Service', 'redis')]['spec']['ports'][0]['port']}/0"
    assert env["API_BASE"] == f"http://cold-server:{m[('Service', 'cold-server')]['spec']['ports'][0]['port']}/v1"
    source = (FOLDER / "worker.py").read_text(encoding="utf-8")
    assert all(f'"{name}"' in source for name in env)  # every variable set is one the worker reads
    command = _container(m[("Deployment", "cold-server")])["command"]
    assert command[0] == "aimd-redis"
    assert build_parser().parse_args(command[1:]).port == 8000  # a real subcommand, real options


def test_the_worker_runs_its_share_through_the_shared_limit(real_redis_url: str) -> None:
    with ColdServer(ServerSettings(peak=4, warmup_seconds=1, service_seconds=0.02)) as server:
        env = {
            **os.environ,
            "REDIS_URL": real_redis_url,
            "API_BASE": f"{server.url}/v1",
            "REQUESTS": "40",
            "MAX_PARALLEL": "4",
            "RAMPUP_SECONDS": "1",
        }
        done = subprocess.run(
            [sys.executable, str(FOLDER / "worker.py")], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert ": 40 answers in " in done.stdout
        assert server.stats().served == 40
