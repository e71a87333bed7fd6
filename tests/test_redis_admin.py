"""A Redis that may evict keys is refused: by the system check and at serve start-up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from realtime.redis_admin import EvictionPolicyError, verify_eviction_policy
from tests.conftest import Pki
from tests.support.servers import RedisClusterServers, RedisServer, manage, project_env

EVICTING_POLICIES = ["allkeys-lru", "volatile-lru"]


@pytest.fixture(scope="module")
def evicting_redis(run_dir: Path) -> Iterator[dict[str, RedisServer]]:
    """One redis-server per evicting policy, for this module only."""
    servers = {
        policy: RedisServer(run_dir / f"redis-{policy}", extra_args=("--maxmemory-policy", policy)).start()
        for policy in EVICTING_POLICIES
    }
    yield servers
    for server in servers.values():
        server.stop()


def serve_arguments(pki: Pki) -> list[str]:
    return [
        "serve",
        "--port", "0",
        "--tls-cert", str(pki.cert("server")),
        "--tls-key", str(pki.key("server")),
        "--client-ca", str(pki.ca),
    ]


@pytest.mark.parametrize("policy", EVICTING_POLICIES)
def test_verify_rejects_evicting_policy(evicting_redis: dict[str, RedisServer], policy: str) -> None:
    server = evicting_redis[policy]
    with pytest.raises(EvictionPolicyError) as caught:
        verify_eviction_policy(server.url)
    assert f"127.0.0.1:{server.port} has {policy}" in str(caught.value)
    assert "maxmemory-policy noeviction" in str(caught.value)


def test_verify_accepts_noeviction(redis_url: str) -> None:
    verify_eviction_policy(redis_url)


@pytest.mark.parametrize("policy", EVICTING_POLICIES)
def test_system_check_reports_evicting_policy(evicting_redis: dict[str, RedisServer], policy: str) -> None:
    result = manage("check", env=project_env(REDIS_URL=evicting_redis[policy].url), check=False)
    assert result.returncode != 0
    assert "realtime.E003" in result.stderr
    assert policy in result.stderr


def test_system_check_passes_noeviction(redis_url: str) -> None:
    result = manage("check", env=project_env(REDIS_URL=redis_url), check=False)
    assert result.returncode == 0, result.stderr
    assert "realtime.E003" not in result.stderr


@pytest.mark.parametrize("policy", EVICTING_POLICIES)
def test_serve_refuses_evicting_policy(evicting_redis: dict[str, RedisServer], pki: Pki, policy: str) -> None:
    env = project_env(REDIS_URL=evicting_redis[policy].url)
    result = manage(*serve_arguments(pki), env=env, check=False, timeout=60)
    assert result.returncode != 0
    assert "realtime.E003" in result.stderr


@pytest.mark.parametrize("policy", EVICTING_POLICIES)
def test_serve_start_up_check_without_system_checks(
    evicting_redis: dict[str, RedisServer], pki: Pki, policy: str
) -> None:
    """With --skip-checks, serve's own start-up verification still refuses to listen."""
    env = project_env(REDIS_URL=evicting_redis[policy].url)
    result = manage(*serve_arguments(pki), "--skip-checks", env=env, check=False, timeout=60)
    assert result.returncode != 0
    assert "Listening on" not in result.stdout
    assert f"has {policy}" in result.stderr
    assert "maxmemory-policy noeviction" in result.stderr


@pytest.mark.cluster
def test_cluster_check_names_evicting_primary(redis_cluster: RedisClusterServers, redis_cluster_url: str) -> None:
    node = redis_cluster.nodes[2]
    node.client().config_set("maxmemory-policy", "volatile-lru")
    try:
        with pytest.raises(EvictionPolicyError) as caught:
            verify_eviction_policy(redis_cluster_url, cluster=True)
        result = manage("check", env=project_env(REDIS_URL=redis_cluster_url, REDIS_CLUSTER="1"), check=False)
    finally:
        node.client().config_set("maxmemory-policy", "noeviction")
    assert f"127.0.0.1:{node.port} has volatile-lru" in str(caught.value)
    for other in redis_cluster.nodes[:2]:
        assert f"127.0.0.1:{other.port}" not in str(caught.value)
    assert result.returncode != 0
    assert "realtime.E003" in result.stderr
    verify_eviction_policy(redis_cluster_url, cluster=True)
