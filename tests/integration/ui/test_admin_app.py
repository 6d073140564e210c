"""Administration from the app, through two real app instances and the embedded local server:
the first user of a new local server is its administrator and gets the admin menus; creating,
editing and deleting a channel (with a confirmation), moving and banning a user (with a reason)
all reach the other instance; a user who is not an administrator sees no admin menu and is
refused by the server."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtWidgets import QApplication, QMenu

from voipclient.ui.prefs import Bookmark

from .conftest import AppFactory, channel_item, member_item

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def menu_texts(menu: QMenu) -> list[str]:
    return [a.text() for a in menu.actions()]


def test_the_owner_administers_the_server_and_a_friend_sees_it(
    qtbot: Any, make_app: AppFactory
) -> None:
    owner = make_app("owner")
    owner.start_local()
    ctl = owner.controller
    qtbot.waitUntil(lambda: ctl.state == "ready" and ctl.is_admin, timeout=15_000)
    assert owner.window.create_channel_action.isVisible()
    server = ctl.local_server.address
    friend = make_app("friend")
    friend.connect_to(Bookmark("owner", "127.0.0.1", server.port), pin=server.pin)
    fctl = friend.controller
    qtbot.waitUntil(lambda: fctl.state == "ready", timeout=15_000)
    assert not fctl.is_admin and not friend.window.create_channel_action.isVisible()
    general = fctl.model.channel_id("General")
    assert general is not None
    assert "Administration" not in menu_texts(
        friend.window.build_context_menu(channel_item(friend, general))
    )
    # create: Server → Create a channel…, with a password
    dialog = owner.window.create_channel(None)
    dialog.name_edit.setText("Raid 🐉")
    dialog.set_password.setChecked(True)
    dialog.password_edit.setText("hunter2")
    assert dialog.ok.isEnabled()
    dialog.ok.click()
    # both windows see it (each gets its own roster update: on a loaded machine in any order)
    qtbot.waitUntil(
        lambda: all(c.model.channel_id("Raid 🐉") is not None for c in (ctl, fctl)),
        timeout=10_000,
    )
    raid = fctl.model.channel_id("Raid 🐉")
    assert fctl.model.row(raid).password_protected
    # edit: rename, and only the owner may talk there
    edit = owner.window.edit_channel(raid)
    edit.name_edit.setText("Raid night")
    edit.listed.setChecked(True)
    edit.speakers_edit.setText("owner")
    edit.ok.click()
    qtbot.waitUntil(
        lambda: all(c.model.channel_name(raid) == "Raid night" for c in (ctl, fctl)),
        timeout=10_000,
    )
    # move the channel into another one
    brief = owner.window.create_channel(None)
    brief.name_edit.setText("Briefing")
    brief.ok.click()
    qtbot.waitUntil(lambda: ctl.model.channel_id("Briefing") is not None, timeout=10_000)
    briefing = ctl.model.channel_id("Briefing")
    edit = owner.window.edit_channel(raid)
    assert edit.parent_combo.findData(raid) == -1  # not into itself
    edit.parent_combo.setCurrentIndex(edit.parent_combo.findData(briefing))
    assert edit.edit().name is None  # only what changed is sent
    edit.ok.click()
    qtbot.waitUntil(
        lambda: all(c.model.roster.channels[raid].parent == briefing for c in (ctl, fctl)),
        timeout=10_000,
    )
    # move the friend in (an admin move needs no password)
    friend_id = fctl.model.me
    lobby = ctl.model.channel_id("Lobby")
    assert lobby is not None
    qtbot.waitUntil(lambda: member_item(owner, lobby, "friend") is not None, timeout=10_000)
    menu = owner.window.build_context_menu(member_item(owner, lobby, "friend"))
    move = next(a.menu() for a in menu.actions() if a.text() == "Move to")
    next(a for a in move.actions() if a.text() == "Raid night").trigger()
    qtbot.waitUntil(lambda: raid in fctl.model.roster.channels_of(friend_id), timeout=10_000)
    assert not fctl.model.row(raid).may_speak  # only the owner talks there
    # ban, with a reason (required)
    ban = owner.window.act_on_user("ban", friend_id)
    assert not ban.ok.isEnabled()
    ban.reason_edit.setText("spamming the raid channel")
    ban.ok.click()
    qtbot.waitUntil(
        lambda: "spamming the raid channel" in friend.window.banner.text(), timeout=10_000
    )
    assert fctl.state != "ready"
    qtbot.waitUntil(
        lambda: fctl.model.me is None or fctl.state in {"closed", "refused"}, timeout=10_000
    )
    # delete, after a confirmation
    box = owner.window.delete_channel(raid)
    assert box is not None and "Delete Raid night?" in box.text()
    box.button(box.StandardButton.Cancel).click()
    assert ctl.model.channel_name(raid) == "Raid night"  # cancelled: still there
    box = owner.window.delete_channel(raid)
    next(b for b in box.buttons() if b.objectName() == "deleteChannelYes").click()
    qtbot.waitUntil(lambda: ctl.model.channel_name(raid) is None, timeout=10_000)
    QApplication.processEvents()


def test_a_user_who_is_not_an_administrator_is_refused(qtbot: Any, make_app: AppFactory) -> None:
    owner = make_app("owner")
    owner.start_local()
    qtbot.waitUntil(lambda: owner.controller.is_admin, timeout=15_000)
    server = owner.controller.local_server.address
    guest = make_app("guest")
    guest.connect_to(Bookmark("owner", "127.0.0.1", server.port), pin=server.pin)
    gctl = guest.controller
    qtbot.waitUntil(lambda: gctl.state == "ready", timeout=15_000)
    said: list[str] = []
    gctl.message.connect(lambda _level, text: said.append(text))
    gctl.admin_channel("create", name="mine", parent=None)
    qtbot.waitUntil(lambda: any("administrator" in s for s in said), timeout=10_000)
    assert gctl.model.channel_id("mine") is None
