"""Device tests for the settings dialog: a test tone, and a microphone loopback with a level meter.

Each test runs in a child process (``voipclient --audio-host --device-test ...``,
:mod:`voipclient.audio.device_test`) with short-lived streams of its own, not the voice engine,
so the user can try devices before choosing them, and so that PortAudio never runs in the app:
a driver that crashes or hangs ends the test with a message, never the app, and the GUI thread
never waits on a device. :class:`AudioTester` starts the child with a :class:`QProcess` and turns
what it says (JSON lines) into signals; stopping a test ends the child (SIGKILL: its streams go
with it) and disconnects it, so nothing of it reaches a tester that is gone.

The start is asynchronous: ``play_tone`` and ``start_loopback`` return True once the child is
launched; a device that cannot be opened arrives as ``error`` (one sentence saying what went
wrong and what to do), with ``tone_finished`` / ``loopback_changed(False)`` just before it.
"""

from __future__ import annotations

import contextlib
import json
import logging

from PySide6.QtCore import QObject, QProcess, Signal, Slot

from voipclient.audio.device_test import SILENCE_DBFS, make_tone
from voipclient.audio.host import host_argv

__all__ = ["SILENCE_DBFS", "AudioTester", "make_tone"]

log = logging.getLogger("voipclient.ui.audio_test")


class AudioTester(QObject):
    """Test tone and microphone loopback on named devices (GUI thread only)."""

    #: Peak level of the microphone during a loopback test, dBFS (≤ 0; -120 for silence), ~20 Hz.
    level = Signal(float)
    #: What went wrong and what to do, one sentence; the test that failed has stopped.
    error = Signal(str)
    #: The test tone has finished playing (or was stopped).
    tone_finished = Signal()
    #: The loopback test started (True) or stopped (False).
    loopback_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._tone: QProcess | None = None
        self._loop: QProcess | None = None
        self._pending: dict[QProcess, bytes] = {}  # a child's unfinished output line

    # -- public API --------------------------------------------------------------------------

    def tone_playing(self) -> bool:
        return self._tone is not None

    def loopback_running(self) -> bool:
        return self._loop is not None

    def play_tone(self, output_device: str | None, seconds: float = 1.0) -> bool:
        """Play a 440 Hz tone at -12 dBFS on ``output_device`` (None = system default)."""
        if not 0 < seconds <= 30:
            raise ValueError(f"tone length must be 0..30 s, not {seconds}")
        self.stop_tone()
        args = ["tone", "--seconds", f"{seconds:g}", *_named("--output", output_device)]
        self._tone = self._start(args)
        return True

    @Slot()
    def stop_tone(self) -> None:
        if self._tone is None:
            return
        proc, self._tone = self._tone, None
        self._release(proc)
        self.tone_finished.emit()

    def start_loopback(self, input_device: str | None, output_device: str | None) -> bool:
        """Play the microphone back on the output and report its level (``level``)."""
        self.stop_loopback()
        args = ["loopback", *_named("--input", input_device), *_named("--output", output_device)]
        self._loop = self._start(args)
        self.loopback_changed.emit(True)
        return True

    @Slot()
    def stop_loopback(self) -> None:
        if self._loop is None:
            return
        proc, self._loop = self._loop, None
        self._release(proc)
        self.loopback_changed.emit(False)

    @Slot()
    def stop(self) -> None:
        """Stop every test (the dialog closes)."""
        self.stop_tone()
        self.stop_loopback()

    # -- the children --------------------------------------------------------------------------

    def _start(self, args: list[str]) -> QProcess:
        argv = host_argv()
        proc = QProcess(self)
        proc.setProgram(argv[0])
        proc.setArguments([*argv[1:], "--device-test", *args])
        proc.setProcessChannelMode(QProcess.ProcessChannelMode.ForwardedErrorChannel)
        proc.readyReadStandardOutput.connect(lambda: self._read(proc))
        proc.finished.connect(lambda *_: self._finished(proc))
        proc.errorOccurred.connect(lambda err: self._failed_to_start(proc, err))
        self._pending[proc] = b""
        proc.start()
        return proc

    def _read(self, proc: QProcess) -> None:
        data = self._pending.get(proc, b"") + bytes(proc.readAllStandardOutput().data())
        *lines, self._pending[proc] = data.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self._message(proc, message)

    def _message(self, proc: QProcess, message: dict[str, object]) -> None:
        if proc is self._tone:
            if "error" in message:
                self.stop_tone()
                self.error.emit(str(message["error"]))
            elif message.get("done"):
                self.stop_tone()
        elif proc is self._loop:
            if "error" in message:
                self.stop_loopback()
                self.error.emit(str(message["error"]))
            elif isinstance(level := message.get("level"), int | float):
                self.level.emit(float(level))

    def _finished(self, proc: QProcess) -> None:
        self._read(proc)  # what it said last
        if proc is self._tone or proc is self._loop:  # it ended without saying why
            why = (
                f"The audio test process ended unexpectedly (exit {proc.exitCode()}); try "
                "again, or choose another device"
            )
            if proc is self._tone:
                self.stop_tone()
            else:
                self.stop_loopback()
            self.error.emit(why)
        else:
            self._release(proc)

    def _failed_to_start(self, proc: QProcess, err: QProcess.ProcessError) -> None:
        if err != QProcess.ProcessError.FailedToStart:
            return  # a crash is reported by finished
        log.error("audio test process not started: %s", proc.errorString())
        self._finished(proc)

    def _release(self, proc: QProcess) -> None:
        """Forget a child for good: no signal of it reaches us again (nor a tester being
        destroyed), it is ended if it still runs, and Qt deletes it."""
        self._pending.pop(proc, None)
        for signal in (proc.readyReadStandardOutput, proc.finished, proc.errorOccurred):
            with contextlib.suppress(RuntimeError, TypeError):  # nothing connected any more
                signal.disconnect()
        if proc.state() != QProcess.ProcessState.NotRunning:
            proc.kill()  # its streams go with it
            proc.waitForFinished(500)  # SIGKILL: a few ms; no PortAudio call is waited on
        proc.deleteLater()


def _named(flag: str, value: str | None) -> list[str]:
    return [] if value is None else [flag, value]
