"""The level meter of both audio paths, pure numpy: peak and RMS of one frame, in dBFS.

The capture processor meters the raw microphone frame (float32 at int16 scale: full scale
32768) and the mixer its limited output (float32, full scale 1.0); each publishes the result as
one :class:`Level` tuple, a latest-value slot (one reference store per frame) that a UI thread
may read at any time. One function serves both, so the two meters cannot drift apart.

RMS is read per AES17: a full-scale sine reads 0 dBFS (RMS + 3.01 dB), like its peak. Digital
silence reads -inf for both.

Real-time: :func:`measure_level` runs once per frame on an audio worker thread and allocates no
array: ``|x|`` goes into the caller's preallocated ``scratch``; per call only a few Python floats
and the result tuple are made (benchmark: ~2 µs per 960-sample frame).
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["AES17_DB", "SILENT", "Level", "dbfs", "measure_level"]

#: 3.01 dB: added to an RMS reading so that a full-scale sine's RMS reads 0 dBFS (AES17).
AES17_DB: Final = 20 * math.log10(math.sqrt(2))


class Level(NamedTuple):
    """Level of one frame, in dBFS (-inf for digital silence)."""

    peak_dbfs: float
    rms_dbfs: float


SILENT: Final = Level(-math.inf, -math.inf)


def dbfs(amplitude: float) -> float:
    """Amplitude relative to full scale 1.0 → dBFS (-inf for 0)."""
    return 20 * math.log10(amplitude) if amplitude > 0 else -math.inf


def measure_level(
    x: npt.NDArray[np.float32],
    scratch: npt.NDArray[np.float32],
    full_scale: float = 1.0,
) -> Level:
    """Peak and AES17 RMS of the float32 frame ``x`` whose full scale is ``full_scale``.

    ``scratch``: a preallocated float32 array of ``x``'s shape (overwritten). Allocates no array.
    """
    np.abs(x, out=scratch)
    peak = float(scratch.max())
    if not peak > 0:
        return SILENT
    # mean square relative to full scale: 10·log10 of it is the RMS in dBFS (no sqrt needed)
    mean_square = float(np.dot(x, x)) / (x.shape[0] * full_scale * full_scale)
    rms_dbfs = 10 * math.log10(mean_square) + AES17_DB if mean_square > 0 else -math.inf
    return Level(20 * math.log10(peak / full_scale), rms_dbfs)
