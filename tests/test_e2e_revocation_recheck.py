"""Open sockets find out about revocations even when no revocation message reaches them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime.certificates import der_from_pem, sha256_fingerprint
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases
from tests.support.e2e import Deployment, open_session
from tests.support.servers import ServeProcess, manage, project_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deployment(pki: Pki, test_databases: TestDatabases, run_dir: Path) -> Iterator[Deployment]:
    database_url = test_databases.create("recheck")
    seed(
        database_url,
        clients=[("alice", pki.cert("alice")), ("alice", pki.cert("erin")), ("bob", pki.cert("bob"))],
        accounts=[],
    )
    # The in-memory channel layer cannot carry the management command's
    # revocation to this process, so only the periodic check can act.
    env = project_env(DATABASE_URL=database_url, REVOCATION_RECHECK_S="1")
    server = ServeProcess(env=env, pki_dir=pki.directory, log_dir=run_dir, name="recheck").start()
    yield Deployment(server, database_url, pki.directory)
    server.stop()


async def closed_code(connection, timeout: float) -> int | None:
    try:
        await asyncio.wait_for(connection.recv(), timeout)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
    return None


async def test_revoked_certificate_closes_only_its_sockets(deployment: Deployment, pki: Pki) -> None:
    fingerprint = sha256_fingerprint(der_from_pem(pki.cert("alice").read_bytes()))
    async with deployment.connect("alice") as revoked, deployment.connect("erin") as kept:
        await open_session(revoked)
        await open_session(kept)
        started = time.monotonic()
        manage("revoke_certificate", fingerprint, env=project_env(DATABASE_URL=deployment.database_url))
        assert await closed_code(revoked, timeout=5) == 4001
        assert time.monotonic() - started < 5
        await kept.ping()
    with pytest.raises(InvalidStatus) as refused:
        async with deployment.connect("alice"):
            pass
    assert refused.value.response.status_code == 403


async def test_deactivated_client_closed_without_a_command(deployment: Deployment) -> None:
    async with deployment.connect("bob") as connection:
        await open_session(connection)
        manage("deactivate_client", "bob", env=project_env(DATABASE_URL=deployment.database_url))
        assert await closed_code(connection, timeout=5) == 4001
