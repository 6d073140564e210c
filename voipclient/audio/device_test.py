"""The settings dialog's device tests, run in a child process: ``voipclient --audio-host
--device-test tone|loopback``. A test tone on an output device, and a microphone loopback (the
microphone played back on an output, with its level); PortAudio runs here, not in the app, so a
crash or a hang in a driver ends the test with a message instead of the app.

The child resolves the device names like the voice engine (:func:`~voipclient.audio.sd_engine.
select_device`; none = the system default), opens short-lived 48 kHz mono int16 streams whose
callbacks only copy between preallocated arrays (:class:`~voipclient.audio.ring.SampleRing` and
the precomputed tone) and set flags, and reports on stdout, one JSON object per line:
``{"started": true}``, ``{"level": dBFS}`` (~20 Hz, loopback), ``{"done": true}`` (the tone's
last sample has played) or ``{"error": "what went wrong and what to do"}``. It stops at EOF on
stdin (the app stopped the test, or quit) and when its test is over.
"""

from __future__ import annotations

import argparse
import json
import math
import select
import sys
import time
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt

from voipclient.audio import sd_engine
from voipclient.audio.ring import SampleRing
from voipclient.audio.sd_engine import DeviceInfo, Kind, list_devices, select_device
from voipclient.errors import AudioDeviceError

SAMPLE_RATE: Final = 48_000  # Hz
BLOCK: Final = 480  # samples per callback: 10 ms
TONE_HZ: Final = 440.0
TONE_DBFS: Final = -12.0  # peak level of the test tone
FADE_S: Final = 0.02  # s of raised-cosine fade in and out (no clicks)
POLL_MS: Final = 50  # the child's poll period: the level signal's ~20 Hz
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


class _Failed(Exception):
    """A test cannot go on; the message is the sentence the user reads."""


def _open(sd: Any, kind: Kind, device: DeviceInfo, callback: Any) -> _Stream:
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
        raise _Failed(_open_failed(kind, device, exc)) from exc
    _track(+1)
    wrapped = _Stream(stream)
    holder.append(wrapped)
    try:
        stream.start()
    except sd.PortAudioError as exc:
        wrapped.close()
        raise _Failed(_open_failed(kind, device, exc)) from exc
    return wrapped


def _open_failed(kind: Kind, device: DeviceInfo, exc: BaseException) -> str:
    what = "microphone" if kind == "input" else "output device"
    return (
        f"Cannot open the {what} {device.name!r} ({exc}); close other programs that use it "
        "exclusively, or choose another device"
    )


def _stopped(stdin: IO[str], timeout: float) -> bool:
    """Wait up to ``timeout`` s; True once the app closed our stdin (stop the test)."""
    readable, _, _ = select.select([stdin], [], [], timeout)
    return bool(readable) and stdin.readline() == ""


def run_tone(output: str | None, seconds: float, stdin: IO[str], say: Any) -> None:
    try:
        sd = sd_engine._sounddevice()
        device = select_device(list_devices(), output, "output")
    except AudioDeviceError as exc:
        raise _Failed(f"Cannot play the test tone: {exc}") from exc
    player = _TonePlayer(make_tone(seconds))
    stream = _open(sd, "output", device, player.callback)
    say({"started": True})
    deadline = time.monotonic() + seconds + FINISH_GRACE_S
    try:
        while not _stopped(stdin, POLL_MS / 1000):
            end = player.end_time
            if not math.isnan(end) and stream.stream.time >= end + TAIL_S:
                say({"done": True})
                return
            if stream.finished or time.monotonic() > deadline:
                raise _Failed(
                    "The output device did not play the test tone; check that it is connected "
                    "and not suspended, or choose another device"
                )
    finally:
        stream.close()


def run_loopback(input_device: str | None, output: str | None, stdin: IO[str], say: Any) -> None:
    try:
        sd = sd_engine._sounddevice()
        devices = list_devices()
        source = select_device(devices, input_device, "input")
        sink = select_device(devices, output, "output")
    except AudioDeviceError as exc:
        raise _Failed(f"Cannot test the microphone: {exc}") from exc
    loop = _Loop()
    streams: list[_Stream] = []
    meter_buf = np.zeros(SAMPLE_RATE, dtype=np.int16)
    try:
        streams.append(_open(sd, "output", sink, loop.output_callback))
        streams.append(_open(sd, "input", source, loop.input_callback))
        say({"started": True})
        while not _stopped(stdin, POLL_MS / 1000):
            if any(s.finished for s in streams):
                raise _Failed(
                    "The microphone test stopped because a device went away; reconnect it or "
                    "choose another device"
                )
            n = min(loop.meter.available, meter_buf.shape[0])
            if n == 0:
                say({"level": SILENCE_DBFS})
                continue
            view = meter_buf[:n]
            loop.meter.read_into(view)
            peak = int(np.max(np.abs(view.astype(np.int32))))
            level = max(SILENCE_DBFS, 20 * math.log10(peak / 32768)) if peak else SILENCE_DBFS
            say({"level": round(level, 2)})
    finally:
        for stream in streams:
            stream.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="voipclient --audio-host --device-test")
    parser.add_argument("--audio-host", action="store_true")
    parser.add_argument("--device-test", choices=("tone", "loopback"), required=True)
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(argv)

    def say(message: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    try:
        if args.device_test == "tone":
            run_tone(args.output, args.seconds, sys.stdin, say)
        else:
            run_loopback(args.input, args.output, sys.stdin, say)
    except _Failed as exc:
        say({"error": str(exc)})
        return 1
    except BrokenPipeError:  # the app went away
        return 0
    return 0
