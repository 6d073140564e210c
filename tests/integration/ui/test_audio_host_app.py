"""The sound devices live in a supervised child process (``voipclient --audio-host``): killing it
during a call leaves the app up, audio resumes within a second on the same devices, the window
says what happened and the call goes on; a host that hangs is ended and replaced the same way.
Real parts: two apps under Xvfb, a relay process, PortAudio on the PulseAudio null sink."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from voipclient.audio import shm
from voipclient.audio.realtime import NICE, PRIORITY
from voipclient.ui.app import App

from ..audio.test_realtime import may_raise_directly
from ..audio.test_sd_engine import pactl
from ..conftest import Starter
from .conftest import AppFactory, connect, pair_in, talking

pytestmark = [pytest.mark.usefixtures("real_env"), pytest.mark.timeout(90)]
GENERAL = 2
RESUME_S = 1.0  # the promise: audio flows again within a second of the host's death


def host_of(app: App) -> Any:
    host = app.controller.audio_host
    assert host is not None, "the app runs its devices in the audio host"
    return host


def wait_opened(qtbot: Any, app: App) -> None:
    """The app's host has its devices open, both directions are moving, and the host has
    answered the open (until then a silent host is judged by the start grace, not hang_s:
    the callbacks may run before the host's main thread writes its answer)."""
    host = host_of(app)
    qtbot.waitUntil(
        lambda: (
            host.block[shm.Slot.CAPTURE_STAMP_NS] > 0
            and host.block[shm.Slot.PLAYBACK_STAMP_NS] > 0
            and not host.open_pending
        ),
        timeout=10_000,
    )


def test_the_app_runs_its_devices_in_an_audio_host_process(
    qtbot: Any, make_app: AppFactory
) -> None:
    app = make_app("solo")
    host = host_of(app)
    wait_opened(qtbot, app)
    argv = Path(f"/proc/{host.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--audio-host" in argv
    assert os.getppid() != host.pid and host.pid != os.getpid()
    # the GUI's process has no PortAudio stream: the engine it holds is the host's
    engine = app.controller.pipeline.engine  # type: ignore[union-attr]
    assert type(engine).__name__ == "HostEngine"
    qtbot.waitUntil(lambda: engine.opened, timeout=10_000)
    assert engine.input_device and engine.output_device
    assert app.controller.audio_problem == ""
    assert app.controller.audio_devices(), "the settings dialog gets the host's device list"


def test_killing_the_audio_host_mid_call_resumes_audio_within_a_second(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    server = start_server(channels=("General",))
    alice, bob = pair_in(qtbot, make_app, server, GENERAL)
    host = host_of(alice)
    wait_opened(qtbot, alice)
    # a conversation: alice talks (her microphone runs) and hears bob (her speakers run)
    alice.controller.ptt.handle_command(f"press {GENERAL}")
    bob.controller.ptt.handle_command(f"press {GENERAL}")
    qtbot.waitUntil(lambda: talking(bob, GENERAL, "alice"), timeout=10_000)
    qtbot.waitUntil(lambda: talking(alice, GENERAL, "bob"), timeout=10_000)

    old_pid = host.pid
    killed_ns = time.monotonic_ns()
    assert host.kill(signal.SIGKILL) == old_pid

    def resumed() -> bool:
        return (
            host.restarts == 1
            and host.block[shm.Slot.CAPTURE_STAMP_NS] > killed_ns
            and host.block[shm.Slot.PLAYBACK_STAMP_NS] > killed_ns
        )

    qtbot.waitUntil(resumed, timeout=10_000)
    mic_back = (host.block[shm.Slot.CAPTURE_STAMP_NS] - killed_ns) / 1e9
    speakers_back = (host.block[shm.Slot.PLAYBACK_STAMP_NS] - killed_ns) / 1e9
    print(
        f"audio host SIGKILL: microphone back after {mic_back * 1000:.0f} ms, "
        f"speakers after {speakers_back * 1000:.0f} ms"
    )
    assert host.pid != old_pid
    assert mic_back < RESUME_S and speakers_back < RESUME_S
    # the window says what happened
    qtbot.waitUntil(lambda: "audio process" in alice.window.notice_label.text(), timeout=5_000)
    assert "SIGKILL" in alice.window.notice_label.text()
    assert alice.controller.audio_problem == ""

    # the call goes on: what alice says after the restart reaches bob. First she has stopped:
    # her gate ended (nothing more leaves her), and bob's talking mark for her is gone. Bob's
    # mark alone is not enough: it drops after TALKING_HOLD_S without a frame, so a stall of
    # either side's audio just after the restart drops it while her words are still coming,
    # and they bring it back without her saying anything new (CI saw exactly that once: bob
    # "heard" her while her microphone had captured nothing since the press).
    bob.controller.ptt.handle_command(f"release {GENERAL}")
    alice.controller.ptt.handle_command(f"release {GENERAL}")
    capture = alice.controller.pipeline.capture  # type: ignore[union-attr]
    qtbot.waitUntil(
        lambda: not capture.speaking and not talking(bob, GENERAL, "alice"), timeout=10_000
    )
    frames = capture.frames
    alice.controller.ptt.handle_command(f"press {GENERAL}")
    try:
        # her microphone runs again (frames captured after the press, sent), then bob hears her
        qtbot.waitUntil(lambda: capture.frames > frames and capture.speaking, timeout=10_000)
        qtbot.waitUntil(lambda: talking(bob, GENERAL, "alice"), timeout=10_000)
    finally:
        alice.controller.ptt.handle_command(f"release {GENERAL}")


def test_a_hung_audio_host_is_ended_and_replaced(qtbot: Any, make_app: AppFactory) -> None:
    app = make_app("solo")
    host = host_of(app)
    wait_opened(qtbot, app)
    stopped = host.pid
    os.kill(stopped, signal.SIGSTOP)  # a driver hung in a call: no heartbeat any more
    try:
        qtbot.waitUntil(lambda: host.restarts == 1, timeout=host.hang_s * 1000 + 5_000)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGCONT)
    assert "stopped responding" in host.last_exit
    since = time.monotonic_ns()
    app.controller.set_metering(True)  # something needs the microphone: the new host runs it
    try:
        qtbot.waitUntil(lambda: host.block[shm.Slot.CAPTURE_STAMP_NS] > since, timeout=5_000)
    finally:
        app.controller.set_metering(False)
    qtbot.waitUntil(lambda: "audio process" in app.window.notice_label.text(), timeout=5_000)
    with pytest.raises(ProcessLookupError):
        os.kill(stopped, 0)  # ended and reaped, not left behind


ALSA_DEVICE = "voipclient_test"
ASOUNDRC = f"pcm.{ALSA_DEVICE} {{ type pulse device vtest }}\nctl.{ALSA_DEVICE} {{ type pulse }}\n"


def test_after_a_fallback_the_app_returns_to_the_chosen_speakers(
    qtbot: Any,
    make_app: AppFactory,
    start_server: Starter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """alice listens to bob on her chosen speakers when they stop and leave the device list (a
    USB headset pulled out: here an ALSA device on a null sink of its own, suspended and removed
    from ~/.asoundrc); they come back and she hears bob on them again."""
    home = tmp_path / "home"
    home.mkdir()
    asoundrc = home / ".asoundrc"
    asoundrc.write_text(ASOUNDRC)
    monkeypatch.setenv("HOME", str(home))  # the audio host (and its probes) read this ALSA config
    module = pactl("load-module", "module-null-sink", "sink_name=vtest", "rate=48000", "channels=1")
    try:
        alice, bob = pair_in(qtbot, make_app, start_server(channels=("General",)), GENERAL)
        prefs = alice.controller.prefs
        alice.apply_prefs(replace(prefs, audio=replace(prefs.audio, output_device=ALSA_DEVICE)))
        engine = alice.controller.pipeline.engine  # type: ignore[union-attr]
        qtbot.waitUntil(lambda: engine.output_device == ALSA_DEVICE, timeout=10_000)
        bob.controller.ptt.handle_command(f"press {GENERAL}")  # bob talks throughout
        qtbot.waitUntil(lambda: talking(alice, GENERAL, "bob"), timeout=10_000)

        asoundrc.unlink()
        pactl("suspend-sink", "vtest", "1")  # the device stops calling back, then is gone
        qtbot.waitUntil(lambda: engine.output_device not in (None, ALSA_DEVICE), timeout=30_000)
        assert "fallback" in alice.controller.audio_problem
        assert "⚠ audio" in alice.window.warning_label.text()

        pactl("suspend-sink", "vtest", "0")
        asoundrc.write_text(ASOUNDRC)  # plugged in again
        qtbot.waitUntil(lambda: engine.output_device == ALSA_DEVICE, timeout=30_000)
        qtbot.waitUntil(lambda: alice.controller.audio_problem == "", timeout=5_000)
        host = host_of(alice)
        before = host.block[shm.Slot.PLAYBACK_READ]
        qtbot.waitUntil(lambda: host.block[shm.Slot.PLAYBACK_READ] > before + 9600, timeout=10_000)
        bob.controller.ptt.handle_command(f"release {GENERAL}")
    finally:
        pactl("unload-module", module)


def test_the_audio_threads_run_real_time(
    qtbot: Any, make_app: AppFactory, start_server: Starter
) -> None:
    """A game on every core must not make frames late: the app's capture and playback workers
    and PortAudio's two callback threads in the audio host run under SCHED_RR (directly here,
    as root; rtkit elsewhere: tests/integration/audio/test_realtime.py), below the sound
    server's priority, and the diagnostics say so."""
    if not may_raise_directly():
        pytest.skip("needs root, CAP_SYS_NICE or RLIMIT_RTPRIO (the rtkit path has its own tests)")
    app = make_app("solo")
    host = host_of(app)
    wait_opened(qtbot, app)
    pipeline = app.controller.pipeline
    assert pipeline is not None
    for worker in (pipeline.capture, pipeline.playback):
        qtbot.waitUntil(lambda w=worker: w.scheduling != "not started", timeout=5_000)
        assert worker.scheduling == f"real-time (SCHED_RR priority {PRIORITY})"
        tid = worker._thread._thread.native_id
        assert tid is not None and os.sched_getscheduler(tid) == os.SCHED_RR
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the GUI thread is not touched
    qtbot.waitUntil(
        lambda: "output callback" in host.scheduling and "input callback" in host.scheduling,
        timeout=10_000,
    )
    want = f"real-time (SCHED_RR priority {PRIORITY})"
    assert f"input callback: {want}" in host.scheduling, host.scheduling
    assert f"output callback: {want}" in host.scheduling, host.scheduling
    rr = [
        int(t)
        for t in os.listdir(f"/proc/{host.pid}/task")
        if os.sched_getscheduler(int(t)) & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR
    ]
    assert len(rr) >= 2  # both callback threads ...
    assert host.pid not in rr  # ... but not the main thread, which opens the streams
    # and libpulse's I/O threads (through PortAudio's ALSA pulse plugin, one per stream), which
    # carry every sample to and from the sound server: starved by a hog, it played silence
    qtbot.waitUntil(lambda: host.scheduling.count("sound server I/O") == 2, timeout=5_000)
    assert f"sound server I/O (threaded-ml): {want}" in host.scheduling, host.scheduling
    io = [
        int(t)
        for t in os.listdir(f"/proc/{host.pid}/task")
        if Path(f"/proc/{host.pid}/task/{t}/comm").read_text().strip() == "threaded-ml"
    ]
    assert len(io) == 2 and set(io) <= set(rr)
    text = app.diagnostics_text()
    assert f"capture thread: real-time (SCHED_RR priority {PRIORITY})" in text
    # the connection's thread (voice both ways, but also TLS and key work): a high nice level
    connect(qtbot, app, start_server())
    assert app.controller.connection_scheduling == f"high priority (nice {NICE})"
    assert f"thread: high priority (nice {NICE})" in app.diagnostics_text()
    (line,) = [x for x in text.splitlines() if x.strip().startswith("audio host threads:")]
    assert f"input callback: {want}" in line and f"output callback: {want}" in line
