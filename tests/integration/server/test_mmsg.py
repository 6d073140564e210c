"""The relay's sendmmsg batch senders on real UDP sockets (loopback): the one that fills its
batches in Python (``SendMmsg``) and the native fan-out (``NativeSendMmsg``, ``_fanout.c``),
every test on both.

Exact bytes (body ‖ the listener's own 10-byte hop MAC), order and source address; IPv6 dual
stack; a copy the kernel refuses in the middle of a batch; a batch larger than one call; and the
partial-send / EAGAIN / EINTR bookkeeping with a FAKE sendmmsg (the kernel cannot be made to
return those on demand).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.server.test_relay import Client, FakeRoster
from voipclient.crypto.hop import HOP_MAC_LEN, HopMac
from voipclient.crypto.replay import ReplayWindow
from voipclient.net import hopctl
from voipclient.server import mmsg
from voipclient.server.relay import RelayCore, RelayDrop, RelayLimits

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(
        mmsg.make_batch_sender(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) is None,
        reason="sendmmsg is Linux-only; elsewhere the relay sends each copy with sendto",
    ),
]


@pytest.fixture(params=["python", "native"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which sender: both are tested the same way."""
    return str(request.param)


def sender(kind: str, fd: int, family: int = socket.AF_INET, **kw: Any) -> mmsg.SendMmsg:
    cls = mmsg.NativeSendMmsg if kind == "native" else mmsg.SendMmsg
    return cls(fd, family, **kw)


def entry(kind: str, lid: int, packed: bytes, key: bytes) -> mmsg.WireEntry:
    """One listener as the relay core hands it to the sender (with the native key state)."""
    native = mmsg.native_library()
    state = native.key_state(key) if kind == "native" and native is not None else b""
    return (lid, packed, HopMac(key).fresh, state)


def test_the_native_fan_out_is_built_and_loaded() -> None:
    """`make` builds _fanout.c, and it passed its self-test against cryptography's HMAC."""
    loaded, why = mmsg.native_available()
    assert loaded, why
    assert mmsg.send_mode("native") == "native"


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def udp(made: list[socket.socket], family: int = socket.AF_INET, host: str = "127.0.0.1"):
    s = socket.socket(family, socket.SOCK_DGRAM)
    made.append(s)
    if family == socket.AF_INET6 and host == "::":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def drain(s: socket.socket) -> list[tuple[bytes, tuple]]:
    got = []
    while True:
        try:
            got.append(s.recvfrom(2048))
        except BlockingIOError:
            return got


def test_every_copy_carries_its_listeners_mac_in_order(
    sockets: list[socket.socket], kind: str
) -> None:
    tx_sock = udp(sockets)
    listeners = [udp(sockets) for _ in range(9)]
    keys = [os.urandom(32) for _ in listeners]
    entries = [
        entry(kind, i + 1, mmsg.sockaddr(r.getsockname()), k)
        for i, (r, k) in enumerate(zip(listeners, keys, strict=True))
    ]
    tx = mmsg.make_batch_sender(tx_sock, native=kind == "native")
    assert tx is not None and isinstance(tx, mmsg.NativeSendMmsg) == (kind == "native")
    datagrams = [os.urandom(n) for n in (46, 130, 1200)]
    queued = [tx.add(d, len(d) - 10, mmsg.wire_plan(entries, 4)) for d in datagrams]
    assert queued == [8, 8, 8]  # listener 4 is the speaker: skipped
    tx.flush()
    assert (tx.sent, tx.dropped, tx.errors, tx.calls) == (24, 0, 0, 1)
    for i, (r, k) in enumerate(zip(listeners, keys, strict=True)):
        got = drain(r)
        if i + 1 == 4:
            assert got == []
            continue
        want = [(d[:-10] + HopMac(k).mac(d[:-10]), tx_sock.getsockname()) for d in datagrams]
        assert got == want


def test_ipv6_dual_stack_mapped_and_native(sockets: list[socket.socket], kind: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    tx_sock = udp(sockets, socket.AF_INET6, "::")
    v4 = [udp(sockets) for _ in range(2)]
    v6 = udp(sockets, socket.AF_INET6, "::1")
    addrs = [("127.0.0.1", r.getsockname()[1]) for r in v4] + [v6.getsockname()[:2]]
    key = os.urandom(32)
    entries = [entry(kind, i, mmsg.sockaddr(a, socket.AF_INET6), key) for i, a in enumerate(addrs)]
    tx = mmsg.make_batch_sender(tx_sock, native=kind == "native")
    assert tx is not None
    d = os.urandom(130)
    tx.add(d, 120, mmsg.wire_plan(entries, -1))
    tx.flush()
    want = d[:120] + HopMac(key).mac(d[:120])
    assert [x for r in [*v4, v6] for x, _ in drain(r)] == [want] * 3


def test_a_refused_copy_costs_only_itself(sockets: list[socket.socket], kind: str) -> None:
    tx_sock = udp(sockets)
    listeners = [udp(sockets) for _ in range(4)]
    packed = [mmsg.sockaddr(r.getsockname()) for r in listeners]
    packed.insert(2, mmsg.sockaddr(("127.0.0.1", 0)))  # port 0: EINVAL for this copy alone
    key = os.urandom(32)
    entries = [entry(kind, i, sa, key) for i, sa in enumerate(packed)]
    tx = mmsg.make_batch_sender(tx_sock, native=kind == "native")
    assert tx is not None
    tx.add(os.urandom(130), 120, mmsg.wire_plan(entries, -1))
    tx.flush()
    assert (tx.sent, tx.errors, tx.dropped) == (4, 1, 0)
    assert [len(drain(r)) for r in listeners] == [1, 1, 1, 1]


def test_a_full_batch_is_sent_before_more_is_queued(
    sockets: list[socket.socket], kind: str
) -> None:
    tx_sock = udp(sockets)
    listeners = [udp(sockets) for _ in range(3)]
    key = os.urandom(32)
    entries = [entry(kind, i, mmsg.sockaddr(r.getsockname()), key) for i, r in enumerate(listeners)]
    tx = sender(kind, tx_sock.fileno(), max_messages=8, body_area=4 * 130)
    for _ in range(10):  # 30 copies through a batch of 8 messages / 4 bodies
        tx.add(os.urandom(130), 120, mmsg.wire_plan(entries, -1))
    tx.flush()
    assert (tx.sent, tx.errors, tx.dropped) == (30, 0, 0)
    assert tx.calls >= 4
    assert [len(drain(r)) for r in listeners] == [10, 10, 10]


def test_a_channel_larger_than_a_batch_goes_in_parts(
    sockets: list[socket.socket], kind: str
) -> None:
    tx_sock = udp(sockets)
    listeners = [udp(sockets) for _ in range(11)]
    keys = [os.urandom(32) for _ in listeners]
    entries = [
        entry(kind, i, mmsg.sockaddr(r.getsockname()), k)
        for i, (r, k) in enumerate(zip(listeners, keys, strict=True))
    ]
    tx = sender(kind, tx_sock.fileno(), max_messages=4)
    d = os.urandom(130)
    assert tx.add(d, 120, mmsg.wire_plan(entries, 5)) == 10
    tx.flush()
    assert (tx.sent, tx.errors, tx.dropped) == (10, 0, 0) and tx.calls >= 3
    for i, (r, k) in enumerate(zip(listeners, keys, strict=True)):
        want = [] if i == 5 else [d[:120] + HopMac(k).mac(d[:120])]
        assert [x for x, _ in drain(r)] == want


def test_a_plan_of_another_family_is_refused(sockets: list[socket.socket], kind: str) -> None:
    tx = sender(kind, udp(sockets).fileno())
    v6 = mmsg.sockaddr(("::1", 9), socket.AF_INET6)
    with pytest.raises(ValueError, match=r"family|fit"):
        tx.add(os.urandom(130), 120, mmsg.wire_plan([entry(kind, 1, v6, os.urandom(32))], 0))
    assert tx.add(os.urandom(130), 120, mmsg.wire_plan([], 0)) == 0
    tx.flush()
    assert (tx.sent, tx.calls) == (0, 0)


def test_partial_sends_eagain_and_eintr_with_a_fake_sendmmsg(
    sockets: list[socket.socket], kind: str
) -> None:
    tx_sock = udp(sockets)
    listener = udp(sockets)
    entries = [
        entry(kind, i, mmsg.sockaddr(listener.getsockname()), os.urandom(32)) for i in range(9)
    ]
    calls: list[int] = []
    script: list[tuple[int, int]] = []  # (return value, errno) per call

    def fake_sendmmsg(fd: int, msgvec: int, vlen: int, flags: int) -> int:
        calls.append(vlen)
        r, e = script.pop(0)
        ctypes.set_errno(e)
        return min(r, vlen) if r >= 0 else -1

    tx = sender(kind, tx_sock.fileno(), send=fake_sendmmsg)
    script[:] = [(5, 0), (-1, errno.EAGAIN)]  # 5 of 9 went out, then the buffer is full
    tx.add(os.urandom(130), 120, mmsg.wire_plan(entries, -1))
    tx.flush()
    assert calls == [9, 4] and (tx.sent, tx.dropped, tx.errors) == (5, 4, 0)
    calls.clear()
    script[:] = [(-1, errno.EINTR), (9, 0)]  # interrupted: retried from the same message
    tx.add(os.urandom(130), 120, mmsg.wire_plan(entries, -1))
    tx.flush()
    assert calls == [9, 9] and (tx.sent, tx.dropped) == (14, 4)
    calls.clear()
    script[:] = [(2, 0), (-1, errno.EHOSTUNREACH), (6, 0)]  # one copy refused, the rest go
    tx.add(os.urandom(130), 120, mmsg.wire_plan(entries, -1))
    tx.flush()
    assert calls == [9, 7, 6] and (tx.sent, tx.errors) == (22, 1)


def test_no_sender_where_the_platform_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mmsg, "_sendmmsg", None)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert mmsg.make_batch_sender(s) is None
        with pytest.raises(OSError):
            mmsg.SendMmsg(s.fileno())
    finally:
        s.close()


def test_the_native_sender_refuses_what_does_not_fit(sockets: list[socket.socket]) -> None:
    """Lengths are checked in C before anything is read: a plan cut short, a body longer than
    the datagram; a body larger than the batch's body area."""
    tx = mmsg.NativeSendMmsg(udp(sockets).fileno(), body_area=200)
    key = os.urandom(32)
    plan = mmsg.wire_plan([entry("native", 1, mmsg.sockaddr(("127.0.0.1", 9)), key)], 0)
    d = os.urandom(130)
    for packed, body_len, data in ((plan.native[:-1], 120, d), (plan.native, 131, d)):
        with pytest.raises(ValueError, match="fit"):
            tx.add(data, body_len, mmsg.WirePlan((), b"", packed))
    with pytest.raises(ValueError, match="fit"):
        tx.add(os.urandom(300), 290, plan)
    python_plan = mmsg.wire_plan([entry("python", 1, mmsg.sockaddr(("127.0.0.1", 9)), key)], 0)
    with pytest.raises(ValueError, match="key states"):  # it would send nothing
        tx.add(d, 120, python_plan)
    assert tx.add(d, 120, plan) == 1
    assert tx.queued_mac(0) == HopMac(key).mac(d[:120])


def test_a_native_library_whose_macs_differ_is_not_used() -> None:
    """The loader's self-test compares the native MACs with cryptography's HMAC: a library
    that computes anything else (here: key states of another key) is refused."""
    native = mmsg.native_library()
    assert native is not None
    assert mmsg.native_self_test(native)
    wrong = native._replace(key_state=lambda key: native.key_state(bytes(32)))
    assert not mmsg.native_self_test(wrong)


def test_a_plan_never_shows_its_key_states() -> None:
    """The native key states are as secret as the s2c keys: a plan's repr leaves them out."""
    key = os.urandom(32)
    plan = mmsg.wire_plan([entry("native", 1, mmsg.sockaddr(("127.0.0.1", 9)), key)], 0)
    assert plan.native and repr(plan) == "WirePlan(<1 listeners, keys hidden>)"
    assert str(plan) == repr(plan)


def test_the_native_voice_path_fills_flushes_and_splits_real_batches(
    sockets: list[socket.socket],
) -> None:
    """RelayCore with its voice checks in C (``vc_voice``) on real sockets: a batch that fills
    in the middle of a drain is flushed and the datagram resumed (not checked twice: its
    counter would be a replay), and a channel larger than a batch goes out in parts. Every
    listener gets every copy under its own s2c MAC and can open it."""
    relay_sock = udp(sockets)
    socks = [udp(sockets) for _ in range(8)]
    batch = mmsg.NativeSendMmsg(relay_sock.fileno(), max_messages=4)
    roster = FakeRoster()
    core = RelayCore(
        roster, pack_address=mmsg.sockaddr, native=mmsg.make_native_voice(batch, socket.AF_INET)
    )
    clients = [Client(i + 1, s.getsockname()) for i, s in enumerate(socks)]
    for c in clients:
        core.add_session(c.sender_id, c.hop_secret)
        [(_, challenge)] = core.datagram_received(c.bind(), c.addr, 1.0)
        msg = hopctl.open_hop_control(challenge, c.s2c, ReplayWindow(), ptypes=hopctl.S2C_PTYPES)
        assert msg is not None
        assert len(core.datagram_received(c.confirm(msg.body), c.addr, 1.0)) == 1
    small, big = 10, 20
    for c in clients[:3]:
        roster.join(c.sender_id, small)
    for c in clients:
        roster.join(c.sender_id, big)
    for speaker in clients:
        for listener in clients:
            listener.learn(speaker, small)
            listener.learn(speaker, big)
    # Three datagrams of 2 copies into a batch of 4: the third finds it full.
    for k in range(3):
        assert (
            core.datagram_received(clients[k].voice(small), clients[k].addr, 2.0, batch.add) == []
        )
    batch.flush()
    # One datagram of 7 copies: more than a batch holds.
    assert core.datagram_received(clients[0].voice(big), clients[0].addr, 2.0, batch.add) == []
    batch.flush()
    assert (batch.sent, batch.errors, batch.dropped) == (13, 0, 0)
    for i, (c, s) in enumerate(zip(clients, socks, strict=True)):
        got = [data for data, _ in drain(s)]
        want = (2 if i < 3 else 0) + (0 if i == 0 else 1)
        assert len(got) == want
        for data in got:
            assert c.s2c.verify(data) and c.open(data) is not None
    stats = core.stats()
    assert (stats["forwarded"], stats["copies_udp"], stats["dropped"]) == (4, 13, 0)


def test_the_native_and_python_relay_cores_agree_on_a_hostile_stream() -> None:
    """A differential check of the two implementations of the relay's checks: one stream of
    3,000 datagrams (fresh voice, replays, forged MACs, unvalidated sources, channels the
    sender is not in, three generations, bursts past the rate limit, BIND/CONFIRM/PING, the
    roster changing) into the Python core and the native one (no batch: it hands the copies
    back) gives the same replies and copies, and the same counters, after every datagram."""
    import random

    rng = random.Random(1234)
    roster = FakeRoster()
    limits = RelayLimits(packets_per_s=5, burst=4)
    python = RelayCore(roster, limits=limits, rng=random.Random(1).randbytes)
    native = RelayCore(
        roster,
        limits=limits,
        rng=random.Random(1).randbytes,
        pack_address=mmsg.sockaddr,
        native=mmsg.NativeVoice(None),
    )
    clients = [Client(i, (f"192.0.2.{i}", 5000 + i)) for i in range(1, 6)]
    for c in clients:
        python.add_session(c.sender_id, c.hop_secret)
        native.add_session(c.sender_id, c.hop_secret)
    for c in clients[:4]:
        roster.join(c.sender_id, 7)
    for c in clients[1:]:
        roster.join(c.sender_id, 8)
    sent: list[tuple[bytes, tuple[str, int]]] = []
    now = 100.0
    for step in range(3000):
        c = rng.choice(clients)
        pick = rng.random()
        addr = c.addr
        if pick < 0.08:
            data = c.bind()
        elif pick < 0.12:
            data = c.ping(step)
        elif pick < 0.2 and sent:
            data, addr = rng.choice(sent)  # a replay (of anything, from where it came)
        elif pick < 0.25:
            data = c.voice(7)
            data = data[:-1] + bytes([data[-1] ^ 1])  # a forged MAC
        elif pick < 0.3:
            data = c.voice(rng.choice((7, 8)))
            addr = ("192.0.2.99", 6000)  # not its validated address
        elif pick < 0.35:
            data = c.voice(rng.choice((7, 8)), gen=rng.choice((1, 2, 3)))
        elif pick < 0.38:
            data = c.voice(9)  # a channel nobody is in
        else:
            data = c.voice(rng.choice((7, 8)))
        if pick > 0.995:
            roster.join(rng.choice(clients).sender_id, rng.choice((7, 8)))
        want = python.datagram_received(data, addr, now)
        assert native.datagram_received(data, addr, now) == want, step
        if want and want[0][1][1] == hopctl.PTYPE_CHALLENGE:
            msg = hopctl.open_hop_control(
                want[0][1], c.s2c, ReplayWindow(), ptypes=hopctl.S2C_PTYPES
            )
            assert msg is not None
            confirm = c.confirm(msg.body)
            want = python.datagram_received(confirm, addr, now)
            assert native.datagram_received(confirm, addr, now) == want, step
        assert native.stats() == python.stats(), step
        assert native.drops() == python.drops(), step
        sent.append((data, addr))
        now += rng.choice((0.0, 0.001, 0.02, 0.2))
    drops = python.drops()
    assert python.stats()["forwarded"] > 300
    for reason in (
        RelayDrop.REPLAY,
        RelayDrop.BAD_HOP_MAC,
        RelayDrop.UNVALIDATED_ADDRESS,
        RelayDrop.NOT_SPEAKER,
        RelayDrop.RATE_LIMIT,
        RelayDrop.OLD_GENERATION,
    ):
        assert drops[reason] > 0, reason


class NativeRelayRig:
    """A native relay core on a real UDP socket (``family``; IPv6: dual stack) whose
    ``members`` clients, each on its own socket, went through BIND / CHALLENGE / CONFIRM
    through ``drain_native`` (one wake-up, :meth:`pump`, per step) and joined channel 7."""

    def __init__(
        self,
        sockets: list[socket.socket],
        family: int,
        members: int,
        limits: RelayLimits | None = None,
        *,
        budget: int = 256,
    ) -> None:
        host = "::" if family == socket.AF_INET6 else "127.0.0.1"
        self.relay_sock = udp(sockets, family, host)
        self.to = ("127.0.0.1", self.relay_sock.getsockname()[1])
        self.batch = mmsg.NativeSendMmsg(self.relay_sock.fileno(), family)
        native = mmsg.make_native_voice(self.batch, family)
        assert native is not None
        self.native = native
        self.roster = roster = FakeRoster()
        self.core = RelayCore(
            roster,
            limits=limits or RelayLimits(),
            pack_address=lambda a: mmsg.sockaddr(a, family),
            native=native,
        )
        self.counters = mmsg.UdpTally()
        self.budget = budget
        self.socks = [udp(sockets) for _ in range(members)]
        self.clients = [Client(i + 1, s.getsockname()) for i, s in enumerate(self.socks)]
        for c, s in zip(self.clients, self.socks, strict=True):
            self.core.add_session(c.sender_id, c.hop_secret)
            roster.join(c.sender_id, 7)
            s.sendto(c.bind(), self.to)
            self.pump()
            [(challenge, _)] = drain(s)
            msg = hopctl.open_hop_control(
                challenge, c.s2c, ReplayWindow(), ptypes=hopctl.S2C_PTYPES
            )
            assert msg is not None
            s.sendto(c.confirm(msg.body), self.to)
            self.pump()
            [(ok, _)] = drain(s)
            assert hopctl.open_hop_control(ok, c.s2c, ReplayWindow(), ptypes=hopctl.S2C_PTYPES)
        for speaker in self.clients:
            for listener in self.clients:
                listener.learn(speaker, 7)

    def pump(self, now: float = 5.0) -> None:
        """One wake-up of the relay's socket."""
        mmsg.drain_native(self.relay_sock, self.core, self.native, now, self.counters, self.budget)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_drain_native_reads_checks_and_forwards_in_c(
    sockets: list[socket.socket], family: int
) -> None:
    """``drain_native`` on real sockets (IPv4, and an IPv6 dual-stack relay socket whose
    clients are IPv4-mapped): the BIND / CHALLENGE / CONFIRM handshake goes through Python in
    the order it came, voice is checked and forwarded in C, a copy reaches every other member
    under its own s2c MAC, and voice from an unvalidated source, a forged MAC, a replay and a
    datagram longer than any voice are dropped and counted."""
    rig = NativeRelayRig(sockets, family, 3)
    core, clients, socks = rig.core, rig.clients, rig.socks
    port, counters, batch, pump = rig.to[1], rig.counters, rig.batch, rig.pump
    voice = [clients[0].voice(7) for _ in range(5)]
    for data in voice:
        socks[0].sendto(data, ("127.0.0.1", port))
    stranger = udp(sockets)
    stranger.sendto(clients[0].voice(7), ("127.0.0.1", port))  # not 1's validated address
    socks[0].sendto(voice[0][:-1] + bytes([voice[0][-1] ^ 1]), ("127.0.0.1", port))  # forged
    socks[0].sendto(voice[1], ("127.0.0.1", port))  # a replay
    socks[0].sendto(bytes(1400), ("127.0.0.1", port))  # longer than any voice
    pump()
    for c, s in zip(clients[1:], socks[1:], strict=True):
        got = [data for data, _ in drain(s)]
        assert got == [c.s2c.append(d[:-HOP_MAC_LEN]) for d in voice]
        assert all(c.open(d) is not None for d in got)
    assert drain(socks[0]) == []
    drops = core.drops()
    assert (
        drops[RelayDrop.UNVALIDATED_ADDRESS],
        drops[RelayDrop.BAD_HOP_MAC],
        drops[RelayDrop.REPLAY],
        drops[RelayDrop.BAD_LENGTH],
    ) == (1, 1, 1, 1)
    stats = core.stats()
    assert (stats["forwarded"], stats["copies_udp"], stats["packets_in"]) == (5, 10, 15)
    assert (counters.udp_recv_errors, batch.errors, batch.dropped) == (0, 0, 0)


def test_a_native_wake_up_reads_to_its_budget_flushes_once_and_keeps_the_rest(
    sockets: list[socket.socket],
) -> None:
    """One wake-up reads up to its budget in recvmmsg calls of 64 (100 = 64 + 36, the short
    read ends it), and sends all its copies with one sendmmsg made in C; what is left past the
    budget is read at the next wake-up, and a wake-up with nothing to read sends nothing."""
    rig = NativeRelayRig(sockets, socket.AF_INET, 3, RelayLimits(1000.0, 1000), budget=100)
    voice = [rig.clients[0].voice(7) for _ in range(130)]
    for data in voice:
        rig.socks[0].sendto(data, rig.to)
    calls = rig.batch.calls
    rig.pump()
    assert rig.core.stats()["forwarded"] == 100 and rig.batch.calls == calls + 1
    rig.pump()
    assert rig.core.stats()["forwarded"] == 130 and rig.batch.calls == calls + 2
    rig.pump()
    assert rig.batch.calls == calls + 2 and rig.batch.sent == 2 * 130  # replies: sendto
    for c, s in zip(rig.clients[1:], rig.socks[1:], strict=True):
        assert [d for d, _ in drain(s)] == [c.s2c.append(d[:-HOP_MAC_LEN]) for d in voice]


def test_a_native_wake_up_runs_on_the_clock_it_is_given(sockets: list[socket.socket]) -> None:
    """The loop's clock reaches C with the wake-up's one call: the token bucket (64/s, 10
    deep) refills by what that clock says passed between wake-ups (times exact in binary)."""
    rig = NativeRelayRig(sockets, socket.AF_INET, 2, RelayLimits(64.0, 10))
    for now, want in ((6.0, 10), (6.0625, 14), (6.0625, 14), (6.125, 18)):
        for _ in range(20):
            rig.socks[0].sendto(rig.clients[0].voice(7), rig.to)
        rig.pump(now)
        assert rig.core.stats()["forwarded"] == want, now
    assert rig.core.drops()[RelayDrop.RATE_LIMIT] == 4 * 20 - 18


def test_the_native_session_table_survives_growth_and_removals() -> None:
    """The C session table (open addressing, backward-shift deletion): 3,000 sessions added,
    every third removed, all added again and removed again in another order; every lookup
    still finds exactly the sessions that are there."""
    import random

    nv = mmsg.NativeVoice(None)
    nv.set_now(1.0)  # every bucket holds one token (the default limits)
    rng = random.Random(5)
    ids = rng.sample(range(1, 2**32), 3000)
    key = bytes(32)
    for sid in ids:
        nv.add_session(sid, key)
    gone = set(ids[::3])
    for sid in ids[::3]:
        nv.remove_session(sid)
    assert [nv.has_session(sid) for sid in ids] == [sid not in gone for sid in ids]
    for sid in sorted(gone):
        nv.add_session(sid, key)
    again = rng.sample(ids, 1500)
    for sid in again:
        nv.remove_session(sid)
    left = set(ids) - set(again)
    assert [nv.has_session(sid) for sid in ids] == [sid in left for sid in ids]
    assert [nv.take_token(sid) for sid in ids] == [sid in left for sid in ids]
    with pytest.raises(ValueError):
        nv.add_session(next(iter(left)), key)  # a taken id
