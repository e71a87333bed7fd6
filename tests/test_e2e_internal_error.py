"""An unexpected server error is logged and closes the connection; HTTP responds with a 500 problem."""

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
from tests.support.servers import ServeProcess, project_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deployment(pki: Pki, test_databases: TestDatabases, run_dir: Path) -> Iterator[Deployment]:
    database_url = test_databases.create("fault")
    seed(database_url, clients=[("alice", pki.cert("alice"))], accounts=[("F-1", "alice", "USD", "10.00"), ("F-2", "alice", "USD", "0.00")])
    env = project_env(DATABASE_URL=database_url, REPLAY_STORE="tests.support.faulty_store.ExplodingReplayStore")
    server = ServeProcess(env=env, pki_dir=pki.directory, log_dir=run_dir, name="fault").start()
    yield Deployment(server, database_url, pki.directory)
    server.stop()


async def test_websocket_closes_with_4500_and_logs(deployment: Deployment) -> None:
    async with deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(CommandBuilder().transfer(from_account="F-1", to_account="F-2", amount="1.00", nonce="explode-0000000000000"))
        with pytest.raises(ConnectionClosed) as caught:
            await recv_json(connection)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4500
    log = deployment.server.log_text()
    assert "unexpected error; closing connection (client=alice" in log
    assert "simulated programming error" in log
    assert deployment.count("transfers_transfer") == 0


def test_http_answers_500_problem(deployment: Deployment) -> None:
    body = json.dumps({"from_account": "F-1", "to_account": "F-2", "amount": "1.00", "currency": "USD"})
    with deployment.http("alice") as client:
        response = client.post("/api/v1/transfers/", content=body, headers=transfer_headers("fault-1", nonce="explode-1111111111111"))
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "internal_error"
        assert "simulated" not in response.text
        missing = client.get("/no/such/path")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert deployment.count("transfers_transfer") == 0
