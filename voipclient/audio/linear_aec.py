"""A linear echo canceller that keeps the near end intact in double talk.

A partitioned-block frequency-domain Kalman filter (Enzner & Vary, "Frequency-domain adaptive
Kalman filter for acoustic echo control in hands-free telephones", Signal Processing 2006; the
partitioned form of Kuech et al., 2014) estimates the echo path (the room, the speakers, the
playback and capture buffers) as ``partitions`` blocks of ``block`` samples (200 ms at 48 kHz)
and subtracts the far end filtered by it from the microphone. Its step size per frequency bin
comes from the filter's own uncertainty against the error power: quick while the estimate is
poor, slow once it is good.

Double talk is handled by two filters (the "two-path" structure of Speex's MDF): the Kalman
filter adapts on every block, and the output comes from a *foreground* copy of it, taken only
when the adapting filter's error has been lower for a while (by :data:`COPY_MARGIN`). Talking
over the far end disturbs the adapting filter, never the output; a changed echo path is learnt
again by the adapting filter and copied as soon as it does better, and an output louder than the
microphone for 100 ms marks the estimate as lost at once. Nothing is suppressed: the output is
the microphone minus the estimated echo, which is why the near end stays natural (PESQ-WB 3.8-4.5
in double talk on the simulated room of ``benchmarks/aec.py``, against 1.1-1.2 with AEC3, whose
suppressor lowers the near end while the far end talks).

:attr:`LinearCanceller.erle_db` is the output filter's running estimate of the echo it removes
(power-weighted, measured while the far end talks and the near end does not: a block whose error
is more than :data:`DOUBLE_TALK_RATIO` times the expected residual is double talk and held out
for :data:`DOUBLE_TALK_HOLD_BLOCKS`). :class:`voipclient.audio.aec.EchoCanceller` hands the
microphone over to this filter once that estimate is good, and back to AEC3 when it is not.

Pure numpy on float64 blocks in int16 units, one block per call; ~0.15 ms per 10 ms block. The
FFTs allocate their results (numpy has no in-place FFT): a few small arrays per block.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "COPY_MARGIN",
    "DOUBLE_TALK_HOLD_BLOCKS",
    "DOUBLE_TALK_MAX_BLOCKS",
    "DOUBLE_TALK_RATIO",
    "LinearCanceller",
]

F64 = npt.NDArray[np.float64]

DOUBLE_TALK_RATIO: Final = 4.0  # error power over expected residual above which the near end talks
DOUBLE_TALK_HOLD_BLOCKS: Final = 30  # blocks held out of the estimate after double talk (300 ms)
#: A hold this long without a break (5 s) is measured again: an echo path the output no longer
#: matches also looks like double talk, and must not keep a good estimate frozen.
DOUBLE_TALK_MAX_BLOCKS: Final = 500
_DTD_ARMED_LEAK: Final = 0.1  # the detector is trusted once the filter removes 10 dB
_A2: Final = 0.99**2  # Kalman state transition (squared): how fast the path may change
_PROCESS_NOISE: Final = 1e-5  # keeps the filter able to track
_NOISE_FLOOR: Final = 1e-4  # measurement noise floor per bin (silence must not collapse the state)
_P0: Final = 0.01  # initial state uncertainty
_MIN_SHRINK: Final = 0.0
_SCALE: Final = 1.0 / 32768.0
COPY_MARGIN: Final = 0.8  # the background is copied once its error is 1 dB below the output's
_LEAK_SMOOTHING: Final = 0.05  # the residual and echo powers behind the leak, over ~20 blocks
_COPY_SMOOTHING: Final = 0.04  # over about 25 blocks (250 ms)
_ADDS_FOR_PATH_CHANGE: Final = 10  # 100 ms of the output louder than the microphone


class LinearCanceller:
    """Echo path estimate of ``partitions`` x ``block`` samples; :meth:`process` one block.

    Two filters (the "two-path" structure of Speex's MDF and Ochiai et al. 1977): the
    *background* Kalman filter adapts on every block; the *foreground* filter, whose error is the
    output, is a copy of it taken only when the background's error has been clearly lower (by
    :data:`COPY_MARGIN`) for a while. Talking over the far end can disturb the background but
    never the output; a changed echo path (the laptop moved) is re-learnt by the background and
    copied over as soon as it does better."""

    def __init__(self, block: int = 480, partitions: int = 20) -> None:
        self.block = block
        self.partitions = partitions
        bins = block + 1
        self._w = np.zeros((partitions, bins), dtype=np.complex128)  # background, per partition
        self._fg = np.zeros((partitions, bins), dtype=np.complex128)  # foreground (the output's)
        self._x = np.zeros((partitions, bins), dtype=np.complex128)  # far spectra, newest first
        self._p = np.full((partitions, bins), _P0)  # background state uncertainty
        self._frame = np.zeros(2 * block)  # the last two far blocks (overlap-save)
        self._padded = np.zeros(2 * block)  # [0 ... 0, error] for the gradient
        self._window = np.hanning(block)
        self._fade = np.linspace(0.0, 1.0, block)
        self._next_constrained = 0
        self._e_bg = 0.0  # smoothed error powers of the two filters
        self._e_fg = 0.0
        self._adds = 0  # blocks in a row in which the foreground added energy
        self.leak = 1.0  # the foreground's residual over echo power, far end alone (smoothed)
        self._leak_ff = 0.0
        self._leak_yy = 0.0
        self.hold = 0  # blocks left flagged as double talk
        self._held_run = 0  # blocks in a row held out
        self.double_talk_blocks = 0
        self.measured_blocks = 0  # blocks that updated the estimate (far end on, no hold)
        self.copies = 0  # background -> foreground
        self.path_changes = 0
        self.blocks = 0

    @property
    def erle_db(self) -> float:
        """Echo removed by the output filter (dB), as it measures it while the far end talks
        alone; 0 when it has not converged or the echo path changed under it."""
        return float(-10.0 * np.log10(max(self.leak, 1e-9)))

    def process(self, near: F64, far: F64, out: F64) -> None:
        """Cancel ``far``'s echo from ``near`` (one block each, int16 units) into ``out``."""
        b = self.block
        self.blocks += 1
        frame = self._frame
        frame[:b] = frame[b:]
        np.multiply(far, _SCALE, out=frame[b:])
        x = self._x
        x[1:] = x[:-1]
        x[0] = np.fft.rfft(frame)
        d = near * _SCALE
        y_bg = np.fft.irfft(np.einsum("kf,kf->f", self._w, x), 2 * b)[b:]
        y_fg = np.fft.irfft(np.einsum("kf,kf->f", self._fg, x), 2 * b)[b:]
        e_bg = d - y_bg
        e_fg = d - y_fg
        s_dd = float(d @ d)
        s_yy = float(y_fg @ y_fg)
        s_ff = float(e_fg @ e_fg)
        s_bb = float(e_bg @ e_bg)
        floor = b * 1e-7  # about -80 dBFS: below it the far end is silent
        far_active = float(frame[b:] @ frame[b:]) > floor

        if far_active:
            self._e_bg += _COPY_SMOOTHING * (s_bb - self._e_bg)
            self._e_fg += _COPY_SMOOTHING * (s_ff - self._e_fg)
            if self._e_bg < COPY_MARGIN * self._e_fg:
                self._fg[:] = self._w
                self.copies += 1
                self._e_fg = self._e_bg
                e_fg = self._fade * e_bg + (1.0 - self._fade) * e_fg  # no click at the switch
                s_ff = s_bb
            # the output filter adds energy instead of removing it: the path changed under it
            self._adds = self._adds + 1 if s_ff > s_dd + floor else 0
            if self._adds >= _ADDS_FOR_PATH_CHANGE and self.leak < 0.5:
                self.leak = 1.0
                self._leak_ff = self._leak_yy
                self.path_changes += 1
        np.multiply(e_fg, 32768.0, out=out)

        if (
            s_yy > floor
            and self.leak < _DTD_ARMED_LEAK
            and s_ff > DOUBLE_TALK_RATIO * (self.leak * s_yy + floor)
        ):
            self.hold = DOUBLE_TALK_HOLD_BLOCKS
        held = self.hold > 0
        if held:
            self.hold -= 1
            self.double_talk_blocks += 1
            self._held_run += 1
        else:
            self._held_run = 0
        if s_yy > floor and (not held or self._held_run > DOUBLE_TALK_MAX_BLOCKS):
            # power-weighted: quiet blocks (noise over echo) do not dominate
            self._leak_ff += _LEAK_SMOOTHING * (s_ff - self._leak_ff)
            self._leak_yy += _LEAK_SMOOTHING * (s_yy - self._leak_yy)
            self.leak = min(1.0, self._leak_ff / self._leak_yy)
            self.measured_blocks += 1
        self._adapt(e_bg)

    def _adapt(self, e: F64) -> None:
        b = self.block
        padded = self._padded
        np.multiply(e, self._window, out=padded[b:])
        err = np.fft.rfft(padded)
        x, p, w = self._x, self._p, self._w
        x2 = np.einsum("kf,kf->f", x.real, x.real) + np.einsum("kf,kf->f", x.imag, x.imag)
        noise = np.maximum((err.real**2 + err.imag**2) / self.partitions, _NOISE_FLOOR)
        gain = p / (0.5 * p * x2 + noise + 1e-10)
        p *= _A2 * np.maximum(1.0 - 0.5 * gain * x2, _MIN_SHRINK)
        p += (1.0 - _A2) * (w.real**2 + w.imag**2) + _PROCESS_NOISE
        w += gain * np.conj(x) * err
        # keep one partition a linear (not circular) convolution per block, in turn
        k = self._next_constrained
        taps = np.fft.irfft(w[k], 2 * b)
        taps[b:] = 0.0
        w[k] = np.fft.rfft(taps)
        self._next_constrained = (k + 1) % self.partitions
