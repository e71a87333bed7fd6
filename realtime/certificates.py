"""Parsing and checking of client certificates with ``cryptography``."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from .exceptions import CertificateInvalid

__all__ = [
    "CertificateFacts",
    "der_from_pem",
    "inspect_certificate",
    "sha256_fingerprint",
]

_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """The facts of one parsed certificate that identity uses."""

    fingerprint_sha256: str
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def fingerprint_prefix(self) -> str:
        """First 16 hex digits of the fingerprint, the form used in logs."""
        return self.fingerprint_sha256[:16]


def sha256_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def der_from_pem(pem: str | bytes) -> bytes:
    """Decode exactly one PEM certificate to DER.

    Raises CertificateInvalid when the text contains no certificate, more
    than one, or anything that does not parse.
    """
    text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
    if text.count(_PEM_BEGIN) != 1 or text.count(_PEM_END) != 1:
        raise CertificateInvalid("expected exactly one PEM certificate")
    try:
        certificate = x509.load_pem_x509_certificate(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, x509.InvalidVersion) as exc:
        raise CertificateInvalid(f"certificate does not parse: {exc}") from exc
    return certificate.public_bytes(Encoding.DER)


def _check_client_usage(certificate: x509.Certificate) -> None:
    """Raise CertificateInvalid for a CA certificate or one not meant for client authentication.

    A CA or server certificate signed by the client CA would otherwise work
    as a client identity once registered by mistake.
    """
    if certificate.version != x509.Version.v3:
        # A v1 certificate has no extensions to tell a CA from an end entity.
        raise CertificateInvalid("certificate is not X.509 version 3; issue client certificates as v3")
    constraints = _extension_value(certificate, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise CertificateInvalid("certificate is a CA certificate, not a client certificate")
    key_usage = _extension_value(certificate, x509.KeyUsage)
    if key_usage is not None and key_usage.key_cert_sign:
        raise CertificateInvalid("certificate may sign certificates (keyCertSign), so it is not a client certificate")
    usages = _extension_value(certificate, x509.ExtendedKeyUsage)
    if usages is None:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
        raise CertificateInvalid("certificate's extended key usage does not include clientAuth")


def _extension_value(certificate: x509.Certificate, extension_type: type) -> Any:
    """Return the value of the certificate's extension of this type, or None when it has none."""
    try:
        return certificate.extensions.get_extension_for_class(extension_type).value
    except x509.ExtensionNotFound:
        return None


def inspect_certificate(der: bytes, *, now: dt.datetime | None = None) -> CertificateFacts:
    """Parse a DER certificate and check that ``now`` lies within its validity dates.

    Raises CertificateInvalid for an unparsable certificate, a CA
    certificate, one whose extended key usage excludes clientAuth, and one
    that is expired or not yet valid. Chain and signature checks are the TLS
    terminator's job: daphne's or nginx's handshake has done them already.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        not_before = certificate.not_valid_before_utc
        not_after = certificate.not_valid_after_utc
        subject = certificate.subject.rfc4514_string()
    except (ValueError, x509.InvalidVersion) as exc:
        raise CertificateInvalid(f"certificate does not parse: {exc}") from exc
    try:
        _check_client_usage(certificate)
    except CertificateInvalid:
        raise
    except (ValueError, x509.InvalidVersion) as exc:
        # cryptography parses the version and extensions when they are first read.
        raise CertificateInvalid(f"certificate does not parse: {exc}") from exc

    now = now or dt.datetime.now(dt.timezone.utc)
    if now < not_before:
        raise CertificateInvalid(f"certificate is not valid before {not_before.isoformat()}")
    if now > not_after:
        raise CertificateInvalid(f"certificate expired at {not_after.isoformat()}")

    return CertificateFacts(
        fingerprint_sha256=sha256_fingerprint(der),
        subject=subject,
        not_before=not_before,
        not_after=not_after,
    )
