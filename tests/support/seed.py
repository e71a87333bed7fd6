"""Seed a test database with clients and accounts; runs as a subprocess.

Usage: python tests/support/seed.py SPEC.json, with DATABASE_URL set. The
spec is {"clients": [[name, certificate_path], ...], "accounts":
[[id, owner, currency, balance], ...]}.
"""

import json
import os
import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime.settings")

import django  # noqa: E402

django.setup()

from realtime.registry import register_certificate  # noqa: E402
from realtime.models import Client  # noqa: E402
from transfers.models import Account  # noqa: E402


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    for name, certificate in spec.get("clients", []):
        register_certificate(name, Path(certificate).read_bytes())
    for account_id, owner, currency, balance in spec.get("accounts", []):
        Account.objects.create(
            id=account_id,
            owner=Client.objects.get(name=owner),
            currency=currency,
            balance=Decimal(balance),
            opening_balance=Decimal(balance),
        )


if __name__ == "__main__":
    main()
