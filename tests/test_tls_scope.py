"""What the project's daphne server puts into the ASGI scope, seen by a bare ASGI app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.conftest import Pki
from tests.support.e2e import Deployment
from tests.support.servers import ServeProcess, project_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def echo(pki: Pki, run_dir: Path) -> Iterator[Deployment]:
    socket_path = run_dir / "echo.sock"
    env = project_env(DJANGO_SETTINGS_MODULE="tests.support.scope_echo", DATABASE_URL=f"sqlite:///{run_dir / 'echo.sqlite3'}")
    server = ServeProcess(env=env, pki_dir=pki.directory, log_dir=run_dir, unix_socket=socket_path, name="echo").start()
    yield Deployment(server, "", pki.directory)
    server.stop()


def test_tls_extension_carries_verified_client_certificate(echo: Deployment, pki: Pki) -> None:
    with echo.http("alice") as client:
        document = client.get("/anything").json()
    tls = document["tls"]
    assert document["scheme"] == "https"
    chain = tls["client_cert_chain"]
    certificates = [x509.load_pem_x509_certificate(pem.encode()) for pem in chain]
    assert certificates[0] == x509.load_pem_x509_certificate(pki.cert("alice").read_bytes())
    # Python's ssl module sends the chain it can build from its trust store,
    # so the CA may follow; each further certificate signed the one before.
    for issued, issuer in zip(certificates, certificates[1:], strict=False):
        assert issued.issuer == issuer.subject
    assert tls["client_cert_name"] == "CN=alice"
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert tls["client_cert_error"] is None
    assert tls["cipher_suite"] is None
    server_cert = x509.load_pem_x509_certificate(tls["server_cert"].encode())
    assert server_cert == x509.load_pem_x509_certificate((pki.directory / "server.pem").read_bytes())


def test_tls_extension_per_connection(echo: Deployment) -> None:
    with echo.http("bob") as client:
        first = client.get("/one").json()["tls"]["client_cert_name"]
        second = client.get("/two").json()["tls"]["client_cert_name"]
    with echo.http("alice") as client:
        third = client.get("/three").json()["tls"]["client_cert_name"]
    assert (first, second, third) == ("CN=bob", "CN=bob", "CN=alice")


def test_unix_socket_scope_names_the_socket(echo: Deployment, run_dir: Path) -> None:
    transport = httpx.HTTPTransport(uds=str(run_dir / "echo.sock"))
    with httpx.Client(transport=transport, base_url="http://proxy") as client:
        document = client.get("/via-socket").json()
    assert document["tls"] is None
    assert document["server"] == [str((run_dir / "echo.sock").resolve()), None]
    assert document["client"] is None
    assert oct((run_dir / "echo.sock").stat().st_mode & 0o777) == oct(0o660)
