"""Token counters in a real redis-server: round trips, keys, expiry, failures and recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio.connection import AbstractConnection
from structlog.testing import capture_logs

from aigw.config.model import ProviderLimit, RedisConfig, TokenLimitConfig
from aigw.errors import ServiceUnavailable
from aigw.quotas import QuotaRegistry, redis_counters
from aigw.quotas.limiter import Limiter
from aigw.quotas.metrics import QUOTA_METRICS
from aigw.quotas.redis_counters import identifier_digest
from tests.redis_server import RedisServer, running_redis

SECOND = 1000


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from running_redis()


def config(
    server: RedisServer,
    *,
    windows: tuple[int, ...] = (60,),
    limits: tuple[int, ...] = (1000,),
    window_type: str = "fixed",
    timeout: int = 200,
    fail_closed: bool = False,
) -> TokenLimitConfig:
    return TokenLimitConfig(
        llm_providers=(ProviderLimit("azure", limits, windows),),
        identifier="ip",
        strategy="redis",
        window_type=window_type,  # type: ignore[arg-type]
        redis=RedisConfig(host="127.0.0.1", port=server.port, timeout=timeout),
        fail_closed=fail_closed,
    )


@pytest.fixture
async def registry() -> AsyncIterator[QuotaRegistry]:
    registry = QuotaRegistry()
    yield registry
    await registry.aclose()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write of commands to Redis (a round trip each), as sent."""
    sent: list[bytes] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        parts = [command] if isinstance(command, (bytes, str, memoryview)) else list(command)
        sent.append(b"".join(bytes(p) if not isinstance(p, str) else p.encode() for p in parts))
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def backend_errors(server: RedisServer) -> float:
    series = QUOTA_METRICS.backend_errors.get(f"redis://127.0.0.1:{server.port}/0")
    return 0 if series is None else series.value


async def settled(limiter: Limiter) -> None:
    """Waits for the background charges of *limiter*'s backend."""
    assert limiter.redis is not None
    async with asyncio.timeout(5):
        await limiter.redis.backend.drain()


async def test_admission_and_charge_are_one_round_trip_each(
    redis_server: RedisServer, registry: QuotaRegistry, round_trips: list[bytes]
) -> None:
    limiter = registry.limiter(config(redis_server, windows=(60, 3600), limits=(1000, 5000)), "r")
    # The first call loads the script and opens a connection: not what is counted.
    await limiter.admit("ip:warm", now_ms(), (1000, 5000), 0, False)
    round_trips.clear()

    verdict, remote = await limiter.admit("ip:10.0.0.1", now_ms(), (1000, 5000), 0, False)
    assert remote and verdict.admitted
    assert len(round_trips) == 1 and b"EVALSHA" in round_trips[0]

    round_trips.clear()
    limiter.charge("ip:10.0.0.1", 0, now_ms(), 300, now_ms(), remote=True)
    await settled(limiter)
    assert len(round_trips) == 1, round_trips
    assert round_trips[0].count(b"INCRBY") == 2 and round_trips[0].count(b"PEXPIRE") == 2
    assert b"MULTI" not in round_trips[0]

    verdict, _ = await limiter.admit("ip:10.0.0.1", now_ms(), (1000, 5000), 0, False)
    assert verdict.remaining == 700


async def test_charges_queued_meanwhile_share_one_round_trip(
    redis_server: RedisServer, registry: QuotaRegistry, round_trips: list[bytes]
) -> None:
    limiter = registry.limiter(config(redis_server, limits=(1000,)), "r")
    await limiter.admit("ip:warm", now_ms(), (1000,), 0, False)
    round_trips.clear()
    # Ten requests ending together: two callers, five each.
    for i in range(10):
        limiter.charge(f"ip:10.0.0.{i % 2}", 0, now_ms(), 7, now_ms(), remote=True)
    await settled(limiter)
    assert len(round_trips) == 1
    # One INCRBY per caller and window, the amounts added up.
    assert round_trips[0].count(b"INCRBY") == 2
    for caller in ("ip:10.0.0.0", "ip:10.0.0.1"):
        verdict, _ = await limiter.admit(caller, now_ms(), (1000,), 0, False)
        assert verdict.remaining == 1000 - 5 * 7


async def test_keys_hash_the_identifier_and_expire_after_two_windows(
    redis_server: RedisServer, registry: QuotaRegistry
) -> None:
    limiter = registry.limiter(config(redis_server, windows=(2,), limits=(100,)), "my-route")
    at = now_ms()
    # A reservation (estimate_prompt) is written by the admission, then settled.
    assert (await limiter.admit("ip:192.0.2.7", at, (100,), 10, False))[0].admitted
    limiter.charge("ip:192.0.2.7", 10, at, 40, at, remote=True)
    await settled(limiter)
    names = _keys(redis_server)
    assert len(names) == 1
    assert redis_server.command("GET", names[0]) == "40"
    prefix, namespace, counted, digest, size, start = names[0].rsplit(":", 5)
    assert (prefix, namespace, counted, size) == ("aigw:tokens", "my-route", "total_tokens", "2")
    assert int(start) == (at - at % 2000) // 1000
    assert "192.0.2.7" not in names[0] and len(digest) == 32
    ttl = int((redis_server.command("PTTL", names[0]) or ":0")[1:])
    # Until the window stops being the previous one, plus a second of grace.
    assert 0 < ttl <= 2 * 2000 + 1000
    assert await _wait_gone(redis_server, names[0], within_s=8)


def _keys(server: RedisServer) -> list[str]:
    client = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    try:
        return sorted(str(key) for key in client.keys("aigw:tokens:*"))
    finally:
        client.close()


async def _wait_gone(server: RedisServer, key: str, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if server.command("EXISTS", key) == ":0":
            return True
        await asyncio.sleep(0.1)
    return False


async def test_two_processes_share_one_limit(redis_server: RedisServer) -> None:
    first, second = QuotaRegistry(), QuotaRegistry()
    try:
        cfg = config(redis_server, limits=(100,))
        one, two = first.limiter(cfg, "shared"), second.limiter(cfg, "shared")
        assert one is not two
        assert (await one.admit("consumer:a", now_ms(), (100,), 0, False))[0].admitted
        one.charge("consumer:a", 0, now_ms(), 100, now_ms(), remote=True)
        await settled(one)
        verdict, remote = await two.admit("consumer:a", now_ms(), (100,), 0, False)
        assert remote and not verdict.admitted and verdict.retry_after_ms > 0
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_reservation_is_atomic_across_processes(
    redis_server: RedisServer, registry: QuotaRegistry
) -> None:
    limiter = registry.limiter(config(redis_server, limits=(1000,)), "r")
    at = now_ms()
    verdicts = await asyncio.gather(
        *(limiter.admit("ip:x", at, (1000,), 300, False) for _ in range(10))
    )
    # 300 each: 0, 300, 600 fit under 1000 - 300 = 700; the fourth would pass the limit.
    assert sum(verdict.admitted for verdict, _ in verdicts) == 3
    limiter.charge("ip:x", 300, at, 10, now_ms(), remote=True)
    await settled(limiter)
    verdict, _ = await limiter.admit("ip:x", now_ms(), (1000,), 0, False)
    assert verdict.remaining == 1000 - 300 - 300 - 10


async def test_redis_killed_fails_open_counting_locally(
    redis_server: RedisServer, registry: QuotaRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_counters, "BACKOFF_S", 0.5)
    limiter = registry.limiter(config(redis_server, limits=(100,)), "r")
    assert (await limiter.admit("ip:x", now_ms(), (100,), 0, False))[1]
    redis_server.kill()
    errors = backend_errors(redis_server)
    with capture_logs() as logs:
        started = time.monotonic()
        verdict, remote = await limiter.admit("ip:x", now_ms(), (100,), 0, False)
        assert time.monotonic() - started < 2
        assert verdict.admitted and not remote
        limiter.charge("ip:x", 0, now_ms(), 100, now_ms(), remote=False)
        # During the back-off Redis is not even tried: local counts decide, at once.
        started = time.monotonic()
        verdict, remote = await limiter.admit("ip:x", now_ms(), (100,), 0, False)
        assert time.monotonic() - started < 0.05
        assert not remote and not verdict.admitted
        assert backend_errors(redis_server) == errors + 1
        # After the back-off Redis is tried again: one more error, not one more log line.
        await asyncio.sleep(0.6)
        assert not (await limiter.admit("ip:x", now_ms(), (100,), 0, False))[1]
    assert backend_errors(redis_server) == errors + 2
    events = [log for log in logs if log["event"] == "ratelimit_backend_error"]
    assert len(events) == 1 and events[0]["backend"].endswith(f":{redis_server.port}/0")


async def test_redis_frozen_is_a_timeout_not_a_hang(
    redis_server: RedisServer, registry: QuotaRegistry
) -> None:
    limiter = registry.limiter(config(redis_server, limits=(100,), timeout=100), "r")
    assert (await limiter.admit("ip:x", now_ms(), (100,), 0, False))[1]
    redis_server.pause()
    try:
        started = time.monotonic()
        verdict, remote = await limiter.admit("ip:x", now_ms(), (100,), 0, False)
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
    assert not remote and verdict.admitted
    assert elapsed < 1.0  # the 100 ms timeout, not redis-py's retries nor a hang


async def test_fail_closed_answers_503_with_retry_after(
    redis_server: RedisServer, registry: QuotaRegistry
) -> None:
    limiter = registry.limiter(config(redis_server, fail_closed=True), "r")
    redis_server.kill()
    with pytest.raises(ServiceUnavailable) as caught:
        await limiter.admit("ip:x", now_ms(), (1000,), 0, True)
    assert caught.value.code == "rate_limit_backend_unavailable"
    assert int(caught.value.headers["retry-after"]) >= 1


async def test_redis_back_is_used_again_after_the_back_off(
    redis_server: RedisServer, registry: QuotaRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_counters, "BACKOFF_S", 0.3)
    limiter = registry.limiter(config(redis_server, limits=(100,)), "r")
    redis_server.kill()
    assert not (await limiter.admit("ip:x", now_ms(), (100,), 0, False))[1]
    redis_server.restart()
    # Still in the back-off: not tried.
    assert not (await limiter.admit("ip:x", now_ms(), (100,), 0, False))[1]
    await asyncio.sleep(0.35)
    with capture_logs() as logs:
        verdict, remote = await limiter.admit("ip:x", now_ms(), (100,), 0, False)
    assert remote and verdict.admitted
    assert [log["event"] for log in logs] == ["ratelimit_backend_recovered"]


async def test_pooled_connections_to_a_restarted_redis_are_replaced_without_an_error(
    redis_server: RedisServer, registry: QuotaRegistry
) -> None:
    limiter = registry.limiter(config(redis_server, limits=(100,)), "r")
    assert (await limiter.admit("ip:x", now_ms(), (100,), 0, False))[1]
    errors = backend_errors(redis_server)
    redis_server.kill()
    redis_server.restart()
    # The pooled connection is dead; the next admission reconnects and uses Redis.
    assert (await limiter.admit("ip:x", now_ms(), (100,), 0, False))[1]
    assert backend_errors(redis_server) == errors


async def test_a_failed_charge_is_counted_locally(
    redis_server: RedisServer, registry: QuotaRegistry
) -> None:
    limiter = registry.limiter(config(redis_server, limits=(100,)), "r")
    assert (await limiter.admit("ip:x", now_ms(), (100,), 0, False))[1]
    redis_server.kill()
    limiter.charge("ip:x", 0, now_ms(), 100, now_ms(), remote=True)
    await settled(limiter)
    verdict, remote = await limiter.admit("ip:x", now_ms(), (100,), 0, False)
    assert not remote and not verdict.admitted


def test_one_client_per_redis_config_and_limiters_kept_across_recompiles(
    redis_server: RedisServer,
) -> None:
    registry = QuotaRegistry()
    cfg = config(redis_server, limits=(100,))
    same = registry.limiter(cfg, "r")
    # New limits, same counting setup (a reload that only changed the limit).
    assert registry.limiter(config(redis_server, limits=(500,)), "r") is same
    other = registry.limiter(config(redis_server, window_type="sliding"), "r")
    assert other is not same
    assert same.redis is not None and other.redis is not None
    assert same.redis.backend is other.redis.backend
    assert registry.limiter(cfg, "other-namespace") is not same


async def test_a_reservation_settled_after_its_window_rolled_is_taken_back_from_it(
    redis_server: RedisServer, registry: QuotaRegistry
) -> None:
    limiter = registry.limiter(config(redis_server, windows=(10,), limits=(1000,)), "roll")
    start = now_ms() - now_ms() % 10_000
    reserved_at, settled_at = start + 9_900, start + 10_100  # either side of a window's end
    assert (await limiter.admit("ip:y", reserved_at, (1000,), 50, False))[0].admitted
    limiter.charge("ip:y", 50, reserved_at, 20, settled_at, remote=True)
    await settled(limiter)
    digest = identifier_digest("ip:y")
    assert (
        redis_server.command("GET", f"aigw:tokens:roll:total_tokens:{digest}:10:{start // 1000}")
        == "0"
    )
    next_window = f"aigw:tokens:roll:total_tokens:{digest}:10:{start // 1000 + 10}"
    assert redis_server.command("GET", next_window) == "20"


async def test_prompt_and_total_token_counts_of_one_namespace_never_share_a_key(
    redis_server: RedisServer, registry: QuotaRegistry
) -> None:
    total = registry.limiter(config(redis_server, limits=(100,)), "shared")
    prompt_config = dataclasses.replace(
        config(redis_server, limits=(100,)), tokens_count_strategy="prompt_tokens"
    )
    prompt = registry.limiter(prompt_config, "shared")
    at = now_ms()
    assert (await total.admit("ip:z", at, (100,), 0, False))[0].admitted
    total.charge("ip:z", 0, at, 90, at, remote=True)
    await settled(total)
    # 90 total tokens spent; the prompt-token quota of the same caller is untouched.
    verdict, decided_remotely = await prompt.admit("ip:z", at, (100,), 0, False)
    assert decided_remotely and verdict.admitted and verdict.remaining == 100
