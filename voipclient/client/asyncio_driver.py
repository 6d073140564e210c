"""An asyncio adapter of the pure client core, :class:`~voipclient.net.connection.ClientConnection`.

The core decides everything (pin verdict, login, E2E layer, UDP hop handshake, UDP ↔ tunnel,
reconnects); :class:`AsyncioConnection` only owns the I/O, as the module docstring of
``connection.py`` describes it: a real TLS 1.3 connection per ``OpenTransport`` (an asyncio
transport whose callbacks are tagged with the core's generation), a real UDP socket per
``OpenUdp`` (read from the event loop's reader callback) and one timer re-armed from
``get_timer()``; nothing polls.

Every call into the core goes through :meth:`AsyncioConnection.call` (or is followed by
:meth:`AsyncioConnection.pump`), which carries out what the core asks: events first (the transport
ones here, every one of them then handed to ``on_event``), then the TLS bytes, then the datagrams,
then the timer. The headless bot and the server's integration-test client both drive the core
through it and keep only what is their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from voipclient.net import connection as cn
from voipclient.net import supervisor as sv
from voipclient.net.pins import pin_of_der_certificate

__all__ = ["AsyncioConnection", "client_ssl_context"]

log = logging.getLogger("voipclient.client")


def client_ssl_context() -> ssl.SSLContext:
    """TLS 1.3 with no CA and no host name: the SPKI pin is the check (made before any
    application byte is written)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Tls(asyncio.Protocol):
    """The TLS connection of one ``OpenTransport``; every callback is tagged with its generation."""

    def __init__(self, owner: AsyncioConnection, generation: int) -> None:
        self.owner = owner
        self.generation = generation
        self.transport: asyncio.Transport | None = None
        self.closing = False  # CloseTransport came: the core is done with it
        self.lost: asyncio.Future[None] = owner.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closing:  # closed while the handshake was under way
            transport.abort()
            return
        self.owner._tls_up(self)

    def data_received(self, data: bytes) -> None:
        gen, conn = self.generation, self.owner.conn
        self.owner.call(lambda now: conn.receive_data(data, now, generation=gen))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.owner.transport_closed = True
        gen, conn = self.generation, self.owner.conn
        self.owner.call(lambda now: conn.connection_lost(now, generation=gen))


class AsyncioConnection:
    """Drives ``conn`` on ``loop``: owns its TLS transport, its UDP socket and its timer.

    ``on_event`` gets every event of the core (after the transport ones were carried out),
    ``on_pumped`` is called after each :meth:`pump` (to wake waiters), ``on_datagram`` sees each
    received datagram before the core does (read only). ``local_ip`` binds both sockets;
    ``udp_addr`` sends voice to that address instead of the TLS peer's (a test proxy).
    """

    def __init__(
        self,
        conn: cn.ClientConnection,
        *,
        on_event: Callable[[cn.Event], None],
        ssl_context: ssl.SSLContext | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        on_pumped: Callable[[], None] | None = None,
        on_datagram: Callable[[bytes], None] | None = None,
        local_ip: str | None = None,
        udp_addr: tuple[str, int] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.conn = conn
        self.loop = loop or asyncio.get_running_loop()
        self.ssl_context = ssl_context or client_ssl_context()
        self._on_event = on_event
        self._on_pumped = on_pumped
        self._on_datagram = on_datagram
        self.local_ip = local_ip
        self.udp_addr = udp_addr
        self.connect_timeout = connect_timeout
        self.udp_errors = 0
        self.transport_closed = False  # a TLS connection was lost (or closed)
        self.tls_version: str | None = None  # of the latest TLS handshake
        self.connect_error: BaseException | None = None  # the latest TLS connect failure
        self._tls: _Tls | None = None
        self._udp: socket.socket | None = None
        self._udp_generation = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- driving the core ------------------------------------------------------------------------

    def now(self) -> float:
        return self.loop.time()

    def call(self, action: Callable[[float], object]) -> None:
        """Hand something to the core at the loop's clock, then carry out what it asks."""
        action(self.loop.time())
        self.pump()

    def pump(self) -> None:
        """Events first, then the TLS bytes, then the datagrams, then the timer (in that order,
        as ``connection.py`` says)."""
        conn = self.conn
        while (event := conn.next_event()) is not None:
            if isinstance(event, cn.OpenTransport):
                self._open_tls(event)
            elif isinstance(event, cn.CloseTransport):
                self._close_transport(event)
            elif isinstance(event, cn.OpenUdp):
                self._open_udp(event)
            self._on_event(event)
        data = conn.data_to_send()
        if data:
            self._write(data)
        for datagram in conn.datagrams_to_send():
            self.send_datagram(datagram)
        self._rearm()
        if self._on_pumped is not None:
            self._on_pumped()

    def _rearm(self) -> None:
        due = self.conn.get_timer()
        timer = self._timer
        if timer is not None:
            if due is not None and timer.when() == due:
                return
            timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.call(self.conn.handle_timer)

    # -- TLS -------------------------------------------------------------------------------------

    @property
    def tls_transport(self) -> asyncio.Transport | None:
        """The current TLS transport (None before the handshake or after CloseTransport)."""
        proto = self._tls
        return None if proto is None else proto.transport

    def _open_tls(self, event: cn.OpenTransport) -> None:
        proto = _Tls(self, event.generation)
        self._tls = proto
        task = self.loop.create_task(self._connect_tls(proto, event.host, event.port))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_tls(self, proto: _Tls, host: str, port: int) -> None:
        local = (self.local_ip, 0) if self.local_ip else None
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: proto, host, port, ssl=self.ssl_context, local_addr=local
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.connect_error = exc
            why = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)
            gen, conn, kind = proto.generation, self.conn, classify_os_error(exc)
            self.call(lambda now: conn.transport_failed(why, now, generation=gen, kind=kind))

    def _tls_up(self, proto: _Tls) -> None:
        """The TLS handshake finished: hand the presented pin to the core for its verdict."""
        assert proto.transport is not None
        ssl_object = proto.transport.get_extra_info("ssl_object")
        self.tls_version = ssl_object.version()
        der = ssl_object.getpeercert(binary_form=True)
        presented = pin_of_der_certificate(der) if der else None
        gen, conn = proto.generation, self.conn
        self.call(lambda now: conn.transport_connected(presented, now, generation=gen))

    def _write(self, data: bytes) -> None:
        transport = self.tls_transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _close_transport(self, event: cn.CloseTransport) -> None:
        """TLS and UDP of ``event.generation`` are done: write the last bytes and close, or
        abort (a refused pin: nothing written, no close_notify)."""
        proto = self._tls
        if proto is not None and proto.generation == event.generation:
            self._tls = None
            proto.closing = True
            transport = proto.transport
            if transport is not None:
                if event.abort:
                    transport.abort()
                else:
                    if event.data:
                        transport.write(event.data)
                    transport.close()
        if self._udp_generation == event.generation:
            self._close_udp()

    # -- UDP -------------------------------------------------------------------------------------

    @property
    def has_udp(self) -> bool:
        return self._udp is not None

    def _open_udp(self, event: cn.OpenUdp) -> None:
        self._close_udp()
        proto = self._tls
        if proto is None or proto.transport is None or proto.generation != event.generation:
            return
        if self.udp_addr is not None:
            peer: tuple[str, int] = self.udp_addr  # a test proxy
        else:
            peer = (proto.transport.get_extra_info("peername")[0], event.port)
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.local_ip or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))  # noqa: S104
            sock.connect(peer)  # only the relay's datagrams come in
        except OSError as exc:
            sock.close()
            log.warning("cannot open a UDP socket: %s", exc)
            return  # no BIND_OK will come: the core moves voice to the tunnel
        self._udp, self._udp_generation = sock, event.generation
        self.loop.add_reader(sock.fileno(), self._udp_readable)

    def _close_udp(self) -> None:
        sock, self._udp = self._udp, None
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def _udp_readable(self) -> None:
        sock, gen = self._udp, self._udp_generation
        if sock is None:
            return
        for _ in range(64):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:  # e.g. ICMP port unreachable reported on the connected socket
                self.udp_errors += 1
                continue
            if self._on_datagram is not None:
                self._on_datagram(data)
            self.conn.datagram_received(data, self.loop.time(), generation=gen)
        self.pump()

    def send_datagram(self, datagram: bytes) -> None:
        """A datagram on the UDP socket (dropped when there is none)."""
        sock = self._udp
        if sock is None:
            return
        try:
            sock.send(datagram)
        except OSError:
            self.udp_errors += 1

    # -- ending ----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Say Bye (if still connected: the core writes it with its CloseTransport), wait up to
        2 s for the server to close its end, and stop the timer and sockets."""
        proto = self._tls
        self.call(self.conn.close)
        if proto is not None and proto.transport is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proto.lost), 2.0)
            if not proto.lost.done():
                proto.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close_udp()


def classify_os_error(exc: BaseException) -> sv.FailureKind:
    """The kind of a socket/TLS exception (asyncio adapters)."""
    if isinstance(exc, socket.gaierror):
        return sv.FailureKind.NAME_NOT_FOUND
    if isinstance(exc, ssl.SSLError):
        return sv.FailureKind.TLS
    if isinstance(exc, TimeoutError):
        return sv.FailureKind.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return sv.FailureKind.REFUSED
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return sv.FailureKind.NO_ROUTE
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
        return sv.FailureKind.CLOSED
    return sv.FailureKind.OTHER
