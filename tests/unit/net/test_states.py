"""The transition table: legal paths, and the two kinds of refusal."""

from __future__ import annotations

from typing import get_args

import pytest

from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net import messages as m
from voipclient.net.states import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ClientState,
    Direction,
    ServerState,
    TransitionKey,
    Trigger,
    describe,
    next_client_state,
    next_server_state,
)

RECV, SEND = Direction.RECV, Direction.SEND
C, S = ClientState, ServerState


def test_client_happy_path() -> None:
    path: list[tuple[ClientState, TransitionKey, ClientState]] = [
        (C.IDLE, (SEND, m.Hello), C.HELLO_SENT),
        (C.HELLO_SENT, (RECV, m.ServerHello), C.HELLO_SENT),
        (C.HELLO_SENT, (SEND, m.Login), C.LOGIN_SENT),
        (C.LOGIN_SENT, (RECV, m.LoginOk), C.SYNCING),
        (C.SYNCING, (RECV, m.RosterPage), C.SYNCING),
        (C.SYNCING, Trigger.ROSTER_COMPLETE, C.READY),
        (C.READY, (SEND, m.JoinChannel), C.READY),
        (C.READY, (RECV, m.MembershipChanged), C.READY),
        (C.READY, (SEND, m.Bye), C.CLOSING),
        (C.CLOSING, (RECV, m.TextDelivery), C.CLOSING),
        (C.CLOSING, (RECV, m.Bye), C.CLOSED),
    ]
    for state, key, expected in path:
        assert next_client_state(state, key) is expected


def test_server_happy_path() -> None:
    path: list[tuple[ServerState, TransitionKey, ServerState]] = [
        (S.AWAIT_HELLO, (RECV, m.Hello), S.AWAIT_HELLO),
        (S.AWAIT_HELLO, (SEND, m.ServerHello), S.AWAIT_LOGIN),
        (S.AWAIT_LOGIN, (RECV, m.Login), S.AWAIT_LOGIN),
        (S.AWAIT_LOGIN, (SEND, m.LoginOk), S.READY),
        (S.READY, (RECV, m.KeyDist), S.READY),
        (S.READY, (SEND, m.KeyDistDelivery), S.READY),
        (S.READY, (RECV, m.Bye), S.READY),
        (S.READY, (SEND, m.Bye), S.CLOSED),
    ]
    for state, key, expected in path:
        assert next_server_state(state, key) is expected


@pytest.mark.parametrize(
    ("state", "msg"),
    [
        (C.HELLO_SENT, m.LoginOk),
        (C.LOGIN_SENT, m.ServerHello),
        (C.SYNCING, m.TextDelivery),
        (C.READY, m.LoginOk),
        (C.READY, m.Hello),  # a client-only message from the server
    ],
)
def test_client_unexpected_message_is_remote_error(
    state: ClientState, msg: type[m.Message]
) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        next_client_state(state, (RECV, msg))
    assert info.value.code == m.ErrorCode.UNEXPECTED_MESSAGE
    assert info.value.field == "t"


@pytest.mark.parametrize(
    ("state", "msg"),
    [
        (S.AWAIT_HELLO, m.Login),
        (S.AWAIT_HELLO, m.Text),
        (S.AWAIT_LOGIN, m.Hello),
        (S.AWAIT_LOGIN, m.JoinChannel),
        (S.READY, m.Login),
        (S.READY, m.Pong),  # a server-only message from the client
        (S.CLOSED, m.Bye),
    ],
)
def test_server_unexpected_message_is_remote_error(
    state: ServerState, msg: type[m.Message]
) -> None:
    with pytest.raises(RemoteProtocolError):
        next_server_state(state, (RECV, msg))


@pytest.mark.parametrize(
    ("state", "msg"),
    [(C.IDLE, m.Text), (C.LOGIN_SENT, m.JoinChannel), (C.CLOSING, m.Bye), (C.CLOSED, m.Ping)],
)
def test_client_own_misuse_is_local_error(state: ClientState, msg: type[m.Message]) -> None:
    with pytest.raises(LocalProtocolError):
        next_client_state(state, (SEND, msg))


def test_server_own_misuse_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        next_server_state(S.AWAIT_LOGIN, (SEND, m.TextDelivery))
    with pytest.raises(LocalProtocolError):
        next_server_state(S.CLOSED, Trigger.ABORT)
    with pytest.raises(LocalProtocolError):
        next_client_state(C.READY, Trigger.ROSTER_COMPLETE)


def test_abort_from_every_open_state() -> None:
    for c in ClientState:
        if c is not C.CLOSED:
            assert next_client_state(c, Trigger.ABORT) is C.CLOSED
    for s in ServerState:
        if s is not S.CLOSED:
            assert next_server_state(s, Trigger.ABORT) is S.CLOSED


def test_tables_only_use_the_right_direction() -> None:
    client_msgs, server_msgs = set(get_args(m.ClientMessage)), set(get_args(m.ServerMessage))
    for table, own, peer in (
        (CLIENT_TRANSITIONS, client_msgs, server_msgs),
        (SERVER_TRANSITIONS, server_msgs, client_msgs),
    ):
        for row in table.values():
            for key in row:
                if isinstance(key, Trigger):
                    continue
                direction, msg = key
                assert msg in (own if direction is SEND else peer), (direction, msg)


def test_every_message_is_reachable() -> None:
    sent_by_client = {
        k[1]
        for r in CLIENT_TRANSITIONS.values()
        for k in r
        if not isinstance(k, Trigger) and k[0] is SEND
    }
    sent_by_server = {
        k[1]
        for r in SERVER_TRANSITIONS.values()
        for k in r
        if not isinstance(k, Trigger) and k[0] is SEND
    }
    assert sent_by_client == set(get_args(m.ClientMessage))
    assert sent_by_server == set(get_args(m.ServerMessage))


def test_describe_renders_markdown() -> None:
    text = describe(CLIENT_TRANSITIONS)
    assert "| IDLE | send `hello` | HELLO_SENT |" in text
    assert "| SYNCING | *roster_complete* | READY |" in text
