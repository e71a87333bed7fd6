"""The Redis channel layer, kept from ending every consumer when Redis goes away."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from channels_redis.core import RedisChannelLayer as _ChannelsRedisLayer
from channels_redis.pubsub import RedisPubSubChannelLayer as _ChannelsPubSubLayer
from redis.exceptions import RedisError

__all__ = ["RedisChannelLayer", "RedisPubSubChannelLayer"]

logger = logging.getLogger(__name__)

_RETRY_DELAY_S = 1.0
_LOG_INTERVAL_S = 10.0


class RedisChannelLayer(_ChannelsRedisLayer):
    """channels-redis's RedisChannelLayer whose ``receive()`` waits out a Redis outage.

    Every consumer awaits ``receive()`` for as long as its socket is open,
    and channels-redis raises from it when Redis is unreachable, which ends
    the consumer and closes its WebSocket with 1011. This layer logs and
    tries again every second instead, so while Redis is down commands are
    rejected as ``unavailable`` and the sockets stay open. Messages sent to
    a channel during the outage are lost; a revocation among them takes
    effect at the client's next command instead (see consumers.revocation).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_outage_log = 0.0
        self._suppressed_outage_logs = 0

    async def receive(self, channel: str) -> dict[str, Any]:
        while True:
            try:
                return await super().receive(channel)
            except (RedisError, OSError) as exc:
                self._log_outage(exc)
                await asyncio.sleep(_RETRY_DELAY_S)

    def _log_outage(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_outage_log < _LOG_INTERVAL_S:
            self._suppressed_outage_logs += 1
            return
        logger.warning(
            "channel layer cannot reach Redis, retrying every %.0f s (error=%s: %s, %d similar errors suppressed)",
            _RETRY_DELAY_S,
            type(exc).__name__,
            exc,
            self._suppressed_outage_logs,
        )
        self._last_outage_log = now
        self._suppressed_outage_logs = 0


class RedisPubSubChannelLayer(_ChannelsPubSubLayer):
    """channels-redis's pub/sub layer whose ``new_channel()`` survives a shard that is down.

    Every consumer requests a channel before its handshake is accepted, and
    the pub/sub layer subscribes to it on the channel's shard at once. With
    one node of a Redis Cluster down, a share of the handshakes would fail
    with HTTP 500. This layer hands out the channel anyway and logs. Such a
    socket receives no revocation message until it reconnects, so its
    revocation takes effect at its next command or periodic identity check.
    """

    _last_outage_log = 0.0

    async def new_channel(self, prefix: str = "specific.") -> str:
        # NOTE: relies on RedisPubSubLoopLayer's _subscribe_to_channel, which
        # creates the channel's queue before it subscribes (channels-redis 4.3).
        layer = self._get_layer()
        channel = f"{layer.prefix}{prefix}{uuid.uuid4().hex}"
        try:
            await layer._subscribe_to_channel(channel)
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if now - RedisPubSubChannelLayer._last_outage_log >= _LOG_INTERVAL_S:
                RedisPubSubChannelLayer._last_outage_log = now
                logger.warning(
                    "channel layer shard unreachable; %s receives no revocation messages (error=%s: %s)",
                    channel,
                    type(exc).__name__,
                    exc,
                )
        return channel
