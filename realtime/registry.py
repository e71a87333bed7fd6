"""Registering and deactivating clients: the code behind the management commands."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from .certificates import der_from_pem, inspect_certificate
from .exceptions import CertificateInvalid
from .models import Client, ClientCertificate, validate_client_name

__all__ = ["RegistryError", "deactivate_client", "register_certificate", "revoke_certificate"]

logger = logging.getLogger(__name__)


class RegistryError(ValueError):
    """A registration request that cannot be carried out; the message gives the reason."""


def register_certificate(name: str, pem: bytes) -> tuple[Client, ClientCertificate, bool]:
    """Register a certificate for client ``name``, creating the client if needed.

    Returns the client, the certificate record and whether the client was
    created. Raises RegistryError for an invalid name or certificate, an
    expired certificate, or one registered already.
    """
    try:
        validate_client_name(name)
    except Exception:
        raise RegistryError(f"invalid client name {name!r}: use 1-64 letters, digits, '_', '.' or '-'") from None
    try:
        facts = inspect_certificate(der_from_pem(pem))
    except CertificateInvalid as exc:
        raise RegistryError(f"cannot register this certificate: {exc}") from exc

    with transaction.atomic():
        existing = ClientCertificate.objects.select_related("client").filter(fingerprint_sha256=facts.fingerprint_sha256).first()
        if existing is not None:
            raise RegistryError(
                f"certificate {facts.fingerprint_prefix} is already registered to client {existing.client.name!r}"
            )
        client, created = Client.objects.get_or_create(name=name)
        if not client.is_active:
            raise RegistryError(f"client {name!r} is deactivated; register the certificate under a new name")
        record = ClientCertificate.objects.create(
            client=client,
            fingerprint_sha256=facts.fingerprint_sha256,
            subject=facts.subject[:1024],
            not_before=facts.not_before,
            not_after=facts.not_after,
        )
    return client, record, created


def deactivate_client(name: str) -> tuple[Client, bool]:
    """Deactivate a client and close its open sockets on every worker.

    New handshakes are refused from the moment the transaction commits,
    because identity checks ``is_active`` on every connection. Returns the
    client and whether the revocation reached the channel layer. When it did
    not, open sockets close at their next command or periodic identity check.
    """
    with transaction.atomic():
        client = Client.objects.select_for_update().filter(name=name).first()
        if client is None:
            raise RegistryError(f"no client named {name!r}")
        if client.is_active:
            client.is_active = False
            client.deactivated_at = timezone.now()
            client.save(update_fields=["is_active", "deactivated_at"])

    from consumers.revocation import announce_revocation_sync

    try:
        announce_revocation_sync(client.pk)
    except Exception as exc:  # channel-layer backends raise their own error types
        logger.error("client %s deactivated, but the channel layer is unreachable: %s", name, exc)
        return client, False
    return client, True


def revoke_certificate(fingerprint: str) -> tuple[ClientCertificate, bool]:
    """Revoke one certificate by its SHA-256 fingerprint, or a unique prefix of at least 16 hex digits.

    Handshakes with the certificate are refused from the moment the
    transaction commits, and its open sockets are closed through the channel
    layer. The client's other certificates keep working. Returns the record
    and whether the revocation reached the channel layer.
    """
    prefix = fingerprint.strip().lower().replace(":", "")
    if len(prefix) < 16 or any(character not in "0123456789abcdef" for character in prefix):
        raise RegistryError("give the certificate's SHA-256 fingerprint in hex, at least its first 16 digits")
    with transaction.atomic():
        matches = list(
            ClientCertificate.objects.select_for_update().select_related("client").filter(fingerprint_sha256__startswith=prefix)[:2]
        )
        if not matches:
            raise RegistryError(f"no registered certificate has a fingerprint starting with {prefix}")
        if len(matches) > 1:
            raise RegistryError(f"more than one certificate matches {prefix}; give more digits")
        record = matches[0]
        if record.revoked_at is None:
            record.revoked_at = timezone.now()
            record.save(update_fields=["revoked_at"])

    from consumers.revocation import announce_revocation_sync

    try:
        announce_revocation_sync(record.client_id, fingerprint=record.fingerprint_sha256)
    except Exception as exc:  # channel-layer backends raise their own error types
        logger.error("certificate %s revoked, but the channel layer is unreachable: %s", prefix[:16], exc)
        return record, False
    return record, True
