"""Description of the machine a benchmark ran on: processor, memory, versions and the load of other processes."""

from __future__ import annotations

import os
import platform
import resource
import ssl
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["CpuMeter", "describe_machine"]

_PACKAGES = (
    "Django", "channels", "channels-redis", "daphne", "Twisted", "autobahn", "pyOpenSSL",
    "cryptography", "redis", "hiredis", "psycopg", "websockets",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _command_output(*command: str) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def _postgres_version(url: str | None) -> str | None:
    if not url:
        return None
    import psycopg

    try:
        with psycopg.connect(url.replace("postgres://", "postgresql://", 1) + "/postgres", connect_timeout=5) as connection:
            return str(connection.execute("SHOW server_version").fetchone()[0])
    except psycopg.Error:
        return None


def describe_machine(postgres_url: str | None) -> dict[str, Any]:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    redis_version = _command_output("redis-server", "--version")
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "redis_server": redis_version.split()[2].removeprefix("v=") if redis_version else None,
        "postgresql": _postgres_version(postgres_url),
        "packages": versions,
    }


def _busy_seconds() -> float:
    """Return the CPU seconds all processes of the machine have used since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """Return the CPU seconds of this process and of its children that have exited."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuMeter:
    """Measures how much CPU other processes used while the benchmark ran.

    The benchmark's own share is this process plus every child it started
    and waited for: serve, redis-server, redis-benchmark and the client
    processes.
    """

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._busy = _busy_seconds()
        self._own = _own_seconds()
        self._load_before = os.getloadavg()

    def report(self) -> dict[str, Any]:
        wall = time.monotonic() - self._wall
        busy = _busy_seconds() - self._busy
        own = _own_seconds() - self._own
        return {
            "wall_seconds": round(wall, 1),
            "cpu_seconds_all_processes": round(busy, 1),
            "cpu_seconds_benchmark": round(own, 1),
            # Average cores that processes outside the benchmark kept busy.
            "other_processes_cores": round(max(0.0, busy - own) / wall, 2) if wall else None,
            "load_average_before": [round(value, 2) for value in self._load_before],
            "load_average_after": [round(value, 2) for value in os.getloadavg()],
        }
