"""Run daphne with mutual TLS, a unix socket for a proxy, or both."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Serve the HTTP API and WebSockets with daphne. With --port, daphne terminates "
        "mutual TLS itself and requires a client certificate signed by --client-ca. With "
        "--unix-socket, it serves plain HTTP on a socket (mode 660) for a TLS-terminating proxy."
    )
    # The string "__all__" runs every check; a list would name tags to run.
    requires_system_checks = "__all__"

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address of the TLS listener (default 127.0.0.1).")
        parser.add_argument("--port", type=int, help="Port of the TLS listener; 0 picks a free port and prints it.")
        parser.add_argument("--tls-cert", help="PEM file with the server certificate, then any intermediates.")
        parser.add_argument("--tls-key", help="PEM file with the server's private key.")
        parser.add_argument("--client-ca", help="PEM file with the CA certificates that sign client certificates.")
        parser.add_argument("--unix-socket", help="Path of a unix socket for the proxy (plain HTTP, mode 660).")
        parser.add_argument(
            "--ping-interval",
            type=int,
            default=20,
            help="Seconds between WebSocket pings on an idle connection (default 20).",
        )
        parser.add_argument(
            "--access-log",
            default=None,
            help="File for daphne's access log, '-' for standard output (default: none).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Importing the server installs Twisted's asyncio reactor, which must
        # happen before anything imports twisted.internet.reactor.
        from daphne.cli import CommandLineInterface

        from realtime.server import MutualTLSServer
        from realtime.tls import endpoint_description, quote_endpoint_value

        endpoints = []
        if options["port"] is not None:
            for name in ("tls_cert", "tls_key", "client_ca"):
                if not options[name]:
                    raise CommandError(f"--{name.replace('_', '-')} is required with --port")
                if not Path(options[name]).is_file():
                    raise CommandError(f"--{name.replace('_', '-')}: file not found: {options[name]}")
            if not 0 <= options["port"] <= 65535:
                raise CommandError(f"--port must be between 0 and 65535, got {options['port']}")
            endpoints.append(
                endpoint_description(
                    host=options["host"],
                    port=options["port"],
                    cert=options["tls_cert"],
                    key=options["tls_key"],
                    client_ca=options["client_ca"],
                )
            )
        if options["unix_socket"]:
            path = Path(options["unix_socket"]).resolve()
            if not path.parent.is_dir():
                raise CommandError(f"--unix-socket: directory does not exist: {path.parent}")
            if path.exists():
                if not path.is_socket():
                    raise CommandError(f"--unix-socket: {path} exists and is not a socket")
                path.unlink()
            endpoints.append(f"unix:address={quote_endpoint_value(str(path))}:mode=660:lockfile=0")
        if not endpoints:
            raise CommandError("give --port with --tls-cert, --tls-key and --client-ca, or --unix-socket, or both")

        self._check_replay_store()

        class _CommandLine(CommandLineInterface):
            server_class = MutualTLSServer

        argv = []
        for endpoint in endpoints:
            argv += ["-e", endpoint]
        argv += [
            "--ping-interval",
            str(options["ping_interval"]),
            "--ping-timeout",
            str(options["ping_interval"] + 10),
            "--websocket-max-frame-size",
            str(settings.WS_MAX_MESSAGE_BYTES),
            "--websocket-max-message-size",
            str(settings.WS_MAX_MESSAGE_BYTES),
            "--websocket_timeout",
            str(settings.WS_MAX_LIFETIME_S),
            "--websocket_connect_timeout",
            "10",
            "-v",
            "1" if options["verbosity"] >= 2 else "0",
        ]
        if options["access_log"]:
            argv += ["--access-log", options["access_log"]]
        module, _, attribute = settings.ASGI_APPLICATION.rpartition(".")
        argv.append(f"{module}:{attribute}")
        # Twisted chmods the unix socket to 660 after bind(); the umask
        # closes the moment in between, when it would have default modes.
        os.umask(0o007)
        _CommandLine().run(argv)

    def _check_replay_store(self) -> None:
        """Refuse to start on a Redis that can evict recorded nonces or cannot be reached."""
        if not settings.REDIS_URL:
            self.stderr.write(
                "Replay store: in-memory (single process, lost on restart). Set REDIS_URL for production."
            )
            return
        from realtime.redis_admin import EvictionPolicyError, RedisAdminError, verify_eviction_policy

        try:
            verify_eviction_policy(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER)
        except EvictionPolicyError as exc:
            raise CommandError(str(exc)) from exc
        except RedisAdminError as exc:
            # Fail closed at run time instead: commands are rejected as
            # "unavailable" until Redis replies.
            self.stderr.write(f"Warning: {exc}; commands are rejected until Redis is reachable")
