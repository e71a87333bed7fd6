"""Helpers for end-to-end tests against a running ``serve`` process."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import websockets

from realtime.client import client_ssl_context, new_nonce, now_ms

from .databases import query
from .servers import ServeProcess


@dataclass
class Deployment:
    """A serve process, its database and the PKI its clients use."""

    server: ServeProcess
    database_url: str
    pki_dir: Path

    def ssl_context(self, name: str | None) -> ssl.SSLContext:
        if name is None:
            return client_ssl_context(self.pki_dir / "ca.pem")
        return client_ssl_context(self.pki_dir / "ca.pem", self.pki_dir / f"{name}.pem", self.pki_dir / f"{name}.key")

    def connect(self, name: str | None, **kwargs: Any) -> Any:
        """Open a WebSocket as client ``name`` (None: no certificate)."""
        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("max_size", 2**20)
        return websockets.connect(self.server.ws_url, ssl=self.ssl_context(name), **kwargs)

    def http(self, name: str | None, **kwargs: Any) -> httpx.Client:
        """Return an HTTPS client presenting client ``name``'s certificate."""
        kwargs.setdefault("timeout", 20)
        return httpx.Client(base_url=self.server.base_url, verify=self.ssl_context(name), **kwargs)

    def async_http(self, name: str | None, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 20)
        return httpx.AsyncClient(base_url=self.server.base_url, verify=self.ssl_context(name), **kwargs)

    def balance(self, account_id: str) -> Decimal:
        rows = query(self.database_url, "SELECT balance FROM transfers_account WHERE id = %s", (account_id,))
        return Decimal(str(rows[0][0]))

    def count(self, table: str, where: str = "1=1", params: tuple[Any, ...] = ()) -> int:
        return int(query(self.database_url, f"SELECT COUNT(*) FROM {table} WHERE {where}", params)[0][0])

    def ledger_sum(self) -> Decimal:
        # SQLite's SUM() of decimals is a float, so the entries are added up here, exactly.
        rows = query(self.database_url, "SELECT amount FROM transfers_ledgerentry")
        return sum((Decimal(str(amount)) for (amount,) in rows), Decimal(0))


async def recv_json(connection: Any, timeout: float = 10) -> dict[str, Any]:
    import asyncio

    return json.loads(await asyncio.wait_for(connection.recv(), timeout))


async def open_session(connection: Any) -> dict[str, Any]:
    """Read the welcome frame a fresh connection starts with."""
    welcome = await recv_json(connection)
    if welcome.get("type") != "welcome":
        raise AssertionError(f"expected a welcome frame, got {welcome!r}")
    return welcome


def transfer_headers(
    key: str | None,
    *,
    nonce: str | None = None,
    ts: int | None = None,
    session: str | None = None,
    seq: int | None = None,
    **extra: str,
) -> dict[str, str]:
    """Headers of a POST /api/v1/transfers/ request; a fresh nonce and the current time unless given."""
    headers = {
        "Content-Type": "application/json",
        "X-Request-Timestamp": str(now_ms() if ts is None else ts),
        "X-Request-Nonce": nonce or new_nonce(),
    }
    if key is not None:
        headers["Idempotency-Key"] = key
    if session is not None:
        headers["X-Request-Session"] = session
    if seq is not None:
        headers["X-Request-Sequence"] = str(seq)
    headers.update(extra)
    return headers
