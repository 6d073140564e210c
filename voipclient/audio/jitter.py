"""Adaptive jitter buffer for one speaker's voice stream: pure, decoder-agnostic, time passed in.

The network thread calls :meth:`JitterBuffer.push` for every opened voice datagram; the playback
clock calls :meth:`JitterBuffer.pop` exactly once per output frame and carries out the returned
:data:`PlayoutDecision` with its Opus decoder (``decode`` / ``decode_fec`` / ``conceal``).

Model (all times in seconds on the receiver's clock, ``T`` = frame duration):

* Relative arrival delay of frame ``n``: ``d(n) = arrival - n * T`` (``n`` counted from the first
  frame seen). Its minimum over a window of recent packets is the fastest path (``base``); the
  95th percentile minus that minimum is the jitter the buffer must absorb (as WebRTC NetEq).
* Target delay = that jitter + 10 % headroom (zero on a clean path), plus, only while there has
  been recent loss, the redundancy depth in frames: 1 by default (waiting for frame ``n + 1`` lets
  its in-band FEC rebuild ``n``), ``d`` when the sender adds copies of frames up to ``d`` back
  (:meth:`JitterBuffer.push_recovered` places them), clamped to ``[min_delay_ms, max_delay_ms]``.
* Lag of frame ``n`` at ``now`` = ``now - (n * T + base)``: how long after its earliest possible
  arrival it plays, i.e. the delay the buffer adds. A talk spurt starts once the lag of its first
  frame reaches the target; from then on frames play back to back, so a changed target is only
  applied at the next spurt start (speech is never stretched just to shrink or grow the delay).
* Two exceptions. Continuous speech (a hot mic) has no spurt starts: when the lag has stayed two
  frames or more above the target for :data:`SHRINK_AFTER` frames, one frame is dropped and the
  applied delay lowered by a frame (NetEq's "accelerate", at most one frame per second). And a
  spurt may start up to :data:`START_TOLERANCE_S` (at most T/4) before its target: output ticks
  are a frame apart, so waiting a whole frame for the last millisecond of a target made of sender
  timing noise would cost far more than the rare underrun it avoids.
* An underrun: when the frame due is missing and its lag is still below the
  current target, it is not given up yet; a concealment frame is played without advancing (the
  delay grows, as NetEq's expand). This also absorbs a sender clock that is slower than ours.
  A sender clock that is faster builds a backlog: when the lag is more than one frame beyond the
  applied target and the next two frames are buffered, one frame is dropped.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

from voipclient.errors import LocalProtocolError

FRAME_NO_MODULUS: Final = 1 << 32  # the sender's frame counter is a u32 and wraps
_HALF: Final = 1 << 31
_SEEN_MEMORY: Final = 256  # frames remembered for duplicate detection
_EPS: Final = 1e-9  # s: float slack when comparing times
START_TOLERANCE_S: Final = 0.003  # s: a spurt may start this much (≤ T/4) before its target
SHRINK_AFTER: Final = 50  # frames two frames or more above the target before one is dropped


# --- decisions: what the playback worker does for one output frame -----------------------------


@dataclass(frozen=True, slots=True)
class Play:
    """Decode ``payload`` normally."""

    payload: bytes  # the Opus packet of the frame due now


@dataclass(frozen=True, slots=True)
class PlayFec:
    """The frame due is missing but the next one is here: ``decode_fec(next_payload)``."""

    next_payload: bytes  # the Opus packet of the *following* frame (stays buffered for its turn)


@dataclass(frozen=True, slots=True)
class Conceal:
    """The frame due is missing: run packet-loss concealment (``decoder.conceal()``)."""

    n: int  # 1 for the first missing frame in a row, 2 for the second, ...


@dataclass(frozen=True, slots=True)
class FadeOut:
    """Concealment bound reached: play one frame fading to silence, then the stream is idle."""


@dataclass(frozen=True, slots=True)
class Silence:
    """Nothing to play (idle stream or waiting for a talk spurt's playout time): output zeros."""


@dataclass(frozen=True, slots=True)
class End:
    """The frame marked VOICE_LAST has been played: the talk spurt ended cleanly (output zeros)."""


PlayoutDecision = Play | PlayFec | Conceal | FadeOut | Silence | End


@dataclass(frozen=True, slots=True)
class JitterStats:
    """Per-stream counters (packets / frames since creation) and current delays."""

    received: int  # packets pushed, including duplicates and late ones
    played: int  # frames decoded normally (Play)
    fec_recovered: int  # missing frames rebuilt from the next packet's FEC (PlayFec)
    concealed: int  # Conceal decisions (lost frames and underrun stretches)
    late: int  # packets dropped because their frame was already due
    duplicate: int  # packets dropped because the frame was already received
    reordered: int  # usable packets that arrived after a higher-numbered one
    dropped: int  # buffered frames dropped to absorb drift or a backlog
    overflow: int  # packets dropped because the buffer was full
    resyncs: int  # stream restarts (sender frame counter jumped)
    recovered: int  # missing frames filled from a redundant copy in a later payload
    shrunk: int  # frames dropped to bring the delay down during continuous speech
    current_delay_ms: float  # ms: lag of the last frame played beyond the fastest path
    target_delay_ms: float  # ms: what the delay estimator asks for now
    buffered: int  # frames waiting in the buffer
    mean_delay_ms: float = 0.0  # ms: mean lag of the frames played (the delay the buffer added)


class JitterBuffer:
    """One speaker's adaptive jitter buffer. Not thread-safe: one owner (the playback worker)."""

    def __init__(
        self,
        *,
        frame_ms: int = 20,
        min_delay_ms: float = 0.0,
        max_delay_ms: float = 200.0,
        max_conceal: int = 5,
        window: int = 100,
        headroom: float = 0.1,
        fec: bool = True,
        loss_memory_frames: int = 250,
        resync_s: float = 5.0,
    ) -> None:
        """Create an empty buffer.

        ``frame_ms``: the sender's frame duration (ms). ``min_delay_ms`` / ``max_delay_ms``: clamp
        of the target delay (ms). ``max_conceal``: concealment frames in a row before FadeOut.
        ``window``: packets in the delay-statistics window (100 = 2 s of 20 ms frames).
        ``headroom``: fraction added to the 95th-percentile jitter. ``fec``: emit PlayFec.
        ``loss_memory_frames``: how long (frames) a loss keeps the one-frame FEC wait.
        ``resync_s``: a relative-delay jump larger than this (s) restarts the stream.
        """
        if frame_ms <= 0:
            raise LocalProtocolError(f"frame_ms must be positive, got {frame_ms}")
        if not 0.0 <= min_delay_ms <= max_delay_ms:
            raise LocalProtocolError("need 0 <= min_delay_ms <= max_delay_ms")
        if max_conceal < 0 or window < 1 or headroom < 0.0 or loss_memory_frames < 0:
            raise LocalProtocolError("max_conceal, window, headroom, loss_memory_frames invalid")
        if resync_s <= max_delay_ms / 1000.0:
            raise LocalProtocolError("resync_s must exceed max_delay_ms")
        self._t = frame_ms / 1000.0  # s per frame
        self._min = min_delay_ms / 1000.0  # s
        self._max = max_delay_ms / 1000.0  # s
        self._max_conceal = max_conceal
        self._headroom = headroom
        self._fec = fec
        self._loss_memory = loss_memory_frames
        self._resync_s = resync_s
        # Frames that may wait: the largest target plus slack for drift and reordering.
        self.capacity: Final = math.ceil(max_delay_ms / frame_ms) + 8
        self._hist: deque[float] = deque(maxlen=window)  # s: relative arrival delays
        self._seen: deque[int] = deque(maxlen=_SEEN_MEMORY)  # extended frame numbers
        self._seen_set: set[int] = set()
        self._reset_stream()
        self._jitter = 0.0  # s: 95th percentile minus minimum of the window, with headroom
        self._received = self._played = self._fec_recovered = self._concealed = 0
        self._late = self._duplicate = self._reordered = self._dropped = 0
        self._overflow = self._resyncs = self._recovered = 0
        self._current = 0.0  # s
        self._depth = 1  # frames to wait after recent loss (1 = FEC; more with redundant copies)
        self._shrunk = 0
        self._lag_sum = 0.0  # s: sum of the lags of the frames played (for the mean)
        self._start_tolerance = min(self._t / 4, START_TOLERANCE_S)  # s

    def _reset_stream(self) -> None:
        self._buf: dict[int, tuple[bytes, bool]] = {}  # extended frame no -> (payload, last)
        self._from_copy: set[int] = set()  # buffered frames placed from a redundant copy
        self._origin: int | None = None  # extended frame number whose nominal send time is 0
        self._highest: int | None = None  # highest extended frame number received
        self._next: int | None = None  # next frame to play; lower ones are late
        self._playing = False  # inside a talk spurt
        self._pending_end = False  # the VOICE_LAST frame was played: End comes next
        self._applied = self._min  # s: target delay in force for this talk spurt
        self._above = 0  # frames in a row played a frame or more above the target
        self._base = 0.0  # s: minimum relative arrival delay in the window
        self._miss = 0  # consecutive missing frames
        self._last_loss: int | None = None  # extended frame number of the latest loss
        self._gap = False  # frames were concealed and skipped; a loss once speech resumes
        self._hist.clear()
        self._seen.clear()
        self._seen_set.clear()

    # --- input ----------------------------------------------------------------------------------

    def push(self, frame_no: int, payload: bytes, now: float, last: bool = False) -> None:
        """Accept the packet of sender frame ``frame_no`` (u32) arriving at ``now`` (s).

        ``last`` marks VOICE_LAST: the sender's talk spurt ends with this frame.
        """
        self._received += 1
        ext = self._extend(frame_no)
        if self._origin is None:
            self._origin = ext
        delay = now - (ext - self._origin) * self._t  # s: relative arrival delay
        if self._hist and abs(delay - self._base) > self._resync_s:
            # The sender's counter jumped (restart) or the clock did: start the stream afresh.
            self._resyncs += 1
            self._reset_stream()
            ext = frame_no % FRAME_NO_MODULUS
            self._origin = ext
            delay = now
        if ext in self._seen_set:
            if ext in self._from_copy and ext in self._buf:
                # The frame itself arrived (late, reordered) before its turn, after a copy from
                # a later payload stood in for it: the original replaces the copy (a compact copy
                # is a lower-bitrate encoding), and the frame was not lost after all.
                self._from_copy.discard(ext)
                self._recovered -= 1
                self._buf[ext] = (payload, last)
                self._hist.append(delay)
                self._update_jitter()
                return
            self._duplicate += 1
            return
        self._remember(ext)
        self._hist.append(delay)  # late packets count too: they show the jitter
        self._update_jitter()
        if self._next is not None and ext < self._next:
            self._late += 1
            return
        if self._highest is not None and ext < self._highest:
            self._reordered += 1
        self._highest = ext if self._highest is None else max(self._highest, ext)
        self._buf[ext] = (payload, last)
        while len(self._buf) > self.capacity:
            oldest = min(self._buf)
            del self._buf[oldest]
            self._from_copy.discard(oldest)
            self._overflow += 1
            if self._next is not None and self._next <= oldest:
                self._next = oldest + 1

    def push_recovered(self, frame_no: int, payload: bytes) -> bool:
        """Fill frame ``frame_no`` from a redundant copy carried by a later payload.

        Only a frame that is still missing and not yet due is filled; the copy says nothing about
        arrival timing, so it does not touch the delay statistics. True if it was used.
        """
        if self._highest is None or self._origin is None:
            return False  # nothing to place it against yet
        ext = self._extend(frame_no)
        if ext in self._seen_set or ext in self._buf:
            return False
        if self._next is not None and ext < self._next:
            return False  # already played (concealed): too late to help
        if self._highest - ext >= self.capacity:
            return False  # far older than anything the buffer may hold
        self._remember(ext)
        self._buf[ext] = (payload, False)
        self._from_copy.add(ext)
        self._recovered += 1
        return True

    @property
    def redundancy_depth(self) -> int:
        """Frames the buffer waits for after recent loss (see :meth:`set_redundancy_depth`)."""
        return self._depth

    def set_redundancy_depth(self, frames: int) -> None:
        """Wait up to ``frames`` extra frames after recent loss (default 1: the next packet's
        FEC). With redundant copies at distances up to ``d`` in the payloads, ``d`` lets a copy
        arrive before its frame is due. Applied at the next talk-spurt start, like any target."""
        if not 1 <= frames <= 255:
            raise LocalProtocolError(f"redundancy depth must be 1..255 frames, not {frames}")
        self._depth = frames

    def _extend(self, frame_no: int) -> int:
        """Unwrap the u32 frame counter to an unbounded frame number near the highest seen."""
        fn = frame_no % FRAME_NO_MODULUS
        if self._highest is None:
            return fn
        delta = (fn - self._highest) % FRAME_NO_MODULUS
        if delta >= _HALF:
            delta -= FRAME_NO_MODULUS
        return self._highest + delta

    def _remember(self, ext: int) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(ext)
        self._seen_set.add(ext)

    def _update_jitter(self) -> None:
        ordered = sorted(self._hist)
        self._base = ordered[0]
        p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
        self._jitter = (p95 - self._base) * (1.0 + self._headroom)

    def _target(self) -> float:
        """Target delay (s) now: jitter, plus a frame for FEC after recent loss, clamped."""
        target = self._jitter
        if (
            self._fec
            and self._last_loss is not None
            and self._next is not None
            and self._next - self._last_loss <= self._loss_memory
        ):
            target += self._t * self._depth
        return min(self._max, max(self._min, target))

    def _lag(self, ext: int, now: float) -> float:
        """How long (s) after its earliest possible arrival frame ``ext`` plays at ``now``."""
        origin = self._origin if self._origin is not None else ext
        return now - (ext - origin) * self._t - self._base

    # --- output ---------------------------------------------------------------------------------

    def pop(self, now: float) -> PlayoutDecision:
        """Decide what to play for the output frame starting at ``now`` (s). Call once per frame."""
        if self._pending_end:
            self._pending_end = False
            return End()
        if not self._playing:
            if not self._buf:
                return Silence()
            first = min(self._buf)
            target = self._target()
            # Output ticks come every frame: waiting a whole frame for the last millisecond or
            # two of a tiny target (sender timing noise on a clean path) costs far more than
            # the rare underrun it avoids, which concealment then absorbs anyway.
            if self._lag(first, now) < target - self._start_tolerance - _EPS:
                return Silence()
            self._applied = target  # target changes take effect at a talk-spurt start
            self._playing = True
            self._next = first
            self._miss = 0
        assert self._next is not None
        n = self._next
        lag = self._lag(n, now)
        backlog = lag > self._applied + self._t and n + 1 in self._buf
        # Shrinking during continuous speech (a hot mic never pauses): once the lag has stayed
        # two frames or more above what the jitter now needs for SHRINK_AFTER frames, drop one
        # frame (as NetEq's "accelerate", one frame per second at most). One frame of excess
        # (what a single scheduling hiccup leaves) waits for the next talk spurt instead: a
        # dropped voiced frame is audible, and measured (voice_quality) it cost more than it
        # saved.
        droppable = n in self._buf and n + 1 in self._buf and not self._buf[n][1]
        if droppable and lag - 2 * self._t >= self._target() + self._start_tolerance:
            self._above += 1
        else:
            self._above = 0
        shrink = self._above >= SHRINK_AFTER
        if (backlog or shrink) and droppable:  # never drop the VOICE_LAST frame
            del self._buf[n]
            self._dropped += 1
            n += 1
            lag -= self._t
            self._next = n
            if shrink:
                self._above = 0
                self._shrunk += 1
                self._applied = max(self._min, self._applied - self._t)
        entry = self._buf.pop(n, None)
        if entry is not None:
            payload, last = entry
            self._next = n + 1
            self._miss = 0
            if self._from_copy:
                self._from_copy.discard(n - 1)  # (stale entries of dropped frames go too)
                if n in self._from_copy:
                    # The network lost it and a copy saved it: still loss, so keep waiting for
                    # copies (without this the buffer would shrink and lose the next ones).
                    self._from_copy.discard(n)
                    self._last_loss = n
            if self._gap:  # speech resumed after concealment: that was loss, not a stream end
                self._gap = False
                self._last_loss = n - 1
            self._played += 1
            self._current = max(0.0, lag)
            self._lag_sum += self._current
            if last:
                self._playing = False
                self._pending_end = True
            return Play(payload)
        nxt = self._buf.get(n + 1)
        target = self._target()
        # With copies in later payloads (depth > 1) a missing frame may still arrive whole: while
        # there is time left (lag below the target) wait for it instead of using the next
        # packet's lower-quality FEC.
        wait_for_copy = self._depth > 1 and lag < target - _EPS
        if self._fec and nxt is not None and not wait_for_copy:
            self._next = n + 1
            self._miss = 0
            self._last_loss = n
            self._fec_recovered += 1
            self._current = max(0.0, lag)
            return PlayFec(nxt[0])
        self._miss += 1
        if self._miss > self._max_conceal:
            self._playing = False
            self._miss = 0
            self._gap = False  # an outage, not loss that single-frame FEC could repair
            return FadeOut()
        self._concealed += 1
        if lag < target - _EPS:
            # Underrun before the frame is overdue: wait for it (the delay grows to the target).
            self._applied = max(self._applied, target)
        else:
            self._next = n + 1
            self._gap = True
        return Conceal(self._miss)

    # --- introspection ----------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Frames waiting in the buffer."""
        return len(self._buf)

    @property
    def stats(self) -> JitterStats:
        """A snapshot of this stream's counters."""
        return JitterStats(
            received=self._received,
            played=self._played,
            fec_recovered=self._fec_recovered,
            concealed=self._concealed,
            late=self._late,
            duplicate=self._duplicate,
            reordered=self._reordered,
            dropped=self._dropped,
            overflow=self._overflow,
            resyncs=self._resyncs,
            recovered=self._recovered,
            shrunk=self._shrunk,
            current_delay_ms=self._current * 1000.0,
            target_delay_ms=self._target() * 1000.0,
            buffered=len(self._buf),
            mean_delay_ms=self._lag_sum * 1000.0 / self._played if self._played else 0.0,
        )
