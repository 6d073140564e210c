"""How much a recording sounds like its source, for tests (not a quality score: see
benchmarks/voice_quality.py for PESQ/STOI)."""

from __future__ import annotations

import numpy as np

RATE = 48_000


def similarity(source: np.ndarray, recording: np.ndarray) -> tuple[float, float]:
    """Peak normalised cross-correlation of ``recording`` with ``source`` (FFT), and the lag
    (s) at which the source appears in the recording."""
    src = source.astype(np.float64)
    got = recording.astype(np.float64)
    n = len(src) + len(got)
    corr = np.fft.irfft(np.fft.rfft(got, n) * np.conj(np.fft.rfft(src, n)), n)[: len(got)]
    lag = int(np.argmax(corr))
    seg = got[lag : lag + len(src)]
    ref = src[: len(seg)]
    score = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-9))
    return score, lag / RATE


def _correlate_valid(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``np.correlate(b, a, "valid")`` through the FFT: O(n log n) instead of one dot product per
    lag (30,721 lags of 24,000 samples per segment took 0.2 s each, and far longer beside a CPU
    hog, where two bot tests timed out in it)."""
    size = 1 << (len(b) + len(a) - 2).bit_length()  # >= len(b) + len(a) - 1: no wrap-around
    full = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    return full[: len(b) - len(a) + 1]


def segment_similarity(
    src: np.ndarray, got: np.ndarray, *, start: int = 0, seg: int = RATE // 2, slack: int = 15360
) -> float:
    """Mean over ``seg``-sample source segments of the best normalised correlation with the
    output near the same place (``start`` = where the source begins in ``got``; a jitter buffer
    may shift later segments by up to ``slack`` samples). Silent segments are skipped."""
    src = src.astype(np.float64)
    got = got.astype(np.float64)
    scores = []
    for pos in range(0, len(src) - seg, seg):
        a = src[pos : pos + seg]
        if np.linalg.norm(a) < 1e-3 * seg:
            continue
        lo = max(0, start + pos - slack)
        b = got[lo : start + pos + seg + slack]
        if len(b) < seg:
            scores.append(0.0)
            continue
        lag = int(np.argmax(_correlate_valid(b, a)))
        w = b[lag : lag + seg]
        scores.append(float(np.dot(w, a) / (np.linalg.norm(w) * np.linalg.norm(a) + 1e-9)))
    return float(np.mean(scores)) if scores else 0.0
