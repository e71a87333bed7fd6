"""TransferConsumer's revocation and certificate-expiry paths, in process.

The consumer runs under channels' WebsocketCommunicator with the
in-memory channel layer, and the identity the middleware would have put in
the scope. The end-to-end versions through nginx are in test_e2e_nginx.py.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from consumers.revocation import announce_revocation
from consumers.transfers import CLOSE_CERTIFICATE_EXPIRED, CLOSE_CLIENT_DEACTIVATED, TransferConsumer
from realtime.identity import ClientIdentity
from tests.support.identities import register_identity

pytestmark = pytest.mark.django_db(transaction=True)


async def _client(name: str, *, active: bool = True, not_after: dt.datetime | None = None) -> ClientIdentity:
    return await sync_to_async(register_identity)(name, active=active, not_after=not_after)


def _communicator(identity: ClientIdentity) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(TransferConsumer.as_asgi(), "/ws/v1/transfers/")
    communicator.scope["client_identity"] = identity
    return communicator


async def test_client_deactivated_during_handshake() -> None:
    # The middleware admitted the client, then the deactivation committed
    # before the consumer joined its revocation group.
    client = await _client("racer", active=False)
    communicator = _communicator(client)
    connected, _ = await communicator.connect()
    assert connected is False
    await communicator.disconnect()


async def test_revocation_closes_with_4001() -> None:
    client = await _client("revoked")
    communicator = _communicator(client)
    connected, _ = await communicator.connect()
    assert connected is True
    assert (await communicator.receive_json_from())["type"] == "welcome"

    await announce_revocation(client.client_id)

    closed = await communicator.receive_output(timeout=1)
    assert closed == {"type": "websocket.close", "code": CLOSE_CLIENT_DEACTIVATED}
    await communicator.disconnect()


async def test_certificate_expiry_closes_with_4002() -> None:
    not_after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=0.5)
    client = await _client("expiring", not_after=not_after)
    communicator = _communicator(client)
    connected, _ = await communicator.connect()
    assert connected is True
    assert (await communicator.receive_json_from())["type"] == "welcome"

    closed = await communicator.receive_output(timeout=3)
    closed_at = time.time()

    assert closed == {"type": "websocket.close", "code": CLOSE_CERTIFICATE_EXPIRED}
    assert closed_at >= not_after.timestamp()
    await communicator.disconnect()


async def test_disconnect_leaves_revocation_group() -> None:
    client = await _client("leaving")
    communicator = _communicator(client)
    await communicator.connect()
    await communicator.receive_json_from()
    await communicator.disconnect()

    layer = get_channel_layer()
    # The in-memory layer keeps groups in a dict of channel names.
    assert not layer.groups.get(f"client.{client.client_id}")  # type: ignore[attr-defined]
