"""The questions of trust the client asks: a server's key on first contact, the server password,
and the passphrase of an identity key kept in a file (when there is no OS keyring).

- :class:`PinApprovalDialog` answers ``ServerConnection.pin_approval_needed(host, port, pin)``:
  ``exec()`` → ``Accepted`` means "trust this key" (the app calls ``approve_pin(True)``).
  *Cancel* is the default button: Enter never trusts a key without a deliberate choice.
- :func:`ask_server_password` asks for the server password (after a wrong one, says so).
- :func:`ask_passphrase` is a :data:`voipclient.storage.accounts.AskPassphrase`: it asks twice when
  a key file is created, once (showing the attempt and the previous error) when one is opened.

Every function here runs on the GUI thread and blocks in a nested event loop (``exec()``).
Secrets typed here are returned to the caller and never logged; the fields are cleared when the
dialog closes.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from voipclient.storage.accounts import PassphraseRequest

__all__ = [
    "MIN_PASSPHRASE_LEN",
    "PassphraseDialog",
    "PinApprovalDialog",
    "ServerPasswordDialog",
    "ask_passphrase",
    "ask_server_password",
]

#: Shortest passphrase accepted for a new key file, characters. The file is protected by a slow
#: KDF, but a short passphrase still falls to a dictionary.
MIN_PASSPHRASE_LEN = 8

_ERROR_STYLE = "color: #d9534f;"
_OK_STYLE = "color: #3c9a5f;"


def _wrapped(text: str, name: str, *, rich: bool = False) -> QLabel:
    label = QLabel(text)
    label.setObjectName(name)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
    return label


def _error_label(name: str) -> QLabel:
    label = _wrapped("", name)
    label.setStyleSheet(_ERROR_STYLE)
    label.setAccessibleName("Error")
    label.hide()
    return label


def _show_error(label: QLabel, text: str | None) -> None:
    label.setText(text or "")
    label.setVisible(bool(text))


class PinApprovalDialog(QDialog):
    """First contact with a server: show its key fingerprint (pin) and ask whether to trust it.

    ``advertised_pin``: the pin the server announced on the LAN, if it was found there; the
    dialog says whether it matches (a match is reassuring, not proof: anyone on the LAN can
    announce) or warns that it differs.
    """

    def __init__(
        self,
        host: str,
        port: int,
        pin: str,
        *,
        advertised_pin: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("pinApprovalDialog")
        self.setWindowTitle("Check the server's key")
        self.setMinimumWidth(520)
        self.pin = pin
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

        intro = _wrapped(
            f"This is your first connection to <b>{html.escape(where)}</b>. Before you trust "
            "it, make sure you reach the real server and not someone in between: compare the "
            "server's key fingerprint below with the one its operator published (the server "
            "prints it when it starts, after <tt>pin=</tt>). Ask the operator through a channel "
            "you already trust, such as your group's chat.",
            "pinIntro",
            rich=True,
        )

        self.pin_field = QLineEdit(pin)
        self.pin_field.setObjectName("pinField")
        self.pin_field.setReadOnly(True)
        self.pin_field.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.pin_field.setAccessibleName("Server key fingerprint")
        self.pin_field.setToolTip("The SHA-256 fingerprint of the server's public key")
        self.pin_field.setCursorPosition(0)
        metrics = self.pin_field.fontMetrics()
        self.pin_field.setMinimumWidth(metrics.horizontalAdvance(pin) + 16)

        self.copy_button = QPushButton("&Copy")
        self.copy_button.setObjectName("copyPinButton")
        self.copy_button.setAutoDefault(False)
        self.copy_button.setToolTip("Copy the fingerprint to the clipboard")
        self.copy_button.setAccessibleName("Copy the fingerprint")
        self.copy_button.clicked.connect(self.copy_pin)

        pin_row = QHBoxLayout()
        pin_row.addWidget(self.pin_field, 1)
        pin_row.addWidget(self.copy_button)

        self.advertisement_label = _wrapped("", "advertisementLabel")
        if advertised_pin is None:
            self.advertisement_label.hide()
        elif advertised_pin == pin:
            self.advertisement_label.setText(
                "✔ This key matches the one the server announced on the local network. "
                "(Anyone on the network can announce a server, so the operator's word still "
                "counts most.)"
            )
            self.advertisement_label.setStyleSheet(_OK_STYLE)
        else:
            self.advertisement_label.setText(
                "⚠ This key differs from the one announced on the local network "
                f"({advertised_pin}). Someone may be pretending to be this server. Do not trust "
                "it unless the operator confirms this exact key."
            )
            self.advertisement_label.setStyleSheet(_ERROR_STYLE)
        self.advertisement_label.setAccessibleName("Local network announcement")

        remember = _wrapped(
            f"Once you trust it, this key is remembered for {where}. If the server ever "
            "presents a different key, voipclient refuses to connect and tells you.",
            "pinRemember",
        )

        self.trust_button = QPushButton("&Trust and connect")
        self.trust_button.setObjectName("trustButton")
        # Only a deliberate click (or Space/Alt+T on it) trusts: never Enter from elsewhere.
        self.trust_button.setAutoDefault(False)
        self.trust_button.setToolTip("Remember this key for this server and connect")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.setToolTip("Do not connect")
        self.cancel_button.setDefault(True)
        buttons = QDialogButtonBox()
        buttons.addButton(self.trust_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(self.cancel_button, QDialogButtonBox.ButtonRole.RejectRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        fingerprint = QLabel("Key &fingerprint:")
        fingerprint.setBuddy(self.pin_field)
        layout.addWidget(fingerprint)
        layout.addLayout(pin_row)
        layout.addWidget(self.advertisement_label)
        layout.addWidget(remember)
        layout.addWidget(buttons)

        self.setTabOrder(self.pin_field, self.copy_button)
        self.setTabOrder(self.copy_button, self.trust_button)
        self.setTabOrder(self.trust_button, self.cancel_button)
        self.cancel_button.setFocus()

    @Slot()
    def copy_pin(self) -> None:
        """Put the pin on the clipboard."""
        QGuiApplication.clipboard().setText(self.pin)
        self.copy_button.setText("Copied")


class ServerPasswordDialog(QDialog):
    """Asks for a server's password; ``error`` (e.g. "wrong password") is shown above."""

    def __init__(
        self, server_label: str, error: str | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self._answer: str | None = None
        self.setObjectName("serverPasswordDialog")
        self.setWindowTitle("Server password")
        self.setMinimumWidth(400)
        intro = _wrapped(f"The server {server_label} asks for a password.", "passwordIntro")
        self.error_label = _error_label("passwordError")
        _show_error(self.error_label, error)
        self.password_edit = QLineEdit()
        self.password_edit.setObjectName("passwordEdit")
        self.password_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.password_edit.setAccessibleName("Server password")
        self.password_edit.setToolTip("The password the server's operator gave you")
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setObjectName("okButton")
        self.ok_button.setText("&Connect")
        self.ok_button.setDefault(True)
        self.ok_button.setEnabled(False)
        cancel = buttons.button(QDialogButtonBox.StandardButton.Cancel)
        cancel.setObjectName("cancelButton")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.password_edit.textChanged.connect(lambda text: self.ok_button.setEnabled(bool(text)))

        form = QFormLayout()
        form.addRow("&Password:", self.password_edit)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.error_label)
        layout.addLayout(form)
        layout.addWidget(buttons)
        self.password_edit.setFocus()

    def password(self) -> str:
        return self.password_edit.text()

    def done(self, result: int) -> None:
        self._answer = self.password() if result == QDialog.DialogCode.Accepted else None
        self.password_edit.clear()
        super().done(result)

    def answer(self) -> str | None:
        """The password after an accepted dialog, else None."""
        return self._answer


def ask_server_password(parent: QWidget | None, server_label: str, error: str | None) -> str | None:
    """Ask for the server password; None when the user cancels."""
    dialog = ServerPasswordDialog(server_label, error, parent)
    try:
        dialog.exec()
        return dialog.answer()
    finally:
        dialog.deleteLater()


class PassphraseDialog(QDialog):
    """The passphrase of an identity key file.

    ``request.creating``: explains that there is no OS keyring, asks twice, at least
    :data:`MIN_PASSPHRASE_LEN` characters; a mismatch or a short passphrase is shown inline and
    the dialog stays open. Else: one field, with the attempt number and the previous error.
    """

    def __init__(self, request: PassphraseRequest, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.request = request
        self._answer: str | None = None
        self.setObjectName("passphraseDialog")
        self.setMinimumWidth(460)
        who = f"“{request.account}” on {request.server}"
        if request.creating:
            self.setWindowTitle("Protect your identity key")
            text = (
                "This computer has no OS keyring (such as GNOME Keyring, KWallet, the macOS "
                "Keychain or the Windows Credential Manager) that voipclient can use, so your "
                f"identity key for {who} will be kept in an encrypted file:\n{request.path}\n\n"
                "Choose a passphrase to protect it. You will need it whenever you connect with "
                "this account. It cannot be recovered if you forget it."
            )
        else:
            self.setWindowTitle("Unlock your identity key")
            text = (
                f"Enter the passphrase of your identity key for {who}. The key is kept in the "
                f"encrypted file:\n{request.path}"
            )
        intro = _wrapped(text, "passphraseIntro")
        self.error_label = _error_label("passphraseError")
        if request.error or request.attempt > 1:
            shown = request.error or "Wrong passphrase."
            _show_error(self.error_label, f"{shown} (attempt {request.attempt})")

        self.passphrase_edit = self._secret_field("passphraseEdit", "Passphrase")
        self.confirm_edit = self._secret_field("confirmEdit", "Passphrase again")
        form = QFormLayout()
        form.addRow("&Passphrase:", self.passphrase_edit)
        if request.creating:
            form.addRow("&Again:", self.confirm_edit)
            self.passphrase_edit.setToolTip(f"At least {MIN_PASSPHRASE_LEN} characters")
            self.confirm_edit.setToolTip("Type the same passphrase again")
        else:
            self.confirm_edit.hide()

        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setObjectName("okButton")
        self.ok_button.setText("&Create key" if request.creating else "&Unlock")
        self.ok_button.setDefault(True)
        cancel = buttons.button(QDialogButtonBox.StandardButton.Cancel)
        cancel.setObjectName("cancelButton")
        cancel.setToolTip(
            "Do not store the key (nothing is written)" if request.creating else "Do not log in"
        )
        # Validate before closing (QDialogButtonBox would accept at once).
        buttons.accepted.connect(self.try_accept)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)
        self.passphrase_edit.setFocus()

    def _secret_field(self, name: str, accessible: str) -> QLineEdit:
        edit = QLineEdit(self)
        edit.setObjectName(name)
        edit.setEchoMode(QLineEdit.EchoMode.Password)
        edit.setAccessibleName(accessible)
        return edit

    def problem(self) -> str | None:
        """Why the typed passphrase cannot be used yet, or None."""
        first = self.passphrase_edit.text()
        if not first:
            return "Enter the passphrase."
        if not self.request.creating:
            return None
        if len(first) < MIN_PASSPHRASE_LEN:
            return f"Use at least {MIN_PASSPHRASE_LEN} characters."
        if first != self.confirm_edit.text():
            return "The two passphrases differ. Type the same passphrase twice."
        return None

    @Slot()
    def try_accept(self) -> None:
        """Accept when the input is usable, else say why (inline) and stay open."""
        problem = self.problem()
        first_done = len(self.passphrase_edit.text()) >= MIN_PASSPHRASE_LEN
        if self.request.creating and first_done and not self.confirm_edit.text():
            # Enter after the first field: on to the second, nothing is wrong yet.
            _show_error(self.error_label, None)
            self.confirm_edit.setFocus()
            return
        if problem is not None:
            _show_error(self.error_label, problem)
            if self.request.creating and self.passphrase_edit.text():
                self.confirm_edit.clear()
                self.confirm_edit.setFocus()
            else:
                self.passphrase_edit.setFocus()
            return
        self.accept()

    def done(self, result: int) -> None:
        if result == QDialog.DialogCode.Accepted:
            self._answer = self.passphrase_edit.text()
        self.passphrase_edit.clear()
        self.confirm_edit.clear()
        super().done(result)

    def answer(self) -> str | None:
        """The passphrase after an accepted dialog, else None."""
        return self._answer


def ask_passphrase(parent: QWidget | None, request: PassphraseRequest) -> str | None:
    """:data:`~voipclient.storage.accounts.AskPassphrase` with ``parent`` bound (use
    ``functools.partial(ask_passphrase, window)``): the passphrase, or None when cancelled."""
    dialog = PassphraseDialog(request, parent)
    try:
        dialog.exec()
        return dialog.answer()
    finally:
        dialog.deleteLater()
