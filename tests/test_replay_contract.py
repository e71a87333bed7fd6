"""Contract tests that every replay store backend must pass: memory, Redis and Redis Cluster.

The Redis backends run against the real redis-server and the real 3-node
Redis Cluster that the session fixtures start.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from realtime.exceptions import ReplayRejected, ReplayStoreUnavailable
from realtime.protocol import MAX_SAFE_INTEGER
from realtime.replay import MemoryReplayStore, ReplayCheck, ReplayStore
from realtime.replay.redis import CHECK_SCRIPT, RedisReplayStore
from tests.support.servers import RedisClusterServers, free_port

SKEW = 30_000
WINDOW = 8
START = 1_800_000_000_000
CHECK_SHA = hashlib.sha1(CHECK_SCRIPT.encode()).hexdigest()


class FakeClock:
    """A clock the test moves by hand, in Unix milliseconds."""

    def __init__(self, now: int = START) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


StoreFactory = Callable[..., ReplayStore]


SESSION_TTL = 3_600_000


@pytest.fixture(params=["memory", "redis", pytest.param("cluster", marks=pytest.mark.cluster)])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Build stores of one backend; Redis stores share the test's emptied redis-server or cluster."""
    stores: list[ReplayStore] = []

    def factory(
        *,
        clock: Callable[[], int] | None = None,
        skew: int = SKEW,
        window: int = WINDOW,
        session_ttl: int = SESSION_TTL,
        max_sessions: int = 0,
    ) -> ReplayStore:
        options = {
            "max_skew_ms": skew,
            "seq_window": window,
            "session_ttl_ms": session_ttl,
            "max_sessions": max_sessions,
            "clock": clock,
        }
        if request.param == "memory":
            store: ReplayStore = MemoryReplayStore(**options)
        elif request.param == "redis":
            store = RedisReplayStore(request.getfixturevalue("redis_url"), timeout_ms=5_000, **options)
        else:
            url = request.getfixturevalue("redis_cluster_url")
            store = RedisReplayStore(url, timeout_ms=5_000, cluster=True, **options)
        stores.append(store)
        return store

    factory.backend = request.param  # type: ignore[attr-defined]
    yield factory
    for store in stores:
        await store.close()


def check(ts: int = START, nonce: str = "nonce-0000000000001", **kwargs) -> ReplayCheck:
    return ReplayCheck(identity=kwargs.pop("identity", "alice"), ts_ms=ts, nonce=nonce, **kwargs)


def session_check(seq: int, *, nonce: str | None = None, session: str = "S" * 22, create: bool = True, **kwargs) -> ReplayCheck:
    return check(
        nonce=nonce or f"nonce-seq-{seq:012d}",
        session=session,
        seq=seq,
        create_session=create,
        **kwargs,
    )


async def rejection_code(store: ReplayStore, replay_check: ReplayCheck) -> str:
    with pytest.raises(ReplayRejected) as caught:
        await store.check(replay_check)
    return caught.value.code


# --- timestamps -----------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(-SKEW, True), (-SKEW - 1, False), (SKEW, True), (SKEW + 1, False), (0, True)],
)
async def test_timestamp_window_boundaries(make_store: StoreFactory, offset: int, accepted: bool) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    replay_check = check(ts=START + offset)
    if accepted:
        verdict = await store.check(replay_check)
        assert verdict.server_time_ms == START
        return
    with pytest.raises(ReplayRejected) as caught:
        await store.check(replay_check)
    assert caught.value.code == "replay.timestamp_out_of_window"
    assert caught.value.extra["server_time"] == START
    assert caught.value.status == 400


async def test_timestamp_rejection_records_nothing(make_store: StoreFactory) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    assert await rejection_code(store, check(ts=START - SKEW - 1)) == "replay.timestamp_out_of_window"
    await store.check(check(ts=START))


async def test_server_clock_used_by_default(make_store: StoreFactory) -> None:
    store = make_store()
    now = int(time.time() * 1000)
    verdict = await store.check(check(ts=now))
    assert abs(verdict.server_time_ms - now) < 5_000
    assert await rejection_code(store, check(ts=now - 10 * SKEW, nonce="nonce-0000000000002")) == (
        "replay.timestamp_out_of_window"
    )


# --- nonces ---------------------------------------------------------------


async def test_nonce_reuse_rejected(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    await store.check(check())
    with pytest.raises(ReplayRejected) as caught:
        await store.check(check(ts=START + 1))
    assert caught.value.code == "replay.nonce_reused"
    assert caught.value.status == 409


async def test_nonce_namespaced_per_identity(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    await store.check(check(identity="alice"))
    await store.check(check(identity="bob"))
    assert await rejection_code(store, check(identity="bob")) == "replay.nonce_reused"


async def test_nonce_compared_exactly(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    await store.check(check(nonce="Nonce-AAAAAAAAAAAA"))
    await store.check(check(nonce="nonce-AAAAAAAAAAAA"))
    await store.check(check(nonce="Nonce-AAAAAAAAAAAA_"))


async def test_nonce_kept_until_timestamp_leaves_window(make_store: StoreFactory) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    # Recorded at the window's far edge: it must outlive the whole window
    # measured from its own timestamp, not from the moment it was seen.
    await store.check(check(ts=START + SKEW))
    clock.now = START + 2 * SKEW
    assert await rejection_code(store, check(ts=START + SKEW)) == "replay.nonce_reused"
    clock.now = START + 2 * SKEW + 1
    # ts + SKEW has passed: the nonce is forgotten, and only a fresh timestamp can carry it.
    assert await rejection_code(store, check(ts=START + SKEW)) == "replay.timestamp_out_of_window"
    await store.check(check(ts=clock.now))


async def test_nonce_expiry_follows_injected_clock(make_store: StoreFactory) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    await store.check(check(ts=START - SKEW))
    # Still live at exactly ts + SKEW with a timestamp that passes.
    clock.now = START
    assert await rejection_code(store, check(ts=START)) == "replay.nonce_reused"
    clock.now = START + 1
    await store.check(check(ts=START + 1))


@pytest.mark.parametrize("backend", ["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
async def test_redis_ttls_match_expiries(request: pytest.FixtureRequest, backend: str) -> None:
    cluster = backend == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    store = RedisReplayStore(url, max_skew_ms=SKEW, seq_window=WINDOW, session_ttl_ms=600_000, cluster=cluster, timeout_ms=5_000)
    admin = redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    now = int(time.time() * 1000)
    await store.check(session_check(1, ts=now - 10_000))
    # The nonce key lives until ts + SKEW; the session keys for the session TTL.
    nonce_ttl = admin.pttl("rt:{alice}:n:nonce-seq-000000000001")
    assert SKEW - 10_000 - 5_000 < nonce_ttl <= SKEW - 10_000 + 1
    assert 600_000 - 5_000 < admin.pttl("rt:{alice}:s:" + "S" * 22) <= 600_000
    assert 600_000 - 5_000 < admin.pttl("rt:{alice}:b:" + "S" * 22) <= 600_000
    await store.close()
    admin.close()


async def test_nonce_expires_with_real_clock(make_store: StoreFactory) -> None:
    # A skew of 1 s leaves a loaded machine 800 ms to deliver the first check.
    store = make_store(skew=1000)
    now = int(time.time() * 1000)
    await store.check(check(ts=now - 200))
    # ts + skew has passed once 800 ms are over; wait with margin.
    await asyncio.sleep(1.0)
    with pytest.raises(ReplayRejected) as caught:
        await store.check(check(ts=now - 200))
    assert caught.value.code == "replay.timestamp_out_of_window"
    # The same nonce with a fresh timestamp is accepted: it had expired.
    await store.check(check(ts=int(time.time() * 1000)))


# --- sequence window ------------------------------------------------------


async def test_sequence_in_order_then_reuse(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    for seq in (1, 2, 3):
        verdict = await store.check(session_check(seq, create=seq == 1))
        assert verdict.highest_seq == seq
    with pytest.raises(ReplayRejected) as caught:
        await store.check(session_check(2, nonce="nonce-fresh-000000001", create=False))
    assert caught.value.code == "replay.sequence_reused"
    assert caught.value.extra["expected_seq"] == 4
    assert caught.value.extra["window_floor"] == 1


async def test_sequence_out_of_order_within_window(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    await store.check(session_check(5))
    for seq in (3, 1, 4, 2):
        verdict = await store.check(session_check(seq, create=False))
        assert verdict.highest_seq == 5
    assert await rejection_code(store, session_check(3, nonce="nonce-fresh-000000002")) == "replay.sequence_reused"


async def test_sequence_window_edges(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    await store.check(session_check(20))
    # The window is 20 - WINDOW + 1 = 13 .. 20.
    await store.check(session_check(13))
    with pytest.raises(ReplayRejected) as caught:
        await store.check(session_check(12))
    assert caught.value.code == "replay.sequence_too_old"
    assert caught.value.extra["window_floor"] == 13
    assert caught.value.extra["expected_seq"] == 21


async def test_sequence_rejection_keeps_nonce_unused(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    await store.check(session_check(1))
    nonce = "nonce-after-reject-01"
    assert await rejection_code(store, session_check(1, nonce=nonce)) == "replay.sequence_reused"
    await store.check(session_check(2, nonce=nonce))


async def test_nonce_rejection_keeps_sequence_unused(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    await store.check(session_check(1, nonce="nonce-shared-00000001"))
    assert await rejection_code(store, session_check(2, nonce="nonce-shared-00000001")) == "replay.nonce_reused"
    await store.check(session_check(2))


async def test_jump_beyond_window_clears_it(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    for seq in range(1, WINDOW + 1):
        await store.check(session_check(seq, create=seq == 1))
    await store.check(session_check(100))
    # 100 - WINDOW + 1 = 93 .. 99 were never seen, whatever the ring held.
    for seq in range(93, 100):
        await store.check(session_check(seq))
    assert await rejection_code(store, session_check(92)) == "replay.sequence_too_old"


async def test_short_jump_clears_stale_ring_positions(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    for seq in range(1, WINDOW + 1):
        await store.check(session_check(seq, create=seq == 1))
    # Jumping to WINDOW + 3 reuses the ring positions of 1..3; the skipped
    # numbers WINDOW + 1 and WINDOW + 2 must read as unseen.
    await store.check(session_check(WINDOW + 3))
    await store.check(session_check(WINDOW + 1))
    await store.check(session_check(WINDOW + 2))
    assert await rejection_code(store, session_check(WINDOW + 2, nonce="nonce-again-000000003")) == (
        "replay.sequence_reused"
    )
    assert await rejection_code(store, session_check(3, nonce="nonce-old-00000000003")) == "replay.sequence_too_old"


async def test_sequence_exact_at_max_safe_integer(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    top = MAX_SAFE_INTEGER
    await store.check(session_check(top - 1))
    await store.check(session_check(top))
    with pytest.raises(ReplayRejected) as caught:
        await store.check(session_check(top - 1, nonce="nonce-big-0000000001"))
    assert caught.value.code == "replay.sequence_reused"
    assert caught.value.extra["expected_seq"] == top + 1
    await store.check(session_check(top - WINDOW + 1))
    assert await rejection_code(store, session_check(top - WINDOW)) == "replay.sequence_too_old"


async def test_window_of_non_power_of_two(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock(), window=100)
    top = MAX_SAFE_INTEGER - 3
    await store.check(session_check(top))
    for seq in (top - 1, top - 99, top - 50):
        await store.check(session_check(seq))
    assert await rejection_code(store, session_check(top - 100)) == "replay.sequence_too_old"
    assert await rejection_code(store, session_check(top - 50, nonce="nonce-again-000000004")) == (
        "replay.sequence_reused"
    )


# --- sessions -------------------------------------------------------------


async def test_unknown_session_rejected(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    code = await rejection_code(store, session_check(1, create=False))
    assert code == "session.unknown"
    # Nothing was recorded: the nonce is still usable.
    await store.check(session_check(1, create=True))


async def test_session_namespaced_per_identity(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    await store.check(session_check(1, identity="alice"))
    code = await rejection_code(store, session_check(2, identity="bob", create=False))
    assert code == "session.unknown"


async def test_session_expires_after_ttl(make_store: StoreFactory) -> None:
    clock = FakeClock()
    store = make_store(clock=clock, session_ttl=10_000)
    await store.check(session_check(1, ts=START))
    clock.now = START + 9_999
    await store.check(session_check(2, create=False, ts=clock.now))
    # Each accepted check renews the TTL from the store's clock.
    clock.now = START + 9_999 + 10_000
    assert await rejection_code(store, session_check(3, create=False, ts=clock.now)) == "session.unknown"


async def test_expired_session_recreated_empty(make_store: StoreFactory) -> None:
    clock = FakeClock()
    store = make_store(clock=clock, session_ttl=10_000)
    for seq in (1, 2, 3):
        await store.check(session_check(seq, ts=START))
    clock.now = START + 10_000
    # The token starts a new window: nothing of the expired one is seen.
    verdict = await store.check(session_check(2, nonce="nonce-new-session-002", ts=clock.now))
    assert verdict.highest_seq == 2
    await store.check(session_check(1, nonce="nonce-new-session-001", ts=clock.now))
    assert await rejection_code(store, session_check(2, nonce="nonce-new-session-03", ts=clock.now)) == (
        "replay.sequence_reused"
    )


async def test_sessions_are_independent(make_store: StoreFactory) -> None:
    store = make_store(clock=FakeClock())
    await store.check(session_check(1, session="A" * 22))
    await store.check(session_check(1, session="B" * 22, nonce="nonce-other-session-1"))


# --- concurrency and failures ----------------------------------------------


def shared_stores(make_store: StoreFactory, count: int) -> list[ReplayStore]:
    """Return store objects sharing one state: several workers on Redis, one object in memory."""
    if make_store.backend == "memory":  # type: ignore[attr-defined]
        return [make_store(clock=FakeClock())]
    return [make_store(clock=FakeClock()) for _ in range(count)]


async def test_concurrent_same_nonce_accepted_once(make_store: StoreFactory) -> None:
    stores = shared_stores(make_store, 5)
    checks = [stores[index % len(stores)].check(check()) for index in range(50)]
    results = await asyncio.gather(*checks, return_exceptions=True)
    accepted = [result for result in results if not isinstance(result, BaseException)]
    rejected = [result for result in results if isinstance(result, ReplayRejected)]
    assert len(accepted) == 1
    assert len(rejected) == 49
    assert {result.code for result in rejected} == {"replay.nonce_reused"}


async def test_concurrent_same_sequence_accepted_once(make_store: StoreFactory) -> None:
    stores = shared_stores(make_store, 3)
    await stores[0].check(session_check(1))
    checks = [stores[index % len(stores)].check(session_check(2, nonce=f"nonce-race-{index:010d}")) for index in range(30)]
    results = await asyncio.gather(*checks, return_exceptions=True)
    accepted = [result for result in results if not isinstance(result, BaseException)]
    assert len(accepted) == 1
    assert {result.code for result in results if isinstance(result, ReplayRejected)} == {"replay.sequence_reused"}


async def test_redis_unreachable_fails_closed() -> None:
    store = RedisReplayStore(
        f"redis://127.0.0.1:{free_port()}/0", max_skew_ms=SKEW, seq_window=WINDOW, session_ttl_ms=60_000, timeout_ms=200
    )
    started = time.monotonic()
    with pytest.raises(ReplayStoreUnavailable) as caught:
        await store.check(check(ts=int(time.time() * 1000)))
    assert time.monotonic() - started < 2
    assert caught.value.code == "unavailable"
    assert caught.value.status == 503
    await store.close()


async def test_redis_check_is_one_round_trip(redis_url: str) -> None:
    store = RedisReplayStore(redis_url, max_skew_ms=SKEW, seq_window=WINDOW, session_ttl_ms=60_000, timeout_ms=5_000)
    admin = redis.Redis.from_url(redis_url)
    await store.check(check(ts=int(time.time() * 1000), nonce="nonce-warm-up-000001"))
    admin.config_resetstat()
    before = store.round_trips
    for index in range(20):
        await store.check(session_check(index + 1, nonce=f"nonce-rt-{index:012d}", ts=int(time.time() * 1000)))
    stats = admin.info("commandstats")
    assert store.round_trips - before == 20
    assert stats["cmdstat_evalsha"]["calls"] == 20
    client_commands = {name for name in stats if name.startswith("cmdstat_") and "|" not in name}
    # The only other entries are commands the script ran, and admin's own INFO/CONFIG.
    assert client_commands <= {
        "cmdstat_evalsha", "cmdstat_time", "cmdstat_get", "cmdstat_hmget", "cmdstat_getbit",
        "cmdstat_set", "cmdstat_setbit", "cmdstat_hset", "cmdstat_pexpire", "cmdstat_del", "cmdstat_info",
        "cmdstat_config",
    }
    await store.close()
    admin.close()


async def test_redis_script_reloaded_after_flush(redis_url: str) -> None:
    store = RedisReplayStore(redis_url, max_skew_ms=SKEW, seq_window=WINDOW, session_ttl_ms=60_000, timeout_ms=5_000)
    await store.check(check(ts=int(time.time() * 1000), nonce="nonce-before-flush-01"))
    redis.Redis.from_url(redis_url).script_flush()
    await store.check(check(ts=int(time.time() * 1000), nonce="nonce-after-flush-001"))
    with pytest.raises(ReplayRejected):
        await store.check(check(ts=int(time.time() * 1000), nonce="nonce-after-flush-001"))
    await store.close()


# --- Redis Cluster ----------------------------------------------------------

IDENTITIES = [f"client-{index}" for index in range(12)]


def cluster_owner(cluster: redis.RedisCluster, key: str) -> str:
    return cluster.get_node_from_key(key).name


@pytest.mark.cluster
async def test_cluster_keys_of_identity_share_slot(redis_cluster_url: str) -> None:
    store = RedisReplayStore(redis_cluster_url, max_skew_ms=SKEW, seq_window=WINDOW, session_ttl_ms=60_000, cluster=True, timeout_ms=5_000)
    admin = redis.RedisCluster.from_url(redis_cluster_url)
    for identity in IDENTITIES:
        await store.check(session_check(1, identity=identity, ts=int(time.time() * 1000)))
    owners = set()
    for identity in IDENTITIES:
        prefix = f"rt:{{{identity}}}:"
        keys = [f"{prefix}n:nonce-seq-000000000001", f"{prefix}s:{'S' * 22}", f"{prefix}b:{'S' * 22}"]
        assert admin.exists(*keys) == 3
        assert len({admin.keyslot(key) for key in keys}) == 1
        owners.add(cluster_owner(admin, keys[0]))
    # The identities spread over every primary, so the contract suite above
    # exercised each of them.
    assert len(owners) == 3
    await store.close()
    admin.close()


@pytest.mark.cluster
async def test_cluster_script_loaded_on_every_primary(redis_cluster: RedisClusterServers, redis_cluster_url: str) -> None:
    store = RedisReplayStore(redis_cluster_url, max_skew_ms=SKEW, seq_window=WINDOW, session_ttl_ms=60_000, cluster=True, timeout_ms=5_000)
    for node in redis_cluster.nodes:
        node.client().script_flush()
    await store.load_script()
    for node in redis_cluster.nodes:
        assert node.client().script_exists(CHECK_SHA) == [True]
    await store.close()


@pytest.mark.cluster
async def test_cluster_script_reloaded_on_one_flushed_primary(
    redis_cluster: RedisClusterServers, redis_cluster_url: str
) -> None:
    store = RedisReplayStore(redis_cluster_url, max_skew_ms=SKEW, seq_window=WINDOW, session_ttl_ms=60_000, cluster=True, timeout_ms=5_000)
    await store.load_script()
    flushed = redis_cluster.nodes[1].client()
    flushed.script_flush()
    now = int(time.time() * 1000)
    for index, identity in enumerate(IDENTITIES):
        await store.check(check(identity=identity, ts=now, nonce=f"nonce-flush-{index:08d}"))
    for index, identity in enumerate(IDENTITIES):
        assert await rejection_code(store, check(identity=identity, ts=now, nonce=f"nonce-flush-{index:08d}")) == (
            "replay.nonce_reused"
        )
    assert flushed.script_exists(CHECK_SHA) == [True]
    await store.close()


@pytest.mark.parametrize("backend", ["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
async def test_checks_beyond_pool_wait_for_connection(request: pytest.FixtureRequest, backend: str) -> None:
    cluster = backend == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    # A generous timeout: the checks queue for four connections on a loaded test machine.
    store = RedisReplayStore(
        url, max_skew_ms=SKEW, seq_window=WINDOW, session_ttl_ms=60_000, cluster=cluster, max_connections=4, timeout_ms=10_000
    )
    now = int(time.time() * 1000)
    checks = [store.check(check(identity=IDENTITIES[index % 12], ts=now, nonce=f"nonce-pool-{index:08d}")) for index in range(200)]
    results = await asyncio.gather(*checks, return_exceptions=True)
    assert [result for result in results if isinstance(result, BaseException)] == []
    await store.close()


async def test_session_limit_per_identity(make_store: StoreFactory) -> None:
    clock = FakeClock()
    store = make_store(clock=clock, max_sessions=3)
    for index in range(3):
        await store.check(session_check(1, session=f"{index}" * 22, nonce=f"nonce-limit-{index:09d}"))
    with pytest.raises(ReplayRejected) as caught:
        await store.check(session_check(1, session="X" * 22, nonce="nonce-limit-overflow1"))
    assert caught.value.code == "session.limit_exceeded"
    assert caught.value.status == 429
    # Nothing was recorded: the nonce is still free, and existing sessions go on.
    await store.check(session_check(2, session="0" * 22, nonce="nonce-limit-overflow1", create=False))
    # Another identity has its own limit.
    await store.check(session_check(1, session="X" * 22, identity="bob", nonce="nonce-limit-bob-00001"))
    # Once a session TTL has passed since the starts, new sessions are allowed.
    clock.now += SESSION_TTL + 1
    await store.check(session_check(1, session="Y" * 22, ts=clock.now, nonce="nonce-limit-later-001"))
