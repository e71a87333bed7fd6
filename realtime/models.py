"""Registered trading clients and the certificates that identify them."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

CLIENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"

validate_client_name = RegexValidator(
    CLIENT_NAME_PATTERN,
    "A client name is 1-64 characters of letters, digits, '_', '.' and '-', "
    "starting with a letter or digit.",
)


class Client(models.Model):
    """A trading firm's client program, identified by one or more certificates.

    The name is the client's identity everywhere else: nonces, sessions and
    idempotency keys live in its namespace, so rotating a certificate keeps
    them.
    """

    name = models.CharField(max_length=64, unique=True, validators=[validate_client_name])
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class ClientCertificate(models.Model):
    """A certificate registered for a client, looked up by its SHA-256 fingerprint."""

    client = models.ForeignKey(Client, on_delete=models.CASCADE, related_name="certificates")
    # Lower-case hex SHA-256 of the certificate's DER encoding.
    fingerprint_sha256 = models.CharField(max_length=64, unique=True)
    subject = models.CharField(max_length=1024)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    registered_at = models.DateTimeField(auto_now_add=True)
    # Set by revoke_certificate: the certificate no longer identifies its
    # client, while the client's other certificates still do.
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.client.name} {self.fingerprint_sha256[:16]}"
