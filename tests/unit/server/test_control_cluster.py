"""ServerCore as a cluster node (``ServerConfig.cluster``): the pure side of
``voipclient-server --cluster``. Two cores stand for two nodes; what one emits as ``Cluster*``
events is handed to the other by hand, as the NATS link would."""

from __future__ import annotations

from tests.unit.net._harness import identity, real_keydist, seeded_rng
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.server.control import (
    FIRST_ADMIN_CHANNEL_ID,
    ChannelConfig,
    ServerConfig,
    ServerCore,
)

from .test_control import Raw

A = 2


def node(slot: int) -> ServerCore:
    config = ServerConfig(
        channels=(ChannelConfig(A, "A"),),
        first_sender_id=slot << 24,
        last_sender_id=(slot << 24) | 0xFFFFFF,
        cluster=True,
    )
    return ServerCore(config, rng=seeded_rng(slot))


def cluster_events(c: ServerCore) -> list[ev.ServerEvent]:
    return [e for e in c.events() if type(e).__name__.startswith("Cluster")]


def carry(src: ServerCore, src_name: str, dst: ServerCore) -> None:
    """What the NATS link does: roster changes of src's users applied at dst."""
    for e in cluster_events(src):
        if isinstance(e, ev.ClusterRoster):
            assert dst.apply_remote(src_name, e.message)


def test_two_nodes_share_users_memberships_keys_and_text() -> None:
    n1, n2 = node(1), node(2)
    ann = Raw(n1, 1)
    [ok, *_] = ann.login("ann")
    assert isinstance(ok, m.LoginOk) and ok.sender_id == 1 << 24  # node 1's id range
    carry(n1, "n1", n2)
    bob = Raw(n2, 1)
    [ok2, *_] = bob.login("bob")
    assert isinstance(ok2, m.LoginOk) and ok2.sender_id == 2 << 24
    assert {u.name for u in ok2.users} == {"ann", "bob"}  # ann came from node 1
    assert n2.is_remote(1 << 24) and not n2.is_remote(2 << 24)
    carry(n2, "n2", n1)
    assert any(isinstance(x, m.UserJoined) and x.user.name == "bob" for x in ann.recv())
    ann.send(m.JoinChannel(A))
    carry(n1, "n1", n2)
    bob.send(m.JoinChannel(A))
    carry(n2, "n2", n1)
    assert n1.listeners(A) == n2.listeners(A) == {1 << 24, 2 << 24}
    ann.recv()
    bob.recv()
    # A KeyDist from ann to bob: bob is on node 2, so node 1 hands his part to the link.
    blob = real_keydist(1 << 24, A, [2 << 24])
    assert ann.send(m.KeyDist(A, (2 << 24,), blob)) == []
    [kd] = [e for e in n1.events() if isinstance(e, ev.ClusterKeyDist)]
    assert (kd.node, kd.recipient, kd.sender_id) == ("n2", 2 << 24, 1 << 24)
    assert n2.deliver_remote_keydist(kd.sender_id, kd.channel_id, kd.recipient, kd.blob)
    [delivery] = bob.recv()
    assert isinstance(delivery, m.KeyDistDelivery) and delivery.sender_id == 1 << 24
    # Text: once to the link, then to node 2's members.
    ann.send(m.Text(A, b"\x01" * 40))
    [text] = [e for e in n1.events() if isinstance(e, ev.ClusterText)]
    assert n2.deliver_remote_text(text.sender_id, text.channel_id, text.blob) == 1
    assert [type(x) for x in bob.recv()] == [m.TextDelivery]


def test_a_node_may_change_only_its_own_users() -> None:
    n1, n2 = node(1), node(2)
    Raw(n1, 1).login("ann")
    carry(n1, "n1", n2)
    bob = Raw(n2, 1)
    bob.login("bob")
    ann_id, bob_id = 1 << 24, 2 << 24
    # A third node lying about ann, or about node 2's own bob, or about a channel that
    # does not exist: refused, nothing changes.
    assert not n2.apply_remote("n3", m.MembershipChanged(ann_id, A, True, True))
    assert not n2.apply_remote("n1", m.MembershipChanged(bob_id, A, True, True))
    assert not n2.apply_remote("n1", m.MembershipChanged(ann_id, 99, True, True))
    assert not n2.apply_remote("n1", m.UserLeft(bob_id, m.LeaveReason.QUIT))
    fake = m.UserInfo(bob_id, "mallory", identity("m")[1], channels=(m.Membership(1, True),))
    assert not n2.apply_remote("n1", m.UserJoined(fake))
    assert n2.roster.users[bob_id].name == "bob" and n2.listeners(A) == set()
    # A re-announce (a node resyncing) is an update for the clients, not a second join.
    bob.recv()
    info = n1.local_users()[0]
    assert n2.apply_remote("n1", m.UserJoined(info))
    assert [type(x) for x in bob.recv()] == [m.UserUpdated]


def test_a_node_gone_takes_its_users_and_a_moved_user_replaces_its_old_session() -> None:
    n1, n2 = node(1), node(2)
    ann1 = Raw(n1, 1)
    ann1.login("ann")
    carry(n1, "n1", n2)
    bob = Raw(n2, 1)
    bob.login("bob")
    # ann's node fails; she logs in on node 2 with the same key before node 2 noticed.
    ann2 = Raw(n2, 2)
    ann2.login("ann")
    events = n2.events()
    [moved] = [e for e in events if isinstance(e, ev.ClusterReplaced)]
    assert (moved.node, moved.sender_id) == ("n1", 1 << 24)
    left = [x for x in bob.recv() if isinstance(x, m.UserLeft)]
    assert [(x.sender_id, x.reason) for x in left] == [(1 << 24, m.LeaveReason.REPLACED)]
    assert not n2.is_remote(1 << 24)
    # Node 1, told, ends the old session.
    assert n1.replaced_elsewhere(1 << 24)
    assert any(isinstance(x, m.Error) and x.fatal for x in ann1.recv())
    # A node that goes silent: its users leave.
    n3 = node(3)
    Raw(n3, 1).login("cat")
    carry(n3, "n3", n2)
    assert n2.remote_node_gone("n3") == 1
    assert [x.sender_id for x in bob.recv() if isinstance(x, m.UserLeft)] == [3 << 24]


def test_clients_are_told_the_cluster_nodes() -> None:
    n1 = node(1)
    n1.set_cluster_nodes(("a.example:64738", "b.example:64738"))
    ann = Raw(n1, 1)
    msgs = ann.login("ann")
    assert msgs[-1] == m.ClusterNodes(nodes=("a.example:64738", "b.example:64738"))
    n1.set_cluster_nodes(("a.example:64738",))
    assert ann.recv() == [m.ClusterNodes(nodes=("a.example:64738",))]
    n1.set_cluster_nodes(("a.example:64738",))  # unchanged: nothing sent
    assert ann.recv() == []


def admin_node(slot: int) -> ServerCore:
    """A node whose administrator is "root", making channels in its own id range."""
    first = FIRST_ADMIN_CHANNEL_ID + ((slot - 1) << 24)
    config = ServerConfig(
        channels=(ChannelConfig(A, "A"),),
        first_sender_id=slot << 24,
        last_sender_id=(slot << 24) | 0xFFFFFF,
        first_channel_id=first,
        last_channel_id=first + 0xFFFFFF,
        admins=frozenset({identity("root")[1]}),
        cluster=True,
    )
    return ServerCore(config, rng=seeded_rng(slot))


def saved_channel(c: ServerCore) -> ChannelConfig:
    """The channel a ChannelSaved event describes, as the other node builds it from the shared
    store (the password only as a verifier)."""
    [saved] = [e for e in c.events() if isinstance(e, ev.ChannelSaved)]
    return ChannelConfig(
        saved.channel_id,
        saved.name,
        parent=saved.parent,
        description=saved.description,
        password=(lambda given: given == "pw") if saved.password_protected else None,
        max_members=saved.max_members,
        speakers=saved.speakers,
    )


def test_channels_made_on_one_node_appear_on_the_other_with_their_own_ids() -> None:
    n1, n2 = admin_node(1), admin_node(2)
    root = Raw(n1, 1)
    root.login("root")
    bob = Raw(n2, 1)
    bob.login("bob")
    root.recv()
    bob.recv()
    root.send(m.ChannelAdmin(m.ChannelOp.CREATE, name="Raid", password="pw"))
    raid = saved_channel(n1)
    assert raid.id == FIRST_ADMIN_CHANNEL_ID  # node 1's range starts at 10,000
    assert n2.apply_shared_channel(raid)
    [added] = [x for x in bob.recv() if isinstance(x, m.ChannelAdded)]
    assert (added.channel.id, added.channel.name, added.channel.password_protected) == (
        raid.id,
        "Raid",
        True,
    )
    # The same record again (node 1's own put, coming back) announces nothing.
    assert n2.apply_shared_channel(raid) and bob.recv() == []
    # Node 2 makes its channels from its own range: the two never collide.
    root2 = Raw(n2, 2)
    root2.login("root")
    root2.recv()
    root2.send(m.ChannelAdmin(m.ChannelOp.CREATE, name="Games"))
    games = saved_channel(n2)
    assert games.id == FIRST_ADMIN_CHANNEL_ID + (1 << 24)
    assert n1.apply_shared_channel(games)
    # ...and a channel of node 2's range does not move node 1's next id.
    root.recv()
    root.send(m.ChannelAdmin(m.ChannelOp.CREATE, name="Lan"))
    assert saved_channel(n1).id == FIRST_ADMIN_CHANNEL_ID + 1
    # An administrator on node 2 may change and delete the channel node 1 made.
    root2.recv()
    got = root2.send(m.ChannelAdmin(m.ChannelOp.UPDATE, channel_id=raid.id, name="Raid night"))
    assert [type(x) for x in got][-1] is m.ChannelAdminOk
    assert n1.apply_shared_channel(saved_channel(n2))
    assert any(
        isinstance(x, m.ChannelUpdated) and x.channel.name == "Raid night" for x in root.recv()
    )
    root2.send(m.ChannelAdmin(m.ChannelOp.DELETE, channel_id=raid.id))
    assert any(isinstance(e, ev.ChannelDeleted) for e in n2.events())
    assert n1.remove_shared_channel(raid.id)
    assert any(isinstance(x, m.ChannelRemoved) for x in root.recv())
    assert raid.id not in n1.channel_ids() and raid.id not in n2.channel_ids()


def test_a_shared_channel_that_does_not_fit_is_refused() -> None:
    n1 = admin_node(1)
    # a configured channel may not be replaced, the Lobby neither; a parent must exist
    assert not n1.apply_shared_channel(ChannelConfig(A, "Hijacked", parent=1))
    assert not n1.apply_shared_channel(ChannelConfig(1, "Lobby"))
    assert not n1.apply_shared_channel(ChannelConfig(20_000, "Orphan", parent=19_999))
    assert not n1.remove_shared_channel(A)  # configured: only the file changes it
    assert n1.channel_ids() == {1, A}
    # a cycle: a channel moved under its own child
    assert n1.apply_shared_channel(ChannelConfig(20_000, "Up", parent=1))
    assert n1.apply_shared_channel(ChannelConfig(20_001, "Down", parent=20_000))
    assert not n1.apply_shared_channel(ChannelConfig(20_000, "Up", parent=20_001))


def test_an_administrator_kicks_and_moves_users_of_another_node() -> None:
    n1, n2 = admin_node(1), admin_node(2)
    root = Raw(n1, 1)
    root.login("root")
    carry(n1, "n1", n2)
    bob = Raw(n2, 1)
    bob.login("bob")
    carry(n2, "n2", n1)
    bob_id = 2 << 24
    root.recv()
    bob.recv()
    # A move: node 1 checks the administrator and hands the request to bob's node.
    got = root.send(m.AdminAction(m.AdminOp.MOVE, bob_id, channel_id=A))
    assert any(isinstance(x, m.AdminNotice) for x in got)
    [request] = [e for e in n1.events() if isinstance(e, ev.ClusterAdmin)]
    assert (request.node, request.target, request.channel_id) == ("n2", bob_id, A)
    assert n2.admin_from_node(
        request.action,
        request.by,
        request.by_name,
        request.target,
        request.channel_id,
        request.reason,
    )
    got = bob.recv()
    assert any(isinstance(x, m.AdminNotice) and x.by == 1 << 24 for x in got)
    assert any(isinstance(x, m.MembershipChanged) and x.channel_id == A for x in got)
    carry(n2, "n2", n1)  # the membership change travels like any other
    assert n1.listeners(A) == {bob_id}
    # Not twice: bob is a member now (the request is re-checked where bob is).
    assert not n2.admin_from_node(m.AdminOp.MOVE, 1 << 24, "root", bob_id, A, "")
    # A kick: the same way; bob's session ends with KICKED.
    root.send(m.AdminAction(m.AdminOp.KICK, bob_id, reason="afk"))
    [kick] = [e for e in n1.events() if isinstance(e, ev.ClusterAdmin)]
    assert n2.admin_from_node(kick.action, kick.by, kick.by_name, kick.target, None, kick.reason)
    got = bob.recv()
    [error] = [x for x in got if isinstance(x, m.Error)]
    assert error.code == m.ErrorCode.KICKED and "kicked by root: afk" in error.message
    # A ban of a remote user: also a BanRequested here (into the shared ban store).
    carl = Raw(n2, 2)
    carl.login("carl")
    carry(n2, "n2", n1)
    root.send(m.AdminAction(m.AdminOp.BAN, (2 << 24) + 1))
    events = n1.events()
    assert any(isinstance(e, ev.BanRequested) and e.name == "carl" for e in events)
    assert any(isinstance(e, ev.ClusterAdmin) for e in events)
    # A non-administrator's request never leaves its node.
    dan = Raw(n1, 2)
    dan.login("dan")
    n1.events()
    dan.send(m.AdminAction(m.AdminOp.KICK, (2 << 24) + 1))
    assert not any(isinstance(e, ev.ClusterAdmin) for e in n1.events())


def test_digests_show_a_lost_roster_message_and_a_resync_repairs_it() -> None:
    """NATS core is at most once: a lost UserLeft leaves a ghost on the other node. The
    heartbeat's digest of a node's users differs from what the other node knows; the complete
    id list that node sends back removes the ghost."""
    n1, n2 = node(1), node(2)
    ann = Raw(n1, 1)
    ann.login("ann")
    ann.send(m.JoinChannel(A))
    carry(n1, "n1", n2)
    cat = Raw(n1, 2)
    cat.login("cat")
    carry(n1, "n1", n2)
    assert n2.users_digest("n1") == n1.users_digest()  # in agreement
    assert n2.users_digest("n2") == n2.users_digest() != n1.users_digest()
    before = n1.users_digest()
    cat.send(m.Bye())  # cat leaves node 1 ...
    cluster_events(n1)  # ... and the UserLeft is lost on the way
    assert n1.users_digest() != before
    assert n2.users_digest("n1") == before != n1.users_digest()
    bob = Raw(n2, 1)
    bob.login("bob")
    bob.recv()
    assert n2.resync_remote("n1", [u.sender_id for u in n1.local_users()]) == 1
    [left] = [x for x in bob.recv() if isinstance(x, m.UserLeft)]
    assert left.sender_id == (1 << 24) + 1  # cat
    assert n2.users_digest("n1") == n1.users_digest()
    # A lost MembershipChanged is repaired by the records sent again before the list.
    ann.send(m.LeaveChannel(A))
    cluster_events(n1)  # lost
    assert n2.users_digest("n1") != n1.users_digest()
    for user in n1.local_users():
        assert n2.apply_remote("n1", m.UserJoined(user=user))  # an update, as re-announced
    assert n2.resync_remote("n1", [u.sender_id for u in n1.local_users()]) == 0
    assert n2.users_digest("n1") == n1.users_digest()
    assert n2.listeners(A) == frozenset()
