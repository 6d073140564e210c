"""ServerCore driven with raw frames (scripted clients) and a fake clock."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.net._harness import identity, real_keydist, seeded_rng
from tests.unit.net._strategies import struct_strategy
from voipclient.crypto import keydist
from voipclient.errors import LocalProtocolError
from voipclient.names import name_key
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.frames import FrameDecoder, encode_frame
from voipclient.server.control import (
    LOBBY_ID,
    ChannelConfig,
    PasswordBackoff,
    ServerConfig,
    ServerCore,
    TokenBucket,
)

T0 = 100.0


def frames(*msgs: m.Message) -> bytes:
    return b"".join(encode_frame(m.encode(x)) for x in msgs)


class Raw:
    """A scripted client on one connection of ``core``."""

    def __init__(
        self, core: ServerCore, conn_id: int, now: float = T0, address: str | None = None
    ) -> None:
        self.core, self.conn_id = core, conn_id
        self.decoder = FrameDecoder()
        core.connection_made(conn_id, now, address)

    def send(self, *msgs: m.Message, now: float = T0) -> list[m.Message]:
        self.core.receive_data(self.conn_id, frames(*msgs), now)
        return self.recv()

    def send_bytes(self, data: bytes, now: float = T0) -> list[m.Message]:
        self.core.receive_data(self.conn_id, data, now)
        return self.recv()

    def recv(self) -> list[m.Message]:
        return [m.decode(p) for p in self.decoder.feed(self.core.data_to_send(self.conn_id))]

    def hello(self) -> m.ServerHello:
        [sh] = self.send(m.Hello(versions=("vc1",)))
        assert isinstance(sh, m.ServerHello)
        return sh

    def login(
        self,
        name: str,
        key_label: str | None = None,
        password: str | None = None,
        now: float = T0,
    ) -> list[m.Message]:
        sh = self.hello()
        key, pub = identity(key_label or name)
        sig = key.sign(m.login_transcript(sh.challenge, name, pub))
        return self.send(m.Login(name, pub, sig, password), now=now)


def core(**kwargs: object) -> ServerCore:
    config = ServerConfig(
        channels=(
            ChannelConfig(2, "A"),
            ChannelConfig(3, "Secret", password="s3cret"),
            ChannelConfig(4, "Small", max_members=1),
            ChannelConfig(5, "Stage", speakers=frozenset({"Alice"})),
            ChannelConfig(6, "Hashed", parent=2, password=lambda pw: pw == "ok"),
        ),
        **kwargs,  # type: ignore[arg-type]
    )
    return ServerCore(config, rng=seeded_rng(3))


def closed_events(c: ServerCore) -> list[ev.SessionClosed]:
    return [e for e in c.events() if isinstance(e, ev.SessionClosed)]


def test_hello_and_login() -> None:
    c = core(password="pw", udp_port=6000)
    a = Raw(c, 1)
    sh = a.hello()
    assert sh.version == "vc1" and sh.password_required and len(sh.challenge) == 32
    assert sh.limits.max_memberships == 8 and sh.limits.rate_per_s == 20.0
    key, pub = identity("alice")
    sig = key.sign(m.login_transcript(sh.challenge, "alice", pub))
    [ok] = a.send(m.Login("alice", pub, sig, "pw"))
    assert isinstance(ok, m.LoginOk)
    assert ok.sender_id == 1 and ok.udp_port == 6000 and not ok.more
    assert [ch.id for ch in ok.channels] == [1, 2, 3, 4, 5, 6]
    assert ok.channels[2].password_protected
    assert ok.users == (m.UserInfo(1, "alice", pub, channels=(m.Membership(1, True),)),)
    [auth] = c.events()
    assert auth == ev.SessionAuthenticated(1, 1, "alice", pub, ok.hop_secret)
    info = c.session_by_sender_id(1)
    assert info is not None and info.hop_secret == ok.hop_secret and info.conn_id == 1


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (m.Hello(versions=("vc0", "vc2")), m.ErrorCode.UNSUPPORTED_VERSION),
        (m.Login("x", b"k" * 32, b"s" * 64), m.ErrorCode.UNEXPECTED_MESSAGE),
        (m.JoinChannel(1), m.ErrorCode.UNEXPECTED_MESSAGE),
        (m.Pong(1, 1), m.ErrorCode.UNEXPECTED_MESSAGE),
    ],
)
def test_bad_first_message(first: m.Message, code: int) -> None:
    c = core()
    a = Raw(c, 1)
    [err] = a.send(first)
    assert isinstance(err, m.Error) and err.code == code and err.fatal
    [closed] = closed_events(c)
    assert closed.conn_id == 1 and closed.code == code and closed.sender_id is None
    assert a.send(m.Hello(versions=("vc1",))) == []  # ignored once closed


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ({"password": "nope"}, m.ErrorCode.WRONG_PASSWORD),
        ({"password": None}, m.ErrorCode.WRONG_PASSWORD),
        ({"key_label": "mallory-signs"}, m.ErrorCode.BAD_SIGNATURE),
    ],
)
def test_login_refused(setup: dict[str, str | None], code: int) -> None:
    c = core(password="pw")
    a = Raw(c, 1)
    sh = a.hello()
    key, pub = identity("alice")
    label = setup.get("key_label")
    signer = identity(label)[0] if label else key
    sig = signer.sign(m.login_transcript(sh.challenge, "alice", pub))
    [err] = a.send(m.Login("alice", pub, sig, setup.get("password", "pw")))
    assert isinstance(err, m.Error) and err.code == code and err.fatal
    [closed] = closed_events(c)
    assert closed.reason is ev.CloseReason.LOGIN_FAILED
    assert c.roster.users == {}


def test_signature_over_another_challenge_is_refused() -> None:
    c = core()
    a, b = Raw(c, 1), Raw(c, 2)
    sh_a = a.hello()
    b.hello()
    key, pub = identity("alice")
    replayed = key.sign(m.login_transcript(sh_a.challenge, "alice", pub))
    [err] = b.send(m.Login("alice", pub, replayed))
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.BAD_SIGNATURE


def test_name_bound_to_first_key() -> None:
    bindings: dict[str, bytes] = {}
    c = ServerCore(ServerConfig(), rng=seeded_rng(1), name_bindings=bindings)
    a = Raw(c, 1)
    a.login("Alice")
    a.send(m.Bye())
    assert bindings == {name_key("Alice"): identity("Alice")[1]}  # keyed by account key
    # Gone, but the name stays bound: another key (and another case) is refused.
    b = Raw(c, 2)
    [err] = b.login("ALICE", key_label="someone else")
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.NAME_TAKEN
    # The owner may come back.
    a2 = Raw(c, 3)
    [ok] = a2.login("Alice")
    assert isinstance(ok, m.LoginOk) and ok.sender_id == 2  # sender ids are never reused


def test_same_identity_replaces_old_session() -> None:
    c = core()
    old, watcher = Raw(c, 1), Raw(c, 2)
    old.login("alice")
    watcher.login("bob")
    old.recv()
    watcher.recv()
    c.events()
    new = Raw(c, 3)
    [ok] = new.login("alice")
    assert isinstance(ok, m.LoginOk) and ok.sender_id == 3
    assert {u.name for u in ok.users} == {"alice", "bob"}
    [err] = old.recv()
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.SESSION_REPLACED and err.fatal
    assert watcher.recv() == [
        m.UserLeft(1, m.LeaveReason.REPLACED),
        m.UserJoined(m.UserInfo(3, "alice", identity("alice")[1], channels=(m.Membership(1),))),
    ]
    kinds = [type(e) for e in c.events()]
    assert kinds == [ev.SessionClosed, ev.SessionAuthenticated]


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("b\u043eb", "U+043E CYRILLIC SMALL LETTER O"),
        ("bob\u200b", "U+200B ZERO WIDTH SPACE"),
        ("bob\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("jose\u0301", "U+0301 COMBINING ACUTE ACCENT"),
        ("bob\u00a0x", "U+00A0 NO-BREAK SPACE"),
    ],
)
def test_disguised_name_is_refused_and_nobody_sees_it(name: str, named: str) -> None:
    bindings: dict[str, bytes] = {}
    c = ServerCore(ServerConfig(), rng=seeded_rng(1), name_bindings=bindings)
    watcher = Raw(c, 1)
    watcher.login("alice")
    c.events()
    mallory = Raw(c, 2)
    [err] = mallory.login(name)
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.INVALID_NAME and err.fatal
    assert err.message.startswith("name refused: ") and named in err.message
    assert watcher.recv() == []  # no user_joined
    [closed] = closed_events(c)
    assert closed.code == m.ErrorCode.INVALID_NAME and closed.sender_id is None
    assert bindings == {name_key("alice"): identity("alice")[1]}  # nothing bound
    assert [u.name for u in c.roster.users.values()] == ["alice"]


def test_look_alike_of_a_bound_name_is_taken() -> None:
    bindings: dict[str, bytes] = {}
    c = ServerCore(ServerConfig(), rng=seeded_rng(1), name_bindings=bindings)
    bob = Raw(c, 1)
    bob.login("bob")
    assert bindings == {name_key("bob"): identity("bob")[1]}
    # Greek capitals, another case, a zero for the o, Cyrillic capitals: one account, bob's.
    greek, cyrillic = "\u0392\u039f\u0392", "\u0412\u041e\u0412"
    for conn_id, spoof in enumerate((greek, "Bob", "b0b", cyrillic), start=2):
        [err] = Raw(c, conn_id).login(spoof, key_label="mallory")
        assert isinstance(err, m.Error) and err.code == m.ErrorCode.NAME_TAKEN, spoof
    assert bob.recv() == []
    assert len(bindings) == 1


def test_same_identity_under_another_spelling_replaces_the_session() -> None:
    c = core()
    old, watcher = Raw(c, 1), Raw(c, 2)
    old.login("bob")
    watcher.login("alice")
    old.recv()
    c.events()
    new = Raw(c, 3)
    [ok] = new.login("BOB", key_label="bob")
    assert isinstance(ok, m.LoginOk) and {u.name for u in ok.users} == {"BOB", "alice"}
    [err] = old.recv()
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.SESSION_REPLACED
    assert watcher.recv() == [
        m.UserLeft(1, m.LeaveReason.REPLACED),
        m.UserJoined(m.UserInfo(3, "BOB", identity("bob")[1], channels=(m.Membership(1),))),
    ]
    # The replaced connection going away does not unseat the new session under its key.
    c.connection_lost(1, T0)
    newest = Raw(c, 4)
    greek = "\u0392\u039f\u0392"  # BOB in Greek capitals
    [ok] = newest.login(greek, key_label="bob")
    assert isinstance(ok, m.LoginOk)
    [err] = new.recv()
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.SESSION_REPLACED
    assert sorted(u.name for u in c.roster.users.values()) == ["alice", greek]


def test_speaker_acl_compares_account_keys() -> None:
    stage = ChannelConfig(5, "Stage", speakers=frozenset({"Bob"}))
    assert stage.allows_speaker("bob") and stage.allows_speaker("\u0412\u041e\u0412")  # Cyrillic
    assert not stage.allows_speaker("rob")


def test_login_timeout_and_idle_timeout() -> None:
    c = core()
    slow = Raw(c, 1)
    slow.hello()
    active = Raw(c, 2)
    active.login("alice")
    active.recv()
    c.events()
    assert c.get_timer() == T0 + 10.0
    c.handle_timer(T0 + 9.9)
    assert closed_events(c) == []
    c.handle_timer(T0 + 10.0)
    [closed] = closed_events(c)
    assert closed.conn_id == 1 and closed.reason is ev.CloseReason.TIMEOUT
    [err] = slow.recv()
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.TIMEOUT
    # The logged-in one lives while it pings, and dies 30 s after it stops.
    for t in (T0 + 20, T0 + 40):
        active.send(m.Ping(1, 0), now=t)
    assert c.get_timer() == T0 + 70
    c.handle_timer(T0 + 69)
    assert closed_events(c) == []
    c.handle_timer(T0 + 70)
    [closed] = closed_events(c)
    assert closed.conn_id == 2 and closed.sender_id == 1
    assert c.roster.users == {}
    assert c.get_timer() is None


def test_server_full() -> None:
    c = core(max_sessions=1)
    Raw(c, 1)
    b = Raw(c, 2)
    [err] = b.recv()
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.SERVER_FULL
    c.connection_lost(1, T0)
    Raw(c, 3).hello()


def test_rate_limit_closes_only_the_offender() -> None:
    c = core()
    a, b = Raw(c, 1), Raw(c, 2)
    a.login("alice")
    b.login("bob")
    a.recv()
    c.events()
    # 40-message burst allowed (Hello + Login used 2), refilled at 20/s.
    out = a.send(*[m.Ping(i, 0) for i in range(38)], now=T0)
    assert len(out) == 38
    out = a.send(*[m.Ping(i, 0) for i in range(20)], now=T0 + 1.0)
    assert len(out) == 20
    out = a.send(m.Ping(99, 0), now=T0 + 1.0)
    assert out == [m.Error(m.ErrorCode.RATE_LIMITED, out[0].message, fatal=True)]  # type: ignore[union-attr]
    [closed] = closed_events(c)
    assert closed.reason is ev.CloseReason.RATE_LIMITED and closed.sender_id == 1
    assert b.recv() == [m.UserLeft(1, m.LeaveReason.PROTOCOL_ERROR)]
    assert b.send(m.Ping(1, 0), now=T0 + 1.0) == [m.Pong(1, 0, 0)]


def test_tunnel_voice_is_rate_limited_by_dropping() -> None:
    c = core()
    a = Raw(c, 1)
    a.login("alice")
    c.events()
    a.send(*[m.VoiceTunnel(bytes([i]) * 60) for i in range(60)])  # 60 > burst of 50
    got = c.events()
    assert len(got) == 50
    assert got[0] == ev.VoiceFromTunnel(1, 1, b"\x00" * 60)
    info = c.session_by_sender_id(1)
    assert info is not None and info.tunnel_dropped == 10
    assert c.session_by_sender_id(1) is not None  # not closed


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x7f\xff\xff\xff",  # 2 GiB frame
        b"\x00\x00\x00\x00",  # empty frame
        encode_frame(b"\xc1garbage"),  # not msgpack
        encode_frame(m.encode(m.JoinChannel(1)).replace(b"join", b"jojo")),  # unknown tag
    ],
)
def test_garbage_closes_only_that_session(garbage: bytes) -> None:
    c = core()
    a, b = Raw(c, 1), Raw(c, 2)
    a.login("alice")
    b.login("bob")
    a.recv()
    c.events()
    [err] = a.send_bytes(garbage)
    assert isinstance(err, m.Error) and err.fatal
    assert err.code in (
        m.ErrorCode.FRAME_TOO_LARGE,
        m.ErrorCode.FRAME_EMPTY,
        m.ErrorCode.MALFORMED_MESSAGE,
    )
    [closed] = closed_events(c)
    assert closed.reason is ev.CloseReason.PROTOCOL_ERROR and closed.conn_id == 1
    assert b.recv() == [m.UserLeft(1, m.LeaveReason.PROTOCOL_ERROR)]
    assert b.send(m.Ping(5, 1)) == [m.Pong(5, 1, 0)]


def test_join_rules() -> None:
    c = core(max_memberships=4)
    a, b = Raw(c, 1), Raw(c, 2)
    a.login("alice")
    b.login("bob")
    a.recv()
    b.recv()

    def refused(raw: Raw, msg: m.Message, code: int) -> None:
        [err] = raw.send(msg)
        assert isinstance(err, m.Error)
        assert isinstance(msg, m.JoinChannel | m.LeaveChannel)
        assert err == m.Error(code, err.message, fatal=False, channel_id=msg.channel_id)

    refused(a, m.JoinChannel(77), m.ErrorCode.NO_SUCH_CHANNEL)
    refused(a, m.JoinChannel(1), m.ErrorCode.ALREADY_MEMBER)
    refused(a, m.JoinChannel(3), m.ErrorCode.WRONG_CHANNEL_PASSWORD)
    refused(a, m.JoinChannel(3, "wrong"), m.ErrorCode.WRONG_CHANNEL_PASSWORD)
    refused(a, m.JoinChannel(6, "nope"), m.ErrorCode.WRONG_CHANNEL_PASSWORD)
    refused(a, m.LeaveChannel(2), m.ErrorCode.NOT_MEMBER)
    refused(a, m.LeaveChannel(77), m.ErrorCode.NO_SUCH_CHANNEL)
    assert a.send(m.JoinChannel(3, "s3cret")) == [m.MembershipChanged(1, 3, True, True)]
    assert a.send(m.JoinChannel(6, "ok")) == [m.MembershipChanged(1, 6, True, True)]
    assert a.send(m.JoinChannel(4)) == [m.MembershipChanged(1, 4, True, True)]
    refused(a, m.JoinChannel(2), m.ErrorCode.TOO_MANY_MEMBERSHIPS)  # 1, 3, 6, 4
    # Bob saw every successful change and none of Alice's refusals.
    assert [type(x) for x in b.recv()] == [m.MembershipChanged] * 3
    refused(b, m.JoinChannel(4), m.ErrorCode.CHANNEL_FULL)
    assert a.send(m.LeaveChannel(1)) == [m.MembershipChanged(1, 1, False, False)]
    assert c.roster.channels_of(1) == {3, 4, 6}
    assert b.recv() == [m.MembershipChanged(1, 1, False, False)]
    assert not any(isinstance(e, ev.SessionClosed) for e in c.events())


def test_speak_acl_and_listeners() -> None:
    c = core()
    a, b, d = Raw(c, 1), Raw(c, 2), Raw(c, 3)
    a.login("alice")
    b.login("bob")
    d.login("dora")
    a.recv()
    b.recv()
    assert a.send(m.JoinChannel(5)) == [m.MembershipChanged(1, 5, True, True)]
    assert b.send(m.JoinChannel(5))[-1] == m.MembershipChanged(2, 5, True, False)
    d.send(m.JoinChannel(5))
    assert c.may_speak(1, 5) and not c.may_speak(2, 5)
    assert c.may_speak(1, 1) and not c.may_speak(1, 2)
    assert c.listeners(5, exclude=1) == {2, 3}
    d.send(m.SetSelfState(muted=False, deafened=True))
    assert c.listeners(5, exclude=1) == {2}
    assert c.listeners(5) == {1, 2}
    # The ACL changes at run time: members are told their new right to speak.
    b.recv()
    c.update_channel(ChannelConfig(5, "Stage", speakers=frozenset({"bob"})))
    assert b.recv() == [
        m.ChannelUpdated(m.ChannelInfo(5, 1, "Stage")),
        m.MembershipChanged(1, 5, True, False),
        m.MembershipChanged(2, 5, True, True),
    ]
    assert c.may_speak(2, 5) and not c.may_speak(1, 5)


def test_keydist_and_text_relay_rules() -> None:
    c = core()
    a, b, d = Raw(c, 1), Raw(c, 2), Raw(c, 3)
    for raw, name in ((a, "alice"), (b, "bob"), (d, "dora")):
        raw.login(name)
    a.send(m.JoinChannel(2))
    b.send(m.JoinChannel(2))
    for raw in (a, b, d):
        raw.recv()
    # Recipients: bob (member), dora (not a member of 2), 99 (unknown), alice herself, bob again.
    blob = real_keydist(1, 2, [2, 3, 99, 1])
    parts = keydist.split_for_recipients(blob)
    assert a.send(m.KeyDist(2, (2, 3, 99, 1, 2), blob)) == []
    # Bob gets the signed body and only his own envelope, once.
    assert b.recv() == [m.KeyDistDelivery(1, 2, parts[2])]
    assert keydist.recipients_of(parts[2]) == (2,)
    assert d.recv() == []
    [err] = d.send(m.KeyDist(2, (1,), real_keydist(3, 2, [1])))
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.NOT_MEMBER and not err.fatal
    assert a.recv() == []
    # Text: every member but the sender; not a member → refused.
    a.send(m.Text(1, b"hello lobby"))
    assert b.recv() == [m.TextDelivery(1, 1, b"hello lobby")]
    assert d.recv() == [m.TextDelivery(1, 1, b"hello lobby")]
    assert a.recv() == []
    [err] = d.send(m.Text(2, b"x"))
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.NOT_MEMBER and err.channel_id == 2
    [err] = d.send(m.Text(77, b"x"))
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.NO_SUCH_CHANNEL


def test_session_key_and_self_state_broadcast() -> None:
    c = core()
    a, b = Raw(c, 1), Raw(c, 2)
    a.login("alice")
    b.login("bob")
    a.recv()
    a.send(m.PublishSessionKey(b"P" * 1216, b"C" * 72))
    [upd] = b.recv()
    assert isinstance(upd, m.UserUpdated)
    assert (upd.user.sk_pub, upd.user.skc) == (b"P" * 1216, b"C" * 72)
    a.send(m.SetSelfState(muted=True))
    [upd] = b.recv()
    assert isinstance(upd, m.UserUpdated) and upd.user.muted and upd.user.sk_pub
    a.send(m.SetSelfState(muted=True))  # no change → no broadcast
    assert b.recv() == []


def test_ping_pong_counts_udp() -> None:
    c = core()
    a = Raw(c, 1)
    a.login("alice")
    c.note_udp_received(1, 41)
    c.note_udp_received(1)
    c.note_udp_received(99)  # unknown sender: ignored
    stats = m.UdpStats(sent=50, received=3, lost=1, rtt_ms=20.5, jitter_ms=3.0)
    assert a.send(m.Ping(7, 123456, stats)) == [m.Pong(7, 123456, 42)]
    info = c.session_by_sender_id(1)
    assert info is not None and info.udp_stats == stats and info.udp_received == 42


def test_voice_tunnel_both_ways_and_transport() -> None:
    c = core()
    a = Raw(c, 1)
    a.login("alice")
    c.events()
    a.send(m.SetVoiceTransport(True))
    a.send(m.SetVoiceTransport(True))  # unchanged: no second event
    assert c.events() == [ev.VoiceTransportChanged(1, 1, True)]
    info = c.session_by_sender_id(1)
    assert info is not None and info.voice_tunnel
    assert c.send_voice_tunnel(1, b"\x01" * 100)
    assert a.recv() == [m.VoiceTunnel(b"\x01" * 100)]
    assert not c.send_voice_tunnel(42, b"\x01")
    with pytest.raises(LocalProtocolError):
        c.send_voice_tunnel(1, b"x" * 1201)
    pre = Raw(c, 2)
    with pytest.raises(LocalProtocolError):
        c.send_voice_tunnel(2, b"x")  # not logged in
    assert pre.recv() == []


def test_bye_is_answered_and_announced() -> None:
    c = core()
    a, b = Raw(c, 1), Raw(c, 2)
    a.login("alice")
    b.login("bob")
    a.recv()
    c.events()
    assert a.send(m.Bye("gn")) == [m.Bye()]
    assert b.recv() == [m.UserLeft(1, m.LeaveReason.QUIT)]
    [closed] = closed_events(c)
    assert closed == ev.SessionClosed(1, 1, ev.CloseReason.PEER_BYE, 0, "gn")
    c.connection_lost(1, T0)
    c.connection_lost(1, T0)  # idempotent
    assert c.events() == []


def test_client_error_and_connection_lost() -> None:
    c = core()
    a, b, d = Raw(c, 1), Raw(c, 2), Raw(c, 3)
    a.login("alice")
    b.login("bob")
    d.login("dora")
    b.recv()
    c.events()
    a.send(m.Error(m.ErrorCode.ROSTER_INCONSISTENT, "confused", fatal=True))
    c.connection_lost(3, T0)
    assert b.recv() == [
        m.UserLeft(1, m.LeaveReason.DISCONNECTED),
        m.UserLeft(3, m.LeaveReason.DISCONNECTED),
    ]
    reasons = [(e.conn_id, e.reason) for e in closed_events(c)]
    assert reasons == [(1, ev.CloseReason.PEER_ERROR), (3, ev.CloseReason.CONNECTION_LOST)]


def test_kick_and_shutdown() -> None:
    c = core()
    a, b, d = Raw(c, 1), Raw(c, 2), Raw(c, 3)
    a.login("alice")
    b.login("bob")
    d.hello()  # not logged in yet
    a.recv()
    b.recv()
    c.events()
    c.kick(1, "behave")
    [err] = a.recv()
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.KICKED
    assert b.recv() == [m.UserLeft(1, m.LeaveReason.KICKED)]
    with pytest.raises(LocalProtocolError):
        c.kick(1)
    c.events()
    c.shutdown("maintenance", T0, reconnect_after_ms=30_000)
    assert b.recv() == [m.ServerShutdown("maintenance", 30_000)]
    assert d.recv() == [m.ServerShutdown("maintenance", 30_000)]
    assert {e.conn_id for e in closed_events(c)} == {2, 3}
    late = Raw(c, 4)
    [err] = late.recv()
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.SHUTTING_DOWN


def test_channel_admin() -> None:
    c = core()
    a = Raw(c, 1)
    a.login("alice")
    a.send(m.JoinChannel(6, "ok"))
    c.add_channel(ChannelConfig(10, "New", parent=6, description="fresh"))
    assert a.recv() == [m.ChannelAdded(m.ChannelInfo(10, 6, "New", "fresh"))]
    a.send(m.JoinChannel(10))
    a.recv()
    c.remove_channel(2)  # takes 6 and 10 with it, deepest first
    assert a.recv() == [m.ChannelRemoved(10), m.ChannelRemoved(6), m.ChannelRemoved(2)]
    assert c.roster.channels_of(1) == {1}
    misuses: list[Callable[[], None]] = [
        lambda: c.remove_channel(1),
        lambda: c.remove_channel(2),
        lambda: c.add_channel(ChannelConfig(3, "dup")),
        lambda: c.add_channel(ChannelConfig(11, "orphan", parent=2)),
        lambda: c.update_channel(ChannelConfig(1, "Lobby", password="x")),
        lambda: c.update_channel(ChannelConfig(99, "nope")),
        lambda: c.update_channel(ChannelConfig(3, "rootless", parent=None)),
        lambda: c.update_channel(ChannelConfig(3, "loop", parent=3)),
    ]
    for bad in misuses:
        with pytest.raises(LocalProtocolError):
            bad()


def test_roster_is_paged_to_fit_frames() -> None:
    c = core()
    raws = [Raw(c, i) for i in range(1, 61)]
    for i, raw in enumerate(raws):
        raw.login(f"user{i}")
        raw.send(m.PublishSessionKey(b"P" * 1216, b"C" * 72))
    late = Raw(c, 100)
    msgs = late.login("late")
    first, *pages = msgs
    assert isinstance(first, m.LoginOk) and first.more
    assert pages and all(isinstance(p, m.RosterPage) for p in pages)
    assert not pages[-1].more and all(p.more for p in pages[:-1])  # type: ignore[union-attr]
    users = list(first.users) + [u for p in pages for u in p.users]  # type: ignore[union-attr]
    assert len(users) == 61
    assert all(len(m.encode(x)) <= 65536 for x in msgs)


def test_config_validation() -> None:
    bad_configs: list[dict[str, object]] = [
        {"channels": (ChannelConfig(1, "dup lobby"),)},
        {"channels": (ChannelConfig(2, "a"), ChannelConfig(2, "b"))},
        {"channels": (ChannelConfig(2, "a", parent=9),)},
        {"channels": (ChannelConfig(2, "a", parent=3), ChannelConfig(3, "b", parent=2))},
        {"channels": (ChannelConfig(2, " bad name"),)},
        {"lobby": ChannelConfig(1, "Lobby", parent=None, password="x")},
        {"lobby": ChannelConfig(2, "Lobby", parent=None)},
        {"max_memberships": 0},
        {"max_frame_size": 1000},
        {"server_name": "x" * 100},
        {"udp_port": 70000},
    ]
    for kwargs in bad_configs:
        with pytest.raises(LocalProtocolError):
            ServerConfig(**kwargs)  # type: ignore[arg-type]
    # Children may be listed before their parents.
    ok = ServerConfig(channels=(ChannelConfig(3, "child", parent=2), ChannelConfig(2, "parent")))
    assert ServerCore(ok).roster.channels[3].parent == 2


def test_adapter_misuse() -> None:
    c = core()
    Raw(c, 1)
    with pytest.raises(LocalProtocolError):
        c.connection_made(1, T0)
    with pytest.raises(LocalProtocolError):
        c.receive_data(2, b"x", T0)
    assert c.data_to_send(2) == b""


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after 0.5 s at 2/s
    assert not bucket.take(0.5)
    assert not bucket.take(0.1)  # the clock going backwards refills nothing
    assert bucket.take(10.0) and bucket.take(10.0) and bucket.take(10.0)
    assert not bucket.take(10.0)  # capped at burst


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=6), st.booleans())
def test_arbitrary_bytes_never_escape_the_core(chunks: list[bytes], logged_in: bool) -> None:
    c = core()
    bystander = Raw(c, 1)
    bystander.login("bob")
    a = Raw(c, 2)
    if logged_in:
        a.login("alice")
    for chunk in chunks:
        a.send_bytes(chunk)  # may close the session, must never raise
    assert bystander.send(m.Ping(1, 0))[-1] == m.Pong(1, 0, 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data())
def test_random_valid_messages_never_escape_the_core(data: st.DataObject) -> None:
    c = core()
    bystander = Raw(c, 1)
    bystander.login("bob")
    a = Raw(c, 2)
    a.login("alice")
    kinds = st.sampled_from(get_args(m.ClientMessage)).flatmap(struct_strategy)
    for msg in data.draw(st.lists(kinds, max_size=8)):
        a.send(msg)  # refused, relayed or closed, but never an exception
    bystander.recv()
    assert bystander.send(m.Ping(1, 0)) == [m.Pong(1, 0, 0)]


def test_keydist_that_does_not_parse_or_lies_about_its_sender_closes_only_that_session() -> None:
    c = core()
    a, b, d = Raw(c, 1), Raw(c, 2), Raw(c, 3)
    for raw, name in ((a, "alice"), (b, "bob"), (d, "dora")):
        raw.login(name)
    for raw in (a, b, d):
        raw.send(m.JoinChannel(2))
    for raw in (a, b, d):
        raw.recv()
    [err] = a.send(m.KeyDist(2, (2,), b"not a keydist"))
    assert isinstance(err, m.Error) and err.fatal and err.code == m.ErrorCode.MALFORMED_MESSAGE
    # Bob sends a blob claiming to come from dora (sender 3): refused, bob is closed.
    errors = [
        x for x in b.send(m.KeyDist(2, (1,), real_keydist(3, 2, [1]))) if isinstance(x, m.Error)
    ]
    assert [e.fatal for e in errors] == [True]
    assert d.recv() != []  # dora saw alice and bob leave...
    # ...and still works: her real KeyDist reaches nobody else (no members left) without error.
    assert d.send(m.KeyDist(2, (1, 2), real_keydist(3, 2, [1, 2]))) == []


# -- admin actions --------------------------------------------------------------------------------

ROOT_KEY = identity("root")[1]
KICK, BAN, MOVE = m.AdminOp.KICK, m.AdminOp.BAN, m.AdminOp.MOVE


def admin_core(**kwargs: object) -> tuple[ServerCore, Raw, Raw, Raw]:
    """A core whose admin is "root" (sender 1), with bob (2) and carol (3) logged in."""
    c = core(admins=frozenset({ROOT_KEY}), **kwargs)
    root, bob, carol = Raw(c, 1), Raw(c, 2), Raw(c, 3)
    for raw, name in ((root, "root"), (bob, "bob"), (carol, "carol")):
        raw.login(name)
    for raw in (root, bob, carol):
        raw.recv()
    c.events()
    return c, root, bob, carol


def handled(c: ServerCore) -> list[ev.AdminActionHandled]:
    return [e for e in c.events() if isinstance(e, ev.AdminActionHandled)]


def test_admin_action_from_a_non_admin_is_refused_without_disconnecting() -> None:
    c, root, bob, carol = admin_core()
    for msg in (m.AdminAction(KICK, 3), m.AdminAction(BAN, 1), m.AdminAction(MOVE, 3, 2)):
        [err] = bob.send(msg)
        assert err == m.Error(m.ErrorCode.NOT_ADMIN, err.message, False, msg.channel_id)
    assert carol.recv() == [] and root.recv() == []
    events = c.events()
    assert not any(isinstance(e, ev.SessionClosed | ev.BanRequested) for e in events)
    admin = [e for e in events if isinstance(e, ev.AdminActionHandled)]
    assert len(admin) == len(events)
    assert [(e.sender_id, e.name, e.action, e.code) for e in admin] == [
        (2, "bob", KICK, m.ErrorCode.NOT_ADMIN),
        (2, "bob", BAN, m.ErrorCode.NOT_ADMIN),
        (2, "bob", MOVE, m.ErrorCode.NOT_ADMIN),
    ]
    assert c.roster.channels_of(3) == {1}
    assert bob.send(m.Ping(1, 0)) == [m.Pong(1, 0, 0)]  # still logged in


def test_admin_action_on_unknown_target_or_channel() -> None:
    c, root, bob, _ = admin_core()
    refusals = [
        (m.AdminAction(KICK, 99), m.ErrorCode.NO_SUCH_USER),
        (m.AdminAction(MOVE, 99, 2), m.ErrorCode.NO_SUCH_USER),
        (m.AdminAction(MOVE, 2, 77), m.ErrorCode.NO_SUCH_CHANNEL),
        (m.AdminAction(MOVE, 2, 1), m.ErrorCode.ALREADY_MEMBER),
    ]
    for msg, code in refusals:
        [err] = root.send(msg)
        assert err == m.Error(code, err.message, False, msg.channel_id)
    assert [e.code for e in handled(c)] == [code for _, code in refusals]
    assert bob.recv() == []
    # A target that left is unknown too (sender ids are never reused).
    bob.send(m.Bye())
    root.recv()
    [err] = root.send(m.AdminAction(KICK, 2))
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.NO_SUCH_USER


def test_admin_kick() -> None:
    c, root, bob, carol = admin_core()
    notice = m.AdminNotice(KICK, by=1, target=2, reason="spam")
    assert root.send(m.AdminAction(KICK, 2, reason="spam")) == [
        notice,
        m.UserLeft(2, m.LeaveReason.KICKED),
    ]
    assert bob.recv() == [notice, m.Error(m.ErrorCode.KICKED, "kicked by root: spam", True)]
    assert carol.recv() == [m.UserLeft(2, m.LeaveReason.KICKED)]
    events = c.events()
    assert events[0] == ev.AdminActionHandled(1, 1, "root", KICK, 2, "bob", None, "spam", 0)
    [closed] = [e for e in events if isinstance(e, ev.SessionClosed)]
    assert (closed.conn_id, closed.code) == (2, m.ErrorCode.KICKED)
    assert not any(isinstance(e, ev.BanRequested) for e in events)
    assert c.session_by_sender_id(2) is None
    # The kicked user may come back (a kick is not a ban).
    again = Raw(c, 4)
    [ok] = again.login("bob")
    assert isinstance(ok, m.LoginOk)


def test_admin_ban_removes_every_session_of_the_key_and_asks_to_persist() -> None:
    c, root, bob, carol = admin_core()
    alt = Raw(c, 4)
    alt.login("bobby", key_label="bob")  # the same identity key under another name
    for raw in (root, bob, carol):
        raw.recv()
    c.events()
    notice = m.AdminNotice(BAN, by=1, target=2)
    assert root.send(m.AdminAction(BAN, 2)) == [
        notice,
        m.UserLeft(2, m.LeaveReason.KICKED),
        m.UserLeft(4, m.LeaveReason.KICKED),
    ]
    assert bob.recv() == [notice, m.Error(m.ErrorCode.KICKED, "banned by root", True)]
    assert alt.recv() == [
        m.UserLeft(2, m.LeaveReason.KICKED),
        m.Error(m.ErrorCode.KICKED, "banned by root", True),
    ]
    events = c.events()
    assert ev.BanRequested(identity("bob")[1], "bob", "", "root") in events
    assert {e.conn_id for e in events if isinstance(e, ev.SessionClosed)} == {2, 4}
    assert set(c.roster.users) == {1, 3}
    assert carol.send(m.Ping(1, 0)) == [
        m.UserLeft(2, m.LeaveReason.KICKED),
        m.UserLeft(4, m.LeaveReason.KICKED),
        m.Pong(1, 0, 0),
    ]


def test_admin_move_ignores_password_and_member_limit() -> None:
    c, root, bob, carol = admin_core()
    carol.send(m.JoinChannel(4))  # "Small": max_members 1, now full
    root.recv()
    bob.recv()
    for channel in (3, 4):  # "Secret" has a password, "Small" is full
        notice = m.AdminNotice(MOVE, by=1, target=2, channel_id=channel, reason="over there")
        joined = m.MembershipChanged(2, channel, True, True)
        assert root.send(m.AdminAction(MOVE, 2, channel, "over there")) == [joined, notice]
        assert bob.recv() == [joined, notice]
        assert carol.recv() == [joined]
    assert c.roster.channels_of(2) == {1, 3, 4}
    assert c.roster.members(4) == {2, 3}
    assert handled(c) == [
        ev.AdminActionHandled(1, 1, "root", MOVE, 2, "bob", ch, "over there", 0) for ch in (3, 4)
    ]
    # The speak ACL still applies: "Stage" lets only Alice speak.
    assert root.send(m.AdminAction(MOVE, 2, 5))[0] == m.MembershipChanged(2, 5, True, False)
    assert not c.may_speak(2, 5)


def test_admin_move_at_the_membership_cap_leaves_the_other_channels_first() -> None:
    c, root, bob, carol = admin_core(max_memberships=3)
    bob.send(m.JoinChannel(5))
    bob.send(m.JoinChannel(2))
    root.recv()
    carol.recv()
    assert c.roster.channels_of(2) == {1, 2, 5}
    got = root.send(m.AdminAction(MOVE, 2, 3))
    assert got == [
        m.MembershipChanged(2, 2, False, False),
        m.MembershipChanged(2, 5, False, False),
        m.MembershipChanged(2, 3, True, True),
        m.AdminNotice(MOVE, by=1, target=2, channel_id=3),
    ]
    assert bob.recv() == got
    assert carol.recv() == got[:3]
    assert c.roster.channels_of(2) == {1, 3}
    # Below the cap nothing is left.
    assert root.send(m.AdminAction(MOVE, 2, 2))[0] == m.MembershipChanged(2, 2, True, True)
    assert c.roster.channels_of(2) == {1, 2, 3}


def test_admin_move_with_a_cap_of_one_leaves_the_lobby_too() -> None:
    c, root, _, _ = admin_core(max_memberships=1)
    assert root.send(m.AdminAction(MOVE, 2, 2))[:2] == [
        m.MembershipChanged(2, 1, False, False),
        m.MembershipChanged(2, 2, True, True),
    ]
    assert c.roster.channels_of(2) == {2}
    # Back to the Lobby: the non-Lobby channel is left.
    root.send(m.AdminAction(MOVE, 2, 1))
    assert c.roster.channels_of(2) == {1}
    # The admin may move itself.
    assert root.send(m.AdminAction(MOVE, 1, 2))[-1] == m.AdminNotice(MOVE, 1, 1, 2)
    assert c.roster.channels_of(1) == {2}


def test_admin_keys_are_validated() -> None:
    with pytest.raises(LocalProtocolError):
        ServerConfig(admins=frozenset({b"short"}))
    assert ServerConfig(admins=frozenset({ROOT_KEY})).admins == {ROOT_KEY}


# -- issue 12, item 6: a malicious client or a guessing attacker ------------------------------


def login_frames(raw: Raw, name: str, password: str | None = None) -> m.Login:
    """Hello → ServerHello on ``raw``, then the Login a client would send (not sent yet)."""
    sh = raw.hello()
    key, pub = identity(name)
    return m.Login(name, pub, key.sign(m.login_transcript(sh.challenge, name, pub)), password)


def test_banned_key_is_refused_inside_login_and_what_it_pipelined_is_dropped() -> None:
    banned = identity("mallory")[1]
    asked: list[bytes] = []

    def is_banned(ik_pub: bytes) -> bool:
        asked.append(ik_pub)
        return ik_pub == banned

    c = ServerCore(core().config, rng=seeded_rng(3), is_banned=is_banned)
    a = Raw(c, 1)
    a.login("alice")
    a.send(m.JoinChannel(2))
    a.recv()
    assert asked == [identity("alice")[1]]
    c.events()
    mal = Raw(c, 2)
    login = login_frames(mal, "mallory")
    # Login and what a client pipelines behind it arrive in ONE read.
    out = mal.send(
        login,
        m.JoinChannel(2),
        m.Text(1, b"spam for the lobby"),
        m.Text(2, b"spam for A"),
        m.KeyDist(2, (1,), real_keydist(2, 2, [1])),
        m.SetSelfState(muted=True),
    )
    assert out == [m.Error(m.ErrorCode.KICKED, "banned from this server", fatal=True)]
    assert asked[-1] == banned
    # Nobody saw it join, speak or leave; it never got a sender id or the roster.
    assert a.recv() == []
    events = c.events()
    assert not [e for e in events if isinstance(e, ev.SessionAuthenticated)]
    [closed] = [e for e in events if isinstance(e, ev.SessionClosed)]
    assert (closed.conn_id, closed.sender_id, closed.code) == (2, None, m.ErrorCode.KICKED)
    assert closed.reason is ev.CloseReason.LOGIN_FAILED
    assert set(c.roster.users) == {1} and c.roster.members(2) == {1}
    # Alice is still served; the next login is an ordinary one.
    assert a.send(m.Ping(1, 0)) == [m.Pong(1, 0, 0)]
    [ok] = Raw(c, 3).login("bob")
    assert isinstance(ok, m.LoginOk)


def test_ban_is_asked_only_after_the_signature_verified() -> None:
    asked: list[bytes] = []
    c = ServerCore(core().config, rng=seeded_rng(3), is_banned=lambda k: bool(asked.append(k)))
    mal = Raw(c, 1)
    sh = mal.hello()
    _, pub = identity("alice")
    forged = identity("mallory")[0].sign(m.login_transcript(sh.challenge, "alice", pub))
    [err] = mal.send(m.Login("alice", pub, forged))
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.BAD_SIGNATURE
    assert asked == []  # nobody can learn whether a key is banned without holding it


def test_password_backoff_schedule_reset_and_memory_bound() -> None:
    b = PasswordBackoff()
    t = 0.0
    waits = []
    for _ in range(11):
        t += b.retry_after("198.51.100.7", t)  # a guesser that waits exactly as told
        waits.append(b.failed("198.51.100.7", t))
    assert waits == [0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert b.retry_after("198.51.100.7", t) == 60.0
    assert b.retry_after("198.51.100.7", t + 59.5) == 0.5
    assert b.retry_after("192.0.2.1", t) == 0.0  # another address is not affected
    b.succeeded("198.51.100.7")  # a right password forgets the address
    assert b.retry_after("198.51.100.7", t) == 0.0
    assert [b.failed("198.51.100.7", t) for _ in range(3)] == [0, 0, 1]
    # Ten quiet minutes forget the failures too.
    assert b.retry_after("198.51.100.7", t + 600) == 0.0
    assert b.failed("198.51.100.7", t + 601) == 0
    # A long run of failures stays cheap and capped.
    for i in range(5000):
        b.failed("203.0.113.9", t + i)
    assert b.retry_after("203.0.113.9", t + 4999) == 60.0
    # At most max_addresses are remembered; the oldest failure goes first.
    small = PasswordBackoff(max_addresses=3)
    for i, addr in enumerate(("a", "b", "c", "a", "d")):
        small.failed(addr, float(i))
    assert len(small) == 3
    assert small.failed("b", 10.0) == 0  # "b" was forgotten: its count starts again
    for _ in range(2):
        small.failed("d", 10.0)
    assert small.retry_after("d", 10.0) == 1.0
    with pytest.raises(LocalProtocolError):
        PasswordBackoff(base=2.0, cap=1.0)


def test_wrong_server_passwords_back_off_per_address() -> None:
    c = core(password="pw")
    ip, other = "198.51.100.7", "192.0.2.1"
    conn = iter(range(1, 100))

    def attempt(password: str, now: float, address: str | None = ip) -> m.Message:
        raw = Raw(c, next(conn), now=now, address=address)
        return raw.send(login_frames(raw, f"u{raw.conn_id}", password), now=now)[0]

    def code(msg: m.Message) -> int:
        return msg.code if isinstance(msg, m.Error) else 0

    # Three wrong guesses cost nothing but the refusal; the third starts a 1 s wait.
    assert [code(attempt("guess", T0)) for _ in range(2)] == [m.ErrorCode.WRONG_PASSWORD] * 2
    third = attempt("guess", T0)
    assert isinstance(third, m.Error) and third.code == m.ErrorCode.WRONG_PASSWORD
    assert third.message == "wrong server password; too many from your address, try again in 1 s"
    # While it waits, even the right password is refused, unchecked.
    waiting = attempt("pw", T0 + 0.5)
    assert waiting == m.Error(
        m.ErrorCode.RATE_LIMITED,
        "too many wrong passwords from your address; try again in 1 s",
        fatal=True,
    )
    closed = closed_events(c)[-1]
    assert closed.code == m.ErrorCode.RATE_LIMITED
    assert closed.reason is ev.CloseReason.LOGIN_FAILED
    # Another address, and a connection whose address the adapter does not know, are not.
    assert isinstance(attempt("pw", T0 + 0.5, other), m.LoginOk)
    assert isinstance(attempt("pw", T0 + 0.5, None), m.LoginOk)
    # Each further wrong guess doubles the wait: 2 s, then 4 s.
    assert "try again in 2 s" in attempt("guess", T0 + 1.0).message  # type: ignore[union-attr]
    assert code(attempt("guess", T0 + 2.9)) == m.ErrorCode.RATE_LIMITED
    assert "try again in 4 s" in attempt("guess", T0 + 3.0).message  # type: ignore[union-attr]
    late = attempt("pw", T0 + 6.5)
    assert isinstance(late, m.Error) and late.message.endswith("try again in 1 s")
    # The right password once the wait is over logs in and resets the count.
    assert isinstance(attempt("pw", T0 + 7.0), m.LoginOk)
    assert [code(attempt("guess", T0 + 7.0)) for _ in range(3)] == [m.ErrorCode.WRONG_PASSWORD] * 3
    assert c.password_backoff.retry_after(ip, T0 + 7.0) == 1.0
    # Without a server password nothing is counted.
    open_core = core()
    for i in range(5):
        raw = Raw(open_core, i + 1, address=ip)
        assert isinstance(raw.send(login_frames(raw, f"v{i}", "whatever"))[0], m.LoginOk)
    assert len(open_core.password_backoff) == 0


def crafted_keydist(sender_id: int, channel_id: int, table: list[int], carried: list[int]) -> bytes:
    """A structurally valid KeyDist (what the relay parses) with any table and envelopes: the
    relay never checks signatures or envelopes, so zeros will do."""
    body = struct.pack(">BBIIIHQ", 1, 1, channel_id, sender_id, 1, 0, 0) + bytes(64)
    body += struct.pack(">H", len(table))
    body += b"".join(struct.pack(">I", r) + bytes(8 + 32) for r in table)
    tail = struct.pack(">H", len(carried))
    tail += b"".join(struct.pack(">H", i) + bytes(keydist.ENVELOPE_LEN) for i in carried)
    return body + bytes(64) + tail


def channel_of(c: ServerCore, n: int, channel: int = 2) -> list[Raw]:
    """``n`` logged-in members of ``channel`` (sender ids 1..n), outputs drained."""
    raws = [Raw(c, i + 1) for i in range(n)]
    for raw in raws:
        raw.login(f"user{raw.conn_id}")
        if channel != LOBBY_ID:
            raw.send(m.JoinChannel(channel))
    for raw in raws:
        raw.recv()
    c.events()
    return raws


def test_keydist_limits_match_the_message_schema() -> None:
    assert keydist.MAX_RECIPIENTS == m.MAX_RECIPIENTS
    # The largest full batch a KeyDist blob can hold is well under the table limit.
    assert keydist.message_size(51) <= m.MAX_KEYDIST_BLOB < keydist.message_size(52)


def test_crafted_keydist_table_would_amplify_and_is_refused() -> None:
    # 26 envelopes under a 700-row table fit one blob; split per recipient, every part would
    # copy the whole table: the relay would send 13x what it received.
    table = list(range(2, 28)) + list(range(1000, 1674))
    blob = crafted_keydist(1, 2, table, list(range(26)))
    assert len(blob) <= m.MAX_KEYDIST_BLOB
    egress = 26 * (len(blob) - 26 * keydist.CARRIED_LEN + keydist.CARRIED_LEN)
    assert egress / len(blob) > 13
    c = core()
    raws = channel_of(c, 27)
    [err] = raws[0].send(m.KeyDist(2, tuple(range(2, 28)), blob))
    assert err == m.Error(m.ErrorCode.MALFORMED_MESSAGE, err.message, fatal=True)  # type: ignore[union-attr]
    for raw in raws[1:]:  # nobody got a byte of it
        assert raw.recv() == [m.UserLeft(1, m.LeaveReason.PROTOCOL_ERROR)]


@pytest.mark.parametrize(
    ("table", "carried", "recipients"),
    [
        ([2, 3, 4], [0, 1], (2, 3)),  # fewer envelopes than rows (m < n)
        ([2, 3], [0], (2,)),  # a split part sent back to the relay
        (list(range(2, 67)), [0, 1], (2, 3)),  # 65 rows > 64
        ([2, 3], [0, 1], (2,)),  # the message names fewer recipients than the table
        ([2, 3], [0, 1], (2, 3, 4)),  # ... or more
        ([2, 3], [0, 1], (3, 4)),  # ... or others
    ],
)
def test_keydist_must_be_a_full_batch_naming_its_table(
    table: list[int], carried: list[int], recipients: tuple[int, ...]
) -> None:
    c = core()
    alice, bob, dora, eve = channel_of(c, 4)
    [err] = alice.send(m.KeyDist(2, recipients, crafted_keydist(1, 2, table, carried)))
    assert isinstance(err, m.Error) and err.fatal
    assert err.code == m.ErrorCode.MALFORMED_MESSAGE
    for raw in (bob, dora, eve):
        assert raw.recv() == [m.UserLeft(1, m.LeaveReason.PROTOCOL_ERROR)]
    # The same shapes done right pass: a full batch naming exactly its table.
    full = crafted_keydist(2, 2, [1, 3, 4], [0, 1, 2])
    assert bob.send(m.KeyDist(2, (4, 3, 3, 1), full)) == []
    assert [type(x) for x in dora.recv()] == [m.KeyDistDelivery]


def test_honest_48_recipient_keydist_egress_stays_under_3x_and_within_the_byte_budget() -> None:
    c = core()
    raws = channel_of(c, 49)
    blob = real_keydist(1, 2, list(range(2, 50)))  # one full batch of 48 (build_keydists' max)
    assert len(keydist.recipients_of(blob)) == keydist.batch_size() == 48
    sent = frames(m.KeyDist(2, tuple(range(2, 50)), blob))
    assert raws[0].send_bytes(sent) == []
    egress = sum(len(c.data_to_send(raw.conn_id)) for raw in raws[1:])
    ratio = egress / len(sent)
    # 48 x (3,470-byte part + ~20 bytes of frame and message) = 167,5xx bytes for 59,9xx in.
    assert 2.7 < ratio < 3.0, ratio
    assert c.session_by_sender_id(1) is not None  # not rate-limited
    # Even the biggest full batch a blob can hold stays under 3x.
    n = 51
    assert n * keydist.message_size(n, 1) / keydist.message_size(n) < 3.0


def test_relayed_text_bytes_are_rate_limited_where_the_message_bucket_is_not() -> None:
    big = b"x" * m.MAX_TEXT_BLOB  # 16 KiB
    # 40 users in the Lobby: each text is relayed 39 times, 639 KB; the 8 MiB burst pays 13.
    c = core()
    sender, *others = channel_of(c, 40, LOBBY_ID)
    for _ in range(13):
        assert sender.send(m.Text(1, big)) == []
    [err] = sender.send(m.Text(1, big))
    assert isinstance(err, m.Error) and err.fatal and err.code == m.ErrorCode.RATE_LIMITED
    assert "relayed bytes/s" in err.message
    [closed] = closed_events(c)
    assert closed.reason is ev.CloseReason.RATE_LIMITED and closed.sender_id == 1
    got = others[0].recv()
    assert got[:13] == [m.TextDelivery(1, 1, big)] * 13
    assert got[13:] == [m.UserLeft(1, m.LeaveReason.PROTOCOL_ERROR)]
    # The message bucket alone (40 messages) lets all of them through, and more.
    loose = core(relay_bytes_burst=1 << 40)
    sender, *others = channel_of(loose, 40, LOBBY_ID)
    for _ in range(30):
        assert sender.send(m.Text(1, big)) == []
    assert len(others[-1].recv()) == 30
    # The bucket refills at relay_bytes_per_s: 1 MiB a second is one text a ~0.6 s here.
    c = core(relay_bytes_burst=700_000)
    sender, *_ = channel_of(c, 40, LOBBY_ID)
    for i in range(10):
        assert sender.send(m.Text(1, big), now=T0 + 0.61 * i) == []
    with pytest.raises(LocalProtocolError):
        ServerConfig(relay_bytes_per_s=0)
    with pytest.raises(LocalProtocolError):
        ServerConfig(relay_bytes_burst=0)
