"""The playback mixer: every speaker of every channel the user is in → one output frame, pure.

Once per output frame (20 ms by default) the playback worker ``add()``s each decoded speaker frame
and then calls ``mix()`` (or ``mix_into(out)``), which consumes what was added.

Gain: each frame is scaled by ``channel volume x user volume`` (linear, 1.0 = unity). A muted
channel, a locally muted user or deafen drop the frame before anything else; callers ask
:meth:`Mixer.is_locally_muted` / :meth:`Mixer.is_audible` first so they need not decode it at all.

The same speaker in two channels plays once: the sender's ``frame_no`` counts across all its
channels (PROTOCOL §3), so frames are deduplicated on ``(sender_id, frame_no)`` over a window of
the last :data:`DEDUPE_WINDOW` frames per sender. **The first arrival wins**, at *its* channel's
volume; later copies are dropped and counted in :attr:`Mixer.duplicates`. A copy dropped because
its channel is muted does not count as played, so the other channel's copy still plays. Frames
older than the window are dropped too (counted in :attr:`Mixer.stale`).

Headroom: samples are summed in float32 (full scale = 1.0 = 32768) and never wrap. A limiter then
(1) reduces gain smoothly when the summed peak exceeds :data:`LIMIT_THRESHOLD` (-1 dBFS): the gain
ramps linearly to the new value across the frame (instant attack per frame, no step at frame
edges) and recovers with a :data:`RELEASE_S` time constant; (2) soft-clips whatever still lies
above the threshold with a tanh knee, which is exactly the identity below it — one speaker below
-1 dBFS passes through bit-exact. Output is rounded and clamped to ±32767 (int16, never wraps).

Meter: peak and RMS (AES17: a full-scale sine reads 0 dBFS, so RMS + 3.01 dB) of the last output
frame in dBFS, -∞ for digital silence, published as one :class:`Level` tuple: a latest-value slot
(one reference store per frame) that a UI thread may read at any time. It is the capture path's
meter too (:func:`voipclient.audio.meter.measure_level`).

Real-time: the accumulator and scratch buffers are preallocated; ``add``/``mix_into`` allocate no
arrays (``mix`` allocates just the frame it returns).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from voipclient.audio.meter import SILENT, Level, measure_level

__all__ = [
    "DEDUPE_WINDOW",
    "LIMIT_THRESHOLD",
    "RELEASE_S",
    "Level",
    "Mixer",
]

SAMPLE_RATE: Final = 48_000  # Hz
DEDUPE_WINDOW: Final = 64  # frames per sender remembered for dedupe (1.28 s at 20 ms)
LIMIT_THRESHOLD: Final = 10 ** (-1 / 20)  # -1 dBFS: the limiter's ceiling and the clip knee
RELEASE_S: Final = 0.2  # s: limiter gain recovery time constant
_FRAME_NO_MODULUS: Final = 1 << 32
_HALF: Final = 1 << 31
_MASK: Final = (1 << DEDUPE_WINDOW) - 1
_INT16_SCALE: Final = np.float32(1 / 32768)


class _Seen:
    """Which recent frame_nos of one sender were played: the highest plus a bitmask behind it."""

    __slots__ = ("highest", "mask")

    def __init__(self, frame_no: int) -> None:
        self.highest = frame_no
        self.mask = 1  # bit i set: frame highest - i was played


class Mixer:
    """Mixes decoded frames of all speakers into one int16 output frame (see the module doc)."""

    def __init__(self, frame_samples: int = 960) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, not {frame_samples}")
        self.frame_samples = frame_samples
        n = frame_samples
        self._acc = np.zeros(n, dtype=np.float32)  # the sum, full scale = 1.0
        self._tmp = np.zeros(n, dtype=np.float32)
        self._tmp2 = np.zeros(n, dtype=np.float32)
        # (i + 1) / n: the limiter's per-sample gain ramp, reaching the target at the frame's end
        self._ramp = np.arange(1, n + 1, dtype=np.float32) / np.float32(n)
        self._release = 1 - math.exp(-frame_samples / SAMPLE_RATE / RELEASE_S)
        self._gain = 1.0  # the limiter's current gain
        self._channel_volume: dict[int, float] = {}
        self._channel_muted: set[int] = set()
        self._user_volume: dict[int, float] = {}
        self._user_muted: set[int] = set()
        self._seen: dict[int, _Seen] = {}
        self._added = 0  # frames in the accumulator
        self.deafened = False
        #: Latest-value slot: the level of the last mixed frame.
        self.level: Level = SILENT
        #: Counters: copies dropped as already played, dropped as older than the dedupe window,
        #: frames whose length was not ``frame_samples`` (mixed truncated or zero-padded).
        self.duplicates = 0
        self.stale = 0
        self.size_mismatches = 0

    # --- settings ---------------------------------------------------------------------------

    def set_channel_volume(self, channel_id: int, volume: float) -> None:
        """Linear gain for a channel (1.0 = unity, ≥ 0)."""
        self._channel_volume[channel_id] = _check_volume(volume)

    def channel_volume(self, channel_id: int) -> float:
        return self._channel_volume.get(channel_id, 1.0)

    def set_channel_muted(self, channel_id: int, muted: bool) -> None:
        if muted:
            self._channel_muted.add(channel_id)
        else:
            self._channel_muted.discard(channel_id)

    def set_user_volume(self, sender_id: int, volume: float) -> None:
        """Linear gain for a user (1.0 = unity, ≥ 0), in every channel."""
        self._user_volume[sender_id] = _check_volume(volume)

    def set_user_muted(self, sender_id: int, muted: bool) -> None:
        """Local mute: only this client stops hearing the user."""
        if muted:
            self._user_muted.add(sender_id)
        else:
            self._user_muted.discard(sender_id)

    def set_deafened(self, deafened: bool) -> None:
        self.deafened = deafened

    def is_locally_muted(self, sender_id: int) -> bool:
        return sender_id in self._user_muted

    def is_audible(self, sender_id: int, channel_id: int) -> bool:
        """False when the frame would be dropped for mute or deafen (skip decoding it)."""
        return not (
            self.deafened or sender_id in self._user_muted or channel_id in self._channel_muted
        )

    def forget_sender(self, sender_id: int) -> None:
        """Drop a departed sender's dedupe state and volume (sender ids are per session)."""
        self._seen.pop(sender_id, None)
        self._user_volume.pop(sender_id, None)
        self._user_muted.discard(sender_id)

    def forget_channel(self, channel_id: int) -> None:
        self._channel_volume.pop(channel_id, None)
        self._channel_muted.discard(channel_id)

    # --- the real-time path -----------------------------------------------------------------

    def add(
        self,
        sender_id: int,
        channel_id: int,
        frame_no: int,
        pcm: npt.NDArray[np.int16] | npt.NDArray[np.float32],
    ) -> bool:
        """Add one decoded frame (int16, or float32 with full scale 1.0). True if it will play."""
        if not self.is_audible(sender_id, channel_id):
            return False
        if not self._mark_played(sender_id, frame_no % _FRAME_NO_MODULUS):
            return False
        gain = self._channel_volume.get(channel_id, 1.0) * self._user_volume.get(sender_id, 1.0)
        n = min(len(pcm), self.frame_samples)
        if len(pcm) != self.frame_samples:
            self.size_mismatches += 1
        if gain == 0.0 or n == 0:
            return True  # played (and deduplicated) at zero volume
        scale = np.float32(gain) * (_INT16_SCALE if pcm.dtype == np.int16 else np.float32(1))
        tmp = self._tmp[:n]
        np.multiply(pcm[:n], scale, out=tmp)
        np.add(self._acc[:n], tmp, out=self._acc[:n])
        self._added += 1
        return True

    def _mark_played(self, sender_id: int, frame_no: int) -> bool:
        """Record (sender, frame_no) as played; False if it already was or is too old."""
        seen = self._seen.get(sender_id)
        if seen is None:
            self._seen[sender_id] = _Seen(frame_no)
            return True
        ahead = (frame_no - seen.highest) % _FRAME_NO_MODULUS
        if 0 < ahead < _HALF:  # newer than anything played: shift the window forward
            seen.mask = ((seen.mask << ahead) | 1) & _MASK if ahead < DEDUPE_WINDOW else 1
            seen.highest = frame_no
            return True
        behind = (seen.highest - frame_no) % _FRAME_NO_MODULUS
        if behind >= DEDUPE_WINDOW:
            self.stale += 1
            return False
        bit = 1 << behind
        if seen.mask & bit:
            self.duplicates += 1
            return False
        seen.mask |= bit
        return True

    def mix(self) -> npt.NDArray[np.int16]:
        """Mix and consume everything added since the last call into a new int16 frame."""
        out = np.empty(self.frame_samples, dtype=np.int16)
        self.mix_into(out)
        return out

    def mix_into(self, out: npt.NDArray[np.int16]) -> None:
        """Like :meth:`mix`, writing into a preallocated int16 array of ``frame_samples``."""
        if out.shape != (self.frame_samples,) or out.dtype != np.int16:
            raise ValueError(f"expected an int16 array of {self.frame_samples} samples")
        acc, tmp, tmp2 = self._acc, self._tmp, self._tmp2
        if self.deafened or self._added == 0:
            out.fill(0)
            acc.fill(0)
            self._added = 0
            self.level = SILENT
            self._gain = min(1.0, self._gain + (1.0 - self._gain) * self._release)
            return
        self._limit(acc, tmp, tmp2)
        self.level = measure_level(acc, tmp)  # the limited float signal, full scale 1.0
        np.multiply(acc, np.float32(32768), out=acc)
        np.rint(acc, out=acc)
        np.clip(acc, -32767, 32767, out=acc)  # symmetric: the tanh knee may reach ±1.0
        out[:] = acc  # float32 → int16: exact, every value is an in-range integer now
        acc.fill(0)
        self._added = 0

    def _limit(
        self,
        x: npt.NDArray[np.float32],
        tmp: npt.NDArray[np.float32],
        tmp2: npt.NDArray[np.float32],
    ) -> None:
        """Smooth gain reduction, then a tanh soft clip above the threshold, in place."""
        np.abs(x, out=tmp)
        peak = float(tmp.max())
        previous = self._gain
        target = 1.0 if peak <= LIMIT_THRESHOLD else LIMIT_THRESHOLD / peak
        if target < previous:
            gain = target  # attack within this frame
        else:
            gain = min(target, previous + (1.0 - previous) * self._release)
            if gain > 0.999:  # -0.009 dB: snap to unity so quiet passages are bit-exact again
                gain = 1.0
        self._gain = gain
        if previous != 1.0 or gain != 1.0:
            # per-sample gain: previous → gain along the ramp
            np.multiply(self._ramp, np.float32(gain - previous), out=tmp)
            np.add(tmp, np.float32(previous), out=tmp)
            np.multiply(x, tmp, out=x)
        if peak * max(previous, gain) > LIMIT_THRESHOLD:
            # y = clip(x, ±T) + (1 - T)·tanh((x - clip(x, ±T)) / (1 - T)): identity inside ±T,
            # bounded by ±1 outside, continuous with slope 1 at the knee
            knee = np.float32(1 - LIMIT_THRESHOLD)
            np.clip(x, -LIMIT_THRESHOLD, LIMIT_THRESHOLD, out=tmp)
            np.subtract(x, tmp, out=tmp2)
            np.divide(tmp2, knee, out=tmp2)
            np.tanh(tmp2, out=tmp2)
            np.multiply(tmp2, knee, out=tmp2)
            np.add(tmp, tmp2, out=x)


def _check_volume(volume: float) -> float:
    if not (math.isfinite(volume) and volume >= 0):
        raise ValueError(f"volume must be a finite gain ≥ 0, not {volume}")
    return float(volume)
