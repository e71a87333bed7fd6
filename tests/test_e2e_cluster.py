"""The service on a Redis Cluster end to end: replay store, sessions and the pub/sub channel layer.

Two serve processes run with ``REDIS_CLUSTER=1`` against the real 3-node
cluster of the test session, sharing one database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from realtime.client import CommandBuilder, new_nonce, now_ms
from realtime.replay.redis import replay_key_prefix
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases
from tests.support.e2e import Deployment, open_session, recv_json, transfer_headers
from tests.support.servers import RedisClusterServers, ServeProcess, manage, project_env

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

ACCOUNTS = [
    ("A-1", "alice", "USD", "10000.00"),
    ("B-1", "bob", "USD", "1000.00"),
    ("D-1", "dave", "USD", "10.00"),
]


@pytest.fixture(scope="module")
def cluster_env(pki: Pki, test_databases: TestDatabases, redis_cluster: RedisClusterServers) -> dict[str, str]:
    database_url = test_databases.create("cluster")
    seed(database_url, clients=[(name, pki.cert(name)) for name in ("alice", "bob", "dave")], accounts=ACCOUNTS)
    return project_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_cluster.url,
        REDIS_CLUSTER="1",
        REDIS_CLUSTER_NODES=",".join(redis_cluster.urls),
    )


@pytest.fixture(scope="module")
def workers(cluster_env: dict[str, str], pki: Pki, run_dir: Path) -> Iterator[list[Deployment]]:
    servers = [
        ServeProcess(env=cluster_env, pki_dir=pki.directory, log_dir=run_dir, name=f"serve-cluster-{index}").start()
        for index in range(2)
    ]
    yield [Deployment(server, cluster_env["DATABASE_URL"], pki.directory) for server in servers]
    for server in servers:
        server.stop()


def transfer(builder: CommandBuilder, **kwargs: Any) -> str:
    return builder.transfer(**{"from_account": "A-1", "to_account": "B-1", "amount": "1.00", **kwargs})


async def test_cluster_replay_and_resume(workers: list[Deployment], redis_cluster: RedisClusterServers) -> None:
    deployment = workers[0]
    builder = CommandBuilder()
    async with deployment.connect("alice") as connection:
        session = (await open_session(connection))["session"]
        for _ in range(3):
            await connection.send(transfer(builder))
            assert (await recv_json(connection))["type"] == "transfer.executed"
        await connection.send(builder.sent[0])
        assert (await recv_json(connection))["code"] == "replay.nonce_reused"

    # Resumed on the other worker: the window lives in the cluster.
    captured = builder.sent[1]
    async with workers[1].connect("alice") as connection:
        await open_session(connection)
        await connection.send(builder.resume(session))
        assert (await recv_json(connection))["next_seq"] == 5
        await connection.send(captured)
        assert (await recv_json(connection))["code"] == "replay.nonce_reused"
        await connection.send(json.dumps(json.loads(captured) | {"nonce": new_nonce(), "ts": now_ms()}))
        assert (await recv_json(connection))["code"] == "replay.sequence_reused"

    cluster = redis_cluster.client()
    prefix = replay_key_prefix("alice")
    session_keys = [f"{prefix}s:{session}", f"{prefix}b:{session}"]
    assert cluster.exists(*session_keys) == 2
    assert len({cluster.keyslot(key) for key in session_keys}) == 1
    cluster.close()


async def test_cluster_http_session(workers: list[Deployment]) -> None:
    deployment = workers[1]
    builder = CommandBuilder()
    async with deployment.connect("alice") as connection:
        session = (await open_session(connection))["session"]
        await connection.send(transfer(builder))
        assert (await recv_json(connection))["type"] == "transfer.executed"
    body = {"from_account": "A-1", "to_account": "B-1", "amount": "1.00", "currency": "USD"}
    async with workers[0].async_http("alice") as client:
        created = await client.post(
            "/api/v1/transfers/", json=body, headers=transfer_headers(key=new_nonce(), nonce=new_nonce(), session=session, seq=2)
        )
        assert created.status_code == 201
        reused = await client.post(
            "/api/v1/transfers/", json=body, headers=transfer_headers(key=new_nonce(), nonce=new_nonce(), session=session, seq=1)
        )
        assert reused.json()["code"] == "replay.sequence_reused"
    async with workers[0].async_http("bob") as client:
        foreign = await client.post(
            "/api/v1/transfers/",
            json={"from_account": "B-1", "to_account": "A-1", "amount": "1.00", "currency": "USD"},
            headers=transfer_headers(key=new_nonce(), nonce=new_nonce(), session=session, seq=3),
        )
        assert foreign.json()["code"] == "session.unknown"


async def test_cluster_same_frame_to_two_workers(workers: list[Deployment]) -> None:
    builder = CommandBuilder()
    first, second = [await deployment.connect("alice") for deployment in workers]
    try:
        session = (await open_session(first))["session"]
        await open_session(second)
        await first.send(transfer(builder))
        assert (await recv_json(first))["type"] == "transfer.executed"
        await second.send(builder.resume(session))
        assert (await recv_json(second))["type"] == "resumed"
        transfers_before = workers[0].count("transfers_transfer")
        for _ in range(10):
            frame = transfer(builder)
            await asyncio.gather(first.send(frame), second.send(frame))
            replies = await asyncio.gather(recv_json(first), recv_json(second))
            assert sorted(reply["type"] for reply in replies) == ["rejected", "transfer.executed"]
    finally:
        await first.close()
        await second.close()
    assert workers[0].count("transfers_transfer") == transfers_before + 10


async def test_cluster_revocation_closes_open_sockets(workers: list[Deployment], cluster_env: dict[str, str]) -> None:
    """deactivate_client reaches every worker through the pub/sub layer on the cluster."""
    connections = [await deployment.connect("dave") for deployment in workers]
    try:
        for connection in connections:
            await open_session(connection)
        result = await asyncio.to_thread(manage, "deactivate_client", "dave", env=cluster_env)
        assert "could not be reached" not in result.stderr
        for connection in connections:
            # No command is sent: the close comes from the channel layer alone.
            with pytest.raises(ConnectionClosed) as caught:
                await recv_json(connection)
            assert caught.value.rcvd is not None
            assert caught.value.rcvd.code == 4001
    finally:
        for connection in connections:
            await connection.close()
