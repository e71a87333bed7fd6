"""REPLAY_REDIS_WAIT_REPLICAS: a check is accepted only once a replica has stored its nonce.

Runs against a real primary with one replica, and against a real Redis
Cluster of three primaries with one replica each, both started here.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from realtime.exceptions import ReplayRejected, ReplayStoreUnavailable
from realtime.replay import ReplayCheck
from realtime.replay.redis import RedisReplayStore, replay_key_prefix
from tests.support.servers import RedisClusterServers, RedisReplicaPair, RedisServer, wait_for

# Generous bounds for checks that must pass on a loaded 2-core test machine.
TIMEOUT_MS = 3_000
WAIT_TIMEOUT_MS = 2_000
# Tight bounds for checks that must fail because a replica is paused.
SHORT_TIMEOUT_MS = 500
SHORT_WAIT_TIMEOUT_MS = 100

_nonces = itertools.count()


def fresh_nonce() -> str:
    return f"wait-nonce-{next(_nonces):010d}"


def command(nonce: str, identity: str = "alice") -> ReplayCheck:
    return ReplayCheck(identity=identity, ts_ms=time.time_ns() // 1_000_000, nonce=nonce)


def nonce_key(identity: str, nonce: str) -> str:
    return f"{replay_key_prefix(identity)}n:{nonce}"


def read_on_cluster_replica(replica: RedisServer, key: str) -> bytes | None:
    """GET on a cluster replica, which serves reads only after READONLY on the same connection."""
    with redis.Redis(host="127.0.0.1", port=replica.port, socket_timeout=5, single_connection_client=True) as client:
        client.execute_command("READONLY")
        return client.get(key)


@pytest.fixture(scope="module")
def replica_pair(run_dir: Path) -> Iterator[RedisReplicaPair]:
    pair = RedisReplicaPair(run_dir / "replicated").start()
    yield pair
    pair.stop()


@pytest.fixture(scope="module")
def replicated_cluster(run_dir: Path) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(run_dir / "replicated-cluster", primaries=3, replicas=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def wait_store(replica_pair: RedisReplicaPair) -> RedisReplayStore:
    store = RedisReplayStore(
        replica_pair.primary.url,
        max_skew_ms=30_000,
        seq_window=64,
        session_ttl_ms=60_000,
        timeout_ms=TIMEOUT_MS,
        wait_replicas=1,
        wait_timeout_ms=WAIT_TIMEOUT_MS,
    )
    yield store
    await store.close()


async def test_accepted_check_is_on_replica(wait_store: RedisReplayStore, replica_caught_up: RedisReplicaPair) -> None:
    replica_pair = replica_caught_up
    nonce = fresh_nonce()
    await wait_store.check(command(nonce))
    # Read straight after the accept: WAIT returned only once the replica
    # acknowledged the write.
    assert replica_pair.replica.client().get(nonce_key("alice", nonce)) is not None


def short_wait_store(url: str, *, wait_replicas: int = 1, cluster: bool = False) -> RedisReplayStore:
    return RedisReplayStore(
        url,
        max_skew_ms=30_000,
        seq_window=64,
        session_ttl_ms=60_000,
        timeout_ms=SHORT_TIMEOUT_MS,
        wait_replicas=wait_replicas,
        wait_timeout_ms=SHORT_WAIT_TIMEOUT_MS,
        cluster=cluster,
    )


@pytest.fixture
def replica_caught_up(replica_pair: RedisReplicaPair) -> RedisReplicaPair:
    """The pair, with the replica acknowledging again after an earlier test paused it."""
    wait_for(replica_pair.replica_acknowledges, timeout=20, message="the replica to acknowledge a write")
    return replica_pair


async def test_paused_replica_fails_check(wait_store: RedisReplayStore, replica_caught_up: RedisReplicaPair) -> None:
    replica_pair = replica_caught_up
    store = short_wait_store(replica_pair.primary.url)
    nonce = fresh_nonce()
    replica_pair.replica.pause()
    try:
        started = time.monotonic()
        with pytest.raises(ReplayStoreUnavailable) as caught:
            await store.check(command(nonce))
        elapsed = time.monotonic() - started
    finally:
        replica_pair.replica.resume()
        await store.close()
    assert "0 of 1 replicas acknowledged" in str(caught.value.__cause__)
    assert SHORT_WAIT_TIMEOUT_MS / 1000 <= elapsed < SHORT_TIMEOUT_MS / 1000
    # The nonce stays recorded on the primary: the client retries with a new one.
    assert replica_pair.primary.client().get(nonce_key("alice", nonce)) is not None
    with pytest.raises(ReplayRejected) as replayed:
        await wait_store.check(command(nonce))
    assert replayed.value.code == "replay.nonce_reused"
    await wait_store.check(command(fresh_nonce()))


async def test_more_replicas_than_exist_fails(replica_caught_up: RedisReplicaPair) -> None:
    store = short_wait_store(replica_caught_up.primary.url, wait_replicas=2)
    with pytest.raises(ReplayStoreUnavailable) as caught:
        await store.check(command(fresh_nonce()))
    assert "of 2 replicas acknowledged" in str(caught.value.__cause__)
    await store.close()


async def test_wait_check_is_one_round_trip(wait_store: RedisReplayStore, replica_caught_up: RedisReplicaPair) -> None:
    replica_pair = replica_caught_up
    await wait_store.check(command(fresh_nonce()))
    admin = replica_pair.primary.client()
    admin.config_resetstat()
    before = wait_store.round_trips
    for _ in range(20):
        await wait_store.check(command(fresh_nonce()))
    stats = admin.info("commandstats")
    assert wait_store.round_trips - before == 20
    assert stats["cmdstat_evalsha"]["calls"] == 20
    assert stats["cmdstat_wait"]["calls"] == 20


async def test_wait_survives_script_flush(wait_store: RedisReplayStore, replica_caught_up: RedisReplicaPair) -> None:
    replica_pair = replica_caught_up
    await wait_store.check(command(fresh_nonce()))
    replica_pair.primary.client().script_flush()
    nonce = fresh_nonce()
    await wait_store.check(command(nonce))
    assert replica_pair.replica.client().get(nonce_key("alice", nonce)) is not None


async def test_rejection_needs_no_acknowledgement(wait_store: RedisReplayStore, replica_caught_up: RedisReplicaPair) -> None:
    replica_pair = replica_caught_up
    nonce = fresh_nonce()
    await wait_store.check(command(nonce))
    replica_pair.replica.pause()
    try:
        with pytest.raises(ReplayRejected) as caught:
            await wait_store.check(command(nonce))
    finally:
        replica_pair.replica.resume()
    assert caught.value.code == "replay.nonce_reused"


@pytest.mark.cluster
async def test_cluster_wait_goes_to_slot_owner(replicated_cluster: RedisClusterServers) -> None:
    store = RedisReplayStore(
        replicated_cluster.url,
        max_skew_ms=30_000,
        seq_window=64,
        session_ttl_ms=60_000,
        timeout_ms=TIMEOUT_MS,
        cluster=True,
        wait_replicas=1,
        wait_timeout_ms=WAIT_TIMEOUT_MS,
    )
    admin = replicated_cluster.client()
    identities = [f"client-{index}" for index in range(12)]
    owner = {identity: admin.get_node_from_key(replay_key_prefix(identity)).port for identity in identities}
    admin.close()
    for identity in identities:
        nonce = fresh_nonce()
        await store.check(command(nonce, identity))
        primary = next(node for node in replicated_cluster.nodes if node.port == owner[identity])
        assert read_on_cluster_replica(replicated_cluster.replica_of(primary), nonce_key(identity, nonce)) is not None

    # With one shard's replica paused, only that shard's identities fail: the
    # WAIT of each check went to the primary that ran its script.
    paused_primary = replicated_cluster.nodes[0]
    paused_replica = replicated_cluster.replica_of(paused_primary)
    short_store = short_wait_store(replicated_cluster.url, cluster=True)
    paused_replica.pause()
    try:
        for identity in identities:
            if owner[identity] == paused_primary.port:
                with pytest.raises(ReplayStoreUnavailable):
                    await short_store.check(command(fresh_nonce(), identity))
            else:
                await store.check(command(fresh_nonce(), identity))
    finally:
        paused_replica.resume()
        await short_store.close()
    assert paused_primary.port in owner.values()
    await store.close()
