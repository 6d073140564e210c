"""The connect dialog: saved servers, servers found on the local network, a local server.

``ConnectDialog(prefs).exec()``, then:

- :meth:`ConnectDialog.chosen` — the server to connect to (a :class:`Bookmark`, whose ``username``
  is the one typed in the dialog), or None;
- :meth:`ConnectDialog.start_local` — the user asked for the embedded local server instead;
- :meth:`ConnectDialog.username` — the user name to log in with;
- :meth:`ConnectDialog.bookmarks` — the saved servers as edited here (add / edit / remove / save
  a discovered one), for the app to store (also after Cancel: edits are not thrown away);
- :meth:`ConnectDialog.discovered_pin` — the pin the chosen server announced on the LAN, if it
  was seen there, for :class:`~voipclient.ui.trust_dialogs.PinApprovalDialog` to compare.

LAN discovery (:class:`voipclient.lan.LanBrowser`) runs while the dialog is open. Its
callbacks arrive on zeroconf's thread and cross to the GUI thread through
:class:`_DiscoveryBridge`'s queued signals; the browser stops when the dialog closes. When
discovery cannot work here the list says "LAN discovery unavailable: <reason>".
"""

from __future__ import annotations

import getpass
import itertools
import logging
import re
import threading
import weakref
from dataclasses import replace

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from voipclient.lan import LanBrowser
from voipclient.names import InvalidName, check_name, prepare_name
from voipclient.net.discovery import DiscoveredServer, DiscoveryUnavailable
from voipclient.net.invite import Invite, InviteError, looks_like_invite, parse_invite
from voipclient.ui.prefs import DEFAULT_PORT, Bookmark, Preferences
from voipclient.ui.widgets import plain_tip

__all__ = ["ConnectDialog", "default_username", "validate_username"]

log = logging.getLogger("voipclient.ui.connect")

#: The protocol's limits for a user name (``net.messages.UserName``).
MAX_USERNAME_LEN = 32
_NAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$")
_HOST_PORT_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\s]+)):(?P<port>\d{1,5})$")
_ROLE = Qt.ItemDataRole.UserRole
_ERROR_STYLE = "color: #d9534f;"


def default_username(prefs: Preferences) -> str:
    """``prefs.username``, else the OS user name, else ""."""
    if prefs.username.strip():
        return prefs.username.strip()
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (containers)
        return ""
    return name[:MAX_USERNAME_LEN]


def validate_username(name: str) -> str | None:
    """Why ``name`` cannot be used as a user name, or None."""
    if not name:
        return "Enter a user name."
    if len(name) > MAX_USERNAME_LEN:
        return f"A user name has at most {MAX_USERNAME_LEN} characters."
    if not _NAME_RE.match(name):
        return "A user name cannot contain control characters."
    try:  # the rules the server and every other member apply (invisible, bidi, mixed scripts)
        check_name(prepare_name(name))
    except InvalidName as exc:
        return f"This user name cannot be used: {exc.reason}"
    return None


def _server_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _same_server(a_host: str, a_port: int, b_host: str, b_port: int) -> bool:
    return a_port == b_port and a_host.strip("[]").lower() == b_host.strip("[]").lower()


class _DiscoveryBridge(QObject):
    """The one door from zeroconf's thread into Qt: signals emitted there, delivered queued."""

    #: A server was found or changed (DiscoveredServer), emitted on zeroconf's thread.
    found = Signal(object)
    #: A server went away (DiscoveredServer), emitted on zeroconf's thread.
    removed = Signal(object)


class _BookmarkEditor(QGroupBox):
    """The inline add/edit form. Emits ``saved(Bookmark)`` or ``cancelled()``; the dialog
    decides whether the bookmark is acceptable (``show_error``)."""

    #: The form was submitted with a well-formed bookmark (Bookmark).
    saved = Signal(object)
    #: The user dismissed the form.
    cancelled = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Server", parent)
        self.setObjectName("bookmarkEditor")
        self.label_edit = self._field("editorLabel", "Name", "A name to recognise it by (optional)")
        self.label_edit.setPlaceholderText("e.g. Friday night")
        self.host_edit = self._field(
            "editorHost", "Address", "The server's host name or IP address (host:port works too)"
        )
        self.host_edit.setPlaceholderText("voice.example.org")
        self.port_edit = self._field(
            "editorPort", "Port", f"TCP and UDP port, 1..65535 (default {DEFAULT_PORT})"
        )
        self.port_edit.setPlaceholderText(str(DEFAULT_PORT))
        self.port_edit.setMaxLength(5)
        self.username_edit = self._field(
            "editorUsername", "User name", "The name to use on this server (optional)"
        )
        self.auto_connect = QCheckBox("Connect to this server &when voipclient starts")
        self.auto_connect.setObjectName("editorAutoConnect")
        self.auto_connect.setAccessibleName("Connect at start")
        self.auto_connect.setToolTip("Open the connection as soon as the app starts")
        self._loaded: Bookmark | None = None
        self.error_label = QLabel()
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)  # may quote server text
        self.error_label.setObjectName("editorError")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(_ERROR_STYLE)
        self.error_label.setAccessibleName("Server form error")
        self.error_label.hide()
        self.save_button = QPushButton("&Save")
        self.save_button.setObjectName("editorSaveButton")
        self.save_button.setToolTip("Save this server")
        self.save_button.setAccessibleName("Save server")
        self.cancel_button = QPushButton("&Discard")
        self.cancel_button.setObjectName("editorCancelButton")
        self.cancel_button.setToolTip("Close the form without saving (Esc)")
        self.cancel_button.setAccessibleName("Discard changes")
        self.save_button.clicked.connect(self.submit)
        self.cancel_button.clicked.connect(self.cancelled.emit)

        form = QFormLayout()
        form.addRow("&Name:", self.label_edit)
        form.addRow("Add&ress:", self.host_edit)
        form.addRow("P&ort:", self.port_edit)
        form.addRow("&User name:", self.username_edit)
        form.addRow("", self.auto_connect)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addLayout(buttons)

    def _field(self, name: str, accessible: str, tip: str) -> QLineEdit:
        edit = QLineEdit()
        edit.setObjectName(name)
        edit.setAccessibleName(accessible)
        edit.setToolTip(tip)
        return edit

    def load(self, mark: Bookmark | None) -> None:
        self.setTitle("Edit server" if mark is not None else "Add a server")
        self.label_edit.setText(mark.label if mark else "")
        self.host_edit.setText(mark.host if mark else "")
        self.port_edit.setText(str(mark.port) if mark and mark.port != DEFAULT_PORT else "")
        self.username_edit.setText(mark.username if mark else "")
        self.auto_connect.setChecked(mark.connect_at_start if mark else False)
        self._loaded = mark
        self.show_error(None)

    def show_error(self, text: str | None) -> None:
        self.error_label.setText(text or "")
        self.error_label.setVisible(bool(text))

    def parse(self) -> Bookmark | str:
        """The bookmark in the form, or why it is not one."""
        host = self.host_edit.text().strip()
        port_text = self.port_edit.text().strip()
        combined = _HOST_PORT_RE.match(host)
        if combined is not None:
            if port_text and port_text != combined["port"]:
                return "The address names a port and the Port field another one."
            host = combined["v6"] or combined["host"]
            port_text = combined["port"]
        host = host.strip("[]")
        if not host:
            return "Enter the server's address (a host name or an IP address)."
        if any(c.isspace() for c in host) or "/" in host:
            return "An address has no spaces or slashes (e.g. voice.example.org or 192.168.1.20)."
        if not port_text:
            port = DEFAULT_PORT
        elif not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            return "The port must be a number from 1 to 65535."
        else:
            port = int(port_text)
        username = self.username_edit.text().strip()
        if username:
            problem = validate_username(username)
            if problem is not None:
                return problem
        label = self.label_edit.text().strip() or (
            host if port == DEFAULT_PORT else _server_text(host, port)
        )
        loaded = self._loaded
        # an invite's pin stays with the server it came for (not with a different address)
        same = loaded is not None and _same_server(loaded.host, loaded.port, host, port)
        pin = loaded.pin if loaded is not None and same else ""
        return Bookmark(
            label=label,
            host=host,
            port=port,
            username=username,
            connect_at_start=self.auto_connect.isChecked(),
            pin=pin,
        )

    @Slot()
    def submit(self) -> None:
        parsed = self.parse()
        if isinstance(parsed, str):
            self.show_error(parsed)
            return
        self.saved.emit(parsed)


class ConnectDialog(QDialog):
    """Choose a server (saved or found on the LAN), or start a local one.

    Keyboard: Enter connects to the selected server (Enter in the server form saves the form);
    Esc closes the form if it is open, else cancels; double-click connects too.
    """

    #: A server appeared or changed on the LAN (DiscoveredServer), on the GUI thread.
    server_discovered = Signal(object)
    #: A server left the LAN (DiscoveredServer), on the GUI thread.
    server_lost = Signal(object)

    def __init__(
        self, prefs: Preferences, *, discovery: bool = True, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setObjectName("connectDialog")
        self.setWindowTitle("Connect to a server")
        self.setMinimumWidth(560)
        self._prefs = prefs
        self._bookmarks: list[Bookmark] = list(prefs.bookmarks)
        self._discovered: dict[str, DiscoveredServer] = {}
        self._editing: int | None = None  # bookmark index being edited; None: adding
        self._chosen: Bookmark | None = None
        self._chosen_pin: str | None = None
        self._start_local = False
        self._invite: Invite | None = None
        self._username = ""
        self._browser: LanBrowser | None = None
        self._bridge: _DiscoveryBridge | None = None
        self._build()
        last = next((i for i, b in enumerate(self._bookmarks) if b.key == prefs.last_server), 0)
        self._refresh_bookmarks(select=last if self._bookmarks else None)
        if discovery:
            self._start_discovery()
        else:
            self._set_lan_status("LAN discovery is off.")
        self._update_state()
        if self._bookmarks:
            self.bookmark_list.setFocus()
        else:
            self.local_button.setFocus()

    # -- construction ---------------------------------------------------------------------------
    def _build(self) -> None:
        self.welcome_label = QLabel(
            "<b>Welcome!</b> You have no saved servers yet. Got an <b>invite link</b> from a "
            "friend? Paste it above. Or press <b>Start a local server</b> to try it on this "
            "computer (then <b>Host for friends</b> in the window gives you a link to share), "
            "add a server someone told you about with <b>Add…</b>, or pick one found on your "
            "local network below."
        )
        self.welcome_label.setObjectName("welcomeLabel")
        self.welcome_label.setTextFormat(Qt.TextFormat.RichText)
        self.welcome_label.setWordWrap(True)
        self.welcome_label.setFrameShape(QFrame.Shape.StyledPanel)
        self.welcome_label.setMargin(8)

        self.invite_edit = QLineEdit()
        self.invite_edit.setObjectName("inviteEdit")
        self.invite_edit.setAccessibleName("Invite link")
        self.invite_edit.setPlaceholderText("voipclient://… (paste the link a friend sent you)")
        self.invite_edit.setToolTip(
            "An invite link carries the server's address, its key and a channel: connecting "
            "with it needs no question about the server's key"
        )
        self.invite_edit.setClearButtonEnabled(True)
        invite_label = QLabel("&Invite link:")
        invite_label.setBuddy(self.invite_edit)
        invite_row = QHBoxLayout()
        invite_row.addWidget(invite_label)
        invite_row.addWidget(self.invite_edit, 1)
        self.invite_edit.textChanged.connect(self._invite_changed)
        self.invite_edit.returnPressed.connect(self.connect_selected)

        self.bookmark_list = QListWidget()
        self.bookmark_list.setObjectName("bookmarkList")
        self.bookmark_list.setAccessibleName("Saved servers")
        self.bookmark_list.setToolTip("Your saved servers: Enter or double-click to connect")
        saved_label = QLabel("&Saved servers")
        saved_label.setBuddy(self.bookmark_list)

        self.add_button = self._button("addButton", "&Add…", "Add a server")
        self.edit_button = self._button("editButton", "&Edit…", "Change the selected server")
        self.remove_button = self._button(
            "removeButton", "Re&move", "Remove the selected server from the list"
        )
        side = QVBoxLayout()
        side.addWidget(self.add_button)
        side.addWidget(self.edit_button)
        side.addWidget(self.remove_button)
        side.addStretch(1)
        saved_row = QHBoxLayout()
        saved_row.addWidget(self.bookmark_list, 1)
        saved_row.addLayout(side)

        self.editor = _BookmarkEditor()
        self.editor.hide()

        self.lan_list = QListWidget()
        self.lan_list.setObjectName("lanList")
        self.lan_list.setAccessibleName("Servers on the local network")
        self.lan_list.setToolTip(
            "Servers announced on your local network: Enter or double-click to connect"
        )
        lan_label = QLabel("&Local network")
        lan_label.setBuddy(self.lan_list)
        self.lan_status = QLabel()
        self.lan_status.setTextFormat(Qt.TextFormat.PlainText)
        self.lan_status.setObjectName("lanStatus")
        self.lan_status.setWordWrap(True)
        self.lan_status.setAccessibleName("Local network status")
        self.lan_save_button = self._button(
            "lanSaveButton", "Sa&ve", "Add the selected network server to your saved servers"
        )
        lan_side = QVBoxLayout()
        lan_side.addWidget(self.lan_save_button)
        lan_side.addStretch(1)
        lan_row = QHBoxLayout()
        lan_row.addWidget(self.lan_list, 1)
        lan_row.addLayout(lan_side)

        self.username_edit = QLineEdit(default_username(self._prefs))
        self.username_edit.setObjectName("usernameEdit")
        self.username_edit.setAccessibleName("User name")
        self.username_edit.setToolTip("The name others see (at most 32 characters)")
        self.username_edit.setMaxLength(MAX_USERNAME_LEN)
        name_row = QFormLayout()
        name_row.addRow("User &name:", self.username_edit)

        self.error_label = QLabel()
        self.error_label.setTextFormat(Qt.TextFormat.PlainText)  # may quote server text
        self.error_label.setObjectName("connectError")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(_ERROR_STYLE)
        self.error_label.setAccessibleName("Error")
        self.error_label.hide()

        self.local_button = self._button(
            "localServerButton",
            "Start a &local server",
            "Run a server on this computer and connect to it",
        )
        self.connect_button = self._button(
            "connectButton", "&Connect", "Connect to the selected server (Enter)"
        )
        self.cancel_button = self._button("cancelButton", "Cancel", "Close without connecting")
        bottom = QHBoxLayout()
        bottom.addWidget(self.local_button)
        bottom.addStretch(1)
        bottom.addWidget(self.connect_button)
        bottom.addWidget(self.cancel_button)

        layout = QVBoxLayout(self)
        layout.addWidget(self.welcome_label)
        layout.addLayout(invite_row)
        layout.addWidget(saved_label)
        layout.addLayout(saved_row)
        layout.addWidget(self.editor)
        layout.addWidget(lan_label)
        layout.addWidget(self.lan_status)
        layout.addLayout(lan_row)
        layout.addLayout(name_row)
        layout.addWidget(self.error_label)
        layout.addLayout(bottom)

        chain: list[QWidget] = [
            self.invite_edit,
            self.bookmark_list,
            self.add_button,
            self.edit_button,
            self.remove_button,
            self.editor.label_edit,
            self.editor.host_edit,
            self.editor.port_edit,
            self.editor.username_edit,
            self.editor.save_button,
            self.editor.cancel_button,
            self.lan_list,
            self.lan_save_button,
            self.username_edit,
            self.local_button,
            self.connect_button,
            self.cancel_button,
        ]
        for first, second in itertools.pairwise(chain):
            self.setTabOrder(first, second)

        self.bookmark_list.itemSelectionChanged.connect(self._bookmark_selected)
        self.bookmark_list.itemDoubleClicked.connect(self._item_double_clicked)
        self.lan_list.itemSelectionChanged.connect(self._lan_selected)
        self.lan_list.itemDoubleClicked.connect(self._item_double_clicked)
        self.add_button.clicked.connect(self.add_bookmark)
        self.edit_button.clicked.connect(self.edit_bookmark)
        self.remove_button.clicked.connect(self.remove_bookmark)
        self.lan_save_button.clicked.connect(self.save_discovered)
        self.editor.saved.connect(self._editor_saved)
        self.editor.cancelled.connect(self.close_editor)
        self.local_button.clicked.connect(self.choose_local)
        self.connect_button.clicked.connect(self.connect_selected)
        self.cancel_button.clicked.connect(self._cancel)
        self.username_edit.textEdited.connect(lambda _text: self._show_error(None))

    def _button(self, name: str, text: str, tip: str) -> QPushButton:
        button = QPushButton(text)
        button.setObjectName(name)
        button.setToolTip(tip)
        button.setAccessibleName(text.replace("&", "").rstrip("…"))
        return button

    # -- results --------------------------------------------------------------------------------
    def chosen(self) -> Bookmark | None:
        """The server to connect to (its ``username`` is :meth:`username`), or None."""
        return self._chosen

    def start_local(self) -> bool:
        """True when the user asked for the embedded local server."""
        return self._start_local

    def invite(self) -> Invite | None:
        """The invite link the user connected with (its pin and channel), or None."""
        return self._invite

    @Slot(str)
    def _invite_changed(self, text: str) -> None:
        text = text.strip()
        if not text:
            self._show_error(None)
        elif looks_like_invite(text):
            try:
                invite = parse_invite(text)
            except InviteError as exc:
                self._show_error(f"This invite link cannot be used: {exc}")
            else:
                where = _server_text(invite.host, invite.port)
                channel = f", channel {invite.channel}" if invite.channel else ""
                self._set_lan_status(f"Invite for {where}{channel}: press Connect.")
                self._show_error(None)
        else:
            self._show_error("An invite link starts with voipclient://")
        self._update_state()

    def username(self) -> str:
        """The user name to log in with (as typed, trimmed)."""
        return self._username or self.username_edit.text().strip()

    def bookmarks(self) -> tuple[Bookmark, ...]:
        """The saved servers as edited in this dialog."""
        return tuple(self._bookmarks)

    def discovered_pin(self) -> str | None:
        """The pin the chosen server announced on the LAN, if it was seen there."""
        return self._chosen_pin

    def discovered(self) -> tuple[DiscoveredServer, ...]:
        """The servers seen on the LAN now."""
        return tuple(self._discovered.values())

    # -- bookmarks ------------------------------------------------------------------------------
    def _refresh_bookmarks(self, select: int | None) -> None:
        self.bookmark_list.blockSignals(True)
        self.bookmark_list.clear()
        for index, mark in enumerate(self._bookmarks):
            where = _server_text(mark.host, mark.port)
            text = mark.label if mark.label == where else f"{mark.label} — {where}"
            item = QListWidgetItem(text)
            item.setData(_ROLE, index)
            item.setToolTip(
                plain_tip(f"{where}" + (f", as {mark.username}" if mark.username else ""))
            )
            self.bookmark_list.addItem(item)
        self.bookmark_list.blockSignals(False)
        self.welcome_label.setVisible(not self._bookmarks)
        if select is not None and 0 <= select < len(self._bookmarks):
            self.bookmark_list.setCurrentRow(select)  # selects, and clears the LAN selection
        self._update_state()

    def _selected_bookmark(self) -> int | None:
        items = self.bookmark_list.selectedItems()
        return int(items[0].data(_ROLE)) if items else None

    def _selected_discovered(self) -> DiscoveredServer | None:
        items = self.lan_list.selectedItems()
        if not items:
            return None
        server = items[0].data(_ROLE)
        return server if isinstance(server, DiscoveredServer) else None

    @Slot()
    def _bookmark_selected(self) -> None:
        index = self._selected_bookmark()
        if index is not None:
            self.lan_list.clearSelection()
            mark = self._bookmarks[index]
            if mark.username:
                self.username_edit.setText(mark.username)
        self._show_error(None)
        self._update_state()

    @Slot()
    def _lan_selected(self) -> None:
        if self._selected_discovered() is not None:
            self.bookmark_list.clearSelection()
        self._show_error(None)
        self._update_state()

    @Slot()
    def add_bookmark(self) -> None:
        """Open the form for a new server."""
        self._open_editor(None)

    @Slot()
    def edit_bookmark(self) -> None:
        """Open the form on the selected server."""
        index = self._selected_bookmark()
        if index is not None:
            self._open_editor(index)

    def _open_editor(self, index: int | None) -> None:
        self._editing = index
        self.editor.load(self._bookmarks[index] if index is not None else None)
        self.editor.show()
        self._update_state()
        (self.editor.host_edit if index is None else self.editor.label_edit).setFocus()

    @Slot()
    def close_editor(self) -> None:
        """Hide the form without saving."""
        if not self._form_open():
            return
        self.editor.hide()
        self._editing = None
        self._update_state()
        self.bookmark_list.setFocus()

    @Slot(object)
    def _editor_saved(self, mark: Bookmark) -> None:
        for i, other in enumerate(self._bookmarks):
            if i != self._editing and _same_server(other.host, other.port, mark.host, mark.port):
                self.editor.show_error(f"You already saved this server as “{other.label}”.")
                return
        if self._editing is None:
            self._bookmarks.append(mark)
            select = len(self._bookmarks) - 1
        else:
            self._bookmarks[self._editing] = mark
            select = self._editing
        self.editor.hide()
        self._editing = None
        self._refresh_bookmarks(select)
        self.bookmark_list.setFocus()

    @Slot()
    def remove_bookmark(self) -> None:
        """Remove the selected server from the saved list."""
        index = self._selected_bookmark()
        if index is None:
            return
        del self._bookmarks[index]
        if self._editing is not None:
            self.close_editor()
        remaining = len(self._bookmarks)
        self._refresh_bookmarks(min(index, remaining - 1) if remaining else None)

    # -- LAN discovery --------------------------------------------------------------------------
    def _start_discovery(self) -> None:
        bridge = _DiscoveryBridge()  # no parent: lives as long as the browser's callbacks
        self._bridge = bridge
        bridge.found.connect(self.add_discovered, Qt.ConnectionType.QueuedConnection)
        bridge.removed.connect(self.remove_discovered, Qt.ConnectionType.QueuedConnection)
        browser = LanBrowser(bridge.found.emit, bridge.removed.emit)
        try:
            browser.start()
        except DiscoveryUnavailable as exc:
            log.info("LAN discovery unavailable: %s", exc)
            self._set_lan_status(f"LAN discovery unavailable: {exc}")
            return
        self._browser = browser
        # A dialog dropped without done() must not leave zeroconf running.
        weakref.finalize(self, browser.close)
        self._set_lan_status("Searching the local network…")

    def _set_lan_status(self, text: str) -> None:
        self.lan_status.setText(text)
        self.lan_status.setVisible(bool(text))

    @Slot(object)
    def add_discovered(self, server: DiscoveredServer) -> None:
        """Show (or update) a server found on the LAN. GUI thread only."""
        self._discovered[server.service] = server
        self._refresh_lan(keep=self._selected_discovered())
        self.server_discovered.emit(server)

    @Slot(object)
    def remove_discovered(self, server: DiscoveredServer) -> None:
        """Drop a server that left the LAN. GUI thread only."""
        if self._discovered.pop(server.service, None) is not None:
            self._refresh_lan(keep=self._selected_discovered())
            self.server_lost.emit(server)

    def _refresh_lan(self, keep: DiscoveredServer | None) -> None:
        self.lan_list.blockSignals(True)
        self.lan_list.clear()
        reselect: QListWidgetItem | None = None
        for server in sorted(self._discovered.values(), key=lambda s: (s.name.lower(), s.port)):
            text = f"{server.name} — {_server_text(server.host, server.port)}"
            tip = f"Announced key fingerprint: {server.pin or 'none'}"
            item = QListWidgetItem(text)
            item.setData(_ROLE, server)
            if not server.compatible:
                item.setText(f"{text} (another version: {server.version or 'unknown'})")
                item.setFlags(Qt.ItemFlag.NoItemFlags)
                tip = "This server speaks another protocol version"
            item.setToolTip(plain_tip(tip))  # announced over the network: never markup
            self.lan_list.addItem(item)
            if keep is not None and server.service == keep.service and server.compatible:
                reselect = item
        if reselect is not None:
            reselect.setSelected(True)
            self.lan_list.setCurrentItem(reselect)
        self.lan_list.blockSignals(False)
        if self._browser is not None:
            self._set_lan_status("" if self._discovered else "Searching the local network…")
        self._update_state()

    @Slot()
    def save_discovered(self) -> None:
        """Add the selected LAN server to the saved servers."""
        server = self._selected_discovered()
        if server is None:
            return
        for other in self._bookmarks:
            if _same_server(other.host, other.port, server.host, server.port):
                self._show_error(f"This server is saved already, as “{other.label}”.")
                return
        self._bookmarks.append(Bookmark(label=server.name, host=server.host, port=server.port))
        self._refresh_bookmarks(select=None)
        self._show_error(None)

    def stop_discovery(self) -> None:
        """Stop browsing (also done when the dialog closes)."""
        browser, self._browser = self._browser, None
        if browser is not None:
            # close() may wait up to 2 s for a look-up in flight: never on the GUI thread
            threading.Thread(target=browser.close, name="lan-browser-close", daemon=True).start()

    # -- choosing -------------------------------------------------------------------------------
    @Slot(QListWidgetItem)
    def _item_double_clicked(self, _item: QListWidgetItem) -> None:
        self.connect_selected()

    def _pin_for(self, host: str, port: int) -> str | None:
        for server in self._discovered.values():
            if _same_server(server.host, server.port, host, port):
                return server.pin
        return None

    @Slot()
    def connect_selected(self) -> None:
        """Connect to the pasted invite, else the selected server (saved or from the LAN):
        check the user name, accept."""
        if self._form_open():
            return
        if self.invite_edit.text().strip():
            self._connect_invite()
            return
        index = self._selected_bookmark()
        server = self._selected_discovered()
        if index is None and server is None:
            self._show_error("Choose a server first, or start a local one.")
            return
        name = self.username_edit.text().strip()
        problem = validate_username(name)
        if problem is not None:
            self._show_error(problem)
            self.username_edit.setFocus()
            return
        if index is not None:
            mark = self._bookmarks[index]
            chosen = replace(mark, username=name)  # its invite pin and start flag stay
            pin = self._pin_for(mark.host, mark.port) or (mark.pin or None)
        else:
            assert server is not None
            if not server.compatible:
                return
            chosen = Bookmark(label=server.name, host=server.host, port=server.port, username=name)
            pin = server.pin
        self._chosen, self._chosen_pin, self._username = chosen, pin, name
        self._start_local = False
        self.accept()

    def _connect_invite(self) -> None:
        try:
            invite = parse_invite(self.invite_edit.text())
        except InviteError as exc:
            self._show_error(f"This invite link cannot be used: {exc}")
            self.invite_edit.setFocus()
            return
        name = self.username_edit.text().strip()
        problem = validate_username(name)
        if problem is not None:
            self._show_error(problem)
            self.username_edit.setFocus()
            return
        self._invite, self._username = invite, name
        self._chosen, self._chosen_pin, self._start_local = None, invite.pin, False
        self.accept()

    @Slot()
    def choose_local(self) -> None:
        """Start the embedded local server (and connect to it)."""
        name = self.username_edit.text().strip()
        problem = validate_username(name)
        if problem is not None:
            self._show_error(problem)
            self.username_edit.setFocus()
            return
        self._chosen, self._chosen_pin, self._username = None, None, name
        self._start_local = True
        self.accept()

    @Slot()
    def _cancel(self) -> None:
        super().reject()

    def reject(self) -> None:
        """Esc: close the server form if it is open, else cancel the dialog."""
        if self._form_open():
            self.close_editor()
            return
        super().reject()

    def done(self, result: int) -> None:
        self.stop_discovery()
        if result != QDialog.DialogCode.Accepted:
            self._chosen = self._chosen_pin = None
            self._start_local = False
        super().done(result)

    # -- state ----------------------------------------------------------------------------------
    def _show_error(self, text: str | None) -> None:
        self.error_label.setText(text or "")
        self.error_label.setVisible(bool(text))

    def _form_open(self) -> bool:
        return self.editor.isVisibleTo(self)

    def _update_state(self) -> None:
        editing = self._form_open()
        selected = self._selected_bookmark() is not None
        lan = self._selected_discovered()
        for button in (self.add_button, self.edit_button, self.remove_button):
            button.setEnabled(not editing)
        self.edit_button.setEnabled(selected and not editing)
        self.remove_button.setEnabled(selected and not editing)
        self.lan_save_button.setEnabled(lan is not None and not editing)
        invited = bool(self.invite_edit.text().strip())
        can_connect = (invited or selected or (lan is not None and lan.compatible)) and not editing
        self.connect_button.setEnabled(can_connect)
        # The one default button (Enter): the form's Save while it is open, else Connect when
        # something is selected, else — on a first run — the local server.
        default = (
            self.editor.save_button
            if editing
            else self.connect_button
            if can_connect
            else self.local_button
            if not self._bookmarks
            else None
        )
        for button in (self.editor.save_button, self.connect_button, self.local_button):
            button.setDefault(button is default)
        font = QFont(self.local_button.font())
        font.setBold(not self._bookmarks)
        self.local_button.setFont(font)
