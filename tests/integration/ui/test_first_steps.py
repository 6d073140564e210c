"""What a newcomer trips over in the first minutes, through the real app and a real relay:
a double click joins once, the inline key control follows the one hotkey rule, Clear always
clears, channels and users have icons of their own."""

from __future__ import annotations

from typing import Any

import pytest
from PySide6.QtCore import QSize, Qt

from voipclient.ui.main_window import ROLE_KIND
from voipclient.ui.prefs import BindingPref

from ..conftest import A, B, Starter
from .conftest import (
    AppFactory,
    channel_item,
    connect,
    join_by_double_click,
    member_item,
    round_trip,
)

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def test_double_click_sends_one_join_and_one_leave(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("clicker")
    connect(qtbot, app, server)
    sent: list[tuple[str, int]] = []
    app.controller._join.connect(lambda cid, _pw: sent.append(("join", cid)))
    app.controller._leave.connect(lambda cid: sent.append(("leave", cid)))
    warnings: list[str] = []
    app.controller.message.connect(lambda _level, text: warnings.append(text))
    tree = app.window.tree
    rect = tree.visualItemRect(channel_item(app, A))
    # a double click, and a second activation before the server answered the first
    qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    tree.itemActivated.emit(channel_item(app, A), 0)
    qtbot.waitUntil(lambda: app.controller.model.row(A).joined, timeout=10_000)
    round_trip(qtbot, app)
    assert sent == [("join", A)]
    rect = tree.visualItemRect(channel_item(app, A))
    qtbot.mouseDClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    app.window.tree.itemActivated.emit(channel_item(app, A), 0)  # a second, impatient one
    qtbot.waitUntil(lambda: not app.controller.model.row(A).joined, timeout=10_000)
    round_trip(qtbot, app)
    assert sent == [("join", A), ("leave", A)]
    assert not any("already" in w for w in warnings), warnings


def test_inline_key_control_refuses_a_key_bound_elsewhere_and_clear_always_clears(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("binder")
    connect(qtbot, app, server)
    join_by_double_click(qtbot, app, A)
    join_by_double_click(qtbot, app, B)
    ctl = app.controller
    assert ctl.set_channel_binding(A, "f13")
    warnings: list[str] = []
    ctl.message.connect(lambda _level, text: warnings.append(text))
    assert not ctl.set_channel_binding(B, "F13")
    name_a = ctl.model.channel_name(A)
    assert warnings and f"already the push-to-talk key of {name_a}" in warnings[-1]
    assert ctl.model.row(B).ptt_keys == ()
    # a key that talks to both channels (set in Settings): Clear on A takes A out of it
    server_prefs = ctl.prefs.server(ctl.server_key or "")
    both = BindingPref("f14", (name_a or "", ctl.model.channel_name(B) or ""))
    ctl.apply_prefs(
        ctl.prefs.with_server(ctl.server_key or "", server_prefs.__class__(bindings=(both,)))
    )
    app.window.tree.setCurrentItem(channel_item(app, A))
    controls = app.window.controls
    assert controls.clear_ptt.isEnabled()
    qtbot.mouseClick(controls.clear_ptt, Qt.MouseButton.LeftButton)
    assert ctl.model.row(A).ptt_keys == ()
    assert ctl.model.row(B).ptt_keys == ("f14",)
    assert not controls.clear_ptt.isEnabled()


def test_channels_and_users_have_icons_of_their_own(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("looker")
    connect(qtbot, app, server)
    join_by_double_click(qtbot, app, A)
    qtbot.waitUntil(lambda: member_item(app, A, "looker") is not None)
    channel, other = channel_item(app, A), channel_item(app, B)
    user = member_item(app, A, "looker")
    assert user is not None and user.data(0, ROLE_KIND) == "user"
    images = {
        name: item.icon(0).pixmap(QSize(32, 32)).toImage()
        for name, item in (("joined", channel), ("not joined", other), ("user", user))
    }
    assert all(not img.isNull() for img in images.values())
    assert images["joined"] != images["user"] and images["not joined"] != images["user"]
    assert images["joined"] != images["not joined"]  # you see where you are


def test_hot_mic_in_push_to_talk_mode_switches_to_voice_activation_and_says_so(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("hot")
    connect(qtbot, app, server)
    join_by_double_click(qtbot, app, A)
    ctl = app.controller
    assert ctl.prefs.transmit.mode == "ptt"  # the default: a hot mic alone would do nothing
    said: list[str] = []
    ctl.message.connect(lambda _level, text: said.append(text))
    app.window.tree.setCurrentItem(channel_item(app, A))
    hot = app.window.controls.hot_mic
    assert hot.isEnabled()
    hot.click()  # (a mouse click at the middle of the wide box misses its text)
    qtbot.waitUntil(lambda: ctl.model.hot_mic_channel() == A)
    assert ctl.prefs.transmit.mode == "voice_activation"
    assert any("voice activation is on" in s for s in said), said
