"""An :class:`~voipclient.audio.engine.AudioEngine` on WAV files, for tests and the headless bot.

The "microphone" is a 48 kHz mono 16-bit WAV (read whole at construction); what is "played" is
appended to an output WAV of the same format. There is no device thread: the owner drives the
engine with the clock it already has.

* ``realtime=True``: :meth:`FileEngine.tick` ``(now)`` moves exactly the frames due between the
  start time and ``now`` (seconds, any monotonic clock) that have not been moved yet, so the
  result depends only on the times passed in.
* ``realtime=False``: :meth:`FileEngine.step` moves one frame per call (faster than real time);
  ``tick(now)`` does the same and ignores ``now``.

Moving one frame = (1) write the next ``frame_samples`` input samples into ``capture`` (fewer
for the last partial frame, none after the end of the file) and (2) read one frame from
``playback`` exactly as a device callback would (zero-filled on underrun) and append it to the
output WAV. :meth:`FileEngine.close` finalizes the output WAV (its header carries the length).
"""

from __future__ import annotations

import math
import wave
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import numpy.typing as npt

from voipclient.audio.engine import (
    FRAME_SAMPLES,
    RING_SAMPLES,
    SAMPLE_RATE,
    DeviceEvent,
    EngineStats,
    EventCallback,
)
from voipclient.audio.ring import SampleRing
from voipclient.errors import LocalProtocolError

SAMPLE_WIDTH = 2  # bytes: int16 PCM
CHANNELS = 1
# Frames due are computed from float seconds; allow this much rounding slack (well under 1 sample)
# so that now = start + k * 0.020 moves exactly k frames.
_EPSILON_FRAMES = 1e-6


def read_wav_mono16(path: Path) -> npt.NDArray[np.int16]:
    """The samples of a 48 kHz mono 16-bit WAV; ValueError naming the problem otherwise."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate = wav.getframerate()
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            if rate != SAMPLE_RATE:
                raise ValueError(f"{path}: sample rate is {rate} Hz, expected {SAMPLE_RATE} Hz")
            if channels != CHANNELS:
                raise ValueError(f"{path}: has {channels} channels, expected mono (1 channel)")
            if width != SAMPLE_WIDTH:
                raise ValueError(f"{path}: sample width is {width * 8} bits, expected 16-bit PCM")
            data = wav.readframes(wav.getnframes())
    except wave.Error as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from exc
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


class FileEngine:
    """WAV in as the microphone, WAV out as the speaker, driven by ``tick(now)`` or ``step()``."""

    def __init__(
        self,
        input_wav: Path | None,
        output_wav: Path | None,
        *,
        realtime: bool = True,
        frame_samples: int = FRAME_SAMPLES,
        ring_samples: int = RING_SAMPLES,
        on_event: EventCallback | None = None,
    ) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, not {frame_samples}")
        self.realtime = realtime
        self._frame_samples = frame_samples
        self.capture = SampleRing(ring_samples)
        self.playback = SampleRing(ring_samples)
        self.on_event = on_event
        self._input: npt.NDArray[np.int16] = (
            read_wav_mono16(input_wav) if input_wav is not None else np.zeros(0, dtype=np.int16)
        )
        self._in_pos = 0  # next input sample to deliver
        self._out_frame = np.zeros(frame_samples, dtype=np.int16)  # preallocated device buffer
        self._writer: wave.Wave_write | None = None
        if output_wav is not None:
            self._writer = wave.open(str(output_wav), "wb")  # noqa: SIM115 - closed in close()
            self._writer.setnchannels(CHANNELS)
            self._writer.setsampwidth(SAMPLE_WIDTH)
            self._writer.setframerate(SAMPLE_RATE)
        self.running = False
        self._closed = False
        self._start_time: float | None = None
        self._frames_moved = 0  # frames moved since start (the realtime schedule position)
        self._frames_in = 0
        self._frames_out = 0

    # -- AudioEngine -------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    @property
    def input_exhausted(self) -> bool:
        """True once every input sample has gone into ``capture`` (always true without input)."""
        return self._in_pos >= len(self._input)

    def start(self, now: float | None = None) -> None:
        """Start moving frames. In realtime mode the schedule starts at ``now`` if given, else
        at the first :meth:`tick` (which then moves nothing)."""
        if self._closed:
            raise LocalProtocolError("FileEngine.start() after close()")
        self.running = True
        self._start_time = now
        self._frames_moved = 0
        self._emit("started", "file audio engine")

    def stop(self) -> None:
        self.running = False
        self._emit("stopped", "file audio engine")

    def stats(self) -> EngineStats:
        return EngineStats(
            overruns=self.capture.overrun_samples,
            underruns=self.playback.underrun_samples,
            frames_in=self._frames_in,
            frames_out=self._frames_out,
        )

    # -- driving -----------------------------------------------------------------------------

    def frames_due(self, now: float) -> int:
        """Frames a realtime schedule has moved in total by ``now`` (0 before the start)."""
        if self._start_time is None:
            return 0
        frames = (now - self._start_time) * SAMPLE_RATE / self._frame_samples
        return max(0, math.floor(frames + _EPSILON_FRAMES))

    def tick(self, now: float) -> int:
        """Move the frames due by ``now`` (realtime) or one frame (not realtime); return how many.

        Does nothing while the engine is not running.
        """
        if not self.running:
            return 0
        if not self.realtime:
            self._move_frame()
            return 1
        if self._start_time is None:
            self._start_time = now
        moved = 0
        target = self.frames_due(now)
        while self._frames_moved < target:
            self._move_frame()
            self._frames_moved += 1
            moved += 1
        return moved

    def step(self) -> None:
        """Move one frame now (faster-than-realtime mode only)."""
        if self.realtime:
            raise LocalProtocolError("FileEngine.step() is for realtime=False; use tick(now)")
        if not self.running:
            raise LocalProtocolError("FileEngine.step() before start()")
        self._move_frame()

    def close(self) -> None:
        """Stop and finalize the output WAV. Idempotent."""
        if self._closed:
            return
        self.running = False
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _move_frame(self) -> None:
        if self._in_pos < len(self._input):
            chunk = self._input[self._in_pos : self._in_pos + self._frame_samples]
            self._in_pos += len(chunk)
            self.capture.write(chunk)
            self._frames_in += 1
            if self._in_pos >= len(self._input):
                self._emit("eof", "input WAV exhausted")
        self.playback.read_into(self._out_frame)
        if self._writer is not None:
            self._writer.writeframes(self._out_frame.astype("<i2", copy=False).tobytes())
        self._frames_out += 1

    def _emit(self, kind: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event(DeviceEvent(kind, message))
