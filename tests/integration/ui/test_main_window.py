"""The desktop app end to end, every part real: two app instances (window, controller, audio on
the PulseAudio null sink, pynput hotkeys under Xvfb, identity keys in the Secret Service) talking
through a real relay process."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QWidget

from voipclient.ui.main_window import ROLE_ID, TALKING

from ..conftest import A, B, Starter
from .conftest import (
    AppFactory,
    channel_item,
    connect,
    join_by_double_click,
    member_item,
    pair_in,
    talking,
)

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(120)]


def test_connect_shows_channels_and_members(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    alice = make_app("alice")
    connect(qtbot, alice, server)
    names = {
        alice.window.tree.topLevelItem(i).text(0)
        for i in range(alice.window.tree.topLevelItemCount())
    }
    assert any(n.startswith("Lobby") for n in names)
    qtbot.waitUntil(lambda: member_item(alice, 1, "alice") is not None)
    assert alice.window.state_label.text() == "Connected"
    qtbot.waitUntil(lambda: "ping" in alice.window.link_label.text(), timeout=10_000)
    assert "UDP" in alice.window.link_label.text()


def test_join_two_channels_and_leave_one(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    alice = make_app("alice")
    connect(qtbot, alice, server)
    join_by_double_click(qtbot, alice, A)
    join_by_double_click(qtbot, alice, B)
    mine = alice.controller.model.roster.channels_of(alice.controller.model.me or 0)
    assert {A, B} <= mine
    assert member_item(alice, A, "alice") is not None and member_item(alice, B, "alice") is not None
    # the channel controls show the selected channel; its button leaves
    alice.window.tree.setCurrentItem(channel_item(alice, B))
    assert alice.window.controls.join_button.text() == "Leave"
    qtbot.mouseClick(alice.window.controls.join_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not alice.controller.model.row(B).joined, timeout=10_000)  # type: ignore[union-attr]
    assert alice.controller.model.row(A).joined  # type: ignore[union-attr]


def xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=5)


def test_bound_key_shows_talking_mark_in_other_client(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    alice, bob = pair_in(qtbot, make_app, start_server(), A)
    # bind F13 to channel A with the capture widget of the channel controls
    alice.window.tree.setCurrentItem(channel_item(alice, A))
    capture = alice.window.controls.ptt
    qtbot.mouseClick(capture, Qt.MouseButton.LeftButton)
    assert capture.is_capturing()
    qtbot.keyPress(capture, Qt.Key.Key_F13)
    qtbot.keyRelease(capture, Qt.Key.Key_F13)
    qtbot.waitUntil(lambda: alice.controller.model.row(A).ptt_keys == ("f13",))  # type: ignore[union-attr]
    assert "f13" in channel_item(alice, A).text(1)
    try:
        xdotool("keydown", "F13")
        qtbot.waitUntil(lambda: talking(bob, A, "alice"), timeout=10_000)
        assert TALKING in channel_item(bob, A).text(0)
        # our own mark too: the window reads it from the capture worker every 100 ms, so on a
        # loaded machine it can come a moment after bob's
        qtbot.waitUntil(lambda: talking(alice, A, "alice"), timeout=5_000)
    finally:
        xdotool("keyup", "F13")
    qtbot.waitUntil(lambda: not talking(bob, A, "alice"), timeout=10_000)


def test_chat_with_a_mention(qtbot: Any, make_app: AppFactory, start_server: Starter) -> None:
    alice, bob = pair_in(qtbot, make_app, start_server(), A)
    mentions: list[tuple[int, str, str]] = []
    bob.window.chat.mentioned.connect(lambda c, a, t: mentions.append((c, a, t)))
    alice.window.chat.show_channel(A)
    bob.window.chat.show_channel(1)
    box = alice.window.chat.findChild(QWidget, "chatInput")
    assert box is not None
    box.setFocus()
    qtbot.keyClicks(box, "hey @bo")
    qtbot.keyClick(box, Qt.Key.Key_Tab)  # completes the member's name
    qtbot.keyClicks(box, "ready?")
    qtbot.keyClick(box, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: bool(mentions), timeout=10_000)
    assert mentions == [(A, "alice", "hey @bob ready?")]
    # bob is looking at the Lobby's conversation: A's message waits as an unread mention
    assert (bob.window.chat.unread(A), bob.window.chat.mention_count(A)) == (1, 1)
    alice_view = alice.window.chat.findChild(QWidget, f"chatView-{A}")
    assert alice_view is not None and "ready?" in alice_view.toPlainText()


def test_reconnect_banner_after_server_dies(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server()
    alice = make_app("alice")
    connect(qtbot, alice, server)
    join_by_double_click(qtbot, alice, A)
    server.stop(signal.SIGKILL)
    banner = alice.window.banner
    qtbot.waitUntil(lambda: banner.isVisible() and "Reconnecting" in banner.text(), timeout=10_000)
    assert alice.window.state_label.text() != "Connected"
    start_server("--port", str(server.port), data_dir=server.data_dir)
    qtbot.waitUntil(lambda: alice.controller.state == "ready", timeout=40_000)
    qtbot.waitUntil(lambda: not banner.isVisible(), timeout=5_000)
    qtbot.waitUntil(
        lambda: (row := alice.controller.model.row(A)) is not None and row.joined, timeout=10_000
    )


def test_first_run_local_server_shows_channels(qtbot: Any, make_app: AppFactory) -> None:
    app = make_app("first", local_server=True)
    app.first_connect()
    qtbot.waitUntil(lambda: app.controller.state == "ready", timeout=15_000)
    names = [row.name for row in app.controller.model.rows()]
    assert {"Lobby", "General", "Squad A", "Squad B"} <= set(names)
    assert app.window.tree.topLevelItemCount() >= 1
    assert ROLE_ID  # the tree's data roles are importable for the screenshot script


def test_hot_mic_channel_transmits_without_a_key(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    from dataclasses import replace

    alice, bob = pair_in(qtbot, make_app, start_server(), B)
    prefs = alice.controller.prefs
    alice.apply_prefs(replace(prefs, transmit=replace(prefs.transmit, mode="continuous")))
    alice.window.tree.setCurrentItem(channel_item(alice, B))
    hot_mic = alice.window.controls.hot_mic
    indicator = QPoint(8, hot_mic.height() // 2)  # on the box (the row is wider than its text)
    qtbot.mouseClick(hot_mic, Qt.MouseButton.LeftButton, pos=indicator)
    assert alice.controller.model.row(B).hot_mic  # type: ignore[union-attr]
    assert "hot mic" in channel_item(alice, B).text(1)
    qtbot.waitUntil(lambda: talking(bob, B, "alice"), timeout=10_000)
    # mute, then unmute: the hot mic goes quiet and comes back by itself
    alice.window.mute_action.trigger()
    qtbot.waitUntil(lambda: not talking(bob, B, "alice"), timeout=10_000)
    alice.window.mute_action.trigger()
    qtbot.waitUntil(lambda: talking(bob, B, "alice"), timeout=10_000)
    qtbot.mouseClick(hot_mic, Qt.MouseButton.LeftButton, pos=indicator)  # off again
    qtbot.waitUntil(lambda: not talking(bob, B, "alice"), timeout=10_000)
