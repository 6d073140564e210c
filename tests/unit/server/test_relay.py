"""The relay's pure UDP core (PROTOCOL §3 "Relay, per datagram", address validation, §6).

Real crypto throughout: speakers seal with ``SenderKey`` and a c2s ``HopMac``; listeners open what
the relay sends with ``VoiceReceiver`` under their K_s2c. The roster is a :class:`FakeRoster`.
Every negative test checks that exactly the expected drop counter moved and nothing was sent.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Collection

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voipclient.crypto.hop import HOP_MAC_LEN, HopMac, derive_hop_keys
from voipclient.crypto.media import (
    HEADER_STRUCT,
    MAX_PAYLOAD_LEN,
    PTYPE_VOICE,
    PTYPE_VOICE_LAST,
    SenderKey,
    VoiceFrame,
    VoiceReceiver,
)
from voipclient.crypto.replay import ReplayWindow
from voipclient.errors import LocalProtocolError
from voipclient.net import hopctl
from voipclient.server.relay import (
    Addr,
    RelayCore,
    RelayDrop,
    RelayLimits,
    RelayRoster,
    WirePlan,
)


@pytest.fixture(autouse=True, params=["python", "native"])
def relay_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs against the Python relay core and against the one whose voice checks
    run in C (``_fanout.c``'s ``vc_voice``, built by make). A test that hands the core its own
    FAKE address packing or keying is a test of the Python sink path: it stays Python."""
    if request.param == "native":
        from voipclient.server import mmsg

        if not mmsg.available():
            pytest.skip("the native voice path needs Linux's sendmmsg")
        assert mmsg.native_available()[0], mmsg.native_available()[1]

        python_core = RelayCore

        def native_core(roster: RelayRoster, **kw: object) -> RelayCore:
            if "pack_address" in kw or "key_state" in kw:
                return python_core(roster, **kw)  # type: ignore[arg-type]
            native = mmsg.NativeVoice(None)
            return python_core(roster, pack_address=mmsg.sockaddr, native=native, **kw)  # type: ignore[arg-type]

        monkeypatch.setitem(globals(), "RelayCore", native_core)
    return str(request.param)


A, B, C = 10, 20, 30  # channel ids
T0 = 1000.0  # s, the fake clock's start


class FakeRoster:
    """Members, speak rights and deafen state; ``roster_version`` grows on every change."""

    def __init__(self) -> None:
        self.members: dict[int, set[int]] = {}
        self.mute_acl: set[tuple[int, int]] = set()  # (sender, channel) members without the right
        self.deafened: set[int] = set()
        self.version = 1
        self.listener_calls = 0

    def join(self, sender_id: int, channel_id: int, *, speak: bool = True) -> None:
        self.members.setdefault(channel_id, set()).add(sender_id)
        if not speak:
            self.mute_acl.add((sender_id, channel_id))
        self.version += 1

    def leave(self, sender_id: int, channel_id: int) -> None:
        self.members.get(channel_id, set()).discard(sender_id)
        self.version += 1

    def deafen(self, sender_id: int, deafened: bool = True) -> None:
        (self.deafened.add if deafened else self.deafened.discard)(sender_id)
        self.version += 1

    # -- RelayRoster --
    def may_speak(self, sender_id: int, channel_id: int) -> bool:
        return (
            sender_id in self.members.get(channel_id, ())
            and (sender_id, channel_id) not in self.mute_acl
        )

    def listeners(self, channel_id: int, exclude: int | None = None) -> Collection[int]:
        self.listener_calls += 1
        return frozenset(
            uid
            for uid in self.members.get(channel_id, ())
            if uid != exclude and uid not in self.deafened
        )

    @property
    def roster_version(self) -> int:
        return self.version


def _base_key(channel_id: int, sender_id: int, gen: int) -> bytes:
    return random.Random(channel_id * 1_000_003 + sender_id * 101 + gen).randbytes(64)


class Client:
    """One session as its client sees it: hop keys, hop-control seq, sender keys, receiver."""

    def __init__(self, sender_id: int, addr: Addr) -> None:
        self.sender_id = sender_id
        self.addr = addr
        self.hop_secret = random.Random(sender_id).randbytes(32)
        k_c2s, k_s2c = derive_hop_keys(self.hop_secret)
        self.c2s = HopMac(k_c2s)
        self.s2c = HopMac(k_s2c)
        self.seq = 0
        self.keys: dict[int, SenderKey] = {}
        self.receiver = VoiceReceiver(k_s2c)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq - 1

    def bind(self) -> bytes:
        return hopctl.encode_bind(self.c2s, self.sender_id, self.next_seq())

    def confirm(self, challenge: bytes) -> bytes:
        return hopctl.encode_bind_confirm(self.c2s, self.sender_id, self.next_seq(), challenge)

    def ping(self, client_time_ms: int) -> bytes:
        return hopctl.encode_ping(self.c2s, self.sender_id, self.next_seq(), client_time_ms)

    def sender_key(self, channel_id: int, gen: int = 1) -> SenderKey:
        key = self.keys.get(channel_id)
        if key is None or key.gen != gen:
            key = self.keys[channel_id] = SenderKey(channel_id, self.sender_id)
            key.new_generation(gen, _base_key(channel_id, self.sender_id, gen))
        return key

    def voice(
        self, channel_id: int, payload: bytes = b"\x00\x00\x00\x01opus", *, gen: int = 1
    ) -> bytes:
        sealed = self.sender_key(channel_id, gen).seal(PTYPE_VOICE, payload)
        return self.c2s.append(sealed)

    def learn(self, speaker: Client, channel_id: int, gen: int = 1) -> None:
        """Accept the speaker's key (what a KeyDist would deliver)."""
        self.receiver.add_key(
            channel_id, speaker.sender_id, gen, 0, _base_key(channel_id, speaker.sender_id, gen), T0
        )

    def open(self, datagram: bytes) -> VoiceFrame | None:
        return self.receiver.receive(datagram, T0)


class World:
    def __init__(self, n: int = 4, limits: RelayLimits | None = None) -> None:
        self.roster = FakeRoster()
        self.rng_calls = 0
        rng = random.Random(7)

        def fake_rng(k: int) -> bytes:
            self.rng_calls += 1
            return rng.randbytes(k)

        self.relay = RelayCore(self.roster, rng=fake_rng, limits=limits or RelayLimits())
        self.clients = {
            sid: Client(sid, (f"192.0.2.{sid}", 40000 + sid)) for sid in range(1, n + 1)
        }
        for c in self.clients.values():
            self.relay.add_session(c.sender_id, c.hop_secret)
        self.now = T0

    def __getitem__(self, sid: int) -> Client:
        return self.clients[sid]

    def send(self, data: bytes, addr: Addr) -> list[tuple[Addr, bytes]]:
        return self.relay.datagram_received(data, addr, self.now)

    def validate(self, c: Client, addr: Addr | None = None) -> None:
        addr = addr or c.addr
        bind = c.bind()
        out = self.send(bind, addr)
        assert len(out) == 1 and out[0][0] == addr
        reply = out[0][1]
        assert len(reply) <= len(bind)
        msg = hopctl.open_hop_control(reply, c.s2c, _window(), ptypes=hopctl.S2C_PTYPES)
        assert msg is not None and msg.ptype == hopctl.PTYPE_CHALLENGE
        out = self.send(c.confirm(msg.body), addr)
        assert len(out) == 1 and out[0][0] == addr
        ok = hopctl.open_hop_control(out[0][1], c.s2c, _window(), ptypes=hopctl.S2C_PTYPES)
        assert ok is not None and ok.ptype == hopctl.PTYPE_BIND_OK
        assert self.relay.address_of(c.sender_id) == addr

    def speak(self, speaker: Client, channel_id: int, **kw: object) -> list[tuple[Addr, bytes]]:
        return self.send(speaker.voice(channel_id, **kw), speaker.addr)  # type: ignore[arg-type]


def _window() -> ReplayWindow:
    return ReplayWindow()


def corrupt(datagram: bytes) -> bytes:
    """Flip one bit of the hop MAC."""
    return datagram[:-1] + bytes([datagram[-1] ^ 0x01])


def world(n: int = 4, limits: RelayLimits | None = None, *, validate: bool = True) -> World:
    w = World(n, limits)
    if validate:
        for c in w.clients.values():
            w.validate(c)
    return w


def only_drop(before: dict[RelayDrop, int], after: dict[RelayDrop, int], reason: RelayDrop) -> None:
    diff = {r: after[r] - before[r] for r in RelayDrop if after[r] != before[r]}
    assert diff == {reason: 1}, diff


def expect_drop(w: World, reason: RelayDrop, call: Callable[[], list[tuple[Addr, bytes]]]) -> None:
    before = w.relay.drops()
    stats = w.relay.stats()
    assert call() == []
    assert w.relay.take_tunnel() == []
    only_drop(before, w.relay.drops(), reason)
    assert w.relay.stats()["packets_out"] == stats["packets_out"]


def recipients(out: list[tuple[Addr, bytes]]) -> dict[Addr, bytes]:
    assert len({addr for addr, _ in out}) == len(out)
    return dict(out)


# =============================================================================================
# Address validation
# =============================================================================================


def test_validation_handshake() -> None:
    w = world(validate=False)
    c = w[1]
    assert w.relay.address_of(1) is None
    bind = c.bind()
    out = w.send(bind, c.addr)
    assert [addr for addr, _ in out] == [c.addr]
    challenge_dgram = out[0][1]
    assert len(challenge_dgram) == len(bind) == 46  # never larger than what asked for it
    assert c.s2c.verify(challenge_dgram) and not c.c2s.verify(challenge_dgram)
    challenge = hopctl.parse_hop_control(challenge_dgram)
    assert challenge is not None
    assert challenge.ptype == hopctl.PTYPE_CHALLENGE and challenge.sender_id == 1
    assert w.rng_calls == 1
    assert w.relay.address_of(1) is None  # not until confirmed
    out = w.send(c.confirm(challenge.body), c.addr)
    assert [addr for addr, _ in out] == [c.addr]
    ok = hopctl.parse_hop_control(out[0][1])
    assert ok is not None and ok.ptype == hopctl.PTYPE_BIND_OK and ok.seq == challenge.seq + 1
    assert c.s2c.verify(out[0][1])
    assert w.relay.address_of(1) == c.addr
    assert w.relay.stats()["validated"] == 1
    assert w.relay.stats()["hop_replies"] == 2


def test_nothing_is_sent_to_an_unvalidated_address() -> None:
    # PROTOCOL §6: a valid MAC from an unvalidated address -> the relay sends nothing.
    w = world(validate=False)
    w.roster.join(1, A)
    w.roster.join(2, A)
    expect_drop(w, RelayDrop.UNVALIDATED_ADDRESS, lambda: w.speak(w[1], A))
    expect_drop(w, RelayDrop.UNVALIDATED_ADDRESS, lambda: w.send(w[1].ping(5), w[1].addr))
    # The speaker validated, the listener didn't: still nothing goes to the listener.
    w.validate(w[1])
    assert w.speak(w[1], A) == []
    assert w.relay.stats()["unreachable"] == 1
    assert w.relay.stats()["forwarded"] == 1
    # Validated at one address, sending from another: dropped.
    expect_drop(w, RelayDrop.UNVALIDATED_ADDRESS, lambda: w.send(w[1].voice(A), ("203.0.113.9", 1)))


@pytest.mark.parametrize("case", ["wrong", "expired", "other-address", "none-pending", "reused"])
def test_bad_challenges_are_refused(case: str) -> None:
    w = world(validate=False)
    c = w[1]
    out = w.send(c.bind(), c.addr)
    challenge = out[0][1][20:36]
    if case == "wrong":
        confirm, addr = c.confirm(bytes(a ^ 1 for a in challenge)), c.addr
    elif case == "expired":
        w.now += 5.01
        confirm, addr = c.confirm(challenge), c.addr
    elif case == "other-address":
        confirm, addr = c.confirm(challenge), ("198.51.100.1", 5000)
    elif case == "none-pending":
        w2 = world(validate=False)
        confirm, addr, w = w2[1].confirm(challenge), w2[1].addr, w2
    else:
        assert len(w.send(c.confirm(challenge), c.addr)) == 1
        w.validate(c, ("198.51.100.1", 5000))  # moved on since
        confirm, addr = c.confirm(challenge), c.addr
    before_addr = w.relay.address_of(1)
    expect_drop(w, RelayDrop.BAD_CHALLENGE, lambda: w.send(confirm, addr))
    assert w.relay.address_of(1) == before_addr


def test_challenge_just_inside_its_lifetime_is_accepted() -> None:
    w = world(validate=False)
    challenge = w.send(w[1].bind(), w[1].addr)[0][1][20:36]
    w.now += 5.0
    assert len(w.send(w[1].confirm(challenge), w[1].addr)) == 1
    assert w.relay.address_of(1) == w[1].addr


def test_only_the_latest_challenge_counts() -> None:
    w = world(validate=False)
    first = w.send(w[1].bind(), w[1].addr)[0][1][20:36]
    second = w.send(w[1].bind(), w[1].addr)[0][1][20:36]
    assert first != second
    expect_drop(w, RelayDrop.BAD_CHALLENGE, lambda: w.send(w[1].confirm(first), w[1].addr))
    assert len(w.send(w[1].confirm(second), w[1].addr)) == 1


def test_nat_rebinding() -> None:
    w = world()
    w.roster.join(1, A)
    w.roster.join(2, A)
    w[2].learn(w[1], A)
    w[1].learn(w[2], A)
    old, new = w[1].addr, ("192.0.2.201", 61000)
    # A BIND from the new address: a challenge goes there, the old address stays valid.
    out = w.send(w[1].bind(), new)
    assert [addr for addr, _ in out] == [new]
    assert w.relay.address_of(1) == old
    expect_drop(w, RelayDrop.UNVALIDATED_ADDRESS, lambda: w.send(w[1].voice(A), new))
    assert [a for a, _ in w.speak(w[1], A)] == [w[2].addr]  # still accepted from the old one
    assert [a for a, _ in w.speak(w[2], A)] == [old]  # and voice still goes to the old one
    # Confirmed from the new address: it replaces the old one (and the fan-out cache follows).
    out = w.send(w[1].confirm(out[0][1][20:36]), new)
    assert len(out) == 1 and out[0][0] == new
    assert w.relay.address_of(1) == new
    w[1].addr = new
    expect_drop(w, RelayDrop.UNVALIDATED_ADDRESS, lambda: w.send(w[1].voice(A), old))
    out = w.speak(w[2], A)
    assert [a for a, _ in out] == [new]
    assert w[1].open(out[0][1]) is not None
    assert [a for a, _ in w.speak(w[1], A)] == [w[2].addr]


def test_binds_are_rate_limited() -> None:
    w = world(validate=False)
    c = w[1]
    assert len(w.send(c.bind(), c.addr)) == 1
    assert len(w.send(c.bind(), c.addr)) == 1  # burst 2
    expect_drop(w, RelayDrop.BIND_RATE_LIMIT, lambda: w.send(c.bind(), ("203.0.113.7", 9)))
    assert w.rng_calls == 2
    w.now += 0.5  # 2 BINDs/s: one more token
    assert len(w.send(c.bind(), c.addr)) == 1
    expect_drop(w, RelayDrop.BIND_RATE_LIMIT, lambda: w.send(c.bind(), c.addr))


def test_hop_control_replays_and_malformed() -> None:
    w = world(validate=False)
    c = w[1]
    bind = c.bind()
    assert len(w.send(bind, c.addr)) == 1
    # A replayed BIND (from anywhere) gets no second challenge.
    expect_drop(w, RelayDrop.REPLAY, lambda: w.send(bind, ("203.0.113.5", 7)))
    challenge = hopctl.parse_hop_control(w.send(c.bind(), c.addr)[0][1])
    assert challenge is not None
    confirm = c.confirm(challenge.body)
    assert len(w.send(confirm, c.addr)) == 1
    expect_drop(w, RelayDrop.REPLAY, lambda: w.send(confirm, c.addr))
    # MAC-valid but malformed: non-zero BIND body; a BIND longer than 46 bytes.
    bad_body = c.c2s.append(
        HEADER_STRUCT.pack(1, hopctl.PTYPE_BIND, 0, 0, 1, 0, c.next_seq()) + b"\x01" * 16
    )
    expect_drop(w, RelayDrop.BAD_HOP_CONTROL, lambda: w.send(bad_body, c.addr))
    too_long = c.c2s.append(
        HEADER_STRUCT.pack(1, hopctl.PTYPE_BIND, 0, 0, 1, 0, c.next_seq()) + bytes(60)
    )
    expect_drop(w, RelayDrop.BAD_HOP_CONTROL, lambda: w.send(too_long, c.addr))
    # Server-to-client ptypes and unassigned hop ptypes are not accepted from clients.
    s2c_ptype = hopctl.encode_challenge(c.c2s, 1, c.next_seq(), bytes(16))
    expect_drop(w, RelayDrop.UNKNOWN_PTYPE, lambda: w.send(s2c_ptype, c.addr))
    unassigned = c.c2s.append(HEADER_STRUCT.pack(1, 0x1A, 0, 0, 1, 0, c.next_seq()) + bytes(16))
    expect_drop(w, RelayDrop.UNKNOWN_PTYPE, lambda: w.send(unassigned, c.addr))


def test_ping_pong_reports_received_counts() -> None:
    w = world()
    c = w[1]
    w.roster.join(1, A)
    received_after_validation = w.relay.received(1)
    assert received_after_validation == 2  # BIND + BIND_CONFIRM
    for _ in range(3):
        w.speak(c, A)
    w.send(corrupt(c.voice(A)), c.addr)  # bad MAC: not counted
    ping = c.ping(1_700_000_000_123)
    out = w.send(ping, c.addr)
    assert [addr for addr, _ in out] == [c.addr]
    pong = out[0][1]
    assert len(pong) == len(ping) == 46
    msg = hopctl.open_hop_control(pong, c.s2c, _window(), ptypes=hopctl.S2C_PTYPES)
    assert msg is not None and msg.ptype == hopctl.PTYPE_PONG
    assert hopctl.decode_pong(msg.body) == (1_700_000_000_123, 2 + 3 + 1)  # the PING counts
    assert w.relay.take_received() == [(1, 6)] + [(sid, 2) for sid in (2, 3, 4)]
    assert w.relay.take_received() == []
    w.speak(c, A)
    assert w.relay.take_received() == [(1, 1)]
    # Not from an unvalidated address.
    expect_drop(w, RelayDrop.UNVALIDATED_ADDRESS, lambda: w.send(c.ping(1), ("203.0.113.1", 2)))


def test_pings_share_the_packet_rate_limit() -> None:
    w = world(limits=RelayLimits(burst=3))
    c = w[1]
    for _ in range(3):
        assert len(w.send(c.ping(1), c.addr)) == 1
    expect_drop(w, RelayDrop.RATE_LIMIT, lambda: w.send(c.ping(1), c.addr))


# =============================================================================================
# Per-datagram checks on voice
# =============================================================================================


def setup_a(n: int = 4, limits: RelayLimits | None = None) -> World:
    w = world(n, limits)
    for sid in w.clients:
        w.roster.join(sid, A)
    for listener in w.clients.values():
        for speaker in w.clients.values():
            if listener is not speaker:
                listener.learn(speaker, A)
    return w


def test_forward_reaches_every_other_member_and_opens() -> None:
    w = setup_a()
    data = w[1].voice(A, b"\x00\x00\x00\x07hello")
    out = recipients(w.send(data, w[1].addr))
    assert set(out) == {w[2].addr, w[3].addr, w[4].addr}  # no echo to the sender
    for sid in (2, 3, 4):
        copy = out[w[sid].addr]
        # The relay never changes bytes 0..35+n; only the hop MAC is the listener's own.
        assert copy[:-HOP_MAC_LEN] == data[:-HOP_MAC_LEN]
        assert len(copy) == len(data)
        assert w[sid].s2c.verify(copy) and copy[-HOP_MAC_LEN:] != data[-HOP_MAC_LEN:]
        frame = w[sid].open(copy)
        assert frame is not None
        assert (frame.channel_id, frame.sender_id, frame.payload) == (
            A,
            1,
            b"\x00\x00\x00\x07hello",
        )
    stats = w.relay.stats()
    assert stats["forwarded"] == 1 and stats["copies_udp"] == 3
    assert stats["packets_out"] - 8 == 3  # 8 hop-control replies from the 4 validations
    assert stats["bytes_out"] - 8 * 46 == 3 * len(data)


def test_bad_hop_mac_and_s2c_mac_are_refused() -> None:
    w = setup_a()
    data = w[1].voice(A)
    for i in (0, 4, 9, 20, len(data) - 11, len(data) - 1):  # header, body, tag, MAC
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        reason = RelayDrop.BAD_HOP_MAC
        if i == 0:  # flipping ver is caught before the MAC
            reason = RelayDrop.UNKNOWN_VERSION
        elif i == 9:  # flips the sender id: another (or no) session
            reason = RelayDrop.UNKNOWN_SESSION
        expect_drop(w, reason, functools.partial(w.send, bytes(flipped), w[1].addr))
    reflected = w[1].s2c.append(data[:-HOP_MAC_LEN])  # s2c MAC where c2s is expected
    expect_drop(w, RelayDrop.BAD_HOP_MAC, lambda: w.send(reflected, w[1].addr))
    # A listener bouncing what the relay sent it back at the relay.
    copy = recipients(w.send(data, w[1].addr))[w[2].addr]
    expect_drop(w, RelayDrop.BAD_HOP_MAC, lambda: w.send(copy, w[2].addr))


def test_unknown_and_spoofed_sender_ids() -> None:
    w = setup_a()
    ghost = Client(99, ("192.0.2.99", 1))
    expect_drop(w, RelayDrop.UNKNOWN_SESSION, lambda: w.send(ghost.voice(A), ghost.addr))
    # Member 2 forges voice as member 1 (it can: sender keys are symmetric at the E2E layer)
    # and MACs it with its own hop key: the relay checks the MAC under *1's* K_c2s.
    forged_body = w[2].sender_key(A).seal(PTYPE_VOICE, b"x" * 20)
    forged_body = forged_body[:8] + (1).to_bytes(4, "big") + forged_body[12:]
    forged = w[2].c2s.append(forged_body)
    expect_drop(w, RelayDrop.BAD_HOP_MAC, lambda: w.send(forged, w[2].addr))
    expect_drop(w, RelayDrop.BAD_HOP_MAC, lambda: w.send(forged, w[1].addr))


def test_relabelled_channel_is_refused() -> None:
    # A relabelled header with the MAC recomputed under the wrong key fails the MAC; with the
    # right key (only the client has it) the AEAD at the listener would refuse it.
    w = setup_a()
    w.roster.join(1, B)
    data = w[1].voice(A)
    relabelled = data[:4] + B.to_bytes(4, "big") + data[8:]
    expect_drop(w, RelayDrop.BAD_HOP_MAC, lambda: w.send(relabelled, w[1].addr))


def test_non_speaker_and_non_member_are_dropped() -> None:
    w = setup_a()
    w.roster.join(1, B, speak=False)
    w.roster.join(2, B)
    # Before any fan-out list of B exists, and after (the may_speak answers are memoised).
    expect_drop(w, RelayDrop.NOT_SPEAKER, lambda: w.speak(w[1], B))  # member without the right
    assert set(recipients(w.speak(w[2], B))) == {w[1].addr}  # 1 may not speak, but listens
    for _ in range(2):
        expect_drop(w, RelayDrop.NOT_SPEAKER, lambda: w.speak(w[1], B))
        expect_drop(w, RelayDrop.NOT_SPEAKER, lambda: w.speak(w[3], B))  # not a member
    expect_drop(w, RelayDrop.NOT_SPEAKER, lambda: w.speak(w[3], 0xDEAD))  # no such channel
    # The ACL changes: the memo goes with the roster version.
    w.roster.mute_acl.discard((1, B))
    w.roster.version += 1
    assert set(recipients(w.speak(w[1], B))) == {w[2].addr}


def test_lengths_and_versions() -> None:
    w = setup_a()
    c = w[1]
    for n in (0, 1, 45, 1201, 5000):
        expect_drop(w, RelayDrop.BAD_LENGTH, functools.partial(w.send, bytes(n), c.addr))
    big = c.voice(A, bytes(MAX_PAYLOAD_LEN))
    assert len(big) == 1200
    assert len(w.send(big, c.addr)) == 3
    too_big = big[:-HOP_MAC_LEN] + b"\x00" + c.c2s.mac(big[:-HOP_MAC_LEN] + b"\x00")
    expect_drop(w, RelayDrop.BAD_LENGTH, lambda: w.send(too_big, c.addr))
    v2 = c.c2s.append(b"\x02" + c.voice(A)[1:-HOP_MAC_LEN])
    expect_drop(w, RelayDrop.UNKNOWN_VERSION, lambda: w.send(v2, c.addr))
    p3 = c.c2s.append(b"\x01\x03" + c.voice(A)[2:-HOP_MAC_LEN])
    expect_drop(w, RelayDrop.UNKNOWN_PTYPE, lambda: w.send(p3, c.addr))
    last = c.c2s.append(c.sender_key(A).seal(PTYPE_VOICE_LAST, b"bye!"))
    out = recipients(w.send(last, c.addr))
    frame = w[2].open(out[w[2].addr])
    assert frame is not None and frame.last


def test_oversize_against_a_lower_configured_limit() -> None:
    w = setup_a(limits=RelayLimits(max_datagram=200))
    assert len(w.speak(w[1], A, payload=bytes(200 - 46))) == 3
    expect_drop(w, RelayDrop.OVERSIZE, lambda: w.speak(w[1], A, payload=bytes(201 - 46)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: RelayLimits(packets_per_s=0),
        lambda: RelayLimits(burst=0),
        lambda: RelayLimits(max_datagram=45),
        lambda: RelayLimits(max_datagram=1201),
        lambda: RelayLimits(challenge_lifetime_s=0),
        lambda: RelayLimits(binds_per_s=0),
        lambda: RelayLimits(bind_burst=0),
    ],
)
def test_limits_are_validated(make: Callable[[], RelayLimits]) -> None:
    with pytest.raises(LocalProtocolError):
        make()


# =============================================================================================
# Replay
# =============================================================================================


def test_replay_is_never_amplified() -> None:
    w = setup_a()
    data = w[1].voice(A)
    assert len(w.send(data, w[1].addr)) == 3
    expect_drop(w, RelayDrop.REPLAY, lambda: w.send(data, w[1].addr))
    # Also not through the tunnel, and not after the window moved on.
    expect_drop(w, RelayDrop.REPLAY, lambda: w.relay.tunnel_received(1, data, w.now))


def test_replay_below_the_window() -> None:
    w = setup_a(limits=RelayLimits(packets_per_s=1e9, burst=10**6))
    first = w[1].voice(A)
    kept = [w[1].voice(A) for _ in range(200)]
    assert len(w.send(kept[0], w[1].addr)) == 3  # ctr 1
    for d in kept[1:]:
        assert len(w.send(d, w[1].addr)) == 3  # up to ctr 200
    # ctr 0 was never forwarded, but is now 200 below the top: too old to tell -> refused.
    expect_drop(w, RelayDrop.REPLAY, lambda: w.send(first, w[1].addr))
    expect_drop(w, RelayDrop.REPLAY, lambda: w.send(kept[150], w[1].addr))
    # Reordered, within the window and never seen: accepted once.
    w2 = setup_a()
    a0, a1 = w2[1].voice(A), w2[1].voice(A)
    assert len(w2.send(a1, w2[1].addr)) == 3
    assert len(w2.send(a0, w2[1].addr)) == 3
    expect_drop(w2, RelayDrop.REPLAY, lambda: w2.send(a0, w2[1].addr))


def test_windows_are_per_channel_and_generation() -> None:
    w = setup_a()
    w.roster.join(1, B)
    w.roster.join(2, B)
    w[2].learn(w[1], B)
    # Same ctr 0 in A and B: independent windows.
    assert len(w.speak(w[1], A)) == 3
    assert len(w.speak(w[1], B)) == 1
    # A new generation restarts ctr at 0 and gets a fresh window.
    g1 = [w[1].voice(A, gen=1) for _ in range(2)]  # ctr 1, 2 of gen 1
    g2 = w[1].voice(A, gen=2)  # ctr 0 of gen 2
    w[2].learn(w[1], A, gen=2)
    out = recipients(w.send(g2, w[1].addr))
    assert len(out) == 3
    frame = w[2].open(out[w[2].addr])
    assert frame is not None and (frame.gen, frame.ctr) == (2, 0)
    # The previous generation still has its window (two kept): late packets pass, once.
    assert len(w.send(g1[0], w[1].addr)) == 3
    expect_drop(w, RelayDrop.REPLAY, lambda: w.send(g1[0], w[1].addr))
    # A third generation retires the first one's window: gen 1 is now refused outright.
    g3 = w[1].voice(A, gen=3)
    assert len(w.send(g3, w[1].addr)) == 3
    expect_drop(w, RelayDrop.OLD_GENERATION, lambda: w.send(g1[1], w[1].addr))
    expect_drop(w, RelayDrop.REPLAY, lambda: w.send(g2, w[1].addr))  # gen 2 kept, still a replay


# =============================================================================================
# Rate limit
# =============================================================================================


def test_rate_limit_per_session() -> None:
    w = setup_a()
    sent = [w[1].voice(A) for _ in range(80)]
    before = w.relay.drops()[RelayDrop.RATE_LIMIT]
    forwarded = sum(1 for d in sent if w.send(d, w[1].addr))
    assert forwarded == 50  # the burst, all at one instant
    assert w.relay.drops()[RelayDrop.RATE_LIMIT] - before == 30
    # Another session has its own bucket.
    assert len(w.speak(w[2], A)) == 3
    # Over one second at 200 packets/s, about 100 (+ refill granularity) get through.
    ok = 0
    for i in range(200):
        w.now = T0 + (i + 1) / 200
        ok += bool(w.speak(w[1], A))
    assert 99 <= ok <= 101
    assert w.relay.drops()[RelayDrop.RATE_LIMIT] - before == 30 + 200 - ok


def test_replays_and_forgeries_cost_the_victim_no_tokens() -> None:
    w = setup_a(limits=RelayLimits(burst=2))
    data = w[1].voice(A)
    assert w.send(data, w[1].addr)
    for _ in range(10):
        w.send(data, w[1].addr)  # replays
        w.send(corrupt(data), w[1].addr)  # forged MAC
    assert w.speak(w[1], A)  # the second token is still there


# =============================================================================================
# Fan-out
# =============================================================================================


def test_fan_out_by_channel_membership_and_deafen() -> None:
    w = world(5)
    for sid in (1, 2, 3):
        w.roster.join(sid, A)
    for sid in (3, 4):
        w.roster.join(sid, B)
    w.roster.join(5, C)
    for s, ch in ((1, A), (4, B)):
        for listener in (1, 2, 3, 4):
            w[listener].learn(w[s], ch)
    out_a = recipients(w.speak(w[1], A))
    assert set(out_a) == {w[2].addr, w[3].addr}  # members of A only, not the sender
    out_b = recipients(w.speak(w[4], B))
    assert set(out_b) == {w[3].addr}
    # The member of A and B got both.
    assert w[3].open(out_a[w[3].addr]) is not None
    assert w[3].open(out_b[w[3].addr]) is not None
    # Deafened: excluded by roster.listeners; the relay notices through roster_version.
    w.roster.deafen(2)
    assert set(recipients(w.speak(w[1], A))) == {w[3].addr}
    w.roster.deafen(2, False)
    assert set(recipients(w.speak(w[1], A))) == {w[2].addr, w[3].addr}
    assert w.speak(w[5], C) == []  # alone in C: accepted, nobody to send to
    assert w.relay.stats()["forwarded"] == 5


def test_fan_out_cache_follows_roster_version_and_local_changes() -> None:
    w = setup_a()
    w.speak(w[1], A)
    calls = w.roster.listener_calls
    builds = w.relay.stats()["fanout_builds"]
    for _ in range(5):
        w.speak(w[1], A)
        w.speak(w[2], A)
    assert w.roster.listener_calls == calls  # cached: no roster query per packet
    assert w.relay.stats()["fanout_builds"] == builds
    # The roster changes under the relay: a new member hears the next packet.
    c5 = Client(5, ("192.0.2.5", 40005))
    w.clients[5] = c5
    w.relay.add_session(5, c5.hop_secret)
    w.validate(c5)
    w.roster.join(5, A)
    assert c5.addr in recipients(w.speak(w[1], A))
    # Only the roster_version says so: membership edited without a version bump is not seen
    # until the next bump (the contract ServerCore keeps).
    w.roster.members[A].discard(5)
    assert c5.addr in recipients(w.speak(w[1], A))
    w.roster.version += 1
    assert c5.addr not in recipients(w.speak(w[1], A))
    # Speak rights are cached the same way.
    w.roster.mute_acl.add((2, A))
    w.roster.version += 1
    expect_drop(w, RelayDrop.NOT_SPEAKER, lambda: w.speak(w[2], A))
    # Local changes: a removed session gets nothing and sends nothing.
    w.relay.remove_session(3)
    assert w[3].addr not in recipients(w.speak(w[1], A))
    expect_drop(w, RelayDrop.UNKNOWN_SESSION, lambda: w.speak(w[3], A))
    assert w.relay.stats()["unreachable"] >= 1  # 3 is still a roster member


def test_tunnel_mode_listener_gets_voice_through_take_tunnel() -> None:
    w = setup_a()
    w.relay.set_tunnel(3, True)
    data = w[1].voice(A)
    out = recipients(w.send(data, w[1].addr))
    assert set(out) == {w[2].addr, w[4].addr}
    tunnelled = w.relay.take_tunnel()
    assert [sid for sid, _ in tunnelled] == [3]
    assert tunnelled[0][1][:-HOP_MAC_LEN] == data[:-HOP_MAC_LEN]
    assert w[3].open(tunnelled[0][1]) is not None
    assert w.relay.take_tunnel() == []  # drained
    assert w.relay.stats()["copies_tunnel"] == 1
    # A tunnel-mode listener needs no validated address.
    w2 = world(validate=False)
    w2.roster.join(1, A)
    w2.roster.join(2, A)
    w2.validate(w2[1])
    w2.relay.set_tunnel(2, True)
    w2[2].learn(w2[1], A)
    assert w2.speak(w2[1], A) == []
    [(sid, copy)] = w2.relay.take_tunnel()
    assert sid == 2 and w2[2].open(copy) is not None
    # Back to UDP.
    w.relay.set_tunnel(3, False)
    assert w[3].addr in recipients(w.speak(w[1], A))
    assert w.relay.take_tunnel() == []


def test_tunnel_received_path() -> None:
    w = world(3, validate=False)
    for sid in (1, 2, 3):
        w.roster.join(sid, A)
    w.validate(w[2])
    w.relay.set_tunnel(3, True)
    w[2].learn(w[1], A)
    w[3].learn(w[1], A)
    # Speaker 1 has no UDP at all: its voice arrives over TLS; the source address isn't checked.
    data = w[1].voice(A)
    out = w.relay.tunnel_received(1, data, w.now)
    assert [addr for addr, _ in out] == [w[2].addr]
    assert w[2].open(out[0][1]) is not None
    [(sid, copy)] = w.relay.take_tunnel()
    assert sid == 3 and w[3].open(copy) is not None
    assert w.relay.received(1) == 0  # the UDP counter is for UDP only
    # The same checks otherwise.
    expect_drop(w, RelayDrop.REPLAY, lambda: w.relay.tunnel_received(1, data, w.now))
    other = w[2].voice(A)
    expect_drop(w, RelayDrop.SENDER_MISMATCH, lambda: w.relay.tunnel_received(1, other, w.now))
    bad = corrupt(w[1].voice(A))
    expect_drop(w, RelayDrop.BAD_HOP_MAC, lambda: w.relay.tunnel_received(1, bad, w.now))
    expect_drop(w, RelayDrop.BAD_LENGTH, lambda: w.relay.tunnel_received(1, b"x", w.now))
    v2 = b"\x02" + w[1].voice(A)[1:]
    expect_drop(w, RelayDrop.UNKNOWN_VERSION, lambda: w.relay.tunnel_received(1, v2, w.now))
    bind = w[1].bind()
    expect_drop(w, RelayDrop.UNKNOWN_PTYPE, lambda: w.relay.tunnel_received(1, bind, w.now))
    ghost = Client(9, ("192.0.2.9", 9)).voice(A)
    expect_drop(w, RelayDrop.UNKNOWN_SESSION, lambda: w.relay.tunnel_received(9, ghost, w.now))
    w.roster.mute_acl.add((1, A))
    w.roster.version += 1
    expect_drop(w, RelayDrop.NOT_SPEAKER, lambda: w.relay.tunnel_received(1, w[1].voice(A), w.now))


# =============================================================================================
# Sessions, counters, robustness
# =============================================================================================


def test_session_management() -> None:
    w = world(2, validate=False)
    with pytest.raises(LocalProtocolError):
        w.relay.add_session(1, w[1].hop_secret)  # taken
    with pytest.raises(LocalProtocolError):
        w.relay.add_session(7, b"short")
    with pytest.raises(LocalProtocolError):
        w.relay.add_session(0, bytes(32))
    w.relay.remove_session(1)
    w.relay.remove_session(1)  # idempotent
    w.relay.set_tunnel(1, True)  # unknown: ignored
    assert not w.relay.has_session(1) and w.relay.has_session(2)
    assert w.relay.address_of(1) is None and w.relay.received(1) == 0
    expect_drop(w, RelayDrop.UNKNOWN_SESSION, lambda: w.send(w[1].bind(), w[1].addr))
    # A new session (new sender id, new secret) starts from scratch.
    w.relay.add_session(1, bytes(32))
    assert w.relay.address_of(1) is None


def test_seq_exhaustion_and_a_broken_rng() -> None:
    w = world(2, validate=False)
    w.relay._sessions[1].out_seq = 2**32 - 1  # white box: 2^32 replies would take years
    assert len(w.send(w[1].bind(), w[1].addr)) == 1  # the last seq
    w.now += 1
    expect_drop(w, RelayDrop.SEQ_EXHAUSTED, lambda: w.send(w[1].bind(), w[1].addr))
    # An rng that returns the wrong length is our bug, not the peer's: it raises.
    relay = RelayCore(FakeRoster(), rng=lambda n: b"short")
    relay.add_session(2, w[2].hop_secret)
    with pytest.raises(LocalProtocolError):
        relay.datagram_received(w[2].bind(), w[2].addr, T0)


def test_counters_and_snapshots() -> None:
    w = setup_a()
    w.send(b"junk", ("203.0.113.1", 1))
    w.speak(w[1], A)
    stats = w.relay.stats()
    assert stats["packets_in"] == 8 + 2
    assert stats["bytes_in"] == 8 * 46 + 4 + len(w[1].voice(A))
    assert stats["dropped"] == 1 and w.relay.drops()[RelayDrop.BAD_LENGTH] == 1
    assert stats["sessions"] == 4 and stats["validated"] == 4
    assert (w.relay.packets_in, w.relay.packets_out) == (stats["packets_in"], stats["packets_out"])
    assert (w.relay.bytes_in, w.relay.bytes_out) == (stats["bytes_in"], stats["bytes_out"])
    assert w.relay.forwarded == 1
    assert set(w.relay.drops()) == set(RelayDrop)
    snap = w.relay.drops()
    snap[RelayDrop.REPLAY] = 99  # a copy
    assert w.relay.drops()[RelayDrop.REPLAY] == 0


def test_server_core_is_a_relay_roster() -> None:
    from tests.unit.net._harness import Net

    net = Net()
    alice, bob, carol = net.connect("alice"), net.connect("bob"), net.connect("carol")
    roster: RelayRoster = net.server
    relay = RelayCore(roster)
    clients = {}
    for i, peer in enumerate((alice, bob, carol)):
        info = net.server.session_by_sender_id(peer.sender_id)
        assert info is not None
        relay.add_session(peer.sender_id, info.hop_secret)
        c = Client(peer.sender_id, (f"192.0.2.{i + 1}", 5000))
        c.hop_secret = info.hop_secret
        c.c2s, c.s2c = (HopMac(k) for k in derive_hop_keys(info.hop_secret))
        clients[peer.sender_id] = c
        out = relay.datagram_received(c.bind(), c.addr, net.now)
        out = relay.datagram_received(c.confirm(out[0][1][20:36]), c.addr, net.now)
        assert relay.address_of(c.sender_id) == c.addr
    lobby = 1
    speaker = clients[alice.sender_id]
    out = relay.datagram_received(speaker.voice(lobby), speaker.addr, net.now)
    assert {addr for addr, _ in out} == {clients[bob.sender_id].addr, clients[carol.sender_id].addr}
    carol.client.set_self_state(muted=False, deafened=True)
    net.pump()
    out = relay.datagram_received(speaker.voice(lobby), speaker.addr, net.now)
    assert {addr for addr, _ in out} == {clients[bob.sender_id].addr}
    for sid, count in relay.take_received():
        net.server.note_udp_received(sid, count)
    info = net.server.session_by_sender_id(alice.sender_id)
    assert info is not None and info.udp_received == 4  # BIND, CONFIRM, 2 voice


addresses = st.tuples(
    st.sampled_from(["192.0.2.1", "192.0.2.2", "203.0.113.1", "::1"]), st.integers(0, 65535)
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=1300), addr=addresses, tunnel=st.booleans())
def test_arbitrary_bytes_never_raise_and_never_produce_output(
    data: bytes, addr: Addr, tunnel: bool
) -> None:
    w = _shared_world()
    before = w.relay.stats()["packets_out"]
    if tunnel:
        out = w.relay.tunnel_received(1, data, w.now)
    else:
        out = w.relay.datagram_received(data, addr, w.now)
    assert out == []
    assert w.relay.take_tunnel() == []
    assert w.relay.stats()["packets_out"] == before


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    ptype=st.sampled_from([0x01, 0x02, 0x10, 0x12, 0x14, 0x11, 0x03, 0x1F]),
    sender=st.sampled_from([1, 2, 3, 4, 5]),
    rest=st.binary(min_size=26, max_size=1180),
    header=st.binary(min_size=2, max_size=2),
    channel=st.sampled_from([0, A, B]),
    addr=addresses,
)
def test_well_formed_headers_with_forged_macs_never_produce_output(
    ptype: int, sender: int, rest: bytes, header: bytes, channel: int, addr: Addr
) -> None:
    # Headers that pass the cheap checks and name real sessions and channels: the MAC stops them.
    w = _shared_world()
    data = bytes([1, ptype]) + header + channel.to_bytes(4, "big") + sender.to_bytes(4, "big")
    data += rest
    assert w.relay.datagram_received(data, addr, w.now) == []
    assert w.relay.tunnel_received(sender, data, w.now) == []
    assert w.relay.take_tunnel() == []


@functools.cache
def _shared_world() -> World:
    """One world for the property tests: nothing they send may change its state but counters."""
    w = setup_a()
    w.relay.set_tunnel(4, True)
    return w


# =============================================================================================
# Batch sending: the sink path (what the adapter's sendmmsg batch gets)
# =============================================================================================


class FakeSink:
    """Records what the relay hands a batch sender and makes the copies as the real one does
    (``data[:body_len] ‖ digest[:10]``), keyed by the packed address it was given."""

    def __init__(self) -> None:
        self.plans: list[WirePlan] = []
        self.copies: list[tuple[bytes, bytes]] = []  # (packed address, datagram)

    def __call__(self, data: bytes, body_len: int, plan: WirePlan) -> int:
        self.plans.append(plan)
        body = data[:body_len]
        names = [plan.names[i : i + PACKED_LEN] for i in range(0, len(plan.names), PACKED_LEN)]
        assert len(names) == len(plan.fresh)
        for packed, fresh in zip(names, plan.fresh, strict=True):
            h = fresh()
            h.update(body)
            self.copies.append((packed, body + h.finalize()[:HOP_MAC_LEN]))
        return len(names)


PACKED_LEN = 24  # a packed address of the fake socket: one length, as sockaddrs of one family


def fake_pack(addr: Addr) -> bytes:
    if not addr[0].startswith("192.0.2."):
        raise ValueError("not an address of this fake socket's family")
    return f"{addr[0]}|{addr[1]}".encode().ljust(PACKED_LEN, b"_")


def test_the_sink_path_sends_the_same_copies_and_counts_the_same() -> None:
    plain, batched = setup_a(), setup_a()
    batched.relay = RelayCore(batched.roster, pack_address=fake_pack)
    for c in batched.clients.values():
        batched.relay.add_session(c.sender_id, c.hop_secret)
        batched.validate(c)
    batched.relay.set_tunnel(3, True)
    plain.relay.set_tunnel(3, True)
    sink = FakeSink()
    for speaker in (1, 2, 1):
        data = plain[speaker].voice(A)
        assert data == batched[speaker].voice(A)  # the same client state on both sides
        want = plain.relay.datagram_received(data, plain[speaker].addr, T0)
        assert batched.relay.datagram_received(data, batched[speaker].addr, T0, sink) == []
        got = sink.copies[-len(want) :]
        assert [(p, d) for p, d in got] == [(fake_pack(a), d) for a, d in want]
        assert batched.relay.take_tunnel() == plain.relay.take_tunnel()  # tunnel: unchanged
    # One plan per speaker (2 and 4 for speaker 1; 3 listens over its tunnel), built once.
    assert [len(p.fresh) for p in sink.plans] == [2, 2, 2]
    assert sink.plans[0] is sink.plans[2] and sink.plans[1] is not sink.plans[0]
    assert batched.relay.stats() == plain.relay.stats()
    # Hop control still comes back as replies with a sink.
    pong = batched.relay.datagram_received(batched[1].ping(5), batched[1].addr, T0, sink)
    assert len(pong) == 1 and pong[0][0] == batched[1].addr


def fake_key_state(k_s2c: bytes) -> bytes:
    """A FAKE native keying: recognisable bytes per key (the real one is in mmsg)."""
    return b"state:" + k_s2c[:4]


def test_a_native_sink_gets_each_listeners_key_state_and_names_in_one_bytes() -> None:
    """With ``key_state``, each session is keyed once and every plan carries the listeners'
    states back to back, then their names: what the native fan-out reads in one call."""
    w = setup_a()
    w.relay = RelayCore(w.roster, pack_address=fake_pack, key_state=fake_key_state)
    for c in w.clients.values():
        w.relay.add_session(c.sender_id, c.hop_secret)
        w.validate(c)
    sink = FakeSink()
    assert w.relay.datagram_received(w[1].voice(A), w[1].addr, T0, sink) == []
    [plan] = sink.plans
    states = [fake_key_state(derive_hop_keys(w[i].hop_secret)[1]) for i in (2, 3, 4)]
    assert plan.native == b"".join(states) + plan.names
    assert plan.names == b"".join(fake_pack(w[i].addr) for i in (2, 3, 4))
    assert "state:" not in repr(plan) and "keys hidden" in repr(plan)


def test_an_address_the_socket_cannot_send_to_is_not_validated() -> None:
    w = World(2)
    w.relay = RelayCore(w.roster, pack_address=fake_pack)
    c = w[1]
    w.relay.add_session(c.sender_id, c.hop_secret)
    elsewhere = ("198.51.100.1", 4000)
    [(_, challenge)] = w.send(c.bind(), elsewhere)
    msg = hopctl.open_hop_control(challenge, c.s2c, _window(), ptypes=hopctl.S2C_PTYPES)
    assert msg is not None
    expect_drop(w, RelayDrop.BAD_CHALLENGE, lambda: w.send(c.confirm(msg.body), elsewhere))
    assert w.relay.address_of(1) is None


# =============================================================================================
# Cluster: listeners on other nodes
# =============================================================================================


def test_voice_for_other_nodes_goes_out_once_and_theirs_comes_in() -> None:
    w = setup_a()
    remote_ids = {77}
    w.roster.join(77, A)  # a user of another node, in A: no session here
    w.relay = RelayCore(w.roster, is_remote=remote_ids.__contains__)
    for c in w.clients.values():
        w.relay.add_session(c.sender_id, c.hop_secret)
        w.validate(c)
    data = w[1].voice(A)
    out = recipients(w.send(data, w[1].addr))
    assert set(out) == {w[2].addr, w[3].addr, w[4].addr}
    assert w.relay.take_remote() == [data[:-HOP_MAC_LEN]]  # once, without the hop MAC
    assert w.relay.take_remote() == []
    assert w.relay.stats()["unreachable"] == 0  # 77 is elsewhere, not unreachable
    # The other node's body comes back in: every local listener but its speaker gets a copy
    # with its own s2c MAC.
    body = w[2].voice(A)[:-HOP_MAC_LEN]
    got = recipients(w.relay.remote_received(body, T0))
    assert set(got) == {w[1].addr, w[3].addr, w[4].addr}
    for sid in (1, 3, 4):
        assert w[sid].s2c.verify(got[w[sid].addr]) and w[sid].open(got[w[sid].addr]) is not None
    before = w.relay.drops()
    assert w.relay.remote_received(b"\x01" * 20, T0) == []  # too short
    assert w.relay.drops()[RelayDrop.BAD_LENGTH] == before[RelayDrop.BAD_LENGTH] + 1
    stats = w.relay.stats()
    assert (stats["to_cluster"], stats["from_cluster"]) == (1, 1)
