"""The first-run setup through the real app (Xvfb, the null sink, a real relay): after it, the
captured key transmits into the channel and a second instance hears it; voice activation makes
the channel the hot-mic one; skipping it is remembered."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWizard

from voipclient.ui.app import App
from voipclient.ui.prefs import load_preferences

from ..conftest import A, Starter
from .conftest import AppFactory, connect, pair_in, round_trip, talking

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=5)


def open_wizard(qtbot: Any, app: App) -> Any:
    app.show_setup()
    wizard = app.setup_wizard
    assert wizard is not None
    qtbot.waitExposed(wizard)
    return wizard


def test_setup_captures_a_key_that_then_talks_into_the_channel(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    alice, bob = pair_in(qtbot, make_app, server, A)
    wizard = open_wizard(qtbot, alice)
    # 1. the nickname, remembered
    wizard.name_page.name_edit.setText("alice")
    assert wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    wizard.next()
    # 2. the devices, with the live meter fed by the capture worker
    assert wizard.currentPage() is wizard.audio_page
    assert wizard.audio_page.input_device.currentData() is None  # the system default
    wizard.next()
    # 3. push-to-talk: capture F13 with the real widget
    page = wizard.talk_page
    assert page.ptt.isChecked() and not wizard.button(QWizard.WizardButton.FinishButton).isEnabled()
    qtbot.mouseClick(page.capture, Qt.MouseButton.LeftButton)
    assert page.capture.is_capturing()
    qtbot.keyPress(page.capture, Qt.Key.Key_F13)
    qtbot.keyRelease(page.capture, Qt.Key.Key_F13)
    assert page.capture.keys() == "f13"
    assert wizard.button(QWizard.WizardButton.FinishButton).isEnabled()
    qtbot.mouseClick(wizard.button(QWizard.WizardButton.FinishButton), Qt.MouseButton.LeftButton)
    ctl = alice.controller
    qtbot.waitUntil(lambda: ctl.model.row(A).ptt_keys == ("f13",), timeout=5_000)  # type: ignore[union-attr]
    assert ctl.prefs.setup_done and ctl.prefs.transmit.mode == "ptt"
    assert ctl.prefs.default_ptt == "f13"
    stored, _ = load_preferences(alice.backend)
    assert stored.setup_done and stored.username == "alice"
    # the key works, globally (a real X key event through pynput), and bob hears alice
    try:
        xdotool("keydown", "F13")
        qtbot.waitUntil(lambda: talking(bob, A, "alice"), timeout=10_000)
    finally:
        xdotool("keyup", "F13")
    qtbot.waitUntil(lambda: not talking(bob, A, "alice"), timeout=10_000)
    # the setup's key applies once per server: removed, it stays removed after a reconnect
    assert ctl.set_channel_binding(A, None)
    ctl.disconnect_server()
    qtbot.waitUntil(lambda: ctl.state == "closed", timeout=10_000)
    connect(qtbot, alice, server)
    qtbot.waitUntil(lambda: (row := ctl.model.row(A)) is not None and row.joined, timeout=10_000)
    round_trip(qtbot, alice)
    assert ctl.model.row(A).ptt_keys == ()  # type: ignore[union-attr]
    assert ctl.prefs.server(ctl.server_key or "").bindings == ()


def test_voice_activation_makes_the_channel_the_hot_mic_one(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    alice, _bob = pair_in(qtbot, make_app, start_server(), A)
    wizard = open_wizard(qtbot, alice)
    wizard.next()
    wizard.next()
    page = wizard.talk_page
    page.voice.setChecked(True)
    assert wizard.button(QWizard.WizardButton.FinishButton).isEnabled()
    wizard.accept()
    ctl = alice.controller
    qtbot.waitUntil(lambda: ctl.model.hot_mic_channel() == A, timeout=5_000)
    assert ctl.prefs.transmit.mode == "voice_activation" and ctl.prefs.default_hot_mic


def test_first_run_shows_the_setup_once_and_skip_is_remembered(
    qtbot: Any, make_app: AppFactory
) -> None:
    app = make_app("new", first_run=True)
    app.first_connect()
    wizard = app.setup_wizard
    assert wizard is not None and wizard.isVisible()
    assert wizard.button(QWizard.WizardButton.CancelButton).text() == "Skip"
    wizard.reject()
    assert app.controller.prefs.setup_done
    qtbot.waitUntil(lambda: app.connect_dialog is not None and app.connect_dialog.isVisible())
    app.connect_dialog.reject()
    assert load_preferences(app.backend)[0].setup_done  # not asked again at the next start


def test_quitting_during_the_setup_starts_nothing_and_asks_again(
    qtbot: Any, make_app: AppFactory
) -> None:
    """Quitting while the first-run setup is open is not a skip: the next start asks again.
    And nothing starts after the app has shut down (closing the wizard once restarted the
    audio host, a process that outlived the app: bundle-smoke could not remove its home)."""
    app = make_app("newcomer", first_run=True)
    app.first_connect()
    wizard = app.setup_wizard
    assert wizard is not None and wizard.isVisible()
    ctl = app.controller
    host = ctl.audio_host
    assert host is not None and host.pid
    app.shutdown()
    wizard.close()  # what QApplication.quit() does to every open window, right after
    assert not wizard.isVisible() and app.setup_wizard is None
    assert ctl.audio_host is None and ctl.pipeline is None  # nothing started again
    assert not ctl.prefs.setup_done
    assert not load_preferences(app.backend)[0].setup_done
