"""The Redis store's check pipeline: shared writes, one round trip per check, fail closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from realtime.exceptions import ReplayRejected, ReplayStoreUnavailable
from realtime.replay import ReplayCheck
from realtime.replay.pipeline import CheckPipeline
from realtime.replay.redis import RedisReplayStore
from tests.support.servers import RedisServer

SKEW = 30_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_store(url: str, timeout_ms: int = 2000) -> RedisReplayStore:
    return RedisReplayStore(url, max_skew_ms=SKEW, seq_window=64, session_ttl_ms=60_000, timeout_ms=timeout_ms)


def nonce_check(index: int, prefix: str = "pipe") -> ReplayCheck:
    return ReplayCheck(identity="alice", ts_ms=now_ms(), nonce=f"nonce-{prefix}-{index:012d}")


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that requires the password ``bench-secret`` once it has started."""
    server = RedisServer(tmp_path / "redis-auth").start()
    server.client().config_set("requirepass", "bench-secret")
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may pause, stop and restart."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.process is not None:
        server.resume()
    server.stop()


def test_pipeline_used_for_single_server_urls() -> None:
    assert CheckPipeline.from_url("redis://127.0.0.1:6379/0", timeout_s=0.5) is not None
    unix = CheckPipeline.from_url("unix:///run/redis.sock?db=2", timeout_s=0.5)
    assert unix is not None
    assert unix.path == "/run/redis.sock"
    assert unix.db == 2


def test_pipeline_not_used_for_tls_urls() -> None:
    assert CheckPipeline.from_url("rediss://127.0.0.1:6379/0", timeout_s=0.5) is None


def test_pipeline_not_used_with_replica_wait(redis_url: str) -> None:
    store = RedisReplayStore(redis_url, max_skew_ms=SKEW, seq_window=64, session_ttl_ms=60_000, wait_replicas=1)
    assert store.pipeline is None


async def test_concurrent_checks_share_writes(redis_url: str) -> None:
    store = make_store(redis_url)
    admin = redis.Redis.from_url(redis_url)
    await store.check(nonce_check(0, "warm"))
    admin.config_resetstat()
    writes_before = store.pipeline.writes
    round_trips_before = store.round_trips

    await asyncio.gather(*(store.check(nonce_check(index)) for index in range(50)))

    stats = admin.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 50
    assert store.round_trips - round_trips_before == 50
    writes = store.pipeline.writes - writes_before
    assert 1 <= writes < 50
    await store.close()
    admin.close()


async def test_first_checks_wait_for_connection(redis_url: str) -> None:
    store = make_store(redis_url, timeout_ms=1000)

    results = await asyncio.gather(*(store.check(nonce_check(index, "fresh")) for index in range(50)))

    assert len(results) == 50
    await store.close()


async def test_checks_queued_behind_write_complete(redis_url: str) -> None:
    store = make_store(redis_url, timeout_ms=1000)
    await store.check(nonce_check(0, "warm"))

    async def staggered(index: int) -> None:
        # Spread the checks over several loop turns, so that some arrive
        # while a write waits for its replies and some while the connection is idle.
        for _ in range(index % 4):
            await asyncio.sleep(0)
        await store.check(nonce_check(index, "staggered"))

    await asyncio.gather(*(staggered(index) for index in range(40)))

    assert store.round_trips == 41
    await store.close()


async def test_pipelined_decisions_stay_atomic(redis_url: str) -> None:
    store = make_store(redis_url)
    same = ReplayCheck(identity="alice", ts_ms=now_ms(), nonce="nonce-same-in-one-write")

    results = await asyncio.gather(*(store.check(same) for _ in range(20)), return_exceptions=True)

    accepted = [result for result in results if not isinstance(result, BaseException)]
    rejected = [result for result in results if isinstance(result, ReplayRejected)]
    assert len(accepted) == 1
    assert len(rejected) == 19
    assert {result.code for result in rejected} == {"replay.nonce_reused"}
    await store.close()


async def test_script_flush_reloads_for_whole_write(redis_url: str) -> None:
    store = make_store(redis_url)
    await store.check(nonce_check(0, "before-flush"))
    redis.Redis.from_url(redis_url).script_flush()

    await asyncio.gather(*(store.check(nonce_check(index, "after-flush")) for index in range(10)))

    with pytest.raises(ReplayRejected):
        await store.check(nonce_check(3, "after-flush"))
    await store.close()


async def test_paused_redis_fails_whole_write(own_redis: RedisServer) -> None:
    store = make_store(own_redis.url, timeout_ms=200)
    await store.check(nonce_check(0, "warm"))
    own_redis.pause()
    started = time.monotonic()

    results = await asyncio.gather(*(store.check(nonce_check(index)) for index in range(10)), return_exceptions=True)

    elapsed = time.monotonic() - started
    assert all(isinstance(result, ReplayStoreUnavailable) for result in results), results
    assert elapsed < 1.5
    own_redis.resume()
    # The aborted connection is replaced by the next check.
    await store.check(nonce_check(100))
    await store.close()


async def test_stopped_redis_fails_closed_then_recovers(own_redis: RedisServer) -> None:
    store = make_store(own_redis.url, timeout_ms=300)
    await store.check(nonce_check(0, "warm"))
    own_redis.stop()

    results = await asyncio.gather(*(store.check(nonce_check(index)) for index in range(5)), return_exceptions=True)

    assert all(isinstance(result, ReplayStoreUnavailable) for result in results), results
    own_redis.start()
    await store.check(nonce_check(200))
    await store.close()


async def test_password_and_database_from_url(password_redis: RedisServer) -> None:
    store = make_store(f"redis://:bench-secret@127.0.0.1:{password_redis.port}/3")

    await store.check(nonce_check(1, "auth"))

    admin = redis.Redis(host="127.0.0.1", port=password_redis.port, password="bench-secret", db=3)
    assert len(admin.keys("rt:{alice}:n:*")) == 1
    admin.close()
    await store.close()


async def test_wrong_password_fails_closed(password_redis: RedisServer) -> None:
    store = make_store(f"redis://:wrong@127.0.0.1:{password_redis.port}/0")

    with pytest.raises(ReplayStoreUnavailable):
        await store.check(nonce_check(1, "auth"))

    await store.close()
