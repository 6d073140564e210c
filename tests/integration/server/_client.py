"""A small real client for the server's integration tests (asyncio, loopback only).

It speaks real TLS 1.3 and checks the server's key against the pin from the start line (no CA:
the SPKI hash of the presented certificate must equal the pin, or it closes before writing a
byte), drives ``ClientSession`` + ``SecureSession`` (the real end-to-end layer: session keys,
KeyDists, sealing), binds its UDP address with the hop-control handshake
(BIND → CHALLENGE → BIND_CONFIRM → BIND_OK) and sends/receives voice over real UDP or over the
TLS tunnel. Everything it hears is recorded for the tests to assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voipclient.bot import client_ssl_context
from voipclient.crypto.hop import HopMac, derive_hop_keys
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.media import PTYPE_VOICE, SenderKey, VoiceFrame
from voipclient.crypto.replay import ReplayWindow
from voipclient.crypto.tofu import TofuStore
from voipclient.net import e2ee, hopctl
from voipclient.net import events as ev
from voipclient.net.client import ClientSession
from voipclient.server.tls import pin_of_der_certificate

DEFAULT_TIMEOUT = 10.0


class PinMismatch(Exception):
    """The server presented a key other than the pinned one."""


def payload(frame_no: int, tag: bytes = b"") -> bytes:
    """A voice payload: frame_no (u32) then some bytes standing in for Opus."""
    return struct.pack(">I", frame_no) + tag + bytes(40)


@dataclass
class Heard:
    """One voice frame a client opened, and the path it came by."""

    frame: VoiceFrame
    via: str  # "udp", "tunnel" or "released" (opened once its KeyDist arrived)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: TestClient) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.owner._udp_datagram(data)

    def error_received(self, exc: Exception) -> None:
        self.owner.udp_errors += 1


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

    events: list[object] = field(default_factory=list)
    heard: list[Heard] = field(default_factory=list)
    udp_voice_datagrams: int = 0  # voice datagrams that arrived over UDP (opened or not)
    tunnel_voice_datagrams: int = 0
    udp_errors: int = 0
    transport_closed: bool = False
    closed: ev.ConnectionClosed | None = None

    def __post_init__(self) -> None:
        self.session = ClientSession(
            self.name, self.identity.public_bytes(), self.identity.sign, self.password
        )
        self.secure = e2ee.SecureSession(
            self.session, self.identity, self.name, TofuStore(), self.pin, wall_clock=time.time
        )
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._c2s: HopMac | None = None
        self._s2c: HopMac | None = None
        self._hop_seq = 0
        self._hop_window = ReplayWindow()
        self.udp_bound = asyncio.Event()
        self.pongs: list[tuple[int, int]] = []

    # -- connecting ------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls, host: str, port: int, pin: str, name: str, *, login: bool = True, **kw: Any
    ) -> TestClient:
        client = cls(name, host, port, pin, **kw)
        await client.open_tls()
        client.session.start(client._loop.time())
        client._flush()
        client._tasks.append(asyncio.ensure_future(client._read_loop()))
        client._tasks.append(asyncio.ensure_future(client._tick_loop()))
        if login:
            await client.wait_for(lambda: client.sid is not None, what="login")
        return client

    async def open_tls(self) -> None:
        local = (self.local_ip, 0) if self.local_ip else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host, self.port, ssl=client_ssl_context(), local_addr=local
            ),
            DEFAULT_TIMEOUT,
        )
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        if der is None or pin_of_der_certificate(der) != self.pin:
            writer.close()  # before any application byte
            raise PinMismatch(f"server key does not match {self.pin}")
        self.tls_version = ssl_object.version()
        self._reader, self._writer = reader, writer

    @property
    def sid(self) -> int | None:
        """Our sender id once the E2E layer saw LoggedIn."""
        return self.secure.sender_id

    # -- the control loop ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                self._feed(self.session.receive_data(data, self._loop.time()))
        except (ConnectionError, ssl.SSLError):
            pass
        self._feed(self.session.connection_lost(self._loop.time()))
        self.transport_closed = True
        self._changed.set()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            events = self.session.handle_timer(self._loop.time())
            self._feed(events)
            self._feed_secure(self.secure.tick(self._loop.time()))
            self._flush()

    def _feed(self, events: list[ev.ClientEvent]) -> None:
        if not events:
            return
        self.events.extend(events)
        for event in events:
            if isinstance(event, ev.LoggedIn):
                k_c2s, k_s2c = derive_hop_keys(event.hop_secret)
                self._c2s, self._s2c = HopMac(k_c2s), HopMac(k_s2c)
            elif isinstance(event, ev.VoiceTunnelReceived):
                self.tunnel_voice_datagrams += 1
                frame = self.secure.open_voice(event.datagram, self._loop.time())
                if frame is not None:
                    self.heard.append(Heard(frame, "tunnel"))
            elif isinstance(event, ev.ConnectionClosed):
                self.closed = event
        self._feed_secure(self.secure.handle_events(events, self._loop.time()))
        self._flush()

    def _feed_secure(self, events: list[e2ee.SecureEvent]) -> None:
        if not events:
            return
        self.events.extend(events)
        for event in events:
            if isinstance(event, e2ee.VoiceReleased):
                self.heard.append(Heard(event.frame, "released"))
        self._changed.set()

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT, what: str = ""
    ) -> None:
        """Until ``predicate()`` holds (checked whenever something arrives)."""
        deadline = self._loop.time() + timeout
        while not predicate():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: timed out waiting for {what or predicate}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))

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

    # -- intents ---------------------------------------------------------------------------------

    def join(self, channel_id: int, password: str | None = None) -> None:
        self.session.join(channel_id, password)
        self._flush()

    def leave(self, channel_id: int) -> None:
        self.session.leave(channel_id)
        self._flush()

    def admin(
        self, action: str, target: int, channel_id: int | None = None, reason: str = ""
    ) -> None:
        self.session.admin(action, target, channel_id, reason)
        self._flush()

    def send_text(self, channel_id: int, text: str) -> None:
        self.secure.send_text(channel_id, text, self._loop.time())
        self._flush()

    def send_loss_reports(self, reports: list[Any]) -> None:
        """Loss/jitter reports about speakers (``LossReport``-like objects)."""
        self.session.send_loss_reports(reports)
        self._flush()

    def set_tunnel(self, tunnel: bool) -> None:
        self.session.set_voice_transport(tunnel)
        self._flush()

    def write_raw(self, data: bytes) -> None:
        """Bytes on the TLS connection, bypassing the session (garbage tests)."""
        assert self._writer is not None
        self._writer.write(data)

    def is_member(self, channel_id: int) -> bool:
        sid = self.sid
        return sid is not None and channel_id in self.session.roster.channels_of(sid)

    # -- UDP -------------------------------------------------------------------------------------

    async def bind_udp(self) -> None:
        """Open a UDP socket to the server and validate its address with the hop handshake."""
        local = (self.local_ip or "127.0.0.1", 0)
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=local, remote_addr=(self.host, self.port)
        )
        self._udp = transport
        assert self._c2s is not None and self.sid is not None
        for _ in range(3):
            self.send_udp(hopctl.encode_bind(self._c2s, self.sid, self._next_seq()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.udp_bound.wait(), 2.0)
                return
        raise TimeoutError(f"{self.name}: UDP bind got no BIND_OK")

    def _next_seq(self) -> int:
        seq = self._hop_seq
        self._hop_seq += 1
        return seq

    def send_udp(self, datagram: bytes) -> None:
        assert self._udp is not None
        self._udp.sendto(datagram)

    def udp_ping(self) -> None:
        assert self._c2s is not None and self.sid is not None
        ms = int(time.time() * 1000)
        self.send_udp(hopctl.encode_ping(self._c2s, self.sid, self._next_seq(), ms))

    def _udp_datagram(self, data: bytes) -> None:
        if len(data) == hopctl.HOP_CONTROL_LEN and data[1] in hopctl.S2C_PTYPES:
            assert self._s2c is not None and self._c2s is not None and self.sid is not None
            msg = hopctl.open_hop_control(
                data, self._s2c, self._hop_window, ptypes=hopctl.S2C_PTYPES
            )
            if msg is None:
                return
            if msg.ptype == hopctl.PTYPE_CHALLENGE:
                self.send_udp(
                    hopctl.encode_bind_confirm(self._c2s, self.sid, self._next_seq(), msg.body)
                )
            elif msg.ptype == hopctl.PTYPE_BIND_OK:
                self.udp_bound.set()
            elif msg.ptype == hopctl.PTYPE_PONG:
                self.pongs.append(hopctl.decode_pong(msg.body))
            self._changed.set()
            return
        self.udp_voice_datagrams += 1
        frame = self.secure.open_voice(data, self._loop.time())
        if frame is not None:
            self.heard.append(Heard(frame, "udp"))
        self._changed.set()

    # -- voice out -------------------------------------------------------------------------------

    def seal(self, channels: list[int], data: bytes) -> list[bytes]:
        """Seal one payload for each channel (E2E + c2s hop MAC), sending nothing."""
        out = self.secure.seal_voice(channels, data, self._loop.time())
        self._feed_secure(self.secure.flush(self._loop.time()))
        self._flush()
        return out

    def speak(self, channels: list[int], data: bytes, *, tunnel: bool = False) -> list[bytes]:
        """Seal and send over UDP (or the TLS tunnel); returns the datagrams sent."""
        datagrams = self.seal(channels, data)
        for d in datagrams:
            if tunnel:
                self.session.send_voice_tunnel(d)
            else:
                self.send_udp(d)
        self._flush()
        return datagrams

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
        """Say Bye (if still open), close the sockets, stop the tasks."""
        if self.closed is None and self._writer is not None and not self._writer.is_closing():
            self.session.close(now=self._loop.time())
            self._flush()
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: self.closed is not None, timeout=2.0, what="bye")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        if self._udp is not None:
            self._udp.close()
