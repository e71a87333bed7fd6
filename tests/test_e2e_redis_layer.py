"""WebSockets on a serve process that uses Redis for replay checks and the channel layer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from realtime.client import CommandBuilder
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases
from tests.support.e2e import Deployment, open_session, recv_json
from tests.support.servers import RedisServer, ServeProcess, project_env

pytestmark = pytest.mark.e2e

# Longer than RedisChannelLayer's 5-second BZPOPMIN and redis-py's default
# 5-second socket timeout, which used to close idle sockets with 1011.
IDLE_SECONDS = 7


@pytest.fixture(scope="module")
def redis_deployment(pki: Pki, test_databases: TestDatabases, run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    redis_server = RedisServer(tmp_path_factory.mktemp("layer-redis")).start()
    database_url = test_databases.create("layer")
    seed(database_url, clients=[("alice", pki.cert("alice"))], accounts=[("A-1", "alice", "USD", "100.00"), ("A-2", "alice", "USD", "0.00")])
    env = project_env(DATABASE_URL=database_url, REDIS_URL=redis_server.url)
    server = ServeProcess(env=env, pki_dir=pki.directory, log_dir=run_dir, name="serve-redis-layer").start()
    yield Deployment(server, database_url, pki.directory)
    server.stop()
    redis_server.stop()


async def test_idle_socket_stays_open(redis_deployment: Deployment) -> None:
    async with redis_deployment.connect("alice", ping_interval=None) as connection:
        await open_session(connection)
        await asyncio.sleep(IDLE_SECONDS)

        await connection.send(CommandBuilder().transfer(from_account="A-1", to_account="A-2", amount="1.00"))
        reply = await recv_json(connection)

    assert reply["type"] == "transfer.executed"
    assert "Timeout reading" not in redis_deployment.server.log_text()


async def test_transfers_checked_by_redis(redis_deployment: Deployment) -> None:
    builder = CommandBuilder()
    frame = builder.transfer(from_account="A-1", to_account="A-2", amount="2.00")
    async with redis_deployment.connect("alice") as connection:
        await open_session(connection)
        await connection.send(frame)
        executed = await recv_json(connection)
        await connection.send(frame)
        replayed = await recv_json(connection)

    assert executed["type"] == "transfer.executed"
    assert executed["transfer"]["amount"] == "2.00"
    assert replayed["code"] == "replay.nonce_reused"
