"""The console scripts and ``python -m voipclient`` from the installed venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voipclient import __version__

BIN = Path(sys.executable).parent
DISPLAY_VARS = {"DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"}

pytestmark = pytest.mark.timeout(60)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=50, check=False)


def test_module_version() -> None:
    result = run(sys.executable, "-m", "voipclient", "--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"voipclient {__version__}")


def test_self_test_prints_one_ok_line_per_check() -> None:
    result = run(str(BIN / "voipclient"), "--self-test")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    names = [line.split()[1] for line in lines]
    assert names == [
        "sframe",
        "datagram",
        "safety-number",
        "names+code",
        "keydist+text",
        "opus",
        "audio-devices",
        "tls",
        "keyring",
        "hosting",
        "relay-fanout",
        "qt-window",
    ]
    assert all(line.startswith("ok ") for line in lines), result.stdout


def test_run_without_a_display_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if k not in DISPLAY_VARS}
    result = subprocess.run(
        [sys.executable, "-m", "voipclient"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        env=env,
    )
    assert result.returncode == 1
    assert "no display" in result.stderr and "xvfb-run" in result.stderr


def test_bot_entry_point_version_and_usage_error() -> None:
    assert run(str(BIN / "voipclient-bot"), "--version").stdout.strip() == (
        f"voipclient-bot {__version__}"
    )
    result = run(str(BIN / "voipclient-bot"))
    assert result.returncode == 2
    assert "the following arguments are required: --server" in result.stderr


def test_server_entry_point_version() -> None:
    result = run(str(BIN / "voipclient-server"), "--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"voipclient-server {__version__}")
