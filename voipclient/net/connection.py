"""The client's connection to one server, sans-IO: the one core every client drives.

:class:`ClientConnection` is the client's equivalent of aioquic's ``QuicConnection``. It owns,
for one server and across reconnects:

* the pin verdict: the server's SPKI pin presented in the TLS handshake against the one expected
  → log in / ask the user (first contact) / refuse, *before any application byte is written*;
* one :class:`~voipclient.net.client.ClientSession` and one
  :class:`~voipclient.net.e2ee.SecureSession` per TLS connection attempt (fresh ones on every
  reconnect, so session and sender keys rotate by themselves);
* the :class:`~voipclient.net.supervisor.ConnectionSupervisor` (reconnect with backoff, restore of
  memberships, channel passwords, self-mute/deafen and local settings, the UDP ↔ TLS-tunnel
  decision, UDP pings);
* the UDP hop handshake (BIND → CHALLENGE → BIND_CONFIRM → BIND_OK) and pings as hop-control
  datagrams (:mod:`~voipclient.net.hopctl`), with the hop keys derived once per login, our c2s
  hop-control seq and the replay window for the relay's s2c hop control;
* loss reports out (the playback side's measurements) and in (listeners' reports about us →
  :class:`~voipclient.audio.redundancy.RedundancyPolicy` → :attr:`redundancy_level`), and the UDP
  counters reported to the server in each Ping;
* the user's intents (join, leave, self-mute/deafen, text, verification, local settings, an
  "always use the TLS tunnel" setting).

Pure: bytes, datagrams, intents and ``now`` (the adapter's monotonic clock, seconds) go in; bytes,
datagrams, events and one timer deadline come out. No sockets, threads, Qt, asyncio, files or
clocks: absolute times (session certificates, approval times) come from the injected
``wall_clock``, randomness from the injected ``rng``.

The adapter (Qt, asyncio bot, test client) drives it like this::

    conn = ClientConnection(name, identity, wall_clock=time.time)
    conn.connect(host, port, expected_pin, now)        # None: first contact, the user is asked
    ...
    # after every call into conn (including handle_timer), in this order:
    while (event := conn.next_event()) is not None:
        carry_out(event)     # OpenTransport, CloseTransport, OpenUdp, StorePin, SaveTrustStore;
                             # everything else is for the UI / the audio workers
    tls.write(conn.data_to_send())
    for datagram in conn.datagrams_to_send():
        udp.sendto(datagram, relay_address)
    rearm_timer(conn.get_timer())                      # None: no timer needed

    # what the sockets report, tagged with the generation of OpenTransport:
    conn.transport_connected(presented_pin, now, generation=g)   # TLS handshake done
    conn.receive_data(data, now, generation=g)
    conn.datagram_received(data, now, generation=g)
    conn.transport_failed(why, now, generation=g)                # could not connect / TLS error
    conn.connection_lost(now, generation=g)                      # EOF or reset
    conn.handle_timer(now)                                       # when get_timer() is due

Every :class:`OpenTransport` is followed by exactly one :class:`CloseTransport` with the same
``generation``; callbacks tagged with another generation (a socket being torn down) are ignored.
Nothing polls: :meth:`get_timer` is the earliest of the control session's timer (pings, silence),
the E2E layer's key deadlines, the supervisor's (backoff, connect timeout, BIND retries and
probes, UDP pings) and the stats tick (once per ``stats_interval`` while connected or
reconnecting; it also runs the E2E layer's coarse upkeep and lets the redundancy level fall).
Calling :meth:`handle_timer` early is harmless.

States (:class:`~voipclient.net.states.ConnectionState`, one transition table in
:mod:`voipclient.net.states`)::

    IDLE → CONNECTING → (AWAITING_PIN_APPROVAL →) LOGGING_IN → READY
    CONNECTING … READY → WAITING (backoff) → CONNECTING …      (the supervisor reconnects)
    CONNECTING / AWAITING_PIN_APPROVAL → REFUSED              (pin mismatch, none, or user's no)
    any but IDLE → CLOSED                                     (close(), or the server refused us)

Threading: one owner (the adapter's network thread or event loop). Not thread-safe.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from voipclient.audio.redundancy import (
    DEFAULT_POLICY,
    LEVEL_CLEAN,
    LossReport,
    PolicyConfig,
    RedundancyLevel,
    RedundancyPolicy,
)
from voipclient.crypto.hop import HopMac
from voipclient.crypto.identity import IdentityKey
from voipclient.crypto.keylog import KeyLogSink
from voipclient.crypto.media import VoiceFrame
from voipclient.crypto.replay import ReplayWindow
from voipclient.crypto.tofu import TofuStore
from voipclient.errors import LocalProtocolError
from voipclient.net import e2ee, hopctl
from voipclient.net import events as ev
from voipclient.net import supervisor as sv
from voipclient.net.client import ClientSession, LossReportLike
from voipclient.net.roster import RosterSnapshot
from voipclient.net.states import (
    ClientState,
    ConnectionState,
    ConnectionTrigger,
    next_connection_state,
)

__all__ = [
    "ClientConnection",
    "CloseTransport",
    "ConnectionEvent",
    "Event",
    "OpenTransport",
    "OpenUdp",
    "PinApprovalNeeded",
    "RedundancyChanged",
    "SaveTrustStore",
    "StateChanged",
    "Stats",
    "StorePin",
    "TextFailed",
    "TransportChanged",
    "VoiceReceived",
    "VoiceRoute",
    "VoiceTransport",
]

#: Seconds between two :class:`Stats` events (and the E2E layer's coarse upkeep).
DEFAULT_STATS_INTERVAL: Final = 1.0
#: A node that failed at the transport level (nothing listening, no route, no answer, or our
#: connection to it broke without a word) is passed over by retries for this long, while
#: another node of the cluster is not. A node that took the connection and then closed it
#: (too busy) is alive, and is not.
NODE_DOWN_S: Final = 15.0
_NODE_DOWN_KINDS: Final = frozenset(
    {
        sv.FailureKind.REFUSED,
        sv.FailureKind.NO_ROUTE,
        sv.FailureKind.NAME_NOT_FOUND,
        sv.FailureKind.TIMEOUT,
    }
)

_CS = ConnectionState
_CT = ConnectionTrigger
#: ClientSession states in which a Bye can still be said.
_CAN_SAY_BYE: Final = frozenset(
    (ClientState.HELLO_SENT, ClientState.LOGIN_SENT, ClientState.SYNCING, ClientState.READY)
)


class VoiceTransport(enum.Enum):
    """The path our voice takes (and the relay sends us voice by), as the supervisor decided."""

    #: UDP, our address validated by the hop handshake.
    UDP = "udp"
    #: Inside the TLS connection (UDP blocked, lossy or silent, or the server has no UDP).
    TUNNEL = "tunnel"


class VoiceRoute(enum.Enum):
    """How an opened voice frame reached us."""

    #: A UDP datagram from the relay.
    UDP = "udp"
    #: A datagram inside the TLS connection.
    TUNNEL = "tunnel"
    #: It arrived (by either path) before its sender's key and opened when the KeyDist came.
    RELEASED = "released"


# =============================================================================================
# Events (what next_event() returns besides the passed-through session events)
# =============================================================================================


class ConnectionEvent:
    """Base class of the events :class:`ClientConnection` itself reports.

    :meth:`ClientConnection.next_event` also passes on, unchanged:

    * every :class:`~voipclient.net.events.ClientEvent` of the control session except
      ``VoiceTunnelReceived`` (its voice comes as :class:`VoiceReceived`), in order;
    * every :class:`~voipclient.net.e2ee.SecureEvent` of the E2E layer except ``VoiceReleased``
      (→ :class:`VoiceReceived` with :attr:`VoiceRoute.RELEASED`);
    * the supervisor's actions meant for the UI: ``ReconnectScheduled``, ``Stopped``,
      ``RestoreSkipped`` and ``ApplyLocalSettings`` (re-apply the volumes, mutes and push-to-talk
      bindings handed in with :meth:`ClientConnection.set_local_settings`).
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class OpenTransport(ConnectionEvent):
    """Adapter: open a TLS 1.3 connection (no CA check: the pin is the check) and report it
    with :meth:`ClientConnection.transport_connected` (or ``transport_failed``). Write nothing
    on it until :meth:`ClientConnection.data_to_send` returns bytes."""

    #: Where to connect.
    host: str
    port: int
    #: Tags every callback about this transport; a new attempt gets a new one.
    generation: int


@dataclass(frozen=True, slots=True)
class CloseTransport(ConnectionEvent):
    """Adapter: the transport (TLS connection and UDP socket) of ``generation`` is done. Write
    ``data`` and close gracefully, or, with ``abort``, close at once and write nothing (a
    refused pin: no close_notify round trip, no application byte). Sent exactly once per
    :class:`OpenTransport`, also after the peer closed or the connection failed."""

    generation: int
    abort: bool
    #: The last bytes to write before closing (our Bye, or a fatal Error frame); empty on abort.
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class OpenUdp(ConnectionEvent):
    """Adapter: logged in and the server has a UDP relay: open a UDP socket towards it (the TLS
    peer's resolved address, or a test proxy's). The hop handshake's datagrams follow in
    :meth:`ClientConnection.datagrams_to_send`; received datagrams go to
    :meth:`ClientConnection.datagram_received`. Closed with the :class:`CloseTransport` of the
    same ``generation``."""

    #: The server's host (as given to ``connect``) and the UDP port it announced at login.
    host: str
    port: int
    generation: int


@dataclass(frozen=True, slots=True)
class StateChanged(ConnectionEvent):
    """The connection's state changed (the status line)."""

    state: ConnectionState
    #: For the user: where we connect, the presented pin (awaiting approval), why it was
    #: refused, closed or lost.
    detail: str


@dataclass(frozen=True, slots=True)
class PinApprovalNeeded(ConnectionEvent):
    """First contact: ask the user whether ``pin`` is this server's key, then call
    :meth:`ClientConnection.approve_pin` with this ``pin``. Nothing is sent meanwhile."""

    host: str
    port: int
    #: The presented pin, ``sha256/<base64>``.
    pin: str


@dataclass(frozen=True, slots=True)
class StorePin(ConnectionEvent):
    """Adapter: the user approved ``pin`` for ``host:port``; store it (``PinFile``) so the next
    connection checks it instead of asking."""

    host: str
    port: int
    pin: str
    #: When the user approved it (wall clock, milliseconds since the epoch).
    approved_ms: int


@dataclass(frozen=True, slots=True)
class SaveTrustStore(ConnectionEvent):
    """Adapter: the peers' pinned identity keys (the TOFU store handed to the connection)
    changed: a new peer, a change recorded, or a verification. Persist it."""


@dataclass(frozen=True, slots=True)
class TransportChanged(ConnectionEvent):
    """Our voice now goes (and comes) over ``transport``."""

    transport: VoiceTransport


@dataclass(frozen=True, slots=True)
class VoiceReceived(ConnectionEvent):
    """An opened voice frame for the playback side (jitter buffer, decoder, mixer)."""

    frame: VoiceFrame
    route: VoiceRoute


@dataclass(frozen=True, slots=True)
class RedundancyChanged(ConnectionEvent):
    """What listeners report about us changed the redundancy our capture side should apply
    (also :attr:`ClientConnection.redundancy_level`)."""

    level: RedundancyLevel


@dataclass(frozen=True, slots=True)
class TextFailed(ConnectionEvent):
    """A chat message could not be sent (not connected, no sender key yet, not a member)."""

    channel_id: int
    why: str


@dataclass(frozen=True, slots=True)
class Stats(ConnectionEvent):
    """Once per stats interval while connected or reconnecting: the voice path's health."""

    transport: VoiceTransport
    #: UDP hop RTT (smoothed) while on UDP, else the control channel's; milliseconds.
    rtt_ms: float | None
    #: Unanswered fraction of the recent UDP pings, 0..1 (None: nothing to tell yet).
    loss: float | None
    #: Voice sent / received (UDP and tunnel), kbit/s over the last interval.
    kbps_out: float
    kbps_in: float
    #: Voice datagrams received / sent since the connection object was made.
    datagrams_in: int
    datagrams_out: int


#: Everything :meth:`ClientConnection.next_event` returns.
Event: TypeAlias = ConnectionEvent | ev.ClientEvent | e2ee.SecureEvent | sv.SupervisorAction

#: Supervisor actions that are only for the UI: passed on as they are.
_UI_ACTIONS: Final = (sv.ReconnectScheduled, sv.RestoreSkipped, sv.ApplyLocalSettings)


# =============================================================================================
# The connection
# =============================================================================================


class ClientConnection:
    """One server, from :meth:`connect` to :meth:`close`, across reconnects. See the module
    docstring for the adapter's part.

    Args:
        name: the user name to log in with (checked now: a bad one raises LocalProtocolError).
        identity: our Ed25519 identity key.
        wall_clock: seconds since the epoch (``time.time``): session certificate expiry, KeyDist
            and text timestamps, TOFU and pin approval times.
        password: the server password, if it has one.
        tofu: the peers' pinned identity keys (shared with the UI; persisted on
            :class:`SaveTrustStore`). A fresh empty store when None.
        config: the supervisor's delays.
        rng: random bytes (``os.urandom``): session and E2E keys, ping ids, backoff jitter.
        keylog: the debugging key log sink (``VOIPCLIENT_KEYLOGFILE``), or None.
        stats_interval: seconds between :class:`Stats` events.
    """

    def __init__(
        self,
        name: str,
        identity: IdentityKey,
        *,
        wall_clock: Callable[[], float],
        password: str | None = None,
        tofu: TofuStore | None = None,
        config: sv.SupervisorConfig | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        keylog: KeyLogSink | None = None,
        stats_interval: float = DEFAULT_STATS_INTERVAL,
        redundancy: PolicyConfig = DEFAULT_POLICY,
    ) -> None:
        if not stats_interval > 0:
            raise LocalProtocolError("stats_interval must be > 0")
        # A throw-away session checks the name and password against the schema now, not at
        # the first TLS connection; it also gives the NFC-normalised name the server sees.
        self.name: Final = ClientSession(
            name, identity.public_bytes(), identity.sign, password, rng=rng
        ).name
        self._identity = identity
        self._password = password
        self._wall = wall_clock
        self._rng = rng
        self._keylog = keylog
        self.tofu: Final = tofu if tofu is not None else TofuStore()
        self._supervisor = sv.ConnectionSupervisor(config, rng=self._unit_random)
        self._stats_interval = float(stats_interval)

        self._state = ConnectionState.IDLE
        self._detail = ""
        self._events: deque[Event] = deque()
        self._host = ""
        self._port = 0
        # Where to connect: the user's server first, then the other nodes of its cluster
        # (ClusterNodes); each retry after a failure or a lost connection moves to the next
        # one that is not down (_down_until, NODE_DOWN_S).
        self._candidates: list[tuple[str, int]] = []
        self._candidate = 0
        self._down_until: dict[tuple[str, int], float] = {}  # node → passed over until then
        self._attempted = False
        self._expected_pin: str | None = None
        self._presented_pin: str | None = None

        # The transport of the current attempt: ``_attached`` while it is open or opening.
        self._generation = 0
        self._attached = False
        self._udp_open = False
        self._udp_out: list[bytes] = []
        self._session: ClientSession | None = None
        self._secure: e2ee.SecureSession | None = None

        # Hop control, per login: keys derived once from LoggedIn.hop_secret.
        self._c2s: HopMac | None = None
        self._s2c: HopMac | None = None
        self._hop_seq = 0
        self._hop_window = ReplayWindow()

        # Voice path as the supervisor decided it. ``_transport`` survives reconnects (what the
        # user saw last); ``_udp_bound`` is per login (voice goes through the tunnel until the
        # hop handshake validated our UDP address).
        self._transport = VoiceTransport.UDP
        self._udp_bound = False
        # The user's "always use the TLS tunnel" setting (kept across reconnects): voice goes
        # and comes through the tunnel whatever the supervisor decided about UDP.
        self._force_tunnel = False

        # What listeners report about us decides our redundancy (worst listener, held 10 s),
        # with light protection until they do and a cap when our own rate congests the path.
        self._policy = RedundancyPolicy(config=redundancy)
        self._level: RedundancyLevel = LEVEL_CLEAN

        # Voice counters (UDP and tunnel) for the stats; since this object was made.
        self._datagrams_in = 0
        self._tunnel_datagrams_in = 0
        self._datagrams_out = 0
        self._bytes_in = 0
        self._bytes_out = 0
        # UDP counters since login, reported to the server in each Ping (report_udp_stats).
        self._udp_sent = 0
        self._udp_received = 0
        self._udp_lost = 0
        self._udp_jitter_ms = 0.0

        self._next_stats: float | None = None
        self._stats_mark = (0.0, 0, 0)  # (now, bytes_in, bytes_out) at the last Stats

    # -- read-only views ---------------------------------------------------------------------------

    @property
    def hop_macs(self) -> tuple[HopMac, HopMac] | None:
        """This login's hop MACs (client→server, server→client), once logged in: the ones the
        E2E layer derived from the hop secret (tools that forge or check datagrams use these)."""
        return self._secure.hop_macs if self._secure is not None else None

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def detail(self) -> str:
        """The detail of the last :class:`StateChanged`."""
        return self._detail

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def generation(self) -> int:
        """The generation of the latest :class:`OpenTransport`."""
        return self._generation

    @property
    def expected_pin(self) -> str | None:
        """The pin the server must present (None: first contact, the user will be asked)."""
        return self._expected_pin

    @property
    def presented_pin(self) -> str | None:
        """The pin the server presented in the current attempt's TLS handshake."""
        return self._presented_pin

    @property
    def session(self) -> ClientSession | None:
        """The current attempt's control session, for inspection (roster, limits). Intents go
        through the connection, never straight to it."""
        return self._session

    @property
    def secure(self) -> e2ee.SecureSession | None:
        """The current attempt's E2E layer, for inspection (member view, privacy codes)."""
        return self._secure

    @property
    def supervisor(self) -> sv.ConnectionSupervisor:
        """For inspection (``stats``, ``memberships``, ``voice_path``); fed only from here."""
        return self._supervisor

    @property
    def sender_id(self) -> int | None:
        """Our sender id while logged in."""
        session = self._ready_session()
        return None if session is None else session.sender_id

    @property
    def roster(self) -> RosterSnapshot | None:
        """The roster while logged in."""
        session = self._ready_session()
        return None if session is None else session.roster

    @property
    def is_admin(self) -> bool:
        """While logged in: the server counts us as one of its administrators (show the admin
        menus; the server still checks every request). False when not logged in."""
        session = self._ready_session()
        return session is not None and session.is_admin

    @property
    def transport(self) -> VoiceTransport:
        """The voice path the supervisor decided last (kept across reconnects)."""
        return self._transport

    @property
    def udp_bound(self) -> bool:
        """This login's UDP address is validated and the supervisor chose UDP (voice goes over
        it unless :attr:`force_tunnel`)."""
        return self._udp_bound

    @property
    def force_tunnel(self) -> bool:
        """The user's "always use the TLS tunnel" setting (:meth:`set_force_tunnel`)."""
        return self._force_tunnel

    @property
    def redundancy_level(self) -> RedundancyLevel:
        """The redundancy the capture side should apply now (a latest-value slot)."""
        return self._level

    @property
    def redundancy_policy(self) -> RedundancyPolicy:
        """The sender's policy (its congestion counters, for stats and tests)."""
        return self._policy

    def set_voice_rate(self, bitrate: int, frame_ms: int, now: float) -> None:
        """The user's Opus bitrate or frame size changed: the redundancy policy models its
        rates (and fits a congestion cap) from these from now on."""
        self._policy.set_voice_rate(bitrate, frame_ms)
        self._set_level(self._policy.level(now))

    def set_path_memory(self, remembered: RedundancyLevel | None) -> None:
        """What an earlier session learned about this server's path (see
        :meth:`path_memory`): the next talk spurt starts with that protection."""
        self._policy.set_prior(remembered)

    def path_memory(self, now: float) -> RedundancyLevel | None:
        """What to remember about this server's path for the next session (None: nothing
        learned yet)."""
        return self._policy.memory(now)

    @property
    def datagrams_in(self) -> int:
        return self._datagrams_in

    @property
    def tunnel_datagrams_in(self) -> int:
        """Of :attr:`datagrams_in`, those that came through the TLS tunnel (opened or not)."""
        return self._tunnel_datagrams_in

    @property
    def datagrams_out(self) -> int:
        return self._datagrams_out

    @property
    def bytes_in(self) -> int:
        return self._bytes_in

    @property
    def bytes_out(self) -> int:
        return self._bytes_out

    # -- outputs -----------------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, in order, or None when there is none (drain after every call)."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Bytes to write to the current TLS transport (empties the buffer). Empty before the
        pin verdict allowed the login: nothing is ever written before it."""
        if not self._attached or self._session is None:
            return b""
        return self._session.data_to_send()

    def datagrams_to_send(self) -> list[bytes]:
        """UDP datagrams for the relay (hop control and voice), in order (empties the queue)."""
        out, self._udp_out = self._udp_out, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due (adapter clock, seconds), or None."""
        session, secure = self._session, self._secure
        times = (
            self._supervisor.get_timer(),
            session.get_timer() if self._attached and session is not None else None,
            secure.next_deadline() if secure is not None else None,
            self._next_stats,
        )
        return min((t for t in times if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Do what is due at ``now``. Calling it early does nothing."""
        sup = self._supervisor
        due = sup.get_timer()
        if due is not None and now >= due:
            self._act(sup.handle_timer(now), now)
        session = self._session
        if self._attached and session is not None:
            due = session.get_timer()
            if due is not None and now >= due:
                self._handle_session_events(session.handle_timer(now), now)
        stats_due = self._next_stats is not None and now >= self._next_stats
        secure = self._secure
        if secure is not None:
            due = secure.next_deadline()
            # The stats tick also runs the coarse upkeep next_deadline() leaves out (text-key
            # expiry, session certificate renewal).
            if stats_due or (due is not None and now >= due):
                self._emit_secure(secure.tick(now))
        if stats_due:
            self._stats_tick(now)

    # -- the user: connect and close ---------------------------------------------------------------

    def connect(self, host: str, port: int, expected_pin: str | None, now: float) -> None:
        """Connect and stay connected (the supervisor reconnects with backoff and restores what
        the user had) until :meth:`close`. ``expected_pin`` None means first contact: the user
        is asked (:class:`PinApprovalNeeded`). A live connection is closed first."""
        if not host or isinstance(port, bool) or not 0 < port < 65536:
            raise LocalProtocolError(f"cannot connect to {host!r}:{port!r}")
        if self._supervisor.state not in (sv.ConnState.IDLE, sv.ConnState.STOPPED):
            self.close(now)
        self._host, self._port, self._expected_pin = host, port, expected_pin
        self._candidates = [(host, port)]
        self._candidate = 0
        self._down_until.clear()
        self._attempted = False
        self._presented_pin = None
        self._stats_mark = (now, self._bytes_in, self._bytes_out)
        self._next_stats = now + self._stats_interval
        self._act(self._supervisor.handle_event(sv.Open(host, port), now), now)

    def close(self, now: float) -> None:
        """Say goodbye (when logging in or logged in), close the transport and stop
        reconnecting. Idempotent."""
        if self._supervisor.state not in (sv.ConnState.IDLE, sv.ConnState.STOPPED):
            self._act(self._supervisor.handle_event(sv.Close(), now), now)
        self._detach(now, abort=False)
        self._next_stats = None

    # -- the adapter: TLS --------------------------------------------------------------------------

    def transport_connected(
        self, presented_pin: str | None, now: float, *, generation: int | None = None
    ) -> None:
        """The TLS handshake finished; ``presented_pin`` is the SPKI pin of the server's
        certificate (None: it presented none). The verdict comes at once: log in (the pin
        matches), ask the user (first contact), or refuse (mismatch, no certificate)."""
        if not self._current(generation) or self._state is not _CS.CONNECTING:
            return
        self._presented_pin = presented_pin
        expected = self._expected_pin
        if presented_pin is None:
            self._refuse("the server presented no certificate", now)
        elif expected is None:
            self._set_state(_CT.PIN_UNKNOWN, presented_pin)
            self._act(self._supervisor.handle_event(sv.PinApprovalPending(), now), now)
            self._emit(PinApprovalNeeded(self._host, self._port, presented_pin))
        elif presented_pin != expected:
            self._refuse(
                f"{self._host}:{self._port} presented the key {presented_pin}, but this "
                f"server's key is {expected}: someone may be intercepting the connection, or "
                "the server's key was replaced. Nothing was sent. Connect again only if the "
                "server's operator confirms the new key.",
                now,
            )
        else:
            self._start_session(_CT.PIN_MATCHED, now)

    def approve_pin(self, pin: str, approved: bool, now: float) -> None:
        """The user's answer about ``pin`` (from :class:`PinApprovalNeeded`). Ignored unless the
        connection is waiting for exactly that answer: a reconnect may have presented another
        key by now, which the user has not seen."""
        if self._state is not _CS.AWAITING_PIN_APPROVAL or pin != self._presented_pin:
            return
        if not approved:
            self._refuse(f"you did not trust the key of {self._host}:{self._port}", now)
            return
        self._expected_pin = pin
        self._emit(StorePin(self._host, self._port, pin, int(self._wall() * 1000)))
        self._act(self._supervisor.handle_event(sv.PinApproved(), now), now)
        self._start_session(_CT.PIN_APPROVED, now)

    def transport_failed(
        self,
        why: str,
        now: float,
        *,
        generation: int | None = None,
        kind: sv.FailureKind = sv.FailureKind.OTHER,
    ) -> None:
        """The TCP/TLS connection could not be made, or broke (``why`` for the user; ``kind``
        from the adapter's socket error chooses what the user is told to check)."""
        if not self._current(generation):
            return
        if self._session is None:
            if kind in _NODE_DOWN_KINDS:
                self._down_until[(self._host, self._port)] = now + NODE_DOWN_S
            self._detach(now, abort=True)
            advice = sv.explain_failure(kind, self._host, self._port)
            failed = sv.TransportFailed(why, kind, advice)
            self._act(self._supervisor.handle_event(failed, now), now)
        else:
            self.connection_lost(now, generation=generation)

    def connection_lost(self, now: float, *, generation: int | None = None) -> None:
        """The TLS connection closed (EOF, reset, or closed by the server)."""
        if not self._current(generation):
            return
        session, current = self._session, self._generation
        if session is not None:
            if session.state is ClientState.READY:  # it broke under us: the node may be gone
                self._down_until[(self._host, self._port)] = now + NODE_DOWN_S
            self._handle_session_events(session.connection_lost(now), now, transport_gone=True)
        if self._attached and self._generation == current:
            # No session yet (or it had nothing to say): the attempt failed.
            self._detach(now, abort=True)
            why = "the connection closed before login"
            kind = sv.FailureKind.CLOSED
            failed = sv.TransportFailed(why, kind, sv.explain_failure(kind, self._host, self._port))
            self._act(self._supervisor.handle_event(failed, now), now)

    def receive_data(self, data: bytes, now: float, *, generation: int | None = None) -> None:
        """Bytes read from the TLS connection (any chunking)."""
        session = self._session
        if not self._current(generation) or session is None:
            # Before the pin verdict we sent nothing: bytes now come from a confused server.
            return
        self._handle_session_events(session.receive_data(data, now), now)

    # -- the adapter: UDP --------------------------------------------------------------------------

    def datagram_received(self, data: bytes, now: float, *, generation: int | None = None) -> None:
        """One datagram from the relay's UDP address: hop control or voice."""
        if not self._current(generation) or not self._udp_open:
            return
        s2c = self._s2c
        if s2c is None:
            return
        if len(data) == hopctl.HOP_CONTROL_LEN and data[1] in hopctl.S2C_PTYPES:
            msg = hopctl.open_hop_control(data, s2c, self._hop_window, ptypes=hopctl.S2C_PTYPES)
            if msg is None:
                return
            self._udp_received += 1
            event: sv.SupervisorEvent
            if msg.ptype == hopctl.PTYPE_CHALLENGE:
                event = sv.UdpChallenge(msg.body)
            elif msg.ptype == hopctl.PTYPE_BIND_OK:
                event = sv.UdpBindOk()
            else:
                event = sv.UdpPong(*hopctl.decode_pong(msg.body))
            self._act(self._supervisor.handle_event(event, now), now)
            return
        # UDP is alive only when the relay's hop MAC verifies (the E2E layer checks it again,
        # and counts every drop by reason).
        if s2c.verify(data):
            self._udp_received += 1
            self._act(self._supervisor.handle_event(sv.UdpDatagramReceived(), now), now)
        self._voice_in(data, VoiceRoute.UDP, now)

    # -- the capture and playback sides ------------------------------------------------------------

    def send_voice(
        self, targets: Sequence[int], ending: Sequence[int], payload: bytes, now: float
    ) -> None:
        """Seal one encoded payload for each target channel (VOICE_LAST for ``ending``) and send
        it over UDP, or through the TLS tunnel until UDP is validated or when it is not used.
        Channels we hold no sender key for are skipped; nothing is sent unless READY."""
        sec = self._secure
        if sec is None or self._state is not _CS.READY or sec.scheduler is None:
            return
        datagrams = sec.seal_voice(targets, payload, now) if targets else []
        if ending:
            datagrams += sec.seal_voice(ending, payload, now, last=True)
        for datagram in datagrams:
            self._send_voice_datagram(datagram)
        self._emit_secure(sec.flush(now))

    def send_loss_reports(self, reports: Iterable[LossReportLike], now: float) -> None:
        """The playback side's loss/jitter measurements of the speakers we hear (e.g.
        ``VoicePlayback.loss_reports``). Sent at once while READY, else dropped (they name
        sender ids of a session that is gone). Raises LocalProtocolError for a figure out of
        range (nothing is sent then)."""
        session = self._ready_session()
        if session is None:
            return
        batch = list(reports)
        if not batch:
            return
        session.send_loss_reports(batch)
        if self._udp_bound:
            # The UDP counters' "lost" is inferred from what the playback side measured.
            self._udp_lost += sum(round(r.loss * r.window_frames) for r in batch)
            self._udp_jitter_ms = max(float(r.jitter_ms) for r in batch)

    # -- intents -----------------------------------------------------------------------------------

    def join(self, channel_id: int, password: str | None, now: float) -> bool:
        """Join a channel (with its password: reused when memberships are restored after a
        reconnect). False when not logged in; the answer arrives as events."""
        session = self._ready_session()
        if session is None:
            return False
        session.join(channel_id, password)
        if password is not None:
            event = sv.ChannelPasswordUsed(channel_id, password)
            self._act(self._supervisor.handle_event(event, now), now)
        return True

    def leave(self, channel_id: int, now: float) -> bool:
        """Leave a channel. False when not logged in."""
        session = self._ready_session()
        if session is None:
            return False
        session.leave(channel_id)
        return True

    def set_self_state(self, muted: bool, deafened: bool, now: float) -> None:
        """Self-mute / deafen: announced now (when logged in) and after every reconnect."""
        self._act(self._supervisor.handle_event(sv.SelfStateChanged(muted, deafened), now), now)
        session = self._ready_session()
        if session is not None:
            session.set_self_state(muted, deafened)

    def set_force_tunnel(self, force: bool, now: float) -> None:
        """The user's "always use the TLS tunnel" setting (UDP blocked or unreliable where they
        are): while True, our voice goes and the relay sends us voice through the TLS connection,
        whatever the supervisor decides about UDP (it keeps binding and pinging, so switching
        back is immediate). Applied now when logged in, else at the next login; kept across
        reconnects."""
        self._force_tunnel = bool(force)
        if self._ready_session() is not None:
            supervisor_tunnel = self._supervisor.voice_path in (
                sv.VoicePath.TUNNEL,
                sv.VoicePath.TUNNEL_ONLY,
            )
            self._apply_voice_transport(supervisor_tunnel or self._force_tunnel)

    def set_local_settings(self, settings: object, now: float) -> None:
        """The user's volumes, mutes and push-to-talk bindings (opaque here): handed back as
        ``ApplyLocalSettings`` after every re-login."""
        self._act(self._supervisor.handle_event(sv.LocalSettingsChanged(settings), now), now)

    def send_text(self, channel_id: int, text: str, now: float) -> bool:
        """Seal and send a chat message; False and a :class:`TextFailed` when it cannot be."""
        sec = self._secure
        if sec is None or self._state is not _CS.READY:
            self._emit(TextFailed(channel_id, "not connected"))
            return False
        try:
            sec.send_text(channel_id, text, now)
        except LocalProtocolError as exc:
            self._emit(TextFailed(channel_id, str(exc)))
            return False
        self._emit_secure(sec.flush(now))
        return True

    def set_verified(self, sender_id: int, ik_pub: bytes, verified: bool, now: float) -> bool:
        """The user compared the safety number computed from ``ik_pub`` with ``sender_id`` (or
        takes the verification back). Refused (False) when that member holds another key now:
        identity comes from the E2E layer only. The member view follows as an event."""
        sec = self._secure
        if sec is None:
            return False
        done = sec.set_verified(sender_id, ik_pub, verified, now)
        self._emit_secure(sec.take_events(now))
        if done:
            self._emit(SaveTrustStore())
        return done

    def admin(
        self,
        action: str,
        target: int,
        now: float,
        *,
        channel_id: int | None = None,
        reason: str = "",
    ) -> bool:
        """Ask the server to kick, ban or move a user (administrators only); the answer arrives
        as events. False when not logged in."""
        session = self._ready_session()
        if session is None:
            return False
        session.admin(action, target, channel_id, reason)
        return True

    def channel_admin(
        self,
        op: str,
        now: float,
        *,
        channel_id: int | None = None,
        name: str | None = None,
        parent: int | None = None,
        description: str | None = None,
        password: str | None = None,
        max_members: int | None = None,
        speakers: Iterable[str] | None = None,
        everyone_speaks: bool = False,
    ) -> bool:
        """Ask the server to create, change or delete a channel (administrators only; the
        arguments are :meth:`ClientSession.channel_admin`'s): the roster events and then
        ``ChannelAdminDone``, or a non-fatal ``ServerError``, arrive as events. False when not
        logged in; LocalProtocolError for arguments that do not fit ``op`` or the schema."""
        session = self._ready_session()
        if session is None:
            return False
        session.channel_admin(
            op,
            channel_id,
            name=name,
            parent=parent,
            description=description,
            password=password,
            max_members=max_members,
            speakers=speakers,
            everyone_speaks=everyone_speaks,
        )
        return True

    # -- internals: attempts and the transport -----------------------------------------------------

    def _unit_random(self) -> float:
        """A float in [0, 1) from the injected byte source (the supervisor's backoff jitter)."""
        return (int.from_bytes(self._rng(7), "big") >> 3) / float(1 << 53)

    def _current(self, generation: int | None) -> bool:
        return self._attached and (generation is None or generation == self._generation)

    def _ready_session(self) -> ClientSession | None:
        if self._state is _CS.READY and self._attached:
            return self._session
        return None

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _set_state(self, trigger: ConnectionTrigger, detail: str) -> None:
        new = next_connection_state(self._state, trigger)
        if new is self._state:
            return
        self._state, self._detail = new, detail
        if new in (_CS.CLOSED, _CS.REFUSED):
            self._next_stats = None
        self._emit(StateChanged(new, detail))

    def _start_attempt(self, now: float) -> None:
        """The supervisor's Connect: a fresh transport; fresh sessions once the pin is OK. A
        retry goes to the next node of the server's cluster, if it told us of others (they
        share its key: the same pin is checked), passing over nodes that are down
        (:data:`NODE_DOWN_S`) while one is not: a busy node's refusal must not send the retry
        to the node that has just died."""
        candidates = self._candidates
        if self._attempted and len(candidates) > 1:
            n = len(candidates)
            order = [(self._candidate + k) % n for k in range(1, n + 1)]  # ours comes last
            up = [i for i in order if self._down_until.get(candidates[i], now) <= now]
            self._candidate = (up or order)[0]
            self._host, self._port = candidates[self._candidate]
        self._attempted = True
        self._detach(now, abort=False)
        self._generation += 1
        self._attached = True
        self._session = self._secure = None
        self._presented_pin = None
        self._set_state(_CT.OPEN_TRANSPORT, f"{self._host}:{self._port}")
        self._emit(OpenTransport(self._host, self._port, self._generation))

    def _start_session(self, trigger: ConnectionTrigger, now: float) -> None:
        pin = self._expected_pin
        assert pin is not None
        identity = self._identity
        session = ClientSession(
            self.name, identity.public_bytes(), identity.sign, self._password, rng=self._rng
        )
        self._session = session
        self._secure = e2ee.SecureSession(
            session,
            identity,
            session.name,  # as sent: NFC-normalised
            self.tofu,
            pin,
            wall_clock=self._wall,
            rng=self._rng,
            keylog=self._keylog,
        )
        self._set_state(trigger, self.name)
        session.start(now)

    def _refuse(self, why: str, now: float) -> None:
        """Refuse the server's key: abort the transport (no application byte) and stop."""
        self._set_state(_CT.PIN_REFUSED, why)
        self._detach(now, abort=True)
        self._act(self._supervisor.handle_event(sv.PinRefused(why), now), now)

    def _detach(self, now: float, *, abort: bool) -> None:
        """Let go of the current transport: say Bye if the session can (unless ``abort``), hand
        the last bytes to the adapter with CloseTransport, forget the session's keys."""
        if not self._attached:
            return
        data = b""
        session = self._session
        if session is not None and not abort:
            if session.state in _CAN_SAY_BYE:
                session.close(now=now)
            data = session.data_to_send()
        self._attached = False
        self._udp_open = False
        self._udp_out.clear()
        self._udp_bound = False
        self._c2s = self._s2c = None
        if self._secure is not None:
            self._secure.close()  # every key of that session leaves RAM now
        self._emit(CloseTransport(self._generation, abort, data))

    # -- internals: the control session's events ---------------------------------------------------

    def _handle_session_events(
        self, events: list[ev.ClientEvent], now: float, *, transport_gone: bool = False
    ) -> None:
        """Route one batch of control-session events: to the E2E layer, the UI, the voice
        path, the redundancy policy and the supervisor, in that order. ``transport_gone``: the
        batch reports a transport that is already closed (nothing more can be written)."""
        if not events:
            return
        sec = self._secure
        # The E2E layer first (key upkeep takes milliseconds at login), so a LoggedIn or a join
        # reaches the UI right before the member view it implies, and a KeyDist in this batch
        # is in place before the tunnelled voice it keys is opened below.
        secure_events = sec.handle_events(events, now) if sec is not None else []
        closed = False
        logged_in: ev.LoggedIn | None = None
        for event in events:
            if isinstance(event, ev.VoiceTunnelReceived):
                self._voice_in(event.datagram, VoiceRoute.TUNNEL, now)
                continue
            if isinstance(event, ev.LoggedIn):
                self._logged_in(sec)
                logged_in = event
            elif isinstance(event, ev.LossReportReceived):
                report = LossReport(
                    event.listener_id, event.loss, event.burst, event.jitter_ms, event.frames
                )
                self._set_level(self._policy.add_report(event.listener_id, report, now))
            elif isinstance(event, ev.UserLeft):
                self._policy.forget(event.user.sender_id)
            elif isinstance(event, ev.ClusterNodesLearned):
                self._learn_nodes(event.nodes)
            elif isinstance(event, ev.ConnectionClosed):
                closed = True
            self._emit(event)
        self._emit_secure(secure_events)
        if logged_in is not None:
            # READY after the LoggedIn event and the member view it implies: whoever waits for
            # "ready" finds the roster and the members there.
            self._ready(logged_in)
            # The first talk spurt of the session starts with the cold-start protection.
            self._set_level(self._policy.level(now))
        if closed:
            # The session is over: the transport goes with it, before the supervisor decides
            # what comes next (a reconnect must never reuse it).
            self._detach(now, abort=transport_gone)
        sup = self._supervisor
        for event in events:
            self._act(sup.handle_event(event, now), now)

    def _learn_nodes(self, nodes: tuple[str, ...]) -> None:
        """The cluster's nodes: the user's server stays first, the one we are on stays where
        it is, the others follow in the order given."""
        current = (self._host, self._port)
        found: list[tuple[str, int]] = []
        for text in nodes:
            host, _, port = text.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if host and port.isdigit() and 0 < int(port) < 65536:
                found.append((host, int(port)))
        home = self._candidates[0] if self._candidates else current
        ordered = [home] + [c for c in dict.fromkeys([current, *found]) if c != home]
        self._candidates = ordered
        self._candidate = ordered.index(current)

    @property
    def cluster_nodes(self) -> tuple[tuple[str, int], ...]:
        """Where this connection may go: the user's server, then its cluster's other nodes."""
        return tuple(self._candidates)

    def _logged_in(self, secure: e2ee.SecureSession | None) -> None:
        # The hop keys come from the E2E layer, which derived them once from the hop secret.
        macs = secure.hop_macs if secure is not None else None
        if macs is None:  # pragma: no cover - SecureSession handled LoggedIn just before
            raise LocalProtocolError("LoggedIn without hop keys")
        self._c2s, self._s2c = macs
        self._down_until.pop((self._host, self._port), None)
        self._policy.new_session()  # listeners' ids are this login's from now on
        self._hop_seq = 0
        self._hop_window = ReplayWindow()
        self._udp_sent = self._udp_received = self._udp_lost = 0
        self._udp_jitter_ms = 0.0

    def _ready(self, event: ev.LoggedIn) -> None:
        self._set_state(_CT.LOGGED_IN, f"logged in as {self.name}")
        if self._force_tunnel:
            self._apply_voice_transport(True)
        if event.udp_port:
            self._udp_open = True
            self._emit(OpenUdp(self._host, event.udp_port, self._generation))

    def _emit_secure(self, events: list[e2ee.SecureEvent]) -> None:
        trust_changed = False
        for event in events:
            if isinstance(event, e2ee.VoiceReleased):
                self._emit(VoiceReceived(event.frame, VoiceRoute.RELEASED))
                continue
            if isinstance(event, e2ee.PeerTrust):
                trust_changed = True  # a new pin, or a change recorded beside it
            self._emit(event)
        if trust_changed:
            self._emit(SaveTrustStore())

    def _set_level(self, level: RedundancyLevel) -> None:
        if level != self._level:
            self._level = level
            self._emit(RedundancyChanged(level))

    # -- internals: voice and hop control ----------------------------------------------------------

    def _voice_in(self, data: bytes, route: VoiceRoute, now: float) -> None:
        self._datagrams_in += 1
        self._bytes_in += len(data)
        if route is VoiceRoute.TUNNEL:
            self._tunnel_datagrams_in += 1
        sec = self._secure
        if sec is None:
            return
        frame = sec.open_voice(data, now)
        if frame is not None:
            self._emit(VoiceReceived(frame, route))

    def _send_voice_datagram(self, datagram: bytes) -> None:
        self._datagrams_out += 1
        self._bytes_out += len(datagram)
        if self._transport is VoiceTransport.TUNNEL or not self._udp_bound:
            session = self._session
            if session is not None:
                session.send_voice_tunnel(datagram)
        else:
            self._queue_udp(datagram)

    def _queue_udp(self, datagram: bytes) -> None:
        if self._udp_open:
            self._udp_out.append(datagram)
            self._udp_sent += 1

    def _hop_next(self) -> tuple[HopMac, int, int] | None:
        """(K_c2s, our sender id, the next hop-control seq) for one hop-control datagram, or
        None when there is no UDP path to send it on. The seq is a u32, never reused."""
        c2s, session = self._c2s, self._session
        sid = None if session is None else session.sender_id
        if c2s is None or sid is None or not self._udp_open or self._hop_seq >= hopctl.SEQ_LIMIT:
            return None
        seq = self._hop_seq
        self._hop_seq += 1
        return c2s, sid, seq

    # -- internals: the supervisor -----------------------------------------------------------------

    def _act(self, actions: list[sv.SupervisorAction], now: float) -> None:
        """Carry out what the supervisor decided, in order."""
        for action in actions:
            if isinstance(action, sv.Connect):
                self._start_attempt(now)
            elif isinstance(action, sv.Disconnect):
                self._detach(now, abort=False)
            elif isinstance(action, sv.SendBind):
                if (hop := self._hop_next()) is not None:
                    self._queue_udp(hopctl.encode_bind(*hop))
            elif isinstance(action, sv.SendBindConfirm):
                if (hop := self._hop_next()) is not None:
                    self._queue_udp(hopctl.encode_bind_confirm(*hop, action.challenge))
            elif isinstance(action, sv.SendUdpPing):
                if (hop := self._hop_next()) is not None:
                    self._queue_udp(hopctl.encode_ping(*hop, action.client_time_ms))
            elif isinstance(action, sv.SetVoiceTransport):
                self._set_voice_transport(action.tunnel)
            elif isinstance(action, sv.SetSelfState):
                session = self._ready_session()
                if session is not None:
                    session.set_self_state(action.muted, action.deafened)
            elif isinstance(action, sv.JoinChannel):
                session = self._ready_session()
                if session is not None:
                    session.join(action.channel_id, action.password)
            elif isinstance(action, sv.LeaveChannel):
                session = self._ready_session()
                if session is not None:
                    session.leave(action.channel_id)
            elif isinstance(action, sv.StateChanged):
                # CONNECTING and CONNECTED are ours already (Connect, LoggedIn); STOPPED comes
                # with Stopped, which says why.
                if action.state is sv.ConnState.WAITING:
                    self._set_state(_CT.LOST, action.message)
            elif isinstance(action, sv.Stopped):
                self._set_state(_CT.STOPPED, action.message)
                self._emit(action)
            elif isinstance(action, _UI_ACTIONS):
                self._emit(action)

    def _set_voice_transport(self, tunnel: bool) -> None:
        """The supervisor's decision (the user's forced tunnel overrides a UDP one)."""
        self._udp_bound = not tunnel
        self._apply_voice_transport(tunnel or self._force_tunnel)

    def _apply_voice_transport(self, tunnel: bool) -> None:
        session = self._ready_session()
        if session is not None:
            session.set_voice_transport(tunnel)
        transport = VoiceTransport.TUNNEL if tunnel else VoiceTransport.UDP
        if transport is not self._transport:
            self._transport = transport
            self._emit(TransportChanged(transport))

    # -- internals: the stats tick -----------------------------------------------------------------

    def _stats_tick(self, now: float) -> None:
        self._next_stats = now + self._stats_interval
        then, b_in, b_out = self._stats_mark
        span = now - then if now > then else self._stats_interval
        self._stats_mark = (now, self._bytes_in, self._bytes_out)
        link = self._supervisor.stats
        on_udp = self._transport is VoiceTransport.UDP and self._udp_bound
        rtt = link.udp_srtt_ms if on_udp else None
        self._emit(
            Stats(
                transport=self._transport,
                rtt_ms=rtt if rtt is not None else link.tls_srtt_ms,
                loss=link.udp_ping_loss,
                kbps_out=(self._bytes_out - b_out) * 8 / 1000 / span,
                kbps_in=(self._bytes_in - b_in) * 8 / 1000 / span,
                datagrams_in=self._datagrams_in,
                datagrams_out=self._datagrams_out,
            )
        )
        # Reports age out of the policy's hold window: the level falls without new reports.
        self._set_level(self._policy.level(now))
        session = self._ready_session()
        if session is not None:
            session.report_udp_stats(
                sent=self._udp_sent,
                received=self._udp_received,
                lost=self._udp_lost,
                rtt_ms=link.udp_srtt_ms or 0.0,
                jitter_ms=self._udp_jitter_ms,
            )
