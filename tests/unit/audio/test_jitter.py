"""Jitter buffer tests from synthetic arrival traces (no audio, no clock: times are passed in)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.audio.jitter import (
    Conceal,
    End,
    FadeOut,
    JitterBuffer,
    Play,
    PlayFec,
    PlayoutDecision,
    Silence,
)

T = 0.020  # s per frame
PHASE = 0.013  # s: playback clock offset against the sender's frame grid


def pkt(n: int) -> bytes:
    return n.to_bytes(4, "big")


def run(
    jb: JitterBuffer,
    arrivals: list[tuple[float, int, bool]],
    pops: int,
    pop_period: float = T,
) -> list[tuple[float, PlayoutDecision]]:
    """Feed (arrival s, frame_no, last) events and ``pops`` playback ticks in time order."""
    events = sorted(arrivals)
    out: list[tuple[float, PlayoutDecision]] = []
    i = 0
    for k in range(pops):
        now = PHASE + k * pop_period
        while i < len(events) and events[i][0] <= now:
            at, n, last = events[i]
            jb.push(n % (1 << 32), pkt(n % (1 << 32)), at, last)
            i += 1
        out.append((now, jb.pop(now)))
    return out


def played_frames(out: list[tuple[float, PlayoutDecision]]) -> list[int]:
    return [int.from_bytes(d.payload, "big") for _, d in out if isinstance(d, Play)]


def spurts(
    frames: int, on: int, off: int, jitter: float, seed: int
) -> list[tuple[float, int, bool]]:
    """Talk spurts of ``on`` frames then ``off`` silent frames; uniform jitter in [0, jitter] s."""
    rng = random.Random(seed)
    out = []
    for n in range(frames):
        if n % (on + off) < on:
            last = n % (on + off) == on - 1
            out.append((n * T + 0.005 + rng.uniform(0.0, jitter), n, last))
    return out


def test_clean_path_plays_every_frame_with_at_most_one_frame_added() -> None:
    jb = JitterBuffer()
    arrivals = [(n * T + 0.005, n, n == 499) for n in range(500)]
    out = run(jb, arrivals, 505)
    assert played_frames(out) == list(range(500))
    decisions = [d for _, d in out]
    first = next(i for i, d in enumerate(decisions) if isinstance(d, Play))
    assert all(isinstance(d, Play) for d in decisions[first : first + 500])
    s = jb.stats
    assert s.current_delay_ms <= T * 1000
    assert s.target_delay_ms == pytest.approx(0.0, abs=1e-6)
    assert s.late == s.concealed == s.fec_recovered == s.dropped == 0


def test_jitter_20ms_and_50ms_target_tracks_p95_then_shrinks() -> None:
    for jitter in (0.020, 0.050):
        jb = JitterBuffer()
        rng = random.Random(7)
        on, off = 50, 10
        arrivals = []
        for n in range(2000):
            if n % (on + off) < on:
                j = rng.uniform(0.0, jitter) if n < 1000 else 0.0
                arrivals.append((n * T + 0.005 + j, n, n % (on + off) == on - 1))
        events = sorted(arrivals)
        i = 0
        target_at_500 = 0.0
        late_after_convergence = 0
        calm_frames = None
        for k in range(2010):
            now = PHASE + k * T
            while i < len(events) and events[i][0] <= now:
                at, n, last = events[i]
                before = jb.stats.late
                jb.push(n, pkt(n), at, last)
                if k >= 180 and n < 1000:  # converged after three spurts
                    late_after_convergence += jb.stats.late - before
                i += 1
            jb.pop(now)
            if k == 500:
                target_at_500 = jb.stats.target_delay_ms
            if k > 1000 and calm_frames is None and jb.stats.target_delay_ms <= T * 1000 / 2:
                calm_frames = k - 1000
        p95 = 0.95 * jitter * 1000
        # Target ~ the jitter's 95th percentile (+10 % headroom), not more than a frame above it.
        assert p95 * 0.9 <= target_at_500 <= p95 * 1.1 + 1.0, (jitter, target_at_500)
        assert late_after_convergence == 0, jitter
        # Shrinks back once the jitter samples have left the 100-packet window: ~100 frames
        # (2 s of 20 ms frames, counting the pauses' 20 % of missing packets ~ 120 frames).
        assert calm_frames is not None
        print(f"jitter {jitter * 1000:.0f} ms: target {target_at_500:.1f} ms, shrink {calm_frames}")
        assert calm_frames <= 125, (jitter, calm_frames)
        # And the shrunken target is applied at the next talk spurt.
        assert jb.stats.current_delay_ms <= T * 1000


def test_reordering_within_target_plays_in_order() -> None:
    jb = JitterBuffer(min_delay_ms=60)
    arrivals = []
    for n in range(200):
        at = n * T + 0.005
        if n % 10 == 3:
            at += 0.030  # arrives after frame n + 1
        arrivals.append((at, n, False))
    out = run(jb, arrivals, 215)
    assert played_frames(out) == list(range(200))
    assert jb.stats.reordered > 0
    assert jb.stats.late == 0


def test_single_loss_with_next_packet_present_is_played_from_fec() -> None:
    jb = JitterBuffer(min_delay_ms=20)  # the next packet is here when the lost one is due
    arrivals = [(n * T + 0.005, n, False) for n in range(100) if n != 40]
    out = run(jb, arrivals, 110)
    decisions = [d for _, d in out if not isinstance(d, Silence)]
    fec = [d for d in decisions if isinstance(d, PlayFec)]
    assert fec == [PlayFec(pkt(41))]
    assert played_frames(out) == [n for n in range(100) if n != 40]
    assert jb.stats.fec_recovered == 1
    # After a loss the buffer waits one frame for FEC.
    assert jb.stats.target_delay_ms >= T * 1000


def test_loss_on_clean_path_adds_one_frame_for_fec_at_next_spurt() -> None:
    jb = JitterBuffer()
    arrivals = [(n * T + 0.005, n, n == 49) for n in range(50) if n != 20]
    arrivals += [(n * T + 0.005, n, False) for n in range(60, 120)]
    out = run(jb, arrivals, 125)
    assert jb.stats.target_delay_ms == pytest.approx(T * 1000)
    assert played_frames(out)[-1] == 119
    assert jb.stats.current_delay_ms <= 2 * T * 1000


def test_burst_loss_conceals_up_to_bound_then_fades_out() -> None:
    jb = JitterBuffer(max_conceal=3)
    arrivals = [(n * T + 0.005, n, False) for n in range(30)]
    arrivals += [(n * T + 0.005, n, n == 59) for n in range(40, 60)]
    out = run(jb, arrivals, 62)
    decisions = [d for _, d in out]
    i = decisions.index(Play(pkt(29)))
    assert decisions[i + 1 : i + 6] == [Conceal(1), Conceal(2), Conceal(3), FadeOut(), Silence()]
    assert played_frames(out) == list(range(30)) + list(range(40, 60))
    assert jb.stats.concealed == 3


def test_duplicates_counted_and_dropped() -> None:
    jb = JitterBuffer()
    arrivals = [(n * T + 0.005, n, False) for n in range(50)]
    arrivals += [(n * T + 0.006, n, False) for n in range(10, 20)]
    out = run(jb, arrivals, 55)
    assert played_frames(out) == list(range(50))
    assert jb.stats.duplicate == 10


def test_late_packet_dropped_and_counted() -> None:
    jb = JitterBuffer(fec=False)
    arrivals = [(n * T + 0.005, n, n == 49) for n in range(50) if n != 25]
    arrivals.append((25 * T + 0.2, 25, False))  # 200 ms late: frame 25 is long concealed
    out = run(jb, arrivals, 55)
    assert 25 not in played_frames(out)
    assert jb.stats.late == 1
    assert jb.stats.concealed == 1


def test_voice_last_ends_after_draining_then_new_spurt_restarts() -> None:
    jb = JitterBuffer()
    arrivals = [(n * T + 0.005, n, n == 29) for n in range(30)]
    arrivals += [(n * T + 0.005, n, n == 129) for n in range(100, 130)]
    out = run(jb, arrivals, 135)
    decisions = [d for _, d in out]
    i = decisions.index(Play(pkt(29)))
    assert decisions[i + 1] == End()
    assert all(isinstance(d, Silence) for d in decisions[i + 2 : i + 60])
    assert played_frames(out) == list(range(30)) + list(range(100, 130))
    assert decisions.count(End()) == 2
    assert jb.stats.concealed == 0


def test_frame_number_wraps_at_2_pow_32() -> None:
    jb = JitterBuffer()
    start = (1 << 32) - 50
    arrivals = [(k * T + 0.005, start + k, k == 99) for k in range(100)]
    out = run(jb, arrivals, 105)
    assert played_frames(out) == [(start + k) % (1 << 32) for k in range(100)]
    assert jb.stats.late == 0
    assert jb.stats.concealed == 0


def test_clock_drift_half_percent_over_60s_is_absorbed() -> None:
    for skew in (+0.005, -0.005):
        jb = JitterBuffer()
        frames = 3000  # 60 s of 20 ms frames, continuous speech (worst case: no silence)
        arrivals = [(n * T * (1 + skew) + 0.005, n, False) for n in range(frames)]
        max_buffered = 0
        max_delay = 0.0
        out: list[PlayoutDecision] = []
        events = sorted(arrivals)
        i = 0
        for k in range(int(frames * (1 + skew)) + 5):
            now = PHASE + k * T
            while i < len(events) and events[i][0] <= now:
                jb.push(events[i][1], pkt(events[i][1]), events[i][0])
                i += 1
            out.append(jb.pop(now))
            max_buffered = max(max_buffered, jb.buffered)
            max_delay = max(max_delay, jb.stats.current_delay_ms)
        s = jb.stats
        assert max_buffered <= 4, skew
        assert max_delay <= 3 * T * 1000, (skew, max_delay)
        # 0.5 % of 3000 frames = 15 frames to drop (sender fast) or stretch (sender slow).
        assert s.dropped + s.concealed + s.fec_recovered <= 40, (skew, s)
        assert s.played >= frames - 40


def test_stats_fields() -> None:
    jb = JitterBuffer()
    s = jb.stats
    assert (s.received, s.played, s.current_delay_ms, s.target_delay_ms) == (0, 0, 0.0, 0.0)
    assert isinstance(jb.pop(0.0), Silence)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.integers(min_value=0, max_value=(1 << 32) - 1) | st.integers(0, 300),
            st.floats(min_value=0.0, max_value=0.5),
            st.booleans(),
        ),
        st.tuples(
            st.just("pop"), st.just(0), st.floats(min_value=0.0, max_value=0.05), st.just(False)
        ),
    ),
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(0, 6), st.floats(0.0, 200.0))
def test_arbitrary_push_pop_never_raises_and_stays_bounded(
    seq: list[tuple[str, int, float, bool]], max_conceal: int, min_delay: float
) -> None:
    jb = JitterBuffer(max_conceal=max_conceal, min_delay_ms=min_delay, max_delay_ms=200.0)
    now = 0.0
    for op, n, dt, last in seq:
        now += dt
        if op == "push":
            jb.push(n, b"x", now, last)
        else:
            d = jb.pop(now)
            assert isinstance(d, Play | PlayFec | Conceal | FadeOut | Silence | End)
            if isinstance(d, Conceal):
                assert d.n <= max_conceal
            else:
                assert jb.buffered <= jb.capacity
        s = jb.stats
        assert 0.0 <= s.target_delay_ms <= 200.0


def run_with_copies(
    jb: JitterBuffer, lost: set[int], frames: int, distances: tuple[int, ...], pops: int
) -> list[tuple[float, PlayoutDecision]]:
    """Like :func:`run`, but each packet also carries copies of frames ``distances`` back
    (placed with ``push_recovered``), as the receive pipeline does with redundant payloads."""
    out: list[tuple[float, PlayoutDecision]] = []
    arrivals = [(n * T + 0.005, n) for n in range(frames) if n not in lost]
    i = 0
    for k in range(pops):
        now = PHASE + k * pop_period_default()
        while i < len(arrivals) and arrivals[i][0] <= now:
            at, n = arrivals[i]
            jb.push(n, pkt(n), at)
            for d in distances:
                if n - d >= 0:
                    jb.push_recovered(n - d, pkt(n - d))
            i += 1
        out.append((now, jb.pop(now)))
    return out


def pop_period_default() -> float:
    return T


def test_bursts_of_three_recovered_from_copies_at_depth_four() -> None:
    jb = JitterBuffer()
    jb.set_redundancy_depth(4)
    # an early loss, then bursts of 3 lost datagrams; each frame has copies 2 and 4 frames later
    lost = {10, 50, 51, 52, 80, 81, 82}
    out = run_with_copies(jb, lost, 120, (2, 4), 140)
    played = played_frames(out)
    assert played == [n for n in range(120) if n != 10]  # every burst frame played whole
    assert not any(isinstance(d, PlayFec) for _, d in out)  # copies beat FEC
    assert jb.stats.recovered == 6
    # The first burst stretched the delay (concealment in place, nothing skipped) up to the
    # depth; the second burst then needed no concealment at all.
    i80 = next(k for k, (_, d) in enumerate(out) if d == Play(pkt(79)))
    assert [d for _, d in out[i80 + 1 : i80 + 5]] == [Play(pkt(n)) for n in (80, 81, 82, 83)]
    # waiting for copies 4 frames back costs 4 frames of delay while loss is recent
    assert jb.stats.target_delay_ms == pytest.approx(4 * T * 1000)
    assert jb.stats.current_delay_ms <= 4 * T * 1000 + 10


def test_recovered_copy_never_replaces_a_received_or_played_frame() -> None:
    jb = JitterBuffer()
    jb.push(0, pkt(0), 0.0)
    assert jb.pop(0.0) == Play(pkt(0))
    jb.push(1, pkt(1), 0.02)
    assert jb.push_recovered(1, b"copy") is False  # received already
    assert jb.push_recovered(0, b"copy") is False  # already played
    assert jb.push_recovered(3, b"copy") is True  # missing and not due: placed
    assert jb.push_recovered(3, b"again") is False
    jb.push(3, pkt(3), 0.06)  # the real packet arrives before its turn: it replaces the copy
    assert jb.stats.duplicate == 0
    assert jb.stats.recovered == 0
    jb.push(3, pkt(3), 0.07)  # and a second one is a duplicate
    assert jb.stats.duplicate == 1


def test_recovered_copy_before_any_packet_is_ignored() -> None:
    jb = JitterBuffer()
    assert jb.push_recovered(5, b"copy") is False
    assert jb.buffered == 0


def test_redundancy_depth_range_checked() -> None:
    jb = JitterBuffer()
    with pytest.raises(Exception, match="redundancy depth"):
        jb.set_redundancy_depth(0)
    jb.set_redundancy_depth(6)
    assert jb.redundancy_depth == 6


def test_sender_timing_noise_on_a_clean_path_adds_no_frame() -> None:
    """0-2.5 ms of send-time noise (an encoder's varying CPU time) must not cost a whole frame
    when the output ticks fall outside that noise band (inside it, one frame is unavoidable)."""
    for phase in (0.004, 0.011, 0.019):
        jb = JitterBuffer()
        rng = random.Random(5)
        arrivals = [(n * T + rng.uniform(0.0, 0.0025), n, n == 199) for n in range(200)]
        out = run_at_phase(jb, arrivals, 205, phase)
        first = next(k for k, d in enumerate(out) if isinstance(d, Play))
        assert first == 0  # frame 0 plays at the first tick after it arrived
        assert jb.stats.played == 200 and jb.stats.concealed == 0
        assert jb.stats.current_delay_ms < T * 1000


def run_at_phase(
    jb: JitterBuffer, arrivals: list[tuple[float, int, bool]], pops: int, phase: float
) -> list[PlayoutDecision]:
    out = []
    i = 0
    for k in range(pops):
        now = phase + k * T
        while i < len(arrivals) and arrivals[i][0] <= now:
            at, n, last = arrivals[i]
            jb.push(n, pkt(n), at, last)
            i += 1
        out.append(jb.pop(now))
    return out


def test_delay_shrinks_back_during_continuous_speech() -> None:
    """50 ms jitter for 10 s, then a clean path, with no pause at all (hot mic)."""
    jb = JitterBuffer()
    rng = random.Random(9)
    frames = 1500  # 30 s
    arrivals = sorted(
        (n * T + 0.005 + (rng.uniform(0, 0.05) if n < 500 else 0.0), n, False)
        for n in range(frames)
    )
    delays = []
    out = []
    i = 0
    for k in range(frames):
        now = PHASE + k * T
        while i < len(arrivals) and arrivals[i][0] <= now:
            jb.push(arrivals[i][1], pkt(arrivals[i][1]), arrivals[i][0])
            i += 1
        out.append((now, jb.pop(now)))
        delays.append(jb.stats.current_delay_ms)
    assert max(delays[300:500]) >= 40  # the jitter was absorbed ...
    # ... and the delay came back down without a pause, to within one frame of the clean path
    assert max(delays[1000:]) < 2 * T * 1000
    assert jb.stats.shrunk >= 2
    played = played_frames(out)
    assert played == sorted(played)  # never out of order


def test_frames_rebuilt_from_copies_keep_the_wait_for_copies() -> None:
    """Steady 10 % random loss with copies at 1, 2, 4: a frame rebuilt from a copy still counts
    as loss, so the buffer keeps its depth and later losses are rebuilt too (it must not shrink
    back and start concealing once no loss has needed concealment for a while)."""
    jb = JitterBuffer()
    jb.set_redundancy_depth(4)
    rng = random.Random(11)
    frames = 3000  # 60 s
    lost = {n for n in range(frames) if rng.random() < 0.10}
    out = run_with_copies(jb, lost, frames, (1, 2, 4), frames + 20)
    stats = jb.stats
    assert stats.recovered >= len(lost) * 0.9
    assert stats.shrunk == 0
    late_conceal = [
        k for k, (_, d) in enumerate(out) if isinstance(d, Conceal) and 500 < k < frames - 50
    ]
    assert len(late_conceal) <= 5, late_conceal


def test_a_late_original_replaces_the_copy_that_stood_in_for_it() -> None:
    """Compact copies are lower-bitrate encodings: when frame 5 itself arrives (reordered)
    after frame 6's payload placed a copy of it, and before its turn, the original plays."""
    jb = JitterBuffer(frame_ms=20)
    jb.set_redundancy_depth(2)
    for n in range(5):
        jb.push(n, b"orig%d" % n, n * 0.02)
    jb.push(6, b"orig6", 6 * 0.02)
    assert jb.push_recovered(5, b"copy5")
    jb.push(5, b"orig5", 6 * 0.02 + 0.005)  # late, but before it is due
    played = []
    t = 0.0
    while len(played) < 7 and t < 1.0:
        d = jb.pop(t)
        if isinstance(d, Play):
            played.append(d.payload)
        t += 0.02
    assert b"orig5" in played and b"copy5" not in played
    stats = jb.stats
    assert stats.recovered == 0 and stats.duplicate == 0
    # a copy arriving after the original changes nothing
    assert not jb.push_recovered(6, b"copy6")
