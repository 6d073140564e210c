"""Hop secrets and passwords never show in a repr (so a debug log of an event leaks nothing)."""

from __future__ import annotations

from tests.unit.net._harness import Net
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.roster import RosterSnapshot

SECRET = bytes(range(100, 132))


def test_messages_hide_hop_secret_and_passwords() -> None:
    login_ok = m.LoginOk(sender_id=1, hop_secret=SECRET, udp_port=64738)
    login = m.Login(name="ann", ik_pub=b"k" * 32, signature=b"s" * 64, password="hunter2-pw")
    join = m.JoinChannel(channel_id=2, password="channel-pw")
    for msg, secret in ((login_ok, repr(SECRET)), (login, "hunter2-pw"), (join, "channel-pw")):
        text = repr(msg)
        assert secret not in text
        assert "<hidden>" in text
    assert m.decode(m.encode(login_ok)) == login_ok  # the codec is untouched


def test_events_and_session_info_hide_hop_secret() -> None:
    logged_in = ev.LoggedIn(1, SECRET, 0, RosterSnapshot())
    auth = ev.SessionAuthenticated(1, 1, "ann", b"k" * 32, SECRET)
    assert all(
        SECRET.hex() not in repr(x) and repr(SECRET) not in repr(x) for x in (logged_in, auth)
    )
    net = Net()
    peer = net.connect("ann")
    info = net.server.session_by_sender_id(peer.sender_id)
    assert info is not None and len(info.hop_secret) == 32
    assert repr(info.hop_secret) not in repr(info)
