"""WebRTC noise suppression (the APM's NS, as in Chrome) through ``pywebrtc-audio``, at 48 kHz.

``pywebrtc-audio`` (Apache-2.0, ~1 MB wheel, numpy only) runs the APM's NoiseSuppressor at the
native 48 kHz: full band, no resampling. (``webrtc-noise-gain``, the other binding, takes 16 kHz
only and would cut everything above 8 kHz; see docs/audio-dsp.md.) Its float32 API is full scale
1.0 and returns a new array per call (an allocation inside the binding we cannot avoid).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from pywebrtc_audio import NoiseSuppressor as _WebrtcNs

LEVEL: Final = 2  # suppression level 0-3 = 6, 12, 18, 21 dB: 18 dB, Chrome's "high"
_TO_UNIT: Final = np.float32(1 / 32768)
_TO_INT16: Final = np.float32(32768)


class WebrtcSuppressor:
    name = "webrtc"

    def __init__(self, level: int = LEVEL) -> None:
        self._ns: _WebrtcNs | None = _WebrtcNs(sample_rate=48_000, num_channels=1, level=level)
        self._scratch = np.zeros(960, dtype=np.float32)

    def process(self, x: npt.NDArray[np.float32]) -> float:
        if self._ns is None:
            raise ValueError("WebrtcSuppressor is closed")
        n = x.shape[0]
        if self._scratch.shape[0] != n:
            self._scratch = np.zeros(n, dtype=np.float32)
        np.multiply(x, _TO_UNIT, out=self._scratch)
        y = self._ns.process(self._scratch)
        np.multiply(y, _TO_INT16, out=x)
        return float(self._ns.speech_probability)

    def close(self) -> None:
        self._ns = None


def create() -> WebrtcSuppressor:
    return WebrtcSuppressor()


__all__ = ["LEVEL", "WebrtcSuppressor", "create"]
