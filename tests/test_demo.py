"""The demo is the main job's acceptance run; it must keep passing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import PROJECT_ROOT, project_env

pytestmark = pytest.mark.e2e


def test_demo_exits_zero_with_every_outcome_expected(tmp_path: Path) -> None:
    env = project_env(DEMO_DIR=str(tmp_path / "demo"), DATABASE_URL=None)
    result = subprocess.run(
        [sys.executable, "-m", "realtime.demo"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All outcomes as expected." in result.stdout
    assert " NO" not in result.stdout
    assert "ALICE-USD    904.50 USD" in result.stdout
