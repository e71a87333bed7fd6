"""System checks (realtime.checks) against real redis-server processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from realtime.checks import check_channel_layer_eviction, check_proxy_identity, check_redis_eviction
from tests.support.servers import RedisServer, free_port, manage, project_env

POLICIES = ("noeviction", "allkeys-lru", "volatile-lru", "volatile-ttl", "allkeys-random")


@pytest.fixture(scope="module")
def redis_by_policy(run_dir: Path) -> Iterator[dict[str, RedisServer]]:
    """One redis-server per maxmemory-policy; a later command-line option overrides the default noeviction."""
    servers: dict[str, RedisServer] = {}
    try:
        for policy in POLICIES:
            servers[policy] = RedisServer(run_dir / f"checks-{policy}", extra_args=("--maxmemory-policy", policy)).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def ids(messages: list) -> list[str]:
    return [message.id for message in messages]


# --- proxy identity -----------------------------------------------------------------


def test_proxy_identity_off(settings) -> None:
    settings.MTLS_PROXY_HEADERS = None
    settings.MTLS_TRUSTED_PROXIES = []
    assert check_proxy_identity() == []


@pytest.mark.parametrize("header_format", ["nginx", "rfc9440", "envoy"])
def test_proxy_identity_without_trusted_proxy(settings, header_format: str) -> None:
    settings.MTLS_PROXY_HEADERS = header_format
    settings.MTLS_TRUSTED_PROXIES = []
    messages = check_proxy_identity()
    assert ids(messages) == ["realtime.W001"]
    assert "MTLS_TRUSTED_PROXIES" in messages[0].msg


def test_proxy_identity_with_trusted_proxy(settings) -> None:
    settings.MTLS_PROXY_HEADERS = "nginx"
    settings.MTLS_TRUSTED_PROXIES = ["127.0.0.1", "10.0.0.0/8"]
    assert check_proxy_identity() == []


def test_proxy_identity_unknown_format(settings) -> None:
    settings.MTLS_PROXY_HEADERS = "haproxy"
    settings.MTLS_TRUSTED_PROXIES = ["127.0.0.1"]
    assert ids(check_proxy_identity()) == ["realtime.E001"]


def test_proxy_identity_invalid_trusted_entry(settings) -> None:
    settings.MTLS_PROXY_HEADERS = "nginx"
    settings.MTLS_TRUSTED_PROXIES = ["proxy.example.com"]
    messages = check_proxy_identity()
    assert "realtime.E002" in ids(messages)
    assert "proxy.example.com" in next(message.msg for message in messages if message.id == "realtime.E002")


# --- Redis eviction policy ---------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_replay_store_eviction_policy(settings, redis_by_policy: dict[str, RedisServer], policy: str) -> None:
    server = redis_by_policy[policy]
    settings.REDIS_URL = server.url
    settings.REDIS_CLUSTER = False
    messages = check_redis_eviction()
    if policy == "noeviction":
        assert messages == []
    else:
        assert ids(messages) == ["realtime.E003"]
        assert policy in messages[0].msg
        assert f"127.0.0.1:{server.port}" in messages[0].msg


def test_replay_store_unreachable(settings) -> None:
    settings.REDIS_URL = f"redis://:secret-password@127.0.0.1:{free_port()}/0"
    settings.REDIS_CLUSTER = False
    messages = check_redis_eviction()
    assert ids(messages) == ["realtime.W002"]
    assert "secret-password" not in messages[0].msg


@pytest.mark.parametrize("policy", POLICIES)
def test_channel_layer_eviction_policy(settings, redis_by_policy: dict[str, RedisServer], policy: str) -> None:
    settings.REDIS_URL = redis_by_policy["noeviction"].url
    settings.CHANNEL_LAYER_REDIS_URL = redis_by_policy[policy].url
    messages = check_channel_layer_eviction()
    if policy == "noeviction":
        assert messages == []
    else:
        assert ids(messages) == ["realtime.W004"]
        assert policy in messages[0].msg


def test_channel_layer_same_server_checked_once(settings, redis_by_policy: dict[str, RedisServer]) -> None:
    url = redis_by_policy["allkeys-lru"].url
    settings.REDIS_URL = url
    settings.CHANNEL_LAYER_REDIS_URL = url
    assert check_channel_layer_eviction() == []
    assert ids(check_redis_eviction()) == ["realtime.E003"]


def test_serve_refuses_evicting_redis(redis_by_policy: dict[str, RedisServer], tmp_path: Path) -> None:
    env = project_env(REDIS_URL=redis_by_policy["volatile-lru"].url)
    result = manage("serve", "--unix-socket", str(tmp_path / "realtime.sock"), env=env, check=False, timeout=60)
    assert result.returncode != 0
    assert "realtime.E003" in result.stderr
    assert "volatile-lru" in result.stderr
    assert not (tmp_path / "realtime.sock").exists()


def test_check_command_reports_w001() -> None:
    result = manage("check", env=project_env(MTLS_PROXY_HEADERS="nginx"), check=False)
    assert result.returncode == 0, result.stderr
    assert "realtime.W001" in result.stderr
