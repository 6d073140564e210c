"""The connect dialog on a real display: saved servers, the inline form, LAN entries, keyboard.

LAN discovery is off here (``discovery=False``) except where the test is about the dialog's own
LAN handling; ``tests/integration/test_discovery.py`` finds a real announced server.
"""

from __future__ import annotations

import getpass
import sys
from typing import Any

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QDialog, QLabel, QLineEdit, QListWidget, QPushButton

from voipclient.net.discovery import DiscoveredServer
from voipclient.ui.connect_dialog import ConnectDialog
from voipclient.ui.prefs import Bookmark, Preferences

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(60)]

PIN = "sha256/kiQOXEzRM1qxmQW0hU09+VMZYcRZLmLyahBuqFO763w="
Accepted = QDialog.DialogCode.Accepted
Rejected = QDialog.DialogCode.Rejected
LEFT = Qt.MouseButton.LeftButton

FRIDAY = Bookmark(label="Friday night", host="voice.example.org", port=64738, username="ann")
LAN_PARTY = Bookmark(label="LAN party", host="192.168.1.20", port=5000)


def make(qtbot: Any, prefs: Preferences, *, discovery: bool = False) -> ConnectDialog:
    dialog = ConnectDialog(prefs, discovery=discovery)
    qtbot.addWidget(dialog)
    dialog.open()
    qtbot.waitExposed(dialog)
    return dialog


def w(dialog: QDialog, kind: type[Any], name: str) -> Any:
    found = dialog.findChild(kind, name)
    assert found is not None, f"no {kind.__name__} named {name!r}"
    return found


def texts(widget: QListWidget) -> list[str]:
    return [widget.item(i).text() for i in range(widget.count())]


def fill_form(qtbot: Any, dialog: ConnectDialog, **fields: str) -> None:
    for key, value in fields.items():
        edit = w(dialog, QLineEdit, f"editor{key.capitalize()}")
        edit.clear()
        qtbot.keyClicks(edit, value)


def lan_server(port: int = 7000, version: str = "vc1", name: str = "Basement") -> DiscoveredServer:
    return DiscoveredServer(
        service=f"{name} @ box:{port}._voipclient._tcp.local.",
        name=name,
        host="192.168.1.50",
        port=port,
        pin=PIN,
        version=version,
    )


# -- first run --------------------------------------------------------------------------------


def test_first_run_offers_the_local_server(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences())
    welcome = w(dialog, QLabel, "welcomeLabel")
    assert welcome.isVisible()
    assert "no saved servers" in welcome.text()
    local = w(dialog, QPushButton, "localServerButton")
    assert local.isDefault()
    assert local.font().bold()
    assert not w(dialog, QPushButton, "connectButton").isEnabled()
    assert w(dialog, QLabel, "lanStatus").text() == "LAN discovery is off."
    qtbot.keyClick(w(dialog, QLineEdit, "usernameEdit"), Qt.Key.Key_Return)
    assert dialog.result() == Accepted
    assert dialog.start_local()
    assert dialog.chosen() is None
    assert dialog.discovered_pin() is None


def test_username_defaults_to_prefs_then_the_os_user(qtbot: Any) -> None:
    assert make(qtbot, Preferences(username="zed")).username() == "zed"
    dialog = make(qtbot, Preferences())
    assert w(dialog, QLineEdit, "usernameEdit").text() == getpass.getuser()[:32]


def test_local_server_button_click(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(LAN_PARTY,), username="bob"))
    assert not w(dialog, QLabel, "welcomeLabel").isVisible()
    qtbot.mouseClick(w(dialog, QPushButton, "localServerButton"), LEFT)
    assert dialog.result() == Accepted
    assert dialog.start_local()
    assert dialog.chosen() is None
    assert dialog.username() == "bob"


# -- saved servers ----------------------------------------------------------------------------


def test_enter_connects_to_the_selected_bookmark_with_its_username(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(FRIDAY, LAN_PARTY), username="zed"))
    listing = w(dialog, QListWidget, "bookmarkList")
    assert texts(listing) == [
        "Friday night — voice.example.org:64738",
        "LAN party — 192.168.1.20:5000",
    ]
    assert listing.currentRow() == 0
    assert dialog.username() == "ann"  # the bookmark's own name wins
    assert w(dialog, QPushButton, "connectButton").isDefault()
    listing.setFocus()
    qtbot.keyClick(listing, Qt.Key.Key_Return)
    assert dialog.result() == Accepted
    assert dialog.chosen() == FRIDAY
    assert not dialog.start_local()
    assert dialog.discovered_pin() is None


def test_arrow_then_enter_uses_the_typed_username(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(FRIDAY, LAN_PARTY), username="zed"))
    listing = w(dialog, QListWidget, "bookmarkList")
    listing.setFocus()
    qtbot.keyClick(listing, Qt.Key.Key_Down)
    assert listing.currentRow() == 1
    name = w(dialog, QLineEdit, "usernameEdit")
    name.clear()
    qtbot.keyClicks(name, "Zed the Great")
    qtbot.keyClick(name, Qt.Key.Key_Return)
    assert dialog.result() == Accepted
    assert dialog.chosen() == Bookmark("LAN party", "192.168.1.20", 5000, "Zed the Great")
    assert dialog.username() == "Zed the Great"


def test_double_click_connects(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(FRIDAY, LAN_PARTY)))
    listing = w(dialog, QListWidget, "bookmarkList")
    rect = listing.visualItemRect(listing.item(1))
    qtbot.mouseClick(listing.viewport(), LEFT, pos=rect.center())
    qtbot.mouseDClick(listing.viewport(), LEFT, pos=rect.center())
    assert dialog.result() == Accepted
    chosen = dialog.chosen()
    assert chosen is not None and chosen.host == "192.168.1.20" and chosen.port == 5000


def test_empty_username_is_refused_inline(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(LAN_PARTY,)))
    w(dialog, QLineEdit, "usernameEdit").clear()
    qtbot.mouseClick(w(dialog, QPushButton, "connectButton"), LEFT)
    error = w(dialog, QLabel, "connectError")
    assert dialog.isVisible()
    assert error.isVisible()
    assert "user name" in error.text()
    assert dialog.chosen() is None


def test_escape_cancels(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(FRIDAY,)))
    with qtbot.waitSignal(dialog.rejected, timeout=2000):
        qtbot.keyClick(w(dialog, QListWidget, "bookmarkList"), Qt.Key.Key_Escape)
    assert dialog.chosen() is None
    assert not dialog.start_local()


# -- the inline form --------------------------------------------------------------------------


def test_add_validates_inline_then_saves(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(FRIDAY,)))
    qtbot.mouseClick(w(dialog, QPushButton, "addButton"), LEFT)
    form = w(dialog, QLabel, "editorError")
    save = w(dialog, QPushButton, "editorSaveButton")
    assert dialog.focusWidget() is w(dialog, QLineEdit, "editorHost")
    assert save.isDefault()
    assert not w(dialog, QPushButton, "connectButton").isEnabled()

    qtbot.mouseClick(save, LEFT)
    assert form.isVisible()
    assert "Enter the server's address" in form.text()

    fill_form(qtbot, dialog, host="my server")
    qtbot.mouseClick(save, LEFT)
    assert "no spaces" in form.text()

    fill_form(qtbot, dialog, host="home.example.net", port="70000")
    qtbot.mouseClick(save, LEFT)
    assert "1 to 65535" in form.text()
    fill_form(qtbot, dialog, port="12ab")
    qtbot.mouseClick(save, LEFT)
    assert "1 to 65535" in form.text()

    fill_form(qtbot, dialog, host="VOICE.example.org", port="")
    qtbot.mouseClick(save, LEFT)
    assert "already saved" in form.text()
    assert "Friday night" in form.text()

    fill_form(qtbot, dialog, host="home.example.net", port="5555", label="Home", username="ann")
    # Enter in the form saves the form; it does not connect.
    qtbot.keyClick(w(dialog, QLineEdit, "editorUsername"), Qt.Key.Key_Return)
    assert dialog.isVisible()
    assert not w(dialog, QLabel, "editorError").isVisible()
    assert not dialog.editor.isVisible()
    assert dialog.bookmarks() == (FRIDAY, Bookmark("Home", "home.example.net", 5555, "ann"))
    listing = w(dialog, QListWidget, "bookmarkList")
    assert listing.currentRow() == 1
    assert w(dialog, QPushButton, "connectButton").isDefault()


def test_host_colon_port_and_default_label(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences())
    qtbot.mouseClick(w(dialog, QPushButton, "addButton"), LEFT)
    fill_form(qtbot, dialog, host="10.1.2.3:4000")
    qtbot.mouseClick(w(dialog, QPushButton, "editorSaveButton"), LEFT)
    assert dialog.bookmarks() == (Bookmark("10.1.2.3:4000", "10.1.2.3", 4000, ""),)
    assert not w(dialog, QLabel, "welcomeLabel").isVisible()


def test_escape_in_the_form_closes_the_form_only(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(FRIDAY,)))
    qtbot.mouseClick(w(dialog, QPushButton, "addButton"), LEFT)
    fill_form(qtbot, dialog, host="discarded.example")
    qtbot.keyClick(w(dialog, QLineEdit, "editorHost"), Qt.Key.Key_Escape)
    assert dialog.isVisible()
    assert not dialog.editor.isVisible()
    assert dialog.bookmarks() == (FRIDAY,)
    assert w(dialog, QPushButton, "connectButton").isDefault()
    with qtbot.waitSignal(dialog.rejected, timeout=2000):
        qtbot.keyClick(w(dialog, QListWidget, "bookmarkList"), Qt.Key.Key_Escape)


def test_edit_and_remove(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(FRIDAY, LAN_PARTY)))
    listing = w(dialog, QListWidget, "bookmarkList")
    listing.setCurrentRow(1)
    qtbot.mouseClick(w(dialog, QPushButton, "editButton"), LEFT)
    assert w(dialog, QLineEdit, "editorHost").text() == "192.168.1.20"
    assert w(dialog, QLineEdit, "editorPort").text() == "5000"
    assert w(dialog, QLineEdit, "editorLabel").text() == "LAN party"
    # Editing a server into another saved one is refused.
    fill_form(qtbot, dialog, host="voice.example.org", port="64738")
    qtbot.mouseClick(w(dialog, QPushButton, "editorSaveButton"), LEFT)
    assert "already saved" in w(dialog, QLabel, "editorError").text()
    fill_form(qtbot, dialog, host="192.168.1.21", port="5001", label="LAN party 2")
    qtbot.mouseClick(w(dialog, QPushButton, "editorSaveButton"), LEFT)
    assert dialog.bookmarks() == (FRIDAY, Bookmark("LAN party 2", "192.168.1.21", 5001, ""))

    listing.setCurrentRow(0)
    qtbot.mouseClick(w(dialog, QPushButton, "removeButton"), LEFT)
    assert dialog.bookmarks() == (Bookmark("LAN party 2", "192.168.1.21", 5001, ""),)
    assert listing.currentRow() == 0
    qtbot.mouseClick(w(dialog, QPushButton, "removeButton"), LEFT)
    assert dialog.bookmarks() == ()
    assert w(dialog, QLabel, "welcomeLabel").isVisible()
    assert not w(dialog, QPushButton, "removeButton").isEnabled()
    assert not w(dialog, QPushButton, "editButton").isEnabled()
    # Edits survive Cancel: the app decides whether to store bookmarks().
    qtbot.mouseClick(w(dialog, QPushButton, "cancelButton"), LEFT)
    assert dialog.result() == Rejected
    assert dialog.bookmarks() == ()


def test_tab_order_and_accessibility(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(FRIDAY,)))
    dialog.activateWindow()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is w(dialog, QListWidget, "bookmarkList"))
    order = []
    for _ in range(8):
        qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        order.append(QApplication.focusWidget().objectName())
    assert order == [
        "addButton",
        "editButton",
        "removeButton",
        "lanList",  # (its Save button is disabled: nothing found on the LAN)
        "usernameEdit",
        "localServerButton",
        "connectButton",
        "cancelButton",
    ]
    for name in ("bookmarkList", "lanList"):
        assert w(dialog, QListWidget, name).accessibleName()
        assert w(dialog, QListWidget, name).toolTip()
    assert w(dialog, QLineEdit, "usernameEdit").accessibleName() == "User name"
    for button in dialog.findChildren(QPushButton):
        assert button.toolTip(), button.objectName()
        assert button.accessibleName(), button.objectName()


# -- servers on the LAN (the dialog's side; zeroconf itself in tests/integration) --------------


def test_discovered_server_can_be_chosen_and_saved(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences(bookmarks=(LAN_PARTY,), username="zed"))
    lan = w(dialog, QListWidget, "lanList")
    dialog.add_discovered(lan_server())
    dialog.add_discovered(lan_server(port=7001, version="vc9", name="Future"))
    assert texts(lan) == [
        "Basement — 192.168.1.50:7000",
        "Future — 192.168.1.50:7001 (another version: vc9)",
    ]
    assert not lan.item(1).flags() & Qt.ItemFlag.ItemIsEnabled
    assert PIN in lan.item(0).toolTip()

    lan.setCurrentRow(0)
    assert w(dialog, QListWidget, "bookmarkList").selectedItems() == []
    qtbot.mouseClick(w(dialog, QPushButton, "lanSaveButton"), LEFT)
    assert dialog.bookmarks() == (LAN_PARTY, Bookmark("Basement", "192.168.1.50", 7000, ""))
    qtbot.mouseClick(w(dialog, QPushButton, "lanSaveButton"), LEFT)
    assert "saved already" in w(dialog, QLabel, "connectError").text()
    assert len(dialog.bookmarks()) == 2

    lan.setFocus()
    qtbot.keyClick(lan, Qt.Key.Key_Return)
    assert dialog.result() == Accepted
    assert dialog.chosen() == Bookmark("Basement", "192.168.1.50", 7000, "zed")
    assert dialog.discovered_pin() == PIN


def test_a_saved_server_seen_on_the_lan_gets_its_pin(qtbot: Any) -> None:
    mark = Bookmark("Basement box", "192.168.1.50", 7000)
    dialog = make(qtbot, Preferences(bookmarks=(mark,), username="zed"))
    dialog.add_discovered(lan_server())
    assert w(dialog, QListWidget, "bookmarkList").currentRow() == 0
    qtbot.mouseClick(w(dialog, QPushButton, "connectButton"), LEFT)
    assert dialog.chosen() == Bookmark("Basement box", "192.168.1.50", 7000, "zed")
    assert dialog.discovered_pin() == PIN


def test_a_server_leaving_the_lan_is_removed(qtbot: Any) -> None:
    dialog = make(qtbot, Preferences())
    lan = w(dialog, QListWidget, "lanList")
    dialog.add_discovered(lan_server())
    lan.setCurrentRow(0)
    assert w(dialog, QPushButton, "connectButton").isEnabled()
    with qtbot.waitSignal(dialog.server_lost, timeout=1000):
        dialog.remove_discovered(lan_server())
    assert lan.count() == 0
    assert not w(dialog, QPushButton, "connectButton").isEnabled()
    assert dialog.discovered() == ()


def test_discovery_unavailable_is_explained(qtbot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real import path of a machine without python-zeroconf.
    monkeypatch.setitem(sys.modules, "zeroconf", None)
    dialog = make(qtbot, Preferences(), discovery=True)
    status = w(dialog, QLabel, "lanStatus")
    assert status.text().startswith("LAN discovery unavailable: ")
    assert "zeroconf" in status.text()


def test_modal_exec(qtbot: Any) -> None:
    dialog = ConnectDialog(Preferences(bookmarks=(FRIDAY,)), discovery=False)
    qtbot.addWidget(dialog)

    def press_enter() -> None:
        qtbot.waitUntil(lambda: QApplication.activeModalWidget() is dialog)
        qtbot.keyClick(w(dialog, QListWidget, "bookmarkList"), Qt.Key.Key_Return)
        if dialog.isVisible():  # the assertion below reports it; never hang in exec()
            dialog.reject()

    QTimer.singleShot(0, press_enter)
    assert dialog.exec() == Accepted
    assert dialog.chosen() == FRIDAY
