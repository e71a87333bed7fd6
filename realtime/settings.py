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
    "realtime.problems.MethodNotAllowedProblemMiddleware",
]
# A redirect to the slashed URL would turn a client's POST into a GET and
# lose the command. A missing slash gets a 404 problem instead.
APPEND_SLASH = False

ROOT_URLCONF = "realtime.urls"
ASGI_APPLICATION = "realtime.asgi.application"
WSGI_APPLICATION = None

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "").strip() or f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}",
        # Each database thread keeps its connection this many seconds, checked
        # before reuse, instead of opening one per command.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE_S", 60, minimum=0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A worker frozen inside a transaction holds its row locks; a request
    # waiting on them fails with 503 after this long instead of hanging.
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = (
        f"-c lock_timeout={env_int('DATABASE_LOCK_TIMEOUT_MS', 10_000, minimum=100)}"
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # BEGIN IMMEDIATE takes the write lock at the start of every transaction,
    # so two writers queue instead of failing to upgrade a read lock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The end-to-end tests read the server's database through a second
    # connection to the same file.
    DATABASES["default"].setdefault("TEST", {})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False

# --- Redis, replay store and channel layer --------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "").strip() or None
# With REDIS_CLUSTER=1, REDIS_URL names one node of a Redis Cluster, from
# which the replay store discovers the others.
REDIS_CLUSTER = env_bool("REDIS_CLUSTER", False)
# Cluster mode only: URLs of the cluster nodes that the channel layer spreads
# its pub/sub connections over. Default: REDIS_URL alone.
REDIS_CLUSTER_NODES = env_list("REDIS_CLUSTER_NODES")
# A single Redis server (not a cluster node) for the channel layer. Default:
# REDIS_URL, except in cluster mode.
CHANNEL_LAYER_REDIS_URL = os.environ.get("CHANNEL_LAYER_REDIS_URL", "").strip() or None

if REDIS_CLUSTER and not REDIS_URL:
    raise ImproperlyConfigured("REDIS_CLUSTER=1 needs REDIS_URL to name a seed node of the cluster")
for _node_url in REDIS_CLUSTER_NODES:
    if not _node_url.startswith(("redis://", "rediss://")):
        raise ImproperlyConfigured(f"REDIS_CLUSTER_NODES must list redis:// or rediss:// URLs, got {_node_url!r}")

if CHANNEL_LAYER_REDIS_URL or (REDIS_URL and not REDIS_CLUSTER):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "realtime.channel_layers.RedisChannelLayer",
            "CONFIG": {
                # Each consumer waits for messages with BZPOPMIN blocking 5 s
                # (channels-redis 4.3). redis-py 8 reads with a 5 s socket
                # timeout by default, which fires as the empty reply arrives
                # and kills every idle consumer, so reads get 15 s here.
                "hosts": [{"address": CHANNEL_LAYER_REDIS_URL or REDIS_URL, "socket_timeout": 15}],
                "prefix": "realtime:layer",
            },
        }
    }
elif REDIS_CLUSTER:
    # RedisChannelLayer keeps groups and queues in keys of arbitrary hash
    # slots, which a cluster node rejects with MOVED. Pub/sub uses no keys,
    # and a cluster node forwards every PUBLISH to all nodes, so the pub/sub
    # layer works on any nodes of the cluster, sharding channels over them.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "realtime.channel_layers.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": REDIS_CLUSTER_NODES or [REDIS_URL], "prefix": "realtime:layer"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Maximum distance in ms between a command's timestamp and the replay
# store's clock, on either side.
REPLAY_MAX_SKEW_MS = env_int("REPLAY_MAX_SKEW_MS", 30_000, minimum=1, maximum=3_600_000)
# Width of the per-session sequence window, in sequence numbers.
REPLAY_SEQ_WINDOW = env_int("REPLAY_SEQ_WINDOW", 64, minimum=1, maximum=4096)
# Seconds a session's sequence window is kept after its last accepted
# command. A client can resume the session, over WebSocket or HTTP, within
# this time. Past it the token is rejected as ``session.unknown``.
REPLAY_SESSION_TTL_S = env_int("REPLAY_SESSION_TTL_S", 86_400, minimum=60)
# Sessions one client may start within REPLAY_SESSION_TTL_S. Each keeps a
# few hundred bytes in the replay store for that long, so the limit bounds
# what one client can take from every client's store. 0 disables it.
REPLAY_MAX_SESSIONS_PER_CLIENT = env_int("REPLAY_MAX_SESSIONS_PER_CLIENT", 1000, minimum=0)
# Upper bound in ms on one replay check against Redis; past it the command is
# rejected as ``unavailable``.
REPLAY_REDIS_TIMEOUT_MS = env_int("REPLAY_REDIS_TIMEOUT_MS", 500, minimum=10, maximum=60_000)
# Number of replicas that must acknowledge a recorded nonce before the check
# passes (Redis WAIT). 0 disables the wait.
REPLAY_REDIS_WAIT_REPLICAS = env_int("REPLAY_REDIS_WAIT_REPLICAS", 0, minimum=0, maximum=16)
# Upper bound in ms on the wait for those acknowledgements; past it the
# command is rejected as ``unavailable``. Must be below REPLAY_REDIS_TIMEOUT_MS.
REPLAY_REDIS_WAIT_TIMEOUT_MS = env_int("REPLAY_REDIS_WAIT_TIMEOUT_MS", 50, minimum=1, maximum=10_000)
if REPLAY_REDIS_WAIT_REPLICAS and REPLAY_REDIS_WAIT_TIMEOUT_MS >= REPLAY_REDIS_TIMEOUT_MS:
    raise ImproperlyConfigured(
        f"REPLAY_REDIS_WAIT_TIMEOUT_MS ({REPLAY_REDIS_WAIT_TIMEOUT_MS}) must be below "
        f"REPLAY_REDIS_TIMEOUT_MS ({REPLAY_REDIS_TIMEOUT_MS}), so that a check fails on its WAIT reply "
        "and not on the overall timeout"
    )
# Connections per process (per node of a cluster) that the replay store
# opens to Redis. Checks beyond this many at once wait for a free
# connection, within REPLAY_REDIS_TIMEOUT_MS.
REPLAY_REDIS_MAX_CONNECTIONS = env_int("REPLAY_REDIS_MAX_CONNECTIONS", 100, minimum=1, maximum=10_000)
# Dotted path of the replay store class. Unset: Redis when REDIS_URL is set,
# the in-memory store otherwise.
REPLAY_STORE = os.environ.get("REPLAY_STORE", "").strip() or None

# --- WebSocket and HTTP limits ---------------------------------------------

# Largest WebSocket frame or message in bytes; a larger one closes the
# connection with code 1009 before it is buffered.
WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 64 * 1024, minimum=1024, maximum=16 * 1024 * 1024)
# Seconds after which daphne closes a WebSocket (code 1000) however busy it
# is; -1 keeps sockets open indefinitely.
WS_MAX_LIFETIME_S = env_int("WS_MAX_LIFETIME_S", 86_400, minimum=-1)
if 0 <= WS_MAX_LIFETIME_S < 60:
    raise ImproperlyConfigured(f"WS_MAX_LIFETIME_S must be -1 or at least 60, got {WS_MAX_LIFETIME_S}")
# Seconds between an open socket's checks of its client and certificate in
# the database, the backstop when a revocation message is lost. 0 disables.
REVOCATION_RECHECK_S = env_int("REVOCATION_RECHECK_S", 30, minimum=0, maximum=3600)
# Origins allowed to open WebSockets. Browsers send client certificates on
# their own, so any handshake with an Origin header not listed is refused.
WS_ALLOWED_ORIGINS = env_list("WS_ALLOWED_ORIGINS")
# Largest HTTP request body the API reads, in bytes.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("HTTP_MAX_BODY_BYTES", 64 * 1024, minimum=1024)

# --- Idempotency -------------------------------------------------------------

# Seconds an Idempotency-Key and its stored response are kept.
IDEMPOTENCY_KEY_TTL_S = env_int("IDEMPOTENCY_KEY_TTL_S", 86_400, minimum=60)
# Seconds an executing request keeps its key locked. A worker that dies
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
