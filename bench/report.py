"""Ratios, targets, the printed table and the chart of a benchmark run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "compute_ratios", "draw_chart", "evaluate_targets", "format_table"]

# ratio key -> (minimum, what the target means). Ratios are product / baseline.
TARGETS = {
    "engine_c1": (0.5, "replay checks >= 0.5x redis-benchmark EVAL at concurrency 1"),
    "engine_c50": (0.5, "replay checks >= 0.5x redis-benchmark EVAL at concurrency 50"),
    "ws_replay_vs_echo_c1": (0.85, "replay-checked WebSocket commands >= 0.85x the echo consumer, 1 client"),
    "ws_replay_vs_echo_c32": (0.85, "replay-checked WebSocket commands >= 0.85x the echo consumer, 32 clients"),
    "http_replay_vs_bare": (1 / 1.15, "replay + idempotency checks cost <= 15 % over the bare async view"),
}
# 5,000 idle authenticated sockets in under 1 GiB of RSS.
IDLE_TARGET_SOCKETS = 5000
IDLE_TARGET_RSS_KIB = 1024 * 1024

ENGINE_SERIES = {
    "redis_benchmark_eval": "redis-benchmark EVAL SET NX PX (floor)",
    "redis_store": "RedisReplayStore (product)",
    "redis_store_unpipelined": "RedisReplayStore, redis-py per check",
    "memory_store": "MemoryReplayStore (product, one process)",
}
WEBSOCKET_SERIES = {
    "echo": "Channels JSON echo consumer (baseline)",
    "replay": "replay check, no ledger",
    "ledger_sqlite": "full transfer, SQLite",
    "ledger_postgres": "full transfer, PostgreSQL",
}
HTTP_SERIES = {
    "bare": "bare async view (baseline)",
    "replay": "replay + idempotency checks, no ledger",
    "ledger_sqlite": "full transfer, SQLite",
    "ledger_postgres": "full transfer, PostgreSQL",
}


def _rate(section: dict[str, Any], series: str, level: str) -> float | None:
    figure = section.get(series, {}).get(level)
    return None if figure is None else figure["rate"]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def _paired_ratio(section: dict[str, Any], product: str, baseline: str, level: str) -> float | None:
    """Return the median of the per-round ratios when both series ran in alternating rounds.

    Each round measures product and baseline within seconds of each other,
    so a round's ratio cancels most of the load other processes add, which
    drifts over minutes.
    """
    product_figure = section.get(product, {}).get(level)
    baseline_figure = section.get(baseline, {}).get(level)
    if product_figure is None or baseline_figure is None:
        return None
    product_rounds = product_figure.get("round_rates", [])
    baseline_rounds = baseline_figure.get("round_rates", [])
    if len(product_rounds) > 1 and len(product_rounds) == len(baseline_rounds):
        return round(statistics.median(mine / theirs for mine, theirs in zip(product_rounds, baseline_rounds, strict=False)), 3)
    return _ratio(product_figure["rate"], baseline_figure["rate"])


def compute_ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Compute every product/baseline ratio of a run; higher is better, except rss_per_socket_kib."""
    ratios: dict[str, float | None] = {}
    engine = results.get("engine", {})
    for level in engine.get("redis_store", {}):
        floor = _rate(engine, "redis_benchmark_eval", level)
        ratios[f"engine_{level}"] = _paired_ratio(engine, "redis_store", "redis_benchmark_eval", level)
        ratios[f"engine_unpipelined_{level}"] = _ratio(_rate(engine, "redis_store_unpipelined", level), floor)

    websocket = results.get("websocket", {})
    for level in websocket.get("echo", {}):
        echo = _rate(websocket, "echo", level)
        ratios[f"ws_replay_vs_echo_{level}"] = _paired_ratio(websocket, "replay", "echo", level)
        for database in ("sqlite", "postgres"):
            ratios[f"ws_ledger_{database}_vs_echo_{level}"] = _ratio(_rate(websocket, f"ledger_{database}", level), echo)

    http = results.get("http", {})
    levels = list(http.get("bare", {}))
    for level in levels:
        bare = _rate(http, "bare", level)
        ratios[f"http_replay_vs_bare_{level}"] = _paired_ratio(http, "replay", "bare", level)
        for database in ("sqlite", "postgres"):
            ratios[f"http_ledger_{database}_vs_bare_{level}"] = _ratio(_rate(http, f"ledger_{database}", level), bare)
    if levels:
        # The headline HTTP ratio is the one at the highest concurrency, which
        # measures throughput rather than the latency of one request at a time.
        ratios["http_replay_vs_bare"] = ratios[f"http_replay_vs_bare_{levels[-1]}"]

    idle = results.get("connections", {}).get("levels", [])
    if idle:
        ratios["rss_per_socket_kib"] = idle[-1]["kib_per_socket"]
    return {key: value for key, value in ratios.items() if value is not None}


def evaluate_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Compare the ratios and the idle-socket memory with the targets."""
    ratios = results["ratios"]
    targets: dict[str, dict[str, Any]] = {}
    for key, (minimum, meaning) in TARGETS.items():
        if key in ratios:
            targets[key] = {"target": f">= {minimum:.3f}", "measured": ratios[key], "met": ratios[key] >= minimum, "meaning": meaning}
    for level in results.get("connections", {}).get("levels", []):
        if level["sockets"] == IDLE_TARGET_SOCKETS:
            targets["rss_5000_sockets"] = {
                "target": "< 1024 MiB",
                "measured": level["rss_mib"],
                "met": level["rss_kib"] < IDLE_TARGET_RSS_KIB,
                "meaning": "one daphne process holds 5,000 idle authenticated sockets in under 1 GiB RSS",
            }
    return targets


def _row(name: str, level: str, figure: dict[str, Any], ratio: float | None) -> str:
    p50 = "-" if figure.get("p50_ms") is None else f"{figure['p50_ms']:.3f}"
    p99 = "-" if figure.get("p99_ms") is None else f"{figure['p99_ms']:.3f}"
    shown_ratio = "" if ratio is None else f"{ratio:.2f}x"
    cpu = " + ".join(f"{process} {micros:.0f}" for process, micros in figure.get("cpu_us_per_operation", {}).items())
    return f"  {name:<42} {level:>4} {figure['rate']:>11,.0f} {p50:>9} {p99:>9} {shown_ratio:>7}  {cpu}"


def _engine_ratio(ratios: dict[str, Any], series: str, level: str) -> float | None:
    if series == "redis_store":
        return ratios.get(f"engine_{level}")
    if series == "redis_store_unpipelined":
        return ratios.get(f"engine_unpipelined_{level}")
    return None


def format_table(results: dict[str, Any]) -> str:
    """Render every figure of a run as a plain-text table."""
    ratios = results.get("ratios", {})
    header = f"  {'':<42} {'conc':>4} {'per second':>11} {'p50 ms':>9} {'p99 ms':>9} {'ratio':>7}  CPU us per operation"
    lines = [f"Benchmark profile {results['profile']!r}, {results['machine']['cores']} cores, {results['machine']['cpu_model']}"]

    sections = (
        ("Replay engine (checks)", "engine", ENGINE_SERIES, lambda series, level: _engine_ratio(ratios, series, level)),
        ("WebSocket (commands)", "websocket", WEBSOCKET_SERIES, lambda series, level: ratios.get(f"ws_{series}_vs_echo_{level}") if series != "echo" else None),
        ("HTTP (requests)", "http", HTTP_SERIES, lambda series, level: ratios.get(f"http_{series}_vs_bare_{level}") if series != "bare" else None),
    )
    for title, key, names, ratio_of in sections:
        section = results.get(key)
        if not section:
            continue
        lines += ["", title, header]
        for series, label in names.items():
            for level, figure in section.get(series, {}).items():
                lines.append(_row(label, level, figure, ratio_of(series, level)))

    engine = results.get("engine", {})
    if "round_trips" in engine:
        trips = engine["round_trips"]
        lines += [
            "",
            f"Redis round trips per check: {trips['round_trips_per_check']:.3f} (store counter), "
            f"EVALSHA per check: {trips['evalsha_per_check']:.3f} (INFO commandstats), "
            f"checks per socket write: {trips['checks_per_socket_write'] or 0:.1f}",
        ]

    idle = results.get("connections")
    if idle:
        lines += ["", f"Idle authenticated sockets (server RSS with none open: {idle['baseline_rss_kib'] / 1024:.0f} MiB)"]
        for level in idle["levels"]:
            lines.append(
                f"  {level['sockets']:>6} sockets: RSS {level['rss_mib']:>7.1f} MiB, "
                f"{level['kib_per_socket']:.1f} KiB per socket, opened in {level['open_seconds']:.1f} s"
            )

    targets = results.get("targets", {})
    if targets:
        lines += ["", "Targets"]
        for key, target in targets.items():
            lines.append(f"  {'met ' if target['met'] else 'MISSED'} {key}: {target['measured']} (target {target['target']})")
    return "\n".join(lines)


def draw_chart(results: dict[str, Any], path: Path) -> None:
    """Draw throughput against concurrency for the product and its baselines, one panel per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("Replay engine", "checks per second", "engine", ENGINE_SERIES),
        ("WebSocket over mutual TLS", "commands per second", "websocket", WEBSOCKET_SERIES),
        ("HTTP over mutual TLS", "requests per second", "http", HTTP_SERIES),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(16, 5.2))
    for axis, (title, unit, key, names) in zip(axes, panels, strict=False):
        section = results.get(key, {})
        levels: set[int] = set()
        for series, label in names.items():
            figures = section.get(series, {})
            if not figures:
                continue
            concurrency = [int(level.removeprefix("c")) for level in figures]
            levels.update(concurrency)
            baseline = series in ("redis_benchmark_eval", "echo", "bare")
            axis.plot(
                concurrency,
                [figure["rate"] for figure in figures.values()],
                marker="o",
                linestyle="--" if baseline else "-",
                label=label,
            )
        axis.set_title(title)
        axis.set_xlabel("concurrency (clients or concurrent checks)")
        axis.set_ylabel(unit)
        axis.set_xscale("log")
        axis.set_yscale("log")
        if levels:
            axis.set_xticks(sorted(levels), [str(level) for level in sorted(levels)])
        axis.grid(True, which="both", alpha=0.3)
        if levels:
            axis.legend(fontsize=8)
    machine = results["machine"]
    figure.suptitle(
        f"python -m bench ({results['profile']}), {machine['cores']} cores, {machine['cpu_model']}; "
        "dashed: baselines"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
