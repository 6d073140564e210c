"""The one level meter both audio paths use: dBFS readings, silence, and no allocation per frame."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from voipclient.audio import dsp, mixer
from voipclient.audio.meter import SILENT, Level, measure_level

N = 960
SINE = np.sin(2 * np.pi * 1000 * np.arange(N) / 48_000).astype(np.float32)  # full scale 1.0


def test_a_full_scale_sine_reads_zero_dbfs_peak_and_rms() -> None:
    level = measure_level(SINE, np.empty_like(SINE))
    assert level.peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert level.rms_dbfs == pytest.approx(0.0, abs=0.01)  # AES17: RMS + 3.01 dB
    tenth = measure_level(SINE / np.float32(10), np.empty_like(SINE))
    assert tenth.peak_dbfs == pytest.approx(-20.0, abs=0.01)
    assert tenth.rms_dbfs == pytest.approx(-20.0, abs=0.01)


def test_silence_reads_minus_infinity() -> None:
    zeros = np.zeros(N, dtype=np.float32)
    assert measure_level(zeros, np.empty_like(zeros)) == SILENT == Level(-math.inf, -math.inf)


def test_the_capture_path_and_the_mixer_read_the_same_signal_alike() -> None:
    """Same signal, one at int16 scale into the capture processor, one at full scale 1.0 through
    the mixer (below the limiter's threshold, so bit-exact): the same level."""
    half = SINE * np.float32(0.5)
    pcm = np.round(half * 32767).astype(np.int16)
    proc = dsp.CaptureProcessor(dsp.CaptureSettings(noise_suppression="off"))
    captured = proc.process(pcm).level
    m = mixer.Mixer(N)
    m.add(1, 1, 0, pcm)
    m.mix()
    assert captured.peak_dbfs == pytest.approx(m.level.peak_dbfs, abs=1e-3)
    assert captured.rms_dbfs == pytest.approx(m.level.rms_dbfs, abs=1e-3)
    assert captured.peak_dbfs == pytest.approx(-6.02, abs=0.01)


def test_no_array_is_allocated_per_frame() -> None:
    x = SINE * np.float32(12_000)
    scratch = np.empty_like(x)
    measure_level(x, scratch, 32768.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(500):
            measure_level(x, scratch, 32768.0)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes  # a few Python floats and the tuple, never a frame-sized array
