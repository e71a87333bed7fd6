"""Rendering of the nginx site in ``deploy/nginx/realtime.conf.template``.

The ``nginx_config`` management command and the end-to-end tests render the
same template through ``render_nginx_config``, so the tests run the
configuration operators install. Every value is checked before it is
written: a path or name that could end an nginx directive (``;``, ``{``,
quotes, whitespace, ``$``) raises ValueError instead of changing the file's
meaning.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.template import Context, Engine

__all__ = ["NginxSite", "TEMPLATE_PATH", "read_timeout_for", "render_nginx_config"]

TEMPLATE_PATH = Path(settings.BASE_DIR) / "deploy" / "nginx" / "realtime.conf.template"

# A path nginx reads as one token: no whitespace, quotes, ';', '{', '}' or '$'.
_PATH_RE = re.compile(r"/[A-Za-z0-9._/@+=,-]*")
_SERVER_NAME_RE = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
# Maximum unix socket path length the kernel accepts (sun_path is 108 bytes, one
# of them the terminating NUL).
MAX_UNIX_SOCKET_PATH = 107
# daphne looks for idle WebSockets to ping every 2 seconds, so a ping can
# come up to this long after --ping-interval has passed.
_PING_CHECK_PERIOD_S = 2
# The marker the template engine writes for an undefined variable.
_UNDEFINED = "\x00undefined\x00"


@dataclass(frozen=True)
class NginxSite:
    """The values that make the template a site for one host."""

    server_name: str
    tls_certificate: Path
    tls_certificate_key: Path
    client_ca: Path
    worker_sockets: tuple[Path, ...]
    listen: tuple[str, ...] = ("443",)
    crl: Path | None = None
    # daphne's --ping-interval, in seconds.
    ping_interval: int = 20
    access_log: Path = Path("/var/log/nginx/realtime.access.log")
    error_log: Path = Path("/var/log/nginx/realtime.error.log")
    # Largest request body in bytes; None takes the app's HTTP_MAX_BODY_BYTES.
    max_body_bytes: int | None = None


def read_timeout_for(ping_interval: int) -> int:
    """Return nginx's proxy_read_timeout in seconds for a daphne ping interval.

    Three intervals: an idle WebSocket then carries at least two pings
    before nginx would give up on it.
    """
    return 3 * ping_interval


def _checked_path(name: str, value: Path | str, *, max_length: int | None = None) -> str:
    text = str(value)
    if not _PATH_RE.fullmatch(text):
        raise ValueError(
            f"{name} must be an absolute path of letters, digits and ._/@+=,- only, got {text!r}"
        )
    if max_length is not None and len(text.encode()) > max_length:
        raise ValueError(f"{name} {text!r} is longer than {max_length} bytes, the limit for a unix socket path")
    return text


def _checked_listen(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"listen must end in a port from 1 to 65535, e.g. 443 or 127.0.0.1:8443, got {value!r}")
    if host and host != "*":
        try:
            ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        except ValueError:
            raise ValueError(f"listen address must be an IP address, [IPv6] or '*', got {host!r}") from None
        if ":" in host and not host.startswith("["):
            raise ValueError(f"an IPv6 listen address must be in brackets, e.g. [::]:443, got {value!r}")
    return f"{host}:{int(port)}" if host else str(int(port))


def _checked_server_name(value: str) -> str:
    names = value.split()
    if not names or not all(_SERVER_NAME_RE.fullmatch(name) for name in names):
        raise ValueError(f"server_name must be one or more host names separated by spaces, got {value!r}")
    return " ".join(names)


def render_nginx_config(site: NginxSite, template: Path = TEMPLATE_PATH) -> str:
    """Render the nginx site; raises ValueError for a value nginx could misread."""
    if not site.worker_sockets:
        raise ValueError("at least one worker socket is required")
    if not site.listen:
        raise ValueError("at least one listen address is required")
    if site.ping_interval < 1:
        raise ValueError(f"ping_interval must be at least 1 second, got {site.ping_interval}")
    read_timeout = read_timeout_for(site.ping_interval)
    # Guards read_timeout_for against a change that would let nginx cut
    # idle WebSockets between two pings.
    if read_timeout <= site.ping_interval + _PING_CHECK_PERIOD_S:
        raise ValueError(f"proxy_read_timeout {read_timeout}s must exceed the ping interval {site.ping_interval}s")
    max_body_bytes = site.max_body_bytes if site.max_body_bytes is not None else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")

    values = {
        "server_name": _checked_server_name(site.server_name),
        "listen": [_checked_listen(address) for address in site.listen],
        "tls_certificate": _checked_path("tls_certificate", site.tls_certificate),
        "tls_certificate_key": _checked_path("tls_certificate_key", site.tls_certificate_key),
        "client_ca": _checked_path("client_ca", site.client_ca),
        "crl": _checked_path("crl", site.crl) if site.crl is not None else None,
        "worker_sockets": [
            _checked_path("worker socket", path, max_length=MAX_UNIX_SOCKET_PATH) for path in site.worker_sockets
        ],
        "access_log": _checked_path("access_log", site.access_log),
        "error_log": _checked_path("error_log", site.error_log),
        "max_body_bytes": int(max_body_bytes),
        "ping_interval": site.ping_interval,
        "read_timeout": read_timeout,
    }
    engine = Engine(autoescape=False, string_if_invalid=_UNDEFINED)
    text = engine.from_string(template.read_text()).render(Context(values, autoescape=False))
    if _UNDEFINED in text:
        raise ValueError(f"{template} uses a variable that render_nginx_config does not define")
    return text
