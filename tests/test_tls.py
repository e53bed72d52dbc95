"""TLS: a server reached only through a rediss:// URL, certificates made at
test time with openssl. The server itself speaks TLS where its build can
(Debian's redis-server); a build without TLS (the packaged valkey-server)
gets a TLS-terminating proxy of the test's own in front: what is tested is
the client's TLS path either way."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aimd_redis import AsyncThrottle, RedisUnavailableError, Throttle, ThrottleConfig
from aimd_redis.demo.embedded import EmbeddedRedis, _free_port, _wait_ready

from .conftest import IN_CI, needs_server
from .helpers import M, P

TARGET = {"provider_name": P, "model_id": M, "domain": "chat"}
QUIET = ThrottleConfig(wait_poll_seconds=30)  # a waiter served within the test was woken


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(folder: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "1", "-subj", "/CN=aimd-redis test CA", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "1", "-extfile", "san.cnf", cwd=folder)  # fmt: skip


def _tls_server(binary: str, port: int, folder: Path) -> subprocess.Popen[bytes] | None:
    """A server listening only on a TLS port, or None when its build has no TLS."""
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        cwd=folder, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_ready(_url((port, folder / "ca.crt")), proc)
    except RuntimeError:  # exited: "Failed finding TLS support"
        return None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


class TlsProxy:
    """Terminates TLS on ``port`` and relays each connection to a plain server."""

    def __init__(self, port: int, backend_port: int, folder: Path) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(folder / "server.crt", folder / "server.key")
        self._port, self._backend = port, backend_port
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the TLS proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", self._port, ssl=self._context)
        )
        self._started.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._backend)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                w.close()

        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(port, CA certificate) of a server reached only over TLS."""
    binary = needs_server("the TLS tests")
    if not shutil.which("openssl"):
        if IN_CI:
            pytest.fail("the TLS tests need openssl")
        pytest.skip("no openssl for the TLS tests")
    folder = tmp_path_factory.mktemp("tls")
    _certificates(folder)
    port = _free_port()
    proc = _tls_server(binary, port, folder)
    if proc is not None:
        try:
            yield port, folder / "ca.crt"
        finally:
            proc.terminate()
            proc.wait()
        return
    with EmbeddedRedis() as plain:
        proxy = TlsProxy(port, plain.port, folder)
        try:
            yield port, folder / "ca.crt"
        finally:
            proxy.close()


def _url(server: tuple[int, Path]) -> str:
    port, ca = server
    return f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"


def test_the_sync_client_over_tls_with_wake_ups(tls_server: tuple[int, Path]) -> None:
    t = Throttle(_url(tls_server), config=QUIET)
    t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    held = t.acquire(**TARGET, timeout=0)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(t.acquire(**TARGET, timeout=10)))
    waiter.start()
    deadline = time.monotonic() + 10
    while t.domain_state(P, M, "chat").waiters != 1:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    held.success()
    waiter.join(10)
    assert time.monotonic() - started < 2  # handed over and woken over the TLS pub/sub connection
    got[0].rate_limited(retry_after=1)  # type: ignore[attr-defined]
    state = t.domain_state(P, M, "chat")
    assert state is not None
    assert (state.in_flight, state.consecutive_429s) == (0, 1)
    t.close()


async def test_the_async_client_over_tls(tls_server: tuple[int, Path]) -> None:
    async with AsyncThrottle(_url(tls_server), config=QUIET, namespace="tls-async") as t:
        await t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
        held = await t.acquire(**TARGET, timeout=0)
        waiter = asyncio.create_task(t.acquire(**TARGET, timeout=10))
        await asyncio.sleep(0.2)
        await held.success()
        lease = await asyncio.wait_for(waiter, 2)
        assert (await lease.success()).released


def test_a_server_certificate_nobody_vouches_for_is_refused(tls_server: tuple[int, Path]) -> None:
    port, _ca = tls_server
    t = Throttle(f"rediss://127.0.0.1:{port}/0")  # the system's CAs do not know the test CA
    with pytest.raises(RedisUnavailableError, match="certificate verify failed"):
        t.register(provider_name=P, model_id=M, alias="gen", max_parallel_requests=1)
    t.close()
