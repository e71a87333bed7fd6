"""Sequence-window sessions: resume tokens and the session of one connection.

A session is one sequence space of one identity in the replay store. Its
token is a resume token. A client that reconnects, or switches to HTTP,
names it to continue the same window. A command captured on the old
connection is then rejected by its sequence number as well as by its nonce.
The store keys sessions by identity, so a token presented by another client
is an unknown session to it.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from ..exceptions import InvalidMessage
from .base import ReplayCheck, ReplayStore, ReplayVerdict

__all__ = ["ConnectionSession", "new_session_token", "parse_session_token"]

_SESSION_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")


def new_session_token() -> str:
    """Return a fresh, unguessable session token (128 random bits)."""
    return secrets.token_urlsafe(16)


def parse_session_token(value: Any, field: str = "session") -> str:
    """Return a session token: 22 to 64 characters of ``[A-Za-z0-9_-]``."""
    if not isinstance(value, str) or not _SESSION_TOKEN_RE.fullmatch(value):
        raise InvalidMessage(f"{field} must be a session token as sent in the welcome frame")
    return value


class ConnectionSession:
    """The session of one WebSocket connection.

    A connection starts with a fresh token that the store does not have yet.
    Its first accepted command creates the session in the store. Until then
    the connection may instead resume an earlier session of its identity.
    A welcome token whose connection had no command accepted names no
    session, and resuming it is rejected as ``session.unknown``.
    """

    def __init__(self, store: ReplayStore, identity: str) -> None:
        self.store = store
        self.identity = identity
        self.token = new_session_token()
        # True once the store has the session: after the first accepted
        # command or resume.
        self.started = False

    async def check_command(self, *, seq: int, ts_ms: int, nonce: str) -> ReplayVerdict:
        """Check a command in the connection's session, creating the session on the first one."""
        check = ReplayCheck(
            identity=self.identity,
            ts_ms=ts_ms,
            nonce=nonce,
            session=self.token,
            seq=seq,
            create_session=not self.started,
        )
        verdict = await self.store.check(check)
        self.started = True
        return verdict

    async def resume(self, *, token: str, seq: int, ts_ms: int, nonce: str) -> ReplayVerdict:
        """Switch the connection to an earlier session, using ``seq`` and ``nonce`` for the resume itself.

        Raises InvalidMessage once the connection has a session of its own,
        and the store's rejection (``session.unknown`` for a token that is
        unknown, expired or another client's) when the check fails.
        """
        if self.started:
            raise InvalidMessage("resume must come before the first accepted command on a connection")
        check = ReplayCheck(
            identity=self.identity,
            ts_ms=ts_ms,
            nonce=nonce,
            session=token,
            seq=seq,
            create_session=False,
        )
        verdict = await self.store.check(check)
        self.token = token
        self.started = True
        return verdict
