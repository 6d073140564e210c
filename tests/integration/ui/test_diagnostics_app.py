"""Crash evidence through the real app: an exception out of a Qt slot lands in the app's log
(with its traceback), and Help → Copy diagnostics puts versions, devices, the connection and
that error on the clipboard, without any key."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from voipclient import __version__

from ..conftest import Starter
from .conftest import AppFactory, connect

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]


@pytest.mark.qt_no_exception_capture  # the app's own hook is what is under test
def test_slot_exception_is_logged_and_diagnostics_are_copied(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("alice")
    connect(qtbot, app, server)
    diag = app.diagnostics
    assert diag.log_dir == app.controller.data_dir / "logs"

    def boom() -> None:
        raise RuntimeError("a slot failed on purpose")

    QTimer.singleShot(0, boom)
    qtbot.waitUntil(lambda: diag.unhandled == 1, timeout=5_000)
    log_text = diag.log_file.read_text("utf-8")
    assert "unhandled exception in the GUI thread" in log_text
    assert "RuntimeError: a slot failed on purpose" in log_text and "in boom" in log_text

    QApplication.clipboard().clear()
    app.window.diagnostics_action.trigger()
    text = QApplication.clipboard().text()
    assert f"voipclient {__version__}" in text
    for part in ("PySide6 ", "PortAudio ", "libopus ", "Python "):
        assert part in text
    assert f"connection: ready, server {server.host}:{server.port}, transport" in text
    assert "input in use:" in text and "output in use:" in text
    assert "unhandled exceptions: 1" in text
    assert "a slot failed on purpose" in text  # among the last errors
    assert str(diag.log_dir) in text
    identity = app.controller.identity
    assert identity is not None
    private = identity.private_bytes()
    for secret in (private.hex(), base64.b64encode(private).decode()):
        assert secret not in text and secret not in log_text
