"""Exactly-once execution of transfers under an Idempotency-Key.

A request runs in two transactions:

1. *Claim*: insert an ``in_progress`` record for (client, key) holding a
   lease. The unique constraint on (client, key) lets exactly one request
   win. The others find the record and get the stored response, a key
   mismatch, or ``idempotency.in_progress`` while the lease is live. A lease
   that expired (its worker died) is taken over with a compare-and-set on
   the lease token.
2. *Execute*: lock the record, check the lease token is still ours, lock
   both accounts in id order, apply the transfer and store the response,
   all in one transaction. A business refusal is stored the same way.

A database failure rolls back the second transaction and releases the
claim, so nothing is stored and a retry executes once. If the release
fails too, the key stays locked until the lease expires.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from realtime.exceptions import IdentityRejected
from realtime.models import Client, ClientCertificate
from realtime.problems import problem_body

from .exceptions import (
    DatabaseUnavailable,
    IdempotencyInProgress,
    IdempotencyKeyExpired,
    IdempotencyKeyMismatch,
    TransferRefused,
)
from .models import MAX_BALANCE, Account, IdempotencyRecord, LedgerEntry, Transfer
from .validation import TransferRequest

__all__ = ["TransferOutcome", "execute_transfer", "render_transfer"]

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS = (OperationalError, InterfaceError)


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """The response stored against a key: a success or a business refusal."""

    status: int
    # None for a success, else the protocol's rejection code.
    code: str | None
    # The HTTP response body, returned byte for byte on every replay.
    body: str
    replayed: bool
    key_expires_at: dt.datetime

    def document(self) -> dict[str, Any]:
        """Return the decoded body: the transfer object or the problem object."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class _Claim:
    record_id: int
    token: uuid.UUID
    expires_at: dt.datetime


def render_transfer(transfer: Transfer) -> str:
    """Render the transfer object of API responses; ``id`` comes first."""
    created_at = transfer.created_at.astimezone(dt.timezone.utc)
    document = {
        "id": str(transfer.id),
        "from_account": transfer.from_account_id,
        "to_account": transfer.to_account_id,
        "amount": f"{Decimal(transfer.amount):.2f}",
        "currency": transfer.currency,
        "reference": transfer.reference,
        "created_at": created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return json.dumps(document, separators=(",", ":"))


def execute_transfer(
    *,
    client_id: int,
    key: str,
    request: TransferRequest,
    channel: str,
    certificate_fingerprint: str | None = None,
) -> TransferOutcome:
    """Execute ``request`` once for (client, key), or return the response stored for it.

    Runs synchronously; call it from a database thread. Raises
    IdempotencyKeyMismatch, IdempotencyInProgress, IdentityRejected (the
    client was deactivated, or ``certificate_fingerprint`` names a revoked
    certificate) or DatabaseUnavailable; none of these store anything
    against the key.
    """
    fingerprint = request.fingerprint()
    try:
        claim = _claim(client_id, key, fingerprint)
        if isinstance(claim, TransferOutcome):
            return claim
        try:
            return _execute(claim, client_id, key, fingerprint, request, channel, certificate_fingerprint)
        except BaseException:
            _release(claim)
            raise
    except _CONNECTION_ERRORS as exc:
        logger.error("database unavailable during transfer (client_id=%s): %s", client_id, exc)
        connection.close()
        raise DatabaseUnavailable("database is unavailable; nothing was executed") from exc


def _stored_outcome(record: IdempotencyRecord) -> TransferOutcome:
    return TransferOutcome(
        status=record.response_status or 500,
        code=record.response_code or None,
        body=record.response_body,
        replayed=True,
        key_expires_at=record.expires_at,
    )


def _claim(client_id: int, key: str, fingerprint: str) -> _Claim | TransferOutcome:
    lease = dt.timedelta(seconds=settings.IDEMPOTENCY_LEASE_S)
    token = uuid.uuid4()
    # Each pass either returns or finds that the record it saw has changed
    # (deleted or taken over); three passes bound the loop under contention.
    for _attempt in range(3):
        now = timezone.now()
        expires_at = now + dt.timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_S)
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(
                    client_id=client_id,
                    key=key,
                    request_fingerprint=fingerprint,
                    state=IdempotencyRecord.State.IN_PROGRESS,
                    lease_token=token,
                    lease_expires_at=now + lease,
                    created_at=now,
                    expires_at=expires_at,
                )
            return _Claim(record.pk, token, expires_at)
        except IntegrityError:
            pass

        record = IdempotencyRecord.objects.filter(client_id=client_id, key=key).first()
        if record is None:
            continue
        if record.expires_at <= now:
            IdempotencyRecord.objects.filter(pk=record.pk, expires_at__lte=now).delete()
            continue
        if record.request_fingerprint != fingerprint:
            raise IdempotencyKeyMismatch("idempotency key was already used for a different transfer")
        if record.state == IdempotencyRecord.State.COMPLETED:
            return _stored_outcome(record)
        if record.lease_expires_at is not None and record.lease_expires_at > now:
            raise _in_progress(record.lease_expires_at - now)
        taken = IdempotencyRecord.objects.filter(
            pk=record.pk, state=IdempotencyRecord.State.IN_PROGRESS, lease_token=record.lease_token
        ).update(lease_token=token, lease_expires_at=now + lease)
        if taken:
            logger.warning("idempotency key lease expired; taking over (client_id=%s record=%s)", client_id, record.pk)
            return _Claim(record.pk, token, record.expires_at)
    raise _in_progress(lease)


def _in_progress(remaining: dt.timedelta) -> IdempotencyInProgress:
    return IdempotencyInProgress(
        "a request with this idempotency key is still executing",
        retry_after=max(1, math.ceil(remaining.total_seconds())),
    )


def _release(claim: _Claim) -> None:
    """Delete our in-progress record so that a retry can execute; best effort."""
    try:
        if connection.in_atomic_block:  # pragma: no cover - only reachable through a programming error
            return
        if not connection.is_usable():
            connection.close()
        IdempotencyRecord.objects.filter(
            pk=claim.record_id, lease_token=claim.token, state=IdempotencyRecord.State.IN_PROGRESS
        ).delete()
    except _CONNECTION_ERRORS as exc:
        logger.warning("could not release idempotency record %s; it unlocks when its lease expires: %s", claim.record_id, exc)


def _execute(
    claim: _Claim,
    client_id: int,
    key: str,
    fingerprint: str,
    request: TransferRequest,
    channel: str,
    certificate_fingerprint: str | None,
) -> TransferOutcome:
    with transaction.atomic():
        record = IdempotencyRecord.objects.select_for_update().get(pk=claim.record_id)
        if record.state != IdempotencyRecord.State.IN_PROGRESS or record.lease_token != claim.token:
            raise _in_progress(dt.timedelta(seconds=1))
        client = Client.objects.get(pk=client_id)
        if not client.is_active:
            raise IdentityRejected("client is deactivated", code="identity.client_inactive")
        if certificate_fingerprint is not None and not ClientCertificate.objects.filter(
            client_id=client_id, fingerprint_sha256=certificate_fingerprint, revoked_at__isnull=True
        ).exists():
            raise IdentityRejected("certificate is revoked", code="identity.certificate_revoked")

        now = timezone.now()
        transfer: Transfer | None = None
        try:
            transfer = _apply(client, key, fingerprint, request, channel, now)
            status, code, body = 201, "", render_transfer(transfer)
        except TransferRefused as refusal:
            status, code, body = refusal.status, refusal.code, problem_body(refusal).decode()

        record.state = IdempotencyRecord.State.COMPLETED
        record.lease_token = None
        record.lease_expires_at = None
        record.response_status = status
        record.response_code = code
        record.response_body = body
        record.transfer = transfer
        record.save()

    return TransferOutcome(
        status=status, code=code or None, body=body, replayed=False, key_expires_at=record.expires_at
    )


def _apply(
    client: Client,
    key: str,
    fingerprint: str,
    request: TransferRequest,
    channel: str,
    now: dt.datetime,
) -> Transfer:
    # Locking in id order means two transfers between the same accounts in
    # opposite directions wait for each other instead of deadlocking.
    ids = sorted({request.from_account, request.to_account})
    accounts = {account.id: account for account in Account.objects.select_for_update().filter(id__in=ids).order_by("id")}
    for account_id in (request.from_account, request.to_account):
        if account_id not in accounts:
            raise TransferRefused(f"account {account_id!r} does not exist", code="transfer.account_not_found", status=404)
    source = accounts[request.from_account]
    target = accounts[request.to_account]
    if source.owner_id != client.pk:
        raise TransferRefused(
            f"account {source.id!r} is not owned by client {client.name!r}", code="transfer.forbidden", status=403
        )
    for account in (source, target):
        if account.currency != request.currency:
            raise TransferRefused(
                f"account {account.id!r} is in {account.currency}, the transfer is in {request.currency}",
                code="transfer.currency_mismatch",
            )
    if source.balance < request.amount:
        raise TransferRefused(f"account {source.id!r} has insufficient funds", code="transfer.insufficient_funds")
    if target.balance + request.amount > MAX_BALANCE:
        raise TransferRefused(
            f"account {target.id!r} would exceed the maximum balance of {MAX_BALANCE}", code="transfer.balance_limit"
        )

    try:
        with transaction.atomic():
            transfer = Transfer.objects.create(
                client=client,
                idempotency_key=key,
                request_fingerprint=fingerprint,
                from_account=source,
                to_account=target,
                amount=request.amount,
                currency=request.currency,
                reference=request.reference,
                channel=channel,
                created_at=now,
            )
    except IntegrityError:
        raise IdempotencyKeyExpired(
            "idempotency key was used by a transfer whose stored response has expired; use a new key"
        ) from None

    source.balance -= request.amount
    target.balance += request.amount
    source.save(update_fields=["balance"])
    target.save(update_fields=["balance"])
    LedgerEntry.objects.bulk_create(
        [
            LedgerEntry(transfer=transfer, account=source, amount=-request.amount, balance_after=source.balance, created_at=now),
            LedgerEntry(transfer=transfer, account=target, amount=request.amount, balance_after=target.balance, created_at=now),
        ]
    )
    return transfer
