"""Noise suppression backends compared on quality (STOI, PESQ-WB) and CPU, plus the capture chain.

Clean speech (tests/data/speech-{0,1}-48k.wav, 48 kHz mono) is mixed with three noises at 0, 5 and
10 dB SNR (whole-file power): white noise, a fan (low-passed brown noise with a 110 Hz blade tone
and its harmonics, slowly wobbling) and babble (the *other* speech file, four copies at different
offsets). Each backend processes the mix in 20 ms frames exactly as the capture worker would; its
output is aligned to the clean signal (cross-correlation: every backend has a few ms of delay) and
scored against the clean file with STOI (pystoi, 0..1) and PESQ wide-band (pesq, mode "wb", at
16 kHz via scipy.signal.resample_poly, 1..4.64). "noisy" is the unprocessed mix: the bar to beat.

CPU: µs per 20 ms frame, median of REPEATS runs over FRAMES frames of the mix. Also measured: the
high-pass filter options (block state-space numpy, scipy sosfilt with state, a Python loop) and
the whole CaptureProcessor per 20 ms frame for each backend.

Prints tables, then one JSON line with every figure (the benchmarks/run_all.py convention).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pesq import pesq
from pystoi import stoi
from scipy import signal

from voipclient.audio import dsp
from voipclient.audio.file_engine import read_wav_mono16

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
FS = 48_000
FRAME = 960  # 20 ms
SNRS = (0, 5, 10)  # dB
REPEATS = 7
FRAMES = 250  # 5 s of audio per CPU run

F64 = npt.NDArray[np.float64]


def load(name: str) -> F64:
    return read_wav_mono16(DATA / name).astype(np.float64)  # int16 scale


def fan_noise(n: int, rng: np.random.Generator) -> F64:
    """Brown noise low-passed at 400 Hz plus a wobbling 110 Hz blade tone with harmonics."""
    brown = np.cumsum(rng.standard_normal(n))
    brown = signal.sosfilt(signal.butter(2, [20, 400], "bandpass", fs=FS, output="sos"), brown)
    t = np.arange(n) / FS
    wobble = 1 + 0.01 * np.sin(2 * np.pi * 0.3 * t)
    tone = sum((0.5**k) * np.sin(2 * np.pi * 110 * (k + 1) * t * wobble + k) for k in range(4))
    brown /= np.sqrt(np.mean(brown**2))
    tone = tone / np.sqrt(np.mean(tone**2))
    return np.asarray(brown + 0.5 * tone)


def babble(other: F64, n: int) -> F64:
    reps = np.tile(other, math.ceil(2 * n / len(other)) + 1)
    shifts = [0, len(other) // 4, len(other) // 2, 3 * len(other) // 4]
    return np.asarray(sum(reps[s : s + n] for s in shifts))


def mix(clean: F64, noise: F64, snr_db: float) -> F64:
    p_clean = np.mean(clean**2)
    p_noise = np.mean(noise**2)
    return np.asarray(clean + noise * math.sqrt(p_clean / p_noise / 10 ** (snr_db / 10)))


# -------------------------------------------------------------------------------------------
# Backends as the benchmark drives them: a callable processing one float32 frame in place.


class Wng16k:
    """webrtc-noise-gain: 16 kHz only, so 48 → 16 → 48 kHz around it (benchmark only)."""

    name = "webrtc16k"

    def __init__(self) -> None:
        from webrtc_noise_gain import AudioProcessor

        self._ap = AudioProcessor(0, 2)  # no AGC, NS level 2 of 0-4

    def process_file(self, x: F64) -> F64:
        low = signal.resample_poly(x, 1, 3)
        pcm = np.clip(np.rint(low), -32768, 32767).astype(np.int16)
        out = np.zeros_like(pcm)
        for i in range(0, len(pcm) - 159, 160):
            res = self._ap.Process10ms(pcm[i : i + 160].tobytes())
            out[i : i + 160] = np.frombuffer(res.audio, dtype=np.int16)
        return np.asarray(signal.resample_poly(out.astype(np.float64), 3, 1)[: len(x)])

    def cpu_frame(self) -> Callable[[], object]:
        chunk = np.zeros(160, dtype=np.int16).tobytes()
        return lambda: (self._ap.Process10ms(chunk), self._ap.Process10ms(chunk))


def run_backend(name: str, x: F64) -> F64:
    if name == "noisy":
        return x
    if name == "webrtc16k":
        return Wng16k().process_file(x)
    ns = dsp.open_backend(name)
    n = len(x) // FRAME * FRAME
    buf = np.clip(x[:n], -32768, 32767).astype(np.float32)
    for i in range(0, n, FRAME):
        ns.process(buf[i : i + FRAME])
    ns.close()
    return buf.astype(np.float64)


def align(ref: F64, y: F64, max_lag: int = 4800) -> F64:
    """Shift y back by its delay against ref (0..max_lag samples), zero-padded at the end."""
    n = min(len(ref), len(y))
    corr = signal.correlate(y[:n], ref[:n], mode="full", method="fft")
    mid = n - 1
    lag = int(np.argmax(corr[mid : mid + max_lag + 1]))
    out = np.zeros(n)
    out[: n - lag] = y[lag:n]
    return out


def scores(clean: F64, y: F64) -> tuple[float, float]:
    n = min(len(clean), len(y))
    c, d = clean[:n] / 32768, y[:n] / 32768
    s = float(stoi(c, d, FS, extended=False))
    c16 = signal.resample_poly(c, 1, 3)
    d16 = signal.resample_poly(d, 1, 3)
    p = float(pesq(16_000, c16, d16, "wb"))
    return s, p


def per_frame_us(fn: Callable[[], object], number: int = FRAMES) -> float:
    runs = timeit.repeat(fn, number=number, repeat=REPEATS)
    return statistics.median(runs) / number * 1e6


def backend_cpu(name: str, noisy: F64) -> float:
    if name == "webrtc16k":
        return per_frame_us(Wng16k().cpu_frame())
    ns = dsp.open_backend(name)
    frames = [
        np.clip(noisy[i : i + FRAME], -32768, 32767).astype(np.float32)
        for i in range(0, FRAMES * FRAME, FRAME)
    ]
    work = np.zeros(FRAME, dtype=np.float32)
    it = iter(range(10**9))

    def one() -> None:
        np.copyto(work, frames[next(it) % FRAMES])
        ns.process(work)

    us = per_frame_us(one)
    ns.close()
    return us


def noise_reduction_db(name: str, noise: F64) -> float:
    """Output power vs input power on noise alone (after 1 s of settling), dB (negative = less)."""
    y = run_backend(name, noise)
    skip = FS
    return 10 * math.log10(np.mean(y[skip:] ** 2) / np.mean(noise[skip : len(y)] ** 2))


def highpass_figures(x: F64) -> dict[str, float]:
    frame32 = x[:FRAME].astype(np.float32)
    hp = dsp.HighPass(FRAME)
    work = frame32.copy()
    figures = {"hp_block_numpy_us": per_frame_us(lambda: hp.process(work), 2000)}
    sos = signal.butter(2, dsp.HIGHPASS_HZ, "highpass", fs=FS, output="sos")
    state = [np.zeros((1, 2))]

    def scipy_hp() -> None:
        y, state[0] = signal.sosfilt(sos, frame32, zi=state[0])
        np.copyto(work, y, casting="same_kind")

    figures["hp_scipy_sosfilt_us"] = per_frame_us(scipy_hp, 2000)
    b0, b1, b2, a1, a2 = dsp.design_highpass()

    def python_hp() -> None:
        z1 = z2 = 0.0
        out = [0.0] * FRAME
        for i, v in enumerate(frame32.tolist()):
            y = b0 * v + z1
            z1 = b1 * v - a1 * y + z2
            z2 = b2 * v - a2 * y
            out[i] = y
        work[:] = out

    figures["hp_python_loop_us"] = per_frame_us(python_hp, 200)
    ref = signal.sosfilt(sos, x[: FRAME * 50])
    hp2 = dsp.HighPass(FRAME)
    y32 = x[: FRAME * 50].astype(np.float32)
    for i in range(0, len(y32), FRAME):
        hp2.process(y32[i : i + FRAME])
    figures["hp_block_max_err_lsb"] = float(np.abs(y32 - ref).max())
    return figures


def processor_us(name: str, noisy: F64) -> float:
    proc = dsp.CaptureProcessor(dsp.CaptureSettings(noise_suppression=name))
    assert proc.ns_status.active == name, proc.ns_status
    frames = [
        np.clip(noisy[i : i + FRAME], -32768, 32767).astype(np.int16)
        for i in range(0, FRAMES * FRAME, FRAME)
    ]
    it = iter(range(10**9))
    us = per_frame_us(lambda: proc.process(frames[next(it) % FRAMES]))
    proc.close()
    return us


def main() -> dict[str, object]:
    t0 = time.perf_counter()
    speech = [load("speech-0-48k.wav"), load("speech-1-48k.wav")]
    rng = np.random.default_rng(20240601)
    backends = ["noisy", *(b for b in dsp.BACKENDS if b != "off")]
    try:
        import webrtc_noise_gain  # noqa: F401

        backends.append("webrtc16k")
    except ImportError:
        pass
    missing = []
    for b in list(backends):
        if b in dsp.BACKENDS:
            try:
                dsp.open_backend(b).close()
            except dsp.BackendUnavailable as exc:
                missing.append(str(exc))
                backends.remove(b)

    # quality[backend][snr] -> list of (stoi, pesq) over files x noises
    quality: dict[str, dict[int, list[tuple[float, float]]]] = {
        b: {s: [] for s in SNRS} for b in backends
    }
    by_noise: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for idx, clean in enumerate(speech):
        other = speech[1 - idx]
        noises = {
            "white": rng.standard_normal(len(clean)),
            "fan": fan_noise(len(clean), rng),
            "babble": babble(other, len(clean)),
        }
        for noise_name, noise in noises.items():
            for snr in SNRS:
                noisy = mix(clean, noise, snr)
                for b in backends:
                    y = align(noisy, run_backend(b, noisy)) if b != "noisy" else noisy
                    st, pq = scores(clean, y)
                    quality[b][snr].append((st, pq))
                    by_noise.setdefault((b, noise_name), []).append((st, pq))

    rows: list[dict[str, object]] = []
    figures: dict[str, object] = {}
    base = {s: statistics.mean(p for p, _ in quality["noisy"][s]) for s in SNRS}
    print(f"{'backend':<10} {'SNR':>4} {'STOI':>6} {'dSTOI':>7} {'PESQ-WB':>8} {'dPESQ':>6}")
    for b in backends:
        for s in SNRS:
            st = statistics.mean(v for v, _ in quality[b][s])
            pq = statistics.mean(v for _, v in quality[b][s])
            pq0 = statistics.mean(v for _, v in quality["noisy"][s])
            print(f"{b:<10} {s:>4} {st:6.3f} {st - base[s]:+7.3f} {pq:8.2f} {pq - pq0:+6.2f}")
            rows.append({"backend": b, "snr_db": s, "stoi": round(st, 3), "pesq_wb": round(pq, 2)})
    print("\nper noise type (mean over files and SNRs):")
    print(f"{'backend':<10} {'noise':<7} {'STOI':>6} {'PESQ-WB':>8}")
    noise_rows: list[dict[str, object]] = []
    for (b, noise_name), vals in by_noise.items():
        st = statistics.mean(v for v, _ in vals)
        pq = statistics.mean(v for _, v in vals)
        print(f"{b:<10} {noise_name:<7} {st:6.3f} {pq:8.2f}")
        noise_rows.append(
            {"backend": b, "noise": noise_name, "stoi": round(st, 3), "pesq_wb": round(pq, 2)}
        )

    noisy_for_cpu = mix(speech[0], rng.standard_normal(len(speech[0])), 5)
    white = rng.standard_normal(FS * 6) * 1000
    cpu_rows: list[dict[str, object]] = []
    print(f"\n{'backend':<10} {'us/20ms':>8} {'noise-only dB':>14} {'chain us/20ms':>14}")
    for b in backends:
        if b == "noisy":
            continue
        cpu = backend_cpu(b, noisy_for_cpu)
        nr = noise_reduction_db(b, white)
        chain = processor_us(b, noisy_for_cpu) if b in dsp.BACKENDS else math.nan
        print(f"{b:<10} {cpu:8.1f} {nr:14.1f} {chain:14.1f}")
        figures[f"ns_{b}_us_per_20ms"] = round(cpu, 1)
        figures[f"ns_{b}_white_noise_only_db"] = round(nr, 1)
        if b in dsp.BACKENDS:
            figures[f"chain_{b}_us_per_20ms"] = round(chain, 1)
        cpu_rows.append({"backend": b, "us_per_20ms": round(cpu, 1), "noise_only_db": round(nr, 1)})
    chain_off = processor_us("off", noisy_for_cpu)
    figures["chain_off_us_per_20ms"] = round(chain_off, 1)
    print(f"{'off':<10} {'':>8} {'':>14} {chain_off:14.1f}")

    hp = highpass_figures(noisy_for_cpu)
    print()
    for k, v in hp.items():
        print(f"{k:<28} {v:.3f}")
    figures.update({k: round(v, 3) for k, v in hp.items()})
    for b in backends:
        for s in SNRS:
            figures[f"stoi_{b}_{s}db"] = round(statistics.mean(v for v, _ in quality[b][s]), 3)
            figures[f"pesq_{b}_{s}db"] = round(statistics.mean(v for _, v in quality[b][s]), 2)
    figures["quality"] = rows
    figures["quality_by_noise"] = noise_rows
    figures["cpu"] = cpu_rows
    figures["unavailable"] = missing
    figures["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"benchmark": "noise_suppression", **figures}))
    return figures


if __name__ == "__main__":
    main()
    sys.exit(0)
