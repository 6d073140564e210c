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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from voipclient.crypto import keydist
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
from voipclient.crypto.tofu import TofuStore, TrustStatus
from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net import events as ev
from voipclient.net.client import ClientSession
from voipclient.net.messages import LeaveReason
from voipclient.net.roster import UserView

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


# -- the session ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Peer:
    sender_id: int
    name: str
    ik_pub: bytes
    recipient: keydist.KeyDistRecipient | None = None  # set once its SKC verified


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
        self._texts = TextOpener()
        self._sealers: dict[int, TextSealer] = {}
        self._text_keys: dict[tuple[int, int], SigningKey] = {}  # (channel, gen) -> signing key
        self._peers: dict[int, _Peer] = {}
        # Last (gen, step) accepted per (channel, sender) for the whole connection: sender ids are
        # never reused, so keeping it after a member leaves stops a relay replaying old KeyDists.
        self._last_accepted: dict[tuple[int, int], tuple[int, int]] = {}
        # Newest key action per (recipient, channel) held until the recipient's SK is known.
        self._held: dict[tuple[int, int], KeyAction] = {}
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

    def transmit_channels(self) -> tuple[int, ...]:
        """Channels we hold a sender key for (member and allowed to speak)."""
        return self._scheduler.channels() if self._scheduler else ()

    # -- feeding -----------------------------------------------------------------------------------
    def handle_events(self, events: Iterable[ev.ClientEvent], now: float) -> list[SecureEvent]:
        """Feed the control session's events; returns what the UI should hear about."""
        out: list[SecureEvent] = []
        for event in events:
            try:
                self._handle(event, now, out)
            except RemoteProtocolError as exc:  # one peer's bad input never aborts the batch
                out.append(KeyRejected(getattr(event, "sender_id", 0), None, exc.message))
        self._flush_actions(now, out)
        return out

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
        # The server binds names case-insensitively, so "Bob" and "bob" are one account.
        return name.casefold()

    def _handle(self, event: ev.ClientEvent, now: float, out: list[SecureEvent]) -> None:
        if isinstance(event, ev.LoggedIn):
            self._logged_in(event, now, out)
        elif isinstance(event, ev.UserJoined):
            self._see_user(event.user, now, out)
            for channel_id in event.channels:  # its automatic memberships (the Lobby)
                self._membership(
                    ev.MembershipChanged(event.user.sender_id, channel_id, True, False), now
                )
        elif isinstance(event, ev.SessionKeyPublished):
            self._key_published(event.sender_id, event.sk_pub, event.skc, now, out)
        elif isinstance(event, ev.MembershipChanged):
            self._membership(event, now)
        elif isinstance(event, ev.UserLeft):
            self._user_left(event, now)
        elif isinstance(event, ev.ChannelRemoved):
            self._leave_channel(event.channel.id, event.members)
        elif isinstance(event, ev.KeyDistReceived):
            self._keydist(event, now, out)
        elif isinstance(event, ev.TextReceived):
            self._text(event, out)
        elif isinstance(event, ev.ConnectionClosed):
            self.close()

    # -- login and peers ---------------------------------------------------------------------------
    def _logged_in(self, event: ev.LoggedIn, now: float, out: list[SecureEvent]) -> None:
        self._sender_id = me = event.sender_id
        k_c2s, k_s2c = derive_hop_keys(event.hop_secret)
        self._c2s = HopMac(k_c2s)
        self._receiver = VoiceReceiver(k_s2c, keylog=self._keylog)
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
        for user in event.roster.users.values():
            self._see_user(user, now, out)
            if user.sk_pub is not None and user.skc is not None:
                self._key_published(user.sender_id, user.sk_pub, user.skc, now, out)
        for channel_id in event.roster.channels_of(event.sender_id):
            self._open_channel(channel_id, event.roster.may_speak(me, channel_id), now)

    def _publish_certificate(self, sender_id: int) -> None:
        assert self._kem is not None
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
        account = self._tofu_account(user.name)
        status = self._tofu.observe(self._pin, account, user.ik_pub, self._wall_ms())
        self._peers[user.sender_id] = _Peer(user.sender_id, user.name, user.ik_pub)
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
        self, sender_id: int, sk_pub: bytes, skc_bytes: bytes, now: float, out: list[SecureEvent]
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
        try:
            skc = SessionCertificate.from_bytes(skc_bytes)
            skc.verify(peer.ik_pub, self._wall_ms(), account=peer.name, sender_id=sender_id)
            if skc.sk_pub != sk_pub:
                raise RemoteProtocolError("published SK differs from its certificate")
        except RemoteProtocolError as exc:
            out.append(KeyRejected(sender_id, None, f"session certificate: {exc.message}"))
            return
        peer.recipient = keydist.KeyDistRecipient.from_certificate(skc)
        self._release_held(sender_id, now)

    def _release_held(self, sender_id: int, now: float) -> None:
        """Send the keys held for ``sender_id`` (the newest per channel), if we may."""
        if self._trusted_ik(sender_id) is None:
            return  # blocked by TOFU: its keys stay held until the user re-verifies
        for (recipient, channel_id), action in list(self._held.items()):
            if recipient == sender_id:
                del self._held[(recipient, channel_id)]
                self._send_keydist(action, [sender_id], now)

    def peer_reverified(self, sender_id: int, now: float) -> None:
        """The user verified a peer's (changed) key in the TOFU store: send it what was held."""
        self._release_held(sender_id, now)

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
        if event.sender_id == self._sender_id:
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
            ready = []
            for recipient in action.recipients:
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

    def _send_keydist(self, action: KeyAction, recipients: Sequence[int], now: float) -> None:
        assert not isinstance(action, StepAdvanced)
        signing = self._text_keys.get((action.channel_id, action.gen))
        if signing is None:
            return  # superseded generation: a newer action carries the current key
        # Never to a peer whose verified key changed (PROTOCOL §1): it stays held until the user
        # re-verifies, and a changed-while-TOFU peer still gets keys (with a warning shown).
        targets = [
            peer.recipient
            for r in recipients
            if (peer := self._peers.get(r)) is not None
            and peer.recipient is not None
            and self._trusted_ik(r) is not None
        ]
        if not targets:
            return
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
        return out

    def close(self) -> None:
        """Forget every key (disconnect). The session KEM private key is dropped."""
        if self._kem is not None:
            self._kem.wipe()
        self._kem = None
        self._scheduler = None
        self._receiver = None
        self._c2s = None
        self._sealers.clear()
        self._text_keys.clear()
        self._held.clear()
        self._texts.clear()
        self._peers.clear()
        self._last_accepted.clear()
