"""Client certificates forwarded by a TLS-terminating proxy.

A proxy that verified the client's certificate forwards it in a header. The
headers are read only when ``MTLS_PROXY_HEADERS`` names their format and the
connection comes from the proxy: over the unix socket, or over plain TCP
from an address in ``MTLS_TRUSTED_PROXIES``. A connection that presented its
own certificate to daphne's TLS listener is never identified by headers.

Supported formats, exactly one per deployment; the headers of the other
two are never read:

``nginx``
    ``X-SSL-Client-Verify`` with exactly ``SUCCESS`` and ``X-SSL-Client-Cert``
    carrying ``$ssl_client_escaped_cert``, the URL-encoded PEM.
``rfc9440``
    ``Client-Cert: :<base64 DER>:`` (RFC 9440, a structured-field byte
    sequence). A proxy sends it only for a certificate it verified.
``envoy``
    ``X-Forwarded-Client-Cert`` with one element carrying ``Cert="<URL-encoded
    PEM>"`` and optionally ``Hash=<hex SHA-256 of the DER>``, which must then
    match. Envoy sends ``Cert`` with ``forward_client_cert_details:
    SANITIZE_SET`` and ``set_current_client_cert_details: {cert: true}``.

The forwarded certificate then goes through the same checks as one from
daphne's TLS listener (``realtime.identity``): parsed with ``cryptography``,
validity dates, SHA-256 fingerprint of the DER, registered active client.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from functools import lru_cache
from urllib.parse import unquote

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from .certificates import der_from_pem, sha256_fingerprint
from .exceptions import CertificateInvalid, IdentityRejected
from .types import Scope

__all__ = [
    "PROXY_HEADER_FORMATS",
    "certificate_from_proxy",
    "is_trusted_proxy",
    "proxy_format",
    "trusted_proxy_networks",
]

PROXY_HEADER_FORMATS = ("nginx", "rfc9440", "envoy")

_SF_BINARY_RE = re.compile(r":([A-Za-z0-9+/]+={0,2}):")
# A URL-encoded PEM as nginx ($ssl_client_escaped_cert) and Envoy send it:
# unreserved characters and %XX escapes. "+", "/" and "=" are accepted
# unescaped too, because some proxies leave them as they are. Whitespace and
# control characters are not, so a folded or multi-line value is refused.
_ESCAPED_PEM_RE = re.compile(r"[A-Za-z0-9%._~+/=-]+")
# Exactly one PEM certificate and nothing around it, in LF-separated lines
# of base64. RFC 7468 specifies 64 characters a line, and some tools write 76.
_STRICT_PEM_RE = re.compile(
    r"-----BEGIN CERTIFICATE-----\n(?:[A-Za-z0-9+/=]{1,76}\n)+-----END CERTIFICATE-----\n?"
)
# One XFCC field: key=value or key="quoted value" (quotes escaped with \).
_XFCC_FIELD_RE = re.compile(r'([A-Za-z]+)=("(?:[^"\\]|\\.)*"|[^;,"]*)')
# XFCC fields that Envoy repeats once per subject alternative name.
_XFCC_REPEATABLE_FIELDS = frozenset({"dns", "uri"})
_SHA256_HEX_RE = re.compile(r"[0-9A-Fa-f]{64}")


def proxy_format() -> str | None:
    """Return the configured forwarded-certificate format, or None when proxy identity is off."""
    value = settings.MTLS_PROXY_HEADERS
    if value is None:
        return None
    if value not in PROXY_HEADER_FORMATS:
        raise ImproperlyConfigured(
            f"MTLS_PROXY_HEADERS must be one of {', '.join(PROXY_HEADER_FORMATS)} or unset, got {value!r}"
        )
    return value


@lru_cache(maxsize=1)
def trusted_proxy_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for entry in settings.MTLS_TRUSTED_PROXIES:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"MTLS_TRUSTED_PROXIES entries must be IP addresses or CIDR networks, got {entry!r}"
            ) from None
    return tuple(networks)


def _clear_cache(*, setting: str, **kwargs: object) -> None:
    if setting == "MTLS_TRUSTED_PROXIES":
        trusted_proxy_networks.cache_clear()


setting_changed.connect(_clear_cache, dispatch_uid="realtime.proxy_identity.clear")


def is_trusted_proxy(scope: Scope) -> bool:
    """Tell whether the connection comes from the proxy whose headers are trusted.

    A connection with TLS details is a client talking to daphne directly,
    whatever its address. ``scope["server"]`` is ``[path, None]`` for the
    unix socket (set by ``realtime.server``). ``scope["client"]`` is the
    transport's peer, because ``serve`` leaves daphne's proxy-header
    rewriting off.
    """
    if "tls" in (scope.get("extensions") or {}):
        return False
    server = scope.get("server")
    if server is not None and len(server) == 2 and server[1] is None:
        return True
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except (TypeError, ValueError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        address = address.ipv4_mapped
    return any(address in network for network in trusted_proxy_networks())


def _single_header(scope: Scope, name: bytes) -> str | None:
    values = [value for key, value in scope.get("headers", []) if key == name]
    if not values:
        return None
    if len(values) > 1:
        raise IdentityRejected(
            f"header {name.decode()} must appear once, got {len(values)}", code="identity.proxy_header_invalid"
        )
    value = values[0]
    if len(value) > settings.MTLS_MAX_CERT_HEADER_BYTES:
        raise _corrupt(
            f"header {name.decode()} is larger than MTLS_MAX_CERT_HEADER_BYTES ({settings.MTLS_MAX_CERT_HEADER_BYTES} bytes)"
        )
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise _corrupt(f"header {name.decode()} is not ASCII") from None


def _missing_certificate() -> IdentityRejected:
    return IdentityRejected("the proxy forwarded no client certificate", code="identity.certificate_required")


def _corrupt(detail: str) -> IdentityRejected:
    return IdentityRejected(detail, code="identity.proxy_header_invalid", status=400)


def _der_from_escaped_pem(value: str, header: str) -> bytes:
    if not _ESCAPED_PEM_RE.fullmatch(value):
        raise _corrupt(f"header {header} must be a URL-encoded PEM certificate without whitespace or line breaks")
    # unquote, not unquote_plus: a "+" is a base64 character and must stay one.
    try:
        pem = unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise _corrupt(f"header {header} does not decode to text") from None
    if not _STRICT_PEM_RE.fullmatch(pem):
        raise _corrupt(f"header {header} must decode to exactly one PEM certificate and nothing else")
    try:
        return der_from_pem(pem)
    except CertificateInvalid as exc:
        raise _corrupt(f"header {header} contains no valid certificate: {exc}") from exc


def _from_nginx(scope: Scope) -> bytes:
    verify = _single_header(scope, b"x-ssl-client-verify")
    if verify != "SUCCESS":
        shown = "missing" if verify is None else repr(verify[:40])
        raise IdentityRejected(
            f"the proxy did not verify a client certificate (X-SSL-Client-Verify {shown})",
            code="identity.certificate_unverified",
        )
    value = _single_header(scope, b"x-ssl-client-cert")
    if not value:
        raise _missing_certificate()
    return _der_from_escaped_pem(value, "X-SSL-Client-Cert")


def _from_rfc9440(scope: Scope) -> bytes:
    value = _single_header(scope, b"client-cert")
    if value is None:
        raise _missing_certificate()
    match = _SF_BINARY_RE.fullmatch(value.strip(" "))
    if match is None:
        raise _corrupt("header Client-Cert must be a non-empty byte sequence, ':<base64 DER>:'")
    try:
        return base64.b64decode(match.group(1), validate=True)
    except binascii.Error as exc:
        raise _corrupt(f"header Client-Cert is not valid base64: {exc}") from exc


def _xfcc_fields(value: str) -> dict[str, str]:
    """Split one XFCC element into lower-cased keys and unquoted values."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(value):
        match = _XFCC_FIELD_RE.match(value, position)
        if match is None:
            raise _corrupt("header X-Forwarded-Client-Cert must contain exactly one element of key=value fields")
        key, raw = match.group(1).lower(), match.group(2)
        if key in fields and key not in _XFCC_REPEATABLE_FIELDS:
            raise _corrupt(f"header X-Forwarded-Client-Cert repeats field {key!r}")
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        fields[key] = raw
        position = match.end()
        if position < len(value):
            # A "," starts a second element: a client-sent XFCC that the
            # proxy appended to instead of replacing.
            if value[position] != ";":
                raise _corrupt("header X-Forwarded-Client-Cert must contain exactly one element of key=value fields")
            position += 1
    return fields


def _from_envoy(scope: Scope) -> bytes:
    value = _single_header(scope, b"x-forwarded-client-cert")
    if value is None:
        raise _missing_certificate()
    fields = _xfcc_fields(value.strip(" "))
    if "cert" not in fields:
        raise _missing_certificate()
    der = _der_from_escaped_pem(fields["cert"], "X-Forwarded-Client-Cert")
    if "hash" in fields:
        if not _SHA256_HEX_RE.fullmatch(fields["hash"]):
            raise _corrupt("header X-Forwarded-Client-Cert Hash must be 64 hex digits (SHA-256)")
        if fields["hash"].lower() != sha256_fingerprint(der):
            raise _corrupt("header X-Forwarded-Client-Cert Hash does not match its Cert")
    return der


_READERS = {"nginx": _from_nginx, "rfc9440": _from_rfc9440, "envoy": _from_envoy}


def certificate_from_proxy(scope: Scope, header_format: str) -> bytes:
    """Return the DER certificate the proxy forwarded in the configured format.

    Raises IdentityRejected with status 403 when the proxy reports no
    verified certificate or a header appears more than once, and with
    status 400 when a header is oversized, not ASCII or corrupt.
    """
    return _READERS[header_format](scope)
