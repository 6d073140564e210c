"""Speex DSP preprocessor noise suppression through ``speexdsp-ns`` bindings, 48 kHz, 10 ms.

The binding (module ``speexdsp_ns``, shipped by ``speexdsp-ns-vulcanlabs`` wheels with
libspeexdsp inside, or built from ``speexdsp-ns`` against libspeexdsp-dev + swig) takes and
returns int16 bytes and exposes no VAD, so the processor falls back to its energy VAD.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt
from speexdsp_ns import NoiseSuppression

BLOCK: Final = 480  # samples: 10 ms at 48 kHz


class SpeexSuppressor:
    name = "speex"

    def __init__(self) -> None:
        self._ns: NoiseSuppression | None = NoiseSuppression.create(BLOCK, 48_000)
        self._i16 = np.zeros(BLOCK, dtype=np.int16)

    def process(self, x: npt.NDArray[np.float32]) -> float:
        if self._ns is None:
            raise ValueError("SpeexSuppressor is closed")
        for start in range(0, x.shape[0], BLOCK):
            block = x[start : start + BLOCK]
            np.clip(block, -32768.0, 32767.0, out=block)
            np.copyto(self._i16, block, casting="unsafe")
            out = self._ns.process(self._i16.tobytes())
            np.copyto(block, np.frombuffer(out, dtype=np.int16), casting="safe")
        return math.nan

    def close(self) -> None:
        self._ns = None


def create() -> SpeexSuppressor:
    return SpeexSuppressor()


__all__ = ["BLOCK", "SpeexSuppressor", "create"]
