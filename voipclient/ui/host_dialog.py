""" "Host a server for friends": open the local server's port on the router and hand out a link.

The app starts the embedded server on all interfaces first (:class:`~voipclient.server.embedded.
EmbeddedServer` with ``host="0.0.0.0"``), then shows :class:`HostDialog` with its port and pin.
The dialog

1. says what listening on all interfaces means (anyone who reaches this computer on the port can
   try to connect; the pin in the link protects friends from impostors);
2. asks the router to forward the port (``map_ports``, by default
   :func:`voipclient.portmap.open_ports`) on a worker thread, showing live status, then either
   the router and the public address, or the problem, what to forward by hand, and the LAN
   address as the fallback;
3. shows the invite link (public address when the port was opened, else the LAN address, with a
   note that such a link only works on the same network), a *Copy link* button and the link as a
   QR code; the channel combo changes both.

The dialog never starts or stops the server. *Close* (also Escape or the window's close button)
keeps hosting: the port mapping stays, available from :meth:`HostDialog.mapping` and the
:attr:`HostDialog.finished_mapping` signal, and the app closes it when the server stops. *Stop
hosting* releases the mapping (on a background thread: a router may take seconds) and emits
:attr:`HostDialog.stop_requested` for the app to stop the server. When the dialog closes while
the router is still being asked, the late answer is ignored, and a mapping made by then is
released at once (the user never saw its link). A dialog is for one use: do not reopen it.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final

import segno
from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QFontDatabase, QGuiApplication, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from voipclient.net.invite import Invite, InviteError, format_invite
from voipclient.net.portmap import host_port
from voipclient.portmap import PortMapping, PortMapResult, lan_address, open_ports

__all__ = [
    "QR_BORDER",
    "QR_ERROR",
    "QR_SCALE",
    "HostDialog",
    "MapPorts",
    "qr_code",
    "qr_pixmap",
]

log = logging.getLogger("voipclient.ui.host_dialog")

#: Opens the port on the router (blocking; called on a worker thread).
MapPorts = Callable[[int], tuple[PortMapResult, PortMapping | None]]

#: QR error correction level ("m": 15 % of the code may be lost, fine on a screen).
QR_ERROR: Final = "m"
#: Pixels per QR module, and the quiet zone around the code in modules (the standard's 4).
QR_SCALE: Final = 4
QR_BORDER: Final = 4
#: The combo entry for a link without a channel.
NO_CHANNEL_TEXT: Final = "(none: friends land in the lobby)"

_ERROR_STYLE: Final = "color: #d9534f;"
_OK_STYLE: Final = "color: #3c9a5f;"
_WARNING_STYLE: Final = "color: #e0a030;"


def qr_code(text: str) -> segno.QRCode:
    """The QR code the dialog shows for ``text`` (a regular QR code, never a Micro QR)."""
    return segno.make(text, error=QR_ERROR, micro=False, boost_error=False)


def qr_pixmap(text: str, scale: int = QR_SCALE) -> QPixmap:
    """``text`` as a black-on-white QR code image, ``scale`` pixels per module."""
    buffer = io.BytesIO()
    qr_code(text).save(
        buffer, kind="png", scale=scale, border=QR_BORDER, dark="#000000", light="#ffffff"
    )
    pixmap = QPixmap()
    pixmap.loadFromData(buffer.getvalue(), "PNG")
    return pixmap


def _default_map_ports(port: int) -> tuple[PortMapResult, PortMapping | None]:
    return open_ports(port)


def _release(mapping: PortMapping | None) -> None:
    """Close ``mapping`` off the GUI thread (the router may take seconds to answer)."""
    if mapping is not None:
        threading.Thread(target=mapping.close, name="portmap-release", daemon=True).start()


def _wrapped(name: str, accessible: str, *, rich: bool = False) -> QLabel:
    label = QLabel()
    label.setObjectName(name)
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setAccessibleName(accessible)
    return label


class _MappingJob(QObject):
    """One ``map_ports`` call on a worker thread; :attr:`done` is delivered on the GUI thread.

    Parentless and kept alive by its thread, so a dialog deleted meanwhile leaves nothing behind
    that the thread could touch. After :meth:`cancel` nothing is emitted and a mapping that
    arrives is released.
    """

    #: (this job, PortMapResult, PortMapping | None), emitted on the worker thread.
    done = Signal(object)

    def __init__(self, port: int, map_ports: MapPorts) -> None:
        super().__init__()
        self._port = port
        self._map_ports = map_ports
        self._lock = threading.Lock()
        self._cancelled = False

    def start(self) -> None:
        threading.Thread(target=self._run, name="portmap-open", daemon=True).start()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True

    @property
    def cancelled(self) -> bool:
        with self._lock:
            return self._cancelled

    def _run(self) -> None:
        mapping: PortMapping | None = None
        try:
            result, mapping = self._map_ports(self._port)
        except Exception as exc:  # a map_ports that raises is a bug; the user still gets words
            log.warning("opening the port failed", exc_info=True)
            result = PortMapResult(False, None, None, f"Asking the router failed: {exc}")
        with self._lock:
            if not self._cancelled:
                self.done.emit((self, result, mapping))
                return
        log.info("port mapping finished after the host dialog closed; released")
        _release(mapping)


class HostDialog(QDialog):
    """Share the local server with friends: router port mapping, invite link, QR code.

    ``port``/``pin``: the running server's (it already listens on all interfaces).
    ``channel``: the channel to put in the link first (None: no channel); ``channels``: the
    names to offer in a combo. ``map_ports``: opens ``port`` on the router, blocking (run on a
    worker thread). ``lan_ip``: this computer's LAN address (the fallback host).
    """

    #: The mapping attempt's outcome: ``(PortMapResult, PortMapping | None)``, on the GUI thread.
    #: Not emitted when the dialog closed first.
    finished_mapping = Signal(object)
    #: The user pressed *Stop hosting*: the app should stop the server (the dialog has released
    #: the port mapping already).
    stop_requested = Signal()

    def __init__(
        self,
        port: int,
        pin: str,
        channel: str | None = None,
        *,
        channels: Sequence[str] = (),
        map_ports: MapPorts | None = None,
        lan_ip: Callable[[], str] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("hostDialog")
        self.setWindowTitle("Host a server for friends")
        self.setMinimumWidth(720)
        self._port = port
        self._pin = pin
        self._map_ports: MapPorts = map_ports or _default_map_ports
        self._lan_ip = (lan_ip or lan_address)()
        self._result: PortMapResult | None = None
        self._mapping: PortMapping | None = None
        self._job: _MappingJob | None = None
        self._closed = False
        self._link = ""
        self._build(channel, channels)
        self._update_link()
        self.start_mapping()

    # -- construction ---------------------------------------------------------------------------
    def _build(self, channel: str | None, channels: Sequence[str]) -> None:
        port = self._port
        self.exposure_label = _wrapped("hostExposure", "What hosting means", rich=True)
        self.exposure_label.setText(
            f"<b>Your server now listens on all network interfaces, port {port}.</b> Anyone "
            "who can reach this computer on that port can try to connect. The server's key "
            "fingerprint (pin) is part of the invite link, so your friends' apps know they "
            "reach your server and not an impostor. Share the link only with people you want "
            "in: the server has no password."
        )
        self.exposure_label.setFrameShape(QFrame.Shape.StyledPanel)
        self.exposure_label.setMargin(8)

        self.status_label = _wrapped("hostStatus", "Router status")
        self.warning_label = _wrapped("hostWarning", "Router warning")
        self.warning_label.setStyleSheet(_WARNING_STYLE)
        self.warning_label.hide()
        self.manual_label = _wrapped("manualForwarding", "Forwarding the port by hand")
        self.manual_label.hide()
        self.retry_button = QPushButton("&Try again")
        self.retry_button.setObjectName("retryMappingButton")
        self.retry_button.setAutoDefault(False)
        self.retry_button.setToolTip(f"Ask the router again to forward port {port}")
        self.retry_button.setAccessibleName("Ask the router again")
        self.retry_button.clicked.connect(self.start_mapping)
        self.retry_button.hide()
        status_row = QHBoxLayout()
        status_row.addWidget(self.status_label, 1)
        status_row.addWidget(self.retry_button, 0, Qt.AlignmentFlag.AlignTop)

        self.channel_combo = QComboBox()
        self.channel_combo.setObjectName("inviteChannel")
        self.channel_combo.setAccessibleName("Channel in the link")
        self.channel_combo.setToolTip("The channel your friends join when they open the link")
        self.channel_combo.addItem(NO_CHANNEL_TEXT, None)
        names = list(dict.fromkeys(channels))
        if channel is not None and channel not in names:
            names.insert(0, channel)
        for name in names:
            self.channel_combo.addItem(name, name)
        if channel is not None:
            self.channel_combo.setCurrentIndex(self.channel_combo.findData(channel))
        self.channel_combo.currentIndexChanged.connect(self._update_link)
        channel_label = QLabel("C&hannel:")
        channel_label.setObjectName("inviteChannelLabel")
        channel_label.setBuddy(self.channel_combo)

        self.link_edit = QLineEdit()
        self.link_edit.setObjectName("inviteLink")
        self.link_edit.setReadOnly(True)
        self.link_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.link_edit.setAccessibleName("Invite link")
        self.link_edit.setToolTip("Send this link to your friends; voipclient opens it")
        link_label = QLabel("Invite &link:")
        link_label.setObjectName("inviteLinkLabel")
        link_label.setBuddy(self.link_edit)
        self.copy_button = QPushButton("&Copy link")
        self.copy_button.setObjectName("copyInviteButton")
        self.copy_button.setAutoDefault(False)
        self.copy_button.setToolTip("Copy the invite link to the clipboard")
        self.copy_button.setAccessibleName("Copy the invite link")
        self.copy_button.clicked.connect(self.copy_link)
        link_row = QHBoxLayout()
        link_row.addWidget(self.link_edit, 1)
        link_row.addWidget(self.copy_button)

        self.note_label = _wrapped("inviteNote", "About the link")

        self.qr_label = QLabel()
        self.qr_label.setObjectName("inviteQr")
        self.qr_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.qr_label.setAccessibleName("Invite link as a QR code")
        self.qr_label.setToolTip("The invite link as a QR code, to scan with a phone")

        form = QFormLayout()
        form.addRow(channel_label, self.channel_combo)
        if self.channel_combo.count() == 1:  # nothing to choose: no combo
            channel_label.hide()
            self.channel_combo.hide()
        form.addRow(link_label, link_row)

        self.stop_button = QPushButton("&Stop hosting")
        self.stop_button.setObjectName("stopHostingButton")
        self.stop_button.setAutoDefault(False)
        self.stop_button.setToolTip("Stop the server and remove the port forwarding")
        self.stop_button.clicked.connect(self.stop_hosting)
        self.close_button = QPushButton("Cl&ose")
        self.close_button.setObjectName("closeButton")
        self.close_button.setToolTip("Close this window; the server keeps running")
        self.close_button.setDefault(True)
        buttons = QDialogButtonBox()
        buttons.addButton(self.stop_button, QDialogButtonBox.ButtonRole.DestructiveRole)
        buttons.addButton(self.close_button, QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.accept)

        layout = QVBoxLayout(self)
        layout.addWidget(self.exposure_label)
        layout.addLayout(status_row)
        layout.addWidget(self.warning_label)
        layout.addWidget(self.manual_label)
        invite = QVBoxLayout()
        invite.addLayout(form)
        invite.addWidget(self.note_label)
        invite.addStretch(1)
        invite_row = QHBoxLayout()
        invite_row.addLayout(invite, 1)
        invite_row.addWidget(self.qr_label, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(invite_row)
        layout.addWidget(buttons)
        self.close_button.setFocus()

    # -- public ---------------------------------------------------------------------------------
    def mapping(self) -> PortMapping | None:
        """The router's port mapping, or None (not made yet, failed, or released)."""
        return self._mapping

    def result_of_mapping(self) -> PortMapResult | None:
        """The last mapping attempt's result, or None while the first one runs."""
        return self._result

    def link(self) -> str:
        """The invite link shown ("" when the pin or channel cannot be put in a link)."""
        return self._link

    def lan_ip(self) -> str:
        return self._lan_ip

    def busy(self) -> bool:
        """Whether the router is being asked right now."""
        return self._job is not None

    @Slot()
    def start_mapping(self) -> None:
        """Ask the router to forward the port (again), on a worker thread."""
        if self._closed or self._job is not None or self._mapping is not None:
            return
        self._show_status(f"Opening port {self._port} on your router…", "")
        self.warning_label.hide()
        self.manual_label.hide()
        self.retry_button.hide()
        job = _MappingJob(self._port, self._map_ports)
        job.done.connect(self._mapping_done)
        self._job = job
        job.start()

    @Slot()
    def copy_link(self) -> None:
        """Put the invite link on the clipboard."""
        if self._link:
            QGuiApplication.clipboard().setText(self._link)
            self.copy_button.setText("&Copied")

    @Slot()
    def stop_hosting(self) -> None:
        """Release the port mapping, tell the app to stop the server, close."""
        mapping, self._mapping = self._mapping, None
        _release(mapping)
        self.stop_requested.emit()
        self.reject()

    def done(self, result: int) -> None:
        self._closed = True
        job, self._job = self._job, None
        if job is not None:
            job.cancel()
        super().done(result)

    # -- the router's answer --------------------------------------------------------------------
    @Slot(object)
    def _mapping_done(self, outcome: tuple[_MappingJob, PortMapResult, PortMapping | None]) -> None:
        job, result, mapping = outcome
        if self._closed or job is not self._job:
            _release(mapping)  # closed between the emit and its delivery
            return
        self._job = None
        self._result = result
        self._mapping = mapping if result.mapped else None
        if mapping is not None and not result.mapped:
            _release(mapping)
        port = self._port
        if result.mapped:
            where = result.gateway or "your router"
            public = (
                f"; public address {result.external_ip}"
                if result.external_ip
                else "; its public address is unknown"
            )
            self._show_status(f"✔ Port {port} opened on {where}{public}.", _OK_STYLE)
        else:
            self._show_status(
                f"✖ Could not open port {port} on your router. {result.problem}", _ERROR_STYLE
            )
            self.manual_label.setText(
                result.manual_instructions(port, self._lan_ip)
                + f" Until then, friends on your network can use {host_port(self._lan_ip, port)}."
            )
            self.manual_label.show()
            self.retry_button.show()
        self.warning_label.setText(result.warning)
        self.warning_label.setVisible(bool(result.warning))
        self._update_link()
        self._fit_height()
        self.finished_mapping.emit((result, self._mapping))

    # -- the link -------------------------------------------------------------------------------
    def _public_host(self) -> str | None:
        result = self._result
        return result.external_ip if result is not None and result.mapped else None

    @Slot()
    def _update_link(self) -> None:
        public = self._public_host()
        host = public or self._lan_ip
        channel = self.channel_combo.currentData()
        try:
            self._link = format_invite(Invite(host, self._port, self._pin, channel))
        except InviteError as exc:
            self._link = ""
            self.link_edit.clear()
            self.qr_label.clear()
            self.copy_button.setEnabled(False)
            self.note_label.setText(f"No invite link: {exc}")
            self.note_label.setStyleSheet(_ERROR_STYLE)
            return
        self.link_edit.setText(self._link)
        self.link_edit.setCursorPosition(0)
        self.copy_button.setEnabled(True)
        self.copy_button.setText("&Copy link")
        pixmap = qr_pixmap(self._link)
        self.qr_label.setPixmap(pixmap)
        self.qr_label.setFixedSize(pixmap.size())
        self.note_label.setStyleSheet("")
        if public is not None:
            self.note_label.setText(
                f"This link uses your public address {public}: friends anywhere on the "
                "internet can connect with it."
            )
        else:
            self.note_label.setText(
                f"This link uses your local network address {self._lan_ip}: it only works for "
                "friends on the same network as this computer."
            )

    def _fit_height(self) -> None:
        """Grow to show the wrapped texts that just appeared (a top-level window does not)."""
        layout = self.layout()
        if layout is not None and self.isVisible():
            needed = layout.totalHeightForWidth(self.width())
            if needed > self.height():
                self.resize(self.width(), needed)

    def _show_status(self, text: str, style: str) -> None:
        self.status_label.setText(text)
        self.status_label.setStyleSheet(style)
