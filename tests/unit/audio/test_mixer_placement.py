"""The mixer's stereo placement, priority channel and ducking (pure; no device)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest

from voipclient.audio.mixer import DUCK_HOLD_S, Mixer

N = 960
A, B, C = 1, 2, 3  # channel ids
ALICE, BOB, CAROL = 10, 20, 30  # sender ids


def sine(amplitude: float, hz: float = 440.0, n: int = N, start: int = 0) -> npt.NDArray[np.int16]:
    t = (np.arange(n) + start) / 48_000
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def sides(frame: npt.NDArray[np.int16]) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    pairs = frame.reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def rms_db(x: npt.NDArray[np.int16]) -> float:
    ms = float(np.mean(x.astype(np.float64) ** 2))
    return 10 * math.log10(ms) if ms > 0 else -math.inf


def test_a_centred_channel_is_the_mono_mix_on_both_sides() -> None:
    mono, stereo = Mixer(), Mixer(output_channels=2)
    pcm = sine(0.3)
    mono.add(ALICE, A, 0, pcm)
    stereo.add(ALICE, A, 0, pcm)
    expected = mono.mix()
    left, right = sides(stereo.mix())
    np.testing.assert_array_equal(left, expected)
    np.testing.assert_array_equal(right, expected)
    np.testing.assert_array_equal(expected, pcm)  # unity: bit-exact


def test_hard_left_and_hard_right_are_silent_on_the_far_side() -> None:
    m = Mixer(output_channels=2)
    m.set_channel_pan(A, -1.0)
    m.set_channel_pan(B, 1.0)
    m.add(ALICE, A, 0, sine(0.3, 440))
    left, right = sides(m.mix())
    np.testing.assert_array_equal(left, sine(0.3, 440))
    assert not right.any()
    m.add(BOB, B, 0, sine(0.3, 660))
    left, right = sides(m.mix())
    assert not left.any()
    np.testing.assert_array_equal(right, sine(0.3, 660))


def test_two_channels_placed_apart_differ_by_more_than_20_db_at_each_side() -> None:
    """Issue 17's target, in the mixer: each channel's speaker hard left / hard right."""
    m = Mixer(output_channels=2)
    m.set_channel_pan(A, -1.0)
    m.set_channel_pan(B, 1.0)
    m.add(ALICE, A, 0, sine(0.3, 440))
    m.add(BOB, B, 0, sine(0.3, 660))
    left, right = sides(m.mix())
    # each side holds one speaker only: its own tone's share is the whole signal
    spectrum_l, spectrum_r = np.abs(np.fft.rfft(left)), np.abs(np.fft.rfft(right))
    bin440, bin660 = round(440 * N / 48_000), round(660 * N / 48_000)
    assert 20 * math.log10(spectrum_l[bin440] / max(spectrum_l[bin660], 1e-9)) >= 20
    assert 20 * math.log10(spectrum_r[bin660] / max(spectrum_r[bin440], 1e-9)) >= 20


def test_partial_pan_follows_the_balance_law() -> None:
    m = Mixer(output_channels=2)
    m.set_channel_pan(A, -0.5)
    pcm = sine(0.4)
    m.add(ALICE, A, 0, pcm)
    left, right = sides(m.mix())
    np.testing.assert_allclose(left, pcm, atol=1)  # the near side at unity
    np.testing.assert_allclose(right, pcm * 0.5, atol=1)  # the far side at 1 - |pan|


def test_mono_output_ignores_placement() -> None:
    m = Mixer(output_channels=1)
    m.set_channel_pan(A, -1.0)
    pcm = sine(0.3)
    m.add(ALICE, A, 0, pcm)
    np.testing.assert_array_equal(m.mix(), pcm)


def test_bad_settings_are_refused() -> None:
    m = Mixer(output_channels=2)
    for pan in (-1.5, 2.0, math.nan):
        with pytest.raises(ValueError, match="pan"):
            m.set_channel_pan(A, pan)
    with pytest.raises(ValueError, match="duck_db"):
        m.set_priority(A, 6.0)
    with pytest.raises(ValueError, match="output_channels"):
        Mixer(output_channels=3)
    with pytest.raises(ValueError, match="1920"):
        m.mix_into(np.zeros(N, dtype=np.int16))


def test_the_limiter_reduces_both_sides_alike() -> None:
    m = Mixer(output_channels=2)
    m.set_channel_pan(A, -1.0)
    for sender in (ALICE, BOB, CAROL):  # three loud speakers: the sum clips without a limiter
        m.add(sender, A, 0, sine(0.8))
    m.add(99, B, 0, sine(0.2, 660))  # centred
    out = m.mix()
    assert int(np.abs(out.astype(np.int32)).max()) <= 32767
    _left, right = sides(out)
    # the right side (only the centred speaker) was reduced by the same gain as the left
    assert rms_db(right) < rms_db(sine(0.2, 660)) - 0.5


def run_frames(m: Mixer, frames: int, *, priority: bool, start: int) -> list[float]:
    """Mix ``frames`` frames of a steady tone in B (and a priority talker in A when asked);
    the level of B's tone in each output frame, in dB."""
    levels = []
    for i in range(frames):
        k = start + i
        m.add(BOB, B, k, sine(0.1, 600, start=k * N))
        if priority:
            m.add(ALICE, A, k, sine(0.1, 400, start=k * N))
        out = m.mix().astype(np.float64)
        # the frame's second half (past the ramp): 480 samples, bins 100 Hz apart, so both tones
        # sit on a bin and do not leak into each other
        spectrum = np.abs(np.fft.rfft(out[N // 2 :]))
        levels.append(20 * math.log10(spectrum[6]))
    return levels


def test_priority_speech_ducks_the_others_by_12_db_within_one_frame() -> None:
    m = Mixer()
    m.set_priority(A)
    before = run_frames(m, 5, priority=False, start=0)
    first = run_frames(m, 1, priority=True, start=5)
    # the attack: a ramp across the first frame (no click), at the full depth at its end
    assert m.duck_gain == pytest.approx(10 ** (-12 / 20))
    assert 3.0 < before[-1] - first[0] < 12.0
    during = run_frames(m, 5, priority=True, start=6)
    depth = [before[-1] - level for level in during]
    assert all(11.0 <= d <= 13.0 for d in depth), depth  # from the second frame on (≤ 40 ms)


def test_the_duck_holds_through_a_pause_then_releases_without_a_step() -> None:
    m = Mixer()
    m.set_priority(A)
    steady = run_frames(m, 3, priority=False, start=0)[-1]
    run_frames(m, 5, priority=True, start=3)
    hold_frames = round(DUCK_HOLD_S / 0.02)
    held = run_frames(m, hold_frames, priority=False, start=8)
    assert all(steady - level > 11 for level in held)  # a pause between words: still ducked
    released = run_frames(m, 90, priority=False, start=8 + hold_frames)
    assert all(b >= a - 0.01 for a, b in itertools.pairwise(released))
    assert released[-1] == pytest.approx(steady, abs=0.1)  # back to the full level
    steps = np.diff(released)
    assert float(steps.max()) < 3.0  # a smooth release: no jump of more than 3 dB per frame


def test_without_a_priority_channel_nothing_ducks() -> None:
    m = Mixer()
    levels = run_frames(m, 5, priority=True, start=0)
    assert max(levels) - min(levels) < 0.01
    assert m.duck_gain == 1.0


def test_the_priority_channel_itself_is_not_ducked() -> None:
    m = Mixer()
    m.set_priority(A)
    pcm = sine(0.2)
    for k in range(3):
        m.add(ALICE, A, k, pcm)
        out = m.mix()
    np.testing.assert_array_equal(out, pcm)


def test_forgetting_the_priority_channel_ends_priority() -> None:
    m = Mixer(output_channels=2)
    m.set_priority(A)
    m.set_channel_pan(A, 0.5)
    m.forget_channel(A)
    assert m.priority_channel is None and m.channel_pan(A) == 0.0


def test_silence_in_the_priority_channel_ducks_nothing() -> None:
    """A hot mic in the priority channel sends silence between words: no duck for it."""
    m = Mixer()
    m.set_priority(A)
    for k in range(5):
        m.add(ALICE, A, k, np.full(N, 20, dtype=np.int16))  # -64 dBFS: room noise, not speech
        m.add(BOB, B, k, sine(0.1, 600, start=k * N))
        m.mix()
    assert m.duck_gain == 1.0
