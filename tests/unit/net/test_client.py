"""ClientSession against a scripted server (raw messages in, parsed messages out)."""

from __future__ import annotations

from typing import get_args

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.client import ClientSession
from voipclient.net.frames import FrameDecoder, encode_frame
from voipclient.net.states import ClientState

from ._harness import make_client
from ._strategies import struct_strategy

CHALLENGE = bytes(range(32))
HOP = b"h" * 32
LIMITS = m.Limits(
    max_frame_size=65536,
    max_memberships=8,
    rate_per_s=20.0,
    rate_burst=40,
    idle_timeout_ms=30000,
    tunnel_rate_per_s=100.0,
)
T0 = 500.0


def frames(*msgs: m.Message) -> bytes:
    return b"".join(encode_frame(m.encode(x)) for x in msgs)


def parse(data: bytes) -> list[m.Message]:
    return [m.decode(p) for p in FrameDecoder().feed(data)]


def me_info(client: ClientSession, sender_id: int = 7) -> m.UserInfo:
    return m.UserInfo(sender_id, client.name, client.ik_pub, channels=(m.Membership(1),))


LOBBY = m.ChannelInfo(1, None, "Lobby")
OTHER = m.UserInfo(8, "other", b"o" * 32, channels=(m.Membership(1),))


def ready_client(**kwargs: object) -> ClientSession:
    client = make_client("alice", **kwargs)  # type: ignore[arg-type]
    client.start(T0)
    client.receive_data(frames(m.ServerHello("vc1", CHALLENGE, "srv", LIMITS)), T0)
    events = client.receive_data(
        frames(m.LoginOk(7, HOP, 6000, (LOBBY,), (me_info(client), OTHER))), T0
    )
    assert [type(e) for e in events] == [ev.LoggedIn]
    client.data_to_send()
    return client


def test_handshake() -> None:
    client = make_client("alice", password="pw")
    assert client.state is ClientState.IDLE
    client.start(T0)
    [hello] = parse(client.data_to_send())
    assert isinstance(hello, m.Hello)
    assert hello.versions == ("vc1",)
    assert client.state is ClientState.HELLO_SENT  # type: ignore[comparison-overlap]

    events = client.receive_data(frames(m.ServerHello("vc1", CHALLENGE, "srv", LIMITS, True)), T0)
    assert events == [ev.Negotiated("vc1", "srv", LIMITS, True)]
    [login] = parse(client.data_to_send())
    assert isinstance(login, m.Login)
    assert (login.name, login.ik_pub, login.password) == ("alice", client.ik_pub, "pw")
    Ed25519PublicKey.from_public_bytes(client.ik_pub).verify(
        login.signature, b"vc1 login" + CHALLENGE + b"alice" + client.ik_pub
    )
    assert client.state is ClientState.LOGIN_SENT

    # The roster arrives in two pages; LoggedIn only after the last one.
    events = client.receive_data(
        frames(m.LoginOk(7, HOP, 6000, channels=(LOBBY,), users=(OTHER,), more=True)), T0
    )
    assert events == []
    assert client.state is ClientState.SYNCING
    events = client.receive_data(frames(m.RosterPage(users=(me_info(client),))), T0)
    [logged_in] = events
    assert isinstance(logged_in, ev.LoggedIn)
    assert (logged_in.sender_id, logged_in.hop_secret, logged_in.udp_port) == (7, HOP, 6000)
    assert set(logged_in.roster.users) == {7, 8}
    assert logged_in.roster.channels_of(7) == {1}
    assert client.state is ClientState.READY
    assert client.sender_id == 7


def test_version_mismatch_closes_cleanly() -> None:
    client = make_client("alice")
    client.start(T0)
    client.data_to_send()
    events = client.receive_data(frames(m.ServerHello("vc9", CHALLENGE, "srv", LIMITS)), T0)
    [closed] = events
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.reason is ev.CloseReason.PROTOCOL_ERROR
    assert closed.code == m.ErrorCode.UNSUPPORTED_VERSION
    assert isinstance(closed.error, RemoteProtocolError)
    assert closed.error.field == "version"
    [err] = parse(client.data_to_send())
    assert isinstance(err, m.Error)
    assert err == m.Error(m.ErrorCode.UNSUPPORTED_VERSION, err.message, fatal=True)
    assert client.state is ClientState.CLOSED
    assert client.receive_data(b"anything", T0) == []


def test_server_refusing_version_is_a_server_error() -> None:
    client = make_client("alice")
    client.start(T0)
    events = client.receive_data(
        frames(m.Error(m.ErrorCode.UNSUPPORTED_VERSION, "vc1 only", fatal=True)), T0
    )
    assert events == [
        ev.ServerError(m.ErrorCode.UNSUPPORTED_VERSION, "vc1 only", True, None),
        ev.ConnectionClosed(ev.CloseReason.PEER_ERROR, m.ErrorCode.UNSUPPORTED_VERSION, "vc1 only"),
    ]


def test_unexpected_message_is_a_protocol_error() -> None:
    client = make_client("alice")
    client.start(T0)
    client.data_to_send()
    [closed] = client.receive_data(frames(m.TextDelivery(1, 1, b"x")), T0)
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.code == m.ErrorCode.UNEXPECTED_MESSAGE
    [err] = parse(client.data_to_send())
    assert isinstance(err, m.Error) and err.fatal


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (b"\x00\x01\x00\x01", m.ErrorCode.FRAME_TOO_LARGE),
        (b"\x00\x00\x00\x00", m.ErrorCode.FRAME_EMPTY),
        (encode_frame(b"\xc1\x00"), m.ErrorCode.MALFORMED_MESSAGE),
        (encode_frame(b"\x81\xa1t\xa3zzz"), m.ErrorCode.MALFORMED_MESSAGE),
    ],
)
def test_garbage_from_server(garbage: bytes, code: int) -> None:
    client = ready_client()
    *_, closed = client.receive_data(garbage, T0 + 1)
    assert isinstance(closed, ev.ConnectionClosed)
    assert (closed.reason, closed.code) == (ev.CloseReason.PROTOCOL_ERROR, code)
    assert isinstance(closed.error, RemoteProtocolError)
    [err] = parse(client.data_to_send())
    assert isinstance(err, m.Error) and err.code == code and err.fatal


def test_error_message_quoting_hostile_text_is_cleaned() -> None:
    client = ready_client()
    bad = encode_frame(m.encode(m.Bye()).replace(b"bye", b"\x01\x02\x03"))
    client.receive_data(bad, T0)
    [err] = parse(client.data_to_send())
    assert isinstance(err, m.Error)  # it validated, so control characters were replaced


def test_roster_inconsistency_closes() -> None:
    client = ready_client()
    [closed] = client.receive_data(frames(m.UserLeft(99)), T0)
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.code == m.ErrorCode.ROSTER_INCONSISTENT


@pytest.mark.parametrize(
    ("label", "update"),
    [
        ("rename", m.UserInfo(9, "bob", b"c" * 32, channels=(m.Membership(1),))),
        ("new identity key", m.UserInfo(9, "cy", b"d" * 32, channels=(m.Membership(1),))),
        ("hide from every channel", m.UserInfo(9, "cy", b"c" * 32, channels=())),
        (
            "move into a channel",
            m.UserInfo(9, "cy", b"c" * 32, channels=(m.Membership(1), m.Membership(2))),
        ),
        ("speak right", m.UserInfo(9, "cy", b"c" * 32, channels=(m.Membership(1, False),))),
        ("unknown user", m.UserInfo(77, "zed", b"z" * 32, channels=(m.Membership(1),))),
    ],
)
def test_a_user_updated_that_rewrites_identity_or_memberships_closes(
    label: str, update: m.UserInfo
) -> None:
    """A name and identity key never change within a session, and memberships change only
    through the events the E2E layer sees: a relay that tries either is caught."""
    client = ready_client()
    newcomer = m.UserInfo(9, "cy", b"c" * 32, channels=(m.Membership(1),))
    client.receive_data(
        frames(m.UserJoined(newcomer), m.ChannelAdded(m.ChannelInfo(2, 1, "A"))), T0
    )
    events = client.receive_data(frames(m.UserUpdated(update)), T0)
    assert [type(e) for e in events] == [ev.ConnectionClosed], label
    assert events[0].code == m.ErrorCode.ROSTER_INCONSISTENT  # type: ignore[attr-defined]
    assert client.roster.users[9].name == "cy"  # nothing of it was applied


@pytest.mark.parametrize(
    "name", ["bob\u200b", "b\u043eb", "bob\u202e", "jose\u0301", "BOB", "\u0412\u041e\u0412"]
)
def test_invalid_or_look_alike_names_in_the_roster_close(name: str) -> None:
    """A relay cannot seat an invisible-character, mixed-script or confusable twin of a user
    nor a name that is not NFC."""
    client = ready_client()
    bob = m.UserInfo(10, "bob", b"b" * 32, channels=(m.Membership(1),))
    assert len(client.receive_data(frames(m.UserJoined(bob)), T0)) == 2  # joined + roster
    twin = m.UserInfo(9, name, b"t" * 32, channels=(m.Membership(1),))
    [closed] = client.receive_data(frames(m.UserJoined(twin)), T0)
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.code == m.ErrorCode.ROSTER_INCONSISTENT


def test_a_departed_sender_id_cannot_come_back() -> None:
    client = ready_client()
    again = m.UserInfo(9, "cy", b"c" * 32, channels=(m.Membership(1),))
    client.receive_data(frames(m.UserJoined(again), m.UserLeft(9)), T0)
    [closed] = client.receive_data(frames(m.UserJoined(again)), T0)
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.code == m.ErrorCode.ROSTER_INCONSISTENT


def test_our_own_name_is_checked_and_composed() -> None:
    with pytest.raises(LocalProtocolError, match="U\\+200B"):
        make_client("ann\u200b")
    assert make_client(" jose\u0301 ").name == "jos\u00e9"


def test_login_ok_without_ourselves_is_inconsistent() -> None:
    client = make_client("alice")
    client.start(T0)
    client.receive_data(frames(m.ServerHello("vc1", CHALLENGE, "srv", LIMITS)), T0)
    [closed] = client.receive_data(frames(m.LoginOk(7, HOP, 0, (LOBBY,), (OTHER,))), T0)
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.code == m.ErrorCode.ROSTER_INCONSISTENT


def test_roster_deltas_become_events() -> None:
    client = ready_client()
    newcomer = m.UserInfo(9, "cy", b"c" * 32, channels=(m.Membership(1),))
    published = m.UserInfo(
        9,
        "cy",
        b"c" * 32,
        sk_pub=b"P",
        skc=b"C",
        channels=(m.Membership(1), m.Membership(2, may_speak=False)),  # as they are now
    )
    events = client.receive_data(
        frames(
            m.UserJoined(newcomer),
            m.ChannelAdded(m.ChannelInfo(2, 1, "A")),
            m.MembershipChanged(9, 2, joined=True, may_speak=False),
            m.UserUpdated(published),
            m.ChannelUpdated(m.ChannelInfo(2, 1, "A2")),
            m.UserLeft(8, m.LeaveReason.TIMEOUT),
        ),
        T0,
    )
    kinds = [type(e) for e in events]
    assert kinds == [
        ev.UserJoined,
        ev.ChannelAdded,
        ev.MembershipChanged,
        ev.UserUpdated,
        ev.SessionKeyPublished,
        ev.ChannelUpdated,
        ev.UserLeft,
        ev.RosterChanged,  # once per batch, last
    ]
    assert events[4] == ev.SessionKeyPublished(9, b"P", b"C")
    left = events[6]
    assert isinstance(left, ev.UserLeft)
    assert (left.user.name, left.channels, left.reason) == (
        "other",
        frozenset({1}),
        m.LeaveReason.TIMEOUT,
    )
    roster = events[-1].roster  # type: ignore[attr-defined]
    assert set(roster.users) == {7, 9}
    assert roster.channels_of(9) == {1, 2}  # memberships change only through membership
    [removed] = [
        e
        for e in client.receive_data(frames(m.ChannelRemoved(2)), T0)
        if isinstance(e, ev.ChannelRemoved)
    ]
    assert removed.channel.name == "A2"


def test_deliveries_become_events() -> None:
    client = ready_client()
    events = client.receive_data(
        frames(
            m.KeyDistDelivery(8, 1, b"kd"),
            m.TextDelivery(8, 1, b"tx"),
            m.VoiceTunnel(b"\x01" * 50),
            m.Error(m.ErrorCode.CHANNEL_FULL, "full", channel_id=3),
        ),
        T0,
    )
    assert events == [
        ev.KeyDistReceived(8, 1, b"kd"),
        ev.TextReceived(8, 1, b"tx"),
        ev.VoiceTunnelReceived(b"\x01" * 50),
        ev.ServerError(m.ErrorCode.CHANNEL_FULL, "full", False, 3),
    ]
    assert client.state is ClientState.READY


def test_intents_only_when_ready() -> None:
    client = make_client("alice")
    with pytest.raises(LocalProtocolError):
        client.join(2)
    client.start(T0)
    with pytest.raises(LocalProtocolError):
        client.send_text(1, b"x")
    with pytest.raises(LocalProtocolError):
        client.start(T0)  # twice


def test_receive_before_start_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        make_client("alice").receive_data(b"x", T0)


def test_intents_encode_messages() -> None:
    client = ready_client()
    client.join(2, password="pw")
    client.leave(3)
    client.publish_session_key(b"P", b"C")
    client.send_keydist(2, [8, 9], b"kd")
    client.send_text(2, b"tx")
    client.send_voice_tunnel(b"\x01" * 46)
    client.set_voice_transport(True)
    client.set_self_state(muted=True, deafened=False)
    assert parse(client.data_to_send()) == [
        m.JoinChannel(2, "pw"),
        m.LeaveChannel(3),
        m.PublishSessionKey(b"P", b"C"),
        m.KeyDist(2, (8, 9), b"kd"),
        m.Text(2, b"tx"),
        m.VoiceTunnel(b"\x01" * 46),
        m.SetVoiceTransport(True),
        m.SetSelfState(True, False),
    ]


def test_bad_intent_arguments_are_local_errors() -> None:
    client = ready_client()
    with pytest.raises(LocalProtocolError) as info:
        client.send_voice_tunnel(b"x" * 1201)
    assert info.value.field == "datagram"
    with pytest.raises(LocalProtocolError) as info:
        client.send_keydist(1, [], b"x")
    assert info.value.field == "recipients"
    with pytest.raises(LocalProtocolError):
        client.join(0)
    assert client.data_to_send() == b""
    assert client.state is ClientState.READY


def test_bad_constructor_arguments() -> None:
    assert make_client(" spaced ").name == "spaced"  # the ends are stripped, as typed
    with pytest.raises(LocalProtocolError):
        make_client("in\u200bvisible")
    with pytest.raises(LocalProtocolError):
        ClientSession("x", b"short", lambda b: bytes(64))
    with pytest.raises(LocalProtocolError):
        make_client("alice", ping_interval=0)


def test_ping_rtt_and_loss() -> None:
    client = ready_client()
    assert client.get_timer() == T0 + 5.0
    assert client.handle_timer(T0 + 4.0) == []
    assert client.data_to_send() == b""
    client.report_udp_stats(sent=100, received=200, lost=0, rtt_ms=1.0, jitter_ms=2.0)
    assert client.handle_timer(T0 + 5.0) == []
    [ping] = parse(client.data_to_send())
    assert isinstance(ping, m.Ping)
    assert ping.client_time_ms == int((T0 + 5.0) * 1000)
    assert ping.udp == m.UdpStats(100, 200, 0, 1.0, 2.0)
    [stats] = client.receive_data(frames(m.Pong(ping.seq, ping.client_time_ms, 90)), T0 + 5.040)
    assert isinstance(stats, ev.PingStats)
    assert stats.rtt_ms == pytest.approx(40.0)
    assert stats.srtt_ms == pytest.approx(40.0)
    assert stats.udp_loss_up == pytest.approx(0.10)  # 90 of 100 arrived
    assert stats.udp_loss_down == pytest.approx(0.0)
    assert (stats.pings_sent, stats.pongs_received) == (1, 1)

    assert client.get_timer() == pytest.approx(T0 + 10.0)
    client.report_udp_stats(sent=200, received=280, lost=20)
    client.handle_timer(T0 + 10.0)
    [ping2] = parse(client.data_to_send())
    assert isinstance(ping2, m.Ping)
    [stats2] = client.receive_data(frames(m.Pong(ping2.seq, 0, 190)), T0 + 10.020)
    assert isinstance(stats2, ev.PingStats)
    assert stats2.rtt_ms == pytest.approx(20.0)
    assert stats2.srtt_ms == pytest.approx(0.875 * 40 + 0.125 * 20)
    assert stats2.udp_loss_up == pytest.approx(0.0)  # 100 sent, 100 more arrived
    assert stats2.udp_loss_down == pytest.approx(0.2)  # 80 received + 20 lost
    # A Pong nobody asked for is ignored.
    assert client.receive_data(frames(m.Pong(ping2.seq, 0, 0)), T0 + 11) == []


def test_no_pong_for_30_s_times_out() -> None:
    client = ready_client()
    now = T0
    events: list[ev.ClientEvent] = []
    while not events:
        now = client.get_timer() or now
        events = client.handle_timer(now)
        # The server keeps sending other data, but never a Pong.
        client.receive_data(frames(m.VoiceTunnel(b"x")), now)
    assert now == pytest.approx(T0 + 30.0)
    [closed] = events
    assert isinstance(closed, ev.ConnectionClosed)
    assert (closed.reason, closed.code) == (ev.CloseReason.TIMEOUT, m.ErrorCode.TIMEOUT)
    *_, err = parse(client.data_to_send())
    assert isinstance(err, m.Error) and err.code == m.ErrorCode.TIMEOUT and err.fatal
    assert client.get_timer() is None


def test_handshake_timeout() -> None:
    client = make_client("alice")
    client.start(T0)
    assert client.get_timer() == T0 + 30.0
    [closed] = client.handle_timer(T0 + 30.0)
    assert isinstance(closed, ev.ConnectionClosed) and closed.reason is ev.CloseReason.TIMEOUT


def test_orderly_close() -> None:
    client = ready_client()
    client.close("done", now=T0 + 1)
    [bye] = parse(client.data_to_send())
    assert bye == m.Bye("done")
    assert client.state is ClientState.CLOSING
    client.close()  # idempotent
    assert client.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        client.send_text(1, b"x")
    # Late traffic is discarded; the server's Bye ends it.
    assert client.receive_data(frames(m.TextDelivery(8, 1, b"x")), T0 + 1.1) == []
    assert client.receive_data(frames(m.Bye()), T0 + 1.2) == [
        ev.ConnectionClosed(ev.CloseReason.LOCAL_CLOSE)
    ]
    assert client.state is ClientState.CLOSED  # type: ignore[comparison-overlap]


def test_close_without_answer_times_out() -> None:
    client = ready_client()
    client.close(now=T0 + 1)
    assert client.get_timer() == T0 + 6.0
    [closed] = client.handle_timer(T0 + 6.0)
    assert isinstance(closed, ev.ConnectionClosed) and closed.reason is ev.CloseReason.LOCAL_CLOSE


def test_close_before_start() -> None:
    client = make_client("alice")
    client.close()
    assert client.state is ClientState.CLOSED
    assert client.data_to_send() == b""


def test_shutdown_and_bye_from_server() -> None:
    client = ready_client()
    events = client.receive_data(frames(m.ServerShutdown("maintenance", 5000)), T0)
    assert events == [
        ev.ServerShuttingDown("maintenance", 5000),
        ev.ConnectionClosed(ev.CloseReason.SHUTDOWN, message="maintenance"),
    ]
    client = ready_client()
    assert client.receive_data(frames(m.Bye("later")), T0) == [
        ev.ConnectionClosed(ev.CloseReason.PEER_BYE, message="later")
    ]


def test_connection_lost() -> None:
    client = ready_client()
    [closed] = client.connection_lost(T0)
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.reason is ev.CloseReason.CONNECTION_LOST
    assert client.connection_lost(T0) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_arbitrary_bytes_never_escape_the_client(chunks: list[bytes]) -> None:
    client = ready_client()
    for chunk in chunks:
        for event in client.receive_data(chunk, T0):
            if isinstance(event, ev.ConnectionClosed):
                assert client.state is ClientState.CLOSED


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data())
def test_random_valid_messages_never_escape_the_client(data: st.DataObject) -> None:
    client = ready_client()
    kinds = st.sampled_from(get_args(m.ServerMessage)).flatmap(struct_strategy)
    for msg in data.draw(st.lists(kinds, max_size=8)):
        events = client.receive_data(frames(msg), T0)
        closed = [e for e in events if isinstance(e, ev.ConnectionClosed)]
        assert len(closed) <= 1
        assert (client.state is ClientState.CLOSED) == bool(closed) or not events


def test_admin_intent_and_notice() -> None:
    client = ready_client()
    client.admin("kick", 8, reason="spam")
    client.admin(m.AdminOp.BAN, 8)
    client.admin("Move", 8, channel_id=2)
    client.admin(3, 8, 2)  # a plain int is taken as an AdminOp value
    assert parse(client.data_to_send()) == [
        m.AdminAction(m.AdminOp.KICK, 8, reason="spam"),
        m.AdminAction(m.AdminOp.BAN, 8),
        m.AdminAction(m.AdminOp.MOVE, 8, 2),
        m.AdminAction(m.AdminOp.MOVE, 8, 2),
    ]
    for bad in (
        lambda: client.admin("promote", 8),
        lambda: client.admin(9, 8),
        lambda: client.admin("move", 8),  # a move needs a channel
        lambda: client.admin("kick", 8, channel_id=2),  # and only a move has one
        lambda: client.admin("kick", 0),
    ):
        with pytest.raises(LocalProtocolError):
            bad()
    assert client.data_to_send() == b""
    events = client.receive_data(
        frames(m.AdminNotice(m.AdminOp.MOVE, by=8, target=7, channel_id=2, reason="here")), T0
    )
    assert events == [ev.AdminNoticeReceived(m.AdminOp.MOVE, 8, 7, 2, "here")]
    assert client.state is ClientState.READY
    with pytest.raises(LocalProtocolError):
        make_client("bob").admin("kick", 8)  # not READY
