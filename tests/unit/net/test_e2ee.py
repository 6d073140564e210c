"""Three users, one server core, the whole pure stack in memory with a fake clock.

Control bytes go through ``ServerCore`` (``_harness.Net``); voice datagrams go through
``FakeRelay``, a few lines that do what the relay must (check the sender's c2s hop MAC, fan out to
the channel's listeners with each listener's s2c MAC) so the E2E layer is exercised end to end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from tests.unit.net._harness import Net, Peer
from voipclient.crypto.hop import HopMac, derive_hop_keys
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.media import VoiceFrame, VoiceReceiver, parse_header
from voipclient.crypto.tofu import TofuStore, TrustStatus
from voipclient.net import e2ee
from voipclient.net.client import ClientSession
from voipclient.net.server import ChannelConfig, ServerConfig

PIN = "sha256/fake-server-pin"
A, B, C = 2, 3, 4
CONFIG = ServerConfig(
    channels=(
        ChannelConfig(id=A, name="Alpha"),
        ChannelConfig(id=B, name="Bravo"),
        ChannelConfig(id=C, name="Charlie"),
    )
)


@dataclass
class User:
    name: str
    identity: IdentityKey
    secure: e2ee.SecureSession
    peer: Peer
    keylog: list[str]
    events: list[e2ee.SecureEvent] = field(default_factory=list)
    heard: list[VoiceFrame] = field(default_factory=list)

    @property
    def sid(self) -> int:
        return self.peer.sender_id

    def of(self, kind: type[e2ee.SecureEvent]) -> list[e2ee.SecureEvent]:
        return [e for e in self.events if isinstance(e, kind)]


class World:
    def __init__(self) -> None:
        self.net = Net(CONFIG)
        self.users: dict[str, User] = {}
        self.tofu: dict[str, TofuStore] = {}
        self.net.now = 1_700_000_000.0  # wall-clock seconds: certificates expire in real time

    def login(self, name: str, identity: IdentityKey | None = None) -> User:
        identity = identity or IdentityKey.generate()
        client = ClientSession(name, identity.public_bytes(), identity.sign)
        keylog: list[str] = []
        tofu = self.tofu.setdefault(name, TofuStore())
        secure = e2ee.SecureSession(client, identity, name, tofu, PIN, keylog=keylog.append)
        peer = self.net.attach(client, login=False)
        client.start(self.net.now)
        user = User(name, identity, secure, peer, keylog)
        self.users[name] = user
        self.settle()
        return user

    def settle(self) -> None:
        """Pump control bytes and feed events to the E2E layers until nothing moves."""
        for _ in range(100):
            self.net.pump()
            moved = False
            for user in self.users.values():
                batch, user.peer.events = user.peer.events, []
                new = user.secure.handle_events(batch, self.net.now)
                new += user.secure.tick(self.net.now)
                moved = moved or bool(batch)
                user.events += new
                user.heard += [e.frame for e in new if isinstance(e, e2ee.VoiceReleased)]
            if not moved:
                return
        raise AssertionError("world did not settle")

    def advance(self, seconds: float) -> None:
        self.net.now += seconds
        self.settle()

    def join(self, user: User, *channels: int) -> None:
        for ch in channels:
            user.peer.client.join(ch)
        self.settle()

    def leave(self, user: User, channel: int) -> None:
        user.peer.client.leave(channel)
        self.settle()


class FakeRelay:
    """What the relay does to a datagram (PROTOCOL §3), without sockets or rate limits."""

    def __init__(self, world: World) -> None:
        self.world = world

    def _hop(self, sender_id: int) -> tuple[HopMac, HopMac]:
        info = self.world.net.server.session_by_sender_id(sender_id)
        assert info is not None
        k_c2s, k_s2c = derive_hop_keys(info.hop_secret)
        return HopMac(k_c2s), HopMac(k_s2c)

    def for_listener(self, datagram: bytes, listener: User) -> bytes:
        """The bytes the relay would send ``listener`` (re-MACed under its K_s2c)."""
        return self._hop(listener.sid)[1].append(datagram[:-10])

    def send(self, speaker: User, channels: list[int], payload: bytes) -> list[bytes]:
        now = self.world.net.now
        datagrams = speaker.secure.seal_voice(channels, payload, now)
        speaker.events += speaker.secure.flush(now)
        self.world.settle()
        server = self.world.net.server
        for datagram in datagrams:
            header = parse_header(datagram)
            assert header is not None and header.sender_id == speaker.sid
            assert self._hop(speaker.sid)[0].verify(datagram)
            assert server.may_speak(speaker.sid, header.channel_id)
            for listener_id in server.listeners(header.channel_id, exclude=speaker.sid):
                listener = next(u for u in self.world.users.values() if u.sid == listener_id)
                frame = listener.secure.open_voice(self.for_listener(datagram, listener), now)
                if frame is not None:
                    listener.heard.append(frame)
        return datagrams


@pytest.fixture
def world() -> World:
    w = World()
    for name in ("ann", "bob", "cat"):
        w.login(name)
    u = w.users
    w.join(u["ann"], A, B)
    w.join(u["bob"], B, C)
    w.join(u["cat"], A, C)
    return w


def heard_in(user: User, channel: int, payload: bytes) -> bool:
    return any(f.channel_id == channel and f.payload == payload for f in user.heard)


def test_everyone_pins_everyone_and_accepts_keys(world: World) -> None:
    ann, bob, cat = (world.users[n] for n in ("ann", "bob", "cat"))
    for user in (ann, bob, cat):
        trust = [e for e in user.of(e2ee.PeerTrust) if isinstance(e, e2ee.PeerTrust)]
        assert {e.name for e in trust} == {"ann", "bob", "cat"} - {user.name}
        assert all(e.status is TrustStatus.NEW for e in trust)
        assert not user.of(e2ee.KeyRejected)
    # Who holds whose key, per channel: exactly the fellow members (Lobby: everyone).
    accepted = {
        (u.name, e.sender_id, e.channel_id)
        for u in (ann, bob, cat)
        for e in u.of(e2ee.KeyAccepted)
        if isinstance(e, e2ee.KeyAccepted)
    }
    sid = {u.sid: u.name for u in (ann, bob, cat)}
    pairs = {(name, sid[s], ch) for name, s, ch in accepted}
    assert ("bob", "ann", B) in pairs and ("cat", "ann", A) in pairs
    assert ("ann", "bob", B) in pairs and ("cat", "bob", C) in pairs
    assert ("ann", "cat", A) in pairs and ("bob", "cat", C) in pairs
    assert not {p for p in pairs if p[2] == A and "bob" in (p[0], p[1])}
    assert not {p for p in pairs if p[2] == B and "cat" in (p[0], p[1])}
    assert not {p for p in pairs if p[2] == C and "ann" in (p[0], p[1])}


def test_voice_reaches_exactly_the_members_of_each_target_channel(world: World) -> None:
    ann, bob, cat = (world.users[n] for n in ("ann", "bob", "cat"))
    relay = FakeRelay(world)
    payload = b"\x00\x00\x00\x07" + bytes(range(80))  # frame_no 7 + a fake Opus frame
    datagrams = relay.send(ann, [A, B], payload)
    assert len(datagrams) == 2  # encoded once, sealed once per channel
    assert heard_in(bob, B, payload) and not heard_in(bob, A, payload)
    assert heard_in(cat, A, payload) and not heard_in(cat, B, payload)
    assert not ann.heard  # no echo
    # Bob talks into B and C at once: ann hears B, cat hears C.
    relay.send(bob, [B, C], b"\x00\x00\x00\x01hello")
    assert heard_in(ann, B, b"\x00\x00\x00\x01hello")
    assert heard_in(cat, C, b"\x00\x00\x00\x01hello")


def test_text_reaches_members_only_and_is_signed(world: World) -> None:
    ann, bob, cat = (world.users[n] for n in ("ann", "bob", "cat"))
    bob.secure.send_text(C, "hi @cat", world.net.now)
    world.settle()
    got = [e for e in cat.of(e2ee.TextMessageReceived) if isinstance(e, e2ee.TextMessageReceived)]
    assert [(e.author, e.message.text, e.message.channel_id) for e in got] == [
        ("bob", "hi @cat", C)
    ]
    assert not ann.of(e2ee.TextMessageReceived)


def test_leaver_cannot_open_anything_sent_after_the_rotation(world: World) -> None:
    ann, cat = world.users["ann"], world.users["cat"]
    relay = FakeRelay(world)
    before = b"\x00\x00\x00\x01before"
    relay.send(ann, [A], before)
    assert heard_in(cat, A, before)
    gen_before = ann.secure.scheduler.state(A).gen  # type: ignore[union-attr]

    world.leave(cat, A)
    assert ann.secure.scheduler.state(A).gen == gen_before + 1  # type: ignore[union-attr]

    # Every media key cat ever held, from its key log, in a receiver of its own.
    thief = VoiceReceiver(HopMac(b"\x01" * 32))
    for line in cat.keylog:
        if line.startswith("VC1_MEDIA"):
            _, ch, snd, gen, step, key = line.split()
            thief.add_key(int(ch), int(snd), int(gen), int(step), bytes.fromhex(key), 0.0)
    after = b"\x00\x00\x00\x02after"
    for datagram in relay.send(ann, [A], after):
        stolen = HopMac(b"\x01" * 32).append(datagram[:-10])
        assert thief.receive(stolen, world.net.now) is None
        assert cat.secure.open_voice(relay.for_listener(datagram, cat), world.net.now) is None
    assert not heard_in(cat, A, after)


def test_disconnect_rotates_the_remaining_members_keys(world: World) -> None:
    ann, bob, cat = (world.users[n] for n in ("ann", "bob", "cat"))
    gen_c = bob.secure.scheduler.state(C).gen  # type: ignore[union-attr]
    gen_a = ann.secure.scheduler.state(A).gen  # type: ignore[union-attr]
    cat.peer.client.close("bye", world.net.now)
    world.settle()
    assert bob.secure.scheduler.state(C).gen == gen_c + 1  # type: ignore[union-attr]
    assert ann.secure.scheduler.state(A).gen == gen_a + 1  # type: ignore[union-attr]
    relay = FakeRelay(world)
    relay.send(bob, [B], b"\x00\x00\x00\x09still")
    assert heard_in(ann, B, b"\x00\x00\x00\x09still")


def test_joiner_cannot_open_what_was_sent_before_it_joined(world: World) -> None:
    ann, bob = world.users["ann"], world.users["bob"]
    relay = FakeRelay(world)
    early = relay.send(ann, [A], b"\x00\x00\x00\x01early")
    world.join(bob, A)
    world.advance(0.6)  # past the 500 ms join coalescing window: the step for joiners goes out
    accepted = [
        e for e in bob.of(e2ee.KeyAccepted) if isinstance(e, e2ee.KeyAccepted) and e.channel_id == A
    ]
    assert accepted and accepted[-1].kind == 2
    for datagram in early:
        assert bob.secure.open_voice(relay.for_listener(datagram, bob), world.net.now) is None
    late = b"\x00\x00\x00\x02late"
    relay.send(ann, [A], late)
    assert heard_in(bob, A, late)


def test_relay_cannot_relabel_or_forge(world: World) -> None:
    ann, bob = world.users["ann"], world.users["bob"]
    relay = FakeRelay(world)
    (datagram,) = relay.send(ann, [B], b"\x00\x00\x00\x01x")
    receiver = bob.secure.receiver
    assert receiver is not None
    # The relay relabels the channel (B -> C: bob is a member of both) and re-MACs correctly.
    relabeled = bytearray(datagram)
    relabeled[4:8] = C.to_bytes(4, "big")
    assert bob.secure.open_voice(relay.for_listener(bytes(relabeled), bob), world.net.now) is None
    rng = random.Random(5)
    for _ in range(50):
        forged = bytearray(datagram)
        forged[rng.randrange(20, len(forged) - 10)] ^= 1 << rng.randrange(8)
        assert bob.secure.open_voice(relay.for_listener(bytes(forged), bob), world.net.now) is None


def test_changed_identity_key_is_reported(world: World) -> None:
    """A server that forgets (or lies about) the name binding: TOFU is the client's defence."""
    ann = world.users["ann"]
    # Ann marks bob's key as verified; cat's stays trust-on-first-use.
    ann_tofu = world.tofu["ann"]
    entry = ann_tofu.get(PIN, "bob")
    assert entry is not None
    ann_tofu.mark_verified(PIN, "bob", entry.ik_pub, 0)

    second = World()  # a fresh server process with no memory of who registered which name
    second.net.now = world.net.now
    second.tofu = world.tofu  # the clients keep their TOFU stores
    second.login("ann", ann.identity)
    bob2 = second.login("bob")  # a different key under bob's name
    cat2 = second.login("cat")
    ann2 = second.users["ann"]
    status = {e.name: e.status for e in ann2.of(e2ee.PeerTrust) if isinstance(e, e2ee.PeerTrust)}
    assert status == {
        "bob": TrustStatus.CHANGED_WHILE_VERIFIED,
        "cat": TrustStatus.CHANGED_WHILE_TOFU,
    }
    # Verified-then-changed: no key is sent to or accepted from the new "bob".
    second.join(ann2, B)
    second.join(bob2, B)
    second.advance(0.6)
    assert not [
        e
        for e in ann2.of(e2ee.KeyAccepted)
        if isinstance(e, e2ee.KeyAccepted) and e.sender_id == bob2.sid
    ]
    rejected = [e for e in ann2.of(e2ee.KeyRejected) if isinstance(e, e2ee.KeyRejected)]
    assert any(e.sender_id == bob2.sid for e in rejected)
    assert not [
        e
        for e in bob2.of(e2ee.KeyAccepted)
        if isinstance(e, e2ee.KeyAccepted) and e.sender_id == ann2.sid
    ]
    assert cat2.sid != bob2.sid
