"""Server administration from the app: a channel's editor (create or change: name, description,
password, who may speak) and the reason-and-confirm dialog of a kick or a ban.

The dialogs only collect; :class:`voipclient.ui.controller.ClientController` sends the requests
(``ChannelAdmin``, ``AdminAction``) and the server checks every one (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from voipclient.net.messages import MAX_CHANNEL_NAME_LEN, MAX_DESCRIPTION_LEN, MAX_PASSWORD_LEN

__all__ = ["ChannelEdit", "ChannelEditDialog", "UserActionDialog"]

_ERROR_STYLE: Final = "color: #f23f43"
#: The password field's choices.
KEEP, SET, REMOVE = "keep", "set", "remove"


@dataclass(frozen=True, slots=True)
class ChannelEdit:
    """What the editor asks for. None fields: unchanged (on create: the default)."""

    name: str | None
    description: str | None
    #: None: unchanged; "": remove the password; else the new password.
    password: str | None
    #: None: unchanged; () with ``everyone_speaks`` False: nobody; names: only they may speak.
    speakers: tuple[str, ...] | None
    everyone_speaks: bool
    #: Editing: the new parent channel's id (moving the channel), or None: unchanged.
    parent: int | None = None


def _label(text: str, buddy: QWidget) -> QLabel:
    label = QLabel(text)
    label.setBuddy(buddy)
    return label


class ChannelEditDialog(QDialog):
    """Create a channel (``current`` None) under ``parent_name``, or change one."""

    def __init__(
        self,
        *,
        current: str | None = None,
        description: str = "",
        has_password: bool = False,
        parent_name: str | None = None,
        parents: Sequence[tuple[int, str]] = (),
        current_parent: int | None = None,
        parent: QWidget | None = None,
    ) -> None:
        """``parents``: (id, name) of the channels it may be moved into (editing only; the
        channel itself and those inside it left out), ``current_parent`` the one it is in."""
        super().__init__(parent)
        creating = current is None
        self.setObjectName("channelEditDialog")
        title = (
            f"New channel in {parent_name}"
            if creating and parent_name
            else "New channel"
            if creating
            else f"Edit {current}"
        )
        self.setWindowTitle(title)
        self.setAccessibleName(title)
        self._creating = creating
        self._current = current
        self._description = description
        self.name_edit = QLineEdit(current or "")
        self.name_edit.setObjectName("channelName")
        self.name_edit.setAccessibleName("Channel name")
        self.name_edit.setMaxLength(MAX_CHANNEL_NAME_LEN)
        self.description_edit = QLineEdit(description)
        self.description_edit.setObjectName("channelDescription")
        self.description_edit.setAccessibleName("Description")
        self.description_edit.setMaxLength(MAX_DESCRIPTION_LEN)
        self.description_edit.setToolTip("Shown when someone points at the channel (optional)")

        self.keep_password = QRadioButton(
            "&Keep the password" if has_password else "&No password (anyone may join)"
        )
        self.keep_password.setObjectName("keepPassword")
        self.set_password = QRadioButton("&Set a password:")
        self.set_password.setObjectName("setPassword")
        self.remove_password = QRadioButton("&Remove the password")
        self.remove_password.setObjectName("removePassword")
        self.remove_password.setVisible(has_password)
        group = QButtonGroup(self)
        for button in (self.keep_password, self.set_password, self.remove_password):
            group.addButton(button)
        self.keep_password.setChecked(True)
        self.password_edit = QLineEdit()
        self.password_edit.setObjectName("channelPassword")
        self.password_edit.setAccessibleName("Channel password")
        self.password_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.password_edit.setMaxLength(MAX_PASSWORD_LEN)

        self.everyone = QRadioButton("&Everyone in the channel may talk")
        self.everyone.setObjectName("everyoneSpeaks")
        self.listed = QRadioButton("&Only these people may talk:")
        self.listed.setObjectName("onlyListed")
        self.unchanged_speak = QRadioButton("Who may talk stays &as it is")
        self.unchanged_speak.setObjectName("speakUnchanged")
        self.unchanged_speak.setVisible(not creating)
        speak_group = QButtonGroup(self)
        for button in (self.unchanged_speak, self.everyone, self.listed):
            speak_group.addButton(button)
        (self.everyone if creating else self.unchanged_speak).setChecked(True)
        self.speakers_edit = QLineEdit()
        self.speakers_edit.setObjectName("channelSpeakers")
        self.speakers_edit.setAccessibleName("People who may talk")
        self.speakers_edit.setPlaceholderText("names, separated by commas (empty: nobody)")
        self.speakers_edit.setToolTip(
            "Everyone may still join and listen; only these user names may talk (a briefing "
            "channel where one person speaks)"
        )

        self.parent_combo = QComboBox()
        self.parent_combo.setObjectName("channelParent")
        self.parent_combo.setAccessibleName("Inside")
        self.parent_combo.setToolTip("The channel this one is shown in (moves it in the tree)")
        if current_parent is None:  # a top-level channel: stays there unless moved
            self.parent_combo.addItem("(top level, where it is now)", None)
        for ident, label in parents:
            self.parent_combo.addItem(label, ident)
        self.parent_combo.setCurrentIndex(max(0, self.parent_combo.findData(current_parent)))
        self._current_parent = current_parent
        self.parent_combo.setVisible(not creating and bool(parents))

        self.error = QLabel()
        self.error.setObjectName("channelEditError")
        self.error.setTextFormat(Qt.TextFormat.PlainText)
        self.error.setStyleSheet(_ERROR_STYLE)
        self.error.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setText("Create" if creating else "Save")
        self.ok.setObjectName("channelEditOk")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow(_label("&Name:", self.name_edit), self.name_edit)
        form.addRow(_label("&Description:", self.description_edit), self.description_edit)
        if not creating and parents:
            form.addRow(_label("&Inside:", self.parent_combo), self.parent_combo)
        form.addRow("Password:", self.keep_password)
        form.addRow("", self.set_password)
        form.addRow("", self.password_edit)
        form.addRow("", self.remove_password)
        form.addRow("Talking:", self.unchanged_speak)
        form.addRow("", self.everyone)
        form.addRow("", self.listed)
        form.addRow("", self.speakers_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)
        for signal in (
            self.name_edit.textChanged,
            self.password_edit.textChanged,
            self.set_password.toggled,
            self.listed.toggled,
        ):
            signal.connect(self._refresh)
        self._refresh()

    @Slot()
    def _refresh(self) -> None:
        self.password_edit.setEnabled(self.set_password.isChecked())
        self.speakers_edit.setEnabled(self.listed.isChecked())
        why = self.problem()
        self.error.setText(why or "")
        self.ok.setEnabled(why is None)

    def problem(self) -> str | None:
        name = self.name_edit.text().strip()
        if not name:
            return "A channel needs a name."
        if self.set_password.isChecked() and not self.password_edit.text():
            return "Type the new password, or keep the current one."
        return None

    def edit(self) -> ChannelEdit:
        name = self.name_edit.text().strip()
        description = self.description_edit.text().strip()
        password: str | None = None
        if self.set_password.isChecked():
            password = self.password_edit.text()
        elif self.remove_password.isChecked():
            password = ""
        speakers: tuple[str, ...] | None = None
        if self.listed.isChecked():
            speakers = tuple(n.strip() for n in self.speakers_edit.text().split(",") if n.strip())
        return ChannelEdit(
            name=name if self._creating or name != self._current else None,
            description=(
                description if self._creating or description != self._description else None
            ),
            password=password,
            speakers=speakers,
            everyone_speaks=self.everyone.isChecked() and not self._creating,
            parent=(
                moved
                if (moved := self.parent_combo.currentData()) != self._current_parent
                and moved is not None
                else None
            ),
        )


class UserActionDialog(QDialog):
    """Kick or ban ``name``: says what happens, takes a reason (required for a ban)."""

    def __init__(self, action: str, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.action = action
        verb = "Ban" if action == "ban" else "Kick"
        self.setObjectName(f"{action}Dialog")
        self.setWindowTitle(f"{verb} {name}")
        self.setAccessibleName(self.windowTitle())
        what = (
            f"{name} is disconnected and can never log in again with this identity key. The "
            "reason is shown to them and kept with the ban (voipclient-server --list-bans)."
            if action == "ban"
            else f"{name} is disconnected now; they can come back."
        )
        self.text = QLabel(what)
        self.text.setObjectName("userActionText")
        self.text.setTextFormat(Qt.TextFormat.PlainText)
        self.text.setWordWrap(True)
        self.reason_edit = QLineEdit()
        self.reason_edit.setObjectName("reasonEdit")
        self.reason_edit.setAccessibleName("Reason")
        self.reason_edit.setPlaceholderText("required" if action == "ban" else "optional")
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setText(verb)
        self.ok.setObjectName("userActionOk")
        cancel = self.buttons.button(QDialogButtonBox.StandardButton.Cancel)
        cancel.setDefault(True)  # an Enter by mistake does not ban anyone
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow(_label("&Reason:", self.reason_edit), self.reason_edit)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addLayout(form)
        layout.addWidget(self.buttons)
        self.reason_edit.textChanged.connect(self._refresh)
        self._refresh()

    @Slot()
    def _refresh(self) -> None:
        self.ok.setEnabled(self.action != "ban" or bool(self.reason_edit.text().strip()))

    def reason(self) -> str:
        return self.reason_edit.text().strip()
