"""Start-up and health checks of the Redis server behind the replay store."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from .replay.redis import EVICTION_SAFE_POLICIES

__all__ = ["EvictionPolicyError", "RedisAdminError", "eviction_policies", "verify_eviction_policy"]


class RedisAdminError(RuntimeError):
    """Redis could not be asked for its configuration."""


class EvictionPolicyError(RuntimeError):
    """Redis may evict keys, and an evicted nonce is a replay let through."""


def eviction_policies(url: str, *, cluster: bool = False, timeout_s: float = 2.0) -> dict[str, str]:
    """Return each primary's ``maxmemory-policy``, keyed by ``host:port``."""
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    try:
        if cluster:
            client = RedisCluster.from_url(url, **options)
            try:
                replies = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            finally:
                client.close()
            return {node: str(info.get("maxmemory_policy")) for node, info in replies.items()}
        client = redis.Redis.from_url(url, **options)
        try:
            info = client.info("memory")
        finally:
            client.close()
        connection = client.connection_pool.connection_kwargs
        return {f"{connection.get('host')}:{connection.get('port')}": str(info.get("maxmemory_policy"))}
    except (RedisError, OSError) as exc:
        raise RedisAdminError(f"could not read maxmemory-policy from Redis at {_redact(url)}: {exc}") from exc


def verify_eviction_policy(url: str, *, cluster: bool = False) -> None:
    """Raise EvictionPolicyError unless every primary runs with ``maxmemory-policy noeviction``."""
    unsafe = {node: policy for node, policy in eviction_policies(url, cluster=cluster).items() if policy not in EVICTION_SAFE_POLICIES}
    if unsafe:
        listed = ", ".join(f"{node} has {policy}" for node, policy in sorted(unsafe.items()))
        raise EvictionPolicyError(
            f"Redis may evict replay-store keys ({listed}); set 'maxmemory-policy noeviction' "
            "in redis.conf, because an evicted nonce lets its replay through"
        )


def _redact(url: str) -> str:
    """Drop credentials from a Redis URL before it goes into a message.

    redis-py reads a password from the user-info part and from the
    ``password`` query parameter, the only form a ``unix://`` URL has.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = [(name, "***" if name.lower() in ("password", "username") else value) for name, value in parse_qsl(parts.query)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), parts.fragment))
