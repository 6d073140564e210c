"""What the app shows about keys and names, through the real window: an unreadable pin store is
kept aside and explained, the key log is honoured only when asked and stays visible while on,
names are never rendered as markup, and the channel privacy code is in the channel panel."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QMessageBox

from voipclient.ui.main_window import SafetyNumberDialog

from ..conftest import A, Starter
from .conftest import AppFactory, pair_in

pytestmark = pytest.mark.timeout(60)


def _close_message_boxes() -> list[str]:
    texts = []
    for widget in QApplication.topLevelWidgets():
        if isinstance(widget, QMessageBox) and widget.isVisible():
            texts.append(widget.text())
            widget.close()
    return texts


def test_an_unreadable_pin_store_is_kept_aside_and_explained(
    qtbot: Any, make_app: AppFactory, tmp_path: Path
) -> None:
    data = tmp_path / "alice" / "data"
    data.mkdir(parents=True)
    broken = b'{"format": "voipclient-tofu", "version": 1, "entries": [{"account": 7'
    (data / "peer-keys.json").write_bytes(broken)
    alice = make_app("alice")
    aside = list(data.glob("peer-keys.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == broken  # never overwritten, never lost
    assert not (data / "peer-keys.json").exists()
    assert "could not be read" in alice.controller.tofu_problem
    assert "could not be read" in alice.window.notice_label.text()
    boxes = []
    qtbot.waitUntil(lambda: bool(boxes.extend(_close_message_boxes()) or boxes), timeout=5_000)
    assert any(str(aside[0]) in text for text in boxes)


def test_the_key_log_is_written_only_when_asked_and_stays_visible(
    qtbot: Any,
    make_app: AppFactory,
    start_server: Starter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_server()
    keys = tmp_path / "alice.keys"
    monkeypatch.setenv("VOIPCLIENT_KEYLOGFILE", str(keys))
    alice = make_app("alice")
    assert "KEY LOG ON" in alice.window.warning_label.text()
    monkeypatch.delenv("VOIPCLIENT_KEYLOGFILE")
    bob = make_app("bob")
    assert "KEY LOG" not in bob.window.warning_label.text()
    from .conftest import connect

    for app in (alice, bob):
        connect(qtbot, app, server)
    for app in (alice, bob):
        app.controller.join(A)
    qtbot.waitUntil(lambda: keys.exists() and "VC1_MEDIA 2 " in keys.read_text(), timeout=10_000)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert keys.read_text().startswith("VC1_HOP ")
    assert not list(tmp_path.glob("bob/**/*.keys"))


def test_names_are_never_rendered_as_markup(qtbot: Any) -> None:
    name = '<font size=7 color="red">bob</font>'
    dialog = SafetyNumberDialog(name, "12345 " * 11 + "12345")
    qtbot.addWidget(dialog)
    labels = [dialog.number, *dialog.findChildren(type(dialog.number))]
    assert all(label.textFormat() == Qt.TextFormat.PlainText for label in labels)
    assert any(name in label.text() for label in labels)  # shown literally
    assert name in dialog.windowTitle()


def test_the_channel_panel_shows_the_privacy_code_both_members_share(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    alice, bob = pair_in(qtbot, make_app, start_server(), channel_id=A)
    codes = []
    for app in (alice, bob):
        app.window.tree.setCurrentItem(app.window.tree.item_for(A))
        qtbot.waitUntil(
            lambda a=app: any(c.isdigit() for c in a.window.controls.privacy_code.text()),
            timeout=5_000,
        )
        codes.append(app.window.controls.privacy_code.text())
    assert codes[0] == codes[1] == alice.controller.model.row(A).privacy_code  # type: ignore[union-attr]
