"""Management commands: good input does its job, bad input fails with a clear message."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from django.core.management import call_command
from django.core.management.base import CommandError

from realtime.models import Client, ClientCertificate
from realtime.pki import Authority
from tests.conftest import Pki
from transfers.models import Account


def run(*args: str) -> str:
    output = StringIO()
    call_command(*args, stdout=output, stderr=StringIO())
    return output.getvalue()


def test_devpki_writes_certificates_and_private_keys(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    run("devpki", "--out", str(out), "--client", "alice", "--client", "bob")
    for name in ("ca", "server", "alice", "bob"):
        assert (out / f"{name}.pem").is_file()
        key_mode = stat.S_IMODE((out / f"{name}.key").stat().st_mode)
        assert key_mode == 0o600, (name, oct(key_mode))
    assert stat.S_IMODE(out.stat().st_mode) == 0o700

    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    client = x509.load_pem_x509_certificate((out / "alice.pem").read_bytes())
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert client.issuer == ca.subject


def test_devpki_reuses_existing_ca(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    run("devpki", "--out", str(out), "--client", "alice")
    first_ca = (out / "ca.pem").read_bytes()
    first_server = (out / "server.pem").read_bytes(), (out / "server.key").read_bytes()
    run("devpki", "--out", str(out), "--client", "carol")
    assert (out / "ca.pem").read_bytes() == first_ca
    assert ((out / "server.pem").read_bytes(), (out / "server.key").read_bytes()) == first_server
    carol = x509.load_pem_x509_certificate((out / "carol.pem").read_bytes())
    assert carol.issuer == x509.load_pem_x509_certificate(first_ca).subject


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client", "bad name"], "invalid client name"),
        (["--client", "a", "--client", "a"], "once"),
        (["--client", "ca"], "reserved"),
        (["--client", "../escape"], "invalid client name"),
    ],
)
def test_devpki_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("devpki", "--out", str(tmp_path / "pki"), *args)


def test_devpki_rejects_file_as_out(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(CommandError, match="not a directory"):
        run("devpki", "--out", str(target))


@pytest.mark.django_db
def test_register_and_deactivate_client(pki: Pki) -> None:
    output = run("register_client", "alice", str(pki.cert("alice")))
    assert "created client 'alice'" in output
    assert ClientCertificate.objects.get(client__name="alice").fingerprint_sha256 in output
    run("register_client", "alice", str(pki.cert("bob")))
    assert ClientCertificate.objects.filter(client__name="alice").count() == 2

    run("deactivate_client", "alice")
    client = Client.objects.get(name="alice")
    assert client.is_active is False
    assert client.deactivated_at is not None


@pytest.mark.django_db
def test_register_rejects_bad_input(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    two = tmp_path / "two.pem"
    two.write_bytes(pki.cert("alice").read_bytes() + pki.cert("bob").read_bytes())
    with pytest.raises(CommandError, match="not found"):
        run("register_client", "alice", str(tmp_path / "missing.pem"))
    with pytest.raises(CommandError, match="does not parse"):
        run("register_client", "alice", str(garbage))
    with pytest.raises(CommandError, match="exactly one"):
        run("register_client", "alice", str(two))
    with pytest.raises(CommandError, match="expired"):
        run("register_client", "alice", str(pki.cert("expired")))
    with pytest.raises(CommandError, match="invalid client name"):
        run("register_client", "no spaces allowed", str(pki.cert("alice")))
    run("register_client", "alice", str(pki.cert("alice")))
    with pytest.raises(CommandError, match="already registered"):
        run("register_client", "bob", str(pki.cert("alice")))
    assert not Client.objects.filter(name="bob").exists()


@pytest.mark.django_db
def test_deactivate_unknown_client() -> None:
    with pytest.raises(CommandError, match="no client named"):
        run("deactivate_client", "nobody")


@pytest.mark.django_db
def test_open_account(pki: Pki) -> None:
    run("register_client", "alice", str(pki.cert("alice")))
    output = run("open_account", "ACC-1", "--owner", "alice", "--currency", "USD", "--balance", "1000.00")
    assert "1000.00 USD" in output
    account = Account.objects.get(pk="ACC-1")
    assert account.balance == account.opening_balance == Decimal("1000.00")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ACC-2", "--owner", "nobody", "--currency", "USD"], "no client named"),
        (["ACC-2", "--owner", "alice", "--currency", "usd"], "currency"),
        (["ACC-2", "--owner", "alice", "--currency", "USD", "--balance", "-5"], "balance"),
        (["ACC-2", "--owner", "alice", "--currency", "USD", "--balance", "1e9"], "balance"),
        (["bad id!", "--owner", "alice", "--currency", "USD"], "id"),
        (["ACC-1", "--owner", "alice", "--currency", "USD"], "already exists"),
    ],
)
def test_open_account_rejects_bad_input(pki: Pki, args: list[str], message: str) -> None:
    run("register_client", "alice", str(pki.cert("alice")))
    run("open_account", "ACC-1", "--owner", "alice", "--currency", "USD")
    with pytest.raises(CommandError, match=message):
        run("open_account", *args)


def test_serve_rejects_incomplete_tls_options(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--tls-cert is required"):
        run("serve", "--port", "0")
    with pytest.raises(CommandError, match="give --port"):
        run("serve")
    with pytest.raises(CommandError, match="file not found"):
        run("serve", "--port", "0", "--tls-cert", "x", "--tls-key", "y", "--client-ca", "z")


def test_pki_issues_expired_certificate_on_request() -> None:
    now = dt.datetime.now(dt.timezone.utc)
    issued = Authority().issue_client("old", not_before=now - dt.timedelta(days=2), not_after=now - dt.timedelta(days=1))
    assert issued.certificate.not_valid_after_utc < now


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "message"), [("ca.pem", "CA certificate"), ("server.pem", "clientAuth")])
def test_register_rejects_non_client_certificates(pki: Pki, name: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("register_client", "alice", str(pki.directory / name))


@pytest.mark.django_db
def test_revoke_certificate_command(pki: Pki) -> None:
    run("register_client", "alice", str(pki.cert("alice")))
    record = ClientCertificate.objects.get(client__name="alice")
    output = run("revoke_certificate", record.fingerprint_sha256[:20].upper())
    assert f"revoked certificate {record.fingerprint_sha256}" in output
    record.refresh_from_db()
    assert record.revoked_at is not None
    with pytest.raises(CommandError, match="at least its first 16"):
        run("revoke_certificate", "abc")
    with pytest.raises(CommandError, match="no registered certificate"):
        run("revoke_certificate", "0" * 64)
