"""Issue 17 through the real app: push-to-talk on a Wayland desktop through the desktop portal.

alice's app starts in a Wayland session (``XDG_SESSION_TYPE=wayland``) whose session bus has a
GlobalShortcuts portal: a FAKE one (``tests/integration/ptt/fake_portal.py``) on the test
environment's own bus, the one the app uses for everything else. The app picks the portal as its
hotkey source and says so; a key given to a channel becomes a portal shortcut; the desktop's
``Activated`` makes alice talk in that channel, as bob (another real app) sees; ``Deactivated``
stops it. Keys changed later are bound again in a new portal session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from voipclient.ptt.portal_source import shortcut_id

from ..conftest import A, B, Starter
from ..ptt.fake_portal import FakePortal
from .conftest import AppFactory, connect, join_by_double_click, member_item, talking

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(90)]


@pytest.fixture
def portal() -> Iterator[FakePortal]:
    fake = FakePortal(os.environ["DBUS_SESSION_BUS_ADDRESS"]).start()
    try:
        yield fake
    finally:
        fake.stop()


def test_on_wayland_the_portal_carries_push_to_talk(
    qtbot: Any,
    make_app: AppFactory,
    start_server: Starter,
    portal: FakePortal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_server()
    bob = make_app("bob")  # an X11 desktop
    monkeypatch.setenv("XDG_SESSION_TYPE", "wayland")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-test")
    alice = make_app("alice")  # a Wayland desktop with XWayland (DISPLAY is set)
    ctl = alice.controller
    assert ctl.hotkeys.startswith("portal"), ctl.hotkeys
    assert bob.controller.hotkeys.startswith("pynput"), bob.controller.hotkeys
    for app in (alice, bob):
        connect(qtbot, app, server)
    qtbot.waitUntil(lambda: member_item(alice, 1, "bob") is not None, timeout=10_000)
    for app in (alice, bob):
        join_by_double_click(qtbot, app, A)
        join_by_double_click(qtbot, app, B)
    qtbot.waitUntil(
        lambda: set(bob.controller.model.member_names(A)) == {"alice", "bob"}, timeout=10_000
    )

    assert ctl.set_channel_binding(A, "f13")
    f13 = shortcut_id(frozenset({"f13"}))
    assert portal.wait_until(
        lambda r: any(
            s.shortcuts is not None and [sid for sid, _ in s.shortcuts] == [f13]
            for s in r.sessions.values()
            if not s.closed
        ),
        timeout=10,
    ), portal.record.sessions
    session = portal.bound_session()
    (sid, options), *_ = session.shortcuts or []
    assert options["preferred_trigger"] == "F13" and "Push-to-talk" in str(options["description"])
    # the status bar says which source is live; its tooltip why, and what the desktop bound
    label = alice.window.hotkeys_label
    assert label.text() == "⌨ desktop shortcuts"
    qtbot.waitUntil(lambda: "bound 1 of 1" in label.toolTip(), timeout=5_000)
    assert "Push-to-talk: A = F13" in label.toolTip(), label.toolTip()

    portal.activate(sid)
    qtbot.waitUntil(lambda: talking(bob, A, "alice"), timeout=10_000)
    assert not talking(bob, B, "alice")
    portal.deactivate(sid)
    qtbot.waitUntil(lambda: not talking(bob, A, "alice"), timeout=10_000)

    # a second key, for B: the desktop binds both again in a new session
    assert ctl.set_channel_binding(B, "ctrl+f14")
    both = {f13, shortcut_id(frozenset({"ctrl", "f14"}))}
    assert portal.wait_until(
        lambda r: any(
            s.shortcuts is not None and {i for i, _ in s.shortcuts} == both and not s.closed
            for s in r.sessions.values()
        ),
        timeout=10,
    )
    assert session.closed  # the first session was closed, not left behind
    portal.activate(shortcut_id(frozenset({"ctrl", "f14"})))
    qtbot.waitUntil(lambda: talking(bob, B, "alice"), timeout=10_000)
    assert not talking(bob, A, "alice")
    portal.deactivate(shortcut_id(frozenset({"ctrl", "f14"})))
    qtbot.waitUntil(lambda: not talking(bob, B, "alice"), timeout=10_000)
