"""``voipclient-server --workers N``: UDP forwarding in N processes behind one port (Linux).

Through the real server process and real clients (TLS, the UDP hop handshake, sealed voice):
every datagram reaches the worker that owns its sender (sender_id mod N), voice crosses
workers, and a worker killed with SIGKILL is replaced while the server keeps serving: voice
resumes within a second, the session is never lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time

import pytest

from voipclient.server.workers import (
    FrameReader,
    RosterMirror,
    bind_worker_sockets,
    encode,
    workers_supported,
)

from ..conftest import A, Starter
from ._client import payload
from .test_server import clients, join_all, keys_everywhere, run

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not workers_supported(), reason="UDP workers need Linux SO_REUSEPORT"),
]


def last_stats(lines: list[str]) -> dict:
    stats = [json.loads(x) for x in lines if x.startswith("{")]
    assert stats, "no stats line"
    return stats[-1]


def test_datagrams_reach_the_socket_of_their_sender_id() -> None:
    """The BPF program on the reuseport group: socket index = bytes 8..12 (big endian) mod 3."""
    socks = bind_worker_sockets(socket.AF_INET, ("127.0.0.1", 0), 3)
    port = socks[0].getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert {s.getsockname()[1] for s in socks} == {port}
        for sid in range(1, 31):
            tx.sendto(bytes(8) + sid.to_bytes(4, "big") + bytes(40), ("127.0.0.1", port))
        time.sleep(0.1)
        for index, s in enumerate(socks):
            got = []
            while True:
                try:
                    got.append(int.from_bytes(s.recv(2048)[8:12], "big"))
                except BlockingIOError:
                    break
            assert got and all(sid % 3 == index for sid in got), (index, got)
            assert len(got) == 10
    finally:
        tx.close()
        for s in socks:
            s.close()


def test_local_frames_and_the_roster_mirror() -> None:
    reader = FrameReader()
    data = encode(("session", 7, b"k" * 32, False, None)) + encode(("end", 7))
    assert reader.feed(data[:5]) == []
    assert reader.feed(data[5:]) == [("session", 7, b"k" * 32, False, None), ("end", 7)]
    mirror = RosterMirror()
    mirror.apply(3, {10: ((1, 2, 3), (1, 2)), 20: ((3,), (3,))})
    assert mirror.roster_version == 3
    assert mirror.may_speak(1, 10) and not mirror.may_speak(3, 10) and not mirror.may_speak(1, 20)
    assert set(mirror.listeners(10, exclude=2)) == {1, 3}
    assert set(mirror.listeners(99)) == set()


def test_voice_crosses_workers_and_each_owns_its_senders(start_server: Starter) -> None:
    server = start_server("--workers", "2", "--stats-interval", "0.2")
    sids: list[int] = []

    async def scenario() -> None:
        async with clients(server, "ann", "bob", "cat", "dan") as users:
            await join_all(A, *users)
            await keys_everywhere(A, *users)
            for frame in range(5):
                for u in users:
                    u.speak([A], payload(frame, u.name.encode()[:4]))
                    await asyncio.sleep(0.005)
            for listener in users:
                for speaker in users:
                    if speaker is not listener:
                        await listener.wait_for(
                            lambda lis=listener, spk=speaker: (
                                len(lis.heard_from(spk.sid or 0)) >= 5
                            ),
                            what=f"{listener.name} hears {speaker.name}",
                        )
            sids.extend(u.sid or 0 for u in users)
            await asyncio.sleep(0.6)  # two worker reports and a stats line

    run(scenario)
    assert server.stop() == 0
    stats = last_stats(server.stdout_lines())
    workers = stats["udp_workers"]
    assert workers["count"] == 2 and workers["restarts"] == 0
    owned = [sum(1 for sid in sids if sid % 2 == i) for i in range(2)]
    assert min(owned) >= 1, f"sender ids {sids} all on one worker"
    # Each worker forwarded exactly its own senders' voice: 5 frames per sender.
    assert [w["forwarded"] for w in workers["each"]] == [5 * n for n in owned]
    assert stats["forwarded"] == 20 and stats["copies_udp"] == 60
    assert "workers=2" in server.stderr_text()


def test_a_killed_worker_is_replaced_and_voice_resumes_within_a_second(
    start_server: Starter,
) -> None:
    server = start_server("--workers", "2", "--stats-interval", "0.2")
    figures: dict[str, float] = {}

    async def scenario() -> None:
        async with clients(server, "ann", "bob") as (ann, bob):
            await join_all(A, ann, bob)
            await keys_everywhere(A, ann, bob)
            await asyncio.sleep(0.5)  # a stats line with the workers' pids
            stats = last_stats(server.stdout_lines())
            victim = stats["udp_workers"]["each"][(ann.sid or 0) % 2]["pid"]
            sent_at: dict[int, float] = {}
            heard_at: dict[int, float] = {}
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()

            async def talk() -> None:
                frame = 0
                while not stop.is_set():
                    sent_at[frame] = loop.time()
                    ann.speak([A], payload(frame))
                    frame += 1
                    await asyncio.sleep(0.02)

            async def listen() -> None:
                seen = 0
                while not stop.is_set():
                    heard = bob.heard_from(ann.sid or 0)
                    for h in heard[seen:]:
                        heard_at[int.from_bytes(h.frame.payload[:4], "big")] = loop.time()
                    seen = len(heard)
                    await asyncio.sleep(0.002)

            tasks = [asyncio.create_task(talk()), asyncio.create_task(listen())]
            await asyncio.sleep(0.5)
            assert len(heard_at) >= 15, "voice flowed before the kill"
            killed_at = loop.time()
            os.kill(victim, signal.SIGKILL)
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*tasks)
            after = sorted(f for f, t in sent_at.items() if t > killed_at)
            resumed = min(heard_at[f] for f in after if f in heard_at)
            figures["resume_s"] = resumed - killed_at
            # Everything sent from 1 s after the kill was heard: the session went on.
            late = [
                f for f in after if sent_at[f] > killed_at + 1.0 and sent_at[f] < loop.time() - 0.3
            ]
            assert late and all(f in heard_at for f in late)
            assert not ann.transport_closed and not bob.transport_closed

    run(scenario)
    print(f"voice resumed {1000 * figures['resume_s']:.0f} ms after the worker was killed")
    assert figures["resume_s"] < 1.0
    assert server.stop() == 0
    stats = last_stats(server.stdout_lines())
    assert stats["udp_workers"]["restarts"] == 1
    assert "worker ended index=" in server.stderr_text()
