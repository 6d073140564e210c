"""ChannelAdmin and the admin flag in the control core: scripted clients, a fake clock.

Channel administration (create, rename, move, password, speak ACL, delete), its refusals, the
``admin`` flag of roster entries, the first-user rule, and a restart through the server's store
(the adapter's own persistence code, without sockets).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.net._harness import identity, seeded_rng
from tests.unit.server.test_control import Raw
from voipclient.errors import LocalProtocolError
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.server.app import RelayServer, admin_channels
from voipclient.server.config import Settings
from voipclient.server.control import (
    FIRST_ADMIN_CHANNEL_ID,
    LOBBY_ID,
    ChannelConfig,
    ServerConfig,
    ServerCore,
)
from voipclient.server.store import Store
from voipclient.server.tls import load_or_create

ROOT_KEY = identity("root")[1]
CREATE, UPDATE, DELETE = m.ChannelOp.CREATE, m.ChannelOp.UPDATE, m.ChannelOp.DELETE
Code = m.ErrorCode
NEW = FIRST_ADMIN_CHANNEL_ID
A, B = 2, 3  # configured: "A" under the Lobby, "B" under A


def config(**kwargs: object) -> ServerConfig:
    return ServerConfig(
        channels=(ChannelConfig(A, "A"), ChannelConfig(B, "B", parent=A)),
        **kwargs,  # type: ignore[arg-type]
    )


def setup(**kwargs: object) -> tuple[ServerCore, Raw, Raw]:
    """A core whose admin is "root" (sender 1), with bob (2) logged in; everything read."""
    c = ServerCore(config(admins=frozenset({ROOT_KEY}), **kwargs), rng=seeded_rng(5))
    root, bob = Raw(c, 1), Raw(c, 2)
    root.login("root")
    bob.login("bob")
    root.recv()
    c.events()
    return c, root, bob


def handled(events: list[ev.ServerEvent]) -> list[tuple[object, ...]]:
    return [
        (e.sender_id, e.op, e.channel_id, e.channel_name, e.code)
        for e in events
        if isinstance(e, ev.ChannelAdminHandled)
    ]


def saved(events: list[ev.ServerEvent]) -> list[ev.ChannelSaved]:
    return [e for e in events if isinstance(e, ev.ChannelSaved)]


def create(raw: Raw, name: str, **fields: object) -> list[m.Message]:
    return raw.send(m.ChannelAdmin(CREATE, name=name, **fields))  # type: ignore[arg-type]


# -- create ----------------------------------------------------------------------------------------


def test_create_reaches_everyone_and_is_confirmed_to_the_requester() -> None:
    c, root, bob = setup()
    info = m.ChannelInfo(NEW, LOBBY_ID, "Raid", "tonight", False, 5)
    assert create(root, "Raid", description="tonight", max_members=5) == [
        m.ChannelAdded(info),
        m.ChannelAdminOk(CREATE, NEW),
    ]
    assert bob.recv() == [m.ChannelAdded(info)]
    events = c.events()
    assert handled(events) == [(1, CREATE, NEW, "Raid", 0)]
    assert saved(events) == [
        ev.ChannelSaved(NEW, LOBBY_ID, "Raid", "tonight", False, None, 5, None)
    ]
    assert c.admin_channels == {NEW}
    # Under a configured channel, with a password and a speak ACL; ids count up.
    out = create(root, "Raid", parent=B, password="pw", speakers=("root",))
    assert out[-1] == m.ChannelAdminOk(CREATE, NEW + 1)
    assert c.roster.channels[NEW + 1].parent == B
    assert c.roster.channels[NEW + 1].password_protected
    [record] = saved(c.events())
    assert record.new_password == "pw" and record.speakers == frozenset({"root"})
    assert "pw" not in repr(record)
    # The ACL and the password work like configured ones.
    bob.recv()
    assert bob.send(m.JoinChannel(NEW + 1))[-1].code == Code.WRONG_CHANNEL_PASSWORD  # type: ignore[union-attr]
    assert bob.send(m.JoinChannel(NEW + 1, "pw")) == [m.MembershipChanged(2, NEW + 1, True, False)]


def test_ids_of_deleted_channels_are_not_reused_and_next_channel_id_is_honoured() -> None:
    _, root, _ = setup()
    create(root, "One")
    root.send(m.ChannelAdmin(DELETE, channel_id=NEW))
    assert create(root, "Two")[-1] == m.ChannelAdminOk(CREATE, NEW + 1)
    # After a restart the adapter passes the store's counter back in.
    c2 = ServerCore(config(admins=frozenset({ROOT_KEY})), next_channel_id=NEW + 7)
    r2 = Raw(c2, 1)
    r2.login("root")
    assert create(r2, "Three")[-1] == m.ChannelAdminOk(CREATE, NEW + 7)


# -- update ----------------------------------------------------------------------------------------


def test_update_renames_moves_and_changes_password_limit_and_speak_acl() -> None:
    c, root, bob = setup()
    create(root, "Raid", description="keep me")
    bob.recv()
    assert bob.send(m.JoinChannel(NEW)) == [m.MembershipChanged(2, NEW, True, True)]
    root.recv()
    c.events()

    # Rename: only the name changes; absent fields stay.
    renamed = m.ChannelInfo(NEW, LOBBY_ID, "Raid night", "keep me")
    assert root.send(m.ChannelAdmin(UPDATE, NEW, name="Raid night")) == [
        m.ChannelUpdated(renamed),
        m.ChannelAdminOk(UPDATE, NEW),
    ]
    assert bob.recv() == [m.ChannelUpdated(renamed)]
    # Move under a configured channel.
    root.send(m.ChannelAdmin(UPDATE, NEW, parent=B))
    assert c.roster.channels[NEW].parent == B
    # Password set: members stay, newcomers need it.
    root.send(m.ChannelAdmin(UPDATE, NEW, password="s3cret", max_members=1))
    assert c.roster.channels[NEW].password_protected
    assert c.roster.members(NEW) == {2}  # a lower limit and a password remove nobody
    # Speak ACL: bob loses the right to speak, then everyone may speak again.
    bob.recv()
    assert root.send(m.ChannelAdmin(UPDATE, NEW, speakers=("root",)))[1:] == [
        m.MembershipChanged(2, NEW, True, False),
        m.ChannelAdminOk(UPDATE, NEW),
    ]
    assert not c.may_speak(2, NEW)
    assert bob.recv()[-1] == m.MembershipChanged(2, NEW, True, False)
    root.send(m.ChannelAdmin(UPDATE, NEW, everyone_speaks=True))
    assert c.may_speak(2, NEW)
    # Password cleared with "".
    root.send(m.ChannelAdmin(UPDATE, NEW, password=""))
    view = c.roster.channels[NEW]
    assert (view.name, view.parent, view.description, view.password_protected) == (
        "Raid night",
        B,
        "keep me",
        False,
    )
    assert view.max_members == 1
    events = c.events()
    assert [e.code for e in events if isinstance(e, ev.ChannelAdminHandled)] == [0] * 6
    records = saved(events)
    assert [(r.password_protected, r.new_password) for r in records] == [
        (False, None),  # rename
        (False, None),  # move
        (True, "s3cret"),  # password set
        (True, None),  # speakers: the stored password stays
        (True, None),  # everyone speaks
        (False, None),  # password removed
    ]
    assert [r.speakers for r in records][3:5] == [frozenset({"root"}), None]


def test_a_channel_moves_with_its_sub_channels_but_never_below_itself() -> None:
    c, root, _ = setup()
    create(root, "Top")
    create(root, "Mid", parent=NEW)
    create(root, "Low", parent=NEW + 1)
    root.recv()
    for parent in (NEW, NEW + 2):
        [err] = root.send(m.ChannelAdmin(UPDATE, NEW, parent=parent))
        assert err == m.Error(Code.INVALID_CHANNEL, err.message, False, NEW)  # type: ignore[union-attr]
    assert root.send(m.ChannelAdmin(UPDATE, NEW + 1, parent=A))[-1] == m.ChannelAdminOk(
        UPDATE, NEW + 1
    )
    assert c.roster.channels[NEW + 2].parent == NEW + 1
    assert c.roster.channels[NEW + 1].parent == A


# -- delete ----------------------------------------------------------------------------------------


def test_delete_refuses_a_channel_with_sub_channels_and_ends_memberships() -> None:
    c, root, bob = setup()
    create(root, "Parent")
    create(root, "Child", parent=NEW)
    bob.recv()
    bob.send(m.JoinChannel(NEW + 1))
    root.recv()
    c.events()
    [err] = root.send(m.ChannelAdmin(DELETE, NEW))
    assert err == m.Error(Code.CHANNEL_HAS_SUBCHANNELS, err.message, False, NEW)  # type: ignore[union-attr]
    assert "sub-channels" in err.message
    assert root.send(m.ChannelAdmin(DELETE, NEW + 1)) == [
        m.ChannelRemoved(NEW + 1),
        m.ChannelAdminOk(DELETE, NEW + 1),
    ]
    assert bob.recv() == [m.ChannelRemoved(NEW + 1)]
    assert c.roster.channels_of(2) == {LOBBY_ID}
    root.send(m.ChannelAdmin(DELETE, NEW))
    assert set(c.roster.channels) == {LOBBY_ID, A, B}
    events = c.events()
    assert [e for e in events if isinstance(e, ev.ChannelDeleted)] == [
        ev.ChannelDeleted(NEW + 1),
        ev.ChannelDeleted(NEW),
    ]
    assert handled(events) == [
        (1, DELETE, NEW, "Parent", Code.CHANNEL_HAS_SUBCHANNELS),
        (1, DELETE, NEW + 1, "Child", 0),
        (1, DELETE, NEW, "Parent", 0),
    ]
    assert c.admin_channels == frozenset()


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "code", "about"),
    [
        (m.ChannelAdmin(UPDATE, 99, name="x"), Code.NO_SUCH_CHANNEL, 99),
        (m.ChannelAdmin(DELETE, 99), Code.NO_SUCH_CHANNEL, 99),
        (m.ChannelAdmin(CREATE, name="x", parent=77), Code.NO_SUCH_CHANNEL, 77),
        (m.ChannelAdmin(UPDATE, NEW, parent=77), Code.NO_SUCH_CHANNEL, 77),
        # The Lobby and the configured channels belong to the configuration.
        (m.ChannelAdmin(DELETE, LOBBY_ID), Code.CHANNEL_LOCKED, LOBBY_ID),
        (m.ChannelAdmin(UPDATE, LOBBY_ID, name="Hall"), Code.CHANNEL_LOCKED, LOBBY_ID),
        (m.ChannelAdmin(UPDATE, A, description="x"), Code.CHANNEL_LOCKED, A),
        (m.ChannelAdmin(DELETE, B), Code.CHANNEL_LOCKED, B),
        # Names are unique among siblings, by account key (case and look-alikes).
        (m.ChannelAdmin(CREATE, name="a"), Code.CHANNEL_NAME_TAKEN, None),
        (m.ChannelAdmin(CREATE, name="Mine"), Code.CHANNEL_NAME_TAKEN, None),
        (m.ChannelAdmin(CREATE, name="M\u0456NE"), Code.CHANNEL_NAME_TAKEN, None),  # a Cyrillic i
        (m.ChannelAdmin(UPDATE, NEW, parent=LOBBY_ID, name="A"), Code.CHANNEL_NAME_TAKEN, NEW),
        (m.ChannelAdmin(UPDATE, NEW + 1, name="MINE"), Code.CHANNEL_NAME_TAKEN, NEW + 1),
    ],
)
def test_refusals_are_non_fatal_and_change_nothing(
    msg: m.ChannelAdmin, code: int, about: int | None
) -> None:
    c, root, bob = setup()
    create(root, "Mine")
    create(root, "Other")
    bob.recv()
    c.events()
    before = c.roster
    [err] = root.send(msg)
    assert err == m.Error(code, err.message, False, about)  # type: ignore[union-attr]
    assert bob.recv() == []
    assert c.roster == before
    events = c.events()
    assert [e.code for e in events if isinstance(e, ev.ChannelAdminHandled)] == [code]
    assert not saved(events) and not any(isinstance(e, ev.ChannelDeleted) for e in events)
    assert root.send(m.Ping(1, 0)) == [m.Pong(1, 0, 0)]  # still logged in


def test_a_non_admin_is_refused_first() -> None:
    c, root, bob = setup()
    create(root, "Mine")
    bob.recv()
    c.events()
    for msg in (
        m.ChannelAdmin(CREATE, name="Mine"),  # would be NAME_TAKEN for an admin
        m.ChannelAdmin(UPDATE, NEW, name="Yours"),
        m.ChannelAdmin(DELETE, LOBBY_ID),
        m.ChannelAdmin(DELETE, 99),
    ):
        [err] = bob.send(msg)
        assert err == m.Error(Code.NOT_ADMIN, err.message, False, msg.channel_id)  # type: ignore[union-attr]
    assert root.recv() == []
    assert set(c.roster.channels) == {LOBBY_ID, A, B, NEW}
    assert [code for *_, code in handled(c.events())] == [Code.NOT_ADMIN] * 4


def test_the_channel_limit() -> None:
    _, root, _ = setup(max_channels=4)  # Lobby, A, B: room for one more
    assert create(root, "One")[-1] == m.ChannelAdminOk(CREATE, NEW)
    [err] = create(root, "Two")
    assert err == m.Error(Code.INVALID_CHANNEL, err.message, False, None)  # type: ignore[union-attr]
    assert "maximum of 4" in err.message
    with pytest.raises(LocalProtocolError):
        ServerConfig(max_channels=0)


def test_admin_channels_passed_in_are_validated_and_editable() -> None:
    made = (ChannelConfig(NEW + 1, "Kid", parent=NEW), ChannelConfig(NEW, "Made", parent=B))
    c = ServerCore(config(admins=frozenset({ROOT_KEY})), admin_channels=made)
    assert c.admin_channels == {NEW, NEW + 1}
    root = Raw(c, 1)
    [ok] = root.login("root")
    assert isinstance(ok, m.LoginOk)
    assert [ch.id for ch in ok.channels] == [LOBBY_ID, A, B, NEW, NEW + 1]  # parents first
    assert root.send(m.ChannelAdmin(UPDATE, NEW + 1, name="Kid2"))[-1] == m.ChannelAdminOk(
        UPDATE, NEW + 1
    )
    assert create(root, "Fresh")[-1] == m.ChannelAdminOk(CREATE, NEW + 2)
    bad: list[tuple[ChannelConfig, ...]] = [
        (ChannelConfig(A, "dup id"),),
        (ChannelConfig(NEW, "orphan", parent=77),),
        (ChannelConfig(NEW, "x", parent=NEW + 1), ChannelConfig(NEW + 1, "y", parent=NEW)),
    ]
    for channels in bad:
        with pytest.raises(LocalProtocolError):
            ServerCore(config(), admin_channels=channels)


# -- the admin flag and the first user ------------------------------------------------------------


def test_roster_entries_say_who_is_an_admin() -> None:
    c, root, bob = setup()
    carol = Raw(c, 3)
    [ok] = carol.login("carol")
    assert isinstance(ok, m.LoginOk)
    assert {u.name: u.admin for u in ok.users} == {"root": True, "bob": False, "carol": False}
    [joined] = root.recv()
    assert isinstance(joined, m.UserJoined) and not joined.user.admin
    # A UserUpdated keeps the flag.
    root.send(m.SetSelfState(muted=True))
    [update] = bob.recv()[-1:]
    assert isinstance(update, m.UserUpdated) and update.user.admin and update.user.muted
    assert c.admins == {ROOT_KEY}


def test_the_first_user_becomes_admin_and_the_second_does_not() -> None:
    c = ServerCore(config(admin_first_user=True), rng=seeded_rng(6))
    assert c.admins == frozenset()
    ann, bob = Raw(c, 1), Raw(c, 2)
    [ok] = ann.login("ann")
    ann_key = identity("ann")[1]
    assert isinstance(ok, m.LoginOk) and ok.users[0].admin
    events = c.events()
    assert events[0] == ev.AdminGranted(ann_key, "ann")
    assert isinstance(events[1], ev.SessionAuthenticated)
    [ok] = bob.login("bob")
    assert isinstance(ok, m.LoginOk)
    assert {u.name: u.admin for u in ok.users} == {"ann": True, "bob": False}
    assert not any(isinstance(e, ev.AdminGranted) for e in c.events())
    assert c.admins == {ann_key}
    # The admin may administer; the second user may not.
    assert create(ann, "Ann's")[-1] == m.ChannelAdminOk(CREATE, NEW)
    bob.recv()
    [err] = bob.send(m.ChannelAdmin(DELETE, NEW))
    assert err.code == Code.NOT_ADMIN  # type: ignore[union-attr]
    # Leaving and coming back changes nothing: ann stays the admin, bob is not promoted.
    ann.send(m.Bye())
    c.connection_lost(1, 0)
    again = Raw(c, 3)
    [ok] = again.login("bob2", key_label="bob")
    assert isinstance(ok, m.LoginOk) and not any(u.admin for u in ok.users)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"config": config(admin_first_user=True, admins=frozenset({ROOT_KEY}))},
        {"config": config(admin_first_user=True), "granted_admins": [ROOT_KEY]},
    ],
)
def test_no_first_user_admin_when_an_admin_exists(kwargs: dict[str, object]) -> None:
    c = ServerCore(**kwargs)  # type: ignore[arg-type]
    ann = Raw(c, 1)
    [ok] = ann.login("ann")
    assert isinstance(ok, m.LoginOk) and not ok.users[0].admin
    assert not any(isinstance(e, ev.AdminGranted) for e in c.events())
    root = Raw(c, 2)
    [ok] = root.login("root")
    assert isinstance(ok, m.LoginOk)
    assert {u.name: u.admin for u in ok.users} == {"ann": False, "root": True}
    with pytest.raises(LocalProtocolError):
        ServerCore(config(), granted_admins=[b"short"])


# -- a restart through the store -------------------------------------------------------------------


def test_channels_and_the_first_user_admin_survive_a_restart(tmp_path: Path) -> None:
    """What the adapter persists (its own ``_on_event`` code, a real store) gives the next core
    the same channels (password included) and the same administrator."""
    settings = Settings(
        admin_first_user=True, channels=Settings().with_quick_channels(["A", "B"]).channels
    )
    store = Store.open(tmp_path / "data")
    server = RelayServer(settings, load_or_create(tmp_path / "tls"), store)

    def run_core() -> ServerCore:
        return ServerCore(
            settings.server_config(udp_port=0),
            rng=seeded_rng(7),
            admin_channels=admin_channels(settings, store.channels()),
            granted_admins=[a.ik_pub for a in store.admins()],
            next_channel_id=store.next_channel_id(),
        )

    def persist(c: ServerCore) -> None:
        for event in c.events():
            if isinstance(event, ev.ChannelSaved | ev.ChannelDeleted):
                server._persist_channel(event)
            elif isinstance(event, ev.AdminGranted):
                store.add_admin(event.ik_pub, event.name, "first user")

    c1 = run_core()
    ann, bob = Raw(c1, 1), Raw(c1, 2)
    ann.login("ann")
    bob.login("bob")
    create(ann, "Vault", parent=A, password="open sesame", speakers=("ann",))
    create(ann, "Inner", parent=NEW, description="deep")
    create(ann, "Gone")
    ann.send(m.ChannelAdmin(UPDATE, NEW + 1, name="Inner sanctum"))
    ann.send(m.ChannelAdmin(DELETE, NEW + 2))
    persist(c1)

    c2 = run_core()
    bob2, ann2 = Raw(c2, 1), Raw(c2, 2)
    [ok] = bob2.login("bob")  # first to log in this time: still not an admin
    assert isinstance(ok, m.LoginOk) and not ok.users[0].admin
    [ok] = ann2.login("ann")
    assert isinstance(ok, m.LoginOk)
    assert {u.name: u.admin for u in ok.users} == {"ann": True, "bob": False}
    got = {ch.id: (ch.parent, ch.name, ch.description, ch.password_protected) for ch in ok.channels}
    assert got == {
        LOBBY_ID: (None, "Lobby", "", False),
        A: (LOBBY_ID, "A", "", False),
        B: (LOBBY_ID, "B", "", False),
        NEW: (A, "Vault", "", True),
        NEW + 1: (NEW, "Inner sanctum", "deep", False),
    }
    assert c2.admin_channels == {NEW, NEW + 1}
    # The password was stored as a hash and still opens the channel; the ACL holds.
    assert b"open sesame" not in (tmp_path / "data" / "server.sqlite3").read_bytes()
    assert bob2.send(m.JoinChannel(NEW, "wrong"))[-1].code == Code.WRONG_CHANNEL_PASSWORD  # type: ignore[union-attr]
    assert bob2.send(m.JoinChannel(NEW, "open sesame"))[-1] == m.MembershipChanged(
        1, NEW, True, False
    )
    # The deleted channel's id is not given out again.
    assert create(ann2, "Later")[-1] == m.ChannelAdminOk(CREATE, NEW + 3)
    store.close()


def test_embedded_server_options(tmp_path: Path) -> None:
    from voipclient.server.embedded import (
        DEFAULT_CHANNELS,
        EmbeddedServer,
        EmbeddedServerError,
    )

    s = EmbeddedServer(tmp_path).settings
    assert s.admin_first_user and s.admins == () and s.channels == ()
    assert tuple(c.name for c in s.seed_channels) == DEFAULT_CHANNELS  # seeded, not configured
    s = EmbeddedServer(tmp_path, first_user_admin=False, admin_keys=(ROOT_KEY,)).settings
    assert not s.admin_first_user and s.admins == (ROOT_KEY,)
    assert s.server_config(udp_port=0).admins == {ROOT_KEY}
    with pytest.raises(EmbeddedServerError):
        EmbeddedServer(tmp_path, admin_keys=(b"short",))
    with pytest.raises(EmbeddedServerError):
        EmbeddedServer(tmp_path, channels=("General", "general"))
