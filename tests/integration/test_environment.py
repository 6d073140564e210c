"""The real parts the later layers rely on are really there under `make test`.

These are harness checks with real devices: a tone played into the PulseAudio null sink comes
back on its monitor through PortAudio; pynput sees an X key event injected with xdotool; keyring
talks to a real Secret Service.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading

import numpy as np
import pytest

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(30)]

RATE = 48_000  # Hz, the product's only sample rate
BLOCK = 960  # samples: one 20 ms frame


def test_null_sink_loops_a_tone_back_through_portaudio() -> None:
    import sounddevice as sd

    names = [d["name"] for d in sd.query_devices()]
    assert "pulse" in names, names
    t = np.arange(RATE, dtype=np.float32) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    recorded = sd.playrec(tone, samplerate=RATE, channels=1, dtype="float32", blocking=True)
    tail = recorded[RATE // 2 :, 0]  # skip the pipeline's start-up delay
    spectrum = np.abs(np.fft.rfft(tail))
    peak_hz = np.argmax(spectrum) * RATE / len(tail)
    assert abs(peak_hz - 1000.0) < 5.0
    assert float(np.sqrt(np.mean(tail**2))) > 0.1


def test_pynput_sees_an_xdotool_key_event() -> None:
    from pynput import keyboard

    seen: queue.Queue[object] = queue.Queue()
    listener = keyboard.Listener(on_press=seen.put)
    listener.start()
    try:
        listener.wait()
        ready = threading.Event()
        ready.wait(0.2)  # the X record context needs a moment after wait() returns
        subprocess.run(["xdotool", "key", "F13"], check=True, timeout=5, env=os.environ.copy())
        key = seen.get(timeout=5)
    finally:
        listener.stop()
        listener.join(5)
    assert key == keyboard.Key.f13, key


def test_keyring_uses_a_real_secret_service() -> None:
    import keyring

    backend = keyring.get_keyring()
    assert type(backend).__module__ == "keyring.backends.SecretService"
    keyring.set_password("voipclient-test", "probe", "value")
    try:
        assert keyring.get_password("voipclient-test", "probe") == "value"
    finally:
        keyring.delete_password("voipclient-test", "probe")


def test_a_crashed_secret_service_comes_back_with_its_keys() -> None:
    """gnome-keyring-daemon can abort on its own (a GDBus assertion when a client is gone before
    its property read is answered; it once took every later test down with it). The test
    environment restarts it at once on the same keyring: a key stored before the crash is
    there after it. Meanwhile the bus starts no stock daemon in its place (one that is locked
    and would leave a client waiting on its unlock prompt for ever)."""
    import signal
    import time
    from pathlib import Path

    import keyring

    pidfile = Path(os.environ["VOIPCLIENT_TEST_KEYRING_PIDFILE"])
    keyring.set_password("voipclient-test", "survivor", "still here")
    try:
        before = int(pidfile.read_text())
        os.kill(before, signal.SIGABRT)  # as its assertion does
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = pidfile.read_text().strip()
            if text and int(text) != before:
                break
            time.sleep(0.02)
        assert int(pidfile.read_text()) != before, "the Secret Service was not restarted"
        value = None
        while value is None and time.monotonic() < deadline:
            try:
                value = keyring.get_password("voipclient-test", "survivor")
            except Exception:  # not there yet (the bus starts no stand-in): try again
                time.sleep(0.05)  # the new daemon is still taking the bus name
        assert value == "still here"
    finally:
        keyring.delete_password("voipclient-test", "survivor")
