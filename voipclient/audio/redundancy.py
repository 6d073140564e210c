"""Loss-adaptive redundancy policy, pure (time is passed in, nothing here does I/O).

Receivers measure each sender's path with a :class:`LossMeter` and send a :class:`LossReport`
every ``report_interval_s`` over the control channel. The sender feeds every listener's reports
to one :class:`RedundancyPolicy` (it encodes each frame once for all its channels, so the worst
listener heard in the last ``hold_s`` decides) and applies the resulting
:class:`RedundancyLevel`: ``OpusEncoder.set_loss_percent(level.loss_hint_percent)`` and, per
frame, copies of the frames ``level.distances`` back in the voice payload
(:func:`~voipclient.audio.payload.encode_payload_fitting`).

Why the loss hint starts at 0 and follows measured loss: BENCHMARKS §1 — telling Opus to expect
10 % loss on a clean path costs 0.47 PESQ, while in-band FEC (which carries the previous frame at
lower quality) recovers ~90 % of random single losses but only ~50 % in bursts. Measured through
:mod:`voipclient.audio.voice` with real libopus (8 s of speech, similarity to the source, clean =
0.964; ``tests/unit/audio/test_voice.py``): the FEC hint itself is what costs quality — hint 20 %
scores 0.927 with *no* loss, and at 20 % random loss FEC alone gives 0.92 whatever copies are added
on top — whereas full-quality copies of earlier frames with the hint at 0 give 0.96 at 10 % and
20 % random loss, i.e. loss-free quality. So: FEC for light random loss (it costs no bits), full
copies and no FEC hint beyond that (they cost bits, reported below).

Copies at distances ``(1, 2, 4)`` recover every burst of up to 4 lost datagrams (frame ``n`` of a
burst ``n..n+3`` is in ``n+4``'s copy at 4, ``n+1`` in ``n+5``'s at 4, ``n+2`` in ``n+4``'s at 2,
``n+3`` in ``n+4``'s at 1); the receiver waits up to the largest distance only while it sees loss.

Levels (``tier`` → copies) and what each costs at 32 kb/s, 20 ms frames (80-byte packets; each
copy is the packet plus 3 bytes of framing, 83 B x 50 frames/s; the FEC hint adds no bits, Opus
spends part of the same bitrate on it)::

    tier  when (worst listener over the last hold_s)        hint   distances   extra bits/s
    0     loss < 1 %                                        0      ()          0
    1     loss 1-3 %, random (mean burst < 1.5)             loss   ()          0
    2     loss >= 3 %, or bursty                            0      (1,)        33 200
    3     loss >= 8 %, or bursty and loss >= 3 %            0      (1, 2)      66 400
    4     loss >= 15 %, or bursty and loss >= 5 %           0      (1, 2, 4)   99 600

Tier 1's hint is the measured loss, rounded up, capped at :data:`MAX_LOSS_HINT`.

Hysteresis: a report raises the level at once; the level is the worst over the reports of the
last ``hold_s`` (10 s), so it only falls once the path stayed clean that long. With no reports
in that window (nobody listening, or nobody heard us) the level is 0.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

from voipclient.audio.payload import FRAME_NO_MODULUS, REDUNDANT_OVERHEAD

__all__ = [
    "LEVEL_DISTANCES",
    "MAX_LOSS_HINT",
    "LossMeter",
    "LossReport",
    "RedundancyLevel",
    "RedundancyPolicy",
    "bitrate_cost",
    "target_level",
]

#: Copies per tier (index = tier). See the module docstring for when each applies.
LEVEL_DISTANCES: Final[tuple[tuple[int, ...], ...]] = ((), (), (1,), (1, 2), (1, 2, 4))
MAX_LOSS_HINT: Final = 30  # percent; beyond this FEC only takes bitrate from the primary
CLEAN_LOSS: Final = 0.01  # below this the path is clean: hint 0, no copies
BURSTY: Final = 1.5  # mean burst length from which losses count as bursty
MIN_REPORT_FRAMES: Final = 10  # reports over fewer frames carry no information
_HALF: Final = FRAME_NO_MODULUS // 2


@dataclass(frozen=True, slots=True)
class LossReport:
    """A receiver's view of one sender's path over ``window_frames`` frames."""

    sender_id: int
    loss: float  # fraction of frames lost, 0..1
    burst: float  # mean length of a loss run (0 when nothing was lost)
    jitter_ms: float  # RFC 3550-style interarrival jitter
    window_frames: int  # frames expected in the window (received + lost)


@dataclass(frozen=True, slots=True)
class RedundancyLevel:
    """What the sender does: the Opus FEC hint and which earlier frames to copy."""

    loss_hint_percent: int
    distances: tuple[int, ...] = ()

    @property
    def tier(self) -> int:
        """The row of the table (0 = clean path)."""
        if not self.distances:
            return 1 if self.loss_hint_percent > 0 else 0
        return LEVEL_DISTANCES.index(self.distances)


LEVEL_CLEAN: Final = RedundancyLevel(0, ())


def _tier_for(loss: float, burst: float) -> int:
    if loss < CLEAN_LOSS:
        return 0
    if loss >= 0.15 or (burst >= BURSTY and loss >= 0.05):
        return 4
    if loss >= 0.08 or (burst >= BURSTY and loss >= 0.03):
        return 3
    if loss >= 0.03 or burst >= BURSTY:
        return 2
    return 1


def target_level(loss: float, burst: float) -> RedundancyLevel:
    """The level one measurement alone asks for (no hysteresis)."""
    loss = min(1.0, max(0.0, loss)) if math.isfinite(loss) else 1.0
    burst = max(0.0, burst) if math.isfinite(burst) else 0.0
    tier = _tier_for(loss, burst)
    if tier == 0:
        return LEVEL_CLEAN
    if tier >= 2:
        return RedundancyLevel(0, LEVEL_DISTANCES[tier])  # full copies; a hint only costs quality
    hint = min(MAX_LOSS_HINT, max(1, math.ceil(loss * 100 - 1e-9)))
    return RedundancyLevel(hint, ())


def bitrate_cost(level: RedundancyLevel, opus_bitrate: int, frame_ms: int) -> int:
    """Extra bits/s the level's copies add at a nominal Opus bitrate (the FEC hint adds none)."""
    if opus_bitrate <= 0 or frame_ms <= 0:
        raise ValueError("opus_bitrate and frame_ms must be positive")
    packet_bytes = math.ceil(opus_bitrate * frame_ms / 8000)
    per_frame = len(level.distances) * (packet_bytes + REDUNDANT_OVERHEAD) * 8
    return round(per_frame * 1000 / frame_ms)


class LossMeter:
    """Receiver side, one per sender: loss, burstiness and jitter of the frames that arrive.

    Frame numbers count on through DTX silence (PROTOCOL §3), so a gap after a frame flagged
    ``last`` (end of a talk spurt) or longer than ``max_gap_frames`` is silence, not loss.
    """

    def __init__(
        self,
        sender_id: int,
        now: float,
        *,
        report_interval_s: float = 2.0,
        frame_ms: int = 20,
        max_gap_frames: int = 25,
    ) -> None:
        self.sender_id = sender_id
        self.report_interval_s = report_interval_s
        self.frame_s = frame_ms / 1000
        self.max_gap_frames = max_gap_frames
        self._next_report = now + report_interval_s
        self._highest: int | None = None  # extended (unwrapped) frame number
        self._floor: int | None = None  # last frame counted in a previous report
        self._floor_last = False
        self._received: dict[int, bool] = {}  # ext frame → flagged last
        self._jitter_s = 0.0
        self._prev_arrival: tuple[int, float] | None = None

    def _extend(self, frame_no: int) -> int:
        fn = frame_no % FRAME_NO_MODULUS
        if self._highest is None:
            return fn
        diff = (fn - self._highest + _HALF) % FRAME_NO_MODULUS - _HALF
        return self._highest + diff

    def on_frame(self, frame_no: int, now: float, last: bool = False) -> None:
        """A payload of sender frame ``frame_no`` (u32) arrived at ``now`` (s)."""
        ext = self._extend(frame_no)
        if self._floor is not None and ext <= self._floor:
            return  # late for a window already reported
        if self._highest is None or ext > self._highest:
            self._highest = ext
        if ext in self._received:
            return
        self._received[ext] = last
        if self._prev_arrival is not None:
            prev_ext, prev_now = self._prev_arrival
            gap = ext - prev_ext
            if 0 < gap <= self.max_gap_frames:
                d = abs((now - prev_now) - gap * self.frame_s)
                self._jitter_s += (d - self._jitter_s) / 16
        self._prev_arrival = (ext, now)

    def report_due(self, now: float) -> bool:
        return now >= self._next_report

    def take_report(self, now: float) -> LossReport:
        """Summarise the frames since the previous report and start a new window."""
        frames = sorted(self._received)
        lost = runs = 0
        prev, prev_last = self._floor, self._floor_last
        for ext in frames:
            if prev is not None and not prev_last:
                missing = ext - prev - 1
                if 0 < missing <= self.max_gap_frames:
                    lost += missing
                    runs += 1
            prev, prev_last = ext, self._received[ext]
        expected = len(frames) + lost
        report = LossReport(
            sender_id=self.sender_id,
            loss=lost / expected if expected else 0.0,
            burst=lost / runs if runs else 0.0,
            jitter_ms=self._jitter_s * 1000,
            window_frames=expected,
        )
        if frames:
            self._floor, self._floor_last = frames[-1], self._received[frames[-1]]
        self._received.clear()
        while self._next_report <= now:
            self._next_report += self.report_interval_s
        return report


class RedundancyPolicy:
    """Sender side: the worst listener's reports over the last ``hold_s`` decide the level.

    Raises at once on a bad report; falls back only when no bad report is left in the window.
    """

    def __init__(self, hold_s: float = 10.0) -> None:
        self.hold_s = hold_s
        self._reports: deque[tuple[float, int, RedundancyLevel]] = deque()

    def add_report(self, listener_id: int, report: LossReport, now: float) -> RedundancyLevel:
        """Take one listener's report about us; returns the level to use from now."""
        if report.window_frames >= MIN_REPORT_FRAMES:
            self._reports.append((now, listener_id, target_level(report.loss, report.burst)))
        return self.level(now)

    def forget(self, listener_id: int) -> None:
        """A listener left: its reports no longer count."""
        self._reports = deque(r for r in self._reports if r[1] != listener_id)

    def level(self, now: float) -> RedundancyLevel:
        self._reports = deque(r for r in self._reports if now - r[0] <= self.hold_s)
        if not self._reports:
            return LEVEL_CLEAN
        tier = max(lv.tier for _, _, lv in self._reports)
        if tier >= 2:
            return RedundancyLevel(0, LEVEL_DISTANCES[tier])
        hint = max(lv.loss_hint_percent for _, _, lv in self._reports)
        return RedundancyLevel(hint, LEVEL_DISTANCES[tier])
