"""The "Host a server for friends" dialog on a real display, against a FAKE router.

Port mapping goes through the real :func:`voipclient.portmap.open_ports` to the fake UPnP IGD of
``tests/integration/net/fake_igd.py`` on loopback (its description URL, never a search that
could reach a real router). The LAN address is fixed by the test (``lan_ip=``), so the links
and the instructions are predictable.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any, cast

import pytest
import segno
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from tests.integration.net.fake_igd import FakeIgd, FakeMapping
from voipclient.net.invite import Invite, parse_invite
from voipclient.portmap import PortMapping, PortMapResult, open_ports
from voipclient.ui.host_dialog import QR_BORDER, QR_SCALE, HostDialog, MapPorts

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

PORT = 64738
PIN = "sha256/kiQOXEzRM1qxmQW0hU09+VMZYcRZLmLyahBuqFO763w="
LAN_IP = "192.168.1.23"
PUBLIC_IP = "81.2.69.142"  # what the fake router reports
CHANNELS = ("General", "Squad A", "AFK")
LEFT = Qt.MouseButton.LeftButton


@pytest.fixture
def igd() -> Iterator[FakeIgd]:
    fake = FakeIgd().start()
    yield fake
    fake.stop()


def via(igd: FakeIgd) -> MapPorts:
    return lambda port: open_ports(port, location=igd.location)


def make(
    qtbot: Any,
    map_ports: MapPorts,
    *,
    channel: str | None = "Squad A",
    add: bool = True,
) -> tuple[HostDialog, list[tuple[PortMapResult, PortMapping | None]]]:
    """A shown dialog and the list its ``finished_mapping`` signals land in."""
    dialog = HostDialog(
        PORT, PIN, channel, channels=CHANNELS, map_ports=map_ports, lan_ip=lambda: LAN_IP
    )
    finished: list[tuple[PortMapResult, PortMapping | None]] = []
    dialog.finished_mapping.connect(finished.append)
    if add:
        qtbot.addWidget(dialog)
    dialog.open()
    qtbot.waitExposed(dialog)
    return dialog, finished


def w(dialog: QDialog, kind: type[Any], name: str) -> Any:
    found = dialog.findChild(kind, name)
    assert found is not None, f"no {kind.__name__} named {name!r}"
    return found


def status(dialog: HostDialog) -> str:
    return str(w(dialog, QLabel, "hostStatus").text())


def link(dialog: HostDialog) -> str:
    return str(w(dialog, QLineEdit, "inviteLink").text())


def qr_modules(pixmap: QPixmap) -> list[list[bool]]:
    """The dark/light modules of a QR code image drawn with the dialog's scale and border."""
    image = pixmap.toImage()
    count = image.width() // QR_SCALE - 2 * QR_BORDER
    offset = QR_BORDER * QR_SCALE + QR_SCALE // 2  # the middle of a module
    return [
        [
            QColor(image.pixel(offset + x * QR_SCALE, offset + y * QR_SCALE)).lightness() < 128
            for x in range(count)
        ]
        for y in range(count)
    ]


def assert_qr_shows(dialog: HostDialog, text: str) -> None:
    pixmap = w(dialog, QLabel, "inviteQr").pixmap()
    assert not pixmap.isNull()
    assert pixmap.width() == pixmap.height()
    # an independent encoding of the expected text, module for module
    expected = segno.make(text, error="m", micro=False, boost_error=False)
    size = expected.symbol_size(scale=QR_SCALE, border=QR_BORDER)
    assert (pixmap.width(), pixmap.height()) == size
    assert qr_modules(pixmap) == [[bool(bit) for bit in row] for row in expected.matrix]


# --- the port opened -----------------------------------------------------------------------------


def test_opens_the_port_and_invites_to_the_public_address(qtbot: Any, igd: FakeIgd) -> None:
    dialog, finished = make(qtbot, via(igd))
    exposure = w(dialog, QLabel, "hostExposure").text()
    assert "all network interfaces" in exposure
    assert str(PORT) in exposure
    assert "impostor" in exposure

    qtbot.waitUntil(lambda: bool(finished))
    assert status(dialog) == (
        f"✔ Port {PORT} opened on FakeRouter 3000 at 127.0.0.1; public address {PUBLIC_IP}."
    )
    assert set(igd.mappings) == {(PORT, "TCP"), (PORT, "UDP")}
    result, mapping = finished[0]
    assert result.mapped
    assert mapping is not None
    assert dialog.mapping() is mapping
    assert not w(dialog, QLabel, "manualForwarding").isVisible()
    assert not w(dialog, QPushButton, "retryMappingButton").isVisible()
    assert not dialog.busy()

    assert parse_invite(link(dialog)) == Invite(PUBLIC_IP, PORT, PIN, "Squad A")
    note = w(dialog, QLabel, "inviteNote").text()
    assert PUBLIC_IP in note
    assert "anywhere" in note
    assert_qr_shows(dialog, link(dialog))

    QGuiApplication.clipboard().clear()
    qtbot.mouseClick(w(dialog, QPushButton, "copyInviteButton"), LEFT)
    assert QGuiApplication.clipboard().text() == link(dialog)

    # another channel, then none: the link and its QR code follow
    combo = w(dialog, QComboBox, "inviteChannel")
    assert combo.isVisible()
    combo.setCurrentIndex(combo.findData("AFK"))
    assert parse_invite(link(dialog)) == Invite(PUBLIC_IP, PORT, PIN, "AFK")
    assert_qr_shows(dialog, link(dialog))
    combo.setCurrentIndex(combo.findData(None))
    assert parse_invite(link(dialog)) == Invite(PUBLIC_IP, PORT, PIN, None)
    assert "channel=" not in link(dialog)
    assert_qr_shows(dialog, link(dialog))

    # Stop hosting: the app is told, and the forwarding is deleted on the router
    with qtbot.waitSignal(dialog.stop_requested, timeout=2000):
        qtbot.mouseClick(w(dialog, QPushButton, "stopHostingButton"), LEFT)
    assert not dialog.isVisible()
    assert dialog.mapping() is None
    qtbot.waitUntil(lambda: not igd.mappings, timeout=10_000)
    assert mapping.closed


def test_close_keeps_the_mapping_for_the_app(qtbot: Any, igd: FakeIgd) -> None:
    dialog, finished = make(qtbot, via(igd), channel=None)
    qtbot.waitUntil(lambda: bool(finished))
    assert parse_invite(link(dialog)) == Invite(PUBLIC_IP, PORT, PIN, None)
    with qtbot.waitSignal(dialog.accepted, timeout=2000):
        qtbot.mouseClick(w(dialog, QPushButton, "closeButton"), LEFT)
    mapping = dialog.mapping()
    assert mapping is not None
    assert not mapping.closed
    assert set(igd.mappings) == {(PORT, "TCP"), (PORT, "UDP")}
    mapping.close()
    assert not igd.mappings


# --- the port not opened -------------------------------------------------------------------------


def test_a_refusing_router_gives_manual_instructions_and_a_lan_link(
    qtbot: Any, igd: FakeIgd
) -> None:
    # another device holds the port: the router answers 718 ConflictInMappingEntry
    igd.mappings[(PORT, "TCP")] = FakeMapping("192.168.1.99", PORT, "game console", 0)
    dialog, finished = make(qtbot, via(igd))

    qtbot.waitUntil(lambda: bool(finished))
    result, mapping = finished[0]
    assert not result.mapped
    assert mapping is None
    assert dialog.mapping() is None
    text = status(dialog)
    assert text.startswith(f"✖ Could not open port {PORT} on your router.")
    assert "718" in text and "192.168.1.99" in text
    manual = w(dialog, QLabel, "manualForwarding")
    assert manual.isVisible()
    assert f"Forward TCP and UDP port {PORT} to {LAN_IP}" in manual.text()
    assert f"{LAN_IP}:{PORT}" in manual.text()

    assert parse_invite(link(dialog)) == Invite(LAN_IP, PORT, PIN, "Squad A")
    note = w(dialog, QLabel, "inviteNote").text()
    assert LAN_IP in note
    assert "only works" in note and "same network" in note
    assert_qr_shows(dialog, link(dialog))

    # the user frees the port on the router and tries again
    del igd.mappings[(PORT, "TCP")]
    retry = w(dialog, QPushButton, "retryMappingButton")
    assert retry.isVisible()
    qtbot.mouseClick(retry, LEFT)
    assert status(dialog) == f"Opening port {PORT} on your router…"
    assert not manual.isVisible()
    qtbot.waitUntil(lambda: len(finished) == 2)
    assert finished[1][0].mapped
    assert status(dialog).startswith(f"✔ Port {PORT} opened")
    assert parse_invite(link(dialog)) == Invite(PUBLIC_IP, PORT, PIN, "Squad A")
    assert not manual.isVisible()
    mapping = dialog.mapping()
    assert mapping is not None
    mapping.close()


def test_no_router_gives_manual_instructions_and_a_lan_link(qtbot: Any) -> None:
    with socket.socket() as sock:  # a port where no router answers
        sock.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{sock.getsockname()[1]}/rootDesc.xml"
    dialog, finished = make(qtbot, lambda port: open_ports(port, location=nobody))

    qtbot.waitUntil(lambda: bool(finished), timeout=20_000)
    assert not finished[0][0].mapped
    assert status(dialog).startswith(f"✖ Could not open port {PORT} on your router.")
    assert finished[0][0].problem in status(dialog)
    manual = w(dialog, QLabel, "manualForwarding").text()
    assert f"port {PORT}" in manual and LAN_IP in manual
    assert parse_invite(link(dialog)).host == LAN_IP
    assert "same network" in w(dialog, QLabel, "inviteNote").text()


# --- closing while the router is asked -----------------------------------------------------------


class _LateMapping:
    """Stands in for the PortMapping a slow router hands out after the dialog closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self, timeout: float = 5.0) -> None:
        self.closed.set()


@pytest.mark.parametrize("delete", [False, True], ids=["closed", "deleted"])
def test_closing_while_mapping_ignores_the_late_answer(qtbot: Any, delete: bool) -> None:
    release = threading.Event()
    started = threading.Event()
    late = _LateMapping()

    def slow_router(port: int) -> tuple[PortMapResult, PortMapping | None]:
        started.set()
        release.wait(30)
        return PortMapResult(True, PUBLIC_IP, "Slow router", ""), cast(PortMapping, late)

    dialog, finished = make(qtbot, slow_router, add=not delete)
    qtbot.waitUntil(started.is_set)
    assert status(dialog) == f"Opening port {PORT} on your router…"
    assert dialog.busy()
    assert parse_invite(link(dialog)).host == LAN_IP  # meanwhile: the LAN link
    assert "same network" in w(dialog, QLabel, "inviteNote").text()

    dialog.close()
    assert not dialog.isVisible()
    assert not dialog.busy()
    if delete:
        gone: list[bool] = []
        dialog.destroyed.connect(lambda: gone.append(True))
        dialog.deleteLater()
        qtbot.waitUntil(lambda: bool(gone))
    release.set()
    # nobody can use a mapping made after the dialog closed: it is released, nothing shown
    qtbot.waitUntil(late.closed.is_set, timeout=5000)
    QApplication.processEvents()  # any (wrongly) queued delivery would run now
    assert finished == []
    if not delete:
        assert status(dialog) == f"Opening port {PORT} on your router…"
        assert dialog.mapping() is None
        assert parse_invite(link(dialog)).host == LAN_IP


# --- keyboard and accessibility ------------------------------------------------------------------


def test_mnemonics_have_buddies_and_widgets_are_named(qtbot: Any, igd: FakeIgd) -> None:
    dialog, finished = make(qtbot, via(igd))
    qtbot.waitUntil(lambda: bool(finished))
    keys: list[str] = []
    for label in dialog.findChildren(QLabel):
        if label.textFormat() == Qt.TextFormat.PlainText and "&" in label.text():
            assert label.buddy() is not None, label.text()
            keys.append(label.text().split("&")[1][0].lower())
    for button in dialog.findChildren(QPushButton):
        if "&" in button.text():
            keys.append(button.text().split("&")[1][0].lower())
    assert len(keys) == len(set(keys)), keys
    for name in (
        "inviteLink",
        "copyInviteButton",
        "inviteQr",
        "hostStatus",
        "manualForwarding",
        "inviteNote",
        "inviteChannel",
        "hostExposure",
    ):
        widget = w(dialog, QWidget, name)
        assert widget.accessibleName(), name
    for name in ("inviteLink", "copyInviteButton", "inviteQr", "inviteChannel"):
        assert w(dialog, QWidget, name).toolTip(), name

    dialog.activateWindow()
    qtbot.waitUntil(lambda: QGuiApplication.focusWindow() is dialog.windowHandle())
    qtbot.keyClick(dialog, Qt.Key.Key_L, Qt.KeyboardModifier.AltModifier)
    qtbot.waitUntil(w(dialog, QLineEdit, "inviteLink").hasFocus)
    mapping = dialog.mapping()
    assert mapping is not None
    mapping.close()
