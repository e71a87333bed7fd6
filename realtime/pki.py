"""A development certificate authority built with ``cryptography``.

``devpki`` and the tests use it to issue a CA, a server certificate and
client certificates at run time. Production deployments issue client
certificates from their own CA (see docs/deploy.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Authority", "IssuedCertificate", "write_private_key"]


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (mode 644) and the private key (mode 600)."""
        cert_path.write_bytes(self.certificate_pem)
        write_private_key(key_path, self.private_key_pem)


def write_private_key(path: Path, pem: bytes) -> None:
    """Create or replace ``path`` readable by its owner only; the key never exists with wider modes."""
    if path.exists():
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Authority:
    """A self-signed CA that issues server and client certificates (ECDSA P-256)."""

    def __init__(self, common_name: str = "Realtime development CA", *, valid_days: int = 365) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.private_key.public_key()), critical=False)
            .sign(self.private_key, hashes.SHA256())
        )

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        *,
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
        alternative_names: list[x509.GeneralName] | None = None,
    ) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + dt.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()), critical=False
            )
        )
        if alternative_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        return IssuedCertificate(builder.sign(self.private_key, hashes.SHA256()), key)

    def issue_server(self, hostnames: tuple[str, ...] = ("localhost",), addresses: tuple[str, ...] = ("127.0.0.1", "::1")) -> IssuedCertificate:
        """Issue a server certificate (EKU serverAuth) for the given names and addresses."""
        names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
        return self._issue(
            hostnames[0],
            ExtendedKeyUsageOID.SERVER_AUTH,
            not_before=None,
            not_after=None,
            alternative_names=names,
        )

    def issue_client(
        self,
        name: str,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """Issue a client certificate (EKU clientAuth) with ``name`` as its common name."""
        return self._issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, not_before=not_before, not_after=not_after)

    def issue_crl(self, revoked: list[x509.Certificate], *, valid_for: dt.timedelta = dt.timedelta(days=1)) -> x509.CertificateRevocationList:
        """Issue a CRL that revokes ``revoked``, with nextUpdate ``valid_for`` from now."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + valid_for)
        )
        for certificate in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(certificate.serial_number)
                .revocation_date(now - dt.timedelta(minutes=1))
                .build()
            )
        return builder.sign(self.private_key, hashes.SHA256())
