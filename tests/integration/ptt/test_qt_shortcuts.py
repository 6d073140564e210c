"""The in-window fallback on a real Qt window under Xvfb."""

from __future__ import annotations

from typing import Any

import pytest

from voipclient.ptt.qt_shortcuts import QtShortcutSource
from voipclient.ptt.router import Binding, PttRouter
from voipclient.ptt.service import PttService

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]


def test_keys_and_side_button_in_the_window(qtbot: Any) -> None:
    from PySide6.QtCore import QEvent, QPointF, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QLineEdit, QVBoxLayout, QWidget

    window = QWidget()
    layout = QVBoxLayout(window)
    edit = QLineEdit()
    layout.addWidget(edit)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)

    service = PttService(
        PttRouter([Binding.parse("squad", "f13", [2]), Binding.parse("side", "mouse4", [4])])
    )
    source = QtShortcutSource(window)
    ok, reason = source.available()
    assert ok and "in-window" in reason
    service.attach(source)
    try:
        handle = window.windowHandle()
        QTest.keyPress(handle, Qt.Key.Key_F13)
        assert service.wanted() == {2}
        QTest.keyPress(handle, Qt.Key.Key_F13)  # a second press of a held key
        assert service.state().held_inputs == {"f13"}
        pos = QPointF(5, 5)
        press = QMouseEvent(
            QEvent.Type.MouseButtonPress, pos, pos, pos, Qt.MouseButton.BackButton,
            Qt.MouseButton.BackButton, Qt.KeyboardModifier.NoModifier,
        )  # fmt: skip
        QTest.qWait(0)
        from PySide6.QtWidgets import QApplication

        QApplication.sendEvent(handle, press)
        assert service.wanted() == {2, 4}
        QTest.keyRelease(handle, Qt.Key.Key_F13)
        assert service.wanted() == {4}
        # Losing focus lets go of everything the window saw go down.
        hidden = QEvent(QEvent.Type.FocusOut)
        QApplication.sendEvent(handle, hidden)
        assert service.wanted() == frozenset()
    finally:
        service.close()
    QTest.keyPress(window.windowHandle(), Qt.Key.Key_F13)
    assert service.wanted() == frozenset()  # the filter is gone
