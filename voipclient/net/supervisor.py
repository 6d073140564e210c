"""The connection supervisor: when to (re)connect, what to restore, which path voice takes. Sans-IO.

A thin adapter (the network thread owning the TLS socket, the UDP socket, the
:class:`~voipclient.net.client.ClientSession` and the :class:`~voipclient.net.e2ee.SecureSession`)
drives it aioquic style; the supervisor never touches a socket or a clock::

    sup = ConnectionSupervisor(rng=random.random)
    act(sup.handle_event(Open(), now))              # → Connect(attempt=1)
    ...
    act(sup.handle_event(client_event, now))        # every ClientSession event, unchanged
    act(sup.handle_event(UdpBindOk(), now))         # what the UDP socket saw (hop MAC verified)
    act(sup.handle_timer(now))                      # when get_timer() is due (early is fine)

``handle_event`` and ``handle_timer`` return the :class:`SupervisorAction` list the adapter carries
out, in order. They never raise: an event that means nothing in the current state (a late PONG
after a disconnect, a second ``Open``) is ignored. ``get_timer()`` is never earlier than the
latest ``now`` handed in.

Connection states (:class:`ConnState`) and the one transition table (:data:`TRANSITIONS`)::

    IDLE ──Open──► CONNECTING ──LoggedIn──► CONNECTED
                      │  ▲                     │
     TransportFailed, │  │ timer (backoff,      │ ConnectionClosed (not fatal),
     ConnectionClosed,│  │ or shutdown delay)   │ ServerShuttingDown + ConnectionClosed
     connect timeout  ▼  │                      ▼
                     WAITING ◄──────────────────┘
    fatal (PinRefused, bad password, kicked/banned, name taken, replaced, …) or Close ─► STOPPED
    STOPPED / WAITING ──Open──► CONNECTING (the user asks again; backoff starts over)

* **Backoff**: the n-th consecutive failure waits ``min(cap, base·2ⁿ)·(1 - jitter·rng())``
  (defaults 1 s doubling to 30 s, jitter 0.2: 1, 2, 4, 8, 16, 30, 30, … shortened by up to 20 %).
  A session that stayed up ``stable_after`` seconds (60) resets the count. Never gives up; only the
  user (:class:`Close`) or a fatal refusal stops it, with a :class:`Stopped` that says why.
* **Restore**: every :class:`Connect` means a fresh ClientSession and SecureSession, so session
  keys and sender keys rotate by themselves (a new session is a new generation for everyone).
  After a re-login the supervisor emits what the user had: :class:`SetSelfState`,
  :class:`LeaveChannel` for channels the server put us in that the user had left,
  :class:`JoinChannel` (with the password the user had used) for the memberships it tracked from
  ``MembershipChanged`` (resolved in the new roster by id and name, else by name, else
  :class:`RestoreSkipped`), then :class:`ApplyLocalSettings` with the opaque snapshot
  (volumes, mutes, push-to-talk bindings) last handed in by :class:`LocalSettingsChanged`.
* **Voice path** (:class:`VoicePath`): after login, BIND (hop control) every ``bind_retry`` s;
  BIND_OK → UDP; nothing within ``bind_timeout`` s → TUNNEL (:class:`SetVoiceTransport`
  ``tunnel=True``) and a BIND probe every ``probe_interval`` s; BIND_OK or PONG → back to UDP. On
  UDP a PING every ``udp_ping_interval`` s; when nothing arrived over UDP for ``udp_silence`` s
  while the control channel's pings still came back after that, → TUNNEL. A server without UDP
  (``udp_port`` 0) → TUNNEL without probes. :attr:`ConnectionSupervisor.stats` has RTT and loss.
* **Server shutdown**: ``ServerShuttingDown(reconnect_after_ms)`` then ``ConnectionClosed`` →
  reconnect after that delay (plus up to ``shutdown_spread`` s from the rng, so a restarted server
  is not hit by every client in the same millisecond); ``reconnect_after_ms=None`` means "don't
  come back by yourself" → :class:`Stopped`.

The adapter answers what only it can do: it opens the TLS connection and checks the pin
(:class:`PinRefused`, :class:`TransportFailed`), encodes hop-control datagrams with its hop keys
and seq, and reports received datagrams whose hop MAC verified. After a :class:`Disconnect`, a
``ConnectionClosed`` or a :class:`TransportFailed` it drops that connection and feeds nothing
more from it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from voipclient.net import events as ev
from voipclient.net.messages import ErrorCode

__all__ = [
    "TRANSITIONS",
    "ApplyLocalSettings",
    "ChannelPasswordUsed",
    "Close",
    "ConnState",
    "Connect",
    "ConnectionSupervisor",
    "Disconnect",
    "FailureKind",
    "JoinChannel",
    "LeaveChannel",
    "LinkStats",
    "LocalSettingsChanged",
    "Open",
    "PinApprovalPending",
    "PinApproved",
    "PinRefused",
    "ReconnectScheduled",
    "RestoreSkipped",
    "SelfStateChanged",
    "SendBind",
    "SendBindConfirm",
    "SendUdpPing",
    "SetSelfState",
    "SetVoiceTransport",
    "StateChanged",
    "StopReason",
    "Stopped",
    "SupervisorAction",
    "SupervisorConfig",
    "SupervisorEvent",
    "TransportFailed",
    "UdpBindOk",
    "UdpChallenge",
    "UdpDatagramReceived",
    "UdpPong",
    "VoicePath",
    "explain_failure",
]


# =============================================================================================
# States
# =============================================================================================


class ConnState(enum.Enum):
    """Where the supervisor is in the connection's life."""

    #: Nothing asked yet.
    IDLE = "idle"
    #: A Connect was issued: TLS, pin check, negotiation, login, roster.
    CONNECTING = "connecting"
    #: Logged in (ClientSession READY).
    CONNECTED = "connected"
    #: Disconnected, waiting for the backoff (or the server's shutdown delay) to end.
    WAITING = "waiting"
    #: No more reconnects: the user closed it or the server refused us for good.
    STOPPED = "stopped"


class VoicePath(enum.Enum):
    """How voice travels while CONNECTED."""

    #: Not connected.
    NONE = "none"
    #: Hop-control BIND in progress; incoming voice flows once decided. Send our voice through
    #: the TLS tunnel meanwhile (the relay always accepts tunnelled voice).
    BINDING = "binding"
    #: UDP, address validated.
    UDP = "udp"
    #: The TLS tunnel; UDP is re-probed every ``probe_interval`` seconds.
    TUNNEL = "tunnel"
    #: The TLS tunnel; the server has no UDP (``udp_port`` 0), so no probes.
    TUNNEL_ONLY = "tunnel_only"


class StopReason(enum.Enum):
    """Why the supervisor stopped reconnecting."""

    USER_CLOSED = "user_closed"
    #: The server's key does not match the stored pin, or the user rejected a new pin.
    PIN_REFUSED = "pin_refused"
    BAD_PASSWORD = "bad_password"  # noqa: S105 -- a reason name, not a password
    #: Kicked or banned by an administrator (the server uses KICKED for both; its message says).
    KICKED = "kicked"
    #: The name is bound to another identity key on this server.
    NAME_TAKEN = "name_taken"
    #: The server did not accept our login signature.
    IDENTITY_REJECTED = "identity_rejected"
    #: The same identity logged in elsewhere and replaced this session.
    REPLACED = "replaced"
    UNSUPPORTED_VERSION = "unsupported_version"
    #: The server shut down and asked clients not to come back by themselves.
    SERVER_SHUTDOWN = "server_shutdown"
    #: The first attempt after the user's Open failed: the server was never reached, so there
    #: is nothing to restore and retrying a typo'd host would only hide the reason.
    UNREACHABLE = "unreachable"


class FailureKind(enum.Enum):
    """Why a TCP/TLS connection could not be made (the adapter classifies its socket error)."""

    REFUSED = "refused"
    NO_ROUTE = "no_route"
    NAME_NOT_FOUND = "name_not_found"
    TIMEOUT = "timeout"
    TLS = "tls"
    #: The connection opened, then closed before login.
    CLOSED = "closed"
    OTHER = "other"


#: What to check, per failure kind ({host} and {port} are filled in).
FAILURE_ADVICE: Final[Mapping[FailureKind, str]] = {
    FailureKind.REFUSED: (
        "Nothing is listening on port {port} of {host}: check the port number, and that the "
        "server is running."
    ),
    FailureKind.NO_ROUTE: (
        "{host} cannot be reached from this network: check the address, your connection, and "
        "any firewall or VPN in between."
    ),
    FailureKind.NAME_NOT_FOUND: (
        "No computer is called {host}: check the spelling of the address (and your DNS)."
    ),
    FailureKind.TIMEOUT: (
        "{host} did not answer on port {port}: check the address and port, and that a firewall "
        "or the router lets TCP and UDP port {port} through."
    ),
    FailureKind.TLS: (
        "The secure connection could not be set up: check that {host}:{port} is a voipclient "
        "server and not another service on that port."
    ),
    FailureKind.CLOSED: (
        "The server closed the connection before login: check that {host}:{port} is a "
        "voipclient server, and try again later if it is busy."
    ),
    FailureKind.OTHER: "Check the address and port, and your network connection.",
}


def explain_failure(kind: FailureKind, host: str, port: int) -> str:
    """What to check after a connection of ``kind`` failed, in one or two sentences."""
    return FAILURE_ADVICE[kind].format(host=host, port=port or "?")


#: Error codes after which reconnecting would only repeat the refusal, and what to tell the user.
FATAL_CODES: Final[Mapping[int, tuple[StopReason, str]]] = {
    ErrorCode.WRONG_PASSWORD: (
        StopReason.BAD_PASSWORD,
        "the server password is wrong or missing; enter the right one and connect again",
    ),
    ErrorCode.KICKED: (
        StopReason.KICKED,
        "an administrator removed you from the server; not reconnecting by itself",
    ),
    ErrorCode.NAME_TAKEN: (
        StopReason.NAME_TAKEN,
        "this name belongs to another identity key on this server; choose another name",
    ),
    ErrorCode.BAD_SIGNATURE: (
        StopReason.IDENTITY_REJECTED,
        "the server rejected our identity signature",
    ),
    ErrorCode.SESSION_REPLACED: (
        StopReason.REPLACED,
        "this account logged in from somewhere else; not reconnecting so the two don't fight",
    ),
    ErrorCode.UNSUPPORTED_VERSION: (
        StopReason.UNSUPPORTED_VERSION,
        "the server speaks no protocol version we know; update voipclient",
    ),
}


# =============================================================================================
# Events (adapter → supervisor). ClientSession events are handed in unchanged as well.
# =============================================================================================


class SupervisorEvent:
    """Base class of the events the adapter reports (besides ClientSession's own events)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Open(SupervisorEvent):
    """The user wants to be connected (also: "reconnect now" while waiting or stopped)."""

    #: Where to (for the advice when the first contact fails); optional.
    host: str = ""
    port: int = 0


@dataclass(frozen=True, slots=True)
class Close(SupervisorEvent):
    """The user closes the connection: stop, and never reconnect by itself."""


@dataclass(frozen=True, slots=True)
class TransportFailed(SupervisorEvent):
    """The TCP/TLS connection could not be made or broke before a ClientSession existed."""

    #: What failed, for the log and the UI.
    message: str
    #: Its kind, from the adapter's socket error.
    kind: FailureKind = FailureKind.OTHER
    #: What to check (from :func:`explain_failure`); shown when the server was never reached.
    advice: str = ""


@dataclass(frozen=True, slots=True)
class PinRefused(SupervisorEvent):
    """The server's key mismatches the stored pin, or the user rejected a new one (fatal)."""

    #: The pin store's message (names both pins and what to do).
    message: str


@dataclass(frozen=True, slots=True)
class PinApprovalPending(SupervisorEvent):
    """First contact: the UI is asking the user about the pin; the connect timeout pauses."""


@dataclass(frozen=True, slots=True)
class PinApproved(SupervisorEvent):
    """The user approved the pin; the connect timeout runs again from now."""


@dataclass(frozen=True, slots=True)
class ChannelPasswordUsed(SupervisorEvent):
    """The user joined ``channel_id`` with ``password``: reuse it when restoring the join."""

    channel_id: int
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SelfStateChanged(SupervisorEvent):
    """The user's self-mute / deafen, to announce again after a reconnect."""

    muted: bool
    deafened: bool


@dataclass(frozen=True, slots=True)
class LocalSettingsChanged(SupervisorEvent):
    """The latest snapshot of local settings (volumes, mutes, PTT bindings); opaque here."""

    settings: object


@dataclass(frozen=True, slots=True)
class UdpChallenge(SupervisorEvent):
    """A hop-control CHALLENGE arrived (MAC and replay window checked)."""

    challenge: bytes


@dataclass(frozen=True, slots=True)
class UdpBindOk(SupervisorEvent):
    """A hop-control BIND_OK arrived: our UDP address is validated, UDP works both ways."""


@dataclass(frozen=True, slots=True)
class UdpPong(SupervisorEvent):
    """A hop-control PONG arrived (``hopctl.decode_pong`` of its body)."""

    client_time_ms: int
    received: int


@dataclass(frozen=True, slots=True)
class UdpDatagramReceived(SupervisorEvent):
    """A voice datagram arrived over UDP and its hop MAC verified (UDP is alive)."""


# =============================================================================================
# Actions (supervisor → adapter)
# =============================================================================================


class SupervisorAction:
    """Base class of what the supervisor asks the adapter to do or show."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StateChanged(SupervisorAction):
    """For the UI: the connection state changed."""

    state: ConnState
    message: str = ""


@dataclass(frozen=True, slots=True)
class Connect(SupervisorAction):
    """Open the TLS connection, check the pin, and start a *fresh* ClientSession and
    SecureSession (new session key and sender keys: keys rotate by themselves)."""

    #: 1 for the first try after Open or after a stable session, then 2, 3, …
    attempt: int


@dataclass(frozen=True, slots=True)
class Disconnect(SupervisorAction):
    """Close the current connection (``ClientSession.close(reason)``, flush, close sockets)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ReconnectScheduled(SupervisorAction):
    """For the UI: the next :class:`Connect` comes at ``at`` (adapter clock), ``delay`` s away."""

    at: float
    delay: float
    attempt: int
    #: Why the last connection ended.
    why: str


@dataclass(frozen=True, slots=True)
class Stopped(SupervisorAction):
    """No more reconnects until the user opens again; ``message`` says why and what to do."""

    reason: StopReason
    message: str


@dataclass(frozen=True, slots=True)
class SetSelfState(SupervisorAction):
    """Restore: ``ClientSession.set_self_state(muted, deafened)``."""

    muted: bool
    deafened: bool


@dataclass(frozen=True, slots=True)
class JoinChannel(SupervisorAction):
    """Restore: ``ClientSession.join(channel_id, password)``."""

    channel_id: int
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class LeaveChannel(SupervisorAction):
    """Restore: ``ClientSession.leave(channel_id)`` (the server put us there; the user had left)."""

    channel_id: int


@dataclass(frozen=True, slots=True)
class RestoreSkipped(SupervisorAction):
    """For the UI: a channel the user was in could not be restored."""

    channel_name: str
    why: str


@dataclass(frozen=True, slots=True)
class ApplyLocalSettings(SupervisorAction):
    """Restore: apply the snapshot last given by :class:`LocalSettingsChanged` (user volumes are
    keyed however the adapter keyed them: sender ids change across sessions, names do not)."""

    settings: object


@dataclass(frozen=True, slots=True)
class SendBind(SupervisorAction):
    """Send a hop-control BIND over UDP (``hopctl.encode_bind``, next seq)."""


@dataclass(frozen=True, slots=True)
class SendBindConfirm(SupervisorAction):
    """Send BIND_CONFIRM echoing ``challenge`` (``hopctl.encode_bind_confirm``)."""

    challenge: bytes


@dataclass(frozen=True, slots=True)
class SendUdpPing(SupervisorAction):
    """Send a hop-control PING carrying ``client_time_ms`` (``hopctl.encode_ping``)."""

    client_time_ms: int


@dataclass(frozen=True, slots=True)
class SetVoiceTransport(SupervisorAction):
    """Send and receive voice over the TLS tunnel (True) or UDP (False):
    ``ClientSession.set_voice_transport(tunnel)`` and route our own datagrams the same way."""

    tunnel: bool


# =============================================================================================
# Configuration and statistics
# =============================================================================================


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Every delay, in seconds."""

    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    #: Each delay is shortened by up to this fraction (rng() in [0, 1)).
    backoff_jitter: float = 0.2
    #: A session up this long resets the backoff.
    stable_after: float = 60.0
    #: From Connect to LoggedIn (paused while the user decides on a pin).
    connect_timeout: float = 20.0
    bind_retry: float = 1.0
    bind_timeout: float = 3.0
    probe_interval: float = 12.0
    udp_ping_interval: float = 3.0
    udp_silence: float = 8.0
    #: Pings kept for the loss figure.
    loss_window: int = 20
    #: Up to this much is added (rng) to the server's shutdown delay.
    shutdown_spread: float = 2.0
    #: Retry with backoff also when the first attempt after Open fails (the server was never
    #: reached). Off for people (a typo would retry forever); on for bots that start before
    #: their server.
    retry_unreached: bool = False

    def __post_init__(self) -> None:
        positive = (
            self.backoff_base,
            self.backoff_cap,
            self.stable_after,
            self.connect_timeout,
            self.bind_retry,
            self.bind_timeout,
            self.probe_interval,
            self.udp_ping_interval,
            self.udp_silence,
        )
        if not all(x > 0 for x in positive) or self.backoff_cap < self.backoff_base:
            raise ValueError("supervisor delays must be > 0 and backoff_cap >= backoff_base")
        if not 0 <= self.backoff_jitter < 1 or self.shutdown_spread < 0 or self.loss_window < 1:
            raise ValueError("backoff_jitter in [0, 1), shutdown_spread >= 0, loss_window >= 1")


@dataclass(frozen=True, slots=True)
class LinkStats:
    """The voice path's health, for the UI and ``ClientSession.report_udp_stats``."""

    path: VoicePath
    #: Latest UDP hop RTT and its RFC 6298 smoothed value and variation, milliseconds.
    udp_rtt_ms: float | None
    udp_srtt_ms: float | None
    udp_rttvar_ms: float
    udp_pings_sent: int
    udp_pongs_received: int
    #: Unanswered fraction of the last ``loss_window`` PINGs that had time to be answered.
    udp_ping_loss: float | None
    #: The relay's count of our hop-MAC-valid UDP datagrams (from the latest PONG).
    relay_received: int | None
    #: The control channel's smoothed RTT (ClientSession's PingStats), milliseconds.
    tls_srtt_ms: float | None
    #: Consecutive failed connection attempts.
    failures: int


# =============================================================================================
# The transition table
# =============================================================================================

_ANY: Final = frozenset(ConnState)
_LIVE: Final = frozenset((ConnState.CONNECTING, ConnState.CONNECTED))

#: (event type, states in which it is handled, method name). An event in any other state is
#: ignored. Which state follows depends on the event's content and is done by the method.
TRANSITIONS: Final[tuple[tuple[type[Any], frozenset[ConnState], str], ...]] = (
    (Open, frozenset((ConnState.IDLE, ConnState.WAITING, ConnState.STOPPED)), "_on_open"),
    (Close, _ANY - {ConnState.STOPPED}, "_on_close"),
    (TransportFailed, frozenset((ConnState.CONNECTING,)), "_on_transport_failed"),
    (PinRefused, frozenset((ConnState.CONNECTING,)), "_on_pin_refused"),
    (PinApprovalPending, frozenset((ConnState.CONNECTING,)), "_on_pin_pending"),
    (PinApproved, frozenset((ConnState.CONNECTING,)), "_on_pin_approved"),
    (ev.LoggedIn, frozenset((ConnState.CONNECTING,)), "_on_logged_in"),
    (ev.ServerShuttingDown, _LIVE, "_on_shutdown_notice"),
    (ev.ConnectionClosed, _LIVE, "_on_closed"),
    (ev.MembershipChanged, frozenset((ConnState.CONNECTED,)), "_on_membership"),
    (ev.ChannelRemoved, frozenset((ConnState.CONNECTED,)), "_on_channel_removed"),
    (ev.RosterChanged, frozenset((ConnState.CONNECTED,)), "_on_roster"),
    (ev.ServerError, frozenset((ConnState.CONNECTED,)), "_on_server_error"),
    (ev.PingStats, frozenset((ConnState.CONNECTED,)), "_on_tls_ping"),
    (ChannelPasswordUsed, _ANY, "_on_channel_password"),
    (SelfStateChanged, _ANY, "_on_self_state"),
    (LocalSettingsChanged, _ANY, "_on_local_settings"),
    (UdpChallenge, frozenset((ConnState.CONNECTED,)), "_on_udp_challenge"),
    (UdpBindOk, frozenset((ConnState.CONNECTED,)), "_on_udp_bind_ok"),
    (UdpPong, frozenset((ConnState.CONNECTED,)), "_on_udp_pong"),
    (UdpDatagramReceived, frozenset((ConnState.CONNECTED,)), "_on_udp_datagram"),
)

_DISPATCH: Final[dict[type[Any], tuple[frozenset[ConnState], str]]] = {
    t: (states, name) for t, states, name in TRANSITIONS
}

#: Channel join failures after which the membership is not restored again.
_JOIN_FAILED: Final = frozenset(
    (ErrorCode.NO_SUCH_CHANNEL, ErrorCode.WRONG_CHANNEL_PASSWORD, ErrorCode.CHANNEL_FULL)
)


@dataclass(slots=True)
class _Membership:
    name: str
    password: str | None = field(default=None, repr=False)


class ConnectionSupervisor:
    """One server connection's supervisor, for the life of the window that shows it.

    Args:
        config: the delays (:class:`SupervisorConfig`).
        rng: uniform floats in [0, 1) for the jitter (``random.random``; tests pass a constant).
    """

    def __init__(self, config: SupervisorConfig | None = None, *, rng: Callable[[], float]) -> None:
        self.config: Final = config or SupervisorConfig()
        self._rng = rng
        self._state = ConnState.IDLE
        self._now = float("-inf")
        self._failures = 0
        self._attempt = 0
        self._stop: tuple[StopReason, str] | None = None
        #: Logged in at least once since the user's Open (reconnects only follow a reached server).
        self._reached = False
        self._where = ("the server", 0)
        # CONNECTING
        self._connect_deadline: float | None = None
        # WAITING
        self._reconnect_at: float | None = None
        self._shutdown_delay: float | None = None
        self._shutdown_no_return = False
        # CONNECTED
        self._sender_id: int | None = None
        self._connected_at = 0.0
        self._channel_names: dict[int, str] = {}
        # What the user had (survives reconnects). None until the first login.
        self._wanted: dict[int, _Membership] | None = None
        self._passwords: dict[int, str] = {}
        self._self_state = (False, False)
        self._local: object = None
        self._has_local = False
        # Voice path
        self._path = VoicePath.NONE
        self._bind_deadline = 0.0
        self._next_bind = 0.0
        self._next_probe = 0.0
        self._next_ping = 0.0
        self._last_udp_rx = 0.0
        self._last_tls_ok = float("-inf")
        self._ping_ms = 0
        self._pings: deque[tuple[int, float, bool]] = deque(maxlen=self.config.loss_window)
        self._pings_sent = 0
        self._pongs = 0
        self._rtt_ms: float | None = None
        self._srtt_ms: float | None = None
        self._rttvar_ms = 0.0
        self._relay_received: int | None = None
        self._tls_srtt_ms: float | None = None

    # -- read-only views ---------------------------------------------------------------------------

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def voice_path(self) -> VoicePath:
        return self._path

    @property
    def stop_reason(self) -> tuple[StopReason, str] | None:
        """Why the supervisor stopped (reason, message), while STOPPED."""
        return self._stop if self._state is ConnState.STOPPED else None

    @property
    def memberships(self) -> Mapping[int, str]:
        """The channels the user is in (id → name) as they will be restored."""
        return {cid: m.name for cid, m in (self._wanted or {}).items()}

    @property
    def stats(self) -> LinkStats:
        answered = [a for _ms, sent, a in self._pings if a or sent + self._pong_wait <= self._now]
        loss = None if not answered else 1.0 - sum(answered) / len(answered)
        return LinkStats(
            path=self._path,
            udp_rtt_ms=self._rtt_ms,
            udp_srtt_ms=self._srtt_ms,
            udp_rttvar_ms=self._rttvar_ms,
            udp_pings_sent=self._pings_sent,
            udp_pongs_received=self._pongs,
            udp_ping_loss=loss,
            relay_received=self._relay_received,
            tls_srtt_ms=self._tls_srtt_ms,
            failures=self._failures,
        )

    @property
    def _pong_wait(self) -> float:
        return self.config.udp_ping_interval

    # -- driving -----------------------------------------------------------------------------------

    def handle_event(
        self, event: SupervisorEvent | ev.ClientEvent, now: float
    ) -> list[SupervisorAction]:
        """Feed one event (ours or a ClientSession event); returns the actions, in order."""
        now = self._tick(now)
        entry = _DISPATCH.get(type(event))
        if entry is None or self._state not in entry[0]:
            return []
        out: list[SupervisorAction] = []
        getattr(self, entry[1])(event, now, out)
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due (adapter clock), or None."""
        state = self._state
        deadline: float | None = None
        if state is ConnState.CONNECTING:
            deadline = self._connect_deadline
        elif state is ConnState.WAITING:
            deadline = self._reconnect_at
        elif state is ConnState.CONNECTED:
            path = self._path
            if path is VoicePath.BINDING:
                deadline = min(self._next_bind, self._bind_deadline)
            elif path is VoicePath.UDP:
                deadline = self._next_ping
            elif path is VoicePath.TUNNEL:
                deadline = self._next_probe
        if deadline is None:
            return None
        return max(deadline, self._now)

    def handle_timer(self, now: float) -> list[SupervisorAction]:
        """Do what is due at ``now``. Calling it early does nothing."""
        now = self._tick(now)
        out: list[SupervisorAction] = []
        state = self._state
        if state is ConnState.CONNECTING:
            if self._connect_deadline is not None and now >= self._connect_deadline:
                why = f"no login within {self.config.connect_timeout:g} s"
                out.append(Disconnect(why))
                advice = explain_failure(FailureKind.TIMEOUT, *self._where)
                if not self._unreached(f"{why}. {advice}", out):
                    self._schedule(now, why, out)
        elif state is ConnState.WAITING:
            if self._reconnect_at is not None and now >= self._reconnect_at:
                self._connect(now, out)
        elif state is ConnState.CONNECTED:
            self._udp_timer(now, out)
        return out

    # -- connection handlers -----------------------------------------------------------------------

    def _tick(self, now: float) -> float:
        # A clock that steps back is treated as standing still: deadlines stay consistent.
        now = float(now)
        if not now >= self._now:  # also catches NaN
            now = self._now
        self._now = now
        return now

    def _on_open(self, e: Open, now: float, out: list[SupervisorAction]) -> None:
        if self._state is not ConnState.WAITING:
            self._reached = False
        if e.host:
            self._where = (e.host, e.port)
        if self._state is ConnState.STOPPED:
            self._failures = 0
        self._stop = None
        self._connect(now, out)

    def _on_close(self, _e: Close, now: float, out: list[SupervisorAction]) -> None:
        if self._state in _LIVE:
            out.append(Disconnect("closed by the user"))
        self._finish(StopReason.USER_CLOSED, "closed by the user", out)

    def _on_transport_failed(
        self, e: TransportFailed, now: float, out: list[SupervisorAction]
    ) -> None:
        if self._unreached(f"{e.message}. {e.advice}".rstrip(". ") + ".", out):
            return
        self._schedule(now, e.message, out)

    def _unreached(self, message: str, out: list[SupervisorAction]) -> bool:
        """Stop (UNREACHABLE) when this attempt never reached the server since the user's Open."""
        if self._reached or self.config.retry_unreached:
            return False
        self._finish(StopReason.UNREACHABLE, message, out)
        return True

    def _on_pin_refused(self, e: PinRefused, now: float, out: list[SupervisorAction]) -> None:
        out.append(Disconnect("server key refused"))
        self._finish(StopReason.PIN_REFUSED, e.message, out)

    def _on_pin_pending(
        self, _e: PinApprovalPending, now: float, out: list[SupervisorAction]
    ) -> None:
        self._connect_deadline = None

    def _on_pin_approved(self, _e: PinApproved, now: float, out: list[SupervisorAction]) -> None:
        self._connect_deadline = now + self.config.connect_timeout

    def _on_logged_in(self, e: ev.LoggedIn, now: float, out: list[SupervisorAction]) -> None:
        self._state = ConnState.CONNECTED
        self._reached = True
        self._connect_deadline = None
        self._shutdown_delay = None
        self._shutdown_no_return = False
        self._connected_at = now
        self._sender_id = e.sender_id
        self._channel_names = {cid: c.name for cid, c in e.roster.channels.items()}
        out.append(StateChanged(ConnState.CONNECTED))
        self._restore(e, out)
        self._reset_udp_stats()
        self._last_tls_ok = now
        if e.udp_port == 0:
            self._path = VoicePath.TUNNEL_ONLY
            out.append(SetVoiceTransport(tunnel=True))
        else:
            self._path = VoicePath.BINDING
            self._bind_deadline = now + self.config.bind_timeout
            self._send_bind(now, out)

    def _on_shutdown_notice(
        self, e: ev.ServerShuttingDown, now: float, out: list[SupervisorAction]
    ) -> None:
        if e.reconnect_after_ms is None:
            self._shutdown_no_return = True
        else:
            self._shutdown_delay = max(0.0, e.reconnect_after_ms / 1000.0)

    def _on_closed(self, e: ev.ConnectionClosed, now: float, out: list[SupervisorAction]) -> None:
        was_connected = self._state is ConnState.CONNECTED
        if was_connected and now - self._connected_at >= self.config.stable_after:
            self._failures = 0
        why = e.message or e.reason.value
        fatal = FATAL_CODES.get(e.code)
        if fatal is not None:
            reason, help_text = fatal
            detail = f"{e.message}: " if e.message else ""
            self._finish(reason, f"{detail}{help_text}", out)
            return
        if e.reason is ev.CloseReason.SHUTDOWN and self._shutdown_no_return:
            text = f"the server shut down ({why}) and asked clients not to reconnect by themselves"
            self._finish(StopReason.SERVER_SHUTDOWN, text, out)
            return
        if e.reason is ev.CloseReason.SHUTDOWN and self._shutdown_delay is not None:
            delay = self._shutdown_delay + self.config.shutdown_spread * self._rand()
            self._failures = 0
            self._wait(now, delay, f"server shutdown: {why}", out)
            return
        if not was_connected and self._unreached(f"the server closed the connection: {why}", out):
            return
        self._schedule(now, why, out)

    # -- restore -----------------------------------------------------------------------------------

    def _restore(self, e: ev.LoggedIn, out: list[SupervisorAction]) -> None:
        roster = e.roster
        current = set(roster.channels_of(e.sender_id))
        wanted = self._wanted
        if wanted is None:  # first login: nothing to restore, start tracking
            self._wanted = {
                cid: _Membership(self._channel_names.get(cid, str(cid)), self._passwords.get(cid))
                for cid in sorted(current)
            }
            return
        muted, deafened = self._self_state
        if muted or deafened:
            out.append(SetSelfState(muted, deafened))
        by_name: dict[str, list[int]] = {}
        for cid, c in roster.channels.items():
            by_name.setdefault(c.name.casefold(), []).append(cid)
        restored: dict[int, _Membership] = {}
        for old_id, mem in wanted.items():
            channel = roster.channels.get(old_id)
            if channel is not None and channel.name.casefold() == mem.name.casefold():
                new_id: int | None = old_id
            else:
                same = by_name.get(mem.name.casefold(), [])
                new_id = same[0] if len(same) == 1 else None
            if new_id is None:
                why = (
                    "the channel no longer exists"
                    if not by_name.get(mem.name.casefold())
                    else ("several channels now have that name")
                )
                out.append(RestoreSkipped(mem.name, why))
                continue
            if new_id in restored:
                continue
            restored[new_id] = mem
        for cid in sorted(current - restored.keys()):
            out.append(LeaveChannel(cid))
        for cid, mem in restored.items():
            if cid not in current:
                out.append(JoinChannel(cid, mem.password))
        self._passwords = {
            cid: mem.password for cid, mem in restored.items() if mem.password is not None
        }
        self._wanted = restored
        if self._has_local:
            out.append(ApplyLocalSettings(self._local))

    def _on_membership(
        self, e: ev.MembershipChanged, now: float, out: list[SupervisorAction]
    ) -> None:
        if e.sender_id != self._sender_id or self._wanted is None:
            return
        if e.joined:
            name = self._channel_names.get(e.channel_id, str(e.channel_id))
            self._wanted[e.channel_id] = _Membership(name, self._passwords.get(e.channel_id))
        else:
            self._wanted.pop(e.channel_id, None)

    def _on_channel_removed(
        self, e: ev.ChannelRemoved, now: float, out: list[SupervisorAction]
    ) -> None:
        self._channel_names.pop(e.channel.id, None)
        if self._wanted is not None:
            self._wanted.pop(e.channel.id, None)

    def _on_roster(self, e: ev.RosterChanged, now: float, out: list[SupervisorAction]) -> None:
        self._channel_names = {cid: c.name for cid, c in e.roster.channels.items()}
        if self._wanted is not None:
            for cid, mem in self._wanted.items():
                mem.name = self._channel_names.get(cid, mem.name)

    def _on_server_error(self, e: ev.ServerError, now: float, out: list[SupervisorAction]) -> None:
        # A restored join that the server refuses is not retried after the next reconnect.
        # (The server refuses only joins of channels we are not in, so nothing real is lost.)
        if e.channel_id is not None and e.code in _JOIN_FAILED and self._wanted is not None:
            self._wanted.pop(e.channel_id, None)
            self._passwords.pop(e.channel_id, None)

    def _on_tls_ping(self, e: ev.PingStats, now: float, out: list[SupervisorAction]) -> None:
        self._last_tls_ok = now
        self._tls_srtt_ms = e.srtt_ms

    def _on_channel_password(
        self, e: ChannelPasswordUsed, now: float, out: list[SupervisorAction]
    ) -> None:
        self._passwords[e.channel_id] = e.password
        if self._wanted is not None and e.channel_id in self._wanted:
            self._wanted[e.channel_id].password = e.password

    def _on_self_state(self, e: SelfStateChanged, now: float, out: list[SupervisorAction]) -> None:
        self._self_state = (bool(e.muted), bool(e.deafened))

    def _on_local_settings(
        self, e: LocalSettingsChanged, now: float, out: list[SupervisorAction]
    ) -> None:
        self._local = e.settings
        self._has_local = True

    # -- voice path --------------------------------------------------------------------------------

    def _on_udp_challenge(self, e: UdpChallenge, now: float, out: list[SupervisorAction]) -> None:
        # Only a bind we started is confirmed (BINDING, or a probe while on the tunnel).
        if self._path in (VoicePath.BINDING, VoicePath.TUNNEL):
            out.append(SendBindConfirm(bytes(e.challenge)))

    def _on_udp_bind_ok(self, _e: UdpBindOk, now: float, out: list[SupervisorAction]) -> None:
        self._udp_alive(now, out)

    def _on_udp_pong(self, e: UdpPong, now: float, out: list[SupervisorAction]) -> None:
        if self._path is VoicePath.TUNNEL_ONLY:
            return
        for i, (ms, sent, answered) in enumerate(self._pings):
            if ms == e.client_time_ms and not answered:
                self._pings[i] = (ms, sent, True)
                self._pongs += 1
                self._rtt_sample(max(0.0, (now - sent) * 1000.0))
                self._relay_received = e.received
                break
        else:
            if self._path is not VoicePath.UDP:
                return  # not a PONG to a PING of ours: proves nothing while not on UDP
        self._udp_alive(now, out)

    def _on_udp_datagram(
        self, _e: UdpDatagramReceived, now: float, out: list[SupervisorAction]
    ) -> None:
        if self._path is VoicePath.UDP:
            self._last_udp_rx = now

    def _udp_alive(self, now: float, out: list[SupervisorAction]) -> None:
        self._last_udp_rx = now
        if self._path in (VoicePath.BINDING, VoicePath.TUNNEL):
            self._path = VoicePath.UDP
            out.append(SetVoiceTransport(tunnel=False))
            self._send_ping(now, out)

    def _udp_timer(self, now: float, out: list[SupervisorAction]) -> None:
        cfg = self.config
        path = self._path
        if path is VoicePath.BINDING:
            if now >= self._bind_deadline:
                self._to_tunnel(now, out)
            elif now >= self._next_bind:
                self._send_bind(now, out)
        elif path is VoicePath.UDP:
            if now >= self._next_ping:
                silent = now - self._last_udp_rx >= cfg.udp_silence
                if silent and self._last_tls_ok > self._last_udp_rx:
                    self._to_tunnel(now, out)
                else:
                    self._send_ping(now, out)
        elif path is VoicePath.TUNNEL and now >= self._next_probe:
            out.append(SendBind())
            self._next_probe = now + cfg.probe_interval

    def _to_tunnel(self, now: float, out: list[SupervisorAction]) -> None:
        self._path = VoicePath.TUNNEL
        self._next_probe = now + self.config.probe_interval
        out.append(SetVoiceTransport(tunnel=True))

    def _send_bind(self, now: float, out: list[SupervisorAction]) -> None:
        out.append(SendBind())
        self._next_bind = now + self.config.bind_retry

    def _send_ping(self, now: float, out: list[SupervisorAction]) -> None:
        ms = max(self._ping_ms + 1, int(max(0.0, now) * 1000))
        self._ping_ms = ms
        self._pings.append((ms, now, False))
        self._pings_sent += 1
        self._next_ping = now + self.config.udp_ping_interval
        out.append(SendUdpPing(ms))

    def _rtt_sample(self, rtt_ms: float) -> None:
        self._rtt_ms = rtt_ms
        if self._srtt_ms is None:  # RFC 6298 §2.2
            self._srtt_ms = rtt_ms
            self._rttvar_ms = rtt_ms / 2
        else:  # §2.3, alpha 1/8, beta 1/4
            self._rttvar_ms = 0.75 * self._rttvar_ms + 0.25 * abs(self._srtt_ms - rtt_ms)
            self._srtt_ms = 0.875 * self._srtt_ms + 0.125 * rtt_ms

    def _reset_udp_stats(self) -> None:
        self._pings.clear()
        self._rtt_ms = self._srtt_ms = None
        self._rttvar_ms = 0.0
        self._relay_received = None

    # -- lifecycle helpers -------------------------------------------------------------------------

    def _rand(self) -> float:
        x = float(self._rng())
        return x if 0.0 <= x < 1.0 else 0.0

    def backoff_delay(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures (before jitter): min(cap, base·2ⁿ)."""
        cfg = self.config
        if failures >= 64:
            return cfg.backoff_cap
        return float(min(cfg.backoff_cap, cfg.backoff_base * (1 << failures)))

    def _leave_connected(self) -> None:
        self._path = VoicePath.NONE
        self._sender_id = None
        self._connect_deadline = None

    def _connect(self, now: float, out: list[SupervisorAction]) -> None:
        self._leave_connected()
        self._state = ConnState.CONNECTING
        self._reconnect_at = None
        self._shutdown_delay = None
        self._shutdown_no_return = False
        self._connect_deadline = now + self.config.connect_timeout
        self._attempt = self._failures + 1
        out.append(StateChanged(ConnState.CONNECTING))
        out.append(Connect(self._attempt))

    def _schedule(self, now: float, why: str, out: list[SupervisorAction]) -> None:
        delay = self.backoff_delay(self._failures) * (
            1.0 - self.config.backoff_jitter * self._rand()
        )
        self._failures += 1
        self._wait(now, delay, why, out)

    def _wait(self, now: float, delay: float, why: str, out: list[SupervisorAction]) -> None:
        self._leave_connected()
        self._state = ConnState.WAITING
        self._reconnect_at = now + delay
        out.append(StateChanged(ConnState.WAITING, why))
        out.append(ReconnectScheduled(now + delay, delay, self._failures + 1, why))

    def _finish(self, reason: StopReason, message: str, out: list[SupervisorAction]) -> None:
        self._leave_connected()
        self._state = ConnState.STOPPED
        self._reconnect_at = None
        self._stop = (reason, message)
        out.append(StateChanged(ConnState.STOPPED, message))
        out.append(Stopped(reason, message))
