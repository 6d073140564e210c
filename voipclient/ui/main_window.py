"""The main window: channel tree with members and talking marks, per-channel controls, chat,
toolbar, status bar, level meter, reconnect banner. It renders :class:`ClientModel` rows and
forwards the user's actions to :class:`ClientController`; it decides nothing itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QByteArray, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QColor, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QSlider,
    QSplitter,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
    QWidgetAction,
)

from voipclient import __version__
from voipclient.net.e2ee import KeyHolder
from voipclient.ui.chat import ChatPanel
from voipclient.ui.controller import ClientController, stats_text
from voipclient.ui.hotkey_capture import HotkeyCaptureWidget
from voipclient.ui.icons import channel_icon, colour_swatch, user_icon
from voipclient.ui.model import ChannelRow, MemberRow, hotkeys_summary
from voipclient.ui.widgets import Banner, LevelMeter, plain_tip

ROLE_KIND = Qt.ItemDataRole.UserRole  # "channel" | "user"
ROLE_ID = Qt.ItemDataRole.UserRole + 1  # channel id | sender id
ROLE_CHANNEL = Qt.ItemDataRole.UserRole + 2  # a user row's channel id

TALKING = "●"  # drawn green; in every common UI font (no emoji font needed)
TRUST_MARKS = {"verified": "✔", "changed": "⚠", "blocked": "✖", "tofu": ""}
TRUST_TIPS = {
    "verified": "Verified: you compared safety numbers with this person.",
    "changed": "Warning: this person's identity key changed since you first saw it. Compare "
    "safety numbers (right-click → Safety number).",
    "blocked": "Blocked: the key changed after you verified it. Nothing from them is played "
    "until you verify the new key.",
    "tofu": "Not verified yet: right-click → Safety number to compare it with them.",
}

log = logging.getLogger("voipclient.ui.main_window")


def channel_label(row: ChannelRow) -> str:
    marks = []
    if row.talking:
        marks.append(TALKING)
    if row.password_protected:
        marks.append("(password)")
    if row.muted:
        marks.append("(muted)")
    return " ".join([row.name, *marks])


def member_label(member: MemberRow) -> str:
    parts = [member.name + (" (you)" if member.is_me else "")]
    if member.talking:
        parts.append(TALKING)
    if member.deafened:
        parts.append("· deafened")
    elif member.muted:
        parts.append("· muted")
    if member.local_muted:
        parts.append("(muted for you)")
    mark = "" if member.is_me else TRUST_MARKS.get(member.trust, "")
    if mark:
        parts.append(mark)
    return " ".join(parts)


class ChannelTree(QTreeWidget):
    """Channels (nested) with their members; column 2 shows the channel's push-to-talk keys."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("channelTree")
        self.setAccessibleName("Channels and members")
        self.setColumnCount(2)
        self.setHeaderLabels(["Channel", "Push-to-talk"])
        self.setRootIsDecorated(True)
        self.setUniformRowHeights(True)
        self.setAlternatingRowColors(False)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.setToolTip(
            "Double-click (or Enter) a channel to join or leave it; right-click for more. "
            "You can be in several channels at once and talk into each with its own key."
        )
        self.header().setStretchLastSection(False)
        self.header().setSectionResizeMode(0, self.header().ResizeMode.Stretch)
        self.header().setSectionResizeMode(1, self.header().ResizeMode.ResizeToContents)
        self._items: dict[int, QTreeWidgetItem] = {}

    def render(self, rows: tuple[ChannelRow, ...], talking_colour: Any) -> None:  # type: ignore[override]
        selected = self.selected()
        expanded_known = {cid for cid, item in self._items.items() if not item.isExpanded()}
        self.setUpdatesEnabled(False)
        self.clear()
        self._items = {}
        bold = self.font()
        bold.setBold(True)
        for row in rows:
            parent = self._items.get(row.parent) if row.parent is not None else None
            item = QTreeWidgetItem(parent) if parent is not None else QTreeWidgetItem(self)
            item.setText(0, channel_label(row))
            item.setText(1, ", ".join(row.ptt_keys) + (" · hot mic" if row.hot_mic else ""))
            item.setData(0, ROLE_KIND, "channel")
            item.setData(0, ROLE_ID, row.id)
            ink = self.palette().text().color().name()
            item.setIcon(0, channel_icon(row.colour or ink, row.joined, row.password_protected))
            tip = [row.description] if row.description else []
            tip.append("You are in this channel." if row.joined else "Double-click to join.")
            if row.joined and not row.may_speak:
                tip.append("Listen only: the channel does not let you talk.")
            if row.ptt_keys:
                tip.append(f"Push-to-talk: {', '.join(row.ptt_keys)}")
            item.setToolTip(0, plain_tip("\n".join(tip)))
            if row.joined:
                item.setFont(0, bold)
            if row.talking:
                item.setForeground(0, talking_colour)
            for member in row.members:
                child = QTreeWidgetItem(item)
                child.setText(0, member_label(member))
                child.setData(0, ROLE_KIND, "user")
                talk = talking_colour.color().name() if talking_colour is not None else ink
                child.setIcon(0, user_icon(ink, talk, member.talking, member.is_me))
                child.setData(0, ROLE_ID, member.sender_id)
                child.setData(0, ROLE_CHANNEL, row.id)
                key = f"Identity key {member.ik_pub[:8].hex(' ', 2)}…" if member.ik_pub else ""
                trust = TRUST_TIPS.get(member.trust, "")
                child.setToolTip(0, plain_tip(f"{member.name}\n{key}\n{trust}".strip()))
                if member.talking:
                    child.setForeground(0, talking_colour)
            self._items[row.id] = item
            item.setExpanded(row.id not in expanded_known)
        if selected is not None and selected in self._items:
            self.setCurrentItem(self._items[selected])
        self.setUpdatesEnabled(True)

    def selected(self) -> int | None:
        item = self.currentItem()
        if item is None:
            return None
        if item.data(0, ROLE_KIND) == "user":
            return int(item.data(0, ROLE_CHANNEL))
        return int(item.data(0, ROLE_ID))

    def item_for(self, channel_id: int) -> QTreeWidgetItem | None:
        return self._items.get(channel_id)


#: The placements offered for a channel: (label, pan).
PLACEMENTS: tuple[tuple[str, float], ...] = (
    ("Left", -1.0),
    ("Centre-left", -0.5),
    ("Centre", 0.0),
    ("Centre-right", 0.5),
    ("Right", 1.0),
)


def nearest_placement(pan: float) -> int:
    """The index in :data:`PLACEMENTS` closest to ``pan``."""
    return min(range(len(PLACEMENTS)), key=lambda i: abs(PLACEMENTS[i][1] - pan))


class ChannelControls(QGroupBox):
    """The selected channel's controls: join/leave, volume, mute, push-to-talk key, hot mic."""

    def __init__(self, controller: ClientController, parent: QWidget | None = None) -> None:
        super().__init__("Channel", parent)
        self.setObjectName("channelControls")
        self.controller = controller
        self.channel_id: int | None = None
        self.join_button = QPushButton("Join")
        self.join_button.setObjectName("joinButton")
        self.join_button.setToolTip("Join or leave this channel (you can be in several at once)")
        self.volume = QSlider(Qt.Orientation.Horizontal)
        self.volume.setObjectName("channelVolume")
        self.volume.setRange(0, 200)
        self.volume.setToolTip("How loud this channel is for you (100 % = unchanged)")
        self.volume.setAccessibleName("Channel volume")
        self.mute = QCheckBox("Mute")
        self.mute.setObjectName("channelMute")
        self.mute.setToolTip("Stop hearing this channel (you stay in it)")
        self.ptt = HotkeyCaptureWidget()
        self.ptt.setObjectName("channelPtt")
        self.ptt.setAccessibleName("Push-to-talk key of this channel")
        self.clear_ptt = QPushButton("Clear")
        self.clear_ptt.setObjectName("clearPtt")
        self.clear_ptt.setToolTip("Remove this channel's push-to-talk key")
        self.hot_mic = QCheckBox("Hot mic")
        self.hot_mic.setObjectName("hotMic")
        self.hot_mic.setToolTip(
            "Talk into this channel without a key: voice activation or always on, as chosen in "
            "Settings → Transmission (one channel at most)"
        )
        self.pan = QComboBox()
        self.pan.setObjectName("channelPan")
        for label, value in PLACEMENTS:
            self.pan.addItem(label, value)
        self.pan.setToolTip(
            "Where this channel plays in your headphones: put two channels on different sides "
            "to tell them apart by ear (a mono speaker still plays them all; placed ones 6 dB "
            "quieter)"
        )
        self.pan.setAccessibleName("Channel placement")
        self.priority = QCheckBox("Priority")
        self.priority.setObjectName("channelPriority")
        self.priority.setToolTip(
            "While someone talks here, the other channels are turned down (Settings → Audio "
            "says by how much), so the command net is never drowned out"
        )
        self.colour = QToolButton()
        self.colour.setObjectName("channelColour")
        self.colour.setToolTip("This channel's colour, in the list, its chat tab and the overlay")
        self.colour.setAccessibleName("Channel colour")
        self.privacy_code = QLabel("")
        self.privacy_code.setObjectName("privacyCode")
        self.privacy_code.setTextFormat(Qt.TextFormat.PlainText)
        self.privacy_code.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.privacy_code.setToolTip(
            "Channel privacy code: computed from everyone who holds this channel's keys. If the "
            "others in the channel see the same code, you all see the same members: the server "
            "cannot have added a hidden listener or shown you a different list."
        )
        self.privacy_code.setAccessibleName("Channel privacy code")
        ptt_row = QHBoxLayout()
        ptt_row.addWidget(self.ptt, 1)
        ptt_row.addWidget(self.clear_ptt)
        form = QFormLayout(self)
        form.addRow(self.join_button)
        form.addRow("Volume", self.volume)
        form.addRow(self.mute, self.hot_mic)
        form.addRow("Push-to-talk", ptt_row)
        place_row = QHBoxLayout()
        place_row.addWidget(self.pan, 1)
        place_row.addWidget(self.priority)
        place_row.addWidget(self.colour)
        form.addRow("Placement", place_row)
        place_label = form.labelForField(place_row)
        if isinstance(place_label, QLabel):
            place_label.setBuddy(self.pan)
        form.addRow("Privacy code", self.privacy_code)
        self.join_button.clicked.connect(self._toggle_join)
        self.volume.valueChanged.connect(self._volume_changed)
        self.mute.toggled.connect(self._mute_toggled)
        self.ptt.captured.connect(self._captured)
        self.clear_ptt.clicked.connect(lambda: self._captured(None))
        self.hot_mic.toggled.connect(self._hot_mic_toggled)
        self.pan.currentIndexChanged.connect(self._pan_chosen)
        self.priority.toggled.connect(self._priority_toggled)
        self.colour.clicked.connect(self._choose_colour)
        self._volume_timer = QTimer(self)
        self._volume_timer.setSingleShot(True)
        self._volume_timer.setInterval(150)
        self._volume_timer.timeout.connect(self._volume_commit)
        self._updating = False
        self.show_row(None)

    def show_row(self, row: ChannelRow | None) -> None:
        new_id = None if row is None else row.id
        if self._volume_timer.isActive() and new_id != self.channel_id:
            self._volume_timer.stop()
            self._volume_commit()  # the move belongs to the channel it was made in
        self._updating = True
        self.channel_id = new_id
        self.setEnabled(row is not None)
        if row is None:
            self.setTitle("Channel")
            self._updating = False
            return
        self.setTitle(row.name)
        self.join_button.setText("Leave" if row.joined else "Join")
        # Not while the user moves it, nor while their last move waits to be committed: a
        # refresh (someone joined, a key arrived) would put the old volume back and commit it.
        if not self.volume.isSliderDown() and not self._volume_timer.isActive():
            self.volume.setValue(round(row.volume * 100))
        self.mute.setChecked(row.muted)
        if not self.ptt.is_capturing():
            self.ptt.set_keys(", ".join(row.ptt_keys))
        self.ptt.setEnabled(row.joined)
        self.clear_ptt.setEnabled(row.joined and bool(row.ptt_keys))
        self.hot_mic.setChecked(row.hot_mic)
        self.hot_mic.setEnabled(row.joined and row.may_speak)
        self.privacy_code.setText(row.privacy_code or "— (join to see it)")
        self.pan.setCurrentIndex(nearest_placement(row.pan))
        self.priority.setChecked(row.priority)
        self.colour.setIcon(colour_swatch(row.colour))
        self.colour.setText(row.colour)
        self._updating = False

    def _pan_chosen(self, index: int) -> None:
        if not self._updating and self.channel_id is not None and index >= 0:
            self.controller.set_channel_pan(self.channel_id, float(self.pan.itemData(index)))

    def _priority_toggled(self, on: bool) -> None:
        if not self._updating and self.channel_id is not None:
            self.controller.set_priority_channel(self.channel_id if on else None)

    def _choose_colour(self) -> None:
        cid = self.channel_id
        row = None if cid is None else self.controller.model.row(cid)
        if cid is None or row is None:
            return
        colour = QColorDialog.getColor(QColor(row.colour), self, f"Colour of {row.name}")
        if colour.isValid():
            self.controller.set_channel_colour(cid, colour.name())

    def _toggle_join(self) -> None:
        if self.channel_id is not None:
            self.toggle_join(self.channel_id)

    def toggle_join(self, cid: int) -> None:
        """Join ``cid`` (asking for its password when it has one) or leave it."""
        row = self.controller.model.row(cid)
        if row is None:
            return
        if row.joined:
            self.controller.leave(cid)
        elif row.password_protected:
            password, ok = QInputDialog.getText(
                self, "Channel password", f"Password for {row.name}:", QLineEdit.EchoMode.Password
            )
            if ok:
                self.controller.join(cid, password)
        else:
            self.controller.join(cid)

    def _volume_changed(self, _value: int) -> None:
        if not self._updating:
            self._volume_timer.start()

    def _volume_commit(self) -> None:
        if self.channel_id is not None:
            self.controller.set_channel_volume(self.channel_id, self.volume.value() / 100)

    def _mute_toggled(self, muted: bool) -> None:
        if not self._updating and self.channel_id is not None:
            self.controller.set_channel_muted(self.channel_id, muted)

    def _captured(self, keys: str | None) -> None:
        if self.channel_id is not None:
            self.controller.set_channel_binding(self.channel_id, keys)

    def _hot_mic_toggled(self, on: bool) -> None:
        if not self._updating and self.channel_id is not None:
            self.controller.set_hot_mic(self.channel_id if on else None)


class MainWindow(QMainWindow):
    """See the module docstring."""

    settings_requested = Signal()
    setup_requested = Signal()
    host_requested = Signal()
    backup_requested = Signal()
    restore_requested = Signal()
    connect_requested = Signal()
    quit_requested = Signal()
    diagnostics_requested = Signal()
    log_folder_requested = Signal()

    def __init__(self, controller: ClientController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.setObjectName("mainWindow")
        self.setWindowTitle("voipclient")
        self.resize(1000, 680)
        self.tray_available = False
        self.really_quit = False
        from voipclient.ui import theme

        self._theme = theme
        # toolbar
        bar = self.addToolBar("Main")
        bar.setObjectName("mainToolbar")
        bar.setMovable(False)
        self.connect_action = QAction("Connect…", self)
        self.connect_action.setShortcut(QKeySequence("Ctrl+O"))
        self.connect_action.setToolTip("Choose a server, or start a local one (Ctrl+O)")
        self.disconnect_action = QAction("Disconnect", self)
        self.disconnect_action.setToolTip("Leave the server")
        self.mute_action = QAction("Mute microphone", self)
        self.mute_action.setCheckable(True)
        self.mute_action.setShortcut(QKeySequence("Ctrl+M"))
        self.mute_action.setToolTip("Nobody hears you, in any channel (Ctrl+M)")
        self.deafen_action = QAction("Deafen", self)
        self.deafen_action.setCheckable(True)
        self.deafen_action.setShortcut(QKeySequence("Ctrl+D"))
        self.deafen_action.setToolTip("Hear nothing and mute your microphone (Ctrl+D)")
        self.host_action = QAction("Host for friends…", self)
        self.host_action.setToolTip(
            "Run a server on this computer that friends can reach over the internet, and get an "
            "invite link to send them"
        )
        self.host_action.triggered.connect(self.host_requested)
        self.settings_action = QAction("Settings…", self)
        self.settings_action.setShortcut(QKeySequence("Ctrl+,"))
        self.settings_action.setToolTip("Audio, transmission, hotkeys, appearance (Ctrl+,)")
        self.quit_action = QAction("Quit", self)
        self.quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        for action in (
            self.connect_action,
            self.disconnect_action,
            self.host_action,
            self.mute_action,
            self.deafen_action,
            self.settings_action,
        ):
            bar.addAction(action)
            action.setObjectName(action.text().rstrip("…").replace(" ", "_").lower() + "_action")
        self.addAction(self.quit_action)
        # Server: your identity key on it, and (administrators) its channels
        self.server_menu = QMenu("Server", self)
        self.server_menu.setObjectName("serverMenu")
        self.backup_action = self.server_menu.addAction("Back up my identity key…")
        self.backup_action.setObjectName("backup_key_action")
        self.backup_action.setToolTip(
            "Save your key for this server in a passphrase-protected file, to keep your name "
            "(and your verified contacts) on another computer or after a reinstall"
        )
        self.backup_action.triggered.connect(self.backup_requested)
        self.restore_action = self.server_menu.addAction("Restore an identity key…")
        self.restore_action.setObjectName("restore_key_action")
        self.restore_action.setToolTip("Bring back a key from a backup file (disconnects first)")
        self.restore_action.triggered.connect(self.restore_requested)
        self.server_menu.addSeparator()
        self.create_channel_action = self.server_menu.addAction("Create a channel…")
        self.create_channel_action.setObjectName("create_channel_action")
        self.create_channel_action.setToolTip("Administrators: a new top-level channel")
        self.create_channel_action.triggered.connect(lambda: self.create_channel(None))
        self.create_channel_action.setVisible(False)
        self.admin_dialog: Any = None
        self.server_menu_action = self.server_menu.menuAction()
        self.server_menu_action.setObjectName("server_action")
        # Help: what a bug report needs, one click away
        self.help_menu = QMenu("Help", self)
        self.help_menu.setObjectName("helpMenu")
        self.diagnostics_action = self.help_menu.addAction("Copy diagnostics")
        self.diagnostics_action.setObjectName("copy_diagnostics_action")
        self.diagnostics_action.setToolTip(
            "Versions, audio devices, connection and the last errors, for a bug report "
            "(never keys or passwords)"
        )
        self.diagnostics_action.triggered.connect(self.diagnostics_requested)
        self.log_folder_action = self.help_menu.addAction("Open log folder")
        self.log_folder_action.setObjectName("open_log_folder_action")
        self.log_folder_action.triggered.connect(self.log_folder_requested)
        self.setup_action = self.help_menu.addAction("Set up voice…")
        self.setup_action.setObjectName("setup_action")
        self.setup_action.setToolTip("Name, microphone and speakers, and how you talk")
        self.setup_action.triggered.connect(self.setup_requested)
        self.help_menu.addSeparator()
        about = self.help_menu.addAction(f"About voipclient {__version__}")
        about.setEnabled(False)
        self.help_action = self.help_menu.menuAction()
        self.help_action.setObjectName("help_action")
        # Overlay: who talks where, over the game (the app wires it: App.overlay)
        self.overlay_menu = QMenu("Overlay", self)
        self.overlay_menu.setObjectName("overlayMenu")
        self.overlay_show_action = self.overlay_menu.addAction("Show game overlay")
        self.overlay_show_action.setObjectName("overlay_show_action")
        self.overlay_show_action.setCheckable(True)
        self.overlay_show_action.setShortcut(QKeySequence("Ctrl+Shift+O"))
        self.overlay_show_action.setToolTip(
            "A small always-on-top list of who talks in which channel, and where you transmit, "
            "over windowed and borderless games (not exclusive fullscreen)"
        )
        self.overlay_lock_action = self.overlay_menu.addAction("Lock overlay (clicks go through)")
        self.overlay_lock_action.setObjectName("overlay_lock_action")
        self.overlay_lock_action.setCheckable(True)
        self.overlay_lock_action.setChecked(True)
        self.overlay_lock_action.setToolTip(
            "Unlock to move it (drag) and resize it (bottom-right corner); lock it again so "
            "clicks reach the game"
        )
        self.overlay_menu.addSection("Opacity")
        self.overlay_opacity = QSlider(Qt.Orientation.Horizontal)
        self.overlay_opacity.setObjectName("overlayOpacity")
        self.overlay_opacity.setRange(20, 100)
        self.overlay_opacity.setAccessibleName("Overlay opacity")
        opacity_action = QWidgetAction(self.overlay_menu)
        opacity_action.setDefaultWidget(self.overlay_opacity)
        self.overlay_menu.addAction(opacity_action)
        self.overlay_action = self.overlay_menu.menuAction()
        self.overlay_action.setObjectName("overlay_action")
        self.addAction(self.overlay_show_action)  # its shortcut works without opening the menu
        for menu_action in (self.server_menu_action, self.overlay_action, self.help_action):
            bar.addAction(menu_action)
            button = bar.widgetForAction(menu_action)
            if isinstance(button, QToolButton):
                button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        # centre
        self.banner = Banner()
        self.tree = ChannelTree()
        self.controls = ChannelControls(controller)
        self.meter = LevelMeter()
        self.meter.set_threshold(controller.prefs.transmit.vad_threshold)
        self.chat = ChatPanel()
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(6, 6, 6, 6)
        left_layout.addWidget(self.tree, 1)
        left_layout.addWidget(self.controls)
        meter_row = QHBoxLayout()
        mic = QLabel("Mic")
        mic.setBuddy(self.meter)
        meter_row.addWidget(mic)
        meter_row.addWidget(self.meter, 1)
        left_layout.addLayout(meter_row)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.chat)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        centre = QWidget()
        layout = QVBoxLayout(centre)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.banner)
        layout.addWidget(self.splitter, 1)
        self.setCentralWidget(centre)
        # status bar
        self.state_label = QLabel("Not connected")
        self.state_label.setTextFormat(
            Qt.TextFormat.PlainText
        )  # server and user text: never markup
        self.state_label.setObjectName("stateLabel")
        self.link_label = QLabel("")
        self.link_label.setTextFormat(Qt.TextFormat.PlainText)  # server and user text: never markup
        self.link_label.setObjectName("linkLabel")
        self.link_label.setToolTip(
            "Voice path: UDP (best) or TLS fallback when UDP is blocked; round-trip time to the "
            "server; packet loss; voice bitrate sent and received"
        )
        self.notice_label = QLabel("")
        self.notice_label.setTextFormat(
            Qt.TextFormat.PlainText
        )  # server and user text: never markup
        self.notice_label.setObjectName("noticeLabel")
        self._notice_timer = QTimer(self)
        self._notice_timer.setSingleShot(True)
        self._notice_timer.timeout.connect(lambda: self.notice_label.setText(""))
        self.warning_label = QLabel("")
        self.warning_label.setTextFormat(
            Qt.TextFormat.PlainText
        )  # server and user text: never markup
        self.warning_label.setObjectName("warningLabel")
        self.hotkeys_label = QLabel("")
        self.hotkeys_label.setObjectName("hotkeysLabel")
        status = self.statusBar()
        status.addWidget(self.state_label)
        status.addWidget(self.link_label)
        status.addWidget(self.notice_label, 1)
        status.addPermanentWidget(self.warning_label)
        status.addPermanentWidget(self.hotkeys_label)
        # wiring
        self.connect_action.triggered.connect(self.connect_requested)
        self.disconnect_action.triggered.connect(controller.disconnect_server)
        self.mute_action.toggled.connect(controller.set_muted)
        self.deafen_action.toggled.connect(controller.set_deafened)
        controller.self_state_changed.connect(self._self_state)
        self.settings_action.triggered.connect(self.settings_requested)
        self.quit_action.triggered.connect(self._quit)
        self.tree.itemDoubleClicked.connect(self._double_clicked)
        self.tree.itemActivated.connect(self._double_clicked)
        self.tree.currentItemChanged.connect(lambda *_: self._show_controls())
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.chat.send_requested.connect(controller.send_text)
        controller.model_changed.connect(self.refresh)
        controller.connection_state.connect(self._state_changed)
        controller.stats_changed.connect(lambda s: self.link_label.setText(stats_text(s)))
        controller.banner.connect(self.banner.show_text)
        controller.message.connect(self._message)
        controller.text_received.connect(self._text_received)
        controller.chat_notice.connect(self.chat.add_notice)
        controller.text_sent.connect(self.chat.message_sent)
        controller.text_not_sent.connect(self.chat.send_failed)
        controller.levels.connect(self._levels)
        controller.audio_status.connect(self._audio_status)
        controller.hotkeys_status.connect(self._hotkeys_status)
        controller.prefs_changed.connect(
            lambda p: self.meter.set_threshold(p.transmit.vad_threshold)
        )
        self._warnings: dict[str, str] = {}
        self._open_error_box: QMessageBox | None = None
        self._errors_in_box = 0
        self._joined: tuple[tuple[int, str], ...] = ()
        self._audio_status(controller.audio_problem)
        self._hotkeys_status(controller.hotkeys)
        if controller.keylog_warning:  # for as long as this run writes keys to a file
            self._warnings["keylog"] = "⚠ KEY LOG ON"
            self.warning_label.setToolTip(controller.keylog_warning)
            self._show_warnings()
        self.disconnect_action.setEnabled(False)

    # -- rendering ---------------------------------------------------------------------------
    def set_hosting(self, on: bool) -> None:
        """Host for friends is on: the toolbar says so (its dialog has Stop hosting)."""
        self.host_action.setText("Hosting for friends…" if on else "Host for friends…")
        self.host_action.setToolTip(
            "Your server is open to the internet: the invite link, and Stop hosting"
            if on
            else "Run a server on this computer that friends can reach over the internet, and "
            "get an invite link to send them"
        )

    def refresh(self) -> None:
        model = self.controller.model
        self.create_channel_action.setVisible(self.controller.is_admin)
        colour = self._theme.TALKING_COLOUR if hasattr(self._theme, "TALKING_COLOUR") else None
        from PySide6.QtGui import QBrush, QColor

        brush = QBrush(colour if colour is not None else QColor("#3ba55d"))
        joined = model.joined()
        if joined != self._joined:
            self._joined = joined
            self.chat.set_channels(list(joined))
        self.tree.render(model.rows(), brush)
        self._show_controls()
        me = model.my_name
        if me:
            self.chat.set_own_name(me)
        for cid, _name in joined:
            self.chat.set_members(cid, list(model.member_names(cid)))
        self.chat.set_colours({row.id: row.colour for row in model.rows()})
        self._update_title()
        self._key_warning(model.flagged())

    def _key_warning(self, holders: Sequence[KeyHolder]) -> None:
        """The status bar's key warning while any member's key is changed or blocked."""
        flagged = [h.name for h in holders]
        if flagged:
            self._warnings["keys"] = "⚠ key warning"
            self.warning_label.setToolTip(
                plain_tip(
                    f"Identity key changed: {', '.join(flagged)}. Compare safety numbers "
                    "(right-click the user → Safety number…)."
                )
            )
        else:
            self._warnings.pop("keys", None)
        self._show_warnings()

    def _show_controls(self) -> None:
        cid = self.tree.selected()
        self.controls.show_row(None if cid is None else self.controller.model.row(cid))
        if cid is not None:
            row = self.controller.model.row(cid)
            if row is not None and any(cid == j for j, _ in self._joined):
                self.chat.show_channel(cid)

    def _update_title(self) -> None:
        bookmark = self.controller.bookmark
        if bookmark is None or self.controller.state != "ready":
            self.setWindowTitle("voipclient")
        else:
            self.setWindowTitle(f"{bookmark.label or bookmark.key} — voipclient")

    # -- from the controller -----------------------------------------------------------------
    def _state_changed(self, state: str, detail: str) -> None:
        text = {
            "connecting": "Connecting…",
            "awaiting_approval": "Waiting for you to trust the server's key",
            "logging_in": "Logging in…",
            "ready": "Connected",
            "waiting": "Reconnecting…",
            "refused": "Refused",
            "closed": "Not connected",
            "unreachable": "Could not connect",
        }.get(state, state)
        self.state_label.setText(text)
        self.state_label.setToolTip(plain_tip(detail))
        self.disconnect_action.setEnabled(state not in {"closed", "refused", "unreachable"})
        if state == "refused":
            self.banner.show_text(f"Connection refused: {detail}")
        if state != "ready":
            self.link_label.setText("")
        self._update_title()

    def notify(self, text: str, ms: int = 15_000) -> None:
        """A passing notice in the status bar (next to, not over, the connection figures)."""
        self.notice_label.setText(text)
        self.notice_label.setToolTip(plain_tip(text))
        self._notice_timer.start(ms)

    def _message(self, level: str, text: str) -> None:
        self.notify(text)
        if level == "error":
            log.error("told the user: %s", text)
            self._error_box(text)
        if "identity key changed" in text:
            self.warning_label.setToolTip(plain_tip(text))

    def _error_box(self, text: str) -> None:
        """One message box for errors: while it is open, a new error replaces its text and says
        how many came before (an error that repeats must not stack up windows nobody closes)."""
        box = self._open_error_box
        if box is not None and box.isVisible():
            self._errors_in_box += 1
            box.setText(
                f"{text}\n\n({self._errors_in_box - 1} earlier errors since this box opened)"
            )
            return
        box = QMessageBox(QMessageBox.Icon.Warning, "voipclient", text, parent=self)
        box.setTextFormat(Qt.TextFormat.PlainText)  # names and server text: never markup
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(self._error_box_closed)
        self._open_error_box = box
        self._errors_in_box = 1
        box.open()

    def _error_box_closed(self) -> None:
        self._open_error_box = None

    def _show_warnings(self) -> None:
        self.warning_label.setText("  ".join(self._warnings.values()))

    def _audio_status(self, problem: str) -> None:
        if problem:
            self._warnings["audio"] = "⚠ audio"
            self.warning_label.setToolTip(problem)
            self.notify(problem, 30_000)
        else:
            self._warnings.pop("audio", None)
        self._show_warnings()

    def _hotkeys_status(self, text: str) -> None:
        self.hotkeys_label.setText(hotkeys_summary(text))
        control = self.controller.control_status
        self.hotkeys_label.setToolTip(
            f"Push-to-talk keys: {text}" + (f"\nControl socket: {control}" if control else "")
        )

    def _levels(self, level_in: float, _level_out: float, sending: bool, speech: float) -> None:
        self.meter.set_levels(level_in, speech, sending)

    def _text_received(self, channel_id: int, author: str, text: str, ms: int, own: bool) -> None:
        self.chat.add_message(channel_id, author, text, ms, own=own)

    # -- user actions ------------------------------------------------------------------------
    def _self_state(self, muted: bool, deafened: bool) -> None:
        """The controller's state → the check marks (without feeding it back)."""
        for action, on in ((self.mute_action, muted), (self.deafen_action, deafened)):
            action.blockSignals(True)
            action.setChecked(on)
            action.blockSignals(False)

    def _double_clicked(self, item: QTreeWidgetItem, _column: int = 0) -> None:
        if item.data(0, ROLE_KIND) != "channel":
            return
        self.tree.setCurrentItem(item)
        self.controls.toggle_join(int(item.data(0, ROLE_ID)))

    def _context_menu(self, pos: Any) -> None:
        item = self.tree.itemAt(pos)
        if item is None:
            return
        menu = self.build_context_menu(item)
        if menu is not None:
            menu.exec(self.tree.viewport().mapToGlobal(pos))
            menu.deleteLater()

    def build_context_menu(self, item: QTreeWidgetItem) -> QMenu | None:
        """The channel's or the user's context menu (built here so tests can inspect it)."""
        kind, ident = item.data(0, ROLE_KIND), int(item.data(0, ROLE_ID))
        model, ctl = self.controller.model, self.controller
        menu = QMenu(self)
        if kind == "channel":
            row = model.row(ident)
            if row is None:
                return None
            join = menu.addAction("Leave channel" if row.joined else "Join channel")
            # actions capture ids, never tree items: the tree is rebuilt while a menu is open
            join.triggered.connect(lambda: self.controls.toggle_join(ident))
            mute = menu.addAction("Mute channel")
            mute.setCheckable(True)
            mute.setChecked(row.muted)
            mute.toggled.connect(lambda on: ctl.set_channel_muted(ident, on))
            hot = menu.addAction("Hot mic channel")
            hot.setCheckable(True)
            hot.setChecked(row.hot_mic)
            hot.setEnabled(row.joined and row.may_speak)
            hot.toggled.connect(lambda on: ctl.set_hot_mic(ident if on else None))
            if row.ptt_keys:
                clear = menu.addAction(f"Remove push-to-talk key ({', '.join(row.ptt_keys)})")
                clear.triggered.connect(lambda: ctl.set_channel_binding(ident, None))
            menu.addSection("Volume")
            menu.addAction(self._slider_action(menu, row.volume, ctl.set_channel_volume, ident))
            place = menu.addMenu("Placement")
            place.setObjectName("placementMenu")
            chosen = nearest_placement(row.pan)
            for i, (label, pan) in enumerate(PLACEMENTS):
                action = place.addAction(label)
                action.setCheckable(True)
                action.setChecked(i == chosen)
                action.triggered.connect(lambda _c=False, p=pan: ctl.set_channel_pan(ident, p))
            priority = menu.addAction("Priority channel (ducks the others)")
            priority.setCheckable(True)
            priority.setChecked(row.priority)
            priority.toggled.connect(lambda on: ctl.set_priority_channel(ident if on else None))
            if ctl.is_admin:
                menu.addSection("Administration")
                menu.addAction("Create a channel inside…").triggered.connect(
                    lambda: self.create_channel(ident)
                )
                menu.addAction("Edit channel…").triggered.connect(lambda: self.edit_channel(ident))
                menu.addAction("Delete channel…").triggered.connect(
                    lambda: self.delete_channel(ident)
                )
            return menu
        user = model.roster.users.get(ident)
        if user is None:
            return None
        member = next((m for r in model.rows() for m in r.members if m.sender_id == ident), None)
        if member is None or member.is_me:
            menu.addAction("This is you").setEnabled(False)
            return menu
        mute = menu.addAction("Mute for me")
        mute.setCheckable(True)
        mute.setChecked(member.local_muted)
        mute.toggled.connect(lambda on: ctl.set_user_muted(ident, on))
        safety = menu.addAction("Safety number…")
        safety.triggered.connect(lambda: self.show_safety_number(ident))
        verified = menu.addAction("Mark as verified")
        verified.setCheckable(True)
        verified.setChecked(member.trust == "verified")
        key = member.ik_pub  # the key the E2E layer pinned for this member
        verified.toggled.connect(lambda on: ctl.set_verified(ident, on, key))
        menu.addSection("Volume")
        menu.addAction(self._slider_action(menu, member.volume, ctl.set_user_volume, ident))
        if ctl.is_admin:
            menu.addSection("Administration")
            move = menu.addMenu("Move to")
            move.setObjectName("moveMenu")
            mine = model.roster.channels_of(ident)
            for row in model.rows():
                target = move.addAction(row.name)
                target.setEnabled(row.id not in mine)
                target.triggered.connect(
                    lambda _c=False, cid=row.id: ctl.admin_user("move", ident, channel_id=cid)
                )
            menu.addAction("Kick…").triggered.connect(lambda: self.act_on_user("kick", ident))
            menu.addAction("Ban…").triggered.connect(lambda: self.act_on_user("ban", ident))
        return menu

    # -- administration (shown to the server's administrators) ---------------------------------
    def create_channel(self, parent_id: int | None = None) -> QDialog:
        from voipclient.ui.admin_dialogs import ChannelEditDialog

        ctl = self.controller
        parent_name = ctl.model.channel_name(parent_id) if parent_id is not None else None
        dialog = ChannelEditDialog(parent_name=parent_name, parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def accepted() -> None:
            e = dialog.edit()
            fields: dict[str, Any] = {"name": e.name, "parent": parent_id}
            if e.description:
                fields["description"] = e.description
            if e.password:
                fields["password"] = e.password
            if e.speakers is not None:
                fields["speakers"] = list(e.speakers)
            ctl.admin_channel("create", **fields)

        dialog.accepted.connect(accepted)
        self.admin_dialog = dialog
        dialog.open()
        return dialog

    def edit_channel(self, channel_id: int) -> QDialog | None:
        from voipclient.ui.admin_dialogs import ChannelEditDialog

        ctl = self.controller
        channel = ctl.model.roster.channels.get(channel_id)
        if channel is None:
            return None
        roster = ctl.model.roster
        inside = {channel_id}
        grew = True
        while grew:  # the channel and every channel inside it: not a place to move it to
            more = {c.id for c in roster.channels.values() if c.parent in inside}
            grew = not more <= inside
            inside |= more
        parents = [(row.id, row.name) for row in ctl.model.rows() if row.id not in inside]
        dialog = ChannelEditDialog(
            current=channel.name,
            description=channel.description,
            has_password=channel.password_protected,
            parents=parents,
            current_parent=channel.parent,
            parent=self,
        )
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def accepted() -> None:
            e = dialog.edit()
            fields: dict[str, Any] = {}
            if e.name is not None:
                fields["name"] = e.name
            if e.description is not None:
                fields["description"] = e.description
            if e.password is not None:
                fields["password"] = e.password
            if e.speakers is not None:
                fields["speakers"] = list(e.speakers)
            elif e.everyone_speaks:
                fields["everyone_speaks"] = True
            if e.parent is not None:
                fields["parent"] = e.parent
            ctl.admin_channel("update", channel_id, **fields)

        dialog.accepted.connect(accepted)
        self.admin_dialog = dialog
        dialog.open()
        return dialog

    def delete_channel(self, channel_id: int) -> QMessageBox | None:
        ctl = self.controller
        row = ctl.model.row(channel_id)
        if row is None:
            return None
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            "Delete channel",
            f"Delete {row.name}? Everyone in it ({len(row.members)}) leaves it; its chat "
            "history stays with each of you.",
            QMessageBox.StandardButton.Cancel,
            self,
        )
        box.setObjectName("deleteChannelQuestion")
        box.setTextFormat(Qt.TextFormat.PlainText)
        delete = box.addButton("Delete", QMessageBox.ButtonRole.DestructiveRole)
        delete.setObjectName("deleteChannelYes")
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def answered() -> None:
            if box.clickedButton() is delete:
                ctl.admin_channel("delete", channel_id)

        box.finished.connect(answered)
        self.admin_dialog = box
        box.open()
        return box

    def act_on_user(self, action: str, sender_id: int) -> QDialog | None:
        from voipclient.ui.admin_dialogs import UserActionDialog

        ctl = self.controller
        name = ctl.model.user_name(sender_id)
        if name is None:
            return None
        dialog = UserActionDialog(action, name, parent=self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: ctl.admin_user(action, sender_id, reason=dialog.reason()))
        self.admin_dialog = dialog
        dialog.open()
        return dialog

    def _slider_action(self, menu: QMenu, value: float, apply: Any, ident: int) -> QWidgetAction:
        slider = QSlider(Qt.Orientation.Horizontal)
        slider.setRange(0, 200)
        slider.setValue(round(value * 100))
        slider.setMinimumWidth(160)
        slider.setToolTip("Volume for you (100 % = unchanged)")
        slider.setAccessibleName("Volume")
        slider.sliderReleased.connect(lambda: apply(ident, slider.value() / 100))
        slider.valueChanged.connect(lambda v: slider.setToolTip(f"{v} %"))
        action = QWidgetAction(menu)
        action.setDefaultWidget(slider)
        return action

    def show_safety_number(self, sender_id: int) -> QDialog | None:
        holder = self.controller.model.holder(sender_id)
        if holder is None:
            return None
        key = holder.ik_pub  # verify the key this number was computed from, not a later one
        number = self.controller.safety_number(sender_id, key)
        if number is None:
            return None
        dialog = SafetyNumberDialog(holder.name, number, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.verify.connect(lambda on: self.controller.set_verified(sender_id, on, key))
        dialog.open()
        return dialog

    def _quit(self) -> None:
        self.really_quit = True
        self.close()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.tray_available and self.controller.prefs.close_to_tray and not self.really_quit:
            self.hide()
            event.ignore()
            return
        self.quit_requested.emit()
        event.accept()

    def restore_geometry(self, geometry: QByteArray | None, state: QByteArray | None) -> None:
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)


class SafetyNumberDialog(QDialog):
    """The 60-digit number to compare with the other person, and the verify switch."""

    verify = Signal(bool)

    def __init__(self, name: str, number: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("safetyNumberDialog")
        self.setWindowTitle(f"Safety number with {name}")
        text = QLabel(
            f"Compare this number with {name} in person or over another channel you trust. If it "
            "matches, nobody — not even the server — can listen in or pretend to be them."
        )
        text.setTextFormat(Qt.TextFormat.PlainText)  # names are other people's text
        text.setWordWrap(True)
        self.number = QLabel(number)
        self.number.setTextFormat(Qt.TextFormat.PlainText)
        self.number.setObjectName("safetyNumber")
        self.number.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = self.number.font()
        font.setFamily("monospace")
        font.setPointSizeF(font.pointSizeF() * 1.3)
        self.number.setFont(font)
        buttons = QDialogButtonBox()
        self.verify_button = buttons.addButton(
            "Mark verified", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.verify_button.setObjectName("markVerified")
        copy = buttons.addButton("Copy", QDialogButtonBox.ButtonRole.ActionRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Close)
        copy.clicked.connect(lambda: QApplication.clipboard().setText(number))
        self.verify_button.clicked.connect(lambda: self.verify.emit(True))
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(text)
        layout.addWidget(self.number)
        layout.addWidget(buttons)
