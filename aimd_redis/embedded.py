"""A private Redis for demos and tests: ``redis-server`` when installed, else
fakeredis's TCP server (the ``demo`` extra), on a free loopback port."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        client.close()


class EmbeddedRedis:
    """A Redis this process started; stop it with :meth:`close` or ``with``."""

    def __init__(self, *, prefer: str = "redis-server", args: Sequence[str] = (), password: str | None = None) -> None:
        """``args`` go to redis-server as they are (``--maxmemory 2mb``);
        with ``password``, the server requires it and ``url`` carries it."""
        self.kind: str
        self.url: str
        self._args = [*args, *(("--requirepass", password) if password else ())]
        self._password = password
        self._proc: subprocess.Popen[bytes] | None = None
        self._command: list[str] = []
        self._fake: Any = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        binary = shutil.which("redis-server")
        if prefer == "redis-server" and binary:
            self._start_server(binary)
        else:
            if self._args:
                raise RuntimeError("server arguments need the redis-server binary")
            self._start_fake()

    def _start_server(self, binary: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="aimd-redis-")
        for _ in range(5):  # the free port may be taken between probe and bind
            port = _free_port()
            self.url = f"redis://{f':{self._password}@' if self._password else ''}127.0.0.1:{port}/0"
            self._command = [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--loglevel",
                "warning",
                # Loopback only, and tests compare DEBUG DIGEST to prove reads change nothing.
                "--enable-debug-command",
                "yes",
                *self._args,
            ]
            try:
                self._spawn()
            except (RuntimeError, redis.ConnectionError):
                continue
            self.kind = "redis-server"
            return
        raise RuntimeError("could not start redis-server on a free loopback port")

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(self.url, self._proc)
        except BaseException:
            self._proc.kill()
            self._proc.wait()
            raise

    def crash(self) -> None:
        """Kill the server (SIGKILL): clients see connections refused. It keeps no data."""
        if self._proc is None:
            raise RuntimeError("only a redis-server process can crash")
        self._proc.kill()
        self._proc.wait()

    def restart(self) -> None:
        """Start the server again on the same port, empty, after :meth:`crash`."""
        if self._proc is None or self._proc.poll() is None:
            raise RuntimeError("restart follows crash()")
        self._spawn()

    def _start_fake(self) -> None:
        try:
            from fakeredis import TcpFakeServer
        except ImportError:
            raise RuntimeError(
                "no redis-server on PATH and fakeredis is not installed: install redis-server, "
                "or pip install 'aimd-redis[demo]'"
            ) from None
        server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
        thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
        thread.start()
        self._fake = server
        self.url = f"redis://127.0.0.1:{server.server_address[1]}/0"
        self.kind = "fakeredis"
        _wait_ready(self.url, None)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def pause(self) -> None:
        """Stop the server process (SIGSTOP): it keeps its sockets but answers nothing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            raise RuntimeError("only a redis-server process can be paused")
        self._proc.send_signal(sig)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._fake is not None:
            self._fake.shutdown()
            self._fake.server_close()
            self._fake = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
