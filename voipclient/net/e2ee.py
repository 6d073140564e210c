"""End-to-end encryption on top of a :class:`~voipclient.net.client.ClientSession` (pure).

:class:`SecureSession` is the client's crypto state for one server connection. It reads the
control session's events (roster, memberships, published session keys, KeyDists, text) and drives
the crypto core: it publishes our session KEM key with its certificate, pins peers' identity keys
(TOFU), keeps our sender keys per channel and rotates them (PROTOCOL.md §2), sends KeyDists to the
members who should have them, accepts the KeyDists sent to us, and seals/opens voice datagrams and
text messages. It never touches a socket: KeyDists and text go out through the ClientSession's
intents, voice datagrams are returned to the caller, which sends them over UDP or the tunnel.

Time: ``now`` is the adapter's monotonic clock in seconds (key retention, join coalescing,
rotation age). Absolute times that other machines check (session certificate expiry, KeyDist and
text timestamps, TOFU first-seen) come from ``wall_clock()``, a callable the adapter injects
(``time.time`` in production, a fake in tests): a clock step never stretches key retention.

Threading: one owner thread (the network thread); the capture worker hands it encoded frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from voipclient.crypto import keydist
from voipclient.crypto.fingerprint import privacy_code
from voipclient.crypto.hop import HopMac, derive_hop_keys
from voipclient.crypto.identity import IdentityKey, SigningKey
from voipclient.crypto.keylog import KeyLogSink, hop_key_line
from voipclient.crypto.media import PTYPE_VOICE, PTYPE_VOICE_LAST, VoiceFrame, VoiceReceiver
from voipclient.crypto.rotation import (
    KeyAction,
    NewGeneration,
    SenderKeyScheduler,
    StepAdvanced,
    StepForJoiners,
)
from voipclient.crypto.session import SessionCertificate, SessionKemKey
from voipclient.crypto.text import TextMessage, TextOpener, TextSealer
from voipclient.crypto.tofu import TofuStore, TrustLevel, TrustStatus
from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.names import InvalidName, name_key
from voipclient.net import events as ev
from voipclient.net.client import ClientSession
from voipclient.net.messages import LeaveReason
from voipclient.net.roster import UserView
from voipclient.net.states import ClientState

#: How long our session certificate is valid, in milliseconds.
SKC_LIFETIME_MS = 24 * 3600 * 1000
#: A new certificate for the same SK is published this long before the old one expires, so
#: peers joining late in a long session can still verify it.
SKC_RENEW_BEFORE_MS = 3600 * 1000


# -- events ---------------------------------------------------------------------------------------
class SecureEvent:
    """Base class of what :class:`SecureSession` reports besides the control session's events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class PeerTrust(SecureEvent):
    """We saw a peer's identity key and compared it with the TOFU store (PROTOCOL §1)."""

    #: The peer's session id.
    sender_id: int
    #: The peer's account name.
    name: str
    #: NEW (pinned now), UNCHANGED, CHANGED_WHILE_TOFU (warn), CHANGED_WHILE_VERIFIED (blocked).
    status: TrustStatus


@dataclass(frozen=True, slots=True)
class KeyAccepted(SecureEvent):
    """A KeyDist from a peer was accepted: we can open its voice/text in that channel."""

    #: The peer.
    sender_id: int
    #: The channel the key is for.
    channel_id: int
    #: Generation and step of the accepted key.
    gen: int
    step: int
    #: 1 = new generation, 2 = catch-up for a joiner.
    kind: int


@dataclass(frozen=True, slots=True)
class KeyRejected(SecureEvent):
    """A KeyDist (or a session certificate) from a peer was refused; nothing changed."""

    #: The peer.
    sender_id: int
    #: The channel, or None for a session certificate.
    channel_id: int | None
    #: Why, in words (the reason enum's name and detail; never key material).
    reason: str


@dataclass(frozen=True, slots=True)
class VoiceReleased(SecureEvent):
    """Voice that waited for its key (KeyDist lost the race with UDP) and opened now."""

    #: The opened frame.
    frame: VoiceFrame


@dataclass(frozen=True, slots=True)
class TextMessageReceived(SecureEvent):
    """A text message opened and its signature verified."""

    #: The author's account name as the roster shows it.
    author: str
    #: The message.
    message: TextMessage


@dataclass(frozen=True, slots=True)
class TextDropped(SecureEvent):
    """A text message that did not open or verify; nothing changed."""

    #: The author's session id as the server saw it.
    sender_id: int
    #: The channel.
    channel_id: int
    #: Why, in words.
    reason: str


#: What a member's identity key is worth, as the member list shows it.
#: "me" (our own row), "verified" (the user compared safety numbers with this key), "tofu" (the
#: key pinned for this account, not verified), "changed" (another key than the pinned one: keys
#: still flow, with a warning), "blocked" (another key than the *verified* one: no key either way
#: until the user verifies the new one).
TRUST_LEVELS = ("me", "verified", "tofu", "changed", "blocked")


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """One member of a channel exactly as the E2E layer knows it: the identity it pinned for
    this session (name and key never change within a session) and what that key is worth."""

    #: The member's session id (its sender id on the voice path).
    sender_id: int
    #: The account name pinned when the member was first seen in this session.
    name: str
    #: Its Ed25519 identity public key (what safety numbers are computed from).
    ik_pub: bytes
    #: One of :data:`TRUST_LEVELS`.
    trust: str
    #: The channel's ACL lets it transmit there.
    may_speak: bool
    #: Its session key certificate verified: keys can be sealed to it (else they are held).
    has_session_key: bool
    #: The key is new to us in this session: first seen (TOFU pinned it now).
    new_key: bool = False


class PrivacyCodes(Mapping[int, str]):
    """Channel id → privacy code, each computed when it is first read: a code costs 5,200
    SHA-512s (~2.6 ms), and a storm of membership changes (a cluster node failing over: many
    rejoins at once) builds a view per batch of events that no one may look at before the
    next. Read-only; the keys are known at once."""

    __slots__ = ("_compute", "_done", "_holders")

    def __init__(
        self,
        holders: Mapping[int, tuple[KeyHolder, ...]],
        compute: Callable[[int, tuple[KeyHolder, ...]], str],
    ) -> None:
        self._holders = holders
        self._compute = compute
        self._done: dict[int, str] = {}

    def __getitem__(self, channel_id: int) -> str:
        code = self._done.get(channel_id)
        if code is None:
            code = self._done[channel_id] = self._compute(channel_id, self._holders[channel_id])
        return code

    def __iter__(self) -> Iterator[int]:
        return iter(self._holders)

    def __len__(self) -> int:
        return len(self._holders)

    def __repr__(self) -> str:
        return f"PrivacyCodes({dict(self)!r})"


@dataclass(frozen=True)
class MemberView:
    """Who is in which channel, as the E2E layer hands out keys: the member lists the UI draws.

    For every channel we are a member of, the members other than us are exactly the
    identities our sender keys go to (checked again before every KeyDist is built)."""

    #: Our sender id (None before login).
    me: int | None = None
    #: Channel id → its members (us included), sorted by name.
    channels: Mapping[int, tuple[KeyHolder, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    #: Channel id → privacy code, for the channels we are a member of (each computed when
    #: first read: see :class:`PrivacyCodes`).
    codes: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))

    def members(self, channel_id: int) -> tuple[KeyHolder, ...]:
        return self.channels.get(channel_id, ())

    def holder(self, sender_id: int) -> KeyHolder | None:
        """The member with ``sender_id`` (from any channel), or None."""
        for holders in self.channels.values():
            for h in holders:
                if h.sender_id == sender_id:
                    return h
        return None


@dataclass(frozen=True, slots=True)
class MembersChanged(SecureEvent):
    """The member view changed (someone joined or left, a key was verified or changed)."""

    view: MemberView


@dataclass(frozen=True, slots=True)
class KeyHolderNotice(SecureEvent):
    """A change of who holds our keys in a channel we are a member of: the UI writes it into
    the channel's conversation as a lasting line, so even a member for 200 ms leaves a trace.

    ``change``: "present" (we joined or logged in: who holds keys there now), "joined", "left",
    "verified", "unverified". Each holder carries its trust at that moment ("changed" or
    "blocked" when its key is not the pinned one).
    """

    channel_id: int
    change: str
    holders: tuple[KeyHolder, ...]
    #: Wall-clock time, milliseconds.
    at_ms: int


@dataclass(frozen=True, slots=True)
class KeyHolderAlarm(SecureEvent):
    """A KeyDist's recipients differ from the members drawn for that channel. Nothing went to
    anyone not drawn; this is a bug or an attack, and the UI must say so loudly."""

    channel_id: int
    #: Recipients the key schedule named that are not drawn members (they got nothing).
    extra: frozenset[int]
    #: Drawn members the key schedule left out.
    missing: frozenset[int]
    detail: str


#: Control events that change who is a member of what.
_ROSTER_EVENTS = (
    ev.LoggedIn,
    ev.UserJoined,
    ev.UserLeft,
    ev.UserUpdated,
    ev.MembershipChanged,
    ev.ChannelAdded,
    ev.ChannelRemoved,
    ev.RosterChanged,
)


# -- the session ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Peer:
    sender_id: int
    name: str
    ik_pub: bytes
    recipient: keydist.KeyDistRecipient | None = None  # set once its SKC verified
    #: (sk_pub, SKC) published and not verified yet: verified once the peer shares a channel
    #: with us (a 500-user server must not cost 499 verifications at login).
    published: tuple[bytes, bytes] | None = None
    status: TrustStatus = TrustStatus.UNCHANGED  # what TOFU said when we first saw it


class SecureSession:
    """The end-to-end layer of one logged-in connection. See the module docstring."""

    def __init__(
        self,
        session: ClientSession,
        identity: IdentityKey,
        account: str,
        tofu: TofuStore,
        server_pin: str,
        *,
        wall_clock: Callable[[], float],
        rng: Callable[[int], bytes] = os.urandom,
        keylog: KeyLogSink | None = None,
        first_gen: int = 0,
    ) -> None:
        self._session = session
        self._identity = identity
        self._account = account
        self._tofu = tofu
        self._pin = server_pin
        self._wall = wall_clock
        self._skc_not_after_ms = 0
        self._rng = rng
        self._keylog = keylog
        self._first_gen = first_gen
        self._kem: SessionKemKey | None = None
        self._sender_id: int | None = None
        self._scheduler: SenderKeyScheduler | None = None
        self._receiver: VoiceReceiver | None = None
        self._c2s: HopMac | None = None
        self._s2c: HopMac | None = None
        self._texts = TextOpener()
        self._sealers: dict[int, TextSealer] = {}
        self._text_keys: dict[tuple[int, int], SigningKey] = {}  # (channel, gen) -> signing key
        self._peers: dict[int, _Peer] = {}
        # Last (gen, step) accepted per (channel, sender) for the whole connection: sender ids are
        # never reused, so keeping it after a member leaves stops a relay replaying old KeyDists.
        self._last_accepted: dict[tuple[int, int], tuple[int, int]] = {}
        # Newest key action per (recipient, channel) held until the recipient's SK is known.
        self._held: dict[tuple[int, int], KeyAction] = {}
        # Channel id → {member sender id: may_speak}, us included: the one membership table the
        # member view is drawn from and every KeyDist is checked against.
        self._members: dict[int, dict[int, bool]] = {}
        self._view: MemberView | None = None
        self._view_dirty = False
        self._codes: dict[tuple[int, frozenset[tuple[str, bytes]]], str] = {}
        self._pending: list[SecureEvent] = []  # notices and alarms raised below handle_events
        # Channel id → who our current generation's key actually went to (sent, not held).
        self.key_sent_to: dict[int, set[int]] = {}
        self.keydists_sent = 0
        self.keydists_rejected = 0
        self.texts_rejected = 0

    # -- properties --------------------------------------------------------------------------------
    @property
    def sender_id(self) -> int | None:
        """Our session id once logged in."""
        return self._sender_id

    @property
    def receiver(self) -> VoiceReceiver | None:
        """The voice receiver (drop counters, key info), once logged in."""
        return self._receiver

    @property
    def scheduler(self) -> SenderKeyScheduler | None:
        """Our sender keys, once logged in."""
        return self._scheduler

    @property
    def hop_macs(self) -> tuple[HopMac, HopMac] | None:
        """This login's hop MACs (client→server, server→client), derived once from
        ``LoggedIn.hop_secret``; the connection core signs its hop control datagrams with them."""
        if self._c2s is None or self._s2c is None:
            return None
        return self._c2s, self._s2c

    def transmit_channels(self) -> tuple[int, ...]:
        """Channels we hold a sender key for (member and allowed to speak)."""
        return self._scheduler.channels() if self._scheduler else ()

    # -- feeding -----------------------------------------------------------------------------------
    def handle_events(self, events: Iterable[ev.ClientEvent], now: float) -> list[SecureEvent]:
        """Feed the control session's events; returns what the UI should hear about."""
        out: list[SecureEvent] = []
        roster_changed = False
        for event in events:
            roster_changed = roster_changed or isinstance(event, _ROSTER_EVENTS)
            try:
                self._handle(event, now, out)
            except RemoteProtocolError as exc:  # one peer's bad input never aborts the batch
                out.append(KeyRejected(getattr(event, "sender_id", 0), None, exc.message))
        if roster_changed:  # not per tunnelled voice packet: only batches that change members
            self._check_roster_agrees(now)
        self._flush_actions(now, out)
        self._finish(out)
        return out

    def _finish(self, out: list[SecureEvent]) -> None:
        """Append the notices and alarms raised meanwhile, then the new view if it changed."""
        out.extend(self._pending)
        self._pending.clear()
        if self._view_dirty and self._sender_id is not None:
            self._view_dirty = False
            self._view = None
            out.append(MembersChanged(self.view()))

    def tick(self, now: float) -> list[SecureEvent]:
        """Run due rotations (coalesced join steps, aged generations) and expire old keys."""
        out: list[SecureEvent] = []
        if self._scheduler is not None:
            self._scheduler.tick(now)
        if self._receiver is not None:
            self._receiver.expire(now)
        self._texts.expire(now)
        if (
            self._kem is not None
            and self._sender_id is not None
            and self._wall_ms() >= self._skc_not_after_ms - SKC_RENEW_BEFORE_MS
        ):
            self._publish_certificate(self._sender_id)
        self._flush_actions(now, out)
        self._finish(out)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` should run next."""
        times = [
            t
            for t in (
                self._scheduler.next_deadline() if self._scheduler else None,
                self._receiver.next_deadline() if self._receiver else None,
            )
            if t is not None
        ]
        # Text-key expiry and certificate renewal are coarse: a tick every few seconds is enough.
        return min(times) if times else None

    def _wall_ms(self) -> int:
        return int(self._wall() * 1000)

    def _tofu_account(self, name: str) -> str:
        """The TOFU key of an account: its confusable skeleton (``voipclient.names``), as the
        server binds names, so "Bob", "BOB" and the Cyrillic look-alike of "BOB" all meet the
        pin of "bob".
        A pin stored under the older casefolded key is moved to the skeleton key."""
        key = name_key(name)
        legacy = name.casefold()
        if (
            legacy != key
            and self._tofu.get(self._pin, key) is None
            and self._tofu.get(self._pin, legacy) is not None
        ):
            self._tofu.rename(self._pin, legacy, key)
        return key

    # -- the member view -------------------------------------------------------------------------
    def view(self) -> MemberView:
        """Who is in which channel, with the identities and trust the E2E layer acts on."""
        if self._view is None:
            me = self._sender_id
            channels: dict[int, tuple[KeyHolder, ...]] = {}
            coded: dict[int, tuple[KeyHolder, ...]] = {}
            for channel_id, members in self._members.items():
                holders = tuple(
                    sorted(
                        (h for sid, speak in members.items() if (h := self._holder(sid, speak))),
                        key=lambda h: (h.trust != "me", h.name.casefold(), h.sender_id),
                    )
                )
                channels[channel_id] = holders
                if me is not None and me in members:
                    coded[channel_id] = holders
            codes = PrivacyCodes(coded, self._privacy_code)
            self._view = MemberView(me, MappingProxyType(channels), codes)
        return self._view

    def privacy_code(self, channel_id: int) -> str | None:
        """The channel's privacy code (we must be a member), or None."""
        return self.view().codes.get(channel_id)

    def _privacy_code(self, channel_id: int, holders: tuple[KeyHolder, ...]) -> str:
        entries = frozenset((h.name.casefold(), h.ik_pub) for h in holders)
        key = (channel_id, entries)
        code = self._codes.get(key)
        if code is None:
            if len(self._codes) > 256:
                self._codes.clear()
            code = self._codes[key] = privacy_code(channel_id, entries)
        return code

    def _holder(self, sender_id: int, may_speak: bool) -> KeyHolder | None:
        if sender_id == self._sender_id:
            return KeyHolder(
                sender_id, self._account, self._identity.public_bytes(), "me", may_speak, True
            )
        peer = self._peers.get(sender_id)
        if peer is None:
            return None
        return KeyHolder(
            sender_id,
            peer.name,
            peer.ik_pub,
            self._trust(peer),
            may_speak,
            peer.recipient is not None,
            peer.status is TrustStatus.NEW,
        )

    def _trust(self, peer: _Peer) -> str:
        pinned = self._tofu.get(self._pin, self._tofu_account(peer.name))
        if pinned is None:
            return "tofu"
        if pinned.ik_pub == peer.ik_pub:
            return str(pinned.level)
        return "blocked" if pinned.level is TrustLevel.VERIFIED else "changed"

    def _changed(self) -> None:
        self._view_dirty = True
        self._view = None

    def _notice(self, channel_id: int, change: str, sender_ids: Iterable[int]) -> None:
        """A lasting line for a channel we are a member of."""
        me = self._sender_id
        members = self._members.get(channel_id, {})
        if me is None or me not in members:
            return
        holders = tuple(
            h for sid in sender_ids if (h := self._holder(sid, members.get(sid, False))) is not None
        )
        if holders:
            self._pending.append(KeyHolderNotice(channel_id, change, holders, self._wall_ms()))

    def _set_member(self, channel_id: int, sender_id: int, may_speak: bool) -> None:
        members = self._members.setdefault(channel_id, {})
        joined = sender_id not in members
        members[sender_id] = may_speak
        self._changed()
        if joined and sender_id != self._sender_id:
            self._notice(channel_id, "joined", (sender_id,))

    def _drop_member(self, channel_id: int, sender_id: int) -> None:
        members = self._members.get(channel_id)
        if members is None or sender_id not in members:
            return
        if sender_id != self._sender_id:
            self._notice(channel_id, "left", (sender_id,))
        del members[sender_id]
        self._changed()

    def _check_roster_agrees(self, now: float) -> None:
        """The control session's roster and our membership table are fed the same events; if
        they ever disagree, say so (it would mean a member list that is not who gets keys)."""
        if self._sender_id is None:
            return
        roster = self._session.roster
        for channel_id in roster.channels:
            drawn = frozenset(self._members.get(channel_id, {}))
            listed = roster.members(channel_id)
            if drawn != listed:
                self._pending.append(
                    KeyHolderAlarm(
                        channel_id,
                        listed - drawn,
                        drawn - listed,
                        "the roster and the key holders disagree",
                    )
                )
                self._members[channel_id] = {
                    sid: roster.may_speak(sid, channel_id) for sid in listed
                }
                self._changed()
                if self._sender_id in listed:  # members now drawn: their certificates matter
                    self._verify_sharing((channel_id,), now)

    def set_verified(self, sender_id: int, ik_pub: bytes, verified: bool, now: float) -> bool:
        """The user compared the safety number computed from ``ik_pub`` with ``sender_id``
        (``verified``) or takes a verification back. Refused (False) when ``ik_pub`` is not
        the key this peer holds in this session: a number shown for another key proves nothing.
        Verifying releases keys held while the peer was blocked."""
        peer = self._peers.get(sender_id)
        if peer is None or peer.ik_pub != ik_pub:
            return False
        account = self._tofu_account(peer.name)
        if verified:
            self._tofu.mark_verified(self._pin, account, peer.ik_pub, self._wall_ms())
        else:
            self._tofu.clear_verified(self._pin, account)
        self._changed()
        for channel_id, members in self._members.items():
            if sender_id in members:
                self._notice(channel_id, "verified" if verified else "unverified", (sender_id,))
        if verified:
            self._release_held(sender_id, now)
        return True

    def take_events(self, now: float) -> list[SecureEvent]:
        """What changed outside ``handle_events``/``tick`` (a verification): flush it."""
        out: list[SecureEvent] = []
        self._flush_actions(now, out)
        self._finish(out)
        return out

    def _handle(self, event: ev.ClientEvent, now: float, out: list[SecureEvent]) -> None:
        if isinstance(event, ev.LoggedIn):
            self._logged_in(event, now, out)
        elif isinstance(event, ev.UserJoined):
            self._see_user(event.user, now, out)
            roster = self._session.roster
            for channel_id in event.channels:  # its automatic memberships (the Lobby)
                speak = roster.may_speak(event.user.sender_id, channel_id)
                self._membership(
                    ev.MembershipChanged(event.user.sender_id, channel_id, True, speak), now
                )
        elif isinstance(event, ev.SessionKeyPublished):
            self._key_published(event.sender_id, event.sk_pub, event.skc, now, out)
        elif isinstance(event, ev.MembershipChanged):
            self._membership(event, now)
        elif isinstance(event, ev.UserLeft):
            self._user_left(event, now)
        elif isinstance(event, ev.ChannelRemoved):
            self._leave_channel(event.channel.id, event.members)
            if self._members.pop(event.channel.id, None) is not None:
                self._changed()
        elif isinstance(event, ev.ChannelAdded):
            self._members.setdefault(event.channel.id, {})
            self._changed()
        elif isinstance(event, ev.KeyDistReceived):
            self._keydist(event, now, out)
        elif isinstance(event, ev.TextReceived):
            self._text(event, out)
        elif isinstance(event, ev.ConnectionClosed):
            self.close()

    # -- login and peers ---------------------------------------------------------------------------
    def _logged_in(self, event: ev.LoggedIn, now: float, out: list[SecureEvent]) -> None:
        self._sender_id = me = event.sender_id
        k_c2s, k_s2c = derive_hop_keys(event.hop_secret)  # the one derivation per login
        self._c2s, self._s2c = HopMac(k_c2s), HopMac(k_s2c)
        self._receiver = VoiceReceiver(self._s2c, keylog=self._keylog)
        if self._keylog is not None:
            self._keylog(hop_key_line(event.sender_id, event.hop_secret))
        self._scheduler = SenderKeyScheduler(
            event.sender_id,
            random_bytes=self._rng,
            keylog=self._keylog,
            first_gen=self._first_gen,
        )
        self._kem = SessionKemKey.generate()
        self._publish_certificate(event.sender_id)
        sharing = self._sharing_peers()  # once: a 500-member Lobby is 500 users
        for user in event.roster.users.values():
            self._see_user(user, now, out)
            if user.sk_pub is not None and user.skc is not None:
                self._key_published(
                    user.sender_id, user.sk_pub, user.skc, now, out, sharing=sharing
                )
        roster = event.roster
        self._members = {
            ch: {sid: roster.may_speak(sid, ch) for sid in roster.members(ch)}
            for ch in roster.channels
        }
        self._changed()
        for channel_id in roster.channels_of(me):
            self._notice(channel_id, "present", roster.members(channel_id) - {me})
            self._open_channel(channel_id, roster.may_speak(me, channel_id), now)

    def _can_send(self) -> bool:
        """The control session still takes intents. A batch of events can end the session (a
        shutdown notice behind a published key) before this layer has seen it: nothing is sent
        then, and the keys go with the session."""
        return self._session.state is ClientState.READY

    def _publish_certificate(self, sender_id: int) -> None:
        assert self._kem is not None
        if not self._can_send():
            return
        self._skc_not_after_ms = self._wall_ms() + SKC_LIFETIME_MS
        skc = SessionCertificate.build(
            self._identity,
            self._account,
            sender_id,
            self._kem.public_bytes(),
            self._skc_not_after_ms,
        )
        self._session.publish_session_key(self._kem.public_bytes(), skc.to_bytes())

    def _see_user(self, user: UserView, now: float, out: list[SecureEvent]) -> None:
        if user.sender_id == self._sender_id or user.sender_id in self._peers:
            return
        try:
            account = self._tofu_account(user.name)
        except InvalidName:  # the control session refuses such rosters; never pin one
            return
        status = self._tofu.observe(self._pin, account, user.ik_pub, self._wall_ms())
        self._peers[user.sender_id] = _Peer(user.sender_id, user.name, user.ik_pub, status=status)
        self._changed()
        out.append(PeerTrust(user.sender_id, user.name, status))

    def _trusted_ik(self, sender_id: int) -> bytes | None:
        """The peer's identity key, or None when unknown or blocked by TOFU."""
        peer = self._peers.get(sender_id)
        if peer is None or self._tofu.is_blocked(
            self._pin, self._tofu_account(peer.name), peer.ik_pub
        ):
            return None
        return peer.ik_pub

    def _key_published(
        self,
        sender_id: int,
        sk_pub: bytes,
        skc_bytes: bytes,
        now: float,
        out: list[SecureEvent],
        *,
        sharing: set[int] | None = None,
    ) -> None:
        if sender_id == self._sender_id:
            return
        peer = self._peers.get(sender_id)
        user = self._session.roster.users.get(sender_id)
        if peer is None and user is not None:
            self._see_user(user, now, out)
            peer = self._peers.get(sender_id)
        if peer is None:
            return
        peer.published = (sk_pub, skc_bytes)
        if sharing is None:
            sharing = self._sharing_peers()
        if sender_id in sharing or any(r == sender_id for r, _ in self._held):
            self._verify_published(peer, now, out)

    def _sharing_peers(self, channels: Iterable[int] | None = None) -> set[int]:
        """Everyone in ``channels`` (default: every channel we are in), us excluded."""
        roster = self._session.roster
        me = self._sender_id
        if channels is None:
            channels = roster.channels_of(me) if me is not None else ()
        out: set[int] = set()
        for channel_id in channels:
            out |= roster.members(channel_id)
        out.discard(me)
        return out

    def _verify_published(self, peer: _Peer, now: float, out: list[SecureEvent]) -> None:
        """Check the peer's published certificate, if one waits; keys held for it go out."""
        published, peer.published = peer.published, None
        if published is None:
            return
        sk_pub, skc_bytes = published
        sender_id = peer.sender_id
        try:
            skc = SessionCertificate.from_bytes(skc_bytes)
            skc.verify(peer.ik_pub, self._wall_ms(), account=peer.name, sender_id=sender_id)
            if skc.sk_pub != sk_pub:
                raise RemoteProtocolError("published SK differs from its certificate")
        except RemoteProtocolError as exc:
            out.append(KeyRejected(sender_id, None, f"session certificate: {exc.message}"))
            return
        peer.recipient = keydist.KeyDistRecipient.from_certificate(skc)
        self._changed()
        self._release_held(sender_id, now)

    def _verify_sharing(self, channels: Iterable[int], now: float) -> None:
        """Verify the waiting certificates of everyone in ``channels`` (they now share one)."""
        for sender_id in self._sharing_peers(channels):
            peer = self._peers.get(sender_id)
            if peer is not None and peer.published is not None:
                self._verify_published(peer, now, self._pending)

    def _release_held(self, sender_id: int, now: float) -> None:
        """Send the keys held for ``sender_id`` (the newest per channel), if we may."""
        if self._trusted_ik(sender_id) is None:
            return  # blocked by TOFU: its keys stay held until the user re-verifies
        for (recipient, channel_id), action in list(self._held.items()):
            if recipient == sender_id:
                del self._held[(recipient, channel_id)]
                self._send_keydist(action, [sender_id], now)

    # -- memberships -------------------------------------------------------------------------------
    def _open_channel(self, channel_id: int, may_speak: bool, now: float) -> None:
        me = self._sender_id
        if self._scheduler is None or me is None:
            return
        if not may_speak:
            return  # listen-only: no sender key needed
        if self._scheduler.is_open(channel_id):
            return
        # The session's roster already holds the whole batch this event came in.
        members = self._session.roster.members(channel_id) - {me}
        self._scheduler.open_channel(channel_id, members, now)

    def _membership(self, event: ev.MembershipChanged, now: float) -> None:
        if self._scheduler is None:
            return
        if event.joined:
            self._set_member(event.channel_id, event.sender_id, event.may_speak)
            me = self._sender_id
            if event.sender_id == me or me in self._session.roster.members(event.channel_id):
                # Now sharing the channel: the certificates that matter are checked before
                # the key actions below want them.
                self._verify_sharing((event.channel_id,), now)
        else:
            self._drop_member(event.channel_id, event.sender_id)
        if event.sender_id == self._sender_id:
            if event.joined:
                members = self._members.get(event.channel_id, {})
                self._notice(event.channel_id, "present", set(members) - {event.sender_id})
            if event.joined and event.may_speak:
                self._open_channel(event.channel_id, True, now)
            elif event.joined:  # still a member, but the ACL no longer lets us speak
                self._close_sender_key(event.channel_id)
            else:
                self._leave_channel(
                    event.channel_id, self._session.roster.members(event.channel_id)
                )
            return
        if event.joined:
            if self._scheduler.is_open(event.channel_id):
                self._scheduler.member_joined(event.channel_id, event.sender_id, now)
        else:
            if self._scheduler.is_open(event.channel_id):
                self._scheduler.member_left(event.channel_id, event.sender_id, now)
            self._forget_member(event.channel_id, event.sender_id)

    def _user_left(self, event: ev.UserLeft, now: float) -> None:
        sender = event.user.sender_id
        for channel_id in event.channels:
            self._drop_member(channel_id, sender)
        for channel_id in event.channels:
            if self._scheduler is not None and self._scheduler.is_open(channel_id):
                if event.reason == LeaveReason.TIMEOUT:
                    self._scheduler.member_timed_out(channel_id, sender, now)
                elif event.reason == LeaveReason.KICKED:
                    self._scheduler.member_kicked(channel_id, sender, now)
                else:
                    self._scheduler.member_left(channel_id, sender, now)
            self._forget_member(channel_id, sender)
        self._peers.pop(sender, None)
        for key in [k for k in self._held if k[0] == sender]:
            del self._held[key]
        for sent in self.key_sent_to.values():
            sent.discard(sender)

    def _forget_member(self, channel_id: int, sender_id: int) -> None:
        # _last_accepted stays: see its comment in __init__.
        if self._receiver is not None:
            self._receiver.forget_sender(channel_id, sender_id)
        self._texts.remove_sender(channel_id, sender_id)
        self._held.pop((sender_id, channel_id), None)

    def _close_sender_key(self, channel_id: int) -> None:
        if self._scheduler is not None and self._scheduler.is_open(channel_id):
            self._scheduler.close_channel(channel_id)
        self._sealers.pop(channel_id, None)
        self._text_keys = {k: v for k, v in self._text_keys.items() if k[0] != channel_id}
        for key in [k for k in self._held if k[1] == channel_id]:
            del self._held[key]

    def _leave_channel(self, channel_id: int, members: Iterable[int]) -> None:
        """We left (or the channel is gone): drop our key and every key of that channel."""
        self._close_sender_key(channel_id)
        for member in members:
            self._forget_member(channel_id, member)
        if self._receiver is not None:
            self._receiver.forget_channel(channel_id)

    # -- our keys out ------------------------------------------------------------------------------
    def _flush_actions(self, now: float, out: list[SecureEvent]) -> None:
        if self._scheduler is None:
            return
        for action in self._scheduler.take_actions():
            if isinstance(action, StepAdvanced):
                sealer = self._sealers.get(action.channel_id)
                if sealer is not None:
                    sealer.set_step(action.step, self._scheduler.base_key(action.channel_id))
                continue
            self._install_text_sealer(action)
            if isinstance(action, NewGeneration):
                self.key_sent_to[action.channel_id] = set()
            ready = []
            for recipient in self._checked_recipients(action, action.recipients, complete=True):
                peer = self._peers.get(recipient)
                if (
                    peer is not None
                    and peer.recipient is not None
                    and self._trusted_ik(recipient) is not None
                ):
                    ready.append(recipient)
                else:
                    # No verified SK yet (or blocked): keep the newest key for when it comes.
                    self._held[(recipient, action.channel_id)] = action
            if ready:
                self._send_keydist(action, ready, now)

    def _install_text_sealer(self, action: NewGeneration | StepForJoiners) -> None:
        key_id = (action.channel_id, action.gen)
        signing = self._text_keys.get(key_id)
        if signing is None:
            signing = SigningKey.generate()
            # Only the current generation's signing key is needed for sealing.
            self._text_keys = {
                k: v for k, v in self._text_keys.items() if k[0] != action.channel_id
            }
            self._text_keys[key_id] = signing
        sealer = self._sealers.get(action.channel_id)
        if sealer is None or sealer.gen != action.gen:
            self._sealers[action.channel_id] = TextSealer(
                action.channel_id,
                action.sender_id,
                action.gen,
                action.step,
                action.base_key,
                signing,
            )
        elif sealer.step != action.step:
            sealer.set_step(action.step, action.base_key)

    def _checked_recipients(
        self, action: KeyAction, recipients: Sequence[int], *, complete: bool = False
    ) -> list[int]:
        """Defence in depth: the recipients of a key must be drawn members of its channel. With
        ``complete`` (the key schedule's whole list), a new generation must also name every
        drawn member; a catch-up names joiners among them. Any difference raises
        :class:`KeyHolderAlarm` and only drawn members get the key. A send to part of the list
        (those whose session keys are verified now; the rest are held and sent later) is
        checked for strangers only: the part is not the whole."""
        assert not isinstance(action, StepAdvanced)
        members = self._members.get(action.channel_id, {})
        drawn = frozenset(members) - {self._sender_id}
        named = frozenset(recipients)
        extra = named - drawn
        missing = drawn - named if complete and isinstance(action, NewGeneration) else frozenset()
        if extra or missing:
            self._pending.append(
                KeyHolderAlarm(
                    action.channel_id,
                    extra,
                    missing,
                    "our key schedule named recipients that are not the drawn members",
                )
            )
        return [r for r in recipients if r in drawn]

    def _send_keydist(self, action: KeyAction, recipients: Sequence[int], now: float) -> None:
        assert not isinstance(action, StepAdvanced)
        if not self._can_send():
            return
        signing = self._text_keys.get((action.channel_id, action.gen))
        if signing is None:
            return  # superseded generation: a newer action carries the current key
        recipients = self._checked_recipients(action, recipients)
        # Never to a peer whose verified key changed (PROTOCOL §1): it stays held until the user
        # re-verifies, and a changed-while-TOFU peer still gets keys (with a warning shown).
        chosen = [
            r
            for r in recipients
            if (peer := self._peers.get(r)) is not None
            and peer.recipient is not None
            and self._trusted_ik(r) is not None
        ]
        targets = [recipient for r in chosen if (recipient := self._peers[r].recipient) is not None]
        if not targets:
            return
        scheduler = self._scheduler
        if (
            scheduler is not None
            and scheduler.is_open(action.channel_id)
            and scheduler.state(action.channel_id).gen == action.gen
        ):
            self.key_sent_to.setdefault(action.channel_id, set()).update(chosen)
        kind = (
            keydist.KeyDistKind.NEW_GENERATION
            if isinstance(action, NewGeneration)
            else keydist.KeyDistKind.CATCH_UP
        )
        for blob in keydist.build_keydists(
            self._identity,
            kind=kind,
            channel_id=action.channel_id,
            sender_id=action.sender_id,
            gen=action.gen,
            step=action.step,
            created_ms=self._wall_ms(),
            base_key=action.base_key,
            text_signing_pub=signing.public_bytes(),
            recipients=targets,
        ):
            self._session.send_keydist(action.channel_id, keydist.recipients_of(blob), blob)
            self.keydists_sent += 1

    # -- their keys in -----------------------------------------------------------------------------
    def _keydist(self, event: ev.KeyDistReceived, now: float, out: list[SecureEvent]) -> None:
        if self._kem is None or self._sender_id is None or self._receiver is None:
            return
        key = (event.channel_id, event.sender_id)
        try:
            header = keydist.parse_keydist_header(event.blob)
            if header.sender_id != event.sender_id or header.channel_id != event.channel_id:
                raise RemoteProtocolError("KeyDist header does not match its routing")
            accepted = keydist.open_keydist(
                event.blob,
                sender_ik_pub=self._trusted_ik(event.sender_id),
                my_sender_id=self._sender_id,
                my_session_key=self._kem,
                last_accepted=self._last_accepted.get(key),
                now_ms=self._wall_ms(),
            )
        except RemoteProtocolError as exc:
            self.keydists_rejected += 1
            out.append(KeyRejected(event.sender_id, event.channel_id, exc.message))
            return
        self._last_accepted[key] = (accepted.gen, accepted.step)
        self._texts.add_accepted(accepted, now)
        released = self._receiver.add_key(
            accepted.channel_id,
            accepted.sender_id,
            accepted.gen,
            accepted.step,
            accepted.base_key,
            now,
        )
        out.append(
            KeyAccepted(
                accepted.sender_id,
                accepted.channel_id,
                accepted.gen,
                accepted.step,
                int(accepted.kind),
            )
        )
        out.extend(VoiceReleased(frame) for frame in released)

    def _text(self, event: ev.TextReceived, out: list[SecureEvent]) -> None:
        try:
            message = self._texts.open(event.blob)
            if message.sender_id != event.sender_id or message.channel_id != event.channel_id:
                raise RemoteProtocolError("text header does not match its routing")
        except RemoteProtocolError as exc:
            self.texts_rejected += 1
            out.append(TextDropped(event.sender_id, event.channel_id, exc.message))
            return
        peer = self._peers.get(message.sender_id)
        out.append(TextMessageReceived(peer.name if peer else "?", message))

    # -- voice and text out ------------------------------------------------------------------------
    def seal_voice(
        self, channel_ids: Iterable[int], payload: bytes, now: float, *, last: bool = False
    ) -> list[bytes]:
        """One hop-MACed datagram per target channel for the same encoded frame.

        The payload (frame_no ‖ Opus ‖ redundancy) is encoded once by the caller and sealed once
        per channel here. Channels we hold no sender key for are skipped.
        """
        scheduler, c2s = self._scheduler, self._c2s
        if scheduler is None or c2s is None:
            raise LocalProtocolError("not logged in")
        ptype = PTYPE_VOICE_LAST if last else PTYPE_VOICE
        return [
            c2s.append(scheduler.seal(channel_id, ptype, payload, now))
            for channel_id in channel_ids
            if scheduler.is_open(channel_id)
        ]

    def open_voice(self, datagram: bytes, now: float) -> VoiceFrame | None:
        """Open a datagram from the relay (UDP or tunnel); None when it was dropped (counted)."""
        if self._receiver is None:
            return None
        return self._receiver.receive(datagram, now)

    def send_text(self, channel_id: int, text: str, now: float) -> None:
        """Seal and send a text message to ``channel_id`` (we must hold a sender key there)."""
        sealer = self._sealers.get(channel_id)
        if sealer is None:
            raise LocalProtocolError(f"no sender key for channel {channel_id}", field="channel_id")
        blob = sealer.seal(text, self._wall_ms())
        if self._scheduler is not None:
            self._scheduler.text_sealed(channel_id)  # a later joiner gets a newer step
        self._session.send_text(channel_id, blob)

    def flush(self, now: float) -> list[SecureEvent]:
        """Send KeyDists for rotations that sealing triggered (call after :meth:`seal_voice`)."""
        out: list[SecureEvent] = []
        self._flush_actions(now, out)
        if self._pending or self._view_dirty:
            self._finish(out)
        return out

    def close(self) -> None:
        """Forget every key (disconnect). The session KEM private key is dropped."""
        if self._kem is not None:
            self._kem.wipe()
        self._kem = None
        self._scheduler = None
        self._receiver = None
        self._c2s = self._s2c = None
        self._sealers.clear()
        self._text_keys.clear()
        self._held.clear()
        self._texts.clear()
        self._peers.clear()
        self._last_accepted.clear()
        self._members.clear()
        self.key_sent_to.clear()
        self._view = None
        self._view_dirty = False
        self._sender_id = None  # closed: no member view, no roster comparison
