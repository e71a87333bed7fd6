"""realtime.settings_production, loaded in a subprocess with a chosen environment."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys

import pytest

from tests.support.servers import PROJECT_ROOT, project_env

_PRINT_SETTINGS = """
import json
from django.conf import settings
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "ALLOWED_HOSTS": settings.ALLOWED_HOSTS,
    "MTLS_PROXY_HEADERS": settings.MTLS_PROXY_HEADERS,
    "CHANNEL_LAYER": settings.CHANNEL_LAYERS["default"]["BACKEND"],
    "DATABASE_ENGINE": settings.DATABASES["default"]["ENGINE"],
    "REDIS_URL": settings.REDIS_URL,
}))
"""


def production_env(**overrides: str | None) -> dict[str, str]:
    values: dict[str, str | None] = {
        "DJANGO_SETTINGS_MODULE": "realtime.settings_production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": "postgres://realtime@127.0.0.1:5432/realtime",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "DJANGO_ALLOWED_HOSTS": "api.example.com, api2.example.com",
        "DJANGO_DEBUG": "1",
        "MTLS_PROXY_HEADERS": None,
    }
    values.update(overrides)
    return project_env(**values)


def load(env: dict[str, str]) -> subprocess.CompletedProcess:
    # Loading settings opens no connection, so the URLs need no server.
    code = "import django; django.setup()\n" + _PRINT_SETTINGS
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_production_defaults() -> None:
    result = load(production_env())
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["DEBUG"] is False
    assert loaded["ALLOWED_HOSTS"] == ["api.example.com", "api2.example.com"]
    assert loaded["MTLS_PROXY_HEADERS"] == "nginx"
    assert loaded["CHANNEL_LAYER"] == "realtime.channel_layers.RedisChannelLayer"
    assert loaded["DATABASE_ENGINE"] == "django.db.backends.postgresql"


@pytest.mark.parametrize(("value", "expected"), [("", None), ("envoy", "envoy"), ("RFC9440", "rfc9440")])
def test_production_proxy_format(value: str, expected: str | None) -> None:
    result = load(production_env(MTLS_PROXY_HEADERS=value))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["MTLS_PROXY_HEADERS"] == expected


@pytest.mark.parametrize("name", ["DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_ALLOWED_HOSTS"])
@pytest.mark.parametrize("value", [None, "", "  "], ids=["unset", "empty", "blank"])
def test_production_requires_variable(name: str, value: str | None) -> None:
    result = load(production_env(**{name: value}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{name} must be set" in result.stderr


def test_production_rejects_short_secret_key() -> None:
    result = load(production_env(DJANGO_SECRET_KEY="changeme"))
    assert result.returncode != 0
    assert "at least 50 characters" in result.stderr
    assert "changeme" not in result.stderr


def test_deploy_check_lists_only_realtime_warning(redis_url: str, tmp_path) -> None:
    env = production_env(REDIS_URL=redis_url, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    reported = sorted(set(re.findall(r"\(([a-z_]+\.[A-Z]\d{3})\)", result.stderr)))
    # W001: the unix socket is the trusted path and MTLS_TRUSTED_PROXIES is empty.
    assert reported == ["realtime.W001"]
