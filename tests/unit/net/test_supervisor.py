"""ConnectionSupervisor: every path with a fake clock (plain floats) and a constant rng."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipclient.net import events as ev
from voipclient.net.messages import ErrorCode
from voipclient.net.roster import ChannelView, RosterSnapshot
from voipclient.net.supervisor import (
    TRANSITIONS,
    ApplyLocalSettings,
    ChannelPasswordUsed,
    Close,
    Connect,
    ConnectionSupervisor,
    ConnState,
    Disconnect,
    FailureKind,
    JoinChannel,
    LeaveChannel,
    LocalSettingsChanged,
    Open,
    PinApprovalPending,
    PinApproved,
    PinRefused,
    ReconnectScheduled,
    RestoreSkipped,
    SelfStateChanged,
    SendBind,
    SendBindConfirm,
    SendUdpPing,
    SetSelfState,
    SetVoiceTransport,
    StateChanged,
    Stopped,
    StopReason,
    SupervisorAction,
    SupervisorConfig,
    SupervisorEvent,
    TransportFailed,
    UdpBindOk,
    UdpChallenge,
    UdpDatagramReceived,
    UdpPong,
    VoicePath,
    explain_failure,
)

ME = 7
LOBBY, A, B = 1, 2, 3


def sup(rng: float = 0.5, **cfg: float | bool) -> ConnectionSupervisor:
    """jitter 0 unless asked: delays are exact. Retries before the first login too (the backoff
    tests start unreachable); the product's default is tested in ``test_first_contact_*``."""
    config = SupervisorConfig(  # type: ignore[arg-type]
        **{"backoff_jitter": 0.0, "retry_unreached": True, **cfg}
    )
    return ConnectionSupervisor(config, rng=lambda: rng)


def roster(
    channels: dict[int, str], mine: Sequence[int] = (LOBBY,), me: int = ME
) -> RosterSnapshot:
    return RosterSnapshot(
        channels=MappingProxyType({i: ChannelView(i, None, n) for i, n in channels.items()}),
        memberships=MappingProxyType({me: frozenset(mine)}),
    )


def logged_in(
    channels: dict[int, str] | None = None,
    mine: Sequence[int] = (LOBBY,),
    me: int = ME,
    udp_port: int = 64738,
) -> ev.LoggedIn:
    chans = channels if channels is not None else {LOBBY: "Lobby", A: "A", B: "B"}
    return ev.LoggedIn(me, bytes(32), udp_port, roster(chans, mine, me))


def closed(
    reason: ev.CloseReason = ev.CloseReason.CONNECTION_LOST, code: int = 0, message: str = ""
) -> ev.ConnectionClosed:
    return ev.ConnectionClosed(reason, code, message)


def of(actions: list[SupervisorAction], kind: type[SupervisorAction]) -> list[SupervisorAction]:
    return [a for a in actions if isinstance(a, kind)]


def ping_stats() -> ev.PingStats:
    return ev.PingStats(1, 20.0, 20.0, 10.0, 1, 1, 0, None, None)


def connected(s: ConnectionSupervisor, now: float = 0.0, **kw: object) -> list[SupervisorAction]:
    s.handle_event(Open(), now)
    return s.handle_event(logged_in(**kw), now)  # type: ignore[arg-type]


# -- connect and backoff ------------------------------------------------------------------------


def test_open_connects_and_login_binds_udp() -> None:
    s = sup()
    assert s.state is ConnState.IDLE and s.get_timer() is None
    assert s.handle_event(Open(), 0.0) == [StateChanged(ConnState.CONNECTING), Connect(1)]
    assert s.get_timer() == 20.0  # connect timeout
    out = s.handle_event(logged_in(), 0.5)
    assert out == [StateChanged(ConnState.CONNECTED), SendBind()]
    assert s.state is ConnState.CONNECTED and s.voice_path is VoicePath.BINDING
    assert s.memberships == {LOBBY: "Lobby"}
    assert s.handle_event(Open(), 0.6) == []  # ignored while connected


def first_contact() -> ConnectionSupervisor:
    """The product's default: no retry before the server was reached once."""
    return ConnectionSupervisor(SupervisorConfig(), rng=lambda: 0.5)


def test_first_contact_that_fails_stops_at_once_with_the_reason_and_what_to_check() -> None:
    s = first_contact()
    s.handle_event(Open(), 0.0)
    advice = explain_failure(FailureKind.REFUSED, "voice.example", 4000)
    out = s.handle_event(TransportFailed("connection refused", FailureKind.REFUSED, advice), 0.1)
    assert of(out, ReconnectScheduled) == []
    (stopped,) = of(out, Stopped)
    assert isinstance(stopped, Stopped) and stopped.reason is StopReason.UNREACHABLE
    assert stopped.message.startswith("connection refused. Nothing is listening on port 4000")
    assert s.state is ConnState.STOPPED and s.get_timer() is None
    # the user asks again: one more attempt, which stops the same way
    assert of(s.handle_event(Open(), 5.0), Connect) == [Connect(1)]
    assert of(s.handle_event(TransportFailed("timed out"), 6.0), Stopped)


@pytest.mark.parametrize("kind", list(FailureKind))
def test_every_failure_kind_has_advice_naming_the_server(kind: FailureKind) -> None:
    text = explain_failure(kind, "h.example", 1234)
    assert text.endswith(".") and len(text) > 30
    if kind is not FailureKind.OTHER:
        assert "h.example" in text


def test_first_contact_that_times_out_or_closes_before_login_stops_too() -> None:
    s = first_contact()
    s.handle_event(Open(), 0.0)
    out = s.handle_timer(SupervisorConfig().connect_timeout)
    assert of(out, Disconnect) and of(out, Stopped) and not of(out, ReconnectScheduled)
    s.handle_event(Open(), 30.0)
    out = s.handle_event(closed(message="rate limited"), 30.5)
    (stopped,) = of(out, Stopped)
    assert isinstance(stopped, Stopped) and "rate limited" in stopped.message


def test_a_server_we_were_connected_to_is_retried_with_backoff() -> None:
    s = first_contact()
    connected(s)
    out = s.handle_event(closed(), 10.0)
    (sched,) = of(out, ReconnectScheduled)
    assert isinstance(sched, ReconnectScheduled) and s.state is ConnState.WAITING
    s.handle_timer(sched.at)
    # still the same server: failing to come back keeps retrying, it never stops by itself
    out = s.handle_event(TransportFailed("connection refused"), sched.at + 0.1)
    assert of(out, ReconnectScheduled) and not of(out, Stopped)
    # "reconnect now" while waiting keeps that
    s.handle_event(Open(), sched.at + 0.2)
    assert of(s.handle_event(TransportFailed("refused"), sched.at + 0.3), ReconnectScheduled)
    # the user closes: stopped; a later Open is a first contact again
    s.handle_event(Close(), sched.at + 0.4)
    s.handle_event(Open(), sched.at + 1.0)
    assert of(s.handle_event(TransportFailed("refused"), sched.at + 1.1), Stopped)


def test_backoff_doubles_to_the_cap_and_counts_attempts() -> None:
    s = sup()
    s.handle_event(Open(), 0.0)
    now, delays, attempts = 0.0, [], []
    for _ in range(8):
        out = s.handle_event(TransportFailed("refused"), now)
        (sched,) = of(out, ReconnectScheduled)
        assert isinstance(sched, ReconnectScheduled)
        delays.append(sched.delay)
        assert s.state is ConnState.WAITING and s.get_timer() == sched.at == now + sched.delay
        assert s.handle_timer(sched.at - 0.01) == []  # early: nothing
        now = sched.at
        out = s.handle_timer(now)
        (connect,) = of(out, Connect)
        assert isinstance(connect, Connect)
        attempts.append(connect.attempt)
        assert sched.attempt == connect.attempt
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert attempts == [2, 3, 4, 5, 6, 7, 8, 9]
    assert s.stats.failures == 8


@pytest.mark.parametrize(("r", "factor"), [(0.0, 1.0), (0.5, 0.9), (0.999, 0.8002)])
def test_backoff_jitter_comes_from_the_rng_and_never_exceeds_the_cap(
    r: float, factor: float
) -> None:
    s = ConnectionSupervisor(
        SupervisorConfig(backoff_jitter=0.2, retry_unreached=True), rng=lambda: r
    )
    s.handle_event(Open(), 0.0)
    now = 0.0
    seen = []
    for _ in range(7):
        (sched,) = of(s.handle_event(TransportFailed("x"), now), ReconnectScheduled)
        assert isinstance(sched, ReconnectScheduled)
        seen.append(sched.delay)
        now = sched.at
        s.handle_timer(now)
    expected = [d * factor for d in (1, 2, 4, 8, 16, 30, 30)]
    assert seen == pytest.approx(expected, rel=1e-3)
    assert max(seen) <= 30.0


def test_stable_session_resets_backoff_and_short_one_does_not() -> None:
    s = sup()
    s.handle_event(Open(), 0.0)
    for _ in range(3):  # failures: 3 → next wait would be 8 s
        (sched,) = of(s.handle_event(TransportFailed("x"), 0.0), ReconnectScheduled)
        assert isinstance(sched, ReconnectScheduled)
        s.handle_timer(sched.at)
    now = s.get_timer() or 0.0
    s.handle_event(logged_in(), now)
    # a short session keeps counting
    (sched,) = of(s.handle_event(closed(), now + 10), ReconnectScheduled)
    assert isinstance(sched, ReconnectScheduled) and sched.delay == 8
    s.handle_timer(sched.at)
    s.handle_event(logged_in(), sched.at)
    # a stable one (>= 60 s) resets
    (sched,) = of(s.handle_event(closed(), sched.at + 60), ReconnectScheduled)
    assert isinstance(sched, ReconnectScheduled) and sched.delay == 1 and sched.attempt == 2
    (connect,) = of(s.handle_timer(sched.at), Connect)
    assert connect == Connect(2)


def test_connect_timeout_disconnects_and_backs_off() -> None:
    s = sup()
    s.handle_event(Open(), 0.0)
    out = s.handle_timer(20.0)
    assert out[0] == Disconnect("no login within 20 s")
    assert s.state is ConnState.WAITING and s.get_timer() == 21.0


def test_pin_approval_pauses_the_connect_timeout() -> None:
    s = sup()
    s.handle_event(Open(), 0.0)
    s.handle_event(PinApprovalPending(), 1.0)
    assert s.get_timer() is None
    assert s.handle_timer(500.0) == []
    s.handle_event(PinApproved(), 600.0)
    assert s.get_timer() == 620.0


def test_open_while_waiting_connects_now() -> None:
    s = sup()
    s.handle_event(Open(), 0.0)
    s.handle_event(TransportFailed("x"), 0.0)
    assert of(s.handle_event(Open(), 0.2), Connect) == [Connect(2)]


# -- fatal stops ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (ErrorCode.WRONG_PASSWORD, StopReason.BAD_PASSWORD),
        (ErrorCode.KICKED, StopReason.KICKED),
        (ErrorCode.NAME_TAKEN, StopReason.NAME_TAKEN),
        (ErrorCode.BAD_SIGNATURE, StopReason.IDENTITY_REJECTED),
        (ErrorCode.SESSION_REPLACED, StopReason.REPLACED),
        (ErrorCode.UNSUPPORTED_VERSION, StopReason.UNSUPPORTED_VERSION),
    ],
)
def test_fatal_refusal_stops_and_says_why(code: ErrorCode, reason: StopReason) -> None:
    s = sup()
    s.handle_event(Open(), 0.0)
    out = s.handle_event(closed(ev.CloseReason.PEER_ERROR, code, "banned by admin"), 1.0)
    (stopped,) = of(out, Stopped)
    assert isinstance(stopped, Stopped) and stopped.reason is reason
    assert stopped.message.startswith("banned by admin: ")
    assert s.state is ConnState.STOPPED and s.get_timer() is None
    assert s.stop_reason == (reason, stopped.message)
    assert s.handle_timer(1e6) == []
    # the user can try again by hand; backoff starts over
    assert of(s.handle_event(Open(), 2.0), Connect) == [Connect(1)]


def test_fatal_while_connected_stops_too() -> None:
    s = sup()
    connected(s)
    out = s.handle_event(closed(ev.CloseReason.PEER_ERROR, ErrorCode.KICKED, "kicked"), 5.0)
    assert of(out, Stopped) and s.voice_path is VoicePath.NONE


def test_non_fatal_errors_reconnect() -> None:
    s = sup()
    s.handle_event(Open(), 0.0)
    out = s.handle_event(closed(ev.CloseReason.PEER_ERROR, ErrorCode.SERVER_FULL, "full"), 1.0)
    assert of(out, ReconnectScheduled) and not of(out, Stopped)


def test_pin_refused_stops_with_the_pin_message() -> None:
    s = sup()
    s.handle_event(Open(), 0.0)
    out = s.handle_event(PinRefused("presented sha256/X, stored sha256/Y"), 0.1)
    assert Disconnect("server key refused") in out
    assert Stopped(StopReason.PIN_REFUSED, "presented sha256/X, stored sha256/Y") in out


def test_user_close_stops_from_every_state() -> None:
    for setup in ("idle", "connecting", "connected", "waiting"):
        s = sup()
        if setup != "idle":
            s.handle_event(Open(), 0.0)
        if setup == "connected":
            s.handle_event(logged_in(), 0.0)
        if setup == "waiting":
            s.handle_event(TransportFailed("x"), 0.0)
        out = s.handle_event(Close(), 1.0)
        assert (Disconnect("closed by the user") in out) == (setup in ("connecting", "connected"))
        assert Stopped(StopReason.USER_CLOSED, "closed by the user") in out
        assert s.get_timer() is None
        assert s.handle_event(closed(), 2.0) == []  # the old connection's end: ignored


# -- restore -------------------------------------------------------------------------------------


def test_reconnect_restores_memberships_passwords_self_state_and_local_settings() -> None:
    s = sup()
    connected(s)
    s.handle_event(ChannelPasswordUsed(B, "s3cret"), 1.0)
    s.handle_event(ev.MembershipChanged(ME, A, True, True), 1.0)
    s.handle_event(ev.MembershipChanged(ME, B, True, True), 1.0)
    s.handle_event(ev.MembershipChanged(ME, LOBBY, False, False), 1.0)
    s.handle_event(ev.MembershipChanged(99, LOBBY, False, False), 1.0)  # someone else
    s.handle_event(SelfStateChanged(muted=True, deafened=False), 2.0)
    settings_blob = {"volumes": {"alice": 0.5}, "ptt": ["F13"]}
    s.handle_event(LocalSettingsChanged(settings_blob), 2.0)
    assert s.memberships == {A: "A", B: "B"}
    out = s.handle_event(closed(), 3.0)
    s.handle_timer(s.get_timer() or 0.0)
    out = s.handle_event(logged_in(me=12), 5.0)  # new session, new sender id
    assert out == [
        StateChanged(ConnState.CONNECTED),
        SetSelfState(True, False),
        LeaveChannel(LOBBY),
        JoinChannel(A, None),
        JoinChannel(B, "s3cret"),
        ApplyLocalSettings(settings_blob),
        SendBind(),
    ]
    assert "s3cret" not in repr(out)
    # tracking continues with the new sender id
    s.handle_event(ev.MembershipChanged(12, LOBBY, False, False), 5.0)
    s.handle_event(ev.MembershipChanged(12, A, True, True), 5.1)
    assert s.memberships == {A: "A", B: "B"}


def test_restore_follows_renumbered_channels_and_skips_vanished_ones() -> None:
    s = sup()
    connected(s, channels={LOBBY: "Lobby", A: "Music", B: "Gone"})
    s.handle_event(ev.MembershipChanged(ME, A, True, True), 1.0)
    s.handle_event(ev.MembershipChanged(ME, B, True, True), 1.0)
    s.handle_event(closed(), 2.0)
    s.handle_timer(s.get_timer() or 0.0)
    out = s.handle_event(logged_in(channels={LOBBY: "Lobby", 5: "music", A: "Other"}), 4.0)
    assert JoinChannel(5, None) in out
    assert JoinChannel(A, None) not in out
    assert RestoreSkipped("Gone", "the channel no longer exists") in out
    assert s.memberships == {LOBBY: "Lobby", 5: "Music"}


def test_refused_restore_join_is_not_retried_and_removed_channel_forgotten() -> None:
    s = sup()
    connected(s)
    s.handle_event(ev.MembershipChanged(ME, A, True, True), 1.0)
    s.handle_event(ev.MembershipChanged(ME, B, True, True), 1.0)
    s.handle_event(closed(), 2.0)
    s.handle_timer(s.get_timer() or 0.0)
    s.handle_event(logged_in(), 4.0)
    s.handle_event(ev.ServerError(ErrorCode.CHANNEL_FULL, "full", False, A), 4.1)
    s.handle_event(ev.ChannelRemoved(ChannelView(B, None, "B"), frozenset({ME})), 4.2)
    assert s.memberships == {LOBBY: "Lobby"}


def test_first_login_restores_nothing() -> None:
    s = sup()
    s.handle_event(SelfStateChanged(True, True), 0.0)
    s.handle_event(LocalSettingsChanged(object()), 0.0)
    out = connected(s)
    assert not of(out, SetSelfState) and not of(out, ApplyLocalSettings)


# -- UDP / tunnel --------------------------------------------------------------------------------


def test_bind_retries_then_bind_ok_goes_udp_and_pings() -> None:
    s = sup()
    connected(s, now=100.0)
    assert s.get_timer() == 101.0
    assert s.handle_timer(101.0) == [SendBind()]
    assert s.handle_event(UdpChallenge(b"c" * 16), 101.1) == [SendBindConfirm(b"c" * 16)]
    out = s.handle_event(UdpBindOk(), 101.2)
    assert out == [SetVoiceTransport(tunnel=False), SendUdpPing(101200)]
    assert s.voice_path is VoicePath.UDP and s.get_timer() == pytest.approx(104.2)
    s.handle_event(UdpPong(101200, 5), 101.25)
    st_ = s.stats
    assert st_.udp_rtt_ms == pytest.approx(50.0) and st_.udp_srtt_ms == pytest.approx(50.0)
    assert st_.relay_received == 5 and st_.udp_pongs_received == 1
    assert s.handle_timer(104.2) == [SendUdpPing(104200)]


def test_no_bind_ok_falls_back_to_tunnel_and_reprobes_then_returns() -> None:
    s = sup()
    connected(s)
    assert s.handle_timer(1.0) == [SendBind()]
    assert s.handle_timer(2.0) == [SendBind()]
    assert s.handle_timer(3.0) == [SetVoiceTransport(tunnel=True)]
    assert s.voice_path is VoicePath.TUNNEL and s.get_timer() == 15.0
    assert s.handle_timer(15.0) == [SendBind()]
    assert s.get_timer() == 27.0
    assert s.handle_event(UdpDatagramReceived(), 20.0) == []  # proves nothing on the tunnel
    assert s.handle_event(UdpPong(1, 0), 20.0) == []  # a PONG we never asked for: ignored
    assert s.handle_timer(27.0) == [SendBind()]
    assert s.handle_event(UdpChallenge(b"x" * 16), 27.1) == [SendBindConfirm(b"x" * 16)]
    out = s.handle_event(UdpBindOk(), 27.2)
    assert out[0] == SetVoiceTransport(tunnel=False) and s.voice_path is VoicePath.UDP


def test_udp_silence_with_live_tls_goes_to_tunnel() -> None:
    s = sup()
    connected(s)
    s.handle_event(UdpBindOk(), 0.5)  # UDP, ping at 0.5, next 3.5
    s.handle_event(UdpDatagramReceived(), 1.0)  # last UDP at 1.0
    assert s.handle_timer(3.5) == [SendUdpPing(3500)]
    assert s.handle_timer(6.5) == [SendUdpPing(6500)]
    s.handle_event(ping_stats(), 7.0)  # TLS pong after the last UDP
    assert s.handle_timer(9.5) == [SetVoiceTransport(tunnel=True)]  # 8.5 s silent
    assert s.voice_path is VoicePath.TUNNEL and s.get_timer() == 21.5
    loss = s.stats.udp_ping_loss
    assert loss is not None and loss > 0.5


def test_udp_silence_without_tls_either_stays_on_udp() -> None:
    s = sup()
    connected(s)
    s.handle_event(UdpBindOk(), 0.0)
    for t in (3.0, 6.0, 9.0, 12.0):
        assert s.handle_timer(t) == [SendUdpPing(int(t * 1000))]
    assert s.voice_path is VoicePath.UDP


def test_voice_keeps_udp_alive() -> None:
    s = sup()
    connected(s)
    s.handle_event(UdpBindOk(), 0.0)
    for t in range(3, 30, 3):
        s.handle_event(UdpDatagramReceived(), t - 0.5)
        s.handle_event(ping_stats(), t - 0.1)
        assert of(s.handle_timer(float(t)), SetVoiceTransport) == []


def test_server_without_udp_uses_tunnel_without_probes() -> None:
    s = sup()
    out = connected(s, udp_port=0)
    assert out[-1] == SetVoiceTransport(tunnel=True) and SendBind() not in out
    assert s.voice_path is VoicePath.TUNNEL_ONLY and s.get_timer() is None
    assert s.handle_event(UdpBindOk(), 1.0) == []


def test_reconnect_rebinds_udp() -> None:
    s = sup()
    connected(s)
    s.handle_event(UdpBindOk(), 0.0)
    s.handle_event(closed(), 1.0)
    assert s.voice_path is VoicePath.NONE
    assert s.handle_event(UdpPong(0, 0), 1.1) == []  # late datagram: ignored
    s.handle_timer(s.get_timer() or 0.0)
    assert s.handle_event(logged_in(), 3.0)[-1] == SendBind()
    assert s.stats.udp_srtt_ms is None


# -- server shutdown ----------------------------------------------------------------------------


def test_shutdown_notice_reconnects_after_its_delay() -> None:
    s = ConnectionSupervisor(SupervisorConfig(shutdown_spread=2.0), rng=lambda: 0.25)
    connected(s)
    s.handle_event(TransportFailed("ignored while connected"), 1.0)
    assert s.handle_event(ev.ServerShuttingDown("restart", 5000), 10.0) == []
    out = s.handle_event(closed(ev.CloseReason.SHUTDOWN, message="restart"), 10.0)
    (sched,) = of(out, ReconnectScheduled)
    assert sched == ReconnectScheduled(15.5, 5.5, 1, "server shutdown: restart")
    assert of(s.handle_timer(15.5), Connect) == [Connect(1)]


def test_shutdown_without_delay_stops() -> None:
    s = sup()
    connected(s)
    s.handle_event(ev.ServerShuttingDown("gone", None), 1.0)
    out = s.handle_event(closed(ev.CloseReason.SHUTDOWN, message="gone"), 1.0)
    (stopped,) = of(out, Stopped)
    assert isinstance(stopped, Stopped) and stopped.reason is StopReason.SERVER_SHUTDOWN


def test_shutdown_close_without_notice_backs_off() -> None:
    s = sup()
    connected(s)
    out = s.handle_event(closed(ev.CloseReason.SHUTDOWN), 1.0)
    assert of(out, ReconnectScheduled)


# -- misc ----------------------------------------------------------------------------------------


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        SupervisorConfig(backoff_base=0)
    with pytest.raises(ValueError):
        SupervisorConfig(backoff_cap=0.5)
    with pytest.raises(ValueError):
        SupervisorConfig(backoff_jitter=1.0)


def test_every_event_type_in_the_table_is_handled_by_a_method() -> None:
    for _t, states, name in TRANSITIONS:
        assert states and callable(getattr(ConnectionSupervisor, name))


def test_clock_stepping_back_is_treated_as_standing_still() -> None:
    s = sup()
    s.handle_event(Open(), 100.0)
    s.handle_event(TransportFailed("x"), 100.0)
    s.handle_timer(50.0)
    timer = s.get_timer()
    assert timer is not None and timer >= 100.0


# -- properties ----------------------------------------------------------------------------------

_EVENTS: st.SearchStrategy[SupervisorEvent | ev.ClientEvent] = st.one_of(
    st.just(Open()),
    st.just(Close()),
    st.builds(TransportFailed, st.text(max_size=5)),
    st.builds(PinRefused, st.text(max_size=5)),
    st.just(PinApprovalPending()),
    st.just(PinApproved()),
    st.builds(
        logged_in,
        me=st.sampled_from([ME, 8]),
        udp_port=st.sampled_from([0, 64738]),
        mine=st.lists(st.sampled_from([LOBBY, A, B]), max_size=3),
    ),
    st.builds(
        closed,
        st.sampled_from(list(ev.CloseReason)),
        st.sampled_from([0, *list(ErrorCode)]),
        st.text(max_size=5),
    ),
    st.builds(ev.ServerShuttingDown, st.text(max_size=5), st.none() | st.integers(0, 120_000)),
    st.builds(
        ev.MembershipChanged,
        st.sampled_from([ME, 8, 99]),
        st.sampled_from([LOBBY, A, B, 40]),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(
        ev.ChannelRemoved,
        st.builds(ChannelView, st.sampled_from([A, B]), st.none(), st.just("x")),
        st.just(frozenset()),
    ),
    st.builds(
        ev.ServerError,
        st.sampled_from(list(ErrorCode)),
        st.just(""),
        st.booleans(),
        st.none() | st.sampled_from([A, B]),
    ),
    st.just(ping_stats()),
    st.builds(ChannelPasswordUsed, st.sampled_from([A, B]), st.text(min_size=1, max_size=3)),
    st.builds(SelfStateChanged, st.booleans(), st.booleans()),
    st.builds(LocalSettingsChanged, st.integers()),
    st.builds(UdpChallenge, st.binary(min_size=16, max_size=16)),
    st.just(UdpBindOk()),
    st.builds(UdpPong, st.integers(0, 200_000), st.integers(0, 2**32 - 1)),
    st.just(UdpDatagramReceived()),
)

_STEPS = st.lists(
    st.tuples(
        st.floats(0, 40, allow_nan=False),  # time advance
        st.none() | _EVENTS,  # None: a timer call
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(steps=_STEPS, r=st.floats(0, 1, exclude_max=True), jitter=st.floats(0, 0.9))
def test_arbitrary_sequences_never_raise_and_timers_are_never_in_the_past(
    steps: list[tuple[float, SupervisorEvent | ev.ClientEvent | None]], r: float, jitter: float
) -> None:
    s = ConnectionSupervisor(
        SupervisorConfig(backoff_jitter=jitter, retry_unreached=True), rng=lambda: r
    )
    now = 1000.0
    for advance, event in steps:
        timer = s.get_timer()
        if event is None and timer is not None:
            now = max(now, timer)  # the adapter wakes up when the timer says
        else:
            now += advance
        out = s.handle_timer(now) if event is None else s.handle_event(event, now)
        assert all(isinstance(a, SupervisorAction) for a in out)
        due = event is None and timer is not None and now >= timer
        timer = s.get_timer()
        assert timer is None or timer >= now
        if due:  # a timer that fired moved on: the adapter never spins
            assert timer is None or timer > now
        if s.state is ConnState.CONNECTED and s.voice_path not in (
            VoicePath.TUNNEL_ONLY,
            VoicePath.NONE,
        ):
            assert timer is not None  # something always wakes a live path up
        if s.state is ConnState.WAITING:
            assert timer is not None and timer - now <= 30.0 + 120.0 + 2.0
        if s.state is ConnState.STOPPED:
            assert timer is None
        stats = s.stats
        assert stats.udp_ping_loss is None or 0.0 <= stats.udp_ping_loss <= 1.0
