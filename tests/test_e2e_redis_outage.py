"""Redis stopped during a run: commands fail closed, and execute once after recovery."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from realtime.client import CommandBuilder
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases
from tests.support.e2e import Deployment, open_session, recv_json, transfer_headers
from tests.support.servers import RedisServer, ServeProcess, project_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def redis_server(run_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(run_dir / "redis-outage").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def deployment(pki: Pki, test_databases: TestDatabases, run_dir: Path, redis_server: RedisServer) -> Iterator[Deployment]:
    database_url = test_databases.create("outage")
    seed(
        database_url,
        clients=[("alice", pki.cert("alice")), ("bob", pki.cert("bob"))],
        accounts=[("O-A", "alice", "USD", "100.00"), ("O-B", "bob", "USD", "100.00")],
    )
    env = project_env(DATABASE_URL=database_url, REDIS_URL=redis_server.url, REPLAY_REDIS_TIMEOUT_MS="300")
    server = ServeProcess(env=env, pki_dir=pki.directory, log_dir=run_dir).start()
    yield Deployment(server, database_url, pki.directory)
    server.stop()


@pytest.fixture
def redis_restored(redis_server: RedisServer) -> Iterator[RedisServer]:
    """Leave Redis running after the test, whatever the test did to it."""
    yield redis_server
    if redis_server.process is None:
        redis_server.start()


async def test_websocket_command_unavailable_while_redis_down(deployment: Deployment, redis_restored: RedisServer) -> None:
    builder = CommandBuilder()
    transfers = deployment.count("transfers_transfer")
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(builder.transfer(from_account="O-A", to_account="O-B", amount="1.00", idempotency_key="outage-ws-0"))
        assert (await recv_json(connection))["type"] == "transfer.executed"

        redis_restored.stop()
        frame = builder.transfer(from_account="O-A", to_account="O-B", amount="2.00", idempotency_key="outage-ws-1")
        await connection.send(frame)
        rejected = await recv_json(connection)
        assert rejected["type"] == "rejected"
        assert rejected["code"] == "unavailable"
        assert rejected["seq"] == 2
        assert deployment.count("transfers_transfer") == transfers + 1

        redis_restored.start()
        # Redis restarted empty (it keeps nothing on disk), so this
        # connection's session is gone: the server reports it and closes.
        await connection.send(builder.transfer(from_account="O-A", to_account="O-B", amount="2.00", idempotency_key="outage-ws-1"))
        lost = await recv_json(connection)
        assert lost["code"] == "session.unknown"
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(connection)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008

    # The client reconnects and retries with a fresh nonce and the same key.
    builder = CommandBuilder()
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(builder.transfer(from_account="O-A", to_account="O-B", amount="2.00", idempotency_key="outage-ws-1"))
        executed = await recv_json(connection)
        assert executed["type"] == "transfer.executed"
        assert executed["replayed"] is False
        await connection.send(builder.transfer(from_account="O-A", to_account="O-B", amount="2.00", idempotency_key="outage-ws-1"))
        assert (await recv_json(connection))["replayed"] is True
    assert deployment.count("transfers_transfer", "idempotency_key = %s", ("outage-ws-1",)) == 1


def test_http_503_not_stored_then_retry_executes_once(deployment: Deployment, redis_restored: RedisServer) -> None:
    body = json.dumps({"from_account": "O-A", "to_account": "O-B", "amount": "3.00", "currency": "USD"})
    with deployment.http("alice") as client:
        redis_restored.stop()
        unavailable = client.post("/api/v1/transfers/", content=body, headers=transfer_headers("outage-http-1"))
        assert unavailable.status_code == 503
        assert unavailable.headers["content-type"] == "application/problem+json"
        assert unavailable.json()["code"] == "unavailable"
        assert int(unavailable.headers["retry-after"]) >= 1
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["replay_store"] == "unavailable"
        assert deployment.count("transfers_idempotencyrecord", "key = %s", ("outage-http-1",)) == 0

        redis_restored.start()
        retry = client.post("/api/v1/transfers/", content=body, headers=transfer_headers("outage-http-1"))
        again = client.post("/api/v1/transfers/", content=body, headers=transfer_headers("outage-http-1"))
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert deployment.count("transfers_transfer", "idempotency_key = %s", ("outage-http-1",)) == 1


def test_healthz_reports_redis_refusing_writes(deployment: Deployment, redis_restored: RedisServer) -> None:
    admin = redis_restored.client()
    with deployment.http("alice") as client:
        assert client.get("/healthz").status_code == 200
        admin.config_set("maxmemory", 1)
        try:
            health = client.get("/healthz")
        finally:
            admin.config_set("maxmemory", 0)
        assert health.status_code == 503
        assert health.json()["replay_store"] == "unavailable"
        assert client.get("/healthz").status_code == 200
