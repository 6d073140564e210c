"""Loss-adaptive redundancy: the receiver's loss meter and the sender's level policy."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipclient.audio.payload import MAX_DISTANCE, MAX_REDUNDANT
from voipclient.audio.redundancy import (
    LEVEL_DISTANCES,
    MAX_LOSS_HINT,
    LossMeter,
    LossReport,
    RedundancyLevel,
    RedundancyPolicy,
    bitrate_cost,
    target_level,
)

FRAME_S = 0.02


def gilbert_drops(n: int, loss: float, burst: float, seed: int) -> list[bool]:
    """Gilbert loss pattern: P(loss | prev lost) = 1 - 1/burst, stationary loss ``loss``."""
    rng = random.Random(seed)
    stay = 1 - 1 / burst
    enter = loss * (1 - stay) / (1 - loss)
    lost, out = False, []
    for _ in range(n):
        lost = rng.random() < (stay if lost else enter)
        out.append(lost)
    return out


def measure(drops: list[bool], start: int = 0) -> list[LossReport]:
    """Run ``drops`` through a meter at 20 ms per frame, collecting the 2 s reports."""
    meter = LossMeter(7, 0.0)
    reports = []
    for i, dropped in enumerate(drops):
        now = i * FRAME_S
        if not dropped:
            meter.on_frame((start + i) % 2**32, now)
        if meter.report_due(now):
            reports.append(meter.take_report(now))
    return reports


def pooled(reports: list[LossReport]) -> tuple[float, float]:
    frames = sum(r.window_frames for r in reports)
    lost = sum(r.loss * r.window_frames for r in reports)
    runs = sum(r.loss * r.window_frames / r.burst for r in reports if r.burst)
    return lost / frames, lost / runs


def report(loss: float, burst: float = 0.0, frames: int = 100) -> LossReport:
    return LossReport(1, loss, burst, 5.0, frames)


# --- LossMeter -------------------------------------------------------------------------------


def test_meter_clean_path() -> None:
    reports = measure([False] * 1000)
    assert reports and all(r.loss == 0 and r.burst == 0 for r in reports)
    assert all(r.sender_id == 7 for r in reports)
    assert sum(r.window_frames for r in reports) == 901  # reports at 2, 4 .. 18 s


def test_meter_counts_known_gaps() -> None:
    drops = [False] * 101
    for i in (10, 20, 21, 30, 31, 32):
        drops[i] = True
    (r,) = measure(drops)[:1]
    assert r.window_frames == 101  # frames 0..100 at t=0..2 s
    assert r.loss == pytest.approx(6 / 101)
    assert r.burst == pytest.approx(2.0)


def test_meter_random_and_bursty_estimates() -> None:
    loss, burst = pooled(measure(gilbert_drops(20_000, 0.05, 1.0 + 1e-9, seed=1)))
    assert loss == pytest.approx(0.05, abs=0.01)
    assert burst < 1.2
    loss, burst = pooled(measure(gilbert_drops(20_000, 0.10, 2.0, seed=2)))
    assert loss == pytest.approx(0.10, abs=0.02)
    assert burst == pytest.approx(2.0, abs=0.3)


def test_meter_wraps_frame_numbers() -> None:
    drops = [i % 10 == 5 for i in range(500)]
    reports = measure(drops, start=2**32 - 200)
    assert pooled(reports)[0] == pytest.approx(0.1, abs=0.005)


def test_meter_silence_after_last_is_not_loss() -> None:
    meter = LossMeter(1, 0.0)
    for i in range(50):
        meter.on_frame(i, i * FRAME_S, last=i == 49)
    for i in range(60, 101):  # 10 frames of DTX silence, announced by ``last``
        meter.on_frame(i, i * FRAME_S)
    # a long gap without ``last`` is silence too
    for i in range(200, 210):
        meter.on_frame(i, i * FRAME_S)
    r = meter.take_report(4.2)
    assert r.loss == 0.0
    assert r.window_frames == 101


def test_meter_ignores_duplicates_and_late_frames() -> None:
    meter = LossMeter(1, 0.0)
    for i in range(100):
        meter.on_frame(i, i * FRAME_S)
        meter.on_frame(i, i * FRAME_S)
    assert meter.take_report(2.0).window_frames == 100
    meter.on_frame(50, 2.1)  # late, already reported
    for i in range(100, 150):
        meter.on_frame(i, i * FRAME_S)
    r = meter.take_report(4.0)
    assert (r.window_frames, r.loss) == (50, 0.0)


def test_meter_jitter() -> None:
    meter = LossMeter(1, 0.0)
    rng = random.Random(3)
    for i in range(500):
        meter.on_frame(i, i * FRAME_S + rng.uniform(0, 0.03))
    assert 3.0 < meter.take_report(10.0).jitter_ms < 20.0


def test_report_schedule() -> None:
    meter = LossMeter(1, 100.0, report_interval_s=2.0)
    assert not meter.report_due(101.9)
    assert meter.report_due(102.0)
    meter.take_report(102.0)
    assert not meter.report_due(103.9)
    assert meter.report_due(104.0)


# --- RedundancyPolicy ------------------------------------------------------------------------


def test_clean_path_stays_at_level_zero() -> None:
    policy = RedundancyPolicy()
    for r in measure([False] * 3000):
        policy.add_report(2, r, 0.0)
    assert policy.level(0.0) == RedundancyLevel(0, ())
    assert policy.level(0.0).tier == 0
    assert RedundancyPolicy().level(5.0) == RedundancyLevel(0, ())


def test_random_loss_raises_the_hint() -> None:
    policy = RedundancyPolicy()
    level = policy.add_report(2, report(0.02, 1.0), 0.0)
    assert level == RedundancyLevel(2, ())  # light random loss: FEC, no bits spent
    level = policy.add_report(2, report(0.05, 1.0), 2.0)
    assert level == RedundancyLevel(0, (1,))  # beyond: a full copy, and no hint


def test_measured_random_loss_raises_the_hint() -> None:
    policy = RedundancyPolicy()
    t = 0.0
    for r in measure(gilbert_drops(5000, 0.05, 1.0 + 1e-9, seed=4)):
        t += 2.0
        level = policy.add_report(2, r, t)
        assert level.tier >= 1
    assert policy.level(t).distances in ((1,), (1, 2))


def test_bursty_loss_adds_spaced_copies() -> None:
    policy = RedundancyPolicy()
    assert policy.add_report(2, report(0.10, 2.0), 0.0) == RedundancyLevel(0, (1, 2, 4))
    assert target_level(0.04, 2.0) == RedundancyLevel(0, (1, 2))  # bursty but rarer
    policy = RedundancyPolicy()
    t = 0.0
    for r in measure(gilbert_drops(5000, 0.10, 2.0, seed=5)):
        t += 2.0
        policy.add_report(2, r, t)
    assert policy.level(t).distances in ((1, 2), (1, 2, 4))
    assert target_level(0.02, 2.0).distances == (1,)  # rare but bursty: one copy


def test_falls_back_only_after_hold() -> None:
    policy = RedundancyPolicy(hold_s=10.0)
    policy.add_report(2, report(0.10, 2.0), 0.0)
    for t in range(2, 11, 2):
        assert policy.add_report(2, report(0.0), float(t)) == RedundancyLevel(0, (1, 2, 4))
    assert policy.add_report(2, report(0.0), 12.0) == RedundancyLevel(0, ())


def test_raises_at_once() -> None:
    policy = RedundancyPolicy()
    policy.add_report(2, report(0.0), 0.0)
    assert policy.add_report(2, report(0.25, 3.0), 0.1).distances == (1, 2, 4)


def test_worst_listener_wins() -> None:
    policy = RedundancyPolicy()
    policy.add_report(2, report(0.0), 0.0)
    policy.add_report(3, report(0.12, 2.0), 0.5)
    policy.add_report(4, report(0.02, 1.0), 1.0)
    assert policy.level(1.0) == RedundancyLevel(0, (1, 2, 4))
    policy.forget(3)
    assert policy.level(1.0) == RedundancyLevel(2, ())


def test_tiny_windows_are_ignored() -> None:
    policy = RedundancyPolicy()
    assert policy.add_report(2, report(0.5, 2.0, frames=3), 0.0) == RedundancyLevel(0, ())


# --- cost table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distances", "cost"),
    [((), 0), ((1,), 33_200), ((1, 2), 66_400), ((1, 2, 4), 99_600)],
)
def test_cost_table_32k_20ms(distances: tuple[int, ...], cost: int) -> None:
    assert bitrate_cost(RedundancyLevel(5, distances), 32_000, 20) == cost


def test_cost_other_settings() -> None:
    assert bitrate_cost(RedundancyLevel(0, ()), 32_000, 20) == 0
    assert bitrate_cost(RedundancyLevel(5, (2,)), 24_000, 20) == (60 + 3) * 8 * 50
    assert bitrate_cost(RedundancyLevel(5, (2,)), 32_000, 40) == (160 + 3) * 8 * 25
    with pytest.raises(ValueError):
        bitrate_cost(RedundancyLevel(0, ()), 0, 20)


def test_table_fits_the_payload() -> None:
    for distances in LEVEL_DISTANCES:
        assert len(distances) <= MAX_REDUNDANT
        assert list(distances) == sorted(set(distances))
        assert all(1 <= d <= MAX_DISTANCE for d in distances)


# --- properties ------------------------------------------------------------------------------

reports_st = st.builds(
    LossReport,
    sender_id=st.integers(0, 2**32 - 1),
    loss=st.floats(allow_nan=True, allow_infinity=True),
    burst=st.floats(allow_nan=True, allow_infinity=True),
    jitter_ms=st.floats(allow_nan=True),
    window_frames=st.integers(-5, 10_000),
)


@given(
    st.lists(
        st.tuples(st.integers(0, 5), reports_st, st.floats(0, 1e6, allow_nan=False)),
        max_size=40,
    )
)
def test_level_always_in_table(steps: list[tuple[int, LossReport, float]]) -> None:
    policy = RedundancyPolicy()
    for listener, r, now in steps:
        level = policy.add_report(listener, r, now)
        assert level.distances in LEVEL_DISTANCES
        assert 0 <= level.loss_hint_percent <= MAX_LOSS_HINT
        assert (level.loss_hint_percent > 0) == (level.tier == 1)
        assert level.distances == LEVEL_DISTANCES[level.tier]
        assert bitrate_cost(level, 32_000, 20) in (0, 33_200, 66_400, 99_600)


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.booleans()), max_size=200))
def test_meter_never_raises(frames: list[tuple[int, bool]]) -> None:
    meter = LossMeter(1, 0.0)
    for i, (frame_no, last) in enumerate(frames):
        meter.on_frame(frame_no, i * FRAME_S, last)
        if meter.report_due(i * FRAME_S):
            r = meter.take_report(i * FRAME_S)
            assert 0.0 <= r.loss <= 1.0
            assert r.window_frames >= 0
