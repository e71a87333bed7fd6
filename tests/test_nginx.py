"""The nginx site renderer (realtime.nginx) and the nginx_config command."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from django.core.management import CommandError, call_command

from realtime.nginx import NginxSite, read_timeout_for, render_nginx_config
from tests.conftest import Pki
from tests.support.nginx import nginx_binary


def make_site(**overrides: object) -> NginxSite:
    values: dict[str, object] = {
        "server_name": "api.example.com",
        "tls_certificate": Path("/etc/realtime/pki/server.pem"),
        "tls_certificate_key": Path("/etc/realtime/pki/server.key"),
        "client_ca": Path("/etc/realtime/pki/clients-ca.pem"),
        "worker_sockets": (Path("/run/realtime/1/daphne.sock"), Path("/run/realtime/2/daphne.sock")),
    }
    values.update(overrides)
    return NginxSite(**values)  # type: ignore[arg-type]


def directives(text: str) -> list[str]:
    """Return the rendered directives without comments or blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def test_render_identity_headers() -> None:
    rendered = directives(render_nginx_config(make_site()))
    for expected in (
        "ssl_verify_client on;",
        "ssl_client_certificate /etc/realtime/pki/clients-ca.pem;",
        "proxy_set_header X-SSL-Client-Verify $ssl_client_verify;",
        "proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        'proxy_set_header Daphne-Root-Path "";',
        'proxy_set_header Client-Cert "";',
        'proxy_set_header X-Forwarded-Client-Cert "";',
        "server unix:/run/realtime/1/daphne.sock;",
        "server unix:/run/realtime/2/daphne.sock;",
        "listen 443 ssl;",
    ):
        assert expected in rendered, expected
    # nginx's SHA-1 fingerprint is never forwarded.
    assert not any("$ssl_client_fingerprint" in line for line in rendered)


def test_render_body_limit_from_settings(settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 12_345
    assert "client_max_body_size 12345;" in directives(render_nginx_config(make_site()))


def test_render_read_timeout_above_ping() -> None:
    rendered = render_nginx_config(make_site(ping_interval=20))
    timeout = int(re.search(r"proxy_read_timeout (\d+)s;", rendered).group(1))  # type: ignore[union-attr]
    assert timeout == read_timeout_for(20)
    assert timeout > 20


def test_render_optional_crl() -> None:
    assert not any(line.startswith("ssl_crl") for line in directives(render_nginx_config(make_site())))
    with_crl = directives(render_nginx_config(make_site(crl=Path("/etc/realtime/pki/clients-crl.pem"))))
    assert "ssl_crl /etc/realtime/pki/clients-crl.pem;" in with_crl


@pytest.mark.parametrize(
    "overrides",
    [
        {"server_name": "api.example.com; include /etc/passwd"},
        {"server_name": ""},
        {"server_name": "$host"},
        {"tls_certificate": Path("relative/server.pem")},
        {"tls_certificate": Path("/etc/pki/server.pem; ssl_verify_client off")},
        {"client_ca": Path("/etc/pki/ca {.pem")},
        {"crl": Path('/etc/pki/"crl".pem')},
        {"worker_sockets": ()},
        {"worker_sockets": (Path("/run/" + "s" * 120 + ".sock"),)},
        {"worker_sockets": (Path("/run/a b.sock"),)},
        {"listen": ()},
        {"listen": ("443 default_server",)},
        {"listen": ("70000",)},
        {"listen": ("::1:443",)},
        {"listen": ("example.com:443",)},
        {"ping_interval": 0},
        {"max_body_bytes": 0},
        {"access_log": Path("/var/log/$remote_addr.log")},
    ],
)
def test_render_rejects_unsafe_value(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render_nginx_config(make_site(**overrides))


@pytest.mark.parametrize("listen", ["443", "127.0.0.1:8443", "[::]:443", "[::1]:8443", "*:443"])
def test_render_accepts_listen_forms(listen: str) -> None:
    assert f"listen {listen} ssl;" in directives(render_nginx_config(make_site(listen=(listen,))))


def _command_arguments(pki: Pki, output: Path, *extra: str) -> list[str]:
    return [
        "--server-name", "localhost",
        "--listen", "127.0.0.1:8443",
        "--tls-cert", str(pki.directory / "server.pem"),
        "--tls-key", str(pki.directory / "server.key"),
        "--client-ca", str(pki.ca),
        "--worker-socket", str(output.parent / "w1.sock"),
        "--worker-socket", str(output.parent / "w2.sock"),
        "--access-log", str(output.parent / "access.log"),
        "--error-log", str(output.parent / "error.log"),
        "--output", str(output),
        *extra,
    ]


@pytest.mark.parametrize("with_crl", [False, True], ids=["without CRL", "with CRL"])
def test_command_output_passes_nginx_test(pki: Pki, tmp_path: Path, with_crl: bool) -> None:
    output = tmp_path / "realtime.conf"
    extra: list[str] = []
    if with_crl:
        crl = tmp_path / "crl.pem"
        crl.write_bytes(pki.authority.issue_crl([]).public_bytes(Encoding.PEM))
        extra = ["--crl", str(crl)]
    call_command("nginx_config", *_command_arguments(pki, output, *extra))

    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{\n    include {output};\n}}\n")
    checked = subprocess.run(
        [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    assert any(line.startswith("ssl_crl ") for line in directives(output.read_text())) is with_crl


def test_command_reports_invalid_value(pki: Pki, tmp_path: Path) -> None:
    arguments = _command_arguments(pki, tmp_path / "realtime.conf")
    arguments[arguments.index("--server-name") + 1] = "bad;name"
    with pytest.raises(CommandError, match="server_name"):
        call_command("nginx_config", *arguments)
    assert not (tmp_path / "realtime.conf").exists()
