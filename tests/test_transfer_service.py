"""The transfer service and its idempotency records, against the configured database."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Sum
from django.utils import timezone

from realtime.exceptions import IdentityRejected, InvalidMessage
from realtime.models import Client
from realtime.registry import register_certificate, revoke_certificate
from transfers.audit import audit_ledger
from transfers.exceptions import IdempotencyInProgress, IdempotencyKeyMismatch
from transfers.models import Account, IdempotencyRecord, LedgerEntry, Transfer
from transfers.service import execute_transfer
from transfers.validation import InvalidAmount, TransferRequest, parse_transfer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def accounts() -> dict[str, Account]:
    alice = Client.objects.create(name="alice")
    bob = Client.objects.create(name="bob")
    rows = {
        "S-1": Account(id="S-1", owner=alice, currency="USD", balance=Decimal("100.00"), opening_balance=Decimal("100.00")),
        "S-2": Account(id="S-2", owner=bob, currency="USD", balance=Decimal("0.00"), opening_balance=Decimal("0.00")),
    }
    for account in rows.values():
        account.save()
    return rows


def request(amount: str = "10.00", **overrides: str) -> TransferRequest:
    return parse_transfer({"from_account": "S-1", "to_account": "S-2", "amount": amount, "currency": "USD", **overrides})


def client_id(name: str = "alice") -> int:
    return Client.objects.get(name=name).pk


def test_execute_moves_money_once(accounts: dict[str, Account]) -> None:
    outcome = execute_transfer(client_id=client_id(), key="k1", request=request(), channel="http")
    assert outcome.status == 201
    assert outcome.code is None
    assert outcome.replayed is False
    retry = execute_transfer(client_id=client_id(), key="k1", request=request("10.0"), channel="ws")
    assert retry.replayed is True
    assert retry.body == outcome.body
    assert Account.objects.get(pk="S-1").balance == Decimal("90.00")
    assert Account.objects.get(pk="S-2").balance == Decimal("10.00")
    assert Transfer.objects.count() == 1
    assert LedgerEntry.objects.count() == 2
    assert LedgerEntry.objects.aggregate(total=Sum("amount"))["total"] == 0


def test_mismatch_and_refusal(accounts: dict[str, Account]) -> None:
    execute_transfer(client_id=client_id(), key="k2", request=request("1.00"), channel="http")
    with pytest.raises(IdempotencyKeyMismatch):
        execute_transfer(client_id=client_id(), key="k2", request=request("2.00"), channel="http")
    refused = execute_transfer(client_id=client_id(), key="k3", request=request("1000.00"), channel="http")
    assert refused.status == 422
    assert refused.code == "transfer.insufficient_funds"
    assert json.loads(refused.body)["code"] == "transfer.insufficient_funds"
    assert Account.objects.get(pk="S-1").balance == Decimal("99.00")


def test_live_lease_reports_in_progress(accounts: dict[str, Account]) -> None:
    now = timezone.now()
    IdempotencyRecord.objects.create(
        client_id=client_id(),
        key="busy",
        request_fingerprint=request().fingerprint(),
        state=IdempotencyRecord.State.IN_PROGRESS,
        lease_token=uuid.uuid4(),
        lease_expires_at=now + dt.timedelta(seconds=20),
        created_at=now,
        expires_at=now + dt.timedelta(hours=1),
    )
    with pytest.raises(IdempotencyInProgress) as caught:
        execute_transfer(client_id=client_id(), key="busy", request=request(), channel="http")
    assert 1 <= caught.value.retry_after <= 20
    assert Transfer.objects.count() == 0


def test_expired_lease_taken_over_once(accounts: dict[str, Account]) -> None:
    now = timezone.now()
    IdempotencyRecord.objects.create(
        client_id=client_id(),
        key="orphan",
        request_fingerprint=request().fingerprint(),
        state=IdempotencyRecord.State.IN_PROGRESS,
        lease_token=uuid.uuid4(),
        lease_expires_at=now - dt.timedelta(seconds=1),
        created_at=now,
        expires_at=now + dt.timedelta(hours=1),
    )
    outcome = execute_transfer(client_id=client_id(), key="orphan", request=request(), channel="http")
    assert outcome.status == 201
    again = execute_transfer(client_id=client_id(), key="orphan", request=request(), channel="http")
    assert again.replayed is True
    assert Transfer.objects.count() == 1


def test_expired_key_of_executed_transfer_not_reused(accounts: dict[str, Account]) -> None:
    execute_transfer(client_id=client_id(), key="old", request=request("1.00"), channel="http")
    IdempotencyRecord.objects.filter(key="old").update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    outcome = execute_transfer(client_id=client_id(), key="old", request=request("1.00"), channel="http")
    assert outcome.status == 422
    assert outcome.code == "idempotency.key_expired"
    assert Transfer.objects.count() == 1


def test_deactivated_client_refused_and_key_released(accounts: dict[str, Account]) -> None:
    Client.objects.filter(name="alice").update(is_active=False)
    with pytest.raises(IdentityRejected):
        execute_transfer(client_id=client_id(), key="gone", request=request(), channel="ws")
    assert not IdempotencyRecord.objects.filter(key="gone").exists()
    assert Transfer.objects.count() == 0


@pytest.mark.parametrize(
    ("transfer", "error"),
    [
        ({"from_account": "S-1", "to_account": "S-1", "amount": "1.00", "currency": "USD"}, InvalidMessage),
        ({"from_account": "S-1", "to_account": "S-2", "amount": "0", "currency": "USD"}, InvalidAmount),
        ({"from_account": "S-1", "to_account": "S-2", "amount": "1.00", "currency": "USD", "memo": "x"}, InvalidMessage),
    ],
)
def test_parse_transfer_rejects(transfer: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_transfer(transfer)


def test_fingerprint_normalises() -> None:
    one = parse_transfer({"amount": "1.5", "currency": "USD", "from_account": "A", "to_account": "B"})
    two = parse_transfer({"to_account": "B", "from_account": "A", "currency": "USD", "amount": "1.50", "reference": None})
    three = parse_transfer({"to_account": "B", "from_account": "A", "currency": "USD", "amount": "1.51"})
    assert one.fingerprint() == two.fingerprint()
    assert one.fingerprint() != three.fingerprint()


def test_audit_ledger_passes_then_detects_tampering(accounts: dict[str, Account]) -> None:
    for index in range(3):
        execute_transfer(client_id=client_id(), key=f"audit-{index}", request=request("5.00"), channel="http")
    audit = audit_ledger()
    assert audit.ok, audit.problems
    assert (audit.transfers, audit.entries) == (3, 6)
    call_command("audit_ledger")

    Account.objects.filter(pk="S-2").update(balance=Decimal("1000.00"))
    LedgerEntry.objects.filter(amount__gt=0).first().delete()
    tampered = audit_ledger()
    assert not tampered.ok
    assert any("S-2" in problem for problem in tampered.problems)
    assert any("has entries" in problem for problem in tampered.problems)
    with pytest.raises(CommandError, match="ledger audit failed"):
        call_command("audit_ledger")


def test_largest_amounts_stored_exactly(accounts: dict[str, Account]) -> None:
    largest = "9999999999999.99"
    Account.objects.filter(pk="S-1").update(balance=Decimal(largest), opening_balance=Decimal(largest))
    execute_transfer(client_id=client_id(), key="big-1", request=request("0.01"), channel="http")
    execute_transfer(client_id=client_id(), key="big-2", request=request("1234567890123.45"), channel="http")
    assert Account.objects.get(pk="S-1").balance == Decimal("8765432109876.53")
    assert Account.objects.get(pk="S-2").balance == Decimal("1234567890123.46")
    assert audit_ledger().ok


def test_credit_beyond_maximum_balance_refused(accounts: dict[str, Account]) -> None:
    Account.objects.filter(pk="S-1").update(balance=Decimal("100.00"))
    Account.objects.filter(pk="S-2").update(balance=Decimal("9999999999999.99"), opening_balance=Decimal("9999999999999.99"))
    refused = execute_transfer(client_id=client_id(), key="limit-1", request=request("0.01"), channel="http")
    assert refused.status == 422
    assert refused.code == "transfer.balance_limit"
    with pytest.raises(InvalidAmount):
        parse_transfer({"from_account": "S-1", "to_account": "S-2", "amount": "10000000000000.00", "currency": "USD"})


def test_revoked_certificate_refused_per_command(accounts: dict[str, Account], pki) -> None:
    _, record, _ = register_certificate("alice", pki.cert("alice").read_bytes())
    _, other, _ = register_certificate("alice", pki.cert("erin").read_bytes())
    outcome = execute_transfer(
        client_id=client_id(), key="cert-1", request=request("1.00"), channel="ws", certificate_fingerprint=record.fingerprint_sha256
    )
    assert outcome.status == 201
    revoked, announced = revoke_certificate(record.fingerprint_sha256[:16])
    assert revoked.revoked_at is not None
    assert announced is True
    with pytest.raises(IdentityRejected) as caught:
        execute_transfer(
            client_id=client_id(), key="cert-2", request=request("1.00"), channel="ws", certificate_fingerprint=record.fingerprint_sha256
        )
    assert caught.value.code == "identity.certificate_revoked"
    still_valid = execute_transfer(
        client_id=client_id(), key="cert-3", request=request("1.00"), channel="ws", certificate_fingerprint=other.fingerprint_sha256
    )
    assert still_valid.status == 201
