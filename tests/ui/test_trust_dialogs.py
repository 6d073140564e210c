"""The trust dialogs on a real display: pin approval, server password, key passphrase."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFontInfo, QGuiApplication
from PySide6.QtWidgets import QApplication, QDialog, QLabel, QLineEdit, QPushButton, QWidget

from voipclient.storage.accounts import PassphraseRequest
from voipclient.ui.trust_dialogs import (
    MIN_PASSPHRASE_LEN,
    PassphraseDialog,
    PinApprovalDialog,
    ServerPasswordDialog,
    ask_passphrase,
    ask_server_password,
)

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

PIN = "sha256/kiQOXEzRM1qxmQW0hU09+VMZYcRZLmLyahBuqFO763w="
OTHER_PIN = "sha256/AAAAXEzRM1qxmQW0hU09+VMZYcRZLmLyahBuqFO763w="
Accepted = QDialog.DialogCode.Accepted
Rejected = QDialog.DialogCode.Rejected


def child(widget: QWidget, kind: type[Any], name: str) -> Any:
    found = widget.findChild(kind, name)
    assert found is not None, f"no {kind.__name__} named {name!r}"
    return found


def shown_pin_dialog(qtbot: Any, **kwargs: Any) -> PinApprovalDialog:
    dialog = PinApprovalDialog("voice.example.org", 64738, PIN, **kwargs)
    qtbot.addWidget(dialog)
    dialog.open()
    qtbot.waitExposed(dialog)
    return dialog


def when_modal(qtbot: Any, act: Callable[[QDialog], None]) -> None:
    """Run ``act`` on the modal dialog once ``exec()`` has shown it. If ``act`` fails, the
    dialog is closed so that ``exec()`` returns (pytest-qt then reports the exception)."""

    def run() -> None:
        qtbot.waitUntil(lambda: isinstance(QApplication.activeModalWidget(), QDialog))
        widget = QApplication.activeModalWidget()
        assert isinstance(widget, QDialog)
        try:
            act(widget)
        finally:
            if widget.isVisible():
                widget.reject()

    QTimer.singleShot(0, run)


# -- pin approval -----------------------------------------------------------------------------


def test_pin_is_shown_monospace_selectable_and_copyable(qtbot: Any) -> None:
    dialog = shown_pin_dialog(qtbot)
    field = child(dialog, QLineEdit, "pinField")
    assert field.text() == PIN
    assert field.isReadOnly()
    assert QFontInfo(field.font()).fixedPitch()
    field.selectAll()
    assert field.selectedText() == PIN
    intro = child(dialog, QLabel, "pinIntro").text()
    assert "voice.example.org:64738" in intro
    assert "first connection" in intro
    assert "remembered" in child(dialog, QLabel, "pinRemember").text()
    assert not child(dialog, QLabel, "advertisementLabel").isVisible()

    QGuiApplication.clipboard().clear()
    qtbot.mouseClick(child(dialog, QPushButton, "copyPinButton"), Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == PIN
    assert dialog.isVisible()  # copying does not answer the question


def test_cancel_is_the_default_and_enter_does_not_trust(qtbot: Any) -> None:
    dialog = shown_pin_dialog(qtbot)
    cancel = child(dialog, QPushButton, "cancelButton")
    trust = child(dialog, QPushButton, "trustButton")
    assert cancel.isDefault()
    assert not trust.isDefault()
    assert not trust.autoDefault()
    qtbot.keyClick(child(dialog, QLineEdit, "pinField"), Qt.Key.Key_Return)
    assert dialog.result() == Rejected
    assert not dialog.isVisible()


def test_enter_on_the_focused_trust_button_still_does_not_trust(qtbot: Any) -> None:
    dialog = shown_pin_dialog(qtbot)
    trust = child(dialog, QPushButton, "trustButton")
    trust.setFocus()
    qtbot.waitUntil(trust.hasFocus)
    qtbot.keyClick(trust, Qt.Key.Key_Return)
    assert dialog.result() == Rejected


def test_trust_button_accepts(qtbot: Any) -> None:
    dialog = shown_pin_dialog(qtbot)
    with qtbot.waitSignal(dialog.accepted, timeout=2000):
        qtbot.mouseClick(child(dialog, QPushButton, "trustButton"), Qt.MouseButton.LeftButton)
    assert dialog.result() == Accepted


def test_escape_rejects(qtbot: Any) -> None:
    dialog = shown_pin_dialog(qtbot)
    with qtbot.waitSignal(dialog.rejected, timeout=2000):
        qtbot.keyClick(dialog, Qt.Key.Key_Escape)


def test_matching_announcement_is_said(qtbot: Any) -> None:
    dialog = shown_pin_dialog(qtbot, advertised_pin=PIN)
    label = child(dialog, QLabel, "advertisementLabel")
    assert label.isVisible()
    assert "matches" in label.text()


def test_different_announcement_is_a_warning(qtbot: Any) -> None:
    dialog = shown_pin_dialog(qtbot, advertised_pin=OTHER_PIN)
    label = child(dialog, QLabel, "advertisementLabel")
    assert label.isVisible()
    assert "differs" in label.text()
    assert OTHER_PIN in label.text()
    assert "matches" not in label.text()


def test_pin_dialog_exec_modal(qtbot: Any) -> None:
    dialog = PinApprovalDialog("10.0.0.5", 5000, PIN)
    qtbot.addWidget(dialog)
    when_modal(qtbot, lambda d: child(d, QPushButton, "trustButton").click())
    assert dialog.exec() == Accepted


# -- server password --------------------------------------------------------------------------


def test_server_password_returns_the_typed_text(qtbot: Any) -> None:
    parent = QWidget()
    qtbot.addWidget(parent)

    def answer(dialog: QDialog) -> None:
        edit = child(dialog, QLineEdit, "passwordEdit")
        assert edit.echoMode() == QLineEdit.EchoMode.Password
        assert not child(dialog, QLabel, "passwordError").isVisible()
        ok = child(dialog, QPushButton, "okButton")
        assert not ok.isEnabled()  # nothing typed yet
        qtbot.keyClicks(edit, "s3cret pw")
        assert ok.isEnabled()
        qtbot.keyClick(edit, Qt.Key.Key_Return)

    when_modal(qtbot, answer)
    assert ask_server_password(parent, "Friday night", None) == "s3cret pw"


def test_server_password_shows_the_error_and_cancel_gives_none(qtbot: Any) -> None:
    def check(dialog: QDialog) -> None:
        error = child(dialog, QLabel, "passwordError")
        assert error.isVisible()
        assert error.text() == "wrong server password"
        assert "Friday night" in child(dialog, QLabel, "passwordIntro").text()
        qtbot.keyClicks(child(dialog, QLineEdit, "passwordEdit"), "typed")
        qtbot.keyClick(dialog, Qt.Key.Key_Escape)

    when_modal(qtbot, check)
    assert ask_server_password(None, "Friday night", "wrong server password") is None


def test_server_password_field_is_cleared_after_close(qtbot: Any) -> None:
    dialog = ServerPasswordDialog("srv", None)
    qtbot.addWidget(dialog)
    dialog.open()
    qtbot.keyClicks(dialog.password_edit, "abc")
    dialog.accept()
    assert dialog.answer() == "abc"
    assert dialog.password_edit.text() == ""


# -- passphrase -------------------------------------------------------------------------------


def request(creating: bool, attempt: int = 1, error: str | None = None) -> PassphraseRequest:
    return PassphraseRequest(
        server="voice.example.org:64738",
        account="ann",
        path=Path("/home/ann/.local/share/voipclient/keys/ann.key"),
        creating=creating,
        attempt=attempt,
        error=error,
    )


def test_creating_asks_twice_and_shows_a_mismatch_inline(qtbot: Any) -> None:
    dialog = PassphraseDialog(request(creating=True))
    qtbot.addWidget(dialog)
    dialog.open()
    qtbot.waitExposed(dialog)
    intro = child(dialog, QLabel, "passphraseIntro").text()
    assert "no OS keyring" in intro
    assert "ann.key" in intro
    first = child(dialog, QLineEdit, "passphraseEdit")
    second = child(dialog, QLineEdit, "confirmEdit")
    assert second.isVisible()
    assert first.echoMode() == second.echoMode() == QLineEdit.EchoMode.Password
    error = child(dialog, QLabel, "passphraseError")
    assert not error.isVisible()

    qtbot.keyClicks(first, "correct horse")
    qtbot.keyClick(first, Qt.Key.Key_Return)  # Enter moves on to the second field
    assert dialog.isVisible()
    assert not error.isVisible()
    qtbot.keyClicks(second, "correct hose")
    qtbot.keyClick(second, Qt.Key.Key_Return)
    assert dialog.isVisible()
    assert error.isVisible()
    assert "differ" in error.text()
    assert second.text() == ""

    qtbot.keyClicks(second, "correct horse")
    with qtbot.waitSignal(dialog.accepted, timeout=2000):
        qtbot.keyClick(second, Qt.Key.Key_Return)
    assert dialog.answer() == "correct horse"
    assert first.text() == second.text() == ""  # not left in the widgets


def test_creating_refuses_a_short_passphrase(qtbot: Any) -> None:
    dialog = PassphraseDialog(request(creating=True))
    qtbot.addWidget(dialog)
    dialog.open()
    short = "x" * (MIN_PASSPHRASE_LEN - 1)
    qtbot.keyClicks(child(dialog, QLineEdit, "passphraseEdit"), short)
    qtbot.keyClicks(child(dialog, QLineEdit, "confirmEdit"), short)
    qtbot.mouseClick(child(dialog, QPushButton, "okButton"), Qt.MouseButton.LeftButton)
    error = child(dialog, QLabel, "passphraseError")
    assert dialog.isVisible()
    assert error.isVisible()
    assert f"at least {MIN_PASSPHRASE_LEN}" in error.text()
    assert dialog.answer() is None


def test_opening_shows_attempt_and_error_and_asks_once(qtbot: Any) -> None:
    def answer(dialog: QDialog) -> None:
        assert not child(dialog, QLineEdit, "confirmEdit").isVisible()
        error = child(dialog, QLabel, "passphraseError")
        assert error.isVisible()
        assert "wrong passphrase" in error.text()
        assert "attempt 2" in error.text()
        edit = child(dialog, QLineEdit, "passphraseEdit")
        qtbot.keyClicks(edit, "short")  # no minimum when opening an existing file
        qtbot.keyClick(edit, Qt.Key.Key_Return)

    when_modal(qtbot, answer)
    got = ask_passphrase(None, request(creating=False, attempt=2, error="wrong passphrase"))
    assert got == "short"


def test_passphrase_cancel_gives_none(qtbot: Any) -> None:
    def cancel(dialog: QDialog) -> None:
        assert "Unlock" in dialog.windowTitle()
        assert not child(dialog, QLabel, "passphraseError").isVisible()
        qtbot.keyClicks(child(dialog, QLineEdit, "passphraseEdit"), "something")
        child(dialog, QPushButton, "cancelButton").click()

    when_modal(qtbot, cancel)
    assert ask_passphrase(None, request(creating=False)) is None
