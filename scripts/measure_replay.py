"""Measure replay checks per second on one Redis shard, with and without WAIT.

Starts its own redis-server (and, with --wait-replicas, replicas of it) on
free loopback ports in a temporary directory. Runs the store's real check
path from several client processes for a fixed time, then prints the
throughput, the latency percentiles and the Redis CPU time per check, and
stops the servers.

    python scripts/measure_replay.py --seconds 10 --processes 2 --concurrency 32
    python scripts/measure_replay.py --seconds 10 --wait-replicas 1

Each check is a session check (nonce, timestamp and sequence number), the
path every WebSocket command takes. The clients run on the same machine as
Redis, so on a small machine they compete with it for CPU. The measured
throughput is therefore a lower bound. The CPU time per check gives the
estimate of what one core running only Redis would sustain.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime.settings")

from realtime.replay import ReplayCheck  # noqa: E402
from realtime.replay.redis import RedisReplayStore  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(directory: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    directory.mkdir(parents=True)
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
            "--repl-diskless-sync-delay", "0",
            "--dir", str(directory),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")


def wait_for_replicas(port: int, replicas: int) -> None:
    client = redis.Redis(port=port, single_connection_client=True)
    for _ in range(200):
        client.set("probe", "1")
        if client.execute_command("WAIT", replicas, 100) >= replicas:
            return
    raise RuntimeError(f"{replicas} replica(s) did not acknowledge a write")


def redis_cpu_seconds(port: int) -> float:
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run_clients(url: str, seconds: float, concurrency: int, wait_replicas: int) -> tuple[int, list[float], int]:
    store = RedisReplayStore(
        url,
        max_skew_ms=30_000,
        seq_window=64,
        session_ttl_ms=3_600_000,
        timeout_ms=2_000,
        wait_replicas=wait_replicas,
        wait_timeout_ms=1_000,
    )
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal failures
        identity = f"bench-{secrets.token_hex(4)}"
        session = secrets.token_urlsafe(16)
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            check = ReplayCheck(
                identity=identity,
                ts_ms=time.time_ns() // 1_000_000,
                nonce=secrets.token_urlsafe(16),
                session=session,
                seq=seq,
                create_session=seq == 1,
            )
            started = time.perf_counter()
            try:
                await store.check(check)
            except Exception:
                failures += 1
                continue
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    await store.close()
    return len(latencies), latencies, failures


def client_process(url: str, seconds: float, concurrency: int, wait_replicas: int, results: multiprocessing.Queue) -> None:
    count, latencies, failures = asyncio.run(run_clients(url, seconds, concurrency, wait_replicas))
    # A sample keeps the queue small; percentiles over 20,000 points are stable.
    step = max(1, len(latencies) // 20_000)
    results.put((count, latencies[::step], failures))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="Duration of the run, in seconds (default 10).")
    parser.add_argument("--processes", type=int, default=2, help="Client processes (default 2).")
    parser.add_argument("--concurrency", type=int, default=32, help="Concurrent checks per client process (default 32).")
    parser.add_argument(
        "--wait-replicas", type=int, default=0, help="Replicas to start and WAIT for on every check (default 0)."
    )
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="measure-replay-") as directory:
        servers = []
        try:
            primary, port = start_redis(Path(directory) / "primary")
            servers.append(primary)
            for index in range(options.wait_replicas):
                replica, _ = start_redis(Path(directory) / f"replica-{index}", "--replicaof", "127.0.0.1", str(port))
                servers.append(replica)
            if options.wait_replicas:
                wait_for_replicas(port, options.wait_replicas)

            url = f"redis://127.0.0.1:{port}/0"
            results: multiprocessing.Queue = multiprocessing.Queue()
            cpu_before = redis_cpu_seconds(port)
            workers = [
                multiprocessing.Process(
                    target=client_process,
                    args=(url, options.seconds, options.concurrency, options.wait_replicas, results),
                )
                for _ in range(options.processes)
            ]
            started = time.monotonic()
            for worker in workers:
                worker.start()
            outcomes = [results.get() for _ in workers]
            for worker in workers:
                worker.join()
            elapsed = time.monotonic() - started
            cpu_used = redis_cpu_seconds(port) - cpu_before
        finally:
            for server in servers:
                server.terminate()
                server.wait(timeout=10)

    checks = sum(count for count, _, _ in outcomes)
    failures = sum(failed for _, _, failed in outcomes)
    latencies = [value for _, sample, _ in outcomes for value in sample]
    print(f"redis-server {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}")
    print(f"cpus: {os.cpu_count()}, client processes: {options.processes} x {options.concurrency} concurrent checks")
    print(f"wait replicas: {options.wait_replicas}")
    print(f"checks: {checks} in {elapsed:.1f} s = {checks / elapsed:,.0f} checks/s, failures: {failures}")
    print(
        f"latency ms: p50 {percentile(latencies, 0.5) * 1000:.2f}, p99 {percentile(latencies, 0.99) * 1000:.2f}, "
        f"mean {statistics.fmean(latencies) * 1000:.2f}"
    )
    print(f"redis cpu: {cpu_used:.2f} s = {cpu_used / checks * 1e6:.1f} us per check")
    print(f"estimate, one core running only Redis: {checks / cpu_used:,.0f} checks/s")


if __name__ == "__main__":
    main()
