"""Ledger invariants, checked from the database alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction

from .models import Account, LedgerEntry, Transfer

__all__ = ["LedgerAudit", "audit_ledger"]


@dataclass
class LedgerAudit:
    """Result of an audit: counts, and one line per broken invariant."""

    accounts: int = 0
    transfers: int = 0
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit_ledger(max_problems: int = 50) -> LedgerAudit:
    """Check every invariant of the double-entry ledger in one consistent snapshot.

    - every transfer has exactly two entries, a debit and a credit, that sum to zero;
    - every account's balance is its opening balance plus its entries, and not negative;
    - all entries together sum to zero.
    """
    audit = LedgerAudit()
    with transaction.atomic():
        audit.accounts = Account.objects.count()
        audit.transfers = Transfer.objects.count()
        audit.entries = LedgerEntry.objects.count()

        # Decimal sums are added up in Python: SQLite's SUM() of decimals is a float.
        per_transfer: dict[object, list[Decimal]] = {}
        per_account: dict[str, Decimal] = {}
        for transfer_id, account_id, amount in LedgerEntry.objects.values_list("transfer_id", "account_id", "amount").iterator():
            per_transfer.setdefault(transfer_id, []).append(amount)
            per_account[account_id] = per_account.get(account_id, Decimal(0)) + amount

        for transfer_id in Transfer.objects.values_list("id", flat=True).iterator():
            amounts = per_transfer.pop(transfer_id, [])
            if len(amounts) != 2 or sum(amounts) != 0 or min(amounts) >= 0:
                audit.problems.append(f"transfer {transfer_id} has entries {[str(amount) for amount in amounts]}")
        for transfer_id in per_transfer:
            audit.problems.append(f"entries reference missing transfer {transfer_id}")

        for account_id, balance, opening in Account.objects.values_list("id", "balance", "opening_balance").iterator():
            expected = opening + per_account.get(account_id, Decimal(0))
            if balance != expected:
                audit.problems.append(f"account {account_id} balance {balance} != opening {opening} + entries = {expected}")
            if balance < 0:
                audit.problems.append(f"account {account_id} balance {balance} is negative")

        total = sum(per_account.values(), Decimal(0))
        if total != 0:
            audit.problems.append(f"all entries sum to {total}, not 0")

    del audit.problems[max_problems:]
    return audit

