"""nginx for end-to-end tests, serving the site rendered from deploy/nginx's template.

The site file is what ``manage.py nginx_config`` writes for operators; only
the surrounding main configuration (pid file, logs, one worker process) is
the test's own. nginx listens on a free loopback port and is stopped by the
fixture that started it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from realtime.nginx import NginxSite, render_nginx_config

from .servers import _stop, free_port, wait_for

__all__ = ["NginxServer", "nginx_binary"]


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        raise RuntimeError("nginx is not installed; .ci/run installs it with apt-get")
    return found


class NginxServer:
    """nginx with the project's site, proxying to the given unix sockets."""

    def __init__(
        self,
        directory: Path,
        *,
        pki_dir: Path,
        worker_sockets: list[Path],
        crl: Path | None = None,
        ping_interval: int = 20,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.access_log = directory / "access.log"
        self.error_log = directory / "error.log"
        self.site = NginxSite(
            server_name="localhost",
            listen=(f"127.0.0.1:{self.port}",),
            tls_certificate=pki_dir / "server.pem",
            tls_certificate_key=pki_dir / "server.key",
            client_ca=pki_dir / "ca.pem",
            crl=crl,
            worker_sockets=tuple(worker_sockets),
            ping_interval=ping_interval,
            access_log=self.access_log,
            error_log=self.error_log,
        )
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://localhost:{self.port}/ws/v1/transfers/"

    def _write_configuration(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        site_path = self.directory / "realtime.conf"
        site_path.write_text(render_nginx_config(self.site))
        # nginx started as root runs its workers as "nobody", which cannot
        # open the daphne workers' mode-660 sockets. Running them as root
        # keeps the test independent of the machine's users and groups.
        user = "user root;\n" if os.geteuid() == 0 else ""
        main_path = self.directory / "nginx.conf"
        main_path.write_text(
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {self.directory / 'nginx.pid'};\n"
            f"error_log {self.error_log} info;\n"
            f"{user}"
            "events { worker_connections 256; }\n"
            f"http {{\n    include {site_path};\n}}\n"
        )
        return main_path

    def start(self, timeout: float = 10) -> NginxServer:
        main_path = self._write_configuration()
        command = [nginx_binary(), "-p", str(self.directory), "-c", str(main_path), "-e", str(self.error_log)]
        checked = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx rejected the rendered configuration: {checked.stderr.strip()}")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._accepts, timeout=timeout, message=f"nginx on port {self.port}")
        return self

    def _accepts(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.error_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def access_lines(self) -> list[str]:
        """Return the access log's lines; a WebSocket appears once it has closed."""
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def error_text(self) -> str:
        try:
            return self.error_log.read_text()[-4000:]
        except OSError:
            return "(no error log)"

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None
