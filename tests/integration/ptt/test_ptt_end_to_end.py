"""Multi-channel push-to-talk end to end, with every part real: xdotool key events under Xvfb →
pynput → PttRouter → capture worker (WAV microphone, Opus) → ServerConnection (QSslSocket + UDP,
E2E sealing) → a real relay process → two listening ServerConnections, one in channel A only and
one in channel B only. Holding F13 (bound to A) is heard in A only; adding F14 (bound to B) is
heard in both; releasing both ends both (VOICE_LAST). The time from the key press to the first
datagram sent to that channel is printed (the benchmark reports it too)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PySide6.QtCore import QCoreApplication, QObject, Signal

from voipclient.audio.dsp import CaptureProcessor, CaptureSettings
from voipclient.audio.file_engine import FileEngine
from voipclient.audio.opus import OpusEncoder
from voipclient.audio.voice import TransmitGate, VoiceSender
from voipclient.audio.workers import CaptureWorker
from voipclient.client.qt_connection import ServerConnection
from voipclient.crypto.identity import IdentityKey
from voipclient.ptt.pynput_source import PynputSource
from voipclient.ptt.router import Binding, PttRouter
from voipclient.ptt.service import PttService

from ..conftest import A, B, ServerProcess, Starter

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(90)]
SPEECH = Path(__file__).parents[2] / "data" / "speech-0-48k.wav"


class VoiceBridge(QObject):
    """The capture thread's door to the connection's thread (a queued signal)."""

    voice = Signal(object, object, bytes)


def connected(qtbot: Any, server: ServerProcess, name: str, *channels: int) -> ServerConnection:
    conn = ServerConnection(name, IdentityKey.generate())
    with qtbot.waitSignal(
        conn.state_changed, timeout=10_000, check_params_cb=lambda s, d: s == "ready"
    ):
        conn.open(server.host, server.port, server.pin)
    for channel in channels:
        conn.join(channel)
    qtbot.waitUntil(
        lambda: (
            conn.session is not None
            and conn.session.sender_id is not None
            and set(channels) <= conn.session.roster.channels_of(conn.session.sender_id)
            and conn.udp_bound
        ),
        timeout=10_000,
    )
    return conn


def holds_key(listener: ServerConnection, channel_id: int, sender_id: int | None) -> bool:
    """The listener's E2E layer holds a sender key of ``sender_id`` for the channel (a KeyDist
    was accepted), so that sender's frames there open at once."""
    sec = listener.secure
    receiver = None if sec is None else sec.receiver
    return receiver is not None and any(
        info.channel_id == channel_id and info.sender_id == sender_id and info.gens
        for info in receiver.key_info()
    )


def xdotool(*args: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["xdotool", *args], check=True, timeout=5, env=os.environ.copy())
    return t0


def test_held_keys_choose_who_hears_me(qtbot: Any, start_server: Starter) -> None:
    server = start_server()
    talker = connected(qtbot, server, "talker", A, B)
    only_a = connected(qtbot, server, "only-a", A)
    only_b = connected(qtbot, server, "only-b", B)
    # keys: wait until both listeners hold the talker's sender keys (KeyDist), so the first
    # frames after a key press open at once
    talker_id = talker.session.sender_id  # type: ignore[union-attr]
    qtbot.waitUntil(
        lambda: holds_key(only_a, A, talker_id) and holds_key(only_b, B, talker_id),
        timeout=10_000,
    )

    sent_at: dict[int, float] = {}
    sends = [0]  # voice frames the talker sent
    bridge = VoiceBridge()

    def on_voice(targets: Any, ending: Any, payload: bytes) -> None:
        now = time.monotonic()
        for channel in targets:
            sent_at.setdefault(channel, now)
        sends[0] += 1
        talker.send_voice(targets, ending, payload)

    bridge.voice.connect(on_voice)
    engine = FileEngine(SPEECH, None, realtime=True)
    router = PttRouter([Binding.parse("alpha", "f13", [A]), Binding.parse("bravo", "f14", [B])])
    service = PttService(router)
    worker = CaptureWorker(
        engine,
        CaptureProcessor(CaptureSettings(noise_suppression="off", agc=False)),
        VoiceSender(OpusEncoder()),
        TransmitGate(release_ms=100),
        lambda targets, ending, payload: bridge.voice.emit(tuple(targets), tuple(ending), payload),
        route=service.route,  # the router's slot, read every frame without its lock
    )
    source = PynputSource()
    ok, reason = source.available()
    assert ok, reason
    service.attach(source)
    stop = threading.Event()

    def clock() -> None:  # the WAV "device": moves frames in real time
        engine.start(time.monotonic())
        while not stop.is_set():
            engine.tick(time.monotonic())
            time.sleep(0.005)

    ticker = threading.Thread(target=clock, daemon=True)
    ticker.start()
    worker.start()
    time.sleep(0.3)

    def heard() -> tuple[int, int]:
        return len(only_a.inbox), len(only_b.inbox)

    def decided(frames: int) -> None:
        """Wait until the capture worker has decided ``frames`` more frames, then deliver what
        it emitted for them (queued to this thread) to ``on_voice``."""
        target = worker.frames + frames + 1  # the counter moves before a frame is sent
        qtbot.waitUntil(lambda: worker.frames >= target, timeout=10_000)
        QCoreApplication.processEvents()

    try:
        decided(25)  # 500 ms of microphone with no key held...
        assert sends == [0]  # ... sent nothing
        assert heard() == (0, 0)  # no key held: nobody hears anything
        pressed_a = xdotool("keydown", "F13")
        qtbot.waitUntil(lambda: heard()[0] >= 25, timeout=10_000)
        assert heard()[1] == 0  # F13 alone: channel A only
        pressed_b = xdotool("keydown", "F14")
        before_b = heard()
        qtbot.waitUntil(lambda: heard()[1] >= 25, timeout=10_000)
        assert heard()[0] > before_b[0] + 20  # both keys: A keeps hearing, B hears too
        xdotool("keyup", "F13", "keyup", "F14")
        # release delay (100 ms), then VOICE_LAST: both ends have it, and what was sent before it
        qtbot.waitUntil(
            lambda: any(f.last for f in only_a.inbox) and any(f.last for f in only_b.inbox),
            timeout=10_000,
        )
        settled, sent = heard(), sends[0]
        decided(25)  # 500 ms more of microphone with no key held...
        assert sends[0] == sent  # ... sent nothing after the VOICE_LASTs
        assert heard() == settled  # released: silence again
        last_a = [f for f in only_a.inbox if f.last]
        last_b = [f for f in only_b.inbox if f.last]
        assert last_a and last_b  # each transmission ended cleanly
        assert {f.sender_id for f in only_a.inbox} == {talker.session.sender_id}  # type: ignore[union-attr]
        latency_a = (sent_at[A] - pressed_a) * 1000
        latency_b = (sent_at[B] - pressed_b) * 1000
        print(f"\nkey press → first datagram sent: F13 {latency_a:.1f} ms, F14 {latency_b:.1f} ms")
        assert latency_a < 100 and latency_b < 100  # one 20 ms frame + xdotool start-up
    finally:
        stop.set()
        worker.stop()
        service.close()
        ticker.join(2)
        subprocess.run(["xdotool", "keyup", "F13", "keyup", "F14"], check=False, timeout=5)
        for conn in (talker, only_a, only_b):
            conn.close()
        engine.close()
    assert np.isfinite(worker.input_level.peak_dbfs)
