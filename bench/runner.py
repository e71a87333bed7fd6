"""The benchmark run: start the services, measure every path, write results, table and chart."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

from realtime.client import client_ssl_context

from . import engine
from .connections import measure_idle_sockets
from .http_path import measure_http
from .machine import CpuMeter, describe_machine
from .profiles import PROFILES, Profile
from .report import compute_ratios, draw_chart, evaluate_targets, format_table
from .services import BenchServices, raise_open_file_limit
from .stats import Sample, combine
from .websocket_path import measure_websocket

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
SECTIONS = ("engine", "websocket", "http", "connections")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="reduced run, under two minutes")
    size.add_argument("--tiny", action="store_true", help="every path once with tiny sizes (for the smoke test)")

    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default: all of {', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server to create the benchmark database on (default: $POSTGRES_URL or "
        "postgres://postgres@127.0.0.1:5432)",
    )
    parser.add_argument("--skip-postgres", action="store_true", help="measure the ledger on SQLite only")

    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results.json", help="JSON file to write")
    parser.add_argument("--chart", type=Path, default=BENCH_DIR / "throughput.png", help="PNG chart to write")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=BENCH_DIR / "out",
        help="directory for the run's databases, certificates and server logs (default bench/out)",
    )

    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def _level(concurrency: int) -> str:
    return f"c{concurrency}"


async def _alternate(
    rounds: int, measurements: dict[str, Callable[[], Awaitable[Sample]]]
) -> dict[str, Sample]:
    """Measure each figure ``rounds`` times, reversing the order every round, and combine the rounds."""
    samples: dict[str, list[Sample]] = {name: [] for name in measurements}
    order = list(measurements)
    for round_index in range(rounds):
        for name in order if round_index % 2 == 0 else reversed(order):
            samples[name].append(await measurements[name]())
    return {name: combine(values) for name, values in samples.items()}


# --- sections ------------------------------------------------------------


async def _run_engine(services: BenchServices, profile: Profile) -> dict[str, Any]:
    admin = redis.Redis(host="127.0.0.1", port=services.redis.port, socket_timeout=10)
    store = engine.redis_store(services.redis.url)
    unpipelined = engine.redis_store(services.redis.url, pipelined=False)
    memory = engine.memory_store()
    section: dict[str, Any] = {"redis_benchmark_eval": {}, "redis_store": {}, "redis_store_unpipelined": {}, "memory_store": {}}
    checks = 0
    calls: dict[str, int] = {}
    options = {"warmup_s": profile.warmup_s, "duration_s": profile.duration_s}
    cpu_pids = {"benchmark": os.getpid(), "redis": services.redis_pid}

    async def product(concurrency: int) -> Sample:
        nonlocal checks
        admin.config_resetstat()
        sample, ran = await engine.measure_store(store, concurrency, cpu_pids=cpu_pids, **options)
        checks += ran
        for name, count in engine.command_calls(admin).items():
            calls[name] = calls.get(name, 0) + count
        return sample

    async def floor(concurrency: int) -> Sample:
        # redis-benchmark blocks; the loop has nothing else to do meanwhile.
        return engine.measure_floor(services.redis.port, services.redis_pid, concurrency, duration_s=profile.duration_s)

    try:
        # The first check loads the script into Redis (NOSCRIPT, then SCRIPT
        # LOAD); counted figures start after it.
        await engine.warm_up(store)
        await engine.warm_up(unpipelined)
        before = engine.counters(store)
        for concurrency in profile.engine_concurrency:
            level = _level(concurrency)
            pair = await _alternate(
                profile.rounds,
                {
                    "redis_benchmark_eval": lambda c=concurrency: floor(c),
                    "redis_store": lambda c=concurrency: product(c),
                },
            )
            for name, sample in pair.items():
                section[name][level] = sample.as_dict()
            sample, _ = await engine.measure_store(unpipelined, concurrency, cpu_pids=cpu_pids, **options)
            section["redis_store_unpipelined"][level] = sample.as_dict()
            sample, _ = await engine.measure_store(memory, concurrency, cpu_pids={"benchmark": os.getpid()}, **options)
            section["memory_store"][level] = sample.as_dict()
            print(f"  engine {level}: done", file=sys.stderr, flush=True)
        section["round_trips"] = engine.round_trips(store, checks, calls, before).as_dict()
    finally:
        await store.close()
        await unpipelined.close()
        admin.close()
    return section


async def _run_clients(
    measure: Callable[..., Awaitable[Sample]],
    port: int,
    context: Any,
    profile: Profile,
    *,
    compared: tuple[str, str] | None,
    single: dict[str, str],
    cpu_pids: dict[str, int],
) -> dict[str, dict[str, Any]]:
    """Measure a product/baseline pair over rounds, and other series once, at every client concurrency.

    ``compared`` is (baseline series, product series) by path name;
    ``single`` maps result series names to path names.
    """
    options = {"warmup_s": profile.warmup_s, "duration_s": profile.duration_s, "cpu_pids": cpu_pids}
    section: dict[str, dict[str, Any]] = {}
    for concurrency in profile.client_concurrency:
        level = _level(concurrency)
        if compared is not None:
            pair = await _alternate(
                profile.rounds,
                {
                    name: (lambda name=name, concurrency=concurrency: measure(port, name, context, concurrency, **options))
                    for name in compared
                },
            )
            for name, sample in pair.items():
                section.setdefault(name, {})[level] = sample.as_dict()
        for series, path_name in single.items():
            sample = await measure(port, path_name, context, concurrency, **options)
            section.setdefault(series, {})[level] = sample.as_dict()
        print(f"  {measure.__name__} {level}: done", file=sys.stderr, flush=True)
    return section


def _merge(target: dict[str, Any], extra: dict[str, Any]) -> None:
    for series, figures in extra.items():
        target.setdefault(series, {}).update(figures)


def _run_servers(services: BenchServices, profile: Profile, sections: set[str], results: dict[str, Any]) -> None:
    context = client_ssl_context(*services.client_files())
    databases = ["sqlite"] + (["postgres"] if "postgres" in services.database_urls else [])
    for database in databases:
        server = services.serve(database, name=f"serve-{database}")
        port = server.port
        assert server.process is not None
        cpu_pids = {"serve": server.process.pid, "redis": services.redis_pid, "client": os.getpid()}
        first = database == "sqlite"
        try:
            if "websocket" in sections:
                section = asyncio.run(
                    _run_clients(
                        measure_websocket, port, context, profile,
                        compared=("echo", "replay") if first else None,
                        single={f"ledger_{database}": "ledger"},
                        cpu_pids=cpu_pids,
                    )
                )
                _merge(results.setdefault("websocket", {}), section)
            if "http" in sections:
                section = asyncio.run(
                    _run_clients(
                        measure_http, port, context, profile,
                        compared=("bare", "replay") if first else None,
                        single={f"ledger_{database}": "ledger"},
                        cpu_pids=cpu_pids,
                    )
                )
                _merge(results.setdefault("http", {}), section)
        finally:
            services.stop_server(server)


def _run_connections(services: BenchServices, profile: Profile) -> dict[str, Any]:
    # A fresh server process, so that its RSS carries nothing from the
    # WebSocket and HTTP figures.
    server = services.serve("sqlite", name="serve-idle")
    try:
        assert server.process is not None and server.port is not None
        return measure_idle_sockets(
            server.port, server.process.pid, services.client_files(), profile.idle_sockets, profile.idle_client_processes
        )
    finally:
        services.stop_server(server)


# --- entry point -----------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    profile = PROFILES["full"]
    if args.quick:
        profile = PROFILES["quick"]
    elif args.tiny:
        profile = PROFILES["tiny"]
    sections = set(args.sections.split(","))
    postgres_url = None if args.skip_postgres else args.postgres_url.rstrip("/")

    open_files = raise_open_file_limit()
    needed = max(profile.idle_sockets) + 1000 if "connections" in sections else 0
    if open_files < needed:
        raise SystemExit(f"the open-file limit is {open_files}; {needed} are needed for {max(profile.idle_sockets)} sockets")

    started = dt.datetime.now(dt.timezone.utc)
    run_dir = args.work_dir / f"run-{started:%Y%m%d-%H%M%S}-{os.getpid()}"
    meter = CpuMeter()
    results: dict[str, Any] = {
        "profile": profile.name,
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": describe_machine(postgres_url),
        "settings": {
            "duration_s": profile.duration_s,
            "warmup_s": profile.warmup_s,
            "rounds": profile.rounds,
            "replay_store": "redis",
            "channel_layer": "redis",
        },
    }
    print(f"benchmark profile {profile.name!r}; logs in {run_dir}", file=sys.stderr, flush=True)

    services = BenchServices(run_dir, postgres_url=postgres_url).start()
    try:
        if "engine" in sections:
            results["engine"] = asyncio.run(_run_engine(services, profile))
            # Millions of nonces from the engine section would otherwise
            # expire, at Redis's CPU cost, during the next sections.
            services.redis.client().flushall()
        if sections & {"websocket", "http"}:
            _run_servers(services, profile, sections, results)
        if "connections" in sections:
            results["connections"] = _run_connections(services, profile)
    finally:
        services.close()

    results["load"] = meter.report()
    results["elapsed_s"] = results["load"]["wall_seconds"]
    results["ratios"] = compute_ratios(results)
    results["targets"] = evaluate_targets(results)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    if not args.no_chart:
        draw_chart(results, args.chart)
        print(f"\nchart: {args.chart}")
    print(f"results: {args.results}")
    return 0
