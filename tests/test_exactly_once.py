"""Exactly-once execution under concurrency: two daphne workers, Redis, the suite's database."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest

from realtime.client import CommandBuilder
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases, query
from tests.support.e2e import Deployment, open_session, recv_json, transfer_headers
from tests.support.load import post_same_command
from tests.support.servers import RedisServer, ServeProcess, project_env

pytestmark = pytest.mark.e2e

OPENING = {"X-A1": "500.00", "X-A2": "500.00", "X-B1": "500.00", "X-B2": "500.00"}
OWNERS = {"X-A1": "alice", "X-A2": "alice", "X-B1": "bob", "X-B2": "bob"}


@pytest.fixture(scope="module")
def workers(pki: Pki, test_databases: TestDatabases, run_dir: Path) -> Iterator[list[Deployment]]:
    database_url = test_databases.create("once")
    seed(
        database_url,
        clients=[("alice", pki.cert("alice")), ("bob", pki.cert("bob"))],
        accounts=[(account, OWNERS[account], "USD", balance) for account, balance in OPENING.items()],
    )
    redis_server = RedisServer(run_dir / "redis-once").start()
    env = project_env(DATABASE_URL=database_url, REDIS_URL=redis_server.url, IDEMPOTENCY_LEASE_S="30")
    servers = [
        ServeProcess(env=env, pki_dir=pki.directory, log_dir=run_dir, name=f"worker{index}").start()
        for index in range(2)
    ]
    yield [Deployment(server, database_url, pki.directory) for server in servers]
    for server in servers:
        server.stop()
    redis_server.stop()


def postgres_only(deployment: Deployment) -> None:
    if not deployment.database_url.startswith("postgres"):
        pytest.skip("holding a request in flight needs PostgreSQL row locks; SQLite locks the whole file")


@contextmanager
def account_locked(database_url: str, account_id: str) -> Iterator[psycopg.Connection]:
    """Hold a row lock on an account so that a transfer touching it waits mid-transaction."""
    connection = psycopg.connect(database_url.replace("postgres://", "postgresql://", 1))
    try:
        connection.execute("SELECT id FROM transfers_account WHERE id = %s FOR UPDATE", (account_id,))
        yield connection
    finally:
        connection.rollback()
        connection.close()


def wait_for_lock_waiter(database_url: str, timeout: float = 10) -> int:
    """Return the pid of the server backend waiting on our lock."""
    name = database_url.rsplit("/", 1)[-1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(
            database_url,
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (name,),
        )
        if rows:
            return int(rows[0][0])
        time.sleep(0.05)
    raise TimeoutError("no server backend started waiting on the account lock")


def transfer_body(amount: str, source: str = "X-A1", target: str = "X-B1") -> dict[str, str]:
    return {"from_account": source, "to_account": target, "amount": amount, "currency": "USD"}


def test_fifty_concurrent_posts_execute_once(workers: list[Deployment]) -> None:
    deployment = workers[0]
    urls = [worker.server.base_url for worker in workers]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=5, mp_context=context) as pool:
        futures = [
            pool.submit(post_same_command, urls, str(deployment.pki_dir), "alice", "fifty-1", transfer_body("1.00"), 10)
            for _ in range(5)
        ]
        results = [result for future in futures for result in future.result(timeout=120)]

    assert len(results) == 50
    statuses = {status for status, _, _ in results}
    assert statuses <= {201, 409}, statuses
    successes = [text for status, text, _ in results if status == 201]
    assert successes, "no request succeeded"
    assert len(set(successes)) == 1
    assert sum(1 for status, _, replayed in results if status == 201 and replayed is None) == 1
    for status, text, _ in results:
        if status == 409:
            assert json.loads(text)["code"] == "idempotency.in_progress"
    assert deployment.count("transfers_transfer", "idempotency_key = %s", ("fifty-1",)) == 1
    entries = query(
        deployment.database_url,
        "SELECT COUNT(*) FROM transfers_ledgerentry e JOIN transfers_transfer t ON t.id = e.transfer_id "
        "WHERE t.idempotency_key = %s",
        ("fifty-1",),
    )
    assert entries[0][0] == 2


async def test_same_command_over_http_and_two_websockets(workers: list[Deployment]) -> None:
    key = "three-ways-1"
    body = transfer_body("2.00")

    async def over_websocket(deployment: Deployment) -> dict:
        async with deployment.connect("alice") as connection:
            await open_session(connection)
            await connection.send(CommandBuilder().transfer(idempotency_key=key, **body))
            return await recv_json(connection)

    async def over_http(deployment: Deployment) -> httpx.Response:
        async with deployment.async_http("alice") as client:
            return await client.post("/api/v1/transfers/", content=json.dumps(body), headers=transfer_headers(key))

    first, second, response = await asyncio.gather(over_websocket(workers[0]), over_websocket(workers[1]), over_http(workers[1]))
    outcomes = [first, second]
    executed = [outcome for outcome in outcomes if outcome["type"] == "transfer.executed"]
    assert all(outcome["type"] == "transfer.executed" or outcome["code"] == "idempotency.in_progress" for outcome in outcomes)
    assert response.status_code in (201, 409)
    ids = {outcome["transfer"]["id"] for outcome in executed}
    if response.status_code == 201:
        ids.add(response.json()["id"])
    assert len(ids) == 1
    assert workers[0].count("transfers_transfer", "idempotency_key = %s", (key,)) == 1


def test_key_reused_during_and_after_first_request(workers: list[Deployment]) -> None:
    deployment = workers[0]
    postgres_only(deployment)
    balance = deployment.balance("X-A2")
    results: dict[str, httpx.Response] = {}

    def first_request() -> None:
        with deployment.http("alice") as client:
            results["first"] = client.post(
                "/api/v1/transfers/", content=json.dumps(transfer_body("3.00", "X-A2")), headers=transfer_headers("reuse-1")
            )

    with account_locked(deployment.database_url, "X-A2"):
        thread = threading.Thread(target=first_request)
        thread.start()
        wait_for_lock_waiter(deployment.database_url)
        with workers[1].http("alice") as client:
            during = client.post(
                "/api/v1/transfers/", content=json.dumps(transfer_body("4.00", "X-A2")), headers=transfer_headers("reuse-1")
            )
            same_during = client.post(
                "/api/v1/transfers/", content=json.dumps(transfer_body("3.00", "X-A2")), headers=transfer_headers("reuse-1")
            )
        assert during.status_code == 422
        assert during.json()["code"] == "idempotency.key_mismatch"
        assert same_during.status_code == 409
        assert same_during.json()["code"] == "idempotency.in_progress"
        assert int(same_during.headers["retry-after"]) >= 1
    thread.join(timeout=30)

    assert results["first"].status_code == 201
    with deployment.http("alice") as client:
        after = client.post(
            "/api/v1/transfers/", content=json.dumps(transfer_body("4.00", "X-A2")), headers=transfer_headers("reuse-1")
        )
    assert after.status_code == 422
    assert after.json()["code"] == "idempotency.key_mismatch"
    assert deployment.balance("X-A2") == balance - Decimal("3.00")


def test_database_connection_dropped_mid_request(workers: list[Deployment]) -> None:
    deployment = workers[0]
    postgres_only(deployment)
    results: dict[str, httpx.Response] = {}

    def request() -> None:
        with deployment.http("alice") as client:
            results["dropped"] = client.post(
                "/api/v1/transfers/", content=json.dumps(transfer_body("5.00")), headers=transfer_headers("dropped-1")
            )

    with account_locked(deployment.database_url, "X-A1"):
        thread = threading.Thread(target=request)
        thread.start()
        pid = wait_for_lock_waiter(deployment.database_url)
        query(deployment.database_url, "SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(timeout=30)

    dropped = results["dropped"]
    assert dropped.status_code == 503
    assert dropped.json()["code"] == "unavailable"
    assert "retry-after" in dropped.headers
    assert deployment.count("transfers_transfer", "idempotency_key = %s", ("dropped-1",)) == 0
    assert deployment.count("transfers_idempotencyrecord", "key = %s", ("dropped-1",)) == 0

    with deployment.http("alice") as client:
        retry = client.post("/api/v1/transfers/", content=json.dumps(transfer_body("5.00")), headers=transfer_headers("dropped-1"))
        again = client.post("/api/v1/transfers/", content=json.dumps(transfer_body("5.00")), headers=transfer_headers("dropped-1"))
    assert retry.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert deployment.count("transfers_transfer", "idempotency_key = %s", ("dropped-1",)) == 1


async def test_randomized_opposite_transfers_keep_ledger_balanced(workers: list[Deployment]) -> None:
    rng = random.Random(20261204)
    deployment = workers[0]
    executed: list[str] = []

    async def client_run(worker: Deployment, name: str, count: int) -> None:
        own = [account for account, owner in OWNERS.items() if owner == name]
        builder = CommandBuilder()
        async with worker.connect(name) as connection:
            await open_session(connection)
            for _ in range(count):
                source = rng.choice(own)
                target = rng.choice([account for account in OWNERS if account != source])
                amount = f"{rng.randint(1, 30000) / 100:.2f}"
                await connection.send(builder.transfer(from_account=source, to_account=target, amount=amount))
                reply = await recv_json(connection, timeout=30)
                if reply["type"] == "transfer.executed":
                    executed.append(reply["transfer"]["id"])
                else:
                    assert reply["code"] == "transfer.insufficient_funds", reply

    await asyncio.gather(
        client_run(workers[0], "alice", 40),
        client_run(workers[1], "alice", 40),
        client_run(workers[0], "bob", 40),
        client_run(workers[1], "bob", 40),
    )

    assert executed
    balances = {
        account_id: (Decimal(str(balance)), Decimal(str(opening)))
        for account_id, balance, opening in query(
            deployment.database_url, "SELECT id, balance, opening_balance FROM transfers_account"
        )
    }
    entry_sums: dict[str, Decimal] = {}
    # SQLite's SUM() of decimals is a float, so entries are added up here, exactly.
    for account_id, amount in query(deployment.database_url, "SELECT account_id, amount FROM transfers_ledgerentry"):
        entry_sums[account_id] = entry_sums.get(account_id, Decimal(0)) + Decimal(str(amount))
    for account_id in OPENING:
        balance, opening = balances[account_id]
        assert balance >= 0, account_id
        assert balance == opening + entry_sums.get(account_id, Decimal(0)), account_id
    assert sum(entry_sums.values()) == 0
    assert sum(balances[account_id][0] for account_id in OPENING) == sum(Decimal(value) for value in OPENING.values())


def test_database_unreachable_gets_503_problem(workers: list[Deployment]) -> None:
    deployment = workers[0]
    postgres_only(deployment)
    name = deployment.database_url.rsplit("/", 1)[-1]
    admin_url = deployment.database_url.rsplit("/", 1)[0] + "/postgres"
    query(admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        query(admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        with deployment.http("alice") as client:
            command = client.post(
                "/api/v1/transfers/", content=json.dumps(transfer_body("1.00")), headers=transfer_headers("db-down-1")
            )
            account = client.get("/api/v1/accounts/X-A1/")
    finally:
        query(admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    for response in (command, account):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "unavailable"
        assert response.headers["retry-after"] == "1"
    with deployment.http("alice") as client:
        retry = client.post("/api/v1/transfers/", content=json.dumps(transfer_body("1.00")), headers=transfer_headers("db-down-1"))
    assert retry.status_code == 201
    assert deployment.count("transfers_transfer", "idempotency_key = %s", ("db-down-1",)) == 1
