"""The vc1 control-channel message schema: one msgspec Struct per message, msgpack on the wire.

Every control frame (see :mod:`voipclient.net.frames`) carries exactly one message: a msgpack map
whose ``"t"`` key is the message tag (``"hello"``, ``"login"``, ...) and whose other keys are the
fields below. Fields equal to their default are omitted on the wire (``omit_defaults``); unknown
keys are ignored so a later minor revision can add optional fields without breaking older peers.

Bounds (string lengths, list sizes, blob sizes, integer ranges) are declared once, with
:class:`msgspec.Meta`, on the field types; :func:`decode` enforces them and turns any failure into a
:class:`~voipclient.errors.RemoteProtocolError` whose ``field`` names the offending field as a path
(``"users[3].name"``). The crypto payloads (KeyDist envelopes, text messages, voice datagrams) are
opaque byte blobs here: they are built and checked by :mod:`voipclient.crypto`.

Direction and allowed states of each message are in :mod:`voipclient.net.states` (the one
transition table) and documented in ``docs/protocol.md``.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Final, TypeAlias, Union

import msgspec
from msgspec import Meta

from voipclient.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "LOGIN_CONTEXT",
    "MAX_KEYDIST_BLOB",
    "MAX_LOSS_REPORTS",
    "MAX_SPEAKERS",
    "MAX_TEXT_BLOB",
    "MAX_VOICE_DATAGRAM",
    "PROTOCOL_VERSION",
    "AdminAction",
    "AdminNotice",
    "AdminOp",
    "Bye",
    "ChannelAdded",
    "ChannelAdmin",
    "ChannelAdminOk",
    "ChannelInfo",
    "ChannelOp",
    "ChannelRemoved",
    "ChannelUpdated",
    "ClientMessage",
    "ClusterNodes",
    "Error",
    "ErrorCode",
    "Hello",
    "JoinChannel",
    "KeyDist",
    "KeyDistDelivery",
    "LeaveChannel",
    "LeaveReason",
    "Limits",
    "Login",
    "LoginOk",
    "LossReportDelivery",
    "LossReportEntry",
    "LossReports",
    "Membership",
    "MembershipChanged",
    "Message",
    "Ping",
    "Pong",
    "PublishSessionKey",
    "RosterPage",
    "ServerHello",
    "ServerMessage",
    "ServerShutdown",
    "SetSelfState",
    "SetVoiceTransport",
    "Text",
    "TextDelivery",
    "UdpStats",
    "UserInfo",
    "UserJoined",
    "UserLeft",
    "UserUpdated",
    "VoiceTunnel",
    "clean_text",
    "decode",
    "encode",
    "encode_checked",
    "login_transcript",
]

#: The only protocol version this implementation speaks.
PROTOCOL_VERSION: Final = "vc1"
#: Domain separation label of the login signature (see :func:`login_transcript`).
LOGIN_CONTEXT: Final = b"vc1 login"


class ErrorCode(enum.IntEnum):
    """Machine-readable reason carried by :class:`Error` and by every ``ProtocolError``.

    On the wire a code is a plain u16 so a newer peer may send codes this enum does not know yet.
    """

    #: Unspecified protocol violation.
    PROTOCOL_ERROR = 1
    #: A frame payload is not a valid message (msgpack or schema); ``field`` says where.
    MALFORMED_MESSAGE = 2
    #: A frame header announced more than the receiver's maximum frame size.
    FRAME_TOO_LARGE = 3
    #: A frame header announced a zero-length payload.
    FRAME_EMPTY = 4
    #: A well-formed message that is not allowed in the receiver's current state.
    UNEXPECTED_MESSAGE = 5
    #: No protocol version in common.
    UNSUPPORTED_VERSION = 6
    #: Login deadline, idle timeout or missing pongs.
    TIMEOUT = 7
    #: The peer sent control messages faster than the token bucket allows.
    RATE_LIMITED = 8
    #: The server has no room for another session (or ran out of sender ids).
    SERVER_FULL = 9
    #: The server password is missing or wrong.
    WRONG_PASSWORD = 10
    #: The login signature does not verify under the presented identity key.
    BAD_SIGNATURE = 11
    #: The user name is bound to a different identity key.
    NAME_TAKEN = 12
    #: The same identity logged in again with this name; this (older) session is replaced.
    SESSION_REPLACED = 13
    #: An administrator removed the user.
    KICKED = 14
    #: The login's user name is refused (``voipclient.names.check_name``: invisible, bidi,
    #: format or control characters, not NFC, mixed scripts, stray spaces); the message says why.
    INVALID_NAME = 15
    #: The named channel does not exist.
    NO_SUCH_CHANNEL = 20
    #: The channel password is missing or wrong.
    WRONG_CHANNEL_PASSWORD = 21
    #: The channel has reached its member limit.
    CHANNEL_FULL = 22
    #: The user is already a member of the maximum number of channels.
    TOO_MANY_MEMBERSHIPS = 23
    #: Join of a channel the user is already a member of.
    ALREADY_MEMBER = 24
    #: Leave, KeyDist or Text for a channel the user is not a member of.
    NOT_MEMBER = 25
    #: The server's roster data contradicts itself (client-side detection).
    ROSTER_INCONSISTENT = 30
    #: The server is shutting down.
    SHUTTING_DOWN = 40
    #: An admin action or channel_admin from an identity key that is not one of the server's
    #: administrators.
    NOT_ADMIN = 50
    #: An admin action names a sender id that is not logged in.
    NO_SUCH_USER = 51
    #: A channel_admin would give a channel the name of a sibling (same parent; names compare
    #: by account key, ``voipclient.names.name_key``: case and look-alike letters do not count).
    CHANNEL_NAME_TAKEN = 52
    #: A channel_admin would change or delete the Lobby or a channel of the server's
    #: configuration file (only channels administrators made can be changed over the protocol).
    CHANNEL_LOCKED = 53
    #: A channel_admin would delete a channel that still has sub-channels.
    CHANNEL_HAS_SUBCHANNELS = 54
    #: A channel_admin the channel tree refuses otherwise: a parent that is the channel itself
    #: or one of its sub-channels, or the server's channel limit is reached.
    INVALID_CHANNEL = 55
    #: A bug on the sender's side.
    INTERNAL_ERROR = 99


class LeaveReason(enum.IntEnum):
    """Why a user left the roster (:class:`UserLeft`). A plain u8 on the wire."""

    #: The client said Bye.
    QUIT = 0
    #: The connection dropped without a Bye.
    DISCONNECTED = 1
    #: Idle or login timeout.
    TIMEOUT = 2
    #: The server closed the session for a protocol violation or rate-limit breach.
    PROTOCOL_ERROR = 3
    #: The same identity logged in again with this name.
    REPLACED = 4
    #: An administrator removed the user.
    KICKED = 5
    #: The server is shutting down.
    SHUTDOWN = 6


class AdminOp(enum.IntEnum):
    """What an :class:`AdminAction` does. A u8 on the wire; any other value is a malformed
    message."""

    #: End the target's session (fatal KICKED error, UserLeft reason KICKED).
    KICK = 1
    #: Kick, and refuse the target's identity key at every later login.
    BAN = 2
    #: Make the target a member of ``channel_id`` (see docs/protocol.md for the exact rule).
    MOVE = 3


class ChannelOp(enum.IntEnum):
    """What a :class:`ChannelAdmin` does. A u8 on the wire; any other value is a malformed
    message."""

    #: Make a new channel: ``name`` is required, ``channel_id`` absent (the server picks it).
    CREATE = 1
    #: Change the fields given of channel ``channel_id``; absent fields stay as they are.
    UPDATE = 2
    #: Remove channel ``channel_id`` (it must have no sub-channels); no other field is allowed.
    DELETE = 3


# ---------------------------------------------------------------------------------------------
# Limits. All lengths of ``str`` are in Unicode code points, of ``bytes`` in bytes.
# ---------------------------------------------------------------------------------------------

U8_MAX: Final = 0xFF
U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFF_FFFF
#: Largest "u64" msgspec can bound-check (it checks within int64); ~292 million years of ms.
U64_MAX: Final = 0x7FFF_FFFF_FFFF_FFFF

MAX_VERSIONS: Final = 8
MAX_VERSION_LEN: Final = 16
MAX_SOFTWARE_LEN: Final = 64  # client/server software name or version string
MAX_NAME_LEN: Final = 32  # user name
MAX_CHANNEL_NAME_LEN: Final = 64
MAX_DESCRIPTION_LEN: Final = 512
MAX_PASSWORD_LEN: Final = 128
MAX_ERROR_MESSAGE_LEN: Final = 512
MAX_REASON_LEN: Final = 256
#: Memberships listed per user on the wire (the server's own cap, default 8, is lower).
MAX_MEMBERSHIPS: Final = 64
#: Channels or users per LoginOk / RosterPage; the server also pages by encoded size.
MAX_PAGE_ITEMS: Final = 1024
#: Recipients per KeyDist batch: a batch is one signed blob of ~1,200-byte HPKE envelopes, and
#: 64 of those still fit one 64 KiB frame.
MAX_RECIPIENTS: Final = 64
#: A KeyDist blob: leaves ~1 KiB of a 64 KiB frame for the message's own fields.
MAX_KEYDIST_BLOB: Final = 63 * 1024
#: An encrypted, signed text message (28-byte header + padded text + tag + signature).
MAX_TEXT_BLOB: Final = 16 * 1024
#: A voice datagram, tunnelled or not (PROTOCOL.md §3).
MAX_VOICE_DATAGRAM: Final = 1200
#: SK public key: an MLKEM768_X25519 public key is 1,216 bytes; leave room for other suites.
MAX_SK_PUB: Final = 2048
#: Session key certificate: it embeds the SK public key, the account id (<= 256 bytes), the
#: sender id, not_after and a signature: 1,551 bytes at most for MLKEM768_X25519.
MAX_SKC: Final = 2048
ED25519_PUB_LEN: Final = 32
ED25519_SIG_LEN: Final = 64
CHALLENGE_LEN: Final = 32
HOP_SECRET_LEN: Final = 32
#: Entries per LossReports message: one per speaker the listener hears; 64 is far more than the
#: speakers of the channels one user can be in at once, and a full message stays < 3 KiB.
MAX_LOSS_REPORTS: Final = 64
#: Upper bound of a reported mean loss-run length, in frames (finite, so inf is refused).
MAX_LOSS_BURST: Final = 1e6
#: Names in a channel's speak ACL set by ChannelAdmin (256 names of <= 128 bytes: < 33 KiB).
MAX_SPEAKERS: Final = 256

# A visible name: no control characters anywhere, no whitespace at either end.
_NAME_PATTERN: Final = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
# Free text (descriptions, error messages, reasons): no control characters except \t and \n.
_TEXT_PATTERN: Final = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"

U8 = Annotated[int, Meta(ge=0, le=U8_MAX)]
U16 = Annotated[int, Meta(ge=0, le=U16_MAX)]
U32 = Annotated[int, Meta(ge=0, le=U32_MAX)]
U64 = Annotated[int, Meta(ge=0, le=U64_MAX)]
#: Sender ids and channel ids are non-zero u32 (0 is never assigned).
SenderId = Annotated[int, Meta(ge=1, le=U32_MAX)]
ChannelId = Annotated[int, Meta(ge=1, le=U32_MAX)]
Milliseconds = Annotated[float, Meta(ge=0.0, le=1e9)]
#: A fraction 0..1 (NaN fails every bound, so it is refused too).
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
LossBurst = Annotated[float, Meta(ge=0.0, le=MAX_LOSS_BURST)]
Version = Annotated[str, Meta(min_length=1, max_length=MAX_VERSION_LEN, pattern=_NAME_PATTERN)]
Software = Annotated[str, Meta(max_length=MAX_SOFTWARE_LEN, pattern=_TEXT_PATTERN)]
UserName = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LEN, pattern=_NAME_PATTERN)]
ChannelName = Annotated[
    str, Meta(min_length=1, max_length=MAX_CHANNEL_NAME_LEN, pattern=_NAME_PATTERN)
]
Description = Annotated[str, Meta(max_length=MAX_DESCRIPTION_LEN, pattern=_TEXT_PATTERN)]
Password = Annotated[str, Meta(max_length=MAX_PASSWORD_LEN)]
ErrorText = Annotated[str, Meta(max_length=MAX_ERROR_MESSAGE_LEN, pattern=_TEXT_PATTERN)]
Reason = Annotated[str, Meta(max_length=MAX_REASON_LEN, pattern=_TEXT_PATTERN)]
IdentityKey = Annotated[bytes, Meta(min_length=ED25519_PUB_LEN, max_length=ED25519_PUB_LEN)]
Signature = Annotated[bytes, Meta(min_length=ED25519_SIG_LEN, max_length=ED25519_SIG_LEN)]
Challenge = Annotated[bytes, Meta(min_length=CHALLENGE_LEN, max_length=CHALLENGE_LEN)]
HopSecret = Annotated[bytes, Meta(min_length=HOP_SECRET_LEN, max_length=HOP_SECRET_LEN)]
SkPub = Annotated[bytes, Meta(min_length=1, max_length=MAX_SK_PUB)]
Skc = Annotated[bytes, Meta(min_length=1, max_length=MAX_SKC)]
KeyDistBlob = Annotated[bytes, Meta(min_length=1, max_length=MAX_KEYDIST_BLOB)]
TextBlob = Annotated[bytes, Meta(min_length=1, max_length=MAX_TEXT_BLOB)]
Datagram = Annotated[bytes, Meta(min_length=1, max_length=MAX_VOICE_DATAGRAM)]


# ---------------------------------------------------------------------------------------------
# Embedded records (not messages by themselves; no tag).
# ---------------------------------------------------------------------------------------------


class _Record(msgspec.Struct, frozen=True, omit_defaults=True):
    """Base of embedded records."""


class Limits(_Record, frozen=True):
    """Server limits announced in :class:`ServerHello` so a client can stay inside them."""

    #: Largest control frame payload the server accepts, in bytes (always >= 64 KiB).
    max_frame_size: Annotated[int, Meta(ge=65536, le=U32_MAX)]
    #: Most channels one user may be a member of at once.
    max_memberships: Annotated[int, Meta(ge=1, le=MAX_MEMBERSHIPS)]
    #: Control messages per second the server's token bucket refills (VoiceTunnel and
    #: LossReports excluded: each has a bucket of its own whose excess is dropped).
    rate_per_s: Annotated[float, Meta(gt=0.0, le=1e6)]
    #: Token bucket size: messages that may arrive back to back.
    rate_burst: Annotated[int, Meta(ge=1, le=U32_MAX)]
    #: The server closes a session that sent nothing for this long, in milliseconds.
    idle_timeout_ms: U32
    #: Tunnelled voice datagrams per second the server relays from one session (excess dropped).
    tunnel_rate_per_s: Annotated[float, Meta(gt=0.0, le=1e6)]


class ChannelInfo(_Record, frozen=True):
    """One channel of the tree."""

    #: Server-assigned channel id (the Lobby is always 1).
    id: ChannelId
    #: Parent channel id; ``None`` for a root (the Lobby).
    parent: ChannelId | None
    name: ChannelName
    description: Description = ""
    #: Joining requires a channel password.
    password_protected: bool = False
    #: Member limit; 0 means unlimited.
    max_members: U32 = 0

    def __post_init__(self) -> None:
        if self.parent == self.id:
            raise ValueError("a channel cannot be its own parent")


class Membership(_Record, frozen=True):
    """A user's membership of one channel."""

    channel_id: ChannelId
    #: The channel's ACL lets this user transmit voice to it.
    may_speak: bool = True


class UserInfo(_Record, frozen=True):
    """A connected user as the roster shows it."""

    sender_id: SenderId
    name: UserName
    #: Ed25519 identity public key (raw 32 bytes).
    ik_pub: IdentityKey
    #: Session KEM public key, once the user published it (PublishSessionKey).
    sk_pub: SkPub | None = None
    #: Session key certificate signed by the identity key; present iff ``sk_pub`` is.
    skc: Skc | None = None
    muted: bool = False
    deafened: bool = False
    #: The channels the user is a member of (no channel twice).
    channels: Annotated[tuple[Membership, ...], Meta(max_length=MAX_MEMBERSHIPS)] = ()
    #: The user's identity key is one of the server's administrators (a hint for the client's
    #: menus: the server checks every admin request itself). Absent, i.e. false, from servers
    #: that predate it.
    admin: bool = False

    def __post_init__(self) -> None:
        if (self.sk_pub is None) != (self.skc is None):
            raise ValueError("sk_pub and skc must be present together")
        if len({m.channel_id for m in self.channels}) != len(self.channels):
            raise ValueError("duplicate channel membership")


class UdpStats(_Record, frozen=True):
    """The client's own UDP counters since login (cumulative), reported in :class:`Ping`."""

    #: Voice datagrams the client sent over UDP.
    sent: U64 = 0
    #: Datagrams the client received and accepted.
    received: U64 = 0
    #: Datagrams the client inferred lost (sequence gaps).
    lost: U64 = 0
    #: The client's current RTT estimate, in milliseconds.
    rtt_ms: Milliseconds = 0.0
    #: Interarrival jitter as the client measures it (RFC 3550 §6.4.1), in milliseconds.
    jitter_ms: Milliseconds = 0.0


class LossReportEntry(_Record, frozen=True):
    """One listener's measurement of one speaker's voice path (inside :class:`LossReports`).

    The figures are those of ``voipclient.audio.redundancy.LossMeter.take_report``.
    """

    #: The speaker the report is about (its sender id); the server forwards it to that speaker.
    to: SenderId
    #: Fraction of the speaker's frames lost in the window, 0..1.
    loss: Fraction
    #: Mean length of a loss run, in frames (0 when nothing was lost).
    burst: LossBurst
    #: Interarrival jitter (RFC 3550 style), in milliseconds.
    jitter_ms: Milliseconds
    #: Frames expected in the window (received + lost); 0: nothing was heard.
    frames: U32


# ---------------------------------------------------------------------------------------------
# Messages. Tag in the "t" key; see the module docstring.
# ---------------------------------------------------------------------------------------------


class _Message(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="t"):
    """Base of every message."""


# -- connection set-up ------------------------------------------------------------------------


class Hello(_Message, frozen=True, tag="hello"):
    """C→S, first message: the protocol versions the client speaks, best first."""

    versions: Annotated[tuple[Version, ...], Meta(min_length=1, max_length=MAX_VERSIONS)]
    client_name: Software = ""
    client_version: Software = ""


class ServerHello(_Message, frozen=True, tag="server_hello"):
    """S→C answer to Hello: the chosen version and a fresh login challenge."""

    version: Version
    #: 32 random bytes the Login signature must cover.
    challenge: Challenge
    server_name: Software
    limits: Limits
    #: The server wants a password in Login.
    password_required: bool = False


class Login(_Message, frozen=True, tag="login"):
    """C→S: name, optional server password and proof of the identity key (§1).

    ``signature`` is Ed25519 by the identity key over :func:`login_transcript`.
    """

    name: UserName
    ik_pub: IdentityKey
    signature: Signature
    password: Password | None = None

    def __repr__(self) -> str:
        return _redacted_repr(self, ("password",))


def _redacted_repr(msg: msgspec.Struct, secrets: tuple[str, ...]) -> str:
    """repr with secret fields (hop secret, passwords) shown as <hidden>: never log secrets."""
    parts = []
    for name in msg.__struct_fields__:
        value = getattr(msg, name)
        shown = "<hidden>" if name in secrets and value is not None else repr(value)
        parts.append(f"{name}={shown}")
    return f"{type(msg).__name__}({', '.join(parts)})"


class LoginOk(_Message, frozen=True, tag="login_ok"):
    """S→C: the session parameters and the first page of the roster.

    ``sender_id`` is the session's id on the voice path (also the hop session id) and
    ``hop_secret`` keys the hop MACs (PROTOCOL.md §3). If ``more`` is true, RosterPage messages
    follow until one has ``more`` false; the roster is complete only then.
    """

    sender_id: SenderId
    hop_secret: HopSecret
    #: UDP port of the voice relay on the same host; 0 means no UDP (tunnel only).
    udp_port: U16
    channels: Annotated[tuple[ChannelInfo, ...], Meta(max_length=MAX_PAGE_ITEMS)] = ()
    users: Annotated[tuple[UserInfo, ...], Meta(max_length=MAX_PAGE_ITEMS)] = ()
    more: bool = False

    def __repr__(self) -> str:
        return _redacted_repr(self, ("hop_secret",))


class RosterPage(_Message, frozen=True, tag="roster_page"):
    """S→C: a further page of the login roster (channels first, then users)."""

    channels: Annotated[tuple[ChannelInfo, ...], Meta(max_length=MAX_PAGE_ITEMS)] = ()
    users: Annotated[tuple[UserInfo, ...], Meta(max_length=MAX_PAGE_ITEMS)] = ()
    more: bool = False


# -- roster deltas (S→C, broadcast to every logged-in session) --------------------------------


class UserJoined(_Message, frozen=True, tag="user_joined"):
    """A user logged in (with its initial memberships, normally the Lobby)."""

    user: UserInfo


class UserLeft(_Message, frozen=True, tag="user_left"):
    """A user's session ended; clients rotate their sender keys on this (§2)."""

    sender_id: SenderId
    #: A :class:`LeaveReason` value.
    reason: U8 = int(LeaveReason.DISCONNECTED)


class UserUpdated(_Message, frozen=True, tag="user_updated"):
    """A user's record changed (session key published, mute/deafen): replaces it entirely."""

    user: UserInfo


class MembershipChanged(_Message, frozen=True, tag="membership"):
    """A user joined (``joined`` true) or left one channel."""

    sender_id: SenderId
    channel_id: ChannelId
    joined: bool
    #: Only meaningful when joined: the channel's ACL lets the user transmit to it.
    may_speak: bool = True


class ChannelAdded(_Message, frozen=True, tag="channel_added"):
    """A channel was created."""

    channel: ChannelInfo


class ChannelUpdated(_Message, frozen=True, tag="channel_updated"):
    """A channel's name, description, password flag or limit changed."""

    channel: ChannelInfo


class ChannelRemoved(_Message, frozen=True, tag="channel_removed"):
    """A channel (which has no sub-channels left) was removed; its memberships end with it."""

    channel_id: ChannelId


# -- client intents ---------------------------------------------------------------------------


class PublishSessionKey(_Message, frozen=True, tag="publish_sk"):
    """C→S: publish this session's KEM public key and its certificate (§1)."""

    sk_pub: SkPub
    skc: Skc


class SetSelfState(_Message, frozen=True, tag="self_state"):
    """C→S: the user muted/deafened itself; broadcast as UserUpdated."""

    muted: bool = False
    deafened: bool = False


class SetVoiceTransport(_Message, frozen=True, tag="voice_transport"):
    """C→S hop control: send my voice over the TLS tunnel (true) or over UDP (false)."""

    tunnel: bool


class JoinChannel(_Message, frozen=True, tag="join"):
    """C→S: become a member of one more channel. Success is a MembershipChanged broadcast."""

    channel_id: ChannelId
    password: Password | None = None

    def __repr__(self) -> str:
        return _redacted_repr(self, ("password",))


class LeaveChannel(_Message, frozen=True, tag="leave"):
    """C→S: stop being a member of a channel. Success is a MembershipChanged broadcast."""

    channel_id: ChannelId


class KeyDist(_Message, frozen=True, tag="keydist"):
    """C→S: a signed KeyDist batch (§2) for the named recipients only."""

    channel_id: ChannelId
    recipients: Annotated[tuple[SenderId, ...], Meta(min_length=1, max_length=MAX_RECIPIENTS)]
    blob: KeyDistBlob


class KeyDistDelivery(_Message, frozen=True, tag="keydist_delivery"):
    """S→C: a KeyDist batch relayed from ``sender_id``."""

    sender_id: SenderId
    channel_id: ChannelId
    blob: KeyDistBlob


class Text(_Message, frozen=True, tag="text"):
    """C→S: an end-to-end encrypted text message (§4) for a channel the sender is a member of."""

    channel_id: ChannelId
    blob: TextBlob


class TextDelivery(_Message, frozen=True, tag="text_delivery"):
    """S→C: a text message relayed from ``sender_id`` to the channel's other members."""

    sender_id: SenderId
    channel_id: ChannelId
    blob: TextBlob


class VoiceTunnel(_Message, frozen=True, tag="voice"):
    """Both directions: one voice datagram (§3), byte for byte, when UDP is blocked."""

    datagram: Datagram


class LossReports(_Message, frozen=True, tag="loss_report"):
    """C→S, every few seconds: the listener's loss/jitter figures of the speakers it hears,
    one entry per speaker (batched so the message rate does not grow with the speakers).

    The server forwards each entry, as :class:`LossReportDelivery`, to the speaker named in
    ``to`` if that speaker shares a channel with the reporter; anything else is dropped
    silently. A dedicated per-session rate limit applies (excess dropped, not punished).
    """

    reports: Annotated[tuple[LossReportEntry, ...], Meta(min_length=1, max_length=MAX_LOSS_REPORTS)]


class LossReportDelivery(_Message, frozen=True, tag="loss_report_delivery"):
    """S→C: one listener's report about our voice path (see :class:`LossReportEntry`)."""

    #: The listener that measured it (``"from"`` on the wire).
    from_: SenderId = msgspec.field(name="from")
    #: Fraction of our frames the listener lost, 0..1.
    loss: Fraction
    #: Mean loss-run length, in frames.
    burst: LossBurst
    #: Interarrival jitter at the listener, in milliseconds.
    jitter_ms: Milliseconds
    #: Frames the listener expected in its window.
    frames: U32


# -- administration ---------------------------------------------------------------------------


class AdminAction(_Message, frozen=True, tag="admin"):
    """C→S: an administrator (its identity key is in the server's admin list) acts on a user.

    ``channel_id`` is required for MOVE and absent otherwise. Success is announced with
    :class:`AdminNotice` to the target and to the requester, plus the usual roster deltas;
    failure is a non-fatal Error (NOT_ADMIN, NO_SUCH_USER, NO_SUCH_CHANNEL, ALREADY_MEMBER).
    """

    action: AdminOp
    #: The user acted on.
    target: SenderId
    #: MOVE only: the channel the target is made a member of.
    channel_id: ChannelId | None = None
    #: Shown to the target and recorded with a ban.
    reason: Reason = ""

    def __post_init__(self) -> None:
        if (self.action is AdminOp.MOVE) != (self.channel_id is not None):
            raise ValueError("channel_id is required for move and only for move")


class AdminNotice(_Message, frozen=True, tag="admin_notice"):
    """S→C: an administrator acted on ``target``; sent to the target (before the fatal KICKED
    error of a kick or ban) and, as confirmation, to the requesting administrator."""

    action: AdminOp
    #: The administrator's sender id.
    by: SenderId
    target: SenderId
    #: MOVE: the channel the target was made a member of.
    channel_id: ChannelId | None = None
    reason: Reason = ""

    def __post_init__(self) -> None:
        if (self.action is AdminOp.MOVE) != (self.channel_id is not None):
            raise ValueError("channel_id is required for move and only for move")


class ChannelAdmin(_Message, frozen=True, tag="channel_admin"):
    """C→S: an administrator creates, changes or deletes a channel.

    Every optional field is tri-state where it matters: *absent* (None, or False for
    ``everyone_speaks``) leaves the value as it is (CREATE: the default shown), anything else
    sets it. ``password``: absent = unchanged (CREATE: none), ``""`` = remove the password,
    otherwise the new password. Speak permission: ``speakers`` sets the ACL to exactly these
    names (an empty list: nobody may speak), ``everyone_speaks`` removes the ACL (every member
    may speak); both absent = unchanged (CREATE: everyone); both given is malformed.

    Success: the roster updates every session gets (ChannelAdded, ChannelUpdated and
    MembershipChanged for changed speak rights, ChannelRemoved), then :class:`ChannelAdminOk` to
    the requester. Failure: a non-fatal Error (NOT_ADMIN, NO_SUCH_CHANNEL, CHANNEL_LOCKED,
    CHANNEL_HAS_SUBCHANNELS, INVALID_CHANNEL, CHANNEL_NAME_TAKEN); see docs/protocol.md.
    """

    op: ChannelOp
    #: UPDATE and DELETE: the channel; absent for CREATE.
    channel_id: ChannelId | None = None
    #: Required for CREATE; unique among the parent's sub-channels.
    name: ChannelName | None = None
    #: The parent channel (CREATE: absent = the Lobby); UPDATE moves the channel.
    parent: ChannelId | None = None
    description: Description | None = None
    #: None: unchanged (CREATE: no password); "": remove it; else the new password.
    password: Password | None = None
    #: Member limit, 0 = unlimited (CREATE: absent = 0).
    max_members: U32 | None = None
    #: The only names allowed to transmit (compared by account key); absent: unchanged.
    speakers: Annotated[tuple[UserName, ...], Meta(max_length=MAX_SPEAKERS)] | None = None
    #: Remove the speak ACL: every member may transmit.
    everyone_speaks: bool = False

    def __post_init__(self) -> None:
        if self.op == ChannelOp.CREATE:
            if self.channel_id is not None:
                raise ValueError("channel_id is not allowed for create")
            if self.name is None:
                raise ValueError("name is required for create")
        elif self.channel_id is None:
            raise ValueError("channel_id is required for update and delete")
        if self.op == ChannelOp.DELETE and (
            self.name is not None
            or self.parent is not None
            or self.description is not None
            or self.password is not None
            or self.max_members is not None
            or self.speakers is not None
            or self.everyone_speaks
        ):
            raise ValueError("delete takes channel_id only")
        if self.speakers is not None and self.everyone_speaks:
            raise ValueError("speakers and everyone_speaks exclude each other")

    def __repr__(self) -> str:
        return _redacted_repr(self, ("password",))


class ChannelAdminOk(_Message, frozen=True, tag="channel_admin_ok"):
    """S→C, to the requesting administrator only: its :class:`ChannelAdmin` was carried out.
    Sent after the roster updates it caused; answers come in request order."""

    op: ChannelOp
    #: The channel created (its new id), changed or deleted.
    channel_id: ChannelId


# -- liveness ---------------------------------------------------------------------------------


class Ping(_Message, frozen=True, tag="ping"):
    """C→S every ping interval: a sequence number, the client's clock and its UDP counters."""

    seq: U32
    #: The client's monotonic clock when sending, in milliseconds; echoed in Pong.
    client_time_ms: U64
    udp: UdpStats = UdpStats()


class Pong(_Message, frozen=True, tag="pong"):
    """S→C answer to Ping."""

    seq: U32
    client_time_ms: U64
    #: Hop-MAC-valid UDP datagrams the server received from this session since login.
    udp_received: U64 = 0


# -- endings and errors -----------------------------------------------------------------------


class Error(_Message, frozen=True, tag="error"):
    """Either direction: something failed. ``fatal`` means the sender closes the connection."""

    #: An :class:`ErrorCode` value.
    code: U16
    message: ErrorText = ""
    fatal: bool = False
    #: The channel a failed request (join, leave, keydist, text) concerned.
    channel_id: ChannelId | None = None


#: "host:port" of a cluster node ("[v6]:port" for IPv6): at most 253 + 2 + 1 + 5 characters.
NodeAddress = Annotated[str, Meta(min_length=3, max_length=262, pattern=r"^[^\s/]+:[0-9]{1,5}$")]
#: Cluster nodes a client is told about, at most.
MAX_CLUSTER_NODES: Final = 64


class ClusterNodes(_Message, frozen=True, tag="cluster_nodes"):
    """S→C, only from a node of a cluster (``voipclient-server --cluster``): the other nodes
    ("host:port", the same TLS key and pin) a client may reconnect to when this one fails. Sent
    after the roster and again whenever the set changes."""

    nodes: Annotated[tuple[NodeAddress, ...], Meta(max_length=MAX_CLUSTER_NODES)] = ()


class ServerShutdown(_Message, frozen=True, tag="shutdown"):
    """S→C: the server is going away; the connection closes after this message."""

    reason: Reason = ""
    #: Suggested reconnect delay in milliseconds; None: do not reconnect automatically.
    reconnect_after_ms: U32 | None = None


class Bye(_Message, frozen=True, tag="bye"):
    """Either direction: orderly close. The server answers a client's Bye with Bye."""

    reason: Reason = ""


#: Messages a client sends.
ClientMessage: TypeAlias = Union[  # noqa: UP007
    Hello,
    Login,
    PublishSessionKey,
    SetSelfState,
    SetVoiceTransport,
    JoinChannel,
    LeaveChannel,
    KeyDist,
    Text,
    VoiceTunnel,
    AdminAction,
    ChannelAdmin,
    LossReports,
    Ping,
    Error,
    Bye,
]
#: Messages a server sends.
ServerMessage: TypeAlias = Union[  # noqa: UP007
    ServerHello,
    LoginOk,
    RosterPage,
    UserJoined,
    UserLeft,
    UserUpdated,
    MembershipChanged,
    ChannelAdded,
    ChannelUpdated,
    ChannelRemoved,
    KeyDistDelivery,
    TextDelivery,
    VoiceTunnel,
    AdminNotice,
    ChannelAdminOk,
    LossReportDelivery,
    Pong,
    ClusterNodes,
    Error,
    ServerShutdown,
    Bye,
]
#: Every message.
Message: TypeAlias = Union[ClientMessage, ServerMessage]  # noqa: UP007

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final[msgspec.msgpack.Decoder[Message]] = msgspec.msgpack.Decoder(Message)

# msgspec reports where validation failed as "... - at `$.users[0].name`".
_PATH_RE: Final = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING_RE: Final = re.compile(r"^Object missing required field `(?P<name>[^`]+)`")


def encode(msg: Message) -> bytes:
    """Serialize one message to its msgpack payload (no frame header)."""
    return _ENCODER.encode(msg)


def decode(payload: bytes) -> Message:
    """Parse and validate one frame payload.

    Raises:
        RemoteProtocolError: ``code`` MALFORMED_MESSAGE; ``field`` is the path of the offending
            field (``"channel_id"``, ``"users[2].name"``, ``"t"`` for an unknown tag, ``"$"`` for
            the payload as a whole) or None when the bytes are not msgpack at all.
    """
    try:
        return _DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = _field_from_validation_error(text)
        raise RemoteProtocolError(
            f"invalid message: {text}", code=ErrorCode.MALFORMED_MESSAGE, field=field
        ) from None
    except (msgspec.DecodeError, ValueError) as exc:
        # ValueError covers UnicodeDecodeError from a str that is not UTF-8.
        raise RemoteProtocolError(
            f"undecodable message: {exc}", code=ErrorCode.MALFORMED_MESSAGE
        ) from None


def _field_from_validation_error(text: str) -> str:
    """Turn msgspec's "... - at `$.a[1].b`" into ``"a[1].b"`` (``"$"`` for the root)."""
    match = _PATH_RE.search(text)
    path = match.group("path") if match else ""
    missing = _MISSING_RE.match(text)
    if missing:
        path = f"{path}.{missing.group('name')}"
    path = path.removeprefix(".")
    return path or "$"


def encode_checked(msg: Message) -> bytes:
    """Like :func:`encode`, but first check ``msg`` against the schema bounds, exactly as the
    peer's :func:`decode` will, so our own bad input never reaches the wire.

    Raises:
        LocalProtocolError: ``msg`` violates the schema; ``field`` names the field.
    """
    payload = _ENCODER.encode(msg)
    try:
        _DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        text = str(exc)
        raise LocalProtocolError(
            f"refusing to send an invalid {type(msg).__name__}: {text}",
            code=ErrorCode.MALFORMED_MESSAGE,
            field=_field_from_validation_error(text),
        ) from None
    return payload


_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str, max_len: int = MAX_ERROR_MESSAGE_LEN) -> str:
    """Make arbitrary text (e.g. an error message quoting peer input) fit a free-text field:
    control characters become ``?`` and the result is cut to ``max_len`` code points."""
    return _CONTROL_RE.sub("?", text)[:max_len]


def login_transcript(challenge: bytes, name: str, ik_pub: bytes) -> bytes:
    """The bytes a Login signature covers: ``"vc1 login" ‖ challenge ‖ name ‖ ik_pub``.

    ``challenge`` (32 bytes) and ``ik_pub`` (32 bytes) have fixed lengths, so the UTF-8 name in
    between is unambiguous.
    """
    return LOGIN_CONTEXT + challenge + name.encode("utf-8") + ik_pub
