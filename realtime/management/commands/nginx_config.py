"""Write the nginx site that terminates mutual TLS in front of the daphne workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.nginx import NginxSite, render_nginx_config


class Command(BaseCommand):
    help = (
        "Render deploy/nginx/realtime.conf.template into an nginx site: mutual TLS on --listen, "
        "WebSocket and HTTP proxying to each --worker-socket, identity headers that replace "
        "whatever the client sent. Writes to --output, or to standard output."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--server-name", required=True, help="Host name(s) clients connect to, separated by spaces.")
        parser.add_argument(
            "--listen",
            action="append",
            default=[],
            help="Address and port nginx listens on, e.g. 443, [::]:443 or 127.0.0.1:8443; repeatable (default 443).",
        )
        parser.add_argument("--tls-cert", required=True, help="PEM file with the server certificate and any intermediates.")
        parser.add_argument("--tls-key", required=True, help="PEM file with the server's private key.")
        parser.add_argument("--client-ca", required=True, help="PEM bundle of the CAs that sign client certificates.")
        parser.add_argument("--crl", help="PEM file with the CRLs of those CAs (optional).")
        parser.add_argument(
            "--worker-socket",
            action="append",
            default=[],
            required=True,
            help="Unix socket of one daphne worker (serve --unix-socket); repeat once per worker.",
        )
        parser.add_argument(
            "--ping-interval",
            type=int,
            default=20,
            help="The workers' serve --ping-interval in seconds (default 20); sets proxy_read_timeout to 3 times it.",
        )
        parser.add_argument(
            "--max-body-bytes",
            type=int,
            help="Largest request body in bytes (default: the app's HTTP_MAX_BODY_BYTES).",
        )
        parser.add_argument("--access-log", default="/var/log/nginx/realtime.access.log", help="nginx access log file.")
        parser.add_argument("--error-log", default="/var/log/nginx/realtime.error.log", help="nginx error log file.")
        parser.add_argument("--output", help="File to write; standard output when omitted.")

    def handle(self, *args: Any, **options: Any) -> None:
        site = NginxSite(
            server_name=options["server_name"],
            listen=tuple(options["listen"]) or ("443",),
            tls_certificate=_absolute(options["tls_cert"]),
            tls_certificate_key=_absolute(options["tls_key"]),
            client_ca=_absolute(options["client_ca"]),
            crl=_absolute(options["crl"]) if options["crl"] else None,
            worker_sockets=tuple(_absolute(path) for path in options["worker_socket"]),
            ping_interval=options["ping_interval"],
            max_body_bytes=options["max_body_bytes"],
            access_log=_absolute(options["access_log"]),
            error_log=_absolute(options["error_log"]),
        )
        try:
            text = render_nginx_config(site)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        if not options["output"]:
            self.stdout.write(text, ending="")
            return
        output = Path(options["output"])
        temporary = output.with_name(f".{output.name}.tmp")
        temporary.write_text(text)
        # Replaced in one step, so a reload never reads half a file.
        os.replace(temporary, output)
        self.stderr.write(f"wrote {output}; check it with 'nginx -t', then reload nginx")


def _absolute(path: str) -> Path:
    return Path(os.path.abspath(path))
