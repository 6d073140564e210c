"""Shared pieces of the desktop-app tests: an app factory fixture (each app with its own
settings file and data directory, shut down at teardown) and tree lookups."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QObject, QSettings, Qt, Slot
from PySide6.QtWidgets import QApplication, QTreeWidgetItem

from voipclient.net import e2ee
from voipclient.ui.app import App
from voipclient.ui.main_window import ROLE_KIND, TALKING
from voipclient.ui.prefs import Bookmark
from voipclient.ui.settings import QSettingsBackend

from ..conftest import ServerProcess

AppFactory = Callable[..., App]


@pytest.fixture
def make_app(qtbot: Any, tmp_path: Path) -> Iterator[AppFactory]:
    apps: list[App] = []

    def make(name: str, *, first_run: bool = False, **flags: Any) -> App:
        """``first_run``: a new install (the setup not done yet); by default the setup was
        done (or skipped) before, as for every user after their first start."""
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
        if not first_run and settings.value("app/setup_done") is None:
            settings.setValue("app/setup_done", "true")
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
    qtbot.waitUntil(  # joined, and drawn among the channel's members (the E2E view)
        lambda: (
            (row := app.controller.model.row(channel_id)) is not None
            and row.joined
            and any(m.is_me for m in row.members)
        ),
        timeout=10_000,
    )


def member_text(app: App, channel_id: int, name: str) -> str:
    """The member's line in the channel's tree ("" when the member is not shown there)."""
    item = member_item(app, channel_id, name)
    return "" if item is None else item.text(0)


def talking(app: App, channel_id: int, name: str) -> bool:
    """The tree shows ``name`` talking in the channel."""
    return TALKING in member_text(app, channel_id, name)


class KeyWatch(QObject):
    """The KeyDists an app's connection accepted from now on (``e2ee.KeyAccepted``): whose voice
    and text it can open, in which channel. Start it before the keys are due. It lives on the
    GUI thread, so it sees each event in order with what the window saw before it."""

    def __init__(self, app: App) -> None:
        super().__init__()
        conn = app.controller.conn
        assert conn is not None, "connect first"
        self.accepted: list[tuple[int, int]] = []  # (sender id, channel id)
        conn.session_event.connect(self._on_event, Qt.ConnectionType.QueuedConnection)

    @Slot(object)
    def _on_event(self, event: object) -> None:
        if isinstance(event, e2ee.KeyAccepted):
            self.accepted.append((event.sender_id, event.channel_id))

    def holds(self, sender: App, channel_id: int) -> bool:
        """A sender key of ``sender`` (its current session) for the channel was accepted."""
        return (sender.controller.model.me, channel_id) in self.accepted


def round_trip(qtbot: Any, app: App) -> None:
    """A round trip through ``app``'s connection thread and the server, queued after whatever
    the app asked before: a self-mute and back, each seen echoed in the roster. Whatever the
    connection or the server did about an earlier request has reached the window when this
    returns: the positive marker a negative assertion waits for instead of a fixed sleep."""
    model = app.controller.model
    me = model.me
    assert me is not None, "connect first"
    was = app.controller.muted
    for muted in (not was, was):
        app.controller.set_muted(muted)
        qtbot.waitUntil(
            lambda m=muted: (user := model.roster.users.get(me)) is not None and user.muted == m,
            timeout=10_000,
        )


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
        alice_keys, bob_keys = KeyWatch(alice), KeyWatch(bob)
        for app in (alice, bob):
            join_by_double_click(qtbot, app, channel_id)
        # KeyDist: each holds the other's sender key for the channel, so the first frames open,
        # and each window draws both in it (names complete, the privacy codes agree)
        qtbot.waitUntil(
            lambda: (
                alice_keys.holds(bob, channel_id)
                and bob_keys.holds(alice, channel_id)
                and all(
                    set(app.controller.model.member_names(channel_id)) == {"alice", "bob"}
                    for app in (alice, bob)
                )
            ),
            timeout=10_000,
        )
    return alice, bob
