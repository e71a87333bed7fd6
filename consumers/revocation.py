"""Closing the open sockets of a deactivated client or a revoked certificate.

Each consumer joins its client's channel-layer group. With a Redis channel
layer (``REDIS_URL`` set: ``RedisChannelLayer``, or ``RedisPubSubChannelLayer``
on a Redis Cluster) a message sent to the group reaches every daphne worker.
``InMemoryChannelLayer`` reaches only the sockets of the process that sends
it. Two backstops cover a message that never arrives: every command checks
the client and certificate in its transaction, and every open socket checks
them again each ``REVOCATION_RECHECK_S`` seconds.
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

__all__ = ["announce_revocation", "client_group"]


def client_group(client_id: int) -> str:
    return f"client.{client_id}"


async def announce_revocation(client_id: int, fingerprint: str | None = None) -> None:
    """Tell the client's consumers, on every worker, to close their sockets.

    With ``fingerprint``, only sockets that presented that certificate close.
    """
    layer = get_channel_layer()
    if layer is None:  # pragma: no cover - settings always configure a layer
        return
    await layer.group_send(client_group(client_id), {"type": "client.revoked", "fingerprint": fingerprint})


def announce_revocation_sync(client_id: int, fingerprint: str | None = None) -> None:
    async_to_sync(announce_revocation)(client_id, fingerprint)
