"""Faults end to end: Redis stopped, paused or emptied under a running service, a worker killed mid-transfer,
and two workers receiving the same command at once.

Two serve processes share one database and one redis-server, which keeps
an append-only file fsynced on every write, so stopping and starting it
loses nothing it acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from realtime.client import CommandBuilder, new_nonce, now_ms
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases, query
from tests.support.e2e import Deployment, open_session, recv_json, transfer_headers
from tests.support.servers import RedisServer, ServeProcess, project_env, wait_for

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 1_000
# Slack on top of TIMEOUT_MS for TLS, daphne and a loaded 2-core machine.
TIMEOUT_SLACK_S = 0.7
LEASE_S = 2
ACCOUNTS = [
    ("A-1", "alice", "USD", "100000.00"),
    ("B-1", "bob", "USD", "1000.00"),
]
BODY = {"from_account": "A-1", "to_account": "B-1", "amount": "1.00", "currency": "USD"}


@pytest.fixture(scope="module")
def fault_redis(run_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(run_dir / "redis-e2e-faults", extra_args=("--appendonly", "yes", "--appendfsync", "always")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def serve_env(pki: Pki, test_databases: TestDatabases, fault_redis: RedisServer) -> dict[str, str]:
    database_url = test_databases.create("faults")
    seed(database_url, clients=[(name, pki.cert(name)) for name in ("alice", "bob")], accounts=ACCOUNTS)
    return project_env(
        DATABASE_URL=database_url,
        REDIS_URL=fault_redis.url,
        REPLAY_REDIS_TIMEOUT_MS=str(TIMEOUT_MS),
        IDEMPOTENCY_LEASE_S=str(LEASE_S),
    )


@pytest.fixture(scope="module")
def workers(serve_env: dict[str, str], pki: Pki, run_dir: Path) -> Iterator[list[Deployment]]:
    """Two serve processes behind the same database and Redis, as behind a load balancer."""
    servers = [
        ServeProcess(env=serve_env, pki_dir=pki.directory, log_dir=run_dir, name=f"serve-faults-{index}").start()
        for index in range(2)
    ]
    yield [Deployment(server, serve_env["DATABASE_URL"], pki.directory) for server in servers]
    for server in servers:
        server.stop()


@pytest.fixture
def redis_running(fault_redis: RedisServer) -> RedisServer:
    """The module's redis-server, started again if an earlier test left it stopped or paused."""
    if fault_redis.process is None:
        fault_redis.start()
    fault_redis.resume()
    return fault_redis


def transfer(builder: CommandBuilder, **kwargs: Any) -> str:
    return builder.transfer(**{"from_account": "A-1", "to_account": "B-1", "amount": "1.00", **kwargs})


def with_fresh_nonce(frame: str) -> str:
    return json.dumps(json.loads(frame) | {"nonce": new_nonce(), "ts": now_ms()})


# --- Redis stopped, paused, emptied --------------------------------------------------


async def test_redis_stopped_during_run(workers: list[Deployment], redis_running: RedisServer) -> None:
    deployment = workers[0]
    builder = CommandBuilder()
    async with deployment.connect("alice") as connection, deployment.async_http("alice") as client:
        await open_session(connection)
        first = transfer(builder)
        await connection.send(first)
        assert (await recv_json(connection))["type"] == "transfer.executed"
        transfers_before = deployment.count("transfers_transfer")

        redis_running.stop()
        during = transfer(builder)
        started = time.monotonic()
        await connection.send(during)
        rejected = await recv_json(connection)
        assert time.monotonic() - started < TIMEOUT_MS / 1000 + TIMEOUT_SLACK_S
        assert rejected["code"] == "unavailable"
        assert rejected["seq"] == 2
        response = await client.post("/api/v1/transfers/", json=BODY, headers=transfer_headers(key=new_nonce(), nonce=new_nonce()))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["code"] == "unavailable"
        health = await client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["replay_store"] == "unavailable"
        assert deployment.count("transfers_transfer") == transfers_before

        redis_running.start()
        # The command rejected as unavailable was neither executed nor
        # recorded, so it goes through once now, and only once.
        await connection.send(during)
        assert (await recv_json(connection))["type"] == "transfer.executed"
        await connection.send(during)
        assert (await recv_json(connection))["code"] == "replay.nonce_reused"
        fresh = transfer(builder)
        await connection.send(fresh)
        assert (await recv_json(connection))["type"] == "transfer.executed"
        await connection.send(fresh)
        assert (await recv_json(connection))["code"] == "replay.nonce_reused"
        # The append-only file kept the nonce recorded before the stop.
        await connection.send(first)
        assert (await recv_json(connection))["code"] == "replay.nonce_reused"
        assert (await client.get("/healthz")).status_code == 200
    assert deployment.count("transfers_transfer") == transfers_before + 2


async def test_redis_paused_rejects_within_timeout(workers: list[Deployment], redis_running: RedisServer) -> None:
    deployment = workers[0]
    builder = CommandBuilder()
    key = f"paused-{new_nonce()}"
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(transfer(builder))
        assert (await recv_json(connection))["type"] == "transfer.executed"
        transfers_before = deployment.count("transfers_transfer")

        late = transfer(builder, idempotency_key=key)
        redis_running.pause()
        try:
            started = time.monotonic()
            await connection.send(late)
            rejected = await recv_json(connection)
            elapsed = time.monotonic() - started
        finally:
            redis_running.resume()
        assert rejected["code"] == "unavailable"
        assert elapsed < TIMEOUT_MS / 1000 + TIMEOUT_SLACK_S
        # Redis ran the check once it was continued, too late: nothing executed it.
        await asyncio.sleep(0.3)
        assert deployment.count("transfers_transfer") == transfers_before

        # Its nonce and sequence number are now recorded, so the client
        # retries with fresh ones and the same Idempotency-Key.
        await connection.send(late)
        assert (await recv_json(connection))["code"] == "replay.nonce_reused"
        await connection.send(with_fresh_nonce(late))
        assert (await recv_json(connection))["code"] == "replay.sequence_reused"
        await connection.send(transfer(builder, idempotency_key=key))
        executed = await recv_json(connection)
        assert executed["type"] == "transfer.executed"
        assert executed["replayed"] is False
    assert deployment.count("transfers_transfer", "idempotency_key = %s", (key,)) == 1


async def test_replay_store_state_loss_caught_by_idempotency(workers: list[Deployment], redis_running: RedisServer) -> None:
    """If Redis loses what it recorded (no persistence, a failover), the Idempotency-Key still prevents a second execution."""
    deployment = workers[0]
    builder = CommandBuilder()
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        captured = transfer(builder)
        await connection.send(captured)
        original = await recv_json(connection)
        assert original["type"] == "transfer.executed"
        transfers_before = deployment.count("transfers_transfer")

        redis_running.client().flushall()
        # The session is gone with everything else, and the store cannot
        # vouch for its window any more: the connection's commands fail closed.
        await connection.send(transfer(builder))
        assert (await recv_json(connection))["code"] == "session.unknown"

    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(captured)
        replayed = await recv_json(connection)
    assert replayed["type"] == "transfer.executed"
    assert replayed["replayed"] is True
    assert replayed["transfer"] == original["transfer"]
    assert deployment.count("transfers_transfer") == transfers_before


# --- several workers ------------------------------------------------------------------


async def test_same_frame_to_two_workers_executes_once(workers: list[Deployment], redis_running: RedisServer) -> None:
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

        outcomes = []
        for _ in range(20):
            frame = transfer(builder)
            await asyncio.gather(first.send(frame), second.send(frame))
            outcomes.append(await asyncio.gather(recv_json(first), recv_json(second)))
        for replies in outcomes:
            assert sorted(reply["type"] for reply in replies) == ["rejected", "transfer.executed"]
            assert [reply["code"] for reply in replies if reply["type"] == "rejected"] == ["replay.nonce_reused"]

        # The same sequence number under two nonces, at once: the window takes one.
        for _ in range(10):
            frame = transfer(builder)
            await asyncio.gather(first.send(frame), second.send(with_fresh_nonce(frame)))
            replies = await asyncio.gather(recv_json(first), recv_json(second))
            assert sorted(reply["type"] for reply in replies) == ["rejected", "transfer.executed"]
            assert [reply["code"] for reply in replies if reply["type"] == "rejected"] == ["replay.sequence_reused"]
    finally:
        await first.close()
        await second.close()
    assert workers[0].count("transfers_transfer") == transfers_before + 30


async def test_same_request_to_two_workers_executes_once(workers: list[Deployment], redis_running: RedisServer) -> None:
    transfers_before = workers[0].count("transfers_transfer")
    async with workers[0].async_http("alice") as first, workers[1].async_http("alice") as second:
        for _ in range(10):
            headers = transfer_headers(key=f"twice-{new_nonce()}", nonce=new_nonce())
            responses = await asyncio.gather(
                first.post("/api/v1/transfers/", json=BODY, headers=headers),
                second.post("/api/v1/transfers/", json=BODY, headers=headers),
            )
            assert sorted(response.status_code for response in responses) == [201, 409]
            assert [r.json()["code"] for r in responses if r.status_code == 409] == ["replay.nonce_reused"]

        # One Idempotency-Key under two nonces, at once: one transfer.
        for _ in range(10):
            key = f"retry-{new_nonce()}"
            responses = await asyncio.gather(
                first.post("/api/v1/transfers/", json=BODY, headers=transfer_headers(key=key, nonce=new_nonce())),
                second.post("/api/v1/transfers/", json=BODY, headers=transfer_headers(key=key, nonce=new_nonce())),
            )
            statuses = sorted(response.status_code for response in responses)
            assert statuses in ([201, 201], [201, 409]), [response.text for response in responses]
            assert workers[0].count("transfers_transfer", "idempotency_key = %s", (key,)) == 1
    assert workers[0].count("transfers_transfer") == transfers_before + 20


# --- a worker killed mid-transfer ---------------------------------------------------------


async def test_worker_killed_mid_transfer_executes_once(
    workers: list[Deployment], redis_running: RedisServer, serve_env: dict[str, str], pki: Pki, run_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL inside the transfer's transaction; the client's retries execute it exactly once."""
    hold_env = dict(serve_env, DJANGO_SETTINGS_MODULE="tests.support.fault_settings", TRANSFER_HOLD_DIR=str(tmp_path))
    doomed = ServeProcess(env=hold_env, pki_dir=pki.directory, log_dir=run_dir, name="serve-killed").start()
    survivor = workers[1]
    database_url = serve_env["DATABASE_URL"]
    key = f"killed-{new_nonce()}"
    balance_before = survivor.balance("A-1")
    transfers_before = survivor.count("transfers_transfer")

    (tmp_path / "hold").touch()
    try:
        connection = await Deployment(doomed, database_url, pki.directory).connect("alice")
        await open_session(connection)
        await connection.send(transfer(CommandBuilder(), idempotency_key=key, amount="7.00"))
        await asyncio.to_thread(wait_for, (tmp_path / "held").exists, timeout=20, message="the transfer to reach its balance update")
        # Claimed and mid-transaction: the key is leased to the worker about to die.
        assert query(database_url, "SELECT state FROM transfers_idempotencyrecord WHERE key = %s", (key,)) == [("in_progress",)]
        doomed.kill()
        connection.transport.abort()
    finally:
        doomed.stop()
        (tmp_path / "hold").unlink()

    assert survivor.balance("A-1") == balance_before
    async with survivor.connect("alice") as connection:
        await open_session(connection)
        builder = CommandBuilder()
        await connection.send(transfer(builder, idempotency_key=key, amount="7.00"))
        busy = await recv_json(connection)
        assert busy["code"] == "idempotency.in_progress"
        assert 1 <= busy["retry_after"] <= LEASE_S

        await asyncio.sleep(busy["retry_after"] + 0.2)
        await connection.send(transfer(builder, idempotency_key=key, amount="7.00"))
        executed = await recv_json(connection)
        assert executed["type"] == "transfer.executed"
        assert executed["replayed"] is False
        await connection.send(transfer(builder, idempotency_key=key, amount="7.00"))
        again = await recv_json(connection)
        assert again["replayed"] is True
        assert again["transfer"] == executed["transfer"]

    assert survivor.count("transfers_transfer", "idempotency_key = %s", (key,)) == 1
    assert survivor.count("transfers_transfer") == transfers_before + 1
    assert survivor.balance("A-1") == balance_before - Decimal("7.00")
    assert survivor.ledger_sum() == 0
