"""A small real client for the server's integration tests: a thin asyncio driver of the client
core users run, :class:`~voipclient.net.connection.ClientConnection` (loopback only), through the
shared asyncio adapter :class:`~voipclient.client.asyncio_driver.AsyncioConnection`.

The core decides everything: the pin verdict (the SPKI pin of the presented certificate against
the one from the start line, before any application byte), the login, the end-to-end layer
(session keys, KeyDists, sealing), the UDP hop handshake (BIND → CHALLENGE → BIND_CONFIRM →
BIND_OK) and pings, and whether voice goes over UDP or the TLS tunnel. The adapter owns the I/O
(a real TLS 1.3 connection, a real UDP socket read from the event loop's reader callback, one
timer re-armed from ``get_timer()``; nothing polls).

On top of that it records what the tests assert on (every event, every voice frame heard and its
route) and offers forging helpers for datagrams the core would never send, keyed with hop keys
derived from ``LoggedIn.hop_secret`` (which passes through as an event). It does not reconnect:
a test client is one connection, so when the core schedules a reconnect the adapter closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from voipclient.client.asyncio_driver import AsyncioConnection, client_ssl_context
from voipclient.crypto.hop import HopMac
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.media import PTYPE_VOICE, SenderKey, VoiceFrame
from voipclient.crypto.replay import ReplayWindow
from voipclient.net import connection as cn
from voipclient.net import e2ee, hopctl
from voipclient.net import events as ev
from voipclient.net import supervisor as sv
from voipclient.net.client import ClientSession, LossReportLike
from voipclient.net.states import ConnectionState

__all__ = ["DEFAULT_TIMEOUT", "Heard", "PinMismatch", "TestClient", "client_ssl_context", "payload"]

DEFAULT_TIMEOUT = 10.0

#: wait_for() calls in progress; resolved whenever any client's core produced something.
_waiters: set[asyncio.Future[None]] = set()


def _wake_waiters() -> None:
    for fut in _waiters:
        if not fut.done():
            fut.set_result(None)
    _waiters.clear()


class PinMismatch(Exception):
    """The server presented a key other than the pinned one (the core refused it)."""


def payload(frame_no: int, tag: bytes = b"") -> bytes:
    """A voice payload: frame_no (u32) then some bytes standing in for Opus."""
    return struct.pack(">I", frame_no) + tag + bytes(40)


@dataclass
class Heard:
    """One voice frame the core opened, and the path it came by."""

    frame: VoiceFrame
    via: str  # VoiceRoute's value: "udp", "tunnel" or "released" (opened once its key came)


@dataclass(eq=False)
class TestClient:
    """One user. ``await TestClient.connect(...)`` returns it logged in."""

    __test__ = False  # not a pytest class

    name: str
    host: str
    port: int
    pin: str
    identity: IdentityKey = field(default_factory=IdentityKey.generate)
    password: str | None = None
    local_ip: str | None = None
    #: Let the core reconnect (to its server, or another node of its cluster) after a loss.
    reconnect: bool = False

    events: list[object] = field(default_factory=list)
    heard: list[Heard] = field(default_factory=list)
    closed: ev.ConnectionClosed | None = None
    #: (client_time_ms, datagrams the relay received from us) of the relay's PONGs (udp_ping).
    pongs: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.conn = cn.ClientConnection(
            self.name, self.identity, wall_clock=time.time, password=self.password
        )
        self.io = AsyncioConnection(
            self.conn,
            on_event=self._on_event,
            on_pumped=_wake_waiters,
            on_datagram=self._tap_pong,
            ssl_context=client_ssl_context(),
            loop=self._loop,
            local_ip=self.local_ip,
            connect_timeout=DEFAULT_TIMEOUT,
        )
        self._sid: int | None = None
        # Forging helpers and the PONG tap: hop keys of the current login, from LoggedIn.
        self._c2s: HopMac | None = None
        self._s2c: HopMac | None = None
        self._tap_window = ReplayWindow()
        self._pongs_from_ms = 0

    # -- connecting ------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls, host: str, port: int, pin: str, name: str, *, login: bool = True, **kw: Any
    ) -> TestClient:
        """Connect (the core checks ``pin`` before any application byte: PinMismatch) and, with
        ``login``, wait until logged in (ConnectionError if the server refuses the login)."""
        client = cls(name, host, port, pin, **kw)
        client._call(lambda now: client.conn.connect(host, port, pin, now))
        await client.wait_for(
            lambda: client.conn.state is not ConnectionState.CONNECTING, what="TLS handshake"
        )
        if client.conn.state is ConnectionState.REFUSED:
            await client.close()
            raise PinMismatch(client.conn.detail)
        if client.io.connect_error is not None:
            await client.close()
            raise ConnectionError(f"{name}: {client.io.connect_error!r}")
        if login:
            await client.wait_for(
                lambda: client.sid is not None or client.closed is not None, what="login"
            )
            if client.sid is None:
                await client.close()
                raise ConnectionError(f"{name}: the server refused the login: {client.closed}")
        return client

    @property
    def udp_errors(self) -> int:
        """Datagrams the UDP socket could not send or receive."""
        return self.io.udp_errors

    @property
    def transport_closed(self) -> bool:
        """A TLS connection of ours was closed or lost."""
        return self.io.transport_closed

    @property
    def tls_version(self) -> str | None:
        """The TLS version of the latest handshake."""
        return self.io.tls_version

    @property
    def sid(self) -> int | None:
        """Our sender id once logged in (it stays after the connection closed)."""
        return self._sid

    @property
    def session(self) -> ClientSession:
        """The core's control session, for inspection (roster, hop secret)."""
        session = self.conn.session
        assert session is not None, f"{self.name}: no session (no TLS, or the pin was refused)"
        return session

    @property
    def secure(self) -> e2ee.SecureSession | None:
        """The core's E2E layer, for inspection."""
        return self.conn.secure

    # -- driving the core ------------------------------------------------------------------------

    def _call(self, action: Callable[[float], object]) -> None:
        """Hand something to the core at the loop's clock, then carry out what it asks."""
        self.io.call(action)

    def _on_event(self, event: cn.Event) -> None:
        self.events.append(event)
        if isinstance(event, cn.VoiceReceived):
            self.heard.append(Heard(event.frame, event.route.value))
        elif isinstance(event, ev.LoggedIn):
            self._sid = event.sender_id
            macs = self.conn.hop_macs  # the core's, derived once per login
            assert macs is not None
            self._c2s, self._s2c = macs
            self._tap_window = ReplayWindow()
        elif isinstance(event, ev.ConnectionClosed):
            self.closed = event
        elif isinstance(event, sv.ReconnectScheduled) and not self.reconnect:
            # One connection per test client: no reconnect behind the test's back.
            self.conn.close(self._loop.time())

    # -- UDP -------------------------------------------------------------------------------------

    def _tap_pong(self, data: bytes) -> None:
        """A read-only look at the relay's PONGs (with our own copy of the s2c key and window);
        the datagram still goes to the core unchanged."""
        s2c = self._s2c
        if s2c is None or len(data) != hopctl.HOP_CONTROL_LEN or data[1] != hopctl.PTYPE_PONG:
            return
        msg = hopctl.open_hop_control(
            data, s2c, self._tap_window, ptypes=frozenset((hopctl.PTYPE_PONG,))
        )
        if msg is not None:
            pong = hopctl.decode_pong(msg.body)
            if pong[0] >= self._pongs_from_ms:
                self.pongs.append(pong)

    async def bind_udp(self) -> None:
        """Until the core's hop handshake validated our UDP address (it starts by itself at
        login); TimeoutError if the core fell back to the tunnel instead."""
        tunnel = (sv.VoicePath.TUNNEL, sv.VoicePath.TUNNEL_ONLY)
        await self.wait_for(
            lambda: self.conn.udp_bound or self.conn.supervisor.voice_path in tunnel,
            what="UDP bind",
        )
        if not self.conn.udp_bound:
            raise TimeoutError(f"{self.name}: UDP bind got no BIND_OK")

    def udp_ping(self) -> None:
        """The core PINGs the relay every ``udp_ping_interval`` by itself: from now on
        :attr:`pongs` holds only PONGs answering PINGs sent after this call."""
        self.pongs.clear()
        self._pongs_from_ms = int(self._loop.time() * 1000)

    @property
    def udp_voice_datagrams(self) -> int:
        """Voice datagrams that arrived over UDP (opened or not)."""
        return self.conn.datagrams_in - self.conn.tunnel_datagrams_in

    @property
    def tunnel_voice_datagrams(self) -> int:
        """Voice datagrams that arrived through the TLS tunnel (opened or not)."""
        return self.conn.tunnel_datagrams_in

    # -- waiting ---------------------------------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT, what: str = ""
    ) -> None:
        """Until ``predicate()`` holds (checked whenever any client's core produced something)."""
        deadline = self._loop.time() + timeout
        while not predicate():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: timed out waiting for {what or predicate}")
            fut: asyncio.Future[None] = self._loop.create_future()
            _waiters.add(fut)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, remaining)
            finally:
                _waiters.discard(fut)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def has_key_from(self, sender_id: int, channel_id: int, min_gen: int = 0) -> bool:
        return any(
            k.sender_id == sender_id and k.channel_id == channel_id and k.gen >= min_gen
            for k in self.of(e2ee.KeyAccepted)
        )

    def newest_gen_from(self, sender_id: int, channel_id: int) -> int:
        gens = [
            k.gen
            for k in self.of(e2ee.KeyAccepted)
            if k.sender_id == sender_id and k.channel_id == channel_id
        ]
        return max(gens, default=-1)

    def heard_from(self, sender_id: int, channel_id: int | None = None) -> list[Heard]:
        return [
            h
            for h in self.heard
            if h.frame.sender_id == sender_id
            and (channel_id is None or h.frame.channel_id == channel_id)
        ]

    def is_member(self, channel_id: int) -> bool:
        sid = self.sid
        return sid is not None and channel_id in self.session.roster.channels_of(sid)

    # -- intents (through the core) --------------------------------------------------------------

    def join(self, channel_id: int, password: str | None = None) -> None:
        self._call(lambda now: self.conn.join(channel_id, password, now))

    def leave(self, channel_id: int) -> None:
        self._call(lambda now: self.conn.leave(channel_id, now))

    def admin(
        self, action: str, target: int, channel_id: int | None = None, reason: str = ""
    ) -> None:
        self._call(
            lambda now: self.conn.admin(action, target, now, channel_id=channel_id, reason=reason)
        )

    def send_text(self, channel_id: int, text: str) -> None:
        self._call(lambda now: self.conn.send_text(channel_id, text, now))

    def send_loss_reports(self, reports: Iterable[LossReportLike]) -> None:
        """Loss/jitter reports about speakers (``LossReport``-like objects)."""
        self._call(lambda now: self.conn.send_loss_reports(reports, now))

    def set_tunnel(self, tunnel: bool) -> None:
        """The "always use the TLS tunnel" setting: voice both ways through TLS (UDP "blocked")."""
        self._call(lambda now: self.conn.set_force_tunnel(tunnel, now))

    def speak(self, channels: Sequence[int], data: bytes, *, tunnel: bool = False) -> list[bytes]:
        """The core seals ``data`` for each channel and sends it by the path it chose, which
        must be the one the test expects (UDP, or the tunnel with ``tunnel``). Returns the
        datagrams that went over UDP."""
        conn = self.conn
        on_udp = conn.udp_bound and conn.transport is cn.VoiceTransport.UDP
        if on_udp == tunnel:
            raise AssertionError(
                f"{self.name}: the core sends voice over {'UDP' if on_udp else 'the tunnel'}"
            )
        self.io.pump()  # nothing else queued: what follows is this voice only
        conn.send_voice(channels, (), data, self._loop.time())
        sent = conn.datagrams_to_send()
        for datagram in sent:
            self.io.send_datagram(datagram)
        self.io.pump()
        return sent

    # -- forging (datagrams the core would not send) ---------------------------------------------

    def write_raw(self, data: bytes) -> None:
        """Bytes on the TLS connection, bypassing the core (garbage tests)."""
        transport = self.io.tls_transport
        assert transport is not None
        transport.write(data)

    def send_udp(self, datagram: bytes) -> None:
        """A datagram of our own making on the core's UDP socket."""
        assert self.io.has_udp, f"{self.name}: no UDP socket"
        self.io.send_datagram(datagram)

    def seal(self, channels: Sequence[int], data: bytes) -> list[bytes]:
        """What the core seals for ``channels`` (E2E + c2s hop MAC) and would send over UDP,
        taken before it leaves: nothing is sent. Channels without a sender key of ours (e.g.
        listen-only) give nothing."""
        conn = self.conn
        assert conn.udp_bound and conn.transport is cn.VoiceTransport.UDP, "seal() needs UDP"
        self.io.pump()  # nothing else queued: what follows is this voice only
        conn.send_voice(channels, (), data, self._loop.time())
        out = conn.datagrams_to_send()
        self.io.pump()
        return out

    def forge(self, channel_id: int, data: bytes, *, sender_id: int | None = None) -> bytes:
        """A datagram sealed with a throw-away sender key of our own (for channels where we
        hold none, e.g. listen-only) under our c2s hop key; ``sender_id`` spoofs the header."""
        assert self._c2s is not None and self.sid is not None
        key = SenderKey(channel_id, sender_id if sender_id is not None else self.sid)
        key.new_generation(0, os.urandom(64))
        return self._c2s.append(key.seal(PTYPE_VOICE, data))

    def remac(self, body_and_mac: bytes) -> bytes:
        """Re-MAC a datagram's first 36+n bytes under our c2s key."""
        assert self._c2s is not None
        return self._c2s.append(body_and_mac[:-10])

    # -- ending ----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Say Bye (if still connected: the core writes it with its CloseTransport), wait up to
        2 s for the server to close its end, and stop the timer and sockets."""
        await self.io.close()
