"""Settings take effect without a restart and persist: changed in the real dialog opened from the
app, applied to the running pipeline, router and theme, and read back by a new app."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QApplication, QPushButton

from voipclient.ui import theme
from voipclient.ui.prefs import load_preferences

from ..conftest import A, Starter
from .conftest import AppFactory, connect, join_by_double_click

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def test_frame_size_bitrate_and_theme_apply_at_once_and_persist(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("alice")
    connect(qtbot, app, server)
    before = app.controller.pipeline
    assert before is not None and before.frame_ms == 20
    app.show_settings()
    dialog = app.settings_dialog
    dialog.frame_size.setCurrentIndex(dialog.frame_size.findData(10))
    dialog.bitrate_spin.setValue(48)
    dialog.theme.setCurrentIndex(dialog.theme.findData("light"))
    qtbot.mouseClick(dialog.findChild(QPushButton, "applyButton"), Qt.MouseButton.LeftButton)
    pipeline = app.controller.pipeline
    assert pipeline is not None and pipeline is not before  # rebuilt, no restart
    assert pipeline.frame_ms == 10 and pipeline.engine.frame_samples == 480
    qtbot.waitUntil(lambda: pipeline.capture.frames > 20, timeout=5_000)  # the new one runs
    assert not theme.is_dark(QApplication.instance())  # type: ignore[arg-type]
    # bitrate and others: in place, between two frames
    app.show_settings()
    app.settings_dialog.bitrate_spin.setValue(64)
    qtbot.mouseClick(
        app.settings_dialog.findChild(QPushButton, "okButton"), Qt.MouseButton.LeftButton
    )
    assert app.controller.pipeline is pipeline
    encoder = pipeline.capture.sender._encoder  # the real OpusEncoder
    qtbot.waitUntil(lambda: encoder._enc.bitrate == 64_000, timeout=5_000)
    prefs, problems = load_preferences(app.backend)
    assert problems == []
    assert (prefs.audio.frame_ms, prefs.audio.bitrate, prefs.theme) == (10, 64_000, "light")
    theme.apply_theme(QApplication.instance(), "dark")  # type: ignore[arg-type]


def test_binding_added_in_the_hotkeys_page_drives_the_router(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("alice")
    connect(qtbot, app, server)
    join_by_double_click(qtbot, app, A)
    app.show_settings()
    dialog = app.settings_dialog
    add = dialog.findChild(QPushButton, "addBinding")
    assert add is not None and add.isEnabled()
    qtbot.mouseClick(add, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.editor is not None and dialog.editor.isVisible())
    editor = dialog.editor
    # the capture widget itself is driven by real X events in tests/ui/test_hotkey_capture.py;
    # here its key events are delivered straight to it (no window manager to activate the editor)
    editor.capture.start_capture()
    assert editor.capture.is_capturing()
    for kind, key in (
        (QEvent.Type.KeyPress, Qt.Key.Key_Control),
        (QEvent.Type.KeyPress, Qt.Key.Key_F15),
        (QEvent.Type.KeyRelease, Qt.Key.Key_F15),
        (QEvent.Type.KeyRelease, Qt.Key.Key_Control),
    ):
        QApplication.sendEvent(
            editor.capture, QKeyEvent(kind, key, Qt.KeyboardModifier.NoModifier, "")
        )
    assert editor.capture.keys() == "ctrl+f15"
    for i in range(editor.channel_list.count()):
        item = editor.channel_list.item(i)
        if item.data(Qt.ItemDataRole.UserRole) == "A":
            item.setCheckState(Qt.CheckState.Checked)
    editor.buttons.button(editor.buttons.StandardButton.Ok).click()
    qtbot.mouseClick(dialog.findChild(QPushButton, "okButton"), Qt.MouseButton.LeftButton)
    bindings = app.controller.router.bindings
    assert [(sorted(b.chord), sorted(b.channels)) for b in bindings] == [(["ctrl", "f15"], [A])]
    assert app.controller.model.row(A).ptt_keys == ("ctrl+f15",)  # type: ignore[union-attr]
