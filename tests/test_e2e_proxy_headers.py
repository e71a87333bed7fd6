"""Forwarded identity headers at daphne itself, without nginx in front.

One ``serve`` process listens on mutual TLS and on a unix socket, with
``MTLS_PROXY_HEADERS=nginx``. The tests send the identity headers straight
to each listener: on the TLS listener they must change nothing, and on the
unix socket the test plays the proxy and sends well-formed and broken
values. A plain-TCP daphne shows ``MTLS_TRUSTED_PROXIES`` at work.
"""

from __future__ import annotations

import base64
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from websockets.exceptions import InvalidStatus

from realtime.client import client_ssl_context
from tests.conftest import Pki, seed
from tests.support.databases import TestDatabases
from tests.support.e2e import open_session
from tests.support.servers import PROJECT_ROOT, ServeProcess, _stop, free_port, project_env, wait_for

pytestmark = pytest.mark.e2e

# Small enough that a test can exceed it without reaching Twisted's own
# 16 KiB limit on the request head.
MAX_CERT_HEADER_BYTES = 4096


@dataclass
class DirectServer:
    server: ServeProcess
    socket_path: Path
    pki: Pki

    def ssl_context(self, name: str) -> object:
        return client_ssl_context(self.pki.ca, self.pki.cert(name), self.pki.key(name))


@pytest.fixture(scope="module")
def direct(pki: Pki, test_databases: TestDatabases, run_dir: Path) -> Iterator[DirectServer]:
    directory = run_dir / f"direct-{secrets.token_hex(3)}"
    directory.mkdir()
    database_url = test_databases.create("direct")
    seed(
        database_url,
        clients=[("alice", pki.cert("alice")), ("bob", pki.cert("bob"))],
        accounts=[("A-1", "alice", "USD", "100.00"), ("B-1", "bob", "USD", "100.00")],
    )
    socket_path = directory / "proxy.sock"
    env = project_env(
        DATABASE_URL=database_url,
        MTLS_PROXY_HEADERS="nginx",
        MTLS_MAX_CERT_HEADER_BYTES=str(MAX_CERT_HEADER_BYTES),
    )
    server = ServeProcess(env=env, pki_dir=pki.directory, log_dir=directory, tls=True, unix_socket=socket_path).start()
    try:
        yield DirectServer(server, socket_path, pki)
    finally:
        server.stop()


def escaped(path: Path) -> str:
    return quote(path.read_text(), safe="")


def nginx_headers(path: Path, verify: str = "SUCCESS") -> list[tuple[str, str]]:
    return [("X-SSL-Client-Verify", verify), ("X-SSL-Client-Cert", escaped(path))]


def raw_request(socket_path: Path, target: str, header_lines: list[bytes]) -> tuple[int, dict[str, str], bytes]:
    """Send one HTTP/1.1 GET over the unix socket, header lines given byte for byte.

    Returns status 0 when the server closes the connection without a response.
    """
    head = b"GET " + target.encode() + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    head += b"".join(line + b"\r\n" for line in header_lines) + b"\r\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(str(socket_path))
        connection.sendall(head)
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
    if not response:
        return 0, {}, b""
    status_line, _, rest = response.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def header_line(name: str, value: str | bytes) -> bytes:
    return name.encode() + b": " + (value.encode() if isinstance(value, str) else value)


# --- the TLS listener ignores forwarded headers -------------------------------------------------


def forged(pki: Pki) -> list[tuple[str, str]]:
    return [*nginx_headers(pki.cert("bob")), ("Daphne-Root-Path", "/api")]


async def test_tls_listener_ignores_forged_headers_websocket(direct: DirectServer) -> None:
    async with websockets.connect(
        direct.server.ws_url, ssl=direct.ssl_context("alice"), additional_headers=forged(direct.pki), open_timeout=10
    ) as connection:
        welcome = await open_session(connection)
    assert welcome["client"] == "alice"


@pytest.mark.parametrize("verify", ["SUCCESS", "NONE", "FAILED:certificate revoked"])
async def test_tls_listener_ignores_forged_headers_http(direct: DirectServer, verify: str) -> None:
    headers = [*nginx_headers(direct.pki.cert("bob"), verify), ("Daphne-Root-Path", "/api")]
    async with httpx.AsyncClient(base_url=direct.server.base_url, verify=direct.ssl_context("alice"), timeout=10) as client:
        own = await client.get("/api/v1/accounts/A-1/", headers=headers)
        victims = await client.get("/api/v1/accounts/B-1/", headers=headers)
    # With a root path of /api, Django would route /v1/accounts/A-1/ and return 404.
    assert own.status_code == 200
    assert own.json()["id"] == "A-1"
    assert victims.status_code == 404


# --- the unix socket reads them -------------------------------------------------------------


def test_unix_socket_reads_forwarded_certificate(direct: DirectServer) -> None:
    lines = [header_line(name, value) for name, value in nginx_headers(direct.pki.cert("alice"))]
    status, headers, body = raw_request(direct.socket_path, "/api/v1/accounts/A-1/", lines)
    assert status == 200, body
    assert b'"id":"A-1"' in body


async def test_unix_socket_websocket_identity(direct: DirectServer) -> None:
    async with websockets.unix_connect(
        str(direct.socket_path),
        "ws://localhost/ws/v1/transfers/",
        additional_headers=nginx_headers(direct.pki.cert("bob")),
        open_timeout=10,
    ) as connection:
        welcome = await open_session(connection)
    assert welcome["client"] == "bob"


def _cert(pki: Pki, name: str) -> str:
    return escaped(pki.cert(name))


BAD_HEADERS = {
    "no headers": (lambda pki: [], 403, "identity.certificate_unverified"),
    "verify NONE": (lambda pki: [header_line("X-SSL-Client-Verify", "NONE"), header_line("X-SSL-Client-Cert", _cert(pki, "alice"))], 403, "identity.certificate_unverified"),
    "verify FAILED": (lambda pki: [header_line("X-SSL-Client-Verify", "FAILED:certificate has expired"), header_line("X-SSL-Client-Cert", _cert(pki, "alice"))], 403, "identity.certificate_unverified"),
    "verify lower case": (lambda pki: [header_line("X-SSL-Client-Verify", "success"), header_line("X-SSL-Client-Cert", _cert(pki, "alice"))], 403, "identity.certificate_unverified"),
    "verify repeated": (lambda pki: [header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Cert", _cert(pki, "alice"))], 403, "identity.proxy_header_invalid"),
    "certificate repeated": (lambda pki: [header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Cert", _cert(pki, "alice")), header_line("X-SSL-Client-Cert", _cert(pki, "bob"))], 403, "identity.proxy_header_invalid"),
    "certificate missing": (lambda pki: [header_line("X-SSL-Client-Verify", "SUCCESS")], 403, "identity.certificate_required"),
    "certificate corrupt": (lambda pki: [header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Cert", "hello")], 400, "identity.proxy_header_invalid"),
    "certificate folded": (
        lambda pki: [header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Cert", _cert(pki, "alice")[:50] + "\r\n " + _cert(pki, "alice")[50:])],
        400,
        "identity.proxy_header_invalid",
    ),
    "certificate oversized": (lambda pki: [header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Cert", "A" * (MAX_CERT_HEADER_BYTES + 1))], 400, "identity.proxy_header_invalid"),
    "certificate not ASCII": (lambda pki: [header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Cert", b"\xff\xfe" + _cert(pki, "alice").encode())], 400, "identity.proxy_header_invalid"),
    "certificate expired": (lambda pki: [header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Cert", _cert(pki, "expired"))], 403, "identity.certificate_invalid"),
    "certificate not registered": (lambda pki: [header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Cert", _cert(pki, "carol"))], 403, "identity.client_unknown"),
    "Client-Cert instead": (lambda pki: [header_line("Client-Cert", ":" + _der_base64(pki, "alice") + ":")], 403, "identity.certificate_unverified"),
}


def _der_base64(pki: Pki, name: str) -> str:
    certificate = x509.load_pem_x509_certificate(pki.cert(name).read_bytes())
    return base64.b64encode(certificate.public_bytes(Encoding.DER)).decode()


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_unix_socket_bad_headers(direct: DirectServer, case: str) -> None:
    build, expected_status, expected_code = BAD_HEADERS[case]
    status, headers, body = raw_request(direct.socket_path, "/api/v1/accounts/A-1/", build(direct.pki))
    assert status == expected_status, body
    assert headers["content-type"] == "application/problem+json"
    assert f'"code":"{expected_code}"'.encode() in body


def test_unix_socket_head_over_twisted_limit(direct: DirectServer) -> None:
    # Twisted drops a connection whose header line exceeds 16 KiB before
    # daphne or the app see the request, and the server keeps serving.
    lines = [header_line("X-SSL-Client-Verify", "SUCCESS"), header_line("X-SSL-Client-Cert", "A" * 20_000)]
    status, _, _ = raw_request(direct.socket_path, "/api/v1/accounts/A-1/", lines)
    assert status == 0
    good = [header_line(name, value) for name, value in nginx_headers(direct.pki.cert("alice"))]
    assert raw_request(direct.socket_path, "/api/v1/accounts/A-1/", good)[0] == 200


@pytest.mark.parametrize("case", ["verify NONE", "verify repeated", "certificate corrupt", "certificate oversized", "certificate not registered"])
async def test_unix_socket_bad_headers_websocket(direct: DirectServer, case: str) -> None:
    build, _, _ = BAD_HEADERS[case]
    headers = []
    for line in build(direct.pki):
        name, _, value = line.partition(b": ")
        headers.append((name.decode(), value.decode("latin-1")))
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.unix_connect(
            str(direct.socket_path), "ws://localhost/ws/v1/transfers/", additional_headers=headers, open_timeout=10
        ):
            pass
    assert refused.value.response.status_code == 403


# --- MTLS_TRUSTED_PROXIES on a plain TCP listener ----------------------------------------------


@pytest.fixture(scope="module")
def plain_daphne(direct: DirectServer, run_dir: Path) -> Iterator[dict[str, int]]:
    """Two plain-HTTP daphne processes on loopback: one trusts 127.0.0.1, one trusts only 127.0.0.2."""
    ports: dict[str, int] = {}
    processes = []
    try:
        for label, trusted in (("trusted", "127.0.0.1"), ("untrusted", "127.0.0.2")):
            port = free_port()
            env = dict(direct.server.env, MTLS_TRUSTED_PROXIES=trusted)
            log = open(run_dir / f"daphne-{label}-{port}.log", "w")
            processes.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "realtime.asgi:application"],
                        cwd=PROJECT_ROOT,
                        env=env,
                        stdout=log,
                        stderr=log,
                    ),
                    log,
                )
            )
            ports[label] = port
        for port in ports.values():
            wait_for(lambda port=port: _accepts(port), timeout=20, message=f"daphne on port {port}")
        yield ports
    finally:
        for process, log in processes:
            _stop(process)
            log.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(("label", "status"), [("trusted", 200), ("untrusted", 403)])
async def test_trusted_proxy_address(direct: DirectServer, plain_daphne: dict[str, int], label: str, status: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{plain_daphne[label]}", timeout=10) as client:
        response = await client.get("/api/v1/accounts/A-1/", headers=nginx_headers(direct.pki.cert("alice")))
    assert response.status_code == status
    if status == 403:
        assert response.json()["code"] == "identity.certificate_required"
