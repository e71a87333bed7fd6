"""Client identity from the ASGI TLS extension, against the registry in the database."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from cryptography.hazmat.primitives.serialization import Encoding

from realtime.certificates import sha256_fingerprint
from realtime.exceptions import IdentityRejected
from realtime.identity import identify
from realtime.models import Client, ClientCertificate
from realtime.pki import Authority
from realtime.registry import register_certificate, revoke_certificate

pytestmark = pytest.mark.django_db(transaction=True)

AUTHORITY = Authority("Identity test CA")


def scope_with(*pems: str) -> dict:
    return {"type": "websocket", "extensions": {"tls": {"client_cert_chain": list(pems), "tls_version": 0x0304}}}


def pem_of(issued) -> str:
    return issued.certificate_pem.decode()


async def rejection(scope: dict) -> IdentityRejected:
    with pytest.raises(IdentityRejected) as caught:
        await identify(scope)
    return caught.value


async def test_registered_active_client_identified() -> None:
    issued = AUTHORITY.issue_client("alice")
    await _register("alice", issued)
    identity = await identify(scope_with(pem_of(issued)))
    assert identity.name == "alice"
    assert identity.source == "tls"
    assert len(identity.fingerprint_sha256) == 64
    assert identity.fingerprint_prefix == identity.fingerprint_sha256[:16]


@pytest.mark.parametrize(
    ("scope", "code"),
    [
        ({"type": "websocket"}, "identity.certificate_required"),
        ({"type": "http", "extensions": {"tls": {"client_cert_chain": []}}}, "identity.certificate_required"),
        ({"type": "http", "extensions": {"tls": None}}, "identity.certificate_required"),
        (scope_with("not a certificate"), "identity.certificate_invalid"),
        (scope_with("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "identity.certificate_invalid"),
    ],
)
async def test_missing_or_unparsable_certificate(scope: dict, code: str) -> None:
    rejected = await rejection(scope)
    assert rejected.code == code
    assert rejected.status == 403


async def test_unknown_certificate() -> None:
    assert (await rejection(scope_with(pem_of(AUTHORITY.issue_client("stranger"))))).code == "identity.client_unknown"


async def test_deactivated_client() -> None:
    issued = AUTHORITY.issue_client("gone")
    await _register("gone", issued)
    await Client.objects.filter(name="gone").aupdate(is_active=False)
    assert (await rejection(scope_with(pem_of(issued)))).code == "identity.client_inactive"


async def test_expired_and_not_yet_valid_certificates() -> None:
    now = dt.datetime.now(dt.timezone.utc)
    expired = AUTHORITY.issue_client("old", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(seconds=1))
    future = AUTHORITY.issue_client("new", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=10))
    client = await Client.objects.acreate(name="dated")
    for issued in (expired, future):
        # register_certificate refuses such certificates, so the record is written directly.
        await ClientCertificate.objects.acreate(
            client=client,
            fingerprint_sha256=sha256_fingerprint(issued.certificate.public_bytes(Encoding.DER)),
            subject="CN=dated",
            not_before=issued.certificate.not_valid_before_utc,
            not_after=issued.certificate.not_valid_after_utc,
        )
        rejected = await rejection(scope_with(pem_of(issued)))
        assert rejected.code == "identity.certificate_invalid"


async def test_chain_order_uses_first_certificate() -> None:
    issued = AUTHORITY.issue_client("leaf")
    await _register("leaf", issued)
    identity = await identify(scope_with(pem_of(issued), AUTHORITY.certificate_pem.decode()))
    assert identity.name == "leaf"


async def test_forwarded_headers_ignored_without_proxy_mode() -> None:
    issued = AUTHORITY.issue_client("direct")
    other = AUTHORITY.issue_client("forged")
    await _register("direct", issued)
    await _register("forged", other)
    scope = scope_with(pem_of(issued))
    scope["headers"] = [
        (b"x-ssl-client-verify", b"SUCCESS"),
        (b"x-ssl-client-cert", pem_of(other).replace("\n", "%0A").encode()),
    ]
    assert (await identify(scope)).name == "direct"


async def _register(name: str, issued) -> None:
    await sync_to_async(register_certificate)(name, issued.certificate_pem)


async def test_revoked_certificate_rejected_other_kept() -> None:
    revoked = AUTHORITY.issue_client("rotating-old")
    kept = AUTHORITY.issue_client("rotating-new")
    await _register("rotating", revoked)
    await _register("rotating", kept)
    fingerprint = sha256_fingerprint(revoked.certificate.public_bytes(Encoding.DER))
    await sync_to_async(revoke_certificate)(fingerprint)
    assert (await rejection(scope_with(pem_of(revoked)))).code == "identity.certificate_revoked"
    assert (await identify(scope_with(pem_of(kept)))).name == "rotating"
