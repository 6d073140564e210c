"""Receiver → speaker loss/jitter reports over the control channel: the codec, the client intent
and event, and the server's routing (shared channel only), rate limit and counters, in memory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voipclient.audio.redundancy import LossMeter, LossReport, RedundancyPolicy
from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.frames import FrameDecoder, encode_frame
from voipclient.net.states import ClientState
from voipclient.server.control import (
    LOSS_REPORT_COUNTERS,
    ChannelConfig,
    ServerConfig,
)

from ._harness import Net, Peer, make_client
from ._strategies import struct_strategy

LOBBY, A, B = 1, 2, 3


def _raw(**fields: Any) -> bytes:
    return msgspec.msgpack.encode(fields)


def _entry(**over: Any) -> dict[str, Any]:
    return {"to": 1, "loss": 0.1, "burst": 1.5, "jitter_ms": 4.0, "frames": 100} | over


def _report(
    to: int, loss: float = 0.1, burst: float = 1.5, jitter: float = 4.0, frames: int = 100
) -> LossReport:
    return LossReport(sender_id=to, loss=loss, burst=burst, jitter_ms=jitter, window_frames=frames)


def _config(**kwargs: Any) -> ServerConfig:
    return ServerConfig(channels=(ChannelConfig(A, "A"), ChannelConfig(B, "B")), **kwargs)


def _move(net: Net, peer: Peer, *channels: int) -> None:
    """Make ``peer`` a member of exactly ``channels`` (leaving the Lobby unless listed)."""
    for ch in channels:
        if ch != LOBBY:
            peer.client.join(ch)
    if LOBBY not in channels:
        peer.client.leave(LOBBY)
    net.pump()
    assert peer.client.roster.channels_of(peer.sender_id) == frozenset(channels)


def _received(peer: Peer) -> list[ev.LossReportReceived]:
    return peer.take(ev.LossReportReceived)


# -- codec ----------------------------------------------------------------------------------------


def test_wire_form() -> None:
    msg = m.LossReports(reports=(m.LossReportEntry(7, 0.25, 2.0, 12.5, 150),))
    assert msgspec.msgpack.decode(m.encode(msg)) == {
        "t": "loss_report",
        "reports": [{"to": 7, "loss": 0.25, "burst": 2.0, "jitter_ms": 12.5, "frames": 150}],
    }
    delivery = m.LossReportDelivery(from_=3, loss=0.25, burst=2.0, jitter_ms=12.5, frames=150)
    assert msgspec.msgpack.decode(m.encode(delivery)) == {
        "t": "loss_report_delivery",
        "from": 3,
        "loss": 0.25,
        "burst": 2.0,
        "jitter_ms": 12.5,
        "frames": 150,
    }
    assert m.decode(m.encode(delivery)) == delivery


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.one_of(struct_strategy(m.LossReports), struct_strategy(m.LossReportDelivery)))
def test_round_trip(msg: m.Message) -> None:
    payload = m.encode_checked(msg)
    assert m.decode(payload) == msg


def test_bounds_that_are_accepted() -> None:
    edge = [
        _entry(to=m.U32_MAX, loss=0.0, burst=0.0, jitter_ms=0.0, frames=0),
        _entry(loss=1.0, burst=m.MAX_LOSS_BURST, jitter_ms=1e9, frames=m.U32_MAX),
        _entry(loss=0, burst=3, jitter_ms=7, frames=10),  # msgpack ints for floats are fine
    ]
    msg = m.decode(_raw(t="loss_report", reports=edge))
    assert isinstance(msg, m.LossReports) and len(msg.reports) == 3
    full = m.LossReports(
        reports=tuple(m.LossReportEntry(i, 1.0, 1e6, 1e9, 1) for i in range(1, 65))
    )
    assert m.decode(m.encode_checked(full)) == full
    assert len(m.encode(full)) < 4096


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (_raw(t="loss_report", reports=[_entry(loss=math.nan)]), "reports[0].loss"),
        (_raw(t="loss_report", reports=[_entry(loss=1.0001)]), "reports[0].loss"),
        (_raw(t="loss_report", reports=[_entry(loss=-0.1)]), "reports[0].loss"),
        (_raw(t="loss_report", reports=[_entry(), _entry(burst=-1.0)]), "reports[1].burst"),
        (_raw(t="loss_report", reports=[_entry(burst=math.inf)]), "reports[0].burst"),
        (_raw(t="loss_report", reports=[_entry(burst=math.nan)]), "reports[0].burst"),
        (_raw(t="loss_report", reports=[_entry(jitter_ms=-0.5)]), "reports[0].jitter_ms"),
        (_raw(t="loss_report", reports=[_entry(jitter_ms=math.nan)]), "reports[0].jitter_ms"),
        (_raw(t="loss_report", reports=[_entry(jitter_ms=math.inf)]), "reports[0].jitter_ms"),
        (_raw(t="loss_report", reports=[_entry(frames=-1)]), "reports[0].frames"),
        (_raw(t="loss_report", reports=[_entry(frames=2**32)]), "reports[0].frames"),
        (_raw(t="loss_report", reports=[_entry(frames=1.5)]), "reports[0].frames"),
        (_raw(t="loss_report", reports=[_entry(to=0)]), "reports[0].to"),
        (_raw(t="loss_report", reports=[_entry(loss="0.1")]), "reports[0].loss"),
        (_raw(t="loss_report", reports=[{"to": 1, "loss": 0.1}]), "reports[0].burst"),
        (_raw(t="loss_report", reports=[_entry()] * 65), "reports"),
        (_raw(t="loss_report", reports=[]), "reports"),
        (_raw(t="loss_report"), "reports"),
        (_raw(t="loss_report_delivery", loss=0.5, burst=0.0, jitter_ms=0.0, frames=1), "from"),
        (_raw(t="loss_report_delivery", **{"from": 2, "loss": math.nan, "burst": 0.0}), "loss"),
        (
            _raw(
                t="loss_report_delivery",
                **{"from": 2, "loss": 0.5, "burst": 0.0, "jitter_ms": -1.0, "frames": 1},
            ),
            "jitter_ms",
        ),
    ],
)
def test_malformed_values_name_the_field(payload: bytes, field: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.decode(payload)
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE
    assert info.value.field == field


# -- client intent and event ----------------------------------------------------------------------


def _ready_pair() -> tuple[Net, Peer, Peer]:
    net = Net(_config())
    return net, net.connect("ann"), net.connect("bob")


def _sent(peer: Peer) -> list[m.Message]:
    return [m.decode(p) for p in FrameDecoder().feed(peer.client.data_to_send())]


def test_send_loss_reports_batches_up_to_64_per_message() -> None:
    _, ann, _ = _ready_pair()
    reports = [_report(to, loss=to / 200) for to in range(1, 71)]
    ann.client.send_loss_reports(reports)
    msgs = _sent(ann)
    batches = [x for x in msgs if isinstance(x, m.LossReports)]
    assert len(batches) == len(msgs) == 2
    assert [len(x.reports) for x in batches] == [64, 6]
    assert batches[0].reports[0] == m.LossReportEntry(1, 0.005, 1.5, 4.0, 100)
    entries = [e for x in batches for e in x.reports]
    assert [e.to for e in entries] == list(range(1, 71))
    ann.client.send_loss_reports([])  # nothing to say: nothing sent
    assert ann.client.data_to_send() == b""


@pytest.mark.parametrize(
    ("report", "field"),
    [
        (_report(2, loss=math.nan), "reports[0].loss"),
        (_report(2, loss=1.5), "reports[0].loss"),
        (_report(2, burst=-1.0), "reports[0].burst"),
        (_report(2, jitter=math.inf), "reports[0].jitter_ms"),
        (_report(2, frames=-3), "reports[0].frames"),
        (_report(0), "reports[0].to"),
    ],
)
def test_send_loss_reports_refuses_bad_figures_and_sends_nothing(
    report: LossReport, field: str
) -> None:
    _, ann, _ = _ready_pair()
    with pytest.raises(LocalProtocolError) as info:
        ann.client.send_loss_reports([_report(2), report])
    assert info.value.field == field.replace("[0]", "[1]")
    assert ann.client.data_to_send() == b""
    assert ann.client.state is ClientState.READY
    # In the second message of a long batch, the index is the caller's.
    with pytest.raises(LocalProtocolError) as info:
        ann.client.send_loss_reports([_report(2)] * 66 + [report])
    assert info.value.field == field.replace("[0]", "[66]")
    assert ann.client.data_to_send() == b""


def test_send_loss_reports_refuses_non_numbers() -> None:
    @dataclass(frozen=True)
    class Bogus:
        sender_id: int = 2
        loss: Any = "lots"
        burst: float = 0.0
        jitter_ms: float = 0.0
        window_frames: int = 10

    _, ann, _ = _ready_pair()
    with pytest.raises(LocalProtocolError):
        ann.client.send_loss_reports([Bogus()])
    assert ann.client.data_to_send() == b""


def test_send_loss_reports_only_when_ready() -> None:
    client = make_client("ann")
    with pytest.raises(LocalProtocolError):
        client.send_loss_reports([_report(2)])  # IDLE
    with pytest.raises(LocalProtocolError):
        client.send_loss_reports([])  # the state is checked before anything else
    client.start(0.0)
    client.data_to_send()
    with pytest.raises(LocalProtocolError) as info:
        client.send_loss_reports([_report(2)])  # HELLO_SENT
    assert info.value.code == m.ErrorCode.UNEXPECTED_MESSAGE
    assert client.data_to_send() == b""
    net, ann, _ = _ready_pair()
    ann.client.close(now=net.now)
    with pytest.raises(LocalProtocolError):
        ann.client.send_loss_reports([_report(2)])  # CLOSING


def test_delivery_before_ready_is_a_protocol_error() -> None:
    client = make_client("ann")
    client.start(0.0)
    delivery = m.LossReportDelivery(from_=2, loss=0.1, burst=1.0, jitter_ms=3.0, frames=50)
    events = client.receive_data(encode_frame(m.encode(delivery)), 0.0)
    [closed] = [e for e in events if isinstance(e, ev.ConnectionClosed)]
    assert closed.code == m.ErrorCode.UNEXPECTED_MESSAGE
    assert closed.error is not None and closed.error.field == "t"
    assert client.state is ClientState.CLOSED
    assert not [e for e in events if isinstance(e, ev.LossReportReceived)]


def test_malformed_delivery_closes_the_client() -> None:
    net, ann, _ = _ready_pair()
    bad = _raw(
        t="loss_report_delivery",
        **{"from": 2, "loss": 2.0, "burst": 0.0, "jitter_ms": 0.0, "frames": 1},
    )
    events = ann.client.receive_data(encode_frame(bad), net.now)
    [closed] = [e for e in events if isinstance(e, ev.ConnectionClosed)]
    assert closed.code == m.ErrorCode.MALFORMED_MESSAGE
    assert closed.error is not None and closed.error.field == "loss"


# -- server routing -------------------------------------------------------------------------------


def test_round_trip_reaches_the_speaker_and_feeds_its_redundancy_policy() -> None:
    net, ann, bob = _ready_pair()  # both in the Lobby
    # Bob measures ann's path with the real meter: frames 0..99 with 10..13 lost (one burst).
    meter = LossMeter(ann.sender_id, 0.0)
    for n in range(100):
        if not 10 <= n <= 13:
            meter.on_frame(n, n * 0.02)
    report = meter.take_report(2.0)
    bob.client.send_loss_reports([report])
    net.pump()
    [got] = _received(ann)
    assert got == ev.LossReportReceived(
        listener_id=bob.sender_id,
        loss=report.loss,
        burst=report.burst,
        jitter_ms=report.jitter_ms,
        frames=report.window_frames,
    )
    assert (got.loss, got.burst, got.frames) == (0.04, 4.0, 100)
    # The speaker feeds it to its redundancy policy (whose table is not this test's business).
    policy = RedundancyPolicy()
    level = policy.add_report(
        got.listener_id,
        LossReport(ann.sender_id, got.loss, got.burst, got.jitter_ms, got.frames),
        net.now,
    )
    assert level != RedundancyPolicy().level(net.now)  # the report raised the level
    assert not _received(bob)  # nothing echoed to the reporter
    assert ann.client.state is ClientState.READY and bob.client.state is ClientState.READY
    counts = net.server.loss_report_counts
    assert counts == {**dict.fromkeys(LOSS_REPORT_COUNTERS, 0), "received": 1, "forwarded": 1}


def test_forwarded_only_to_a_speaker_sharing_a_channel() -> None:
    net = Net(_config())
    ann, bob, cat, dan = (net.connect(n) for n in ("ann", "bob", "cat", "dan"))
    _move(net, ann, A)
    _move(net, bob, A, B)
    _move(net, cat, B)
    _move(net, dan, LOBBY)
    for p in (ann, bob, cat, dan):
        p.events.clear()
    # ann (A) reports on bob (A, B), cat (B), dan (Lobby), herself and an unknown sender id.
    ann.client.send_loss_reports(
        [
            _report(bob.sender_id, loss=0.02),
            _report(cat.sender_id, loss=0.03),
            _report(dan.sender_id, loss=0.04),
            _report(ann.sender_id, loss=0.05),
            _report(999, loss=0.06),
        ]
    )
    net.pump()
    assert [(e.listener_id, e.loss) for e in _received(bob)] == [(ann.sender_id, 0.02)]
    assert _received(cat) == [] and _received(dan) == [] and _received(ann) == []
    counts = net.server.loss_report_counts
    assert counts["received"] == 5 and counts["forwarded"] == 1 and counts["not_shared"] == 4
    # bob shares B with cat, so cat hears about bob; via any shared channel, once.
    bob.client.send_loss_reports([_report(cat.sender_id), _report(ann.sender_id)])
    net.pump()
    assert [e.listener_id for e in _received(cat)] == [bob.sender_id]
    assert [e.listener_id for e in _received(ann)] == [bob.sender_id]
    # Membership is checked at every report: once bob leaves A, ann no longer gets his.
    bob.client.leave(A)
    net.pump()
    bob.client.send_loss_reports([_report(ann.sender_id), _report(cat.sender_id)])
    net.pump()
    assert _received(ann) == []
    assert len(_received(cat)) == 1
    # Nobody was punished for any of it.
    assert all(p.client.state is ClientState.READY for p in (ann, bob, cat, dan))
    assert not net.server_of(ev.SessionClosed)
    assert (
        sum(net.server.loss_report_counts[k] for k in LOSS_REPORT_COUNTERS[1:])
        == (net.server.loss_report_counts["received"])
    )


def test_a_repeated_speaker_counts_once_and_the_last_entry_wins() -> None:
    net, ann, bob = _ready_pair()
    bob.client.send_loss_reports(
        [_report(ann.sender_id, loss=0.1), _report(ann.sender_id, loss=0.3)]
    )
    net.pump()
    assert [e.loss for e in _received(ann)] == [0.3]
    assert net.server.loss_report_counts["duplicate"] == 1


def test_rate_limit_drops_and_counts_without_disconnecting() -> None:
    net = Net(_config(loss_report_rate_per_s=4.0, loss_report_burst=8))
    ann, bob = net.connect("ann"), net.connect("bob")
    for i in range(100):  # far beyond both the loss-report and the control bucket (40)
        bob.client.send_loss_reports([_report(ann.sender_id, frames=i), _report(999)])
    net.pump()
    got = _received(ann)
    assert [e.frames for e in got] == list(range(8))  # the burst, in order
    counts = net.server.loss_report_counts
    assert counts["received"] == 200
    assert counts["rate_limited"] == 184  # entries of the 92 messages over the bucket
    assert counts["forwarded"] == 8 and counts["not_shared"] == 8
    info = net.server.session_by_sender_id(bob.sender_id)
    assert info is not None and info.loss_reports_dropped == 184
    assert bob.client.state is ClientState.READY
    assert not bob.of(ev.ServerError) and not net.server_of(ev.SessionClosed)
    # Loss reports do not use the control bucket: other requests still work at once.
    bob.client.join(A)
    net.pump()
    assert bob.take(ev.MembershipChanged)
    # The bucket refills at 4/s.
    net.now += 1.0
    for i in range(6):
        bob.client.send_loss_reports([_report(ann.sender_id, frames=1000 + i)])
    net.pump()
    assert [e.frames for e in _received(ann)] == [1000, 1001, 1002, 1003]
    # Another session has its own bucket.
    ann.client.send_loss_reports([_report(bob.sender_id)])
    net.pump()
    assert len(_received(bob)) == 1


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (_entry(loss=math.nan), "reports[0].loss"),
        (_entry(burst=-1.0), "reports[0].burst"),
        (_entry(loss=1.5), "reports[0].loss"),
        (_entry(jitter_ms=-2.0), "reports[0].jitter_ms"),
        (_entry(frames=-1), "reports[0].frames"),
    ],
)
def test_server_closes_a_session_sending_malformed_reports(
    entry: dict[str, Any], field: str
) -> None:
    net, ann, bob = _ready_pair()
    net.to_server(bob, encode_frame(_raw(t="loss_report", reports=[entry])))
    net.pump()
    [err] = bob.of(ev.ServerError)
    assert err.fatal and err.code == m.ErrorCode.MALFORMED_MESSAGE
    assert f"(field {field})" in err.message
    assert bob.client.state is ClientState.CLOSED
    [closed] = net.server_of(ev.SessionClosed)
    assert closed.sender_id == bob.sender_id and closed.code == m.ErrorCode.MALFORMED_MESSAGE
    # The other session carries on; nothing was forwarded.
    assert ann.client.state is ClientState.READY and not _received(ann)
    assert net.server.loss_report_counts["received"] == 0


def test_server_closes_a_session_sending_too_many_entries() -> None:
    net, _, bob = _ready_pair()
    net.to_server(bob, encode_frame(_raw(t="loss_report", reports=[_entry()] * 65)))
    net.pump()
    [err] = bob.of(ev.ServerError)
    assert err.fatal and "(field reports)" in err.message


def test_server_refuses_reports_before_login() -> None:
    net = Net(_config())
    early = net.connect("eve", login=False)
    report = m.LossReports(reports=(m.LossReportEntry(1, 0.1, 1.0, 2.0, 10),))
    hello = m.Hello(versions=(m.PROTOCOL_VERSION,))
    for prefix in ((), (hello,)):  # AWAIT_HELLO, then AWAIT_LOGIN
        peer = early if not prefix else net.connect("fay", login=False)
        data = b"".join(encode_frame(m.encode(x)) for x in (*prefix, report))
        net.server.receive_data(peer.conn_id, data, net.now)
        out = [m.decode(p) for p in FrameDecoder().feed(net.server.data_to_send(peer.conn_id))]
        err = out[-1]
        assert isinstance(err, m.Error) and err.fatal
        assert err.code == m.ErrorCode.UNEXPECTED_MESSAGE
    assert net.server.loss_report_counts["received"] == 0


def test_config_validates_the_loss_report_limits() -> None:
    with pytest.raises(LocalProtocolError):
        ServerConfig(loss_report_rate_per_s=0.0)
    with pytest.raises(LocalProtocolError):
        ServerConfig(loss_report_burst=0)
    with pytest.raises(LocalProtocolError):
        ServerConfig(loss_report_rate_per_s=math.nan)
