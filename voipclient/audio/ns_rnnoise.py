"""RNNoise noise suppression (xiph/rnnoise) through ctypes: 48 kHz, 480-sample blocks.

The library is the ``librnnoise`` that the ``pyrnnoise`` wheel bundles (model weights compiled in).
We load that shared object directly and never import the ``pyrnnoise`` package: its ``__init__``
pulls audiolab, av, matplotlib and tqdm, which the client does not need. A system librnnoise
(``ctypes.util.find_library("rnnoise")``) is used when there is one. API (rnnoise.h):
``DenoiseState *rnnoise_create(RNNModel *)``, ``void rnnoise_destroy(DenoiseState *)``,
``float rnnoise_process_frame(DenoiseState *, float *out, const float *in)`` — 480 float samples
at int16 scale in and out (in place is allowed), returns the block's voice probability.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import sys
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

BLOCK: Final = 480  # samples: 10 ms at 48 kHz, fixed by the library

_LIB_NAMES: Final = {"darwin": "librnnoise.dylib", "win32": "rnnoise.dll"}


def _find_library() -> str:
    spec = importlib.util.find_spec("pyrnnoise")  # finds the package without running __init__
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / _LIB_NAMES.get(sys.platform, "librnnoise.so")
            if path.exists():
                return str(path)
    system = ctypes.util.find_library("rnnoise")
    if system:
        return system
    raise ImportError("librnnoise not found (neither the pyrnnoise wheel nor a system library)")


_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib  # noqa: PLW0603 - one CDLL per process, loaded on first use
    if _lib is None:
        lib = ctypes.CDLL(_find_library())
        lib.rnnoise_create.argtypes = [ctypes.c_void_p]
        lib.rnnoise_create.restype = ctypes.c_void_p
        lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
        lib.rnnoise_destroy.restype = None
        lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.rnnoise_process_frame.restype = ctypes.c_float
        lib.rnnoise_get_frame_size.restype = ctypes.c_int
        if lib.rnnoise_get_frame_size() != BLOCK:
            raise OSError("librnnoise has an unexpected frame size")
        _lib = lib
    return _lib


class RnnoiseSuppressor:
    """One RNNoise state. Output lags input by 480 samples (10 ms, the library's window)."""

    name = "rnnoise"

    def __init__(self) -> None:
        self._lib = _load()
        self._state: int | None = self._lib.rnnoise_create(None)
        if not self._state:
            raise OSError("rnnoise_create failed")
        self._process = self._lib.rnnoise_process_frame

    def process(self, x: npt.NDArray[np.float32]) -> float:
        if x.dtype != np.float32 or not x.flags.c_contiguous or x.shape[0] % BLOCK:
            raise ValueError("expected contiguous float32 of a multiple of 480 samples")
        if self._state is None:
            raise ValueError("RnnoiseSuppressor is closed")
        addr = x.ctypes.data
        prob = 0.0
        for offset in range(0, x.shape[0] * 4, BLOCK * 4):  # 4 bytes per float32
            prob = max(prob, self._process(self._state, addr + offset, addr + offset))
        return prob

    def close(self) -> None:
        if self._state is not None:
            self._lib.rnnoise_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


def create() -> RnnoiseSuppressor:
    return RnnoiseSuppressor()


__all__ = ["BLOCK", "RnnoiseSuppressor", "create"]
