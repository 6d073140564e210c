"""`voipclient --startup-probe` (what benchmarks/bundle.py times): the window comes up with the
audio devices and hotkeys started, the probe says so and the app quits by itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]


def test_startup_probe_reports_the_window_and_quits(tmp_path: Path) -> None:
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "c"))
    env["XDG_DATA_HOME"] = str(tmp_path / "d")
    result = subprocess.run(
        [sys.executable, "-m", "voipclient", "--startup-probe"],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "voipclient: window shown"
    assert "Traceback" not in result.stderr
