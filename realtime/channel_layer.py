"""Channel layer that keeps consumers alive while Redis is unreachable.

The channel layer only carries revocations (``client.revoked``). With
channels-redis's own ``RedisChannelLayer`` a Redis outage raises out of
``receive()`` and kills every open consumer. This subclass retries
``receive()`` with a backoff instead, so sockets stay open and their commands
are rejected as ``unavailable`` by the replay store until Redis returns.
Revocation stays enforced meanwhile: the transfer service checks the
client's state in every command's transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels_redis.core import RedisChannelLayer
from redis.exceptions import RedisError

__all__ = ["ResilientRedisChannelLayer"]

logger = logging.getLogger(__name__)

_FAILURES = (RedisError, OSError, TimeoutError)
_MAX_BACKOFF_S = 5.0


class ResilientRedisChannelLayer(RedisChannelLayer):
    """``RedisChannelLayer`` whose ``receive()`` waits out Redis failures."""

    _last_failure_log = 0.0

    async def receive(self, channel: str) -> dict[str, Any]:
        delay = 0.2
        while True:
            try:
                return await super().receive(channel)
            except _FAILURES as exc:
                now = time.monotonic()
                if now - ResilientRedisChannelLayer._last_failure_log > 10:
                    ResilientRedisChannelLayer._last_failure_log = now
                    logger.warning("channel layer receive failed, retrying: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)
