"""The files under deploy/: the Redis snippet on a real redis-server, the systemd unit, the environment example."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from realtime.checks import check_redis_eviction
from tests.support.servers import PROJECT_ROOT, _stop, free_port, wait_for

DEPLOY = PROJECT_ROOT / "deploy"


def test_redis_snippet_sets_noeviction(settings, tmp_path: Path) -> None:
    port = free_port()
    # The snippet as operators install it; only the port, the data directory
    # and persistence are the test's own.
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            str(DEPLOY / "redis" / "realtime.conf"),
            "--port", str(port),
            "--dir", str(tmp_path),
            "--appendonly", "no",
            "--save", "",
            "--logfile", str(tmp_path / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)
    try:
        wait_for(lambda: _answers(process, client), timeout=10, message="redis-server with deploy/redis/realtime.conf")
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert int(client.config_get("maxmemory")["maxmemory"]) == 512 * 1024 * 1024
        settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
        settings.REDIS_CLUSTER = False
        assert check_redis_eviction() == []
    finally:
        client.close()
        _stop(process)


def _answers(process: subprocess.Popen, client: redis.Redis) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"redis-server exited with {process.returncode}")
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "systemd" / "realtime@.service").read_text().replace("\\\n", " "))
    return parser


def test_systemd_unit_runs_serve_on_socket() -> None:
    service = _unit()["Service"]
    command = service["ExecStart"].split()
    assert command[1:3] == ["manage.py", "serve"]
    assert command[command.index("--unix-socket") + 1] == "/run/realtime/%i/daphne.sock"
    assert service["RuntimeDirectory"] == "realtime/%i"
    assert service["EnvironmentFile"] == "/etc/realtime/realtime.env"
    assert service["Environment"] in ("DJANGO_SETTINGS_MODULE=realtime.settings_production", "PYTHONUNBUFFERED=1")
    assert "realtime.settings_production" in (DEPLOY / "systemd" / "realtime@.service").read_text()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (DEPLOY / "systemd" / "realtime@.service").read_text()
    # verify checks that ExecStart's program exists, so it gets this run's
    # interpreter and checkout.
    text = text.replace("/opt/realtime/venv/bin/python", sys.executable).replace("/opt/realtime/app", str(PROJECT_ROOT))
    unit = tmp_path / "realtime@1.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if str(unit) in line]
    assert complaints == []


def test_environment_example_names_required_variables() -> None:
    example = (DEPLOY / "systemd" / "realtime.env.example").read_text()
    names = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    for required in ("DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE"):
        assert required in names, required
    assert "DJANGO_SECRET_KEY=\n" in example
