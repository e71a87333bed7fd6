"""Redis faults under the replay store: stopped, killed, restarted, flushed, slow and paused.

The invariant throughout: a check is accepted only with its nonce recorded,
every failure is ``unavailable`` within the configured time bound, and
after recovery a fresh check is accepted once. The module starts its own
redis-server, with an append-only file fsynced on every write, so that
killing and restarting it is a crash that loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from realtime.exceptions import ReplayRejected, ReplayStoreUnavailable
from realtime.replay import ReplayCheck
from realtime.replay.redis import RedisReplayStore, replay_key_prefix
from tests.support.servers import RedisClusterServers, RedisServer

TIMEOUT_MS = 500
# Slack on top of TIMEOUT_MS for scheduling on a loaded 2-core machine.
TIMEOUT_SLACK_S = 0.5

_nonces = itertools.count()


def fresh_nonce() -> str:
    return f"fault-nonce-{next(_nonces):010d}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def command(nonce: str, identity: str = "alice") -> ReplayCheck:
    return ReplayCheck(identity=identity, ts_ms=now_ms(), nonce=nonce)


@pytest.fixture(scope="module")
def durable_redis(run_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(
        run_dir / "redis-durable",
        extra_args=("--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "local"),
    ).start()
    yield server
    server.stop()


@pytest.fixture
def redis_server_under_test(durable_redis: RedisServer) -> RedisServer:
    """The module's redis-server, running and empty."""
    if durable_redis.process is None:
        durable_redis.start()
    durable_redis.client().flushall()
    return durable_redis


@pytest.fixture
async def store(redis_server_under_test: RedisServer) -> RedisReplayStore:
    store = RedisReplayStore(
        redis_server_under_test.url, max_skew_ms=30_000, seq_window=64, session_ttl_ms=60_000, timeout_ms=TIMEOUT_MS
    )
    yield store
    await store.close()


async def expect_unavailable(store: RedisReplayStore, replay_check: ReplayCheck) -> float:
    """Assert that the check fails as unavailable; return how long it took, in seconds."""
    started = time.monotonic()
    with pytest.raises(ReplayStoreUnavailable) as caught:
        await store.check(replay_check)
    elapsed = time.monotonic() - started
    assert caught.value.code == "unavailable"
    assert caught.value.status == 503
    return elapsed


async def expect_code(store: RedisReplayStore, replay_check: ReplayCheck) -> str:
    with pytest.raises(ReplayRejected) as caught:
        await store.check(replay_check)
    return caught.value.code


# --- stopped and restarted ------------------------------------------------------


async def test_stopped_redis_rejects_then_recovers(store: RedisReplayStore, redis_server_under_test: RedisServer) -> None:
    before = fresh_nonce()
    await store.check(command(before))

    redis_server_under_test.stop()
    elapsed = await expect_unavailable(store, command(fresh_nonce()))
    assert elapsed < TIMEOUT_MS / 1000 + TIMEOUT_SLACK_S

    redis_server_under_test.start()
    after = fresh_nonce()
    await store.check(command(after))
    assert await expect_code(store, command(after)) == "replay.nonce_reused"
    # The append-only file kept the nonce accepted before the restart.
    assert await expect_code(store, command(before)) == "replay.nonce_reused"


async def test_check_in_flight_when_redis_dies(store: RedisReplayStore, redis_server_under_test: RedisServer) -> None:
    await store.check(command(fresh_nonce()))
    nonce = fresh_nonce()
    redis_server_under_test.pause()
    in_flight = asyncio.create_task(store.check(command(nonce)))
    await asyncio.sleep(0.05)
    redis_server_under_test.kill()
    with pytest.raises(ReplayStoreUnavailable):
        await in_flight

    redis_server_under_test.start()
    # The paused server never ran the script, so the nonce was not recorded
    # and the command, which was not executed either, can be sent again.
    await store.check(command(nonce))
    assert await expect_code(store, command(nonce)) == "replay.nonce_reused"


async def test_kill_during_load_loses_no_accepted_nonce(redis_server_under_test: RedisServer) -> None:
    """Every check accepted before, during or after a crash has its nonce recorded."""
    stores = [
        RedisReplayStore(
            redis_server_under_test.url, max_skew_ms=30_000, seq_window=64, session_ttl_ms=60_000, timeout_ms=TIMEOUT_MS
        )
        for _ in range(4)
    ]
    accepted: list[str] = []
    unavailable: list[str] = []
    stop = asyncio.Event()

    async def client(store: RedisReplayStore) -> None:
        while not stop.is_set():
            nonce = fresh_nonce()
            try:
                await store.check(command(nonce))
                accepted.append(nonce)
            except ReplayStoreUnavailable:
                unavailable.append(nonce)
                await asyncio.sleep(0.01)

    clients = [asyncio.create_task(client(store)) for store in stores for _ in range(3)]
    await asyncio.sleep(0.3)
    accepted_before_crash = len(accepted)
    await asyncio.to_thread(redis_server_under_test.kill)
    await asyncio.sleep(0.3)
    await asyncio.to_thread(redis_server_under_test.start)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*clients)

    assert accepted_before_crash > 0
    assert len(accepted) > accepted_before_crash
    assert unavailable
    # A generous timeout for the verification, which must not fail on load.
    checker = RedisReplayStore(
        redis_server_under_test.url, max_skew_ms=30_000, seq_window=64, session_ttl_ms=60_000, timeout_ms=10_000
    )
    for nonce in accepted:
        assert await expect_code(checker, command(nonce)) == "replay.nonce_reused", nonce
    for store in [*stores, checker]:
        await store.close()


# --- script cache -----------------------------------------------------------------


async def test_script_flush_during_checks_is_transparent(redis_server_under_test: RedisServer) -> None:
    # A generous timeout: this test is about the reload, and 300 concurrent
    # checks on a loaded 2-core machine can take longer than TIMEOUT_MS.
    store = RedisReplayStore(
        redis_server_under_test.url, max_skew_ms=30_000, seq_window=64, session_ttl_ms=60_000, timeout_ms=10_000
    )
    admin = redis_server_under_test.client()
    flushing = threading.Event()

    def flush_repeatedly() -> None:
        while not flushing.is_set():
            admin.script_flush()
            time.sleep(0.002)

    flusher = threading.Thread(target=flush_repeatedly)
    flusher.start()
    try:
        nonces = [fresh_nonce() for _ in range(300)]
        results = await asyncio.gather(*(store.check(command(nonce)) for nonce in nonces), return_exceptions=True)
    finally:
        flushing.set()
        flusher.join()

    assert [result for result in results if isinstance(result, BaseException)] == []
    # Some checks hit NOSCRIPT and loaded the script again: more round trips than checks.
    assert store.round_trips > len(nonces)
    for nonce in nonces[:20]:
        assert await expect_code(store, command(nonce)) == "replay.nonce_reused"
    await store.close()


# --- slow and paused ----------------------------------------------------------------


async def test_debug_sleep_times_out_within_bound(store: RedisReplayStore, redis_server_under_test: RedisServer) -> None:
    await store.check(command(fresh_nonce()))
    sleeper = threading.Thread(target=lambda: redis_server_under_test.client().execute_command("DEBUG", "SLEEP", "2"))
    sleeper.start()
    await asyncio.sleep(0.05)

    late = fresh_nonce()
    elapsed = await expect_unavailable(store, command(late))
    assert elapsed < TIMEOUT_MS / 1000 + TIMEOUT_SLACK_S
    sleeper.join()

    # Redis ran the late script after its sleep; nothing executed the command.
    # The connection that timed out must not hand its stale "ok" reply to the
    # next check, so sending the same nonce again is a reuse.
    assert await expect_code(store, command(late)) == "replay.nonce_reused"
    fresh = fresh_nonce()
    await store.check(command(fresh))
    assert await expect_code(store, command(fresh)) == "replay.nonce_reused"


async def test_paused_redis_times_out_within_bound(store: RedisReplayStore, redis_server_under_test: RedisServer) -> None:
    await store.check(command(fresh_nonce()))
    redis_server_under_test.pause()
    try:
        elapsed = await expect_unavailable(store, command(fresh_nonce()))
        assert elapsed < TIMEOUT_MS / 1000 + TIMEOUT_SLACK_S
        # Checks keep failing fast while it stays paused, without piling up.
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.check(command(fresh_nonce())) for _ in range(20)), return_exceptions=True
        )
        assert time.monotonic() - started < TIMEOUT_MS / 1000 + TIMEOUT_SLACK_S
        assert all(isinstance(result, ReplayStoreUnavailable) for result in results)
    finally:
        redis_server_under_test.resume()

    fresh = fresh_nonce()
    await store.check(command(fresh))
    assert await expect_code(store, command(fresh)) == "replay.nonce_reused"


@pytest.mark.cluster
async def test_paused_cluster_node_fails_only_its_slots(redis_cluster: RedisClusterServers, redis_cluster_url: str) -> None:
    tight = RedisReplayStore(
        redis_cluster_url, max_skew_ms=30_000, seq_window=64, session_ttl_ms=60_000, timeout_ms=TIMEOUT_MS, cluster=True
    )
    # A generous timeout for the checks that must pass on a loaded machine.
    store = RedisReplayStore(
        redis_cluster_url, max_skew_ms=30_000, seq_window=64, session_ttl_ms=60_000, timeout_ms=10_000, cluster=True
    )
    admin = redis_cluster.client()
    identities = [f"client-{index}" for index in range(12)]
    for identity in identities:
        await store.check(command(fresh_nonce(), identity))
    paused = redis_cluster.nodes[1]
    owner = {identity: admin.get_node_from_key(replay_key_prefix(identity)).port for identity in identities}
    admin.close()

    paused.pause()
    try:
        for identity in identities:
            if owner[identity] == paused.port:
                elapsed = await expect_unavailable(tight, command(fresh_nonce(), identity))
                assert elapsed < TIMEOUT_MS / 1000 + TIMEOUT_SLACK_S
            else:
                await store.check(command(fresh_nonce(), identity))
    finally:
        paused.resume()

    assert paused.port in owner.values()
    for identity in identities:
        await store.check(command(fresh_nonce(), identity))
    await store.close()
    await tight.close()
