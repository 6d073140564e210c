"""In-memory wiring of ClientSessions to one ServerCore with a fake clock (no sockets).

``Net.pump()`` moves bytes both ways until nothing moves, optionally cutting every write into
random chunks, and plays the transport's part: once a side has closed and its last bytes are
delivered, the "TCP connection" closes and the other side gets ``connection_lost``.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from voipclient.net import events as ev
from voipclient.net.client import ClientSession
from voipclient.net.states import ClientState
from voipclient.server.control import ServerConfig, ServerCore

E = TypeVar("E")


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom."""
    r = random.Random(seed)
    return r.randbytes


def identity(label: str) -> tuple[Ed25519PrivateKey, bytes]:
    """A deterministic Ed25519 identity key pair for ``label``."""
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def make_client(name: str, key_label: str | None = None, **kwargs: Any) -> ClientSession:
    key, pub = identity(key_label or name)
    return ClientSession(name, pub, key.sign, rng=seeded_rng(zlib.crc32(name.encode())), **kwargs)


class EventLog:
    """Look-ups in an ``events`` list (the in-memory harnesses' clients record what they get)."""

    events: list[Any]

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def take(self, kind: type[E]) -> list[E]:
        """Events of ``kind`` so far, removing them from the log."""
        found: list[E] = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return found


@dataclass
class Peer(EventLog):
    conn_id: int
    client: ClientSession
    events: list[ev.ClientEvent] = field(default_factory=list)
    transport_open: bool = True

    @property
    def sender_id(self) -> int:
        sid = self.client.sender_id
        assert sid is not None
        return sid


class Net:
    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        seed: int = 1,
        chunked: bool = False,
        start: float = 1000.0,
    ) -> None:
        self.now = start
        self.server = ServerCore(config or ServerConfig(), rng=seeded_rng(seed))
        self.server_events: list[ev.ServerEvent] = []
        self.peers: dict[int, Peer] = {}
        self._chunks = random.Random(seed) if chunked else None
        self._next_conn = 1
        self._server_closed: set[int] = set()

    # -- set-up ---------------------------------------------------------------------------------

    def connect(self, name: str, *, login: bool = True, **kwargs: Any) -> Peer:
        return self.attach(make_client(name, **kwargs), login=login)

    def attach(self, client: ClientSession, *, login: bool = True) -> Peer:
        cid = self._next_conn
        self._next_conn += 1
        peer = Peer(cid, client)
        self.peers[cid] = peer
        self.server.connection_made(cid, self.now)
        if login:
            client.start(self.now)
            self.pump()
        return peer

    # -- moving bytes ---------------------------------------------------------------------------

    def _split(self, data: bytes) -> list[bytes]:
        if self._chunks is None or len(data) <= 1:
            return [data]
        out, i = [], 0
        while i < len(data):
            n = self._chunks.randint(1, max(1, min(len(data) - i, 700)))
            out.append(data[i : i + n])
            i += n
        return out

    def to_server(self, peer: Peer, data: bytes) -> None:
        """Deliver raw bytes as if ``peer`` had written them."""
        for chunk in self._split(data):
            self.server.receive_data(peer.conn_id, chunk, self.now)
            self._collect_server_events()

    def _collect_server_events(self) -> None:
        for event in self.server.events():
            self.server_events.append(event)
            if isinstance(event, ev.SessionClosed):
                self._server_closed.add(event.conn_id)

    def pump(self) -> None:
        """Move bytes until quiet; then close transports whose owner side has finished."""
        for _ in range(10_000):
            moved = False
            for peer in self.peers.values():
                if not peer.transport_open:
                    continue
                up = peer.client.data_to_send()
                if up:
                    moved = True
                    if peer.conn_id not in self._server_closed:
                        self.to_server(peer, up)
                down = self.server.data_to_send(peer.conn_id)
                if down:
                    moved = True
                    for chunk in self._split(down):
                        peer.events += peer.client.receive_data(chunk, self.now)
            self._collect_server_events()
            if not moved:
                break
        else:  # pragma: no cover
            raise AssertionError("pump did not settle")
        for peer in self.peers.values():
            closed_here = peer.client.state is ClientState.CLOSED
            if peer.transport_open and (closed_here or peer.conn_id in self._server_closed):
                peer.transport_open = False
                peer.events += peer.client.connection_lost(self.now)
                self.server.connection_lost(peer.conn_id, self.now)
                self._collect_server_events()

    # -- time -----------------------------------------------------------------------------------

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Let ``seconds`` pass, firing every due timer on the way (at ``step`` granularity)."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            self.fire_timers()

    def fire_timers(self) -> None:
        for peer in self.peers.values():
            due = peer.client.get_timer()
            if peer.transport_open and due is not None and due <= self.now:
                peer.events += peer.client.handle_timer(self.now)
        due = self.server.get_timer()
        if due is not None and due <= self.now:
            self.server.handle_timer(self.now)
            self._collect_server_events()
        self.pump()

    def server_of(self, kind: type[E]) -> list[E]:
        return [e for e in self.server_events if isinstance(e, kind)]


def real_keydist(sender_id: int, channel_id: int, recipients: list[int]) -> bytes:
    """A genuine KeyDist batch (real HPKE envelopes and signature) for relay-routing tests."""
    from voipclient.crypto import keydist
    from voipclient.crypto.identity import IdentityKey
    from voipclient.crypto.session import SessionKemKey

    return keydist.build_keydists(
        IdentityKey.generate(),
        kind=keydist.KeyDistKind.NEW_GENERATION,
        channel_id=channel_id,
        sender_id=sender_id,
        gen=1,
        step=0,
        created_ms=0,
        base_key=bytes(64),
        text_signing_pub=IdentityKey.generate().public_bytes(),
        recipients=[
            keydist.KeyDistRecipient(r, SessionKemKey.generate().public_bytes()) for r in recipients
        ],
    )[0]
