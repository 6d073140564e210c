"""Push-to-talk start/stop cues, played locally: generated with numpy, mixed by a pure player.

Each cue is two short sine notes (start: rising E5 → A5, stop: falling A5 → E5), 110 ms in all,
peaking at -18 dBFS: audible over game audio without startling. Every note has a raised-cosine
fade in and out, so the waveform starts and ends at 0 and never steps (no click); the notes'
frequencies (660/880 Hz) sit where hearing is sensitive and far from the voice's fundamental.
Cues are generated once per kind and cached as read-only int16 arrays at 48 kHz.

:class:`CuePlayer` belongs to the playback worker: ``trigger(kind)`` from the PTT events (via the
worker's mailbox), ``mix_into(frame)`` once per output frame adds the next samples with a
saturating add (int16 never wraps). A cue triggered while another plays waits for it (a quick
tap plays start then stop); only the latest waiting cue is kept, so key mashing cannot queue up.
"""

from __future__ import annotations

import enum
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["CUE_LEVEL_DBFS", "CUE_MS", "SAMPLE_RATE", "CueKind", "CuePlayer", "cue"]

SAMPLE_RATE: Final = 48_000  # Hz
CUE_LEVEL_DBFS: Final = -18.0  # dBFS peak
NOTE_MS: Final = (50, 60)  # ms per note: the second note rings a little longer
CUE_MS: Final = sum(NOTE_MS)  # 110 ms
FADE_MS: Final = 6.0  # ms raised-cosine fade at both ends of each note
E5: Final = 659.26  # Hz
A5: Final = 880.0  # Hz


class CueKind(enum.Enum):
    START = "start"
    STOP = "stop"


_NOTES: Final = {CueKind.START: (E5, A5), CueKind.STOP: (A5, E5)}
_cache: dict[CueKind, npt.NDArray[np.int16]] = {}


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


def cue(kind: CueKind) -> npt.NDArray[np.int16]:
    """The cue's samples: int16, 48 kHz mono, CUE_MS long, cached and read-only."""
    cached = _cache.get(kind)
    if cached is None:
        peak = 32768 * 10 ** (CUE_LEVEL_DBFS / 20)
        f1, f2 = _NOTES[kind]
        wave = np.concatenate([_note(f1, NOTE_MS[0], peak), _note(f2, NOTE_MS[1], peak)])
        cached = np.rint(wave).astype(np.int16)
        cached.setflags(write=False)
        _cache[kind] = cached
    return cached


class CuePlayer:
    """Which cue samples go into the next output frame. Pure; owned by the playback worker."""

    def __init__(self, max_frame: int = 960) -> None:
        self._current: npt.NDArray[np.int16] | None = None
        self._pos = 0  # next sample of the current cue
        self._pending: CueKind | None = None
        self._acc = np.zeros(max_frame, dtype=np.int32)  # saturating-add scratch

    @property
    def active(self) -> bool:
        return self._current is not None

    def trigger(self, kind: CueKind) -> None:
        """Play a cue now, or after the one that is playing (replacing any waiting cue)."""
        if self._current is None:
            self._current, self._pos = cue(kind), 0
        else:
            self._pending = kind

    def mix_into(self, out: npt.NDArray[np.int16]) -> bool:
        """Add the next len(out) cue samples to ``out`` in place, saturating. True if any."""
        if self._current is None:
            return False
        n = out.shape[0]
        if self._acc.shape[0] < n:
            self._acc = np.zeros(n, dtype=np.int32)
        done = 0
        while done < n and self._current is not None:
            src = self._current
            take = min(n - done, src.shape[0] - self._pos)
            acc = self._acc[:take]
            dst = out[done : done + take]
            np.add(dst, src[self._pos : self._pos + take], out=acc, dtype=np.int32)
            np.clip(acc, -32768, 32767, out=acc)
            np.copyto(dst, acc, casting="unsafe")
            done += take
            self._pos += take
            if self._pos >= src.shape[0]:
                kind, self._pending = self._pending, None
                self._current = cue(kind) if kind is not None else None
                self._pos = 0
        return True
