"""The relay server as a real process on loopback, with real TLS, UDP and end-to-end sealing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from voipclient.crypto.identity import IdentityKey
from voipclient.net import e2ee
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.frames import FrameDecoder, encode_frame
from voipclient.server.config import hash_password

from ..conftest import LOBBY, A, B, ServerProcess, Starter
from ._client import PinMismatch, TestClient, client_ssl_context, payload

pytestmark = pytest.mark.timeout(60)


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 45.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(scenario(), timeout)

    asyncio.run(main())


@asynccontextmanager
async def clients(
    server: ServerProcess, *names: str, udp: bool = True, **kw: Any
) -> AsyncIterator[list[TestClient]]:
    """Logged-in clients (UDP bound unless ``udp`` is False), closed afterwards."""
    made: list[TestClient] = []
    try:
        for name in names:
            c = await TestClient.connect(server.host, server.port, server.pin, name, **kw)
            made.append(c)
            if udp:
                await c.bind_udp()
        yield made
    finally:
        for c in made:
            await c.close()


async def join_all(channel: int, *users: TestClient) -> None:
    for u in users:
        u.join(channel)
    for u in users:
        await u.wait_for(lambda u=u: u.is_member(channel), what=f"join {channel}")


async def keys_everywhere(channel: int, *users: TestClient) -> None:
    """Every member holds every other member's current sender key for ``channel``."""
    for listener in users:
        for speaker in users:
            if speaker is not listener:
                await listener.wait_for(
                    lambda lis=listener, spk=speaker: lis.has_key_from(spk.sid or 0, channel),
                    what=f"{speaker.name}'s key in {channel}",
                )


async def settle(seconds: float = 0.3) -> None:
    """Give in-flight datagrams time to arrive (only used before asserting an absence)."""
    await asyncio.sleep(seconds)


def tags(client: TestClient, sender: TestClient, channel: int | None = None) -> list[bytes]:
    return [h.frame.payload[4:8] for h in client.heard_from(sender.sid or 0, channel)]


# -- start line, pin, TLS ------------------------------------------------------------------------


def test_start_line_and_pin_match_the_served_key(start_server: Starter) -> None:
    server = start_server()
    assert server.host == "127.0.0.1"
    assert server.port > 0
    cert = x509.load_pem_x509_certificate((server.data_dir / "server-cert.pem").read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert server.pin == "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()

    async def scenario() -> None:
        # The key the server presents on the wire is the pinned one, over TLS 1.3 only.
        _, writer = await asyncio.open_connection(
            server.host, server.port, ssl=client_ssl_context()
        )
        obj = writer.get_extra_info("ssl_object")
        assert obj.version() == "TLSv1.3"
        served = x509.load_der_x509_certificate(obj.getpeercert(binary_form=True))
        assert (
            served.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == spki
        )
        writer.close()
        # A wrong pin: the client refuses before writing a byte.
        with pytest.raises(PinMismatch):
            await TestClient.connect(server.host, server.port, "sha256/" + "A" * 43 + "=", "eve")
        # TLS 1.2 is refused by the server.
        old = client_ssl_context()
        old.minimum_version = ssl.TLSVersion.TLSv1_2
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection(server.host, server.port, ssl=old)

    run(scenario)
    # The data dir holds the certificate, the key (0600) and the database, nothing else.
    assert (server.data_dir / "server-key.pem").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in server.data_dir.iterdir()) == [
        "server-cert.pem",
        "server-key.pem",
        "server.sqlite3",
    ]


def test_login_over_real_tls_and_roster(start_server: Starter) -> None:
    server = start_server()

    async def scenario() -> None:
        async with clients(server, "ann", "bob", udp=False) as (ann, bob):
            assert ann.tls_version == "TLSv1.3"
            assert ann.sid is not None and bob.sid is not None and ann.sid != bob.sid
            logged = ann.of(ev.LoggedIn)[0]
            names = {c.name for c in logged.roster.channels.values()}
            assert names == {"Lobby", "A", "B"}
            assert logged.udp_port == server.port
            await ann.wait_for(lambda: bob.sid in ann.session.roster.users, what="bob")
            assert ann.is_member(LOBBY)

    run(scenario)


def test_server_password_from_environment_and_channel_password(start_server: Starter) -> None:
    config = f"""
[[channels]]
name = "Vault"
password = "{hash_password("open sesame", log2_n=10)}"
"""
    server = start_server(config=config, env={"VOIPCLIENT_SERVER_PASSWORD": "s3cret"})
    vault = 2  # channels of the file come before --channel ones

    async def scenario() -> None:
        async def attempt(password: str | None, local_ip: str | None = None) -> ev.ConnectionClosed:
            c = await TestClient.connect(
                server.host,
                server.port,
                server.pin,
                "x",
                login=False,
                password=password,
                local_ip=local_ip,
            )
            try:
                await c.wait_for(lambda: c.closed is not None, what="refusal")
                assert c.closed is not None
                return c.closed
            finally:
                await c.close()

        nopass = await attempt(None)
        assert nopass.code == m.ErrorCode.WRONG_PASSWORD
        # Wrong passwords are counted per address: the third starts a back-off during which
        # even the right password is refused unchecked; another address is not affected.
        assert (await attempt("guess")).code == m.ErrorCode.WRONG_PASSWORD
        third = await attempt("guess")
        assert third.code == m.ErrorCode.WRONG_PASSWORD and "try again in 1 s" in third.message
        waiting = await attempt("s3cret")
        assert waiting.code == m.ErrorCode.RATE_LIMITED
        assert "too many wrong passwords from your address" in waiting.message
        async with clients(server, "bob", udp=False, password="s3cret", local_ip="127.0.0.2"):
            pass
        await asyncio.sleep(1.1)
        async with clients(server, "ann", udp=False, password="s3cret") as (ann,):
            ann.join(vault, "wrong")
            await ann.wait_for(lambda: bool(ann.of(ev.ServerError)), what="refusal")
            [err] = ann.of(ev.ServerError)
            assert (err.code, err.channel_id, err.fatal) == (
                m.ErrorCode.WRONG_CHANNEL_PASSWORD,
                vault,
                False,
            )
            ann.join(vault, "open sesame")
            await ann.wait_for(lambda: ann.is_member(vault), what="join")
            assert ann.session.roster.channels[vault].password_protected

    run(scenario)


# -- forwarding rules with real sealing ---------------------------------------------------------


@pytest.mark.parametrize("udp_send", ["native", "sendmmsg", "sendto"])
def test_membership_and_forwarding_rules(start_server: Starter, udp_send: str) -> None:
    """Every way of sending the copies (sendmmsg batches filled by the native fan-out or by
    Python, one sendto per copy) carries the same rules; the log names the one in use."""
    server = start_server("--udp-send", udp_send)

    async def scenario() -> None:
        async with clients(server, "ann", "bob", "cat", "dan") as (ann, bob, cat, dan):
            await join_all(A, ann, bob, cat)
            await join_all(B, cat, dan)
            await keys_everywhere(A, ann, bob, cat)
            await keys_everywhere(B, cat, dan)

            ann.speak([A], payload(1, b"annA"))
            dan.speak([B], payload(1, b"danB"))
            cat.speak([A, B], payload(1, b"catX"))  # one frame, two channels
            await bob.wait_for(lambda: len(bob.heard) >= 2, what="bob hears ann and cat")
            await cat.wait_for(lambda: len(cat.heard) >= 2, what="cat hears ann and dan")
            await dan.wait_for(lambda: len(dan.heard) >= 1, what="dan hears cat")
            await ann.wait_for(lambda: len(ann.heard) >= 1, what="ann hears cat")
            await settle()

            # Members of A hear A, not B.
            assert tags(bob, ann, A) == [b"annA"]
            assert tags(bob, cat, A) == [b"catX"]
            assert tags(bob, dan) == []
            assert tags(ann, dan) == []
            # A member of A and B hears both.
            assert tags(cat, ann, A) == [b"annA"]
            assert tags(cat, dan, B) == [b"danB"]
            # A member of B only hears cat in B.
            assert tags(dan, cat) == [b"catX"]
            assert [h.frame.channel_id for h in dan.heard_from(cat.sid or 0)] == [B]
            # Nobody hears their own echo: on the wire, each got exactly the others' copies
            # (ann: cat's A; bob: ann's and cat's A; cat: ann's A and dan's B; dan: cat's B).
            assert [u.udp_voice_datagrams for u in (ann, bob, cat, dan)] == [1, 2, 2, 1]
            for u in (ann, bob, cat, dan):
                assert u.heard_from(u.sid or 0) == []
            # Everything arrived over UDP.
            assert {h.via for u in (ann, bob, cat, dan) for h in u.heard} <= {"udp", "released"}

    run(scenario)
    server.stop()
    assert f"send={udp_send}" in server.stderr_text()


SPEAKERS_CONFIG = """
[limits]
voice_packets_per_s = 100
voice_burst = 50

[[channels]]
name = "Stage"
speakers = ["ann"]
"""


def test_non_speaker_packets_are_dropped(start_server: Starter) -> None:
    server = start_server(config=SPEAKERS_CONFIG, channels=())
    stage = 2

    async def scenario() -> None:
        async with clients(server, "ann", "bob", "cat") as (ann, bob, cat):
            await join_all(stage, ann, bob, cat)
            assert bob.session.roster.may_speak(ann.sid or 0, stage)
            assert not bob.session.roster.may_speak(bob.sid or 0, stage)
            await keys_everywhere(stage, ann)  # only ann holds a sender key there
            for u in (bob, cat):
                await u.wait_for(lambda u=u: u.has_key_from(ann.sid or 0, stage), what="key")
            # bob is listen-only: SecureSession does not even seal for him...
            assert bob.seal([stage], payload(1)) == []
            # ...so he forges a properly MACed datagram: the relay must drop it.
            before = cat.udp_voice_datagrams
            for i in range(5):
                bob.send_udp(bob.forge(stage, payload(i, b"bob!")))
            ann.speak([stage], payload(1, b"ann!"))
            await cat.wait_for(lambda: len(cat.heard) >= 1, what="cat hears ann")
            await settle()
            assert cat.udp_voice_datagrams - before == 1
            assert tags(cat, ann, stage) == [b"ann!"]
            assert tags(cat, bob) == []
            assert ann.udp_voice_datagrams == 0

    run(scenario)


def test_rotation_on_leave_and_text_relay(start_server: Starter) -> None:
    server = start_server()

    async def scenario() -> None:
        async with clients(server, "ann", "bob", "cat", "dan", udp=False) as (ann, bob, cat, dan):
            await join_all(A, ann, bob, cat)
            await join_all(B, dan)
            await keys_everywhere(A, ann, bob, cat)
            gen_ann_at_bob = bob.newest_gen_from(ann.sid or 0, A)
            gen_bob_at_ann = ann.newest_gen_from(bob.sid or 0, A)

            # Text: members of A other than the author get it, B doesn't.
            ann.send_text(A, "hello A")
            for u in (bob, cat):
                await u.wait_for(
                    lambda u=u: any(
                        t.message.text == "hello A" for t in u.of(e2ee.TextMessageReceived)
                    ),
                    what="text",
                )
            assert [t.author for t in bob.of(e2ee.TextMessageReceived)] == ["ann"]
            await settle(0.2)
            assert dan.of(e2ee.TextMessageReceived) == []
            assert ann.of(e2ee.TextMessageReceived) == []

            # cat leaves A: the remaining members rotate to a new generation at once.
            cat.leave(A)
            await bob.wait_for(
                lambda: bob.newest_gen_from(ann.sid or 0, A) > gen_ann_at_bob, what="ann rotates"
            )
            await ann.wait_for(
                lambda: ann.newest_gen_from(bob.sid or 0, A) > gen_bob_at_ann, what="bob rotates"
            )
            # ...and the leaver is sent nothing of the new generation.
            assert cat.newest_gen_from(ann.sid or 0, A) == gen_ann_at_bob

    run(scenario)


def test_tunnel_mode(start_server: Starter) -> None:
    server = start_server()

    async def scenario() -> None:
        async with clients(server, "ann", "tim", udp=False) as (ann, tim):
            await ann.bind_udp()  # ann on UDP; tim tunnels both ways (UDP "blocked")
            tim.set_tunnel(True)
            await join_all(A, ann, tim)
            await keys_everywhere(A, ann, tim)
            await asyncio.sleep(0.1)  # voice_transport reached the server before this voice
            ann.speak([A], payload(1, b"ann>"))
            tim.speak([A], payload(1, b"tim>"), tunnel=True)
            await tim.wait_for(lambda: len(tim.heard) >= 1, what="tim hears ann")
            await ann.wait_for(lambda: len(ann.heard) >= 1, what="ann hears tim")
            assert [h.via for h in tim.heard] in (["tunnel"], ["released"])
            assert tim.tunnel_voice_datagrams == 1
            assert tags(tim, ann, A) == [b"ann>"]
            assert tags(ann, tim, A) == [b"tim>"]
            assert ann.heard[0].via in ("udp", "released")

    run(scenario)


# -- bad input: the server stays up, the well-behaved clients keep talking ----------------------

BAD_INPUT_CONFIG = """
[limits]
handshake_timeout = 1.0
login_timeout = 1.5
max_sessions_per_ip = 64
voice_packets_per_s = 50
voice_burst = 20
"""


async def expect_closed_by_server(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Read until EOF; returns what came (the server must close within ``timeout``)."""
    got = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                got += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass  # an abort is a close too
    return got


def fatal_error_code(data: bytes) -> int | None:
    for raw in FrameDecoder().feed(data):
        msg = m.decode(raw)
        if isinstance(msg, m.Error) and msg.fatal:
            return int(msg.code)
    return None


async def exchange_voice(ann: TestClient, bob: TestClient, channel: int, n: int) -> None:
    """ann and bob each say something new in ``channel`` and hear the other."""
    had_ann, had_bob = len(bob.heard_from(ann.sid or 0)), len(ann.heard_from(bob.sid or 0))
    ann.speak([channel], payload(n, b"ok-a"))
    bob.speak([channel], payload(n, b"ok-b"))
    await bob.wait_for(lambda: len(bob.heard_from(ann.sid or 0)) > had_ann, what="ann again")
    await ann.wait_for(lambda: len(ann.heard_from(bob.sid or 0)) > had_bob, what="bob again")


def test_bad_input_costs_only_the_offender(start_server: Starter) -> None:
    server = start_server(config=BAD_INPUT_CONFIG)
    addr = (server.host, server.port)

    async def scenario() -> None:
        async with clients(server, "ann", "bob", "mal") as (ann, bob, mal):
            await join_all(A, ann, bob, mal)
            await keys_everywhere(A, ann, bob, mal)
            await exchange_voice(ann, bob, A, 1)

            # 1. Random and truncated datagrams, from a stranger and from a member.
            stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for size in (0, 1, 10, 45, 46, 47, 100, 1200, 1201, 1500):
                    stranger.sendto(os.urandom(size), addr)
                    mal.send_udp(os.urandom(size))
                good = mal.seal([A], payload(7, b"mal1"))[0]
                for cut in (1, 10, 30, len(good) - 11):
                    mal.send_udp(good[:cut])
                # A stranger replaying a member's valid datagram from another address.
                stranger.sendto(good, addr)
            finally:
                stranger.close()

            # 2. Replays: the same valid datagram five times reaches bob once.
            before = len(bob.heard_from(mal.sid or 0))
            before_raw = bob.udp_voice_datagrams
            for _ in range(5):
                mal.send_udp(good)
            await bob.wait_for(lambda: len(bob.heard_from(mal.sid or 0)) > before, what="once")
            await settle(0.2)
            assert bob.udp_voice_datagrams - before_raw == 1

            # 3. Spoofed sender id: mal's datagram relabelled as ann's, MACed with mal's key.
            before_raw = bob.udp_voice_datagrams
            spoof = mal.forge(A, payload(8, b"spf!"), sender_id=ann.sid)
            mal.send_udp(spoof)
            relabelled = bytearray(mal.seal([A], payload(9, b"rel!"))[0])
            relabelled[8:12] = struct.pack(">I", ann.sid or 0)
            mal.send_udp(mal.remac(bytes(relabelled)))
            await settle(0.2)
            assert bob.udp_voice_datagrams == before_raw

            # 4. A flood over the rate limit (50/s, burst 20): most of it is dropped.
            before_raw = bob.udp_voice_datagrams
            for i in range(200):
                mal.send_udp(mal.seal([A], payload(100 + i, b"fld!"))[0])
            await settle(0.5)
            flood = bob.udp_voice_datagrams - before_raw
            assert 1 <= flood < 100, flood

            # 5. Garbage and oversized control frames: only that session ends.
            garbage = await TestClient.connect(*addr, server.pin, "gar")
            garbage.write_raw(encode_frame(b"\xc1 not msgpack"))
            oversized = await TestClient.connect(*addr, server.pin, "big")
            oversized.write_raw(struct.pack(">I", 1 << 30) + b"x" * 100)
            for victim, code in ((garbage, m.ErrorCode.MALFORMED_MESSAGE), (oversized, None)):
                await victim.wait_for(lambda v=victim: v.closed is not None, what="closed")
                assert victim.closed is not None
                assert victim.closed.reason is ev.CloseReason.PEER_ERROR
                if code is not None:
                    assert victim.closed.code == code
            assert oversized.closed is not None
            assert oversized.closed.code == m.ErrorCode.FRAME_TOO_LARGE
            await garbage.close()
            await oversized.close()

            # 6. Half-open TLS handshakes: part of a ClientHello, then nothing.
            half = [await asyncio.open_connection(*addr) for _ in range(3)]
            for _, w in half:
                w.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            # 7. A TCP client that never sends anything at all.
            silent_r, silent_w = await asyncio.open_connection(*addr)
            # 8. A TLS client that never sends: closed by the login timeout (TIMEOUT error).
            mute_r, mute_w = await asyncio.open_connection(*addr, ssl=client_ssl_context())
            # 9. A client speaking the protocol without TLS.
            plain_r, plain_w = await asyncio.open_connection(*addr)
            plain_w.write(encode_frame(m.encode(m.Hello(versions=("vc1",)))))

            for r, _ in half:
                await expect_closed_by_server(r)
            await expect_closed_by_server(silent_r)
            assert fatal_error_code(await expect_closed_by_server(mute_r)) == m.ErrorCode.TIMEOUT
            plain = await expect_closed_by_server(plain_r)
            assert plain == b"" or plain[:1] == b"\x15"  # nothing, or a TLS alert record
            for w in (*(w for _, w in half), silent_w, mute_w, plain_w):
                w.close()

            # The server is up and the well-behaved clients still exchange voice.
            await asyncio.sleep(0.5)  # refill the flood's bucket (mal's, not theirs)
            await exchange_voice(ann, bob, A, 2)
            assert mal.closed is None  # dropped datagrams are not punished
            assert server.alive()

    run(scenario)


# -- caps, stats, shutdown ----------------------------------------------------------------------

CAPS_CONFIG = """
[limits]
max_sessions = 3
max_sessions_per_ip = 2
"""


def test_session_caps_refuse_politely(start_server: Starter) -> None:
    server = start_server(config=CAPS_CONFIG)

    async def refused(name: str, local_ip: str) -> int | None:
        c = await TestClient.connect(
            server.host, server.port, server.pin, name, login=False, local_ip=local_ip
        )
        await c.wait_for(lambda: c.closed is not None, what="refusal")
        await c.close()
        return None if c.closed is None else c.closed.code

    async def scenario() -> None:
        async with clients(server, "ann", "bob", udp=False):
            # A third connection from the same address: over the per-IP cap.
            assert await refused("cat", "127.0.0.1") == m.ErrorCode.SERVER_FULL
            # Another address is not affected by this one's cap...
            dan = await TestClient.connect(
                server.host, server.port, server.pin, "dan", local_ip="127.0.0.2"
            )
            assert dan.sid is not None
            # ...until the server as a whole is full.
            assert await refused("eve", "127.0.0.3") == m.ErrorCode.SERVER_FULL
            await dan.close()
        # Slots free up when sessions end.
        async with clients(server, "fay", udp=False) as (fay,):
            assert fay.sid is not None

    run(scenario)


BURST_CONFIG = """
[limits]
max_handshakes = 2
"""


def test_a_burst_of_connections_waits_for_a_handshake_slot(start_server: Starter) -> None:
    """More clients than handshake slots at once (every client of a dead cluster node comes
    back together): the extra ones wait for a slot, reading paused, instead of being dropped
    into the client's back-off (a 100-client failover lost 20-30 of them to it)."""
    server = start_server("--stats-interval", "0.2", config=BURST_CONFIG)

    async def scenario() -> None:
        # Two silent connections (no ClientHello) hold both handshake slots.
        holders = [await asyncio.open_connection(server.host, server.port) for _ in range(2)]
        await asyncio.sleep(0.3)
        ann = asyncio.create_task(TestClient.connect(server.host, server.port, server.pin, "ann"))
        await asyncio.sleep(1.0)
        assert not ann.done()  # queued: not refused, not served
        holders[0][1].close()  # a slot comes free: ann's handshake and login go through
        client = await asyncio.wait_for(ann, 10)
        assert client.sid is not None
        await client.close()
        holders[1][1].close()
        last = await stats_after_login(server)
        assert last["refused"]["queued_handshakes"] == 1 and last["refused"]["handshakes"] == 0

    run(scenario)
    assert server.stop() == 0


async def stats_after_login(server: ServerProcess) -> dict[str, Any]:
    """The first stats line the server writes once it counts a login (it then has every count
    of what came before)."""
    for _ in range(100):
        lines = [json.loads(x) for x in server.stdout_lines()[1:]]
        if lines and lines[-1]["logins"] >= 1:
            return lines[-1]  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError("no stats line counts the login")


FLOOD_CONFIG = """
[limits]
max_handshakes = 2
max_sessions_per_ip = 6
handshake_timeout = 1.5
"""


def test_a_flood_of_silent_connections_is_bounded_and_times_out(start_server: Starter) -> None:
    """The attacker of the handshake queue: one address opens connections and never says a
    word. Two take the slots, the address's cap (6, handshakes and queued together) bounds the
    queue, the rest are refused at once, and every silent one is cut at the handshake timeout
    counted from its accept, queued or not. Then an honest client logs in."""
    server = start_server("--stats-interval", "0.2", config=FLOOD_CONFIG)

    async def closed_by_server(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), 5.0) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    async def scenario() -> None:
        silent = [await asyncio.open_connection(server.host, server.port) for _ in range(10)]
        ends = await asyncio.gather(*(closed_by_server(r) for r, _ in silent))
        assert all(ends)  # refused at once, or cut at the timeout: none held on
        for _, w in silent:
            w.close()
        async with clients(server, "ann", udp=False) as (ann,):
            assert ann.sid is not None
        last = await stats_after_login(server)
        assert last["refused"]["handshakes"] == 4  # 10 - 6 (the address's cap)
        assert last["refused"]["queued_handshakes"] == 4  # 6 - 2 (the slots)
        assert last["tls_failed"] == 6  # the six silent ones, cut at the timeout

    run(scenario)
    assert server.stop() == 0


def test_stats_lines_and_no_secrets_in_logs(start_server: Starter) -> None:
    server = start_server("--stats-interval", "0.2", "--log-level", "debug")
    secrets: list[bytes] = []

    async def scenario() -> None:
        async with clients(server, "ann", "bob") as (ann, bob):
            await join_all(A, ann, bob)
            await keys_everywhere(A, ann, bob)
            ann.speak([A], payload(1))
            await bob.wait_for(lambda: len(bob.heard) >= 1, what="voice")
            # UDP liveness: PONG reports what the relay received from ann (BIND, BIND_CONFIRM,
            # the voice datagram, this PING).
            ann.udp_ping()
            await ann.wait_for(lambda: bool(ann.pongs), what="pong")
            assert ann.pongs[0][1] >= 4
            await asyncio.sleep(0.5)
            secrets.extend(u.session.hop_secret or b"" for u in (ann, bob))

    run(scenario)
    assert server.stop() == 0
    lines = [json.loads(x) for x in server.stdout_lines()[1:]]
    assert lines, "no stats line"
    last = lines[-1]
    assert last["type"] == "stats"
    assert last["forwarded"] >= 1
    assert last["packets_in"] >= 1 and last["bytes_out"] > 0
    assert set(last["drops"]) >= {"bad_hop_mac", "replay", "rate_limit", "not_speaker"}
    assert last["channels"] == 3
    assert max(line["sessions"] for line in lines) == 2
    assert max(line["udp_validated"] for line in lines) == 2
    # No secrets in the logs, even at debug level.
    log = server.stderr_text()
    assert "login conn=" in log
    for secret in secrets:
        assert len(secret) == 32
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in log


def test_sigterm_notifies_clients_and_exits_zero(start_server: Starter) -> None:
    server = start_server()

    async def scenario() -> None:
        async with clients(server, "ann", "bob", udp=False) as (ann, bob):
            server.proc.send_signal(signal.SIGTERM)
            for u in (ann, bob):
                await u.wait_for(lambda u=u: bool(u.of(ev.ServerShuttingDown)), what="notice")
                assert u.closed is not None and u.closed.reason is ev.CloseReason.SHUTDOWN

    run(scenario)
    assert server.proc.wait(timeout=10) == 0
    assert "stopped" in server.stderr_text()


# -- operator actions and what survives a restart ------------------------------------------------


async def operator(server: ServerProcess, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voipclient.server",
        "--data-dir",
        str(server.data_dir),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def pipelining_login(
    server: ServerProcess, key: IdentityKey, name: str, *after: m.Message
) -> list[m.Message]:
    """Log in by hand over TLS, with ``after`` in the same write as the Login; every message
    the server sends until it closes the connection."""
    reader, writer = await asyncio.open_connection(
        server.host, server.port, ssl=client_ssl_context()
    )
    decoder = FrameDecoder()
    try:
        writer.write(encode_frame(m.encode(m.Hello(versions=("vc1",)))))
        hello: list[m.Message] = []
        while not hello:
            hello += [m.decode(p) for p in decoder.feed(await reader.read(65536))]
        [sh] = hello
        assert isinstance(sh, m.ServerHello)
        pub = key.public_bytes()
        sig = key.sign(m.login_transcript(sh.challenge, name, pub))
        msgs = (m.Login(name, pub, sig), *after)
        writer.write(b"".join(encode_frame(m.encode(x)) for x in msgs))
        out: list[m.Message] = []
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await asyncio.wait_for(reader.read(65536), 10):
                out += [m.decode(p) for p in decoder.feed(data)]
        return out
    finally:
        writer.close()


def test_ban_kicks_at_once_and_bindings_and_pin_survive_a_restart(start_server: Starter) -> None:
    server = start_server()
    ann_key = IdentityKey.generate()

    async def first_run() -> None:
        connect = functools.partial(TestClient.connect, server.host, server.port, server.pin)
        ann = await connect("ann", identity=ann_key)
        bob = await connect("bob")
        try:
            await bob.wait_for(lambda: ann.sid in bob.session.roster.users, what="ann")
            assert "banned" in await operator(server, "--ban", "ann", "--reason", "spam")
            await ann.wait_for(lambda: ann.closed is not None, what="kick")
            assert ann.closed is not None and ann.closed.code == m.ErrorCode.KICKED
            await bob.wait_for(lambda: bool(bob.of(ev.UserLeft)), what="user_left")
            assert bob.of(ev.UserLeft)[0].reason == m.LeaveReason.KICKED
            listed = await operator(server, "--list-bans")
            assert base64.b64encode(ann_key.public_bytes()).decode() in listed
            assert "spam" in listed
            # Coming back with the same key: refused inside the login, before any roster,
            # and the join and text the client pipelines behind its login are never read.
            await ann.close()
            joined_before = len(bob.of(ev.UserJoined))
            ann = await connect("ann", identity=ann_key, login=False)
            await ann.wait_for(lambda: ann.closed is not None, what="refused again")
            assert ann.closed is not None and ann.closed.code == m.ErrorCode.KICKED
            assert ann.closed.message == "banned from this server"
            assert ann.sid is None and not ann.of(ev.LoggedIn)
            assert not ann.of(ev.UserJoined) and not ann.of(ev.RosterChanged)
            await ann.close()
            # A hand-made client pipelining Login, join and text in one TLS write.
            raw = await pipelining_login(
                server, ann_key, "ann", m.JoinChannel(A), m.Text(LOBBY, b"spam" * 100)
            )
            assert raw == [m.Error(m.ErrorCode.KICKED, "banned from this server", fatal=True)]
            await settle(0.3)
            assert len(bob.of(ev.UserJoined)) == joined_before
            assert not bob.of(ev.TextReceived)
            await operator(server, "--unban", "ann")
            ann = await connect("ann", identity=ann_key)
            await asyncio.sleep(1.5)  # longer than the ban sweep
            assert ann.closed is None
        finally:
            await ann.close()
            await bob.close()

    run(first_run)
    assert server.stop() == 0
    again = start_server(data_dir=server.data_dir)
    assert again.pin == server.pin

    async def second_run() -> None:
        thief = await TestClient.connect(again.host, again.port, again.pin, "ANN", login=False)
        await thief.wait_for(lambda: thief.closed is not None, what="refusal")
        assert thief.closed is not None and thief.closed.code == m.ErrorCode.NAME_TAKEN
        await thief.close()
        ann = await TestClient.connect(again.host, again.port, again.pin, "ann", identity=ann_key)
        assert ann.sid is not None
        await ann.close()

    run(second_run)


# -- admin actions from a client -----------------------------------------------------------------


def test_admin_kicks_bans_and_moves_and_the_ban_survives_a_restart(start_server: Starter) -> None:
    root_key, ann_key, bob_key = (IdentityKey.generate() for _ in range(3))
    root_b64 = base64.b64encode(root_key.public_bytes()).decode()
    config = f"""
[[channels]]
name = "Vault"
password = "{hash_password("open sesame", log2_n=10)}"
max_members = 1

[admins]
keys = ["{root_b64}"]
"""
    vault = 2  # channels of the file come before --channel ones
    server = start_server(config=config)
    connect = functools.partial(TestClient.connect, server.host, server.port, server.pin)

    def notices(client: TestClient) -> list[ev.AdminNoticeReceived]:
        return client.of(ev.AdminNoticeReceived)

    async def first_run() -> None:
        root = await connect("root", identity=root_key)
        ann = await connect("ann", identity=ann_key)
        bob = await connect("bob", identity=bob_key)
        carol = await connect("carol")
        dave = await connect("dave")
        everyone = (root, ann, bob, carol, dave)
        try:
            for u in everyone:
                await u.wait_for(lambda u=u: len(u.session.roster.users) == 5, what="roster")
            dave.join(vault, "open sesame")  # the Vault is full now
            await root.wait_for(lambda: dave.sid in root.session.roster.members(vault))
            # A non-admin is refused, and stays connected.
            dave.admin("kick", ann.sid or 0)
            await dave.wait_for(lambda: bool(dave.of(ev.ServerError)), what="refusal")
            [err] = dave.of(ev.ServerError)
            assert (err.code, err.fatal) == (m.ErrorCode.NOT_ADMIN, False)
            assert dave.closed is None and ann.closed is None
            # Kick.
            root.admin("kick", ann.sid or 0, reason="calm down")
            await ann.wait_for(lambda: ann.closed is not None, what="kick")
            assert ann.closed is not None and ann.closed.code == m.ErrorCode.KICKED
            assert "kicked by root: calm down" in ann.closed.message
            assert [(n.action, n.by, n.reason) for n in notices(ann)] == [
                (m.AdminOp.KICK, root.sid, "calm down")
            ]
            await carol.wait_for(lambda: bool(carol.of(ev.UserLeft)), what="ann left")
            assert carol.of(ev.UserLeft)[0].reason == m.LeaveReason.KICKED
            # Ban.
            bob_sid = bob.sid
            root.admin("ban", bob_sid or 0, reason="spam")
            await bob.wait_for(lambda: bob.closed is not None, what="ban")
            assert bob.closed is not None and bob.closed.code == m.ErrorCode.KICKED
            await root.wait_for(lambda: len(notices(root)) == 2, what="confirmation")
            assert notices(root)[1].action == m.AdminOp.BAN
            assert notices(root)[1].target == bob_sid
            listed = await operator(server, "--list-bans")
            assert base64.b64encode(bob_key.public_bytes()).decode() in listed
            assert "bob" in listed and "spam" in listed
            await bob.close()
            bob = await connect("bob", identity=bob_key, login=False)
            await bob.wait_for(lambda: bob.closed is not None, what="refused again")
            assert bob.closed is not None and bob.closed.code == m.ErrorCode.KICKED
            # Move: into a password-protected, full channel; everyone sees the membership.
            root.admin("move", carol.sid or 0, vault, reason="meeting")
            await carol.wait_for(lambda: carol.is_member(vault), what="moved")
            assert [(n.action, n.channel_id, n.reason) for n in notices(carol)] == [
                (m.AdminOp.MOVE, vault, "meeting")
            ]
            for watcher in (root, dave):
                await watcher.wait_for(
                    lambda w=watcher: carol.sid in w.session.roster.members(vault),
                    what="carol in the vault",
                )
            assert carol.closed is None and carol.is_member(LOBBY)
        finally:
            for u in (root, ann, bob, carol, dave):
                await u.close()

    run(first_run)
    assert server.stop() == 0
    log = server.stderr_text()
    assert "admin kick by sender=" in log and "admin ban by sender=" in log
    assert "admin move by sender=" in log and "refused code=50" in log
    for key in (root_key, bob_key):
        assert base64.b64encode(key.public_bytes()).decode() not in log
        assert key.public_bytes().hex() not in log

    again = start_server(config=config, data_dir=server.data_dir)

    async def second_run() -> None:
        bob = await TestClient.connect(
            again.host, again.port, again.pin, "bob", identity=bob_key, login=False
        )
        await bob.wait_for(lambda: bob.closed is not None, what="still banned")
        assert bob.closed is not None and bob.closed.code == m.ErrorCode.KICKED
        await bob.close()
        ann = await TestClient.connect(  # only kicked: welcome back
            again.host, again.port, again.pin, "ann", identity=ann_key
        )
        await asyncio.sleep(1.5)  # longer than the ban sweep
        assert ann.closed is None
        await ann.close()

    run(second_run)
