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

A session changes state when it *sends* the message that moves the conversation on (the client
its Login, the server its ServerHello and LoginOk), so a refused Hello or Login never passes
through a state it should not be in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final, TypeAlias, TypeVar, get_args

from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net import messages as m

__all__ = [
    "CLIENT_TRANSITIONS",
    "SERVER_TRANSITIONS",
    "ClientState",
    "Direction",
    "ServerState",
    "TransitionKey",
    "Trigger",
    "describe",
    "next_client_state",
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

_S = TypeVar("_S", ClientState, ServerState)


def _build(
    rows: Iterable[tuple[Iterable[_S], TransitionKey, _S | None]],
) -> Mapping[_S, Mapping[TransitionKey, _S]]:
    """Expand rows of (from-states, key, to-state or None for "stay") into the lookup table."""
    table: dict[_S, dict[TransitionKey, _S]] = {}
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
    m.LossReportDelivery,
    m.Pong,
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


def describe(table: Mapping[_S, Mapping[TransitionKey, _S]]) -> str:
    """The table as Markdown (state | event | next state), for the protocol documentation."""
    lines = ["| state | event | next state |", "|---|---|---|"]
    for state, row in table.items():
        for key, target in row.items():
            if isinstance(key, Trigger):
                what = f"*{key.value}*"
            else:
                what = f"{key[0].value} `{key[1].__struct_config__.tag}`"
            nxt = "(same)" if target is state else target.value
            lines.append(f"| {state.value} | {what} | {nxt} |")
    return "\n".join(lines)
