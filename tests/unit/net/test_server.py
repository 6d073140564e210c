"""ServerCore driven with raw frames (scripted clients) and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voipclient.crypto import keydist
from voipclient.errors import LocalProtocolError
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.frames import FrameDecoder, encode_frame
from voipclient.net.server import ChannelConfig, ServerConfig, ServerCore, TokenBucket

from ._harness import identity, real_keydist, seeded_rng
from ._strategies import struct_strategy

T0 = 100.0


def frames(*msgs: m.Message) -> bytes:
    return b"".join(encode_frame(m.encode(x)) for x in msgs)


class Raw:
    """A scripted client on one connection of ``core``."""

    def __init__(self, core: ServerCore, conn_id: int, now: float = T0) -> None:
        self.core, self.conn_id = core, conn_id
        self.decoder = FrameDecoder()
        core.connection_made(conn_id, now)

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
    assert bindings == {"alice": identity("Alice")[1]}
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
