"""Push-to-talk start/stop cues, played locally: generated with numpy, mixed by a pure player.

Each cue is two short sine notes (start: rising, e.g. E5 → A5; stop: the same notes falling),
110 ms in all,
peaking at -18 dBFS: audible over game audio without startling. Every note has a raised-cosine
fade in and out, so the waveform starts and ends at 0 and never steps (no click); the notes'
frequencies (660/880 Hz) sit where hearing is sensitive and far from the voice's fundamental.
Cues are generated once per kind and voice and cached as read-only int16 arrays at 48 kHz.

**Voices**: each channel gets its own pair of notes (:data:`VOICES`, chosen per channel like its
colour), so you hear which net you keyed: the first note differs between every two voices. On a
stereo output a cue plays at its channel's placement (the same balance law as the mixer).

:class:`CuePlayer` belongs to the playback worker: ``trigger(kind, voice, pan)`` from the PTT events
(via the worker's mailbox), ``mix_into(frame, channels)`` once per output frame adds the next
samples with a saturating add (int16 never wraps). A cue triggered while another plays waits for
it (a quick tap plays start then stop; keying two channels at once plays both); a channel's
waiting cue is replaced by its next one and at most :data:`MAX_WAITING` cues wait (the oldest is
dropped), so key mashing cannot queue up.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CUE_LEVEL_DBFS",
    "CUE_MS",
    "MAX_WAITING",
    "SAMPLE_RATE",
    "VOICES",
    "CueKind",
    "CuePlayer",
    "cue",
    "voice_for",
]

SAMPLE_RATE: Final = 48_000  # Hz
CUE_LEVEL_DBFS: Final = -18.0  # dBFS peak
NOTE_MS: Final = (50, 60)  # ms per note: the second note rings a little longer
CUE_MS: Final = sum(NOTE_MS)  # 110 ms
FADE_MS: Final = 6.0  # ms raised-cosine fade at both ends of each note
MAX_WAITING: Final = 3  # cues waiting behind the one that plays

#: Per voice: the start cue's two notes (Hz); the stop cue plays them the other way round. Every
#: voice starts on a different note (E5, C5, G5, D5, B4, F5), a fourth or fifth apart.
VOICES: Final = (
    (659.26, 880.00),  # E5 → A5 (voice 0: the cue every channel had before)
    (523.25, 783.99),  # C5 → G5
    (783.99, 1174.66),  # G5 → D6
    (587.33, 880.00),  # D5 → A5
    (493.88, 659.26),  # B4 → E5
    (698.46, 1046.50),  # F5 → C6
)


class CueKind(enum.Enum):
    START = "start"
    STOP = "stop"


_cache: dict[tuple[CueKind, int], npt.NDArray[np.int16]] = {}


def voice_for(index: int) -> int:
    """The voice of the ``index``-th channel (cycling through :data:`VOICES`)."""
    return index % len(VOICES)


def _note(freq_hz: float, ms: int, peak: float) -> npt.NDArray[np.float64]:
    n = SAMPLE_RATE * ms // 1000
    t = np.arange(n) / SAMPLE_RATE
    env = np.ones(n)
    fade = round(FADE_MS * SAMPLE_RATE / 1000)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)  # raised cosine 0 → 1
    env[:fade] = ramp
    env[n - fade :] = ramp[::-1]
    # a touch of the octave makes the tone rounder than a bare sine; the peak is normalised below
    wave = np.sin(2 * np.pi * freq_hz * t) + 0.15 * np.sin(4 * np.pi * freq_hz * t)
    wave *= env
    return np.asarray(wave * (peak / np.abs(wave).max()))


def cue(kind: CueKind, voice: int = 0) -> npt.NDArray[np.int16]:
    """The cue's samples: int16, 48 kHz mono, CUE_MS long, cached and read-only."""
    key = (kind, voice_for(voice))
    cached = _cache.get(key)
    if cached is None:
        peak = 32768 * 10 ** (CUE_LEVEL_DBFS / 20)
        f1, f2 = VOICES[key[1]]
        if kind is CueKind.STOP:
            f1, f2 = f2, f1
        wave = np.concatenate([_note(f1, NOTE_MS[0], peak), _note(f2, NOTE_MS[1], peak)])
        cached = np.rint(wave).astype(np.int16)
        cached.setflags(write=False)
        _cache[key] = cached
    return cached


class CuePlayer:
    """Which cue samples go into the next output frame. Pure; owned by the playback worker."""

    def __init__(self, max_frame: int = 960) -> None:
        self._current: npt.NDArray[np.int16] | None = None
        self._gains = (1.0, 1.0)  # the current cue's (left, right) gains
        self._pos = 0  # next sample of the current cue
        self._waiting: deque[tuple[CueKind, int, float]] = deque(maxlen=MAX_WAITING)
        self._acc = np.zeros(max_frame, dtype=np.int32)  # saturating-add scratch
        self._scaled = np.zeros(max_frame, dtype=np.int32)

    @property
    def active(self) -> bool:
        return self._current is not None

    def trigger(self, kind: CueKind, voice: int = 0, pan: float = 0.0) -> None:
        """Play a cue now, or after the ones that play or wait (see the module doc)."""
        if self._current is None:
            self._start(kind, voice, pan)
            return
        waiting = self._waiting
        for i, (_, v, p) in enumerate(waiting):
            if v == voice and p == pan:  # the same channel's waiting cue: replaced
                del waiting[i]
                break
        waiting.append((kind, voice, pan))

    def _start(self, kind: CueKind, voice: int, pan: float) -> None:
        pan = min(1.0, max(-1.0, pan)) if math.isfinite(pan) else 0.0
        self._current, self._pos = cue(kind, voice), 0
        self._gains = (min(1.0, 1.0 - pan), min(1.0, 1.0 + pan))  # the mixer's balance law

    def mix_into(self, out: npt.NDArray[np.int16], channels: int = 1) -> bool:
        """Add the next cue samples to ``out`` in place (``channels`` interleaved), saturating.
        True if any."""
        if self._current is None:
            return False
        n = out.shape[0] // channels
        if self._acc.shape[0] < n:
            self._acc = np.zeros(n, dtype=np.int32)
            self._scaled = np.zeros(n, dtype=np.int32)
        frame = out.reshape(-1, channels)
        done = 0
        while done < n and self._current is not None:
            src = self._current
            take = min(n - done, src.shape[0] - self._pos)
            part = src[self._pos : self._pos + take]
            for side in range(channels):
                gain = self._gains[side] if channels == 2 else 1.0
                if gain <= 0.0:
                    continue
                acc = self._acc[:take]
                dst = frame[done : done + take, side]
                if gain == 1.0:
                    np.add(dst, part, out=acc, dtype=np.int32)
                else:
                    scaled = self._scaled[:take]
                    np.multiply(part, gain, out=scaled, casting="unsafe")
                    np.add(dst, scaled, out=acc, dtype=np.int32)
                np.clip(acc, -32768, 32767, out=acc)
                np.copyto(dst, acc, casting="unsafe")
            done += take
            self._pos += take
            if self._pos >= src.shape[0]:
                self._current = None
                if self._waiting:
                    self._start(*self._waiting.popleft())
        return True
