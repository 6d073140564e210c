"""The mixer: gains, mutes, deafen, cross-channel dedupe, the limiter and the meter."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.audio.mixer import LIMIT_THRESHOLD, Mixer

N = 960
A, B = 1, 2  # channel ids
ALICE, BOB = 10, 20  # sender ids


def sine(amplitude: float, hz: float = 440.0, n: int = N) -> npt.NDArray[np.int16]:
    t = np.arange(n) / 48_000
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def noise(seed: int, amplitude: int = 8000) -> npt.NDArray[np.int16]:
    return np.random.default_rng(seed).integers(-amplitude, amplitude, N).astype(np.int16)


def test_one_speaker_passes_through_at_unity() -> None:
    m = Mixer()
    for frame_no in range(5):
        pcm = noise(frame_no, 29_000)  # just under -1 dBFS
        assert m.add(ALICE, A, frame_no, pcm)
        np.testing.assert_array_equal(m.mix(), pcm)


def test_float32_input_is_full_scale_one() -> None:
    m = Mixer()
    pcm = noise(1)
    m.add(ALICE, A, 0, (pcm / 32768).astype(np.float32))
    np.testing.assert_array_equal(m.mix(), pcm)


def test_two_speakers_sum() -> None:
    m = Mixer()
    a, b = noise(1), noise(2)
    m.add(ALICE, A, 0, a)
    m.add(BOB, B, 0, b)
    np.testing.assert_array_equal(m.mix(), a.astype(np.int32) + b)


def test_mix_consumes_and_is_silent_when_nothing_was_added() -> None:
    m = Mixer()
    m.add(ALICE, A, 0, noise(1))
    m.mix()
    assert not m.mix().any()
    out = np.full(N, 5, dtype=np.int16)
    m.mix_into(out)
    assert not out.any()
    with pytest.raises(ValueError):
        m.mix_into(np.zeros(N, dtype=np.float32))


def test_channel_volume_and_mute() -> None:
    m = Mixer()
    pcm = noise(3)
    m.set_channel_volume(A, 0.5)
    m.add(ALICE, A, 0, pcm)
    np.testing.assert_array_equal(m.mix(), np.rint(pcm * 0.5).astype(np.int16))
    m.set_channel_muted(A, True)
    assert not m.is_audible(ALICE, A)
    assert not m.add(ALICE, A, 1, pcm)
    assert m.add(BOB, B, 1, pcm)  # another channel still plays
    np.testing.assert_array_equal(m.mix(), pcm)
    m.set_channel_muted(A, False)
    assert m.add(ALICE, A, 2, pcm)


def test_user_volume_and_local_mute() -> None:
    m = Mixer()
    pcm = noise(4)
    m.set_user_volume(ALICE, 2.0)
    m.set_channel_volume(A, 0.25)  # gains multiply: 0.5
    m.add(ALICE, A, 0, pcm)
    np.testing.assert_array_equal(m.mix(), np.rint(pcm * 0.5).astype(np.int16))
    m.set_user_muted(ALICE, True)
    assert m.is_locally_muted(ALICE)
    assert not m.is_locally_muted(BOB)
    assert not m.add(ALICE, A, 1, pcm)
    assert not m.add(ALICE, B, 1, pcm)  # in every channel
    assert not m.mix().any()
    m.set_user_muted(ALICE, False)
    assert not m.is_locally_muted(ALICE)
    with pytest.raises(ValueError):
        m.set_user_volume(ALICE, -1.0)
    with pytest.raises(ValueError):
        m.set_channel_volume(A, math.nan)


def test_deafen_is_silence() -> None:
    m = Mixer()
    m.add(ALICE, A, 0, noise(5))
    m.set_deafened(True)
    assert not m.add(BOB, B, 0, noise(6))
    assert not m.mix().any()
    assert m.level.peak_dbfs == -math.inf
    m.set_deafened(False)
    pcm = noise(7)
    m.add(BOB, B, 1, pcm)
    np.testing.assert_array_equal(m.mix(), pcm)


def test_same_speaker_in_two_channels_plays_once_first_arrival_wins() -> None:
    m = Mixer()
    pcm = noise(8)
    m.set_channel_volume(A, 0.5)
    m.set_channel_volume(B, 1.0)  # louder, but arrives second
    assert m.add(ALICE, A, 100, pcm)
    assert not m.add(ALICE, B, 100, pcm)
    assert m.duplicates == 1
    np.testing.assert_array_equal(m.mix(), np.rint(pcm * 0.5).astype(np.int16))
    # a copy that arrives a few frames later (another channel's jitter buffer) is dropped too
    m.add(ALICE, A, 101, pcm)
    m.add(ALICE, A, 102, pcm)
    m.mix()
    assert not m.add(ALICE, B, 101, pcm)
    assert m.duplicates == 2
    # a frame never played is still accepted out of order; far too old ones are stale
    assert m.add(ALICE, B, 99, pcm)
    assert not m.add(ALICE, B, 102 - 64, pcm)
    assert m.stale == 1
    # other speakers with the same frame_no are unaffected
    assert m.add(BOB, B, 100, pcm)


def test_muted_channel_copy_does_not_count_as_played() -> None:
    m = Mixer()
    pcm = noise(9)
    m.set_channel_muted(A, True)
    assert not m.add(ALICE, A, 5, pcm)
    assert m.add(ALICE, B, 5, pcm)
    np.testing.assert_array_equal(m.mix(), pcm)


def test_frame_no_wraps() -> None:
    m = Mixer()
    assert m.add(ALICE, A, 2**32 - 1, noise(1))
    assert m.add(ALICE, A, 0, noise(2))
    assert not m.add(ALICE, B, 2**32 - 1, noise(1))
    assert not m.add(ALICE, B, 0, noise(2))


def test_forget_sender_resets_dedupe() -> None:
    m = Mixer()
    m.add(ALICE, A, 1, noise(1))
    m.forget_sender(ALICE)
    assert m.add(ALICE, B, 1, noise(1))


def test_loud_inputs_never_wrap() -> None:
    m = Mixer()
    loud = sine(1.0, 100)  # full scale, in phase: the true sum is 3x full scale
    naive = loud + loud + loud  # int16 arithmetic wraps around
    truth = loud.astype(np.int32) * 3
    assert (np.sign(naive) != np.sign(truth)).any()  # the naive sum does flip sign
    for frame_no in range(10):
        for sender in (1, 2, 3):
            m.add(sender, A, frame_no, loud)
        out = m.mix()
        assert out.dtype == np.int16
        nz = truth != 0
        assert (np.sign(out[nz]) == np.sign(truth[nz])).all()  # no wrap-around, ever
        assert int(np.abs(out.astype(np.int32)).max()) <= 32767
    # after the first frames the limiter's gain holds the peak at the threshold
    assert np.abs(out.astype(np.int32)).max() <= math.ceil(LIMIT_THRESHOLD * 32768)


def test_limiter_recovers_to_unity() -> None:
    m = Mixer()
    loud = sine(1.0)
    for frame_no in range(5):
        m.add(1, A, frame_no, loud)
        m.add(2, A, frame_no, loud)
        m.mix()
    quiet = noise(10, 2000)
    for frame_no in range(5, 200):
        m.add(1, A, frame_no, quiet)
        out = m.mix()
    np.testing.assert_array_equal(out, quiet)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(-32768, 32767), st.floats(0, 4)),
        min_size=1,
        max_size=6,
    )
)
def test_any_mix_stays_in_range(speakers: list[tuple[int, int, float]]) -> None:
    m = Mixer()
    for sender, value, volume in speakers:
        m.set_user_volume(sender, volume)
        m.add(sender, A, 0, np.full(N, value, dtype=np.int16))
    out = m.mix()
    assert out.dtype == np.int16
    assert np.isfinite(m.level.peak_dbfs) or not out.any()


def test_meter() -> None:
    m = Mixer()
    assert m.level.peak_dbfs == m.level.rms_dbfs == -math.inf
    m.add(ALICE, A, 0, np.zeros(N, dtype=np.int16))
    m.mix()
    assert m.level.peak_dbfs == m.level.rms_dbfs == -math.inf
    m.add(ALICE, A, 1, sine(0.5, 1000))  # 48 whole periods in 960 samples
    m.mix()
    assert m.level.peak_dbfs == pytest.approx(-6.02, abs=0.05)
    assert m.level.rms_dbfs == pytest.approx(-6.02, abs=0.05)  # AES17: sine RMS + 3.01 dB


def test_short_frame_is_padded_and_counted() -> None:
    m = Mixer()
    pcm = noise(11)[:480]
    m.add(ALICE, A, 0, pcm)
    out = m.mix()
    np.testing.assert_array_equal(out[:480], pcm)
    assert not out[480:].any()
    assert m.size_mismatches == 1
