"""Client identity from a verified client certificate.

``identify(scope)`` is the one place that turns a connection into a
registered, active client. It reads the certificate from one source, parses
it with ``cryptography``, checks its validity dates, fingerprints the DER
with SHA-256 and looks the fingerprint up. The certificate comes from:

- daphne's own TLS listener, through the ASGI TLS extension
  (``scope["extensions"]["tls"]["client_cert_chain"]``); or
- the forwarded headers of a trusted proxy, when ``MTLS_PROXY_HEADERS``
  names their format and the connection comes from that proxy (see
  ``realtime.proxy_identity``). Otherwise those headers are never read.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from channels.db import database_sync_to_async

from .certificates import CertificateFacts, der_from_pem, inspect_certificate
from .exceptions import CertificateInvalid, IdentityRejected
from .models import ClientCertificate
from .types import Scope

__all__ = ["ClientIdentity", "certificate_from_scope", "identify", "lookup_client"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """A connection's verified client."""

    client_id: int
    name: str
    fingerprint_sha256: str
    not_after: dt.datetime
    # "tls" for daphne's own listener, or the proxy header format.
    source: str

    @property
    def fingerprint_prefix(self) -> str:
        return self.fingerprint_sha256[:16]


def _certificate_from_tls_extension(scope: Scope) -> bytes:
    tls = (scope.get("extensions") or {}).get("tls")
    chain = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    if not chain:
        raise IdentityRejected("a client certificate is required", code="identity.certificate_required")
    try:
        return der_from_pem(chain[0])
    except CertificateInvalid as exc:
        raise IdentityRejected(str(exc), code="identity.certificate_invalid") from exc


def certificate_from_scope(scope: Scope) -> tuple[bytes, str]:
    """Return the client certificate's DER and the name of the source it came from.

    Raises IdentityRejected when the scope carries no usable certificate.
    """
    from .proxy_identity import certificate_from_proxy, is_trusted_proxy, proxy_format

    header_format = proxy_format()
    if header_format is not None and is_trusted_proxy(scope):
        return certificate_from_proxy(scope, header_format), header_format
    return _certificate_from_tls_extension(scope), "tls"


@database_sync_to_async
def lookup_client(fingerprint: str) -> tuple[int, str, bool, bool] | None:
    """Return (client id, name, client active, certificate revoked) for a fingerprint, or None."""
    row = (
        ClientCertificate.objects.filter(fingerprint_sha256=fingerprint)
        .values_list("client_id", "client__name", "client__is_active", "revoked_at")
        .first()
    )
    if row is None:
        return None
    client_id, name, is_active, revoked_at = row
    return client_id, name, is_active, revoked_at is not None


async def identify(scope: Scope, *, now: dt.datetime | None = None) -> ClientIdentity:
    """Return the connection's active registered client.

    Raises IdentityRejected when the certificate is missing, unparsable,
    outside its validity dates, not registered, revoked, or registered to a
    deactivated client. Nothing else happens for a rejected connection.
    """
    der, source = certificate_from_scope(scope)
    try:
        facts: CertificateFacts = inspect_certificate(der, now=now)
    except CertificateInvalid as exc:
        raise IdentityRejected(str(exc), code="identity.certificate_invalid") from exc

    row = await lookup_client(facts.fingerprint_sha256)
    if row is None:
        logger.warning("identity rejected: certificate %s is not registered", facts.fingerprint_prefix)
        raise IdentityRejected("certificate is not registered to any client", code="identity.client_unknown")
    client_id, name, is_active, revoked = row
    if revoked:
        logger.warning("identity rejected: certificate %s of client %s is revoked", facts.fingerprint_prefix, name)
        raise IdentityRejected("certificate is revoked", code="identity.certificate_revoked")
    if not is_active:
        logger.warning("identity rejected: client %s (certificate %s) is deactivated", name, facts.fingerprint_prefix)
        raise IdentityRejected("client is deactivated", code="identity.client_inactive")

    return ClientIdentity(
        client_id=client_id,
        name=name,
        fingerprint_sha256=facts.fingerprint_sha256,
        not_after=facts.not_after,
        source=source,
    )
