"""Device tests for the settings dialog: a test tone, and a microphone loopback with a level meter.

Both use sounddevice directly in short-lived streams of their own (48 kHz mono int16), not the
voice engine, so the user can try devices before choosing them. The PortAudio callbacks only copy
between preallocated arrays (:class:`~voipclient.audio.ring.SampleRing` and the precomputed tone)
and set flags; the GUI thread polls the flags and the meter ring with a 50 ms timer (the ``level``
signal's ~20 Hz), closes finished streams and reports problems through ``error`` as one sentence
saying what went wrong and what to do.

Device names are resolved like the voice engine does (:func:`~voipclient.audio.sd_engine.
select_device`; None = the system default). Streams opened here are counted in
``sd_engine._open_streams`` so that :func:`~voipclient.audio.sd_engine.refresh_devices` never
terminates PortAudio under them.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PySide6.QtCore import QObject, QTimer, Signal, Slot

from voipclient.audio import sd_engine
from voipclient.audio.ring import SampleRing
from voipclient.audio.sd_engine import DeviceInfo, Kind, list_devices, select_device
from voipclient.errors import AudioDeviceError

__all__ = ["AudioTester", "make_tone"]

SAMPLE_RATE: Final = 48_000  # Hz
BLOCK: Final = 480  # samples per callback: 10 ms
TONE_HZ: Final = 440.0
TONE_DBFS: Final = -12.0  # peak level of the test tone
FADE_S: Final = 0.02  # s of raised-cosine fade in and out (no clicks)
POLL_MS: Final = 50  # GUI poll period: the level signal's ~20 Hz
LOOP_MAX_SAMPLES: Final = SAMPLE_RATE // 5  # loopback delay cap: 200 ms, older audio is dropped
SILENCE_DBFS: Final = -120.0  # what the meter reports for digital silence
# s a stream may take to finish after its last sample: an idle PulseAudio null sink starts calling
# back only ~2 s after the stream starts.
FINISH_GRACE_S: Final = 6.0
TAIL_S: Final = 0.1  # s the tone stream stays open after its last sample's DAC time


def make_tone(
    seconds: float, hz: float = TONE_HZ, dbfs: float = TONE_DBFS
) -> npt.NDArray[np.int16]:
    """A sine of ``seconds`` at ``dbfs`` peak with raised-cosine fades, int16 at 48 kHz."""
    n = max(1, round(seconds * SAMPLE_RATE))
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    wave = np.sin(2 * np.pi * hz * t) * (10 ** (dbfs / 20))
    fade = min(round(FADE_S * SAMPLE_RATE), n // 2)
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
        wave[:fade] *= ramp
        wave[n - fade :] *= ramp[::-1]
    return np.round(wave * 32767).astype(np.int16)


def _track(delta: int) -> None:
    # PortAudio's stream set is process-wide; sd_engine's counter guards Pa_Terminate.
    sd_engine._open_streams += delta


class _Stream:
    """One open sounddevice stream and the flag its finished callback sets."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.finished = False  # set on PortAudio's thread

    def on_finished(self) -> None:
        self.finished = True

    def close(self) -> None:
        try:
            self.stream.abort(ignore_errors=True)  # abort: stop() can hang on a suspended sink
        finally:
            self.stream.close(ignore_errors=True)
            _track(-1)


class _TonePlayer:
    """The output callback's state: the tone, how far it has played, and when it ends."""

    def __init__(self, tone: npt.NDArray[np.int16]) -> None:
        self.tone = tone
        self.pos = 0
        #: Stream time (s) at which the tone's last sample reaches the speaker; NaN until known.
        self.end_time = math.nan

    def callback(
        self, outdata: npt.NDArray[np.int16], frames: int, time: Any, _status: Any
    ) -> None:
        out = outdata[:, 0]
        pos = self.pos
        n = min(frames, self.tone.shape[0] - pos)
        if n > 0:
            out[:n] = self.tone[pos : pos + n]
            self.pos = pos + n
        out[max(n, 0) :] = 0
        if n < frames and math.isnan(self.end_time):
            # Not CallbackStop: closing a stream once PortAudio has drained it cuts off what the
            # sound server still buffers. Play silence until the DAC time says the tone is out.
            self.end_time = time.outputBufferDacTime + max(n, 0) / SAMPLE_RATE


class _Loop:
    """The loopback callbacks' state: microphone → ``loop`` → speakers, and → ``meter``."""

    def __init__(self) -> None:
        self.loop = SampleRing(SAMPLE_RATE)  # 1 s; LOOP_MAX_SAMPLES keeps it far from full
        self.meter = SampleRing(SAMPLE_RATE)
        self.dropped = 0

    def input_callback(
        self, indata: npt.NDArray[np.int16], _frames: int, _time: Any, _status: Any
    ) -> None:
        samples = indata[:, 0]
        self.loop.write(samples)
        self.meter.write(samples)

    def output_callback(
        self, outdata: npt.NDArray[np.int16], frames: int, _time: Any, _status: Any
    ) -> None:
        excess = self.loop.available - LOOP_MAX_SAMPLES
        if excess > 0:  # the input started first or runs faster: keep the delay short
            self.dropped += self.loop.discard(excess)
        self.loop.read_into(outdata[:, 0])


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
        self._tone: _Stream | None = None
        self._player: _TonePlayer | None = None
        self._tone_deadline = 0.0  # s of timer ticks left before a stuck tone is aborted
        self._loop: _Loop | None = None
        self._loop_streams: list[_Stream] = []
        self._meter_buf = np.zeros(SAMPLE_RATE, dtype=np.int16)  # meter reads, preallocated
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)

    # -- public API --------------------------------------------------------------------------

    def tone_playing(self) -> bool:
        return self._tone is not None

    def loopback_running(self) -> bool:
        return self._loop is not None

    def play_tone(self, output_device: str | None, seconds: float = 1.0) -> bool:
        """Play a 440 Hz tone at -12 dBFS on ``output_device`` (None = system default).

        Returns False (and emits ``error``) when the device cannot be opened.
        """
        if not 0 < seconds <= 30:
            raise ValueError(f"tone length must be 0..30 s, not {seconds}")
        self.stop_tone()
        try:
            sd = sd_engine._sounddevice()  # the one lazy import of sounddevice
            device = self._resolve(output_device, "output")
        except AudioDeviceError as exc:
            self.error.emit(f"Cannot play the test tone: {exc}")
            return False
        player = _TonePlayer(make_tone(seconds))
        stream = self._open(sd, "output", device, player.callback)
        if stream is None:
            return False
        self._tone = stream
        self._player = player
        self._tone_deadline = seconds + FINISH_GRACE_S
        self._timer.start()
        return True

    @Slot()
    def stop_tone(self) -> None:
        if self._tone is None:
            return
        tone, self._tone = self._tone, None
        self._player = None
        tone.close()
        self._stop_timer_if_idle()
        self.tone_finished.emit()

    def start_loopback(self, input_device: str | None, output_device: str | None) -> bool:
        """Play the microphone back on the output and report its level (``level``).

        Returns False (and emits ``error``) when a device cannot be opened.
        """
        self.stop_loopback()
        try:
            sd = sd_engine._sounddevice()
            source = self._resolve(input_device, "input")
            sink = self._resolve(output_device, "output")
        except AudioDeviceError as exc:
            self.error.emit(f"Cannot test the microphone: {exc}")
            return False
        loop = _Loop()
        streams: list[_Stream] = []
        sides: tuple[tuple[Kind, DeviceInfo, Any], ...] = (
            ("output", sink, loop.output_callback),
            ("input", source, loop.input_callback),
        )
        for kind, device, callback in sides:
            stream = self._open(sd, kind, device, callback)
            if stream is None:
                for opened in streams:
                    opened.close()
                return False
            streams.append(stream)
        self._loop = loop
        self._loop_streams = streams
        self._timer.start()
        self.loopback_changed.emit(True)
        return True

    @Slot()
    def stop_loopback(self) -> None:
        if self._loop is None:
            return
        streams, self._loop_streams = self._loop_streams, []
        self._loop = None
        for stream in streams:
            stream.close()
        self._stop_timer_if_idle()
        self.loopback_changed.emit(False)

    @Slot()
    def stop(self) -> None:
        """Stop every test (the dialog closes)."""
        self.stop_tone()
        self.stop_loopback()

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _resolve(name: str | None, kind: Kind) -> DeviceInfo:
        return select_device(list_devices(), name, kind)

    def _open(self, sd: Any, kind: Kind, device: DeviceInfo, callback: Any) -> _Stream | None:
        cls = sd.OutputStream if kind == "output" else sd.InputStream
        holder: list[_Stream] = []
        try:
            stream = cls(
                device=device.index,
                samplerate=SAMPLE_RATE,
                channels=1,
                dtype="int16",
                blocksize=BLOCK,
                callback=callback,
                finished_callback=lambda: holder[0].on_finished() if holder else None,
            )
        except (sd.PortAudioError, ValueError) as exc:
            self.error.emit(self._open_failed(kind, device, exc))
            return None
        _track(+1)
        wrapped = _Stream(stream)
        holder.append(wrapped)
        try:
            stream.start()
        except sd.PortAudioError as exc:
            wrapped.close()
            self.error.emit(self._open_failed(kind, device, exc))
            return None
        return wrapped

    @staticmethod
    def _open_failed(kind: Kind, device: DeviceInfo, exc: BaseException) -> str:
        what = "microphone" if kind == "input" else "output device"
        return (
            f"Cannot open the {what} {device.name!r} ({exc}); close other programs that use it "
            "exclusively, or choose another device"
        )

    def _stop_timer_if_idle(self) -> None:
        if self._tone is None and self._loop is None:
            self._timer.stop()

    @Slot()
    def _poll(self) -> None:
        if self._tone is not None:
            self._tone_deadline -= POLL_MS / 1000
            end = self._player.end_time if self._player is not None else math.nan
            if not math.isnan(end) and self._tone.stream.time >= end + TAIL_S:
                self.stop_tone()
            elif self._tone.finished or self._tone_deadline <= 0:
                self.stop_tone()
                self.error.emit(
                    "The output device did not play the test tone; check that it is connected "
                    "and not suspended, or choose another device"
                )
        loop = self._loop
        if loop is None:
            return
        if any(s.finished for s in self._loop_streams):
            self.stop_loopback()
            self.error.emit(
                "The microphone test stopped because a device went away; reconnect it or choose "
                "another device"
            )
            return
        n = min(loop.meter.available, self._meter_buf.shape[0])
        if n == 0:
            self.level.emit(SILENCE_DBFS)
            return
        view = self._meter_buf[:n]
        loop.meter.read_into(view)
        peak = int(np.max(np.abs(view.astype(np.int32))))
        self.level.emit(max(SILENCE_DBFS, 20 * math.log10(peak / 32768)) if peak else SILENCE_DBFS)
