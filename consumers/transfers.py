"""WebSocket protocol v1: transfer commands over ``/ws/v1/transfers/``.

See docs/protocol.md for the frames and close codes. Each frame is parsed
strictly, checked by the replay engine and only then executed; a frame that
fails parsing or the replay check changes nothing and leaves the socket
open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import DenyConnection
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.consumer import get_handler_name
from django.conf import settings

from realtime.exceptions import IdentityRejected, InvalidMessage, Rejection
from realtime.identity import ClientIdentity
from realtime.protocol import parse_idempotency_key, parse_json_object, parse_nonce, parse_seq, parse_timestamp
from realtime.replay import ReplayCheck, ReplayStore, get_replay_store, new_session_token, parse_session_token
from transfers.exceptions import IdempotencyInProgress
from transfers.service import TransferOutcome, execute_transfer
from transfers.validation import TransferRequest, parse_transfer

from .revocation import client_group

__all__ = ["CLOSE_CODES", "TransferConsumer"]

logger = logging.getLogger(__name__)

# Close codes the server sends; daphne's WebSocket layer (autobahn) accepts
# only 1000 and 3000-4999 from an application.
CLOSE_NORMAL = 1000
CLOSE_CLIENT_DEACTIVATED = 4001
CLOSE_CERTIFICATE_EXPIRED = 4002
CLOSE_INTERNAL_ERROR = 4500
CLOSE_CODES = {
    CLOSE_NORMAL: "normal closure",
    1009: "frame or message larger than the configured maximum (sent by the WebSocket layer)",
    CLOSE_CLIENT_DEACTIVATED: "client deactivated",
    CLOSE_CERTIFICATE_EXPIRED: "client certificate expired",
    CLOSE_INTERNAL_ERROR: "unexpected server error",
}

_TRANSFER_FIELDS = {"type", "seq", "ts", "nonce", "idempotency_key", "transfer"}
_RESUME_FIELDS = {"type", "session", "seq", "ts", "nonce"}

# Refuse to schedule a timer further out than this; call_later takes any
# float, but a far-future certificate needs no timer on a short connection.
_MAX_TIMER_S = 7 * 86_400


def _now_ms() -> int:
    return int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


class TransferConsumer(AsyncWebsocketConsumer):
    """One client connection: a session, its sequence window and its commands."""

    identity: ClientIdentity
    session: str
    replay_store: ReplayStore
    # True once the store holds the session, after its first accepted check.
    session_started: bool
    frames_received: int

    async def connect(self) -> None:
        """Run when the handshake arrives; the identity middleware has admitted the client."""
        identity = self.scope.get("client_identity")
        if not isinstance(identity, ClientIdentity):  # pragma: no cover - routing always wraps the middleware
            raise DenyConnection
        if _has_foreign_origin(self.scope):
            logger.info("handshake rejected: Origin header from a browser (client=%s)", identity.name)
            raise DenyConnection

        self.identity = identity
        self.session = new_session_token()
        self.session_started = False
        self.frames_received = 0
        self._expiry_timer: asyncio.TimerHandle | None = None

        await self.channel_layer.group_add(client_group(identity.client_id), self.channel_name)
        await self.accept()
        self._schedule_certificate_expiry()
        # Looked up once per connection: the store belongs to this event loop.
        self.replay_store = store = get_replay_store()
        await self._send_json(
            {
                "type": "welcome",
                "session": self.session,
                "client": identity.name,
                "server_time": _now_ms(),
                "max_skew_ms": store.max_skew_ms,
                "seq_window": store.seq_window,
                "next_seq": 1,
            }
        )
        logger.info("connected client=%s cert=%s session=%s", identity.name, identity.fingerprint_prefix, self.session[:8])

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
        if hasattr(self, "identity"):
            await self.channel_layer.group_discard(client_group(self.identity.client_id), self.channel_name)
            logger.info("disconnected client=%s session=%s code=%s", self.identity.name, self.session[:8], code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Handle one frame: reply with a result or a typed rejection, never both."""
        self.frames_received += 1
        seq: int | None = None
        try:
            if text_data is None:
                raise InvalidMessage("binary frames are not accepted; send JSON text frames")
            frame = parse_json_object(text_data)
            seq = _readable_seq(frame)
            kind = frame.get("type")
            if kind == "transfer":
                await self._handle_transfer(frame)
            elif kind == "resume":
                await self._handle_resume(frame)
            else:
                raise InvalidMessage("type must be \"transfer\" or \"resume\"")
        except IdentityRejected as exc:
            await self._reject(seq, exc)
            await self.close(code=CLOSE_CLIENT_DEACTIVATED)
        except Rejection as exc:
            await self._reject(seq, exc)
        except Exception:
            logger.exception(
                "unexpected error; closing connection (client=%s session=%s seq=%s)",
                self.identity.name,
                self.session[:8],
                seq,
            )
            await self.close(code=CLOSE_INTERNAL_ERROR)

    async def client_revoked(self, event: dict[str, Any]) -> None:
        """Run when ``deactivate_client`` announces this client's revocation on the channel layer."""
        logger.info("closing connection of deactivated client=%s session=%s", self.identity.name, self.session[:8])
        await self.close(code=CLOSE_CLIENT_DEACTIVATED)

    # --- commands -------------------------------------------------------

    async def _handle_transfer(self, frame: dict[str, Any]) -> None:
        _reject_unknown_fields(frame, _TRANSFER_FIELDS)
        seq = parse_seq(frame.get("seq"))
        ts = parse_timestamp(frame.get("ts"))
        nonce = parse_nonce(frame.get("nonce"))
        key = parse_idempotency_key(frame.get("idempotency_key"))
        request = parse_transfer(frame.get("transfer"))

        await self._check_replay(seq=seq, ts=ts, nonce=nonce, session=self.session, create=not self.session_started)

        outcome = await self.execute(key, request)
        await self._send_outcome(seq, outcome)

    async def execute(self, key: str, request: TransferRequest) -> TransferOutcome:
        """Execute a transfer once per idempotency key; runs only after its replay check passed."""
        return await database_sync_to_async(execute_transfer, thread_sensitive=False)(
            client_id=self.identity.client_id, key=key, request=request, channel="ws"
        )

    async def _handle_resume(self, frame: dict[str, Any]) -> None:
        _reject_unknown_fields(frame, _RESUME_FIELDS)
        if self.frames_received != 1:
            raise InvalidMessage("resume must be the first frame on a connection")
        session = parse_session_token(frame.get("session"))
        seq = parse_seq(frame.get("seq"))
        ts = parse_timestamp(frame.get("ts"))
        nonce = parse_nonce(frame.get("nonce"))

        verdict = await self._check_replay(seq=seq, ts=ts, nonce=nonce, session=session, create=False)

        self.session = session
        self.session_started = True
        next_seq = (verdict.highest_seq or seq) + 1
        await self._send_json({"type": "resumed", "seq": seq, "session": session, "next_seq": next_seq})
        logger.info("resumed client=%s session=%s seq=%s", self.identity.name, session[:8], seq)

    async def _check_replay(self, *, seq: int, ts: int, nonce: str, session: str, create: bool) -> Any:
        check = ReplayCheck(
            identity=self.identity.name,
            ts_ms=ts,
            nonce=nonce,
            session=session,
            seq=seq,
            create_session=create,
        )
        verdict = await self.replay_store.check(check)
        if session == self.session:
            self.session_started = True
        return verdict

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
            self.session[:8],
            seq,
            rejection.code,
        )
        reply: dict[str, Any] = {"type": "rejected", "seq": seq, **rejection.as_dict()}
        if isinstance(rejection, IdempotencyInProgress):
            reply["retry_after"] = rejection.retry_after
        await self._send_json(reply)

    async def _send_json(self, document: dict[str, Any]) -> None:
        await self.send(text_data=_dumps(document))

    # --- certificate expiry ---------------------------------------------

    def _schedule_certificate_expiry(self) -> None:
        remaining = (self.identity.not_after - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if remaining > _MAX_TIMER_S:
            return
        loop = asyncio.get_running_loop()
        self._expiry_timer = loop.call_later(max(0.0, remaining), lambda: loop.create_task(self._close_expired()))

    async def _close_expired(self) -> None:
        logger.info("closing connection: certificate expired (client=%s session=%s)", self.identity.name, self.session[:8])
        await self.close(code=CLOSE_CERTIFICATE_EXPIRED)


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
