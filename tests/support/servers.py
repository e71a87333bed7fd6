"""Real servers for tests: redis-server and the project's ``serve`` command.

Each binds to loopback or a unix socket under the test's temporary
directory, on a free port, and is stopped by the fixture that started it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import redis

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, *, timeout: float, interval: float = 0.05, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {message}")


def _stop(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class RedisServer:
    """A redis-server process on a free loopback port, keeping nothing on disk unless ``extra_args`` enable persistence."""

    def __init__(self, directory: Path, *, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.log_path = directory / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; .ci/run installs it with apt-get")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--maxmemory-policy", "noeviction",
                "--logfile", str(self.log_path),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(self._answers, timeout=10, message=f"redis-server on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.log_path}")
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            # A paused process would ignore SIGTERM until it is continued.
            self.process.send_signal(signal.SIGCONT)
            _stop(self.process)
            self.process = None

    def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> RedisServer:
        """Stop the server and start it again on the same port and directory."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open but no reply comes."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def info(self, section: str) -> dict:
        with self.client() as client:
            return client.info(section)


class RedisReplicaPair:
    """A primary redis-server and one replica of it, both on loopback."""

    def __init__(self, directory: Path) -> None:
        # No delay before the first sync: the default waits 5 s for more replicas.
        self.primary = RedisServer(directory / "primary", extra_args=("--repl-diskless-sync-delay", "0"))
        self.replica = RedisServer(
            directory / "replica", extra_args=("--replicaof", "127.0.0.1", str(self.primary.port))
        )

    def start(self) -> RedisReplicaPair:
        self.primary.start()
        self.replica.start()
        wait_for(self._linked, timeout=20, message="the replica to finish its first sync")
        # A replica that has just synced can go a while before its first
        # acknowledgement, so WAIT returns 0 until the primary hears one.
        wait_for(self.replica_acknowledges, timeout=20, message="the replica to acknowledge a write")
        return self

    def _linked(self) -> bool:
        return self.replica.info("replication").get("master_link_status") == "up" and (
            self.primary.info("replication").get("connected_slaves") == 1
        )

    def replica_acknowledges(self) -> bool:
        """Write on the primary and tell whether the replica acknowledged it within 100 ms."""
        with redis.Redis(host="127.0.0.1", port=self.primary.port, socket_timeout=5, single_connection_client=True) as client:
            client.set("probe", "1")
            return client.execute_command("WAIT", 1, 100) >= 1

    def stop(self) -> None:
        self.replica.stop()
        self.primary.stop()


class RedisClusterServers:
    """A Redis Cluster of ``primaries`` primaries, each with ``replicas`` replicas, on loopback ports.

    ``redis-cli --cluster create`` assigns the slots and the replicas; each
    node's cluster bus listens on its own free port (``cluster-port``, Redis
    7.0 and later).
    """

    def __init__(self, directory: Path, *, primaries: int = 3, replicas: int = 0) -> None:
        self.directory = directory
        self.replicas = replicas
        self.all_nodes: list[RedisServer] = []
        for _ in range(primaries * (1 + replicas)):
            port = free_port()
            self.all_nodes.append(
                RedisServer(
                    directory,
                    port=port,
                    extra_args=(
                        "--cluster-enabled", "yes",
                        "--cluster-port", str(free_port()),
                        "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
                        "--cluster-node-timeout", "5000",
                        "--repl-diskless-sync-delay", "0",
                    ),
                )
            )

    @property
    def nodes(self) -> list[RedisServer]:
        """The primaries."""
        return [node for node in self.all_nodes if self._role(node) == "master"]

    @property
    def url(self) -> str:
        """URL of the first node, the seed that clients discover the cluster from."""
        return self.all_nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """Return the first replica of a primary."""
        for node in self.all_nodes:
            info = node.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
                return node
        raise LookupError(f"the primary on port {primary.port} has no replica")

    def start(self) -> RedisClusterServers:
        binary = shutil.which("redis-cli")
        if binary is None:
            raise RuntimeError("redis-cli is not installed; it comes with redis-server")
        for node in self.all_nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.all_nodes]
        subprocess.run(
            [binary, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self._ready, timeout=30, message="every cluster node to report cluster_state:ok")
        if self.replicas:
            # A replica that has just synced can go a while before its first
            # acknowledgement, so WAIT returns 0 until every primary hears one.
            wait_for(self._replicas_acknowledge, timeout=30, message="every replica to acknowledge a write")
        return self

    def _replicas_acknowledge(self) -> bool:
        cluster = self.client()
        probe_keys: dict[int, str] = {}
        for index in itertools.count():
            if len(probe_keys) == len(self.nodes):
                break
            key = f"probe-{index}"
            probe_keys.setdefault(cluster.get_node_from_key(key).port, key)
        cluster.close()
        for port, key in probe_keys.items():
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, single_connection_client=True) as client:
                client.set(key, "1")
                if client.execute_command("WAIT", self.replicas, 100) < self.replicas:
                    return False
        return True

    def _role(self, node: RedisServer) -> str:
        return str(node.info("replication").get("role"))

    def _ready(self) -> bool:
        for node in self.all_nodes:
            with node.client() as client:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
            info = node.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.all_nodes[0].port, socket_timeout=5)

    def flushall(self) -> None:
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        # Signal every node first, so that their shutdowns overlap.
        for node in self.all_nodes:
            if node.process is not None:
                node.process.send_signal(signal.SIGCONT)
                node.process.send_signal(signal.SIGTERM)
        for node in self.all_nodes:
            node.stop()


def project_env(**overrides: str | None) -> dict[str, str]:
    """Environment for a project subprocess: the test's variables minus Django's test overrides."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env["DJANGO_SETTINGS_MODULE"] = "realtime.settings"
    env["PYTHONUNBUFFERED"] = "1"
    # The production bound of 500 ms trips on a loaded 2-core test machine;
    # tests about the timeout set their own value.
    env["REPLAY_REDIS_TIMEOUT_MS"] = "2000"
    for name in ("REDIS_URL", "REDIS_CLUSTER", "REDIS_CLUSTER_NODES", "CHANNEL_LAYER_REDIS_URL"):
        env.pop(name, None)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def manage(*args: str, env: dict[str, str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "manage.py"), *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


class ServeProcess:
    """``manage.py serve`` with mutual TLS on a free loopback port and/or a unix socket."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        pki_dir: Path,
        log_dir: Path,
        tls: bool = True,
        unix_socket: Path | None = None,
        name: str = "serve",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.env = env
        self.pki_dir = pki_dir
        self.tls = tls
        self.unix_socket = unix_socket
        self.extra_args = extra_args
        self.log_path = log_dir / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._log: IO[str] | None = None

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://localhost:{self.port}/ws/v1/transfers/"

    def start(self, timeout: float = 30) -> ServeProcess:
        args = [sys.executable, "-u", str(PROJECT_ROOT / "manage.py"), "serve"]
        if self.tls:
            args += [
                "--port", "0",
                "--tls-cert", str(self.pki_dir / "server.pem"),
                "--tls-key", str(self.pki_dir / "server.key"),
                "--client-ca", str(self.pki_dir / "ca.pem"),
            ]
        if self.unix_socket is not None:
            args += ["--unix-socket", str(self.unix_socket)]
        args += self.extra_args
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            args, cwd=PROJECT_ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        expected = int(self.tls) + int(self.unix_socket is not None)
        deadline = time.monotonic() + timeout
        seen = 0
        assert self.process.stdout is not None
        while seen < expected:
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"serve did not start within {timeout}s; log: {self.log_text()}")
            line = self.process.stdout.readline()
            if not line:
                self.stop()
                raise RuntimeError(f"serve exited with {self.process.poll()}; log: {self.log_text()}")
            if line.startswith("Listening on https://"):
                self.port = int(line.rsplit(":", 1)[1])
                seen += 1
            elif line.startswith("Listening on unix:"):
                seen += 1
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.stop()


@contextmanager
def running(server) -> Iterator:
    server.start()
    try:
        yield server
    finally:
        server.stop()
