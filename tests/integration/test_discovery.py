"""LAN discovery for real: a ``voipclient.server --announce`` process, zeroconf's real stack.

What this environment showed: multicast DNS works here both on the loopback interface and on
eth0 (a browser on ``InterfaceChoice.All`` receives an announcement made on ``127.0.0.1`` only,
in ~1 s; the goodbye on shutdown removes it at once). The server listens on 127.0.0.1 in these
tests, so it announces on loopback only (no packet leaves the machine), and the browser runs on
all interfaces, as in the app. Other test runs on this machine may announce too: every check
filters on the port of its own server.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QListWidget, QPushButton

from tests.integration.conftest import ServerProcess, Starter
from voipclient.lan import Announcer, LanBrowser
from voipclient.net.discovery import DiscoveredServer, DiscoveryUnavailable
from voipclient.ui.connect_dialog import ConnectDialog
from voipclient.ui.prefs import Bookmark, Preferences
from voipclient.ui.trust_dialogs import PinApprovalDialog

pytestmark = pytest.mark.timeout(60)

FOUND_TIMEOUT = 15.0  # s: registration probes ~1.5 s, the browser's first queries ~1 s

Event = tuple[str, DiscoveredServer]


def _next_for(events: queue.Queue[Event], port: int, kind: str) -> DiscoveredServer:
    while True:
        got_kind, server = events.get(timeout=FOUND_TIMEOUT)
        if got_kind == kind and server.port == port:
            return server


@pytest.fixture
def browser() -> Any:
    events: queue.Queue[Event] = queue.Queue()
    lan = LanBrowser(
        lambda s: events.put(("found", s)),
        lambda s: events.put(("removed", s)),
    )
    lan.start()
    yield lan, events
    lan.close()


def test_browser_finds_an_announced_server_and_sees_it_leave(
    start_server: Starter, browser: Any
) -> None:
    lan, events = browser
    server = start_server("--announce")
    found = _next_for(events, server.port, "found")
    assert found.pin == server.pin
    assert found.host == "127.0.0.1"
    assert found.version == "vc1"
    assert found.compatible
    assert found.name == "voipclient-server"
    assert found.service.endswith("._voipclient._tcp.local.")
    assert found in lan.servers()

    assert server.stop() == 0
    removed = _next_for(events, server.port, "removed")
    assert removed == found
    assert found not in lan.servers()
    log = server.stderr_text()
    assert "announced on the LAN" in log
    assert "LAN announcement withdrawn" in log
    assert "WARNING" not in log


def test_announce_uses_the_configured_name(start_server: Starter, browser: Any) -> None:
    _lan, events = browser
    server = start_server(config='[server]\nname = "Friday night"\nannounce = true\n')
    found = _next_for(events, server.port, "found")
    assert found.name == "Friday night"
    assert found.pin == server.pin


def test_not_announced_without_the_flag(start_server: Starter, browser: Any) -> None:
    lan, events = browser
    quiet = start_server()
    loud = start_server("--announce")  # proves the browser works while we wait
    _next_for(events, loud.port, "found")
    assert all(s.port != quiet.port for s in lan.servers())
    assert "announced on the LAN" not in quiet.stderr_text()


def test_a_failing_announcement_is_a_warning_not_fatal(
    start_server: Starter, tmp_path: Path
) -> None:
    # The server process as on a machine without python-zeroconf: it must still serve.
    blocked = tmp_path / "no-zeroconf"
    blocked.mkdir()
    (blocked / "zeroconf.py").write_text('raise ImportError("zeroconf is blocked for this test")\n')
    server = start_server("--announce", env={"PYTHONPATH": str(blocked)})
    # The start line comes first; the announcement fails right after it.
    _wait_for(lambda: "cannot announce" in server.stderr_text())
    assert server.alive()
    log = server.stderr_text()
    assert (
        "WARNING voipclient.server: cannot announce the server on the LAN: "
        "python-zeroconf is not installed"
    ) in log
    assert server.stop() == 0


def _wait_for(condition: Any, timeout: float = FOUND_TIMEOUT) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_missing_interface_gives_a_reason() -> None:
    # 203.0.113.0/24 (TEST-NET-3) is not on this machine: zeroconf cannot join the group there.
    lan = LanBrowser(lambda s: None, lambda s: None, interfaces=["203.0.113.77"])
    with pytest.raises(DiscoveryUnavailable, match="multicast"):
        lan.start()
    lan.close()
    announcer = Announcer()
    with pytest.raises(DiscoveryUnavailable, match="multicast"):
        announcer.start("x", 5000, "sha256/" + "A" * 43 + "=", host="203.0.113.77")
    announcer.close()


# -- the connect dialog, live --------------------------------------------------------------------


def _lan_row(dialog: ConnectDialog, port: int) -> int:
    lan = dialog.findChild(QListWidget, "lanList")
    assert lan is not None
    for row in range(lan.count()):
        server = lan.item(row).data(Qt.ItemDataRole.UserRole)
        if isinstance(server, DiscoveredServer) and server.port == port:
            return row
    return -1


def _open_dialog(qtbot: Any) -> ConnectDialog:
    dialog = ConnectDialog(Preferences(username="ann"))
    qtbot.addWidget(dialog)
    dialog.open()
    qtbot.waitExposed(dialog)
    return dialog


@pytest.mark.usefixtures("real_env")
def test_connect_dialog_lists_an_announced_server(qtbot: Any, start_server: Starter) -> None:
    dialog = _open_dialog(qtbot)
    status = dialog.findChild(QLabel, "lanStatus")
    assert status is not None
    assert not status.text().startswith("LAN discovery unavailable"), status.text()
    server: ServerProcess = start_server("--announce")
    qtbot.waitUntil(lambda: _lan_row(dialog, server.port) >= 0, timeout=FOUND_TIMEOUT * 1000)
    lan = dialog.findChild(QListWidget, "lanList")
    assert lan is not None
    row = _lan_row(dialog, server.port)
    assert lan.item(row).text() == f"voipclient-server — 127.0.0.1:{server.port}"

    lan.setCurrentRow(row)
    connect = dialog.findChild(QPushButton, "connectButton")
    assert connect is not None and connect.isDefault()
    qtbot.mouseClick(connect, Qt.MouseButton.LeftButton)
    assert dialog.chosen() == Bookmark("voipclient-server", "127.0.0.1", server.port, "ann")
    assert dialog.discovered_pin() == server.pin

    # First contact: the pin dialog says the presented key matches the announcement.
    pin_dialog = PinApprovalDialog(
        "127.0.0.1", server.port, server.pin, advertised_pin=dialog.discovered_pin()
    )
    qtbot.addWidget(pin_dialog)
    pin_dialog.open()
    label = pin_dialog.findChild(QLabel, "advertisementLabel")
    assert label is not None and label.isVisible() and "matches" in label.text()


@pytest.mark.usefixtures("real_env")
def test_connect_dialog_drops_a_server_that_stops(qtbot: Any, start_server: Starter) -> None:
    dialog = _open_dialog(qtbot)
    server = start_server("--announce")
    qtbot.waitUntil(lambda: _lan_row(dialog, server.port) >= 0, timeout=FOUND_TIMEOUT * 1000)
    with qtbot.waitSignal(
        dialog.server_lost,
        timeout=int(FOUND_TIMEOUT * 1000),
        check_params_cb=lambda s: s.port == server.port,
    ):
        server.stop()
    assert _lan_row(dialog, server.port) == -1
