"""Host for friends, end to end: instance A runs its local server on every interface, opens the
port on the router (a FAKE IGD on loopback: tests/integration/net/fake_igd.py) and shows an
invite link; instance B opens that link, connects over A's network address without a trust
prompt, and lands in the link's channel. Then Stop hosting closes the router's forwarding and
the server is private again."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from voipclient.net.invite import parse_invite
from voipclient.portmap import lan_address, open_ports

from ..net.fake_igd import FakeIgd
from .conftest import AppFactory

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


@pytest.fixture
def router() -> Iterator[FakeIgd]:
    # the router reports this machine's own address as its WAN side, so the invite's host is
    # one B can really reach (a documentation/private address: the link uses the LAN address)
    fake = FakeIgd(external_ip=lan_address()).start()
    yield fake
    fake.stop()


def test_a_friend_opens_the_invite_and_lands_in_the_channel(
    qtbot: Any, make_app: AppFactory, router: FakeIgd
) -> None:
    host = make_app("host")
    host.map_ports = lambda port: open_ports(port, location=router.location, timeout=4.0)
    host.start_local()
    qtbot.waitUntil(lambda: host.controller.state == "ready", timeout=15_000)
    # select the channel to invite to, then Host for friends
    ctl = host.controller
    squad = ctl.model.channel_id("Squad A")
    assert squad is not None
    host.window.tree.setCurrentItem(host.window.tree.item_for(squad))
    host.window.host_action.trigger()
    dialog = host.host_dialog
    assert dialog is not None
    qtbot.waitUntil(lambda: not dialog.busy() and dialog.mapping() is not None, timeout=15_000)
    server = ctl.local_server
    assert server.settings.host == "0.0.0.0"  # every interface: the user opted in
    port = server.address.port
    assert {(port, "TCP"), (port, "UDP")} <= set(router.mappings)
    link = dialog.link()
    invite = parse_invite(link)
    assert (invite.port, invite.pin, invite.channel) == (port, server.address.pin, "Squad A")
    with socket.create_connection((invite.host, port), timeout=5):
        pass  # reachable on the address friends get, not only on loopback
    # the lease is renewed at half its length (the fake router grants 24 h)
    assert host._renew_timer.isActive() and host._renew_timer.interval() == 12 * 3600 * 1000
    added = len(router.calls_of("AddPortMapping"))
    host._renew_mapping()
    qtbot.waitUntil(lambda: len(router.calls_of("AddPortMapping")) >= added + 2, timeout=10_000)
    # B: a fresh install, no saved server, no pinned key
    friend = make_app("friend")
    asked: list[object] = []
    friend.controller.pin_approval_needed.connect(lambda *a: asked.append(a))
    friend.open_invite(link)
    qtbot.waitUntil(lambda: friend.controller.state == "ready", timeout=15_000)
    qtbot.waitUntil(
        lambda: (row := friend.controller.model.row(squad)) is not None and row.joined,
        timeout=10_000,
    )
    assert asked == [] and friend.pin_dialog is None  # the link's pin: no trust prompt
    saved = friend.controller.prefs.bookmarks
    assert [(b.host, b.port, b.pin) for b in saved] == [(invite.host, port, invite.pin)]
    # Stop hosting: the router forgets the forwarding, the server is loopback-only again
    dialog.stop_hosting()
    qtbot.waitUntil(lambda: not router.mappings, timeout=10_000)
    qtbot.waitUntil(
        lambda: ctl.local_server is not None and ctl.local_server.settings.host == "127.0.0.1",
        timeout=10_000,
    )
    qtbot.waitUntil(lambda: ctl.state == "ready", timeout=20_000)  # reconnected by itself
    assert host.window.host_action.text() == "Host for friends…"
    # and it can be opened again (a new dialog each time)
    host.window.host_action.trigger()
    again = host.host_dialog
    assert again is not None and again is not dialog and again.isVisible()
    assert host.window.host_action.text() == "Hosting for friends…"
    qtbot.waitUntil(lambda: not again.busy(), timeout=15_000)
    again.stop_hosting()
    qtbot.waitUntil(lambda: not router.mappings, timeout=10_000)


def test_a_bad_invite_link_says_why_and_connects_nowhere(
    qtbot: Any, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtWidgets import QMessageBox

    app = make_app("typo")
    shown: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda _p, _t, text: shown.append(text))
    app.open_invite("voipclient://voice.example:99999/?pin=sha256/x")
    assert shown and "cannot be used" in shown[0] and "99999" in shown[0]
    assert app.controller.bookmark is None and app.controller.prefs.bookmarks == ()
