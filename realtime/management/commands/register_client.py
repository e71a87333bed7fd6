"""Register a client certificate under a client name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.registry import RegistryError, register_certificate

_MAX_PEM_BYTES = 64 * 1024


class Command(BaseCommand):
    help = "Register CERT.pem for client NAME, creating the client if it does not exist."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Client name: 1-64 letters, digits, '_', '.' or '-'.")
        parser.add_argument("certificate", help="PEM file with exactly one client certificate.")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["certificate"])
        if not path.is_file():
            raise CommandError(f"certificate file not found: {path}")
        if path.stat().st_size > _MAX_PEM_BYTES:
            raise CommandError(f"{path} is larger than {_MAX_PEM_BYTES} bytes; expected one PEM certificate")
        try:
            client, record, created = register_certificate(options["name"], path.read_bytes())
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        action = "created client" if created else "added a certificate to client"
        self.stdout.write(
            f"{action} {client.name!r}: certificate sha256 {record.fingerprint_sha256}, valid until "
            f"{record.not_after.isoformat()}"
        )
