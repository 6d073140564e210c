"""Echo cancellation: the far-end mailbox, when it is on, and AEC3 on a simulated room."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import signal

from voipclient.audio.aec import (
    MAX_BACKLOG_FRAMES,
    EchoCanceller,
    FarEnd,
    wants_echo_cancellation,
)
from voipclient.audio.file_engine import read_wav_mono16

DATA = Path(__file__).parents[2] / "data"
N = 960
RATE = 48_000


@pytest.mark.parametrize(
    ("mode", "device", "on"),
    [
        ("auto", None, True),  # the system default: we cannot tell, so on
        ("auto", "Built-in Audio Analog Stereo", True),
        ("auto", "Jabra Evolve 65 Headset", False),
        ("auto", "WH-1000XM4 Headphones", False),
        ("auto", "AirPods Pro", False),
        ("auto", "Galaxy Buds2", False),
        ("on", "Jabra Evolve 65 Headset", True),
        ("off", "Built-in Audio Analog Stereo", False),
    ],
)
def test_auto_is_on_unless_the_output_is_a_headset(mode: str, device: str | None, on: bool) -> None:
    assert wants_echo_cancellation(mode, device) is on


def test_the_far_end_is_the_played_frame_folded_to_mono() -> None:
    far = FarEnd(N)
    stereo = np.zeros(2 * N, dtype=np.int16)
    stereo[0::2], stereo[1::2] = 1000, -200  # left, right
    far.put(stereo, 2)
    out = np.ones(N, dtype=np.int16)
    far.take_into(out)
    assert (out == 400).all()
    far.take_into(out)  # nothing more was played: silence
    assert not out.any()
    mono = np.arange(N, dtype=np.int16)
    far.put(mono, 1)
    far.take_into(out)
    np.testing.assert_array_equal(out, mono)


def test_a_backlog_is_dropped_so_the_far_end_is_never_late() -> None:
    far = FarEnd(N)
    for k in range(MAX_BACKLOG_FRAMES + 3):
        far.put(np.full(N, k, dtype=np.int16), 1)
    out = np.zeros(N, dtype=np.int16)
    far.take_into(out)
    assert (out == 3).all()  # the three oldest were dropped, the newest four kept
    assert far.dropped == 3 * N


def speech(name: str) -> npt.NDArray[np.float64]:
    return read_wav_mono16(DATA / name).astype(np.float64)


def test_aec3_removes_the_echo_of_a_simulated_room() -> None:
    """Far-end speech through a room (40 ms delay, 250 ms reverberation, -6 dB): after 2 s the
    canceller's output holds at least 25 dB less echo than the microphone."""
    far = speech("speech-0-48k.wav")[: 5 * RATE]
    rng = np.random.default_rng(1)
    t = np.arange(int(0.3 * RATE)) / RATE
    room = rng.standard_normal(len(t)) * np.exp(-6.9 * t / 0.25)
    room[: int(0.04 * RATE)] = 0
    room *= 10 ** (-6 / 20) / np.sqrt(np.sum(room**2))
    mic = signal.fftconvolve(far, room)[: len(far)]
    aec = EchoCanceller()
    out = np.zeros(len(far))
    for i in range(0, len(far) - N + 1, N):
        near = np.round(mic[i : i + N]).astype(np.int16)
        out[i : i + N] = aec.process(near, np.round(far[i : i + N]).astype(np.int16))
    settled = slice(2 * RATE, len(far))
    erle = 10 * np.log10(np.mean(mic[settled] ** 2) / np.mean(out[settled] ** 2))
    print(f"\nERLE {erle:.1f} dB")
    assert erle >= 25
    assert aec.frames == len(far) // N
