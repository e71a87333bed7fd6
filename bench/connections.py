"""Idle sockets: resident memory of one daphne process holding many authenticated WebSockets.

Client processes open sockets on the product's endpoint, each through the
full mutual-TLS handshake, the identity lookup and the welcome frame, and
then hold them without sending. The parent reads the server's resident set
size (VmRSS) once every socket of a level is open.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import ssl
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import websockets
from websockets.protocol import State

from realtime.client import client_ssl_context

from .services import rss_kib

__all__ = ["IdleLevel", "measure_idle_sockets"]

_PATH = "/ws/v1/transfers/"
# Handshakes one client process runs at once; the server's listen backlog is 128.
_HANDSHAKES_PER_PROCESS = 24
# Seconds to let the server finish connection work (group joins, timers) before reading RSS.
_SETTLE_S = 2.0


@dataclass(frozen=True)
class IdleLevel:
    """Server memory with ``sockets`` idle authenticated sockets open."""

    sockets: int
    rss_kib: int
    # (rss - rss with no socket open) / sockets.
    kib_per_socket: float
    open_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "sockets": self.sockets,
            "rss_kib": self.rss_kib,
            "rss_mib": round(self.rss_kib / 1024, 1),
            "kib_per_socket": round(self.kib_per_socket, 1),
            "open_seconds": round(self.open_seconds, 1),
        }


def _client_process(port: int, files: tuple[str, str, str], control: Connection) -> None:
    """Keep sockets open in a child process, as the messages on ``control`` request.

    An integer is the new number of sockets to keep open, "count" requests
    the number still open, and None closes them all and ends the process.
    """
    asyncio.run(_hold_sockets(port, files, control))


async def _hold_sockets(port: int, files: tuple[str, str, str], control: Connection) -> None:
    context = client_ssl_context(*files)
    url = f"wss://localhost:{port}{_PATH}"
    sockets: list[Any] = []
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(_HANDSHAKES_PER_PROCESS)

    async def open_one() -> Any:
        async with limit:
            connection = await websockets.connect(
                url, ssl=context, compression=None, ping_interval=None, open_timeout=120, max_size=2**16
            )
            frame = json.loads(await asyncio.wait_for(connection.recv(), 60))
            if frame.get("type") != "welcome":
                raise RuntimeError(f"expected a welcome frame, got {frame!r}")
            return connection

    try:
        while True:
            target = await loop.run_in_executor(None, control.recv)
            if target is None:
                break
            if target == "count":
                control.send({"open": sum(1 for connection in sockets if connection.state is State.OPEN)})
                continue
            try:
                opened = await asyncio.gather(*(open_one() for _ in range(target - len(sockets))))
            except Exception as exc:  # reported to the parent, which raises it
                control.send({"error": f"{type(exc).__name__}: {exc}", "open": len(sockets)})
                continue
            sockets.extend(opened)
            control.send({"open": len(sockets)})
    finally:
        await asyncio.gather(*(connection.close() for connection in sockets), return_exceptions=True)


def measure_idle_sockets(port: int, server_pid: int, files: tuple[Path, Path, Path], levels: tuple[int, ...], processes: int) -> dict[str, Any]:
    """Open sockets up to each level in turn and read the server's RSS at each."""
    context = multiprocessing.get_context("spawn")
    pipes = []
    children = []
    file_names = tuple(str(path) for path in files)
    for _ in range(processes):
        parent_end, child_end = context.Pipe()
        child = context.Process(target=_client_process, args=(port, file_names, child_end), daemon=True)
        child.start()
        pipes.append(parent_end)
        children.append(child)

    try:
        # One socket opened and closed first, so lazy imports and first-use
        # caches are in the baseline rather than in the per-socket figure.
        asyncio.run(_warm_up(port, file_names))
        time.sleep(_SETTLE_S)
        baseline = rss_kib(server_pid)
        results = []
        for level in levels:
            started = time.perf_counter()
            shares = [level // processes + (1 if index < level % processes else 0) for index in range(processes)]
            for pipe, share in zip(pipes, shares, strict=False):
                pipe.send(share)
            for pipe in pipes:
                reply = pipe.recv()
                if "error" in reply:
                    raise RuntimeError(f"an idle-socket client failed after {reply['open']} sockets: {reply['error']}")
            opened = time.perf_counter() - started
            time.sleep(_SETTLE_S)
            rss = rss_kib(server_pid)
            _require_open(pipes, level)
            results.append(IdleLevel(level, rss, (rss - baseline) / level, opened))
    finally:
        for pipe in pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for child in children:
            child.join(timeout=60)
            if child.is_alive():
                child.terminate()
    return {"baseline_rss_kib": baseline, "levels": [level.as_dict() for level in results]}


def _require_open(pipes: list[Connection], expected: int) -> None:
    """Raise unless the client processes still have ``expected`` sockets open, after the RSS was read."""
    for pipe in pipes:
        pipe.send("count")
    still_open = sum(pipe.recv()["open"] for pipe in pipes)
    if still_open != expected:
        raise RuntimeError(f"{expected - still_open} of {expected} idle sockets were closed by the server; see its log")


async def _warm_up(port: int, files: tuple[str, str, str]) -> None:
    context: ssl.SSLContext = client_ssl_context(*files)
    async with websockets.connect(f"wss://localhost:{port}{_PATH}", ssl=context, compression=None) as connection:
        await asyncio.wait_for(connection.recv(), 30)
