"""The one transition table of both control-session state machines (h11 ``_state.py`` style).

A transition key is either ``(Direction.RECV, MessageType)`` (the peer sent us that message),
``(Direction.SEND, MessageType)`` (we are about to send it) or a :class:`Trigger` (something that
is not a message: the roster became complete, or the connection was aborted). A key missing from
the table for the current state is forbidden:

* a RECV key raises :class:`~voipclient.errors.RemoteProtocolError` (UNEXPECTED_MESSAGE, field
  ``"t"``): the peer broke the protocol and loses its connection;
* a SEND key or a trigger raises :class:`~voipclient.errors.LocalProtocolError`: our own caller
  asked for something the protocol does not allow now.

Client: IDLE → HELLO_SENT → LOGIN_SENT → SYNCING → READY → CLOSING → CLOSED.
Server (per connection): AWAIT_HELLO → AWAIT_LOGIN → READY → CLOSED.

One floor above, the client connection (:class:`~voipclient.net.connection.ClientConnection`: TLS
transport, pin verdict, login, reconnects) has its own table, :data:`CONNECTION_TRANSITIONS`, keyed
by :class:`ConnectionTrigger`; a trigger missing from it is a
:class:`~voipclient.errors.LocalProtocolError` (a bug in the connection, never a peer's doing)::

    IDLE ─open_transport─► CONNECTING ─pin_matched─► LOGGING_IN ─logged_in─► READY
                               │ pin_unknown               ▲
                               ▼                           │ pin_approved
                    AWAITING_PIN_APPROVAL ─────────────────┘
    CONNECTING / AWAITING_PIN_APPROVAL ─pin_refused─► REFUSED
    CONNECTING … READY ─lost─► WAITING ─open_transport─► CONNECTING   (backoff, reconnect)
    any live state or WAITING ─stopped─► CLOSED   (the user closed it, or the server refused us)
    CLOSED / REFUSED ─open_transport─► CONNECTING                      (the user connects again)

A session changes state when it *sends* the message that moves the conversation on (the client
its Login, the server its ServerHello and LoginOk), so a refused Hello or Login never passes
through a state it should not be in.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import Final, TypeAlias, TypeVar, cast, get_args

from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net import messages as m

__all__ = [
    "CLIENT_TRANSITIONS",
    "CONNECTION_TRANSITIONS",
    "SERVER_TRANSITIONS",
    "ClientState",
    "ConnectionState",
    "ConnectionTrigger",
    "Direction",
    "ServerState",
    "TransitionKey",
    "Trigger",
    "describe",
    "next_client_state",
    "next_connection_state",
    "next_server_state",
]


class ClientState(enum.Enum):
    #: Created, ``start()`` not called yet.
    IDLE = "IDLE"
    #: Hello sent; waiting for ServerHello.
    HELLO_SENT = "HELLO_SENT"
    #: Login sent; waiting for LoginOk.
    LOGIN_SENT = "LOGIN_SENT"
    #: LoginOk received with ``more``; waiting for the last RosterPage.
    SYNCING = "SYNCING"
    #: Logged in with a complete roster; intents allowed.
    READY = "READY"
    #: We sent Bye; waiting for the server's Bye (everything else is discarded).
    CLOSING = "CLOSING"
    #: Over. Nothing is sent or received any more.
    CLOSED = "CLOSED"


class ServerState(enum.Enum):
    #: Connection open; waiting for Hello.
    AWAIT_HELLO = "AWAIT_HELLO"
    #: ServerHello sent; waiting for Login.
    AWAIT_LOGIN = "AWAIT_LOGIN"
    #: LoginOk sent; the user is in the roster.
    READY = "READY"
    #: Over; only the adapter's flush and ``connection_lost`` remain.
    CLOSED = "CLOSED"


class ConnectionState(enum.Enum):
    """The client connection's one state (what the status line shows). The values are the
    strings the desktop app used before this enum existed."""

    #: Created; ``connect()`` not called yet.
    IDLE = "idle"
    #: A TLS connection is being opened (``OpenTransport`` issued, handshake not done).
    CONNECTING = "connecting"
    #: First contact: the TLS handshake is done and the user is asked about the server's key.
    #: Nothing has been sent.
    AWAITING_PIN_APPROVAL = "awaiting_approval"
    #: The pin matched (or was approved): negotiation, login and the roster are under way.
    LOGGING_IN = "logging_in"
    #: Logged in with a complete roster: intents and voice allowed.
    READY = "ready"
    #: The connection ended; the supervisor reconnects when its backoff (or the server's
    #: shutdown delay) ends.
    WAITING = "waiting"
    #: The server's key was refused (mismatch, no certificate, or the user said no). Nothing
    #: was sent; no reconnect until the user connects again.
    REFUSED = "refused"
    #: Closed by the user, or stopped for good by the server's refusal (wrong password, kicked,
    #: name taken, …). No reconnect until the user connects again.
    CLOSED = "closed"


class ConnectionTrigger(enum.Enum):
    """What moves the client connection from one :class:`ConnectionState` to the next."""

    #: A connection attempt starts: the adapter is told to open the TLS transport.
    OPEN_TRANSPORT = "open_transport"
    #: The TLS handshake finished and the presented pin is the expected one.
    PIN_MATCHED = "pin_matched"
    #: The TLS handshake finished and no pin is known for this server (first contact).
    PIN_UNKNOWN = "pin_unknown"
    #: The user trusted the presented pin.
    PIN_APPROVED = "pin_approved"
    #: The presented pin differs from the expected one, there was none, or the user said no.
    PIN_REFUSED = "pin_refused"
    #: The control session logged in (``LoggedIn``).
    LOGGED_IN = "logged_in"
    #: The attempt or the session ended and the supervisor waits before reconnecting.
    LOST = "lost"
    #: No more reconnects: the user closed it, or the server refused us for good.
    STOPPED = "stopped"


class Direction(enum.Enum):
    SEND = "send"
    RECV = "recv"


class Trigger(enum.Enum):
    #: Client: the last roster page has been applied.
    ROSTER_COMPLETE = "roster_complete"
    #: Either side: the connection ends now (fatal error either way, timeout, transport lost,
    #: shutdown). Allowed from every state but CLOSED.
    ABORT = "abort"


MessageType: TypeAlias = type[m.Message]
TransitionKey: TypeAlias = tuple[Direction, MessageType] | Trigger

RECV: Final = Direction.RECV
SEND: Final = Direction.SEND

_S = TypeVar("_S", ClientState, ServerState, ConnectionState)
_K = TypeVar("_K", bound=Hashable)


def _build(
    rows: Iterable[tuple[Iterable[_S], _K, _S | None]],
) -> Mapping[_S, Mapping[_K, _S]]:
    """Expand rows of (from-states, key, to-state or None for "stay") into the lookup table."""
    table: dict[_S, dict[_K, _S]] = {}
    for states, key, target in rows:
        for state in states:
            row = table.setdefault(state, {})
            if key in row:
                raise AssertionError(f"duplicate transition {state} {key}")
            row[key] = state if target is None else target
    return MappingProxyType({s: MappingProxyType(r) for s, r in table.items()})


# -- client ------------------------------------------------------------------------------------

C = ClientState
_C_OPEN: Final = (C.HELLO_SENT, C.LOGIN_SENT, C.SYNCING, C.READY, C.CLOSING)
_C_HANDSHAKE: Final = (C.HELLO_SENT, C.LOGIN_SENT, C.SYNCING, C.READY)
#: Server messages a READY client handles.
_C_READY_RECV: Final[tuple[MessageType, ...]] = (
    m.UserJoined,
    m.UserLeft,
    m.UserUpdated,
    m.MembershipChanged,
    m.ChannelAdded,
    m.ChannelUpdated,
    m.ChannelRemoved,
    m.KeyDistDelivery,
    m.TextDelivery,
    m.VoiceTunnel,
    m.AdminNotice,
    m.ChannelAdminOk,
    m.LossReportDelivery,
    m.Pong,
    m.ClusterNodes,
)
#: Intents a READY client may send.
_C_READY_SEND: Final[tuple[MessageType, ...]] = (
    m.PublishSessionKey,
    m.SetSelfState,
    m.SetVoiceTransport,
    m.JoinChannel,
    m.LeaveChannel,
    m.KeyDist,
    m.Text,
    m.VoiceTunnel,
    m.AdminAction,
    m.ChannelAdmin,
    m.LossReports,
    m.Ping,
)
#: Every message a server may send; CLOSING discards whatever still arrives.
_ALL_SERVER_MESSAGES: Final[tuple[MessageType, ...]] = get_args(m.ServerMessage)

CLIENT_TRANSITIONS: Final[Mapping[ClientState, Mapping[TransitionKey, ClientState]]] = _build(
    [
        ((C.IDLE,), (SEND, m.Hello), C.HELLO_SENT),
        ((C.HELLO_SENT,), (RECV, m.ServerHello), None),
        ((C.HELLO_SENT,), (SEND, m.Login), C.LOGIN_SENT),
        ((C.LOGIN_SENT,), (RECV, m.LoginOk), C.SYNCING),
        ((C.SYNCING,), (RECV, m.RosterPage), None),
        ((C.SYNCING,), Trigger.ROSTER_COMPLETE, C.READY),
        *(((C.READY,), (RECV, t), None) for t in _C_READY_RECV),
        *(((C.READY,), (SEND, t), None) for t in _C_READY_SEND),
        # A non-fatal Error (a refused join...) keeps the state; a fatal one is followed by ABORT.
        (_C_HANDSHAKE, (RECV, m.Error), None),
        (_C_HANDSHAKE, (RECV, m.ServerShutdown), C.CLOSED),
        (_C_HANDSHAKE, (RECV, m.Bye), C.CLOSED),
        # close(): orderly goodbye, from any open state before CLOSING.
        (_C_HANDSHAKE, (SEND, m.Bye), C.CLOSING),
        # Our fatal Error after the server broke the protocol ends the session.
        (_C_OPEN, (SEND, m.Error), C.CLOSED),
        *(
            ((C.CLOSING,), (RECV, t), C.CLOSED if t in (m.Bye, m.ServerShutdown) else None)
            for t in _ALL_SERVER_MESSAGES
        ),
        ((C.IDLE, *_C_OPEN), Trigger.ABORT, C.CLOSED),
    ]
)

# -- server ------------------------------------------------------------------------------------

S = ServerState
_S_OPEN: Final = (S.AWAIT_HELLO, S.AWAIT_LOGIN, S.READY)
#: Client messages a READY server session handles: exactly what a READY client may send.
_S_READY_RECV: Final[tuple[MessageType, ...]] = _C_READY_SEND
#: What a READY server session may send.
_S_READY_SEND: Final[tuple[MessageType, ...]] = (m.RosterPage, *_C_READY_RECV)

SERVER_TRANSITIONS: Final[Mapping[ServerState, Mapping[TransitionKey, ServerState]]] = _build(
    [
        ((S.AWAIT_HELLO,), (RECV, m.Hello), None),
        ((S.AWAIT_HELLO,), (SEND, m.ServerHello), S.AWAIT_LOGIN),
        ((S.AWAIT_LOGIN,), (RECV, m.Login), None),
        ((S.AWAIT_LOGIN,), (SEND, m.LoginOk), S.READY),
        *(((S.READY,), (RECV, t), None) for t in _S_READY_RECV),
        *(((S.READY,), (SEND, t), None) for t in _S_READY_SEND),
        # Refusals (non-fatal) keep the state; fatal ones are followed by ABORT.
        (_S_OPEN, (SEND, m.Error), None),
        # The client's Bye is answered with Bye, which closes.
        (_S_OPEN, (RECV, m.Bye), None),
        (_S_OPEN, (SEND, m.Bye), S.CLOSED),
        # A client's Error is always taken as fatal.
        (_S_OPEN, (RECV, m.Error), S.CLOSED),
        (_S_OPEN, (SEND, m.ServerShutdown), S.CLOSED),
        (_S_OPEN, Trigger.ABORT, S.CLOSED),
    ]
)


# -- client connection ---------------------------------------------------------------------------

CS = ConnectionState
CT = ConnectionTrigger
#: States with a transport open or being opened (the supervisor is CONNECTING or CONNECTED).
_CS_LIVE: Final = (CS.CONNECTING, CS.AWAITING_PIN_APPROVAL, CS.LOGGING_IN, CS.READY)

CONNECTION_TRANSITIONS: Final[
    Mapping[ConnectionState, Mapping[ConnectionTrigger, ConnectionState]]
] = _build(
    [
        ((CS.IDLE, CS.WAITING, CS.CLOSED, CS.REFUSED), CT.OPEN_TRANSPORT, CS.CONNECTING),
        ((CS.CONNECTING,), CT.PIN_MATCHED, CS.LOGGING_IN),
        ((CS.CONNECTING,), CT.PIN_UNKNOWN, CS.AWAITING_PIN_APPROVAL),
        ((CS.AWAITING_PIN_APPROVAL,), CT.PIN_APPROVED, CS.LOGGING_IN),
        ((CS.CONNECTING, CS.AWAITING_PIN_APPROVAL), CT.PIN_REFUSED, CS.REFUSED),
        ((CS.LOGGING_IN,), CT.LOGGED_IN, CS.READY),
        (_CS_LIVE, CT.LOST, CS.WAITING),
        ((*_CS_LIVE, CS.WAITING), CT.STOPPED, CS.CLOSED),
        # The supervisor's Stopped that follows a refused pin: stay refused.
        ((CS.REFUSED,), CT.STOPPED, None),
    ]
)


def _next(
    table: Mapping[_S, Mapping[TransitionKey, _S]], role: str, state: _S, key: TransitionKey
) -> _S:
    target = table.get(state, {}).get(key)
    if target is not None:
        return target
    if isinstance(key, Trigger):
        raise LocalProtocolError(f"{role}: {key.value} is not allowed in state {state.value}")
    direction, msg_type = key
    tag = msg_type.__struct_config__.tag
    if direction is Direction.RECV:
        raise RemoteProtocolError(
            f"{role}: unexpected message {tag!r} in state {state.value}",
            code=m.ErrorCode.UNEXPECTED_MESSAGE,
            field="t",
        )
    raise LocalProtocolError(
        f"{role}: cannot send {tag!r} in state {state.value}",
        code=m.ErrorCode.UNEXPECTED_MESSAGE,
    )


def next_client_state(state: ClientState, key: TransitionKey) -> ClientState:
    """The client's state after ``key`` (raises if ``key`` is not allowed in ``state``)."""
    return _next(CLIENT_TRANSITIONS, "client", state, key)


def next_server_state(state: ServerState, key: TransitionKey) -> ServerState:
    """A server session's state after ``key`` (raises if ``key`` is not allowed in ``state``)."""
    return _next(SERVER_TRANSITIONS, "server", state, key)


def next_connection_state(state: ConnectionState, trigger: ConnectionTrigger) -> ConnectionState:
    """The client connection's state after ``trigger``. Raises
    :class:`~voipclient.errors.LocalProtocolError` if the table does not allow it: the
    connection asked for a transition it must not make (a bug, never a peer's doing)."""
    target = CONNECTION_TRANSITIONS.get(state, {}).get(trigger)
    if target is None:
        raise LocalProtocolError(
            f"connection: {trigger.value} is not allowed in state {state.value}"
        )
    return target


def describe(table: Mapping[_S, Mapping[_K, _S]]) -> str:
    """The table as Markdown (state | event | next state), for the protocol documentation."""
    lines = ["| state | event | next state |", "|---|---|---|"]
    for state, row in table.items():
        for key, target in row.items():
            if isinstance(key, enum.Enum):  # a Trigger or a ConnectionTrigger
                what = f"*{key.value}*"
            else:
                direction, msg_type = cast(tuple[Direction, MessageType], key)
                what = f"{direction.value} `{msg_type.__struct_config__.tag}`"
            nxt = "(same)" if target is state else target.value
            lines.append(f"| {state.value} | {what} | {nxt} |")
    return "\n".join(lines)
