"""HTTP fallback API: the same commands as the WebSocket protocol, with Idempotency-Key.

A POST is validated completely, then checked by the replay engine, then
looked up or executed under its Idempotency-Key. The replay check comes
before the idempotency lookup, so a captured request whose nonce was used
never reads the stored response.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from channels.db import database_sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.http import http_date
from django.views.decorators.http import require_GET, require_POST

from realtime.exceptions import IdentityRejected, InvalidMessage, Rejection
from realtime.identity import ClientIdentity
from realtime.problems import problem_response
from realtime.protocol import parse_idempotency_key, parse_json_object, parse_nonce, parse_seq, parse_timestamp
from realtime.replay import ReplayCheck, get_replay_store, parse_session_token

from .exceptions import DatabaseUnavailable, IdempotencyInProgress
from .models import Account, Transfer
from .service import TransferOutcome, execute_transfer, render_transfer
from .validation import TransferRequest, parse_transfer

__all__ = ["check_transfer_command", "create_transfer", "get_account", "get_transfer", "server_time"]

logger = logging.getLogger(__name__)

_DIGITS_RE = re.compile(r"[0-9]{1,16}")
# The draft's Idempotency-Key is a structured-field string ("..."); clients
# modelled on Stripe send the bare value. Both name the same key.
_SF_STRING_RE = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*)"')


def _identity(request: HttpRequest) -> ClientIdentity:
    identity = request.scope.get("client_identity")  # type: ignore[attr-defined]
    if not isinstance(identity, ClientIdentity):  # pragma: no cover - the middleware always sets it
        raise IdentityRejected("no client identity on this request")
    return identity


def _header(request: HttpRequest, name: str) -> str | None:
    """Return a request header that may appear at most once, or None when absent."""
    header_name = name.lower().encode()
    values = [value for key, value in request.scope["headers"] if key == header_name]  # type: ignore[attr-defined]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidMessage(f"header {name} must appear at most once")
    try:
        # Only optional whitespace (space, tab) surrounds a field value
        # (RFC 9110 section 5.5); other control characters stay and fail
        # the field's own check.
        return values[0].decode("ascii").strip(" \t")
    except UnicodeDecodeError:
        raise InvalidMessage(f"header {name} must be ASCII") from None


def _header_int(request: HttpRequest, name: str, parse: Any) -> int | None:
    raw = _header(request, name)
    if raw is None:
        return None
    if not _DIGITS_RE.fullmatch(raw):
        raise InvalidMessage(f"header {name} must be a non-negative integer of at most 16 digits")
    return parse(int(raw))


def _idempotency_key(request: HttpRequest) -> str:
    try:
        raw = _header(request, "Idempotency-Key")
    except InvalidMessage as exc:
        raise InvalidMessage(exc.detail, code="idempotency.key_invalid") from None
    if raw is None or raw == "":
        raise InvalidMessage("header Idempotency-Key is required for POST", code="idempotency.key_missing")
    if raw.startswith('"'):
        match = _SF_STRING_RE.fullmatch(raw)
        if match is None:
            raise InvalidMessage("header Idempotency-Key is not a valid quoted string", code="idempotency.key_invalid")
        raw = re.sub(r"\\(.)", r"\1", match.group(1))
    try:
        return parse_idempotency_key(raw, "header Idempotency-Key")
    except InvalidMessage as exc:
        raise InvalidMessage(exc.detail, code="idempotency.key_invalid") from None


def _replay_check(request: HttpRequest, identity: ClientIdentity) -> ReplayCheck:
    ts = _header_int(request, "X-Request-Timestamp", lambda value: parse_timestamp(value, "X-Request-Timestamp"))
    if ts is None:
        raise InvalidMessage("header X-Request-Timestamp is required: Unix time in milliseconds")
    nonce_header = _header(request, "X-Request-Nonce")
    if nonce_header is None:
        raise InvalidMessage("header X-Request-Nonce is required")
    nonce = parse_nonce(nonce_header, "header X-Request-Nonce")

    session_header = _header(request, "X-Request-Session")
    seq = _header_int(request, "X-Request-Sequence", parse_seq)
    if (session_header is None) != (seq is None):
        raise InvalidMessage("headers X-Request-Session and X-Request-Sequence must be sent together")
    session = None if session_header is None else parse_session_token(session_header, "header X-Request-Session")
    return ReplayCheck(identity=identity.name, ts_ms=ts, nonce=nonce, session=session, seq=seq)


def _parse_body(request: HttpRequest) -> Any:
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise InvalidMessage(
            f"Content-Type must be application/json, got {content_type[:64]!r}", status=415
        )
    try:
        body = request.body
    except RequestDataTooBig:
        raise InvalidMessage("request body is larger than the configured maximum", status=413) from None
    return parse_transfer(parse_json_object(body))


def _outcome_response(outcome: TransferOutcome) -> HttpResponse:
    content_type = "application/json" if outcome.code is None else "application/problem+json"
    response = HttpResponse(outcome.body.encode(), status=outcome.status, content_type=content_type)
    response["Idempotency-Key-Expires"] = http_date(outcome.key_expires_at.timestamp())
    if outcome.replayed:
        response["Idempotent-Replayed"] = "true"
    if outcome.code is None:
        response["Location"] = f"/api/v1/transfers/{outcome.document()['id']}/"
    return response


def _rejection_response(rejection: Rejection, identity: ClientIdentity | None) -> HttpResponse:
    headers: dict[str, str] = {}
    if isinstance(rejection, IdempotencyInProgress):
        headers["Retry-After"] = str(rejection.retry_after)
    elif rejection.status == 503:
        headers["Retry-After"] = "1"
    logger.info(
        "http rejected client=%s cert=%s code=%s",
        identity.name if identity else None,
        identity.fingerprint_prefix if identity else None,
        rejection.code,
    )
    return problem_response(rejection, **headers)


async def check_transfer_command(request: HttpRequest, identity: ClientIdentity) -> tuple[str, TransferRequest]:
    """Validate a transfer POST completely, then pass it through the replay check.

    Returns the Idempotency-Key and the transfer. Raises a Rejection when
    the request is malformed or the replay check rejects it; then nothing
    was recorded against the key.
    """
    key = _idempotency_key(request)
    check = _replay_check(request, identity)
    transfer_request = _parse_body(request)

    await get_replay_store().check(check)

    return key, transfer_request


@require_POST
async def create_transfer(request: HttpRequest) -> HttpResponse:
    """Execute a transfer once per Idempotency-Key; see the module docstring for the order of checks."""
    identity = _identity(request)
    try:
        key, transfer_request = await check_transfer_command(request, identity)
        outcome = await database_sync_to_async(execute_transfer, thread_sensitive=False)(
            client_id=identity.client_id,
            key=key,
            request=transfer_request,
            channel="http",
            certificate_fingerprint=identity.fingerprint_sha256,
        )
    except Rejection as exc:
        return _rejection_response(exc, identity)
    return _outcome_response(outcome)


@database_sync_to_async
def _load_transfer(client_id: int, transfer_id: uuid.UUID) -> str | None:
    transfer = Transfer.objects.filter(pk=transfer_id, client_id=client_id).first()
    return None if transfer is None else render_transfer(transfer)


@database_sync_to_async
def _load_account(client_id: int, account_id: str) -> dict[str, str] | None:
    account = Account.objects.filter(pk=account_id, owner_id=client_id).first()
    if account is None:
        return None
    return {"id": account.id, "currency": account.currency, "balance": f"{account.balance:.2f}"}


def _not_found(resource: str) -> HttpResponse:
    return problem_response(Rejection(f"{resource} not found", code="not_found", status=404))


def _database_unavailable(exc: Exception) -> HttpResponse:
    logger.error("database unavailable during a read: %s", exc)
    return problem_response(DatabaseUnavailable("database is unavailable"), Retry_After="1")


@require_GET
async def get_transfer(request: HttpRequest, transfer_id: str) -> HttpResponse:
    """Return one of the client's own transfers; any other id is 404."""
    identity = _identity(request)
    try:
        parsed = uuid.UUID(transfer_id)
    except ValueError:
        return _not_found("transfer")
    try:
        body = await _load_transfer(identity.client_id, parsed)
    except (OperationalError, InterfaceError) as exc:
        return _database_unavailable(exc)
    if body is None:
        return _not_found("transfer")
    return HttpResponse(body.encode(), content_type="application/json")


@require_GET
async def get_account(request: HttpRequest, account_id: str) -> HttpResponse:
    """Return one of the client's own accounts with its balance; any other id is 404."""
    identity = _identity(request)
    try:
        document = await _load_account(identity.client_id, account_id[:64])
    except (OperationalError, InterfaceError) as exc:
        return _database_unavailable(exc)
    if document is None:
        return _not_found("account")
    return HttpResponse(json.dumps(document, separators=(",", ":")).encode(), content_type="application/json")


@require_GET
async def server_time(request: HttpRequest) -> HttpResponse:
    """Return the replay store's clock, the one request timestamps are compared with."""
    _identity(request)
    try:
        now = await get_replay_store().server_time_ms()
    except Rejection as exc:
        return _rejection_response(exc, None)
    return JsonResponse({"server_time": now})
