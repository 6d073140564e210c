"""The Opus wrapper against the real libopus: round trip, CBR, FEC recovery, concealment."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from voipclient.audio.opus import OpusDecoder, OpusEncoder, frame_samples

RATE = 48_000
DATA = Path(__file__).parents[2] / "data"


def speech() -> np.ndarray:
    """A real speech sample (48 kHz mono, 16-bit), shipped in tests/data."""
    with wave.open(str(DATA / "speech-0-48k.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


@pytest.mark.parametrize("frame_ms", [10, 20])
def test_round_trip_is_faithful_and_cbr(frame_ms: int) -> None:
    enc, dec = OpusEncoder(frame_ms=frame_ms, bitrate=32_000), OpusDecoder(frame_ms=frame_ms)
    n = frame_samples(frame_ms)
    src = speech()[: 3 * RATE]
    packets = [enc.encode(src[i : i + n]) for i in range(0, len(src) - n + 1, n)]
    assert len({len(p) for p in packets[5:]}) == 1  # CBR: one packet size
    assert len(packets[10]) == 32_000 * frame_ms // 1000 // 8  # 80 bytes at 20 ms
    out = np.concatenate([dec.decode(p) for p in packets]).astype(np.float64)
    lag = enc.lookahead_samples
    assert lag == 312  # 6.5 ms in VOIP mode
    corr = np.corrcoef(src[: len(out) - lag].astype(np.float64), out[lag:])[0, 1]
    assert corr > 0.8


def test_fec_recovers_lost_frames_better_than_concealment() -> None:
    enc = OpusEncoder()
    enc.set_loss_percent(20)  # libopus emits FEC data only with a non-zero loss hint
    n = enc.frame_samples
    src = speech()[: 6 * RATE]
    packets = [enc.encode(src[i : i + n]) for i in range(0, len(src) - n + 1, n)]
    ref = np.concatenate([OpusDecoder().decode(p) for p in packets]).astype(np.float64)
    fec_err, plc_err = [], []
    for lost in range(20, len(packets) - 2, 10):
        fec_dec, plc_dec = OpusDecoder(), OpusDecoder()
        for p in packets[:lost]:
            fec_dec.decode(p)
            plc_dec.decode(p)
        recovered, concealed = fec_dec.decode_fec(packets[lost + 1]), plc_dec.conceal()
        assert len(recovered) == len(concealed) == n
        target = ref[lost * n : (lost + 1) * n]
        fec_err.append(np.mean((recovered - target) ** 2))
        plc_err.append(np.mean((concealed - target) ** 2))
    assert np.mean(fec_err) < 0.8 * np.mean(plc_err)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="frame size"):
        OpusEncoder(frame_ms=15)
    with pytest.raises(ValueError, match="bitrate"):
        OpusEncoder(bitrate=8_000)
    with pytest.raises(ValueError, match="int16"):
        OpusEncoder().encode(np.zeros(100, dtype=np.int16))
