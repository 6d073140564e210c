"""The window's smaller promises against a real relay: mute/deafen marks seen by others, the tray
mirroring them, the user context menu (local mute, safety number, verification), channel volume,
window geometry restored, keyboard navigation of the channel tree."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from voipclient.ui.app import App
from voipclient.ui.main_window import SafetyNumberDialog
from voipclient.ui.settings import QSettingsBackend
from voipclient.ui.tray import Tray

from ..conftest import A, Starter
from .conftest import (
    AppFactory,
    KeyWatch,
    connect,
    member_item,
    member_text,
    pair_in,
    talking,
)

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def test_mute_and_deafen_marks_reach_the_other_client_and_the_tray_mirrors_them(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    alice, bob = pair_in(qtbot, make_app, start_server())
    # Xvfb has no tray host: build the tray on the window anyway to check its menu logic
    tray = alice.tray or Tray(alice.window, QIcon())
    alice.window.mute_action.trigger()
    assert alice.controller.muted and tray.mute_action.isChecked()
    qtbot.waitUntil(lambda: "muted" in (member_text(bob, 1, "alice")), timeout=10_000)
    tray.deafen_action.trigger()
    assert alice.window.deafen_action.isChecked() and alice.controller.deafened
    qtbot.waitUntil(lambda: "deafened" in (member_text(bob, 1, "alice")), timeout=10_000)
    tray.deafen_action.trigger()  # undeafen restores the mute chosen before
    assert not alice.controller.deafened and alice.controller.muted
    alice.window.mute_action.trigger()
    qtbot.waitUntil(
        lambda: (
            (item := member_item(bob, 1, "alice")) is not None
            and "muted" not in item.text(0)
            and "deafened" not in item.text(0)
        ),
        timeout=10_000,
    )
    tray.toggle_window()
    assert not alice.window.isVisible()
    tray.toggle_window()
    assert alice.window.isVisible()


def test_user_menu_safety_number_and_verification(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    alice, bob = pair_in(qtbot, make_app, start_server())
    item = member_item(alice, 1, "bob")
    assert item is not None
    menu = alice.window.build_context_menu(item)
    assert menu is not None
    actions = {a.text(): a for a in menu.actions() if a.text()}
    assert {"Mute for me", "Safety number…", "Mark as verified"} <= set(actions)
    # the same safety number on both sides: what the two people read to each other
    bob_id = next(
        u.sender_id for u in alice.controller.model.roster.users.values() if u.name == "bob"
    )
    alice_id = next(
        u.sender_id for u in bob.controller.model.roster.users.values() if u.name == "alice"
    )
    number = alice.controller.safety_number(bob_id)
    assert number is not None and number == bob.controller.safety_number(alice_id)
    assert re.fullmatch(r"(\d{5} ){11}\d{5}", number.replace("\n", " ")), number
    dialog = alice.window.show_safety_number(bob_id)
    assert isinstance(dialog, SafetyNumberDialog)
    assert dialog.number.text() == number
    qtbot.mouseClick(dialog.verify_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "✔" in member_text(alice, 1, "bob"), timeout=10_000)
    assert alice.controller.model.trust_of(bob_id) == "verified"
    assert (alice.controller.data_dir / "peer-keys.json").exists()  # remembered across runs
    # local mute: for alice only, by name, and applied to her mixer
    actions["Mute for me"].trigger()
    assert "bob" in alice.controller.prefs.server(alice.controller.server_key or "").user_muted
    mixer = alice.controller.pipeline.mixer  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: mixer.is_locally_muted(bob_id), timeout=5_000)
    assert "(muted for you)" in member_text(alice, 1, "bob")


def test_channel_volume_and_keyboard_join(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    alice = make_app("alice")
    connect(qtbot, alice, server)
    tree = alice.window.tree
    tree.setFocus()
    tree.setCurrentItem(tree.item_for(A))
    qtbot.keyClick(tree, Qt.Key.Key_Return)  # Enter joins, like a double click
    qtbot.waitUntil(lambda: alice.controller.model.row(A).joined, timeout=10_000)  # type: ignore[union-attr]
    alice.window.controls.volume.setValue(150)
    alice.controller.model_changed.emit()  # a refresh (someone joined) before the commit
    key = alice.controller.server_key or ""
    qtbot.waitUntil(
        lambda: alice.controller.prefs.server(key).channel_volumes.get("A") == 1.5, timeout=5_000
    )
    mixer = alice.controller.pipeline.mixer  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: mixer.channel_volume(A) == pytest.approx(1.5), timeout=5_000)
    # every toolbar action explains itself
    for action in alice.window.findChild(
        type(alice.window.addToolBar("x")), "mainToolbar"
    ).actions():  # type: ignore[union-attr]
        assert action.toolTip(), action.text()


def test_window_geometry_is_restored(qtbot: Any, tmp_path: Path) -> None:
    def build() -> App:
        args = argparse.Namespace(
            local_server=False,
            connect=None,
            name="g",
            data_dir=tmp_path / "data",
            settings_dir=None,
        )
        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        return App(args, QApplication.instance(), backend=QSettingsBackend(settings))

    first = build()
    first.window.show()
    qtbot.waitExposed(first.window)
    first.window.resize(777, 555)
    qtbot.waitUntil(lambda: first.window.size().width() == 777)
    first.shutdown()
    first.window.close()
    second = build()
    try:
        second.window.show()
        qtbot.waitExposed(second.window)
        assert (second.window.width(), second.window.height()) == (777, 555)
    finally:
        second.shutdown()
        second.window.close()


def test_a_missing_audio_device_is_explained_and_the_rest_keeps_working(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    from dataclasses import replace

    server = start_server()
    alice, bob = make_app("alice"), make_app("bob")
    prefs = alice.controller.prefs
    alice.apply_prefs(
        replace(prefs, audio=replace(prefs.audio, input_device="No Such Microphone 9000"))
    )
    label = alice.window.warning_label
    # the audio host opens devices without the window waiting: the outcome arrives a moment later
    qtbot.waitUntil(lambda: "audio" in label.text(), timeout=10_000)
    assert "No Such Microphone 9000" in label.toolTip() and "Settings" in label.toolTip()
    # only the microphone is missing: the speakers keep working
    assert "the speakers work" in label.toolTip()
    engine = alice.controller.pipeline.engine  # type: ignore[union-attr]
    assert engine.output_device is not None and engine.input_device is None  # type: ignore[attr-defined]
    connect(qtbot, alice, server)
    alice_keys = KeyWatch(alice)
    connect(qtbot, bob, server)
    # sender keys: alice holds bob's for the Lobby, so his first frames open
    qtbot.waitUntil(lambda: alice_keys.holds(bob, 1), timeout=10_000)
    bob.controller.ptt.handle_command("press 1")  # bob talks into the Lobby
    try:
        qtbot.waitUntil(lambda: talking(alice, 1, "bob"), timeout=10_000)
    finally:
        bob.controller.ptt.handle_command("release 1")


def test_missing_speakers_keep_the_microphone(qtbot: Any, make_app: AppFactory) -> None:
    from dataclasses import replace

    alice = make_app("alice")
    prefs = alice.controller.prefs
    alice.apply_prefs(replace(prefs, audio=replace(prefs.audio, output_device="No Such Speakers")))
    label = alice.window.warning_label
    qtbot.waitUntil(lambda: "No Such Speakers" in label.toolTip(), timeout=10_000)
    tip = label.toolTip()
    assert "No Such Speakers" in tip and "the microphone works" in tip
    pipeline = alice.controller.pipeline
    assert pipeline is not None and pipeline.engine.input_device is not None  # type: ignore[attr-defined]
    frames = pipeline.playback.frames
    qtbot.waitUntil(lambda: pipeline.capture.frames > 10, timeout=5_000)  # the mic is read
    qtbot.waitUntil(lambda: pipeline.playback.frames > frames + 10, timeout=5_000)  # no stall


def test_repeated_errors_share_one_message_box(qtbot: Any, make_app: AppFactory) -> None:
    """An error that repeats (a flaky device, an alarm raised again and again) must not stack
    up windows nobody closes: one box, its text the newest error, counting the earlier ones."""
    from PySide6.QtWidgets import QMessageBox

    app = make_app("solo")
    for n in range(3):
        app.controller.message.emit("error", f"something went wrong #{n}")
    boxes = [w for w in app.window.findChildren(QMessageBox) if w.isVisible()]
    assert len(boxes) == 1
    assert "something went wrong #2" in boxes[0].text()
    assert "2 earlier errors" in boxes[0].text()
    boxes[0].accept()
    qtbot.waitUntil(lambda: not boxes[0].isVisible(), timeout=5_000)
    app.controller.message.emit("error", "a new one")
    fresh = [w for w in app.window.findChildren(QMessageBox) if w.isVisible()]
    assert len(fresh) == 1 and fresh[0].text() == "a new one"
