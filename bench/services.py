"""The servers a benchmark run starts and stops: PKI, redis-server, databases and ``serve``.

Everything binds to loopback on free ports, lives under the run's directory
in bench/out/, and is stopped by ``BenchServices.close``. The helpers of the
end-to-end tests start the processes, so the benchmark drives the same
``serve`` command the tests do.
"""

from __future__ import annotations

import json
import resource
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from realtime.pki import Authority
from tests.support.databases import TestDatabases
from tests.support.servers import PROJECT_ROOT, RedisServer, ServeProcess, project_env

__all__ = ["ACCOUNT_PAIRS", "BENCH_CLIENT", "BenchServices", "raise_open_file_limit", "rss_kib"]

BENCH_CLIENT = "bench"
# Client i transfers from S-i to T-i, so concurrent transfers lock
# different rows; 64 pairs cover every concurrency the profiles use.
ACCOUNT_PAIRS = 64
_OPENING_BALANCE = "1000000000.00"


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit and return it.

    Child processes (serve, the idle-socket clients) inherit the limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class BenchServices:
    """A run's certificates, Redis, SQLite and PostgreSQL databases, and serve processes."""

    def __init__(self, run_dir: Path, *, postgres_url: str | None) -> None:
        self.run_dir = run_dir
        self.pki_dir = run_dir / "pki"
        self.postgres_url = postgres_url
        self.redis = RedisServer(run_dir / "redis")
        self._sqlite = TestDatabases(None, run_dir / "db")
        self._postgres = TestDatabases(postgres_url, run_dir / "db") if postgres_url else None
        self.database_urls: dict[str, str] = {}
        self._servers: list[ServeProcess] = []

    def start(self) -> BenchServices:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "db").mkdir(exist_ok=True)
        self._write_pki()
        self.redis.start()
        prefix = f"rt_bench_{secrets.token_hex(4)}"
        self._sqlite.prefix = prefix
        self.database_urls["sqlite"] = self._sqlite.create("sqlite")
        if self._postgres is not None:
            self._postgres.prefix = prefix
            self.database_urls["postgres"] = self._postgres.create("postgres")
        for url in self.database_urls.values():
            self._seed(url)
        return self

    @property
    def redis_pid(self) -> int:
        if self.redis.process is None:
            raise RuntimeError("redis-server is not running")
        return self.redis.process.pid

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()
        self.redis.stop()
        if self._postgres is not None:
            self._postgres.drop_all()
        # The private keys are of no use after the run; nothing keeps them.
        shutil.rmtree(self.pki_dir, ignore_errors=True)

    # --- certificates and clients ----------------------------------------

    def client_files(self) -> tuple[Path, Path, Path]:
        """Return the CA, the client certificate and its key, for client TLS contexts."""
        return self.pki_dir / "ca.pem", self.pki_dir / f"{BENCH_CLIENT}.pem", self.pki_dir / f"{BENCH_CLIENT}.key"

    def _write_pki(self) -> None:
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        authority = Authority("Benchmark CA")
        (self.pki_dir / "ca.pem").write_bytes(authority.certificate_pem)
        authority.issue_server().write(self.pki_dir / "server.pem", self.pki_dir / "server.key")
        authority.issue_client(BENCH_CLIENT).write(
            self.pki_dir / f"{BENCH_CLIENT}.pem", self.pki_dir / f"{BENCH_CLIENT}.key"
        )

    def _seed(self, database_url: str) -> None:
        accounts: list[list[Any]] = []
        for index in range(ACCOUNT_PAIRS):
            accounts.append([f"S-{index}", BENCH_CLIENT, "USD", _OPENING_BALANCE])
            accounts.append([f"T-{index}", BENCH_CLIENT, "USD", _OPENING_BALANCE])
        spec = {"clients": [[BENCH_CLIENT, str(self.pki_dir / f"{BENCH_CLIENT}.pem")]], "accounts": accounts}
        spec_path = self.run_dir / "seed.json"
        spec_path.write_text(json.dumps(spec))
        env = project_env(DATABASE_URL=database_url)
        result = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "tests" / "support" / "seed.py"), str(spec_path)],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"seeding {database_url} failed: {result.stderr[-2000:]}")

    # --- serve -------------------------------------------------------------

    def serve(self, database: str, *, name: str) -> ServeProcess:
        """Start ``manage.py serve`` with the bench settings, Redis and one of the run's databases."""
        if database not in self.database_urls:
            raise ValueError(f"no {database!r} database in this run; have {sorted(self.database_urls)}")
        env = project_env(
            DJANGO_SETTINGS_MODULE="bench.settings",
            DATABASE_URL=self.database_urls[database],
            REDIS_URL=self.redis.url,
        )
        server = ServeProcess(env=env, pki_dir=self.pki_dir, log_dir=self.run_dir, name=name)
        server.start(timeout=60)
        self._servers.append(server)
        return server

    def stop_server(self, server: ServeProcess) -> None:
        server.stop()
        if server in self._servers:
            self._servers.remove(server)


def rss_kib(pid: int) -> int:
    """Return the resident set size of a process in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")
