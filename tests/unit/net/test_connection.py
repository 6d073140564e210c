"""ClientConnection against a real ServerCore + RelayCore, in memory, with a fake clock.

Everything a client adapter relied on a real relay to test (pin answers, the UDP hop handshake,
UDP ↔ tunnel switching, reconnect and restore, stale verification, loss-adaptive redundancy)
runs here in milliseconds: ``_relay_world.World`` moves bytes and datagrams and fires only the
timers the cores ask for.
"""

from __future__ import annotations

import struct

import pytest

from tests.unit.net._relay_world import HOST, OTHER_PIN, PIN, PORT, Client, World
from voipclient.audio.redundancy import COPY_BITRATE, LEVEL_CLEAN, LEVEL_LIGHT, LossReport
from voipclient.crypto.identity import IdentityKey
from voipclient.errors import LocalProtocolError
from voipclient.net import connection as cn
from voipclient.net import e2ee
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net import supervisor as sv
from voipclient.net.frames import FrameDecoder
from voipclient.net.states import (
    CONNECTION_TRANSITIONS,
    ConnectionState,
    ConnectionTrigger,
    next_connection_state,
)
from voipclient.server.control import ChannelConfig, ServerConfig

S = ConnectionState
GAME, SECRET = 2, 3
CONFIG = ServerConfig(
    udp_port=PORT,
    channels=(
        ChannelConfig(id=GAME, name="Game"),
        ChannelConfig(id=SECRET, name="Secret", password="hunter2"),
    ),
)
SUP = sv.SupervisorConfig()  # the delays the connection runs with (jitter aside)


def payload(frame_no: int) -> bytes:
    """A voice payload: frame_no (u32), then bytes standing in for Opus."""
    return struct.pack(">I", frame_no) + bytes(40)


def state(c: Client) -> ConnectionState:
    """The connection's state (a call, so type checkers don't narrow it across actions)."""
    return c.conn.state


def states(c: Client) -> list[ConnectionState]:
    return [e.state for e in c.of(cn.StateChanged)]


def assert_transports_balanced(c: Client) -> None:
    """Every OpenTransport is closed exactly once; only the current one may still be open."""
    opened = [e.generation for e in c.of(cn.OpenTransport)]
    closed = [e.generation for e in c.of(cn.CloseTransport)]
    assert len(set(closed)) == len(closed), closed
    assert set(closed) <= set(opened)
    assert len(set(opened) - set(closed)) <= 1


def assert_early_timer_is_harmless(w: World, c: Client) -> None:
    """While anything is pending there is a deadline, and firing before it changes nothing."""
    due = c.conn.get_timer()
    assert due is not None
    assert due > w.now
    for early in (w.now - 5.0, w.now, (w.now + due) / 2):
        if early < due:
            c.conn.handle_timer(early)
            assert c.conn.next_event() is None
            assert c.conn.data_to_send() == b""
            assert c.conn.datagrams_to_send() == []
    assert c.conn.get_timer() == due


def two_in_game(w: World) -> tuple[Client, Client]:
    a, b = w.add("alice"), w.add("bob")
    w.join(a, GAME)
    w.join(b, GAME)
    w.advance(1.0)  # key distribution settles
    return a, b


def heard_from(c: Client, speaker: Client) -> list[cn.VoiceReceived]:
    return [v for v in c.heard if v.frame.sender_id == speaker.sid]


# -- the transition table ----------------------------------------------------------------------


def test_table_happy_path_and_refusals() -> None:
    t = ConnectionTrigger
    path = [
        (S.IDLE, t.OPEN_TRANSPORT, S.CONNECTING),
        (S.CONNECTING, t.PIN_UNKNOWN, S.AWAITING_PIN_APPROVAL),
        (S.AWAITING_PIN_APPROVAL, t.PIN_APPROVED, S.LOGGING_IN),
        (S.LOGGING_IN, t.LOGGED_IN, S.READY),
        (S.READY, t.LOST, S.WAITING),
        (S.WAITING, t.OPEN_TRANSPORT, S.CONNECTING),
        (S.CONNECTING, t.PIN_REFUSED, S.REFUSED),
        (S.REFUSED, t.STOPPED, S.REFUSED),
        (S.REFUSED, t.OPEN_TRANSPORT, S.CONNECTING),
        (S.CONNECTING, t.STOPPED, S.CLOSED),
    ]
    for state, trigger, expected in path:
        assert next_connection_state(state, trigger) is expected
    with pytest.raises(LocalProtocolError):
        next_connection_state(S.READY, t.PIN_APPROVED)
    with pytest.raises(LocalProtocolError):
        next_connection_state(S.IDLE, t.LOGGED_IN)
    # Every state is reachable, and nothing leaves IDLE but a connection attempt.
    reached = {target for row in CONNECTION_TRANSITIONS.values() for target in row.values()}
    assert reached | {S.IDLE} == set(ConnectionState)
    assert set(CONNECTION_TRANSITIONS[S.IDLE]) == {t.OPEN_TRANSPORT}


# -- the pin verdict ---------------------------------------------------------------------------


def test_first_contact_asks_and_sends_nothing_before_approval() -> None:
    w = World(CONFIG)
    a = w.add("alice", expected_pin=None)
    assert state(a) is S.AWAITING_PIN_APPROVAL
    assert states(a) == [S.CONNECTING, S.AWAITING_PIN_APPROVAL]
    assert a.of(cn.PinApprovalNeeded) == [cn.PinApprovalNeeded(HOST, PORT, PIN)]
    cid = a.conn_id
    assert cid is not None
    assert_early_timer_is_harmless(w, a)
    w.advance(5.0)  # the user thinks; the connect timeout is paused meanwhile
    assert state(a) is S.AWAITING_PIN_APPROVAL
    assert w.bytes_to_server[cid] == 0  # not one application byte
    assert a.conn.data_to_send() == b""

    a.conn.approve_pin(PIN, True, w.now)
    w.settle()
    assert state(a) is S.READY
    assert a.conn.expected_pin == PIN
    (store,) = a.of(cn.StorePin)
    assert (store.host, store.port, store.pin) == (HOST, PORT, PIN)
    assert store.approved_ms == int(w.wall() * 1000)
    assert w.bytes_to_server[cid] > 0
    assert states(a)[-2:] == [S.LOGGING_IN, S.READY]


def test_wrong_pin_is_refused_before_any_application_byte() -> None:
    w = World(CONFIG)
    a = w.add("alice", expected_pin=PIN, presented_pin=OTHER_PIN)
    assert state(a) is S.REFUSED
    assert OTHER_PIN in a.conn.detail and PIN in a.conn.detail
    (close,) = a.of(cn.CloseTransport)
    assert close.abort and close.data == b""
    assert w.bytes_to_server == {1: 0}
    (stopped,) = a.of(sv.Stopped)
    assert stopped.reason is sv.StopReason.PIN_REFUSED
    assert a.conn.get_timer() is None  # no reconnect, nothing pending
    w.advance(120.0)
    assert len(a.of(cn.OpenTransport)) == 1
    assert_transports_balanced(a)
    # The user may connect again (after the operator confirmed the new key).
    a.presented_pin = PIN
    a.conn.connect(HOST, PORT, PIN, w.now)
    w.settle()
    assert state(a) is S.READY


@pytest.mark.parametrize(("presented", "answer"), [(PIN, False), (None, None)])
def test_rejected_or_missing_certificate_is_refused(
    presented: str | None, answer: bool | None
) -> None:
    w = World(CONFIG)
    a = w.add("alice", expected_pin=None, presented_pin=presented)
    if answer is not None:
        a.conn.approve_pin(PIN, answer, w.now)
        w.settle()
    assert state(a) is S.REFUSED
    assert w.bytes_to_server == {1: 0}
    assert a.of(cn.CloseTransport)[-1].abort
    assert a.of(sv.Stopped)[-1].reason is sv.StopReason.PIN_REFUSED


def test_approval_of_a_stale_pin_is_ignored() -> None:
    w = World(CONFIG)
    a = w.add("alice", expected_pin=None)
    a.conn.approve_pin(OTHER_PIN, True, w.now)  # not the pin that was shown
    w.settle()
    assert state(a) is S.AWAITING_PIN_APPROVAL
    assert not a.of(cn.StorePin)

    # The user does not answer; the server gives up on the silent connection, we reconnect,
    # and this time the server presents another key.
    a.presented_pin = OTHER_PIN
    w.advance(CONFIG.login_timeout + SUP.backoff_base + 0.5)
    assert len(a.of(cn.OpenTransport)) == 2
    assert state(a) is S.AWAITING_PIN_APPROVAL
    assert a.of(cn.PinApprovalNeeded)[-1].pin == OTHER_PIN
    # The late answer about the first key must not approve the second one.
    a.conn.approve_pin(PIN, True, w.now)
    w.settle()
    assert state(a) is S.AWAITING_PIN_APPROVAL
    assert not a.of(cn.StorePin)
    assert all(n == 0 for n in w.bytes_to_server.values())
    # An answer outside the question is ignored too.
    b = w.add("bob")
    b.conn.approve_pin(PIN, False, w.now)
    w.settle()
    assert state(b) is S.READY
    assert_transports_balanced(a)


# -- UDP, the tunnel and voice -----------------------------------------------------------------


def test_udp_bind_then_voice_reaches_the_other_member() -> None:
    w = World(CONFIG)
    a, b = two_in_game(w)
    for c in (a, b):
        assert c.conn.udp_bound and c.conn.transport is cn.VoiceTransport.UDP
        assert w.relay.address_of(c.sid) == c.addr  # BIND → CHALLENGE → BIND_CONFIRM → BIND_OK
        assert c.of(cn.OpenUdp) == [cn.OpenUdp(HOST, PORT, 1)]
    sent_before = a.udp_datagrams_sent
    w.talk(a, [GAME], payload(7))
    assert a.udp_datagrams_sent == sent_before + 1
    (voice,) = heard_from(b, a)
    assert voice.route is cn.VoiceRoute.UDP
    assert (voice.frame.channel_id, voice.frame.payload) == (GAME, payload(7))
    w.talk(a, [GAME], payload(8), last=True)
    assert heard_from(b, a)[-1].frame.last
    assert w.relay.stats()["copies_udp"] == 2
    assert not heard_from(a, a)  # the relay never echoes


def test_hop_keys_are_derived_once_per_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """The E2E layer derives the hop keys from the hop secret; the connection core signs its
    BIND/PING datagrams with those same MACs instead of deriving them a second time."""
    derived: list[bytes] = []
    real = e2ee.derive_hop_keys

    def counting(hop_secret: bytes) -> tuple[bytes, bytes]:
        derived.append(hop_secret)
        return real(hop_secret)

    monkeypatch.setattr(e2ee, "derive_hop_keys", counting)
    w = World(CONFIG)
    a, b = two_in_game(w)
    assert len(derived) == 2 and derived[0] != derived[1]  # one per client, one each
    assert a.conn.udp_bound and b.conn.udp_bound  # the handshake worked with the shared MACs
    assert not hasattr(cn, "derive_hop_keys")  # the core has no derivation of its own
    w.cut(a)
    w.advance(SUP.backoff_base + 1.0)
    assert state(a) is S.READY and a.conn.udp_bound
    assert len(derived) == 3  # the new login, once


def test_all_udp_dropped_moves_voice_into_the_tunnel_and_back() -> None:
    w = World(CONFIG)
    a = w.add("alice", drop_up=True, drop_down=True)
    b = w.add("bob", drop_up=True, drop_down=True)
    w.join(a, GAME)
    w.join(b, GAME)
    assert not a.conn.udp_bound and a.udp_datagrams_sent >= 1  # BINDs go nowhere
    # Until UDP is decided our voice already goes through TLS.
    w.advance(SUP.bind_timeout)
    for c in (a, b):
        assert c.of(cn.TransportChanged) == [cn.TransportChanged(cn.VoiceTransport.TUNNEL)]
        assert c.conn.transport is cn.VoiceTransport.TUNNEL
    assert [e.tunnel for e in w.server_of(ev.VoiceTransportChanged)] == [True, True]
    sent_before = a.udp_datagrams_sent
    w.talk(a, [GAME], payload(1))
    assert a.udp_datagrams_sent == sent_before  # nothing on UDP
    (voice,) = heard_from(b, a)
    assert voice.route is cn.VoiceRoute.TUNNEL and voice.frame.payload == payload(1)

    # UDP comes back: the next probe binds and voice returns to UDP.
    for c in (a, b):
        c.drop_up = c.drop_down = False
    w.advance(SUP.probe_interval)
    for c in (a, b):
        assert c.of(cn.TransportChanged)[-1].transport is cn.VoiceTransport.UDP
        assert c.conn.udp_bound
    w.talk(a, [GAME], payload(2))
    assert heard_from(b, a)[-1].route is cn.VoiceRoute.UDP
    assert heard_from(b, a)[-1].frame.payload == payload(2)


def test_udp_going_silent_moves_to_the_tunnel() -> None:
    w = World(CONFIG)
    a, b = two_in_game(w)
    a.drop_up = a.drop_down = True  # a NAT forgot us; TLS still works
    w.advance(SUP.udp_silence + SUP.udp_ping_interval + 6.0)
    assert a.conn.transport is cn.VoiceTransport.TUNNEL
    assert b.conn.transport is cn.VoiceTransport.UDP
    w.talk(a, [GAME], payload(3))
    assert heard_from(b, a)[-1].route is cn.VoiceRoute.UDP  # the relay sends b's copy by UDP
    w.talk(b, [GAME], payload(4))
    assert heard_from(a, b)[-1].route is cn.VoiceRoute.TUNNEL


def test_forced_tunnel_carries_voice_both_ways_and_survives_a_reconnect() -> None:
    w = World(CONFIG)
    a, b = two_in_game(w)
    a.conn.set_force_tunnel(True, w.now)
    w.settle()
    assert a.conn.force_tunnel and a.conn.transport is cn.VoiceTransport.TUNNEL
    assert a.conn.udp_bound  # the address stays validated: switching back is immediate
    assert a.of(cn.TransportChanged) == [cn.TransportChanged(cn.VoiceTransport.TUNNEL)]
    sent_before = a.udp_datagrams_sent
    w.talk(a, [GAME], payload(1))
    assert a.udp_datagrams_sent == sent_before  # nothing on UDP
    assert heard_from(b, a)[-1].route is cn.VoiceRoute.UDP  # b is on UDP
    w.talk(b, [GAME], payload(2))
    assert heard_from(a, b)[-1].route is cn.VoiceRoute.TUNNEL
    assert (a.conn.datagrams_in, a.conn.tunnel_datagrams_in) == (1, 1)
    assert (b.conn.datagrams_in, b.conn.tunnel_datagrams_in) == (1, 0)

    # The setting outlives the connection: the next login tunnels at once.
    w.cut(a)
    w.advance(SUP.backoff_base + 1.0)
    assert state(a) is S.READY and a.conn.udp_bound
    assert a.conn.transport is cn.VoiceTransport.TUNNEL
    w.talk(b, [GAME], payload(3))
    assert heard_from(a, b)[-1].route is cn.VoiceRoute.TUNNEL

    # Off again: back to the supervisor's UDP at once.
    a.conn.set_force_tunnel(False, w.now)
    w.settle()
    assert a.of(cn.TransportChanged)[-1].transport is cn.VoiceTransport.UDP
    w.talk(b, [GAME], payload(4))
    assert heard_from(a, b)[-1].route is cn.VoiceRoute.UDP
    assert a.conn.tunnel_datagrams_in == 2


def test_server_without_udp_tunnels_at_once() -> None:
    w = World(ServerConfig(udp_port=0, channels=CONFIG.channels))
    a, b = two_in_game(w)
    assert not a.of(cn.OpenUdp) and a.udp_datagrams_sent == 0
    assert a.conn.transport is cn.VoiceTransport.TUNNEL
    w.talk(a, [GAME], payload(5))
    assert heard_from(b, a)[-1].route is cn.VoiceRoute.TUNNEL


# -- reconnecting ------------------------------------------------------------------------------


def test_lost_transport_reconnects_with_backoff_and_restores_memberships() -> None:
    w = World(CONFIG)
    a, b = two_in_game(w)
    w.join(a, SECRET, "hunter2")
    a.conn.set_self_state(True, False, w.now)
    a.conn.set_local_settings({"volumes": {"bob": 0.5}}, w.now)
    w.settle()
    old_sid = a.sid
    assert {GAME, SECRET} <= set(w.server.roster.channels_of(old_sid))

    w.cut(a)
    assert state(a) is S.WAITING
    (scheduled,) = a.of(sv.ReconnectScheduled)
    assert scheduled.delay == SUP.backoff_base and scheduled.attempt == 2
    assert any(isinstance(e, ev.ConnectionClosed) for e in a.events)
    assert_early_timer_is_harmless(w, a)
    # Bytes from the dead transport are ignored.
    a.conn.receive_data(b"\x00\x00\x00\x05hello", w.now, generation=1)
    a.conn.connection_lost(w.now, generation=1)
    assert a.conn.next_event() is None

    w.advance(SUP.backoff_base)
    assert state(a) is S.READY
    assert [e.generation for e in a.of(cn.OpenTransport)] == [1, 2]
    new_sid = a.sid
    assert new_sid != old_sid
    # Memberships restored, the channel password reused, self-mute announced again.
    assert {GAME, SECRET} <= set(w.server.roster.channels_of(new_sid))
    assert a.conn.roster is not None and a.conn.roster.users[new_sid].muted
    assert a.of(sv.ApplyLocalSettings)[-1].settings == {"volumes": {"bob": 0.5}}
    assert_transports_balanced(a)

    # Fresh sessions: new keys, and voice flows both ways again.
    w.advance(1.0)
    w.talk(a, [GAME], payload(10))
    assert heard_from(b, a)[-1].frame.payload == payload(10)
    w.talk(b, [GAME], payload(11))
    assert heard_from(a, b)[-1].frame.payload == payload(11)

    # A second loss soon after: the backoff grows.
    w.cut(a)
    assert a.of(sv.ReconnectScheduled)[-1].delay == 2 * SUP.backoff_base


def test_unreachable_server_backs_off_then_connects() -> None:
    w = World(CONFIG)
    a = w.add("alice", reachable=False)
    assert state(a) is S.WAITING
    w.advance(1.0 + 2.0 + 4.0 - 0.5)
    delays = [e.delay for e in a.of(sv.ReconnectScheduled)]
    assert delays == [1.0, 2.0, 4.0]
    a.reachable = True
    w.advance(0.5)
    assert state(a) is S.READY
    assert_transports_balanced(a)


def test_tls_handshake_that_never_finishes_times_out_and_retries() -> None:
    # A server slower to give up than our connect timeout.
    w = World(ServerConfig(udp_port=PORT, login_timeout=2 * SUP.connect_timeout))
    a = w.add("alice", auto_handshake=False)
    assert state(a) is S.CONNECTING
    w.advance(SUP.connect_timeout)
    assert state(a) is S.WAITING
    assert not a.of(cn.CloseTransport)[-1].abort
    w.advance(SUP.backoff_base)
    assert state(a) is S.CONNECTING and a.conn.generation == 2
    a.conn.transport_connected(PIN, w.now, generation=1)  # the old socket, late: ignored
    assert state(a) is S.CONNECTING
    a.conn.transport_connected(PIN, w.now, generation=2)
    w.settle()
    assert state(a) is S.READY
    assert_transports_balanced(a)


def test_fatal_refusal_by_the_server_stops() -> None:
    w = World(ServerConfig(udp_port=PORT, password="letmein"))
    a = w.add("alice", password="wrong")
    assert state(a) is S.CLOSED
    assert a.of(sv.Stopped)[-1].reason is sv.StopReason.BAD_PASSWORD
    assert a.conn.get_timer() is None
    w.advance(60.0)
    assert len(a.of(cn.OpenTransport)) == 1
    assert_transports_balanced(a)


def test_close_says_bye_and_stops() -> None:
    w = World(CONFIG)
    a = w.add("alice")
    a.conn.close(w.now)
    w.settle()
    assert state(a) is S.CLOSED
    (close,) = a.of(cn.CloseTransport)
    assert not close.abort
    frames = FrameDecoder().feed(close.data)
    assert [type(m.decode(f)) for f in frames] == [m.Bye]
    (closed,) = w.server_of(ev.SessionClosed)
    assert closed.reason is ev.CloseReason.PEER_BYE
    assert a.of(sv.Stopped)[-1].reason is sv.StopReason.USER_CLOSED
    assert a.conn.get_timer() is None
    a.conn.close(w.now)  # idempotent
    assert a.conn.next_event() is None
    w.advance(60.0)
    assert len(a.of(cn.OpenTransport)) == 1


# -- the E2E layer through the connection ------------------------------------------------------


def test_stale_verification_is_refused() -> None:
    w = World(CONFIG)
    a, b = two_in_game(w)
    a.take(cn.SaveTrustStore)
    stranger = IdentityKey.generate().public_bytes()
    assert not a.conn.set_verified(b.sid, stranger, True, w.now)
    w.settle()
    assert not a.of(cn.SaveTrustStore)
    secure = a.conn.secure
    assert secure is not None
    holder = secure.view().holder(b.sid)
    assert holder is not None and holder.trust != "verified"

    assert a.conn.set_verified(b.sid, b.identity.public_bytes(), True, w.now)
    w.settle()
    assert a.of(cn.SaveTrustStore)
    view = a.of(e2ee.MembersChanged)[-1].view
    assert view.holder(b.sid) is not None and view.holder(b.sid).trust == "verified"  # type: ignore[union-attr]


def test_text_and_intents_need_a_login() -> None:
    w = World(CONFIG)
    a = w.add("alice", expected_pin=None)
    assert not a.conn.send_text(GAME, "hi", w.now)
    assert not a.conn.join(GAME, None, w.now)
    assert not a.conn.leave(GAME, w.now)
    w.settle()
    assert a.of(cn.TextFailed) == [cn.TextFailed(GAME, "not connected")]
    a.conn.send_voice([GAME], [], payload(1), w.now)  # silently nothing
    a.conn.send_loss_reports([LossReport(5, 0.5, 1.0, 1.0, 50)], w.now)
    assert a.conn.data_to_send() == b"" and a.conn.datagrams_to_send() == []

    b = w.add("bob")
    c = w.add("carol")
    w.join(b, GAME)
    w.join(c, GAME)
    w.advance(1.0)
    assert b.conn.send_text(GAME, "hello carol", w.now)
    w.settle()
    texts = c.of(e2ee.TextMessageReceived)
    assert [(t.author, t.message.text) for t in texts] == [("bob", "hello carol")]
    assert not b.conn.send_text(SECRET, "no key here", w.now)
    w.settle()
    assert "no sender key" in b.of(cn.TextFailed)[-1].why


def test_loss_reports_raise_the_senders_redundancy_then_it_falls() -> None:
    w = World(CONFIG)
    a, b = two_in_game(w)
    # nothing known about the path yet: light protection from the first frame
    assert a.conn.redundancy_level == LEVEL_LIGHT
    assert a.conn.path_memory(w.now) is None
    b.conn.send_loss_reports([LossReport(a.sid, 0.20, 2.0, 12.0, 50)], w.now)
    w.settle()
    changed = a.of(cn.RedundancyChanged)[-1]
    assert changed.level.distances == (1, 2, 4)
    assert changed.level.copy_bitrate == COPY_BITRATE  # compact copies
    assert a.conn.redundancy_level == changed.level
    assert any(isinstance(e, ev.LossReportReceived) for e in a.events)
    assert b.conn.redundancy_level == LEVEL_LIGHT
    # A pause: no reports for 12 s, the path learned stays (the next spurt is protected) ...
    w.advance(12.0)
    assert a.conn.redundancy_level == changed.level
    assert a.conn.path_memory(w.now) == changed.level
    # ... until a listener says the path is clean again
    b.conn.send_loss_reports([LossReport(a.sid, 0.0, 0.0, 2.0, 100)], w.now)
    w.settle()
    assert a.conn.redundancy_level == LEVEL_CLEAN
    assert a.of(cn.RedundancyChanged)[-1].level == LEVEL_CLEAN
    # a minute without any report: the path may have changed, back to light protection
    w.advance(61.0)
    assert a.conn.redundancy_level == LEVEL_LIGHT


# -- timers and statistics ---------------------------------------------------------------------


def test_a_deadline_is_always_armed_and_early_timers_are_harmless() -> None:
    w = World(CONFIG)
    a = w.add("alice", expected_pin=None, connect=False)
    assert a.conn.get_timer() is None  # IDLE: nothing pending
    a.conn.connect(HOST, PORT, None, w.now)
    w.settle()
    assert_early_timer_is_harmless(w, a)  # awaiting the user
    a.conn.approve_pin(PIN, True, w.now)
    w.settle()
    b = w.add("bob")
    w.join(a, GAME)
    w.join(b, GAME)
    for _ in range(40):  # READY, UDP pings, TLS pings, key upkeep, stats
        assert_early_timer_is_harmless(w, a)
        w.advance(0.7)
        w.talk(a, [GAME], payload(1))
    w.cut(a)
    assert_early_timer_is_harmless(w, a)  # waiting to reconnect
    a.conn.close(w.now)
    w.settle()
    assert a.conn.get_timer() is None


def test_stats_once_a_second() -> None:
    w = World(CONFIG)
    a, b = two_in_game(w)
    w.advance(0.5)
    a.take(cn.Stats)
    for k in range(50):  # 20 ms frames for a second
        a.conn.send_voice([GAME], [], payload(k), w.now)
        w.settle()
        w.advance(0.02)
    w.advance(0.25)
    assert len(a.of(cn.Stats)) == 1  # once a second, no more
    w.advance(10.0)
    assert 10 <= len(a.of(cn.Stats)) <= 11
    a_stats, b_stats = a.of(cn.Stats), b.of(cn.Stats)
    assert a_stats[-1].datagrams_out == 50 and b_stats[-1].datagrams_in == 50
    assert a_stats[-1].transport is cn.VoiceTransport.UDP
    assert a_stats[-1].rtt_ms is not None and a_stats[-1].loss == 0.0
    # 46 + 10 bytes of header and MAC around a 44-byte payload, 50 per second: ~40 kbit/s.
    assert 30 < sum(x.kbps_out for x in a_stats) < 50
    assert 30 < sum(x.kbps_in for x in b_stats) < 50
    assert a_stats[-1].kbps_out == 0.0  # silent since
    # Our UDP counters reach the server with the next Ping.
    w.advance(10.0)
    pings = [e for e in a.events if isinstance(e, ev.PingStats)]
    assert pings and pings[-1].udp_received_by_server > 0


def test_a_retry_passes_over_the_node_that_died_for_the_one_that_was_only_busy() -> None:
    """Two nodes; ours dies under us. The retry goes to the other one, which is too busy and
    closes the connection before the handshake: the next retry goes there again, not back to
    the node whose connection broke (it would fail, and cost a backoff step). A node that
    refuses the connection outright is passed over as well; when every node is down the
    retries go round all of them as before."""
    other = ("b.example", PORT)
    w = World(CONFIG)
    w.nodes.add(other)
    w.server.set_cluster_nodes((f"{HOST}:{PORT}", f"b.example:{PORT}"))
    a = w.add("alice")
    w.settle()
    assert state(a) is S.READY and a.conn.cluster_nodes == ((HOST, PORT), other)

    a.down.add((HOST, PORT))  # our node dies: nothing listens there any more
    a.busy.add(other)
    w.cut(a)
    w.advance(SUP.backoff_base)  # retry 1: the other node, too busy
    assert [(e.host, e.port) for e in a.of(cn.OpenTransport)][1:] == [other]
    a.busy.clear()
    w.advance(2 * SUP.backoff_base)  # retry 2: the other node again, which now takes us
    assert state(a) is S.READY
    assert [(e.host, e.port) for e in a.of(cn.OpenTransport)][1:] == [other, other]

    # That node dies too, and ours is still down: every node is down, they are tried in turn.
    a.down.add(other)
    w.cut(a)
    w.advance(60.0)
    tried = [(e.host, e.port) for e in a.of(cn.OpenTransport)][3:]
    assert len(tried) >= 4 and tried[:4] == [(HOST, PORT), other, (HOST, PORT), other]
    assert state(a) is S.WAITING
    assert_transports_balanced(a)
