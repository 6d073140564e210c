"""The one module that talks to libopus (through opuslib-next).

Why opuslib-next: it is a maintained fork of opuslib 3.0.1 (2018) that fixes the ``inband_fec``
setter (a TypeError in opuslib) and the ``dtx`` setter (which sent the getter). What it still gets
wrong is wrapped here: packet-loss concealment needs the low-level call with a NULL packet
(``Decoder.decode`` refuses ``None``).

Facts the callers rely on (libopus 1.3, measured in ENVIRONMENT.md): 48 kHz mono; 20 ms frames
(960 samples) by default, 10 ms (480) in low-latency mode; lookahead 6.5 ms in VOIP mode; no FEC
data is emitted while the packet-loss hint is 0, so the hint must follow measured loss. CBR by
default: VBR packet sizes leak speech content through an encrypted channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt
import opuslib_next
from opuslib_next.api import decoder as _decoder_api

SAMPLE_RATE: Final = 48_000  # Hz
CHANNELS: Final = 1
FRAME_MS_CHOICES: Final = (10, 20)
MIN_BITRATE: Final = 16_000  # bits/s
MIN_COPY_BITRATE: Final = 6_000  # bits/s: compact redundant copies may go this low
MAX_BITRATE: Final = 128_000
MAX_PACKET: Final = 1275  # bytes: the largest Opus packet (RFC 6716)
BANDWIDTH_WIDEBAND: Final = 1103  # OPUS_BANDWIDTH_WIDEBAND (opus_defines.h)
BANDWIDTH_FULLBAND: Final = 1105  # OPUS_BANDWIDTH_FULLBAND

Pcm = npt.NDArray[np.int16]


def libopus_version() -> str:
    """The loaded libopus, as it names itself (``"libopus 1.3.1"``)."""
    from opuslib_next.api.info import get_version_string

    raw = get_version_string()
    return raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)


def frame_samples(frame_ms: int) -> int:
    """Samples per channel in one frame of ``frame_ms`` milliseconds at 48 kHz."""
    if frame_ms not in FRAME_MS_CHOICES:
        raise ValueError(f"frame size must be one of {FRAME_MS_CHOICES} ms, not {frame_ms}")
    return SAMPLE_RATE * frame_ms // 1000


class OpusEncoder:
    """A 48 kHz mono VOIP encoder: CBR, in-band FEC enabled, loss hint 0 until told otherwise."""

    def __init__(
        self,
        *,
        frame_ms: int = 20,
        bitrate: int = 32_000,
        complexity: int = 9,
        floor: int = MIN_BITRATE,
    ) -> None:
        self.frame_samples = frame_samples(frame_ms)
        self._floor = max(MIN_COPY_BITRATE, floor)
        self._enc = opuslib_next.Encoder(SAMPLE_RATE, CHANNELS, opuslib_next.APPLICATION_VOIP)
        self._enc.vbr = 0  # CBR: constant packet sizes
        self._enc.inband_fec = 1
        self._enc.dtx = 0  # DTX off while transmitting: gaps would read as loss
        self._enc.complexity = complexity
        self._enc.packet_loss_perc = 0
        self.set_bitrate(bitrate)

    @property
    def lookahead_samples(self) -> int:
        """The encoder's algorithmic delay in samples (312 = 6.5 ms in VOIP mode)."""
        return int(self._enc.lookahead)

    def set_bitrate(self, bitrate: int) -> None:
        floor = self._floor
        if not floor <= bitrate <= MAX_BITRATE:
            raise ValueError(f"bitrate must be {floor}..{MAX_BITRATE} b/s, not {bitrate}")
        self._enc.bitrate = bitrate

    def set_wideband(self, on: bool) -> None:
        """Limit the coded audio band to wideband (0-8 kHz) or let it go to fullband (20 kHz).

        While compact redundancy is on, the primary matches its copies' band: a frame rebuilt
        from a 16 kb/s (wideband) copy then does not switch the decoder's band, which measured
        0.3 PESQ-WB better at 10 % loss (docs/audio-dsp.md, issue 15)."""
        self._enc.max_bandwidth = BANDWIDTH_WIDEBAND if on else BANDWIDTH_FULLBAND

    def set_loss_percent(self, percent: int) -> None:
        """The FEC hint: expected loss on the path (0..100). 0 disables in-band FEC data."""
        self._enc.packet_loss_perc = max(0, min(100, percent))

    def encode(self, pcm: Pcm) -> bytes:
        """One frame of int16 samples → one Opus packet."""
        if pcm.shape != (self.frame_samples,) or pcm.dtype != np.int16:
            raise ValueError(f"expected {self.frame_samples} int16 samples, got {pcm.shape}")
        return bytes(self._enc.encode(pcm.tobytes(), self.frame_samples))


class OpusDecoder:
    """A 48 kHz mono decoder with FEC recovery and concealment."""

    def __init__(self, *, frame_ms: int = 20) -> None:
        self.frame_samples = frame_samples(frame_ms)
        self._dec = opuslib_next.Decoder(SAMPLE_RATE, CHANNELS)

    def decode(self, packet: bytes) -> Pcm:
        """Decode one packet (returns as many samples as it carries)."""
        return np.frombuffer(self._dec.decode(packet, self.frame_samples), dtype=np.int16)

    def decode_fec(self, next_packet: bytes) -> Pcm:
        """Recover the frame *before* ``next_packet`` from its in-band FEC data (or conceal it
        when the packet carries none)."""
        out = self._dec.decode(next_packet, self.frame_samples, decode_fec=True)
        return np.frombuffer(out, dtype=np.int16)

    def conceal(self) -> Pcm:
        """One frame of packet-loss concealment (libopus's PLC)."""
        out = _decoder_api.decode(
            self._dec.decoder_state, None, 0, self.frame_samples, False, CHANNELS
        )
        return np.frombuffer(out, dtype=np.int16)


def copy_encoder_factory(frame_ms: int = 20) -> Callable[[int], OpusEncoder]:
    """The second encoder of compact redundancy (``VoiceSender(copy_encoder=...)``): the same
    audio at a low bitrate, wideband, CBR, no FEC of its own."""

    def make(bitrate: int) -> OpusEncoder:
        enc = OpusEncoder(frame_ms=frame_ms, bitrate=bitrate, floor=MIN_COPY_BITRATE)
        enc.set_wideband(True)
        enc._enc.inband_fec = 0
        return enc

    return make
