"""The voice pipeline between the audio engine and the end-to-end layer, pure (time passed in).

Transmit (capture worker, once per frame)::

    DSP'd frame ─► TransmitGate.update(wanted channels, now) ─► VoiceSender.encode (Opus once,
    frame_no, copies of earlier frames per the RedundancyLevel) ─► seal once per target channel

Receive (network side pushes, playback worker renders once per frame)::

    VoiceFrame (opened) ─► VoicePlayback.push: payload decoded, one JitterBuffer + LossMeter per
    *speaker* (not per channel: a speaker heard in two channels has one stream, the copy that
    arrives second is a duplicate), redundant copies placed ─► render_into(out, now): each stream
    pops one decision, the decoder carries it out (decode / FEC / conceal / fade), the Mixer sums

Nothing here imports libopus: encoders and decoders come in through the small :class:`Encoder` /
:class:`Decoder` protocols (``voipclient.audio.opus`` provides the real ones), so the pipeline is
tested with named fakes and the pure-core import test covers it.

Frame numbers: ``frame_no`` is one counter for all the sender's channels and advances with audio
time, also while nothing is sent (:meth:`VoiceSender.skip`), so receivers see silence as a gap in
time, not as a jump in delay.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from voipclient.audio.jitter import (
    Conceal,
    End,
    FadeOut,
    JitterBuffer,
    JitterStats,
    Play,
    PlayFec,
    Silence,
)
from voipclient.audio.mixer import Mixer
from voipclient.audio.payload import (
    FRAME_NO_MODULUS,
    HEADER_LEN,
    decode_payload,
    encode_payload_fitting,
)
from voipclient.audio.redundancy import LEVEL_CLEAN, LossMeter, LossReport, RedundancyLevel
from voipclient.errors import LocalProtocolError

__all__ = [
    "DEFAULT_RELEASE_MS",
    "Decoder",
    "Encoder",
    "GateDecision",
    "PlaybackStats",
    "StreamStats",
    "TransmitGate",
    "VoicePlayback",
    "VoiceSender",
]

DEFAULT_RELEASE_MS: Final = 200.0  # ms: transmit keeps going this long after PTT is released
_HISTORY: Final = 8  # our own recent Opus packets kept for redundant copies (≥ max distance 6)
_DEPARTED_KEPT: Final = 64  # ended streams whose statistics stay visible
_DEPTH_HOLD: Final = 100  # payloads (2 s at 20 ms) before the wait for copies shrinks
_CHANNEL_MEMORY_S: Final = 1.0  # s: a channel a speaker's frames arrived on counts this long

Pcm = npt.NDArray[np.int16]


class Encoder(Protocol):
    """What the sender needs from an Opus encoder (``voipclient.audio.opus.OpusEncoder``)."""

    frame_samples: int

    def set_loss_percent(self, percent: int) -> None: ...

    def encode(self, pcm: Pcm) -> bytes: ...


class Decoder(Protocol):
    """What playback needs from an Opus decoder (``voipclient.audio.opus.OpusDecoder``)."""

    def decode(self, packet: bytes) -> Pcm: ...

    def decode_fec(self, next_packet: bytes) -> Pcm: ...

    def conceal(self) -> Pcm: ...


# --- transmit ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateDecision:
    """Where this frame goes.

    ``targets``: channels that get it as VOICE. ``ending``: channels whose transmission ends with
    this frame (sealed as VOICE_LAST). ``started`` / ``stopped``: we began / stopped transmitting
    to any channel with this frame (play the push-to-talk cue).
    """

    targets: tuple[int, ...]
    ending: tuple[int, ...]
    started: bool
    stopped: bool

    @property
    def sending(self) -> bool:
        return bool(self.targets or self.ending)


_IDLE: Final = GateDecision((), (), started=False, stopped=False)


class TransmitGate:
    """Which channels get my voice now, with a release delay per channel.

    The caller passes the channels it *wants* every frame: the push-to-talk router's decision
    for this frame's speech decision (``Route.wanted(is_speech)``; the router alone decides who
    hears me). A channel that drops out of the wanted set keeps receiving for ``release_ms``
    (the end of a word is not cut off), then gets one last frame sealed as VOICE_LAST so
    receivers end the stream cleanly.
    """

    def __init__(self, release_ms: float = DEFAULT_RELEASE_MS) -> None:
        if not (math.isfinite(release_ms) and release_ms >= 0):
            raise LocalProtocolError(f"release_ms must be ≥ 0, not {release_ms}")
        self.release_s = release_ms / 1000.0
        self._active: dict[int, float] = {}  # channel → time it stops (inf while wanted)

    @property
    def active(self) -> frozenset[int]:
        return frozenset(self._active)

    def update(self, wanted: Iterable[int], now: float) -> GateDecision:
        """The decision for the frame captured at ``now`` (s)."""
        wanted_set = wanted if isinstance(wanted, frozenset | set) else frozenset(wanted)
        if not wanted_set and not self._active:
            return _IDLE
        was_active = bool(self._active)
        for channel in wanted_set:
            self._active[channel] = math.inf
        ending: list[int] = []
        for channel, stop_at in list(self._active.items()):
            if channel in wanted_set:
                continue
            until = now + self.release_s if stop_at == math.inf else stop_at
            self._active[channel] = until
            if now >= until - 1e-9:
                ending.append(channel)
                del self._active[channel]
        targets = tuple(sorted(self._active))
        return GateDecision(
            targets,
            tuple(sorted(ending)),
            started=not was_active and bool(targets or ending),
            stopped=was_active and not self._active,
        )

    def drop(self, channel_id: int) -> None:
        """Forget a channel at once (we left it, or lost the right to speak there)."""
        self._active.pop(channel_id, None)


class VoiceSender:
    """Encodes each frame once and builds the payload with the redundancy level in force.

    Copies of earlier frames are the primary packets again (full copies) unless the level asks
    for compact ones (``copy_bitrate``) and a ``copy_encoder`` factory was given: then a second
    encoder, fed the same audio at that bitrate, makes them (it runs only while copies are
    sent; a copy it has not made yet falls back to the primary packet).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        first_frame_no: int = 0,
        copy_encoder: Callable[[int], Encoder] | None = None,
    ) -> None:
        self._encoder = encoder
        self._copy_factory = copy_encoder
        self._copy: Encoder | None = None
        self._copy_bitrate = 0
        self.frame_no = first_frame_no % FRAME_NO_MODULUS
        # our recent frames by frame_no % size: (frame_no, primary packet, compact copy)
        self._history: list[tuple[int, bytes, bytes | None] | None] = [None] * _HISTORY
        self.level: RedundancyLevel = LEVEL_CLEAN
        self.bitrate: int | None = None  # the user's Opus bitrate, once set
        self.frames_encoded = 0
        self.bytes_out = 0  # payload bytes (before sealing), for the bitrate figure
        self.copy_bytes_out = 0  # of which copies

    @property
    def frame_samples(self) -> int:
        return self._encoder.frame_samples

    def set_bitrate(self, bitrate: int) -> None:
        """The user's Opus bitrate from the next frame (encoders without the setting ignore it);
        a congestion cap in the level keeps the primary below it."""
        self.bitrate = bitrate
        self._apply_bitrate()

    def _apply_bitrate(self) -> None:
        setter = getattr(self._encoder, "set_bitrate", None)
        if setter is None or self.bitrate is None:
            return
        cap = self.level.bitrate_cap
        setter(min(self.bitrate, cap) if cap else self.bitrate)

    def set_level(self, level: RedundancyLevel) -> None:
        """Apply a redundancy level: the Opus loss hint and bitrate cap now, the copies from the
        next frame."""
        if level == self.level:
            return
        old = self.level
        self.level = level
        if level.loss_hint_percent != old.loss_hint_percent:
            self._encoder.set_loss_percent(level.loss_hint_percent)
        if level.bitrate_cap != old.bitrate_cap:
            self._apply_bitrate()
        wideband = self._wideband(level)
        if wideband != self._wideband(old):
            # the primary's band matches its copies' while they are on, and a primary capped
            # by congestion spends its few bits below 8 kHz (wideband)
            set_wideband = getattr(self._encoder, "set_wideband", None)
            if set_wideband is not None:
                set_wideband(wideband)
        if not (level.distances and level.copy_bitrate and self._copy_factory is not None):
            self._copy = None  # no compact copies now: the second encoder rests
        elif self._copy is None or level.copy_bitrate != self._copy_bitrate:
            self._copy = self._copy_factory(level.copy_bitrate)
            self._copy_bitrate = level.copy_bitrate

    def _wideband(self, level: RedundancyLevel) -> bool:
        compact = bool(level.distances and level.copy_bitrate and self._copy_factory)
        return level.wideband and (compact or bool(level.bitrate_cap))

    def encode(self, pcm: Pcm) -> bytes:
        """Encode the frame captured now and return its payload; advances ``frame_no``."""
        frame_no = self.frame_no
        packet = self._encoder.encode(pcm)
        compact = self._copy.encode(pcm) if self._copy is not None else None
        copies: list[tuple[int, bytes]] = []
        for distance in self.level.distances:
            slot = self._history[(frame_no - distance) % _HISTORY]
            if slot is not None and slot[0] == (frame_no - distance) % FRAME_NO_MODULUS:
                copy = slot[2] if slot[2] is not None and self._copy is not None else slot[1]
                copies.append((distance, copy))
        self._history[frame_no % _HISTORY] = (frame_no, packet, compact)
        self.frame_no = (frame_no + 1) % FRAME_NO_MODULUS
        payload = encode_payload_fitting(frame_no, packet, copies)
        self.frames_encoded += 1
        self.bytes_out += len(payload)
        self.copy_bytes_out += len(payload) - HEADER_LEN - len(packet)
        return payload

    def skip(self) -> None:
        """A frame of audio time passed without sending (frame numbers follow audio time)."""
        self._history[self.frame_no % _HISTORY] = None
        self.frame_no = (self.frame_no + 1) % FRAME_NO_MODULUS


# --- receive ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One speaker's stream: its jitter buffer's counters and what the pipeline did."""

    sender_id: int
    jitter: JitterStats
    decoded: int  # frames decoded (normal, FEC or concealment)
    skipped: int  # frames not decoded because the speaker or all its channels were muted
    redundancy_depth: int  # farthest copy in the speaker's recent payloads (frames)


@dataclass(frozen=True, slots=True)
class PlaybackStats:
    """The whole receive side."""

    malformed: int  # opened payloads that did not decode (dropped, counted)
    streams: tuple[StreamStats, ...]


@dataclass(eq=False)
class _Stream:
    sender_id: int
    jitter: JitterBuffer
    decoder: Decoder
    meter: LossMeter
    channels: dict[int, float] = field(default_factory=dict)  # channel → last arrival (s)
    last_frame_no: int | None = None  # output frame counter handed to the mixer
    decoded: int = 0
    skipped: int = 0
    depth: int = 1  # frames the jitter buffer may wait for a copy (after recent loss)
    depth_at: int = 0  # payload count when a payload last reached ``depth``
    payloads: int = 0
    last_heard: float = 0.0


class VoicePlayback:
    """Every speaker of every channel we are in → one output frame per call, pure.

    ``push`` is called for each opened voice datagram, ``render_into`` once per output frame;
    both from the same thread (the playback worker), or the caller serialises them.
    """

    def __init__(
        self,
        mixer: Mixer,
        decoder_factory: Callable[[], Decoder],
        *,
        frame_ms: int = 20,
        min_delay_ms: float = 0.0,
        max_delay_ms: float = 200.0,
        report_interval_s: float = 2.0,
        idle_forget_s: float = 30.0,
        fast_reports: bool = True,
    ) -> None:
        self.mixer = mixer
        self._decoder_factory = decoder_factory
        self.frame_ms = frame_ms
        self.frame_samples = mixer.frame_samples
        self._min_delay_ms = min_delay_ms
        self._max_delay_ms = max_delay_ms
        self._report_interval_s = report_interval_s
        self._fast_for_s = 3.0 if fast_reports else 0.0  # reports every 0.5 s at a stream start
        self._idle_forget_s = idle_forget_s
        self._streams: dict[int, _Stream] = {}
        self._departed: deque[StreamStats] = deque(maxlen=_DEPARTED_KEPT)
        # fade-out ramp, scaled to the mixer's float full scale (1.0 = 32768)
        self._fade = np.linspace(1.0, 0.0, self.frame_samples, dtype=np.float32) / np.float32(32768)
        self._scratch = np.zeros(self.frame_samples, dtype=np.float32)
        self.malformed = 0

    # -- input ----------------------------------------------------------------------------------

    def push(self, sender_id: int, channel_id: int, payload: bytes, last: bool, now: float) -> bool:
        """One opened voice datagram's payload. False (and counted) if it is malformed."""
        decoded = decode_payload(payload)
        if decoded is None:
            self.malformed += 1
            return False
        stream = self._streams.get(sender_id)
        if stream is None:
            stream = self._new_stream(sender_id, now)
        stream.channels[channel_id] = now
        stream.last_heard = now
        stream.meter.on_frame(decoded.frame_no, now, last)
        stream.jitter.push(decoded.frame_no, decoded.opus, now, last)
        # The wait for copies follows the farthest copy the speaker sends now: up at once, down
        # once no payload reached the deeper copy for _DEPTH_HOLD payloads (the sender's policy
        # lowered its level; the first payloads of a spurt carry fewer copies, which is not it).
        stream.payloads += 1
        depth = decoded.redundant[-1][0] if decoded.redundant else 1
        if depth >= stream.depth or stream.payloads - stream.depth_at > _DEPTH_HOLD:
            stream.depth = depth
            stream.depth_at = stream.payloads
        if stream.jitter.redundancy_depth != stream.depth:
            stream.jitter.set_redundancy_depth(min(stream.depth, 255))
        if decoded.redundant:
            for distance, packet in decoded.redundant:
                stream.jitter.push_recovered(decoded.frame_no_back(distance), packet)
        return True

    def _new_stream(self, sender_id: int, now: float) -> _Stream:
        stream = _Stream(
            sender_id,
            JitterBuffer(
                frame_ms=self.frame_ms,
                min_delay_ms=self._min_delay_ms,
                max_delay_ms=self._max_delay_ms,
            ),
            self._decoder_factory(),
            LossMeter(
                sender_id,
                now,
                report_interval_s=self._report_interval_s,
                frame_ms=self.frame_ms,
                fast_for_s=self._fast_for_s,
            ),
        )
        self._streams[sender_id] = stream
        return stream

    def forget_sender(self, sender_id: int) -> None:
        """The speaker left: drop its stream and its mixer state (its final statistics are kept
        in :meth:`stats`, the last :data:`_DEPARTED_KEPT` of them)."""
        stream = self._streams.pop(sender_id, None)
        if stream is not None:
            self._departed.append(self._stream_stats(stream))
        self.mixer.forget_sender(sender_id)

    # -- output ---------------------------------------------------------------------------------

    def render_into(self, out: Pcm, now: float) -> None:
        """Mix the frame that starts playing at ``now`` (s) into ``out`` (int16, frame_samples)."""
        mixer = self.mixer
        stale: list[int] = []
        for sender_id, stream in self._streams.items():
            decision = stream.jitter.pop(now)
            if isinstance(decision, Silence | End):
                if now - stream.last_heard > self._idle_forget_s:
                    stale.append(sender_id)
                continue
            channel = self._audible_channel(stream, now)
            if channel is None:
                stream.skipped += 1  # muted: keep the timing, skip the decoding
                continue
            pcm: Pcm
            if isinstance(decision, Play):
                pcm = stream.decoder.decode(decision.payload)
            elif isinstance(decision, PlayFec):
                pcm = stream.decoder.decode_fec(decision.next_payload)
            elif isinstance(decision, Conceal):
                pcm = stream.decoder.conceal()
            else:
                assert isinstance(decision, FadeOut)
                concealed = stream.decoder.conceal()
                n = min(len(concealed), self.frame_samples)
                scratch = self._scratch
                np.multiply(concealed[:n], self._fade[:n], out=scratch[:n])
                stream.decoded += 1
                mixer.add(sender_id, channel, self._next_frame_no(stream), scratch[:n])
                continue
            stream.decoded += 1
            mixer.add(sender_id, channel, self._next_frame_no(stream), pcm)
        for sender_id in stale:
            self._departed.append(self._stream_stats(self._streams.pop(sender_id)))
        mixer.mix_into(out)

    def _audible_channel(self, stream: _Stream, now: float) -> int | None:
        """A channel the speaker was heard on recently in which it is audible (loudest first)."""
        best: int | None = None
        best_gain = -1.0
        newest = max(stream.channels.values())
        for channel, seen in stream.channels.items():
            if newest - seen > _CHANNEL_MEMORY_S:
                continue  # the speaker stopped sending there
            if not self.mixer.is_audible(stream.sender_id, channel):
                continue
            gain = self.mixer.channel_volume(channel)
            if gain > best_gain:
                best, best_gain = channel, gain
        return best

    @staticmethod
    def _next_frame_no(stream: _Stream) -> int:
        """The stream's output frame counter (one stream per speaker already plays each frame
        once; the mixer's own dedupe on it is then a no-op safety net)."""
        n = 0 if stream.last_frame_no is None else (stream.last_frame_no + 1) % FRAME_NO_MODULUS
        stream.last_frame_no = n
        return n

    # -- reports and stats ---------------------------------------------------------------------

    def loss_reports(self, now: float) -> list[LossReport]:
        """Reports that are due (one per speaker every ``report_interval_s``)."""
        return [
            stream.meter.take_report(now)
            for stream in self._streams.values()
            if stream.meter.report_due(now)
        ]

    @property
    def speakers(self) -> frozenset[int]:
        return frozenset(self._streams)

    @staticmethod
    def _stream_stats(s: _Stream) -> StreamStats:
        return StreamStats(s.sender_id, s.jitter.stats, s.decoded, s.skipped, s.depth)

    def stats(self) -> PlaybackStats:
        """Streams that ended (departed or idle speakers) first, then the live ones."""
        return PlaybackStats(
            self.malformed,
            (*self._departed, *(self._stream_stats(s) for s in self._streams.values())),
        )
