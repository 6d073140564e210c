"""Acoustic echo cancellation for players on speakers: WebRTC's AEC3 through ``pywebrtc-audio``.

The far end is *exactly* what the mixer renders: the playback worker folds each output frame it
writes to the device down to mono ((L + R) / 2) and appends it to a :class:`FarEnd` mailbox; the
capture worker takes one far frame per microphone frame and hands both to AEC3, before any
other processing (the noise suppressor and AGC then see the echo-free signal). AEC3 estimates
the delay between the two on its own (the playback ring, the device and the room; up to about
half a second), so the two threads need not be in lockstep: the mailbox keeps the far end at
most :data:`MAX_BACKLOG_FRAMES` ahead (older far frames are dropped, never delayed: the far
frame must reach AEC3 before its echo does) and gives silence when the speakers played nothing.
Every microphone frame takes exactly one far frame (a late one is owed and skipped when it
comes), so scheduling jitter between the two threads never shifts the alignment.

Two cancellers run side by side on every frame (figures from ``benchmarks/aec.py``; the
comparison in docs/audio-dsp.md):

* WebRTC's **AEC3** (``pywebrtc-audio``, which the noise suppressor already uses): it estimates
  the delay on its own and removes 30-34 dB of echo within 2 s, but its suppressor lowers the
  near end while the far end speaks (half-duplex-like, as in browsers): talking over a loud
  echo scores PESQ-WB 1.1-1.2.
* a **linear Kalman canceller** (:mod:`voipclient.audio.linear_aec`): it needs 8-15 s of far-end
  speech to learn the path, then removes ~30 dB and leaves the near end intact in double talk
  (PESQ-WB 3.8-4.5).

The microphone gets AEC3's output until the linear filter's own estimate says it removes
:data:`HANDOVER_DB`, then the linear filter's; back to AEC3 if that estimate stays low for a
second (the echo path changed: the laptop moved, the volume jumped). About 0.45 ms per 20 ms
frame for both. Speex's MDF (tried through ``pyaec``) scores between the two and is not used.
Headphones need none of this, hence the ``auto`` mode.

``auto`` (the default): on unless the output device's name says it is a headset or headphones
(:func:`wants_echo_cancellation`). The binding returns a new array per call: one allocation per
frame we cannot avoid (as with the WebRTC noise suppressor).
"""

from __future__ import annotations

import re
from typing import Final

import numpy as np
import numpy.typing as npt

from voipclient.audio.linear_aec import LinearCanceller
from voipclient.audio.ring import SampleRing

__all__ = [
    "ECHO_MODES",
    "HANDBACK_BLOCKS",
    "HANDBACK_DB",
    "HANDOVER_BLOCKS",
    "HANDOVER_DB",
    "MAX_BACKLOG_FRAMES",
    "MAX_LATE_FRAMES",
    "MAX_OWED_FRAMES",
    "RING_FRAMES",
    "EchoCanceller",
    "FarEnd",
    "aec3_latency",
    "wants_echo_cancellation",
]

ECHO_MODES: Final = ("auto", "on", "off")
MAX_BACKLOG_FRAMES: Final = 4  # far frames waiting for the capture side, at most
MAX_OWED_FRAMES: Final = 5  # late far frames owed at most (a longer gap is a pause)
MAX_LATE_FRAMES: Final = 2  # jitter room: late frames let through (delaying the far end) at most
RING_FRAMES: Final = 50  # room for a burst of the playback side (1 s) until the next take
_HEADSET: Final = re.compile(
    r"head(set|phone)|earbud|earphone|airpods|buds\d*\b|in-ear|hands-?free|\bhfp\b|\bhsp\b",
    re.IGNORECASE,
)


def wants_echo_cancellation(mode: str, output_device: str | None) -> bool:
    """Whether to cancel echo: ``on``/``off`` as said; ``auto`` unless the output is a headset
    (by its name: "Jabra Evolve 65 Headset", "WH-1000XM4 Headphones", "AirPods", ...)."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return not (output_device and _HEADSET.search(output_device))


class FarEnd:
    """The far-end mailbox between the playback worker (``put``) and the capture worker
    (``take_into``): one writer, one reader, no lock (a :class:`SampleRing`).

    The far end starts :data:`MAX_LATE_FRAMES` frames of silence behind: room for the two
    threads' jitter, taken at once (taken when the first late frames came, it moved the far end
    against its echo in the middle of AEC3's convergence). A take that finds nothing while the
    playback worker is running (it was late, or the capture worker caught up in a burst) gives
    silence, and the late frame is *owed* and skipped when it comes, so scheduling hiccups (a
    game on every core) cannot keep pushing the far end later until it reaches the cancellers
    after its echo, which cannot be cancelled. (Room given back by a dropped backlog, below, is
    taken again by the next late frames.) After :data:`MAX_OWED_FRAMES` takes without any frame
    put, nothing is being played (a pause): nothing is owed. A backlog above
    :data:`MAX_BACKLOG_FRAMES`, beyond the frames by which the far end is rightly ahead (see
    :meth:`take_into`), is dropped at once (the oldest frames), so the far end is never late
    by more than that either. Silence the device played for lack of frames goes in where it
    was played (:meth:`put_silence`)."""

    def __init__(self, frame_samples: int) -> None:
        self.frame_samples = frame_samples
        self._ring = SampleRing(frame_samples * RING_FRAMES)
        self._sum = np.zeros(frame_samples, dtype=np.int32)
        self._mono = np.zeros(frame_samples, dtype=np.int16)
        self._mono_zeros = np.zeros(frame_samples, dtype=np.int16)
        self._owed = 0  # far samples handed out as silence, to skip when they arrive
        # The jitter room is taken at the start: the far end begins MAX_LATE_FRAMES frames of
        # silence behind, where the first late frames would have put it anyway. Taken later,
        # it moved the far end against its echo in the middle of AEC3's convergence, and AEC3
        # needed another 1.4 s to find the path again (test_echo_app beside a CPU hog: the
        # second late frame came 1.0 s after the start, 3 runs in 7).
        self._late = MAX_LATE_FRAMES  # frames the far end has been delayed by so far
        self._ring.write(np.zeros(MAX_LATE_FRAMES * frame_samples, dtype=np.int16))
        self._puts = 0  # frames put (written by the playback side only)
        self._puts_seen = 0  # the value of _puts at the last take
        self._idle_takes = 0  # takes in a row without a put in between
        self.dropped = 0  # far samples dropped as too old (the capture side fell behind)
        self.starved = 0  # far frames taken as silence because none was there yet
        self.skipped = 0  # far samples that came after their silent stand-in, skipped
        self.underrun_silence = 0  # silence the device played (ring ran dry), put in its place

    @property
    def overrun(self) -> int:
        """Far samples lost because the capture side stalled for longer than the ring holds."""
        return self._ring.overrun_samples

    def put(self, frame: npt.NDArray[np.int16], channels: int) -> None:
        """The frame the playback worker just wrote to the device (``channels`` interleaved)."""
        n = self.frame_samples
        if channels == 2:
            pairs = frame.reshape(-1, 2)
            np.add(pairs[:, 0], pairs[:, 1], out=self._sum, dtype=np.int32)
            np.right_shift(self._sum, 1, out=self._sum)
            np.copyto(self._mono, self._sum, casting="unsafe")
            self._ring.write(self._mono)
        else:
            self._ring.write(frame[:n])
        self._puts += 1

    def put_silence(self, samples: int) -> None:
        """``samples`` (mono) of silence the device played because the playback ring ran dry
        (the playback worker was late): they go in where the device played them, so the far
        end stays the sequence the speakers really played, sample for sample. Without them
        every underrun would move the echo that much later against the far end for good, and
        AEC3 would have to find the path again each time. Only what the ring has room for
        goes in: more would be a backlog :meth:`take_into` drops anyway, and writing it costs
        the playback thread for nothing."""
        samples = min(samples, self._ring.free)
        self.underrun_silence += samples
        zeros = self._mono_zeros
        while samples > 0:
            k = min(samples, len(zeros))
            self._ring.write(zeros[:k])
            samples -= k

    def take_into(self, out: npt.NDArray[np.int16], pending: int = 0) -> None:
        """The far frame that goes with this microphone frame (silence when it is not there
        yet). ``pending``: frames by which the far end is rightly ahead: microphone frames
        already captured behind this one (the capture side is late by that much; each takes
        its far frame in turn) and frames put but not played yet (still in the playback ring):
        not a backlog to drop. Dropping them moved the far end 20 ms against its echo just as
        the linear filter had taken over (test_echo_app beside a CPU hog: 0 dB removed after
        the hand-over)."""
        ring = self._ring
        n = len(out)
        puts = self._puts
        if puts != self._puts_seen:
            self._puts_seen = puts
            self._idle_takes = 0
        else:
            self._idle_takes += 1
        if self._owed and ring.available > 0:
            k = ring.discard(min(self._owed, ring.available))
            self._owed -= k
            self.skipped += k
        excess = ring.available - (MAX_BACKLOG_FRAMES + pending) * self.frame_samples
        if excess > 0:  # the far end must stay ahead of its echo: never let it queue up
            dropped = ring.discard(excess)
            self.dropped += dropped
            self._late = max(0, self._late - dropped // self.frame_samples)
        if ring.available >= n:
            ring.read_into(out)
            return
        out.fill(0)
        if self._idle_takes >= MAX_OWED_FRAMES:  # nothing is being played (paused): no debt
            self._owed = 0
            return
        self.starved += 1  # the playback side is running, this frame is only late
        if self._late < MAX_LATE_FRAMES:
            self._late += 1  # the far end waits one frame more from now on: jitter room
        else:  # no more room: skip the late frame when it comes, the far end stays ahead
            self._owed = min(self._owed + n, MAX_OWED_FRAMES * self.frame_samples)


HANDOVER_DB: Final = 28.0  # the linear filter takes over once it removes this much echo ...
HANDOVER_BLOCKS: Final = 25  # ... for this many blocks in a row (250 ms)
HANDBACK_DB: Final = 20.0  # and gives the microphone back to AEC3 below this (the path changed) ...
HANDBACK_BLOCKS: Final = 100  # ... for this many blocks in a row (1 s)


_latency_cache: dict[int, int] = {}


def aec3_latency(sample_rate: int) -> int:
    """Samples by which AEC3 delays the microphone (its band-split filters: 430 at 48 kHz),
    measured once per rate on a noise burst, so the linear filter's output can be delayed to
    match and the two can be switched between without a jump in time."""
    if sample_rate not in _latency_cache:
        from pywebrtc_audio import EchoCanceller as _Aec3

        aec = _Aec3(sample_rate=sample_rate, num_channels=1)
        frame = sample_rate // 50
        # white-ish noise from a multiplicative hash (numpy.random is not in the bundle)
        hashed = np.arange(25 * frame, dtype=np.uint64) * 2654435761 % 2**32
        mic = ((hashed >> 16).astype(np.int32) - 32768).astype(np.int16) // 8
        noise = mic.astype(np.float64)
        silent = np.zeros(frame, dtype=np.int16)
        out = np.concatenate(
            [aec.process(mic[i : i + frame], silent) for i in range(0, len(mic), frame)]
        ).astype(np.float64)
        span = slice(10 * frame, 25 * frame)
        most = frame
        scores = [float(out[span] @ noise[span.start - d : span.stop - d]) for d in range(most)]
        _latency_cache[sample_rate] = int(np.argmax(scores))
    return _latency_cache[sample_rate]


class EchoCanceller:
    """AEC3 and a linear Kalman canceller side by side at 48 kHz, mono, int16 frames (a multiple
    of 10 ms). The output is AEC3's until the linear filter removes :data:`HANDOVER_DB` of echo,
    then the linear filter's (the near end intact in double talk), back to AEC3 when its estimate
    stays below :data:`HANDBACK_DB` for a second (the echo path changed). The linear output is
    delayed by AEC3's latency, so the two line up sample for sample (the microphone's latency does
    not change at a hand-over); a switch crossfades over one frame."""

    name = "webrtc-aec3+kalman"

    def __init__(self, sample_rate: int = 48_000) -> None:
        from pywebrtc_audio import EchoCanceller as _Aec3

        self._latency = aec3_latency(sample_rate)  # (its own AEC3, before this one exists)
        self._aec = _Aec3(sample_rate=sample_rate, num_channels=1)
        self._block = sample_rate // 100
        self.linear = LinearCanceller(block=self._block)
        self.frames = 0
        self.linear_active = False  # converged: the linear filter has the microphone
        self.handovers = 0  # converged hand-overs, either way
        self._good = 0
        self._bad = 0
        self._near = np.zeros(0)
        self._far = np.zeros(0)
        self._mixed = np.zeros(0)  # the output before it becomes int16
        self._fade = np.zeros(0)
        self._line = np.zeros(0)  # the linear output's delay line

    def _buffers(self, n: int) -> None:
        if len(self._near) != n:
            self._near = np.zeros(n)
            self._far = np.zeros(n)
            self._mixed = np.zeros(n)
            self._fade = np.linspace(0.0, 1.0, n)
            self._line = np.zeros(self._latency + n)

    def process(
        self, near: npt.NDArray[np.int16], far: npt.NDArray[np.int16]
    ) -> npt.NDArray[np.int16]:
        """The near-end frame with the far end's echo removed (a new array)."""
        self.frames += 1
        n = len(near)
        self._buffers(n)
        aec3: npt.NDArray[np.int16] = self._aec.process(near, far)
        np.copyto(self._near, near)
        np.copyto(self._far, far)
        b = self._block
        lin = self.linear
        line = self._line
        line[:-n] = line[n:]  # shift the delay line; the new frame lands at its end ...
        newest = line[self._latency :]
        measured = lin.measured_blocks
        for i in range(0, n - b + 1, b):
            lin.process(self._near[i : i + b], self._far[i : i + b], newest[i : i + b])
        delayed = line[:n]  # ... and leaves it AEC3's latency later
        erle = lin.erle_db
        was = self.linear_active
        if not was:
            # Only blocks that measured the estimate count towards the hand-over: a block held
            # out (double talk, or a path the output no longer matches) leaves it as it was,
            # possibly stale, and counting it once handed over on 28.2 dB estimated while
            # 0.8 dB was removed. Held blocks neither count nor reset.
            fresh = lin.measured_blocks - measured
            if fresh:
                self._good = self._good + fresh if erle >= HANDOVER_DB else 0
            if self._good >= HANDOVER_BLOCKS:
                self.linear_active = True
                self.handovers += 1
        else:
            self._bad = self._bad + n // b if erle < HANDBACK_DB else 0
            if self._bad >= HANDBACK_BLOCKS:
                self.linear_active = False
                self.handovers += 1
                self._good = self._bad = 0
        if self.linear_active == was and not was:
            return aec3
        mixed = self._mixed
        if self.linear_active != was:  # a hand-over: crossfade over this frame
            fade = self._fade if self.linear_active else self._fade[::-1]
            np.subtract(delayed, aec3, out=mixed)
            np.multiply(mixed, fade, out=mixed)
            np.add(mixed, aec3, out=mixed)
        else:
            np.copyto(mixed, delayed)
        np.round(mixed, out=mixed)
        np.clip(mixed, -32768, 32767, out=mixed)
        out: npt.NDArray[np.int16] = mixed.astype(np.int16)  # the one array handed back
        return out

    def reset(self) -> None:
        self._aec.reset()
        self.linear = LinearCanceller(block=self._block)
        self.linear_active = False
        self._good = self._bad = 0
        self._line.fill(0.0)
