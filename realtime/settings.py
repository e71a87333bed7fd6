"""Django settings for the transfer service.

Every value an operator may change comes from an environment variable with a
safe default, so that the service runs with no configuration at all on an
embedded stack: SQLite, an in-memory replay store and an in-memory channel
layer. ``realtime.settings_production`` tightens these defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    """Read an integer environment variable, raising ImproperlyConfigured on bad values."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ImproperlyConfigured(f"{name} must be {bounds}, got {value}")
    return value


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


# The development key only signs nothing of value: sessions and CSRF are not
# used by the API. Production settings require DJANGO_SECRET_KEY.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "development-only-not-secret")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS") or ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "channels",
    "realtime",
    "transfers",
    "consumers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "realtime.urls"
ASGI_APPLICATION = "realtime.asgi.application"
WSGI_APPLICATION = None

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}",
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # BEGIN IMMEDIATE takes the write lock at the start of every transaction,
    # so two writers queue instead of failing to upgrade a read lock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # A second connection to the same file sees the same data, which the
    # end-to-end tests rely on when they read the server's database.
    DATABASES["default"].setdefault("TEST", {})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False

# --- Redis, replay store and channel layer --------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "").strip() or None
REDIS_CLUSTER = env_bool("REDIS_CLUSTER", False)
# The channel layer needs a single Redis server (or several, sharded by
# channels-redis itself). In cluster mode it defaults to REDIS_URL's node
# only when CHANNEL_LAYER_REDIS_URL is not given.
CHANNEL_LAYER_REDIS_URL = os.environ.get("CHANNEL_LAYER_REDIS_URL", "").strip() or REDIS_URL

if REDIS_CLUSTER and not REDIS_URL:
    raise ImproperlyConfigured("REDIS_CLUSTER=1 needs REDIS_URL to name a seed node of the cluster")

# RedisChannelLayer waits for a consumer's messages with BZPOPMIN for up to
# 5 seconds (brpop_timeout in channels-redis 4.3), and redis-py 8 abandons a
# read after its default socket timeout, also 5 seconds. The read then fails
# with TimeoutError and the consumer closes its socket with 1011, so an idle
# client was disconnected within seconds. The layer's connections wait longer.
CHANNEL_LAYER_SOCKET_TIMEOUT_S = 15

if CHANNEL_LAYER_REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": CHANNEL_LAYER_REDIS_URL, "socket_timeout": CHANNEL_LAYER_SOCKET_TIMEOUT_S}],
                "prefix": "realtime:layer",
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Maximum distance in ms between a command's timestamp and the replay
# store's clock, on either side.
REPLAY_MAX_SKEW_MS = env_int("REPLAY_MAX_SKEW_MS", 30_000, minimum=1, maximum=3_600_000)
# Width of the per-session sequence window, in sequence numbers.
REPLAY_SEQ_WINDOW = env_int("REPLAY_SEQ_WINDOW", 64, minimum=1, maximum=4096)
# Seconds a session's sequence window is kept after its last command; a
# client can resume the session within this time.
REPLAY_SESSION_TTL_S = env_int("REPLAY_SESSION_TTL_S", 86_400, minimum=60)
# Upper bound in ms on one replay check against Redis; past it the command is
# rejected as ``unavailable``.
REPLAY_REDIS_TIMEOUT_MS = env_int("REPLAY_REDIS_TIMEOUT_MS", 500, minimum=10, maximum=60_000)
# Number of replicas that must acknowledge a recorded nonce before the check
# passes (Redis WAIT). 0 disables the wait.
REPLAY_REDIS_WAIT_REPLICAS = env_int("REPLAY_REDIS_WAIT_REPLICAS", 0, minimum=0, maximum=16)
REPLAY_REDIS_WAIT_TIMEOUT_MS = env_int("REPLAY_REDIS_WAIT_TIMEOUT_MS", 50, minimum=1, maximum=10_000)
# Dotted path of the replay store class. Unset: Redis when REDIS_URL is set,
# the in-memory store otherwise.
REPLAY_STORE = os.environ.get("REPLAY_STORE", "").strip() or None

# --- WebSocket and HTTP limits ---------------------------------------------

# Largest WebSocket frame or message in bytes; a larger one closes the
# connection with code 1009 before it is buffered.
WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 64 * 1024, minimum=1024, maximum=16 * 1024 * 1024)
# Largest HTTP request body the API reads, in bytes.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("HTTP_MAX_BODY_BYTES", 64 * 1024, minimum=1024)

# --- Idempotency -------------------------------------------------------------

# Seconds an Idempotency-Key and its stored response are kept.
IDEMPOTENCY_KEY_TTL_S = env_int("IDEMPOTENCY_KEY_TTL_S", 86_400, minimum=60)
# Seconds a request holds its key while it executes. A worker that dies
# mid-request leaves the key locked for this long, then a retry takes it over.
IDEMPOTENCY_LEASE_S = env_int("IDEMPOTENCY_LEASE_S", 30, minimum=1, maximum=3600)

# --- Client certificate identity -------------------------------------------

# Forwarded-certificate format this deployment trusts: "nginx", "rfc9440",
# "envoy", or unset to read identity from daphne's own TLS only.
MTLS_PROXY_HEADERS = os.environ.get("MTLS_PROXY_HEADERS", "").strip().lower() or None
# Proxy addresses (IPs or CIDR networks) whose forwarded headers are read.
# Connections over a unix socket always count as coming from the proxy.
MTLS_TRUSTED_PROXIES = env_list("MTLS_TRUSTED_PROXIES")
# Largest forwarded certificate header in bytes.
MTLS_MAX_CERT_HEADER_BYTES = env_int("MTLS_MAX_CERT_HEADER_BYTES", 16 * 1024, minimum=2048)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["stderr"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}
