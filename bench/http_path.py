"""HTTP path: requests per second through a real ``serve`` process over mutual TLS.

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams, so
that its own cost per request stays small next to the server's. Every
endpoint receives the same POST with the same headers and body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator

from realtime.client import new_nonce

from .stats import Operation, Sample, run_closed_loop

__all__ = ["HTTP_PATHS", "measure_http"]

# Path on the server and the status every request must get.
HTTP_PATHS = {
    "bare": ("/bench/http/bare/", 200),
    "replay": ("/bench/http/replay/", 201),
    "ledger": ("/api/v1/transfers/", 201),
}


class _KeepAliveClient:
    """One persistent HTTP/1.1 connection that sends a request and reads its response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def post(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"response without Content-Length: {head[:300]!r}")
        body = await self.reader.readexactly(length)
        return status, body


@contextlib.asynccontextmanager
async def _open_clients(port: int, context: ssl.SSLContext, count: int) -> AsyncIterator[list[_KeepAliveClient]]:
    clients: list[_KeepAliveClient] = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
            clients.append(_KeepAliveClient(reader, writer))
        yield clients
    finally:
        for client in clients:
            client.writer.close()
        await asyncio.gather(*(client.writer.wait_closed() for client in clients), return_exceptions=True)


def _transfer_request(path: str, index: int) -> bytes:
    body = json.dumps(
        {"from_account": f"S-{index}", "to_account": f"T-{index}", "amount": "0.01", "currency": "USD"},
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\n"
        "Host: localhost\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Idempotency-Key: key-{new_nonce()}\r\n"
        f"X-Request-Timestamp: {time.time_ns() // 1_000_000}\r\n"
        f"X-Request-Nonce: {new_nonce()}\r\n"
        "\r\n"
    )
    return head.encode() + body


def _operation(client: _KeepAliveClient, path: str, index: int, expected_status: int) -> Operation:
    async def post_transfer() -> None:
        status, body = await client.post(_transfer_request(path, index))
        if status != expected_status:
            raise RuntimeError(f"expected HTTP {expected_status} from {path}, got {status}: {body[:300]!r}")

    return post_transfer


async def measure_http(
    port: int, path_name: str, context: ssl.SSLContext,
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    cpu_pids: dict[str, int] | None = None,
) -> Sample:
    """Measure requests per second for ``concurrency`` keep-alive clients on one of HTTP_PATHS."""
    path, expected_status = HTTP_PATHS[path_name]
    async with _open_clients(port, context, concurrency) as clients:
        operations = [_operation(client, path, index, expected_status) for index, client in enumerate(clients)]
        return await run_closed_loop(operations, warmup_s=warmup_s, duration_s=duration_s, cpu_pids=cpu_pids)
