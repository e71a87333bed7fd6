"""Revoke one client certificate, keeping the client and its other certificates."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.registry import RegistryError, revoke_certificate


class Command(BaseCommand):
    help = (
        "Revoke the certificate with this SHA-256 fingerprint (hex, or a unique prefix of at least 16 "
        "digits, as register_client prints it). Its handshakes are refused at once and its open "
        "WebSockets are closed (code 4001); the client's other certificates keep working."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("fingerprint", help="SHA-256 fingerprint of the certificate, in hex.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            record, announced = revoke_certificate(options["fingerprint"])
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"revoked certificate {record.fingerprint_sha256} of client {record.client.name!r}")
        if not announced:
            self.stderr.write(
                "warning: the channel layer could not be reached, so open sockets were not closed now; "
                "each is closed at its next command or periodic identity check (REVOCATION_RECHECK_S)"
            )
