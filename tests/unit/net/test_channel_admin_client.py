"""Channel administration and the admin flag on the client side: the messages (wire form,
validation), the transition table, ``ClientSession.channel_admin``/``is_admin`` against a scripted
server, and ``ClientConnection`` against a real ServerCore in memory."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from tests.unit.net._relay_world import PORT, World
from voipclient.crypto.identity import IdentityKey
from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.states import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ClientState,
    Direction,
    ServerState,
)
from voipclient.server.control import FIRST_ADMIN_CHANNEL_ID, ChannelConfig, ServerConfig

from ._harness import make_client
from .test_client import HOP, LOBBY, OTHER, T0, frames, parse, ready_client

CREATE, UPDATE, DELETE = m.ChannelOp.CREATE, m.ChannelOp.UPDATE, m.ChannelOp.DELETE
NEW = FIRST_ADMIN_CHANNEL_ID


# -- messages ------------------------------------------------------------------------------------


def raw(payload: dict[str, object]) -> bytes:
    return msgspec.msgpack.encode(payload)


def test_wire_form_leaves_unchanged_fields_out() -> None:
    assert msgspec.msgpack.decode(m.encode(m.ChannelAdmin(UPDATE, 5, name="x"))) == {
        "t": "channel_admin",
        "op": 2,
        "channel_id": 5,
        "name": "x",
    }
    # "" (remove the password) and [] (nobody may speak) are values, not "unchanged".
    msg = m.ChannelAdmin(UPDATE, 5, password="", speakers=())
    assert msgspec.msgpack.decode(m.encode(msg)) == {
        "t": "channel_admin",
        "op": 2,
        "channel_id": 5,
        "password": "",
        "speakers": [],
    }
    assert m.decode(m.encode(msg)) == msg
    full = m.ChannelAdmin(
        CREATE,
        name="Raid",
        parent=3,
        description="tonight\n",
        password="pw",
        max_members=4,
        speakers=("ann", "bob"),
    )
    assert m.decode(m.encode(full)) == full
    assert "pw" not in repr(full) and "<hidden>" in repr(full)
    ok = m.ChannelAdminOk(DELETE, 7)
    assert msgspec.msgpack.decode(m.encode(ok)) == {
        "t": "channel_admin_ok",
        "op": 3,
        "channel_id": 7,
    }
    assert m.decode(m.encode(ok)) == ok


@pytest.mark.parametrize(
    "payload",
    [
        {"op": 1},  # create without a name
        {"op": 1, "name": "x", "channel_id": 5},  # create names no channel
        {"op": 2, "name": "x"},  # update without channel_id
        {"op": 3},  # delete without channel_id
        {"op": 3, "channel_id": 5, "name": "x"},  # delete takes nothing else
        {"op": 3, "channel_id": 5, "everyone_speaks": True},
        {"op": 2, "channel_id": 5, "speakers": ["a"], "everyone_speaks": True},
        {"op": 4, "channel_id": 5},
        {"op": 1, "name": " x"},
        {"op": 1, "name": "x" * 65},
        {"op": 1, "name": "x", "description": "bell\x07"},
        {"op": 1, "name": "x", "password": "p" * 129},
        {"op": 1, "name": "x", "speakers": ["a"] * 257},
        {"op": 1, "name": "x", "speakers": [""]},
        {"op": 1, "name": "x", "max_members": -1},
        {"op": 2, "channel_id": 0},
    ],
)
def test_malformed_channel_admin_is_refused(payload: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.decode(raw({"t": "channel_admin", **payload}))
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


def test_user_info_admin_flag_is_optional_both_ways() -> None:
    user = m.UserInfo(3, "ann", b"k" * 32)
    assert "admin" not in msgspec.msgpack.decode(m.encode(m.UserJoined(user)))["user"]
    # What an older server sends decodes with admin false; an older client ignores the key.
    old = raw({"t": "user_joined", "user": {"sender_id": 3, "name": "ann", "ik_pub": b"k" * 32}})
    decoded = m.decode(old)
    assert isinstance(decoded, m.UserJoined) and decoded.user.admin is False
    admin = m.UserInfo(3, "ann", b"k" * 32, admin=True)
    assert msgspec.msgpack.decode(m.encode(m.UserJoined(admin)))["user"]["admin"] is True
    assert m.decode(m.encode(m.UserJoined(admin))) == m.UserJoined(admin)


def test_new_error_codes_are_distinct() -> None:
    codes = [
        m.ErrorCode.CHANNEL_NAME_TAKEN,
        m.ErrorCode.CHANNEL_LOCKED,
        m.ErrorCode.CHANNEL_HAS_SUBCHANNELS,
        m.ErrorCode.INVALID_CHANNEL,
    ]
    assert [int(c) for c in codes] == [52, 53, 54, 55]


def test_transition_table_allows_them_when_ready_only() -> None:
    assert (Direction.SEND, m.ChannelAdmin) in CLIENT_TRANSITIONS[ClientState.READY]
    assert (Direction.RECV, m.ChannelAdminOk) in CLIENT_TRANSITIONS[ClientState.READY]
    assert (Direction.RECV, m.ChannelAdmin) in SERVER_TRANSITIONS[ServerState.READY]
    assert (Direction.SEND, m.ChannelAdminOk) in SERVER_TRANSITIONS[ServerState.READY]
    for state in (ClientState.HELLO_SENT, ClientState.LOGIN_SENT, ClientState.SYNCING):
        assert (Direction.SEND, m.ChannelAdmin) not in CLIENT_TRANSITIONS[state]
    assert (Direction.RECV, m.ChannelAdmin) not in SERVER_TRANSITIONS[ServerState.AWAIT_LOGIN]


# -- ClientSession --------------------------------------------------------------------------------


def test_channel_admin_intent_encodes_the_request() -> None:
    client = ready_client()
    client.channel_admin("create", name="Raid", description="d", password="pw", max_members=3)
    client.channel_admin(UPDATE, 5, name="Raid 2", speakers=["ann"])
    client.channel_admin("Update", 5, password="", everyone_speaks=True)
    client.channel_admin(3, 5)  # type: ignore[arg-type]  # an int is taken as a ChannelOp
    assert parse(client.data_to_send()) == [
        m.ChannelAdmin(CREATE, name="Raid", description="d", password="pw", max_members=3),
        m.ChannelAdmin(UPDATE, 5, name="Raid 2", speakers=("ann",)),
        m.ChannelAdmin(UPDATE, 5, password="", everyone_speaks=True),
        m.ChannelAdmin(DELETE, 5),
    ]


def test_bad_channel_admin_arguments_are_local_errors_and_send_nothing() -> None:
    client = ready_client()
    bad: list[Callable[[], None]] = [
        lambda: client.channel_admin("rename", 5, name="x"),
        lambda: client.channel_admin(9, 5),  # type: ignore[arg-type]
        lambda: client.channel_admin("create"),  # no name
        lambda: client.channel_admin("create", 5, name="x"),  # a create names no channel
        lambda: client.channel_admin("update", name="x"),  # no channel
        lambda: client.channel_admin("delete", 5, name="x"),
        lambda: client.channel_admin("update", 5, speakers=["a"], everyone_speaks=True),
        lambda: client.channel_admin("update", 5, speakers="ann"),  # a string, not a list
    ]
    for call in bad:
        with pytest.raises(LocalProtocolError):
            call()
    with pytest.raises(LocalProtocolError) as info:
        client.channel_admin("create", name="x" * 65)
    assert info.value.field == "name"
    with pytest.raises(LocalProtocolError) as info:
        client.channel_admin("update", 5, speakers=["ok", ""])
    assert info.value.field == "speakers[1]"
    assert client.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        make_client("bob").channel_admin("delete", 5)  # not READY


def test_confirmation_becomes_an_event() -> None:
    client = ready_client()
    events = client.receive_data(
        frames(
            m.ChannelAdded(m.ChannelInfo(NEW, 1, "Raid")),
            m.ChannelAdminOk(CREATE, NEW),
            m.Error(m.ErrorCode.CHANNEL_NAME_TAKEN, "taken", channel_id=None),
        ),
        T0,
    )
    assert [type(e) for e in events] == [
        ev.ChannelAdded,
        ev.ChannelAdminDone,
        ev.ServerError,
        ev.RosterChanged,
    ]
    assert events[1] == ev.ChannelAdminDone(CREATE, NEW)
    assert events[2] == ev.ServerError(m.ErrorCode.CHANNEL_NAME_TAKEN, "taken", False, None)
    assert client.state is ClientState.READY


def test_is_admin_follows_our_own_roster_entry() -> None:
    client = make_client("alice")
    assert not client.is_admin
    client.start(T0)
    client.receive_data(
        frames(m.ServerHello("vc1", bytes(32), "srv", m.Limits(65536, 8, 20.0, 40, 30000, 100.0))),
        T0,
    )
    me = m.UserInfo(7, client.name, client.ik_pub, channels=(m.Membership(1),), admin=True)
    other = OTHER
    client.receive_data(frames(m.LoginOk(7, HOP, 6000, (LOBBY,), (me, other))), T0)
    assert client.is_admin
    assert client.roster.users[7].admin and not client.roster.users[8].admin
    # A server that predates the flag: nobody is an admin as far as the client knows.
    assert not ready_client().is_admin


# -- ClientConnection against a real core ----------------------------------------------------------


def test_connection_channel_admin_and_is_admin_end_to_end() -> None:
    root_id = IdentityKey.generate()
    config = ServerConfig(
        udp_port=PORT,
        channels=(ChannelConfig(2, "Game"),),
        admins=frozenset({root_id.public_bytes()}),
    )
    w = World(config)
    root = w.add("root", identity=root_id)
    bob = w.add("bob")
    assert root.conn.is_admin and not bob.conn.is_admin
    assert bob.conn.roster is not None and bob.conn.roster.users[root.sid].admin

    assert root.conn.channel_admin("create", w.now, name="Raid", parent=2, password="pw")
    w.settle()
    [done] = root.of(ev.ChannelAdminDone)
    assert done == ev.ChannelAdminDone(CREATE, NEW)
    [added] = bob.of(ev.ChannelAdded)
    assert (added.channel.id, added.channel.parent, added.channel.name) == (NEW, 2, "Raid")
    assert added.channel.password_protected

    w.join(bob, NEW, "pw")
    assert bob.conn.roster is not None and bob.sid in bob.conn.roster.members(NEW)
    root.conn.channel_admin("update", w.now, channel_id=NEW, name="Raid night", speakers=["root"])
    w.settle()
    [updated] = bob.of(ev.ChannelUpdated)
    assert (updated.channel.name, updated.previous.name) == ("Raid night", "Raid")
    assert not bob.conn.roster.may_speak(bob.sid, NEW)

    # A non-admin is refused and stays connected.
    assert bob.conn.channel_admin("delete", w.now, channel_id=NEW)
    w.settle()
    [err] = bob.of(ev.ServerError)
    assert (err.code, err.fatal, err.channel_id) == (m.ErrorCode.NOT_ADMIN, False, NEW)

    root.conn.channel_admin("delete", w.now, channel_id=NEW)
    w.settle()
    [removed] = bob.of(ev.ChannelRemoved)
    assert removed.channel.id == NEW and bob.sid in removed.members
    assert NEW not in bob.conn.roster.channels
    assert [d.op for d in root.of(ev.ChannelAdminDone)] == [CREATE, UPDATE, DELETE]

    w.cut(bob)
    assert not bob.conn.is_admin
    assert not bob.conn.channel_admin("create", w.now, name="x")  # not logged in


def test_the_first_user_rule_through_the_connection() -> None:
    w = World(ServerConfig(udp_port=PORT, admin_first_user=True))
    ann = w.add("ann")
    bob = w.add("bob")
    assert ann.conn.is_admin and not bob.conn.is_admin
    granted = [e for e in w.server_events if isinstance(e, ev.AdminGranted)]
    assert [g.name for g in granted] == ["ann"]
