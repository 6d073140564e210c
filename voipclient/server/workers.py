"""UDP forwarding on every core: N worker processes behind one UDP port (Linux).

The control process (:class:`~voipclient.server.app.RelayServer`) keeps the TLS sessions, the
roster and the store. UDP voice is forwarded by N worker processes, each running its own
:class:`~voipclient.server.relay.RelayCore` (every check, the sendmmsg batches) on its own
socket::

    N UDP sockets bound to the same port with SO_REUSEPORT, in one reuseport group, with a
    classic BPF program on the group: socket index = sender_id (datagram bytes 8..12) mod N.

So a session's datagrams (voice, BIND, PING) always reach the same worker, its *owner*, whatever
address they come from (NAT rebinding included), and its per-session state (hop-control window,
voice replay windows, rate limit, pending challenge, received count) lives in one process. A
worker forwards to every listener of a channel, whoever owns them: it knows every session's hop
key and validated address, and the routing (listeners and speakers per channel).

The control process creates the N sockets and **keeps them open**: a worker that dies leaves its
socket in the group at the same index (datagrams wait in its buffer), and its replacement gets
the same socket. Nothing is rehashed, no other worker's sessions move.

The local channel (one ``socketpair`` per worker; length-prefixed ``marshal`` frames of plain
tuples; the peer is our own child, started from our own code):

    control -> worker                          worker -> control
    ("init", index, n, limits, send)           ("ready",)
    ("session", sid, hop_secret, tunnel, addr) ("addr", sid, host, port)  validated here
    ("end", sid)                               ("tunnel", [(listener, datagram)])
    ("tunnel_mode", sid, flag)                 ("received", [(sid, count)])
    ("addr", sid, host, port)                  ("stats", relay stats, drops, send counters)
    ("routing", version, {cid: (listeners, speakers)})

A restarted worker gets ``init``, every session and the routing before it reads a datagram;
its replay windows start empty (a datagram replayed across a restart is forwarded once; each
listener's end-to-end layer still drops it). Hop secrets cross only this local channel and are
never logged.

Elsewhere (no SO_REUSEPORT with a BPF program: not Linux) the relay runs in the control
process (``--workers 1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import marshal
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from typing import Any, Final

from voipclient.server.mmsg import (
    NativeVoice,
    SendMmsg,
    UdpTally,
    drain,
    drain_native,
    make_batch_sender,
    make_native_voice,
    sockaddr,
)
from voipclient.server.relay import Addr, RelayCore, RelayLimits

__all__ = [
    "RosterMirror",
    "WorkerPool",
    "bind_worker_sockets",
    "default_workers",
    "worker_main",
    "workers_supported",
]

log = logging.getLogger("voipclient.server.workers")

#: Seconds between a worker's counter reports (stats, received counts).
REPORT_INTERVAL: Final = 0.25
#: Seconds a worker gets to say ``ready`` after it was started.
READY_TIMEOUT: Final = 15.0
#: A worker restarted more often than this within RESTART_WINDOW waits RESTART_BACKOFF first.
RESTART_BURST: Final = 5
RESTART_WINDOW: Final = 10.0
RESTART_BACKOFF: Final = 1.0
_UDP_BATCH: Final = 256
_UDP_RECV_SIZE: Final = 2048
_SOCKET_BUFFER: Final = 4 * 1024 * 1024
_LEN: Final = struct.Struct(">I")
_MAX_FRAME: Final = 64 * 1024 * 1024

# classic BPF (linux/filter.h): A = u32 at payload offset 8 (sender_id, network order);
# A %= n; return A. A datagram shorter than 12 bytes fails the load: the program returns 0.
_BPF_LD_W_ABS: Final = 0x20
_BPF_ALU_MOD_K: Final = 0x94
_BPF_RET_A: Final = 0x16
_SO_ATTACH_REUSEPORT_CBPF: Final = 51


def workers_supported() -> bool:
    """SO_REUSEPORT with a classic BPF program steering datagrams: Linux."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def default_workers() -> int:
    """The number of cores this process may run on (1 where workers are not supported)."""
    if not workers_supported():
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - Linux always has it
        return max(1, os.cpu_count() or 1)


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def attach_sender_sharding(sock: socket.socket, n: int) -> None:
    """Steer the reuseport group of ``sock``: datagram → socket index ``sender_id % n``."""
    prog = (_SockFilter * 3)(
        _SockFilter(_BPF_LD_W_ABS, 0, 0, 8),
        _SockFilter(_BPF_ALU_MOD_K, 0, 0, n),
        _SockFilter(_BPF_RET_A, 0, 0, 0),
    )
    fprog = _SockFprog(3, ctypes.cast(prog, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def bind_worker_sockets(family: int, address: tuple[Any, ...], n: int) -> list[socket.socket]:
    """``n`` UDP sockets on ``address`` in one reuseport group steered by sender id (port 0: the
    first one picks it). Raises OSError when the port is taken by a socket outside the group."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(address)
            if address[1] == 0:  # the others join the port the first one got
                address = (address[0], s.getsockname()[1], *address[2:])
            s.setblocking(False)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
        attach_sender_sharding(socks[0], n)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


# -- the local channel ---------------------------------------------------------------------------


def encode(msg: tuple[Any, ...]) -> bytes:
    body = marshal.dumps(msg)
    return _LEN.pack(len(body)) + body


class FrameReader:
    """Length-prefixed marshal frames out of a byte stream."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buf = self._buf
        buf += data
        out: list[tuple[Any, ...]] = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > _MAX_FRAME:
                raise ValueError(f"local frame of {n} bytes")
            if len(buf) - pos - 4 < n:
                break
            # the peer is our own child or parent process, over a socketpair
            out.append(marshal.loads(bytes(buf[pos + 4 : pos + 4 + n])))  # noqa: S302
            pos += 4 + n
        del buf[:pos]
        return out


class _Channel(asyncio.Protocol):
    """One end of a control/worker channel on the event loop."""

    def __init__(
        self, on_message: Callable[[tuple[Any, ...]], None], on_lost: Callable[[], None]
    ) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._reader = FrameReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except (ValueError, EOFError, TypeError) as exc:
            log.error("local channel broken error=%r", exc)
            if self.transport is not None:
                self.transport.abort()
            return
        for msg in messages:
            self._on_message(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost()

    def send(self, msg: tuple[Any, ...]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(msg))


# -- the roster as a worker knows it -------------------------------------------------------------


class RosterMirror:
    """The control process's routing as plain data: a :class:`RelayRoster` for a worker."""

    def __init__(self) -> None:
        self._version = 0
        self._listeners: dict[int, frozenset[int]] = {}
        self._speakers: dict[int, frozenset[int]] = {}
        self._remote: frozenset[int] = frozenset()

    def apply(
        self,
        version: int,
        routing: dict[int, tuple[tuple[int, ...], tuple[int, ...]]],
        remote: tuple[int, ...] = (),
    ) -> None:
        self._listeners = {cid: frozenset(ls) for cid, (ls, _) in routing.items()}
        self._speakers = {cid: frozenset(sp) for cid, (_, sp) in routing.items()}
        self._remote = frozenset(remote)
        self._version = version

    def is_remote(self, sender_id: int) -> bool:
        """A user of another cluster node."""
        return sender_id in self._remote

    def may_speak(self, sender_id: int, channel_id: int) -> bool:
        return sender_id in self._speakers.get(channel_id, ())

    def listeners(self, channel_id: int, exclude: int | None = None) -> Collection[int]:
        found = self._listeners.get(channel_id, frozenset())
        return found - {exclude} if exclude is not None else found

    @property
    def roster_version(self) -> int:
        return self._version


# -- control side --------------------------------------------------------------------------------


class _Worker:
    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: _Channel | None = None
        self.ready: asyncio.Future[None] | None = None
        self.stats: dict[str, Any] = {}
        self.drops: list[int] = []
        self.send: dict[str, int] = {}
        self.started_at = 0.0
        self.restarts: list[float] = []


def _worker_command() -> list[str]:
    """argv of ``voipclient-server``: in the bundle, the executable dispatches on the name it
    was started under (voipclient/__main__.py), so argv[0] is that name."""
    if getattr(sys, "frozen", False):
        return ["voipclient-server"]
    return [sys.executable, "-m", "voipclient.server"]


class WorkerPool:
    """The control process's side: starts N workers, keeps them fed, restarts one that dies.

    ``on_tunnel(listener, datagram)``, ``on_received(sid, count)`` and ``on_address(sid, addr)``
    hand what workers report to the control process's cores."""

    def __init__(
        self,
        socks: list[socket.socket],
        limits: RelayLimits,
        *,
        udp_send: str,
        log_level: str,
        on_tunnel: Callable[[list[tuple[int, bytes]]], None],
        on_received: Callable[[list[tuple[int, int]]], None],
        on_address: Callable[[int, Addr], None],
        on_remote: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self._workers = [_Worker(i, s) for i, s in enumerate(socks)]
        self._limits = limits
        self._udp_send = udp_send
        self._log_level = log_level
        self._on_tunnel = on_tunnel
        self._on_received = on_received
        self._on_address = on_address
        self._on_remote = on_remote
        # what a (re)started worker is told: sid -> [hop_secret, tunnel, addr or None]
        self._sessions: dict[int, list[Any]] = {}
        self._routing: tuple[
            int, dict[int, tuple[tuple[int, ...], tuple[int, ...]]], tuple[int, ...]
        ] = (0, {}, ())
        self._retired: dict[str, int] = {}  # counters of workers that ended
        self._retired_drops: list[int] = []
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.restarts = 0

    @property
    def size(self) -> int:
        return len(self._workers)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for w in self._workers:
            await self._spawn(w)
        await asyncio.gather(*(self._wait_ready(w) for w in self._workers))

    async def _wait_ready(self, w: _Worker) -> None:
        assert w.ready is not None
        await asyncio.wait_for(asyncio.shield(w.ready), READY_TIMEOUT)

    async def _spawn(self, w: _Worker) -> None:
        loop = self._loop
        assert loop is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            cmd = [
                *_worker_command(),
                "--relay-worker",
                f"{theirs.fileno()},{w.sock.fileno()}",
                "--log-level",
                self._log_level,
            ]
            w.proc = subprocess.Popen(  # noqa: S603 - our own executable, our own arguments
                cmd,
                executable=sys.executable,
                pass_fds=(theirs.fileno(), w.sock.fileno()),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        w.started_at = loop.time()
        w.ready = loop.create_future()
        ours.setblocking(False)
        channel = _Channel(lambda msg: self._message(w, msg), lambda: self._lost(w, channel))
        w.channel = channel
        await loop.connect_accepted_socket(lambda: channel, ours)
        lim = self._limits
        channel.send(
            (
                "init",
                w.index,
                len(self._workers),
                (
                    lim.packets_per_s,
                    lim.burst,
                    lim.max_datagram,
                    lim.challenge_lifetime_s,
                    lim.binds_per_s,
                    lim.bind_burst,
                ),
                self._udp_send,
            )
        )
        for sid, (secret, tunnel, addr) in self._sessions.items():
            channel.send(("session", sid, secret, tunnel, addr))
        channel.send(("routing", *self._routing))
        log.info("worker started index=%d pid=%d", w.index, w.proc.pid)

    def _message(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "tunnel":
            self._on_tunnel(msg[1])
        elif kind == "remote":
            if self._on_remote is not None:
                self._on_remote(msg[1])
        elif kind == "stats":
            w.stats, w.drops, w.send = msg[1], msg[2], msg[3]
        elif kind == "received":
            self._on_received(msg[1])
        elif kind == "addr":
            sid, addr = msg[1], (msg[2], msg[3])
            entry = self._sessions.get(sid)
            if entry is not None:
                entry[2] = addr
                for other in self._workers:
                    if other is not w and other.channel is not None:
                        other.channel.send(("addr", sid, msg[2], msg[3]))
                self._on_address(sid, addr)
        elif kind == "ready":
            if w.ready is not None and not w.ready.done():
                w.ready.set_result(None)
            loop = self._loop
            assert loop is not None
            log.info(
                "worker ready index=%d after=%.0fms", w.index, 1000 * (loop.time() - w.started_at)
            )

    def _lost(self, w: _Worker, channel: _Channel) -> None:
        if w.channel is not channel:
            return
        w.channel = None
        for key, value in w.stats.items():
            if isinstance(value, int):
                self._retired[key] = self._retired.get(key, 0) + value
        for key, value in w.send.items():
            self._retired["send_" + key] = self._retired.get("send_" + key, 0) + value
        if len(self._retired_drops) < len(w.drops):
            self._retired_drops += [0] * (len(w.drops) - len(self._retired_drops))
        for i, d in enumerate(w.drops):
            self._retired_drops[i] += d
        w.stats, w.drops, w.send = {}, [], {}
        proc = w.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
        if self._stopping:
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        w.restarts = [t for t in w.restarts if now - t < RESTART_WINDOW] + [now]
        delay = RESTART_BACKOFF if len(w.restarts) > RESTART_BURST else 0.0
        self.restarts += 1
        log.warning(
            "worker ended index=%d exit=%s: restarting in %.1fs",
            w.index,
            None if proc is None else proc.returncode,
            delay,
        )
        loop.call_later(delay, lambda: loop.create_task(self._spawn(w)))

    def _broadcast(self, msg: tuple[Any, ...]) -> None:
        data = encode(msg)
        for w in self._workers:
            ch = w.channel
            if ch is not None and ch.transport is not None and not ch.transport.is_closing():
                ch.transport.write(data)

    # -- what the control process tells every worker ---------------------------------------------

    def add_session(self, sid: int, hop_secret: bytes) -> None:
        self._sessions[sid] = [hop_secret, False, None]
        self._broadcast(("session", sid, hop_secret, False, None))

    def remove_session(self, sid: int) -> None:
        if self._sessions.pop(sid, None) is not None:
            self._broadcast(("end", sid))

    def set_tunnel(self, sid: int, tunnel: bool) -> None:
        entry = self._sessions.get(sid)
        if entry is not None and entry[1] != tunnel:
            entry[1] = tunnel
            self._broadcast(("tunnel_mode", sid, tunnel))

    def set_routing(
        self,
        version: int,
        routing: dict[int, tuple[tuple[int, ...], tuple[int, ...]]],
        remote: tuple[int, ...] = (),
    ) -> None:
        """The routing, and the listeners that are users of other cluster nodes."""
        self._routing = (version, routing, remote)
        self._broadcast(("routing", version, routing, remote))

    # -- counters --------------------------------------------------------------------------------

    def per_worker(self) -> list[dict[str, Any]]:
        """Each worker now: its pid and what its current process forwarded."""
        return [
            {
                "pid": w.proc.pid if w.proc is not None else None,
                "forwarded": w.stats.get("forwarded", 0),
                "copies_udp": w.stats.get("copies_udp", 0),
            }
            for w in self._workers
        ]

    def stats(self) -> tuple[dict[str, int], list[int]]:
        """The workers' relay counters summed (those of ended workers included), and the drop
        counters by reason; ``send_*``: their batch senders' counters."""
        total = dict(self._retired)
        drops = list(self._retired_drops)
        for w in self._workers:
            for key, value in w.stats.items():
                if isinstance(value, int):
                    total[key] = total.get(key, 0) + value
            for key, value in w.send.items():
                total["send_" + key] = total.get("send_" + key, 0) + value
            if len(drops) < len(w.drops):
                drops += [0] * (len(w.drops) - len(drops))
            for i, d in enumerate(w.drops):
                drops[i] += d
        return total, drops

    async def stop(self) -> None:
        self._stopping = True
        for w in self._workers:
            if w.channel is not None and w.channel.transport is not None:
                w.channel.transport.close()
            if w.proc is not None and w.proc.poll() is None:
                w.proc.terminate()
        deadline = time.monotonic() + 3.0
        for w in self._workers:
            if w.proc is None:
                continue
            while w.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(2)
        for w in self._workers:
            w.sock.close()


# -- worker side ---------------------------------------------------------------------------------


class _WorkerServer:
    """One worker: its RelayCore on its socket, fed by the control process."""

    def __init__(self, udp: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.udp = udp
        self.loop = loop
        self.roster = RosterMirror()
        self.relay: RelayCore | None = None
        self.batch: SendMmsg | None = None
        self.native: NativeVoice | None = None  # the voice checks in C, over batch
        self.up = False
        self.channel: _Channel | None = None
        self.stopped: asyncio.Future[None] = loop.create_future()
        self.counters = UdpTally()

    def message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        relay = self.relay
        if kind == "init":
            _, index, n, lim, udp_send = msg
            batch = None
            if udp_send != "sendto":
                batch = make_batch_sender(self.udp, native=udp_send == "native")
            self.batch = batch
            family = self.udp.family
            self.native = native = make_native_voice(batch, family)
            self.relay = RelayCore(
                self.roster,
                limits=RelayLimits(*lim),
                pack_address=None if batch is None else lambda a: sockaddr(a, family),
                key_state=None if batch is None else batch.key_state,
                report_validated=True,
                is_remote=self.roster.is_remote,
                native=native,
            )
            log.info("worker %d of %d", index, n)
            return
        assert relay is not None, "init comes first"
        if kind == "session":
            _, sid, secret, tunnel, addr = msg
            relay.remove_session(sid)
            relay.add_session(sid, secret)
            relay.set_tunnel(sid, tunnel)
            if addr is not None:
                relay.set_address(sid, (addr[0], addr[1]))
        elif kind == "end":
            relay.remove_session(msg[1])
        elif kind == "tunnel_mode":
            relay.set_tunnel(msg[1], msg[2])
        elif kind == "addr":
            relay.set_address(msg[1], (msg[2], msg[3]))
        elif kind == "routing":
            self.roster.apply(msg[1], msg[2], msg[3])
            if not self.up and not self.stopped.done():
                self.up = True
                self.loop.add_reader(self.udp.fileno(), self.readable)
                self.report()
                assert self.channel is not None
                self.channel.send(("ready",))

    def lost(self) -> None:
        if not self.stopped.done():
            self.stopped.set_result(None)

    def readable(self) -> None:
        relay = self.relay
        assert relay is not None
        if self.native is not None:
            drain_native(self.udp, relay, self.native, self.loop.time(), self.counters, _UDP_BATCH)
        else:
            drain(
                self.udp,
                relay.datagram_received,
                self.loop.time(),
                self.batch,
                self.counters,
                _UDP_BATCH,
                _UDP_RECV_SIZE,
            )
        channel = self.channel
        assert channel is not None
        tunnel = relay.take_tunnel()
        if tunnel:
            channel.send(("tunnel", tunnel))
        remote = relay.take_remote()
        if remote:
            channel.send(("remote", remote))
        for sid, (host, port) in relay.take_validated():
            channel.send(("addr", sid, host, port))

    def report(self) -> None:
        relay, channel = self.relay, self.channel
        if self.stopped.done() or relay is None or channel is None:
            return
        received = relay.take_received()
        if received:
            channel.send(("received", received))
        b = self.batch
        c = self.counters
        send = {
            "dropped": c.udp_send_dropped + (b.dropped if b is not None else 0),
            "errors": c.udp_send_errors + (b.errors if b is not None else 0),
            "calls": b.calls if b is not None else 0,
            "recv_errors": c.udp_recv_errors,
        }
        drops = [n for _, n in sorted(relay.drops().items())]
        channel.send(("stats", relay.stats(), drops, send))
        self.loop.call_later(REPORT_INTERVAL, self.report)


async def _worker(ctl_fd: int, udp_fd: int) -> int:
    loop = asyncio.get_running_loop()
    udp = socket.socket(fileno=udp_fd)
    udp.setblocking(False)
    ctl = socket.socket(fileno=ctl_fd)
    ctl.setblocking(False)
    server = _WorkerServer(udp, loop)
    channel = _Channel(server.message, server.lost)
    server.channel = channel
    await loop.connect_accepted_socket(lambda: channel, ctl)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, server.lost)
    await server.stopped
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(udp.fileno())
    udp.detach()  # the control process owns the socket: it stays in the group
    return 0


def worker_main(spec: str) -> int:
    """``--relay-worker CTL_FD,UDP_FD``: run one worker until the control process goes."""
    try:
        ctl_fd, udp_fd = (int(x) for x in spec.split(","))
    except ValueError:
        print(f"voipclient-server: bad --relay-worker {spec!r}", file=sys.stderr)
        return 2
    # The control process stops us (SIGTERM) or goes away (the channel closes): either ends us.
    # A Ctrl-C in the terminal reaches the whole process group: the control process handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_worker(ctl_fd, udp_fd))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_worker(ctl_fd, udp_fd))
