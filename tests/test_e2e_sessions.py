"""Session resume end to end: WebSocket and HTTP share one sequence window, across reconnects and restarts.

A real serve process over mutual TLS, with its replay store on a
redis-server that this module starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from realtime.client import CommandBuilder, new_nonce, now_ms
from realtime.replay.redis import replay_key_prefix
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases
from tests.support.e2e import Deployment, open_session, recv_json, transfer_headers
from tests.support.servers import RedisServer, ServeProcess, project_env

pytestmark = pytest.mark.e2e

ACCOUNTS = [
    ("A-1", "alice", "USD", "1000.00"),
    ("B-1", "bob", "USD", "1000.00"),
]


@pytest.fixture(scope="module")
def session_redis(run_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(run_dir / "redis-sessions").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def serve_env(pki: Pki, test_databases: TestDatabases, session_redis: RedisServer) -> dict[str, str]:
    database_url = test_databases.create("sessions")
    seed(database_url, clients=[(name, pki.cert(name)) for name in ("alice", "bob")], accounts=ACCOUNTS)
    return project_env(DATABASE_URL=database_url, REDIS_URL=session_redis.url)


@pytest.fixture(scope="module")
def deployment(serve_env: dict[str, str], pki: Pki, run_dir: Path) -> Iterator[Deployment]:
    server = ServeProcess(env=serve_env, pki_dir=pki.directory, log_dir=run_dir, name="serve-sessions").start()
    yield Deployment(server, serve_env["DATABASE_URL"], pki.directory)
    server.stop()


def transfer(builder: CommandBuilder, **kwargs: Any) -> str:
    kwargs.setdefault("from_account", "A-1")
    kwargs.setdefault("to_account", "B-1")
    kwargs.setdefault("amount", "1.00")
    return builder.transfer(**kwargs)


def with_fresh_nonce(frame: str) -> str:
    return json.dumps(json.loads(frame) | {"nonce": new_nonce(), "ts": now_ms()})


async def start_session(deployment: Deployment, count: int) -> tuple[str, CommandBuilder]:
    """Open a connection, execute ``count`` transfers in its session and close it."""
    builder = CommandBuilder()
    async with deployment.connect("alice") as connection:
        session = (await open_session(connection))["session"]
        for _ in range(count):
            await connection.send(transfer(builder))
            assert (await recv_json(connection))["type"] == "transfer.executed"
    return session, builder


# --- WebSocket resume -------------------------------------------------------------


async def test_resume_continues_sequence_window(deployment: Deployment) -> None:
    session, builder = await start_session(deployment, 3)
    captured = builder.sent[1]
    transfers_before = deployment.count("transfers_transfer")

    async with deployment.connect("alice") as connection:
        welcome = await open_session(connection)
        assert welcome["session"] != session
        await connection.send(builder.resume(session))
        resumed = await recv_json(connection)
        assert resumed == {"type": "resumed", "seq": 4, "session": session, "next_seq": 5}

        # The captured frame, replayed whole: its nonce is known.
        await connection.send(captured)
        assert (await recv_json(connection))["code"] == "replay.nonce_reused"
        # The captured sequence number with a fresh nonce: the window has seen it.
        await connection.send(with_fresh_nonce(captured))
        reused = await recv_json(connection)
        assert reused["code"] == "replay.sequence_reused"
        assert reused["seq"] == 2
        assert reused["expected_seq"] == 5

        await connection.send(transfer(builder))
        executed = await recv_json(connection)
        assert executed["type"] == "transfer.executed"
        assert executed["seq"] == 5

    assert deployment.count("transfers_transfer") == transfers_before + 1


async def test_resume_by_other_client_is_unknown(deployment: Deployment) -> None:
    session, builder = await start_session(deployment, 1)
    async with deployment.connect("bob") as connection:
        await open_session(connection)
        await connection.send(CommandBuilder(next_seq=2).resume(session))
        rejected = await recv_json(connection)
        assert rejected["type"] == "rejected"
        assert rejected["code"] == "session.unknown"
        # Bob's own session still works on the same connection.
        await connection.send(CommandBuilder().transfer(from_account="B-1", to_account="A-1", amount="1.00"))
        assert (await recv_json(connection))["type"] == "transfer.executed"

    # Alice's window is untouched: seq 2 is still free for her.
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(builder.resume(session))
        assert (await recv_json(connection))["next_seq"] == 3


@pytest.mark.parametrize("token", ["unknown-token-000000000000", "A" * 22])
async def test_resume_unknown_token_rejected(deployment: Deployment, token: str) -> None:
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(CommandBuilder().resume(token))
        rejected = await recv_json(connection)
        assert rejected["code"] == "session.unknown"
        assert rejected["seq"] == 1


async def test_resume_expired_session_rejected(deployment: Deployment, session_redis: RedisServer) -> None:
    session, builder = await start_session(deployment, 1)
    # Simulates REPLAY_SESSION_TTL_S passing: Redis deletes the session's keys
    # when their TTL ends, as this does now.
    admin = session_redis.client()
    prefix = replay_key_prefix("alice")
    assert admin.delete(f"{prefix}s:{session}", f"{prefix}b:{session}") == 2
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(builder.resume(session))
        assert (await recv_json(connection))["code"] == "session.unknown"


async def test_welcome_token_without_commands_unknown(deployment: Deployment) -> None:
    async with deployment.connect("alice") as connection:
        session = (await open_session(connection))["session"]
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(CommandBuilder().resume(session))
        assert (await recv_json(connection))["code"] == "session.unknown"


async def test_resume_after_accepted_command_rejected(deployment: Deployment) -> None:
    session, builder = await start_session(deployment, 1)
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(transfer(CommandBuilder()))
        assert (await recv_json(connection))["type"] == "transfer.executed"
        await connection.send(builder.resume(session))
        rejected = await recv_json(connection)
        assert rejected["code"] == "invalid_message"
        assert "before the first accepted command" in rejected["detail"]


async def test_resume_retried_after_rejection(deployment: Deployment) -> None:
    session, builder = await start_session(deployment, 1)
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send("{not json")
        assert (await recv_json(connection))["code"] == "invalid_message"
        stale = builder.resume(session, ts=now_ms() - 120_000)
        await connection.send(stale)
        assert (await recv_json(connection))["code"] == "replay.timestamp_out_of_window"
        await connection.send(builder.resume(session))
        resumed = await recv_json(connection)
        assert resumed["type"] == "resumed"
        assert resumed["next_seq"] == 4


@pytest.mark.parametrize(
    "overrides",
    [{"session": "short"}, {"session": 12345}, {"session": "x" * 65}, {"extra": 1}, {"seq": 0}],
)
async def test_resume_malformed_rejected(deployment: Deployment, overrides: dict[str, Any]) -> None:
    session, _ = await start_session(deployment, 1)
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        frame = json.loads(CommandBuilder(next_seq=5).resume(session)) | overrides
        await connection.send(json.dumps(frame))
        rejected = await recv_json(connection)
        assert rejected["code"] == "invalid_message"


# --- HTTP in the same sequence space --------------------------------------------------


async def test_http_continues_websocket_session(deployment: Deployment) -> None:
    session, builder = await start_session(deployment, 2)
    body = {"from_account": "A-1", "to_account": "B-1", "amount": "1.00", "currency": "USD"}
    transfers_before = deployment.count("transfers_transfer")
    async with deployment.async_http("alice") as client:
        created = await client.post(
            "/api/v1/transfers/",
            json=body,
            headers=transfer_headers(key=f"http-{new_nonce()}", nonce=new_nonce(), session=session, seq=3),
        )
        assert created.status_code == 201, created.text
        reused = await client.post(
            "/api/v1/transfers/",
            json=body,
            headers=transfer_headers(key=f"http-{new_nonce()}", nonce=new_nonce(), session=session, seq=2),
        )
        assert reused.status_code == 409
        assert reused.headers["content-type"] == "application/problem+json"
        assert reused.json()["code"] == "replay.sequence_reused"
        assert reused.json()["expected_seq"] == 4

    # Back on WebSocket, seq 3 belongs to the HTTP request.
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(CommandBuilder(next_seq=4).resume(session))
        assert (await recv_json(connection))["next_seq"] == 5
        await connection.send(transfer(CommandBuilder(next_seq=3)))
        assert (await recv_json(connection))["code"] == "replay.sequence_reused"
    assert deployment.count("transfers_transfer") == transfers_before + 1


@pytest.mark.parametrize(
    ("client_name", "token_of", "code"),
    [("bob", "alice", "session.unknown"), ("alice", None, "session.unknown")],
)
async def test_http_foreign_or_unknown_session_rejected(
    deployment: Deployment, client_name: str, token_of: str | None, code: str
) -> None:
    session = (await start_session(deployment, 1))[0] if token_of else "unknown-token-111111111111"
    body = {"from_account": "B-1", "to_account": "A-1", "amount": "1.00", "currency": "USD"}
    transfers_before = deployment.count("transfers_transfer")
    async with deployment.async_http(client_name) as client:
        response = await client.post(
            "/api/v1/transfers/",
            json=body,
            headers=transfer_headers(key=f"http-{new_nonce()}", nonce=new_nonce(), session=session, seq=2),
        )
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert deployment.count("transfers_transfer") == transfers_before


@pytest.mark.parametrize("header", ["X-Request-Session", "X-Request-Sequence"])
async def test_http_session_headers_come_together(deployment: Deployment, header: str) -> None:
    headers = transfer_headers(key=f"http-{new_nonce()}", nonce=new_nonce(), session="S" * 22, seq=1)
    del headers[header]
    async with deployment.async_http("alice") as client:
        response = await client.post(
            "/api/v1/transfers/",
            json={"from_account": "A-1", "to_account": "B-1", "amount": "1.00", "currency": "USD"},
            headers=headers,
        )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_message"
    assert "sent together" in response.json()["detail"]


async def test_http_without_session_uses_nonce_and_key(deployment: Deployment) -> None:
    body = {"from_account": "A-1", "to_account": "B-1", "amount": "2.00", "currency": "USD"}
    key = f"http-{new_nonce()}"
    headers = transfer_headers(key=key, nonce=new_nonce())
    balance = deployment.balance("A-1")
    async with deployment.async_http("alice") as client:
        first = await client.post("/api/v1/transfers/", json=body, headers=headers)
        assert first.status_code == 201
        # The captured request, replayed whole: the nonce is known.
        replayed = await client.post("/api/v1/transfers/", json=body, headers=headers)
        assert replayed.status_code == 409
        assert replayed.json()["code"] == "replay.nonce_reused"
        # A retry with a fresh nonce gets the stored response, not a second transfer.
        retry = await client.post("/api/v1/transfers/", json=body, headers=transfer_headers(key=key, nonce=new_nonce()))
        assert retry.status_code == 201
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json() == first.json()
    assert deployment.balance("A-1") == balance - Decimal("2.00")
    assert deployment.count("transfers_transfer", "idempotency_key = %s", (key,)) == 1


# --- restart ------------------------------------------------------------------------


async def test_resume_after_serve_restart(serve_env: dict[str, str], pki: Pki, run_dir: Path) -> None:
    """With Redis as the store, a session outlives the serve process that started it."""
    first = ServeProcess(env=serve_env, pki_dir=pki.directory, log_dir=run_dir, name="serve-before-restart").start()
    deployment = Deployment(first, serve_env["DATABASE_URL"], pki.directory)
    try:
        session, builder = await start_session(deployment, 2)
    finally:
        first.stop()
    captured = builder.sent[0]

    second = ServeProcess(env=serve_env, pki_dir=pki.directory, log_dir=run_dir, name="serve-after-restart").start()
    deployment = Deployment(second, serve_env["DATABASE_URL"], pki.directory)
    try:
        async with deployment.connect("alice") as connection:
            await open_session(connection)
            await connection.send(builder.resume(session))
            resumed = await recv_json(connection)
            assert resumed["type"] == "resumed"
            assert resumed["next_seq"] == 4
            await connection.send(captured)
            assert (await recv_json(connection))["code"] == "replay.nonce_reused"
            await connection.send(with_fresh_nonce(captured))
            assert (await recv_json(connection))["code"] == "replay.sequence_reused"
            await connection.send(transfer(builder))
            assert (await recv_json(connection))["type"] == "transfer.executed"
    finally:
        second.stop()


async def test_memory_store_loses_sessions_on_restart(pki: Pki, test_databases: TestDatabases, run_dir: Path) -> None:
    """Without Redis the store lives in the process: after a restart every session is unknown."""
    database_url = test_databases.create("memory-restart")
    seed(database_url, clients=[("alice", pki.cert("alice"))], accounts=[("A-1", "alice", "USD", "10.00"), ("A-2", "alice", "USD", "0")])
    env = project_env(DATABASE_URL=database_url)
    first = ServeProcess(env=env, pki_dir=pki.directory, log_dir=run_dir, name="serve-memory-1").start()
    try:
        builder = CommandBuilder()
        async with Deployment(first, database_url, pki.directory).connect("alice") as connection:
            session = (await open_session(connection))["session"]
            await connection.send(builder.transfer(from_account="A-1", to_account="A-2", amount="1.00"))
            assert (await recv_json(connection))["type"] == "transfer.executed"
    finally:
        first.stop()
    second = ServeProcess(env=env, pki_dir=pki.directory, log_dir=run_dir, name="serve-memory-2").start()
    try:
        async with Deployment(second, database_url, pki.directory).connect("alice") as connection:
            await open_session(connection)
            await connection.send(builder.resume(session))
            assert (await recv_json(connection))["code"] == "session.unknown"
    finally:
        second.stop()
