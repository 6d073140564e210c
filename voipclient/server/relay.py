"""The relay's UDP core: hop checks, address validation and fan-out of voice datagrams (sans-IO).

The relay is blind (PROTOCOL §3, §5): it never holds a media key. Per voice datagram it checks,
dropping silently at the first failure and counting the reason (:class:`RelayDrop`):

1. length 46..1200, ``ver`` = 1, a ptype it handles (VOICE, VOICE_LAST, or a c2s hop control)
2. the session named by ``sender_id`` (bytes 8..12) exists
3. the hop MAC under that session's K_c2s (constant time)
4. UDP only: the source address is the session's validated address
5. the sender may speak in ``channel_id`` (``roster.may_speak``)
6. replay window on (sender, channel, gen, ctr), so a replay is never amplified
7. size (``limits.max_datagram``) and rate (token bucket, ``packets_per_s`` with ``burst``) per
   session
8. fan-out to every listener of the channel except the sender: ``bytes[0:36+n] ‖ HMAC(K_s2c of
   the listener)[:10]``, to its validated UDP address, or into :meth:`RelayCore.take_tunnel` when
   it asked for voice over TLS. Listeners with neither get nothing (``unreachable`` counts them).

Bytes 0..35+n are never changed. Nothing is sent to an address that is not validated, except the
46-byte CHALLENGE answering a MAC-valid 46-byte BIND (at most ``binds_per_s`` per session).
Hop-control datagrams (:mod:`voipclient.net.hopctl`) take steps 1-3, then their own checks.

Address validation (per session; the old address stays valid until a new one confirms, which is
how NAT rebinding works)::

    BIND from A (MAC ok, seq new, bind bucket ok) -> pending = (random challenge, A, now);
                                                      CHALLENGE to A (replaces any pending one)
    BIND_CONFIRM from B with body c                -> accepted iff c == pending challenge,
                                                      B == A and now - issued <= lifetime:
                                                      validated address = A, pending cleared,
                                                      BIND_OK to A; else BAD_CHALLENGE
    PING from the validated address                -> PONG to it (rate limited as voice)

Pure: no sockets, clocks or threads; ``now`` is the adapter's monotonic clock in seconds and
randomness comes from the injected ``rng``. Nothing a peer sends raises. Not thread-safe: the
asyncio adapter owns it on its event loop.

Performance: fan-out lists per channel (listener id, address, bound s2c MAC function) and the
``may_speak`` answers are cached, and thrown away whenever ``roster.roster_version`` changes or a
session, address or tunnel flag changes here.

Batch sending: given ``pack_address`` (the adapter's ``sockaddr`` packer), each channel's cache
also holds a wire list ``(listener id, packed sockaddr, the listener's keyed s2c HMAC copy)``,
and :meth:`RelayCore.datagram_received` with a ``sink`` hands a forwarded datagram's UDP copies
to the sink in one call (``sink(data, body_len, wire, skip=sender_id)``) instead of returning
them: the adapter's sink MACs them into a ``sendmmsg`` batch (:mod:`voipclient.server.mmsg`).
The checks and counters are the same on both paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import IntEnum
from hmac import compare_digest
from typing import Final, NamedTuple, Protocol

from voipclient.crypto.hop import HOP_MAC_LEN, HopMac, derive_hop_keys
from voipclient.crypto.media import (
    HEADER_STRUCT,
    MAX_DATAGRAM_LEN,
    MIN_DATAGRAM_LEN,
    PTYPE_VOICE,
    PTYPE_VOICE_LAST,
    VERSION,
)
from voipclient.crypto.replay import ReplayWindow
from voipclient.errors import LocalProtocolError
from voipclient.net.hopctl import (
    C2S_PTYPES,
    CHALLENGE_LEN,
    PTYPE_BIND,
    PTYPE_BIND_CONFIRM,
    SEQ_LIMIT,
    decode_ping,
    encode_bind_ok,
    encode_challenge,
    encode_pong,
    parse_hop_control,
)

Addr = tuple[str, int]


class HmacContext(Protocol):
    """A fresh pre-keyed HMAC-SHA256 (cryptography's ``HMAC``): what ``HopMac.fresh()`` returns."""

    def update(self, data: bytes, /) -> None: ...

    def finalize(self) -> bytes: ...


#: One listener of a channel's fan-out for a batch sender: (listener id, packed sockaddr, its
#: keyed s2c HMAC ``copy``, its s2c key state for the native sender or b"") (see
#: :mod:`voipclient.server.mmsg`).
WireEntry = tuple[int, bytes, Callable[[], HmacContext], bytes]


class WirePlan(NamedTuple):
    """The copies of one speaker's datagram for a batch sender: every listener of the channel
    but the speaker, in order. Built once per (channel, speaker) and roster version, so that the
    sender's per-datagram work is a loop over ``fresh`` and one store of ``names`` (or, for the
    native sender, one call with ``native``)."""

    fresh: tuple[Callable[[], HmacContext], ...]  # each listener's keyed s2c HMAC ``copy``
    names: bytes  # their packed sockaddrs back to back (all of one length: the socket's family)
    native: bytes = b""  # with key states: each listener's, back to back, then ``names``

    def __repr__(self) -> str:  # the key states are as secret as the keys
        return f"WirePlan(<{len(self.fresh)} listeners, keys hidden>)"


def wire_plan(entries: Sequence[WireEntry], skip: int) -> WirePlan:
    """The plan for ``entries`` without listener ``skip`` (the speaker)."""
    kept = [e for e in entries if e[0] != skip]
    names = b"".join(e[1] for e in kept)
    states = [e[3] for e in kept]
    native = b"".join(states) + names if kept and all(states) else b""
    return WirePlan(tuple(e[2] for e in kept), names, native)


class NativeVoicePath(Protocol):
    """The relay's voice checks and their state out of the interpreter (``mmsg.NativeVoice``,
    ``_fanout.c``'s ``vc_voice``): with it, :class:`RelayCore` keeps sessions' c2s keys,
    validated addresses, token buckets and replay windows there, and installs one route per
    (channel, speaker) and roster version. ``voice`` and ``resume`` are the raw calls, taking
    ``handle`` and ``batch_ptr`` first (the per-datagram path makes no Python call in between)."""

    handle: object
    batch_ptr: object
    voice: Callable[[object, object, bytes, int, bytes, int], int]
    tunnel: Callable[[object, object, bytes, int, int], int]
    resume: Callable[[object, object, bytes, int], int]
    key_state: Callable[[bytes], bytes]

    def set_limits(self, packets_per_s: float, burst: int, max_datagram: int) -> None: ...
    def set_now(self, now: float) -> None: ...
    def add_session(self, sender_id: int, k_c2s: bytes) -> None: ...
    def remove_session(self, sender_id: int) -> None: ...
    def set_address(self, sender_id: int, packed: bytes) -> None: ...
    def received(self, sender_id: int) -> int: ...
    def take_token(self, sender_id: int) -> bool: ...
    def routes_clear(self) -> None: ...
    def set_route(self, channel_id: int, sender_id: int, plan: bytes, extras: bool) -> None: ...
    def counters(self) -> list[int]: ...
    def flush(self) -> None: ...


#: What ``NativeVoicePath.voice`` returns besides a count of copies (``_fanout.c``'s VC_*).
_VC_DROPPED: Final = -1
_VC_HOP: Final = -2
_VC_ROUTE: Final = -3
_VC_FULL: Final = -4
_VC_BIG: Final = -5
_VC_SELF: Final = -6
_VC_EXTRAS: Final = 1 << 24
#: Its counters after the drop reasons (``vc_counters``), in this order.
_VC_COUNTERS: Final = (
    "packets_in",
    "bytes_in",
    "packets_out",
    "bytes_out",
    "forwarded",
    "copies_udp",
)

#: ``sink(data, body_len, plan)`` -> copies queued (see :mod:`~.mmsg`).
FanOutSink = Callable[[bytes, int, WirePlan], int]

#: Generations whose replay windows are kept per (sender, channel): the newest two.
KEPT_GENERATIONS: Final = 2

#: ptypes that get past step 1 (voice and client-to-server hop control).
_VOICE_PTYPES: Final = frozenset((PTYPE_VOICE, PTYPE_VOICE_LAST))
_ACCEPTED_PTYPES: Final = _VOICE_PTYPES | C2S_PTYPES
_HOP_FIRST: Final = 0x10


class RelayDrop(IntEnum):
    """Why the relay dropped a datagram; one counter each, roughly in check order."""

    BAD_LENGTH = 0  # shorter than 46 or longer than 1200 bytes (hop control: not exactly 46)
    UNKNOWN_VERSION = 1  # ver != 0x01
    UNKNOWN_PTYPE = 2  # not VOICE/VOICE_LAST/BIND/BIND_CONFIRM/PING (hop control on the tunnel)
    UNKNOWN_SESSION = 3  # no session with this sender_id
    BAD_HOP_MAC = 4  # MAC under the session's K_c2s fails (forged, spoofed sender, s2c reflected)
    UNVALIDATED_ADDRESS = 5  # voice or PING from an address that is not the validated one
    NOT_SPEAKER = 6  # the sender may not speak in channel_id (not a member, or the ACL)
    REPLAY = 7  # (sender, channel, gen, ctr) or the hop-control seq seen before / below window
    RATE_LIMIT = 8  # the session's packet token bucket is empty
    BAD_CHALLENGE = 9  # BIND_CONFIRM: no pending challenge, wrong bytes, other address, expired
    OLD_GENERATION = 10  # gen older than the newest two seen from that (sender, channel)
    OVERSIZE = 11  # longer than limits.max_datagram (when configured below 1200)
    BIND_RATE_LIMIT = 12  # more BINDs than binds_per_s (each would cost a CHALLENGE)
    BAD_HOP_CONTROL = 13  # hop control with a valid MAC but a malformed header or body
    SENDER_MISMATCH = 14  # tunnel: the datagram names another sender than its TLS session
    SEQ_EXHAUSTED = 15  # the relay's s2c hop-control seq reached 2^32 for this session


# Plain ints for the hot path: indexing a list with an IntEnum member costs ~0.1 µs more.
_BAD_LENGTH: Final = int(RelayDrop.BAD_LENGTH)
_UNKNOWN_VERSION: Final = int(RelayDrop.UNKNOWN_VERSION)
_UNKNOWN_PTYPE: Final = int(RelayDrop.UNKNOWN_PTYPE)
_UNKNOWN_SESSION: Final = int(RelayDrop.UNKNOWN_SESSION)
_BAD_HOP_MAC: Final = int(RelayDrop.BAD_HOP_MAC)
_UNVALIDATED_ADDRESS: Final = int(RelayDrop.UNVALIDATED_ADDRESS)
_NOT_SPEAKER: Final = int(RelayDrop.NOT_SPEAKER)
_REPLAY: Final = int(RelayDrop.REPLAY)
_RATE_LIMIT: Final = int(RelayDrop.RATE_LIMIT)
_BAD_CHALLENGE: Final = int(RelayDrop.BAD_CHALLENGE)
_OLD_GENERATION: Final = int(RelayDrop.OLD_GENERATION)
_OVERSIZE: Final = int(RelayDrop.OVERSIZE)
_BIND_RATE_LIMIT: Final = int(RelayDrop.BIND_RATE_LIMIT)
_BAD_HOP_CONTROL: Final = int(RelayDrop.BAD_HOP_CONTROL)
_SENDER_MISMATCH: Final = int(RelayDrop.SENDER_MISMATCH)
_SEQ_EXHAUSTED: Final = int(RelayDrop.SEQ_EXHAUSTED)


class RelayRoster(Protocol):
    """What the relay asks the roster (``voipclient.server.control.ServerCore`` satisfies it)."""

    def may_speak(self, sender_id: int, channel_id: int) -> bool:
        """``sender_id`` is a member of ``channel_id`` and may transmit there."""
        ...

    def listeners(self, channel_id: int, exclude: int | None = None) -> Collection[int]:
        """Sender ids that should hear ``channel_id`` (members, minus deafened and ``exclude``)."""
        ...

    @property
    def roster_version(self) -> int:
        """Changes whenever memberships, users (deafen) or channels change."""
        ...


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """Per-session limits. Rates in 1/s, sizes in bytes, times in seconds."""

    packets_per_s: float = 100.0  # voice + PING, token bucket refill (PROTOCOL §3: <= 100/s)
    burst: int = 50  # token bucket size, packets
    max_datagram: int = MAX_DATAGRAM_LEN  # largest voice datagram relayed (46..1200)
    challenge_lifetime_s: float = 5.0  # a CHALLENGE must be confirmed within this
    binds_per_s: float = 2.0  # BINDs answered per second (each answer is one CHALLENGE)
    bind_burst: int = 2  # BINDs answered back to back

    def __post_init__(self) -> None:
        if not self.packets_per_s > 0 or self.burst < 1:
            raise LocalProtocolError("packets_per_s must be > 0 and burst >= 1")
        if not MIN_DATAGRAM_LEN <= self.max_datagram <= MAX_DATAGRAM_LEN:
            raise LocalProtocolError(
                f"max_datagram must be within {MIN_DATAGRAM_LEN}..{MAX_DATAGRAM_LEN}"
            )
        if not self.challenge_lifetime_s > 0:
            raise LocalProtocolError("challenge_lifetime_s must be > 0")
        if not self.binds_per_s > 0 or self.bind_burst < 1:
            raise LocalProtocolError("binds_per_s must be > 0 and bind_burst >= 1")


_NEVER: Final = float("-inf")


class _Session:
    """Relay state of one session. Token buckets are inlined (two floats each) to save calls."""

    __slots__ = (
        "addr",
        "append_s2c",
        "bind_last",
        "bind_tokens",
        "c2s",
        "challenge",
        "challenge_addr",
        "challenge_at",
        "fresh_s2c",
        "hop_window",
        "key_state",
        "out_seq",
        "packed",
        "received",
        "reported",
        "s2c",
        "sender_id",
        "tokens",
        "tokens_last",
        "tunnel",
        "verify_c2s",
        "windows",
    )

    def __init__(
        self,
        sender_id: int,
        hop_secret: bytes,
        limits: RelayLimits,
        key_state: Callable[[bytes], bytes] | None = None,
    ) -> None:
        k_c2s, k_s2c = derive_hop_keys(hop_secret)
        self.key_state = key_state(k_s2c) if key_state is not None else b""
        self.sender_id = sender_id
        self.c2s = HopMac(k_c2s)
        self.s2c = HopMac(k_s2c)
        self.verify_c2s = self.c2s.verify  # bound once: saves an attribute lookup per packet
        self.append_s2c = self.s2c.append
        self.fresh_s2c = self.s2c.fresh
        self.addr: Addr | None = None  # the validated UDP address
        self.packed = b""  # ... as the adapter's sockaddr (with pack_address)
        self.tunnel = False  # wants voice over its TLS connection
        self.challenge: bytes | None = None  # pending CHALLENGE ...
        self.challenge_addr: Addr | None = None  # ... the address it went to ...
        self.challenge_at = 0.0  # ... and when (s)
        self.tokens = float(limits.burst)  # packet bucket
        self.tokens_last = _NEVER
        self.bind_tokens = float(limits.bind_burst)  # BIND bucket
        self.bind_last = _NEVER
        self.hop_window = ReplayWindow()  # c2s hop-control seq
        self.out_seq = 0  # next s2c hop-control seq
        self.received = 0  # hop-MAC-valid UDP datagrams from this session
        self.reported = 0  # part of `received` already handed out by take_received()
        # channel -> gen -> replay window (the newest KEPT_GENERATIONS gens per channel)
        self.windows: dict[int, dict[int, ReplayWindow]] = {}


class _FanOut:
    """Cached routing of one channel; valid for one roster version and one local version."""

    __slots__ = ("plans", "remote", "speak", "tunnel", "udp", "unreachable", "wire")

    def __init__(
        self,
        udp: list[tuple[int, Addr, Callable[[bytes], bytes]]],
        wire: list[WireEntry],
        tunnel: list[tuple[int, Callable[[bytes], bytes]]],
        unreachable: tuple[int, ...],
        remote: bool = False,
    ) -> None:
        self.remote = remote  # listeners on other cluster nodes: the datagram goes to them once
        self.udp = udp  # (listener id, validated address, its s2c MAC-and-append)
        self.wire = wire  # (listener id, packed address, its keyed s2c copy): for a sink
        self.tunnel = tunnel  # (listener id, its s2c MAC-and-append)
        self.unreachable = unreachable  # listeners with no validated address and no tunnel
        self.speak: dict[int, bool] = {}  # memo of roster.may_speak(sender, this channel)
        self.plans: dict[int, WirePlan] = {}  # speaker -> the copies of its datagrams (a sink)


class RelayCore:
    """The relay's per-datagram logic for all sessions of one server.

    Args:
        roster: answers ``may_speak``, ``listeners`` and ``roster_version`` (the ServerCore).
        rng: randomness for challenges (``os.urandom`` in production).
        limits: per-session limits.
        pack_address: the adapter's address packer (``mmsg.sockaddr`` for its socket), so
            that a ``sink`` can be passed to :meth:`datagram_received`; None: no sink.
        key_state: the sink's keying of a listener from its raw s2c key (the native sender's
            HMAC states, ``NativeSendMmsg.key_state``): kept per session and joined into each
            plan's ``native``; None: plans carry only the keyed HMAC copies.
        report_validated: keep the addresses validated here for :meth:`take_validated` (a UDP
            worker tells the others).
        native: the voice checks and their state in C (``mmsg.NativeVoice``); its batch takes
            the copies when :meth:`datagram_received` gets a ``sink`` (that batch's ``add``).
            Hop control, routes and everything else stay here.
        is_remote: on a cluster node, tells the listeners that are users of other nodes: a
            datagram for a channel with any goes once into :meth:`take_remote` (its body, the
            hop MAC removed), and other nodes' datagrams come in through
            :meth:`remote_received`.

    The adapter calls :meth:`add_session` at login (with the session's ``hop_secret``),
    :meth:`remove_session` when it ends, :meth:`set_tunnel` on ``voice_transport``, feeds every UDP
    datagram to :meth:`datagram_received` and every tunnelled one to :meth:`tunnel_received`,
    sends what they return, and drains :meth:`take_tunnel` (to ``ServerCore.send_voice_tunnel``)
    and :meth:`take_received` (to ``ServerCore.note_udp_received``) after each batch.
    """

    def __init__(
        self,
        roster: RelayRoster,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        limits: RelayLimits = RelayLimits(),
        pack_address: Callable[[Addr], bytes] | None = None,
        key_state: Callable[[bytes], bytes] | None = None,
        report_validated: bool = False,
        is_remote: Callable[[int], bool] | None = None,
        native: NativeVoicePath | None = None,
    ) -> None:
        self._is_remote = is_remote
        self._native = native
        self._native_now = float("nan")
        self._packed: dict[Addr, bytes] = {}  # the native path's addresses, packed
        if native is not None:
            if pack_address is None:
                raise LocalProtocolError("the native voice path needs pack_address")
            key_state = key_state or native.key_state
            native.set_limits(limits.packets_per_s, limits.burst, limits.max_datagram)
        self._roster = roster
        self._report_validated = report_validated
        self._pack = pack_address
        self._key_state = key_state
        self._rng = rng
        self._limits = limits
        self._rate = float(limits.packets_per_s)
        self._burst = float(limits.burst)
        self._max_datagram = limits.max_datagram
        self._sessions: dict[int, _Session] = {}
        self._fanout: dict[int, _FanOut] = {}
        self._fanout_version = roster.roster_version
        self._tunnel_out: list[tuple[int, bytes]] = []
        self._validated_out: list[tuple[int, Addr]] = []
        self._remote_out: list[bytes] = []
        self._to_remote = 0
        self._from_remote = 0
        self._drops = [0] * len(RelayDrop)
        self._packets_in = 0
        self._bytes_in = 0
        self._packets_out = 0
        self._bytes_out = 0
        self._forwarded = 0
        self._copies_udp = 0
        self._copies_tunnel = 0
        self._unreachable = 0
        self._hop_replies = 0
        self._fanout_builds = 0

    # -- sessions (called by the adapter) ---------------------------------------------------------

    def add_session(self, sender_id: int, hop_secret: bytes) -> None:
        """A session logged in. Raises :class:`LocalProtocolError` if ``sender_id`` is taken or
        ``hop_secret`` is not 32 bytes."""
        if sender_id in self._sessions:
            raise LocalProtocolError(f"relay session {sender_id} exists", field="sender_id")
        if not 0 < sender_id < SEQ_LIMIT:
            raise LocalProtocolError(f"sender_id {sender_id} is not a u32 id", field="sender_id")
        self._sessions[sender_id] = _Session(sender_id, hop_secret, self._limits, self._key_state)
        if self._native is not None:
            self._native.add_session(sender_id, derive_hop_keys(hop_secret)[0])
        self._clear_fanout()

    def remove_session(self, sender_id: int) -> None:
        """A session ended; unknown ids are ignored (the adapter may race with itself)."""
        if self._sessions.pop(sender_id, None) is not None:
            if self._native is not None:
                self._native.remove_session(sender_id)
            self._clear_fanout()

    def set_address(self, sender_id: int, addr: Addr | None) -> None:
        """A validated address learned elsewhere: another UDP worker validated it (its owner,
        see ``voipclient.server.workers``). Unknown ids and unpackable addresses are ignored."""
        sess = self._sessions.get(sender_id)
        if sess is None or sess.addr == addr:
            return
        if addr is not None and self._pack is not None:
            try:
                sess.packed = self._pack(addr)
            except (OSError, ValueError):
                return
        sess.addr = addr
        if self._native is not None:
            self._native.set_address(sender_id, sess.packed if addr is not None else b"")
        self._clear_fanout()

    def take_validated(self) -> list[tuple[int, Addr]]:
        """``(sender_id, address)`` validated here (BIND_CONFIRM) since the last call."""
        out = self._validated_out
        self._validated_out = []
        return out

    def set_tunnel(self, sender_id: int, tunnel: bool) -> None:
        """The listener wants its voice over TLS (True) or UDP (False). Unknown ids are ignored."""
        sess = self._sessions.get(sender_id)
        if sess is not None and sess.tunnel != tunnel:
            sess.tunnel = tunnel
            self._clear_fanout()

    # -- queries ----------------------------------------------------------------------------------

    def address_of(self, sender_id: int) -> Addr | None:
        """The validated UDP address of a session, or None."""
        sess = self._sessions.get(sender_id)
        return None if sess is None else sess.addr

    def has_session(self, sender_id: int) -> bool:
        return sender_id in self._sessions

    def received(self, sender_id: int) -> int:
        """Hop-MAC-valid UDP datagrams received from a session so far (0 if unknown)."""
        sess = self._sessions.get(sender_id)
        if sess is None:
            return 0
        return sess.received if self._native is None else self._native.received(sender_id)

    def take_received(self) -> list[tuple[int, int]]:
        """``(sender_id, count)`` received since the last call, for ``note_udp_received``."""
        out = []
        native = self._native
        for sid, sess in self._sessions.items():
            if native is not None:
                sess.received = native.received(sid)
            delta = sess.received - sess.reported
            if delta:
                sess.reported = sess.received
                out.append((sid, delta))
        return out

    def take_remote(self) -> list[bytes]:
        """Bodies (datagram minus hop MAC) of voice for listeners on other cluster nodes."""
        out = self._remote_out
        self._remote_out = []
        return out

    def take_tunnel(self) -> list[tuple[int, bytes]]:
        """``(listener sender_id, datagram)`` for tunnel-mode listeners since the last call."""
        out = self._tunnel_out
        self._tunnel_out = []
        return out

    def drops(self) -> dict[RelayDrop, int]:
        """A snapshot of the drop counters, every reason present."""
        drops = self._drops_now()
        return {reason: drops[reason] for reason in RelayDrop}

    def _drops_now(self) -> list[int]:
        if self._native is None:
            return self._drops
        c = self._native.counters()
        return [a + b for a, b in zip(self._drops, c, strict=False)]

    def _count(self, name: str) -> int:
        """A counter, with the native voice path's share."""
        own: int = getattr(self, "_" + name)
        if self._native is None:
            return own
        return own + self._native.counters()[len(RelayDrop) + _VC_COUNTERS.index(name)]

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (for the adapter's JSON stats line).

        ``packets_in``/``bytes_in``: every datagram handed in (UDP and tunnel);
        ``packets_out``/``bytes_out``: every datagram produced (UDP copies, tunnel copies,
        hop-control replies); ``forwarded``: voice datagrams that passed every check;
        ``copies_udp``/``copies_tunnel``: forwarded copies by path; ``unreachable``: copies not
        made because the listener had no validated address and no tunnel; ``hop_replies``:
        CHALLENGE/BIND_OK/PONG sent; ``dropped``: sum of :meth:`drops`; ``sessions``,
        ``validated``: sessions, and those with a validated address; ``fanout_builds``: cache
        rebuilds of a channel's fan-out list.
        """
        return {
            "packets_in": self._count("packets_in"),
            "bytes_in": self._count("bytes_in"),
            "packets_out": self._count("packets_out"),
            "bytes_out": self._count("bytes_out"),
            "forwarded": self._count("forwarded"),
            "copies_udp": self._count("copies_udp"),
            "copies_tunnel": self._copies_tunnel,
            "unreachable": self._unreachable,
            "hop_replies": self._hop_replies,
            "dropped": sum(self._drops_now()),
            "sessions": len(self._sessions),
            "validated": sum(1 for s in self._sessions.values() if s.addr is not None),
            "fanout_builds": self._fanout_builds,
            "to_cluster": self._to_remote,
            "from_cluster": self._from_remote,
        }

    @property
    def packets_in(self) -> int:
        return self._count("packets_in")

    @property
    def packets_out(self) -> int:
        return self._count("packets_out")

    @property
    def bytes_in(self) -> int:
        return self._count("bytes_in")

    @property
    def bytes_out(self) -> int:
        return self._count("bytes_out")

    @property
    def forwarded(self) -> int:
        return self._count("forwarded")

    # -- per datagram -----------------------------------------------------------------------------

    def datagram_received(
        self, data: bytes, addr: Addr, now: float, sink: FanOutSink | None = None
    ) -> list[tuple[Addr, bytes]]:
        """One UDP datagram from ``addr``; returns ``(address, datagram)`` pairs to send.

        With a ``sink`` (needs ``pack_address``), a forwarded datagram's UDP copies go to the
        sink instead and only hop-control replies are returned."""
        if self._native is not None:
            return self._native_received(data, addr, now, sink, 0)
        n = len(data)
        self._packets_in += 1
        self._bytes_in += n
        drops = self._drops
        if n < MIN_DATAGRAM_LEN or n > MAX_DATAGRAM_LEN:
            drops[_BAD_LENGTH] += 1
            return []
        ver, ptype, _step, channel_id, sender_id, gen, ctr = HEADER_STRUCT.unpack_from(data)
        if ver != VERSION:
            drops[_UNKNOWN_VERSION] += 1
            return []
        if ptype not in _ACCEPTED_PTYPES:
            drops[_UNKNOWN_PTYPE] += 1
            return []
        sess = self._sessions.get(sender_id)
        if sess is None:
            drops[_UNKNOWN_SESSION] += 1
            return []
        if not sess.verify_c2s(data):
            drops[_BAD_HOP_MAC] += 1
            return []
        sess.received += 1
        if ptype >= _HOP_FIRST:
            return self._hop_control(sess, data, addr, now)
        if addr != sess.addr:
            drops[_UNVALIDATED_ADDRESS] += 1
            return []
        return self._forward(sess, data, n, channel_id, sender_id, gen, ctr, now, sink)

    def tunnel_received(self, sender_id: int, data: bytes, now: float) -> list[tuple[Addr, bytes]]:
        """A voice datagram that came over ``sender_id``'s TLS connection: the same checks as
        :meth:`datagram_received` except the source address. Hop control is refused here.

        The length/version/ptype checks are repeated inline rather than shared through a helper
        on purpose: this is per-packet code and a call plus tuple return costs more than the
        checks themselves (both paths are tested check by check)."""
        if self._native is not None:
            return self._native_received(data, None, now, None, sender_id)
        n = len(data)
        self._packets_in += 1
        self._bytes_in += n
        drops = self._drops
        if n < MIN_DATAGRAM_LEN or n > MAX_DATAGRAM_LEN:
            drops[_BAD_LENGTH] += 1
            return []
        ver, ptype, _step, channel_id, named_id, gen, ctr = HEADER_STRUCT.unpack_from(data)
        if ver != VERSION:
            drops[_UNKNOWN_VERSION] += 1
            return []
        if ptype not in _VOICE_PTYPES:
            drops[_UNKNOWN_PTYPE] += 1
            return []
        if named_id != sender_id:
            drops[_SENDER_MISMATCH] += 1
            return []
        sess = self._sessions.get(sender_id)
        if sess is None:
            drops[_UNKNOWN_SESSION] += 1
            return []
        if not sess.verify_c2s(data):
            drops[_BAD_HOP_MAC] += 1
            return []
        return self._forward(sess, data, n, channel_id, sender_id, gen, ctr, now)

    # -- the native voice path -------------------------------------------------------------------

    def _clear_fanout(self) -> None:
        """Forget every channel's routing (and the native path's routes with it)."""
        self._fanout.clear()
        if self._native is not None:
            self._native.routes_clear()

    def _follow_roster(self) -> None:
        """Forget the routing when the roster changed since it was built."""
        version = self._roster.roster_version
        if version != self._fanout_version:
            self._clear_fanout()
            self._fanout_version = version

    def _speaker_fan(self, channel_id: int, sender_id: int) -> _FanOut | None:
        """The channel's fan-out when ``sender_id`` may speak there, else None. ``may_speak``
        is memoised in the entry, which is built only for a channel someone may speak in, so
        invented channel ids cannot grow the cache."""
        fan = self._fanout.get(channel_id)
        if fan is None:
            if not self._roster.may_speak(sender_id, channel_id):
                return None
            fan = self._build_fanout(channel_id)
            fan.speak[sender_id] = True
            return fan
        ok = fan.speak.get(sender_id)
        if ok is None:
            ok = fan.speak[sender_id] = self._roster.may_speak(sender_id, channel_id)
        return fan if ok else None

    def _native_received(
        self, data: bytes, addr: Addr | None, now: float, sink: FanOutSink | None, named: int
    ) -> list[tuple[Addr, bytes]]:
        """:meth:`datagram_received` (``named`` 0) or :meth:`tunnel_received` (``named`` the
        TLS session's sender id) with the checks in C: one call, then this only for what it
        hands back."""
        nv = self._native
        assert nv is not None
        self.native_begin(now)
        packed = b""
        if addr is not None:
            got = self._packed.get(addr)
            if got is None:
                got = self._pack_seen(addr)
            packed = got
        batch = nv.batch_ptr if sink is not None else None
        if named:
            r = nv.tunnel(nv.handle, batch, data, len(data), named)
        else:
            r = nv.voice(nv.handle, batch, data, len(data), packed, len(packed))
        if 0 <= r < _VC_EXTRAS:
            return []
        return self._native_slow(r, data, addr, now, sink, batch)

    def native_begin(self, now: float, *, clock: bool = True) -> None:
        """Before the native path checks datagrams: the routes follow the roster, and the
        clock is ``now`` (``clock=False``: the caller hands ``now`` to C itself, as
        ``mmsg.drain_native`` does with its one ``vc_drain`` call)."""
        nv = self._native
        if nv is None:
            raise LocalProtocolError("this relay core has no native voice path")
        self._follow_roster()
        if now != self._native_now:
            if clock:
                nv.set_now(now)
            self._native_now = now

    def native_deferred(
        self, code: int, data: bytes, addr: Addr, now: float, sink: FanOutSink | None
    ) -> list[tuple[Addr, bytes]]:
        """A datagram the native path read and handed back with ``code`` (hop control, a
        route to install, a full batch, copies to make here): finish it as
        :meth:`datagram_received` would. Returns the datagrams to send at once."""
        nv = self._native
        assert nv is not None
        return self._native_slow(code, data, addr, now, sink, nv.batch_ptr if sink else None)

    def _pack_seen(self, addr: Addr) -> bytes:
        """``addr`` packed for the native path's address check (b"": one it cannot send to).
        The cache is bounded: spoofed sources cannot grow it past 4096 entries."""
        assert self._pack is not None
        try:
            packed = self._pack(addr)
        except (OSError, ValueError):
            packed = b""
        if len(self._packed) >= 4096:
            self._packed.clear()
        self._packed[addr] = packed
        return packed

    def _native_slow(
        self,
        r: int,
        data: bytes,
        addr: Addr | None,
        now: float,
        sink: FanOutSink | None,
        batch: object,
    ) -> list[tuple[Addr, bytes]]:
        """What ``vc_voice`` handed back: hop control, a missing route, a full batch, copies
        to make here (no batch, or more listeners than a batch holds), listeners off UDP."""
        nv = self._native
        assert nv is not None
        if r == _VC_DROPPED:
            return []
        n = len(data)
        _v, _p, _s, channel_id, sender_id, _g, _c = HEADER_STRUCT.unpack_from(data)
        for _ in range(3):  # a route, then a flush: each can come back once
            if r == _VC_DROPPED:
                return []
            if r == _VC_HOP:
                assert addr is not None
                return self._hop_control(self._sessions[sender_id], data, addr, now)
            if r == _VC_ROUTE:
                if not self._native_route(channel_id, sender_id):
                    self._drops[_NOT_SPEAKER] += 1
                    return []
            elif r == _VC_FULL:
                nv.flush()
            else:
                break
            r = nv.resume(nv.handle, batch, data, n)
        fan = self._fanout[channel_id]
        out: list[tuple[Addr, bytes]] = []
        copies = 0
        if sink is not None and r in (_VC_SELF, _VC_BIG):
            # more listeners than a batch holds, or a sink that is not the native batch
            copies = sink(data, n - HOP_MAC_LEN, fan.plans[sender_id])
        elif r == _VC_SELF:
            body = data[: n - HOP_MAC_LEN]
            for lid, laddr, append in fan.udp:
                if lid != sender_id:
                    out.append((laddr, append(body)))
            copies = len(out)
        elif r < 0:  # pragma: no cover - vc_voice's lengths are this method's own
            raise RuntimeError(f"the native voice path answered {r}")
        self._copies_udp += copies  # (vc_voice counted the copies it queued itself)
        self._packets_out += copies
        self._bytes_out += copies * n
        if fan.tunnel or fan.unreachable or fan.remote:
            self._extras(fan, data, n, sender_id)
        return out

    def _native_route(self, channel_id: int, sender_id: int) -> bool:
        """Install the route of ``sender_id``'s voice in ``channel_id``, if it may speak there."""
        nv = self._native
        assert nv is not None
        fan = self._speaker_fan(channel_id, sender_id)
        if fan is None:
            return False
        plan = fan.plans.get(sender_id)
        if plan is None:
            plan = fan.plans[sender_id] = wire_plan(fan.wire, sender_id)
        nv.set_route(
            channel_id, sender_id, plan.native, bool(fan.tunnel or fan.unreachable or fan.remote)
        )
        return True

    def _extras(self, fan: _FanOut, data: bytes, n: int, sender_id: int) -> None:
        """A forwarded datagram's copies off UDP: tunnel listeners, unreachable ones, other
        cluster nodes (the UDP copies are counted by the caller)."""
        if fan.tunnel:
            body = data[: n - HOP_MAC_LEN]
            copies = 0
            tunnel_out = self._tunnel_out
            for lid, append in fan.tunnel:
                if lid != sender_id:
                    tunnel_out.append((lid, append(body)))
                    copies += 1
            self._copies_tunnel += copies
            self._packets_out += copies
            self._bytes_out += copies * n
        if fan.unreachable:
            self._unreachable += sum(1 for lid in fan.unreachable if lid != sender_id)
        if fan.remote:
            self._remote_out.append(data[: n - HOP_MAC_LEN])
            self._to_remote += 1

    # -- internals --------------------------------------------------------------------------------

    def _forward(
        self,
        sess: _Session,
        data: bytes,
        n: int,
        channel_id: int,
        sender_id: int,
        gen: int,
        ctr: int,
        now: float,
        sink: FanOutSink | None = None,
    ) -> list[tuple[Addr, bytes]]:
        """Steps 5-8 for a MAC-valid voice datagram from an acceptable source."""
        drops = self._drops
        # 5. may speak
        self._follow_roster()
        fan = self._speaker_fan(channel_id, sender_id)
        if fan is None:
            drops[_NOT_SPEAKER] += 1
            return []
        # 6. replay window per (sender, channel, gen); authenticated already, so update at once
        gens = sess.windows.get(channel_id)
        if gens is None:
            gens = sess.windows[channel_id] = {}
        window = gens.get(gen)
        if window is None:
            if len(gens) >= KEPT_GENERATIONS and gen < min(gens):
                drops[_OLD_GENERATION] += 1  # its window is gone: can't rule out replay
                return []
            window = gens[gen] = ReplayWindow()
            if len(gens) > KEPT_GENERATIONS:
                del gens[min(gens)]
        if not window.check(ctr):
            drops[_REPLAY] += 1
            return []
        window.update(ctr)
        # 7. size and rate, per session
        if n > self._max_datagram:
            drops[_OVERSIZE] += 1
            return []
        if now > sess.tokens_last:
            tokens = sess.tokens + (now - sess.tokens_last) * self._rate
            sess.tokens = tokens if tokens < self._burst else self._burst
            sess.tokens_last = now
        if sess.tokens < 1.0:
            drops[_RATE_LIMIT] += 1
            return []
        sess.tokens -= 1.0
        # 8. fan-out: the same 36+n bytes to everyone, each with its own s2c MAC
        self._forwarded += 1
        out: list[tuple[Addr, bytes]] = []
        if sink is not None:
            plan = fan.plans.get(sender_id)
            if plan is None:
                plan = fan.plans[sender_id] = wire_plan(fan.wire, sender_id)
            copies = sink(data, n - HOP_MAC_LEN, plan)
        else:
            body = data[: n - HOP_MAC_LEN]
            # Plain loops: a comprehension costs a frame per call (363 vs 216 ns, one listener).
            for lid, laddr, append in fan.udp:
                if lid != sender_id:
                    out.append((laddr, append(body)))
            copies = len(out)
        self._copies_udp += copies
        self._packets_out += copies
        self._bytes_out += copies * n
        if fan.tunnel or fan.unreachable or fan.remote:
            self._extras(fan, data, n, sender_id)
        return out

    def remote_received(self, body: bytes, now: float) -> list[tuple[Addr, bytes]]:
        """Voice another cluster node forwarded (a datagram body: its node ran every check):
        copies to this node's listeners of the channel, each with its own s2c MAC; tunnel-mode
        listeners' copies go into :meth:`take_tunnel`. Malformed bodies are dropped."""
        del now
        n = len(body) + HOP_MAC_LEN
        if n < MIN_DATAGRAM_LEN or n > MAX_DATAGRAM_LEN:
            self._drops[_BAD_LENGTH] += 1
            return []
        ver, ptype, _step, channel_id, sender_id, _gen, _ctr = HEADER_STRUCT.unpack_from(body)
        if ver != VERSION or ptype not in _VOICE_PTYPES:
            self._drops[_UNKNOWN_PTYPE] += 1
            return []
        self._from_remote += 1
        self._follow_roster()
        fan = self._fanout.get(channel_id)
        if fan is None:
            fan = self._build_fanout(channel_id)
        out = [(laddr, append(body)) for lid, laddr, append in fan.udp if lid != sender_id]
        copies = len(out)
        self._copies_udp += copies
        for lid, append in fan.tunnel:
            if lid != sender_id:
                self._tunnel_out.append((lid, append(body)))
                copies += 1
                self._copies_tunnel += 1
        self._packets_out += copies
        self._bytes_out += copies * n
        return out

    def _build_fanout(self, channel_id: int) -> _FanOut:
        udp: list[tuple[int, Addr, Callable[[bytes], bytes]]] = []
        wire: list[WireEntry] = []
        tunnel: list[tuple[int, Callable[[bytes], bytes]]] = []
        unreachable: list[int] = []
        remote = False
        is_remote = self._is_remote
        sessions = self._sessions
        # The speaker is skipped at send time, so one list serves every speaker of the channel.
        for lid in sorted(self._roster.listeners(channel_id, None)):
            sess = sessions.get(lid)
            if sess is not None and sess.tunnel:
                tunnel.append((lid, sess.append_s2c))
            elif sess is not None and sess.addr is not None:
                udp.append((lid, sess.addr, sess.append_s2c))
                if self._pack is not None:
                    wire.append((lid, sess.packed, sess.fresh_s2c, sess.key_state))
            elif sess is None and is_remote is not None and is_remote(lid):
                remote = True
            else:
                unreachable.append(lid)
        fan = self._fanout[channel_id] = _FanOut(udp, wire, tunnel, tuple(unreachable), remote)
        self._fanout_builds += 1
        return fan

    def _hop_control(
        self, sess: _Session, data: bytes, addr: Addr, now: float
    ) -> list[tuple[Addr, bytes]]:
        """A MAC-valid c2s hop-control datagram (steps 1-3 passed)."""
        drops = self._drops
        msg = parse_hop_control(data)
        if msg is None:
            drops[_BAD_HOP_CONTROL] += 1
            return []
        window = sess.hop_window
        if not window.check(msg.seq):
            drops[_REPLAY] += 1
            return []
        window.update(msg.seq)
        if sess.out_seq >= SEQ_LIMIT:
            drops[_SEQ_EXHAUSTED] += 1
            return []
        ptype = msg.ptype
        if ptype == PTYPE_BIND:
            if now > sess.bind_last:
                tokens = sess.bind_tokens + (now - sess.bind_last) * self._limits.binds_per_s
                sess.bind_tokens = min(tokens, float(self._limits.bind_burst))
                sess.bind_last = now
            if sess.bind_tokens < 1.0:
                drops[_BIND_RATE_LIMIT] += 1
                return []
            sess.bind_tokens -= 1.0
            challenge = bytes(self._rng(CHALLENGE_LEN))
            if len(challenge) != CHALLENGE_LEN:
                raise LocalProtocolError("rng returned the wrong number of bytes")
            sess.challenge = challenge
            sess.challenge_addr = addr
            sess.challenge_at = now
            reply = encode_challenge(sess.s2c, sess.sender_id, sess.out_seq, challenge)
        elif ptype == PTYPE_BIND_CONFIRM:
            pending = sess.challenge
            if (
                pending is None
                or addr != sess.challenge_addr
                or not 0.0 <= now - sess.challenge_at <= self._limits.challenge_lifetime_s
                or not compare_digest(msg.body, pending)
            ):
                drops[_BAD_CHALLENGE] += 1
                return []
            sess.challenge = None  # single use
            sess.challenge_addr = None
            if sess.addr != addr:
                if self._pack is not None:
                    try:
                        sess.packed = self._pack(addr)
                    except (OSError, ValueError):  # not an address this socket can send to
                        drops[_BAD_CHALLENGE] += 1
                        return []
                sess.addr = addr
                if self._native is not None:
                    self._native.set_address(sess.sender_id, sess.packed)
                self._clear_fanout()
                if self._report_validated:
                    self._validated_out.append((sess.sender_id, addr))
            reply = encode_bind_ok(sess.s2c, sess.sender_id, sess.out_seq)
        else:  # PTYPE_PING: step 1 let only BIND, BIND_CONFIRM and PING through
            if addr != sess.addr:
                drops[_UNVALIDATED_ADDRESS] += 1
                return []
            if self._native is not None:
                if not self._native.take_token(sess.sender_id):
                    drops[_RATE_LIMIT] += 1
                    return []
                sess.received = self._native.received(sess.sender_id)
            elif now > sess.tokens_last:
                tokens = sess.tokens + (now - sess.tokens_last) * self._rate
                sess.tokens = min(tokens, self._burst)
                sess.tokens_last = now
            if self._native is None:
                if sess.tokens < 1.0:
                    drops[_RATE_LIMIT] += 1
                    return []
                sess.tokens -= 1.0
            reply = encode_pong(
                sess.s2c, sess.sender_id, sess.out_seq, decode_ping(msg.body), sess.received
            )
        sess.out_seq += 1
        self._hop_replies += 1
        self._packets_out += 1
        self._bytes_out += len(reply)
        return [(addr, reply)]
