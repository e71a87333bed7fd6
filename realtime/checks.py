"""System checks for configuration that would weaken replay protection or identity."""

from __future__ import annotations

import importlib.util
from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from .proxy_identity import PROXY_HEADER_FORMATS, trusted_proxy_networks


@register("security")
def check_proxy_identity(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    messages: list[Any] = []
    header_format = settings.MTLS_PROXY_HEADERS
    if header_format is not None and header_format not in PROXY_HEADER_FORMATS:
        messages.append(
            Error(
                f"MTLS_PROXY_HEADERS is {header_format!r}.",
                hint=f"Set it to one of {', '.join(PROXY_HEADER_FORMATS)}, or unset it to turn proxy identity off.",
                id="realtime.E001",
            )
        )
    try:
        trusted_proxy_networks.cache_clear()
        networks = trusted_proxy_networks()
    except ImproperlyConfigured as exc:
        messages.append(Error(str(exc), id="realtime.E002"))
        networks = ()
    if header_format is not None and not networks:
        messages.append(
            Warning(
                "Proxy identity is enabled but MTLS_TRUSTED_PROXIES is empty.",
                hint=(
                    "Forwarded certificate headers are read only on the unix socket. If the proxy "
                    "connects over TCP, list its addresses in MTLS_TRUSTED_PROXIES."
                ),
                id="realtime.W001",
            )
        )
    return messages


@register("security")
def check_redis_eviction(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    if not settings.REDIS_URL:
        return []
    from .redis_admin import EvictionPolicyError, RedisAdminError, verify_eviction_policy

    try:
        verify_eviction_policy(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER)
    except EvictionPolicyError as exc:
        return [Error(str(exc), hint="Set 'maxmemory-policy noeviction' on every Redis primary.", id="realtime.E003")]
    except RedisAdminError as exc:
        return [
            Warning(
                str(exc),
                hint="The eviction policy could not be verified; the replay store rejects commands until Redis answers.",
                id="realtime.W002",
            )
        ]
    return []


@register("security")
def check_channel_layer_eviction(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    url = getattr(settings, "CHANNEL_LAYER_REDIS_URL", None)
    # The replay store's server is checked by check_redis_eviction.
    if not url or url == settings.REDIS_URL:
        return []
    from .redis_admin import RedisAdminError, eviction_policies
    from .replay.redis import EVICTION_SAFE_POLICIES

    try:
        policies = eviction_policies(url)
    except RedisAdminError as exc:
        return [Warning(str(exc), hint="The channel layer's eviction policy could not be verified.", id="realtime.W005")]
    unsafe = {node: policy for node, policy in policies.items() if policy not in EVICTION_SAFE_POLICIES}
    if not unsafe:
        return []
    listed = ", ".join(f"{node} has {policy}" for node, policy in sorted(unsafe.items()))
    return [
        Warning(
            f"The channel layer's Redis may evict keys ({listed}).",
            hint=(
                "An evicted group membership keeps deactivate_client from closing that socket at once, "
                "so it is rejected only at its next command. Set 'maxmemory-policy noeviction'."
            ),
            id="realtime.W004",
        )
    ]


@register("compatibility")
def check_http2_absent(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    if importlib.util.find_spec("h2") is None:
        return []
    return [
        Warning(
            "The h2 package is installed, so daphne negotiates HTTP/2 over TLS.",
            hint="Uninstall h2: over HTTP/2, daphne does not pass the TLS details that client identity needs.",
            id="realtime.W003",
        )
    ]
