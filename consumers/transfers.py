"""WebSocket protocol v1: transfer commands over ``/ws/v1/transfers/``.

The server opens with a ``welcome`` frame whose ``session`` is the resume
token of the connection's sequence window. The client sends ``transfer``
frames. Before its first accepted command it may instead send a ``resume``
frame, to continue an earlier session of the same client. The server replies
to each frame with ``resumed``, ``transfer.executed`` or ``rejected``. Each
frame is parsed strictly, checked by the replay engine and only then
executed. A frame that fails parsing or the replay check changes nothing and
leaves the socket open. ``CLOSE_CODES`` lists the close codes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import DenyConnection
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.consumer import get_handler_name
from django.conf import settings
from django.db import DatabaseError

from realtime.exceptions import IdentityRejected, InvalidMessage, Rejection
from realtime.identity import ClientIdentity
from realtime.models import ClientCertificate
from realtime.protocol import parse_idempotency_key, parse_json_object, parse_nonce, parse_seq, parse_timestamp
from realtime.replay import ConnectionSession, get_replay_store, parse_session_token
from transfers.exceptions import IdempotencyInProgress
from transfers.service import TransferOutcome, execute_transfer
from transfers.validation import TransferRequest, parse_transfer

from .revocation import client_group

__all__ = ["CLOSE_CODES", "ResumeFrame", "TransferConsumer", "TransferFrame", "parse_frame"]

logger = logging.getLogger(__name__)

# Close codes the server sends; daphne's WebSocket layer (autobahn) accepts
# only 1000 and 3000-4999 from an application.
CLOSE_NORMAL = 1000
CLOSE_CLIENT_DEACTIVATED = 4001
CLOSE_CERTIFICATE_EXPIRED = 4002
CLOSE_SESSION_LOST = 4008
CLOSE_INTERNAL_ERROR = 4500
CLOSE_CODES = {
    CLOSE_NORMAL: "normal closure",
    1009: "frame or message larger than the configured maximum (sent by the WebSocket layer)",
    CLOSE_CLIENT_DEACTIVATED: "client deactivated",
    CLOSE_CERTIFICATE_EXPIRED: "client certificate expired",
    CLOSE_SESSION_LOST: "the replay store no longer holds this connection's session; reconnect",
    CLOSE_INTERNAL_ERROR: "unexpected server error",
}

_TRANSFER_FIELDS = {"type", "seq", "ts", "nonce", "idempotency_key", "transfer"}
_RESUME_FIELDS = {"type", "session", "seq", "ts", "nonce"}

# The expiry timer covers certificates that expire within this time; the
# periodic identity check closes sockets whose certificates expire later.
_MAX_TIMER_S = 7 * 86_400
_REJOIN_TIMEOUT_S = 2.0
_LOG_INTERVAL_S = 10.0
_log_state = {"last": {}, "suppressed": {}}


def _log_rate_limited(message: str, *args: Any) -> None:
    """Log a warning at most once per _LOG_INTERVAL_S for each message format, counting the rest.

    During an outage every socket of the process fails the same way, and one
    line per socket would flood the log.
    """
    now = time.monotonic()
    last = _log_state["last"].get(message, 0.0)
    if now - last < _LOG_INTERVAL_S:
        _log_state["suppressed"][message] = _log_state["suppressed"].get(message, 0) + 1
        return
    suppressed = _log_state["suppressed"].pop(message, 0)
    _log_state["last"][message] = now
    logger.warning(message + " (%d similar messages suppressed)", *args, suppressed)


def _now_ms() -> int:
    return int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class TransferFrame:
    """A well-formed ``transfer`` frame."""

    seq: int
    ts: int
    nonce: str
    idempotency_key: str
    transfer: TransferRequest


@dataclass(frozen=True, slots=True)
class ResumeFrame:
    """A well-formed ``resume`` frame: continue the session ``session`` from ``seq``."""

    session: str
    seq: int
    ts: int
    nonce: str


def parse_frame(text_data: str | None, bytes_data: bytes | None = None) -> TransferFrame | ResumeFrame:
    """Parse one WebSocket message into a frame, or raise InvalidMessage naming the problem.

    Parsing reads no state, so a malformed frame consumes no nonce or
    sequence number.
    """
    return _frame_from_document(_document_from_message(text_data))


def _document_from_message(text_data: str | None) -> dict[str, Any]:
    if text_data is None:
        raise InvalidMessage("binary frames are not accepted; send JSON text frames")
    return parse_json_object(text_data)


def _frame_from_document(document: dict[str, Any]) -> TransferFrame | ResumeFrame:
    kind = document.get("type")
    if kind == "transfer":
        _reject_unknown_fields(document, _TRANSFER_FIELDS)
        return TransferFrame(
            seq=parse_seq(document.get("seq")),
            ts=parse_timestamp(document.get("ts")),
            nonce=parse_nonce(document.get("nonce")),
            idempotency_key=parse_idempotency_key(document.get("idempotency_key")),
            transfer=parse_transfer(document.get("transfer")),
        )
    if kind == "resume":
        _reject_unknown_fields(document, _RESUME_FIELDS)
        return ResumeFrame(
            session=parse_session_token(document.get("session")),
            seq=parse_seq(document.get("seq")),
            ts=parse_timestamp(document.get("ts")),
            nonce=parse_nonce(document.get("nonce")),
        )
    raise InvalidMessage('type must be "transfer" or "resume"')


class TransferConsumer(AsyncWebsocketConsumer):
    """One client connection: a session, its sequence window and its commands."""

    identity: ClientIdentity
    session: ConnectionSession

    async def connect(self) -> None:
        """Run when the handshake arrives; the identity middleware has admitted the client."""
        identity = self.scope.get("client_identity")
        if not isinstance(identity, ClientIdentity):  # pragma: no cover - routing always wraps the middleware
            raise DenyConnection
        if _has_foreign_origin(self.scope):
            logger.info("handshake rejected: Origin header from a browser (client=%s)", identity.name)
            raise DenyConnection

        self.identity = identity
        store = get_replay_store()
        self.session = ConnectionSession(store, identity.name)
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None

        await self._join_revocation_group()
        # A deactivation that committed after the middleware's identity check
        # announced itself before this socket joined the group, so the client
        # is looked up again now that revocations reach it.
        if not await _certificate_still_valid(identity):
            logger.info("handshake rejected: client %s or its certificate revoked during the handshake", identity.name)
            raise DenyConnection
        await self.accept()
        self._schedule_certificate_expiry()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_identity())
        await self._send_json(
            {
                "type": "welcome",
                "session": self.session.token,
                "client": identity.name,
                "server_time": _now_ms(),
                "max_skew_ms": store.max_skew_ms,
                "seq_window": store.seq_window,
                "next_seq": 1,
            }
        )
        logger.info(
            "connected client=%s cert=%s session=%s", identity.name, identity.fingerprint_prefix, self._session_id()
        )

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Run the handler of one message, without Channels' per-message close_old_connections.

        Channels' ``dispatch`` first runs ``close_old_connections`` through
        ``sync_to_async``, on the one thread that runs thread-sensitive calls,
        so every frame of every socket in the process waited for a hop to that
        thread and back. This consumer touches the database only through
        ``database_sync_to_async``, which closes the old connections of its
        own thread before and after each call, so the hop closed nothing.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']!r}")
        await handler(message)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "_expiry_timer", None) is not None:
            self._expiry_timer.cancel()
        if getattr(self, "_watch_task", None) is not None:
            self._watch_task.cancel()
        if hasattr(self, "identity"):
            try:
                await self.channel_layer.group_discard(client_group(self.identity.client_id), self.channel_name)
            except Exception as exc:  # channel-layer backends raise their own error types
                _log_rate_limited("could not leave revocation group (client=%s): %s", self.identity.name, exc)
            logger.info("disconnected client=%s session=%s code=%s", self.identity.name, self._session_id(), code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Handle one frame: reply with a result or a typed rejection, never both."""
        seq: int | None = None
        frame: TransferFrame | ResumeFrame | None = None
        try:
            document = _document_from_message(text_data)
            seq = _readable_seq(document)
            frame = _frame_from_document(document)
            if isinstance(frame, TransferFrame):
                await self._handle_transfer(frame)
            else:
                await self._handle_resume(frame)
        except IdentityRejected as exc:
            await self._reject(seq, exc)
            await self.close(code=CLOSE_CLIENT_DEACTIVATED)
        except Rejection as exc:
            await self._reject(seq, exc)
            if exc.code == "session.unknown" and isinstance(frame, TransferFrame) and self.session.started:
                # The store lost this connection's own session (it expired,
                # or Redis restarted without its data). Every later command
                # would fail the same way, so the client must reconnect.
                await self.close(code=CLOSE_SESSION_LOST)
        except Exception:
            logger.exception(
                "unexpected error; closing connection (client=%s session=%s seq=%s)",
                self.identity.name,
                self._session_id(),
                seq,
            )
            await self.close(code=CLOSE_INTERNAL_ERROR)

    async def client_revoked(self, event: dict[str, Any]) -> None:
        """Run when ``deactivate_client`` or ``revoke_certificate`` announces a revocation on the channel layer.

        A certificate's revocation names its fingerprint and closes only the
        sockets that presented that certificate.
        """
        fingerprint = event.get("fingerprint")
        if fingerprint is not None and fingerprint != self.identity.fingerprint_sha256:
            return
        logger.info("closing connection of revoked client=%s session=%s", self.identity.name, self._session_id())
        await self.close(code=CLOSE_CLIENT_DEACTIVATED)

    async def _join_revocation_group(self) -> None:
        try:
            await self.channel_layer.group_add(client_group(self.identity.client_id), self.channel_name)
        except Exception as exc:  # channel-layer backends raise their own error types
            # The socket is still safe to serve: every command, and the
            # periodic identity check, read the client's state from the
            # database, so a revocation still takes effect.
            _log_rate_limited(
                "could not join revocation group; revocation applies at the next command or periodic check "
                "(client=%s): %s",
                self.identity.name,
                exc,
            )

    # --- commands -------------------------------------------------------

    async def _handle_transfer(self, frame: TransferFrame) -> None:
        await self.session.check_command(seq=frame.seq, ts_ms=frame.ts, nonce=frame.nonce)

        outcome = await self.execute(frame.idempotency_key, frame.transfer)
        await self._send_outcome(frame.seq, outcome)

    async def execute(self, key: str, request: TransferRequest) -> TransferOutcome:
        """Execute a transfer once per idempotency key; runs only after its replay check passed."""
        return await database_sync_to_async(execute_transfer, thread_sensitive=False)(
            client_id=self.identity.client_id,
            key=key,
            request=request,
            channel="ws",
            certificate_fingerprint=self.identity.fingerprint_sha256,
        )

    async def _handle_resume(self, frame: ResumeFrame) -> None:
        verdict = await self.session.resume(token=frame.session, seq=frame.seq, ts_ms=frame.ts, nonce=frame.nonce)

        next_seq = (verdict.highest_seq or frame.seq) + 1
        await self._send_json({"type": "resumed", "seq": frame.seq, "session": frame.session, "next_seq": next_seq})
        logger.info("resumed client=%s session=%s seq=%s", self.identity.name, self._session_id(), frame.seq)

    # --- replies --------------------------------------------------------

    async def _send_outcome(self, seq: int, outcome: TransferOutcome) -> None:
        if outcome.code is None:
            # The body is the compact JSON transfer object that render_transfer
            # wrote, so it is embedded as it is instead of parsed and encoded again.
            replayed = "true" if outcome.replayed else "false"
            await self.send(
                text_data=f'{{"type":"transfer.executed","seq":{seq:d},"replayed":{replayed},"transfer":{outcome.body}}}'
            )
            return
        document = outcome.document()
        await self._send_json(
            {
                "type": "rejected",
                "seq": seq,
                "code": outcome.code,
                "detail": document.get("detail", ""),
                "replayed": outcome.replayed,
            }
        )

    async def _reject(self, seq: int | None, rejection: Rejection) -> None:
        logger.info(
            "rejected client=%s cert=%s session=%s seq=%s code=%s",
            self.identity.name,
            self.identity.fingerprint_prefix,
            self._session_id(),
            seq,
            rejection.code,
        )
        reply: dict[str, Any] = {"type": "rejected", "seq": seq, **rejection.as_dict()}
        if isinstance(rejection, IdempotencyInProgress):
            reply["retry_after"] = rejection.retry_after
        await self._send_json(reply)

    async def _send_json(self, document: dict[str, Any]) -> None:
        await self.send(text_data=_dumps(document))

    def _session_id(self) -> str:
        """Return the session token's first 8 characters, enough to follow a session in logs."""
        return self.session.token[:8]

    # --- certificate expiry and periodic identity check ------------------

    async def _watch_identity(self) -> None:
        """Check the identity again every REVOCATION_RECHECK_S while the socket is open.

        This backs up the channel layer: a revocation sent while Redis was
        down, or to groups that Redis lost on a restart, never reaches the
        socket. Each round re-joins the revocation group and closes the socket
        when the client or its certificate has been revoked, or the
        certificate has expired (the expiry timer covers only the next week).
        """
        interval = settings.REVOCATION_RECHECK_S
        if interval <= 0:
            return
        while True:
            # Jitter spreads the checks of sockets opened together.
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            if dt.datetime.now(dt.timezone.utc) >= self.identity.not_after:
                await self._close_expired()
                return
            try:
                valid = await _certificate_still_valid(self.identity)
            except DatabaseError as exc:
                _log_rate_limited("periodic identity check failed (client=%s): %s", self.identity.name, exc)
                continue
            if not valid:
                logger.info(
                    "closing connection: client or certificate revoked (client=%s session=%s)",
                    self.identity.name,
                    self._session_id(),
                )
                await self.close(code=CLOSE_CLIENT_DEACTIVATED)
                return
            # Re-joining restores membership that a Redis restart lost. It is
            # bounded, so a hung Redis cannot delay the next database check.
            try:
                async with asyncio.timeout(_REJOIN_TIMEOUT_S):
                    await self._join_revocation_group()
            except TimeoutError:
                _log_rate_limited("re-joining the revocation group timed out (client=%s)", self.identity.name)

    def _schedule_certificate_expiry(self) -> None:
        remaining = (self.identity.not_after - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if remaining > _MAX_TIMER_S:
            return
        self._expiry_timer = asyncio.get_running_loop().call_later(max(0.0, remaining), self._on_certificate_expired)

    def _on_certificate_expired(self) -> None:
        # The loop keeps only a weak reference to a task, so the consumer
        # holds this one until it has run.
        self._expiry_task = asyncio.get_running_loop().create_task(self._close_expired())

    async def _close_expired(self) -> None:
        logger.info("closing connection: certificate expired (client=%s session=%s)", self.identity.name, self._session_id())
        await self.close(code=CLOSE_CERTIFICATE_EXPIRED)


@database_sync_to_async
def _certificate_still_valid(identity: ClientIdentity) -> bool:
    """Tell whether the client is active and the certificate it presented is not revoked."""
    return ClientCertificate.objects.filter(
        client_id=identity.client_id,
        fingerprint_sha256=identity.fingerprint_sha256,
        revoked_at__isnull=True,
        client__is_active=True,
    ).exists()


def _readable_seq(frame: dict[str, Any]) -> int | None:
    try:
        return parse_seq(frame.get("seq"))
    except InvalidMessage:
        return None


def _reject_unknown_fields(frame: dict[str, Any], allowed: set[str]) -> None:
    unknown = frame.keys() - allowed
    if unknown:
        shown = ", ".join(repr(name[:32]) for name in sorted(unknown)[:3])
        raise InvalidMessage(f"frame has {len(unknown)} unknown field(s): {shown}")


def _has_foreign_origin(scope: dict[str, Any]) -> bool:
    """Tell whether a browser opened the socket from a page not in WS_ALLOWED_ORIGINS.

    Browsers send client certificates on their own, so a page on any site
    could otherwise open a socket with the user's identity. Trading clients
    send no Origin header.
    """
    allowed = set(getattr(settings, "WS_ALLOWED_ORIGINS", ()))
    for name, value in scope.get("headers", []):
        if name == b"origin":
            return value.decode("latin-1") not in allowed
    return False
