"""Forwarded client certificates (realtime.proxy_identity) with hand-built ASGI scopes.

Each case builds the scope daphne would hand the application, so the tests
can send header shapes that a real proxy never produces but a client
pretending to be one might. The end-to-end tests through real nginx are in test_e2e_nginx.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from django.test import override_settings
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from realtime.certificates import inspect_certificate
from realtime.exceptions import CertificateInvalid, IdentityRejected
from realtime.identity import certificate_from_scope, identify
from realtime.middleware import ClientIdentityMiddleware
from realtime.pki import Authority, IssuedCertificate
from realtime.registry import register_certificate
from tests.conftest import Pki

Headers = list[tuple[bytes, bytes]]


# --- certificates and scopes -------------------------------------------------------


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority("Proxy identity test CA")


def _issue_with_plus(authority: Authority, name: str) -> IssuedCertificate:
    """Issue a certificate whose PEM contains "+", so that "+" handling is exercised."""
    for _ in range(50):
        issued = authority.issue_client(name)
        if b"+" in issued.certificate_pem:
            return issued
    raise AssertionError("50 certificates in a row without '+' in their base64")  # pragma: no cover


@pytest.fixture(scope="module")
def alice(authority: Authority) -> IssuedCertificate:
    return _issue_with_plus(authority, "alice")


@pytest.fixture(scope="module")
def bob(authority: Authority) -> IssuedCertificate:
    return authority.issue_client("bob")


def der_of(issued: IssuedCertificate) -> bytes:
    return issued.certificate.public_bytes(Encoding.DER)


def nginx_escaped(pem: bytes) -> bytes:
    """Escape a PEM as nginx's $ssl_client_escaped_cert does: every byte but unreserved ones."""
    return quote(pem.decode(), safe="").encode()


def sf_binary(der: bytes) -> bytes:
    return b":" + base64.b64encode(der) + b":"


def nginx_headers(issued: IssuedCertificate, verify: bytes = b"SUCCESS") -> Headers:
    return [(b"x-ssl-client-verify", verify), (b"x-ssl-client-cert", nginx_escaped(issued.certificate_pem))]


def scope_via(headers: Headers, *, via: str = "unix", client: str = "127.0.0.1", tls_chain: list[str] | None = None) -> dict[str, Any]:
    """Build an HTTP scope as realtime.server hands it over for one kind of connection.

    ``via`` is "unix" (the proxy's socket), "tcp" (plain TCP from ``client``)
    or "tls" (daphne's own TLS listener, presenting ``tls_chain``).
    """
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/time/",
        "headers": [(b"host", b"localhost"), *headers],
        "client": None,
        "server": ["/run/realtime/1/daphne.sock", None],
    }
    if via in ("tcp", "tls"):
        scope["client"] = [client, 50_000]
        scope["server"] = ["127.0.0.1", 8443]
    if via == "tls":
        scope["extensions"] = {"tls": {"client_cert_chain": tls_chain or [], "client_cert_error": None}}
    return scope


@pytest.fixture
def proxy_format(settings: Any) -> Callable[..., None]:
    """Configure the trusted header format and proxy addresses for one test."""

    def configure(header_format: str | None, trusted: list[str] | None = None) -> None:
        settings.MTLS_PROXY_HEADERS = header_format
        settings.MTLS_TRUSTED_PROXIES = trusted or []

    return configure


def rejection(scope: dict[str, Any]) -> IdentityRejected:
    with pytest.raises(IdentityRejected) as caught:
        certificate_from_scope(scope)
    return caught.value


# --- nginx -------------------------------------------------------------------------------


def test_nginx_good_headers(proxy_format, alice) -> None:
    proxy_format("nginx")
    der, source = certificate_from_scope(scope_via(nginx_headers(alice)))
    assert der == der_of(alice)
    assert source == "nginx"


def test_nginx_plus_kept_unescaped(proxy_format, alice) -> None:
    proxy_format("nginx")
    # A proxy that leaves "+", "/" and "=" unescaped. unquote_plus would
    # turn each "+" into a space and break the certificate.
    value = quote(alice.certificate_pem.decode(), safe="+/=").encode()
    assert b"+" in value
    der, _ = certificate_from_scope(scope_via([(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-cert", value)]))
    assert der == der_of(alice)


@pytest.mark.parametrize(
    "verify",
    [b"NONE", b"FAILED:certificate has expired", b"FAILED:unable to get local issuer certificate", b"success", b"Success", b"SUCCESS ", b" SUCCESS", b"SUCCESS\t", b""],
)
def test_nginx_verify_other_than_success(proxy_format, alice, verify: bytes) -> None:
    proxy_format("nginx")
    refused = rejection(scope_via(nginx_headers(alice, verify)))
    assert refused.status == 403
    assert refused.code == "identity.certificate_unverified"


def test_nginx_verify_missing(proxy_format, alice) -> None:
    proxy_format("nginx")
    refused = rejection(scope_via([(b"x-ssl-client-cert", nginx_escaped(alice.certificate_pem))]))
    assert refused.status == 403
    assert refused.code == "identity.certificate_unverified"


def test_nginx_verify_repeated(proxy_format, alice) -> None:
    proxy_format("nginx")
    refused = rejection(scope_via([(b"x-ssl-client-verify", b"SUCCESS"), *nginx_headers(alice)]))
    assert refused.status == 403
    assert refused.code == "identity.proxy_header_invalid"


def test_nginx_certificate_repeated(proxy_format, alice, bob) -> None:
    proxy_format("nginx")
    headers = [*nginx_headers(alice), (b"x-ssl-client-cert", nginx_escaped(bob.certificate_pem))]
    refused = rejection(scope_via(headers))
    assert refused.status == 403
    assert refused.code == "identity.proxy_header_invalid"


@pytest.mark.parametrize("value", [None, b""])
def test_nginx_certificate_missing(proxy_format, value: bytes | None) -> None:
    proxy_format("nginx")
    headers = [(b"x-ssl-client-verify", b"SUCCESS")]
    if value is not None:
        headers.append((b"x-ssl-client-cert", value))
    refused = rejection(scope_via(headers))
    assert refused.status == 403
    assert refused.code == "identity.certificate_required"


def _pem_text(issued: IssuedCertificate) -> str:
    return issued.certificate_pem.decode()


def _broken_base64(issued: IssuedCertificate) -> str:
    lines = _pem_text(issued).splitlines()
    lines[2] = "!" * len(lines[2])
    return "\n".join(lines) + "\n"


def _truncated(issued: IssuedCertificate) -> str:
    lines = _pem_text(issued).splitlines()
    return "\n".join([lines[0], lines[1], lines[-1]]) + "\n"


NGINX_CORRUPT_VALUES: dict[str, Callable[[IssuedCertificate], bytes]] = {
    "raw newlines": lambda issued: issued.certificate_pem,
    "folded line": lambda issued: nginx_escaped(issued.certificate_pem)[:40] + b"\r\n " + nginx_escaped(issued.certificate_pem)[40:],
    "escaped CR LF": lambda issued: nginx_escaped(issued.certificate_pem.replace(b"\n", b"\r\n")),
    "space inside": lambda issued: nginx_escaped(issued.certificate_pem)[:60] + b" " + nginx_escaped(issued.certificate_pem)[60:],
    "non-ASCII byte": lambda issued: nginx_escaped(issued.certificate_pem) + b"\xc3\xa9",
    "escaped non-UTF-8": lambda issued: b"%FF" + nginx_escaped(issued.certificate_pem),
    "invalid escape": lambda issued: b"%ZZ" + nginx_escaped(issued.certificate_pem),
    "broken base64": lambda issued: nginx_escaped(_broken_base64(issued).encode()),
    "truncated": lambda issued: nginx_escaped(_truncated(issued).encode()),
    "two certificates": lambda issued: nginx_escaped(issued.certificate_pem * 2),
    "text before": lambda issued: nginx_escaped(b"subject=CN=alice\n" + issued.certificate_pem),
    "private key armor": lambda issued: nginx_escaped(issued.private_key_pem),
    "not PEM": lambda issued: b"hello",
    "SHA-1 fingerprint": lambda issued: b"0123456789abcdef0123456789abcdef01234567",
}


@pytest.mark.parametrize("case", sorted(NGINX_CORRUPT_VALUES))
def test_nginx_corrupt_certificate(proxy_format, alice, case: str) -> None:
    proxy_format("nginx")
    value = NGINX_CORRUPT_VALUES[case](alice)
    refused = rejection(scope_via([(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-cert", value)]))
    assert refused.status == 400
    assert refused.code == "identity.proxy_header_invalid"


def test_nginx_oversized_certificate(proxy_format, settings, alice) -> None:
    proxy_format("nginx")
    value = nginx_escaped(alice.certificate_pem)
    settings.MTLS_MAX_CERT_HEADER_BYTES = len(value) - 1
    refused = rejection(scope_via([(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-cert", value)]))
    assert refused.status == 400
    assert "MTLS_MAX_CERT_HEADER_BYTES" in refused.detail

    settings.MTLS_MAX_CERT_HEADER_BYTES = len(value)
    der, _ = certificate_from_scope(scope_via([(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-cert", value)]))
    assert der == der_of(alice)


# --- RFC 9440 Client-Cert ---------------------------------------------------------------


def test_rfc9440_good_header(proxy_format, alice) -> None:
    proxy_format("rfc9440")
    value = sf_binary(der_of(alice))
    der, source = certificate_from_scope(scope_via([(b"client-cert", value)]))
    assert der == der_of(alice)
    assert source == "rfc9440"


def test_rfc9440_plus_in_base64(proxy_format, authority) -> None:
    proxy_format("rfc9440")
    for _ in range(50):
        der = der_of(authority.issue_client("plus"))
        if b"+" in base64.b64encode(der):
            break
    value = sf_binary(der)
    assert b"+" in value
    assert certificate_from_scope(scope_via([(b"client-cert", value)]))[0] == der


def test_rfc9440_repeated(proxy_format, alice, bob) -> None:
    proxy_format("rfc9440")
    refused = rejection(scope_via([(b"client-cert", sf_binary(der_of(alice))), (b"client-cert", sf_binary(der_of(bob)))]))
    assert refused.status == 403
    assert refused.code == "identity.proxy_header_invalid"


def test_rfc9440_missing(proxy_format) -> None:
    proxy_format("rfc9440")
    refused = rejection(scope_via([]))
    assert refused.status == 403
    assert refused.code == "identity.certificate_required"


RFC9440_CORRUPT_VALUES: dict[str, Callable[[bytes], bytes]] = {
    "no colons": lambda der: base64.b64encode(der),
    "one colon": lambda der: b":" + base64.b64encode(der),
    "empty": lambda der: b"::",
    "length not a multiple of 4": lambda der: b":" + base64.b64encode(der)[:-1] + b":",
    "urlsafe alphabet": lambda der: b":" + base64.urlsafe_b64encode(der + b"\xfb\xff") + b":",
    "line break": lambda der: b":" + base64.b64encode(der)[:40] + b"\n" + base64.b64encode(der)[40:] + b":",
    "parameter": lambda der: sf_binary(der) + b";a=1",
    "two items": lambda der: sf_binary(der) + b", " + sf_binary(der),
    "PEM instead": lambda der: b":" + quote(base64.b64encode(der).decode()).encode() + b"%0A:",
}


@pytest.mark.parametrize("case", sorted(RFC9440_CORRUPT_VALUES))
def test_rfc9440_corrupt(proxy_format, alice, case: str) -> None:
    proxy_format("rfc9440")
    refused = rejection(scope_via([(b"client-cert", RFC9440_CORRUPT_VALUES[case](der_of(alice)))]))
    assert refused.status == 400
    assert refused.code == "identity.proxy_header_invalid"


def test_rfc9440_oversized(proxy_format, settings, alice) -> None:
    proxy_format("rfc9440")
    value = sf_binary(der_of(alice))
    settings.MTLS_MAX_CERT_HEADER_BYTES = len(value) - 1
    refused = rejection(scope_via([(b"client-cert", value)]))
    assert refused.status == 400


# --- Envoy X-Forwarded-Client-Cert -----------------------------------------------------


def xfcc(issued: IssuedCertificate, *, hash_value: str | None = None, extra: str = "") -> bytes:
    parts = ["By=spiffe://example.test/realtime"]
    if hash_value is not None:
        parts.append(f"Hash={hash_value}")
    parts.append(f'Cert="{nginx_escaped(issued.certificate_pem).decode()}"')
    if extra:
        parts.append(extra)
    return ";".join(parts).encode()


def sha256_hex(issued: IssuedCertificate) -> str:
    return hashlib.sha256(der_of(issued)).hexdigest()


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda issued: xfcc(issued), id="cert only"),
        pytest.param(lambda issued: xfcc(issued, hash_value=sha256_hex(issued)), id="cert and hash"),
        pytest.param(lambda issued: xfcc(issued, hash_value=sha256_hex(issued).upper()), id="upper-case hash"),
        pytest.param(
            lambda issued: xfcc(issued, extra='Subject="CN=alice,O=Example, Inc.";URI=spiffe://a;DNS=a.test;DNS=b.test'),
            id="subject and repeated DNS",
        ),
        pytest.param(
            lambda issued: f"Cert={nginx_escaped(issued.certificate_pem).decode()};hash={sha256_hex(issued)}".encode(),
            id="unquoted cert, lower-case key",
        ),
    ],
)
def test_envoy_good_header(proxy_format, alice, build: Callable[[IssuedCertificate], bytes]) -> None:
    proxy_format("envoy")
    der, source = certificate_from_scope(scope_via([(b"x-forwarded-client-cert", build(alice))]))
    assert der == der_of(alice)
    assert source == "envoy"


ENVOY_CORRUPT_VALUES: dict[str, Callable[[IssuedCertificate, IssuedCertificate], bytes]] = {
    "hash mismatch": lambda alice, bob: xfcc(alice, hash_value=sha256_hex(bob)),
    "hash not hex": lambda alice, bob: xfcc(alice, hash_value="z" * 64),
    "hash SHA-1 length": lambda alice, bob: xfcc(alice, hash_value=hashlib.sha1(der_of(alice)).hexdigest()),
    "two elements": lambda alice, bob: xfcc(bob) + b"," + xfcc(alice),
    "cert repeated": lambda alice, bob: xfcc(alice) + b';Cert="' + nginx_escaped(bob.certificate_pem) + b'"',
    "hash repeated": lambda alice, bob: xfcc(alice, hash_value=sha256_hex(alice)) + b";Hash=" + sha256_hex(alice).encode(),
    "unterminated quote": lambda alice, bob: b'Cert="' + nginx_escaped(alice.certificate_pem),
    "no key": lambda alice, bob: b"=abc",
    "raw PEM": lambda alice, bob: b'Cert="' + alice.certificate_pem + b'"',
    "corrupt PEM": lambda alice, bob: b'Cert="' + nginx_escaped(_broken_base64(alice).encode()) + b'"',
}


@pytest.mark.parametrize("case", sorted(ENVOY_CORRUPT_VALUES))
def test_envoy_corrupt(proxy_format, alice, bob, case: str) -> None:
    proxy_format("envoy")
    refused = rejection(scope_via([(b"x-forwarded-client-cert", ENVOY_CORRUPT_VALUES[case](alice, bob))]))
    assert refused.status == 400
    assert refused.code == "identity.proxy_header_invalid"


@pytest.mark.parametrize("value", [None, b"", b"By=spiffe://example.test/realtime;Hash=" + b"a" * 64])
def test_envoy_without_cert(proxy_format, value: bytes | None) -> None:
    proxy_format("envoy")
    headers = [] if value is None else [(b"x-forwarded-client-cert", value)]
    refused = rejection(scope_via(headers))
    assert refused.status == 403
    assert refused.code == "identity.certificate_required"


def test_envoy_repeated(proxy_format, alice) -> None:
    proxy_format("envoy")
    refused = rejection(scope_via([(b"x-forwarded-client-cert", xfcc(alice))] * 2))
    assert refused.status == 403
    assert refused.code == "identity.proxy_header_invalid"


# --- only the configured format is read ---------------------------------------------


@pytest.mark.parametrize("configured", ["nginx", "rfc9440", "envoy"])
def test_only_configured_format_read(proxy_format, alice, configured: str) -> None:
    proxy_format(configured)
    every_format = {
        "nginx": nginx_headers(alice),
        "rfc9440": [(b"client-cert", sf_binary(der_of(alice)))],
        "envoy": [(b"x-forwarded-client-cert", xfcc(alice))],
    }
    for other, headers in every_format.items():
        if other == configured:
            continue
        refused = rejection(scope_via(headers))
        assert refused.status == 403, other
        assert refused.code in ("identity.certificate_required", "identity.certificate_unverified"), other
    assert certificate_from_scope(scope_via(every_format[configured]))[0] == der_of(alice)


# --- which connections may carry headers ---------------------------------------------


@pytest.mark.parametrize("header_format", ["nginx", "rfc9440", "envoy"])
def test_tls_connection_ignores_headers(proxy_format, alice, bob, header_format: str) -> None:
    proxy_format(header_format, trusted=["127.0.0.0/8"])
    forged = {
        "nginx": nginx_headers(bob),
        "rfc9440": [(b"client-cert", sf_binary(der_of(bob)))],
        "envoy": [(b"x-forwarded-client-cert", xfcc(bob))],
    }[header_format]
    scope = scope_via(forged, via="tls", tls_chain=[_pem_text(alice)])
    der, source = certificate_from_scope(scope)
    assert der == der_of(alice)
    assert source == "tls"


def test_tls_without_certificate_ignores_headers(proxy_format, bob) -> None:
    proxy_format("nginx", trusted=["127.0.0.0/8"])
    refused = rejection(scope_via(nginx_headers(bob), via="tls", tls_chain=[]))
    assert refused.status == 403
    assert refused.code == "identity.certificate_required"


@pytest.mark.parametrize(
    ("trusted", "client"),
    [([], "127.0.0.1"), (["10.0.0.0/8"], "127.0.0.1"), (["127.0.0.2"], "127.0.0.1"), (["::1"], "127.0.0.1"), (["127.0.0.0/8"], "not-an-address")],
)
def test_untrusted_address_ignores_headers(proxy_format, alice, trusted: list[str], client: str) -> None:
    proxy_format("nginx", trusted=trusted)
    refused = rejection(scope_via(nginx_headers(alice), via="tcp", client=client))
    assert refused.status == 403
    assert refused.code == "identity.certificate_required"


@pytest.mark.parametrize(
    ("trusted", "client"),
    [(["127.0.0.1"], "127.0.0.1"), (["127.0.0.0/8"], "127.0.0.9"), (["::1"], "::1"), (["127.0.0.1"], "::ffff:127.0.0.1")],
)
def test_trusted_address_reads_headers(proxy_format, alice, trusted: list[str], client: str) -> None:
    proxy_format("nginx", trusted=trusted)
    der, source = certificate_from_scope(scope_via(nginx_headers(alice), via="tcp", client=client))
    assert der == der_of(alice)
    assert source == "nginx"


def test_unix_socket_without_proxy_format(proxy_format, alice) -> None:
    proxy_format(None)
    refused = rejection(scope_via(nginx_headers(alice)))
    assert refused.status == 403
    assert refused.code == "identity.certificate_required"


# --- what the client receives ---------------------------------------------------------------


async def _run_middleware(scope: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    sent: list[dict[str, Any]] = []
    reached = False

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        nonlocal reached
        reached = True

    async def receive() -> dict[str, Any]:  # pragma: no cover - rejected scopes read nothing
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await ClientIdentityMiddleware(inner)(scope, receive, send)
    return sent, reached


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([(b"x-ssl-client-verify", b"NONE")], 403, "identity.certificate_unverified"),
        ([(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-verify", b"SUCCESS")], 403, "identity.proxy_header_invalid"),
        ([(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-cert", b"%0A" * 9000)], 400, "identity.proxy_header_invalid"),
        ([(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-cert", b"-----BEGIN\n")], 400, "identity.proxy_header_invalid"),
    ],
)
async def test_http_rejection_is_problem(proxy_format, headers: Headers, status: int, code: str) -> None:
    proxy_format("nginx")
    sent, reached = await _run_middleware(scope_via(headers))
    assert reached is False
    assert sent[0]["status"] == status
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    problem = json.loads(sent[1]["body"])
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["detail"]


async def test_websocket_rejection_closes_before_accept(proxy_format) -> None:
    proxy_format("nginx")
    scope = scope_via([(b"x-ssl-client-verify", b"FAILED:certificate revoked")]) | {"type": "websocket", "path": "/ws/v1/transfers/"}
    sent, reached = await _run_middleware(scope)
    assert reached is False
    assert sent == [{"type": "websocket.close", "code": 4003}]


# --- the full identity check on a forwarded certificate ------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_forwarded_certificate_identifies_client(proxy_format, pki: Pki) -> None:
    proxy_format("nginx")
    pem = pki.cert("alice").read_bytes()
    await _register("alice", pem)
    headers = [(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-cert", nginx_escaped(pem))]

    identity = await identify(scope_via(headers))

    assert identity.name == "alice"
    assert identity.source == "nginx"
    from cryptography import x509

    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert identity.fingerprint_sha256 == hashlib.sha256(der).hexdigest()


@pytest.mark.django_db(transaction=True)
async def test_forwarded_expired_certificate_rejected(proxy_format, pki: Pki) -> None:
    proxy_format("nginx")
    headers = [(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-cert", nginx_escaped(pki.cert("expired").read_bytes()))]
    with pytest.raises(IdentityRejected) as caught:
        await identify(scope_via(headers))
    assert caught.value.status == 403
    assert caught.value.code == "identity.certificate_invalid"


@pytest.mark.django_db(transaction=True)
async def test_forwarded_unregistered_certificate_rejected(proxy_format, pki: Pki) -> None:
    proxy_format("rfc9440")
    from cryptography import x509

    der = x509.load_pem_x509_certificate(pki.cert("carol").read_bytes()).public_bytes(Encoding.DER)
    with pytest.raises(IdentityRejected) as caught:
        await identify(scope_via([(b"client-cert", sf_binary(der))]))
    assert caught.value.code == "identity.client_unknown"


@pytest.mark.django_db(transaction=True)
async def test_forwarded_not_yet_valid_certificate_rejected(proxy_format, authority) -> None:
    proxy_format("envoy")
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    issued = authority.issue_client("future", not_before=later, not_after=later + dt.timedelta(days=1))
    with pytest.raises(IdentityRejected) as caught:
        await identify(scope_via([(b"x-forwarded-client-cert", xfcc(issued))]))
    assert caught.value.code == "identity.certificate_invalid"


async def _register(name: str, pem: bytes) -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(register_certificate)(name, pem)


# --- arbitrary input raises only IdentityRejected ---------------------------------------


_FUZZ = hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(verify=st.binary(max_size=40), value=st.binary(max_size=3000))
def test_nginx_arbitrary_values(verify: bytes, value: bytes) -> None:
    _only_rejections("nginx", [(b"x-ssl-client-verify", verify), (b"x-ssl-client-cert", value)])
    _only_rejections("nginx", [(b"x-ssl-client-verify", b"SUCCESS"), (b"x-ssl-client-cert", value)])


@_FUZZ
@given(value=st.binary(max_size=3000))
def test_envoy_arbitrary_values(value: bytes) -> None:
    _only_rejections("envoy", [(b"x-forwarded-client-cert", value)])


@_FUZZ
@given(data=st.data())
def test_rfc9440_mutated_der(alice, data: st.DataObject) -> None:
    der = bytearray(der_of(alice))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    _only_rejections("rfc9440", [(b"client-cert", sf_binary(bytes(der)))])


def _only_rejections(header_format: str, headers: Headers) -> None:
    """Parse the headers and check the certificate; any exception but a rejection fails the test."""
    with override_settings(MTLS_PROXY_HEADERS=header_format, MTLS_TRUSTED_PROXIES=[]):
        try:
            der, _ = certificate_from_scope(scope_via(headers))
            inspect_certificate(der)
        except (IdentityRejected, CertificateInvalid):
            pass
