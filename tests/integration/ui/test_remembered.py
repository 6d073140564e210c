"""Remembered and automatic: a server marked "connect at start" is connected at the next start
(with the nickname from the last run); an invite link pasted into the connect dialog connects
without a trust prompt; a second start with a link hands it to the running app; the desktop
opens voipclient:// links with this installation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QPushButton

from voipclient.desktop import register_url_handler
from voipclient.net.invite import Invite, format_invite
from voipclient.ui.prefs import Bookmark, load_preferences, save_preferences
from voipclient.ui.settings import QSettingsBackend

from ..conftest import A, Starter
from .conftest import AppFactory

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def test_connect_at_start_uses_the_saved_server_and_name(
    qtbot: Any, make_app: AppFactory, start_server: Starter, tmp_path: Path
) -> None:
    server = start_server()
    settings = tmp_path / "me" / "settings.ini"
    settings.parent.mkdir(parents=True)
    backend = QSettingsBackend(QSettings(str(settings), QSettings.Format.IniFormat))
    prefs, _ = load_preferences(backend)
    mark = Bookmark("friday", server.host, server.port, connect_at_start=True, pin=server.pin)
    from dataclasses import replace

    save_preferences(backend, replace(prefs, username="zoë", setup_done=True, bookmarks=(mark,)))
    backend.sync()
    app = make_app("me")  # reads tmp_path/me/settings.ini, written above
    app.args.name = None  # started without --name: the saved nickname is used
    app.first_connect()
    qtbot.waitUntil(lambda: app.controller.state == "ready", timeout=15_000)
    assert app.controller.username == "zoë"
    assert app.connect_dialog is None and app.setup_wizard is None  # nothing asked


def test_an_invite_pasted_into_the_connect_dialog_joins_its_channel(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("guest")
    asked: list[object] = []
    app.controller.pin_approval_needed.connect(lambda *a: asked.append(a))
    app.show_connect_dialog()
    dialog = app.connect_dialog
    link = format_invite(Invite(server.host, server.port, server.pin, "A"))
    dialog.invite_edit.setText(link)
    connect_button = dialog.findChild(QPushButton, "connectButton")
    assert connect_button.isEnabled()
    qtbot.mouseClick(connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: (row := app.controller.model.row(A)) is not None and row.joined, timeout=15_000
    )
    assert asked == []
    assert app.controller.prefs.bookmarks[0].pin == server.pin


def test_a_second_start_with_a_link_hands_it_to_the_running_app(
    qtbot: Any,
    make_app: AppFactory,
    start_server: Starter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PySide6.QtWidgets import QMessageBox

    shown: list[str] = []  # the window's message box for a bad link (not a modal in a test)
    monkeypatch.setattr(QMessageBox, "warning", lambda _p, _t, text: shown.append(text))
    server = start_server()
    app = make_app("running")
    qtbot.waitUntil(lambda: app.controller.control is not None, timeout=10_000)
    link = format_invite(Invite(server.host, server.port, server.pin, "A"))
    env = dict(os.environ, HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "voipclient", link],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "handed to the running app" in result.stdout
    qtbot.waitUntil(
        lambda: (row := app.controller.model.row(A)) is not None and row.joined, timeout=15_000
    )
    bad = subprocess.run(
        [sys.executable, "-m", "voipclient", "voipclient://h:1/?pin=nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2 and "pin" in bad.stderr
    qtbot.waitUntil(lambda: bool(shown), timeout=10_000)  # the window says why too
    assert "cannot be used" in shown[0] and "pin" in shown[0]


def test_the_desktop_opens_voipclient_links_with_this_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real xdg-mime and xdg-open, in private XDG directories; the registered command is
    replaced by a recorder so the test sees what the desktop would start."""
    got = tmp_path / "got"
    recorder = tmp_path / "recorder.sh"
    recorder.write_text(f'#!/bin/sh\nprintf "%s" "$@" > {got}\n')
    recorder.chmod(0o755)
    for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_CONFIG_HOME", "config")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setattr("voipclient.desktop.launcher_command", lambda: [str(recorder)])
    assert "voipclient:// links" in register_url_handler()
    entry = (tmp_path / "data" / "applications" / "voipclient.desktop").read_text()
    assert f"Exec={recorder} -- %u" in entry and "x-scheme-handler/voipclient" in entry
    link = "voipclient://voice.example:4000/?pin=x&channel=Squad%20A"
    subprocess.run(["xdg-open", link], timeout=20, check=True, env=os.environ)
    deadline = time.monotonic() + 15
    while not got.exists() and time.monotonic() < deadline:  # xdg-open may return first
        time.sleep(0.05)
    assert got.read_text() == "--" + link  # printf joins "--" and the link


def test_an_invite_never_replaces_a_key_we_trust(
    qtbot: Any, make_app: AppFactory, start_server: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtWidgets import QMessageBox

    server = start_server()
    app = make_app("careful")
    # the server's real key, trusted from a friend's invite link (saved with the server)
    app.open_invite(format_invite(Invite(server.host, server.port, server.pin, "A")))
    qtbot.waitUntil(lambda: app.controller.state == "ready", timeout=15_000)
    app.controller.disconnect_server()
    qtbot.waitUntil(lambda: app.controller.state == "closed", timeout=10_000)
    shown: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda _p, _t, text: shown.append(text))
    impostor = "sha256/" + "A" * 43 + "="
    app.open_invite(format_invite(Invite(server.host, server.port, impostor, "A")))
    assert shown and "different key than the one you already trust" in shown[0]
    assert app.controller.state == "closed"
    assert all(b.pin != impostor for b in app.controller.prefs.bookmarks)
    # the same for a key approved at first contact (the pin file), without any saved server
    pins = app.controller.pin_file
    store = pins.load()
    store.approve("other.example:4000", server.pin, 1_700_000_000_000)
    pins.save(store)
    app.open_invite(format_invite(Invite("other.example", 4000, impostor)))
    assert len(shown) == 2 and "different key" in shown[1]
    assert app.controller.bookmark is None or app.controller.bookmark.host != "other.example"


def test_an_invite_to_the_server_we_are_on_only_joins_its_channel(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("here")
    from .conftest import connect

    connect(qtbot, app, server)
    conn = app.controller.conn
    app.open_invite(format_invite(Invite(server.host, server.port, server.pin, "A")))
    qtbot.waitUntil(
        lambda: (row := app.controller.model.row(A)) is not None and row.joined, timeout=10_000
    )
    assert app.controller.conn is conn  # the same connection: nothing was torn down


def test_a_newcomers_first_invite_waits_for_the_setup_and_uses_its_nickname(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("john.smith", first_run=True)  # what the OS would call them
    app.args.name = None  # started by a clicked link: no --name
    app.open_invite(format_invite(Invite(server.host, server.port, server.pin, "A")))
    wizard = app.setup_wizard
    assert wizard is not None and app.controller.conn is None  # not connected before it
    wizard.name_page.name_edit.setText("Zed")
    wizard.next()
    wizard.next()
    wizard.talk_page.voice.setChecked(True)
    wizard.accept()
    qtbot.waitUntil(
        lambda: (row := app.controller.model.row(A)) is not None and row.joined, timeout=15_000
    )
    assert app.controller.model.my_name == "Zed"
