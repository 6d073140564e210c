"""Push-to-talk: the time from a key press to the first voice datagram sent to that channel.

Real parts throughout: xdotool key events on the X display (``make bench`` runs under the test
environment's Xvfb) → pynput → PttService/PttRouter → capture worker (WAV microphone clocked in
real time, DSP, TransmitGate, Opus) → ServerConnection (E2E seal + hop MAC, UDP) logged in to a
real relay process. Each press alternates F13 (channel A) and F14 (channel B); a press is held
for 300 ms, then released, with a pause. Split: key → router event (X server + pynput),
router → frame encoded (waiting for the next capture frame, ≤ one frame), encoded → datagram
sent (the queued hand-over to the connection's thread, sealing).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QCoreApplication, QObject, Signal

from voipclient.audio.dsp import CaptureProcessor, CaptureSettings
from voipclient.audio.file_engine import FileEngine, read_wav_mono16
from voipclient.audio.opus import OpusEncoder
from voipclient.audio.voice import TransmitGate, VoiceSender
from voipclient.audio.workers import CaptureWorker
from voipclient.client.qt_connection import ServerConnection
from voipclient.crypto.identity import IdentityKey
from voipclient.ptt.pynput_source import PynputSource
from voipclient.ptt.router import Binding, PttRouter
from voipclient.ptt.service import PttService

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "data" / "speech-0-48k.wav"
PRESSES = 30
A, B = 2, 3
START_LINE = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+) .* pin=(?P<pin>\S+)$")


class Bridge(QObject):
    voice = Signal(object, object, bytes)


def wait(app: QCoreApplication, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        app.processEvents()
        time.sleep(0.001)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


def main() -> None:
    app = QCoreApplication.instance() or QCoreApplication(sys.argv)
    tmp = Path(tempfile.mkdtemp(prefix="ptt-latency-"))
    out = tmp / "server.out"
    with out.open("wb") as fo:
        relay = subprocess.Popen(
            [
                *(sys.executable, "-m", "voipclient.server", "--port", "0"),
                *("--data-dir", str(tmp), "--channel", "A", "--channel", "B"),
            ],
            stdout=fo,
            stderr=subprocess.DEVNULL,
        )
    try:
        wait(app, lambda: "\n" in out.read_text(), 20)
        m = START_LINE.search(out.read_text().splitlines()[0])
        assert m is not None
        conn = ServerConnection("ptt-bench", IdentityKey.generate())
        conn.open(m["host"], int(m["port"]), m["pin"])
        wait(app, lambda: conn.state == "ready", 10)
        conn.join(A)
        conn.join(B)
        wait(app, lambda: conn.udp_bound, 10)
        sent: list[tuple[float, tuple[int, ...]]] = []  # after send_voice: sealed and sent
        encoded: list[tuple[float, tuple[int, ...]]] = []
        bridge = Bridge()

        def to_connection(targets: Any, ending: Any, payload: bytes) -> None:
            conn.send_voice(targets, ending, payload)
            sent.append((time.monotonic(), tuple(targets)))

        bridge.voice.connect(to_connection)
        mic = tmp / "mic.wav"  # the speech three times over: longer than the run
        with wave.open(str(mic), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(48_000)
            w.writeframes(np.tile(read_wav_mono16(SPEECH), 3).astype("<i2").tobytes())
        engine = FileEngine(mic, None, realtime=True)

        def from_worker(targets: Any, ending: Any, payload: bytes) -> None:
            encoded.append((time.monotonic(), tuple(targets)))
            bridge.voice.emit(tuple(targets), tuple(ending), payload)

        routed: list[tuple[float, frozenset[int]]] = []
        service = PttService(
            PttRouter([Binding.parse("a", "f13", [A]), Binding.parse("b", "f14", [B])])
        )
        worker = CaptureWorker(
            engine,
            CaptureProcessor(CaptureSettings(noise_suppression="off", agc=False)),
            VoiceSender(OpusEncoder()),
            TransmitGate(release_ms=0),
            from_worker,
            route=service.route,  # read every frame; the service writes it before its listeners
        )

        def on_change(event: Any) -> None:
            routed.append((time.monotonic(), event.after))

        service.add_listener(on_change)
        source = PynputSource()
        ok, reason = source.available()
        if not ok:
            raise SystemExit(f"no global hotkeys here: {reason}")
        service.attach(source)
        stop = threading.Event()

        def clock() -> None:
            engine.start(time.monotonic())
            while not stop.is_set():
                engine.tick(time.monotonic())
                time.sleep(0.002)

        ticker = threading.Thread(target=clock, daemon=True)
        ticker.start()
        worker.start()
        time.sleep(0.3)
        rows: list[dict[str, float]] = []
        env = os.environ.copy()
        for i in range(PRESSES):
            key, channel = ("F13", A) if i % 2 == 0 else ("F14", B)
            routed.clear()
            encoded.clear()
            sent.clear()
            t0 = time.monotonic()
            subprocess.run(["xdotool", "keydown", key], check=True, timeout=5, env=env)
            wait(app, lambda ch=channel: any(ch in t for _, t in sent), 5)
            t_route = next(t for t, w in routed if channel in w)
            t_enc = next(t for t, w in encoded if channel in w)
            t_sent = next(t for t, w in sent if channel in w)
            rows.append(
                {
                    "total": (t_sent - t0) * 1e3,
                    "key_to_router": (t_route - t0) * 1e3,
                    "router_to_encoded": (t_enc - t_route) * 1e3,
                    "encoded_to_sent": (t_sent - t_enc) * 1e3,
                }
            )
            end = time.monotonic() + 0.3
            wait(app, lambda e=end: time.monotonic() > e, 1)
            subprocess.run(["xdotool", "keyup", key], check=True, timeout=5, env=env)
            pause = time.monotonic() + 0.2 + (i % 5) * 0.0037  # vary the phase to the frame clock
            wait(app, lambda p=pause: time.monotonic() > p, 1)
        stop.set()
        worker.stop()
        service.close()
        ticker.join(2)
        conn.close()
        engine.close()
    finally:
        subprocess.run(["xdotool", "keyup", "F13", "keyup", "F14"], check=False, timeout=5)
        relay.terminate()
        relay.wait(10)
    figures: dict[str, Any] = {"benchmark": "ptt_latency", "presses": len(rows)}
    print(f"{'stage':<20} {'median':>8} {'p95':>8} {'max':>8}  (ms, {len(rows)} presses)")
    for key in ("total", "key_to_router", "router_to_encoded", "encoded_to_sent"):
        xs = [r[key] for r in rows]
        figures[f"{key}_median_ms"] = round(statistics.median(xs), 2)
        figures[f"{key}_p95_ms"] = round(pct(xs, 0.95), 2)
        print(f"{key:<20} {statistics.median(xs):8.2f} {pct(xs, 0.95):8.2f} {max(xs):8.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
