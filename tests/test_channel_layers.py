"""The project's channel layers keep consumers working while a Redis shard is down."""

from __future__ import annotations

import pytest

from realtime.channel_layers import RedisPubSubChannelLayer
from tests.support.servers import RedisServer, free_port


async def test_pubsub_new_channel_survives_dead_shard(redis_server: RedisServer) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    layer = RedisPubSubChannelLayer(hosts=[redis_server.url, dead], prefix="test-layer")
    try:
        # Channel names hash to both shards; every call must still return a name.
        names = [await layer.new_channel() for _ in range(16)]
        assert len(set(names)) == 16
        # Channels on the live shard still carry messages.
        live = names[0]
        for name in names:
            if layer._get_layer()._get_shard(name) is layer._get_layer()._shards[0]:
                live = name
                break
        await layer.send(live, {"type": "client.revoked", "fingerprint": None})
        message = await layer.receive(live)
        assert message["type"] == "client.revoked"
    finally:
        await layer.flush()


@pytest.mark.parametrize("prefix", ["specific.", "other."])
async def test_pubsub_channel_names_keep_prefix(redis_server: RedisServer, prefix: str) -> None:
    layer = RedisPubSubChannelLayer(hosts=[redis_server.url], prefix="test-layer")
    try:
        assert (await layer.new_channel(prefix)).startswith(f"test-layer{prefix}")
    finally:
        await layer.flush()
