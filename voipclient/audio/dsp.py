"""Capture processing for the microphone path, pure numpy: high-pass → noise suppression → VAD →
AGC → limiter, plus the input level meter (:mod:`voipclient.audio.meter`, the mixer's meter too).
See docs/audio-dsp.md for the choices and their figures.

Format: 48 kHz mono int16 frames of 960 samples (20 ms) or 480 (10 ms). The capture worker calls
:meth:`CaptureProcessor.process` once per frame from one thread; :meth:`CaptureProcessor.configure`
is called between frames by the same thread (the worker reads the settings slot each frame).
Internally samples are float32 at int16 scale (full scale = 32768), which is what RNNoise wants and
keeps every stage free of rescaling.

Real-time: every buffer is preallocated per frame size; the stages work in place with ``out=``
numpy ops. Per frame the only allocations are a few Python floats, the result object and whatever
a noise-suppression library allocates inside its own binding (webrtc returns a new array).

Noise suppressors are behind the :class:`NoiseSuppressor` protocol, one module per backend
(``ns_rnnoise``, ``ns_webrtc``, ``ns_speex``), imported lazily by :func:`open_backend` so that a
missing library costs nothing until it is selected.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from voipclient.audio.gain import apply_gain
from voipclient.audio.meter import SILENT, Level, measure_level

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "FRAME_SIZES",
    "NS_BLOCK",
    "SAMPLE_RATE",
    "AutomaticGainControl",
    "BackendUnavailable",
    "CaptureProcessor",
    "CaptureResult",
    "CaptureSettings",
    "EnergyVad",
    "HighPass",
    "Level",
    "Limiter",
    "NoiseSuppressor",
    "NsStatus",
    "available_backends",
    "design_highpass",
    "open_backend",
]

SAMPLE_RATE: Final = 48_000  # Hz
FRAME_SIZES: Final = (480, 960)  # samples: 10 ms and 20 ms
NS_BLOCK: Final = 480  # samples: every backend works on 10 ms blocks at 48 kHz
FULL_SCALE: Final = 32768.0  # int16 full scale in the float32 work buffer
HIGHPASS_HZ: Final = 80.0  # Hz, -3 dB: below the lowest male F0 (~85 Hz), above mains hum/rumble
_HP_BLOCK: Final = 96  # samples per sub-block of the vectorised IIR (benchmark: 48..240 all ok)
_TINY: Final = 1e-12  # power floor (full scale 1.0) so log10 never sees 0: -120 dBFS

# name -> (module, what to install). "off" has no module. The order is the UI's order.
BACKENDS: Final[dict[str, tuple[str, str]]] = {
    "off": ("", ""),
    "rnnoise": ("voipclient.audio.ns_rnnoise", "pip install pyrnnoise (bundles librnnoise)"),
    "webrtc": ("voipclient.audio.ns_webrtc", "pip install pywebrtc-audio"),
    "speex": ("voipclient.audio.ns_speex", "pip install speexdsp-ns-vulcanlabs"),
}
DEFAULT_BACKEND: Final = "webrtc"  # best PESQ gain per CPU µs: docs/audio-dsp.md


def _power_db(power: float) -> float:
    """Mean square (full scale 1.0) → dBFS, floored at -120."""
    return 10 * math.log10(power + _TINY)


# --------------------------------------------------------------------------------------------
# High-pass filter


def design_highpass(
    cutoff_hz: float = HIGHPASS_HZ, sample_rate: int = SAMPLE_RATE
) -> tuple[float, float, float, float, float]:
    """2nd-order Butterworth high-pass (bilinear transform, RBJ cookbook, Q = 1/√2).

    Returns ``(b0, b1, b2, a1, a2)`` normalised to a0 = 1; equal to
    ``scipy.signal.butter(2, cutoff_hz, "highpass", fs=sample_rate)``.
    """
    w0 = 2 * math.pi * cutoff_hz / sample_rate
    alpha = math.sin(w0) / (2 * (1 / math.sqrt(2)))
    cos_w0 = math.cos(w0)
    a0 = 1 + alpha
    b0 = (1 + cos_w0) / 2 / a0
    return (b0, -2 * b0, b0, -2 * cos_w0 / a0, (1 - alpha) / a0)


class HighPass:
    """A biquad run as block matrix products instead of a per-sample Python loop.

    The filter is the state-space system s[n+1] = A s[n] + B x[n], y[n] = C s[n] + D x[n]
    (transposed direct form II). For a sub-block of L samples the output is the zero-state part
    (a lower-triangular L x L Toeplitz matrix of the impulse response times x) plus the free
    response of the state at the block start (C A^j s0). The frame is reshaped to K x L, all
    zero-state parts are one matmul, and only the K state hand-overs (2 numbers each) run in
    Python. This is exact IIR filtering (not an FIR approximation): it matches scipy's sosfilt
    to float32 rounding, at ~1/10 of a pure-Python loop's cost and without scipy at run time.
    """

    def __init__(self, frame_size: int, cutoff_hz: float = HIGHPASS_HZ, block: int = _HP_BLOCK):
        if frame_size % block:
            raise ValueError(f"frame size {frame_size} is not a multiple of {block}")
        b0, b1, b2, a1, a2 = design_highpass(cutoff_hz)
        a = np.array([[-a1, 1.0], [-a2, 0.0]])
        b = np.array([b1 - a1 * b0, b2 - a2 * b0])
        c = np.array([1.0, 0.0])
        powers = [np.eye(2)]
        for _ in range(block):
            powers.append(powers[-1] @ a)
        # Impulse response h[0] = D, h[k] = C A^(k-1) B.
        h = np.array([b0] + [float(c @ powers[k - 1] @ b) for k in range(1, block)])
        idx = np.arange(block)
        lag = idx[:, None] - idx[None, :]
        t = np.where(lag >= 0, h[np.clip(lag, 0, None)], 0.0)  # T[j, i] = h[j - i]
        self._t_T = np.ascontiguousarray(t.T, dtype=np.float32)  # Y = X @ T^T
        # Free response: y[j] += (C A^j) s0  -> H is L x 2.
        self._h_T = np.ascontiguousarray(
            np.array([c @ powers[j] for j in range(block)]).T, dtype=np.float32
        )
        # Zero-state end state: s_L = sum_i A^(L-1-i) B x[i]  -> G is 2 x L.
        self._g_T = np.ascontiguousarray(
            np.array([powers[block - 1 - i] @ b for i in range(block)]), dtype=np.float32
        )
        al = powers[block]
        self._al = (float(al[0, 0]), float(al[0, 1]), float(al[1, 0]), float(al[1, 1]))
        k = frame_size // block
        self._k, self._block = k, block
        self._y = np.zeros((k, block), dtype=np.float32)
        self._e = np.zeros((k, 2), dtype=np.float32)
        self._s = np.zeros((k, 2), dtype=np.float32)
        self._free = np.zeros((k, block), dtype=np.float32)
        self._z1 = 0.0
        self._z2 = 0.0

    def reset(self) -> None:
        self._z1 = self._z2 = 0.0

    def process(self, x: npt.NDArray[np.float32]) -> None:
        """Filter one frame in place (float32, contiguous, the frame size given at creation)."""
        xb = x.reshape(self._k, self._block)
        np.matmul(xb, self._t_T, out=self._y)
        np.matmul(xb, self._g_T, out=self._e)
        a00, a01, a10, a11 = self._al
        z1, z2 = self._z1, self._z2
        s = self._s
        for k, (e1, e2) in enumerate(self._e.tolist()):
            s[k, 0] = z1
            s[k, 1] = z2
            z1, z2 = a00 * z1 + a01 * z2 + e1, a10 * z1 + a11 * z2 + e2
        self._z1, self._z2 = z1, z2
        np.matmul(s, self._h_T, out=self._free)
        np.add(self._y, self._free, out=xb)


# --------------------------------------------------------------------------------------------
# Noise suppression backends


class NoiseSuppressor(Protocol):
    """One noise-suppression library. One instance per stream, used from one thread."""

    name: str

    def process(self, x: npt.NDArray[np.float32]) -> float:
        """Suppress noise in place in an int16-scaled float32 frame (a multiple of 480 samples).

        Returns the library's speech probability for the frame in [0, 1] (the maximum over its
        10 ms blocks, so an onset is not missed), or NaN when the library has no VAD.
        """
        ...

    def close(self) -> None:
        """Free native state; the object is unusable afterwards."""
        ...


class BackendUnavailable(RuntimeError):
    """A noise-suppression backend's library is missing or failed to load."""

    def __init__(self, name: str, detail: str) -> None:
        hint = BACKENDS[name][1] if name in BACKENDS else ""
        super().__init__(
            f"noise suppression backend {name!r} is unavailable ({detail}); install: {hint}"
        )
        self.backend = name
        self.install_hint = hint


def open_backend(name: str) -> NoiseSuppressor:
    """Import the backend's module now (lazily) and create one suppressor.

    Raises ValueError for an unknown name, BackendUnavailable when its library is missing.
    """
    if name not in BACKENDS or name == "off":
        raise ValueError(f"unknown noise suppression backend {name!r}; known: {list(BACKENDS)}")
    module_name = BACKENDS[name][0]
    try:
        module = importlib.import_module(module_name)
        suppressor: NoiseSuppressor = module.create()
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(name, f"{type(exc).__name__}: {exc}") from exc
    return suppressor


def available_backends() -> list[str]:
    """Backends that load on this machine ("off" always), for the settings UI."""
    names = ["off"]
    for name in BACKENDS:
        if name == "off":
            continue
        try:
            open_backend(name).close()
        except BackendUnavailable:
            continue
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# Voice activity detection


class EnergyVad:
    """Fallback VAD when no backend gives a probability: frame energy against a noise floor.

    The floor follows minima: it falls at once to a quieter frame and rises slowly
    (:attr:`rise_db_per_s`), so speech pauses pull it down and a steady noise is learnt within a
    few seconds. The probability is a logistic of the frame's SNR over the floor (0.5 at
    :attr:`snr_mid_db`); frames below :attr:`abs_floor_dbfs` are never speech (a mic's own hiss).
    """

    rise_db_per_s = 3.0  # dB/s: noise floor rise while no quieter frame arrives
    snr_mid_db = 9.0  # dB over the floor where p = 0.5
    snr_slope_db = 2.0  # dB: logistic width (p = 0.73 at mid + 2 dB)
    abs_floor_dbfs = -62.0  # dBFS RMS: never speech below this

    def __init__(self) -> None:
        self.floor_db = math.nan  # dBFS mean-square; NaN until the first frame
        self.frame_db = -120.0

    def reset(self) -> None:
        self.floor_db = math.nan

    def update(self, x: npt.NDArray[np.float32]) -> float:
        """Speech probability of one (high-passed) int16-scaled frame."""
        n = x.shape[0]
        db = _power_db(float(np.dot(x, x)) / n / (FULL_SCALE * FULL_SCALE))
        self.frame_db = db
        floor = self.floor_db
        if math.isnan(floor) or db < floor:
            floor = db
        else:
            floor += min(db - floor, self.rise_db_per_s * n / SAMPLE_RATE)
        self.floor_db = floor
        if db < self.abs_floor_dbfs:
            return 0.0
        z = (db - floor - self.snr_mid_db) / self.snr_slope_db
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


# --------------------------------------------------------------------------------------------
# Automatic gain control and limiter


class AutomaticGainControl:
    """Slow AGC toward a speech level: adapts on voiced frames only, holds otherwise.

    The speech level is the power mean over voiced frames (time constant :attr:`level_tau_s`).
    The wanted gain is ``target - level``, within [:attr:`min_gain_db`, :attr:`max_gain_db`], and
    capped so that the noise floor is not lifted above :attr:`max_noise_dbfs` — so a noisy mic
    gets no boost at all. The floor follows minima of the AGC's input (after noise suppression):
    it falls at once to a quieter frame and rises at :attr:`floor_rise_db_per_s`; a mean over
    unvoiced frames would be dominated by soft consonants and word tails and block the boost.
    The applied gain moves toward the wanted gain at most :attr:`up_db_per_s` up and
    :attr:`down_db_per_s` down, ramped linearly across each frame (no zipper steps). Unvoiced
    frames never change the gain, so noise alone is never amplified.
    """

    up_db_per_s = 6.0  # dB/s: slow rise (like WebRTC AGC2's default max gain change)
    down_db_per_s = 20.0  # dB/s: a louder talker is tamed faster; peaks are the limiter's job
    min_gain_db = -12.0  # dB: loud mics are brought down too
    level_tau_s = 0.5  # s: speech level averaging over voiced frames
    floor_rise_db_per_s = 3.0  # dB/s: noise floor rise while no quieter frame arrives
    max_noise_dbfs = -50.0  # dBFS RMS: the gain never lifts the noise floor above this

    def __init__(self, frame_size: int, target_dbfs: float = -20.0, max_gain_db: float = 20.0):
        self.target_dbfs = target_dbfs  # dBFS RMS over voiced frames (full scale 1.0)
        self.max_gain_db = max_gain_db
        self.gain_db = 0.0
        self._gain = 1.0  # linear, applied at the end of the last frame
        self._level_pow = math.nan  # mean square (full scale 1.0) of voiced frames
        self.floor_db = math.nan  # dBFS mean square of the quietest recent frames
        self._ramp = np.linspace(1 / frame_size, 1.0, frame_size, dtype=np.float32)
        self._env = np.empty(frame_size, dtype=np.float32)

    def reset(self) -> None:
        self.gain_db, self._gain = 0.0, 1.0
        self._level_pow = self.floor_db = math.nan

    def process(self, x: npt.NDArray[np.float32], is_speech: bool) -> None:
        """Update the gain from this frame (in place); x is int16-scaled float32."""
        n = x.shape[0]
        dt = n / SAMPLE_RATE
        power = float(np.dot(x, x)) / n / (FULL_SCALE * FULL_SCALE)
        db = _power_db(power)
        floor = self.floor_db
        if math.isnan(floor) or db < floor:
            self.floor_db = db
        else:
            self.floor_db = floor + min(db - floor, self.floor_rise_db_per_s * dt)
        if is_speech:
            a = 1 - math.exp(-dt / self.level_tau_s)
            lp = self._level_pow
            self._level_pow = power if math.isnan(lp) else lp + a * (power - lp)
            want = self.target_dbfs - _power_db(self._level_pow)
            want = min(want, max(0.0, self.max_noise_dbfs - self.floor_db))
            want = max(self.min_gain_db, min(self.max_gain_db, want))
            step = want - self.gain_db
            step = max(-self.down_db_per_s * dt, min(self.up_db_per_s * dt, step))
            self.gain_db += step
        g0, g1 = self._gain, 10 ** (self.gain_db / 20)
        self._gain = g1
        apply_gain(x, g0, g1, self._ramp, self._env)


class Limiter:
    """Peak limiter to :attr:`ceiling` (-1 dBFS), then a hard clip that guarantees int16 range.

    Gain drops within the frame that needs it (ramped from the previous gain, so no step) and
    recovers with a :attr:`release_s` time constant. The final clip only acts on the few samples
    at the start of a frame whose sudden peak the ramp has not reached yet: int16 never wraps.
    """

    ceiling = FULL_SCALE * 10 ** (-1 / 20)  # -1 dBFS in int16 units: headroom for Opus
    release_s = 0.1  # s

    def __init__(self, frame_size: int) -> None:
        self._gain = 1.0
        self._release = 1 - math.exp(-frame_size / SAMPLE_RATE / self.release_s)
        self._ramp = np.linspace(1 / frame_size, 1.0, frame_size, dtype=np.float32)
        self._env = np.empty(frame_size, dtype=np.float32)
        self._abs = np.empty(frame_size, dtype=np.float32)
        self.gain_db = 0.0

    def reset(self) -> None:
        self._gain, self.gain_db = 1.0, 0.0

    def process(self, x: npt.NDArray[np.float32], out: npt.NDArray[np.int16]) -> None:
        """Limit the float frame and write it, rounded and clipped, into ``out`` (int16)."""
        np.abs(x, out=self._abs)
        peak = float(self._abs.max())
        g0 = self._gain
        released = g0 + (1.0 - g0) * self._release
        g1 = min(released, self.ceiling / peak) if peak > 0 else released
        self._gain = g1
        self.gain_db = 20 * math.log10(g1)
        if g0 != 1.0 or g1 != 1.0:
            env = self._env
            np.multiply(self._ramp, np.float32(g1 - g0), out=env)
            np.add(env, np.float32(g0), out=env)
            np.multiply(x, env, out=x)
        np.rint(x, out=x)
        np.clip(x, -32768.0, 32767.0, out=x)
        np.copyto(out, x, casting="unsafe")


# --------------------------------------------------------------------------------------------
# The capture processor


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """What the user chose; applied with :meth:`CaptureProcessor.configure` between frames."""

    highpass: bool = True
    noise_suppression: str = DEFAULT_BACKEND  # a key of BACKENDS
    agc: bool = True
    vad_threshold: float = 0.5  # a frame is speech when its probability is above this
    vad_hangover_s: float = 0.2  # s: frames stay "speech" this long after the last speech frame
    agc_target_dbfs: float = -20.0  # dBFS RMS of voiced frames
    agc_max_gain_db: float = 20.0  # dB

    def __post_init__(self) -> None:
        if self.noise_suppression not in BACKENDS:
            raise ValueError(
                f"unknown noise suppression backend {self.noise_suppression!r}; "
                f"known: {list(BACKENDS)}"
            )
        if not 0.0 <= self.vad_threshold <= 1.0:
            raise ValueError(f"vad_threshold {self.vad_threshold} is not in [0, 1]")
        if self.vad_hangover_s < 0 or not -60 <= self.agc_target_dbfs <= -3:
            raise ValueError("vad_hangover_s must be >= 0 and agc_target_dbfs in [-60, -3]")
        if not 0 <= self.agc_max_gain_db <= 40:
            raise ValueError(f"agc_max_gain_db {self.agc_max_gain_db} is not in [0, 40]")


@dataclass(frozen=True, slots=True)
class NsStatus:
    """Which noise suppressor runs, and why not the one asked for."""

    requested: str
    active: str  # "off" after a fallback
    reason: str = ""  # empty unless active != requested: names the backend and what to install


@dataclass(frozen=True, slots=True)
class CaptureResult:
    """One processed frame.

    ``frame`` is a view into the processor's output buffer: valid until the next ``process`` call
    (the worker encodes it before then). ``level`` is the raw input's meter (before any gain), so
    the UI shows what the microphone delivers, clipping included.
    """

    frame: npt.NDArray[np.int16]
    is_speech: bool  # after threshold and hangover
    speech_probability: float  # this frame's raw probability in [0, 1]
    level: Level  # input peak / RMS in dBFS
    gain_db: float  # AGC + limiter gain applied at the end of this frame, dB


class _Buffers:
    """Everything one frame size needs, allocated once."""

    def __init__(self, frame_size: int) -> None:
        self.work = np.zeros(frame_size, dtype=np.float32)
        self.scratch = np.zeros(frame_size, dtype=np.float32)
        self.out = np.zeros(frame_size, dtype=np.int16)
        self.highpass = HighPass(frame_size)
        self.limiter = Limiter(frame_size)


class CaptureProcessor:
    """High-pass → noise suppression → VAD → AGC → limiter, one frame at a time.

    Not thread-safe: one owner (the capture worker). :attr:`level` is a latest-value slot
    (one reference store per frame) that a UI thread may read at any time.
    """

    def __init__(self, settings: CaptureSettings | None = None, frame_size: int = 960) -> None:
        if frame_size not in FRAME_SIZES:
            raise ValueError(f"frame size {frame_size} not in {FRAME_SIZES}")
        self._buffers = {frame_size: _Buffers(frame_size)}
        self._agc = {frame_size: AutomaticGainControl(frame_size)}
        self._vad = EnergyVad()
        self._ns: NoiseSuppressor | None = None
        self._hang_left = 0  # samples of hangover left
        self.level = SILENT
        self.settings = CaptureSettings(noise_suppression="off")
        self.ns_status = NsStatus("off", "off")
        self.configure(settings or CaptureSettings())

    def configure(self, settings: CaptureSettings) -> NsStatus:
        """Apply new settings (between frames). Returns the noise-suppression status.

        A backend whose library is missing does not stop capture: noise suppression falls back
        to "off" and the returned status (also :attr:`ns_status`) says which backend and what to
        install, for the UI and the log. Unknown names never get here: CaptureSettings refuses them.
        """
        old = self.settings
        if settings.noise_suppression != self.ns_status.requested:
            if self._ns is not None:
                self._ns.close()
                self._ns = None
            status = NsStatus(settings.noise_suppression, "off")
            if settings.noise_suppression != "off":
                try:
                    self._ns = open_backend(settings.noise_suppression)
                    status = NsStatus(settings.noise_suppression, settings.noise_suppression)
                except BackendUnavailable as exc:
                    status = NsStatus(settings.noise_suppression, "off", str(exc))
            self.ns_status = status
            self._vad.reset()
        if settings.highpass != old.highpass:
            for buffers in self._buffers.values():
                buffers.highpass.reset()
        for agc in self._agc.values():
            agc.target_dbfs = settings.agc_target_dbfs
            agc.max_gain_db = settings.agc_max_gain_db
            if settings.agc != old.agc:
                agc.reset()
        self.settings = settings
        return self.ns_status

    def close(self) -> None:
        if self._ns is not None:
            self._ns.close()
            self._ns = None

    def process(self, frame: npt.NDArray[np.int16]) -> CaptureResult:
        """Process one int16 frame of 480 or 960 samples."""
        n = frame.shape[0]
        buffers = self._buffers.get(n)
        if buffers is None:
            if n not in FRAME_SIZES:
                raise ValueError(f"frame of {n} samples; expected one of {FRAME_SIZES}")
            buffers = self._buffers[n] = _Buffers(n)
            agc = self._agc[n] = AutomaticGainControl(n)
            agc.target_dbfs = self.settings.agc_target_dbfs
            agc.max_gain_db = self.settings.agc_max_gain_db
        x = buffers.work
        np.copyto(x, frame, casting="safe")  # int16 -> float32 is exact
        level = measure_level(x, buffers.scratch, FULL_SCALE)  # the raw input: int16 scale
        self.level = level
        settings = self.settings
        if settings.highpass:
            buffers.highpass.process(x)
        # The energy VAD always runs on the (high-passed) input: it is the fallback and it keeps
        # its noise floor current for when the backend changes.
        energy_p = self._vad.update(x)
        p = math.nan
        if self._ns is not None:
            p = self._ns.process(x)
        if math.isnan(p) or self._vad.frame_db < EnergyVad.abs_floor_dbfs:
            # No backend probability, or a frame too quiet to be anyone's voice (digital
            # silence, a mic's own hiss): WebRTC's model reads 0.5, its "don't know", there.
            p = energy_p
        if p > settings.vad_threshold:
            self._hang_left = round(settings.vad_hangover_s * SAMPLE_RATE)
            is_speech = True
        elif self._hang_left > 0:
            self._hang_left -= n
            is_speech = True
        else:
            is_speech = False
        gain_db = 0.0
        if settings.agc:
            agc = self._agc[n]
            agc.process(x, is_speech)
            gain_db = agc.gain_db
        buffers.limiter.process(x, buffers.out)
        return CaptureResult(buffers.out, is_speech, p, level, gain_db + buffers.limiter.gain_db)
