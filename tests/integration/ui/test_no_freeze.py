"""The window keeps answering while a connection hangs or the network drops: everything slow
happens on the connection's thread. The GUI event loop's longest stall is measured with a 10 ms
timer and printed; the bound is generous (a frozen window stalls for the whole hang)."""

from __future__ import annotations

import signal
import socket
import time
from typing import Any

import pytest
from PySide6.QtCore import QTimer

from voipclient.ui.prefs import Bookmark

from ..conftest import Starter
from .conftest import AppFactory, connect

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(90)]

STALL_LIMIT_S = 0.5


class StallMeter:
    def __init__(self) -> None:
        self.last = time.monotonic()
        self.worst = 0.0
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = time.monotonic()
        self.worst = max(self.worst, now - self.last)
        self.last = now

    def stop(self) -> float:
        self.timer.stop()
        return self.worst


def test_window_answers_while_the_server_never_completes_tls(
    qtbot: Any, make_app: AppFactory
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts TCP, never speaks TLS: the handshake hangs
    port = silent.getsockname()[1]
    try:
        app = make_app("alice")
        meter = StallMeter()
        app.connect_to(Bookmark("black hole", "127.0.0.1", port), pin="sha256/" + "A" * 43 + "=")
        qtbot.wait(3000)
        worst = meter.stop()
        print(f"\nGUI stall while a TLS handshake hangs: worst {worst * 1000:.0f} ms")
        assert app.controller.state == "connecting"
        assert worst < STALL_LIMIT_S
    finally:
        silent.close()


def test_window_answers_while_the_relay_stops_answering(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("alice")
    connect(qtbot, app, server)
    meter = StallMeter()
    server.proc.send_signal(signal.SIGSTOP)  # the network "drops": nothing answers any more
    try:
        qtbot.wait(4000)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    worst = meter.stop()
    print(f"\nGUI stall while the relay is unreachable: worst {worst * 1000:.0f} ms")
    assert worst < STALL_LIMIT_S
