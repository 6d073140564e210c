"""``voipclient ptt`` against the running desktop app: the app starts its control socket at
launch, resolves channels by name (any case) and transmits; a second instance explains why it
has no socket; an unknown channel is refused with the list of channels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..conftest import Starter
from .conftest import AppFactory, pair_in, round_trip, talking

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(90)]
GENERAL, GAMES = 2, 3


def ptt(qtbot: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``voipclient ptt ARGS`` from a terminal, while the Qt event loop keeps running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "voipclient", "ptt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[3],
    )
    qtbot.waitUntil(lambda: proc.poll() is not None, timeout=30_000)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ptt_press_by_name_makes_the_running_app_transmit(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server(channels=("General", "Games"))
    alice, bob = pair_in(qtbot, make_app, server, GENERAL)
    # alice started first and serves the socket; bob (same user, same socket) says why not
    assert alice.controller.control is not None
    assert Path(os.environ["VOIPCLIENT_PTT_SOCKET"]).exists()
    assert bob.controller.control is None
    assert "another voipclient is listening" in bob.controller.control_status

    pressed = ptt(qtbot, "press", "general")  # any case
    assert pressed.returncode == 0, pressed.stderr
    assert pressed.stdout.strip() == f"wanted={GENERAL}"
    qtbot.waitUntil(lambda: talking(bob, GENERAL, "alice"), timeout=10_000)
    status = ptt(qtbot, "status")
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["wanted"] == [GENERAL] and state["talking_to"] == ["General"]

    released = ptt(qtbot, "release", "General")
    assert released.returncode == 0 and released.stdout.strip() == "wanted="
    qtbot.waitUntil(lambda: not talking(bob, GENERAL, "alice"), timeout=10_000)

    unknown = ptt(qtbot, "press", "Nowhere")
    assert unknown.returncode == 1
    assert "no channel 'Nowhere'" in unknown.stderr
    for listed in ("General (#2)", "Games (#3)", "Lobby (#1)"):
        assert listed in unknown.stderr
    round_trip(qtbot, alice)  # whatever a refused press might have started has reached bob
    assert not talking(bob, GENERAL, "alice")


def test_the_socket_goes_with_the_app(qtbot: Any, make_app: AppFactory) -> None:
    app = make_app("solo")
    socket_path = Path(os.environ["VOIPCLIENT_PTT_SOCKET"])
    assert app.controller.control is not None and socket_path.exists()
    assert str(socket_path) in app.controller.control_status
    answer = ptt(qtbot, "press", "General")  # not connected: no channels to name
    assert answer.returncode == 1 and "not connected" in answer.stderr
    app.controller.shutdown()
    assert not socket_path.exists()
    gone = ptt(qtbot, "status")
    assert gone.returncode == 3 and "not running" in gone.stderr
