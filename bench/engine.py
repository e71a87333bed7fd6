"""Replay engine alone: the product's stores against ``redis-benchmark`` on the same Redis.

The floor for one round trip per check is ``redis-benchmark`` running an
EVAL of a single ``SET NX PX`` at the same concurrency: the cheapest atomic
script a check could be, sent by a client written in C.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import resource
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import redis

from realtime.replay import MemoryReplayStore, ReplayCheck, ReplayStore
from realtime.replay.redis import RedisReplayStore

from .stats import Operation, Sample, cpu_seconds, run_closed_loop, sample_from_rate

__all__ = [
    "FLOOR_SCRIPT",
    "RoundTrips",
    "command_calls",
    "counters",
    "measure_floor",
    "measure_store",
    "memory_store",
    "redis_store",
    "round_trips",
    "warm_up",
]

FLOOR_SCRIPT = "return redis.call('SET', KEYS[1], '1', 'NX', 'PX', 60000)"

# The product's defaults (realtime/settings.py).
_STORE_OPTIONS = {"max_skew_ms": 30_000, "seq_window": 64, "session_ttl_ms": 86_400_000}


@dataclass(frozen=True)
class RoundTrips:
    """Round-trip and command counts of a batch of checks; each check should make one EVALSHA and wait for one round trip."""

    checks: int
    round_trips: int
    evalsha_calls: int
    other_client_commands: dict[str, int]
    socket_writes: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "checks": self.checks,
            "round_trips_per_check": self.round_trips / self.checks,
            "evalsha_per_check": self.evalsha_calls / self.checks,
            "other_client_commands": self.other_client_commands,
            "checks_per_socket_write": None if not self.socket_writes else self.checks / self.socket_writes,
        }


def redis_store(url: str, *, pipelined: bool = True) -> RedisReplayStore:
    """Build the product's Redis store; ``pipelined=False`` sends each check through redis-py's client.

    The unpipelined store is the path that Redis Cluster, WAIT for replicas
    and TLS URLs take.
    """
    store = RedisReplayStore(url, timeout_ms=500, **_STORE_OPTIONS)
    if not pipelined:
        store._pipeline = None
    return store


def memory_store() -> MemoryReplayStore:
    return MemoryReplayStore(**_STORE_OPTIONS)


def _check_operations(store: ReplayStore, concurrency: int, counter: itertools.count) -> list[Operation]:
    """Build one loop per simulated session: fresh nonce, current timestamp, next sequence number."""
    run = secrets.token_hex(4)
    operations = []
    for worker in range(concurrency):
        session = secrets.token_urlsafe(16)
        sequence = itertools.count(1)

        async def check_once(session: str = session, sequence: itertools.count = sequence, worker: int = worker) -> None:
            seq = next(sequence)
            next(counter)
            await store.check(
                ReplayCheck(
                    identity="bench",
                    ts_ms=time.time_ns() // 1_000_000,
                    # Unique without a system call per check, unlike secrets.
                    nonce=f"n{run}w{worker:03d}s{seq:012d}",
                    session=session,
                    seq=seq,
                    create_session=seq == 1,
                )
            )

        operations.append(check_once)
    return operations


async def measure_store(
    store: ReplayStore,
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    cpu_pids: dict[str, int] | None = None,
) -> tuple[Sample, int]:
    """Measure checks per second at a concurrency; also return how many checks ran, warmup included."""
    counter = itertools.count()
    operations = _check_operations(store, concurrency, counter)
    sample = await run_closed_loop(operations, warmup_s=warmup_s, duration_s=duration_s, cpu_pids=cpu_pids)
    return sample, next(counter)


async def warm_up(store: ReplayStore) -> None:
    """Run one check that no figure counts."""
    await store.check(ReplayCheck(identity="bench", ts_ms=time.time_ns() // 1_000_000, nonce=f"warm-up-{secrets.token_hex(8)}"))


def command_calls(admin: redis.Redis) -> dict[str, int]:
    """Return Redis's per-command call counts (INFO commandstats), by command name."""
    stats = admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}


# Commands the check script runs inside EVALSHA; they are no extra round trip.
_SCRIPT_COMMANDS = frozenset({"time", "get", "hmget", "getbit", "set", "setbit", "hset", "pexpire", "del"})
# Commands the benchmark itself sends to read and reset the statistics.
_ADMIN_COMMANDS = frozenset({"info", "config|resetstat", "config"})


def round_trips(store: RedisReplayStore, checks: int, calls: dict[str, int], before: tuple[int, int]) -> RoundTrips:
    """Compare the store's counters and Redis's command statistics with the number of checks."""
    round_trips_before, writes_before = before
    pipeline = store.pipeline
    other = {
        name: count
        for name, count in calls.items()
        if name not in _SCRIPT_COMMANDS | _ADMIN_COMMANDS and name != "evalsha"
    }
    return RoundTrips(
        checks=checks,
        round_trips=store.round_trips - round_trips_before,
        evalsha_calls=calls.get("evalsha", 0),
        other_client_commands=other,
        socket_writes=None if pipeline is None else pipeline.writes - writes_before,
    )


def counters(store: RedisReplayStore) -> tuple[int, int]:
    pipeline = store.pipeline
    return store.round_trips, 0 if pipeline is None else pipeline.writes


def measure_floor(port: int, redis_pid: int, concurrency: int, *, duration_s: float) -> Sample:
    """Run redis-benchmark's EVAL of one SET NX PX for about ``duration_s`` seconds."""
    if shutil.which("redis-benchmark") is None:
        raise RuntimeError("redis-benchmark is not installed; it comes with the redis-server package (apt-get install redis-server)")
    # A short run estimates the rate, so the measured run lasts about duration_s.
    probe = _redis_benchmark(port, concurrency, requests=max(2000, 200 * concurrency))
    requests = max(2000, int(probe.rate * duration_s))

    redis_before = cpu_seconds(redis_pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    sample = _redis_benchmark(port, concurrency, requests=requests)
    redis_cpu = cpu_seconds(redis_pid) - redis_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime

    per_operation = {
        "benchmark": round(client_cpu * 1e6 / requests, 1),
        "redis": round(redis_cpu * 1e6 / requests, 1),
    }
    return dataclasses.replace(sample, cpu_us_per_operation=per_operation)


def _redis_benchmark(port: int, concurrency: int, *, requests: int) -> Sample:
    command = [
        "redis-benchmark",
        "-h", "127.0.0.1",
        "-p", str(port),
        "-c", str(concurrency),
        "-n", str(requests),
        # __rand_int__ in a key becomes a random number from this range.
        "-r", "1000000000",
        "--csv",
        "EVAL", FLOOR_SCRIPT, "1", "bench:floor:__rand_int__",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed with exit code {result.returncode}: {result.stderr[-1000:]}")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    if not rows or "rps" not in rows[-1]:
        raise RuntimeError(f"redis-benchmark printed no CSV result: {result.stdout[-1000:]!r}")
    row = rows[-1]
    return sample_from_rate(
        rate=float(row["rps"]),
        p50_ms=float(row["p50_latency_ms"]) if "p50_latency_ms" in row else None,
        p99_ms=float(row["p99_latency_ms"]) if "p99_latency_ms" in row else None,
        operations=requests,
        seconds=elapsed,
    )
