"""Closed-loop load and its summary: rate, p50 and p99 latency."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Operation", "Sample", "combine", "cpu_seconds", "run_closed_loop", "sample_from_rate"]

# One request of one client: it returns when the reply has arrived and
# raises when the reply is not the expected one.
Operation = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Sample:
    """One measured figure: operations per second and latency percentiles in milliseconds."""

    rate: float
    p50_ms: float | None
    p99_ms: float | None
    operations: int
    seconds: float
    # Rates of the single rounds when rounds were combined.
    round_rates: tuple[float, ...] = ()
    # CPU microseconds per operation of the named processes (server, Redis, this process).
    cpu_us_per_operation: dict[str, float] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 1),
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 3),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
            "operations": self.operations,
            "seconds": round(self.seconds, 3),
            "round_rates": [round(rate, 1) for rate in self.round_rates or (self.rate,)],
            "cpu_us_per_operation": self.cpu_us_per_operation,
        }


def _percentile(ordered: Sequence[int], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index] / 1e6


def _summarise(latencies_ns: list[int], seconds: float) -> Sample:
    ordered = sorted(latencies_ns)
    if not ordered:
        raise RuntimeError(f"no operation completed in {seconds:.2f} s of measurement")
    return Sample(
        rate=len(ordered) / seconds,
        p50_ms=_percentile(ordered, 0.50),
        p99_ms=_percentile(ordered, 0.99),
        operations=len(ordered),
        seconds=seconds,
    )


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) a process has used, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # Fields 14 and 15 of proc(5), utime and stime, counted after the ")" that ends the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure_cpu(pids: dict[str, int], start_ns: int, end_ns: int) -> dict[str, float]:
    await asyncio.sleep(max(0.0, (start_ns - time.perf_counter_ns()) / 1e9))
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await asyncio.sleep(max(0.0, (end_ns - time.perf_counter_ns()) / 1e9))
    return {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}


async def run_closed_loop(
    operations: Sequence[Operation], *, warmup_s: float, duration_s: float, cpu_pids: dict[str, int] | None = None
) -> Sample:
    """Run every operation in its own loop, back to back, and measure the ones started in the window.

    Each loop sends its next request when the previous reply has arrived,
    so ``len(operations)`` is the concurrency. The first ``warmup_s``
    seconds are not counted. ``cpu_pids`` names processes whose CPU time in
    the window is divided by the operations measured.
    """
    start_ns = time.perf_counter_ns() + int(warmup_s * 1e9)
    end_ns = start_ns + int(duration_s * 1e9)
    latencies: list[int] = []
    cpu_task = asyncio.ensure_future(_measure_cpu(cpu_pids or {}, start_ns, end_ns))

    async def repeat(operation: Operation) -> None:
        clock = time.perf_counter_ns
        while True:
            started = clock()
            if started >= end_ns:
                return
            await operation()
            if started >= start_ns:
                latencies.append(clock() - started)

    await asyncio.gather(*(repeat(operation) for operation in operations))
    cpu = await cpu_task
    sample = _summarise(latencies, duration_s)
    per_operation = {name: round(seconds * 1e6 / sample.operations, 1) for name, seconds in cpu.items()}
    return dataclasses.replace(sample, cpu_us_per_operation=per_operation)


def sample_from_rate(rate: float, p50_ms: float | None, p99_ms: float | None, operations: int, seconds: float) -> Sample:
    """Build a sample from figures another tool measured (redis-benchmark)."""
    return Sample(rate=rate, p50_ms=p50_ms, p99_ms=p99_ms, operations=operations, seconds=seconds)


def combine(samples: Sequence[Sample]) -> Sample:
    """Combine rounds of one figure: the median rate, latency percentile and CPU time per operation."""
    if len(samples) == 1:
        return samples[0]
    p50 = [sample.p50_ms for sample in samples if sample.p50_ms is not None]
    p99 = [sample.p99_ms for sample in samples if sample.p99_ms is not None]
    names = set().union(*(sample.cpu_us_per_operation for sample in samples))
    cpu = {
        name: round(statistics.median(sample.cpu_us_per_operation[name] for sample in samples if name in sample.cpu_us_per_operation), 1)
        for name in sorted(names)
    }
    return Sample(
        rate=statistics.median(sample.rate for sample in samples),
        p50_ms=statistics.median(p50) if p50 else None,
        p99_ms=statistics.median(p99) if p99 else None,
        operations=sum(sample.operations for sample in samples),
        seconds=sum(sample.seconds for sample in samples),
        round_rates=tuple(sample.rate for sample in samples),
        cpu_us_per_operation=cpu,
    )
