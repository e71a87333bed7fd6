"""The replay engine: one check per command, shared by WebSocket and HTTP.

``get_replay_store()`` returns the store configured in settings: Redis when
``REDIS_URL`` is set, the in-process store otherwise, or the class named by
``REPLAY_STORE``.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .base import ReplayCheck, ReplayStore, ReplayVerdict
from .memory import MemoryReplayStore
from .sessions import ConnectionSession, new_session_token, parse_session_token

__all__ = [
    "ConnectionSession",
    "MemoryReplayStore",
    "ReplayCheck",
    "ReplayStore",
    "ReplayVerdict",
    "build_replay_store",
    "connect_setting_signals",
    "get_replay_store",
    "new_session_token",
    "parse_session_token",
]

# One store per event loop: redis-py's asyncio connections belong to the
# loop that opened them, and tests run several loops in one process.
_stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReplayStore] = weakref.WeakKeyDictionary()
# The in-process store must be shared by every loop of the process, or a
# nonce recorded on one loop would pass on another.
_memory_store: MemoryReplayStore | None = None

_SETTINGS = {
    "REDIS_URL",
    "REDIS_CLUSTER",
    "REPLAY_MAX_SKEW_MS",
    "REPLAY_SEQ_WINDOW",
    "REPLAY_SESSION_TTL_S",
    "REPLAY_MAX_SESSIONS_PER_CLIENT",
    "REPLAY_REDIS_TIMEOUT_MS",
    "REPLAY_REDIS_WAIT_REPLICAS",
    "REPLAY_REDIS_WAIT_TIMEOUT_MS",
    "REPLAY_REDIS_MAX_CONNECTIONS",
    "REPLAY_STORE",
}


def build_replay_store(**overrides: Any) -> ReplayStore:
    """Build a new store from settings; keyword arguments override single options."""
    common: dict[str, Any] = {
        "max_skew_ms": settings.REPLAY_MAX_SKEW_MS,
        "seq_window": settings.REPLAY_SEQ_WINDOW,
        "session_ttl_ms": settings.REPLAY_SESSION_TTL_S * 1000,
        "max_sessions": settings.REPLAY_MAX_SESSIONS_PER_CLIENT,
    }
    store_path = getattr(settings, "REPLAY_STORE", None)
    redis_url = getattr(settings, "REDIS_URL", None)

    if store_path:
        store_class = import_string(store_path)
    elif redis_url:
        from .redis import RedisReplayStore as store_class
    else:
        store_class = MemoryReplayStore

    if issubclass(store_class, MemoryReplayStore):
        return store_class(**{**common, **overrides})

    if not redis_url:
        raise ImproperlyConfigured(f"REPLAY_STORE={store_path!r} needs REDIS_URL to be set")
    options = {
        **common,
        "timeout_ms": settings.REPLAY_REDIS_TIMEOUT_MS,
        "cluster": settings.REDIS_CLUSTER,
        "wait_replicas": settings.REPLAY_REDIS_WAIT_REPLICAS,
        "wait_timeout_ms": settings.REPLAY_REDIS_WAIT_TIMEOUT_MS,
        "max_connections": settings.REPLAY_REDIS_MAX_CONNECTIONS,
        **overrides,
    }
    return store_class(redis_url, **options)


def get_replay_store() -> ReplayStore:
    """Return the configured store for the running event loop."""
    global _memory_store
    loop = asyncio.get_running_loop()
    store = _stores.get(loop)
    if store is None:
        store = build_replay_store()
        if isinstance(store, MemoryReplayStore):
            if _memory_store is None:
                _memory_store = store
            store = _memory_store
        _stores[loop] = store
    return store


def reset_replay_stores(**kwargs: Any) -> None:
    """Forget cached stores so that the next call builds them from current settings."""
    global _memory_store
    if kwargs.get("setting") not in (None, *_SETTINGS):
        return
    _stores.clear()
    _memory_store = None


def connect_setting_signals() -> None:
    setting_changed.connect(reset_replay_stores, dispatch_uid="realtime.replay.reset")
