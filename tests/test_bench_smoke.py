"""``python -m bench`` once in its tiny profile, so that the benchmark cannot rot.

The figures of a tiny run mean nothing. The test checks that every section
ran against the real servers and that the report contains every key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.support.servers import PROJECT_ROOT

pytestmark = pytest.mark.e2e

POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
RATIO_KEYS = {
    "engine_c1",
    "engine_c50",
    "ws_replay_vs_echo_c1",
    "ws_replay_vs_echo_c32",
    "http_replay_vs_bare",
    "rss_per_socket_kib",
}


def postgres_reachable() -> bool:
    try:
        psycopg.connect(POSTGRES_URL.replace("postgres://", "postgresql://", 1) + "/postgres", connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def test_tiny_benchmark_run(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    chart_path = tmp_path / "throughput.png"
    command = [
        sys.executable, "-m", "bench", "--tiny",
        "--results", str(results_path),
        "--chart", str(chart_path),
        "--work-dir", str(tmp_path / "work"),
        "--postgres-url", POSTGRES_URL,
    ]
    with_postgres = postgres_reachable()
    if not with_postgres:
        command.append("--skip-postgres")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)

    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=240)

    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(results_path.read_text())
    assert RATIO_KEYS <= results["ratios"].keys()
    for key in RATIO_KEYS:
        assert results["ratios"][key] > 0, key
    trips = results["engine"]["round_trips"]
    assert trips["round_trips_per_check"] == 1.0
    assert trips["evalsha_per_check"] == 1.0
    assert trips["other_client_commands"] == {}
    assert set(results["websocket"]) >= {"echo", "replay", "ledger_sqlite"}
    assert set(results["http"]) >= {"bare", "replay", "ledger_sqlite"}
    if with_postgres:
        assert "ledger_postgres" in results["websocket"]
        assert "ledger_postgres" in results["http"]
    assert [level["sockets"] for level in results["connections"]["levels"]] == [5, 10]
    assert chart_path.read_bytes().startswith(b"\x89PNG")
    assert "Replay engine (checks)" in result.stdout
    # The run removes its private keys.
    assert not list((tmp_path / "work").glob("*/pki/*.key"))
