"""The relay server's asyncio adapter: TLS control connections and the UDP relay on one port.

It owns the sockets and the clock (``loop.time()``, seconds) and drives two pure cores:

* :class:`~voipclient.server.control.ServerCore` — every control session (login, roster, KeyDist and
  text relay, rate limits, login/idle timeouts);
* :class:`~voipclient.server.relay.RelayCore` — hop MACs, address validation, ACL, replay window,
  rate limit and fan-out of voice datagrams.

Control path, per TCP connection::

    accept ── caps on handshakes in flight (total, per IP) ── TLS 1.3 handshake (our own
    MemoryBIO layer, with a timeout) ── caps on sessions (total, per IP; a polite fatal
    SERVER_FULL frame) ──
    core.connection_made(conn_id, address) ── data → core.receive_data ── core.outgoing() → write

After every call into a core, :meth:`RelayServer._pump` handles ``core.events()``
(SessionAuthenticated → relay.add_session, SessionClosed → relay.remove_session and close the
transport once its last frame is written, VoiceFromTunnel → relay.tunnel_received,
VoiceTransportChanged → relay.set_tunnel), drains ``relay.take_tunnel()`` into
``core.send_voice_tunnel``; what the core queued is written once per turn of the event loop
(:meth:`RelayServer._flush`, then the closes). ``core.handle_timer`` runs from a
``loop.call_at`` at ``core.get_timer()``.

UDP path: the socket is read with ``loop.add_reader`` and drained in batches of non-blocking
``recvfrom`` calls (one wakeup serves many datagrams); each datagram goes through
``relay.datagram_received``. On Linux its copies go into a ``sendmmsg`` batch
(:mod:`voipclient.server.mmsg`: the per-listener MAC is computed straight into the batch) that
is sent once per wakeup, and when it fills; elsewhere each copy is sent at once with a
non-blocking ``sendto``. Voice that cannot be sent now is dropped and counted, never queued.

Admin actions (AdminAction from a key in ``[admins] keys``, checked by the core): the adapter logs
each request and its outcome (``AdminActionHandled``) and writes an admin's ban to the store
(``BanRequested``), where the login check and the ban sweep below enforce it like a ``--ban``.

Channel administration (ChannelAdmin, checked by the core): the channels administrators make live
in the store, not in ``server.toml`` (which the server never writes). At start the adapter seeds
``Settings.seed_channels`` into a store that was never seeded (the embedded server's defaults),
then hands the stored channels to the core beside the configured ones (:func:`admin_channels`:
a parent that is no longer configured becomes the Lobby). ``ChannelSaved``/``ChannelDeleted``
are written at once (a new channel password as a scrypt hash, never in clear); every request is
logged (``ChannelAdminHandled``). Administrators the core made by the first-user rule
(``AdminGranted``) are recorded in the store and passed back in at the next start.

What is logged: connection counts, logins (sender id, name), session ends (reason), refusals,
admin requests (who, action, target, channel, reason, outcome).
Never hop secrets, passwords or keys; client IP addresses only at DEBUG level.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import hashlib
import ipaddress
import json
import logging
import socket
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, Final, TextIO, TypeVar, cast

import msgspec

from voipclient.errors import LocalProtocolError
from voipclient.names import name_key
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.frames import encode_frame
from voipclient.server.cluster import ClusterError, ClusterLink, SharedChannel
from voipclient.server.config import PasswordHash, Settings, hash_password
from voipclient.server.control import (
    FIRST_ADMIN_CHANNEL_ID,
    LOBBY_ID,
    ChannelConfig,
    ServerCore,
    TokenBucket,
)
from voipclient.server.mmsg import (
    NativeVoice,
    SendMmsg,
    drain,
    drain_native,
    make_batch_sender,
    make_native_voice,
    native_available,
    send_mode,
    send_now,
    sockaddr,
)
from voipclient.server.relay import Addr, RelayCore, RelayDrop
from voipclient.server.store import Store, StoredChannel
from voipclient.server.tls import TlsIdentity, make_server_context
from voipclient.server.workers import WorkerPool, bind_worker_sockets, workers_supported

__all__ = [
    "RelayServer",
    "admin_channels",
    "backoff_address",
    "bind_sockets",
    "format_start_line",
    "seed_records",
]

log = logging.getLogger("voipclient.server")
log_ctl = logging.getLogger("voipclient.server.control")
log_udp = logging.getLogger("voipclient.server.udp")

#: Datagrams read per wakeup of the UDP socket before yielding to the loop.
UDP_BATCH: Final = 256
#: Receive buffer per datagram: anything longer than 1200 bytes is dropped by the relay anyway.
UDP_RECV_SIZE: Final = 2048
#: Kernel socket buffers asked for (the kernel may cap them: net.core.rmem_max / wmem_max).
UDP_SOCKET_BUFFER: Final = 4 * 1024 * 1024
#: A control connection whose unsent output grows past this is a reader that does not read.
MAX_WRITE_BUFFER: Final = 4 * 1024 * 1024
#: Seconds a closing connection gets to flush its last frames before it is aborted.
CLOSE_GRACE: Final = 5.0
#: Seconds the shutdown waits for clients to receive the notice.
SHUTDOWN_GRACE: Final = 2.0
_T = TypeVar("_T")
#: Connections that may wait for a TLS handshake slot, per slot (``max_handshakes``): a burst
#: of reconnecting clients queues (reading paused, the handshake timeout running) rather than
#: being dropped; beyond this many they are refused.
WAITING_PER_HANDSHAKE: Final = 8
#: Seconds between checks of the store for new bans (added by ``voipclient-server --ban``).
BAN_SWEEP_INTERVAL: Final = 1.0
#: Seconds between pushes of the relay's UDP counters to the core (reported in Pong).
RECEIVED_SYNC_INTERVAL: Final = 0.5


def backoff_address(ip: str) -> str | None:
    """The address the core counts wrong server passwords under: the IP itself for IPv4,
    its /64 network for IPv6 (one subscriber usually holds a whole /64, so counting single
    IPv6 addresses would give a guesser as many fresh counts as it likes). None when unknown."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def _never(password: str) -> bool:
    """The verifier of a channel whose stored password hash cannot be read: nothing opens it."""
    del password
    return False


def admin_channels(
    settings: Settings,
    stored: list[StoredChannel],
    wrap: Callable[[PasswordHash], Callable[[str], bool]] | None = None,
    *,
    known: Collection[int] = (),
) -> list[ChannelConfig]:
    """The store's channels as the core takes them (``ServerCore(admin_channels=...)``), merged
    with the configured ones by these rules, each logged when it applies: a stored channel
    whose id a configured one has (only possible with 9,998 configured channels) or that does
    not fit the schema is left out; a parent that is gone (a configured channel removed from the
    file, a left-out channel) becomes the Lobby, and so does a parent that closes a cycle (a
    damaged file). ``wrap`` wraps each password hash (the adapter's scrypt throttle); a hash
    that does not parse locks the channel (no password opens it). ``known``: channel ids that
    exist already (a cluster node adding one channel from the shared store), valid parents."""
    configured = settings.channel_ids()  # casefolded name -> id, the Lobby included
    taken = set(configured.values())
    rows: dict[int, StoredChannel] = {}
    for ch in stored:
        if ch.id in taken or not 2 <= ch.id <= m.U32_MAX:
            log.error("stored channel left out: its id is taken id=%d name=%r", ch.id, ch.name)
            continue
        rows[ch.id] = ch
    parents: dict[int, int] = {}
    for cid, ch in rows.items():
        pid = configured.get(ch.parent_name) if ch.parent_name is not None else ch.parent
        if pid is None or (pid not in taken and pid not in rows and pid not in known):
            log.warning("stored channel moved to the Lobby: its parent is gone name=%r", ch.name)
            pid = LOBBY_ID
        parents[cid] = pid
    for cid in sorted(parents):
        seen = {cid}
        cursor = parents[cid]
        while cursor in parents:
            if cursor in seen:
                log.warning("stored channel moved to the Lobby: parent cycle id=%d", cursor)
                parents[cursor] = LOBBY_ID
                break
            seen.add(cursor)
            cursor = parents[cursor]
    out: list[ChannelConfig] = []
    for cid, ch in rows.items():
        password: Callable[[str], bool] | None = None
        if ch.password_hash is not None:
            try:
                parsed = PasswordHash.parse(ch.password_hash)
            except ValueError as exc:
                log.error("stored channel locked: bad password hash name=%r error=%s", ch.name, exc)
                password = _never
            else:
                password = wrap(parsed) if wrap is not None else parsed
        config = ChannelConfig(
            id=cid,
            name=ch.name,
            parent=parents[cid],
            description=ch.description,
            password=password,
            max_members=ch.max_members,
            speakers=None if ch.speakers is None else frozenset(ch.speakers),
        )
        try:
            m.encode_checked(m.ChannelAdded(channel=config.to_view().to_wire()))
        except (LocalProtocolError, ValueError) as exc:
            log.error("stored channel left out: %s name=%r", exc, ch.name)
            continue
        out.append(config)
    if len(out) != len(rows):  # children of a left-out channel: to the Lobby
        kept = {c.id for c in out}
        out = [
            c
            if c.parent in taken or c.parent in kept or c.parent in known
            else replace(c, parent=LOBBY_ID)
            for c in out
        ]
    return out


def _shared(ch: StoredChannel) -> SharedChannel:
    """A stored channel as the cluster's channel store keeps it (the same fields)."""
    return SharedChannel(**dataclasses.asdict(ch))


def _stored(ch: SharedChannel) -> StoredChannel:
    return StoredChannel(**msgspec.structs.asdict(ch))


def seed_records(settings: Settings, first_id: int) -> list[StoredChannel]:
    """``settings.seed_channels`` as store records with ids from ``first_id`` up (file order);
    a parent is the Lobby, an earlier seed (by id) or a configured channel (by name)."""
    configured = settings.channel_ids()
    lobby = settings.lobby.name.casefold()
    seeded: dict[str, int] = {}
    out: list[StoredChannel] = []
    for i, ch in enumerate(settings.seed_channels):
        parent = (ch.parent or settings.lobby.name).casefold()
        if parent == lobby:
            pid: int | None = LOBBY_ID
            pname: str | None = None
        elif parent in seeded:
            pid, pname = seeded[parent], None
        elif parent in configured:
            pid, pname = None, parent
        else:
            pid, pname = LOBBY_ID, None
        cid = first_id + i
        seeded[ch.name.casefold()] = cid
        out.append(
            StoredChannel(
                id=cid,
                parent=pid,
                parent_name=pname,
                name=ch.name,
                description=ch.description,
                password_hash=ch.password_hash,
                max_members=ch.max_members,
                speakers=ch.speakers,
            )
        )
    return out


def format_start_line(host: str, port: int, pin: str) -> str:
    """The one line a script can parse: ``voipclient-server listening on HOST:PORT (tcp+udp)
    pin=sha256/...``. IPv6 hosts are bracketed."""
    shown = f"[{host}]" if ":" in host else host
    return f"voipclient-server listening on {shown}:{port} (tcp+udp) pin={pin}"


def bind_sockets(
    host: str, port: int, *, attempts: int = 50
) -> tuple[socket.socket, socket.socket]:
    """A listening TCP socket and a UDP socket bound to the same port number on ``host``.

    ``port`` 0 lets the OS pick a free TCP port; the UDP socket then takes the same number, and
    when that UDP port is taken both are closed and another pair is tried.
    """
    tcp, udp = bind_server_sockets(host, port, 1, attempts=attempts)
    return tcp, udp[0]


def bind_server_sockets(
    host: str, port: int, udp_shards: int, *, attempts: int = 50
) -> tuple[socket.socket, list[socket.socket]]:
    """:func:`bind_sockets` with ``udp_shards`` UDP sockets: more than one makes a reuseport
    group steered by sender id (:func:`~voipclient.server.workers.bind_worker_sockets`)."""
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    last: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            if sys.platform != "win32":
                # Restart at once after a stop (TIME_WAIT); not on Windows, where it means
                # something else (port stealing).
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((sockaddr[0], port, *sockaddr[2:]))
            actual = tcp.getsockname()[1]
            try:
                if udp_shards > 1:
                    udps = bind_worker_sockets(
                        family, (sockaddr[0], actual, *sockaddr[2:]), udp_shards
                    )
                else:
                    udp = socket.socket(family, socket.SOCK_DGRAM)
                    udps = [udp]
                    try:
                        udp.bind((sockaddr[0], actual, *sockaddr[2:]))
                    except OSError:
                        udp.close()
                        raise
            except OSError as exc:
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    last = exc
                    tcp.close()
                    continue
                raise
        except BaseException:
            tcp.close()
            raise
        tcp.listen(128)
        tcp.setblocking(False)
        for udp in udps:
            udp.setblocking(False)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    udp.setsockopt(socket.SOL_SOCKET, opt, UDP_SOCKET_BUFFER)
        return tcp, udps
    raise OSError(errno.EADDRINUSE, f"no port free for both TCP and UDP on {host} ({last})")


class ThrottledVerifier:
    """A channel password check that runs scrypt at most ``rate`` times a second server-wide
    (beyond that a guess simply fails), so password guessing cannot eat the event loop. A
    password that verified recently is remembered (by its SHA-256) and costs nothing."""

    def __init__(self, check: PasswordHash, bucket: TokenBucket, clock: Callable[[], float]):
        self._check = check
        self._bucket = bucket
        self._clock = clock
        self._good: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def __call__(self, password: str) -> bool:
        digest = hashlib.sha256(password.encode("utf-8")).digest()
        if digest in self._good:
            self._good.move_to_end(digest)
            return True
        if not self._bucket.take(self._clock()):
            log_ctl.warning("channel password check throttled")
            return False
        ok = self._check(password)
        if ok:
            self._good[digest] = None
            while len(self._good) > 16:
                self._good.popitem(last=False)
        return ok


@dataclass(eq=False)
class _Counters:
    tcp_accepted: int = 0
    tls_failed: int = 0
    refused_handshakes: int = 0
    queued_handshakes: int = 0  # connections that waited for a handshake slot
    refused_sessions: int = 0
    refused_per_ip: int = 0
    slow_readers: int = 0
    control_bytes_in: int = 0
    control_bytes_out: int = 0
    control_writes: int = 0  # TLS writes (each one record and one send)
    udp_send_dropped: int = 0
    udp_send_errors: int = 0
    udp_recv_errors: int = 0
    logins: int = 0
    bans_enforced: int = 0


class _Connection(asyncio.Protocol):
    """One TCP connection with its own TLS layer (``ssl.MemoryBIO``), then a control session.

    TLS runs here rather than in the event loop (``create_server(ssl=...)`` or ``start_tls``) so
    that the adapter sees every connection before its handshake (caps on handshakes in flight,
    with the peer's address known), owns the handshake timeout, and behaves the same on asyncio
    and uvloop (uvloop starts reading right after ``connection_made``, so bytes can arrive before
    a ``start_tls`` could take over).
    """

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.ip = ""
        self.conn_id: int | None = None
        self.sender_id: int | None = None
        self.transport: asyncio.Transport | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = server._ssl.wrap_bio(self._in, self._out, server_side=True)
        self.handshaking = True
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.lost = False
        self.closing = False
        self.counted_handshake = False
        self.counted_established = False
        self.waiting = False  # queued for a handshake slot

    # -- transport callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.server._tcp_accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            return
        self._in.write(data)
        if self.waiting:
            # Queued for a handshake slot: keep what came (uvloop starts reading after
            # connection_made even when it paused) and read no more until the turn comes.
            self.transport.pause_reading()
            return
        if self.handshaking:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush_tls()
                return
            except (ssl.SSLError, OSError, ValueError) as exc:
                self._flush_tls()  # the TLS alert, if any
                self.server._handshake_failed(self, exc)
                return
            self._flush_tls()
            self.handshaking = False
            self.server._handshake_done(self)
            if self.conn_id is None:
                return  # refused
        chunks: list[bytes] = []
        eof = False
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify
                eof = True
                break
            except ssl.SSLError as exc:
                log_ctl.debug("tls error conn=%s error=%r", self.conn_id, exc)
                self.abort()
                return
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        self._flush_tls()
        if chunks and self.conn_id is not None:
            self.server._control_data(self, b"".join(chunks))
        if eof:
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self.server._connection_lost(self)

    # -- writing and closing ---------------------------------------------------------------------

    def _flush_tls(self) -> None:
        data = self._out.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write(self, data: bytes) -> None:
        """Encrypt and send application bytes."""
        view = memoryview(data)
        try:
            while view:
                n = self._tls.write(view)
                view = view[n:]
        except ssl.SSLError as exc:
            log_ctl.debug("tls write failed conn=%s error=%r", self.conn_id, exc)
            self.abort()
            return
        self._flush_tls()

    def write_buffer_size(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()

    def close(self) -> None:
        """close_notify, then close once the buffered bytes are out (aborted after a grace)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.handshaking:
            with contextlib.suppress(ssl.SSLError, ValueError):
                self._tls.unwrap()  # queues close_notify; the peer's may never come
            self._flush_tls()
        transport.close()
        loop = self.server._loop
        if loop is not None:
            loop.call_later(CLOSE_GRACE, transport.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class RelayServer:
    """The running server. ``await start()``, then ``await serve_until(stop_event)``."""

    def __init__(
        self,
        settings: Settings,
        identity: TlsIdentity,
        store: Store,
        *,
        stats_out: TextIO | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.store = store
        self._stats_out = stats_out if stats_out is not None else sys.stdout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl = make_server_context(identity)
        self._core: ServerCore | None = None
        self._relay: RelayCore | None = None
        self._tcp_sock: socket.socket | None = None
        self._udp_sock: socket.socket | None = None
        self._tcp_server: asyncio.AbstractServer | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._batch: SendMmsg | None = None  # sendmmsg batches (Linux), else per-copy sendto
        self._native_voice: NativeVoice | None = None  # the voice checks in C, over _batch
        self._pool: WorkerPool | None = None  # UDP forwarding in worker processes (--workers)
        self._routing_version = -1  # the roster version the workers were last sent
        self._cluster: ClusterLink | None = None  # --cluster: the other nodes over NATS
        self._cluster_version = -1  # the roster version the voice subscriptions follow
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader_added = False
        self.port = 0
        self.host = settings.host
        self._conns: dict[int, _Connection] = {}
        self._by_sender: dict[int, int] = {}  # sender_id -> conn_id
        self._next_conn_id = 1
        self._handshaking: set[_Connection] = set()
        self._ip_handshaking: collections.Counter[str] = collections.Counter()
        # Accepted connections waiting for a handshake slot (reading paused), oldest first.
        self._waiting: dict[_Connection, None] = {}
        self._ip_waiting: collections.Counter[str] = collections.Counter()
        self._ip_established: collections.Counter[str] = collections.Counter()
        self._to_close: list[_Connection] = []
        self._flush_pending = False  # a _flush is scheduled for this turn of the loop
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._stats_handle: asyncio.TimerHandle | None = None
        self._persisted_names: set[str] = set()
        self._verifier: Callable[[PasswordHash], Callable[[str], bool]] | None = None
        # configured channel id -> its casefolded name (a stored channel's parent is recorded
        # by name when it is one of these: configured ids follow the file's order)
        self._configured_names: dict[int, str] = {}
        self._ik_of: dict[int, bytes] = {}  # sender_id -> identity key, for the ban sweep
        self._ban_handle: asyncio.TimerHandle | None = None
        self._last_received_sync = 0.0
        self._started_at = 0.0
        self._stopping = False
        self._all_closed: asyncio.Event | None = None
        self.counters = _Counters()

    # -- start and stop --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind both sockets, build the cores, start serving."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._started_at = loop.time()
        s = self.settings
        shards = s.workers if s.workers > 1 and workers_supported() else 1
        self._tcp_sock, udp_socks = bind_server_sockets(s.host, s.port, shards)
        self._udp_sock = udp_socks[0]
        self.port = self._tcp_sock.getsockname()[1]
        bindings = self.store.load_bindings()
        if s.cluster is not None:
            shown = s.public_host or s.host
            shown = f"[{shown}]" if ":" in shown else shown
            self._cluster = ClusterLink(s.cluster, s.node_id or "node", f"{shown}:{self.port}")
            try:
                await self._cluster.connect()
            except BaseException:
                self._cluster = None
                self._tcp_sock.close()
                for sock in udp_socks:
                    sock.close()
                raise
            for key, ik in self._cluster.names.items():
                bindings.setdefault(key, ik)
        self._persisted_names = set(bindings)
        self._configured_names = {
            cid: name for name, cid in s.channel_ids().items() if cid != LOBBY_ID
        }
        if s.seed_channels:
            first = max(FIRST_ADMIN_CHANNEL_ID, self.store.next_channel_id())
            if self.store.seed_channels(seed_records(s, first)):
                log.info("channels seeded count=%d", len(s.seed_channels))
        bucket = TokenBucket(
            s.limits.channel_password_checks_per_s,
            max(1.0, s.limits.channel_password_checks_per_s),
            loop.time(),
        )

        def verifier(h: PasswordHash) -> Callable[[str], bool]:
            return ThrottledVerifier(h, bucket, loop.time)

        self._verifier = verifier
        config = s.server_config(udp_port=self.port, verifier=verifier)
        stored = self.store.channels()
        granted = [a.ik_pub for a in self.store.admins()]
        next_channel_id = self.store.next_channel_id()
        if self._cluster is not None:
            link = self._cluster
            try:
                stored, granted = await self._join_shared_stores(stored, granted)
            except Exception as exc:
                raise ClusterError(
                    f"cannot read the cluster's shared channels and administrators: {exc!r}"
                ) from None
            next_channel_id = link.next_channel_id
            if config.admin_first_user:
                log.warning(
                    "the first-user administrator rule is off in a cluster (each node would "
                    "crown its own first user): name administrators in [admins] on every node"
                )
            config = replace(
                config,
                first_sender_id=link.first_sender_id,
                last_sender_id=link.last_sender_id,
                first_channel_id=link.first_channel_id,
                last_channel_id=link.last_channel_id,
                admin_first_user=False,
                cluster=True,
            )
        made = admin_channels(s, stored, verifier)
        self._core = ServerCore(
            config,
            name_bindings=bindings,
            is_banned=self._login_banned,
            admin_channels=made,
            granted_admins=granted,
            next_channel_id=next_channel_id,
        )
        udp_sock = self._udp_sock
        batch = s.udp_send != "sendto" and shards == 1
        self._batch = make_batch_sender(udp_sock, native=s.udp_send == "native") if batch else None
        family = udp_sock.family
        self._native_voice = make_native_voice(self._batch, family)
        self._relay = RelayCore(
            self._core,
            limits=s.limits.relay_limits(),
            pack_address=None if self._batch is None else lambda a: sockaddr(a, family),
            key_state=None if self._batch is None else self._batch.key_state,
            is_remote=self._core.is_remote if self._cluster is not None else None,
            native=self._native_voice,
        )
        log.info(
            "cores ready channels=%d admin_channels=%d name_bindings=%d bans=%d admins=%d "
            "first_user_admin=%s password=%s",
            1 + len(s.channels) + len(made),
            len(made),
            len(bindings),
            len(self.store.bans()),
            len(s.admins) + len(granted),
            "yes" if s.admin_first_user and not self._core.admins else "no",
            "yes" if s.password else "no",
        )
        if shards > 1:
            # The workers forward UDP; this process sends only tunnelled speakers' copies (from
            # the first socket) and never reads one.
            self._pool = WorkerPool(
                udp_socks,
                s.limits.relay_limits(),
                udp_send=s.udp_send,
                log_level=s.log_level,
                on_tunnel=self._tunnel_to_connections,
                on_received=self._worker_received,
                on_address=self._relay.set_address,
                on_remote=self._publish_voice,
            )
            try:
                await self._pool.start()
            except BaseException:
                await self._pool.stop()
                self._udp_sock = None
                raise
            self._sync_routing()
        self._tcp_server = await loop.create_server(
            lambda: _Connection(self), sock=self._tcp_sock, start_serving=True
        )
        if self._pool is None:
            try:
                loop.add_reader(udp_sock.fileno(), self._udp_readable)
                self._reader_added = True
            except NotImplementedError:  # e.g. the Windows proactor loop: a transport instead
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpFallback(self), sock=udp_sock
                )
                self._udp_transport = transport
        send = send_mode(s.udp_send) if self._pool is not None or self._reader_added else "sendto"
        log_udp.info(
            "udp relay bound port=%d workers=%d send=%s",
            self.port,
            1 if self._pool is None else self._pool.size,
            send,
        )
        if s.udp_send == "native" and send != "native":
            log_udp.warning("the native fan-out is not used: %s", native_available()[1])
        if self._cluster is not None:
            self._core.set_cluster_nodes(self._cluster.addresses())
            await self._cluster.start(self)
            self._sync_cluster()
        if s.stats_interval > 0:
            self._stats_handle = loop.call_later(s.stats_interval, self._emit_stats)
        self._ban_handle = loop.call_later(BAN_SWEEP_INTERVAL, self._ban_sweep)

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down cleanly."""
        await stop.wait()
        await self.shutdown()

    async def shutdown(
        self, reason: str = "server shutting down", reconnect_after_ms: int | None = 5_000
    ) -> None:
        """Tell every client (ServerShutdown), flush, close everything.

        ``reconnect_after_ms``: clients come back by themselves after this long (a stop is
        usually a restart: clients that find nobody keep backing off); None tells them not to.
        """
        if self._stopping:
            return
        self._stopping = True
        loop = self._loop
        assert loop is not None and self._core is not None
        log.info("shutting down sessions=%d", len(self._conns))
        if self._tcp_server is not None:
            self._tcp_server.close()
        for conn in [*self._handshaking, *self._waiting]:
            conn.abort()
        self._core.shutdown(reason, loop.time(), reconnect_after_ms)
        self._pump()
        if self._conns:
            self._all_closed = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), SHUTDOWN_GRACE)
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.abort()
        if self._cluster is not None:
            await self._cluster.stop()
        await self._stop_workers()
        self._close_udp()
        for handle in (self._timer, self._stats_handle, self._ban_handle):
            if handle is not None:
                handle.cancel()
        if self._tcp_server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tcp_server.wait_closed(), SHUTDOWN_GRACE)
        log.info("stopped")

    async def _stop_workers(self) -> None:
        if self._pool is not None:
            await self._pool.stop()  # closes every UDP socket, the first one included
            self._udp_sock = None

    def _close_udp(self) -> None:
        loop = self._loop
        if self._reader_added and loop is not None and self._udp_sock is not None:
            loop.remove_reader(self._udp_sock.fileno())
            self._reader_added = False
        if self._udp_transport is not None:
            self._udp_transport.close()
            self._udp_transport = None
        elif self._udp_sock is not None:
            self._udp_sock.close()
        self._udp_sock = None

    # -- TCP accept and TLS ----------------------------------------------------------------------

    def _tcp_accepted(self, conn: _Connection) -> None:
        transport, loop = conn.transport, self._loop
        assert transport is not None and loop is not None
        peer = transport.get_extra_info("peername")
        conn.ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self.counters.tcp_accepted += 1
        lim = self.settings.limits
        if self._stopping:
            transport.abort()
            return
        if self._ip_handshaking[conn.ip] + self._ip_waiting[conn.ip] >= lim.max_sessions_per_ip or (
            len(self._handshaking) >= lim.max_handshakes
            and len(self._waiting) >= WAITING_PER_HANDSHAKE * lim.max_handshakes
        ):
            # One address with too many handshakes, or the queue is full: no TLS yet, so
            # nothing polite can be said.
            self.counters.refused_handshakes += 1
            log_ctl.info("refused a connection: too many TLS handshakes in progress")
            transport.abort()
            return
        # The handshake timeout runs from the accept, for a queued connection too.
        conn.handshake_timer = loop.call_later(
            lim.handshake_timeout, self._handshake_timed_out, conn
        )
        if len(self._handshaking) >= lim.max_handshakes:
            # A burst (a node of the cluster died, a restart: every client at once) waits its
            # turn instead of being dropped and backing off: its bytes stay in the kernel.
            transport.pause_reading()
            conn.waiting = True
            self._waiting[conn] = None
            self._ip_waiting[conn.ip] += 1
            self.counters.queued_handshakes += 1
            return
        self._start_handshake(conn)

    def _start_handshake(self, conn: _Connection) -> None:
        self._handshaking.add(conn)
        self._ip_handshaking[conn.ip] += 1
        conn.counted_handshake = True

    def _unqueue(self, conn: _Connection) -> None:
        conn.waiting = False
        del self._waiting[conn]
        self._ip_waiting[conn.ip] -= 1
        if self._ip_waiting[conn.ip] <= 0:
            del self._ip_waiting[conn.ip]

    def _start_waiting(self) -> None:
        """Queued connections take the handshake slots that came free, oldest first."""
        limit = self.settings.limits.max_handshakes
        while self._waiting and len(self._handshaking) < limit:
            conn = next(iter(self._waiting))
            self._unqueue(conn)
            transport = conn.transport
            if conn.lost or transport is None or transport.is_closing():
                continue
            self._start_handshake(conn)
            transport.resume_reading()
            conn.data_received(b"")  # what came while it waited (a ClientHello, typically)

    def _end_handshake(self, conn: _Connection) -> None:
        if conn.handshake_timer is not None:
            conn.handshake_timer.cancel()
            conn.handshake_timer = None
        if conn in self._waiting:
            self._unqueue(conn)
        if conn.counted_handshake:
            conn.counted_handshake = False
            self._handshaking.discard(conn)
            self._ip_handshaking[conn.ip] -= 1
            if self._ip_handshaking[conn.ip] <= 0:
                del self._ip_handshaking[conn.ip]
            if self._waiting and not self._stopping:
                self._start_waiting()

    def _handshake_timed_out(self, conn: _Connection) -> None:
        conn.handshake_timer = None
        if conn.handshaking and not conn.lost:
            self.counters.tls_failed += 1
            log_ctl.debug("tls handshake timed out ip=%s", conn.ip)
            self._end_handshake(conn)
            conn.abort()

    def _handshake_failed(self, conn: _Connection, exc: Exception) -> None:
        self.counters.tls_failed += 1
        log_ctl.debug("tls handshake failed ip=%s error=%r", conn.ip, exc)
        self._end_handshake(conn)
        conn.close()  # sends the TLS alert, if any, then closes (aborted after a grace)

    def _handshake_done(self, conn: _Connection) -> None:
        self._end_handshake(conn)
        self._attach(conn)

    def _attach(self, conn: _Connection) -> None:
        """A TLS session is up: apply the session caps, then hand it to the core."""
        core, loop = self._core, self._loop
        assert core is not None and loop is not None
        lim = self.settings.limits
        full = len(self._conns) >= lim.max_sessions
        per_ip = self._ip_established[conn.ip] >= lim.max_sessions_per_ip
        if (full or per_ip) and not self._stopping:
            if full:
                self.counters.refused_sessions += 1
                message = "server is full"
            else:
                self.counters.refused_per_ip += 1
                message = "too many connections from your address"
            log_ctl.info("refused a session reason=%r", message)
            error = m.Error(code=m.ErrorCode.SERVER_FULL, message=message, fatal=True)
            conn.write(encode_frame(m.encode(error)))
            conn.closing = True
            conn.close()
            return
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        conn.conn_id = conn_id
        conn.counted_established = True
        self._ip_established[conn.ip] += 1
        self._conns[conn_id] = conn
        log_ctl.debug("connection conn=%d ip=%s", conn_id, conn.ip)
        core.connection_made(conn_id, loop.time(), backoff_address(conn.ip))
        self._pump()

    # -- control data ----------------------------------------------------------------------------

    def _control_data(self, conn: _Connection, data: bytes) -> None:
        core, loop = self._core, self._loop
        assert core is not None and loop is not None and conn.conn_id is not None
        if conn.closing:
            return
        now = loop.time()
        self.counters.control_bytes_in += len(data)
        if now - self._last_received_sync >= RECEIVED_SYNC_INTERVAL:
            self._sync_received(now)
        core.receive_data(conn.conn_id, data, now)
        self._pump()

    def _connection_lost(self, conn: _Connection) -> None:
        core, loop = self._core, self._loop
        self._end_handshake(conn)
        if conn.conn_id is None or core is None or loop is None:
            return
        if conn.counted_established:
            conn.counted_established = False
            self._ip_established[conn.ip] -= 1
            if self._ip_established[conn.ip] <= 0:
                del self._ip_established[conn.ip]
        if self._conns.pop(conn.conn_id, None) is None:
            return
        core.connection_lost(conn.conn_id, loop.time())
        self._pump()
        if self._all_closed is not None and not self._conns:
            self._all_closed.set()

    def _sync_received(self, now: float) -> None:
        """Hand the relay's per-session UDP counts to the core (it reports them in Pong)."""
        core, relay = self._core, self._relay
        assert core is not None and relay is not None
        self._last_received_sync = now
        for sender_id, count in relay.take_received():
            core.note_udp_received(sender_id, count)

    def _pump(self) -> None:
        """Carry out what the cores decided: events, tunnelled voice, output, closes, timer."""
        core, relay, loop = self._core, self._relay, self._loop
        assert core is not None and relay is not None and loop is not None
        for _ in range(64):  # each round can only produce output of the next; a few suffice
            events = core.events()
            for event in events:
                self._on_event(event, loop.time())
            tunnel = relay.take_tunnel()
            for sender_id, datagram in tunnel:
                conn_id = self._by_sender.get(sender_id)
                if conn_id is not None:
                    core.send_voice_tunnel(conn_id, datagram)
            if not events and not tunnel:
                break
        if self._pool is not None:
            self._sync_routing()
        if self._cluster is not None:
            self._publish_voice(relay.take_remote())
            self._sync_cluster()
        if not self._flush_pending:
            # The writes wait for the end of this turn of the loop: every login, join or key
            # distribution read in it reaches each recipient as one TLS record and one send (a
            # reconnect storm costs a write per recipient per turn, not per message).
            self._flush_pending = True
            loop.call_soon(self._flush)
        self._schedule_timer()

    def _flush(self) -> None:
        """Write what the core has for each connection, then close those it ended (their last
        frames first)."""
        self._flush_pending = False
        core = self._core
        if core is None:
            return
        for conn_id, data in core.outgoing():
            self._write(conn_id, data)
        if self._to_close:
            closing, self._to_close = self._to_close, []
            for conn in closing:
                if not conn.lost:
                    conn.close()

    def _sync_routing(self) -> None:
        """Send the workers the routing when the roster changed (memberships, deafen, ACL)."""
        core, pool = self._core, self._pool
        assert core is not None and pool is not None
        version = core.roster_version
        if version != self._routing_version:
            self._routing_version = version
            remote = tuple(core.remote_users()) if self._cluster is not None else ()
            pool.set_routing(version, core.routing(), remote)

    # -- cluster ----------------------------------------------------------------------------------

    def _sync_cluster(self) -> None:
        """Listen to the voice of exactly the channels our own users listen to."""
        core, link = self._core, self._cluster
        assert core is not None and link is not None
        version = core.roster_version
        if version == self._cluster_version:
            return
        self._cluster_version = version
        wanted = {
            cid
            for cid, (listeners, _) in core.routing().items()
            if any(not core.is_remote(uid) for uid in listeners)
        }
        link.set_listening(wanted)

    def _publish_voice(self, bodies: list[bytes]) -> None:
        if bodies and self._cluster is not None:
            self._cluster.publish_voice(bodies)

    def _spawn(self, coro: Any) -> None:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # The cluster link's callbacks run on the loop once the core exists; each hands the core
    # what another node said, then carries out what it decided (_pumped).

    @property
    def _running_core(self) -> ServerCore:
        core = self._core
        assert core is not None
        return core

    def _pumped(self, result: _T) -> _T:
        self._pump()
        return result

    def cluster_roster(self, node: str, msg: m.ServerMessage) -> bool:
        return self._pumped(self._running_core.apply_remote(node, msg))

    def cluster_node_gone(self, node: str) -> int:
        return self._pumped(self._running_core.remote_node_gone(node))

    def cluster_keydist(self, sender: int, channel: int, recipient: int, blob: bytes) -> None:
        self._pumped(self._running_core.deliver_remote_keydist(sender, channel, recipient, blob))

    def cluster_text(self, sender: int, channel: int, blob: bytes) -> None:
        self._pumped(self._running_core.deliver_remote_text(sender, channel, blob))

    def cluster_loss(self, to: int, msg: m.LossReportDelivery) -> None:
        self._pumped(self._running_core.deliver_remote_loss_report(to, msg))

    def cluster_voice(self, body: bytes) -> None:
        relay, loop = self._relay, self._loop
        assert relay is not None and loop is not None
        self._send_udp(relay.remote_received(body, loop.time()))
        self._deliver_tunnel()

    def cluster_local_users(self) -> list[m.UserInfo]:
        return self._running_core.local_users()

    def cluster_replaced(self, sender_id: int) -> None:
        self._pumped(self._running_core.replaced_elsewhere(sender_id))

    def cluster_nodes_changed(self, addresses: tuple[str, ...]) -> None:
        core = self._core
        if core is not None:
            core.set_cluster_nodes(addresses)
            self._pump()

    def cluster_name_bound(self, key: str, ik_pub: bytes) -> None:
        """A name bound on another node: refused to any other key here too (first wins)."""
        core = self._core
        if core is not None:
            core.name_bindings.setdefault(key, ik_pub)

    async def _join_shared_stores(
        self, stored: list[StoredChannel], granted: list[bytes]
    ) -> tuple[list[StoredChannel], list[bytes]]:
        """A node joining the cluster: the first time, its own administrator-made channels and
        granted administrators go into the shared stores (a standalone server that becomes a
        node keeps them; an id another node's channel has is left out, logged). Then, and at
        every later start, its store becomes a mirror of the shared channels (one deleted
        while the node was down is deleted here, never brought back)."""
        link = self._cluster
        assert link is not None
        if not self.store.joined_cluster():
            for ch in stored:
                shared = _shared(ch)
                if link.channels.get(ch.id) == shared:
                    continue
                if not await link.create_channel(shared):
                    log.warning(
                        "channel left out of the cluster: another node's channel has its id "
                        "id=%d name=%r",
                        ch.id,
                        ch.name,
                    )
            for ik in granted:
                if ik not in link.admins:
                    await link.grant_admin(ik)
            self.store.mark_joined_cluster()
        for ch in stored:
            if ch.id not in link.channels:
                self.store.delete_channel(ch.id)
        mirrored = []
        for shared in link.channels.values():
            record = _stored(shared)
            try:
                self.store.save_channel(record)
            except sqlite3.Error as exc:  # pragma: no cover - a broken data directory
                log.error("cannot store a cluster channel id=%d error=%r", record.id, exc)
            mirrored.append(record)
        return sorted(mirrored, key=lambda c: c.id), sorted(link.admins)

    def cluster_channel(self, channel_id: int, shared: SharedChannel | None) -> None:
        """A channel made, changed or deleted on another node (or our own change, back from the
        shared store: then nothing changes)."""
        core = self._core
        assert core is not None
        try:
            if shared is None:
                self.store.delete_channel(channel_id)
            else:
                self.store.save_channel(_stored(shared))
        except sqlite3.Error as exc:  # pragma: no cover - a broken data directory
            log.error("cannot store a cluster channel id=%d error=%r", channel_id, exc)
        if shared is None:
            if core.remove_shared_channel(channel_id):
                log_ctl.info("channel removed on another node id=%d", channel_id)
        else:
            made = admin_channels(
                self.settings, [_stored(shared)], self._verifier, known=core.channel_ids()
            )
            if not made or not core.apply_shared_channel(made[0]):
                log.warning(
                    "a channel from the cluster does not fit here id=%d name=%r",
                    channel_id,
                    shared.name,
                )
        self._pump()

    def cluster_admin(
        self,
        action: m.AdminOp,
        by: int,
        by_name: str,
        target: int,
        channel_id: int | None,
        reason: str,
    ) -> bool:
        """An administrator on another node kicked, banned or moved a user of ours."""
        done = self._running_core.admin_from_node(action, by, by_name, target, channel_id, reason)
        log_ctl.info(
            "admin %s from another node by=%r target=%d channel=%s: %s",
            action.name.lower(),
            by_name,
            target,
            channel_id,
            "done" if done else "not applicable",
        )
        self._pump()
        return done

    def cluster_users_digest(self, node: str | None = None) -> bytes:
        return self._running_core.users_digest(node)

    def cluster_members(self, node: str, sender_ids: list[int]) -> int:
        return self._pumped(self._running_core.resync_remote(node, sender_ids))

    def cluster_admin_granted(self, ik_pub: bytes) -> None:
        core = self._core
        if core is not None:
            core.add_admin(ik_pub)

    def cluster_bans_changed(self) -> None:
        if not self._stopping and self._loop is not None:
            self._loop.call_soon(self._ban_sweep_once)

    async def _bind_cluster_name(self, sender_id: int, key: str, ik_pub: bytes) -> None:
        """A name bound here: claim it cluster-wide; another node's earlier claim wins."""
        link, core = self._cluster, self._core
        if link is None or core is None:
            return
        try:
            ok = await link.bind_name(key, ik_pub)
        except Exception as exc:
            log.warning("cannot record a name binding in the cluster error=%r", exc)
            return
        if not ok and not self._stopping:
            log_ctl.info("name taken on another node sender=%d", sender_id)
            core.kick(sender_id, "this name is taken on another node of the cluster")
            self._pump()

    def _worker_received(self, counts: list[tuple[int, int]]) -> None:
        core = self._core
        assert core is not None
        for sender_id, count in counts:
            core.note_udp_received(sender_id, count)

    def _write(self, conn_id: int, data: bytes) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.transport is None or conn.lost or conn.transport.is_closing():
            return
        conn.write(data)
        self.counters.control_bytes_out += len(data)
        self.counters.control_writes += 1
        if conn.write_buffer_size() > MAX_WRITE_BUFFER:
            self.counters.slow_readers += 1
            log_ctl.info("closing a connection that does not read conn=%d", conn_id)
            conn.abort()

    def _on_event(self, event: ev.ServerEvent, now: float) -> None:
        core, relay = self._core, self._relay
        assert core is not None and relay is not None
        if isinstance(event, ev.VoiceFromTunnel):
            self._send_udp(relay.tunnel_received(event.sender_id, event.datagram, now))
        elif isinstance(event, ev.SessionAuthenticated):
            self._on_login(event)
        elif isinstance(event, ev.SessionClosed):
            if event.sender_id is not None:
                relay.remove_session(event.sender_id)
                if self._pool is not None:
                    self._pool.remove_session(event.sender_id)
                self._by_sender.pop(event.sender_id, None)
                self._ik_of.pop(event.sender_id, None)
            conn = self._conns.get(event.conn_id)
            if conn is not None:
                conn.closing = True
                self._to_close.append(conn)
            log_ctl.info(
                "session closed conn=%d sender=%s reason=%s code=%d message=%r",
                event.conn_id,
                event.sender_id,
                event.reason.value,
                event.code,
                event.message,
            )
        elif isinstance(event, ev.ClusterRoster):
            if self._cluster is not None:
                self._cluster.publish_roster(event.message)
        elif isinstance(event, ev.ClusterKeyDist):
            if self._cluster is not None:
                self._cluster.publish_keydist(
                    event.node, event.recipient, event.sender_id, event.channel_id, event.blob
                )
        elif isinstance(event, ev.ClusterText):
            if self._cluster is not None:
                self._cluster.publish_text(event.sender_id, event.channel_id, event.blob)
        elif isinstance(event, ev.ClusterReplaced):
            if self._cluster is not None:
                self._cluster.publish_replaced(event.node, event.sender_id)
        elif isinstance(event, ev.ClusterLossReport):
            if self._cluster is not None:
                self._cluster.publish_loss(event.node, event.to, event.message)
        elif isinstance(event, ev.ClusterAdmin):
            if self._cluster is not None:
                self._cluster.publish_admin(
                    event.node,
                    int(event.action),
                    event.by,
                    event.by_name,
                    event.target,
                    event.channel_id,
                    event.reason,
                )
        elif isinstance(event, ev.VoiceTransportChanged):
            relay.set_tunnel(event.sender_id, event.tunnel)
            if self._pool is not None:
                self._pool.set_tunnel(event.sender_id, event.tunnel)
            log_ctl.debug("voice transport sender=%d tunnel=%s", event.sender_id, event.tunnel)
        elif isinstance(event, ev.AdminActionHandled):
            self._log_admin(event)
        elif isinstance(event, ev.BanRequested):
            self._persist_ban(event)
        elif isinstance(event, ev.ChannelAdminHandled):
            outcome = "done" if event.code == 0 else f"refused code={event.code}"
            log_ctl.info(
                "channel %s by sender=%d name=%r channel=%s channel_name=%r: %s",
                event.op.name.lower(),
                event.sender_id,
                event.name,
                event.channel_id,
                event.channel_name,
                outcome,
            )
        elif isinstance(event, ev.ChannelSaved | ev.ChannelDeleted):
            self._persist_channel(event)
        elif isinstance(event, ev.AdminGranted):
            try:
                self.store.add_admin(event.ik_pub, label=event.name, reason="first user")
            except sqlite3.Error as exc:
                log.error("cannot store an administrator name=%r error=%r", event.name, exc)
                return
            if self._cluster is not None:  # pragma: no cover - the rule is off in a cluster
                self._spawn(self._cluster.grant_admin(event.ik_pub))
            log_ctl.info("first user made administrator name=%r", event.name)

    def _persist_channel(self, event: ev.ChannelSaved | ev.ChannelDeleted) -> None:
        """An administrator's channel change: into the store, so it is there after a restart.
        A new password is stored as a scrypt hash (a ~50 ms hash on the loop: admin requests
        are rare and count against the sender's message rate)."""
        try:
            if isinstance(event, ev.ChannelDeleted):
                self.store.delete_channel(event.channel_id)
                if self._cluster is not None:
                    self._spawn(self._cluster.delete_channel(event.channel_id))
                return
            name = self._configured_names.get(event.parent)
            record = StoredChannel(
                id=event.channel_id,
                parent=event.parent if name is None else None,
                parent_name=name,
                name=event.name,
                description=event.description,
                password_hash=None
                if event.new_password is None
                else hash_password(event.new_password),
                max_members=event.max_members,
                speakers=None if event.speakers is None else tuple(sorted(event.speakers)),
            )
            keep = event.password_protected and event.new_password is None
            self.store.save_channel(record, keep_password=keep)
            if self._cluster is not None:
                if keep:  # the stored hash, for the other nodes
                    record = next(c for c in self.store.channels() if c.id == record.id)
                self._spawn(self._share_channel(record))
        except sqlite3.Error as exc:
            log.error("cannot store a channel change id=%d error=%r", event.channel_id, exc)

    async def _share_channel(self, record: StoredChannel) -> None:
        link = self._cluster
        assert link is not None
        try:
            await link.put_channel(_shared(record))
            if link.first_channel_id <= record.id <= link.last_channel_id:
                await link.note_channel_id(record.id)
        except Exception as exc:
            log.error("cannot share a channel change id=%d error=%r", record.id, exc)

    def _log_admin(self, event: ev.AdminActionHandled) -> None:
        """One line per admin request: who, what, on whom; the outcome (never keys)."""
        outcome = "done" if event.code == 0 else f"refused code={event.code}"
        log_ctl.info(
            "admin %s by sender=%d name=%r target=%d target_name=%r channel=%s reason=%r: %s",
            event.action.name.lower(),
            event.sender_id,
            event.name,
            event.target,
            event.target_name,
            event.channel_id,
            event.reason,
            outcome,
        )

    def _persist_ban(self, event: ev.BanRequested) -> None:
        """An admin's ban: into the store, so later logins (also after a restart) are refused
        like those banned with ``--ban``. The core has already removed the sessions."""
        reason = f"by {event.by}: {event.reason}" if event.reason else f"by {event.by}"
        try:
            self.store.ban(event.ik_pub, label=event.name, reason=reason)
        except sqlite3.Error as exc:
            log.error("cannot store a ban name=%r error=%r", event.name, exc)
            return
        log_ctl.info("ban stored name=%r by=%r", event.name, event.by)
        if self._cluster is not None:
            self._spawn(self._cluster.ban(event.ik_pub, reason))

    def _on_login(self, event: ev.SessionAuthenticated) -> None:
        core, relay = self._core, self._relay
        assert core is not None and relay is not None
        self.counters.logins += 1
        relay.add_session(event.sender_id, event.hop_secret)
        if self._pool is not None:
            self._pool.add_session(event.sender_id, event.hop_secret)
        self._by_sender[event.sender_id] = event.conn_id
        conn = self._conns.get(event.conn_id)
        if conn is not None:
            conn.sender_id = event.sender_id
        log_ctl.info("login conn=%d sender=%d name=%r", event.conn_id, event.sender_id, event.name)
        key = name_key(event.name)  # the core binds names by account key
        if key not in self._persisted_names and core.name_bindings.get(key) == event.ik_pub:
            self.store.add_binding(key, event.ik_pub)
            self._persisted_names.add(key)
            log_ctl.info("name bound name=%r", event.name)
        if self._cluster is not None and self._cluster.names.get(key) != event.ik_pub:
            self._spawn(self._bind_cluster_name(event.sender_id, key, event.ik_pub))
        self._ik_of[event.sender_id] = event.ik_pub

    def _login_banned(self, ik_pub: bytes) -> bool:
        """The core asks this inside every login (after the signature check, before anything
        is sent): the store is read each time, so a ``--ban`` from another process counts at
        once. A store that cannot be read lets the login through (the ban sweep retries)."""
        try:
            banned = self.store.is_banned(ik_pub)
        except sqlite3.Error as exc:
            log.warning("cannot read bans error=%r", exc)
            banned = False
        if self._cluster is not None and ik_pub in self._cluster.bans:
            banned = True
        if banned:
            self.counters.bans_enforced += 1
            log_ctl.info("banned identity refused at login")
        return banned

    def _kick_banned(self, sender_id: int) -> None:
        core = self._core
        assert core is not None
        self.counters.bans_enforced += 1
        log_ctl.info("banned identity removed sender=%d", sender_id)
        core.kick(sender_id, "banned from this server")

    def _ban_sweep(self) -> None:
        """Bans are written to the store by ``voipclient-server --ban`` (another process):
        remove connected users whose identity key is banned now."""
        loop = self._loop
        assert loop is not None
        if self._stopping:
            return
        self._ban_sweep_once()
        self._ban_handle = loop.call_later(BAN_SWEEP_INTERVAL, self._ban_sweep)

    def _ban_sweep_once(self) -> None:
        if self._stopping:
            return
        try:
            banned = {ban.ik_pub for ban in self.store.bans()}
        except sqlite3.Error as exc:  # a locked or broken database must not stop the relay
            log.warning("cannot read bans error=%r", exc)
            banned = set()
        if self._cluster is not None:
            banned |= self._cluster.bans
        hits = [sid for sid, ik in self._ik_of.items() if ik in banned]
        for sender_id in hits:
            self._kick_banned(sender_id)
        if hits:
            self._pump()

    # -- timers ----------------------------------------------------------------------------------

    def _schedule_timer(self) -> None:
        core, loop = self._core, self._loop
        assert core is not None and loop is not None
        horizon = loop.time() + core.min_timeout
        if self._timer is not None and self._timer_at <= horizon:
            # Deadlines are never set closer than min_timeout, so nothing can be due before the
            # pending timer: skip get_timer(), which visits every session.
            return
        when = core.get_timer()
        if when is None:
            return  # a pending timer may fire early: handle_timer is safe to call early
        # Never further than the horizon, so that every later call until it fires takes the
        # early return above: get_timer() and handle_timer() then visit the sessions once per
        # min_timeout, not once per control message (10 % of the relay's CPU at 500 sessions).
        when = min(when, horizon)
        if self._timer is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        core, loop = self._core, self._loop
        assert core is not None and loop is not None
        self._timer = None
        self._timer_at = float("inf")
        core.handle_timer(loop.time())
        self._pump()

    # -- UDP -------------------------------------------------------------------------------------

    def _udp_readable(self) -> None:
        sock, relay, loop = self._udp_sock, self._relay, self._loop
        assert relay is not None and loop is not None
        if sock is None:
            return
        if self._native_voice is not None:
            drain_native(sock, relay, self._native_voice, loop.time(), self.counters, UDP_BATCH)
        else:
            drain(
                sock,
                relay.datagram_received,
                loop.time(),
                self._batch,
                self.counters,
                UDP_BATCH,
                UDP_RECV_SIZE,
            )
        self._deliver_tunnel()

    def _send_udp(self, datagrams: list[tuple[Addr, bytes]]) -> None:
        if not datagrams:
            return
        if self._udp_transport is not None:
            for dst, out in datagrams:
                self._udp_transport.sendto(out, dst)
            return
        if self._udp_sock is not None:
            send_now(self._udp_sock, datagrams, self.counters)

    def _deliver_tunnel(self) -> None:
        """Voice that UDP speakers sent to tunnel-mode listeners: write just those connections."""
        core, relay = self._core, self._relay
        assert core is not None and relay is not None
        self._tunnel_to_connections(relay.take_tunnel())
        if self._cluster is not None:
            self._publish_voice(relay.take_remote())

    def _tunnel_to_connections(self, tunnel: list[tuple[int, bytes]]) -> None:
        """``(listener, datagram)`` copies for tunnel-mode listeners: write those connections."""
        core = self._core
        assert core is not None
        if not tunnel:
            return
        touched: set[int] = set()
        for sender_id, datagram in tunnel:
            conn_id = self._by_sender.get(sender_id)
            if conn_id is not None and core.send_voice_tunnel(conn_id, datagram):
                touched.add(conn_id)
        for conn_id in touched:
            self._write(conn_id, core.data_to_send(conn_id))

    # -- stats -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """The counters of the JSON stats line (documented in docs/server.md)."""
        core, relay, loop = self._core, self._relay, self._loop
        assert core is not None and relay is not None and loop is not None
        r = relay.stats()
        c = self.counters
        b = self._batch
        drops = {reason.name.lower(): n for reason, n in relay.drops().items()}
        send_dropped = c.udp_send_dropped + (b.dropped if b is not None else 0)
        send_errors = c.udp_send_errors + (b.errors if b is not None else 0)
        send_calls = b.calls if b is not None else r["copies_udp"] + r["hop_replies"]
        workers: dict[str, object] = {"count": 1}
        if self._pool is not None:
            w, wdrops = self._pool.stats()
            for key in ("packets_in", "packets_out", "bytes_in", "bytes_out", "forwarded"):
                r[key] += w.get(key, 0)
            for key in ("copies_udp", "copies_tunnel", "unreachable", "hop_replies"):
                r[key] += w.get(key, 0)
            for reason, n in zip(RelayDrop, wdrops, strict=False):
                drops[reason.name.lower()] += n
            send_dropped += w.get("send_dropped", 0)
            send_errors += w.get("send_errors", 0)
            send_calls = w.get("send_calls", 0)
            workers = {
                "count": self._pool.size,
                "restarts": self._pool.restarts,
                "each": self._pool.per_worker(),
            }
        return {
            "type": "stats",
            "time": round(time.time(), 3),
            "uptime_s": round(loop.time() - self._started_at, 3),
            "connections": len(self._conns),
            "handshaking": len(self._handshaking),
            "sessions": r["sessions"],
            "udp_validated": r["validated"],
            "channels": len(core.roster.channels),
            "packets_in": r["packets_in"],
            "packets_out": r["packets_out"],
            "bytes_in": r["bytes_in"],
            "bytes_out": r["bytes_out"],
            "forwarded": r["forwarded"],
            "copies_udp": r["copies_udp"],
            "copies_tunnel": r["copies_tunnel"],
            "unreachable": r["unreachable"],
            "hop_replies": r["hop_replies"],
            "drops": drops,
            "loss_reports": core.loss_report_counts,
            "udp_send_dropped": send_dropped,
            "udp_send_errors": send_errors,
            "udp_send_calls": send_calls,
            "udp_workers": workers,
            "cluster": self._cluster_stats(),
            "control_bytes_in": c.control_bytes_in,
            "control_bytes_out": c.control_bytes_out,
            "control_writes": c.control_writes,
            "tcp_accepted": c.tcp_accepted,
            "tls_failed": c.tls_failed,
            "logins": c.logins,
            "refused": {
                "handshakes": c.refused_handshakes,
                "queued_handshakes": c.queued_handshakes,
                "server_full": c.refused_sessions,
                "per_ip": c.refused_per_ip,
                "slow_readers": c.slow_readers,
                "banned": c.bans_enforced,
            },
        }

    def _cluster_stats(self) -> dict[str, object] | None:
        link, relay = self._cluster, self._relay
        if link is None or relay is None:
            return None
        r = relay.stats()
        return {
            "node": link.node,
            "slot": link.slot,
            "nodes": [n.node for n in link.nodes()],
            "remote_users": len(self._core.remote_users()) if self._core is not None else 0,
            "to_cluster": r["to_cluster"],
            "from_cluster": r["from_cluster"],
            **link.counters,
        }

    def _emit_stats(self) -> None:
        loop = self._loop
        assert loop is not None
        if self._stopping:
            return
        try:
            self._stats_out.write(json.dumps(self.stats(), separators=(",", ":")) + "\n")
            self._stats_out.flush()
        except (OSError, ValueError) as exc:  # stdout closed: keep serving
            log.warning("cannot write stats error=%r", exc)
        self._stats_handle = loop.call_later(self.settings.stats_interval, self._emit_stats)


class _UdpFallback(asyncio.DatagramProtocol):
    """For event loops without ``add_reader``: one callback per datagram."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        server = self.server
        relay, loop = server._relay, server._loop
        if relay is None or loop is None or self.transport is None:
            return
        peer: Addr = (str(addr[0]), int(addr[1]))
        for dst, out in relay.datagram_received(data, peer, loop.time()):
            self.transport.sendto(out, dst)
        server._deliver_tunnel()

    def error_received(self, exc: Exception) -> None:
        self.server.counters.udp_recv_errors += 1
