"""TransferConsumer's dispatch: handlers run without Channels' per-message connection cleanup hop."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from channels.testing import WebsocketCommunicator

from consumers.transfers import TransferConsumer
from realtime.identity import ClientIdentity


def communicator() -> WebsocketCommunicator:
    connection = WebsocketCommunicator(TransferConsumer.as_asgi(), "/ws/v1/transfers/")
    connection.scope["client_identity"] = ClientIdentity(
        client_id=1,
        name="alice",
        fingerprint_sha256="ab" * 32,
        not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30),
        source="tls",
    )
    return connection


async def test_frames_skip_close_old_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    async def record_call() -> None:
        calls.append(1)

    monkeypatch.setattr("channels.consumer.aclose_old_connections", record_call)
    connection = communicator()
    connected, _ = await connection.connect()
    assert connected
    welcome = json.loads(await connection.receive_from())

    await connection.send_to(text_data="not json")
    rejected = json.loads(await connection.receive_from())

    await connection.disconnect()
    assert welcome["type"] == "welcome"
    assert rejected["type"] == "rejected"
    assert rejected["code"] == "invalid_message"
    assert calls == []


async def test_unknown_message_type_raises() -> None:
    consumer = TransferConsumer()

    with pytest.raises(ValueError, match="no handler for message type 'bench.unknown'"):
        await consumer.dispatch({"type": "bench.unknown"})
