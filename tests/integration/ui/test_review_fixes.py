"""Behaviour found in review, each shown against a real relay: a key bound twice is refused with a
reason, a channel the user left is not rejoined after a reconnect, an answer about a pin the
connection no longer presents is ignored, "mark verified" never verifies a key other than the one
whose safety number was shown, and signals of a replaced connection are ignored. (The hot mic
surviving mute/unmute is shown in test_main_window.)"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from voipclient.client.qt_connection import ServerConnection
from voipclient.crypto.identity import IdentityKey

from ..conftest import A, B, Starter
from .conftest import (
    AppFactory,
    channel_item,
    connect,
    join_by_double_click,
    pair_in,
    round_trip,
)

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def test_a_key_already_bound_elsewhere_is_refused_with_the_reason(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("alice")
    connect(qtbot, app, server)
    join_by_double_click(qtbot, app, A)
    join_by_double_click(qtbot, app, B)
    messages: list[str] = []
    app.controller.message.connect(lambda _level, text: messages.append(text))
    assert app.controller.set_channel_binding(A, "f13")
    assert not app.controller.set_channel_binding(B, "f13")
    assert messages == ["f13 is already the push-to-talk key of A: remove it there first"]
    assert app.controller.model.row(B).ptt_keys == ()  # type: ignore[union-attr]
    assert [sorted(b.channels) for b in app.controller.router.bindings] == [[A]]


def test_a_channel_left_is_not_rejoined_after_a_reconnect(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    app = make_app("alice")
    connect(qtbot, app, server)
    join_by_double_click(qtbot, app, A)
    app.controller.disconnect_server()  # remembers A for the next connect
    qtbot.waitUntil(lambda: app.controller.state == "closed", timeout=5_000)
    connect(qtbot, app, server)
    qtbot.waitUntil(lambda: app.controller.model.row(A).joined, timeout=10_000)  # type: ignore[union-attr]
    app.controller.leave(A)
    join_by_double_click(qtbot, app, B)
    qtbot.waitUntil(
        lambda: (row := app.controller.model.row(A)) is not None and not row.joined,
        timeout=10_000,
    )
    server.stop(signal.SIGKILL)
    qtbot.waitUntil(lambda: app.controller.state != "ready", timeout=10_000)
    start_server("--port", str(server.port), data_dir=server.data_dir)
    qtbot.waitUntil(lambda: app.controller.state == "ready", timeout=40_000)
    qtbot.waitUntil(
        lambda: (row := app.controller.model.row(B)) is not None and row.joined, timeout=10_000
    )
    # The restore's joins went out in one batch: a round trip queued after them proves that the
    # server's answer to a join of A, had there been one, has reached the window.
    round_trip(qtbot, app)
    assert not app.controller.model.row(A).joined  # type: ignore[union-attr]
    assert channel_item(app, B).font(0).bold() and not channel_item(app, A).font(0).bold()


def test_an_answer_about_another_pin_is_ignored(qtbot: Any, start_server: Starter) -> None:
    server = start_server()
    conn = ServerConnection("qt-ann", IdentityKey.generate())
    with qtbot.waitSignal(conn.pin_approval_needed, timeout=10_000):
        conn.open(server.host, server.port, None)
    # The answer is handled at once on this thread (the connection was not moved to another):
    # had it been taken, the state would change during the call.
    with qtbot.assertNotEmitted(conn.state_changed):
        conn.approve_presented_pin("sha256/" + "B" * 43 + "=", True)  # not the key presented now
    assert conn.state == "awaiting_approval" and conn.session is None
    with qtbot.waitSignal(
        conn.state_changed, timeout=10_000, check_params_cb=lambda s, d: s == "ready"
    ):
        conn.approve_presented_pin(server.pin, True)
    conn.close()


def test_verifying_a_stale_key_verifies_nothing(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    alice, _bob = pair_in(qtbot, make_app, start_server())
    bob = next(u for u in alice.controller.model.roster.users.values() if u.name == "bob")
    shown_key = IdentityKey.generate().public_bytes()  # a number computed from another key
    assert alice.controller.safety_number(bob.sender_id, shown_key) is None
    alice.controller.set_verified(bob.sender_id, True, shown_key)
    round_trip(qtbot, alice)  # queued after it on the connection's thread: its answer is in
    assert alice.controller.model.trust_of(bob.sender_id) == "tofu"
    alice.controller.set_verified(bob.sender_id, True, bob.ik_pub)
    qtbot.waitUntil(
        lambda: alice.controller.model.trust_of(bob.sender_id) == "verified", timeout=5_000
    )


def test_signals_of_a_replaced_connection_are_ignored(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    """A queued "closed" (or any event) from the previous connection can arrive after the switch
    to a new one: it must not clear the new server's tree or change the state."""
    server = start_server()
    app = make_app("alice")
    connect(qtbot, app, server)
    rows = app.controller.model.rows()
    old = ServerConnection("old", IdentityKey.generate())  # stands for the replaced connection
    old.state_changed.connect(app.controller._on_state)
    old.session_event.connect(app.controller._on_session_event)
    old.state_changed.emit("closed", "the old server closed the connection")
    assert app.controller.state == "ready"
    assert app.controller.model.rows() == rows and rows
    app.controller.conn.state_changed.emit("closed", "the current one did")  # type: ignore[union-attr]
    assert app.controller.state == "closed"  # the current connection's signals still count
