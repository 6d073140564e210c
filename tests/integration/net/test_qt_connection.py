"""The desktop client's ServerConnection (QSslSocket + QUdpSocket) against a real relay process:
first-contact pin approval, a mismatch refused before any application byte, login, UDP address
validation, voice both ways with a bot, and the connection living in its own QThread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QObject, QThread, Signal

from voipclient.audio.payload import decode_payload, encode_payload
from voipclient.bot import BotOptions, VoiceBot
from voipclient.crypto.identity import IdentityKey
from voipclient.net.qt_connection import ServerConnection

from ..conftest import A, ServerProcess, Starter

pytestmark = pytest.mark.timeout(60)
DATA = Path(__file__).parents[2] / "data"


def ready(conn: ServerConnection, qtbot: Any, server: ServerProcess, pin: str | None) -> None:
    with qtbot.waitSignal(
        conn.state_changed, timeout=10_000, check_params_cb=lambda s, d: s == "ready"
    ):
        conn.open(server.host, server.port, pin)


def test_first_contact_asks_for_the_pin_then_logs_in(qtbot: Any, start_server: Starter) -> None:
    server = start_server()
    conn = ServerConnection("qt-ann", IdentityKey.generate())
    with qtbot.waitSignal(conn.pin_approval_needed, timeout=10_000) as blocker:
        conn.open(server.host, server.port, None)
    assert blocker.args == [server.host, server.port, server.pin]
    assert conn.session is None  # nothing sent while the user decides
    with qtbot.waitSignal(
        conn.state_changed, timeout=10_000, check_params_cb=lambda s, d: s == "ready"
    ):
        conn.approve_pin(True)
    qtbot.waitUntil(lambda: conn.udp_bound, timeout=5_000)
    assert conn.transport == "udp"
    conn.close()


def test_rejecting_the_pin_or_a_mismatch_refuses_before_any_byte(
    qtbot: Any, start_server: Starter
) -> None:
    server = start_server()
    conn = ServerConnection("qt-bob", IdentityKey.generate())
    with qtbot.waitSignal(conn.pin_approval_needed, timeout=10_000):
        conn.open(server.host, server.port, None)
    with qtbot.waitSignal(conn.state_changed, timeout=5_000) as blocker:
        conn.approve_pin(False)
    assert blocker.args[0] == "refused"
    wrong = "sha256/" + "B" * 43 + "="
    with qtbot.waitSignal(
        conn.state_changed, timeout=10_000, check_params_cb=lambda s, d: s == "refused"
    ) as blocker:
        conn.open(server.host, server.port, wrong)
    _, why = blocker.args
    assert server.pin in why and wrong in why and "Nothing was sent" in why
    assert conn.session is None  # the session (and its first byte) was never created
    conn.close()


def run_bot_in_thread(options: BotOptions, result: dict[str, Any]) -> threading.Thread:
    def target() -> None:
        async def go() -> None:
            bot = VoiceBot(options)
            try:
                await bot.run()
            finally:
                result.update(bot.stats_dict())
                await bot.close()

        try:
            asyncio.run(go())
        except Exception as exc:  # reported by the test
            result["error"] = repr(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_voice_both_ways_with_a_bot_over_udp(qtbot: Any, start_server: Starter) -> None:
    server = start_server()
    conn = ServerConnection("qt-carol", IdentityKey.generate())
    ready(conn, qtbot, server, server.pin)
    conn.join(A)
    qtbot.waitUntil(lambda: conn.udp_bound, timeout=5_000)
    result: dict[str, Any] = {}
    thread = run_bot_in_thread(
        BotOptions(
            host=server.host,
            port=server.port,
            pin=server.pin,
            name="bot",
            join=["A"],
            talk=["A"],
            play=DATA / "speech-0-48k.wav",
            seconds=4.0,
        ),
        result,
    )
    # the bot's voice arrives in the connection's inbox, opened (E2E) and in order
    qtbot.waitUntil(lambda: len(conn.inbox) >= 50, timeout=15_000)
    frames = list(conn.inbox)
    assert {f.channel_id for f in frames} == {A}
    numbers = [decode_payload(f.payload).frame_no for f in frames]  # type: ignore[union-attr]
    assert numbers == sorted(numbers)
    assert conn.datagrams_in >= 50 and conn.transport == "udp"
    # and ours reaches the bot: send while it is still listening
    for k in range(100):
        conn.send_voice([A], [], encode_payload(k, b"\xfc" + bytes(79)))
        qtbot.wait(20)
    thread.join(15)
    assert "error" not in result, result.get("error")
    heard = {s["name"]: s for s in result["streams"]}
    assert heard["qt-carol"]["received"] >= 50
    conn.close()


class Driver(QObject):
    """Calls the connection's slots from the test thread through queued signals."""

    open = Signal(str, int, object)
    close = Signal()


def test_connection_runs_in_its_own_thread(qtbot: Any, start_server: Starter) -> None:
    server = start_server()
    thread = QThread()
    conn = ServerConnection("qt-dave", IdentityKey.generate())
    conn.moveToThread(thread)
    driver = Driver()
    driver.open.connect(conn.open)
    driver.close.connect(conn.close)
    thread.start()
    try:
        with qtbot.waitSignal(
            conn.state_changed, timeout=10_000, check_params_cb=lambda s, d: s == "ready"
        ):
            driver.open.emit(server.host, server.port, server.pin)
        assert conn.thread() is thread
        qtbot.waitUntil(lambda: conn.udp_bound, timeout=5_000)
        with qtbot.waitSignal(conn.state_changed, timeout=5_000):
            driver.close.emit()
    finally:
        thread.quit()
        thread.wait(5_000)
