"""Shared pieces of the desktop-app tests: an app factory fixture (each app with its own
settings file and data directory, shut down at teardown) and tree lookups."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication, QTreeWidgetItem

from voipclient.ui.app import App
from voipclient.ui.main_window import ROLE_KIND, TALKING
from voipclient.ui.prefs import Bookmark
from voipclient.ui.settings import QSettingsBackend

from ..conftest import ServerProcess

AppFactory = Callable[..., App]


@pytest.fixture
def make_app(qtbot: Any, tmp_path: Path) -> Iterator[AppFactory]:
    apps: list[App] = []

    def make(name: str, **flags: Any) -> App:
        root = tmp_path / name
        args = argparse.Namespace(
            local_server=False,
            connect=None,
            name=name,
            data_dir=root / "data",
            settings_dir=None,
        )
        for key, value in flags.items():
            setattr(args, key, value)
        settings = QSettings(str(root / "settings.ini"), QSettings.Format.IniFormat)
        app = App(args, QApplication.instance(), backend=QSettingsBackend(settings))
        apps.append(app)
        app.window.show()
        qtbot.waitExposed(app.window)
        return app

    yield make
    for app in apps:
        app.shutdown()
        app.window.close()


def connect(qtbot: Any, app: App, server: ServerProcess) -> None:
    app.connect_to(Bookmark("test", server.host, server.port), pin=server.pin)
    model = app.controller.model
    qtbot.waitUntil(  # logged in, and the E2E layer's member view (who is drawn) is there
        lambda: (
            app.controller.state == "ready"
            and model.me is not None
            and model.holder(model.me) is not None
        ),
        timeout=15_000,
    )


def channel_item(app: App, channel_id: int) -> QTreeWidgetItem:
    item = app.window.tree.item_for(channel_id)
    assert item is not None, f"channel {channel_id} is not in the tree"
    return item


def member_item(app: App, channel_id: int, name: str) -> QTreeWidgetItem | None:
    parent = channel_item(app, channel_id)
    for i in range(parent.childCount()):
        child = parent.child(i)
        if child.data(0, ROLE_KIND) == "user" and child.text(0).startswith(name):
            return child
    return None


def join_by_double_click(qtbot: Any, app: App, channel_id: int) -> None:
    tree = app.window.tree
    item = channel_item(app, channel_id)
    tree.scrollToItem(item)
    rect = tree.visualItemRect(item)
    # a real double click: press/release, then the double-click event on the same item
    qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(
        lambda: (row := app.controller.model.row(channel_id)) is not None and row.joined,
        timeout=10_000,
    )


def member_text(app: App, channel_id: int, name: str) -> str:
    """The member's line in the channel's tree ("" when the member is not shown there)."""
    item = member_item(app, channel_id, name)
    return "" if item is None else item.text(0)


def talking(app: App, channel_id: int, name: str) -> bool:
    """The tree shows ``name`` talking in the channel."""
    return TALKING in member_text(app, channel_id, name)


def pair_in(
    qtbot: Any, make_app: AppFactory, server: ServerProcess, channel_id: int | None = None
) -> tuple[App, App]:
    """alice and bob, connected, each seeing the other; with ``channel_id``, both in that channel
    and holding each other's sender keys."""
    alice, bob = make_app("alice"), make_app("bob")
    for app in (alice, bob):
        connect(qtbot, app, server)
    qtbot.waitUntil(lambda: member_item(alice, 1, "bob") is not None, timeout=10_000)
    if channel_id is not None:
        for app in (alice, bob):
            join_by_double_click(qtbot, app, channel_id)
        qtbot.wait(1500)  # KeyDist: the sender keys reach the other, so the first frames open
    return alice, bob
