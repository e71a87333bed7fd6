"""Shared fixtures: real Redis, a run-time PKI and per-run databases."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

# Database threads of the test process would keep their connections, and an
# open connection stops pytest-django from dropping its PostgreSQL test
# database. Servers the tests start keep the production default.
settings.DATABASES["default"]["CONN_MAX_AGE"] = 0

from realtime.pki import Authority
from tests.support.databases import TestDatabases
from tests.support.servers import PROJECT_ROOT, RedisClusterServers, RedisServer


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def redis_server(run_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(run_dir / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis-server, emptied before the test."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(run_dir: Path) -> Iterator[RedisClusterServers]:
    """A 3-node Redis Cluster, started once per test process by the first test that uses it."""
    cluster = RedisClusterServers(run_dir / "cluster").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """Seed URL of the session's Redis Cluster, every node emptied before the test."""
    redis_cluster.flushall()
    return redis_cluster.url


@dataclass(frozen=True)
class Pki:
    """Certificates written for the run: a CA, a server and named clients."""

    directory: Path
    authority: Authority

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


@pytest.fixture(scope="session")
def pki(run_dir: Path) -> Pki:
    directory = run_dir / "pki"
    directory.mkdir()
    authority = Authority("Test CA")
    (directory / "ca.pem").write_bytes(authority.certificate_pem)
    authority.issue_server().write(directory / "server.pem", directory / "server.key")
    for name in ("alice", "bob", "carol", "mallory", "dave", "erin"):
        authority.issue_client(name).write(directory / f"{name}.pem", directory / f"{name}.key")
    now = dt.datetime.now(dt.timezone.utc)
    authority.issue_client("expired", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)).write(
        directory / "expired.pem", directory / "expired.key"
    )
    # A client certificate from a CA the server does not trust.
    other = Authority("Other CA")
    (directory / "other-ca.pem").write_bytes(other.certificate_pem)
    other.issue_client("alice").write(directory / "foreign.pem", directory / "foreign.key")
    return Pki(directory, authority)


@pytest.fixture(scope="session")
def test_databases(run_dir: Path) -> Iterator[TestDatabases]:
    databases = TestDatabases(os.environ.get("DATABASE_URL"), run_dir / "db")
    (run_dir / "db").mkdir(exist_ok=True)
    yield databases
    databases.drop_all()


def seed(database_url: str, *, clients: list[tuple[str, Path]], accounts: list[tuple[str, str, str, str]]) -> None:
    """Register clients and open accounts in a test database, in a subprocess."""
    spec = {"clients": [[name, str(path)] for name, path in clients], "accounts": [list(row) for row in accounts]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    env = dict(os.environ, DATABASE_URL=database_url)
    env.pop("REDIS_URL", None)
    try:
        result = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "tests" / "support" / "seed.py"), handle.name],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(handle.name)
    if result.returncode != 0:
        raise RuntimeError(f"seeding {database_url} failed: {result.stderr[-2000:]}")
