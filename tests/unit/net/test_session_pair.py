"""Real ClientSessions wired to one ServerCore in memory, with a fake clock, the byte stream
optionally cut into random chunks."""

from __future__ import annotations

import pytest

from voipclient.crypto import keydist
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.client import ClientSession
from voipclient.net.frames import encode_frame
from voipclient.net.states import ClientState
from voipclient.server.control import ChannelConfig, ServerConfig

from ._harness import Net, Peer, identity, real_keydist

A, B, C = 2, 3, 4
CONFIG = ServerConfig(
    server_name="test-server",
    udp_port=6000,
    channels=(ChannelConfig(A, "A"), ChannelConfig(B, "B"), ChannelConfig(C, "C")),
)


@pytest.fixture(params=[False, True], ids=["whole", "chunked"])
def net(request: pytest.FixtureRequest) -> Net:
    return Net(CONFIG, chunked=request.param)


def trio(net: Net) -> tuple[Peer, Peer, Peer]:
    return net.connect("user1"), net.connect("user2"), net.connect("user3")


def closed_event(peer: Peer) -> ev.ConnectionClosed:
    [closed] = peer.of(ev.ConnectionClosed)
    return closed


def test_login_and_negotiation(net: Net) -> None:
    p = net.connect("alice")
    [neg] = p.of(ev.Negotiated)
    assert (neg.version, neg.server_name, neg.password_required) == ("vc1", "test-server", False)
    [logged] = p.of(ev.LoggedIn)
    assert logged.sender_id == 1 and logged.udp_port == 6000 and len(logged.hop_secret) == 32
    assert logged.roster.channels_of(1) == {1}  # everyone starts in the Lobby
    assert set(logged.roster.channels) == {1, A, B, C}
    [auth] = net.server_of(ev.SessionAuthenticated)
    assert auth.hop_secret == logged.hop_secret and auth.sender_id == 1
    assert p.client.state is ClientState.READY


def test_version_mismatch_is_a_clean_error(net: Net) -> None:
    p = net.connect("alice", versions=("vc9",))
    [err] = p.of(ev.ServerError)
    assert err.code == m.ErrorCode.UNSUPPORTED_VERSION and err.fatal
    assert closed_event(p).reason is ev.CloseReason.PEER_ERROR
    [closed] = net.server_of(ev.SessionClosed)
    assert closed.reason is ev.CloseReason.LOGIN_FAILED
    assert not p.transport_open


def test_wrong_server_password() -> None:
    net = Net(ServerConfig(password="letmein"))
    bad = net.connect("alice", password="guess")
    [err] = bad.of(ev.ServerError)
    assert err.code == m.ErrorCode.WRONG_PASSWORD
    assert closed_event(bad).code == m.ErrorCode.WRONG_PASSWORD
    none = net.connect("bob")
    assert none.of(ev.ServerError)[0].code == m.ErrorCode.WRONG_PASSWORD
    good = net.connect("carol", password="letmein")
    assert good.of(ev.LoggedIn)
    # Refused logins never entered the roster (nor used up a sender id).
    assert {u.name for u in good.client.roster.users.values()} == {"carol"}
    assert good.sender_id == 1


def test_bad_login_signature(net: Net) -> None:
    _, pub = identity("alice")
    impostor_key, _ = identity("mallory")
    p = net.attach(ClientSession("alice", pub, impostor_key.sign))
    [err] = p.of(ev.ServerError)
    assert err.code == m.ErrorCode.BAD_SIGNATURE
    assert closed_event(p).reason is ev.CloseReason.PEER_ERROR
    assert net.server.roster.users == {}


def test_name_bound_to_another_key(net: Net) -> None:
    owner = net.connect("alice")
    thief = net.connect("Alice", key_label="not alice")
    [err] = thief.of(ev.ServerError)
    assert err.code == m.ErrorCode.NAME_TAKEN
    assert owner.client.state is ClientState.READY
    assert [e for e in owner.events if isinstance(e, ev.UserJoined)] == []


def test_reconnect_with_same_key_replaces_session(net: Net) -> None:
    old, other = net.connect("alice"), net.connect("bob")
    new = net.connect("alice")
    assert new.of(ev.LoggedIn)[0].sender_id == 3
    assert old.of(ev.ServerError)[0].code == m.ErrorCode.SESSION_REPLACED
    assert closed_event(old).reason is ev.CloseReason.PEER_ERROR
    [left] = other.of(ev.UserLeft)
    assert left.user.sender_id == 1 and left.reason == m.LeaveReason.REPLACED
    assert {u.name for u in other.client.roster.users.values()} == {"alice", "bob"}


def test_roster_sync_three_users(net: Net) -> None:
    p1, p2, p3 = trio(net)
    expected = net.server.roster
    for p in (p1, p2, p3):
        assert p.client.roster == expected
        assert {u.name for u in p.client.roster.users.values()} == {"user1", "user2", "user3"}
    assert [e.user.name for e in p1.of(ev.UserJoined)] == ["user2", "user3"]
    assert p1.of(ev.RosterChanged)[-1].roster == expected


def test_overlapping_multi_channel_joins(net: Net) -> None:
    p1, p2, p3 = trio(net)
    for peer, chans in ((p1, (A, B)), (p2, (B, C)), (p3, (A, C))):
        for ch in chans:
            peer.client.join(ch)
    net.pump()
    s1, s2, s3 = p1.sender_id, p2.sender_id, p3.sender_id
    for p in (p1, p2, p3):
        roster = p.client.roster
        assert roster == net.server.roster
        assert roster.channels_of(s1) == {1, A, B}
        assert roster.channels_of(s2) == {1, B, C}
        assert roster.channels_of(s3) == {1, A, C}
        assert roster.members(A) == {s1, s3}
        assert roster.members(B) == {s1, s2}
        assert roster.members(C) == {s2, s3}
        assert len(p.of(ev.MembershipChanged)) == 6
    assert net.server.may_speak(s1, A) and net.server.may_speak(s1, B)
    assert not net.server.may_speak(s1, C)
    assert net.server.listeners(A, exclude=s1) == {s3}
    # Leaving one channel keeps the others.
    p1.client.leave(A)
    net.pump()
    for p in (p1, p2, p3):
        assert p.client.roster.channels_of(s1) == {1, B}


def test_join_failure_is_a_server_error() -> None:
    cfg = ServerConfig(channels=(ChannelConfig(A, "A", password="pw"),))
    net = Net(cfg)
    p = net.connect("alice")
    p.client.join(A, password="wrong")
    p.client.join(99)
    net.pump()
    assert [(e.code, e.channel_id, e.fatal) for e in p.of(ev.ServerError)] == [
        (m.ErrorCode.WRONG_CHANNEL_PASSWORD, A, False),
        (m.ErrorCode.NO_SUCH_CHANNEL, 99, False),
    ]
    p.client.join(A, password="pw")
    net.pump()
    assert p.client.roster.channels_of(p.sender_id) == {1, A}


def test_keydist_only_to_named_recipients(net: Net) -> None:
    p1, p2, p3 = trio(net)
    p4 = net.connect("user4")
    for p in (p1, p2, p3, p4):
        p.client.join(A)
    net.pump()
    blob = real_keydist(p1.sender_id, A, [p2.sender_id, p4.sender_id])
    parts = keydist.split_for_recipients(blob)
    p1.client.send_keydist(A, [p2.sender_id, p4.sender_id], blob)
    net.pump()
    assert p2.of(ev.KeyDistReceived) == [ev.KeyDistReceived(p1.sender_id, A, parts[p2.sender_id])]
    assert p4.of(ev.KeyDistReceived) == [ev.KeyDistReceived(p1.sender_id, A, parts[p4.sender_id])]
    assert p3.of(ev.KeyDistReceived) == []
    assert p1.of(ev.KeyDistReceived) == []


def test_text_to_members_except_sender(net: Net) -> None:
    p1, p2, p3 = trio(net)
    p1.client.join(B)
    p2.client.join(B)
    net.pump()
    p1.client.send_text(B, b"ciphertext")
    net.pump()
    assert p2.of(ev.TextReceived) == [ev.TextReceived(p1.sender_id, B, b"ciphertext")]
    assert p1.of(ev.TextReceived) == []
    assert p3.of(ev.TextReceived) == []  # not a member of B
    p3.client.send_text(B, b"intruder")
    net.pump()
    [err] = p3.of(ev.ServerError)
    assert err.code == m.ErrorCode.NOT_MEMBER and not err.fatal
    assert p1.of(ev.TextReceived) == p3.of(ev.TextReceived) == []
    assert p3.client.state is ClientState.READY


def test_ping_rtt_and_loss(net: Net) -> None:
    p1, p2, _ = trio(net)
    # 40 ms one way for p1's ping: the clock moves between sending and the answer.
    due = p1.client.get_timer()
    assert due is not None
    net.now = due
    p1.client.report_udp_stats(sent=100, received=0, lost=0)
    p1.client.handle_timer(net.now)
    net.server.note_udp_received(p1.sender_id, 95)
    net.now += 0.040
    net.pump()
    [stats] = p1.of(ev.PingStats)
    assert stats.rtt_ms == pytest.approx(40.0)
    assert stats.udp_received_by_server == 95
    assert stats.udp_loss_up == pytest.approx(0.05)
    # Over a minute every client keeps pinging every 5 s and nobody times out.
    net.advance(60)
    assert len(p2.of(ev.PingStats)) >= 12
    assert all(p.client.state is ClientState.READY for p in net.peers.values())
    assert net.server_of(ev.SessionClosed) == []


def test_idle_timeout_closes_a_silent_session(net: Net) -> None:
    p1, p2, p3 = trio(net)
    # A fourth client keeps its transport open but sends nothing: it never pings.
    silent = net.connect("quiet", ping_interval=1000.0, timeout=1000.0)
    net.advance(31)
    [err] = silent.of(ev.ServerError)
    assert err.code == m.ErrorCode.TIMEOUT and err.fatal
    assert closed_event(silent).reason is ev.CloseReason.PEER_ERROR
    [closed] = net.server_of(ev.SessionClosed)
    assert closed.reason is ev.CloseReason.TIMEOUT and closed.sender_id == silent.sender_id
    for p in (p1, p2, p3):
        assert p.client.state is ClientState.READY
        [left] = p.of(ev.UserLeft)
        assert left.user.name == "quiet" and left.reason == m.LeaveReason.TIMEOUT


def test_client_times_out_a_dead_server(net: Net) -> None:
    p = net.connect("alice")
    # The server stops answering: bytes from the client vanish.
    p.transport_open = False
    now = net.now
    events: list[ev.ClientEvent] = []
    while not events:
        due = p.client.get_timer()
        assert due is not None
        now = due
        events = p.client.handle_timer(now)
    assert isinstance(events[0], ev.ConnectionClosed)
    assert events[0].reason is ev.CloseReason.TIMEOUT
    assert now == pytest.approx(net.now + 30.0)


def test_rate_limit_closes_only_the_offender(net: Net) -> None:
    p1, p2, p3 = trio(net)
    # A hostile client that ignores the announced limit (ours paces itself: see below).
    flood = b"".join(
        encode_frame(m.encode(m.SetSelfState(muted=k % 2 == 0, deafened=False)))
        for k in range(120)  # far beyond the 40-message burst, all at the same instant
    )
    net.to_server(p1, flood)
    net.pump()
    [err] = p1.of(ev.ServerError)
    assert err.code == m.ErrorCode.RATE_LIMITED
    assert p1.client.state is ClientState.CLOSED
    [closed] = net.server_of(ev.SessionClosed)
    assert closed.reason is ev.CloseReason.RATE_LIMITED
    # The others keep working.
    p2.client.join(A)
    p3.client.join(A)
    net.pump()
    p2.client.send_text(A, b"still here")
    net.pump()
    assert p3.of(ev.TextReceived) == [ev.TextReceived(p2.sender_id, A, b"still here")]
    assert p1.sender_id not in p2.client.roster.users


def test_our_client_paces_itself_under_the_announced_limit(net: Net) -> None:
    """120 messages at one instant (a client rejoining beside many others hands its keys to
    every newcomer at once): the first half-burst goes out, the rest waits in order and leaves
    as the pace allows, and the server never closes the session."""
    p1, p2, _ = trio(net)
    limits = p1.client.limits
    assert limits is not None and (limits.rate_per_s, limits.rate_burst) == (20.0, 40)
    p1.client.join(A)
    p2.client.join(A)
    net.pump()
    for k in range(120):
        p1.client.set_self_state(muted=k % 2 == 0, deafened=False)
    held = p1.client.held_messages
    assert 120 - held == 20 - 2  # half the burst, less the Login and the join
    start = net.now
    net.pump()
    while p1.client.held_messages:
        due = p1.client.get_timer()
        assert due is not None and due > net.now  # nothing is due early
        net.now = due
        p1.events += p1.client.handle_timer(net.now)
        net.pump()
    # The rest at 0.9 x 20/s, never faster than the server allows.
    assert net.now - start == pytest.approx(held / 18, abs=0.1)
    assert p1.client.state is ClientState.READY and p1.of(ev.ServerError) == []
    assert net.server_of(ev.SessionClosed) == []
    # In order: the last state announced is the one everyone sees.
    assert p2.client.roster.users[p1.sender_id].muted is False


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x10\x00\x01" + b"x" * 100,  # announces 1 MiB + 1
        b"\x00\x00\x00\x00",
        encode_frame(b"\x92\x01\x02"),  # msgpack, but not a message
        encode_frame(m.encode(m.Pong(1, 1))),  # a server-only message
        encode_frame(m.encode(m.Login("x", b"k" * 32, b"s" * 64))),  # wrong state
    ],
    ids=["oversized", "empty", "not-a-message", "wrong-direction", "wrong-state"],
)
def test_garbage_closes_only_that_session(net: Net, garbage: bytes) -> None:
    p1, p2, p3 = trio(net)
    net.to_server(p1, garbage)
    net.pump()
    [err] = p1.of(ev.ServerError)
    assert err.fatal and err.code in (
        m.ErrorCode.FRAME_TOO_LARGE,
        m.ErrorCode.FRAME_EMPTY,
        m.ErrorCode.MALFORMED_MESSAGE,
        m.ErrorCode.UNEXPECTED_MESSAGE,
    )
    assert p1.client.state is ClientState.CLOSED
    [closed] = net.server_of(ev.SessionClosed)
    assert closed.reason is ev.CloseReason.PROTOCOL_ERROR
    for p in (p2, p3):
        assert p.client.state is ClientState.READY
        assert set(p.client.roster.users) == {p2.sender_id, p3.sender_id}
    p2.client.send_text(1, b"lobby")
    net.pump()
    assert p3.of(ev.TextReceived) == [ev.TextReceived(p2.sender_id, 1, b"lobby")]


def test_tunnelled_voice_surfaced_and_relayed(net: Net) -> None:
    p1, p2, p3 = trio(net)
    for p in (p1, p2):
        p.client.join(A)
    p2.client.set_voice_transport(True)
    net.pump()
    assert net.server_of(ev.VoiceTransportChanged) == [
        ev.VoiceTransportChanged(p2.conn_id, p2.sender_id, True)
    ]
    datagram = b"\x01\x01" + bytes(60)
    p1.client.send_voice_tunnel(datagram)
    net.pump()
    [voice] = net.server_of(ev.VoiceFromTunnel)
    assert voice == ev.VoiceFromTunnel(p1.conn_id, p1.sender_id, datagram)
    # What the relay adapter would do: ACL check, then fan out to tunnelling listeners.
    assert net.server.may_speak(voice.sender_id, A)
    for listener in net.server.listeners(A, exclude=voice.sender_id):
        info = net.server.session_by_sender_id(listener)
        assert info is not None and info.voice_tunnel
        net.server.send_voice_tunnel(info.conn_id, voice.datagram)
    net.pump()
    assert p2.of(ev.VoiceTunnelReceived) == [ev.VoiceTunnelReceived(datagram)]
    assert p3.of(ev.VoiceTunnelReceived) == []


def test_session_key_publication(net: Net) -> None:
    p1, p2, _ = trio(net)
    p1.client.publish_session_key(b"K" * 1216, b"S" * 72)
    net.pump()
    assert p2.of(ev.SessionKeyPublished) == [
        ev.SessionKeyPublished(p1.sender_id, b"K" * 1216, b"S" * 72)
    ]
    assert p2.client.roster.users[p1.sender_id].sk_pub == b"K" * 1216
    # A newcomer sees the published key in its initial roster.
    late = net.connect("late")
    assert late.client.roster.users[p1.sender_id].skc == b"S" * 72


def test_large_roster_arrives_in_pages() -> None:
    net = Net(ServerConfig(max_sessions=100))
    for i in range(60):
        p = net.connect(f"u{i}")
        p.client.publish_session_key(b"K" * 1216, b"S" * 72)
        net.pump()
    late = net.connect("late")
    [logged] = late.of(ev.LoggedIn)
    assert len(logged.roster.users) == 61
    assert logged.roster == net.server.roster


def test_orderly_close(net: Net) -> None:
    p1, p2, _ = trio(net)
    p1.client.close("bye all")
    net.pump()
    assert closed_event(p1) == ev.ConnectionClosed(ev.CloseReason.LOCAL_CLOSE)
    [left] = p2.of(ev.UserLeft)
    assert left.reason == m.LeaveReason.QUIT
    [closed] = net.server_of(ev.SessionClosed)
    assert closed.reason is ev.CloseReason.PEER_BYE and closed.message == "bye all"


def test_server_shutdown_reaches_all_clients(net: Net) -> None:
    peers = trio(net)
    net.server.shutdown("maintenance", net.now, reconnect_after_ms=10_000)
    net.pump()
    for p in peers:
        assert p.of(ev.ServerShuttingDown) == [ev.ServerShuttingDown("maintenance", 10_000)]
        assert closed_event(p).reason is ev.CloseReason.SHUTDOWN
        assert p.of(ev.UserLeft) == []  # no departures announced during a shutdown
        assert not p.transport_open
    assert len(net.server_of(ev.SessionClosed)) == 3


def test_transport_loss_is_announced(net: Net) -> None:
    p1, p2, _ = trio(net)
    p1.transport_open = False
    net.server.connection_lost(p1.conn_id, net.now)
    net.pump()
    [left] = p2.of(ev.UserLeft)
    assert left.user.sender_id == p1.sender_id and left.reason == m.LeaveReason.DISCONNECTED
    assert left.channels == {1}


def test_deterministic_given_the_seed() -> None:
    def run() -> tuple[bytes, ...]:
        net = Net(CONFIG, seed=7, chunked=True)
        peers = trio(net)
        return tuple(p.of(ev.LoggedIn)[0].hop_secret for p in peers)

    assert run() == run()


def test_core_imports_no_io_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for mod in ('PySide6', 'sounddevice', 'pynput', 'asyncio', 'socket', 'threading'):\n"
        "    sys.modules[mod] = None\n"
        "import voipclient.net.client, voipclient.server.control\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
