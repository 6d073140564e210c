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

Placement (stereo output, ``output_channels=2``): each channel has a pan ``p`` in [-1, 1] and a
balance law: the near side at unity, the far side at ``1 - |p|``, so a centred channel plays at
unity on both sides (exactly the mono mix, bit for bit) and a hard-left one is silent on the
right. The output frame is interleaved L, R. Internally a speaker adds ``(1 - |p|)·x`` to a
centre accumulator and ``|p|·x`` to its side's accumulator (one multiply-add for a centred
speaker, two for a placed one); left = centre + left part, right = centre + right part. A mono
output (``output_channels=1``) ignores placement: every channel plays at full level, so a mono
device loses nothing (the fold-down of a stereo device's placement is the device's business).

Priority channel and ducking: while a frame of the priority channel plays with speech in it (a
peak above :data:`DUCK_GATE_DBFS`: a hot mic sending silence ducks nothing), every other channel
is ducked by :attr:`Mixer.duck_db` (default -12 dB). The duck gain moves along a per-sample
ramp: attack to the full depth within one frame, held for :data:`DUCK_HOLD_S` after the last
priority frame (pauses between words do not pump), then released with a :data:`DUCK_RELEASE_S`
time constant. Duckable frames go to a second set of accumulators that are scaled by the ramp
and added before the limiter.

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

Real-time: the accumulators and scratch buffers are preallocated; ``add``/``mix_into`` allocate no
arrays (``mix`` allocates just the frame it returns).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from voipclient.audio.gain import apply_gain
from voipclient.audio.meter import SILENT, Level, measure_level

__all__ = [
    "DEDUPE_WINDOW",
    "DUCK_DB",
    "DUCK_GATE_DBFS",
    "DUCK_HOLD_S",
    "DUCK_RELEASE_S",
    "LIMIT_THRESHOLD",
    "RELEASE_S",
    "Level",
    "Mixer",
]

SAMPLE_RATE: Final = 48_000  # Hz
DEDUPE_WINDOW: Final = 64  # frames per sender remembered for dedupe (1.28 s at 20 ms)
LIMIT_THRESHOLD: Final = 10 ** (-1 / 20)  # -1 dBFS: the limiter's ceiling and the clip knee
RELEASE_S: Final = 0.2  # s: limiter gain recovery time constant
DUCK_DB: Final = -12.0  # dB: how far the priority channel's speech lowers the others
DUCK_HOLD_S: Final = 0.25  # s: the duck holds this long after the last priority frame
DUCK_RELEASE_S: Final = 0.3  # s: then the others come back with this time constant
DUCK_GATE_DBFS: Final = -45.0  # a priority frame ducks the others when its peak is above this
_DUCK_GATE: Final = 10 ** (DUCK_GATE_DBFS / 20)
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

    def __init__(self, frame_samples: int = 960, output_channels: int = 1) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, not {frame_samples}")
        self.frame_samples = frame_samples
        n = frame_samples
        # [bus][part]: bus 0 plays as is, bus 1 is ducked; parts: centre, left, right (mono:
        # the centre part only). Full scale = 1.0.
        self._bus = np.zeros((2, 3, n), dtype=np.float32)
        self._bus_used = [False, False]
        self._tmp = np.zeros(n, dtype=np.float32)
        # (i + 1) / n: a per-sample gain ramp reaching its target at the frame's end
        self._ramp = np.arange(1, n + 1, dtype=np.float32) / np.float32(n)
        self.set_output_channels(output_channels)
        frame_s = frame_samples / SAMPLE_RATE
        self._release = 1 - math.exp(-frame_s / RELEASE_S)
        self._gain = 1.0  # the limiter's current gain
        self._duck_release = 1 - math.exp(-frame_s / DUCK_RELEASE_S)
        self._duck_hold_frames = max(1, round(DUCK_HOLD_S / frame_s))
        self._duck_gain = 1.0  # the duck's current gain
        self._duck_hold = 0  # frames the duck still holds
        self._duck_target = 10 ** (DUCK_DB / 20)
        self.duck_db = DUCK_DB
        self.priority_channel: int | None = None
        self._priority_heard = False
        self._channel_volume: dict[int, float] = {}
        self._channel_pan: dict[int, float] = {}
        self._channel_muted: set[int] = set()
        self._user_volume: dict[int, float] = {}
        self._user_muted: set[int] = set()
        self._seen: dict[int, _Seen] = {}
        self._added = 0  # frames in the accumulators
        self.deafened = False
        #: Latest-value slot: the level of the last mixed frame.
        self.level: Level = SILENT
        #: Counters: copies dropped as already played, dropped as older than the dedupe window,
        #: frames whose length was not ``frame_samples`` (mixed truncated or zero-padded).
        self.duplicates = 0
        self.stale = 0
        self.size_mismatches = 0

    # --- settings ---------------------------------------------------------------------------

    def set_output_channels(self, output_channels: int) -> None:
        """1 (mono) or 2 (interleaved stereo) samples per sample frame of the output (set up
        time only: it allocates the output buffers)."""
        if output_channels not in (1, 2):
            raise ValueError(f"output_channels must be 1 or 2, not {output_channels}")
        self.output_channels = output_channels
        size = self.frame_samples * output_channels
        self._out = np.zeros(size, dtype=np.float32)  # the output frame, interleaved
        self._otmp = np.zeros(size, dtype=np.float32)
        self._otmp2 = np.zeros(size, dtype=np.float32)
        self._oramp = np.repeat(self._ramp, output_channels)  # the ramp per interleaved sample

    def set_channel_volume(self, channel_id: int, volume: float) -> None:
        """Linear gain for a channel (1.0 = unity, ≥ 0)."""
        self._channel_volume[channel_id] = _check_volume(volume)

    def channel_volume(self, channel_id: int) -> float:
        return self._channel_volume.get(channel_id, 1.0)

    def set_channel_pan(self, channel_id: int, pan: float) -> None:
        """Placement of a channel: -1 hard left, 0 centre, 1 hard right (stereo output only)."""
        if not (math.isfinite(pan) and -1.0 <= pan <= 1.0):
            raise ValueError(f"pan must be within [-1, 1], not {pan}")
        if pan == 0.0:
            self._channel_pan.pop(channel_id, None)
        else:
            self._channel_pan[channel_id] = float(pan)

    def channel_pan(self, channel_id: int) -> float:
        return self._channel_pan.get(channel_id, 0.0)

    def set_priority(self, channel_id: int | None, duck_db: float = DUCK_DB) -> None:
        """The channel whose speech ducks every other one by ``duck_db`` (≤ 0), or None."""
        if not (math.isfinite(duck_db) and -60.0 <= duck_db <= 0.0):
            raise ValueError(f"duck_db must be within [-60, 0], not {duck_db}")
        self.priority_channel = channel_id
        self.duck_db = float(duck_db)
        self._duck_target = 10 ** (duck_db / 20)

    @property
    def duck_gain(self) -> float:
        """The duck's gain at the end of the last mixed frame (1.0: not ducking)."""
        return self._duck_gain

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
        self._channel_pan.pop(channel_id, None)
        self._channel_muted.discard(channel_id)
        if self.priority_channel == channel_id:
            self.priority_channel = None

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
        priority = self.priority_channel
        unit = _INT16_SCALE if pcm.dtype == np.int16 else np.float32(1)
        tmp = self._tmp[:n]
        if priority is not None and channel_id == priority and not self._priority_heard and n:
            np.abs(pcm[:n], out=tmp, casting="unsafe")
            self._priority_heard = float(tmp.max()) * float(unit) > _DUCK_GATE
        if gain == 0.0 or n == 0:
            return True  # played (and deduplicated) at zero volume
        bus_index = 1 if priority is not None and channel_id != priority else 0
        bus = self._bus[bus_index]
        self._bus_used[bus_index] = True
        pan = self._channel_pan.get(channel_id, 0.0) if self.output_channels == 2 else 0.0
        if pan == 0.0:
            np.multiply(pcm[:n], np.float32(gain) * unit, out=tmp)
            np.add(bus[0, :n], tmp, out=bus[0, :n])
        else:
            side = bus[1 if pan < 0 else 2, :n]
            near = abs(pan)
            if near < 1.0:
                np.multiply(pcm[:n], np.float32(gain * (1.0 - near)) * unit, out=tmp)
                np.add(bus[0, :n], tmp, out=bus[0, :n])
            np.multiply(pcm[:n], np.float32(gain * near) * unit, out=tmp)
            np.add(side, tmp, out=side)
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
        out = np.empty(self.frame_samples * self.output_channels, dtype=np.int16)
        self.mix_into(out)
        return out

    def mix_into(self, out: npt.NDArray[np.int16]) -> None:
        """Like :meth:`mix`, writing into a preallocated int16 array of ``frame_samples`` x
        ``output_channels`` samples (interleaved L, R for stereo)."""
        size = self.frame_samples * self.output_channels
        if out.shape != (size,) or out.dtype != np.int16:
            raise ValueError(f"expected an int16 array of {size} samples")
        previous_duck = self._duck_gain
        self._update_duck()
        if self.deafened or self._added == 0:
            out.fill(0)
            self._clear()
            self.level = SILENT
            self._gain = min(1.0, self._gain + (1.0 - self._gain) * self._release)
            return
        acc, tmp, tmp2 = self._out, self._otmp, self._otmp2
        if self._bus_used[1]:
            self._apply_duck(previous_duck)
            np.add(self._bus[0], self._bus[1], out=self._bus[0])
        self._fold(acc)
        self._limit(acc, tmp, tmp2)
        self.level = measure_level(acc, tmp)  # the limited float signal, full scale 1.0
        np.multiply(acc, np.float32(32768), out=acc)
        np.rint(acc, out=acc)
        np.clip(acc, -32767, 32767, out=acc)  # symmetric: the tanh knee may reach ±1.0
        out[:] = acc  # float32 → int16: exact, every value is an in-range integer now
        self._clear()

    def _clear(self) -> None:
        used = self._bus_used
        if used[0] or used[1]:  # the ducked bus is summed into bus 0
            self._bus[0].fill(0)
        if used[1]:
            self._bus[1].fill(0)
        used[0] = used[1] = False
        self._added = 0
        self._priority_heard = False

    def _update_duck(self) -> None:
        """The duck's gain for the frame being mixed (its end; the ramp leads there)."""
        if self._priority_heard:
            self._duck_hold = self._duck_hold_frames
            self._duck_gain = self._duck_target  # attack: the full depth within this frame
        elif self._duck_hold > 0:
            self._duck_hold -= 1
        elif self._duck_gain != 1.0:
            gain = self._duck_gain + (1.0 - self._duck_gain) * self._duck_release
            self._duck_gain = 1.0 if gain > 0.999 else gain

    def _apply_duck(self, previous: float) -> None:
        """Scale the ducked bus by the duck's gain, ramped from ``previous`` across the frame."""
        # one ramp over the frame's samples, broadcast over the bus's three parts
        apply_gain(self._bus[1], previous, self._duck_gain, self._ramp, self._tmp)

    def _fold(self, acc: npt.NDArray[np.float32]) -> None:
        """The bus parts → the interleaved output frame."""
        bus = self._bus[0]
        if self.output_channels == 1:
            acc[:] = bus[0]
            return
        frame = acc.reshape(-1, 2)
        np.add(bus[0], bus[1], out=frame[:, 0])
        np.add(bus[0], bus[2], out=frame[:, 1])

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
            # per-sample gain: previous → gain along the ramp (both sides of a sample alike)
            apply_gain(x, previous, gain, self._oramp, tmp)
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
