"""ClientConnections wired to a real ServerCore + RelayCore in memory, with a fake clock.

:class:`World` plays every adapter at once, the way ``server/app.py`` and a client adapter do it,
but with no socket: it carries out each client's ``OpenTransport`` / ``CloseTransport`` /
``OpenUdp``, finishes the "TLS handshake" by presenting a pin, moves control bytes between each
client and the ``ServerCore`` and UDP datagrams between each client and the ``RelayCore``
(either direction can be dropped per client), and wires the server's events to the relay
exactly as the server adapter does. Time only moves in :meth:`World.advance`, which fires the
timers the cores ask for (``get_timer``) and nothing else: no polling, no sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import random
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.tofu import TofuStore
from voipclient.net import events as ev
from voipclient.net import supervisor as sv
from voipclient.net.connection import (
    ClientConnection,
    CloseTransport,
    Event,
    OpenTransport,
    OpenUdp,
    VoiceReceived,
)
from voipclient.server.control import ServerConfig, ServerCore
from voipclient.server.relay import Addr, RelayCore

from ._harness import EventLog

E = TypeVar("E")

HOST = "relay.example"
PORT = 64738


def fake_pin(label: str) -> str:
    """A well-formed SPKI pin (``sha256/`` + base64 of 32 bytes) for ``label``."""
    return "sha256/" + base64.b64encode(hashlib.sha256(label.encode()).digest()).decode()


PIN = fake_pin("the server's key")
OTHER_PIN = fake_pin("someone else's key")

#: No jitter: backoff delays are exactly 1, 2, 4, … s.
# Retry also before the first login: the backoff tests start with an unreachable server (the
# product default stops at the first failure instead; tests/unit/net/test_supervisor.py).
SUPERVISOR = sv.SupervisorConfig(backoff_jitter=0.0, retry_unreached=True)


def seeded(seed: int) -> Any:
    return random.Random(seed).randbytes


@dataclass(eq=False)
class Client(EventLog):
    """One ClientConnection and what its adapter holds."""

    name: str
    identity: IdentityKey
    conn: ClientConnection
    #: The UDP source address the relay sees for this client.
    addr: Addr
    #: The pin the server presents to this client (None: no certificate).
    presented_pin: str | None = PIN
    #: Finish the TLS handshake by itself (False: the test calls transport_connected).
    auto_handshake: bool = True
    #: The server accepts TCP connections from this client (False: transport_failed).
    reachable: bool = True
    #: Nodes (host, port) that refuse this client's TCP connections (nothing listens there).
    down: set[tuple[str, int]] = field(default_factory=set)
    #: Nodes that accept the TCP connection and close it before the handshake (too busy).
    busy: set[tuple[str, int]] = field(default_factory=set)
    #: Drop every UDP datagram to / from the relay.
    drop_up: bool = False
    drop_down: bool = False
    events: list[Event] = field(default_factory=list)
    # adapter state: the transport of ``generation`` is server connection ``conn_id``
    generation: int | None = None
    conn_id: int | None = None
    handshake_pending: bool = False
    target: tuple[str, int] = (HOST, PORT)  # where the current transport goes
    udp_open: bool = False
    udp_datagrams_sent: int = 0  # that left the client (dropped or not)

    @property
    def heard(self) -> list[VoiceReceived]:
        return self.of(VoiceReceived)

    @property
    def sid(self) -> int:
        sid = self.conn.sender_id
        assert sid is not None, f"{self.name} is not logged in"
        return sid


class World:
    """One server (control core + UDP relay) and any number of ClientConnections."""

    def __init__(self, config: ServerConfig | None = None, *, start: float = 1000.0) -> None:
        self.now = start
        self.wall_offset = 1_700_000_000.0 - start  # a fake wall clock moving with ``now``
        self.config = config or ServerConfig(udp_port=PORT)
        self.server = ServerCore(self.config, rng=seeded(1))
        self.relay = RelayCore(self.server, rng=seeded(2))
        self.clients: list[Client] = []
        self.server_events: list[ev.ServerEvent] = []
        self.bytes_to_server: dict[int, int] = {}  # conn_id → application bytes received
        self._by_conn: dict[int, Client] = {}
        self._by_sender: dict[int, int] = {}  # sender id → conn_id
        self._server_closed: set[int] = set()
        self._next_conn = 1
        #: Where clients may connect: every node is this one server (a cluster's nodes share
        #: what a client sees, so one core stands in for all of them).
        self.nodes: set[tuple[str, int]] = {(HOST, PORT)}

    def wall(self) -> float:
        return self.now + self.wall_offset

    # -- set-up ----------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        expected_pin: str | None = PIN,
        connect: bool = True,
        identity: IdentityKey | None = None,
        tofu: TofuStore | None = None,
        password: str | None = None,
        **adapter: Any,
    ) -> Client:
        identity = identity or IdentityKey.generate()
        conn = ClientConnection(
            name,
            identity,
            wall_clock=self.wall,
            password=password,
            tofu=tofu,
            config=SUPERVISOR,
            rng=seeded(zlib.crc32(name.encode())),
        )
        n = len(self.clients) + 1
        client = Client(name, identity, conn, (f"10.0.0.{n}", 40000 + n), **adapter)
        self.clients.append(client)
        if connect:
            conn.connect(HOST, PORT, expected_pin, self.now)
            self.settle()
        return client

    # -- moving bytes and datagrams --------------------------------------------------------------

    def settle(self) -> None:
        """Carry out events and move bytes and datagrams until nothing moves."""
        for _ in range(1000):
            moved = False
            for client in self.clients:
                moved |= self._drive(client)
            moved |= self._server_pump()
            moved |= self._close_finished()
            if not moved:
                return
        raise AssertionError("the world did not settle")

    def _drive(self, c: Client) -> bool:
        moved = False
        while (event := c.conn.next_event()) is not None:
            moved = True
            c.events.append(event)
            self._carry_out(c, event)
        if c.handshake_pending and c.generation is not None:
            c.handshake_pending = False
            moved = True
            if not c.reachable or c.target in c.down:
                kind = sv.FailureKind.REFUSED
                c.conn.transport_failed(
                    "connection refused", self.now, generation=c.generation, kind=kind
                )
            elif c.target in c.busy:
                assert c.conn_id is not None
                self._forget_conn(c.conn_id)
                c.conn.connection_lost(self.now, generation=c.generation)
            else:
                c.conn.transport_connected(c.presented_pin, self.now, generation=c.generation)
        data = c.conn.data_to_send()
        if data:
            moved = True
            assert c.conn_id is not None, "bytes for a transport that is not open"
            self._to_server(c.conn_id, data)
        for datagram in c.conn.datagrams_to_send():
            moved = True
            assert c.udp_open, "a datagram without an open UDP socket"
            c.udp_datagrams_sent += 1
            if not c.drop_up:
                self._deliver(self.relay.datagram_received(datagram, c.addr, self.now))
        return moved

    def _carry_out(self, c: Client, event: Event) -> None:
        """What a client adapter does with the connection's instructions."""
        if isinstance(event, OpenTransport):
            assert c.generation is None, "a second transport while one is open"
            c.target = (event.host, event.port)
            assert c.target in self.nodes, c.target
            c.generation = event.generation
            reachable = c.reachable and c.target not in c.down
            c.handshake_pending = c.auto_handshake or not reachable or c.target in c.busy
            if reachable:
                cid = self._next_conn
                self._next_conn += 1
                c.conn_id = cid
                self._by_conn[cid] = c
                self.bytes_to_server[cid] = 0
                self.server.connection_made(cid, self.now)
        elif isinstance(event, CloseTransport):
            assert event.generation == c.generation, "CloseTransport for another transport"
            open_id = c.conn_id
            if open_id is not None and open_id not in self._server_closed:
                if event.data and not event.abort:
                    self._to_server(open_id, event.data)
                self._server_pump()
            if open_id is not None:
                self._forget_conn(open_id)
            c.generation = c.conn_id = None
            c.handshake_pending = c.udp_open = False
        elif isinstance(event, OpenUdp):
            assert event.generation == c.generation and event.port == PORT
            c.udp_open = True

    def _to_server(self, cid: int, data: bytes) -> None:
        self.bytes_to_server[cid] += len(data)
        if cid not in self._server_closed:
            self.server.receive_data(cid, data, self.now)

    def _forget_conn(self, cid: int) -> None:
        self.server.connection_lost(cid, self.now)
        self._server_closed.add(cid)
        self._by_conn.pop(cid, None)
        self._server_pump()

    def _deliver(self, out: Iterable[tuple[Addr, bytes]]) -> None:
        for addr, datagram in out:
            for c in self.clients:
                if c.addr == addr and c.udp_open and not c.drop_down:
                    c.conn.datagram_received(datagram, self.now, generation=c.generation)

    def _server_pump(self) -> bool:
        """What ``server/app.py`` does after each batch: events to the relay, tunnelled voice
        to the core, UDP counts to the core, output to the clients."""
        moved = False
        server, relay = self.server, self.relay
        for _ in range(100):
            events = server.events()
            for event in events:
                self.server_events.append(event)
                if isinstance(event, ev.SessionAuthenticated):
                    relay.add_session(event.sender_id, event.hop_secret)
                    self._by_sender[event.sender_id] = event.conn_id
                elif isinstance(event, ev.SessionClosed):
                    if event.sender_id is not None:
                        relay.remove_session(event.sender_id)
                        self._by_sender.pop(event.sender_id, None)
                    self._server_closed.add(event.conn_id)
                elif isinstance(event, ev.VoiceTransportChanged):
                    relay.set_tunnel(event.sender_id, event.tunnel)
                elif isinstance(event, ev.VoiceFromTunnel):
                    self._deliver(relay.tunnel_received(event.sender_id, event.datagram, self.now))
            tunnel = relay.take_tunnel()
            for sender_id, datagram in tunnel:
                cid = self._by_sender.get(sender_id)
                if cid is not None:
                    server.send_voice_tunnel(cid, datagram)
            for sender_id, count in relay.take_received():
                server.note_udp_received(sender_id, count)
            outgoing = server.outgoing()
            for cid, data in outgoing:
                c = self._by_conn.get(cid)
                if c is not None and c.conn_id == cid:
                    c.conn.receive_data(data, self.now, generation=c.generation)
            if not events and not tunnel and not outgoing:
                break
            moved = True
        return moved

    def _close_finished(self) -> bool:
        """Connections the server closed reach their client as a lost transport."""
        moved = False
        for c in self.clients:
            cid = c.conn_id
            if cid is not None and cid in self._server_closed:
                moved = True
                c.conn.connection_lost(self.now, generation=c.generation)
        return moved

    def cut(self, c: Client) -> None:
        """The TCP connection breaks (both ends see it go)."""
        cid, gen = c.conn_id, c.generation
        assert cid is not None and gen is not None
        self._forget_conn(cid)
        c.conn.connection_lost(self.now, generation=gen)
        self.settle()

    # -- time ------------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, firing every timer the cores ask for when it is due."""
        end = self.now + seconds
        for _ in range(100_000):
            due = [t for c in self.clients if (t := c.conn.get_timer()) is not None]
            server_due = self.server.get_timer()
            if server_due is not None:
                due.append(server_due)
            nxt = min(due, default=None)
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            for c in self.clients:
                client_due = c.conn.get_timer()
                if client_due is not None and client_due <= self.now:
                    c.conn.handle_timer(self.now)
                    after = c.conn.get_timer()
                    # Nothing busy-loops: a handled timer moves on (or goes away).
                    assert after is None or after > self.now, (c.name, after, self.now)
            server_due = self.server.get_timer()
            if server_due is not None and server_due <= self.now:
                self.server.handle_timer(self.now)
            self.settle()
        else:  # pragma: no cover
            raise AssertionError("timers did not settle")
        self.now = end
        self.settle()

    # -- user actions ----------------------------------------------------------------------------

    def join(self, c: Client, channel_id: int, password: str | None = None) -> None:
        assert c.conn.join(channel_id, password, self.now)
        self.settle()

    def talk(self, c: Client, channels: list[int], payload: bytes, *, last: bool = False) -> None:
        if last:
            c.conn.send_voice([], channels, payload, self.now)
        else:
            c.conn.send_voice(channels, [], payload, self.now)
        self.settle()

    def server_of(self, kind: type[E]) -> list[E]:
        return [e for e in self.server_events if isinstance(e, kind)]

    def members(self, channel_id: int) -> frozenset[int]:
        return frozenset(self.server.roster.members(channel_id))
