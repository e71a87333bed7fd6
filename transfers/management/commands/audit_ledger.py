"""Check the ledger's invariants; exit 1 when any is broken."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from transfers.audit import audit_ledger


class Command(BaseCommand):
    help = (
        "Check that every transfer has one debit and one credit summing to zero, that every "
        "balance equals its opening balance plus its entries and is not negative, and that all "
        "entries sum to zero. Exits 1 and lists the problems when any check fails."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        audit = audit_ledger()
        self.stdout.write(f"{audit.accounts} accounts, {audit.transfers} transfers, {audit.entries} ledger entries")
        if not audit.ok:
            for problem in audit.problems:
                self.stderr.write(problem)
            raise CommandError(f"ledger audit failed with {len(audit.problems)} problem(s)")
        self.stdout.write("ledger consistent")
