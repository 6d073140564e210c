"""The app's dialogs in their real flows: first run offers the local server, first contact asks
to trust the server's key (and remembers it), a password-protected server asks for the password."""

from __future__ import annotations

import json
from typing import Any

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QLineEdit, QPushButton

from voipclient.ui.prefs import Bookmark

from ..conftest import Starter
from .conftest import AppFactory

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def test_first_run_offers_the_local_server(qtbot: Any, make_app: AppFactory) -> None:
    app = make_app("newcomer", first_run=True)
    app.first_connect()  # the setup first (skipped here), then with no saved servers the
    assert app.setup_wizard is not None  # connect dialog, with the local server first
    app.setup_wizard.reject()
    dialog = app.connect_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.findChild(type(dialog), "welcomeLabel") is None  # a label, not a dialog
    local = dialog.findChild(QPushButton, "localServerButton")
    assert local is not None and local.isEnabled()
    qtbot.mouseClick(local, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: app.controller.state == "ready", timeout=15_000)
    names = {row.name for row in app.controller.model.rows()}
    assert {"Lobby", "General", "Squad A"} <= names


def test_first_contact_asks_to_trust_the_key_and_remembers_it(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("alice")
    bookmark = Bookmark("test", server.host, server.port)
    app.connect_to(bookmark)  # no pin known: the app must ask
    qtbot.waitUntil(
        lambda: app.pin_dialog is not None and app.pin_dialog.isVisible(), timeout=10_000
    )
    pin_field = app.pin_dialog.findChild(QLineEdit, "pinField")
    assert pin_field is not None and pin_field.text() == server.pin
    assert app.controller.state == "awaiting_approval"
    qtbot.mouseClick(
        app.pin_dialog.findChild(QPushButton, "trustButton"), Qt.MouseButton.LeftButton
    )
    qtbot.waitUntil(lambda: app.controller.state == "ready", timeout=10_000)
    pins = json.loads((app.controller.data_dir / "server-pins.json").read_text())
    assert server.pin in json.dumps(pins)
    # the next connection to the same server does not ask again
    app.pin_dialog = None
    app.controller.disconnect_server()
    qtbot.waitUntil(lambda: app.controller.state == "closed", timeout=5_000)
    app.connect_to(bookmark)
    qtbot.waitUntil(lambda: app.controller.state == "ready", timeout=10_000)
    assert app.pin_dialog is None


def test_rejecting_the_key_sends_nothing_and_says_so(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("alice")
    app.connect_to(Bookmark("test", server.host, server.port))
    qtbot.waitUntil(
        lambda: app.pin_dialog is not None and app.pin_dialog.isVisible(), timeout=10_000
    )
    qtbot.keyClick(app.pin_dialog, Qt.Key.Key_Return)  # Enter is Cancel here, never Trust
    qtbot.waitUntil(lambda: app.controller.state == "refused", timeout=10_000)
    assert "did not trust" in app.window.banner.text()


def test_password_protected_server_asks_for_the_password(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server(env={"VOIPCLIENT_SERVER_PASSWORD": "open sesame"})
    app = make_app("alice")
    typed: list[str] = []

    def answer() -> None:
        dialog = QApplication.activeModalWidget()
        if dialog is None or dialog.objectName() != "serverPasswordDialog":
            QTimer.singleShot(100, answer)
            return
        edit = dialog.findChild(QLineEdit, "passwordEdit")
        assert edit is not None and edit.echoMode() == QLineEdit.EchoMode.Password
        edit.setText("open sesame")
        typed.append("yes")
        dialog.findChild(QPushButton, "okButton").click()

    QTimer.singleShot(100, answer)
    app.connect_to(Bookmark("locked", server.host, server.port), pin=server.pin)
    qtbot.waitUntil(lambda: app.controller.state == "ready", timeout=20_000)
    assert typed == ["yes"]
