"""The production path end to end: nginx terminates mutual TLS, two daphne workers behind it.

One site per module: a redis-server of its own, two ``serve --unix-socket``
workers with ``realtime.settings_production`` (so the replay store and the
channel layer are that Redis), and nginx with the site rendered from
deploy/nginx's template, a CRL included. Certificates come from the
session's run-time CA.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re
import secrets
import socket
import ssl
import stat
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime.client import CommandBuilder, client_ssl_context, new_nonce, now_ms
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases, query
from tests.support.e2e import open_session, recv_json
from tests.support.nginx import NginxServer
from tests.support.servers import PROJECT_ROOT, RedisServer, ServeProcess, project_env, wait_for

pytestmark = pytest.mark.e2e

# Seconds between daphne's pings; nginx's proxy_read_timeout becomes 6 s.
PING_INTERVAL = 2

ACCOUNTS = [
    ("A-1", "alice", "USD", "1000.00"),
    ("B-1", "bob", "USD", "1000.00"),
    ("D-1", "dave", "USD", "100.00"),
    ("E-1", "erin", "USD", "100.00"),
]


@dataclass
class Site:
    """nginx, its two workers, their database and Redis, and the client certificates."""

    nginx: NginxServer
    workers: list[ServeProcess]
    worker_access_logs: list[Path]
    database_url: str
    env: dict[str, str]
    pki: Pki
    directory: Path

    def ssl_context(self, name: str | None) -> ssl.SSLContext:
        """Return a client context presenting certificate ``name`` (a file in the PKI or the site directory)."""
        if name is None:
            return client_ssl_context(self.pki.ca)
        base = self.directory if (self.directory / f"{name}.pem").exists() else self.pki.directory
        return client_ssl_context(self.pki.ca, base / f"{name}.pem", base / f"{name}.key")

    def connect(self, name: str | None, **kwargs: Any) -> Any:
        kwargs.setdefault("open_timeout", 10)
        return websockets.connect(self.nginx.ws_url, ssl=self.ssl_context(name), **kwargs)

    def http(self, name: str | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.nginx.base_url, verify=self.ssl_context(name), timeout=10)

    def worker_lines(self) -> list[list[str]]:
        """Return each worker's access log lines of requests and handshakes that reached it.

        Disconnect lines are left out: a socket of an earlier test may close
        at any moment and log one.
        """
        return [
            [line for line in path.read_text().splitlines() if "WSDISCONNECT" not in line] if path.exists() else []
            for path in self.worker_access_logs
        ]

    def balance(self, account_id: str) -> Decimal:
        return Decimal(str(query(self.database_url, "SELECT balance FROM transfers_account WHERE id = %s", (account_id,))[0][0]))

    def transfer_count(self) -> int:
        return int(query(self.database_url, "SELECT COUNT(*) FROM transfers_transfer")[0][0])


@pytest.fixture(scope="module")
def site(pki: Pki, test_databases: TestDatabases, run_dir: Path) -> Iterator[Site]:
    directory = run_dir / f"nginx-{secrets.token_hex(3)}"
    directory.mkdir()
    redis_server = RedisServer(directory / "redis").start()

    # "frank" is signed by the trusted CA and registered, but revoked in the CRL.
    revoked = pki.authority.issue_client("frank")
    revoked.write(directory / "frank.pem", directory / "frank.key")
    crl_path = directory / "crl.pem"
    crl_path.write_bytes(pki.authority.issue_crl([revoked.certificate]).public_bytes(serialization.Encoding.PEM))

    database_url = test_databases.create("nginx")
    seed(
        database_url,
        clients=[(name, pki.cert(name)) for name in ("alice", "bob", "dave", "erin")] + [("frank", directory / "frank.pem")],
        accounts=ACCOUNTS,
    )
    env = project_env(
        DJANGO_SETTINGS_MODULE="realtime.settings_production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="localhost",
        DATABASE_URL=database_url,
        REDIS_URL=redis_server.url,
        MTLS_PROXY_HEADERS=None,
    )
    sockets = [directory / f"worker-{index}.sock" for index in (1, 2)]
    access_logs = [directory / f"worker-{index}.access.log" for index in (1, 2)]
    workers = [
        ServeProcess(
            env=env,
            pki_dir=pki.directory,
            log_dir=directory,
            tls=False,
            unix_socket=path,
            name=f"worker-{index}",
            extra_args=("--access-log", str(log), "--ping-interval", str(PING_INTERVAL)),
        )
        for index, (path, log) in enumerate(zip(sockets, access_logs, strict=False), start=1)
    ]
    nginx = NginxServer(directory / "nginx", pki_dir=pki.directory, worker_sockets=sockets, crl=crl_path, ping_interval=PING_INTERVAL)
    try:
        for worker in workers:
            worker.start()
        nginx.start()
        yield Site(nginx, workers, access_logs, database_url, env, pki, directory)
    finally:
        nginx.stop()
        for worker in workers:
            worker.stop()
        redis_server.stop()


def transfer_headers(key: str | None = None) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Request-Timestamp": str(now_ms()),
        "X-Request-Nonce": new_nonce(),
        "Idempotency-Key": key or f"nginx-{new_nonce()}",
    }


def transfer_body(from_account: str = "A-1", to_account: str = "B-1", amount: str = "1.00") -> str:
    return json.dumps({"from_account": from_account, "to_account": to_account, "amount": amount, "currency": "USD"})


def escaped_pem(path: Path) -> str:
    return quote(path.read_text(), safe="")


async def closed_at(connection: Any) -> tuple[int | None, float]:
    """Wait until the server closes the socket; return its close code and the wall-clock time."""
    with pytest.raises(ConnectionClosed) as caught:
        while True:
            await asyncio.wait_for(connection.recv(), 10)
    received = caught.value.rcvd
    return (received.code if received is not None else None), time.time()


def _connect_counts(site: Site) -> list[int]:
    return [sum(" \"WSCONNECT " in line for line in lines) for lines in site.worker_lines()]


# --- the happy path ---------------------------------------------------------------------


def test_worker_sockets_mode_660(site: Site) -> None:
    for worker in site.workers:
        assert worker.unix_socket is not None
        mode = worker.unix_socket.stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660


async def test_wss_transfer_through_nginx(site: Site) -> None:
    before = site.balance("A-1")
    async with site.connect("alice") as connection:
        welcome = await open_session(connection)
        assert welcome["client"] == "alice"
        await connection.send(CommandBuilder().transfer(from_account="A-1", to_account="B-1", amount="2.50"))
        executed = await recv_json(connection)
    assert executed["type"] == "transfer.executed"
    assert executed["transfer"]["amount"] == "2.50"
    assert site.balance("A-1") == before - Decimal("2.50")


async def test_https_transfer_through_nginx(site: Site) -> None:
    before = site.balance("A-1")
    async with site.http("alice") as client:
        response = await client.post("/api/v1/transfers/", content=transfer_body(amount="3.25"), headers=transfer_headers())
    assert response.status_code == 201, response.text
    assert response.headers["location"].startswith("/api/v1/transfers/")
    assert response.json()["amount"] == "3.25"
    assert site.balance("A-1") == before - Decimal("3.25")


async def test_idle_websocket_kept_open_by_pings(site: Site) -> None:
    # nginx closes a connection after 3 * PING_INTERVAL seconds without data
    # from daphne; only daphne's pings cross that silence.
    async with site.connect("bob") as connection:
        await open_session(connection)
        await asyncio.sleep(3 * PING_INTERVAL + 2)
        await connection.send(CommandBuilder().transfer(from_account="B-1", to_account="A-1", amount="0.10"))
        executed = await recv_json(connection)
    assert executed["type"] == "transfer.executed"


# --- what nginx refuses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (None, "identity.certificate_required"),
        ("foreign", "identity.certificate_invalid"),
        ("expired", "identity.certificate_invalid"),
        ("frank", "identity.certificate_invalid"),
    ],
    ids=["no certificate", "other CA", "expired", "revoked in CRL"],
)
async def test_nginx_refuses_untrusted_certificate(site: Site, name: str | None, code: str) -> None:
    worker_lines_before = site.worker_lines()
    transfers_before = site.transfer_count()

    async with site.http(name) as client:
        response = await client.post("/api/v1/transfers/", content=transfer_body(), headers=transfer_headers())
    with pytest.raises(InvalidStatus) as refused:
        async with site.connect(name):
            pass

    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert refused.value.response.status_code == 403
    # Nothing reached a worker: their access logs and the database are unchanged.
    assert site.worker_lines() == worker_lines_before
    assert site.transfer_count() == transfers_before
    logged = site.nginx.access_lines()[-2:]
    assert all("upstream=- " in line for line in logged), logged


async def test_unregistered_certificate_refused_by_app(site: Site) -> None:
    # carol's certificate is signed by the trusted CA but not registered, so
    # nginx passes it on and the app refuses it.
    async with site.http("carol") as client:
        response = await client.get("/api/v1/accounts/A-1/")
    assert response.status_code == 403
    assert response.json()["code"] == "identity.client_unknown"


async def test_oversized_body_refused_by_nginx(site: Site) -> None:
    worker_lines_before = site.worker_lines()
    body = transfer_body()[:-1] + " " * (64 * 1024) + "}"
    async with site.http("alice") as client:
        response = await client.post("/api/v1/transfers/", content=body, headers=transfer_headers())
    assert response.status_code == 413
    assert response.json()["code"] == "invalid_message"
    assert site.worker_lines() == worker_lines_before


# --- forged identity headers --------------------------------------------------------------


def forged_headers(site: Site, victim: str = "bob") -> list[tuple[str, str]]:
    """Every identity header a client could send to pass as ``victim``."""
    victim_pem = site.pki.cert(victim)
    der = x509.load_pem_x509_certificate(victim_pem.read_bytes()).public_bytes(serialization.Encoding.DER)
    return [
        ("X-SSL-Client-Verify", "SUCCESS"),
        ("X-SSL-Client-Cert", escaped_pem(victim_pem)),
        ("x-ssl-client-cert", escaped_pem(victim_pem)),
        ("Client-Cert", f":{base64.b64encode(der).decode()}:"),
        ("X-Forwarded-Client-Cert", f'Cert="{escaped_pem(victim_pem)}"'),
        ("X-Forwarded-For", "10.1.2.3"),
        ("Daphne-Root-Path", "/api"),
    ]


async def test_forged_headers_overwritten_on_websocket(site: Site) -> None:
    async with site.connect("alice", additional_headers=forged_headers(site)) as connection:
        welcome = await open_session(connection)
    assert welcome["client"] == "alice"


async def test_forged_headers_overwritten_on_http(site: Site) -> None:
    async with site.http("alice") as client:
        own = await client.get("/api/v1/accounts/A-1/", headers=forged_headers(site))
        victims = await client.get("/api/v1/accounts/B-1/", headers=forged_headers(site))
    # 200 also shows that Daphne-Root-Path did not arrive: with a root path
    # of /api, Django would route /v1/accounts/A-1/ and return 404.
    assert own.status_code == 200
    assert own.json()["id"] == "A-1"
    assert victims.status_code == 404


async def test_forged_verify_without_certificate(site: Site) -> None:
    async with site.http(None) as client:
        response = await client.get("/api/v1/accounts/B-1/", headers=forged_headers(site))
    assert response.status_code == 403
    assert response.json()["code"] == "identity.certificate_required"


# --- two workers, one Redis -------------------------------------------------------------


async def test_replayed_frame_rejected_on_other_worker(site: Site) -> None:
    counts_before = _connect_counts(site)
    frame = CommandBuilder().transfer(from_account="A-1", to_account="B-1", amount="1.11")
    # nginx (one worker process, round-robin) sends consecutive
    # connections to alternate daphne workers.
    async with site.connect("alice") as first, site.connect("alice") as second:
        await open_session(first)
        await open_session(second)
        counts_after = _connect_counts(site)
        await first.send(frame)
        executed = await recv_json(first)
        await second.send(frame)
        replayed = await recv_json(second)

    assert [after - before for before, after in zip(counts_before, counts_after, strict=False)] == [1, 1]
    assert executed["type"] == "transfer.executed"
    assert replayed["type"] == "rejected"
    assert replayed["code"] == "replay.nonce_reused"


async def test_replayed_request_rejected_on_other_worker(site: Site) -> None:
    headers = transfer_headers()
    body = transfer_body(amount="1.12")
    transfers_before = site.transfer_count()
    async with site.http("alice") as client:
        first = await client.post("/api/v1/transfers/", content=body, headers=headers)
        second = await client.post("/api/v1/transfers/", content=body, headers=headers)

    assert first.status_code == 201
    assert second.status_code == 409
    assert second.json()["code"] == "replay.nonce_reused"
    assert site.transfer_count() == transfers_before + 1
    upstreams = [re.search(r"upstream=(\S+)", line).group(1) for line in site.nginx.access_lines()[-2:]]  # type: ignore[union-attr]
    assert upstreams[0] != upstreams[1], upstreams


# --- revocation ---------------------------------------------------------------------------------


async def _open_on_both_workers(site: Site, name: str) -> list[Any]:
    counts_before = _connect_counts(site)
    connections = [await site.connect(name), await site.connect(name)]
    for connection in connections:
        await open_session(connection)
    counts_after = _connect_counts(site)
    assert [after - before for before, after in zip(counts_before, counts_after, strict=False)] == [1, 1]
    return connections


async def test_deactivate_client_closes_sockets_within_one_second(site: Site) -> None:
    connections = await _open_on_both_workers(site, "erin")
    code = (
        "import time; from realtime.registry import deactivate_client; "
        "print(f'started={time.time()}', flush=True); print(f'announced={deactivate_client(\"erin\")[1]}')"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(PROJECT_ROOT / "manage.py"), "shell", "-c", code,
        cwd=PROJECT_ROOT, env=site.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    closes = await asyncio.gather(*(closed_at(connection) for connection in connections))
    stdout, stderr = await process.communicate()

    assert process.returncode == 0, stderr.decode()[-2000:]
    output = stdout.decode()
    started = float(re.search(r"^started=(\S+)$", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert "announced=True" in output.splitlines(), output
    for close_code, when in closes:
        assert close_code == 4001
        assert when - started < 1.0

    with pytest.raises(InvalidStatus) as refused:
        async with site.connect("erin"):
            pass
    assert refused.value.response.status_code == 403
    async with site.http("erin") as client:
        response = await client.get("/api/v1/accounts/E-1/")
    assert response.json()["code"] == "identity.client_inactive"


async def test_deactivate_client_command(site: Site) -> None:
    connections = await _open_on_both_workers(site, "dave")
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(PROJECT_ROOT / "manage.py"), "deactivate_client", "dave",
        cwd=PROJECT_ROOT, env=site.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    closes = await asyncio.gather(*(closed_at(connection) for connection in connections))
    stdout, stderr = await process.communicate()
    finished = time.time()

    assert process.returncode == 0, stderr.decode()[-2000:]
    assert "deactivated client 'dave'" in stdout.decode()
    assert "could not be reached" not in stderr.decode()
    for close_code, when in closes:
        assert close_code == 4001
        assert when < finished + 1.0
    assert site.balance("D-1") == Decimal("100.00")


async def test_expiring_certificate_closes_socket(site: Site) -> None:
    not_after = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=6)
    issued = site.pki.authority.issue_client("grace", not_after=not_after)
    issued.write(site.directory / "grace.pem", site.directory / "grace.key")
    registered = await asyncio.create_subprocess_exec(
        sys.executable, str(PROJECT_ROOT / "manage.py"), "register_client", "grace", str(site.directory / "grace.pem"),
        cwd=PROJECT_ROOT, env=site.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await registered.communicate()
    assert registered.returncode == 0, stderr.decode()[-2000:]

    async with site.connect("grace") as connection:
        await open_session(connection)
        close_code, when = await closed_at(connection)

    assert close_code == 4002
    assert not_after.timestamp() - 0.5 <= when <= not_after.timestamp() + 2.0
    # Past notAfter, nginx rejects the certificate before the request reaches a worker.
    async with site.http("grace") as client:
        response = await client.get("/api/v1/accounts/A-1/")
    assert response.status_code == 403
    assert response.json()["code"] == "identity.certificate_invalid"


# --- what nginx forwards -----------------------------------------------------------------------


class _HeaderCapture:
    """An HTTP server on a unix socket that stores the request heads nginx forwards."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[str] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head.decode("latin-1"))
                connection.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def capture(pki: Pki, run_dir: Path) -> Iterator[tuple[NginxServer, _HeaderCapture]]:
    directory = run_dir / f"capture-{secrets.token_hex(3)}"
    directory.mkdir()
    upstream = _HeaderCapture(directory / "upstream.sock")
    nginx = NginxServer(directory / "nginx", pki_dir=pki.directory, worker_sockets=[upstream.path])
    try:
        nginx.start()
        yield nginx, upstream
    finally:
        nginx.stop()
        upstream.close()


def _header_values(head: str, name: str) -> list[str]:
    values = []
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            values.append(value.strip())
    return values


async def test_nginx_forwards_only_own_identity_headers(capture: tuple[NginxServer, _HeaderCapture], pki: Pki) -> None:
    nginx, upstream = capture
    forged = [
        ("X-SSL-Client-Verify", "SUCCESS"),
        ("X-SSL-Client-Cert", escaped_pem(pki.cert("bob"))),
        ("Client-Cert", ":AAAA:"),
        ("Client-Cert-Chain", ":AAAA:"),
        ("X-Forwarded-Client-Cert", "Hash=00"),
        ("X-Forwarded-For", "10.1.2.3"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
        ("Forwarded", "for=10.1.2.3"),
        ("X-Real-IP", "10.1.2.3"),
        ("Daphne-Root-Path", "/api"),
    ]
    context = client_ssl_context(pki.ca, pki.cert("alice"), pki.key("alice"))
    async with httpx.AsyncClient(verify=context, timeout=10) as client:
        response = await client.get(f"{nginx.base_url}/api/v1/time/", headers=forged)
    assert response.status_code == 204

    head = upstream.requests[-1]
    assert _header_values(head, "X-SSL-Client-Verify") == ["SUCCESS"]
    assert _header_values(head, "X-SSL-Client-Cert") == [escaped_pem(pki.cert("alice"))]
    assert _header_values(head, "X-Forwarded-For") == ["127.0.0.1"]
    assert _header_values(head, "X-Forwarded-Proto") == ["https"]
    for dropped in ("Client-Cert", "Client-Cert-Chain", "X-Forwarded-Client-Cert", "X-Forwarded-Host", "Forwarded", "X-Real-IP", "Daphne-Root-Path"):
        assert _header_values(head, dropped) == [], dropped


async def test_nginx_forwards_websocket_upgrade(capture: tuple[NginxServer, _HeaderCapture], pki: Pki) -> None:
    nginx, upstream = capture
    context = client_ssl_context(pki.ca, pki.cert("alice"), pki.key("alice"))
    with pytest.raises(InvalidStatus):
        async with websockets.connect(nginx.ws_url, ssl=context, open_timeout=10):
            pass
    head = upstream.requests[-1]
    assert head.startswith("GET /ws/v1/transfers/ HTTP/1.1\r\n")
    assert _header_values(head, "Upgrade") == ["websocket"]
    assert _header_values(head, "Connection") == ["upgrade"]
    wait_for(lambda: bool(nginx.access_lines()), timeout=5, message="nginx access log")
