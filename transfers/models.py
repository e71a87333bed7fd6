"""Double-entry ledger: accounts, transfers, ledger entries and idempotency records."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.core.validators import RegexValidator
from django.db import models

from realtime.models import Client

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z"
CURRENCY_PATTERN = r"^[A-Z]{3}\Z"

# Amounts and balances have at most 13 integer digits and 2 decimal places:
# 15 significant digits, the most that SQLite's REAL storage returns exactly.
# PostgreSQL would store more, but both databases must agree.
AMOUNT_MAX_DIGITS = 15
BALANCE_MAX_DIGITS = 15
MAX_BALANCE = Decimal("9999999999999.99")
DECIMAL_PLACES = 2


class Account(models.Model):
    """An account owned by one client, in one currency; the balance never goes negative."""

    id = models.CharField(
        primary_key=True,
        max_length=64,
        validators=[RegexValidator(ACCOUNT_ID_PATTERN, "An account id is 1-64 characters of A-Z a-z 0-9 _ . : -")],
    )
    owner = models.ForeignKey(Client, on_delete=models.PROTECT, related_name="accounts")
    currency = models.CharField(max_length=3, validators=[RegexValidator(CURRENCY_PATTERN, "ISO 4217 code")])
    balance = models.DecimalField(max_digits=BALANCE_MAX_DIGITS, decimal_places=DECIMAL_PLACES)
    # Balance when the account was opened. The ledger audit checks that
    # balance == opening_balance + the sum of the account's entries.
    opening_balance = models.DecimalField(max_digits=BALANCE_MAX_DIGITS, decimal_places=DECIMAL_PLACES)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(balance__gte=0), name="account_balance_not_negative"),
            models.CheckConstraint(condition=models.Q(balance__lte=MAX_BALANCE), name="account_balance_within_limit"),
        ]

    def __str__(self) -> str:
        return self.id


class Transfer(models.Model):
    """An executed movement of money between two accounts."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client = models.ForeignKey(Client, on_delete=models.PROTECT, related_name="transfers")
    idempotency_key = models.CharField(max_length=255)
    # Hex SHA-256 of the normalised transfer object, to detect a key reused
    # for a different transfer.
    request_fingerprint = models.CharField(max_length=64)
    from_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    to_account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    amount = models.DecimalField(max_digits=AMOUNT_MAX_DIGITS, decimal_places=DECIMAL_PLACES)
    currency = models.CharField(max_length=3)
    reference = models.CharField(max_length=140, blank=True, default="")
    # "ws" or "http": the API the first request arrived on.
    channel = models.CharField(max_length=8)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "idempotency_key"], name="transfer_unique_idempotency_key"),
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="transfer_amount_positive"),
        ]


class LedgerEntry(models.Model):
    """One side of a transfer: a debit (negative) or a credit (positive)."""

    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    amount = models.DecimalField(max_digits=AMOUNT_MAX_DIGITS, decimal_places=DECIMAL_PLACES)
    balance_after = models.DecimalField(max_digits=BALANCE_MAX_DIGITS, decimal_places=DECIMAL_PLACES)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["account", "created_at"])]


class IdempotencyRecord(models.Model):
    """An Idempotency-Key of one client and the response stored against it.

    A record is ``in_progress`` while one request holds its lease and
    ``completed`` once the response is stored. The response is stored in the
    same transaction as the transfer it describes, so a stored response and
    its transfer exist together or not at all.
    """

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"

    client = models.ForeignKey(Client, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices)
    lease_token = models.UUIDField(null=True)
    lease_expires_at = models.DateTimeField(null=True)
    response_status = models.PositiveSmallIntegerField(null=True)
    # The protocol's rejection code for a stored refusal, "" for a success.
    response_code = models.CharField(max_length=64, blank=True, default="")
    response_body = models.TextField(blank=True, default="")
    transfer = models.OneToOneField(Transfer, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "key"], name="idempotency_unique_client_key"),
        ]
