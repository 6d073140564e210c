"""The audio device seam: the :class:`AudioEngine` Protocol and a device-less :class:`NullEngine`.

An engine owns a device (or a stand-in) and two :class:`~voipclient.audio.ring.SampleRing`
mailboxes: ``capture`` (the engine writes microphone samples, the capture worker reads them) and
``playback`` (the playback worker writes, the engine reads and plays). Format: 48 kHz int16,
frames of ``frame_samples`` samples (960 = 20 ms, as the Opus wrapper uses); capture is mono,
playback carries ``output_channels`` interleaved channels (the device engines: 2, stereo, so
channels can be placed left and right; an engine without the attribute plays mono).

Backends: a sounddevice engine (PortAudio callbacks), :class:`voipclient.audio.file_engine.
FileEngine` (WAV files, for tests and the headless bot) and :class:`NullEngine` (no device).
This module imports no device library so the pure core can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from voipclient.audio.ring import SampleRing

SAMPLE_RATE: Final = 48_000  # Hz, as voipclient.audio.opus (not imported: it needs libopus)
FRAME_SAMPLES: Final = 960  # samples per 20 ms frame at 48 kHz
RING_SAMPLES: Final = SAMPLE_RATE  # default ring capacity: 1 s of mono audio
OUTPUT_CHANNELS: Final = 2  # the device engines' playback ring: interleaved L, R


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters since the engine was built (a snapshot; cheap to take from any thread)."""

    overruns: int
    """Capture samples dropped because the capture ring was full (the reader fell behind)."""
    underruns: int
    """Playback samples zero-filled because the playback ring was empty (the writer fell behind)."""
    frames_in: int
    """Frames the engine delivered from the microphone (or its stand-in) into ``capture``."""
    frames_out: int
    """Frames the engine took from ``playback`` and played (or discarded)."""


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Something happened to the device, reported through ``AudioEngine.on_event``."""

    kind: str
    """Short machine-readable kind, e.g. ``"started"``, ``"stopped"``, ``"lost"``, ``"eof"``."""
    message: str
    """Human-readable detail for the log / UI."""


EventCallback = Callable[[DeviceEvent], None]


class AudioEngine(Protocol):
    """What the audio workers and the composition root need from any audio backend."""

    capture: SampleRing
    """Microphone samples in (the engine is the producer)."""
    playback: SampleRing
    """Samples to play (the engine is the consumer; it zero-fills on underrun)."""
    on_event: EventCallback | None
    """Called with device events; not from a real-time callback (backends defer it)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def frame_samples(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> EngineStats: ...


class NullEngine:
    """No device: ``capture`` stays empty, ``playback`` is drained and discarded on :meth:`tick`."""

    def __init__(
        self,
        *,
        frame_samples: int = FRAME_SAMPLES,
        ring_samples: int = RING_SAMPLES,
        on_event: EventCallback | None = None,
    ) -> None:
        self._frame_samples = frame_samples
        self.capture = SampleRing(ring_samples)
        self.playback = SampleRing(ring_samples)
        self.on_event = on_event
        self.running = False
        self._samples_out = 0

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    def start(self) -> None:
        self.running = True
        self._emit("started", "null audio engine (no device)")

    def stop(self) -> None:
        self.running = False
        self._emit("stopped", "null audio engine")

    def tick(self, now: float) -> int:
        """Discard everything queued for playback; return samples discarded. ``now`` is unused."""
        del now
        n = self.playback.discard()
        self._samples_out += n
        return n

    def stats(self) -> EngineStats:
        return EngineStats(
            overruns=self.capture.overrun_samples,
            underruns=self.playback.underrun_samples,
            frames_in=0,
            frames_out=self._samples_out // self._frame_samples,
        )

    def _emit(self, kind: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event(DeviceEvent(kind, message))
