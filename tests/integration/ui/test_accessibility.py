"""Every control a user can reach explains itself (tooltip or accessible name) and can be reached
with the keyboard: the main window, the settings dialog and the connect dialog."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
    QScrollBar,
    QTextEdit,
    QWidget,
)

from voipclient.ui.connect_dialog import ConnectDialog

from .conftest import AppFactory

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

CONTROLS = (
    QAbstractButton,
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
    QTextEdit,
)


def unexplained(root: QWidget) -> list[str]:
    """Controls with neither a tooltip nor an accessible name (nor a text of their own)."""
    missing = []
    for control in root.findChildren(QWidget):
        if not isinstance(control, CONTROLS) or control.objectName().startswith("qt_"):
            continue
        if isinstance(control, QScrollBar):
            continue  # part of a scroll area, not a control of its own
        if type(control).__name__ in {"QToolButton"} and not control.isVisible():
            continue  # Qt's internal scroller/extension buttons
        if control.toolTip() or control.accessibleName():
            continue
        missing.append(f"{type(control).__name__} {control.objectName() or '(no name)'}")
    return missing


def test_every_control_is_explained(qtbot: Any, make_app: AppFactory) -> None:
    app = make_app("alice")
    assert unexplained(app.window) == [], unexplained(app.window)
    app.show_settings()
    assert unexplained(app.settings_dialog) == [], unexplained(app.settings_dialog)
    app.settings_dialog.reject()
    dialog = ConnectDialog(app.controller.prefs, discovery=False, parent=app.window)
    qtbot.addWidget(dialog)
    assert unexplained(dialog) == []


def test_main_window_controls_take_keyboard_focus(qtbot: Any, make_app: AppFactory) -> None:
    app = make_app("alice")
    w = app.window
    for widget in (w.tree, w.controls.join_button, w.controls.volume, w.controls.ptt):
        assert widget.focusPolicy() & Qt.FocusPolicy.TabFocus, widget.objectName()
    shortcuts = {a.shortcut().toString() for a in w.findChildren(type(w.mute_action))}
    assert {"Ctrl+O", "Ctrl+M", "Ctrl+D", "Ctrl+,", "Ctrl+Q"} <= shortcuts
