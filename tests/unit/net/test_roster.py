"""The roster model: tree, users, memberships, speak rights, snapshots, wire deltas."""

from __future__ import annotations

import pytest

from voipclient.net import messages as m
from voipclient.net.roster import (
    ChannelNotFound,
    ChannelView,
    Roster,
    RosterError,
    RosterSnapshot,
    UserView,
    find_channel,
)

IK = b"k" * 32


def _roster() -> Roster:
    r = Roster()
    r.add_channel(ChannelView(1, None, "Lobby"))
    r.add_channel(ChannelView(2, 1, "A"))
    r.add_channel(ChannelView(3, 1, "B"))
    r.add_channel(ChannelView(4, 2, "A-sub"))
    r.add_user(UserView(10, "ann", IK), {1: True, 2: True})
    r.add_user(UserView(11, "bob", IK), {1: True, 2: False, 3: True})
    return r


def test_snapshot_queries() -> None:
    snap = _roster().snapshot()
    assert snap.members(2) == {10, 11}
    assert snap.members(99) == frozenset()
    assert snap.channels_of(11) == {1, 2, 3}
    assert snap.may_speak(10, 2)
    assert not snap.may_speak(11, 2)  # member, but the ACL says listen only
    assert not snap.may_speak(10, 3)  # not a member
    assert [c.name for c in snap.children(None)] == ["Lobby"]
    assert [c.id for c in snap.children(1)] == [2, 3]
    assert snap.user_by_name("BOB") == UserView(11, "bob", IK)
    assert snap.user_by_name("zed") is None


def test_snapshot_is_immutable_and_cached() -> None:
    r = _roster()
    snap = r.snapshot()
    assert r.snapshot() is snap
    with pytest.raises(TypeError):
        snap.users[12] = UserView(12, "x", IK)  # type: ignore[index]
    r.set_membership(10, 3, True)
    after = r.snapshot()
    assert after is not snap
    assert snap.channels_of(10) == {1, 2}  # the old snapshot did not change
    assert after.channels_of(10) == {1, 2, 3}


def test_membership_changes() -> None:
    r = _roster()
    r.set_membership(10, 2, True, may_speak=False)  # re-join updates the speak right
    assert not r.may_speak(10, 2)
    r.set_membership(10, 2, False)
    assert r.channels_of(10) == {1}
    with pytest.raises(RosterError):
        r.set_membership(10, 2, False)
    with pytest.raises(RosterError):
        r.set_membership(10, 99, True)
    with pytest.raises(RosterError):
        r.set_membership(99, 1, True)


def test_channel_tree_rules() -> None:
    r = _roster()
    with pytest.raises(RosterError):
        r.add_channel(ChannelView(2, 1, "dup"))
    with pytest.raises(RosterError):
        r.add_channel(ChannelView(5, 42, "orphan"))
    with pytest.raises(RosterError):
        r.update_channel(ChannelView(2, 4, "A"))  # 4 is a child of 2: a cycle
    with pytest.raises(RosterError):
        r.remove_channel(2)  # still has a sub-channel
    r.remove_channel(4)
    r.remove_channel(2)  # memberships of it end with it
    assert r.channels_of(10) == {1}
    assert r.channels_of(11) == {1, 3}
    assert r.channel_ids() == [1, 3]
    old = r.update_channel(ChannelView(3, 1, "B2", "desc", True, 5))
    assert old.name == "B"
    assert r.snapshot().channels[3].password_protected


def test_channel_ids_parents_first() -> None:
    r = Roster()
    r.add_channel(ChannelView(5, None, "root"))
    r.add_channel(ChannelView(2, 5, "x"))
    r.add_channel(ChannelView(9, 5, "y"))
    r.add_channel(ChannelView(3, 9, "z"))
    assert r.channel_ids() == [5, 2, 9, 3]


def test_users() -> None:
    r = _roster()
    with pytest.raises(RosterError):
        r.add_user(UserView(10, "again", IK))
    with pytest.raises(RosterError):
        r.add_user(UserView(12, "x", IK), {77: True})
    r.update_user(UserView(10, "ann", IK, sk_pub=b"p", skc=b"c"))
    assert r.channels_of(10) == {1, 2}  # memberships untouched when not given
    assert r.remove_user(11).name == "bob"
    assert r.members(2) == {10}
    with pytest.raises(RosterError):
        r.remove_user(11)


def test_wire_round_trip_and_deltas() -> None:
    r = _roster()
    wire = r.to_wire_user(11)
    assert wire.channels == (
        m.Membership(1, True),
        m.Membership(2, False),
        m.Membership(3, True),
    )
    mirror = Roster()
    channels = [r.channel(c) for c in r.channel_ids()]
    mirror.load_page(
        [c.to_wire() for c in channels if c is not None], [r.to_wire_user(u) for u in r.user_ids()]
    )
    assert mirror.snapshot() == r.snapshot()

    deltas: list[m.Message] = [
        m.UserJoined(m.UserInfo(12, "cy", IK, channels=(m.Membership(1),))),
        m.MembershipChanged(12, 3, joined=True, may_speak=True),
        m.UserUpdated(
            m.UserInfo(12, "cy", IK, muted=True, channels=(m.Membership(1), m.Membership(3)))
        ),
        m.ChannelAdded(m.ChannelInfo(5, 3, "B-sub")),
        m.ChannelUpdated(m.ChannelInfo(5, 1, "moved")),
        m.ChannelRemoved(5),
        m.UserLeft(10, m.LeaveReason.QUIT),
    ]
    for delta in deltas:
        mirror.apply(delta)
    snap = mirror.snapshot()
    assert set(snap.users) == {11, 12}
    assert snap.users[12].muted
    assert snap.channels_of(12) == {1, 3}
    assert 5 not in snap.channels
    with pytest.raises(RosterError):
        mirror.apply(m.Bye())
    with pytest.raises(RosterError):
        mirror.apply(m.UserLeft(10))


def test_empty_snapshot() -> None:
    snap = RosterSnapshot()
    assert snap.members(1) == frozenset()
    assert Roster().snapshot() == snap


def test_version_grows_on_every_change_and_only_then() -> None:
    r = _roster()
    v = r.version
    r.snapshot()
    assert r.members(2) == frozenset({10, 11})
    assert r.version == v  # reads change nothing
    r.set_membership(10, 3, True)
    assert r.version > v
    v = r.version
    r.update_user(UserView(10, "ann", IK, deafened=True))
    assert r.version > v
    v = r.version
    r.remove_user(11)
    assert r.version > v


# -- find_channel: the one rule for naming a channel ---------------------------------------------


def test_find_channel_by_name_in_any_case_then_by_id() -> None:
    channels = [(1, "Lobby"), (2, "General"), (3, "Straße"), (7, "42")]
    assert find_channel("general", channels) == 2
    assert find_channel("  GENERAL ", channels) == 2
    assert find_channel("STRASSE", channels) == 3  # casefold, not lower()
    assert find_channel("42", channels) == 7  # a name wins over an id
    assert find_channel("#2", channels) == 2
    assert find_channel("1", channels) == 1


def test_find_channel_explains_unknown_and_ambiguous_names() -> None:
    channels = [(1, "Lobby"), (2, "Squad"), (5, "squad")]
    with pytest.raises(ChannelNotFound) as ambiguous:
        find_channel("SQUAD", channels)
    assert str(ambiguous.value) == "'SQUAD' names 2 channels: Squad (#2), squad (#5); use the id"
    assert find_channel("5", channels) == 5
    with pytest.raises(ChannelNotFound) as unknown:
        find_channel("Nowhere", channels)
    assert str(unknown.value) == (
        "no channel 'Nowhere'; the channels are: Lobby (#1), Squad (#2), squad (#5)"
    )
    with pytest.raises(ChannelNotFound, match="no channel '9'"):
        find_channel("9", channels)
    with pytest.raises(ChannelNotFound, match="not connected"):
        find_channel("Lobby", [])
    with pytest.raises(ChannelNotFound, match="needed"):
        find_channel("  ", channels)
