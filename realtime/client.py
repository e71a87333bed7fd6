"""A minimal Python client for protocol v1, used by the demo, the tests and the benchmarks.

It builds frames and TLS contexts. Its only state is the sequence counter,
so callers can also build deliberately wrong frames.
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CommandBuilder", "client_ssl_context", "new_nonce", "now_ms"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_nonce() -> str:
    """Return a random 22-character nonce (128 bits)."""
    return secrets.token_urlsafe(16)


def client_ssl_context(ca_file: str | Path, cert_file: str | Path | None = None, key_file: str | Path | None = None) -> ssl.SSLContext:
    """Build a context that verifies the server against ``ca_file`` and presents a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


@dataclass
class CommandBuilder:
    """Builds transfer frames with increasing sequence numbers, fresh nonces and current timestamps."""

    next_seq: int = 1
    clock_offset_ms: int = 0
    sent: list[str] = field(default_factory=list)

    def transfer(
        self,
        *,
        from_account: str,
        to_account: str,
        amount: str,
        currency: str = "USD",
        idempotency_key: str | None = None,
        reference: str | None = None,
        **overrides: Any,
    ) -> str:
        transfer: dict[str, Any] = {
            "from_account": from_account,
            "to_account": to_account,
            "amount": amount,
            "currency": currency,
        }
        if reference is not None:
            transfer["reference"] = reference
        frame: dict[str, Any] = {
            "type": "transfer",
            "seq": self.next_seq,
            "ts": now_ms() + self.clock_offset_ms,
            "nonce": new_nonce(),
            "idempotency_key": idempotency_key or f"key-{new_nonce()}",
            "transfer": transfer,
        }
        frame.update(overrides)
        self.next_seq += 1
        text = json.dumps(frame)
        self.sent.append(text)
        return text

    def resume(self, session: str, **overrides: Any) -> str:
        frame: dict[str, Any] = {
            "type": "resume",
            "session": session,
            "seq": self.next_seq,
            "ts": now_ms() + self.clock_offset_ms,
            "nonce": new_nonce(),
        }
        frame.update(overrides)
        self.next_seq += 1
        return json.dumps(frame)
