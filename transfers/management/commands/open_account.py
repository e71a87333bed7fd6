"""Open an account for a registered client."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError, transaction

from realtime.exceptions import InvalidMessage
from realtime.models import Client
from transfers.models import Account
from transfers.validation import parse_amount


class Command(BaseCommand):
    help = "Open account ACCOUNT_ID for client --owner in --currency with an opening --balance."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("account_id", help="Account id: 1-64 characters of A-Z a-z 0-9 _ . : -")
        parser.add_argument("--owner", required=True, help="Name of a registered client.")
        parser.add_argument("--currency", required=True, help="ISO 4217 code, e.g. USD.")
        parser.add_argument("--balance", default="0", help="Opening balance as a decimal string, e.g. 1000.00 (default 0).")

    def handle(self, *args: Any, **options: Any) -> None:
        owner = Client.objects.filter(name=options["owner"]).first()
        if owner is None:
            raise CommandError(f"no client named {options['owner']!r}; register it first with register_client")
        balance_text = options["balance"]
        if balance_text in ("0", "0.0", "0.00"):
            balance = Decimal("0")
        else:
            try:
                balance = parse_amount(balance_text)
            except InvalidMessage as exc:
                raise CommandError(f"--balance: {exc.detail}") from None
        account = Account(
            id=options["account_id"],
            owner=owner,
            currency=options["currency"],
            balance=balance,
            opening_balance=balance,
        )
        try:
            account.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())) from None
        try:
            with transaction.atomic():
                account.save(force_insert=True)
        except IntegrityError:
            raise CommandError(f"account {account.id!r} already exists") from None
        self.stdout.write(f"opened account {account.id} for {owner.name}: {account.balance:.2f} {account.currency}")
