"""Loss-adaptive, congestion-aware redundancy policy, pure (time is passed in, no I/O here).

Receivers measure each sender's path with a :class:`LossMeter` and send a :class:`LossReport`
over the control channel: every 0.5 s for the first 3 s of a stream (and after a long silence),
every 2 s after that. The sender feeds every listener's reports to one :class:`RedundancyPolicy`
(it encodes each frame once for all its channels, so the worst listener heard in the last
``hold_s`` decides) and applies the resulting :class:`RedundancyLevel`:
``OpusEncoder.set_loss_percent(level.loss_hint_percent)``, the primary bitrate capped at
``level.bitrate_cap`` and, per frame, copies of the frames ``level.distances`` back in the voice
payload (:func:`~voipclient.audio.payload.encode_payload_fitting`).

**Compact copies** (issue 15). A copy is not the primary packet again: a second Opus encoder fed
the same audio at ``level.copy_bitrate`` (16 kb/s wideband, 40-byte packets) makes it, the way
WebRTC's RED with a low-rate encoding and Opus's own LBRR do. A frame the network lost and a
copy saved plays at that lower rate; measured (``benchmarks/voice_quality.py``) at 10 % random
loss this keeps PESQ-WB within 0.1-0.2 of full copies at 60-70 % of their bitrate. The FEC hint is
not used by this policy: with libopus 1.3.1 it takes its bits from every frame.

Levels (``tier`` → copies; what the copies add on the wire at 32 kb/s, 20 ms frames: a copy is
its 40-byte packet plus 3 bytes of framing, 50 times a second; full copies, the milestone-1
policy kept as :data:`LEGACY`, were 83 bytes, and its tier 1 was the FEC hint alone)::

    tier  when (worst listener over the last hold_s)  hint  distances                extra b/s
    0     loss < 1 %                                  0     ()                       0
    2     loss >= 1 %, or bursty; cold start          0     (1,)                     17 200
    3     loss >= 8 %, or bursty and loss >= 3 %      0     (1, 2)                   34 400
    4     loss >= 15 %, or bursty and loss >= 5 %     0     (1, 2, 3) / bursty 1,2,4 51 600

While copies are on, and while congestion caps the primary, the primary is limited to wideband
(0-8 kHz): a frame rebuilt from a copy then does not switch the decoder's band (measured:
docs/audio-dsp.md).

Distances trade delay against burst protection: the receiver waits up to the farthest copy only
while it sees loss, so random loss up to 15 % costs at most 40 ms (copies 1 and 2 back recover
any run of 2); bursty loss gets the copy 4 back (a run of 4) at 80 ms.

**Cold start.** A session, or a talker that has heard no report for ``memory_s``, starts with
light protection (tier 2, or what the path memory of the last session to this server says,
:meth:`RedundancyPolicy.memory`) until reports covering :data:`EVIDENCE_FRAMES` frames say the
path is clean; a bad report raises the level at once, as always. Without fresh reports but with
some in the last ``memory_s`` (a push-to-talk pause), the level learned last stays.

**Congestion.** Every level has a wire bitrate (:func:`wire_bitrate`). The policy remembers,
per listener, the loss measured at each rate (a report counts only when one rate was in force
over its whole window). When loss at a higher rate is significantly above the loss at the lower
rate the sender came from (a two-proportion test, at least 3 points), the sender is feeding a
congested link: the rate is capped at the lower one. If loss stays high at the cap, the cap steps
down by 15 % (smaller copies, fewer copies, then a lower primary bitrate, down to 16 kb/s); if
stepping down did not lower the loss, the loss was not ours and the cap is lifted. A cap is
probed upwards after 20 s of a clean path (then 40, 80 s... after each failed probe).

Hysteresis: a report raises the level at once; the level is the worst over the reports of the
last ``hold_s`` (10 s), so it only falls once the path stayed clean that long.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Final

from voipclient.audio.payload import FRAME_NO_MODULUS, HEADER_LEN, REDUNDANT_OVERHEAD
from voipclient.crypto.media import MIN_DATAGRAM_LEN

__all__ = [
    "COPY_BITRATE",
    "DEFAULT_POLICY",
    "EVIDENCE_FRAMES",
    "LEGACY",
    "LEVEL_CLEAN",
    "LEVEL_DISTANCES",
    "LEVEL_LIGHT",
    "MAX_LOSS_HINT",
    "LossMeter",
    "LossReport",
    "PolicyConfig",
    "RedundancyLevel",
    "RedundancyPolicy",
    "bitrate_cost",
    "level_from_json",
    "level_to_json",
    "target_level",
    "wire_bitrate",
]

#: Copies per tier (index = tier) for random loss; bursty loss at tier 4 takes (1, 2, 4).
LEVEL_DISTANCES: Final[tuple[tuple[int, ...], ...]] = ((), (), (1,), (1, 2), (1, 2, 3))
BURSTY_TOP: Final = (1, 2, 4)
MAX_LOSS_HINT: Final = 30  # percent; beyond this FEC only takes bitrate from the primary
CLEAN_LOSS: Final = 0.01  # below this the path is clean: hint 0, no copies
BURSTY: Final = 1.5  # mean burst length from which losses count as bursty
MIN_REPORT_FRAMES: Final = 10  # reports over fewer frames carry no information
_SHORT_S: Final = 2.5  # s: the recent reports pooled to see a rise at once
EVIDENCE_FRAMES: Final = 50  # clean frames reported before a cold start drops its protection
COPY_BITRATE: Final = 16_000  # b/s of a compact copy (the second encoder, wideband SILK)
SMALL_COPY_BITRATE: Final = 12_000  # b/s: the smaller copy a congested link gets first
MIN_PRIMARY_BITRATE: Final = 16_000  # b/s: congestion never takes the primary below this
PRIMARY_STEPS: Final = (24_000, 20_000, 16_000)  # b/s: the primary's way down under congestion
#: Bytes a voice datagram costs on the wire beyond its payload: sealing and hop MAC
#: (PROTOCOL §3), UDP and IPv4 headers.
WIRE_OVERHEAD: Final = MIN_DATAGRAM_LEN + 8 + 20
_HALF: Final = FRAME_NO_MODULUS // 2

# Congestion detection (see the module docstring).
_SAMPLE_MEMORY_S: Final = 10.0  # s: per-rate loss samples kept this long
_MIN_SAMPLE_FRAMES: Final = 25  # frames at a rate before its loss is compared
_MIN_STEP: Final = 1.10  # a rate counts as higher than another from this ratio
_Z: Final = 2.0  # two-proportion test threshold (about 2 % false alarms per comparison)
_MIN_RISE: Final = 0.03  # and loss must rise by at least 3 points
_STILL_LOSSY: Final = 0.05  # loss at the cap that makes the cap step down
_HEAVY: Final = 0.12  # loss that may be our own: step down once to find out
_STEP_DOWN: Final = 0.85
_FLAT: Final = 0.25  # delivered rate rose by less than this share of what we added: a bottleneck
_Z_CONFIRM: Final = 3.0  # a cap is confirmed only on strong evidence (1 in 700 by chance)
_Z_FLAT: Final = _Z  # the same test, allowed on fewer frames when the delivered rate is flat
_MARGIN: Final = 0.97  # the cap sits this much under the rate the link delivered
_NO_STEP_S: Final = 60.0  # s without detection or step-down after a cap that did not help
_TOP_BEFORE_ASKING_S: Final = 10.0  # s at the top tier before rule 3 may ask
_EXPERIMENT_EVERY_S: Final = 300.0  # s between rule 3's step-down questions at the top tier
_PROBE_AFTER_S: Final = 20.0  # s of a clean path at the cap before probing upwards
_PROBE_STEP: Final = 1.15
_REPORT_LAG_S: Final = 0.05  # s: a report's window ended about this long before it reached us
_REPORT_SLACK_S: Final = 0.1  # s: its first frames may have been sent this long before the last


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
    """What the sender does: the Opus FEC hint, which earlier frames to copy and how.

    ``copy_bitrate``: the copies are a second encoder's packets at this bitrate (b/s); 0 means
    they are the primary packets again (full copies, :data:`LEGACY`). ``bitrate_cap``: the
    primary Opus bitrate is at most this (b/s; congestion); 0 means the user's bitrate.
    """

    loss_hint_percent: int
    distances: tuple[int, ...] = ()
    copy_bitrate: int = 0
    bitrate_cap: int = 0
    #: the primary is limited to wideband (while measured loss has copies rebuild frames, and
    #: under a congestion cap); not at a cold start, where a clean path must not lose its band
    wideband: bool = False

    @property
    def tier(self) -> int:
        """The row of the table (0 = clean path)."""
        if not self.distances:
            return 1 if self.loss_hint_percent > 0 else 0
        return min(4, len(self.distances) + 1)


LEVEL_CLEAN: Final = RedundancyLevel(0, ())
#: Cold start: one compact copy of the previous frame until reports say the path is clean.
LEVEL_LIGHT: Final = RedundancyLevel(0, (1,), COPY_BITRATE)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """How the policy behaves. :data:`DEFAULT_POLICY` is the product's; :data:`LEGACY` is the
    milestone-1 policy (full copies, no cold start, no congestion control), kept so that
    ``make bench`` measures both in one run."""

    compact: bool = True  # copies from a second encoder at COPY_BITRATE
    cold_start: bool = True  # light protection until the path is known
    congestion: bool = True  # back off when our own rate raises the loss
    bitrate: int = 32_000  # b/s: the user's Opus bitrate (what rates are computed from)
    frame_ms: int = 20
    hold_s: float = 10.0  # s: a report counts this long
    memory_s: float = 60.0  # s: without any report this long, back to the cold-start level


DEFAULT_POLICY: Final = PolicyConfig()
LEGACY: Final = PolicyConfig(compact=False, cold_start=False, congestion=False, memory_s=0.0)


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


def target_level(loss: float, burst: float, *, compact: bool = False) -> RedundancyLevel:
    """The level one measurement alone asks for (no hysteresis). ``compact``: copies from the
    second encoder (the product); without it full copies (the milestone-1 policy)."""
    loss = min(1.0, max(0.0, loss)) if math.isfinite(loss) else 1.0
    burst = max(0.0, burst) if math.isfinite(burst) else 0.0
    tier = _tier_for(loss, burst)
    if tier == 0:
        return LEVEL_CLEAN
    if tier == 1 and compact:
        # Light random loss gets one compact copy, not the FEC hint: at 2 % loss a 16 kb/s copy
        # scores 4.18 PESQ-WB where the hint scores 3.52 (libopus 1.3.1 takes the hint's bits
        # from every frame; docs/audio-dsp.md)
        tier = 2
    if tier >= 2:
        distances = LEVEL_DISTANCES[tier]
        if tier == 4 and (burst >= BURSTY or not compact):
            distances = BURSTY_TOP
        # full copies or compact ones; no hint (it only costs the primary quality)
        return RedundancyLevel(0, distances, COPY_BITRATE if compact else 0, 0, compact)
    hint = min(MAX_LOSS_HINT, max(1, math.ceil(loss * 100 - 1e-9)))
    return RedundancyLevel(hint, ())


def _bytes_per_frame(bitrate: int, frame_ms: int) -> int:
    return math.ceil(bitrate * frame_ms / 8000)


def wire_bitrate(level: RedundancyLevel, opus_bitrate: int, frame_ms: int) -> int:
    """Bits/s one talker's voice costs on the wire (IPv4) at this level: the primary packet
    (at the user's ``opus_bitrate`` or the level's cap), the payload framing, the copies, the
    datagram's sealing, hop MAC, UDP and IP headers."""
    if opus_bitrate <= 0 or frame_ms <= 0:
        raise ValueError("opus_bitrate and frame_ms must be positive")
    primary = min(opus_bitrate, level.bitrate_cap) if level.bitrate_cap else opus_bitrate
    per_frame = _bytes_per_frame(primary, frame_ms) + HEADER_LEN + WIRE_OVERHEAD
    copy = _bytes_per_frame(level.copy_bitrate or primary, frame_ms)
    per_frame += len(level.distances) * (copy + REDUNDANT_OVERHEAD)
    return round(per_frame * 8 * 1000 / frame_ms)


def bitrate_cost(level: RedundancyLevel, opus_bitrate: int, frame_ms: int) -> int:
    """Extra bits/s the level's copies add at a nominal Opus bitrate (the FEC hint adds none)."""
    if opus_bitrate <= 0 or frame_ms <= 0:
        raise ValueError("opus_bitrate and frame_ms must be positive")
    copy = _bytes_per_frame(level.copy_bitrate or opus_bitrate, frame_ms)
    per_frame = len(level.distances) * (copy + REDUNDANT_OVERHEAD) * 8
    return round(per_frame * 1000 / frame_ms)


class LossMeter:
    """Receiver side, one per sender: loss, burstiness and jitter of the frames that arrive.

    Frame numbers count on through DTX silence (PROTOCOL §3), so a gap after a frame flagged
    ``last`` (end of a talk spurt) or longer than ``max_gap_frames`` is silence, not loss.

    Reports come every ``fast_interval_s`` for the first ``fast_for_s`` of the stream, and again
    after ``refresh_after_s`` without any frame (the sender may have forgotten the path by then),
    so a talker on a lossy path is protected within a second; every ``report_interval_s`` after.
    """

    def __init__(
        self,
        sender_id: int,
        now: float,
        *,
        report_interval_s: float = 2.0,
        frame_ms: int = 20,
        max_gap_frames: int = 25,
        fast_interval_s: float = 0.5,
        fast_for_s: float = 3.0,
        refresh_after_s: float = 10.0,
    ) -> None:
        self.sender_id = sender_id
        self.report_interval_s = report_interval_s
        self.fast_interval_s = min(fast_interval_s, report_interval_s)
        self.fast_for_s = fast_for_s
        self.refresh_after_s = refresh_after_s
        self.frame_s = frame_ms / 1000
        self.max_gap_frames = max_gap_frames
        self._next_report = now + report_interval_s
        self._fast_until = -math.inf
        self._last_arrival: float | None = None
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
        if self.fast_for_s > 0 and (
            self._last_arrival is None or now - self._last_arrival >= self.refresh_after_s
        ):
            # A new stream, or one back after a long silence: report soon and often.
            self._fast_until = now + self.fast_for_s
            self._next_report = now + self.fast_interval_s
        self._last_arrival = now
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
        interval = self.fast_interval_s if now < self._fast_until else self.report_interval_s
        self._next_report = max(self._next_report, now - interval) + interval
        while self._next_report <= now:
            self._next_report += interval
        return report


@dataclass(slots=True)
class _RateSample:
    at: float
    rate: int  # b/s on the wire while the report's window was sent
    lost: float
    frames: int


@dataclass(slots=True)
class _Congestion:
    """The rate cap and what it was learned from (one per policy)."""

    cap: int = 0  # b/s on the wire; 0 = none
    since: float = 0.0  # when the cap last changed
    probe_after_s: float = _PROBE_AFTER_S
    stepped_from: int = 0  # the rate the last step down left (to tell whether it helped)
    no_step_until: float = 0.0  # no step-down experiment before this
    no_detect_until: float = 0.0  # no congestion detection before this (after a false alarm)
    listener: int | None = None  # whose reports set the cap (and decide about it)
    confirmed: int = 0  # the last cap whose lower rate was seen to lower the loss
    experiment: bool = False  # the pending step down is rule 3's question, not a detection
    false_alarms: int = 0  # caps that did not lower the loss (lifted again)
    events: int = 0  # congestion detections
    samples: dict[int, deque[_RateSample]] = field(default_factory=dict)


class RedundancyPolicy:
    """Sender side: the worst listener's reports over the last ``hold_s`` decide the level,
    a cold start is protected, and a rate the path cannot carry is capped.

    Raises at once on a bad report; falls back only when no bad report is left in the window.
    """

    def __init__(
        self,
        hold_s: float | None = None,
        *,
        config: PolicyConfig = DEFAULT_POLICY,
        prior: RedundancyLevel | None = None,
    ) -> None:
        if hold_s is not None:
            config = replace(config, hold_s=hold_s)
        self.config = config
        self.hold_s = config.hold_s
        # (time, listener, the level this report alone asks for, its frames, lost frames, runs)
        self._reports: deque[tuple[float, int, RedundancyLevel, int, float, float]] = deque()
        self._prior = LEVEL_CLEAN
        self._warm = False  # the path is known (reports of enough frames, or a bad one)
        self._last_report: float | None = None
        self._learned = LEVEL_CLEAN
        self._congestion = _Congestion()
        self._rates: deque[tuple[float, int]] = deque(maxlen=64)  # (since, wire b/s)
        self._out: RedundancyLevel | None = None
        self._max_frames = max(MIN_REPORT_FRAMES, round(config.hold_s * 1000 / config.frame_ms))
        self._last_from: dict[int, float] = {}  # listener → when its last report came
        self._prev_rate = 0  # b/s: the wire rate before the one in force
        self._top_since = math.inf  # when the top tier was last reached (inf: not at it)
        self.set_prior(prior)

    # -- the cold-start level and the path memory ------------------------------------------------

    def set_prior(self, remembered: RedundancyLevel | None) -> None:
        """The level a session starts with: light protection, or what the last session to this
        server learned if that was more (its congestion cap included). Legacy: clean."""
        cfg = self.config
        if not cfg.cold_start:
            self._prior = LEVEL_CLEAN
            return
        prior = LEVEL_LIGHT if cfg.compact else RedundancyLevel(0, (1,))
        if remembered is not None:
            if remembered.tier > prior.tier:
                prior = replace(remembered, bitrate_cap=0)
                if cfg.compact and not prior.copy_bitrate:
                    prior = replace(prior, copy_bitrate=COPY_BITRATE, wideband=True)
            if cfg.congestion and remembered.bitrate_cap:
                floor = wire_bitrate(
                    RedundancyLevel(0, (), 0, MIN_PRIMARY_BITRATE), cfg.bitrate, cfg.frame_ms
                )
                self._congestion.cap = max(
                    floor, wire_bitrate(remembered, cfg.bitrate, cfg.frame_ms)
                )
                # unconfirmed in this session: probed upwards from its first reports (rule 1
                # puts it back if the link still cannot carry more)
                self._congestion.since = -math.inf
        self._prior = prior

    def memory(self, now: float) -> RedundancyLevel | None:
        """What to remember about this server's path for the next session: the level in force
        (with its congestion cap), or None while nothing was learned."""
        if not self._warm and self._last_report is None:
            return None
        return self.level(now)

    @property
    def congestion_events(self) -> int:
        """How often our own rate was found to raise the loss."""
        return self._congestion.events

    @property
    def congestion_false_alarms(self) -> int:
        """Caps tried and lifted again because the loss did not fall with our rate."""
        return self._congestion.false_alarms

    @property
    def rate_cap(self) -> int:
        """The congestion cap on the wire bitrate (b/s), 0 when none."""
        return self._congestion.cap

    # -- reports ---------------------------------------------------------------------------------

    def add_report(self, listener_id: int, report: LossReport, now: float) -> RedundancyLevel:
        """Take one listener's report about us; returns the level to use from now."""
        if report.window_frames >= MIN_REPORT_FRAMES:
            need = target_level(report.loss, report.burst, compact=self.config.compact)
            # a window is at most what fits in the hold time (a peer's u32 would otherwise
            # outweigh every other listener's reports and end a cold start by itself)
            frames = min(report.window_frames, self._max_frames)
            loss = min(1.0, max(0.0, report.loss)) if math.isfinite(report.loss) else 1.0
            lost = loss * frames
            burst = report.burst if math.isfinite(report.burst) and report.burst >= 1 else 1.0
            runs = lost / burst if lost else 0.0
            self._reports.append((now, listener_id, need, frames, lost, runs))
            if self.config.congestion:
                self._observe(listener_id, lost, frames, now)
            self._last_report = now
            self._last_from[listener_id] = now
        return self.level(now)

    def set_voice_rate(self, bitrate: int, frame_ms: int) -> None:
        """The user changed the Opus bitrate or frame size: rates are modelled from these now
        (what was measured at the old ones is dropped; a congestion cap, in wire bits, stays)."""
        if bitrate == self.config.bitrate and frame_ms == self.config.frame_ms:
            return
        self.config = replace(self.config, bitrate=bitrate, frame_ms=frame_ms)
        self._max_frames = max(MIN_REPORT_FRAMES, round(self.config.hold_s * 1000 / frame_ms))
        self._congestion.samples.clear()
        self._congestion.stepped_from = 0
        self._out = None  # the next level() records the rate in force anew

    def new_session(self) -> None:
        """A new login: listeners' ids are the new session's, the old ones' samples go (what
        was learned about the path, the level and any cap, stays)."""
        self._congestion.samples.clear()
        self._last_from.clear()
        if self._congestion.listener is not None:
            self._congestion.listener = None
            self._congestion.stepped_from = 0

    def forget(self, listener_id: int) -> None:
        """A listener left: its reports no longer count."""
        self._last_from.pop(listener_id, None)
        if self._congestion.listener == listener_id:
            self._congestion.listener = None
            self._congestion.stepped_from = 0
        self._reports = deque(r for r in self._reports if r[1] != listener_id)
        self._congestion.samples.pop(listener_id, None)

    def level(self, now: float) -> RedundancyLevel:
        cfg = self.config
        while self._reports and now - self._reports[0][0] > cfg.hold_s:
            self._reports.popleft()
        if self._last_report is not None and now - self._last_report > cfg.memory_s:
            self._warm = False  # nothing heard for long: the path may have changed
        if not self._reports:
            need = self._learned if self._warm else self._prior
        else:
            need = self._need(now)
            if not self._warm:
                frames = sum(r[3] for r in self._reports)
                if frames >= EVIDENCE_FRAMES or _severity(need) >= _severity(self._prior):
                    self._warm = True
                else:
                    need = self._prior
            self._learned = need
        out = self._fit(need, now) if cfg.congestion else need
        if out != self._out:
            self._out = out
            rate = wire_bitrate(out, cfg.bitrate, cfg.frame_ms)
            if self._rates and self._rates[-1][1] != rate:
                self._prev_rate = self._rates[-1][1]
            self._rates.append((now, rate))
            if out.tier < 4:
                self._top_since = math.inf
            elif self._top_since == math.inf:
                self._top_since = now
        return out

    def _need(self, now: float) -> RedundancyLevel:
        """The level the reports in the hold window ask for.

        Legacy: the worst single report. Adaptive: per listener, the loss pooled over the last
        :data:`_SHORT_S` (a rise shows at once) and over the whole hold window (it falls once
        the path stayed clean), the worse of the two; then the worst listener. Pooling matters
        with the fast 0.5 s reports of 25 frames: at 10 % loss one in four of them alone reads
        15 % or more and would ask for a third copy for the next 10 s."""
        if not self.config.compact:
            return max((r[2] for r in self._reports), key=_severity)
        pools: dict[int, list[float]] = {}  # listener → [frames, lost, runs] x (short, long)
        for at, listener, _, frames, lost, runs in self._reports:
            pool = pools.setdefault(listener, [0.0] * 6)
            pool[3] += frames
            pool[4] += lost
            pool[5] += runs
            if now - at <= _SHORT_S:
                pool[0] += frames
                pool[1] += lost
                pool[2] += runs
        worst = LEVEL_CLEAN
        for pool in pools.values():
            for n, n_lost, n_runs in ((pool[0], pool[1], pool[2]), (pool[3], pool[4], pool[5])):
                if n < MIN_REPORT_FRAMES:
                    continue
                level = target_level(n_lost / n, n_lost / n_runs if n_runs else 0.0, compact=True)
                if level.tier == 4 and n < EVIDENCE_FRAMES:
                    # one 0.5 s report: 4 losses in 25 frames happen at 10 % loss one time in
                    # four; the third copy (and its wait) waits for a second report
                    level = target_level(0.1, 0.0, compact=True)
                if _severity(level) > _severity(worst):
                    worst = level
        return worst

    # -- congestion ------------------------------------------------------------------------------

    def _rate_over(self, start: float, end: float) -> int | None:
        """The wire rate in force over most (80 %) of [start, end], or None when the window
        straddles a rate change (it then says little about either rate)."""
        if end <= start or not self._rates:
            return None
        spans: dict[int, float] = {}
        entries = list(self._rates)
        for i, (since, rate) in enumerate(entries):
            until = entries[i + 1][0] if i + 1 < len(entries) else end
            lo, hi = max(since, start), min(until, end)
            if hi > lo:
                spans[rate] = spans.get(rate, 0.0) + hi - lo
        if not spans:
            return None
        rate, span = max(spans.items(), key=lambda item: item[1])
        return rate if span >= 0.8 * (end - start) else None

    def _observe(self, listener_id: int, lost: float, frames: int, now: float) -> None:
        cfg, cong = self.config, self._congestion
        # The report's frames were sent between this listener's previous report and this one
        # (less the way there and back): with push-to-talk pauses or DTX they are fewer than
        # the time says, so the window is the time, and it must have had one rate throughout.
        end = now - _REPORT_LAG_S
        previous = self._last_from.get(listener_id)
        span = frames * cfg.frame_ms / 1000
        start = end - span if previous is None else min(previous - _REPORT_SLACK_S, end - span)
        rate = self._rate_over(start, end)
        if rate is None:
            return  # the window straddles a rate change: it says little about either rate
        samples = cong.samples.setdefault(listener_id, deque())
        samples.append(_RateSample(now, rate, lost, frames))
        while samples and now - samples[0].at > _SAMPLE_MEMORY_S:
            samples.popleft()
        groups: dict[int, list[float]] = {}  # rate → [lost, frames]
        for sample in samples:
            group = groups.setdefault(sample.rate, [0.0, 0.0])
            group[0] += sample.lost
            group[1] += sample.frames
        hi_lost, hi_n = groups[rate]
        if hi_n < _MIN_SAMPLE_FRAMES:
            return
        if cong.listener is not None and listener_id != cong.listener:
            return  # the listener behind the cap decides about it (others may have room)
        p_hi = hi_lost / hi_n
        floor = wire_bitrate(
            RedundancyLevel(0, (), 0, MIN_PRIMARY_BITRATE), cfg.bitrate, cfg.frame_ms
        )
        # 1. Our rate went up and the loss with it: a link that delivers a fixed rate (a
        #    bottleneck) drops whatever we add. Cap at what it delivered, then check (2.) that
        #    the loss fell with the rate: random loss that happened to rise is not congestion.
        for lo_rate, (lo_lost, lo_n) in groups.items():
            if cong.stepped_from or now < cong.no_detect_until:
                break
            if lo_rate * _MIN_STEP > rate or lo_n < _MIN_SAMPLE_FRAMES:
                continue
            p_lo = lo_lost / lo_n
            delivered_lo, delivered_hi = lo_rate * (1 - p_lo), rate * (1 - p_hi)
            # What arrives stayed flat while we sent more, and both rates lost: the signature
            # of a fixed-rate link that both overflowed, clear enough to try the cap with fewer
            # reports than a rise in loss alone needs (which wants 50 frames on each side).
            flat = p_lo >= _STILL_LOSSY and delivered_hi - delivered_lo < _FLAT * (rate - lo_rate)
            if not flat and min(lo_n, hi_n) < 2 * _MIN_SAMPLE_FRAMES:
                continue
            if _rose(lo_lost, lo_n, hi_lost, hi_n, z=_Z_FLAT if flat else _Z):
                was_capped = bool(cong.cap)  # a probe failed: probe less often
                # what the overflowing rate delivered is what the link carries (a rate below
                # the link would understate it)
                carried = delivered_hi * _MARGIN
                cong.cap = max(floor, min(lo_rate, int(carried)))
                cong.since = now
                cong.stepped_from = rate
                cong.listener = listener_id
                cong.probe_after_s = (
                    min(cong.probe_after_s * 2, 160.0) if was_capped else _PROBE_AFTER_S
                )
                return
        if now - cong.since < 1.0:
            return  # let the last change show first
        # 2. After a cap or a step down: did the loss fall with our rate?
        if cong.stepped_from and hi_n >= 2 * _MIN_SAMPLE_FRAMES:
            up = groups.get(cong.stepped_from)
            if up is None or up[1] < _MIN_SAMPLE_FRAMES or rate >= cong.stepped_from:
                verdict = False  # nothing to compare with (or nothing could be cut)
            elif _rose(hi_lost, hi_n, up[0], up[1], z=_Z_CONFIRM):
                verdict = True  # (a strict test: a cap confirmed stays until probes lift it)
            elif up[0] / up[1] - p_hi >= _MIN_RISE and hi_n < 8 * _MIN_SAMPLE_FRAMES:
                return  # lower, but not clearly yet: wait for more reports (4 s at most)
            else:
                verdict = False
            cong.stepped_from = 0
            samples.clear()  # a verdict: what comes next is compared afresh
            experiment, cong.experiment = cong.experiment, False
            if verdict:
                cong.events += 1  # the loss was ours: the cap stays (and steps on if needed)
                cong.confirmed = cong.cap
                if p_hi >= _STILL_LOSSY and rate > floor:
                    cong.stepped_from, cong.cap, cong.since = (
                        rate,
                        max(floor, int(rate * _STEP_DOWN)),
                        now,
                    )
                return
            cong.no_step_until = max(cong.no_step_until, now + _NO_STEP_S)
            if cong.confirmed and cong.cap < cong.confirmed:
                # a step below a confirmed cap did not help: the rest of the loss is the
                # path's; back to the confirmed cap
                cong.cap = cong.confirmed
                cong.since = now
                return
            # the loss is the path's, not ours: full protection again, and no such experiment
            # for a minute (a failed step-down experiment is no alarm: it was a question)
            cong.cap = cong.confirmed = 0
            cong.listener = None
            cong.false_alarms += not experiment
            cong.probe_after_s = _PROBE_AFTER_S
            cong.no_detect_until = now + _NO_STEP_S
            return
        # 3. Heavy loss at the top tier (there is no escalation left to compare with), which may
        #    be ours (cross traffic filled the link): one copy fewer for a moment to find out,
        #    at most every 5 minutes (on a path with heavy random loss each question costs a
        #    few seconds with fewer copies).
        if (
            not cong.stepped_from
            and p_hi >= _HEAVY
            and hi_n >= 2 * _MIN_SAMPLE_FRAMES
            and self._learned.tier == 4
            and now - self._top_since >= _TOP_BEFORE_ASKING_S  # the loss came later
            and rate >= wire_bitrate(self._learned, cfg.bitrate, cfg.frame_ms)
            and rate > floor
            and now >= cong.no_step_until
            and (not cong.cap or rate <= cong.cap)
        ):
            cong.stepped_from = rate
            cong.listener = listener_id
            cong.cap = max(floor, int(rate * _STEP_DOWN))
            cong.since = now
            cong.no_step_until = now + _EXPERIMENT_EVERY_S
            cong.experiment = True
            return
        # 4. Capped for a while: probe upwards, the link may have room again (or the loss was
        #    never ours). A probe the link cannot carry raises the loss: rule 1 puts the cap
        #    back and the next probe waits twice as long (up to 160 s).
        if cong.cap and not cong.stepped_from and now - cong.since >= cong.probe_after_s:
            cong.cap = int(cong.cap * _PROBE_STEP)
            cong.since = now
            top = RedundancyLevel(0, BURSTY_TOP, COPY_BITRATE)
            if cong.cap >= wire_bitrate(top, cfg.bitrate, cfg.frame_ms):
                cong.cap = cong.confirmed = 0  # nothing we send is above it any more
                cong.listener = None

    def _fit(self, need: RedundancyLevel, now: float) -> RedundancyLevel:
        """The best level at or below ``need`` whose wire rate fits the cap: smaller copies,
        then fewer; then one small copy over a lower primary (20 kb/s at least: at 2 % loss
        20 kb/s + a 12 kb/s copy scores 3.53 PESQ-WB, 32 kb/s alone 3.22); then no copies, the
        primary coming down to 16 kb/s."""
        cap = self._congestion.cap
        if not cap:
            return need
        cfg = self.config
        if wire_bitrate(need, cfg.bitrate, cfg.frame_ms) <= cap:
            return need
        # (no FEC hint in place of the copies: with libopus 1.3 a hint of 10 % costs ~0.9 PESQ
        # on every frame, far more than the rare losses it would repair)
        hint = need.loss_hint_percent
        candidates: list[RedundancyLevel] = []
        for k in range(len(need.distances), 0, -1):
            d = need.distances[:k]
            for copy in (need.copy_bitrate or COPY_BITRATE, SMALL_COPY_BITRATE):
                if copy <= (need.copy_bitrate or cfg.bitrate):
                    candidates.append(RedundancyLevel(0, d, copy, 0, True))
        if need.distances and need.copy_bitrate:
            for primary in PRIMARY_STEPS[:-1]:
                if primary < cfg.bitrate:
                    candidates.append(RedundancyLevel(0, (1,), SMALL_COPY_BITRATE, primary, True))
        candidates.append(RedundancyLevel(hint, ()))
        for primary in PRIMARY_STEPS:
            if primary < cfg.bitrate:
                candidates.append(RedundancyLevel(hint, (), 0, primary, True))
        for level in candidates:
            if wire_bitrate(level, cfg.bitrate, cfg.frame_ms) <= cap:
                return level
        return candidates[-1]


def _severity(level: RedundancyLevel) -> tuple[int, int, int]:
    """Order levels by protection: tier, then reach of the copies, then the hint."""
    return (level.tier, level.distances[-1] if level.distances else 0, level.loss_hint_percent)


def _rose(lo_lost: float, lo_n: float, hi_lost: float, hi_n: float, z: float = _Z) -> bool:
    """Whether the loss rate ``hi`` is significantly above ``lo`` (two-proportion z-test, and
    by at least :data:`_MIN_RISE`)."""
    p_lo, p_hi = lo_lost / lo_n, hi_lost / hi_n
    pooled = (lo_lost + hi_lost) / (lo_n + hi_n)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-9) * (1 / lo_n + 1 / hi_n))
    return p_hi - p_lo >= max(_MIN_RISE, z * se)


def level_to_json(level: RedundancyLevel) -> dict[str, object]:
    """A level as plain JSON values (the path memory's file)."""
    return {
        "hint": level.loss_hint_percent,
        "distances": list(level.distances),
        "copy_bitrate": level.copy_bitrate,
        "bitrate_cap": level.bitrate_cap,
        "wideband": level.wideband,
    }


def level_from_json(obj: object) -> RedundancyLevel | None:
    """The inverse of :func:`level_to_json`; None for anything that is not a valid level
    (a damaged or hand-edited file costs the memory, never the session)."""
    if not isinstance(obj, dict):
        return None
    hint, distances = obj.get("hint"), obj.get("distances")
    copy, cap = obj.get("copy_bitrate", 0), obj.get("bitrate_cap", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (hint, copy, cap)):
        return None
    if not isinstance(distances, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in distances
    ):
        return None
    assert isinstance(hint, int) and isinstance(copy, int) and isinstance(cap, int)
    if not 0 <= hint <= MAX_LOSS_HINT or not (copy == 0 or 6_000 <= copy <= 64_000):
        return None
    if not (cap == 0 or MIN_PRIMARY_BITRATE <= cap <= 128_000):
        return None
    if (
        len(distances) > 4
        or distances != sorted(set(distances))
        or any(not 1 <= d <= 8 for d in distances)
    ):
        return None
    wideband = obj.get("wideband", bool(copy or cap))
    return RedundancyLevel(hint, tuple(distances), copy, cap, wideband is True)
