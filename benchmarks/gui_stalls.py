"""How long the window stops answering in each flow a user goes through (target: <= 50 ms).

The real desktop app in this process (QApplication under Xvfb, devices on the PulseAudio null
sink: `make bench` runs in scripts/with-test-env.sh) and real relay processes. A 10 ms QTimer
measures the GUI event loop's longest gap (the probe the UI tests use) while each flow runs:

* connect: the first connection to a server (identity key created in the keyring, TLS, login);
* reconnect: the relay is killed and started again on the same port; the app reconnects;
* server switch: from one relay to another while connected;
* settings: bitrate, noise suppression and the activation threshold changed and applied;
* device change: the input device switched (the audio engine is rebuilt);
* disconnect.

Ends with one JSON line for run_all.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from relay_process import Relay

TARGET_MS = 50.0


def main() -> int:
    from PySide6.QtCore import QCoreApplication, QTimer
    from PySide6.QtWidgets import QApplication

    from voipclient.ui.app import App
    from voipclient.ui.prefs import Bookmark

    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    tmp = Path(tempfile.mkdtemp(prefix="gui-stalls-"))
    os.environ["VOIPCLIENT_PTT_SOCKET"] = str(tmp / "ptt.sock")
    from PySide6.QtCore import QSettings

    from voipclient.ui.settings import QSettingsBackend

    args = argparse.Namespace(
        local_server=False, connect=None, name="staller", data_dir=tmp / "data", settings_dir=None
    )
    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    app = App(args, qapp, backend=QSettingsBackend(settings))
    app.window.show()
    ctl = app.controller

    worst = 0.0
    last = time.monotonic()

    def tick() -> None:
        nonlocal worst, last
        now = time.monotonic()
        worst = max(worst, now - last)
        last = now

    probe = QTimer()
    probe.setInterval(10)
    probe.timeout.connect(tick)
    probe.start()

    def spin(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"gui_stalls: {what} did not happen within {timeout} s")
            QCoreApplication.processEvents()
            time.sleep(0.002)

    def measure(name: str, action: Callable[[], None], done: Callable[[], bool]) -> float:
        nonlocal worst, last
        spin(lambda: True, 0, name)
        settle = time.monotonic() + 0.3
        spin(lambda: time.monotonic() > settle, 1, "settling")
        worst, last = 0.0, time.monotonic()
        action()
        spin(done, 30, name)
        settle = time.monotonic() + 0.5  # what follows the flow (views, meters) counts too
        spin(lambda: time.monotonic() > settle, 1, "settling")
        return worst * 1000

    def ready() -> bool:
        return ctl.state == "ready" and ctl.model.me is not None

    one, two = Relay(tmp / "one"), Relay(tmp / "two")
    relays = [one, two]
    flows: dict[str, float] = {}
    try:
        spin(lambda: ctl.pipeline is not None or bool(ctl.audio_problem), 10, "audio start")
        first = Bookmark("one", one.host, one.port)
        flows["connect"] = measure("connect", lambda: app.connect_to(first, pin=one.pin), ready)
        port = one.port
        one.stop()
        spin(lambda: ctl.state != "ready", 20, "noticing the relay is gone")
        # the relay starts on another thread: waiting for its start line is not the app's stall
        restart = threading.Thread(target=lambda: relays.append(Relay(tmp / "one", port=port)))
        flows["reconnect"] = measure("reconnect", restart.start, ready)
        restart.join()
        second = Bookmark("two", two.host, two.port)
        flows["server switch"] = measure(
            "server switch",
            lambda: app.connect_to(second, pin=two.pin),
            lambda: ready() and ctl.bookmark is not None and ctl.bookmark.port == two.port,
        )
        prefs = ctl.prefs
        changed = replace(
            prefs,
            audio=replace(prefs.audio, bitrate=24000, noise_suppression="speex"),
            transmit=replace(prefs.transmit, vad_threshold=0.6),
        )
        flows["settings"] = measure("settings", lambda: ctl.apply_prefs(changed), lambda: True)
        pipeline = ctl.pipeline
        other = "pulse" if prefs.audio.input_device != "pulse" else None
        moved = replace(changed, audio=replace(changed.audio, input_device=other))
        flows["device change"] = measure(
            "device change",
            lambda: ctl.apply_prefs(moved),
            lambda: ctl.pipeline is not pipeline,
        )
        flows["disconnect"] = measure(
            "disconnect", ctl.disconnect_server, lambda: ctl.state in ("closed", "waiting")
        )
    finally:
        probe.stop()
        app.shutdown()
        for relay in relays:
            if relay.proc.poll() is None:
                relay.stop()
    for name, ms in flows.items():
        mark = "ok" if ms <= TARGET_MS else "OVER"
        print(f"{name:16s} worst GUI stall {ms:7.1f} ms  {mark}")
    result = {
        "benchmark": "gui_stalls",
        "target_ms": TARGET_MS,
        **{f"{name.replace(' ', '_')}_worst_ms": round(ms, 1) for name, ms in flows.items()},
        "flows_over_target": [name for name, ms in flows.items() if ms > TARGET_MS],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
