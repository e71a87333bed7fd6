"""ASGI middleware that admits only connections of active registered clients."""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError

from .exceptions import IdentityRejected, Rejection, ServiceUnavailable
from .identity import identify
from .problems import PROBLEM_CONTENT_TYPE, problem_body
from .types import ASGIApp, Receive, Scope, Send

__all__ = ["ClientIdentityMiddleware", "PUBLIC_PATHS"]

logger = logging.getLogger(__name__)

# Paths served without a registered client: load balancers probe them. The
# TLS handshake still requires a certificate from the client CA.
PUBLIC_PATHS = frozenset({"/healthz"})


class ClientIdentityMiddleware:
    """Put ``scope["client_identity"]`` on every HTTP and WebSocket connection, or reject it.

    A rejected WebSocket handshake is closed before it is accepted, so daphne
    responds with HTTP 403. A rejected HTTP request gets a 403 (400 for a corrupt
    forwarded header) problem response. The inner application never runs for
    a rejected connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return

        try:
            identity = await identify(scope)
        except IdentityRejected as exc:
            logger.info("connection rejected: %s (%s) path=%s", exc.code, exc.detail, scope.get("path"))
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4003})
            else:
                await _send_problem(send, exc)
            return
        except (OperationalError, InterfaceError) as exc:
            if scope["type"] == "websocket":
                # daphne can respond to a handshake only with 403 (close) or 500
                # (an exception), and 403 would tell the client it was rejected.
                raise
            logger.warning("identity lookup failed, database unavailable: %s", exc)
            await _send_problem(send, ServiceUnavailable("database is unavailable; nothing was executed"), retry_after=1)
            return

        await self.app({**scope, "client_identity": identity}, receive, send)


async def _send_problem(send: Send, rejection: Rejection, *, retry_after: int | None = None) -> None:
    body = problem_body(rejection)
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": rejection.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
