"""A real Redis Cluster on loopback for the tests: N masters, the slots split
evenly, joined with CLUSTER MEET (no redis-cli needed)."""

from __future__ import annotations

import socket
import subprocess
import tempfile
from types import TracebackType

import redis

from aimd_redis.demo.embedded import _free_port, _wait_ready

from .helpers import wait_until


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        port = _free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class LocalCluster:
    def __init__(self, binary: str, masters: int = 3) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="aimd-cluster-")
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            for i in range(masters):
                port = _cluster_port()
                self.ports.append(port)
                self._procs.append(
                    subprocess.Popen(
                        [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                         "--cluster-announce-ip", "127.0.0.1",
                         "--cluster-config-file", f"{self._dir.name}/nodes-{i}.conf",
                         "--save", "", "--appendonly", "no", "--dir", self._dir.name],
                        stdout=subprocess.DEVNULL,
                    )
                )  # fmt: skip
            for port, proc in zip(self.ports, self._procs, strict=True):
                _wait_ready(f"redis://127.0.0.1:{port}/0", proc)
            nodes = [redis.Redis(port=port) for port in self.ports]
            step = 16384 // masters
            for i, node in enumerate(nodes):
                last = 16383 if i == masters - 1 else (i + 1) * step - 1
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
            for port in self.ports[1:]:
                nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
            for node in nodes:
                wait_until(lambda n=node: n.cluster("info")["cluster_state"] == "ok", "state not ok")
                wait_until(lambda n=node: len(n.cluster("nodes")) == masters, "nodes do not know each other")
                node.close()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for proc in self._procs:
            proc.terminate()
            proc.wait()
        self._procs = []
        self._dir.cleanup()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
