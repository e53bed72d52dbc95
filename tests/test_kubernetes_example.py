"""examples/kubernetes: the manifests hang together, the image and the
probes name what exists, and the worker they run does its job as the
Redis user the manifests set up, against a real Redis and a real server."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from aimd_redis.demo.coldserver import ColdServer, ServerSettings
from aimd_redis.demo.embedded import _free_port, _wait_ready
from aimd_redis.ops.cli import build_parser

from .conftest import needs_server

ROOT = Path(__file__).parent.parent
FOLDER = ROOT / "examples" / "kubernetes"
SECRET = {"name": "aimd-redis-auth", "key": "password"}


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(FOLDER.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["spec"]["template"]["spec"])


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(doc)["containers"]
    return dict(container)


def _all_containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{kind}/{name} {c['name']}", c)
        for (kind, name), doc in _manifests().items()
        if kind in ("Deployment", "Job")
        for c in _pod(doc).get("initContainers", []) + _pod(doc)["containers"]
    ]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _stages() -> dict[str, str]:
    """The Dockerfile's stages: name -> its text."""
    text = (FOLDER / "Dockerfile").read_text(encoding="utf-8")
    parts = re.split(r"^FROM \S+ AS (\S+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


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
    assert worker["command"] == ["python", "/app/worker.py"]
    assert "COPY examples/kubernetes/worker.py /app/worker.py" in _stages()["worker"]
    env = _env(worker)
    port = m[("Service", "redis")]["spec"]["ports"][0]["port"]
    assert env["REDIS_URL"] == f"redis://aimd:$(AIMD_PASSWORD)@redis:{port}/0"  # the ACL's user, the Secret's password
    assert env["API_BASE"] == f"http://cold-server:{m[('Service', 'cold-server')]['spec']['ports'][0]['port']}/v1"
    source = (FOLDER / "worker.py").read_text(encoding="utf-8")
    assert all(f'"{name}"' in source for name in env if name != "AIMD_PASSWORD")  # every variable set is read
    command = _container(m[("Deployment", "cold-server")])["command"]
    assert command[0] == "aimd-redis"
    assert build_parser().parse_args(command[1:]).port == 8000  # a real subcommand, real options


def test_every_container_has_resources_and_every_secret_is_the_one_the_docs_create() -> None:
    docs = (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    assert f"kubectl create secret generic {SECRET['name']} --from-literal={SECRET['key']}=" in docs
    for where, c in _all_containers():
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
        assert "memory" in c["resources"]["limits"], where
        for value in _env(c).values():
            if isinstance(value, dict):
                assert value == {"secretKeyRef": SECRET}, where
        if c["name"] != "acl":  # long-running: both probes
            assert {"readinessProbe", "livenessProbe"} <= set(c), where


def test_the_images_are_slim_and_what_the_manifests_run_is_in_them() -> None:
    stages = _stages()
    assert "[httpx]" in stages["worker"]
    assert "demo" not in stages["worker"]  # no matplotlib and friends in the worker
    assert "[demo]" in stages["cold-server"]
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv/", ".git/"} <= set(ignored)
    images = {c["image"].split(":")[0] for _, c in _all_containers()} - {"redis"}
    assert images == {"aimd-redis-worker", "aimd-redis-cold-server"}
    for image in images:  # the docs build each image by the stage of its name
        target = image.removeprefix("aimd-redis-")
        assert f"--target {target} -t {image} ." in (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    for where, c in _all_containers():
        for probe in ("readinessProbe", "livenessProbe"):
            command = c.get(probe, {}).get("exec", {}).get("command", [])
            if command[:1] == ["aimd-redis"]:  # a real subcommand, real options, the worker's model
                args = build_parser().parse_args(command[1:])
                assert args.model == ("local", _env(c)["MODEL"]), where


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A redis-server started as the manifest starts it: the ACL file its init
    container writes, and the manifest's arguments. Returns (password, port)."""
    binary = needs_server("the Kubernetes example's Redis")
    m = _manifests()[("Deployment", "redis")]
    (init,) = _pod(m)["initContainers"]
    password = "0123456789abcdef" * 3
    script = init["command"][2].replace("/acl/", f"{tmp_path}/")
    bin_dir = str(Path(sys.executable).parent)  # aimd-redis, as the worker image has it
    done = subprocess.run(
        ["sh", "-c", script],
        env={**os.environ, "AIMD_PASSWORD": password, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    args = [a.replace("/acl/", f"{tmp_path}/") for a in _container(m)["args"]]
    port = str(_free_port())
    proc = subprocess.Popen([binary, "--port", port, "--bind", "127.0.0.1", "--dir", str(tmp_path), *args])
    try:
        _wait_ready(f"redis://aimd:{password}@127.0.0.1:{port}/0", proc)
        yield password, port
    finally:
        proc.terminate()
        proc.wait()


def test_the_default_user_is_off_and_the_probe_passes(acl_redis: tuple[str, str]) -> None:
    password, port = acl_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=int(port), retry=Retry(NoBackoff(), 0)).ping()
    as_fleet = redis.Redis(host="127.0.0.1", port=int(port), username="aimd", password=password)
    assert as_fleet.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_fleet.set("elsewhere", "x")  # neither the command nor the key
    as_fleet.close()
    probe = _container(_manifests()[("Deployment", "redis")])["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"]
    if subprocess.run(["sh", "-c", "command -v redis-cli"], capture_output=True).returncode == 0:
        script = probe[2].replace("redis-cli ", f"redis-cli -h 127.0.0.1 -p {port} ")
        env = {**os.environ, "REDISCLI_AUTH": password}
        assert subprocess.run(["sh", "-c", script], env=env, timeout=10).returncode == 0, shlex.join(probe)


def test_the_worker_runs_its_share_as_the_acl_user_and_reports_progress(
    acl_redis: tuple[str, str], tmp_path: Path
) -> None:
    password, port = acl_redis
    progress = tmp_path / "progress"
    url = f"redis://aimd:{password}@127.0.0.1:{port}/0"
    with ColdServer(ServerSettings(peak=4, warmup_seconds=1, service_seconds=0.02)) as server:
        env = {
            **os.environ,
            "REDIS_URL": url,
            "API_BASE": f"{server.url}/v1",
            "REQUESTS": "40",
            "MAX_PARALLEL": "4",
            "RAMPUP_SECONDS": "1",
            "PROGRESS_FILE": str(progress),
        }
        done = subprocess.run(
            [sys.executable, str(FOLDER / "worker.py")], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert ": 40 answers in " in done.stdout
        assert server.stats().served == 40
    assert progress.exists()
    # The worker's readiness probe, as the worker's user: the model it registered is healthy.
    job = _container(_manifests()[("Job", "aimd-batch")])
    check = subprocess.run(
        [sys.executable, "-m", "aimd_redis.ops.cli", *job["readinessProbe"]["exec"]["command"][1:]],
        env={**os.environ, "REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
