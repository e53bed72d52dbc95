"""Redis errors surface as the library's own typed errors."""

from __future__ import annotations

import time

import pytest
import redis

from aimd_redis import Lease, RedisUnavailableError, Throttle
from aimd_redis.embedded import EmbeddedRedis, _free_port

from .helpers import M, P, reg


def test_an_unreachable_redis_is_a_typed_error_within_the_socket_timeout() -> None:
    t = Throttle(f"redis://127.0.0.1:{_free_port()}/0")
    started = time.monotonic()
    for call in (
        lambda: reg(t, 4),
        lambda: t.try_acquire(provider_name=P, model_id=M, domain="chat"),
        lambda: t.domain_state(P, M, "chat"),
        lambda: t.effective_max(P, M),
    ):
        with pytest.raises(RedisUnavailableError, match="unreachable") as info:
            call()
        assert isinstance(info.value, ConnectionError)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert time.monotonic() - started < 30
    t.close()


def test_a_release_that_times_out_can_be_retried_and_leaks_nothing(real_redis_url: str) -> None:
    with EmbeddedRedis() as server:
        if server.kind != "redis-server":
            pytest.skip("needs the redis-server binary to pause the server")
        client = redis.Redis.from_url(server.url, socket_timeout=0.3)
        t = Throttle(client)
        reg(t, 2)
        lease = t.try_acquire(provider_name=P, model_id=M, domain="chat")
        assert isinstance(lease, Lease)
        server.pause()
        try:
            with pytest.raises(RedisUnavailableError):
                lease.success()
            assert not lease.reported
        finally:
            server.resume()
        # The timed-out call may or may not have run once Redis resumed; a
        # retry is safe either way, and the slot is back.
        lease.success()
        assert lease.reported
        state = t.domain_state(P, M, "chat")
        assert state is not None
        assert state.in_flight == 0
        client.close()
