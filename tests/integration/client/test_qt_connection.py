"""The desktop client's ServerConnection (QSslSocket + QUdpSocket) against a real relay process:
first-contact pin approval, a mismatch refused before any application byte, login, UDP address
validation, voice both ways with a bot, and the connection living in its own QThread."""

from __future__ import annotations

import asyncio
import select
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QObject, QThread, Signal

from voipclient.audio.payload import decode_payload, encode_payload
from voipclient.bot import BotOptions, VoiceBot
from voipclient.client.qt_connection import ServerConnection
from voipclient.crypto.identity import IdentityKey
from voipclient.net.events import ServerShuttingDown
from voipclient.net.pins import server_key
from voipclient.net.supervisor import ApplyLocalSettings, ReconnectScheduled, SupervisorConfig
from voipclient.storage.trust import PinFile

from ..conftest import A, B, ServerProcess, Starter

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


def test_an_approved_pin_is_remembered_per_server(
    qtbot: Any, start_server: Starter, tmp_path: Path
) -> None:
    server = start_server()
    pins = PinFile(tmp_path / "pins.json")
    identity = IdentityKey.generate()
    first = ServerConnection("qt-hal", identity, pin_file=pins)
    with qtbot.waitSignal(first.pin_approval_needed, timeout=10_000):
        first.open(server.host, server.port, None)
    with qtbot.waitSignal(
        first.state_changed, timeout=10_000, check_params_cb=lambda s, d: s == "ready"
    ):
        first.approve_pin(True)
    first.close()
    assert pins.load().get(server_key(server.host, server.port)) == server.pin
    again = ServerConnection("qt-hal", identity, pin_file=pins)
    asked: list[object] = []
    again.pin_approval_needed.connect(lambda *a: asked.append(a))
    ready(again, qtbot, server, None)  # no pin given: the stored one is used, nobody asked
    assert asked == []
    again.close()


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


class UdpBlocker:
    """A real UDP relay between the client and the server that can drop everything (a firewall
    that blocks UDP), run in a thread with plain sockets."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(server)
        self.blocked = True
        self.client: tuple[str, int] | None = None
        self.passed = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.front.getsockname()
        return host, port

    def _run(self) -> None:
        while not self._stop:
            ready, _, _ = select.select([self.front, self.back], [], [], 0.05)
            for sock in ready:
                if sock is self.front:
                    data, self.client = self.front.recvfrom(2048)
                    if not self.blocked:
                        self.back.send(data)
                        self.passed += 1
                else:
                    data = self.back.recv(2048)
                    if not self.blocked and self.client is not None:
                        self.front.sendto(data, self.client)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.front.close()
        self.back.close()


def test_udp_blocked_voice_goes_over_tls_and_returns_to_udp(
    qtbot: Any, start_server: Starter
) -> None:
    server = start_server()
    blocker = UdpBlocker((server.host, server.port))
    config = SupervisorConfig(bind_timeout=2.0, probe_interval=2.0)
    conn = ServerConnection("qt-erin", IdentityKey.generate(), config=config)
    conn.udp_addr = blocker.address
    try:
        with qtbot.waitSignal(conn.transport_changed, timeout=10_000) as changed:
            conn.open(server.host, server.port, server.pin)
        assert changed.args == ["tunnel"]  # no answer over UDP within 2 s
        conn.join(A)
        result: dict[str, Any] = {}
        thread = run_bot_in_thread(
            BotOptions(
                host=server.host,
                port=server.port,
                pin=server.pin,
                name="bot2",
                join=["A"],
                talk=["A"],
                play=DATA / "speech-0-48k.wav",
                seconds=6.0,
            ),
            result,
        )
        qtbot.waitUntil(lambda: len(conn.inbox) >= 25, timeout=15_000)  # heard over TLS
        tunnelled = conn.datagrams_in
        assert tunnelled >= 25 and conn.transport == "tunnel"
        blocker.blocked = False  # the firewall opens: the next probe finds UDP again
        with qtbot.waitSignal(conn.transport_changed, timeout=10_000) as changed:
            pass
        assert changed.args == ["udp"]
        qtbot.waitUntil(
            lambda: blocker.passed > 0 and conn.datagrams_in > tunnelled + 25, timeout=10_000
        )
        thread.join(15)
        assert "error" not in result, result.get("error")
    finally:
        conn.close()
        blocker.close()


def test_reconnects_after_the_relay_restarts_and_restores_memberships(
    qtbot: Any, start_server: Starter
) -> None:
    server = start_server()
    conn = ServerConnection("qt-frank", IdentityKey.generate())
    actions: list[object] = []
    conn.supervisor_action.connect(actions.append)
    ready(conn, qtbot, server, server.pin)
    settings = {"volumes": {A: 0.5}, "muted_users": ["mallory"], "ptt": {"f13": [A]}}
    conn.set_local_settings(settings)
    conn.join(A)
    qtbot.waitUntil(
        lambda: (
            conn.session is not None
            and conn.session.sender_id is not None
            and A in conn.session.roster.channels_of(conn.session.sender_id)
        ),
        timeout=5_000,
    )
    port = server.port
    server.stop(signal.SIGKILL)  # no goodbye: the connection just dies
    qtbot.waitUntil(lambda: conn.state != "ready", timeout=10_000)
    restarted = start_server("--port", str(port), data_dir=server.data_dir)
    assert restarted.pin == server.pin  # same key, same pin: no new approval needed
    with qtbot.waitSignal(
        conn.state_changed, timeout=20_000, check_params_cb=lambda s, d: s == "ready"
    ):
        pass
    qtbot.waitUntil(
        lambda: (
            conn.session is not None
            and conn.session.sender_id is not None
            and A in conn.session.roster.channels_of(conn.session.sender_id)
        ),
        timeout=10_000,
    )  # the membership came back by itself
    restored = [a for a in actions if isinstance(a, ApplyLocalSettings)]
    assert restored and restored[-1].settings == settings  # volumes, mutes, PTT bindings
    assert any(isinstance(a, ReconnectScheduled) for a in actions)
    conn.close()


def test_a_server_restart_notice_brings_the_client_back(qtbot: Any, start_server: Starter) -> None:
    server = start_server()
    conn = ServerConnection("qt-gina", IdentityKey.generate())
    events: list[object] = []
    conn.session_event.connect(events.append)
    ready(conn, qtbot, server, server.pin)
    conn.join(B)
    qtbot.waitUntil(lambda: conn.supervisor.stats.udp_rtt_ms is not None, timeout=10_000)
    assert conn.supervisor.stats.udp_rtt_ms < 50  # the UDP hop ping measured the RTT
    port = server.port
    assert server.stop(signal.SIGTERM) == 0  # the server says goodbye with a restart hint
    qtbot.waitUntil(lambda: any(isinstance(e, ServerShuttingDown) for e in events), timeout=5_000)
    restarted = start_server("--port", str(port), data_dir=server.data_dir)
    with qtbot.waitSignal(
        conn.state_changed, timeout=20_000, check_params_cb=lambda s, d: s == "ready"
    ):
        pass
    qtbot.waitUntil(
        lambda: (
            conn.session is not None
            and conn.session.sender_id is not None
            and B in conn.session.roster.channels_of(conn.session.sender_id)
        ),
        timeout=10_000,
    )
    assert restarted.alive()
    conn.close()
