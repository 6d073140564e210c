"""Echo cancellation on a simulated room: echo removed (ERLE) and near-end quality in double talk.

The far end is speech (what the speakers play); the room is a 300 ms impulse response (40 ms of
travel, then exponentially decaying noise with RT60 250 ms, seeded) at an echo-path gain of -6,
-12 and -20 dB; the microphone hears that echo and, in the double-talk segment, also the near-end
talker (the second half of speech sample 1) at full level. The canceller runs in 20 ms frames
exactly as the capture worker calls it (int16 near and far frames). Two runs per gain:

* **converged** (the G.168 way: converge on the far end alone, then talk over it): 26.8 s of far
  end alone (speech 0, the first half of speech 1, speech 0 again), then 5.4 s of double talk
  (the second halves of both). This is where a call spends its time and what the targets use.
* **early**: double talk from 5.4 s, as in a call whose first words are an interruption.

* ERLE: echo power at the microphone over the canceller's output power, far end alone, over
  2-5 s (the target: 25 dB after 2 s), and over the 5 s before double talk (converged).
* PESQ-WB of the near end during double talk: the output against the clean near-end speech
  (16 kHz via resample_poly), and the unprocessed microphone's score for reference.
* CPU: µs per 20 ms frame (median of the per-frame times over the file).

Backends: the product's (AEC3 with the linear Kalman canceller taking over once converged,
:class:`voipclient.audio.aec.EchoCanceller`), AEC3 alone, the Kalman canceller alone, and,
when the ``pyaec`` wheel happens to be installed (it is not a dependency), Speex's MDF
canceller for comparison.
Prints a table, then one JSON line with every figure (the benchmarks/run_all.py convention).
"""

from __future__ import annotations

import ctypes
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pesq import pesq
from scipy import signal

from voipclient.audio.aec import EchoCanceller
from voipclient.audio.file_engine import read_wav_mono16
from voipclient.audio.linear_aec import LinearCanceller

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
FS = 48_000
FRAME = 960
GAINS_DB = (-6, -12, -20)
ERLE_TARGET_DB = 25.0
PESQ_TARGET = 3.0

F64 = npt.NDArray[np.float64]
I16 = npt.NDArray[np.int16]


def room(rng: np.random.Generator) -> F64:
    t = np.arange(int(0.3 * FS)) / FS
    h = rng.standard_normal(len(t)) * np.exp(-6.9 * t / 0.25)
    h[: int(0.04 * FS)] = 0
    return np.asarray(h / np.sqrt(np.sum(h**2)))


def speex_factory() -> Callable[[], Callable[[I16, I16], I16]] | None:
    try:
        import pyaec  # not a dependency: the comparison runs where it is installed
    except ImportError:
        return None
    lib = pyaec.lib
    ptr = ctypes.POINTER(ctypes.c_int16)

    def make() -> Callable[[I16, I16], I16]:
        handle = lib.AecNew(FRAME, int(0.3 * FS), FS, True)
        out = np.zeros(FRAME, dtype=np.int16)

        def process(near: I16, far: I16) -> I16:
            a, b = np.ascontiguousarray(near), np.ascontiguousarray(far)
            lib.AecCancelEcho(
                handle, a.ctypes.data_as(ptr), b.ctypes.data_as(ptr), out.ctypes.data_as(ptr), FRAME
            )
            return out.copy()

        return process

    return make


def run(process: Callable[[I16, I16], I16], mic: F64, far: F64) -> tuple[F64, float]:
    out = np.zeros(len(mic))
    mic16 = np.round(np.clip(mic, -32768, 32767)).astype(np.int16)
    far16 = np.round(far).astype(np.int16)
    times = []
    for i in range(0, len(mic) - FRAME + 1, FRAME):
        t0 = time.perf_counter()
        y = process(mic16[i : i + FRAME], far16[i : i + FRAME])
        times.append(time.perf_counter() - t0)
        out[i : i + FRAME] = y
    return out, statistics.median(times) * 1e6


def pesq_wb(ref: F64, deg: F64) -> float:
    """PESQ-WB of ``deg`` against ``ref`` (both at 48 kHz), after aligning ``deg`` (the
    canceller adds a few ms of delay)."""
    n = min(len(ref), len(deg), 2 * FS)
    corr = signal.correlate(deg[:n], ref[:n], "full", method="fft")
    lag = max(0, int(np.argmax(corr)) - (n - 1))
    deg = deg[lag:]
    m = min(len(ref), len(deg))
    r16 = signal.resample_poly(ref[:m] / 32768, 1, 3)
    d16 = signal.resample_poly(deg[:m] / 32768, 1, 3)
    return float(pesq(16_000, r16, d16, "wb"))


def _linear_only() -> Callable[[I16, I16], I16]:
    lin = LinearCanceller()
    b = lin.block
    out = np.zeros(FRAME)

    def process(near: I16, far: I16) -> I16:
        d, x = near.astype(np.float64), far.astype(np.float64)
        for i in range(0, FRAME, b):
            lin.process(d[i : i + b], x[i : i + b], out[i : i + b])
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)

    return process


def _aec3_only() -> Callable[[I16, I16], I16]:
    from pywebrtc_audio import EchoCanceller as Aec3

    aec: Any = Aec3(sample_rate=FS, num_channels=1)
    return lambda near, far: np.asarray(aec.process(near, far), dtype=np.int16)


def main() -> dict[str, Any]:
    far = read_wav_mono16(DATA / "speech-0-48k.wav").astype(np.float64)
    near = read_wav_mono16(DATA / "speech-1-48k.wav").astype(np.float64)
    n = min(len(far), len(near))
    far, near = far[:n], near[:n]
    half = n // 2
    lead = np.concatenate([far, near[:half], far])  # converged run: far end alone first
    scenarios = {
        "early": (far, half),
        "converged": (np.concatenate([lead, far[half:]]), len(lead)),
    }
    h = room(np.random.default_rng(1))
    backends: dict[str, Callable[[], Callable[[I16, I16], I16]]] = {
        "product": lambda: EchoCanceller().process,
        "webrtc_aec3": _aec3_only,
        "kalman_linear": _linear_only,
    }
    speex = speex_factory()
    if speex is not None:
        backends["speex_mdf"] = speex
    rows = []
    head = ("backend", "echo dB", "ERLE 2-5s", "ERLE conv", "PESQ dt", "PESQ early", "mic PESQ")
    head += ("µs/20ms",)
    print(f"{head[0]:<14} " + " ".join(f"{h:>10}" for h in head[1:]))
    for gain in GAINS_DB:
        mic_pesq = 0.0
        results: dict[str, dict[str, Any]] = {name: {} for name in backends}
        for scenario, (far_s, dt0) in scenarios.items():
            total = len(far_s)
            echo = signal.fftconvolve(far_s, h * 10 ** (gain / 20))[:total]
            mic = echo.copy()
            mic[dt0:] += near[half : half + total - dt0]  # the near end talks over the far end
            mic_pesq = pesq_wb(near[half:], mic[dt0:])
            for name, make in backends.items():
                out, us = run(make(), mic, far_s)
                dt = pesq_wb(near[half:], out[dt0:])
                r = results[name]
                if scenario == "converged":
                    early = slice(2 * FS, 5 * FS)
                    conv = slice(dt0 - 5 * FS, dt0)
                    r["erle_db"] = round(_erle(echo[early], out[early]), 1)
                    r["erle_converged_db"] = round(_erle(echo[conv], out[conv]), 1)
                    r["pesq_wb_double_talk"] = round(dt, 2)
                    r["us_per_frame"] = round(us, 1)
                else:
                    r["pesq_wb_double_talk_early"] = round(dt, 2)
        for name, r in results.items():
            keys = ("erle_db", "erle_converged_db", "pesq_wb_double_talk")
            keys += ("pesq_wb_double_talk_early",)
            row = {"backend": name, "echo_gain_db": gain, **{k: r[k] for k in keys}}
            row |= {"pesq_wb_mic": round(mic_pesq, 2), "us_per_frame": r["us_per_frame"]}
            rows.append(row)
            print(
                f"{name:<14} {gain:>10} {row['erle_db']:>10} {row['erle_converged_db']:>10} "
                f"{row['pesq_wb_double_talk']:>10} {row['pesq_wb_double_talk_early']:>10} "
                f"{row['pesq_wb_mic']:>10} {row['us_per_frame']:>10}",
                flush=True,
            )
    ours = [r for r in rows if r["backend"] == "product"]
    figures: dict[str, Any] = {
        "product_erle_db_min": min(r["erle_db"] for r in ours),
        "product_erle_converged_db_min": min(r["erle_converged_db"] for r in ours),
        "product_pesq_double_talk_min": min(r["pesq_wb_double_talk"] for r in ours),
        "product_pesq_double_talk_early_max": max(r["pesq_wb_double_talk_early"] for r in ours),
        "product_us_per_frame": statistics.median(r["us_per_frame"] for r in ours),
        "erle_target_db": ERLE_TARGET_DB,
        "pesq_target": PESQ_TARGET,
        "erle_target_met": all(r["erle_db"] >= ERLE_TARGET_DB for r in ours),
        "pesq_target_met": all(r["pesq_wb_double_talk"] >= PESQ_TARGET for r in ours),
        "compared": sorted(backends),
        "rows": rows,
    }
    print(json.dumps({"benchmark": "aec", **figures}))
    return figures


def _erle(echo: F64, out: F64) -> float:
    return float(10 * np.log10(np.mean(echo**2) / max(float(np.mean(out**2)), 1e-9)))


if __name__ == "__main__":
    main()
