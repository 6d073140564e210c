"""A scriptable malicious relay on the sans-IO cores (no sockets, fake clocks).

An honest :class:`~voipclient.server.control.ServerCore` does the real work. Between the core and
each victim client sits the relay: every frame the core writes to a victim is decoded to a
message and passed through that victim's *script*, which may pass it, drop it, hold it back (to
release later, reordered), rewrite it or add messages around it. What comes out of one flush of
the core is delivered to the victim in ONE ``receive_data`` call (one TCP read), and
:meth:`MaliciousRelay.inject` delivers crafted messages in one read too.

Victims are the real client stack: :class:`~voipclient.net.client.ClientSession` +
:class:`~voipclient.net.e2ee.SecureSession` with a :class:`~voipclient.crypto.tofu.TofuStore`
and a fake wall clock. Every control event, every SecureEvent, every message a victim received
(after the script) and every message it sent is recorded. Every KeyDist a victim sends is
decoded from its outgoing bytes and stored with the member view drawn at the moment its E2E
layer asked the session to send it (:class:`SentKeyDist`), so a test can check that keys only
ever went to drawn members.

:class:`Ghost` makes identities the relay controls: an Ed25519 identity key, a session KEM key
and a valid session certificate, so a ghost's ``user_updated`` carries a real, verifiable
session key (a client that believed the roster would really seal its keys to it), and
:meth:`Ghost.loot` shows what it could open of a victim's KeyDists.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from voipclient.crypto import keydist
from voipclient.crypto.hop import HopMac, derive_hop_keys
from voipclient.crypto.identity import IdentityKey, SigningKey
from voipclient.crypto.media import PTYPE_VOICE, VoiceFrame
from voipclient.crypto.rotation import NewGeneration, SenderKeyScheduler
from voipclient.crypto.session import SessionCertificate, SessionKemKey
from voipclient.crypto.tofu import TofuStore
from voipclient.errors import RemoteProtocolError
from voipclient.net import e2ee
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.client import ClientSession
from voipclient.net.frames import FrameDecoder, encode_frame
from voipclient.net.states import ClientState
from voipclient.server.control import LOBBY_ID, ChannelConfig, ServerConfig, ServerCore

__all__ = [
    "CONFIG",
    "LOBBY",
    "PIN",
    "Ghost",
    "MaliciousRelay",
    "Script",
    "SentKeyDist",
    "Victim",
]

E = TypeVar("E")

PIN: Final = "sha256/fake-server-pin-of-the-malicious-relay"
LOBBY: Final = LOBBY_ID
#: Channels of the test server: A, B and C under the Lobby.
A, B, C = 2, 3, 4
CONFIG: Final = ServerConfig(
    channels=(
        ChannelConfig(id=A, name="Alpha"),
        ChannelConfig(id=B, name="Bravo"),
        ChannelConfig(id=C, name="Charlie"),
    )
)

#: A script sees each message the honest core sends a victim and returns what the victim gets
#: instead (``[]`` drops it, ``[msg, extra]`` adds one behind it), or None to pass it unchanged.
Script = Callable[["Victim", m.Message], Sequence[m.Message] | None]


def _seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@dataclass(frozen=True)
class SentKeyDist:
    """One KeyDist message a victim put on the wire (decoded from its outgoing bytes)."""

    #: The adapter clock when it was sent, seconds.
    at: float
    channel_id: int
    #: The recipients named in the message (``messages.KeyDist.recipients``).
    recipients: tuple[int, ...]
    #: Kind, generation and step from the blob's cleartext header.
    kind: int
    gen: int
    step: int
    #: The victim's drawn members of the channel (itself excluded) when its E2E layer asked to
    #: send this KeyDist.
    drawn: frozenset[int]
    #: The signed blob itself (a ghost can try to open it).
    blob: bytes = field(repr=False)


@dataclass
class Victim:
    """One real client behind the malicious relay."""

    name: str
    identity: IdentityKey
    client: ClientSession
    secure: e2ee.SecureSession
    tofu: TofuStore
    conn_id: int
    #: Every control event the ClientSession returned.
    control: list[ev.ClientEvent] = field(default_factory=list)
    #: Every SecureEvent the SecureSession returned.
    events: list[e2ee.SecureEvent] = field(default_factory=list)
    #: Each read the victim got (after the script): one list of messages per receive_data call.
    reads: list[list[m.Message]] = field(default_factory=list)
    #: Per call into the victim: the control events and the SecureEvents they produced.
    batches: list[tuple[list[ev.ClientEvent], list[e2ee.SecureEvent]]] = field(default_factory=list)
    #: Every message the victim sent, decoded from its outgoing bytes.
    sent: list[m.Message] = field(default_factory=list)
    #: Every KeyDist the victim sent.
    keydists: list[SentKeyDist] = field(default_factory=list)
    #: Voice frames the victim opened.
    heard: list[VoiceFrame] = field(default_factory=list)
    #: The relay's script for this victim (None: pass everything).
    script: Script | None = None
    #: Messages the script held back (see :meth:`MaliciousRelay.release`).
    held: list[m.Message] = field(default_factory=list)
    transport_open: bool = True
    _down: FrameDecoder = field(default_factory=FrameDecoder)
    _up: FrameDecoder = field(default_factory=FrameDecoder)
    _drawn_at_send: list[frozenset[int]] = field(default_factory=list)

    # -- looking at what happened ----------------------------------------------------------------
    @property
    def sid(self) -> int:
        sid = self.client.sender_id
        assert sid is not None, f"{self.name} is not logged in"
        return sid

    @property
    def ik_pub(self) -> bytes:
        return self.identity.public_bytes()

    def of(self, kind: type[E]) -> list[E]:
        """SecureEvents of ``kind`` so far."""
        return [e for e in self.events if isinstance(e, kind)]

    def control_of(self, kind: type[E]) -> list[E]:
        """Control events of ``kind`` so far."""
        return [e for e in self.control if isinstance(e, kind)]

    def view(self) -> e2ee.MemberView:
        return self.secure.view()

    def drawn(self, channel_id: int) -> frozenset[int]:
        """Sender ids drawn as members of ``channel_id`` (the victim included)."""
        return frozenset(h.sender_id for h in self.view().members(channel_id))

    def holder(self, channel_id: int, sender_id: int) -> e2ee.KeyHolder | None:
        for h in self.view().members(channel_id):
            if h.sender_id == sender_id:
                return h
        return None

    def notices(
        self, channel_id: int | None = None, change: str | None = None
    ) -> list[e2ee.KeyHolderNotice]:
        return [
            n
            for n in self.of(e2ee.KeyHolderNotice)
            if (channel_id is None or n.channel_id == channel_id)
            and (change is None or n.change == change)
        ]

    def keydists_to(self, sender_id: int) -> list[SentKeyDist]:
        """KeyDists whose recipients include ``sender_id``."""
        return [k for k in self.keydists if sender_id in k.recipients]

    def wire_user(
        self,
        sender_id: int,
        *,
        channels: Iterable[int | tuple[int, bool]] | None = None,
        **changes: object,
    ) -> m.UserInfo:
        """``sender_id``'s record as this victim's roster holds it, as the wire carries it
        (``channels`` and any other UserInfo field replaced as given)."""
        roster = self.client.roster
        user = roster.users[sender_id]
        if channels is None:
            memberships = tuple(
                m.Membership(channel_id=ch, may_speak=roster.may_speak(sender_id, ch))
                for ch in sorted(roster.channels_of(sender_id))
            )
        else:
            memberships = tuple(
                m.Membership(channel_id=c, may_speak=True)
                if isinstance(c, int)
                else m.Membership(channel_id=c[0], may_speak=c[1])
                for c in channels
            )
        fields: dict[str, object] = {
            "sender_id": user.sender_id,
            "name": user.name,
            "ik_pub": user.ik_pub,
            "sk_pub": user.sk_pub,
            "skc": user.skc,
            "muted": user.muted,
            "deafened": user.deafened,
            "channels": memberships,
        }
        fields.update(changes)
        return m.UserInfo(**fields)  # type: ignore[arg-type]

    def roster_inconsistent(self) -> ev.ConnectionClosed | None:
        """The ConnectionClosed(PROTOCOL_ERROR, ROSTER_INCONSISTENT), if the victim closed so."""
        for e in self.control_of(ev.ConnectionClosed):
            if (
                e.reason is ev.CloseReason.PROTOCOL_ERROR
                and e.code == m.ErrorCode.ROSTER_INCONSISTENT
            ):
                return e
        return None

    def fatal_errors_sent(self) -> list[m.Error]:
        """The fatal Error frames the victim queued to the relay."""
        return [x for x in self.sent if isinstance(x, m.Error) and x.fatal]

    @property
    def closed(self) -> bool:
        return self.client.state is ClientState.CLOSED


@dataclass
class Ghost:
    """An identity the relay controls, with a real session key and a valid certificate."""

    name: str
    sender_id: int
    identity: IdentityKey
    kem: SessionKemKey
    not_after_ms: int

    @property
    def ik_pub(self) -> bytes:
        return self.identity.public_bytes()

    @property
    def sk_pub(self) -> bytes:
        return self.kem.public_bytes()

    def skc(self, *, account: str | None = None, sender_id: int | None = None) -> bytes:
        """A certificate for the ghost's SK, signed by its identity key (valid unless the
        account or sender id given differ from what the victim checks it against)."""
        return SessionCertificate.build(
            self.identity,
            self.name if account is None else account,
            self.sender_id if sender_id is None else sender_id,
            self.sk_pub,
            self.not_after_ms,
        ).to_bytes()

    def info(
        self,
        channels: Iterable[int | tuple[int, bool]] = (LOBBY,),
        *,
        with_key: bool = True,
        name: str | None = None,
        ik_pub: bytes | None = None,
        sender_id: int | None = None,
    ) -> m.UserInfo:
        """The ghost's roster record (``with_key``: its SK and certificate included)."""
        memberships = tuple(
            m.Membership(channel_id=c, may_speak=True)
            if isinstance(c, int)
            else m.Membership(channel_id=c[0], may_speak=c[1])
            for c in channels
        )
        return m.UserInfo(
            sender_id=self.sender_id if sender_id is None else sender_id,
            name=self.name if name is None else name,
            ik_pub=self.ik_pub if ik_pub is None else ik_pub,
            sk_pub=self.sk_pub if with_key else None,
            skc=self.skc() if with_key else None,
            channels=memberships,
        )

    def joined(
        self, channels: Iterable[int | tuple[int, bool]] = (LOBBY,), *, with_key: bool = False
    ) -> m.UserJoined:
        """``user_joined`` for the ghost (by default without its key, as a real login)."""
        return m.UserJoined(user=self.info(channels, with_key=with_key))

    def updated(
        self, channels: Iterable[int | tuple[int, bool]] = (LOBBY,), *, with_key: bool = True
    ) -> m.UserUpdated:
        """``user_updated`` for the ghost (by default publishing its session key)."""
        return m.UserUpdated(user=self.info(channels, with_key=with_key))

    def left(self, reason: m.LeaveReason = m.LeaveReason.QUIT) -> m.UserLeft:
        return m.UserLeft(sender_id=self.sender_id, reason=int(reason))

    def speak(
        self,
        channel_id: int,
        listener: Victim,
        listener_sk_pub: bytes,
        payload: bytes,
        now: float,
        created_ms: int,
    ) -> tuple[m.KeyDistDelivery, bytes]:
        """The ghost's own sender key for ``channel_id``: a genuine KeyDist (signed by the
        ghost, sealed to ``listener``'s real SK) as the relay would deliver it, and one voice
        datagram sealed under that key (its hop MAC is a placeholder: the relay re-MACs)."""
        sched = SenderKeyScheduler(self.sender_id)
        sched.open_channel(channel_id, [listener.sid], now)
        (action,) = sched.take_actions()
        assert isinstance(action, NewGeneration)
        (blob,) = keydist.build_keydists(
            self.identity,
            kind=keydist.KeyDistKind.NEW_GENERATION,
            channel_id=channel_id,
            sender_id=self.sender_id,
            gen=action.gen,
            step=action.step,
            created_ms=created_ms,
            base_key=action.base_key,
            text_signing_pub=SigningKey.generate().public_bytes(),
            recipients=[keydist.KeyDistRecipient(listener.sid, listener_sk_pub)],
        )
        datagram = sched.seal(channel_id, PTYPE_VOICE, payload, now) + bytes(10)
        delivery = m.KeyDistDelivery(sender_id=self.sender_id, channel_id=channel_id, blob=blob)
        return delivery, datagram

    def loot(self, victim: Victim) -> list[keydist.AcceptedKey]:
        """Every key of ``victim``'s KeyDists this ghost can open: what it stole."""
        stolen = []
        for sent in victim.keydists_to(self.sender_id):
            part = keydist.split_for_recipients(sent.blob).get(self.sender_id)
            if part is None:
                continue
            try:
                stolen.append(
                    keydist.open_keydist(
                        part,
                        sender_ik_pub=victim.ik_pub,
                        my_sender_id=self.sender_id,
                        my_session_key=self.kem,
                        last_accepted=None,
                        now_ms=0,
                    )
                )
            except RemoteProtocolError:
                continue
        return stolen


class MaliciousRelay:
    """An honest ServerCore behind a man in the middle that the test scripts. See the module
    docstring."""

    def __init__(self, config: ServerConfig = CONFIG, *, seed: int = 1) -> None:
        self.now = 5_000.0  # the adapters' monotonic clock, seconds
        self.wall_offset = 1_700_000_000.0 - self.now  # a fake wall clock moving with it
        self.server = ServerCore(config, rng=_seeded(seed))
        self.server_events: list[ev.ServerEvent] = []
        self.victims: dict[str, Victim] = {}
        self.tofu: dict[str, TofuStore] = {}
        #: Who really is behind each sender id: (name, ik_pub) of real sessions (from the
        #: server) and of the ghosts the relay made (as it presents them first).
        self.identities: dict[int, tuple[str, bytes]] = {}
        self._next_conn = 1
        self._next_ghost = 9_000
        self._server_closed: set[int] = set()

    # -- clocks -----------------------------------------------------------------------------------
    def wall(self) -> float:
        return self.now + self.wall_offset

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)

    # -- people -----------------------------------------------------------------------------------
    def login(
        self, name: str, identity: IdentityKey | None = None, *, settle: bool = True
    ) -> Victim:
        """Connect a real client called ``name`` through the relay and log it in."""
        identity = identity or IdentityKey.generate()
        client = ClientSession(
            name,
            identity.public_bytes(),
            identity.sign,
            rng=_seeded(zlib.crc32(name.encode())),
        )
        tofu = self.tofu.setdefault(name, TofuStore())
        secure = e2ee.SecureSession(
            client,
            identity,
            client.name,
            tofu,
            PIN,
            wall_clock=self.wall,
            rng=_seeded(zlib.crc32(b"e2ee " + name.encode())),
        )
        conn = self._next_conn
        self._next_conn += 1
        victim = Victim(name, identity, client, secure, tofu, conn)
        self._instrument(victim)
        self.victims[name] = victim
        self.server.connection_made(conn, self.now)
        client.start(self.now)
        self._after(victim)
        if settle:
            self.settle()
        return victim

    def ghost(
        self,
        name: str,
        *,
        sender_id: int | None = None,
        identity: IdentityKey | None = None,
        claims: tuple[str, bytes] | None = None,
    ) -> Ghost:
        """A new identity the relay controls (sender ids from 9000 up unless given).

        ``claims``: the (name, ik_pub) the relay will present it as, if not its own."""
        if sender_id is None:
            sender_id = self._next_ghost
            self._next_ghost += 1
        identity = identity or IdentityKey.generate()
        g = Ghost(name, sender_id, identity, SessionKemKey.generate(), self.wall_ms() + 3_600_000)
        self.identities.setdefault(sender_id, claims or (name, g.ik_pub))
        return g

    # -- moving bytes -----------------------------------------------------------------------------
    def _instrument(self, victim: Victim) -> None:
        """Note the drawn members at the moment the E2E layer sends a KeyDist (instance attr:
        the SecureSession calls ``self._session.send_keydist``)."""
        original = victim.client.send_keydist

        def send_keydist(channel_id: int, recipients: Iterable[int], blob: bytes) -> None:
            view = victim.secure.view()
            me = view.me
            drawn = frozenset(h.sender_id for h in view.members(channel_id)) - {me}
            victim._drawn_at_send.append(drawn)
            original(channel_id, recipients, blob)

        victim.client.send_keydist = send_keydist  # type: ignore[method-assign]

    def _after(self, victim: Victim) -> None:
        """Take what the victim wrote, record it, and hand it to the core."""
        up = victim.client.data_to_send()
        if not up:
            return
        for payload in victim._up.feed(up):
            msg = m.decode(payload)
            victim.sent.append(msg)
            if isinstance(msg, m.KeyDist):
                header = keydist.parse_keydist_header(msg.blob)
                drawn = victim._drawn_at_send.pop(0) if victim._drawn_at_send else frozenset()
                victim.keydists.append(
                    SentKeyDist(
                        self.now,
                        msg.channel_id,
                        msg.recipients,
                        header.kind,
                        header.gen,
                        header.step,
                        drawn,
                        msg.blob,
                    )
                )
        if victim.transport_open and victim.conn_id not in self._server_closed:
            self.server.receive_data(victim.conn_id, up, self.now)
            self._collect_server_events()

    def _feed(self, victim: Victim, control: list[ev.ClientEvent]) -> None:
        victim.control += control
        out = victim.secure.handle_events(control, self.now)
        victim.events += out
        victim.batches.append((control, out))
        victim.heard += [e.frame for e in out if isinstance(e, e2ee.VoiceReleased)]
        self._after(victim)

    def _deliver(self, victim: Victim, msgs: Sequence[m.Message]) -> None:
        """Deliver ``msgs`` to the victim in one read."""
        if not msgs or not victim.transport_open:
            return
        victim.reads.append(list(msgs))
        data = b"".join(encode_frame(m.encode(x)) for x in msgs)
        self._feed(victim, victim.client.receive_data(data, self.now))

    def inject(self, victim: Victim, *msgs: m.Message, settle: bool = True) -> None:
        """Deliver crafted messages to one victim in ONE receive_data call (one TCP read)."""
        self._deliver(victim, msgs)
        if settle:
            self.settle()

    def hold(self, victim: Victim, msg: m.Message) -> list[m.Message]:
        """For scripts: keep ``msg`` back (deliver nothing now)."""
        victim.held.append(msg)
        return []

    def release(
        self,
        victim: Victim,
        *,
        reverse: bool = False,
        which: Callable[[m.Message], bool] | None = None,
    ) -> list[m.Message]:
        """Deliver held messages (all, or those ``which`` picks) in one read."""
        chosen = [x for x in victim.held if which is None or which(x)]
        victim.held = [x for x in victim.held if x not in chosen]
        if reverse:
            chosen.reverse()
        self.inject(victim, *chosen)
        return chosen

    def _collect_server_events(self) -> None:
        for event in self.server.events():
            self.server_events.append(event)
            if isinstance(event, ev.SessionAuthenticated):
                self.identities[event.sender_id] = (event.name, event.ik_pub)
            elif isinstance(event, ev.SessionClosed):
                self._server_closed.add(event.conn_id)

    def _downstream(self, victim: Victim) -> bool:
        down = self.server.data_to_send(victim.conn_id)
        if not down:
            return False
        out: list[m.Message] = []
        for payload in victim._down.feed(down):
            msg = m.decode(payload)
            scripted = victim.script(victim, msg) if victim.script is not None else None
            out += [msg] if scripted is None else list(scripted)
        self._deliver(victim, out)
        return True

    def pump(self) -> None:
        """Move bytes both ways until quiet; close transports whose owner side has finished."""
        for _ in range(10_000):
            moved = False
            for victim in list(self.victims.values()):
                if not victim.transport_open:
                    continue
                self._after(victim)
                moved = self._downstream(victim) or moved
            self._collect_server_events()
            if not moved:
                break
        else:  # pragma: no cover
            raise AssertionError("pump did not settle")
        ended = [
            v
            for v in self.victims.values()
            if v.transport_open and (v.closed or v.conn_id in self._server_closed)
        ]
        for victim in ended:
            self._after(victim)  # its last words (a fatal Error) still reach the core
            victim.transport_open = False
            self._feed(victim, victim.client.connection_lost(self.now))
            self.server.connection_lost(victim.conn_id, self.now)
            self._collect_server_events()
        if ended:
            self.pump()  # the others hear of it (user_left)

    def settle(self) -> None:
        """Pump and run the E2E layers' timers until nothing moves."""
        for _ in range(200):
            self.pump()
            moved = False
            for victim in self.victims.values():
                if not victim.transport_open:
                    continue
                out = victim.secure.tick(self.now)
                victim.events += out
                before = len(victim.sent)
                self._after(victim)
                moved = moved or bool(out) or len(victim.sent) != before
            if not moved:
                self.pump()
                return
        raise AssertionError("relay did not settle")

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """Let time pass, firing client and server timers on the way."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for victim in self.victims.values():
                due = victim.client.get_timer()
                if victim.transport_open and due is not None and due <= self.now:
                    self._feed(victim, victim.client.handle_timer(self.now))
            due = self.server.get_timer()
            if due is not None and due <= self.now:
                self.server.handle_timer(self.now)
                self._collect_server_events()
            self.settle()

    # -- intents ----------------------------------------------------------------------------------
    def join(self, victim: Victim, *channels: int) -> None:
        for ch in channels:
            victim.client.join(ch)
        self._after(victim)
        self.settle()

    def leave(self, victim: Victim, channel_id: int) -> None:
        victim.client.leave(channel_id)
        self._after(victim)
        self.settle()

    def quit(self, victim: Victim) -> None:
        victim.client.close("bye", self.now)
        self._after(victim)
        self.settle()

    def verify(self, victim: Victim, sender_id: int, ik_pub: bytes, verified: bool = True) -> bool:
        """The victim's user marks ``sender_id``'s key verified (safety numbers compared)."""
        ok = victim.secure.set_verified(sender_id, ik_pub, verified, self.now)
        victim.events += victim.secure.take_events(self.now)
        self._after(victim)
        self.settle()
        return ok

    # -- voice ------------------------------------------------------------------------------------
    def seal(self, speaker: Victim, channels: Sequence[int], payload: bytes) -> list[bytes]:
        """Seal one frame for ``channels`` (and send any KeyDists sealing triggered)."""
        datagrams = speaker.secure.seal_voice(channels, payload, self.now)
        speaker.events += speaker.secure.flush(self.now)
        self._after(speaker)
        self.settle()
        return datagrams

    def hear(self, listener: Victim, datagram: bytes) -> VoiceFrame | None:
        """Hand ``listener`` a datagram as the relay does (re-MACed under its K_s2c)."""
        info = self.server.session_by_sender_id(listener.sid)
        assert info is not None
        _, k_s2c = derive_hop_keys(info.hop_secret)
        frame = listener.secure.open_voice(HopMac(k_s2c).append(datagram[:-10]), self.now)
        if frame is not None:
            listener.heard.append(frame)
        return frame

    # -- the invariant -----------------------------------------------------------------------------
    def violations(self, victim: Victim) -> list[str]:
        """Everything that breaks "the member list a client draws is exactly the set it hands
        its keys to, with the identities the real users have" for ``victim``:

        * every KeyDist it sent names only members drawn at that moment;
        * for every channel it is a member of, ``key_sent_to`` ⊆ the drawn members;
        * every drawn member is drawn with the (name, ik_pub) the real user (or ghost) has.
        """
        bad: list[str] = []
        for k in victim.keydists:
            extra = set(k.recipients) - k.drawn
            if extra:
                bad.append(
                    f"{victim.name} sent a KeyDist (channel {k.channel_id}, gen {k.gen}, step "
                    f"{k.step}) to non-drawn {sorted(extra)}; drawn were {sorted(k.drawn)}"
                )
        if victim.closed:
            return bad
        view = victim.view()
        me = view.me
        for channel_id, holders in view.channels.items():
            ids = {h.sender_id for h in holders}
            if me not in ids:
                continue
            sent_to = victim.secure.key_sent_to.get(channel_id, set())
            hidden = set(sent_to) - (ids - {me})
            if hidden:
                bad.append(
                    f"{victim.name}'s key for channel {channel_id} went to {sorted(hidden)}, "
                    "who are not drawn"
                )
            for h in holders:
                true = self.identities.get(h.sender_id)
                if h.sender_id == me:
                    true = (victim.client.name, victim.ik_pub)
                if true is None or (h.name, h.ik_pub) != true:
                    bad.append(
                        f"{victim.name} draws {h.sender_id} as {h.name!r} with key "
                        f"{h.ik_pub[:4].hex()}…; it is {true[0] if true else '?'!r}"
                    )
        return bad

    def assert_invariant(self) -> None:
        problems = [p for v in self.victims.values() for p in self.violations(v)]
        assert not problems, "\n".join(problems)
