"""Push-to-talk cues: length, level, no clicks, direction, and the saturating player."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voipclient.audio.cues import CUE_LEVEL_DBFS, CUE_MS, SAMPLE_RATE, CueKind, CuePlayer, cue


@pytest.mark.parametrize("kind", list(CueKind))
def test_cue_shape_level_and_no_click(kind: CueKind) -> None:
    x = cue(kind)
    assert x.dtype == np.int16
    assert len(x) == SAMPLE_RATE * CUE_MS // 1000 <= SAMPLE_RATE * 120 // 1000
    peak_db = 20 * math.log10(np.abs(x.astype(np.int32)).max() / 32768)
    assert abs(peak_db - CUE_LEVEL_DBFS) < 0.5
    assert abs(int(x[0])) <= 1 and abs(int(x[-1])) <= 60  # starts and ends at silence
    # No discontinuity: the largest step is that of a smooth tone (A5 + its octave at 0.15)
    # at this peak, ~1.3x a bare A5 sine's; a click (a jump to the peak) would be ~8x that.
    peak = 32768 * 10 ** (CUE_LEVEL_DBFS / 20)
    smooth = peak * 2 * math.pi * 880 / SAMPLE_RATE * 1.4
    assert np.abs(np.diff(x.astype(np.int32))).max() <= smooth


def dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64), 1 << 15))
    return float(np.argmax(spec) * SAMPLE_RATE / (1 << 15))


def test_start_rises_and_stop_falls() -> None:
    start, stop = cue(CueKind.START), cue(CueKind.STOP)
    half = len(start) * 50 // 110
    assert dominant_hz(start[:half]) < dominant_hz(start[half:])
    assert dominant_hz(stop[:half]) > dominant_hz(stop[half:])
    assert abs(dominant_hz(start[:half]) - 659) < 15 and abs(dominant_hz(start[half:]) - 880) < 15


def test_cues_are_cached_and_read_only() -> None:
    assert cue(CueKind.START) is cue(CueKind.START)
    with pytest.raises(ValueError):
        cue(CueKind.START)[0] = 1


def play(player: CuePlayer, frames: int, n: int = 960) -> np.ndarray:
    out = []
    for _ in range(frames):
        f = np.zeros(n, dtype=np.int16)
        player.mix_into(f)
        out.append(f)
    return np.concatenate(out)


def test_player_plays_the_cue_across_frames_then_stops() -> None:
    player = CuePlayer()
    silent = np.zeros(960, dtype=np.int16)
    assert not player.mix_into(silent) and not silent.any()
    player.trigger(CueKind.START)
    assert player.active
    y = play(player, 8)
    x = cue(CueKind.START)
    assert np.array_equal(y[: len(x)], x) and not y[len(x) :].any()
    assert not player.active


def test_player_queues_one_cue_after_the_playing_one() -> None:
    player = CuePlayer()
    player.trigger(CueKind.START)
    play(player, 1, 480)
    player.trigger(CueKind.START)
    player.trigger(CueKind.STOP)  # replaces the waiting START: mashing does not queue up
    y = play(player, 25, 480)
    start, stop = cue(CueKind.START), cue(CueKind.STOP)
    assert np.array_equal(y[: len(start) - 480], start[480:])
    assert np.array_equal(y[len(start) - 480 : len(start) - 480 + len(stop)], stop)
    assert not y[len(start) - 480 + len(stop) :].any()


def test_player_mix_saturates_instead_of_wrapping() -> None:
    player = CuePlayer()
    player.trigger(CueKind.STOP)
    loud = np.full(960 * 6, 32000, dtype=np.int16)
    frames = [loud[i : i + 960] for i in range(0, len(loud), 960)]
    for f in frames:
        player.mix_into(f)
    x = cue(CueKind.STOP).astype(np.int32)
    expect = np.clip(32000 + x, -32768, 32767)
    assert np.array_equal(loud[: len(x)].astype(np.int32), expect)
    assert loud.min() > 0  # a wrap would have gone negative


def test_every_voice_starts_on_its_own_note_and_stops_on_it() -> None:
    from voipclient.audio.cues import NOTE_MS, VOICES

    first_note = SAMPLE_RATE * NOTE_MS[0] // 1000
    starts = []
    for voice, (f1, f2) in enumerate(VOICES):
        start, stop = cue(CueKind.START, voice), cue(CueKind.STOP, voice)
        assert dominant_hz(start[:first_note]) == pytest.approx(f1, abs=3)
        assert dominant_hz(stop[:first_note]) == pytest.approx(f2, abs=3)
        assert dominant_hz(stop[first_note:]) == pytest.approx(f1, abs=3)
        starts.append(round(dominant_hz(start[:first_note])))
    assert len(set(starts)) == len(VOICES)  # you hear which channel you keyed


def test_a_cue_plays_at_its_channels_placement_on_a_stereo_output() -> None:
    player = CuePlayer(960)
    player.trigger(CueKind.START, voice=1, pan=-1.0)
    out = np.zeros(2 * 960, dtype=np.int16)
    assert player.mix_into(out, channels=2)
    left, right = out[0::2], out[1::2]
    np.testing.assert_array_equal(left, cue(CueKind.START, 1)[:960])
    assert not right.any()
    player = CuePlayer(960)
    player.trigger(CueKind.START, voice=1, pan=0.5)  # the far side at 1 - |pan|
    out = np.zeros(2 * 960, dtype=np.int16)
    player.mix_into(out, channels=2)
    np.testing.assert_allclose(out[0::2], cue(CueKind.START, 1)[:960] * 0.5, atol=1)
    np.testing.assert_array_equal(out[1::2], cue(CueKind.START, 1)[:960])


def test_keying_two_channels_plays_both_cues_and_mashing_one_does_not_queue() -> None:
    player = CuePlayer(960)
    player.trigger(CueKind.START, voice=0)
    player.trigger(CueKind.START, voice=2)  # a second channel keyed at the same moment
    for _ in range(5):
        player.trigger(CueKind.STOP, voice=2)  # the same channel again and again: one waits
        player.trigger(CueKind.START, voice=2)
    y = play(player, 30, 480)
    n = len(cue(CueKind.START))
    np.testing.assert_array_equal(y[:n], cue(CueKind.START, 0))
    np.testing.assert_array_equal(y[n : 2 * n], cue(CueKind.START, 2))
    assert not y[2 * n :].any()
