"""When my sender keys step or start a new generation, and who must be sent which key (PROTOCOL §2).

:class:`SenderKeyScheduler` owns my :class:`~voipclient.crypto.media.SenderKey` of every channel I
transmit to and turns membership changes, reconnects, sent packets and time into *actions*: frozen
dataclasses that say which KeyDist to build and for whom. It never waits for anything: every key
change takes effect for the very next sealed datagram, and receivers buffer up to 1 s of an unknown
generation while its KeyDist races over TCP. Push-to-talk never waits on key setup; no acks.

Inputs (``now`` is seconds on any monotonic clock):

* :meth:`~SenderKeyScheduler.open_channel` / :meth:`~SenderKeyScheduler.close_channel`: I may (no
  longer) transmit to a channel.
* :meth:`~SenderKeyScheduler.member_joined`: step + 1 and a kind-2 catch-up for the joiner, joins
  within 500 ms coalesced into one step.
* :meth:`~SenderKeyScheduler.member_left` / ``member_kicked`` / ``member_timed_out``: gen + 1 at
  once, kind-1 KeyDists to the members that remain.
* :meth:`~SenderKeyScheduler.reconnected`: a new generation in every channel, always.
* :meth:`~SenderKeyScheduler.seal` (a packet is sent) and :meth:`~SenderKeyScheduler.tick`: a step
  every 2^16 packets, a generation every 60 minutes after its first packet, and a generation before
  ctr or step get near their limits.

Outputs: :meth:`~SenderKeyScheduler.take_actions` drains the queue of :data:`KeyAction` (aioquic's
``next_event()`` pattern: inputs only change state, so a rotation that ``seal`` triggers is queued
like any other). Not thread-safe: one thread owns the scheduler (in the client, the network
thread that owns :class:`~voipclient.net.e2ee.SecureSession`; the capture worker hands it encoded
frames to seal through its mailbox). The KeyDist builder
(:mod:`voipclient.crypto.keydist`) turns a :class:`NewGeneration` or :class:`StepForJoiners` into a
signed KeyDist; filtering recipients by TOFU state is its job, not this module's.

Member ids are the peers' session ``sender_id`` values (what a KeyDist names as ``recipient_id``).
Events for channels the scheduler does not hold are ignored, so the roster can feed it everything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import ClassVar, Final

from voipclient.crypto import sframe
from voipclient.crypto.keylog import KeyLogSink
from voipclient.crypto.media import STEP_LIMIT, U32_LIMIT, SenderKey
from voipclient.errors import LocalProtocolError

JOIN_COALESCE_S: Final = 0.5  # s: joins this close to the first pending one share one step
GENERATION_LIFETIME_S: Final = 3600.0  # s after a generation's first sealed packet
KIND_NEW_GENERATION: Final = 1  # KeyDist kind (PROTOCOL §2)
KIND_CATCH_UP: Final = 2


class RotationReason(IntEnum):
    """Why an action was emitted (for logs and stats)."""

    CHANNEL_OPENED = 1  # first generation of a channel I may transmit to
    MEMBER_LEFT = 2
    MEMBER_KICKED = 3
    MEMBER_TIMED_OUT = 4
    RECONNECTED = 5  # counters are never persisted: a new session means a new generation
    GENERATION_AGE = 6  # 60 minutes since the generation's first packet
    LIMIT = 7  # ctr within 2^16 of 2^32, or step within 16 of 2^16
    MEMBER_JOINED = 8  # step for joiners
    STEP_INTERVAL = 9  # 2^16 packets under one step


@dataclass(frozen=True, slots=True)
class NewGeneration:
    """Send a kind-1 KeyDist of a fresh generation to ``recipients``.

    Fields: ``channel_id`` and ``sender_id`` (mine, u32) name the key; ``gen`` (u32) is the new
    generation and ``step`` (u16) is always 0; ``base_key`` is S at that step (64 random bytes, not
    shown in repr); ``recipients`` are the channel's current members other than me, sorted (may be
    empty); ``reason`` says what triggered it; ``created_at`` is ``now`` of the triggering input
    (seconds, the caller's clock: the builder turns it into ``created_ms``).
    """

    kind: ClassVar[int] = KIND_NEW_GENERATION
    channel_id: int
    sender_id: int
    gen: int
    step: int
    base_key: bytes = field(repr=False)
    recipients: tuple[int, ...]
    reason: RotationReason
    created_at: float


@dataclass(frozen=True, slots=True)
class StepForJoiners:
    """Send a kind-2 catch-up KeyDist at (``gen``, ``step``) to the members that just joined.

    Same fields as :class:`NewGeneration`; ``recipients`` are the joiners only (sorted), and
    ``base_key`` is S at ``step``, which opens nothing sealed before the joiners joined: either the
    step was advanced for them, or nothing was sealed under it yet. Members already in the channel
    need no message: they ratchet forward lazily.
    """

    kind: ClassVar[int] = KIND_CATCH_UP
    channel_id: int
    sender_id: int
    gen: int
    step: int
    base_key: bytes = field(repr=False)
    recipients: tuple[int, ...]
    reason: RotationReason
    created_at: float

    @property
    def joiners(self) -> tuple[int, ...]:
        return self.recipients


@dataclass(frozen=True, slots=True)
class StepAdvanced:
    """My key of ``channel_id`` moved to ``step`` of ``gen`` on its own (2^16 packets under a step).

    Informational: no KeyDist is needed, receivers ratchet forward lazily (up to 16 steps ahead).
    Carries no key.
    """

    channel_id: int
    sender_id: int
    gen: int
    step: int
    reason: RotationReason
    created_at: float


KeyAction = NewGeneration | StepForJoiners | StepAdvanced


@dataclass(frozen=True, slots=True)
class ChannelKeyState:
    """A snapshot of one channel's sending state (no key bytes)."""

    channel_id: int
    gen: int
    step: int
    ctr: int
    members: frozenset[int]
    pending_joiners: frozenset[int]  # waiting for the coalesced join step
    join_deadline: float | None  # when the pending joiners get their step
    generation_started: float | None  # time of the generation's first sealed packet


class _Channel:
    __slots__ = ("first_sent", "join_deadline", "key", "members", "pending", "text_used_at")

    def __init__(self, key: SenderKey, members: set[int]) -> None:
        self.key = key
        self.members = members
        # (gen, step) under which a text message was sealed: text keys derive from the same S,
        # so a step that carried text is "used" for joiners exactly like one that carried voice.
        self.text_used_at: tuple[int, int] | None = None
        self.pending: set[int] = set()  # joiners waiting for the coalesced step
        self.join_deadline: float | None = None
        self.first_sent: float | None = None  # first packet sealed in the current generation


class SenderKeyScheduler:
    """My sender keys in every channel I transmit to, and the policy that rotates them.

    ``random_bytes(n)`` supplies fresh base keys (default :func:`os.urandom`; tests inject a
    deterministic one). ``first_gen`` is the generation number a channel starts at; it only ever
    grows, also across :meth:`close_channel` / :meth:`open_channel` and :meth:`reconnected`, so
    receivers never see a generation number twice from one (channel, sender).
    """

    def __init__(
        self,
        sender_id: int,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        keylog: KeyLogSink | None = None,
        first_gen: int = 0,
    ) -> None:
        if not 0 <= sender_id < U32_LIMIT:
            raise LocalProtocolError(f"sender_id {sender_id} does not fit in a u32")
        if not 0 <= first_gen < U32_LIMIT:
            raise LocalProtocolError(f"first_gen {first_gen} does not fit in a u32")
        self._sender_id = sender_id
        self._random = random_bytes
        self._keylog = keylog
        self._first_gen = first_gen
        self._channels: dict[int, _Channel] = {}
        self._last_gen: dict[int, int] = {}  # channel -> last generation used, kept after close
        self._actions: list[KeyAction] = []

    @property
    def sender_id(self) -> int:
        return self._sender_id

    # -- outputs ---------------------------------------------------------------------------------
    def take_actions(self) -> list[KeyAction]:
        """Every action queued since the last call, oldest first."""
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (a join step or a generation's age limit)."""
        times = [st.join_deadline for st in self._channels.values() if st.join_deadline is not None]
        times += [
            st.first_sent + GENERATION_LIFETIME_S
            for st in self._channels.values()
            if st.first_sent is not None
        ]
        return min(times, default=None)

    def channels(self) -> tuple[int, ...]:
        return tuple(sorted(self._channels))

    def state(self, channel_id: int) -> ChannelKeyState:
        st = self._channel(channel_id)
        return ChannelKeyState(
            channel_id=channel_id,
            gen=st.key.gen,
            step=st.key.step,
            ctr=st.key.ctr,
            members=frozenset(st.members),
            pending_joiners=frozenset(st.pending),
            join_deadline=st.join_deadline,
            generation_started=st.first_sent,
        )

    def base_key(self, channel_id: int) -> bytes:
        """``S`` at the channel's current (gen, step): for the text sealer that follows steps."""
        return self._channel(channel_id).key.base_key

    def text_sealed(self, channel_id: int) -> None:
        """A text message was sealed under the channel's current step (its key derives from S):
        a later joiner must get a newer step, as after voice."""
        st = self._channel(channel_id)
        st.text_used_at = (st.key.gen, st.key.step)

    def is_open(self, channel_id: int) -> bool:
        """Whether I hold a sender key for ``channel_id`` (cheap: for the per-frame path)."""
        return channel_id in self._channels

    # -- inputs: channels ------------------------------------------------------------------------
    def open_channel(self, channel_id: int, members: Iterable[int], now: float) -> None:
        """I may now transmit to ``channel_id``, whose members (besides me) are ``members``.

        Starts a generation and queues a kind-1 :class:`NewGeneration` to the members.
        """
        if channel_id in self._channels:
            raise LocalProtocolError(f"channel {channel_id} is already open")
        self._open(channel_id, members, now, RotationReason.CHANNEL_OPENED)

    def close_channel(self, channel_id: int) -> None:
        """I no longer transmit to ``channel_id``: forget the key (keep its generation number)."""
        self._channels.pop(channel_id, None)

    # -- inputs: membership ----------------------------------------------------------------------
    def member_joined(self, channel_id: int, member_id: int, now: float) -> None:
        """``member_id`` joined: it must hear me from now on, and nothing from before.

        If nothing was sealed under the current step yet (I was silent since the last step), its
        key opens nothing from before the join, so a kind-2 at that step goes out at once, without
        a step. Otherwise the joiner waits, with any others, :data:`JOIN_COALESCE_S` (500 ms) after
        the first; then one step + 1 covers them all (see :meth:`tick`).
        """
        st = self._channels.get(channel_id)
        if st is None or member_id == self._sender_id or member_id in st.members:
            return
        st.members.add(member_id)
        if not st.pending and not _step_used(st):
            self._queue_catch_up(channel_id, st, (member_id,), now)
            return
        st.pending.add(member_id)
        if st.join_deadline is None:
            st.join_deadline = now + JOIN_COALESCE_S

    def member_left(self, channel_id: int, member_id: int, now: float) -> None:
        """``member_id`` left: gen + 1 at once, kind-1 to the members that remain."""
        self._member_gone(channel_id, member_id, now, RotationReason.MEMBER_LEFT)

    def member_kicked(self, channel_id: int, member_id: int, now: float) -> None:
        """As :meth:`member_left`, recorded as a kick."""
        self._member_gone(channel_id, member_id, now, RotationReason.MEMBER_KICKED)

    def member_timed_out(self, channel_id: int, member_id: int, now: float) -> None:
        """As :meth:`member_left`, recorded as a timeout."""
        self._member_gone(channel_id, member_id, now, RotationReason.MEMBER_TIMED_OUT)

    def reconnected(
        self,
        now: float,
        *,
        sender_id: int | None = None,
        members: Mapping[int, Iterable[int]] | None = None,
    ) -> None:
        """A new session: new generation in every channel, always (counters are never persisted).

        ``sender_id``: my id in the new session, if the server assigned a new one. ``members``: the
        channels I transmit to now with their members, if known; channels missing from it are
        closed, new ones opened. Without it the channels and members before the reconnect stay.
        """
        if sender_id is not None:
            if not 0 <= sender_id < U32_LIMIT:
                raise LocalProtocolError(f"sender_id {sender_id} does not fit in a u32")
            self._sender_id = sender_id
        if members is not None:
            for channel_id in [c for c in self._channels if c not in members]:
                del self._channels[channel_id]
        for channel_id in list(self._channels):
            old = self._channels.pop(channel_id)
            now_members = old.members if members is None else members[channel_id]
            self._open(channel_id, now_members, now, RotationReason.RECONNECTED)
        if members is not None:
            for channel_id, channel_members in members.items():
                if channel_id not in self._channels:
                    self._open(channel_id, channel_members, now, RotationReason.RECONNECTED)

    # -- inputs: packets and time ----------------------------------------------------------------
    def seal(self, channel_id: int, ptype: int, payload: bytes, now: float) -> bytes:
        """Seal one datagram for ``channel_id`` (``header ‖ ct ‖ tag``; append the hop MAC next).

        Applies what is due first: a coalesced join step, a new generation (age or limits), or a
        periodic step. Raises :class:`LocalProtocolError` for a channel that is not open.
        """
        st = self._channels.get(channel_id)
        if st is None:
            raise LocalProtocolError(f"channel {channel_id} is not open", field="channel_id")
        key = st.key
        if st.join_deadline is not None and now >= st.join_deadline:
            self._flush_joiners(channel_id, st, now)
        if key.rotation_needed:
            self._new_generation(channel_id, st, now, RotationReason.LIMIT)
        elif st.first_sent is not None and now - st.first_sent >= GENERATION_LIFETIME_S:
            self._new_generation(channel_id, st, now, RotationReason.GENERATION_AGE)
        elif key.step_due:
            key.advance_step()
            self._actions.append(
                StepAdvanced(
                    channel_id,
                    self._sender_id,
                    key.gen,
                    key.step,
                    RotationReason.STEP_INTERVAL,
                    now,
                )
            )
        if st.first_sent is None:
            st.first_sent = now
        return key.seal(ptype, payload)

    def tick(self, now: float) -> None:
        """Carry out what is due by ``now``: coalesced join steps, generations past 60 minutes.

        Call it at :meth:`next_deadline`. Rotating an aged generation here rather than at the next
        :meth:`seal` sends its KeyDists before the next push-to-talk needs them.
        """
        for channel_id, st in list(self._channels.items()):
            if st.join_deadline is not None and now >= st.join_deadline:
                self._flush_joiners(channel_id, st, now)
            if st.first_sent is not None and now - st.first_sent >= GENERATION_LIFETIME_S:
                self._new_generation(channel_id, st, now, RotationReason.GENERATION_AGE)

    # -- internals -------------------------------------------------------------------------------
    def _channel(self, channel_id: int) -> _Channel:
        st = self._channels.get(channel_id)
        if st is None:
            raise LocalProtocolError(f"channel {channel_id} is not open", field="channel_id")
        return st

    def _open(
        self, channel_id: int, members: Iterable[int], now: float, reason: RotationReason
    ) -> None:
        key = SenderKey(channel_id, self._sender_id, keylog=self._keylog)
        st = _Channel(key, {m for m in members if m != self._sender_id})
        self._channels[channel_id] = st
        self._new_generation(channel_id, st, now, reason)

    def _new_generation(
        self, channel_id: int, st: _Channel, now: float, reason: RotationReason
    ) -> None:
        last = self._last_gen.get(channel_id)
        gen = self._first_gen if last is None else last + 1
        if gen >= U32_LIMIT:
            raise LocalProtocolError(f"channel {channel_id}: generation numbers exhausted")
        st.key.new_generation(gen, self._random(sframe.BASE_KEY_LEN))
        self._last_gen[channel_id] = gen
        # Pending joiners are members: the kind-1 below covers them.
        st.pending.clear()
        st.join_deadline = None
        st.first_sent = None
        self._actions.append(
            NewGeneration(
                channel_id=channel_id,
                sender_id=self._sender_id,
                gen=gen,
                step=0,
                base_key=st.key.base_key,
                recipients=tuple(sorted(st.members)),
                reason=reason,
                created_at=now,
            )
        )

    def _member_gone(
        self, channel_id: int, member_id: int, now: float, reason: RotationReason
    ) -> None:
        st = self._channels.get(channel_id)
        if st is None or member_id not in st.members:
            return  # it never got a key from me: nothing to revoke
        st.members.discard(member_id)
        st.pending.discard(member_id)
        # A key queued for it and not yet taken (it joined and left within one batch) must not
        # go out after it left: only members get keys. A catch-up left with nobody is dropped.
        kept: list[KeyAction] = []
        for action in self._actions:
            if (
                not isinstance(action, StepAdvanced)
                and action.channel_id == channel_id
                and member_id in action.recipients
            ):
                rest = tuple(r for r in action.recipients if r != member_id)
                if rest or isinstance(action, NewGeneration):
                    kept.append(replace(action, recipients=rest))
                continue
            kept.append(action)
        self._actions = kept
        self._new_generation(channel_id, st, now, reason)

    def _flush_joiners(self, channel_id: int, st: _Channel, now: float) -> None:
        joiners = tuple(sorted(st.pending))
        st.pending.clear()
        st.join_deadline = None
        if not joiners:
            return
        if _step_used(st):
            if st.key.step >= STEP_LIMIT - 1:
                # No step left: a new generation covers the joiners (they are members already).
                self._new_generation(channel_id, st, now, RotationReason.LIMIT)
                return
            st.key.advance_step()
        self._queue_catch_up(channel_id, st, joiners, now)

    def _queue_catch_up(
        self, channel_id: int, st: _Channel, joiners: tuple[int, ...], now: float
    ) -> None:
        self._actions.append(
            StepForJoiners(
                channel_id=channel_id,
                sender_id=self._sender_id,
                gen=st.key.gen,
                step=st.key.step,
                base_key=st.key.base_key,
                recipients=joiners,
                reason=RotationReason.MEMBER_JOINED,
                created_at=now,
            )
        )


def _step_used(st: _Channel) -> bool:
    """Whether anything (voice or text) was sealed under the channel's current step."""
    return st.key.packets_in_step > 0 or st.text_used_at == (st.key.gen, st.key.step)
