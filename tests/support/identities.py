"""Registered identities for consumer tests that run without TLS."""

from __future__ import annotations

import datetime as dt

from realtime.identity import ClientIdentity
from realtime.models import Client, ClientCertificate


def register_identity(
    name: str,
    *,
    fingerprint: str | None = None,
    active: bool = True,
    not_after: dt.datetime | None = None,
) -> ClientIdentity:
    """Create a client with one registered certificate and return the identity the middleware would set."""
    fingerprint = fingerprint or (name.encode().hex() * 64)[:64]
    not_after = not_after or dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    client = Client.objects.create(name=name, is_active=active)
    ClientCertificate.objects.create(
        client=client,
        fingerprint_sha256=fingerprint,
        subject=f"CN={name}",
        not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1),
        not_after=not_after,
    )
    return ClientIdentity(client_id=client.pk, name=name, fingerprint_sha256=fingerprint, not_after=not_after, source="tls")
