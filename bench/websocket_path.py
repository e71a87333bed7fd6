"""WebSocket path: commands per second through a real ``serve`` process over mutual TLS.

Every client keeps one authenticated socket open and sends its next frame when the
reply to the previous one has arrived. All paths receive the same transfer
frames; they differ only in what the server does with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import websockets

from realtime.client import CommandBuilder

from .stats import Operation, Sample, run_closed_loop

__all__ = ["WS_PATHS", "measure_websocket"]

# Path on the server, whether it sends a welcome frame, and the reply type every frame must get.
WS_PATHS = {
    "echo": ("/bench/ws/echo/", False, "transfer"),
    "replay": ("/bench/ws/replay/", True, "transfer.executed"),
    "ledger": ("/ws/v1/transfers/", True, "transfer.executed"),
}


@contextlib.asynccontextmanager
async def _open_sockets(url: str, context: ssl.SSLContext, count: int, *, welcome: bool) -> AsyncIterator[list[Any]]:
    sockets: list[Any] = []
    try:
        for _ in range(count):
            connection = await websockets.connect(
                url, ssl=context, compression=None, ping_interval=None, max_size=2**20, open_timeout=30
            )
            sockets.append(connection)
            if welcome:
                frame = json.loads(await asyncio.wait_for(connection.recv(), 10))
                if frame.get("type") != "welcome":
                    raise RuntimeError(f"expected a welcome frame from {url}, got {frame!r}")
        yield sockets
    finally:
        await asyncio.gather(*(connection.close() for connection in sockets), return_exceptions=True)


def _operation(connection: Any, index: int, expected_type: str) -> Operation:
    builder = CommandBuilder()
    source, target = f"S-{index}", f"T-{index}"

    async def send_command() -> None:
        await connection.send(builder.transfer(from_account=source, to_account=target, amount="0.01"))
        reply = json.loads(await connection.recv())
        if reply.get("type") != expected_type:
            raise RuntimeError(f"expected a {expected_type!r} reply, got {reply!r}")

    return send_command


async def measure_websocket(
    port: int, path_name: str, context: ssl.SSLContext,
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    cpu_pids: dict[str, int] | None = None,
) -> Sample:
    """Measure commands per second for ``concurrency`` clients on one of WS_PATHS."""
    path, welcome, expected_type = WS_PATHS[path_name]
    url = f"wss://localhost:{port}{path}"
    async with _open_sockets(url, context, concurrency, welcome=welcome) as sockets:
        operations = [_operation(connection, index, expected_type) for index, connection in enumerate(sockets)]
        return await run_closed_loop(operations, warmup_s=warmup_s, duration_s=duration_s, cpu_pids=cpu_pids)
