"""Deactivate a client: refuse its handshakes and close its open sockets."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.registry import RegistryError, deactivate_client


class Command(BaseCommand):
    help = (
        "Deactivate client NAME. New handshakes are rejected at once, and open WebSockets are closed "
        "(code 4001) through the channel layer, on every worker when REDIS_URL is set."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Name of the client to deactivate.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            client, announced = deactivate_client(options["name"])
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"deactivated client {client.name!r}")
        if not announced:
            self.stderr.write(
                "warning: the channel layer could not be reached, so open sockets were not closed now; "
                "each is closed at its next command or periodic identity check (REVOCATION_RECHECK_S)"
            )
