"""Settings read from the environment: the channel layer for each Redis mode, and rejected combinations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.servers import PROJECT_ROOT, project_env

_PRINT_SETTINGS = (
    "import json, django; django.setup(); from django.conf import settings; "
    "print(json.dumps({'layers': settings.CHANNEL_LAYERS, 'cluster': settings.REDIS_CLUSTER}))"
)


def load_settings(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _PRINT_SETTINGS],
        cwd=PROJECT_ROOT,
        env=project_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def channel_layer(**env: str) -> dict:
    result = load_settings(**env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["layers"]["default"]


def test_layer_in_memory_without_redis() -> None:
    assert channel_layer()["BACKEND"] == "channels.layers.InMemoryChannelLayer"


def test_layer_on_single_redis() -> None:
    layer = channel_layer(REDIS_URL="redis://127.0.0.1:1/0")
    assert layer["BACKEND"] == "realtime.channel_layers.RedisChannelLayer"
    assert layer["CONFIG"]["hosts"] == [{"address": "redis://127.0.0.1:1/0", "socket_timeout": 15}]


def test_layer_pubsub_on_cluster_seed() -> None:
    layer = channel_layer(REDIS_URL="redis://127.0.0.1:1/0", REDIS_CLUSTER="1")
    assert layer["BACKEND"] == "realtime.channel_layers.RedisPubSubChannelLayer"
    assert layer["CONFIG"]["hosts"] == ["redis://127.0.0.1:1/0"]


def test_layer_pubsub_sharded_over_cluster_nodes() -> None:
    nodes = ["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0", "redis://127.0.0.1:3/0"]
    layer = channel_layer(REDIS_URL=nodes[0], REDIS_CLUSTER="1", REDIS_CLUSTER_NODES=",".join(nodes))
    assert layer["BACKEND"] == "realtime.channel_layers.RedisPubSubChannelLayer"
    assert layer["CONFIG"]["hosts"] == nodes


def test_layer_separate_redis_in_cluster_mode() -> None:
    layer = channel_layer(
        REDIS_URL="redis://127.0.0.1:1/0", REDIS_CLUSTER="1", CHANNEL_LAYER_REDIS_URL="redis://127.0.0.1:9/0"
    )
    assert layer["BACKEND"] == "realtime.channel_layers.RedisChannelLayer"
    assert layer["CONFIG"]["hosts"] == [{"address": "redis://127.0.0.1:9/0", "socket_timeout": 15}]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_CLUSTER": "1"}, "REDIS_CLUSTER=1 needs REDIS_URL"),
        (
            {"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_CLUSTER": "1", "REDIS_CLUSTER_NODES": "127.0.0.1:2"},
            "REDIS_CLUSTER_NODES must list redis://",
        ),
        (
            {"REPLAY_REDIS_WAIT_REPLICAS": "1", "REPLAY_REDIS_TIMEOUT_MS": "100", "REPLAY_REDIS_WAIT_TIMEOUT_MS": "100"},
            "REPLAY_REDIS_WAIT_TIMEOUT_MS (100) must be below REPLAY_REDIS_TIMEOUT_MS (100)",
        ),
        ({"REPLAY_SEQ_WINDOW": "0"}, "REPLAY_SEQ_WINDOW must be between 1 and 4096"),
        ({"REPLAY_SESSION_TTL_S": "59"}, "REPLAY_SESSION_TTL_S must be >= 60"),
    ],
)
def test_invalid_combination_rejected(env: dict[str, str], message: str) -> None:
    result = load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
