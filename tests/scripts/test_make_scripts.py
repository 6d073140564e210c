"""The scripts behind `make run` / `make test`.

``sysdeps.sh`` runs against fake ``id`` and ``dpkg-query`` commands (fakes: a unit test must not
install packages); ``with-test-env.sh`` runs for real and must stop everything it started, by PID,
even when the wrapped command fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fake_bin(tmp_path: Path, *, uid: int, installed: bool) -> dict[str, str]:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    status = "install ok installed" if installed else ""
    (bin_dir / "dpkg-query").write_text(f"#!/bin/sh\nprintf '{status}'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def run_sysdeps(env: dict[str, str], profile: str = "test") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts/sysdeps.sh"), profile],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.timeout(30)
def test_sysdeps_as_a_user_names_exactly_what_is_missing(tmp_path: Path) -> None:
    result = run_sysdeps(fake_bin(tmp_path, uid=1000, installed=False))
    assert result.returncode == 1
    line = next(
        ln for ln in result.stderr.splitlines() if "apt-get install --no-install-recommends" in ln
    )
    missing = set(line.split("--no-install-recommends", 1)[1].split())
    for pkg in ("libportaudio2", "libopus0", "pulseaudio", "xvfb", "xdotool", "gnome-keyring"):
        assert pkg in missing


@pytest.mark.timeout(30)
def test_sysdeps_for_the_bundle_asks_for_binutils_and_unshare(tmp_path: Path) -> None:
    result = run_sysdeps(fake_bin(tmp_path, uid=1000, installed=False), profile="bundle")
    assert result.returncode == 1
    line = next(ln for ln in result.stderr.splitlines() if "apt-get install" in ln)
    missing = set(line.split("--no-install-recommends", 1)[1].split())
    assert {"binutils", "util-linux", "libopus0", "libportaudio2"} <= missing
    assert "pulseaudio" not in missing


@pytest.mark.timeout(30)
def test_sysdeps_with_everything_installed_is_silent(tmp_path: Path) -> None:
    result = run_sysdeps(fake_bin(tmp_path, uid=1000, installed=True))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.timeout(60)
def test_test_env_stops_everything_it_started_even_when_the_command_fails() -> None:
    result = subprocess.run(
        [
            str(ROOT / "scripts/with-test-env.sh"),
            "bash",
            "-c",
            "pactl info >/dev/null && xdotool getmouselocation >/dev/null"
            ' && echo "$XDG_RUNTIME_DIR" && exit 3',
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    runtime_dir = Path(result.stdout.strip().splitlines()[-1])
    match = re.search(r"started pids: ([\d ]+)", result.stderr)
    assert match, result.stderr
    pids = [int(p) for p in match.group(1).split()]
    assert len(pids) >= 3  # PulseAudio, Xvfb, D-Bus (+ gnome-keyring)
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.1)
    assert not alive
    assert not runtime_dir.exists()


def _zombie(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True


@pytest.mark.timeout(90)
def test_make_run_without_a_display_opens_the_window_on_the_local_server(tmp_path: Path) -> None:
    """`make run`'s script on a box with no display: Xvfb, the embedded local server, a
    connected window with the server's channels (the app reports and quits by itself)."""
    env = {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}
    env.update(
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_DATA_HOME=str(tmp_path / "data"),
    )
    import sys

    result = subprocess.run(
        ["bash", str(ROOT / "scripts/run-app.sh"), sys.executable, "--quit-after", "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "virtual X server" in result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"voipclient: state=ready channels=5 joined=1 audio=\w+ hotkeys=\S+ audio_host=\d+", line
    )
    assert (tmp_path / "data" / "voipclient" / "local-server" / "server-cert.pem").exists()
