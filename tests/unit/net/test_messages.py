"""Message schema: round trips for every message (strategies derived from the Struct
definitions), bounds, field-naming decode errors, and hostile input."""

from __future__ import annotations

import contextlib
from typing import Any, get_args

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voipclient.errors import LocalProtocolError, RemoteProtocolError
from voipclient.net import messages as m
from voipclient.net.frames import DEFAULT_MAX_FRAME_SIZE

from ._strategies import struct_strategy

ALL_MESSAGES: tuple[type[m.Message], ...] = get_args(m.Message)


def _all_types(t: mi.Type) -> set[type[mi.Type]]:
    """Every kind of msgspec type used below ``t`` (to prove the strategy covers them)."""
    found: set[type[mi.Type]] = {type(t)}
    if isinstance(t, mi.StructType):
        for f in t.fields:
            found |= _all_types(f.type)
    elif isinstance(t, mi.VarTupleType):
        found |= _all_types(t.item_type)
    elif isinstance(t, mi.UnionType):
        for x in t.types:
            found |= _all_types(x)
    return found


# -- round trips --------------------------------------------------------------------------------


def test_every_message_has_a_unique_tag() -> None:
    tags = [cls.__struct_config__.tag for cls in ALL_MESSAGES]
    assert len(tags) == len(set(tags)) == len(ALL_MESSAGES)
    assert all(cls.__struct_config__.frozen for cls in ALL_MESSAGES)


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_round_trip_every_message(cls: type[m.Message]) -> None:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(struct_strategy(cls))
    def check(msg: m.Message) -> None:
        payload = m.encode(msg)
        assert m.decode(payload) == msg
        assert m.encode_checked(msg) == payload
        assert len(payload) <= DEFAULT_MAX_FRAME_SIZE

    check()


def test_strategies_cover_every_field_kind() -> None:
    kinds: set[type[mi.Type]] = set()
    for cls in ALL_MESSAGES:
        kinds |= _all_types(mi.type_info(cls))
    # Fails (so strategy_for gets extended) when the schema starts using a new kind of type.
    assert kinds <= {
        mi.StructType,
        mi.IntType,
        mi.EnumType,
        mi.FloatType,
        mi.BoolType,
        mi.NoneType,
        mi.StrType,
        mi.BytesType,
        mi.VarTupleType,
        mi.UnionType,
    }


def test_wire_form_is_a_tagged_map() -> None:
    payload = m.encode(m.JoinChannel(channel_id=7))
    assert msgspec.msgpack.decode(payload) == {"t": "join", "channel_id": 7}


def test_largest_messages_fit_a_frame() -> None:
    blob = b"\xff" * m.MAX_KEYDIST_BLOB
    recipients = tuple(range(m.U32_MAX - m.MAX_RECIPIENTS + 1, m.U32_MAX + 1))
    biggest: list[m.Message] = [
        m.KeyDist(channel_id=m.U32_MAX, recipients=recipients, blob=blob),
        m.KeyDistDelivery(sender_id=m.U32_MAX, channel_id=m.U32_MAX, blob=blob),
        m.Text(channel_id=m.U32_MAX, blob=b"\xff" * m.MAX_TEXT_BLOB),
        m.VoiceTunnel(datagram=b"\xff" * m.MAX_VOICE_DATAGRAM),
    ]
    for msg in biggest:
        payload = m.encode_checked(msg)
        assert len(payload) <= DEFAULT_MAX_FRAME_SIZE
        assert m.decode(payload) == msg


# -- bounds and field names ---------------------------------------------------------------------


def _raw(**fields: Any) -> bytes:
    return msgspec.msgpack.encode(fields)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (_raw(t="join", channel_id=0), "channel_id"),
        (_raw(t="join", channel_id=2**32), "channel_id"),
        (_raw(t="join", channel_id="1"), "channel_id"),
        (_raw(t="join"), "channel_id"),
        (_raw(t="nope"), "t"),
        (_raw(channel_id=1), "t"),
        (_raw(t="login", name="", ik_pub=b"k" * 32, signature=b"s" * 64), "name"),
        (_raw(t="login", name="x" * 33, ik_pub=b"k" * 32, signature=b"s" * 64), "name"),
        (_raw(t="login", name=" x", ik_pub=b"k" * 32, signature=b"s" * 64), "name"),
        (_raw(t="login", name="a\nb", ik_pub=b"k" * 32, signature=b"s" * 64), "name"),
        (_raw(t="login", name="x", ik_pub=b"k" * 31, signature=b"s" * 64), "ik_pub"),
        (_raw(t="login", name="x", ik_pub=b"k" * 32, signature=b"s" * 63), "signature"),
        (_raw(t="login", name="x", ik_pub=b"k" * 32), "signature"),
        (_raw(t="hello", versions=[]), "versions"),
        (_raw(t="hello", versions=["vc1"] * 9), "versions"),
        (_raw(t="hello", versions=["vc1", ""]), "versions[1]"),
        (_raw(t="keydist", channel_id=1, recipients=[], blob=b"x"), "recipients"),
        (_raw(t="keydist", channel_id=1, recipients=[1] * 65, blob=b"x"), "recipients"),
        (_raw(t="keydist", channel_id=1, recipients=[1, 0], blob=b"x"), "recipients[1]"),
        (
            _raw(t="keydist", channel_id=1, recipients=[1], blob=b"x" * (m.MAX_KEYDIST_BLOB + 1)),
            "blob",
        ),
        (_raw(t="text", channel_id=1, blob=b""), "blob"),
        (_raw(t="voice", datagram=b"x" * 1201), "datagram"),
        (_raw(t="channel_added", channel={"id": 2, "parent": 1, "name": "c" * 65}), "channel.name"),
        (_raw(t="channel_added", channel={"id": 2, "parent": 2, "name": "c"}), "channel"),
        (
            _raw(
                t="user_joined",
                user={"sender_id": 1, "name": "u", "ik_pub": b"k" * 32, "sk_pub": b"p"},
            ),
            "user",
        ),
        (
            _raw(
                t="roster_page",
                users=[
                    {"sender_id": 1, "name": "u", "ik_pub": b"k" * 32},
                    {
                        "sender_id": 2,
                        "name": "v",
                        "ik_pub": b"k" * 32,
                        "channels": [{"may_speak": True}],
                    },
                ],
            ),
            "users[1].channels[0].channel_id",
        ),
        (_raw(t="ping", seq=1, client_time_ms=1, udp={"rtt_ms": -1.0}), "udp.rtt_ms"),
        (_raw(t="ping", seq=1, client_time_ms=1, udp={"jitter_ms": float("nan")}), "udp.jitter_ms"),
        (_raw(t="error", code=70000), "code"),
        (_raw(t="error", code=1, message="x" * 513), "message"),
        (msgspec.msgpack.encode([1, 2]), "$"),
        (msgspec.msgpack.encode(5), "$"),
    ],
)
def test_decode_errors_name_the_field(payload: bytes, field: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.decode(payload)
    assert info.value.field == field
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        m.encode(m.Bye()) + b"\x00",  # trailing bytes
        b"\x81\xa1t\xa4name\xa2\xff\xfe",  # invalid UTF-8
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 G elements
    ],
)
def test_undecodable_payloads(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        m.decode(payload)
    assert info.value.code == m.ErrorCode.MALFORMED_MESSAGE


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert m.decode(_raw(t="leave", channel_id=3, future=True)) == m.LeaveChannel(channel_id=3)


def test_encode_checked_refuses_our_own_bad_message() -> None:
    with pytest.raises(LocalProtocolError) as info:
        m.encode_checked(m.Text(channel_id=1, blob=b""))
    assert info.value.field == "blob"


def test_clean_text() -> None:
    assert m.clean_text("a\x00b\nc\td\x7f", 6) == "a?b\nc\t"


def test_login_transcript() -> None:
    challenge, ik = bytes(range(32)), bytes(range(32, 64))
    assert (
        m.login_transcript(challenge, "Ünï", ik) == b"vc1 login" + challenge + "Ünï".encode() + ik
    )


# -- hostile input ------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        m.decode(data)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.sampled_from(ALL_MESSAGES),
    st.dictionaries(st.text(max_size=16), _msgpack_values, max_size=6),
)
def test_arbitrary_structures_raise_only_remote_errors(
    cls: type[m.Message], fields: dict[str, Any]
) -> None:
    fields["t"] = cls.__struct_config__.tag
    try:
        m.decode(msgspec.msgpack.encode(fields))
    except RemoteProtocolError as exc:
        assert exc.field is not None


@settings(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_messages_raise_only_remote_errors(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(ALL_MESSAGES))
    msg = data.draw(struct_strategy(cls))
    raw = msgspec.to_builtins(msg)
    assert isinstance(raw, dict)
    key = data.draw(st.sampled_from(sorted(raw)))
    raw[key] = data.draw(_msgpack_values)
    try:
        m.decode(msgspec.msgpack.encode(raw))
    except RemoteProtocolError as exc:
        assert exc.field is not None
