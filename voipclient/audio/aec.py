"""Acoustic echo cancellation for players on speakers: WebRTC's AEC3 through ``pywebrtc-audio``.

The far end is *exactly* what the mixer renders: the playback worker folds each output frame it
writes to the device down to mono ((L + R) / 2) and appends it to a :class:`FarEnd` mailbox; the
capture worker takes one far frame per microphone frame and hands both to AEC3, before any
other processing (the noise suppressor and AGC then see the echo-free signal). AEC3 estimates
the delay between the two on its own (the playback ring, the device and the room; up to about
half a second), so the two threads need not be in lockstep: the mailbox keeps the far end at
most :data:`MAX_BACKLOG_FRAMES` ahead (older far frames are dropped, never delayed: the far
frame must reach AEC3 before its echo does) and gives silence when the speakers played nothing.

Why AEC3 (figures from ``benchmarks/aec.py``; the comparison in docs/audio-dsp.md): on a
simulated room (RT60 250 ms, 40 ms delay) it removes 30-34 dB of echo after 2 s, where Speex's
MDF canceller (tried through ``pyaec``, with its residual suppressor) removed 12-23 dB; it runs
at 48 kHz (full band), costs ~0.15 ms per 20 ms frame, and comes with ``pywebrtc-audio``, which
the noise suppressor already uses. Its weakness is double talk: its suppressor lowers the near end
while the far end speaks (half-duplex-like, as in browsers), so talking over a loud echo costs
quality; headphones need none of this, hence the ``auto`` mode.

``auto`` (the default): on unless the output device's name says it is a headset or headphones
(:func:`wants_echo_cancellation`). The binding returns a new array per call: one allocation per
frame we cannot avoid (as with the WebRTC noise suppressor).
"""

from __future__ import annotations

import re
from typing import Final

import numpy as np
import numpy.typing as npt

from voipclient.audio.ring import SampleRing

__all__ = [
    "ECHO_MODES",
    "MAX_BACKLOG_FRAMES",
    "EchoCanceller",
    "FarEnd",
    "wants_echo_cancellation",
]

ECHO_MODES: Final = ("auto", "on", "off")
MAX_BACKLOG_FRAMES: Final = 4  # far frames waiting for the capture side, at most
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
    (``take_into``): one writer, one reader, no lock (a :class:`SampleRing`)."""

    def __init__(self, frame_samples: int) -> None:
        self.frame_samples = frame_samples
        self._ring = SampleRing(frame_samples * (MAX_BACKLOG_FRAMES + 4))
        self._sum = np.zeros(frame_samples, dtype=np.int32)
        self._mono = np.zeros(frame_samples, dtype=np.int16)
        self.dropped = 0  # far samples dropped as too old (the capture side fell behind)

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

    def take_into(self, out: npt.NDArray[np.int16]) -> None:
        """The next far frame (silence when nothing was played), newest ``MAX_BACKLOG_FRAMES``
        at most: older ones are dropped."""
        ring = self._ring
        excess = ring.available - MAX_BACKLOG_FRAMES * self.frame_samples
        if excess > 0:
            self.dropped += ring.discard(excess)
        if ring.available >= len(out):
            ring.read_into(out)
        else:
            out.fill(0)


class EchoCanceller:
    """AEC3 at 48 kHz, mono, on int16 frames (a multiple of 10 ms)."""

    name = "webrtc-aec3"

    def __init__(self, sample_rate: int = 48_000) -> None:
        from pywebrtc_audio import EchoCanceller as _Aec3

        self._aec = _Aec3(sample_rate=sample_rate, num_channels=1)
        self.frames = 0

    def process(
        self, near: npt.NDArray[np.int16], far: npt.NDArray[np.int16]
    ) -> npt.NDArray[np.int16]:
        """The near-end frame with the far end's echo removed (a new array)."""
        self.frames += 1
        out: npt.NDArray[np.int16] = self._aec.process(near, far)
        return out

    def reset(self) -> None:
        self._aec.reset()
