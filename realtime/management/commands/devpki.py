"""Write a development CA, a server certificate and client certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.models import validate_client_name
from realtime.pki import Authority, write_private_key


class Command(BaseCommand):
    help = (
        "Write DIR/ca.pem, DIR/server.pem and DIR/server.key (for localhost, 127.0.0.1 and ::1) and "
        "DIR/NAME.pem and DIR/NAME.key for each --client. Private keys get mode 600. An existing "
        "DIR/ca.pem with DIR/ca.key is reused, and with it an existing server certificate and key, so "
        "clients can be added later. For development only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, help="Directory to write into; created with mode 700 if missing.")
        parser.add_argument(
            "--client", action="append", default=[], metavar="NAME", help="Issue a client certificate; repeatable."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        out = Path(options["out"])
        names: list[str] = options["client"]
        for name in names:
            try:
                validate_client_name(name)
            except Exception:
                raise CommandError(
                    f"invalid client name {name!r}: use 1-64 letters, digits, '_', '.' or '-'"
                ) from None
        if len(set(names)) != len(names):
            raise CommandError("each --client name must be given once")
        if {"ca", "server"} & set(names):
            raise CommandError("'ca' and 'server' are reserved file names; choose another client name")
        if out.exists() and not out.is_dir():
            raise CommandError(f"--out {out} exists and is not a directory")
        out.mkdir(mode=0o700, parents=True, exist_ok=True)

        authority, reused = self._load_or_create_authority(out)
        if reused and (out / "server.pem").exists() and (out / "server.key").exists():
            # A running server may use these files; adding clients keeps them.
            self.stdout.write(f"keeping {out / 'server.pem'} and {out / 'server.key'}")
        else:
            authority.issue_server().write(out / "server.pem", out / "server.key")
            self.stdout.write(f"wrote {out / 'server.pem'} and {out / 'server.key'}")
        for name in names:
            issued = authority.issue_client(name)
            issued.write(out / f"{name}.pem", out / f"{name}.key")
            self.stdout.write(f"wrote {out / (name + '.pem')} and {out / (name + '.key')}")

    def _load_or_create_authority(self, out: Path) -> tuple[Authority, bool]:
        ca_pem, ca_key = out / "ca.pem", out / "ca.key"
        if ca_pem.exists() and ca_key.exists():
            authority = Authority.__new__(Authority)
            try:
                authority.certificate = x509.load_pem_x509_certificate(ca_pem.read_bytes())
                authority.private_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)  # type: ignore[assignment]
            except ValueError as exc:
                raise CommandError(f"{ca_pem} or {ca_key} could not be read ({exc}); remove both to start over") from exc
            self.stdout.write(f"reusing the CA in {ca_pem}")
            return authority, True
        authority = Authority()
        ca_pem.write_bytes(authority.certificate_pem)
        write_private_key(
            ca_key,
            authority.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        self.stdout.write(f"wrote {ca_pem} and {ca_key}")
        return authority, False
