"""Every event the sans-IO sessions return, as frozen dataclasses documented field by field.

:class:`~voipclient.net.client.ClientSession` returns :class:`ClientEvent` instances from
``receive_data``, ``handle_timer`` and ``connection_lost``;
:class:`~voipclient.server.control.ServerCore` queues :class:`ServerEvent` instances for its adapter
(``events()``). Events carry plain Python values (ints, bytes, strings, roster views) and never a
wire Struct, except :class:`Negotiated` which passes the server's announced limits on as they are.

Integer ``code`` fields hold :class:`~voipclient.net.messages.ErrorCode` values and ``reason``
fields of user departures hold :class:`~voipclient.net.messages.LeaveReason` values; both are
IntEnums, so ``event.code == ErrorCode.NAME_TAKEN`` works, and unknown future codes stay ints.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from voipclient.errors import ProtocolError
from voipclient.net import messages as m
from voipclient.net.messages import AdminOp, ChannelOp, Limits
from voipclient.net.roster import ChannelView, RosterSnapshot, UserView

__all__ = [
    "AdminActionHandled",
    "AdminGranted",
    "AdminNoticeReceived",
    "BanRequested",
    "ChannelAdded",
    "ChannelAdminDone",
    "ChannelAdminHandled",
    "ChannelDeleted",
    "ChannelRemoved",
    "ChannelSaved",
    "ChannelUpdated",
    "ClientEvent",
    "CloseReason",
    "ConnectionClosed",
    "KeyDistReceived",
    "LoggedIn",
    "LossReportReceived",
    "MembershipChanged",
    "Negotiated",
    "PingStats",
    "RosterChanged",
    "ServerError",
    "ServerEvent",
    "ServerShuttingDown",
    "SessionAuthenticated",
    "SessionClosed",
    "SessionKeyPublished",
    "TextReceived",
    "UserJoined",
    "UserLeft",
    "UserUpdated",
    "VoiceFromTunnel",
    "VoiceTransportChanged",
    "VoiceTunnelReceived",
]


class CloseReason(enum.Enum):
    """Why a connection (client side) or a session (server side) ended."""

    #: We asked for it (client ``close()``; server ``kick``) and the close completed.
    LOCAL_CLOSE = "local_close"
    #: The peer said Bye.
    PEER_BYE = "peer_bye"
    #: The peer sent a fatal Error (see ``code``/``message``).
    PEER_ERROR = "peer_error"
    #: The peer violated the protocol (bad frame, malformed or unexpected message).
    PROTOCOL_ERROR = "protocol_error"
    #: No data / no Pong (client), login deadline or idle timeout (server).
    TIMEOUT = "timeout"
    #: The transport went away without a goodbye.
    CONNECTION_LOST = "connection_lost"
    #: The server is shutting down.
    SHUTDOWN = "shutdown"
    #: Server side: the login was refused (password, signature, name, capacity, version).
    LOGIN_FAILED = "login_failed"
    #: Server side: the control-message token bucket ran dry.
    RATE_LIMITED = "rate_limited"
    #: Server side: the same identity logged in again with the same name.
    REPLACED = "replaced"


# =============================================================================================
# Client events
# =============================================================================================


class ClientEvent:
    """Base class of the events a ClientSession returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Negotiated(ClientEvent):
    """The server answered Hello; Login has been queued."""

    #: The protocol version both sides speak (``"vc1"``).
    version: str
    #: The server's software name as it announced it.
    server_name: str
    #: The server's limits (frame size, membership cap, rates, idle timeout).
    limits: Limits
    #: The server requires a password (Login carries the one we were given, if any).
    password_required: bool


@dataclass(frozen=True, slots=True)
class LoggedIn(ClientEvent):
    """Login succeeded and the whole roster has arrived: the session is READY."""

    #: Our session id and voice sender id (PROTOCOL.md §3); also the hop session id.
    sender_id: int
    #: 32-byte secret from which the hop MAC keys K_c2s/K_s2c are derived.
    hop_secret: bytes = field(repr=False)
    #: The relay's UDP port on the server host; 0 means no UDP, tunnel voice over TLS.
    udp_port: int
    #: The complete roster, ourselves included (in the Lobby).
    roster: RosterSnapshot


@dataclass(frozen=True, slots=True)
class RosterChanged(ClientEvent):
    """The roster changed. Emitted once per ``receive_data`` call, after the detailed events."""

    #: The roster after every change of the batch.
    roster: RosterSnapshot


@dataclass(frozen=True, slots=True)
class UserJoined(ClientEvent):
    """A user logged in."""

    #: The new user.
    user: UserView
    #: Channel ids it is a member of (normally the Lobby).
    channels: frozenset[int]


@dataclass(frozen=True, slots=True)
class UserLeft(ClientEvent):
    """A user's session ended: rotate sender keys of the channels it shared with us (§2)."""

    #: The user as it was just before it left.
    user: UserView
    #: The channel ids it was a member of when it left.
    channels: frozenset[int]
    #: A LeaveReason value.
    reason: int


@dataclass(frozen=True, slots=True)
class UserUpdated(ClientEvent):
    """A user's record changed (mute/deafen, session key)."""

    #: The new record.
    user: UserView
    #: The record before the change.
    previous: UserView


@dataclass(frozen=True, slots=True)
class SessionKeyPublished(ClientEvent):
    """A user published (or replaced) its session KEM key: check the SKC, then send KeyDists."""

    #: Who published it.
    sender_id: int
    #: The KEM public key.
    sk_pub: bytes
    #: The session key certificate (verify it against the user's identity key).
    skc: bytes


@dataclass(frozen=True, slots=True)
class MembershipChanged(ClientEvent):
    """A user joined or left one channel (possibly us: that is how a join/leave succeeds)."""

    #: The user.
    sender_id: int
    #: The channel.
    channel_id: int
    #: True for a join, False for a leave.
    joined: bool
    #: After a join: the channel's ACL lets the user transmit there.
    may_speak: bool


@dataclass(frozen=True, slots=True)
class ChannelAdded(ClientEvent):
    """A channel was created."""

    #: The new channel.
    channel: ChannelView


@dataclass(frozen=True, slots=True)
class ChannelUpdated(ClientEvent):
    """A channel's attributes changed."""

    #: The new record.
    channel: ChannelView
    #: The record before the change.
    previous: ChannelView


@dataclass(frozen=True, slots=True)
class ChannelRemoved(ClientEvent):
    """A channel was removed; memberships of it ended with it (no MembershipChanged follows)."""

    #: The channel as it was.
    channel: ChannelView
    #: Sender ids that were members of it.
    members: frozenset[int]


@dataclass(frozen=True, slots=True)
class KeyDistReceived(ClientEvent):
    """A KeyDist batch (§2) addressed to us; verify and open it in the crypto layer."""

    #: The sender's session id, as the server saw it (the blob's signature must agree).
    sender_id: int
    #: The channel the keys are for.
    channel_id: int
    #: The opaque signed batch.
    blob: bytes


@dataclass(frozen=True, slots=True)
class TextReceived(ClientEvent):
    """An end-to-end encrypted text message (§4) for a channel we are a member of."""

    #: The author's session id, as the server saw it.
    sender_id: int
    #: The channel.
    channel_id: int
    #: The opaque encrypted, signed message.
    blob: bytes


@dataclass(frozen=True, slots=True)
class VoiceTunnelReceived(ClientEvent):
    """A voice datagram that came through the TLS tunnel; treat it exactly like a UDP one."""

    #: The datagram, 1..1200 bytes.
    datagram: bytes


@dataclass(frozen=True, slots=True)
class PingStats(ClientEvent):
    """A Pong arrived: control-path RTT and UDP loss figures."""

    #: Sequence number of the answered Ping.
    seq: int
    #: This round trip, in milliseconds.
    rtt_ms: float
    #: Smoothed RTT (RFC 6298, alpha 1/8), in milliseconds.
    srtt_ms: float
    #: RTT variation (RFC 6298, beta 1/4), in milliseconds.
    rttvar_ms: float
    #: Pings sent so far.
    pings_sent: int
    #: Pongs received so far (a Ping without Pong after the timeout counts as lost).
    pongs_received: int
    #: UDP datagrams the server received from us since login (its count, from the Pong).
    udp_received_by_server: int
    #: Fraction of our UDP datagrams lost on the way up over the last ping interval, 0..1;
    #: None when we sent nothing in that interval.
    udp_loss_up: float | None
    #: Fraction of datagrams lost on the way down over the last ping interval, 0..1 (from our
    #: own counters as reported with ``report_udp_stats``); None when nothing was expected.
    udp_loss_down: float | None


@dataclass(frozen=True, slots=True)
class ClusterNodesLearned(ClientEvent):
    """The server is a node of a cluster: these other nodes ("host:port") share its key."""

    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LossReportReceived(ClientEvent):
    """A listener reported how our voice reaches it (relayed by the server, which only forwards
    reports from users sharing a channel with us). Feed it to the redundancy policy:
    ``policy.add_report(e.listener_id, LossReport(my_sender_id, e.loss, e.burst, e.jitter_ms,
    e.frames), now)``."""

    #: The listener's sender id, as the server saw it.
    listener_id: int
    #: Fraction of our frames it lost in its window, 0..1.
    loss: float
    #: Mean length of its loss runs, in frames (0 when nothing was lost).
    burst: float
    #: Interarrival jitter it measured, in milliseconds.
    jitter_ms: float
    #: Frames it expected in the window (received + lost); 0 means it heard nothing of us.
    frames: int


@dataclass(frozen=True, slots=True)
class AdminNoticeReceived(ClientEvent):
    """An administrator acted on a user: on us (``target`` is our sender id; a kick or ban is
    followed by a fatal ServerError KICKED) or, as confirmation, on the user we named."""

    #: KICK, BAN or MOVE.
    action: AdminOp
    #: The administrator's sender id.
    by: int
    #: The user acted on.
    target: int
    #: MOVE: the channel the target was made a member of; else None.
    channel_id: int | None
    #: The administrator's reason (may be empty).
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelAdminDone(ClientEvent):
    """Our ``channel_admin`` request was carried out (the roster events it caused came first).
    Answers come in request order; a refused request is a non-fatal ServerError instead."""

    #: CREATE, UPDATE or DELETE.
    op: ChannelOp
    #: The channel created (its new id), changed or deleted.
    channel_id: int


@dataclass(frozen=True, slots=True)
class ServerError(ClientEvent):
    """The server reported an error (a failed join/leave, or the reason it closes us)."""

    #: An ErrorCode value.
    code: int
    #: Human-readable text from the server.
    message: str
    #: The server closes the connection after this error.
    fatal: bool
    #: The channel the failed request concerned, if any.
    channel_id: int | None


@dataclass(frozen=True, slots=True)
class ServerShuttingDown(ClientEvent):
    """The server is going away; a ConnectionClosed follows."""

    #: Text from the server.
    reason: str
    #: Suggested delay before reconnecting, in milliseconds; None: don't reconnect by itself.
    reconnect_after_ms: int | None


@dataclass(frozen=True, slots=True)
class ConnectionClosed(ClientEvent):
    """The session is over (state CLOSED). The last event a session returns.

    Anything still in ``data_to_send()`` (a Bye or a fatal Error) should be flushed before the
    adapter closes the transport.
    """

    #: Why.
    reason: CloseReason
    #: An ErrorCode value when an error caused it, else 0.
    code: int = 0
    #: Human-readable detail.
    message: str = ""
    #: The protocol error that caused it (the server's violation), if any.
    error: ProtocolError | None = None


# =============================================================================================
# Server events
# =============================================================================================


class ServerEvent:
    """Base class of the events ServerCore queues for its adapter."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SessionAuthenticated(ServerEvent):
    """A connection logged in: key the UDP relay's hop MACs for it."""

    #: The adapter's connection id.
    conn_id: int
    #: The session's sender id (unique for the server run, never reused).
    sender_id: int
    #: The user name.
    name: str
    #: The user's Ed25519 identity public key (32 bytes).
    ik_pub: bytes
    #: The 32-byte hop secret sent to the client in LoginOk.
    hop_secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionClosed(ServerEvent):
    """A connection's session is over. Flush ``data_to_send(conn_id)`` (it may hold a final
    Error/Bye/ServerShutdown), close the transport, then call ``connection_lost``. Forget the
    sender id in the UDP relay."""

    #: The adapter's connection id.
    conn_id: int
    #: The sender id if the session had logged in, else None.
    sender_id: int | None
    #: Why.
    reason: CloseReason
    #: ErrorCode of the fatal Error we sent (or the peer sent), else 0.
    code: int = 0
    #: Human-readable detail.
    message: str = ""


@dataclass(frozen=True, slots=True)
class VoiceFromTunnel(ServerEvent):
    """A client sent a voice datagram over TLS: relay it like a UDP datagram from that session
    (the relay still checks hop MAC, ACL, replay window)."""

    #: The adapter's connection id.
    conn_id: int
    #: The session's sender id.
    sender_id: int
    #: The datagram, 1..1200 bytes, untouched.
    datagram: bytes


@dataclass(frozen=True, slots=True)
class VoiceTransportChanged(ServerEvent):
    """A client switched where it wants voice: the TLS tunnel (True) or UDP (False)."""

    #: The adapter's connection id.
    conn_id: int
    #: The session's sender id.
    sender_id: int
    #: True: send this listener's voice with ``send_voice_tunnel``.
    tunnel: bool


@dataclass(frozen=True, slots=True)
class AdminActionHandled(ServerEvent):
    """A logged-in session sent an AdminAction; ``code`` says whether it was carried out (0)
    or refused (the ErrorCode of the non-fatal Error sent back). For the adapter's log."""

    #: The requester's connection id.
    conn_id: int
    #: The requester's sender id.
    sender_id: int
    #: The requester's user name.
    name: str
    #: KICK, BAN or MOVE.
    action: AdminOp
    #: The target's sender id, as requested.
    target: int
    #: The target's user name; "" when there is no such user.
    target_name: str
    #: MOVE: the destination channel; else None.
    channel_id: int | None
    #: The requester's reason.
    reason: str
    #: 0: done; otherwise the ErrorCode of the refusal (NOT_ADMIN, NO_SUCH_USER, ...).
    code: int = 0


@dataclass(frozen=True, slots=True)
class BanRequested(ServerEvent):
    """An administrator banned an identity key: persist it so that every later login with this
    key is refused. The core has already removed every session of the key."""

    #: The banned Ed25519 identity key (32 bytes).
    ik_pub: bytes
    #: The target's user name when it was banned (a label for the operator).
    name: str
    #: The administrator's reason (may be empty).
    reason: str
    #: The administrator's user name.
    by: str


@dataclass(frozen=True, slots=True)
class ChannelAdminHandled(ServerEvent):
    """A logged-in session sent a ChannelAdmin; ``code`` says whether it was carried out (0)
    or refused (the ErrorCode of the non-fatal Error sent back). For the adapter's log."""

    #: The requester's connection id.
    conn_id: int
    #: The requester's sender id.
    sender_id: int
    #: The requester's user name.
    name: str
    #: CREATE, UPDATE or DELETE.
    op: ChannelOp
    #: The channel: the new one's id for a CREATE that was done; None for a refused CREATE.
    channel_id: int | None
    #: The channel's name (after the change; "" when unknown).
    channel_name: str
    #: 0: done; otherwise the ErrorCode of the refusal (NOT_ADMIN, NO_SUCH_CHANNEL, ...).
    code: int = 0


@dataclass(frozen=True, slots=True)
class ChannelSaved(ServerEvent):
    """An administrator created or changed a channel: persist its record (it replaces any
    earlier one with this id), so the channel is there again after a restart."""

    #: The channel id (administrators' channels are numbered from 10,000 up, never reused).
    channel_id: int
    #: The parent channel id (1: the Lobby).
    parent: int
    #: Display name.
    name: str
    #: Free text.
    description: str
    #: Joining needs a password.
    password_protected: bool
    #: The password an administrator just set, in clear: store a hash of it, never the password.
    #: None: no new password (keep the stored one, or none when not ``password_protected``).
    new_password: str | None = field(repr=False)
    #: Member limit, 0 = unlimited.
    max_members: int
    #: Names allowed to transmit; None: every member.
    speakers: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class ChannelDeleted(ServerEvent):
    """An administrator deleted a channel it had made: forget its record."""

    #: The channel id.
    channel_id: int


@dataclass(frozen=True, slots=True)
class AdminGranted(ServerEvent):
    """The server had no administrator and makes the first identity that logged in one
    (``ServerConfig.admin_first_user``): persist it, so it stays one after a restart (and the
    rule does not pick anyone else)."""

    #: The new administrator's Ed25519 identity key (32 bytes).
    ik_pub: bytes
    #: Its user name when it was made one (a label for the operator).
    name: str


# -- cluster (voipclient-server --cluster): what a node hands the other nodes -------------------


@dataclass(frozen=True, slots=True)
class ClusterRoster(ServerEvent):
    """A roster change of a user of this node (UserJoined, UserUpdated, UserLeft or
    MembershipChanged, as sent to this node's clients), for the other nodes' rosters."""

    message: m.ServerMessage


@dataclass(frozen=True, slots=True)
class ClusterKeyDist(ServerEvent):
    """One KeyDist part for a recipient on another node (end-to-end sealed to it: opaque)."""

    node: str
    recipient: int
    sender_id: int
    channel_id: int
    blob: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClusterText(ServerEvent):
    """A channel text (end-to-end encrypted) for the channel's members on other nodes."""

    sender_id: int
    channel_id: int
    blob: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClusterLossReport(ServerEvent):
    """A loss report for a speaker on another node."""

    node: str
    to: int
    message: m.LossReportDelivery


@dataclass(frozen=True, slots=True)
class ClusterAdmin(ServerEvent):
    """An administrator here kicked, banned or moved a user of another node: that node carries
    it out (:meth:`ServerCore.admin_from_node`)."""

    node: str
    action: m.AdminOp
    by: int
    by_name: str
    target: int
    channel_id: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class ClusterReplaced(ServerEvent):
    """A user of another node logged in here with the same identity (it moved, typically when
    its node failed): that node must end the old session."""

    node: str
    sender_id: int
