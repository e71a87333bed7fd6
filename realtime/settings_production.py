"""Production settings: nginx terminates mutual TLS, daphne workers behind it.

Use with ``DJANGO_SETTINGS_MODULE=realtime.settings_production``. Everything
in ``realtime.settings`` applies, with these changes:

- ``DJANGO_SECRET_KEY``, ``DATABASE_URL``, ``REDIS_URL`` and
  ``DJANGO_ALLOWED_HOSTS`` must be set, so a missing variable stops the
  process at start-up instead of falling back to SQLite, in-process stores or
  a development key. ``REDIS_URL`` makes the replay store and the channel
  layer Redis, shared by every worker.
- ``DEBUG`` is False regardless of ``DJANGO_DEBUG``.
- ``MTLS_PROXY_HEADERS`` defaults to ``nginx``: identity comes from the
  headers nginx sets on the unix socket (``serve --unix-socket``). Set it to
  ``rfc9440`` or ``envoy`` for another proxy. An empty value turns proxy
  identity off, for workers that only terminate TLS themselves.

docs/deploy.md walks through a whole installation.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from .settings import *  # noqa: F403
from .settings import env_list


def _required(name: str, hint: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(f"{name} must be set for realtime.settings_production: {hint}")
    return value


# Django's deployment check security.W009 flags keys shorter than 50
# characters, and a short value is most likely a placeholder.
_MIN_SECRET_KEY_LENGTH = 50

SECRET_KEY = _required(
    "DJANGO_SECRET_KEY",
    "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'",
)
if len(SECRET_KEY) < _MIN_SECRET_KEY_LENGTH:
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY must be a random value of at least {_MIN_SECRET_KEY_LENGTH} characters, "
        f"got one of {len(SECRET_KEY)}"
    )

_required("DATABASE_URL", "point it at PostgreSQL, e.g. postgres://realtime@127.0.0.1:5432/realtime")
_required("REDIS_URL", "point it at a Redis with 'maxmemory-policy noeviction', e.g. redis://127.0.0.1:6379/0")

DEBUG = False

_required("DJANGO_ALLOWED_HOSTS", "list the host names clients connect to, comma-separated, e.g. api.example.com")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS")

# Set but empty means off; unset means the nginx headers of deploy/nginx.
MTLS_PROXY_HEADERS = os.environ.get("MTLS_PROXY_HEADERS", "nginx").strip().lower() or None

# Django's deployment checks that do not apply to this service. W002 and
# W003: the API returns JSON, never HTML, and clients authenticate with
# certificates, not cookies, so framing and CSRF protection have nothing to
# protect (the CSRF middleware would reject API POSTs). W004 and W008:
# nginx listens with TLS only, so there is no plain HTTP to redirect or
# upgrade, and trading clients are not browsers.
SILENCED_SYSTEM_CHECKS = ["security.W002", "security.W003", "security.W004", "security.W008"]
