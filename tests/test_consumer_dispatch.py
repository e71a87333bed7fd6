"""TransferConsumer's dispatch: handlers run without Channels' per-message connection cleanup hop."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from consumers.transfers import TransferConsumer
from tests.support.identities import register_identity


pytestmark = pytest.mark.django_db(transaction=True)


async def communicator() -> WebsocketCommunicator:
    connection = WebsocketCommunicator(TransferConsumer.as_asgi(), "/ws/v1/transfers/")
    connection.scope["client_identity"] = await sync_to_async(register_identity)("alice")
    return connection


async def test_frames_skip_close_old_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    async def record_call() -> None:
        calls.append(1)

    monkeypatch.setattr("channels.consumer.aclose_old_connections", record_call)
    connection = await communicator()
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
