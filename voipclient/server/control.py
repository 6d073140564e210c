"""The relay server's control plane, sans-IO: every connection's session plus the shared roster.

The asyncio adapter (``voipclient.server``) owns the listening TLS socket, the UDP socket and the
clock. It numbers connections itself and drives the core::

    core.connection_made(conn_id, now, address)  # address: the peer's IP, no port (optional)
    core.receive_data(conn_id, data, now)
    core.connection_lost(conn_id, now)
    core.handle_timer(now)                     # when get_timer() is due
    for conn_id, data in core.outgoing(): write(conn_id, data)
    for event in core.events(): ...            # SessionAuthenticated, SessionClosed, ...

after each of which it writes what ``outgoing()`` returns and handles ``events()``. The UDP relay
asks the core :meth:`ServerCore.session_by_sender_id`, :meth:`ServerCore.may_speak` and
:meth:`ServerCore.listeners`, and reports valid datagrams with
:meth:`ServerCore.note_udp_received` (the count goes back to clients in Pong).

Policies (documented in docs/protocol.md):

* **Lobby.** Channel 1, "Lobby" by default, is the root of the tree. Every user is a member of
  it right after login (announced inside UserJoined, not as a MembershipChanged); a user may leave
  it like any channel. It has no password and no member limit.
* **Names.** A name must pass :func:`voipclient.names.check_name` (no invisible, bidi, format or
  control characters, NFC, one script, single inner spaces), else the login gets a fatal
  INVALID_NAME. Names are compared by their account key (:func:`voipclient.names.name_key`: the
  confusable skeleton of the casefolded name, so ``bob``, ``Bob`` and ``BOB`` in Greek capitals
  are one account). A key is bound to the identity key that first logged in with it, for the
  life of the server run (``name_bindings``, a dict the adapter may persist and pass back in).
  Another identity key → NAME_TAKEN. The same key while a session with that name is
  connected → the old session gets a fatal SESSION_REPLACED error and leaves (UserLeft reason
  REPLACED) and the new login proceeds: that is how a client reconnects over a dead connection.
* **Sender ids** count up from 1 and are never reused within a run; the hop secret is 32 bytes
  from ``rng``.
* **Memberships.** A user may be a member of up to ``max_memberships`` channels at once and
  hears all of them; it may speak in those whose ACL (``ChannelConfig.speakers``) names it, or in
  all of them when the ACL is None.
* **Relaying.** KeyDist goes only to the named recipients that are connected and members of the
  channel; Text to the channel's members except the sender; both require the sender to be a
  member. Voice from the tunnel is handed to the adapter (``VoiceFromTunnel``): fan-out is the
  UDP relay's job, with the same checks as for UDP.
* **Abuse.** Malformed input, a message not allowed in the session's state, or a control message
  beyond the token bucket (``rate_per_s``/``rate_burst``) → a fatal Error frame to that session and
  it is closed; other sessions are unaffected. Tunnelled voice has its own bucket
  (``tunnel_rate_per_s``) and excess datagrams are dropped, not punished (voice is bursty).
* **Relayed bytes.** What the server sends on a session's behalf (KeyDist: every split part it
  delivers; Text: blob size times recipients) is charged to a second per-session bucket, in bytes
  (``relay_bytes_per_s``/``relay_bytes_burst``): a request it cannot pay for is a fatal
  RATE_LIMITED, like the message bucket, and nothing of it is relayed. Few large messages to many
  members would otherwise turn the message bucket into an egress amplifier.
* **KeyDist bounds.** A KeyDist must be one *full batch*: as many envelopes as table rows, at
  most ``keydist.MAX_RECIPIENTS`` (64), and its ``recipients`` list the same set as the table's
  recipient ids; anything else is a fatal MALFORMED_MESSAGE. A big table with few envelopes
  would make the per-recipient split copy the whole table to every recipient.
* **Bans.** ``is_banned(ik_pub)`` (injected; default: nobody) is asked inside the login right
  after the signature check: a banned key gets a fatal KICKED error instead of LoginOk, nobody
  sees it join, and whatever it pipelined behind its Login is never read.
* **Password guessing.** With a server password, wrong guesses are counted per peer address
  (:class:`PasswordBackoff`, when the adapter passes addresses): after 3 in a row the address is
  refused for 1 s, doubling with every further wrong guess up to 60 s, with a fatal RATE_LIMITED
  error and without checking the password; a right password forgets the address.
* **Loss reports.** A READY session may send LossReports (its loss/jitter figures of the
  speakers it hears). Each entry goes, as LossReportDelivery, only to the speaker it names, and
  only while reporter and speaker share at least one channel; an entry for anyone else (not
  logged in, no common channel, the reporter itself) and a repeated speaker within one message
  (the last entry counts) are dropped silently. The messages have their own per-session bucket
  (``loss_report_rate_per_s``/``loss_report_burst``) instead of the control bucket: a message
  beyond it is dropped, never punished. Every outcome is counted (``loss_report_counts``).
* **Administration.** A session whose identity key is in ``ServerConfig.admins`` may send
  AdminAction. Checks, in order: the requester is an admin (else NOT_ADMIN), the target sender
  id is logged in (else NO_SUCH_USER), and for a move the channel exists (NO_SUCH_CHANNEL) and
  the target is not already a member of it (ALREADY_MEMBER); every refusal is a non-fatal Error
  and costs nothing else. On success an AdminNotice goes to the target and to the requester,
  then: *kick* closes the target with a fatal KICKED error (UserLeft reason KICKED); *ban* does
  the same to every session of the target's identity key and queues ``BanRequested`` for the
  adapter to persist; *move* makes the target a member of the channel regardless of its password
  and member limit: when the target is already at ``max_memberships``, it first leaves every
  channel but the Lobby (ascending ids), and the Lobby too if it is still at the cap (only
  possible with ``max_memberships`` 1); each change is a MembershipChanged broadcast, exactly as
  for a normal leave and join. Every request, done or refused, is reported with
  ``AdminActionHandled``. On a cluster node, a target that is another node's user is handed to
  that node (``ClusterAdmin``; it carries it out with :meth:`ServerCore.admin_from_node`), and
  the requester gets its AdminNotice at once. Channels other nodes' administrators make, change
  and delete come in through :meth:`ServerCore.apply_shared_channel` and
  :meth:`ServerCore.remove_shared_channel`; this node makes new ones from its own id range
  (``ServerConfig.first_channel_id`` .. ``last_channel_id``).
* **Channel administration.** An administrator may also send ChannelAdmin (CREATE, UPDATE,
  DELETE). Checks, in order: admin (NOT_ADMIN); for UPDATE/DELETE the channel exists
  (NO_SUCH_CHANNEL) and an administrator made it (CHANNEL_LOCKED: the Lobby and the configured
  channels belong to the configuration), for DELETE it has no sub-channels
  (CHANNEL_HAS_SUBCHANNELS); for CREATE/UPDATE the parent exists (NO_SUCH_CHANNEL, the Error's
  ``channel_id`` is the missing parent), is not the channel itself or below it
  (INVALID_CHANNEL), the server is below ``max_channels`` (CREATE; INVALID_CHANNEL), and no
  sibling has the name (CHANNEL_NAME_TAKEN; compared by ``names.name_key``). Every refusal is a
  non-fatal Error. On success the usual roster deltas go to everyone (ChannelAdded;
  ChannelUpdated, then MembershipChanged for every member whose speak right changed;
  ChannelRemoved, which ends the channel's memberships), then ChannelAdminOk to
  the requester. New channels get ids from ``FIRST_ADMIN_CHANNEL_ID`` (10,000) up, never
  reused in a run; ``ChannelSaved``/``ChannelDeleted`` ask the adapter to persist the change
  and ``ChannelAdminHandled`` reports every request. A changed password or lower member limit
  does not remove current members.
* **Admin flag.** Every UserInfo says whether the user is an administrator (``admin``), so a
  client knows whether to offer admin menus. With ``admin_first_user``, while there is no
  administrator at all (``config.admins`` empty, no ``granted_admins``), the first identity
  that logs in becomes one (``AdminGranted``, before its UserJoined): its own roster entry
  already says so.
* **Timeouts.** ``login_timeout`` seconds from connection to LoginOk; ``idle_timeout`` seconds
  without any byte from a logged-in client (it pings every 5 s).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from voipclient.crypto import keydist
from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.names import InvalidName, check_name, name_key
from voipclient.net import events as ev
from voipclient.net import messages as m
from voipclient.net.bucket import TokenBucket
from voipclient.net.frames import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from voipclient.net.roster import ChannelView, Roster, RosterError, RosterSnapshot, UserView
from voipclient.net.states import Direction, ServerState, Trigger, next_server_state

__all__ = [
    "FIRST_ADMIN_CHANNEL_ID",
    "LOBBY_ID",
    "LOSS_REPORT_COUNTERS",
    "ChannelConfig",
    "PasswordBackoff",
    "ServerConfig",
    "ServerCore",
    "SessionInfo",
    "TokenBucket",
]

#: The channel every user joins at login.
LOBBY_ID: Final = 1
#: Channels administrators create are numbered from here up (never reused), so that they can
#: never take the id of a configured channel (numbered 2, 3, ... in file order).
FIRST_ADMIN_CHANNEL_ID: Final = 10_000
#: Room left in a 64 KiB frame for LoginOk's own fields when paging the roster, bytes.
_PAGE_HEADROOM: Final = 1024

_RECV: Final = Direction.RECV
_SEND: Final = Direction.SEND
_Reason = ev.CloseReason
_Leave = m.LeaveReason
_Code = m.ErrorCode
#: Messages outside the control token bucket: each has its own, and its excess is dropped.
_OWN_BUCKET: Final = (m.VoiceTunnel, m.LossReports)

ChannelPassword: TypeAlias = str | Callable[[str], bool]


@dataclass(frozen=True)
class ChannelConfig:
    """A channel the server offers."""

    #: Channel id: 1 is the Lobby, others must be >= 2 and unique.
    id: int
    #: Display name (1..64 visible characters).
    name: str
    #: Parent channel id; None only for the Lobby.
    parent: int | None = LOBBY_ID
    #: Free text shown with the channel.
    description: str = ""
    #: None: open channel. A str is compared in constant time; a callable is a verifier
    #: (e.g. checking a stored hash) returning True for the right password.
    password: ChannelPassword | None = field(default=None, repr=False)
    #: Member limit; 0 means unlimited.
    max_members: int = 0
    #: Names allowed to transmit voice here, compared by account key (``names.name_key``: case
    #: and look-alike letters do not matter); None: every member may.
    speakers: frozenset[str] | None = None

    def to_view(self) -> ChannelView:
        return ChannelView(
            id=self.id,
            parent=self.parent,
            name=self.name,
            description=self.description,
            password_protected=self.password is not None,
            max_members=self.max_members,
        )

    def allows_speaker(self, name: str) -> bool:
        if self.speakers is None:
            return True
        key = name_key(name)
        return any(name_key(s) == key for s in self.speakers)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the core needs to know; validated on construction (LocalProtocolError)."""

    #: Announced in ServerHello.
    server_name: str = "voipclient-server"
    #: Server password required in Login; None: no password.
    password: str | None = None
    #: The Lobby (id 1, no parent, no password, no member limit).
    lobby: ChannelConfig = ChannelConfig(id=LOBBY_ID, name="Lobby", parent=None)
    #: The other channels, in any order.
    channels: tuple[ChannelConfig, ...] = ()
    #: The UDP relay port announced in LoginOk; 0: no UDP, clients tunnel.
    udp_port: int = 0
    #: Channels one user may be a member of at once (the Lobby counts).
    max_memberships: int = 8
    #: Open connections (logged in or not) the core accepts.
    max_sessions: int = 256
    #: Seconds from connection to LoginOk.
    login_timeout: float = 10.0
    #: Seconds without data from a logged-in client.
    idle_timeout: float = 30.0
    #: Control messages per second per session (token bucket refill; VoiceTunnel and
    #: LossReports have buckets of their own).
    rate_per_s: float = 20.0
    #: Token bucket size (messages that may arrive back to back).
    rate_burst: int = 40
    #: Tunnelled voice datagrams per second per session; the excess is dropped.
    tunnel_rate_per_s: float = 100.0
    #: Tunnel bucket size, datagrams.
    tunnel_burst: int = 50
    #: Largest frame payload accepted, bytes (>= 64 KiB).
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    #: Ed25519 identity keys (raw 32 bytes) allowed to send AdminAction and ChannelAdmin.
    admins: frozenset[bytes] = frozenset()
    #: While the server has no administrator at all (none here, none granted earlier), the
    #: first identity that logs in becomes one (``AdminGranted``; the adapter persists it).
    admin_first_user: bool = False
    #: Channels (the Lobby included) beyond which ChannelAdmin creates no more (INVALID_CHANNEL).
    max_channels: int = 1000
    #: LossReports messages per second per session (their own bucket, not the control one);
    #: the excess is dropped and counted. Clients send one every ~2 s.
    loss_report_rate_per_s: float = 4.0
    #: LossReports bucket size, messages.
    loss_report_burst: int = 8
    #: Bytes per second the server relays on one session's behalf (KeyDist: the split parts
    #: it delivers; Text: blob size times recipients); a request beyond the bucket is a fatal
    #: RATE_LIMITED.
    relay_bytes_per_s: float = 1024.0 * 1024
    #: Relay byte bucket size, bytes. An honest full KeyDist batch (48 recipients) makes the
    #: server send ~167 KB, so 8 MiB pays for a whole default ``rate_burst`` of them (40 x
    #: 167 KB = 6.7 MB): for honest KeyDists this bucket does not bite before the message
    #: bucket does.
    relay_bytes_burst: int = 8 * 1024 * 1024
    #: Sender ids this server hands out: ``first_sender_id`` .. ``last_sender_id`` (a cluster
    #: node gets its own range, so ids are unique across the cluster).
    first_sender_id: int = 1
    last_sender_id: int = m.U32_MAX
    #: Ids ChannelAdmin gives new channels: ``first_channel_id`` .. ``last_channel_id`` (a
    #: cluster node gets its own range, so two nodes never make the same id).
    first_channel_id: int = FIRST_ADMIN_CHANNEL_ID
    last_channel_id: int = m.U32_MAX
    #: A cluster node: roster changes of its users, and KeyDists, texts and loss reports for
    #: users on other nodes, become ``Cluster*`` events; other nodes' changes come in through
    #: :meth:`ServerCore.apply_remote`.
    cluster: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.first_sender_id <= self.last_sender_id <= m.U32_MAX:
            raise LocalProtocolError("sender id range must be within 1..2^32-1")
        if not 2 <= self.first_channel_id <= self.last_channel_id <= m.U32_MAX:
            raise LocalProtocolError("channel id range must be within 2..2^32-1")
        lobby = self.lobby
        if lobby.id != LOBBY_ID or lobby.parent is not None:
            raise LocalProtocolError("the lobby must have id 1 and no parent")
        if lobby.password is not None or lobby.max_members:
            raise LocalProtocolError("the lobby cannot have a password or a member limit")
        _check_tree(lobby, self.channels)
        m.encode_checked(
            m.ServerHello(m.PROTOCOL_VERSION, bytes(32), self.server_name, _limits(self))
        )
        if not 1 <= self.max_memberships <= m.MAX_MEMBERSHIPS:
            raise LocalProtocolError(f"max_memberships must be 1..{m.MAX_MEMBERSHIPS}")
        if self.max_sessions < 1 or self.login_timeout <= 0 or self.idle_timeout <= 0:
            raise LocalProtocolError("max_sessions, login_timeout, idle_timeout must be > 0")
        if not 0 <= self.udp_port <= m.U16_MAX:
            raise LocalProtocolError("udp_port must be 0..65535")
        if not (self.loss_report_rate_per_s > 0 and self.loss_report_burst >= 1):
            raise LocalProtocolError("loss_report_rate_per_s must be > 0, loss_report_burst >= 1")
        if not (math.isfinite(self.relay_bytes_per_s) and self.relay_bytes_per_s > 0):
            raise LocalProtocolError("relay_bytes_per_s must be > 0")
        if self.relay_bytes_burst < 1:
            raise LocalProtocolError("relay_bytes_burst must be >= 1")
        if any(len(k) != m.ED25519_PUB_LEN for k in self.admins):
            raise LocalProtocolError("an admin key is a raw 32-byte Ed25519 public key")
        if self.max_channels < 1:
            raise LocalProtocolError("max_channels must be >= 1")


def _check_tree(lobby: ChannelConfig, channels: Iterable[ChannelConfig]) -> None:
    """Ids valid and unique, every parent known, no cycle, every record within the schema."""
    channels = tuple(channels)
    ids = {LOBBY_ID}
    for ch in channels:
        if ch.id < 2 or ch.id > m.U32_MAX or ch.id in ids:
            raise LocalProtocolError(f"channel id {ch.id} is invalid or duplicated")
        ids.add(ch.id)
    parents = {ch.id: ch.parent for ch in (lobby, *channels)}
    for ch in channels:
        if ch.parent is None or ch.parent not in ids:
            raise LocalProtocolError(f"channel {ch.id} has an unknown parent {ch.parent}")
        seen = {ch.id}
        cursor: int | None = ch.parent
        while cursor is not None:  # walk up; the lobby ends every walk
            if cursor in seen:
                raise LocalProtocolError(f"channel {ch.id} is part of a parent cycle")
            seen.add(cursor)
            cursor = parents[cursor]
    for ch in (lobby, *channels):
        _check_channel_schema(ch)


def _limits(config: ServerConfig) -> m.Limits:
    return m.Limits(
        max_frame_size=config.max_frame_size,
        max_memberships=config.max_memberships,
        rate_per_s=config.rate_per_s,
        rate_burst=config.rate_burst,
        idle_timeout_ms=int(config.idle_timeout * 1000),
        tunnel_rate_per_s=config.tunnel_rate_per_s,
    )


def _check_channel_schema(ch: ChannelConfig) -> None:
    if ch.max_members < 0:
        raise LocalProtocolError(f"channel {ch.id}: max_members must be >= 0")
    try:
        info = ch.to_view().to_wire()  # ChannelInfo's own cross-field checks run here
    except ValueError as exc:
        raise LocalProtocolError(f"channel {ch.id}: {exc}") from None
    m.encode_checked(m.ChannelAdded(channel=info))


@dataclass(slots=True)
class _Failures:
    count: int  # wrong passwords in a row
    until: float  # refused before this (seconds, adapter clock)
    last: float  # time of the last wrong password


class PasswordBackoff:
    """Wrong server passwords per peer address, and how long that address must wait.

    The first ``free_failures`` wrong passwords in a row cost nothing; from then on each one
    makes the address wait ``base`` seconds, doubling with every further wrong password up to
    ``cap`` (defaults: 1 s, 2 s, 4 s … 60 s after the 3rd, 4th, 5th … wrong password). While
    it waits its logins are refused without looking at the password, so a guesser gets at most
    one guess per ``cap`` seconds once it is up to speed. A right password forgets the
    address, and so do ``forget_after`` seconds without a wrong one. At most ``max_addresses``
    are remembered, the one whose last failure is oldest is forgotten first, so memory stays
    bounded whatever the number of addresses. Pure: ``now`` is the caller's clock, seconds.
    """

    def __init__(
        self,
        *,
        free_failures: int = 3,
        base: float = 1.0,
        cap: float = 60.0,
        forget_after: float = 600.0,
        max_addresses: int = 4096,
    ) -> None:
        if free_failures < 1 or max_addresses < 1 or not 0 < base <= cap <= forget_after:
            raise LocalProtocolError("PasswordBackoff needs 0 < base <= cap <= forget_after")
        self.free_failures = free_failures
        self.base = base
        self.cap = cap
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        # Ordered by last failure, oldest first: the eviction order.
        self._entries: collections.OrderedDict[str, _Failures] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after(self, address: str, now: float) -> float:
        """Seconds ``address`` must still wait before its password is checked (0.0: now)."""
        entry = self._entries.get(address)
        if entry is None:
            return 0.0
        if now - entry.last >= self.forget_after:
            del self._entries[address]
            return 0.0
        return max(0.0, entry.until - now)

    def failed(self, address: str, now: float) -> float:
        """Count a wrong password from ``address``; returns the wait it now has (0.0: none)."""
        entry = self._entries.pop(address, None)
        if entry is None or now - entry.last >= self.forget_after:
            entry = _Failures(0, now, now)
        entry.count += 1
        entry.last = now
        extra = entry.count - self.free_failures
        # The exponent is clamped so that a long run of failures stays cheap to compute.
        wait = 0.0 if extra < 0 else min(self.cap, self.base * 2.0 ** min(extra, 64))
        entry.until = now + wait
        self._entries[address] = entry
        while len(self._entries) > self.max_addresses:
            self._entries.popitem(last=False)
        return wait

    def succeeded(self, address: str) -> None:
        """A right password from ``address``: forget its failures."""
        self._entries.pop(address, None)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A logged-in session as the UDP relay and the admin see it."""

    #: The adapter's connection id.
    conn_id: int
    #: Session / voice sender id.
    sender_id: int
    #: User name.
    name: str
    #: Ed25519 identity public key.
    ik_pub: bytes
    #: 32-byte hop secret (derive K_c2s/K_s2c from it).
    hop_secret: bytes = field(repr=False)
    #: The client wants its voice through the TLS tunnel.
    voice_tunnel: bool
    #: The user deafened itself (``listeners`` leaves it out).
    deafened: bool
    #: UDP datagrams the relay counted for this session (``note_udp_received``).
    udp_received: int
    #: The client's own UDP counters from its last Ping.
    udp_stats: m.UdpStats
    #: Tunnelled datagrams dropped by the tunnel rate limit.
    tunnel_dropped: int
    #: Loss-report entries dropped by this session's loss-report rate limit.
    loss_reports_dropped: int


@dataclass(eq=False)
class _Session:
    conn_id: int
    decoder: FrameDecoder
    opened_at: float  # seconds, adapter clock
    last_rx: float  # seconds, adapter clock
    bucket: TokenBucket
    tunnel_bucket: TokenBucket
    loss_bucket: TokenBucket
    relay_bucket: TokenBucket  # bytes relayed on this session's behalf
    address: str | None = None  # the peer's IP as the adapter gave it (password back-off)
    state: ServerState = ServerState.AWAIT_HELLO
    out: bytearray = field(default_factory=bytearray)
    challenge: bytes = b""
    sender_id: int | None = None
    name: str = ""
    ik_pub: bytes = b""
    hop_secret: bytes = field(default=b"", repr=False)
    in_roster: bool = False
    voice_tunnel: bool = False
    udp_received: int = 0
    udp_stats: m.UdpStats = field(default_factory=m.UdpStats)
    tunnel_dropped: int = 0
    loss_reports_dropped: int = 0


#: Keys of :attr:`ServerCore.loss_report_counts`, each counting loss-report *entries*:
#: ``received`` = ``forwarded`` + ``rate_limited`` + ``not_shared`` + ``duplicate``.
LOSS_REPORT_COUNTERS: Final = ("received", "forwarded", "rate_limited", "not_shared", "duplicate")


class ServerCore:
    """All control sessions of one server and the roster they share.

    Args:
        config: the server's configuration.
        rng: randomness source for login challenges and hop secrets (os.urandom in production).
        name_bindings: account key (:func:`voipclient.names.name_key` of the user name) →
            identity public key, mutated in place as new names are registered (persist it and
            pass it back to keep bindings across restarts).
        is_banned: asked with the identity key of every login whose signature verified; True
            refuses it (fatal KICKED). Called on every login, so it should be cheap; it must not
            raise (the adapter decides what a failing ban store means).
        password_backoff: the per-address record of wrong server passwords (a fresh
            :class:`PasswordBackoff` by default; pass one to tune it or to look into it).
        admin_channels: channels administrators made in earlier runs (the adapter's store), in
            any order: like ``config.channels``, but ChannelAdmin may change and delete them.
            Their ids must differ from the configured ones, their parents must exist.
        granted_admins: identity keys made administrators at run time in earlier runs
            (``AdminGranted``, persisted by the adapter), on top of ``config.admins``.
        next_channel_id: the lowest id ChannelAdmin may give a new channel (the adapter
            persists the ids it saw, so a deleted channel's id is never reused); the core never
            goes below :data:`FIRST_ADMIN_CHANNEL_ID` or an id in use.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        name_bindings: dict[str, bytes] | None = None,
        is_banned: Callable[[bytes], bool] | None = None,
        password_backoff: PasswordBackoff | None = None,
        admin_channels: Iterable[ChannelConfig] = (),
        granted_admins: Iterable[bytes] = (),
        next_channel_id: int = FIRST_ADMIN_CHANNEL_ID,
    ) -> None:
        self.config: Final = config
        self._rng = rng
        self._is_banned: Callable[[bytes], bool] = is_banned or _nobody_is_banned
        self.password_backoff: Final = password_backoff or PasswordBackoff()
        self._bindings: dict[str, bytes] = {} if name_bindings is None else name_bindings
        self._conns: dict[int, _Session] = {}
        # conn ids written to since the last outgoing() (a dict: an ordered set)
        self._dirty: dict[int, None] = {}
        self._by_sender: dict[int, _Session] = {}
        self._by_name: dict[str, _Session] = {}  # account key (name_key) → logged-in session
        self._events: list[ev.ServerEvent] = []
        self._next_sender_id = config.first_sender_id
        #: sender id -> node, for the users of other cluster nodes in the roster
        self._remote: dict[int, str] = {}
        self._digests: dict[str | None, tuple[int, bytes]] = {}  # node -> (roster version, digest)
        self._cluster_nodes: tuple[str, ...] = ()  # every node's "host:port", told to clients
        self._shutting_down = False
        self._channel_cfg: dict[int, ChannelConfig] = {}
        self._roster = Roster()
        self._loss_counts = dict.fromkeys(LOSS_REPORT_COUNTERS, 0)
        made = tuple(admin_channels)
        _check_tree(config.lobby, (*config.channels, *made))
        for ch in (config.lobby, *_parents_first((*config.channels, *made))):
            self._roster.add_channel(ch.to_view())
            self._channel_cfg[ch.id] = ch
        #: Ids of the channels administrators made (ChannelAdmin may change only these).
        self._admin_channels: set[int] = {ch.id for ch in made}
        first, last = config.first_channel_id, config.last_channel_id
        own = [cid + 1 for cid in self._channel_cfg if first <= cid <= last]
        self._next_channel_id = max(first, next_channel_id if next_channel_id <= last else 0, *own)
        granted = frozenset(granted_admins)
        if any(len(k) != m.ED25519_PUB_LEN for k in granted):
            raise LocalProtocolError("an admin key is a raw 32-byte Ed25519 public key")
        self._admins: set[bytes] = set(config.admins | granted)

    # -- adapter interface -----------------------------------------------------------------------

    def connection_made(self, conn_id: int, now: float, address: str | None = None) -> None:
        """A TLS connection was accepted (after the handshake). ``conn_id`` must be new.

        ``address`` is the peer's IP address without the port (or any string naming where the
        connection comes from): wrong server passwords are counted per address. None: not
        known, and that connection's wrong passwords are not counted."""
        if conn_id in self._conns:
            raise LocalProtocolError(f"connection {conn_id} already exists")
        cfg = self.config
        open_count = sum(1 for s in self._conns.values() if s.state is not ServerState.CLOSED)
        sess = _Session(
            conn_id=conn_id,
            decoder=FrameDecoder(cfg.max_frame_size),
            opened_at=now,
            last_rx=now,
            bucket=TokenBucket(cfg.rate_per_s, cfg.rate_burst, now),
            tunnel_bucket=TokenBucket(cfg.tunnel_rate_per_s, cfg.tunnel_burst, now),
            loss_bucket=TokenBucket(cfg.loss_report_rate_per_s, cfg.loss_report_burst, now),
            relay_bucket=TokenBucket(cfg.relay_bytes_per_s, cfg.relay_bytes_burst, now),
            address=address,
        )
        self._conns[conn_id] = sess
        if self._shutting_down:
            self._close(sess, _Reason.SHUTDOWN, _Code.SHUTTING_DOWN, "server is shutting down")
        elif open_count >= cfg.max_sessions:
            self._close(sess, _Reason.LOGIN_FAILED, _Code.SERVER_FULL, "server is full")

    def receive_data(self, conn_id: int, data: bytes, now: float) -> None:
        """Bytes arrived on a connection (any chunking)."""
        sess = self._require_conn(conn_id)
        if sess.state is ServerState.CLOSED or not data:
            return
        sess.last_rx = now
        try:
            for payload in sess.decoder.feed(data):
                msg = m.decode(payload)
                # Tunnelled voice and loss reports have buckets of their own (excess dropped).
                if not isinstance(msg, _OWN_BUCKET) and not sess.bucket.take(now):
                    self._close(
                        sess,
                        _Reason.RATE_LIMITED,
                        _Code.RATE_LIMITED,
                        f"more than {self.config.rate_per_s:g} messages/s",
                        _Leave.PROTOCOL_ERROR,
                    )
                    return
                self._handle(sess, msg, now)
                if _is_closed(sess):
                    return
        except RemoteProtocolError as exc:
            self._close(
                sess,
                _Reason.PROTOCOL_ERROR,
                exc.code or _Code.PROTOCOL_ERROR,
                exc.message if exc.field is None else f"{exc.message} (field {exc.field})",
                _Leave.PROTOCOL_ERROR,
            )

    def connection_lost(self, conn_id: int, now: float) -> None:
        """The transport is gone; forget the connection. Idempotent."""
        sess = self._conns.pop(conn_id, None)
        if sess is None:
            return
        if sess.state is not ServerState.CLOSED:
            sess.state = next_server_state(sess.state, Trigger.ABORT)
            self._finish(sess, _Reason.CONNECTION_LOST, 0, "transport closed", _Leave.DISCONNECTED)

    def data_to_send(self, conn_id: int) -> bytes:
        """Bytes to write to ``conn_id`` (empties its buffer; b"" for unknown connections)."""
        sess = self._conns.get(conn_id)
        if sess is None or not sess.out:
            return b""
        data = bytes(sess.out)
        sess.out.clear()
        return data

    def outgoing(self) -> list[tuple[int, bytes]]:
        """``(conn_id, bytes)`` for every connection with something to write.

        Only connections written to since the last call are visited (not every session): the
        adapter calls this after each control frame, and Pings alone would otherwise make it
        O(sessions) per frame."""
        dirty, self._dirty = self._dirty, {}
        return [(cid, data) for cid in dirty if (data := self.data_to_send(cid))]

    def events(self) -> list[ev.ServerEvent]:
        """Events since the last call, in order."""
        out, self._events = self._events, []
        return out

    @property
    def min_timeout(self) -> float:
        """No deadline is ever set closer than this to the moment it is set (seconds): an adapter
        holding a timer due within this long need not ask :meth:`get_timer` again."""
        return min(self.config.login_timeout, self.config.idle_timeout)

    def get_timer(self) -> float | None:
        """The earliest login/idle deadline of any open session (adapter clock), or None."""
        deadlines = [d for s in self._conns.values() if (d := self._deadline(s)) is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        """Close every session whose login or idle deadline has passed."""
        for sess in list(self._conns.values()):
            deadline = self._deadline(sess)
            if deadline is None or now < deadline:
                continue
            what = "login" if sess.state is not ServerState.READY else "idle"
            self._close(sess, _Reason.TIMEOUT, _Code.TIMEOUT, f"{what} timeout", _Leave.TIMEOUT)

    # -- queries for the UDP relay ---------------------------------------------------------------

    @property
    def roster(self) -> RosterSnapshot:
        return self._roster.snapshot()

    @property
    def roster_version(self) -> int:
        """Changes whenever the roster does (memberships, users, channels, deafen state)."""
        return self._roster.version

    @property
    def admins(self) -> frozenset[bytes]:
        """Every administrator's identity key: ``config.admins``, the granted ones passed in,
        and one made by the first-user rule in this run."""
        return frozenset(self._admins)

    def channel_ids(self) -> frozenset[int]:
        """Every channel's id (configured and made by administrators, the Lobby included)."""
        return frozenset(self._channel_cfg)

    @property
    def admin_channels(self) -> frozenset[int]:
        """Ids of the channels administrators made (those ChannelAdmin may change)."""
        return frozenset(self._admin_channels)

    @property
    def name_bindings(self) -> dict[str, bytes]:
        """Account key (``names.name_key``) → identity key: the live dict (persist it; don't
        mutate it)."""
        return self._bindings

    def session_by_sender_id(self, sender_id: int) -> SessionInfo | None:
        sess = self._by_sender.get(sender_id)
        if sess is None:
            return None
        user = self._roster.user(sender_id)
        return SessionInfo(
            conn_id=sess.conn_id,
            sender_id=sender_id,
            name=sess.name,
            ik_pub=sess.ik_pub,
            hop_secret=sess.hop_secret,
            voice_tunnel=sess.voice_tunnel,
            deafened=user is not None and user.deafened,
            udp_received=sess.udp_received,
            udp_stats=sess.udp_stats,
            tunnel_dropped=sess.tunnel_dropped,
            loss_reports_dropped=sess.loss_reports_dropped,
        )

    def may_speak(self, sender_id: int, channel_id: int) -> bool:
        """``sender_id`` is a member of ``channel_id`` and the channel's ACL lets it speak."""
        return self._roster.may_speak(sender_id, channel_id)

    def routing(self) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Channel id → (listeners, speakers), for every channel with members: what the relay
        asks (:meth:`listeners`, :meth:`may_speak`) as plain data, for the UDP workers'
        roster mirrors (``voipclient.server.workers``)."""
        roster = self._roster
        out: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for cid in roster.channel_ids():
            members = roster.members(cid)
            if members:
                speakers = tuple(sorted(u for u in members if roster.may_speak(u, cid)))
                out[cid] = (tuple(sorted(self.listeners(cid))), speakers)
        return out

    def listeners(self, channel_id: int, exclude: int | None = None) -> frozenset[int]:
        """Sender ids that should receive voice for ``channel_id``: its members except
        ``exclude`` (the speaker) and except deafened users."""
        out = set()
        for uid in self._roster.members(channel_id):
            user = self._roster.user(uid)
            if uid != exclude and user is not None and not user.deafened:
                out.add(uid)
        return frozenset(out)

    @property
    def loss_report_counts(self) -> dict[str, int]:
        """Loss-report entries since start, by outcome (a copy; keys ``LOSS_REPORT_COUNTERS``):
        ``received``; ``forwarded`` to their speaker; dropped as ``rate_limited`` (the whole
        message was over the session's loss-report bucket), ``not_shared`` (the named speaker is
        not logged in, is the reporter, or shares no channel with it) or ``duplicate`` (the
        speaker was named again later in the same message)."""
        return dict(self._loss_counts)

    def note_udp_received(self, sender_id: int, count: int = 1) -> None:
        """The relay accepted ``count`` datagrams from ``sender_id`` (reported back in Pong)."""
        sess = self._by_sender.get(sender_id)
        if sess is not None:
            sess.udp_received += count

    # -- cluster: the other nodes' users ---------------------------------------------------------

    def set_cluster_nodes(self, nodes: tuple[str, ...]) -> None:
        """The cluster's nodes ("host:port", this one included) as clients reach them: told to
        every client now (if changed) and to each at login, so they can fail over."""
        nodes = tuple(dict.fromkeys(nodes))[: m.MAX_CLUSTER_NODES]
        if nodes != self._cluster_nodes:
            self._cluster_nodes = nodes
            self._send_many(list(self._by_sender.values()), m.ClusterNodes(nodes=nodes))

    def is_remote(self, sender_id: int) -> bool:
        """``sender_id`` is a user of another cluster node."""
        return sender_id in self._remote

    def remote_users(self) -> dict[int, str]:
        """Sender id → node of every other node's user in the roster (a copy)."""
        return dict(self._remote)

    def local_users(self) -> list[m.UserInfo]:
        """This node's logged-in users as roster records (for a node that joins the cluster)."""
        return [
            self._roster.to_wire_user(sid)
            for sid, sess in self._by_sender.items()
            if sess.in_roster and self._roster.user(sid) is not None
        ]

    def apply_remote(self, node: str, msg: m.ServerMessage) -> bool:
        """A roster change another node published (UserJoined, UserUpdated, UserLeft,
        MembershipChanged of one of *its* users): apply it and tell this node's clients. A
        change about a user that is not that node's, or that does not fit the roster (unknown
        channel, a sender id in use), is refused (False) and changes nothing."""
        if not isinstance(msg, _CLUSTER_ROSTER):
            return False
        if isinstance(msg, m.UserJoined):
            sid = msg.user.sender_id
            if sid in self._by_sender or (
                self._roster.user(sid) is not None and self._remote.get(sid) != node
            ):
                return False
            if self._roster.user(sid) is not None:  # a node re-announcing its user (resync)
                msg = m.UserUpdated(user=msg.user)
            try:
                self._roster.apply(msg)
            except RosterError:
                return False
            self._remote[sid] = node
        else:
            sid = msg.user.sender_id if isinstance(msg, m.UserUpdated) else msg.sender_id
            if self._remote.get(sid) != node:
                return False
            try:
                self._roster.apply(msg)
            except RosterError:
                return False
            if isinstance(msg, m.UserLeft):
                del self._remote[sid]
        self._send_many(list(self._by_sender.values()), msg)
        return True

    def users_digest(self, node: str | None = None) -> bytes:
        """16 bytes that change with any roster record (name, keys, mute and deafen state,
        memberships, admin flag) of this node's users (``node`` None: what its heartbeat
        carries) or of the users this node knows of ``node``. Equal digests: the two nodes
        agree about that node's users. Cached per roster version."""
        version = self._roster.version
        cached = self._digests.get(node)
        if cached is not None and cached[0] == version:
            return cached[1]
        if node is None:
            sids = sorted(
                sid
                for sid, sess in self._by_sender.items()
                if sess.in_roster and self._roster.user(sid) is not None
            )
        else:
            sids = sorted(sid for sid, n in self._remote.items() if n == node)
        h = hashlib.sha256()
        for sid in sids:
            h.update(m.encode(m.UserUpdated(user=self._roster.to_wire_user(sid))))
        digest = h.digest()[:16]
        self._digests[node] = (version, digest)
        return digest

    def resync_remote(self, node: str, sender_ids: Iterable[int]) -> int:
        """``node``'s complete list of its users (after it sent each one's record again, which
        :meth:`apply_remote` took): a user of that node missing from it left while a roster
        message was lost, and leaves now. Returns how many left."""
        keep = set(sender_ids)
        gone = sorted(sid for sid, n in self._remote.items() if n == node and sid not in keep)
        for sid in gone:
            self._drop_remote(sid, _Leave.DISCONNECTED)
        return len(gone)

    def _drop_remote(self, sid: int, reason: _Leave) -> None:
        """Another node's user leaves our roster; our clients are told."""
        del self._remote[sid]
        self._roster.remove_user(sid)
        self._send_many(list(self._by_sender.values()), m.UserLeft(sender_id=sid, reason=reason))

    def _replace_remote(self, ik_pub: bytes) -> None:
        """The same identity logged in here: its session on another node is replaced (it
        moved here, typically because that node failed). It leaves our roster at once and its
        node is told to end it."""
        for sid, node in list(self._remote.items()):
            user = self._roster.user(sid)
            if user is not None and hmac.compare_digest(user.ik_pub, ik_pub):
                self._drop_remote(sid, _Leave.REPLACED)
                self._events.append(ev.ClusterReplaced(node, sid))

    def replaced_elsewhere(self, sender_id: int) -> bool:
        """Another node logged the same identity in: end our session of it (REPLACED)."""
        sess = self._by_sender.get(sender_id)
        if sess is None:
            return False
        self._close(
            sess,
            _Reason.REPLACED,
            _Code.SESSION_REPLACED,
            "replaced by a new login of the same identity on another node",
            _Leave.REPLACED,
        )
        return True

    def remote_node_gone(self, node: str) -> int:
        """Another node stopped (or stopped answering): its users leave the roster. Returns
        how many."""
        return self.resync_remote(node, ())

    def deliver_remote_keydist(
        self, sender_id: int, channel_id: int, recipient: int, blob: bytes
    ) -> bool:
        """A KeyDist part from a user of another node for one of ours."""
        target = self._by_sender.get(recipient)
        if (
            target is None
            or target.state is not ServerState.READY
            or self._remote.get(sender_id) is None
            or not self._roster.is_member(recipient, channel_id)
            or not self._roster.is_member(sender_id, channel_id)
        ):
            return False
        self._send(target, m.KeyDistDelivery(sender_id=sender_id, channel_id=channel_id, blob=blob))
        return True

    def deliver_remote_text(self, sender_id: int, channel_id: int, blob: bytes) -> int:
        """A channel text from a user of another node: to our members of the channel."""
        if self._remote.get(sender_id) is None or not self._roster.is_member(sender_id, channel_id):
            return 0
        targets = [
            self._by_sender[uid]
            for uid in sorted(self._roster.members(channel_id))
            if uid in self._by_sender
        ]
        self._send_many(
            targets, m.TextDelivery(sender_id=sender_id, channel_id=channel_id, blob=blob)
        )
        return len(targets)

    def deliver_remote_loss_report(self, to: int, msg: m.LossReportDelivery) -> bool:
        target = self._by_sender.get(to)
        if target is None or target.state is not ServerState.READY:
            return False
        if self._remote.get(msg.from_) is None:
            return False
        self._send(target, msg)
        return True

    def apply_shared_channel(self, channel: ChannelConfig) -> bool:
        """A channel an administrator made or changed on another node (the cluster's shared
        channel store): created here or updated, announced to our clients as if made here, and
        administrable here. A record equal to ours changes nothing (our own change coming back);
        one that does not fit (a configured channel's id, an unknown parent, a cycle, a bad
        schema) is refused (False) and changes nothing."""
        old = self._channel_cfg.get(channel.id)
        if channel.id == LOBBY_ID or (old is not None and channel.id not in self._admin_channels):
            return False
        if channel.parent is None or channel.parent not in self._channel_cfg:
            return False
        if old is not None and self._within(channel.parent, channel.id):
            return False
        try:
            if old is None:
                self.add_channel(channel)
                self._admin_channels.add(channel.id)
            elif old.to_view() == channel.to_view():
                self._channel_cfg[channel.id] = channel  # a new password hash, nothing to show
            else:
                self.update_channel(channel)
        except (LocalProtocolError, ValueError):
            return False
        return True

    def remove_shared_channel(self, channel_id: int) -> bool:
        """A channel another node's administrator deleted: removed here too (with any
        sub-channels this node still has under it). False when there is no such channel made
        by an administrator."""
        if channel_id not in self._admin_channels or channel_id not in self._channel_cfg:
            return False
        self.remove_channel(channel_id)
        return True

    def add_admin(self, ik_pub: bytes) -> None:
        """An identity made administrator elsewhere in the cluster (the shared admin store):
        its requests are honoured here from its next login on."""
        if len(ik_pub) == m.ED25519_PUB_LEN:
            self._admins.add(ik_pub)

    def admin_from_node(
        self,
        action: m.AdminOp,
        by: int,
        by_name: str,
        target: int,
        channel_id: int | None,
        reason: str,
    ) -> bool:
        """An administrator on another node kicked, banned or moved a user of ours (that node
        checked the administrator; this one checks the target and the channel again, as the
        roster may have moved on). The target gets the AdminNotice and the same outcome as
        from a local administrator. False when it does not apply (not our user any more)."""
        sess = self._by_sender.get(target)
        if sess is None or sess.state is not ServerState.READY:
            return False
        if channel_id is not None and (
            channel_id not in self._channel_cfg or self._roster.is_member(target, channel_id)
        ):
            return False
        if action is m.AdminOp.MOVE and channel_id is None:
            return False
        notice = m.AdminNotice(
            action=action, by=by, target=target, channel_id=channel_id, reason=reason
        )
        self._carry_out_admin(sess, notice, by_name)
        return True

    def _carry_out_admin(
        self,
        target: _Session,
        notice: m.AdminNotice,
        by_name: str,
        requester: _Session | None = None,
    ) -> None:
        """What an administrator's kick, ban or move does to ``target``, a user of this node
        (checked already): the move, or the end of the session (a ban: of every session of its
        identity), with the AdminNotice to the target and the requester when it is here."""
        told = dict.fromkeys((target,) if requester is None else (target, requester))
        if notice.action is m.AdminOp.MOVE:
            assert notice.channel_id is not None
            self._move(notice.target, notice.channel_id)
            self._send_many(told, notice)
            return
        self._send_many(told, notice)
        done = "banned" if notice.action is m.AdminOp.BAN else "kicked"
        why = f"{done} by {by_name}" + (f": {notice.reason}" if notice.reason else "")
        victims = (
            [s for s in self._by_sender.values() if s.ik_pub == target.ik_pub]
            if notice.action is m.AdminOp.BAN
            else [target]
        )
        for victim in victims:
            self._close(victim, _Reason.LOCAL_CLOSE, _Code.KICKED, why, _Leave.KICKED)

    # -- server-initiated actions ----------------------------------------------------------------

    def send_voice_tunnel(self, conn_id: int, datagram: bytes) -> bool:
        """Queue a voice datagram to a tunnelling listener. False if the connection is gone or
        closed (the relay may race with a closing session)."""
        sess = self._conns.get(conn_id)
        if sess is None or sess.state is ServerState.CLOSED:
            return False
        self._send(sess, m.VoiceTunnel(datagram=datagram))
        return True

    def shutdown(self, reason: str, now: float, reconnect_after_ms: int | None = None) -> None:
        """Send ServerShutdown to every open session and close them all; later connections are
        refused with SHUTTING_DOWN."""
        self._shutting_down = True
        notice = m.ServerShutdown(
            reason=m.clean_text(reason, m.MAX_REASON_LEN), reconnect_after_ms=reconnect_after_ms
        )
        frame = encode_frame(m.encode_checked(notice))
        for sess in list(self._conns.values()):
            if sess.state is ServerState.CLOSED:
                continue
            sess.state = next_server_state(sess.state, (_SEND, m.ServerShutdown))
            sess.out += frame
            self._dirty[sess.conn_id] = None
            self._finish(sess, _Reason.SHUTDOWN, _Code.SHUTTING_DOWN, reason, _Leave.SHUTDOWN)

    def kick(self, sender_id: int, reason: str = "") -> None:
        """Remove a logged-in user (fatal KICKED error, UserLeft reason KICKED)."""
        sess = self._by_sender.get(sender_id)
        if sess is None:
            raise LocalProtocolError(f"no session with sender id {sender_id}")
        self._close(sess, _Reason.LOCAL_CLOSE, _Code.KICKED, reason or "kicked", _Leave.KICKED)

    def add_channel(self, channel: ChannelConfig) -> None:
        """Create a channel (its parent must exist) and announce it."""
        if channel.id < 2 or channel.id > m.U32_MAX or channel.id in self._channel_cfg:
            raise LocalProtocolError(f"channel id {channel.id} is invalid or taken")
        if channel.parent is None or channel.parent not in self._channel_cfg:
            raise LocalProtocolError(f"parent {channel.parent} does not exist")
        _check_channel_schema(channel)
        self._roster.add_channel(channel.to_view())
        self._channel_cfg[channel.id] = channel
        if self._next_channel_id <= channel.id <= self.config.last_channel_id:
            self._next_channel_id = channel.id + 1
        self._broadcast(m.ChannelAdded(channel=channel.to_view().to_wire()))

    def update_channel(self, channel: ChannelConfig) -> None:
        """Replace a channel's configuration; announces ChannelUpdated, and MembershipChanged
        for every member whose right to speak changed with the ACL."""
        old = self._channel_cfg.get(channel.id)
        if old is None:
            raise LocalProtocolError(f"no channel {channel.id}")
        if channel.id == LOBBY_ID and (
            channel.parent is not None or channel.password is not None or channel.max_members
        ):
            raise LocalProtocolError("the lobby cannot have a parent, password or member limit")
        if channel.id != LOBBY_ID and channel.parent is None:
            raise LocalProtocolError("only the lobby is a root channel")
        _check_channel_schema(channel)
        try:
            self._roster.update_channel(channel.to_view())
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from exc
        self._channel_cfg[channel.id] = channel
        self._broadcast(m.ChannelUpdated(channel=channel.to_view().to_wire()))
        for uid in sorted(self._roster.members(channel.id)):
            user = self._roster.user(uid)
            assert user is not None
            speak = channel.allows_speaker(user.name)
            if speak != self._roster.may_speak(uid, channel.id):
                self._roster.set_membership(uid, channel.id, True, speak)
                self._broadcast(
                    m.MembershipChanged(
                        sender_id=uid, channel_id=channel.id, joined=True, may_speak=speak
                    )
                )

    def remove_channel(self, channel_id: int) -> None:
        """Remove a channel and its sub-channels (deepest first), announcing each removal.
        The Lobby cannot be removed."""
        if channel_id == LOBBY_ID:
            raise LocalProtocolError("the lobby cannot be removed")
        if channel_id not in self._channel_cfg:
            raise LocalProtocolError(f"no channel {channel_id}")
        for child in self._roster.children_of(channel_id):
            self.remove_channel(child)
        self._roster.remove_channel(channel_id)
        del self._channel_cfg[channel_id]
        self._admin_channels.discard(channel_id)
        self._broadcast(m.ChannelRemoved(channel_id=channel_id))

    # -- message handling ------------------------------------------------------------------------

    def _handle(self, sess: _Session, msg: m.Message, now: float) -> None:
        sess.state = next_server_state(sess.state, (_RECV, type(msg)))
        match msg:
            case m.Hello():
                self._on_hello(sess, msg)
            case m.Login():
                self._on_login(sess, msg, now)
            case m.JoinChannel():
                self._on_join(sess, msg)
            case m.LeaveChannel():
                self._on_leave(sess, msg)
            case m.PublishSessionKey():
                self._update_user(sess, sk_pub=msg.sk_pub, skc=msg.skc)
            case m.SetSelfState():
                self._update_user(sess, muted=msg.muted, deafened=msg.deafened)
            case m.SetVoiceTransport():
                if msg.tunnel != sess.voice_tunnel:
                    sess.voice_tunnel = msg.tunnel
                    assert sess.sender_id is not None
                    self._events.append(
                        ev.VoiceTransportChanged(sess.conn_id, sess.sender_id, msg.tunnel)
                    )
            case m.AdminAction():
                self._on_admin(sess, msg)
            case m.ChannelAdmin():
                self._on_channel_admin(sess, msg)
            case m.LossReports():
                self._on_loss_reports(sess, msg, now)
            case m.KeyDist():
                self._on_keydist(sess, msg)
            case m.Text():
                self._on_text(sess, msg)
            case m.VoiceTunnel():
                assert sess.sender_id is not None
                if sess.tunnel_bucket.take(now):
                    self._events.append(
                        ev.VoiceFromTunnel(sess.conn_id, sess.sender_id, msg.datagram)
                    )
                else:
                    sess.tunnel_dropped += 1
            case m.Ping():
                sess.udp_stats = msg.udp
                self._send(
                    sess,
                    m.Pong(
                        seq=msg.seq,
                        client_time_ms=msg.client_time_ms,
                        udp_received=min(sess.udp_received, m.U64_MAX),
                    ),
                )
            case m.Bye():
                self._send(sess, m.Bye())
                self._finish(sess, _Reason.PEER_BYE, 0, msg.reason, _Leave.QUIT)
            case m.Error():
                # The table moved us to CLOSED already: a client's Error always ends it.
                self._finish(sess, _Reason.PEER_ERROR, msg.code, msg.message, _Leave.DISCONNECTED)
            case _:  # pragma: no cover - the transition table admits nothing else
                raise LocalProtocolError(f"no handler for {type(msg).__name__}")

    def _on_hello(self, sess: _Session, msg: m.Hello) -> None:
        if m.PROTOCOL_VERSION not in msg.versions:
            self._close(
                sess,
                _Reason.LOGIN_FAILED,
                _Code.UNSUPPORTED_VERSION,
                f"this server speaks {m.PROTOCOL_VERSION} only",
            )
            return
        sess.challenge = self._rng(m.CHALLENGE_LEN)
        self._send(
            sess,
            m.ServerHello(
                version=m.PROTOCOL_VERSION,
                challenge=sess.challenge,
                server_name=self.config.server_name,
                limits=_limits(self.config),
                password_required=self.config.password is not None,
            ),
        )

    def _on_login(self, sess: _Session, msg: m.Login, now: float) -> None:
        cfg = self.config
        if cfg.password is not None and not self._server_password_ok(
            sess, msg.password, cfg.password, now
        ):
            return
        transcript = m.login_transcript(sess.challenge, msg.name, msg.ik_pub)
        if not _verify_ed25519(msg.ik_pub, msg.signature, transcript):
            self._close(sess, _Reason.LOGIN_FAILED, _Code.BAD_SIGNATURE, "bad login signature")
            return
        # Before anything is announced or sent: a banned key gets no roster, nobody sees it
        # join, and receive_data stops at the closed session (its pipelined requests are
        # never read).
        if self._is_banned(msg.ik_pub):
            self._close(sess, _Reason.LOGIN_FAILED, _Code.KICKED, "banned from this server")
            return
        try:
            # A name that could pass for another (invisible, bidi or format characters, mixed
            # scripts, not NFC) is refused; the rest bind by their confusable skeleton.
            key = check_name(msg.name)
        except InvalidName as exc:
            reason = f"name refused: {exc.reason}"
            self._close(sess, _Reason.LOGIN_FAILED, _Code.INVALID_NAME, reason)
            return
        bound = self._bindings.get(key)
        if bound is not None and not hmac.compare_digest(bound, msg.ik_pub):
            self._close(sess, _Reason.LOGIN_FAILED, _Code.NAME_TAKEN, f"name {msg.name!r} is taken")
            return
        if self._next_sender_id > self.config.last_sender_id:
            self._close(sess, _Reason.LOGIN_FAILED, _Code.SERVER_FULL, "out of sender ids")
            return
        if self._remote:
            self._replace_remote(msg.ik_pub)
        old = self._by_name.get(key)
        if old is not None:
            self._close(
                old,
                _Reason.REPLACED,
                _Code.SESSION_REPLACED,
                "replaced by a new login of the same identity",
                _Leave.REPLACED,
            )
        self._bindings.setdefault(key, msg.ik_pub)
        admin = msg.ik_pub in self._admins
        if not admin and self.config.admin_first_user and not self._admins:
            # A new server's first user: its owner, typically (the embedded local server).
            self._admins.add(msg.ik_pub)
            admin = True
            self._events.append(ev.AdminGranted(msg.ik_pub, msg.name))
        sid = self._next_sender_id
        self._next_sender_id += 1
        sess.sender_id = sid
        sess.name = msg.name
        sess.ik_pub = msg.ik_pub
        sess.hop_secret = self._rng(m.HOP_SECRET_LEN)
        lobby = self._channel_cfg[LOBBY_ID]
        self._roster.add_user(
            UserView(sender_id=sid, name=msg.name, ik_pub=msg.ik_pub, admin=admin),
            {LOBBY_ID: lobby.allows_speaker(msg.name)},
        )
        sess.in_roster = True
        self._by_sender[sid] = sess
        self._by_name[key] = sess
        # Everyone else first (they are READY; the newcomer is not yet), then the newcomer.
        self._broadcast(m.UserJoined(user=self._roster.to_wire_user(sid)))
        self._send_login_ok(sess)
        self._events.append(
            ev.SessionAuthenticated(sess.conn_id, sid, msg.name, msg.ik_pub, sess.hop_secret)
        )

    def _server_password_ok(
        self, sess: _Session, given: str | None, expected: str, now: float
    ) -> bool:
        """Check the server password under the per-address back-off; on False ``sess`` is
        closed (RATE_LIMITED while its address must wait, else WRONG_PASSWORD)."""
        address, backoff = sess.address, self.password_backoff
        if address is not None:
            wait = backoff.retry_after(address, now)
            if wait > 0:
                self._close(
                    sess,
                    _Reason.LOGIN_FAILED,
                    _Code.RATE_LIMITED,
                    f"too many wrong passwords from your address; try again in {math.ceil(wait)} s",
                )
                return False
        if given is not None and _secret_equal(given, expected):
            if address is not None:
                backoff.succeeded(address)
            return True
        wait = 0.0 if address is None else backoff.failed(address, now)
        text = "wrong server password"
        if wait > 0:
            text += f"; too many from your address, try again in {math.ceil(wait)} s"
        self._close(sess, _Reason.LOGIN_FAILED, _Code.WRONG_PASSWORD, text)
        return False

    def _send_login_ok(self, sess: _Session) -> None:
        """LoginOk plus as many RosterPages as the roster needs to fit 64 KiB frames."""
        roster = self._roster
        channels = [roster.channel(cid) for cid in roster.channel_ids()]
        records: list[m.ChannelInfo | m.UserInfo] = [c.to_wire() for c in channels if c]
        records += [roster.to_wire_user(uid) for uid in roster.user_ids()]
        budget = DEFAULT_MAX_FRAME_SIZE - _PAGE_HEADROOM
        pages: list[tuple[list[m.ChannelInfo], list[m.UserInfo]]] = [([], [])]
        used = 0
        for rec in records:
            size = len(msgspec.msgpack.encode(rec))
            chans, users = pages[-1]
            full = used + size > budget or max(len(chans), len(users)) >= m.MAX_PAGE_ITEMS
            if full and (chans or users):
                pages.append(([], []))
                chans, users = pages[-1]
                used = 0
            used += size
            if isinstance(rec, m.ChannelInfo):
                chans.append(rec)
            else:
                users.append(rec)
        assert sess.sender_id is not None
        first_ch, first_users = pages[0]
        self._send(
            sess,
            m.LoginOk(
                sender_id=sess.sender_id,
                hop_secret=sess.hop_secret,
                udp_port=self.config.udp_port,
                channels=tuple(first_ch),
                users=tuple(first_users),
                more=len(pages) > 1,
            ),
        )
        for i, (chans, users) in enumerate(pages[1:], start=2):
            self._send(
                sess,
                m.RosterPage(channels=tuple(chans), users=tuple(users), more=i < len(pages)),
            )
        if self._cluster_nodes:
            self._send(sess, m.ClusterNodes(nodes=self._cluster_nodes))

    def _on_join(self, sess: _Session, msg: m.JoinChannel) -> None:
        sid = sess.sender_id
        assert sid is not None
        ch = msg.channel_id
        cfg = self._channel_cfg.get(ch)
        if cfg is None:
            self._refuse(sess, _Code.NO_SUCH_CHANNEL, "no such channel", ch)
        elif self._roster.is_member(sid, ch):
            self._refuse(sess, _Code.ALREADY_MEMBER, "already a member", ch)
        elif len(self._roster.channels_of(sid)) >= self.config.max_memberships:
            self._refuse(
                sess,
                _Code.TOO_MANY_MEMBERSHIPS,
                f"at most {self.config.max_memberships} channels at once",
                ch,
            )
        elif cfg.password is not None and not _check_channel_password(cfg.password, msg.password):
            self._refuse(sess, _Code.WRONG_CHANNEL_PASSWORD, "wrong channel password", ch)
        elif cfg.max_members and self._roster.member_count(ch) >= cfg.max_members:
            self._refuse(sess, _Code.CHANNEL_FULL, "channel is full", ch)
        else:
            speak = cfg.allows_speaker(sess.name)
            self._roster.set_membership(sid, ch, True, speak)
            self._broadcast(
                m.MembershipChanged(sender_id=sid, channel_id=ch, joined=True, may_speak=speak)
            )

    def _on_leave(self, sess: _Session, msg: m.LeaveChannel) -> None:
        sid = sess.sender_id
        assert sid is not None
        ch = msg.channel_id
        if ch not in self._channel_cfg:
            self._refuse(sess, _Code.NO_SUCH_CHANNEL, "no such channel", ch)
        elif not self._roster.is_member(sid, ch):
            self._refuse(sess, _Code.NOT_MEMBER, "not a member", ch)
        else:
            self._roster.set_membership(sid, ch, False)
            self._broadcast(
                m.MembershipChanged(sender_id=sid, channel_id=ch, joined=False, may_speak=False)
            )

    def _on_admin(self, sess: _Session, msg: m.AdminAction) -> None:
        sid = sess.sender_id
        assert sid is not None
        target = self._by_sender.get(msg.target)
        node = self._remote.get(msg.target)  # a user of another cluster node
        ch = msg.channel_id
        code, text = 0, ""
        if sess.ik_pub not in self._admins:
            code, text = _Code.NOT_ADMIN, "not an administrator of this server"
        elif target is None and node is None:
            code, text = _Code.NO_SUCH_USER, f"no user with sender id {msg.target}"
        elif ch is not None and ch not in self._channel_cfg:
            code, text = _Code.NO_SUCH_CHANNEL, "no such channel"
        elif ch is not None and self._roster.is_member(msg.target, ch):
            code, text = _Code.ALREADY_MEMBER, "the user is already a member"
        self._events.append(
            ev.AdminActionHandled(
                sess.conn_id,
                sid,
                sess.name,
                msg.action,
                msg.target,
                self._user_name(msg.target),
                ch,
                msg.reason,
                int(code),
            )
        )
        if code:
            self._refuse(sess, code, text, ch)
            return
        notice = m.AdminNotice(
            action=msg.action, by=sid, target=msg.target, channel_id=ch, reason=msg.reason
        )
        if msg.action is m.AdminOp.BAN:  # persisted by the adapter (on a cluster: shared)
            user = self._roster.user(msg.target)
            assert user is not None
            self._events.append(ev.BanRequested(user.ik_pub, user.name, msg.reason, sess.name))
        if target is None:
            # A user of another node: that node carries it out (and tells the user).
            assert node is not None
            self._events.append(
                ev.ClusterAdmin(node, msg.action, sid, sess.name, msg.target, ch, msg.reason)
            )
            self._send(sess, notice)
            return
        self._carry_out_admin(target, notice, sess.name, sess)

    def _on_channel_admin(self, sess: _Session, msg: m.ChannelAdmin) -> None:
        sid = sess.sender_id
        assert sid is not None
        code, text, about, channel = self._plan_channel_admin(sess, msg)
        if code or channel is None:
            name = "" if channel is None else channel.name
            self._events.append(
                ev.ChannelAdminHandled(
                    sess.conn_id, sid, sess.name, msg.op, msg.channel_id, name, int(code)
                )
            )
            self._refuse(sess, code, text, about)
            return
        op = msg.op
        if op == m.ChannelOp.DELETE:
            self.remove_channel(channel.id)  # no sub-channels: the plan checked
            self._events.append(ev.ChannelDeleted(channel.id))
        else:
            if op == m.ChannelOp.CREATE:
                self.add_channel(channel)
                self._admin_channels.add(channel.id)
            else:
                self.update_channel(channel)
            assert channel.parent is not None
            self._events.append(
                ev.ChannelSaved(
                    channel_id=channel.id,
                    parent=channel.parent,
                    name=channel.name,
                    description=channel.description,
                    password_protected=channel.password is not None,
                    new_password=msg.password or None,  # "" removed it: nothing new to store
                    max_members=channel.max_members,
                    speakers=channel.speakers,
                )
            )
        self._events.append(
            ev.ChannelAdminHandled(sess.conn_id, sid, sess.name, op, channel.id, channel.name)
        )
        self._send(sess, m.ChannelAdminOk(op=op, channel_id=channel.id))

    def _plan_channel_admin(
        self, sess: _Session, msg: m.ChannelAdmin
    ) -> tuple[int, str, int | None, ChannelConfig | None]:
        """Check a ChannelAdmin in the documented order: ``(code, message, the channel id the
        refusal is about, the channel as it will be)`` with code 0 when it may be carried out
        (for DELETE the channel as it is)."""
        op, cid = msg.op, msg.channel_id
        if sess.ik_pub not in self._admins:
            return _Code.NOT_ADMIN, "not an administrator of this server", cid, None
        old: ChannelConfig | None = None
        if op != m.ChannelOp.CREATE:
            assert cid is not None  # the schema requires it
            old = self._channel_cfg.get(cid)
            if old is None:
                return _Code.NO_SUCH_CHANNEL, f"no channel {cid}", cid, None
            if cid not in self._admin_channels:
                what = "the Lobby" if cid == LOBBY_ID else f"channel {old.name!r}"
                return (
                    _Code.CHANNEL_LOCKED,
                    f"{what} is part of the server's configuration; only channels made by "
                    "administrators can be changed here",
                    cid,
                    old,
                )
            if op == m.ChannelOp.DELETE:
                if self._roster.children_of(cid):
                    return (
                        _Code.CHANNEL_HAS_SUBCHANNELS,
                        f"channel {old.name!r} has sub-channels: delete or move them first",
                        cid,
                        old,
                    )
                return 0, "", cid, old
        parent = msg.parent if msg.parent is not None else (LOBBY_ID if old is None else old.parent)
        assert parent is not None
        if parent not in self._channel_cfg:
            return _Code.NO_SUCH_CHANNEL, f"no parent channel {parent}", parent, None
        if old is not None and self._within(parent, old.id):
            return (
                _Code.INVALID_CHANNEL,
                "a channel cannot be moved into itself or one of its sub-channels",
                cid,
                old,
            )
        if old is None and len(self._channel_cfg) >= self.config.max_channels:
            return (
                _Code.INVALID_CHANNEL,
                f"the server has its maximum of {self.config.max_channels} channels",
                None,
                None,
            )
        if old is None and self._next_channel_id > self.config.last_channel_id:
            return _Code.INVALID_CHANNEL, "out of channel ids", None, None
        name = msg.name if msg.name is not None else (old.name if old else "")
        if (old is None or (name, parent) != (old.name, old.parent)) and self._name_taken(
            parent, name, cid
        ):
            where = self._channel_cfg[parent].name
            return (
                _Code.CHANNEL_NAME_TAKEN,
                f"{where!r} has a sub-channel called {name!r} already",
                cid,
                old,
            )
        if msg.password is None:
            password = None if old is None else old.password
        else:
            password = msg.password or None  # "": remove it
        if msg.everyone_speaks:
            speakers: frozenset[str] | None = None
        elif msg.speakers is not None:
            speakers = frozenset(msg.speakers)
        else:
            speakers = None if old is None else old.speakers
        new = ChannelConfig(
            id=self._next_channel_id if old is None else old.id,
            name=name,
            parent=parent,
            description=msg.description
            if msg.description is not None
            else ("" if old is None else old.description),
            password=password,
            max_members=msg.max_members
            if msg.max_members is not None
            else (0 if old is None else old.max_members),
            speakers=speakers,
        )
        return 0, "", new.id, new

    def _user_name(self, sender_id: int) -> str:
        user = self._roster.user(sender_id)
        return "" if user is None else user.name

    def _within(self, channel_id: int, ancestor: int) -> bool:
        """``channel_id`` is ``ancestor`` or one of its sub-channels (at any depth)."""
        cursor: int | None = channel_id
        while cursor is not None:
            if cursor == ancestor:
                return True
            cursor = self._channel_cfg[cursor].parent
        return False

    def _name_taken(self, parent: int, name: str, except_id: int | None) -> bool:
        """Another sub-channel of ``parent`` has ``name`` (compared by account key)."""
        key = name_key(name)
        return any(
            ch.parent == parent and ch.id != except_id and name_key(ch.name) == key
            for ch in self._channel_cfg.values()
        )

    def _move(self, sid: int, channel_id: int) -> None:
        """Make ``sid`` a member of ``channel_id`` ignoring password and member limit. At the
        membership cap it first leaves every channel but the Lobby (ascending ids), then the
        Lobby if it is still at the cap (``max_memberships`` 1)."""
        if len(self._roster.channels_of(sid)) >= self.config.max_memberships:
            current = self._roster.channels_of(sid)
            leaving = sorted(current - {LOBBY_ID})
            if len(current) - len(leaving) >= self.config.max_memberships:
                leaving.append(LOBBY_ID)
            for old in leaving:
                self._roster.set_membership(sid, old, False)
                self._broadcast(
                    m.MembershipChanged(
                        sender_id=sid, channel_id=old, joined=False, may_speak=False
                    )
                )
        user = self._roster.user(sid)
        assert user is not None
        speak = self._channel_cfg[channel_id].allows_speaker(user.name)
        self._roster.set_membership(sid, channel_id, True, speak)
        self._broadcast(
            m.MembershipChanged(sender_id=sid, channel_id=channel_id, joined=True, may_speak=speak)
        )

    def _check_member(self, sess: _Session, channel_id: int) -> bool:
        """The sender may address ``channel_id``; otherwise refuse (non-fatal) and say False."""
        assert sess.sender_id is not None
        if channel_id not in self._channel_cfg:
            self._refuse(sess, _Code.NO_SUCH_CHANNEL, "no such channel", channel_id)
            return False
        if not self._roster.is_member(sess.sender_id, channel_id):
            self._refuse(sess, _Code.NOT_MEMBER, "not a member", channel_id)
            return False
        return True

    def _pay_relay(self, sess: _Session, nbytes: int) -> bool:
        """Charge ``nbytes`` the server is about to relay for ``sess`` to its relay byte
        bucket; False (and ``sess`` closed, fatal RATE_LIMITED) if it cannot pay."""
        # last_rx is the ``now`` of the receive_data call being handled.
        if sess.relay_bucket.take(sess.last_rx, nbytes):
            return True
        self._close(
            sess,
            _Reason.RATE_LIMITED,
            _Code.RATE_LIMITED,
            f"more than {self.config.relay_bytes_per_s:g} relayed bytes/s",
        )
        return False

    def _on_keydist(self, sess: _Session, msg: m.KeyDist) -> None:
        if not self._check_member(sess, msg.channel_id):
            return
        sid = sess.sender_id
        assert sid is not None
        # Each envelope goes only to its recipient (PROTOCOL §2): the blob is split into one
        # message per envelope (signed body + that envelope). The signature is not checked here
        # (recipients do); a blob that does not even parse, is not a full batch (m = n <= 64),
        # names another sender or channel, or other recipients than its table, is a protocol
        # violation: each part copies the whole table, so a long table with few envelopes
        # would multiply what the relay sends.
        try:
            header, parts = keydist.split_batch(msg.blob)
        except RemoteProtocolError as exc:
            self._close(sess, _Reason.PROTOCOL_ERROR, _Code.MALFORMED_MESSAGE, exc.message)
            return
        problem = ""
        if header.sender_id != sid or header.channel_id != msg.channel_id:
            problem = "KeyDist names another sender or channel"
        elif set(msg.recipients) != set(header.recipients):
            problem = "KeyDist recipients differ from its recipient table"
        if problem:
            self._close(sess, _Reason.PROTOCOL_ERROR, _Code.MALFORMED_MESSAGE, problem)
            return
        members = self._roster.members(msg.channel_id)
        # dict.fromkeys: drop duplicates, keep the sender's order.
        deliveries = [
            (target, part)
            for r in dict.fromkeys(msg.recipients)
            if (part := parts.get(r)) is not None
            and (target := self._by_sender.get(r)) is not None
            and r != sid
            and r in members
            and target.state is ServerState.READY
        ]
        remote = [
            (r, node, part)
            for r in dict.fromkeys(msg.recipients)
            if (node := self._remote.get(r)) is not None
            and (part := parts.get(r)) is not None
            and r in members
        ]
        paid = sum(len(part) for _, part in deliveries) + sum(len(p) for _, _, p in remote)
        if not self._pay_relay(sess, paid):
            return
        for target, part in deliveries:
            self._send_many(
                (target,), m.KeyDistDelivery(sender_id=sid, channel_id=msg.channel_id, blob=part)
            )
        for r, node, part in remote:
            self._events.append(ev.ClusterKeyDist(node, r, sid, msg.channel_id, part))

    def _on_text(self, sess: _Session, msg: m.Text) -> None:
        if not self._check_member(sess, msg.channel_id):
            return
        sid = sess.sender_id
        assert sid is not None
        members = sorted(self._roster.members(msg.channel_id))
        targets = [self._by_sender[uid] for uid in members if uid != sid and uid in self._by_sender]
        remote = sum(1 for uid in members if uid in self._remote)
        if not self._pay_relay(sess, len(msg.blob) * (len(targets) + remote)):
            return
        self._send_many(
            targets, m.TextDelivery(sender_id=sid, channel_id=msg.channel_id, blob=msg.blob)
        )
        if remote:
            self._events.append(ev.ClusterText(sid, msg.channel_id, msg.blob))

    def _on_loss_reports(self, sess: _Session, msg: m.LossReports, now: float) -> None:
        sid = sess.sender_id
        assert sid is not None
        counts = self._loss_counts
        n = len(msg.reports)
        counts["received"] += n
        if not sess.loss_bucket.take(now):
            counts["rate_limited"] += n
            sess.loss_reports_dropped += n
            return
        latest = {entry.to: entry for entry in msg.reports}  # a repeated speaker: last wins
        counts["duplicate"] += n - len(latest)
        mine = self._roster.channels_of(sid)
        for to, entry in latest.items():
            target = self._by_sender.get(to)
            node = self._remote.get(to)
            if (
                (target is None and node is None)
                or to == sid
                or (target is not None and target.state is not ServerState.READY)
                or mine.isdisjoint(self._roster.channels_of(to))
            ):
                counts["not_shared"] += 1
                continue
            delivery = m.LossReportDelivery(
                from_=sid,
                loss=entry.loss,
                burst=entry.burst,
                jitter_ms=entry.jitter_ms,
                frames=entry.frames,
            )
            if target is not None:
                self._send(target, delivery)
            elif node is not None:
                self._events.append(ev.ClusterLossReport(node, to, delivery))
            counts["forwarded"] += 1

    def _update_user(
        self,
        sess: _Session,
        *,
        sk_pub: bytes | None = None,
        skc: bytes | None = None,
        muted: bool | None = None,
        deafened: bool | None = None,
    ) -> None:
        assert sess.sender_id is not None
        old = self._roster.user(sess.sender_id)
        assert old is not None
        new = UserView(
            sender_id=old.sender_id,
            name=old.name,
            ik_pub=old.ik_pub,
            sk_pub=old.sk_pub if sk_pub is None else sk_pub,
            skc=old.skc if skc is None else skc,
            muted=old.muted if muted is None else muted,
            deafened=old.deafened if deafened is None else deafened,
            admin=old.admin,
        )
        if new == old:
            return
        self._roster.update_user(new)
        self._broadcast(m.UserUpdated(user=self._roster.to_wire_user(sess.sender_id)))

    # -- sending and closing ---------------------------------------------------------------------

    def _send(self, sess: _Session, msg: m.ServerMessage) -> None:
        nxt = next_server_state(sess.state, (_SEND, type(msg)))
        sess.out += encode_frame(m.encode_checked(msg))
        self._dirty[sess.conn_id] = None
        sess.state = nxt

    def _send_many(self, targets: Iterable[_Session], msg: m.ServerMessage) -> None:
        """Send one message to several sessions, encoding and checking it once."""
        frame: bytes | None = None
        for sess in targets:
            if sess.state is not ServerState.READY:
                continue
            if frame is None:
                frame = encode_frame(m.encode_checked(msg))
            next_server_state(sess.state, (_SEND, type(msg)))  # a check: READY keeps READY
            sess.out += frame
            self._dirty[sess.conn_id] = None

    def _broadcast(self, msg: m.ServerMessage) -> None:
        """Send to every logged-in session (READY ones; a newcomer gets LoginOk instead). On a
        cluster node, a roster change of a user of ours also goes to the other nodes."""
        self._send_many(list(self._by_sender.values()), msg)
        if self.config.cluster and isinstance(msg, _CLUSTER_ROSTER):
            sid = (
                msg.user.sender_id
                if isinstance(msg, m.UserJoined | m.UserUpdated)
                else msg.sender_id
            )
            if sid not in self._remote:
                self._events.append(ev.ClusterRoster(msg))

    def _refuse(self, sess: _Session, code: int, message: str, channel_id: int | None) -> None:
        """A non-fatal Error answering one request."""
        self._send(sess, m.Error(code=code, message=message, fatal=False, channel_id=channel_id))

    def _close(
        self,
        sess: _Session,
        reason: ev.CloseReason,
        code: int,
        message: str,
        leave: m.LeaveReason = _Leave.PROTOCOL_ERROR,
    ) -> None:
        """Send a fatal Error to ``sess`` and close it."""
        if sess.state is ServerState.CLOSED:
            return
        text = m.clean_text(message)
        self._send(sess, m.Error(code=code, message=text, fatal=True))
        sess.state = next_server_state(sess.state, Trigger.ABORT)
        self._finish(sess, reason, code, text, leave)

    def _finish(
        self, sess: _Session, reason: ev.CloseReason, code: int, message: str, leave: int
    ) -> None:
        """Bookkeeping once ``sess`` is CLOSED: leave the roster, tell the others and the
        adapter."""
        sid = sess.sender_id
        if sess.in_roster and sid is not None:
            sess.in_roster = False
            del self._by_sender[sid]
            key = name_key(sess.name)
            if self._by_name.get(key) is sess:
                del self._by_name[key]
            self._roster.remove_user(sid)
            if not self._shutting_down:
                self._broadcast(m.UserLeft(sender_id=sid, reason=leave))
        self._events.append(ev.SessionClosed(sess.conn_id, sid, reason, int(code), message))

    # -- helpers ---------------------------------------------------------------------------------

    def _require_conn(self, conn_id: int) -> _Session:
        try:
            return self._conns[conn_id]
        except KeyError:
            raise LocalProtocolError(f"unknown connection {conn_id}") from None

    def _deadline(self, sess: _Session) -> float | None:
        if sess.state is ServerState.CLOSED:
            return None
        if sess.state is ServerState.READY:
            return sess.last_rx + self.config.idle_timeout
        return sess.opened_at + self.config.login_timeout


_CLUSTER_ROSTER: Final = (m.UserJoined, m.UserUpdated, m.UserLeft, m.MembershipChanged)


def _nobody_is_banned(ik_pub: bytes) -> bool:
    del ik_pub
    return False


def _is_closed(sess: _Session) -> bool:
    # A function, not an inline test, so type checkers don't narrow the state across calls
    # that change it.
    return sess.state is ServerState.CLOSED


def _parents_first(channels: Iterable[ChannelConfig]) -> list[ChannelConfig]:
    """Order channels so every parent precedes its children (config order is free)."""
    pending = list(channels)
    placed = {LOBBY_ID}
    ordered: list[ChannelConfig] = []
    while pending:
        ready = [c for c in pending if c.parent in placed]
        if not ready:  # pragma: no cover - ServerConfig validation rules this out
            raise LocalProtocolError("channel tree is not connected to the lobby")
        for c in ready:
            ordered.append(c)
            placed.add(c.id)
        pending = [c for c in pending if c.id not in placed]
    return ordered


def _secret_equal(given: str, expected: str) -> bool:
    """Constant-time comparison that also hides the lengths (both sides hashed first)."""
    a = hashlib.sha256(given.encode("utf-8")).digest()
    b = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(a, b)


def _check_channel_password(expected: ChannelPassword, given: str | None) -> bool:
    if given is None:
        return False
    if isinstance(expected, str):
        return _secret_equal(given, expected)
    return bool(expected(given))


def _verify_ed25519(ik_pub: bytes, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(ik_pub).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
