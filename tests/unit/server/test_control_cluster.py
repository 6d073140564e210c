"""ServerCore as a cluster node (``ServerConfig.cluster``): the pure side of
``voipclient-server --cluster``. Two cores stand for two nodes; what one emits as ``Cluster*``
events is handed to the other by hand, as the NATS link would."""

from __future__ import annotations

from tests.unit.net._harness import identity, real_keydist, seeded_rng
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.server.control import ChannelConfig, ServerConfig, ServerCore

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
